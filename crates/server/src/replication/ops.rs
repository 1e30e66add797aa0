//! Replication operations shared by the JSON API, the CLI (on the data directory) and the
//! console: system administrators only. Running a rule queues an execution that a server's
//! runner picks up (so the CLI, which has no server in-process, can ask for a run).

use berth_storage::{
    Direction, Execution, NameMapping, ReplicationRule, ReplicationStore, RuleTrigger, Task,
};
use serde::{Deserialize, Serialize};

use super::now;
use crate::admin::{bad_request, require_system_admin};
use crate::auth::{Auth, Caller};
use crate::error::{ApiError, ApiResult};

/// A rule as the API takes and shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// `push` (this Berth → registry) or `pull` (registry → this Berth).
    pub direction: String,
    /// A remote registry registered with `berth registry add`.
    pub registry: String,
    /// Repository glob (`*` one component, `**` any, `?`, `{a,b}`), or several separated
    /// by commas; default `**`. Names without wildcards need no `/v2/_catalog` at the source.
    #[serde(default = "all")]
    pub repositories: String,
    /// Tag glob; default `*`.
    #[serde(default = "star")]
    pub tags: String,
    /// Labels the source artifact must have: `key=value` or `key`, comma-separated (image
    /// config labels and OCI annotations); "" = no filter.
    #[serde(default)]
    pub labels: String,
    /// `keep`, `flatten:N` or `replace:FROM=TO`.
    #[serde(default = "keep")]
    pub mapping: String,
    /// `manual`, `on-push` (push rules) or `schedule:CRON`.
    #[serde(default = "manual")]
    pub trigger: String,
    #[serde(default)]
    pub replicate_deletions: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub description: String,
}

fn all() -> String {
    "**".into()
}
fn star() -> String {
    "*".into()
}
fn keep() -> String {
    "keep".into()
}
fn manual() -> String {
    "manual".into()
}
fn yes() -> bool {
    true
}

impl From<&ReplicationRule> for RuleSpec {
    fn from(r: &ReplicationRule) -> Self {
        RuleSpec {
            name: r.name.clone(),
            direction: r.direction.as_str().into(),
            registry: r.registry.clone(),
            repositories: r.repositories.clone(),
            tags: r.tags.clone(),
            labels: r.labels.clone(),
            mapping: r.mapping.to_string(),
            trigger: r.trigger.to_string(),
            replicate_deletions: r.replicate_deletions,
            enabled: r.enabled,
            description: r.description.clone(),
        }
    }
}

/// An execution as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecutionView {
    pub id: i64,
    pub rule: String,
    pub trigger: String,
    pub status: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub message: String,
    pub stop_requested: bool,
    pub tasks: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub bytes: u64,
}

impl From<Execution> for ExecutionView {
    fn from(e: Execution) -> Self {
        ExecutionView {
            id: e.id,
            rule: e.rule,
            trigger: e.trigger,
            status: e.status.as_str().into(),
            started_at: e.started_at,
            ended_at: e.ended_at,
            message: e.message,
            stop_requested: e.stop_requested,
            tasks: e.tasks,
            succeeded: e.succeeded,
            failed: e.failed,
            skipped: e.skipped,
            bytes: e.bytes,
        }
    }
}

/// A per-artifact task as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaskView {
    pub id: i64,
    pub operation: String,
    pub source: String,
    pub destination: String,
    pub reference: String,
    pub digest: String,
    pub status: String,
    pub bytes: u64,
    pub error: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

impl From<Task> for TaskView {
    fn from(t: Task) -> Self {
        TaskView {
            id: t.id,
            operation: t.operation,
            source: t.source,
            destination: t.destination,
            reference: t.reference,
            digest: t.digest,
            status: t.status.as_str().into(),
            bytes: t.bytes,
            error: t.error,
            started_at: t.started_at,
            ended_at: t.ended_at,
        }
    }
}

