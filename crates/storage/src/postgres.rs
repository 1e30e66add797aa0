//! [`MetadataStore`] in PostgreSQL, for several stateless replicas sharing one database.
//!
//! - Versioned migrations (`crates/storage/migrations/postgres/NNNN_*.sql`, embedded at
//!   build time) run at open; sqlx holds a PostgreSQL advisory lock while migrating, so
//!   replicas starting together do not race.
//! - One pool, of configurable size, with a bounded acquire timeout: when the database is
//!   down or saturated a request fails within that time with
//!   [`StorageError::Unavailable`] (503) instead of queueing forever; connections are
//!   checked before use, so service resumes by itself once the database is back.
//! - Writes that must stay consistent across replicas serialize on transaction-scoped
//!   advisory locks (`pg_advisory_xact_lock`), released at commit or rollback:
//!   every manifest or tag write takes its repository's lock (no index committed over a
//!   child deleted at the same moment, no half-applied delete); a manifest write and a
//!   blob link take a *shared* lock on each blob digest, unlinking a blob an *exclusive*
//!   one, so "does anything still need these bytes?" can never be answered "no" while a
//!   manifest referencing them is being committed. Tag moves are single `INSERT … ON
//!   CONFLICT DO UPDATE` statements: the last committed push wins, none is lost.
//!   A manifest whose blob is linked nowhere once those locks are held (it was unlinked
//!   after the server checked it) is refused with [`StorageError::BlobUnknown`].
//! - Reads are single statements at READ COMMITTED (a manifest GET is one round trip).
//! - The storage lifecycle (GC change log, tombstones, pins, quotas) is in
//!   [`crate::postgres_lifecycle`], on the same locks; a write that loses a deadlock
//!   against another is run again ([`retrying`]).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use berth_proto::Digest;
use sha2::Digest as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::lifecycle::PushLimits;
use crate::metadata::{
    ManifestRecord, MetadataStore, NewManifest, Referrer, RepositorySummary, TagDetail,
    UntaggedManifest, UploadSession, Usage,
};
use crate::sqlite::now;
use crate::{StorageError, StorageResult};

/// The migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database?sslmode=…`
    pub url: String,
    /// Most connections this process opens.
    pub max_connections: u32,
    /// How long a request waits for a free connection (or for a new one to be made)
    /// before failing with 503.
    pub acquire_timeout: Duration,
    /// Longest a single statement may run (server-side `statement_timeout`).
    pub statement_timeout: Duration,
}

impl PgOptions {
    /// Defaults for `url`: 16 connections, 5 s acquire timeout, 30 s statement timeout.
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// Registry metadata (and, in [`crate::postgres_accounts`], accounts) in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgMetadata {
    pub(crate) pool: PgPool,
}

