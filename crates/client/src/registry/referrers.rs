//! The OCI referrers API (`GET /v2/<name>/referrers/<digest>`), with the tag-schema
//! fallback (`<alg>-<hex>` tags holding an index) for registries without it.

use berth_proto::{Digest, Reference};
use reqwest::StatusCode;
use reqwest::header::ACCEPT;

use super::{MAX_MANIFEST, RegistryClient, read_limited, unexpected};
use crate::error::{ClientError, Result};
use crate::image::{Descriptor, FetchedManifest, parse_shape};
use crate::reference::ImageRef;
use berth_proto::media_types::OCI_INDEX;

/// The fallback tag of a subject digest (`sha256:ab…` → `sha256-ab…`).
pub fn fallback_tag(subject: &Digest) -> String {
    subject.to_string().replace(':', "-")
}

impl RegistryClient {
    /// The referrers of `subject` through the referrers API: `Ok(None)` when the registry
    /// does not offer the API (404 on the endpoint), otherwise the descriptors it lists.
    pub async fn referrers_api(
        &self,
        image: &ImageRef,
        subject: &Digest,
    ) -> Result<Option<Vec<Descriptor>>> {
        let t = self.pull_target(image);
        let path = format!("/v2/{}/referrers/{subject}", image.repository);
        let (resp, _) = self
            .send(&t, &|c, base| {
                c.get(format!("{base}{path}")).header(ACCEPT, OCI_INDEX)
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            s if s.is_success() => {}
            _ => {
                return Err(unexpected(resp, &format!("listing the referrers of {subject}")).await);
            }
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !ct.starts_with(OCI_INDEX) {
            // Not a referrers response (e.g. a catch-all page): no API.
            return Ok(None);
        }
        let body = read_limited(resp, MAX_MANIFEST, "referrers index").await?;
        Ok(Some(parse_shape(&body)?.manifests))
    }

    /// The referrers of `subject`: the referrers API, else the fallback tag's index (no
    /// tag: none).
    pub async fn referrers(&self, image: &ImageRef, subject: &Digest) -> Result<Vec<Descriptor>> {
        if let Some(list) = self.referrers_api(image, subject).await? {
            return Ok(list);
        }
        Ok(self
            .fallback_index(image, subject)
            .await?
            .map(|m| m.shape().map(|s| s.manifests))
            .transpose()?
            .unwrap_or_default())
    }

    /// The index under the fallback tag of `subject`, if any.
    pub async fn fallback_index(
        &self,
        image: &ImageRef,
        subject: &Digest,
    ) -> Result<Option<FetchedManifest>> {
        match self
            .get_manifest(image, &Reference::Tag(fallback_tag(subject)))
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Add `referrer` to the fallback-tag index of `subject` (creating it), as the OCI
    /// distribution spec asks of clients pushing to a registry without the referrers API.
    pub async fn add_fallback_referrer(
        &self,
        image: &ImageRef,
        subject: &Digest,
        referrer: &Descriptor,
    ) -> Result<()> {
        let mut list = match self.fallback_index(image, subject).await? {
            Some(m) => m.shape()?.manifests,
            None => Vec::new(),
        };
        if list.iter().any(|d| d.digest == referrer.digest) {
            return Ok(());
        }
        list.push(referrer.clone());
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": list,
        });
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| ClientError::Registry(format!("encoding a referrers index: {e}")))?;
        let m = FetchedManifest::from_bytes(Some(OCI_INDEX), bytes.into())?;
        self.put_manifest(image, &Reference::Tag(fallback_tag(subject)), &m)
            .await?;
        Ok(())
    }
}
