//! Interop with skopeo (Debian `skopeo`, containers/image): the client a person uses to
//! copy images in and out of Berth over HTTPS with Berth's own CA.
//!
//! Every test starts its own `berth serve` (via the harness), builds a deterministic OCI
//! image layout (tests/fixtures), and drives the real `skopeo` binary with a timeout.
//! A missing `skopeo` is a failure, never a skip.
//!
//! Access control (issue 3): every push logs in as the harness's administrator
//! (`--dest-creds`); pulls and inspects from the public project `library` stay anonymous,
//! as a real user's would, which checks that anonymous reads of a public project work
//! through the token flow. A private project is only readable with credentials.
//!
//! Debugging aid: with `BERTH_TEST_SERVER_BIN=/path/to/shim` the same flows run against
//! another server speaking `berth serve`'s CLI (e.g. CNCF Distribution behind a shim), to
//! tell a skopeo/environment problem from a Berth problem.

mod common;
mod fixtures;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Berth, CmdOutput, need, run_cmd};
use fixtures::{Layout, OCI_INDEX, OCI_MANIFEST};

const X509_UNKNOWN_CA: &str = "x509: certificate signed by unknown authority";
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(180);

fn start_registry() -> Berth {
    Berth::start_bin_in(
        &common::server_bin(),
        tempfile::tempdir().expect("tempdir"),
        &[],
    )
}

/// `skopeo --insecure-policy ARGS…` (the signature policy is not under test), bounded in time.
/// Credentials come only from the arguments: the auth file skopeo would otherwise consult
/// points into an empty temporary directory, so an anonymous call really is anonymous.
fn skopeo(args: &[&str]) -> CmdOutput {
    need("skopeo");
    let auth_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy")
        .args(args)
        .env("REGISTRY_AUTH_FILE", auth_dir.path().join("auth.json"))
        .env("DOCKER_CONFIG", auth_dir.path());
    run_cmd(&mut cmd, SKOPEO_TIMEOUT)
}

/// The administrator's `user:password`, as `--creds`/`--src-creds`/`--dest-creds` take it.
fn creds() -> String {
    common::admin_creds()
}

fn docker_ref(reg: &Berth, repo_and_ref: &str) -> String {
    format!("docker://{}/{}", reg.host(), repo_and_ref)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Push `layout` to `repo:tag` with skopeo as the administrator, trusting the registry's CA.
fn push(reg: &Berth, layout: &Layout, target: &str, all: bool) {
    let cert_dir = reg.cert_dir();
    let dest = docker_ref(reg, target);
    let src = layout.oci_ref();
    let creds = creds();
    let mut args = vec!["copy"];
    if all {
        args.push("--all");
    }
    args.extend([
        "--dest-creds",
        &creds,
        "--dest-cert-dir",
        path_str(&cert_dir),
        &src,
        &dest,
    ]);
    skopeo(&args).ok();
}

/// GET a manifest through the registry API as the administrator; returns (status,
/// content-type, digest header, body).
async fn get_manifest(reg: &Berth, repo: &str, reference: &str) -> (u16, String, String, Vec<u8>) {
    let resp = reg
        .client()
        .get(format!("{}/v2/{repo}/manifests/{reference}", reg.url()))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .expect("GET manifest");
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let ct = header("content-type");
    let digest = header("docker-content-digest");
    let body = resp.bytes().await.expect("manifest body").to_vec();
    (status, ct, digest, body)
}

#[tokio::test]
async fn push_and_pull_back_preserves_every_digest() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    push(&reg, &layout, "library/demo:v1", false);

    // What the registry serves is exactly what was pushed.
    let (status, ct, digest, body) = get_manifest(&reg, "library/demo", "v1").await;
    assert_eq!(
        status,
        200,
        "GET /v2/library/demo/manifests/v1: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(ct, OCI_MANIFEST);
    assert_eq!(digest, layout.manifest_digest());
    assert_eq!(
        body, layout.top_bytes,
        "manifest bytes changed in the registry"
    );
    for layer in &layout.images[0].layers {
        let resp = reg
            .client()
            .head(format!(
                "{}/v2/library/demo/blobs/{}",
                reg.url(),
                layer.digest
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "HEAD blob {}", layer.digest);
        // (reqwest's content_length() is the body's size hint, 0 for HEAD: read the header.)
        let len = resp
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            len,
            Some(layer.size.to_string()),
            "HEAD blob {} Content-Length",
            layer.digest
        );
    }
    let tags: serde_json::Value = reg
        .client()
        .get(format!("{}/v2/library/demo/tags/list", reg.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["name"], "library/demo");
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));

    // Copy it back out to a second layout, anonymously (`library` is public): same
    // manifest digest, same set of blobs.
    let out = tmp.path().join("out");
    let cert_dir = reg.cert_dir();
    let dst = format!("oci:{}:v1", out.display());
    skopeo(&[
        "copy",
        "--src-cert-dir",
        path_str(&cert_dir),
        &docker_ref(&reg, "library/demo:v1"),
        &dst,
    ])
    .ok();
    let pulled = fixtures::find_tagged(&out, "v1");
    assert_eq!(
        pulled, layout.top,
        "manifest descriptor after the round trip"
    );
    assert_eq!(fixtures::read_blob(&out, &pulled.digest), layout.top_bytes);
    assert_eq!(
        fixtures::blob_digests(&out),
        layout.all_blob_digests(),
        "blobs after the round trip"
    );

    // Pushing the same image again is a no-op that still succeeds (blobs already exist).
    push(&reg, &layout, "library/demo:v1", false);
    push(&reg, &layout, "library/demo:again", false);
    let (status, _, digest, _) = get_manifest(&reg, "library/demo", "again").await;
    assert_eq!((status, digest.as_str()), (200, layout.manifest_digest()));
}

