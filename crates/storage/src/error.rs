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
    /// Refused by a project policy (storage quota, repository limit, immutable tag); the
    /// message names the rule and what to do.
    #[error("{0}")]
    Denied(String),
    /// The client's stream failed mid-transfer (connection dropped, body error).
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// The registry's storage is out of space (`ENOSPC`/`EDQUOT`, SQLite's "database or
    /// disk is full"), or below the configured free-space reserve. The text says what.
    #[error("{0}")]
    Full(String),
    #[error("storage I/O error: {0}")]
    Io(std::io::Error),
    /// A backing service (the object store, the PostgreSQL metadata database) failed or did not answer in time; the message
    /// names it. Retrying later can succeed; nothing half-written became visible.
    #[error("{0}; retry when it is reachable again")]
    Unavailable(String),
    #[error("metadata database error: {0}")]
    Database(String),
}

/// The text of every out-of-space refusal (what happened and what to do).
pub const FULL_ADVICE: &str = "an administrator must free space (delete images, run garbage collection) or enlarge the volume";

/// Whether an I/O error means the filesystem (or the user's quota) has no room left.
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        if is_out_of_space(&e) {
            StorageError::Full(format!(
                "the registry's storage is full ({e}); {FULL_ADVICE}"
            ))
        } else {
            StorageError::Io(e)
        }
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.code().as_deref() == Some("13")
        {
            // SQLITE_FULL
            return StorageError::Full(format!(
                "the registry's metadata database cannot grow: the disk is full; {FULL_ADVICE}"
            ));
        }
        if let sqlx::Error::Database(db) = &e
            && db.code().as_deref() == Some("53100")
        {
            // PostgreSQL disk_full
            return StorageError::Full(format!(
                "the PostgreSQL metadata database is out of disk space ({e}); {FULL_ADVICE}"
            ));
        }
        if let sqlx::Error::Io(io) = &e
            && is_out_of_space(io)
        {
            return StorageError::Full(format!(
                "the registry's storage is full ({io}); {FULL_ADVICE}"
            ));
        }
        if let sqlx::Error::Database(db) = &e
            && let Some(code) = db.code().filter(|c| c == "40P01" || c == "40001")
        {
            // PostgreSQL deadlock_detected / serialization_failure: the backend retries.
            return StorageError::Database(format!("{e} (SQLSTATE {code}{RETRYABLE_MARK}"));
        }
        if database_unreachable(&e) {
            return StorageError::Unavailable(format!(
                "the metadata database cannot be reached ({e})"
            ));
        }
        StorageError::Database(e.to_string())
    }
}

/// Marks a [`StorageError::Database`] whose transaction lost a race (a deadlock or a
/// serialization failure) and can simply be run again.
const RETRYABLE_MARK: &str = ", transaction raced another)";

impl StorageError {
    /// Whether this is a database transaction that lost a race and may be retried as is.
    pub fn is_retryable_race(&self) -> bool {
        matches!(self, StorageError::Database(m) if m.ends_with(RETRYABLE_MARK))
    }
}

/// Whether `e` says the database is down, restarting or too slow (as opposed to a query
/// that failed): no connection within the acquire timeout, a broken connection, or a
/// PostgreSQL server shutting down or refusing connections (SQLSTATE classes 08 and 57P).
pub fn database_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}
