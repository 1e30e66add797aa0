//! Server configuration: one struct, loadable from TOML, every field also settable by
//! flag and environment variable in the CLI (flags win over the file).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Everything `berth serve` needs. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (`0.0.0.0:5443`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Data directory: blobs, uploads, the metadata database and generated certificates.
    pub data: PathBuf,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Limits on what clients control.
    pub limits: Limits,
    /// Authentication and access control.
    pub auth: AuthConfig,
    /// Where metadata and accounts live (default: SQLite in the data directory).
    pub database: DatabaseConfig,
    /// The Prometheus `/metrics` endpoint.
    pub metrics: MetricsConfig,
    /// Garbage collection, retention schedules, pull-time recording, audit-log retention.
    pub lifecycle: LifecycleConfig,
    /// Where blobs are kept (`[storage]`: the data directory, or an S3 bucket).
    pub storage: StorageConfig,
    /// Webhook delivery: queues, timeout, retries (`[webhooks]`).
    pub webhooks: crate::webhooks::WebhookConfig,
    /// The key that seals remote registries' secrets at rest.
    pub secrets: SecretsConfig,
    /// Proxy-cache projects: tag revalidation and upstream timeout (`[proxy]`).
    pub proxy: crate::proxy::ProxyConfig,
}

/// `[secrets]`: the key sealing stored secrets (remote registries' passwords).
/// `BERTH_SECRET_KEY` (base64 of 32 bytes) wins over the file; replicas sharing
/// PostgreSQL must all use the same key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The key file (32 bytes; created 0600 when missing). Default: `DATA/secret.key`.
    pub key_file: Option<PathBuf>,
}

/// `[database]`: the metadata and account store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite` or `postgres`; when absent, PostgreSQL exactly when `url` is set. Saying
    /// `postgres` makes a missing `url` an error at start instead of a silent SQLite.
    pub kind: Option<DatabaseKind>,
    /// `postgres://USER:PASSWORD@HOST:PORT/DB` to keep metadata, accounts, the token
    /// signing key and login limits in PostgreSQL (required for several replicas); absent:
    /// SQLite at `DATA/metadata.db`. Also `BERTH_DATABASE_URL`.
    pub url: Option<String>,
    /// Most PostgreSQL connections this replica opens.
    pub max_connections: u32,
    /// Seconds a request waits for a database connection before failing with 503.
    pub acquire_timeout_secs: u64,
    /// Longest a single SQL statement may run, in seconds.
    pub statement_timeout_secs: u64,
}

/// Which metadata store `[database] kind` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            kind: None,
            url: None,
            max_connections: 16,
            acquire_timeout_secs: 5,
            statement_timeout_secs: 30,
        }
    }
}

/// Storage lifecycle (`[lifecycle]`): see `crate::gc`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Seconds between scheduled garbage-collection cycles (0: only on demand).
    pub gc_interval_secs: u64,
    /// A blob is collected only this long after it lost its last reference (or was
    /// uploaded without one): the window in which a push may still reference it.
    pub blob_grace_secs: u64,
    /// An untagged manifest is collected this long after it became untagged.
    pub untagged_delay_secs: u64,
    /// Collect untagged manifests at all (false: only blobs and what is deleted explicitly).
    pub delete_untagged: bool,
    /// Seconds between scheduled runs of the projects' retention policies (0: never).
    pub retention_interval_secs: u64,
    /// Pull times are gathered in memory and written this often.
    pub pull_flush_secs: u64,
    /// Delete audit events older than this many days (none: keep).
    pub audit_keep_days: Option<u64>,
    /// Keep at most this many audit events (none: no limit).
    pub audit_keep_entries: Option<u64>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            gc_interval_secs: 3600,
            blob_grace_secs: 2 * 3600,
            untagged_delay_secs: 24 * 3600,
            delete_untagged: true,
            retention_interval_secs: 24 * 3600,
            pull_flush_secs: 30,
            audit_keep_days: None,
            audit_keep_entries: None,
        }
    }
}

