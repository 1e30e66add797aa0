//! The storage-lifecycle boundary: the few primitives garbage collection, quotas,
//! retention and immutable tags need from the metadata store. The *policy* (what to
//! collect, when, in which order) lives in the server (`berth_server::gc`); a backend only
//! keeps these invariants, each checked by [`crate::conformance::lifecycle_suite`]:
//!
//! 1. **Change log.** Every change that can make something garbage records a
//!    [`Candidate`] *in the same transaction*: a tag deleted or moved away (its old
//!    manifest), a manifest stored (itself) or deleted (its blobs, its children, its
//!    referrers and its subject), a blob link or upload pin removed or added (the blob).
//!    A GC cycle only looks at candidates, so its cost follows the changes, not the size
//!    of the registry. (SQLite does this with triggers, so that every existing write path
//!    and every `ON DELETE CASCADE` is covered.)
//! 2. **Tombstones.** [`LifecycleStore::tombstone_blob`] decides "unreferenced, unpinned,
//!    older than the grace period" and marks the blob deleted in one serialized
//!    transaction, removing its links. From then on, until
//!    [`LifecycleStore::clear_tombstone`] (called after the bytes are gone), every
//!    primitive that would make the blob reachable again refuses: `link_blob`,
//!    [`LifecycleStore::mount_blob`], [`LifecycleStore::pin_upload`] and
//!    [`LifecycleStore::put_manifest_checked`] (and `put_manifest`).
//! 3. **Pins.** An upload about to commit pins its digest first
//!    ([`LifecycleStore::pin_upload`]); a pinned blob is never tombstoned, so a commit that
//!    finds the bytes "already stored" can rely on them until it has linked the blob.
//! 4. **Manifest PUT checks inside its transaction** that every blob it references is
//!    linked in some repository and not tombstoned, and every child manifest exists in the
//!    repository (`BlobUnknown` otherwise), so it can never commit a reference to
//!    something GC has just chosen.
//! 5. **Quota usage** per project (bytes of the distinct blobs referenced by the project's
//!    manifests plus the manifests' own bytes) is maintained in the same transactions, so
//!    it is exact after every push, failed push, delete and GC.
//!
//! On PostgreSQL ([`crate::postgres_lifecycle`]) the "serialized transaction" of (2)–(4)
//! means: `tombstone_blob` takes a transaction-scoped advisory lock on the digest
//! exclusively, and the primitives that link, pin or reference a blob take the same lock
//! shared before they look at the tombstones; `collect_manifest` and manifest writes share
//! a per-repository lock; GC cycles of different replicas exclude each other
//! ([`LifecycleStore::exclusive_gc`]).

use async_trait::async_trait;
use berth_proto::Digest;

use crate::StorageResult;
use crate::metadata::NewManifest;

/// What a candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandidateKind {
    /// A manifest in one repository that may have become unreferenced.
    Manifest,
    /// A blob (registry-wide) that may have lost its last reference.
    Blob,
}

/// An entry of the change log: something that changed and may now be garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub kind: CandidateKind,
    /// The repository of a manifest candidate; empty for a blob.
    pub repository: String,
    pub digest: Digest,
    /// When it last changed (seconds since the epoch).
    pub since: i64,
}

/// What [`LifecycleStore::collect_manifest`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestVerdict {
    /// Garbage: deleted (or, in a dry run, would be), freeing this many manifest bytes.
    Removed(u64),
    /// Still referenced (tagged, an index child, a referrer's subject, an attached
    /// referrer, or gone already): the candidate was dropped.
    Kept,
    /// Unreferenced but changed too recently: the candidate stays for a later cycle.
    TooRecent,
}

/// What [`LifecycleStore::tombstone_blob`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobVerdict {
    /// Unreferenced and old enough: now tombstoned, its links removed. The caller deletes
    /// the bytes, then calls [`LifecycleStore::clear_tombstone`].
    Tombstoned,
    /// Referenced (or pinned by an upload): the candidate was dropped.
    Kept,
    /// Unreferenced but changed too recently: the candidate stays.
    TooRecent,
}

