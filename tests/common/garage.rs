//! A real S3 server for tests: Garage (`cargo install garage --version 2.5.0 --locked`, done
//! by scripts/install-test-deps), single node, on loopback ephemeral ports, with a default
//! key and bucket, in a temporary directory.
//!
//! [`Garage::shared`] starts one per test binary; a watchdog shell kills it by PID (and
//! removes its directory) once the test process is gone. [`Garage::start`] gives a test its
//! own instance, which it may [`stop`](Garage::stop) and [`restart`](Garage::restart) on the
//! same ports and data; it is killed by PID when dropped.
//!
//! Used by the root crate's integration tests and, through `#[path]`, by berth-storage's
//! unit tests, so it depends on std and `tempfile` only.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const BUCKET: &str = "berth-test";
pub const REGION: &str = "garage";

/// A Garage server.
pub struct Garage {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    config: PathBuf,
    /// For the shared instance: the shell that kills it once the test process is gone.
    watchdog: Option<Child>,
    /// The S3 API address (127.0.0.1:PORT).
    pub addr: SocketAddr,
}

/// The `garage` binary: $BERTH_GARAGE_BIN, else ~/.cargo/bin/garage, else PATH.
pub fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_GARAGE_BIN") {
        return p.into();
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cargo/bin/garage");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("garage")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free loopback port")
        .port()
}

impl Garage {
    /// This test binary's Garage (started on first use).
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(|| {
            let mut g = Garage::start();
            // Statics are never dropped: a watchdog kills the server and removes its
            // directory by PID when this test process has exited.
            let pid = g.child.as_ref().unwrap().id();
            let dir = g.dir.take().unwrap().keep();
            let watchdog = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill -9 {pid}; \
                     sleep 1; rm -rf '{dir}'",
                    parent = std::process::id(),
                    dir = dir.display()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn the Garage watchdog");
            g.watchdog = Some(watchdog);
            g
        })
    }

    /// A Garage of the calling test's own.
    pub fn start() -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("berth-garage")
            .tempdir()
            .expect("temp dir for Garage");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let rpc = free_port();
        let config = dir.path().join("garage.toml");
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + std::process::id() as usize) % 256))
            .collect();
        let text = format!(
            "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"sqlite\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc}\"\nrpc_secret = \"{secret}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"{addr}\"\n",
            meta = dir.path().join("meta").display(),
            data = dir.path().join("data").display(),
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&config)
            .expect("write garage.toml");
        f.write_all(text.as_bytes()).unwrap();
        let mut g = Garage {
            child: None,
            dir: Some(dir),
            config,
            watchdog: None,
            addr,
        };
        g.restart();
        g
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kill the server (SIGKILL, by PID); its data stays for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server (again) on the same ports and data; waits until it accepts
    /// connections (at most 30 s).
    pub fn restart(&mut self) {
        self.stop();
        let log =
            std::fs::File::create(self.config.with_file_name("garage.log")).expect("garage.log");
        let child = Command::new(garage_bin())
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .arg("--single-node")
            .arg("--default-bucket")
            .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
            .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (run scripts/install-test-deps, which installs \
                     Garage 2.5.0)",
                    garage_bin().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("garage exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "garage did not listen on {} within 30 s:\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_file_name("garage.log")).unwrap_or_default()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.stop();
    }
}
