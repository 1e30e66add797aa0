//! Webhooks: tell receivers (CI, chat, deployment systems) that an image was pushed,
//! pulled, deleted, refused by a quota, or replicated.
//!
//! - **Publishing never waits.** Handlers call [`Webhooks::publish`] once (manifest PUT =
//!   push, manifest GET = pull — manifests only, as Harbor counts pulls —, DELETE =
//!   delete, quota refusal = quota exceeded; replication calls it when an execution
//!   finishes). It is a `try_send` into a bounded queue: when the queue is full the event
//!   is dropped and counted (per project, shown in the console and as
//!   `berth_webhook_events_dropped_total`), so a slow or dead receiver never slows a push
//!   or a pull.
//! - **Dispatch** (one task) matches each event with the enabled endpoints *of the event's
//!   project* that subscribe to it (the list is cached for `cache_ms`, and dropped at once
//!   by every change made through this server), and hands it to the endpoint's worker
//!   through another bounded queue (full: dropped and counted).
//! - **Delivery**: each endpoint has one worker running at most `concurrency` deliveries
//!   at once; a delivery is an HTTPS POST with a timeout, retried with exponential backoff
//!   (`backoff_ms`, doubling, capped at `max_backoff_ms`) up to `max_attempts` times. Every
//!   attempt is written to the endpoint's delivery log (time, event, status, latency,
//!   attempt, error), of which the newest `log_keep` entries are kept.
//! - **Payloads**: Harbor's JSON (`type`, `occur_at`, `operator`, `event_data` with
//!   `resources` and `repository`, as Harbor 2.x sends them, so Harbor receivers work
//!   unchanged), or CloudEvents 1.0 in structured mode (`application/cloudevents+json`,
//!   with Harbor's type names such as `harbor.artifact.pushed` and the same `data`).
//! - **Authentication**: an `Authorization` header value, or an HMAC-SHA256 of the exact
//!   body bytes with the endpoint's secret, sent as `X-Berth-Signature-256: sha256=<hex>`.
//!   Every request also carries `X-Berth-Event` and `X-Berth-Delivery` (one id for all
//!   attempts of one delivery, so receivers can drop duplicates).
//! - **Secrets** are stored sealed with the deployment's key (AES-256-GCM, the registries'
//!   [`crate::remotes::Sealer`]: `BERTH_SECRET_KEY` or `DATA/secret.key`) and never shown
//!   or logged again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_storage::{
    AccountStore, Delivery, StorageError, Webhook, WebhookAuth, WebhookEvent, WebhookFormat,
    WebhookStore,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::admin::{self, bad_request};
use crate::auth::Caller;
use crate::error::ApiResult;

/// The signature header of endpoints with `auth = hmac`.
pub const SIGNATURE_HEADER: &str = "X-Berth-Signature-256";
/// Most endpoints one project may have.
pub const MAX_WEBHOOKS_PER_PROJECT: usize = 20;
/// Longest URL accepted.
const MAX_URL: usize = 2048;
/// Longest secret accepted.
const MAX_SECRET: usize = 4096;
/// Largest CA bundle accepted.
const MAX_CA_PEM: usize = 64 * 1024;
/// How much of a failing receiver's answer is kept in the delivery log.
const MAX_ERROR_BODY: usize = 200;

/// `[webhooks]`: queue sizes, timeouts and retries of webhook delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Events waiting for dispatch; more are dropped (and counted).
    pub queue: usize,
    /// Deliveries waiting per endpoint; more are dropped (and counted).
    pub endpoint_queue: usize,
    /// Deliveries in flight per endpoint.
    pub concurrency: usize,
    /// Timeout of one delivery attempt (connect, send, answer), in milliseconds.
    pub timeout_ms: u64,
    /// Attempts per delivery (the first one included).
    pub max_attempts: u32,
    /// Wait before the first retry, in milliseconds; doubled for each further retry.
    pub backoff_ms: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// Delivery-log entries kept per endpoint.
    pub log_keep: u32,
    /// How long a project's endpoint list is reused before it is read again, in
    /// milliseconds (changes made through this server apply at once; changes made by
    /// another replica or the CLI within this time).
    pub cache_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            queue: 4096,
            endpoint_queue: 256,
            concurrency: 4,
            timeout_ms: 10_000,
            max_attempts: 5,
            backoff_ms: 2_000,
            max_backoff_ms: 300_000,
            log_keep: 200,
            cache_ms: 2_000,
        }
    }
}

/// Something that happened, as handlers publish it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: WebhookEvent,
    /// The project whose endpoints hear about it (and only those).
    pub project: String,
    /// The full repository name (`project/…`); "" for events about no repository.
    pub repository: String,
    /// The manifest's digest, when known.
    pub digest: String,
    /// The tag, "" when the manifest was addressed by digest.
    pub tag: String,
    /// Who did it (user or robot name).
    pub operator: String,
    /// Unix seconds.
    pub occur_at: i64,
    /// `host[:port]` clients reach the registry at (for `resource_url`).
    pub host: String,
    /// What was refused (quota exceeded), shown as Harbor's `custom_attributes.Details`.
    pub detail: String,
    /// For replication: Harbor's `event_data.replication` object (see
    /// `goharbor/harbor` `src/pkg/notifier/model/event.go`, `Replication`).
    pub replication: Option<Value>,
}

impl Event {
    /// An event about `repository` (`project/…`) now.
    pub fn new(kind: WebhookEvent, repository: &str, operator: &str, host: &str) -> Event {
        Event {
            kind,
            project: repository
                .split_once('/')
                .map_or(repository, |(p, _)| p)
                .to_owned(),
            repository: repository.to_owned(),
            digest: String::new(),
            tag: String::new(),
            operator: operator.to_owned(),
            occur_at: admin::now(),
            host: host.to_owned(),
            detail: String::new(),
            replication: None,
        }
    }

