//! Kubernetes objects the seed's steps use: the `image-fetcher-ca-bundle` ConfigMap, pull
//! secrets (`kubernetes.io/dockerconfigjson` and `kubernetes.io/dockercfg`) and the kubelet
//! credential provider protocol (`credentialprovider.kubelet.k8s.io/v1`).
//!
//! Readers accept YAML or JSON (JSON is parsed as YAML), a single object or a `List`.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::creds::AuthEntry;

pub const CA_CONFIGMAP_NAME: &str = "image-fetcher-ca-bundle";
pub const CA_CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CA_CONFIGMAP_KEY: &str = "ca-bundle";
pub const DOCKERCONFIGJSON: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKERCFG: &str = "kubernetes.io/dockercfg";
pub const CREDENTIAL_PROVIDER_API: &str = "credentialprovider.kubelet.k8s.io/v1";

fn parse_objects(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| format!("not valid YAML or JSON: {e}"))?;
        if v.is_null() {
            continue;
        }
        if v.get("kind").and_then(Value::as_str) == Some("List") {
            if let Some(items) = v.get("items").and_then(Value::as_array) {
                out.extend(items.iter().cloned());
            }
        } else {
            out.push(v);
        }
    }
    Ok(out)
}

fn name_of(v: &Value) -> String {
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    match v.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// The PEM text of `data.ca-bundle` of the `image-fetcher-ca-bundle` ConfigMap (or of the only
/// ConfigMap in the file that has a `ca-bundle` key).
pub fn read_ca_configmap(text: &str) -> Result<String, String> {
    let objs = parse_objects(text)?;
    let cms: Vec<&Value> = objs
        .iter()
        .filter(|v| v.get("kind").and_then(Value::as_str) == Some("ConfigMap"))
        .collect();
    if cms.is_empty() {
        return Err(format!(
            "no ConfigMap found (expected kind: ConfigMap named {CA_CONFIGMAP_NAME}, e.g. from \
             `kubectl -n {CA_CONFIGMAP_NAMESPACE} get configmap {CA_CONFIGMAP_NAME} -o yaml`)"
        ));
    }
    let cm = cms
        .iter()
        .find(|v| v.pointer("/metadata/name").and_then(Value::as_str) == Some(CA_CONFIGMAP_NAME))
        .or_else(|| cms.iter().find(|v| v.pointer("/data/ca-bundle").is_some()))
        .ok_or_else(|| {
            format!("no ConfigMap named {CA_CONFIGMAP_NAME} with data.{CA_CONFIGMAP_KEY}")
        })?;
    match cm.pointer("/data/ca-bundle") {
        Some(Value::String(s)) if s.contains("-----BEGIN CERTIFICATE-----") => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!(
            "ConfigMap {}: data.{CA_CONFIGMAP_KEY} holds no PEM certificate",
            name_of(cm)
        )),
        Some(_) => Err(format!(
            "ConfigMap {}: data.{CA_CONFIGMAP_KEY} must be a string of PEM certificates",
            name_of(cm)
        )),
        None => {
            // binaryData is base64 of the bundle
            if let Some(Value::String(b)) = cm.pointer("/binaryData/ca-bundle") {
                let raw = B64
                    .decode(b.trim())
                    .map_err(|e| format!("binaryData.{CA_CONFIGMAP_KEY}: bad base64: {e}"))?;
                return String::from_utf8(raw)
                    .map_err(|_| format!("binaryData.{CA_CONFIGMAP_KEY} is not PEM text"));
            }
            Err(format!(
                "ConfigMap {} has no data.{CA_CONFIGMAP_KEY} key",
                name_of(cm)
            ))
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigMap<'a> {
    api_version: &'a str,
    kind: &'a str,
    metadata: Metadata<'a>,
    data: BTreeMap<&'a str, String>,
}

/// Normalize one PEM certificate block (re-encode from DER) so duplicates compare equal.
fn pem_of(der: &[u8]) -> String {
    let b = B64.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("ascii"));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// The `image-fetcher-ca-bundle` ConfigMap (YAML) holding the certificates of `existing`
/// (a ConfigMap's text, if any) followed by those of `add` (PEM bundles), without
/// duplicates. Returns (YAML, number of certificates, number newly added).
pub fn ca_bundle_configmap(
    existing: Option<&str>,
    add: &[(String, Vec<u8>)],
) -> Result<(String, usize, usize), String> {
    let mut ders: Vec<Vec<u8>> = Vec::new();
    // An empty file is what `kubectl get configmap … -o yaml > FILE` leaves when the
    // ConfigMap does not exist yet: nothing to keep.
    if let Some(text) = existing.filter(|t| !t.trim().is_empty()) {
        let pem = read_ca_configmap(text)?;
        for c in crate::trust::parse_pem_bundle(pem.as_bytes(), "the existing ConfigMap")
            .map_err(|e| e.to_string())?
        {
            if !ders.contains(&c.to_vec()) {
                ders.push(c.to_vec());
            }
        }
    }
    let before = ders.len();
    for (what, pem) in add {
        for c in crate::trust::parse_pem_bundle(pem, what).map_err(|e| e.to_string())? {
            if !ders.contains(&c.to_vec()) {
                ders.push(c.to_vec());
            }
        }
    }
    let bundle: String = ders.iter().map(|d| pem_of(d)).collect();
    let cm = ConfigMap {
        api_version: "v1",
        kind: "ConfigMap",
        metadata: Metadata {
            name: CA_CONFIGMAP_NAME,
            namespace: CA_CONFIGMAP_NAMESPACE,
        },
        data: BTreeMap::from([(CA_CONFIGMAP_KEY, bundle)]),
    };
    let yaml = yaml_serde::to_string(&cm).map_err(|e| e.to_string())?;
    Ok((yaml, ders.len(), ders.len() - before))
}

/// A pull secret's registry entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSecret {
    /// `namespace/name` (or the name) for messages.
    pub name: String,
    pub secret_type: String,
    pub auths: BTreeMap<String, AuthEntry>,
}

fn secret_payload(secret: &Value, key: &str) -> Result<Vec<u8>, String> {
    if let Some(s) = secret.pointer(&format!("/stringData/{}", key.replace('/', "~1")))
        && let Some(s) = s.as_str()
    {
        return Ok(s.as_bytes().to_vec());
    }
    match secret.get("data").and_then(|d| d.get(key)) {
        Some(Value::String(b)) => {
            let cleaned: String = b.chars().filter(|c| !c.is_whitespace()).collect();
            B64.decode(cleaned)
                .map_err(|e| format!("data.{key} is not valid base64: {e}"))
        }
        Some(_) => Err(format!("data.{key} must be a base64 string")),
        None => Err(format!("has no data.{key} key")),
    }
}

/// Read a Secret manifest of type `kubernetes.io/dockerconfigjson` (`.dockerconfigjson`) or
/// `kubernetes.io/dockercfg` (`.dockercfg`), YAML or JSON.
pub fn read_pull_secret(text: &str) -> Result<PullSecret, String> {
    let objs = parse_objects(text)?;
    let secrets: Vec<&Value> = objs
        .iter()
        .filter(|v| v.get("kind").and_then(Value::as_str) == Some("Secret"))
        .collect();
    let secret = match secrets.as_slice() {
        [] => {
            return Err(
                "no Secret found (expected kind: Secret of type kubernetes.io/dockerconfigjson, \
                 e.g. from `berth kube pull-secret` or `kubectl get secret NAME -o yaml`)"
                    .to_string(),
            );
        }
        [one] => *one,
        many => many
            .iter()
            .find(|s| {
                matches!(
                    s.get("type").and_then(Value::as_str),
                    Some(DOCKERCONFIGJSON | DOCKERCFG)
                )
            })
            .copied()
            .ok_or("no Secret of type kubernetes.io/dockerconfigjson in the file")?,
    };
    let name = name_of(secret);
    let ty = secret
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let has = |k: &str| {
        secret.get("data").and_then(|d| d.get(k)).is_some()
            || secret.get("stringData").and_then(|d| d.get(k)).is_some()
    };
    let (key, wrapped) = match ty.as_str() {
        DOCKERCONFIGJSON => (".dockerconfigjson", true),
        DOCKERCFG => (".dockercfg", false),
        "" | "Opaque" if has(".dockerconfigjson") => (".dockerconfigjson", true),
        "" | "Opaque" if has(".dockercfg") => (".dockercfg", false),
        other => {
            return Err(format!(
                "Secret {name} has type {other:?}; a pull secret must be of type \
                 {DOCKERCONFIGJSON} (key .dockerconfigjson) or {DOCKERCFG} (key .dockercfg)"
            ));
        }
    };
    let payload = secret_payload(secret, key).map_err(|e| format!("Secret {name} {e}"))?;
    let json: Value = serde_json::from_slice(&payload)
        .map_err(|e| format!("Secret {name}: {key} is not JSON: {e}"))?;
    let map = if wrapped {
        json.get("auths").cloned().ok_or_else(|| {
            format!("Secret {name}: {key} has no \"auths\" object (is it a config.json?)")
        })?
    } else {
        json
    };
    let auths: BTreeMap<String, AuthEntry> = serde_json::from_value(map)
        .map_err(|e| format!("Secret {name}: registry entries are malformed: {e}"))?;
    for (k, e) in &auths {
        e.to_credential(String::new())
            .map_err(|m| format!("Secret {name}: entry {k:?}: {m}"))?;
    }
    Ok(PullSecret {
        name,
        secret_type: ty,
        auths,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretManifest<'a> {
    api_version: &'a str,
    kind: &'a str,
    metadata: Metadata<'a>,
    #[serde(rename = "type")]
    ty: &'a str,
    data: BTreeMap<&'a str, String>,
}

/// A `kubernetes.io/dockerconfigjson` Secret (YAML) whose `.dockerconfigjson` holds `auths`.
pub fn pull_secret_manifest(
    name: &str,
    namespace: &str,
    auths: &BTreeMap<String, AuthEntry>,
) -> String {
    let cfg = serde_json::json!({ "auths": auths });
    let s = SecretManifest {
        api_version: "v1",
        kind: "Secret",
        metadata: Metadata { name, namespace },
        ty: DOCKERCONFIGJSON,
        data: BTreeMap::from([(".dockerconfigjson", B64.encode(cfg.to_string()))]),
    };
    yaml_serde::to_string(&s).expect("yaml")
}

/// `CredentialProviderRequest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialProviderRequest {
    pub api_version: String,
    pub kind: String,
    pub image: String,
}

/// One `auth` entry of a `CredentialProviderResponse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
}

/// `CredentialProviderResponse`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialProviderResponse {
    pub api_version: String,
    pub kind: String,
    pub cache_key_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_duration: Option<String>,
    pub auth: BTreeMap<String, AuthConfig>,
}