impl DatabaseConfig {
    /// The PostgreSQL options, when a URL is configured.
    pub fn postgres(&self) -> Option<berth_storage::postgres::PgOptions> {
        if self.kind == Some(DatabaseKind::Sqlite) {
            return None;
        }
        let url = self.url.as_ref().filter(|u| !u.is_empty())?;
        let mut options = berth_storage::postgres::PgOptions::new(url.clone());
        options.max_connections = self.max_connections.max(1);
        options.acquire_timeout = std::time::Duration::from_secs(self.acquire_timeout_secs.max(1));
        options.statement_timeout =
            std::time::Duration::from_secs(self.statement_timeout_secs.max(1));
        Some(options)
    }
}

/// `[metrics]`: Prometheus text format at `/metrics` on the main port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// When set, `/metrics` requires `Authorization: Bearer <token>` (otherwise it is open:
    /// it carries counts and timings by route class only, never names).
    pub bearer_token: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            bearer_token: None,
        }
    }
}

/// `[storage]`: the blob backend.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `fs` (default: blobs under the data directory) or `s3` (`[storage.s3]`).
    pub backend: BlobBackend,
    /// The bucket, when `backend = "s3"`.
    pub s3: berth_storage::s3::S3Config,
}

/// Which [`berth_storage::BlobStore`] serves blobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    #[default]
    Fs,
    S3,
}

impl StorageConfig {
    /// Override keys from `BERTH_STORAGE_BACKEND` and `BERTH_S3_*` variables (as given by
    /// `var`, normally `std::env::var`). Errors name the variable and what it accepts.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        let flag = |name: &str, v: String| match v.as_str() {
            "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" | "" => Ok(false),
            _ => Err(format!("{name}={v:?}: use true or false")),
        };
        if let Some(v) = var("BERTH_STORAGE_BACKEND") {
            self.backend = match v.as_str() {
                "fs" => BlobBackend::Fs,
                "s3" => BlobBackend::S3,
                _ => return Err(format!("BERTH_STORAGE_BACKEND={v:?}: use fs or s3")),
            };
        }
        let s3 = &mut self.s3;
        for (name, slot) in [
            ("BERTH_S3_ENDPOINT", &mut s3.endpoint),
            ("BERTH_S3_ACCESS_KEY_ID", &mut s3.access_key_id),
            ("BERTH_S3_SECRET_ACCESS_KEY", &mut s3.secret_access_key),
        ] {
            if let Some(v) = var(name) {
                *slot = Some(v);
            }
        }
        for (name, slot) in [
            ("BERTH_S3_REGION", &mut s3.region),
            ("BERTH_S3_BUCKET", &mut s3.bucket),
            ("BERTH_S3_PREFIX", &mut s3.prefix),
        ] {
            if let Some(v) = var(name) {
                *slot = v;
            }
        }
        if let Some(v) = var("BERTH_S3_CA_FILE") {
            s3.ca_file = Some(v.into());
        }
        for (name, slot) in [
            ("BERTH_S3_ALLOW_HTTP", &mut s3.allow_http),
            ("BERTH_S3_PATH_STYLE", &mut s3.path_style),
            ("BERTH_S3_REDIRECT", &mut s3.redirect),
        ] {
            if let Some(v) = var(name) {
                *slot = flag(name, v)?;
            }
        }
        if let Some(v) = var("BERTH_S3_PRESIGN_TTL_SECS") {
            s3.presign_ttl_secs = v
                .parse()
                .map_err(|_| format!("BERTH_S3_PRESIGN_TTL_SECS={v:?}: use a number of seconds"))?;
        }
        if let Some(v) = var("BERTH_S3_CACHE_DIR") {
            s3.cache_dir = (!v.is_empty()).then(|| v.into());
        }
        if let Some(v) = var("BERTH_S3_CACHE_MAX_BYTES") {
            s3.cache_max_bytes = v
                .parse()
                .map_err(|_| format!("BERTH_S3_CACHE_MAX_BYTES={v:?}: use a number of bytes"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The token service name (`service=` of challenges, `aud` of tokens).
    pub service: String,
    /// The URL clients reach this registry at (`https://registry.example.com`), used for
    /// the token realm; by default derived from each request's Host.
    pub external_url: Option<String>,
    /// Believe `X-Forwarded-Proto`/`X-Forwarded-Host` (only behind a trusted proxy).
    pub trust_forwarded_headers: bool,
    /// Lifetime of access tokens, in seconds.
    pub token_ttl_secs: u64,
    /// Password of the `admin` account created on first start; generated and printed
    /// once when absent. Prefer the BERTH_ADMIN_PASSWORD environment variable.
    pub admin_password: Option<String>,
    /// Create a missing project (private) on first push instead of refusing the push.
    pub auto_create_projects: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            service: "berth".into(),
            external_url: None,
            trust_forwarded_headers: false,
            token_ttl_secs: 300,
            admin_password: None,
            auto_create_projects: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain. Without `cert`/`key`, Berth creates a CA and a certificate
    /// in `DATA/tls/` on first start.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Serve plain HTTP (only behind a TLS-terminating proxy).
    pub insecure_http: bool,
    /// Extra DNS names for the auto-generated certificate.
    pub hosts: Vec<String>,
    /// Extra IP addresses for the auto-generated certificate.
    pub ips: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest manifest accepted, in bytes (the OCI spec suggests 4 MiB).
    pub max_manifest_bytes: usize,
    /// Largest blob accepted, in bytes.
    pub max_blob_bytes: u64,
    /// Largest `n` on tag and catalog listings; also the page size when `n` is absent.
    pub max_page_size: u32,
    /// Abandoned upload sessions are removed after this many hours.
    pub upload_ttl_hours: u64,
    /// Open upload sessions per principal (user or robot; per client address for
    /// anonymous pushes). The next one is refused with 429 `TOOMANYREQUESTS`.
    pub max_upload_sessions: u64,
    /// Connections open at once, all clients together; more are closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one client address.
    pub max_connections_per_address: usize,
    /// Seconds a client has to complete the TLS handshake.
    pub tls_handshake_timeout_secs: u64,
    /// Seconds a client has to send a complete request head (HTTP/1.1; it also bounds an
    /// idle keep-alive connection). On HTTP/2, the first request must arrive in this time.
    pub header_timeout_secs: u64,
    /// Seconds without a single byte of a request body before the request is ended (an
    /// upload stays resumable from the offset the registry reports). Idle time, not total
    /// time: a slow but steady upload is never cut.
    pub body_idle_timeout_secs: u64,
    /// Seconds a connection may stay without any byte read or written (HTTP/2 keep-alive,
    /// clients that stopped reading a response).
    pub idle_timeout_secs: u64,
    /// Free space kept on the data directory's filesystem: while less is free, new uploads
    /// are refused with 507 so that the metadata database and uploads in flight can still
    /// complete. The reserve is the smaller of `min_free_bytes` and `min_free_percent` of
    /// the filesystem (0 in either turns the reserve off).
    pub min_free_bytes: u64,
    /// See `min_free_bytes`.
    pub min_free_percent: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: berth_proto::manifest::MAX_MANIFEST_SIZE,
            max_blob_bytes: 64 << 30,
            max_page_size: 10_000,
            upload_ttl_hours: 24 * 7,
            max_upload_sessions: 1_000,
            max_connections: 16_384,
            max_connections_per_address: 1_024,
            tls_handshake_timeout_secs: 10,
            header_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            idle_timeout_secs: 120,
            min_free_bytes: 1 << 30,
            min_free_percent: 1.0,
        }
    }
}

