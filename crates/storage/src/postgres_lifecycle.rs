//! [`LifecycleStore`] for [`PgMetadata`]: the change log, tombstones, upload pins, quota
//! usage, policies, pull times and GC runs (see [`crate::lifecycle`]), a port of
//! [`crate::sqlite_lifecycle`] with the same semantics.
//!
//! Migration `0005_lifecycle.sql` adds the tables and the row triggers that keep the
//! change log (`gc_candidates`) and the quota usage (`project_blobs`, `project_usage`) in
//! the same transaction as every write, including the rows `ON DELETE CASCADE` removes.
//!
//! SQLite serializes every writer; here several replicas write at once at READ COMMITTED,
//! so each decision is serialized with the writes it depends on by transaction-scoped
//! advisory locks (released at commit or rollback), always taken in the order repository →
//! blob digests (sorted) → project:
//!
//! - the **blob lock** (`lock_blobs`): [`LifecycleStore::tombstone_blob`] takes it
//!   *exclusively*; everything that makes a blob reachable — `put_manifest`, `link_blob`,
//!   [`LifecycleStore::mount_blob`], [`LifecycleStore::pin_upload`] — takes it *shared*
//!   before it looks at the tombstones. Each statement of a READ COMMITTED transaction
//!   sees everything committed before it started, so whichever side gets the lock second
//!   sees the other's commit: the collector sees the new reference, pin or link and keeps
//!   the blob; or the writer sees the tombstone and refuses (`BlobUnknown`/`Conflict`/a
//!   fresh upload).
//! - the **repository lock** (`lock_repository`): [`LifecycleStore::collect_manifest`] and
//!   every manifest PUT, manifest delete or tag delete of that repository, so "untagged,
//!   no index lists it, no referrer names it" cannot change between the check and the
//!   delete.
//! - the **candidate row** (`SELECT … FOR UPDATE`): a decision locks its candidate before
//!   it reads anything, because writers that release a reference (a manifest delete
//!   releasing blobs, an upload releasing its pin) touch that row without the blob lock;
//!   "still referenced, drop the candidate" then never drops a touch made after the look.
//! - a **quota lock** per project, taken by a manifest PUT checked against a quota or a
//!   repository limit, so two pushes into one project cannot both fit in the last bytes.
//! - a **GC lock** (session-level, on a dedicated connection) held for a whole cycle by
//!   [`LifecycleStore::exclusive_gc`], so two replicas never run cycles at once (one could
//!   otherwise delete the bytes of a tombstone the other has just cleared and a push has
//!   re-uploaded).
//!
//! A transaction that loses a deadlock against another (triggers touch shared rows such as
//! a blob's candidate in orders no caller controls) is run again ([`retrying`]).

use async_trait::async_trait;
use berth_proto::Digest;
use sqlx::{Postgres, Transaction};

use crate::lifecycle::{
    BlobVerdict, Candidate, CandidateKind, GcRun, LifecycleStore, ManifestVerdict, ProjectPolicy,
    PushLimits, QuotaUsage, TagTimes, quota_message,
};
use crate::metadata::{NewManifest, UploadSession};
use crate::postgres::{
    PgMetadata, ensure_repository, lock_blobs, lock_key, lock_repository, parse_digest,
    project_range, retrying, to_i64, to_u64,
};
use crate::sqlite::now;
use crate::{StorageError, StorageResult};

/// `BlobUnknown` if the collector has tombstoned `digest` (call with the blob lock held).
pub(crate) async fn refuse_tombstoned(
    tx: &mut Transaction<'_, Postgres>,
    digest: &str,
) -> StorageResult<()> {
    if tombstoned(tx, digest).await? {
        return Err(StorageError::BlobUnknown(parse_digest(digest)?));
    }
    Ok(())
}

async fn tombstoned(tx: &mut Transaction<'_, Postgres>, digest: &str) -> StorageResult<bool> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS(SELECT 1 FROM blob_tombstones WHERE digest = $1)",
    )
    .bind(digest)
    .fetch_one(&mut **tx)
    .await?)
}

