//! Credentials: Docker `config.json` (read and write, `credsStore`/`credHelpers` through
//! `docker-credential-*` helpers), Kubernetes pull secrets, and kubelet-style key matching.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::error::{ClientError, Result};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_CONFIG_KEY, split_host_port};

/// One set of credentials and where it came from (for error messages).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
    /// OAuth2 refresh token (`identitytoken`), used with the token endpoint's refresh grant.
    pub identity_token: Option<String>,
    /// Bearer token to send as is (`registrytoken`).
    pub registry_token: Option<String>,
    /// e.g. `config.json /root/.docker/config.json (key "myreg:5000")` or
    /// `pull secret default/regcred (key "myreg:5000")`.
    pub source: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// One `auths` entry as Docker stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identitytoken: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registrytoken: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl AuthEntry {
    pub fn basic(username: &str, password: &str) -> AuthEntry {
        AuthEntry {
            auth: Some(B64.encode(format!("{username}:{password}"))),
            ..AuthEntry::default()
        }
    }

    /// Username and password, from `auth` (base64 `user:pass`) or the explicit fields.
    pub fn to_credential(&self, source: String) -> std::result::Result<Credential, String> {
        let (mut user, mut pass) = (
            self.username.clone().unwrap_or_default(),
            self.password.clone().unwrap_or_default(),
        );
        if let Some(a) = self.auth.as_deref().filter(|a| !a.is_empty()) {
            let raw = B64
                .decode(a.trim())
                .map_err(|e| format!("`auth` is not valid base64: {e}"))?;
            let s = String::from_utf8(raw).map_err(|_| "`auth` is not UTF-8".to_string())?;
            let (u, p) = s
                .split_once(':')
                .ok_or("`auth` must be base64 of `username:password`")?;
            user = u.to_string();
            pass = p.to_string();
        }
        Ok(Credential {
            username: user,
            password: pass,
            identity_token: self.identitytoken.clone().filter(|t| !t.is_empty()),
            registry_token: self.registrytoken.clone().filter(|t| !t.is_empty()),
            source,
        })
    }
}

// ---------------------------------------------------------------------------
// Key matching (kubelet `URLsMatch`)
// ---------------------------------------------------------------------------

/// A parsed credential key: host components, port, path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
    pub original: String,
}

fn normalize_hub(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        h => h,
    }
}

impl KeyPattern {
    /// Parse a key such as `https://index.docker.io/v1/`, `myreg:5000`, `*.example.com`,
    /// `example.com/team`.
    pub fn parse(key: &str) -> Option<KeyPattern> {
        let k = key.trim();
        let rest = match k.split_once("://") {
            Some((_, r)) => r,
            None => k,
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if hostport.is_empty() {
            return None;
        }
        let mut path = path;
        if path.starts_with("/v1/") || path.starts_with("/v2/") {
            path = &path[3..];
        }
        let path = path.trim_end_matches('/');
        let (host, port) = split_host_port(hostport);
        let port = match port {
            Some(p) => Some(p),
            None if hostport.ends_with(']') || !hostport.contains(':') => None,
            None => return None,
        };
        Some(KeyPattern {
            host: normalize_hub(&host.to_ascii_lowercase()).to_string(),
            port,
            path: path.to_string(),
            original: key.to_string(),
        })
    }

    /// Whether this key applies to `registry` (host[:port]) and `repository`.
    pub fn matches(&self, registry: &str, repository: &str) -> bool {
        let (host, port) = split_host_port(registry);
        let host = normalize_hub(&host.to_ascii_lowercase()).to_string();
        if self.port != port {
            return false;
        }
        let gp: Vec<&str> = self.host.split('.').collect();
        let tp: Vec<&str> = host.split('.').collect();
        if gp.len() != tp.len() || !gp.iter().zip(&tp).all(|(g, t)| glob(g, t)) {
            return false;
        }
        let target = format!("/{repository}");
        target.starts_with(&self.path)
    }

    /// Longer (more specific) keys first, like the kubelet's reverse-sorted index.
    fn specificity(&self) -> (usize, usize) {
        (
            self.path.len(),
            self.host.len() - self.host.matches('*').count(),
        )
    }
}

/// `filepath.Match` for one host component: `*` and `?`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

// ---------------------------------------------------------------------------
// Docker config.json
// ---------------------------------------------------------------------------

/// The config directory: `$DOCKER_CONFIG`, else `~/.docker`.
pub fn default_config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".docker")
}

