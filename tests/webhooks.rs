//! Webhooks end to end against the real `berth serve`: local HTTPS receivers (a CA made by
//! berth-pki, on 127.0.0.1, ephemeral ports) check Harbor JSON and CloudEvents payloads of
//! a push made by berth-client, the HMAC signature and the `Authorization` header, retries
//! with the delivery log (the receiver fails the first two deliveries), pull/delete/quota
//! events, that a private project's events reach only its own endpoints, and that a
//! receiver that never answers does not slow pushes.

mod common;
mod fixtures;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_client::copy::{Location, Platforms};
use berth_client::creds::AuthEntry;
use berth_client::{ClientOptions, ImageRef, Keyring, RegistryClient, TrustOptions};
use common::receiver::{Mode, Receiver};
use common::{ADMIN_PASSWORD, ADMIN_USER, Berth};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// HMAC-SHA256 (RFC 2104), computed here independently of the server's implementation.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let inner = Sha256::digest(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(inner.iter().copied())
        .collect();
    format!("sha256={}", hex::encode(Sha256::digest(&outer)))
}

/// `berth serve` with fast webhook retries (config file in its data directory).
fn start_berth(webhooks_toml: &str) -> Berth {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("berth.toml");
    std::fs::write(&config, format!("[webhooks]\n{webhooks_toml}")).unwrap();
    let config = config.to_str().unwrap().to_owned();
    Berth::start_in(data, &["--config", &config])
}

fn registry_client(reg: &Berth) -> RegistryClient {
    let mut trust = TrustOptions::isolated();
    trust.add_ca_pem(&reg.ca_pem(), "test CA").unwrap();
    let mut keyring = Keyring::new();
    keyring.add_auths(
        BTreeMap::from([(reg.host(), AuthEntry::basic(ADMIN_USER, ADMIN_PASSWORD))]),
        "test secret",
    );
    RegistryClient::new(ClientOptions {
        trust,
        keyring,
        ..ClientOptions::default()
    })
}

