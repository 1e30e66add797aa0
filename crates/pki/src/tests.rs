use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};

use super::*;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Verifies `server_pem` for `name` with rustls/webpki (aws-lc-rs), trusting
/// only `ca_pem`.
fn verify(ca_pem: &str, server_pem: &str, name: &str) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    for ca in parse_pem_bundle(ca_pem.as_bytes()).unwrap() {
        roots.add(ca).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .unwrap();
    let chain = parse_pem_bundle(server_pem.as_bytes()).unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now())
        .map(|_| ())
}

fn x509_of(pem: &str) -> Vec<u8> {
    parse_pem_bundle(pem.as_bytes()).unwrap()[0].to_vec()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn ca_is_a_ten_year_p256_ca() {
    let ca = generate_ca("Test CA").unwrap();
    assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let der = x509_of(&ca.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.digital_signature());
    let subject = cert.subject().to_string();
    assert!(subject.contains("CN=Test CA"), "{subject}");
    assert!(subject.contains("O=Berth"), "{subject}");
    assert_eq!(cert.subject(), cert.issuer());
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert!((3650..=3651).contains(&days), "{days} days");
    // ECDSA with SHA-256 over P-256.
    assert_eq!(
        cert.signature_algorithm.algorithm,
        x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256
    );
    assert!(matches!(
        generate_ca("  "),
        Err(PkiError::InvalidCommonName(_))
    ));
}

#[test]
fn server_cert_chains_to_ca_for_its_names_only() {
    let ca = generate_ca("Test CA").unwrap();
    let server = issue_server_cert(
        &ca,
        &names(&["registry.test", "Mirror.Example.COM"]),
        &[
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    )
    .unwrap();

    verify(&ca.cert_pem, &server.cert_pem, "registry.test").unwrap();
    verify(&ca.cert_pem, &server.cert_pem, "mirror.example.com").unwrap();
    verify(&ca.cert_pem, &server.cert_pem, "127.0.0.1").unwrap();
    verify(&ca.cert_pem, &server.cert_pem, "::1").unwrap();

    let err = verify(&ca.cert_pem, &server.cert_pem, "other.test").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
                | rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        ),
        "{err:?}"
    );
    assert!(verify(&ca.cert_pem, &server.cert_pem, "10.0.0.1").is_err());

    // A different CA does not vouch for it.
    let other_ca = generate_ca("Other CA").unwrap();
    let err = verify(&other_ca.cert_pem, &server.cert_pem, "registry.test").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

#[test]
fn server_cert_fields() {
    let ca = generate_ca("Test CA").unwrap();
    let server = issue_server_cert(
        &ca,
        &names(&["registry.test", "registry.test", "alt.test"]),
        &[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))],
    )
    .unwrap();
    let der = x509_of(&server.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert!((700..=825).contains(&days), "{days} days");
    assert!(cert.issuer().to_string().contains("CN=Test CA"));

    let summary = describe_cert(&server.cert_pem).unwrap();
    assert_eq!(summary.subject_cn.as_deref(), Some("registry.test"));
    assert_eq!(summary.dns_names, names(&["registry.test", "alt.test"]));
    assert_eq!(summary.ips, vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))]);
    assert!(summary.not_after.ends_with('Z'), "{}", summary.not_after);
    assert!(
        time::OffsetDateTime::parse(
            &summary.not_after,
            &time::format_description::well_known::Rfc3339
        )
        .is_ok()
    );
}

#[test]
fn ip_only_cert_uses_ip_as_cn() {
    let ca = generate_ca("Test CA").unwrap();
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let server = issue_server_cert(&ca, &[], &[ip]).unwrap();
    let summary = describe_cert(&server.cert_pem).unwrap();
    assert_eq!(summary.subject_cn.as_deref(), Some("127.0.0.1"));
    assert!(summary.dns_names.is_empty());
    verify(&ca.cert_pem, &server.cert_pem, "127.0.0.1").unwrap();

    assert!(matches!(
        issue_server_cert(&ca, &[], &[]),
        Err(PkiError::NoNames)
    ));
}

#[test]
fn wildcard_names_work() {
    let ca = generate_ca("Test CA").unwrap();
    let server = issue_server_cert(&ca, &names(&["*.registry.test"]), &[]).unwrap();
    verify(&ca.cert_pem, &server.cert_pem, "eu.registry.test").unwrap();
    assert!(verify(&ca.cert_pem, &server.cert_pem, "a.b.registry.test").is_err());
}