/// The key to store a login under: Docker Hub's legacy URL, else `host[:port]`.
pub fn config_key(registry: &str) -> String {
    if normalize_hub(registry) == DOCKER_HUB {
        DOCKER_HUB_CONFIG_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// A Docker `config.json`, unknown fields preserved on write.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    pub path: PathBuf,
    pub json: Value,
}

impl DockerConfig {
    /// Load `DIR/config.json` (missing file = empty config).
    pub fn load_dir(dir: &Path) -> Result<DockerConfig> {
        DockerConfig::load(&dir.join("config.json"))
    }

    pub fn load(path: &Path) -> Result<DockerConfig> {
        let json = match std::fs::read(path) {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => json!({}),
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                ClientError::Config(format!("{}: not valid JSON: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
            Err(e) => return Err(ClientError::io(format!("reading {}", path.display()), e)),
        };
        if !json.is_object() {
            return Err(ClientError::Config(format!(
                "{}: must be a JSON object",
                path.display()
            )));
        }
        Ok(DockerConfig {
            path: path.to_path_buf(),
            json,
        })
    }

    pub fn auths(&self) -> BTreeMap<String, AuthEntry> {
        self.json
            .get("auths")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default()
    }

    /// The helper for `registry`: `credHelpers[registry]`, else `credsStore`.
    pub fn helper_for(&self, registry: &str) -> Option<String> {
        let key = config_key(registry);
        let helpers = self.json.get("credHelpers");
        for k in [registry, key.as_str()] {
            if let Some(h) = helpers.and_then(|h| h.get(k)).and_then(Value::as_str) {
                return Some(h.to_string());
            }
        }
        self.json
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Credentials for `registry`/`repository`: helper first, then `auths` (kubelet match).
    pub fn lookup(&self, registry: &str, repository: &str) -> Result<Vec<Credential>> {
        let mut out = Vec::new();
        if let Some(helper) = self.helper_for(registry)
            && let Some(c) = helper_get(&helper, &config_key(registry))?
        {
            out.push(c);
        }
        let mut matched: Vec<(KeyPattern, AuthEntry)> = self
            .auths()
            .into_iter()
            .filter_map(|(k, v)| KeyPattern::parse(&k).map(|p| (p, v)))
            .filter(|(p, _)| p.matches(registry, repository))
            .collect();
        matched.sort_by_key(|(p, _)| std::cmp::Reverse(p.specificity()));
        for (p, e) in matched {
            if e.auth.is_none() && e.username.is_none() && e.identitytoken.is_none() {
                continue; // a placeholder Docker writes when a credsStore holds the secret
            }
            let src = format!("{} (key {:?})", self.path.display(), p.original);
            out.push(
                e.to_credential(src.clone())
                    .map_err(|m| ClientError::Config(format!("{src}: {m}")))?,
            );
        }
        Ok(out)
    }

    /// Store a login: through the helper if one is configured, else base64 in `auths`.
    pub fn store(&mut self, registry: &str, username: &str, password: &str) -> Result<String> {
        let key = config_key(registry);
        if let Some(helper) = self.helper_for(registry) {
            helper_store(&helper, &key, username, password)?;
            // Docker records an empty entry so `docker logout` and listings see the login.
            let auths = self.auths_mut();
            auths.insert(key.clone(), json!({}));
            self.save()?;
            return Ok(format!("docker-credential-{helper}"));
        }
        let entry = serde_json::to_value(AuthEntry::basic(username, password)).expect("json");
        self.auths_mut().insert(key, entry);
        self.save()?;
        Ok(self.path.display().to_string())
    }

    /// Remove a login (helper `erase` and the `auths` entry). False if there was none.
    pub fn erase(&mut self, registry: &str) -> Result<bool> {
        let key = config_key(registry);
        let mut found = false;
        if let Some(helper) = self.helper_for(registry) {
            found |= helper_erase(&helper, &key)?;
        }
        let auths = self.auths_mut();
        found |= auths.remove(&key).is_some();
        if key != registry {
            found |= auths.remove(registry).is_some();
        }
        self.save()?;
        Ok(found)
    }

    fn auths_mut(&mut self) -> &mut serde_json::Map<String, Value> {
        let obj = self.json.as_object_mut().expect("object");
        let auths = obj.entry("auths").or_insert_with(|| json!({}));
        if !auths.is_object() {
            *auths = json!({});
        }
        auths.as_object_mut().expect("object")
    }

    /// Write atomically with mode 0600.
    pub fn save(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .map_err(|e| ClientError::io(format!("creating {}", dir.display()), e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| ClientError::io(format!("writing in {}", dir.display()), e))?;
        let text = serde_json::to_string_pretty(&self.json).expect("json");
        tmp.write_all(text.as_bytes())
            .and_then(|_| tmp.write_all(b"\n"))
            .map_err(|e| ClientError::io(format!("writing {}", self.path.display()), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600));
        }
        tmp.persist(&self.path)
            .map_err(|e| ClientError::io(format!("writing {}", self.path.display()), e.error))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// docker-credential-* helpers
// ---------------------------------------------------------------------------

fn run_helper(helper: &str, verb: &str, input: &str) -> Result<(bool, String, String)> {
    let prog = format!("docker-credential-{helper}");
    let mut child = Command::new(&prog)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            ClientError::Config(format!(
                "cannot run the credential helper {prog} (configured in config.json): {e}; \
                 install it or remove credsStore/credHelpers"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| ClientError::io(format!("running {prog}"), e))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `docker-credential-HELPER get`; `None` when the helper has no entry.
pub fn helper_get(helper: &str, server_url: &str) -> Result<Option<Credential>> {
    let (ok, stdout, stderr) = run_helper(helper, "get", server_url)?;
    if !ok {
        let msg = format!("{}{}", stdout.trim(), stderr.trim());
        if msg.to_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(ClientError::Config(format!(
            "docker-credential-{helper} get {server_url} failed: {msg}"
        )));
    }
    let v: Value = serde_json::from_str(&stdout).map_err(|e| {
        ClientError::Config(format!(
            "docker-credential-{helper} get printed invalid JSON: {e}"
        ))
    })?;
    let user = v.get("Username").and_then(Value::as_str).unwrap_or("");
    let secret = v.get("Secret").and_then(Value::as_str).unwrap_or("");
    let source = format!("docker-credential-{helper} ({server_url})");
    Ok(Some(if user == "<token>" {
        Credential {
            username: String::new(),
            password: String::new(),
            identity_token: Some(secret.to_string()),
            registry_token: None,
            source,
        }
    } else {
        Credential {
            username: user.to_string(),
            password: secret.to_string(),
            identity_token: None,
            registry_token: None,
            source,
        }
    }))
}

/// `docker-credential-HELPER store`.
pub fn helper_store(helper: &str, server_url: &str, user: &str, secret: &str) -> Result<()> {
    let input = json!({"ServerURL": server_url, "Username": user, "Secret": secret}).to_string();
    let (ok, stdout, stderr) = run_helper(helper, "store", &input)?;
    if !ok {
        return Err(ClientError::Config(format!(
            "docker-credential-{helper} store failed: {}{}",
            stdout.trim(),
            stderr.trim()
        )));
    }
    Ok(())
}

/// `docker-credential-HELPER erase`; false when there was nothing to erase.
pub fn helper_erase(helper: &str, server_url: &str) -> Result<bool> {
    let (ok, stdout, stderr) = run_helper(helper, "erase", server_url)?;
    if !ok {
        let msg = format!("{}{}", stdout.trim(), stderr.trim());
        if msg.to_lowercase().contains("not found") {
            return Ok(false);
        }
        return Err(ClientError::Config(format!(
            "docker-credential-{helper} erase failed: {msg}"
        )));
    }
    Ok(true)
}

// ---------------------------------------------------------------------------
// The keyring: pull secrets + config.json
// ---------------------------------------------------------------------------

/// Every credential source, searched in order: pull secrets (most specific key first), then
/// `config.json`.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    secrets: Vec<(KeyPattern, AuthEntry, String)>,
    pub docker: Option<DockerConfig>,
    /// Descriptions of every source, for "no credentials found" messages.
    pub sources: Vec<String>,
}

impl Keyring {
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Use a Docker config (file may be missing).
    pub fn with_docker_config(mut self, cfg: DockerConfig) -> Keyring {
        self.sources.push(cfg.path.display().to_string());
        self.docker = Some(cfg);
        self
    }

    /// Add `auths` entries (from a pull secret or a dockercfg), `name` says where from.
    pub fn add_auths(&mut self, auths: BTreeMap<String, AuthEntry>, name: &str) {
        self.sources.push(name.to_string());
        for (k, v) in auths {
            if let Some(p) = KeyPattern::parse(&k) {
                self.secrets
                    .push((p, v, format!("{name} (key {:?})", k.trim())));
            }
        }
        self.secrets
            .sort_by_key(|(p, _, _)| std::cmp::Reverse(p.specificity()));
    }

    /// `--pull-secret FILE`.
    pub fn add_pull_secret_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::io(format!("reading pull secret {}", path.display()), e))?;
        let secret = crate::kube::read_pull_secret(&text)
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        self.add_auths(
            secret.auths,
            &format!("pull secret {} ({})", secret.name, path.display()),
        );
        Ok(())
    }

    /// All credentials that apply, best first.
    pub fn lookup(&self, registry: &str, repository: &str) -> Result<Vec<Credential>> {
        let mut out = Vec::new();
        for (p, e, src) in &self.secrets {
            if p.matches(registry, repository) {
                let c = e
                    .to_credential(src.clone())
                    .map_err(|m| ClientError::Config(format!("{src}: {m}")))?;
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        if let Some(d) = &self.docker {
            for c in d.lookup(registry, repository)? {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    pub fn describe_sources(&self) -> String {
        if self.sources.is_empty() {
            "no credential sources".to_string()
        } else {
            self.sources.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn k(s: &str) -> KeyPattern {
        KeyPattern::parse(s).unwrap()
    }

    #[test]
    fn kubelet_matching() {
        assert!(k("https://index.docker.io/v1/").matches("docker.io", "library/nginx"));
        assert!(k("docker.io").matches("docker.io", "library/nginx"));
        assert!(k("myreg:5000").matches("myreg:5000", "a/b"));
        assert!(!k("myreg:5000").matches("myreg", "a/b"));
        assert!(!k("myreg").matches("myreg:5000", "a/b"));
        assert!(k("https://myreg:5000").matches("myreg:5000", "a"));
        assert!(k("http://myreg:5000/v2/").matches("myreg:5000", "a"));
        assert!(k("*.example.com").matches("reg.example.com", "x"));
        assert!(!k("*.example.com").matches("example.com", "x"));
        assert!(!k("*.example.com").matches("a.b.example.com", "x"));
        assert!(k("*.*.example.com").matches("a.b.example.com", "x"));
        assert!(k("reg.example.com/team").matches("reg.example.com", "team/app"));
        assert!(!k("reg.example.com/team").matches("reg.example.com", "other/app"));
        assert!(k("[::1]:5000").matches("[::1]:5000", "a"));
        assert!(k("reg-?.io").matches("reg-1.io", "a"));
    }

    #[test]
    fn specific_first() {
        let mut kr = Keyring::new();
        let mut m = BTreeMap::new();
        m.insert("reg.io".to_string(), AuthEntry::basic("general", "p"));
        m.insert("reg.io/team".to_string(), AuthEntry::basic("team", "p"));
        kr.add_auths(m, "pull secret s");
        let found = kr.lookup("reg.io", "team/app").unwrap();
        assert_eq!(found[0].username, "team");
        assert_eq!(found[1].username, "general");
        assert!(found[0].source.contains("reg.io/team"));
        assert_eq!(kr.lookup("reg.io", "x").unwrap().len(), 1);
        assert!(kr.lookup("other.io", "x").unwrap().is_empty());
    }

    #[test]
    fn config_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut c = DockerConfig::load_dir(d.path()).unwrap();
        c.json["other"] = json!("kept");
        c.store("myreg:5000", "u", "p:w").unwrap();
        c.store("docker.io", "hub", "x").unwrap();
        let c2 = DockerConfig::load_dir(d.path()).unwrap();
        assert_eq!(c2.json["other"], "kept");
        assert_eq!(
            c2.json["auths"]["myreg:5000"]["auth"],
            B64.encode("u:p:w").as_str()
        );
        let found = c2.lookup("myreg:5000", "any").unwrap();
        assert_eq!(
            (found[0].username.as_str(), found[0].password.as_str()),
            ("u", "p:w")
        );
        assert_eq!(
            c2.lookup("docker.io", "library/x").unwrap()[0].username,
            "hub"
        );
        let mut c3 = c2.clone();
        assert!(c3.erase("myreg:5000").unwrap());
        assert!(!c3.erase("myreg:5000").unwrap());
        assert!(
            DockerConfig::load_dir(d.path())
                .unwrap()
                .lookup("myreg:5000", "a")
                .unwrap()
                .is_empty()
        );
    }

    proptest! {
        #[test]
        fn glob_literal_matches_itself(s in "[a-z0-9-]{1,10}") {
            prop_assert!(glob(&s, &s));
            prop_assert!(glob("*", &s));
        }

        #[test]
        fn auth_entry_round_trips(u in "[a-zA-Z0-9_.@-]{0,20}", p in any::<String>()) {
            let c = AuthEntry::basic(&u, &p).to_credential("t".into()).unwrap();
            prop_assert_eq!(c.username, u);
            prop_assert_eq!(c.password, p);
        }

        #[test]
        fn key_parse_never_panics(s in any::<String>(), r in any::<String>()) {
            if let Some(k) = KeyPattern::parse(&s) { let _ = k.matches(&r, "a/b"); }
        }
    }
}
