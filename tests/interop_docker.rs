//! Interop with the seed's own client: the Docker engine (Debian `docker.io` 20.10).
//!
//! Docker treats every registry on 127.0.0.0/8 as insecure, so its certificate checks
//! can only be exercised against a non-loopback address. The test therefore:
//!
//! 1. creates a network namespace `berth-dk-PID` joined to the host by a veth pair on a
//!    random /30 inside 10.213.0.0/16 (host side `.1`, namespace side `.2`);
//! 2. makes a CA and a server certificate for that IP with `berth cert init`, and runs
//!    `berth serve --listen 10.213.A.(B+2):5443 --tls-cert … --tls-key …` inside the namespace;
//! 3. starts a private `dockerd` in the host network namespace but in its own *mount*
//!    namespace, with a temporary directory bind-mounted over `/etc/docker`. dockerd only
//!    reads registry CAs from `/etc/docker/certs.d/HOST:PORT/ca.crt` (no flag or config
//!    key changes that for a root daemon: `registry.CertsDir()` is hard-coded unless it runs
//!    under RootlessKit), so the bind mount gives it a certs.d the test controls without
//!    touching the host's `/etc/docker` (and hides any host `daemon.json` / `key.json`);
//! 4. `docker load`s a two-layer image built here as a docker-archive tarball, tags it,
//!    and pushes it *before* the CA is trusted: the push must fail with
//!    `x509: certificate signed by unknown authority`;
//! 5. writes `certs.d/IP:5443/ca.crt` (dockerd reads certs.d on every registry access),
//!    pushes again (must succeed and report the digest), pushes once more (layers must be
//!    reported as already existing), checks the manifest through the registry API with a
//!    client that trusts only the CA, `docker rmi`s everything and `docker pull`s it back.
//!
//! Access control (issue 3): Berth runs with an administrator password
//! (`BERTH_ADMIN_PASSWORD`) and auto-creates projects on push. With the CA trusted, a push
//! without a login is refused; `docker login --password-stdin` (config.json under the
//! test's own `DOCKER_CONFIG` directory) makes it work. The pulls from the public project
//! `library` are done after `docker logout`, i.e. anonymously. Finally the seed's story:
//! an image pushed to the private project `private-prj` cannot be pulled anonymously,
//! and can after logging in again — and after `berth login` into Docker's `DOCKER_CONFIG`
//! with no `docker login` at all (the config.json berth writes is one Docker accepts).
//!
//! The namespace, the private dockerd and the process helpers are the shared fixture in
//! tests/common/docker.rs (also used by tests/proxy_cache.rs).
//!
//! Every process started here is stopped by PID when its guard drops, pass or fail; the
//! namespace, veth pair and temporary directories are removed too. A missing `dockerd`,
//! `docker`, `ip`, `unshare` or `tar` is a failure, never a skip.
//!
//! Debugging aid: `BERTH_INTEROP_REGISTRY=distribution` runs the same flow against CNCF
//! Distribution (`docker-registry`, certificates from `openssl`) instead of Berth, to tell
//! a Docker-environment problem from a Berth problem.

mod common;

