//! config.json with `credsStore` / `credHelpers`: the `docker-credential-*` get/store/erase
//! protocol on stdin/stdout, driven against a helper script written by the test.

use std::os::unix::fs::PermissionsExt;

use berth_client::DockerConfig;

const HELPER: &str = r#"#!/bin/sh
# A minimal docker-credential helper keeping one entry per server URL in $STORE_DIR.
set -e
verb="$1"
input=$(cat)
case "$verb" in
  store)
    url=$(printf '%s' "$input" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p')
    key=$(printf '%s' "$url" | tr -c 'a-zA-Z0-9' '_')
    printf '%s' "$input" > "$STORE_DIR/$key"
    ;;
  get)
    key=$(printf '%s' "$input" | tr -c 'a-zA-Z0-9' '_')
    if [ -f "$STORE_DIR/$key" ]; then cat "$STORE_DIR/$key"; else echo "credentials not found in native keychain"; exit 1; fi
    ;;
  erase)
    key=$(printf '%s' "$input" | tr -c 'a-zA-Z0-9' '_')
    if [ -f "$STORE_DIR/$key" ]; then rm "$STORE_DIR/$key"; else echo "credentials not found in native keychain"; exit 1; fi
    ;;
  *) exit 2 ;;
esac
"#;

#[test]
fn creds_store_and_cred_helpers_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    let store = d.path().join("store");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&store).unwrap();
    for name in ["docker-credential-teststore", "docker-credential-perhost"] {
        let p = bin.join(name);
        std::fs::write(&p, HELPER).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // This test binary has a single test, so changing the environment is safe.
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    unsafe {
        std::env::set_var("PATH", path);
        std::env::set_var("STORE_DIR", &store);
    }

    let cfg_dir = d.path().join("docker");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::write(
        cfg_dir.join("config.json"),
        r#"{"credsStore": "teststore", "credHelpers": {"special.example:5000": "perhost"}}"#,
    )
    .unwrap();
    let mut cfg = DockerConfig::load_dir(&cfg_dir).unwrap();
    assert_eq!(
        cfg.store("reg.example:443", "alice", "pw1").unwrap(),
        "docker-credential-teststore"
    );
    assert_eq!(
        cfg.store("special.example:5000", "bob", "pw2").unwrap(),
        "docker-credential-perhost"
    );
    // No secret in config.json itself.
    let text = std::fs::read_to_string(cfg_dir.join("config.json")).unwrap();
    assert!(!text.contains("pw1") && !text.contains("pw2"), "{text}");

    let cfg = DockerConfig::load_dir(&cfg_dir).unwrap();
    let a = cfg.lookup("reg.example:443", "x/y").unwrap();
    assert_eq!(
        (a[0].username.as_str(), a[0].password.as_str()),
        ("alice", "pw1")
    );
    assert!(a[0].source.contains("docker-credential-teststore"));
    let b = cfg.lookup("special.example:5000", "x").unwrap();
    assert_eq!(
        (b[0].username.as_str(), b[0].password.as_str()),
        ("bob", "pw2")
    );
    assert!(cfg.lookup("unknown.example", "x").unwrap().is_empty());

    let mut cfg = cfg;
    assert!(cfg.erase("reg.example:443").unwrap());
    assert!(cfg.lookup("reg.example:443", "x").unwrap().is_empty());
    assert!(!cfg.erase("reg.example:443").unwrap());

    // A helper that is not installed: an actionable error.
    std::fs::write(
        cfg_dir.join("config.json"),
        r#"{"credsStore": "nosuchhelper"}"#,
    )
    .unwrap();
    let cfg = DockerConfig::load_dir(&cfg_dir).unwrap();
    let e = cfg.lookup("reg.example", "x").unwrap_err().to_string();
    assert!(e.contains("docker-credential-nosuchhelper"), "{e}");
}
