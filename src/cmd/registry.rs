//! `berth registry add|list|show|update|rm|check`: the remote registries proxy-cache
//! projects and replication rules use, managed on the server's data directory (or its
//! PostgreSQL database) as the local system administrator, through the same operations as
//! the admin API (`berth_server::remotes`). Secrets are read from stdin, sealed with the
//! deployment's key (`BERTH_SECRET_KEY` or `DATA/secret.key`) and never printed.

use std::path::PathBuf;

use anyhow::Context;
use berth_server::admin::{self, format_time};
use berth_server::remotes::{self, RegistryInfo, RegistrySpec};
use clap::{Args, Subcommand};

use super::admin::{Common, fail, open_registry, read_password_stdin, show, table};

#[derive(Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    cmd: RegistryCommand,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Default)]
struct Fields {
    /// Log in as this user (or robot); with --password-stdin.
    #[arg(long)]
    username: Option<String>,
    /// Read the password or token from stdin (sealed at rest, never shown again).
    #[arg(long)]
    password_stdin: bool,
    /// Trust the CA certificates in this PEM file for this registry.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept any certificate (and plain HTTP) from this registry.
    #[arg(long)]
    insecure: Option<bool>,
    #[arg(long)]
    description: Option<String>,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Register a remote registry: berth registry add hub https://registry-1.docker.io
    Add {
        name: String,
        /// https://HOST[:PORT] (http:// only with --insecure true).
        url: String,
        #[command(flatten)]
        fields: Fields,
        /// Check the connection and credentials right away.
        #[arg(long)]
        check: bool,
    },
    /// List the remote registries and their last health check.
    List,
    /// Show one registry.
    Show { name: String },
    /// Change a registry's URL, credentials, CA or flags.
    Update {
        name: String,
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        fields: Fields,
    },
    /// Forget a registry (refused while a proxy project or replication rule uses it).
    Rm { name: String },
    /// Connect, check TLS and credentials, and record the outcome.
    Check { name: String },
}

fn spec(name: Option<String>, url: Option<String>, f: Fields) -> anyhow::Result<RegistrySpec> {
    let secret = if f.password_stdin {
        Some(read_password_stdin()?)
    } else {
        None
    };
    let ca_pem = match f.ca_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading the CA file {}", path.display()))?,
        ),
        None => None,
    };
    Ok(RegistrySpec {
        name,
        url,
        username: f.username,
        secret,
        ca_pem,
        insecure: f.insecure,
        description: f.description,
    })
}

fn health(r: &RegistryInfo) -> String {
    match &r.health {
        None => "not checked".into(),
        Some(h) if h.ok => format!("ok ({}): {}", format_time(h.checked_at), h.message),
        Some(h) => format!("FAILED ({}): {}", format_time(h.checked_at), h.message),
    }
}

fn registries_table(rs: &[RegistryInfo]) -> String {
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.url.clone(),
                if r.username.is_empty() {
                    "(anonymous)".into()
                } else {
                    r.username.clone()
                },
                r.proxy_projects.join(","),
                health(r),
            ]
        })
        .collect();
    table(&["NAME", "URL", "USER", "PROXIED BY", "HEALTH"], &rows)
}

fn registry_text(r: &RegistryInfo) -> String {
    format!(
        "name:        {}\nurl:         {}\nuser:        {}\nsecret:      {}\nca:          {}\ninsecure:    {}\ndescription: {}\nproxied by:  {}\nhealth:      {}\n",
        r.name,
        r.url,
        if r.username.is_empty() {
            "(anonymous)"
        } else {
            &r.username
        },
        if r.has_secret { "(set)" } else { "(none)" },
        if r.has_ca {
            "(own CA bundle)"
        } else {
            "system roots"
        },
        r.insecure,
        r.description,
        if r.proxy_projects.is_empty() {
            "-".into()
        } else {
            r.proxy_projects.join(", ")
        },
        health(r),
    )
}

pub fn run(a: RegistryArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let state = open_registry(&a.common, Default::default()).await?;
        let (auth, remotes) = (&state.auth, &state.remotes);
        let caller = admin::local_admin();
        let output = a.common.output;
        match a.cmd {
            RegistryCommand::Add {
                name,
                url,
                fields,
                check,
            } => {
                let mut r = remotes::add_registry(
                    auth,
                    remotes,
                    &caller,
                    spec(Some(name), Some(url), fields)?,
                )
                .await
                .map_err(fail)?;
                if check {
                    r = remotes::check_registry(auth, remotes, &caller, &r.name)
                        .await
                        .map_err(fail)?;
                }
                show(output, &r, || registry_text(&r))?;
                if let Some(h) = r.health.as_ref().filter(|h| !h.ok) {
                    anyhow::bail!(
                        "registry {} was added, but its check failed: {}",
                        r.name,
                        h.message
                    );
                }
                Ok(())
            }
            RegistryCommand::List => {
                let rs = remotes::list_registries(remotes, &caller)
                    .await
                    .map_err(fail)?;
                show(output, &rs, || registries_table(&rs))
            }
            RegistryCommand::Show { name } => {
                let r = remotes::get_registry(remotes, &caller, &name)
                    .await
                    .map_err(fail)?;
                show(output, &r, || registry_text(&r))
            }
            RegistryCommand::Update { name, url, fields } => {
                let r = remotes::update_registry(
                    auth,
                    remotes,
                    &caller,
                    &name,
                    spec(None, url, fields)?,
                )
                .await
                .map_err(fail)?;
                show(output, &r, || registry_text(&r))
            }
            RegistryCommand::Rm { name } => {
                remotes::delete_registry(auth, remotes, &caller, &name)
                    .await
                    .map_err(fail)?;
                println!("deleted registry {name}");
                Ok(())
            }
            RegistryCommand::Check { name } => {
                let r = remotes::check_registry(auth, remotes, &caller, &name)
                    .await
                    .map_err(fail)?;
                show(output, &r, || registry_text(&r))?;
                match &r.health {
                    Some(h) if !h.ok => anyhow::bail!("registry {name}: {}", h.message),
                    _ => Ok(()),
                }
            }
        }
    })
}
