//! Protocol types shared by every Berth crate: digests, repository names and references,
//! byte ranges, manifests and the OCI error-code table.
//!
//! Everything here is pure (no I/O) so it can be property-tested and fuzzed in isolation.

pub mod digest;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
