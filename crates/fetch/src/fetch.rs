//! `berth fetch`: resolve, download (parallel, bounded, through the cache), apply in order.
//!
//! Downloads of all layers start at once (at most `jobs` in flight); layer *i* is applied
//! as soon as it and every layer below it have been applied and it is in the cache, so
//! unpacking overlaps the downloads of the layers above. The root filesystem is built in
//! a sibling `DIR.tmp-…` directory that is removed on any failure (digest mismatch,
//! network error, hostile archive, cancellation) and renamed to `DIR` only on success.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_client::{Descriptor, ImageRef, OciLayout, Platform, RegistryClient};
use tokio::task::JoinHandle;

use crate::cache::{BlobCache, Ensured};
use crate::events::{Event, Reporter};
use crate::unpack::{UnpackOptions, Unpacker};

/// Where the image goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// An unpacked root filesystem at this directory (must not exist, or be empty).
    Rootfs(PathBuf),
    /// An OCI image layout directory (created, or added to).
    Layout(PathBuf),
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub platform: Platform,
    pub target: Target,
    /// Concurrent layer downloads (at least 1).
    pub jobs: usize,
    pub unpack: UnpackOptions,
    /// `syncfs` the new root filesystem before renaming it into place.
    pub sync: bool,
}

/// What a fetch did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    pub manifest_digest: String,
    pub layers: usize,
    pub cached_layers: usize,
    pub transferred_bytes: u64,
}

/// Removes a directory tree on drop unless disarmed.
struct TmpDir {
    path: Option<PathBuf>,
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            remove_tree(&p);
        }
    }
}

/// Remove a tree, first making directories writable (an unprivileged unpack may have
/// left read-only ones). Never follows symlinks.
fn remove_tree(p: &Path) {
    if std::fs::remove_dir_all(p).is_ok() {
        return;
    }
    fn chmod_dirs(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return;
        };
        if md.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    chmod_dirs(&e.path());
                }
            }
        }
    }
    chmod_dirs(p);
    let _ = std::fs::remove_dir_all(p);
}

/// Aborts the tasks still running when dropped (on failure or cancellation).
struct Tasks(Vec<JoinHandle<anyhow::Result<Ensured>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:08x}", std::process::id())
}

