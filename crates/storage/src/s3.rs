//! Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, Garage) through
//! `object_store`'s `AmazonS3`.
//!
//! Layout under the optional key prefix:
//!
//! ```text
//! PREFIX/
//! ├── blobs/<alg>/<hex>   a committed blob: a small JSON pointer {"object","size"} to its bytes,
//! │                       written create-only and only after the digest was verified
//! ├── data/<upload-id>    the bytes of a blob, named by the upload that wrote them (the
//! │                       multipart upload completes here; nothing is copied on commit)
//! └── uploads/<upload-id> an upload in progress: header (size, SHA-256 state, multipart id,
//!                         part ETags) followed by the tail (< 5 MiB) not yet sent as a part
//! ```
//!
//! Every replica reads the session from the bucket, so a chunked upload started on one
//! process continues on another; the state object is rewritten once per PATCH, after every
//! part of that PATCH was stored, so a process killed mid-PATCH leaves the session at the
//! last acknowledged offset (parts it uploaded after that are overwritten or dropped when
//! the multipart upload completes with its explicit part list).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_proto::{Algorithm, Digest, Hasher};
use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::signer::Signer;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::SerializableState;

use crate::blob::{BlobChunks, BlobReader, BlobStore, ByteStream, UploadId, UploadState};
use crate::s3_cache::BlobCache;
use crate::{StorageError, StorageResult};

/// Size of the parts a PATCH is cut into while it streams.
const PART: usize = 8 * 1024 * 1024;
/// S3's minimum size of every part but the last.
const MIN_PART: usize = 5 * 1024 * 1024;
/// Parts of one upload sent to the bucket at the same time.
const PARTS_IN_FLIGHT: usize = 3;
/// S3's maximum number of parts of one multipart upload.
const MAX_PARTS: usize = 10_000;
/// Committed-blob pointers remembered in memory (pointers never change while they exist).
const POINTER_CACHE: usize = 16_384;
/// First bytes of a session object.
const MAGIC: &[u8; 8] = b"BERTHUP1";

/// Configuration of the S3 backend (the `[storage.s3]` table of the server's config file).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:3900`;
    /// empty: AWS_ENDPOINT_URL / AWS_ENDPOINT from the environment, else AWS itself.
    pub endpoint: Option<String>,
    /// Region name (`garage` for Garage's default, `us-east-1` for MinIO's).
    pub region: String,
    /// Bucket holding the blobs (it must exist).
    pub bucket: String,
    /// Key prefix under which Berth keeps its objects (e.g. `berth/`), empty for none.
    pub prefix: String,
    /// Access key; empty: AWS_ACCESS_KEY_ID (or the other standard AWS credential sources).
    pub access_key_id: Option<String>,
    /// Secret key; empty: AWS_SECRET_ACCESS_KEY.
    pub secret_access_key: Option<String>,
    /// PEM file with the CA(s) of a self-signed endpoint, trusted besides the system roots.
    /// Empty: AWS_CA_BUNDLE when set and readable.
    pub ca_file: Option<PathBuf>,
    /// Allow a plain-HTTP endpoint that is not on loopback (loopback is always allowed).
    pub allow_http: bool,
    /// Path-style addressing (`ENDPOINT/BUCKET/KEY`); false: virtual-hosted style.
    pub path_style: bool,
    /// Answer blob GETs with a 307 to a pre-signed URL of the bucket instead of proxying.
    pub redirect: bool,
    /// Lifetime of those pre-signed URLs.
    pub presign_ttl_secs: u64,
    /// Bound on one request to the bucket (uploads of a part, small reads), seconds.
    pub request_timeout_secs: u64,
    /// Directory of this replica's local read-through cache of whole blobs (see
    /// [`crate::s3_cache`]); a directory of its own per replica. Unset: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Most bytes kept in `cache_dir` (least recently used blobs are evicted).
    pub cache_max_bytes: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: None,
            region: "us-east-1".to_owned(),
            bucket: String::new(),
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            ca_file: None,
            allow_http: false,
            path_style: true,
            redirect: false,
            presign_ttl_secs: 300,
            request_timeout_secs: 30,
            cache_dir: None,
            cache_max_bytes: 10 << 30,
        }
    }
}

/// A committed blob: where its bytes are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Pointer {
    /// Key of the data object, relative to the prefix (`data/<upload-id>`).
    object: String,
    size: u64,
}

/// The header of a session object (the tail bytes follow it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Session {
    /// Bytes received and acknowledged (parts + tail).
    size: u64,
    /// SHA-256 state over all `size` bytes (`SerializableState`, hex).
    sha256: String,
    /// The multipart upload of `data/<id>`, once the first part was cut.
    multipart: Option<String>,
    /// ETags of the stored parts, in order.
    parts: Vec<String>,
}

impl Session {
    fn hasher(&self) -> StorageResult<sha2::Sha256> {
        if self.sha256.is_empty() {
            return Ok(<sha2::Sha256 as sha2::Digest>::new());
        }
        let raw = hex::decode(&self.sha256)
            .map_err(|e| StorageError::Io(std::io::Error::other(format!("hash state: {e}"))))?;
        let state = raw.as_slice().try_into().map_err(|_| {
            StorageError::Io(std::io::Error::other(
                "saved hash state of the upload has the wrong length",
            ))
        })?;
        sha2::Sha256::deserialize(state).map_err(|_| {
            StorageError::Io(std::io::Error::other(
                "saved hash state of the upload is invalid",
            ))
        })
    }
}

/// Reads longer than two segments are fetched as segments of this many bytes, up to
/// [`READ_SEGMENTS_AHEAD`] GETs at once, served in order. One GET stream from an object
/// store runs at the speed of one of its disk/network pipelines (Garage: one block
/// at a time); several ranged GETs keep more of them busy, as the AWS SDKs' download
/// managers do. Each waiting segment holds at most a socket buffer of bytes (TCP flow
/// control stops the store), so memory stays bounded per request.
const READ_SEGMENT: u64 = 16 * 1024 * 1024;
const READ_SEGMENTS_AHEAD: usize = 3;

/// `[start, end]` cut into [`READ_SEGMENT`]-sized inclusive ranges.
fn segments(start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut s = start;
    while s <= end {
        let e = (s + READ_SEGMENT - 1).min(end);
        out.push((s, e));
        s = e + 1;
    }
    out
}

/// Content-addressed blobs and resumable uploads in an S3 bucket.
pub struct S3BlobStore {
    /// Client for writes and small reads (whole-request timeout).
    store: Arc<AmazonS3>,
    /// Client for streaming blob reads (stall timeout only, so slow clients are not cut).
    reader: Arc<AmazonS3>,
    prefix: String,
    /// Names the bucket in errors: "object store http://host:port bucket NAME".
    name: String,
    redirect: Option<Duration>,
    /// Plain HTTP client (same trust as `store`) for the one S3 call `object_store` lacks:
    /// ListMultipartUploads, sent as a pre-signed GET.
    http: reqwest::Client,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pointers: Mutex<HashMap<Digest, Pointer>>,
    /// This replica's local copies of blobs it served whole (`cache_dir`).
    cache: Option<Arc<BlobCache>>,
    /// Blob data reads sent to the bucket (each may be several ranged GETs).
    bucket_reads: AtomicU64,
}

impl std::fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn config_error(msg: String) -> StorageError {
    StorageError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg))
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

