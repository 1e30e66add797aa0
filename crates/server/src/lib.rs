//! The Berth registry server: an OCI Distribution v1.1 HTTP API over HTTPS.
//!
//! Layering (each module only calls the ones below it):
//! - [`serve`]: start-up (storage, TLS material), then [`conn`]: the accept loop,
//!   TLS, connection limits and timeouts, graceful shutdown; [`limits`]: refusal
//!   logging and disk space.
//! - [`routes`]: the router — one wildcard route under `/v2/` parsed by
//!   [`berth_proto::route`], dispatched by method to a handler.
//! - handlers ([`blobs`], [`uploads`], [`manifests`], [`listing`]): parse the request,
//!   call storage, build the response; errors are [`error::ApiError`] and `?`.
//! - [`api`]: the JSON admin API under `/api/v1/` over [`admin`], the management
//!   operations shared with the CLI.
//! - [`console`]: the web console (server-rendered HTML at `/`) over the same [`admin`]
//!   operations and [`auth`] checks, with its own sessions and CSRF tokens.
//! - [`gc`]: storage lifecycle — online incremental GC, quotas, retention, immutable
//!   tags — over [`berth_storage::LifecycleStore`] and [`berth_storage::BlobStore`].
//! - [`auth`]: who the caller is and whether they may; [`token`] issues Docker tokens.
//! - [`webhooks`]: events published by the handlers, delivered to each project's
//!   webhook endpoints in the background (bounded queues, retries, a delivery log).
//! - [`ops`]: `/readyz`, `/metrics` and the request-counting middleware.
//! - storage: [`berth_storage::BlobStore`] and [`berth_storage::MetadataStore`] in
//!   [`state::AppState`].
//!
//! [`app`] builds the router from a state so tests can drive it in-process.

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod console;
pub mod error;
pub mod gc;
pub mod limits;
pub mod memory;
pub mod ops;
pub mod proxy;
pub mod remotes;
pub mod replication;
pub mod routes;
pub mod serve;
pub mod state;
pub mod webhooks;

mod blobs;
mod body;
mod listing;
mod manifests;
mod token;
mod uploads;

pub use config::ServerConfig;
pub use routes::app;
pub use state::AppState;
