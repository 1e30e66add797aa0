//! `berth fetch`: resolve, download (parallel, bounded, through the cache), apply in order.
//!
//! Downloads of all layers start at once (at most `jobs` in flight) into the cache; layer
//! *i* is unpacked as soon as every layer below it has been applied, *while it downloads*:
//! the unpacker reads the cache's partial file as it grows (see [`FeedReader`]), so
//! decompression and file creation overlap the transfer. Bytes read that way are not yet
//! verified by the blob digest; they are only trusted because the uncompressed stream must
//! match the image config's sha256 `diff_id` (checked by the unpacker) and the layer fails
//! if the download's digest check fails. Without a sha256 `diff_id` the layer is unpacked
//! from the verified blob after its download. The root filesystem is built in
//! a sibling `DIR.tmp-…` directory that is removed on any failure (digest mismatch,
//! network error, hostile archive, cancellation) and renamed to `DIR` only on success.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_client::{Descriptor, DownloadObserver, ImageRef, OciLayout, Platform, RegistryClient};
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

/// One layer's download as the unpacker sees it: how far the partial file in the cache has
/// been written, and whether the download finished (the blob verified and in the cache) or
/// failed.
struct Feed {
    state: Mutex<FeedState>,
    cond: Condvar,
    partial: PathBuf,
    blob: PathBuf,
}

#[derive(Default)]
struct FeedState {
    /// The partial file exists (an attempt started).
    started: bool,
    /// Bytes written to it so far.
    len: u64,
    /// `Some(true)`: verified and at `blob`; `Some(false)`: the download failed.
    done: Option<bool>,
}

impl Feed {
    fn new(cache: &BlobCache, desc: &Descriptor) -> Feed {
        Feed {
            state: Mutex::default(),
            cond: Condvar::new(),
            partial: cache.partial_path(&desc.digest),
            blob: cache.blob_path(&desc.digest),
        }
    }

    fn finish(&self, ok: bool) {
        let mut st = self.state.lock().unwrap();
        if st.done.is_none() {
            st.done = Some(ok);
        }
        self.cond.notify_all();
    }
}

impl DownloadObserver for Feed {
    fn restarted(&self, kept: u64) {
        let mut st = self.state.lock().unwrap();
        st.started = true;
        st.len = kept;
        self.cond.notify_all();
    }

    fn written(&self, len: u64) {
        let mut st = self.state.lock().unwrap();
        st.len = len;
        self.cond.notify_all();
    }
}

/// Marks the feed failed if its download task ends without finishing it (aborted), so a
/// reader never waits for bytes that will not come.
struct FeedGuard(Arc<Feed>);

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.0.finish(false);
    }
}

/// Reads a layer blob while it downloads: blocks until the bytes it needs are in the
/// partial file (or the blob is complete), fails if the download fails.
struct FeedReader {
    feed: Arc<Feed>,
    file: Option<std::fs::File>,
    pos: u64,
    size: u64,
}

impl FeedReader {
    fn new(feed: Arc<Feed>, size: u64) -> FeedReader {
        FeedReader {
            feed,
            file: None,
            pos: 0,
            size,
        }
    }
}

impl std::io::Read for FeedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let mut st = self.feed.state.lock().unwrap();
        loop {
            if st.done == Some(false) {
                return Err(std::io::Error::other("the layer download failed"));
            }
            let complete = st.done == Some(true);
            if self.file.is_none() {
                if complete {
                    self.file = Some(std::fs::File::open(&self.feed.blob)?);
                } else if st.started {
                    match std::fs::File::open(&self.feed.partial) {
                        Ok(f) => self.file = Some(f),
                        // Renamed into the cache just now: `done` follows.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            st = self.feed.cond.wait(st).unwrap();
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    st = self.feed.cond.wait(st).unwrap();
                    continue;
                }
            }
            let available = if complete { self.size } else { st.len };
            if self.pos < available {
                drop(st);
                let want = (available - self.pos).min(buf.len() as u64) as usize;
                let file = self.file.as_ref().expect("opened above");
                let n = file.read_at(&mut buf[..want], self.pos)?;
                if n > 0 {
                    self.pos += n as u64;
                    return Ok(n);
                }
                // Truncated by a restarted attempt that has not reported yet.
                std::thread::sleep(Duration::from_millis(1));
                st = self.feed.state.lock().unwrap();
                continue;
            }
            if complete {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the cached blob is shorter than its descriptor",
                ));
            }
            st = self.feed.cond.wait(st).unwrap();
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
    let feeds: Vec<Arc<Feed>> = layers
        .iter()
        .map(|d| Arc::new(Feed::new(cache, d)))
        .collect();
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
        let feed = FeedGuard(feeds[index].clone());
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
            let r = cache
                .ensure_observed(&client, &image, &desc, Some(&*feed.0))
                .await;
            feed.0.finish(r.is_ok());
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
                let diff_id = diff_ids.get(index).cloned();
                // Unpack while the layer downloads when the uncompressed stream is checked
                // against a sha256 diff_id (so nothing unverified survives: a mismatch
                // fails the layer, and the blob's own digest is checked by the download);
                // otherwise wait for the verified blob first.
                let streaming = diff_id.as_deref().is_some_and(|d| d.starts_with("sha256:"));
                let mut downloaded = None;
                if !streaming {
                    let ensured = (&mut tasks.0[index])
                        .await
                        .context("download task failed")??;
                    downloaded = Some(ensured);
                }
                let reader = FeedReader::new(feeds[index].clone(), desc.size);
                let mut u = unpacker.take().expect("unpacker present");
                let t0 = Instant::now();
                let (u, result) = tokio::task::spawn_blocking(move || {
                    let r = u.apply_blob(reader, diff_id.as_deref());
                    (u, r)
                })
                .await
                .context("unpack task failed")?;
                unpacker = Some(u);
                let ensured = match downloaded {
                    Some(e) => e,
                    // The download's own error (e.g. a digest mismatch) explains an
                    // unpack failure on its unverified bytes better than the unpacker.
                    None => (&mut tasks.0[index])
                        .await
                        .context("download task failed")?
                        .with_context(|| format!("layer {} ({})", index + 1, desc.digest))?,
                };
                account(&ensured, desc);
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
