//! Test harness: start the real `berth serve` binary on 127.0.0.1 with TLS, on an
//! ephemeral port, with its own temporary data directory; stop it by PID on drop.
#![allow(dead_code)]

pub mod containerd;
pub mod distribution;
pub mod docker;
pub mod garage;
pub mod receiver;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `berth serve` process.
pub struct Berth {
    child: Child,
    /// The address it listens on (127.0.0.1:PORT).
    pub addr: SocketAddr,
    /// Its data directory (removed on drop).
    pub data: tempfile::TempDir,
    /// `https` or `http`.
    pub scheme: &'static str,
}

impl Berth {
    /// `berth serve` with an auto-generated CA, on 127.0.0.1:0.
    pub fn start() -> Berth {
        Berth::start_with(&[])
    }

    /// `berth serve --listen 127.0.0.1:0 --data TMP` plus `extra` arguments.
    pub fn start_with(extra: &[&str]) -> Berth {
        let data = tempfile::tempdir().expect("temp data dir");
        Berth::start_in(data, extra)
    }

    /// Start on an existing data directory (e.g. to test restarts).
    pub fn start_in(data: tempfile::TempDir, extra: &[&str]) -> Berth {
        Berth::start_bin_in(berth_bin(), data, extra)
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The CA certificate the server generated on first start.
    pub fn ca_path(&self) -> PathBuf {
        self.data.path().join("tls").join("ca.crt")
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_path()).expect("read ca.crt")
    }

    /// A directory holding only `ca.crt`, as `skopeo --cert-dir` and Docker `certs.d` expect.
    pub fn cert_dir(&self) -> PathBuf {
        let dir = self.data.path().join("client-certs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.ca_path(), dir.join("ca.crt")).unwrap();
        dir
    }

    /// An HTTP client that trusts this server's CA (and nothing else).
    /// An HTTP client that trusts this server's CA and sends the administrator's Basic
    /// credentials on every request.
    pub fn client(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            basic_auth(ADMIN_USER, ADMIN_PASSWORD).parse().unwrap(),
        );
        self.client_builder()
            .default_headers(headers)
            .build()
            .expect("client")
    }

    /// An HTTP client that trusts this server's CA and sends no credentials.
    pub fn anon_client(&self) -> reqwest::Client {
        self.client_builder().build().expect("client")
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        // HTTP/1.1 unless a test asks for HTTP/2 itself (reqwest offers h2 by ALPN once its
        // `http2` feature is on).
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .http1_only();
        if self.scheme == "https" {
            let certs = reqwest::Certificate::from_pem_bundle(&self.ca_pem()).expect("ca pem");
            b = b.tls_certs_only(certs);
        }
        b
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the server abruptly (SIGKILL) and hand back its data directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.data, tempfile::tempdir().unwrap())
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The administrator every test server starts with (BERTH_ADMIN_PASSWORD).
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "test-admin-password-0123456789";

/// `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `admin:PASSWORD`, as skopeo `--creds` and ctr `--user` take it.
pub fn admin_creds() -> String {
    format!("{ADMIN_USER}:{ADMIN_PASSWORD}")
}

/// Path of the `berth` binary under test.
pub fn berth_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_berth"))
}

/// Whether a command exists on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Appended for tests/registry_api.rs: run the suite against another server
// binary that speaks the same CLI (`serve --listen ADDR --data DIR`, prints
// `berth listening on SCHEME://ADDR`). Used to sanity-check the tests against a
// reference registry; by default the tests run against Berth.
// ---------------------------------------------------------------------------

