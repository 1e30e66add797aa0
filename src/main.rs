//! `berth`: the registry server and its tools, one binary. This file only parses the
//! command line and hands off to the library crates.

mod cmd;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth_server::ServerConfig;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "HTTPS-first container image registry and image fetcher"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry over HTTPS (creates a CA and certificate on first start).
    Serve(ServeArgs),
    /// Certificates: create a CA and server certificate, and show how to trust them.
    #[command(subcommand)]
    Cert(CertCommand),
    #[command(flatten)]
    Client(cmd::client::ClientCommand),
    #[command(flatten)]
    Kube(cmd::kube::KubeCommands),
    /// Pull an image as a node would: unpack its root filesystem (or write an OCI layout).
    Fetch(cmd::fetch::FetchArgs),
    #[command(flatten)]
    Admin(cmd::admin::AdminCommand),
    /// Move an embedded deployment (data directory) onto PostgreSQL; re-runnable.
    Migrate(cmd::migrate::MigrateArgs),
    /// Replication rules (push to / pull from remote registries) and their executions.
    #[command(subcommand)]
    Replication(cmd::replication::ReplicationCommand),
    /// Webhooks of a project: tell CI or chat about pushes, pulls, deletes, quota refusals.
    Webhook(cmd::webhook::WebhookArgs),
    /// Remote registries: proxy-cache upstreams and replication peers.
    Registry(cmd::registry::RegistryArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:5443].
    #[arg(long, env = "BERTH_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory: blobs, metadata database, generated certificates [default: ./berth-data].
    #[arg(long, env = "BERTH_DATA")]
    data: Option<PathBuf>,
    /// PEM certificate chain to serve (instead of Berth's own CA).
    #[arg(long, env = "BERTH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "BERTH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP; only behind a TLS-terminating proxy.
    #[arg(long, env = "BERTH_INSECURE_HTTP", conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_http: bool,
    /// Extra DNS name for the auto-generated certificate (repeatable).
    #[arg(long = "host", env = "BERTH_TLS_HOSTS", value_delimiter = ',')]
    hosts: Vec<String>,
    /// Extra IP address for the auto-generated certificate (repeatable).
    #[arg(long = "ip", env = "BERTH_TLS_IPS", value_delimiter = ',')]
    ips: Vec<IpAddr>,
    /// URL clients reach the registry at (for the token realm), e.g. https://registry.example.com.
    #[arg(long, env = "BERTH_EXTERNAL_URL")]
    external_url: Option<String>,
    /// Believe X-Forwarded-Proto/Host (only behind a trusted TLS-terminating proxy).
    #[arg(long, env = "BERTH_TRUST_FORWARDED_HEADERS")]
    trust_forwarded_headers: bool,
    /// Create a missing project (private) on first push instead of refusing the push.
    #[arg(long, env = "BERTH_AUTO_CREATE_PROJECTS")]
    auto_create_projects: bool,
    /// PostgreSQL URL for metadata and accounts (postgres://USER:PASSWORD@HOST:PORT/DB);
    /// default: SQLite in the data directory. Required to run several replicas.
    #[arg(long, env = "BERTH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Metadata store: `sqlite` or `postgres` (default: PostgreSQL when a database URL is
    /// given). `postgres` without a URL refuses to start.
    #[arg(long, env = "BERTH_DATABASE_KIND", value_parser = ["sqlite", "postgres"])]
    database_kind: Option<String>,
    /// File holding the password of the `admin` account created on first start
    /// (or set BERTH_ADMIN_PASSWORD); generated and printed once otherwise.
    #[arg(long)]
    admin_password_file: Option<PathBuf>,
    /// Seconds between garbage-collection cycles (0: only on demand) [default: 3600].
    #[arg(long, env = "BERTH_GC_INTERVAL_SECS")]
    gc_interval_secs: Option<u64>,
    /// Seconds a blob stays after losing its last reference [default: 7200].
    #[arg(long, env = "BERTH_GC_BLOB_GRACE_SECS")]
    gc_blob_grace_secs: Option<u64>,
    /// Seconds an untagged manifest stays before GC removes it [default: 86400].
    #[arg(long, env = "BERTH_GC_UNTAGGED_DELAY_SECS")]
    gc_untagged_delay_secs: Option<u64>,
    /// Seconds between runs of the projects' retention policies (0: never) [default: 86400].
    #[arg(long, env = "BERTH_RETENTION_INTERVAL_SECS")]
    retention_interval_secs: Option<u64>,
    /// Delete audit events older than this many days.
    #[arg(long, env = "BERTH_AUDIT_KEEP_DAYS")]
    audit_keep_days: Option<u64>,
    /// Keep at most this many audit events.
    #[arg(long, env = "BERTH_AUDIT_KEEP_ENTRIES")]
    audit_keep_entries: Option<u64>,
    /// Proxy-cache projects: seconds a tag checked upstream is served without asking
    /// again (0: every pull by tag asks) [default: 3].
    #[arg(long, env = "BERTH_PROXY_REVALIDATE_SECS")]
    proxy_revalidate_secs: Option<u64>,
    /// Proxy-cache projects: seconds to wait for the upstream before serving the cache
    /// [default: 15].
    #[arg(long, env = "BERTH_PROXY_UPSTREAM_TIMEOUT_SECS")]
    proxy_upstream_timeout_secs: Option<u64>,
}

