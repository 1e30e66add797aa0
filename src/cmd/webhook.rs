//! `berth webhook add|list|rm|test|deliveries`: a project's webhook endpoints, directly on
//! the server's data directory (as `berth project` does), through the same operations as
//! the API (`berth_server::webhooks::Webhooks`). A running server sees changes made here
//! within `[webhooks] cache_ms` (2 s by default).
//!
//! Secrets (an `Authorization` header value or an HMAC key) are read from stdin
//! (`--secret-stdin`) or `BERTH_WEBHOOK_SECRET`, never from the command line (which other
//! users can see), and are never printed again.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use berth_server::webhooks::{DeliveryInfo, WebhookInfo, WebhookSpec};
use clap::{Args, Subcommand};

use crate::cmd::admin::{Common, fail, open_registry, show, table};

#[derive(Args)]
pub struct WebhookArgs {
    #[command(subcommand)]
    cmd: WebhookCommand,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Add an endpoint to a project.
    Add {
        project: String,
        /// Unique within the project: a-z 0-9 . _ -
        name: String,
        /// Where to POST events: https://host[:port]/path
        #[arg(long)]
        url: String,
        /// Comma-separated: push, pull, delete, quota_exceeded, replication.
        #[arg(long, default_value = "push,delete")]
        events: String,
        /// Payload format: harbor (Harbor's JSON) or cloudevents (CloudEvents 1.0).
        #[arg(long, default_value = "harbor")]
        format: String,
        /// How requests are authenticated: none, header (the secret is the Authorization
        /// header value) or hmac (X-Berth-Signature-256: sha256=HMAC-SHA256(secret, body)).
        #[arg(long, default_value = "none")]
        auth: String,
        /// Read the secret from stdin (else BERTH_WEBHOOK_SECRET).
        #[arg(long)]
        secret_stdin: bool,
        /// PEM file of CA certificates to trust for the receiver (self-signed receivers).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Accept any certificate (and allow http://).
        #[arg(long)]
        insecure: bool,
        /// Store it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List a project's endpoints.
    List { project: String },
    /// Remove an endpoint and its delivery log.
    Rm { project: String, name: String },
    /// Send a test event now and show the answer.
    Test { project: String, name: String },
    /// Show an endpoint's delivery log, newest first.
    Deliveries {
        project: String,
        name: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

pub fn run(args: WebhookArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(webhook(args))
}

fn secret(from_stdin: bool) -> anyhow::Result<Option<String>> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the webhook secret from stdin")?;
        let s = s.trim_end_matches(['\r', '\n']).to_owned();
        if s.is_empty() {
            anyhow::bail!("no secret on stdin");
        }
        return Ok(Some(s));
    }
    Ok(std::env::var("BERTH_WEBHOOK_SECRET")
        .ok()
        .filter(|s| !s.is_empty()))
}

async fn webhook(a: WebhookArgs) -> anyhow::Result<()> {
    // The server's state on the data directory (its sealing key included), as
    // `berth registry` opens it.
    let state = open_registry(&a.common, Default::default()).await?;
    let (auth, hooks) = (&*state.auth, &*state.webhooks);
    let me = berth_server::admin::local_admin();
    let out = a.common.output;
    match a.cmd {
        WebhookCommand::Add {
            project,
            name,
            url,
            events,
            format,
            auth: how,
            secret_stdin,
            ca_file,
            insecure,
            disabled,
        } => {
            let ca_pem = match &ca_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading --ca-file {}", f.display()))?,
                ),
                None => None,
            };
            let secret = secret(secret_stdin)?;
            if how != "none" && secret.is_none() {
                anyhow::bail!(
                    "--auth {how} needs a secret: pipe it into --secret-stdin or set BERTH_WEBHOOK_SECRET"
                );
            }
            let spec = WebhookSpec {
                name,
                url,
                events: events.split(',').map(|e| e.trim().to_owned()).collect(),
                format: Some(format),
                auth: Some(how),
                secret,
                ca_pem,
                insecure,
                enabled: !disabled,
            };
            let w = hooks.add(auth, &me, &project, spec).await.map_err(fail)?;
            show(out, &w, || {
                format!(
                    "added webhook {} to project {project}: {} ({})\n",
                    w.name,
                    w.url,
                    w.events.join(",")
                )
            })
        }
        WebhookCommand::List { project } => {
            let ws = hooks.list(auth, &me, &project).await.map_err(fail)?;
            show(out, &ws, || hooks_table(&ws))
        }
        WebhookCommand::Rm { project, name } => {
            hooks
                .remove(auth, &me, &project, &name)
                .await
                .map_err(fail)?;
            show(out, &serde_json::json!({ "removed": name }), || {
                format!("removed webhook {name} of project {project}\n")
            })
        }
        WebhookCommand::Test { project, name } => {
            let d = hooks
                .test(auth, &me, &project, &name, "")
                .await
                .map_err(fail)?;
            show(out, &d, || deliveries_table(std::slice::from_ref(&d)))?;
            if !d.ok {
                anyhow::bail!("the test delivery failed: {}", d.error);
            }
            Ok(())
        }
        WebhookCommand::Deliveries {
            project,
            name,
            limit,
        } => {
            let ds = hooks
                .deliveries(auth, &me, &project, &name, limit)
                .await
                .map_err(fail)?;
            show(out, &ds, || deliveries_table(&ds))
        }
    }
}

fn hooks_table(ws: &[WebhookInfo]) -> String {
    let rows: Vec<Vec<String>> = ws
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.url.clone(),
                w.events.join(","),
                w.format.clone(),
                w.auth.clone(),
                if w.enabled { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    table(
        &["NAME", "URL", "EVENTS", "FORMAT", "AUTH", "ENABLED"],
        &rows,
    )
}

fn deliveries_table(ds: &[DeliveryInfo]) -> String {
    let rows: Vec<Vec<String>> = ds
        .iter()
        .map(|d| {
            vec![
                d.at.clone(),
                d.event.clone(),
                d.subject.clone(),
                d.attempt.to_string(),
                if d.status == 0 {
                    "-".into()
                } else {
                    d.status.to_string()
                },
                format!("{} ms", d.latency_ms),
                d.error.clone(),
            ]
        })
        .collect();
    table(
        &[
            "TIME", "EVENT", "SUBJECT", "ATTEMPT", "STATUS", "LATENCY", "ERROR",
        ],
        &rows,
    )
}
