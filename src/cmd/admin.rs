//! `berth project|user|robot|audit`: manage projects, members, users, robot accounts and
//! read the audit log, directly on the server's data directory (also while `berth serve`
//! runs), as the local system administrator (`local-admin` in the audit log). Every command
//! calls the same operation as the admin API (`berth_server::admin`).
//!
//! Changes made here reach a running server at once, except that the server remembers a
//! verified Basic login for up to a minute: a password changed or a robot revoked here
//! stops working through that cache within a minute (through the admin API, at once).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use berth_server::admin::{self, format_time};
use berth_server::auth::{Auth, Caller};
use berth_server::error::ApiError;
use berth_storage::AuditFilter;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Projects and their members.
    Project(ProjectArgs),
    /// User accounts.
    User(UserArgs),
    /// Robot accounts: per-project credentials for CI jobs and clusters.
    Robot(RobotArgs),
    /// Show the audit log, newest first.
    Audit(AuditArgs),
    /// Run a garbage-collection cycle now, online (safe while `berth serve` runs).
    Gc(GcArgs),
    /// A project's storage policy (quota, immutable tags, retention) and usage.
    Policy(PolicyArgs),
    /// Apply a project's retention policy now.
    Retention(RetentionArgs),
}

#[derive(Args)]
pub struct GcArgs {
    /// Only report what would be removed (count and bytes).
    #[arg(long)]
    dry_run: bool,
    /// A blob is removed only this long after losing its last reference.
    #[arg(long, default_value_t = 7200)]
    blob_grace_secs: u64,
    /// An untagged manifest is removed only this long after it became untagged.
    #[arg(long, default_value_t = 86400)]
    untagged_delay_secs: u64,
    /// Keep untagged manifests (collect only unreferenced blobs).
    #[arg(long)]
    keep_untagged: bool,
    /// List recent runs instead of running one.
    #[arg(long, conflicts_with = "dry_run")]
    history: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct PolicyArgs {
    /// The project.
    project: String,
    /// Storage quota in bytes (0: none).
    #[arg(long)]
    quota_bytes: Option<u64>,
    /// Most repositories (0: no limit).
    #[arg(long)]
    max_repositories: Option<u64>,
    /// Immutable tag patterns, `*` wildcard (repeatable; replaces the list; "" clears it).
    #[arg(long = "immutable")]
    immutable: Option<Vec<String>>,
    /// Retention policy as JSON, e.g. '{"keep_last":5,"keep_tags":["v*"]}' ("" clears it).
    #[arg(long)]
    retention: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct RetentionArgs {
    /// The project.
    project: String,
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    common: Common,
}

/// Where the data is and how to print it (accepted before or after the subcommand).
#[derive(Args, Clone)]
pub struct Common {
    /// The server's data directory.
    #[arg(long, env = "BERTH_DATA", default_value = "berth-data", global = true)]
    pub data: PathBuf,
    /// PostgreSQL URL of a scaled-out deployment (as `berth serve --database-url`);
    /// default: the SQLite database in the data directory.
    #[arg(
        long,
        env = "BERTH_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,
    /// Tables for humans, JSON for scripts.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args)]
pub struct ProjectArgs {
    #[command(subcommand)]
    cmd: ProjectCommand,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Create a project (private unless --public).
    Create {
        name: String,
        /// Anyone, anonymous included, may pull from it.
        #[arg(long)]
        public: bool,
        #[arg(long, default_value = "")]
        description: String,
        /// Make it a proxy cache of this registered registry (`berth registry add`): pulls
        /// of PROJECT/<upstream repository> are fetched from it and cached.
        #[arg(long, value_name = "REGISTRY_NAME")]
        proxy: Option<String>,
    },
    /// List projects.
    List,
    /// Change a project's visibility or description.
    Update {
        name: String,
        #[arg(long, conflicts_with = "private")]
        public: bool,
        #[arg(long)]
        private: bool,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a project (refused while it has repositories).
    Delete { name: String },
    /// Project members.
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Add a member, or change its role.
    Add {
        project: String,
        user: String,
        /// project_admin, maintainer (push, delete), developer (push) or guest (pull).
        #[arg(long)]
        role: String,
    },
    /// Remove a member.
    Remove { project: String, user: String },
    /// List the members of a project.
    List { project: String },
}

#[derive(Args)]
pub struct UserArgs {
    #[command(subcommand)]
    cmd: UserCommand,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; without --password-stdin a password is generated and printed once.
    Add {
        name: String,
        /// Make it a system administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Set a user's password (generated and printed once without --password-stdin); ends
    /// the user's sessions.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Make a user a system administrator (or, with --revoke, no longer one).
    Admin {
        name: String,
        #[arg(long)]
        revoke: bool,
    },
    /// Delete a user (never the last administrator).
    Delete { name: String },
}

#[derive(Args)]
pub struct RobotArgs {
    #[command(subcommand)]
    cmd: RobotCommand,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum RobotCommand {
    /// Create robot$PROJECT+NAME (pull only unless --push); prints its secret once.
    Create {
        project: String,
        name: String,
        /// Allow push as well as pull.
        #[arg(long)]
        push: bool,
        /// Refuse the robot after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List a project's robots.
    List { project: String },
    /// Revoke a robot (robot$PROJECT+NAME): refused from now on, still listed.
    Revoke { name: String },
    /// Delete a robot (robot$PROJECT+NAME).
    Delete { name: String },
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only this user or robot.
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (push, delete, login, login_failed, project.create, …).
    #[arg(long)]
    action: Option<String>,
    /// Only resources starting with this (e.g. project:library).
    #[arg(long)]
    resource: Option<String>,
    /// Only events at or after this Unix time.
    #[arg(long)]
    since: Option<i64>,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    #[command(flatten)]
    common: Common,
}

pub fn run(command: AdminCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match command {
            AdminCommand::Project(a) => project(a).await,
            AdminCommand::User(a) => user(a).await,
            AdminCommand::Robot(a) => robot(a).await,
            AdminCommand::Audit(a) => audit(a).await,
            AdminCommand::Gc(a) => gc(a).await,
            AdminCommand::Policy(a) => policy(a).await,
            AdminCommand::Retention(a) => retention(a).await,
        }
    })
}

/// Open the data directory; a fresh one gets the first-start setup, whose generated
/// administrator password is shown once (on stderr, so stdout stays parseable).
pub(crate) async fn open(common: &Common) -> anyhow::Result<(Auth, Caller)> {
    let database = berth_server::config::DatabaseConfig {
        url: common.database_url.clone(),
        ..Default::default()
    };
    let (auth, generated) = berth_server::serve::open_accounts_with(&common.data, &database)
        .await
        .with_context(|| format!("opening the data directory {}", common.data.display()))?;
    if let Some(password) = generated {
        eprintln!(
            "berth: initialized {} and created the administrator account \"admin\" with password: {password}\n\
             (shown only now; change it with: berth user passwd admin)",
            common.data.display()
        );
    }
    Ok((auth, admin::local_admin()))
}

pub(crate) fn fail(e: ApiError) -> anyhow::Error {
    anyhow!("{}", e.detail)
}

pub(crate) fn read_password_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the password from stdin")?;
    let p = s.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        anyhow::bail!("no password on stdin");
    }
    Ok(p)
}

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Left-aligned columns separated by two spaces.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// Print `v` as JSON, or `text()` for humans.
pub(crate) fn show<T: Serialize>(
    output: Output,
    v: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(v),
        Output::Table => {
            print!("{}", text());
            Ok(())
        }
    }
}

fn visibility(public: bool) -> String {
    if public { "public" } else { "private" }.to_string()
}

fn projects_table(ps: &[admin::ProjectInfo]) -> String {
    let rows: Vec<Vec<String>> = ps
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                visibility(p.public),
                format_time(p.created_at),
                p.description.clone(),
            ]
        })
        .collect();
    table(&["NAME", "VISIBILITY", "CREATED", "DESCRIPTION"], &rows)
}

