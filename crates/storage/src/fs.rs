//! [`BlobStore`] on the local filesystem.
//!
//! ```text
//! ROOT/
//! ├── blobs/                        committed blobs: complete, verified, fsynced, immutable
//! │   ├── sha256/
//! │   │   └── e3/                   first two hex characters of the digest
//! │   │       └── e3b0c442…b855     the blob, named by its full hex digest
//! │   └── sha512/
//! │       └── cf/
//! │           └── cf83e135…927e
//! └── uploads/                      upload sessions in progress
//!     └── 3f2b9c1e-…-…              bytes received so far (name = UUID v4 session id)
//! ```
//!
//! Upload flow:
//! - `start_upload` creates an empty `uploads/<id>` file.
//! - `append` streams the body into that file in 1 MiB writes, hashing (SHA-256) as it
//!   writes, in a three-stage pipeline (receive / copy+hash / write, see `Pipeline`).
//!   Aligned 1 MiB writes use `O_DIRECT` where the filesystem supports it (no page-cache
//!   copy; set `BERTH_NO_DIRECT_IO` to always write through the page cache). The running
//!   `(size, hasher)` of every session lives in memory; when it is missing (after a
//!   restart, after an append was abandoned mid-write, or after a failed write) it is
//!   re-derived by re-hashing the file, so the state never disagrees with the bytes on disk.
//! - `finish_upload` fsyncs the file, checks the digest and commits it with
//!   `hard_link(uploads/<id>, blobs/<alg>/<xx>/<hex>)`: atomic, and it never replaces an
//!   existing blob (if the digest is already stored, the stored blob wins). The upload file
//!   is then removed and the blob's directory fsynced.
//!
//! Session ids are validated (`[A-Za-z0-9-]{1,64}`) before they touch a path.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_proto::{Algorithm, Digest, Hasher};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;

use crate::blob::{BlobChunks, BlobReader, BlobStore, ByteStream, UploadId, UploadState};
use crate::{StorageError, StorageResult};

/// Size of one write to an upload file (bytes are gathered up to this before writing).
const WRITE_BUFFER: usize = 1 << 20;
/// Alignment (memory, file offset, length) of the writes that bypass the page cache;
/// a multiple of every logical block size in use.
const ALIGN: usize = 4096;
/// Read buffer when re-hashing an upload file.
const HASH_BUFFER: usize = 1 << 20;
/// Bytes of a blob mapped at a time when sending it (see `open_chunks`).
const MAP_WINDOW: u64 = 2 << 20;
/// Bytes asked of the device at a time when a fresh push is read back into the page cache
/// and ahead of a pull.
const READ_BACK: u64 = 8 << 20;
/// Below this, a window is read with `pread` rather than mapped.
const MIN_MAP: u64 = 256 << 10;
/// Longest accepted upload id.
const MAX_ID_LEN: usize = 64;

/// Bytes received by a session and the SHA-256 state over exactly those bytes.
struct Progress {
    size: u64,
    hasher: Hasher,
}

/// Per-session lock; `None` means "not known in memory: re-derive from the file".
type Slot = Arc<tokio::sync::Mutex<Option<Progress>>>;
type SlotGuard = OwnedMutexGuard<Option<Progress>>;

