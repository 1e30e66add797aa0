//! `berth` client commands against the real Berth registry (HTTPS with its own CA): the
//! seed's unknown-authority failure and its fixes (CA bundle, ConfigMap, certs.d, hosts.toml,
//! insecure registries), push/pull/copy/tag/inspect/ls/rm round trips, docker-archive, a
//! corrupted blob, and skopeo reading what `berth push` wrote.

mod common;
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ADMIN_PASSWORD, ADMIN_USER, Berth, CmdOutput, berth_bin, need, run_cmd};

/// `berth login HOST -u admin` (password from BERTH_PASSWORD) into `tmp/docker`.
fn admin_login(tmp: &Path, host: &str, extra: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(berth_bin());
    cmd.args(["login", host, "-u", ADMIN_USER])
        .args(extra)
        .args(iso(tmp))
        .env("DOCKER_CONFIG", tmp.join("docker"))
        .env("BERTH_PASSWORD", ADMIN_PASSWORD);
    run_cmd(&mut cmd, Duration::from_secs(60))
}

/// Arguments that keep a command away from this machine's /etc trust settings.
fn iso(tmp: &Path) -> Vec<String> {
    let none = tmp.join("none");
    vec![
        "--certs-dir".into(),
        none.display().to_string(),
        "--hosts-dir".into(),
        none.display().to_string(),
        "--daemon-json".into(),
        none.join("daemon.json").display().to_string(),
    ]
}