impl Limits {
    pub fn tls_handshake_timeout(&self) -> Duration {
        secs(self.tls_handshake_timeout_secs)
    }
    pub fn header_timeout(&self) -> Duration {
        secs(self.header_timeout_secs)
    }
    pub fn body_idle_timeout(&self) -> Duration {
        secs(self.body_idle_timeout_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        secs(self.idle_timeout_secs)
    }

    /// The free-space reserve on a filesystem of `total` bytes.
    pub fn reserve_bytes(&self, total: u64) -> u64 {
        let pct = (total as f64 * self.min_free_percent.clamp(0.0, 100.0) / 100.0) as u64;
        self.min_free_bytes.min(pct)
    }
}

/// A timeout of `n` seconds; 0 is taken as 1 (a bound of zero would refuse everyone).
fn secs(n: u64) -> Duration {
    Duration::from_secs(n.max(1))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5443)),
            data: PathBuf::from("berth-data"),
            tls: TlsConfig::default(),
            limits: Limits::default(),
            auth: AuthConfig::default(),
            database: DatabaseConfig::default(),
            metrics: MetricsConfig::default(),
            lifecycle: LifecycleConfig::default(),
            storage: StorageConfig::default(),
            webhooks: Default::default(),
            secrets: SecretsConfig::default(),
            proxy: Default::default(),
        }
    }
}