#[tokio::test]
async fn inspect_reports_digest_layers_platform_and_config() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    push(&reg, &layout, "library/demo:v1", false);
    let cert_dir = reg.cert_dir();
    let image = &layout.images[0];
    let target = docker_ref(&reg, "library/demo:v1");

    let out = skopeo(&["inspect", "--cert-dir", path_str(&cert_dir), &target]).ok();
    let info: serde_json::Value = serde_json::from_str(&out.stdout).expect("inspect JSON");
    assert_eq!(info["Digest"], layout.manifest_digest(), "inspect: {info}");
    assert_eq!(info["Architecture"], image.architecture);
    assert_eq!(info["Os"], "linux");
    assert_eq!(info["Layers"], serde_json::json!(layout.layer_digests()));
    assert_eq!(
        info["RepoTags"],
        serde_json::json!(["v1"]),
        "inspect lists the repository's tags"
    );
    assert_eq!(
        info["Labels"]["org.opencontainers.image.title"],
        "berth-fixture"
    );

    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--cert-dir",
        path_str(&cert_dir),
        &target,
    ])
    .ok();
    assert_eq!(
        raw.stdout.as_bytes(),
        &layout.top_bytes[..],
        "inspect --raw is the exact manifest"
    );

    let config = skopeo(&[
        "inspect",
        "--config",
        "--raw",
        "--cert-dir",
        path_str(&cert_dir),
        &target,
    ])
    .ok();
    assert_eq!(
        fixtures::sha256_digest(config.stdout.as_bytes()),
        image.config.digest
    );

    // An unknown tag is reported as such, not as a transport error.
    let missing = skopeo(&[
        "inspect",
        "--cert-dir",
        path_str(&cert_dir),
        &docker_ref(&reg, "library/demo:nope"),
    ]);
    assert!(
        !missing.success(),
        "inspect of a missing tag succeeded: {}",
        missing.stdout
    );
    assert!(
        missing.stderr.contains("manifest unknown"),
        "expected `manifest unknown` for a missing tag, got: {}",
        missing.stderr
    );
}

