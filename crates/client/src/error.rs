//! The client's one error type. Every message names the registry and says what to do.

/// What went wrong talking to a registry or reading local configuration.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad flags, files or configuration (CA bundles, ConfigMaps, secrets, config.json).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Reference(#[from] crate::reference::RefError),
    /// TLS failed: untrusted certificate, name mismatch, HTTP-on-HTTPS. Full advice included.
    #[error("{0}")]
    Tls(String),
    /// The registry could not be reached at all.
    #[error("{0}")]
    Connect(String),
    /// 401 / 403 with an explanation of which credentials were tried.
    #[error("{message}")]
    Auth { status: u16, message: String },
    /// Manifest, blob, tag or repository not found.
    #[error("{0}")]
    NotFound(String),
    /// Downloaded or read content does not match its digest or size: aborted.
    #[error("{0}")]
    Integrity(String),
    /// Any other unexpected registry answer.
    #[error("{0}")]
    Registry(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ClientError {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound(_))
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