#[test]
fn invalid_dns_names_are_rejected() {
    let ca = generate_ca("Test CA").unwrap();
    for bad in [
        "",
        ".",
        "has space.test",
        "under_score.test",
        "-lead.test",
        "trail-.test",
        "double..dot",
        "a.*.test",
        "*",
        "*.",
        "**.test",
        "foo*.test",
        "10.0.0.1",
        "::1",
        "1.2.3.4.5",
        "bücher.test",
        &"a".repeat(64),
        &format!("{}.test", ["abcdefghi"; 26].join(".")),
    ] {
        let err = issue_server_cert(&ca, &[bad.to_string()], &[]).unwrap_err();
        assert!(
            matches!(&err, PkiError::InvalidDnsName { name, .. } if name == bad),
            "{bad:?}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("invalid DNS name"), "{msg}");
    }
    for good in [
        "localhost",
        "registry",
        "my-registry.example.com",
        "xn--bcher-kva.test",
        "*.example.com",
        "fqdn.example.com.",
        "1host.test",
        &"a".repeat(63),
    ] {
        issue_server_cert(&ca, &[good.to_string()], &[])
            .unwrap_or_else(|e| panic!("{good:?}: {e}"));
    }
    // A trailing dot is dropped and names are lower-cased.
    let server = issue_server_cert(&ca, &names(&["Reg.Example.COM."]), &[]).unwrap();
    assert_eq!(
        describe_cert(&server.cert_pem).unwrap().dns_names,
        names(&["reg.example.com"])
    );
}

#[test]
fn ca_key_mismatch_and_non_ca_are_rejected() {
    let ca = generate_ca("Test CA").unwrap();
    let other = generate_ca("Other CA").unwrap();
    let mixed = CertPair {
        cert_pem: ca.cert_pem.clone(),
        key_pem: other.key_pem.clone(),
    };
    let err = issue_server_cert(&mixed, &names(&["r.test"]), &[]).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err:?}");

    let leaf = issue_server_cert(&ca, &names(&["r.test"]), &[]).unwrap();
    let err = issue_server_cert(&leaf, &names(&["x.test"]), &[]).unwrap_err();
    assert!(matches!(err, PkiError::NotACa { .. }), "{err:?}");

    let garbage = CertPair {
        cert_pem: ca.cert_pem.clone(),
        key_pem: "not a key".to_string(),
    };
    let err = issue_server_cert(&garbage, &names(&["r.test"]), &[]).unwrap_err();
    assert!(matches!(err, PkiError::InvalidKey { .. }), "{err:?}");
}

#[test]
fn init_dir_creates_files_with_modes_and_reuses_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs").join("nested");
    let files = init_dir(
        &dir,
        &names(&["registry.test"]),
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
    )
    .unwrap();
    assert_eq!(files, CertFiles::in_dir(&dir));
    assert_eq!(files.ca_crt, dir.join("ca.crt"));
    assert_eq!(files.ca_key, dir.join("ca.key"));
    assert_eq!(files.server_crt, dir.join("server.crt"));
    assert_eq!(files.server_key, dir.join("server.key"));
    assert_eq!(mode(&files.ca_key), 0o600);
    assert_eq!(mode(&files.server_key), 0o600);
    assert_eq!(mode(&files.ca_crt) & 0o600, 0o600);
    assert_eq!(mode(&files.server_crt) & 0o600, 0o600);

    let ca_pem = fs::read_to_string(&files.ca_crt).unwrap();
    let server_pem = fs::read_to_string(&files.server_crt).unwrap();
    let ca_summary = describe_cert(&ca_pem).unwrap();
    assert!(ca_summary.subject_cn.unwrap().starts_with("Berth CA"));
    verify(&ca_pem, &server_pem, "registry.test").unwrap();
    verify(&ca_pem, &server_pem, "127.0.0.1").unwrap();

    // Second run with other names: same CA, new server certificate.
    let ca_bytes = fs::read(&files.ca_crt).unwrap();
    let ca_key_bytes = fs::read(&files.ca_key).unwrap();
    let server_key_before = fs::read(&files.server_key).unwrap();
    init_dir(&dir, &names(&["new.test"]), &[]).unwrap();
    assert_eq!(fs::read(&files.ca_crt).unwrap(), ca_bytes);
    assert_eq!(fs::read(&files.ca_key).unwrap(), ca_key_bytes);
    assert_ne!(fs::read(&files.server_key).unwrap(), server_key_before);
    assert_eq!(mode(&files.server_key), 0o600);
    let server_pem = fs::read_to_string(&files.server_crt).unwrap();
    verify(&ca_pem, &server_pem, "new.test").unwrap();
    assert!(verify(&ca_pem, &server_pem, "registry.test").is_err());

    // The key written is the key of the certificate: rustls accepts the pair.
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(&fs::read(&files.server_key).unwrap())
            .unwrap();
    let chain = parse_pem_bundle(server_pem.as_bytes()).unwrap();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing_key = provider.key_provider.load_private_key(key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
    certified.keys_match().unwrap();

    // No temporary files are left behind.
    let mut entries: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["ca.crt", "ca.key", "server.crt", "server.key"]);
}

