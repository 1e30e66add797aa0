//! Storage lifecycle, end to end against the real `berth serve`: online garbage collection
//! under concurrent pushes (the soak), quotas, immutable tags, retention, GC after a project
//! is emptied and deleted, disk space returned, and what skopeo users see.

mod common;
mod fixtures;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Berth, CmdOutput, need, run_cmd};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Server flags for tests that run GC themselves with short delays.
const FAST_GC: &[&str] = &[
    "--gc-interval-secs",
    "0",
    "--gc-blob-grace-secs",
    "1",
    "--gc-untagged-delay-secs",
    "0",
    "--retention-interval-secs",
    "0",
];

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// xorshift for choosing operations (no dependency, reproducible).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A registry client for the tests (admin credentials).
#[derive(Clone)]
struct Reg {
    http: reqwest::Client,
    base: String,
}

impl Reg {
    fn new(srv: &Berth) -> Reg {
        Reg {
            http: srv.client(),
            base: srv.url(),
        }
    }

    async fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let r = self
            .http
            .head(format!("{}/v2/{repo}/blobs/{digest}", self.base))
            .send()
            .await
            .expect("HEAD blob");
        r.status().as_u16() == 200
    }

    /// Monolithic upload; returns the status and the error text.
    async fn upload(&self, repo: &str, bytes: &[u8]) -> (u16, String) {
        let digest = digest_of(bytes);
        let r = self
            .http
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={digest}",
                self.base
            ))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("POST blob");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// Cross-repository mount; true when mounted (201), false when the registry asks for
    /// an upload (202: the session is cancelled here).
    async fn mount(&self, repo: &str, from: &str, digest: &str) -> bool {
        let r = self
            .http
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?mount={digest}&from={from}",
                self.base
            ))
            .send()
            .await
            .expect("mount");
        match r.status().as_u16() {
            201 => true,
            202 => {
                let location = r.headers()["location"].to_str().unwrap().to_owned();
                let _ = self
                    .http
                    .delete(format!("{}{location}", self.base))
                    .send()
                    .await;
                false
            }
            s => panic!("mount answered {s}"),
        }
    }

    async fn put_manifest(&self, repo: &str, reference: &str, body: &[u8]) -> (u16, String) {
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("content-type", OCI_MANIFEST)
            .body(body.to_vec())
            .send()
            .await
            .expect("PUT manifest");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    async fn get_manifest(&self, repo: &str, reference: &str) -> Option<(String, Vec<u8>)> {
        let r = self
            .http
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET manifest");
        if r.status().as_u16() != 200 {
            return None;
        }
        let digest = r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        Some((digest, r.bytes().await.expect("body").to_vec()))
    }

    async fn get_blob(&self, repo: &str, digest: &str) -> Option<Vec<u8>> {
        let r = self
            .http
            .get(format!("{}/v2/{repo}/blobs/{digest}", self.base))
            .send()
            .await
            .expect("GET blob");
        if r.status().as_u16() != 200 {
            return None;
        }
        Some(r.bytes().await.expect("blob body").to_vec())
    }

    async fn delete(&self, repo: &str, reference: &str) -> (u16, String) {
        let r = self
            .http
            .delete(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .send()
            .await
            .expect("DELETE");
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    async fn tags(&self, repo: &str) -> Vec<String> {
        let r = self
            .http
            .get(format!("{}/v2/{repo}/tags/list?n=1000", self.base))
            .send()
            .await
            .expect("tags");
        if r.status().as_u16() != 200 {
            return Vec::new();
        }
        let v: Value = r.json().await.expect("tags json");
        v["tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("api");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn gc(&self, dry_run: bool) -> Value {
        let (status, run) = self
            .api(
                reqwest::Method::POST,
                "/api/v1/gc",
                Some(json!({"dry_run": dry_run})),
            )
            .await;
        assert_eq!(status, 200, "{run}");
        assert_eq!(run["errors"], json!([]), "GC errors: {run}");
        run
    }

    async fn policy(&self, project: &str, update: Value) -> Value {
        let (status, v) = self
            .api(
                reqwest::Method::PATCH,
                &format!("/api/v1/projects/{project}/policy"),
                Some(update),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn usage(&self, project: &str) -> u64 {
        let (status, v) = self
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/projects/{project}/policy"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["usage_bytes"].as_u64().expect("usage_bytes")
    }
}

/// An image: config + layers, and its manifest bytes.
struct Image {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(config: Vec<u8>, layers: Vec<Vec<u8>>) -> Image {
        let desc = |media: &str, b: &[u8]| json!({"mediaType": media, "digest": digest_of(b), "size": b.len()});
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &config),
            "layers": layers.iter().map(|l| desc(OCI_LAYER, l)).collect::<Vec<_>>(),
        }))
        .unwrap();
        Image {
            config,
            layers,
            manifest,
        }
    }

    fn blobs(&self) -> impl Iterator<Item = &Vec<u8>> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    fn bytes(&self) -> u64 {
        self.blobs().map(|b| b.len() as u64).sum::<u64>() + self.manifest.len() as u64
    }
}

/// Push an image the way clients do (HEAD, upload what is missing, manifest); returns the
/// manifest PUT's status and body.
async fn push(reg: &Reg, repo: &str, tag: &str, image: &Image) -> (u16, String) {
    for blob in image.blobs() {
        if !reg.blob_exists(repo, &digest_of(blob)).await {
            let (status, body) = reg.upload(repo, blob).await;
            if status != 201 {
                return (status, body);
            }
        }
    }
    reg.put_manifest(repo, tag, &image.manifest).await
}

/// Pull `repo:reference` completely, checking every digest. Err names what is missing.
async fn pull_all(reg: &Reg, repo: &str, reference: &str) -> Result<(), String> {
    let Some((digest, body)) = reg.get_manifest(repo, reference).await else {
        return Err(format!("manifest {repo}:{reference} missing"));
    };
    assert_eq!(digest_of(&body), digest);
    let m: Value = serde_json::from_slice(&body).unwrap();
    let mut descs = vec![m["config"].clone()];
    descs.extend(m["layers"].as_array().cloned().unwrap_or_default());
    for d in descs {
        let d = d["digest"].as_str().unwrap();
        match reg.get_blob(repo, d).await {
            Some(bytes) if digest_of(&bytes) == d => {}
            Some(_) => return Err(format!("blob {d} of {repo}:{reference} corrupt")),
            None => return Err(format!("blob {d} of {repo}:{reference}@{digest} missing")),
        }
    }
    Ok(())
}

/// Blob files on disk (digests) and their total size.
fn blobs_on_disk(data: &Path) -> (BTreeSet<String>, u64) {
    let mut set = BTreeSet::new();
    let mut bytes = 0;
    let root = data.join("blobs").join("sha256");
    let Ok(dirs) = std::fs::read_dir(&root) else {
        return (set, 0);
    };
    for dir in dirs {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let f = f.unwrap();
            bytes += f.metadata().unwrap().len();
            set.insert(format!("sha256:{}", f.file_name().to_string_lossy()));
        }
    }
    (set, bytes)
}

