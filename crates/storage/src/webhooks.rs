//! Webhook endpoints per project and their delivery log ([`WebhookStore`]).
//!
//! The store keeps what the server needs to deliver events (`berth_server::webhooks`):
//! the receiver's URL and trust (a CA bundle or the insecure flag), the events it wants,
//! the payload format, how requests are authenticated (an `Authorization` header value or
//! an HMAC-SHA256 key, held *sealed* by the server — the store never sees plaintext it
//! could log), and a bounded log of delivery attempts per endpoint.
//!
//! Invariants every backend keeps (checked by [`webhook_store_suite`]):
//! - an endpoint is named uniquely within its project (`AlreadyExists` otherwise) and
//!   belongs to an existing project (`NotFound`); deleting the project deletes its
//!   endpoints, deleting an endpoint deletes its delivery log;
//! - the delivery log keeps the newest `keep` entries per endpoint, listed newest first.

use async_trait::async_trait;

use crate::{StorageError, StorageResult};

/// What happened, as an endpoint subscribes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookEvent {
    /// A manifest was pushed (tag or digest).
    Push,
    /// A manifest was pulled (`GET`; blobs are not counted, as in Harbor).
    Pull,
    /// A manifest or tag was deleted.
    Delete,
    /// A push was refused by the project's storage quota.
    QuotaExceeded,
    /// A replication execution finished.
    Replication,
}

impl WebhookEvent {
    /// Every event, in a fixed order.
    pub const ALL: [WebhookEvent; 5] = [
        WebhookEvent::Push,
        WebhookEvent::Pull,
        WebhookEvent::Delete,
        WebhookEvent::QuotaExceeded,
        WebhookEvent::Replication,
    ];

    /// The name used in the CLI, the API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Push => "push",
            WebhookEvent::Pull => "pull",
            WebhookEvent::Delete => "delete",
            WebhookEvent::QuotaExceeded => "quota_exceeded",
            WebhookEvent::Replication => "replication",
        }
    }

    /// Parse one name (see [`WebhookEvent::as_str`]).
    pub fn parse(s: &str) -> Result<WebhookEvent, String> {
        WebhookEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown webhook event {s:?}; use one or more of push, pull, delete, quota_exceeded, replication"
                )
            })
    }

    /// Parse a comma-separated list (duplicates removed, sorted).
    pub fn parse_list(s: &str) -> Result<Vec<WebhookEvent>, String> {
        let mut events = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(WebhookEvent::parse)
            .collect::<Result<Vec<_>, _>>()?;
        events.sort();
        events.dedup();
        if events.is_empty() {
            return Err("a webhook needs at least one event (push, pull, delete, quota_exceeded, replication)".into());
        }
        Ok(events)
    }

    /// The comma-separated form of `events`.
    pub fn join(events: &[WebhookEvent]) -> String {
        events
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The payload format an endpoint receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFormat {
    /// Harbor's JSON (`type`, `occur_at`, `operator`, `event_data`), so existing Harbor
    /// receivers work unchanged.
    Harbor,
    /// CloudEvents 1.0, structured JSON mode (`application/cloudevents+json`).
    CloudEvents,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Harbor => "harbor",
            WebhookFormat::CloudEvents => "cloudevents",
        }
    }

    pub fn parse(s: &str) -> Result<WebhookFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "harbor" | "default" => Ok(WebhookFormat::Harbor),
            "cloudevents" => Ok(WebhookFormat::CloudEvents),
            _ => Err(format!(
                "unknown webhook format {s:?}; use harbor or cloudevents"
            )),
        }
    }
}

/// How deliveries are authenticated to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookAuth {
    /// Nothing.
    None,
    /// The secret is sent as the `Authorization` header value.
    Header,
    /// The secret is the key of an HMAC-SHA256 of the body, sent as
    /// `X-Berth-Signature-256: sha256=<hex>`.
    Hmac,
}

impl WebhookAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookAuth::None => "none",
            WebhookAuth::Header => "header",
            WebhookAuth::Hmac => "hmac",
        }
    }

    pub fn parse(s: &str) -> Result<WebhookAuth, String> {
        match s {
            "none" => Ok(WebhookAuth::None),
            "header" => Ok(WebhookAuth::Header),
            "hmac" => Ok(WebhookAuth::Hmac),
            _ => Err(format!(
                "unknown webhook auth {s:?}; use none, header or hmac"
            )),
        }
    }
}