    /// "Replication finished" for the endpoints of `project` (the project replicated from
    /// or into). `replication` is Harbor's `event_data.replication` object: e.g.
    /// `{"harbor_hostname", "job_status": "Success"|"Failed", "description",
    /// "trigger_type": "MANUAL"|"SCHEDULE"|"EVENT_BASED", "policy_creator",
    /// "execution_timestamp", "src_resource": {"registry_type", "endpoint", "namespace"},
    /// "dest_resource": {…}, "successful_artifact": [{"type", "status", "name_tag"}],
    /// "failed_artifact": [{…, "fail_reason"}]}` (see goharbor/harbor
    /// `src/pkg/notifier/model/event.go`). Publish it with [`Webhooks::publish`].
    pub fn replication(project: &str, operator: &str, replication: Value) -> Event {
        let mut e = Event::new(WebhookEvent::Replication, "", operator, "");
        e.project = project.to_owned();
        e.replication = Some(replication);
        e
    }

    /// The same event with a digest and a tag ("" when none).
    pub fn manifest(mut self, digest: &str, tag: &str) -> Event {
        self.digest = digest.to_owned();
        self.tag = tag.to_owned();
        self
    }

    /// Harbor's event type.
    pub fn harbor_type(&self) -> &'static str {
        match self.kind {
            WebhookEvent::Push => "PUSH_ARTIFACT",
            WebhookEvent::Pull => "PULL_ARTIFACT",
            WebhookEvent::Delete => "DELETE_ARTIFACT",
            WebhookEvent::QuotaExceeded => "QUOTA_EXCEED",
            WebhookEvent::Replication => "REPLICATION",
        }
    }

    /// The CloudEvents `type` (Harbor's names, so receivers written for Harbor match).
    pub fn cloudevents_type(&self) -> &'static str {
        match self.kind {
            WebhookEvent::Push => "harbor.artifact.pushed",
            WebhookEvent::Pull => "harbor.artifact.pulled",
            WebhookEvent::Delete => "harbor.artifact.deleted",
            WebhookEvent::QuotaExceeded => "harbor.quota.exceeded",
            WebhookEvent::Replication => "harbor.replication.status.changed",
        }
    }

    /// Harbor's `event_data`.
    pub fn event_data(&self, public: bool) -> Value {
        let mut data = serde_json::Map::new();
        if !self.repository.is_empty() {
            let reference = if self.tag.is_empty() {
                &self.digest
            } else {
                &self.tag
            };
            let mut resource = serde_json::Map::new();
            if !self.digest.is_empty() {
                resource.insert("digest".into(), json!(self.digest));
            }
            resource.insert("tag".into(), json!(reference));
            if self.kind != WebhookEvent::QuotaExceeded && !reference.is_empty() {
                let sep = if reference.contains(':') { '@' } else { ':' };
                resource.insert(
                    "resource_url".into(),
                    json!(format!("{}/{}{sep}{reference}", self.host, self.repository)),
                );
            }
            if self.kind != WebhookEvent::QuotaExceeded || !reference.is_empty() {
                data.insert("resources".into(), json!([resource]));
            }
            let name = self
                .repository
                .split_once('/')
                .map_or(self.repository.as_str(), |(_, n)| n);
            data.insert(
                "repository".into(),
                json!({
                    "name": name,
                    "namespace": self.project,
                    "repo_full_name": self.repository,
                    "repo_type": if public { "public" } else { "private" },
                }),
            );
        }
        if let Some(r) = &self.replication {
            data.insert("replication".into(), r.clone());
        }
        if !self.detail.is_empty() {
            data.insert(
                "custom_attributes".into(),
                json!({ "Details": self.detail }),
            );
        }
        Value::Object(data)
    }

    /// The request body and its content type for `format`.
    pub fn body(
        &self,
        format: WebhookFormat,
        hook_name: &str,
        public: bool,
    ) -> (Vec<u8>, &'static str) {
        let data = self.event_data(public);
        match format {
            WebhookFormat::Harbor => {
                let v = json!({
                    "type": self.harbor_type(),
                    "occur_at": self.occur_at,
                    "operator": self.operator,
                    "event_data": data,
                });
                (v.to_string().into_bytes(), "application/json")
            }
            WebhookFormat::CloudEvents => {
                let v = json!({
                    "specversion": "1.0",
                    "id": uuid::Uuid::new_v4().to_string(),
                    "source": format!("/projects/{}/webhook/policies/{hook_name}", self.project),
                    "type": self.cloudevents_type(),
                    "datacontenttype": "application/json",
                    "time": crate::token::rfc3339(self.occur_at.max(0) as u64),
                    "operator": self.operator,
                    "data": data,
                });
                (v.to_string().into_bytes(), "application/cloudevents+json")
            }
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256(`key`, `body`).
pub fn signature(key: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `host[:port]` clients reach the registry at, as the token realm names it (the external
/// URL when configured, else the request's authority or `Host`, also over HTTP/2).
fn request_host(ctx: &crate::routes::Ctx) -> String {
    let realm = &ctx.challenge.realm;
    let rest = realm.split_once("://").map_or(realm.as_str(), |(_, r)| r);
    rest.split('/').next().unwrap_or_default().to_owned()
}

/// Publish a manifest event from a handler: `reference` is the tag or digest the client
/// used, `digest` the manifest's digest when known.
pub(crate) fn publish_manifest(
    ctx: &crate::routes::Ctx,
    kind: WebhookEvent,
    repository: &str,
    digest: Option<&berth_proto::Digest>,
    reference: &str,
) {
    let digest = digest.map(ToString::to_string).unwrap_or_else(|| {
        if reference.contains(':') {
            reference.to_owned()
        } else {
            String::new()
        }
    });
    let tag = if reference.contains(':') {
        ""
    } else {
        reference
    };
    let event = Event::new(kind, repository, &ctx.caller.actor(), &request_host(ctx))
        .manifest(&digest, tag);
    ctx.state.webhooks.publish(event);
}

/// Publish a pull of a manifest a proxy-cache project served (GET answered 200).
pub(crate) fn proxied_pull(
    ctx: &crate::routes::Ctx,
    repository: &str,
    reference: &str,
    resp: &axum::response::Response,
) {
    if ctx.is_head() || resp.status() != axum::http::StatusCode::OK {
        return;
    }
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|d| d.parse::<berth_proto::Digest>().ok());
    publish_manifest(
        ctx,
        WebhookEvent::Pull,
        repository,
        digest.as_ref(),
        reference,
    );
}

/// Publish "quota exceeded" if `e` is a quota refusal of a push into `repository`.
pub(crate) fn quota_refused(
    ctx: &crate::routes::Ctx,
    repository: &str,
    digest: Option<&berth_proto::Digest>,
    e: &StorageError,
) {
    if let StorageError::Denied(message) = e
        && is_quota_refusal(e)
    {
        let mut event = Event::new(
            WebhookEvent::QuotaExceeded,
            repository,
            &ctx.caller.actor(),
            &request_host(ctx),
        );
        event.digest = digest.map(ToString::to_string).unwrap_or_default();
        event.detail = message.clone();
        ctx.state.webhooks.publish(event);
    }
}

/// Whether a storage refusal is a quota refusal (the text of
/// [`berth_storage::lifecycle::quota_message`]).
pub fn is_quota_refusal(e: &StorageError) -> bool {
    matches!(e, StorageError::Denied(m) if m.starts_with("storage quota of project"))
}

/// Counters shown in the console and `/metrics`.
#[derive(Default)]
struct Stats {
    published: AtomicU64,
    dropped: AtomicU64,
    dropped_by_project: Mutex<HashMap<String, u64>>,
}

impl Stats {
    fn drop_one(&self, project: &str, stage: &'static str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        *self
            .dropped_by_project
            .lock()
            .expect("stats lock")
            .entry(project.to_owned())
            .or_default() += 1;
        metrics::counter!("berth_webhook_events_dropped_total", "stage" => stage).increment(1);
    }
}

struct Job {
    event: Arc<Event>,
    hook: Webhook,
    public: bool,
}

struct Worker {
    project: String,
    tx: mpsc::Sender<Job>,
}

/// Per project: when its endpoint list was read, and the list.
type EndpointCache = HashMap<String, (Instant, Arc<Vec<Webhook>>)>;

struct Inner {
    store: Arc<dyn WebhookStore>,
    sealer: Arc<crate::remotes::Sealer>,
    accounts: Arc<dyn AccountStore>,
    config: WebhookConfig,
    stats: Stats,
    cache: Mutex<EndpointCache>,
    workers: Mutex<HashMap<i64, Worker>>,
}

/// The webhook service of one server: publishing, dispatch, delivery and the operations
/// behind the API, CLI and console.
pub struct Webhooks {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Event>,
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
}

impl Webhooks {
    /// The service over `store`, sealing secrets with `sealer`; nothing is delivered until
    /// [`Webhooks::start`].
    pub fn new(
        store: Arc<dyn WebhookStore>,
        accounts: Arc<dyn AccountStore>,
        sealer: Arc<crate::remotes::Sealer>,
        config: WebhookConfig,
    ) -> Webhooks {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        Webhooks {
            inner: Arc::new(Inner {
                store,
                sealer,
                accounts,
                config,
                stats: Stats::default(),
                cache: Mutex::default(),
                workers: Mutex::default(),
            }),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Start the dispatcher (once; later calls do nothing). Needs a Tokio runtime.
    pub fn start(&self) {
        let Some(mut rx) = self.rx.lock().expect("rx lock").take() else {
            return;
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                inner.dispatch(event).await;
            }
        });
    }

    /// Queue `event` for the endpoints of its project. Never waits: when the queue is
    /// full the event is dropped and counted.
    pub fn publish(&self, event: Event) {
        // Most projects have no endpoint for most events (every manifest GET is a pull
        // event): when the remembered list says nobody listens, the event goes no further
        // than here, instead of through the queue to the dispatcher, which would drop it.
        if !self.inner.may_want(&event.project, event.kind) {
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {
                self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e)) => {
                self.inner.stats.drop_one(&e.project, "queue");
            }
        }
    }

    /// Events dropped so far (all projects).
    pub fn dropped(&self) -> u64 {
        self.inner.stats.dropped.load(Ordering::Relaxed)
    }

    /// Events of `project` dropped so far.
    pub fn dropped_in(&self, project: &str) -> u64 {
        self.inner
            .stats
            .dropped_by_project
            .lock()
            .expect("stats lock")
            .get(project)
            .copied()
            .unwrap_or(0)
    }

    /// Events accepted into the queue so far.
    pub fn published(&self) -> u64 {
        self.inner.stats.published.load(Ordering::Relaxed)
    }

    /// Forget the cached endpoint list of `project` (after a change) and retire its
    /// workers (they finish what they hold; new ones start with the new settings).
    pub fn invalidate(&self, project: &str) {
        self.inner.cache.lock().expect("cache lock").remove(project);
        self.inner
            .workers
            .lock()
            .expect("workers lock")
            .retain(|_, w| w.project != project);
    }

    /// Seal a secret for the store ("" stays empty).
    pub fn seal(&self, secret: &str) -> Vec<u8> {
        self.inner.sealer.seal(secret)
    }

    // --- Operations (API, CLI, console). ---

    /// The endpoints of `project` (project administrators).
    pub async fn list(
        &self,
        auth: &crate::auth::Auth,
        caller: &Caller,
        project: &str,
    ) -> ApiResult<Vec<WebhookInfo>> {
        admin::require_manage(auth, caller, project, "list the webhooks").await?;
        Ok(self
            .inner
            .store
            .webhooks(project)
            .await?
            .iter()
            .map(WebhookInfo::from)
            .collect())
    }

    /// Add an endpoint to `project` (project administrators).
    pub async fn add(
        &self,
        auth: &crate::auth::Auth,
        caller: &Caller,
        project: &str,
        spec: WebhookSpec,
    ) -> ApiResult<WebhookInfo> {
        admin::require_manage(auth, caller, project, "add a webhook").await?;
        let hook = spec.into_webhook(self, project)?;
        if self.inner.store.webhooks(project).await?.len() >= MAX_WEBHOOKS_PER_PROJECT {
            return Err(bad_request(format!(
                "project {project} already has {MAX_WEBHOOKS_PER_PROJECT} webhooks, the most \
                 allowed; remove one first (berth webhook rm)"
            )));
        }
        let id = self.inner.store.create_webhook(&hook).await.map_err(|e| match e {
            StorageError::AlreadyExists(_) => crate::error::ApiError::new(
                berth_proto::error::ErrorCode::Unsupported,
                format!(
                    "project {project} already has a webhook named {}; remove it first or pick another name",
                    hook.name
                ),
            )
            .with_status(axum::http::StatusCode::CONFLICT),
            e => e.into(),
        })?;
        self.invalidate(project);
        auth.audit(
            &caller.actor(),
            "webhook_add",
            &format!("project:{project}/webhook:{}", hook.name),
            caller.addr,
            &format!(
                "url={} events={}",
                hook.url,
                WebhookEvent::join(&hook.events)
            ),
        )
        .await;
        Ok(WebhookInfo::from(&Webhook { id, ..hook }))
    }

    /// Change an endpoint (project administrators): only the fields given.
    pub async fn update(
        &self,
        auth: &crate::auth::Auth,
        caller: &Caller,
        project: &str,
        name: &str,
        change: WebhookChange,
    ) -> ApiResult<WebhookInfo> {
        admin::require_manage(auth, caller, project, "change a webhook").await?;
        let mut hook = self.get(project, name).await?;
        if let Some(url) = change.url {
            hook.url = url;
        }
        if let Some(events) = change.events {
            hook.events = parse_events(&events)?;
        }
        if let Some(f) = change.format {
            hook.format = WebhookFormat::parse(&f).map_err(bad_request)?;
        }
        if let Some(a) = change.auth {
            hook.auth = WebhookAuth::parse(&a).map_err(bad_request)?;
            if hook.auth == WebhookAuth::None {
                hook.secret_sealed.clear();
            }
        }
        if let Some(s) = change.secret {
            check_secret(Some(&s))?;
            hook.secret_sealed = self.seal(&s);
        }
        if let Some(ca) = change.ca_pem {
            hook.ca_pem = ca;
        }
        if let Some(i) = change.insecure {
            hook.insecure = i;
        }
        if let Some(e) = change.enabled {
            hook.enabled = e;
        }
        validate(&hook)?;
        self.inner.store.update_webhook(&hook).await?;
        self.invalidate(project);
        auth.audit(
            &caller.actor(),
            "webhook_update",
            &format!("project:{project}/webhook:{name}"),
            caller.addr,
            &format!("url={} enabled={}", hook.url, hook.enabled),
        )
        .await;
        Ok(WebhookInfo::from(&hook))
    }

    /// Remove an endpoint and its delivery log (project administrators).
    pub async fn remove(
        &self,
        auth: &crate::auth::Auth,
        caller: &Caller,
        project: &str,
        name: &str,
    ) -> ApiResult<()> {
        admin::require_manage(auth, caller, project, "remove a webhook").await?;
        self.inner
            .store
            .delete_webhook(project, name)
            .await
            .map_err(|e| not_found_or(e, project, name))?;
        self.invalidate(project);
        auth.audit(
            &caller.actor(),
            "webhook_remove",
            &format!("project:{project}/webhook:{name}"),
            caller.addr,
            "",
        )
        .await;
        Ok(())
    }

    /// The newest `limit` delivery attempts of an endpoint (project administrators).
    pub async fn deliveries(
        &self,
        auth: &crate::auth::Auth,
        caller: &Caller,
        project: &str,
        name: &str,
        limit: u32,
    ) -> ApiResult<Vec<DeliveryInfo>> {
        admin::require_manage(auth, caller, project, "read the webhook delivery log").await?;
        let hook = self.get(project, name).await?;
        Ok(self
            .inner
            .store
            .deliveries(hook.id, limit.clamp(1, 1000))
            .await?
            .iter()
            .map(DeliveryInfo::from)
            .collect())
    }

    /// Send one test event (a push of `PROJECT/berth-webhook-test:test`) to an endpoint
    /// now, once, and answer with the attempt (also written to its log).
    pub async fn test(
        &self,
        auth: &crate::auth::Auth,
        caller: &Caller,
        project: &str,
        name: &str,
        host: &str,
    ) -> ApiResult<DeliveryInfo> {
        admin::require_manage(auth, caller, project, "test a webhook").await?;
        let hook = self.get(project, name).await?;
        let public = self.inner.public(project).await;
        let event = Event::new(
            WebhookEvent::Push,
            &format!("{project}/berth-webhook-test"),
            &caller.actor(),
            host,
        )
        .manifest(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "test",
        );
        let client = client_for(&hook, &self.inner.config).map_err(bad_request)?;
        let delivery_id = uuid::Uuid::new_v4().to_string();
        let d = self
            .inner
            .attempt(&client, &hook, &event, public, 1, "test", &delivery_id)
            .await;
        Ok(DeliveryInfo::from(&d))
    }

    async fn get(&self, project: &str, name: &str) -> ApiResult<Webhook> {
        self.inner
            .store
            .webhook(project, name)
            .await?
            .ok_or_else(|| not_found_or(StorageError::NotFound(String::new()), project, name))
    }
}

fn not_found_or(e: StorageError, project: &str, name: &str) -> crate::error::ApiError {
    match e {
        StorageError::NotFound(_) => crate::error::ApiError::new(
            berth_proto::error::ErrorCode::NameUnknown,
            format!(
                "project {project} has no webhook named {name}; see berth webhook list {project}"
            ),
        )
        .with_status(axum::http::StatusCode::NOT_FOUND),
        e => e.into(),
    }
}

impl Inner {
    /// False only when `project`'s endpoint list is remembered and fresh and no enabled
    /// endpoint in it wants `kind`; otherwise the dispatcher decides (and refreshes it).
    fn may_want(&self, project: &str, kind: WebhookEvent) -> bool {
        let ttl = Duration::from_millis(self.config.cache_ms);
        match self.cache.lock().expect("cache lock").get(project) {
            Some((at, hooks)) if at.elapsed() < ttl => {
                hooks.iter().any(|h| h.enabled && h.events.contains(&kind))
            }
            _ => true,
        }
    }

    async fn public(&self, project: &str) -> bool {
        matches!(self.accounts.project(project).await, Ok(Some(p)) if p.public)
    }

    /// The endpoints of `project`, from the cache when fresh.
    async fn hooks(&self, project: &str) -> Arc<Vec<Webhook>> {
        let ttl = Duration::from_millis(self.config.cache_ms);
        if let Some((at, hooks)) = self.cache.lock().expect("cache lock").get(project)
            && at.elapsed() < ttl
        {
            return hooks.clone();
        }
        let hooks = match self.store.webhooks(project).await {
            Ok(h) => Arc::new(h),
            Err(e) => {
                tracing::warn!(project, error = %e, "could not read the webhooks of a project");
                Arc::new(Vec::new())
            }
        };
        self.cache
            .lock()
            .expect("cache lock")
            .insert(project.to_owned(), (Instant::now(), hooks.clone()));
        hooks
    }

    async fn dispatch(self: &Arc<Self>, event: Event) {
        let hooks = self.hooks(&event.project).await;
        let wanted: Vec<&Webhook> = hooks
            .iter()
            .filter(|h| h.enabled && h.project == event.project && h.events.contains(&event.kind))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let public = self.public(&event.project).await;
        let event = Arc::new(event);
        for hook in wanted {
            let tx = self.worker(hook);
            let job = Job {
                event: event.clone(),
                hook: hook.clone(),
                public,
            };
            if tx.try_send(job).is_err() {
                self.stats.drop_one(&event.project, "endpoint");
            }
        }
    }

    /// The queue of `hook`'s worker, starting the worker when there is none.
    fn worker(self: &Arc<Self>, hook: &Webhook) -> mpsc::Sender<Job> {
        let mut workers = self.workers.lock().expect("workers lock");
        if let Some(w) = workers.get(&hook.id) {
            return w.tx.clone();
        }
        let (tx, mut rx) = mpsc::channel::<Job>(self.config.endpoint_queue.max(1));
        workers.insert(
            hook.id,
            Worker {
                project: hook.project.clone(),
                tx: tx.clone(),
            },
        );
        let inner = self.clone();
        let client = client_for(hook, &self.config);
        tokio::spawn(async move {
            let limit = Arc::new(Semaphore::new(inner.config.concurrency.max(1)));
            while let Some(job) = rx.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let (inner, client) = (inner.clone(), client.clone());
                tokio::spawn(async move {
                    inner.deliver(client, job).await;
                    drop(permit);
                });
            }
        });
        tx
    }

    /// One delivery: attempts with backoff until one succeeds or `max_attempts` ran.
    async fn deliver(&self, client: Result<reqwest::Client, String>, job: Job) {
        let delivery_id = uuid::Uuid::new_v4().to_string();
        let max = self.config.max_attempts.max(1);
        let mut wait = Duration::from_millis(self.config.backoff_ms);
        for attempt in 1..=max {
            let d = match &client {
                Ok(c) => {
                    self.attempt(
                        c,
                        &job.hook,
                        &job.event,
                        job.public,
                        attempt,
                        job.event.kind.as_str(),
                        &delivery_id,
                    )
                    .await
                }
                Err(e) => {
                    // A configuration error does not get better by retrying.
                    let d = self.failed(&job.hook, &job.event, attempt, e.clone());
                    self.log(&d).await;
                    return;
                }
            };
            metrics::counter!(
                "berth_webhook_deliveries_total",
                "result" => if d.error.is_empty() { "ok" } else { "failed" }
            )
            .increment(1);
            if d.error.is_empty() {
                return;
            }
            if attempt < max {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(self.config.max_backoff_ms));
            }
        }
        tracing::warn!(
            project = job.hook.project,
            webhook = job.hook.name,
            event = job.event.kind.as_str(),
            attempts = max,
            "webhook delivery failed after every attempt; see berth webhook deliveries"
        );
    }

    fn failed(&self, hook: &Webhook, event: &Event, attempt: u32, error: String) -> Delivery {
        Delivery {
            id: 0,
            webhook_id: hook.id,
            at: admin::now(),
            event: event.kind.as_str().to_owned(),
            subject: event.repository.clone(),
            attempt,
            status: 0,
            latency_ms: 0,
            error,
        }
    }

    async fn log(&self, d: &Delivery) {
        if let Err(e) = self.store.record_delivery(d, self.config.log_keep).await {
            tracing::warn!(error = %e, "could not write the webhook delivery log");
        }
    }

    /// One POST; the attempt is written to the log and returned.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        client: &reqwest::Client,
        hook: &Webhook,
        event: &Event,
        public: bool,
        attempt: u32,
        label: &str,
        delivery_id: &str,
    ) -> Delivery {
        let at = admin::now();
        let started = Instant::now();
        let (body, content_type) = event.body(hook.format, &hook.name, public);
        let mut req = client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header("X-Berth-Event", event.kind.as_str())
            .header("X-Berth-Delivery", delivery_id);
        let outcome: Result<u16, (u16, String)> = match self.sealer.unseal(&hook.secret_sealed) {
            Err(e) => Err((0, format!("webhook secret: {e}"))),
            Ok(secret) => {
                match hook.auth {
                    WebhookAuth::None => {}
                    WebhookAuth::Header => {
                        req = req.header(reqwest::header::AUTHORIZATION, secret.as_str())
                    }
                    WebhookAuth::Hmac => {
                        req = req.header(SIGNATURE_HEADER, signature(secret.as_bytes(), &body))
                    }
                }
                match req.body(body).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        if status.is_success() {
                            Ok(status.as_u16())
                        } else {
                            let text = resp.text().await.unwrap_or_default();
                            let text: String = text.chars().take(MAX_ERROR_BODY).collect();
                            Err((
                                status.as_u16(),
                                format!("the receiver answered {status}: {}", text.trim()),
                            ))
                        }
                    }
                    Err(e) => Err((0, describe(&e.without_url()))),
                }
            }
        };
        let latency = started.elapsed();
        metrics::histogram!("berth_webhook_delivery_seconds").record(latency.as_secs_f64());
        let (status, error) = match outcome {
            Ok(s) => (s, String::new()),
            Err((s, e)) => (s, e),
        };
        let d = Delivery {
            id: 0,
            webhook_id: hook.id,
            at,
            event: label.to_owned(),
            subject: event.repository.clone(),
            attempt,
            status,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            error,
        };
        self.log(&d).await;
        d
    }
}