/// An execution with its tasks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecutionDetail {
    #[serde(flatten)]
    pub execution: ExecutionView,
    pub task_list: Vec<TaskView>,
}

fn glob_ok(what: &str, g: &str) -> ApiResult<()> {
    if g.is_empty() || g.len() > 256 || g.matches('*').count() > 8 || g.matches('{').count() > 2 {
        return Err(bad_request(format!(
            "{what} filter {g:?}: 1-256 characters, at most 8 '*' and 2 '{{…}}' groups"
        )));
    }
    Ok(())
}

/// Check a spec and turn it into a rule.
pub fn to_rule(spec: &RuleSpec, created_at: i64) -> ApiResult<ReplicationRule> {
    if !crate::admin::is_object_name(&spec.name) {
        return Err(bad_request(format!(
            "rule name {:?}: 1-64 lowercase letters, digits and . _ - (starting with a letter or digit)",
            spec.name
        )));
    }
    let direction: Direction = spec.direction.parse().map_err(bad_request)?;
    let mapping: NameMapping = spec.mapping.parse().map_err(bad_request)?;
    let trigger: RuleTrigger = spec.trigger.parse().map_err(bad_request)?;
    if let RuleTrigger::Schedule(c) = &trigger {
        super::parse_cron(c).map_err(bad_request)?;
    }
    if trigger == RuleTrigger::OnPush && direction == Direction::Pull {
        return Err(bad_request(
            "trigger on-push is for push rules (a pull rule cannot see the remote's pushes): use manual or schedule:CRON",
        ));
    }
    glob_ok("repository", &spec.repositories)?;
    glob_ok("tag", &spec.tags)?;
    super::labels::parse(&spec.labels).map_err(bad_request)?;
    Ok(ReplicationRule {
        name: spec.name.clone(),
        direction,
        registry: spec.registry.clone(),
        repositories: spec.repositories.clone(),
        tags: spec.tags.clone(),
        labels: spec.labels.trim().to_string(),
        mapping,
        trigger,
        replicate_deletions: spec.replicate_deletions,
        enabled: spec.enabled,
        description: spec.description.clone(),
        created_at,
        updated_at: now(),
    })
}

async fn audit(auth: &Auth, caller: &Caller, action: &str, resource: &str, detail: &str) {
    auth.audit(&caller.actor(), action, resource, caller.addr, detail)
        .await;
}

fn missing(name: &str) -> ApiError {
    ApiError::from(berth_storage::StorageError::NotFound(format!(
        "replication rule {name}"
    )))
}

pub async fn add_rule(
    auth: &Auth,
    store: &dyn ReplicationStore,
    caller: &Caller,
    spec: &RuleSpec,
) -> ApiResult<RuleSpec> {
    require_system_admin(caller, "manage replication rules")?;
    let rule = to_rule(spec, now())?;
    store.create_rule(&rule).await?;
    audit(
        auth,
        caller,
        "replication.rule.create",
        &format!("replication:{}", rule.name),
        &rule.trigger.to_string(),
    )
    .await;
    Ok(RuleSpec::from(&rule))
}

pub async fn update_rule(
    auth: &Auth,
    store: &dyn ReplicationStore,
    caller: &Caller,
    spec: &RuleSpec,
) -> ApiResult<RuleSpec> {
    require_system_admin(caller, "manage replication rules")?;
    let old = store
        .rule(&spec.name)
        .await?
        .ok_or_else(|| missing(&spec.name))?;
    let rule = to_rule(spec, old.created_at)?;
    store.update_rule(&rule).await?;
    audit(
        auth,
        caller,
        "replication.rule.update",
        &format!("replication:{}", rule.name),
        "",
    )
    .await;
    Ok(RuleSpec::from(&rule))
}

