//! CNCF Distribution 2.8 (Debian `docker-registry`) as a test peer: HTTPS with a CA from
//! `berth cert init`, optional htpasswd (bcrypt) Basic auth, its log in `access.log`;
//! killed by PID on drop (or by [`Distribution::stop`]), data removed with its directory.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ChildGuard, berth_bin, need, run_cmd};

/// The htpasswd user and password when started with `htpasswd = true`.
pub const USER: &str = "alice";
pub const PASSWORD: &str = "s3cret-Pa55";

pub struct Distribution {
    child: Option<ChildGuard>,
    /// `IP:PORT` (`127.0.0.1:PORT` unless started with [`Distribution::start_on`])
    pub host: String,
    pub dir: tempfile::TempDir,
}

impl Distribution {
    pub fn start(htpasswd: bool) -> Distribution {
        Distribution::start_on(htpasswd, "127.0.0.1")
    }

    /// Listening on `ip` (e.g. the host side of a test network namespace, so a registry
    /// inside it can reach this one), with `ip` in its certificate too.
    pub fn start_on(htpasswd: bool, ip: &str) -> Distribution {
        need("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let s = |p: PathBuf| p.display().to_string();
        let mut args = vec![
            "cert".to_owned(),
            "init".to_owned(),
            "--out".to_owned(),
            s(certs.clone()),
            "--host".to_owned(),
            "localhost".to_owned(),
            "--ip".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        if ip != "127.0.0.1" {
            args.extend(["--ip".to_owned(), ip.to_owned()]);
        }
        run_cmd(
            Command::new(berth_bin()).args(&args),
            Duration::from_secs(60),
        )
        .ok();
        let port = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: {ip}:{port}\n  secret: berth-test-secret\n  tls:\n    certificate: {crt}\n    key: {key}\n",
            data = s(dir.path().join("data")),
            crt = s(certs.join("server.crt")),
            key = s(certs.join("server.key")),
        );
        if htpasswd {
            let hash = bcrypt::hash(PASSWORD, 5).unwrap();
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, format!("{USER}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                s(file)
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("access.log")).unwrap();
        let mut guard = ChildGuard::spawn(
            "docker-registry",
            Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .env_remove("AWS_CA_BUNDLE")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((ip, port)).is_err() {
            assert!(guard.running(), "docker-registry exited at start");
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Distribution {
            child: Some(guard),
            host: format!("{ip}:{port}"),
            dir,
        }
    }

    /// The CA that signed its certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.crt")
    }

    /// A directory holding only `ca.crt`, as `skopeo --cert-dir` expects.
    pub fn cert_dir(&self) -> PathBuf {
        let d = self.dir.path().join("client-certs");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(self.ca(), d.join("ca.crt")).unwrap();
        d
    }

    /// Everything it logged (one line per request).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildGuard::pid)
    }

    /// Kill it now (its data stays until drop).
    pub fn stop(&mut self) {
        self.child.take();
    }
}
