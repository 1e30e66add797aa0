//! Interop with real clients against Berth's access control (issue 3): `podman login` +
//! `podman push` + `podman pull` (storage in a temporary directory, vfs driver, Berth's CA
//! in a `--cert-dir`, a temporary `--authfile`); `skopeo copy --dest-creds/--src-creds`
//! into and out of a private project and an anonymous `skopeo inspect` that is refused;
//! robot accounts' credentials used by skopeo; containerd `ctr images pull --user` from a
//! private project with a non-admin user and with a robot; oras-py login and push into a
//! private project as a developer; `berth login`'s config.json used by podman (and podman's
//! auth file used by berth).
//!
//! Accounts are set up through the admin API. Every child process is bounded in time
//! and killed by PID on drop; a missing peer is a failure, never a skip.

mod common;
mod fixtures;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::containerd::Containerd;
use common::{Berth, CmdOutput, need, run_cmd};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(240);
const PW: &str = "interop-password-0123";

// ---------------------------------------------------------------------------------------
// Admin API
// ---------------------------------------------------------------------------------------

async fn api(reg: &Berth, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut req = reg
        .client()
        .request(method.clone(), format!("{}{path}", reg.url()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{method} {path} -> {status}: {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

async fn private_project(reg: &Berth, name: &str) {
    let p = api(
        reg,
        reqwest::Method::POST,
        "/api/v1/projects",
        Some(json!({"name": name, "public": false})),
    )
    .await;
    assert_eq!(p["public"], false, "{p}");
}

async fn user(reg: &Berth, name: &str, project: &str, role: &str) {
    api(
        reg,
        reqwest::Method::POST,
        "/api/v1/users",
        Some(json!({"name": name, "password": PW})),
    )
    .await;
    api(
        reg,
        reqwest::Method::PUT,
        &format!("/api/v1/projects/{project}/members/{name}"),
        Some(json!({"role": role})),
    )
    .await;
}

/// A robot of `project`: `login:secret`.
async fn robot(reg: &Berth, project: &str, name: &str, push: bool) -> String {
    let r = api(
        reg,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{project}/robots"),
        Some(json!({"name": name, "push": push})),
    )
    .await;
    format!(
        "{}:{}",
        r["name"].as_str().unwrap(),
        r["secret"].as_str().unwrap()
    )
}

/// The manifest digest of `repo:tag` as the administrator sees it (None if absent).
async fn registry_digest(reg: &Berth, repo: &str, tag: &str) -> Option<String> {
    let r = reg
        .client()
        .head(format!("{}/v2/{repo}/manifests/{tag}", reg.url()))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .unwrap();
    (r.status() == 200).then(|| {
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    })
}

fn start() -> Berth {
    Berth::start()
}

// ---------------------------------------------------------------------------------------
// skopeo, podman
// ---------------------------------------------------------------------------------------

/// `skopeo --insecure-policy ARGS…` with its own empty auth file.
fn skopeo(args: &[&str]) -> CmdOutput {
    need("skopeo");
    let auth = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("skopeo");
    cmd.env("REGISTRY_AUTH_FILE", auth.path().join("auth.json"))
        .env("DOCKER_CONFIG", auth.path())
        .arg("--insecure-policy")
        .args(args);
    run_cmd(&mut cmd, TIMEOUT)
}

fn refused(out: &CmdOutput, what: &str) {
    assert!(
        !out.success(),
        "{what} succeeded:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let e = out.stderr.to_lowercase();
    assert!(
        e.contains("unauthorized")
            || e.contains("denied")
            || e.contains("401")
            || e.contains("403")
            || e.contains("authentication required"),
        "{what}: expected an authorization error, got:\n{}",
        out.stderr
    );
}

/// podman with all state in a temporary directory.
struct Podman {
    dir: tempfile::TempDir,
    cert_dir: PathBuf,
    authfile: PathBuf,
}

impl Podman {
    fn new(reg: &Berth) -> Podman {
        need("podman");
        let dir = tempfile::Builder::new()
            .prefix("bpod")
            .tempdir_in("/tmp")
            .unwrap();
        let authfile = dir.path().join("auth").join("config.json");
        fs::create_dir_all(authfile.parent().unwrap()).unwrap();
        fs::write(&authfile, "{\"auths\": {}}\n").unwrap();
        Podman {
            cert_dir: reg.cert_dir(),
            dir,
            authfile,
        }
    }

    fn run(&self, args: &[&str]) -> CmdOutput {
        let d = self.dir.path();
        let mut cmd = Command::new("podman");
        cmd.env("XDG_RUNTIME_DIR", d.join("xdg"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("REGISTRY_AUTH_FILE", &self.authfile)
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args([
                "--storage-driver",
                "vfs",
                "--events-backend",
                "none",
                "--cgroup-manager",
                "cgroupfs",
            ])
            .args(args);
        fs::create_dir_all(d.join("xdg")).unwrap();
        if !d.join("storage.conf").exists() {
            fs::write(
                d.join("storage.conf"),
                format!(
                    "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                    d.join("runroot").display(),
                    d.join("root").display()
                ),
            )
            .unwrap();
        }
        run_cmd(&mut cmd, TIMEOUT)
    }

    fn cert(&self) -> String {
        self.cert_dir.to_str().unwrap().to_string()
    }

    fn auth(&self) -> String {
        self.authfile.to_str().unwrap().to_string()
    }

    fn login(&self, host: &str, user: &str, pass: &str) -> CmdOutput {
        self.run(&[
            "login",
            "--cert-dir",
            &self.cert(),
            "--authfile",
            &self.auth(),
            "-u",
            user,
            "-p",
            pass,
            host,
        ])
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_login_push_pull_private_project() {
    let reg = start();
    private_project(&reg, "pod-prj").await;
    user(&reg, "pod-dev", "pod-prj", "developer").await;
    // `podman pull oci:DIR` names the image after DIR, which must be lowercase.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("berth-podman-{}-{nanos}", std::process::id()))
        .rand_bytes(0)
        .tempdir_in("/tmp")
        .unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let host = reg.host();
    let target = format!("{host}/pod-prj/demo:v1");

    let pm = Podman::new(&reg);
    // A wrong password: login refused, nothing written.
    let bad = pm.login(&host, "pod-dev", "not-the-password");
    assert!(
        !bad.success(),
        "login with a wrong password succeeded: {}",
        bad.stdout
    );
    // The right one.
    let out = pm.login(&host, "pod-dev", PW).ok();
    assert!(out.stdout.contains("Login Succeeded"), "{}", out.stdout);
    let cfg: Value = serde_json::from_str(&fs::read_to_string(&pm.authfile).unwrap()).unwrap();
    assert!(
        cfg["auths"][&host]["auth"].is_string(),
        "podman login wrote {cfg}"
    );

    // Image into podman's storage from the OCI layout, then push with the login.
    let pulled = pm.run(&["pull", &layout.oci_ref()]).ok();
    let id = pulled
        .stdout
        .trim()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_string();
    assert!(
        !id.is_empty(),
        "podman pull printed no image id: {}",
        pulled.stdout
    );
    pm.run(&[
        "push",
        "--cert-dir",
        &pm.cert(),
        "--authfile",
        &pm.auth(),
        &id,
        &format!("docker://{target}"),
    ])
    .ok();
    assert!(
        registry_digest(&reg, "pod-prj/demo", "v1").await.is_some(),
        "pushed image not in the registry"
    );

    // Pull it back into a fresh storage with the same authfile.
    let pm2 = Podman {
        dir: tempfile::Builder::new()
            .prefix("bpod")
            .tempdir_in("/tmp")
            .unwrap(),
        cert_dir: pm.cert_dir.clone(),
        authfile: pm.authfile.clone(),
    };
    let out = pm2
        .run(&[
            "pull",
            "--cert-dir",
            &pm2.cert(),
            "--authfile",
            &pm2.auth(),
            &format!("docker://{target}"),
        ])
        .ok();
    let pulled_id = out.stdout.trim().lines().last().unwrap().trim().to_string();
    let inspect = pm2.run(&["image", "inspect", &pulled_id]).ok();
    let v: Value = serde_json::from_str(&inspect.stdout).unwrap();
    let layers = v[0]["RootFS"]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), layout.images[0].layers.len(), "{inspect:?}");

    // Without credentials (a fresh, empty authfile) the pull is refused.
    let pm3 = Podman::new(&reg);
    let anon = pm3.run(&[
        "pull",
        "--cert-dir",
        &pm3.cert(),
        "--authfile",
        &pm3.auth(),
        &format!("docker://{target}"),
    ]);
    refused(&anon, "anonymous podman pull from a private project");
    // A user without a role in the project cannot push there either.
    api(
        &reg,
        reqwest::Method::POST,
        "/api/v1/users",
        Some(json!({"name": "stranger", "password": PW})),
    )
    .await;
    pm3.login(&host, "stranger", PW).ok();
    let p = pm3.run(&["pull", &layout.oci_ref()]).ok();
    let id3 = p.stdout.trim().lines().last().unwrap().trim().to_string();
    let push = pm3.run(&[
        "push",
        "--cert-dir",
        &pm3.cert(),
        "--authfile",
        &pm3.auth(),
        &id3,
        &format!("docker://{host}/pod-prj/demo:stranger"),
    ]);
    refused(&push, "push by a user without a role");
    assert!(
        registry_digest(&reg, "pod-prj/demo", "stranger")
            .await
            .is_none()
    );
    // Logout removes the credentials.
    pm.run(&["logout", "--authfile", &pm.auth(), &host]).ok();
    let cfg: Value = serde_json::from_str(&fs::read_to_string(&pm.authfile).unwrap()).unwrap();
    assert!(cfg["auths"].get(&host).is_none(), "{cfg}");
}

/// `berth login` writes a config.json that podman uses with no login of its own (given as
/// `--authfile` and as `REGISTRY_AUTH_FILE`) to pull from a private project; the reverse:
/// berth reads the auth file `podman login` wrote (same format) and pulls with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_with_the_config_json_berth_login_wrote() {
    let reg = start();
    private_project(&reg, "bl-prj").await;
    user(&reg, "bl-dev", "bl-prj", "developer").await;
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let host = reg.host();
    let target = format!("{host}/bl-prj/app:v1");
    let cert = reg.cert_dir();
    let cert = cert.to_str().unwrap();
    skopeo(&[
        "copy",
        "--dest-creds",
        &format!("bl-dev:{PW}"),
        "--dest-cert-dir",
        cert,
        &layout.oci_ref(),
        &format!("docker://{target}"),
    ])
    .ok();

    // berth login as the developer into a DOCKER_CONFIG of its own.
    let docker_config = tmp.path().join("docker");
    let out = run_cmd(
        Command::new(common::berth_bin())
            .args(["login", &host, "-u", "bl-dev", "--ca-bundle"])
            .arg(reg.ca_path())
            .env("DOCKER_CONFIG", &docker_config)
            .env("BERTH_PASSWORD", PW),
        TIMEOUT,
    )
    .ok();
    assert!(out.stdout.contains("Login Succeeded"), "{}", out.stdout);
    let config_json = docker_config.join("config.json");
    let cfg: Value = serde_json::from_str(&fs::read_to_string(&config_json).unwrap()).unwrap();
    assert!(cfg["auths"][&host]["auth"].is_string(), "{cfg}");

    let pull = |pm: &Podman, authfile_flag: bool| {
        let mut args = vec!["pull", "--cert-dir", cert];
        if authfile_flag {
            args.extend(["--authfile", config_json.to_str().unwrap()]);
        }
        let target = format!("docker://{target}");
        args.push(&target);
        pm.run(&args)
    };
    // A fresh podman with an empty auth file of its own is refused ...
    let anon = Podman::new(&reg);
    refused(
        &pull(&anon, false),
        "podman pull from a private project without a login",
    );
    // ... and pulls with berth's config.json: as --authfile ...
    let pm = Podman::new(&reg);
    let out = pull(&pm, true).ok();
    let id = out.stdout.trim().lines().last().unwrap().trim().to_string();
    let inspect = pm.run(&["image", "inspect", &id]).ok();
    let v: Value = serde_json::from_str(&inspect.stdout).unwrap();
    assert_eq!(
        v[0]["RootFS"]["Layers"].as_array().unwrap().len(),
        layout.images[0].layers.len(),
        "{}",
        inspect.stdout
    );
    assert!(
        v[0]["RepoDigests"]
            .to_string()
            .contains(layout.manifest_digest()),
        "{}",
        inspect.stdout
    );
    // ... and as REGISTRY_AUTH_FILE (podman's environment variable).
    let pm_env = Podman {
        dir: tempfile::Builder::new()
            .prefix("bpod")
            .tempdir_in("/tmp")
            .unwrap(),
        cert_dir: reg.cert_dir(),
        authfile: config_json.clone(),
    };
    pull(&pm_env, false).ok();

    // The reverse: `podman login` writes an auth file; berth pulls with it.
    let pm_login = Podman::new(&reg);
    pm_login.login(&host, "bl-dev", PW).ok();
    let podman_dir = pm_login.authfile.parent().unwrap();
    let pulled = tmp.path().join("pulled");
    run_cmd(
        Command::new(common::berth_bin())
            .args(["pull", &target, "--layout"])
            .arg(&pulled)
            .arg("--ca-bundle")
            .arg(reg.ca_path())
            .env("DOCKER_CONFIG", podman_dir)
            .env_remove("BERTH_PASSWORD"),
        TIMEOUT,
    )
    .ok();
    assert_eq!(
        fixtures::blob_digests(&pulled),
        layout.all_blob_digests(),
        "berth pull with podman's auth file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_creds_private_project_and_anonymous_inspect_refused() {
    let reg = start();
    private_project(&reg, "sko-prj").await;
    user(&reg, "sko-dev", "sko-prj", "developer").await;
    user(&reg, "sko-guest", "sko-prj", "guest").await;
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let cert = reg.cert_dir();
    let cert = cert.to_str().unwrap();
    let dst = format!("docker://{}/sko-prj/app:v1", reg.host());
    let dev = format!("sko-dev:{PW}");
    let guest = format!("sko-guest:{PW}");

    // Without credentials, and as a guest, the push is refused.
    refused(
        &skopeo(&["copy", "--dest-cert-dir", cert, &layout.oci_ref(), &dst]),
        "anonymous skopeo push",
    );
    refused(
        &skopeo(&[
            "copy",
            "--dest-creds",
            &guest,
            "--dest-cert-dir",
            cert,
            &layout.oci_ref(),
            &dst,
        ]),
        "skopeo push as a guest",
    );
    skopeo(&[
        "copy",
        "--dest-creds",
        &dev,
        "--dest-cert-dir",
        cert,
        &layout.oci_ref(),
        &dst,
    ])
    .ok();
    assert_eq!(
        registry_digest(&reg, "sko-prj/app", "v1").await.as_deref(),
        Some(layout.manifest_digest())
    );
    // Anonymous inspect: refused; with credentials: the digest.
    refused(
        &skopeo(&["inspect", "--cert-dir", cert, &dst]),
        "anonymous skopeo inspect",
    );
    refused(
        &skopeo(&["inspect", "--raw", "--cert-dir", cert, &dst]),
        "anonymous skopeo inspect --raw",
    );
    let out = skopeo(&["inspect", "--creds", &guest, "--cert-dir", cert, &dst]).ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["Digest"], layout.manifest_digest(), "{v}");
    // A missing repository in the private project looks the same to anonymous callers.
    let missing = skopeo(&[
        "inspect",
        "--cert-dir",
        cert,
        &format!("docker://{}/sko-prj/nothing:v1", reg.host()),
    ]);
    refused(&missing, "anonymous skopeo inspect of a missing repository");
    // --src-creds: copy out of the private project.
    let out_dir = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--src-creds",
        &guest,
        "--src-cert-dir",
        cert,
        &dst,
        &format!("oci:{}:copy", out_dir.display()),
    ])
    .ok();
    let idx = fixtures::read_index_json(&out_dir);
    assert_eq!(
        idx["manifests"][0]["digest"],
        layout.manifest_digest(),
        "{idx}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_with_robot_credentials() {
    let reg = start();
    private_project(&reg, "ci-prj").await;
    let pusher = robot(&reg, "ci-prj", "builder", true).await;
    let puller = robot(&reg, "ci-prj", "deployer", false).await;
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let cert = reg.cert_dir();
    let cert = cert.to_str().unwrap();
    let dst = format!("docker://{}/ci-prj/app:v1", reg.host());

    refused(
        &skopeo(&[
            "copy",
            "--dest-creds",
            &puller,
            "--dest-cert-dir",
            cert,
            &layout.oci_ref(),
            &dst,
        ]),
        "push with a pull-only robot",
    );
    skopeo(&[
        "copy",
        "--dest-creds",
        &pusher,
        "--dest-cert-dir",
        cert,
        &layout.oci_ref(),
        &dst,
    ])
    .ok();
    let out = skopeo(&["inspect", "--creds", &puller, "--cert-dir", cert, &dst]).ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["Digest"], layout.manifest_digest(), "{v}");
    // A robot cannot push into another project.
    let other = format!("docker://{}/library/robot-was-here:v1", reg.host());
    refused(
        &skopeo(&[
            "copy",
            "--dest-creds",
            &pusher,
            "--dest-cert-dir",
            cert,
            &layout.oci_ref(),
            &other,
        ]),
        "robot push outside its project",
    );
    // Revoked: refused from now on.
    api(
        &reg,
        reqwest::Method::DELETE,
        "/api/v1/projects/ci-prj/robots/deployer",
        None,
    )
    .await;
    let out = skopeo(&["inspect", "--creds", &puller, "--cert-dir", cert, &dst]);
    refused(&out, "inspect with a revoked robot");
}

fn hosts_dir(reg: &Berth, under: &Path) -> PathBuf {
    let dir = under.join("hosts.d");
    let host = reg.host();
    fs::create_dir_all(dir.join(&host)).unwrap();
    fs::write(
        dir.join(&host).join("hosts.toml"),
        format!(
            "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            reg.ca_path().display()
        ),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pull_with_user_from_a_private_project() {
    let reg = start();
    private_project(&reg, "node-prj").await;
    user(&reg, "node-guest", "node-prj", "guest").await;
    let deployer = robot(&reg, "node-prj", "kubelet", false).await;
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let cert = reg.cert_dir();
    skopeo(&[
        "copy",
        "--dest-creds",
        &common::admin_creds(),
        "--dest-cert-dir",
        cert.to_str().unwrap(),
        &layout.oci_ref(),
        &format!("docker://{}/node-prj/app:v1", reg.host()),
    ])
    .ok();
    let ctd = Containerd::start();
    let hosts = hosts_dir(&reg, tmp.path());
    let hosts = hosts.to_str().unwrap();
    let image = format!("{}/node-prj/app:v1", reg.host());
    let pull = |user: Option<&str>| {
        let mut args = vec![
            "images",
            "pull",
            "--hosts-dir",
            hosts,
            "--snapshotter",
            "native",
        ];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        args.push(&image);
        ctd.ctr(&args)
    };
    let anon = pull(None);
    refused(&anon, "anonymous ctr pull from a private project");
    let wrong = pull(Some("node-guest:not-the-password"));
    assert!(!wrong.success(), "ctr pull with a wrong password succeeded");
    let stranger_creds = format!("stranger:{PW}");
    api(
        &reg,
        reqwest::Method::POST,
        "/api/v1/users",
        Some(json!({"name": "stranger", "password": PW})),
    )
    .await;
    refused(
        &pull(Some(&stranger_creds)),
        "ctr pull by a user without a role",
    );

    let guest = format!("node-guest:{PW}");
    pull(Some(&guest)).ok();
    let ls = ctd.ctr(&["images", "ls"]).ok();
    let line = ls
        .stdout
        .lines()
        .find(|l| l.starts_with(&image))
        .unwrap_or_else(|| panic!("{}", ls.stdout));
    assert!(line.contains(layout.manifest_digest()), "{line}");
    // The same with the robot (a cluster pull secret), after removing the image.
    ctd.ctr(&["images", "rm", &image]).ok();
    pull(Some(&deployer)).ok();
    let check = ctd
        .ctr(&["images", "check", "--snapshotter", "native", "--quiet"])
        .ok();
    assert!(
        check.stdout.lines().any(|l| l.trim() == image),
        "{}",
        check.stdout
    );
}

const ORAS_SCRIPT: &str = r#"
import json, sys
import oras.client

host, ca, repo, user, password, config = sys.argv[1:7]
with open("artifact.txt", "w") as f:
    f.write("an artifact pushed by oras\n")

result = {}
anon = oras.client.OrasClient(hostname=host, tls_verify=ca)
try:
    r = anon.push(target=f"{host}/{repo}:anon", files=["artifact.txt:text/plain"], quiet=True)
    result["anon"] = {"refused": False, "status": getattr(r, "status_code", None)}
except Exception as e:
    result["anon"] = {"refused": True, "error": "%s: %s" % (type(e).__name__, e)}

client = oras.client.OrasClient(hostname=host, tls_verify=ca)
result["login"] = client.login(username=user, password=password, hostname=host, config_path=config)
r = client.push(target=f"{host}/{repo}:v1", files=["artifact.txt:text/plain"], quiet=True)
result["push"] = {"status": r.status_code, "digest": r.headers.get("Docker-Content-Digest")}
print(json.dumps(result))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_login_and_push_into_a_private_project() {
    let reg = start();
    private_project(&reg, "art-prj").await;
    user(&reg, "art-dev", "art-prj", "developer").await;
    let python = std::env::var("BERTH_PYTHON").unwrap_or_else(|_| "python3".into());
    need(&python);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.json");
    let out = run_cmd(
        Command::new(&python)
            .current_dir(work.path())
            .arg("-c")
            .arg(ORAS_SCRIPT)
            .arg(reg.host())
            .arg(reg.ca_path())
            .arg("art-prj/notes")
            .arg("art-dev")
            .arg(PW)
            .arg(&config),
        TIMEOUT,
    )
    .ok();
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(
        v["anon"]["refused"], true,
        "anonymous oras push into a private project: {v}"
    );
    assert_eq!(v["push"]["status"], 201, "{v}");
    let digest = v["push"]["digest"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        registry_digest(&reg, "art-prj/notes", "v1")
            .await
            .as_deref(),
        Some(digest.as_str()),
        "{v}"
    );
    assert!(
        registry_digest(&reg, "art-prj/notes", "anon")
            .await
            .is_none()
    );
    let cfg: Value = serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        cfg["auths"][reg.host()]["auth"]
            .as_str()
            .map(|a| format!("Basic {a}")),
        Some(common::basic_auth("art-dev", PW)),
        "{cfg}"
    );
}
