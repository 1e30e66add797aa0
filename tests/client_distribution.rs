//! `berth` client commands against CNCF Distribution (Debian `docker-registry`) over HTTPS
//! with a CA from `berth cert init` and htpasswd (bcrypt) Basic auth: the seed's
//! unknown-authority failure and bundle fix, 401 messages (missing / rejected credentials,
//! which secret was tried), `berth login` writing a config.json skopeo accepts, pull secrets
//! from `berth kube pull-secret`, the kubelet credential provider, and copies between
//! Distribution and Berth.

mod common;
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::distribution::{Distribution, PASSWORD, USER};
use common::docker::{run_timeout_stdin, text};
use common::{ADMIN_PASSWORD, ADMIN_USER, Berth, CmdOutput, berth_bin, need, run_cmd};

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn iso(tmp: &Path) -> Vec<String> {
    let none = tmp.join("none");
    vec![
        "--certs-dir".into(),
        p(&none),
        "--hosts-dir".into(),
        p(&none),
        "--daemon-json".into(),
        p(&none.join("daemon.json")),
    ]
}

/// Run `berth ARGS` with DOCKER_CONFIG=`docker_config`, isolated from /etc.
fn berth(tmp: &Path, docker_config: &Path, args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = Command::new(berth_bin());
    cmd.args(args)
        .args(iso(tmp))
        .env("DOCKER_CONFIG", docker_config)
        .env("BERTH_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(&mut cmd, Duration::from_secs(180))
}

/// Run `berth ARGS` (a command without trust flags) with DOCKER_CONFIG=`docker_config`.
fn berth_plain(docker_config: &Path, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(berth_bin());
    cmd.args(args).env("DOCKER_CONFIG", docker_config);
    run_cmd(&mut cmd, Duration::from_secs(60))
}

fn other_ca_bundle(tmp: &Path, second: &Path) -> PathBuf {
    let other = tmp.join("other-ca");
    run_cmd(
        Command::new(berth_bin()).args([
            "cert",
            "init",
            "--out",
            &p(&other),
            "--host",
            "x.invalid",
        ]),
        Duration::from_secs(60),
    )
    .ok();
    let mut pem = std::fs::read(other.join("ca.crt")).unwrap();
    pem.extend_from_slice(&std::fs::read(second).unwrap());
    let path = tmp.join("bundle.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

#[test]
fn seed_story_against_distribution_with_htpasswd() {
    let reg = Distribution::start(true);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cfg = t.join("docker");
    let layout = fixtures::image_layout(&t.join("src"), "v1");
    let target = format!("{}/library/nginx:latest", reg.host);

    // No CA: the seed's x509 failure, with the fix spelled out.
    let out = berth(t, &cfg, &["push", &layout.oci_ref(), &target], &[]);
    assert!(!out.success());
    for needle in [
        "certificate signed by unknown authority",
        reg.host.as_str(),
        "Berth CA",
        "--ca-bundle",
        "image-fetcher-ca-bundle",
    ] {
        assert!(
            out.stderr.contains(needle),
            "missing {needle:?}:\n{}",
            out.stderr
        );
    }
    let bundle = other_ca_bundle(t, &reg.ca());
    let ca = ["--ca-bundle", &p(&bundle)];

    // Trusted but anonymous: credentials missing, and where we looked.
    let out = berth(
        t,
        &cfg,
        &[&["push", &layout.oci_ref(), &target][..], &ca].concat(),
        &[],
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("requires credentials"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("none were found"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("berth login {}", reg.host)),
        "{}",
        out.stderr
    );

    // A wrong password is rejected and nothing is stored.
    let login = |pw: &str| {
        berth(
            t,
            &cfg,
            &[&["login", &reg.host, "-u", USER][..], &ca].concat(),
            &[("BERTH_PASSWORD", pw)],
        )
    };
    let out = login("wrong");
    assert!(!out.success());
    assert!(out.stderr.contains("rejected"), "{}", out.stderr);
    assert!(!cfg.join("config.json").exists());

    // The right password: config.json in Docker's format.
    let out = login(PASSWORD).ok();
    assert!(out.stdout.contains("Login Succeeded"), "{}", out.stdout);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cfg.join("config.json")).unwrap()).unwrap();
    let auth = json["auths"][&reg.host]["auth"].as_str().unwrap();
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(auth)
            .unwrap(),
        format!("{USER}:{PASSWORD}").as_bytes()
    );

    // Push with the stored login; pull back.
    berth(
        t,
        &cfg,
        &[&["push", &layout.oci_ref(), &target][..], &ca].concat(),
        &[],
    )
    .ok();
    let pulled = t.join("pulled");
    berth(
        t,
        &cfg,
        &[&["pull", &target, "--layout", &p(&pulled)][..], &ca].concat(),
        &[],
    )
    .ok();
    assert_eq!(fixtures::blob_digests(&pulled), layout.all_blob_digests());

    // skopeo accepts the config.json berth wrote.
    need("skopeo");
    let out = run_cmd(
        Command::new("skopeo").args([
            "inspect",
            "--authfile",
            &p(&cfg.join("config.json")),
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

    // ... and so does podman.
    need("podman");
    let out = run_cmd(
        Command::new("podman").args([
            "login",
            "--get-login",
            "--authfile",
            &p(&cfg.join("config.json")),
            &reg.host,
        ]),
        Duration::from_secs(60),
    )
    .ok();
    assert_eq!(out.stdout.trim(), USER);

    // The pull secret made from the stored login lets a node pull (no config.json).
    let secret = berth_plain(
        &cfg,
        &[
            "kube",
            "pull-secret",
            "--name",
            "regcred",
            "--namespace",
            "apps",
            "--registry",
            &reg.host,
        ],
    )
    .ok();
    assert!(
        secret
            .stdout
            .contains("type: kubernetes.io/dockerconfigjson"),
        "{}",
        secret.stdout
    );
    assert!(
        secret.stdout.contains(".dockerconfigjson:"),
        "{}",
        secret.stdout
    );
    let secret_path = t.join("secret.yaml");
    std::fs::write(&secret_path, &secret.stdout).unwrap();
    let empty = t.join("empty-docker");
    let node = t.join("node");
    berth(
        t,
        &empty,
        &[
            &[
                "pull",
                &target,
                "--layout",
                &p(&node),
                "--pull-secret",
                &p(&secret_path),
            ][..],
            &ca,
        ]
        .concat(),
        &[],
    )
    .ok();
    assert_eq!(fixtures::blob_digests(&node), layout.all_blob_digests());

    // A wrong secret is refused, naming the secret that was tried.
    let bad = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "stale", "namespace": "apps"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(
            serde_json::json!({"auths": {reg.host.clone(): {"auth": base64::engine::general_purpose::STANDARD.encode(format!("{USER}:old"))}}}).to_string())}
    });
    let bad_path = t.join("bad.json");
    std::fs::write(&bad_path, bad.to_string()).unwrap();
    let out = berth(
        t,
        &empty,
        &[
            &[
                "pull",
                &target,
                "--layout",
                &p(&t.join("x")),
                "--pull-secret",
                &p(&bad_path),
            ][..],
            &ca,
        ]
        .concat(),
        &[],
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("rejected the credentials"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("pull secret apps/stale"),
        "{}",
        out.stderr
    );

    // The kubelet credential provider answers from the stored login.
    let req = format!(
        r#"{{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"{target}"}}"#
    );
    let mut cmd = Command::new(berth_bin());
    cmd.arg("credential-provider").env("DOCKER_CONFIG", &cfg);
    let out = run_timeout_stdin(&mut cmd, req.as_bytes(), Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let resp: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resp["kind"], "CredentialProviderResponse");
    assert_eq!(resp["apiVersion"], "credentialprovider.kubelet.k8s.io/v1");
    assert_eq!(resp["cacheKeyType"], "Registry");
    assert_eq!(resp["auth"][&reg.host]["username"], USER);
    assert_eq!(resp["auth"][&reg.host]["password"], PASSWORD);

    // Logout removes it.
    let out = berth_plain(&cfg, &["logout", &reg.host]).ok();
    assert!(out.stdout.contains("Removed"), "{}", out.stdout);
    let out = berth(t, &cfg, &[&["inspect", &target][..], &ca].concat(), &[]);
    assert!(out.stderr.contains("none were found"), "{}", out.stderr);
}

#[test]
fn copies_between_distribution_and_berth_and_configmap_trust() {
    let dist = Distribution::start(false);
    let berth_reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cfg = t.join("docker");
    let layout = fixtures::multi_arch_layout(&t.join("src"), "m1");

    // One ConfigMap trusting both registries' CAs (each as a later certificate).
    let cm = run_cmd(
        Command::new(berth_bin()).args([
            "kube",
            "ca-bundle",
            "--ca",
            &p(&dist.ca()),
            "--ca",
            &p(&berth_reg.ca_path()),
        ]),
        Duration::from_secs(30),
    )
    .ok();
    let cm_path = t.join("cm.yaml");
    std::fs::write(&cm_path, &cm.stdout).unwrap();
    let trust = ["--ca-configmap", &p(&cm_path)];

    let mut login = Command::new(berth_bin());
    login
        .args(["login", &berth_reg.host(), "-u", ADMIN_USER])
        .args(trust)
        .args(iso(t))
        .env("DOCKER_CONFIG", &cfg)
        .env("BERTH_PASSWORD", ADMIN_PASSWORD);
    run_cmd(&mut login, Duration::from_secs(60)).ok();

    let d = &dist.host;
    let b = berth_reg.host();
    let run = |args: &[&str]| berth(t, &cfg, &[args, &trust].concat(), &[]).ok();
    run(&[
        "push",
        &layout.oci_ref(),
        &format!("{d}/team/app:m1"),
        "--chunk-size",
        "30000",
    ]);
    // Distribution → Berth (whole index), then Berth → Distribution under another repo.
    let out = run(&[
        "copy",
        &format!("{d}/team/app:m1"),
        &format!("{b}/library/app:m1"),
    ]);
    assert!(
        out.stdout.contains(layout.manifest_digest()),
        "{}",
        out.stdout
    );
    run(&[
        "copy",
        &format!("{b}/library/app:m1"),
        &format!("{d}/other/app:copied"),
    ]);
    // Within Distribution: cross-repository mount.
    run(&[
        "tag",
        &format!("{d}/team/app:m1"),
        &format!("{d}/third/app:v1"),
    ]);
    let out = run(&["inspect", &format!("{d}/third/app:v1")]);
    assert!(
        out.stdout.contains(layout.manifest_digest()),
        "{}",
        out.stdout
    );
    let out = run(&["ls", d]);
    for r in ["team/app", "other/app", "third/app"] {
        assert!(out.stdout.lines().any(|l| l == r), "{r}: {}", out.stdout);
    }
    let out = run(&["ls", &format!("{d}/other/app")]);
    assert_eq!(out.stdout.trim(), "copied");
    // Pull one platform from Distribution; the whole index equals the source layout.
    let all = t.join("all");
    run(&[
        "pull",
        &format!("{d}/other/app:copied"),
        "--layout",
        &p(&all),
        "--all-platforms",
    ]);
    assert_eq!(fixtures::blob_digests(&all), layout.all_blob_digests());
    run(&["rm", &format!("{d}/third/app:v1")]);
    let out = berth(
        t,
        &cfg,
        &[&["inspect", &format!("{d}/third/app:v1")][..], &trust].concat(),
        &[],
    );
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
}
