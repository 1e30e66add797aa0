//! The blob-storage boundary: content-addressed bytes and upload sessions.

use std::pin::Pin;

use async_trait::async_trait;
use berth_proto::Digest;
use bytes::Bytes;
use futures_util::Stream;
use tokio::io::AsyncRead;

use crate::StorageResult;

/// A client body, chunk by chunk.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Identifier of an upload session (a UUID string; validated before it reaches a path).
pub type UploadId = String;

/// A readable blob or byte range of a blob.
pub struct BlobReader {
    /// Bytes of the requested range (or the whole blob).
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    /// Number of bytes `reader` will yield.
    pub len: u64,
    /// Size of the whole blob.
    pub total: u64,
}

/// A blob or byte range of a blob as chunks ready to send (see [`BlobStore::open_chunks`]).
pub struct BlobChunks {
    /// The bytes, in order, in chunks of the backend's choosing.
    pub chunks: ByteStream,
    /// Number of bytes `chunks` will yield.
    pub len: u64,
    /// Size of the whole blob.
    pub total: u64,
}

/// Chunk size of the default [`BlobStore::open_chunks`].
const DEFAULT_CHUNK: usize = 512 * 1024;

/// What is known about an upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadState {
    pub id: UploadId,
    /// Bytes received so far.
    pub size: u64,
}

/// Content-addressed blob storage with resumable uploads.
///
/// Implementations must never expose a blob before its bytes are complete, verified and
/// durable, and must never overwrite a stored blob.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of the blob, or `None` if it is not stored.
    async fn stat(&self, digest: &Digest) -> StorageResult<Option<u64>>;

    /// Read the blob, or the inclusive byte range `start..=end` of it.
    /// Errors: `BlobUnknown`; `SizeInvalid` when the range is outside the blob.
    async fn open(&self, digest: &Digest, range: Option<(u64, u64)>) -> StorageResult<BlobReader>;

    /// The same bytes as [`open`](Self::open), as a stream of chunks: what the server sends
    /// to a client. A backend that can hand out its bytes without copying them first (the
    /// filesystem store maps its immutable files) overrides this.
    async fn open_chunks(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> StorageResult<BlobChunks> {
        let blob = self.open(digest, range).await?;
        Ok(BlobChunks {
            chunks: Box::pin(tokio_util::io::ReaderStream::with_capacity(
                blob.reader,
                DEFAULT_CHUNK,
            )),
            len: blob.len,
            total: blob.total,
        })
    }

    /// Start a new upload session and return its id.
    async fn start_upload(&self) -> StorageResult<UploadId>;

    /// Current state of an upload; `UploadUnknown` if there is none with that id.
    /// Must work after a process restart (state is re-derived from what is on disk).
    async fn upload_state(&self, id: &str) -> StorageResult<UploadState>;

    /// Append `body` to the upload. `offset`, when given, must equal the bytes already
    /// received (`OutOfOrder` otherwise). At most `limit` bytes are accepted in total
    /// for the session (`SizeInvalid` past that). Returns the new state.
    async fn append(
        &self,
        id: &str,
        offset: Option<u64>,
        body: ByteStream,
        limit: u64,
    ) -> StorageResult<UploadState>;

    /// Verify the upload against `expected` (any supported algorithm) and commit it.
    /// On mismatch: `DigestMismatch`, and the session and its bytes are removed.
    /// If the blob already exists the verified upload is discarded, the stored one kept.
    /// Returns the size of the committed blob.
    async fn finish_upload(&self, id: &str, expected: &Digest) -> StorageResult<u64>;

    /// Store the file at `path` as blob `digest` of `size` bytes without copying it, when
    /// the backend can (`Ok(false)` when it cannot: the caller then uploads the bytes).
    /// The caller vouches that the file holds exactly the blob — it hashed the bytes as it
    /// wrote them (the proxy cache's verified download) — and never writes it again; the
    /// store makes it durable and checks its size. An existing blob is kept.
    async fn adopt_file(
        &self,
        path: &std::path::Path,
        digest: &Digest,
        size: u64,
    ) -> StorageResult<bool> {
        let _ = (path, digest, size);
        Ok(false)
    }

    /// Abandon an upload and delete its bytes; `UploadUnknown` if there is none.
    async fn cancel_upload(&self, id: &str) -> StorageResult<()>;

    /// Delete a stored blob (garbage collection / content management);
    /// `BlobUnknown` if absent.
    async fn delete(&self, digest: &Digest) -> StorageResult<()>;

    /// A short-lived URL a client may download the blob from directly (a pre-signed
    /// object-store URL), when the backend is configured to redirect blob GETs; `None` to
    /// have the server send the bytes itself. `BlobUnknown` if the blob is not stored.
    async fn redirect_url(&self, digest: &Digest) -> StorageResult<Option<String>> {
        let _ = digest;
        Ok(None)
    }

    /// Delete upload sessions (and everything they stored) untouched for `older_than`;
    /// sessions busy with a request are skipped. Returns how many were removed. The
    /// default is for a backend that keeps no upload state of its own.
    async fn purge_stale_uploads(&self, older_than: std::time::Duration) -> StorageResult<usize> {
        let _ = older_than;
        Ok(0)
    }
}
