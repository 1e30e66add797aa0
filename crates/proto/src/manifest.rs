//! Manifest validation: just enough parsing of image manifests and indexes to store them
//! safely and to know what they reference.
//!
//! The stored bytes are always the client's bytes, unchanged (their digest is the manifest
//! digest); [`parse_manifest`] only extracts the facts the registry needs: the effective media
//! type, referenced blobs, child manifests, the `subject` and the referrers metadata.

use serde_json::{Map, Value};

use crate::digest::Digest;

/// Media types the registry knows by name.
pub mod media_types {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
}

use media_types::*;

/// Largest manifest body accepted, in bytes.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Largest number of descriptors (config + layers + manifests + subject) in one manifest.
pub const MAX_DESCRIPTORS: usize = 10_000;

/// What the registry needs to know about a pushed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    /// The effective media type, to store and to serve as `Content-Type` (lowercase, without
    /// parameters).
    pub media_type: String,
    /// OCI index or Docker manifest list (or an unknown type with the index shape).
    pub is_index: bool,
    /// Blobs that must exist in the repository: config then layers, in order, without
    /// duplicates. Foreign/non-distributable layers that carry `urls` are excluded. Empty for
    /// indexes.
    pub blobs: Vec<Digest>,
    /// Every blob descriptor behind `blobs` (config, then layers, duplicates included), with
    /// the size it claims, so a server can check the claim against the stored blob.
    pub blob_descriptors: Vec<BlobDescriptor>,
    /// Child manifests of an index (`manifests[].digest`), in order, without duplicates.
    pub children: Vec<Digest>,
    /// `subject.digest`, for the referrers API.
    pub subject: Option<Digest>,
    /// Referrers `artifactType`: `artifactType` if set, else (image manifests) `config.mediaType`.
    pub artifact_type: Option<String>,
    /// Compact JSON of the top-level `annotations` object, if present.
    pub annotations_json: Option<String>,
    /// `config.mediaType` of an image manifest.
    pub config_media_type: Option<String>,
}

/// A blob descriptor of an image manifest: where it is, what it names and the size it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobDescriptor {
    /// JSON path of the descriptor, e.g. `config` or `layers[2]`.
    pub path: String,
    pub digest: Digest,
    pub size: u64,
}

/// Why a manifest was rejected. Everything except the size errors is `MANIFEST_INVALID`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "manifest is {size} bytes, larger than the {max}-byte limit; split it (e.g. into an \
         index of smaller manifests)"
    )]
    TooLarge { size: usize, max: usize },
    #[error(
        "manifest has {count} descriptors, more than the limit of {max}; split it into \
         several manifests"
    )]
    TooManyDescriptors { count: usize, max: usize },
    #[error("manifest is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("manifest must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    #[error("Docker schema1 manifests are not supported; push with a current client (schema2/OCI)")]
    Schema1,
    #[error("schemaVersion must be the integer 2, found {0}")]
    SchemaVersion(String),
    #[error(
        "Content-Type {content_type:?} does not match the manifest's mediaType {body:?}; send \
         the manifest's own media type as Content-Type"
    )]
    MediaTypeMismatch { content_type: String, body: String },
    #[error(
        "cannot tell what kind of manifest this is: set Content-Type or mediaType (e.g. {OCI_MANIFEST})"
    )]
    UnknownKind,
    #[error(
        "manifest of media type {0:?} must have the shape of an image manifest (`config` \
         descriptor and `layers` array) or of an index (`manifests` array)"
    )]
    UnsupportedShape(String),
    /// A specific field is missing or wrong; `field` is a JSON path such as `layers[3].digest`.
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
}

impl ManifestError {
    /// True when the manifest was rejected for its size (bytes or descriptor count), which a
    /// server may report as 413 / `SIZE_INVALID`-style rather than `MANIFEST_INVALID`.
    pub fn is_size_error(&self) -> bool {
        matches!(
            self,
            ManifestError::TooLarge { .. } | ManifestError::TooManyDescriptors { .. }
        )
    }

