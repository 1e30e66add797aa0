//! [`RemoteStore`] in the same SQLite database (and pools) as [`SqliteMetadata`].
//!
//! A proxy project hangs off its project (`ON DELETE CASCADE`) and holds on to its
//! registry (`ON DELETE RESTRICT`): a registry in use cannot be deleted, which is reported
//! as `Conflict`.

use async_trait::async_trait;
use sqlx::error::ErrorKind;

use crate::remotes::{RegistryHealth, RemoteRegistry, RemoteStore};
use crate::sqlite::SqliteMetadata;
use crate::{StorageError, StorageResult};

/// The tables (idempotent; run at open after the access-control schema).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS remote_registries (
    name          TEXT    NOT NULL PRIMARY KEY COLLATE BINARY,
    url           TEXT    NOT NULL,
    username      TEXT    NOT NULL,
    secret_sealed BLOB    NOT NULL,
    ca_pem        TEXT    NOT NULL,
    insecure      INTEGER NOT NULL CHECK (insecure IN (0, 1)),
    description   TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS registry_health (
    name       TEXT    NOT NULL PRIMARY KEY REFERENCES remote_registries(name) ON DELETE CASCADE,
    checked_at INTEGER NOT NULL,
    ok         INTEGER NOT NULL CHECK (ok IN (0, 1)),
    message    TEXT    NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS project_proxies (
    project  TEXT NOT NULL PRIMARY KEY REFERENCES projects(name) ON DELETE CASCADE,
    registry TEXT NOT NULL REFERENCES remote_registries(name) ON DELETE RESTRICT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS project_proxies_by_registry ON project_proxies(registry);
"#;

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

pub(crate) fn registry_from_row(
    (name, url, username, secret_sealed, ca_pem, insecure, description, created_at, updated_at): RegistryRow,
) -> RemoteRegistry {
    RemoteRegistry {
        name,
        url,
        username,
        secret_sealed,
        ca_pem,
        insecure,
        description,
        created_at,
        updated_at,
    }
}

fn violation(e: &sqlx::Error) -> Option<ErrorKind> {
    let db = e.as_database_error()?;
    // `ON DELETE RESTRICT` fails with SQLITE_CONSTRAINT_TRIGGER (1811), which sqlx does
    // not classify; its message is the foreign-key one.
    if db.code().as_deref() == Some("1811") && db.message().contains("FOREIGN KEY") {
        return Some(ErrorKind::ForeignKeyViolation);
    }
    Some(db.kind())
}

/// A failed DELETE of a registry because a row still references it.
pub(crate) fn in_use(name: &str) -> StorageError {
    StorageError::Conflict(format!(
        "registry {name} is still used (by a proxy-cache project or a replication rule); \
         change or delete those first"
    ))
}

macro_rules! columns {
    () => {
        "name, url, username, secret_sealed, ca_pem, insecure, description, created_at, updated_at"
    };
}

#[async_trait]
impl RemoteStore for SqliteMetadata {
    async fn create_registry(&self, r: &RemoteRegistry) -> StorageResult<()> {
        let result = sqlx::query(concat!(
            "INSERT INTO remote_registries (",
            columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&r.name)
        .bind(&r.url)
        .bind(&r.username)
        .bind(&r.secret_sealed)
        .bind(&r.ca_pem)
        .bind(r.insecure)
        .bind(&r.description)
        .bind(r.created_at)
        .bind(r.updated_at)
        .execute(&self.writer)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if violation(&e) == Some(ErrorKind::UniqueViolation) => {
                Err(StorageError::AlreadyExists(format!("registry {}", r.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn registry(&self, name: &str) -> StorageResult<Option<RemoteRegistry>> {
        let row: Option<RegistryRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM remote_registries WHERE name = ?"
        ))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(registry_from_row))
    }

    async fn list_registries(&self) -> StorageResult<Vec<RemoteRegistry>> {
        let rows: Vec<RegistryRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM remote_registries ORDER BY name"
        ))
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(registry_from_row).collect())
    }

    async fn update_registry(&self, r: &RemoteRegistry) -> StorageResult<()> {
        let done = sqlx::query(
            "UPDATE remote_registries SET url = ?, username = ?, secret_sealed = ?, ca_pem = ?, \
             insecure = ?, description = ?, updated_at = ? WHERE name = ?",
        )
        .bind(&r.url)
        .bind(&r.username)
        .bind(&r.secret_sealed)
        .bind(&r.ca_pem)
        .bind(r.insecure)
        .bind(&r.description)
        .bind(r.updated_at)
        .bind(&r.name)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("registry {}", r.name)));
        }
        Ok(())
    }

    async fn delete_registry(&self, name: &str) -> StorageResult<()> {
        match sqlx::query("DELETE FROM remote_registries WHERE name = ?")
            .bind(name)
            .execute(&self.writer)
            .await
        {
            Ok(done) if done.rows_affected() == 0 => {
                Err(StorageError::NotFound(format!("registry {name}")))
            }
            Ok(_) => Ok(()),
            Err(e) if violation(&e) == Some(ErrorKind::ForeignKeyViolation) => Err(in_use(name)),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_registry_health(&self, h: &RegistryHealth) -> StorageResult<()> {
        let result = sqlx::query(
            "INSERT INTO registry_health (name, checked_at, ok, message) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET checked_at = excluded.checked_at, \
             ok = excluded.ok, message = excluded.message",
        )
        .bind(&h.name)
        .bind(h.checked_at)
        .bind(h.ok)
        .bind(&h.message)
        .execute(&self.writer)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if violation(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                Err(StorageError::NotFound(format!("registry {}", h.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn registry_health(&self, name: &str) -> StorageResult<Option<RegistryHealth>> {
        let row: Option<(String, i64, bool, String)> = sqlx::query_as(
            "SELECT name, checked_at, ok, message FROM registry_health WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.map(|(name, checked_at, ok, message)| RegistryHealth {
            name,
            checked_at,
            ok,
            message,
        }))
    }

    async fn set_project_proxy(&self, project: &str, registry: Option<&str>) -> StorageResult<()> {
        let result = match registry {
            None => {
                sqlx::query("DELETE FROM project_proxies WHERE project = ?")
                    .bind(project)
                    .execute(&self.writer)
                    .await
            }
            Some(registry) => {
                sqlx::query(
                    "INSERT INTO project_proxies (project, registry) VALUES (?, ?) \
                     ON CONFLICT (project) DO UPDATE SET registry = excluded.registry",
                )
                .bind(project)
                .bind(registry)
                .execute(&self.writer)
                .await
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if violation(&e) == Some(ErrorKind::ForeignKeyViolation) => {
                Err(StorageError::NotFound(format!(
                    "project {project} or registry {}",
                    registry.unwrap_or_default()
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn project_proxy(&self, project: &str) -> StorageResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT registry FROM project_proxies WHERE project = ?")
                .bind(project)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn proxy_projects(&self) -> StorageResult<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT project, registry FROM project_proxies ORDER BY project")
                .fetch_all(&self.reader)
                .await?,
        )
    }
}