/// Parse and check a request read from stdin.
pub fn parse_provider_request(text: &str) -> Result<CredentialProviderRequest, String> {
    let r: CredentialProviderRequest = serde_json::from_str(text)
        .map_err(|e| format!("CredentialProviderRequest is not valid JSON: {e}"))?;
    if r.api_version != CREDENTIAL_PROVIDER_API {
        return Err(format!(
            "unsupported apiVersion {:?}; this provider speaks {CREDENTIAL_PROVIDER_API}",
            r.api_version
        ));
    }
    if r.kind != "CredentialProviderRequest" {
        return Err(format!(
            "kind must be CredentialProviderRequest, not {:?}",
            r.kind
        ));
    }
    Ok(r)
}

/// Answer one kubelet `CredentialProviderRequest` (JSON text) from `keyring`: the response
/// JSON, with the first matching credential for the image's registry (none → empty `auth`,
/// which tells the kubelet to pull anonymously).
pub fn credential_provider(
    request: &str,
    keyring: &crate::creds::Keyring,
) -> Result<String, crate::ClientError> {
    let req = parse_provider_request(request).map_err(crate::ClientError::Config)?;
    let image = crate::ImageRef::parse(&req.image)?;
    let found = keyring.lookup(&image.registry, &image.repository)?;
    let mut auth = BTreeMap::new();
    if let Some(c) = found.into_iter().find(|c| c.identity_token.is_none()) {
        auth.insert(
            image.registry.clone(),
            AuthConfig {
                username: c.username,
                password: c.password,
            },
        );
    }
    let resp = CredentialProviderResponse {
        api_version: CREDENTIAL_PROVIDER_API.to_string(),
        kind: "CredentialProviderResponse".to_string(),
        cache_key_type: "Registry".to_string(),
        cache_duration: Some("5m0s".to_string()),
        auth,
    };
    Ok(serde_json::to_string(&resp).expect("json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secret_yaml_and_json() {
        let auths = BTreeMap::from([("reg.io:5000".to_string(), AuthEntry::basic("u", "p"))]);
        let y = pull_secret_manifest("regcred", "apps", &auths);
        assert!(y.contains("type: kubernetes.io/dockerconfigjson"), "{y}");
        let s = read_pull_secret(&y).unwrap();
        assert_eq!(s.name, "apps/regcred");
        assert_eq!(s.auths, auths);
        let v: Value = yaml_serde::from_str(&y).unwrap();
        let s2 = read_pull_secret(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
        assert_eq!(s2.auths, auths);

        let cfg = B64.encode(r#"{"reg.io":{"auth":"dTpw","email":"x@y"}}"#);
        let old = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: old\ntype: kubernetes.io/dockercfg\ndata:\n  .dockercfg: {cfg}\n"
        );
        let s = read_pull_secret(&old).unwrap();
        let c = s.auths["reg.io"].to_credential(String::new()).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));

        assert!(
            read_pull_secret("kind: ConfigMap")
                .unwrap_err()
                .contains("no Secret")
        );
        let bad = "kind: Secret\ntype: kubernetes.io/tls\ndata: {}\n";
        assert!(
            read_pull_secret(bad)
                .unwrap_err()
                .contains("kubernetes.io/tls")
        );
        let bad = "kind: Secret\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: '!!!'\n";
        assert!(read_pull_secret(bad).unwrap_err().contains("base64"));
    }

    proptest! {
        #[test]
        fn readers_never_panic(s in any::<String>()) {
            let _ = read_pull_secret(&s);
            let _ = read_ca_configmap(&s);
        }

        #[test]
        fn secret_round_trips(entries in proptest::collection::btree_map(
            "[a-z]{1,8}(\\.[a-z]{2,3})?(:[0-9]{1,5})?", ("[a-z0-9]{0,8}", "[ -~]{0,16}"), 0..4),
            name in "[a-z][a-z0-9-]{0,20}") {
            let auths: BTreeMap<String, AuthEntry> = entries.into_iter()
                .map(|(k, (u, p))| (k, AuthEntry::basic(&u, &p))).collect();
            let y = pull_secret_manifest(&name, "ns", &auths);
            let s = read_pull_secret(&y).unwrap();
            prop_assert_eq!(s.auths, auths);
            prop_assert_eq!(s.name, format!("ns/{name}"));
        }

        #[test]
        fn mutated_secrets_never_panic(pos in any::<usize>(), byte in any::<u8>()) {
            let auths = BTreeMap::from([("reg.io".to_string(), AuthEntry::basic("u", "p"))]);
            let mut y = pull_secret_manifest("n", "ns", &auths).into_bytes();
            let i = pos % y.len();
            y[i] = byte;
            let _ = read_pull_secret(&String::from_utf8_lossy(&y));
        }
    }
}