/// Every blob referenced by the manifests the registry still serves (tags of `repos`).
async fn referenced_blobs(reg: &Reg, repos: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for repo in repos {
        for tag in reg.tags(repo).await {
            if let Some((_, body)) = reg.get_manifest(repo, &tag).await {
                let m: Value = serde_json::from_slice(&body).unwrap();
                out.insert(m["config"]["digest"].as_str().unwrap().to_owned());
                for l in m["layers"].as_array().unwrap() {
                    out.insert(l["digest"].as_str().unwrap().to_owned());
                }
            }
        }
    }
    out
}

#[derive(Default)]
struct Counts {
    pushes: AtomicU64,
    mounts: AtomicU64,
    tag_deletes: AtomicU64,
    manifest_deletes: AtomicU64,
    pulls: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
}

/// The soak: concurrent pushes of images sharing layers, tag moves, tag and manifest
/// deletes, cross-repository mounts and pulls, while GC cycles run back to back with a
/// one-second grace period. Afterwards every tag pulls completely, and the blobs on disk are
/// exactly those the remaining manifests reference (nothing referenced was taken, nothing
/// unreferenced was left).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_pushes_deletes_mounts_with_continuous_gc() {
    let srv = Berth::start_with(FAST_GC);
    soak(
        "filesystem + SQLite",
        &[Reg::new(&srv)],
        &Stored::Fs(srv.data.path()),
        None,
    )
    .await;
}

