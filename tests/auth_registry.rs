//! Access control over TLS against the real `berth serve` (issue 3): every role ×
//! every registry operation, every denial (401 with the precise challenge for anonymous
//! callers, 403 DENIED for authenticated callers without the right), the token endpoint
//! (Basic, anonymous, OAuth2 password and refresh_token grants, refusals), forged and
//! stale tokens, failed-login limits, the audit log, and that credentials never reach
//! the server's log.
//!
//! Servers are started by [`Srv`] (like the shared harness, but with stderr captured to a
//! file so that it can be searched for secrets, and with auto-creation of projects
//! configurable). Accounts are set up through the JSON admin API `/api/v1/`. An expired
//! robot is made by moving its `expires_at` into the past with `sqlite3` before it is
//! ever used; tokens signed with the server's own key (expired, wrong audience, scopes
//! beyond the subject's rights) are forged with `openssl`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{ADMIN_PASSWORD, ADMIN_USER, basic_auth, need, run_cmd};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const SERVICE: &str = "berth";
/// Password of every user the tests create.
const PW: &str = "user-password-0123456";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// A server with its stderr in a file
// ---------------------------------------------------------------------------------------

struct Srv {
    child: Child,
    addr: SocketAddr,
    data: tempfile::TempDir,
    stderr: PathBuf,
    _logs: tempfile::TempDir,
    http: reqwest::Client,
}

impl Srv {
    fn start() -> Srv {
        Srv::start_opts(true)
    }

    /// `berth serve` on 127.0.0.1:0 with `BERTH_AUTO_CREATE_PROJECTS=auto_create`.
    fn start_opts(auto_create: bool) -> Srv {
        let data = tempfile::tempdir().expect("temp data dir");
        let logs = tempfile::tempdir().expect("temp log dir");
        let stderr = logs.path().join("berth-stderr.log");
        let err_file = fs::File::create(&stderr).unwrap();
        let mut child = Command::new(common::berth_bin())
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data.path())
            // Debug level for berth itself: nothing it logs may contain a credential.
            .env(
                "RUST_LOG",
                "berth=debug,berth_server=debug,berth_auth=debug,info",
            )
            .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env(
                "BERTH_AUTO_CREATE_PROJECTS",
                if auto_create { "true" } else { "false" },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .expect("spawn berth serve");
        let Some(url) = common::listening_url(&mut child) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "berth serve did not report its address within 60 s:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        let addr: SocketAddr = url
            .strip_prefix("https://")
            .expect("https")
            .parse()
            .expect("listen address");
        let ca = fs::read(data.path().join("tls/ca.crt")).expect("ca.crt");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
            .build()
            .unwrap();
        Srv {
            child,
            addr,
            data,
            stderr,
            _logs: logs,
            http,
        }
    }

    #[allow(dead_code)]
    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn realm(&self) -> String {
        format!("https://{}/service/token", self.addr)
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        cred: &Cred,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url()));
        match cred {
            Cred::Anon => {}
            Cred::Basic(u, p) => req = req.header("authorization", basic_auth(u, p)),
            Cred::Bearer(t) => req = req.header("authorization", format!("Bearer {t}")),
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap().to_vec();
        Resp {
            what: format!("{method} {path} as {}", cred.label()),
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, cred: &Cred) -> Resp {
        self.call(
            Method::GET,
            path,
            cred,
            &[("accept", &format!("{OCI_MANIFEST}, {OCI_INDEX}"))],
            vec![],
        )
        .await
    }

    /// An admin API call as the system administrator.
    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let (headers, body): (&[(&str, &str)], Vec<u8>) = match body {
            Some(v) => (
                &[("content-type", "application/json")],
                v.to_string().into_bytes(),
            ),
            None => (&[], vec![]),
        };
        self.call(method, path, &admin(), headers, body).await
    }

    async fn api_ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let r = self.api(method, path, body).await;
        assert!(r.status.is_success(), "{}", r.dump());
        if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    async fn create_project(&self, name: &str, public: bool) {
        let v = self
            .api_ok(
                Method::POST,
                "/api/v1/projects",
                Some(json!({"name": name, "public": public})),
            )
            .await;
        assert_eq!(v["name"], name, "{v}");
        assert_eq!(v["public"], public, "{v}");
    }

    async fn add_user(&self, name: &str) {
        let v = self
            .api_ok(
                Method::POST,
                "/api/v1/users",
                Some(json!({"name": name, "password": PW})),
            )
            .await;
        assert_eq!(v["name"], name, "{v}");
        assert!(
            v.get("password").is_none(),
            "a given password is not echoed: {v}"
        );
    }

    async fn set_member(&self, project: &str, user: &str, role: &str) {
        let v = self
            .api_ok(
                Method::PUT,
                &format!("/api/v1/projects/{project}/members/{user}"),
                Some(json!({"role": role})),
            )
            .await;
        assert_eq!(v["role"], role, "{v}");
    }

    /// A robot of `project`; returns (login name, secret).
    async fn create_robot(&self, project: &str, name: &str, push: bool) -> (String, String) {
        let v = self
            .api_ok(
                Method::POST,
                &format!("/api/v1/projects/{project}/robots"),
                Some(json!({"name": name, "push": push, "expires_in_days": 30})),
            )
            .await;
        let login = v["name"].as_str().expect("robot name").to_string();
        assert_eq!(login, format!("robot${project}+{name}"), "{v}");
        let secret = v["secret"].as_str().expect("robot secret").to_string();
        (login, secret)
    }

    /// Move a robot's expiry into the past, directly in the database (the API only
    /// accepts lifetimes of at least one day). Must run before the robot is first used.
    fn expire_robot(&self, login: &str) {
        need("sqlite3");
        let past = now() - 3600;
        let sql = format!(
            "PRAGMA busy_timeout=10000; UPDATE robots SET expires_at = {past} WHERE name = '{login}'; SELECT changes();"
        );
        let out = run_cmd(
            Command::new("sqlite3")
                .arg(self.data.path().join("metadata.db"))
                .arg(sql),
            CMD_TIMEOUT,
        )
        .ok();
        assert_eq!(out.stdout.trim().lines().last(), Some("1"), "{out:?}");
    }

    /// A token from `GET /service/token` for `scopes`.
    async fn token(&self, cred: &Cred, scopes: &[&str]) -> String {
        let r = self.token_resp(cred, scopes, &[]).await;
        assert_eq!(r.status, 200, "{}", r.dump());
        r.json()["token"].as_str().expect("token").to_string()
    }

    async fn token_resp(&self, cred: &Cred, scopes: &[&str], extra: &[(&str, &str)]) -> Resp {
        let mut q = vec![format!("service={SERVICE}")];
        for s in scopes {
            q.push(format!("scope={}", enc(s)));
        }
        for (k, v) in extra {
            q.push(format!("{k}={}", enc(v)));
        }
        self.call(
            Method::GET,
            &format!("/service/token?{}", q.join("&")),
            cred,
            &[],
            vec![],
        )
        .await
    }

    async fn post_token(&self, form: &[(&str, &str)]) -> Resp {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.call(
            Method::POST,
            "/service/token",
            &Cred::Anon,
            &[("content-type", "application/x-www-form-urlencoded")],
            body.into_bytes(),
        )
        .await
    }

    /// Assert that none of `secrets` appears in the server's stderr.
    fn assert_log_clean(&self, secrets: &[String]) {
        let log = self.stderr_text();
        assert!(!log.is_empty(), "the server log is empty: was it captured?");
        for s in secrets {
            assert!(s.len() >= 8, "secret too short to search for: {s:?}");
            assert!(
                !log.contains(s.as_str()),
                "a credential ({}…) appears in the server's stderr",
                &s[..6]
            );
        }
        assert!(
            !log.contains("Basic ") && !log.contains("Bearer ey"),
            "an Authorization header value appears in the server's stderr"
        );
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Percent-encode a query/form value.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Cred {
    Anon,
    Basic(String, String),
    Bearer(String),
}

impl Cred {
    fn basic(u: &str, p: &str) -> Cred {
        Cred::Basic(u.into(), p.into())
    }

    fn label(&self) -> String {
        match self {
            Cred::Anon => "anonymous".into(),
            Cred::Basic(u, _) => format!("Basic {u}"),
            Cred::Bearer(_) => "Bearer".into(),
        }
    }
}

fn admin() -> Cred {
    Cred::basic(ADMIN_USER, ADMIN_PASSWORD)
}

struct Resp {
    what: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.what, self.text()))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    fn dump(&self) -> String {
        format!(
            "{} -> {}\nheaders: {:?}\nbody: {}",
            self.what,
            self.status,
            self.headers,
            self.text()
        )
    }

    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no error code", self.dump()))
            .to_string()
    }

    fn expect(&self, status: u16) -> &Resp {
        assert_eq!(self.status.as_u16(), status, "{}", self.dump());
        self
    }

    /// 401 UNAUTHORIZED with exactly `Bearer realm=…,service="berth",scope="…"[,error=…]`.
    fn expect_challenge(&self, srv: &Srv, scope: Option<&str>, error: Option<&str>) {
        assert_eq!(self.status, 401, "{}", self.dump());
        assert_eq!(self.error_code(), "UNAUTHORIZED", "{}", self.dump());
        let mut want = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", srv.realm());
        if let Some(s) = scope {
            want += &format!(",scope=\"{s}\"");
        }
        if let Some(e) = error {
            want += &format!(",error=\"{e}\"");
        }
        let got = self.header("www-authenticate");
        assert_eq!(got.as_deref(), Some(want.as_str()), "{}", self.dump());
    }

    /// A bearer token that does not cover the request, held by a subject without the
    /// right: 403 DENIED, or 401 `insufficient_scope` naming the scope (Docker's form).
    fn expect_token_refused(&self, srv: &Srv, scope: &str) {
        if self.status == 401 {
            self.expect_challenge(srv, Some(scope), Some("insufficient_scope"));
        } else {
            self.expect_denied();
        }
    }

    fn expect_denied(&self) {
        assert_eq!(self.status, 403, "{}", self.dump());
        assert_eq!(self.error_code(), "DENIED", "{}", self.dump());
        assert!(
            self.header("www-authenticate").is_none(),
            "a 403 needs no challenge: {}",
            self.dump()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[derive(Clone, Debug)]
struct Image {
    config: (String, usize),
    layer: (String, usize),
    manifest: Vec<u8>,
    digest: String,
}

fn image(seed: &str) -> (Image, Vec<u8>, Vec<u8>) {
    let config = json!({"architecture": "amd64", "os": "linux", "seed": seed})
        .to_string()
        .into_bytes();
    let layer = format!("layer bytes of {seed}").repeat(50).into_bytes();
    let manifest = manifest_for(
        (&digest_of(&config), config.len()),
        (&digest_of(&layer), layer.len()),
        seed,
        None,
    );
    let img = Image {
        config: (digest_of(&config), config.len()),
        layer: (digest_of(&layer), layer.len()),
        digest: digest_of(&manifest),
        manifest,
    };
    (img, config, layer)
}

fn manifest_for(
    config: (&str, usize),
    layer: (&str, usize),
    note: &str,
    subject: Option<(&str, usize)>,
) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.0, "size": layer.1}],
        "annotations": {"note": note},
    });
    if let Some((d, s)) = subject {
        m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": d, "size": s});
        m["artifactType"] = json!("application/vnd.berth.test.note");
    }
    serde_json::to_vec(&m).unwrap()
}

