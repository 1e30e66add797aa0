//! Which certificates (or which lack of TLS) a registry may be reached with.
//!
//! Sources, all optional and combined:
//! - the system roots (the OS store via rustls-native-certs; webpki verification);
//! - `--ca-bundle FILE`: any number of PEM certificates one after another;
//! - `--ca-configmap FILE`: the `image-fetcher-ca-bundle` ConfigMap (`data.ca-bundle`);
//! - Docker `certs.d/<host[:port]>/*.crt` directories (per registry), and there a client
//!   certificate `NAME.cert` with its key `NAME.key` (e.g. `client.cert` + `client.key`),
//!   presented to registries that ask for one (mutual TLS), exactly as Docker does;
//! - containerd `hosts.toml` (`<hosts-dir>/<host[:port]>/hosts.toml`: `server`, `ca`,
//!   `skip_verify`, and `[host."URL"]` mirrors, in file order);
//! - insecure registries (`--insecure-registry HOST[:PORT]` or CIDR, Docker `daemon.json`
//!   `insecure-registries`): only these may skip verification or use plain HTTP.
//!   (Unlike Docker, loopback is *not* implicitly insecure.)

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::{ClientError, Result};
use crate::reference::split_host_port;

/// Default Docker / Podman per-registry certificate directories.
pub const DEFAULT_CERTS_DIRS: &[&str] = &["/etc/docker/certs.d", "/etc/containers/certs.d"];
/// Default containerd hosts directory.
pub const DEFAULT_HOSTS_DIRS: &[&str] = &["/etc/containerd/certs.d"];

/// An `insecure-registries` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsecureEntry {
    /// `host` (any port) or `host:port`.
    Host(String),
    Cidr(ipnet::IpNet),
}

impl InsecureEntry {
    pub fn parse(s: &str) -> Result<InsecureEntry> {
        let s = s.trim();
        let s = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .unwrap_or(s)
            .trim_end_matches('/');
        if s.contains('/') {
            return s
                .parse::<ipnet::IpNet>()
                .map(InsecureEntry::Cidr)
                .map_err(|e| {
                    ClientError::Config(format!(
                        "insecure registry {s:?} looks like a CIDR range but is not one ({e}); \
                         use HOST[:PORT] or e.g. 10.0.0.0/8"
                    ))
                });
        }
        if s.is_empty() || !crate::reference::validate_registry(s) {
            return Err(ClientError::Config(format!(
                "insecure registry {s:?} is not HOST[:PORT], [IPv6]:PORT or a CIDR range"
            )));
        }
        Ok(InsecureEntry::Host(s.to_ascii_lowercase()))
    }

    fn matches(&self, registry: &str, resolved: &[IpAddr]) -> bool {
        let registry = registry.to_ascii_lowercase();
        match self {
            InsecureEntry::Host(h) => {
                if *h == registry {
                    return true;
                }
                let (eh, ep) = split_host_port(h);
                let (rh, _) = split_host_port(&registry);
                ep.is_none() && eh == rh
            }
            InsecureEntry::Cidr(net) => {
                let (host, _) = split_host_port(&registry);
                match host.parse::<IpAddr>() {
                    Ok(ip) => net.contains(&ip),
                    Err(_) => resolved.iter().any(|ip| net.contains(ip)),
                }
            }
        }
    }
}

/// All trust configuration; build once, then ask [`TrustOptions::endpoints`] per registry.
#[derive(Debug, Clone)]
pub struct TrustOptions {
    extra_roots: Vec<CertificateDer<'static>>,
    /// Human descriptions of where the extra roots came from, for error messages.
    pub ca_sources: Vec<String>,
    pub certs_dirs: Vec<PathBuf>,
    pub hosts_dirs: Vec<PathBuf>,
    insecure: Vec<InsecureEntry>,
    /// Use the operating system's roots (default true).
    pub system_roots: bool,
    pub timeout: Duration,
}

