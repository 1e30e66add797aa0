//! Replication rules end to end, against real registries on loopback: CNCF Distribution 2.8
//! (Debian `docker-registry`, TLS + htpasswd; one per test binary) and a second Berth.
//!
//! - a push rule triggered on push copies a multi-platform index with a referrer (an SBOM)
//!   to Distribution (which has no referrers API: the tag-schema fallback) and to a second
//!   Berth (referrers API), with a name mapping; compared digest by digest;
//! - a scheduled pull rule brings only the filtered tags from Distribution;
//! - deleting a tag is replicated by a rule with `replicate_deletions`, and the local
//!   project's webhook hears the execution's end (Harbor `REPLICATION` event);
//! - a connection cut in the middle of a blob is retried and the execution succeeds; to a
//!   second Berth the upload continues from the offset it acknowledged (bytes counted
//!   through the cutting proxy);
//! - a pull rule naming its repositories needs no `/v2/_catalog` (through a front that
//!   refuses it, as Docker Hub does); a pattern there fails saying what to do;
//! - a labels filter replicates only the labelled tags;
//! - a repository deleted at the source since the last run loses its tags at the destination.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::distribution::{Distribution, PASSWORD, USER};
use common::docker::{run_timeout_stdin, text};
use common::{Berth, berth_bin, run_cmd, sha256_digest};
use serde_json::{Value, json};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// This test binary's Distribution (TLS with its own CA, htpasswd), shared by its tests
/// and killed by a watchdog by PID when the test process exits.
struct Upstream {
    host: String,
    ca_pem: Vec<u8>,
    _watchdog: std::process::Child,
}

fn dist() -> &'static Upstream {
    static SHARED: OnceLock<Upstream> = OnceLock::new();
    SHARED.get_or_init(|| {
        let d = Distribution::start(true);
        // Statics are never dropped: a watchdog kills it by PID once this process exits.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill -9 {pid}; rm -rf '{dir}'",
                parent = std::process::id(),
                pid = d.pid(),
                dir = d.dir.path().display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the Distribution watchdog");
        let upstream = Upstream {
            host: d.host.clone(),
            ca_pem: std::fs::read(d.ca()).unwrap(),
            _watchdog: watchdog,
        };
        std::mem::forget(d);
        upstream
    })
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A plain registry client for the checks: Basic credentials, one CA.
struct Reg {
    base: String,
    http: reqwest::Client,
    auth: String,
}

impl Reg {
    fn new(host: &str, ca: &[u8], user: &str, password: &str) -> Reg {
        let certs = reqwest::Certificate::from_pem_bundle(ca).unwrap();
        Reg {
            base: format!("https://{host}"),
            http: reqwest::Client::builder()
                .tls_certs_only(certs)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            auth: common::basic_auth(user, password),
        }
    }

    fn dist() -> Reg {
        let d = dist();
        Reg::new(&d.host, &d.ca_pem, USER, PASSWORD)
    }

    fn berth(b: &Berth) -> Reg {
        Reg::new(
            &b.host(),
            &b.ca_pem(),
            common::ADMIN_USER,
            common::ADMIN_PASSWORD,
        )
    }

    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Value {
        let r = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
            .header("authorization", &self.auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "start upload to {repo}");
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let url = if loc.starts_with('/') {
            format!("{}{loc}", self.base)
        } else {
            loc
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let digest = sha256_digest(bytes);
        let r = self
            .http
            .put(format!("{url}{sep}digest={digest}"))
            .header("authorization", &self.auth)
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "finish upload to {repo}");
        json!({"mediaType": "application/octet-stream", "digest": digest, "size": bytes.len()})
    }

    async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("authorization", &self.auth)
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "PUT {repo}:{reference}: {status} {}",
            r.text().await.unwrap()
        );
    }

    /// `(status, digest header, body)` of a manifest GET.
    async fn manifest(&self, repo: &str, reference: &str) -> (u16, String, Vec<u8>) {
        let r = self
            .http
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("authorization", &self.auth)
            .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let digest = r
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, digest, r.bytes().await.unwrap().to_vec())
    }

    async fn has_blob(&self, repo: &str, digest: &str) -> bool {
        let r = self
            .http
            .head(format!("{}/v2/{repo}/blobs/{digest}", self.base))
            .header("authorization", &self.auth)
            .send()
            .await
            .unwrap();
        r.status() == 200
    }

    async fn has_referrers_api(&self, repo: &str, digest: &str) -> bool {
        let r = self
            .http
            .get(format!("{}/v2/{repo}/referrers/{digest}", self.base))
            .header("authorization", &self.auth)
            .send()
            .await
            .unwrap();
        r.status() == 200
    }

    async fn delete_manifest(&self, repo: &str, reference: &str) {
        let r = self
            .http
            .delete(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("authorization", &self.auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "DELETE {repo}:{reference}");
    }

    async fn tags(&self, repo: &str) -> Vec<String> {
        let r = self
            .http
            .get(format!("{}/v2/{repo}/tags/list", self.base))
            .header("authorization", &self.auth)
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            return Vec::new();
        }
        let v: Value = r.json().await.unwrap();
        // Referrers fallback tags (`sha256-…`) are not image tags.
        let mut t: Vec<String> = v["tags"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        t.retain(|t| !t.starts_with("sha256-"));
        t.sort();
        t
    }
}

