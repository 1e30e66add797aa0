//! Running the server: open storage, set up TLS (auto CA, given files, or explicit plain
//! HTTP), bind, print the address, serve until SIGINT/SIGTERM, then drain in-flight
//! requests for up to 30 seconds.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_storage::fs::FsBlobStore;
use berth_storage::postgres::PgMetadata;
use berth_storage::s3::S3BlobStore;
use berth_storage::sqlite::SqliteMetadata;
use berth_storage::{AccountStore, BlobStore, LifecycleStore, MetadataStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use berth_auth::{SigningKey, TokenConfig, TokenService};

use crate::auth::Auth;
use crate::config::{BlobBackend, DatabaseConfig, ServerConfig};
use crate::state::{AppState, TlsInfo};

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot create data directory {path}: {source}; pass --data DIR with a writable directory"
    )]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open storage in {path}: {source}")]
    Storage {
        path: String,
        source: berth_storage::StorageError,
    },
    #[error("cannot open the metadata database {url}: {source}")]
    Database {
        url: String,
        source: berth_storage::StorageError,
    },
    #[error("authentication setup failed: {0}")]
    Auth(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error(
        "cannot listen on {addr}: {source}; choose another --listen address or stop what uses it"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Open the stores named by the configuration.
pub async fn open_state(config: &ServerConfig) -> Result<AppState, ServeError> {
    std::fs::create_dir_all(&config.data).map_err(|source| ServeError::DataDir {
        path: config.data.display().to_string(),
        source,
    })?;
    let storage_err = |source| ServeError::Storage {
        path: config.data.display().to_string(),
        source,
    };
    let mut bucket = None;
    let (blobs, fs): (Arc<dyn BlobStore>, Option<Arc<FsBlobStore>>) = match config.storage.backend {
        BlobBackend::Fs => {
            let fs = Arc::new(
                FsBlobStore::open(config.data.clone())
                    .await
                    .map_err(storage_err)?,
            );
            (fs.clone(), Some(fs))
        }
        BlobBackend::S3 => {
            let s3 =
                S3BlobStore::connect(&config.storage.s3).map_err(|source| ServeError::Storage {
                    path: format!("bucket {}", config.storage.s3.bucket),
                    source,
                })?;
            // Refuse to start against a bucket that does not answer, with its name.
            s3.check().await.map_err(|source| ServeError::Storage {
                path: format!("bucket {}", config.storage.s3.bucket),
                source,
            })?;
            let s3 = Arc::new(s3);
            bucket = Some(s3.clone());
            (s3, None)
        }
    };
    let stores = open_metadata(&config.data, &config.database).await?;
    let meta = stores.meta.clone();
    // The filesystem store's upload files are reconciled with the database's sessions; the
    // S3 store keeps its sessions in the bucket, where `purge_stale_uploads` reclaims them.
    if let Some(fs) = &fs {
        reconcile_uploads(fs, meta.as_ref())
            .await
            .map_err(storage_err)?;
    }
    let ttl = Duration::from_secs(config.limits.upload_ttl_hours * 3600);
    let (purger, purger_meta, purger_fs) = (blobs.clone(), meta.clone(), fs.clone());
    tokio::spawn(async move {
        // Abandoned sessions are reclaimed by the TTL: at start, then every hour.
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            match purger.purge_stale_uploads(ttl).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed abandoned uploads"),
                Err(e) => tracing::warn!(error = %e, "could not purge abandoned uploads"),
            }
            if let Some(fs) = &purger_fs
                && let Err(e) = forget_sessions_without_files(fs, purger_meta.as_ref()).await
            {
                tracing::warn!(error = %e, "could not forget purged upload sessions");
            }
        }
    });
    let mut token_config = TokenConfig::new("berth", config.auth.service.clone());
    token_config.access_ttl = Duration::from_secs(config.auth.token_ttl_secs.max(30));
    let scheme = if config.tls.insecure_http {
        "http"
    } else {
        "https"
    };
    let auth = stores.auth(
        TokenService::new(stores.key.clone(), token_config),
        config.auth.external_url.clone(),
        config.auth.trust_forwarded_headers,
        scheme,
    );
    let admin_password = std::env::var("BERTH_ADMIN_PASSWORD")
        .ok()
        .or_else(|| config.auth.admin_password.clone());
    let generated = crate::admin::bootstrap(&auth, admin_password.as_deref())
        .await
        .map_err(|e| ServeError::Auth(e.detail))?;
    if let Some(password) = generated {
        // Shown once on the terminal that started the server; never written to the log.
        println!(
            "berth created the administrator account \"admin\" with password: {password}\n\
             (shown only now; change it with: berth user passwd admin)"
        );
    }
    let tls = match (&config.tls.cert, config.tls.insecure_http) {
        (_, true) => TlsInfo::PlainHttp,
        (Some(cert), false) => TlsInfo::Operator { cert: cert.clone() },
        (None, false) => TlsInfo::OwnCa {
            ca_crt: config.tls_dir().join("ca.crt"),
        },
    };
    let lifecycle = Arc::new(crate::gc::Lifecycle::new(
        stores.lifecycle.clone(),
        meta.clone(),
        blobs.clone(),
        config.lifecycle.clone(),
        ttl,
    ));
    let auth = Arc::new(auth);
    lifecycle.spawn_schedules(auth.clone());
    // One key seals the registries' and the webhooks' secrets.
    let sealer = Arc::new(
        crate::remotes::Sealer::load_or_create(&config.secret_key_file())
            .map_err(ServeError::Auth)?,
    );
    let webhooks = Arc::new(crate::webhooks::Webhooks::new(
        stores.webhooks.clone(),
        stores.accounts.clone(),
        sealer.clone(),
        config.webhooks.clone(),
    ));
    webhooks.start();
    Ok(AppState {
        blobs,
        meta,
        auth,
        limits: config.limits.clone(),
        auto_create_projects: config.auth.auto_create_projects,
        tls,
        ops: ops(config, &stores, bucket),
        lifecycle,
        refusals: Default::default(),
        space: crate::limits::DiskSpace::new(config.data.clone(), config.limits.clone()),
        webhooks,
        proxy: Arc::new(
            crate::proxy::Proxy::new(config.data.join("proxy")).with_config(&config.proxy),
        ),
        remotes: Arc::new(crate::remotes::Remotes::new(stores.remotes.clone(), sealer)),
        replication: Arc::new(
            crate::replication::Replication::new(stores.replication.clone())
                .shared_by_replicas(stores.postgres.is_some()),
        ),
    })
}

