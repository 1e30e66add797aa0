//! Replication: rules that keep images in sync between this Berth and a remote registry
//! (push: here → there; pull: there → here), their executions and per-artifact tasks.
//!
//! - Both sides are `berth-client` registries ([`copy::Side`]): the remote one from
//!   [`crate::remotes::Remotes::client`] (its trust and sealed credentials), this Berth
//!   itself over loopback as [`crate::auth::SYSTEM_USER`], a system administrator that
//!   exists in no table. So a push rule and a pull rule are the same
//!   client copy in two directions, and writes into this Berth go through the registry's
//!   own handlers (validation, quotas, immutable tags, audit, GC bookkeeping).
//! - [`copy`] copies one artifact: the manifest tree, blobs (skipped when present, mounted
//!   across destination repositories), referrers; [`ops`] are the operations the API, CLI
//!   and console share; [`api`] the JSON routes.
//! - Triggers: a manual run queues an execution in the database; every replica's runner
//!   loop claims queued executions (each once); a cron schedule is fired by the replica
//!   that claims the slot ([`berth_storage::ReplicationStore::claim_schedule_slot`]); a
//!   push or a delete through this server starts an execution for the matching push rules
//!   in a spawned task (the push never waits for it).
//! - A task is retried with exponential backoff; artifacts already copied are skipped, so a
//!   retry after a cut connection resumes where it stopped (per blob). A stop request is a
//!   flag in the database, polled every second by the execution.

pub mod api;
pub mod copy;
pub mod labels;
pub mod ops;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use berth_client::creds::AuthEntry;
use berth_client::{ClientOptions, Keyring, RegistryClient, TrustOptions};
use berth_proto::Reference;
use berth_storage::{
    Direction, Execution, ReplicationRule, ReplicationStore, RuleTrigger, RunStatus, Task,
};
use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore};

use crate::auth::{Auth, Caller};
use crate::error::{ApiError, ApiResult};
use crate::state::{AppState, TlsInfo};
use copy::{Copier, Side, filter_match, literal_names, transient};

/// Blob transfers at once across every execution of this server.
pub const MAX_TRANSFERS: usize = 8;
/// Artifacts copied at once by one execution.
const ARTIFACTS_AT_ONCE: usize = 16;
/// Repositories whose tags are listed at once while an execution is planned.
const REPOSITORIES_AT_ONCE: usize = 16;
/// Attempts per artifact (backoff 1 s, 2 s, 4 s …).
const ATTEMPTS: u32 = 4;
/// Most artifacts one execution plans (a larger source is cut with an error message).
const MAX_TASKS: usize = 20_000;
/// How often the runner looks for queued executions and due schedules.
const TICK: Duration = Duration::from_secs(1);
/// How often a running execution's `heartbeat_at` is updated (and stale ones looked for).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A running execution without a heartbeat for this long belongs to a replica that died.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);
/// The error of an execution whose replica died.
const DEAD_REPLICA: &str = "the replica running it stopped; run the rule again";
/// How long on-push triggers of one rule and repository are gathered into one execution
/// (an index, its children and referrers are pushed within milliseconds of each other).
const COALESCE: Duration = Duration::from_millis(750);
/// Most references one gathered on-push execution takes (more wait for the next one).
const MAX_GATHERED: usize = 1000;

/// The replication engine of one server process.
pub struct Replication {
    pub store: Arc<dyn ReplicationStore>,
    local: OnceLock<Side>,
    transfers: Semaphore,
    wake: Notify,
    /// On-push triggers waiting, per (rule, repository): the references pushed. An entry
    /// exists while its worker runs; see [`Replication::gather`].
    pushed: std::sync::Mutex<std::collections::HashMap<(String, String), Vec<String>>>,
    /// The database is shared with other replicas (PostgreSQL): executions found running
    /// at start may be theirs.
    shared: bool,
}

impl Replication {
    pub fn new(store: Arc<dyn ReplicationStore>) -> Replication {
        Replication {
            store,
            local: OnceLock::new(),
            transfers: Semaphore::new(MAX_TRANSFERS),
            wake: Notify::new(),
            pushed: std::sync::Mutex::default(),
            shared: false,
        }
    }

