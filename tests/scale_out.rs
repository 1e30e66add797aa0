//! Scale-out on PostgreSQL and S3 (issue 9, items 2–5): several `berth serve` replicas
//! sharing one PostgreSQL database and one bucket, and what happens when the database goes
//! away.
//!
//! PostgreSQL is a private cluster made by `initdb` in a temporary directory, on an
//! ephemeral loopback port (`berth_storage::pg_fixture`), started once per test binary;
//! each test gets a fresh database. The S3 server is Garage (`common::garage`), one per
//! test binary; each test uses its own key prefix in the bucket. The fault test owns a
//! cluster of its own, because it stops and restarts it.
//!
//! The replicas have data directories of their own (only their TLS material is there):
//! everything they share is in PostgreSQL and the bucket.

mod common;
mod fixtures;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_storage::pg_fixture::PgCluster;
use common::garage::{self, Garage};
use common::{ADMIN_PASSWORD, ADMIN_USER, ChildGuard, basic_auth, need, run_cmd};
use sha2::Digest as _;

/// One `berth serve` replica on 127.0.0.1:0.
struct Replica {
    /// Kills the process (by PID) when the replica is dropped.
    _guard: ChildGuard,
    addr: SocketAddr,
    data: PathBuf,
}

impl Replica {
    fn start(data: &Path, extra: &[&str]) -> Replica {
        Replica::start_env(data, extra, &[])
    }