/// Per-project storage policy (quota, immutable tags, retention).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectPolicy {
    pub project: String,
    /// Most bytes the project may hold (None: unlimited).
    pub quota_bytes: Option<u64>,
    /// Most repositories the project may hold (None: unlimited).
    pub max_repositories: Option<u64>,
    /// Tag patterns (`*` wildcard) that may be created but never moved or deleted.
    pub immutable_tags: Vec<String>,
    /// The retention policy as JSON, interpreted by the server (None: keep everything).
    pub retention_json: Option<String>,
}

/// What a project holds, as quotas count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaUsage {
    /// Distinct blobs referenced by the project's manifests (each once) + manifest bytes.
    pub bytes: u64,
    pub repositories: u64,
}

/// Limits a manifest PUT is checked against inside its transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushLimits {
    /// The project whose quota applies (the repository's first path segment).
    pub project: String,
    pub quota_bytes: Option<u64>,
    pub max_repositories: Option<u64>,
    /// Set when the tag matches this immutable pattern: the PUT may create the tag but
    /// not move it (`Denied` naming the rule).
    pub immutable_rule: Option<String>,
}

/// One tag with the times retention decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTimes {
    pub tag: String,
    pub digest: Digest,
    /// When the tag was last set.
    pub pushed_at: i64,
    /// When its manifest was last pulled (None: never, since pulls are recorded).
    pub pulled_at: Option<i64>,
}

/// One recorded GC or retention run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcRun {
    /// Assigned by the store (ignored on insert).
    pub id: i64,
    /// `gc` or `retention`.
    pub kind: String,
    /// Who started it: `schedule`, `cli`, or `api:<user>`.
    pub started_by: String,
    pub dry_run: bool,
    pub started_at: i64,
    pub finished_at: i64,
    pub manifests_removed: u64,
    pub tags_removed: u64,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    /// Errors met (one per line; empty: none).
    pub errors: String,
    /// A short human-readable summary (e.g. what a dry run would remove).
    pub detail: String,
}

