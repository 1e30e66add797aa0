//! End-to-end tests of the web console (issue 5) in headless Chromium.
//!
//! One `berth serve` (HTTPS with its own CA) and one headless Chromium (through the system
//! `chromedriver`, see tests/common/webdriver.rs) serve the whole file: the browser trusts
//! Berth's CA through a temporary NSS database, so the console runs as a real secure
//! context with a valid certificate (no `acceptInsecureCerts`), exactly as an operator's
//! browser would after following the certificate page's steps.
//!
//! The story follows the console's page contract (URLs, element ids): browse the public
//! `library` signed out; sign in as the administrator; create a private project (the
//! *Public* box is unchecked by default); push an image into it with skopeo and see the tag
//! and its size appear; copy the `docker pull` command through the real clipboard; create a
//! pull robot in the browser and pull with its secret (a wrong secret is refused); delete a
//! tag in the browser and see it gone from the registry API; open the administration pages
//! (the CA download equals the server's CA); add a user as a project guest; sign out and
//! find the private project invisible; sign in as the guest and find no maintainer action,
//! not even by replaying the administrator's delete form with the guest's own CSRF token.
//! Along the way: a form without its CSRF token is refused, and HTML in an image's label
//! and annotation is shown as text. Every page visited is written as a full-page PNG to
//! `$CARGO_TARGET_TMPDIR/console-screenshots/` (a CI artifact), each checked to be a
//! non-empty PNG. Every wait polls for at most 10 s.
//!
//! Everything runs in one `#[tokio::test]` so that the browser and the server start once;
//! each step is its own function and every assertion names the step and the page.

mod common;
mod fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::webdriver::{Browser, assert_png};
use common::{Berth, CmdOutput, need, run_cmd};
use fixtures::Layout;
use serde_json::json;

const SKOPEO_TIMEOUT: Duration = Duration::from_secs(120);
/// The private project the story creates in the browser.
const PROJECT: &str = "e2e-private";
/// The repository pushed into it.
const REPO: &str = "e2e-private/app";
/// A project name tried with the CSRF token removed (must not be created).
const CSRF_PROBE: &str = "csrf-probe";
/// A label and an annotation that would run script if the console did not escape them.
const XSS_LABEL: &str = r#"<img id="xss-label" src="x" onerror="window.__xss = 1">"#;
const XSS_ANNOTATION: &str = r#"<script id="xss-annotation">window.__xss = 2</script>"#;
/// A user the administrator creates in the browser and adds to the project as a guest.
const GUEST: &str = "viewer";
const GUEST_PASSWORD: &str = "viewer-password-0123456789";
/// The robot created in the browser.
const ROBOT: &str = "puller";

/// Where the screenshots go (kept after the test, for CI to collect).
fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// The shared state of the story.
struct Ctx {
    berth: Berth,
    browser: Browser,
    shots: PathBuf,
    /// Names of the screenshots taken, in order.
    taken: std::cell::RefCell<Vec<String>>,
    /// Scratch space for image layouts and pulls.
    tmp: tempfile::TempDir,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.berth.url())
    }

    /// Navigate to `path` on the console.
    async fn open(&self, path: &str) {
        self.browser.goto(&self.url(path)).await;
    }

    /// Screenshot of the current page as `NN-name.png`.
    async fn shot(&self, name: &str) {
        let n = self.taken.borrow().len() + 1;
        let file = format!("{n:02}-{name}");
        self.browser.screenshot_to(&self.shots, &file).await;
        self.taken.borrow_mut().push(file);
    }

    /// Text of the whole page, lower-cased, for "says X" checks.
    async fn page_text_lower(&self) -> String {
        self.browser.body_text().await.to_lowercase()
    }
}