/// The same soak on S3 (Garage) + PostgreSQL, with two replicas sharing the database and
/// the bucket: each operation goes to either replica, and both run GC cycles back to back
/// (the PostgreSQL store lets one cycle run at a time across replicas).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_on_s3_and_postgres_with_two_replicas() {
    let url = berth_storage::pg_fixture::PgCluster::shared()
        .database()
        .await;
    let (config, store) = s3_config("soak").await;
    let start = || {
        let data = tempfile::tempdir().expect("data");
        let file = data.path().join("berth.toml");
        std::fs::write(&file, &config).unwrap();
        let mut args = FAST_GC.to_vec();
        args.extend(["--config", file.to_str().unwrap(), "--database-url", &url]);
        Berth::start_in(data, &args)
    };
    let (a, b) = (start(), start());
    let regs = [Reg::new(&a), Reg::new(&b)];
    let diag = berth_storage::postgres::PgMetadata::open(&berth_storage::postgres::PgOptions::new(
        url.clone(),
    ))
    .await
    .expect("open the database for diagnostics");
    soak(
        "S3 (Garage) + PostgreSQL, two replicas",
        &regs,
        &Stored::S3(store),
        Some(&diag),
    )
    .await;

    // The CLI on the scaled-out deployment (its database and bucket, not a data
    // directory), while both replicas run: it sees the GC runs the replicas recorded.
    let cli = tempfile::tempdir().unwrap();
    let garage = common::garage::Garage::shared();
    let out = run_cmd(
        Command::new(common::berth_bin())
            .args(["gc", "--history", "--output", "json", "--data"])
            .arg(cli.path())
            .args(["--database-url", &url])
            .env("BERTH_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
            .env("BERTH_STORAGE_BACKEND", "s3")
            .env("BERTH_S3_ENDPOINT", garage.endpoint())
            .env("BERTH_S3_REGION", common::garage::REGION)
            .env("BERTH_S3_BUCKET", common::garage::BUCKET)
            .env("BERTH_S3_PREFIX", "soak/")
            .env("BERTH_S3_ACCESS_KEY_ID", common::garage::ACCESS_KEY)
            .env("BERTH_S3_SECRET_ACCESS_KEY", common::garage::SECRET_KEY)
            .env("BERTH_S3_ALLOW_HTTP", "true"),
        Duration::from_secs(60),
    )
    .ok();
    let runs: Value = serde_json::from_str(&out.stdout).expect("json");
    let runs = runs.as_array().expect("a list of runs");
    assert!(runs.len() >= 3, "{} runs recorded: {out:?}", runs.len());
    let via_api = regs[1].api(reqwest::Method::GET, "/api/v1/gc", None).await;
    assert_eq!(via_api.0, 200, "{:?}", via_api.1);
    let api_ids: BTreeSet<i64> = via_api.1["runs"]
        .as_array()
        .or(via_api.1.as_array())
        .expect("runs")
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    let cli_newest = runs[0]["id"].as_i64().expect("id");
    assert!(
        api_ids.contains(&cli_newest),
        "replica B and the CLI read the same run records"
    );
}

/// Where the soak looks for the blobs that are really stored.
enum Stored<'a> {
    Fs(&'a Path),
    S3(berth_storage::s3::S3BlobStore),
}

impl Stored<'_> {
    async fn digests(&self) -> BTreeSet<String> {
        match self {
            Stored::Fs(data) => blobs_on_disk(data).0,
            Stored::S3(store) => store
                .blob_digests()
                .await
                .expect("list the bucket")
                .into_iter()
                .collect(),
        }
    }
}

/// A `[storage]` section for this binary's Garage under key prefix `prefix`, and a store
/// to look into the bucket with (once the bucket answers).
async fn s3_config(prefix: &str) -> (String, berth_storage::s3::S3BlobStore) {
    use common::garage::{self, Garage};
    let garage = Garage::shared();
    let config = berth_storage::s3::S3Config {
        endpoint: Some(garage.endpoint()),
        region: garage::REGION.to_owned(),
        bucket: garage::BUCKET.to_owned(),
        prefix: format!("{prefix}/"),
        access_key_id: Some(garage::ACCESS_KEY.to_owned()),
        secret_access_key: Some(garage::SECRET_KEY.to_owned()),
        allow_http: true,
        ..Default::default()
    };
    let store = berth_storage::s3::S3BlobStore::connect(&config).expect("s3 config");
    // Garage creates its default key and bucket just after it listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.check().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "Garage's bucket did not answer:\n{}",
            garage.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = format!(
        "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"{}\"\nregion = \"{}\"\n\
         bucket = \"{}\"\nprefix = \"{prefix}/\"\naccess_key_id = \"{}\"\n\
         secret_access_key = \"{}\"\nallow_http = true\n",
        garage.endpoint(),
        garage::REGION,
        garage::BUCKET,
        garage::ACCESS_KEY,
        garage::SECRET_KEY,
    );
    (text, store)
}

/// Run the soak against `regs` (replicas of one registry), then check that the blobs
/// `stored` holds are exactly those the remaining tags reference.
/// What the metadata says about blobs left on disk that no tag references (for the
/// failure message): who references them, tombstones, open uploads.
async fn explain_leftovers(
    meta: &dyn berth_storage::LifecycleStore,
    leftovers: &BTreeSet<String>,
) -> String {
    let mut out = String::new();
    for d in leftovers {
        let digest: berth_proto::Digest = d.parse().expect("digest");
        let refs = meta.blob_references(&digest, 10).await;
        out.push_str(&format!("\n{d}: referenced by {refs:?}"));
    }
    out.push_str(&format!(
        "\ntombstones: {:?}\nopen uploads: {:?}\ncandidates: {:?}",
        meta.tombstones().await,
        meta.stale_uploads(i64::MAX, 50)
            .await
            .map(|u| u.into_iter().map(|u| u.id).collect::<Vec<_>>()),
        meta.gc_backlog().await,
    ));
    out
}