use std::fs;
use std::net::{SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::docker::{
    Dockerd, NetNs, NsBerth, must, require_tools, run_timeout, run_timeout_stdin, stop_child, text,
};

use sha2::{Digest, Sha256};

const PORT: u16 = 5443;
const X509_UNKNOWN_CA: &str = "x509: certificate signed by unknown authority";
const SCHEMA2: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

// ---------------------------------------------------------------------------------------
// The registry under test, inside the namespace
// ---------------------------------------------------------------------------------------

/// The registry under test, in the namespace on `NS_IP:PORT`: Berth ([`NsBerth`]), or CNCF
/// Distribution when `BERTH_INTEROP_REGISTRY=distribution`.
struct Registry {
    server: Server,
    /// host:port as clients name it.
    host: String,
    kind: &'static str,
}

enum Server {
    Berth(NsBerth),
    Distribution(DistributionServer),
}

/// `docker-registry serve` in the namespace; stopped by PID on drop.
struct DistributionServer {
    child: Child,
    /// `certs/` (ca.crt, server.crt, server.key), `data/` and config.yml.
    dir: tempfile::TempDir,
}

impl Drop for DistributionServer {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

impl Registry {
    fn ca_path(&self) -> PathBuf {
        match &self.server {
            Server::Berth(b) => b.ca_path(),
            Server::Distribution(d) => d.dir.path().join("certs").join("ca.crt"),
        }
    }

    fn start(ns: &NetNs) -> Registry {
        let use_distribution = std::env::var("BERTH_INTEROP_REGISTRY")
            .map(|v| v == "distribution")
            .unwrap_or(false);
        if use_distribution {
            Self::start_distribution(ns)
        } else {
            Self::berth(NsBerth::start(ns, PORT, &[]))
        }
    }

    /// A second Berth on the next port whose storage counts as full: its free-space
    /// reserve is the whole filesystem, so every new upload is refused up front with 507,
    /// as on a disk below its reserve.
    fn start_full(ns: &NetNs) -> Registry {
        let config = tempfile::NamedTempFile::new().expect("temp file");
        fs::write(
            config.path(),
            "[limits]\nmin_free_percent = 100.0\nmin_free_bytes = 18446744073709551615\n",
        )
        .unwrap();
        let path = config.path().to_str().unwrap().to_string();
        Self::berth(NsBerth::start(ns, PORT + 1, &["--config", &path]))
    }

    fn berth(b: NsBerth) -> Registry {
        Registry {
            host: b.host.clone(),
            server: Server::Berth(b),
            kind: "berth",
        }
    }

    fn start_distribution(ns: &NetNs) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).unwrap();
        let host = format!("{}:{PORT}", ns.ns_ip);
        fs::create_dir_all(&certs).unwrap();
        let ossl = |args: &[&str]| {
            must(
                Command::new("openssl").args(args).current_dir(&certs),
                Duration::from_secs(60),
            )
        };
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=berth-interop-ca",
        ]);
        ossl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            &format!("/CN={}", ns.ns_ip),
        ]);
        fs::write(
            certs.join("ext"),
            format!("subjectAltName=IP:{}\n", ns.ns_ip),
        )
        .unwrap();
        ossl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext",
        ]);
        let cfg = dir.path().join("config.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n\
                 http:\n  addr: {host}\n  tls: {{certificate: {}, key: {}}}\n",
                data.display(),
                certs.join("server.crt").display(),
                certs.join("server.key").display()
            ),
        )
        .unwrap();
        let child = ns
            .command("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn docker-registry in the namespace");
        let mut server = DistributionServer { child, dir };
        let sa = SocketAddrV4::new(ns.ns_ip, PORT).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&sa, Duration::from_secs(1)).is_err() {
            if Instant::now() > deadline {
                stop_child(&mut server.child, Duration::from_secs(2));
                panic!("docker-registry did not listen on {sa} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry {
            server: Server::Distribution(server),
            host,
            kind: "distribution",
        }
    }
}

// ---------------------------------------------------------------------------------------
// A docker-archive image built from scratch
// ---------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (SHA-256 in counter mode).
fn pseudo_random(len: usize, seed: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while v.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(i.to_le_bytes());
        v.extend_from_slice(&h.finalize());
        i += 1;
    }
    v.truncate(len);
    v
}

fn tar_dir(dir: &Path, out: &Path) {
    must(
        Command::new("tar")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("--numeric-owner")
            .arg("--mtime=@0")
            .arg("--sort=name")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(out)
            .arg("."),
        Duration::from_secs(60),
    );
}

