//! The GC benchmark of `scripts/bench-gc`.
//!
//!     gc_bench generate BERTH_DATA DIST_ROOT MANIFESTS   # same images in both layouts
//!     gc_bench change BERTH_DATA DIST_ROOT PERCENT       # untag PERCENT % of the tags
//!     gc_bench berth-gc BERTH_DATA                       # one timed online GC cycle
//!     gc_bench push URL USER:PASSWORD COUNT TAG_PREFIX   # push latency, p50/p99 in ms
//!
//! Generation does not go through HTTP (100,000 pushes would take longer than the
//! benchmark): Berth's metadata is written through the `MetadataStore` trait on a database
//! opened for bulk loading (synchronous=OFF; the schema, triggers, change log and quota
//! usage are the real ones), and blob files are written straight into the documented
//! layouts (`blobs/sha256/XX/HEX` for Berth; `docker/registry/v2/blobs/…/data` plus the
//! `_layers`, `_manifests/revisions` and `_manifests/tags` link files for Distribution).
//! Each manifest: a unique config (~100 B), a unique layer (4 KiB) and one of 50 shared
//! layers (64 KiB), in 100 repositories, each manifest tagged once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_proto::Digest;
use berth_storage::sqlite::SqliteMetadata;
use berth_storage::{MetadataStore, NewManifest};

const REPOS: usize = 100;
const SHARED: usize = 50;
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["generate", data, dist, n] => generate(data.as_ref(), dist.as_ref(), parse(n)?).await,
            ["change", data, dist, pct] => change(data.as_ref(), dist.as_ref(), parse(pct)?).await,
            ["berth-gc", data] => berth_gc(data.as_ref()).await,
            ["push", url, creds, n, prefix] => push(url, creds, parse(n)?, prefix).await,
            _ => Err("usage: see the top of examples/gc_bench.rs".to_string()),
        }
    });
    if let Err(e) = result {
        eprintln!("gc_bench: {e}");
        std::process::exit(1);
    }
}

fn parse(s: &str) -> Result<usize, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

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

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn berth_blob(data: &Path, d: &Digest) -> PathBuf {
    let hex = d.hex();
    data.join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn dist_blob(root: &Path, d: &Digest) -> PathBuf {
    let hex = d.hex();
    root.join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

fn dist_repo(root: &Path, repo: &str) -> PathBuf {
    root.join("docker/registry/v2/repositories").join(repo)
}

fn repo_of(i: usize) -> String {
    format!("bench/r{:03}", i % REPOS)
}

fn image(i: usize, shared: &[(Digest, Vec<u8>)]) -> (Vec<u8>, Vec<u8>, usize, Vec<u8>) {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{i}}}").into_bytes();
    let layer = noise(i as u64 + 1_000_000, 4096);
    let s = i % SHARED;
    let desc = |media: &str, b: &[u8]| serde_json::json!({"mediaType": media, "digest": Digest::sha256(b).to_string(), "size": b.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", &config),
        "layers": [
            desc("application/vnd.oci.image.layer.v1.tar+gzip", &shared[s].1),
            desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer),
        ],
    }))
    .unwrap();
    (config, layer, s, manifest)
}

