//! Proxy-cache projects: a project tied to a remote registry
//! ([`berth_storage::RemoteStore::project_proxy`]) serves `PROJECT/<upstream repo>` from the
//! local store and fetches what it lacks from the upstream through `berth-client` (its
//! trust, credentials, token dance and verified downloads).
//!
//! - **Manifests by tag** are revalidated with a `HEAD` upstream (at most once per
//!   `[proxy] revalidate_secs` per tag, [`FRESH`] by default); a `GET` (by digest, so the
//!   bytes are verified) happens only when the digest changed or is not cached. When the
//!   upstream cannot be reached, answers an error, or does not answer within
//!   `[proxy] upstream_timeout_secs` ([`UPSTREAM_TIMEOUT`] by default), the cached
//!   manifest is served.
//!   **By digest** a cached manifest is served without asking the upstream.
//! - **Blobs** missing locally are fetched once per repository and digest however many
//!   clients ask ([`Fetch`], single flight): the download goes to a staging file that every
//!   waiting client reads as it grows, so the first puller gets bytes long before the layer
//!   is complete. The last byte is held back until the digest is verified, so a client
//!   never receives a whole blob that does not match; a mismatch aborts every response and
//!   leaves nothing behind. A verified file goes through an ordinary upload session
//!   (quota, upload pin, digest check, link): cached blobs are normal local content.
//! - **Manifests are committed only when complete.** A fetched manifest whose blobs (or,
//!   for an index, child manifests) are not all in the repository yet is held in memory
//!   ([`Pending`], bounded) and served from there; a task fetches its missing blobs
//!   (sharing the clients' fetches), and as soon as everything it references is linked it
//!   is stored with the normal checked `put_manifest` — so the push path's invariants
//!   (every referenced blob linked and not tombstoned, quota counted with real sizes) and
//!   garbage collection see nothing special. An index whose platforms were not all pulled
//!   stays pending (children are fetched on demand, never all at once). Pending manifests
//!   are also written to `DATA/proxy/pending/` (temp file, fsync, rename, fsync of the
//!   directory; the same bound) and loaded at start, so a restart while the upstream is
//!   down still serves them; the file goes when the manifest is committed or evicted.
//! - **Writes** (pushes, deletes) into a proxy project are refused in [`refuse_writes`];
//!   retention and GC remove cached content like any other.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use berth_client::{ClientError, Descriptor, DownloadObserver, ImageRef};
use berth_proto::Digest;
use berth_proto::error::ErrorCode;
use berth_proto::manifest::parse_manifest;
use berth_proto::name::Reference;
use berth_proto::range::parse_range;
use berth_storage::{NewManifest, StorageError, UploadSession};
use bytes::Bytes;
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio::sync::watch;

use crate::blobs::digest_header;
use crate::error::{ApiError, ApiResult};
use crate::remotes::RemoteClient;
use crate::routes::Ctx;
use crate::state::AppState;

/// By default, a tag checked upstream this recently is served without asking again (a
/// client's `HEAD` then `GET` of one manifest costs one upstream request).
pub const FRESH: Duration = Duration::from_secs(3);
/// By default, the longest wait for an upstream manifest or blob `HEAD`/manifest `GET`
/// before cached content is served instead.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// `[proxy]`: how proxy-cache projects talk to their upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Seconds a tag checked upstream is served without asking again (0: a `HEAD`
    /// upstream on every pull by tag; larger: fewer upstream requests, a moved tag is seen
    /// later). Also `--proxy-revalidate-secs` / `BERTH_PROXY_REVALIDATE_SECS`.
    pub revalidate_secs: u64,
    /// Seconds to wait for an upstream manifest `HEAD`/`GET` or blob `HEAD` before cached
    /// content is served instead (or, with nothing cached, the pull fails with 502); 0 is
    /// taken as 1. Also `--proxy-upstream-timeout-secs` /
    /// `BERTH_PROXY_UPSTREAM_TIMEOUT_SECS`.
    pub upstream_timeout_secs: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            revalidate_secs: FRESH.as_secs(),
            upstream_timeout_secs: UPSTREAM_TIMEOUT.as_secs(),
        }
    }
}
/// How long which registry a project proxies is remembered (a change applies within this).
const PROJECT_TTL: Duration = Duration::from_secs(2);
/// Most bytes of manifests held in memory before their content is complete.
const PENDING_BYTES: usize = 64 << 20;
/// Bytes read from a staging file per chunk sent to a client.
const READ_CHUNK: usize = 512 * 1024;

/// The registry a proxy project fetches from.
#[derive(Clone)]
pub struct Upstream {
    /// The registry's name (`berth registry list`).
    pub registry: String,
    pub remote: RemoteClient,
}

/// The proxy-cache engine (one per server).
pub struct Proxy {
    /// Where blobs being fetched are staged (`DATA/proxy/`).
    staging: PathBuf,
    projects: Mutex<HashMap<String, (Instant, Option<Upstream>)>>,
    /// Registry name → (its `updated_at`, the client built for it): a client keeps its
    /// connections and tokens across requests.
    clients: Mutex<HashMap<String, (i64, RemoteClient)>>,
    pending: Mutex<Pending>,
    /// Where pending manifests are kept across restarts (`DATA/proxy/pending/`).
    pending_dir: PathBuf,
    fetches: Mutex<HashMap<(String, Digest), Arc<Fetch>>>,
    checked: Mutex<HashMap<(String, String), Instant>>,
    /// A tag checked this recently is not asked about again (`[proxy] revalidate_secs`).
    fresh: Duration,
    /// Bound of one upstream call (`[proxy] upstream_timeout_secs`).
    upstream_timeout: Duration,
}

/// Manifests fetched from upstreams whose content is not all local yet.
#[derive(Default)]
struct Pending {
    manifests: HashMap<(String, Digest), PendingManifest>,
    /// (repository, tag) → digest, newer than what the store's tag says.
    tags: HashMap<(String, String), Digest>,
    bytes: usize,
}

#[derive(Clone)]
struct PendingManifest {
    media_type: String,
    content: Bytes,
    tag: Option<String>,
    blobs: Vec<Digest>,
    children: Vec<Digest>,
    at: Instant,
}