async fn push_blob(srv: &Srv, cred: &Cred, repo: &str, bytes: &[u8]) -> Resp {
    srv.call(
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={}", digest_of(bytes)),
        cred,
        &[("content-type", "application/octet-stream")],
        bytes.to_vec(),
    )
    .await
}

async fn push_manifest(srv: &Srv, cred: &Cred, repo: &str, reference: &str, m: &[u8]) -> Resp {
    srv.call(
        Method::PUT,
        &format!("/v2/{repo}/manifests/{reference}"),
        cred,
        &[("content-type", OCI_MANIFEST)],
        m.to_vec(),
    )
    .await
}

/// Push a whole image as `cred` (asserting success).
async fn push_image(srv: &Srv, cred: &Cred, repo: &str, tag: &str, seed: &str) -> Image {
    let (img, config, layer) = image(seed);
    push_blob(srv, cred, repo, &config).await.expect(201);
    push_blob(srv, cred, repo, &layer).await.expect(201);
    push_manifest(srv, cred, repo, tag, &img.manifest)
        .await
        .expect(201);
    img
}

// ---------------------------------------------------------------------------------------
// The population: every role
// ---------------------------------------------------------------------------------------

/// What a role may do on the private project `priv`.
#[derive(Clone, Debug)]
struct Who {
    label: &'static str,
    cred: Cred,
    pull: bool,
    push: bool,
    delete: bool,
    /// The credentials are refused outright (expired or revoked robot).
    refused: bool,
    /// Repositories it may see in the catalog.
    sees: &'static [&'static str],
}

const ALL: &[&str] = &["library/app", "priv/app", "secret/app"];
const PRIV_AND_PUBLIC: &[&str] = &["library/app", "priv/app"];
const PUBLIC: &[&str] = &["library/app"];

struct World {
    srv: Srv,
    /// `priv/app:v1` (private), also in `library/app:v1` and (other content) `secret/app:v1`.
    img: Image,
    secret_img: Image,
    who: Vec<Who>,
    secrets: Vec<String>,
}

async fn world() -> World {
    world_on(Srv::start()).await
}

async fn world_on(srv: Srv) -> World {
    let a = admin();
    srv.create_project("priv", false).await;
    srv.create_project("secret", false).await;
    let img = push_image(&srv, &a, "priv/app", "v1", "app").await;
    push_image(&srv, &a, "library/app", "v1", "app").await;
    let secret_img = push_image(&srv, &a, "secret/app", "v1", "secret").await;

    for (user, role) in [
        ("guest-u", Some("guest")),
        ("dev-u", Some("developer")),
        ("maint-u", Some("maintainer")),
        ("padmin-u", Some("project_admin")),
        ("outsider", None),
    ] {
        srv.add_user(user).await;
        if let Some(role) = role {
            srv.set_member("priv", user, role).await;
        }
    }
    let (rpull, rpull_s) = srv.create_robot("priv", "puller", false).await;
    let (rpush, rpush_s) = srv.create_robot("priv", "pusher", true).await;
    let (rexp, rexp_s) = srv.create_robot("priv", "expired", true).await;
    srv.expire_robot(&rexp);
    let (rrev, rrev_s) = srv.create_robot("priv", "revoked", true).await;
    let v = srv
        .api_ok(Method::DELETE, "/api/v1/projects/priv/robots/revoked", None)
        .await;
    assert_eq!(v["revoked"], true, "{v}");
    assert_eq!(v["active"], false, "{v}");
    let robots = srv
        .api_ok(Method::GET, "/api/v1/projects/priv/robots", None)
        .await;
    let expired = robots
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == rexp.as_str())
        .unwrap_or_else(|| panic!("{robots}"));
    assert_eq!(
        expired["active"], false,
        "expired robot listed as active: {expired}"
    );

    let u = |n: &str| Cred::basic(n, PW);
    let who = vec![
        Who {
            label: "anonymous",
            cred: Cred::Anon,
            pull: false,
            push: false,
            delete: false,
            refused: false,
            sees: PUBLIC,
        },
        Who {
            label: "outsider",
            cred: u("outsider"),
            pull: false,
            push: false,
            delete: false,
            refused: false,
            sees: PUBLIC,
        },
        Who {
            label: "guest",
            cred: u("guest-u"),
            pull: true,
            push: false,
            delete: false,
            refused: false,
            sees: PRIV_AND_PUBLIC,
        },
        Who {
            label: "developer",
            cred: u("dev-u"),
            pull: true,
            push: true,
            delete: false,
            refused: false,
            sees: PRIV_AND_PUBLIC,
        },
        Who {
            label: "maintainer",
            cred: u("maint-u"),
            pull: true,
            push: true,
            delete: true,
            refused: false,
            sees: PRIV_AND_PUBLIC,
        },
        Who {
            label: "project-admin",
            cred: u("padmin-u"),
            pull: true,
            push: true,
            delete: true,
            refused: false,
            sees: PRIV_AND_PUBLIC,
        },
        Who {
            label: "system-admin",
            cred: admin(),
            pull: true,
            push: true,
            delete: true,
            refused: false,
            sees: ALL,
        },
        Who {
            label: "robot-pull",
            cred: Cred::basic(&rpull, &rpull_s),
            pull: true,
            push: false,
            delete: false,
            refused: false,
            sees: PRIV_AND_PUBLIC,
        },
        Who {
            label: "robot-push",
            cred: Cred::basic(&rpush, &rpush_s),
            pull: true,
            push: true,
            delete: false,
            refused: false,
            sees: PRIV_AND_PUBLIC,
        },
        Who {
            label: "robot-expired",
            cred: Cred::basic(&rexp, &rexp_s),
            pull: false,
            push: false,
            delete: false,
            refused: true,
            sees: &[],
        },
        Who {
            label: "robot-revoked",
            cred: Cred::basic(&rrev, &rrev_s),
            pull: false,
            push: false,
            delete: false,
            refused: true,
            sees: &[],
        },
    ];
    let secrets = vec![
        ADMIN_PASSWORD.to_string(),
        PW.to_string(),
        rpull_s,
        rpush_s,
        rexp_s,
        rrev_s,
        STANDARD.encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}")),
        STANDARD.encode(format!("dev-u:{PW}")),
    ];
    World {
        srv,
        img,
        secret_img,
        who,
        secrets,
    }
}

