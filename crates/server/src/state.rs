//! Shared state handed to every handler.

use std::sync::Arc;

use berth_storage::{BlobStore, MetadataStore};

use crate::auth::Auth;
use crate::config::Limits;

#[derive(Clone)]
pub struct AppState {
    pub blobs: Arc<dyn BlobStore>,
    pub meta: Arc<dyn MetadataStore>,
    pub auth: Arc<Auth>,
    pub limits: Limits,
    /// Create a missing project on first push instead of refusing it.
    pub auto_create_projects: bool,
}