    /// Mark the store as shared by several replicas (see [`Replication::shared`]).
    pub fn shared_by_replicas(mut self, shared: bool) -> Replication {
        self.shared = shared;
        self
    }

    /// This Berth as a replication side: `addr` is where it listens (loopback when it
    /// listens on every address), trusted through its own CA (or, for an operator's
    /// certificate that may not name the loopback address, without verification — the
    /// connection never leaves the machine), logged in as [`crate::auth::SYSTEM_USER`].
    pub fn set_local(&self, addr: SocketAddr, tls: &TlsInfo, auth: &Auth) -> ApiResult<()> {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v) if v.is_unspecified() => {
                std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            std::net::IpAddr::V6(v) if v.is_unspecified() => {
                std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
            }
            ip => ip,
        };
        let host = SocketAddr::new(ip, addr.port()).to_string();
        let mut trust = TrustOptions::isolated();
        let ca = match tls {
            TlsInfo::OwnCa { ca_crt } => std::fs::read(ca_crt).ok(),
            _ => None,
        };
        match ca {
            Some(pem) => {
                trust
                    .add_ca_pem(&pem, "this server's CA")
                    .map_err(internal)?;
            }
            None => trust.add_insecure(&host).map_err(internal)?,
        }
        let mut keyring = Keyring::new();
        keyring.add_auths(
            [(
                host.clone(),
                AuthEntry::basic(crate::auth::SYSTEM_USER, auth.system_secret()),
            )]
            .into(),
            "this server's replication engine",
        );
        let client = RegistryClient::new(ClientOptions {
            trust,
            keyring,
            ..Default::default()
        });
        let _ = self.local.set(Side { client, host });
        Ok(())
    }

    fn local(&self) -> ApiResult<Side> {
        self.local.get().cloned().ok_or_else(|| {
            internal(
                "replication runs only in `berth serve` (the server has not started listening yet)",
            )
        })
    }

    /// Look for queued executions now (after a manual run through this process).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::from(berth_storage::StorageError::Io(std::io::Error::other(
        e.to_string(),
    )))
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What an execution covers.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every matching repository and tag of the source (and, with deletions, every tag at
    /// the destination the source no longer has).
    All,
    /// Artifacts pushed to one repository (tags, or digests of referrers' subjects),
    /// gathered over [`COALESCE`].
    Pushed {
        repository: String,
        references: Vec<String>,
    },
    /// One deleted artifact.
    Deleted {
        repository: String,
        reference: String,
    },
}

/// Start the background runner: queued executions and cron schedules. Call once, after
/// [`Replication::set_local`].
pub fn spawn_runner(state: AppState) {
    tokio::spawn(async move {
        let repl = state.replication.clone();
        // Executions a previous process left running can never finish (with one
        // database per process; replicas sharing PostgreSQL may be running theirs).
        if !repl.shared {
            let stale = repl
                .store
                .fail_stale_executions(now() - 1, "the server stopped while it ran")
                .await;
            if let Err(e) = stale {
                tracing::warn!(error = %e, "replication: cannot clean up executions of an earlier run");
            }
        }
        let mut reaped = Instant::now();
        loop {
            if let Err(e) = tick(&state).await {
                tracing::warn!(error = %e.detail, "replication runner");
            }
            // Executions whose replica died (no heartbeat for HEARTBEAT_TIMEOUT) are failed
            // by whichever replica notices first.
            if reaped.elapsed() >= HEARTBEAT {
                reaped = Instant::now();
                let before = now() - HEARTBEAT_TIMEOUT.as_secs() as i64;
                match repl
                    .store
                    .fail_silent_executions(before, now(), DEAD_REPLICA)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        executions = n,
                        "replication: failed executions whose replica stopped"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "replication: cannot fail executions of a stopped replica")
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = repl.wake.notified() => {}
            }
        }
    });
}

