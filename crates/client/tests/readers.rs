//! The ConfigMap and pull-secret readers with real certificates, and the trust options
//! built from them (property tests: any order, duplicates, YAML or JSON).

use berth_client::TrustOptions;
use berth_client::kube::{ca_bundle_configmap, read_ca_configmap, read_pull_secret};
use proptest::prelude::*;

fn cas(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            berth_pki::generate_ca(&format!("Test CA {i}"))
                .unwrap()
                .cert_pem
        })
        .collect()
}

#[test]
fn configmap_from_kubectl_yaml_and_json() {
    let c = cas(2);
    let bundle = format!("{}{}", c[0], c[1]);
    let indented: String = bundle.lines().map(|l| format!("    {l}\n")).collect();
    let yaml = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: image-fetcher-ca-bundle\n  namespace: kube-system\ndata:\n  ca-bundle: |\n{indented}"
    );
    assert_eq!(read_ca_configmap(&yaml).unwrap().trim(), bundle.trim());
    let json = serde_json::json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"kind": "ConfigMap", "metadata": {"name": "other"}, "data": {"x": "y"}},
            {"kind": "ConfigMap", "metadata": {"name": "image-fetcher-ca-bundle"}, "data": {"ca-bundle": bundle}},
        ]
    });
    assert_eq!(read_ca_configmap(&json.to_string()).unwrap(), bundle);

    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("cm.yaml");
    std::fs::write(&f, &yaml).unwrap();
    let mut t = TrustOptions::isolated();
    assert_eq!(t.add_ca_configmap_file(&f).unwrap(), 2);
    assert_eq!(t.extra_roots().len(), 2);
    assert!(t.ca_sources[0].contains("--ca-configmap"));

    let e = read_ca_configmap(
        "kind: ConfigMap\nmetadata:\n  name: image-fetcher-ca-bundle\ndata: {}\n",
    )
    .unwrap_err();
    assert!(e.contains("ca-bundle"), "{e}");
    let e = read_ca_configmap("kind: Secret\n").unwrap_err();
    assert!(e.contains("no ConfigMap"), "{e}");
}

#[test]
fn bundle_files_with_many_certs_and_garbage() {
    let c = cas(3);
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("bundle.pem");
    std::fs::write(&f, format!("# comment\n{}\n\n{}{}", c[0], c[1], c[2])).unwrap();
    let mut t = TrustOptions::isolated();
    assert_eq!(t.add_ca_bundle_file(&f).unwrap(), 3);
    std::fs::write(&f, "not a cert").unwrap();
    let e = t.add_ca_bundle_file(&f).unwrap_err().to_string();
    assert!(e.contains("BEGIN CERTIFICATE"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Appending in any order with duplicates keeps each certificate once, existing first.
    #[test]
    fn configmap_append_dedups(order in proptest::collection::vec(0usize..4, 1..8), json in any::<bool>()) {
        let c = cas(4);
        let (first, _, _) = ca_bundle_configmap(None, &[("a".into(), c[0].clone().into_bytes())]).unwrap();
        let add: Vec<(String, Vec<u8>)> = order.iter().map(|&i| (format!("c{i}"), c[i].clone().into_bytes())).collect();
        let existing = if json {
            let v: serde_json::Value = yaml_value(&first);
            v.to_string()
        } else {
            first
        };
        let (yaml, total, added) = ca_bundle_configmap(Some(&existing), &add).unwrap();
        let mut distinct: Vec<usize> = vec![0];
        for &i in &order { if !distinct.contains(&i) { distinct.push(i); } }
        prop_assert_eq!(total, distinct.len());
        prop_assert_eq!(added, distinct.len() - 1);
        let pem = read_ca_configmap(&yaml).unwrap();
        prop_assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), total);
        prop_assert!(pem.starts_with(&c[0][..40]));
    }

    /// Pull secrets survive YAML↔JSON and whitespace in base64.
    #[test]
    fn pull_secret_json_and_wrapped_base64(user in "[a-z]{1,10}", pass in "[!-~]{1,20}", width in 10usize..80) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let cfg = serde_json::json!({"auths": {"reg.example.com:5000": {"auth": b64.encode(format!("{user}:{pass}"))}}});
        let enc = b64.encode(cfg.to_string());
        let wrapped: String = enc.as_bytes().chunks(width).map(|c| format!("    {}\n", std::str::from_utf8(c).unwrap())).collect();
        let yaml = format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: n\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: >-\n{wrapped}");
        let s = read_pull_secret(&yaml).unwrap();
        let c = s.auths["reg.example.com:5000"].to_credential(String::new()).unwrap();
        prop_assert_eq!(c.username, user);
        prop_assert_eq!(c.password, pass);
    }
}

fn yaml_value(s: &str) -> serde_json::Value {
    yaml_serde::from_str(s).unwrap()
}