/// Returns (path of the docker-archive tar, image ID = config digest).
fn build_image(work: &Path, repo_tag: &str) -> (PathBuf, String) {
    let archive = work.join("archive");
    fs::create_dir_all(&archive).unwrap();
    let mut diff_ids = Vec::new();
    let mut layer_paths = Vec::new();
    let contents: [(&str, Vec<u8>); 2] = [
        (
            "etc/berth-hello.txt",
            b"hello from the berth docker interop test\n".to_vec(),
        ),
        (
            "usr/share/berth/noise.bin",
            pseudo_random(1 << 20, "berth-interop-docker"),
        ),
    ];
    for (i, (name, data)) in contents.iter().enumerate() {
        let root = work.join(format!("layer{i}"));
        let file = root.join(name);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, data).unwrap();
        let rel = format!("layer{i}/layer.tar");
        fs::create_dir_all(archive.join(format!("layer{i}"))).unwrap();
        tar_dir(&root, &archive.join(&rel));
        diff_ids.push(format!(
            "sha256:{}",
            sha256_hex(&fs::read(archive.join(&rel)).unwrap())
        ));
        layer_paths.push(rel);
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Cmd": ["/bin/true"], "Env": ["PATH=/usr/bin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [
            { "created": "2024-01-01T00:00:00Z", "created_by": "berth interop: hello" },
            { "created": "2024-01-01T00:00:00Z", "created_by": "berth interop: noise" }
        ]
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_hex = sha256_hex(&config_bytes);
    fs::write(archive.join(format!("{config_hex}.json")), &config_bytes).unwrap();
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [repo_tag],
        "Layers": layer_paths,
    }]);
    fs::write(
        archive.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let tarball = work.join("image.tar");
    tar_dir(&archive, &tarball);
    (tarball, format!("sha256:{config_hex}"))
}

