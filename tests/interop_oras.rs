//! Interop with ORAS (the PyPI `oras` package, i.e. the oras-py SDK: it has no CLI, so a
//! small Python script drives `oras.client.OrasClient`) and the OCI 1.1 referrers API.
//!
//! An image is pushed with skopeo; oras-py then pushes two artifacts whose manifests carry
//! a `subject` pointing at that image (an SBOM-like artifact with a chunked blob upload,
//! and a signature-like one with a monolithic upload), each with its own config media
//! type (= its artifactType), and pulls the first one back. The test then finds both
//! through `GET /v2/<name>/referrers/<digest>`, with and without the `artifactType` filter,
//! using the harness client that trusts only Berth's CA (oras-py gets the CA file too).
//!
//! Access control (issue 3): the image is pushed with `skopeo --dest-creds`; oras-py first
//! tries an anonymous push (refused), then logs in with `OrasClient.login(...)` (which
//! writes a Docker `config.json` to a temporary path the test then checks) and pushes;
//! the pull back is done by a fresh, anonymous client, as anyone may read the public
//! project `library`. The referrers checks use the harness client (administrator).
//!
//! A missing python3, `oras` module or skopeo is a failure, never a skip
//! (`scripts/install-test-deps` installs them). `BERTH_PYTHON` picks the interpreter.

mod common;
mod fixtures;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{Berth, need, run_cmd};
use fixtures::{OCI_INDEX, OCI_MANIFEST};
use serde_json::Value;

const SBOM_TYPE: &str = "application/vnd.berth.test.sbom.v1+json";
const SIG_TYPE: &str = "application/vnd.berth.test.signature.v1+json";
const TIMEOUT: Duration = Duration::from_secs(240);

/// Try an anonymous push (refused), log in, push two referrers of SUBJECT with oras-py,
/// pull the first back anonymously, print a JSON report. Credentials come from the
/// environment (BERTH_USER, BERTH_PASSWORD); the login writes BERTH_DOCKER_CONFIG.
const ORAS_SCRIPT: &str = r#"
import hashlib, json, os, sys
import oras.client, oras.oci

host, ca, repo, subject_digest, subject_size, sbom_type, sig_type = sys.argv[1:8]
user, password = os.environ["BERTH_USER"], os.environ["BERTH_PASSWORD"]
docker_config = os.environ["BERTH_DOCKER_CONFIG"]
subject = oras.oci.Subject(
    mediaType="application/vnd.oci.image.manifest.v1+json",
    digest=subject_digest,
    size=int(subject_size),
)

with open("sbom.json", "w") as f:
    json.dump({"spdxVersion": "SPDX-2.3", "name": "berth-fixture",
               "packages": [{"name": "pkg-%d" % i, "versionInfo": "1.%d" % i} for i in range(300)]}, f)
with open("sbom-config.json", "w") as f:
    json.dump({"generator": "berth interop test"}, f)
with open("signature.txt", "w") as f:
    f.write("not really a signature of " + subject_digest + "\n")
with open("sig-config.json", "w") as f:
    json.dump({"signer": "berth interop test"}, f)

def report(tag, resp):
    return {
        "tag": tag,
        "status": resp.status_code,
        "digest": resp.headers.get("Docker-Content-Digest"),
        "oci_subject": resp.headers.get("OCI-Subject"),
        "location": resp.headers.get("Location"),
    }

with open("anon.txt", "w") as f:
    f.write("pushed without logging in\n")

# Without a login a push is refused.
anon = oras.client.OrasClient(hostname=host, tls_verify=ca)
try:
    r = anon.push(target=f"{host}/{repo}:anonymous", files=["anon.txt:text/plain"], quiet=True)
    anon_push = {"refused": False, "status": getattr(r, "status_code", None)}
except Exception as e:
    anon_push = {"refused": True, "error": "%s: %s" % (type(e).__name__, e)}

# `login` sets Basic credentials for the token requests and records them in a Docker
# config.json (no Docker daemon here, so oras-py writes the file itself).
client = oras.client.OrasClient(hostname=host, tls_verify=ca)
login = client.login(username=user, password=password, hostname=host, config_path=docker_config)

pushes = []
r = client.push(
    target=f"{host}/{repo}:sbom",
    files=["sbom.json:application/spdx+json"],
    manifest_config=f"sbom-config.json:{sbom_type}",
    manifest_annotations={"org.opencontainers.image.description": "berth sbom"},
    subject=subject,
    do_chunked=True,
    chunk_size=4096,
    quiet=True,
)
pushes.append(report("sbom", r))
r = client.push(
    target=f"{host}/{repo}:signature",
    files=["signature.txt:application/vnd.berth.test.signature.blob"],
    manifest_config=f"sig-config.json:{sig_type}",
    subject=subject,
    quiet=True,
)
pushes.append(report("signature", r))