/// An error and its causes on one line (without the URL, which may carry a token).
fn describe(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    if s.contains("timed out") || s.contains("TimedOut") {
        s.push_str(" (the receiver did not answer in time)");
    }
    s
}

/// The HTTP client for an endpoint: its CA bundle added to the system roots, or any
/// certificate accepted when `insecure`; the configured timeout on every attempt.
fn client_for(hook: &Webhook, config: &WebhookConfig) -> Result<reqwest::Client, String> {
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("berth-webhook/", env!("CARGO_PKG_VERSION")));
    if hook.insecure {
        b = b.tls_danger_accept_invalid_certs(true);
    } else if !hook.ca_pem.trim().is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(hook.ca_pem.as_bytes())
            .map_err(|e| format!("the webhook's CA bundle is not usable PEM: {e}"))?;
        b = b.tls_certs_merge(certs);
    }
    b.build()
        .map_err(|e| format!("cannot set up an HTTP client for the webhook: {e}"))
}

fn check_secret(secret: Option<&str>) -> ApiResult<()> {
    if secret.is_some_and(|s| s.len() > MAX_SECRET) {
        return Err(bad_request(format!(
            "the webhook secret is longer than {MAX_SECRET} bytes"
        )));
    }
    if secret.is_some_and(|s| s.bytes().any(|b| b.is_ascii_control())) {
        return Err(bad_request(
            "the webhook secret contains control characters (a newline?); remove them",
        ));
    }
    Ok(())
}