fn berth(tmp: &Path, args: &[&str], with_iso: bool) -> CmdOutput {
    let mut cmd = Command::new(berth_bin());
    cmd.args(args)
        .env("DOCKER_CONFIG", tmp.join("docker"))
        .env("BERTH_LOG", "warn");
    if with_iso {
        cmd.args(iso(tmp));
    }
    run_cmd(&mut cmd, Duration::from_secs(180))
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A second, unrelated CA (the "first certificate" of the seed's bundle).
fn other_ca(tmp: &Path) -> PathBuf {
    let dir = tmp.join("other-ca");
    berth(
        tmp,
        &["cert", "init", "--out", &p(&dir), "--host", "other.invalid"],
        false,
    )
    .ok();
    dir.join("ca.crt")
}

fn bundle_with_ca_second(tmp: &Path, reg: &Berth) -> PathBuf {
    let mut pem = std::fs::read(other_ca(tmp)).unwrap();
    pem.extend_from_slice(&reg.ca_pem());
    let path = tmp.join("bundle.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

#[test]
fn seed_failure_then_fixed_by_bundle_and_configmap() {
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = fixtures::image_layout(&t.join("src"), "v1");
    let host = reg.host();
    let target = format!("{host}/library/nginx:latest");

    // The seed's failure: nothing trusts Berth's CA.
    let out = berth(t, &["push", &layout.oci_ref(), &target], true);
    assert!(!out.success(), "{out:?}");
    let e = &out.stderr;
    for needle in [
        "certificate signed by unknown authority",
        host.as_str(),
        "Berth CA",
        "--ca-bundle",
        &format!("/etc/docker/certs.d/{host}/ca.crt"),
        "image-fetcher-ca-bundle",
        "kube-system",
        "--ca-configmap",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }

    // Logging in fails the same way without the CA.
    let out = admin_login(t, &host, &[]);
    assert!(
        out.stderr
            .contains("certificate signed by unknown authority"),
        "{out:?}"
    );

    // The fix: the CA appended as the second certificate of a bundle.
    let bundle = bundle_with_ca_second(t, &reg);
    let out = admin_login(t, &host, &["--ca-bundle", &p(&bundle)]).ok();
    assert!(out.stdout.contains("Login Succeeded"), "{out:?}");
    let out = berth(
        t,
        &[
            "push",
            &layout.oci_ref(),
            &target,
            "--ca-bundle",
            &p(&bundle),
        ],
        true,
    )
    .ok();
    assert!(out.stdout.contains(layout.manifest_digest()), "{out:?}");

    // `library` is public: the pull works anonymously (another DOCKER_CONFIG).
    let anon = tempfile::tempdir().unwrap();
    let pulled = t.join("pulled");
    berth(
        anon.path(),
        &[
            "pull",
            &target,
            "--layout",
            &p(&pulled),
            "--ca-bundle",
            &p(&bundle),
        ],
        true,
    )
    .ok();
    assert_eq!(
        fixtures::find_tagged(&pulled, "latest").digest,
        layout.manifest_digest()
    );
    assert_eq!(fixtures::blob_digests(&pulled), layout.all_blob_digests());

    // The same through the ConfigMap the seed edits.
    let cm = berth(
        t,
        &[
            "kube",
            "ca-bundle",
            "--ca",
            &p(&other_ca(t)),
            "--ca",
            &p(&reg.ca_path()),
        ],
        false,
    )
    .ok();
    assert!(
        cm.stdout.contains("name: image-fetcher-ca-bundle"),
        "{}",
        cm.stdout
    );
    assert!(
        cm.stdout.contains("namespace: kube-system"),
        "{}",
        cm.stdout
    );
    assert_eq!(
        cm.stdout.matches("BEGIN CERTIFICATE").count(),
        2,
        "{}",
        cm.stdout
    );
    let cm_path = t.join("cm.yaml");
    std::fs::write(&cm_path, &cm.stdout).unwrap();
    let pulled2 = t.join("pulled2");
    berth(
        t,
        &[
            "pull",
            &target,
            "--layout",
            &p(&pulled2),
            "--ca-configmap",
            &p(&cm_path),
        ],
        true,
    )
    .ok();
    assert_eq!(fixtures::blob_digests(&pulled2), layout.all_blob_digests());

    // Appending again to the existing ConfigMap adds nothing.
    let again = berth(
        t,
        &[
            "kube",
            "ca-bundle",
            "--ca",
            &p(&reg.ca_path()),
            "--existing",
            &p(&cm_path),
        ],
        false,
    )
    .ok();
    assert_eq!(again.stdout.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(again.stderr.contains("0 added"), "{}", again.stderr);
}

#[test]
fn insecure_registry_entries_skip_verification_and_nothing_else_does() {
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = fixtures::image_layout(&t.join("src"), "v1");
    let target = format!("{}/library/app:v1", reg.host());
    admin_login(t, &reg.host(), &["--insecure-registry", &reg.host()]).ok();
    for entry in [reg.host(), "127.0.0.0/8".to_string()] {
        berth(
            t,
            &[
                "push",
                &layout.oci_ref(),
                &target,
                "--insecure-registry",
                &entry,
            ],
            true,
        )
        .ok();
    }
    // daemon.json insecure-registries
    let dj = t.join("daemon.json");
    std::fs::write(
        &dj,
        format!(r#"{{"insecure-registries": ["{}"]}}"#, reg.host()),
    )
    .unwrap();
    let mut cmd = Command::new(berth_bin());
    cmd.args([
        "inspect",
        &target,
        "--certs-dir",
        &p(&t.join("none")),
        "--hosts-dir",
    ])
    .arg(t.join("none"))
    .arg("--daemon-json")
    .arg(&dj)
    .env("DOCKER_CONFIG", t.join("docker"));
    let out = run_cmd(&mut cmd, Duration::from_secs(60)).ok();
    assert!(
        out.stdout.contains(layout.manifest_digest()),
        "{}",
        out.stdout
    );
    // A different port is not covered by the entry.
    let out = berth(
        t,
        &["inspect", &target, "--insecure-registry", "127.0.0.1:1"],
        true,
    );
    assert!(out.stderr.contains("unknown authority"), "{}", out.stderr);
}

#[test]
fn plain_http_registry_needs_an_insecure_entry() {
    let reg = Berth::start_with(&["--insecure-http"]);
    assert_eq!(reg.scheme, "http");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = fixtures::image_layout(&t.join("src"), "v1");
    let target = format!("{}/library/plain:v1", reg.host());
    let out = berth(t, &["push", &layout.oci_ref(), &target], true);
    assert!(!out.success());
    assert!(out.stderr.contains("speaks plain HTTP"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("--insecure-registry {}", reg.host())),
        "{}",
        out.stderr
    );
    admin_login(t, &reg.host(), &["--insecure-registry", &reg.host()]).ok();
    berth(
        t,
        &[
            "push",
            &layout.oci_ref(),
            &target,
            "--insecure-registry",
            &reg.host(),
        ],
        true,
    )
    .ok();
    let pulled = t.join("pulled");
    berth(
        t,
        &[
            "pull",
            &target,
            "--layout",
            &p(&pulled),
            "--insecure-registry",
            &reg.host(),
        ],
        true,
    )
    .ok();
    assert_eq!(fixtures::blob_digests(&pulled), layout.all_blob_digests());
}

#[test]
fn hostname_mismatch_names_the_certificate_names() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let certs = t.join("certs");
    berth(
        t,
        &[
            "cert",
            "init",
            "--out",
            &p(&certs),
            "--host",
            "registry.example.test",
        ],
        false,
    )
    .ok();
    let reg = Berth::start_with(&[
        "--tls-cert",
        &p(&certs.join("server.crt")),
        "--tls-key",
        &p(&certs.join("server.key")),
    ]);
    let out = berth(
        t,
        &[
            "inspect",
            &format!("{}/a/b:v1", reg.host()),
            "--ca-bundle",
            &p(&certs.join("ca.crt")),
        ],
        true,
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("registry.example.test"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("not 127.0.0.1"), "{}", out.stderr);
}

#[test]
fn trust_command_writes_certs_d_and_hosts_toml_that_work() {
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = fixtures::image_layout(&t.join("src"), "v1");
    let docker = t.join("docker-certs");
    let containerd = t.join("containerd-certs");
    let host = reg.host();
    berth(
        t,
        &[
            "trust",
            &host,
            "--ca",
            &p(&reg.ca_path()),
            "--docker-dir",
            &p(&docker),
            "--containerd-dir",
            &p(&containerd),
        ],
        false,
    )
    .ok();
    assert_eq!(
        std::fs::read(docker.join(&host).join("ca.crt")).unwrap(),
        reg.ca_pem()
    );
    let hosts = std::fs::read_to_string(containerd.join(&host).join("hosts.toml")).unwrap();
    assert!(
        hosts.contains(&format!("server = \"https://{host}\"")),
        "{hosts}"
    );
    let target = format!("{host}/library/app:v1");
    admin_login(t, &host, &["--ca-bundle", &p(&reg.ca_path())]).ok();
    let none = t.join("none");
    let base = |extra: &[&str]| -> CmdOutput {
        let mut cmd = Command::new(berth_bin());
        cmd.args(extra)
            .arg("--daemon-json")
            .arg(none.join("d.json"))
            .env("DOCKER_CONFIG", t.join("docker"));
        run_cmd(&mut cmd, Duration::from_secs(120))
    };
    base(&[
        "push",
        &layout.oci_ref(),
        &target,
        "--certs-dir",
        &p(&docker),
        "--hosts-dir",
        &p(&none),
    ])
    .ok();
    let out = base(&[
        "inspect",
        &target,
        "--hosts-dir",
        &p(&containerd),
        "--certs-dir",
        &p(&none),
    ])
    .ok();
    assert!(out.stdout.contains(layout.manifest_digest()));
}

#[test]
fn round_trips_copy_tag_archive_inspect_ls_rm() {
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ca = p(&reg.ca_path());
    let layout = fixtures::image_layout(&t.join("src"), "v1");
    let multi = fixtures::multi_arch_layout(&t.join("multi"), "m1");
    let h = reg.host();
    admin_login(t, &h, &["--ca-bundle", &ca]).ok();
    let run = |args: &[&str]| -> CmdOutput {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--ca-bundle", &ca]);
        berth(t, &a, true).ok()
    };
    // Chunked push.
    run(&[
        "push",
        &layout.oci_ref(),
        &format!("{h}/library/src-app:v1"),
        "--chunk-size",
        "20000",
    ]);
    // Registry to registry within Berth (cross-repository mount), then a retag.
    let out = run(&[
        "copy",
        &format!("{h}/library/src-app:v1"),
        &format!("{h}/library/dst-app:v2"),
    ]);
    assert!(
        out.stdout.contains(layout.manifest_digest()),
        "{}",
        out.stdout
    );
    run(&["tag", &format!("{h}/library/dst-app:v2"), "v3"]);
    // Through a docker-archive and back.
    let archive = t.join("app.tar");
    run(&[
        "copy",
        &format!("{h}/library/dst-app:v3"),
        &format!("docker-archive:{}", p(&archive)),
    ]);
    assert!(archive.is_file());
    run(&[
        "copy",
        &format!("docker-archive:{}", p(&archive)),
        &format!("{h}/library/fromtar:v1"),
    ]);
    let out = run(&["inspect", &format!("{h}/library/fromtar:v1")]);
    assert!(out.stdout.contains("Layers:     3"), "{}", out.stdout);
    // Same config digest as the original (layers and config survive the archive).
    let orig = run(&["inspect", &format!("{h}/library/src-app:v1")]);
    let cfg_line = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("Config:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(cfg_line(&orig.stdout), cfg_line(&out.stdout));
    // Raw manifest is byte-identical.
    let raw = run(&["inspect", "--raw", &format!("{h}/library/dst-app:v3")]);
    assert_eq!(
        raw.stdout.trim_end().as_bytes(),
        layout.top_bytes.trim_ascii_end()
    );
    // Multi-arch: push the whole index, pull one platform and the whole index.
    run(&["push", &multi.oci_ref(), &format!("{h}/library/multi:m1")]);
    let out = run(&["inspect", &format!("{h}/library/multi:m1")]);
    assert!(
        out.stdout.contains("linux/amd64") && out.stdout.contains("linux/arm64"),
        "{}",
        out.stdout
    );
    let arm = t.join("arm");
    run(&[
        "pull",
        &format!("{h}/library/multi:m1"),
        "--layout",
        &p(&arm),
        "--platform",
        "linux/arm64",
    ]);
    assert_eq!(
        fixtures::find_tagged(&arm, "m1").digest,
        multi.images[1].manifest.digest
    );
    let all = t.join("all");
    run(&[
        "copy",
        &format!("{h}/library/multi:m1"),
        &format!("oci:{}:m1", p(&all)),
    ]);
    assert_eq!(fixtures::blob_digests(&all), multi.all_blob_digests());
    // Listing.
    let repos = run(&["ls", &h]).stdout;
    for r in [
        "library/src-app",
        "library/dst-app",
        "library/fromtar",
        "library/multi",
    ] {
        assert!(repos.lines().any(|l| l == r), "{r} not in {repos}");
    }
    let tags = run(&["ls", &format!("{h}/library/dst-app")]).stdout;
    assert_eq!(tags.lines().collect::<Vec<_>>(), vec!["v2", "v3"]);
    // Delete.
    run(&["rm", &format!("{h}/library/dst-app:v3")]);
    let out = berth(
        t,
        &[
            "inspect",
            &format!("{h}/library/dst-app:v2"),
            "--ca-bundle",
            &ca,
        ],
        true,
    );
    assert!(
        !out.success() && out.stderr.contains("not found"),
        "{out:?}"
    );
}

#[test]
fn corrupted_blob_aborts_with_digest_mismatch() {
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ca = p(&reg.ca_path());
    let layout = fixtures::image_layout(&t.join("src"), "v1");
    let target = format!("{}/library/bad:v1", reg.host());
    admin_login(t, &reg.host(), &["--ca-bundle", &ca]).ok();
    berth(
        t,
        &["push", &layout.oci_ref(), &target, "--ca-bundle", &ca],
        true,
    )
    .ok();
    // Flip bytes of the biggest layer in the registry's storage (same length).
    let layer = layout.layer_digests()[0].clone();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let path = reg
        .data
        .path()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let out_dir = t.join("out");
    let out = berth(
        t,
        &[
            "pull",
            &target,
            "--layout",
            &p(&out_dir),
            "--ca-bundle",
            &ca,
            "--parallel",
            "1",
        ],
        true,
    );
    assert!(!out.success());
    assert!(out.stderr.contains("digest mismatch"), "{}", out.stderr);
    assert!(out.stderr.contains(&layer), "{}", out.stderr);
    assert!(!out_dir.join("blobs/sha256").join(hex).exists());
}

#[test]
fn skopeo_reads_what_berth_pushed() {
    need("skopeo");
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = fixtures::image_layout(&t.join("src"), "v1");
    let target = format!("{}/library/nginx:latest", reg.host());
    admin_login(t, &reg.host(), &["--ca-bundle", &p(&reg.ca_path())]).ok();
    berth(
        t,
        &[
            "push",
            &layout.oci_ref(),
            &target,
            "--ca-bundle",
            &p(&reg.ca_path()),
        ],
        true,
    )
    .ok();
    let out = run_cmd(
        Command::new("skopeo").args([
            "inspect",
            "--cert-dir",
            &p(&reg.cert_dir()),
            &format!("docker://{target}"),
        ]),
        Duration::from_secs(60),
    )
    .ok();
    assert!(
        out.stdout.contains(layout.manifest_digest()),
        "{}",
        out.stdout
    );
    let copy_out = t.join("skopeo-out");
    run_cmd(
        Command::new("skopeo").args([
            "copy",
            "--src-cert-dir",
            &p(&reg.cert_dir()),
            &format!("docker://{target}"),
            &format!("oci:{}:x", p(&copy_out)),
        ]),
        Duration::from_secs(60),
    )
    .ok();
}

/// The base64 lines of every certificate in a PEM file.
fn pem_body_lines(pem_file: &Path) -> Vec<String> {
    std::fs::read_to_string(pem_file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The Kubernetes steps `berth cert init` prints, run as printed against a cluster that
/// already holds two other CAs in `image-fetcher-ca-bundle`, keep those CAs and append
/// Berth's; run twice, nothing is added twice; run with no ConfigMap yet, it is created.
/// There is no Kubernetes here: `kubectl` is a script that keeps the one ConfigMap in a
/// file (`get … -o yaml` prints it, `apply -f -` replaces it).
#[test]
fn printed_configmap_steps_append_to_the_existing_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let first = other_ca(t);
    let second_dir = t.join("second-ca");
    berth(
        t,
        &[
            "cert",
            "init",
            "--out",
            &p(&second_dir),
            "--host",
            "second.invalid",
        ],
        false,
    )
    .ok();
    let second = second_dir.join("ca.crt");
    let cluster = t.join("cluster");
    std::fs::create_dir_all(&cluster).unwrap();
    let stored = cluster.join("cm.yaml");
    let existing = berth(
        t,
        &["kube", "ca-bundle", "--ca", &p(&first), "--ca", &p(&second)],
        false,
    )
    .ok();
    std::fs::write(&stored, &existing.stdout).unwrap();

    let bin = t.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let kubectl = bin.join("kubectl");
    std::fs::write(
        &kubectl,
        format!(
            "#!/bin/sh\nstore={store}\ncase \"$*\" in\n\
             *'get configmap image-fetcher-ca-bundle -o yaml'*)\n\
             \x20 if [ -f \"$store\" ]; then cat \"$store\"; else echo 'Error from server (NotFound): configmaps \"image-fetcher-ca-bundle\" not found' >&2; exit 1; fi ;;\n\
             *'apply -f -'*) cat > \"$store.new\" && mv \"$store.new\" \"$store\" && echo configmap/image-fetcher-ca-bundle configured ;;\n\
             *) echo \"kubectl stand-in: unexpected arguments: $*\" >&2; exit 2 ;;\n\
             esac\n",
            store = p(&stored)
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out_dir = t.join("berth-ca");
    let init = berth(
        t,
        &[
            "cert",
            "init",
            "--out",
            &p(&out_dir),
            "--host",
            "registry.test",
        ],
        false,
    )
    .ok();
    let text = &init.stdout;
    let start = text
        .find("kubectl -n kube-system get configmap")
        .unwrap_or_else(|| panic!("no ConfigMap step in:\n{text}"));
    let end =
        start + text[start..].find("kubectl apply -f -").unwrap() + "kubectl apply -f -".len();
    let script = &text[start..end];
    assert!(
        !text.contains("create configmap"),
        "the printed steps must not replace the bundle:\n{text}"
    );

    let work = t.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let path = format!(
        "{}:{}:{}",
        bin.display(),
        berth_bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run_steps = || {
        let mut cmd = Command::new("bash");
        cmd.args(["-euc", script])
            .current_dir(&work)
            .env("PATH", &path)
            .env("BERTH_LOG", "warn");
        run_cmd(&mut cmd, Duration::from_secs(60)).ok()
    };
    let berth_ca = out_dir.join("ca.crt");
    for round in 0..2 {
        run_steps();
        let cm = std::fs::read_to_string(&stored).unwrap();
        assert_eq!(
            cm.matches("BEGIN CERTIFICATE").count(),
            3,
            "round {round}: two kept + Berth's:\n{cm}"
        );
        for ca in [&first, &second, &berth_ca] {
            for line in pem_body_lines(ca) {
                assert!(
                    cm.contains(&line),
                    "round {round}: {} lost:\n{cm}",
                    ca.display()
                );
            }
        }
        assert!(cm.contains("namespace: kube-system"), "{cm}");
    }

    // No ConfigMap yet: the same steps create it with Berth's CA alone.
    std::fs::remove_file(&stored).unwrap();
    run_steps();
    let cm = std::fs::read_to_string(&stored).unwrap();
    assert_eq!(cm.matches("BEGIN CERTIFICATE").count(), 1, "{cm}");
    for line in pem_body_lines(&berth_ca) {
        assert!(cm.contains(&line), "{cm}");
    }
}