impl ServerConfig {
    /// Parse a TOML configuration file's text.
    pub fn from_toml(text: &str) -> Result<ServerConfig, toml::de::Error> {
        toml::from_str(text)
    }

    /// The file holding the key that seals stored secrets.
    pub fn secret_key_file(&self) -> PathBuf {
        self.secrets
            .key_file
            .clone()
            .unwrap_or_else(|| self.data.join("secret.key"))
    }

    /// Where the auto-generated certificates live.
    pub fn tls_dir(&self) -> PathBuf {
        self.data.join("tls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_configs_load() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("examples/ directory") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                ServerConfig::from_toml(&text)
                    .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no example configs found in {dir}");
    }

    #[test]
    fn database_section() {
        let c = ServerConfig::from_toml(
            "[database]\nurl = \"postgres://berth@db/berth\"\nmax_connections = 4\nacquire_timeout_secs = 2\n",
        )
        .unwrap();
        let pg = c.database.postgres().expect("postgres");
        assert_eq!(pg.url, "postgres://berth@db/berth");
        assert_eq!(pg.max_connections, 4);
        assert_eq!(pg.acquire_timeout, std::time::Duration::from_secs(2));
        assert!(ServerConfig::default().database.postgres().is_none());
        let c = ServerConfig::from_toml(
            "[database]\nkind = \"postgres\"\nurl = \"postgres://berth@db/berth\"\n",
        )
        .unwrap();
        assert_eq!(c.database.kind, Some(DatabaseKind::Postgres));
        assert!(c.database.postgres().is_some());
        let c = ServerConfig::from_toml(
            "[database]\nkind = \"sqlite\"\nurl = \"postgres://berth@db/berth\"\n",
        )
        .unwrap();
        assert!(c.database.postgres().is_none(), "kind wins over url");
        assert!(ServerConfig::from_toml("[database]\nkind = \"mysql\"\n").is_err());
        assert!(ServerConfig::default().metrics.enabled);
    }

    #[test]
    fn storage_section_and_env() {
        let mut config = ServerConfig::from_toml(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:3900\"\n\
             bucket = \"b\"\nregion = \"garage\"\nredirect = true\n",
        )
        .unwrap();
        assert_eq!(config.storage.backend, BlobBackend::S3);
        assert_eq!(config.storage.s3.bucket, "b");
        assert!(config.storage.s3.redirect && config.storage.s3.path_style);
        let env = |k: &str| match k {
            "BERTH_S3_BUCKET" => Some("other".to_owned()),
            "BERTH_S3_REDIRECT" => Some("false".to_owned()),
            "BERTH_S3_PRESIGN_TTL_SECS" => Some("60".to_owned()),
            "BERTH_S3_CACHE_DIR" => Some("/var/cache/berth".to_owned()),
            "BERTH_S3_CACHE_MAX_BYTES" => Some("1048576".to_owned()),
            _ => None,
        };
        config.storage.apply_env(env).unwrap();
        assert_eq!(config.storage.s3.bucket, "other");
        assert!(!config.storage.s3.redirect);
        assert_eq!(config.storage.s3.presign_ttl_secs, 60);
        assert_eq!(
            config.storage.s3.cache_dir.as_deref(),
            Some(std::path::Path::new("/var/cache/berth"))
        );
        assert_eq!(config.storage.s3.cache_max_bytes, 1 << 20);
        assert_eq!(ServerConfig::default().storage.s3.cache_dir, None);
        let bad = |k: &str| (k == "BERTH_S3_CACHE_MAX_BYTES").then(|| "10G".to_owned());
        let err = config.storage.apply_env(bad).unwrap_err();
        assert!(err.contains("BERTH_S3_CACHE_MAX_BYTES"), "{err}");
        let bad = |k: &str| (k == "BERTH_STORAGE_BACKEND").then(|| "nfs".to_owned());
        let err = config.storage.apply_env(bad).unwrap_err();
        assert!(err.contains("BERTH_STORAGE_BACKEND"), "{err}");
        assert_eq!(ServerConfig::default().storage.backend, BlobBackend::Fs);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = ServerConfig::from_toml("lisen = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