#[test]
fn init_dir_validates_names_before_touching_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let err = init_dir(&dir, &names(&["bad name"]), &[]).unwrap_err();
    assert!(matches!(err, PkiError::InvalidDnsName { .. }));
    assert!(!dir.exists());
}

#[test]
fn init_dir_refuses_half_a_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let files = init_dir(tmp.path(), &names(&["r.test"]), &[]).unwrap();
    fs::remove_file(&files.ca_key).unwrap();
    let err = init_dir(tmp.path(), &names(&["r.test"]), &[]).unwrap_err();
    assert!(matches!(err, PkiError::IncompleteCa { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("ca.key") && msg.contains("ca.crt"), "{msg}");

    // A corrupt ca.crt is reported with its path.
    let ca = generate_ca("x").unwrap();
    fs::write(&files.ca_key, ca.key_pem).unwrap();
    fs::write(&files.ca_crt, "garbage").unwrap();
    let err = init_dir(tmp.path(), &names(&["r.test"]), &[]).unwrap_err();
    assert!(matches!(err, PkiError::NoCertificates { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&files.ca_crt.display().to_string()),
        "{err}"
    );
}

#[test]
fn init_dir_uses_a_supplied_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = generate_ca("Corporate CA").unwrap();
    let files = CertFiles::in_dir(tmp.path());
    fs::write(&files.ca_crt, &ca.cert_pem).unwrap();
    fs::write(&files.ca_key, &ca.key_pem).unwrap();
    init_dir(tmp.path(), &names(&["r.test"]), &[]).unwrap();
    assert_eq!(fs::read_to_string(&files.ca_crt).unwrap(), ca.cert_pem);
    let server_pem = fs::read_to_string(&files.server_crt).unwrap();
    verify(&ca.cert_pem, &server_pem, "r.test").unwrap();
}

#[test]
fn ensure_dir_keeps_existing_server_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files = ensure_dir(dir, &names(&["first.test"]), &[]).unwrap();
    let crt = fs::read(&files.server_crt).unwrap();
    let key = fs::read(&files.server_key).unwrap();

    ensure_dir(dir, &names(&["second.test"]), &[]).unwrap();
    assert_eq!(fs::read(&files.server_crt).unwrap(), crt);
    assert_eq!(fs::read(&files.server_key).unwrap(), key);

    // Server files supplied without any CA are left alone too.
    let other = tempfile::tempdir().unwrap();
    let f = CertFiles::in_dir(other.path());
    fs::write(&f.server_crt, "user cert").unwrap();
    fs::write(&f.server_key, "user key").unwrap();
    ensure_dir(other.path(), &names(&["x.test"]), &[]).unwrap();
    assert!(!f.ca_crt.exists());

    // A missing key makes ensure_dir issue a fresh pair from the same CA.
    let ca = fs::read(&files.ca_crt).unwrap();
    fs::remove_file(&files.server_key).unwrap();
    ensure_dir(dir, &names(&["third.test"]), &[]).unwrap();
    assert_eq!(fs::read(&files.ca_crt).unwrap(), ca);
    let server_pem = fs::read_to_string(&files.server_crt).unwrap();
    verify(&String::from_utf8(ca).unwrap(), &server_pem, "third.test").unwrap();
}

