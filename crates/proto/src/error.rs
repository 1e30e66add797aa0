//! The OCI distribution error-code table and the JSON error body.
//!
//! Codes, statuses and messages follow the OCI distribution spec and, for the codes the spec
//! leaves out (`RANGE_INVALID`, `PAGINATION_NUMBER_INVALID`, `TAG_INVALID`, `UNAVAILABLE`), Distribution's
//! `registry/api/v2/errors.go`.

use std::fmt;

/// One OCI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    PaginationNumberInvalid,
    TagInvalid,
    Unavailable,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::RangeInvalid,
        ErrorCode::PaginationNumberInvalid,
        ErrorCode::TagInvalid,
        ErrorCode::Unavailable,
    ];

    /// The wire code, e.g. `BLOB_UNKNOWN`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown => 404,
            ErrorCode::BlobUploadInvalid => 400,
            ErrorCode::BlobUploadUnknown => 404,
            ErrorCode::DigestInvalid => 400,
            ErrorCode::ManifestBlobUnknown => 400,
            ErrorCode::ManifestInvalid => 400,
            ErrorCode::ManifestUnknown => 404,
            ErrorCode::NameInvalid => 400,
            ErrorCode::NameUnknown => 404,
            ErrorCode::SizeInvalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            // Distribution answers 405 for operations it has switched off (e.g. deletes).
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::PaginationNumberInvalid => 400,
            ErrorCode::TagInvalid => 400,
            // A dependency (database, object store) cannot be reached right now.
            ErrorCode::Unavailable => 503,
        }
    }

    /// The spec's short message.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadInvalid => "blob upload invalid",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            ErrorCode::ManifestBlobUnknown => {
                "manifest references a manifest or blob unknown to registry"
            }
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::ManifestUnknown => "manifest unknown to registry",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::SizeInvalid => "provided length did not match content length",
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::Unsupported => "the operation is unsupported",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::RangeInvalid => "invalid content range",
            ErrorCode::PaginationNumberInvalid => "invalid number of results requested",
            ErrorCode::TagInvalid => "manifest tag did not match URI",
            ErrorCode::Unavailable => "service unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// `{"errors":[{"code":"...","message":"...","detail":"..."}]}`; `detail` is a JSON string
/// when `Some` and omitted when `None`.
pub fn error_body(code: ErrorCode, detail: Option<&str>) -> String {
    let mut entry = serde_json::Map::new();
    entry.insert("code".into(), code.code().into());
    entry.insert("message".into(), code.message().into());
    if let Some(detail) = detail {
        entry.insert("detail".into(), detail.into());
    }
    serde_json::json!({ "errors": [entry] }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table_is_pinned() {
        let want: &[(ErrorCode, &str, u16)] = &[
            (ErrorCode::BlobUnknown, "BLOB_UNKNOWN", 404),
            (ErrorCode::BlobUploadInvalid, "BLOB_UPLOAD_INVALID", 400),
            (ErrorCode::BlobUploadUnknown, "BLOB_UPLOAD_UNKNOWN", 404),
            (ErrorCode::DigestInvalid, "DIGEST_INVALID", 400),
            (ErrorCode::ManifestBlobUnknown, "MANIFEST_BLOB_UNKNOWN", 400),
            (ErrorCode::ManifestInvalid, "MANIFEST_INVALID", 400),
            (ErrorCode::ManifestUnknown, "MANIFEST_UNKNOWN", 404),
            (ErrorCode::NameInvalid, "NAME_INVALID", 400),
            (ErrorCode::NameUnknown, "NAME_UNKNOWN", 404),
            (ErrorCode::SizeInvalid, "SIZE_INVALID", 400),
            (ErrorCode::Unauthorized, "UNAUTHORIZED", 401),
            (ErrorCode::Denied, "DENIED", 403),
            (ErrorCode::Unsupported, "UNSUPPORTED", 405),
            (ErrorCode::TooManyRequests, "TOOMANYREQUESTS", 429),
            (ErrorCode::RangeInvalid, "RANGE_INVALID", 416),
            (
                ErrorCode::PaginationNumberInvalid,
                "PAGINATION_NUMBER_INVALID",
                400,
            ),
            (ErrorCode::TagInvalid, "TAG_INVALID", 400),
            (ErrorCode::Unavailable, "UNAVAILABLE", 503),
        ];
        assert_eq!(ErrorCode::ALL.len(), want.len());
        for (i, &(code, s, status)) in want.iter().enumerate() {
            assert_eq!(ErrorCode::ALL[i], code);
            assert_eq!(code.code(), s);
            assert_eq!(code.status(), status, "{s}");
            assert_eq!(code.to_string(), s);
            assert!(!code.message().is_empty());
        }
        assert_eq!(ErrorCode::BlobUnknown.message(), "blob unknown to registry");
    }

    #[test]
    fn bodies() {
        let v: serde_json::Value =
            serde_json::from_str(&error_body(ErrorCode::NameUnknown, None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]})
        );
        let body = error_body(ErrorCode::DigestInvalid, Some("got \"sha256:x\"\n"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errors"][0]["detail"], "got \"sha256:x\"\n");
        assert_eq!(v["errors"][0]["code"], "DIGEST_INVALID");
    }

    proptest! {
        #[test]
        fn body_is_always_valid_json(detail in proptest::option::of(any::<String>()), i in 0..ErrorCode::ALL.len()) {
            let code = ErrorCode::ALL[i];
            let v: serde_json::Value = serde_json::from_str(&error_body(code, detail.as_deref())).unwrap();
            prop_assert_eq!(v["errors"][0]["code"].as_str(), Some(code.code()));
            prop_assert_eq!(v["errors"][0]["detail"].as_str(), detail.as_deref());
        }
    }
}