/// What was pushed: the index and everything under it.
struct Pushed {
    index: String,
    children: Vec<String>,
    blobs: Vec<String>,
    referrer: String,
}

/// Push a two-platform index (amd64, arm64; a layer shared by both) and an SBOM referrer
/// of the index to `repo`, the tag last (so an on-push rule sees it all).
async fn push_image(reg: &Reg, repo: &str, tag: &str, layer_size: usize, seed: u8) -> Pushed {
    let shared: Vec<u8> = (0..layer_size).map(|i| (i % 251) as u8 ^ seed).collect();
    let mut children = Vec::new();
    let mut blobs = vec![sha256_digest(&shared)];
    let mut descs = Vec::new();
    reg.push_blob(repo, &shared).await;
    for arch in ["amd64", "arm64"] {
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{seed}}}"#
        );
        let own = format!("{arch} layer {seed} {tag}").into_bytes();
        reg.push_blob(repo, config.as_bytes()).await;
        reg.push_blob(repo, &own).await;
        blobs.push(sha256_digest(config.as_bytes()));
        blobs.push(sha256_digest(&own));
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(config.as_bytes()), "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_digest(&shared), "size": shared.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_digest(&own), "size": own.len()},
            ],
        }))
        .unwrap();
        let d = sha256_digest(&m);
        reg.put_manifest(repo, &d, OCI_MANIFEST, &m).await;
        descs.push(json!({"mediaType": OCI_MANIFEST, "digest": d, "size": m.len(), "platform": {"architecture": arch, "os": "linux"}}));
        children.push(d);
    }
    let index = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs}),
    )
    .unwrap();
    let index_digest = sha256_digest(&index);
    reg.put_manifest(repo, &index_digest, OCI_INDEX, &index)
        .await;
    // The SBOM: an artifact manifest whose subject is the index.
    let empty = b"{}";
    reg.push_blob(repo, empty).await;
    let sbom = format!("{{\"sbom\":\"{repo}:{tag}\"}}").into_bytes();
    reg.push_blob(repo, &sbom).await;
    blobs.push(sha256_digest(&sbom));
    let referrer = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(empty), "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": sha256_digest(&sbom), "size": sbom.len()}],
        "subject": {"mediaType": OCI_INDEX, "digest": index_digest, "size": index.len()},
    }))
    .unwrap();
    let referrer_digest = sha256_digest(&referrer);
    reg.put_manifest(repo, &referrer_digest, OCI_MANIFEST, &referrer)
        .await;
    // Without the referrers API (Distribution) a client lists the referrer under the
    // subject's fallback tag itself, as the OCI distribution spec says.
    if !reg.has_referrers_api(repo, &index_digest).await {
        let fallback = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": referrer_digest, "size": referrer.len(), "artifactType": "application/spdx+json"}
        ]}))
        .unwrap();
        reg.put_manifest(repo, &index_digest.replace(':', "-"), OCI_INDEX, &fallback)
            .await;
    }
    reg.put_manifest(repo, tag, OCI_INDEX, &index).await;
    Pushed {
        index: index_digest,
        children,
        blobs,
        referrer: referrer_digest,
    }
}

/// `dst` holds everything of `img` under `repo:tag`, byte for byte (digests checked).
async fn assert_replicated(
    src: &Reg,
    src_repo: &str,
    dst: &Reg,
    repo: &str,
    tag: &str,
    img: &Pushed,
) {
    let (status, digest, body) = dst.manifest(repo, tag).await;
    assert_eq!(status, 200, "{repo}:{tag} at the destination");
    assert_eq!(sha256_digest(&body), img.index, "index bytes");
    assert!(digest.is_empty() || digest == img.index);
    for d in img.children.iter().chain([&img.referrer]) {
        let (s1, _, theirs) = dst.manifest(repo, d).await;
        let (s2, _, ours) = src.manifest(src_repo, d).await;
        assert_eq!((s1, s2), (200, 200), "manifest {d}");
        assert_eq!(sha256_digest(&theirs), *d);
        assert_eq!(theirs, ours, "manifest {d} byte for byte");
    }
    for b in &img.blobs {
        assert!(dst.has_blob(repo, b).await, "blob {b} in {repo}");
    }
}

