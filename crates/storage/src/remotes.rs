//! [`RemoteStore`]: the registries Berth talks to (proxy-cache upstreams, replication
//! sources and destinations), their last health check, and which projects are proxy
//! caches of which registry.
//!
//! Secrets arrive sealed by the server (AES-256-GCM with a key the store never sees);
//! the store keeps the sealed bytes as they are.

use async_trait::async_trait;

use crate::StorageResult;

/// A registry Berth talks to.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteRegistry {
    /// `[a-z0-9][a-z0-9._-]{0,63}`, unique.
    pub name: String,
    /// `https://host[:port]` (or `http://host:port` when `insecure`).
    pub url: String,
    /// Empty: anonymous.
    pub username: String,
    /// The password or token, sealed by the server; empty when there is none.
    pub secret_sealed: Vec<u8>,
    /// Extra CA certificates (PEM) to trust for this registry; empty: system roots only.
    pub ca_pem: String,
    /// Accept any certificate, and plain HTTP.
    pub insecure: bool,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for RemoteRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRegistry")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("username", &self.username)
            .field("has_secret", &!self.secret_sealed.is_empty())
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// The outcome of the last connection check of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHealth {
    pub name: String,
    pub checked_at: i64,
    pub ok: bool,
    /// What the check saw (e.g. the TLS or login failure), or "reachable".
    pub message: String,
}

#[async_trait]
pub trait RemoteStore: Send + Sync + 'static {
    /// `AlreadyExists` if the name is taken.
    async fn create_registry(&self, r: &RemoteRegistry) -> StorageResult<()>;
    async fn registry(&self, name: &str) -> StorageResult<Option<RemoteRegistry>>;
    /// Every registry, by name.
    async fn list_registries(&self) -> StorageResult<Vec<RemoteRegistry>>;
    /// Replace every field but `name` and `created_at`; `NotFound` if missing.
    async fn update_registry(&self, r: &RemoteRegistry) -> StorageResult<()>;
    /// `NotFound` if missing; `Conflict` while a proxy project (or anything else) uses it.
    async fn delete_registry(&self, name: &str) -> StorageResult<()>;
    async fn set_registry_health(&self, h: &RegistryHealth) -> StorageResult<()>;
    async fn registry_health(&self, name: &str) -> StorageResult<Option<RegistryHealth>>;
    /// Make `project` a proxy cache of `registry` (`None`: an ordinary project again).
    /// `NotFound` when the project or the registry does not exist.
    async fn set_project_proxy(&self, project: &str, registry: Option<&str>) -> StorageResult<()>;
    /// The registry `project` is a proxy cache of, if it is one.
    async fn project_proxy(&self, project: &str) -> StorageResult<Option<String>>;
    /// Every proxy-cache project as `(project, registry)`, by project.
    async fn proxy_projects(&self) -> StorageResult<Vec<(String, String)>>;
}
