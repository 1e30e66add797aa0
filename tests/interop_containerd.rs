//! Interop with containerd 1.6 (Debian `containerd`, `ctr`): the node-side image fetcher
//! of the seed's cluster, pulling from Berth with the CA named in a `hosts.toml`.
//!
//! Each test runs a private `containerd` (as root) with its own root, state, socket and a
//! minimal config (CRI and the snapshotters that need special filesystems disabled), so it
//! never touches a system containerd. Images are pushed to Berth with skopeo, then pulled
//! and unpacked with `ctr images pull --snapshotter native --hosts-dir DIR`, where
//! `DIR/127.0.0.1:PORT/hosts.toml` names Berth's CA. The unpacked root filesystem is read
//! straight from the native snapshotter's directory (no mount needed) and compared with
//! the fixture, including a whiteout.
//!
//! Access control (issue 3): pushes log in as the harness's administrator; pulls from the
//! public project `library` stay anonymous (containerd fetches an anonymous token), and a
//! private project is pulled with `ctr images pull --user`.
//!
//! Every process started here is stopped by PID when its guard drops, pass or fail.
//! A missing `containerd`, `ctr` or `skopeo` is a failure, never a skip.

mod common;
mod fixtures;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::containerd::Containerd;
use common::{Berth, need, run_cmd};
use fixtures::Layout;

const X509_UNKNOWN_CA: &str = "x509: certificate signed by unknown authority";
const TIMEOUT: Duration = Duration::from_secs(180);

fn start_registry() -> Berth {
    Berth::start_bin_in(
        &common::server_bin(),
        tempfile::tempdir().expect("tempdir"),
        &[],
    )
}

/// Push with skopeo as the administrator (pushes always need a login).
fn push(reg: &Berth, layout: &Layout, target: &str, all: bool) {
    need("skopeo");
    let cert_dir = reg.cert_dir();
    let auth_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("skopeo");
    cmd.env("REGISTRY_AUTH_FILE", auth_dir.path().join("auth.json"))
        .env("DOCKER_CONFIG", auth_dir.path())
        .args(["--insecure-policy", "copy"]);
    if all {
        cmd.arg("--all");
    }
    cmd.arg("--dest-creds")
        .arg(common::admin_creds())
        .arg("--dest-cert-dir")
        .arg(&cert_dir)
        .arg(layout.oci_ref())
        .arg(format!("docker://{}/{target}", reg.host()));
    run_cmd(&mut cmd, TIMEOUT).ok();
}

/// `DIR/HOST/hosts.toml` for the registry over HTTPS, as containerd's `--hosts-dir`
/// expects, naming the registry's CA when `with_ca`. (Without any hosts.toml containerd
/// talks plain HTTP to 127.0.0.1, so the untrusted case needs one that says `https`.)
fn hosts_dir(reg: &Berth, under: &Path, with_ca: bool) -> PathBuf {
    let dir = under.join(if with_ca {
        "hosts-ca.d"
    } else {
        "hosts-noca.d"
    });
    let host_dir = dir.join(reg.host());
    fs::create_dir_all(&host_dir).unwrap();
    let host = reg.host();
    let mut toml = format!(
        "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    if with_ca {
        toml += &format!("  ca = \"{}\"\n", reg.ca_path().display());
    }
    fs::write(host_dir.join("hosts.toml"), toml).unwrap();
    dir
}

