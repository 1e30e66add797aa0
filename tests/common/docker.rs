//! The Docker engine as a test peer, shared by tests/interop_docker.rs and
//! tests/proxy_cache.rs.
//!
//! Docker treats every registry on 127.0.0.0/8 as insecure (HTTPS without verification),
//! so a registry whose certificate Docker must check listens on a non-loopback address:
//! [`NetNs`] makes a network namespace `berth-dk-PID…` joined to the host by a veth pair on
//! a random /30 inside 10.213.0.0/16 (host side `.1`, namespace side `.2`); [`NsBerth`]
//! runs `berth serve` inside it on the namespace address with a certificate from
//! `berth cert init --ip`. [`Dockerd`] is a private `dockerd` in the host network namespace
//! but its own *mount* namespace, with a temporary directory bind-mounted over
//! `/etc/docker`: dockerd reads registry CAs only from `/etc/docker/certs.d/HOST:PORT/ca.crt`
//! (hard-coded for a root daemon), so [`Dockerd::trust`] writes there without touching the
//! host's `/etc/docker` (and no host `daemon.json`, hence no insecure-registry setting,
//! applies). Every process is stopped by PID when its guard drops, pass or fail; the
//! namespace, veth pair and temporary directories are removed too.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------
// Small process helpers
// ---------------------------------------------------------------------------------------

/// Run a command to completion with a deadline; the child is killed (by PID) on timeout.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    run(cmd, None, timeout)
}

/// Like [`run_timeout`], but writes `input` to the child's stdin (then closes it).
pub fn run_timeout_stdin(cmd: &mut Command, input: &[u8], timeout: Duration) -> Output {
    run(cmd, Some(input), timeout)
}