async fn soak(
    name: &str,
    regs: &[Reg],
    stored: &Stored<'_>,
    diag: Option<&berth_storage::postgres::PgMetadata>,
) {
    const WORKERS: u64 = 6;
    const OPS: u64 = 90;
    let reg = regs[0].clone();
    let regs: Arc<Vec<Reg>> = Arc::new(regs.to_vec());
    let repos: Vec<String> = (0..4).map(|i| format!("soak/r{i}")).collect();
    let pool: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..12)
            .map(|i| noise(1000 + i, 4096 + 512 * i as usize))
            .collect(),
    );
    let counts = Arc::new(Counts::default());
    let done = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));

    let gcs: Vec<_> = regs
        .iter()
        .map(|reg| {
            let (reg, done) = (reg.clone(), done.clone());
            tokio::spawn(async move {
                let mut cycles = 0u64;
                let mut removed = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let run = reg.gc(false).await;
                    removed += run["blobs_removed"].as_u64().unwrap();
                    cycles += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (cycles, removed)
            })
        })
        .collect();

    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (regs, repos, pool, counts, errors) = (
            regs.clone(),
            repos.clone(),
            pool.clone(),
            counts.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x5EED + w * 7919);
            for op in 0..OPS {
                let reg = &regs[rng.below(regs.len() as u64) as usize];
                let repo = &repos[rng.below(repos.len() as u64) as usize];
                let tag = format!("t{}", rng.below(6));
                let fail = |what: String| {
                    counts.failures.fetch_add(1, Ordering::Relaxed);
                    errors.lock().unwrap().push(what);
                };
                match rng.below(10) {
                    0..=3 => {
                        let layers = vec![
                            pool[rng.below(pool.len() as u64) as usize].clone(),
                            pool[rng.below(pool.len() as u64) as usize].clone(),
                        ];
                        let image = Image::new(
                            format!("{{\"worker\":{w},\"op\":{op}}}").into_bytes(),
                            layers,
                        );
                        counts.pushes.fetch_add(1, Ordering::Relaxed);
                        let mut result = push(reg, repo, &tag, &image).await;
                        if result.0 == 400 && result.1.contains("MANIFEST_BLOB_UNKNOWN") {
                            // A layer the HEAD saw was collected before the manifest
                            // arrived: the registry refused the manifest (nothing broken);
                            // a client re-uploads and retries.
                            counts.retries.fetch_add(1, Ordering::Relaxed);
                            let mut uploads = Vec::new();
                            for blob in image.blobs() {
                                uploads.push(reg.upload(repo, blob).await);
                            }
                            result = reg.put_manifest(repo, &tag, &image.manifest).await;
                            if result.0 != 201 {
                                result.1 += &format!(" (after re-uploads {uploads:?})");
                            }
                        }
                        if result.0 != 201 {
                            fail(format!("push {repo}:{tag}: {} {}", result.0, result.1));
                        }
                    }
                    4 => {
                        // Mount a layer another repository has, then push an image using it.
                        let from = &repos[rng.below(repos.len() as u64) as usize];
                        let layer = pool[rng.below(pool.len() as u64) as usize].clone();
                        counts.mounts.fetch_add(1, Ordering::Relaxed);
                        if from != repo && !reg.mount(repo, from, &digest_of(&layer)).await {
                            let (s, b) = reg.upload(repo, &layer).await;
                            if s != 201 {
                                fail(format!("upload after refused mount: {s} {b}"));
                                continue;
                            }
                        }
                        let image = Image::new(
                            format!("{{\"mount\":{w},\"op\":{op}}}").into_bytes(),
                            vec![layer],
                        );
                        let mut result = push(reg, repo, &tag, &image).await;
                        if result.0 == 400 && result.1.contains("MANIFEST_BLOB_UNKNOWN") {
                            counts.retries.fetch_add(1, Ordering::Relaxed);
                            for blob in image.blobs() {
                                reg.upload(repo, blob).await;
                            }
                            result = reg.put_manifest(repo, &tag, &image.manifest).await;
                        }
                        if result.0 != 201 {
                            fail(format!(
                                "mount+push {repo}:{tag}: {} {}",
                                result.0, result.1
                            ));
                        }
                    }
                    5 => {
                        counts.tag_deletes.fetch_add(1, Ordering::Relaxed);
                        let (s, b) = reg.delete(repo, &tag).await;
                        if s != 202 && s != 404 {
                            fail(format!("delete {repo}:{tag}: {s} {b}"));
                        }
                    }
                    6 => {
                        counts.manifest_deletes.fetch_add(1, Ordering::Relaxed);
                        if let Some((digest, _)) = reg.get_manifest(repo, &tag).await {
                            let (s, b) = reg.delete(repo, &digest).await;
                            if s != 202 && s != 404 {
                                fail(format!("delete {repo}@{digest}: {s} {b}"));
                            }
                        }
                    }
                    _ => {
                        counts.pulls.fetch_add(1, Ordering::Relaxed);
                        if let Some((digest, _)) = reg.get_manifest(repo, &tag).await
                            && let Err(e) = pull_all(reg, repo, &digest).await
                        {
                            // Only a failure if the manifest is still there: a blob may
                            // legitimately go with a manifest deleted meanwhile.
                            if reg.get_manifest(repo, &digest).await.is_some() {
                                fail(format!("pull during soak: {e}"));
                            }
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    done.store(true, Ordering::Relaxed);
    let (mut cycles, mut removed_during) = (0, 0);
    for gc in gcs {
        let (c, r) = gc.await.expect("gc task");
        cycles += c;
        removed_during += r;
    }
    let took = started.elapsed();

    // Let the grace period pass (1 s, counted in whole seconds: up to 2 s), then collect
    // everything left over.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    reg.gc(false).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let last = reg.gc(false).await;

    let mut remaining = 0;
    for repo in &repos {
        for tag in reg.tags(repo).await {
            remaining += 1;
            if let Err(e) = pull_all(&reg, repo, &tag).await {
                counts.failures.fetch_add(1, Ordering::Relaxed);
                errors.lock().unwrap().push(format!("final pull: {e}"));
            }
        }
    }
    let referenced = referenced_blobs(&reg, &repos).await;
    let on_disk = stored.digests().await;

    let c = &counts;
    let ops = c.pushes.load(Ordering::Relaxed)
        + c.mounts.load(Ordering::Relaxed)
        + c.tag_deletes.load(Ordering::Relaxed)
        + c.manifest_deletes.load(Ordering::Relaxed)
        + c.pulls.load(Ordering::Relaxed);
    println!(
        "soak on {name}: {ops} operations in {:.1} s ({} pushes, {} mounts, {} tag deletes, {} manifest \
         deletes, {} pulls), {cycles} GC cycles removing {removed_during} blobs meanwhile; \
         {remaining} tags remain; {} manifest PUTs retried after MANIFEST_BLOB_UNKNOWN; {} failures",
        took.as_secs_f64(),
        c.pushes.load(Ordering::Relaxed),
        c.mounts.load(Ordering::Relaxed),
        c.tag_deletes.load(Ordering::Relaxed),
        c.manifest_deletes.load(Ordering::Relaxed),
        c.pulls.load(Ordering::Relaxed),
        c.retries.load(Ordering::Relaxed),
        c.failures.load(Ordering::Relaxed),
    );
    {
        let errors = errors.lock().unwrap();
        assert!(errors.is_empty(), "{} failures: {errors:#?}", errors.len());
    }
    assert_eq!(ops, WORKERS * OPS);
    assert!(cycles >= 3, "GC ran only {cycles} times during the soak");
    assert!(remaining > 0, "the soak left no tags to check");
    let explain = match diag {
        Some(meta) if on_disk != referenced => {
            let leftovers: BTreeSet<String> = on_disk.difference(&referenced).cloned().collect();
            explain_leftovers(meta, &leftovers).await
        }
        _ => String::new(),
    };
    assert_eq!(
        on_disk, referenced,
        "blobs on disk must be exactly those the remaining tags reference (last run: {last}){explain}"
    );
}

/// A quota refusal in the middle of a push (at the blob that does not fit, and at the
/// manifest) leaves usage exactly as it was; the message names quota, usage and size.
#[tokio::test]
async fn quota_refusal_mid_push_leaves_usage_unchanged() {
    let srv = Berth::start_with(FAST_GC);
    quota_scenario(&Reg::new(&srv)).await;
}

/// The same quota and immutable-tag checks on S3 (Garage) + PostgreSQL, where they run
/// inside PostgreSQL transactions (quota lock per project, usage kept by triggers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_immutable_tags_on_s3_and_postgres() {
    let url = berth_storage::pg_fixture::PgCluster::shared()
        .database()
        .await;
    let (config, _) = s3_config("quota").await;
    let data = tempfile::tempdir().expect("data");
    let file = data.path().join("berth.toml");
    std::fs::write(&file, &config).unwrap();
    let mut args = FAST_GC.to_vec();
    args.extend(["--config", file.to_str().unwrap(), "--database-url", &url]);
    let srv = Berth::start_in(data, &args);
    let reg = Reg::new(&srv);
    quota_scenario(&reg).await;
    immutable_scenario(&reg).await;
}

async fn quota_scenario(reg: &Reg) {
    let reg = reg.clone();
    let first = Image::new(b"{\"q\":1}".to_vec(), vec![noise(1, 10_000)]);
    let (s, b) = push(&reg, "quota/app", "one", &first).await;
    assert_eq!(s, 201, "{b}");
    let usage = reg.usage("quota").await;
    assert_eq!(usage, first.bytes());
    let v = reg
        .policy("quota", json!({"quota_bytes": usage + 15_000}))
        .await;
    assert_eq!(v["quota_bytes"], json!(usage + 15_000));

    // Second image: its first layer fits, its second does not.
    let second = Image::new(
        b"{\"q\":2}".to_vec(),
        vec![noise(2, 5_000), noise(3, 20_000)],
    );
    let (s, b) = push(&reg, "quota/app", "two", &second).await;
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("DENIED") && b.contains("quota"), "{b}");
    assert!(
        b.contains(&format!("({usage} bytes)")),
        "names the usage: {b}"
    );
    assert!(b.contains("(20000 bytes)"), "names the refused size: {b}");
    assert_eq!(reg.usage("quota").await, usage, "usage unchanged");

    // A manifest whose blobs were each accepted but together exceed the quota.
    let third = Image::new(
        b"{\"q\":3}".to_vec(),
        vec![noise(4, 9_000), noise(5, 9_000)],
    );
    for blob in third.blobs() {
        assert_eq!(reg.upload("quota/app", blob).await.0, 201);
    }
    let (s, b) = reg
        .put_manifest("quota/app", "three", &third.manifest)
        .await;
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("quota"), "{b}");
    assert_eq!(reg.usage("quota").await, usage, "usage unchanged");
    assert!(reg.get_manifest("quota/app", "three").await.is_none());

    // Shared layers count once: the same layers under another repository add only the
    // new config and manifest.
    let again = Image::new(b"{\"q\":4}".to_vec(), first.layers.clone());
    let (s, b) = push(&reg, "quota/other", "x", &again).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        reg.usage("quota").await,
        usage + again.config.len() as u64 + again.manifest.len() as u64
    );

    // Correct after GC: deleting the first image frees its config and manifest only.
    let (s, _) = reg.delete("quota/app", "one").await;
    assert_eq!(s, 202);
    reg.gc(false).await;
    assert_eq!(
        reg.usage("quota").await,
        again.bytes(),
        "usage after GC counts what remains"
    );
}