async fn tick(state: &AppState) -> ApiResult<()> {
    let repl = &state.replication;
    while let Some(e) = repl.store.claim_queued(now()).await? {
        let Some(rule) = repl.store.rule(&e.rule).await? else {
            continue;
        };
        let st = state.clone();
        tokio::spawn(async move { execute(&st, e.id, &rule, Scope::All).await });
    }
    let rules = repl.store.list_rules().await?;
    let now_utc = chrono::Utc::now();
    for rule in rules {
        let RuleTrigger::Schedule(expr) = &rule.trigger else {
            continue;
        };
        if !rule.enabled {
            continue;
        }
        let Ok(cron) = parse_cron(expr) else { continue };
        // The latest tick at or before now; claimed once per slot across replicas.
        let Ok(prev) = cron.find_previous_occurrence(&now_utc, true) else {
            continue;
        };
        let slot = prev.timestamp();
        if slot < rule.created_at || now_utc.timestamp() - slot > 60 {
            continue;
        }
        if repl.store.claim_schedule_slot(&rule.name, slot).await? {
            let id = repl
                .store
                .start_execution(&rule.name, "schedule", now())
                .await?;
            let st = state.clone();
            tokio::spawn(async move { execute(&st, id, &rule, Scope::All).await });
        }
    }
    Ok(())
}

/// A cron expression: 5 fields, or 6 with seconds first.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("cron expression {expr:?}: {e}"))
}

/// After a manifest PUT through this server: start the on-push rules it matches, in the
/// background (the push never waits). A push by tag copies that tag; a referrer pushed by
/// digest (a signature or SBOM added later) copies its subject's referrers. Pushes by the
/// replication engine itself start nothing (no loops between a pull and a push rule).
pub fn on_push(
    state: &AppState,
    caller: &Caller,
    repository: &str,
    tag: Option<&str>,
    subject: Option<&berth_proto::Digest>,
) {
    if Auth::is_system(caller) {
        return;
    }
    let reference = match (tag, subject) {
        (Some(t), _) => t.to_string(),
        (None, Some(s)) => s.to_string(),
        (None, None) => return,
    };
    spawn_event(state, repository, reference, false);
}

/// After a manifest or tag DELETE through this server: replicate it for the push rules
/// with `replicate_deletions`, in the background.
pub fn on_delete(state: &AppState, caller: &Caller, repository: &str, reference: &str) {
    if Auth::is_system(caller) {
        return;
    }
    spawn_event(state, repository, reference.to_string(), true);
}

fn spawn_event(state: &AppState, repository: &str, reference: String, deleted: bool) {
    let st = state.clone();
    let repository = repository.to_string();
    tokio::spawn(async move {
        let rules = match st.replication.store.list_rules().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "replication: cannot list rules for a push event");
                return;
            }
        };
        let is_digest = reference.contains(':');
        for rule in rules {
            let wanted = rule.enabled
                && rule.direction == Direction::Push
                && filter_match(&rule.repositories, &repository)
                && (is_digest || filter_match(&rule.tags, &reference))
                && if deleted {
                    rule.replicate_deletions
                } else {
                    rule.trigger == RuleTrigger::OnPush
                };
            if !wanted {
                continue;
            }
            if !deleted {
                gather(&st, &rule.name, &repository, &reference);
                continue;
            }
            let Some(id) = start_execution(&st, &rule.name, "deletion").await else {
                continue;
            };
            let scope = Scope::Deleted {
                repository: repository.clone(),
                reference: reference.clone(),
            };
            let st2 = st.clone();
            tokio::spawn(async move { execute(&st2, id, &rule, scope).await });
        }
    });
}

/// Record a new execution of `rule` started by `trigger`: its id, or `None` (logged) when
/// the store refused.
async fn start_execution(state: &AppState, rule: &str, trigger: &str) -> Option<i64> {
    match state
        .replication
        .store
        .start_execution(rule, trigger, now())
        .await
    {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!(rule, error = %e, "replication: cannot start");
            None
        }
    }
}

