//! Just enough of the OCI image spec to move images: descriptors, platforms, and the
//! manifest/index shapes. Manifests are always moved as their original bytes.

use std::collections::BTreeMap;
use std::fmt;

use berth_proto::Digest;
use berth_proto::media_types::*;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{ClientError, Result};

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
        }
    }
}

/// `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// The platform this binary runs on, as OCI names it.
    pub fn current() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            architecture: arch.to_string(),
            os: std::env::consts::OS.to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
        }
    }

    /// Parse `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
                os_version: None,
            }),
            _ => Err(ClientError::Config(format!(
                "invalid platform {s:?}: use OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8"
            ))),
        }
    }

    /// Whether an index entry for `candidate` satisfies this wanted platform. A missing
    /// variant on either side matches (arm64 images rarely say `v8`).
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && match (&self.variant, &candidate.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A manifest as fetched: its exact bytes, media type and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

/// The parts of a manifest or index the client uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestShape {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default)]
    pub subject: Option<Descriptor>,
}

impl FetchedManifest {
    /// Build from bytes, computing the digest; the media type comes from `content_type`
    /// (unless generic) or the body.
    pub fn from_bytes(content_type: Option<&str>, bytes: Bytes) -> Result<FetchedManifest> {
        let shape = parse_shape(&bytes)?;
        let ct = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
            .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain");
        let media_type = ct.or(shape.media_type.clone()).unwrap_or_else(|| {
            if shape.config.is_some() {
                OCI_MANIFEST.to_string()
            } else {
                OCI_INDEX.to_string()
            }
        });
        Ok(FetchedManifest {
            media_type,
            digest: Digest::sha256(&bytes),
            bytes,
        })
    }

    pub fn shape(&self) -> Result<ManifestShape> {
        parse_shape(&self.bytes)
    }

    pub fn is_index(&self) -> bool {
        is_index_type(&self.media_type)
            || (!is_image_type(&self.media_type)
                && self.shape().map(|s| s.config.is_none()).unwrap_or(false))
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            &self.media_type,
            self.digest.clone(),
            self.bytes.len() as u64,
        )
    }
}

pub fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
}

pub fn is_image_type(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

pub fn parse_shape(bytes: &[u8]) -> Result<ManifestShape> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ClientError::Registry(format!("manifest is not valid JSON: {e}")))?;
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(ClientError::Registry(
            "this is a Docker schema1 manifest, which is not supported; ask the registry for \
             schema2/OCI (re-push the image with a current client)"
                .into(),
        ));
    }
    serde_json::from_value(v)
        .map_err(|e| ClientError::Registry(format!("manifest is malformed: {e}")))
}

/// The `Accept` header for manifest requests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json;q=0.9";

/// Pick the manifest for `want` from an index; the error lists what the index has.
pub fn select_platform(index: &ManifestShape, want: &Platform) -> Result<Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| d.platform.as_ref().is_some_and(|p| want.matches(p)))
        .collect();
    // Prefer an exact variant match.
    if let Some(d) = candidates
        .iter()
        .find(|d| d.platform.as_ref().and_then(|p| p.variant.as_ref()) == want.variant.as_ref())
        .or(candidates.first())
    {
        return Ok((*d).clone());
    }
    let have: Vec<String> = index
        .manifests
        .iter()
        .map(|d| match &d.platform {
            Some(p) => p.to_string(),
            None => format!("(no platform) {}", d.digest),
        })
        .collect();
    Err(ClientError::NotFound(format!(
        "the image index has no manifest for platform {want}; it has: {} (choose one with --platform)",
        if have.is_empty() {
            "nothing".to_string()
        } else {
            have.join(", ")
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches(&Platform::parse("linux/arm64").unwrap()));
        assert!(!p.matches(&Platform::parse("linux/arm64/v9").unwrap()));
        assert!(!p.matches(&Platform::parse("linux/amd64").unwrap()));
        assert!(Platform::parse("linux").is_err());
        assert_eq!(Platform::current().os, std::env::consts::OS);
    }

    #[test]
    fn select() {
        let idx: ManifestShape = serde_json::from_value(serde_json::json!({
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": Digest::sha256(b"a").to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": Digest::sha256(b"b").to_string(), "size": 1,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            ]
        }))
        .unwrap();
        let d = select_platform(&idx, &Platform::parse("linux/arm64").unwrap()).unwrap();
        assert_eq!(d.digest, Digest::sha256(b"b"));
        let e = select_platform(&idx, &Platform::parse("windows/amd64").unwrap()).unwrap_err();
        assert!(e.to_string().contains("linux/arm64/v8"), "{e}");
    }
}