#[tokio::test]
async fn without_the_ca_skopeo_reports_unknown_authority() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let target = docker_ref(&reg, "library/demo:v1");

    // The seed's failure: the client does not trust the registry's certificate (with
    // valid credentials, so the certificate is the only problem).
    let creds = creds();
    let push = skopeo(&["copy", "--dest-creds", &creds, &layout.oci_ref(), &target]);
    assert!(
        !push.success(),
        "push without the CA succeeded: {}",
        push.stdout
    );
    assert!(
        push.stderr.contains(X509_UNKNOWN_CA),
        "push without the CA should fail with `{X509_UNKNOWN_CA}`, got: {}",
        push.stderr
    );
    let inspect = skopeo(&["inspect", &target]);
    assert!(!inspect.success());
    assert!(
        inspect.stderr.contains(X509_UNKNOWN_CA),
        "inspect: {}",
        inspect.stderr
    );

    // Nothing was stored.
    let (status, _, _, _) = get_manifest(&reg, "library/demo", "v1").await;
    assert_eq!(status, 404);

    // Skipping verification (the seed's `insecure-registries`) works ...
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &layout.oci_ref(),
        &target,
    ])
    .ok();
    // ... and so does trusting the CA.
    let cert_dir = reg.cert_dir();
    let out = skopeo(&["inspect", "--cert-dir", path_str(&cert_dir), &target]).ok();
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(info["Digest"], layout.manifest_digest());
}

#[tokio::test]
async fn copy_by_digest_within_and_out_of_the_registry() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    push(&reg, &layout, "library/demo:v1", false);
    let cert_dir = reg.cert_dir();
    let cert = path_str(&cert_dir);
    let by_digest = docker_ref(&reg, &format!("library/demo@{}", layout.manifest_digest()));

    // Registry to registry, by digest, into another repository (blobs may be mounted):
    // an anonymous read of the public source, an authenticated write of the destination.
    let creds = creds();
    skopeo(&[
        "copy",
        "--src-cert-dir",
        cert,
        "--dest-creds",
        &creds,
        "--dest-cert-dir",
        cert,
        &by_digest,
        &docker_ref(&reg, "library/copy:v2"),
    ])
    .ok();
    let (status, _, digest, body) = get_manifest(&reg, "library/copy", "v2").await;
    assert_eq!(status, 200);
    assert_eq!(digest, layout.manifest_digest());
    assert_eq!(body, layout.top_bytes);
    let (status, _, _, body) = get_manifest(&reg, "library/copy", layout.manifest_digest()).await;
    assert_eq!(status, 200, "GET manifest by digest in the copy");
    assert_eq!(body, layout.top_bytes);

    // Registry to a layout, by digest.
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--src-cert-dir",
        cert,
        &by_digest,
        &format!("oci:{}:pinned", out.display()),
    ])
    .ok();
    assert_eq!(fixtures::find_tagged(&out, "pinned"), layout.top);
    assert_eq!(fixtures::blob_digests(&out), layout.all_blob_digests());

    // A digest that does not exist.
    let bogus = format!("library/demo@sha256:{}", "0".repeat(64));
    let missing = skopeo(&["inspect", "--cert-dir", cert, &docker_ref(&reg, &bogus)]);
    assert!(!missing.success(), "inspect of an unknown digest succeeded");
    assert!(
        missing.stderr.contains("manifest unknown"),
        "got: {}",
        missing.stderr
    );
}

#[tokio::test]
async fn skopeo_delete_removes_the_manifest() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    push(&reg, &layout, "library/demo:v1", false);
    let cert_dir = reg.cert_dir();
    let cert = path_str(&cert_dir);

    // Deleting needs a login (maintainer or above): anonymously it is refused and the
    // manifest stays.
    let anon = skopeo(&[
        "delete",
        "--cert-dir",
        cert,
        &docker_ref(&reg, "library/demo:v1"),
    ]);
    assert!(!anon.success(), "anonymous delete succeeded");
    // 401 until the client holds a token; with an anonymous token, 403 (asked, refused),
    // and the message says to log in.
    assert!(
        anon.stderr.contains("401 Unauthorized")
            || (anon.stderr.contains("403 Forbidden") && anon.stderr.contains("log in")),
        "anonymous delete: expected an authorization error, got: {}",
        anon.stderr
    );
    let (status, _, digest, _) = get_manifest(&reg, "library/demo", "v1").await;
    assert_eq!(
        (status, digest.as_str()),
        (200, layout.manifest_digest()),
        "manifest after a refused delete"
    );

    // skopeo resolves the tag, then DELETEs /v2/library/demo/manifests/<digest>.
    let creds = creds();
    skopeo(&[
        "delete",
        "--creds",
        &creds,
        "--cert-dir",
        cert,
        &docker_ref(&reg, "library/demo:v1"),
    ])
    .ok();

    let (status, _, _, body) = get_manifest(&reg, "library/demo", layout.manifest_digest()).await;
    assert_eq!(
        status,
        404,
        "manifest by digest after delete: {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _, body) = get_manifest(&reg, "library/demo", "v1").await;
    assert_eq!(
        status,
        404,
        "tag of a deleted manifest: {}",
        String::from_utf8_lossy(&body)
    );
    let inspect = skopeo(&[
        "inspect",
        "--cert-dir",
        cert,
        &docker_ref(&reg, "library/demo:v1"),
    ]);
    assert!(
        !inspect.success(),
        "inspect after delete succeeded: {}",
        inspect.stdout
    );
    assert!(
        inspect.stderr.contains("manifest unknown"),
        "got: {}",
        inspect.stderr
    );

    // Deleting it again is an error (the manifest is unknown now).
    let again = skopeo(&[
        "delete",
        "--creds",
        &creds,
        "--cert-dir",
        cert,
        &docker_ref(&reg, &format!("library/demo@{}", layout.manifest_digest())),
    ]);
    assert!(!again.success(), "second delete succeeded");

    // The image can be pushed again afterwards.
    push(&reg, &layout, "library/demo:v1", false);
    let (status, _, digest, _) = get_manifest(&reg, "library/demo", "v1").await;
    assert_eq!((status, digest.as_str()), (200, layout.manifest_digest()));
}

