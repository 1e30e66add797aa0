//! Operating `berth serve`: health endpoint, graceful shutdown finishing in-flight
//! requests, configuration by file, plain HTTP as an explicit opt-in, clear start-up
//! errors, and `berth cert init`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Berth, berth_bin, run_cmd};
use sha2::Digest as _;

#[tokio::test]
async fn health_endpoint_answers_ok() {
    let srv = Berth::start();
    let resp = srv
        .anon_client()
        .get(format!("{}/healthz", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "ok\n");
}

#[tokio::test]
async fn sigterm_finishes_an_upload_in_flight() {
    let srv = Berth::start();
    let client = srv.client();
    let url = srv.url();
    let start = client
        .post(format!("{url}/v2/library/drain/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 202);
    let location = start.headers()["location"].to_str().unwrap().to_string();

    // A 4 MiB body sent slowly: the server gets SIGTERM while it is still arriving.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(256 << 10).map(|c| Ok(c.to_vec())).collect();
    let body = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c
    });
    let pid = srv.pid();
    let put = tokio::spawn({
        let client = client.clone();
        let target = format!("{url}{location}?digest={digest}");
        async move {
            client
                .put(target)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let resp = put
        .await
        .unwrap()
        .expect("the in-flight upload completes after SIGTERM");
    assert_eq!(
        resp.status(),
        201,
        "upload acknowledged during graceful shutdown"
    );

    // The data survives: restart on the same directory and read the blob back.
    let data_dir = srv.kill();
    let srv = Berth::start_in(data_dir, &[]);
    let got = srv
        .client()
        .get(format!("{}/v2/library/drain/blobs/{digest}", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().len(), data.len());
}

use futures_util::StreamExt as _;

#[tokio::test]
async fn config_file_sets_limits_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\n[limits]\nmax_manifest_bytes = 1024\nmax_page_size = 2\n",
    )
    .unwrap();
    // --listen from the harness overrides the file's unusable port.
    let srv = Berth::start_with(&["--config", config.to_str().unwrap()]);
    let client = srv.client();
    let big = format!("{{\"schemaVersion\":2,\"pad\":\"{}\"}}", "x".repeat(2000));
    let resp = client
        .put(format!("{}/v2/library/cfg/manifests/v1", srv.url()))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        413,
        "max_manifest_bytes from the file applies"
    );
    let body = resp.text().await.unwrap();
    assert!(body.contains("1024"), "{body}");
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "lisen = \"0.0.0.0:5443\"\n").unwrap();
    let out = run_cmd(
        Command::new(berth_bin()).args(["serve", "--config", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("lisen") && out.stderr.contains("bad.toml"),
        "{}",
        out.stderr
    );
}

#[test]
fn tls_cert_without_key_is_refused() {
    let out = run_cmd(
        Command::new(berth_bin()).args(["serve", "--tls-cert", "/nonexistent.crt"]),
        Duration::from_secs(30),
    );
    assert!(!out.success());
    assert!(out.stderr.contains("--tls-key"), "{}", out.stderr);
}

#[tokio::test]
async fn plain_http_is_an_explicit_opt_in() {
    let srv = Berth::start_with(&["--insecure-http"]);
    assert_eq!(srv.scheme, "http");
    assert!(!srv.ca_path().exists(), "no CA is made for plain HTTP");
    let resp = srv
        .client()
        .get(format!("{}/v2/", srv.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn busy_port_is_a_clear_error() {
    let srv = Berth::start();
    let dir = tempfile::tempdir().unwrap();
    let out = run_cmd(
        Command::new(berth_bin()).args([
            "serve",
            "--listen",
            &srv.host(),
            "--data",
            dir.path().to_str().unwrap(),
        ]),
        Duration::from_secs(60),
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("cannot listen on") && out.stderr.contains(&srv.host()),
        "{}",
        out.stderr
    );
}

#[test]
fn cert_init_writes_files_and_prints_trust_steps() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = run_cmd(
        Command::new(berth_bin()).args([
            "cert",
            "init",
            "--out",
            out_dir.to_str().unwrap(),
            "--host",
            "harbor-vm.example",
            "--ip",
            "10.0.0.5",
        ]),
        Duration::from_secs(60),
    )
    .ok();
    for f in ["ca.crt", "ca.key", "server.crt", "server.key"] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    for needle in [
        "/etc/docker/certs.d/harbor-vm.example:5443/ca.crt",
        "/etc/docker/certs.d/10.0.0.5:5443/ca.crt",
        "hosts.toml",
        "update-ca-certificates",
        "image-fetcher-ca-bundle",
        "--tls-cert",
    ] {
        assert!(
            out.stdout.contains(needle),
            "missing {needle:?} in:\n{}",
            out.stdout
        );
    }
    let summary =
        berth_pki::describe_cert(&std::fs::read_to_string(out_dir.join("server.crt")).unwrap())
            .unwrap();
    assert!(summary.dns_names.contains(&"harbor-vm.example".to_string()));
    assert!(summary.ips.contains(&"10.0.0.5".parse().unwrap()));
}

async fn realm_of(srv: &Berth, headers: &[(&str, &str)]) -> String {
    let mut req = srv.anon_client().get(format!("{}/v2/", srv.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let realm = challenge
        .split("realm=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no realm in {challenge}"));
    realm.to_string()
}

#[tokio::test]
async fn token_realm_follows_the_external_url() {
    let srv = Berth::start_with(&["--external-url", "https://registry.example.com/"]);
    assert_eq!(
        realm_of(&srv, &[("x-forwarded-host", "evil.example")]).await,
        "https://registry.example.com/service/token"
    );
}

#[tokio::test]
async fn token_realm_behind_a_tls_proxy() {
    // Forwarded headers are believed only when the operator says the proxy is trusted.
    let trusted = Berth::start_with(&["--insecure-http", "--trust-forwarded-headers"]);
    let forwarded = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "registry.example.com"),
    ];
    assert_eq!(
        realm_of(&trusted, &forwarded).await,
        "https://registry.example.com/service/token"
    );
    let untrusted = Berth::start_with(&["--insecure-http"]);
    assert_eq!(
        realm_of(&untrusted, &forwarded).await,
        format!("http://{}/service/token", untrusted.host())
    );
}

/// Clients push layers in parallel: the first pushes into a new project race to create it
/// (with auto-create on), and every one of them must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_pushes_into_a_new_project_all_succeed() {
    let srv = Berth::start();
    let client = srv.client();
    let url = srv.url();
    let uploads = (0..8).map(|i| {
        let client = client.clone();
        let target = format!("{url}/v2/race-prj/app{}/blobs/uploads/", i % 2);
        async move { client.post(target).send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(uploads).await;
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
}
