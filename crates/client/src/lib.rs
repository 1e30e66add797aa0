//! `berth-client`: the registry client library behind `berth login/pull/push/copy/...` and
//! the node-side fetcher (`crates/fetch`).
//!
//! # API for the fetcher
//!
//! ```text
//! use berth_client::{ClientOptions, RegistryClient, ImageRef, Platform, TrustOptions, Keyring};
//!
//! // Trust and credentials, as the seed configures them:
//! let mut trust = TrustOptions::default();                 // system roots, /etc/docker/certs.d, /etc/containerd/certs.d
//! trust.add_ca_bundle_file(path)?;                         // --ca-bundle FILE (many PEM certs)
//! trust.add_ca_configmap_file(path)?;                      // --ca-configmap FILE (image-fetcher-ca-bundle)
//! trust.add_insecure("10.0.0.0/8")?;                       // --insecure-registry HOST[:PORT]|CIDR
//! trust.load_daemon_json(path)?;                           // Docker daemon.json insecure-registries
//! let mut keyring = Keyring::new()
//!     .with_docker_config(DockerConfig::load_dir(&default_config_dir())?);
//! keyring.add_pull_secret_file(path)?;                     // --pull-secret FILE (repeatable)
//! let client = RegistryClient::new(ClientOptions { trust, keyring, ..Default::default() });
//!
//! // pub async fn RegistryClient::resolve(&self, image: &ImageRef, platform: &Platform) -> Result<Resolved>
//! //   Resolved { index: Option<FetchedManifest>, manifest: FetchedManifest, config: Descriptor, layers: Vec<Descriptor> }
//! let image: ImageRef = "harbor.local:8443/library/nginx:latest".parse()?;
//! let r = client.resolve(&image, &Platform::current()).await?;
//!
//! // pub async fn RegistryClient::fetch_blob_bytes(&self, image: &ImageRef, desc: &Descriptor, limit: u64) -> Result<Bytes>
//! let config = client.fetch_blob_bytes(&image, &r.config, 16 << 20).await?;
//!
//! // pub async fn RegistryClient::fetch_blob_to_file(&self, image: &ImageRef, desc: &Descriptor, dest: &Path) -> Result<()>
//! //   Streams to `dest`; if `dest` holds a prefix (interrupted download) resumes with Range;
//! //   retries interrupted transfers (ClientOptions::attempts); verifies size + digest and on
//! //   mismatch deletes `dest` and returns ClientError::Integrity.
//! client.fetch_blob_to_file(&image, &r.layers[0], &tmp_path).await?;
//!
//! // pub async fn RegistryClient::blob_stream(&self, image: &ImageRef, desc: &Descriptor) -> Result<ByteStream>
//! //   ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>; the stream yields an
//! //   io::Error(InvalidData) at its end if size or digest differ.
//! ```
//!
//! Errors ([`ClientError`]) carry messages a person can act on: an untrusted certificate names
//! the registry, the certificate's subject and issuer and the `--ca-bundle` / `certs.d` /
//! ConfigMap fix; a name mismatch lists the certificate's names; 401/403 say whether
//! credentials were missing, rejected or lacked the scope and which secret was tried.
//!
//! Modules: [`reference`] (Docker reference parsing), [`trust`] (CA sources, insecure
//! registries, per-endpoint clients), [`creds`] (config.json, helpers, keyring),
//! [`kube`] (ConfigMap, pull secrets, kubelet credential provider), [`auth`]
//! (`WWW-Authenticate`), [`registry`] (the client), [`layout`] (OCI layout, docker-archive),
//! [`copy`] (copy between any two locations).

pub mod auth;
pub mod copy;
pub mod creds;
pub mod error;
pub mod image;
pub mod kube;
pub mod layout;
pub mod reference;
pub mod registry;
pub mod trust;

pub use copy::{CopyReport, Location, Platforms, copy};
pub use creds::{Credential, DockerConfig, Keyring, default_config_dir};
pub use error::{ClientError, Result};
pub use image::{Descriptor, FetchedManifest, Platform};
pub use layout::OciLayout;
pub use reference::ImageRef;
pub use registry::{
    BlobDownload, BlobPush, ByteStream, ClientOptions, DownloadObserver, Durability,
    RegistryClient, Resolved,
};
pub use trust::TrustOptions;