#[derive(Subcommand)]
enum CertCommand {
    /// Create (or reuse) a CA in DIR and issue a server certificate for the given names.
    Init {
        /// Directory for ca.crt, ca.key, server.crt, server.key.
        #[arg(long, default_value = "berth-certs")]
        out: PathBuf,
        /// DNS name the registry is reached by (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// IP address the registry is reached by (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Port clients use, for the trust instructions.
        #[arg(long, default_value_t = 5443)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = serve_config(args)?;
            tune_allocator();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(berth_server::serve::run(config))?;
            Ok(())
        }
        Command::Cert(CertCommand::Init {
            out,
            hosts,
            ips,
            port,
        }) => cert_init(out, hosts, ips, port),
        Command::Client(c) => cmd::client::run(c),
        Command::Kube(c) => cmd::kube::run(c),
        Command::Fetch(args) => cmd::fetch::run(args),
        Command::Admin(c) => cmd::admin::run(c),
        Command::Migrate(args) => cmd::migrate::run(args),
        Command::Replication(c) => cmd::replication::run(c),
        Command::Webhook(args) => cmd::webhook::run(args),
        Command::Registry(args) => cmd::registry::run(args),
    }
}

/// Defaults, then the config file, then environment variables and flags.
fn serve_config(args: ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            ServerConfig::from_toml(&text)
                .with_context(|| format!("in config file {}", path.display()))?
        }
        None => ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data) = args.data {
        config.data = data;
    }
    if args.tls_cert.is_some() {
        config.tls.cert = args.tls_cert;
        config.tls.key = args.tls_key;
    }
    if args.insecure_http {
        config.tls.insecure_http = true;
    }
    if args.external_url.is_some() {
        config.auth.external_url = args.external_url;
    }
    config.auth.trust_forwarded_headers |= args.trust_forwarded_headers;
    config.auth.auto_create_projects |= args.auto_create_projects;
    if let Some(path) = args.admin_password_file {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading --admin-password-file {}", path.display()))?;
        config.auth.admin_password = Some(text.trim_end_matches(['\r', '\n']).to_string());
    }
    match args.database_kind.as_deref() {
        Some("sqlite") => config.database.kind = Some(berth_server::config::DatabaseKind::Sqlite),
        Some("postgres") => {
            config.database.kind = Some(berth_server::config::DatabaseKind::Postgres)
        }
        _ => {}
    }
    if args.database_url.is_some() {
        config.database.url = args.database_url;
    }
    config.tls.hosts.extend(args.hosts);
    config.tls.ips.extend(args.ips);
    let lc = &mut config.lifecycle;
    lc.gc_interval_secs = args.gc_interval_secs.unwrap_or(lc.gc_interval_secs);
    lc.blob_grace_secs = args.gc_blob_grace_secs.unwrap_or(lc.blob_grace_secs);
    lc.untagged_delay_secs = args
        .gc_untagged_delay_secs
        .unwrap_or(lc.untagged_delay_secs);
    lc.retention_interval_secs = args
        .retention_interval_secs
        .unwrap_or(lc.retention_interval_secs);
    lc.audit_keep_days = args.audit_keep_days.or(lc.audit_keep_days);
    lc.audit_keep_entries = args.audit_keep_entries.or(lc.audit_keep_entries);
    let px = &mut config.proxy;
    px.revalidate_secs = args.proxy_revalidate_secs.unwrap_or(px.revalidate_secs);
    px.upstream_timeout_secs = args
        .proxy_upstream_timeout_secs
        .unwrap_or(px.upstream_timeout_secs);
    config
        .storage
        .apply_env(|k| std::env::var(k).ok())
        .map_err(|e| anyhow::anyhow!("in the environment: {e}"))?;
    Ok(config)
}

fn cert_init(
    out: PathBuf,
    mut hosts: Vec<String>,
    ips: Vec<IpAddr>,
    port: u16,
) -> anyhow::Result<()> {
    if hosts.is_empty() && ips.is_empty() {
        let (default_hosts, _) = berth_pki::default_names();
        hosts = default_hosts;
        eprintln!("berth: no --host or --ip given; using {}", hosts.join(", "));
    }
    let files = berth_pki::init_dir(&out, &hosts, &ips)?;
    println!("CA certificate:      {}", files.ca_crt.display());
    println!(
        "CA private key:      {}  (keep it secret)",
        files.ca_key.display()
    );
    println!("Server certificate:  {}", files.server_crt.display());
    println!("Server private key:  {}", files.server_key.display());
    println!();
    println!(
        "Serve with: berth serve --tls-cert {} --tls-key {}",
        files.server_crt.display(),
        files.server_key.display()
    );
    let names: Vec<String> = hosts
        .iter()
        .cloned()
        .chain(ips.iter().map(|ip| match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        }))
        .collect();
    for name in names {
        println!();
        println!(
            "{}",
            berth_pki::trust_instructions(&files.ca_crt, &format!("{name}:{port}"))
        );
    }
    Ok(())
}

/// Keep the server's resident memory small: glibc would otherwise raise its mmap threshold
/// after the first large free (Argon2's 19 MiB, upload buffers) and keep such blocks in the
/// heap for good, and would give every thread its own arena.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread runs.
    unsafe {
        // Above the 512 KiB read and 1 MiB write buffers (reused from the heap, no page
        // faults per chunk), below Argon2's 19 MiB (returned to the system after use).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