/// Make `uploads/` and the upload sessions in the metadata agree (at start, before any
/// request): a file no session owns is removed (an upload whose session was lost, e.g.
/// by a crash between the two writes), and a session whose file is gone is forgotten.
pub async fn reconcile_uploads(
    blobs: &FsBlobStore,
    meta: &dyn MetadataStore,
) -> Result<(), berth_storage::StorageError> {
    let sessions: std::collections::HashSet<String> =
        meta.upload_ids().await?.into_iter().collect();
    let files = blobs.upload_file_ids().await?;
    let mut orphans = 0;
    for id in &files {
        if !sessions.contains(id) {
            match blobs.cancel_upload(id).await {
                Ok(()) | Err(berth_storage::StorageError::UploadUnknown(_)) => orphans += 1,
                Err(e) => return Err(e),
            }
        }
    }
    let files: std::collections::HashSet<&String> = files.iter().collect();
    let mut lost = 0;
    for id in &sessions {
        if !files.contains(id) {
            meta.delete_upload(id).await?;
            lost += 1;
        }
    }
    if orphans + lost > 0 {
        tracing::info!(
            removed_files = orphans,
            forgotten_sessions = lost,
            "reconciled uploads/ with the upload sessions"
        );
    }
    Ok(())
}

/// Forget sessions whose file the TTL purge removed (so they stop counting against the
/// owner's session limit). Safe while serving: a session's file exists from before its
/// row is written until after the row is deleted.
async fn forget_sessions_without_files(
    blobs: &FsBlobStore,
    meta: &dyn MetadataStore,
) -> Result<(), berth_storage::StorageError> {
    let files: std::collections::HashSet<String> =
        blobs.upload_file_ids().await?.into_iter().collect();
    for id in meta.upload_ids().await? {
        if !files.contains(&id) {
            meta.delete_upload(&id).await?;
        }
    }
    Ok(())
}

