//! A bounded local read-through cache of whole blobs for the S3 backend (one per replica).
//!
//! An object store such as Garage spends about three times Berth's CPU per byte served, so
//! a replica that proxies pulls is held back by the store however many GETs it sends. This
//! cache keeps the blobs a replica served in a directory of its own, so repeated pulls
//! come from local disk as with the embedded default.
//!
//! - Files are named by content: `DIR/<alg>-<hex>-<size>`. A file is put there (renamed
//!   from `DIR/tmp/`) only after its bytes were counted to the size while they streamed to
//!   a client. A file is served only as the blob or detectably wrong: a file whose length
//!   differs from its name is discarded before a byte is sent, and a file not yet hashed
//!   by this process (a fill, or a file found at start-up) serves no partial range and is
//!   hashed the first time it is read whole (a mismatch ends that response with an error
//!   and discards the file). The fill itself does not hash: on a cold pull it shares the
//!   CPU with the object store and the client, and the object's bytes were verified when
//!   they were pushed; the first pull from the file pays the hash instead.
//! - A miss is filled by the client's own read (no second GET): each chunk sent to the
//!   client is handed to a writer thread; when the writer falls more than [`FILL_BUFFER`]
//!   bytes behind, the fill is abandoned rather than slowing the client. One fill per
//!   blob at a time (others read from the bucket meanwhile), at most [`MAX_FILLS`] at once.
//! - Least recently used blobs are evicted to keep files plus fills in progress within
//!   `max_bytes`. The index lives in memory and is rebuilt from the directory at start
//!   (oldest modification time first); stale temporary files are removed then. Nothing in
//!   it needs to survive: losing the directory only costs GETs.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use berth_proto::{Digest, Hasher};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use crate::blob::ByteStream;

/// How far (bytes) the cache writer may fall behind the client before the fill is dropped.
pub const FILL_BUFFER: usize = 16 << 20;
/// Fills running at the same time (each holds a blocking thread and up to `FILL_BUFFER`).
pub const MAX_FILLS: usize = 8;
/// Bytes read (mapped) from a cached file per chunk sent.
const WINDOW: u64 = 2 << 20;

struct Entry {
    size: u64,
    tick: u64,
    /// Hashed by this process (written by a fill, or re-read whole since start-up).
    verified: bool,
}

#[derive(Default)]
struct Index {
    entries: HashMap<Digest, Entry>,
    /// Least recently used first.
    order: BTreeMap<u64, Digest>,
    tick: u64,
    /// Bytes of the files in `entries`.
    used: u64,
    /// Bytes promised to fills in progress.
    reserved: u64,
    /// Fills in progress, by blob, with their token (removed when the blob is deleted, so
    /// a fill that finishes afterwards is dropped).
    filling: HashMap<Digest, u64>,
}

impl Index {
    fn touch(&mut self, digest: &Digest) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(digest) {
            self.order.remove(&e.tick);
            e.tick = tick;
            self.order.insert(tick, digest.clone());
        }
    }

    fn forget(&mut self, digest: &Digest) -> Option<u64> {
        let e = self.entries.remove(digest)?;
        self.order.remove(&e.tick);
        self.used -= e.size;
        Some(e.size)
    }
}

/// The cache of one replica (see the module docs).
pub struct BlobCache {
    dir: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    next_token: AtomicU64,
}

impl std::fmt::Debug for BlobCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobCache")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

fn file_name(digest: &Digest, size: u64) -> String {
    format!("{}-{}-{size}", digest.algorithm().as_str(), digest.hex())
}

fn parse_name(name: &str) -> Option<(Digest, u64)> {
    let (alg, rest) = name.split_once('-')?;
    let (hex, size) = rest.split_once('-')?;
    let digest = format!("{alg}:{hex}").parse().ok()?;
    Some((digest, size.parse().ok()?))
}