#[tokio::test]
async fn copy_all_of_a_multi_arch_index() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::multi_arch_layout(&tmp.path().join("src"), "multi");
    push(&reg, &layout, "library/multi:v1", true);
    let cert_dir = reg.cert_dir();
    let cert = path_str(&cert_dir);
    let target = docker_ref(&reg, "library/multi:v1");

    // The index and both platform manifests are stored byte for byte.
    let (status, ct, digest, body) = get_manifest(&reg, "library/multi", "v1").await;
    assert_eq!(status, 200);
    assert_eq!(ct, OCI_INDEX);
    assert_eq!(digest, layout.manifest_digest());
    assert_eq!(body, layout.top_bytes);
    for image in &layout.images {
        let (status, ct, digest, body) =
            get_manifest(&reg, "library/multi", &image.manifest.digest).await;
        assert_eq!(status, 200, "{} manifest", image.architecture);
        assert_eq!(ct, OCI_MANIFEST);
        assert_eq!(digest, image.manifest.digest);
        assert_eq!(body, image.manifest_bytes);
    }
    let raw = skopeo(&["inspect", "--raw", "--cert-dir", cert, &target]).ok();
    assert_eq!(raw.stdout.as_bytes(), &layout.top_bytes[..]);

    // Each platform resolves to its own image.
    for image in &layout.images {
        let out = skopeo(&[
            "--override-os",
            "linux",
            "--override-arch",
            &image.architecture,
            "inspect",
            "--cert-dir",
            cert,
            &target,
        ])
        .ok();
        let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(info["Architecture"], image.architecture);
        let layers: Vec<String> = image.layers.iter().map(|l| l.digest.clone()).collect();
        assert_eq!(
            info["Layers"],
            serde_json::json!(layers),
            "{} layers",
            image.architecture
        );
    }

    // `--all` back out: the same index and every blob of both platforms.
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--all",
        "--src-cert-dir",
        cert,
        &target,
        &format!("oci:{}:multi", out.display()),
    ])
    .ok();
    assert_eq!(fixtures::find_tagged(&out, "multi"), layout.top);
    assert_eq!(fixtures::blob_digests(&out), layout.all_blob_digests());
}

#[tokio::test]
async fn anonymous_push_is_refused_and_stores_nothing() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let cert_dir = reg.cert_dir();

    // No credentials: even the public project refuses writes.
    let anon = skopeo(&[
        "copy",
        "--dest-cert-dir",
        path_str(&cert_dir),
        &layout.oci_ref(),
        &docker_ref(&reg, "library/demo:v1"),
    ]);
    assert!(!anon.success(), "anonymous push succeeded: {}", anon.stdout);
    assert!(
        anon.stderr.contains("unauthorized")
            || anon.stderr.contains("authentication required")
            || (anon.stderr.contains("denied: anonymous may not push")
                && anon.stderr.contains("log in")),
        "anonymous push: expected an authorization error, got: {}",
        anon.stderr
    );

    // Wrong password: refused too.
    let wrong = format!("{}:not-the-password", common::ADMIN_USER);
    let bad = skopeo(&[
        "copy",
        "--dest-creds",
        &wrong,
        "--dest-cert-dir",
        path_str(&cert_dir),
        &layout.oci_ref(),
        &docker_ref(&reg, "library/demo:v1"),
    ]);
    assert!(!bad.success(), "push with a wrong password succeeded");

    let (status, _, _, _) = get_manifest(&reg, "library/demo", "v1").await;
    assert_eq!(status, 404, "a refused push stored a manifest");
}