    fn start_env(data: &Path, extra: &[&str], env: &[(String, String)]) -> Replica {
        let mut cmd = Command::new(common::berth_bin());
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "berth=info,warn")
            .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("BERTH_AUTO_CREATE_PROJECTS", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = ChildGuard::spawn("berth serve", &mut cmd);
        let url = common::listening_url(&mut guard.child)
            .expect("berth serve did not report its address within 60 s");
        Replica {
            _guard: guard,
            addr: url
                .strip_prefix("https://")
                .expect("https")
                .parse()
                .expect("address"),
            data: data.to_path_buf(),
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn client(&self) -> reqwest::Client {
        let ca = std::fs::read(self.data.join("tls").join("ca.crt")).expect("ca.crt");
        reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("ca"))
            .build()
            .expect("client")
    }

    fn cert_dir(&self) -> PathBuf {
        let dir = self.data.join(format!("client-certs-{}", self.addr.port()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.data.join("tls").join("ca.crt"), dir.join("ca.crt")).unwrap();
        dir
    }
}

/// The environment that points a replica at this binary's Garage bucket, under `prefix`.
async fn s3_env(prefix: &str) -> Vec<(String, String)> {
    let garage = Garage::shared();
    // Garage creates its default key and bucket just after it listens.
    let config = berth_storage::s3::S3Config {
        endpoint: Some(garage.endpoint()),
        region: garage::REGION.to_owned(),
        bucket: garage::BUCKET.to_owned(),
        access_key_id: Some(garage::ACCESS_KEY.to_owned()),
        secret_access_key: Some(garage::SECRET_KEY.to_owned()),
        ..Default::default()
    };
    let store = berth_storage::s3::S3BlobStore::connect(&config).expect("s3 config");
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.check().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "Garage's bucket did not answer:\n{}",
            garage.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    [
        ("BERTH_STORAGE_BACKEND", "s3".to_owned()),
        ("BERTH_S3_ENDPOINT", garage.endpoint()),
        ("BERTH_S3_REGION", garage::REGION.to_owned()),
        ("BERTH_S3_BUCKET", garage::BUCKET.to_owned()),
        ("BERTH_S3_PREFIX", format!("{prefix}/")),
        ("BERTH_S3_ACCESS_KEY_ID", garage::ACCESS_KEY.to_owned()),
        ("BERTH_S3_SECRET_ACCESS_KEY", garage::SECRET_KEY.to_owned()),
        ("BERTH_S3_ALLOW_HTTP", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A chunk PATCH through replica `r`; returns the next `Location`.
async fn patch_chunk(r: &Replica, location: &str, offset: usize, chunk: &[u8]) -> String {
    let resp = r
        .client()
        .patch(absolute(r, location))
        .header("Authorization", admin())
        .header("Content-Type", "application/octet-stream")
        .header(
            "Content-Range",
            format!("{offset}-{}", offset + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    assert_eq!(
        status,
        202,
        "PATCH at {offset} through {}: {}",
        r.url(),
        resp.text().await.unwrap()
    );
    location.expect("location")
}

/// An upload `Location` (absolute or a path) made absolute on replica `r`.
fn absolute(r: &Replica, loc: &str) -> String {
    if loc.starts_with("http") {
        let path = loc.splitn(4, '/').nth(3).unwrap_or("");
        format!("{}/{path}", r.url())
    } else {
        format!("{}{loc}", r.url())
    }
}

fn admin() -> String {
    basic_auth(ADMIN_USER, ADMIN_PASSWORD)
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn skopeo(args: &[&str]) -> common::CmdOutput {
    need("skopeo");
    let auth_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy")
        .args(args)
        .env("REGISTRY_AUTH_FILE", auth_dir.path().join("auth.json"))
        .env("DOCKER_CONFIG", auth_dir.path());
    run_cmd(&mut cmd, Duration::from_secs(180))
}

/// Two replicas on one database and one bucket: skopeo pushes through one and containerd
/// pulls through the other; a token, a revocation, failed-login counts and a chunked upload
/// (alternating PATCHes) all cross between them; one replica is SIGKILLed mid-upload and
/// the push completes through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_postgres_and_one_bucket() {
    let url = PgCluster::shared().database().await;
    let env = s3_env("two-replicas").await;
    let (data_a, data_b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let a = Replica::start_env(data_a.path(), &["--database-url", &url], &env);
    let b = Replica::start_env(data_b.path(), &["--database-url", &url], &env);
    let (ca, cb) = (a.client(), b.client());

    // Both ready: the database, the bucket and the data directory's free space checked.
    for (r, c) in [(&a, &ca), (&b, &cb)] {
        let resp = c.get(format!("{}/readyz", r.url())).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let ready: serde_json::Value = resp.json().await.unwrap();
        for check in ["database", "bucket", "storage"] {
            assert_eq!(ready["checks"][check]["ok"], true, "{check}: {ready}");
        }
        assert!(ready["checks"]["storage"]["free_bytes"].is_u64(), "{ready}");
    }

    // skopeo pushes a multi-layer image through A and copies it back out through B.
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let creds = common::admin_creds();
    let dest = format!("docker://{}/library/scale:v1", a.host());
    skopeo(&[
        "copy",
        "--dest-creds",
        &creds,
        "--dest-cert-dir",
        a.cert_dir().to_str().unwrap(),
        &layout.oci_ref(),
        &dest,
    ])
    .ok();
    let out = tmp.path().join("out");
    let src = format!("docker://{}/library/scale:v1", b.host());
    let target = format!("oci:{}:v1", out.display());
    skopeo(&[
        "copy",
        "--src-creds",
        &creds,
        "--src-cert-dir",
        b.cert_dir().to_str().unwrap(),
        &src,
        &target,
    ])
    .ok();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(layout.manifest_digest()),
        "B serves the manifest A received"
    );
    for d in layout.layer_digests() {
        let hex = d.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(out.join("blobs/sha256").join(hex)).expect("layer pulled");
        assert_eq!(sha256(&bytes), d);
    }

    // containerd (`ctr … --hosts-dir`, B's CA in hosts.toml) pulls and unpacks through B
    // what skopeo pushed through A (public project: anonymous pull).
    let ctd = common::containerd::Containerd::start();
    let hosts = tmp.path().join("hosts.d");
    std::fs::create_dir_all(hosts.join(b.host())).unwrap();
    std::fs::write(
        hosts.join(b.host()).join("hosts.toml"),
        format!(
            "server = \"https://{h}\"\n\n[host.\"https://{h}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
            h = b.host(),
            ca = data_b.path().join("tls").join("ca.crt").display()
        ),
    )
    .unwrap();
    let image_ref = format!("{}/library/scale:v1", b.host());
    let pull = ctd
        .ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--snapshotter",
            "native",
            "--print-chainid",
            &image_ref,
        ])
        .ok();
    let chain_id = layout.images[0].chain_id();
    assert!(
        pull.stdout.contains(&chain_id),
        "ctr should report chain ID {chain_id}:\n{}",
        pull.stdout
    );
    let content = ctd.ctr(&["content", "ls", "--quiet"]).ok();
    for digest in layout.all_blob_digests() {
        assert!(
            content.stdout.contains(&digest),
            "{digest} not in containerd's content store after the pull through B"
        );
    }
    drop(ctd);

    // A tag moved through B is served by A at once (no cache in front of manifests).
    let moved = cb
        .put(format!("{}/v2/library/scale/manifests/moved", b.url()))
        .header("Authorization", admin())
        .header("Content-Type", fixtures::OCI_MANIFEST)
        .body(layout.top_bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 201, "{}", moved.text().await.unwrap());
    let got = ca
        .get(format!("{}/v2/library/scale/manifests/moved", a.url()))
        .header("Authorization", admin())
        .header("Accept", fixtures::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);

    // A token issued by A is accepted by B (one signing key, kept in the database).
    let token: serde_json::Value = ca
        .get(format!(
            "{}/service/token?service=berth&scope=repository:library/scale:pull",
            a.url()
        ))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().expect("token").to_owned();
    let tags = cb
        .get(format!("{}/v2/library/scale/tags/list", b.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.status(), 200, "B refused A's token");

    // A robot created and then revoked through A is refused by B within the documented
    // delay (the 1 s auth caches; allow 3 s).
    let robot: serde_json::Value = ca
        .post(format!("{}/api/v1/projects/library/robots", a.url()))
        .header("Authorization", admin())
        .json(&serde_json::json!({"name": "ci", "push": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = robot["secret"].as_str().expect("robot secret").to_owned();
    let as_robot = basic_auth("robot$library+ci", &secret);
    let robot_get = || async {
        cb.get(format!("{}/v2/library/scale/tags/list", b.url()))
            .header("Authorization", &as_robot)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(robot_get().await, 200, "B accepts the new robot");
    let revoke = ca
        .delete(format!("{}/api/v1/projects/library/robots/ci", a.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert!(revoke.status().is_success(), "revoke: {}", revoke.status());
    let revoked_at = Instant::now();
    loop {
        let status = robot_get().await;
        if status == 401 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(3),
            "B still accepts the revoked robot after {:?} (status {status})",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Failed logins count across replicas: 3 failures on each of A and B (6 > the 5 free
    // ones) block the account on both, though neither saw more than 3.
    let bad = basic_auth(ADMIN_USER, "wrong-password");
    for i in 0..6 {
        let (r, c) = if i % 2 == 0 { (&a, &ca) } else { (&b, &cb) };
        let status = c
            .get(format!("{}/v2/library/scale/tags/list", r.url()))
            .header("Authorization", &bad)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "failure {i}");
    }
    for (r, c) in [(&a, &ca), (&b, &cb)] {
        let status = c
            .get(format!("{}/v2/library/scale/tags/list", r.url()))
            .header("Authorization", &bad)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 429, "the account is blocked on {}", r.url());
    }
    // The block (1 s after the sixth failure) ends; the administrator works again.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A chunked upload whose PATCHes alternate A, B, A, B (the hasher state travels with
    // the session in the bucket), finished on A.
    let chunks: Vec<Vec<u8>> = (0..4u8)
        .map(|i| vec![i + 1; 150_000 + usize::from(i)])
        .collect();
    let whole = chunks.concat();
    let digest = sha256(&whole);
    let start = ca
        .post(format!("{}/v2/library/chunked/blobs/uploads/", a.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 202);
    let mut location = start.headers()["location"].to_str().unwrap().to_owned();
    let mut offset = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let r = if i % 2 == 0 { &a } else { &b };
        location = patch_chunk(r, &location, offset, chunk).await;
        offset += chunk.len();
    }
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = ca
        .put(format!("{}{sep}digest={digest}", absolute(&a, &location)))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201, "{}", done.text().await.unwrap());
    let blob = cb
        .get(format!("{}/v2/library/chunked/blobs/{digest}", b.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(sha256(&blob.bytes().await.unwrap()), digest);

    // /metrics: requests by class and status, bytes, pool use.
    let text = ca
        .get(format!("{}/metrics", a.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "berth_http_requests_total{class=\"manifest\"",
        "berth_http_bytes_in_total",
        "berth_http_bytes_out_total",
        "berth_push_duration_seconds_bucket",
        "berth_db_pool_connections{state=\"idle\"}",
        "berth_uploads_in_progress",
        "berth_refusals_total{kind=\"storage_full\"}",
        "berth_refusals_total{kind=\"connections\"}",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from /metrics:\n{text}"
        );
    }

    // A is SIGKILLed in the middle of an upload (after its first PATCH); the client
    // carries on through B, which finishes the push.
    let first = vec![0x5au8; 400_000];
    let second = vec![0xa5u8; 123_457];
    let whole = [first.clone(), second.clone()].concat();
    let digest = sha256(&whole);
    let start = ca
        .post(format!("{}/v2/library/killed/blobs/uploads/", a.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 202);
    let location = start.headers()["location"].to_str().unwrap().to_owned();
    let location = patch_chunk(&a, &location, 0, &first).await;
    let a_pid = a._guard.child.id();
    drop(a); // ChildGuard: SIGKILL by PID, then wait.
    assert!(
        !Path::new(&format!("/proc/{a_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{a_pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "replica A still runs"
    );
    let status = cb
        .get(absolute(&b, &location))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 204, "B knows the upload A started");
    assert_eq!(
        status.headers()["range"].to_str().unwrap(),
        format!("0-{}", first.len() - 1),
        "B reports the bytes A received"
    );
    let location = patch_chunk(&b, &location, first.len(), &second).await;
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = cb
        .put(format!("{}{sep}digest={digest}", absolute(&b, &location)))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201, "{}", done.text().await.unwrap());
    let manifest_layer = cb
        .get(format!("{}/v2/library/killed/blobs/{digest}", b.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(manifest_layer.status(), 200);
    assert_eq!(sha256(&manifest_layer.bytes().await.unwrap()), digest);
    drop(b);
}

/// PostgreSQL stops in the middle of a chunked push: requests fail fast with 503 naming
/// the database, `/readyz` follows it, and once it is back the same upload resumes and
/// completes without a restart of Berth; nothing half-written is visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_push_fails_fast_and_recovers() {
    let cluster = PgCluster::start();
    let url = cluster.database().await;
    let data = tempfile::tempdir().expect("data");
    let config = data.path().join("berth.toml");
    std::fs::write(
        &config,
        format!("[database]\nurl = \"{url}\"\nacquire_timeout_secs = 2\nmax_connections = 4\n"),
    )
    .unwrap();
    // Blobs in the shared Garage bucket: the outage of the database alone, on the
    // scaled-out stack.
    let env = s3_env("pg-outage").await;
    let r = Replica::start_env(data.path(), &["--config", config.to_str().unwrap()], &env);
    let c = r.client();
    let chunk1 = vec![1u8; 100_000];
    let chunk2 = vec![2u8; 100_000];
    let whole = [chunk1.clone(), chunk2.clone()].concat();
    let digest = sha256(&whole);

    let start = c
        .post(format!("{}/v2/library/fault/blobs/uploads/", r.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 202);
    let location = start.headers()["location"].to_str().unwrap().to_owned();
    let target = |loc: &str| {
        if loc.starts_with("http") {
            loc.to_owned()
        } else {
            format!("{}{loc}", r.url())
        }
    };
    let p1 = c
        .patch(target(&location))
        .header("Authorization", admin())
        .header("Content-Range", format!("0-{}", chunk1.len() - 1))
        .body(chunk1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(p1.status(), 202);
    let location = p1.headers()["location"].to_str().unwrap().to_owned();

    cluster.stop();
    let patch2 = || {
        c.patch(target(&location))
            .header("Authorization", admin())
            .header(
                "Content-Range",
                format!("{}-{}", chunk1.len(), whole.len() - 1),
            )
            .body(chunk2.clone())
            .send()
    };
    let began = Instant::now();
    let failed = patch2().await.unwrap();
    let took = began.elapsed();
    assert_eq!(failed.status(), 503);
    let body = failed.text().await.unwrap();
    assert!(
        body.contains("UNAVAILABLE") && body.contains("metadata database"),
        "{body}"
    );
    assert!(took < Duration::from_secs(10), "503 took {took:?}");
    let ready = c.get(format!("{}/readyz", r.url())).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().contains("metadata database"));
    let alive = c.get(format!("{}/healthz", r.url())).send().await.unwrap();
    assert_eq!(alive.status(), 200, "liveness does not follow the database");
    let manifest_get = c
        .get(format!("{}/v2/library/fault/manifests/latest", r.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(manifest_get.status(), 503);

    // The database comes back: readiness and the upload resume by themselves.
    cluster.resume();
    let back = Instant::now();
    loop {
        let ready = c.get(format!("{}/readyz", r.url())).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "not ready 20 s after the database returned: {}",
            ready.text().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resumed = patch2().await.unwrap();
    assert_eq!(resumed.status(), 202, "{}", resumed.text().await.unwrap());
    let location = resumed.headers()["location"].to_str().unwrap().to_owned();
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = c
        .put(format!("{}{sep}digest={digest}", target(&location)))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 201, "{}", done.text().await.unwrap());
    let blob = c
        .get(format!("{}/v2/library/fault/blobs/{digest}", r.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(sha256(&blob.bytes().await.unwrap()), digest);

    // Nothing half-written: no tag exists in the repository, and the storage error
    // counter saw the outage.
    let tags = c
        .get(format!("{}/v2/library/fault/tags/list", r.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap();
    let tags: serde_json::Value = tags.json().await.unwrap();
    assert!(
        tags["tags"].as_array().is_none_or(|t| t.is_empty()),
        "{tags}"
    );
    let metrics = c
        .get(format!("{}/metrics", r.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("berth_storage_errors_total{kind=\"unavailable\"}"),
        "{metrics}"
    );
    drop(r);
    drop(cluster);
}

/// `berth migrate`: an embedded deployment (pushed to with skopeo, with a robot and audit
/// entries) moves onto PostgreSQL and an S3 bucket (Garage); the image pulled from the
/// migrated deployment is bit for bit the one pushed, the robot and the audit log came
/// along, and a second run is a no-op catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_an_embedded_deployment_onto_postgres_and_s3() {
    let old_data = tempfile::tempdir().expect("old data");
    let old = Replica::start(old_data.path(), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let creds = common::admin_creds();
    skopeo(&[
        "copy",
        "--dest-creds",
        &creds,
        "--dest-cert-dir",
        old.cert_dir().to_str().unwrap(),
        &layout.oci_ref(),
        &format!("docker://{}/library/moved:v1", old.host()),
    ])
    .ok();
    let robot: serde_json::Value = old
        .client()
        .post(format!("{}/api/v1/projects/library/robots", old.url()))
        .header("Authorization", admin())
        .json(&serde_json::json!({"name": "puller", "push": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = robot["secret"].as_str().expect("secret").to_owned();
    drop(old);

    // The target: PostgreSQL and a Garage bucket (its keys in the environment).
    let url = PgCluster::shared().database().await;
    let env = s3_env("migrated").await;
    let new_data = tempfile::tempdir().expect("new data");
    let config = new_data.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "data = \"{}\"\n[database]\nurl = \"{url}\"\n",
            new_data.path().display()
        ),
    )
    .unwrap();
    for run in 0..2 {
        let out = run_cmd(
            Command::new(common::berth_bin())
                .arg("migrate")
                .arg("--from")
                .arg(old_data.path())
                .arg("--to")
                .arg(&config)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            Duration::from_secs(120),
        )
        .ok();
        // The first run copies the blobs, the second finds them all there.
        let nothing = out.stdout.contains("migrated: 0 blobs copied");
        assert_eq!(nothing, run == 1, "run {run}: {}", out.stdout);
    }

    assert!(
        !new_data.path().join("blobs").exists(),
        "the blobs went to the bucket, not the data directory"
    );
    let new = Replica::start_env(
        new_data.path(),
        &["--config", config.to_str().unwrap()],
        &env,
    );
    let out = tmp.path().join("out");
    let robot_creds = format!("robot$library+puller:{secret}");
    skopeo(&[
        "copy",
        "--src-creds",
        &robot_creds,
        "--src-cert-dir",
        new.cert_dir().to_str().unwrap(),
        &format!("docker://{}/library/moved:v1", new.host()),
        &format!("oci:{}:v1", out.display()),
    ])
    .ok();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(layout.manifest_digest())
    );
    for d in layout.all_blob_digests() {
        let hex = d.strip_prefix("sha256:").unwrap();
        let bytes = std::fs::read(out.join("blobs/sha256").join(hex)).expect("blob pulled");
        assert_eq!(sha256(&bytes), d);
    }
    let audit: serde_json::Value = new
        .client()
        .get(format!("{}/api/v1/audit?limit=100", new.url()))
        .header("Authorization", admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = audit.to_string();
    assert!(
        text.contains("library/moved"),
        "push audit entries migrated: {text}"
    );
}
