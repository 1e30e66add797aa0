//! The metadata boundary: repositories, manifests, tags, referrers, blob links, uploads.

use async_trait::async_trait;
use berth_proto::Digest;

use crate::StorageResult;

/// A stored manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub digest: Digest,
    pub media_type: String,
    /// The exact bytes the client pushed (at most the server's manifest limit, 4 MiB).
    pub content: Vec<u8>,
}

/// A manifest to store, with everything extracted from it by the server.
#[derive(Debug, Clone)]
pub struct NewManifest {
    pub repository: String,
    pub digest: Digest,
    pub media_type: String,
    pub content: Vec<u8>,
    /// Tag to point at this manifest (None when pushed by digest).
    pub tag: Option<String>,
    /// Blobs (config, layers) it references; they stay readable in the repository.
    pub blobs: Vec<Digest>,
    /// Child manifests (index / manifest list entries).
    pub children: Vec<Digest>,
    /// `subject` digest, for the referrers API.
    pub subject: Option<Digest>,
    /// `artifactType`, or for image manifests without one, the config media type.
    pub artifact_type: Option<String>,
    /// The manifest's `annotations`, as a JSON object string (None if absent).
    pub annotations_json: Option<String>,
}

/// One entry of a referrers listing (an OCI descriptor of the referring manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations_json: Option<String>,
}

/// An upload session's owner and start time, kept so uploads survive a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSession {
    pub id: String,
    pub repository: String,
    /// Seconds since the Unix epoch.
    pub started_at: i64,
    /// Who opened it (`user:NAME`, `robot:NAME`, or `addr:IP` for anonymous callers), for
    /// the per-principal limit on open sessions; empty for sessions from before the column.
    pub owner: String,
}

/// How much a set of repositories holds (for the web console).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub repositories: u64,
    /// Bytes of distinct blobs linked in those repositories plus their manifests' bytes.
    pub bytes: u64,
}

/// One repository as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositorySummary {
    pub name: String,
    pub tag_count: u64,
    /// Seconds since the epoch of the newest tag or manifest push (None: nothing pushed).
    pub last_push: Option<i64>,
    /// Bytes of the distinct blobs the repository links plus its manifests' bytes.
    pub bytes: u64,
}

/// One tag with what the console shows about the manifest it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDetail {
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    /// When the tag was last set (seconds since the epoch).
    pub pushed_at: i64,
    /// Compressed size: the manifest's bytes, plus the distinct blobs it references and
    /// (for an index) those its child manifests reference.
    pub bytes: u64,
}

/// A manifest no tag points at, as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntaggedManifest {
    pub digest: Digest,
    pub media_type: String,
    /// When the manifest was first pushed (seconds since the epoch).
    pub pushed_at: i64,
    /// Compressed size, counted as for [`TagDetail::bytes`].
    pub bytes: u64,
}

/// Registry metadata. Every write that touches several rows is one transaction.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Repositories in lexical order, after `last` (exclusive), at most `limit`.
    async fn list_repositories(&self, last: Option<&str>, limit: u32)
    -> StorageResult<Vec<String>>;

    /// Whether the repository has ever received a manifest or a blob and still exists.
    async fn repository_exists(&self, repository: &str) -> StorageResult<bool>;

    /// Record that `repository` may serve blob `digest` of `size` bytes (after an upload
    /// or a mount). Creates the repository if needed. Idempotent.
    async fn link_blob(&self, repository: &str, digest: &Digest, size: u64) -> StorageResult<()>;

    /// Size of the blob if `repository` may serve it.
    async fn blob_link(&self, repository: &str, digest: &Digest) -> StorageResult<Option<u64>>;

    /// Remove the link; `NotFound` if there was none. Returns whether any repository
    /// still links the blob (the caller deletes the bytes when none does).
    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> StorageResult<bool>;

    /// Store a manifest (and its tag, references, subject) in one transaction.
    /// Re-putting the same digest is idempotent; a tag moves to the new digest.
    async fn put_manifest(&self, manifest: NewManifest) -> StorageResult<()>;

    /// A manifest by digest in `repository`.
    async fn manifest_by_digest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> StorageResult<Option<ManifestRecord>>;

    /// A manifest by tag in `repository`.
    async fn manifest_by_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> StorageResult<Option<ManifestRecord>>;

    /// Whether `repository` has a manifest with this digest (for index children checks).
    async fn manifest_exists(&self, repository: &str, digest: &Digest) -> StorageResult<bool>;

    /// Delete a manifest and every tag pointing at it; `NotFound` if absent.
    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> StorageResult<()>;

    /// Delete one tag (the manifest stays); `NotFound` if absent.
    async fn delete_tag(&self, repository: &str, tag: &str) -> StorageResult<()>;

    /// Tags of `repository` in lexical order after `last`, at most `limit`.
    /// `NotFound` if the repository does not exist.
    async fn list_tags(
        &self,
        repository: &str,
        last: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<String>>;

    /// Manifests in `repository` whose subject is `subject`, optionally only those of
    /// `artifact_type`, ordered by digest.
    async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> StorageResult<Vec<Referrer>>;

    /// Record a new upload session.
    async fn create_upload(&self, session: UploadSession) -> StorageResult<()>;

    /// The upload session, if it exists.
    async fn upload(&self, id: &str) -> StorageResult<Option<UploadSession>>;

    /// Forget an upload session (after finish or cancel). Idempotent.
    async fn delete_upload(&self, id: &str) -> StorageResult<()>;

    /// How many upload sessions `owner` has open (indexed; for the session limit).
    async fn count_uploads_by_owner(&self, owner: &str) -> StorageResult<u64>;

    /// The ids of every upload session (start-up reconciliation with the blob store).
    async fn upload_ids(&self) -> StorageResult<Vec<String>>;

    // --- Queries of the web console: bounded, counted in the database. ---

    /// Repositories `project/…` and the bytes they hold (a blob linked in several of
    /// them counted once).
    async fn project_usage(&self, project: &str) -> StorageResult<Usage>;

    /// Repositories `project/…` in lexical order after `after` (exclusive), at most
    /// `limit`, each with its tag count, last push and size.
    async fn repository_summaries(
        &self,
        project: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<RepositorySummary>>;

    /// One repository's summary; None if it does not exist.
    async fn repository_summary(
        &self,
        repository: &str,
    ) -> StorageResult<Option<RepositorySummary>>;

    /// Tags of `repository` in lexical order after `after` (exclusive), at most `limit`,
    /// with their manifests' digest, media type, push time and compressed size (empty for
    /// a missing repository).
    async fn tag_details(
        &self,
        repository: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<TagDetail>>;

    /// Manifests of `repository` that no tag points at and that are neither a child of
    /// an index nor a referrer (those are shown with their index or subject), in digest
    /// order after `after` (exclusive), at most `limit`, with their compressed size.
    async fn untagged_manifests(
        &self,
        repository: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<UntaggedManifest>>;

    /// Repository names containing `needle` (byte-wise, no wildcards), in lexical order
    /// after `after` (exclusive), at most `limit`.
    async fn search_repositories(
        &self,
        needle: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<String>>;
}
