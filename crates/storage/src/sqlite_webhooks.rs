//! [`WebhookStore`] in the same SQLite database (and pools) as [`SqliteMetadata`].
//!
//! Endpoints hang off their project by a foreign key with `ON DELETE CASCADE`, and the
//! delivery log off its endpoint the same way; the log is trimmed to the newest entries
//! in the statement after each insert, in one transaction.

use async_trait::async_trait;
use sqlx::error::ErrorKind;

use crate::sqlite::SqliteMetadata;
use crate::webhooks::{
    Delivery, Webhook, WebhookEvent, WebhookStore, auth_from_column, events_from_column,
    format_from_column,
};
use crate::{StorageError, StorageResult};

/// The webhook tables (idempotent; run at open after the account tables).
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS webhooks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    project       TEXT    NOT NULL REFERENCES projects(name) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    url           TEXT    NOT NULL,
    events        TEXT    NOT NULL,
    format        TEXT    NOT NULL,
    auth          TEXT    NOT NULL,
    secret_sealed BLOB    NOT NULL,
    ca_pem        TEXT    NOT NULL,
    insecure      INTEGER NOT NULL CHECK (insecure IN (0, 1)),
    enabled       INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    created_at    INTEGER NOT NULL,
    UNIQUE (project, name)
);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id  INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    event       TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    status      INTEGER NOT NULL,
    latency_ms  INTEGER NOT NULL,
    error       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_hook ON webhook_deliveries(webhook_id, id);
"#;

type WebhookRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Vec<u8>,
    String,
    bool,
    bool,
    i64,
);
type DeliveryRow = (i64, i64, i64, String, String, i64, i64, i64, String);

/// The columns of a [`Webhook`], in [`WebhookRow`] order.
macro_rules! webhook_columns {
    () => {
        "id, project, name, url, events, format, auth, secret_sealed, ca_pem, insecure, \
         enabled, created_at"
    };
}

pub(crate) fn webhook(r: WebhookRow) -> StorageResult<Webhook> {
    Ok(Webhook {
        id: r.0,
        project: r.1,
        name: r.2,
        url: r.3,
        events: events_from_column(&r.4)?,
        format: format_from_column(&r.5)?,
        auth: auth_from_column(&r.6)?,
        secret_sealed: r.7,
        ca_pem: r.8,
        insecure: r.9,
        enabled: r.10,
        created_at: r.11,
    })
}

pub(crate) fn delivery(r: DeliveryRow) -> Delivery {
    Delivery {
        id: r.0,
        webhook_id: r.1,
        at: r.2,
        event: r.3,
        subject: r.4,
        attempt: u32::try_from(r.5).unwrap_or(0),
        status: u16::try_from(r.6).unwrap_or(0),
        latency_ms: u64::try_from(r.7).unwrap_or(0),
        error: r.8,
    }
}

#[async_trait]
impl WebhookStore for SqliteMetadata {
    async fn create_webhook(&self, w: &Webhook) -> StorageResult<i64> {
        let result = sqlx::query_scalar::<_, i64>(
            "INSERT INTO webhooks (project, name, url, events, format, auth, secret_sealed, \
             ca_pem, insecure, enabled, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&w.project)
        .bind(&w.name)
        .bind(&w.url)
        .bind(WebhookEvent::join(&w.events))
        .bind(w.format.as_str())
        .bind(w.auth.as_str())
        .bind(&w.secret_sealed)
        .bind(&w.ca_pem)
        .bind(w.insecure)
        .bind(w.enabled)
        .bind(w.created_at)
        .fetch_one(&self.writer)
        .await;
        match result {
            Ok(id) => Ok(id),
            Err(e) => Err(match e.as_database_error().map(|d| d.kind()) {
                Some(ErrorKind::UniqueViolation) => StorageError::AlreadyExists(format!(
                    "webhook {} of project {}",
                    w.name, w.project
                )),
                Some(ErrorKind::ForeignKeyViolation) => {
                    StorageError::NotFound(format!("project {}", w.project))
                }
                _ => e.into(),
            }),
        }
    }

    async fn webhook(&self, project: &str, name: &str) -> StorageResult<Option<Webhook>> {
        sqlx::query_as::<_, WebhookRow>(concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhooks WHERE project = ? AND name = ?"
        ))
        .bind(project)
        .bind(name)
        .fetch_optional(&self.reader)
        .await?
        .map(webhook)
        .transpose()
    }