fn robots_table(rs: &[admin::RobotInfo]) -> String {
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            let state = if r.revoked {
                "revoked"
            } else if r.active {
                "active"
            } else {
                "expired"
            };
            vec![
                r.name.clone(),
                if r.push { "pull,push" } else { "pull" }.into(),
                state.into(),
                r.expires_at.map_or("never".into(), format_time),
                r.description.clone(),
            ]
        })
        .collect();
    table(
        &["NAME", "PERMISSION", "STATE", "EXPIRES", "DESCRIPTION"],
        &rows,
    )
}

async fn project(a: ProjectArgs) -> anyhow::Result<()> {
    let (auth, me) = open(&a.common).await?;
    let out = a.common.output;
    match a.cmd {
        ProjectCommand::Create {
            name,
            public,
            description,
            proxy: Some(registry),
        } => {
            let state =
                open_registry(&a.common, berth_server::config::LifecycleConfig::default()).await?;
            berth_server::proxy::create_proxy_project(
                &state.auth,
                &state.remotes,
                &me,
                &name,
                public,
                &description,
                &registry,
            )
            .await
            .map_err(fail)?;
            let p = admin::get_project(&auth, &me, &name).await.map_err(fail)?;
            show(out, &p, || {
                format!(
                    "created {} project {name}, a proxy cache of registry {registry}\n\
                     pull through it: docker pull <berth-host>/{name}/<upstream repository>:<tag>\n",
                    visibility(p.public)
                )
            })
        }
        ProjectCommand::Create {
            name,
            public,
            description,
            proxy: None,
        } => {
            admin::create_project(&auth, &me, &name, public, &description)
                .await
                .map_err(fail)?;
            let p = admin::get_project(&auth, &me, &name).await.map_err(fail)?;
            show(out, &p, || {
                format!("created {} project {name}\n", visibility(p.public))
            })
        }
        ProjectCommand::List => {
            let ps = admin::list_projects(&auth, &me).await.map_err(fail)?;
            show(out, &ps, || projects_table(&ps))
        }
        ProjectCommand::Update {
            name,
            public,
            private,
            description,
        } => {
            let vis = match (public, private) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            if vis.is_none() && description.is_none() {
                anyhow::bail!("nothing to change: give --public, --private or --description");
            }
            let p = admin::update_project(&auth, &me, &name, vis, description)
                .await
                .map_err(fail)?;
            show(out, &p, || projects_table(std::slice::from_ref(&p)))
        }
        ProjectCommand::Delete { name } => {
            admin::delete_project(&auth, &me, &name)
                .await
                .map_err(fail)?;
            show(out, &serde_json::json!({"deleted": name}), || {
                format!("deleted project {name}\n")
            })
        }
        ProjectCommand::Member(MemberCommand::Add {
            project,
            user,
            role,
        }) => {
            let role = admin::parse_role(&role).map_err(fail)?;
            let m = admin::set_member(&auth, &me, &project, &user, role)
                .await
                .map_err(fail)?;
            show(out, &m, || {
                format!("{} is now {} of project {}\n", m.user, m.role, m.project)
            })
        }
        ProjectCommand::Member(MemberCommand::Remove { project, user }) => {
            admin::remove_member(&auth, &me, &project, &user)
                .await
                .map_err(fail)?;
            show(
                out,
                &serde_json::json!({"project": project, "removed": user}),
                || format!("removed {user} from project {project}\n"),
            )
        }
        ProjectCommand::Member(MemberCommand::List { project }) => {
            let ms = admin::list_members(&auth, &me, &project)
                .await
                .map_err(fail)?;
            show(out, &ms, || {
                let rows: Vec<Vec<String>> = ms
                    .iter()
                    .map(|m| vec![m.user.clone(), m.role.clone()])
                    .collect();
                table(&["USER", "ROLE"], &rows)
            })
        }
    }
}

