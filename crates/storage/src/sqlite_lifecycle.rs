//! [`LifecycleStore`] for [`SqliteMetadata`]: the change log, tombstones, upload pins,
//! quota usage, policies, pull times and GC runs (see [`crate::lifecycle`]).
//!
//! Migration `lifecycle-1` ([`SCHEMA`], recorded in `schema_migrations`) adds the tables
//! and the triggers that keep the change log (`gc_candidates`) and the quota usage
//! (`project_blobs`, `project_usage`) in the same transaction as every write to `tags`,
//! `manifests`, `manifest_blobs`, `manifest_children`, `blob_links` and `upload_pins`,
//! including the rows `ON DELETE CASCADE` removes. On a database made before it, the
//! migration fills usage and candidates once from the existing rows.
//!
//! SQLite has one writer at a time, so each primitive's transaction is serialized with
//! every push: the basis of the collector's safety argument (ARCHITECTURE.md).

use async_trait::async_trait;
use berth_proto::Digest;
use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::lifecycle::{
    BlobVerdict, Candidate, CandidateKind, GcRun, LifecycleStore, ManifestVerdict, ProjectPolicy,
    PushLimits, QuotaUsage, TagTimes, quota_message,
};
use crate::metadata::{NewManifest, UploadSession};
use crate::sqlite::{SqliteMetadata, now, parse_digest, project_range, to_i64, to_u64};
use crate::{StorageError, StorageResult};

/// The project of a repository column (its first path segment), as SQL.
macro_rules! project_of {
    ($col:literal) => {
        concat!(
            "(CASE WHEN instr(",
            $col,
            ", '/') > 0 THEN substr(",
            $col,
            ", 1, instr(",
            $col,
            ", '/') - 1) ELSE ",
            $col,
            " END)"
        )
    };
}