async fn api(
    reg: &Berth,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reg.client().request(method, format!("{}{path}", reg.url()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("API request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn create_project(reg: &Berth, name: &str) {
    let (s, v) = api(
        reg,
        reqwest::Method::POST,
        "/api/v1/projects",
        Some(json!({ "name": name, "public": false })),
    )
    .await;
    assert_eq!(s, 201, "create project {name}: {v}");
}

async fn add_hook(reg: &Berth, project: &str, spec: Value) {
    let (s, v) = api(
        reg,
        reqwest::Method::POST,
        &format!("/api/v1/projects/{project}/webhooks"),
        Some(spec),
    )
    .await;
    assert_eq!(s, 201, "add webhook: {v}");
    assert!(
        !v.to_string().contains("s3cret"),
        "the secret is never shown: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_delivered_signed_retried_and_logged() {
    let reg = start_berth("backoff_ms = 300\ntimeout_ms = 5000\nmax_attempts = 4\ncache_ms = 0\n");
    let harbor = Receiver::start(Mode::FailFirst(2)).await;
    let cloud = Receiver::start(Mode::FailFirst(0)).await;
    let stranger = Receiver::start(Mode::FailFirst(0)).await;
    create_project(&reg, "hooks").await;
    create_project(&reg, "other").await;
    add_hook(
        &reg,
        "hooks",
        json!({
            "name": "ci", "url": harbor.url(), "events": ["push", "pull", "delete", "quota_exceeded"],
            "format": "harbor", "auth": "hmac", "secret": "s3cret-key", "ca_pem": harbor.ca_pem,
        }),
    )
    .await;
    add_hook(
        &reg,
        "hooks",
        json!({
            "name": "events", "url": cloud.url(), "events": ["push"], "format": "cloudevents",
            "auth": "header", "secret": "Bearer s3cret-token", "ca_pem": cloud.ca_pem,
        }),
    )
    .await;
    // Another project's endpoint, subscribed to everything: it must hear nothing of `hooks`.
    add_hook(
        &reg,
        "other",
        json!({
            "name": "all", "url": stranger.url(),
            "events": ["push", "pull", "delete", "quota_exceeded", "replication"],
            "ca_pem": stranger.ca_pem,
        }),
    )
    .await;
    // Secrets are sealed at rest: not in the database file nor its WAL.
    assert!(reg.data.path().join("metadata.db").exists());
    for file in ["metadata.db", "metadata.db-wal"] {
        let bytes = std::fs::read(reg.data.path().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(6).any(|w| w == b"s3cret"),
            "a webhook secret is stored in plain text in {file}"
        );
    }
    let (s, list) = api(
        &reg,
        reqwest::Method::GET,
        "/api/v1/projects/hooks/webhooks",
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list[0]["name"], "ci");
    assert_eq!(list[0]["has_secret"], true);
    assert!(!list.to_string().contains("s3cret"), "{list}");

    // A push made by a real client (berth-client, the library behind `berth push`).
    let tmp = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&tmp.path().join("img"), "v1");
    let image = ImageRef::parse(&format!("{}/hooks/app:v1", reg.host())).unwrap();
    let client = registry_client(&reg);
    berth_client::copy(
        &client,
        &Location::Layout {
            dir: layout.path.clone(),
            tag: Some("v1".into()),
        },
        &Location::Registry(image.clone()),
        &Platforms::All,
    )
    .await
    .expect("push");
    let digest = layout.manifest_digest().to_owned();

    // Harbor JSON, signed; the receiver failed the first two attempts, the third succeeded.
    let got = harbor.wait_for(3, Duration::from_secs(30)).await;
    let host = reg.host();
    for (i, r) in got.iter().take(3).enumerate() {
        assert_eq!(r.header("content-type"), "application/json", "attempt {i}");
        assert_eq!(r.header("x-berth-event"), "push");
        assert_eq!(
            r.header("x-berth-signature-256"),
            hmac_sha256(b"s3cret-key", &r.body),
            "attempt {i}: the signature is HMAC-SHA256 of the exact body"
        );
        assert_eq!(r.header("authorization"), "", "no Authorization with hmac");
        assert_eq!(
            r.header("x-berth-delivery"),
            got[0].header("x-berth-delivery"),
            "one delivery id across retries"
        );
        let v = r.json();
        assert_eq!(v["type"], "PUSH_ARTIFACT");
        assert_eq!(v["operator"], ADMIN_USER);
        assert!(v["occur_at"].as_i64().unwrap() > 1_700_000_000);
        assert_eq!(
            v["event_data"],
            json!({
                "resources": [{
                    "digest": digest,
                    "tag": "v1",
                    "resource_url": format!("{host}/hooks/app:v1"),
                }],
                "repository": {
                    "name": "app",
                    "namespace": "hooks",
                    "repo_full_name": "hooks/app",
                    "repo_type": "private",
                }
            })
        );
    }

    // CloudEvents 1.0 with the Authorization header.
    let ce = cloud.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(ce[0].header("content-type"), "application/cloudevents+json");
    assert_eq!(ce[0].header("authorization"), "Bearer s3cret-token");
    assert_eq!(ce[0].header("x-berth-signature-256"), "");
    let v = ce[0].json();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["type"], "harbor.artifact.pushed");
    assert_eq!(v["source"], "/projects/hooks/webhook/policies/events");
    assert_eq!(v["datacontenttype"], "application/json");
    assert_eq!(v["operator"], ADMIN_USER);
    assert!(!v["id"].as_str().unwrap().is_empty());
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["data"]["resources"][0]["digest"], digest.as_str());
    assert_eq!(v["data"]["repository"]["repo_full_name"], "hooks/app");

    // The delivery log shows the three attempts, newest first (an attempt is logged right
    // after its answer, so wait for the third entry).
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let (s, log) = api(
            &reg,
            reqwest::Method::GET,
            "/api/v1/projects/hooks/webhooks/ci/deliveries",
            None,
        )
        .await;
        assert_eq!(s, 200, "{log}");
        if log.as_array().unwrap().len() >= 3 || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = log.as_array().unwrap().clone();
    let attempts: Vec<(u64, u64, bool)> = log
        .iter()
        .map(|d| {
            (
                d["attempt"].as_u64().unwrap(),
                d["status"].as_u64().unwrap(),
                d["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [(3, 200, true), (2, 500, false), (1, 500, false)],
        "{log:?}"
    );
    assert!(log[1]["error"].as_str().unwrap().contains("500"), "{log:?}");
    assert_eq!(log[0]["event"], "push");
    assert_eq!(log[0]["subject"], "hooks/app");

    // A pull (manifest GET; HEAD and blob GETs are not pulls) and a delete.
    let http = reg.client();
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let url = format!("{}/v2/hooks/app/manifests/v1", reg.url());
    let r = http
        .head(&url)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(&url)
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = harbor.wait_for(4, Duration::from_secs(10)).await;
    let v = got[3].json();
    assert_eq!(v["type"], "PULL_ARTIFACT", "{v}");
    assert_eq!(v["event_data"]["resources"][0]["tag"], "v1");
    assert_eq!(v["event_data"]["resources"][0]["digest"], digest.as_str());
    let r = http
        .delete(format!("{}/v2/hooks/app/manifests/{digest}", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = harbor.wait_for(5, Duration::from_secs(10)).await;
    let v = got[4].json();
    assert_eq!(v["type"], "DELETE_ARTIFACT", "{v}");
    assert_eq!(v["event_data"]["resources"][0]["tag"], digest.as_str());
    assert_eq!(
        v["event_data"]["resources"][0]["resource_url"],
        format!("{host}/hooks/app@{digest}")
    );

    // A push refused by the project's quota.
    let (s, v) = api(
        &reg,
        reqwest::Method::PATCH,
        "/api/v1/projects/hooks/policy",
        Some(json!({ "quota_bytes": 10 })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let big = ImageRef::parse(&format!("{}/hooks/big:v1", reg.host())).unwrap();
    let refused = berth_client::copy(
        &client,
        &Location::Layout {
            dir: layout.path.clone(),
            tag: Some("v1".into()),
        },
        &Location::Registry(big),
        &Platforms::All,
    )
    .await;
    assert!(refused.is_err(), "a push over the quota is refused");
    let got = harbor.wait_for(6, Duration::from_secs(10)).await;
    let v = got[5].json();
    assert_eq!(v["type"], "QUOTA_EXCEED", "{v}");
    assert_eq!(v["event_data"]["repository"]["repo_full_name"], "hooks/big");
    assert!(
        v["event_data"]["custom_attributes"]["Details"]
            .as_str()
            .unwrap()
            .contains("quota"),
        "{v}"
    );

    // The test button: one attempt, answered now, logged.
    let (s, d) = api(
        &reg,
        reqwest::Method::POST,
        "/api/v1/projects/hooks/webhooks/events/test",
        None,
    )
    .await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(d["status"], 200);

    // Nothing of the private project `hooks` reached the endpoint of project `other`.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        stranger.received().is_empty(),
        "another project's endpoint heard: {:?}",
        stranger.received()
    );
    // Exactly the events subscribed to (HEAD made no pull event); each refused upload of
    // the quota-exceeding push is reported (the client may send its blobs in parallel).
    let types: Vec<String> = harbor
        .received()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types[..6],
        [
            "PUSH_ARTIFACT",
            "PUSH_ARTIFACT",
            "PUSH_ARTIFACT",
            "PULL_ARTIFACT",
            "DELETE_ARTIFACT",
            "QUOTA_EXCEED"
        ]
    );
    assert!(types[6..].iter().all(|t| t == "QUOTA_EXCEED"), "{types:?}");

    // Changing an endpoint: only the fields given; a bad URL is refused with the reason.
    let (s, v) = api(
        &reg,
        reqwest::Method::PATCH,
        "/api/v1/projects/hooks/webhooks/events",
        Some(json!({ "enabled": false, "events": ["push", "pull"] })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["enabled"], false);
    assert_eq!(v["events"], json!(["push", "pull"]));
    assert_eq!(v["format"], "cloudevents");
    assert_eq!(v["has_secret"], true);
    let (s, v) = api(
        &reg,
        reqwest::Method::PATCH,
        "/api/v1/projects/hooks/webhooks/events",
        Some(json!({ "url": "http://plain.example/hook" })),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("https://"), "{v}");

    // Removing an endpoint removes it (and its log).
    let (s, _) = api(
        &reg,
        reqwest::Method::DELETE,
        "/api/v1/projects/hooks/webhooks/ci",
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = api(
        &reg,
        reqwest::Method::GET,
        "/api/v1/projects/hooks/webhooks/ci/deliveries",
        None,
    )
    .await;
    assert_eq!(s, 404);
}

/// Push one small image (a 1 KiB layer, a config, a manifest) with plain HTTP calls;
/// returns how long the manifest PUT took.
async fn small_push(http: &reqwest::Client, base: &str, repo: &str, seed: u64) -> Duration {
    let layer: Vec<u8> = (0..1024u64).map(|i| (i * 31 + seed) as u8).collect();
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}");
    let manifest = common::image_manifest_json(config.as_bytes(), &layer);
    for blob in [&layer[..], config.as_bytes()] {
        let d = common::sha256_digest(blob);
        let r = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
            .header("content-type", "application/octet-stream")
            .body(blob.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    }
    let started = Instant::now();
    let r = http
        .put(format!("{base}/v2/{repo}/manifests/t{seed}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    took
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Figures recorded in BENCHMARKS.md come from this test:
/// `cargo test --test webhooks a_dead_receiver_does_not_slow_pushes -- --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_does_not_slow_pushes() {
    let reg = start_berth(
        "timeout_ms = 30000\nconcurrency = 2\nendpoint_queue = 4\nmax_attempts = 3\ncache_ms = 0\n",
    );
    let dead = Receiver::start(Mode::Never).await;
    create_project(&reg, "quiet").await;
    create_project(&reg, "loud").await;
    add_hook(
        &reg,
        "loud",
        json!({ "name": "dead", "url": dead.url(), "events": ["push"], "ca_pem": dead.ca_pem }),
    )
    .await;
    let http = reg.client();
    let base = reg.url();
    // Warm up both paths, then alternate so both see the same machine load.
    small_push(&http, &base, "quiet/app", 1000).await;
    small_push(&http, &base, "loud/app", 1000).await;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for i in 0..30 {
        without.push(small_push(&http, &base, "quiet/app", i).await);
        with.push(small_push(&http, &base, "loud/app", i).await);
    }
    let (a, b) = (p50(without.clone()), p50(with.clone()));
    let max_with = with.iter().max().unwrap();
    println!(
        "manifest PUT p50 without a webhook: {:.2} ms, with a dead receiver: {:.2} ms (max {:.2} ms)",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        max_with.as_secs_f64() * 1e3
    );
    assert!(
        b <= a * 3 + Duration::from_millis(20),
        "a dead receiver slowed pushes: p50 {b:?} with it vs {a:?} without"
    );
    assert!(
        *max_with < Duration::from_secs(5),
        "one push waited for the receiver: {max_with:?}"
    );
    // Most events were dropped (2 in flight + 4 queued), and counted where operators look.
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("berth_webhook_events_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        dropped >= 20.0,
        "expected the dead endpoint's overflow to be dropped and counted: {dropped}\n{metrics}"
    );
    assert!(dead.received().is_empty());
}

/// Run `berth webhook ARGS --data DIR`, with `stdin` piped in; (success, stdout, stderr).
async fn berth_webhook(
    data: &std::path::Path,
    args: &[&str],
    stdin: &str,
) -> (bool, String, String) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let (data, args, stdin) = (
        data.to_owned(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        stdin.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(common::berth_bin())
            .arg("webhook")
            .args(&args)
            .arg("--data")
            .arg(&data)
            .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("BERTH_WEBHOOK_SECRET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run berth webhook");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_adds_tests_lists_and_removes_webhooks() {
    let receiver = Receiver::start(Mode::FailFirst(0)).await;
    let data = tempfile::tempdir().unwrap();
    let ca = data.path().join("receiver-ca.crt");
    std::fs::write(&ca, &receiver.ca_pem).unwrap();
    let url = receiver.url();
    let (ok, out, err) = berth_webhook(
        data.path(),
        &[
            "add",
            "library",
            "ci",
            "--url",
            &url,
            "--events",
            "push,delete",
            "--auth",
            "hmac",
            "--secret-stdin",
            "--ca-file",
            ca.to_str().unwrap(),
        ],
        "cli-s3cret\n",
    )
    .await;
    assert!(ok, "add: {out}{err}");
    assert!(out.contains("added webhook ci"), "{out}");
    // A secret is required for hmac, and never taken from the command line.
    let (ok, _, err) = berth_webhook(
        data.path(),
        &["add", "library", "other", "--url", &url, "--auth", "header"],
        "",
    )
    .await;
    assert!(!ok && err.contains("--secret-stdin"), "{err}");

    let (ok, out, err) =
        berth_webhook(data.path(), &["list", "library", "--output", "json"], "").await;
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "ci");
    assert_eq!(list[0]["events"], json!(["push", "delete"]));
    assert_eq!(list[0]["has_secret"], true);
    assert!(!out.contains("cli-s3cret"), "{out}");

    let (ok, out, err) = berth_webhook(data.path(), &["test", "library", "ci"], "").await;
    assert!(ok, "test: {out}{err}");
    assert!(out.contains("200"), "{out}");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].header("x-berth-signature-256"),
        hmac_sha256(b"cli-s3cret", &got[0].body)
    );
    assert_eq!(got[0].json()["type"], "PUSH_ARTIFACT");

    let (ok, out, err) = berth_webhook(
        data.path(),
        &["deliveries", "library", "ci", "--output", "json"],
        "",
    )
    .await;
    assert!(ok, "{err}");
    let log: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(log[0]["event"], "test");
    assert_eq!(log[0]["status"], 200);

    let (ok, _, err) = berth_webhook(data.path(), &["rm", "library", "ci"], "").await;
    assert!(ok, "{err}");
    let (ok, _, err) = berth_webhook(data.path(), &["rm", "library", "ci"], "").await;
    assert!(!ok && err.contains("no webhook named ci"), "{err}");
}

/// The `value="…"` of the first hidden input named `name`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden field {name} in:\n{html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_page_adds_tests_disables_and_removes_webhooks() {
    let reg = start_berth("cache_ms = 0\n");
    let receiver = Receiver::start(Mode::FailFirst(0)).await;
    create_project(&reg, "web").await;
    let console = reg
        .client_builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = reg.url();
    let get = |path: String| {
        let console = console.clone();
        async move {
            let r = console.get(path).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, html) = get(format!("{base}/login")).await;
    assert_eq!(s, 200);
    let r = console
        .post(format!("{base}/login"))
        .form(&[
            ("csrf", hidden(&html, "csrf").as_str()),
            ("username", ADMIN_USER),
            ("password", ADMIN_PASSWORD),
            ("next", "/projects"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let page = format!("{base}/projects/web/webhooks");
    let (s, html) = get(page.clone()).await;
    assert_eq!(s, 200, "{html}");
    assert!(html.contains("id=\"no-webhooks\""), "{html}");
    let csrf = hidden(&html, "csrf");
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let console = console.clone();
        async move {
            let r = console.post(path).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, body) = post(
        page.clone(),
        vec![
            ("csrf", csrf.clone()),
            ("name", "hook1".into()),
            ("url", receiver.url()),
            ("ev_push", "on".into()),
            ("format", "cloudevents".into()),
            ("auth", "hmac".into()),
            ("secret", "console-s3cret".into()),
            ("ca_pem", receiver.ca_pem.clone()),
        ],
    )
    .await;
    assert_eq!(s, 303, "{body}");
    let (_, html) = get(page.clone()).await;
    assert!(html.contains("data-webhook=\"hook1\""), "{html}");
    assert!(html.contains(&receiver.url()), "{html}");
    assert!(
        !html.contains("console-s3cret"),
        "the secret is never shown"
    );
    assert!(
        html.contains("<span id=\"webhooks-dropped\">0</span>"),
        "{html}"
    );

    let action = format!("{base}/projects/web/webhooks/action");
    let act = |op: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("webhook", "hook1".to_string()),
            ("op", op.to_string()),
        ]
    };
    let (s, body) = post(action.clone(), act("test")).await;
    assert_eq!(s, 303, "{body}");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["specversion"], "1.0");
    assert_eq!(
        got[0].header("x-berth-signature-256"),
        hmac_sha256(b"console-s3cret", &got[0].body)
    );
    let (_, html) = get(page.clone()).await;
    assert!(
        html.contains("<td>test</td>"),
        "the delivery log shows the test: {html}"
    );
    assert!(html.contains("<td>200</td>"), "{html}");

    let (s, _) = post(action.clone(), act("disable")).await;
    assert_eq!(s, 303);
    let (_, html) = get(page.clone()).await;
    assert!(html.contains("(disabled)"), "{html}");
    // Without the CSRF token nothing happens.
    let (s, _) = post(
        action.clone(),
        vec![("webhook", "hook1".into()), ("op", "remove".into())],
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = post(action.clone(), act("remove")).await;
    assert_eq!(s, 303);
    let (_, html) = get(page).await;
    assert!(html.contains("id=\"no-webhooks\""), "{html}");
}
