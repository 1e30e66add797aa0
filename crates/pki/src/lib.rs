//! Certificates for Berth: a local certificate authority, server certificates
//! signed by it, the on-disk certificate directory, and how to make clients
//! trust the CA.
//!
//! Berth is HTTPS-first. On first start (`berth serve`) it calls [`ensure_dir`],
//! which creates a certificate directory holding four files (see [`CertFiles`]):
//!
//! | file         | content                                                        | mode |
//! |--------------|----------------------------------------------------------------|------|
//! | `ca.crt`     | self-signed CA, ECDSA P-256, 10 years ([`generate_ca`])        | 0644 |
//! | `ca.key`     | the CA's PKCS#8 private key                                    | 0600 |
//! | `server.crt` | server certificate signed by the CA, ~2 years ([`issue_server_cert`]) | 0644 |
//! | `server.key` | the server's PKCS#8 private key                                | 0600 |
//!
//! `berth cert init` calls [`init_dir`], which keeps an existing CA and
//! (re)issues the server certificate for the given names. Every file is written
//! atomically (temporary file in the same directory, `fsync`, `rename`), and key
//! files are created with mode 0600 from the start rather than `chmod`ed later.
//!
//! Clients must trust `ca.crt`; [`trust_instructions`] prints the steps for
//! Docker, containerd, Podman/Skopeo, the Debian system store and Kubernetes.
//! [`parse_pem_bundle`] and [`describe_cert`] read certificates back, for
//! `berth cert show` and for error messages.
//!
//! Cryptography is rcgen on aws-lc-rs (never ring). Certificates are parsed with
//! `x509-parser`, the same parser rcgen uses to rebuild an issuer from an
//! existing `ca.crt`, so it adds nothing to the dependency graph.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

/// Validity of a CA made by [`generate_ca`].
const CA_VALIDITY: Duration = Duration::days(3650);
/// Validity of a server certificate. Apple platforms reject TLS server
/// certificates valid for more than 825 days; stay well below.
const SERVER_VALIDITY: Duration = Duration::days(730);
/// Certificates start this long in the past, to tolerate clock skew between
/// the registry and its clients.
const BACKDATE: Duration = Duration::hours(1);
/// Organization written into every certificate's subject.
const ORGANIZATION: &str = "Berth";

/// Everything that can go wrong here. Each message names the file (or input)
/// concerned and says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A DNS name for a server certificate is not a valid hostname.
    #[error(
        "invalid DNS name {name:?} for the server certificate: {reason}; use a hostname such as \
         registry.example.com (a leading \"*.\" wildcard is allowed) and give IP addresses as IPs"
    )]
    InvalidDnsName { name: String, reason: String },

    /// A server certificate was requested without any name or IP.
    #[error(
        "no DNS names or IP addresses were given for the server certificate; give at least one, \
         for example localhost or 127.0.0.1"
    )]
    NoNames,

    /// The CA common name is empty or contains control characters.
    #[error(
        "invalid CA common name {0:?}: it must be non-empty, at most 64 characters and free of \
         control characters; choose a name such as \"Berth CA\""
    )]
    InvalidCommonName(String),

    /// rcgen / aws-lc-rs failed to create a key or certificate.
    #[error(
        "could not generate {what}: {source}; this is a bug or a broken crypto library, please report it"
    )]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },

    /// The certificate directory could not be created.
    #[error(
        "cannot create the certificate directory {}: {source}; check that its parent exists and \
         is writable by this user, or choose another directory",
        path.display()
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A file could not be read.
    #[error("cannot read {}: {source}; check that it exists and is readable by this user", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A file could not be written.
    #[error(
        "cannot write {}: {source}; check that its directory is writable by this user and that \
         the disk is not full",
        path.display()
    )]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Only one of `ca.crt` / `ca.key` exists.
    #[error(
        "{} exists but {} is missing; restore the missing file, or remove {} to let Berth create \
         a new CA (every client that trusted the old CA must then trust the new one)",
        present.display(), missing.display(), present.display()
    )]
    IncompleteCa { present: PathBuf, missing: PathBuf },

    /// A private key could not be parsed.
    #[error(
        "{what} is not a usable private key: {reason}; expected an unencrypted PEM \"PRIVATE KEY\" \
         (PKCS#8), \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\" block"
    )]
    InvalidKey { what: String, reason: String },

    /// A certificate could not be parsed.
    #[error(
        "{what} is not a valid certificate: {reason}; expected PEM with a \
         \"-----BEGIN CERTIFICATE-----\" block"
    )]
    InvalidCert { what: String, reason: String },

    /// PEM input held no CERTIFICATE block.
    #[error(
        "{what} contains no certificates; expected one or more PEM \
         \"-----BEGIN CERTIFICATE-----\" blocks, one after another"
    )]
    NoCertificates { what: String },

    /// The certificate given as CA is not a CA.
    #[error(
        "{what} is not a CA certificate (it lacks basic constraints CA:TRUE); use a CA \
         certificate, or remove ca.crt and ca.key to let Berth create its own CA"
    )]
    NotACa { what: String },

    /// The CA key does not belong to the CA certificate.
    #[error(
        "the private key {key} does not belong to the CA certificate {cert}; put the matching \
         key in place, or remove both to let Berth create a new CA"
    )]
    CaKeyMismatch { cert: String, key: String },

    /// The CA certificate has expired (or is not valid yet).
    #[error(
        "the CA certificate {what} is not valid now (valid {not_before} to {not_after}); check \
         the system clock, or remove ca.crt and ca.key to let Berth create a new CA (clients must \
         then trust the new one)"
    )]
    CaNotValidNow {
        what: String,
        not_before: String,
        not_after: String,
    },
}

