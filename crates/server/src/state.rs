//! Shared state handed to every handler.

use std::sync::Arc;

use berth_storage::{BlobStore, MetadataStore};

use crate::config::Limits;

#[derive(Clone)]
pub struct AppState {
    pub blobs: Arc<dyn BlobStore>,
    pub meta: Arc<dyn MetadataStore>,
    pub limits: Limits,
}
