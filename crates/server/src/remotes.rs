//! Registries as objects: the remote registries Berth talks to (proxy-cache upstreams,
//! replication sources and destinations), administered by system administrators through
//! the API, the CLI (`berth registry …`) and the console.
//!
//! Their passwords and tokens are sealed with AES-256-GCM before they reach the metadata
//! store, under a key that is never stored beside them: `BERTH_SECRET_KEY` (base64 of 32
//! bytes; replicas sharing PostgreSQL must all have the same) or the file
//! `[secrets] key_file` (default `DATA/secret.key`, created 0600 on first start). A secret is
//! write-only: no API, page or log shows it again.
//!
//! Every outbound connection goes through `berth-client`, so trust (the registry's CA or
//! its insecure flag), the token dance and verified streams are the same as `berth pull`'s.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use berth_auth::Principal;
use berth_client::creds::AuthEntry;
use berth_client::{ClientOptions, Credential, ImageRef, Keyring, RegistryClient, TrustOptions};
use berth_proto::error::ErrorCode;
use berth_storage::{RegistryHealth, RemoteRegistry, RemoteStore, StorageError};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::admin::{bad_request, now};
use crate::auth::{Auth, Caller};
use crate::error::{ApiError, ApiResult};

/// The environment variable holding the sealing key (base64 of 32 bytes).
pub const SECRET_KEY_ENV: &str = "BERTH_SECRET_KEY";
const KEY_LEN: usize = 32;
/// Sealed format: version, key id (4 bytes of the key's SHA-256), nonce, ciphertext + tag.
const SEALED_VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const AAD: &[u8] = b"berth remote registry secret v1";
/// Longest accepted CA bundle and secret (they live in the database).
const MAX_CA_PEM: usize = 256 * 1024;
const MAX_SECRET: usize = 16 * 1024;
/// How long a connection check may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Seals and unseals secrets with the deployment's key.
pub struct Sealer {
    key: LessSafeKey,
    key_id: [u8; KEY_ID_LEN],
}

impl Sealer {
    pub fn from_key(bytes: &[u8]) -> Result<Sealer, String> {
        if bytes.len() != KEY_LEN {
            return Err(format!(
                "the secret key must be {KEY_LEN} bytes, not {}",
                bytes.len()
            ));
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|e| e.to_string())?;
        let digest = Sha256::digest(bytes);
        let mut key_id = [0; KEY_ID_LEN];
        key_id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Ok(Sealer {
            key: LessSafeKey::new(key),
            key_id,
        })
    }