async fn generate(data: &Path, dist: &Path, n: usize) -> Result<(), String> {
    let started = Instant::now();
    let meta = SqliteMetadata::open_for_bulk_load(&data.join("metadata.db"))
        .await
        .map_err(|e| e.to_string())?;
    let shared: Vec<(Digest, Vec<u8>)> = (0..SHARED)
        .map(|s| {
            let b = noise(s as u64 + 7, 64 << 10);
            (Digest::sha256(&b), b)
        })
        .collect();
    for (d, b) in &shared {
        write(&berth_blob(data, d), b)?;
        write(&dist_blob(dist, d), b)?;
    }
    for i in 0..n {
        let repo = repo_of(i);
        let (config, layer, s, manifest) = image(i, &shared);
        let blobs = [
            (Digest::sha256(&config), config),
            (Digest::sha256(&layer), layer),
        ];
        let md = Digest::sha256(&manifest);
        for (d, b) in &blobs {
            write(&berth_blob(data, d), b)?;
            write(&dist_blob(dist, d), b)?;
            meta.link_blob(&repo, d, b.len() as u64)
                .await
                .map_err(|e| e.to_string())?;
        }
        meta.link_blob(&repo, &shared[s].0, shared[s].1.len() as u64)
            .await
            .map_err(|e| e.to_string())?;
        let tag = format!("t{i}");
        meta.put_manifest(NewManifest {
            repository: repo.clone(),
            digest: md.clone(),
            media_type: MANIFEST.into(),
            content: manifest.clone(),
            tag: Some(tag.clone()),
            blobs: vec![blobs[0].0.clone(), shared[s].0.clone(), blobs[1].0.clone()],
            children: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations_json: None,
        })
        .await
        .map_err(|e| e.to_string())?;
        // Distribution: the manifest is a blob too, plus the repository's link files.
        write(&dist_blob(dist, &md), &manifest)?;
        let r = dist_repo(dist, &repo);
        for d in [&blobs[0].0, &blobs[1].0, &shared[s].0] {
            write(
                &r.join("_layers/sha256").join(d.hex()).join("link"),
                d.to_string().as_bytes(),
            )?;
        }
        let link = md.to_string();
        write(
            &r.join("_manifests/revisions/sha256")
                .join(md.hex())
                .join("link"),
            link.as_bytes(),
        )?;
        let t = r.join("_manifests/tags").join(&tag);
        write(&t.join("current/link"), link.as_bytes())?;
        write(
            &t.join("index/sha256").join(md.hex()).join("link"),
            link.as_bytes(),
        )?;
        if i % 10_000 == 9_999 {
            eprintln!(
                "gc_bench: {} manifests in {:.0} s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    // The generation's own change log is not what the benchmark measures: start clean, as
    // after a previous cycle.
    meta.close().await;
    let meta = SqliteMetadata::open(&data.join("metadata.db"))
        .await
        .map_err(|e| e.to_string())?;
    let life: Arc<dyn berth_storage::LifecycleStore> = Arc::new(meta.clone());
    let lc = lifecycle(&meta, data, life).await?;
    let run = lc
        .run_gc(&berth_server::gc::GcOptions {
            dry_run: false,
            started_by: "bench-setup".into(),
        })
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "gc_bench: generated {n} manifests in {:.0} s (setup GC: {})",
        started.elapsed().as_secs_f64(),
        run.detail
    );
    Ok(())
}

async fn lifecycle(
    meta: &SqliteMetadata,
    data: &Path,
    life: Arc<dyn berth_storage::LifecycleStore>,
) -> Result<berth_server::gc::Lifecycle, String> {
    let blobs = berth_storage::fs::FsBlobStore::open(data.to_path_buf())
        .await
        .map_err(|e| e.to_string())?;
    let config = berth_server::config::LifecycleConfig {
        blob_grace_secs: 0,
        untagged_delay_secs: 0,
        ..Default::default()
    };
    Ok(berth_server::gc::Lifecycle::new(
        life,
        Arc::new(meta.clone()),
        Arc::new(blobs),
        config,
        Duration::from_secs(7 * 86_400),
    ))
}

async fn change(data: &Path, dist: &Path, pct: usize) -> Result<(), String> {
    let meta = SqliteMetadata::open(&data.join("metadata.db"))
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    let mut i = 0;
    loop {
        let repo = repo_of(i);
        let tag = format!("t{i}");
        if !meta
            .repository_exists(&repo)
            .await
            .map_err(|e| e.to_string())?
        {
            break;
        }
        if meta
            .manifest_by_tag(&repo, &tag)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            break;
        }
        if i % 100 < pct {
            meta.delete_tag(&repo, &tag)
                .await
                .map_err(|e| e.to_string())?;
            std::fs::remove_dir_all(dist_repo(dist, &repo).join("_manifests/tags").join(&tag))
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        i += 1;
    }
    meta.close().await;
    println!("{n}");
    Ok(())
}

async fn berth_gc(data: &Path) -> Result<(), String> {
    let meta = SqliteMetadata::open(&data.join("metadata.db"))
        .await
        .map_err(|e| e.to_string())?;
    let life: Arc<dyn berth_storage::LifecycleStore> = Arc::new(meta.clone());
    let lc = lifecycle(&meta, data, life).await?;
    let started = Instant::now();
    let run = lc
        .run_gc(&berth_server::gc::GcOptions {
            dry_run: false,
            started_by: "bench".into(),
        })
        .await
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{secs:.3} {} {} {} {:.1}",
        run.manifests_removed,
        run.blobs_removed,
        run.bytes_freed,
        run.bytes_freed as f64 / secs / (1 << 20) as f64
    );
    if !run.errors.is_empty() {
        return Err(run.errors);
    }
    Ok(())
}

async fn push(url: &str, creds: &str, n: usize, prefix: &str) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| e.to_string())?;
    let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
    let auth = |r: reqwest::RequestBuilder| {
        if user.is_empty() {
            r
        } else {
            r.basic_auth(user, Some(password))
        }
    };
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let repo = format!("bench/push{}", i % 4);
        let config = format!("{{\"push\":\"{prefix}{i}\"}}").into_bytes();
        let layer = noise(i as u64 + 77 + prefix.len() as u64 * 1_000_003, 256 << 10);
        let desc = |b: &[u8]| serde_json::json!({"mediaType": "application/octet-stream", "digest": Digest::sha256(b).to_string(), "size": b.len()});
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST, "config": desc(&config), "layers": [desc(&layer)],
        }))
        .unwrap();
        let started = Instant::now();
        for b in [&config, &layer] {
            // POST, then PUT with the bytes, as docker and skopeo do, for both servers
            // (Distribution 2.8 ignores a monolithic POST's body and then closes the
            // connection it left unread).
            let r = auth(http.post(format!("{url}/v2/{repo}/blobs/uploads/")))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status().as_u16() != 202 {
                return Err(format!("blob POST: {}", r.status()));
            }
            let location = r
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .ok_or("upload refused: no Location")?
                .to_owned();
            let location = if location.starts_with("http") {
                location
            } else {
                format!("{url}{location}")
            };
            let sep = if location.contains('?') { '&' } else { '?' };
            let r = auth(http.put(format!("{location}{sep}digest={}", Digest::sha256(b))))
                .header("content-type", "application/octet-stream")
                .body(b.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status().as_u16() != 201 {
                return Err(format!("blob PUT: {}", r.status()));
            }
        }
        let r = auth(http.put(format!("{url}/v2/{repo}/manifests/{prefix}{i}")))
            .header("content-type", MANIFEST)
            .body(manifest)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().as_u16() != 201 {
            return Err(format!(
                "manifest PUT: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ));
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!("{:.1} {:.1}", p(0.5), p(0.99));
    Ok(())
}