/// `url` without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl PgMetadata {
    /// Connect, and bring the schema up to date.
    pub async fn open(options: &PgOptions) -> StorageResult<PgMetadata> {
        let connect = PgConnectOptions::from_str(&options.url).map_err(|e| {
            StorageError::Database(format!(
                "invalid database url {}: {e}; expected postgres://USER:PASSWORD@HOST:PORT/DB",
                redact_url(&options.url)
            ))
        })?;
        let timeout_ms = options.statement_timeout.as_millis().to_string();
        let connect = connect
            .application_name("berth")
            .options([("statement_timeout", timeout_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(true)
            .connect_with(connect)
            .await
            .map_err(|e| {
                StorageError::Unavailable(format!(
                    "cannot connect to the metadata database at {}: {e}; check [database] url \
                     and that PostgreSQL is running",
                    redact_url(&options.url)
                ))
            })?;
        MIGRATOR.run(&pool).await.map_err(|e| {
            StorageError::Database(format!(
                "migrating the metadata database at {} failed: {e}",
                redact_url(&options.url)
            ))
        })?;
        Ok(PgMetadata { pool })
    }

    /// Close every connection; call on shutdown.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The pool (for readiness checks and metrics).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Upload sessions started on any replica and not finished or cancelled.
    pub async fn count_uploads(&self) -> StorageResult<u64> {
        let n = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM uploads")
            .fetch_one(&self.pool)
            .await?;
        to_u64(n)
    }

    /// One trivial round trip: `Ok` while the database answers.
    pub async fn ping(&self) -> StorageResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// A cluster-wide setting, created with `make()` by the first caller (replicas racing
    /// to create it all end up with the value of the one that committed first).
    pub async fn setting_or_create(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> StorageResult<String> {
        if let Some(v) = self.setting(name).await? {
            return Ok(v);
        }
        sqlx::query(
            "INSERT INTO cluster_settings (name, value, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(make())
        .bind(now())
        .execute(&self.pool)
        .await?;
        self.setting(name).await?.ok_or_else(|| {
            StorageError::Database(format!("setting {name} vanished right after its creation"))
        })
    }

    async fn setting(&self, name: &str) -> StorageResult<Option<String>> {
        Ok(
            sqlx::query_scalar::<_, String>("SELECT value FROM cluster_settings WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

/// The advisory-lock key of `kind:name` (the first 8 bytes of its SHA-256): the same on
/// every replica.
pub(crate) fn lock_key(kind: &str, name: &str) -> i64 {
    let mut h = sha2::Sha256::new();
    h.update(kind.as_bytes());
    h.update(b":");
    h.update(name.as_bytes());
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Serialize with every other writer of `repository` until the transaction ends.
pub(crate) async fn lock_repository(
    conn: &mut PgConnection,
    repository: &str,
) -> StorageResult<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key("repository", repository))
        .execute(conn)
        .await?;
    Ok(())
}

/// Lock blob digests (sorted, so two transactions never wait on each other in a cycle):
/// shared by writers that add a reference, exclusive by [`MetadataStore::unlink_blob`].
pub(crate) async fn lock_blobs(
    conn: &mut PgConnection,
    digests: &[String],
    shared: bool,
) -> StorageResult<()> {
    let mut keys: Vec<i64> = digests.iter().map(|d| lock_key("blob", d)).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    let sql = if shared {
        "SELECT pg_advisory_xact_lock_shared(k) FROM unnest($1::bigint[]) AS k ORDER BY k"
    } else {
        "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k"
    };
    sqlx::query(sql).bind(&keys).execute(conn).await?;
    Ok(())
}

/// The advisory-lock key of project `name`: taken shared by every transaction that may
/// create a repository `name/…`, exclusively by `delete_project`.
pub(crate) fn project_lock_key(name: &str) -> i64 {
    lock_key("project", name)
}

/// Create `repository` if missing, holding its project's lock (shared) until commit so
/// that a concurrent `delete_project` on another replica cannot miss it.
pub(crate) async fn ensure_repository(
    tx: &mut Transaction<'_, Postgres>,
    repository: &str,
) -> StorageResult<()> {
    let project = repository.split('/').next().unwrap_or(repository);
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(project_lock_key(project))
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(repository)
    .bind(now())
    .execute(&mut **tx)
    .await?;
    Ok(())
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

pub(crate) fn parse_digest(s: &str) -> StorageResult<Digest> {
    s.parse()
        .map_err(|e| StorageError::Database(format!("invalid digest in database: {e}")))
}

/// A repository's summary columns, for rows of `repositories r`.
const SUMMARY_COLUMNS: &str = "r.name,
    (SELECT COUNT(*) FROM tags t WHERE t.repository = r.name),
    (SELECT MAX(t.updated_at) FROM tags t WHERE t.repository = r.name),
    (SELECT MAX(m.created_at) FROM manifests m WHERE m.repository = r.name),
    ((SELECT COALESCE(SUM(b.size), 0) FROM blob_links b WHERE b.repository = r.name)
      + (SELECT COALESCE(SUM(m.size), 0) FROM manifests m WHERE m.repository = r.name))::BIGINT";

type SummaryRow = (String, i64, Option<i64>, Option<i64>, i64);

fn summary((name, tags, tagged, pushed, bytes): SummaryRow) -> StorageResult<RepositorySummary> {
    Ok(RepositorySummary {
        name,
        tag_count: to_u64(tags)?,
        last_push: tagged.max(pushed),
        bytes: to_u64(bytes)?,
    })
}

/// The compressed size of manifest `m` (an SQL expression), as in the SQLite backend.
macro_rules! manifest_bytes {
    () => {
        "(m.size
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
       WHERE c.repository = m.repository AND c.manifest = m.digest))::BIGINT"
    };
}

impl PgMetadata {
    /// `put_manifest`, optionally checked against quota and immutable-tag limits inside
    /// the same transaction; run again when it lost a race (deadlock) with another writer.
    pub(crate) async fn put_manifest_in(
        &self,
        manifest: NewManifest,
        limits: Option<&PushLimits>,
    ) -> StorageResult<()> {
        retrying(|| self.put_manifest_once(&manifest, limits)).await
    }

    async fn link_blob_once(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
    ) -> StorageResult<()> {
        let size = to_i64(size)?;
        let digest = digest.to_string();
        let mut tx = self.pool.begin().await?;
        lock_blobs(&mut tx, std::slice::from_ref(&digest), true).await?;
        crate::postgres_lifecycle::refuse_tombstoned(&mut tx, &digest).await?;
        ensure_repository(&mut tx, repository).await?;
        sqlx::query(
            "INSERT INTO blob_links (repository, digest, size) VALUES ($1, $2, $3)
             ON CONFLICT (repository, digest) DO NOTHING",
        )
        .bind(repository)
        .bind(&digest)
        .bind(size)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unlink_blob_once(&self, repository: &str, digest: &Digest) -> StorageResult<bool> {
        let digest = digest.to_string();
        let mut tx = self.pool.begin().await?;
        lock_repository(&mut tx, repository).await?;
        lock_blobs(&mut tx, std::slice::from_ref(&digest), false).await?;
        let deleted = sqlx::query("DELETE FROM blob_links WHERE repository = $1 AND digest = $2")
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
        // Under the exclusive digest lock: every transaction adding a reference to this
        // digest has committed (and is visible to this statement) or has not started.
        let still = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM blob_links WHERE digest = $1)
                 OR EXISTS(SELECT 1 FROM manifest_blobs WHERE blob = $1)",
        )
        .bind(&digest)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(still)
    }

    async fn delete_manifest_once(&self, repository: &str, digest: &Digest) -> StorageResult<()> {
        let digest = digest.to_string();
        let mut tx = self.pool.begin().await?;
        lock_repository(&mut tx, repository).await?;
        // Tags, blob references and children go by cascade.
        let deleted = sqlx::query("DELETE FROM manifests WHERE repository = $1 AND digest = $2")
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
        Ok(())
    }

    async fn delete_tag_once(&self, repository: &str, tag: &str) -> StorageResult<()> {
        // Under the repository lock like every other change GC's manifest decision reads.
        let mut tx = self.pool.begin().await?;
        lock_repository(&mut tx, repository).await?;
        let deleted = sqlx::query("DELETE FROM tags WHERE repository = $1 AND tag = $2")
            .bind(repository)
            .bind(tag)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StorageError::NotFound(format!(
                "tag {tag} in repository {repository}"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// One attempt of [`Self::put_manifest_in`].
    async fn put_manifest_once(
        &self,
        manifest: &NewManifest,
        limits: Option<&PushLimits>,
    ) -> StorageResult<()> {
        let now = now();
        let digest = manifest.digest.to_string();
        let size = to_i64(manifest.content.len() as u64)?;
        let repository = manifest.repository.as_str();
        // Sorted: every transaction touches the blobs' rows in one order (no deadlock).
        let mut blobs: Vec<String> = manifest.blobs.iter().map(Digest::to_string).collect();
        blobs.sort_unstable();
        blobs.dedup();
        let children: Vec<String> = manifest.children.iter().map(Digest::to_string).collect();
        let mut tx = self.pool.begin().await?;
        lock_repository(&mut tx, repository).await?;
        lock_blobs(&mut tx, &blobs, true).await?;
        ensure_repository(&mut tx, repository).await?;
        // Under the locks (serialized with the collector's decisions on these blobs and
        // this repository): everything referenced must still be there, and the limits hold.
        crate::postgres_lifecycle::check_references(&mut tx, manifest).await?;
        if let Some(limits) = limits {
            crate::postgres_lifecycle::check_limits(&mut tx, manifest, limits).await?;
        }
        // Same digest = same bytes: re-putting changes nothing.
        sqlx::query(
            "INSERT INTO manifests
                 (repository, digest, media_type, content, size, subject, artifact_type,
                  annotations, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
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
                "INSERT INTO tags (repository, tag, digest, updated_at) VALUES ($1, $2, $3, $4)
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
        if !blobs.is_empty() {
            sqlx::query(
                "INSERT INTO manifest_blobs (repository, manifest, blob)
                 SELECT $1, $2, b FROM unnest($3::text[]) AS b
                 ON CONFLICT DO NOTHING",
            )
            .bind(repository)
            .bind(&digest)
            .bind(&blobs)
            .execute(&mut *tx)
            .await?;
            // Link each blob to this repository (its size is known from any existing link).
            sqlx::query(
                "INSERT INTO blob_links (repository, digest, size)
                 SELECT DISTINCT ON (digest) $1, digest, size FROM blob_links
                 WHERE digest = ANY($2::text[])
                 ON CONFLICT (repository, digest) DO NOTHING",
            )
            .bind(repository)
            .bind(&blobs)
            .execute(&mut *tx)
            .await?;
            // Under the shared blob locks no unlink can run: a blob without a link now was
            // unlinked everywhere (its bytes may be gone) after the caller checked it.
            let missing = sqlx::query_scalar::<_, String>(
                "SELECT b FROM unnest($2::text[]) AS b
                 WHERE NOT EXISTS (SELECT 1 FROM blob_links WHERE repository = $1 AND digest = b)
                 LIMIT 1",
            )
            .bind(repository)
            .bind(&blobs)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(missing) = missing {
                return Err(StorageError::BlobUnknown(parse_digest(&missing)?));
            }
        }
        if !children.is_empty() {
            sqlx::query(
                "INSERT INTO manifest_children (repository, manifest, child)
                 SELECT $1, $2, c FROM unnest($3::text[]) AS c
                 ON CONFLICT DO NOTHING",
            )
            .bind(repository)
            .bind(&digest)
            .bind(&children)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Run `op` again (a few times, briefly backing off) while it fails only because its
/// transaction lost a race with another one (a deadlock or serialization failure).
pub(crate) async fn retrying<T, F, Fut>(mut op: F) -> StorageResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StorageResult<T>>,
{
    let mut attempt = 0u64;
    loop {
        match op().await {
            Err(e) if e.is_retryable_race() && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
            }
            other => return other,
        }
    }
}

#[async_trait]
impl MetadataStore for PgMetadata {
    async fn list_repositories(
        &self,
        last: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<String>> {
        let rows = sqlx::query_scalar::<_, String>(
            "SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2",
        )
        .bind(last.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn repository_exists(&self, repository: &str) -> StorageResult<bool> {
        let exists = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM repositories WHERE name = $1)",
        )
        .bind(repository)
        .fetch_one(&self.pool)
        .await?;
        Ok(exists)
    }

    async fn link_blob(&self, repository: &str, digest: &Digest, size: u64) -> StorageResult<()> {
        retrying(|| self.link_blob_once(repository, digest, size)).await
    }

    async fn blob_link(&self, repository: &str, digest: &Digest) -> StorageResult<Option<u64>> {
        let size = sqlx::query_scalar::<_, i64>(
            "SELECT size FROM blob_links WHERE repository = $1 AND digest = $2",
        )
        .bind(repository)
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        size.map(to_u64).transpose()
    }

    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> StorageResult<bool> {
        retrying(|| self.unlink_blob_once(repository, digest)).await
    }

    async fn put_manifest(&self, manifest: NewManifest) -> StorageResult<()> {
        self.put_manifest_in(manifest, None).await
    }

    async fn manifest_by_digest(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> StorageResult<Option<ManifestRecord>> {
        let row = sqlx::query_as::<_, (String, Vec<u8>)>(
            "SELECT media_type, content FROM manifests WHERE repository = $1 AND digest = $2",
        )
        .bind(repository)
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(media_type, content)| ManifestRecord {
            digest: digest.clone(),
            media_type,
            content,
        }))
    }

    async fn manifest_by_tag(
        &self,
        repository: &str,
        tag: &str,
    ) -> StorageResult<Option<ManifestRecord>> {
        let row = sqlx::query_as::<_, (String, String, Vec<u8>)>(
            "SELECT m.digest, m.media_type, m.content
             FROM tags t
             JOIN manifests m ON m.repository = t.repository AND m.digest = t.digest
             WHERE t.repository = $1 AND t.tag = $2",
        )
        .bind(repository)
        .bind(tag)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(digest, media_type, content)| {
            Ok(ManifestRecord {
                digest: parse_digest(&digest)?,
                media_type,
                content,
            })
        })
        .transpose()
    }

    async fn manifest_exists(&self, repository: &str, digest: &Digest) -> StorageResult<bool> {
        let exists = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS(SELECT 1 FROM manifests WHERE repository = $1 AND digest = $2)",
        )
        .bind(repository)
        .bind(digest.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(exists)
    }

    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> StorageResult<()> {
        retrying(|| self.delete_manifest_once(repository, digest)).await
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> StorageResult<()> {
        retrying(|| self.delete_tag_once(repository, tag)).await
    }

    async fn list_tags(
        &self,
        repository: &str,
        last: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<String>> {
        // One round trip: the tags, or one NULL row if the repository does not exist.
        let rows = sqlx::query_as::<_, (Option<String>,)>(
            "SELECT t.tag FROM repositories r
             LEFT JOIN LATERAL (
                 SELECT tag FROM tags WHERE repository = r.name AND tag > $2
                 ORDER BY tag LIMIT $3
             ) t ON TRUE
             WHERE r.name = $1
             ORDER BY t.tag",
        )
        .bind(repository)
        .bind(last.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(StorageError::NotFound(format!("repository {repository}")));
        }
        Ok(rows.into_iter().filter_map(|(t,)| t).collect())
    }

    async fn referrers(
        &self,
        repository: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> StorageResult<Vec<Referrer>> {
        type Row = (String, String, i64, Option<String>, Option<String>);
        let rows = sqlx::query_as::<_, Row>(
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests
             WHERE repository = $1 AND subject = $2
               AND ($3::text IS NULL OR artifact_type = $3)
             ORDER BY digest",
        )
        .bind(repository)
        .bind(subject.to_string())
        .bind(artifact_type)
        .fetch_all(&self.pool)
        .await?;
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
            "INSERT INTO uploads (id, repository, started_at, owner) VALUES ($1, $2, $3, $4)",
        )
        .bind(&session.id)
        .bind(&session.repository)
        .bind(session.started_at)
        .bind(&session.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn upload(&self, id: &str) -> StorageResult<Option<UploadSession>> {
        let row = sqlx::query_as::<_, (String, i64, String)>(
            "SELECT repository, started_at, owner FROM uploads WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(repository, started_at, owner)| UploadSession {
            id: id.to_owned(),
            repository,
            started_at,
            owner,
        }))
    }

    async fn count_uploads_by_owner(&self, owner: &str) -> StorageResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads WHERE owner = $1")
            .bind(owner)
            .fetch_one(&self.pool)
            .await?;
        to_u64(n)
    }

    async fn upload_ids(&self) -> StorageResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT id FROM uploads")
            .fetch_all(&self.pool)
            .await?)
    }

    async fn delete_upload(&self, id: &str) -> StorageResult<()> {
        sqlx::query("DELETE FROM uploads WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn project_usage(&self, project: &str) -> StorageResult<Usage> {
        let (lo, hi) = project_range(project);
        let (repositories, blobs, manifests) = sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT
                (SELECT COUNT(*) FROM repositories WHERE name >= $1 AND name < $2),
                (SELECT COALESCE(SUM(size), 0)::BIGINT FROM
                    (SELECT MAX(size) AS size FROM blob_links
                     WHERE repository >= $1 AND repository < $2 GROUP BY digest) AS d),
                (SELECT COALESCE(SUM(size), 0)::BIGINT FROM manifests
                 WHERE repository >= $1 AND repository < $2)",
        )
        .bind(&lo)
        .bind(&hi)
        .fetch_one(&self.pool)
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
             WHERE r.name >= $1 AND r.name < $2 AND r.name > $3
             ORDER BY r.name LIMIT $4"
        );
        let rows = sqlx::query_as::<_, SummaryRow>(sqlx::AssertSqlSafe(sql))
            .bind(&lo)
            .bind(&hi)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(summary).collect()
    }

    async fn repository_summary(
        &self,
        repository: &str,
    ) -> StorageResult<Option<RepositorySummary>> {
        let sql = format!("SELECT {SUMMARY_COLUMNS} FROM repositories r WHERE r.name = $1");
        let row = sqlx::query_as::<_, SummaryRow>(sqlx::AssertSqlSafe(sql))
            .bind(repository)
            .fetch_optional(&self.pool)
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
             WHERE t.repository = $1 AND t.tag > $2
             ORDER BY t.tag LIMIT $3"
        ))
        .bind(repository)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
             WHERE m.repository = $1 AND m.digest > $2 AND m.subject IS NULL
               AND NOT EXISTS (SELECT 1 FROM tags t
                               WHERE t.repository = m.repository AND t.digest = m.digest)
               AND NOT EXISTS (SELECT 1 FROM manifest_children c
                               WHERE c.repository = m.repository AND c.child = m.digest)
             ORDER BY m.digest LIMIT $3"
        ))
        .bind(repository)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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
            "SELECT name FROM repositories WHERE name > $2 AND strpos(name, $1) > 0
             ORDER BY name LIMIT $3",
        )
        .bind(needle)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}

/// Failed-login counters shared by every replica (table `login_failures`). The backoff
/// policy is the caller's; this only counts atomically and remembers blocks. Times are
/// milliseconds since the epoch.
impl PgMetadata {
    /// The latest `blocked_until` among `keys` that is still in the future: `(key, until)`.
    pub async fn login_blocked(
        &self,
        keys: &[String],
        now_ms: i64,
    ) -> StorageResult<Option<(String, i64)>> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT key, blocked_until FROM login_failures
             WHERE key = ANY($1::text[]) AND blocked_until > $2
             ORDER BY blocked_until DESC LIMIT 1",
        )
        .bind(keys)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Count one failure of `key` (starting again from zero when its last failure is
    /// older than `forget_ms` and it is not blocked); returns the new count. One atomic
    /// statement, so failures on different replicas all count.
    pub async fn login_failure(
        &self,
        key: &str,
        now_ms: i64,
        forget_ms: i64,
    ) -> StorageResult<u32> {
        let failures = sqlx::query_scalar::<_, i32>(
            "INSERT INTO login_failures AS f (key, failures, last_failure, blocked_until)
             VALUES ($1, 1, $2, NULL)
             ON CONFLICT (key) DO UPDATE SET
                 failures = CASE
                     WHEN f.last_failure < $2 - $3 AND COALESCE(f.blocked_until, 0) <= $2 THEN 1
                     ELSE f.failures + 1 END,
                 last_failure = $2
             RETURNING failures",
        )
        .bind(key)
        .bind(now_ms)
        .bind(forget_ms)
        .fetch_one(&self.pool)
        .await?;
        // Housekeeping: counters nobody will look at again.
        sqlx::query(
            "DELETE FROM login_failures
             WHERE last_failure < $1 - $2 AND COALESCE(blocked_until, 0) < $1",
        )
        .bind(now_ms)
        .bind(forget_ms)
        .execute(&self.pool)
        .await?;
        Ok(u32::try_from(failures).unwrap_or(0))
    }

    /// Block `key` until `until_ms` (never shortening an existing block).
    pub async fn login_block(&self, key: &str, until_ms: i64) -> StorageResult<()> {
        sqlx::query(
            "UPDATE login_failures SET blocked_until = GREATEST(COALESCE(blocked_until, 0), $2)
             WHERE key = $1",
        )
        .bind(key)
        .bind(until_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forget `key`'s failures (a successful login).
    pub async fn login_success(&self, key: &str) -> StorageResult<()> {
        sqlx::query("DELETE FROM login_failures WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::{AccountStore, AuditEvent, AuditFilter};
    use crate::conformance;
    use crate::pg_fixture::PgCluster;

    async fn fresh() -> PgMetadata {
        let url = PgCluster::shared().database().await;
        PgMetadata::open(&PgOptions::new(url)).await.expect("open")
    }

    #[tokio::test]
    async fn conformance_metadata_suite() {
        let url = PgCluster::shared().database().await;
        let store = PgMetadata::open(&PgOptions::new(url.clone()))
            .await
            .expect("open");
        conformance::metadata_suite(&store).await;
        // Migrations are idempotent: a second replica opening the same database.
        let again = PgMetadata::open(&PgOptions::new(url))
            .await
            .expect("reopen");
        assert_eq!(
            again.list_repositories(None, 100).await.expect("list"),
            store.list_repositories(None, 100).await.expect("list")
        );
    }

    #[tokio::test]
    async fn conformance_account_suites() {
        let store = fresh().await;
        conformance::account_store_suite(&store).await;
        let store = fresh().await;
        conformance::account_repository_suite(&store, &store).await;
    }

    #[tokio::test]
    async fn conformance_lifecycle_suite() {
        let store = fresh().await;
        conformance::lifecycle_suite(&store, &store, &store).await;
    }

    #[tokio::test]
    async fn conformance_remote_store_suite() {
        let store = fresh().await;
        crate::conformance_remotes::remote_store_suite(&store).await;
    }

    #[tokio::test]
    async fn conformance_replication_suite() {
        let store = fresh().await;
        let s = &store;
        conformance::replication_suite(&store, |name| {
            crate::conformance::add_test_registry(s, name)
        })
        .await;
    }

    #[tokio::test]
    async fn conformance_console_suites() {
        let store = fresh().await;
        conformance::session_suite(&store).await;
        conformance::console_suite(&store).await;
    }

    #[tokio::test]
    async fn audit_ids_increase_across_pools() {
        let url = PgCluster::shared().database().await;
        let a = PgMetadata::open(&PgOptions::new(url.clone()))
            .await
            .expect("a");
        let b = PgMetadata::open(&PgOptions::new(url)).await.expect("b");
        let event = |at| AuditEvent {
            id: 0,
            at,
            actor: "alice".into(),
            action: "login".into(),
            resource: "registry".into(),
            client_addr: String::new(),
            detail: String::new(),
        };
        for i in 0..10 {
            let store = if i % 2 == 0 { &a } else { &b };
            store.audit(&event(i)).await.expect("audit");
        }
        let events = b.audit_events(&AuditFilter::default()).await.expect("list");
        assert_eq!(events.len(), 10);
        assert!(events.windows(2).all(|w| w[0].id > w[1].id), "{events:?}");
        assert_eq!(events[0].at, 9, "newest first");
    }

    /// Two pools (two replicas) hammer one repository: tags move concurrently, manifests
    /// reference blobs that are concurrently unlinked elsewhere. Afterwards every tag points
    /// at a manifest of the last writer's set, no tag update is lost, and no blob that a
    /// manifest references was reported as unneeded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_replicas_hammer_one_repository() {
        const REPO: &str = "library/race";
        let url = PgCluster::shared().database().await;
        let mut options = PgOptions::new(url);
        options.max_connections = 4;
        let a = PgMetadata::open(&options).await.expect("a");
        let b = PgMetadata::open(&options).await.expect("b");
        let manifest = |i: usize, blob: &Digest| {
            let content = format!("{{\"n\":{i}}}");
            NewManifest {
                repository: REPO.to_owned(),
                digest: Digest::sha256(content.as_bytes()),
                media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
                content: content.into_bytes(),
                tag: Some(format!("t{}", i % 4)),
                blobs: vec![blob.clone()],
                children: Vec::new(),
                subject: None,
                artifact_type: None,
                annotations_json: None,
            }
        };
        let mut tasks = Vec::new();
        for i in 0..64usize {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                // Each blob is first linked in a scratch repository, then a manifest in the
                // shared repository references it while the other replica unlinks it from
                // the scratch repository.
                let blob = Digest::sha256(format!("blob {i}").as_bytes());
                let scratch = format!("scratch/r{i}");
                store.link_blob(&scratch, &blob, 10).await.expect("link");
                let m = manifest(i, &blob);
                let (put, unlinked) = tokio::join!(
                    store.put_manifest(m.clone()),
                    store.unlink_blob(&scratch, &blob)
                );
                let still_needed = unlinked.expect("unlink");
                match put {
                    // The manifest committed first: the unlink must see that it needs the blob.
                    Ok(()) => {
                        assert!(
                            still_needed,
                            "blob {blob} reported unneeded while referenced"
                        );
                        assert_eq!(store.blob_link(REPO, &blob).await.expect("link"), Some(10));
                    }
                    // The unlink committed first: the manifest must not reference it.
                    Err(StorageError::BlobUnknown(d)) => {
                        assert_eq!(d, blob);
                        assert!(!still_needed);
                        assert!(
                            !store
                                .manifest_exists(REPO, &m.digest)
                                .await
                                .expect("exists")
                        );
                        // Pushed again once the blob is back (as a client would retry).
                        store.link_blob(REPO, &blob, 10).await.expect("relink");
                        store.put_manifest(m.clone()).await.expect("retry");
                    }
                    Err(e) => panic!("put: {e}"),
                }
                m
            }));
        }
        let mut pushed = Vec::new();
        for t in tasks {
            pushed.push(t.await.expect("task"));
        }
        // Every tag points at one of the manifests pushed with that tag.
        for tag in ["t0", "t1", "t2", "t3"] {
            let got = a
                .manifest_by_tag(REPO, tag)
                .await
                .expect("by tag")
                .expect("tag exists");
            assert!(
                pushed
                    .iter()
                    .any(|m| m.tag.as_deref() == Some(tag) && m.digest == got.digest)
            );
        }
        assert_eq!(
            b.list_tags(REPO, None, 100).await.expect("tags"),
            ["t0", "t1", "t2", "t3"]
        );

        // No lost update: 2 x 50 tag moves, one sequence per replica, interleaved; the tag
        // ends on the last manifest of one of the two sequences (whichever committed
        // last), never on an older one.
        let mut movers = Vec::new();
        for (r, store) in [a.clone(), b.clone()].into_iter().enumerate() {
            movers.push(tokio::spawn(async move {
                for i in 0..50usize {
                    let m = NewManifest {
                        tag: Some("race".into()),
                        ..pushed_manifest(r * 1000 + i)
                    };
                    store.put_manifest(m).await.expect("move");
                }
            }));
        }
        for m in movers {
            m.await.expect("mover");
        }
        let last = a
            .manifest_by_tag(REPO, "race")
            .await
            .expect("race")
            .expect("tag");
        let candidates = [pushed_manifest(49).digest, pushed_manifest(1049).digest];
        assert!(
            candidates.contains(&last.digest),
            "tag ended on {}",
            last.digest
        );

        // Deleting a manifest while another replica re-tags it leaves no dangling tag.
        let victim = pushed[0].clone();
        let (deleted, retagged) = tokio::join!(
            a.delete_manifest(REPO, &victim.digest),
            b.put_manifest(NewManifest {
                tag: Some("victim".into()),
                ..victim.clone()
            })
        );
        deleted.expect("delete");
        retagged.expect("retag");
        if let Some(m) = b.manifest_by_tag(REPO, "victim").await.expect("victim") {
            assert!(b.manifest_exists(REPO, &m.digest).await.expect("exists"));
        }
        let dangling: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tags t WHERE NOT EXISTS (
                 SELECT 1 FROM manifests m WHERE m.repository = t.repository AND m.digest = t.digest)",
        )
        .fetch_one(&a.pool)
        .await
        .expect("count");
        assert_eq!(dangling, 0);
    }

    /// A change that makes something garbage, committed while the collector is deciding on
    /// it (here a manifest delete releasing a blob, and a tag delete releasing a
    /// manifest, each in a transaction held open by hand), leaves its candidate behind:
    /// the collector's "still referenced, drop the candidate" must not drop a touch made
    /// after it looked. Dropping it leaked the blob/manifest for good (the S3 + PostgreSQL
    /// soak saw it about once in ten runs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_candidate_touched_while_the_collector_decides_is_kept() {
        use crate::lifecycle::{BlobVerdict, LifecycleStore, ManifestVerdict};
        let store = fresh().await;
        let repo = "touch/r";
        let blob = Digest::sha256(b"touched while deciding");
        store.link_blob(repo, &blob, 10).await.expect("link");
        let manifest = NewManifest {
            repository: repo.to_owned(),
            tag: Some("v1".into()),
            blobs: vec![blob.clone()],
            ..pushed_manifest(7)
        };
        store.put_manifest(manifest.clone()).await.expect("put");
        // Every candidate long past its grace period.
        sqlx::query("UPDATE gc_candidates SET since = 0")
            .execute(&store.pool)
            .await
            .expect("age");
        let candidate = |kind: &'static str, repository: &'static str, digest: String| {
            let pool = store.pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT since FROM gc_candidates WHERE kind = $1 AND repository = $2 AND digest = $3",
                )
                .bind(kind)
                .bind(repository)
                .bind(digest)
                .fetch_optional(&pool)
                .await
                .expect("candidate")
            }
        };
        let before = now() - 100;

        // The tag goes while the collector decides on the manifest it points at.
        let mut tag_delete = store.pool.begin().await.expect("begin");
        sqlx::query("DELETE FROM tags WHERE repository = $1 AND tag = 'v1'")
            .bind(repo)
            .execute(&mut *tag_delete)
            .await
            .expect("delete tag");
        let collector = {
            let (store, digest) = (store.clone(), manifest.digest.clone());
            tokio::spawn(async move { store.collect_manifest(repo, &digest, before, false).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        tag_delete.commit().await.expect("commit");
        let verdict = collector.await.expect("task").expect("collect");
        assert_eq!(verdict, ManifestVerdict::TooRecent);
        assert!(
            candidate("m", repo, manifest.digest.to_string())
                .await
                .is_some(),
            "the untagged manifest lost its candidate"
        );

        // The manifest goes while the collector decides on the blob it references.
        let mut manifest_delete = store.pool.begin().await.expect("begin");
        sqlx::query("DELETE FROM manifests WHERE repository = $1 AND digest = $2")
            .bind(repo)
            .bind(manifest.digest.to_string())
            .execute(&mut *manifest_delete)
            .await
            .expect("delete manifest");
        let collector = {
            let (store, digest) = (store.clone(), blob.clone());
            tokio::spawn(async move { store.tombstone_blob(&digest, before, false).await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        manifest_delete.commit().await.expect("commit");
        let verdict = collector.await.expect("task").expect("tombstone");
        assert_eq!(verdict, BlobVerdict::TooRecent);
        assert!(
            candidate("b", "", blob.to_string()).await.is_some(),
            "the released blob lost its candidate"
        );
    }

    /// Two replicas race the collector against pushes, many times over: replica A
    /// tombstones a blob (its grace period long over) while replica B commits a manifest
    /// referencing it, pins it for an upload, or mounts it. Whatever the interleaving,
    /// either the push's reference/pin/link wins and the blob is kept, or the tombstone
    /// wins and the push is refused: never both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn gc_never_tombstones_a_blob_a_concurrent_push_references() {
        use crate::lifecycle::{BlobVerdict, LifecycleStore};
        let url = PgCluster::shared().database().await;
        let mut options = PgOptions::new(url);
        options.max_connections = 4;
        let a = PgMetadata::open(&options).await.expect("a");
        let b = PgMetadata::open(&options).await.expect("b");
        let future = i64::MAX / 2;
        let (mut kept, mut tombstoned) = (0, 0);
        for i in 0..60usize {
            let blob = Digest::sha256(format!("race blob {i}").as_bytes());
            b.link_blob("gc/scratch", &blob, 10).await.expect("link");
            let content = format!("{{\"race\":{i}}}");
            let m = NewManifest {
                repository: "gc/app".to_owned(),
                digest: Digest::sha256(content.as_bytes()),
                media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
                content: content.into_bytes(),
                tag: Some(format!("t{i}")),
                blobs: vec![blob.clone()],
                children: Vec::new(),
                subject: None,
                artifact_type: None,
                annotations_json: None,
            };
            let upload = format!("u{i}");
            let (verdict, pushed) = tokio::join!(a.tombstone_blob(&blob, future, false), async {
                match i % 3 {
                    0 => b.put_manifest(m.clone()).await.map(|()| true),
                    1 => match b.pin_upload(&upload, &blob).await {
                        Ok(()) => Ok(true),
                        Err(StorageError::Conflict(_)) => Ok(false),
                        Err(e) => Err(e),
                    },
                    _ => b
                        .mount_blob(Some("gc/scratch"), "gc/app", &blob)
                        .await
                        .map(|size| size.is_some()),
                }
            });
            let verdict = verdict.expect("tombstone");
            let pushed = match pushed {
                Ok(p) => p,
                Err(StorageError::BlobUnknown(d)) if d == blob => false,
                Err(e) => panic!("push {i}: {e}"),
            };
            match verdict {
                BlobVerdict::Tombstoned => {
                    tombstoned += 1;
                    // A mount may link the blob before the collector's decision (nothing
                    // references it then: the link goes with the tombstone).
                    assert!(
                        !pushed || i % 3 == 2,
                        "round {i}: the blob was tombstoned while a push committed on it"
                    );
                    assert_eq!(a.blob_link("gc/app", &blob).await.expect("link"), None);
                    assert!(!b.manifest_exists("gc/app", &m.digest).await.expect("m"));
                    a.clear_tombstone(&blob).await.expect("clear");
                }
                BlobVerdict::Kept => {
                    kept += 1;
                    assert!(pushed, "round {i}: kept although the push was refused");
                }
                BlobVerdict::TooRecent => panic!("round {i}: too recent with a past cutoff"),
            }
        }
        assert_eq!(kept + tombstoned, 60);
    }

    /// One GC cycle at a time across replicas: a second lease waits for the first.
    #[tokio::test]
    async fn gc_leases_exclude_each_other_across_pools() {
        use crate::lifecycle::LifecycleStore;
        let url = PgCluster::shared().database().await;
        let a = PgMetadata::open(&PgOptions::new(url.clone()))
            .await
            .expect("a");
        let b = PgMetadata::open(&PgOptions::new(url)).await.expect("b");
        let lease = a.exclusive_gc().await.expect("first lease");
        let waiting = tokio::spawn(async move { b.exclusive_gc().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "a second cycle started during the first"
        );
        drop(lease);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the second lease follows the first")
            .expect("task")
            .expect("second lease");
    }

    fn pushed_manifest(i: usize) -> NewManifest {
        let content = format!("{{\"move\":{i}}}");
        crate::conformance::manifest("library/race", &content, None, &[], None, None)
    }

    #[tokio::test]
    async fn unreachable_database_is_unavailable_fast() {
        // Nothing listens on this port: open fails with Unavailable naming the database.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let mut options = PgOptions::new(format!("postgres://berth:secret@127.0.0.1:{port}/x"));
        options.acquire_timeout = Duration::from_secs(1);
        let started = std::time::Instant::now();
        let e = PgMetadata::open(&options)
            .await
            .expect_err("nothing listens");
        assert!(started.elapsed() < Duration::from_secs(10));
        let msg = e.to_string();
        assert!(matches!(e, StorageError::Unavailable(_)), "{e:?}");
        assert!(msg.contains("metadata database"), "{msg}");
        assert!(!msg.contains("secret"), "password leaked: {msg}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://berth:pw@db:5432/berth"),
            "postgres://berth:***@db:5432/berth"
        );
        assert_eq!(redact_url("postgres://db/berth"), "postgres://db/berth");
    }
}
