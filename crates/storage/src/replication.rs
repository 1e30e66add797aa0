//! Replication rules, their executions and per-artifact tasks ([`ReplicationStore`]).
//!
//! The *engine* (what to copy, how, when) lives in the server (`berth_server::replication`);
//! a backend only keeps rules, an append-only record of executions and their tasks, a stop
//! flag an execution polls (so `stop` works from any replica), and the last fired schedule
//! slot of each rule, claimed by one conditional `UPDATE` so that replicas sharing
//! PostgreSQL start a scheduled execution once.
//!
//! SQLite ([`crate::sqlite_replication`]) and PostgreSQL ([`crate::postgres_replication`])
//! run the same statements (numbered `$N` parameters, first uses in order, work on both);
//! the implementation is written once, in [`impl_replication_store!`].

use async_trait::async_trait;

use crate::{StorageError, StorageResult};

/// Which way a rule copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This Berth → the remote registry.
    Push,
    /// The remote registry → this Berth.
    Pull,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
        }
    }
}

impl std::str::FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "push" => Ok(Direction::Push),
            "pull" => Ok(Direction::Pull),
            _ => Err(format!("direction {s:?}: use push or pull")),
        }
    }
}

/// How a source repository name becomes the destination's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMapping {
    /// The same name.
    Keep,
    /// Drop this many leading path components (`a/b/c` flattened 1 → `b/c`), never the
    /// last one.
    Flatten(u32),
    /// Replace the leading `from` (whole components; empty = none) by `to` (empty = none):
    /// `library/` → `mirror/library/` is `Replace { from: "", to: "mirror" }`.
    Replace { from: String, to: String },
}

impl NameMapping {
    /// Apply the mapping to a repository name.
    pub fn apply(&self, repo: &str) -> String {
        match self {
            NameMapping::Keep => repo.to_string(),
            NameMapping::Flatten(n) => {
                let parts: Vec<&str> = repo.split('/').collect();
                let drop = (*n as usize).min(parts.len().saturating_sub(1));
                parts[drop..].join("/")
            }
            NameMapping::Replace { from, to } => {
                let rest = if from.is_empty() {
                    Some(repo)
                } else if repo == from {
                    Some("")
                } else {
                    repo.strip_prefix(from.as_str())
                        .and_then(|r| r.strip_prefix('/'))
                };
                match rest {
                    Some(rest) => [to.as_str(), rest]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("/"),
                    None => repo.to_string(),
                }
            }
        }
    }
}

impl std::fmt::Display for NameMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameMapping::Keep => write!(f, "keep"),
            NameMapping::Flatten(n) => write!(f, "flatten:{n}"),
            NameMapping::Replace { from, to } => write!(f, "replace:{from}={to}"),
        }
    }
}

impl std::str::FromStr for NameMapping {
    type Err = String;
    /// `keep`, `flatten:N`, `replace:FROM=TO` (either side may be empty).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "name mapping {s:?}: use keep, flatten:N or replace:FROM=TO (FROM or TO may be empty)"
            )
        };
        if s == "keep" || s.is_empty() {
            return Ok(NameMapping::Keep);
        }
        if let Some(n) = s.strip_prefix("flatten:") {
            return n.parse().map(NameMapping::Flatten).map_err(|_| bad());
        }
        if let Some(r) = s.strip_prefix("replace:") {
            let (from, to) = r.split_once('=').ok_or_else(bad)?;
            let clean = |p: &str| p.trim_matches('/').to_string();
            return Ok(NameMapping::Replace {
                from: clean(from),
                to: clean(to),
            });
        }
        Err(bad())
    }
}

/// What starts a rule's executions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleTrigger {
    /// Only `berth replication rule run`, the API or the console.
    Manual,
    /// A cron expression (5 fields, or 6 with seconds), UTC.
    Schedule(String),
    /// Every push to a matching repository (push rules only); manual runs too.
    OnPush,
}

impl std::fmt::Display for RuleTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleTrigger::Manual => write!(f, "manual"),
            RuleTrigger::Schedule(c) => write!(f, "schedule:{c}"),
            RuleTrigger::OnPush => write!(f, "on-push"),
        }
    }
}