pub async fn list_rules(store: &dyn ReplicationStore, caller: &Caller) -> ApiResult<Vec<RuleSpec>> {
    require_system_admin(caller, "list replication rules")?;
    Ok(store
        .list_rules()
        .await?
        .iter()
        .map(RuleSpec::from)
        .collect())
}

pub async fn get_rule(
    store: &dyn ReplicationStore,
    caller: &Caller,
    name: &str,
) -> ApiResult<RuleSpec> {
    require_system_admin(caller, "read replication rules")?;
    let r = store.rule(name).await?.ok_or_else(|| missing(name))?;
    Ok(RuleSpec::from(&r))
}

pub async fn delete_rule(
    auth: &Auth,
    store: &dyn ReplicationStore,
    caller: &Caller,
    name: &str,
) -> ApiResult<()> {
    require_system_admin(caller, "manage replication rules")?;
    store.delete_rule(name).await?;
    audit(
        auth,
        caller,
        "replication.rule.delete",
        &format!("replication:{name}"),
        "",
    )
    .await;
    Ok(())
}

/// Queue a run of `name`; a server picks it up within a second. Returns the execution.
pub async fn run_rule(
    auth: &Auth,
    store: &dyn ReplicationStore,
    caller: &Caller,
    name: &str,
) -> ApiResult<ExecutionView> {
    require_system_admin(caller, "run replication rules")?;
    let rule = store.rule(name).await?.ok_or_else(|| missing(name))?;
    if !rule.enabled {
        return Err(bad_request(format!(
            "replication rule {name} is disabled; enable it first (berth replication rule update {name} --enabled true)"
        )));
    }
    let id = store.queue_execution(name, "manual", now()).await?;
    audit(
        auth,
        caller,
        "replication.run",
        &format!("replication:{name}"),
        &format!("execution {id}"),
    )
    .await;
    let e = store.execution(id).await?.ok_or_else(|| {
        ApiError::from(berth_storage::StorageError::NotFound(format!(
            "execution {id}"
        )))
    })?;
    Ok(e.into())
}

pub async fn executions(
    store: &dyn ReplicationStore,
    caller: &Caller,
    rule: Option<&str>,
    limit: u32,
) -> ApiResult<Vec<ExecutionView>> {
    require_system_admin(caller, "list replication executions")?;
    Ok(store
        .list_executions(rule, limit.clamp(1, 1000))
        .await?
        .into_iter()
        .map(Into::into)
        .collect())
}

pub async fn execution(
    store: &dyn ReplicationStore,
    caller: &Caller,
    id: i64,
) -> ApiResult<ExecutionDetail> {
    require_system_admin(caller, "read replication executions")?;
    let e = store.execution(id).await?.ok_or_else(|| {
        ApiError::from(berth_storage::StorageError::NotFound(format!(
            "replication execution {id}"
        )))
    })?;
    let tasks = store.tasks(id, 10_000).await?;
    Ok(ExecutionDetail {
        execution: e.into(),
        task_list: tasks.into_iter().map(Into::into).collect(),
    })
}

/// Ask execution `id` to stop (any replica running it sees the flag within a second).
pub async fn stop(
    auth: &Auth,
    store: &dyn ReplicationStore,
    caller: &Caller,
    id: i64,
) -> ApiResult<ExecutionView> {
    require_system_admin(caller, "stop replication executions")?;
    if !store.request_stop(id).await? {
        let e = store.execution(id).await?;
        return Err(bad_request(match e {
            None => format!("replication execution {id} does not exist"),
            Some(e) => format!(
                "replication execution {id} is not running (its status is {})",
                e.status.as_str()
            ),
        }));
    }
    audit(
        auth,
        caller,
        "replication.stop",
        &format!("replication-execution:{id}"),
        "",
    )
    .await;
    let e = store.execution(id).await?.ok_or_else(|| {
        ApiError::from(berth_storage::StorageError::NotFound(format!(
            "replication execution {id}"
        )))
    })?;
    Ok(e.into())
}