/// Check the unpacked root filesystem against the fixture.
fn assert_rootfs(rootfs: &Path, arch: &str) {
    for (path, content) in fixtures::EXPECTED_FILES {
        let got = fs::read_to_string(rootfs.join(path))
            .unwrap_or_else(|e| panic!("{path} in the unpacked image ({}): {e}", rootfs.display()));
        assert_eq!(&got, content, "{path}");
    }
    for path in fixtures::ABSENT_FILES {
        assert!(
            !rootfs.join(path).exists(),
            "{path} should have been removed by a whiteout"
        );
    }
    assert!(
        !rootfs.join("usr/share/berth/.wh.old.txt").exists(),
        "the whiteout file itself must not be unpacked"
    );
    let (link, target) = fixtures::SYMLINK;
    assert_eq!(fs::read_link(rootfs.join(link)).unwrap(), Path::new(target));
    assert_eq!(
        fs::metadata(rootfs.join("usr/share/berth/noise.bin"))
            .unwrap()
            .len(),
        fixtures::NOISE_LEN as u64
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/berth-arch")).unwrap(),
        format!("linux/{arch}\n")
    );
}

#[test]
fn ctr_pulls_and_unpacks_with_the_ca_from_hosts_toml() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    push(&reg, &layout, "library/demo:v1", false);
    let ctd = Containerd::start();
    let image_ref = format!("{}/library/demo:v1", reg.host());

    // The seed's failure on a node that does not trust the registry's CA.
    let no_ca = hosts_dir(&reg, tmp.path(), false);
    let no_ca = no_ca.to_str().unwrap();
    let untrusted = ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        no_ca,
        "--snapshotter",
        "native",
        &image_ref,
    ]);
    assert!(
        !untrusted.success(),
        "pull without the CA succeeded:\n{}",
        untrusted.stdout
    );
    assert!(
        untrusted.stderr.contains(X509_UNKNOWN_CA),
        "pull without the CA should fail with `{X509_UNKNOWN_CA}`, got:\n{}",
        untrusted.stderr
    );

    // With the CA in hosts.toml it pulls and unpacks.
    let hosts = hosts_dir(&reg, tmp.path(), true);
    let hosts = hosts.to_str().unwrap();
    let pull = ctd
        .ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts,
            "--snapshotter",
            "native",
            "--print-chainid",
            &image_ref,
        ])
        .ok();
    let image = &layout.images[0];
    let chain_id = image.chain_id();
    assert!(
        pull.stdout.contains(&chain_id),
        "ctr should report chain ID {chain_id}:\n{}",
        pull.stdout
    );

    let ls = ctd.ctr(&["images", "ls"]).ok();
    let line = ls
        .stdout
        .lines()
        .find(|l| l.starts_with(&image_ref))
        .unwrap_or_else(|| panic!("{image_ref} not in `ctr images ls`:\n{}", ls.stdout));
    assert!(
        line.contains(layout.manifest_digest()),
        "ctr images ls: {line}"
    );

    let check = ctd
        .ctr(&["images", "check", "--snapshotter", "native", "--quiet"])
        .ok();
    assert!(
        check.stdout.lines().any(|l| l.trim() == image_ref),
        "image not fully downloaded and unpacked (`ctr images check -q`):\n{}",
        check.stdout
    );

    // Every blob is in containerd's content store.
    let content = ctd.ctr(&["content", "ls", "--quiet"]).ok();
    for digest in layout.all_blob_digests() {
        assert!(
            content.stdout.contains(&digest),
            "{digest} not in the content store"
        );
    }

    assert_rootfs(&ctd.snapshot_dir(&chain_id), &image.architecture);

    // Pull again by digest: already present, still succeeds.
    let by_digest = format!("{}/library/demo@{}", reg.host(), layout.manifest_digest());
    ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts,
        "--snapshotter",
        "native",
        &by_digest,
    ])
    .ok();
}

