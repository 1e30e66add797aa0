//! Shared state handed to every handler.

use std::path::PathBuf;
use std::sync::Arc;

use berth_storage::{BlobStore, MetadataStore};

use crate::auth::Auth;
use crate::config::Limits;
use crate::limits::{DiskSpace, Refusals};

#[derive(Clone)]
pub struct AppState {
    pub blobs: Arc<dyn BlobStore>,
    pub meta: Arc<dyn MetadataStore>,
    pub auth: Arc<Auth>,
    pub limits: Limits,
    /// Create a missing project on first push instead of refusing it.
    pub auto_create_projects: bool,
    /// Where the served certificate came from (for the console's certificate page).
    pub tls: TlsInfo,
    /// Readiness checks and metrics hooks (`/readyz`, `/metrics`).
    pub ops: crate::ops::Ops,
    /// Garbage collection, quotas, retention, immutable tags, pull times.
    pub lifecycle: Arc<crate::gc::Lifecycle>,
    /// Refusals of bounds, counted and logged at most once a minute per client.
    pub refusals: Arc<Refusals>,
    /// Free space and reserve of the data directory's filesystem.
    pub space: DiskSpace,
    /// Replication rules and their executions.
    pub replication: Arc<crate::replication::Replication>,
    /// Webhook endpoints per project: events published by the handlers, delivered in the background.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// Proxy-cache projects: upstream lookups, pending manifests, blob fetches in flight.
    pub proxy: Arc<crate::proxy::Proxy>,
    /// Remote registries (proxy-cache upstreams, replication peers) and their clients.
    pub remotes: Arc<crate::remotes::Remotes>,
}

/// Where the certificate this server presents came from.
#[derive(Debug, Clone, Default)]
pub enum TlsInfo {
    /// Berth made a CA and signed its own certificate: clients trust this `ca.crt`.
    OwnCa { ca_crt: PathBuf },
    /// The operator gave `--tls-cert`: the issuing CA is not known to Berth.
    Operator { cert: PathBuf },
    /// Plain HTTP behind a TLS-terminating proxy (or a test without TLS).
    #[default]
    PlainHttp,
}