/// Immutable tags: created once, then neither moved nor deleted, with the rule named.
#[tokio::test]
async fn immutable_tags_are_refused_with_the_rule() {
    let srv = Berth::start_with(FAST_GC);
    immutable_scenario(&Reg::new(&srv)).await;
}

async fn immutable_scenario(reg: &Reg) {
    let reg = reg.clone();
    let (s, v) = reg
        .api(
            reqwest::Method::POST,
            "/api/v1/projects",
            Some(json!({"name": "imm"})),
        )
        .await;
    assert!(s == 201 || s == 200, "{v}");
    reg.policy("imm", json!({"immutable_tags": ["v*", "release-*"]}))
        .await;
    let one = Image::new(b"{\"i\":1}".to_vec(), vec![noise(10, 1000)]);
    let two = Image::new(b"{\"i\":2}".to_vec(), vec![noise(11, 1000)]);
    assert_eq!(push(&reg, "imm/app", "v1", &one).await.0, 201, "first push");
    assert_eq!(
        push(&reg, "imm/app", "v1", &one).await.0,
        201,
        "same digest again"
    );
    let (s, b) = push(&reg, "imm/app", "v1", &two).await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b.contains("DENIED") && b.contains("immutable") && b.contains("v*"),
        "{b}"
    );
    let (s, b) = reg.delete("imm/app", "v1").await;
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("immutable"), "{b}");
    let (digest, _) = reg.get_manifest("imm/app", "v1").await.unwrap();
    let (s, b) = reg.delete("imm/app", &digest).await;
    assert_eq!(s, 403, "deleting the manifest would delete the tag: {b}");
    assert_eq!(push(&reg, "imm/app", "latest", &two).await.0, 201);
    assert_eq!(
        push(&reg, "imm/app", "latest", &one).await.0,
        201,
        "mutable"
    );
    assert_eq!(reg.get_manifest("imm/app", "v1").await.unwrap().0, digest);
}