fn parse_events(events: &[String]) -> ApiResult<Vec<WebhookEvent>> {
    WebhookEvent::parse_list(&events.join(",")).map_err(bad_request)
}

/// Names, URL, sizes, CA and secret presence of an endpoint, checked before it is stored.
fn validate(hook: &Webhook) -> ApiResult<()> {
    if !crate::admin::is_object_name(&hook.name) {
        return Err(bad_request(format!(
            "invalid webhook name {:?}: use 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit",
            hook.name
        )));
    }
    if hook.url.len() > MAX_URL {
        return Err(bad_request(format!(
            "the webhook URL is longer than {MAX_URL} characters"
        )));
    }
    let url = reqwest::Url::parse(&hook.url)
        .map_err(|e| bad_request(format!("invalid webhook URL {:?}: {e}", hook.url)))?;
    match url.scheme() {
        "https" => {}
        "http" if hook.insecure => {}
        "http" => {
            return Err(bad_request(
                "the webhook URL is http://: use https:// (with --ca-file for a private CA), \
                 or pass --insecure to send events unencrypted",
            ));
        }
        s => {
            return Err(bad_request(format!(
                "the webhook URL must be https:// (not {s}://)"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad_request("the webhook URL has no host"));
    }
    if hook.ca_pem.len() > MAX_CA_PEM {
        return Err(bad_request(format!(
            "the CA bundle is larger than {MAX_CA_PEM} bytes"
        )));
    }
    if !hook.ca_pem.trim().is_empty() {
        let certs = reqwest::Certificate::from_pem_bundle(hook.ca_pem.as_bytes())
            .map_err(|e| bad_request(format!("the CA bundle is not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(bad_request(
                "the CA bundle holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            ));
        }
    }
    if hook.auth != WebhookAuth::None && hook.secret_sealed.is_empty() {
        return Err(bad_request(format!(
            "auth {} needs a secret (--secret, or the `secret` field)",
            hook.auth.as_str()
        )));
    }
    Ok(())
}

/// A new endpoint as the API and CLI take it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    pub url: String,
    /// Event names (`push`, `pull`, `delete`, `quota_exceeded`, `replication`).
    pub events: Vec<String>,
    /// `harbor` (default) or `cloudevents`.
    #[serde(default)]
    pub format: Option<String>,
    /// `none` (default), `header` or `hmac`.
    #[serde(default)]
    pub auth: Option<String>,
    /// The `Authorization` header value or the HMAC key.
    #[serde(default)]
    pub secret: Option<String>,
    /// Extra CA certificates (PEM) for the receiver.
    #[serde(default)]
    pub ca_pem: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl WebhookSpec {
    fn into_webhook(self, hooks: &Webhooks, project: &str) -> ApiResult<Webhook> {
        let auth = match self.auth.as_deref() {
            None if self.secret.is_some() => WebhookAuth::Hmac,
            None => WebhookAuth::None,
            Some(a) => WebhookAuth::parse(a).map_err(bad_request)?,
        };
        if auth == WebhookAuth::None && self.secret.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(bad_request(
                "a secret was given with auth none; say auth header or auth hmac",
            ));
        }
        check_secret(self.secret.as_deref())?;
        let hook = Webhook {
            id: 0,
            project: project.to_owned(),
            name: self.name,
            url: self.url,
            events: parse_events(&self.events)?,
            format: WebhookFormat::parse(self.format.as_deref().unwrap_or("harbor"))
                .map_err(bad_request)?,
            auth,
            secret_sealed: hooks.seal(self.secret.as_deref().unwrap_or("")),
            ca_pem: self.ca_pem.unwrap_or_default(),
            insecure: self.insecure,
            enabled: self.enabled,
            created_at: admin::now(),
        };
        validate(&hook)?;
        Ok(hook)
    }
}

/// A change to an endpoint: only the fields present are changed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub format: Option<String>,
    pub auth: Option<String>,
    pub secret: Option<String>,
    pub ca_pem: Option<String>,
    pub insecure: Option<bool>,
    pub enabled: Option<bool>,
}

/// An endpoint as shown (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookInfo {
    pub project: String,
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub format: String,
    pub auth: String,
    /// Whether a secret is set (it is never shown).
    pub has_secret: bool,
    /// Whether a CA bundle is set.
    pub has_ca: bool,
    pub insecure: bool,
    pub enabled: bool,
    pub created_at: String,
}

impl From<&Webhook> for WebhookInfo {
    fn from(w: &Webhook) -> Self {
        WebhookInfo {
            project: w.project.clone(),
            name: w.name.clone(),
            url: w.url.clone(),
            events: w.events.iter().map(|e| e.as_str().to_owned()).collect(),
            format: w.format.as_str().to_owned(),
            auth: w.auth.as_str().to_owned(),
            has_secret: !w.secret_sealed.is_empty(),
            has_ca: !w.ca_pem.trim().is_empty(),
            insecure: w.insecure,
            enabled: w.enabled,
            created_at: admin::format_time(w.created_at),
        }
    }
}

/// One delivery attempt as shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryInfo {
    pub at: String,
    pub event: String,
    pub subject: String,
    pub attempt: u32,
    /// HTTP status; 0 when none came.
    pub status: u16,
    pub latency_ms: u64,
    pub ok: bool,
    pub error: String,
}

impl From<&Delivery> for DeliveryInfo {
    fn from(d: &Delivery) -> Self {
        DeliveryInfo {
            at: admin::format_time(d.at),
            event: d.event.clone(),
            subject: d.subject.clone(),
            attempt: d.attempt,
            status: d.status,
            latency_ms: d.latency_ms,
            ok: d.error.is_empty(),
            error: d.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push() -> Event {
        let mut e = Event::new(
            WebhookEvent::Push,
            "team/app/web",
            "alice",
            "reg.example:5443",
        )
        .manifest("sha256:abcd", "v1");
        e.occur_at = 1_700_000_000;
        e
    }

    #[test]
    fn harbor_payload_has_harbors_shape() {
        let (body, ct) = push().body(WebhookFormat::Harbor, "ci", false);
        assert_eq!(ct, "application/json");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({
                "type": "PUSH_ARTIFACT",
                "occur_at": 1_700_000_000,
                "operator": "alice",
                "event_data": {
                    "resources": [{
                        "digest": "sha256:abcd",
                        "tag": "v1",
                        "resource_url": "reg.example:5443/team/app/web:v1"
                    }],
                    "repository": {
                        "name": "app/web",
                        "namespace": "team",
                        "repo_full_name": "team/app/web",
                        "repo_type": "private"
                    }
                }
            })
        );
        // By digest: the tag field holds the digest and the URL uses '@', as Harbor does.
        let mut pull = push().manifest("sha256:abcd", "");
        pull.kind = WebhookEvent::Pull;
        let v: Value =
            serde_json::from_slice(&pull.body(WebhookFormat::Harbor, "ci", true).0).unwrap();
        assert_eq!(v["type"], "PULL_ARTIFACT");
        assert_eq!(v["event_data"]["resources"][0]["tag"], "sha256:abcd");
        assert_eq!(
            v["event_data"]["resources"][0]["resource_url"],
            "reg.example:5443/team/app/web@sha256:abcd"
        );
        assert_eq!(v["event_data"]["repository"]["repo_type"], "public");
    }

    #[test]
    fn quota_and_cloudevents_payloads() {
        let mut q = Event::new(WebhookEvent::QuotaExceeded, "team/app", "bob", "h");
        q.detail = "storage quota of project team exceeded".into();
        q.digest = "sha256:ff".into();
        let v: Value =
            serde_json::from_slice(&q.body(WebhookFormat::Harbor, "x", false).0).unwrap();
        assert_eq!(v["type"], "QUOTA_EXCEED");
        assert_eq!(
            v["event_data"]["custom_attributes"]["Details"],
            "storage quota of project team exceeded"
        );
        assert!(
            v["event_data"]["resources"][0]
                .get("resource_url")
                .is_none()
        );

        let (body, ct) = push().body(WebhookFormat::CloudEvents, "ci", false);
        assert_eq!(ct, "application/cloudevents+json");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "harbor.artifact.pushed");
        assert_eq!(v["source"], "/projects/team/webhook/policies/ci");
        assert_eq!(v["time"], "2023-11-14T22:13:20Z");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["operator"], "alice");
        assert_eq!(v["data"]["repository"]["repo_full_name"], "team/app/web");
        assert!(uuid::Uuid::parse_str(v["id"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn replication_payload() {
        let mut e = Event::replication(
            "team",
            "admin",
            json!({ "job_status": "Success", "trigger_type": "EVENT_BASED" }),
        );
        e.occur_at = 5;
        assert_eq!(e.project, "team");
        let v: Value =
            serde_json::from_slice(&e.body(WebhookFormat::Harbor, "ci", false).0).unwrap();
        assert_eq!(
            v,
            json!({
                "type": "REPLICATION",
                "occur_at": 5,
                "operator": "admin",
                "event_data": {
                    "replication": { "job_status": "Success", "trigger_type": "EVENT_BASED" }
                }
            })
        );
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn quota_refusals_are_recognised() {
        let m = berth_storage::lifecycle::quota_message("p", 10, 9, 5);
        assert!(is_quota_refusal(&StorageError::Denied(m)));
        assert!(!is_quota_refusal(&StorageError::Denied(
            "tag v1 is immutable".into()
        )));
    }

    #[test]
    fn secrets_round_trip_and_never_show() {
        let sealer = crate::remotes::Sealer::from_key(&[7; 32]).unwrap();
        let hooks_seal = |s: &str| sealer.seal(s);
        let sealed = hooks_seal("Bearer s3cret");
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"), "sealed at rest");
        assert_eq!(sealer.unseal(&sealed).unwrap(), "Bearer s3cret");
        assert!(check_secret(Some("a\nb")).is_err());
        assert!(check_secret(Some(&"k".repeat(MAX_SECRET + 1))).is_err());
        let w = Webhook {
            id: 1,
            project: "p".into(),
            name: "n".into(),
            url: "https://x".into(),
            events: vec![WebhookEvent::Push],
            format: WebhookFormat::Harbor,
            auth: WebhookAuth::Header,
            secret_sealed: hooks_seal("Bearer s3cret"),
            ca_pem: String::new(),
            insecure: false,
            enabled: true,
            created_at: 0,
        };
        let shown = serde_json::to_string(&WebhookInfo::from(&w)).unwrap();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("\"has_secret\":true"), "{shown}");
        assert!(validate(&w).is_ok());
        let bad = Webhook {
            url: "http://x".into(),
            ..w.clone()
        };
        assert!(validate(&bad).unwrap_err().detail.contains("--insecure"));
        let bad = Webhook {
            name: "Bad Name".into(),
            ..w.clone()
        };
        assert!(validate(&bad).is_err());
        let bad = Webhook {
            secret_sealed: vec![],
            ..w
        };
        assert!(
            validate(&bad)
                .unwrap_err()
                .detail
                .contains("needs a secret")
        );
    }
}

/// The API routes of webhooks (part of [`crate::api::table`]).
pub(crate) mod http {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{MethodRouter, delete, get, patch, post};

    use super::{WebhookChange, WebhookSpec};
    use crate::api::{ApiCaller, JsonBody};
    use crate::error::ApiResult;
    use crate::state::AppState;

    type Route = (Method, &'static str, MethodRouter<AppState>);

    pub(crate) fn routes() -> Vec<Route> {
        vec![
            (Method::GET, "/api/v1/projects/{name}/webhooks", get(list)),
            (Method::POST, "/api/v1/projects/{name}/webhooks", post(add)),
            (
                Method::PATCH,
                "/api/v1/projects/{name}/webhooks/{webhook}",
                patch(update),
            ),
            (
                Method::DELETE,
                "/api/v1/projects/{name}/webhooks/{webhook}",
                delete(remove),
            ),
            (
                Method::GET,
                "/api/v1/projects/{name}/webhooks/{webhook}/deliveries",
                get(deliveries),
            ),
            (
                Method::POST,
                "/api/v1/projects/{name}/webhooks/{webhook}/test",
                post(test),
            ),
        ]
    }

    fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> ApiResult<Response> {
        Ok((
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(value).expect("serializable"),
        )
            .into_response())
    }

    async fn list(
        State(s): State<AppState>,
        ApiCaller(c): ApiCaller,
        Path(project): Path<String>,
    ) -> ApiResult<Response> {
        json(
            StatusCode::OK,
            &s.webhooks.list(&s.auth, &c, &project).await?,
        )
    }

    async fn add(
        State(s): State<AppState>,
        ApiCaller(c): ApiCaller,
        Path(project): Path<String>,
        JsonBody(spec): JsonBody<WebhookSpec>,
    ) -> ApiResult<Response> {
        json(
            StatusCode::CREATED,
            &s.webhooks.add(&s.auth, &c, &project, spec).await?,
        )
    }

    async fn update(
        State(s): State<AppState>,
        ApiCaller(c): ApiCaller,
        Path((project, name)): Path<(String, String)>,
        JsonBody(change): JsonBody<WebhookChange>,
    ) -> ApiResult<Response> {
        json(
            StatusCode::OK,
            &s.webhooks
                .update(&s.auth, &c, &project, &name, change)
                .await?,
        )
    }

    async fn remove(
        State(s): State<AppState>,
        ApiCaller(c): ApiCaller,
        Path((project, name)): Path<(String, String)>,
    ) -> ApiResult<Response> {
        s.webhooks.remove(&s.auth, &c, &project, &name).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct LogQuery {
        limit: Option<u32>,
    }

    async fn deliveries(
        State(s): State<AppState>,
        ApiCaller(c): ApiCaller,
        Path((project, name)): Path<(String, String)>,
        uri: Uri,
    ) -> ApiResult<Response> {
        let q = axum::extract::Query::<LogQuery>::try_from_uri(&uri)
            .map_err(|e| crate::admin::bad_request(format!("invalid query: {}", e.body_text())))?;
        let limit = q.0.limit.unwrap_or(50);
        json(
            StatusCode::OK,
            &s.webhooks
                .deliveries(&s.auth, &c, &project, &name, limit)
                .await?,
        )
    }

    async fn test(
        State(s): State<AppState>,
        ApiCaller(c): ApiCaller,
        Path((project, name)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> ApiResult<Response> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        json(
            StatusCode::OK,
            &s.webhooks.test(&s.auth, &c, &project, &name, &host).await?,
        )
    }
}