    /// The key from `BERTH_SECRET_KEY`, else from `key_file` (created with a random key,
    /// mode 0600, when missing).
    pub fn load_or_create(key_file: &Path) -> Result<Sealer, String> {
        if let Ok(b64) = std::env::var(SECRET_KEY_ENV) {
            let bytes = B64.decode(b64.trim()).map_err(|e| {
                format!("{SECRET_KEY_ENV} is not base64 ({e}); make one with: head -c 32 /dev/urandom | base64")
            })?;
            return Sealer::from_key(&bytes).map_err(|e| format!("{SECRET_KEY_ENV}: {e}"));
        }
        match std::fs::read(key_file) {
            Ok(bytes) => Sealer::from_key(&bytes).map_err(|e| {
                format!(
                    "{}: {e}; restore the key file (secrets sealed with it cannot be read otherwise)",
                    key_file.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                getrandom::fill(&mut key).map_err(|e| format!("no randomness for a key: {e}"))?;
                write_private(key_file, &key)
                    .map_err(|e| format!("creating {}: {e}", key_file.display()))?;
                Sealer::from_key(&key)
            }
            Err(e) => Err(format!("reading {}: {e}", key_file.display())),
        }
    }

    pub fn seal(&self, secret: &str) -> Vec<u8> {
        if secret.is_empty() {
            return Vec::new();
        }
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source");
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            )
            .expect("AES-GCM sealing of a short secret");
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + NONCE_LEN + data.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        out
    }

    pub fn unseal(&self, sealed: &[u8]) -> Result<String, String> {
        if sealed.is_empty() {
            return Ok(String::new());
        }
        let header = 1 + KEY_ID_LEN + NONCE_LEN;
        if sealed.len() < header || sealed[0] != SEALED_VERSION {
            return Err("the stored secret is not in a format this Berth can read".into());
        }
        if sealed[1..1 + KEY_ID_LEN] != self.key_id {
            return Err(format!(
                "the stored secret was sealed with another key; every replica must use the \
                 same {SECRET_KEY_ENV} (or [secrets] key_file), or set the secret again"
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1 + KEY_ID_LEN..header]);
        let mut data = sealed[header..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut data,
            )
            .map_err(|_| {
                "the stored secret failed its integrity check; set it again".to_string()
            })?;
        String::from_utf8(plain.to_vec()).map_err(|_| "the stored secret is not UTF-8".into())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The remote registries and the means to talk to them.
pub struct Remotes {
    pub store: Arc<dyn RemoteStore>,
    sealer: Arc<Sealer>,
}

/// A client set up for one remote registry.
#[derive(Clone)]
pub struct RemoteClient {
    pub client: RegistryClient,
    /// The registry as berth-client names it in an [`ImageRef`] (`host:port`; Docker Hub:
    /// `docker.io`).
    pub host: String,
}

impl RemoteClient {
    /// `repo` (e.g. `library/nginx`; on Docker Hub a single name gets `library/`) and a tag
    /// or digest, as an [`ImageRef`] on this registry.
    pub fn image(&self, repo: &str, reference: &str) -> ApiResult<ImageRef> {
        let repository = if self.host == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        };
        let (tag, digest) = if reference.contains(':') {
            let d = reference
                .parse()
                .map_err(|e| bad_request(format!("{reference:?} is not a tag or a digest: {e}")))?;
            (None, Some(d))
        } else {
            (Some(reference.to_string()), None)
        };
        Ok(ImageRef {
            registry: self.host.clone(),
            repository,
            tag,
            digest,
        })
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NameUnknown,
        format!("registry {name} is not known; list them with: berth registry list"),
    )
    .with_status(StatusCode::NOT_FOUND)
}

fn internal(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unsupported, detail).with_status(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `https://host[:port]` → (`host[:port]` as berth-client names it, plain HTTP?).
pub fn parse_url(url: &str) -> ApiResult<(String, bool)> {
    let bad = |why: &str| {
        bad_request(format!(
            "registry URL {url:?} {why}; give it as https://HOST[:PORT] (http:// only with --insecure)"
        ))
    };
    let (plain, rest) = if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else {
        return Err(bad("does not start with https://"));
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    if host.contains('/') || host.contains('?') || host.contains('#') || host.contains('@') {
        return Err(bad(
            "must name only a host and port (no path, query or user)",
        ));
    }
    let hub = ["registry-1.docker.io", "index.docker.io", "docker.io"];
    let host = if hub.contains(&host) {
        "docker.io".to_string()
    } else {
        host.to_ascii_lowercase()
    };
    Ok((host, plain))
}

pub fn validate_name(name: &str) -> ApiResult<()> {
    if crate::admin::is_object_name(name) {
        Ok(())
    } else {
        Err(bad_request(format!(
            "registry name {name:?} is invalid: use 1 to 64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

impl Remotes {
    pub fn new(store: Arc<dyn RemoteStore>, sealer: Arc<Sealer>) -> Remotes {
        Remotes { store, sealer }
    }

    pub fn seal(&self, secret: &str) -> Vec<u8> {
        self.sealer.seal(secret)
    }

    pub fn unseal(&self, sealed: &[u8]) -> ApiResult<String> {
        self.sealer.unseal(sealed).map_err(internal)
    }

    /// The registry named `name` (404 naming it when missing).
    pub async fn get(&self, name: &str) -> ApiResult<RemoteRegistry> {
        self.store
            .registry(name)
            .await?
            .ok_or_else(|| not_found(name))
    }

    /// A berth-client for `r`: its CA (or insecure flag) as the only extra trust, its
    /// username and unsealed secret as the only credential.
    pub fn client(&self, r: &RemoteRegistry) -> ApiResult<RemoteClient> {
        let (host, plain) = parse_url(&r.url)?;
        let mut trust = TrustOptions::isolated();
        if !r.ca_pem.is_empty() {
            trust
                .add_ca_pem(r.ca_pem.as_bytes(), &format!("registry {}'s CA", r.name))
                .map_err(|e| bad_request(format!("registry {}: {e}", r.name)))?;
        }
        if r.insecure || plain {
            trust
                .add_insecure(&host)
                .map_err(|e| bad_request(format!("registry {}: {e}", r.name)))?;
        }
        let mut keyring = Keyring::new();
        if !r.username.is_empty() {
            let secret = self.unseal(&r.secret_sealed)?;
            let mut auths = BTreeMap::new();
            auths.insert(host.clone(), AuthEntry::basic(&r.username, &secret));
            keyring.add_auths(auths, &format!("registry {}", r.name));
        }
        let client = RegistryClient::new(ClientOptions {
            trust,
            keyring,
            ..ClientOptions::default()
        });
        Ok(RemoteClient { client, host })
    }

    /// Connect, check TLS and the credentials (`GET /v2/` and the token endpoint, as
    /// `docker login` does), record and return the outcome.
    pub async fn check(&self, name: &str) -> ApiResult<RegistryHealth> {
        let r = self.get(name).await?;
        let outcome = match self.client(&r) {
            Err(e) => Err(e.detail),
            Ok(rc) => {
                let attempt = async {
                    if r.username.is_empty() {
                        rc.client.ping(&rc.host).await
                    } else {
                        let cred = Credential {
                            username: r.username.clone(),
                            password: self.unseal(&r.secret_sealed).unwrap_or_default(),
                            identity_token: None,
                            registry_token: None,
                            source: format!("registry {}", r.name),
                        };
                        rc.client.check_login(&rc.host, &cred).await
                    }
                };
                match tokio::time::timeout(CHECK_TIMEOUT, attempt).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "{} did not answer within {} s",
                        r.url,
                        CHECK_TIMEOUT.as_secs()
                    )),
                }
            }
        };
        let health = RegistryHealth {
            name: r.name.clone(),
            checked_at: now(),
            ok: outcome.is_ok(),
            message: match outcome {
                Ok(()) if r.username.is_empty() => "reachable (anonymous)".into(),
                Ok(()) => format!("reachable, logged in as {}", r.username),
                Err(e) => e,
            },
        };
        self.store.set_registry_health(&health).await?;
        Ok(health)
    }
}

/// What the API and CLI show of a registry: never its secret.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryInfo {
    pub name: String,
    pub url: String,
    pub username: String,
    pub has_secret: bool,
    pub has_ca: bool,
    pub insecure: bool,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub health: Option<HealthInfo>,
    /// Projects that are proxy caches of it.
    pub proxy_projects: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthInfo {
    pub ok: bool,
    pub checked_at: i64,
    pub message: String,
}

/// A registry to add or the fields to change (absent: unchanged; on add: empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Write-only.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub ca_pem: Option<String>,
    #[serde(default)]
    pub insecure: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
}

fn require_admin(caller: &Caller) -> ApiResult<()> {
    match &caller.principal {
        Principal::User {
            system_admin: true, ..
        } => Ok(()),
        Principal::Anonymous => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "managing registries needs a login as a system administrator",
        )),
        _ => Err(ApiError::new(
            ErrorCode::Denied,
            "only system administrators may manage remote registries",
        )
        .with_status(StatusCode::FORBIDDEN)),
    }
}

fn check_spec(spec: &RegistrySpec) -> ApiResult<()> {
    if let Some(ca) = &spec.ca_pem
        && !ca.is_empty()
    {
        if ca.len() > MAX_CA_PEM {
            return Err(bad_request(format!(
                "the CA bundle is {} bytes; at most {MAX_CA_PEM} are accepted",
                ca.len()
            )));
        }
        berth_client::trust::parse_pem_bundle(ca.as_bytes(), "the CA bundle")
            .map_err(|e| bad_request(e.to_string()))?;
    }
    if let Some(s) = &spec.secret
        && s.len() > MAX_SECRET
    {
        return Err(bad_request(format!(
            "the secret is {} bytes; at most {MAX_SECRET} are accepted",
            s.len()
        )));
    }
    for (what, v, max) in [
        ("username", &spec.username, 256),
        ("description", &spec.description, 1024),
    ] {
        if let Some(v) = v
            && v.len() > max
        {
            return Err(bad_request(format!(
                "the {what} is longer than {max} bytes"
            )));
        }
    }
    Ok(())
}

async fn info(remotes: &Remotes, r: RemoteRegistry) -> ApiResult<RegistryInfo> {
    let health = remotes.store.registry_health(&r.name).await?;
    let proxy_projects = remotes
        .store
        .proxy_projects()
        .await?
        .into_iter()
        .filter(|(_, reg)| *reg == r.name)
        .map(|(p, _)| p)
        .collect();
    Ok(RegistryInfo {
        has_secret: !r.secret_sealed.is_empty(),
        has_ca: !r.ca_pem.is_empty(),
        name: r.name,
        url: r.url,
        username: r.username,
        insecure: r.insecure,
        description: r.description,
        created_at: r.created_at,
        updated_at: r.updated_at,
        health: health.map(|h| HealthInfo {
            ok: h.ok,
            checked_at: h.checked_at,
            message: h.message,
        }),
        proxy_projects,
    })
}

async fn audit(auth: &Auth, caller: &Caller, action: &str, name: &str, detail: String) {
    auth.audit(
        &caller.actor(),
        action,
        &format!("registry:{name}"),
        caller.addr,
        &detail,
    )
    .await;
}

pub async fn add_registry(
    auth: &Auth,
    remotes: &Remotes,
    caller: &Caller,
    spec: RegistrySpec,
) -> ApiResult<RegistryInfo> {
    require_admin(caller)?;
    check_spec(&spec)?;
    let name = spec
        .name
        .clone()
        .ok_or_else(|| bad_request("a registry needs a name"))?;
    validate_name(&name)?;
    let url = spec
        .url
        .clone()
        .ok_or_else(|| bad_request(format!("registry {name} needs a url (https://HOST[:PORT])")))?;
    let (_, plain) = parse_url(&url)?;
    let insecure = spec.insecure.unwrap_or(false);
    if plain && !insecure {
        return Err(bad_request(format!(
            "registry URL {url} is plain HTTP; use https:// or mark the registry insecure"
        )));
    }
    let t = now();
    let r = RemoteRegistry {
        name: name.clone(),
        url: url.trim_end_matches('/').to_string(),
        username: spec.username.unwrap_or_default(),
        secret_sealed: remotes.seal(spec.secret.as_deref().unwrap_or_default()),
        ca_pem: spec.ca_pem.unwrap_or_default(),
        insecure,
        description: spec.description.unwrap_or_default(),
        created_at: t,
        updated_at: t,
    };
    remotes.client(&r)?;
    remotes
        .store
        .create_registry(&r)
        .await
        .map_err(|e| match e {
            StorageError::AlreadyExists(_) => ApiError::new(
                ErrorCode::Unsupported,
                format!(
                    "registry {name} already exists; change it with: berth registry update {name}"
                ),
            )
            .with_status(StatusCode::CONFLICT),
            e => e.into(),
        })?;
    audit(auth, caller, "registry.add", &name, r.url.clone()).await;
    info(remotes, r).await
}

pub async fn update_registry(
    auth: &Auth,
    remotes: &Remotes,
    caller: &Caller,
    name: &str,
    spec: RegistrySpec,
) -> ApiResult<RegistryInfo> {
    require_admin(caller)?;
    check_spec(&spec)?;
    if spec.name.as_deref().is_some_and(|n| n != name) {
        return Err(bad_request("a registry cannot be renamed; add a new one"));
    }
    let mut r = remotes.get(name).await?;
    let mut changed = Vec::new();
    if let Some(url) = spec.url {
        r.url = url.trim_end_matches('/').to_string();
        changed.push("url");
    }
    if let Some(u) = spec.username {
        r.username = u;
        changed.push("username");
    }
    if let Some(s) = spec.secret {
        r.secret_sealed = remotes.seal(&s);
        changed.push("secret");
    }
    if let Some(ca) = spec.ca_pem {
        r.ca_pem = ca;
        changed.push("ca");
    }
    if let Some(i) = spec.insecure {
        r.insecure = i;
        changed.push("insecure");
    }
    if let Some(d) = spec.description {
        r.description = d;
        changed.push("description");
    }
    let (_, plain) = parse_url(&r.url)?;
    if plain && !r.insecure {
        return Err(bad_request(format!(
            "registry URL {} is plain HTTP; use https:// or mark the registry insecure",
            r.url
        )));
    }
    remotes.client(&r)?;
    r.updated_at = now();
    remotes.store.update_registry(&r).await?;
    audit(auth, caller, "registry.update", name, changed.join(",")).await;
    info(remotes, r).await
}

pub async fn list_registries(remotes: &Remotes, caller: &Caller) -> ApiResult<Vec<RegistryInfo>> {
    require_admin(caller)?;
    let mut out = Vec::new();
    for r in remotes.store.list_registries().await? {
        out.push(info(remotes, r).await?);
    }
    Ok(out)
}

pub async fn get_registry(
    remotes: &Remotes,
    caller: &Caller,
    name: &str,
) -> ApiResult<RegistryInfo> {
    require_admin(caller)?;
    let r = remotes.get(name).await?;
    info(remotes, r).await
}

pub async fn delete_registry(
    auth: &Auth,
    remotes: &Remotes,
    caller: &Caller,
    name: &str,
) -> ApiResult<()> {
    require_admin(caller)?;
    remotes
        .store
        .delete_registry(name)
        .await
        .map_err(|e| match e {
            StorageError::NotFound(_) => not_found(name),
            StorageError::Conflict(msg) => {
                ApiError::new(ErrorCode::Unsupported, msg).with_status(StatusCode::CONFLICT)
            }
            e => e.into(),
        })?;
    audit(auth, caller, "registry.delete", name, String::new()).await;
    Ok(())
}

pub async fn check_registry(
    auth: &Auth,
    remotes: &Remotes,
    caller: &Caller,
    name: &str,
) -> ApiResult<RegistryInfo> {
    require_admin(caller)?;
    let h = remotes.check(name).await?;
    audit(
        auth,
        caller,
        "registry.check",
        name,
        if h.ok { "ok".into() } else { h.message.clone() },
    )
    .await;
    let r = remotes.get(name).await?;
    info(remotes, r).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_round_trip_and_never_show_the_plaintext() {
        let s = Sealer::from_key(&[7; 32]).unwrap();
        let sealed = s.seal("hunter2-password");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_ne!(
            sealed,
            s.seal("hunter2-password"),
            "a fresh nonce each time"
        );
        assert_eq!(s.unseal(&sealed).unwrap(), "hunter2-password");
        assert_eq!(s.seal(""), Vec::<u8>::new());
        assert_eq!(s.unseal(&[]).unwrap(), "");
        let other = Sealer::from_key(&[8; 32]).unwrap();
        let e = other.unseal(&sealed).unwrap_err();
        assert!(e.contains(SECRET_KEY_ENV), "{e}");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(s.unseal(&tampered).unwrap_err().contains("integrity"));
        assert!(Sealer::from_key(&[1; 16]).is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        // SAFETY: the test does not set the variable; make sure the environment does not either.
        if std::env::var(SECRET_KEY_ENV).is_ok() {
            return;
        }
        let a = Sealer::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Sealer::load_or_create(&path).unwrap();
        assert_eq!(b.unseal(&a.seal("x")).unwrap(), "x");
        std::fs::write(&path, b"short").unwrap();
        let e = Sealer::load_or_create(&path).err().unwrap();
        assert!(e.contains("32 bytes"), "{e}");
    }

    #[test]
    fn urls_and_names() {
        assert_eq!(
            parse_url("https://Reg.Example:5000/").unwrap(),
            ("reg.example:5000".into(), false)
        );
        assert_eq!(
            parse_url("http://127.0.0.1:5000").unwrap(),
            ("127.0.0.1:5000".into(), true)
        );
        assert_eq!(
            parse_url("https://registry-1.docker.io").unwrap().0,
            "docker.io"
        );
        for bad in [
            "ftp://x",
            "https://",
            "https://h/path",
            "https://u@h",
            "h:5000",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        validate_name("hub").unwrap();
        validate_name("dist-2.local_1").unwrap();
        for bad in ["", "Hub", "-x", "a/b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn docker_hub_images_get_library() {
        let rc = RemoteClient {
            client: RegistryClient::new(ClientOptions::default()),
            host: "docker.io".into(),
        };
        let i = rc.image("nginx", "1.27").unwrap();
        assert_eq!(i.repository, "library/nginx");
        assert_eq!(i.tag.as_deref(), Some("1.27"));
        let d = format!("sha256:{}", "a".repeat(64));
        let i = rc.image("team/app", &d).unwrap();
        assert_eq!(i.repository, "team/app");
        assert_eq!(i.digest.unwrap().to_string(), d);
    }
}