/// Tables and triggers of migration `lifecycle-1` (idempotent).
pub const SCHEMA: &str = concat!(
    r#"
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        TEXT    NOT NULL PRIMARY KEY,
    applied_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- The change log: what may have become garbage ('m' manifest, 'b' blob), since when.
CREATE TABLE IF NOT EXISTS gc_candidates (
    kind        TEXT    NOT NULL,
    repository  TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    since       INTEGER NOT NULL,
    PRIMARY KEY (kind, repository, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gc_candidates_by_since ON gc_candidates(kind, since, repository, digest);

-- Blobs chosen by the collector whose bytes are being deleted.
CREATE TABLE IF NOT EXISTS blob_tombstones (
    digest      TEXT    NOT NULL PRIMARY KEY,
    at          INTEGER NOT NULL
) WITHOUT ROWID;

-- Digests an upload is committing right now.
CREATE TABLE IF NOT EXISTS upload_pins (
    upload      TEXT    NOT NULL PRIMARY KEY,
    digest      TEXT    NOT NULL,
    at          INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS upload_pins_by_digest ON upload_pins(digest);

-- Quota usage: distinct blobs referenced per project, and the project's total bytes.
CREATE TABLE IF NOT EXISTS project_blobs (
    project     TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    refs        INTEGER NOT NULL,
    PRIMARY KEY (project, digest)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS project_usage (
    project     TEXT    NOT NULL PRIMARY KEY,
    bytes       INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS project_policies (
    project           TEXT    NOT NULL PRIMARY KEY,
    quota_bytes       INTEGER,
    max_repositories  INTEGER,
    immutable_tags    TEXT    NOT NULL,
    retention         TEXT,
    updated_at        INTEGER NOT NULL
) WITHOUT ROWID;

-- Last pull of each manifest (written in batches, never per pull).
CREATE TABLE IF NOT EXISTS manifest_pulls (
    repository  TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    pulled_at   INTEGER NOT NULL,
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS gc_runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    kind               TEXT    NOT NULL,
    started_by         TEXT    NOT NULL,
    dry_run            INTEGER NOT NULL,
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER NOT NULL,
    manifests_removed  INTEGER NOT NULL,
    tags_removed       INTEGER NOT NULL,
    blobs_removed      INTEGER NOT NULL,
    bytes_freed        INTEGER NOT NULL,
    errors             TEXT    NOT NULL,
    detail             TEXT    NOT NULL
);

CREATE TRIGGER IF NOT EXISTS lc_tag_moved AFTER UPDATE OF digest ON tags
WHEN old.digest <> new.digest BEGIN
    INSERT INTO gc_candidates VALUES ('m', old.repository, old.digest, unixepoch())
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
END;
CREATE TRIGGER IF NOT EXISTS lc_tag_deleted AFTER DELETE ON tags BEGIN
    INSERT INTO gc_candidates VALUES ('m', old.repository, old.digest, unixepoch())
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
END;
CREATE TRIGGER IF NOT EXISTS lc_manifest_added AFTER INSERT ON manifests BEGIN
    INSERT INTO gc_candidates VALUES ('m', new.repository, new.digest, unixepoch())
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
    INSERT INTO project_usage (project, bytes) VALUES ("#,
    project_of!("new.repository"),
    r#", new.size)
        ON CONFLICT (project) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS lc_manifest_deleted AFTER DELETE ON manifests BEGIN
    UPDATE project_usage SET bytes = bytes - old.size WHERE project = "#,
    project_of!("old.repository"),
    r#";
    INSERT INTO gc_candidates
        SELECT 'm', repository, digest, unixepoch() FROM manifests
        WHERE repository = old.repository AND subject = old.digest
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
    INSERT INTO gc_candidates
        SELECT 'm', old.repository, old.subject, unixepoch() WHERE old.subject IS NOT NULL
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
    DELETE FROM manifest_pulls WHERE repository = old.repository AND digest = old.digest;
END;
CREATE TRIGGER IF NOT EXISTS lc_child_removed AFTER DELETE ON manifest_children BEGIN
    INSERT INTO gc_candidates VALUES ('m', old.repository, old.child, unixepoch())
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
END;
CREATE TRIGGER IF NOT EXISTS lc_reference_added AFTER INSERT ON manifest_blobs BEGIN
    INSERT INTO project_usage (project, bytes)
        SELECT "#,
    project_of!("new.repository"),
    r#",
               COALESCE((SELECT size FROM blob_links WHERE digest = new.blob LIMIT 1), 0)
        WHERE NOT EXISTS (SELECT 1 FROM project_blobs
                          WHERE project = "#,
    project_of!("new.repository"),
    r#" AND digest = new.blob)
        ON CONFLICT (project) DO UPDATE SET bytes = bytes + excluded.bytes;
    INSERT INTO project_blobs (project, digest, size, refs)
        VALUES ("#,
    project_of!("new.repository"),
    r#", new.blob,
                COALESCE((SELECT size FROM blob_links WHERE digest = new.blob LIMIT 1), 0), 1)
        ON CONFLICT (project, digest) DO UPDATE SET refs = refs + 1;
END;
CREATE TRIGGER IF NOT EXISTS lc_reference_removed AFTER DELETE ON manifest_blobs BEGIN
    UPDATE project_blobs SET refs = refs - 1
        WHERE project = "#,
    project_of!("old.repository"),
    r#" AND digest = old.blob;
    UPDATE project_usage SET bytes = bytes - (
            SELECT size FROM project_blobs
            WHERE project = "#,
    project_of!("old.repository"),
    r#" AND digest = old.blob AND refs <= 0)
        WHERE project = "#,
    project_of!("old.repository"),
    r#"
          AND EXISTS (SELECT 1 FROM project_blobs
                      WHERE project = "#,
    project_of!("old.repository"),
    r#" AND digest = old.blob AND refs <= 0);
    DELETE FROM project_blobs
        WHERE project = "#,
    project_of!("old.repository"),
    r#" AND digest = old.blob AND refs <= 0;
    INSERT INTO gc_candidates VALUES ('b', '', old.blob, unixepoch())
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
END;
CREATE TRIGGER IF NOT EXISTS lc_link_added AFTER INSERT ON blob_links BEGIN
    INSERT INTO gc_candidates VALUES ('b', '', new.digest, unixepoch())
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
END;
CREATE TRIGGER IF NOT EXISTS lc_link_removed AFTER DELETE ON blob_links BEGIN
    INSERT INTO gc_candidates VALUES ('b', '', old.digest, unixepoch())
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
END;
CREATE TRIGGER IF NOT EXISTS lc_pin_removed AFTER DELETE ON upload_pins BEGIN
    INSERT INTO gc_candidates VALUES ('b', '', old.digest, unixepoch())
        ON CONFLICT (kind, repository, digest) DO UPDATE SET since = excluded.since;
END;
CREATE TRIGGER IF NOT EXISTS lc_upload_removed AFTER DELETE ON uploads BEGIN
    DELETE FROM upload_pins WHERE upload = old.id;
END;
"#
);

/// One-time backfill of a database that had data before `lifecycle-1`.
const BACKFILL: &str = concat!(
    r#"
DELETE FROM project_blobs;
DELETE FROM project_usage;
INSERT INTO project_blobs (project, digest, size, refs)
    SELECT "#,
    project_of!("mb.repository"),
    r#", mb.blob,
           COALESCE((SELECT size FROM blob_links b WHERE b.digest = mb.blob LIMIT 1), 0),
           COUNT(*)
    FROM manifest_blobs mb GROUP BY 1, 2;
INSERT INTO project_usage (project, bytes)
    SELECT project, SUM(bytes) FROM (
        SELECT project, size AS bytes FROM project_blobs
        UNION ALL
        SELECT "#,
    project_of!("repository"),
    r#" AS project, size AS bytes FROM manifests)
    WHERE true GROUP BY project
    ON CONFLICT (project) DO UPDATE SET bytes = excluded.bytes;
INSERT OR REPLACE INTO gc_candidates
    SELECT 'm', m.repository, m.digest, unixepoch() FROM manifests m
    WHERE NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository = m.repository AND t.digest = m.digest);
INSERT OR REPLACE INTO gc_candidates
    SELECT 'b', '', b.digest, unixepoch() FROM blob_links b
    WHERE NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob = b.digest)
    GROUP BY b.digest;
"#
);

const MIGRATION: &str = "lifecycle-1";

/// Apply migration `lifecycle-1` if it has not been (called at every open).
pub(crate) async fn migrate(pool: &SqlitePool) -> StorageResult<()> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(SCHEMA).execute(&mut *tx).await?;
    let applied = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS(SELECT 1 FROM schema_migrations WHERE name = ?1)",
    )
    .bind(MIGRATION)
    .fetch_one(&mut *tx)
    .await?;
    if !applied {
        sqlx::raw_sql(BACKFILL).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (name, applied_at) VALUES (?1, ?2)")
            .bind(MIGRATION)
            .bind(now())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `BlobUnknown` if the collector has tombstoned `digest` (its bytes are going away).
pub(crate) async fn refuse_tombstoned(
    tx: &mut Transaction<'_, Sqlite>,
    digest: &Digest,
) -> StorageResult<()> {
    if tombstoned(tx, &digest.to_string()).await? {
        return Err(StorageError::BlobUnknown(digest.clone()));
    }
    Ok(())
}

async fn tombstoned(tx: &mut Transaction<'_, Sqlite>, digest: &str) -> StorageResult<bool> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS(SELECT 1 FROM blob_tombstones WHERE digest = ?1)",
    )
    .bind(digest)
    .fetch_one(&mut **tx)
    .await?)
}

/// Inside a manifest PUT: every referenced blob is linked somewhere and not tombstoned,
/// every child manifest is in the repository.
pub(crate) async fn check_references(
    tx: &mut Transaction<'_, Sqlite>,
    manifest: &NewManifest,
) -> StorageResult<()> {
    for blob in &manifest.blobs {
        let alive = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM blob_links WHERE digest = ?1)
                AND NOT EXISTS(SELECT 1 FROM blob_tombstones WHERE digest = ?1)",
        )
        .bind(blob.to_string())
        .fetch_one(&mut **tx)
        .await?;
        if !alive {
            return Err(StorageError::BlobUnknown(blob.clone()));
        }
    }
    for child in &manifest.children {
        let exists = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM manifests WHERE repository = ?1 AND digest = ?2)",
        )
        .bind(&manifest.repository)
        .bind(child.to_string())
        .fetch_one(&mut **tx)
        .await?;
        if !exists {
            return Err(StorageError::NotFound(format!(
                "manifest {child} in repository {}",
                manifest.repository
            )));
        }
    }
    Ok(())
}

/// Inside a manifest PUT: the quota, the repository count and the immutable rule.
pub(crate) async fn check_limits(
    tx: &mut Transaction<'_, Sqlite>,
    manifest: &NewManifest,
    limits: &PushLimits,
) -> StorageResult<()> {
    let repository = manifest.repository.as_str();
    let digest = manifest.digest.to_string();
    if let (Some(rule), Some(tag)) = (&limits.immutable_rule, &manifest.tag) {
        let current = sqlx::query_scalar::<_, String>(
            "SELECT digest FROM tags WHERE repository = ?1 AND tag = ?2",
        )
        .bind(repository)
        .bind(tag)
        .fetch_optional(&mut **tx)
        .await?;
        if current.is_some_and(|d| d != digest) {
            return Err(StorageError::Denied(format!(
                "tag {repository}:{tag} is immutable (rule \"{rule}\" of project {}): it cannot be \
                 moved to another manifest; push under a new tag",
                limits.project
            )));
        }
    }
    if let Some(max) = limits.max_repositories {
        let (lo, hi) = project_range(&limits.project);
        let (count, known) = sqlx::query_as::<_, (i64, bool)>(
            "SELECT (SELECT COUNT(*) FROM repositories WHERE name >= ?1 AND name < ?2),
                    EXISTS(SELECT 1 FROM manifests WHERE repository = ?3)
                    OR EXISTS(SELECT 1 FROM blob_links WHERE repository = ?3)",
        )
        .bind(&lo)
        .bind(&hi)
        .bind(repository)
        .fetch_one(&mut **tx)
        .await?;
        if !known && to_u64(count)? > max {
            return Err(StorageError::Denied(format!(
                "project {} may hold at most {max} repositories and has {}; \
                 delete a repository or ask an administrator to raise the limit",
                limits.project,
                count - 1
            )));
        }
    }
    if let Some(quota) = limits.quota_bytes {
        let usage = sqlx::query_scalar::<_, i64>(
            "SELECT COALESCE((SELECT bytes FROM project_usage WHERE project = ?1), 0)",
        )
        .bind(&limits.project)
        .fetch_one(&mut **tx)
        .await?;
        let mut added = 0u64;
        let stored = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM manifests WHERE repository = ?1 AND digest = ?2)",
        )
        .bind(repository)
        .bind(&digest)
        .fetch_one(&mut **tx)
        .await?;
        if !stored {
            added += manifest.content.len() as u64;
        }
        let mut seen = std::collections::HashSet::new();
        for blob in &manifest.blobs {
            if !seen.insert(blob) {
                continue;
            }
            let size = sqlx::query_scalar::<_, i64>(
                "SELECT CASE WHEN EXISTS(SELECT 1 FROM project_blobs
                                         WHERE project = ?1 AND digest = ?2)
                        THEN 0
                        ELSE COALESCE((SELECT size FROM blob_links WHERE digest = ?2 LIMIT 1), 0)
                        END",
            )
            .bind(&limits.project)
            .bind(blob.to_string())
            .fetch_one(&mut **tx)
            .await?;
            added += to_u64(size)?;
        }
        let usage = to_u64(usage.max(0))?;
        if added > 0 && usage.saturating_add(added) > quota {
            return Err(StorageError::Denied(quota_message(
                &limits.project,
                quota,
                usage,
                added,
            )));
        }
    }
    Ok(())
}

