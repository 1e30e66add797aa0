//! A rule's labels filter: `key=value` or `key` (present, any value), comma-separated, all
//! required. An artifact's labels are those the source has: the image config's
//! `config.Labels` and the OCI manifest annotations (of the image, and of the index it is
//! part of). An index matches when any of its platforms has every label.

use std::collections::BTreeMap;

use berth_client::{Descriptor, FetchedManifest};
use berth_proto::Reference;

use super::copy::Side;

/// Most labels in one filter.
const MAX_LABELS: usize = 16;
/// Platforms of an index looked at for labels.
const MAX_PLATFORMS: usize = 64;
/// Largest image config read for its labels.
const MAX_CONFIG: u64 = 1 << 20;

/// One wanted label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    /// `None`: any value.
    pub value: Option<String>,
}

/// Parse a filter (`""` = no filter).
pub fn parse(spec: &str) -> Result<Vec<Label>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
            None => (part, None),
        };
        if key.is_empty() || key.len() > 256 || value.as_ref().is_some_and(|v| v.len() > 1024) {
            return Err(format!(
                "labels filter {spec:?}: each label is KEY=VALUE or KEY (a key of 1-256 characters, a value of at most 1024)"
            ));
        }
        out.push(Label {
            key: key.to_string(),
            value,
        });
    }
    if out.len() > MAX_LABELS {
        return Err(format!(
            "labels filter {spec:?}: at most {MAX_LABELS} labels"
        ));
    }
    Ok(out)
}

fn all_present(have: &BTreeMap<String, String>, wanted: &[Label]) -> bool {
    wanted.iter().all(|l| match (&l.value, have.get(&l.key)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(want), Some(v)) => want == v,
    })
}

fn annotations(m: &FetchedManifest) -> BTreeMap<String, String> {
    serde_json::from_slice::<serde_json::Value>(&m.bytes)
        .ok()
        .and_then(|v| v.get("annotations").cloned())
        .and_then(|a| serde_json::from_value(a).ok())
        .unwrap_or_default()
}

/// `config.Labels` of an image config (none for other configs).
async fn config_labels(
    src: &Side,
    repo: &str,
    config: &Descriptor,
) -> berth_client::Result<BTreeMap<String, String>> {
    if config.size > MAX_CONFIG || config.size <= 2 {
        return Ok(BTreeMap::new());
    }
    let img = src.image(repo, &Reference::Digest(config.digest.clone()));
    let bytes = src
        .client
        .fetch_blob_bytes(&img, config, MAX_CONFIG)
        .await?;
    Ok(serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("config")?.get("Labels").cloned())
        .and_then(|l| serde_json::from_value(l).ok())
        .unwrap_or_default())
}

/// Labels of one image manifest: its annotations, its config's labels and `inherited`.
async fn image_labels(
    src: &Side,
    repo: &str,
    m: &FetchedManifest,
    inherited: &BTreeMap<String, String>,
) -> berth_client::Result<BTreeMap<String, String>> {
    let mut have = inherited.clone();
    have.extend(annotations(m));
    if let Some(config) = m.shape()?.config {
        have.extend(config_labels(src, repo, &config).await?);
    }
    Ok(have)
}

/// Whether `repo:reference` at `src` has every wanted label (see the module documentation).
/// `Ok(false)` when it is not there any more.
pub async fn matches(
    src: &Side,
    repo: &str,
    reference: &Reference,
    wanted: &[Label],
) -> berth_client::Result<bool> {
    if wanted.is_empty() {
        return Ok(true);
    }
    let top = match src
        .client
        .get_manifest(&src.image(repo, reference), reference)
        .await
    {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e),
    };
    if !top.is_index() {
        let have = image_labels(src, repo, &top, &BTreeMap::new()).await?;
        return Ok(all_present(&have, wanted));
    }
    let index_ann = annotations(&top);
    if all_present(&index_ann, wanted) {
        return Ok(true);
    }
    for child in top.shape()?.manifests.iter().take(MAX_PLATFORMS) {
        // Attestations (`unknown/unknown`) carry no image labels.
        if child.platform.as_ref().is_some_and(|p| p.os == "unknown") {
            continue;
        }
        let r = Reference::Digest(child.digest.clone());
        let m = src.client.get_manifest(&src.image(repo, &r), &r).await?;
        if m.is_index() {
            continue;
        }
        if all_present(&image_labels(src, repo, &m, &index_ann).await?, wanted) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let l = parse("tier=prod, signed").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].value, None);
        let mut have = BTreeMap::new();
        have.insert("tier".to_string(), "prod".to_string());
        assert!(!all_present(&have, &l));
        have.insert("signed".to_string(), "yes".to_string());
        assert!(all_present(&have, &l));
        have.insert("tier".to_string(), "dev".to_string());
        assert!(!all_present(&have, &l));
        assert!(parse("").unwrap().is_empty());
        assert!(parse("=x").is_err());
    }
}