impl Default for TrustOptions {
    fn default() -> Self {
        TrustOptions {
            extra_roots: Vec::new(),
            ca_sources: Vec::new(),
            certs_dirs: DEFAULT_CERTS_DIRS.iter().map(PathBuf::from).collect(),
            hosts_dirs: DEFAULT_HOSTS_DIRS.iter().map(PathBuf::from).collect(),
            insecure: Vec::new(),
            system_roots: true,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Parse a PEM bundle; errors name `what`.
pub fn parse_pem_bundle(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Config(format!("{what}: not a valid PEM bundle: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::Config(format!(
            "{what}: contains no `-----BEGIN CERTIFICATE-----` block"
        )));
    }
    for (i, c) in certs.iter().enumerate() {
        if x509_parser::parse_x509_certificate(c).is_err() {
            return Err(ClientError::Config(format!(
                "{what}: certificate #{} is not a valid X.509 certificate",
                i + 1
            )));
        }
    }
    Ok(certs)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ClientError::Config(format!("reading {}: {e}", path.display())))
}

impl TrustOptions {
    /// Options that ignore the machine's certs.d / hosts.toml directories (for tests and
    /// for callers that pass their own).
    pub fn isolated() -> TrustOptions {
        TrustOptions {
            certs_dirs: Vec::new(),
            hosts_dirs: Vec::new(),
            ..TrustOptions::default()
        }
    }

    pub fn extra_roots(&self) -> &[CertificateDer<'static>] {
        &self.extra_roots
    }

    /// Trust every certificate of a PEM bundle.
    pub fn add_ca_pem(&mut self, pem: &[u8], source: &str) -> Result<usize> {
        let certs = parse_pem_bundle(pem, source)?;
        let n = certs.len();
        for c in certs {
            if !self.extra_roots.contains(&c) {
                self.extra_roots.push(c);
            }
        }
        self.ca_sources.push(format!("{source} ({n} certificates)"));
        Ok(n)
    }

    /// `--ca-bundle FILE`.
    pub fn add_ca_bundle_file(&mut self, path: &Path) -> Result<usize> {
        let pem = read_file(path)?;
        self.add_ca_pem(&pem, &format!("--ca-bundle {}", path.display()))
    }

    /// `--ca-configmap FILE`: the `image-fetcher-ca-bundle` ConfigMap, YAML or JSON.
    pub fn add_ca_configmap_file(&mut self, path: &Path) -> Result<usize> {
        let text = read_file(path)?;
        let text = String::from_utf8(text).map_err(|_| {
            ClientError::Config(format!("{}: ConfigMap is not UTF-8", path.display()))
        })?;
        let pem = crate::kube::read_ca_configmap(&text)
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        self.add_ca_pem(
            pem.as_bytes(),
            &format!("--ca-configmap {} (data.ca-bundle)", path.display()),
        )
    }

    /// `--insecure-registry HOST[:PORT]|CIDR`.
    pub fn add_insecure(&mut self, entry: &str) -> Result<()> {
        let e = InsecureEntry::parse(entry)?;
        if !self.insecure.contains(&e) {
            self.insecure.push(e);
        }
        Ok(())
    }