/// `skopeo --insecure-policy ARGS…` with an empty auth file, bounded in time.
fn skopeo(args: &[&str]) -> CmdOutput {
    need("skopeo");
    let auth_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("skopeo");
    cmd.arg("--insecure-policy")
        .args(args)
        .env("REGISTRY_AUTH_FILE", auth_dir.path().join("auth.json"))
        .env("DOCKER_CONFIG", auth_dir.path());
    run_cmd(&mut cmd, SKOPEO_TIMEOUT)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Push `layout` to `target` (`project/repo:tag`) as the administrator.
fn push(berth: &Berth, layout: &Layout, target: &str, all: bool) {
    let cert_dir = berth.cert_dir();
    let dest = format!("docker://{}/{target}", berth.host());
    let creds = common::admin_creds();
    let src = layout.oci_ref();
    let mut args = vec!["copy"];
    if all {
        args.push("--all");
    }
    args.extend([
        "--dest-creds",
        &creds,
        "--dest-cert-dir",
        path_str(&cert_dir),
        &src,
        &dest,
    ]);
    skopeo(&args).ok();
}

/// Pull `source` (`project/repo:tag`) into a fresh OCI layout with `user:secret`.
fn pull_with(berth: &Berth, source: &str, creds: &str, out: &Path) -> CmdOutput {
    let cert_dir = berth.cert_dir();
    let src = format!("docker://{}/{source}", berth.host());
    let dst = format!("oci:{}:pulled", out.display());
    skopeo(&[
        "copy",
        "--src-creds",
        creds,
        "--src-cert-dir",
        path_str(&cert_dir),
        &src,
        &dst,
    ])
}

#[tokio::test]
async fn console_story_in_headless_chromium() {
    let berth = Berth::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Something public to browse signed out.
    let library = fixtures::image_layout(&tmp.path().join("library-src"), "v1");
    push(&berth, &library, "library/hello:v1", false);
    let hostile = hostile_layout(&tmp.path().join("hostile-src"));
    push(&berth, &hostile, "library/hostile:v1", false);

    let shots = screenshot_dir();
    // Old screenshots from an earlier run must not pass for this run's.
    let _ = std::fs::remove_dir_all(&shots);
    let browser = Browser::start(&[&berth.ca_path()]).await;
    let ctx = Ctx {
        berth,
        browser,
        shots,
        taken: Default::default(),
        tmp,
    };

    healthz(&ctx).await;
    browse_library_signed_out(&ctx).await;
    client_values_are_text(&ctx).await;
    sign_in(&ctx).await;
    create_private_project(&ctx).await;
    push_and_see_tags(&ctx).await;
    copy_pull_command(&ctx).await;
    create_robot_and_pull(&ctx).await;
    delete_tag(&ctx).await;
    admin_pages(&ctx).await;
    let delete_form = add_guest_member(&ctx).await;
    sign_out_and_private_is_hidden(&ctx).await;
    guest_sees_no_maintainer_actions(&ctx, &delete_form).await;

    // Every page visited left a non-empty PNG behind.
    let taken = ctx.taken.borrow().clone();
    assert!(
        taken.len() >= 15,
        "only {} screenshots: {taken:?}",
        taken.len()
    );
    for name in &taken {
        let path = ctx.shots.join(format!("{name}.png"));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("screenshot {} missing: {e}", path.display()));
        assert_png(&bytes, name);
    }
    eprintln!(
        "console e2e: {} screenshots in {}",
        taken.len(),
        ctx.shots.display()
    );
}

/// The harness itself: the browser reaches Berth over HTTPS with a valid chain.
async fn healthz(ctx: &Ctx) {
    ctx.open("/healthz").await;
    assert_eq!(
        ctx.browser.body_text().await.trim(),
        "ok",
        "/healthz in the browser"
    );
    ctx.shot("healthz").await;
}

