//! `berth-fetch`: the node-side image fetcher behind `berth fetch`.
//!
//! * [`unpack`] — applies layers (tar, gzip, zstd; detected from magic bytes) to a root
//!   directory with OCI whiteouts and opaque directories, never creating anything outside
//!   the root (see the module docs for the safety model), preserving modes, mtimes,
//!   ownership (as root) and xattrs (where permitted), verifying each layer's `diff_id`.
//! * [`cache`] — the local content-addressed blob cache (`--cache DIR`): verified blobs,
//!   resumable partial downloads, one download per blob across concurrent fetches.
//! * [`fetch`] — resolve a reference for a platform, download layers in parallel (bounded)
//!   into the cache through `berth-client`, apply them in order into `DIR.tmp-…`, rename to
//!   `DIR` on success (or write an OCI image layout).
//! * [`events`] — progress events and their three renderings (bars, plain lines, JSON).
//!
//! ```text
//! let cache = BlobCache::open(&default_cache_dir())?;
//! let opts = FetchOptions { platform: Platform::current(), target: Target::Rootfs(dir),
//!                           jobs: 4, unpack: UnpackOptions::default(), sync: true };
//! fetch(&client, &cache, &image, &opts, Arc::new(PlainLines::new())).await?;
//! ```

pub mod cache;
pub mod events;
pub mod fetch;
pub mod unpack;

pub use cache::{BlobCache, default_cache_dir};
pub use events::{Bars, Event, JsonLines, PlainLines, Reporter, Silent};
pub use fetch::{FetchOptions, FetchReport, Target, fetch};
pub use unpack::{Compression, LayerStats, UnpackError, UnpackOptions, Unpacker};