/// `latest: digest: sha256:… size: N` from `docker push` output.
fn pushed_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| {
            let rest = l.split("digest: ").nth(1)?;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .unwrap_or_else(|| panic!("no `digest:` line in docker push output:\n{out}"))
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[test]
fn docker_engine_push_pull_with_ca_trust() {
    require_tools();

    // Drop order is the reverse of declaration: dockerd, then the registry, then the ns.
    let ns = NetNs::create();
    let registry = Registry::start(&ns);
    let dockerd = Dockerd::start();
    let work = tempfile::tempdir().expect("work dir");

    let host = registry.host.clone();
    let local = "berth-interop/nginx:latest";
    let remote = format!("{host}/library/nginx:latest");
    eprintln!(
        "interop_docker: registry {} at https://{host} (netns {})",
        registry.kind, ns.name
    );

    // The host must reach the namespace address before Docker can (routing sanity check).
    let sa = SocketAddrV4::new(ns.ns_ip, PORT).into();
    TcpStream::connect_timeout(&sa, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("host cannot reach {sa} in netns {}: {e}", ns.name));

    let (tarball, image_id) = build_image(work.path(), local);
    let out = dockerd.must(&["load", "-i", tarball.to_str().unwrap()]);
    assert!(out.contains(local), "docker load output: {out}");
    let id = dockerd.must(&["image", "inspect", local, "--format", "{{.Id}}"]);
    assert_eq!(id.trim(), image_id, "loaded image ID is the config digest");
    dockerd.must(&["tag", local, &remote]);

    let berth = registry.kind == "berth";

    // 1. The CA is not trusted yet: logging in and pushing both fail on the certificate
    //    check (before any credentials matter).
    let o = dockerd.login(&host, common::ADMIN_USER, common::ADMIN_PASSWORD);
    let msg = text(&o);
    assert!(
        !o.status.success(),
        "docker login without the CA unexpectedly succeeded:\n{msg}"
    );
    assert!(
        msg.contains(X509_UNKNOWN_CA),
        "docker login without the CA should fail with `{X509_UNKNOWN_CA}`, got:\n{msg}"
    );
    let o = dockerd.run(&["push", &remote]);
    let msg = text(&o);
    assert!(
        !o.status.success(),
        "push without the CA unexpectedly succeeded:\n{msg}"
    );
    assert!(
        msg.contains(X509_UNKNOWN_CA),
        "push without the CA should fail with `{X509_UNKNOWN_CA}`, got:\n{msg}"
    );

    // 2. Trust the CA the way the seed does (certs.d/HOST:PORT/ca.crt).
    dockerd.trust(&host, &registry.ca_path());

    // Pushing without a login is refused (Berth: pushes always need one).
    if berth {
        let o = dockerd.run(&["push", &remote]);
        let msg = text(&o);
        assert!(
            !o.status.success(),
            "push without a login unexpectedly succeeded:\n{msg}"
        );
        assert!(
            msg.contains("unauthorized")
                || msg.contains("authentication required")
                || (msg.contains("denied: anonymous may not push") && msg.contains("log in")),
            "push without a login should be refused as unauthorized, got:\n{msg}"
        );
        // A wrong password is refused by `docker login` itself, and stores nothing.
        let o = dockerd.login(&host, common::ADMIN_USER, "not-the-password");
        let msg = text(&o);
        assert!(
            !o.status.success(),
            "docker login with a wrong password succeeded:\n{msg}"
        );
        assert!(
            dockerd
                .config_json()
                .is_none_or(|c| c["auths"].get(&host).is_none()),
            "a failed login stored credentials: {:?}",
            dockerd.config_json()
        );
    }

    // Log in (`--password-stdin`) and push.
    let o = dockerd.login(&host, common::ADMIN_USER, common::ADMIN_PASSWORD);
    let msg = text(&o);
    assert!(o.status.success(), "docker login failed:\n{msg}");
    assert!(msg.contains("Login Succeeded"), "docker login:\n{msg}");
    let cfg = dockerd
        .config_json()
        .expect("docker login wrote config.json");
    let entry = &cfg["auths"][&host];
    let auth = entry["auth"]
        .as_str()
        .unwrap_or_else(|| panic!("no auths[{host}].auth in config.json: {cfg}"));
    let identity_token = entry["identitytoken"].as_str().unwrap_or("");
    if identity_token.is_empty() {
        // Plain Basic credentials (e.g. a registry without OAuth2 refresh tokens).
        assert_eq!(
            Some(auth),
            common::basic_auth(common::ADMIN_USER, common::ADMIN_PASSWORD).strip_prefix("Basic "),
            "credentials stored by docker login: {cfg}"
        );
    } else {
        // The token endpoint answered the OAuth2 password grant with a refresh token:
        // Docker keeps that (identitytoken) instead of the password, and only the user
        // name in `auth`.
        assert_eq!(
            Some(auth),
            common::basic_auth(common::ADMIN_USER, "").strip_prefix("Basic "),
            "docker login stored the password next to an identity token: {cfg}"
        );
        assert!(
            !identity_token.contains(common::ADMIN_PASSWORD),
            "identity token contains the password"
        );
    }
    if berth {
        assert!(
            !identity_token.is_empty(),
            "Berth issues refresh tokens (OAuth2 password grant): docker login should have \
             stored an identity token: {cfg}"
        );
    }
    let out = dockerd.must(&["push", &remote]);
    let digest = pushed_digest(&out);
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "digest {digest:?}"
    );
    assert_eq!(
        out.matches("Pushed").count(),
        2,
        "both layers pushed:\n{out}"
    );

    // 3. Pushing again uploads nothing: the registry reports both layers present.
    let out = dockerd.must(&["push", &remote]);
    assert_eq!(
        out.matches("Layer already exists").count(),
        2,
        "second push:\n{out}"
    );
    assert_eq!(
        pushed_digest(&out),
        digest,
        "same manifest digest on re-push"
    );

    // 3b. Berth's own client reads the config.json `docker login` wrote (an identity
    //     token, used with the OAuth2 refresh grant) and copies the image into a private
    //     project; Docker then pulls what Berth pushed.
    if berth {
        let private = format!("{host}/private-prj/from-berth:v1");
        let out = run_timeout(
            Command::new(common::berth_bin())
                .env("DOCKER_CONFIG", dockerd.dir.path().join("config"))
                .args(["copy", "--ca-bundle"])
                .arg(registry.ca_path())
                .args([remote.as_str(), private.as_str()]),
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "berth copy with the config.json docker login wrote:\n{}",
            text(&out)
        );
        let out = dockerd.must(&["pull", &private]);
        assert!(
            out.contains(&format!("Digest: {digest}")),
            "docker pull of what berth pushed:\n{out}"
        );
        // Untag it again so that step 5 starts with no local copy of the layers.
        dockerd.must(&["rmi", &private]);
    }

    // 4. The registry serves what Docker pushed, to a client that trusts only the CA.
    check_registry_api(&registry, &digest, &image_id);

    // 5. Remove every local copy and pull it back, logged out: anyone may pull from the
    //    public project `library`.
    dockerd.must(&["rmi", &remote, local]);
    dockerd.must(&["logout", &host]);
    assert!(
        dockerd
            .config_json()
            .is_none_or(|c| c["auths"].get(&host).is_none()),
        "docker logout left credentials behind"
    );
    let o = dockerd.run(&["image", "inspect", &remote]);
    assert!(!o.status.success(), "image still present after rmi");
    let out = dockerd.must(&["pull", &remote]);
    assert!(
        out.contains(&format!("Digest: {digest}")),
        "pull output:\n{out}"
    );
    assert!(
        out.contains("Downloaded newer image"),
        "pull output:\n{out}"
    );
    assert_eq!(
        out.matches("Pull complete").count(),
        2,
        "both layers pulled:\n{out}"
    );
    let inspected = dockerd.must(&[
        "image",
        "inspect",
        &remote,
        "--format",
        "{{.Id}} {{json .RepoDigests}}",
    ]);
    assert!(
        inspected.starts_with(&image_id),
        "pulled image ID {inspected} != {image_id}"
    );
    assert!(
        inspected.contains(&format!("{host}/library/nginx@{digest}")),
        "RepoDigests: {inspected}"
    );

    // 6. Pull by digest too.
    let by_digest = format!("{host}/library/nginx@{digest}");
    let out = dockerd.must(&["pull", &by_digest]);
    assert!(out.contains(&digest), "pull by digest output:\n{out}");

    // 7. The seed's story: a private project. Pushed after logging in (Berth creates the
    //    project, private, on first push) ...
    if berth {
        let private = format!("{host}/private-prj/nginx:latest");
        dockerd.must(&["tag", &remote, &private]);
        let o = dockerd.login(&host, common::ADMIN_USER, common::ADMIN_PASSWORD);
        assert!(o.status.success(), "docker login:\n{}", text(&o));
        let out = dockerd.must(&["push", &private]);
        assert_eq!(
            pushed_digest(&out),
            digest,
            "same image, same digest:\n{out}"
        );
        dockerd.must(&["rmi", &private]);

        // ... refused anonymously, without saying whether it exists ...
        dockerd.must(&["logout", &host]);
        let o = dockerd.run(&["pull", &private]);
        let msg = text(&o);
        assert!(
            !o.status.success(),
            "anonymous pull from a private project succeeded:\n{msg}"
        );
        let missing = format!("{host}/private-prj/does-not-exist:latest");
        let o2 = dockerd.run(&["pull", &missing]);
        let msg2 = text(&o2);
        assert!(
            !o2.status.success(),
            "pull of a missing repository succeeded"
        );
        assert_eq!(
            msg.replace("private-prj/nginx", "REPO"),
            msg2.replace("private-prj/does-not-exist", "REPO"),
            "an anonymous client can tell a private repository from a missing one"
        );

        // ... and pulled after logging in.
        let o = dockerd.login(&host, common::ADMIN_USER, common::ADMIN_PASSWORD);
        assert!(o.status.success(), "docker login:\n{}", text(&o));
        let out = dockerd.must(&["pull", &private]);
        assert!(
            out.contains(&format!("Digest: {digest}")),
            "pull of the private image:\n{out}"
        );
        let id = dockerd.must(&["image", "inspect", &private, "--format", "{{.Id}}"]);
        assert_eq!(id.trim(), image_id, "pulled private image ID");

        // 8. `berth login` writes the config.json, and Docker uses it with no login of its
        //    own: log Docker out (its config.json has no entry for the host any more),
        //    remove the local image, let berth log in into the same DOCKER_CONFIG, pull.
        dockerd.must(&["logout", &host]);
        dockerd.must(&["rmi", &private]);
        assert!(
            dockerd
                .config_json()
                .is_none_or(|c| c["auths"].get(&host).is_none()),
            "docker logout left credentials behind"
        );
        let o = dockerd.run(&["pull", &private]);
        assert!(
            !o.status.success(),
            "anonymous pull from the private project succeeded before berth login:\n{}",
            text(&o)
        );
        let out = run_timeout_stdin(
            Command::new(common::berth_bin())
                .env("DOCKER_CONFIG", dockerd.dir.path().join("config"))
                .args(["login", &host, "-u", common::ADMIN_USER, "--password-stdin"])
                .arg("--ca-bundle")
                .arg(registry.ca_path()),
            format!("{}\n", common::ADMIN_PASSWORD).as_bytes(),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "berth login:\n{}", text(&out));
        let cfg = dockerd
            .config_json()
            .expect("berth login wrote config.json");
        assert_eq!(
            cfg["auths"][&host]["auth"].as_str(),
            common::basic_auth(common::ADMIN_USER, common::ADMIN_PASSWORD).strip_prefix("Basic "),
            "config.json written by berth login: {cfg}"
        );
        let out = dockerd.must(&["pull", &private]);
        assert!(
            out.contains(&format!("Digest: {digest}")),
            "docker pull with the login berth stored:\n{out}"
        );
        let id = dockerd.must(&["image", "inspect", &private, "--format", "{{.Id}}"]);
        assert_eq!(id.trim(), image_id, "image pulled with berth's login");
        // And Docker's logout removes what berth stored.
        dockerd.must(&["logout", &host]);
        assert!(
            dockerd
                .config_json()
                .is_none_or(|c| c["auths"].get(&host).is_none()),
            "docker logout did not remove the login berth stored"
        );

        // 9. Issue 13: a push to a registry whose storage is full. Docker 20.10 shows the
        //    body of 4xx errors only: for any 5xx it retries each layer five times (5, 10,
        //    15 and 20 s apart) and then prints the status line, here `received unexpected
        //    HTTP status: 507 Insufficient Storage`, which names the cause (a 503 would say
        //    "Service Unavailable"). The retries give an administrator a minute to free space.
        let full = Registry::start_full(&ns);
        dockerd.trust(&full.host, &full.ca_path());
        let o = dockerd.login(&full.host, common::ADMIN_USER, common::ADMIN_PASSWORD);
        assert!(o.status.success(), "docker login:\n{}", text(&o));
        let target = format!("{}/library/nginx:latest", full.host);
        dockerd.must(&["tag", &private, &target]);
        let started = Instant::now();
        let o = dockerd.run(&["push", &target]);
        let took = started.elapsed();
        let msg = text(&o);
        eprintln!("interop_docker: push to a full registry ({took:?}):\n{msg}");
        assert!(
            !o.status.success(),
            "push to a full registry succeeded:\n{msg}"
        );
        assert!(
            msg.contains("507 Insufficient Storage"),
            "docker should name the cause:\n{msg}"
        );
        assert!(
            took < Duration::from_secs(120),
            "docker gave up after {took:?}"
        );
        drop(full);
    }

    drop(work);
    drop(dockerd);
    drop(registry);
    drop(ns);
}