    fn field(field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
        ManifestError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The media type without parameters, trimmed and lowercased.
fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_generic(ct: &str) -> bool {
    matches!(ct, "" | "application/json" | "application/octet-stream")
}

fn is_schema1(mt: &str) -> bool {
    mt == DOCKER_SCHEMA1 || mt == DOCKER_SCHEMA1_SIGNED
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Image,
    Index,
}

/// A validated descriptor.
struct Descriptor {
    media_type: String,
    digest: Digest,
    size: u64,
    /// Foreign / non-distributable layer with download `urls`: not required to be pushed.
    external: bool,
}

fn descriptor(v: &Value, path: &str) -> Result<Descriptor, ManifestError> {
    let obj = v.as_object().ok_or_else(|| {
        ManifestError::field(
            path,
            format!("must be a descriptor object, not {}", json_kind(v)),
        )
    })?;
    let media_type = match obj.get("mediaType") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(ManifestError::field(
                format!("{path}.mediaType"),
                "must not be empty",
            ));
        }
        Some(other) => {
            return Err(ManifestError::field(
                format!("{path}.mediaType"),
                format!("must be a string, not {}", json_kind(other)),
            ));
        }
        None => {
            return Err(ManifestError::field(
                format!("{path}.mediaType"),
                "is required",
            ));
        }
    };
    let digest = match obj.get("digest") {
        Some(Value::String(s)) => s
            .parse::<Digest>()
            .map_err(|e| ManifestError::field(format!("{path}.digest"), e.to_string()))?,
        Some(other) => {
            return Err(ManifestError::field(
                format!("{path}.digest"),
                format!("must be a string, not {}", json_kind(other)),
            ));
        }
        None => {
            return Err(ManifestError::field(
                format!("{path}.digest"),
                "is required",
            ));
        }
    };
    let size = match obj.get("size") {
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or_default(),
        Some(other) => {
            return Err(ManifestError::field(
                format!("{path}.size"),
                format!("must be a non-negative integer, not {other}"),
            ));
        }
        None => {
            return Err(ManifestError::field(format!("{path}.size"), "is required"));
        }
    };
    let urls = match obj.get("urls") {
        None | Some(Value::Null) => false,
        Some(Value::Array(urls)) => {
            if let Some(i) = urls.iter().position(|u| !u.is_string()) {
                return Err(ManifestError::field(
                    format!("{path}.urls[{i}]"),
                    "must be a string",
                ));
            }
            !urls.is_empty()
        }
        Some(other) => {
            return Err(ManifestError::field(
                format!("{path}.urls"),
                format!("must be an array of strings, not {}", json_kind(other)),
            ));
        }
    };
    let mt = media_type.to_ascii_lowercase();
    let external = urls && (mt.contains("nondistributable") || mt.contains(".foreign."));
    Ok(Descriptor {
        media_type,
        digest,
        size,
        external,
    })
}

fn descriptor_array<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a [Value], ManifestError> {
    match obj.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(ManifestError::field(
            key,
            format!("must be an array of descriptors, not {}", json_kind(other)),
        )),
        None => Err(ManifestError::field(key, "is required")),
    }
}

fn optional_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ManifestError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ManifestError::field(
            key,
            format!("must be a string, not {}", json_kind(other)),
        )),
    }
}

fn push_unique(v: &mut Vec<Digest>, d: Digest) {
    if !v.contains(&d) {
        v.push(d);
    }
}