/// Signed out: `/` leads to the projects page, `library` is listed as public, its
/// repository and tag pages open, and a sign-in link is offered.
async fn browse_library_signed_out(ctx: &Ctx) {
    let b = &ctx.browser;
    ctx.open("/").await;
    b.wait_url("/projects", |u| u.ends_with("/projects")).await;
    b.find("a#login-link").await;
    b.assert_absent("span#whoami", "signed out, yet span#whoami is shown")
        .await;
    let row = b.find(r#"tr[data-project="library"]"#).await;
    assert!(
        b.find_in(&row, "span.badge-public").await.is_some(),
        "library is not badged public on /projects"
    );
    ctx.shot("signed-out-projects").await;

    let link = b
        .find_in(&row, r#"a[href$="/projects/library"]"#)
        .await
        .expect("library row links to /projects/library");
    b.click(&link).await;
    b.wait_url("/projects/library", |u| u.ends_with("/projects/library"))
        .await;
    let repo = b.find(r#"tr[data-repository="library/hello"]"#).await;
    let tag_count = b
        .find_in(&repo, "td.tag-count")
        .await
        .expect("td.tag-count");
    assert_eq!(
        b.text(&tag_count).await.trim(),
        "1",
        "library/hello tag count"
    );
    // Signed out: no way to create robots or add members.
    for form in ["form#new-robot-form", "form#add-member-form"] {
        b.assert_absent(
            form,
            "an anonymous visitor is offered project-admin forms on /projects/library",
        )
        .await;
    }
    ctx.shot("signed-out-project-library").await;

    ctx.open("/repositories/library/hello").await;
    b.find(r#"tr[data-tag="v1"]"#).await;
    b.assert_absent(
        "form.delete-tag",
        "an anonymous visitor is offered to delete tags",
    )
    .await;
    ctx.shot("signed-out-repository-library-hello").await;
}

/// An image whose config label and manifest annotation are HTML: the console must show
/// them as text. Built by hand (one small layer) so the hostile strings are exact.
fn hostile_layout(dir: &Path) -> Layout {
    use std::io::Write as _;
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dirs");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    let data = b"hostile fixture\n";
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "hostile.txt", &data[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    fixtures::write_blob(dir, &gz);
    let layer = fixtures::Descriptor::of(fixtures::OCI_LAYER_GZIP, &gz);
    let config = json!({
        "architecture": fixtures::host_arch(),
        "os": "linux",
        "config": { "Labels": { "org.example.note": XSS_LABEL } },
        "rootfs": { "type": "layers", "diff_ids": [fixtures::sha256_digest(&tar)] },
    });
    let config = serde_json::to_vec(&config).unwrap();
    fixtures::write_blob(dir, &config);
    let config = fixtures::Descriptor::of(fixtures::OCI_CONFIG, &config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": fixtures::OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json()],
        "annotations": { "org.opencontainers.image.description": XSS_ANNOTATION },
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    fixtures::write_blob(dir, &manifest_bytes);
    let top = fixtures::Descriptor::of(fixtures::OCI_MANIFEST, &manifest_bytes);
    let mut entry = top.to_json();
    entry["annotations"] = json!({ fixtures::REF_NAME: "v1" });
    let index =
        json!({ "schemaVersion": 2, "mediaType": fixtures::OCI_INDEX, "manifests": [entry] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    Layout {
        path: dir.to_path_buf(),
        tag: "v1".into(),
        top: top.clone(),
        top_bytes: manifest_bytes.clone(),
        images: vec![fixtures::Image {
            architecture: fixtures::host_arch().into(),
            os: "linux".into(),
            manifest: top,
            config,
            layers: vec![layer],
            diff_ids: vec![fixtures::sha256_digest(&tar)],
            manifest_bytes,
        }],
    }
}

/// A label and an annotation holding HTML are shown as text on the repository page:
/// no element of theirs exists, no script of theirs ran, and the label reads literally.
async fn client_values_are_text(ctx: &Ctx) {
    let b = &ctx.browser;
    ctx.open("/repositories/library/hostile").await;
    b.find(r#"tr[data-tag="v1"]"#).await;
    for css in ["#xss-label", "#xss-annotation"] {
        b.assert_absent(
            css,
            "the repository page made an element out of an image's label/annotation",
        )
        .await;
    }
    assert_eq!(
        b.execute("return window.__xss === undefined", json!([]))
            .await,
        json!(true),
        "script from an image's label/annotation ran"
    );
    let text = b.body_text().await;
    for (what, value) in [("label", XSS_LABEL), ("annotation", XSS_ANNOTATION)] {
        assert!(
            text.contains(value),
            "the repository page does not show the {what} {value:?} as text:\n{text}"
        );
    }
    ctx.shot("hostile-label-as-text").await;
}

/// Sign in as the administrator through the form; the session cookie has the promised
/// attributes.
async fn sign_in(ctx: &Ctx) {
    let b = &ctx.browser;
    ctx.open("/projects").await;
    b.click_css("a#login-link").await;
    b.wait_url("/login", |u| u.contains("/login")).await;
    b.find("form#login-form").await;
    ctx.shot("login-form").await;

    // A wrong password shows the form again with an error, and no session.
    b.fill("input#username", common::ADMIN_USER).await;
    b.fill("input#password", "not-the-password").await;
    b.click_css("button#login-submit").await;
    let err = b.text_of("div#error").await;
    assert!(
        !err.trim().is_empty(),
        "div#error is empty after a bad password"
    );
    b.assert_absent("span#whoami", "a wrong password signed in")
        .await;
    ctx.shot("login-wrong-password").await;

    b.fill("input#username", common::ADMIN_USER).await;
    b.fill("input#password", common::ADMIN_PASSWORD).await;
    b.click_css("button#login-submit").await;
    b.wait_url("/projects after sign-in", |u| u.ends_with("/projects"))
        .await;
    assert_eq!(b.text_of("span#whoami").await.trim(), common::ADMIN_USER);
    b.find("form#logout-form button#logout").await;
    b.find("a#nav-admin").await;

    let cookie = b
        .cookie("berth_session")
        .await
        .expect("no berth_session cookie after signing in");
    assert_eq!(cookie["httpOnly"], json!(true), "berth_session: {cookie}");
    assert_eq!(cookie["secure"], json!(true), "berth_session: {cookie}");
    assert_eq!(
        cookie["sameSite"],
        json!("Strict"),
        "berth_session: {cookie}"
    );
    assert_eq!(cookie["path"], json!("/"), "berth_session: {cookie}");
    ctx.shot("signed-in-projects").await;
}

/// "New project" with the Public box left as it is (unchecked) creates a private project.
async fn create_private_project(ctx: &Ctx) {
    let b = &ctx.browser;
    ctx.open("/projects").await;
    b.find("form#new-project-form").await;
    let public = b.find("input#project-public").await;
    assert_eq!(
        b.attr(&public, "type").await.as_deref(),
        Some("checkbox"),
        "input#project-public is not a checkbox"
    );
    assert!(
        !b.selected(&public).await,
        "the Public checkbox of New project is checked by default"
    );

    // The same form without its CSRF token is refused (403) and creates nothing.
    b.fill("input#project-name", CSRF_PROBE).await;
    let removed = b
        .execute(
            "const i = document.querySelectorAll('form#new-project-form input[name=csrf]');
             i.forEach(e => e.remove()); return i.length;",
            json!([]),
        )
        .await;
    assert_eq!(
        removed,
        json!(1),
        "form#new-project-form has one hidden csrf input"
    );
    b.click_css("button#create-project").await;
    // The URL is /projects before and after the POST: wait for the refusal page itself.
    b.find("div#error").await;
    let text = ctx.page_text_lower().await;
    assert!(
        text.contains("csrf") && text.contains("reload"),
        "POST /projects without its CSRF token: the page does not say the token was \
         missing and to reload: {text}"
    );
    ctx.shot("csrf-refused").await;
    ctx.open("/projects").await;
    b.find("form#new-project-form").await;
    b.assert_absent(
        &format!(r#"tr[data-project="{CSRF_PROBE}"]"#),
        "a POST without a CSRF token created the probe project",
    )
    .await;

    let public = b.find("input#project-public").await;
    assert!(
        !b.selected(&public).await,
        "Public is checked on a fresh form"
    );
    b.fill("input#project-name", PROJECT).await;
    ctx.shot("new-project-filled").await;
    b.click_css("button#create-project").await;
    b.wait_url("the new project's page", |u| {
        u.ends_with(&format!("/projects/{PROJECT}"))
    })
    .await;
    b.find("table#repositories").await;
    b.assert_absent(
        "tr[data-repository]",
        "a brand-new project lists repositories",
    )
    .await;
    // The creator administers it.
    let me = b
        .find(&format!(r#"tr[data-member="{}"]"#, common::ADMIN_USER))
        .await;
    let role = b.find_in(&me, "td.role").await.expect("td.role");
    assert!(
        b.text(&role).await.to_lowercase().contains("admin"),
        "the creator's role on the new project is not admin"
    );
    ctx.shot("project-created").await;

    ctx.open("/projects").await;
    let row = b.find(&format!(r#"tr[data-project="{PROJECT}"]"#)).await;
    assert!(
        b.find_in(&row, "span.badge-private").await.is_some(),
        "the new project is not badged private"
    );
    assert!(
        b.find_in(&row, "span.badge-public").await.is_none(),
        "the new project is badged public"
    );
    // And the registry agrees: anonymous reads are challenged.
    let resp = ctx
        .berth
        .anon_client()
        .get(ctx.url(&format!("/v2/{REPO}/tags/list")))
        .send()
        .await
        .expect("anonymous tags/list");
    assert_eq!(resp.status().as_u16(), 401, "anonymous read of {REPO}");
    ctx.shot("projects-with-private").await;
}

/// Push `:v1` (one image) and `:v2` (a linux/amd64 + linux/arm64 index) with skopeo,
/// reload, and see the repository, its tags and sizes appear.
async fn push_and_see_tags(ctx: &Ctx) {
    let b = &ctx.browser;
    let v1 = fixtures::image_layout(&ctx.tmp.path().join("v1"), "v1");
    let v2 = fixtures::multi_arch_layout(&ctx.tmp.path().join("v2"), "v2");
    ctx.open(&format!("/projects/{PROJECT}")).await;
    b.find("table#repositories").await;
    b.assert_absent("tr[data-repository]", "a new project lists a repository")
        .await;
    push(&ctx.berth, &v1, &format!("{REPO}:v1"), false);
    push(&ctx.berth, &v2, &format!("{REPO}:v2"), true);
    b.refresh().await;
    let row = b.find(&format!(r#"tr[data-repository="{REPO}"]"#)).await;
    let count = b.find_in(&row, "td.tag-count").await.expect("td.tag-count");
    assert_eq!(b.text(&count).await.trim(), "2", "{REPO} tag count");
    for cell in ["td.last-push", "td.size"] {
        let c = b
            .find_in(&row, cell)
            .await
            .unwrap_or_else(|| panic!("{cell}"));
        assert!(
            !b.text(&c).await.trim().is_empty(),
            "{cell} of {REPO} is empty"
        );
    }
    ctx.shot("project-with-repository").await;

    let link = b
        .find_in(&row, &format!(r#"a[href$="/repositories/{REPO}"]"#))
        .await
        .expect("repository row links to /repositories/REPO");
    b.click(&link).await;
    b.wait_url("the repository page", |u| {
        u.ends_with(&format!("/repositories/{REPO}"))
    })
    .await;

    // v1: digest and exact compressed size.
    let img = &v1.images[0];
    let layers: u64 = img.layers.iter().map(|l| l.size).sum();
    let most = layers + img.config.size + img.manifest.size;
    let row = b.find(r#"tr[data-tag="v1"]"#).await;
    let digest = b.find_in(&row, "td.digest").await.expect("td.digest");
    let shown = format!(
        "{} {}",
        b.attr(&digest, "title").await.unwrap_or_default(),
        b.text(&digest).await
    );
    assert!(
        shown.contains(v1.manifest_digest()),
        "v1's td.digest shows neither in title nor text {}: {shown}",
        v1.manifest_digest()
    );
    let size = b.find_in(&row, "td.size").await.expect("td.size");
    let bytes: u64 = b
        .attr(&size, "data-bytes")
        .await
        .expect("td.size has data-bytes")
        .trim()
        .parse()
        .expect("data-bytes is a number");
    assert!(
        (layers..=most).contains(&bytes),
        "v1 size {bytes} B is not its compressed size (layers {layers} B, with config and \
         manifest {most} B)"
    );
    let human = b.text(&size).await;
    assert!(
        human.chars().any(|c| c.is_ascii_digit()) && human.contains('B'),
        "v1 human size {human:?}"
    );
    assert!(
        b.find_in(&row, "td.pushed").await.is_some(),
        "v1 row lacks td.pushed"
    );

    // v2: an index; its platforms are listed.
    let row = b.find(r#"tr[data-tag="v2"]"#).await;
    let platforms = b.find_in(&row, "td.platforms").await.expect("td.platforms");
    let p = b.text(&platforms).await;
    assert!(
        p.contains("linux/amd64") && p.contains("linux/arm64"),
        "v2 platforms {p:?}"
    );
    ctx.shot("repository-tags").await;
}

/// The copy button of `code#pull-docker` puts exactly `docker pull HOST:PORT/REPO:TAG` on
/// the clipboard (read back through the real clipboard API, permission granted through
/// WebDriver).
async fn copy_pull_command(ctx: &Ctx) {
    let b = &ctx.browser;
    ctx.open(&format!("/repositories/{REPO}")).await;
    let code = b.text_of("code#pull-docker").await;
    let host = ctx.berth.host();
    let prefix = format!("docker pull {host}/{REPO}:");
    let tag = code
        .trim()
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("code#pull-docker is {code:?}, expected `{prefix}TAG`"));
    assert!(
        tag == "v1" || tag == "v2",
        "code#pull-docker names tag {tag:?}, not a pushed one"
    );
    let expected = format!("{prefix}{tag}");
    for (id, cmd) in [("pull-podman", "podman pull"), ("pull-berth", "berth")] {
        let t = b.text_of(&format!("code#{id}")).await;
        assert!(
            t.starts_with(cmd) && t.contains(&format!("{host}/{REPO}:{tag}")),
            "code#{id} is {t:?}"
        );
    }

    b.set_permission("clipboard-read", "granted")
        .await
        .expect("grant clipboard-read");
    b.set_permission("clipboard-write", "granted")
        .await
        .expect("grant clipboard-write");
    // Something else on the clipboard first, so a button that copies nothing is caught.
    let seeded = b
        .execute_async(
            "const done = arguments[arguments.length - 1];
             navigator.clipboard.writeText('clipboard before the click')
               .then(() => done('ok'), e => done('error: ' + e));",
            json!([]),
        )
        .await
        .expect("seed the clipboard");
    assert_eq!(seeded, json!("ok"), "writing the clipboard from a script");

    b.click_css(r#"button.copy[data-copy-target="pull-docker"]"#)
        .await;
    assert_eq!(
        read_clipboard_after_copy(ctx, "pull-docker").await,
        json!(expected),
        "text copied by the pull-docker button"
    );
    ctx.shot("repository-copied").await;
}

/// After a click on the copy button of `#target`: wait for it to say it copied
/// (`data-copied="true"`, label "Copied"), then read the clipboard back.
async fn read_clipboard_after_copy(ctx: &Ctx, target: &str) -> serde_json::Value {
    let b = &ctx.browser;
    let button = b
        .find(&format!(r#"button.copy[data-copy-target="{target}"]"#))
        .await;
    let deadline = std::time::Instant::now() + common::webdriver::WAIT;
    while b.attr(&button, "data-copied").await.as_deref() != Some("true") {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy button of #{target} never set data-copied=\"true\" (it is {:?})",
            b.attr(&button, "data-copied").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        b.text(&button).await.contains("Copied"),
        "the copy button of #{target} did not change its label to Copied"
    );
    b.execute_async(
        "const done = arguments[arguments.length - 1];
         navigator.clipboard.readText().then(t => done(t), e => done('error: ' + e));",
        json!([]),
    )
    .await
    .expect("read the clipboard")
}

/// Create a pull robot in the browser, read its login and secret from the page, and pull
/// with them (a wrong secret is refused).
async fn create_robot_and_pull(ctx: &Ctx) {
    let b = &ctx.browser;
    ctx.open(&format!("/projects/{PROJECT}")).await;
    b.find("form#new-robot-form").await;
    b.fill("input#robot-name", ROBOT).await;
    b.click_css(r#"select#robot-permission option[value="pull"]"#)
        .await;
    let sel = b.find("select#robot-permission").await;
    assert_eq!(b.prop(&sel, "value").await, json!("pull"));
    let expires = b.find("input#robot-expires").await;
    b.clear(&expires).await; // empty = never expires
    ctx.shot("new-robot-filled").await;
    b.click_css("button#create-robot").await;

    let login = b.text_of("code#robot-login").await.trim().to_string();
    let secret = b.text_of("code#robot-secret").await.trim().to_string();
    assert_eq!(
        login,
        format!("robot${PROJECT}+{ROBOT}"),
        "code#robot-login"
    );
    assert!(secret.len() >= 16, "robot secret {secret:?} is too short");
    // Its copy button copies exactly the secret (clipboard permission granted earlier).
    b.click_css(r#"button.copy[data-copy-target="robot-secret"]"#)
        .await;
    assert_eq!(
        read_clipboard_after_copy(ctx, "robot-secret").await,
        json!(secret),
        "text copied by the robot-secret button"
    );
    ctx.shot("robot-created").await;

    // The project page lists it, without the secret.
    ctx.open(&format!("/projects/{PROJECT}")).await;
    b.find(&format!(r#"tr[data-robot="{login}"]"#)).await;
    assert!(
        !b.source().await.contains(&secret),
        "the project page shows the robot's secret again"
    );
    ctx.shot("project-with-robot").await;

    let out = ctx.tmp.path().join("robot-pull");
    pull_with(
        &ctx.berth,
        &format!("{REPO}:v1"),
        &format!("{login}:{secret}"),
        &out,
    )
    .ok();
    assert!(
        fixtures::read_index_json(&out)["manifests"]
            .as_array()
            .is_some_and(|m| !m.is_empty()),
        "the robot's pull wrote no image"
    );
    let wrong = pull_with(
        &ctx.berth,
        &format!("{REPO}:v1"),
        &format!("{login}:{secret}x"),
        &ctx.tmp.path().join("robot-pull-wrong"),
    );
    assert!(
        !wrong.success(),
        "a pull with a wrong robot secret succeeded: {}",
        wrong.stderr
    );
}

/// Delete tag v1 in the browser; the registry API no longer lists it, v2 stays.
async fn delete_tag(ctx: &Ctx) {
    let b = &ctx.browser;
    ctx.open(&format!("/repositories/{REPO}")).await;
    let row = b.find(r#"tr[data-tag="v1"]"#).await;
    let button = b
        .find_in(&row, "form.delete-tag button.delete-tag-button")
        .await
        .expect("v1 row has form.delete-tag with button.delete-tag-button");
    // The console asks first; "Cancel" keeps the tag.
    b.click(&button).await;
    let question = b
        .answer_dialog(Duration::from_secs(5), false)
        .await
        .expect("deleting a tag asked for no confirmation");
    assert!(
        question.contains("v1"),
        "the confirmation {question:?} does not name the tag"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.find(r#"tr[data-tag="v1"]"#).await;
    assert_eq!(
        tag_list(ctx).await,
        json!(["v1", "v2"]),
        "tags after cancelling the delete"
    );
    // "OK" deletes it.
    let button = b
        .find(r#"tr[data-tag="v1"] form.delete-tag button.delete-tag-button"#)
        .await;
    b.click(&button).await;
    b.answer_dialog(Duration::from_secs(5), true)
        .await
        .expect("the second delete asked for no confirmation");
    b.wait_gone(r#"tr[data-tag="v1"]"#).await;
    b.find(r#"tr[data-tag="v2"]"#).await;
    ctx.shot("tag-deleted").await;

    assert_eq!(
        tag_list(ctx).await,
        json!(["v2"]),
        "tags after deleting v1 in the console"
    );
}

/// The tags of [`REPO`] as the registry API lists them (as the administrator), sorted.
async fn tag_list(ctx: &Ctx) -> serde_json::Value {
    let resp = ctx
        .berth
        .client()
        .get(ctx.url(&format!("/v2/{REPO}/tags/list")))
        .send()
        .await
        .expect("tags/list");
    assert_eq!(resp.status().as_u16(), 200, "GET /v2/{REPO}/tags/list");
    let mut v: serde_json::Value = resp.json().await.expect("tags/list json");
    if let Some(tags) = v["tags"].as_array_mut() {
        tags.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
    v["tags"].take()
}

/// Users, audit log and certificate pages open for the administrator; the CA download
/// is the server's CA.
async fn admin_pages(ctx: &Ctx) {
    let b = &ctx.browser;
    ctx.open("/projects").await;
    b.click_css("a#nav-admin").await;
    b.wait_url("/admin/users", |u| u.ends_with("/admin/users"))
        .await;
    b.find(&format!(
        r#"table#users tr[data-user="{}"]"#,
        common::ADMIN_USER
    ))
    .await;
    b.find("form#new-user-form").await;
    ctx.shot("admin-users").await;

    ctx.open("/admin/audit").await;
    b.find("table#audit").await;
    b.find("form#audit-filter").await;
    let audit = ctx.page_text_lower().await;
    assert!(
        audit.contains(PROJECT),
        "the audit log does not mention the project created in the console"
    );
    ctx.shot("admin-audit").await;

    ctx.open("/admin/certificate").await;
    let a = b.find("a#download-ca").await;
    let href = b.prop(&a, "href").await;
    let href = href.as_str().expect("a#download-ca href").to_string();
    assert_eq!(href, ctx.url("/ca.crt"), "a#download-ca target");
    let text = ctx.page_text_lower().await;
    for step in ["certs.d", "hosts.toml", "image-fetcher-ca-bundle"] {
        assert!(
            text.contains(step),
            "the certificate page does not show the {step} trust step"
        );
    }
    ctx.shot("admin-certificate").await;
    // The link's body, fetched as the browser would (anonymously, trusting the CA).
    let resp = ctx
        .berth
        .anon_client()
        .get(&href)
        .send()
        .await
        .expect("GET /ca.crt");
    assert_eq!(resp.status().as_u16(), 200, "GET /ca.crt");
    let body = resp.bytes().await.expect("ca.crt body");
    assert_eq!(
        body.as_ref(),
        ctx.berth.ca_pem().as_slice(),
        "/ca.crt differs from the server's CA"
    );
}

/// What the administrator's "Delete tag" form for v2 posts: its absolute action and its
/// fields other than the CSRF token.
struct DeleteForm {
    action: String,
    fields: serde_json::Value,
}

/// The administrator creates a user in the browser and adds them to the private project
/// as a guest; returns the administrator's delete form of tag v2 (replayed by the guest).
async fn add_guest_member(ctx: &Ctx) -> DeleteForm {
    let b = &ctx.browser;
    ctx.open("/admin/users").await;
    b.fill("form#new-user-form input[name=username]", GUEST)
        .await;
    b.fill("form#new-user-form input[name=password]", GUEST_PASSWORD)
        .await;
    b.click_css("form#new-user-form [type=submit]").await;
    b.find(&format!(r#"table#users tr[data-user="{GUEST}"]"#))
        .await;
    ctx.shot("admin-user-created").await;

    ctx.open(&format!("/projects/{PROJECT}")).await;
    b.fill("input#member-username", GUEST).await;
    b.click_css(r#"select#member-role option[value="guest"]"#)
        .await;
    b.click_css("button#add-member").await;
    let row = b.find(&format!(r#"tr[data-member="{GUEST}"]"#)).await;
    let role = b.find_in(&row, "td.role").await.expect("td.role");
    assert!(
        b.text(&role).await.to_lowercase().contains("guest"),
        "{GUEST}'s role is not guest"
    );
    ctx.shot("project-guest-added").await;

    ctx.open(&format!("/repositories/{REPO}")).await;
    let form = b.find(r#"tr[data-tag="v2"] form.delete-tag"#).await;
    let v = b
        .execute(
            "const f = arguments[0];
             const fields = [];
             for (const e of f.elements) {
               if (e.name && e.name !== 'csrf') { fields.push([e.name, e.value]); }
             }
             return {action: f.action, fields: fields};",
            json!([Browser::arg(&form)]),
        )
        .await;
    DeleteForm {
        action: v["action"].as_str().expect("form action").to_string(),
        fields: v["fields"].clone(),
    }
}

/// A project guest signed in sees the private project and its tags but none of the
/// maintainers' actions, and replaying the administrator's delete form by hand (with the
/// guest's own valid CSRF token) is refused: the tag stays in the registry.
async fn guest_sees_no_maintainer_actions(ctx: &Ctx, delete: &DeleteForm) {
    let b = &ctx.browser;
    ctx.open("/login").await;
    b.fill("input#username", GUEST).await;
    b.fill("input#password", GUEST_PASSWORD).await;
    b.click_css("button#login-submit").await;
    b.wait_url("/projects after the guest signs in", |u| {
        u.ends_with("/projects")
    })
    .await;
    assert_eq!(b.text_of("span#whoami").await.trim(), GUEST);
    b.assert_absent(
        "a#nav-admin",
        "a project guest is shown the administration link",
    )
    .await;
    let row = b.find(&format!(r#"tr[data-project="{PROJECT}"]"#)).await;
    assert!(b.find_in(&row, "span.badge-private").await.is_some());
    ctx.shot("guest-projects").await;

    ctx.open(&format!("/projects/{PROJECT}")).await;
    b.find(&format!(r#"tr[data-repository="{REPO}"]"#)).await;
    for form in ["form#new-robot-form", "form#add-member-form"] {
        b.assert_absent(form, "a project guest is offered the project admins' forms")
            .await;
    }
    ctx.shot("guest-project").await;

    ctx.open(&format!("/repositories/{REPO}")).await;
    b.find(r#"tr[data-tag="v2"]"#).await;
    b.assert_absent(
        "form.delete-tag",
        "a project guest is offered to delete tags",
    )
    .await;
    ctx.shot("guest-repository").await;

    ctx.open("/admin/users").await;
    b.assert_absent("table#users", "a project guest can list users")
        .await;
    ctx.shot("guest-admin-users-refused").await;

    // The delete by URL, with the guest's own (valid) CSRF token.
    ctx.open(&format!("/repositories/{REPO}")).await;
    b.find("form#logout-form").await;
    b.execute(
        "const [action, fields] = [arguments[0], arguments[1]];
         const f = document.createElement('form');
         f.method = 'post';
         f.action = action;
         const add = (n, v) => {
           const i = document.createElement('input');
           i.type = 'hidden'; i.name = n; i.value = v; f.appendChild(i);
         };
         add('csrf', document.querySelector('form#logout-form input[name=csrf]').value);
         for (const [n, v] of fields) { add(n, v); }
         document.body.appendChild(f);
         f.submit();",
        json!([delete.action, delete.fields]),
    )
    .await;
    b.wait_url("the replayed delete form's action", |u| u == delete.action)
        .await;
    let text = ctx.page_text_lower().await;
    assert!(
        text.contains("403") || text.contains("forbidden") || text.contains("may not"),
        "a guest's replayed delete-tag form was not refused: {text}"
    );
    assert!(
        !text.contains("csrf"),
        "the replayed form was refused for its CSRF token, not for the guest's role: {text}"
    );
    ctx.shot("guest-delete-by-url-refused").await;
    assert_eq!(
        tag_list(ctx).await,
        json!(["v2"]),
        "tags after a guest's delete attempt"
    );

    b.click_css("form#logout-form button#logout").await;
    b.wait_url("/projects after the guest signs out", |u| {
        u.ends_with("/projects")
    })
    .await;
    b.find("a#login-link").await;
}

/// Sign out: the session is gone and the private project can be neither listed nor opened.
async fn sign_out_and_private_is_hidden(ctx: &Ctx) {
    let b = &ctx.browser;
    ctx.open(&format!("/search?q={}", "app")).await;
    b.find(&format!(
        r#"table#search-results tr[data-repository="{REPO}"]"#
    ))
    .await;
    ctx.shot("search-signed-in").await;

    b.click_css("form#logout-form button#logout").await;
    b.wait_url("/projects after sign-out", |u| u.ends_with("/projects"))
        .await;
    b.find("a#login-link").await;
    b.assert_absent("span#whoami", "span#whoami still shown after signing out")
        .await;
    b.find(r#"tr[data-project="library"]"#).await;
    b.assert_absent(
        &format!(r#"tr[data-project="{PROJECT}"]"#),
        "the private project is listed after signing out",
    )
    .await;
    assert!(
        !ctx.page_text_lower().await.contains(PROJECT),
        "the private project's name appears on /projects after signing out"
    );
    ctx.shot("signed-out-projects-after-logout").await;

    ctx.open(&format!("/projects/{PROJECT}")).await;
    let text = ctx.page_text_lower().await;
    assert!(
        text.contains("not found"),
        "/projects/{PROJECT} signed out does not say not found: {text}"
    );
    assert!(
        b.find_now("table#repositories").await.is_none() && !text.contains(ROBOT),
        "/projects/{PROJECT} shows its contents signed out"
    );
    ctx.shot("signed-out-private-project").await;

    ctx.open(&format!("/repositories/{REPO}")).await;
    let text = ctx.page_text_lower().await;
    assert!(
        text.contains("not found") && b.find_now("table#tags").await.is_none(),
        "/repositories/{REPO} signed out does not say not found: {text}"
    );
    ctx.shot("signed-out-private-repository").await;

    ctx.open("/search?q=app").await;
    b.assert_absent(
        &format!(r#"tr[data-repository="{REPO}"]"#),
        "search shows the private repository signed out",
    )
    .await;
    ctx.shot("search-signed-out").await;

    ctx.open("/admin/users").await;
    b.assert_absent("table#users", "/admin/users lists users signed out")
        .await;
    ctx.shot("signed-out-admin-users").await;
}