    async fn webhooks(&self, project: &str) -> StorageResult<Vec<Webhook>> {
        sqlx::query_as::<_, WebhookRow>(concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhooks WHERE project = ? ORDER BY name"
        ))
        .bind(project)
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .map(webhook)
        .collect()
    }

    async fn update_webhook(&self, w: &Webhook) -> StorageResult<()> {
        let done = sqlx::query(
            "UPDATE webhooks SET url = ?, events = ?, format = ?, auth = ?, secret_sealed = ?, \
             ca_pem = ?, insecure = ?, enabled = ? WHERE project = ? AND name = ?",
        )
        .bind(&w.url)
        .bind(WebhookEvent::join(&w.events))
        .bind(w.format.as_str())
        .bind(w.auth.as_str())
        .bind(&w.secret_sealed)
        .bind(&w.ca_pem)
        .bind(w.insecure)
        .bind(w.enabled)
        .bind(&w.project)
        .bind(&w.name)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!(
                "webhook {} of project {}",
                w.name, w.project
            )));
        }
        Ok(())
    }

    async fn delete_webhook(&self, project: &str, name: &str) -> StorageResult<()> {
        let done = sqlx::query("DELETE FROM webhooks WHERE project = ? AND name = ?")
            .bind(project)
            .bind(name)
            .execute(&self.writer)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!(
                "webhook {name} of project {project}"
            )));
        }
        Ok(())
    }

    async fn record_delivery(&self, d: &Delivery, keep: u32) -> StorageResult<()> {
        let mut tx = self.writer.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO webhook_deliveries (webhook_id, at, event, subject, attempt, status, \
             latency_ms, error) \
             SELECT id, ?, ?, ?, ?, ?, ?, ? FROM webhooks WHERE id = ?",
        )
        .bind(d.at)
        .bind(&d.event)
        .bind(&d.subject)
        .bind(i64::from(d.attempt))
        .bind(i64::from(d.status))
        .bind(i64::try_from(d.latency_ms).unwrap_or(i64::MAX))
        .bind(&d.error)
        .bind(d.webhook_id)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() > 0 {
            sqlx::query(
                "DELETE FROM webhook_deliveries WHERE webhook_id = ? AND id <= \
                 (SELECT id FROM webhook_deliveries WHERE webhook_id = ? \
                  ORDER BY id DESC LIMIT 1 OFFSET ?)",
            )
            .bind(d.webhook_id)
            .bind(d.webhook_id)
            .bind(i64::from(keep))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn deliveries(&self, webhook_id: i64, limit: u32) -> StorageResult<Vec<Delivery>> {
        Ok(sqlx::query_as::<_, DeliveryRow>(
            "SELECT id, webhook_id, at, event, subject, attempt, status, latency_ms, error \
             FROM webhook_deliveries WHERE webhook_id = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(webhook_id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .map(delivery)
        .collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::sqlite::SqliteMetadata;
    use crate::webhooks::webhook_store_suite;

    #[tokio::test]
    async fn webhook_suite_in_memory_and_on_disk() {
        let store = SqliteMetadata::in_memory().await.expect("db");
        webhook_store_suite(&store, &store).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.db");
        let store = SqliteMetadata::open(&path).await.expect("open");
        webhook_store_suite(&store, &store).await;
        store.close().await;
        // The schema is created idempotently at every open.
        let again = SqliteMetadata::open(&path).await.expect("reopen");
        use crate::webhooks::WebhookStore;
        assert_eq!(again.webhooks("hooks-b").await.expect("list").len(), 1);
        again.close().await;
    }
}