/// Retention: a dry run lists and removes nothing; enforcement removes exactly that, and
/// GC then reclaims the manifests and blobs.
#[tokio::test]
async fn retention_dry_run_then_enforcement() {
    let srv = Berth::start_with(FAST_GC);
    let reg = Reg::new(&srv);
    let mut images = HashMap::new();
    for (i, tag) in ["a1", "a2", "a3", "v1", "b1"].iter().enumerate() {
        let image = Image::new(
            format!("{{\"r\":{i}}}").into_bytes(),
            vec![noise(100 + i as u64, 2000)],
        );
        assert_eq!(push(&reg, "ret/app", tag, &image).await.0, 201);
        images.insert(*tag, image);
        // Distinct push times (seconds) so "most recent" is well defined.
        tokio::time::sleep(Duration::from_millis(1050)).await;
    }
    reg.policy(
        "ret",
        json!({"retention": {"keep_last": 3, "keep_tags": ["v*"]}}),
    )
    .await;
    let (s, dry) = reg
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/ret/retention",
            Some(json!({"dry_run": true})),
        )
        .await;
    assert_eq!(s, 200, "{dry}");
    assert_eq!(dry["tags_removed"], 2, "{dry}");
    let detail = dry["detail"].as_str().unwrap();
    assert!(
        detail.contains("would remove")
            && detail.contains("ret/app:a1")
            && detail.contains("ret/app:a2"),
        "{detail}"
    );
    assert_eq!(
        reg.tags("ret/app").await.len(),
        5,
        "dry run removes nothing"
    );

    let (s, run) = reg
        .api(
            reqwest::Method::POST,
            "/api/v1/projects/ret/retention",
            Some(json!({"dry_run": false})),
        )
        .await;
    assert_eq!(s, 200, "{run}");
    assert_eq!(run["tags_removed"], 2);
    assert_eq!(reg.tags("ret/app").await, vec!["a3", "b1", "v1"]);
    let gone = digest_of(&images["a1"].layers[0]);
    assert!(blobs_on_disk(srv.data.path()).0.contains(&gone));
    reg.gc(false).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let gc = reg.gc(false).await;
    assert!(!blobs_on_disk(srv.data.path()).0.contains(&gone), "{gc}");
    for tag in ["a3", "b1", "v1"] {
        pull_all(&reg, "ret/app", tag).await.unwrap();
    }
    // Both runs are in the audit log.
    let (_, audit) = reg
        .api(reqwest::Method::GET, "/api/v1/audit?action=retention", None)
        .await;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");
}