/// The account side of a data directory, for the CLI's management commands (which work
/// on the data directory directly, also while `berth serve` runs: SQLite WAL). Opens only
/// the metadata database and the token signing key — no blob store, no TLS — and runs the
/// same first-start bootstrap as the server (the `library` project and the `admin`
/// account, with `BERTH_ADMIN_PASSWORD` or a generated password, returned to be shown once).
pub async fn open_accounts(data: &Path) -> Result<(Auth, Option<String>), ServeError> {
    open_accounts_with(data, &DatabaseConfig::default()).await
}

/// [`open_accounts`] on the database `database` names (PostgreSQL for a scaled-out
/// deployment; then `data` holds nothing the commands need).
pub async fn open_accounts_with(
    data: &Path,
    database: &DatabaseConfig,
) -> Result<(Auth, Option<String>), ServeError> {
    let stores = open_metadata(data, database).await?;
    let defaults = ServerConfig::default();
    let auth = stores.auth(
        TokenService::new(
            stores.key.clone(),
            TokenConfig::new("berth", defaults.auth.service),
        ),
        None,
        false,
        "https",
    );
    let admin_password = std::env::var("BERTH_ADMIN_PASSWORD").ok();
    let generated = crate::admin::bootstrap(&auth, admin_password.as_deref())
        .await
        .map_err(|e| ServeError::Auth(e.detail))?;
    Ok((auth, generated))
}

/// Metrics gauges of the metadata database (pool use, uploads in progress).
fn ops(
    config: &ServerConfig,
    stores: &Stores,
    bucket: Option<Arc<S3BlobStore>>,
) -> crate::ops::Ops {
    let mut ops = crate::ops::Ops::default();
    ops.metrics = config.metrics.clone();
    if let Some(s3) = bucket {
        let name = format!("bucket {}", config.storage.s3.bucket);
        ops.add_readiness("bucket", move || {
            let (s3, name) = (s3.clone(), name.clone());
            async move { s3.check().await.map_err(|e| format!("{name}: {e}")) }
        });
    }
    if let Some(pg) = stores.postgres.clone() {
        ops.add_gauges(move || {
            let pg = pg.clone();
            async move {
                let pool = pg.pool();
                let size = f64::from(pool.size());
                let idle = pool.num_idle() as f64;
                metrics::gauge!("berth_db_pool_connections", "state" => "in_use").set(size - idle);
                metrics::gauge!("berth_db_pool_connections", "state" => "idle").set(idle);
                metrics::gauge!("berth_db_pool_max_connections")
                    .set(f64::from(pool.options().get_max_connections()));
                if let Ok(n) = pg.count_uploads().await {
                    metrics::gauge!("berth_uploads_in_progress").set(n as f64);
                }
            }
        });
    }
    if let Some(sqlite) = stores.sqlite.clone() {
        ops.add_gauges(move || {
            let sqlite = sqlite.clone();
            async move {
                let (size, idle, max) = sqlite.pool_use();
                metrics::gauge!("berth_db_pool_connections", "state" => "in_use")
                    .set(f64::from(size) - idle as f64);
                metrics::gauge!("berth_db_pool_connections", "state" => "idle").set(idle as f64);
                metrics::gauge!("berth_db_pool_max_connections").set(f64::from(max));
                if let Ok(n) = sqlite.count_uploads().await {
                    metrics::gauge!("berth_uploads_in_progress").set(n as f64);
                }
            }
        });
    }
    ops
}