/// Fetch `image` for `opts.platform` into `opts.target`, reporting to `reporter`.
pub async fn fetch(
    client: &RegistryClient,
    cache: &BlobCache,
    image: &ImageRef,
    opts: &FetchOptions,
    reporter: Arc<dyn Reporter>,
) -> anyhow::Result<FetchReport> {
    let started = Instant::now();

    // Check the destination before any transfer.
    if let Target::Rootfs(dir) = &opts.target {
        match std::fs::read_dir(dir) {
            Ok(mut rd) => {
                if rd.next().is_some() {
                    bail!(
                        "{} exists and is not empty; remove it first (berth fetch never unpacks over an existing root filesystem)",
                        dir.display()
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("checking {}", dir.display())),
        }
    }

    let resolved = client
        .resolve(image, &opts.platform)
        .await
        .with_context(|| format!("resolving {image} for {}", opts.platform))?;
    let layers = resolved.layers.clone();
    reporter.event(&Event::Resolved {
        reference: image.to_string(),
        manifest_digest: resolved.manifest.digest.to_string(),
        platform: opts.platform.to_string(),
        layers: layers.len(),
        total_bytes: layers.iter().map(|l| l.size).sum(),
    });

    // The config: through the cache too (a warm fetch transfers no blob at all).
    cache
        .ensure(client, image, &resolved.config)
        .await
        .context("downloading the image config")?;
    let config_bytes = std::fs::read(cache.blob_path(&resolved.config.digest))
        .context("reading the cached image config")?;
    let config: serde_json::Value =
        serde_json::from_slice(&config_bytes).context("the image config is not JSON")?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if matches!(opts.target, Target::Rootfs(_)) && diff_ids.len() != layers.len() {
        bail!(
            "the image config lists {} layer diff_ids but the manifest has {} layers",
            diff_ids.len(),
            layers.len()
        );
    }

    // Start every download (bounded by a semaphore) and a progress ticker.
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.jobs.max(1)));
    let in_flight: Arc<Mutex<HashMap<usize, Descriptor>>> = Arc::default();
    let mut tasks = Tasks(Vec::with_capacity(layers.len()));
    let download_started: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    for (index, desc) in layers.iter().cloned().enumerate() {
        let (client, cache, image, sem, reporter, in_flight, download_started) = (
            client.clone(),
            cache.clone(),
            image.clone(),
            sem.clone(),
            reporter.clone(),
            in_flight.clone(),
            download_started.clone(),
        );
        tasks.0.push(tokio::spawn(async move {
            let cached = cache.has(&desc);
            let _permit = if cached {
                None
            } else {
                Some(sem.acquire_owned().await.expect("semaphore open"))
            };
            let t0 = Instant::now();
            download_started.lock().unwrap().insert(index, t0);
            reporter.event(&Event::LayerStart {
                index,
                digest: desc.digest.to_string(),
                size: desc.size,
                cached,
            });
            in_flight.lock().unwrap().insert(index, desc.clone());
            let r = cache.ensure(&client, &image, &desc).await;
            in_flight.lock().unwrap().remove(&index);
            let ensured = r.with_context(|| format!("layer {} ({})", index + 1, desc.digest))?;
            reporter.event(&Event::LayerDownloaded {
                index,
                digest: desc.digest.to_string(),
                size: desc.size,
                cached: ensured.cached,
                transferred: if ensured.cached {
                    0
                } else {
                    desc.size - ensured.resumed_from
                },
                resumed_from: ensured.resumed_from,
                seconds: t0.elapsed().as_secs_f64(),
            });
            Ok(ensured)
        }));
    }
    let ticker = {
        let (cache, reporter, in_flight) = (cache.clone(), reporter.clone(), in_flight.clone());
        tokio::spawn(async move {
            let mut last: HashMap<usize, u64> = HashMap::new();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now: Vec<(usize, Descriptor)> = in_flight
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(i, d)| (*i, d.clone()))
                    .collect();
                for (index, desc) in now {
                    let bytes = cache.partial_len(&desc.digest).min(desc.size);
                    if last.insert(index, bytes) != Some(bytes) {
                        reporter.event(&Event::Progress {
                            index,
                            digest: desc.digest.to_string(),
                            bytes,
                            size: desc.size,
                        });
                    }
                }
            }
        })
    };
    struct AbortTicker(JoinHandle<()>);
    impl Drop for AbortTicker {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _ticker = AbortTicker(ticker);

    let mut cached_layers = 0usize;
    let mut transferred = 0u64;
    let mut account = |e: &Ensured, desc: &Descriptor| {
        if e.cached {
            cached_layers += 1;
        } else {
            transferred += desc.size - e.resumed_from;
        }
    };

    let (kind, path) = match &opts.target {
        Target::Rootfs(dir) => {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("creating {}", parent.display()))?;
            let name = dir
                .file_name()
                .with_context(|| format!("{} has no directory name", dir.display()))?;
            let tmp_path = parent.join(format!(
                "{}.tmp-{}",
                name.to_string_lossy(),
                unique_suffix()
            ));
            std::fs::create_dir(&tmp_path)
                .with_context(|| format!("creating {}", tmp_path.display()))?;
            let mut tmp = TmpDir {
                path: Some(tmp_path.clone()),
            };
            let mut unpacker = Some(Unpacker::new(&tmp_path, opts.unpack.clone())?);
            for (index, desc) in layers.iter().enumerate() {
                let handle = &mut tasks.0[index];
                let ensured = handle.await.context("download task failed")??;
                account(&ensured, desc);
                let blob = cache.blob_path(&desc.digest);
                let diff_id = diff_ids.get(index).cloned();
                let mut u = unpacker.take().expect("unpacker present");
                let t0 = Instant::now();
                let (u, result) = tokio::task::spawn_blocking(move || {
                    let r = std::fs::File::open(&blob)
                        .with_context(|| format!("opening {}", blob.display()))
                        .and_then(|f| Ok(u.apply_blob(f, diff_id.as_deref())?));
                    (u, r)
                })
                .await
                .context("unpack task failed")?;
                unpacker = Some(u);
                let stats = result
                    .with_context(|| format!("applying layer {} ({})", index + 1, desc.digest))?;
                reporter.event(&Event::LayerApplied {
                    index,
                    digest: desc.digest.to_string(),
                    seconds: t0.elapsed().as_secs_f64(),
                    stats,
                });
            }
            drop(unpacker);
            if opts.sync {
                let p = tmp_path.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    let f = std::fs::File::open(&p)?;
                    rustix::fs::syncfs(&f)?;
                    Ok(())
                })
                .await?
                .context("syncing the new root filesystem")?;
            }
            // An empty directory at DIR (checked above) is replaced.
            if dir.is_dir() {
                std::fs::remove_dir(dir)
                    .with_context(|| format!("replacing the empty directory {}", dir.display()))?;
            }
            std::fs::rename(&tmp_path, dir)
                .with_context(|| format!("renaming {} to {}", tmp_path.display(), dir.display()))?;
            tmp.path = None;
            ("rootfs", dir.clone())
        }
        Target::Layout(dir) => {
            let mut results = Vec::with_capacity(layers.len());
            for handle in tasks.0.iter_mut() {
                results.push(handle.await.context("download task failed")??);
            }
            for (e, d) in results.iter().zip(&layers) {
                account(e, d);
            }
            let layout = OciLayout::create(dir).map_err(anyhow::Error::new)?;
            for desc in layers.iter().chain(std::iter::once(&resolved.config)) {
                let dest = layout.blob_path(&desc.digest);
                std::fs::create_dir_all(dest.parent().expect("parent"))?;
                cache.link_to(desc, &dest)?;
            }
            layout
                .write_blob_bytes(&resolved.manifest.bytes)
                .map_err(anyhow::Error::new)?;
            let desc = resolved.manifest.descriptor();
            layout
                .add_ref(&desc, image.tag.as_deref())
                .map_err(anyhow::Error::new)?;
            ("layout", dir.clone())
        }
    };

    let report = FetchReport {
        manifest_digest: resolved.manifest.digest.to_string(),
        layers: layers.len(),
        cached_layers,
        transferred_bytes: transferred,
    };
    reporter.event(&Event::Done {
        target: kind.to_string(),
        path: path.display().to_string(),
        manifest_digest: report.manifest_digest.clone(),
        layers: report.layers,
        cached_layers,
        transferred_bytes: transferred,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(report)
}