/// GC after a project's images are deleted and the project removed: the bytes leave the
/// disk (file sizes and filesystem usage), and `berth gc --dry-run` had reported them.
#[tokio::test]
async fn gc_after_project_deletion_returns_disk_space() {
    let srv = Berth::start_with(FAST_GC);
    let reg = Reg::new(&srv);
    let mut total = 0;
    for i in 0..3u64 {
        let image = Image::new(
            format!("{{\"p\":{i}}}").into_bytes(),
            vec![noise(200 + i, 1 << 20)],
        );
        total += image.bytes() - image.manifest.len() as u64;
        let (s, b) = push(&reg, &format!("gone/app{i}"), "latest", &image).await;
        assert_eq!(s, 201, "{b}");
    }
    let (_, before) = blobs_on_disk(srv.data.path());
    let df_before = fs_used(srv.data.path());
    let (s, v) = reg
        .api(reqwest::Method::POST, "/api/v1/projects/gone/purge", None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["repositories_deleted"], 3);
    let (s, _) = reg
        .api(reqwest::Method::GET, "/api/v1/projects/gone", None)
        .await;
    assert_eq!(s, 404, "the project is gone");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The CLI on the data directory, while the server runs.
    let out = run_cmd(
        Command::new(common::berth_bin())
            .args([
                "gc",
                "--dry-run",
                "--blob-grace-secs",
                "1",
                "--output",
                "json",
                "--data",
            ])
            .arg(srv.data.path())
            .env("BERTH_ADMIN_PASSWORD", common::ADMIN_PASSWORD),
        Duration::from_secs(60),
    )
    .ok();
    let dry: Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(dry["blobs_removed"], 6, "{dry}");
    assert_eq!(dry["bytes_freed"], total, "{dry}");
    assert_eq!(
        blobs_on_disk(srv.data.path()).1,
        before,
        "dry run deleted nothing"
    );
    let run = reg.gc(false).await;
    assert_eq!(run["blobs_removed"], 6, "{run}");
    let (_, after) = blobs_on_disk(srv.data.path());
    assert_eq!(before - after, total);
    let df_after = fs_used(srv.data.path());
    // The database's WAL grows a little while GC writes: at least half of the blob bytes
    // must show as allocated space returned (the exact byte count is checked above).
    assert!(
        df_before.saturating_sub(df_after) >= total / 2,
        "disk space allocated to the data directory went from {df_before} to {df_after}"
    );
    let (_, runs) = reg
        .api(reqwest::Method::GET, "/api/v1/gc?limit=5", None)
        .await;
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["started_by"] == "cli:local-admin" && r["dry_run"] == true),
        "{runs}"
    );
}

/// Disk space allocated to `path` (blocks, not apparent sizes: `du -sB1`). The whole
/// filesystem's usage (`df`) is shared with whatever else the machine is doing.
fn fs_used(path: &Path) -> u64 {
    let out = run_cmd(
        Command::new("du").arg("-sB1").arg(path),
        Duration::from_secs(30),
    )
    .ok();
    out.stdout
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du output")
}

