//! [`WebhookStore`] in PostgreSQL (migration `0007_webhooks.sql`), the same tables and
//! statements as [`crate::sqlite_webhooks`]. Every write is a single statement or one
//! short transaction; nothing needs an advisory lock (an endpoint's log is trimmed in the
//! transaction that appends to it, and concurrent trims only ever delete old rows).

use async_trait::async_trait;
use sqlx::error::ErrorKind;

use crate::postgres::PgMetadata;
use crate::webhooks::{
    Delivery, Webhook, WebhookEvent, WebhookStore, auth_from_column, events_from_column,
    format_from_column,
};
use crate::{StorageError, StorageResult};

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
type DeliveryRow = (i64, i64, i64, String, String, i32, i32, i64, String);

/// The columns of a [`Webhook`], in [`WebhookRow`] order.
macro_rules! webhook_columns {
    () => {
        "id, project, name, url, events, format, auth, secret_sealed, ca_pem, insecure, \
         enabled, created_at"
    };
}

fn webhook(r: WebhookRow) -> StorageResult<Webhook> {
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

fn delivery(r: DeliveryRow) -> Delivery {
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
impl WebhookStore for PgMetadata {
    async fn create_webhook(&self, w: &Webhook) -> StorageResult<i64> {
        let result = sqlx::query_scalar::<_, i64>(
            "INSERT INTO webhooks (project, name, url, events, format, auth, secret_sealed, \
             ca_pem, insecure, enabled, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
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
        .fetch_one(&self.pool)
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
            " FROM webhooks WHERE project = $1 AND name = $2"
        ))
        .bind(project)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(webhook)
        .transpose()
    }

    async fn webhooks(&self, project: &str) -> StorageResult<Vec<Webhook>> {
        sqlx::query_as::<_, WebhookRow>(concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhooks WHERE project = $1 ORDER BY name"
        ))
        .bind(project)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(webhook)
        .collect()
    }

    async fn update_webhook(&self, w: &Webhook) -> StorageResult<()> {
        let done = sqlx::query(
            "UPDATE webhooks SET url = $1, events = $2, format = $3, auth = $4, \
             secret_sealed = $5, ca_pem = $6, insecure = $7, enabled = $8 \
             WHERE project = $9 AND name = $10",
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
        .execute(&self.pool)
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
        let done = sqlx::query("DELETE FROM webhooks WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StorageError::NotFound(format!(
                "webhook {name} of project {project}"
            )));
        }
        Ok(())
    }

    async fn record_delivery(&self, d: &Delivery, keep: u32) -> StorageResult<()> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO webhook_deliveries (webhook_id, at, event, subject, attempt, status, \
             latency_ms, error) \
             SELECT id, $1, $2, $3, $4, $5, $6, $7 FROM webhooks WHERE id = $8",
        )
        .bind(d.at)
        .bind(&d.event)
        .bind(&d.subject)
        .bind(i32::try_from(d.attempt).unwrap_or(i32::MAX))
        .bind(i32::from(d.status))
        .bind(i64::try_from(d.latency_ms).unwrap_or(i64::MAX))
        .bind(&d.error)
        .bind(d.webhook_id)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() > 0 {
            sqlx::query(
                "DELETE FROM webhook_deliveries WHERE webhook_id = $1 AND id <= \
                 (SELECT id FROM webhook_deliveries WHERE webhook_id = $1 \
                  ORDER BY id DESC LIMIT 1 OFFSET $2)",
            )
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
             FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(webhook_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(delivery)
        .collect())
    }
}

#[cfg(test)]
mod tests {
    use crate::pg_fixture::PgCluster;
    use crate::postgres::{PgMetadata, PgOptions};
    use crate::webhooks::webhook_store_suite;

    #[tokio::test]
    async fn conformance_webhook_suite() {
        let url = PgCluster::shared().database().await;
        let store = PgMetadata::open(&PgOptions::new(url)).await.expect("open");
        webhook_store_suite(&store, &store).await;
    }
}