fn check_registry_api(registry: &Registry, digest: &str, image_id: &str) {
    let ca = fs::read(registry.ca_path()).unwrap();
    let base = format!("https://{}", registry.host);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let certs = reqwest::Certificate::from_pem_bundle(&ca).expect("ca pem");
        let client = reqwest::Client::builder()
            .tls_certs_only(certs)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let r = client
            .get(format!("{base}/v2/library/nginx/manifests/latest"))
            .header("Accept", SCHEMA2)
            .send()
            .await
            .expect("GET manifest");
        assert_eq!(r.status(), 200, "GET manifest by tag");
        let hdr = r
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_string());
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.bytes().await.unwrap();
        assert_eq!(hdr.as_deref(), Some(digest), "Docker-Content-Digest");
        assert_eq!(ct.as_deref(), Some(SCHEMA2), "Content-Type of the manifest");
        assert_eq!(
            format!("sha256:{}", sha256_hex(&body)),
            digest,
            "manifest body digest"
        );
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(m["config"]["digest"], image_id, "config digest in manifest");
        assert_eq!(
            m["layers"].as_array().map(|a| a.len()),
            Some(2),
            "two layers"
        );

        let tags: serde_json::Value = client
            .get(format!("{base}/v2/library/nginx/tags/list"))
            .send()
            .await
            .expect("GET tags")
            .json()
            .await
            .expect("tags json");
        assert_eq!(tags["name"], "library/nginx");
        assert!(
            tags["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "latest")),
            "tags: {tags}"
        );
    });
}