async fn user(a: UserArgs) -> anyhow::Result<()> {
    let out = a.common.output;
    // Read stdin before opening anything, so a failed read changes nothing.
    let password = match &a.cmd {
        UserCommand::Add {
            password_stdin: true,
            ..
        }
        | UserCommand::Passwd {
            password_stdin: true,
            ..
        } => Some(read_password_stdin()?),
        _ => None,
    };
    let (auth, me) = open(&a.common).await?;
    match a.cmd {
        UserCommand::Add { name, admin, .. } => {
            let u = admin::add_user(&auth, &me, &name, password, admin)
                .await
                .map_err(fail)?;
            show(out, &u, || {
                let kind = if u.user.admin {
                    "administrator"
                } else {
                    "user"
                };
                match &u.password {
                    Some(p) => format!("created {kind} {name}\npassword (shown only now): {p}\n"),
                    None => format!("created {kind} {name}\n"),
                }
            })
        }
        UserCommand::List => {
            let us = admin::list_users(&auth, &me).await.map_err(fail)?;
            show(out, &us, || {
                let rows: Vec<Vec<String>> = us
                    .iter()
                    .map(|u| {
                        vec![
                            u.name.clone(),
                            if u.admin { "yes" } else { "no" }.into(),
                            format_time(u.created_at),
                            if u.disabled { "disabled" } else { "" }.into(),
                        ]
                    })
                    .collect();
                table(&["NAME", "ADMIN", "CREATED", "STATE"], &rows)
            })
        }
        UserCommand::Passwd { name, .. } => {
            let (password, generated) = match password {
                Some(p) => (p, false),
                None => (
                    berth_server::admin::generate_password().map_err(fail)?,
                    true,
                ),
            };
            admin::set_password(&auth, &me, &name, &password)
                .await
                .map_err(fail)?;
            let v = serde_json::json!({
                "user": name,
                "password": generated.then_some(&password),
            });
            show(out, &v, || {
                if generated {
                    format!("new password of {name} (shown only now): {password}\n")
                } else {
                    format!("password of {name} changed\n")
                }
            })
        }
        UserCommand::Admin { name, revoke } => {
            let u = admin::set_admin(&auth, &me, &name, !revoke)
                .await
                .map_err(fail)?;
            show(out, &u, || {
                if u.admin {
                    format!("{name} is now a system administrator\n")
                } else {
                    format!("{name} is no longer a system administrator\n")
                }
            })
        }
        UserCommand::Delete { name } => {
            admin::delete_user(&auth, &me, &name).await.map_err(fail)?;
            show(out, &serde_json::json!({"deleted": name}), || {
                format!("deleted user {name}\n")
            })
        }
    }
}