fn kind_code(kind: CandidateKind) -> &'static str {
    match kind {
        CandidateKind::Manifest => "m",
        CandidateKind::Blob => "b",
    }
}

fn opt_u64(v: Option<i64>) -> StorageResult<Option<u64>> {
    v.map(to_u64).transpose()
}

fn opt_i64(v: Option<u64>) -> StorageResult<Option<i64>> {
    v.map(to_i64).transpose()
}

type PolicyRow = (String, Option<i64>, Option<i64>, String, Option<String>);

fn policy(row: PolicyRow) -> StorageResult<ProjectPolicy> {
    let (project, quota, max_repos, immutable, retention) = row;
    let immutable_tags: Vec<String> = serde_json::from_str(&immutable)
        .map_err(|e| StorageError::Database(format!("invalid immutable_tags: {e}")))?;
    Ok(ProjectPolicy {
        project,
        quota_bytes: opt_u64(quota)?,
        max_repositories: opt_u64(max_repos)?,
        immutable_tags,
        retention_json: retention,
    })
}

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

#[async_trait]
impl LifecycleStore for SqliteMetadata {
    async fn gc_candidates(
        &self,
        kind: CandidateKind,
        after: Option<&Candidate>,
        limit: u32,
    ) -> StorageResult<Vec<Candidate>> {
        let (since, repo, digest) = match after {
            Some(c) => (c.since, c.repository.clone(), c.digest.to_string()),
            None => (i64::MIN, String::new(), String::new()),
        };
        let rows = sqlx::query_as::<_, (String, String, i64)>(
            "SELECT repository, digest, since FROM gc_candidates
             WHERE kind = ?1 AND (since, repository, digest) > (?2, ?3, ?4)
             ORDER BY since, repository, digest LIMIT ?5",
        )
        .bind(kind_code(kind))
        .bind(since)
        .bind(&repo)
        .bind(&digest)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(repository, digest, since)| {
                Ok(Candidate {
                    kind,
                    repository,
                    digest: parse_digest(&digest)?,
                    since,
                })
            })
            .collect()
    }

    async fn gc_backlog(&self) -> StorageResult<u64> {
        let n = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM gc_candidates")
            .fetch_one(&self.reader)
            .await?;
        to_u64(n)
    }

    async fn collect_manifest(
        &self,
        repository: &str,
        digest: &Digest,
        untagged_before: i64,
        dry_run: bool,
    ) -> StorageResult<ManifestVerdict> {
        let d = digest.to_string();
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query_as::<_, (i64, Option<String>)>(
            "SELECT size, subject FROM manifests WHERE repository = ?1 AND digest = ?2",
        )
        .bind(repository)
        .bind(&d)
        .fetch_optional(&mut *tx)
        .await?;
        // Gone already, or still referenced: the candidate is dropped and nothing else done.
        let size = match row {
            None => None,
            Some((size, subject)) => {
                let referenced = sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS(SELECT 1 FROM tags WHERE repository = ?1 AND digest = ?2)
                 OR EXISTS(SELECT 1 FROM manifest_children WHERE repository = ?1 AND child = ?2)
                 OR EXISTS(SELECT 1 FROM manifests WHERE repository = ?1 AND subject = ?2)
                 OR EXISTS(SELECT 1 FROM manifests WHERE repository = ?1 AND digest = ?3)",
                )
                .bind(repository)
                .bind(&d)
                .bind(subject.as_deref().unwrap_or(""))
                .fetch_one(&mut *tx)
                .await?;
                (!referenced).then_some(size)
            }
        };
        let Some(size) = size else {
            sqlx::query(
                "DELETE FROM gc_candidates WHERE kind = 'm' AND repository = ?1 AND digest = ?2",
            )
            .bind(repository)
            .bind(&d)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(ManifestVerdict::Kept);
        };
        let since = sqlx::query_scalar::<_, i64>(
            "SELECT since FROM gc_candidates WHERE kind = 'm' AND repository = ?1 AND digest = ?2",
        )
        .bind(repository)
        .bind(&d)
        .fetch_optional(&mut *tx)
        .await?;
        // Without a candidate row the change is unknown: treat it as just made.
        if since.is_none_or(|s| s > untagged_before) {
            if since.is_none() {
                sqlx::query("INSERT OR IGNORE INTO gc_candidates VALUES ('m', ?1, ?2, ?3)")
                    .bind(repository)
                    .bind(&d)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            return Ok(ManifestVerdict::TooRecent);
        }
        if dry_run {
            return Ok(ManifestVerdict::Removed(to_u64(size)?));
        }
        for statement in [
            "DELETE FROM manifest_blobs WHERE repository = ?1 AND manifest = ?2",
            "DELETE FROM manifest_children WHERE repository = ?1 AND manifest = ?2",
            "DELETE FROM manifests WHERE repository = ?1 AND digest = ?2",
            "DELETE FROM gc_candidates WHERE kind = 'm' AND repository = ?1 AND digest = ?2",
        ] {
            sqlx::query(statement)
                .bind(repository)
                .bind(&d)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.manifests.invalidate();
        Ok(ManifestVerdict::Removed(to_u64(size)?))
    }

    async fn tombstone_blob(
        &self,
        digest: &Digest,
        unreferenced_before: i64,
        dry_run: bool,
    ) -> StorageResult<BlobVerdict> {
        let d = digest.to_string();
        let mut tx = self.writer.begin().await?;
        let (referenced, since, dead) = sqlx::query_as::<_, (bool, Option<i64>, bool)>(
            "SELECT EXISTS(SELECT 1 FROM manifest_blobs WHERE blob = ?1)
                 OR EXISTS(SELECT 1 FROM upload_pins WHERE digest = ?1),
                 (SELECT since FROM gc_candidates WHERE kind = 'b' AND repository = '' AND digest = ?1),
                 EXISTS(SELECT 1 FROM blob_tombstones WHERE digest = ?1)",
        )
        .bind(&d)
        .fetch_one(&mut *tx)
        .await?;
        let drop_candidate =
            "DELETE FROM gc_candidates WHERE kind = 'b' AND repository = '' AND digest = ?1";
        if referenced || dead {
            sqlx::query(drop_candidate)
                .bind(&d)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(BlobVerdict::Kept);
        }
        if since.is_none_or(|s| s > unreferenced_before) {
            if since.is_none() {
                sqlx::query("INSERT OR IGNORE INTO gc_candidates VALUES ('b', '', ?1, ?2)")
                    .bind(&d)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            return Ok(BlobVerdict::TooRecent);
        }
        if dry_run {
            return Ok(BlobVerdict::Tombstoned);
        }
        sqlx::query("DELETE FROM blob_links WHERE digest = ?1")
            .bind(&d)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO blob_tombstones (digest, at) VALUES (?1, ?2)")
            .bind(&d)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        sqlx::query(drop_candidate)
            .bind(&d)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(BlobVerdict::Tombstoned)
    }

    async fn clear_tombstone(&self, digest: &Digest) -> StorageResult<()> {
        sqlx::query("DELETE FROM blob_tombstones WHERE digest = ?1")
            .bind(digest.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn tombstones(&self) -> StorageResult<Vec<Digest>> {
        let rows =
            sqlx::query_scalar::<_, String>("SELECT digest FROM blob_tombstones ORDER BY digest")
                .fetch_all(&self.reader)
                .await?;
        rows.iter().map(|d| parse_digest(d)).collect()
    }

    async fn blob_references(
        &self,
        digest: &Digest,
        limit: u32,
    ) -> StorageResult<Vec<(String, Digest)>> {
        let rows = sqlx::query_as::<_, (String, String)>(
            "SELECT repository, manifest FROM manifest_blobs WHERE blob = ?1
             ORDER BY repository, manifest LIMIT ?2",
        )
        .bind(digest.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(r, m)| Ok((r, parse_digest(&m)?)))
            .collect()
    }

    async fn manifest_references(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> StorageResult<(Vec<Digest>, Vec<Digest>)> {
        let d = digest.to_string();
        let blobs = sqlx::query_scalar::<_, String>(
            "SELECT blob FROM manifest_blobs WHERE repository = ?1 AND manifest = ?2 ORDER BY blob",
        )
        .bind(repository)
        .bind(&d)
        .fetch_all(&self.reader)
        .await?;
        let children = sqlx::query_scalar::<_, String>(
            "SELECT child FROM manifest_children WHERE repository = ?1 AND manifest = ?2
             ORDER BY child",
        )
        .bind(repository)
        .bind(&d)
        .fetch_all(&self.reader)
        .await?;
        Ok((
            blobs
                .iter()
                .map(|b| parse_digest(b))
                .collect::<Result<_, _>>()?,
            children
                .iter()
                .map(|c| parse_digest(c))
                .collect::<Result<_, _>>()?,
        ))
    }

    async fn pin_upload(&self, upload: &str, digest: &Digest) -> StorageResult<()> {
        let mut tx = self.writer.begin().await?;
        if tombstoned(&mut tx, &digest.to_string()).await? {
            return Err(StorageError::Conflict(format!(
                "blob {digest} is being garbage-collected; retry in a moment"
            )));
        }
        sqlx::query("INSERT OR REPLACE INTO upload_pins (upload, digest, at) VALUES (?1, ?2, ?3)")
            .bind(upload)
            .bind(digest.to_string())
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mount_blob(
        &self,
        from: Option<&str>,
        to: &str,
        digest: &Digest,
    ) -> StorageResult<Option<u64>> {
        let d = digest.to_string();
        let mut tx = self.writer.begin().await?;
        if tombstoned(&mut tx, &d).await? {
            return Ok(None);
        }
        let size = match from {
            Some(from) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT size FROM blob_links WHERE repository = ?1 AND digest = ?2",
                )
                .bind(from)
                .bind(&d)
                .fetch_optional(&mut *tx)
                .await?
            }
            None => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT size FROM blob_links WHERE digest = ?1 LIMIT 1",
                )
                .bind(&d)
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let Some(size) = size else {
            return Ok(None);
        };
        sqlx::query("INSERT OR IGNORE INTO repositories (name, created_at) VALUES (?1, ?2)")
            .bind(to)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO blob_links (repository, digest, size) VALUES (?1, ?2, ?3)",
        )
        .bind(to)
        .bind(&d)
        .bind(size)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(to_u64(size)?))
    }

    async fn put_manifest_checked(
        &self,
        manifest: NewManifest,
        limits: &PushLimits,
    ) -> StorageResult<()> {
        self.put_manifest_in(manifest, Some(limits)).await
    }

    async fn project_has_blob(&self, project: &str, digest: &Digest) -> StorageResult<bool> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM project_blobs WHERE project = ?1 AND digest = ?2)",
        )
        .bind(project)
        .bind(digest.to_string())
        .fetch_one(&self.reader)
        .await?)
    }

    async fn project_policy(&self, project: &str) -> StorageResult<ProjectPolicy> {
        let row = sqlx::query_as::<_, PolicyRow>(
            "SELECT project, quota_bytes, max_repositories, immutable_tags, retention
             FROM project_policies WHERE project = ?1",
        )
        .bind(project)
        .fetch_optional(&self.reader)
        .await?;
        match row {
            Some(row) => policy(row),
            None => Ok(ProjectPolicy {
                project: project.to_owned(),
                ..ProjectPolicy::default()
            }),
        }
    }

    async fn set_project_policy(&self, p: &ProjectPolicy) -> StorageResult<()> {
        let immutable = serde_json::to_string(&p.immutable_tags)
            .map_err(|e| StorageError::Database(e.to_string()))?;
        sqlx::query(
            "INSERT OR REPLACE INTO project_policies
                 (project, quota_bytes, max_repositories, immutable_tags, retention, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&p.project)
        .bind(opt_i64(p.quota_bytes)?)
        .bind(opt_i64(p.max_repositories)?)
        .bind(immutable)
        .bind(p.retention_json.as_deref())
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn project_policies(&self) -> StorageResult<Vec<ProjectPolicy>> {
        let rows = sqlx::query_as::<_, PolicyRow>(
            "SELECT project, quota_bytes, max_repositories, immutable_tags, retention
             FROM project_policies ORDER BY project",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(policy).collect()
    }

    async fn quota_usage(&self, project: &str) -> StorageResult<QuotaUsage> {
        let (lo, hi) = project_range(project);
        let (bytes, repositories) = sqlx::query_as::<_, (i64, i64)>(
            "SELECT COALESCE((SELECT bytes FROM project_usage WHERE project = ?1), 0),
                    (SELECT COUNT(*) FROM repositories WHERE name >= ?2 AND name < ?3)",
        )
        .bind(project)
        .bind(&lo)
        .bind(&hi)
        .fetch_one(&self.reader)
        .await?;
        Ok(QuotaUsage {
            bytes: to_u64(bytes.max(0))?,
            repositories: to_u64(repositories)?,
        })
    }

    async fn record_pulls(&self, pulls: &[(String, Digest, i64)]) -> StorageResult<()> {
        if pulls.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        for (repository, digest, at) in pulls {
            sqlx::query(
                "INSERT INTO manifest_pulls (repository, digest, pulled_at)
                 SELECT ?1, ?2, ?3
                 WHERE EXISTS(SELECT 1 FROM manifests WHERE repository = ?1 AND digest = ?2)
                 ON CONFLICT (repository, digest)
                 DO UPDATE SET pulled_at = max(pulled_at, excluded.pulled_at)",
            )
            .bind(repository)
            .bind(digest.to_string())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn tag_times(&self, repository: &str) -> StorageResult<Vec<TagTimes>> {
        let rows = sqlx::query_as::<_, (String, String, i64, Option<i64>)>(
            "SELECT t.tag, t.digest, t.updated_at, p.pulled_at FROM tags t
             LEFT JOIN manifest_pulls p ON p.repository = t.repository AND p.digest = t.digest
             WHERE t.repository = ?1 ORDER BY t.tag",
        )
        .bind(repository)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(tag, digest, pushed_at, pulled_at)| {
                Ok(TagTimes {
                    tag,
                    digest: parse_digest(&digest)?,
                    pushed_at,
                    pulled_at,
                })
            })
            .collect()
    }

    async fn delete_repository(&self, repository: &str) -> StorageResult<()> {
        let mut tx = self.writer.begin().await?;
        for statement in [
            "DELETE FROM tags WHERE repository = ?1",
            "DELETE FROM manifest_blobs WHERE repository = ?1",
            "DELETE FROM manifest_children WHERE repository = ?1",
            "DELETE FROM manifests WHERE repository = ?1",
            "DELETE FROM blob_links WHERE repository = ?1",
            "DELETE FROM uploads WHERE repository = ?1",
            "DELETE FROM gc_candidates WHERE kind = 'm' AND repository = ?1",
        ] {
            sqlx::query(statement)
                .bind(repository)
                .execute(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM repositories WHERE name = ?1")
            .bind(repository)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StorageError::NotFound(format!("repository {repository}")));
        }
        tx.commit().await?;
        self.manifests.invalidate();
        Ok(())
    }

    async fn stale_uploads(&self, before: i64, limit: u32) -> StorageResult<Vec<UploadSession>> {
        let rows = sqlx::query_as::<_, (String, String, i64, String)>(
            "SELECT id, repository, started_at, owner FROM uploads WHERE started_at < ?1
             ORDER BY started_at LIMIT ?2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, repository, started_at, owner)| UploadSession {
                id,
                repository,
                started_at,
                owner,
            })
            .collect())
    }

    async fn record_gc_run(&self, run: &GcRun) -> StorageResult<i64> {
        let id = sqlx::query_scalar::<_, i64>(
            "INSERT INTO gc_runs (kind, started_by, dry_run, started_at, finished_at,
                 manifests_removed, tags_removed, blobs_removed, bytes_freed, errors, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
        )
        .bind(&run.kind)
        .bind(&run.started_by)
        .bind(run.dry_run)
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(to_i64(run.manifests_removed)?)
        .bind(to_i64(run.tags_removed)?)
        .bind(to_i64(run.blobs_removed)?)
        .bind(to_i64(run.bytes_freed)?)
        .bind(&run.errors)
        .bind(&run.detail)
        .fetch_one(&self.writer)
        .await?;
        Ok(id)
    }

    async fn gc_runs(&self, limit: u32) -> StorageResult<Vec<GcRun>> {
        let rows = sqlx::query_as::<_, RunRow>(
            "SELECT id, kind, started_by, dry_run, started_at, finished_at, manifests_removed,
                    tags_removed, blobs_removed, bytes_freed, errors, detail
             FROM gc_runs ORDER BY id DESC LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(GcRun {
                    id: r.0,
                    kind: r.1,
                    started_by: r.2,
                    dry_run: r.3,
                    started_at: r.4,
                    finished_at: r.5,
                    manifests_removed: to_u64(r.6)?,
                    tags_removed: to_u64(r.7)?,
                    blobs_removed: to_u64(r.8)?,
                    bytes_freed: to_u64(r.9)?,
                    errors: r.10,
                    detail: r.11,
                })
            })
            .collect()
    }

    async fn prune_audit(&self, before: Option<i64>, keep: Option<u64>) -> StorageResult<u64> {
        let mut deleted = 0;
        let mut tx = self.writer.begin().await?;
        if let Some(before) = before {
            deleted += sqlx::query("DELETE FROM audit_events WHERE at < ?1")
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if let Some(keep) = keep {
            deleted += sqlx::query(
                "DELETE FROM audit_events WHERE id <= (
                     SELECT id FROM audit_events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            )
            .bind(to_i64(keep)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }
}
