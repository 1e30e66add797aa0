//! Registries as objects (issue 11): system administrators register remote registries
//! (URL, credentials, CA), check them, and see their health; secrets are sealed at rest and
//! never shown again. The remote here is a second real Berth with its own CA.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ADMIN_PASSWORD, Berth, berth_bin, run_cmd};
use serde_json::{Value, json};

async fn call(
    berth: &Berth,
    client: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, format!("{}{path}", berth.url()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrators_register_check_and_remove_remote_registries() {
    let berth = Berth::start();
    let remote = Berth::start();
    let c = berth.client();
    let ca = String::from_utf8(remote.ca_pem()).unwrap();
    let secret = "the-remote-admin-secret";
    use reqwest::Method;

    // Add with the remote's CA and the right credentials: the check passes.
    let (status, r) = call(
        &berth,
        &c,
        Method::POST,
        "/api/v1/registries",
        Some(json!({
            "name": "site-b", "url": remote.url(), "username": "admin",
            "secret": ADMIN_PASSWORD, "ca_pem": ca, "description": "second site"
        })),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(r["has_secret"], true);
    assert_eq!(r["has_ca"], true);
    assert!(
        !r.to_string().contains(ADMIN_PASSWORD),
        "secret echoed: {r}"
    );
    let (status, r) = call(
        &berth,
        &c,
        Method::POST,
        "/api/v1/registries/site-b/check",
        None,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["health"]["ok"], true, "{r}");
    assert!(
        r["health"]["message"]
            .as_str()
            .unwrap()
            .contains("logged in as admin"),
        "{r}"
    );

    // A wrong password: the check fails and says the credentials were rejected.
    let (status, _) = call(
        &berth,
        &c,
        Method::PATCH,
        "/api/v1/registries/site-b",
        Some(json!({"secret": secret})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, r) = call(
        &berth,
        &c,
        Method::POST,
        "/api/v1/registries/site-b/check",
        None,
    )
    .await;
    assert_eq!(r["health"]["ok"], false, "{r}");
    let msg = r["health"]["message"].as_str().unwrap();
    assert!(msg.contains("rejected") && msg.contains("admin"), "{msg}");

    // Without the CA: the check names the untrusted certificate.
    let (status, r) = call(
        &berth,
        &c,
        Method::POST,
        "/api/v1/registries",
        Some(json!({"name": "no-ca", "url": remote.url()})),
    )
    .await;
    assert_eq!(status, 201, "{r}");
    let (_, r) = call(
        &berth,
        &c,
        Method::POST,
        "/api/v1/registries/no-ca/check",
        None,
    )
    .await;
    assert_eq!(r["health"]["ok"], false, "{r}");
    let msg = r["health"]["message"].as_str().unwrap().to_lowercase();
    assert!(msg.contains("certificate"), "{msg}");

    // Bad input is refused with the reason.
    for (body, want) in [
        (json!({"name": "Bad Name", "url": remote.url()}), "invalid"),
        (json!({"name": "x", "url": "ftp://h"}), "https://"),
        (
            json!({"name": "x", "url": format!("http://{}", remote.host())}),
            "plain HTTP",
        ),
        (
            json!({"name": "x", "url": remote.url(), "ca_pem": "not pem"}),
            "CA",
        ),
        (
            json!({"name": "site-b", "url": remote.url()}),
            "already exists",
        ),
    ] {
        let (status, r) = call(&berth, &c, Method::POST, "/api/v1/registries", Some(body)).await;
        assert!(status == 400 || status == 409, "{status} {r}");
        assert!(r.to_string().contains(want), "{want}: {r}");
    }

    // Only system administrators see or manage registries.
    let (status, _) = call(
        &berth,
        &c,
        Method::POST,
        "/api/v1/users",
        Some(json!({"name": "dev", "password": "dev-password-123"})),
    )
    .await;
    assert!(status == 201 || status == 200, "{status}");
    let dev = berth
        .client_builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                common::basic_auth("dev", "dev-password-123")
                    .parse()
                    .unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let (status, r) = call(&berth, &dev, Method::GET, "/api/v1/registries", None).await;
    assert_eq!(status, 403, "{r}");
    assert!(r.to_string().contains("system administrators"), "{r}");

    // The list shows health, never the secret; the database holds it sealed.
    let (status, list) = call(&berth, &c, Method::GET, "/api/v1/registries", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["no-ca", "site-b"]);
    assert!(!list.to_string().contains(secret));
    let db = std::fs::read(berth.data.path().join("metadata.db")).unwrap();
    let wal = std::fs::read(berth.data.path().join("metadata.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "plaintext secret on disk"
        );
    }
    let key = std::fs::metadata(berth.data.path().join("secret.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    // The audit log records the changes.
    let (_, audit) = call(
        &berth,
        &c,
        Method::GET,
        "/api/v1/audit?action=registry.add",
        None,
    )
    .await;
    assert!(audit.to_string().contains("registry:site-b"), "{audit}");

    let (status, _) = call(&berth, &c, Method::DELETE, "/api/v1/registries/no-ca", None).await;
    assert_eq!(status, 204);
    let (status, r) = call(&berth, &c, Method::DELETE, "/api/v1/registries/no-ca", None).await;
    assert_eq!(status, 404, "{r}");
    assert!(r.to_string().contains("berth registry list"), "{r}");
}

#[test]
fn cli_adds_checks_and_removes_a_registry_on_the_data_directory() {
    let remote = Berth::start();
    let data = tempfile::tempdir().unwrap();
    let ca = remote.ca_path();
    let berth = |args: &[&str], stdin: Option<&str>| {
        // run_cmd closes stdin; a secret is fed through a shell redirection instead.
        let mut cmd = match stdin {
            None => Command::new(berth_bin()),
            Some(input) => {
                let file = data.path().join("stdin");
                std::fs::write(&file, input).unwrap();
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("exec \"$0\" \"$@\" < '{}'", file.display()))
                    .arg(berth_bin());
                sh
            }
        };
        cmd.args(args)
            .arg("--data")
            .arg(data.path())
            .env_remove("BERTH_SECRET_KEY");
        run_cmd(&mut cmd, Duration::from_secs(60))
    };
    let url = remote.url();
    let out = berth(
        &[
            "registry",
            "add",
            "site-b",
            &url,
            "--username",
            "admin",
            "--password-stdin",
            "--ca-file",
            ca.to_str().unwrap(),
            "--check",
        ],
        Some(ADMIN_PASSWORD),
    );
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("logged in as admin"), "{}", out.stdout);
    assert!(!out.stdout.contains(ADMIN_PASSWORD));
    let out = berth(&["registry", "list"], None).ok();
    assert!(
        out.stdout.contains("site-b") && out.stdout.contains("ok ("),
        "{}",
        out.stdout
    );
    let out = berth(&["registry", "list", "--output", "json"], None).ok();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[0]["health"]["ok"], true);
    // A registry whose CA is not given fails its check with the reason, exit status 1.
    let out = berth(&["registry", "add", "bare", &url, "--check"], None);
    assert!(!out.success());
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );
    let out = berth(&["registry", "rm", "bare"], None).ok();
    assert!(out.stdout.contains("deleted registry bare"));
    let out = berth(&["registry", "check", "bare"], None);
    assert!(
        !out.success() && out.stderr.contains("not known"),
        "{}",
        out.stderr
    );
}

/// The console's Registries page (system administrators): add with the remote's CA and
/// credentials (checked at once), see the health, delete; the secret never appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_registries_page_adds_checks_and_deletes() {
    let berth = Berth::start();
    let remote = Berth::start();
    let certs = reqwest::Certificate::from_pem_bundle(&berth.ca_pem()).unwrap();
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_only(certs)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let hidden = |html: &str, name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = html.find(&marker).expect("hidden field") + marker.len();
        html[start..].split('"').next().unwrap().to_string()
    };
    let get = |path: &str| {
        let c = c.clone();
        let url = format!("{}{path}", berth.url());
        async move { c.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let login = get("/login").await;
    let r = c
        .post(format!("{}/login", berth.url()))
        .form(&[
            ("csrf", hidden(&login, "csrf").as_str()),
            ("username", "admin"),
            ("password", ADMIN_PASSWORD),
            ("next", "/admin/registries"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let page = get("/admin/registries").await;
    assert!(page.contains("id=\"new-registry-form\""), "{page}");
    let csrf = hidden(&page, "csrf");
    let ca = String::from_utf8(remote.ca_pem()).unwrap();
    let url = remote.url();
    let r = c
        .post(format!("{}/admin/registries", berth.url()))
        .form(&[
            ("csrf", csrf.as_str()),
            ("name", "site-b"),
            ("url", url.as_str()),
            ("username", "admin"),
            ("secret", ADMIN_PASSWORD),
            ("ca_pem", ca.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let page = get("/admin/registries").await;
    assert!(page.contains("logged in as admin"), "{page}");
    assert!(page.contains("data-registry=\"site-b\""));
    assert!(!page.contains(ADMIN_PASSWORD), "the secret is shown");
    // A proxy-cache project of it: its page says so and prints containerd's hosts.toml.
    let api = berth.client();
    let r = api
        .post(format!("{}/api/v1/projects", berth.url()))
        .json(&json!({"name": "cache", "public": true, "proxy": "site-b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let page = get("/projects/cache").await;
    assert!(page.contains("Proxy cache of site-b"), "{page}");
    assert!(
        page.contains(&format!("server = &quot;{url}&quot;"))
            || page.contains(&format!("server = &#34;{url}&#34;")),
        "{page}"
    );
    assert!(page.contains("/v2/cache"), "{page}");
    assert!(page.contains("override_path = true"), "{page}");
    assert!(
        page.contains(&format!(
            "/etc/containerd/certs.d/{}/hosts.toml",
            remote.host()
        )),
        "{page}"
    );
    let r = api
        .delete(format!("{}/api/v1/projects/cache", berth.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Without the CSRF token nothing changes.
    let r = c
        .post(format!("{}/admin/registries/delete", berth.url()))
        .form(&[("name", "site-b")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(format!("{}/admin/registries/delete", berth.url()))
        .form(&[("csrf", csrf.as_str()), ("name", "site-b")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let page = get("/admin/registries").await;
    assert!(!page.contains("data-registry=\"site-b\""), "{page}");
}