/// skopeo pushes while GC cycles run back to back; then skopeo users see the immutable-tag
/// and quota refusals with the registry's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_push_during_gc_and_refusals_it_shows() {
    need("skopeo");
    // The default-like grace period (here 30 s) is what protects blobs a push has uploaded
    // but not yet referenced; with one second, a push slower than that on a loaded machine
    // would legitimately get MANIFEST_BLOB_UNKNOWN (the soak covers that case).
    let srv = Berth::start_with(&[
        "--gc-interval-secs",
        "0",
        "--gc-blob-grace-secs",
        "30",
        "--gc-untagged-delay-secs",
        "0",
    ]);
    let reg = Reg::new(&srv);
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let cert_dir = srv.cert_dir();
    let skopeo_copy = |dest: String| -> CmdOutput {
        let auth = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--dest-creds",
            &common::admin_creds(),
            "--dest-cert-dir",
        ])
        .arg(&cert_dir)
        .arg(layout.oci_ref())
        .arg(dest)
        .env("REGISTRY_AUTH_FILE", auth.path().join("auth.json"))
        .env("DOCKER_CONFIG", auth.path());
        run_cmd(&mut cmd, Duration::from_secs(120))
    };

    let done = Arc::new(AtomicBool::new(false));
    let gc = {
        let (reg, done) = (reg.clone(), done.clone());
        tokio::spawn(async move {
            let mut cycles = 0;
            while !done.load(Ordering::Relaxed) {
                reg.gc(false).await;
                cycles += 1;
            }
            cycles
        })
    };
    for i in 0..3 {
        let dest = format!("docker://{}/sko/app{i}:latest", srv.host());
        let out = tokio::task::block_in_place(|| skopeo_copy(dest));
        assert!(out.success(), "skopeo push during GC: {}", out.stderr);
    }
    done.store(true, Ordering::Relaxed);
    let cycles = gc.await.unwrap();
    assert!(cycles >= 1);
    for i in 0..3 {
        pull_all(&reg, &format!("sko/app{i}"), "latest")
            .await
            .unwrap();
    }

    // Immutable: the first push of sko/app0:v1 works, moving it is refused.
    reg.policy("sko", json!({"immutable_tags": ["v*"]})).await;
    let dest = format!("docker://{}/sko/app0:v1", srv.host());
    let out = tokio::task::block_in_place(|| skopeo_copy(dest.clone()));
    assert!(out.success(), "{}", out.stderr);
    let other = Image::new(b"{\"other\":1}".to_vec(), vec![noise(300, 100)]);
    let (s, b) = push(&reg, "sko/app0", "v2", &other).await;
    assert_eq!(s, 201, "{b}");
    // Point sko/app0:v1 elsewhere with skopeo (copy v2 onto v1).
    let mut cmd = Command::new("skopeo");
    let auth = tempfile::tempdir().unwrap();
    cmd.args([
        "--insecure-policy",
        "copy",
        "--src-creds",
        &common::admin_creds(),
        "--dest-creds",
        &common::admin_creds(),
        "--src-cert-dir",
    ])
    .arg(&cert_dir)
    .arg("--dest-cert-dir")
    .arg(&cert_dir)
    .arg(format!("docker://{}/sko/app0:v2", srv.host()))
    .arg(&dest)
    .env("REGISTRY_AUTH_FILE", auth.path().join("auth.json"))
    .env("DOCKER_CONFIG", auth.path());
    let out = tokio::task::block_in_place(|| run_cmd(&mut cmd, Duration::from_secs(120)));
    assert!(!out.success(), "moving an immutable tag must fail");
    println!("skopeo shows for the immutable tag:\n{}", out.stderr.trim());
    assert!(
        out.stderr.contains("immutable") && out.stderr.contains("v*"),
        "{}",
        out.stderr
    );

    // Quota: the project is full.
    let usage = reg.usage("sko").await;
    reg.policy("sko", json!({"quota_bytes": usage})).await;
    let dest = format!("docker://{}/sko/newapp:latest", srv.host());
    let big = fixtures::image_layout(&tmp.path().join("big"), "v9");
    let mut cmd = Command::new("skopeo");
    let auth = tempfile::tempdir().unwrap();
    cmd.args([
        "--insecure-policy",
        "copy",
        "--dest-creds",
        &common::admin_creds(),
        "--dest-cert-dir",
    ])
    .arg(&cert_dir)
    .arg(format!("oci:{}:v9", tmp.path().join("big").display()))
    .arg(&dest)
    .env("REGISTRY_AUTH_FILE", auth.path().join("auth.json"))
    .env("DOCKER_CONFIG", auth.path());
    let _ = &big;
    let out = tokio::task::block_in_place(|| run_cmd(&mut cmd, Duration::from_secs(120)));
    // The fixture's blobs are already counted in the project (same content): only the
    // manifest is new, and even that does not fit.
    assert!(!out.success(), "a push over quota must fail");
    println!("skopeo shows for the quota:\n{}", out.stderr.trim());
    assert!(out.stderr.contains("quota"), "{}", out.stderr);
    assert_eq!(reg.usage("sko").await, usage);
}