#[tokio::test]
async fn private_project_needs_credentials_to_read() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    // `private-prj` does not exist: the push auto-creates it, private.
    push(&reg, &layout, "private-prj/demo:v1", false);
    let cert_dir = reg.cert_dir();
    let cert = path_str(&cert_dir);
    let creds = creds();
    let target = docker_ref(&reg, "private-prj/demo:v1");

    let (status, _, digest, _) = get_manifest(&reg, "private-prj/demo", "v1").await;
    assert_eq!((status, digest.as_str()), (200, layout.manifest_digest()));

    // Anonymously the image cannot be read ...
    let anon = skopeo(&["inspect", "--cert-dir", cert, &target]);
    assert!(
        !anon.success(),
        "anonymous inspect of a private image succeeded: {}",
        anon.stdout
    );
    assert!(
        !anon.stderr.contains("manifest unknown"),
        "anonymous inspect of a private image should be an authorization error: {}",
        anon.stderr
    );
    let out = tmp.path().join("anon-out");
    let anon_copy = skopeo(&[
        "copy",
        "--src-cert-dir",
        cert,
        &target,
        &format!("oci:{}:v1", out.display()),
    ]);
    assert!(
        !anon_copy.success(),
        "anonymous pull of a private image succeeded"
    );

    // ... and an anonymous client cannot tell it from a repository that does not exist.
    let missing = skopeo(&[
        "inspect",
        "--cert-dir",
        cert,
        &docker_ref(&reg, "private-prj/nothing-here:v1"),
    ]);
    assert!(!missing.success());
    let strip = |s: &str| {
        s.replace("private-prj/nothing-here", "REPO")
            .replace("private-prj/demo", "REPO")
    };
    let last_line = |s: &str| {
        // skopeo's `msg="…"` line, without its timestamp.
        let line = s
            .lines()
            .rfind(|l| l.contains("msg="))
            .unwrap_or("")
            .to_string();
        strip(line.split_once("msg=").map(|(_, m)| m).unwrap_or(&line))
    };
    assert_eq!(
        last_line(&anon.stderr),
        last_line(&missing.stderr),
        "anonymous errors for a private and a missing repository differ"
    );

    // With credentials: inspect and pull work, byte for byte.
    let ok = skopeo(&["inspect", "--creds", &creds, "--cert-dir", cert, &target]).ok();
    let info: serde_json::Value = serde_json::from_str(&ok.stdout).expect("inspect JSON");
    assert_eq!(info["Digest"], layout.manifest_digest());
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "--src-creds",
        &creds,
        "--src-cert-dir",
        cert,
        &target,
        &format!("oci:{}:v1", out.display()),
    ])
    .ok();
    assert_eq!(fixtures::find_tagged(&out, "v1"), layout.top);
    assert_eq!(fixtures::blob_digests(&out), layout.all_blob_digests());

    // The same through an auth file, as `skopeo login`/`podman login` would write it.
    let auth_dir = tempfile::tempdir().unwrap();
    let auth_file = auth_dir.path().join("auth.json");
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&creds)
    };
    let mut auths = serde_json::Map::new();
    auths.insert(reg.host(), serde_json::json!({ "auth": encoded }));
    std::fs::write(
        &auth_file,
        serde_json::json!({ "auths": auths }).to_string(),
    )
    .unwrap();
    let via_file = skopeo(&[
        "inspect",
        "--authfile",
        path_str(&auth_file),
        "--cert-dir",
        cert,
        &target,
    ])
    .ok();
    let info: serde_json::Value = serde_json::from_str(&via_file.stdout).unwrap();
    assert_eq!(info["Digest"], layout.manifest_digest());
}