/// Validate a pushed manifest and extract what the registry needs.
///
/// `content_type` is the request's `Content-Type` header, if any (parameters are ignored).
pub fn parse_manifest(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ParsedManifest, ManifestError> {
    if body.len() > MAX_MANIFEST_SIZE {
        return Err(ManifestError::TooLarge {
            size: body.len(),
            max: MAX_MANIFEST_SIZE,
        });
    }
    let ct = content_type.map(essence).unwrap_or_default();
    if is_schema1(&ct) {
        return Err(ManifestError::Schema1);
    }

    let value: Value =
        serde_json::from_slice(body).map_err(|e| ManifestError::InvalidJson(e.to_string()))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ManifestError::NotAnObject(json_kind(&value)))?;

    let body_mt = match obj.get("mediaType") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(essence(s)),
        Some(other) => {
            return Err(ManifestError::field(
                "mediaType",
                format!("must be a string, not {}", json_kind(other)),
            ));
        }
    };
    if body_mt.as_deref().is_some_and(is_schema1) {
        return Err(ManifestError::Schema1);
    }
    match obj.get("schemaVersion") {
        Some(v) if v.as_u64() == Some(2) => {}
        Some(v) if v.as_u64() == Some(1) => return Err(ManifestError::Schema1),
        Some(v) => return Err(ManifestError::SchemaVersion(v.to_string())),
        None => return Err(ManifestError::SchemaVersion("nothing".to_string())),
    }

    let media_type = match (is_generic(&ct), body_mt) {
        (false, Some(body)) if body != ct => {
            return Err(ManifestError::MediaTypeMismatch {
                content_type: ct,
                body,
            });
        }
        (false, _) => ct,
        (true, Some(body)) if !body.is_empty() => body,
        (true, _) => {
            match (
                obj.get("manifests").is_some_and(Value::is_array),
                obj.get("config").is_some_and(Value::is_object),
            ) {
                (true, false) => OCI_INDEX.to_string(),
                (false, true) => OCI_MANIFEST.to_string(),
                _ => return Err(ManifestError::UnknownKind),
            }
        }
    };

    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
        OCI_INDEX | DOCKER_MANIFEST_LIST => Kind::Index,
        _ => {
            // Artifacts: accept an unknown media type only in one of the two known shapes.
            let image = obj.get("config").is_some_and(Value::is_object)
                && obj.get("layers").is_some_and(Value::is_array);
            let index = obj.get("manifests").is_some_and(Value::is_array);
            match (image, index) {
                (true, false) => Kind::Image,
                (false, true) => Kind::Index,
                _ => return Err(ManifestError::UnsupportedShape(media_type)),
            }
        }
    };

    let mut parsed = ParsedManifest {
        media_type,
        is_index: kind == Kind::Index,
        blobs: Vec::new(),
        blob_descriptors: Vec::new(),
        children: Vec::new(),
        subject: None,
        artifact_type: optional_string(obj, "artifactType")?,
        annotations_json: None,
        config_media_type: None,
    };

    let subject = match obj.get("subject") {
        None | Some(Value::Null) => None,
        Some(v) => Some(descriptor(v, "subject")?),
    };

    match kind {
        Kind::Image => {
            let config_value = obj
                .get("config")
                .ok_or_else(|| ManifestError::field("config", "is required"))?;
            let layers = descriptor_array(obj, "layers")?;
            let count = 1 + layers.len() + usize::from(subject.is_some());
            if count > MAX_DESCRIPTORS {
                return Err(ManifestError::TooManyDescriptors {
                    count,
                    max: MAX_DESCRIPTORS,
                });
            }
            let config = descriptor(config_value, "config")?;
            parsed.blob_descriptors.push(BlobDescriptor {
                path: "config".to_string(),
                digest: config.digest.clone(),
                size: config.size,
            });
            push_unique(&mut parsed.blobs, config.digest);
            for (i, layer) in layers.iter().enumerate() {
                let path = format!("layers[{i}]");
                let layer = descriptor(layer, &path)?;
                if !layer.external {
                    parsed.blob_descriptors.push(BlobDescriptor {
                        path,
                        digest: layer.digest.clone(),
                        size: layer.size,
                    });
                    push_unique(&mut parsed.blobs, layer.digest);
                }
            }
            if parsed.artifact_type.is_none() {
                parsed.artifact_type = Some(config.media_type.clone());
            }
            parsed.config_media_type = Some(config.media_type);
        }
        Kind::Index => {
            let manifests = descriptor_array(obj, "manifests")?;
            let count = manifests.len() + usize::from(subject.is_some());
            if count > MAX_DESCRIPTORS {
                return Err(ManifestError::TooManyDescriptors {
                    count,
                    max: MAX_DESCRIPTORS,
                });
            }
            for (i, m) in manifests.iter().enumerate() {
                let path = format!("manifests[{i}]");
                let d = descriptor(m, &path)?;
                if let Some(p) = m.get("platform")
                    && !p.is_object()
                    && !p.is_null()
                {
                    return Err(ManifestError::field(
                        format!("{path}.platform"),
                        format!("must be an object, not {}", json_kind(p)),
                    ));
                }
                push_unique(&mut parsed.children, d.digest);
            }
        }
    }
    parsed.subject = subject.map(|s| s.digest);

    match obj.get("annotations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            if let Some((k, v)) = map.iter().find(|(_, v)| !v.is_string()) {
                return Err(ManifestError::field(
                    format!("annotations[{k:?}]"),
                    format!("annotation values must be strings, not {}", json_kind(v)),
                ));
            }
            parsed.annotations_json = Some(
                serde_json::to_string(&Value::Object(map.clone()))
                    .map_err(|e| ManifestError::InvalidJson(e.to_string()))?,
            );
        }
        Some(other) => {
            return Err(ManifestError::field(
                "annotations",
                format!("must be an object of strings, not {}", json_kind(other)),
            ));
        }
    }

    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::digest_strategy;
    use proptest::prelude::*;
    use serde_json::json;

    fn d(n: u8) -> Digest {
        Digest::sha256(&[n])
    }

    fn desc(mt: &str, digest: &Digest) -> Value {
        json!({"mediaType": mt, "digest": digest.to_string(), "size": 42})
    }

    fn image(layers: &[Digest]) -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &d(0)),
            "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar+gzip", l)).collect::<Vec<_>>(),
        })
    }

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn field_of(e: ManifestError) -> String {
        match e {
            ManifestError::Field { field, .. } => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn oci_image() {
        let m = image(&[d(1), d(2)]);
        let p = parse_manifest(Some(OCI_MANIFEST), &bytes(&m)).unwrap();
        assert_eq!(
            p,
            ParsedManifest {
                media_type: OCI_MANIFEST.into(),
                is_index: false,
                blobs: vec![d(0), d(1), d(2)],
                blob_descriptors: ["config", "layers[0]", "layers[1]"]
                    .iter()
                    .zip([d(0), d(1), d(2)])
                    .map(|(path, digest)| BlobDescriptor {
                        path: path.to_string(),
                        digest,
                        size: 42,
                    })
                    .collect(),
                children: vec![],
                subject: None,
                artifact_type: Some(OCI_CONFIG.into()),
                annotations_json: None,
                config_media_type: Some(OCI_CONFIG.into()),
            }
        );
    }

    #[test]
    fn docker_image_and_list() {
        let m = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": desc(DOCKER_CONFIG, &d(0)),
            "layers": [desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &d(1))],
        });
        let p = parse_manifest(Some(DOCKER_MANIFEST), &bytes(&m)).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST);
        assert_eq!(p.blobs, vec![d(0), d(1)]);
        assert_eq!(p.config_media_type.as_deref(), Some(DOCKER_CONFIG));

        let l = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [
                {"mediaType": DOCKER_MANIFEST, "digest": d(5).to_string(), "size": 7,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                desc(DOCKER_MANIFEST, &d(6)),
            ],
        });
        let p = parse_manifest(None, &bytes(&l)).unwrap();
        assert_eq!(p.media_type, DOCKER_MANIFEST_LIST);
        assert!(p.is_index);
        assert_eq!(p.children, vec![d(5), d(6)]);
        assert!(p.blobs.is_empty());
        assert_eq!(p.artifact_type, None);
    }

    #[test]
    fn media_type_resolution() {
        let mut m = image(&[d(1)]);
        // Parameters are ignored; content type wins over nothing.
        let p = parse_manifest(
            Some("Application/Vnd.OCI.Image.Manifest.v1+json; charset=utf-8"),
            &bytes(&m),
        )
        .unwrap();
        assert_eq!(p.media_type, OCI_MANIFEST);
        // Generic content types defer to the body.
        for ct in [
            None,
            Some("application/json"),
            Some("application/octet-stream"),
            Some(""),
        ] {
            assert_eq!(
                parse_manifest(ct, &bytes(&m)).unwrap().media_type,
                OCI_MANIFEST
            );
        }
        // Mismatch is an error.
        let e = parse_manifest(Some(DOCKER_MANIFEST), &bytes(&m)).unwrap_err();
        assert!(matches!(e, ManifestError::MediaTypeMismatch { .. }), "{e}");
        // Detection without any media type.
        m.as_object_mut().unwrap().remove("mediaType");
        assert_eq!(
            parse_manifest(None, &bytes(&m)).unwrap().media_type,
            OCI_MANIFEST
        );
        assert_eq!(
            parse_manifest(Some(DOCKER_MANIFEST), &bytes(&m))
                .unwrap()
                .media_type,
            DOCKER_MANIFEST
        );
        let idx = json!({"schemaVersion": 2, "manifests": []});
        let p = parse_manifest(Some("application/json"), &bytes(&idx)).unwrap();
        assert_eq!(p.media_type, OCI_INDEX);
        assert!(p.is_index);
        let neither = json!({"schemaVersion": 2});
        assert_eq!(
            parse_manifest(None, &bytes(&neither)),
            Err(ManifestError::UnknownKind)
        );
    }

    #[test]
    fn schema1_rejected() {
        let s1 = json!({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []});
        for ct in [None, Some(DOCKER_SCHEMA1), Some(DOCKER_SCHEMA1_SIGNED)] {
            let e = parse_manifest(ct, &bytes(&s1)).unwrap_err();
            assert_eq!(e, ManifestError::Schema1);
            assert!(e.to_string().contains("schema1"));
        }
        let with_mt = json!({"schemaVersion": 2, "mediaType": DOCKER_SCHEMA1_SIGNED});
        assert_eq!(
            parse_manifest(None, &bytes(&with_mt)),
            Err(ManifestError::Schema1)
        );
        for v in [json!(3), json!("2"), json!(2.5), json!(null)] {
            let mut m = image(&[]);
            m["schemaVersion"] = v;
            assert!(matches!(
                parse_manifest(None, &bytes(&m)),
                Err(ManifestError::SchemaVersion(_))
            ));
        }
        let mut m = image(&[]);
        m.as_object_mut().unwrap().remove("schemaVersion");
        let e = parse_manifest(None, &bytes(&m)).unwrap_err();
        assert!(e.to_string().contains("schemaVersion"), "{e}");
    }

    #[test]
    fn shape_errors_name_the_field() {
        let mut m = image(&[d(1), d(2), d(3), d(4)]);
        m["layers"][3]["digest"] = json!("sha256:nope");
        let e = parse_manifest(None, &bytes(&m)).unwrap_err();
        assert!(e.to_string().starts_with("layers[3].digest: "), "{e}");

        let mut m = image(&[d(1)]);
        m["layers"][0]["size"] = json!(-1);
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&m)).unwrap_err()),
            "layers[0].size"
        );
        m["layers"][0]["size"] = json!(1.5);
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&m)).unwrap_err()),
            "layers[0].size"
        );
        m["layers"][0]["size"] = json!("1");
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&m)).unwrap_err()),
            "layers[0].size"
        );

        let mut m = image(&[d(1)]);
        m["config"].as_object_mut().unwrap().remove("mediaType");
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&m)).unwrap_err()),
            "config.mediaType"
        );

        let mut m = image(&[d(1)]);
        m.as_object_mut().unwrap().remove("layers");
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&m)).unwrap_err()),
            "layers"
        );

        let mut m = image(&[d(1)]);
        m.as_object_mut().unwrap().remove("config");
        assert_eq!(
            field_of(parse_manifest(Some(OCI_MANIFEST), &bytes(&m)).unwrap_err()),
            "config"
        );

        let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc(OCI_MANIFEST, &d(1)), {"digest": d(2).to_string(), "size": 1}]});
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&idx)).unwrap_err()),
            "manifests[1].mediaType"
        );
        let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX});
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&idx)).unwrap_err()),
            "manifests"
        );
        let idx = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{"mediaType": OCI_MANIFEST, "digest": d(1).to_string(), "size": 1, "platform": 3}]});
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&idx)).unwrap_err()),
            "manifests[0].platform"
        );

        let mut m = image(&[]);
        m["annotations"] = json!({"a": 1});
        assert!(field_of(parse_manifest(None, &bytes(&m)).unwrap_err()).starts_with("annotations"));
        let mut m = image(&[]);
        m["subject"] = json!({"mediaType": OCI_MANIFEST, "size": 3});
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&m)).unwrap_err()),
            "subject.digest"
        );
        let mut m = image(&[]);
        m["artifactType"] = json!(7);
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&m)).unwrap_err()),
            "artifactType"
        );
        let mut m = image(&[]);
        m["mediaType"] = json!(7);
        assert_eq!(
            field_of(parse_manifest(None, &bytes(&m)).unwrap_err()),
            "mediaType"
        );
    }

    #[test]
    fn not_json_or_not_object() {
        assert!(matches!(
            parse_manifest(None, b"{"),
            Err(ManifestError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_manifest(None, b""),
            Err(ManifestError::InvalidJson(_))
        ));
        assert_eq!(
            parse_manifest(None, b"[]"),
            Err(ManifestError::NotAnObject("an array"))
        );
        let deep = "[".repeat(100_000);
        assert!(parse_manifest(None, deep.as_bytes()).is_err());
    }

    #[test]
    fn size_limits() {
        let big = vec![b' '; MAX_MANIFEST_SIZE + 1];
        let e = parse_manifest(None, &big).unwrap_err();
        assert!(e.is_size_error());
        assert!(matches!(e, ManifestError::TooLarge { .. }));

        let layers: Vec<Digest> = (0..MAX_DESCRIPTORS)
            .map(|i| Digest::sha256(&i.to_le_bytes()))
            .collect();
        let m = image(&layers);
        let body = bytes(&m);
        assert!(body.len() <= MAX_MANIFEST_SIZE);
        let e = parse_manifest(None, &body).unwrap_err();
        assert!(e.is_size_error(), "{e}");
        let ok = image(&layers[..MAX_DESCRIPTORS - 1]);
        assert_eq!(
            parse_manifest(None, &bytes(&ok)).unwrap().blobs.len(),
            MAX_DESCRIPTORS
        );
        assert!(!ManifestError::Schema1.is_size_error());
    }

    #[test]
    fn foreign_layers_excluded() {
        let mut m = image(&[d(1)]);
        m["layers"].as_array_mut().unwrap().push(json!({
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": d(2).to_string(), "size": 5, "urls": ["https://example.com/layer"],
        }));
        m["layers"].as_array_mut().unwrap().push(json!({
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": d(3).to_string(), "size": 5, "urls": ["https://example.com/layer"],
        }));
        // Without urls, a foreign layer must be present.
        m["layers"].as_array_mut().unwrap().push(json!({
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": d(4).to_string(), "size": 5,
        }));
        // Duplicates collapse.
        m["layers"]
            .as_array_mut()
            .unwrap()
            .push(desc("application/vnd.oci.image.layer.v1.tar", &d(1)));
        let p = parse_manifest(None, &bytes(&m)).unwrap();
        assert_eq!(p.blobs, vec![d(0), d(1), d(4)]);
    }

    #[test]
    fn artifacts_and_referrers() {
        let art = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": desc(OCI_EMPTY, &d(0)),
            "layers": [desc("application/spdx+json", &d(1))],
            "subject": desc(OCI_MANIFEST, &d(9)),
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "b": "x"},
        });
        let p = parse_manifest(Some(OCI_MANIFEST), &bytes(&art)).unwrap();
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert_eq!(p.config_media_type.as_deref(), Some(OCI_EMPTY));
        assert_eq!(p.subject, Some(d(9)));
        let ann: Value = serde_json::from_str(p.annotations_json.as_deref().unwrap()).unwrap();
        assert_eq!(ann, art["annotations"]);
        let compact = p.annotations_json.unwrap();
        assert!(!compact.contains('\n') && !compact.contains("\": ") && !compact.contains(", "));

        // No artifactType: the config media type is the referrers artifactType.
        let mut sig = art.clone();
        sig.as_object_mut().unwrap().remove("artifactType");
        sig["config"] = desc("application/vnd.cncf.notary.signature", &d(0));
        let p = parse_manifest(None, &bytes(&sig)).unwrap();
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.cncf.notary.signature")
        );

        // Index with subject and artifactType.
        let idx = json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/x",
            "manifests": [desc(OCI_MANIFEST, &d(1))], "subject": desc(OCI_MANIFEST, &d(2)),
        });
        let p = parse_manifest(None, &bytes(&idx)).unwrap();
        assert_eq!(
            (p.artifact_type.as_deref(), p.subject),
            (Some("application/x"), Some(d(2)))
        );
    }

    #[test]
    fn unknown_media_types_need_a_known_shape() {
        let mut m = image(&[d(1)]);
        m["mediaType"] = json!("application/vnd.example.thing.v1+json");
        let p = parse_manifest(None, &bytes(&m)).unwrap();
        assert_eq!(p.media_type, "application/vnd.example.thing.v1+json");
        assert!(!p.is_index);
        assert_eq!(p.blobs, vec![d(0), d(1)]);

        let idx = json!({"schemaVersion": 2, "manifests": [desc(OCI_MANIFEST, &d(1))]});
        let p = parse_manifest(Some("application/vnd.example.list"), &bytes(&idx)).unwrap();
        assert!(p.is_index);
        assert_eq!(p.children, vec![d(1)]);

        // The removed OCI artifact manifest (`blobs`) has neither shape.
        let art = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json", "blobs": []});
        let e = parse_manifest(None, &bytes(&art)).unwrap_err();
        assert!(matches!(e, ManifestError::UnsupportedShape(_)), "{e}");
        assert!(e.to_string().contains("artifact.manifest"));
    }

    fn layer_mt() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("application/vnd.oci.image.layer.v1.tar+gzip".to_string()),
            Just("application/vnd.docker.image.rootfs.diff.tar.gzip".to_string()),
            Just("application/vnd.oci.image.layer.nondistributable.v1.tar".to_string()),
            "[a-z]{1,8}/[a-z.+]{1,12}",
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), ct in proptest::option::of(".{0,40}")) {
            let _ = parse_manifest(ct.as_deref(), &body);
        }

        #[test]
        fn arbitrary_json_never_panics(v in arb_json(), ct in proptest::option::of(prop_oneof![
            Just(OCI_MANIFEST.to_string()), Just(OCI_INDEX.to_string()), Just(DOCKER_MANIFEST.to_string()),
            Just("application/json".to_string()), ".{0,20}",
        ])) {
            let _ = parse_manifest(ct.as_deref(), &bytes(&v));
            // Also wrapped as something manifest-like.
            let wrapped = json!({"schemaVersion": 2, "config": v.clone(), "layers": [v.clone()], "manifests": v.clone(), "subject": v.clone(), "annotations": v});
            let _ = parse_manifest(None, &bytes(&wrapped));
        }

        #[test]
        fn generated_images_parse(
            config in digest_strategy(),
            layers in proptest::collection::vec((digest_strategy(), layer_mt(), any::<bool>(), 0u64..u64::MAX), 0..8),
            subject in proptest::option::of(digest_strategy()),
            artifact_type in proptest::option::of("[a-z]{1,8}/[a-z.+]{1,12}"),
            docker in any::<bool>(),
            header in any::<bool>(),
        ) {
            let mt = if docker { DOCKER_MANIFEST } else { OCI_MANIFEST };
            let mut m = json!({
                "schemaVersion": 2,
                "mediaType": mt,
                "config": desc(OCI_CONFIG, &config),
                "layers": layers.iter().map(|(d, lmt, urls, size)| {
                    let mut l = json!({"mediaType": lmt, "digest": d.to_string(), "size": size});
                    if *urls { l["urls"] = json!(["https://example.com/x"]); }
                    l
                }).collect::<Vec<_>>(),
            });
            if let Some(s) = &subject { m["subject"] = desc(OCI_MANIFEST, s); }
            if let Some(a) = &artifact_type { m["artifactType"] = json!(a); }
            let p = parse_manifest(header.then_some(mt), &bytes(&m)).unwrap();

            let mut want = vec![config.clone()];
            for (d, lmt, urls, _) in &layers {
                let external = *urls && lmt.contains("nondistributable");
                if !external && !want.contains(d) {
                    want.push(d.clone());
                }
            }
            prop_assert_eq!(&p.media_type, mt);
            prop_assert!(!p.is_index);
            prop_assert_eq!(p.blobs, want);
            prop_assert!(p.children.is_empty());
            prop_assert_eq!(p.subject, subject);
            prop_assert_eq!(p.artifact_type, Some(artifact_type.unwrap_or_else(|| OCI_CONFIG.to_string())));
        }

        #[test]
        fn generated_indexes_parse(
            children in proptest::collection::vec(digest_strategy(), 0..8),
            docker in any::<bool>(),
        ) {
            let (mt, child_mt) = if docker { (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST) } else { (OCI_INDEX, OCI_MANIFEST) };
            let m = json!({
                "schemaVersion": 2,
                "mediaType": mt,
                "manifests": children.iter().map(|c| desc(child_mt, c)).collect::<Vec<_>>(),
            });
            let p = parse_manifest(Some("application/json; charset=utf-8"), &bytes(&m)).unwrap();
            let mut want: Vec<Digest> = Vec::new();
            for c in children { if !want.contains(&c) { want.push(c); } }
            prop_assert_eq!(&p.media_type, mt);
            prop_assert!(p.is_index);
            prop_assert_eq!(p.children, want);
            prop_assert!(p.blobs.is_empty());
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,10}".prop_map(Value::String),
            Just(json!(2)),
            Just(json!(OCI_MANIFEST)),
            Just(json!(
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![
                Just("schemaVersion".to_string()),
                Just("mediaType".to_string()),
                Just("config".to_string()),
                Just("layers".to_string()),
                Just("manifests".to_string()),
                Just("digest".to_string()),
                Just("size".to_string()),
                Just("urls".to_string()),
                Just("subject".to_string()),
                Just("annotations".to_string()),
                Just("artifactType".to_string()),
                "[a-z]{1,5}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(key, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