/// Add a pushed `reference` to the on-push batch of `rule` and `repository`. The first
/// reference starts the batch's worker: it waits [`COALESCE`] for more, runs one execution
/// with all of them, and, if more were pushed meanwhile, another one after it — so one
/// rule never copies into one repository twice at once (an index pushed with its
/// children and referrers becomes one execution; two writers of the same manifest at
/// the destination are what made Distribution answer `MANIFEST_BLOB_UNKNOWN`).
fn gather(state: &AppState, rule: &str, repository: &str, reference: &str) {
    let key = (rule.to_string(), repository.to_string());
    {
        let mut pushed = state.replication.pushed.lock().unwrap();
        if let Some(refs) = pushed.get_mut(&key) {
            if !refs.iter().any(|r| r == reference) {
                refs.push(reference.to_string());
            }
            return;
        }
        pushed.insert(key.clone(), vec![reference.to_string()]);
    }
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(COALESCE).await;
            let references = {
                let mut pushed = st.replication.pushed.lock().unwrap();
                let refs = pushed.get_mut(&key).map(std::mem::take).unwrap_or_default();
                if refs.is_empty() {
                    pushed.remove(&key);
                    return;
                }
                let mut refs = refs;
                if refs.len() > MAX_GATHERED {
                    let rest = refs.split_off(MAX_GATHERED);
                    if let Some(r) = pushed.get_mut(&key) {
                        r.extend(rest);
                    }
                }
                refs
            };
            // The rule as it is now (it may have been changed or disabled meanwhile).
            let rule = match st.replication.store.rule(&key.0).await {
                Ok(Some(r)) if r.enabled && r.trigger == RuleTrigger::OnPush => r,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(rule = %key.0, error = %e, "replication: cannot read the rule");
                    continue;
                }
            };
            let Some(id) = start_execution(&st, &rule.name, "on-push").await else {
                continue;
            };
            let scope = Scope::Pushed {
                repository: key.1.clone(),
                references,
            };
            execute(&st, id, &rule, scope).await;
        }
    });
}

/// Run execution `id` of `rule` to its end, recording tasks and the final status.
pub async fn execute(state: &AppState, id: i64, rule: &ReplicationRule, scope: Scope) {
    let store = state.replication.store.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    // The stop flag lives in the database, so `stop` works from any replica or the CLI;
    // the same loop beats the execution's heartbeat (see [`HEARTBEAT`]).
    {
        let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut beat = Instant::now();
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if beat.elapsed() >= HEARTBEAT && !done.load(Ordering::Relaxed) {
                    beat = Instant::now();
                    if let Err(e) = store.heartbeat_execution(id, now()).await {
                        tracing::warn!(execution = id, error = %e, "replication: cannot record the heartbeat");
                    }
                }
                // Once asked to stop, keep beating until the run winds down.
                if !stop.load(Ordering::Relaxed)
                    && let Ok(Some(e)) = store.execution(id).await
                    && e.stop_requested
                {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        });
    }
    let result = run(state, id, rule, scope, &stop).await;
    done.store(true, Ordering::Relaxed);
    let (status, message) = match result {
        Err(e) => (RunStatus::Failed, e.detail),
        Ok(_) if stop.load(Ordering::Relaxed) => {
            (RunStatus::Stopped, "stopped on request".to_string())
        }
        Ok(0) => (RunStatus::Succeeded, String::new()),
        Ok(failed) => (
            RunStatus::Failed,
            format!("{failed} artifact(s) failed; see the tasks for each error"),
        ),
    };
    tracing::info!(rule = %rule.name, execution = id, status = status.as_str(), %message, "replication finished");
    if let Err(e) = store.finish_execution(id, status, &message, now()).await {
        tracing::warn!(execution = id, error = %e, "replication: cannot record the end");
    }
    publish_finished(state, id, rule, status, &message).await;
}

