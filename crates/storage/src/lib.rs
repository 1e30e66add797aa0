//! Storage behind three narrow async traits:
//!
//! - [`BlobStore`]: content-addressed bytes (layers, configs) and resumable upload sessions.
//!   [`fs::FsBlobStore`] keeps them on the local filesystem, [`s3::S3BlobStore`] in an
//!   S3-compatible bucket.
//! - [`MetadataStore`]: repositories, manifests, tags, referrers and which blobs each
//!   repository may serve. [`sqlite::SqliteMetadata`] keeps them in an embedded SQLite
//!   database (WAL); [`postgres::PgMetadata`] in PostgreSQL, shared by several replicas.
//! - [`AccountStore`]: access control — projects (public or private), users, per-project
//!   roles, robot accounts, OAuth2 refresh tokens, web-console sessions and the audit log.
//!   [`sqlite::SqliteMetadata`] implements it too, in the same database file and pools
//!   ([`sqlite_accounts`]), and so does [`postgres::PgMetadata`] ([`postgres_accounts`]).
//!   It stores password and secret hashes made by the auth crate
//!   and never hashes or checks anything itself.
//!
//! - [`LifecycleStore`]: the primitives of garbage collection, quotas, retention and
//!   immutable tags — a change log, tombstones, upload pins, quota usage kept in the same
//!   transactions as pushes ([`lifecycle`], for SQLite in [`sqlite_lifecycle`], for
//!   PostgreSQL in [`postgres_lifecycle`]).
//!
//! - [`WebhookStore`]: webhook endpoints per project and their delivery log
//!   ([`webhooks`]; [`sqlite_webhooks`], [`postgres_webhooks`]).
//! - [`RemoteStore`]: the registries Berth talks to (proxy-cache upstreams, replication
//!   peers), with sealed secrets, and which projects are proxy caches ([`remotes`]).
//!
//! Each trait comes with one conformance suite ([`conformance`]) that every backend runs.
//!
//! Invariants every backend keeps:
//! - a blob is visible only once its bytes are complete, verified against their digest
//!   and durable (on the filesystem: fsync, then an atomic `hard_link` into place, which
//!   never replaces an existing blob, then fsync of the directory);
//! - a stored blob is never overwritten;
//! - a manifest, its tag and its references are written in one transaction;
//! - deleting a project deletes its memberships and robots, deleting a user its
//!   memberships, and a project is never deleted while a repository `project/…` exists.

pub mod accounts;
pub mod blob;
pub mod conformance;
pub mod conformance_remotes;
pub mod error;
pub mod fs;
pub mod lifecycle;
pub mod manifest_cache;
pub mod metadata;
pub mod migrate;
pub mod pg_fixture;
pub mod postgres;
pub mod postgres_accounts;
pub mod postgres_lifecycle;
pub mod postgres_remotes;
pub mod postgres_replication;
pub mod postgres_webhooks;
pub mod remotes;
pub mod replication;
pub mod s3;
pub mod s3_cache;
pub mod sqlite;
pub mod sqlite_accounts;
pub mod sqlite_lifecycle;
pub mod sqlite_remotes;
pub mod sqlite_replication;
pub mod sqlite_webhooks;
pub mod webhooks;

pub use accounts::{
    AccountStore, AuditEvent, AuditFilter, ConsoleSession, Member, Project, ProjectRole,
    RefreshToken, Robot, UnknownName, User, Visibility,
};
pub use blob::{BlobChunks, BlobReader, BlobStore, ByteStream, UploadId, UploadState};
pub use error::{FULL_ADVICE, StorageError, StorageResult, is_out_of_space};
pub use lifecycle::{
    BlobVerdict, Candidate, CandidateKind, GcRun, LifecycleStore, ManifestVerdict, ProjectPolicy,
    PushLimits, QuotaUsage, TagTimes,
};
pub use metadata::{
    ManifestRecord, MetadataStore, NewManifest, Referrer, RepositorySummary, TagDetail,
    UntaggedManifest, UploadSession, Usage,
};
pub use remotes::{RegistryHealth, RemoteRegistry, RemoteStore};
pub use replication::{
    Direction, Execution, NameMapping, ReplicationRule, ReplicationStore, RuleTrigger, RunStatus,
    Task,
};
pub use webhooks::{Delivery, Webhook, WebhookAuth, WebhookEvent, WebhookFormat, WebhookStore};