/// Content-addressed blobs and resumable uploads in a directory tree (see the module docs).
pub struct FsBlobStore {
    root: PathBuf,
    blobs: PathBuf,
    uploads: PathBuf,
    sessions: Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for FsBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBlobStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl FsBlobStore {
    /// Open (creating if needed) a blob store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> StorageResult<FsBlobStore> {
        let root = root.into();
        let blobs = root.join("blobs");
        let uploads = root.join("uploads");
        let (b, u, r) = (blobs.clone(), uploads.clone(), root.clone());
        blocking(move || {
            for alg in [Algorithm::Sha256, Algorithm::Sha512] {
                std::fs::create_dir_all(b.join(alg.as_str()))?;
            }
            std::fs::create_dir_all(&u)?;
            sync_dir(&b)?;
            sync_dir(&r)?;
            Ok(())
        })
        .await?;
        Ok(FsBlobStore {
            root,
            blobs,
            uploads,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Open a committed blob and resolve `range`: `(file, start, len, total)`, the file
    /// positioned at `start`.
    async fn open_range(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> StorageResult<(std::fs::File, u64, u64, u64)> {
        let path = self.blob_path(digest);
        let unknown = digest.clone();
        blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StorageError::BlobUnknown(unknown));
                }
                Err(e) => return Err(e.into()),
            };
            let total = file.metadata()?.len();
            let (start, len) = match range {
                None => (0, total),
                Some((start, end)) => {
                    if start > end || end >= total {
                        return Err(StorageError::SizeInvalid(format!(
                            "range {start}-{end} is outside the blob's {total} bytes"
                        )));
                    }
                    (start, end - start + 1)
                }
            };
            if start > 0 {
                file.seek(SeekFrom::Start(start))?;
            }
            Ok((file, start, len, total))
        })
        .await
    }

    /// Delete upload sessions whose file has not been written for `older_than`.
    /// Sessions busy with a request are skipped. Returns how many were removed.
    pub async fn purge_stale_uploads(&self, older_than: Duration) -> StorageResult<usize> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let dir = self.uploads.clone();
        let candidates = blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if !valid_id(&name) {
                    continue;
                }
                match entry.metadata().and_then(|m| m.modified()) {
                    Ok(modified) if modified < cutoff => out.push(name),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(out)
        })
        .await?;

        let mut removed = 0;
        for id in candidates {
            let slot = self.slot(&id);
            let Ok(mut guard) = slot.clone().try_lock_owned() else {
                continue; // a request is using it right now
            };
            let path = self.upload_path(&id);
            // Re-check under the session lock: an append may have just touched it.
            let gone = blocking(move || match std::fs::metadata(&path) {
                Ok(meta) if meta.modified()? < cutoff => match std::fs::remove_file(&path) {
                    Ok(()) => Ok(Some(true)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(false)),
                    Err(e) => Err(e.into()),
                },
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(false)),
                Err(e) => Err(e.into()),
            })
            .await?;
            if let Some(removed_now) = gone {
                *guard = None;
                drop(guard);
                self.forget(&id, &slot);
                if removed_now {
                    removed += 1;
                    tracing::debug!(upload = %id, "purged stale upload");
                }
            }
        }
        Ok(removed)
    }

    /// The ids of the upload files in `uploads/` (start-up reconciliation with the
    /// metadata: a file no session owns is removed with [`BlobStore::cancel_upload`]).
    pub async fn upload_file_ids(&self) -> StorageResult<Vec<String>> {
        let dir = self.uploads.clone();
        blocking(move || {
            let mut out = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                if let Ok(name) = entry?.file_name().into_string()
                    && valid_id(&name)
                {
                    out.push(name);
                }
            }
            Ok(out)
        })
        .await
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        self.uploads.join(id)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// The lock of session `id` (created empty if not in memory).
    fn slot(&self, id: &str) -> Slot {
        let mut map = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(id.to_owned()).or_default().clone()
    }

    /// Drop the in-memory entry of a session that no longer exists on disk.
    fn forget(&self, id: &str, slot: &Slot) {
        let mut map = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            map.remove(id);
        }
    }

    /// Lock session `id` and make sure its progress is known (re-hashing the file if needed).
    async fn lock_session(&self, id: &str) -> StorageResult<(Slot, SlotGuard)> {
        if !valid_id(id) {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        let slot = self.slot(id);
        let mut guard = slot.clone().lock_owned().await;
        if guard.is_none() {
            let path = self.upload_path(id);
            match blocking(move || Ok(hash_file(&path, Algorithm::Sha256)?)).await {
                Ok((size, hasher)) => *guard = Some(Progress { size, hasher }),
                Err(StorageError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    drop(guard);
                    self.forget(id, &slot);
                    return Err(StorageError::UploadUnknown(id.to_owned()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((slot, guard))
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> StorageResult<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn open(&self, digest: &Digest, range: Option<(u64, u64)>) -> StorageResult<BlobReader> {
        let (file, _start, len, total) = self.open_range(digest, range).await?;
        let reader = tokio::fs::File::from_std(file).take(len);
        Ok(BlobReader {
            reader: Box::pin(reader),
            len,
            total,
        })
    }

    /// Blobs are sent from memory maps of their files, `MAP_WINDOW` bytes at a time, each
    /// window mapped and faulted in (`MAP_POPULATE`) on the blocking pool. The bytes then go
    /// from the page cache straight into TLS records: no read into a buffer first, which
    /// was a fifth of the server's CPU on a pull. Small ranges are read with `pread`.
    async fn open_chunks(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> StorageResult<BlobChunks> {
        let (file, start, len, total) = self.open_range(digest, range).await?;
        let file = Arc::new(file);
        let end = start + len;
        let chunks = futures_util::stream::try_unfold(start, move |pos| {
            let file = file.clone();
            async move {
                if pos >= end {
                    return Ok(None);
                }
                let n = (end - pos).min(MAP_WINDOW);
                let chunk = tokio::task::spawn_blocking(move || {
                    // Keep the device busy a block ahead of this window: a blob not (or no
                    // longer) in the page cache, such as a fresh push whose read-back lagged,
                    // is then read in large asynchronous requests instead of one synchronous
                    // fault per page of each window. Asked once per READ_BACK block (the
                    // current one too at the start); resident pages cost a look-up.
                    let block = pos / READ_BACK;
                    if pos == start {
                        let to = ((block + 1) * READ_BACK).min(end);
                        read_back_soon(&file, pos, (to - pos) as usize);
                    }
                    if pos == start || (pos + n) / READ_BACK > block {
                        let from = (block + 1) * READ_BACK;
                        if from < end {
                            let len = READ_BACK.min(end - from);
                            read_back_soon(&file, from, len as usize);
                        }
                    }
                    read_window(&file, pos, n)
                })
                .await
                .map_err(std::io::Error::other)??;
                Ok(Some((chunk, pos + n)))
            }
        });
        Ok(BlobChunks {
            chunks: Box::pin(chunks),
            len,
            total,
        })
    }

    /// A hard link to the caller's file, once synced: no byte copied or hashed again. On
    /// another filesystem (`EXDEV`) the caller uploads the bytes instead.
    async fn adopt_file(&self, path: &Path, digest: &Digest, size: u64) -> StorageResult<bool> {
        let (path, blob, digest) = (path.to_owned(), self.blob_path(digest), digest.clone());
        blocking(move || {
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            if len != size {
                return Err(StorageError::SizeInvalid(format!(
                    "{} holds {len} bytes, not the {size} of blob {digest}",
                    path.display()
                )));
            }
            file.sync_all()?;
            match link_into_place(&path, &blob) {
                Ok(()) => Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn start_upload(&self) -> StorageResult<UploadId> {
        let id = uuid::Uuid::new_v4().to_string();
        let path = self.upload_path(&id);
        blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            Ok(())
        })
        .await?;
        let progress = Progress {
            size: 0,
            hasher: Hasher::new(Algorithm::Sha256),
        };
        let slot = Arc::new(tokio::sync::Mutex::new(Some(progress)));
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), slot);
        Ok(id)
    }

    async fn upload_state(&self, id: &str) -> StorageResult<UploadState> {
        let (_slot, guard) = self.lock_session(id).await?;
        let size = guard.as_ref().map_or(0, |p| p.size);
        Ok(UploadState {
            id: id.to_owned(),
            size,
        })
    }

    async fn append(
        &self,
        id: &str,
        offset: Option<u64>,
        mut body: ByteStream,
        limit: u64,
    ) -> StorageResult<UploadState> {
        let (slot, mut guard) = self.lock_session(id).await?;
        // Taken out: if this future is dropped mid-way the state is re-derived from disk.
        let Some(progress) = guard.take() else {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        };
        if let Some(given) = offset
            && given != progress.size
        {
            let expected = progress.size;
            *guard = Some(progress);
            return Err(StorageError::OutOfOrder { expected, given });
        }
        let path = self.upload_path(id);
        let opened = blocking(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            // Aligned 1 MiB writes bypass the page cache when the filesystem allows it
            // (see `UploadFile`); anything else keeps to the buffered descriptor.
            let direct = open_direct(&path);
            Ok(UploadFile { file, direct })
        })
        .await;
        let file = match opened {
            Ok(file) => file,
            Err(StorageError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                drop(guard);
                self.forget(id, &slot);
                return Err(StorageError::UploadUnknown(id.to_owned()));
            }
            Err(e) => {
                *guard = Some(progress);
                return Err(e);
            }
        };

        let start = progress.size;
        let Progress { size, hasher } = progress;
        let start_hasher = hasher.clone();
        let mut pipeline = Pipeline::new(
            SessionWriter {
                file,
                size,
                consistent: true,
                guard,
            },
            hasher,
        );
        let mut accepted = start; // written + in flight + batched
        let mut batch = Batch::default();
        // Each batch is sized so that its write ends on an alignment boundary of the file.
        let mut room = buffer_room(start);
        let outcome: StorageResult<()> = 'recv: loop {
            let mut chunk = match body.next().await {
                None => break Ok(()),
                Some(Err(e)) => break Err(StorageError::Body(e.to_string())),
                Some(Ok(chunk)) => chunk,
            };
            let len = chunk.len() as u64;
            if len > limit.saturating_sub(accepted) {
                break Err(StorageError::SizeInvalid(format!(
                    "upload exceeds the limit of {limit} bytes"
                )));
            }
            accepted += len;
            while !chunk.is_empty() {
                let n = (room - batch.len).min(chunk.len());
                batch.push(chunk.split_to(n));
                if batch.len == room {
                    if let Err(e) = pipeline.submit(std::mem::take(&mut batch)).await {
                        break 'recv Err(e);
                    }
                    room = WRITE_BUFFER;
                }
            }
        };
        // Bytes received before a client-side failure are kept (the state stays consistent
        // with the file, and the client can resume from `upload_state`).
        let outcome = match outcome {
            Ok(()) | Err(StorageError::Body(_) | StorageError::SizeInvalid(_)) => {
                let flushed = if batch.len == 0 {
                    Ok(())
                } else {
                    pipeline.submit(batch).await
                };
                let settled = pipeline.settle().await;
                outcome.and(flushed).and(settled)
            }
            Err(e) => {
                let _ = pipeline.settle().await;
                Err(e)
            }
        };
        let (WriteStage::Idle(writer), HashStage::Idle(hasher)) = (pipeline.write, pipeline.hash)
        else {
            // A writer or hasher task died: the lock is (or will be) released with the
            // state unknown, so the next request re-derives it from disk.
            return Err(outcome.err().unwrap_or_else(|| {
                StorageError::Io(std::io::Error::other("upload writer task failed"))
            }));
        };
        let SessionWriter {
            file,
            size,
            mut guard,
            ..
        } = *writer;
        let outcome = match outcome {
            Err(StorageError::Full(msg)) => {
                // Out of space: keep only what earlier requests acknowledged, so the bytes
                // of this request stop holding space and the client can resume (or cancel)
                // from the offset it was last told. (`ftruncate` to a smaller size does
                // not wait for the device.)
                if file.file.set_len(start).is_ok() {
                    *guard = Some(Progress {
                        size: start,
                        hasher: start_hasher,
                    });
                }
                return Err(StorageError::Full(msg));
            }
            other => other,
        };
        // The hasher runs ahead of the file by up to one buffer, so it describes the file
        // only if every write succeeded; otherwise the next request re-derives the state.
        if pipeline.all_written {
            *guard = Some(Progress {
                size,
                hasher: *hasher,
            });
        }
        outcome.map(|()| UploadState {
            id: id.to_owned(),
            size,
        })
    }

    async fn finish_upload(&self, id: &str, expected: &Digest) -> StorageResult<u64> {
        let (slot, mut guard) = self.lock_session(id).await?;
        let Some(progress) = guard.take() else {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        };
        let upload = self.upload_path(id);
        let blob = self.blob_path(expected);
        let expected = expected.clone();
        let committed = blob.clone();
        let result = blocking(move || commit(&upload, &blob, progress, &expected)).await;
        if result.is_ok() {
            // After the answer, not during the push: see `read_back_file`.
            tokio::task::spawn_blocking(move || read_back_file(&committed));
        }
        match result {
            Ok(_) | Err(StorageError::DigestMismatch { .. }) => {
                // The session is over either way (its file is gone).
                drop(guard);
                self.forget(id, &slot);
            }
            // Anything else: the file is still there and the state is re-derived next time.
            Err(_) => {}
        }
        result
    }

    async fn cancel_upload(&self, id: &str) -> StorageResult<()> {
        if !valid_id(id) {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        let slot = self.slot(id);
        let mut guard = slot.clone().lock_owned().await;
        let path = self.upload_path(id);
        let removed = tokio::fs::remove_file(&path).await;
        *guard = None;
        drop(guard);
        match removed {
            Ok(()) => {
                self.forget(id, &slot);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(id, &slot);
                Err(StorageError::UploadUnknown(id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, digest: &Digest) -> StorageResult<()> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StorageError::BlobUnknown(digest.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn purge_stale_uploads(&self, older_than: Duration) -> StorageResult<usize> {
        FsBlobStore::purge_stale_uploads(self, older_than).await
    }
}

/// The descriptors of an upload file being appended to.
///
/// `direct` (opened with `O_DIRECT`, when the platform and filesystem support it) takes
/// the writes that are aligned in memory, in file offset and in length: the whole 1 MiB
/// buffers of a large upload. They go from the buffer to the device without a copy into
/// the page cache, which is most of the CPU cost of a buffered write, and the final fsync
/// has little left to flush. Unaligned writes (the tail of an append, the head of an
/// append resumed at an unaligned offset) use the ordinary buffered `file`; the kernel
/// keeps both views of the file coherent, and `commit` fsyncs it all before it is visible.
struct UploadFile {
    file: std::fs::File,
    direct: Option<std::fs::File>,
}

/// An open upload file with the session lock held; moved into blocking write tasks, so
/// the lock is held until the last write has finished even if the request is abandoned.
struct SessionWriter {
    file: UploadFile,
    /// Bytes in the file (the consistent prefix); writes go at this offset.
    size: u64,
    /// False if a failed write could not be rolled back (state must be re-derived).
    consistent: bool,
    guard: SlotGuard,
}

impl SessionWriter {
    /// Write `data` at the end of the consistent prefix; on failure roll the file back so
    /// that `size` still describes it exactly. (Hashing is done by the caller, after.)
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        let result = self.write_at_end(data);
        match result {
            Ok(()) => {
                self.size += data.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self.file.file.set_len(self.size).is_err() {
                    self.consistent = false;
                }
                Err(e)
            }
        }
    }

    fn write_at_end(&mut self, data: &[u8]) -> std::io::Result<()> {
        let offset = self.size;
        if let Some(direct) = &self.file.direct
            && is_aligned(offset, data)
        {
            match direct.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // The filesystem refused direct I/O after all (or a short write left the
                // rest unaligned): rewrite the whole range through the page cache.
                Err(e) if e.raw_os_error() == Some(EINVAL) => self.file.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.file.file.write_all_at(data, offset)
    }
}

/// Read a blob just committed back into the page cache, in the background (one request
/// per `READ_BACK` block). Direct writes skip the page cache (its copy was half the push
/// CPU), so the first pull of a fresh push — the seed's "push, then the cluster pulls" —
/// would otherwise fault every page in from the device through the memory maps, at a third
/// of the speed of a warm pull. It starts once the push is answered: read back while the
/// client was still sending (each 8 MiB block as its writes completed), it shared the
/// device with the push's own writes and held the push to the device's pace (the write
/// stage busy 1.4–2.0 s per GiB instead of 0.8–1.1; BENCHMARKS.md, session 10). A pull
/// that starts at once reads right behind it.
fn read_back_file(path: &Path) {
    let Ok(file) = std::fs::File::open(path) else {
        return; // collected meanwhile
    };
    let size = file.metadata().map_or(0, |m| m.len());
    let mut from = 0;
    while from < size {
        let len = READ_BACK.min(size - from);
        read_back_soon(&file, from, len as usize);
        from += len;
    }
}

/// Ask the kernel to read a range into the page cache, asynchronously (best effort: the
/// kernel may drop readahead when memory or the device is short).
fn read_back_soon(file: &std::fs::File, offset: u64, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len))
        else {
            return;
        };
        // SAFETY: posix_fadvise only reads its integer arguments; a failure is harmless
        // (the pages are then read on first use, as before).
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Body bytes for one write, as received (no copy yet).
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }
}

type WriteResult = (Box<SessionWriter>, AlignedBuf, std::io::Result<()>);

enum WriteStage {
    Idle(Box<SessionWriter>),
    Busy(JoinHandle<WriteResult>),
    Lost,
}

enum HashStage {
    Idle(Box<Hasher>),
    Busy(JoinHandle<(Box<Hasher>, AlignedBuf)>),
    Lost,
}

/// Receive → copy and hash → write, each stage on its own buffer and thread: while buffer
/// `n` is written (one blocking task), batch `n + 1` is copied into an aligned buffer and
/// hashed in the same pass (another), and batch `n + 2` is received on the async side.
/// Per upload: two aligned buffers and up to two batches of received chunks, ≈ 4 MiB.
///
/// The hasher is ahead of the file by at most the buffer being written; when every write
/// has succeeded (`all_written`) the two describe exactly the same bytes.
struct Pipeline {
    write: WriteStage,
    hash: HashStage,
    /// Aligned buffer that the next hash task fills (recycled from the writer).
    spare: Option<AlignedBuf>,
    /// The last write task's buffer is in the file (false after a write error).
    all_written: bool,
}

impl Pipeline {
    fn new(writer: SessionWriter, hasher: Hasher) -> Pipeline {
        Pipeline {
            write: WriteStage::Idle(Box::new(writer)),
            hash: HashStage::Idle(Box::new(hasher)),
            spare: None,
            all_written: true,
        }
    }

    /// Wait for the write in flight, keeping its buffer for reuse.
    async fn settle_write(&mut self) -> StorageResult<()> {
        match std::mem::replace(&mut self.write, WriteStage::Lost) {
            WriteStage::Idle(w) => {
                self.write = WriteStage::Idle(w);
                Ok(())
            }
            WriteStage::Busy(handle) => match handle.await {
                Ok((w, buf, result)) => {
                    self.write = WriteStage::Idle(w);
                    self.spare = Some(buf);
                    if result.is_err() {
                        self.all_written = false;
                    }
                    Ok(result?)
                }
                Err(e) => Err(task_failed("writer", e)),
            },
            WriteStage::Lost => Err(task_failed("writer", "lost")),
        }
    }

    /// Wait for the copy-and-hash in flight; returns the buffer it filled.
    async fn settle_hash(&mut self) -> StorageResult<Option<AlignedBuf>> {
        match std::mem::replace(&mut self.hash, HashStage::Lost) {
            HashStage::Idle(h) => {
                self.hash = HashStage::Idle(h);
                Ok(None)
            }
            HashStage::Busy(handle) => match handle.await {
                Ok((h, buf)) => {
                    self.hash = HashStage::Idle(h);
                    Ok(Some(buf))
                }
                Err(e) => Err(task_failed("hasher", e)),
            },
            HashStage::Lost => Err(task_failed("hasher", "lost")),
        }
    }

    /// Start writing `buf` (once the previous write is done).
    async fn start_write(&mut self, buf: AlignedBuf) -> StorageResult<()> {
        self.settle_write().await?;
        let WriteStage::Idle(mut writer) = std::mem::replace(&mut self.write, WriteStage::Lost)
        else {
            return Err(task_failed("writer", "lost"));
        };
        self.write = WriteStage::Busy(tokio::task::spawn_blocking(move || {
            let result = writer.write(buf.as_slice());
            (writer, buf, result)
        }));
        Ok(())
    }

    /// Hand over a batch: the previous one goes to the writer, this one to the hasher.
    async fn submit(&mut self, batch: Batch) -> StorageResult<()> {
        if let Some(filled) = self.settle_hash().await? {
            self.start_write(filled).await?;
        }
        let HashStage::Idle(mut hasher) = std::mem::replace(&mut self.hash, HashStage::Lost) else {
            return Err(task_failed("hasher", "lost"));
        };
        let mut buf = self.spare.take().unwrap_or_else(AlignedBuf::new);
        self.hash = HashStage::Busy(tokio::task::spawn_blocking(move || {
            buf.clear();
            for chunk in &batch.chunks {
                // One pass per chunk while it is in cache: copy it out, then hash it.
                buf.extend(chunk);
                hasher.update(chunk);
            }
            (hasher, buf)
        }));
        Ok(())
    }

    /// Wait until everything submitted is hashed and written (or failed).
    async fn settle(&mut self) -> StorageResult<()> {
        match self.settle_hash().await {
            Ok(Some(filled)) => self.start_write(filled).await?,
            Ok(None) => {}
            Err(e) => {
                let _ = self.settle_write().await;
                return Err(e);
            }
        }
        self.settle_write().await
    }
}

fn task_failed(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io(std::io::Error::other(format!(
        "upload {what} task failed: {e}"
    )))
}
/// A write buffer whose contents start on an `ALIGN` boundary in memory (for `O_DIRECT`).
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new() -> AlignedBuf {
        let raw = vec![0u8; WRITE_BUFFER + ALIGN];
        // If the pointer cannot be aligned, writes simply take the buffered path.
        let start = match raw.as_ptr().align_offset(ALIGN) {
            n if n < ALIGN => n,
            _ => 0,
        };
        AlignedBuf { raw, start, len: 0 }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    /// Append `data`; the caller keeps the total within `WRITE_BUFFER`.
    fn extend(&mut self, data: &[u8]) {
        let at = self.start + self.len;
        self.raw[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// How many bytes the buffer written at file offset `offset` may hold: `WRITE_BUFFER`,
/// less whatever it takes for it to end on an `ALIGN` boundary.
fn buffer_room(offset: u64) -> usize {
    WRITE_BUFFER - (offset % ALIGN as u64) as usize
}

/// Whether `data` written at `offset` qualifies for direct I/O.
fn is_aligned(offset: u64, data: &[u8]) -> bool {
    let align = ALIGN as u64;
    offset.is_multiple_of(align)
        && (data.len() as u64).is_multiple_of(align)
        && (data.as_ptr() as usize).is_multiple_of(ALIGN)
}

/// `EINVAL`, the same on every Linux architecture.
const EINVAL: i32 = 22;

/// `O_DIRECT` for `open(2)`: its value differs between architectures.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "x86", target_arch = "riscv64")
))]
const O_DIRECT: Option<i32> = Some(0o40000);
#[cfg(all(target_os = "linux", any(target_arch = "aarch64", target_arch = "arm")))]
const O_DIRECT: Option<i32> = Some(0o200000);
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "riscv64",
        target_arch = "aarch64",
        target_arch = "arm"
    )
)))]
const O_DIRECT: Option<i32> = None;

/// A second, page-cache-bypassing descriptor of `path`, if the filesystem supports it
/// (tmpfs, for one, may not: then every write is buffered).
fn open_direct(path: &Path) -> Option<std::fs::File> {
    if std::env::var_os("BERTH_NO_DIRECT_IO").is_some() {
        return None;
    }
    let flag = O_DIRECT?;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(flag)
        .open(path)
        .ok()
}

/// Verify an upload and move it into place (blocking).
fn commit(upload: &Path, blob: &Path, progress: Progress, expected: &Digest) -> StorageResult<u64> {
    let file = std::fs::File::open(upload)?;
    file.sync_all()?;
    let actual = match expected.algorithm() {
        Algorithm::Sha256 => progress.hasher.finish(),
        alg => hash_reader(file, alg)?.1.finish(),
    };
    if actual != *expected {
        std::fs::remove_file(upload)?;
        return Err(StorageError::DigestMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    link_into_place(upload, blob)?;
    std::fs::remove_file(upload)?;
    Ok(progress.size)
}

/// Make the synced, verified file `from` visible as `blob` (a hard link, its directory
/// synced); an existing blob (same verified digest) is kept.
fn link_into_place(from: &Path, blob: &Path) -> std::io::Result<()> {
    let parent = blob
        .parent()
        .ok_or_else(|| std::io::Error::other("blob path has no parent directory"))?;
    match std::fs::create_dir(parent) {
        Ok(()) => {
            if let Some(alg_dir) = parent.parent() {
                sync_dir(alg_dir)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    match std::fs::hard_link(from, blob) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    sync_dir(parent)
}

fn hash_file(path: &Path, algorithm: Algorithm) -> std::io::Result<(u64, Hasher)> {
    hash_reader(std::fs::File::open(path)?, algorithm)
}

fn hash_reader(mut reader: impl Read, algorithm: Algorithm) -> std::io::Result<(u64, Hasher)> {
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok((size, hasher)),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Whether `id` may name an upload file: `[A-Za-z0-9-]{1,64}`.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `n` bytes of an immutable file from offset `pos`, without copying when `n` is large.
/// Callers guarantee the file is never written again (see the SAFETY note below; the S3
/// read-through cache keeps its files to the same rule).
pub(crate) fn read_window(file: &std::fs::File, pos: u64, n: u64) -> std::io::Result<Bytes> {
    let len = usize::try_from(n).map_err(std::io::Error::other)?;
    if n < MIN_MAP {
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, pos)?;
        return Ok(Bytes::from(buf));
    }
    // SAFETY: committed blob files are immutable: written and fsynced under `uploads/`,
    // then hard-linked into `blobs/`, never opened for writing, truncated or rewritten
    // afterwards (garbage collection unlinks them, which keeps an open mapping valid). The
    // mapping is read-only and owned by the returned `Bytes`.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(pos)
            .len(len)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(map))
}

/// Run blocking filesystem work off the async threads.
async fn blocking<T, F>(f: F) -> StorageResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StorageResult<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(StorageError::Io(std::io::Error::other(format!(
            "blocking filesystem task failed: {e}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance;
    use bytes::Bytes;

    fn leftovers(root: &Path) -> impl Fn() -> Vec<String> + Sync + use<> {
        let dir = root.join("uploads");
        move || {
            std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        }
    }

    fn body(chunks: Vec<Vec<u8>>) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from(c))),
        ))
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// A verified download is taken as it is (a hard link, no copy); a file of the wrong
    /// size is refused and stores nothing; an existing blob is kept.
    #[tokio::test]
    async fn adopt_file_links_a_verified_download() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::open(dir.path()).await.expect("open");
        let bytes = data(3 << 20);
        let digest = Digest::sha256(&bytes);
        let staged = dir.path().join("staged");
        std::fs::write(&staged, &bytes).unwrap();
        let short = Digest::sha256(b"other");
        assert!(matches!(
            store.adopt_file(&staged, &short, 5).await,
            Err(StorageError::SizeInvalid(_))
        ));
        assert_eq!(store.stat(&short).await.unwrap(), None);
        assert!(
            store
                .adopt_file(&staged, &digest, bytes.len() as u64)
                .await
                .unwrap()
        );
        std::fs::remove_file(&staged).unwrap();
        assert_eq!(store.stat(&digest).await.unwrap(), Some(bytes.len() as u64));
        let mut got = Vec::new();
        store
            .open(&digest, None)
            .await
            .unwrap()
            .reader
            .read_to_end(&mut got)
            .await
            .unwrap();
        assert!(got == bytes);
        // Again, from another copy: the stored blob stays.
        std::fs::write(&staged, &bytes).unwrap();
        assert!(
            store
                .adopt_file(&staged, &digest, bytes.len() as u64)
                .await
                .unwrap()
        );
        assert_eq!(store.stat(&digest).await.unwrap(), Some(bytes.len() as u64));
    }

    #[tokio::test]
    async fn conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::open(dir.path()).await.expect("open");
        conformance::blob_store_suite(&store, &leftovers(dir.path())).await;
    }

    #[tokio::test]
    async fn upload_resumes_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = data(3 * WRITE_BUFFER + 17);
        let (first, rest) = all.split_at(WRITE_BUFFER + 5);
        let id = {
            let store = FsBlobStore::open(dir.path()).await.expect("open");
            let id = store.start_upload().await.expect("start");
            let state = store
                .append(&id, Some(0), body(vec![first.to_vec()]), u64::MAX)
                .await
                .expect("append");
            assert_eq!(state.size, first.len() as u64);
            id
        };
        // "Restart": a new store over the same directory, with no in-memory state.
        let store = FsBlobStore::open(dir.path()).await.expect("reopen");
        let state = store.upload_state(&id).await.expect("state after restart");
        assert_eq!(state.size, first.len() as u64);
        let err = store
            .append(&id, Some(0), body(vec![rest.to_vec()]), u64::MAX)
            .await
            .expect_err("stale offset");
        assert!(matches!(err, StorageError::OutOfOrder { .. }), "{err:?}");
        store
            .append(
                &id,
                Some(first.len() as u64),
                body(vec![rest.to_vec()]),
                u64::MAX,
            )
            .await
            .expect("resume");
        let digest = Digest::sha256(&all);
        let size = store.finish_upload(&id, &digest).await.expect("finish");
        assert_eq!(size, all.len() as u64);
        let mut reader = store.open(&digest, None).await.expect("open blob");
        let mut read = Vec::new();
        reader.reader.read_to_end(&mut read).await.expect("read");
        assert_eq!(read, all);
        assert!(leftovers(dir.path())().is_empty());
    }

    #[tokio::test]
    async fn killed_upload_never_becomes_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = data(2 * WRITE_BUFFER + 3);
        let digest = Digest::sha256(&all);
        {
            let store = FsBlobStore::open(dir.path()).await.expect("open");
            let id = store.start_upload().await.expect("start");
            // A body that stalls forever after its first chunk: the request is "killed" by
            // dropping the append future mid-stream.
            let head = Bytes::from(all[..WRITE_BUFFER + 100].to_vec());
            let stalled: ByteStream = Box::pin(
                futures_util::stream::iter([Ok(head)]).chain(futures_util::stream::pending()),
            );
            let append = store.append(&id, None, stalled, u64::MAX);
            let timed_out = tokio::time::timeout(Duration::from_millis(200), append).await;
            assert!(
                timed_out.is_err(),
                "append should still be waiting for the body"
            );
            assert_eq!(store.stat(&digest).await.expect("stat"), None);
            // The session is still consistent: re-derived from disk.
            let state = store.upload_state(&id).await.expect("state");
            assert!(state.size <= all.len() as u64);
            // Then the whole process goes away.
        }
        let store = FsBlobStore::open(dir.path()).await.expect("reopen");
        assert_eq!(store.stat(&digest).await.expect("stat"), None);
        assert!(matches!(
            store.open(&digest, None).await,
            Err(StorageError::BlobUnknown(_))
        ));
        let blobs: Vec<_> = walk(&dir.path().join("blobs"));
        assert!(blobs.is_empty(), "no blob files expected: {blobs:?}");
        // Abandoned upload files are purged.
        assert_eq!(leftovers(dir.path())().len(), 1);
        assert_eq!(
            store
                .purge_stale_uploads(Duration::ZERO)
                .await
                .expect("purge"),
            1
        );
        assert!(leftovers(dir.path())().is_empty());
    }

    #[tokio::test]
    async fn purge_keeps_recent_uploads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsBlobStore::open(dir.path()).await.expect("open");
        let id = store.start_upload().await.expect("start");
        assert_eq!(
            store
                .purge_stale_uploads(Duration::from_secs(3600))
                .await
                .expect("purge"),
            0
        );
        assert_eq!(store.upload_state(&id).await.expect("state").size, 0);
        assert_eq!(
            store
                .purge_stale_uploads(Duration::ZERO)
                .await
                .expect("purge"),
            1
        );
        assert!(matches!(
            store.upload_state(&id).await,
            Err(StorageError::UploadUnknown(_))
        ));
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    out.extend(walk(&path));
                } else {
                    out.push(path);
                }
            }
        }
        out
    }
}