/// "Replication finished" webhooks (Harbor's `event_data.replication`), one per project of
/// this Berth the execution read from (push) or wrote into (pull).
async fn publish_finished(
    state: &AppState,
    id: i64,
    rule: &ReplicationRule,
    status: RunStatus,
    message: &str,
) {
    let store = &state.replication.store;
    let (Ok(Some(e)), Ok(tasks)) = (store.execution(id).await, store.tasks(id, 10_000).await)
    else {
        return;
    };
    let local = |t: &Task| match rule.direction {
        Direction::Push => t.source.clone(),
        Direction::Pull => t.destination.clone(),
    };
    let project_of = |t: &Task| local(t).split('/').next().unwrap_or("").to_string();
    let projects: std::collections::BTreeSet<String> = tasks
        .iter()
        .map(project_of)
        .filter(|p| !p.is_empty())
        .collect();
    let trigger_type = match e.trigger.as_str() {
        "schedule" => "SCHEDULE",
        "on-push" | "deletion" => "EVENT_BASED",
        _ => "MANUAL",
    };
    let (src, dst) = match rule.direction {
        Direction::Push => ("local", rule.registry.as_str()),
        Direction::Pull => (rule.registry.as_str(), "local"),
    };
    for project in projects {
        let mine: Vec<&Task> = tasks.iter().filter(|t| project_of(t) == project).collect();
        let artifact = |t: &&Task| {
            serde_json::json!({
                "type": "image",
                "status": if t.status == RunStatus::Failed { "Failed" } else { "Success" },
                "name_tag": format!("{}:{}", t.destination, t.reference),
                "fail_reason": t.error,
            })
        };
        let body = serde_json::json!({
            "job_status": if status == RunStatus::Succeeded { "Success" } else { "Failed" },
            "description": message,
            "trigger_type": trigger_type,
            "policy_name": rule.name,
            "execution_id": id,
            "execution_timestamp": e.started_at,
            "src_resource": {"registry_name": src},
            "dest_resource": {"registry_name": dst},
            "successful_artifact": mine.iter().filter(|t| t.status != RunStatus::Failed).map(artifact).collect::<Vec<_>>(),
            "failed_artifact": mine.iter().filter(|t| t.status == RunStatus::Failed).map(artifact).collect::<Vec<_>>(),
        });
        state.webhooks.publish(crate::webhooks::Event::replication(
            &project,
            crate::auth::SYSTEM_USER,
            body,
        ));
    }
}

/// One planned artifact.
struct Planned {
    op: &'static str,
    source: String,
    destination: String,
    reference: String,
}

/// Plan and run the tasks; the number that failed.
async fn run(
    state: &AppState,
    id: i64,
    rule: &ReplicationRule,
    scope: Scope,
    stop: &AtomicBool,
) -> ApiResult<usize> {
    let remote = {
        let r = state.remotes.get(&rule.registry).await?;
        let c = state.remotes.client(&r)?;
        Side {
            client: c.client,
            host: c.host,
        }
    };
    let local = state.replication.local()?;
    let (src, dst) = match rule.direction {
        Direction::Push => (local, remote),
        Direction::Pull => (remote, local),
    };
    let copied = if rule.replicate_deletions && matches!(scope, Scope::All) {
        state
            .replication
            .store
            .copied_sources(&rule.name, MAX_TASKS as u32)
            .await?
    } else {
        Vec::new()
    };
    let plan = plan(rule, &scope, &src, &dst, &copied)
        .await
        .map_err(client_err)?;
    if rule.direction == Direction::Pull {
        ensure_projects(state, rule, &plan).await?;
    }
    let store = &state.replication.store;
    let mut tasks: Vec<Task> = plan
        .into_iter()
        .map(|p| Task {
            id: 0,
            execution: id,
            operation: p.op.to_string(),
            source: p.source,
            destination: p.destination,
            reference: p.reference,
            digest: String::new(),
            status: RunStatus::Pending,
            bytes: 0,
            error: String::new(),
            started_at: now(),
            ended_at: None,
        })
        .collect();
    let ids = store.add_tasks(&tasks).await?;
    for (t, tid) in tasks.iter_mut().zip(ids) {
        t.id = tid;
    }
    let copier = Copier::new(&src, &dst, stop, &state.replication.transfers);
    let copier = &copier;
    let failed = futures_util::stream::iter(
        tasks
            .into_iter()
            .map(|t| async move { run_task(store.as_ref(), copier, t, stop).await }),
    )
    .buffer_unordered(ARTIFACTS_AT_ONCE)
    .filter(|ok| std::future::ready(!ok))
    .count()
    .await;
    Ok(failed)
}

