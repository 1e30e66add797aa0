//! The registry client: one HTTP client per endpoint, the token dance, manifests and blobs.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use berth_proto::{Digest, Hasher, Reference};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, RANGE};
use reqwest::{StatusCode, Url};

use crate::auth::{Challenge, TokenResponse, merge_scopes, parse_challenges, repo_scope};
use crate::creds::{Credential, Keyring};
use crate::error::{ClientError, Result};
use crate::image::{Descriptor, FetchedManifest, MANIFEST_ACCEPT, Platform, select_platform};
use crate::reference::{ImageRef, split_host_port};
use crate::trust::{CertFailure, Endpoint, TrustOptions, cert_info};

mod referrers;
mod resume;

pub use referrers::fallback_tag;
pub use resume::BlobPush;

/// A stream of blob bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Largest manifest the client accepts.
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;

/// Everything a [`RegistryClient`] needs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub trust: TrustOptions,
    pub keyring: Keyring,
    /// Concurrent blob transfers (default 4).
    pub parallel: usize,
    /// Push blobs in PATCH chunks of this many bytes; `None` = one streamed PUT.
    pub chunk_size: Option<u64>,
    /// Attempts per blob download, resuming with `Range` (default 4).
    pub attempts: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            trust: TrustOptions::default(),
            keyring: Keyring::default(),
            parallel: 4,
            chunk_size: None,
            attempts: 4,
        }
    }
}

/// Bytes written to the download file per batch (one batch in flight at a time).
const WRITE_BATCH: usize = 512 * 1024;

/// Told how far a blob download into a file has got, so that the file can be read while
/// it is written (e.g. unpacked as it arrives). Bytes below the reported length are in the
/// file and readable through any descriptor; they are not verified until the download
/// returns `Ok` (a reader must treat them as untrusted until then).
pub trait DownloadObserver: Send + Sync {
    /// An attempt starts: the file holds its first `kept` bytes (0 when it was created
    /// or truncated, e.g. because the registry ignored `Range`); later bytes follow.
    fn restarted(&self, kept: u64);
    /// The file's first `len` bytes are written.
    fn written(&self, len: u64);
}

/// Whether [`RegistryClient::fetch_blob_to_file_observed`] syncs the file before the
/// download counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk when the call returns (a download kept as it is).
    Synced,
    /// A scratch file the caller stores elsewhere, durably, once verified: not synced, so
    /// the verdict on the last byte does not wait for the device (the proxy cache's
    /// followers are sent that byte only then).
    Scratch,
}

/// What [`RegistryClient::fetch_blob_to_file_observed`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobDownload {
    /// The largest prefix reused with a `Range` request (from an existing partial file or
    /// an earlier interrupted attempt); 0 if every byte came in one transfer.
    pub resumed_from: u64,
    /// Attempts made (1 = no interruption).
    pub attempts: u32,
}

/// An image resolved to one platform's manifest.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The index, when the reference named one.
    pub index: Option<FetchedManifest>,
    /// The image manifest for the platform.
    pub manifest: FetchedManifest,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Default)]
struct HostAuth {
    /// scope set → (token, expiry)
    tokens: HashMap<String, (String, Instant)>,
    basic: Option<Credential>,
    /// The credential that got the current token / basic header, for messages.
    used: Option<Credential>,
}

struct Inner {
    opts: ClientOptions,
    endpoints: tokio::sync::Mutex<HashMap<String, Arc<Vec<Endpoint>>>>,
    auth: Mutex<HashMap<String, HostAuth>>,
}

/// A cheap-to-clone registry client for any number of registries.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Pull,
    Push,
}

/// What a request is about, for auth and messages.
struct Target<'a> {
    registry: &'a str,
    repository: Option<&'a str>,
    scopes: Vec<String>,
    op: Op,
}

