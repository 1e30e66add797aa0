//! The one error type of the storage layer; the server maps each variant to an OCI error code.

use berth_proto::Digest;

pub type StorageResult<T> = Result<T, StorageError>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The blob is not in the store.
    #[error("blob {0} is not known to this registry")]
    BlobUnknown(Digest),
    /// No upload session with this id (never started, finished, cancelled or expired).
    #[error(
        "upload {0} is not known (it may have finished, been cancelled or expired); start a new upload"
    )]
    UploadUnknown(String),
    /// The uploaded bytes do not hash to the digest the client claimed.
    #[error("uploaded content has digest {actual}, not the {expected} the client gave")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// A chunk did not start where the previous one ended.
    #[error(
        "chunk starts at byte {given} but the upload has {expected} bytes; resume from {expected}"
    )]
    OutOfOrder { expected: u64, given: u64 },
    /// The client sent more bytes than a size limit allows, or a size it declared was wrong.
    #[error("{0}")]
    SizeInvalid(String),
    /// Manifest / tag / repository not found.
    #[error("{0} not found")]
    NotFound(String),
    /// Project / user / robot / refresh token with this name already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The change conflicts with the current state (e.g. deleting a project that still
    /// has repositories); the message says what is in the way.
    #[error("{0}")]
    Conflict(String),
    /// The client's stream failed mid-transfer (connection dropped, body error).
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A backing service (the object store) failed or did not answer in time; the message
    /// names it. Retrying later can succeed; nothing half-written became visible.
    #[error("{0}; retry when it is reachable again")]
    Unavailable(String),
    #[error("metadata database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        StorageError::Database(e.to_string())
    }
}
