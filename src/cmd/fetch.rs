//! `berth fetch REF --rootfs DIR | --layout DIR`: pull an image as a node would.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_client::{ClientOptions, ImageRef, Platform, RegistryClient};
use berth_fetch::{
    Bars, BlobCache, Event, FetchOptions, JsonLines, PlainLines, Reporter, Target, UnpackOptions,
};
use clap::{Args, ValueEnum};

use crate::cmd::client::{CredArgs, TrustArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// Progress bars on a terminal, plain lines otherwise (on stderr).
    Text,
    /// One JSON event per line on stdout.
    Json,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["rootfs", "layout"]))]
pub struct FetchArgs {
    /// Image reference, e.g. registry.local:5443/library/nginx:latest.
    pub reference: String,
    /// Unpack the image's root filesystem into DIR (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Write an OCI image layout to DIR instead (created, or added to).
    #[arg(long, value_name = "DIR")]
    pub layout: Option<PathBuf>,
    /// Platform to select from an index (OS/ARCH[/VARIANT]) [default: this machine's].
    #[arg(long)]
    pub platform: Option<String>,
    /// Blob cache directory [default: /var/lib/berth/cache as root, else ~/.cache/berth].
    #[arg(long, env = "BERTH_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Concurrent layer downloads.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Progress output.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Do not syncfs the new root filesystem before renaming it into place.
    #[arg(long)]
    pub no_sync: bool,
    /// Do not set ownership from the layers (default: set it when running as root).
    #[arg(long)]
    pub no_same_owner: bool,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub creds: CredArgs,
}

pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let image = ImageRef::parse(&args.reference)?;
    let platform = match &args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::current(),
    };
    let target = match (&args.rootfs, &args.layout) {
        (Some(dir), _) => Target::Rootfs(dir.clone()),
        (None, Some(dir)) => Target::Layout(dir.clone()),
        (None, None) => unreachable!("clap requires --rootfs or --layout"),
    };
    let cache_dir = args
        .cache
        .clone()
        .unwrap_or_else(berth_fetch::default_cache_dir);
    let cache = BlobCache::open(&cache_dir)?;
    let client = RegistryClient::new(ClientOptions {
        trust: args.trust.build()?,
        keyring: args.creds.build()?,
        parallel: args.parallel.max(1),
        ..ClientOptions::default()
    });
    let mut unpack = UnpackOptions::default();
    if args.no_same_owner {
        unpack.same_owner = false;
    }
    let opts = FetchOptions {
        platform,
        target,
        jobs: args.parallel.max(1),
        unpack,
        sync: !args.no_sync,
    };
    let reporter: Arc<dyn Reporter> = match args.output {
        Output::Json => Arc::new(JsonLines),
        Output::Text if std::io::stderr().is_terminal() => Arc::new(Bars::new()),
        Output::Text => Arc::new(PlainLines::new()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(berth_fetch::fetch(
        &client,
        &cache,
        &image,
        &opts,
        reporter.clone(),
    ));
    if let Err(e) = &result
        && matches!(args.output, Output::Json)
    {
        reporter.event(&Event::Error {
            message: format!("{e:#}"),
        });
    }
    result.map(|_| ())
}
