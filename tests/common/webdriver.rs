//! A compact W3C WebDriver client and a headless Chromium driven through the system
//! `chromedriver`, for the console's end-to-end tests (tests/console_e2e.rs).
//!
//! Why hand-written: the tests need a dozen commands (new session, navigate, find by CSS,
//! click, send keys, text, attribute, property, execute script, alerts, cookies, permissions,
//! screenshot, delete session), each one JSON request over loopback HTTP. `reqwest`,
//! `serde_json` and `base64` are already dev-dependencies, so this file adds no crate at
//! all; `fantoccini` (even with `default-features = false`) would add the `webdriver`
//! crate, `cookie`, `url`, `hyper-util` and their own trees for the same dozen calls.
//!
//! Lifecycle: [`Browser::start`] picks a free loopback port, starts `chromedriver --port=N`
//! in its own process group, waits for `/status` to say `ready`, and opens one session of
//! headless Chromium (`--headless=new --no-sandbox --disable-dev-shm-usage --disable-gpu`)
//! with its own temporary profile and `HOME`. Dropping the [`Browser`] deletes the session
//! (chromedriver then quits Chromium) and kills the process group it created, by its id,
//! so neither chromedriver nor a stray Chromium outlives the test, pass or fail.
//!
//! Trust: Chromium on Linux trusts the certificates of the NSS database in
//! `$HOME/.pki/nssdb`. The browser's temporary `HOME` gets a fresh database (made with
//! `certutil` from Debian `libnss3-tools`) holding the CA certificates passed to
//! [`Browser::start`] as trusted TLS anchors, so the console is a real secure context with
//! a valid certificate chain: no `acceptInsecureCerts`, no `--ignore-certificate-errors`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ChildGuard, need, run_cmd};

/// The key under which a W3C WebDriver element reference is returned.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long element waits poll before failing.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long one WebDriver command may take (a page load is one command).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A WebDriver error answer: the W3C error code and chromedriver's message.
#[derive(Debug, Clone)]
pub struct WdError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WebDriver {} ({}): {}",
            self.error, self.status, self.message
        )
    }
}

/// A headless Chromium session driven through its own chromedriver process.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    driver: ChildGuard,
    /// Holds the browser profile and `HOME` (with the NSS database); removed on drop.
    _home: tempfile::TempDir,
}

/// An element found on the current page.
#[derive(Clone)]
pub struct Element {
    id: String,
    /// The CSS selector that found it, for messages.
    pub selector: String,
}