/// The scope string of a challenge for `action` on `repo` (push asks for pull,push).
fn scope(repo: &str, action: &str) -> String {
    let actions = if action == "push" {
        "pull,push"
    } else {
        action
    };
    format!("repository:{repo}:{actions}")
}

/// Check a response to `who`'s attempt at `action` on `repo`: `ok` when allowed, else
/// the right refusal. `token` tells whether the call used a bearer token and whether that
/// token carried anything for `repo`.
#[allow(clippy::too_many_arguments)] // one row of the role × operation table
fn check(
    srv: &Srv,
    who: &Who,
    r: &Resp,
    allowed: bool,
    ok: u16,
    repo: &str,
    action: &str,
    token: Option<bool>,
) {
    if who.refused {
        // Refused credentials are failed logins: 401, or 429 once the limiter kicks in.
        if r.status == 429 {
            assert!(r.header("retry-after").is_some(), "{}", r.dump());
            return;
        }
        assert_eq!(r.status, 401, "{}: {}", who.label, r.dump());
        assert_eq!(r.error_code(), "UNAUTHORIZED", "{}", r.dump());
        let ch = r.header("www-authenticate").unwrap_or_default();
        assert!(
            ch.starts_with(&format!("Bearer realm=\"{}\"", srv.realm())),
            "{}",
            r.dump()
        );
        return;
    }
    if allowed {
        assert_eq!(
            r.status.as_u16(),
            ok,
            "{} should be allowed to {action} {repo}: {}",
            who.label,
            r.dump()
        );
        return;
    }
    match token {
        Some(_) => r.expect_token_refused(srv, &scope(repo, action)),
        None if matches!(who.cred, Cred::Anon) => {
            r.expect_challenge(srv, Some(&scope(repo, action)), None)
        }
        None => r.expect_denied(),
    }
}

/// Every registry operation on `priv/app` by every role, with `cred_of` giving the
/// credentials actually sent (Basic as configured, or a bearer token).
async fn run_matrix(w: &World, bearer: bool) {
    let srv = &w.srv;
    let a = admin();
    for (i, who) in w.who.iter().enumerate() {
        // Credentials: Basic directly, or a token from the token endpoint.
        let (cred, token_has_repo) = if bearer && !who.refused {
            let t = srv
                .token(&who.cred, &["repository:priv/app:pull,push,delete"])
                .await;
            let granted = token_actions(&t, "priv/app");
            let mut want = BTreeSet::new();
            if who.pull {
                want.insert("pull".to_string());
            }
            if who.push {
                want.insert("push".to_string());
            }
            if who.delete {
                want.insert("delete".to_string());
            }
            assert_eq!(
                granted, want,
                "{}: token grant exceeds or misses its rights",
                who.label
            );
            (Cred::Bearer(t), Some(!want.is_empty()))
        } else if bearer {
            let r = srv
                .token_resp(&who.cred, &["repository:priv/app:pull"], &[])
                .await;
            assert_eq!(
                r.status,
                401,
                "{}: token for refused credentials: {}",
                who.label,
                r.dump()
            );
            (who.cred.clone(), None)
        } else {
            (who.cred.clone(), None)
        };
        let repo = "priv/app";
        let m = srv.get(&format!("/v2/{repo}/manifests/v1"), &cred).await;
        check(srv, who, &m, who.pull, 200, repo, "pull", token_has_repo);
        if who.pull {
            assert_eq!(m.body, w.img.manifest);
        }
        let h = srv
            .call(
                Method::HEAD,
                &format!("/v2/{repo}/manifests/{}", w.img.digest),
                &cred,
                &[],
                vec![],
            )
            .await;
        if !who.pull {
            assert!(h.status == 401 || h.status == 403, "{}", h.dump());
            assert_eq!(h.status, m.status, "HEAD and GET disagree: {}", h.dump());
        } else {
            h.expect(200);
        }
        let b = srv
            .get(&format!("/v2/{repo}/blobs/{}", w.img.layer.0), &cred)
            .await;
        check(srv, who, &b, who.pull, 200, repo, "pull", token_has_repo);
        let t = srv.get(&format!("/v2/{repo}/tags/list"), &cred).await;
        check(srv, who, &t, who.pull, 200, repo, "pull", token_has_repo);
        if who.pull {
            assert!(
                t.json()["tags"].as_array().unwrap().contains(&json!("v1")),
                "{}",
                t.dump()
            );
        }

        // Push: a new blob and a new tag.
        let seed = format!("pushed by {} {bearer}", who.label);
        let blob = seed.repeat(10).into_bytes();
        let pb = push_blob(srv, &cred, repo, &blob).await;
        check(srv, who, &pb, who.push, 201, repo, "push", token_has_repo);
        let pm = manifest_for(
            (&w.img.config.0, w.img.config.1),
            (&w.img.layer.0, w.img.layer.1),
            &seed,
            None,
        );
        let tag = format!("by-{i}-{bearer}");
        let put = push_manifest(srv, &cred, repo, &tag, &pm).await;
        check(srv, who, &put, who.push, 201, repo, "push", token_has_repo);
        let chunked = srv
            .call(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                &cred,
                &[],
                vec![],
            )
            .await;
        check(
            srv,
            who,
            &chunked,
            who.push,
            202,
            repo,
            "push",
            token_has_repo,
        );

        // Delete: a tag, a manifest by digest, a blob link, each made by the admin.
        let victim = format!("victim {} {bearer}", who.label);
        let vm = manifest_for(
            (&w.img.config.0, w.img.config.1),
            (&w.img.layer.0, w.img.layer.1),
            &victim,
            None,
        );
        let vtag = format!("del-{i}-{bearer}");
        push_manifest(srv, &a, repo, &vtag, &vm).await.expect(201);
        let vblob = victim.repeat(7).into_bytes();
        push_blob(srv, &a, repo, &vblob).await.expect(201);

        let dt = srv
            .call(
                Method::DELETE,
                &format!("/v2/{repo}/manifests/{vtag}"),
                &cred,
                &[],
                vec![],
            )
            .await;
        check(
            srv,
            who,
            &dt,
            who.delete,
            202,
            repo,
            "delete",
            token_has_repo,
        );
        let dm = srv
            .call(
                Method::DELETE,
                &format!("/v2/{repo}/manifests/{}", digest_of(&vm)),
                &cred,
                &[],
                vec![],
            )
            .await;
        check(
            srv,
            who,
            &dm,
            who.delete,
            202,
            repo,
            "delete",
            token_has_repo,
        );
        let db = srv
            .call(
                Method::DELETE,
                &format!("/v2/{repo}/blobs/{}", digest_of(&vblob)),
                &cred,
                &[],
                vec![],
            )
            .await;
        check(
            srv,
            who,
            &db,
            who.delete,
            202,
            repo,
            "delete",
            token_has_repo,
        );

        // What the admin sees afterwards matches what was allowed.
        let after = srv.get(&format!("/v2/{repo}/manifests/{tag}"), &a).await;
        assert_eq!(
            after.status,
            if who.push { 200 } else { 404 },
            "{}: {}",
            who.label,
            after.dump()
        );
        let vt = srv.get(&format!("/v2/{repo}/manifests/{vtag}"), &a).await;
        assert_eq!(
            vt.status,
            if who.delete { 404 } else { 200 },
            "{}: {}",
            who.label,
            vt.dump()
        );
        let vb = srv
            .call(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{}", digest_of(&vblob)),
                &a,
                &[],
                vec![],
            )
            .await;
        assert_eq!(
            vb.status,
            if who.delete { 404 } else { 200 },
            "{}: {}",
            who.label,
            vb.dump()
        );
    }
}