#[test]
fn parse_pem_bundle_reads_three_certs() {
    let certs: Vec<CertPair> = (0..3)
        .map(|i| generate_ca(&format!("CA {i}")).unwrap())
        .collect();
    let mut bundle = String::from("# comment before\n");
    for c in &certs {
        bundle.push_str(&c.cert_pem);
        bundle.push('\n');
    }
    // A key block in the middle is skipped, not an error.
    bundle.push_str(&certs[0].key_pem);
    let parsed = parse_pem_bundle(bundle.as_bytes()).unwrap();
    assert_eq!(parsed.len(), 3);
    for (der, c) in parsed.iter().zip(&certs) {
        assert_eq!(der.as_ref(), x509_of(&c.cert_pem).as_slice());
    }

    // Concatenated without newlines in between works too.
    let tight: String = certs.iter().map(|c| c.cert_pem.as_str()).collect();
    assert_eq!(parse_pem_bundle(tight.as_bytes()).unwrap().len(), 3);

    let err = parse_pem_bundle(b"").unwrap_err();
    assert!(matches!(err, PkiError::NoCertificates { .. }));
    let err = parse_pem_bundle(certs[0].key_pem.as_bytes()).unwrap_err();
    assert!(matches!(err, PkiError::NoCertificates { .. }));
    assert!(err.to_string().contains("BEGIN CERTIFICATE"));
}

#[test]
fn describe_cert_rejects_garbage() {
    assert!(describe_cert("nope").is_err());
    let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let err = describe_cert(bad).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCert { .. }), "{err:?}");
}

#[test]
fn default_names_include_localhost_and_loopback() {
    let (dns, ips) = default_names();
    assert_eq!(dns[0], "localhost");
    assert!(dns.len() <= 2);
    for name in &dns {
        validate_dns_name(name).unwrap();
    }
    assert_eq!(
        ips,
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        ]
    );
    // They are always usable for a certificate.
    let ca = generate_ca("Test CA").unwrap();
    issue_server_cert(&ca, &dns, &ips).unwrap();
}

#[test]
fn trust_instructions_cover_every_client() {
    let text = trust_instructions(
        Path::new("/var/lib/berth/certs/ca.crt"),
        "registry.test:5000",
    );
    for needle in [
        "sudo mkdir -p /etc/docker/certs.d/registry.test:5000",
        "sudo cp /var/lib/berth/certs/ca.crt /etc/docker/certs.d/registry.test:5000/ca.crt",
        "/etc/containerd/certs.d/registry.test:5000/hosts.toml",
        "server = \"https://registry.test:5000\"",
        "[host.\"https://registry.test:5000\"]",
        "ca = \"/etc/containerd/certs.d/registry.test:5000/ca.crt\"",
        "/etc/containers/certs.d/registry.test:5000/ca.crt",
        "/usr/local/share/ca-certificates/berth-registry.test.crt",
        "update-ca-certificates",
        "kubectl -n kube-system get configmap image-fetcher-ca-bundle -o yaml",
        "berth kube ca-bundle --ca /var/lib/berth/certs/ca.crt",
        "--existing image-fetcher-ca-bundle.yaml | kubectl apply -f -",
        "concatenated",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    // The hosts.toml between the heredoc markers is valid, exact content.
    let start = text.find("<<'EOF'\n").unwrap() + "<<'EOF'\n".len();
    let end = start + text[start..].find("\nEOF\n").unwrap();
    assert_eq!(
        &text[start..end],
        "server = \"https://registry.test:5000\"\n\
         \n\
         [host.\"https://registry.test:5000\"]\n\
         \x20 capabilities = [\"pull\", \"resolve\", \"push\"]\n\
         \x20 ca = \"/etc/containerd/certs.d/registry.test:5000/ca.crt\""
    );

    // Relative paths become absolute; odd characters are quoted; IPv6 hosts.
    let text = trust_instructions(Path::new("my certs/ca.crt"), "[::1]:5000");
    assert!(text.contains("/my certs/ca.crt'"), "{text}");
    assert!(text.contains("berth---1.crt"), "{text}");
}

#[test]
fn errors_name_the_file_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("file");
    fs::write(&blocker, "x").unwrap();
    let err = init_dir(&blocker.join("certs"), &names(&["r.test"]), &[]).unwrap_err();
    assert!(matches!(err, PkiError::CreateDir { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&blocker.join("certs").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("choose another directory"), "{msg}");
}
