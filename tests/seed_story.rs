//! The seed's story, end to end, as one test (issue 3):
//!
//! 1. the administrator pushes `library/nginx` (public) and anyone pulls it anonymously;
//! 2. a private project `private-prj` is created through the admin API ("public"
//!    unchecked) and nginx is pushed there;
//! 3. an anonymous pull from it is refused;
//! 4. a user is created and made a member (developer, then guest) of `private-prj`;
//! 5. `podman login` writes a `config.json` (its `--authfile`), and that file is what
//!    `skopeo copy --authfile` uses to pull the private image successfully.
//!
//! The "nginx" image is the deterministic fixture image (tests/fixtures). Every child
//! process is bounded in time and killed by PID; missing peers fail the test.

mod common;
mod fixtures;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{Berth, CmdOutput, need, run_cmd};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(240);
const PASSWORD: &str = "seed-story-password-42";

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

async fn api(reg: &Berth, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = reg
        .client()
        .request(method.clone(), format!("{}{path}", reg.url()))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_story_public_and_private_nginx() {
    need("skopeo");
    need("podman");
    let reg = Berth::start();
    let host = reg.host();
    let cert_dir = reg.cert_dir();
    let cert = cert_dir.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let nginx = fixtures::image_layout(&tmp.path().join("nginx"), "latest");

    // 1. library/nginx, pushed by the administrator, pulled by anyone.
    skopeo(&[
        "copy",
        "--dest-creds",
        &common::admin_creds(),
        "--dest-cert-dir",
        cert,
        &nginx.oci_ref(),
        &format!("docker://{host}/library/nginx:latest"),
    ])
    .ok();
    let public_copy = tmp.path().join("public-copy");
    skopeo(&[
        "copy",
        "--src-cert-dir",
        cert,
        &format!("docker://{host}/library/nginx:latest"),
        &format!("oci:{}:latest", public_copy.display()),
    ])
    .ok();
    assert_eq!(
        fixtures::find_tagged(&public_copy, "latest").digest,
        nginx.manifest_digest(),
        "anonymous pull of library/nginx"
    );

    // 2. private-prj through the admin API, "public" unchecked.
    let (status, p) = api(
        &reg,
        reqwest::Method::POST,
        "/api/v1/projects",
        json!({"name": "private-prj", "public": false, "description": "the seed's private project"}),
    )
    .await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["public"], false, "{p}");
    skopeo(&[
        "copy",
        "--dest-creds",
        &common::admin_creds(),
        "--dest-cert-dir",
        cert,
        &nginx.oci_ref(),
        &format!("docker://{host}/private-prj/nginx:latest"),
    ])
    .ok();

    // 3. Anonymous pull refused.
    let private_ref = format!("docker://{host}/private-prj/nginx:latest");
    let anon = skopeo(&[
        "copy",
        "--src-cert-dir",
        cert,
        &private_ref,
        &format!("oci:{}:latest", tmp.path().join("anon-copy").display()),
    ]);
    assert!(
        !anon.success(),
        "anonymous pull of private-prj/nginx succeeded"
    );
    let err = anon.stderr.to_lowercase();
    assert!(
        err.contains("unauthorized")
            || err.contains("authentication required")
            || err.contains("denied"),
        "anonymous pull: expected an authorization error, got:\n{}",
        anon.stderr
    );
    let anon_inspect = skopeo(&["inspect", "--cert-dir", cert, &private_ref]);
    assert!(
        !anon_inspect.success(),
        "anonymous inspect of private-prj/nginx succeeded"
    );

    // 4. A user, developer of private-prj, then guest (pull is all the story needs).
    let (status, u) = api(
        &reg,
        reqwest::Method::POST,
        "/api/v1/users",
        json!({"name": "alice", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 201, "{u}");
    for role in ["developer", "guest"] {
        let (status, m) = api(
            &reg,
            reqwest::Method::PUT,
            "/api/v1/projects/private-prj/members/alice",
            json!({"role": role}),
        )
        .await;
        assert_eq!(status, 200, "{m}");
        assert_eq!(m["role"], role, "{m}");
    }

    // 5. podman login writes config.json; skopeo pulls with it.
    let pod = tempfile::Builder::new()
        .prefix("bseed")
        .tempdir_in("/tmp")
        .unwrap();
    let authfile = pod.path().join("config.json");
    let storage_conf = pod.path().join("storage.conf");
    fs::write(
        &storage_conf,
        format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
            pod.path().join("runroot").display(),
            pod.path().join("root").display()
        ),
    )
    .unwrap();
    fs::create_dir_all(pod.path().join("xdg")).unwrap();
    let login = run_cmd(
        Command::new("podman")
            .env("XDG_RUNTIME_DIR", pod.path().join("xdg"))
            .env("XDG_CONFIG_HOME", pod.path().join("config"))
            .env("CONTAINERS_STORAGE_CONF", &storage_conf)
            .arg("--root")
            .arg(pod.path().join("root"))
            .arg("--runroot")
            .arg(pod.path().join("runroot"))
            .args(["--storage-driver", "vfs", "--events-backend", "none"])
            .args(["login", "--cert-dir", cert, "--authfile"])
            .arg(&authfile)
            .args(["-u", "alice", "-p", PASSWORD, &host]),
        TIMEOUT,
    )
    .ok();
    assert!(login.stdout.contains("Login Succeeded"), "{login:?}");
    let cfg: Value = serde_json::from_str(&fs::read_to_string(&authfile).unwrap()).unwrap();
    assert_eq!(
        cfg["auths"][&host]["auth"]
            .as_str()
            .map(|a| format!("Basic {a}")),
        Some(common::basic_auth("alice", PASSWORD)),
        "config.json written by podman login: {cfg}"
    );

    let private_copy = tmp.path().join("private-copy");
    skopeo(&[
        "copy",
        "--authfile",
        authfile.to_str().unwrap(),
        "--src-cert-dir",
        cert,
        &private_ref,
        &format!("oci:{}:latest", private_copy.display()),
    ])
    .ok();
    assert_eq!(
        fixtures::find_tagged(&private_copy, "latest").digest,
        nginx.manifest_digest(),
        "pull of private-prj/nginx with podman's config.json"
    );
    for digest in nginx.all_blob_digests() {
        assert_eq!(
            fixtures::read_blob(&private_copy, &digest),
            nginx.blob(&digest),
            "blob {digest}"
        );
    }

    // The guest may pull but not push with those credentials.
    let push = skopeo(&[
        "copy",
        "--authfile",
        authfile.to_str().unwrap(),
        "--dest-cert-dir",
        cert,
        &nginx.oci_ref(),
        &format!("docker://{host}/private-prj/nginx:by-alice"),
    ]);
    assert!(!push.success(), "a guest pushed into private-prj");
}
