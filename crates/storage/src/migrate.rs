//! Moving an embedded deployment (SQLite + a blob store) onto PostgreSQL (+ any blob
//! store): `berth migrate`.
//!
//! 1. Blobs first: every digest the source links or references is copied into the target
//!    blob store through an ordinary upload session, so the target verifies each digest
//!    as the bytes stream through (a corrupt source blob fails the run, naming it); blobs
//!    the target already holds are skipped.
//! 2. Then the rows, table by table, parents before children, streamed (never a whole
//!    table in memory) and written with `ON CONFLICT` clauses, so a second run catches up:
//!    new rows are added, tags that moved are moved, changed users, robots, projects and
//!    roles are updated, audit events keep their ids. Deletions made in the source between
//!    two runs are not replayed: run it one last time with the source server stopped.
//!
//! Storage-lifecycle state moves too: project policies (quotas, immutable tags, retention),
//! pull times and the GC run records; quota usage and the GC change log are recomputed by
//! the target's triggers as the rows arrive.
//!
//! Upload sessions in progress are not moved (their bytes are in the source's upload
//! area); clients restart them.

use std::collections::BTreeSet;

use berth_proto::Digest;
use futures_util::TryStreamExt;
use sqlx::{Postgres, Transaction};

use crate::postgres::PgMetadata;
use crate::sqlite::SqliteMetadata;
use crate::{BlobStore, StorageError, StorageResult};

/// Rows written per PostgreSQL transaction.
const BATCH: usize = 500;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Blobs copied (verified) into the target blob store.
    pub blobs_copied: u64,
    /// Bytes of those blobs.
    pub bytes_copied: u64,
    /// Blobs the target already held.
    pub blobs_present: u64,
    /// Rows read from the source, per table (written or already present).
    pub rows: Vec<(&'static str, u64)>,
}

/// Copy everything from the embedded deployment (`src_meta`, `src_blobs`) into the
/// target (`dst_meta`, `dst_blobs`). Re-runnable. `progress` is told what is being done.
pub async fn migrate(
    src_meta: &SqliteMetadata,
    src_blobs: &dyn BlobStore,
    dst_meta: &PgMetadata,
    dst_blobs: &dyn BlobStore,
    progress: &(dyn Fn(&str) + Sync),
) -> StorageResult<MigrateReport> {
    let mut report = MigrateReport::default();
    copy_blobs(src_meta, src_blobs, dst_blobs, progress, &mut report).await?;
    copy_rows(src_meta, dst_meta, progress, &mut report).await?;
    Ok(report)
}

async fn copy_blobs(
    src_meta: &SqliteMetadata,
    src_blobs: &dyn BlobStore,
    dst_blobs: &dyn BlobStore,
    progress: &(dyn Fn(&str) + Sync),
    report: &mut MigrateReport,
) -> StorageResult<()> {
    // Digests only (71 bytes each): a registry with a million blobs needs ~100 MB here.
    let mut digests = BTreeSet::new();
    let mut rows = sqlx::query_scalar::<_, String>(
        "SELECT digest FROM blob_links UNION SELECT blob FROM manifest_blobs",
    )
    .fetch(&src_meta.reader);
    while let Some(d) = rows.try_next().await? {
        digests.insert(d);
    }
    drop(rows);
    progress(&format!("blobs: {} to check", digests.len()));
    for d in digests {
        let digest: Digest = d.parse().map_err(|e| {
            StorageError::Database(format!("invalid digest {d:?} in the source database: {e}"))
        })?;
        if dst_blobs.stat(&digest).await?.is_some() {
            report.blobs_present += 1;
            continue;
        }
        let source = match src_blobs.open_chunks(&digest, None).await {
            Ok(s) => s,
            Err(StorageError::BlobUnknown(_)) => {
                return Err(StorageError::BlobUnknown(digest));
            }
            Err(e) => return Err(e),
        };
        let id = dst_blobs.start_upload().await?;
        let copied = async {
            dst_blobs
                .append(&id, Some(0), source.chunks, u64::MAX)
                .await?;
            dst_blobs.finish_upload(&id, &digest).await
        }
        .await;
        match copied {
            Ok(size) => {
                report.blobs_copied += 1;
                report.bytes_copied += size;
            }
            Err(e) => {
                let _ = dst_blobs.cancel_upload(&id).await;
                return Err(match e {
                    StorageError::DigestMismatch { expected, actual } => {
                        StorageError::Conflict(format!(
                            "the source's blob {expected} is corrupt (its bytes hash to {actual}); \
                             restore it from a backup or delete the images using it, then re-run"
                        ))
                    }
                    other => other,
                });
            }
        }
    }
    progress(&format!(
        "blobs: {} copied ({} bytes), {} already there",
        report.blobs_copied, report.bytes_copied, report.blobs_present
    ));
    Ok(())
}

