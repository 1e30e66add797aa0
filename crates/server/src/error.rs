//! The one error type of the HTTP layer. Handlers return `Result<_, ApiError>`; the
//! conversion to a response writes the OCI error envelope and has no side effects.
//! Internal errors are logged once, by the `IntoResponse` impl, with their cause.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_proto::error::ErrorCode;
use berth_storage::StorageError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    /// Override of the code's default status (e.g. 413 for an oversized manifest).
    pub status: Option<StatusCode>,
    /// Extra headers (e.g. `Range` on a 416 for an out-of-order chunk).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// A server-side failure: logged, and answered with 500.
    pub internal: bool,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError {
            code,
            detail: detail.into(),
            status: None,
            headers: Vec::new(),
            internal: false,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = Some(status);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The registry's storage is full or below its reserve: 507 with the reason, what to
    /// do, and a `Retry-After` for clients that honour it.
    pub fn storage_full(detail: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Denied, detail)
            .with_status(StatusCode::INSUFFICIENT_STORAGE)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("60"))
    }

    fn internal(detail: String) -> ApiError {
        ApiError {
            internal: true,
            ..ApiError::new(ErrorCode::Unsupported, detail)
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let detail = e.to_string();
        match &e {
            StorageError::Io(_) => crate::ops::storage_error("io"),
            StorageError::Database(_) => crate::ops::storage_error("database"),
            StorageError::Unavailable(_) => crate::ops::storage_error("unavailable"),
            _ => {}
        }
        match e {
            StorageError::BlobUnknown(_) => ApiError::new(ErrorCode::BlobUnknown, detail),
            StorageError::UploadUnknown(_) => ApiError::new(ErrorCode::BlobUploadUnknown, detail),
            StorageError::DigestMismatch { .. } => ApiError::new(ErrorCode::DigestInvalid, detail),
            StorageError::OutOfOrder { expected, .. } => {
                let range = if expected == 0 {
                    "0-0".to_string()
                } else {
                    format!("0-{}", expected - 1)
                };
                ApiError::new(ErrorCode::RangeInvalid, detail)
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .with_header(header::RANGE, HeaderValue::from_str(&range).unwrap())
            }
            StorageError::SizeInvalid(_) => ApiError::new(ErrorCode::SizeInvalid, detail),
            StorageError::NotFound(_) => ApiError::new(ErrorCode::NameUnknown, detail),
            StorageError::AlreadyExists(_) | StorageError::Conflict(_) => {
                ApiError::new(ErrorCode::Unsupported, detail).with_status(StatusCode::CONFLICT)
            }
            StorageError::Body(_) => ApiError::new(ErrorCode::BlobUploadInvalid, detail),
            StorageError::Denied(_) => ApiError::new(ErrorCode::Denied, detail),
            StorageError::Unavailable(_) => ApiError::new(ErrorCode::Unavailable, detail)
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")),
            // 507, not 503: docker and skopeo show only the status line of a 5xx, and
            // "507 Insufficient Storage" names the cause; Go clients (crane, oras) retry
            // 503s with backoff, which only delays the answer on a full disk.
            StorageError::Full(_) => ApiError::storage_full(detail),
            StorageError::Io(_) | StorageError::Database(_) => ApiError::internal(detail),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.internal {
            tracing::error!(error = %self.detail, "internal error");
            // Distribution's code for server faults; the cause stays in the log.
            let body = r#"{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":"internal server error; the server log has the cause"}]}"#;
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::BAD_REQUEST)
        });
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            envelope(self.code, &self.detail),
        )
            .into_response();
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

/// The OCI error envelope. Clients (docker, skopeo, containerd) print `code: message`, so
/// `message` carries the specific explanation and what to do; `detail` keeps the spec's
/// generic text for the code.
fn envelope(code: ErrorCode, detail: &str) -> String {
    let message = if detail.is_empty() {
        code.message()
    } else {
        detail
    };
    serde_json::json!({
        "errors": [{ "code": code.code(), "message": message, "detail": code.message() }]
    })
    .to_string()
}