/// The metadata and account stores, and the token signing key, of one deployment.
pub struct Stores {
    pub meta: Arc<dyn MetadataStore>,
    pub accounts: Arc<dyn AccountStore>,
    /// Garbage collection, quotas, retention (same database as `meta`).
    pub lifecycle: Arc<dyn LifecycleStore>,
    /// Replication rules and executions (same database).
    pub replication: Arc<dyn berth_storage::ReplicationStore>,
    /// Webhook endpoints and their delivery log (same database as `meta`).
    pub webhooks: Arc<dyn berth_storage::WebhookStore>,
    /// Remote registries and proxy projects (same database as `meta`).
    pub remotes: Arc<dyn berth_storage::RemoteStore>,
    pub key: SigningKey,
    /// Set when the stores are in PostgreSQL (shared by replicas).
    pub postgres: Option<PgMetadata>,
    /// Set when the stores are the embedded SQLite database.
    pub sqlite: Option<SqliteMetadata>,
}

impl Stores {
    /// The authentication service over these stores (failed logins counted in the
    /// database when it is shared by replicas).
    pub fn auth(
        &self,
        tokens: TokenService,
        external_url: Option<String>,
        trust_forwarded: bool,
        scheme: &'static str,
    ) -> Auth {
        let auth = Auth::new(
            self.accounts.clone(),
            tokens,
            external_url,
            trust_forwarded,
            scheme,
        );
        match &self.postgres {
            Some(pg) => auth.with_shared_login_limits(pg.clone()),
            None => auth,
        }
    }
}

/// The setting holding the token signing key (PKCS#8 PEM) in a shared database.
const SIGNING_KEY_SETTING: &str = "token_signing_key";

/// Open the metadata database `database` names: PostgreSQL (migrated to the current
/// schema; the token signing key stored in it, created by the first replica) or SQLite at
/// `DATA/metadata.db` (the key in `DATA/token-signing-key.pem`).
pub async fn open_metadata(data: &Path, database: &DatabaseConfig) -> Result<Stores, ServeError> {
    if database.kind == Some(crate::config::DatabaseKind::Postgres) && database.postgres().is_none()
    {
        return Err(ServeError::Database {
            url: "(none)".into(),
            source: berth_storage::StorageError::Database(
                "[database] kind = \"postgres\" needs [database] url = \"postgres://USER:PASSWORD@HOST:PORT/DB\" \
                 (or --database-url / BERTH_DATABASE_URL)"
                    .into(),
            ),
        });
    }
    if let Some(options) = database.postgres() {
        let url = berth_storage::postgres::redact_url(&options.url);
        let pg = PgMetadata::open(&options)
            .await
            .map_err(|source| ServeError::Database {
                url: url.clone(),
                source,
            })?;
        let mut generated = None;
        let pem = pg
            .setting_or_create(SIGNING_KEY_SETTING, || {
                let key = SigningKey::generate().map(|k| k.private_key_pem().to_owned());
                let pem = key.as_ref().map(Clone::clone).unwrap_or_default();
                generated = Some(key);
                pem
            })
            .await
            .map_err(|source| ServeError::Database { url, source })?;
        if let Some(Err(e)) = generated {
            return Err(ServeError::Auth(e.to_string()));
        }
        let key = SigningKey::from_pem(&pem).map_err(|e| {
            ServeError::Auth(format!("the token signing key stored in the database: {e}"))
        })?;
        return Ok(Stores {
            meta: Arc::new(pg.clone()),
            accounts: Arc::new(pg.clone()),
            lifecycle: Arc::new(pg.clone()),
            replication: Arc::new(pg.clone()),
            webhooks: Arc::new(pg.clone()),
            remotes: Arc::new(pg.clone()),
            key,
            postgres: Some(pg),
            sqlite: None,
        });
    }
    std::fs::create_dir_all(data).map_err(|source| ServeError::DataDir {
        path: data.display().to_string(),
        source,
    })?;
    let meta = SqliteMetadata::open(&data.join("metadata.db"))
        .await
        .map_err(|source| ServeError::Storage {
            path: data.display().to_string(),
            source,
        })?;
    let key = SigningKey::load_or_create(&data.join("token-signing-key.pem"))
        .map_err(|e| ServeError::Auth(e.to_string()))?;
    Ok(Stores {
        meta: Arc::new(meta.clone()),
        accounts: Arc::new(meta.clone()),
        lifecycle: Arc::new(meta.clone()),
        replication: Arc::new(meta.clone()),
        webhooks: Arc::new(meta.clone()),
        remotes: Arc::new(meta.clone()),
        key,
        postgres: None,
        sqlite: Some(meta),
    })
}