async fn robot(a: RobotArgs) -> anyhow::Result<()> {
    let (auth, me) = open(&a.common).await?;
    let out = a.common.output;
    match a.cmd {
        RobotCommand::Create {
            project,
            name,
            push,
            expires_in_days,
            description,
        } => {
            let r = admin::create_robot(
                &auth,
                &me,
                &project,
                &name,
                push,
                expires_in_days,
                &description,
            )
            .await
            .map_err(fail)?;
            show(out, &r, || {
                let expires = r.robot.expires_at.map_or("no expiry".to_string(), |e| {
                    format!("expires {}", format_time(e))
                });
                format!(
                    "created robot account {} ({}, {expires})\nsecret (shown only now; store it safely): {}\n",
                    r.robot.name,
                    if r.robot.push { "pull,push" } else { "pull" },
                    r.secret
                )
            })
        }
        RobotCommand::List { project } => {
            let rs = admin::list_robots(&auth, &me, &project)
                .await
                .map_err(fail)?;
            show(out, &rs, || robots_table(&rs))
        }
        RobotCommand::Revoke { name } => {
            let r = admin::revoke_robot(&auth, &me, None, &name)
                .await
                .map_err(fail)?;
            show(out, &r, || format!("revoked robot account {}\n", r.name))
        }
        RobotCommand::Delete { name } => {
            admin::delete_robot(&auth, &me, None, &name)
                .await
                .map_err(fail)?;
            show(out, &serde_json::json!({"deleted": name}), || {
                format!("deleted robot account {name}\n")
            })
        }
    }
}

async fn audit(a: AuditArgs) -> anyhow::Result<()> {
    let (auth, me) = open(&a.common).await?;
    let filter = AuditFilter {
        actor: a.actor,
        action: a.action,
        resource_prefix: a.resource,
        since: a.since,
        until: None,
        before_id: None,
        limit: a.limit.min(AuditFilter::MAX_LIMIT),
    };
    let events = admin::audit_log(&auth, &me, &filter).await.map_err(fail)?;
    show(a.common.output, &events, || {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    format_time(e.at),
                    e.actor.clone(),
                    e.action.clone(),
                    e.resource.clone(),
                    e.client_addr.clone(),
                    e.detail.clone(),
                ]
            })
            .collect();
        table(
            &["TIME", "ACTOR", "ACTION", "RESOURCE", "FROM", "DETAIL"],
            &rows,
        )
    })
}

/// The registry side of the data directory (blobs and metadata) for the lifecycle commands.
pub(crate) async fn open_registry(
    common: &Common,
    lifecycle: berth_server::config::LifecycleConfig,
) -> anyhow::Result<berth_server::AppState> {
    let mut config = berth_server::ServerConfig {
        data: common.data.clone(),
        lifecycle,
        ..berth_server::ServerConfig::default()
    };
    // A scaled-out deployment: its PostgreSQL database, and its bucket from the same
    // BERTH_STORAGE_BACKEND / BERTH_S3_* variables `berth serve` reads.
    config.database.url = common.database_url.clone();
    config
        .storage
        .apply_env(|k| std::env::var(k).ok())
        .map_err(anyhow::Error::msg)?;
    // No schedules in a one-shot command.
    config.lifecycle.gc_interval_secs = 0;
    config.lifecycle.retention_interval_secs = 0;
    config.lifecycle.pull_flush_secs = 0;
    berth_server::serve::open_state(&config)
        .await
        .with_context(|| format!("opening the data directory {}", common.data.display()))
}