/// The server binary the registry API tests start: `$BERTH_TEST_SERVER_BIN`
/// if set, otherwise the `berth` binary under test.
pub fn server_bin() -> PathBuf {
    std::env::var_os("BERTH_TEST_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| berth_bin().to_path_buf())
}

impl Berth {
    /// Start `bin serve` (normally `berth`, see [`server_bin`]) on `data`, on 127.0.0.1:0,
    /// and wait for its `berth listening on SCHEME://ADDR` line.
    pub fn start_bin_in(bin: &Path, data: tempfile::TempDir, extra: &[&str]) -> Berth {
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data.path())
            .args(extra)
            .env("RUST_LOG", "berth=info,warn")
            .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
            // Tests push into projects they name on the fly; the strict default (refuse a
            // push into a missing project) is tested on its own.
            .env("BERTH_AUTO_CREATE_PROJECTS", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let Some(url) = listening_url(&mut child) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berth serve did not report its address within 60 s");
        };
        let (scheme, addr) = url.split_once("://").expect("url");
        let scheme = if scheme == "https" { "https" } else { "http" };
        Berth {
            child,
            addr: addr.trim().parse().expect("listen address"),
            data,
            scheme,
        }
    }
}

/// Wait for `berth serve`'s `berth listening on SCHEME://ADDR` line on `child`'s piped
/// stdout (read by a thread that goes on draining it): the URL, or `None` after 60 s.
pub fn listening_url(child: &mut Child) -> Option<String> {
    let stdout = child.stdout.take().expect("berth serve's stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx.recv_timeout(left).ok()?;
        if let Some(url) = line.strip_prefix("berth listening on ") {
            return Some(url.trim().to_string());
        }
    }
}

// ---------------------------------------------------------------------------
// Appended for the interop tests (tests/interop_*.rs): running real peers
// (skopeo, ctr, containerd, python) as child processes, bounded in time and
// always stopped by PID.
// ---------------------------------------------------------------------------

/// A long-running child process (a daemon a test started). Dropping the guard kills it
/// (SIGKILL, by PID) and reaps it, whether the test passed or panicked.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    /// Spawn `cmd`; panics (naming the program) if it cannot be started.
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e} (run scripts/install-test-deps)"));
        ChildGuard {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// `program arg…`, for messages.
    pub cmdline: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panic with the command line and both streams unless it exited 0.
    pub fn ok(self) -> CmdOutput {
        assert!(
            self.status.success(),
            "command failed ({}): {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.cmdline,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Panic unless `cmd` is on PATH: the interop tests fail, never skip, without their peers.
pub fn need(cmd: &str) {
    assert!(
        have(cmd),
        "`{cmd}` is not on PATH: run scripts/install-test-deps (tests never skip)"
    );
}

/// Run `cmd` to completion with stdin closed, capturing stdout and stderr. If it is still
/// running after `timeout` it is killed by PID and the call panics.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let cmdline = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut guard = ChildGuard::spawn(
        &program,
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let (t_out, t_err) = drain(&mut guard.child);
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match guard.child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                let pid = guard.pid();
                drop(guard); // kills and reaps
                panic!("timed out after {timeout:?} (killed pid {pid}): {cmdline}");
            }
            Err(e) => panic!("waiting for {cmdline}: {e}"),
        }
    };
    drop(guard);
    CmdOutput {
        status,
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        cmdline,
    }
}

/// Read `child`'s piped stdout and stderr to their ends on threads of their own (a child
/// that fills one pipe while the caller waits on the other would otherwise deadlock).
pub fn drain(
    child: &mut Child,
) -> (
    std::thread::JoinHandle<Vec<u8>>,
    std::thread::JoinHandle<Vec<u8>>,
) {
    use std::io::Read;
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    (
        read_all(Box::new(child.stdout.take().expect("stdout is piped"))),
        read_all(Box::new(child.stderr.take().expect("stderr is piped"))),
    )
}

/// `sha256:HEX` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// An image manifest (OCI, compact JSON) naming `config` and one gzip `layer`.
pub fn image_manifest_json(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_digest(layer), "size": layer.len()}],
    }))
    .unwrap()
}

/// An OCI image layout in `dir` holding one image, with `layer` as its only layer, tagged
/// `tag`; returns its `oci:DIR:TAG` reference (for skopeo).
pub fn one_layer_oci_layout(dir: &Path, tag: &str, layer: &[u8]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = image_manifest_json(config, layer);
    for blob in [layer, &config[..], &manifest] {
        std::fs::write(blobs.join(&sha256_digest(blob)[7..]), blob).unwrap();
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256_digest(&manifest),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    format!("oci:{}:{tag}", dir.display())
}