impl BlobCache {
    /// Open (creating it) the cache directory `dir`, keeping at most `max_bytes` in it:
    /// stale temporary files are removed and the index is rebuilt from the files there.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<BlobCache> {
        let context = |what: &str, e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "blob cache directory {}: {what}: {e} (check [storage.s3] cache_dir)",
                    dir.display()
                ),
            )
        };
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| context("cannot create it", e))?;
        for entry in std::fs::read_dir(&tmp).map_err(|e| context("cannot list tmp/", e))? {
            let entry = entry.map_err(|e| context("cannot list tmp/", e))?;
            // Fills cut short by a stop or crash: nothing refers to them.
            let _ = std::fs::remove_file(entry.path());
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| context("cannot list it", e))? {
            let entry = entry.map_err(|e| context("cannot list it", e))?;
            let Some((digest, size)) = entry.file_name().to_str().and_then(parse_name) else {
                continue; // tmp/ and anything not ours
            };
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if meta.len() != size {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            found.push((mtime, digest, size));
        }
        found.sort_by_key(|(mtime, _, _)| *mtime);
        let cache = BlobCache {
            dir: dir.to_owned(),
            tmp,
            max_bytes,
            index: Mutex::new(Index::default()),
            next_token: AtomicU64::new(1),
        };
        {
            let mut index = cache.lock();
            for (_, digest, size) in found {
                index.tick += 1;
                let tick = index.tick;
                index.used += size;
                index.order.insert(tick, digest.clone());
                index.entries.insert(
                    digest,
                    Entry {
                        size,
                        tick,
                        verified: false,
                    },
                );
            }
            cache.evict(&mut index, 0);
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path(&self, digest: &Digest, size: u64) -> PathBuf {
        self.dir.join(file_name(digest, size))
    }

    /// Bytes held in cached files (fills in progress not counted).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    /// Whether `digest` is cached.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().entries.contains_key(digest)
    }

    /// Evict least recently used files until `incoming` more bytes fit.
    fn evict(&self, index: &mut Index, incoming: u64) {
        while index.used + index.reserved + incoming > self.max_bytes {
            let Some((_, digest)) = index.order.pop_first() else {
                break;
            };
            if let Some(e) = index.entries.remove(&digest) {
                index.used -= e.size;
                // Unlinking keeps the bytes of a response still reading it.
                let _ = std::fs::remove_file(self.path(&digest, e.size));
            }
        }
    }

    /// Drop `digest` from the cache (its blob was deleted, or its file is bad), and make a
    /// fill in progress of it finish without installing its file.
    pub fn remove(&self, digest: &Digest) {
        let mut index = self.lock();
        index.filling.remove(digest);
        if let Some(size) = index.forget(digest) {
            let _ = std::fs::remove_file(self.path(digest, size));
        }
    }

    /// The cached bytes of `range` of `digest` (whole blob when `None`), as
    /// `(chunks, len, total)`; `None` when they must come from the bucket: not cached, the
    /// file has the wrong length (then it is discarded), or a partial range of a file
    /// not yet verified by this process.
    pub async fn read(
        self: &Arc<Self>,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Option<(ByteStream, u64, u64)> {
        let (size, verified) = {
            let index = self.lock();
            let e = index.entries.get(digest)?;
            (e.size, e.verified)
        };
        if size == 0 {
            return None;
        }
        let (start, end) = match range {
            None => (0, size - 1),
            Some((s, e)) if s > e || e >= size => return None, // the bucket reports it
            Some(r) => r,
        };
        let whole = start == 0 && end == size - 1;
        if !verified && !whole {
            return None;
        }
        let path = self.path(digest, size);
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
        })
        .await;
        let file = match opened {
            Ok(Ok((file, len))) if len == size => file,
            Ok(Ok((_, len))) => {
                tracing::warn!(%digest, len, size, "cached blob file has the wrong length; discarding it");
                self.remove(digest);
                return None;
            }
            _ => {
                self.remove(digest);
                return None;
            }
        };
        self.lock().touch(digest);
        let file = Arc::new(file);
        let check = (!verified).then(|| Hasher::new(digest.algorithm()));
        let (cache, digest) = (self.clone(), digest.clone());
        let chunks = futures_util::stream::try_unfold((start, check), move |(pos, check)| {
            let (file, cache, digest) = (file.clone(), cache.clone(), digest.clone());
            async move {
                if pos > end {
                    if let Some(hasher) = check {
                        let actual = hasher.finish();
                        if actual != digest {
                            tracing::warn!(%digest, %actual, "cached blob file is corrupt; discarded");
                            cache.remove(&digest);
                            return Err(std::io::Error::other(format!(
                                "the locally cached copy of blob {digest} was corrupt \
                                     (discarded); retry to read it from the bucket"
                            )));
                        }
                        if let Some(e) = cache.lock().entries.get_mut(&digest) {
                            e.verified = true;
                        }
                    }
                    return Ok(None);
                }
                let n = (end + 1 - pos).min(WINDOW);
                let (chunk, check) = tokio::task::spawn_blocking(move || {
                    // SAFETY of the mapping: files in the cache directory are Berth's own and
                    // immutable (written under `tmp/`, renamed into place once complete, never
                    // opened for writing again; eviction unlinks them).
                    let chunk = crate::fs::read_window(&file, pos, n)?;
                    let check = check.map(|mut h| {
                        h.update(&chunk);
                        h
                    });
                    Ok::<_, std::io::Error>((chunk, check))
                })
                .await
                .map_err(std::io::Error::other)??;
                Ok(Some((chunk, (pos + n, check))))
            }
        });
        Some((Box::pin(chunks), end - start + 1, size))
    }

    /// Start filling the cache with `digest` (of `size` bytes) from `stream`, the whole
    /// blob on its way to a client: returns the stream to send instead, which yields the
    /// same chunks. `stream` itself when no fill starts (one already runs for this blob,
    /// [`MAX_FILLS`] run, or the blob cannot fit).
    pub fn fill(self: &Arc<Self>, digest: &Digest, size: u64, stream: ByteStream) -> ByteStream {
        if size == 0 || size > self.max_bytes {
            return stream;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        {
            let mut index = self.lock();
            if index.entries.contains_key(digest)
                || index.filling.contains_key(digest)
                || index.filling.len() >= MAX_FILLS
            {
                return stream;
            }
            self.evict(&mut index, size);
            index.reserved += size;
            index.filling.insert(digest.clone(), token);
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            cache: self.clone(),
            digest: digest.clone(),
            size,
            token,
            pending: pending.clone(),
        };
        tokio::task::spawn_blocking(move || writer.run(rx));
        Box::pin(Tee {
            inner: stream,
            tx: Some(tx),
            pending,
        })
    }
}