/// Stream `select` from SQLite, decoding rows as `T`, and write each with `insert`,
/// BATCH rows per PostgreSQL transaction.
macro_rules! copy_table {
    ($src:expr, $dst:expr, $report:expr, $progress:expr, $table:literal, $row:ty, $select:literal,
     |$tx:ident, $r:ident| $insert:expr) => {{
        let mut rows = sqlx::query_as::<_, $row>($select).fetch(&$src.reader);
        let mut n: u64 = 0;
        let mut $tx: Transaction<'_, Postgres> = $dst.pool.begin().await?;
        while let Some($r) = rows.try_next().await? {
            $insert.execute(&mut *$tx).await?;
            n += 1;
            if n % BATCH as u64 == 0 {
                $tx.commit().await?;
                $tx = $dst.pool.begin().await?;
            }
        }
        $tx.commit().await?;
        $progress(&format!("{}: {n} rows", $table));
        $report.rows.push(($table, n));
    }};
}

async fn copy_rows(
    src: &SqliteMetadata,
    dst: &PgMetadata,
    progress: &(dyn Fn(&str) + Sync),
    report: &mut MigrateReport,
) -> StorageResult<()> {
    copy_table!(
        src,
        dst,
        report,
        progress,
        "repositories",
        (String, i64),
        "SELECT name, created_at FROM repositories",
        |tx, r| sqlx::query(
            "INSERT INTO repositories (name, created_at) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "blob_links",
        (String, String, i64),
        "SELECT repository, digest, size FROM blob_links",
        |tx, r| sqlx::query(
            "INSERT INTO blob_links (repository, digest, size) VALUES ($1, $2, $3)
             ON CONFLICT (repository, digest) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
    );
    type ManifestRow = (
        String,
        String,
        String,
        Vec<u8>,
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "manifests",
        ManifestRow,
        "SELECT repository, digest, media_type, content, size, subject, artifact_type,
                annotations, created_at FROM manifests",
        |tx, r| sqlx::query(
            "INSERT INTO manifests (repository, digest, media_type, content, size, subject,
                                    artifact_type, annotations, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (repository, digest) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
        .bind(r.4)
        .bind(r.5)
        .bind(r.6)
        .bind(r.7)
        .bind(r.8)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "manifest_blobs",
        (String, String, String),
        "SELECT repository, manifest, blob FROM manifest_blobs",
        |tx, r| sqlx::query(
            "INSERT INTO manifest_blobs (repository, manifest, blob) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "manifest_children",
        (String, String, String),
        "SELECT repository, manifest, child FROM manifest_children",
        |tx, r| sqlx::query(
            "INSERT INTO manifest_children (repository, manifest, child) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "tags",
        (String, String, String, i64),
        "SELECT repository, tag, digest, updated_at FROM tags",
        |tx, r| sqlx::query(
            "INSERT INTO tags (repository, tag, digest, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (repository, tag)
             DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "projects",
        (String, bool, String, i64),
        "SELECT name, public, description, created_at FROM projects",
        |tx, r| sqlx::query(
            "INSERT INTO projects (name, public, description, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name)
             DO UPDATE SET public = excluded.public, description = excluded.description",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "users",
        (String, String, bool, bool, i64),
        "SELECT name, password_hash, admin, disabled, created_at FROM users",
        |tx, r| sqlx::query(
            "INSERT INTO users (name, password_hash, admin, disabled, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
                 admin = excluded.admin, disabled = excluded.disabled",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
        .bind(r.4)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "members",
        (String, String, String),
        "SELECT project, username, role FROM members",
        |tx, r| sqlx::query(
            "INSERT INTO members (project, username, role) VALUES ($1, $2, $3)
             ON CONFLICT (project, username) DO UPDATE SET role = excluded.role",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
    );
    type RobotRow = (String, String, String, bool, Option<i64>, bool, i64, String);
    copy_table!(
        src,
        dst,
        report,
        progress,
        "robots",
        RobotRow,
        "SELECT name, project, secret_hash, can_push, expires_at, revoked, created_at,
                description FROM robots",
        |tx, r| sqlx::query(
            "INSERT INTO robots (name, project, secret_hash, can_push, expires_at, revoked,
                                 created_at, description)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (name) DO UPDATE SET secret_hash = excluded.secret_hash,
                 can_push = excluded.can_push, expires_at = excluded.expires_at,
                 revoked = excluded.revoked, description = excluded.description",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
        .bind(r.4)
        .bind(r.5)
        .bind(r.6)
        .bind(r.7)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "refresh_tokens",
        (String, String, i64),
        "SELECT id_hash, subject, expires_at FROM refresh_tokens",
        |tx, r| sqlx::query(
            "INSERT INTO refresh_tokens (id_hash, subject, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (id_hash) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "console_sessions",
        (String, String, i64, i64),
        "SELECT id_hash, username, created_at, expires_at FROM console_sessions",
        |tx, r| sqlx::query(
            "INSERT INTO console_sessions (id_hash, username, created_at, expires_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (id_hash) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
    );
    type AuditRow = (i64, i64, String, String, String, String, String);
    copy_table!(
        src,
        dst,
        report,
        progress,
        "audit_events",
        AuditRow,
        "SELECT id, at, actor, action, resource, client_addr, detail FROM audit_events",
        |tx, r| sqlx::query(
            "INSERT INTO audit_events (id, at, actor, action, resource, client_addr, detail)
             OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
        .bind(r.4)
        .bind(r.5)
        .bind(r.6)
    );
    // Storage lifecycle: per-project policies (quotas, immutable tags, retention), pull
    // times, and the record of GC runs. Quota usage and the GC change log are not copied:
    // the target's triggers computed them while the rows above were inserted.
    type PolicyRow = (
        String,
        Option<i64>,
        Option<i64>,
        String,
        Option<String>,
        i64,
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "project_policies",
        PolicyRow,
        "SELECT project, quota_bytes, max_repositories, immutable_tags, retention, updated_at
         FROM project_policies",
        |tx, r| sqlx::query(
            "INSERT INTO project_policies
                 (project, quota_bytes, max_repositories, immutable_tags, retention, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (project) DO UPDATE SET quota_bytes = excluded.quota_bytes,
                 max_repositories = excluded.max_repositories,
                 immutable_tags = excluded.immutable_tags, retention = excluded.retention,
                 updated_at = excluded.updated_at",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
        .bind(r.4)
        .bind(r.5)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "manifest_pulls",
        (String, String, i64),
        "SELECT repository, digest, pulled_at FROM manifest_pulls",
        |tx, r| sqlx::query(
            "INSERT INTO manifest_pulls AS p (repository, digest, pulled_at)
             SELECT $1, $2, $3
             WHERE EXISTS (SELECT 1 FROM manifests WHERE repository = $1 AND digest = $2)
             ON CONFLICT (repository, digest)
             DO UPDATE SET pulled_at = GREATEST(p.pulled_at, excluded.pulled_at)",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
    );
    type RunRow = (
        i64,
        String,
        String,
        bool,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        String,
        String,
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "gc_runs",
        RunRow,
        "SELECT id, kind, started_by, dry_run, started_at, finished_at, manifests_removed,
                tags_removed, blobs_removed, bytes_freed, errors, detail FROM gc_runs",
        |tx, r| sqlx::query(
            "INSERT INTO gc_runs (id, kind, started_by, dry_run, started_at, finished_at,
                 manifests_removed, tags_removed, blobs_removed, bytes_freed, errors, detail)
             OVERRIDING SYSTEM VALUE
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
        .bind(r.4)
        .bind(r.5)
        .bind(r.6)
        .bind(r.7)
        .bind(r.8)
        .bind(r.9)
        .bind(r.10)
        .bind(r.11)
    );
    // Remote registries keep their sealed secrets as they are: the replicas must be given
    // the same sealing key (BERTH_SECRET_KEY = base64 of DATA/secret.key).
    type RegistryRow = (
        String,
        String,
        String,
        Vec<u8>,
        String,
        bool,
        String,
        i64,
        i64,
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "remote_registries",
        RegistryRow,
        "SELECT name, url, username, secret_sealed, ca_pem, insecure, description, created_at,
                updated_at FROM remote_registries",
        |tx, r| sqlx::query(
            "INSERT INTO remote_registries (name, url, username, secret_sealed, ca_pem, insecure,
                 description, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
        .bind(r.4)
        .bind(r.5)
        .bind(r.6)
        .bind(r.7)
        .bind(r.8)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "registry_health",
        (String, i64, bool, String),
        "SELECT name, checked_at, ok, message FROM registry_health",
        |tx, r| sqlx::query(
            "INSERT INTO registry_health (name, checked_at, ok, message) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
        .bind(r.2)
        .bind(r.3)
    );
    copy_table!(
        src,
        dst,
        report,
        progress,
        "project_proxies",
        (String, String),
        "SELECT project, registry FROM project_proxies",
        |tx, r| sqlx::query(
            "INSERT INTO project_proxies (project, registry) VALUES ($1, $2)
             ON CONFLICT (project) DO NOTHING",
        )
        .bind(r.0)
        .bind(r.1)
    );
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('gc_runs', 'id'),
                       GREATEST((SELECT COALESCE(MAX(id), 0) FROM gc_runs), 1))",
    )
    .execute(&dst.pool)
    .await?;
    // New events continue after the highest migrated id.
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('audit_events', 'id'),
                       GREATEST((SELECT COALESCE(MAX(id), 0) FROM audit_events), 1))",
    )
    .execute(&dst.pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{
        AccountStore, AuditEvent, AuditFilter, Project, ProjectRole, Robot, User,
    };
    use crate::fs::FsBlobStore;
    use crate::metadata::{MetadataStore, NewManifest};
    use crate::pg_fixture::PgCluster;
    use crate::postgres::PgOptions;
    use bytes::Bytes;

    async fn put_blob(store: &FsBlobStore, data: &[u8]) -> Digest {
        let digest = Digest::sha256(data);
        let id = store.start_upload().await.unwrap();
        let body: crate::ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(
            Bytes::copy_from_slice(data),
        )]));
        store.append(&id, Some(0), body, u64::MAX).await.unwrap();
        store.finish_upload(&id, &digest).await.unwrap();
        digest
    }

    fn manifest(repo: &str, content: &str, tag: Option<&str>, blobs: &[&Digest]) -> NewManifest {
        NewManifest {
            repository: repo.to_owned(),
            digest: Digest::sha256(content.as_bytes()),
            media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
            content: content.as_bytes().to_vec(),
            tag: tag.map(str::to_owned),
            blobs: blobs.iter().map(|d| (*d).clone()).collect(),
            children: Vec::new(),
            subject: None,
            artifact_type: None,
            annotations_json: None,
        }
    }

    /// A populated embedded deployment (projects, users, robots, images sharing a layer, a
    /// referrer, audit entries) moves to PostgreSQL + another blob directory bit for bit;
    /// a second run after more changes catches up; a corrupt source blob stops the run.
    #[tokio::test]
    async fn embedded_deployment_moves_to_postgres_and_catches_up() {
        let src_dir = tempfile::tempdir().unwrap();
        let dst_dir = tempfile::tempdir().unwrap();
        let src = SqliteMetadata::open(&src_dir.path().join("metadata.db"))
            .await
            .unwrap();
        let src_blobs = FsBlobStore::open(src_dir.path().to_path_buf())
            .await
            .unwrap();
        let dst_blobs = FsBlobStore::open(dst_dir.path().to_path_buf())
            .await
            .unwrap();
        let url = PgCluster::shared().database().await;
        let dst = PgMetadata::open(&PgOptions::new(url)).await.unwrap();

        let shared = put_blob(&src_blobs, b"shared layer").await;
        let own = put_blob(&src_blobs, b"own layer").await;
        let config = put_blob(&src_blobs, b"{\"config\":1}").await;
        for (repo, blobs) in [
            ("library/a", [&shared, &config]),
            ("team/b", [&shared, &own]),
        ] {
            for b in blobs {
                let size = src_blobs.stat(b).await.unwrap().unwrap();
                src.link_blob(repo, b, size).await.unwrap();
            }
        }
        let a = manifest("library/a", r#"{"a":1}"#, Some("v1"), &[&shared, &config]);
        let b = manifest("team/b", r#"{"b":1}"#, Some("latest"), &[&shared, &own]);
        let mut sig = manifest("library/a", r#"{"sig":1}"#, None, &[]);
        sig.subject = Some(a.digest.clone());
        sig.artifact_type = Some("application/vnd.example.sig".into());
        for m in [&a, &b, &sig] {
            src.put_manifest(m.clone()).await.unwrap();
        }
        for p in ["library", "team"] {
            src.create_project(&Project {
                name: p.into(),
                public: p == "library",
                description: format!("{p} images"),
                created_at: 5,
            })
            .await
            .unwrap();
        }
        src.create_user(&User {
            name: "alice".into(),
            password_hash: "$argon2id$alice".into(),
            admin: false,
            created_at: 6,
            disabled: false,
        })
        .await
        .unwrap();
        src.set_member("team", "alice", ProjectRole::Developer)
            .await
            .unwrap();
        src.create_robot(&Robot {
            project: "team".into(),
            name: "robot$team+ci".into(),
            secret_hash: "$argon2id$ci".into(),
            can_push: true,
            expires_at: Some(99),
            revoked: false,
            created_at: 7,
            description: "CI".into(),
        })
        .await
        .unwrap();
        for i in 0..3 {
            src.audit(&AuditEvent {
                id: 0,
                at: i,
                actor: "alice".into(),
                action: "push".into(),
                resource: format!("team/b:{i}"),
                client_addr: "127.0.0.1".into(),
                detail: String::new(),
            })
            .await
            .unwrap();
        }

        use crate::lifecycle::{GcRun, LifecycleStore, ProjectPolicy};
        let policy = ProjectPolicy {
            project: "team".into(),
            quota_bytes: Some(1 << 20),
            max_repositories: Some(3),
            immutable_tags: vec!["v*".into()],
            retention_json: Some(r#"{"keep_last":2}"#.into()),
        };
        src.set_project_policy(&policy).await.unwrap();
        let run = GcRun {
            kind: "gc".into(),
            started_by: "cli".into(),
            started_at: 8,
            finished_at: 9,
            blobs_removed: 1,
            ..GcRun::default()
        };
        let run_id = src.record_gc_run(&run).await.unwrap();

        use crate::remotes::{RegistryHealth, RemoteRegistry, RemoteStore};
        let hub = RemoteRegistry {
            name: "hub".into(),
            url: "https://registry-1.docker.io".into(),
            username: "puller".into(),
            secret_sealed: vec![1, 2, 3],
            ca_pem: String::new(),
            insecure: false,
            description: "Docker Hub".into(),
            created_at: 10,
            updated_at: 11,
        };
        src.create_registry(&hub).await.unwrap();
        let health = RegistryHealth {
            name: "hub".into(),
            checked_at: 12,
            ok: true,
            message: "reachable".into(),
        };
        src.set_registry_health(&health).await.unwrap();
        src.set_project_proxy("library", Some("hub")).await.unwrap();

        let quiet = |_: &str| {};
        let report = migrate(&src, &src_blobs, &dst, &dst_blobs, &quiet)
            .await
            .unwrap();
        assert_eq!((report.blobs_copied, report.blobs_present), (3, 0));
        // Lifecycle: the policy and the run record move; the quota usage the target's
        // triggers counted equals the source's.
        assert_eq!(dst.project_policy("team").await.unwrap(), policy);
        let runs = dst.gc_runs(10).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(
            GcRun {
                id: run_id,
                ..run.clone()
            },
            runs[0]
        );
        assert!(dst.record_gc_run(&run).await.unwrap() > run_id);
        for project in ["library", "team"] {
            assert_eq!(
                dst.quota_usage(project).await.unwrap(),
                src.quota_usage(project).await.unwrap(),
                "usage of {project}"
            );
        }

        // Everything is there, bit for bit.
        for m in [&a, &b] {
            let tag = m.tag.as_deref().unwrap();
            let got = dst
                .manifest_by_tag(&m.repository, tag)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (got.digest, got.content),
                (m.digest.clone(), m.content.clone())
            );
            for blob in &m.blobs {
                assert!(dst.blob_link(&m.repository, blob).await.unwrap().is_some());
                let mut r = dst_blobs.open(blob, None).await.unwrap();
                let mut bytes = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut r.reader, &mut bytes)
                    .await
                    .unwrap();
                assert_eq!(&Digest::sha256(&bytes), blob);
            }
        }
        let referrers = dst.referrers("library/a", &a.digest, None).await.unwrap();
        assert_eq!(referrers.len(), 1);
        assert_eq!(referrers[0].digest, sig.digest);
        assert_eq!(
            dst.list_projects().await.unwrap(),
            src.list_projects().await.unwrap()
        );
        assert_eq!(
            dst.list_users().await.unwrap(),
            src.list_users().await.unwrap()
        );
        assert_eq!(
            dst.members("team").await.unwrap(),
            src.members("team").await.unwrap()
        );
        assert_eq!(
            dst.robots("team").await.unwrap(),
            src.robots("team").await.unwrap()
        );
        let all = AuditFilter::default();
        assert_eq!(
            dst.audit_events(&all).await.unwrap(),
            src.audit_events(&all).await.unwrap()
        );
        assert_eq!(dst.list_registries().await.unwrap(), vec![hub.clone()]);
        assert_eq!(dst.registry_health("hub").await.unwrap(), Some(health));
        assert_eq!(
            dst.proxy_projects().await.unwrap(),
            vec![("library".to_string(), "hub".to_string())]
        );

        // Changes in the source, then a second run: it catches up and copies no blob twice.
        let moved = manifest("team/b", r#"{"b":2}"#, Some("latest"), &[&own]);
        src.put_manifest(moved.clone()).await.unwrap();
        src.revoke_robot("robot$team+ci").await.unwrap();
        src.set_member("team", "alice", ProjectRole::Maintainer)
            .await
            .unwrap();
        let report = migrate(&src, &src_blobs, &dst, &dst_blobs, &quiet)
            .await
            .unwrap();
        assert_eq!((report.blobs_copied, report.blobs_present), (0, 3));
        let got = dst
            .manifest_by_tag("team/b", "latest")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.digest, moved.digest);
        assert!(dst.robot("robot$team+ci").await.unwrap().unwrap().revoked);
        assert_eq!(
            dst.role_of("team", "alice").await.unwrap(),
            Some(ProjectRole::Maintainer)
        );
        // New audit events continue after the migrated ids.
        dst.audit(&AuditEvent {
            id: 0,
            at: 10,
            actor: "bob".into(),
            action: "login".into(),
            resource: "registry".into(),
            client_addr: String::new(),
            detail: String::new(),
        })
        .await
        .unwrap();
        let events = dst.audit_events(&all).await.unwrap();
        assert_eq!(events.len(), 4);
        assert!(events[0].id > events[1].id && events[0].actor == "bob");

        // A corrupt blob in the source stops the run with a message naming it.
        let bad = put_blob(&src_blobs, b"will rot").await;
        src.link_blob("team/b", &bad, 8).await.unwrap();
        let hex = bad.to_string().trim_start_matches("sha256:").to_owned();
        let path = src_dir
            .path()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(&hex);
        std::fs::write(&path, b"rotten!!").unwrap();
        let e = migrate(&src, &src_blobs, &dst, &dst_blobs, &quiet)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&bad.to_string()), "{e}");
        assert!(dst_blobs.stat(&bad).await.unwrap().is_none());
    }
}
