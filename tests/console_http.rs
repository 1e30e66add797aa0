//! The web console over real HTTPS against `berth serve`, with a cookie-keeping client:
//! escaping of client-supplied values, CSRF refusal, the registry's permissions by URL,
//! invisibility of private projects, session cookies and server-side sign-out, the login
//! rate limit, and the pages' contract (ids the browser tests rely on).

mod common;

use std::time::Duration;

use common::{ADMIN_PASSWORD, ADMIN_USER, Berth, basic_auth};
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const PASSWORD: &str = "console-user-password-1";

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A browser-like client: keeps cookies, does not follow redirects, trusts the server's CA.
fn browser(b: &Berth) -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(&b.ca_pem()).expect("ca pem");
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .tls_certs_only(certs)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// A client sending no cookies at all, with an explicit `Cookie` header.
fn with_cookie(b: &Berth, cookie: &str) -> reqwest::Client {
    let certs = reqwest::Certificate::from_pem_bundle(&b.ca_pem()).expect("ca pem");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::COOKIE, cookie.parse().unwrap());
    reqwest::Client::builder()
        .redirect(Policy::none())
        .tls_certs_only(certs)
        .default_headers(headers)
        .build()
        .expect("client")
}

/// The `value="…"` of the first hidden input named `name` (askama escapes nothing in
/// these tokens: they are hex or alphanumeric).
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden field {name} in:\n{html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

async fn text(c: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let r = c.get(url).send().await.expect("GET");
    let status = r.status();
    (status, r.text().await.expect("body"))
}

/// Fetch the sign-in form and post it (with its CSRF token and `next=/projects`).
async fn try_login(
    b: &Berth,
    c: &reqwest::Client,
    user: &str,
    password: &str,
) -> (StatusCode, String) {
    let (status, html) = text(c, &format!("{}/login", b.url())).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    post_form(
        c,
        &format!("{}/login", b.url()),
        &[
            ("csrf", hidden(&html, "csrf").as_str()),
            ("username", user),
            ("password", password),
            ("next", "/projects"),
        ],
    )
    .await
}

/// Sign in through the form; returns the session's CSRF token.
async fn sign_in(b: &Berth, c: &reqwest::Client, user: &str, password: &str) -> String {
    let (status, html) = try_login(b, c, user, password).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    let (status, html) = text(c, &format!("{}/projects", b.url())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(&format!("<span id=\"whoami\">{user}</span>")),
        "{html}"
    );
    hidden(&html, "csrf")
}

async fn post_form(c: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
    let r = c.post(url).form(form).send().await.expect("POST");
    let status = r.status();
    (status, r.text().await.expect("body"))
}

/// POST `fields` and the session's CSRF token to `url`; panics unless the answer is
/// `expect`. Returns the body.
async fn post_csrf(
    c: &reqwest::Client,
    url: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    expect: StatusCode,
) -> String {
    let mut form = vec![("csrf", csrf)];
    form.extend_from_slice(fields);
    let (status, html) = post_form(c, url, &form).await;
    assert_eq!(status, expect, "POST {url}: {html}");
    html
}

/// GET `path` from the JSON API as the administrator.
async fn api_json(b: &Berth, path: &str) -> Value {
    b.client()
        .get(format!("{}{path}", b.url()))
        .send()
        .await
        .expect("api GET")
        .json()
        .await
        .expect("api JSON")
}

/// Admin JSON API call; panics unless the status is `expect`.
async fn api(b: &Berth, method: reqwest::Method, path: &str, body: Value, expect: u16) {
    let r = b
        .client()
        .request(method, format!("{}{path}", b.url()))
        .json(&body)
        .send()
        .await
        .expect("api");
    let status = r.status().as_u16();
    assert_eq!(status, expect, "{path}: {}", r.text().await.unwrap());
}

async fn add_user(b: &Berth, name: &str) {
    api(
        b,
        reqwest::Method::POST,
        "/api/v1/users",
        json!({"name": name, "password": PASSWORD}),
        201,
    )
    .await;
}

async fn set_role(b: &Berth, project: &str, user: &str, role: &str) {
    api(
        b,
        reqwest::Method::PUT,
        &format!("/api/v1/projects/{project}/members/{user}"),
        json!({"role": role}),
        200,
    )
    .await;
}

/// The private project `team` with these users (password [`PASSWORD`]) in these roles.
async fn private_team(b: &Berth, members: &[(&str, &str)]) {
    api(
        b,
        reqwest::Method::POST,
        "/api/v1/projects",
        json!({"name": "team"}),
        201,
    )
    .await;
    for (user, role) in members {
        add_user(b, user).await;
        set_role(b, "team", user, role).await;
    }
}

/// The `<tr>` of `html` that starts with `start`, up to its end.
fn row<'a>(html: &'a str, start: &str) -> &'a str {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("no row {start} in:\n{html}"));
    let rest = &html[from..];
    &rest[..rest.find("</tr>").expect("a closed row")]
}