impl Browser {
    /// Start chromedriver and one headless Chromium session that trusts `trusted_cas`
    /// (PEM files). Panics, naming what is missing, if either cannot be started.
    pub async fn start(trusted_cas: &[&Path]) -> Browser {
        need("chromedriver");
        need("chromium");
        need("certutil");
        let home = tempfile::tempdir().expect("browser home");
        let nssdb = home.path().join(".pki").join("nssdb");
        std::fs::create_dir_all(&nssdb).expect("create nssdb dir");
        let db = format!("sql:{}", nssdb.display());
        run_cmd(
            Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]),
            Duration::from_secs(30),
        )
        .ok();
        for (i, ca) in trusted_cas.iter().enumerate() {
            let name = format!("berth-test-ca-{i}");
            run_cmd(
                Command::new("certutil")
                    .args(["-A", "-d", &db, "-n", &name, "-t", "C,,", "-i"])
                    .arg(ca),
                Duration::from_secs(30),
            )
            .ok();
        }
        let profile = home.path().join("profile");
        std::fs::create_dir_all(&profile).expect("profile dir");

        let port = free_port();
        let log = home.path().join("chromedriver.log");
        let mut cmd = Command::new("chromedriver");
        cmd.arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .env("HOME", home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        {
            // Own process group: Drop kills chromedriver *and* the Chromium it started with
            // one kill(-pgid), even if the session could not be deleted cleanly.
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        let driver = ChildGuard::spawn("chromedriver", &mut cmd);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .no_proxy()
            .build()
            .expect("http client");

        // Wait for /status to report ready.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = http.get(format!("{base}/status")).send().await
                && let Ok(v) = resp.json::<Value>().await
                && v["value"]["ready"] == json!(true)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on port {port} did not become ready within 20 s (log: {})",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let chromium = which("chromium");
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": false,
                    "pageLoadStrategy": "normal",
                    "unhandledPromptBehavior": "ignore",
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-dev-shm-usage",
                            "--disable-gpu",
                            "--no-first-run",
                            "--no-default-browser-check",
                            "--disable-extensions",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--window-size=1280,1024",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                }
            }
        });
        let resp = http
            .post(format!("{base}/session"))
            .json(&caps)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .expect("POST /session to chromedriver");
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.expect("new session answer");
        let id = v["value"]["sessionId"].as_str().unwrap_or_else(|| {
            panic!(
                "chromedriver could not start Chromium ({status}): {v}\n(log: {})",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let session = format!("{base}/session/{id}");
        let b = Browser {
            http,
            session,
            driver,
            _home: home,
        };
        b.cmd(
            "POST",
            "/timeouts",
            Some(json!({"pageLoad": 30_000, "script": 10_000, "implicit": 0})),
        )
        .await
        .expect("set timeouts");
        b
    }

    /// PID of the chromedriver process (its process group id too).
    pub fn driver_pid(&self) -> u32 {
        self.driver.pid()
    }

    /// One WebDriver command on this session; `path` starts with `/` (or is empty).
    pub async fn cmd(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WdError> {
        let url = format!("{}{path}", self.session);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .json(&body.unwrap_or_else(|| json!({}))),
        };
        let resp = req.send().await.map_err(|e| WdError {
            status: 0,
            error: "transport".into(),
            message: format!("{method} {url}: {e}"),
        })?;
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.map_err(|e| WdError {
            status,
            error: "bad answer".into(),
            message: format!("{method} {url}: {e}"),
        })?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(WdError {
                status,
                error: v["value"]["error"].as_str().unwrap_or("unknown").into(),
                message: v["value"]["message"].as_str().unwrap_or("").into(),
            })
        }
    }

    async fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.cmd(method, path, body.clone())
            .await
            .unwrap_or_else(|e| panic!("{method} {path} {}: {e}", body.unwrap_or_default()))
    }

    /// Navigate and wait for the page load.
    pub async fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// A GET whose answer is a string ("" if it is not one).
    async fn must_string(&self, path: &str) -> String {
        self.must("GET", path, None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn current_url(&self) -> String {
        self.must_string("/url").await
    }

    pub async fn refresh(&self) {
        self.must("POST", "/refresh", None).await;
    }

    pub async fn title(&self) -> String {
        self.must_string("/title").await
    }

    /// The page's HTML source.
    pub async fn source(&self) -> String {
        self.must_string("/source").await
    }

    /// The visible text of the whole page (`document.body.innerText`).
    pub async fn body_text(&self) -> String {
        self.execute(
            "return document.body ? document.body.innerText : ''",
            json!([]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Panic with `why` if an element matches `css` now (no waiting).
    pub async fn assert_absent(&self, css: &str, why: &str) {
        assert!(self.find_now(css).await.is_none(), "{why} ({css})");
    }

    /// The first element matching `css` right now, if any.
    pub async fn find_now(&self, css: &str) -> Option<Element> {
        match self
            .cmd(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
        {
            Ok(v) => Some(Element {
                id: v[ELEMENT_KEY].as_str().expect("element id").to_string(),
                selector: css.to_string(),
            }),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("find {css}: {e}"),
        }
    }

    /// Every element matching `css` right now.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self
            .must(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| Element {
                        id: e[ELEMENT_KEY].as_str().expect("element id").to_string(),
                        selector: css.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Poll for an element matching `css` for up to [`WAIT`]; panics with the page's URL
    /// and text if it never appears.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.find_now(css).await {
                return e;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no element `{css}` within {WAIT:?} on {}\n--- page text ---\n{}",
                    self.current_url().await,
                    truncate(&self.body_text().await, 3000)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Poll until no element matches `css` (up to [`WAIT`]).
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        while self.find_now(css).await.is_some() {
            assert!(
                Instant::now() < deadline,
                "element `{css}` still present after {WAIT:?} on {}",
                self.current_url().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Poll until the current URL satisfies `pred` (up to [`WAIT`]); returns it.
    pub async fn wait_url(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.current_url().await;
            if pred(&url) {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "URL never became {what} within {WAIT:?}; it is {url}\n--- page text ---\n{}",
                truncate(&self.body_text().await, 3000)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Text of the element matching `css` (waits for it).
    pub async fn text_of(&self, css: &str) -> String {
        let e = self.find(css).await;
        self.text(&e).await
    }

    pub async fn click(&self, e: &Element) {
        self.must("POST", &format!("/element/{}/click", e.id), None)
            .await;
    }

    /// Wait for `css` and click it.
    pub async fn click_css(&self, css: &str) {
        let e = self.find(css).await;
        self.click(&e).await;
    }

    pub async fn clear(&self, e: &Element) {
        self.must("POST", &format!("/element/{}/clear", e.id), None)
            .await;
    }

    pub async fn send_keys(&self, e: &Element, text: &str) {
        self.must(
            "POST",
            &format!("/element/{}/value", e.id),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Wait for the input `css`, clear it and type `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.clear(&e).await;
        self.send_keys(&e, text).await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.must_string(&format!("/element/{}/text", e.id)).await
    }

    /// An HTML attribute (None if absent).
    pub async fn attr(&self, e: &Element, name: &str) -> Option<String> {
        let v = self
            .must("GET", &format!("/element/{}/attribute/{name}", e.id), None)
            .await;
        v.as_str().map(str::to_string)
    }

    /// A DOM property (e.g. `checked`, `value`).
    pub async fn prop(&self, e: &Element, name: &str) -> Value {
        self.must("GET", &format!("/element/{}/property/{name}", e.id), None)
            .await
    }

    /// Whether a checkbox/option is selected.
    pub async fn selected(&self, e: &Element) -> bool {
        self.must("GET", &format!("/element/{}/selected", e.id), None)
            .await
            .as_bool()
            .unwrap_or(false)
    }

    /// Find the first element matching `css` inside `parent`.
    pub async fn find_in(&self, parent: &Element, css: &str) -> Option<Element> {
        match self
            .cmd(
                "POST",
                &format!("/element/{}/element", parent.id),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
        {
            Ok(v) => Some(Element {
                id: v[ELEMENT_KEY].as_str().expect("element id").to_string(),
                selector: format!("{} {css}", parent.selector),
            }),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("find {css} in {}: {e}", parent.selector),
        }
    }

    /// Pass an element to a script as an argument.
    pub fn arg(e: &Element) -> Value {
        json!({ ELEMENT_KEY: e.id })
    }

    /// `execute/sync`: run `script` (a function body; `arguments` holds `args`).
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// `execute/async`: the script calls `arguments[arguments.length - 1](result)`.
    pub async fn execute_async(&self, script: &str, args: Value) -> Result<Value, WdError> {
        self.cmd(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Set a permission (W3C Permissions automation extension), e.g. `clipboard-read`.
    pub async fn set_permission(&self, name: &str, state: &str) -> Result<(), WdError> {
        self.cmd(
            "POST",
            "/permissions",
            Some(json!({"descriptor": {"name": name}, "state": state})),
        )
        .await
        .map(|_| ())
    }

    /// Wait up to `within` for a `confirm()`/`alert()` dialog; accept it (or dismiss it,
    /// i.e. "Cancel") and return its text. None if no dialog opened.
    pub async fn answer_dialog(&self, within: Duration, accept: bool) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            match self.cmd("GET", "/alert/text", None).await {
                Ok(v) => {
                    let text = v.as_str().unwrap_or_default().to_string();
                    let action = if accept {
                        "/alert/accept"
                    } else {
                        "/alert/dismiss"
                    };
                    self.must("POST", action, None).await;
                    return Some(text);
                }
                Err(e) if e.error == "no such alert" => {}
                Err(e) => panic!("reading dialog: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One cookie by name (`{name, value, httpOnly, secure, sameSite, ...}`), if set.
    pub async fn cookie(&self, name: &str) -> Option<Value> {
        match self.cmd("GET", &format!("/cookie/{name}"), None).await {
            Ok(v) => Some(v),
            Err(e) if e.error == "no such cookie" => None,
            Err(e) => panic!("get cookie {name}: {e}"),
        }
    }

    /// PNG bytes of the viewport (W3C Take Screenshot).
    pub async fn screenshot_png(&self) -> Vec<u8> {
        let v = self.must("GET", "/screenshot", None).await;
        decode_png(&v)
    }

    /// PNG bytes of the whole page, below the fold too (at most 8000 px tall), through
    /// chromedriver's DevTools passthrough (`Page.captureScreenshot` beyond the viewport).
    pub async fn full_page_png(&self) -> Vec<u8> {
        let size = self
            .execute(
                "const e = document.documentElement;
                 return [Math.max(e.scrollWidth, window.innerWidth),
                         Math.max(e.scrollHeight, document.body ? document.body.scrollHeight : 0)];",
                json!([]),
            )
            .await;
        let width = size[0].as_f64().unwrap_or(1280.0).max(1.0);
        let height = size[1].as_f64().unwrap_or(1024.0).clamp(1.0, 8000.0);
        let v = self
            .must(
                "POST",
                "/goog/cdp/execute",
                Some(json!({
                    "cmd": "Page.captureScreenshot",
                    "params": {
                        "format": "png",
                        "captureBeyondViewport": true,
                        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                    },
                })),
            )
            .await;
        decode_png(&v["data"])
    }

    /// Write a full-page screenshot of the current page to `dir/NAME.png`, check that it
    /// is a non-empty PNG, and return its path.
    pub async fn screenshot_to(&self, dir: &Path, name: &str) -> PathBuf {
        let png = self.full_page_png().await;
        assert_png(&png, name);
        std::fs::create_dir_all(dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("write screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask chromedriver to quit Chromium (bounded: a wedged driver must not hang the
        // test), then kill the process group we created, by its id.
        let url = self.session.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(c) = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .no_proxy()
                    .build()
                {
                    let _ = c.delete(&url).send().await;
                }
            });
        })
        .join();
        let pgid = self.driver.pid() as i32;
        // SAFETY: kill(2) with a negative pid signals the process group whose id is the
        // chromedriver PID; that group was created for it by `process_group(0)`.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        // ChildGuard's own drop reaps chromedriver.
    }
}

/// The PNG in a base64 string answer.
fn decode_png(v: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("screenshot: base64 string"))
        .expect("screenshot is base64")
}

/// Panic unless `bytes` is a non-empty PNG image.
pub fn assert_png(bytes: &[u8], what: &str) {
    const MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
    assert!(
        bytes.len() > MAGIC.len() + 25 && bytes.starts_with(MAGIC) && &bytes[12..16] == b"IHDR",
        "screenshot {what} is not a PNG ({} bytes)",
        bytes.len()
    );
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(w > 0 && h > 0, "screenshot {what} is {w}x{h}");
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn which(cmd: &str) -> String {
    let out = run_cmd(
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {cmd}")),
        Duration::from_secs(10),
    )
    .ok();
    out.stdout.trim().to_string()
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
