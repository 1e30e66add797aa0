//! Interop with skopeo (Debian `skopeo`, containers/image): the client a person uses to
//! copy images in and out of Berth over HTTPS with Berth's own CA.
//!
//! Every test starts its own `berth serve` (via the harness), builds a deterministic OCI
//! image layout (tests/fixtures), and drives the real `skopeo` binary with a timeout.
//! A missing `skopeo` is a failure, never a skip.
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
fn skopeo(args: &[&str]) -> CmdOutput {
    need("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy").args(args);
    run_cmd(&mut cmd, SKOPEO_TIMEOUT)
}

fn docker_ref(reg: &Berth, repo_and_ref: &str) -> String {
    format!("docker://{}/{}", reg.host(), repo_and_ref)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Push `layout` to `repo:tag` with skopeo, trusting the registry's CA.
fn push(reg: &Berth, layout: &Layout, target: &str, all: bool) {
    let cert_dir = reg.cert_dir();
    let dest = docker_ref(reg, target);
    let src = layout.oci_ref();
    let mut args = vec!["copy"];
    if all {
        args.push("--all");
    }
    args.extend(["--dest-cert-dir", path_str(&cert_dir), &src, &dest]);
    skopeo(&args).ok();
}

/// GET a manifest through the registry API; returns (status, content-type, digest header, body).
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

    // Copy it back out to a second layout: same manifest digest, same set of blobs.
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

    // The seed's failure: the client does not trust the registry's certificate.
    let push = skopeo(&["copy", &layout.oci_ref(), &target]);
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

    // Registry to registry, by digest, into another repository (blobs may be mounted).
    skopeo(&[
        "copy",
        "--src-cert-dir",
        cert,
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

    // skopeo resolves the tag, then DELETEs /v2/library/demo/manifests/<digest>.
    skopeo(&[
        "delete",
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