async fn push_blob(b: &Berth, repo: &str, bytes: &[u8]) -> String {
    let digest = digest_of(bytes);
    let r = b
        .client()
        .post(format!(
            "{}/v2/{repo}/blobs/uploads/?digest={digest}",
            b.url()
        ))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("blob upload");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    digest
}

async fn put_manifest(b: &Berth, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let r = b
        .client()
        .put(format!("{}/v2/{repo}/manifests/{reference}", b.url()))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("manifest put");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
}

const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Push a one-layer image whose config carries `labels` and whose manifest carries
/// `annotations`; returns the manifest bytes.
async fn push_image(
    b: &Berth,
    repo: &str,
    tag: &str,
    labels: Value,
    annotations: Value,
) -> Vec<u8> {
    let layer = format!("layer of {repo}:{tag}").into_bytes();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-11-27T01:02:03Z",
        "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer)]},
    }))
    .unwrap();
    let layer_digest = push_blob(b, repo, &layer).await;
    let config_digest = push_blob(b, repo, &config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": IMAGE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
        "annotations": annotations,
    }))
    .unwrap();
    put_manifest(b, repo, tag, IMAGE, &manifest).await;
    manifest
}

async fn manifest_status(b: &Berth, repo: &str, reference: &str) -> StatusCode {
    b.client()
        .head(format!("{}/v2/{repo}/manifests/{reference}", b.url()))
        .header("accept", IMAGE)
        .send()
        .await
        .expect("HEAD manifest")
        .status()
}

#[tokio::test]
async fn client_supplied_values_are_escaped_and_pages_carry_security_headers() {
    let b = Berth::start();
    let image = push_image(
        &b,
        "library/xss",
        "v1",
        json!({"evil": "<script>alert(1)</script>", "<b>key</b>": "x"}),
        json!({"org.opencontainers.image.description": "<img src=x onerror=alert(2)>"}),
    )
    .await;
    // A signature-like referrer whose annotation carries markup too.
    let empty = push_blob(&b, "library/xss", b"{}").await;
    let sig = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": IMAGE,
        "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
        "subject": {"mediaType": IMAGE, "digest": digest_of(&image), "size": image.len()},
        "annotations": {"signer": "<i>ci</i>"},
    }))
    .unwrap();
    put_manifest(&b, "library/xss", &digest_of(&sig), IMAGE, &sig).await;
    // A two-platform index.
    let arm = push_image(&b, "library/xss", "arm", json!({}), json!({})).await;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": IMAGE, "digest": digest_of(&image), "size": image.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": IMAGE, "digest": digest_of(&arm), "size": arm.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    }))
    .unwrap();
    put_manifest(
        &b,
        "library/xss",
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &index,
    )
    .await;
    // Anonymous visitors read the public project.
    let anon = browser(&b);
    let r = anon
        .get(format!("{}/repositories/library/xss?tag=v1", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.contains_key("referrer-policy"));
    let html = r.text().await.unwrap();
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "label shown escaped:\n{html}"
    );
    assert!(html.contains("<table id=\"labels\">"), "{html}");
    assert!(html.contains("<table id=\"annotations\">"), "{html}");
    assert!(!html.contains("<script>alert(1)"), "{html}");
    assert!(!html.contains("<img src=x"), "{html}");
    assert!(!html.contains("<b>key</b>"), "{html}");
    assert!(
        html.contains("onerror=alert(2)"),
        "the annotation is shown as text"
    );
    assert!(
        html.contains("<td class=\"referrers\">1 (application/vnd.example.sig)</td>"),
        "{html}"
    );
    assert!(html.contains("id=\"referrers\""), "{html}");
    assert!(!html.contains("<i>ci</i>"), "{html}");
    let multi = html
        .split("<tr data-tag=\"multi\"")
        .nth(1)
        .unwrap()
        .split("</tr>")
        .next()
        .unwrap();
    assert!(
        multi.contains("<td class=\"platforms\">linux/amd64, linux/arm64/v8</td>"),
        "{multi}"
    );
    // The only script is the console's own file.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(html.contains("<script src=\"/static/console.js\" defer></script>"));
    // Config details and pull commands with the host the browser used.
    assert!(
        html.contains("[&#34;/bin/app&#34;]") || html.contains("[&quot;/bin/app&quot;]"),
        "{html}"
    );
    assert!(html.contains("linux/amd64"), "{html}");
    assert!(
        html.contains(&format!(
            "<code id=\"pull-docker\">docker pull {}/library/xss:v1</code>",
            b.host()
        )),
        "{html}"
    );

    // A project description with markup, given through the console form.
    let c = browser(&b);
    let csrf = sign_in(&b, &c, ADMIN_USER, ADMIN_PASSWORD).await;
    post_csrf(
        &c,
        &format!("{}/projects", b.url()),
        &csrf,
        &[
            ("name", "shown"),
            ("description", "<script>alert(3)</script>"),
        ],
        StatusCode::SEE_OTHER,
    )
    .await;
    let (_, html) = text(&c, &format!("{}/projects/shown", b.url())).await;
    assert!(!html.contains("<script>alert(3)"), "{html}");
    assert!(html.contains("alert(3)"), "{html}");
    // An invalid name is refused with the rule, and the name shown as text.
    let html = post_csrf(
        &c,
        &format!("{}/projects", b.url()),
        &csrf,
        &[("name", "<b>Bad</b>")],
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(html.contains("id=\"error\""), "{html}");
    assert!(html.contains("lowercase letters, digits"), "{html}");
    assert!(!html.contains("<b>Bad</b>"), "{html}");
}