/// Inside a manifest PUT, with the repository and blob locks held: every referenced blob
/// is linked somewhere and not tombstoned, every child manifest is in the repository.
pub(crate) async fn check_references(
    tx: &mut Transaction<'_, Postgres>,
    manifest: &NewManifest,
) -> StorageResult<()> {
    if !manifest.blobs.is_empty() {
        let blobs: Vec<String> = manifest.blobs.iter().map(Digest::to_string).collect();
        let dead = sqlx::query_scalar::<_, String>(
            "SELECT b FROM unnest($1::text[]) WITH ORDINALITY AS u(b, n)
             WHERE NOT EXISTS (SELECT 1 FROM blob_links WHERE digest = b)
                OR EXISTS (SELECT 1 FROM blob_tombstones WHERE digest = b)
             ORDER BY n LIMIT 1",
        )
        .bind(&blobs)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(dead) = dead {
            return Err(StorageError::BlobUnknown(parse_digest(&dead)?));
        }
    }
    if !manifest.children.is_empty() {
        let children: Vec<String> = manifest.children.iter().map(Digest::to_string).collect();
        let missing = sqlx::query_scalar::<_, String>(
            "SELECT c FROM unnest($2::text[]) WITH ORDINALITY AS u(c, n)
             WHERE NOT EXISTS (SELECT 1 FROM manifests WHERE repository = $1 AND digest = c)
             ORDER BY n LIMIT 1",
        )
        .bind(&manifest.repository)
        .bind(&children)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(child) = missing {
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
    tx: &mut Transaction<'_, Postgres>,
    manifest: &NewManifest,
    limits: &PushLimits,
) -> StorageResult<()> {
    let repository = manifest.repository.as_str();
    let digest = manifest.digest.to_string();
    if let (Some(rule), Some(tag)) = (&limits.immutable_rule, &manifest.tag) {
        // The repository lock is held: the tag cannot move under this check.
        let current = sqlx::query_scalar::<_, String>(
            "SELECT digest FROM tags WHERE repository = $1 AND tag = $2",
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
    if limits.max_repositories.is_none() && limits.quota_bytes.is_none() {
        return Ok(());
    }
    // One checked push per project at a time, on every replica: usage read here stays
    // true until this transaction commits its own additions.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key("quota", &limits.project))
        .execute(&mut **tx)
        .await?;
    if let Some(max) = limits.max_repositories {
        let (lo, hi) = project_range(&limits.project);
        let (count, known) = sqlx::query_as::<_, (i64, bool)>(
            "SELECT (SELECT COUNT(*) FROM repositories WHERE name >= $1 AND name < $2),
                    EXISTS(SELECT 1 FROM manifests WHERE repository = $3)
                    OR EXISTS(SELECT 1 FROM blob_links WHERE repository = $3)",
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
        let blobs: Vec<String> = manifest.blobs.iter().map(Digest::to_string).collect();
        // Usage, plus what this manifest would add: its own bytes if new in the
        // repository, and each distinct blob the project does not count yet.
        let (usage, added) = sqlx::query_as::<_, (i64, i64)>(
            "SELECT COALESCE((SELECT bytes FROM project_usage WHERE project = $1), 0),
                    (CASE WHEN EXISTS(SELECT 1 FROM manifests WHERE repository = $2 AND digest = $3)
                          THEN 0 ELSE $4 END
                     + (SELECT COALESCE(SUM(
                            (SELECT size FROM blob_links WHERE digest = b LIMIT 1)), 0)
                        FROM (SELECT DISTINCT b FROM unnest($5::text[]) AS b) AS d
                        WHERE NOT EXISTS (SELECT 1 FROM project_blobs
                                          WHERE project = $1 AND digest = d.b)))::BIGINT",
        )
        .bind(&limits.project)
        .bind(repository)
        .bind(&digest)
        .bind(to_i64(manifest.content.len() as u64)?)
        .bind(&blobs)
        .fetch_one(&mut **tx)
        .await?;
        let usage = to_u64(usage.max(0))?;
        let added = to_u64(added)?;
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

/// The session-level advisory lock key held while a GC cycle runs.
fn gc_lock_key() -> i64 {
    lock_key("gc", "cycle")
}

/// Holds the cluster-wide GC lock: a connection of its own, taken out of the pool. Dropping
/// it closes the connection, which releases the lock (also if the replica dies).
struct GcLease {
    _conn: sqlx::PgConnection,
}

/// Forget a candidate decided on in `tx` (kind `m` in `repository`, or `b` with "").
async fn drop_candidate(
    tx: &mut Transaction<'_, Postgres>,
    kind: &str,
    repository: &str,
    digest: &str,
) -> StorageResult<()> {
    sqlx::query("DELETE FROM gc_candidates WHERE kind = $1 AND repository = $2 AND digest = $3")
        .bind(kind)
        .bind(repository)
        .bind(digest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl PgMetadata {
    async fn collect_manifest_once(
        &self,
        repository: &str,
        digest: &Digest,
        untagged_before: i64,
        dry_run: bool,
    ) -> StorageResult<ManifestVerdict> {
        let d = digest.to_string();
        let mut tx = self.pool.begin().await?;
        lock_repository(&mut tx, repository).await?;
        // The candidate row locked before anything is read (as in `tombstone_blob_once`):
        // a touch committed after the reads below could otherwise be dropped with it.
        let since = sqlx::query_scalar::<_, i64>(
            "SELECT since FROM gc_candidates WHERE kind = 'm' AND repository = $1 AND digest = $2
             FOR UPDATE",
        )
        .bind(repository)
        .bind(&d)
        .fetch_optional(&mut *tx)
        .await?;
        let row = sqlx::query_as::<_, (i64, Option<String>)>(
            "SELECT size, subject FROM manifests WHERE repository = $1 AND digest = $2",
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
                    "SELECT EXISTS(SELECT 1 FROM tags WHERE repository = $1 AND digest = $2)
                 OR EXISTS(SELECT 1 FROM manifest_children WHERE repository = $1 AND child = $2)
                 OR EXISTS(SELECT 1 FROM manifests WHERE repository = $1 AND subject = $2)
                 OR EXISTS(SELECT 1 FROM manifests WHERE repository = $1 AND digest = $3)",
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
            if since.is_some() {
                drop_candidate(&mut tx, "m", repository, &d).await?;
            }
            tx.commit().await?;
            return Ok(ManifestVerdict::Kept);
        };
        // Without a candidate row the change is unknown: treat it as just made.
        if since.is_none_or(|s| s > untagged_before) {
            if since.is_none() {
                sqlx::query(
                    "INSERT INTO gc_candidates (kind, repository, digest, since)
                     VALUES ('m', $1, $2, $3) ON CONFLICT DO NOTHING",
                )
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
        // References, children and tags go with the manifest (cascade; the triggers log
        // what they released).
        sqlx::query("DELETE FROM manifests WHERE repository = $1 AND digest = $2")
            .bind(repository)
            .bind(&d)
            .execute(&mut *tx)
            .await?;
        drop_candidate(&mut tx, "m", repository, &d).await?;
        tx.commit().await?;
        Ok(ManifestVerdict::Removed(to_u64(size)?))
    }

    async fn tombstone_blob_once(
        &self,
        digest: &Digest,
        unreferenced_before: i64,
        dry_run: bool,
    ) -> StorageResult<BlobVerdict> {
        let d = digest.to_string();
        let mut tx = self.pool.begin().await?;
        // Exclusive: every transaction that would reference, link, mount or pin this blob
        // has committed (and is seen below) or waits and then sees the tombstone.
        lock_blobs(&mut tx, std::slice::from_ref(&d), false).await?;
        // The candidate row first, locked: a writer that does not take the blob lock (a
        // manifest delete releasing its references, an upload releasing its pin) touches
        // this row in its transaction, so it has either committed before this lock (and
        // the reads below see its change) or waits until this transaction ends (and then
        // re-creates the row this one may drop). Reading first and deleting after would
        // drop a touch committed in between, leaking the blob.
        let since = sqlx::query_scalar::<_, i64>(
            "SELECT since FROM gc_candidates WHERE kind = 'b' AND repository = '' AND digest = $1
             FOR UPDATE",
        )
        .bind(&d)
        .fetch_optional(&mut *tx)
        .await?;
        let (referenced, dead) = sqlx::query_as::<_, (bool, bool)>(
            "SELECT EXISTS(SELECT 1 FROM manifest_blobs WHERE blob = $1)
                 OR EXISTS(SELECT 1 FROM upload_pins WHERE digest = $1),
                 EXISTS(SELECT 1 FROM blob_tombstones WHERE digest = $1)",
        )
        .bind(&d)
        .fetch_one(&mut *tx)
        .await?;
        if referenced || dead {
            // Only the row locked above: one created since belongs to a later change.
            if since.is_some() {
                drop_candidate(&mut tx, "b", "", &d).await?;
            }
            tx.commit().await?;
            return Ok(BlobVerdict::Kept);
        }
        if since.is_none_or(|s| s > unreferenced_before) {
            if since.is_none() {
                sqlx::query(
                    "INSERT INTO gc_candidates (kind, repository, digest, since)
                     VALUES ('b', '', $1, $2) ON CONFLICT DO NOTHING",
                )
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
        sqlx::query("DELETE FROM blob_links WHERE digest = $1")
            .bind(&d)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO blob_tombstones (digest, at) VALUES ($1, $2)")
            .bind(&d)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        drop_candidate(&mut tx, "b", "", &d).await?;
        tx.commit().await?;
        Ok(BlobVerdict::Tombstoned)
    }

    async fn delete_repository_once(&self, repository: &str) -> StorageResult<()> {
        let mut tx = self.pool.begin().await?;
        lock_repository(&mut tx, repository).await?;
        for statement in [
            "DELETE FROM tags WHERE repository = $1",
            "DELETE FROM manifest_blobs WHERE repository = $1",
            "DELETE FROM manifest_children WHERE repository = $1",
            "DELETE FROM manifests WHERE repository = $1",
            "DELETE FROM blob_links WHERE repository = $1",
            "DELETE FROM uploads WHERE repository = $1",
            "DELETE FROM gc_candidates WHERE kind = 'm' AND repository = $1",
        ] {
            sqlx::query(statement)
                .bind(repository)
                .execute(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM repositories WHERE name = $1")
            .bind(repository)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StorageError::NotFound(format!("repository {repository}")));
        }
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl LifecycleStore for PgMetadata {
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
             WHERE kind = $1 AND (since, repository, digest) > ($2, $3, $4)
             ORDER BY since, repository, digest LIMIT $5",
        )
        .bind(kind_code(kind))
        .bind(since)
        .bind(&repo)
        .bind(&digest)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
            .fetch_one(&self.pool)
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
        retrying(|| self.collect_manifest_once(repository, digest, untagged_before, dry_run)).await
    }

    async fn tombstone_blob(
        &self,
        digest: &Digest,
        unreferenced_before: i64,
        dry_run: bool,
    ) -> StorageResult<BlobVerdict> {
        retrying(|| self.tombstone_blob_once(digest, unreferenced_before, dry_run)).await
    }

    async fn clear_tombstone(&self, digest: &Digest) -> StorageResult<()> {
        sqlx::query("DELETE FROM blob_tombstones WHERE digest = $1")
            .bind(digest.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn tombstones(&self) -> StorageResult<Vec<Digest>> {
        let rows =
            sqlx::query_scalar::<_, String>("SELECT digest FROM blob_tombstones ORDER BY digest")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|d| parse_digest(d)).collect()
    }

    async fn blob_references(
        &self,
        digest: &Digest,
        limit: u32,
    ) -> StorageResult<Vec<(String, Digest)>> {
        let rows = sqlx::query_as::<_, (String, String)>(
            "SELECT repository, manifest FROM manifest_blobs WHERE blob = $1
             ORDER BY repository, manifest LIMIT $2",
        )
        .bind(digest.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
            "SELECT blob FROM manifest_blobs WHERE repository = $1 AND manifest = $2 ORDER BY blob",
        )
        .bind(repository)
        .bind(&d)
        .fetch_all(&self.pool)
        .await?;
        let children = sqlx::query_scalar::<_, String>(
            "SELECT child FROM manifest_children WHERE repository = $1 AND manifest = $2
             ORDER BY child",
        )
        .bind(repository)
        .bind(&d)
        .fetch_all(&self.pool)
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
        let d = &digest.to_string();
        retrying(|| async move {
            let mut tx = self.pool.begin().await?;
            lock_blobs(&mut tx, std::slice::from_ref(d), true).await?;
            if tombstoned(&mut tx, d).await? {
                return Err(StorageError::Conflict(format!(
                    "blob {digest} is being garbage-collected; retry in a moment"
                )));
            }
            sqlx::query(
                "INSERT INTO upload_pins (upload, digest, at) VALUES ($1, $2, $3)
                 ON CONFLICT (upload) DO UPDATE SET digest = excluded.digest, at = excluded.at",
            )
            .bind(upload)
            .bind(d)
            .bind(now())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn mount_blob(
        &self,
        from: Option<&str>,
        to: &str,
        digest: &Digest,
    ) -> StorageResult<Option<u64>> {
        let d = &digest.to_string();
        retrying(|| async move {
            let mut tx = self.pool.begin().await?;
            lock_blobs(&mut tx, std::slice::from_ref(d), true).await?;
            if tombstoned(&mut tx, d).await? {
                return Ok(None);
            }
            let size = match from {
                Some(from) => {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT size FROM blob_links WHERE repository = $1 AND digest = $2",
                    )
                    .bind(from)
                    .bind(d)
                    .fetch_optional(&mut *tx)
                    .await?
                }
                None => {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT size FROM blob_links WHERE digest = $1 LIMIT 1",
                    )
                    .bind(d)
                    .fetch_optional(&mut *tx)
                    .await?
                }
            };
            let Some(size) = size else {
                return Ok(None);
            };
            ensure_repository(&mut tx, to).await?;
            sqlx::query(
                "INSERT INTO blob_links (repository, digest, size) VALUES ($1, $2, $3)
                 ON CONFLICT (repository, digest) DO NOTHING",
            )
            .bind(to)
            .bind(d)
            .bind(size)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(to_u64(size)?))
        })
        .await
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
            "SELECT EXISTS(SELECT 1 FROM project_blobs WHERE project = $1 AND digest = $2)",
        )
        .bind(project)
        .bind(digest.to_string())
        .fetch_one(&self.pool)
        .await?)
    }

    async fn project_policy(&self, project: &str) -> StorageResult<ProjectPolicy> {
        let row = sqlx::query_as::<_, PolicyRow>(
            "SELECT project, quota_bytes, max_repositories, immutable_tags, retention
             FROM project_policies WHERE project = $1",
        )
        .bind(project)
        .fetch_optional(&self.pool)
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
            "INSERT INTO project_policies
                 (project, quota_bytes, max_repositories, immutable_tags, retention, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (project) DO UPDATE SET
                 quota_bytes = excluded.quota_bytes,
                 max_repositories = excluded.max_repositories,
                 immutable_tags = excluded.immutable_tags,
                 retention = excluded.retention,
                 updated_at = excluded.updated_at",
        )
        .bind(&p.project)
        .bind(opt_i64(p.quota_bytes)?)
        .bind(opt_i64(p.max_repositories)?)
        .bind(immutable)
        .bind(p.retention_json.as_deref())
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn project_policies(&self) -> StorageResult<Vec<ProjectPolicy>> {
        let rows = sqlx::query_as::<_, PolicyRow>(
            "SELECT project, quota_bytes, max_repositories, immutable_tags, retention
             FROM project_policies ORDER BY project",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(policy).collect()
    }

    async fn quota_usage(&self, project: &str) -> StorageResult<QuotaUsage> {
        let (lo, hi) = project_range(project);
        let (bytes, repositories) = sqlx::query_as::<_, (i64, i64)>(
            "SELECT COALESCE((SELECT bytes FROM project_usage WHERE project = $1), 0),
                    (SELECT COUNT(*) FROM repositories WHERE name >= $2 AND name < $3)",
        )
        .bind(project)
        .bind(&lo)
        .bind(&hi)
        .fetch_one(&self.pool)
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
        // Newest per manifest first, in key order: one row each, no two batches locking
        // the same rows in different orders.
        let mut newest: std::collections::BTreeMap<(&str, String), i64> = Default::default();
        for (repository, digest, at) in pulls {
            let slot = newest
                .entry((repository.as_str(), digest.to_string()))
                .or_insert(*at);
            *slot = (*slot).max(*at);
        }
        let (repos, digests, ats): (Vec<String>, Vec<String>, Vec<i64>) = newest
            .into_iter()
            .map(|((r, d), at)| (r.to_owned(), d, at))
            .fold(Default::default(), |(mut r, mut d, mut a), (x, y, z)| {
                r.push(x);
                d.push(y);
                a.push(z);
                (r, d, a)
            });
        let (repos, digests, ats) = (&repos, &digests, &ats);
        retrying(|| async move {
            sqlx::query(
                "INSERT INTO manifest_pulls AS p (repository, digest, pulled_at)
                 SELECT u.r, u.d, u.a FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u(r, d, a)
                 WHERE EXISTS(SELECT 1 FROM manifests m WHERE m.repository = u.r AND m.digest = u.d)
                 ORDER BY u.r, u.d
                 ON CONFLICT (repository, digest)
                 DO UPDATE SET pulled_at = GREATEST(p.pulled_at, excluded.pulled_at)",
            )
            .bind(repos)
            .bind(digests)
            .bind(ats)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn tag_times(&self, repository: &str) -> StorageResult<Vec<TagTimes>> {
        let rows = sqlx::query_as::<_, (String, String, i64, Option<i64>)>(
            "SELECT t.tag, t.digest, t.updated_at, p.pulled_at FROM tags t
             LEFT JOIN manifest_pulls p ON p.repository = t.repository AND p.digest = t.digest
             WHERE t.repository = $1 ORDER BY t.tag",
        )
        .bind(repository)
        .fetch_all(&self.pool)
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
        retrying(|| self.delete_repository_once(repository)).await
    }

    async fn stale_uploads(&self, before: i64, limit: u32) -> StorageResult<Vec<UploadSession>> {
        let rows = sqlx::query_as::<_, (String, String, i64, String)>(
            "SELECT id, repository, started_at, owner FROM uploads WHERE started_at < $1
             ORDER BY started_at LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
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
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn gc_runs(&self, limit: u32) -> StorageResult<Vec<GcRun>> {
        let rows = sqlx::query_as::<_, RunRow>(
            "SELECT id, kind, started_by, dry_run, started_at, finished_at, manifests_removed,
                    tags_removed, blobs_removed, bytes_freed, errors, detail
             FROM gc_runs ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        if let Some(before) = before {
            deleted += sqlx::query("DELETE FROM audit_events WHERE at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if let Some(keep) = keep {
            deleted += sqlx::query(
                "DELETE FROM audit_events WHERE id <= (
                     SELECT id FROM audit_events ORDER BY id DESC LIMIT 1 OFFSET $1)",
            )
            .bind(to_i64(keep)?)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn exclusive_gc(&self) -> StorageResult<Box<dyn Send>> {
        // A connection of its own (detached from the pool), so the session lock lives
        // exactly as long as the lease.
        let mut conn = self.pool.acquire().await?.detach();
        // Wait as long as another replica's cycle runs (like the in-process mutex), not
        // just the pool's statement timeout.
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut conn)
            .await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(gc_lock_key())
            .execute(&mut conn)
            .await?;
        Ok(Box::new(GcLease { _conn: conn }))
    }
}