# Anyone may read the public project: pull back with a fresh, anonymous client.
reader = oras.client.OrasClient(hostname=host, tls_verify=ca)
os.makedirs("pulled", exist_ok=True)
files = reader.pull(target=f"{host}/{repo}:sbom", outdir="pulled")
pulled = {}
for path in files:
    with open(path, "rb") as f:
        pulled[os.path.basename(path)] = "sha256:" + hashlib.sha256(f.read()).hexdigest()
with open("sbom.json", "rb") as f:
    sbom_digest = "sha256:" + hashlib.sha256(f.read()).hexdigest()

print(json.dumps({"anon_push": anon_push, "login": login, "pushes": pushes,
                  "pulled": pulled, "sbom_digest": sbom_digest}))
"#;

fn start_registry() -> Berth {
    Berth::start_bin_in(
        &common::server_bin(),
        tempfile::tempdir().expect("tempdir"),
        &[],
    )
}

fn python() -> String {
    std::env::var("BERTH_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

async fn get(reg: &Berth, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = reg
        .client()
        .get(format!("{}{path}", reg.url()))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

/// GET the referrers index; asserts 200 and the index media type.
async fn referrers(
    reg: &Berth,
    repo: &str,
    digest: &str,
    query: &str,
) -> (reqwest::header::HeaderMap, Value) {
    let path = format!("/v2/{repo}/referrers/{digest}{query}");
    let (status, headers, body) = get(reg, &path).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "GET {path}: {text}");
    let ct = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap())
        .unwrap_or("");
    assert_eq!(ct, OCI_INDEX, "GET {path} content-type");
    let index: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"));
    assert_eq!(index["schemaVersion"], 2, "{index}");
    assert_eq!(index["mediaType"], OCI_INDEX, "{index}");
    assert!(index["manifests"].is_array(), "{index}");
    (headers, index)
}

/// Percent-encode a query value (`+` would otherwise decode as a space).
fn query_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn by_digest<'a>(index: &'a Value, digest: &str) -> &'a Value {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] == digest)
        .unwrap_or_else(|| panic!("{digest} not among the referrers: {index}"))
}

