//! `berth replication rule add|update|list|rm|run`, `berth replication executions`,
//! `berth replication stop ID`: replication rules and their executions, on the server's
//! data directory (as `berth project` does). `rule run` queues an execution that the
//! running server picks up within a second; `stop` sets a flag the execution polls.

use anyhow::{Context, anyhow};
use berth_server::admin::format_time;
use berth_server::error::ApiError;
use berth_server::replication::ops::{self, RuleSpec};
use clap::{Args, Subcommand};

use super::admin::{Common, open, show, table};

#[derive(Subcommand)]
pub enum ReplicationCommand {
    /// Replication rules.
    #[command(subcommand)]
    Rule(RuleCommand),
    /// Executions, newest first; with --id one execution and its per-artifact tasks.
    Executions(ExecArgs),
    /// Stop a running (or queued) execution.
    Stop(StopArgs),
}

#[derive(Subcommand)]
pub enum RuleCommand {
    /// Add a rule.
    Add(RuleArgs),
    /// Replace a rule's settings.
    Update(RuleArgs),
    /// List the rules.
    List(CommonOnly),
    /// Delete a rule and its execution history.
    Rm(NameArgs),
    /// Run a rule now (the running server picks it up).
    Run(NameArgs),
}

#[derive(Args)]
pub struct RuleArgs {
    /// The rule's name.
    name: String,
    /// push (this Berth → the registry) or pull (the registry → this Berth).
    #[arg(long)]
    direction: String,
    /// The remote registry (see `berth registry add`).
    #[arg(long)]
    registry: String,
    /// Repositories to replicate: a glob (`*` one path component, `**` any, `?`, `{a,b}`).
    #[arg(long, default_value = "**")]
    repositories: String,
    /// Tags to replicate: a glob.
    #[arg(long, default_value = "*")]
    tags: String,
    /// Only artifacts with these labels (all of them): KEY=VALUE or KEY, comma-separated;
    /// image config labels and OCI annotations at the source.
    #[arg(long, default_value = "")]
    labels: String,
    /// Destination names: keep, flatten:N (drop N leading components) or replace:FROM=TO.
    #[arg(long, default_value = "keep")]
    mapping: String,
    /// manual, on-push (push rules) or schedule:CRON (UTC; 5 fields or 6 with seconds).
    #[arg(long, default_value = "manual")]
    trigger: String,
    /// Also delete at the destination what was deleted at the source.
    #[arg(long)]
    replicate_deletions: bool,
    /// Create the rule disabled.
    #[arg(long)]
    disabled: bool,
    #[arg(long, default_value = "")]
    description: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct CommonOnly {
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct NameArgs {
    name: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Only this rule's executions.
    #[arg(long)]
    rule: Option<String>,
    /// Show one execution with its tasks.
    #[arg(long)]
    id: Option<i64>,
    /// At most this many executions.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct StopArgs {
    /// The execution's id.
    id: i64,
    #[command(flatten)]
    common: Common,
}

fn fail(e: ApiError) -> anyhow::Error {
    anyhow!("{}", e.detail)
}

async fn store(
    common: &Common,
) -> anyhow::Result<std::sync::Arc<dyn berth_storage::ReplicationStore>> {
    let database = berth_server::config::DatabaseConfig {
        url: common.database_url.clone(),
        ..Default::default()
    };
    let stores = berth_server::serve::open_metadata(&common.data, &database)
        .await
        .with_context(|| format!("opening the data directory {}", common.data.display()))?;
    Ok(stores.replication)
}

fn spec(a: &RuleArgs) -> RuleSpec {
    RuleSpec {
        name: a.name.clone(),
        direction: a.direction.clone(),
        registry: a.registry.clone(),
        repositories: a.repositories.clone(),
        tags: a.tags.clone(),
        labels: a.labels.clone(),
        mapping: a.mapping.clone(),
        trigger: a.trigger.clone(),
        replicate_deletions: a.replicate_deletions,
        enabled: !a.disabled,
        description: a.description.clone(),
    }
}

fn rule_rows(rules: &[RuleSpec]) -> String {
    table(
        &[
            "NAME",
            "DIRECTION",
            "REGISTRY",
            "REPOSITORIES",
            "TAGS",
            "LABELS",
            "MAPPING",
            "TRIGGER",
            "DELETIONS",
            "ENABLED",
        ],
        &rules
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.direction.clone(),
                    r.registry.clone(),
                    r.repositories.clone(),
                    r.tags.clone(),
                    r.labels.clone(),
                    r.mapping.clone(),
                    r.trigger.clone(),
                    r.replicate_deletions.to_string(),
                    r.enabled.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

fn exec_rows(list: &[ops::ExecutionView]) -> String {
    table(
        &[
            "ID", "RULE", "TRIGGER", "STATUS", "STARTED", "ENDED", "TASKS", "OK", "FAILED",
            "SKIPPED", "BYTES", "MESSAGE",
        ],
        &list
            .iter()
            .map(|e| {
                vec![
                    e.id.to_string(),
                    e.rule.clone(),
                    e.trigger.clone(),
                    e.status.clone(),
                    format_time(e.started_at),
                    e.ended_at.map(format_time).unwrap_or_default(),
                    e.tasks.to_string(),
                    e.succeeded.to_string(),
                    e.failed.to_string(),
                    e.skipped.to_string(),
                    e.bytes.to_string(),
                    e.message.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    )
}

pub fn run(command: ReplicationCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match command {
            ReplicationCommand::Rule(RuleCommand::Add(a)) => {
                let (auth, caller) = open(&a.common).await?;
                let s = store(&a.common).await?;
                let r = ops::add_rule(&auth, s.as_ref(), &caller, &spec(&a))
                    .await
                    .map_err(fail)?;
                show(a.common.output, &r, || rule_rows(std::slice::from_ref(&r)))
            }
            ReplicationCommand::Rule(RuleCommand::Update(a)) => {
                let (auth, caller) = open(&a.common).await?;
                let s = store(&a.common).await?;
                let r = ops::update_rule(&auth, s.as_ref(), &caller, &spec(&a))
                    .await
                    .map_err(fail)?;
                show(a.common.output, &r, || rule_rows(std::slice::from_ref(&r)))
            }
            ReplicationCommand::Rule(RuleCommand::List(a)) => {
                let (_, caller) = open(&a.common).await?;
                let s = store(&a.common).await?;
                let list = ops::list_rules(s.as_ref(), &caller).await.map_err(fail)?;
                show(a.common.output, &list, || rule_rows(&list))
            }
            ReplicationCommand::Rule(RuleCommand::Rm(a)) => {
                let (auth, caller) = open(&a.common).await?;
                let s = store(&a.common).await?;
                ops::delete_rule(&auth, s.as_ref(), &caller, &a.name)
                    .await
                    .map_err(fail)?;
                show(a.common.output, &serde_json::json!({"deleted": a.name}), || {
                    format!("deleted replication rule {}\n", a.name)
                })
            }
            ReplicationCommand::Rule(RuleCommand::Run(a)) => {
                let (auth, caller) = open(&a.common).await?;
                let s = store(&a.common).await?;
                let e = ops::run_rule(&auth, s.as_ref(), &caller, &a.name)
                    .await
                    .map_err(fail)?;
                show(a.common.output, &e, || {
                    format!(
                        "queued execution {} of rule {}; follow it with: berth replication executions --id {}\n",
                        e.id, a.name, e.id
                    )
                })
            }
            ReplicationCommand::Executions(a) => {
                let (_, caller) = open(&a.common).await?;
                let s = store(&a.common).await?;
                if let Some(id) = a.id {
                    let d = ops::execution(s.as_ref(), &caller, id).await.map_err(fail)?;
                    return show(a.common.output, &d, || {
                        let mut out = exec_rows(std::slice::from_ref(&d.execution));
                        out.push('\n');
                        out.push_str(&table(
                            &[
                                "TASK", "OP", "SOURCE", "DESTINATION", "REFERENCE", "STATUS",
                                "BYTES", "DIGEST", "ERROR",
                            ],
                            &d.task_list
                                .iter()
                                .map(|t| {
                                    vec![
                                        t.id.to_string(),
                                        t.operation.clone(),
                                        t.source.clone(),
                                        t.destination.clone(),
                                        t.reference.clone(),
                                        t.status.clone(),
                                        t.bytes.to_string(),
                                        t.digest.clone(),
                                        t.error.clone(),
                                    ]
                                })
                                .collect::<Vec<_>>(),
                        ));
                        out
                    });
                }
                let list = ops::executions(s.as_ref(), &caller, a.rule.as_deref(), a.limit)
                    .await
                    .map_err(fail)?;
                show(a.common.output, &list, || exec_rows(&list))
            }
            ReplicationCommand::Stop(a) => {
                let (auth, caller) = open(&a.common).await?;
                let s = store(&a.common).await?;
                let e = ops::stop(&auth, s.as_ref(), &caller, a.id)
                    .await
                    .map_err(fail)?;
                show(a.common.output, &e, || {
                    format!("asked execution {} to stop (status now: {})\n", e.id, e.status)
                })
            }
        }
    })
}