/// TLS material to serve with, creating a CA and certificate on first start if needed.
fn tls_config(config: &ServerConfig) -> Result<Option<Arc<rustls::ServerConfig>>, ServeError> {
    let tls = &config.tls;
    if tls.insecure_http {
        if tls.cert.is_some() || tls.key.is_some() {
            return Err(ServeError::Tls(
                "--insecure-http cannot be combined with --tls-cert/--tls-key; choose one".into(),
            ));
        }
        tracing::warn!("serving plain HTTP: only do this behind a TLS-terminating proxy");
        return Ok(None);
    }
    let (cert, key) = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            let (mut names, mut ips) = berth_pki::default_names();
            names.extend(tls.hosts.iter().cloned());
            ips.extend(tls.ips.iter().copied());
            let files = berth_pki::ensure_dir(&config.tls_dir(), &names, &ips)
                .map_err(|e| ServeError::Tls(e.to_string()))?;
            tracing::info!(
                ca = %files.ca_crt.display(),
                "using Berth's own CA; clients must trust it (berth cert init prints how)"
            );
            (files.server_crt, files.server_key)
        }
        _ => {
            return Err(ServeError::Tls(
                "give both --tls-cert and --tls-key, or neither to use Berth's own CA".into(),
            ));
        }
    };
    let cannot = |e: &dyn std::fmt::Display| {
        ServeError::Tls(format!(
            "cannot load certificate {} / key {}: {e}",
            cert.display(),
            key.display()
        ))
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cannot(&e))?;
    let private = PrivateKeyDer::from_pem_file(&key).map_err(|e| cannot(&e))?;
    // AES-128-GCM first, chosen by the server as Go's TLS stack does (Distribution, Zot):
    // as safe as AES-256-GCM for TLS 1.3 and ~10% less CPU per pushed byte here.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut rustls = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| cannot(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| cannot(&e))?;
    rustls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    rustls.ignore_client_order = true;
    Ok(Some(Arc::new(rustls)))
}

/// Serve until a shutdown signal. Prints `berth listening on SCHEME://ADDR` on stdout once
/// the socket accepts connections (tests and scripts wait for that line).
pub async fn run(config: ServerConfig) -> Result<(), ServeError> {
    // One crypto provider everywhere (aws-lc-rs); ignore "already installed".
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let state = open_state(&config).await?;
    let tls = tls_config(&config)?;
    crate::memory::tune();
    // Hand back what start-up used only once (password hashing, certificate generation,
    // schema set-up), so that an idle server stays small.
    crate::memory::release();
    let listener = TcpListener::bind(config.listen).map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let refusals = state.refusals.clone();
    if let Err(e) = state.replication.set_local(addr, &state.tls, &state.auth) {
        tracing::warn!(error = %e.detail, "replication is unavailable");
    } else {
        crate::replication::spawn_runner(state.clone());
    }
    let app = crate::app(state);

    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("berth listening on {scheme}://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, scheme, data = %config.data.display(), "registry ready");

    let mut builder = crate::conn::builder(&config.limits);
    tune(&mut builder);
    let server = crate::conn::Server {
        app,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        limits: config.limits.clone(),
        refusals,
        builder,
        drain: DRAIN,
    };
    server
        .run(listener, async {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await?;
    Ok(())
}

/// HTTP/2 receive window of one stream: how much of an upload the client may send ahead of
/// what the handler has written. With the 64 KiB default (and hyper's adaptive window,
/// whose estimate stays small on a low-latency link) a push stalled on every window update;
/// a few MiB lets the client keep sending while the previous buffer is hashed and written.
const H2_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 receive window of a whole connection: bounds the body bytes one connection can
/// make the server buffer, whatever its number of streams.
const H2_CONNECTION_WINDOW: u32 = 16 << 20;

/// HTTP/2 flow-control windows sized for multi-GiB layers; bounded header sizes.
fn tune(builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>) {
    builder
        .http1()
        .max_buf_size(256 * 1024)
        .http2()
        .adaptive_window(false)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_frame_size(1 << 20)
        .max_header_list_size(64 * 1024);
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