/// A cached or pending manifest ready to serve.
struct Served {
    digest: Digest,
    media_type: String,
    content: Bytes,
    committed: bool,
}

/// One blob being fetched from an upstream into a staging file.
struct Fetch {
    size: u64,
    /// The staging file, opened before the download starts (reads keep working after it
    /// is removed).
    file: Arc<std::fs::File>,
    progress: watch::Sender<Progress>,
}

#[derive(Clone, Debug)]
struct Progress {
    /// Bytes of the staging file written so far.
    written: u64,
    stage: Stage,
}

#[derive(Clone, Debug, PartialEq)]
enum Stage {
    Running,
    /// Size and digest matched: the last byte may be sent.
    Verified,
    Failed(String),
}

struct Observer(watch::Sender<Progress>);

impl DownloadObserver for Observer {
    fn restarted(&self, kept: u64) {
        self.0.send_modify(|p| p.written = kept);
    }
    fn written(&self, len: u64) {
        self.0.send_modify(|p| p.written = len);
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The repository on the upstream for `name` (`PROJECT/rest`): `rest`, with Docker Hub's
/// `library/` added to single-component names (`hub/nginx` → `library/nginx`).
pub fn upstream_repository(host: &str, name: &str) -> String {
    let rest = name.split_once('/').map(|(_, r)| r).unwrap_or("");
    if host == berth_client::reference::DOCKER_HUB && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest.to_owned()
    }
}

fn unreachable(up: &Upstream, what: &str, e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        format!(
            "{what} is not cached and the upstream registry {} cannot serve it: {e}; \
             check the registry with `berth registry check {}`",
            up.registry, up.registry
        ),
    )
    .with_status(StatusCode::BAD_GATEWAY)
}

/// Bound an upstream call by `[proxy] upstream_timeout_secs`; a timeout reads like an
/// unreachable upstream.
async fn bounded<T>(
    state: &AppState,
    what: &str,
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let limit = state.proxy.upstream_timeout;
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Connect(format!(
            "{what}: no answer within {}s (raise [proxy] upstream_timeout_secs for a slow upstream)",
            limit.as_secs()
        ))),
    }
}

impl Proxy {
    /// An engine staging downloads in `staging`. Files a previous run left there more than
    /// a day ago are removed (a running server's own are younger: a CLI command opening
    /// the same data directory must not remove them).
    pub fn new(staging: PathBuf) -> Proxy {
        if let Ok(entries) = std::fs::read_dir(&staging) {
            let day = Duration::from_secs(24 * 3600);
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > day);
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let pending_dir = staging.join("pending");
        let pending = load_pending(&pending_dir);
        Proxy {
            staging,
            projects: Mutex::default(),
            clients: Mutex::default(),
            pending: Mutex::new(pending),
            pending_dir,
            fetches: Mutex::default(),
            checked: Mutex::default(),
            fresh: FRESH,
            upstream_timeout: UPSTREAM_TIMEOUT,
        }
    }

    /// The same engine with `[proxy]`'s revalidation window and upstream timeout.
    pub fn with_config(mut self, config: &ProxyConfig) -> Proxy {
        self.fresh = Duration::from_secs(config.revalidate_secs);
        self.upstream_timeout = Duration::from_secs(config.upstream_timeout_secs.max(1));
        self
    }

    /// Forget what is remembered about `project` (after it was made or unmade a proxy).
    pub fn forget(&self, project: &str) {
        self.projects.lock().unwrap().remove(project);
    }

    /// The upstream of `project`, if it is a proxy-cache project.
    pub async fn upstream(&self, state: &AppState, project: &str) -> ApiResult<Option<Upstream>> {
        if let Some((at, up)) = self.projects.lock().unwrap().get(project)
            && at.elapsed() < PROJECT_TTL
        {
            return Ok(up.clone());
        }
        let up = match state.remotes.store.project_proxy(project).await? {
            None => None,
            Some(registry) => {
                let r = state.remotes.get(&registry).await?;
                let cached = self
                    .clients
                    .lock()
                    .unwrap()
                    .get(&registry)
                    .filter(|(at, _)| *at == r.updated_at)
                    .map(|(_, c)| c.clone());
                let remote = match cached {
                    Some(c) => c,
                    None => {
                        let c = state.remotes.client(&r)?;
                        self.clients
                            .lock()
                            .unwrap()
                            .insert(registry.clone(), (r.updated_at, c.clone()));
                        c
                    }
                };
                Some(Upstream { registry, remote })
            }
        };
        let mut projects = self.projects.lock().unwrap();
        if projects.len() > 10_000 {
            projects.retain(|_, (at, _)| at.elapsed() < PROJECT_TTL);
        }
        projects.insert(project.to_owned(), (Instant::now(), up.clone()));
        Ok(up)
    }

    fn image(&self, up: &Upstream, name: &str, reference: &str) -> ApiResult<ImageRef> {
        let repo = upstream_repository(&up.remote.host, name);
        up.remote.image(&repo, reference)
    }

    // --- Pending manifests. ---

    fn pending_by_tag(&self, name: &str, tag: &str) -> Option<Served> {
        let p = self.pending.lock().unwrap();
        let d = p.tags.get(&(name.to_owned(), tag.to_owned()))?;
        let m = p.manifests.get(&(name.to_owned(), d.clone()))?;
        Some(Served {
            digest: d.clone(),
            media_type: m.media_type.clone(),
            content: m.content.clone(),
            committed: false,
        })
    }

    fn pending_by_digest(&self, name: &str, digest: &Digest) -> Option<Served> {
        let p = self.pending.lock().unwrap();
        let m = p.manifests.get(&(name.to_owned(), digest.clone()))?;
        Some(Served {
            digest: digest.clone(),
            media_type: m.media_type.clone(),
            content: m.content.clone(),
            committed: false,
        })
    }