    /// Docker `daemon.json`: its `insecure-registries` entries.
    pub fn load_daemon_json(&mut self, path: &Path) -> Result<usize> {
        let text = read_file(path)?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| ClientError::Config(format!("{}: not JSON: {e}", path.display())))?;
        let mut n = 0;
        if let Some(list) = v.get("insecure-registries").and_then(|l| l.as_array()) {
            for e in list {
                let s = e.as_str().ok_or_else(|| {
                    ClientError::Config(format!(
                        "{}: insecure-registries entries must be strings",
                        path.display()
                    ))
                })?;
                self.add_insecure(s)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether `registry` (host[:port]) is listed as insecure.
    pub async fn is_insecure(&self, registry: &str) -> bool {
        if self.insecure.is_empty() {
            return false;
        }
        let needs_dns = self
            .insecure
            .iter()
            .any(|e| matches!(e, InsecureEntry::Cidr(_)))
            && split_host_port(registry).0.parse::<IpAddr>().is_err();
        let resolved: Vec<IpAddr> = if needs_dns {
            let (h, p) = split_host_port(registry);
            match tokio::net::lookup_host((h, p.unwrap_or(443))).await {
                Ok(addrs) => addrs.map(|a| a.ip()).collect(),
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        self.insecure.iter().any(|e| e.matches(registry, &resolved))
    }

    /// The endpoints to reach `registry` (the name in the reference, e.g. `docker.io` or
    /// `host:5000`), mirrors first, the registry itself last.
    pub async fn endpoints(&self, registry: &str) -> Result<Vec<EndpointConfig>> {
        let api = crate::reference::api_host(registry).to_string();
        let mut out = Vec::new();
        let mut server: Option<EndpointConfig> = None;
        if let Some((file, hosts)) = self.find_hosts_toml(registry, &api)? {
            for h in hosts.mirrors {
                out.push(h);
            }
            if let Some(s) = hosts.server {
                server = Some(s);
            }
            tracing::debug!(file = %file.display(), "using containerd hosts.toml");
        }
        let mut server = server.unwrap_or_else(|| EndpointConfig {
            url: format!("https://{api}"),
            ..EndpointConfig::default()
        });
        server.is_registry = true;
        out.push(server);
        for ep in &mut out {
            let hostport = ep.host_port();
            ep.insecure = self.is_insecure(&hostport).await
                || (ep.is_registry && self.is_insecure(registry).await);
            for dir in &self.certs_dirs {
                for name in [hostport.as_str(), registry] {
                    let d = dir.join(name);
                    if let Ok(rd) = std::fs::read_dir(&d) {
                        let mut files: Vec<PathBuf> = rd
                            .filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                            .collect();
                        files.sort();
                        for f in files {
                            if !ep.ca_files.contains(&f) {
                                ep.ca_files.push(f);
                            }
                        }
                        if ep.client_cert.is_none() {
                            ep.client_cert = client_cert_in(&d)?;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn find_hosts_toml(&self, registry: &str, api: &str) -> Result<Option<(PathBuf, HostsToml)>> {
        for dir in &self.hosts_dirs {
            for name in [registry, api, "_default"] {
                let file = dir.join(name).join("hosts.toml");
                if file.is_file() {
                    let text = String::from_utf8(read_file(&file)?).map_err(|_| {
                        ClientError::Config(format!("{}: not UTF-8", file.display()))
                    })?;
                    let parsed = parse_hosts_toml(&text, file.parent().unwrap_or(dir), api)
                        .map_err(|e| ClientError::Config(format!("{}: {e}", file.display())))?;
                    return Ok(Some((file, parsed)));
                }
            }
        }
        Ok(None)
    }

    /// Build the HTTP client(s) for one endpoint.
    pub fn build_endpoint(&self, cfg: &EndpointConfig) -> Result<Endpoint> {
        let mut roots = self.extra_roots.clone();
        let mut ca_desc = self.ca_sources.clone();
        for f in &cfg.ca_files {
            let pem = read_file(f)?;
            let certs = parse_pem_bundle(&pem, &f.display().to_string())?;
            ca_desc.push(format!("{} ({} certificates)", f.display(), certs.len()));
            roots.extend(certs);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let failure: Arc<Mutex<Option<CertFailure>>> = Arc::default();
        let skip = cfg.skip_verify || cfg.insecure;
        let inner: Arc<dyn ServerCertVerifier> = if skip {
            Arc::new(NoVerifier(provider.clone()))
        } else {
            let mut store = rustls::RootCertStore::empty();
            for r in &roots {
                store
                    .add(r.clone())
                    .map_err(|e| ClientError::Config(format!("unusable CA certificate: {e}")))?;
            }
            let explicit = if store.is_empty() {
                None
            } else {
                Some(webpki_verifier(store, &provider)?)
            };
            Arc::new(LayeredVerifier {
                explicit,
                roots: roots.clone(),
                system: self.system_roots,
                full: std::sync::OnceLock::new(),
                provider: provider.clone(),
            })
        };
        let verifier = Arc::new(RecordingVerifier {
            inner,
            failure: failure.clone(),
        });
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let tls = match &cfg.client_cert {
            None => tls.with_no_client_auth(),
            Some((cert, key)) => {
                let (chain, key_der) = load_client_cert(cert, key)?;
                tls.with_client_auth_cert(chain, key_der).map_err(|e| {
                    ClientError::Config(format!(
                        "client certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
        };
        let mut tls = tls;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls_probe = Arc::new(tls.clone());
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(self.timeout)
            .read_timeout(Duration::from_secs(300))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(format!("building HTTP client: {e}")))?;
        let http_url = cfg
            .url
            .strip_prefix("https://")
            .map(|rest| format!("http://{rest}"));
        Ok(Endpoint {
            base: Arc::new(Mutex::new(cfg.url.trim_end_matches('/').to_string())),
            http_fallback: if cfg.insecure { http_url } else { None },
            client,
            config: cfg.clone(),
            ca_desc,
            cert_failure: failure,
            tls: tls_probe,
        })
    }
}

fn tls_alert_blocking(host: &str, port: u16, tls: Arc<rustls::ClientConfig>) -> Option<String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let mut sock = std::net::TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    sock.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    sock.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let name = ServerName::try_from(host.to_string()).ok()?;
    let mut conn = rustls::ClientConnection::new(tls, name).ok()?;
    let mut stream = rustls::Stream::new(&mut conn, &mut sock);
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return Some(e.to_string());
    }
    // Read (a bounded amount of) the answer: an alert shows up as the read's error.
    let mut buf = [0u8; 16 * 1024];
    for _ in 0..64 {
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(_) => continue,
            Err(e) => return Some(e.to_string()),
        }
    }
    None
}

/// One place to send requests to: the registry or a mirror.
#[derive(Debug, Clone, Default)]
pub struct EndpointConfig {
    /// `https://host[:port]` (or `http://` for a containerd host entry / insecure registry).
    pub url: String,
    /// CA files for this endpoint (certs.d, hosts.toml `ca`).
    pub ca_files: Vec<PathBuf>,
    /// A client certificate (PEM chain) and its private key (certs.d `NAME.cert` +
    /// `NAME.key`), for registries that require mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// hosts.toml `skip_verify = true`.
    pub skip_verify: bool,
    /// Listed as an insecure registry: no verification, HTTP fallback.
    pub insecure: bool,
    pub can_pull: bool,
    pub can_resolve: bool,
    pub can_push: bool,
    /// The registry itself (not a mirror).
    pub is_registry: bool,
}

impl EndpointConfig {
    pub fn host_port(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        rest.split('/').next().unwrap_or(rest).to_string()
    }
}

/// A built endpoint: its HTTP client and what to say when TLS fails.
#[derive(Clone)]
pub struct Endpoint {
    /// Current base URL (`https://…`, or `http://…` after an insecure fallback).
    base: Arc<Mutex<String>>,
    http_fallback: Option<String>,
    pub client: reqwest::Client,
    pub config: EndpointConfig,
    /// Where this endpoint's CAs came from.
    pub ca_desc: Vec<String>,
    cert_failure: Arc<Mutex<Option<CertFailure>>>,
    /// The TLS settings of `client`, for [`Endpoint::probe_tls_alert`].
    tls: Arc<rustls::ClientConfig>,
}

impl Endpoint {
    /// Open one more TLS connection, send a request and read the answer, returning the TLS
    /// error that ends it, if any. A registry that wants a client certificate says so with
    /// an alert that TLS 1.3 delivers only after the handshake; when it arrives while the
    /// HTTP client still thinks the connection is being set up, all the client reports is
    /// a closed connection, and this second look finds the alert.
    pub async fn probe_tls_alert(&self) -> Option<String> {
        let url = reqwest::Url::parse(&self.base()).ok()?;
        if url.scheme() != "https" {
            return None;
        }
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_or_known_default()?;
        let tls = self.tls.clone();
        tokio::task::spawn_blocking(move || tls_alert_blocking(&host, port, tls))
            .await
            .ok()
            .flatten()
    }

    pub fn base(&self) -> String {
        self.base.lock().unwrap().clone()
    }

    /// Switch an insecure registry to plain HTTP; false if not allowed or already done.
    pub fn fall_back_to_http(&self) -> bool {
        let Some(http) = &self.http_fallback else {
            return false;
        };
        let mut b = self.base.lock().unwrap();
        if *b == *http {
            return false;
        }
        tracing::info!(endpoint = %http, "insecure registry: falling back to plain HTTP");
        *b = http.clone();
        true
    }

    /// Whether a certificate failure was recorded (not consuming it).
    pub fn has_cert_failure(&self) -> bool {
        self.cert_failure.lock().unwrap().is_some()
    }

    pub fn take_cert_failure(&self) -> Option<CertFailure> {
        self.cert_failure.lock().unwrap().take()
    }
}

/// A certificate the server presented that did not verify.
#[derive(Debug, Clone)]
pub struct CertFailure {
    pub server_name: String,
    pub end_entity: CertificateDer<'static>,
    pub error: rustls::Error,
}

/// Subject, issuer and names of a DER certificate, for messages.
#[derive(Debug, Clone, Default)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub names: Vec<String>,
    pub not_after: String,
    pub self_signed: bool,
}

pub fn cert_info(der: &[u8]) -> CertInfo {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(der) else {
        return CertInfo {
            subject: "(unparseable certificate)".into(),
            ..CertInfo::default()
        };
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        names.push(IpAddr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        names.push(IpAddr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    CertInfo {
        subject: x.subject().to_string(),
        issuer: x.issuer().to_string(),
        names,
        not_after: x.validity().not_after.to_string(),
        self_signed: x.subject() == x.issuer(),
    }
}

#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    failure: Arc<Mutex<Option<CertFailure>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let r = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let Err(e) = &r {
            *self.failure.lock().unwrap() = Some(CertFailure {
                server_name: server_name.to_str().into_owned(),
                end_entity: end_entity.clone().into_owned(),
                error: e.clone(),
            });
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any certificate (only for insecure registries and `skip_verify` hosts); the
/// handshake signatures are still checked.
#[derive(Debug)]
struct NoVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The operating system's trusted roots (loaded once; unreadable ones skipped).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let r = rustls_native_certs::load_native_certs();
        for e in &r.errors {
            tracing::debug!(error = %e, "skipping a system root certificate");
        }
        r.certs
    })
}

/// The client certificate of a certs.d directory, as Docker finds it: a `NAME.cert` file
/// needs `NAME.key` next to it (an error names the missing one); the first pair in name
/// order is used.
fn client_cert_in(dir: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut certs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cert"))
        .collect();
    certs.sort();
    let Some(cert) = certs.into_iter().next() else {
        return Ok(None);
    };
    let key = cert.with_extension("key");
    if !key.is_file() {
        return Err(ClientError::Config(format!(
            "client certificate {} has no key: put its private key (PEM) in {}",
            cert.display(),
            key.display()
        )));
    }
    Ok(Some((cert, key)))
}

fn load_client_cert(
    cert: &Path,
    key: &Path,
) -> Result<(
    Vec<CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
)> {
    let chain = parse_pem_bundle(&read_file(cert)?, &cert.display().to_string())?;
    let key_der =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(&read_file(key)?).map_err(|e| {
            ClientError::Config(format!(
                "{}: no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {e}",
                key.display()
            ))
        })?;
    Ok((chain, key_der))
}

fn webpki_verifier(
    store: rustls::RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>> {
    let v: Arc<dyn ServerCertVerifier> =
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            provider.clone(),
        )
        .build()
        .map_err(|e| ClientError::Config(format!("TLS verifier: {e}")))?;
    Ok(v)
}

/// Verification against the union of the explicitly given CAs and the system roots,
/// without loading the system store when it is not needed: a certificate that chains to
/// an explicit CA is accepted at once (a chain to any root of the union is a chain to a
/// root of one of the two sets); only otherwise is the union (system roots, read and
/// parsed once per process, plus the explicit CAs) built and asked, and its verdict is
/// the answer, errors included.
#[derive(Debug)]
struct LayeredVerifier {
    explicit: Option<Arc<dyn ServerCertVerifier>>,
    roots: Vec<CertificateDer<'static>>,
    system: bool,
    full: std::sync::OnceLock<Arc<dyn ServerCertVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl LayeredVerifier {
    fn full(&self) -> &Arc<dyn ServerCertVerifier> {
        self.full.get_or_init(|| {
            if !self.system
                && let Some(e) = &self.explicit
            {
                return e.clone();
            }
            let mut store = rustls::RootCertStore::empty();
            if self.system {
                store.add_parsable_certificates(system_roots().iter().cloned());
            }
            store.add_parsable_certificates(self.roots.iter().cloned());
            if store.is_empty() {
                return Arc::new(NoRoots(self.provider.clone()));
            }
            webpki_verifier(store, &self.provider)
                .unwrap_or_else(|_| Arc::new(NoRoots(self.provider.clone())))
        })
    }
}

impl ServerCertVerifier for LayeredVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(e) = &self.explicit
            && let Ok(v) =
                e.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            return Ok(v);
        }
        self.full()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Used when no root at all is available: every certificate is of unknown authority.
#[derive(Debug)]
struct NoRoots(Arc<CryptoProvider>);

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        NoVerifier(self.0.clone()).verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        NoVerifier(self.0.clone()).verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A parsed containerd `hosts.toml`.
#[derive(Debug, Default)]
pub struct HostsToml {
    pub server: Option<EndpointConfig>,
    pub mirrors: Vec<EndpointConfig>,
}

fn toml_ca(v: Option<&toml::Value>, base: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let list: Vec<&str> = match v {
        None => Vec::new(),
        Some(toml::Value::String(s)) => vec![s.as_str()],
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().ok_or("`ca` entries must be strings"))
            .collect::<std::result::Result<_, _>>()?,
        Some(_) => return Err("`ca` must be a string or an array of strings".into()),
    };
    Ok(list
        .into_iter()
        .map(|p| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        })
        .collect())
}

fn toml_caps(v: Option<&toml::Value>, c: &mut EndpointConfig) -> std::result::Result<(), String> {
    match v {
        None => {
            c.can_pull = true;
            c.can_resolve = true;
            c.can_push = true;
        }
        Some(toml::Value::Array(a)) => {
            for x in a {
                match x.as_str() {
                    Some("pull") => c.can_pull = true,
                    Some("resolve") => c.can_resolve = true,
                    Some("push") => c.can_push = true,
                    _ => return Err(format!("unknown capability {x}")),
                }
            }
        }
        Some(_) => return Err("`capabilities` must be an array".into()),
    }
    Ok(())
}

fn normalize_host_url(u: &str) -> String {
    let u = u.trim_end_matches('/');
    let u = u.strip_suffix("/v2").unwrap_or(u);
    if u.contains("://") {
        u.to_string()
    } else {
        format!("https://{u}")
    }
}

/// Parse `hosts.toml`; relative `ca` paths are relative to `dir`. `api` is the default server.
pub fn parse_hosts_toml(
    text: &str,
    dir: &Path,
    api: &str,
) -> std::result::Result<HostsToml, String> {
    let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
    let mut out = HostsToml::default();
    let server_url = match table.get("server") {
        Some(toml::Value::String(s)) => normalize_host_url(s),
        Some(_) => return Err("`server` must be a string".into()),
        None => format!("https://{api}"),
    };
    let mut server = EndpointConfig {
        url: server_url,
        ca_files: toml_ca(table.get("ca"), dir)?,
        skip_verify: table
            .get("skip_verify")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        ..EndpointConfig::default()
    };
    toml_caps(table.get("capabilities"), &mut server)?;
    if let Some(hosts) = table.get("host") {
        let hosts = hosts.as_table().ok_or("`host` must be a table")?;
        // File order (the toml table is sorted): order by where each key appears.
        let mut keys: Vec<(usize, &String)> = hosts
            .keys()
            .map(|k| (text.find(&format!("\"{k}\"")).unwrap_or(usize::MAX), k))
            .collect();
        keys.sort();
        for (_, k) in keys {
            let h = hosts[k]
                .as_table()
                .ok_or_else(|| format!("host.{k:?} must be a table"))?;
            let mut c = EndpointConfig {
                url: normalize_host_url(k),
                ca_files: toml_ca(h.get("ca"), dir)?,
                skip_verify: h
                    .get("skip_verify")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
                ..EndpointConfig::default()
            };
            toml_caps(h.get("capabilities"), &mut c)?;
            if c.url == server.url {
                c.is_registry = true;
                server = c;
            } else {
                out.mirrors.push(c);
            }
        }
    }
    out.server = Some(server);
    Ok(out)
}

/// Read a PEM file and say what it is, for `berth trust` output.
pub fn describe_pem_file(path: &Path) -> Result<Vec<CertInfo>> {
    let pem = read_file(path)?;
    Ok(parse_pem_bundle(&pem, &path.display().to_string())?
        .iter()
        .map(|c| cert_info(c))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_entries() {
        let e = InsecureEntry::parse("myreg:5000").unwrap();
        assert!(e.matches("myreg:5000", &[]));
        assert!(!e.matches("myreg:5001", &[]));
        assert!(!e.matches("other:5000", &[]));
        let e = InsecureEntry::parse("myreg").unwrap();
        assert!(e.matches("myreg:5000", &[]) && e.matches("myreg", &[]));
        let e = InsecureEntry::parse("10.0.0.0/8").unwrap();
        assert!(e.matches("10.1.2.3:5000", &[]));
        assert!(!e.matches("11.1.2.3:5000", &[]));
        assert!(e.matches("reg.local", &["10.9.9.9".parse().unwrap()]));
        let e = InsecureEntry::parse("[::1]:5000").unwrap();
        assert!(e.matches("[::1]:5000", &[]));
        assert!(InsecureEntry::parse("1.2.3.4/99").is_err());
        assert!(InsecureEntry::parse("a b").is_err());
    }

    #[test]
    fn hosts_toml() {
        let text = r#"
server = "https://registry.example.com"
ca = "root.crt"

[host."https://zmirror.example.com"]
  capabilities = ["pull", "resolve"]
  ca = ["/etc/a.crt", "b.crt"]

[host."http://amirror:5000"]
  capabilities = ["pull"]
  skip_verify = true
"#;
        let h = parse_hosts_toml(text, Path::new("/d"), "registry.example.com").unwrap();
        let s = h.server.unwrap();
        assert_eq!(s.url, "https://registry.example.com");
        assert_eq!(s.ca_files, vec![PathBuf::from("/d/root.crt")]);
        assert!(s.can_push);
        assert_eq!(h.mirrors.len(), 2);
        assert_eq!(h.mirrors[0].url, "https://zmirror.example.com");
        assert_eq!(
            h.mirrors[0].ca_files,
            vec![PathBuf::from("/etc/a.crt"), PathBuf::from("/d/b.crt")]
        );
        assert!(!h.mirrors[0].can_push && h.mirrors[0].can_pull);
        assert_eq!(h.mirrors[1].url, "http://amirror:5000");
        assert!(h.mirrors[1].skip_verify);
        assert_eq!(h.mirrors[1].host_port(), "amirror:5000");
        assert!(parse_hosts_toml("server = 1", Path::new("/"), "x").is_err());
    }

    #[test]
    fn daemon_json() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("daemon.json");
        std::fs::write(
            &p,
            r#"{"insecure-registries": ["192.168.1.10", "harbor.local:8443", "172.16.0.0/12"]}"#,
        )
        .unwrap();
        let mut t = TrustOptions::isolated();
        assert_eq!(t.load_daemon_json(&p).unwrap(), 3);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(t.is_insecure("192.168.1.10:443").await);
            assert!(t.is_insecure("harbor.local:8443").await);
            assert!(t.is_insecure("172.20.1.1:5000").await);
            assert!(!t.is_insecure("harbor.local:443").await);
            assert!(!t.is_insecure("127.0.0.1:5000").await);
        });
    }
}