impl std::str::FromStr for RuleTrigger {
    type Err = String;
    /// `manual`, `on-push`, `schedule:CRON`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "manual" | "" => Ok(RuleTrigger::Manual),
            "on-push" | "on_push" | "event" => Ok(RuleTrigger::OnPush),
            _ => match s.strip_prefix("schedule:") {
                Some(c) if !c.trim().is_empty() => Ok(RuleTrigger::Schedule(c.trim().to_string())),
                _ => Err(format!(
                    "trigger {s:?}: use manual, on-push or schedule:\"CRON\" (e.g. schedule:\"0 */6 * * *\")"
                )),
            },
        }
    }
}

/// A replication rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationRule {
    /// `[a-z0-9][a-z0-9._-]{0,63}`, unique.
    pub name: String,
    pub direction: Direction,
    /// The remote registry (`remote_registries.name`).
    pub registry: String,
    /// Source repositories, a glob (`*` within a component, `**` across, `?`, `{a,b}`).
    pub repositories: String,
    /// Source tags, a glob; `**`/`*` = every tag.
    pub tags: String,
    /// Labels the source artifact must have (`key=value` or `key`, comma-separated; ""
    /// = no filter): image config labels and OCI annotations.
    pub labels: String,
    pub mapping: NameMapping,
    pub trigger: RuleTrigger,
    /// Delete at the destination what was deleted at the source (by the same rule).
    pub replicate_deletions: bool,
    pub enabled: bool,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The state of an execution or a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Stopped,
    /// A task with nothing to do (the destination already had the artifact).
    Skipped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Stopped => "stopped",
            RunStatus::Skipped => "skipped",
        }
    }
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Pending | RunStatus::Running)
    }
}

impl std::str::FromStr for RunStatus {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, StorageError> {
        Ok(match s {
            "pending" => RunStatus::Pending,
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "stopped" => RunStatus::Stopped,
            "skipped" => RunStatus::Skipped,
            _ => {
                return Err(StorageError::Database(format!(
                    "invalid replication status {s:?} in database"
                )));
            }
        })
    }
}

/// One run of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    pub id: i64,
    pub rule: String,
    /// `manual`, `schedule`, `on-push`, `deletion`.
    pub trigger: String,
    pub status: RunStatus,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// Why it failed or was stopped, "" otherwise.
    pub message: String,
    pub stop_requested: bool,
    /// Counted from the tasks.
    pub tasks: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub bytes: u64,
}

/// One artifact (a tag or a digest of one repository) of an execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: i64,
    pub execution: i64,
    /// `copy` or `delete`.
    pub operation: String,
    /// Source repository.
    pub source: String,
    /// Destination repository (after the name mapping).
    pub destination: String,
    /// Tag, or digest when untagged.
    pub reference: String,
    /// The top manifest's digest, once known; "" before.
    pub digest: String,
    pub status: RunStatus,
    pub bytes: u64,
    pub error: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