    fn hold(&self, name: &str, digest: &Digest, m: PendingManifest) {
        let mut p = self.pending.lock().unwrap();
        if let Some(tag) = &m.tag {
            p.tags
                .insert((name.to_owned(), tag.clone()), digest.clone());
        }
        let len = m.content.len();
        if let Err(e) = write_pending(&self.pending_dir, name, digest, &m) {
            tracing::warn!(repository = name, %digest, dir = %self.pending_dir.display(), error = %e,
                "could not keep a pending proxied manifest on disk (it is served from memory \
                 until the restart); check that the data directory is writable and not full");
        }
        if let Some(old) = p.manifests.insert((name.to_owned(), digest.clone()), m) {
            p.bytes -= old.content.len();
        }
        p.bytes += len;
        // Over the bound: forget the oldest (they are fetched again when asked for).
        while p.bytes > PENDING_BYTES {
            let Some(oldest) = p
                .manifests
                .iter()
                .min_by_key(|(_, m)| m.at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(m) = p.manifests.remove(&oldest) {
                p.bytes -= m.content.len();
                remove_pending(&self.pending_dir, &oldest.0, &oldest.1);
            }
            p.tags
                .retain(|(r, _), d| !(r == &oldest.0 && d == &oldest.1));
        }
    }

    fn release(&self, name: &str, digest: &Digest) {
        let mut p = self.pending.lock().unwrap();
        if let Some(m) = p.manifests.remove(&(name.to_owned(), digest.clone())) {
            p.bytes -= m.content.len();
            remove_pending(&self.pending_dir, name, digest);
        }
        p.tags.retain(|(r, _), d| !(r == name && d == digest));
    }

    fn pending_of(&self, name: &str) -> Vec<(Digest, PendingManifest)> {
        let p = self.pending.lock().unwrap();
        p.manifests
            .iter()
            .filter(|((r, _), _)| r == name)
            .map(|((_, d), m)| (d.clone(), m.clone()))
            .collect()
    }

    fn pending_tag(&self, name: &str, tag: &str) -> Option<Digest> {
        let p = self.pending.lock().unwrap();
        p.tags.get(&(name.to_owned(), tag.to_owned())).cloned()
    }

    fn forget_tag(&self, name: &str, tag: &str) {
        let mut p = self.pending.lock().unwrap();
        let Some(d) = p.tags.remove(&(name.to_owned(), tag.to_owned())) else {
            return;
        };
        // The manifest no longer claims the tag, in memory nor on disk (a restart must not
        // give it back).
        if let Some(m) = p.manifests.get_mut(&(name.to_owned(), d.clone()))
            && m.tag.as_deref() == Some(tag)
        {
            m.tag = None;
            if let Err(e) = write_pending(&self.pending_dir, name, &d, m) {
                tracing::warn!(repository = name, digest = %d, error = %e,
                    "could not update a pending proxied manifest on disk");
            }
        }
    }

    fn is_fresh(&self, name: &str, tag: &str) -> bool {
        self.checked
            .lock()
            .unwrap()
            .get(&(name.to_owned(), tag.to_owned()))
            .is_some_and(|at| at.elapsed() < self.fresh)
    }

    fn mark_fresh(&self, name: &str, tag: &str) {
        let mut c = self.checked.lock().unwrap();
        if c.len() > 100_000 {
            c.retain(|_, at| at.elapsed() < self.fresh);
        }
        c.insert((name.to_owned(), tag.to_owned()), Instant::now());
    }
}

// --- Pending manifests on disk. ---
//
// One file per (repository, digest), named by the SHA-256 of both: a JSON header line
// (repository, digest, media type, tag, when) then the manifest bytes.

#[derive(serde::Serialize, serde::Deserialize)]
struct PendingHeader {
    repository: String,
    digest: String,
    media_type: String,
    tag: Option<String>,
    /// Unix milliseconds when it was fetched.
    at_ms: i64,
}

fn pending_path(dir: &Path, name: &str, digest: &Digest) -> PathBuf {
    use sha2::Digest as _;
    let key = sha2::Sha256::digest(format!("{name}\n{digest}").as_bytes());
    dir.join(format!("{}.manifest", hex::encode(key)))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Write `m` durably: temp file, fsync, rename over the old one, fsync the directory.
fn write_pending(dir: &Path, name: &str, digest: &Digest, m: &PendingManifest) -> io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let age = m.at.elapsed().as_millis() as i64;
    let header = PendingHeader {
        repository: name.to_owned(),
        digest: digest.to_string(),
        media_type: m.media_type.clone(),
        tag: m.tag.clone(),
        at_ms: now_ms() - age,
    };
    let path = pending_path(dir, name, digest);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut f, &header)?;
        f.write_all(b"\n")?;
        f.write_all(&m.content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn remove_pending(dir: &Path, name: &str, digest: &Digest) {
    let path = pending_path(dir, name, digest);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e,
            "could not remove a committed pending proxied manifest; remove the file by hand"),
    }
}

/// Read one pending manifest file; `None` (and the reason) when it is not a valid one.
fn read_pending(path: &Path) -> Result<(String, Digest, PendingManifest, i64), String> {
    let raw = std::fs::read(path).map_err(|e| e.to_string())?;
    let nl = raw
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let h: PendingHeader = serde_json::from_slice(&raw[..nl]).map_err(|e| e.to_string())?;
    let digest: Digest = h.digest.parse().map_err(|e| format!("{e}"))?;
    let content = Bytes::copy_from_slice(&raw[nl + 1..]);
    if Digest::of(digest.algorithm(), &content) != digest {
        return Err(format!("content does not match {digest}"));
    }
    if pending_path(
        path.parent().unwrap_or(Path::new(".")),
        &h.repository,
        &digest,
    ) != path
    {
        return Err("file name does not match its repository and digest".into());
    }
    let parsed = parse_manifest(Some(&h.media_type), &content).map_err(|e| e.to_string())?;
    let age = Duration::from_millis((now_ms() - h.at_ms).max(0) as u64);
    let m = PendingManifest {
        media_type: parsed.media_type,
        content,
        tag: h.tag,
        blobs: parsed.blobs,
        children: parsed.children,
        at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
    };
    Ok((h.repository, digest, m, h.at_ms))
}