impl S3BlobStore {
    /// Build the client from `config` (falling back to the standard AWS_* environment for
    /// what it leaves empty). Does not contact the bucket; see [`S3BlobStore::check`].
    pub fn connect(config: &S3Config) -> StorageResult<S3BlobStore> {
        if config.bucket.is_empty() {
            return Err(config_error(
                "the S3 backend needs a bucket: set [storage.s3] bucket or BERTH_S3_BUCKET".into(),
            ));
        }
        let prefix = config.prefix.trim_matches('/');
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            || prefix.split('/').any(|s| s == "." || s == "..")
        {
            return Err(config_error(format!(
                "S3 key prefix {prefix:?} may only hold letters, digits, '-', '_', '.' and '/'"
            )));
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let endpoint = config
            .endpoint
            .clone()
            .filter(|e| !e.is_empty())
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        let mut https = true;
        if let Some(endpoint) = &endpoint {
            let url = url::Url::parse(endpoint)
                .map_err(|e| config_error(format!("S3 endpoint {endpoint:?} is not a URL: {e}")))?;
            match url.scheme() {
                "https" => {}
                "http" => {
                    https = false;
                    let loopback = url.host().as_ref().is_some_and(is_loopback);
                    if !loopback && !config.allow_http {
                        return Err(config_error(format!(
                            "refusing plain HTTP to the S3 endpoint {endpoint} (not loopback): \
                             use https, or set [storage.s3] allow_http = true"
                        )));
                    }
                }
                other => {
                    return Err(config_error(format!(
                        "S3 endpoint {endpoint} has scheme {other:?}; use https:// or http://"
                    )));
                }
            }
        }

        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(config.request_timeout_secs.max(1)));
        let mut options = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_pool_idle_timeout(Duration::from_secs(30))
            .with_allow_http(!https);
        if https {
            // An operator's CA file wins; otherwise the standard AWS_CA_BUNDLE is honoured
            // when it can be read (it is an addition to the system roots, never a
            // replacement, so a bundle of public roots set machine-wide is harmless).
            let ca = match &config.ca_file {
                Some(path) => Some((path.clone(), true)),
                None => std::env::var_os("AWS_CA_BUNDLE")
                    .filter(|v| !v.is_empty())
                    .map(|v| (PathBuf::from(v), false)),
            };
            if let Some((path, required)) = ca {
                match std::fs::read(&path) {
                    Ok(pem) => {
                        let certs =
                            object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
                                config_error(format!(
                                    "CA file {} for the S3 endpoint is not PEM: {e}",
                                    path.display()
                                ))
                            })?;
                        for cert in certs {
                            options = options.with_root_certificate(cert);
                        }
                        let extra = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                            config_error(format!(
                                "CA file {} for the S3 endpoint is not PEM: {e}",
                                path.display()
                            ))
                        })?;
                        http = http.tls_certs_merge(extra);
                    }
                    Err(e) if required => {
                        return Err(config_error(format!(
                            "cannot read the S3 CA file {}: {e}",
                            path.display()
                        )));
                    }
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "ignoring AWS_CA_BUNDLE: it cannot be read"
                    ),
                }
            }
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
        };
        let build = |options: ClientOptions| {
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&config.bucket)
                .with_virtual_hosted_style_request(!config.path_style)
                .with_unsigned_payload(https)
                .with_retry(retry.clone())
                .with_client_options(options);
            if !config.region.is_empty() {
                builder = builder.with_region(&config.region);
            }
            if let Some(endpoint) = &endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(key) = config.access_key_id.as_ref().filter(|k| !k.is_empty()) {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = config.secret_access_key.as_ref().filter(|k| !k.is_empty()) {
                builder = builder.with_secret_access_key(secret);
            }
            builder
                .build()
                .map_err(|e| config_error(format!("cannot configure the S3 client: {e}")))
        };
        let store = build(
            options
                .clone()
                .with_timeout(Duration::from_secs(config.request_timeout_secs.max(1))),
        )?;
        let reader = build(
            options
                .with_timeout_disabled()
                .with_read_timeout(Duration::from_secs(10)),
        )?;
        let name = format!(
            "object store {} bucket {}",
            endpoint.as_deref().unwrap_or("(AWS)"),
            config.bucket
        );
        let cache = match &config.cache_dir {
            Some(dir) if !dir.as_os_str().is_empty() => {
                if config.cache_max_bytes == 0 {
                    return Err(config_error(
                        "[storage.s3] cache_max_bytes is 0: give the blob cache a size \
                         (e.g. 10737418240), or unset cache_dir"
                            .into(),
                    ));
                }
                Some(Arc::new(
                    BlobCache::open(dir, config.cache_max_bytes).map_err(StorageError::Io)?,
                ))
            }
            _ => None,
        };
        Ok(S3BlobStore {
            store: Arc::new(store),
            reader: Arc::new(reader),
            prefix,
            name,
            http: http
                .build()
                .map_err(|e| config_error(format!("cannot configure the S3 client: {e}")))?,
            redirect: config
                .redirect
                .then(|| Duration::from_secs(config.presign_ttl_secs.clamp(10, 7 * 24 * 3600))),
            locks: Mutex::new(HashMap::new()),
            pointers: Mutex::new(HashMap::new()),
            cache,
            bucket_reads: AtomicU64::new(0),
        })
    }

    /// This replica's blob cache, when `cache_dir` is set.
    pub fn cache(&self) -> Option<&Arc<BlobCache>> {
        self.cache.as_ref()
    }

    /// How many blob reads went to the bucket so far (tests show a cached read sends none).
    pub fn bucket_reads(&self) -> u64 {
        self.bucket_reads.load(Ordering::Relaxed)
    }

    /// Whether the bucket answers (a one-key listing): for start-up and readiness checks.
    pub async fn check(&self) -> StorageResult<()> {
        let prefix = self.path("blobs");
        let mut list = self.store.list(Some(&prefix));
        match list.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(self.unavailable("listing the bucket", e)),
        }
    }

    fn path(&self, key: &str) -> ObjPath {
        ObjPath::from(format!("{}{key}", self.prefix))
    }

    fn blob_path(&self, digest: &Digest) -> ObjPath {
        self.path(&format!(
            "blobs/{}/{}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    fn unavailable(&self, what: &str, e: object_store::Error) -> StorageError {
        StorageError::Unavailable(format!("{} failed {what}: {e}", self.name))
    }

    fn lock_slot(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap();
        locks.entry(id.to_owned()).or_default().clone()
    }

    fn release_slot(&self, id: &str, slot: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock().unwrap();
        // The map's reference and ours: nobody else waits for this session.
        if Arc::strong_count(&slot) == 2 {
            locks.remove(id);
        }
    }

    /// Run `f` holding this process's lock on upload `id` (appends to one session are
    /// serialized; across replicas the offset check refuses a second writer's chunk).
    async fn with_session<T>(
        &self,
        id: &str,
        f: impl AsyncFnOnce() -> StorageResult<T>,
    ) -> StorageResult<T> {
        if !valid_id(id) {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        let slot = self.lock_slot(id);
        let result = {
            let _guard = slot.lock().await;
            f().await
        };
        self.release_slot(id, slot);
        result
    }

    async fn load_session(&self, id: &str) -> StorageResult<(Session, Bytes)> {
        let path = self.path(&format!("uploads/{id}"));
        let bytes = match self.store.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| self.unavailable("reading an upload session", e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StorageError::UploadUnknown(id.to_owned()));
            }
            Err(e) => return Err(self.unavailable("reading an upload session", e)),
        };
        parse_session(&bytes)
            .map(|(s, start)| (s, bytes.slice(start..)))
            .ok_or_else(|| {
                StorageError::Io(std::io::Error::other(format!(
                    "upload session object {path} is damaged; cancel the upload and start again"
                )))
            })
    }

    async fn save_session(&self, id: &str, session: &Session, tail: &[Bytes]) -> StorageResult<()> {
        let header = serde_json::to_vec(session).expect("session serializes");
        let mut head = BytesMut::with_capacity(20 + header.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&session.size.to_le_bytes());
        head.extend_from_slice(&(header.len() as u32).to_le_bytes());
        head.extend_from_slice(&header);
        let payload: PutPayload = std::iter::once(head.freeze())
            .chain(tail.iter().cloned())
            .collect();
        self.store
            .put(&self.path(&format!("uploads/{id}")), payload)
            .await
            .map_err(|e| self.unavailable("saving an upload session", e))?;
        Ok(())
    }

    async fn delete_quietly(&self, path: &ObjPath) -> StorageResult<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.unavailable("deleting an object", e)),
        }
    }

    async fn abort_quietly(&self, id: &str, multipart: &str) -> StorageResult<()> {
        let path = self.path(&format!("data/{id}"));
        match self
            .store
            .abort_multipart(&path, &multipart.to_owned())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.unavailable("aborting a multipart upload", e)),
        }
    }

    /// Remove every trace of session `id` (multipart upload, data object, state).
    async fn discard(&self, id: &str, session: &Session) -> StorageResult<()> {
        if let Some(m) = &session.multipart {
            self.abort_quietly(id, m).await?;
        }
        self.delete_quietly(&self.path(&format!("data/{id}")))
            .await?;
        self.delete_quietly(&self.path(&format!("uploads/{id}")))
            .await
    }

    /// The pointer of a committed blob (from the cache when `cached`).
    async fn pointer(&self, digest: &Digest, cached: bool) -> StorageResult<Option<Pointer>> {
        if cached && let Some(p) = self.pointers.lock().unwrap().get(digest) {
            return Ok(Some(p.clone()));
        }
        let bytes = match self.store.get(&self.blob_path(digest)).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| self.unavailable("reading a blob pointer", e))?,
            Err(object_store::Error::NotFound { .. }) => {
                self.pointers.lock().unwrap().remove(digest);
                return Ok(None);
            }
            Err(e) => return Err(self.unavailable("reading a blob pointer", e)),
        };
        let pointer: Pointer = serde_json::from_slice(&bytes).map_err(|e| {
            StorageError::Io(std::io::Error::other(format!(
                "blob pointer {} is damaged: {e}",
                self.blob_path(digest)
            )))
        })?;
        let mut cache = self.pointers.lock().unwrap();
        if cache.len() >= POINTER_CACHE {
            cache.clear();
        }
        cache.insert(digest.clone(), pointer.clone());
        Ok(Some(pointer))
    }

    /// The bytes of `range` of a committed blob as a stream, with the blob's size: from
    /// the local cache when it holds the blob, else from the bucket (a whole-blob read then
    /// fills the cache on its way to the client).
    ///
    /// A cached copy is served without asking the bucket whether the blob still exists:
    /// the server only reads blobs the metadata links, and a digest names one content.
    async fn read(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> StorageResult<(ByteStream, u64, u64)> {
        let Some(cache) = &self.cache else {
            return self.read_bucket(digest, range).await;
        };
        if let Some(hit) = cache.read(digest, range).await {
            return Ok(hit);
        }
        let (stream, len, total) = self.read_bucket(digest, range).await?;
        if len != total {
            return Ok((stream, len, total));
        }
        Ok((cache.fill(digest, total, stream), len, total))
    }

    /// [`read`](Self::read) from the bucket.
    async fn read_bucket(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> StorageResult<(ByteStream, u64, u64)> {
        self.bucket_reads.fetch_add(1, Ordering::Relaxed);
        let mut cached = true;
        loop {
            let pointer = self
                .pointer(digest, cached)
                .await?
                .ok_or_else(|| StorageError::BlobUnknown(digest.clone()))?;
            let total = pointer.size;
            let (start, end) = match range {
                Some((s, e)) if s > e || e >= total => {
                    return Err(StorageError::SizeInvalid(format!(
                        "range {s}-{e} is outside blob {digest} of {total} bytes"
                    )));
                }
                Some(r) => r,
                None if total == 0 => {
                    return Ok((Box::pin(futures_util::stream::empty()), 0, 0));
                }
                None => (0, total - 1),
            };
            // A long read is split into segments fetched by several GETs at once (see
            // READ_SEGMENT); the first one is requested here, so that a missing object is
            // reported as such before any byte is sent.
            let first_end = if end - start + 1 > 2 * READ_SEGMENT {
                start + READ_SEGMENT - 1
            } else {
                end
            };
            let options = GetOptions {
                range: Some(GetRange::Bounded(start..first_end + 1)),
                ..Default::default()
            };
            let path = self.path(&pointer.object);
            match self.reader.get_opts(&path, options).await {
                Ok(result) => {
                    let name = self.name.clone();
                    let first = result
                        .into_stream()
                        .map_err(move |e| std::io::Error::other(format!("{name}: {e}")));
                    if first_end == end {
                        return Ok((Box::pin(first), end - start + 1, total));
                    }
                    let rest = segments(first_end + 1, end);
                    let (reader, name) = (self.reader.clone(), self.name.clone());
                    let ahead = futures_util::stream::iter(rest)
                        .map(move |(s, e)| {
                            let (reader, path, name) = (reader.clone(), path.clone(), name.clone());
                            async move {
                                let options = GetOptions {
                                    range: Some(GetRange::Bounded(s..e + 1)),
                                    ..Default::default()
                                };
                                let result =
                                    reader.get_opts(&path, options).await.map_err(|e| {
                                        std::io::Error::other(format!(
                                            "{name}: reading a blob: {e}"
                                        ))
                                    })?;
                                let name = name.clone();
                                Ok::<_, std::io::Error>(result.into_stream().map_err(move |e| {
                                    std::io::Error::other(format!("{name}: {e}"))
                                }))
                            }
                        })
                        .buffered(READ_SEGMENTS_AHEAD)
                        .try_flatten();
                    return Ok((Box::pin(first.chain(ahead)), end - start + 1, total));
                }
                // Deleted (and perhaps pushed again) through another replica since cached.
                Err(object_store::Error::NotFound { .. }) if cached => cached = false,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(StorageError::BlobUnknown(digest.clone()));
                }
                Err(e) => return Err(self.unavailable("reading a blob", e)),
            }
        }
    }

    /// Abort and delete upload sessions untouched for `older_than` (their multipart
    /// uploads, data and state). Sessions busy in this process are skipped.
    pub async fn purge_stale_uploads(&self, older_than: Duration) -> StorageResult<usize> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let prefix = self.path("uploads");
        let stale: Vec<String> = self
            .store
            .list(Some(&prefix))
            .try_filter_map(|meta| {
                let old = SystemTime::from(meta.last_modified) < cutoff;
                let id = meta.location.filename().map(str::to_owned);
                async move { Ok(id.filter(|id| old && valid_id(id))) }
            })
            .try_collect()
            .await
            .map_err(|e| self.unavailable("listing upload sessions", e))?;
        let mut removed = 0;
        for id in stale {
            let slot = self.lock_slot(&id);
            let Ok(guard) = slot.try_lock() else {
                continue; // a request of this process is using it
            };
            let outcome = match self.load_session(&id).await {
                Ok((session, _)) => self.discard(&id, &session).await.map(|()| true),
                Err(StorageError::UploadUnknown(_)) => Ok(false),
                Err(e) => Err(e),
            };
            drop(guard);
            self.release_slot(&id, slot);
            if outcome? {
                removed += 1;
            }
        }
        // Multipart uploads no session points to any more (a process killed between
        // starting one and recording it, or a session purged by hand).
        for (id, upload, initiated) in self.multipart_uploads().await? {
            if initiated >= cutoff || self.upload_state(&id).await.is_ok() {
                continue;
            }
            let path = self.path(&format!("data/{id}"));
            match self.store.abort_multipart(&path, &upload).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.unavailable("aborting a multipart upload", e)),
            }
        }
        Ok(removed)
    }

    /// Multipart uploads in progress under `PREFIX/data/`: (upload id of Berth, S3 upload
    /// id, initiation time). ListMultipartUploads, which `object_store` does not offer, is
    /// sent as a GET pre-signed by it.
    async fn multipart_uploads(&self) -> StorageResult<Vec<(String, String, SystemTime)>> {
        let data = format!("{}data/", self.prefix);
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        // At most 100 pages of 1000.
        for _ in 0..100 {
            let mut query = vec![("uploads", String::new()), ("prefix", data.clone())];
            if let Some((key, id)) = &markers {
                query.push(("key-marker", key.clone()));
                query.push(("upload-id-marker", id.clone()));
            }
            let options = object_store::signer::SignedUrlOptions::new().with_query(query);
            let url = self
                .store
                .signed_url_opts(
                    object_store::signer::Method::GET,
                    &ObjPath::default(),
                    Duration::from_secs(60),
                    &options,
                )
                .await
                .map_err(|e| self.unavailable("listing multipart uploads", e))?;
            let failed = |e: String| {
                StorageError::Unavailable(format!(
                    "{} failed listing multipart uploads: {e}",
                    self.name
                ))
            };
            let resp = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = resp.status();
            let body = resp.text().await.map_err(|e| failed(e.to_string()))?;
            if !status.is_success() {
                return Err(failed(format!("HTTP {status}: {body}")));
            }
            for upload in xml_elements(&body, "Upload") {
                let (Some(key), Some(id)) = (xml_text(upload, "Key"), xml_text(upload, "UploadId"))
                else {
                    continue;
                };
                let Some(ours) = key.strip_prefix(&data).filter(|k| valid_id(k)) else {
                    continue;
                };
                let initiated = xml_text(upload, "Initiated")
                    .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                    .map(SystemTime::from)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push((ours.to_owned(), id.to_owned(), initiated));
            }
            if xml_text(&body, "IsTruncated") != Some("true") {
                break;
            }
            match (
                xml_text(&body, "NextKeyMarker"),
                xml_text(&body, "NextUploadIdMarker"),
            ) {
                (Some(k), Some(i)) => markers = Some((k.to_owned(), i.to_owned())),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Digests of every committed blob in the bucket (under this store's prefix), sorted:
    /// what tests compare with what the metadata still references.
    pub async fn blob_digests(&self) -> StorageResult<Vec<String>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.path("blobs")))
            .try_collect()
            .await
            .map_err(|e| self.unavailable("listing blobs", e))?;
        let mut out: Vec<String> = metas
            .iter()
            .filter_map(|m| {
                let mut parts = m.location.parts().collect::<Vec<_>>().into_iter().rev();
                let hex = parts.next()?;
                let algorithm = parts.next()?;
                Some(format!("{}:{}", algorithm.as_ref(), hex.as_ref()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Keys of upload artifacts (sessions and uncommitted data objects) in the bucket:
    /// what the conformance suite's "left nothing behind" check looks at.
    pub async fn upload_artifacts(&self) -> StorageResult<Vec<String>> {
        let pointed: Vec<String> = {
            let blobs: Vec<_> = self
                .store
                .list(Some(&self.path("blobs")))
                .try_collect()
                .await
                .map_err(|e| self.unavailable("listing blobs", e))?;
            let mut out = Vec::new();
            for meta in blobs {
                let bytes = self
                    .store
                    .get(&meta.location)
                    .await
                    .map_err(|e| self.unavailable("reading a blob pointer", e))?
                    .bytes()
                    .await
                    .map_err(|e| self.unavailable("reading a blob pointer", e))?;
                if let Ok(p) = serde_json::from_slice::<Pointer>(&bytes) {
                    out.push(format!("{}{}", self.prefix, p.object));
                }
            }
            out
        };
        let mut left = Vec::new();
        for dir in ["uploads", "data"] {
            let metas: Vec<_> = self
                .store
                .list(Some(&self.path(dir)))
                .try_collect()
                .await
                .map_err(|e| self.unavailable("listing upload artifacts", e))?;
            for meta in metas {
                let key = meta.location.to_string();
                if !pointed.contains(&key) {
                    left.push(key);
                }
            }
        }
        for (id, upload, _) in self.multipart_uploads().await? {
            left.push(format!(
                "multipart upload {upload} of {}data/{id}",
                self.prefix
            ));
        }
        Ok(left)
    }

    /// Append the stream to the session's parts and tail; returns the new state on
    /// success or, on a body error, after saving what was received.
    async fn append_locked(
        &self,
        id: &str,
        offset: Option<u64>,
        mut body: ByteStream,
        limit: u64,
    ) -> StorageResult<UploadState> {
        let (mut session, tail) = self.load_session(id).await?;
        if let Some(given) = offset
            && given != session.size
        {
            return Err(StorageError::OutOfOrder {
                expected: session.size,
                given,
            });
        }
        let mut hasher = session.hasher()?;
        let acked_tail = tail.clone();
        let mut pending: Vec<Bytes> = Vec::new();
        let mut pending_len = tail.len();
        if !tail.is_empty() {
            pending.push(tail);
        }
        let mut received = session.size;
        let data_path = self.path(&format!("data/{id}"));
        let mut inflight = Inflight::default();
        let mut failure = None;

        loop {
            let chunk = match body.next().await {
                None => break,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    failure = Some(StorageError::Body(e.to_string()));
                    break;
                }
            };
            if received + chunk.len() as u64 > limit {
                return Err(StorageError::SizeInvalid(format!(
                    "the upload exceeds the limit of {limit} bytes"
                )));
            }
            if chunk.is_empty() {
                continue;
            }
            hasher_update(&mut hasher, &chunk);
            received += chunk.len() as u64;
            pending_len += chunk.len();
            pending.push(chunk);
            while pending_len >= PART {
                let part = take_bytes(&mut pending, PART);
                pending_len -= PART;
                self.send_part(
                    id,
                    &mut session,
                    &acked_tail,
                    &data_path,
                    part,
                    &mut inflight,
                )
                .await?;
            }
        }
        // Leave a tail under S3's minimum part size, so the state object stays small.
        if pending_len >= MIN_PART {
            let part = take_bytes(&mut pending, pending_len);
            pending_len = 0;
            self.send_part(
                id,
                &mut session,
                &acked_tail,
                &data_path,
                part,
                &mut inflight,
            )
            .await?;
        }
        debug_assert_eq!(pending.iter().map(Bytes::len).sum::<usize>(), pending_len);
        while let Some(task) = inflight.0.pop_front() {
            let part = join_part(task)
                .await
                .map_err(|e| self.unavailable("storing a part", e))?;
            session.parts.push(part.content_id);
        }
        session.size = received;
        session.sha256 = hex::encode(hasher.serialize());
        self.save_session(id, &session, &pending).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(UploadState {
                id: id.to_owned(),
                size: received,
            }),
        }
    }

    /// Start uploading one part (creating the multipart upload on the first), keeping at
    /// most `PARTS_IN_FLIGHT` parts in flight; finished parts move into `session.parts`.
    async fn send_part(
        &self,
        id: &str,
        session: &mut Session,
        acked_tail: &Bytes,
        data_path: &ObjPath,
        part: PutPayload,
        inflight: &mut Inflight,
    ) -> StorageResult<()> {
        let multipart = match &session.multipart {
            Some(m) => m.clone(),
            None => {
                let m = self
                    .store
                    .create_multipart(data_path)
                    .await
                    .map_err(|e| self.unavailable("starting a multipart upload", e))?;
                // Recorded before any part is sent, so cleanup can always find it; the
                // size, hash state and tail stay those of the last acknowledged PATCH.
                session.multipart = Some(m.clone());
                self.save_session(id, session, std::slice::from_ref(acked_tail))
                    .await?;
                m
            }
        };
        let index = session.parts.len() + inflight.0.len();
        if index >= MAX_PARTS {
            return Err(StorageError::SizeInvalid(format!(
                "the upload would need more than {MAX_PARTS} parts in the object store"
            )));
        }
        let store = self.store.clone();
        let path = data_path.clone();
        inflight.0.push_back(tokio::spawn(async move {
            store.put_part(&path, &multipart, index, part).await
        }));
        if inflight.0.len() >= PARTS_IN_FLIGHT {
            let task = inflight.0.pop_front().expect("non-empty");
            let part = join_part(task)
                .await
                .map_err(|e| self.unavailable("storing a part", e))?;
            session.parts.push(part.content_id);
        }
        Ok(())
    }

    async fn finish_locked(&self, id: &str, expected: &Digest) -> StorageResult<u64> {
        let (mut session, tail) = self.load_session(id).await?;
        let size = session.size;
        if expected.algorithm() == Algorithm::Sha256 {
            let actual = Digest::from_bytes(
                Algorithm::Sha256,
                &sha2::Digest::finalize(session.hasher()?),
            );
            if &actual != expected {
                self.discard(id, &session).await?;
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let data_key = format!("data/{id}");
        let data_path = self.path(&data_key);
        match session.multipart.take() {
            Some(m) if !session.parts.is_empty() => {
                let mut parts: Vec<PartId> = session
                    .parts
                    .iter()
                    .map(|e| PartId {
                        content_id: e.clone(),
                    })
                    .collect();
                if !tail.is_empty() {
                    let part = self
                        .store
                        .put_part(&data_path, &m, parts.len(), tail.into())
                        .await
                        .map_err(|e| self.unavailable("storing the last part", e))?;
                    parts.push(part);
                }
                if let Err(e) = self.store.complete_multipart(&data_path, &m, parts).await {
                    // A retried PUT after a completion whose answer was lost.
                    let done =
                        matches!(self.store.head(&data_path).await, Ok(meta) if meta.size == size);
                    if !done {
                        return Err(self.unavailable("completing a multipart upload", e));
                    }
                }
            }
            other => {
                if let Some(m) = other {
                    self.abort_quietly(id, &m).await?;
                }
                self.store
                    .put(&data_path, tail.into())
                    .await
                    .map_err(|e| self.unavailable("storing a blob", e))?;
            }
        }
        if expected.algorithm() != Algorithm::Sha256 {
            let actual = self.hash_object(&data_path, expected.algorithm()).await?;
            if &actual != expected {
                self.discard(id, &session).await?;
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        // Publish: the pointer is written create-only; if the blob is already stored the
        // verified copy is dropped and the stored one kept.
        let pointer = Pointer {
            object: data_key,
            size,
        };
        let exists = self.pointer(expected, false).await?.is_some();
        let published = !exists
            && match self
                .store
                .put_opts(
                    &self.blob_path(expected),
                    Bytes::from(serde_json::to_vec(&pointer).expect("pointer serializes")).into(),
                    PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(_) => true,
                Err(object_store::Error::AlreadyExists { .. }) => false,
                Err(e) => return Err(self.unavailable("publishing a blob", e)),
            };
        if published {
            self.delete_quietly(&self.path(&format!("uploads/{id}")))
                .await?;
        } else {
            self.discard(id, &Session::default()).await?;
        }
        Ok(size)
    }

    async fn hash_object(&self, path: &ObjPath, algorithm: Algorithm) -> StorageResult<Digest> {
        let mut hasher = Hasher::new(algorithm);
        let mut stream = self
            .reader
            .get(path)
            .await
            .map_err(|e| self.unavailable("reading an upload back", e))?
            .into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unavailable("reading an upload back", e))?;
            hasher.update(&chunk);
        }
        Ok(hasher.finish())
    }
}

fn hasher_update(hasher: &mut sha2::Sha256, data: &[u8]) {
    sha2::Digest::update(hasher, data);
}

/// Part uploads of one PATCH still running; aborted if the PATCH fails or is dropped (a
/// client gone mid-request), so no stale part lands after a later PATCH stored its own.
#[derive(Default)]
struct Inflight(std::collections::VecDeque<tokio::task::JoinHandle<object_store::Result<PartId>>>);

impl Drop for Inflight {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn join_part(
    task: tokio::task::JoinHandle<object_store::Result<PartId>>,
) -> object_store::Result<PartId> {
    match task.await {
        Ok(r) => r,
        Err(e) => Err(object_store::Error::JoinError { source: e }),
    }
}

/// Take the first `n` bytes off the front of `pending` (without copying).
fn take_bytes(pending: &mut Vec<Bytes>, n: usize) -> PutPayload {
    let mut out = Vec::new();
    let mut need = n;
    let mut rest = Vec::new();
    for mut b in pending.drain(..) {
        if need == 0 {
            rest.push(b);
        } else if b.len() <= need {
            need -= b.len();
            out.push(b);
        } else {
            out.push(b.split_to(need));
            need = 0;
            rest.push(b);
        }
    }
    *pending = rest;
    out.into_iter().collect()
}

/// The contents of each `<tag>…</tag>` in `xml` (S3 listings: flat, no attributes on the
/// tags read here).
fn xml_elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

/// The text of the first `<tag>` in `xml`.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    xml_elements(xml, tag).into_iter().next()
}

/// Header of a session object and where its tail starts.
fn parse_session(bytes: &[u8]) -> Option<(Session, usize)> {
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(bytes[16..20].try_into().ok()?) as usize;
    let header = bytes.get(20..20 + len)?;
    let session: Session = serde_json::from_slice(header).ok()?;
    let tail = bytes.len() - 20 - len;
    let parts_ok = session.multipart.is_some() || session.parts.is_empty();
    (parts_ok && session.size >= tail as u64).then_some((session, 20 + len))
}

fn valid_id(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn stat(&self, digest: &Digest) -> StorageResult<Option<u64>> {
        Ok(self.pointer(digest, false).await?.map(|p| p.size))
    }

    async fn open(&self, digest: &Digest, range: Option<(u64, u64)>) -> StorageResult<BlobReader> {
        let (stream, len, total) = self.read(digest, range).await?;
        Ok(BlobReader {
            reader: Box::pin(tokio_util::io::StreamReader::new(stream)),
            len,
            total,
        })
    }

    async fn open_chunks(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> StorageResult<BlobChunks> {
        let (chunks, len, total) = self.read(digest, range).await?;
        Ok(BlobChunks { chunks, len, total })
    }

    async fn redirect_url(&self, digest: &Digest) -> StorageResult<Option<String>> {
        let Some(ttl) = self.redirect else {
            return Ok(None);
        };
        let pointer = self
            .pointer(digest, true)
            .await?
            .ok_or_else(|| StorageError::BlobUnknown(digest.clone()))?;
        let url = self
            .store
            .signed_url(
                object_store::signer::Method::GET,
                &self.path(&pointer.object),
                ttl,
            )
            .await
            .map_err(|e| self.unavailable("signing a download URL", e))?;
        Ok(Some(url.to_string()))
    }

    async fn start_upload(&self) -> StorageResult<UploadId> {
        let id = uuid::Uuid::new_v4().to_string();
        self.save_session(&id, &Session::default(), &[]).await?;
        Ok(id)
    }

    async fn upload_state(&self, id: &str) -> StorageResult<UploadState> {
        if !valid_id(id) {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        // The size is in the first 16 bytes: no need to fetch the tail.
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..16)),
            ..Default::default()
        };
        let path = self.path(&format!("uploads/{id}"));
        let head = match self.store.get_opts(&path, options).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| self.unavailable("reading an upload session", e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StorageError::UploadUnknown(id.to_owned()));
            }
            Err(e) => return Err(self.unavailable("reading an upload session", e)),
        };
        if head.len() < 16 || &head[..8] != MAGIC {
            return Err(StorageError::Io(std::io::Error::other(format!(
                "upload session object {path} is damaged; cancel the upload and start again"
            ))));
        }
        let size = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        Ok(UploadState {
            id: id.to_owned(),
            size,
        })
    }

    async fn append(
        &self,
        id: &str,
        offset: Option<u64>,
        body: ByteStream,
        limit: u64,
    ) -> StorageResult<UploadState> {
        self.with_session(id, async || {
            self.append_locked(id, offset, body, limit).await
        })
        .await
    }

    async fn finish_upload(&self, id: &str, expected: &Digest) -> StorageResult<u64> {
        let size = self
            .with_session(id, async || self.finish_locked(id, expected).await)
            .await?;
        Ok(size)
    }

    async fn cancel_upload(&self, id: &str) -> StorageResult<()> {
        self.with_session(id, async || {
            let (session, _) = self.load_session(id).await?;
            self.discard(id, &session).await
        })
        .await
    }

    async fn delete(&self, digest: &Digest) -> StorageResult<()> {
        let pointer = self
            .pointer(digest, false)
            .await?
            .ok_or_else(|| StorageError::BlobUnknown(digest.clone()))?;
        self.delete_quietly(&self.blob_path(digest)).await?;
        self.pointers.lock().unwrap().remove(digest);
        if let Some(cache) = &self.cache {
            cache.remove(digest);
        }
        self.delete_quietly(&self.path(&pointer.object)).await
    }

    async fn purge_stale_uploads(&self, older_than: Duration) -> StorageResult<usize> {
        S3BlobStore::purge_stale_uploads(self, older_than).await
    }
}

#[cfg(test)]
#[path = "../../../tests/common/garage.rs"]
mod garage;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::garage::{self, Garage};
    use super::*;
    use crate::conformance;

    fn config(g: &Garage, prefix: &str) -> S3Config {
        S3Config {
            endpoint: Some(g.endpoint()),
            region: garage::REGION.to_owned(),
            bucket: garage::BUCKET.to_owned(),
            prefix: prefix.to_owned(),
            access_key_id: Some(garage::ACCESS_KEY.to_owned()),
            secret_access_key: Some(garage::SECRET_KEY.to_owned()),
            ..S3Config::default()
        }
    }

    /// A store on the shared Garage under a prefix of its own (tests run in parallel).
    async fn store(prefix: &str) -> S3BlobStore {
        let store = S3BlobStore::connect(&config(Garage::shared(), prefix)).unwrap();
        wait_ready(&store).await;
        store
    }

    /// Garage creates its default key and bucket just after it starts listening.
    async fn wait_ready(store: &S3BlobStore) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match store.check().await {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("Garage not ready: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn body(chunks: Vec<Vec<u8>>) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from(c))),
        ))
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9) >> 11) as u8 ^ seed)
            .collect()
    }

    async fn read_all(store: &S3BlobStore, digest: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
        let mut chunks = store.open_chunks(digest, range).await.unwrap().chunks;
        let mut out = Vec::new();
        while let Some(c) = chunks.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite() {
        let store = store("conformance").await;
        let handle = tokio::runtime::Handle::current();
        let leftovers = || {
            tokio::task::block_in_place(|| handle.block_on(store.upload_artifacts()))
                .expect("list upload artifacts")
        };
        conformance::blob_store_suite(&store, &leftovers).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn odd_chunks_alternate_between_replicas() {
        // Two store instances on one bucket stand for two replicas: each PATCH goes to the
        // other one, with sizes around the 5 MiB part minimum and the 8 MiB part size.
        let a = store("replicas").await;
        let b = store("replicas").await;
        let all = data(23 * 1024 * 1024 + 12_345, 7);
        let digest = Digest::sha256(&all);
        let id = a.start_upload().await.unwrap();
        let mut offset = 0usize;
        let sizes = [1, MIN_PART - 2, MIN_PART + 1, 3, PART + 17, 0, 1_000_001];
        for (i, len) in sizes.into_iter().enumerate() {
            let replica = if i % 2 == 0 { &a } else { &b };
            let part = all[offset..offset + len].to_vec();
            let pieces: Vec<Vec<u8>> = part.chunks(65_537).map(<[u8]>::to_vec).collect();
            let state = replica
                .append(&id, Some(offset as u64), body(pieces), u64::MAX)
                .await
                .unwrap();
            offset += len;
            assert_eq!(state.size, offset as u64);
            let other = if i % 2 == 0 { &b } else { &a };
            assert_eq!(other.upload_state(&id).await.unwrap().size, offset as u64);
        }
        let rest = all[offset..].to_vec();
        b.append(&id, Some(offset as u64), body(vec![rest]), u64::MAX)
            .await
            .unwrap();
        assert_eq!(
            a.finish_upload(&id, &digest).await.unwrap(),
            all.len() as u64
        );
        assert_eq!(b.stat(&digest).await.unwrap(), Some(all.len() as u64));
        assert!(read_all(&b, &digest, None).await == all, "bytes differ");
        let (s, e) = (PART as u64 - 3, 2 * PART as u64 + 5);
        assert!(read_all(&a, &digest, Some((s, e))).await == all[s as usize..=e as usize]);
        assert!(a.upload_artifacts().await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_patch_resumes_at_last_acknowledged_offset() {
        let a = store("killed").await;
        let all = data(30 * 1024 * 1024, 9);
        let digest = Digest::sha256(&all);
        let id = a.start_upload().await.unwrap();
        let first = 6 * 1024 * 1024 + 3;
        a.append(&id, Some(0), body(vec![all[..first].to_vec()]), u64::MAX)
            .await
            .unwrap();
        // A PATCH that delivers 20 MiB and then hangs, "killed" with its task: no code of
        // the store runs after that, as when the process dies.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sent = all[first..first + 20 * 1024 * 1024].to_vec();
        let hanging: ByteStream = Box::pin(
            futures_util::stream::iter(
                sent.chunks(1 << 20)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect::<Vec<_>>(),
            )
            .chain(futures_util::stream::once(async move {
                let _ = tx.send(());
                std::future::pending::<Result<Bytes, std::io::Error>>().await
            })),
        );
        let a = Arc::new(a);
        let task = {
            let a = a.clone();
            let id = id.clone();
            tokio::spawn(async move { a.append(&id, Some(first as u64), hanging, u64::MAX).await })
        };
        rx.await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await; // parts reach the bucket
        task.abort();
        // Another replica sees the last acknowledged offset and finishes the upload.
        let b = store("killed").await;
        assert_eq!(b.upload_state(&id).await.unwrap().size, first as u64);
        b.append(
            &id,
            Some(first as u64),
            body(vec![all[first..].to_vec()]),
            u64::MAX,
        )
        .await
        .unwrap();
        assert_eq!(
            b.finish_upload(&id, &digest).await.unwrap(),
            all.len() as u64
        );
        assert!(read_all(&a, &digest, None).await == all, "bytes differ");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mismatching_upload_never_shadows_the_blob() {
        let store = store("shadow").await;
        let real = data(PART + 1000, 1);
        let digest = Digest::sha256(&real);
        let id = store.start_upload().await.unwrap();
        store
            .append(&id, None, body(vec![real.clone()]), u64::MAX)
            .await
            .unwrap();
        store.finish_upload(&id, &digest).await.unwrap();
        // Other bytes (multipart, then small) claiming that digest are refused.
        for fake in [data(PART * 2, 2), b"tiny".to_vec()] {
            let id = store.start_upload().await.unwrap();
            store
                .append(&id, None, body(vec![fake]), u64::MAX)
                .await
                .unwrap();
            let e = store.finish_upload(&id, &digest).await.unwrap_err();
            assert!(matches!(e, StorageError::DigestMismatch { .. }), "{e:?}");
        }
        let fresh = S3BlobStore::connect(&config(Garage::shared(), "shadow")).unwrap();
        assert!(
            read_all(&fresh, &digest, None).await == real,
            "blob changed"
        );
        // An unverified upload is never visible under any name.
        let other = data(PART + 5, 3);
        let id = store.start_upload().await.unwrap();
        store
            .append(&id, None, body(vec![other.clone()]), u64::MAX)
            .await
            .unwrap();
        assert_eq!(store.stat(&Digest::sha256(&other)).await.unwrap(), None);
        store.cancel_upload(&id).await.unwrap();
        assert!(store.upload_artifacts().await.unwrap().is_empty());
    }

    /// A store on the shared Garage with a local blob cache in `dir`.
    async fn cached_store(prefix: &str, dir: &std::path::Path, max: u64) -> S3BlobStore {
        let mut cfg = config(Garage::shared(), prefix);
        cfg.cache_dir = Some(dir.to_owned());
        cfg.cache_max_bytes = max;
        let store = S3BlobStore::connect(&cfg).unwrap();
        wait_ready(&store).await;
        store
    }

    async fn push(store: &S3BlobStore, blob: &[u8]) -> Digest {
        let digest = Digest::sha256(blob);
        let id = store.start_upload().await.unwrap();
        store
            .append(&id, None, body(vec![blob.to_vec()]), u64::MAX)
            .await
            .unwrap();
        store.finish_upload(&id, &digest).await.unwrap();
        digest
    }

    /// The fill is written by a thread of its own after the last byte reached the client.
    async fn wait_cached(store: &S3BlobStore, digest: &Digest) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !store.cache().unwrap().contains(digest) {
            assert!(Instant::now() < deadline, "{digest} was never cached");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every chunk of a read, or the first error.
    async fn try_read_all(store: &S3BlobStore, digest: &Digest) -> std::io::Result<Vec<u8>> {
        let mut chunks = store.open_chunks(digest, None).await.unwrap().chunks;
        let mut out = Vec::new();
        while let Some(c) = chunks.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    fn cache_files(dir: &std::path::Path) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// A whole read fills the cache; the next whole and ranged reads send no GET to the
    /// bucket and are exact; a truncated file is discarded and refetched; a file corrupted
    /// while the replica was stopped is not served whole; deleting drops the cached copy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cache_serves_repeated_reads_without_the_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let store = cached_store("cache-hit", dir.path(), 256 << 20).await;
        let seg = READ_SEGMENT as usize;
        let real = data(2 * seg + 777_777, 11);
        let digest = push(&store, &real).await;
        // A range before the blob is cached comes from the bucket and fills nothing.
        let (s, e) = (seg as u64 - 5, seg as u64 + 99);
        assert!(read_all(&store, &digest, Some((s, e))).await == real[s as usize..=e as usize]);
        assert!(!store.cache().unwrap().contains(&digest));
        assert!(read_all(&store, &digest, None).await == real, "cold read");
        wait_cached(&store, &digest).await;
        let gets = store.bucket_reads();
        assert!(read_all(&store, &digest, None).await == real, "cached read");
        for (s, e) in [(0, 0), (s, e), (3, real.len() as u64 - 1)] {
            let got = read_all(&store, &digest, Some((s, e))).await;
            assert!(got == real[s as usize..=e as usize], "cached range {s}-{e}");
        }
        assert_eq!(
            store.bucket_reads(),
            gets,
            "a cached read went to the bucket"
        );
        let name = format!("sha256-{}-{}", digest.hex(), real.len());
        assert_eq!(cache_files(dir.path()), [(name.clone(), real.len() as u64)]);

        // Truncated under the running replica: discarded, served from the bucket, refilled.
        let file = dir.path().join(&name);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(1000)
            .unwrap();
        assert!(
            read_all(&store, &digest, None).await == real,
            "after truncation"
        );
        assert_eq!(store.bucket_reads(), gets + 1);
        wait_cached(&store, &digest).await;
        assert_eq!(std::fs::metadata(&file).unwrap().len(), real.len() as u64);

        // Corrupted (same length) while stopped, plus a fill cut short: a restarted replica
        // removes the temporary file and refuses to finish serving the corrupt copy.
        drop(store);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[seg + 3] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        std::fs::write(dir.path().join("tmp/stale"), b"half a blob").unwrap();
        let store = cached_store("cache-hit", dir.path(), 256 << 20).await;
        assert!(
            std::fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        let err = try_read_all(&store, &digest).await.unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
        assert!(!file.exists(), "the corrupt file was kept");
        assert!(
            read_all(&store, &digest, None).await == real,
            "after corruption"
        );
        wait_cached(&store, &digest).await;
        // The refilled copy serves the whole blob and ranges without the bucket.
        let gets = store.bucket_reads();
        assert!(read_all(&store, &digest, None).await == real);
        assert!(read_all(&store, &digest, Some((s, e))).await == real[s as usize..=e as usize]);
        assert_eq!(store.bucket_reads(), gets);

        // Two concurrent cold reads of another blob: both exact, one file.
        let other = data(3 * 1024 * 1024 + 5, 12);
        let other_digest = push(&store, &other).await;
        let (a, b) = tokio::join!(
            read_all(&store, &other_digest, None),
            read_all(&store, &other_digest, None)
        );
        assert!(a == other && b == other);
        wait_cached(&store, &other_digest).await;

        store.delete(&digest).await.unwrap();
        assert!(!file.exists(), "a deleted blob stayed in the cache");
        assert!(matches!(
            store.open(&digest, None).await.map(|r| r.len),
            Err(StorageError::BlobUnknown(_))
        ));
        assert_eq!(cache_files(dir.path()).len(), 1);
    }

    /// Least recently used blobs leave so that the files never exceed `cache_max_bytes`;
    /// a blob larger than the whole cache is served but not kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cache_evicts_least_recently_used_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let max = 3 * 1024 * 1024 + 100;
        let store = cached_store("cache-evict", dir.path(), max).await;
        let blobs: Vec<Vec<u8>> = (0..4).map(|i| data(1024 * 1024, 20 + i)).collect();
        let mut digests = Vec::new();
        for blob in &blobs {
            digests.push(push(&store, blob).await);
        }
        for (digest, blob) in digests.iter().zip(&blobs).take(3) {
            assert!(read_all(&store, digest, None).await == *blob);
            wait_cached(&store, digest).await;
        }
        // Use the first again: the second is now the least recently used.
        assert!(read_all(&store, &digests[0], None).await == blobs[0]);
        assert!(read_all(&store, &digests[3], None).await == blobs[3]);
        wait_cached(&store, &digests[3]).await;
        let cache = store.cache().unwrap();
        assert!(!cache.contains(&digests[1]), "the LRU blob was kept");
        for i in [0, 2, 3] {
            assert!(cache.contains(&digests[i]), "blob {i} was evicted");
        }
        let on_disk: u64 = cache_files(dir.path()).iter().map(|(_, n)| n).sum();
        assert!(
            on_disk <= max && cache.used_bytes() <= max,
            "{on_disk} > {max}"
        );
        let big = data(max as usize + 1, 30);
        let big_digest = push(&store, &big).await;
        assert!(read_all(&store, &big_digest, None).await == big);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!cache.contains(&big_digest));
        let on_disk: u64 = cache_files(dir.path()).iter().map(|(_, n)| n).sum();
        assert!(on_disk <= max, "{on_disk} > {max}");
        // A restart with a smaller bound evicts down to it, oldest first.
        drop(store);
        let store = cached_store("cache-evict", dir.path(), 2 * 1024 * 1024).await;
        assert_eq!(cache_files(dir.path()).len(), 2);
        assert!(store.cache().unwrap().used_bytes() <= 2 * 1024 * 1024);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite_with_cache() {
        let dir = tempfile::tempdir().unwrap();
        let store = cached_store("conformance-cache", dir.path(), 64 << 20).await;
        let handle = tokio::runtime::Handle::current();
        let leftovers = || {
            tokio::task::block_in_place(|| handle.block_on(store.upload_artifacts()))
                .expect("list upload artifacts")
        };
        conformance::blob_store_suite(&store, &leftovers).await;
    }

    #[test]
    fn segments_cover_the_range_exactly() {
        let seg = READ_SEGMENT;
        assert_eq!(segments(0, seg - 1), [(0, seg - 1)]);
        assert_eq!(
            segments(5, 2 * seg + 7),
            [
                (5, seg + 4),
                (seg + 5, 2 * seg + 4),
                (2 * seg + 5, 2 * seg + 7)
            ]
        );
        assert_eq!(segments(9, 9), [(9, 9)]);
    }

    /// A read longer than two segments comes from several ranged GETs at once and is
    /// byte-for-byte the blob, whole or from any range.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_reads_are_segmented_and_exact() {
        let store = store("segments").await;
        let seg = READ_SEGMENT as usize;
        let real = data(3 * seg + 12_345, 9);
        let digest = Digest::sha256(&real);
        let id = store.start_upload().await.unwrap();
        store
            .append(&id, None, body(vec![real.clone()]), u64::MAX)
            .await
            .unwrap();
        store.finish_upload(&id, &digest).await.unwrap();
        assert!(read_all(&store, &digest, None).await == real, "whole blob");
        for (s, e) in [
            (1, real.len() as u64 - 2),
            (seg as u64 - 1, 3 * seg as u64 + 1),
            (7, 2 * seg as u64 + 6),
            (2 * seg as u64 + 1, 2 * seg as u64 + 9),
        ] {
            let got = read_all(&store, &digest, Some((s, e))).await;
            assert!(got == real[s as usize..=e as usize], "range {s}-{e}");
        }
        let mut reader = store.open(&digest, None).await.unwrap();
        assert_eq!(
            (reader.len, reader.total),
            (real.len() as u64, real.len() as u64)
        );
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader.reader, &mut all)
            .await
            .unwrap();
        assert!(all == real);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redirect_urls_serve_ranges_and_expire_into_nothing_else() {
        let mut cfg = config(Garage::shared(), "redirect");
        cfg.redirect = true;
        cfg.presign_ttl_secs = 60;
        let store = S3BlobStore::connect(&cfg).unwrap();
        wait_ready(&store).await;
        let blob = data(300_000, 4);
        let digest = Digest::sha256(&blob);
        let id = store.start_upload().await.unwrap();
        store
            .append(&id, None, body(vec![blob.clone()]), u64::MAX)
            .await
            .unwrap();
        store.finish_upload(&id, &digest).await.unwrap();
        let url = store.redirect_url(&digest).await.unwrap().expect("a URL");
        assert!(url.contains("X-Amz-Signature"), "{url}");
        let client = reqwest::Client::new();
        let whole = client.get(&url).send().await.unwrap();
        assert_eq!(whole.status(), 200);
        assert!(whole.bytes().await.unwrap() == blob);
        let part = client
            .get(&url)
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(&part.bytes().await.unwrap()[..], &blob[10..20]);
        // A tampered URL is refused by the bucket.
        let forged = url.replace("X-Amz-Expires=60", "X-Amz-Expires=6000");
        assert_eq!(client.get(&forged).send().await.unwrap().status(), 403);
        let absent = Digest::sha256(b"absent");
        assert!(matches!(
            store.redirect_url(&absent).await,
            Err(StorageError::BlobUnknown(_))
        ));
        // Without `redirect`, no URL.
        let plain = S3BlobStore::connect(&config(Garage::shared(), "redirect")).unwrap();
        assert_eq!(plain.redirect_url(&digest).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purge_aborts_stale_multipart_uploads() {
        let store = store("purge").await;
        let id = store.start_upload().await.unwrap();
        store
            .append(&id, None, body(vec![data(PART + 10, 5)]), u64::MAX)
            .await
            .unwrap();
        let listed = store.multipart_uploads().await.unwrap();
        assert!(listed.iter().any(|(i, _, _)| *i == id), "{listed:?}");
        // A multipart upload no session records (a process killed right after starting it).
        let orphan = uuid::Uuid::new_v4().to_string();
        let orphan_path = store.path(&format!("data/{orphan}"));
        store.store.create_multipart(&orphan_path).await.unwrap();
        let recent = store.start_upload().await.unwrap();
        assert_eq!(
            store
                .purge_stale_uploads(Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        store
            .append(&recent, None, body(vec![b"x".to_vec()]), u64::MAX)
            .await
            .unwrap();
        assert_eq!(
            store
                .purge_stale_uploads(Duration::from_secs(1))
                .await
                .unwrap(),
            1
        );
        assert!(matches!(
            store.upload_state(&id).await,
            Err(StorageError::UploadUnknown(_))
        ));
        assert_eq!(store.upload_state(&recent).await.unwrap().size, 1);
        let listed = store.multipart_uploads().await.unwrap();
        assert!(listed.is_empty(), "{listed:?}");
        store.cancel_upload(&recent).await.unwrap();
        assert!(store.upload_artifacts().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn unreachable_bucket_fails_fast_naming_the_object_store() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = S3Config {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            bucket: "gone".to_owned(),
            access_key_id: Some(garage::ACCESS_KEY.to_owned()),
            secret_access_key: Some(garage::SECRET_KEY.to_owned()),
            ..S3Config::default()
        };
        let store = S3BlobStore::connect(&cfg).unwrap();
        let started = Instant::now();
        let e = store.stat(&Digest::sha256(b"x")).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(e, StorageError::Unavailable(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("object store") && msg.contains(&format!("{port}")),
            "{msg}"
        );
        // Plain HTTP off loopback needs allow_http; a bucket is required.
        cfg.endpoint = Some("http://s3.example.com".to_owned());
        let e = S3BlobStore::connect(&cfg).unwrap_err().to_string();
        assert!(e.contains("allow_http"), "{e}");
        cfg.allow_http = true;
        S3BlobStore::connect(&cfg).unwrap();
        cfg.bucket.clear();
        let e = S3BlobStore::connect(&cfg).unwrap_err().to_string();
        assert!(e.contains("bucket"), "{e}");
    }
}
