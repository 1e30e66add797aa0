//! [`MetadataStore`] in an embedded SQLite database.
//!
//! - WAL journal, `synchronous=FULL` (an acknowledged write survives power loss),
//!   foreign keys on, a busy timeout.
//! - Two pools: one writer connection (SQLite allows one writer at a time; a single
//!   connection avoids lock upgrades failing with `SQLITE_BUSY`) and several readers,
//!   which WAL lets run concurrently with the writer.
//! - Every hot lookup (manifest by tag / digest, blob link) is one indexed query.
//! - The schema is created at open (`CREATE … IF NOT EXISTS`), see [`SCHEMA`] and, for
//!   the access-control tables of [`crate::AccountStore`], [`crate::sqlite_accounts::SCHEMA`];
//!   a database made by an older Berth gains the new tables on its next open.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_proto::Digest;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::manifest_cache::{self, ManifestCache};
use crate::metadata::{
    ManifestRecord, MetadataStore, NewManifest, Referrer, RepositorySummary, TagDetail,
    UntaggedManifest, UploadSession, Usage,
};
use crate::{StorageError, StorageResult};

/// Concurrent read connections of a file database.
const READERS: u32 = 8;
/// How long a connection waits for a lock held by another connection (or process).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The database schema (idempotent).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS repositories (
    name        TEXT    NOT NULL PRIMARY KEY COLLATE BINARY,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS blob_links (
    repository  TEXT    NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest      TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blob_links_by_digest ON blob_links(digest);

CREATE TABLE IF NOT EXISTS manifests (
    repository    TEXT    NOT NULL REFERENCES repositories(name) ON DELETE CASCADE,
    digest        TEXT    NOT NULL,
    media_type    TEXT    NOT NULL,
    content       BLOB    NOT NULL,
    size          INTEGER NOT NULL,
    subject       TEXT,
    artifact_type TEXT,
    annotations   TEXT,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX IF NOT EXISTS manifests_by_subject ON manifests(repository, subject);

CREATE TABLE IF NOT EXISTS manifest_blobs (
    repository  TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    blob        TEXT NOT NULL,
    PRIMARY KEY (repository, manifest, blob),
    FOREIGN KEY (repository, manifest) REFERENCES manifests(repository, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifest_blobs_by_blob ON manifest_blobs(blob);

CREATE TABLE IF NOT EXISTS manifest_children (
    repository  TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    child       TEXT NOT NULL,
    PRIMARY KEY (repository, manifest, child),
    FOREIGN KEY (repository, manifest) REFERENCES manifests(repository, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifest_children_by_child ON manifest_children(repository, child);

CREATE TABLE IF NOT EXISTS tags (
    repository  TEXT    NOT NULL,
    tag         TEXT    NOT NULL COLLATE BINARY,
    digest      TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (repository, tag),
    FOREIGN KEY (repository, digest) REFERENCES manifests(repository, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_by_digest ON tags(repository, digest);

CREATE TABLE IF NOT EXISTS uploads (
    id          TEXT    NOT NULL PRIMARY KEY,
    repository  TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    owner       TEXT    NOT NULL DEFAULT ''
) WITHOUT ROWID;
"#;

/// The compressed size of manifest `m` (an SQL expression): its bytes, the distinct blobs
/// it and its children reference, and the children themselves; computed only for the rows
/// of a page.
macro_rules! manifest_bytes {
    () => {
        "m.size
    + (SELECT COALESCE(SUM(b.size), 0) FROM blob_links b
       WHERE b.repository = m.repository AND b.digest IN (
           SELECT mb.blob FROM manifest_blobs mb
           WHERE mb.repository = m.repository AND mb.manifest = m.digest
           UNION
           SELECT mb.blob FROM manifest_children c
           JOIN manifest_blobs mb
             ON mb.repository = c.repository AND mb.manifest = c.child
           WHERE c.repository = m.repository AND c.manifest = m.digest))
    + (SELECT COALESCE(SUM(cm.size), 0) FROM manifest_children c
       JOIN manifests cm ON cm.repository = c.repository AND cm.digest = c.child
       WHERE c.repository = m.repository AND c.manifest = m.digest)"
    };
}

/// Registry metadata in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteMetadata {
    pub(crate) reader: SqlitePool,
    pub(crate) writer: SqlitePool,
    /// Hot manifests; every write that can change a manifest lookup invalidates it.
    pub(crate) manifests: Arc<ManifestCache>,
}

impl SqliteMetadata {
    /// Open (creating if missing) the database file at `path`.
    pub async fn open(path: &Path) -> StorageResult<SqliteMetadata> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            tokio::fs::create_dir_all(parent).await?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("temp_store", "MEMORY");
        // WAL is a property of the database file: set once, by the writer, before any
        // reader connects.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone().journal_mode(SqliteJournalMode::Wal))
            .await?;
        create_schema(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options)
            .await?;
        Ok(SqliteMetadata {
            reader,
            writer,
            manifests: Arc::default(),
        })
    }

    /// Open for a bulk load (benchmarks, imports): `synchronous=OFF`, so a power loss may
    /// lose the last transactions. Everything else (schema, triggers) is as [`Self::open`];
    /// reopen with `open` to serve.
    pub async fn open_for_bulk_load(path: &Path) -> StorageResult<SqliteMetadata> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Off)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .journal_mode(SqliteJournalMode::Wal);
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            tokio::fs::create_dir_all(parent).await?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options)
            .await?;
        create_schema(&pool).await?;
        Ok(SqliteMetadata {
            reader: pool.clone(),
            writer: pool,
            manifests: Arc::default(),
        })
    }

    /// A fresh private in-memory database (tests). One connection, kept open forever,
    /// because every `:memory:` connection is a database of its own.
    pub async fn in_memory() -> StorageResult<SqliteMetadata> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        create_schema(&pool).await?;
        Ok(SqliteMetadata {
            reader: pool.clone(),
            writer: pool,
            manifests: Arc::default(),
        })
    }

    /// Upload sessions started and not finished or cancelled (a metrics gauge).
    pub async fn count_uploads(&self) -> StorageResult<u64> {
        let n = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM uploads")
            .fetch_one(&self.reader)
            .await?;
        to_u64(n)
    }

    /// `(open, idle, max)` connections of both pools together (a metrics gauge).
    pub fn pool_use(&self) -> (u32, usize, u32) {
        let max = self.reader.options().get_max_connections()
            + self.writer.options().get_max_connections();
        (
            self.reader.size() + self.writer.size(),
            self.reader.num_idle() + self.writer.num_idle(),
            max,
        )
    }

    /// Close every connection (checkpointing the WAL); call on shutdown.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// Create every table and index that is missing (idempotent).
async fn create_schema(pool: &SqlitePool) -> StorageResult<()> {
    sqlx::raw_sql(SCHEMA).execute(pool).await?;
    // Migration: `uploads.owner` (per-principal session limit) came after the first schema.
    let has_owner: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pragma_table_info('uploads') WHERE name = 'owner'",
    )
    .fetch_one(pool)
    .await?;
    if has_owner == 0 {
        sqlx::raw_sql("ALTER TABLE uploads ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
            .execute(pool)
            .await?;
    }
    sqlx::raw_sql("CREATE INDEX IF NOT EXISTS uploads_by_owner ON uploads(owner)")
        .execute(pool)
        .await?;
    sqlx::raw_sql(crate::sqlite_accounts::SCHEMA)
        .execute(pool)
        .await?;
    crate::sqlite_lifecycle::migrate(pool).await?;
    sqlx::raw_sql(crate::sqlite_webhooks::SCHEMA)
        .execute(pool)
        .await?;
    sqlx::raw_sql(crate::sqlite_remotes::SCHEMA)
        .execute(pool)
        .await?;
    sqlx::raw_sql(crate::sqlite_replication::SCHEMA)
        .execute(pool)
        .await?;
    crate::sqlite_replication::migrate(pool).await?;
    Ok(())
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub(crate) fn to_i64(v: u64) -> StorageResult<i64> {
    i64::try_from(v).map_err(|_| StorageError::SizeInvalid(format!("size {v} is too large")))
}

pub(crate) fn to_u64(v: i64) -> StorageResult<u64> {
    u64::try_from(v).map_err(|_| StorageError::Database(format!("negative size {v} in database")))
}

/// `[lo, hi)` bounds of the names `project/…` (`0` is the byte after `/`).
pub(crate) fn project_range(project: &str) -> (String, String) {
    (format!("{project}/"), format!("{project}0"))
}

/// A repository's summary columns, for rows of `repositories r`.
const SUMMARY_COLUMNS: &str = "r.name,
    (SELECT COUNT(*) FROM tags t WHERE t.repository = r.name),
    (SELECT MAX(t.updated_at) FROM tags t WHERE t.repository = r.name),
    (SELECT MAX(m.created_at) FROM manifests m WHERE m.repository = r.name),
    (SELECT COALESCE(SUM(b.size), 0) FROM blob_links b WHERE b.repository = r.name)
      + (SELECT COALESCE(SUM(m.size), 0) FROM manifests m WHERE m.repository = r.name)";

type SummaryRow = (String, i64, Option<i64>, Option<i64>, i64);

fn summary((name, tags, tagged, pushed, bytes): SummaryRow) -> StorageResult<RepositorySummary> {
    Ok(RepositorySummary {
        name,
        tag_count: to_u64(tags)?,
        last_push: tagged.max(pushed),
        bytes: to_u64(bytes)?,
    })
}

pub(crate) fn parse_digest(s: &str) -> StorageResult<Digest> {
    s.parse()
        .map_err(|e| StorageError::Database(format!("invalid digest in database: {e}")))
}

impl SqliteMetadata {
    /// `put_manifest`, optionally checked against quota and immutable-tag limits inside
    /// the same transaction.
    pub(crate) async fn put_manifest_in(
        &self,
        manifest: NewManifest,
        limits: Option<&crate::lifecycle::PushLimits>,
    ) -> StorageResult<()> {
        let now = now();
        let digest = manifest.digest.to_string();
        let size = to_i64(manifest.content.len() as u64)?;
        let repository = manifest.repository.as_str();
        let mut tx = self.writer.begin().await?;
        sqlx::query("INSERT OR IGNORE INTO repositories (name, created_at) VALUES (?1, ?2)")
            .bind(repository)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Inside the transaction (serialized with the collector's decisions): everything
        // referenced must still be there, and the limits hold.
        crate::sqlite_lifecycle::check_references(&mut tx, &manifest).await?;
        if let Some(limits) = limits {
            crate::sqlite_lifecycle::check_limits(&mut tx, &manifest, limits).await?;
        }
        // Same digest = same bytes: re-putting changes nothing.
        sqlx::query(
            "INSERT INTO manifests
                 (repository, digest, media_type, content, size, subject, artifact_type,
                  annotations, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (repository, digest) DO NOTHING",
        )
        .bind(repository)
        .bind(&digest)
        .bind(&manifest.media_type)
        .bind(&manifest.content)
        .bind(size)
        .bind(manifest.subject.as_ref().map(Digest::to_string))
        .bind(manifest.artifact_type.as_deref())
        .bind(manifest.annotations_json.as_deref())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(tag) = &manifest.tag {
            sqlx::query(
                "INSERT INTO tags (repository, tag, digest, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (repository, tag)
                 DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            )
            .bind(repository)
            .bind(tag)
            .bind(&digest)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        for blob in &manifest.blobs {
            let blob = blob.to_string();
            sqlx::query(
                "INSERT OR IGNORE INTO manifest_blobs (repository, manifest, blob) VALUES (?1, ?2, ?3)",
            )
            .bind(repository)
            .bind(&digest)
            .bind(&blob)
            .execute(&mut *tx)
            .await?;
            // Link the blob to this repository (its size is known from any existing link).
            sqlx::query(
                "INSERT OR IGNORE INTO blob_links (repository, digest, size)
                 SELECT ?1, digest, size FROM blob_links WHERE digest = ?2 LIMIT 1",
            )
            .bind(repository)
            .bind(&blob)
            .execute(&mut *tx)
            .await?;
        }
        for child in &manifest.children {
            sqlx::query(
                "INSERT OR IGNORE INTO manifest_children (repository, manifest, child)
                 VALUES (?1, ?2, ?3)",
            )
            .bind(repository)
            .bind(&digest)
            .bind(child.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.manifests.invalidate();
        Ok(())
    }
}

#[async_trait]
impl MetadataStore for SqliteMetadata {
    async fn list_repositories(
        &self,
        last: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<String>> {
        let rows = match last {
            Some(last) => {
                sqlx::query_scalar::<_, String>(
                    "SELECT name FROM repositories WHERE name > ?1 ORDER BY name LIMIT ?2",
                )
                .bind(last)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                sqlx::query_scalar::<_, String>(
                    "SELECT name FROM repositories ORDER BY name LIMIT ?1",
                )
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?
            }
        };
        Ok(rows)
    }

    async fn repository_exists(&self, repository: &str) -> StorageResult<bool> {
        let exists = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM repositories WHERE name = ?1)",
        )
        .bind(repository)
        .fetch_one(&self.reader)
        .await?;
        Ok(exists)
    }

    async fn link_blob(&self, repository: &str, digest: &Digest, size: u64) -> StorageResult<()> {
        let size = to_i64(size)?;
        let mut tx = self.writer.begin().await?;
        crate::sqlite_lifecycle::refuse_tombstoned(&mut tx, digest).await?;
        sqlx::query("INSERT OR IGNORE INTO repositories (name, created_at) VALUES (?1, ?2)")
            .bind(repository)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT OR IGNORE INTO blob_links (repository, digest, size) VALUES (?1, ?2, ?3)",
        )
        .bind(repository)
        .bind(digest.to_string())
        .bind(size)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn blob_link(&self, repository: &str, digest: &Digest) -> StorageResult<Option<u64>> {
        let size = sqlx::query_scalar::<_, i64>(
            "SELECT size FROM blob_links WHERE repository = ?1 AND digest = ?2",
        )
        .bind(repository)
        .bind(digest.to_string())
        .fetch_optional(&self.reader)
        .await?;
        size.map(to_u64).transpose()
    }

    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> StorageResult<bool> {
        let digest = digest.to_string();
        let mut tx = self.writer.begin().await?;
        let deleted = sqlx::query("DELETE FROM blob_links WHERE repository = ?1 AND digest = ?2")
            .bind(repository)
            .bind(&digest)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StorageError::NotFound(format!(
                "blob {digest} in repository {repository}"
            )));
        }
        // Still needed if another repository links it or any manifest references it.
        let still = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM blob_links WHERE digest = ?1)
                 OR EXISTS(SELECT 1 FROM manifest_blobs WHERE blob = ?1)",
        )
        .bind(&digest)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(still)
    }

    async fn put_manifest(&self, manifest: NewManifest) -> StorageResult<()> {
        self.put_manifest_in(manifest, None).await
    }

    async fn manifest_by_digest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> StorageResult<Option<ManifestRecord>> {
        let digest_text = digest.to_string();
        let key = manifest_cache::digest_key(repository, &digest_text);
        if let Some(hit) = self.manifests.get(&key) {
            return Ok(Some(hit));
        }
        let generation = self.manifests.generation();
        let row = sqlx::query_as::<_, (String, Vec<u8>)>(
            "SELECT media_type, content FROM manifests WHERE repository = ?1 AND digest = ?2",
        )
        .bind(repository)
        .bind(digest_text)
        .fetch_optional(&self.reader)
        .await?;
        let record = row.map(|(media_type, content)| ManifestRecord {
            digest: digest.clone(),
            media_type,
            content,
        });
        if let Some(record) = &record {
            self.manifests.store(key, record, generation);
        }
        Ok(record)
    }

    async fn manifest_by_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> StorageResult<Option<ManifestRecord>> {
        let key = manifest_cache::tag_key(repository, tag);
        if let Some(hit) = self.manifests.get(&key) {
            return Ok(Some(hit));
        }
        let generation = self.manifests.generation();
        let row = sqlx::query_as::<_, (String, String, Vec<u8>)>(
            "SELECT m.digest, m.media_type, m.content
             FROM tags t
             JOIN manifests m ON m.repository = t.repository AND m.digest = t.digest
             WHERE t.repository = ?1 AND t.tag = ?2",
        )
        .bind(repository)
        .bind(tag)
        .fetch_optional(&self.reader)
        .await?;
        let Some((digest, media_type, content)) = row else {
            return Ok(None);
        };
        let record = ManifestRecord {
            digest: parse_digest(&digest)?,
            media_type,
            content,
        };
        self.manifests.store(key, &record, generation);
        Ok(Some(record))
    }

    async fn manifest_exists(&self, repository: &str, digest: &Digest) -> StorageResult<bool> {
        let exists = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM manifests WHERE repository = ?1 AND digest = ?2)",
        )
        .bind(repository)
        .bind(digest.to_string())
        .fetch_one(&self.reader)
        .await?;
        Ok(exists)
    }

    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> StorageResult<()> {
        let digest = digest.to_string();
        let mut tx = self.writer.begin().await?;
        for statement in [
            "DELETE FROM tags WHERE repository = ?1 AND digest = ?2",
            "DELETE FROM manifest_blobs WHERE repository = ?1 AND manifest = ?2",
            "DELETE FROM manifest_children WHERE repository = ?1 AND manifest = ?2",
        ] {
            sqlx::query(statement)
                .bind(repository)
                .bind(&digest)
                .execute(&mut *tx)
                .await?;
        }
        let deleted = sqlx::query("DELETE FROM manifests WHERE repository = ?1 AND digest = ?2")
            .bind(repository)
            .bind(&digest)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            // Dropping `tx` rolls back.
            return Err(StorageError::NotFound(format!(
                "manifest {digest} in repository {repository}"
            )));
        }
        tx.commit().await?;
        self.manifests.invalidate();
        Ok(())
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> StorageResult<()> {
        let deleted = sqlx::query("DELETE FROM tags WHERE repository = ?1 AND tag = ?2")
            .bind(repository)
            .bind(tag)
            .execute(&self.writer)
            .await?
            .rows_affected();
        self.manifests.invalidate();
        if deleted == 0 {
            return Err(StorageError::NotFound(format!(
                "tag {tag} in repository {repository}"
            )));
        }
        Ok(())
    }

    async fn list_tags(
        &self,
        repository: &str,
        last: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<String>> {
        let mut conn = self.reader.acquire().await?;
        let tags =
            match last {
                Some(last) => sqlx::query_scalar::<_, String>(
                    "SELECT tag FROM tags WHERE repository = ?1 AND tag > ?2 ORDER BY tag LIMIT ?3",
                )
                .bind(repository)
                .bind(last)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await?,
                None => {
                    sqlx::query_scalar::<_, String>(
                        "SELECT tag FROM tags WHERE repository = ?1 ORDER BY tag LIMIT ?2",
                    )
                    .bind(repository)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *conn)
                    .await?
                }
            };
        if tags.is_empty() {
            let exists = sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS(SELECT 1 FROM repositories WHERE name = ?1)",
            )
            .bind(repository)
            .fetch_one(&mut *conn)
            .await?;
            if !exists {
                return Err(StorageError::NotFound(format!("repository {repository}")));
            }
        }
        Ok(tags)
    }

    async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> StorageResult<Vec<Referrer>> {
        type Row = (String, String, i64, Option<String>, Option<String>);
        let rows = match artifact_type {
            Some(artifact_type) => {
                sqlx::query_as::<_, Row>(
                    "SELECT digest, media_type, size, artifact_type, annotations FROM manifests
                     WHERE repository = ?1 AND subject = ?2 AND artifact_type = ?3
                     ORDER BY digest",
                )
                .bind(repository)
                .bind(subject.to_string())
                .bind(artifact_type)
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                sqlx::query_as::<_, Row>(
                    "SELECT digest, media_type, size, artifact_type, annotations FROM manifests
                     WHERE repository = ?1 AND subject = ?2
                     ORDER BY digest",
                )
                .bind(repository)
                .bind(subject.to_string())
                .fetch_all(&self.reader)
                .await?
            }
        };
        rows.into_iter()
            .map(
                |(digest, media_type, size, artifact_type, annotations_json)| {
                    Ok(Referrer {
                        digest: parse_digest(&digest)?,
                        media_type,
                        size: to_u64(size)?,
                        artifact_type,
                        annotations_json,
                    })
                },
            )
            .collect()
    }

    async fn create_upload(&self, session: UploadSession) -> StorageResult<()> {
        sqlx::query(
            "INSERT INTO uploads (id, repository, started_at, owner) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(&session.id)
        .bind(&session.repository)
        .bind(session.started_at)
        .bind(&session.owner)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn upload(&self, id: &str) -> StorageResult<Option<UploadSession>> {
        let row = sqlx::query_as::<_, (String, i64, String)>(
            "SELECT repository, started_at, owner FROM uploads WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|(repository, started_at, owner)| UploadSession {
            id: id.to_owned(),
            repository,
            started_at,
            owner,
        }))
    }

    async fn count_uploads_by_owner(&self, owner: &str) -> StorageResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE owner = ?1")
            .bind(owner)
            .fetch_one(&self.reader)
            .await?;
        to_u64(n)
    }

    async fn upload_ids(&self) -> StorageResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM uploads")
            .fetch_all(&self.reader)
            .await?)
    }

    async fn delete_upload(&self, id: &str) -> StorageResult<()> {
        sqlx::query("DELETE FROM uploads WHERE id = ?1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn project_usage(&self, project: &str) -> StorageResult<Usage> {
        let (lo, hi) = project_range(project);
        let (repositories, blobs, manifests) = sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT
                (SELECT COUNT(*) FROM repositories WHERE name >= ?1 AND name < ?2),
                (SELECT COALESCE(SUM(size), 0) FROM
                    (SELECT MAX(size) AS size FROM blob_links
                     WHERE repository >= ?1 AND repository < ?2 GROUP BY digest)),
                (SELECT COALESCE(SUM(size), 0) FROM manifests
                 WHERE repository >= ?1 AND repository < ?2)",
        )
        .bind(&lo)
        .bind(&hi)
        .fetch_one(&self.reader)
        .await?;
        Ok(Usage {
            repositories: to_u64(repositories)?,
            bytes: to_u64(blobs)? + to_u64(manifests)?,
        })
    }

    async fn repository_summaries(
        &self,
        project: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<RepositorySummary>> {
        let (lo, hi) = project_range(project);
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM repositories r
             WHERE r.name >= ?1 AND r.name < ?2 AND r.name > ?3
             ORDER BY r.name LIMIT ?4"
        );
        let rows = sqlx::query_as::<_, SummaryRow>(sqlx::AssertSqlSafe(sql))
            .bind(&lo)
            .bind(&hi)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(summary).collect()
    }

    async fn repository_summary(
        &self,
        repository: &str,
    ) -> StorageResult<Option<RepositorySummary>> {
        let sql = format!("SELECT {SUMMARY_COLUMNS} FROM repositories r WHERE r.name = ?1");
        let row = sqlx::query_as::<_, SummaryRow>(sqlx::AssertSqlSafe(sql))
            .bind(repository)
            .fetch_optional(&self.reader)
            .await?;
        row.map(summary).transpose()
    }

    async fn tag_details(
        &self,
        repository: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<TagDetail>> {
        let rows = sqlx::query_as::<_, (String, String, String, i64, i64)>(concat!(
            "SELECT t.tag, t.digest, m.media_type, t.updated_at, ",
            manifest_bytes!(),
            " FROM tags t
             JOIN manifests m ON m.repository = t.repository AND m.digest = t.digest
             WHERE t.repository = ?1 AND t.tag > ?2
             ORDER BY t.tag LIMIT ?3"
        ))
        .bind(repository)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(tag, digest, media_type, pushed_at, bytes)| {
                Ok(TagDetail {
                    tag,
                    digest: parse_digest(&digest)?,
                    media_type,
                    pushed_at,
                    bytes: to_u64(bytes)?,
                })
            })
            .collect()
    }

    async fn untagged_manifests(
        &self,
        repository: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<UntaggedManifest>> {
        let rows = sqlx::query_as::<_, (String, String, i64, i64)>(concat!(
            "SELECT m.digest, m.media_type, m.created_at, ",
            manifest_bytes!(),
            " FROM manifests m
             WHERE m.repository = ?1 AND m.digest > ?2 AND m.subject IS NULL
               AND NOT EXISTS (SELECT 1 FROM tags t
                               WHERE t.repository = m.repository AND t.digest = m.digest)
               AND NOT EXISTS (SELECT 1 FROM manifest_children c
                               WHERE c.repository = m.repository AND c.child = m.digest)
             ORDER BY m.digest LIMIT ?3"
        ))
        .bind(repository)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|(digest, media_type, pushed_at, bytes)| {
                Ok(UntaggedManifest {
                    digest: parse_digest(&digest)?,
                    media_type,
                    pushed_at,
                    bytes: to_u64(bytes)?,
                })
            })
            .collect()
    }

    async fn search_repositories(
        &self,
        needle: &str,
        after: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<String>> {
        let rows = sqlx::query_scalar::<_, String>(
            "SELECT name FROM repositories WHERE name > ?2 AND instr(name, ?1) > 0
             ORDER BY name LIMIT ?3",
        )
        .bind(needle)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{
        AccountStore, AuditEvent, AuditFilter, Project, ProjectRole, RefreshToken, User,
    };
    use crate::conformance;

    #[tokio::test]
    async fn conformance_suite_in_memory() {
        let store = SqliteMetadata::in_memory()
            .await
            .expect("in-memory database");
        conformance::metadata_suite(&store).await;
    }

    #[tokio::test]
    async fn conformance_suite_on_disk_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta").join("berth.db");
        let store = SqliteMetadata::open(&path).await.expect("open");
        conformance::metadata_suite(&store).await;
        let repos = store.list_repositories(None, 100).await.expect("list");
        store.close().await;

        let reopened = SqliteMetadata::open(&path).await.expect("reopen");
        assert_eq!(
            reopened.list_repositories(None, 100).await.expect("list"),
            repos
        );
        let mode = sqlx::query_scalar::<_, String>("PRAGMA journal_mode")
            .fetch_one(&reopened.reader)
            .await
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        let sync = sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
            .fetch_one(&reopened.reader)
            .await
            .expect("synchronous");
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk = sqlx::query_scalar::<_, i64>("PRAGMA foreign_keys")
            .fetch_one(&reopened.writer)
            .await
            .expect("foreign_keys");
        assert_eq!(fk, 1);
    }

    #[tokio::test]
    async fn lifecycle_suite_in_memory_and_on_disk() {
        let store = SqliteMetadata::in_memory().await.expect("db");
        conformance::lifecycle_suite(&store, &store, &store).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteMetadata::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        conformance::lifecycle_suite(&store, &store, &store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn replication_suite_in_memory() {
        let store = SqliteMetadata::in_memory().await.expect("db");
        let s = &store;
        conformance::replication_suite(&store, |name| {
            crate::conformance::add_test_registry(s, name)
        })
        .await;
    }

    #[tokio::test]
    async fn account_suite_in_memory() {
        let store = SqliteMetadata::in_memory()
            .await
            .expect("in-memory database");
        conformance::account_store_suite(&store).await;
        let store = SqliteMetadata::in_memory()
            .await
            .expect("in-memory database");
        conformance::account_repository_suite(&store, &store).await;
    }

    #[tokio::test]
    async fn remote_store_suite_in_memory() {
        let store = SqliteMetadata::in_memory().await.expect("db");
        crate::conformance_remotes::remote_store_suite(&store).await;
    }

    #[tokio::test]
    async fn console_suites_in_memory_and_on_disk() {
        let store = SqliteMetadata::in_memory().await.expect("db");
        conformance::session_suite(&store).await;
        conformance::console_suite(&store).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteMetadata::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        conformance::session_suite(&store).await;
        conformance::console_suite(&store).await;
        store.close().await;
    }

    #[tokio::test]
    async fn console_queries_use_indexes() {
        let store = SqliteMetadata::in_memory().await.expect("db");
        for sql in [
            "SELECT username FROM console_sessions WHERE id_hash = 'h'",
            "DELETE FROM console_sessions WHERE username = 'u'",
            "DELETE FROM console_sessions WHERE expires_at < 5",
            "SELECT tag FROM tags WHERE repository = 'r' AND tag > '' ORDER BY tag LIMIT 100",
            "SELECT COUNT(*) FROM tags t WHERE t.repository = 'r'",
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(&store.reader)
                    .await
                    .expect("plan");
            for (_, _, _, detail) in &plan {
                assert!(
                    !detail.starts_with("SCAN") && !detail.contains("TEMP B-TREE"),
                    "{sql}: {plan:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn account_suite_on_disk_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.db");
        let store = SqliteMetadata::open(&path).await.expect("open");
        conformance::account_store_suite(&store).await;
        conformance::metadata_suite(&store).await;
        let projects = store.list_projects().await.expect("projects");
        let users = store.list_users().await.expect("users");
        let members = store.members("library").await.expect("members");
        let audit = store
            .audit_events(&AuditFilter::default())
            .await
            .expect("audit");
        store.close().await;

        let reopened = SqliteMetadata::open(&path).await.expect("reopen");
        assert_eq!(reopened.list_projects().await.expect("projects"), projects);
        assert_eq!(reopened.list_users().await.expect("users"), users);
        assert_eq!(reopened.members("library").await.expect("members"), members);
        assert_eq!(
            reopened
                .audit_events(&AuditFilter::default())
                .await
                .expect("audit"),
            audit
        );
        // AUTOINCREMENT: ids keep growing across restarts.
        reopened
            .audit(&AuditEvent {
                id: 0,
                at: 1,
                actor: "a".into(),
                action: "login".into(),
                resource: "registry".into(),
                client_addr: String::new(),
                detail: String::new(),
            })
            .await
            .expect("audit");
        let newest = reopened
            .audit_events(&AuditFilter {
                limit: 1,
                ..AuditFilter::default()
            })
            .await
            .expect("newest");
        assert!(newest[0].id > audit[0].id);
        reopened.close().await;

        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteMetadata::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        conformance::account_repository_suite(&store, &store).await;
    }

    #[tokio::test]
    async fn database_of_an_older_berth_gains_the_account_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.db");
        {
            // A database made by the registry core: only the metadata schema.
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .expect("old db");
            sqlx::raw_sql(SCHEMA).execute(&pool).await.expect("schema");
            sqlx::query("INSERT INTO repositories (name, created_at) VALUES ('library/nginx', 1)")
                .execute(&pool)
                .await
                .expect("repo");
            pool.close().await;
        }
        let store = SqliteMetadata::open(&path).await.expect("open");
        assert!(
            store
                .repository_exists("library/nginx")
                .await
                .expect("old data")
        );
        assert_eq!(store.project("library").await.expect("project"), None);
        let library = Project {
            name: "library".into(),
            public: true,
            description: String::new(),
            created_at: 1,
        };
        store.create_project(&library).await.expect("create");
        assert_eq!(
            store.project("library").await.expect("project"),
            Some(library)
        );
        let e = store
            .delete_project("library")
            .await
            .expect_err("has repos");
        assert!(matches!(e, StorageError::Conflict(_)), "{e:?}");
    }

    #[tokio::test]
    async fn expired_refresh_tokens_are_purged_on_put() {
        let store = SqliteMetadata::in_memory().await.expect("db");
        let expired = RefreshToken {
            id_hash: "old".into(),
            subject: "alice".into(),
            expires_at: now() - 10,
        };
        store.put_refresh_token(&expired).await.expect("put");
        assert_eq!(
            store.refresh_token("old").await.expect("get"),
            Some(expired),
            "returned until purged; the caller checks expiry"
        );
        let fresh = RefreshToken {
            id_hash: "new".into(),
            subject: "alice".into(),
            expires_at: now() + 3600,
        };
        store.put_refresh_token(&fresh).await.expect("put");
        assert_eq!(store.refresh_token("old").await.expect("get"), None);
        assert_eq!(store.refresh_token("new").await.expect("get"), Some(fresh));
    }

    #[tokio::test]
    async fn account_queries_use_indexes() {
        let store = SqliteMetadata::in_memory().await.expect("db");
        for sql in [
            "SELECT id FROM audit_events WHERE actor = 'a' ORDER BY id DESC LIMIT 10",
            "SELECT id FROM audit_events WHERE action = 'push' ORDER BY id DESC LIMIT 10",
            "SELECT id FROM audit_events WHERE at >= 1 AND at < 2",
            "SELECT id FROM audit_events WHERE id < 5 ORDER BY id DESC LIMIT 10",
            "SELECT project, role FROM members WHERE username = 'a' ORDER BY project",
            "SELECT username, role FROM members WHERE project = 'p' ORDER BY username",
            "SELECT name FROM robots WHERE project = 'p' ORDER BY name",
            "SELECT 1 FROM refresh_tokens WHERE subject = 's'",
            "SELECT 1 FROM refresh_tokens WHERE expires_at < 5",
            "SELECT COUNT(*), MIN(name) FROM repositories
             WHERE name >= 'p' || '/' AND name < 'p' || '0'",
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(&store.reader)
                    .await
                    .expect("plan");
            for (_, _, _, detail) in &plan {
                assert!(
                    !detail.starts_with("SCAN") && !detail.contains("TEMP B-TREE"),
                    "{sql}: {plan:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn concurrent_account_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteMetadata::open(&dir.path().join("db"))
            .await
            .expect("open");
        let project = Project {
            name: "library".into(),
            public: true,
            description: String::new(),
            created_at: 1,
        };
        store.create_project(&project).await.expect("project");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = store.clone();
            let project = project.clone();
            tasks.push(tokio::spawn(async move {
                // Everyone races to create the same project: exactly one could win.
                let again = store.create_project(&project).await;
                assert!(matches!(again, Err(StorageError::AlreadyExists(_))));
                let user = User {
                    name: format!("u{i:02}"),
                    password_hash: "$argon2id$x".into(),
                    admin: false,
                    created_at: 1,
                    disabled: false,
                };
                store.create_user(&user).await.expect("user");
                store
                    .set_member("library", &user.name, ProjectRole::Guest)
                    .await
                    .expect("member");
                store
                    .audit(&AuditEvent {
                        id: 0,
                        at: i,
                        actor: user.name.clone(),
                        action: "user.create".into(),
                        resource: format!("user:{}", user.name),
                        client_addr: String::new(),
                        detail: String::new(),
                    })
                    .await
                    .expect("audit");
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(store.count_users().await.expect("count"), 16);
        assert_eq!(store.members("library").await.expect("members").len(), 16);
        let events = store
            .audit_events(&AuditFilter::default())
            .await
            .expect("audit");
        assert_eq!(events.len(), 16);
    }

    #[tokio::test]
    async fn by_tag_lookup_uses_indexes() {
        let store = SqliteMetadata::in_memory().await.expect("db");
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "EXPLAIN QUERY PLAN SELECT m.digest, m.media_type, m.content
             FROM tags t
             JOIN manifests m ON m.repository = t.repository AND m.digest = t.digest
             WHERE t.repository = ?1 AND t.tag = ?2",
        )
        .bind("r")
        .bind("t")
        .fetch_all(&store.reader)
        .await
        .expect("plan");
        for (_, _, _, detail) in &plan {
            assert!(!detail.starts_with("SCAN"), "full scan in {plan:?}");
        }
    }

    #[tokio::test]
    async fn hot_manifests_follow_writes_here_and_in_another_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let server = SqliteMetadata::open(&path).await.expect("open");
        let put = |n: u32| {
            crate::conformance::manifest("r", &format!("{{\"n\":{n}}}"), Some("t"), &[], None, None)
        };
        let digest_of = |m: Option<ManifestRecord>| m.map(|m| m.digest);
        let (one, two) = (put(1), put(2));
        server.put_manifest(one.clone()).await.expect("put");
        let got = server.manifest_by_tag("r", "t").await.expect("get");
        assert_eq!(digest_of(got), Some(one.digest.clone()));
        // A write of this process is seen at once: the tag moved, then was deleted.
        server.put_manifest(two.clone()).await.expect("put");
        let got = server.manifest_by_tag("r", "t").await.expect("get");
        assert_eq!(digest_of(got), Some(two.digest.clone()));
        server.delete_tag("r", "t").await.expect("delete");
        assert_eq!(server.manifest_by_tag("r", "t").await.expect("get"), None);
        server
            .delete_manifest("r", &two.digest)
            .await
            .expect("delete");
        assert_eq!(
            server
                .manifest_by_digest("r", &two.digest)
                .await
                .expect("get"),
            None
        );
        // Another process (the CLI on the same data directory) moves the tag: seen within
        // the cache's lifetime.
        let cli = SqliteMetadata::open(&path).await.expect("open");
        let three = put(3);
        server.put_manifest(one.clone()).await.expect("put");
        let got = server.manifest_by_tag("r", "t").await.expect("get");
        assert_eq!(digest_of(got), Some(one.digest.clone()));
        cli.put_manifest(three.clone()).await.expect("put");
        tokio::time::sleep(crate::manifest_cache::TIME_TO_LIVE).await;
        let got = server.manifest_by_tag("r", "t").await.expect("get");
        assert_eq!(digest_of(got), Some(three.digest));
        cli.close().await;
        server.close().await;
    }

    #[tokio::test]
    async fn concurrent_reads_and_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteMetadata::open(&dir.path().join("db"))
            .await
            .expect("open");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let content = format!("{{\"n\":{i}}}");
                let manifest = crate::conformance::manifest(
                    &format!("repo{}", i % 3),
                    &content,
                    Some(&format!("t{i}")),
                    &[],
                    None,
                    None,
                );
                store.put_manifest(manifest.clone()).await.expect("put");
                let got = store
                    .manifest_by_tag(&manifest.repository, &format!("t{i}"))
                    .await
                    .expect("get");
                assert_eq!(got.map(|m| m.digest), Some(manifest.digest));
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        assert_eq!(
            store.list_repositories(None, 10).await.expect("list"),
            ["repo0", "repo1", "repo2"]
        );
    }
}