/// Load the pending manifests a previous run kept in `dir`, newest first up to
/// [`PENDING_BYTES`]; invalid, leftover temporary and over-bound files are removed.
fn load_pending(dir: &Path) -> Pending {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "manifest") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match read_pending(&path) {
            Ok(f) => found.push((path, f)),
            Err(why) => {
                tracing::warn!(path = %path.display(), why, "removing an invalid pending proxied manifest");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    found.sort_by_key(|(_, (_, _, _, at))| std::cmp::Reverse(*at));
    let mut p = Pending::default();
    for (path, (name, digest, m, _)) in found {
        if p.bytes + m.content.len() > PENDING_BYTES {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        p.bytes += m.content.len();
        // Newest first: an older manifest does not take a tag a newer one holds.
        if let Some(tag) = &m.tag {
            p.tags
                .entry((name.clone(), tag.clone()))
                .or_insert_with(|| digest.clone());
        }
        p.manifests.insert((name, digest), m);
    }
    if !p.manifests.is_empty() {
        tracing::info!(
            manifests = p.manifests.len(),
            bytes = p.bytes,
            "pending proxied manifests loaded"
        );
    }
    p
}

// --- Manifests. ---

async fn local_by_tag(state: &AppState, name: &str, tag: &str) -> ApiResult<Option<Served>> {
    if let Some(s) = state.proxy.pending_by_tag(name, tag) {
        return Ok(Some(s));
    }
    Ok(state
        .meta
        .manifest_by_tag(name, tag)
        .await?
        .map(|r| Served {
            digest: r.digest,
            media_type: r.media_type,
            content: r.content.into(),
            committed: true,
        }))
}

async fn local_by_digest(
    state: &AppState,
    name: &str,
    digest: &Digest,
) -> ApiResult<Option<Served>> {
    if let Some(r) = state.meta.manifest_by_digest(name, digest).await? {
        return Ok(Some(Served {
            digest: r.digest,
            media_type: r.media_type,
            content: r.content.into(),
            committed: true,
        }));
    }
    Ok(state.proxy.pending_by_digest(name, digest))
}

/// `GET`/`HEAD` of a manifest in a proxy project; `None` when `name` is not in one (the
/// ordinary handler answers).
pub(crate) async fn manifest(
    ctx: &Ctx,
    name: &str,
    reference: &str,
) -> ApiResult<Option<Response>> {
    let state = &ctx.state;
    let project = berth_auth::project_of(name);
    let Some(up) = state.proxy.upstream(state, project).await? else {
        return Ok(None);
    };
    // Invalid references are answered by the ordinary handler.
    let Ok(parsed) = reference.parse::<Reference>() else {
        return Ok(None);
    };
    let served = match parsed {
        Reference::Digest(d) => match local_by_digest(state, name, &d).await? {
            Some(s) => s,
            None => fetch_manifest(state, &up, name, &d, None).await?,
        },
        Reference::Tag(tag) => revalidate(state, &up, name, &tag).await?,
    };
    Ok(Some(respond_manifest(ctx, name, served)))
}

/// The manifest `name:tag` should serve, asking the upstream with a `HEAD` unless the tag
/// was checked within `[proxy] revalidate_secs`.
async fn revalidate(state: &AppState, up: &Upstream, name: &str, tag: &str) -> ApiResult<Served> {
    let local = local_by_tag(state, name, tag).await?;
    if let Some(s) = &local
        && state.proxy.is_fresh(name, tag)
    {
        return Ok(Served {
            digest: s.digest.clone(),
            media_type: s.media_type.clone(),
            content: s.content.clone(),
            committed: s.committed,
        });
    }
    let image = state.proxy.image(up, name, tag)?;
    let reference = image.reference();
    let head = bounded(
        state,
        &format!("HEAD {image}"),
        up.remote.client.head_manifest(&image, &reference),
    )
    .await;
    match head {
        Ok(Some(desc)) => {
            state.proxy.mark_fresh(name, tag);
            if let Some(s) = local
                && s.digest == desc.digest
            {
                return Ok(s);
            }
            // The tag moved (or was never cached): the new digest may be here already.
            if let Some(s) = local_by_digest(state, name, &desc.digest).await? {
                store_manifest(
                    state,
                    up,
                    name,
                    &s.digest,
                    &s.media_type,
                    s.content.clone(),
                    Some(tag),
                )
                .await?;
                return Ok(s);
            }
            fetch_manifest(state, up, name, &desc.digest, Some(tag)).await
        }
        Ok(None) => {
            // Gone upstream: so is the cached tag (the manifest stays until GC takes it).
            state.proxy.forget_tag(name, tag);
            if local.as_ref().is_some_and(|s| s.committed) {
                match state.meta.delete_tag(name, tag).await {
                    Ok(()) | Err(StorageError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(ApiError::new(
                ErrorCode::ManifestUnknown,
                format!(
                    "manifest {tag} is not in {image} on the upstream registry {}",
                    up.registry
                ),
            ))
        }
        Err(e) => match local {
            Some(s) => {
                tracing::warn!(repository = name, tag, registry = %up.registry, error = %e,
                    "upstream unavailable; serving the cached manifest");
                Ok(s)
            }
            None => Err(unreachable(up, &format!("{name}:{tag}"), &e)),
        },
    }
}

/// `GET` manifest `digest` from the upstream (verified by berth-client), keep it, and tag
/// it `tag`.
async fn fetch_manifest(
    state: &AppState,
    up: &Upstream,
    name: &str,
    digest: &Digest,
    tag: Option<&str>,
) -> ApiResult<Served> {
    let image = state.proxy.image(up, name, &digest.to_string())?;
    let fetched = bounded(
        state,
        &format!("GET {image}"),
        up.remote
            .client
            .get_manifest(&image, &Reference::Digest(digest.clone())),
    )
    .await;
    let m = match fetched {
        Ok(m) => m,
        Err(e) if e.is_not_found() => {
            return Err(ApiError::new(
                ErrorCode::ManifestUnknown,
                format!(
                    "manifest {digest} is not in {image} on the upstream registry {}",
                    up.registry
                ),
            ));
        }
        Err(e) => return Err(unreachable(up, &format!("{name}@{digest}"), &e)),
    };
    let media_type = m.media_type.clone();
    store_manifest(state, up, name, digest, &media_type, m.bytes.clone(), tag).await?;
    Ok(Served {
        digest: digest.clone(),
        media_type,
        content: m.bytes,
        committed: false,
    })
}

/// Keep a manifest from the upstream: stored at once when everything it references is in
/// the repository, otherwise held pending while its missing blobs are fetched.
async fn store_manifest(
    state: &AppState,
    up: &Upstream,
    name: &str,
    digest: &Digest,
    media_type: &str,
    content: Bytes,
    tag: Option<&str>,
) -> ApiResult<()> {
    let parsed = parse_manifest(Some(media_type), &content).map_err(|e| {
        ApiError::new(
            ErrorCode::ManifestInvalid,
            format!(
                "manifest {digest} from the upstream registry {} is invalid: {e}",
                up.registry
            ),
        )
        .with_status(StatusCode::BAD_GATEWAY)
    })?;
    if Digest::of(digest.algorithm(), &content) != *digest {
        return Err(ApiError::new(
            ErrorCode::DigestInvalid,
            format!(
                "manifest from the upstream registry {} does not match {digest}",
                up.registry
            ),
        )
        .with_status(StatusCode::BAD_GATEWAY));
    }
    // This assignment of the tag supersedes any pending one.
    if let Some(t) = tag {
        state.proxy.forget_tag(name, t);
    }
    let pending = PendingManifest {
        media_type: parsed.media_type.clone(),
        content,
        tag: tag.map(str::to_owned),
        blobs: parsed.blobs.clone(),
        children: parsed.children.clone(),
        at: Instant::now(),
    };
    if commit_if_complete(state, name, digest, &pending).await? {
        return Ok(());
    }
    state.proxy.hold(name, digest, pending.clone());
    // Fetch what the manifest still lacks (clients asking for the same blobs share these
    // downloads), then store it.
    if !pending.blobs.is_empty() {
        let (state, up, name, digest) =
            (state.clone(), up.clone(), name.to_owned(), digest.clone());
        tokio::spawn(async move {
            for blob in &pending.blobs {
                if let Err(e) = ensure_blob(&state, &up, &name, blob).await {
                    tracing::warn!(repository = %name, manifest = %digest, %blob, error = %e.detail,
                        "could not cache a blob of a proxied manifest");
                    return;
                }
            }
            commit_pending(&state, &name).await;
        });
    }
    Ok(())
}

/// Store `m` with the ordinary checked PUT if every blob it references is linked in the
/// repository and every child manifest is stored; true when stored.
async fn commit_if_complete(
    state: &AppState,
    name: &str,
    digest: &Digest,
    m: &PendingManifest,
) -> ApiResult<bool> {
    for b in &m.blobs {
        if state.meta.blob_link(name, b).await?.is_none() {
            return Ok(false);
        }
    }
    for c in &m.children {
        if !state.meta.manifest_exists(name, c).await? {
            return Ok(false);
        }
    }
    let parsed = parse_manifest(Some(&m.media_type), &m.content)
        .map_err(|e| ApiError::new(ErrorCode::ManifestInvalid, e.to_string()))?;
    // A tag that moved on to another digest while this one was pending stays there.
    let tag = m.tag.clone().filter(|t| {
        state
            .proxy
            .pending_tag(name, t)
            .is_none_or(|d| d == *digest)
    });
    let lifecycle = &state.lifecycle;
    let limits = lifecycle.push_limits(name, tag.as_deref()).await?;
    let stored = lifecycle
        .store
        .put_manifest_checked(
            NewManifest {
                repository: name.to_owned(),
                digest: digest.clone(),
                media_type: parsed.media_type,
                content: m.content.to_vec(),
                tag,
                blobs: parsed.blobs,
                children: parsed.children,
                subject: parsed.subject,
                artifact_type: parsed.artifact_type,
                annotations_json: parsed.annotations_json,
            },
            &limits,
        )
        .await;
    match stored {
        Ok(()) => {
            state.proxy.release(name, digest);
            tracing::info!(repository = name, %digest, "proxied manifest cached");
            Ok(true)
        }
        // The collector took a blob meanwhile, or a quota or immutable rule refuses it:
        // served from memory, fetched again later.
        Err(StorageError::BlobUnknown(_) | StorageError::NotFound(_)) => Ok(false),
        Err(StorageError::Denied(why)) => {
            tracing::warn!(repository = name, %digest, why, "proxied manifest not cached");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Store every pending manifest of `name` that has become complete (children before the
/// indexes listing them).
async fn commit_pending(state: &AppState, name: &str) {
    let mut list = state.proxy.pending_of(name);
    list.sort_by_key(|(_, m)| !m.children.is_empty());
    for (digest, m) in list {
        if let Err(e) = commit_if_complete(state, name, &digest, &m).await {
            tracing::warn!(repository = name, %digest, error = %e.detail, "could not cache a proxied manifest");
        }
    }
}

fn respond_manifest(ctx: &Ctx, name: &str, s: Served) -> Response {
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, &s.media_type)
        .header(header::CONTENT_LENGTH, s.content.len())
        .header("docker-content-digest", digest_header(&s.digest))
        .header(header::ETAG, format!("\"{}\"", s.digest));
    let body = if ctx.is_head() {
        Body::empty()
    } else {
        if s.committed {
            ctx.state.lifecycle.pulls.record(name, &s.digest);
        }
        Body::from(s.content)
    };
    builder.body(body).unwrap()
}

// --- Blobs. ---

/// `GET`/`HEAD` of a blob in a proxy project that the repository does not hold yet;
/// `None` when the ordinary handler can answer (not a proxy project, or cached).
pub(crate) async fn blob(ctx: &Ctx, name: &str, digest: &str) -> ApiResult<Option<Response>> {
    let state = &ctx.state;
    let project = berth_auth::project_of(name);
    let Some(up) = state.proxy.upstream(state, project).await? else {
        return Ok(None);
    };
    let Ok(digest) = digest.parse::<Digest>() else {
        return Ok(None);
    };
    if state.meta.blob_link(name, &digest).await?.is_some() {
        return Ok(None);
    }
    let joined = state
        .proxy
        .fetches
        .lock()
        .unwrap()
        .get(&(name.to_owned(), digest.clone()))
        .cloned();
    let fetch = match joined {
        Some(f) => f,
        None => {
            let size = match upstream_size(state, &up, name, &digest).await? {
                Some(size) => size,
                // Another repository had the bytes: linked here now.
                None => return Ok(None),
            };
            if ctx.is_head() {
                return Ok(Some(blob_head(&digest, size)));
            }
            // A fetch may have finished while the upstream answered.
            if state.meta.blob_link(name, &digest).await?.is_some() {
                return Ok(None);
            }
            start_fetch(state, &up, name, &digest, size)?
        }
    };
    let size = fetch.size;
    let range = match ctx.header("range") {
        Some(h) => Some(parse_range(h, size).map_err(|e| {
            ApiError::new(
                ErrorCode::RangeInvalid,
                format!("{e}; the blob has {size} bytes"),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        })?),
        None => None,
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest_header(&digest))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{digest}\""));
    let (start, end) = match range {
        Some((s, e)) => {
            builder = builder
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {s}-{e}/{size}"));
            (s, e + 1)
        }
        None => (0, size),
    };
    builder = builder.header(header::CONTENT_LENGTH, end - start);
    if ctx.is_head() {
        return Ok(Some(builder.body(Body::empty()).unwrap()));
    }
    Ok(Some(builder.body(follow(fetch, start, end)).unwrap()))
}

fn blob_head(digest: &Digest, size: u64) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("docker-content-digest", digest_header(digest))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, size)
        .body(Body::empty())
        .unwrap()
}

/// Ask the upstream whether it has the blob and how large it is. When it does and the
/// bytes are already stored for another repository, they are linked into `name` instead
/// (`None`): the upstream vouched for the digest, so no bytes are fetched twice.
async fn upstream_size(
    state: &AppState,
    up: &Upstream,
    name: &str,
    digest: &Digest,
) -> ApiResult<Option<u64>> {
    let image = state.proxy.image(up, name, &digest.to_string())?;
    let size = match bounded(
        state,
        &format!("HEAD blob {digest}"),
        up.remote.client.blob_size(&image, digest),
    )
    .await
    {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Err(ApiError::new(
                ErrorCode::BlobUnknown,
                format!(
                    "blob {digest} is not in {image} on the upstream registry {}",
                    up.registry
                ),
            ));
        }
        Err(e) if e.is_not_found() => {
            return Err(ApiError::new(
                ErrorCode::BlobUnknown,
                format!(
                    "blob {digest} is not in {image} on the upstream registry {}: {e}",
                    up.registry
                ),
            ));
        }
        Err(e) => return Err(unreachable(up, &format!("blob {digest} of {name}"), &e)),
    };
    let limit = state.limits.max_blob_bytes;
    if size > limit {
        return Err(ApiError::new(
            ErrorCode::SizeInvalid,
            format!(
                "blob {digest} of {name} is {size} bytes upstream, more than the {limit}-byte \
                 limit (limits.max_blob_bytes)"
            ),
        ));
    }
    if state.blobs.stat(digest).await?.is_some()
        && state
            .lifecycle
            .store
            .mount_blob(None, name, digest)
            .await?
            .is_some()
    {
        commit_pending(state, name).await;
        return Ok(None);
    }
    Ok(Some(size))
}

/// Make sure `name` links `digest`, fetching it (or joining a fetch) when needed, and wait.
async fn ensure_blob(
    state: &AppState,
    up: &Upstream,
    name: &str,
    digest: &Digest,
) -> ApiResult<()> {
    if state.meta.blob_link(name, digest).await?.is_some() {
        return Ok(());
    }
    let joined = state
        .proxy
        .fetches
        .lock()
        .unwrap()
        .get(&(name.to_owned(), digest.clone()))
        .cloned();
    let fetch = match joined {
        Some(f) => f,
        None => match upstream_size(state, up, name, digest).await? {
            None => return Ok(()),
            Some(size) => start_fetch(state, up, name, digest, size)?,
        },
    };
    let mut rx = fetch.progress.subscribe();
    let stage = rx
        .wait_for(|p| p.stage != Stage::Running)
        .await
        .map(|p| p.stage.clone())
        .unwrap_or(Stage::Failed("the fetch ended".into()));
    if let Stage::Failed(why) = stage {
        return Err(ApiError::new(ErrorCode::BlobUnknown, why).with_status(StatusCode::BAD_GATEWAY));
    }
    // Verified; wait for the link (the fetch entry goes once the blob is stored).
    for _ in 0..600 {
        if state.meta.blob_link(name, digest).await?.is_some() {
            return Ok(());
        }
        if !state
            .proxy
            .fetches
            .lock()
            .unwrap()
            .contains_key(&(name.to_owned(), digest.clone()))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Start the one download of `digest` for `name` (the caller checked none is running).
fn start_fetch(
    state: &AppState,
    up: &Upstream,
    name: &str,
    digest: &Digest,
    size: u64,
) -> ApiResult<Arc<Fetch>> {
    let key = (name.to_owned(), digest.clone());
    let image = state.proxy.image(up, name, &digest.to_string())?;
    let mut fetches = state.proxy.fetches.lock().unwrap();
    if let Some(f) = fetches.get(&key) {
        return Ok(f.clone());
    }
    let staging = &state.proxy.staging;
    let io_err = |e: io::Error| {
        ApiError::from(StorageError::Io(io::Error::new(
            e.kind(),
            format!("proxy staging directory {}: {e}", staging.display()),
        )))
    };
    std::fs::create_dir_all(staging).map_err(io_err)?;
    let path = staging.join(format!("{}-{}", uuid::Uuid::new_v4(), digest.hex()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err)?;
    let (tx, _) = watch::channel(Progress {
        written: 0,
        stage: Stage::Running,
    });
    let fetch = Arc::new(Fetch {
        size,
        file: Arc::new(file),
        progress: tx,
    });
    fetches.insert(key.clone(), fetch.clone());
    drop(fetches);
    let (state, up, name, digest, f) = (
        state.clone(),
        up.clone(),
        name.to_owned(),
        digest.clone(),
        fetch.clone(),
    );
    // Detached from any client: a puller that goes away does not stop the others' fetch.
    tokio::spawn(async move {
        let desc = Descriptor::new("application/octet-stream", digest.clone(), size);
        let observer = Observer(f.progress.clone());
        let got = up
            .remote
            .client
            .fetch_blob_to_file_observed(
                &image,
                &desc,
                &path,
                Some(&observer),
                berth_client::Durability::Scratch,
            )
            .await;
        match got {
            Ok(_) => {
                f.progress.send_modify(|p| {
                    p.written = size;
                    p.stage = Stage::Verified;
                });
                if let Err(e) = keep_blob(&state, &name, &digest, &path, size).await {
                    tracing::warn!(repository = %name, %digest, error = %e.detail,
                        "a verified blob from the upstream could not be stored");
                }
            }
            Err(e) => {
                tracing::warn!(repository = %name, %digest, registry = %up.registry, error = %e,
                    "fetching a blob from the upstream failed; nothing was kept");
                f.progress.send_modify(|p| {
                    p.stage = Stage::Failed(format!(
                        "fetching blob {digest} from the upstream registry {} failed: {e}",
                        up.registry
                    ))
                });
            }
        }
        let _ = tokio::fs::remove_file(&path).await;
        state
            .proxy
            .fetches
            .lock()
            .unwrap()
            .remove(&(name.clone(), digest.clone()));
        commit_pending(&state, &name).await;
    });
    Ok(fetch)
}

/// Store a verified staging file as blob `digest` of `name` through an ordinary upload
/// session: quota, upload pin, the store's own digest check, then the link.
async fn keep_blob(
    state: &AppState,
    name: &str,
    digest: &Digest,
    path: &Path,
    size: u64,
) -> ApiResult<()> {
    let id = state.blobs.start_upload().await?;
    state
        .meta
        .create_upload(UploadSession {
            id: id.clone(),
            repository: name.to_owned(),
            started_at: now(),
            owner: "proxy".into(),
        })
        .await?;
    let result = async {
        state
            .lifecycle
            .before_commit(name, &id, digest, size)
            .await?;
        // The download was hashed as it was written: a store that can take the file as it
        // is (a hard link on the embedded default) neither copies nor hashes it again.
        if state.blobs.adopt_file(path, digest, size).await? {
            state.blobs.cancel_upload(&id).await?;
        } else {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(StorageError::Io)?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK)
                .map_err(io::Error::other);
            state
                .blobs
                .append(&id, Some(0), Box::pin(stream), state.limits.max_blob_bytes)
                .await?;
            state.blobs.finish_upload(&id, digest).await?;
        }
        state.meta.link_blob(name, digest, size).await?;
        Ok::<_, StorageError>(())
    }
    .await;
    if result.is_err() {
        let _ = state.blobs.cancel_upload(&id).await;
    }
    // Also drops the upload pin.
    state.meta.delete_upload(&id).await?;
    result?;
    tracing::info!(repository = name, %digest, size, "proxied blob cached");
    Ok(())
}

/// The body of a response reading `start..end` of a blob being fetched, as it is written.
/// The blob's last byte is sent only once the whole blob is verified; a failed fetch ends
/// the body with an error (the client sees a cut transfer, never a complete wrong blob).
fn follow(fetch: Arc<Fetch>, start: u64, end: u64) -> Body {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
    tokio::spawn(async move {
        let mut progress = fetch.progress.subscribe();
        let mut pos = start;
        while pos < end {
            let (written, stage) = {
                let p = progress.borrow_and_update();
                (p.written, p.stage.clone())
            };
            let readable = match &stage {
                Stage::Verified => fetch.size,
                Stage::Running => written.min(fetch.size.saturating_sub(1)),
                Stage::Failed(why) => {
                    let _ = tx.send(Err(io::Error::other(why.clone()))).await;
                    return;
                }
            };
            let upto = readable.min(end);
            if pos < upto {
                let n = ((upto - pos) as usize).min(READ_CHUNK);
                let file = fetch.file.clone();
                let at = pos;
                let chunk = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n];
                    file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
                pos += n as u64;
                continue;
            }
            if progress.changed().await.is_err() {
                let _ = tx
                    .send(Err(io::Error::other(
                        "the upstream fetch ended before the blob was complete",
                    )))
                    .await;
                return;
            }
        }
    });
    Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Refuse pushes and deletes into a proxy project (its content mirrors the upstream).
pub(crate) async fn refuse_writes(state: &AppState, repository: &str) -> ApiResult<()> {
    let project = berth_auth::project_of(repository);
    if let Some(up) = state.proxy.upstream(state, project).await? {
        return Err(ApiError::new(
            ErrorCode::Denied,
            format!(
                "project {project} is a proxy cache of the registry {}: pushes and deletes are \
                 refused (its content comes from the upstream); push to an ordinary project",
                up.registry
            ),
        ));
    }
    Ok(())
}

/// Create project `name` as a proxy cache of the registered registry `registry` (system
/// administrators only; the registry must exist). The project is removed again if it
/// cannot be tied to the registry.
pub async fn create_proxy_project(
    auth: &crate::auth::Auth,
    remotes: &crate::remotes::Remotes,
    caller: &crate::auth::Caller,
    name: &str,
    public: bool,
    description: &str,
    registry: &str,
) -> ApiResult<()> {
    if !caller.principal.is_system_admin() {
        return Err(ApiError::new(
            ErrorCode::Denied,
            "only system administrators may create proxy-cache projects",
        ));
    }
    remotes.get(registry).await?;
    crate::admin::create_project(auth, caller, name, public, description).await?;
    if let Err(e) = remotes.store.set_project_proxy(name, Some(registry)).await {
        let _ = auth.accounts.delete_project(name).await;
        return Err(e.into());
    }
    auth.audit(
        &caller.actor(),
        "project.proxy",
        &format!("project:{name}"),
        caller.addr,
        &format!("proxy cache of registry {registry}"),
    )
    .await;
    Ok(())
}

/// The containerd `hosts.toml` that makes containerd pull `upstream_url`'s images through
/// proxy project `project` of the Berth at `berth_url` (`https://host:port`), with
/// `override_path` (the mirror's path is not `/v2/`). `ca_file` is where the node keeps
/// Berth's CA certificate, if Berth's certificate is not publicly trusted.
pub fn containerd_mirror_snippet(
    upstream_url: &str,
    berth_url: &str,
    project: &str,
    ca_file: Option<&str>,
) -> String {
    let berth_url = berth_url.trim_end_matches('/');
    let mut s = format!(
        "server = \"{upstream_url}\"\n\n[host.\"{berth_url}/v2/{project}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
    );
    if let Some(ca) = ca_file {
        s.push_str(&format!("  ca = \"{ca}\"\n"));
    }
    s
}

/// Where containerd looks for the snippet of upstream `url`: `certs.d/<host>/hosts.toml`
/// (Docker Hub is `docker.io`).
pub fn containerd_host_dir(upstream_url: &str) -> String {
    let host = upstream_url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if host == berth_client::reference::DOCKER_HUB_API || host == "index.docker.io" {
        berth_client::reference::DOCKER_HUB.to_owned()
    } else {
        host.to_owned()
    }
}

/// Upstream `url` as containerd's `server` (Docker Hub: `https://registry-1.docker.io`).
pub fn containerd_server(upstream_url: &str) -> String {
    let host = containerd_host_dir(upstream_url);
    if host == berth_client::reference::DOCKER_HUB {
        format!("https://{}", berth_client::reference::DOCKER_HUB_API)
    } else if upstream_url.contains("://") {
        upstream_url.trim_end_matches('/').to_owned()
    } else {
        format!("https://{host}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_section_reaches_the_engine() {
        let c = crate::ServerConfig::from_toml(
            "[proxy]\nrevalidate_secs = 0\nupstream_timeout_secs = 40\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = Proxy::new(dir.path().to_owned()).with_config(&c.proxy);
        assert_eq!(p.fresh, Duration::ZERO);
        assert_eq!(p.upstream_timeout, Duration::from_secs(40));
        // Revalidating every time: a tag just checked is not fresh.
        p.mark_fresh("hub/library/x", "latest");
        assert!(!p.is_fresh("hub/library/x", "latest"));
        let d =
            Proxy::new(dir.path().to_owned()).with_config(&crate::ServerConfig::default().proxy);
        assert_eq!((d.fresh, d.upstream_timeout), (FRESH, UPSTREAM_TIMEOUT));
        d.mark_fresh("hub/library/x", "latest");
        assert!(d.is_fresh("hub/library/x", "latest"));
        // A zero timeout would refuse every upstream: it is taken as one second.
        let z = crate::ServerConfig::from_toml("[proxy]\nupstream_timeout_secs = 0\n").unwrap();
        let z = Proxy::new(dir.path().to_owned()).with_config(&z.proxy);
        assert_eq!(z.upstream_timeout, Duration::from_secs(1));
        assert!(crate::ServerConfig::from_toml("[proxy]\nrevalidate = 1\n").is_err());
    }

    #[test]
    fn pending_manifests_survive_a_restart_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let content = Bytes::from_static(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
        );
        let digest = Digest::of(berth_proto::digest::Algorithm::Sha256, &content);
        let m = PendingManifest {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            content: content.clone(),
            tag: Some("latest".into()),
            blobs: vec![],
            children: vec![],
            at: Instant::now(),
        };
        let proxy = Proxy::new(dir.path().to_owned());
        proxy.hold("p/r", &digest, m);
        // A leftover temporary file is cleaned at start.
        std::fs::write(dir.path().join("pending/x.tmp1"), b"junk").unwrap();

        let again = Proxy::new(dir.path().to_owned());
        let s = again.pending_by_tag("p/r", "latest").unwrap();
        assert_eq!(s.digest, digest);
        assert_eq!(s.content, content);
        assert!(!dir.path().join("pending/x.tmp1").exists());

        again.release("p/r", &digest);
        let third = Proxy::new(dir.path().to_owned());
        assert!(third.pending_by_digest("p/r", &digest).is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("pending"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn docker_hub_single_names_get_library() {
        assert_eq!(
            upstream_repository("docker.io", "hub/nginx"),
            "library/nginx"
        );
        assert_eq!(
            upstream_repository("docker.io", "hub/library/nginx"),
            "library/nginx"
        );
        assert_eq!(
            upstream_repository("docker.io", "hub/bitnami/redis"),
            "bitnami/redis"
        );
        assert_eq!(upstream_repository("127.0.0.1:5000", "hub/nginx"), "nginx");
        assert_eq!(upstream_repository("127.0.0.1:5000", "hub/a/b"), "a/b");
    }

    #[test]
    fn mirror_snippet_names_the_project_path_and_override() {
        assert_eq!(
            containerd_host_dir("https://registry-1.docker.io"),
            "docker.io"
        );
        assert_eq!(
            containerd_server("https://registry-1.docker.io"),
            "https://registry-1.docker.io"
        );
        assert_eq!(
            containerd_host_dir("https://10.0.0.5:5000/"),
            "10.0.0.5:5000"
        );
        let s = containerd_mirror_snippet(
            "https://registry-1.docker.io",
            "https://berth:5443",
            "hub",
            Some("/etc/containerd/certs.d/berth.crt"),
        );
        assert!(
            s.starts_with("server = \"https://registry-1.docker.io\""),
            "{s}"
        );
        assert!(s.contains("[host.\"https://berth:5443/v2/hub\"]"), "{s}");
        assert!(s.contains("capabilities = [\"pull\", \"resolve\"]"), "{s}");
        assert!(s.contains("override_path = true"), "{s}");
        assert!(
            s.contains("ca = \"/etc/containerd/certs.d/berth.crt\""),
            "{s}"
        );
        let parsed: toml::Value = toml::from_str(&s).unwrap();
        assert_eq!(
            parsed["server"].as_str(),
            Some("https://registry-1.docker.io")
        );
    }
}