#[test]
fn ctr_pulls_the_host_platform_from_a_multi_arch_index() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::multi_arch_layout(&tmp.path().join("src"), "multi");
    push(&reg, &layout, "library/multi:v1", true);
    let ctd = Containerd::start();
    let image_ref = format!("{}/library/multi:v1", reg.host());
    let hosts = hosts_dir(&reg, tmp.path(), true);
    let hosts = hosts.to_str().unwrap();

    ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts,
        "--snapshotter",
        "native",
        &image_ref,
    ])
    .ok();
    let ls = ctd.ctr(&["images", "ls"]).ok();
    let line = ls
        .stdout
        .lines()
        .find(|l| l.starts_with(&image_ref))
        .expect("image listed");
    assert!(
        line.contains(layout.manifest_digest()),
        "the image is the index: {line}"
    );

    let host = fixtures::host_arch();
    let image = layout
        .images
        .iter()
        .find(|i| i.architecture == host)
        .unwrap_or_else(|| panic!("fixture has no {host} image"));
    assert_rootfs(&ctd.snapshot_dir(&image.chain_id()), host);

    // The other platform's manifest can be fetched too (content only, no unpack).
    let other = layout
        .images
        .iter()
        .find(|i| i.architecture != host)
        .unwrap();
    let platform = format!("linux/{}", other.architecture);
    ctd.ctr(&[
        "content",
        "fetch",
        "--hosts-dir",
        hosts,
        "--platform",
        &platform,
        &image_ref,
    ])
    .ok();
    let content = ctd.ctr(&["content", "ls", "--quiet"]).ok();
    for layer in &other.layers {
        assert!(
            content.stdout.contains(&layer.digest),
            "{platform} layer {} not fetched",
            layer.digest
        );
    }
}

#[test]
fn ctr_pulls_from_a_private_project_only_with_user() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    // Auto-created on push, private.
    push(&reg, &layout, "private-prj/demo:v1", false);
    let ctd = Containerd::start();
    let image_ref = format!("{}/private-prj/demo:v1", reg.host());
    let hosts = hosts_dir(&reg, tmp.path(), true);
    let hosts = hosts.to_str().unwrap();

    // Anonymously: refused, nothing stored.
    let anon = ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts,
        "--snapshotter",
        "native",
        &image_ref,
    ]);
    assert!(
        !anon.success(),
        "anonymous pull from a private project succeeded:\n{}",
        anon.stdout
    );
    assert!(
        anon.stderr.contains("401")
            || anon.stderr.contains("403")
            || anon.stderr.contains("unauthorized")
            || anon.stderr.contains("denied"),
        "anonymous pull from a private project: expected an authorization error, got:\n{}",
        anon.stderr
    );
    let ls = ctd.ctr(&["images", "ls", "--quiet"]).ok();
    assert!(
        !ls.stdout.lines().any(|l| l.trim() == image_ref),
        "a refused pull left an image behind:\n{}",
        ls.stdout
    );

    // A wrong password is refused too.
    let wrong = format!("{}:not-the-password", common::ADMIN_USER);
    let bad = ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts,
        "--user",
        &wrong,
        "--snapshotter",
        "native",
        &image_ref,
    ]);
    assert!(!bad.success(), "pull with a wrong password succeeded");

    // With `--user admin:PASSWORD` it pulls and unpacks.
    let creds = common::admin_creds();
    let pull = ctd
        .ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts,
            "--user",
            &creds,
            "--snapshotter",
            "native",
            "--print-chainid",
            &image_ref,
        ])
        .ok();
    let image = &layout.images[0];
    let chain_id = image.chain_id();
    assert!(
        pull.stdout.contains(&chain_id),
        "ctr should report chain ID {chain_id}:\n{}",
        pull.stdout
    );
    let ls = ctd.ctr(&["images", "ls"]).ok();
    let line = ls
        .stdout
        .lines()
        .find(|l| l.starts_with(&image_ref))
        .unwrap_or_else(|| panic!("{image_ref} not in `ctr images ls`:\n{}", ls.stdout));
    assert!(
        line.contains(layout.manifest_digest()),
        "ctr images ls: {line}"
    );
    assert_rootfs(&ctd.snapshot_dir(&chain_id), &image.architecture);
}