/// One endpoint of a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Assigned by the store ([`WebhookStore::create_webhook`]); ignored when creating.
    pub id: i64,
    pub project: String,
    /// Unique within the project: `[a-z0-9][a-z0-9._-]{0,63}`.
    pub name: String,
    /// `https://…` (or `http://…`).
    pub url: String,
    /// What it wants to hear about (sorted, not empty).
    pub events: Vec<WebhookEvent>,
    pub format: WebhookFormat,
    pub auth: WebhookAuth,
    /// The sealed secret (header value or HMAC key); empty when `auth` is `None`.
    pub secret_sealed: Vec<u8>,
    /// Extra CA certificates (PEM) to trust for the receiver; "" = system roots only.
    pub ca_pem: String,
    /// Accept any certificate (self-signed receivers without a CA at hand).
    pub insecure: bool,
    pub enabled: bool,
    pub created_at: i64,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Assigned by the store; ignored when recording.
    pub id: i64,
    pub webhook_id: i64,
    /// Unix seconds when the attempt started.
    pub at: i64,
    /// The event's name ([`WebhookEvent::as_str`], or `test`).
    pub event: String,
    /// The repository (or other subject) the event was about.
    pub subject: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The HTTP status, 0 when none came (connection refused, timeout).
    pub status: u16,
    pub latency_ms: u64,
    /// "" on success; otherwise what went wrong.
    pub error: String,
}

/// Webhook endpoints and their delivery log.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Store a new endpoint; returns its id. `AlreadyExists` if the project has one of this
    /// name, `NotFound` if the project does not exist.
    async fn create_webhook(&self, w: &Webhook) -> StorageResult<i64>;
    /// The endpoint `name` of `project`.
    async fn webhook(&self, project: &str, name: &str) -> StorageResult<Option<Webhook>>;
    /// Every endpoint of `project`, by name.
    async fn webhooks(&self, project: &str) -> StorageResult<Vec<Webhook>>;
    /// Replace everything but the id, project, name and creation time of the endpoint
    /// `w.project`/`w.name`; `NotFound` if missing.
    async fn update_webhook(&self, w: &Webhook) -> StorageResult<()>;
    /// Delete an endpoint and its delivery log; `NotFound` if missing.
    async fn delete_webhook(&self, project: &str, name: &str) -> StorageResult<()>;
    /// Append one attempt to the log of `d.webhook_id`, keeping only its newest `keep`
    /// entries. Recording for an endpoint deleted meanwhile is not an error (nothing is kept).
    async fn record_delivery(&self, d: &Delivery, keep: u32) -> StorageResult<()>;
    /// The newest `limit` attempts of an endpoint, newest first.
    async fn deliveries(&self, webhook_id: i64, limit: u32) -> StorageResult<Vec<Delivery>>;
}

/// The comma-separated events column back into a list.
pub(crate) fn events_from_column(s: &str) -> StorageResult<Vec<WebhookEvent>> {
    WebhookEvent::parse_list(s)
        .map_err(|e| StorageError::Database(format!("invalid events in database: {e}")))
}

pub(crate) fn format_from_column(s: &str) -> StorageResult<WebhookFormat> {
    WebhookFormat::parse(s)
        .map_err(|e| StorageError::Database(format!("invalid format in database: {e}")))
}

pub(crate) fn auth_from_column(s: &str) -> StorageResult<WebhookAuth> {
    WebhookAuth::parse(s)
        .map_err(|e| StorageError::Database(format!("invalid auth in database: {e}")))
}