/// The set of actions a JWT grants on `repo` (read from its payload).
fn token_actions(token: &str, repo: &str) -> BTreeSet<String> {
    let claims = jwt_claims(token);
    let mut out = BTreeSet::new();
    for a in claims["access"].as_array().cloned().unwrap_or_default() {
        if a["type"] == "repository" && a["name"] == repo {
            for act in a["actions"].as_array().unwrap() {
                let act = act.as_str().unwrap();
                if act == "*" {
                    out.extend(["pull", "push", "delete"].map(String::from));
                } else {
                    out.insert(act.to_string());
                }
            }
        }
    }
    out
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

// ---------------------------------------------------------------------------------------
// Tests: roles × operations
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_every_operation_with_basic_credentials() {
    let w = world().await;
    run_matrix(&w, false).await;
    w.srv.assert_log_clean(&w.secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_every_operation_with_bearer_tokens() {
    let w = world().await;
    run_matrix(&w, true).await;
    w.srv.assert_log_clean(&w.secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_project_anyone_pulls_only_members_push() {
    let w = world().await;
    let srv = &w.srv;
    for who in &w.who {
        let r = srv.get("/v2/library/app/manifests/v1", &who.cred).await;
        if who.refused {
            check(srv, who, &r, false, 200, "library/app", "pull", None);
            continue;
        }
        r.expect(200);
        srv.get("/v2/library/app/tags/list", &who.cred)
            .await
            .expect(200);
        let blob = format!("library push by {}", who.label).into_bytes();
        let p = push_blob(srv, &who.cred, "library/app", &blob).await;
        // Only the system administrator has a role in `library`.
        let allowed = who.label == "system-admin";
        check(srv, who, &p, allowed, 201, "library/app", "push", None);
        if !allowed {
            let d = srv
                .call(
                    Method::DELETE,
                    "/v2/library/app/manifests/v1",
                    &who.cred,
                    &[],
                    vec![],
                )
                .await;
            check(srv, who, &d, false, 202, "library/app", "delete", None);
        }
    }
    // Anonymous pull through an anonymous token, as Docker clients do.
    let anon = srv
        .token(
            &Cred::Anon,
            &[
                "repository:library/app:pull",
                "repository:library/app:pull,push",
            ],
        )
        .await;
    assert_eq!(
        token_actions(&anon, "library/app"),
        BTreeSet::from(["pull".to_string()])
    );
    srv.get("/v2/library/app/manifests/v1", &Cred::Bearer(anon.clone()))
        .await
        .expect(200);
    let p = push_blob(
        srv,
        &Cred::Bearer(anon),
        "library/app",
        b"anonymous push attempt",
    )
    .await;
    p.expect_token_refused(srv, "repository:library/app:pull,push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint_challenges_and_accepts_basic() {
    let srv = Srv::start();
    let r = srv.get("/v2/", &Cred::Anon).await;
    r.expect_challenge(&srv, None, None);
    srv.get("/v2/", &admin()).await.expect(200);
    let bad = srv
        .get("/v2/", &Cred::basic(ADMIN_USER, "wrong-password-xyz"))
        .await;
    assert_eq!(bad.status, 401, "{}", bad.dump());
    let t = srv.token(&admin(), &[]).await;
    srv.get("/v2/", &Cred::Bearer(t)).await.expect(200);
    let anon = srv.token(&Cred::Anon, &[]).await;
    srv.get("/v2/", &Cred::Bearer(anon)).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_shows_only_readable_repositories() {
    let w = world().await;
    let srv = &w.srv;
    for who in &w.who {
        let r = srv.get("/v2/_catalog", &who.cred).await;
        if who.refused {
            assert_eq!(r.status, 401, "{}", r.dump());
            continue;
        }
        if matches!(who.cred, Cred::Anon) {
            r.expect_challenge(srv, Some("registry:catalog:*"), None);
            continue;
        }
        r.expect(200);
        let got: Vec<String> = serde_json::from_value(r.json()["repositories"].clone()).unwrap();
        assert_eq!(got, who.sees, "{}: {}", who.label, r.dump());
        // Page by page (n=1) the filtered listing is the same.
        let mut paged = Vec::new();
        let mut path = "/v2/_catalog?n=1".to_string();
        for _ in 0..10 {
            let p = srv.get(&path, &who.cred).await.expect(200).json();
            paged.extend(serde_json::from_value::<Vec<String>>(p["repositories"].clone()).unwrap());
            let r2 = srv.get(&path, &who.cred).await;
            match r2.header("link") {
                Some(l) => path = l[1..l.find('>').unwrap()].to_string(),
                None => break,
            }
        }
        assert_eq!(paged, who.sees, "{}: paged catalog", who.label);
        // With a token for registry:catalog:* the same filter applies.
        let t = srv.token(&who.cred, &["registry:catalog:*"]).await;
        let r = srv
            .get("/v2/_catalog", &Cred::Bearer(t))
            .await
            .expect(200)
            .json();
        let got: Vec<String> = serde_json::from_value(r["repositories"].clone()).unwrap();
        assert_eq!(got, who.sees, "{}: catalog with a token", who.label);
    }
    // An anonymous token sees only public repositories.
    let t = srv.token(&Cred::Anon, &["registry:catalog:*"]).await;
    let r = srv.get("/v2/_catalog", &Cred::Bearer(t)).await;
    if r.status == 200 {
        let got: Vec<String> = serde_json::from_value(r.json()["repositories"].clone()).unwrap();
        assert_eq!(got, PUBLIC, "anonymous token catalog");
    } else {
        r.expect_challenge(srv, Some("registry:catalog:*"), Some("insufficient_scope"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_follow_the_subject_repository_permission() {
    let w = world().await;
    let srv = &w.srv;
    let a = admin();
    let (cfg, lay) = (w.img.config.clone(), w.img.layer.clone());
    let art = manifest_for(
        (&cfg.0, cfg.1),
        (&lay.0, lay.1),
        "a referrer",
        Some((&w.img.digest, w.img.manifest.len())),
    );
    push_manifest(srv, &a, "priv/app", &digest_of(&art), &art)
        .await
        .expect(201);
    let path = format!("/v2/priv/app/referrers/{}", w.img.digest);
    for who in &w.who {
        let r = srv.get(&path, &who.cred).await;
        check(srv, who, &r, who.pull, 200, "priv/app", "pull", None);
        if who.pull {
            let idx = r.json();
            let ds: Vec<&str> = idx["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["digest"].as_str().unwrap())
                .collect();
            assert_eq!(ds, vec![digest_of(&art).as_str()], "{}: {idx}", who.label);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_repository_mount_needs_read_access_to_the_source() {
    let w = world().await;
    let srv = &w.srv;
    let dev = Cred::basic("dev-u", PW);
    let a = admin();
    let secret_blob = w.secret_img.layer.0.clone();
    // The developer of `priv` cannot read `secret/app`: no link, an ordinary upload session.
    for cred in [
        dev.clone(),
        Cred::Bearer(
            srv.token(
                &dev,
                &[
                    "repository:priv/app:pull,push",
                    "repository:secret/app:pull",
                ],
            )
            .await,
        ),
    ] {
        let r = srv
            .call(
                Method::POST,
                &format!("/v2/priv/app/blobs/uploads/?mount={secret_blob}&from=secret/app"),
                &cred,
                &[],
                vec![],
            )
            .await;
        r.expect(202);
        let loc = r.header("location").expect("upload Location");
        assert!(loc.contains("/v2/priv/app/blobs/uploads/"), "{}", r.dump());
        let head = srv
            .call(
                Method::HEAD,
                &format!("/v2/priv/app/blobs/{secret_blob}"),
                &a,
                &[],
                vec![],
            )
            .await;
        assert_eq!(
            head.status,
            404,
            "the private blob was linked: {}",
            head.dump()
        );
        // Without `from` either.
        let r = srv
            .call(
                Method::POST,
                &format!("/v2/priv/app/blobs/uploads/?mount={secret_blob}"),
                &cred,
                &[],
                vec![],
            )
            .await;
        r.expect(202);
    }
    // The fallback upload works: the client uploads the bytes itself.
    let (_, _, secret_layer) = image("secret");
    push_blob(srv, &dev, "priv/app", &secret_layer)
        .await
        .expect(201);
    // From a readable repository, the mount happens.
    srv.create_project("other", false).await;
    srv.set_member("other", "dev-u", "guest").await;
    let (oimg, oc, _) = image("other");
    push_blob(srv, &a, "other/app", &oc).await.expect(201);
    let r = srv
        .call(
            Method::POST,
            &format!(
                "/v2/priv/app/blobs/uploads/?mount={}&from=other/app",
                oimg.config.0
            ),
            &dev,
            &[],
            vec![],
        )
        .await;
    r.expect(201);
    assert_eq!(
        r.header("docker-content-digest").as_deref(),
        Some(oimg.config.0.as_str())
    );
    // A guest of the target cannot mount into it at all.
    let g = srv
        .call(
            Method::POST,
            &format!(
                "/v2/priv/app/blobs/uploads/?mount={}&from=library/app",
                w.img.layer.0
            ),
            &Cred::basic("guest-u", PW),
            &[],
            vec![],
        )
        .await;
    g.expect_denied();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_cannot_tell_private_from_missing() {
    let w = world().await;
    let srv = &w.srv;
    // `priv/app` exists (private); `priv/zzz` does not; `nope/app` is in no project.
    let exists = "priv/app";
    let cases: Vec<(Method, String)> = vec![
        (Method::GET, "/v2/{R}/manifests/v1".into()),
        (Method::HEAD, "/v2/{R}/manifests/v1".into()),
        (Method::GET, format!("/v2/{{R}}/manifests/{}", w.img.digest)),
        (Method::GET, format!("/v2/{{R}}/blobs/{}", w.img.layer.0)),
        (Method::HEAD, format!("/v2/{{R}}/blobs/{}", w.img.layer.0)),
        (Method::GET, "/v2/{R}/tags/list".into()),
        (Method::GET, format!("/v2/{{R}}/referrers/{}", w.img.digest)),
        (Method::POST, "/v2/{R}/blobs/uploads/".into()),
        (Method::PUT, "/v2/{R}/manifests/v2".into()),
        (Method::DELETE, "/v2/{R}/manifests/v1".into()),
    ];
    let norm = |r: &Resp, name: &str| -> (u16, Vec<(String, String)>, String) {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| k.as_str() != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().replace(name, "{R}")))
            .collect();
        h.sort();
        (r.status.as_u16(), h, r.text().replace(name, "{R}"))
    };
    for (method, tpl) in &cases {
        let body = if *method == Method::PUT {
            w.img.manifest.clone()
        } else {
            vec![]
        };
        let hdrs: &[(&str, &str)] = if *method == Method::PUT {
            &[("content-type", OCI_MANIFEST)]
        } else {
            &[]
        };
        let mut seen = Vec::new();
        for name in [exists, "priv/zzz", "nope/app"] {
            let r = srv
                .call(
                    method.clone(),
                    &tpl.replace("{R}", name),
                    &Cred::Anon,
                    hdrs,
                    body.clone(),
                )
                .await;
            assert_eq!(r.status, 401, "{}", r.dump());
            seen.push((name, norm(&r, name)));
        }
        for (name, n) in &seen[1..] {
            assert_eq!(
                &seen[0].1, n,
                "{method} {tpl}: anonymous answers for {exists} and {name} differ"
            );
        }
        // The same for an authenticated user without rights (403 either way) within the
        // private project (a missing project is left out: this server auto-creates
        // projects on push, so a push there succeeds).
        let mut seen = Vec::new();
        for name in [exists, "priv/zzz"] {
            let r = srv
                .call(
                    method.clone(),
                    &tpl.replace("{R}", name),
                    &Cred::basic("outsider", PW),
                    hdrs,
                    body.clone(),
                )
                .await;
            seen.push((name, norm(&r, name)));
        }
        for (name, n) in &seen[1..] {
            assert_eq!(
                &seen[0].1, n,
                "{method} {tpl}: outsider's answers for {exists} and {name} differ"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_into_a_missing_project_is_refused_without_auto_create() {
    let srv = Srv::start_opts(false);
    let a = admin();
    let (img, config, _) = image("x");
    let r = push_blob(&srv, &a, "nope/app", &config).await;
    assert!(r.status.is_client_error(), "{}", r.dump());
    assert!(
        r.text().contains("nope"),
        "the error names the project: {}",
        r.dump()
    );
    assert!(
        r.text().contains("does not exist"),
        "the error says the project does not exist: {}",
        r.dump()
    );
    let m = push_manifest(&srv, &a, "nope/app", "v1", &img.manifest).await;
    assert!(m.status.is_client_error(), "{}", m.dump());
    let p = srv.api(Method::GET, "/api/v1/projects/nope", None).await;
    assert_eq!(p.status, 404, "the project was created: {}", p.dump());
    // Anonymous: the usual challenge, nothing about the project.
    push_blob(&srv, &Cred::Anon, "nope/app", &config)
        .await
        .expect_challenge(&srv, Some("repository:nope/app:pull,push"), None);
    // Once created, the push works; library exists from the start.
    srv.create_project("nope", false).await;
    push_image(&srv, &a, "nope/app", "v1", "x").await;
    push_image(&srv, &a, "library/app", "v1", "x").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_does_not_let_any_user_create_projects_for_others() {
    // With auto-create on, a user's push into a missing project creates it (private)
    // with the pusher as project admin; other users still see nothing of it.
    let srv = Srv::start();
    srv.add_user("alice").await;
    srv.add_user("bob").await;
    let alice = Cred::basic("alice", PW);
    push_image(&srv, &alice, "alice-prj/app", "v1", "a").await;
    let p = srv
        .api_ok(Method::GET, "/api/v1/projects/alice-prj", None)
        .await;
    assert_eq!(p["public"], false, "{p}");
    let bob = Cred::basic("bob", PW);
    srv.get("/v2/alice-prj/app/manifests/v1", &bob)
        .await
        .expect_denied();
    srv.get("/v2/alice-prj/app/manifests/v1", &Cred::Anon)
        .await
        .expect_challenge(&srv, Some("repository:alice-prj/app:pull"), None);
}

// ---------------------------------------------------------------------------------------
// Token endpoint
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_basic_anonymous_and_never_beyond_rights() {
    let w = world().await;
    let srv = &w.srv;
    let r = srv
        .token_resp(
            &Cred::basic("dev-u", PW),
            &["repository:priv/app:pull,push"],
            &[],
        )
        .await
        .expect(200)
        .json();
    let t = r["token"].as_str().unwrap();
    assert_eq!(r["access_token"], t, "{r}");
    assert!(r["expires_in"].as_u64().unwrap() >= 60, "{r}");
    assert!(r["issued_at"].as_str().unwrap().ends_with('Z'), "{r}");
    assert!(
        r.get("refresh_token").is_none(),
        "no refresh token unless asked: {r}"
    );
    let c = jwt_claims(t);
    assert_eq!(c["sub"], "dev-u");
    assert_eq!(c["aud"], SERVICE);
    assert_eq!(
        token_actions(t, "priv/app"),
        BTreeSet::from(["pull".into(), "push".into()])
    );
    // offline_token=true adds a refresh token.
    let r = srv
        .token_resp(
            &Cred::basic("dev-u", PW),
            &[],
            &[("offline_token", "true"), ("client_id", "test")],
        )
        .await
        .expect(200)
        .json();
    assert!(
        r["refresh_token"].as_str().is_some_and(|s| !s.is_empty()),
        "{r}"
    );

    // Scopes never exceed rights: each role asks for everything everywhere.
    let ask = [
        "repository:priv/app:pull,push,delete,*",
        "repository:secret/app:pull,push",
        "repository:library/app:pull,push,delete",
        "repository:nope/app:pull,push",
    ];
    for who in &w.who {
        if who.refused {
            continue;
        }
        let t = srv.token(&who.cred, &ask).await;
        let p = token_actions(&t, "priv/app");
        let want: BTreeSet<String> = [
            (who.pull, "pull"),
            (who.push, "push"),
            (who.delete, "delete"),
        ]
        .iter()
        .filter(|(b, _)| *b)
        .map(|(_, s)| s.to_string())
        .collect();
        assert_eq!(p, want, "{}: priv/app", who.label);
        let admin_all = who.label == "system-admin";
        let s = token_actions(&t, "secret/app");
        assert_eq!(s.is_empty(), !admin_all, "{}: secret/app {s:?}", who.label);
        let l = token_actions(&t, "library/app");
        if !admin_all {
            assert_eq!(
                l,
                BTreeSet::from(["pull".into()]),
                "{}: library/app",
                who.label
            );
        }
        let n = token_actions(&t, "nope/app");
        assert_eq!(n.is_empty(), !admin_all, "{}: nope/app {n:?}", who.label);
        // The granted token is usable exactly as granted.
        if !admin_all {
            srv.get("/v2/secret/app/manifests/v1", &Cred::Bearer(t.clone()))
                .await
                .expect_token_refused(srv, "repository:secret/app:pull");
        }
    }
    // Anonymous: only public pull.
    let t = srv.token(&Cred::Anon, &ask).await;
    let c = jwt_claims(&t);
    assert_eq!(c["sub"], "", "{c}");
    assert_eq!(
        token_actions(&t, "library/app"),
        BTreeSet::from(["pull".into()])
    );
    assert!(token_actions(&t, "priv/app").is_empty());
    assert!(token_actions(&t, "secret/app").is_empty());
    let r = srv
        .token_resp(&Cred::Anon, &ask, &[("offline_token", "true")])
        .await
        .expect(200)
        .json();
    assert!(
        r.get("refresh_token").is_none(),
        "anonymous refresh token: {r}"
    );

    // Wrong service, wrong password, malformed scope.
    let r = srv
        .call(
            Method::GET,
            "/service/token?service=other&scope=repository:library/app:pull",
            &admin(),
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.dump());
    let r = srv
        .call(
            Method::GET,
            "/service/token?service=other",
            &Cred::Anon,
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.dump());
    let r = srv
        .token_resp(&Cred::basic("dev-u", "not-the-password"), &[], &[])
        .await;
    assert_eq!(r.status, 401, "{}", r.dump());
    let r = srv
        .token_resp(&Cred::basic("nobody", "not-the-password"), &[], &[])
        .await;
    assert_eq!(r.status, 401, "{}", r.dump());
    let r = srv
        .token_resp(&admin(), &["repository:Bad Name:pull"], &[])
        .await;
    assert_eq!(r.status, 400, "{}", r.dump());
    // A bearer token is not a credential for the token endpoint.
    let t = srv.token(&admin(), &[]).await;
    let r = srv.token_resp(&Cred::Bearer(t), &[], &[]).await;
    assert_eq!(r.status, 401, "{}", r.dump());
    w.srv.assert_log_clean(&w.secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_password_and_refresh_grants() {
    let w = world().await;
    let srv = &w.srv;
    let r = srv
        .post_token(&[
            ("grant_type", "password"),
            ("username", "dev-u"),
            ("password", PW),
            ("service", SERVICE),
            ("scope", "repository:priv/app:pull,push"),
            ("client_id", "berth-test"),
            ("access_type", "offline"),
        ])
        .await
        .expect(200)
        .json();
    let access = r["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    let refresh = r["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_string();
    assert_eq!(
        token_actions(&access, "priv/app"),
        BTreeSet::from(["pull".into(), "push".into()])
    );
    srv.get("/v2/priv/app/manifests/v1", &Cred::Bearer(access.clone()))
        .await
        .expect(200);
    // The refresh token is not an access token.
    srv.get("/v2/priv/app/manifests/v1", &Cred::Bearer(refresh.clone()))
        .await
        .expect(401);
    // Nor is an access token a refresh token.
    let r = srv
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &access),
            ("service", SERVICE),
        ])
        .await;
    assert_eq!(r.status, 401, "{}", r.dump());

    // refresh_token grant: new access, computed afresh.
    let r = srv
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("service", SERVICE),
            ("scope", "repository:priv/app:pull,push,delete"),
            ("client_id", "berth-test"),
        ])
        .await
        .expect(200)
        .json();
    let a2 = r["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        token_actions(&a2, "priv/app"),
        BTreeSet::from(["pull".into(), "push".into()])
    );
    srv.get("/v2/priv/app/tags/list", &Cred::Bearer(a2))
        .await
        .expect(200);
    // A role change applies to the next refresh at once.
    srv.set_member("priv", "dev-u", "guest").await;
    let r = srv
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("service", SERVICE),
            ("scope", "repository:priv/app:pull,push"),
        ])
        .await
        .expect(200)
        .json();
    assert_eq!(
        token_actions(r["access_token"].as_str().unwrap(), "priv/app"),
        BTreeSet::from(["pull".into()])
    );
    // Wrong password, unknown grant type, wrong service.
    let r = srv
        .post_token(&[
            ("grant_type", "password"),
            ("username", "dev-u"),
            ("password", "nope-nope-nope"),
            ("service", SERVICE),
        ])
        .await;
    assert_eq!(r.status, 401, "{}", r.dump());
    let r = srv
        .post_token(&[("grant_type", "client_credentials"), ("service", SERVICE)])
        .await;
    assert_eq!(r.status, 400, "{}", r.dump());
    let r = srv
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("service", "elsewhere"),
        ])
        .await;
    assert_eq!(r.status, 400, "{}", r.dump());
    let r = srv
        .post_token(&[
            ("grant_type", "password"),
            ("username", "dev-u"),
            ("password", PW),
            ("service", "elsewhere"),
        ])
        .await;
    assert_eq!(r.status, 400, "{}", r.dump());

    // After a password change the refresh token is refused.
    srv.api_ok(
        Method::PATCH,
        "/api/v1/users/dev-u",
        Some(json!({"password": "a-new-password-987"})),
    )
    .await;
    let r = srv
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("service", SERVICE),
        ])
        .await;
    assert_eq!(r.status, 401, "refresh after password change: {}", r.dump());
    // The old password is refused, the new one works, at once (no stale login cache).
    let r = srv
        .get("/v2/priv/app/tags/list", &Cred::basic("dev-u", PW))
        .await;
    assert_eq!(r.status, 401, "old password after change: {}", r.dump());
    srv.get(
        "/v2/priv/app/tags/list",
        &Cred::basic("dev-u", "a-new-password-987"),
    )
    .await
    .expect(200);

    // After deletion of the user: refresh refused, Basic refused, old access token refused.
    let r = srv
        .post_token(&[
            ("grant_type", "password"),
            ("username", "guest-u"),
            ("password", PW),
            ("service", SERVICE),
            ("scope", "repository:priv/app:pull"),
        ])
        .await
        .expect(200)
        .json();
    let g_access = r["access_token"].as_str().unwrap().to_string();
    let g_refresh = r["refresh_token"].as_str().unwrap().to_string();
    srv.get("/v2/priv/app/tags/list", &Cred::Bearer(g_access.clone()))
        .await
        .expect(200);
    srv.api_ok(Method::DELETE, "/api/v1/users/guest-u", None)
        .await;
    let r = srv
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &g_refresh),
            ("service", SERVICE),
        ])
        .await;
    assert_eq!(r.status, 401, "refresh after deletion: {}", r.dump());
    let r = srv
        .get("/v2/priv/app/tags/list", &Cred::basic("guest-u", PW))
        .await;
    assert_eq!(r.status, 401, "{}", r.dump());
    let r = srv
        .get("/v2/priv/app/tags/list", &Cred::Bearer(g_access))
        .await;
    assert_eq!(
        r.status,
        401,
        "access token of a deleted user: {}",
        r.dump()
    );

    // A revoked robot's refresh token and access token end too.
    let (rl, rs) = srv.create_robot("priv", "ci", true).await;
    let r = srv
        .post_token(&[
            ("grant_type", "password"),
            ("username", &rl),
            ("password", &rs),
            ("service", SERVICE),
            ("scope", "repository:priv/app:pull,push"),
        ])
        .await
        .expect(200)
        .json();
    let r_access = r["access_token"].as_str().unwrap().to_string();
    let r_refresh = r["refresh_token"].as_str().unwrap().to_string();
    srv.api_ok(Method::DELETE, "/api/v1/projects/priv/robots/ci", None)
        .await;
    let r = srv
        .post_token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &r_refresh),
            ("service", SERVICE),
        ])
        .await;
    assert_eq!(r.status, 401, "refresh of a revoked robot: {}", r.dump());
    let r = srv
        .get("/v2/priv/app/tags/list", &Cred::Bearer(r_access))
        .await;
    assert_eq!(
        r.status,
        401,
        "access token of a revoked robot: {}",
        r.dump()
    );
    let mut secrets = w.secrets.clone();
    secrets.extend([
        refresh,
        g_refresh,
        r_refresh,
        "a-new-password-987".to_string(),
        rs,
    ]);
    srv.assert_log_clean(&secrets);
}

// ---------------------------------------------------------------------------------------
// Forged and stale tokens
// ---------------------------------------------------------------------------------------

/// An ES256 JWT over `claims`, signed with the PKCS#8 key at `key` by `openssl`.
fn forge(key: &Path, claims: &Value, with_kid: bool) -> String {
    need("openssl");
    let dir = tempfile::tempdir().unwrap();
    let mut header = json!({"alg": "ES256", "typ": "JWT"});
    if with_kid {
        let der = dir.path().join("pub.der");
        run_cmd(
            Command::new("openssl")
                .arg("pkey")
                .arg("-in")
                .arg(key)
                .args(["-pubout", "-outform", "DER", "-out"])
                .arg(&der),
            CMD_TIMEOUT,
        )
        .ok();
        let digest = Sha256::digest(fs::read(&der).unwrap());
        header["kid"] = json!(URL_SAFE_NO_PAD.encode(&digest[..15]));
    }
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let msg = dir.path().join("msg");
    let sig = dir.path().join("sig.der");
    fs::write(&msg, &input).unwrap();
    run_cmd(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(key)
            .arg("-out")
            .arg(&sig)
            .arg(&msg),
        CMD_TIMEOUT,
    )
    .ok();
    let der = fs::read(&sig).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(der_to_raw(&der)))
}

/// ECDSA-Sig-Value (DER) → r ‖ s, 32 bytes each (JWS form).
fn der_to_raw(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "DER sequence");
    let mut i = if der[1] & 0x80 != 0 {
        2 + (der[1] & 0x7f) as usize
    } else {
        2
    };
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02, "DER integer");
        let len = der[i + 1] as usize;
        let mut v = &der[i + 2..i + 2 + len];
        while v.len() > 32 && v[0] == 0 {
            v = &v[1..];
        }
        out.extend(std::iter::repeat_n(0u8, 32 - v.len()));
        out.extend_from_slice(v);
        i += 2 + len;
    }
    out
}

fn claims(sub: &str, aud: &str, iat: i64, ttl: i64, access: Value) -> Value {
    json!({
        "iss": "berth", "sub": sub, "aud": aud,
        "iat": iat, "nbf": iat, "exp": iat + ttl,
        "jti": format!("forged-{iat}-{sub}-{aud}"),
        "access": access,
    })
}

fn pull_push(repo: &str) -> Value {
    json!([{"type": "repository", "name": repo, "actions": ["pull", "push", "delete"]}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_foreign_tokens_are_refused() {
    let w = world().await;
    let srv = &w.srv;
    let key = srv.data.path().join("token-signing-key.pem");
    let t0 = now();
    let manifest = "/v2/priv/app/manifests/v1";

    // Control: a token made here with the server's key and honest claims is accepted
    // (so the refusals below are about the claims, not the forging).
    let honest = forge(
        &key,
        &claims("admin", SERVICE, t0, 300, pull_push("priv/app")),
        true,
    );
    srv.get(manifest, &Cred::Bearer(honest.clone()))
        .await
        .expect(200);
    let honest_nokid = forge(
        &key,
        &claims("admin", SERVICE, t0 - 1, 300, pull_push("priv/app")),
        false,
    );
    srv.get(manifest, &Cred::Bearer(honest_nokid))
        .await
        .expect(200);

    let refused = |r: &Resp, why: &str| {
        assert_eq!(r.status, 401, "{why}: {}", r.dump());
        assert_eq!(r.error_code(), "UNAUTHORIZED", "{why}: {}", r.dump());
        let ch = r.header("www-authenticate").unwrap_or_default();
        assert!(
            ch.starts_with(&format!(
                "Bearer realm=\"{}\",service=\"{SERVICE}\"",
                srv.realm()
            )),
            "{why}: {}",
            r.dump()
        );
        assert!(
            ch.contains("error=\"invalid_token\""),
            "{why}: {}",
            r.dump()
        );
    };
    // Expired (well beyond the leeway).
    let expired = forge(
        &key,
        &claims("admin", SERVICE, t0 - 3600, 300, pull_push("priv/app")),
        true,
    );
    refused(&srv.get(manifest, &Cred::Bearer(expired)).await, "expired");
    // Not yet valid.
    let future = forge(
        &key,
        &claims("admin", SERVICE, t0 + 3600, 300, pull_push("priv/app")),
        true,
    );
    refused(
        &srv.get(manifest, &Cred::Bearer(future)).await,
        "not yet valid",
    );
    // Wrong audience.
    let aud = forge(
        &key,
        &claims("admin", "another-registry", t0, 300, pull_push("priv/app")),
        true,
    );
    refused(
        &srv.get(manifest, &Cred::Bearer(aud)).await,
        "wrong audience",
    );
    // Wrong issuer.
    let mut c = claims("admin", SERVICE, t0, 300, pull_push("priv/app"));
    c["iss"] = json!("someone-else");
    refused(
        &srv.get(manifest, &Cred::Bearer(forge(&key, &c, true)))
            .await,
        "wrong issuer",
    );
    // Bad signature: the honest token with its signature altered.
    let (head, sig) = honest.rsplit_once('.').unwrap();
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[10] ^= 0x55;
    let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&raw));
    refused(
        &srv.get(manifest, &Cred::Bearer(tampered)).await,
        "bad signature",
    );
    // Claims altered after signing (scope widened).
    let parts: Vec<&str> = honest.split('.').collect();
    let widened = claims("admin", SERVICE, t0, 300, pull_push("secret/app"));
    let altered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(widened.to_string()),
        parts[2]
    );
    refused(
        &srv.get("/v2/secret/app/manifests/v1", &Cred::Bearer(altered))
            .await,
        "altered claims",
    );
    // alg=none.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD
            .encode(claims("admin", SERVICE, t0, 300, pull_push("priv/app")).to_string())
    );
    refused(&srv.get(manifest, &Cred::Bearer(none)).await, "alg none");
    // Garbage.
    refused(
        &srv.get(manifest, &Cred::Bearer("not.a.jwt".into())).await,
        "garbage",
    );

    // A genuine token from another Berth server (another key) is refused, with and
    // without its key id, and so is one signed by the other key claiming our kid.
    let other = Srv::start();
    let foreign = other.token(&admin(), &["repository:priv/app:pull"]).await;
    refused(
        &srv.get(manifest, &Cred::Bearer(foreign)).await,
        "another server's token",
    );
    let other_key = other.data.path().join("token-signing-key.pem");
    let foreign_nokid = forge(
        &other_key,
        &claims("admin", SERVICE, t0, 300, pull_push("priv/app")),
        false,
    );
    refused(
        &srv.get(manifest, &Cred::Bearer(foreign_nokid)).await,
        "another key without kid",
    );
    // And our token is refused over there.
    let ours = srv.token(&admin(), &["repository:library/app:pull"]).await;
    let r = other
        .get("/v2/library/app/tags/list", &Cred::Bearer(ours))
        .await;
    assert_eq!(r.status, 401, "{}", r.dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_never_grants_more_than_the_subjects_current_rights() {
    let w = world().await;
    let srv = &w.srv;
    let key = srv.data.path().join("token-signing-key.pem");
    // A correctly signed token claiming push and delete for a guest, and access to a
    // project the subject has no role in, is refused beyond the subject's rights.
    let t = forge(
        &key,
        &claims(
            "guest-u",
            SERVICE,
            now(),
            300,
            json!([
                {"type": "repository", "name": "priv/app", "actions": ["pull", "push", "delete"]},
                {"type": "repository", "name": "secret/app", "actions": ["pull"]},
            ]),
        ),
        true,
    );
    let g = Cred::Bearer(t);
    srv.get("/v2/priv/app/manifests/v1", &g).await.expect(200);
    let r = push_blob(srv, &g, "priv/app", b"guest with a fat token").await;
    assert!(
        r.status == 403 || r.status == 401,
        "push beyond the guest's rights: {}",
        r.dump()
    );
    let r = srv.get("/v2/secret/app/manifests/v1", &g).await;
    assert!(
        r.status == 403 || r.status == 401,
        "pull beyond the guest's rights: {}",
        r.dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_users_token_loses_the_rights_it_no_longer_has() {
    let w = world().await;
    let srv = &w.srv;
    let dev = Cred::basic("dev-u", PW);
    let t = srv.token(&dev, &["repository:priv/app:pull,push"]).await;
    push_blob(
        srv,
        &Cred::Bearer(t.clone()),
        "priv/app",
        b"before demotion 0123",
    )
    .await
    .expect(201);
    srv.set_member("priv", "dev-u", "guest").await;
    let r = push_blob(
        srv,
        &Cred::Bearer(t.clone()),
        "priv/app",
        b"after demotion 456789",
    )
    .await;
    assert!(
        r.status == 403 || r.status == 401,
        "push with a token issued before the demotion: {}",
        r.dump()
    );
    // And after removal from the project, not even pull.
    srv.api_ok(Method::DELETE, "/api/v1/projects/priv/members/dev-u", None)
        .await;
    let r = srv.get("/v2/priv/app/manifests/v1", &Cred::Bearer(t)).await;
    assert!(
        r.status == 403 || r.status == 401,
        "pull after removal from the project: {}",
        r.dump()
    );
}

// ---------------------------------------------------------------------------------------
// Abuse limits, audit, logs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_are_rate_limited() {
    let srv = Srv::start();
    srv.add_user("victim").await;
    // Per account: a few failures, then 429 with Retry-After, even for the right password.
    let mut limited = None;
    for i in 0..12 {
        let r = srv
            .get(
                "/v2/",
                &Cred::basic("victim", &format!("wrong-password-{i}")),
            )
            .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 401, "{}", r.dump());
    }
    let r = limited.expect("no 429 after 12 failed logins for one account");
    assert_eq!(r.error_code(), "TOOMANYREQUESTS", "{}", r.dump());
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=900).contains(&retry), "{}", r.dump());
    let r = srv.get("/v2/", &Cred::basic("victim", PW)).await;
    assert_eq!(
        r.status,
        429,
        "the right password while throttled: {}",
        r.dump()
    );
    // The token endpoint (Basic and the password grant) is limited the same way.
    let r = srv
        .token_resp(&Cred::basic("victim", "wrong-again-123"), &[], &[])
        .await;
    assert_eq!(r.status, 429, "{}", r.dump());
    assert!(r.header("retry-after").is_some(), "{}", r.dump());
    let r = srv
        .post_token(&[
            ("grant_type", "password"),
            ("username", "victim"),
            ("password", "wrong-again-123"),
            ("service", SERVICE),
        ])
        .await;
    assert_eq!(r.status, 429, "{}", r.dump());
    // Other accounts are not locked out by it.
    srv.get("/v2/", &admin()).await.expect(200);
    // After Retry-After the right password works again.
    tokio::time::sleep(Duration::from_secs(retry + 1)).await;
    srv.get("/v2/", &Cred::basic("victim", PW))
        .await
        .expect(200);

    // Per client address: many accounts guessed from one address.
    let mut limited = None;
    for i in 0..40 {
        let r = srv
            .get(
                "/v2/",
                &Cred::basic(&format!("guess-{i}"), "password-guess"),
            )
            .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 401, "{}", r.dump());
    }
    let r = limited.expect("no 429 after 40 failed logins from one address");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    // The address itself is throttled, for every account: wait it out before the admin
    // (from the same address) reads the audit log.
    tokio::time::sleep(Duration::from_secs(retry + 1)).await;
    // Failures are audited with the client address, never with the password.
    let ev = srv
        .api_ok(
            Method::GET,
            "/api/v1/audit?action=login_failed&limit=500",
            None,
        )
        .await;
    let ev = ev.as_array().unwrap();
    assert!(
        ev.iter()
            .any(|e| e["actor"] == "victim" && e["client_addr"] == "127.0.0.1"),
        "{ev:?}"
    );
    srv.assert_log_clean(&[
        PW.to_string(),
        "password-guess".into(),
        "wrong-password-1".into(),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_records_push_delete_and_logins_with_actor_and_address() {
    let w = world().await;
    let srv = &w.srv;
    let since = now() - 1;
    let dev = Cred::basic("dev-u", PW);
    let maint = Cred::basic("maint-u", PW);
    let img = push_image(srv, &dev, "priv/app", "audited", "audited").await;
    let r = srv
        .call(
            Method::DELETE,
            &format!("/v2/priv/app/manifests/{}", img.digest),
            &maint,
            &[],
            vec![],
        )
        .await;
    r.expect(202);
    srv.token(&dev, &["repository:priv/app:pull"]).await;
    let r = srv
        .token_resp(&Cred::basic("dev-u", "wrong-password-audit"), &[], &[])
        .await;
    assert_eq!(r.status, 401);
    let r = srv
        .get(
            "/v2/priv/app/tags/list",
            &Cred::basic("maint-u", "wrong-password-audit"),
        )
        .await;
    assert_eq!(r.status, 401);

    let all = srv
        .api_ok(
            Method::GET,
            &format!("/api/v1/audit?since={since}&limit=1000"),
            None,
        )
        .await;
    let all = all.as_array().unwrap().clone();
    let find = |actor: &str, action: &str, res: &str| -> Value {
        all.iter()
            .find(|e| {
                e["actor"] == actor
                    && e["action"] == action
                    && e["resource"].as_str().unwrap_or("").contains(res)
            })
            .unwrap_or_else(|| panic!("no audit event {actor} {action} {res}: {all:#?}"))
            .clone()
    };
    for e in [
        find("dev-u", "push", &img.digest),
        find("maint-u", "delete", &img.digest),
        find("dev-u", "login", "dev-u"),
        find("dev-u", "login_failed", "dev-u"),
        find("maint-u", "login_failed", "maint-u"),
    ] {
        assert_eq!(e["client_addr"], "127.0.0.1", "{e}");
        let at = e["at"].as_i64().unwrap();
        assert!(at >= since && at <= now() + 1, "{e}");
        assert!(
            !e.to_string().contains("wrong-password-audit") && !e.to_string().contains(PW),
            "{e}"
        );
    }
    assert!(
        find("dev-u", "push", "priv/app")
            .to_string()
            .contains("priv/app")
    );
    // Filters: by actor and action.
    let f = srv
        .api_ok(
            Method::GET,
            "/api/v1/audit?actor=maint-u&action=delete",
            None,
        )
        .await;
    let f = f.as_array().unwrap();
    assert!(
        !f.is_empty()
            && f.iter()
                .all(|e| e["actor"] == "maint-u" && e["action"] == "delete"),
        "{f:?}"
    );
    // Account changes made in the world set-up are there too.
    let setup = srv
        .api_ok(Method::GET, "/api/v1/audit?limit=1000", None)
        .await;
    let setup = setup.as_array().unwrap();
    for action in [
        "project.create",
        "user.create",
        "member.set",
        "robot.create",
        "robot.revoke",
    ] {
        assert!(
            setup
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "admin"),
            "no {action} by admin in the audit log"
        );
    }
    // Only system administrators read it.
    let r = srv
        .call(Method::GET, "/api/v1/audit", &dev, &[], vec![])
        .await;
    assert_eq!(r.status, 403, "{}", r.dump());
    let r = srv
        .call(Method::GET, "/api/v1/audit", &Cred::Anon, &[], vec![])
        .await;
    assert_eq!(r.status, 401, "{}", r.dump());
    srv.assert_log_clean(&w.secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_the_server_log() {
    let w = world().await;
    let srv = &w.srv;
    let mut secrets = w.secrets.clone();
    // Exercise every path a credential travels: Basic on /v2/, token GET and POST,
    // bad passwords, refresh tokens, bearer tokens, user creation and password change.
    for who in &w.who {
        srv.get("/v2/priv/app/manifests/v1", &who.cred).await;
        srv.token_resp(
            &who.cred,
            &["repository:priv/app:pull"],
            &[("offline_token", "true")],
        )
        .await;
    }
    let r = srv
        .post_token(&[
            ("grant_type", "password"),
            ("username", "dev-u"),
            ("password", PW),
            ("service", SERVICE),
            ("scope", "repository:priv/app:pull"),
        ])
        .await
        .expect(200)
        .json();
    let access = r["access_token"].as_str().unwrap().to_string();
    let refresh = r["refresh_token"].as_str().unwrap().to_string();
    srv.get("/v2/priv/app/manifests/v1", &Cred::Bearer(access.clone()))
        .await
        .expect(200);
    srv.post_token(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("service", SERVICE),
    ])
    .await
    .expect(200);
    let wrong = "a-wrong-password-that-is-long".to_string();
    srv.get("/v2/", &Cred::basic("dev-u", &wrong)).await;
    srv.post_token(&[
        ("grant_type", "password"),
        ("username", "maint-u"),
        ("password", &wrong),
        ("service", SERVICE),
    ])
    .await;
    let generated = srv
        .api_ok(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": "gen-u"})),
        )
        .await;
    let gen_pw = generated["password"]
        .as_str()
        .expect("generated password")
        .to_string();
    srv.get("/v2/", &Cred::basic("gen-u", &gen_pw))
        .await
        .expect(200);
    srv.api_ok(
        Method::PATCH,
        "/api/v1/users/gen-u",
        Some(json!({"password": "changed-password-42"})),
    )
    .await;
    secrets.extend([
        access.split('.').nth(2).unwrap().to_string(),
        refresh.split('.').nth(2).unwrap().to_string(),
        wrong,
        gen_pw,
        "changed-password-42".into(),
    ]);
    // Give the server a moment to flush its log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = srv.stderr_text();
    assert!(
        log.contains("/v2/"),
        "requests are logged (sanity check): {log}"
    );
    srv.assert_log_clean(&secrets);
    let _ = HashMap::<(), ()>::new();
}

/// A token that does not cover the action, held by a subject who may perform it, is
/// answered 403 with an `insufficient_scope` challenge naming the scope to ask for, so
/// that the client fetches a wider token (oras-py pulls with a pull token, then pushes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_narrow_token_is_challenged_for_the_wider_scope() {
    let w = world().await;
    let srv = &w.srv;
    let dev = Cred::basic("dev-u", PW);
    let pull_only = srv.token(&dev, &["repository:priv/app:pull"]).await;
    let r = push_blob(
        srv,
        &Cred::Bearer(pull_only),
        "priv/app",
        b"narrow token push 42",
    )
    .await;
    // 403 with an insufficient_scope challenge (RFC 6750): oras-py fetches a wider token
    // on a 403, and reuses the one it has on a 401.
    assert_eq!(r.status, 403, "{}", r.dump());
    assert_eq!(r.error_code(), "DENIED", "{}", r.dump());
    let want = format!(
        "Bearer realm=\"{}\",service=\"{SERVICE}\",scope=\"repository:priv/app:pull,push\",error=\"insufficient_scope\"",
        srv.realm()
    );
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some(want.as_str()),
        "{}",
        r.dump()
    );
    // A guest, who may not push at all, is denied.
    let guest = srv
        .token(&Cred::basic("guest-u", PW), &["repository:priv/app:pull"])
        .await;
    push_blob(
        srv,
        &Cred::Bearer(guest),
        "priv/app",
        b"guest narrow push 42",
    )
    .await
    .expect_denied();
}
