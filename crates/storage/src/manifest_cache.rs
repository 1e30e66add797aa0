//! Recently read manifests of the embedded SQLite store, kept in memory.
//!
//! A manifest GET is one indexed SQLite query, but sqlx runs each SQLite connection on a
//! thread of its own: every query is a hand-off to that thread and back, which costs more
//! CPU than the query (perf under `wrk`: a third of the server's time in the scheduler).
//! Hot tags and digests are therefore answered from here.
//!
//! Correctness:
//! - Every write of this process that can change what a lookup returns (a manifest put or
//!   deleted, a tag moved or deleted, a repository removed, the collector's deletions)
//!   calls [`ManifestCache::invalidate`] after its commit. A lookup records the generation
//!   *before* its query and its entry is used only while the generation is unchanged, so
//!   a read racing a write can never be kept past the write.
//! - Another process on the same database (`berth gc` / `berth retention` on the data
//!   directory while the server runs) cannot bump the generation, so an entry is also
//!   used for at most [`TIME_TO_LIVE`]: such a change is seen within that time.
//! - Only found manifests are kept (never "not found"), at most [`MAX_ENTRIES`] entries and
//!   [`MAX_BYTES`] of manifest bytes; when either is reached, the cache starts over.
//!
//! PostgreSQL deployments do not use it: there, several replicas write the same database
//! and a tag moved through one must be served by the others at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::metadata::ManifestRecord;

/// The longest an entry is used (bounds how late another process's change is seen).
pub const TIME_TO_LIVE: Duration = Duration::from_secs(1);
/// At most this many manifests are kept.
pub const MAX_ENTRIES: usize = 4096;
/// At most this many bytes of manifest content are kept.
pub const MAX_BYTES: usize = 8 << 20;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ManifestCache {
    generation: AtomicU64,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, Entry>,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    record: ManifestRecord,
    generation: u64,
    stored: Instant,
}

/// A lookup's key: `repository:tag` or `repository@digest` (neither a repository name nor
/// a tag can contain `:` or `@`, so the two never collide).
pub fn tag_key(repository: &str, tag: &str) -> String {
    format!("{repository}:{tag}")
}

/// See [`tag_key`].
pub fn digest_key(repository: &str, digest: &str) -> String {
    format!("{repository}@{digest}")
}

impl ManifestCache {
    /// The generation to pass to [`Self::store`]; read it before querying the database.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The cached manifest for `key`, if it is still valid.
    pub fn get(&self, key: &str) -> Option<ManifestRecord> {
        let generation = self.generation();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.by_key.get(key)?;
        (entry.generation == generation && entry.stored.elapsed() < TIME_TO_LIVE)
            .then(|| entry.record.clone())
    }

    /// Keep `record`, read from the database after [`Self::generation`] returned
    /// `generation`.
    pub fn store(&self, key: String, record: &ManifestRecord, generation: u64) {
        if generation != self.generation() || record.content.len() > MAX_BYTES / 16 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.by_key.len() >= MAX_ENTRIES || entries.bytes + record.content.len() > MAX_BYTES {
            entries.by_key.clear();
            entries.bytes = 0;
        }
        entries.bytes += record.content.len();
        let entry = Entry {
            record: record.clone(),
            generation,
            stored: Instant::now(),
        };
        if let Some(old) = entries.by_key.insert(key, entry) {
            entries.bytes -= old.record.content.len();
        }
    }

    /// Forget everything: call after committing a write that can change a lookup.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.by_key.clear();
        entries.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(content: &[u8]) -> ManifestRecord {
        ManifestRecord {
            digest: berth_proto::Digest::sha256(content),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            content: content.to_vec(),
        }
    }

    #[test]
    fn hit_until_invalidated() {
        let cache = ManifestCache::default();
        let g = cache.generation();
        cache.store(tag_key("a/b", "v1"), &record(b"{}"), g);
        assert_eq!(cache.get("a/b:v1"), Some(record(b"{}")));
        assert_eq!(cache.get("a/b@sha256:00"), None);
        cache.invalidate();
        assert_eq!(cache.get("a/b:v1"), None);
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache = ManifestCache::default();
        let before_query = cache.generation();
        cache.invalidate(); // a write committed while the query ran
        cache.store(tag_key("a/b", "v1"), &record(b"old"), before_query);
        assert_eq!(cache.get("a/b:v1"), None);
    }

    #[test]
    fn bounded_by_bytes_and_entries() {
        let cache = ManifestCache::default();
        let big = vec![b'x'; MAX_BYTES / 16];
        for i in 0..40 {
            cache.store(tag_key("r", &i.to_string()), &record(&big), 0);
            let entries = cache.entries.lock().unwrap();
            assert!(entries.bytes <= MAX_BYTES, "{} bytes", entries.bytes);
        }
        for i in 0..(MAX_ENTRIES + 10) {
            cache.store(tag_key("s", &i.to_string()), &record(b"{}"), 0);
        }
        assert!(cache.entries.lock().unwrap().by_key.len() <= MAX_ENTRIES);
        // Too large to keep at all.
        cache.store(tag_key("r", "huge"), &record(&vec![0; MAX_BYTES]), 0);
        assert_eq!(cache.get("r:huge"), None);
    }

    #[test]
    fn entries_expire() {
        let cache = ManifestCache::default();
        cache.store(tag_key("a", "v1"), &record(b"{}"), 0);
        cache
            .entries
            .lock()
            .unwrap()
            .by_key
            .get_mut("a:v1")
            .unwrap()
            .stored -= TIME_TO_LIVE;
        assert_eq!(cache.get("a:v1"), None);
    }
}