/// Rules, executions and tasks. See the module documentation.
#[async_trait]
pub trait ReplicationStore: Send + Sync + 'static {
    /// `AlreadyExists` for a taken name, `NotFound` for an unknown registry.
    async fn create_rule(&self, r: &ReplicationRule) -> StorageResult<()>;
    async fn rule(&self, name: &str) -> StorageResult<Option<ReplicationRule>>;
    /// By name.
    async fn list_rules(&self) -> StorageResult<Vec<ReplicationRule>>;
    /// `NotFound` if missing.
    async fn update_rule(&self, r: &ReplicationRule) -> StorageResult<()>;
    /// Deletes its executions and tasks too. `NotFound` if missing.
    async fn delete_rule(&self, name: &str) -> StorageResult<()>;
    /// Record the schedule slot (unix seconds of the cron tick) the caller is about to run;
    /// `true` for exactly one caller per slot and rule, whatever the number of replicas.
    async fn claim_schedule_slot(&self, rule: &str, slot: i64) -> StorageResult<bool>;

    /// A new running execution; returns its id.
    async fn start_execution(&self, rule: &str, trigger: &str, at: i64) -> StorageResult<i64>;
    /// A new `pending` execution, for a server to pick up with [`Self::claim_queued`] (how
    /// the CLI, which works on the database, asks a running server to run a rule).
    async fn queue_execution(&self, rule: &str, trigger: &str, at: i64) -> StorageResult<i64>;
    /// Turn the oldest `pending` execution into `running` (started at `at`) and return it;
    /// each is handed to exactly one caller.
    async fn claim_queued(&self, at: i64) -> StorageResult<Option<Execution>>;
    /// Set the final status (once; later calls change nothing). `NotFound` if missing.
    async fn finish_execution(
        &self,
        id: i64,
        status: RunStatus,
        message: &str,
        at: i64,
    ) -> StorageResult<()>;
    /// Ask a running execution to stop (a pending one is stopped at once); `false` if it
    /// is neither.
    async fn request_stop(&self, id: i64) -> StorageResult<bool>;
    async fn execution(&self, id: i64) -> StorageResult<Option<Execution>>;
    /// Newest first, at most `limit`, of one rule or all.
    async fn list_executions(
        &self,
        rule: Option<&str>,
        limit: u32,
    ) -> StorageResult<Vec<Execution>>;
    /// Executions left `running` by a process that died (called at start by one replica
    /// per rule run; here: those started before `before`) become `failed`.
    async fn fail_stale_executions(&self, before: i64, message: &str) -> StorageResult<u64>;
    /// The process running execution `id` is alive at `at` (its `heartbeat_at`; only
    /// while the execution is `running`).
    async fn heartbeat_execution(&self, id: i64, at: i64) -> StorageResult<()>;
    /// Running executions whose last heartbeat (and start) is older than `before` — their
    /// replica died — become `failed` with `message`, ended at `at`; how many.
    async fn fail_silent_executions(
        &self,
        before: i64,
        at: i64,
        message: &str,
    ) -> StorageResult<u64>;

    /// Add the tasks of a plan (status and times as given) in one transaction; their ids,
    /// in order. One commit for the whole plan: a run of 100 images would otherwise wait
    /// for 100 synchronous commits before its first copy.
    async fn add_tasks(&self, tasks: &[Task]) -> StorageResult<Vec<i64>>;
    async fn update_task(
        &self,
        id: i64,
        status: RunStatus,
        digest: &str,
        bytes: u64,
        error: &str,
        at: i64,
    ) -> StorageResult<()>;
    /// In id order, at most `limit`.
    async fn tasks(&self, execution: i64, limit: u32) -> StorageResult<Vec<Task>>;
    /// The source repositories earlier executions of `rule` copied from (a `copy` task that
    /// succeeded or was skipped), sorted, at most `limit`: how a run with deletions finds
    /// repositories deleted at the source since.
    async fn copied_sources(&self, rule: &str, limit: u32) -> StorageResult<Vec<String>>;
}

pub(crate) type RuleRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    bool,
    bool,
    String,
    i64,
    i64,
    String,
);

pub(crate) fn rule_from_row(r: RuleRow) -> StorageResult<ReplicationRule> {
    let bad = |e: String| StorageError::Database(format!("replication rule {}: {e}", r.0));
    Ok(ReplicationRule {
        direction: r.1.parse().map_err(bad)?,
        registry: r.2.clone(),
        repositories: r.3.clone(),
        tags: r.4.clone(),
        mapping: r.5.parse().map_err(bad)?,
        trigger: r.6.parse().map_err(bad)?,
        replicate_deletions: r.7,
        enabled: r.8,
        description: r.9.clone(),
        created_at: r.10,
        updated_at: r.11,
        labels: r.12,
        name: r.0,
    })
}

pub(crate) type ExecRow = (
    i64,
    String,
    String,
    String,
    i64,
    Option<i64>,
    String,
    bool,
    i64,
    i64,
    i64,
    i64,
    i64,
);

pub(crate) fn exec_from_row(r: ExecRow) -> StorageResult<Execution> {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Execution {
        id: r.0,
        rule: r.1,
        trigger: r.2,
        status: r.3.parse()?,
        started_at: r.4,
        ended_at: r.5,
        message: r.6,
        stop_requested: r.7,
        tasks: u(r.8),
        succeeded: u(r.9),
        failed: u(r.10),
        skipped: u(r.11),
        bytes: u(r.12),
    })
}

pub(crate) type TaskRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    Option<i64>,
);

pub(crate) fn task_from_row(r: TaskRow) -> StorageResult<Task> {
    Ok(Task {
        id: r.0,
        execution: r.1,
        operation: r.2,
        source: r.3,
        destination: r.4,
        reference: r.5,
        digest: r.6,
        status: r.7.parse()?,
        bytes: u64::try_from(r.8).unwrap_or(0),
        error: r.9,
        started_at: r.10,
        ended_at: r.11,
    })
}