fn runs_table(runs: &[berth_server::gc::ops::RunView]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                if r.dry_run {
                    format!("{} (dry run)", r.kind)
                } else {
                    r.kind.clone()
                },
                format_time(r.started_at),
                format!("{}s", r.finished_at - r.started_at),
                r.started_by.clone(),
                r.manifests_removed.to_string(),
                r.tags_removed.to_string(),
                r.blobs_removed.to_string(),
                berth_storage::lifecycle::format_bytes(r.bytes_freed),
                r.errors.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "KIND",
            "STARTED",
            "TOOK",
            "BY",
            "MANIFESTS",
            "TAGS",
            "BLOBS",
            "FREED",
            "ERRORS",
        ],
        &rows,
    )
}

fn run_text(r: &berth_server::gc::ops::RunView) -> String {
    let mut out = format!("{}\n", r.detail);
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

async fn gc(a: GcArgs) -> anyhow::Result<()> {
    let lifecycle = berth_server::config::LifecycleConfig {
        blob_grace_secs: a.blob_grace_secs,
        untagged_delay_secs: a.untagged_delay_secs,
        delete_untagged: !a.keep_untagged,
        ..Default::default()
    };
    let state = open_registry(&a.common, lifecycle).await?;
    let caller = admin::local_admin();
    if a.history {
        let runs = berth_server::gc::ops::runs(&state, &caller, 50)
            .await
            .map_err(fail)?;
        return show(a.common.output, &runs, || runs_table(&runs));
    }
    let run = berth_server::gc::ops::run_gc(&state, &caller, a.dry_run, "cli")
        .await
        .map_err(fail)?;
    show(a.common.output, &run, || run_text(&run))?;
    if !run.errors.is_empty() {
        anyhow::bail!("garbage collection met {} errors", run.errors.len());
    }
    Ok(())
}

async fn policy(a: PolicyArgs) -> anyhow::Result<()> {
    let state = open_registry(&a.common, Default::default()).await?;
    let caller = admin::local_admin();
    let changes = a.quota_bytes.is_some()
        || a.max_repositories.is_some()
        || a.immutable.is_some()
        || a.retention.is_some();
    let view = if changes {
        let retention = match a.retention.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(json) => Some(Some(
                serde_json::from_str(json).context("--retention is not a valid policy")?,
            )),
        };
        let update = berth_server::gc::ops::PolicyUpdate {
            quota_bytes: a.quota_bytes.map(|q| (q > 0).then_some(q)),
            max_repositories: a.max_repositories.map(|m| (m > 0).then_some(m)),
            immutable_tags: a
                .immutable
                .map(|v| v.into_iter().filter(|p| !p.is_empty()).collect()),
            retention,
        };
        berth_server::gc::ops::set_policy(&state, &caller, &a.project, update)
            .await
            .map_err(fail)?
    } else {
        berth_server::gc::ops::policy(&state, &caller, &a.project)
            .await
            .map_err(fail)?
    };
    show(a.common.output, &view, || {
        let fmt = berth_storage::lifecycle::format_bytes;
        format!(
            "project:      {}\nusage:        {} in {} repositories\nquota:        {}\nrepositories: {}\nimmutable:    {}\nretention:    {}\n",
            view.project,
            fmt(view.usage_bytes),
            view.repositories,
            view.quota_bytes.map_or("none".into(), fmt),
            view.max_repositories
                .map_or("no limit".into(), |m| m.to_string()),
            if view.immutable_tags.is_empty() {
                "none".into()
            } else {
                view.immutable_tags.join(", ")
            },
            view.retention
                .as_ref()
                .map_or("none".into(), |r| serde_json::to_string(r)
                    .unwrap_or_default()),
        )
    })
}

async fn retention(a: RetentionArgs) -> anyhow::Result<()> {
    let state = open_registry(&a.common, Default::default()).await?;
    let caller = admin::local_admin();
    let run = berth_server::gc::ops::run_retention(&state, &caller, &a.project, a.dry_run)
        .await
        .map_err(fail)?;
    show(a.common.output, &run, || run_text(&run))
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["NAME", "ROLE"],
            &[
                vec!["alice".into(), "guest".into()],
                vec!["b".into(), "project_admin".into()],
            ],
        );
        assert_eq!(t, "NAME   ROLE\nalice  guest\nb      project_admin\n");
        assert_eq!(table(&["A", "B"], &[]), "A  B\n");
    }
}
