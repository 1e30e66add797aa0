//! `berth migrate --from DATA_DIR --to CONFIG`: move an embedded deployment (SQLite and
//! blobs in a data directory) onto the deployment CONFIG describes (its `[database]` must
//! be PostgreSQL; its blobs go to its `[storage]`: a data directory or an S3 bucket). Re-runnable: a second run copies only what is new or changed; every
//! blob's digest is verified as it is copied. See `berth_storage::migrate`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use berth_server::ServerConfig;
use berth_server::config::BlobBackend;
use berth_storage::BlobStore;
use berth_storage::fs::FsBlobStore;
use berth_storage::postgres::{PgMetadata, redact_url};
use berth_storage::s3::S3BlobStore;
use berth_storage::sqlite::SqliteMetadata;
use clap::Args;

#[derive(Args)]
pub struct MigrateArgs {
    /// Data directory of the embedded deployment to copy (its metadata.db and blobs).
    #[arg(long)]
    from: PathBuf,
    /// Configuration file of the target deployment (with [database] url = "postgres://…").
    #[arg(long)]
    to: PathBuf,
    /// PostgreSQL URL of the target, overriding the file's [database] url.
    #[arg(long, env = "BERTH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.to)
        .with_context(|| format!("reading the target configuration {}", args.to.display()))?;
    let mut target = ServerConfig::from_toml(&text)
        .with_context(|| format!("in the target configuration {}", args.to.display()))?;
    if args.database_url.is_some() {
        target.database.url = args.database_url;
    }
    target
        .storage
        .apply_env(|k| std::env::var(k).ok())
        .map_err(anyhow::Error::msg)?;
    let Some(options) = target.database.postgres() else {
        bail!(
            "the target configuration {} names no PostgreSQL database: set [database] url = \
             \"postgres://…\" (or BERTH_DATABASE_URL)",
            args.to.display()
        );
    };
    let source_db = args.from.join("metadata.db");
    if !source_db.is_file() {
        bail!(
            "{} has no metadata.db: --from must be the data directory of an embedded Berth",
            args.from.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let src = SqliteMetadata::open(&source_db)
            .await
            .with_context(|| format!("opening {}", source_db.display()))?;
        let src_blobs = FsBlobStore::open(args.from.clone())
            .await
            .with_context(|| format!("opening the blobs of {}", args.from.display()))?;
        let dst = PgMetadata::open(&options)
            .await
            .with_context(|| format!("opening {}", redact_url(&options.url)))?;
        let dst_blobs: Arc<dyn BlobStore> = match target.storage.backend {
            BlobBackend::Fs => Arc::new(
                FsBlobStore::open(target.data.clone())
                    .await
                    .with_context(|| format!("opening the blobs of {}", target.data.display()))?,
            ),
            BlobBackend::S3 => {
                let bucket = &target.storage.s3.bucket;
                let s3 = S3BlobStore::connect(&target.storage.s3)
                    .with_context(|| format!("configuring the bucket {bucket}"))?;
                s3.check()
                    .await
                    .with_context(|| format!("reaching the bucket {bucket}"))?;
                Arc::new(s3)
            }
        };
        // Tokens issued by the embedded server stay valid: its signing key becomes the
        // cluster's, unless the target already has one.
        let key = args.from.join("token-signing-key.pem");
        if let Ok(pem) = std::fs::read_to_string(&key) {
            let kept = dst
                .setting_or_create("token_signing_key", || pem.clone())
                .await?;
            if kept != pem {
                eprintln!(
                    "berth migrate: the target already has a token signing key; tokens issued \
                     by the embedded server will have to be renewed"
                );
            }
        }
        let progress = |what: &str| eprintln!("berth migrate: {what}");
        let report =
            berth_storage::migrate::migrate(&src, &src_blobs, &dst, dst_blobs.as_ref(), &progress)
                .await
                .context("migration stopped (it can be re-run once the cause is fixed)")?;
        println!(
            "migrated: {} blobs copied ({} bytes, digests verified), {} already present; rows: {}",
            report.blobs_copied,
            report.bytes_copied,
            report.blobs_present,
            report
                .rows
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        src.close().await;
        dst.close().await;
        Ok(())
    })
}
