//! Protocol types shared by every Berth crate: digests, repository names and references,
//! `/v2/` routing, byte ranges, manifests and the OCI error-code table.
//!
//! Everything here is pure (no I/O) so it can be property-tested and fuzzed in isolation.
//!
//! - [`digest`]: [`Digest`] (`sha256:`/`sha512:` only) and the streaming [`Hasher`].
//! - [`name`]: [`validate_repository`], [`validate_tag`] and [`Reference`] (tag or digest).
//! - [`route`]: [`parse_v2_path`], the single router for every path under `/v2/`.
//! - [`range`]: [`parse_range`] (blob GET `Range`) and [`parse_content_range`] (upload PATCH).
//! - [`manifest`]: [`parse_manifest`] validates a pushed manifest and lists what it references.
//! - [`error`]: [`ErrorCode`] (code, HTTP status, message) and [`error_body`].
//!
//! Every error type's message says what was wrong and what the client should do instead.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;
pub mod range;
pub mod route;

#[cfg(test)]
mod test_support;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::{ErrorCode, error_body};
pub use manifest::{
    BlobDescriptor, MAX_DESCRIPTORS, MAX_MANIFEST_SIZE, ManifestError, ParsedManifest, media_types,
    parse_manifest,
};
pub use name::{
    MAX_NAME_LEN, MAX_TAG_LEN, NameError, Reference, validate_repository, validate_tag,
};
pub use range::{RangeError, parse_content_range, parse_range};
pub use route::{MAX_UPLOAD_ID_LEN, RouteError, V2Route, parse_v2_path};
