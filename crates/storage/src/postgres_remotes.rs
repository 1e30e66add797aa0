//! [`RemoteStore`] in the same PostgreSQL database (and pool) as [`PgMetadata`]: the
//! tables of [`crate::sqlite_remotes`] (migration `0006_remotes.sql`), the same statements.

use async_trait::async_trait;
use sqlx::error::ErrorKind;

use crate::postgres::PgMetadata;
use crate::remotes::{RegistryHealth, RemoteRegistry, RemoteStore};
use crate::sqlite_remotes::{in_use, registry_from_row};
use crate::{StorageError, StorageResult};

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

fn violation(e: &sqlx::Error) -> Option<ErrorKind> {
    e.as_database_error().map(|d| d.kind())
}

macro_rules! columns {
    () => {
        "name, url, username, secret_sealed, ca_pem, insecure, description, created_at, updated_at"
    };
}

#[async_trait]
impl RemoteStore for PgMetadata {
    async fn create_registry(&self, r: &RemoteRegistry) -> StorageResult<()> {
        let result = sqlx::query(concat!(
            "INSERT INTO remote_registries (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
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
        .execute(&self.pool)
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
            " FROM remote_registries WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(registry_from_row))
    }

    async fn list_registries(&self) -> StorageResult<Vec<RemoteRegistry>> {
        let rows: Vec<RegistryRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM remote_registries ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(registry_from_row).collect())
    }

    async fn update_registry(&self, r: &RemoteRegistry) -> StorageResult<()> {
        let done = sqlx::query(
            "UPDATE remote_registries SET url = $1, username = $2, secret_sealed = $3, ca_pem = $4, \
             insecure = $5, description = $6, updated_at = $7 WHERE name = $8",
        )
        .bind(&r.url)
        .bind(&r.username)
        .bind(&r.secret_sealed)
        .bind(&r.ca_pem)
        .bind(r.insecure)
        .bind(&r.description)
        .bind(r.updated_at)
        .bind(&r.name)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!("registry {}", r.name)));
        }
        Ok(())
    }

    async fn delete_registry(&self, name: &str) -> StorageResult<()> {
        match sqlx::query("DELETE FROM remote_registries WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
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
            "INSERT INTO registry_health (name, checked_at, ok, message) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET checked_at = excluded.checked_at, \
             ok = excluded.ok, message = excluded.message",
        )
        .bind(&h.name)
        .bind(h.checked_at)
        .bind(h.ok)
        .bind(&h.message)
        .execute(&self.pool)
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
            "SELECT name, checked_at, ok, message FROM registry_health WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
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
                sqlx::query("DELETE FROM project_proxies WHERE project = $1")
                    .bind(project)
                    .execute(&self.pool)
                    .await
            }
            Some(registry) => {
                sqlx::query(
                    "INSERT INTO project_proxies (project, registry) VALUES ($1, $2) \
                     ON CONFLICT (project) DO UPDATE SET registry = excluded.registry",
                )
                .bind(project)
                .bind(registry)
                .execute(&self.pool)
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
            sqlx::query_scalar("SELECT registry FROM project_proxies WHERE project = $1")
                .bind(project)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn proxy_projects(&self) -> StorageResult<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT project, registry FROM project_proxies ORDER BY project")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
