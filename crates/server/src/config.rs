//! Server configuration: one struct, loadable from TOML, every field also settable by
//! flag and environment variable in the CLI (flags win over the file).

use std::net::SocketAddr;
use std::path::PathBuf;

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
}

/// `[database]`: the metadata and account store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
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

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: 16,
            acquire_timeout_secs: 5,
            statement_timeout_secs: 30,
        }
    }
}

impl DatabaseConfig {
    /// The PostgreSQL options, when a URL is configured.
    pub fn postgres(&self) -> Option<berth_storage::postgres::PgOptions> {
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: berth_proto::manifest::MAX_MANIFEST_SIZE,
            max_blob_bytes: 64 << 30,
            max_page_size: 10_000,
            upload_ttl_hours: 24 * 7,
        }
    }
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
        }
    }
}

impl ServerConfig {
    /// Parse a TOML configuration file's text.
    pub fn from_toml(text: &str) -> Result<ServerConfig, toml::de::Error> {
        toml::from_str(text)
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
        assert!(ServerConfig::default().metrics.enabled);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = ServerConfig::from_toml("lisen = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