impl Target<'_> {
    fn action(&self) -> String {
        match (self.op, self.repository) {
            (Op::Push, Some(r)) if self.scopes.iter().any(|s| s.ends_with(":delete")) => {
                format!("delete from {r}")
            }
            (Op::Push, Some(r)) => format!("push to {r}"),
            (Op::Pull, Some(r)) => format!("pull {r}"),
            (_, None) => "list repositories".to_string(),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Explain a certificate that did not verify, with the fix.
pub fn describe_cert_failure(registry: &str, ep: &Endpoint, f: &CertFailure) -> String {
    let info = cert_info(&f.end_entity);
    let hp = ep.config.host_port();
    let reached = if hp == registry {
        registry.to_string()
    } else {
        format!("{registry} (reached at {hp})")
    };
    let trusted = if ep.ca_desc.is_empty() {
        "the system roots only".to_string()
    } else {
        format!("the system roots and {}", ep.ca_desc.join(", "))
    };
    use rustls::CertificateError as CE;
    let text = format!("{:?}", f.error);
    let cert_err = match &f.error {
        rustls::Error::InvalidCertificate(ce) => Some(ce.clone()),
        _ => None,
    };
    let names = if info.names.is_empty() {
        "no subjectAltName entries".to_string()
    } else {
        info.names.join(", ")
    };
    match cert_err {
        Some(CE::NotValidForName) | Some(CE::NotValidForNameContext { .. }) => format!(
            "x509: certificate is valid for {names}, not {host}: the registry {reached} presented a certificate (subject {subject}, issuer {issuer}) \
             whose names do not include {host}.\n\
             Fix: reach the registry by one of the certificate's names ({names}), or reissue its \
             certificate with this name (e.g. `berth cert init --host {host}` or `--ip {host}`).",
            host = f.server_name,
            subject = info.subject,
            issuer = info.issuer,
        ),
        Some(CE::Expired)
        | Some(CE::ExpiredContext { .. })
        | Some(CE::NotValidYet)
        | Some(CE::NotValidYetContext { .. }) => format!(
            "x509: certificate has expired or is not yet valid: the registry {reached} presented a certificate (subject {}, issuer {}) valid until {}; check this \
             machine's clock, or renew the registry's certificate.",
            info.subject, info.issuer, info.not_after
        ),
        _ if matches!(cert_err, Some(CE::UnknownIssuer) | Some(CE::BadSignature))
            || text.contains("UnknownIssuer")
            || cert_err.is_some() =>
        {
            let who = if info.self_signed {
                format!("a self-signed certificate (subject {})", info.subject)
            } else {
                format!(
                    "a certificate for {} (subject {}) issued by {}",
                    names, info.subject, info.issuer
                )
            };
            format!(
                "x509: certificate signed by unknown authority: the registry {reached} presented \
                 {who}, which is not signed by any CA this client trusts \
                 ({trusted}).\n\
                 Fix (get the CA certificate that issued it, \"{issuer}\", as ca.crt), then one of:\n\
                 \x20 - pass it to this command: --ca-bundle /path/to/ca.crt (a PEM file may hold \
                 several CAs one after another);\n\
                 \x20 - trust it for this registry on this machine: /etc/docker/certs.d/{hp}/ca.crt \
                 or /etc/containerd/certs.d/{hp}/hosts.toml (`berth trust {hp} --ca ca.crt` \
                 writes both);\n\
                 \x20 - for the node image fetcher: append it to the ConfigMap \
                 image-fetcher-ca-bundle in namespace kube-system, key ca-bundle \
                 (`kubectl -n kube-system get configmap image-fetcher-ca-bundle -o yaml > cm.yaml; \
                 berth kube ca-bundle --ca ca.crt --existing cm.yaml | kubectl apply -f -`) and \
                 pass it with --ca-configmap cm.yaml.\n\
                 Only if you accept the risk: --insecure-registry {hp}.\n\
                 (verifier said: {e})",
                issuer = info.issuer,
                e = f.error,
            )
        }
        _ => format!(
            "TLS handshake with the registry {reached} failed while checking its \
             certificate (subject {}, issuer {}): {}",
            info.subject, info.issuer, f.error
        ),
    }
}

/// Whether something answers plain HTTP at `host_port` (for the HTTPS-on-HTTP message).
async fn speaks_plain_http(host_port: &str) -> bool {
    let Ok(c) = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return false;
    };
    c.get(format!("http://{host_port}/v2/"))
        .send()
        .await
        .is_ok()
}

fn parse_error_body(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let errs = v.get("errors")?.as_array()?;
    let msgs: Vec<String> = errs
        .iter()
        .map(|e| {
            let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
            let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
            format!("{code}: {msg}")
        })
        .collect();
    Some(msgs.join("; "))
}

/// Turn an unexpected response into an error.
async fn unexpected(resp: reqwest::Response, what: &str) -> ClientError {
    let status = resp.status();
    let url = resp.url().clone();
    let body = resp.bytes().await.unwrap_or_default();
    let detail = parse_error_body(&body)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
    let msg = format!("{what}: the registry answered {status} ({url}): {detail}");
    if status == StatusCode::NOT_FOUND {
        ClientError::NotFound(msg)
    } else {
        ClientError::Registry(msg)
    }
}

/// Read a whole (small) body with a limit.
async fn read_limited(resp: reqwest::Response, limit: usize, what: &str) -> Result<Bytes> {
    if resp.content_length().is_some_and(|l| l as usize > limit) {
        return Err(ClientError::Registry(format!(
            "{what} is larger than {limit} bytes"
        )));
    }
    let mut buf = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk =
            chunk.map_err(|e| ClientError::Connect(format!("{what}: {}", error_chain(&e))))?;
        if buf.len() + chunk.len() > limit {
            return Err(ClientError::Registry(format!(
                "{what} is larger than {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.into())
}

/// Wraps a byte stream; at its end checks size and digest and fails the stream if they
/// differ, so no consumer ever commits unverified bytes.
pub struct Verified {
    inner: ByteStream,
    hasher: Option<Hasher>,
    seen: u64,
    want: Descriptor,
    what: String,
}

impl Verified {
    pub fn new(inner: ByteStream, want: Descriptor, what: String) -> Verified {
        Verified {
            inner,
            hasher: Some(Hasher::new(want.digest.algorithm())),
            seen: 0,
            want,
            what,
        }
    }
}

fn integrity(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl Stream for Verified {
    type Item = std::io::Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(_) = self.hasher else {
            return Poll::Ready(None);
        };
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.seen += b.len() as u64;
                if self.seen > self.want.size {
                    self.hasher = None;
                    let msg = format!(
                        "{}: more than the expected {} bytes of {}; aborted",
                        self.what, self.want.size, self.want.digest
                    );
                    return Poll::Ready(Some(Err(integrity(msg))));
                }
                if let Some(h) = self.hasher.as_mut() {
                    h.update(&b);
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(None) => {
                let h = self.hasher.take().expect("hasher");
                let got = h.finish();
                if self.seen != self.want.size {
                    let msg = format!(
                        "{}: got {} bytes of {}, expected {}; aborted",
                        self.what, self.seen, self.want.digest, self.want.size
                    );
                    return Poll::Ready(Some(Err(integrity(msg))));
                }
                if got != self.want.digest {
                    let msg = format!(
                        "{}: digest mismatch: expected {}, got {}; aborted",
                        self.what, self.want.digest, got
                    );
                    return Poll::Ready(Some(Err(integrity(msg))));
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

/// A blob stream from a file, verified against `desc`.
pub async fn file_stream(path: &Path, desc: &Descriptor) -> Result<ByteStream> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| ClientError::io(format!("opening {}", path.display()), e))?;
    let s = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    Ok(Box::pin(Verified::new(
        Box::pin(s),
        desc.clone(),
        path.display().to_string(),
    )))
}

fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    for part in link.split(',') {
        let part = part.trim();
        if part.contains("rel=\"next\"") || part.contains("rel=next") {
            let start = part.find('<')? + 1;
            let end = part.find('>')?;
            return Some(part[start..end].to_string());
        }
    }
    None
}

impl RegistryClient {
    pub fn new(opts: ClientOptions) -> RegistryClient {
        RegistryClient {
            inner: Arc::new(Inner {
                opts,
                endpoints: tokio::sync::Mutex::default(),
                auth: Mutex::default(),
            }),
        }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    async fn endpoints(&self, registry: &str) -> Result<Arc<Vec<Endpoint>>> {
        let mut map = self.inner.endpoints.lock().await;
        if let Some(e) = map.get(registry) {
            return Ok(e.clone());
        }
        let cfgs = self.inner.opts.trust.endpoints(registry).await?;
        let eps = cfgs
            .iter()
            .map(|c| self.inner.opts.trust.build_endpoint(c))
            .collect::<Result<Vec<_>>>()?;
        let eps = Arc::new(eps);
        map.insert(registry.to_string(), eps.clone());
        Ok(eps)
    }

    fn auth_header(&self, ep: &Endpoint, scopes: &[String]) -> Option<String> {
        let key = ep.config.host_port();
        let map = self.inner.auth.lock().unwrap();
        let a = map.get(&key)?;
        if let Some((t, exp)) = a.tokens.get(&scopes.join(" "))
            && *exp > Instant::now()
        {
            return Some(format!("Bearer {t}"));
        }
        a.basic.as_ref().map(|c| {
            format!(
                "Basic {}",
                B64.encode(format!("{}:{}", c.username, c.password))
            )
        })
    }

    fn used_credential(&self, ep: &Endpoint) -> Option<Credential> {
        let map = self.inner.auth.lock().unwrap();
        map.get(&ep.config.host_port()).and_then(|a| a.used.clone())
    }

    async fn transport_error(
        &self,
        registry: &str,
        ep: &Endpoint,
        e: reqwest::Error,
    ) -> ClientError {
        if let Some(f) = ep.take_cert_failure() {
            return ClientError::Tls(describe_cert_failure(registry, ep, &f));
        }
        let mut chain = error_chain(&e);
        let hp = ep.config.host_port();
        let base = ep.base();
        if base.starts_with("https://")
            && !e.is_timeout()
            && !chain.contains("received fatal alert")
            && let Some(alert) = ep.probe_tls_alert().await
            && alert.contains("received fatal alert")
        {
            chain = format!("{chain}; a second connection ended with: {alert}");
        }
        if base.starts_with("https://")
            && (chain.contains("InvalidContentType")
                || chain.contains("corrupt message")
                || chain.contains("invalid peer message")
                || chain.contains("wrong version number")
                || chain.contains("InvalidMessage"))
            && speaks_plain_http(&hp).await
        {
            return ClientError::Tls(format!(
                "the registry {registry} (at {hp}) speaks plain HTTP, not HTTPS. Berth uses HTTPS \
                 unless a registry is marked insecure: if {hp} really serves plain HTTP, pass \
                 --insecure-registry {hp} (or list it under \"insecure-registries\" in \
                 /etc/docker/daemon.json and pass --daemon-json); better, give it a \
                 certificate (`berth cert init --host …`)."
            ));
        }
        // Alerts the registry sent about our (missing or refused) client certificate.
        let peer_alert = |a: &str| chain.contains(&format!("received fatal alert: {a}"));
        if peer_alert("CertificateRequired")
            || (ep.config.client_cert.is_some()
                && [
                    "BadCertificate",
                    "UnknownCA",
                    "CertificateUnknown",
                    "AccessDenied",
                ]
                .iter()
                .any(|a| peer_alert(a)))
            || (ep.config.client_cert.is_none() && peer_alert("HandshakeFailure"))
        {
            let have = match &ep.config.client_cert {
                Some((cert, _)) => format!("it refused the client certificate {}", cert.display()),
                None => "none is configured".to_string(),
            };
            return ClientError::Tls(format!(
                "the registry {registry} (at {hp}) requires a client certificate (mutual TLS) \
                 and {have}: put the certificate (PEM, with its chain) and its private key in \
                 certs.d/{hp}/client.cert and certs.d/{hp}/client.key, as Docker expects them \
                 (/etc/docker/certs.d, /etc/containers/certs.d, or the directory given with \
                 --certs-dir). TLS said: {chain}"
            ));
        }
        if e.is_timeout() {
            return ClientError::Connect(format!(
                "timed out talking to the registry {registry} at {base}: {chain}"
            ));
        }
        ClientError::Connect(format!(
            "cannot reach the registry {registry} at {base}: {chain}"
        ))
    }

    /// Get a token or choose Basic for `t.scopes` after a 401; errors explain what's missing.
    async fn authenticate(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        challenges: &[Challenge],
        skip: usize,
    ) -> Result<bool> {
        let creds = self
            .inner
            .opts
            .keyring
            .lookup(t.registry, t.repository.unwrap_or(""))?;
        let key = ep.config.host_port();
        if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = b.param("realm").ok_or_else(|| {
                ClientError::Registry(format!(
                    "{} asked for a bearer token without a realm",
                    t.registry
                ))
            })?;
            let scopes = merge_scopes(b.param("scope"), &t.scopes);
            let service = b.param("service");
            let candidates: Vec<Option<&Credential>> = if creds.is_empty() {
                vec![None]
            } else {
                creds.iter().map(Some).collect()
            };
            let mut rejected: Vec<&Credential> = Vec::new();
            for cred in candidates.into_iter().skip(skip) {
                match self.fetch_token(ep, realm, service, &scopes, cred).await? {
                    Some(tok) => {
                        let mut map = self.inner.auth.lock().unwrap();
                        let a = map.entry(key.clone()).or_default();
                        a.tokens.insert(t.scopes.join(" "), tok);
                        a.used = cred.cloned();
                        return Ok(true);
                    }
                    None => match cred {
                        None => return Err(self.missing_creds(t, 401)),
                        Some(c) => rejected.push(c),
                    },
                }
            }
            if rejected.is_empty() {
                return Ok(false);
            }
            return Err(self.rejected(t, &rejected));
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let Some(c) = creds.get(skip) else {
                if creds.is_empty() {
                    return Err(self.missing_creds(t, 401));
                }
                return Ok(false);
            };
            let mut map = self.inner.auth.lock().unwrap();
            let a = map.entry(key).or_default();
            a.basic = Some(c.clone());
            a.used = Some(c.clone());
            return Ok(true);
        }
        Err(ClientError::Auth {
            status: 401,
            message: format!(
                "{} refused to {} (401) with no Bearer or Basic challenge (WWW-Authenticate: \
                 {:?}); Berth cannot authenticate to it",
                t.registry,
                t.action(),
                challenges
            ),
        })
    }

    /// `Ok(None)` when the token endpoint refused the credentials (401/403).
    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        cred: Option<&Credential>,
    ) -> Result<Option<(String, Instant)>> {
        let mut url = Url::parse(realm).map_err(|e| {
            ClientError::Registry(format!("token realm {realm:?} is not a URL: {e}"))
        })?;
        let req = if let Some(c) = cred.filter(|c| c.identity_token.is_some()) {
            // OAuth2 refresh grant.
            let mut form = Url::parse("http://x/").expect("url");
            {
                let mut q = form.query_pairs_mut();
                q.append_pair("grant_type", "refresh_token");
                q.append_pair("refresh_token", c.identity_token.as_deref().unwrap_or(""));
                q.append_pair("client_id", "berth");
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                q.append_pair("scope", &scopes.join(" "));
            }
            ep.client
                .post(url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.query().unwrap_or("").to_string())
        } else {
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                for s in scopes {
                    q.append_pair("scope", s);
                }
            }
            let mut rb = ep.client.get(url);
            if let Some(c) = cred {
                if let Some(t) = &c.registry_token {
                    rb = rb.bearer_auth(t);
                } else {
                    rb = rb.basic_auth(&c.username, Some(&c.password));
                }
            }
            rb
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(realm, ep, e).await),
        };
        if matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(unexpected(resp, &format!("getting a token from {realm}")).await);
        }
        let body = read_limited(resp, 1 << 20, "token response").await?;
        let tr: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            ClientError::Registry(format!("token endpoint {realm} answered invalid JSON: {e}"))
        })?;
        let tok = tr.bearer().ok_or_else(|| {
            ClientError::Registry(format!("token endpoint {realm} returned no token"))
        })?;
        let ttl = tr.expires_in.unwrap_or(60).clamp(10, 24 * 3600);
        Ok(Some((
            tok.to_string(),
            Instant::now() + Duration::from_secs(ttl.saturating_sub(5)),
        )))
    }

    fn missing_creds(&self, t: &Target<'_>, status: u16) -> ClientError {
        ClientError::Auth {
            status,
            message: format!(
                "unauthorized: the registry {reg} requires credentials to {action} ({status}), \
                 and none were found for it (looked in: {sources}). Log in with `berth login \
                 {reg}`, or pass a pull secret with --pull-secret FILE (a Secret of type \
                 kubernetes.io/dockerconfigjson with an entry for {reg}).",
                reg = t.registry,
                action = t.action(),
                sources = self.inner.opts.keyring.describe_sources(),
            ),
        }
    }

    fn rejected(&self, t: &Target<'_>, tried: &[&Credential]) -> ClientError {
        let list: Vec<String> = tried
            .iter()
            .map(|c| format!("user {:?} from {}", c.username, c.source))
            .collect();
        ClientError::Auth {
            status: 401,
            message: format!(
                "unauthorized: the registry {reg} rejected the credentials ({list}) (401): wrong \
                 username or password. Run `berth login {reg}` again, or fix that secret.",
                reg = t.registry,
                list = list.join("; "),
            ),
        }
    }

    fn denied(&self, t: &Target<'_>, ep: &Endpoint, status: u16) -> ClientError {
        let what = match self.used_credential(ep) {
            Some(c) => format!(
                "the credentials of user {:?} from {} were accepted, but do not grant the scope \
                 {}",
                c.username,
                c.source,
                t.scopes.join(" ")
            ),
            None => format!(
                "anonymous access does not grant the scope {} (the repository is private or \
                 does not exist) and no credentials were found for it (looked in: {}); log in \
                 with `berth login {}` or pass --pull-secret FILE",
                t.scopes.join(" "),
                self.inner.opts.keyring.describe_sources(),
                t.registry
            ),
        };
        ClientError::Auth {
            status,
            message: format!(
                "denied: the registry {} refused to let this client {} ({status}): {what}. Ask \
                 the registry administrator for access or check the repository name.",
                t.registry,
                t.action()
            ),
        }
    }

    /// Send a request built by `build(client, base_url)` to the first endpoint that works,
    /// running the auth dance once per endpoint. Bodies must be rebuildable (small or
    /// cloned); streamed uploads use [`RegistryClient::send_once`].
    async fn send(
        &self,
        t: &Target<'_>,
        build: &(dyn Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder + Sync),
    ) -> Result<(reqwest::Response, Endpoint)> {
        let eps = self.endpoints(t.registry).await?;
        let eps: Vec<&Endpoint> = eps
            .iter()
            .filter(|e| match t.op {
                Op::Push => e.config.is_registry,
                Op::Pull => e.config.is_registry || e.config.can_pull || e.config.can_resolve,
            })
            .collect();
        let mut last_err = None;
        for (i, ep) in eps.iter().enumerate() {
            let last = i + 1 == eps.len();
            match self.send_on(t, ep, build).await {
                Ok(r) if !last && r.status() == StatusCode::NOT_FOUND => {
                    tracing::debug!(mirror = %ep.base(), "not found on mirror; next endpoint");
                }
                Ok(r) => return Ok((r, (*ep).clone())),
                Err(e) if !last => {
                    tracing::warn!(mirror = %ep.base(), error = %e, "mirror failed; next endpoint");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            ClientError::Config(format!("no usable endpoint for {}", t.registry))
        }))
    }

    async fn send_on(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        build: &(dyn Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder + Sync),
    ) -> Result<reqwest::Response> {
        let mut auth_round = 0usize;
        loop {
            let base = ep.base();
            let mut rb = build(&ep.client, &base);
            if let Some(h) = self.auth_header(ep, &t.scopes) {
                rb = rb.header(AUTHORIZATION, h);
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    if ep.has_cert_failure() {
                        return Err(self.transport_error(t.registry, ep, e).await);
                    }
                    // Another request switched this insecure endpoint to HTTP meanwhile,
                    // or this one may.
                    if ep.base() != base || ep.fall_back_to_http() {
                        continue;
                    }
                    return Err(self.transport_error(t.registry, ep, e).await);
                }
            };
            match resp.status() {
                StatusCode::UNAUTHORIZED => {
                    let challenges: Vec<Challenge> = resp
                        .headers()
                        .get_all("www-authenticate")
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(parse_challenges)
                        .collect();
                    let had_creds = self.used_credential(ep);
                    if auth_round > 0 && challenges.iter().any(|c| c.scheme == "bearer") {
                        // A fresh token for exactly this scope was still refused.
                        if had_creds.is_some() {
                            return Err(self.denied(t, ep, 401));
                        }
                        return Err(self.missing_creds(t, 401));
                    }
                    if auth_round > 0 && had_creds.is_none() {
                        return Err(self.missing_creds(t, 401));
                    }
                    if !self.authenticate(t, ep, &challenges, auth_round).await? {
                        let tried: Vec<Credential> = self
                            .inner
                            .opts
                            .keyring
                            .lookup(t.registry, t.repository.unwrap_or(""))?;
                        return Err(self.rejected(t, &tried.iter().collect::<Vec<_>>()));
                    }
                    auth_round += 1;
                }
                StatusCode::FORBIDDEN => return Err(self.denied(t, ep, 403)),
                _ => return Ok(resp),
            }
        }
    }

    fn pull_target<'a>(&self, image: &'a ImageRef) -> Target<'a> {
        Target {
            registry: &image.registry,
            repository: Some(&image.repository),
            scopes: vec![repo_scope(&image.repository, false)],
            op: Op::Pull,
        }
    }

    fn push_target<'a>(&self, image: &'a ImageRef, mount_from: Option<&str>) -> Target<'a> {
        let mut scopes = vec![repo_scope(&image.repository, true)];
        if let Some(f) = mount_from {
            scopes.push(repo_scope(f, false));
        }
        Target {
            registry: &image.registry,
            repository: Some(&image.repository),
            scopes,
            op: Op::Push,
        }
    }

    /// `GET /v2/` — checks reachability, TLS and (with the keyring) credentials.
    pub async fn ping(&self, registry: &str) -> Result<()> {
        let t = Target {
            registry,
            repository: None,
            scopes: vec![],
            op: Op::Pull,
        };
        let (resp, _) = self
            .send(&t, &|c, base| c.get(format!("{base}/v2/")))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(unexpected(resp, &format!("checking {registry}/v2/")).await)
        }
    }

    /// Verify `cred` against `registry` the way `docker login` does: `GET /v2/`, then the
    /// token endpoint (no scope) or Basic. Errors say whether the credentials were rejected.
    pub async fn check_login(&self, registry: &str, cred: &Credential) -> Result<()> {
        let eps = self.endpoints(registry).await?;
        let ep = eps
            .iter()
            .find(|e| e.config.is_registry)
            .expect("registry endpoint")
            .clone();
        let send = |basic: bool| {
            let ep = ep.clone();
            async move {
                loop {
                    let mut rb = ep.client.get(format!("{}/v2/", ep.base()));
                    if basic {
                        rb = rb.basic_auth(&cred.username, Some(&cred.password));
                    }
                    match rb.send().await {
                        Ok(r) => return Ok(r),
                        Err(e) => {
                            if !ep.has_cert_failure() && ep.fall_back_to_http() {
                                continue;
                            }
                            return Err(self.transport_error(registry, &ep, e).await);
                        }
                    }
                }
            }
        };
        let resp = send(false).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Err(unexpected(resp, &format!("checking {registry}/v2/")).await);
        }
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        let rejected = || ClientError::Auth {
            status: 401,
            message: format!(
                "login to {registry} failed: the registry rejected the username {:?} or its \
                 password (401); nothing was saved",
                cred.username
            ),
        };
        if let Some(b) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = b.param("realm").unwrap_or_default();
            return match self
                .fetch_token(&ep, realm, b.param("service"), &[], Some(cred))
                .await?
            {
                Some(_) => Ok(()),
                None => Err(rejected()),
            };
        }
        let resp = send(true).await?;
        if resp.status().is_success() {
            Ok(())
        } else if resp.status() == StatusCode::UNAUTHORIZED {
            Err(rejected())
        } else {
            Err(unexpected(resp, &format!("checking {registry}/v2/ with credentials")).await)
        }
    }

    /// Fetch a manifest (index or image) by tag or digest; a digest reference is verified.
    pub async fn get_manifest(
        &self,
        image: &ImageRef,
        reference: &Reference,
    ) -> Result<FetchedManifest> {
        let t = self.pull_target(image);
        let path = format!("/v2/{}/manifests/{reference}", image.repository);
        let (resp, _) = self
            .send(&t, &|c, base| {
                c.get(format!("{base}{path}"))
                    .header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let what = format!(
            "manifest {}/{}:{reference}",
            image.registry, image.repository
        );
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ClientError::NotFound(format!(
                "{what} not found (the repository or the {} does not exist)",
                if reference.is_digest() {
                    "digest"
                } else {
                    "tag"
                }
            )));
        }
        if !resp.status().is_success() {
            return Err(unexpected(resp, &format!("getting {what}")).await);
        }
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        let bytes = read_limited(resp, MAX_MANIFEST, &what).await?;
        let m = FetchedManifest::from_bytes(ct.as_deref(), bytes)?;
        let expected = reference.as_digest().cloned().or(header_digest);
        if let Some(d) = expected {
            let actual = Digest::of(d.algorithm(), &m.bytes);
            if actual != d {
                return Err(ClientError::Integrity(format!(
                    "{what}: digest mismatch: expected {d}, the content has {actual}; aborted"
                )));
            }
        }
        Ok(m)
    }

    /// `HEAD` a manifest: its descriptor, or `None` if absent.
    pub async fn head_manifest(
        &self,
        image: &ImageRef,
        reference: &Reference,
    ) -> Result<Option<Descriptor>> {
        let t = self.pull_target(image);
        let path = format!("/v2/{}/manifests/{reference}", image.repository);
        let (resp, _) = self
            .send(&t, &|c, base| {
                c.head(format!("{base}{path}"))
                    .header(ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(unexpected(resp, "HEAD manifest").await);
        }
        let h = resp.headers();
        let digest = h
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        let Some(digest) = digest.or(reference.as_digest().cloned()) else {
            // No digest header: fall back to GET.
            return Ok(Some(
                self.get_manifest(image, reference).await?.descriptor(),
            ));
        };
        let mt = h
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let size = h
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(Some(Descriptor::new(&mt, digest, size)))
    }

    /// Resolve `image` to the image manifest for `platform` (following an index).
    pub async fn resolve(&self, image: &ImageRef, platform: &Platform) -> Result<Resolved> {
        let top = self.get_manifest(image, &image.reference()).await?;
        let (index, manifest) = if top.is_index() {
            let d = select_platform(&top.shape()?, platform)?;
            let m = self
                .get_manifest(image, &Reference::Digest(d.digest.clone()))
                .await?;
            (Some(top), m)
        } else {
            (None, top)
        };
        let shape = manifest.shape()?;
        let config = shape.config.ok_or_else(|| {
            ClientError::Registry(format!(
                "{image}: manifest {} has no config; it is not an image",
                manifest.digest
            ))
        })?;
        Ok(Resolved {
            index,
            manifest,
            config,
            layers: shape.layers,
        })
    }

    /// Whether `repository` has the blob.
    pub async fn blob_exists(&self, image: &ImageRef, digest: &Digest, push: bool) -> Result<bool> {
        let t = if push {
            self.push_target(image, None)
        } else {
            self.pull_target(image)
        };
        let path = format!("/v2/{}/blobs/{digest}", image.repository);
        let (resp, _) = self
            .send(&t, &|c, base| c.head(format!("{base}{path}")))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(unexpected(resp, &format!("HEAD blob {digest}")).await),
        }
    }

    /// `HEAD` a blob for pulling: its size (`Content-Length`), or `None` if the registry
    /// does not have it.
    pub async fn blob_size(&self, image: &ImageRef, digest: &Digest) -> Result<Option<u64>> {
        let t = self.pull_target(image);
        let path = format!("/v2/{}/blobs/{digest}", image.repository);
        let (resp, _) = self
            .send(&t, &|c, base| c.head(format!("{base}{path}")))
            .await?;
        match resp.status() {
            s if s.is_success() => resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse().ok())
                .map(Some)
                .ok_or_else(|| {
                    ClientError::Registry(format!(
                        "HEAD blob {digest} in {}/{}: the registry sent no Content-Length",
                        image.registry, image.repository
                    ))
                }),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(unexpected(resp, &format!("HEAD blob {digest}")).await),
        }
    }

    /// Open a blob from byte `offset`. Returns the raw (unverified) stream and whether the
    /// registry honoured the range (false: the stream starts at byte 0).
    pub async fn blob_stream_from(
        &self,
        image: &ImageRef,
        digest: &Digest,
        offset: u64,
    ) -> Result<(ByteStream, bool)> {
        let t = self.pull_target(image);
        let path = format!("/v2/{}/blobs/{digest}", image.repository);
        let (resp, _) = self
            .send(&t, &|c, base| {
                let rb = c.get(format!("{base}{path}"));
                if offset > 0 {
                    rb.header(RANGE, format!("bytes={offset}-"))
                } else {
                    rb
                }
            })
            .await?;
        let ranged = match resp.status() {
            StatusCode::PARTIAL_CONTENT => true,
            StatusCode::OK => false,
            StatusCode::RANGE_NOT_SATISFIABLE => {
                return Err(ClientError::Registry(format!(
                    "blob {digest}: the registry cannot resume at byte {offset}"
                )));
            }
            StatusCode::NOT_FOUND => {
                return Err(ClientError::NotFound(format!(
                    "blob {digest} not found in {}/{}",
                    image.registry, image.repository
                )));
            }
            _ => return Err(unexpected(resp, &format!("GET blob {digest}")).await),
        };
        let s = resp
            .bytes_stream()
            .map(|r| r.map_err(std::io::Error::other));
        Ok((Box::pin(s), ranged))
    }

    /// A verified stream of the whole blob: the stream fails at its end on a size or digest
    /// mismatch.
    pub async fn blob_stream(&self, image: &ImageRef, desc: &Descriptor) -> Result<ByteStream> {
        let (s, _) = self.blob_stream_from(image, &desc.digest, 0).await?;
        Ok(Box::pin(Verified::new(
            s,
            desc.clone(),
            format!("blob {} from {}", desc.digest, image.name()),
        )))
    }

    /// A small blob (e.g. a config) in memory, verified; refuses more than `limit` bytes.
    pub async fn fetch_blob_bytes(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        limit: u64,
    ) -> Result<Bytes> {
        if desc.size > limit {
            return Err(ClientError::Registry(format!(
                "blob {} is {} bytes, more than the {limit} allowed here",
                desc.digest, desc.size
            )));
        }
        let mut s = self.blob_stream(image, desc).await?;
        let mut buf = Vec::with_capacity(desc.size as usize);
        while let Some(c) = s.next().await {
            let c = c.map_err(|e| map_stream_err(e, "downloading"))?;
            buf.extend_from_slice(&c);
        }
        Ok(buf.into())
    }

    /// Download a blob to `dest`, verifying size and digest. If `dest` already holds a
    /// prefix (an interrupted download), the download resumes with `Range`; interrupted
    /// transfers are retried (resuming) up to `attempts` times. On a digest or size
    /// mismatch `dest` is deleted and an [`ClientError::Integrity`] error returned.
    pub async fn fetch_blob_to_file(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        dest: &Path,
    ) -> Result<()> {
        self.fetch_blob_to_file_observed(image, desc, dest, None, Durability::Synced)
            .await
            .map(|_| ())
    }

    /// [`fetch_blob_to_file`](Self::fetch_blob_to_file), telling `observer` how far `dest`
    /// has been written (so a reader can consume the file while it grows), and reporting
    /// how many bytes were reused from an earlier partial file or interrupted attempt.
    /// `durability` says whether the file is synced to disk before the download counts as
    /// done.
    pub async fn fetch_blob_to_file_observed(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        dest: &Path,
        observer: Option<&dyn DownloadObserver>,
        durability: Durability,
    ) -> Result<BlobDownload> {
        let sync = durability == Durability::Synced;
        let what = format!("blob {} from {}", desc.digest, image.name());
        let mut attempt = 0;
        let mut report = BlobDownload::default();
        loop {
            attempt += 1;
            match self
                .fetch_attempt(image, desc, dest, observer, sync, &mut report)
                .await
            {
                Ok(()) => {
                    report.attempts = attempt;
                    return Ok(report);
                }
                Err(
                    e @ (ClientError::Integrity(_)
                    | ClientError::Auth { .. }
                    | ClientError::Tls(_)
                    | ClientError::NotFound(_)),
                ) => {
                    if matches!(e, ClientError::Integrity(_)) {
                        let _ = tokio::fs::remove_file(dest).await;
                    }
                    return Err(e);
                }
                Err(e) if attempt < self.inner.opts.attempts.max(1) => {
                    tracing::warn!(error = %e, attempt, "{what}: download interrupted; resuming");
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_attempt(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        dest: &Path,
        observer: Option<&dyn DownloadObserver>,
        sync: bool,
        report: &mut BlobDownload,
    ) -> Result<()> {
        let what = format!("blob {} from {}", desc.digest, image.name());
        use std::io::Write as _;
        let io = |ctx: &str, e| ClientError::io(format!("{ctx} {}", dest.display()), e);
        let mut hasher = Hasher::new(desc.digest.algorithm());
        let mut have: u64 = 0;
        if let Ok(meta) = tokio::fs::metadata(dest).await {
            if meta.len() > desc.size {
                tokio::fs::remove_file(dest)
                    .await
                    .map_err(|e| io("removing", e))?;
            } else {
                use tokio::io::AsyncReadExt;
                let mut f = tokio::fs::File::open(dest)
                    .await
                    .map_err(|e| io("opening", e))?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = f.read(&mut buf).await.map_err(|e| io("reading", e))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    have += n as u64;
                }
            }
        }
        if have < desc.size || desc.size == 0 {
            let (mut stream, ranged) = self.blob_stream_from(image, &desc.digest, have).await?;
            let file = if have > 0 && ranged {
                report.resumed_from = report.resumed_from.max(have);
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(dest)
                    .map_err(|e| io("opening", e))?
            } else {
                hasher = Hasher::new(desc.digest.algorithm());
                have = 0;
                std::fs::File::create(dest).map_err(|e| io("creating", e))?
            };
            if let Some(o) = observer {
                o.restarted(have);
            }
            // Writes go to a blocking thread in batches, one batch in flight while the
            // next is received (double buffering); the observer hears of a batch once it
            // is in the file.
            let file = Arc::new(file);
            let mut durable = have;
            let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
            type Write = tokio::task::JoinHandle<std::io::Result<Vec<u8>>>;
            let mut in_flight: Option<(Write, u64)> = None;
            // The buffer of the last finished write, reused for the next batch.
            let mut spare: Option<Vec<u8>> = None;
            async fn settle(
                in_flight: &mut Option<(Write, u64)>,
                spare: &mut Option<Vec<u8>>,
                durable: &mut u64,
                observer: Option<&dyn DownloadObserver>,
            ) -> std::io::Result<()> {
                if let Some((h, len)) = in_flight.take() {
                    let mut buf = h.await.map_err(std::io::Error::other)??;
                    buf.clear();
                    *spare = Some(buf);
                    *durable += len;
                    if let Some(o) = observer {
                        o.written(*durable);
                    }
                }
                Ok(())
            }
            let submit = |batch: &mut Vec<u8>, spare: &mut Option<Vec<u8>>| {
                let next = spare
                    .take()
                    .unwrap_or_else(|| Vec::with_capacity(WRITE_BATCH));
                let data = std::mem::replace(batch, next);
                let len = data.len() as u64;
                let f = file.clone();
                (
                    tokio::task::spawn_blocking(move || (&*f).write_all(&data).map(|()| data)),
                    len,
                )
            };
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        // Keep what arrived: the next attempt resumes after it.
                        let _ = settle(&mut in_flight, &mut spare, &mut durable, observer).await;
                        if !batch.is_empty() {
                            let (h, len) = submit(&mut batch, &mut spare);
                            in_flight = Some((h, len));
                            let _ =
                                settle(&mut in_flight, &mut spare, &mut durable, observer).await;
                        }
                        return Err(ClientError::Connect(format!(
                            "{what}: transfer interrupted at byte {have}: {e}"
                        )));
                    }
                };
                have += chunk.len() as u64;
                if have > desc.size {
                    let _ = settle(&mut in_flight, &mut spare, &mut durable, observer).await;
                    return Err(ClientError::Integrity(format!(
                        "{what}: the registry sent more than the expected {} bytes; aborted",
                        desc.size
                    )));
                }
                hasher.update(&chunk);
                batch.extend_from_slice(&chunk);
                if batch.len() >= WRITE_BATCH {
                    settle(&mut in_flight, &mut spare, &mut durable, observer)
                        .await
                        .map_err(|e| io("writing", e))?;
                    in_flight = Some(submit(&mut batch, &mut spare));
                }
            }
            settle(&mut in_flight, &mut spare, &mut durable, observer)
                .await
                .map_err(|e| io("writing", e))?;
            if !batch.is_empty() {
                in_flight = Some(submit(&mut batch, &mut spare));
                settle(&mut in_flight, &mut spare, &mut durable, observer)
                    .await
                    .map_err(|e| io("writing", e))?;
            }
            if sync {
                let f = file.clone();
                tokio::task::spawn_blocking(move || f.sync_all())
                    .await
                    .map_err(|e| io("syncing", std::io::Error::other(e)))?
                    .map_err(|e| io("syncing", e))?;
            }
        }
        if have != desc.size {
            return Err(ClientError::Connect(format!(
                "{what}: transfer ended at byte {have} of {}",
                desc.size
            )));
        }
        let got = hasher.finish();
        if got != desc.digest {
            return Err(ClientError::Integrity(format!(
                "{what}: digest mismatch: expected {}, downloaded content has {got}; the file was \
                 deleted and the pull aborted",
                desc.digest
            )));
        }
        Ok(())
    }

    /// Mount blob `digest` into `image`'s repository from repository `from` of the same
    /// registry (`POST …/blobs/uploads/?mount=…&from=…`): `true` when the registry mounted
    /// it (nothing to send), `false` when it started an upload instead (the blob is not in
    /// `from`, or the registry does not mount), whose session is then cancelled.
    pub async fn mount_blob(&self, image: &ImageRef, digest: &Digest, from: &str) -> Result<bool> {
        let Some((loc, ep)) = self.start_upload(image, digest, Some(from)).await? else {
            return Ok(true);
        };
        // Best effort: a registry purges abandoned sessions itself anyway.
        let t = self.push_target(image, None);
        let _ = self.send_once(&t, &ep, ep.client.delete(loc)).await;
        Ok(false)
    }

    /// Start an upload session (or mount). Returns `None` when the blob was mounted.
    async fn start_upload(
        &self,
        image: &ImageRef,
        digest: &Digest,
        mount_from: Option<&str>,
    ) -> Result<Option<(Url, Endpoint)>> {
        let t = self.push_target(image, mount_from);
        let path = match mount_from {
            Some(from) => format!(
                "/v2/{}/blobs/uploads/?mount={digest}&from={from}",
                image.repository
            ),
            None => format!("/v2/{}/blobs/uploads/", image.repository),
        };
        let (resp, ep) = self
            .send(&t, &|c, base| {
                c.post(format!("{base}{path}")).header(CONTENT_LENGTH, "0")
            })
            .await?;
        if resp.status() == StatusCode::CREATED && mount_from.is_some() {
            return Ok(None);
        }
        if resp.status() != StatusCode::ACCEPTED {
            return Err(unexpected(resp, &format!("starting the upload of {digest}")).await);
        }
        let loc = location(&resp, &ep)?;
        Ok(Some((loc, ep)))
    }

    /// Send one request with the current auth header (no retry: bodies are streams).
    async fn send_once(
        &self,
        t: &Target<'_>,
        ep: &Endpoint,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let rb = match self.auth_header(ep, &t.scopes) {
            Some(h) => rb.header(AUTHORIZATION, h),
            None => rb,
        };
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                // A body stream that failed verification surfaces here.
                let chain = error_chain(&e);
                if chain.contains("digest mismatch") || chain.contains("expected") {
                    return Err(ClientError::Integrity(chain));
                }
                return Err(self.transport_error(t.registry, ep, e).await);
            }
        };
        match resp.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(self.denied(t, ep, resp.status().as_u16()))
            }
            _ => Ok(resp),
        }
    }

    /// Push one blob from a stream of exactly `desc.size` bytes (verified on the way).
    /// Skips blobs the repository has; with `mount_from` (same registry) tries a
    /// cross-repository mount first.
    pub async fn push_blob(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        stream: ByteStream,
        mount_from: Option<&str>,
    ) -> Result<()> {
        if self.blob_exists(image, &desc.digest, true).await? {
            return Ok(());
        }
        let Some((mut loc, ep)) = self.start_upload(image, &desc.digest, mount_from).await? else {
            tracing::debug!(digest = %desc.digest, "mounted");
            return Ok(());
        };
        let t = self.push_target(image, mount_from);
        let stream: ByteStream = Box::pin(Verified::new(
            stream,
            desc.clone(),
            format!("blob {} for {}", desc.digest, image.name()),
        ));
        let chunk = self
            .inner
            .opts
            .chunk_size
            .filter(|c| *c > 0 && desc.size > *c);
        let final_body = if let Some(chunk) = chunk {
            // Chunked: PATCH fixed-size chunks (each buffered, never the whole blob).
            let mut stream = stream;
            let mut offset = 0u64;
            let mut buf: Vec<u8> = Vec::with_capacity(chunk as usize);
            let mut done = false;
            while !done {
                while (buf.len() as u64) < chunk {
                    match stream.next().await {
                        Some(Ok(b)) => buf.extend_from_slice(&b),
                        Some(Err(e)) => return Err(map_stream_err(e, "reading")),
                        None => {
                            done = true;
                            break;
                        }
                    }
                }
                let take = buf.len().min(chunk as usize);
                if take == 0 {
                    break;
                }
                let rest = buf.split_off(take);
                let body = std::mem::replace(&mut buf, rest);
                let end = offset + body.len() as u64 - 1;
                let rb = ep
                    .client
                    .patch(loc.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("content-range", format!("{offset}-{end}"))
                    .header(CONTENT_LENGTH, body.len())
                    .body(body);
                let resp = self.send_once(&t, &ep, rb).await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(
                        unexpected(resp, &format!("uploading a chunk of {}", desc.digest)).await,
                    );
                }
                loc = location(&resp, &ep)?;
                offset = end + 1;
            }
            None
        } else {
            Some(stream)
        };
        let mut put_url = loc;
        put_url
            .query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let rb = ep.client.put(put_url);
        let rb = match final_body {
            Some(s) => rb
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, desc.size)
                .body(reqwest::Body::wrap_stream(s)),
            None => rb.header(CONTENT_LENGTH, "0"),
        };
        let resp = self.send_once(&t, &ep, rb).await?;
        if resp.status() != StatusCode::CREATED {
            let e = unexpected(resp, &format!("completing the upload of {}", desc.digest)).await;
            if e.to_string().contains("DIGEST_INVALID") {
                return Err(ClientError::Integrity(e.to_string()));
            }
            return Err(e);
        }
        Ok(())
    }

    /// Push a manifest under a tag or its digest; checks the registry's digest.
    pub async fn put_manifest(
        &self,
        image: &ImageRef,
        reference: &Reference,
        m: &FetchedManifest,
    ) -> Result<Digest> {
        let t = self.push_target(image, None);
        let path = format!("/v2/{}/manifests/{reference}", image.repository);
        let bytes = m.bytes.clone();
        let mt = m.media_type.clone();
        let (resp, _) = self
            .send(&t, &|c, base| {
                c.put(format!("{base}{path}"))
                    .header(CONTENT_TYPE, mt.as_str())
                    .body(bytes.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(unexpected(
                resp,
                &format!("pushing manifest {} to {}", m.digest, image.name()),
            )
            .await);
        }
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok())
            && d.algorithm() == m.digest.algorithm()
            && d != m.digest
        {
            return Err(ClientError::Integrity(format!(
                "the registry stored manifest {d}, but {} was sent",
                m.digest
            )));
        }
        Ok(m.digest.clone())
    }

    /// Delete a manifest by digest (a tag is resolved first).
    pub async fn delete_manifest(&self, image: &ImageRef) -> Result<Digest> {
        let digest = match &image.digest {
            Some(d) => d.clone(),
            None => {
                self.head_manifest(image, &image.reference())
                    .await?
                    .ok_or_else(|| ClientError::NotFound(format!("{image} not found")))?
                    .digest
            }
        };
        let t = Target {
            registry: &image.registry,
            repository: Some(&image.repository),
            scopes: vec![format!("repository:{}:delete", image.repository)],
            op: Op::Push,
        };
        let path = format!("/v2/{}/manifests/{digest}", image.repository);
        let (resp, _) = self
            .send(&t, &|c, base| c.delete(format!("{base}{path}")))
            .await?;
        match resp.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(digest),
            StatusCode::METHOD_NOT_ALLOWED => Err(ClientError::Registry(format!(
                "{} does not allow deleting manifests (405); for CNCF Distribution set \
                 storage.delete.enabled: true",
                image.registry
            ))),
            _ => Err(unexpected(resp, &format!("deleting {image}")).await),
        }
    }

    /// Every tag of a repository (follows `Link` pagination).
    pub async fn list_tags(&self, image: &ImageRef) -> Result<Vec<String>> {
        let t = self.pull_target(image);
        self.paginate(
            &t,
            format!("/v2/{}/tags/list?n=1000", image.repository),
            "tags",
        )
        .await
    }

    /// Every repository of a registry (`/v2/_catalog`, paginated).
    pub async fn catalog(&self, registry: &str) -> Result<Vec<String>> {
        let t = Target {
            registry,
            repository: None,
            scopes: vec!["registry:catalog:*".to_string()],
            op: Op::Pull,
        };
        self.paginate(&t, "/v2/_catalog?n=1000".to_string(), "repositories")
            .await
    }

    async fn paginate(&self, t: &Target<'_>, first: String, field: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > 10_000 {
                break;
            }
            let (resp, ep) = self
                .send(t, &|c, base| {
                    if path.starts_with("http") {
                        c.get(path.clone())
                    } else {
                        c.get(format!("{base}{path}"))
                    }
                })
                .await?;
            if !resp.status().is_success() {
                return Err(unexpected(resp, &format!("listing {field} of {}", t.registry)).await);
            }
            next = next_link(resp.headers()).map(|l| {
                if l.starts_with('/') || l.starts_with("http") {
                    l
                } else {
                    format!("/{l}")
                }
            });
            let _ = ep;
            let body = read_limited(resp, 64 << 20, field).await?;
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| ClientError::Registry(format!("{field} list is not JSON: {e}")))?;
            if let Some(a) = v.get(field).and_then(|a| a.as_array()) {
                out.extend(a.iter().filter_map(|s| s.as_str().map(str::to_string)));
            }
        }
        Ok(out)
    }
}

fn map_stream_err(e: std::io::Error, what: &str) -> ClientError {
    if e.kind() == std::io::ErrorKind::InvalidData {
        ClientError::Integrity(e.to_string())
    } else {
        ClientError::io(what.to_string(), e)
    }
}

fn location(resp: &reqwest::Response, ep: &Endpoint) -> Result<Url> {
    let loc = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ClientError::Registry("upload response has no Location header".into()))?;
    let base = Url::parse(&format!("{}/", ep.base()))
        .map_err(|e| ClientError::Registry(format!("bad endpoint URL: {e}")))?;
    base.join(loc)
        .map_err(|e| ClientError::Registry(format!("bad upload Location {loc:?}: {e}")))
}

/// The `host[:port]` part of a registry, for messages.
pub fn registry_host(registry: &str) -> &str {
    split_host_port(registry).0
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>(_: T) {}
    let c = RegistryClient::new(ClientOptions::default());
    let i: ImageRef = "a".parse().unwrap();
    is_send(async move { c.get_manifest(&i, &i.reference()).await });
}