/// Run one task with retries; `true` unless it failed.
async fn run_task(
    store: &dyn ReplicationStore,
    copier: &Copier<'_>,
    t: Task,
    stop: &AtomicBool,
) -> bool {
    let record = |status: RunStatus, digest: String, bytes: u64, error: String| async move {
        if let Err(e) = store
            .update_task(t.id, status, &digest, bytes, &error, now())
            .await
        {
            tracing::warn!(task = t.id, error = %e, "replication: cannot record a task");
        }
    };
    if stop.load(Ordering::Relaxed) {
        record(RunStatus::Stopped, String::new(), 0, String::new()).await;
        return true;
    }
    record(RunStatus::Running, String::new(), 0, String::new()).await;
    let reference = match Reference::from_str(&t.reference) {
        Ok(r) => r,
        Err(e) => {
            record(RunStatus::Failed, String::new(), 0, e.to_string()).await;
            return false;
        }
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = if t.operation == "delete" {
            delete_at(copier.dst, &t.destination, &reference)
                .await
                .map(|d| copy::Copied {
                    digest: d,
                    bytes: 0,
                    unchanged: false,
                })
        } else {
            // A stop request abandons the transfer in flight (dropping it closes its
            // connections); what the destination already has stays.
            tokio::select! {
                r = copier.copy(&t.source, &t.destination, &reference) => r,
                () = stop_requested(stop) => Err(copy::stopped()),
            }
        };
        match result {
            Ok(c) => {
                let status = if c.unchanged {
                    RunStatus::Skipped
                } else {
                    RunStatus::Succeeded
                };
                record(status, c.digest, c.bytes, String::new()).await;
                return true;
            }
            Err(_) if stop.load(Ordering::Relaxed) => {
                record(RunStatus::Stopped, String::new(), 0, "stopped".into()).await;
                return true;
            }
            Err(e) if transient(&e) && attempt < ATTEMPTS => {
                tracing::info!(task = t.id, attempt, error = %e, "replication: retrying");
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            Err(e) => {
                let msg = if attempt > 1 {
                    format!("{e} (after {attempt} attempts)")
                } else {
                    e.to_string()
                };
                record(RunStatus::Failed, String::new(), 0, msg).await;
                return false;
            }
        }
    }
}

/// Resolves once `stop` is set.
async fn stop_requested(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Delete `repo:reference` at `side`; a missing one is already deleted.
async fn delete_at(side: &Side, repo: &str, reference: &Reference) -> berth_client::Result<String> {
    let img = side.image(repo, reference);
    match side.client.delete_manifest(&img).await {
        Ok(d) => Ok(d.to_string()),
        Err(e) if e.is_not_found() => Ok(String::new()),
        Err(e) => Err(e),
    }
}

fn client_err(e: berth_client::ClientError) -> ApiError {
    ApiError::new(berth_proto::error::ErrorCode::Unavailable, e.to_string())
        .with_status(axum::http::StatusCode::BAD_GATEWAY)
}

/// Whether a tag is an OCI referrers fallback tag (`sha256-<hex>`): those travel with their
/// subjects, never as tags of their own.
fn is_fallback_tag(tag: &str) -> bool {
    tag.split_once('-').is_some_and(|(alg, hex)| {
        alg == "sha256" && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// What to copy (and delete) for `scope`; `gone` are the source repositories earlier runs
/// copied from (see [`ReplicationStore::copied_sources`]).
async fn plan(
    rule: &ReplicationRule,
    scope: &Scope,
    src: &Side,
    dst: &Side,
    gone: &[String],
) -> berth_client::Result<Vec<Planned>> {
    let planned = |op: &'static str, repo: &str, reference: &str| Planned {
        op,
        source: repo.to_string(),
        destination: rule.mapping.apply(repo),
        reference: reference.to_string(),
    };
    match scope {
        Scope::Pushed {
            repository,
            references,
        } => {
            let wanted = covered_once(src, repository, references).await?;
            let mut out = Vec::new();
            for r in &wanted {
                if has_labels(rule, src, repository, r).await? {
                    out.push(planned("copy", repository, r));
                }
            }
            Ok(out)
        }
        Scope::Deleted {
            repository,
            reference,
        } => Ok(vec![planned("delete", repository, reference)]),
        Scope::All => {
            let mut out = Vec::new();
            let repos = source_repositories(rule, src).await?;
            // One repository's plan (tags at the source, labels, tags at the destination)
            // is a few round trips and a token of its own; several repositories are
            // planned at once, their results kept in catalog order.
            let wanted: Vec<String> = repos
                .iter()
                .filter(|r| filter_match(&rule.repositories, r))
                .cloned()
                .collect();
            let mut per_repo = futures_util::stream::iter(
                wanted
                    .into_iter()
                    .map(|repo| plan_repository(rule, src, dst, repo)),
            )
            .buffered(REPOSITORIES_AT_ONCE);
            while let Some(planned_repo) = per_repo.next().await {
                out.extend(planned_repo?);
                if out.len() > MAX_TASKS {
                    return Err(berth_client::ClientError::Config(format!(
                        "rule {} matches more than {MAX_TASKS} artifacts; narrow its repository or tag filter",
                        rule.name
                    )));
                }
            }
            // Repositories an earlier run copied that the source no longer has: their
            // tags at the destination go too.
            if rule.replicate_deletions {
                for repo in gone
                    .iter()
                    .filter(|r| !repos.contains(*r) && filter_match(&rule.repositories, r))
                {
                    let there = tags_of(dst, &rule.mapping.apply(repo)).await?;
                    for t in there
                        .iter()
                        .filter(|t| !is_fallback_tag(t) && filter_match(&rule.tags, t))
                        .take(MAX_TASKS)
                    {
                        out.push(planned("delete", repo, t));
                    }
                }
            }
            Ok(out)
        }
    }
}

/// The tasks of one source repository in a full run: a copy of each tag that passes the
/// filters and, with deletions replicated, a delete of each destination tag gone at the
/// source.
async fn plan_repository(
    rule: &ReplicationRule,
    src: &Side,
    dst: &Side,
    repo: String,
) -> berth_client::Result<Vec<Planned>> {
    let planned = |op: &'static str, reference: &str| Planned {
        op,
        source: repo.clone(),
        destination: rule.mapping.apply(&repo),
        reference: reference.to_string(),
    };
    let mut out = Vec::new();
    let tags: Vec<String> = tags_of(src, &repo)
        .await?
        .into_iter()
        .filter(|t| !is_fallback_tag(t) && filter_match(&rule.tags, t))
        .take(MAX_TASKS + 1)
        .collect();
    for t in &tags {
        if has_labels(rule, src, &repo, t).await? {
            out.push(planned("copy", t));
        }
    }
    if rule.replicate_deletions {
        let there = tags_of(dst, &rule.mapping.apply(&repo)).await?;
        for t in there
            .iter()
            .filter(|t| !is_fallback_tag(t) && filter_match(&rule.tags, t) && !tags.contains(t))
        {
            out.push(planned("delete", t));
        }
    }
    Ok(out)
}

/// The tags of `repo` at `side`; none for a repository it does not have.
async fn tags_of(side: &Side, repo: &str) -> berth_client::Result<Vec<String>> {
    let img = side.image(repo, &Reference::Tag("latest".into()));
    match side.client.list_tags(&img).await {
        Ok(t) => Ok(t),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Whether `repo:reference` at the source has the rule's labels (always without a labels
/// filter).
async fn has_labels(
    rule: &ReplicationRule,
    src: &Side,
    repo: &str,
    reference: &str,
) -> berth_client::Result<bool> {
    let wanted = labels::parse(&rule.labels).map_err(berth_client::ClientError::Config)?;
    if wanted.is_empty() {
        return Ok(true);
    }
    let r = Reference::from_str(reference)
        .map_err(|e| berth_client::ClientError::Config(format!("reference {reference:?}: {e}")))?;
    labels::matches(src, repo, &r, &wanted).await
}

/// The source repositories a full run looks at: the names the rule's repository filter
/// lists when it has no wildcard (no catalog needed: Docker Hub and many registries refuse
/// `/v2/_catalog`), else the source's catalog — whose refusal is explained.
async fn source_repositories(
    rule: &ReplicationRule,
    src: &Side,
) -> berth_client::Result<Vec<String>> {
    if let Some(names) = literal_names(&rule.repositories) {
        return Ok(names);
    }
    match src.client.catalog(&src.host).await {
        Ok(r) => Ok(r),
        Err(e) if catalog_refused(&e) => Err(berth_client::ClientError::Config(format!(
            "{} does not list its repositories (GET /v2/_catalog: {e}); rule {} filters \
             repositories with the pattern {:?}, which needs that list: name the repositories \
             instead, e.g. --repositories library/nginx,library/alpine (or library/{{nginx,alpine}})",
            src.host, rule.name, rule.repositories
        ))),
        Err(e) => Err(e),
    }
}

/// Whether a catalog request was refused (as opposed to failing on the way).
fn catalog_refused(e: &berth_client::ClientError) -> bool {
    use berth_client::ClientError as E;
    match e {
        E::Auth { .. } | E::NotFound(_) => true,
        E::Registry(m) => [
            "UNSUPPORTED",
            "DENIED",
            "UNAUTHORIZED",
            " 401",
            " 403",
            " 404",
            " 405",
        ]
        .iter()
        .any(|k| m.contains(k)),
        _ => false,
    }
}

/// The references of an on-push batch worth copying: every tag, and each digest that no
/// tag of the batch already brings (the tag's manifest, an index's children — a digest
/// reference stands for the referrers of its subject, and copying a tag copies the
/// referrers of its manifest and of every child).
async fn covered_once(
    src: &Side,
    repository: &str,
    references: &[String],
) -> berth_client::Result<Vec<String>> {
    let (tags, digests): (Vec<&String>, Vec<&String>) =
        references.iter().partition(|r| !r.contains(':'));
    let mut covered = std::collections::BTreeSet::new();
    if !digests.is_empty() {
        for t in &tags {
            let r = Reference::Tag((*t).clone());
            let m = match src
                .client
                .get_manifest(&src.image(repository, &r), &r)
                .await
            {
                Ok(m) => m,
                // Deleted since: its copy task will say so.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            covered.insert(m.digest.to_string());
            if m.is_index() {
                covered.extend(m.shape()?.manifests.iter().map(|d| d.digest.to_string()));
            }
        }
    }
    let mut out: Vec<String> = tags.into_iter().cloned().collect();
    out.extend(
        digests
            .into_iter()
            .filter(|d| !covered.contains(*d))
            .cloned(),
    );
    Ok(out)
}

/// A pull rule writes into projects of this Berth: create the missing ones (private).
async fn ensure_projects(
    state: &AppState,
    rule: &ReplicationRule,
    plan: &[Planned],
) -> ApiResult<()> {
    let mut seen = std::collections::BTreeSet::new();
    for p in plan.iter().filter(|p| p.op == "copy") {
        let project = p.destination.split('/').next().unwrap_or("").to_string();
        if !seen.insert(project.clone()) {
            continue;
        }
        if state.auth.accounts.project(&project).await?.is_none() {
            let r = crate::admin::create_project(
                &state.auth,
                &crate::admin::local_admin(),
                &project,
                false,
                &format!("created by replication rule {}", rule.name),
            )
            .await;
            match r {
                Ok(()) => {}
                Err(e) if e.detail.contains("already exists") => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Executions of a rule, newest first (for views).
pub async fn executions(
    state: &AppState,
    rule: Option<&str>,
    limit: u32,
) -> ApiResult<Vec<Execution>> {
    Ok(state.replication.store.list_executions(rule, limit).await?)
}