fn run(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    use std::io::Write as _;
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    // The writer on a thread of its own too (see `drain`).
    let t_in = input.map(|input| {
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let (t_out, t_err) = super::drain(&mut child);
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        match child.try_wait().expect("try_wait") {
            Some(s) => break s,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("timed out after {timeout:?}: {desc}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if let Some(t) = t_in {
        let _ = t.join();
    }
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run a command that must succeed.
pub fn must(cmd: &mut Command, timeout: Duration) -> String {
    let desc = format!("{cmd:?}");
    let o = run_timeout(cmd, timeout);
    assert!(
        o.status.success(),
        "{desc} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    text(&o)
}

pub fn ip(args: &[&str]) -> Output {
    run_timeout(Command::new("ip").args(args), Duration::from_secs(20))
}

/// Stop a child by PID: SIGTERM, up to `grace`, then SIGKILL. Always reaps it.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL a process we started indirectly (e.g. dockerd's managed containerd), by PID,
/// after checking that the PID still names that process.
pub fn kill_pid_if(pid: u32, cmdline_contains: &str) {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if cmdline.contains(cmdline_contains) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Panic unless the Docker tests can run: the tools on PATH and root (network namespaces,
/// dockerd). A missing tool is a failure, never a skip.
pub fn require_tools() {
    let missing: Vec<&str> = ["dockerd", "docker", "ip", "unshare", "tar", "mount", "kill"]
        .into_iter()
        .filter(|t| !super::have(t))
        .collect();
    assert!(
        missing.is_empty(),
        "the Docker engine tests need {missing:?} on PATH (Debian packages docker.io, iproute2, \
         util-linux, tar; run scripts/install-test-deps as root)"
    );
    let uid = run_timeout(Command::new("id").arg("-u"), Duration::from_secs(5));
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the Docker engine tests must run as root (network namespaces, dockerd)"
    );
}

// ---------------------------------------------------------------------------------------
// Network namespace with a veth pair
// ---------------------------------------------------------------------------------------

pub struct NetNs {
    pub name: String,
    host_if: String,
    /// Address of the host side of the veth pair (reachable from inside the namespace).
    pub host_ip: Ipv4Addr,
    /// Address of the namespace side (the registry listens here).
    pub ns_ip: Ipv4Addr,
}

impl NetNs {
    pub fn create() -> NetNs {
        let pid = std::process::id();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let mut seed = (pid as u64) << 32 ^ nanos as u64;
        for attempt in 0..16u32 {
            // xorshift: cheap, different per attempt.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let third = (seed % 256) as u8;
            let base = ((seed >> 8) % 64) as u8 * 4;
            let host_ip = Ipv4Addr::new(10, 213, third, base + 1);
            let ns_ip = Ipv4Addr::new(10, 213, third, base + 2);
            let subnet = format!("10.213.{third}.{base}/30");
            // Skip a /30 that the host already uses.
            let used = ip(&["-4", "-o", "addr", "show", "to", &subnet]);
            if !String::from_utf8_lossy(&used.stdout).trim().is_empty() {
                continue;
            }
            let tag = format!("{}{}", pid % 100_000, attempt);
            let ns = NetNs {
                name: format!("berth-dk-{tag}"),
                host_if: format!("bdk{tag}h"),
                host_ip,
                ns_ip,
            };
            let ns_if = format!("bdk{tag}n");
            if !ip(&["netns", "add", &ns.name]).status.success() {
                continue; // name taken: try another; nothing of ours to clean
            }
            // From here on `ns` drops (and cleans up) on any failure.
            let (h, n, nsn) = (ns.host_if.as_str(), ns_if.as_str(), ns.name.as_str());
            let (hip, nip) = (format!("{host_ip}/30"), format!("{ns_ip}/30"));
            let steps: [&[&str]; 7] = [
                &["link", "add", h, "type", "veth", "peer", "name", n],
                &["link", "set", n, "netns", nsn],
                &["addr", "add", &hip, "dev", h],
                &["link", "set", h, "up"],
                &["-n", nsn, "addr", "add", &nip, "dev", n],
                &["-n", nsn, "link", "set", n, "up"],
                &["-n", nsn, "link", "set", "lo", "up"],
            ];
            for args in steps {
                let o = ip(args);
                assert!(o.status.success(), "ip {args:?} failed: {}", text(&o));
            }
            return ns;
        }
        panic!("could not find a free /30 in 10.213.0.0/16 for the test namespace");
    }

    /// `ip netns exec NAME PROGRAM ARGS…` (ip execs the program: its PID is the child's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(&self.name).arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

// ---------------------------------------------------------------------------------------
// A private dockerd in the host network namespace, own mount namespace
// ---------------------------------------------------------------------------------------

pub struct Dockerd {
    child: Child,
    /// Its data, exec root, socket, log, and the client's `DOCKER_CONFIG` (`config/`).
    pub dir: tempfile::TempDir,
    /// Bind-mounted over /etc/docker inside dockerd's mount namespace.
    pub etc_docker: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    created_etc_docker: bool,
    created_run_docker: bool,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        // Short path: the socket path must fit in sockaddr_un (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("bdk")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let etc_docker = dir.path().join("etc-docker");
        fs::create_dir_all(etc_docker.join("certs.d")).unwrap();
        for d in ["data", "exec", "config"] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let sock = dir.path().join("d.sock");
        let log = dir.path().join("dockerd.log");
        // The bind mount needs /etc/docker to exist as a mount point; dockerd itself
        // creates /run/docker/plugins on the host. Remove both afterwards if we made them.
        let created_etc_docker = !Path::new("/etc/docker").exists();
        if created_etc_docker {
            fs::create_dir_all("/etc/docker").expect("mkdir /etc/docker");
        }
        let created_run_docker = !Path::new("/run/docker").exists();
        let script = r#"set -e
mount --bind "$1" /etc/docker
shift
exec "$@""#;
        let logf = fs::File::create(&log).unwrap();
        let child = Command::new("unshare")
            .arg("--mount")
            .arg("--propagation")
            .arg("private")
            .arg("--")
            .arg("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(&etc_docker)
            .arg("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--storage-driver=vfs")
            .arg("--iptables=false")
            .arg("--ip6tables=false")
            .arg("--bridge=none")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn unshare … dockerd");
        let mut d = Dockerd {
            child,
            dir,
            etc_docker,
            sock,
            log,
            created_etc_docker,
            created_run_docker,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("dockerd exited early ({st}):\n{}", tail(&d.log, 40));
            }
            let o = run_timeout(
                d.docker()
                    .args(["version", "--format", "{{.Server.Version}}"]),
                Duration::from_secs(20),
            );
            if o.status.success() {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd did not answer on {} within 90 s:\n{}\n--- dockerd log ---\n{}",
                    d.sock.display(),
                    text(&o),
                    tail(&d.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        d
    }

    /// A `docker` CLI command aimed at this daemon, with a private client config dir.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", self.dir.path().join("config"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run_timeout(self.docker().args(args), Duration::from_secs(300))
    }

    pub fn must(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed ({}):\n{}\n--- dockerd log ---\n{}",
            o.status,
            text(&o),
            tail(&self.log, 30)
        );
        text(&o)
    }

    /// `docker login --username USER --password-stdin HOST`.
    pub fn login(&self, host: &str, user: &str, password: &str) -> Output {
        run_timeout_stdin(
            self.docker()
                .args(["login", "--username", user, "--password-stdin", host]),
            format!("{password}\n").as_bytes(),
            Duration::from_secs(120),
        )
    }

    /// The client's config.json (written by `docker login`), if any.
    pub fn config_json(&self) -> Option<serde_json::Value> {
        let raw = fs::read(self.dir.path().join("config").join("config.json")).ok()?;
        Some(serde_json::from_slice(&raw).expect("config.json is JSON"))
    }

    /// The last lines dockerd logged.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 30)
    }

    /// Trust `ca` for `host` the way the seed tells Docker users to.
    pub fn trust(&self, host: &str, ca: &Path) {
        let d = self.etc_docker.join("certs.d").join(host);
        fs::create_dir_all(&d).unwrap();
        fs::copy(ca, d.join("ca.crt")).unwrap();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // dockerd stops its managed containerd on SIGTERM; if it had to be SIGKILLed, stop
        // the containerd it started (by the PID it recorded under our exec-root).
        stop_child(&mut self.child, Duration::from_secs(20));
        let ctr_pid = self.dir.path().join("exec/containerd/containerd.pid");
        if let Some(pid) = fs::read_to_string(&ctr_pid)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            kill_pid_if(pid, &self.dir.path().display().to_string());
        }
        if self.created_run_docker {
            let _ = fs::remove_dir("/run/docker/plugins");
            let _ = fs::remove_dir("/run/docker");
        }
        if self.created_etc_docker {
            let _ = fs::remove_dir("/etc/docker");
        }
    }
}

// ---------------------------------------------------------------------------------------
// `berth serve` inside the namespace, on its non-loopback address
// ---------------------------------------------------------------------------------------

/// `berth serve` run inside `ns` on `NS_IP:port`, with a CA and a server certificate for
/// that address made by `berth cert init --ip`; stopped by PID on drop.
pub struct NsBerth {
    child: Child,
    /// `certs/` (ca.crt, server.crt, server.key) and `data/`.
    pub dir: tempfile::TempDir,
    /// `NS_IP:PORT`, as clients name it.
    pub host: String,
}

impl NsBerth {
    /// Start it with `extra` arguments after `serve --listen … --data … --tls-cert … --tls-key …`,
    /// and wait for its `berth listening on https://NS_IP:PORT` line.
    pub fn start(ns: &NetNs, port: u16, extra: &[&str]) -> NsBerth {
        let bin = super::berth_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).unwrap();
        let host = format!("{}:{port}", ns.ns_ip);
        must(
            Command::new(bin)
                .args(["cert", "init", "--out"])
                .arg(&certs)
                .args(["--ip", &ns.ns_ip.to_string()]),
            Duration::from_secs(60),
        );
        for f in ["ca.crt", "ca.key", "server.crt", "server.key"] {
            assert!(certs.join(f).is_file(), "berth cert init did not write {f}");
        }
        let child = ns
            .command(bin)
            .args(["serve", "--listen", &host, "--data"])
            .arg(&data)
            .arg("--tls-cert")
            .arg(certs.join("server.crt"))
            .arg("--tls-key")
            .arg(certs.join("server.key"))
            .args(extra)
            .env("RUST_LOG", "berth=info,warn")
            .env("BERTH_ADMIN_PASSWORD", super::ADMIN_PASSWORD)
            .env("BERTH_AUTO_CREATE_PROJECTS", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth serve in the namespace");
        let mut berth = NsBerth { child, dir, host };
        let Some(url) = super::listening_url(&mut berth.child) else {
            stop_child(&mut berth.child, Duration::from_secs(2));
            panic!(
                "berth serve (in netns {}) did not report listening within 60 s",
                ns.name
            );
        };
        assert_eq!(url, format!("https://{}", berth.host), "listen line");
        berth
    }

    /// The CA that signed its certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.crt")
    }

    /// `https://NS_IP:PORT`
    pub fn url(&self) -> String {
        format!("https://{}", self.host)
    }

    /// An HTTP client trusting only its CA, sending the administrator's Basic credentials.
    pub fn client(&self) -> reqwest::Client {
        let ca = fs::read(self.ca_path()).expect("read ca.crt");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            super::basic_auth(super::ADMIN_USER, super::ADMIN_PASSWORD)
                .parse()
                .unwrap(),
        );
        reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("ca pem"))
            .default_headers(headers)
            .build()
            .expect("client")
    }
}

impl Drop for NsBerth {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}