#[tokio::test]
async fn oras_artifacts_are_found_through_the_referrers_api() {
    need("skopeo");
    need(&python());
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let cert_dir = reg.cert_dir();
    let mut copy = Command::new("skopeo");
    let skopeo_auth = tempfile::tempdir().unwrap();
    copy.env("REGISTRY_AUTH_FILE", skopeo_auth.path().join("auth.json"))
        .env("DOCKER_CONFIG", skopeo_auth.path())
        .args(["--insecure-policy", "copy", "--dest-creds"])
        .arg(common::admin_creds())
        .arg("--dest-cert-dir")
        .arg(&cert_dir)
        .arg(layout.oci_ref())
        .arg(format!("docker://{}/library/demo:v1", reg.host()));
    run_cmd(&mut copy, TIMEOUT).ok();
    let subject = &layout.top;

    // Before any artifact: an empty referrers list, not an error.
    let (_, empty) = referrers(&reg, "library/demo", &subject.digest, "").await;
    assert_eq!(
        empty["manifests"],
        serde_json::json!([]),
        "no referrers yet"
    );

    // oras-py pushes two artifacts about the image and pulls one back.
    let work = tmp.path().join("oras");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("push_referrers.py"), ORAS_SCRIPT).unwrap();
    let docker_config = tmp.path().join("oras-docker").join("config.json");
    let mut py = Command::new(python());
    py.current_dir(&work)
        .env("BERTH_USER", common::ADMIN_USER)
        .env("BERTH_PASSWORD", common::ADMIN_PASSWORD)
        .env("BERTH_DOCKER_CONFIG", &docker_config)
        // No Docker daemon: oras-py's login then writes config.json itself.
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("push_referrers.py")
        .arg(reg.host())
        .arg(reg.ca_path())
        .arg("library/demo")
        .arg(&subject.digest)
        .arg(subject.size.to_string())
        .arg(SBOM_TYPE)
        .arg(SIG_TYPE);
    let out = run_cmd(&mut py, TIMEOUT).ok();
    let report: Value = serde_json::from_str(out.stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("oras script output: {e}:\n{}\n{}", out.stdout, out.stderr));

    // The anonymous push was refused, and stored nothing.
    assert_eq!(
        report["anon_push"]["refused"], true,
        "anonymous oras push was not refused: {report}"
    );
    let (status, _, _) = get(&reg, "/v2/library/demo/manifests/anonymous").await;
    assert_eq!(status, 404, "a refused anonymous push stored a manifest");

    // `login` recorded the credentials in the config.json it was given.
    let cfg: Value = serde_json::from_slice(
        &fs::read(&docker_config).unwrap_or_else(|e| panic!("{}: {e}", docker_config.display())),
    )
    .unwrap();
    let expected_auth = common::basic_auth(common::ADMIN_USER, common::ADMIN_PASSWORD);
    assert_eq!(
        cfg["auths"][reg.host()]["auth"].as_str(),
        expected_auth.strip_prefix("Basic "),
        "config.json written by oras login: {cfg}"
    );

    let pushes = report["pushes"].as_array().unwrap();
    let mut artifact_digests = Vec::new();
    for push in pushes {
        assert_eq!(push["status"], 201, "oras push of {}: {push}", push["tag"]);
        let digest = push["digest"]
            .as_str()
            .unwrap_or_else(|| panic!("no Docker-Content-Digest: {push}"));
        assert_eq!(
            push["oci_subject"], subject.digest,
            "PUT of a manifest with a subject must answer OCI-Subject (distribution-spec 1.1): {push}"
        );
        artifact_digests.push(digest.to_string());
    }
    let (sbom_digest, sig_digest) = (&artifact_digests[0], &artifact_digests[1]);
    assert_eq!(
        report["pulled"]["sbom.json"], report["sbom_digest"],
        "oras pull returned different bytes: {report}"
    );

    // The artifact manifests are stored as pushed, subject included.
    for (tag, digest, artifact_type) in [
        ("sbom", sbom_digest, SBOM_TYPE),
        ("signature", sig_digest, SIG_TYPE),
    ] {
        let (status, headers, body) = get(&reg, &format!("/v2/library/demo/manifests/{tag}")).await;
        assert_eq!(status, 200);
        assert_eq!(fixtures::sha256_digest(&body), *digest);
        assert_eq!(
            headers
                .get("docker-content-digest")
                .unwrap()
                .to_str()
                .unwrap(),
            digest
        );
        let manifest: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(manifest["subject"]["digest"], subject.digest);
        assert_eq!(manifest["config"]["mediaType"], artifact_type);
    }

    // All referrers.
    let (_, index) = referrers(&reg, "library/demo", &subject.digest, "").await;
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    for (digest, artifact_type) in [(sbom_digest, SBOM_TYPE), (sig_digest, SIG_TYPE)] {
        let d = by_digest(&index, digest);
        assert_eq!(d["mediaType"], OCI_MANIFEST, "{d}");
        // No artifactType field in the manifest: the config media type stands in for it.
        assert_eq!(d["artifactType"], artifact_type, "{d}");
        let (_, _, body) = get(&reg, &format!("/v2/library/demo/manifests/{digest}")).await;
        assert_eq!(d["size"], body.len(), "{d}");
    }
    assert_eq!(
        by_digest(&index, sbom_digest)["annotations"]["org.opencontainers.image.description"],
        "berth sbom",
        "referrer descriptors carry the manifest's annotations: {index}"
    );

    // Filtered by artifactType.
    let query = format!("?artifactType={}", query_escape(SBOM_TYPE));
    let (headers, filtered) = referrers(&reg, "library/demo", &subject.digest, &query).await;
    assert_eq!(
        headers
            .get("oci-filters-applied")
            .map(|v| v.to_str().unwrap()),
        Some("artifactType"),
        "a filtered referrers response names the filter in OCI-Filters-Applied"
    );
    let manifests = filtered["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{filtered}");
    assert_eq!(manifests[0]["digest"], *sbom_digest);
    assert_eq!(manifests[0]["artifactType"], SBOM_TYPE);

    let query = format!("?artifactType={}", query_escape(SIG_TYPE));
    let (_, filtered) = referrers(&reg, "library/demo", &subject.digest, &query).await;
    let manifests = filtered["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{filtered}");
    assert_eq!(manifests[0]["digest"], *sig_digest);

    let (_, none) = referrers(
        &reg,
        "library/demo",
        &subject.digest,
        "?artifactType=application/vnd.berth.none",
    )
    .await;
    assert_eq!(none["manifests"], serde_json::json!([]), "{none}");

    // An artifact has no referrers of its own.
    let (_, leaf) = referrers(&reg, "library/demo", sbom_digest, "").await;
    assert_eq!(leaf["manifests"], serde_json::json!([]), "{leaf}");

    // Deleting a referrer removes it from the list.
    let resp = reg
        .client()
        .delete(format!(
            "{}/v2/library/demo/manifests/{sig_digest}",
            reg.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202, "DELETE signature manifest");
    let (_, index) = referrers(&reg, "library/demo", &subject.digest, "").await;
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(manifests[0]["digest"], *sbom_digest);
}