async fn api(b: &Berth, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut rq = b.client().request(method, format!("{}{path}", b.url()));
    if let Some(v) = body {
        rq = rq.json(&v);
    }
    let r = rq.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Register a remote registry in `b` through `berth registry add` on its data directory.
fn register(b: &Berth, name: &str, host: &str, user: &str, password: &str, ca_pem: &[u8]) {
    let ca = b.data.path().join(format!("{name}-ca.pem"));
    std::fs::write(&ca, ca_pem).unwrap();
    let url = format!("https://{host}");
    registry_add(b, name, &url, user, password, &["--ca-file", &p(&ca)]);
}

/// `berth registry add NAME URL --username USER --password-stdin EXTRA… --data DIR`.
fn registry_add(b: &Berth, name: &str, url: &str, user: &str, password: &str, extra: &[&str]) {
    let mut cmd = Command::new(berth_bin());
    cmd.args([
        "registry",
        "add",
        name,
        url,
        "--username",
        user,
        "--password-stdin",
    ])
    .args(extra)
    .args(["--data", &p(b.data.path())]);
    let out = run_timeout_stdin(&mut cmd, password.as_bytes(), Duration::from_secs(60));
    assert!(out.status.success(), "berth registry add: {}", text(&out));
}

/// A rule with no other setting than its direction, registry and repository filter.
fn rule(b: &Berth, name: &str, direction: &str, registry: &str, repositories: &str) {
    rule_add(
        b,
        &[
            name,
            "--direction",
            direction,
            "--registry",
            registry,
            "--repositories",
            repositories,
        ],
    );
}

fn rule_add(b: &Berth, args: &[&str]) {
    let mut cmd = Command::new(berth_bin());
    cmd.args(["replication", "rule", "add"])
        .args(args)
        .args(["--data", &p(b.data.path())]);
    let out = run_cmd(&mut cmd, Duration::from_secs(60));
    assert!(out.success(), "berth replication rule add: {}", out.stderr);
}

/// Wait until `rule` has an execution matching `done`; returns it with its tasks.
async fn wait_execution(b: &Berth, rule: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    wait_detail(b, rule, secs, done, |_| true, "matching").await
}

/// Wait until an execution of `rule` with a task for `reference` has finished; returns
/// it with its tasks.
async fn wait_task_execution(b: &Berth, rule: &str, reference: &str, secs: u64) -> Value {
    let copies = |detail: &Value| {
        detail["task_list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["reference"] == reference)
    };
    wait_detail(b, rule, secs, finished, copies, reference).await
}

/// Poll `rule`'s executions until one listed as `listed` has a detail (with its tasks)
/// that is `wanted`; returns that detail. `what` names it in the timeout message.
async fn wait_detail(
    b: &Berth,
    rule: &str,
    secs: u64,
    listed: impl Fn(&Value) -> bool,
    wanted: impl Fn(&Value) -> bool,
    what: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (s, list) = api(
            b,
            reqwest::Method::GET,
            &format!("/api/v1/replication/executions?rule={rule}"),
            None,
        )
        .await;
        assert_eq!(s, 200, "{list}");
        for e in list.as_array().unwrap().iter().filter(|e| listed(e)) {
            let (_, detail) = api(
                b,
                reqwest::Method::GET,
                &format!("/api/v1/replication/executions/{}", e["id"]),
                None,
            )
            .await;
            if wanted(&detail) {
                return detail;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no execution of {rule} ({what}) within {secs} s: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every execution of `rule` so far finished and succeeded (waits for running ones).
async fn assert_all_succeeded(b: &Berth, rule: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = api(
            b,
            reqwest::Method::GET,
            &format!("/api/v1/replication/executions?rule={rule}"),
            None,
        )
        .await;
        let list = list.as_array().unwrap().clone();
        if list.iter().all(finished) {
            for e in &list {
                assert_eq!(e["status"], "succeeded", "{rule}: {e}");
            }
            return;
        }
        assert!(Instant::now() < deadline, "{rule} still running: {list:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Start a manual run of `rule` in `b`: the new execution's id.
async fn start_run(b: &Berth, rule: &str) -> i64 {
    let (s, v) = api(
        b,
        reqwest::Method::POST,
        &format!("/api/v1/replication/rules/{rule}/run"),
        None,
    )
    .await;
    assert_eq!(s, 202, "run {rule}: {v}");
    v["id"].as_i64().unwrap()
}

/// Run `rule` by hand and wait up to `secs` for that execution to finish: its detail.
async fn run_rule(b: &Berth, rule: &str, secs: u64) -> Value {
    let id = start_run(b, rule).await;
    wait_execution(b, rule, secs, |e| e["id"] == id && finished(e)).await
}

fn finished(e: &Value) -> bool {
    !matches!(e["status"].as_str(), Some("running" | "pending"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rule_on_push_replicates_an_index_with_its_referrer_to_distribution_and_berth() {
    let d = dist();
    let a = Berth::start();
    let b = Berth::start();
    register(&a, "dist", &d.host, USER, PASSWORD, &d.ca_pem);
    register(
        &a,
        "berth-b",
        &b.host(),
        common::ADMIN_USER,
        common::ADMIN_PASSWORD,
        &b.ca_pem(),
    );
    rule_add(
        &a,
        &[
            "to-dist",
            "--direction",
            "push",
            "--registry",
            "dist",
            "--repositories",
            "library/app*",
            "--trigger",
            "on-push",
        ],
    );
    // The second Berth gets the images under another project.
    let (s, v) = api(&a, reqwest::Method::POST, "/api/v1/replication/rules", Some(json!({
        "name": "to-b", "direction": "push", "registry": "berth-b", "repositories": "library/app*",
        "mapping": "replace:library=mirror", "trigger": "on-push"
    }))).await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = api(
        &b,
        reqwest::Method::POST,
        "/api/v1/projects",
        Some(json!({"name": "mirror"})),
    )
    .await;
    assert_eq!(s, 201);

    let ra = Reg::berth(&a);
    let img = push_image(&ra, "library/app", "v1", 300_000, 1).await;

    for rule in ["to-dist", "to-b"] {
        // The execution that copied tag v1 (the referrer, pushed by digest just before the
        // tag, is gathered into the same execution and not copied on its own).
        let e = wait_task_execution(&a, rule, "v1", 120).await;
        assert_eq!(e["status"], "succeeded", "{rule}: {e}");
        assert_eq!(e["trigger"], "on-push");
        let tasks = e["task_list"].as_array().unwrap();
        assert_eq!(tasks.len(), 1, "{e}");
        assert_eq!(tasks[0]["status"], "succeeded");
        assert_eq!(tasks[0]["digest"], img.index.as_str());
        assert!(tasks[0]["bytes"].as_u64().unwrap() > 300_000, "{e}");
        // No execution of the rule failed (before: one per PUT, racing each other).
        assert_all_succeeded(&a, rule).await;
    }
    let rd = Reg::dist();
    assert_replicated(&ra, "library/app", &rd, "library/app", "v1", &img).await;
    // Distribution has no referrers API: the referrer is listed under the fallback tag.
    let (s, _, fb) = rd
        .manifest("library/app", &img.index.replace(':', "-"))
        .await;
    assert_eq!(s, 200, "fallback tag");
    let fb: Value = serde_json::from_slice(&fb).unwrap();
    assert_eq!(fb["manifests"][0]["digest"], img.referrer.as_str());

    let rb = Reg::berth(&b);
    assert_replicated(&ra, "library/app", &rb, "mirror/app", "v1", &img).await;
    let r = rb
        .http
        .get(format!("{}/v2/mirror/app/referrers/{}", rb.base, img.index))
        .header("authorization", &rb.auth)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["manifests"][0]["digest"], img.referrer.as_str());
    assert_eq!(
        list["manifests"][0]["artifactType"],
        "application/spdx+json"
    );

    // A signature pushed later (by digest, its subject the index) follows on its own.
    let sig_blob = b"signature".to_vec();
    ra.push_blob("library/app", &sig_blob).await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256_digest(&sig_blob), "size": sig_blob.len()}],
        "subject": {"mediaType": OCI_INDEX, "digest": img.index, "size": ra.manifest("library/app", "v1").await.2.len()},
    }))
    .unwrap();
    let sig_digest = sha256_digest(&sig);
    ra.put_manifest("library/app", &sig_digest, OCI_MANIFEST, &sig)
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rd.manifest("library/app", &sig_digest).await.0 != 200
        || rb.manifest("mirror/app", &sig_digest).await.0 != 200
    {
        assert!(
            Instant::now() < deadline,
            "the later signature was not replicated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, fb) = rd
            .manifest("library/app", &img.index.replace(':', "-"))
            .await;
        let fb: Value = serde_json::from_slice(&fb).unwrap();
        if fb["manifests"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fallback index without the signature: {fb}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A manual run finds nothing to do: every artifact is skipped.
    let e = run_rule(&a, "to-dist", 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["skipped"], 1, "{e}");
    assert_eq!(e["bytes"], 0, "{e}");
    // A push that matches no rule starts nothing.
    push_image(&ra, "library/other", "v1", 10, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rd.tags("library/other").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_pull_rule_brings_the_filtered_tags_from_distribution() {
    let d = dist();
    let rd = Reg::dist();
    let mut want = Vec::new();
    for (i, tag) in ["v1.0", "v1.1", "dev"].iter().enumerate() {
        want.push(push_image(&rd, "library/tool", tag, 1000, 10 + i as u8).await);
    }
    push_image(&rd, "team/tool", "v1.0", 100, 20).await;

    let a = Berth::start();
    register(&a, "dist", &d.host, USER, PASSWORD, &d.ca_pem);
    // Every 2 seconds; into project "hub" (created by the rule).
    rule_add(
        &a,
        &[
            "from-dist",
            "--direction",
            "pull",
            "--registry",
            "dist",
            "--repositories",
            "library/*",
            "--tags",
            "v1.*",
            "--mapping",
            "replace:library=hub",
            "--trigger",
            "schedule:*/2 * * * * *",
            "--replicate-deletions",
        ],
    );
    let e = wait_execution(&a, "from-dist", 60, |e| {
        finished(e) && e["trigger"] == "schedule"
    })
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let ra = Reg::berth(&a);
    assert_eq!(ra.tags("hub/tool").await, ["v1.0", "v1.1"]);
    assert!(ra.tags("team/tool").await.is_empty());
    assert!(ra.tags("hub/team").await.is_empty());
    for (img, tag) in want.iter().zip(["v1.0", "v1.1"]) {
        assert_replicated(&rd, "library/tool", &ra, "hub/tool", tag, img).await;
    }
    // A tag deleted at the source is deleted here by a later scheduled run.
    rd.delete_manifest("library/tool", &want[1].index).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ra.tags("hub/tool").await != ["v1.0"] {
        assert!(Instant::now() < deadline, "v1.1 was not deleted here");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The CLI shows the executions and removes the rule.
    let out = run_cmd(
        Command::new(berth_bin()).args([
            "replication",
            "executions",
            "--rule",
            "from-dist",
            "--data",
            &p(a.data.path()),
        ]),
        Duration::from_secs(60),
    );
    assert!(
        out.success() && out.stdout.contains("schedule") && out.stdout.contains("succeeded"),
        "{}",
        out.stdout
    );
    let out = run_cmd(
        Command::new(berth_bin()).args([
            "replication",
            "rule",
            "rm",
            "from-dist",
            "--data",
            &p(a.data.path()),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.success(), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_are_replicated_when_the_rule_says_so() {
    let d = dist();
    let a = Berth::start();
    register(&a, "dist", &d.host, USER, PASSWORD, &d.ca_pem);
    rule_add(
        &a,
        &[
            "mirror-del",
            "--direction",
            "push",
            "--registry",
            "dist",
            "--repositories",
            "library/del",
            "--trigger",
            "on-push",
            "--replicate-deletions",
        ],
    );
    let ra = Reg::berth(&a);
    let rd = Reg::dist();
    push_image(&ra, "library/del", "v1", 100, 30).await;
    push_image(&ra, "library/del", "v2", 100, 31).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rd.tags("library/del").await != ["v1", "v2"] {
        assert!(Instant::now() < deadline, "not replicated");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A webhook of the local project subscribed to replication: it hears the end of the
    // deletion's execution in Harbor's format.
    let hook = common::receiver::Receiver::start(common::receiver::Mode::FailFirst(0)).await;
    let (s, v) = api(
        &a,
        reqwest::Method::POST,
        "/api/v1/projects/library/webhooks",
        Some(json!({
            "name": "repl", "url": hook.url(), "events": ["push", "replication"],
            "format": "harbor", "ca_pem": hook.ca_pem,
        })),
    )
    .await;
    assert_eq!(s, 201, "add webhook: {v}");
    ra.delete_manifest("library/del", "v1").await;
    let e = wait_execution(&a, "mirror-del", 60, |e| {
        finished(e) && e["trigger"] == "deletion"
    })
    .await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["task_list"][0]["operation"], "delete");
    assert_eq!(rd.manifest("library/del", "v1").await.0, 404);
    assert_eq!(rd.manifest("library/del", "v2").await.0, 200);
    let event = hook
        .wait_json(Duration::from_secs(30), |v| {
            v["type"] == "REPLICATION" && v["event_data"]["replication"]["execution_id"] == e["id"]
        })
        .await;
    assert!(event["occur_at"].as_i64().unwrap() > 0, "{event}");
    let r = &event["event_data"]["replication"];
    assert_eq!(r["policy_name"], "mirror-del", "{event}");
    assert_eq!(r["job_status"], "Success", "{event}");
    assert_eq!(r["trigger_type"], "EVENT_BASED", "{event}");
    assert_eq!(r["src_resource"]["registry_name"], "local", "{event}");
    assert_eq!(r["dest_resource"]["registry_name"], "dist", "{event}");
    assert_eq!(r["failed_artifact"], json!([]), "{event}");
    assert_eq!(
        r["successful_artifact"][0]["name_tag"], "library/del:v1",
        "{event}"
    );
    assert_eq!(r["successful_artifact"][0]["status"], "Success", "{event}");
}

/// A TCP proxy that cuts, once, the first connection to carry more than `cut_after` bytes
/// from the client (in the middle of a blob upload), and waits `delay` per 16 KiB read.
/// Returns its port, the cuts made and the bytes it forwarded from clients to `target`.
fn cutting_proxy(
    target: String,
    cut_after: u64,
    delay: Duration,
) -> (u16, Arc<AtomicU32>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cuts = Arc::new(AtomicU32::new(0));
    let c = cuts.clone();
    let up = Arc::new(AtomicU64::new(0));
    let forwarded = up.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(&target) else {
                return;
            };
            let sent = Arc::new(AtomicU64::new(0));
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_in, mut c_out) = (server, client);
            let cuts = c.clone();
            let forwarded = forwarded.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                while let Ok(k) = c_in.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    std::thread::sleep(delay);
                    if sent.fetch_add(k as u64, Ordering::Relaxed) + k as u64 > cut_after
                        && cuts
                            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                    {
                        break;
                    }
                    if s_out.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    forwarded.fetch_add(k as u64, Ordering::Relaxed);
                }
                let _ = c_in.shutdown(std::net::Shutdown::Both);
                let _ = s_out.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, cuts, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_blob_is_resumed_and_the_execution_succeeds() {
    let d = dist();
    let (port, cuts, _) = cutting_proxy(d.host.clone(), 3 << 20, Duration::ZERO);
    let a = Berth::start();
    register(
        &a,
        "dist-cut",
        &format!("127.0.0.1:{port}"),
        USER,
        PASSWORD,
        &d.ca_pem,
    );
    rule(&a, "cut", "push", "dist-cut", "library/big");
    let ra = Reg::berth(&a);
    let img = push_image(&ra, "library/big", "v1", 8 << 20, 40).await;
    let e = run_rule(&a, "cut", 120).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(
        cuts.load(Ordering::Relaxed),
        1,
        "the proxy cut one connection"
    );
    assert_replicated(&ra, "library/big", &Reg::dist(), "library/big", "v1", &img).await;
}

/// The same cut on the way to a second Berth, which keeps the chunks it acknowledged: the
/// blob continues from there instead of from its first byte (bytes counted through the
/// proxy). Distribution cannot show this: it cancels an upload session cut mid-chunk, so
/// to it the upload starts again (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_upload_cut_midway_continues_from_the_acknowledged_offset() {
    let b = Berth::start();
    let (port, cuts, up) = cutting_proxy(b.host(), 5 << 20, Duration::ZERO);
    let a = Berth::start();
    register(
        &a,
        "b-cut",
        &format!("127.0.0.1:{port}"),
        common::ADMIN_USER,
        common::ADMIN_PASSWORD,
        &b.ca_pem(),
    );
    rule(&a, "cut-b", "push", "b-cut", "library/big");
    let ra = Reg::berth(&a);
    let img = push_image(&ra, "library/big", "v1", 8 << 20, 41).await;
    let e = run_rule(&a, "cut-b", 120).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(
        cuts.load(Ordering::Relaxed),
        1,
        "the proxy cut one connection"
    );
    assert_replicated(
        &ra,
        "library/big",
        &Reg::berth(&b),
        "library/big",
        "v1",
        &img,
    )
    .await;
    // The 8 MiB layer crossed once, plus at most the 2 MiB chunk the cut interrupted (and
    // TLS, HTTP and the small blobs); starting over would have sent 5 MiB more.
    let sent = up.load(Ordering::Relaxed);
    assert!(
        (8 << 20..(10 << 20) + (512 << 10)).contains(&sent),
        "{sent} bytes went to the destination for an 8 MiB layer cut after 5 MiB"
    );
}

/// The CLI on a data directory with no server running: a run is queued, `stop` ends it
/// before any server picks it up, a registry in use cannot be removed, bad rules are refused
/// with the reason.
#[test]
fn cli_queues_a_run_and_stops_it_and_checks_rules() {
    let data = tempfile::tempdir().unwrap();
    let d = p(data.path());
    let berth = |args: &[&str]| {
        run_cmd(
            Command::new(berth_bin()).args(args).args(["--data", &d]),
            Duration::from_secs(60),
        )
    };
    let out = berth(&["registry", "add", "far", "https://127.0.0.1:9"]);
    assert!(out.success(), "{}", out.stderr);
    let out = berth(&[
        "replication",
        "rule",
        "add",
        "bad",
        "--direction",
        "pull",
        "--registry",
        "far",
        "--trigger",
        "on-push",
    ]);
    assert!(
        !out.success() && out.stderr.contains("on-push is for push rules"),
        "{}",
        out.stderr
    );
    let out = berth(&[
        "replication",
        "rule",
        "add",
        "bad",
        "--direction",
        "push",
        "--registry",
        "far",
        "--trigger",
        "schedule:not cron",
    ]);
    assert!(
        !out.success() && out.stderr.contains("cron expression"),
        "{}",
        out.stderr
    );
    let out = berth(&[
        "replication",
        "rule",
        "add",
        "r",
        "--direction",
        "push",
        "--registry",
        "nowhere",
    ]);
    assert!(
        !out.success() && out.stderr.contains("nowhere"),
        "{}",
        out.stderr
    );
    let out = berth(&[
        "replication",
        "rule",
        "add",
        "r",
        "--direction",
        "push",
        "--registry",
        "far",
        "--mapping",
        "flatten:1",
    ]);
    assert!(out.success(), "{}", out.stderr);
    let out = berth(&["replication", "rule", "list"]);
    assert!(
        out.stdout.contains("flatten:1") && out.stdout.contains("far"),
        "{}",
        out.stdout
    );

    let out = berth(&["replication", "rule", "run", "r", "--output", "json"]);
    assert!(out.success(), "{}", out.stderr);
    let e: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(e["status"], "pending");
    let id = e["id"].as_i64().unwrap().to_string();
    let out = berth(&["replication", "stop", &id, "--output", "json"]);
    assert!(out.success(), "{}", out.stderr);
    let out = berth(&["replication", "executions", "--id", &id, "--output", "json"]);
    let e: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(e["status"], "stopped", "{e}");
    let out = berth(&["replication", "stop", &id]);
    assert!(
        !out.success() && out.stderr.contains("not running"),
        "{}",
        out.stderr
    );

    let out = berth(&["registry", "rm", "far"]);
    assert!(!out.success(), "a registry a rule uses cannot be removed");
    let out = berth(&["replication", "rule", "rm", "r"]);
    assert!(out.success(), "{}", out.stderr);
    let out = berth(&["registry", "rm", "far"]);
    assert!(out.success(), "{}", out.stderr);
}

/// A running execution stops on request (through a slow link, so it is still running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_execution_can_be_stopped() {
    let d = dist();
    let (port, _, _) = cutting_proxy(d.host.clone(), u64::MAX, Duration::from_millis(20));
    let a = Berth::start();
    register(
        &a,
        "dist-slow",
        &format!("127.0.0.1:{port}"),
        USER,
        PASSWORD,
        &d.ca_pem,
    );
    rule(&a, "slow", "push", "dist-slow", "library/slow");
    let ra = Reg::berth(&a);
    push_image(&ra, "library/slow", "v1", 8 << 20, 50).await;
    let id = start_run(&a, "slow").await;
    wait_execution(&a, "slow", 30, |e| {
        e["id"] == id && e["status"] == "running"
    })
    .await;
    let (s, v) = api(
        &a,
        reqwest::Method::POST,
        &format!("/api/v1/replication/executions/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["stop_requested"], true);
    let e = wait_execution(&a, "slow", 30, |e| e["id"] == id && finished(e)).await;
    assert_eq!(e["status"], "stopped", "{e}");
    assert_eq!(e["task_list"][0]["status"], "stopped", "{e}");
    // The console's Replication page lists the rule and the stopped execution, and the
    // execution page its per-artifact task (signed in as the administrator).
    let certs = reqwest::Certificate::from_pem_bundle(&a.ca_pem()).unwrap();
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only(certs)
        .build()
        .unwrap();
    let form = c
        .get(format!("{}/login", a.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let marker = "name=\"csrf\" value=\"";
    let at = form.find(marker).expect("csrf field") + marker.len();
    let csrf = form[at..].split('"').next().unwrap().to_string();
    let r = c
        .post(format!("{}/login", a.url()))
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", common::ADMIN_USER),
            ("password", common::ADMIN_PASSWORD),
            ("next", "/admin/replication"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let html = c
        .get(format!("{}/admin/replication", a.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("data-rule=\"slow\""), "{html}");
    assert!(
        html.contains(&format!("data-execution=\"{id}\"")) && html.contains("stopped"),
        "{html}"
    );
    let html = c
        .get(format!("{}/admin/replication/executions/{id}", a.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("library/slow") && html.contains("id=\"replication-tasks\""),
        "{html}"
    );
}

/// Push a one-platform image with config labels and manifest annotations; its digest.
async fn push_labelled(
    reg: &Reg,
    repo: &str,
    tag: &str,
    labels: Value,
    annotations: Value,
) -> String {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    reg.push_blob(repo, &config).await;
    let layer = format!("layer of {repo}:{tag}").into_bytes();
    reg.push_blob(repo, &layer).await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_digest(&layer), "size": layer.len()}],
        "annotations": annotations,
    }))
    .unwrap();
    reg.put_manifest(repo, tag, OCI_MANIFEST, &m).await;
    sha256_digest(&m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labels_filter_replicates_only_the_labelled_tags() {
    let d = dist();
    let a = Berth::start();
    register(&a, "dist", &d.host, USER, PASSWORD, &d.ca_pem);
    rule_add(
        &a,
        &[
            "labelled",
            "--direction",
            "push",
            "--registry",
            "dist",
            "--repositories",
            "library/lab",
            "--labels",
            "tier=prod, team",
        ],
    );
    let ra = Reg::berth(&a);
    // In the config's labels; in the manifest's annotations; half of it; none.
    push_labelled(
        &ra,
        "library/lab",
        "v1",
        json!({"tier": "prod", "team": "a"}),
        json!({}),
    )
    .await;
    push_labelled(
        &ra,
        "library/lab",
        "v2",
        json!({"team": "b"}),
        json!({"tier": "prod"}),
    )
    .await;
    push_labelled(
        &ra,
        "library/lab",
        "v3",
        json!({"tier": "dev", "team": "a"}),
        json!({}),
    )
    .await;
    push_labelled(&ra, "library/lab", "v4", json!({}), json!({})).await;
    // An index matches when one of its platforms does (none here).
    push_image(&ra, "library/lab", "v5", 10, 60).await;
    let e = run_rule(&a, "labelled", 60).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(Reg::dist().tags("library/lab").await, ["v1", "v2"]);
    // The API and the CLI show the filter.
    let (_, rule) = api(
        &a,
        reqwest::Method::GET,
        "/api/v1/replication/rules/labelled",
        None,
    )
    .await;
    assert_eq!(rule["labels"], "tier=prod, team", "{rule}");
    let out = run_cmd(
        Command::new(berth_bin()).args([
            "replication",
            "rule",
            "list",
            "--data",
            &p(a.data.path()),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.stdout.contains("tier=prod, team"), "{}", out.stdout);
}

/// A plain-HTTP front for Distribution that refuses `/v2/_catalog` (404 UNSUPPORTED, as
/// Docker Hub and many registries do) and forwards every other request over TLS, one
/// request per connection. Returns its port; runs until the test's runtime ends.
async fn catalog_refusing_front(target: String, ca_pem: Vec<u8>) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (tls, target) = (tls.clone(), target.clone());
            tokio::spawn(async move {
                // The request head (and whatever of the body came with it).
                let mut head = Vec::new();
                let mut buf = [0u8; 8192];
                let end = loop {
                    let Ok(n) = client.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 || head.len() > 64 << 10 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let text = String::from_utf8_lossy(&head[..end]).to_string();
                let path = text.split(' ').nth(1).unwrap_or("");
                if path.starts_with("/v2/_catalog") {
                    let body = r#"{"errors":[{"code":"UNSUPPORTED","message":"the catalog is not available"}]}"#;
                    let resp = format!(
                        "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = client.write_all(resp.as_bytes()).await;
                    return;
                }
                let mut lines: Vec<&str> = text.trim_end().split("\r\n").collect();
                lines.retain(|l| !l.to_ascii_lowercase().starts_with("connection:"));
                let mut out = lines.join("\r\n");
                out.push_str("\r\nConnection: close\r\nX-Forwarded-Proto: http\r\n\r\n");
                let Ok(tcp) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let name = rustls::pki_types::ServerName::IpAddress(
                    std::net::IpAddr::from([127, 0, 0, 1]).into(),
                );
                let Ok(mut server) = tls.connect(name, tcp).await else {
                    return;
                };
                if server.write_all(out.as_bytes()).await.is_err()
                    || server.write_all(&head[end..]).await.is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_rule_naming_its_repositories_needs_no_catalog() {
    let d = dist();
    let rd = Reg::dist();
    let one = push_image(&rd, "named/one", "v1", 1000, 70).await;
    let two = push_image(&rd, "named/two", "v1", 1000, 71).await;
    push_image(&rd, "named/three", "v1", 100, 72).await;
    let port = catalog_refusing_front(d.host.clone(), d.ca_pem.clone()).await;
    let a = Berth::start();
    let url = format!("http://127.0.0.1:{port}");
    registry_add(
        &a,
        "hub-like",
        &url,
        USER,
        PASSWORD,
        &["--insecure", "true"],
    );
    // Named repositories (a list, and a brace group): no catalog needed.
    rule(&a, "named", "pull", "hub-like", "named/one, named/{two}");
    // A pattern needs the catalog, which this registry refuses.
    rule(&a, "pattern", "pull", "hub-like", "named/*");
    for rule in ["named", "pattern"] {
        start_run(&a, rule).await;
    }
    let e = wait_execution(&a, "named", 60, finished).await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let ra = Reg::berth(&a);
    assert_replicated(&rd, "named/one", &ra, "named/one", "v1", &one).await;
    assert_replicated(&rd, "named/two", &ra, "named/two", "v1", &two).await;
    assert!(ra.tags("named/three").await.is_empty());
    let e = wait_execution(&a, "pattern", 60, finished).await;
    assert_eq!(e["status"], "failed", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("does not list its repositories") && msg.contains("name the repositories"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_deleted_at_the_source_loses_its_tags_at_the_destination() {
    let d = dist();
    let a = Berth::start();
    register(&a, "dist", &d.host, USER, PASSWORD, &d.ca_pem);
    rule_add(
        &a,
        &[
            "gone",
            "--direction",
            "push",
            "--registry",
            "dist",
            "--repositories",
            "doomed/*",
            "--replicate-deletions",
        ],
    );
    let ra = Reg::berth(&a);
    let rd = Reg::dist();
    let (s, _) = api(
        &a,
        reqwest::Method::POST,
        "/api/v1/projects",
        Some(json!({"name": "doomed"})),
    )
    .await;
    assert_eq!(s, 201);
    push_labelled(&ra, "doomed/app", "v1", json!({}), json!({})).await;
    push_labelled(&ra, "doomed/app", "v2", json!({}), json!({})).await;
    let run = || run_rule(&a, "gone", 60);
    let e = run().await;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(rd.tags("doomed/app").await, ["v1", "v2"]);
    // The whole project goes here (no tag DELETE reaches the rule): the next run
    // deletes the tags the earlier run copied.
    let (s, v) = api(
        &a,
        reqwest::Method::POST,
        "/api/v1/projects/doomed/purge",
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let e = run().await;
    assert_eq!(e["status"], "succeeded", "{e}");
    let ops: Vec<&str> = e["task_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["delete", "delete"], "{e}");
    assert!(rd.tags("doomed/app").await.is_empty());
}