/// A certificate and its private key, both PEM. `key_pem` is PKCS#8
/// (`-----BEGIN PRIVATE KEY-----`).
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// Subject CN, SANs and expiry of a certificate (see [`describe_cert`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject_cn: Option<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// RFC 3339, UTC, e.g. `2028-11-26T23:07:00Z`.
    pub not_after: String,
}

/// Paths of the four files in a certificate directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub dir: PathBuf,
    pub ca_crt: PathBuf,
    pub ca_key: PathBuf,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
}

impl CertFiles {
    /// `ca.crt`, `ca.key`, `server.crt` and `server.key` in `dir`. Touches nothing.
    pub fn in_dir(dir: &Path) -> CertFiles {
        CertFiles {
            dir: dir.to_path_buf(),
            ca_crt: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_crt: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}

// ---------------------------------------------------------------------------
// Generating certificates
// ---------------------------------------------------------------------------

/// A self-signed CA (CA:true, keyCertSign/cRLSign, ECDSA P-256, 10 years,
/// CN = common_name, O = "Berth").
///
/// The CA may only sign end-entity certificates (path length 0).
pub fn generate_ca(common_name: &str) -> Result<CertPair, PkiError> {
    let cn = common_name.trim();
    if cn.is_empty() || cn.chars().count() > 64 || cn.chars().any(char::is_control) {
        return Err(PkiError::InvalidCommonName(common_name.to_string()));
    }
    let key = new_key("the CA key")?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            what: "the CA certificate",
            source,
        })?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server certificate signed by `ca` (serverAuth EKU, digitalSignature,
/// ~2 years (≤ 825 days), SANs = every DNS name and IP, CN = first name).
///
/// "First name" is the first DNS name, or the first IP if there are no DNS
/// names. DNS names are validated (see the crate docs), lower-cased and
/// de-duplicated. The certificate never outlives the CA.
pub fn issue_server_cert(
    ca: &CertPair,
    dns_names: &[String],
    ips: &[IpAddr],
) -> Result<CertPair, PkiError> {
    let names = normalize_names(dns_names, ips)?;
    let ca = LoadedCa::load(
        &ca.cert_pem,
        &ca.key_pem,
        "the CA certificate",
        "the CA private key",
    )?;
    ca.issue(&names)
}

/// Validated, normalized subject alternative names.
struct Names {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

fn normalize_names(dns_names: &[String], ips: &[IpAddr]) -> Result<Names, PkiError> {
    let mut dns = Vec::with_capacity(dns_names.len());
    for name in dns_names {
        let name = validate_dns_name(name)?;
        if !dns.contains(&name) {
            dns.push(name);
        }
    }
    let mut uniq_ips = Vec::with_capacity(ips.len());
    for ip in ips {
        if !uniq_ips.contains(ip) {
            uniq_ips.push(*ip);
        }
    }
    if dns.is_empty() && uniq_ips.is_empty() {
        return Err(PkiError::NoNames);
    }
    Ok(Names { dns, ips: uniq_ips })
}

/// A CA certificate and key, checked to belong together, ready to sign.
struct LoadedCa {
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl LoadedCa {
    fn load(
        cert_pem: &str,
        key_pem: &str,
        cert_what: &str,
        key_what: &str,
    ) -> Result<LoadedCa, PkiError> {
        let der = first_cert(cert_pem.as_bytes(), cert_what)?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::InvalidCert {
                what: cert_what.to_string(),
                reason: e.to_string(),
            })?;
        if !x509.is_ca() {
            return Err(PkiError::NotACa {
                what: cert_what.to_string(),
            });
        }
        let validity = x509.validity();
        let not_before = asn1_time(&validity.not_before);
        let not_after = asn1_time(&validity.not_after);
        let now = OffsetDateTime::now_utc();
        if now < not_before || now > not_after {
            return Err(PkiError::CaNotValidNow {
                what: cert_what.to_string(),
                not_before: rfc3339(not_before),
                not_after: rfc3339(not_after),
            });
        }

        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidKey {
            what: key_what.to_string(),
            reason: e.to_string(),
        })?;
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(PkiError::CaKeyMismatch {
                cert: cert_what.to_string(),
                key: key_what.to_string(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::InvalidCert {
            what: cert_what.to_string(),
            reason: format!("cannot use it to sign: {e}"),
        })?;
        Ok(LoadedCa { issuer, not_after })
    }

    fn issue(&self, names: &Names) -> Result<CertPair, PkiError> {
        let mut params = CertificateParams::default();
        let cn = match (names.dns.first(), names.ips.first()) {
            (Some(dns), _) => dns.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => return Err(PkiError::NoNames),
        };
        params.distinguished_name = subject(&cn);
        let mut sans = Vec::with_capacity(names.dns.len() + names.ips.len());
        for name in &names.dns {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|_| PkiError::InvalidDnsName {
                    name: name.clone(),
                    reason: "only ASCII letters, digits, '-' and '.' are allowed".to_string(),
                })?;
            sans.push(SanType::DnsName(ia5));
        }
        sans.extend(names.ips.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = (now + SERVER_VALIDITY).min(self.not_after);

        let key = new_key("the server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Generate {
                what: "the server certificate",
                source,
            })?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn new_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { what, source })
}

fn subject(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

// ---------------------------------------------------------------------------
// Name validation
// ---------------------------------------------------------------------------

/// Checks that `name` is a valid hostname (RFC 1123 labels, at most 253
/// characters, optionally starting with a `*.` wildcard) and returns it
/// lower-cased, without a trailing dot.
fn validate_dns_name(name: &str) -> Result<String, PkiError> {
    let invalid = |reason: &str| PkiError::InvalidDnsName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.parse::<IpAddr>().is_ok() {
        return Err(invalid("it is an IP address, give it as an IP instead"));
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    if trimmed.len() > 253 {
        return Err(invalid("it is longer than 253 characters"));
    }
    let rest = trimmed.strip_prefix("*.").unwrap_or(trimmed);
    if rest.is_empty() {
        return Err(invalid("a wildcard needs a domain after \"*.\""));
    }
    let labels: Vec<&str> = rest.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(invalid(
                "it has an empty label (two dots in a row, or a leading dot)",
            ));
        }
        if label.len() > 63 {
            return Err(invalid("a label is longer than 63 characters"));
        }
        if label.contains('*') {
            return Err(invalid(
                "a wildcard is only allowed as the whole first label (\"*.example.com\")",
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(invalid(&format!(
                "it contains {c:?}; only ASCII letters, digits, '-' and '.' are allowed \
                 (use punycode for international names)"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(invalid("a label starts or ends with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid(
            "the last label is all digits, which no hostname has",
        ));
    }
    Ok(trimmed.to_ascii_lowercase())
}

// ---------------------------------------------------------------------------
// The certificate directory
// ---------------------------------------------------------------------------

/// `berth cert init`: create DIR, reuse an existing ca.crt/ca.key there (or
/// create them), and (re)issue server.crt/server.key for the names.
///
/// Key files are created with mode 0600; all writes are atomic (temporary
/// file + rename). Names are validated before anything is written. If only one
/// of ca.crt/ca.key exists the directory is left alone and
/// [`PkiError::IncompleteCa`] is returned.
pub fn init_dir(dir: &Path, dns_names: &[String], ips: &[IpAddr]) -> Result<CertFiles, PkiError> {
    let names = normalize_names(dns_names, ips)?;
    let files = CertFiles::in_dir(dir);
    fs::DirBuilder::new()
        .recursive(true)
        .create(dir)
        .map_err(|source| PkiError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;

    let ca = match (exists(&files.ca_crt)?, exists(&files.ca_key)?) {
        (true, true) => {
            let cert_pem = read_string(&files.ca_crt)?;
            let key_pem = read_string(&files.ca_key)?;
            LoadedCa::load(
                &cert_pem,
                &key_pem,
                &files.ca_crt.display().to_string(),
                &files.ca_key.display().to_string(),
            )?
        }
        (false, false) => {
            let pair = generate_ca(&default_ca_name())?;
            // Key first: a ca.crt without its key would be unusable.
            write_atomic(&files.ca_key, pair.key_pem.as_bytes(), 0o600)?;
            write_atomic(&files.ca_crt, pair.cert_pem.as_bytes(), 0o644)?;
            LoadedCa::load(
                &pair.cert_pem,
                &pair.key_pem,
                "the new CA",
                "the new CA key",
            )?
        }
        (true, false) => {
            return Err(PkiError::IncompleteCa {
                present: files.ca_crt.clone(),
                missing: files.ca_key.clone(),
            });
        }
        (false, true) => {
            return Err(PkiError::IncompleteCa {
                present: files.ca_key.clone(),
                missing: files.ca_crt.clone(),
            });
        }
    };

    let server = ca.issue(&names)?;
    write_atomic(&files.server_key, server.key_pem.as_bytes(), 0o600)?;
    write_atomic(&files.server_crt, server.cert_pem.as_bytes(), 0o644)?;
    Ok(files)
}

/// `berth serve` first start: if server.crt+server.key exist in DIR, leave
/// them (whoever made them); otherwise like [`init_dir`].
pub fn ensure_dir(dir: &Path, dns_names: &[String], ips: &[IpAddr]) -> Result<CertFiles, PkiError> {
    let files = CertFiles::in_dir(dir);
    if exists(&files.server_crt)? && exists(&files.server_key)? {
        return Ok(files);
    }
    init_dir(dir, dns_names, ips)
}

/// Common name for a CA created by [`init_dir`]: names the machine so that
/// several Berth CAs can be told apart in a trust store.
fn default_ca_name() -> String {
    match hostname() {
        Some(host) => format!("Berth CA ({host})"),
        None => "Berth CA".to_string(),
    }
}

fn exists(path: &Path) -> Result<bool, PkiError> {
    path.try_exists().map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `data` to `path` atomically: a new temporary file in the same
/// directory, created with `mode` (so a key is never readable by others, not
/// even briefly), synced, then renamed over `path`; the directory is synced
/// afterwards so the rename survives a crash.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(source));
    }
    // Best effort: some file systems refuse to fsync a directory.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Default names
// ---------------------------------------------------------------------------

/// The machine's default names for a first-run certificate: "localhost", the
/// hostname (from /proc/sys/kernel/hostname or /etc/hostname, if any and
/// valid), and IPs 127.0.0.1 and ::1.
pub fn default_names() -> (Vec<String>, Vec<IpAddr>) {
    let mut names = vec!["localhost".to_string()];
    if let Some(host) = hostname()
        && !names.contains(&host)
    {
        names.push(host);
    }
    (
        names,
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    )
}

/// The machine's hostname, lower-cased, if it is a valid (non-wildcard) DNS name.
fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .filter(|s| !s.starts_with('*'))
        .and_then(|s| validate_dns_name(&s).ok())
}

// ---------------------------------------------------------------------------
// Trust instructions
// ---------------------------------------------------------------------------

/// Human instructions for trusting `ca_crt` for a registry reached as
/// `registry` (host or host:port): Docker, containerd, Podman/Skopeo, the
/// Debian system store and Kubernetes (ConfigMap `image-fetcher-ca-bundle` in
/// `kube-system`, key `ca-bundle`).
pub fn trust_instructions(ca_crt: &Path, registry: &str) -> String {
    let abs = std::path::absolute(ca_crt).unwrap_or_else(|_| ca_crt.to_path_buf());
    let ca = shell_quote(&abs.display().to_string());
    let registry = registry.trim();
    let host = registry_host(registry);
    let store_name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let docker_dir = shell_quote(&format!("/etc/docker/certs.d/{registry}"));
    let containerd_dir = format!("/etc/containerd/certs.d/{registry}");
    let containerd_dir_q = shell_quote(&containerd_dir);
    let podman_dir = shell_quote(&format!("/etc/containers/certs.d/{registry}"));

    format!(
        "Trusting the Berth CA {ca_display} for the registry {registry}\n\
         Clients reach the registry as {registry}; the directory names below must match that\n\
         exactly, port included. Run the commands on each machine that talks to the registry.\n\
         \n\
         Docker (no restart needed):\n\
         \x20 sudo mkdir -p {docker_dir}\n\
         \x20 sudo cp {ca} {docker_dir}/ca.crt\n\
         \n\
         containerd (Kubernetes nodes, nerdctl, ctr --hosts-dir):\n\
         \x20 sudo mkdir -p {containerd_dir_q}\n\
         \x20 sudo cp {ca} {containerd_dir_q}/ca.crt\n\
         \x20 Then write {containerd_dir}/hosts.toml; the lines between the\n\
         \x20 two EOF markers are its exact content:\n\
         sudo tee {containerd_dir_q}/hosts.toml >/dev/null <<'EOF'\n\
         server = \"https://{registry}\"\n\
         \n\
         [host.\"https://{registry}\"]\n\
         \x20 capabilities = [\"pull\", \"resolve\", \"push\"]\n\
         \x20 ca = \"{containerd_dir}/ca.crt\"\n\
         EOF\n\
         \x20 containerd reads hosts.toml only if the CRI registry config_path in\n\
         \x20 /etc/containerd/config.toml is /etc/containerd/certs.d (restart containerd after\n\
         \x20 changing config.toml; hosts.toml itself is re-read on every pull).\n\
         \n\
         Podman, Skopeo, Buildah and CRI-O:\n\
         \x20 sudo mkdir -p {podman_dir}\n\
         \x20 sudo cp {ca} {podman_dir}/ca.crt\n\
         \n\
         System trust store (Debian/Ubuntu; curl, Go programs and most other tools):\n\
         \x20 sudo cp {ca} /usr/local/share/ca-certificates/berth-{store_name}.crt\n\
         \x20 sudo update-ca-certificates\n\
         \x20 (restart long-running daemons such as dockerd so they reload the store)\n\
         \n\
         Kubernetes (Berth's node-side image fetcher reads the ConfigMap image-fetcher-ca-bundle,\n\
         key ca-bundle, in namespace kube-system). The bundle usually holds other CAs already\n\
         (the platform's own): append to it, never replace it. Read the current ConfigMap (the\n\
         file stays empty if there is none yet), add the CA without duplicates, apply:\n\
         \x20 kubectl -n kube-system get configmap image-fetcher-ca-bundle -o yaml \\\n\
         \x20   > image-fetcher-ca-bundle.yaml || true\n\
         \x20 berth kube ca-bundle --ca {ca} \\\n\
         \x20   --existing image-fetcher-ca-bundle.yaml | kubectl apply -f -\n\
         \x20 ca-bundle holds several PEM certificates concatenated one after another; running\n\
         \x20 the two commands again adds nothing twice.\n",
        ca_display = abs.display(),
    )
}

/// The host part of `host`, `host:port`, `[v6]` or `[v6]:port`.
fn registry_host(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    if registry.parse::<Ipv6Addr>().is_ok() {
        return registry;
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Quotes `s` for a POSIX shell if it contains anything beyond a safe set.
fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:+@%=,[]".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

// ---------------------------------------------------------------------------
// Reading certificates
// ---------------------------------------------------------------------------

/// Parse a PEM bundle (any number of CERTIFICATE blocks one after another)
/// into DER certs; error if none. Other PEM blocks (keys, comments between
/// blocks) are skipped.
pub fn parse_pem_bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    parse_bundle(pem, "the PEM input")
}

fn parse_bundle(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::InvalidCert {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificates {
            what: what.to_string(),
        });
    }
    Ok(certs)
}

fn first_cert(pem: &[u8], what: &str) -> Result<CertificateDer<'static>, PkiError> {
    let mut certs = parse_bundle(pem, what)?;
    Ok(certs.swap_remove(0))
}

/// Subject CN, SAN list and expiry of a PEM certificate (the first one, if
/// `pem` is a bundle), for error messages and `berth cert show`. Parsed with
/// `x509-parser`.
pub fn describe_cert(pem: &str) -> Result<CertSummary, PkiError> {
    const WHAT: &str = "the PEM input";
    let der = first_cert(pem.as_bytes(), WHAT)?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::InvalidCert {
            what: WHAT.to_string(),
            reason: e.to_string(),
        })?;
    let subject_cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    let san = x509
        .subject_alternative_name()
        .map_err(|e| PkiError::InvalidCert {
            what: WHAT.to_string(),
            reason: format!("bad subjectAltName extension: {e}"),
        })?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    dns_names.push((*d).to_string())
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertSummary {
        subject_cn,
        dns_names,
        ips,
        not_after: rfc3339(asn1_time(&x509.validity().not_after)),
    })
}

fn asn1_time(t: &x509_parser::time::ASN1Time) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests;