/// The conformance suite every [`WebhookStore`] backend runs, on a store that also keeps
/// the projects (`create_project` is called through `make_project`).
pub async fn webhook_store_suite(store: &dyn WebhookStore, accounts: &dyn crate::AccountStore) {
    use crate::accounts::Project;
    for name in ["hooks-a", "hooks-b"] {
        accounts
            .create_project(&Project {
                name: name.into(),
                public: false,
                description: String::new(),
                created_at: 1,
            })
            .await
            .expect("create project");
    }
    assert!(store.webhooks("hooks-a").await.expect("list").is_empty());
    let base = Webhook {
        id: 0,
        project: "hooks-a".into(),
        name: "ci".into(),
        url: "https://ci.example/hook".into(),
        events: vec![WebhookEvent::Push, WebhookEvent::Delete],
        format: WebhookFormat::Harbor,
        auth: WebhookAuth::Hmac,
        secret_sealed: vec![0, 1, 2, 255],
        ca_pem: "-----BEGIN CERTIFICATE-----\n…\n".into(),
        insecure: false,
        enabled: true,
        created_at: 1000,
    };
    let id = store.create_webhook(&base).await.expect("create");
    let got = store
        .webhook("hooks-a", "ci")
        .await
        .expect("get")
        .expect("created webhook is found");
    assert_eq!(got, Webhook { id, ..base.clone() }, "round trip");
    // Same name in the same project: refused; in another project: fine.
    let e = store.create_webhook(&base).await.expect_err("duplicate");
    assert!(matches!(e, StorageError::AlreadyExists(_)), "{e:?}");
    let other = Webhook {
        project: "hooks-b".into(),
        events: vec![WebhookEvent::Pull],
        format: WebhookFormat::CloudEvents,
        auth: WebhookAuth::None,
        secret_sealed: vec![],
        ..base.clone()
    };
    let other_id = store
        .create_webhook(&other)
        .await
        .expect("same name elsewhere");
    assert_ne!(id, other_id);
    let missing = Webhook {
        project: "no-such-project".into(),
        ..base.clone()
    };
    let e = store
        .create_webhook(&missing)
        .await
        .expect_err("missing project");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    // A second endpoint; listing is by name and per project.
    let second = Webhook {
        name: "alerts".into(),
        events: vec![WebhookEvent::QuotaExceeded, WebhookEvent::Replication],
        ..base.clone()
    };
    let second_id = store.create_webhook(&second).await.expect("second");
    let names: Vec<String> = store
        .webhooks("hooks-a")
        .await
        .expect("list")
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["alerts", "ci"]);
    assert_eq!(
        store.webhooks("hooks-b").await.expect("list b"),
        vec![Webhook {
            id: other_id,
            ..other.clone()
        }]
    );
    // Update.
    let changed = Webhook {
        id,
        url: "https://ci2.example/hook".into(),
        events: vec![WebhookEvent::Pull],
        format: WebhookFormat::CloudEvents,
        auth: WebhookAuth::Header,
        secret_sealed: vec![9; 40],
        ca_pem: String::new(),
        insecure: true,
        enabled: false,
        created_at: 5, // not changed by an update
        ..base.clone()
    };
    store.update_webhook(&changed).await.expect("update");
    assert_eq!(
        store.webhook("hooks-a", "ci").await.expect("get"),
        Some(Webhook {
            created_at: 1000,
            ..changed.clone()
        })
    );
    let e = store
        .update_webhook(&Webhook {
            name: "nope".into(),
            ..changed.clone()
        })
        .await
        .expect_err("update missing");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    // Delivery log: newest first, trimmed to `keep`.
    for i in 0..5u32 {
        store
            .record_delivery(
                &Delivery {
                    id: 0,
                    webhook_id: id,
                    at: 2000 + i64::from(i),
                    event: "push".into(),
                    subject: "hooks-a/app".into(),
                    attempt: i + 1,
                    status: if i == 4 { 200 } else { 500 },
                    latency_ms: u64::from(i) * 10,
                    error: if i == 4 {
                        String::new()
                    } else {
                        format!("HTTP 500 (try {i})")
                    },
                },
                3,
            )
            .await
            .expect("record");
    }
    store
        .record_delivery(
            &Delivery {
                id: 0,
                webhook_id: second_id,
                at: 3000,
                event: "quota_exceeded".into(),
                subject: "hooks-a/big".into(),
                attempt: 1,
                status: 0,
                latency_ms: 5000,
                error: "timed out".into(),
            },
            3,
        )
        .await
        .expect("record second");
    let log = store.deliveries(id, 10).await.expect("deliveries");
    assert_eq!(
        log.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        [5, 4, 3],
        "newest first, trimmed to 3"
    );
    assert_eq!(log[0].status, 200);
    assert_eq!(log[0].error, "");
    assert_eq!(log[1].error, "HTTP 500 (try 3)");
    assert_eq!(log[0].subject, "hooks-a/app");
    assert_eq!(log[2].latency_ms, 20);
    assert_eq!(store.deliveries(id, 1).await.expect("limit").len(), 1);
    assert_eq!(
        store.deliveries(second_id, 10).await.expect("second log")[0].error,
        "timed out"
    );
    // Recording for a vanished endpoint is harmless.
    store
        .record_delivery(
            &Delivery {
                webhook_id: 987_654,
                ..log[0].clone()
            },
            3,
        )
        .await
        .expect("record for a missing endpoint");
    // Delete: the endpoint and its log.
    store.delete_webhook("hooks-a", "ci").await.expect("delete");
    assert_eq!(store.webhook("hooks-a", "ci").await.expect("get"), None);
    assert!(store.deliveries(id, 10).await.expect("log").is_empty());
    let e = store
        .delete_webhook("hooks-a", "ci")
        .await
        .expect_err("delete twice");
    assert!(matches!(e, StorageError::NotFound(_)), "{e:?}");
    // Deleting the project deletes its endpoints (and their logs).
    accounts
        .delete_project("hooks-a")
        .await
        .expect("delete project");
    assert!(store.webhooks("hooks-a").await.expect("list").is_empty());
    assert!(
        store
            .deliveries(second_id, 10)
            .await
            .expect("log")
            .is_empty()
    );
    assert_eq!(store.webhooks("hooks-b").await.expect("b").len(), 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lists_parse_and_join() {
        let e = WebhookEvent::parse_list("delete, push,push").unwrap();
        assert_eq!(e, [WebhookEvent::Push, WebhookEvent::Delete]);
        assert_eq!(WebhookEvent::join(&e), "push,delete");
        assert!(WebhookEvent::parse_list("").is_err());
        let err = WebhookEvent::parse_list("push,scan").unwrap_err();
        assert!(err.contains("\"scan\""), "{err}");
        for ev in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(ev.as_str()), Ok(ev));
        }
        assert_eq!(
            WebhookFormat::parse("CloudEvents"),
            Ok(WebhookFormat::CloudEvents)
        );
        assert!(WebhookAuth::parse("basic").is_err());
    }
}