pub(crate) fn map_rule_write(e: sqlx::Error, r: &ReplicationRule) -> StorageError {
    match e.as_database_error().map(|d| d.kind()) {
        Some(sqlx::error::ErrorKind::UniqueViolation) => {
            StorageError::AlreadyExists(format!("replication rule {}", r.name))
        }
        Some(sqlx::error::ErrorKind::ForeignKeyViolation) => StorageError::NotFound(format!(
            "remote registry {} (register it first: berth registry add)",
            r.registry
        )),
        _ => e.into(),
    }
}

/// The columns of `replication_rules`, in [`RuleRow`]'s order (one list for every query).
macro_rules! rule_columns {
    () => {
        "name, direction, registry, repositories, tags, mapping, trigger_spec, replicate_deletions, enabled, description, created_at, updated_at, labels"
    };
}
pub(crate) use rule_columns;

/// The one implementation of [`ReplicationStore`] for a backend: `$ty` the store, `$db`
/// its sqlx database, `$writer`/`$reader` the fields holding its pools.
macro_rules! impl_replication_store {
    ($ty:ty, $db:ty, $writer:ident, $reader:ident) => {
        impl $ty {
            async fn insert_execution(
                &self,
                rule: &str,
                trigger: &str,
                status: &str,
                at: i64,
            ) -> $crate::StorageResult<i64> {
                sqlx::query_scalar::<$db, i64>(
                    "INSERT INTO replication_executions (rule, trigger_kind, status, started_at, message, stop_requested, heartbeat_at) \
                     VALUES ($1, $2, $3, $4, '', FALSE, $4) RETURNING id",
                )
                .bind(rule)
                .bind(trigger)
                .bind(status)
                .bind(at)
                .fetch_one(&self.$writer)
                .await
                .map_err(|e| match e.as_database_error().map(|d| d.kind()) {
                    Some(sqlx::error::ErrorKind::ForeignKeyViolation) => {
                        $crate::StorageError::NotFound(format!("replication rule {rule}"))
                    }
                    _ => e.into(),
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::replication::ReplicationStore for $ty {
            async fn create_rule(
                &self,
                r: &$crate::replication::ReplicationRule,
            ) -> $crate::StorageResult<()> {
                let sql = concat!("INSERT INTO replication_rules (", $crate::replication::rule_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)");
                sqlx::query::<$db>(sql)
                    .bind(&r.name)
                    .bind(r.direction.as_str())
                    .bind(&r.registry)
                    .bind(&r.repositories)
                    .bind(&r.tags)
                    .bind(r.mapping.to_string())
                    .bind(r.trigger.to_string())
                    .bind(r.replicate_deletions)
                    .bind(r.enabled)
                    .bind(&r.description)
                    .bind(r.created_at)
                    .bind(r.updated_at)
                    .bind(&r.labels)
                    .execute(&self.$writer)
                    .await
                    .map_err(|e| $crate::replication::map_rule_write(e, r))?;
                Ok(())
            }

            async fn rule(
                &self,
                name: &str,
            ) -> $crate::StorageResult<Option<$crate::replication::ReplicationRule>> {
                let sql = concat!("SELECT ", $crate::replication::rule_columns!(), " FROM replication_rules WHERE name = $1");
                let row: Option<$crate::replication::RuleRow> = sqlx::query_as::<$db, _>(sql)
                    .bind(name)
                    .fetch_optional(&self.$reader)
                    .await?;
                row.map($crate::replication::rule_from_row).transpose()
            }

            async fn list_rules(
                &self,
            ) -> $crate::StorageResult<Vec<$crate::replication::ReplicationRule>> {
                let sql = concat!("SELECT ", $crate::replication::rule_columns!(), " FROM replication_rules ORDER BY name");
                let rows: Vec<$crate::replication::RuleRow> = sqlx::query_as::<$db, _>(sql)
                    .fetch_all(&self.$reader)
                    .await?;
                rows.into_iter()
                    .map($crate::replication::rule_from_row)
                    .collect()
            }

            async fn update_rule(
                &self,
                r: &$crate::replication::ReplicationRule,
            ) -> $crate::StorageResult<()> {
                let done = sqlx::query::<$db>(
                    "UPDATE replication_rules SET direction = $1, registry = $2, repositories = $3, \
                     tags = $4, mapping = $5, trigger_spec = $6, replicate_deletions = $7, enabled = $8, \
                     description = $9, updated_at = $10, labels = $11 WHERE name = $12",
                )
                .bind(r.direction.as_str())
                .bind(&r.registry)
                .bind(&r.repositories)
                .bind(&r.tags)
                .bind(r.mapping.to_string())
                .bind(r.trigger.to_string())
                .bind(r.replicate_deletions)
                .bind(r.enabled)
                .bind(&r.description)
                .bind(r.updated_at)
                .bind(&r.labels)
                .bind(&r.name)
                .execute(&self.$writer)
                .await
                .map_err(|e| $crate::replication::map_rule_write(e, r))?;
                if done.rows_affected() == 0 {
                    return Err($crate::StorageError::NotFound(format!(
                        "replication rule {}",
                        r.name
                    )));
                }
                Ok(())
            }

            async fn delete_rule(&self, name: &str) -> $crate::StorageResult<()> {
                let mut tx = self.$writer.begin().await?;
                sqlx::query::<$db>(
                    "DELETE FROM replication_tasks WHERE execution IN \
                     (SELECT id FROM replication_executions WHERE rule = $1)",
                )
                .bind(name)
                .execute(&mut *tx)
                .await?;
                sqlx::query::<$db>("DELETE FROM replication_executions WHERE rule = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                let done = sqlx::query::<$db>("DELETE FROM replication_rules WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::StorageError::NotFound(format!(
                        "replication rule {name}"
                    )));
                }
                tx.commit().await?;
                Ok(())
            }

            async fn claim_schedule_slot(
                &self,
                rule: &str,
                slot: i64,
            ) -> $crate::StorageResult<bool> {
                let done = sqlx::query::<$db>(
                    "UPDATE replication_rules SET last_slot = $1 WHERE name = $2 AND last_slot < $1",
                )
                .bind(slot)
                .bind(rule)
                .execute(&self.$writer)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn start_execution(
                &self,
                rule: &str,
                trigger: &str,
                at: i64,
            ) -> $crate::StorageResult<i64> {
                self.insert_execution(rule, trigger, "running", at).await
            }

            async fn queue_execution(
                &self,
                rule: &str,
                trigger: &str,
                at: i64,
            ) -> $crate::StorageResult<i64> {
                self.insert_execution(rule, trigger, "pending", at).await
            }

            async fn claim_queued(
                &self,
                at: i64,
            ) -> $crate::StorageResult<Option<$crate::replication::Execution>> {
                loop {
                    let next: Option<i64> = sqlx::query_scalar::<$db, i64>(
                        "SELECT id FROM replication_executions WHERE status = 'pending' ORDER BY id LIMIT 1",
                    )
                    .fetch_optional(&self.$writer)
                    .await?;
                    let Some(id) = next else { return Ok(None) };
                    let done = sqlx::query::<$db>(
                        "UPDATE replication_executions SET status = 'running', started_at = $1, heartbeat_at = $1 \
                         WHERE id = $2 AND status = 'pending'",
                    )
                    .bind(at)
                    .bind(id)
                    .execute(&self.$writer)
                    .await?;
                    if done.rows_affected() == 1 {
                        return self.execution(id).await;
                    }
                }
            }


            async fn finish_execution(
                &self,
                id: i64,
                status: $crate::replication::RunStatus,
                message: &str,
                at: i64,
            ) -> $crate::StorageResult<()> {
                let done = sqlx::query::<$db>(
                    "UPDATE replication_executions SET status = $1, message = $2, ended_at = $3 \
                     WHERE id = $4 AND status = 'running'",
                )
                .bind(status.as_str())
                .bind(message)
                .bind(at)
                .bind(id)
                .execute(&self.$writer)
                .await?;
                if done.rows_affected() == 0 && self.execution(id).await?.is_none() {
                    return Err($crate::StorageError::NotFound(format!(
                        "replication execution {id}"
                    )));
                }
                Ok(())
            }

            async fn request_stop(&self, id: i64) -> $crate::StorageResult<bool> {
                let done = sqlx::query::<$db>(
                    "UPDATE replication_executions SET stop_requested = TRUE \
                     WHERE id = $1 AND status IN ('running', 'pending')",
                )
                .bind(id)
                .execute(&self.$writer)
                .await?;
                sqlx::query::<$db>(
                    "UPDATE replication_executions SET status = 'stopped', message = 'stopped before it started', \
                     ended_at = started_at WHERE id = $1 AND status = 'pending'",
                )
                .bind(id)
                .execute(&self.$writer)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn execution(
                &self,
                id: i64,
            ) -> $crate::StorageResult<Option<$crate::replication::Execution>> {
                let sql = concat!("SELECT ", "e.id, e.rule, e.trigger_kind, e.status, e.started_at, e.ended_at, e.message, e.stop_requested, \
     (SELECT COUNT(*) FROM replication_tasks t WHERE t.execution = e.id), \
     (SELECT COUNT(*) FROM replication_tasks t WHERE t.execution = e.id AND t.status = 'succeeded'), \
     (SELECT COUNT(*) FROM replication_tasks t WHERE t.execution = e.id AND t.status = 'failed'), \
     (SELECT COUNT(*) FROM replication_tasks t WHERE t.execution = e.id AND t.status = 'skipped'), \
     (SELECT CAST(COALESCE(SUM(t.bytes), 0) AS BIGINT) FROM replication_tasks t WHERE t.execution = e.id)", " FROM replication_executions e WHERE e.id = $1");
                let row: Option<$crate::replication::ExecRow> = sqlx::query_as::<$db, _>(sql)
                    .bind(id)
                    .fetch_optional(&self.$reader)
                    .await?;
                row.map($crate::replication::exec_from_row).transpose()
            }

            async fn list_executions(
                &self,
                rule: Option<&str>,
                limit: u32,
            ) -> $crate::StorageResult<Vec<$crate::replication::Execution>> {
                let sql = concat!("SELECT ", "e.id, e.rule, e.trigger_kind, e.status, e.started_at, e.ended_at, e.message, e.stop_requested, \
     (SELECT COUNT(*) FROM replication_tasks t WHERE t.execution = e.id), \
     (SELECT COUNT(*) FROM replication_tasks t WHERE t.execution = e.id AND t.status = 'succeeded'), \
     (SELECT COUNT(*) FROM replication_tasks t WHERE t.execution = e.id AND t.status = 'failed'), \
     (SELECT COUNT(*) FROM replication_tasks t WHERE t.execution = e.id AND t.status = 'skipped'), \
     (SELECT CAST(COALESCE(SUM(t.bytes), 0) AS BIGINT) FROM replication_tasks t WHERE t.execution = e.id)", " FROM replication_executions e WHERE ($1 = '' OR e.rule = $1) \
                     ORDER BY e.id DESC LIMIT $2");
                let rows: Vec<$crate::replication::ExecRow> = sqlx::query_as::<$db, _>(sql)
                    .bind(rule.unwrap_or(""))
                    .bind(i64::from(limit))
                    .fetch_all(&self.$reader)
                    .await?;
                rows.into_iter()
                    .map($crate::replication::exec_from_row)
                    .collect()
            }

            async fn fail_stale_executions(
                &self,
                before: i64,
                message: &str,
            ) -> $crate::StorageResult<u64> {
                let done = sqlx::query::<$db>(
                    "UPDATE replication_executions SET status = 'failed', message = $1, ended_at = $2 \
                     WHERE status = 'running' AND started_at < $2",
                )
                .bind(message)
                .bind(before)
                .execute(&self.$writer)
                .await?;
                Ok(done.rows_affected())
            }

            async fn heartbeat_execution(&self, id: i64, at: i64) -> $crate::StorageResult<()> {
                sqlx::query::<$db>(
                    "UPDATE replication_executions SET heartbeat_at = $1 \
                     WHERE id = $2 AND status = 'running'",
                )
                .bind(at)
                .bind(id)
                .execute(&self.$writer)
                .await?;
                Ok(())
            }

            async fn fail_silent_executions(
                &self,
                before: i64,
                at: i64,
                message: &str,
            ) -> $crate::StorageResult<u64> {
                let done = sqlx::query::<$db>(
                    "UPDATE replication_executions SET status = 'failed', message = $1, ended_at = $2 \
                     WHERE status = 'running' AND heartbeat_at < $3 AND started_at < $3",
                )
                .bind(message)
                .bind(at)
                .bind(before)
                .execute(&self.$writer)
                .await?;
                Ok(done.rows_affected())
            }

            async fn add_tasks(
                &self,
                tasks: &[$crate::replication::Task],
            ) -> $crate::StorageResult<Vec<i64>> {
                let mut tx = self.$writer.begin().await?;
                let mut ids = Vec::with_capacity(tasks.len());
                for t in tasks {
                    let id: i64 = sqlx::query_scalar::<$db, i64>(
                        "INSERT INTO replication_tasks (execution, operation, source, destination, reference, \
                         digest, status, bytes, error, started_at, ended_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                    )
                    .bind(t.execution)
                    .bind(&t.operation)
                    .bind(&t.source)
                    .bind(&t.destination)
                    .bind(&t.reference)
                    .bind(&t.digest)
                    .bind(t.status.as_str())
                    .bind(i64::try_from(t.bytes).unwrap_or(i64::MAX))
                    .bind(&t.error)
                    .bind(t.started_at)
                    .bind(t.ended_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| match e.as_database_error().map(|d| d.kind()) {
                        Some(sqlx::error::ErrorKind::ForeignKeyViolation) => {
                            $crate::StorageError::NotFound(format!(
                                "replication execution {}",
                                t.execution
                            ))
                        }
                        _ => e.into(),
                    })?;
                    ids.push(id);
                }
                tx.commit().await?;
                Ok(ids)
            }

            async fn update_task(
                &self,
                id: i64,
                status: $crate::replication::RunStatus,
                digest: &str,
                bytes: u64,
                error: &str,
                at: i64,
            ) -> $crate::StorageResult<()> {
                let ended: Option<i64> = status.is_final().then_some(at);
                let done = sqlx::query::<$db>(
                    "UPDATE replication_tasks SET status = $1, digest = $2, bytes = $3, error = $4, \
                     ended_at = $5 WHERE id = $6",
                )
                .bind(status.as_str())
                .bind(digest)
                .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
                .bind(error)
                .bind(ended)
                .bind(id)
                .execute(&self.$writer)
                .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::StorageError::NotFound(format!(
                        "replication task {id}"
                    )));
                }
                Ok(())
            }

            async fn copied_sources(
                &self,
                rule: &str,
                limit: u32,
            ) -> $crate::StorageResult<Vec<String>> {
                Ok(sqlx::query_scalar::<$db, String>(
                    "SELECT DISTINCT t.source FROM replication_tasks t \
                     JOIN replication_executions e ON e.id = t.execution \
                     WHERE e.rule = $1 AND t.operation = 'copy' \
                     AND t.status IN ('succeeded', 'skipped') ORDER BY t.source LIMIT $2",
                )
                .bind(rule)
                .bind(i64::from(limit))
                .fetch_all(&self.$reader)
                .await?)
            }

            async fn tasks(
                &self,
                execution: i64,
                limit: u32,
            ) -> $crate::StorageResult<Vec<$crate::replication::Task>> {
                let sql = concat!("SELECT ", "id, execution, operation, source, destination, reference, digest, status, bytes, error, started_at, ended_at", " FROM replication_tasks WHERE execution = $1 ORDER BY id LIMIT $2");
                let rows: Vec<$crate::replication::TaskRow> = sqlx::query_as::<$db, _>(sql)
                    .bind(execution)
                    .bind(i64::from(limit))
                    .fetch_all(&self.$reader)
                    .await?;
                rows.into_iter()
                    .map($crate::replication::task_from_row)
                    .collect()
            }
        }
    };
}
pub(crate) use impl_replication_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        let m: NameMapping = "flatten:1".parse().unwrap();
        assert_eq!(m.apply("a/b/c"), "b/c");
        assert_eq!(m.apply("c"), "c");
        let m: NameMapping = "replace:=mirror".parse().unwrap();
        assert_eq!(m.apply("library/x"), "mirror/library/x");
        let m: NameMapping = "replace:library=prod".parse().unwrap();
        assert_eq!(m.apply("library/x"), "prod/x");
        assert_eq!(m.apply("libraryx/y"), "libraryx/y");
        assert_eq!(m.to_string(), "replace:library=prod");
        assert_eq!(NameMapping::Keep.apply("a/b"), "a/b");
        assert!("flatten:x".parse::<NameMapping>().is_err());
        let t: RuleTrigger = "schedule:*/5 * * * *".parse().unwrap();
        assert_eq!(t.to_string().parse::<RuleTrigger>().unwrap(), t);
    }
}