/// The lifecycle primitives (see the module documentation for the invariants).
#[async_trait]
pub trait LifecycleStore: Send + Sync + 'static {
    // --- The change log and the collector's decisions. ---

    /// Candidates of `kind` in `since` order, starting after `(since, repository, digest)`
    /// of `after` (exclusive), at most `limit`. Includes recent ones (the collector drops
    /// those still referenced at once).
    async fn gc_candidates(
        &self,
        kind: CandidateKind,
        after: Option<&Candidate>,
        limit: u32,
    ) -> StorageResult<Vec<Candidate>>;

    /// Number of candidates waiting (both kinds).
    async fn gc_backlog(&self) -> StorageResult<u64>;

    /// Decide on a manifest candidate in one transaction: it is garbage if it exists, no
    /// tag points at it, no manifest of the repository lists it as a child or names it
    /// as `subject`, its own subject (if any) is not in the repository, and its candidate
    /// is at most `untagged_before`. Garbage is deleted unless `dry_run` (its blobs,
    /// children and subject become candidates through the change log).
    async fn collect_manifest(
        &self,
        repository: &str,
        digest: &Digest,
        untagged_before: i64,
        dry_run: bool,
    ) -> StorageResult<ManifestVerdict>;

    /// Decide on a blob candidate in one transaction: garbage if no manifest references
    /// it, no upload pins it, and its candidate is at most `unreferenced_before`. Garbage
    /// is tombstoned (and its links removed) unless `dry_run`.
    async fn tombstone_blob(
        &self,
        digest: &Digest,
        unreferenced_before: i64,
        dry_run: bool,
    ) -> StorageResult<BlobVerdict>;

    /// Forget a tombstone once the bytes are deleted (the digest may be pushed again).
    async fn clear_tombstone(&self, digest: &Digest) -> StorageResult<()>;

    /// Tombstones not yet cleared (left by an interrupted cycle, finished by the next).
    async fn tombstones(&self) -> StorageResult<Vec<Digest>>;

    /// Manifests referencing blob `digest`, as `(repository, manifest)`, at most `limit`
    /// (the blob's reference count when below the limit).
    async fn blob_references(
        &self,
        digest: &Digest,
        limit: u32,
    ) -> StorageResult<Vec<(String, Digest)>>;

    /// The blobs and child manifests a stored manifest references.
    async fn manifest_references(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> StorageResult<(Vec<Digest>, Vec<Digest>)>;

    // --- The push path. ---

    /// Pin `digest` for upload `upload` before committing its bytes. `Conflict` if the
    /// digest is tombstoned (the caller waits for the collector to finish, then retries).
    /// `delete_upload` removes the pin.
    async fn pin_upload(&self, upload: &str, digest: &Digest) -> StorageResult<()>;

    /// Link `digest` into `to` if `from` links it (or, with `from` None, if any repository
    /// does), in one transaction. Returns the size, or None when not mountable (not
    /// linked there, or tombstoned): the client then uploads.
    async fn mount_blob(
        &self,
        from: Option<&str>,
        to: &str,
        digest: &Digest,
    ) -> StorageResult<Option<u64>>;

    /// `put_manifest`, refused with `Denied` (naming quota, usage and size, or the
    /// immutable rule) when it would exceed `limits`, all inside its transaction.
    async fn put_manifest_checked(
        &self,
        manifest: NewManifest,
        limits: &PushLimits,
    ) -> StorageResult<()>;

    /// Whether project `project` already counts blob `digest` (a push of it adds nothing).
    async fn project_has_blob(&self, project: &str, digest: &Digest) -> StorageResult<bool>;

    // --- Policies, usage, pulls. ---

    /// The project's policy (a default one when none was set).
    async fn project_policy(&self, project: &str) -> StorageResult<ProjectPolicy>;

    /// Store a project's policy (replacing the previous one).
    async fn set_project_policy(&self, policy: &ProjectPolicy) -> StorageResult<()>;

    /// Projects that have a policy.
    async fn project_policies(&self) -> StorageResult<Vec<ProjectPolicy>>;

    /// What a project holds, as quotas count it.
    async fn quota_usage(&self, project: &str) -> StorageResult<QuotaUsage>;

    /// Record pull times (a batch from memory): `(repository, manifest, at)`. Newer wins.
    async fn record_pulls(&self, pulls: &[(String, Digest, i64)]) -> StorageResult<()>;

    /// Every tag of `repository` with its push and pull times.
    async fn tag_times(&self, repository: &str) -> StorageResult<Vec<TagTimes>>;

    /// Delete a repository with its manifests, tags and links (what they referenced
    /// becomes candidates). `NotFound` if absent.
    async fn delete_repository(&self, repository: &str) -> StorageResult<()>;

    // --- Upload sessions. ---

    /// Upload sessions started before `before`, at most `limit`.
    async fn stale_uploads(
        &self,
        before: i64,
        limit: u32,
    ) -> StorageResult<Vec<crate::UploadSession>>;

    // --- Runs and the audit log. ---

    /// Record a finished run; returns its id.
    async fn record_gc_run(&self, run: &GcRun) -> StorageResult<i64>;

    /// The newest runs first, at most `limit`.
    async fn gc_runs(&self, limit: u32) -> StorageResult<Vec<GcRun>>;

    /// Delete audit events older than `before` (if given) and all but the newest `keep`
    /// (if given). Returns how many were deleted.
    async fn prune_audit(&self, before: Option<i64>, keep: Option<u64>) -> StorageResult<u64>;

    // --- Several processes. ---

    /// Wait until no other process sharing this store runs a GC cycle, and keep it so
    /// until the returned lease is dropped. (Two concurrent cycles could interleave an
    /// interrupted cycle's tombstone clean-up with a re-upload of the same digest.) The
    /// default is for a store only one process opens (SQLite: the server's own mutex
    /// suffices); PostgreSQL holds a session advisory lock.
    async fn exclusive_gc(&self) -> StorageResult<Box<dyn Send>> {
        Ok(Box::new(()))
    }
}

/// Human-readable byte count.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The `DENIED` message of a quota refusal (names quota, usage and size refused).
pub fn quota_message(project: &str, quota: u64, usage: u64, size: u64) -> String {
    format!(
        "storage quota of project {project} exceeded: quota {} ({quota} bytes), usage {} \
         ({usage} bytes), this push needs {} ({size} bytes) more; delete images or ask an \
         administrator to raise the quota",
        format_bytes(quota),
        format_bytes(usage),
        format_bytes(size)
    )
}