/// What `berth login` + `berth push` put in the registry, containerd pulls and unpacks.
#[test]
fn ctr_pulls_what_berth_pushed() {
    let reg = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    let config_dir = tmp.path().join("docker-config");
    let ca = reg.ca_path();
    let berth = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new("sh");
        // run_cmd gives children no stdin: feed --password-stdin from a file instead.
        let input = tmp.path().join("stdin");
        std::fs::write(&input, stdin.unwrap_or("")).unwrap();
        cmd.env("DOCKER_CONFIG", &config_dir)
            .arg("-c")
            .arg("exec \"$0\" \"$@\" < \"$BERTH_STDIN\"")
            .arg(common::berth_bin())
            .args(args)
            .env("BERTH_STDIN", &input);
        run_cmd(&mut cmd, Duration::from_secs(120))
    };
    let host = reg.host();
    berth(
        &[
            "login",
            &host,
            "-u",
            common::ADMIN_USER,
            "--password-stdin",
            "--ca-bundle",
            ca.to_str().unwrap(),
        ],
        Some(common::ADMIN_PASSWORD),
    )
    .ok();
    let target = format!("{host}/library/from-berth:v1");
    berth(
        &[
            "push",
            &layout.oci_ref(),
            &target,
            "--ca-bundle",
            ca.to_str().unwrap(),
        ],
        None,
    )
    .ok();

    let ctd = Containerd::start();
    let hosts = hosts_dir(&reg, tmp.path(), true);
    let pull = ctd
        .ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--snapshotter",
            "native",
            "--print-chainid",
            &target,
        ])
        .ok();
    let image = &layout.images[0];
    let chain_id = image.chain_id();
    assert!(
        pull.stdout.contains(&chain_id),
        "ctr should report chain ID {chain_id}:\n{}",
        pull.stdout
    );
    assert_rootfs(&ctd.snapshot_dir(&chain_id), &image.architecture);
}

/// Issue 13: a containerd user pushing to a registry whose storage is full is told so.
/// The registry runs with a reserve as large as its filesystem (so every new upload is
/// refused up front with 507 Insufficient Storage, as below a real disk's reserve).
#[test]
fn ctr_push_to_a_full_registry_names_the_cause() {
    let source = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("src"), "v1");
    push(&source, &layout, "library/demo:v1", false);
    let config = tmp.path().join("full.toml");
    fs::write(
        &config,
        "[limits]\nmin_free_percent = 100.0\nmin_free_bytes = 18446744073709551615\n",
    )
    .unwrap();
    let full = Berth::start_bin_in(
        &common::server_bin(),
        tempfile::tempdir().unwrap(),
        &["--config", config.to_str().unwrap()],
    );

    let ctd = Containerd::start();
    let hosts = hosts_dir(&source, tmp.path(), true);
    let local = format!("{}/library/demo:v1", source.host());
    ctd.ctr(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts.to_str().unwrap(),
        "--snapshotter",
        "native",
        &local,
    ])
    .ok();
    let host_dir = hosts.join(full.host());
    fs::create_dir_all(&host_dir).unwrap();
    fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{h}\"\n\n[host.\"https://{h}\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n  ca = \"{ca}\"\n",
            h = full.host(),
            ca = full.ca_path().display()
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = ctd.ctr(&[
        "images",
        "push",
        "--hosts-dir",
        hosts.to_str().unwrap(),
        "--user",
        &common::admin_creds(),
        &format!("{}/library/demo:v1", full.host()),
        &local,
    ]);
    let took = started.elapsed();
    eprintln!("ctr push to a full registry ({took:?}): {out:?}");
    assert!(!out.success(), "{out:?}");
    let said = format!("{}{}", out.stdout, out.stderr);
    // containerd 1.6 prints the status line only (`ctr: unexpected status: 507
    // Insufficient Storage`), not the error body: the status must say it by itself, which
    // 507 does and 503 ("Service Unavailable") would not. It does not retry.
    assert!(said.contains("507 Insufficient Storage"), "{said}");
    assert!(took < Duration::from_secs(60), "ctr gave up after {took:?}");
}