#[tokio::test]
async fn state_changing_posts_need_the_csrf_token() {
    let b = Berth::start();
    let c = browser(&b);
    // Sign-in without the double-submit token.
    let (status, html) = post_form(
        &c,
        &format!("{}/login", b.url()),
        &[("username", ADMIN_USER), ("password", ADMIN_PASSWORD)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("CSRF token"), "{html}");
    assert!(html.contains("reload the page"), "{html}");

    let csrf = sign_in(&b, &c, ADMIN_USER, ADMIN_PASSWORD).await;
    for form in [
        vec![("name", "nocsrf")],
        vec![("name", "nocsrf"), ("csrf", "")],
        vec![("name", "nocsrf"), ("csrf", "0123456789abcdef")],
    ] {
        let (status, html) = post_form(&c, &format!("{}/projects", b.url()), &form).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{html}");
        assert!(html.contains("CSRF token"), "{html}");
        assert!(html.contains("<div id=\"error\""), "{html}");
    }
    // Another session's token does not work either.
    let other = browser(&b);
    let other_csrf = sign_in(&b, &other, ADMIN_USER, ADMIN_PASSWORD).await;
    assert_ne!(other_csrf, csrf);
    let (status, _) = post_form(
        &c,
        &format!("{}/projects", b.url()),
        &[("name", "nocsrf"), ("csrf", &other_csrf)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A POST with no body at all.
    let r = c
        .post(format!("{}/admin/users", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Nothing changed.
    let r = b
        .client()
        .get(format!("{}/api/v1/projects/nocsrf", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // With the token it works.
    let (status, _) = post_form(
        &c,
        &format!("{}/projects", b.url()),
        &[("name", "withcsrf"), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, html) = text(&c, &format!("{}/projects", b.url())).await;
    assert!(html.contains("data-project=\"withcsrf\""), "{html}");
    assert!(
        html.contains("Project withcsrf created (private)."),
        "flash: {html}"
    );
}

#[tokio::test]
async fn guests_and_developers_cannot_reach_maintainer_or_admin_actions_by_url() {
    let b = Berth::start();
    private_team(
        &b,
        &[
            ("gus", "guest"),
            ("dev", "developer"),
            ("mae", "maintainer"),
        ],
    )
    .await;
    push_image(&b, "team/app", "v1", json!({}), json!({})).await;
    push_image(&b, "team/app", "v2", json!({}), json!({})).await;
    let url = |p: &str| format!("{}{p}", b.url());
    let repo_url = url("/repositories/team/app");

    for user in ["gus", "dev"] {
        let c = browser(&b);
        let csrf = sign_in(&b, &c, user, PASSWORD).await;
        let (status, html) = text(&c, &repo_url).await;
        assert_eq!(status, StatusCode::OK, "{user} reads: {html}");
        assert!(html.contains("data-tag=\"v1\""), "{html}");
        assert!(!html.contains("delete-tag-button"), "{user} sees no delete");
        // Delete by URL anyway.
        let html = post_csrf(
            &c,
            &format!("{repo_url}/-/delete-tag"),
            &csrf,
            &[("tag", "v1")],
            StatusCode::FORBIDDEN,
        )
        .await;
        assert!(html.contains("may not delete team/app"), "{html}");
        assert!(
            html.contains("repository:team/app:delete"),
            "the scope: {html}"
        );
        let digest = digest_of(
            &b.client()
                .get(format!("{}/v2/team/app/manifests/v1", b.url()))
                .header("accept", IMAGE)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        );
        // Every other maintainer, project-admin and system-admin action is refused too.
        let refused: [(String, Vec<(&str, &str)>); 9] = [
            (
                format!("{repo_url}/-/delete-manifest"),
                vec![("digest", &digest)],
            ),
            (
                url("/projects/team/members"),
                vec![("username", user), ("role", "project_admin")],
            ),
            (
                url("/projects/team/robots"),
                vec![("name", "sneaky"), ("permission", "push")],
            ),
            (
                url("/projects/team/members/remove"),
                vec![("username", "mae")],
            ),
            (url("/projects/team/settings"), vec![("public", "true")]),
            (url("/projects/team/delete"), vec![]),
            (
                url("/admin/users"),
                vec![("username", "intruder"), ("admin", "true")],
            ),
            (
                url("/admin/users/admin"),
                vec![("username", user), ("admin", "true")],
            ),
            (
                url("/admin/users/password"),
                vec![("username", ADMIN_USER), ("password", "hijacked-pass-1")],
            ),
        ];
        for (target, fields) in refused {
            let html = post_csrf(&c, &target, &csrf, &fields, StatusCode::FORBIDDEN).await;
            if target.ends_with("/members") {
                assert!(html.contains("project_admin role"), "{html}");
            }
        }
        assert_eq!(manifest_status(&b, "team/app", "v1").await, StatusCode::OK);
        // Administration pages.
        for page in ["/admin/users", "/admin/audit", "/admin/certificate"] {
            let (status, html) = text(&c, &url(page)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{page}: {html}");
            assert!(html.contains("only system administrators"), "{html}");
        }
    }
    // Nothing changed.
    let members: Value = api_json(&b, "/api/v1/projects/team/members").await;
    let roles: Vec<(String, String)> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().into(),
                m["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(roles.contains(&("gus".into(), "guest".into())), "{roles:?}");
    assert!(
        roles.contains(&("dev".into(), "developer".into())),
        "{roles:?}"
    );
    assert!(
        roles.contains(&("mae".into(), "maintainer".into())),
        "{roles:?}"
    );
    let users: Value = api_json(&b, "/api/v1/users").await;
    assert!(!users.to_string().contains("intruder"));
    let project: Value = api_json(&b, "/api/v1/projects/team").await;
    assert_eq!(project["public"], false, "{project}");
    let robots: Value = api_json(&b, "/api/v1/projects/team/robots").await;
    assert_eq!(robots, json!([]));
    sign_in(&b, &browser(&b), ADMIN_USER, ADMIN_PASSWORD).await;

    // A maintainer may delete: the same registry code answers yes.
    let c = browser(&b);
    let csrf = sign_in(&b, &c, "mae", PASSWORD).await;
    let (_, html) = text(&c, &repo_url).await;
    assert!(html.contains("delete-tag-button"), "{html}");
    post_csrf(
        &c,
        &format!("{repo_url}/-/delete-tag"),
        &csrf,
        &[("tag", "v1")],
        StatusCode::SEE_OTHER,
    )
    .await;
    assert_eq!(
        manifest_status(&b, "team/app", "v1").await,
        StatusCode::NOT_FOUND
    );
    let (_, html) = text(&c, &repo_url).await;
    assert!(html.contains("Tag v1 deleted from team/app."), "{html}");
    assert!(!html.contains("data-tag=\"v1\""), "{html}");
    assert!(html.contains("data-tag=\"v2\""), "{html}");
    // The registry's audit record, with the console user as actor.
    let audit: Value = api_json(&b, "/api/v1/audit?action=delete").await;
    assert_eq!(audit[0]["actor"], "mae", "{audit}");
    assert_eq!(audit[0]["resource"], "team/app:v1", "{audit}");
}

#[tokio::test]
async fn private_projects_are_invisible_to_anonymous_visitors_and_non_members() {
    let b = Berth::start();
    api(
        &b,
        reqwest::Method::POST,
        "/api/v1/projects",
        json!({"name": "vault"}),
        201,
    )
    .await;
    push_image(&b, "vault/secret-app", "v1", json!({}), json!({})).await;
    push_image(&b, "library/open-app", "v1", json!({}), json!({})).await;
    add_user(&b, "outsider").await;
    add_user(&b, "insider").await;
    set_role(&b, "vault", "insider", "guest").await;

    let anon = browser(&b);
    let outsider = browser(&b);
    sign_in(&b, &outsider, "outsider", PASSWORD).await;
    for (who, c) in [("anonymous", &anon), ("outsider", &outsider)] {
        let (status, html) = text(c, &format!("{}/projects", b.url())).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("data-project=\"library\""), "{who}: {html}");
        assert!(!html.contains("data-project=\"vault\""), "{who}: {html}");
        assert!(!html.contains("/projects/vault"), "{who}: {html}");
        let (s1, project) = text(c, &format!("{}/projects/vault", b.url())).await;
        let (s2, missing) = text(c, &format!("{}/projects/nosuch", b.url())).await;
        assert_eq!(s1, StatusCode::NOT_FOUND, "{who}: {project}");
        assert_eq!(s2, StatusCode::NOT_FOUND);
        assert!(project.contains("not found"), "{project}");
        assert!(!project.contains("secret-app"), "{project}");
        assert_eq!(
            project.replace("vault", "X"),
            missing.replace("nosuch", "X"),
            "a private project looks exactly like a missing one"
        );
        let (status, html) = text(c, &format!("{}/repositories/vault/secret-app", b.url())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{who}: {html}");
        assert!(!html.contains("data-tag"), "{html}");
        let (status, html) = text(c, &format!("{}/search?q=app", b.url())).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            html.contains("data-repository=\"library/open-app\""),
            "{who}: {html}"
        );
        assert!(!html.contains("secret-app"), "{who}: {html}");
    }

    let insider = browser(&b);
    sign_in(&b, &insider, "insider", PASSWORD).await;
    let (_, html) = text(&insider, &format!("{}/projects", b.url())).await;
    assert!(html.contains("data-project=\"vault\""), "{html}");
    assert!(html.contains("badge-private"), "{html}");
    let (status, html) = text(&insider, &format!("{}/projects/vault", b.url())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("data-repository=\"vault/secret-app\""),
        "{html}"
    );
    assert!(html.contains("data-member=\"insider\""), "{html}");
    assert!(
        !html.contains("new-robot-form"),
        "a guest does not manage: {html}"
    );
    let (status, _) = text(
        &insider,
        &format!("{}/repositories/vault/secret-app", b.url()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, html) = text(&insider, &format!("{}/search?q=app", b.url())).await;
    assert!(
        html.contains("data-repository=\"vault/secret-app\""),
        "{html}"
    );
}

#[tokio::test]
async fn session_cookies_end_on_sign_out_and_survive_a_restart() {
    let b = Berth::start();
    let c = browser(&b);
    let (_, html) = text(&c, &format!("{}/login", b.url())).await;
    let r = c
        .post(format!("{}/login", b.url()))
        .form(&[
            ("csrf", hidden(&html, "csrf").as_str()),
            ("username", ADMIN_USER),
            ("password", ADMIN_PASSWORD),
            ("next", "/projects/library"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/projects/library");
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("berth_session="))
        .unwrap_or_else(|| panic!("no session cookie in {set:?}"));
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(attr), "{attr} missing: {session}");
    }
    let id = session["berth_session=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(id.len() >= 40, "a long random id: {id}");
    // The database keeps a hash of the id, never the id.
    let db = std::fs::read(b.data.path().join("metadata.db")).unwrap();
    let wal = std::fs::read(b.data.path().join("metadata.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(id.len()).any(|w| w == id.as_bytes()),
            "the session id is stored in clear"
        );
    }
    // Signed in already: the form sends the browser on, never to another site.
    let r = c
        .get(format!("{}/login?next=https://evil.example/", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/projects");

    let cookie = format!("berth_session={id}");
    let (_, html) = text(&with_cookie(&b, &cookie), &format!("{}/projects", b.url())).await;
    assert!(html.contains("<span id=\"whoami\">admin</span>"), "{html}");

    // Restart on the same data directory: the session is still valid.
    let data = b.kill();
    let b = Berth::start_in(data, &[]);
    let replay = with_cookie(&b, &cookie);
    let (_, html) = text(&replay, &format!("{}/projects", b.url())).await;
    assert!(
        html.contains("<span id=\"whoami\">admin</span>"),
        "after restart: {html}"
    );
    let csrf = hidden(&html, "csrf");

    let r = replay
        .post(format!("{}/logout", b.url()))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/projects");
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cleared.starts_with("berth_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    // The old cookie no longer works: deleted server-side, not only in the browser.
    let (_, html) = text(&replay, &format!("{}/projects", b.url())).await;
    assert!(!html.contains("whoami"), "{html}");
    assert!(html.contains("id=\"login-link\""), "{html}");
    post_csrf(
        &replay,
        &format!("{}/projects", b.url()),
        &csrf,
        &[("name", "after-logout")],
        StatusCode::FORBIDDEN,
    )
    .await;
    let (status, _) = text(&replay, &format!("{}/admin/users", b.url())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Sign-in and sign-out are in the audit log.
    let audit: Value = api_json(&b, "/api/v1/audit?actor=admin").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"console.login"), "{actions:?}");
    assert!(actions.contains(&"console.logout"), "{actions:?}");
}

#[tokio::test]
async fn sign_in_uses_the_registry_login_rate_limit() {
    let b = Berth::start();
    add_user(&b, "victim").await;
    let c = browser(&b);
    let mut statuses = Vec::new();
    let mut last = String::new();
    for _ in 0..8 {
        let (status, html) = try_login(&b, &c, "victim", "wrong-password").await;
        assert!(html.contains("id=\"error\""), "{html}");
        assert!(html.contains("id=\"login-form\""), "the form again: {html}");
        statuses.push(status);
        last = html;
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED, "{statuses:?}");
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(
        last.contains("retry") || last.contains("Retry") || last.contains("try again"),
        "{last}"
    );
    // Even the right password is refused while the account is blocked.
    let (status, _) = try_login(&b, &c, "victim", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Failures are audited like registry logins.
    let audit: Value = api_json(&b, "/api/v1/audit?action=login_failed").await;
    assert!(audit.as_array().unwrap().len() >= 5, "{audit}");
    // Robots cannot sign in to the console.
    let (status, html) = try_login(&b, &c, "robot$library+ci", "x").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("robot account"), "{html}");
}

#[tokio::test]
async fn administrator_pages_robots_users_audit_certificate_and_pagination() {
    let b = Berth::start();
    let c = browser(&b);
    let csrf = sign_in(&b, &c, ADMIN_USER, ADMIN_PASSWORD).await;
    let url = |p: &str| format!("{}{p}", b.url());
    let (_, html) = text(&c, &url("/projects")).await;
    for id in [
        "id=\"nav-projects\"",
        "id=\"nav-admin\"",
        "id=\"search-form\"",
        "id=\"logout-form\"",
        "id=\"new-project-form\"",
        "id=\"project-public\" name=\"public\" type=\"checkbox\" value=\"true\">",
    ] {
        assert!(html.contains(id), "{id}: {html}");
    }
    assert!(!html.contains("checked"), "Public is unchecked by default");
    post_csrf(
        &c,
        &url("/projects"),
        &csrf,
        &[("name", "ci"), ("public", "true")],
        StatusCode::SEE_OTHER,
    )
    .await;

    // Settings: visibility and description; deletion refused while repositories exist.
    post_csrf(
        &c,
        &url("/projects/ci/settings"),
        &csrf,
        &[("description", "CI images")],
        StatusCode::SEE_OTHER,
    )
    .await;
    let (_, html) = text(&c, &url("/projects/ci")).await;
    assert!(
        html.contains("badge-private"),
        "unchecked = private: {html}"
    );
    assert!(html.contains("CI images"), "{html}");
    assert!(html.contains("Settings of ci saved (private)."), "{html}");
    post_csrf(
        &c,
        &url("/projects/ci/settings"),
        &csrf,
        &[("description", "CI images"), ("public", "true")],
        StatusCode::SEE_OTHER,
    )
    .await;
    let (_, html) = text(&browser(&b), &url("/projects")).await;
    assert!(html.contains("data-project=\"ci\""), "public again: {html}");
    post_csrf(
        &c,
        &url("/projects"),
        &csrf,
        &[("name", "doomed")],
        StatusCode::SEE_OTHER,
    )
    .await;
    post_csrf(
        &c,
        &url("/projects/doomed/delete"),
        &csrf,
        &[],
        StatusCode::SEE_OTHER,
    )
    .await;
    let (status, _) = text(&c, &url("/projects/doomed")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A robot: secret shown once, usable with the registry, revocable.
    let html = post_csrf(
        &c,
        &url("/projects/ci/robots"),
        &csrf,
        &[
            ("name", "deploy"),
            ("permission", "push"),
            ("expires_days", "30"),
        ],
        StatusCode::OK,
    )
    .await;
    assert!(
        html.contains("<code id=\"robot-login\">robot$ci+deploy</code>"),
        "{html}"
    );
    assert!(html.contains("data-copy-target=\"robot-secret\""), "{html}");
    let secret = html
        .split("<code id=\"robot-secret\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    let anon = b.anon_client();
    let r = anon
        .get(url("/v2/"))
        .header("authorization", basic_auth("robot$ci+deploy", &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the robot logs in to the registry"
    );
    let (_, html) = text(&c, &url("/projects/ci")).await;
    assert!(html.contains("data-robot=\"robot$ci+deploy\""), "{html}");
    assert!(!html.contains(&secret), "the secret is never shown again");
    post_csrf(
        &c,
        &url("/projects/ci/robots/revoke"),
        &csrf,
        &[("robot", "robot$ci+deploy")],
        StatusCode::SEE_OTHER,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = anon
        .get(url("/v2/"))
        .header("authorization", basic_auth("robot$ci+deploy", &secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "revoked");

    // Users: create with a generated password, make admin, reset, delete.
    let html = post_csrf(
        &c,
        &url("/admin/users"),
        &csrf,
        &[("username", "newbie"), ("password", "")],
        StatusCode::OK,
    )
    .await;
    let generated = html
        .split("<code id=\"user-password\">")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    let newbie = browser(&b);
    sign_in(&b, &newbie, "newbie", &generated).await;
    post_csrf(
        &c,
        &url("/projects/ci/members"),
        &csrf,
        &[("username", "newbie"), ("role", "developer")],
        StatusCode::SEE_OTHER,
    )
    .await;
    let (_, html) = text(&c, &url("/projects/ci")).await;
    assert!(html.contains("data-member=\"newbie\""), "{html}");
    post_csrf(
        &c,
        &url("/admin/users/admin"),
        &csrf,
        &[("username", "newbie"), ("admin", "true")],
        StatusCode::SEE_OTHER,
    )
    .await;
    let (_, html) = text(&newbie, &url("/admin/users")).await;
    assert!(
        html.contains("data-user=\"newbie\""),
        "now an admin: {html}"
    );
    // A password reset ends the user's console sessions.
    post_csrf(
        &c,
        &url("/admin/users/password"),
        &csrf,
        &[("username", "newbie"), ("password", "another-password-2")],
        StatusCode::SEE_OTHER,
    )
    .await;
    let (_, html) = text(&newbie, &url("/projects")).await;
    assert!(!html.contains("whoami"), "signed out by the reset: {html}");
    post_csrf(
        &c,
        &url("/admin/users/delete"),
        &csrf,
        &[("username", "newbie")],
        StatusCode::SEE_OTHER,
    )
    .await;
    let (_, html) = text(&c, &url("/admin/users")).await;
    assert!(!html.contains("data-user=\"newbie\""), "{html}");
    assert!(html.contains("User newbie deleted."), "{html}");
    // Issue 13: the administration page shows the data directory's free space and reserve.
    assert!(
        html.contains(" free of ") && html.contains("; reserve "),
        "{html}"
    );
    // The last administrator cannot be removed.
    let html = post_csrf(
        &c,
        &url("/admin/users/delete"),
        &csrf,
        &[("username", ADMIN_USER)],
        StatusCode::CONFLICT,
    )
    .await;
    assert!(html.contains("last system administrator"), "{html}");

    // Audit log with filters.
    let (status, html) = text(&c, &url("/admin/audit?action=robot.create")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("id=\"audit-filter\""), "{html}");
    assert!(html.contains("robot$ci+deploy"), "{html}");
    assert!(!html.contains(">user.create<"), "filtered: {html}");

    // The certificate page and the CA download.
    let (_, html) = text(&c, &url("/admin/certificate")).await;
    assert!(
        html.contains("id=\"download-ca\" class=\"button\" href=\"/ca.crt\""),
        "{html}"
    );
    assert!(
        html.contains(&format!("/etc/docker/certs.d/{}", b.host())),
        "trust steps for this host:port: {html}"
    );
    assert!(html.contains("hosts.toml") && html.contains("image-fetcher-ca-bundle"));
    let ca = anon.get(url("/ca.crt")).send().await.unwrap();
    assert_eq!(ca.status(), StatusCode::OK);
    assert_eq!(ca.bytes().await.unwrap().to_vec(), b.ca_pem());

    // 150 tags: two pages, counts from the database.
    let manifest = push_image(&b, "ci/many", "t000", json!({}), json!({})).await;
    for i in 1..150 {
        put_manifest(&b, "ci/many", &format!("t{i:03}"), IMAGE, &manifest).await;
    }
    let (_, html) = text(&c, &url("/repositories/ci/many")).await;
    assert_eq!(html.matches("<tr data-tag=").count(), 100);
    assert!(
        html.contains("<span id=\"repo-tag-count\">150</span>"),
        "{html}"
    );
    assert!(
        html.contains("id=\"next-page\" href=\"/repositories/ci/many?after=t099\""),
        "{html}"
    );
    let (_, html) = text(&c, &url("/repositories/ci/many?after=t099")).await;
    assert_eq!(html.matches("<tr data-tag=").count(), 50);
    assert!(html.contains("data-tag=\"t149\""));
    assert!(!html.contains("id=\"next-page\""));
    let (_, html) = text(&c, &url("/projects/ci")).await;
    assert!(html.contains("<td class=\"tag-count\">150</td>"), "{html}");
    let html = post_csrf(
        &c,
        &url("/projects/ci/delete"),
        &csrf,
        &[],
        StatusCode::CONFLICT,
    )
    .await;
    assert!(
        html.contains("ci/many"),
        "the error names a repository: {html}"
    );
    // A name that breaks the grammar is refused with the rule.
    let (status, html) = text(&c, &url("/repositories/ci/Bad_Name")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("lowercase path components"), "{html}");
}

#[tokio::test]
async fn long_project_lists_paginate() {
    let b = Berth::start();
    for i in 0..150 {
        api(
            &b,
            reqwest::Method::POST,
            "/api/v1/projects",
            json!({"name": format!("p{i:03}"), "public": true}),
            201,
        )
        .await;
    }
    let url = |p: &str| format!("{}{p}", b.url());
    // Anonymous visitors and the administrator page alike.
    let c = browser(&b);
    let (status, html) = text(&c, &url("/projects")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(html.matches("<tr data-project=").count(), 100, "{html}");
    // With the default project `library` first, 151 in all.
    assert!(html.contains("data-project=\"library\""), "{html}");
    assert!(html.contains("data-project=\"p098\""), "{html}");
    assert!(!html.contains("data-project=\"p099\""), "{html}");
    assert!(
        html.contains("id=\"next-page\" href=\"/projects?page=2\""),
        "{html}"
    );
    assert!(!html.contains("id=\"prev-page\""), "{html}");
    let (status, html) = text(&c, &url("/projects?page=2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(html.matches("<tr data-project=").count(), 51, "{html}");
    assert!(html.contains("data-project=\"p099\""), "{html}");
    assert!(html.contains("data-project=\"p149\""), "{html}");
    assert!(
        html.contains("id=\"prev-page\" href=\"/projects?page=1\""),
        "{html}"
    );
    assert!(!html.contains("id=\"next-page\""), "{html}");
    // A page past the end is empty, with the way back; a bad number is named.
    let (_, html) = text(&c, &url("/projects?page=3")).await;
    assert_eq!(html.matches("<tr data-project=").count(), 0, "{html}");
    assert!(html.contains("id=\"prev-page\""), "{html}");
    let (status, html) = text(&c, &url("/projects?page=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    assert!(html.contains("pages count from 1"), "{html}");
    // The users list: one page for a few users, the same links past it.
    sign_in(&b, &c, ADMIN_USER, ADMIN_PASSWORD).await;
    let (_, html) = text(&c, &url("/admin/users")).await;
    assert!(
        html.contains(&format!("data-user=\"{ADMIN_USER}\"")),
        "{html}"
    );
    assert!(!html.contains("next-page"), "{html}");
    let (status, html) = text(&c, &url("/admin/users?page=2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(html.matches("<tr data-user=").count(), 0, "{html}");
    assert!(
        html.contains("id=\"prev-page\" href=\"/admin/users?page=1\""),
        "{html}"
    );
}

#[tokio::test]
async fn untagged_manifests_are_listed_and_deletable_by_maintainers_only() {
    let b = Berth::start();
    private_team(&b, &[("gus", "guest"), ("mae", "maintainer")]).await;
    push_image(&b, "team/app", "v1", json!({}), json!({})).await;
    // An image pushed under a tag that is then deleted: untagged, still stored.
    let old = push_image(&b, "team/app", "old", json!({}), json!({"build": "old"})).await;
    let old_digest = digest_of(&old);
    let r = b
        .client()
        .delete(format!("{}/v2/team/app/manifests/old", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    assert_eq!(
        manifest_status(&b, "team/app", &old_digest).await,
        StatusCode::OK
    );
    let repo_url = format!("{}/repositories/team/app", b.url());
    let untagged_row = format!("<tr data-manifest=\"{old_digest}\">");

    let guest = browser(&b);
    let csrf = sign_in(&b, &guest, "gus", PASSWORD).await;
    let (status, html) = text(&guest, &repo_url).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("<table id=\"manifests\">"), "{html}");
    assert_eq!(html.matches("<tr data-manifest=").count(), 1, "{html}");
    let listed = row(&html, &untagged_row);
    assert!(
        listed.contains("<td class=\"media-type\">application/vnd.oci.image.manifest.v1+json</td>"),
        "{listed}"
    );
    // Size: the manifest, its config and its layer.
    let parsed: Value = serde_json::from_slice(&old).unwrap();
    let bytes = old.len() as u64
        + parsed["config"]["size"].as_u64().unwrap()
        + parsed["layers"][0]["size"].as_u64().unwrap();
    assert!(
        listed.contains(&format!("data-bytes=\"{bytes}\"")),
        "{bytes}: {listed}"
    );
    assert!(listed.contains("<td class=\"pushed\">"), "{listed}");
    assert!(!listed.contains("delete-manifest-button"), "{listed}");
    post_csrf(
        &guest,
        &format!("{repo_url}/-/delete-manifest"),
        &csrf,
        &[("digest", &old_digest)],
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        manifest_status(&b, "team/app", &old_digest).await,
        StatusCode::OK
    );

    let maintainer = browser(&b);
    let csrf = sign_in(&b, &maintainer, "mae", PASSWORD).await;
    let (_, html) = text(&maintainer, &repo_url).await;
    let listed = row(&html, &untagged_row);
    assert!(listed.contains("delete-manifest-button"), "{listed}");
    post_csrf(
        &maintainer,
        &format!("{repo_url}/-/delete-manifest"),
        &csrf,
        &[("digest", &old_digest)],
        StatusCode::SEE_OTHER,
    )
    .await;
    assert_eq!(
        manifest_status(&b, "team/app", &old_digest).await,
        StatusCode::NOT_FOUND
    );
    let (_, html) = text(&maintainer, &repo_url).await;
    assert!(!html.contains("<tr data-manifest="), "{html}");
    assert!(html.contains("No untagged manifests"), "{html}");
    assert!(
        html.contains("data-tag=\"v1\""),
        "the tagged image stays: {html}"
    );
}