enum Msg {
    Data(Bytes),
    /// The client's read reached the end of the blob.
    End,
}

/// The client's stream, handing each chunk to the cache writer on the way.
struct Tee {
    inner: ByteStream,
    tx: Option<tokio::sync::mpsc::UnboundedSender<Msg>>,
    pending: Arc<AtomicUsize>,
}

impl Stream for Tee {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.poll_next_unpin(cx));
        match &item {
            Some(Ok(chunk)) => {
                let keep = match &self.tx {
                    Some(tx) => {
                        let behind = self.pending.fetch_add(chunk.len(), Ordering::AcqRel);
                        // Past the bound the disk is slower than the client: drop the fill.
                        behind + chunk.len() <= FILL_BUFFER
                            && tx.send(Msg::Data(chunk.clone())).is_ok()
                    }
                    None => true,
                };
                if !keep {
                    self.tx = None;
                }
            }
            Some(Err(_)) => self.tx = None,
            None => {
                if let Some(tx) = self.tx.take() {
                    let _ = tx.send(Msg::End);
                }
            }
        }
        std::task::Poll::Ready(item)
    }
}

/// Writes one fill to `tmp/` on a blocking thread and installs it when it is the blob.
struct Writer {
    cache: Arc<BlobCache>,
    digest: Digest,
    size: u64,
    token: u64,
    pending: Arc<AtomicUsize>,
}

impl Writer {
    fn run(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Msg>) {
        let tmp = self.cache.tmp.join(uuid::Uuid::new_v4().to_string());
        let outcome = self.write(&tmp, &mut rx);
        drop(rx);
        let mut index = self.cache.lock();
        index.reserved -= self.size;
        let ours = index.filling.get(&self.digest) == Some(&self.token);
        if ours {
            index.filling.remove(&self.digest);
        }
        match outcome {
            Ok(true) if ours => {
                let path = self.cache.path(&self.digest, self.size);
                match std::fs::rename(&tmp, &path) {
                    Ok(()) => {
                        self.cache.evict(&mut index, self.size);
                        index.tick += 1;
                        let tick = index.tick;
                        index.used += self.size;
                        index.order.insert(tick, self.digest.clone());
                        index.entries.insert(
                            self.digest.clone(),
                            Entry {
                                size: self.size,
                                tick,
                                verified: false,
                            },
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(digest = %self.digest, error = %e, "cannot install a cached blob")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, dir = %self.cache.dir.display(), "blob cache fill failed")
            }
        }
        drop(index);
        let _ = std::fs::remove_file(&tmp);
    }

    /// Write the fill; `Ok(true)` when the whole blob arrived (its size; the hash is checked
    /// by the first read of the file, see the module docs).
    fn write(
        &self,
        tmp: &Path,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Msg>,
    ) -> std::io::Result<bool> {
        let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(tmp)?);
        let mut written = 0u64;
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Data(chunk) => {
                    written += chunk.len() as u64;
                    if written > self.size {
                        return Ok(false);
                    }
                    file.write_all(&chunk)?;
                    self.pending.fetch_sub(chunk.len(), Ordering::AcqRel);
                }
                Msg::End => {
                    file.flush()?;
                    let complete = written == self.size;
                    if !complete {
                        tracing::warn!(digest = %self.digest, written, size = self.size, "bytes read from the bucket are not the blob's size; not cached");
                    }
                    return Ok(complete);
                }
            }
        }
        Ok(false) // the client went away or the fill was abandoned
    }
}
