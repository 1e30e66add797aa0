//! A private PostgreSQL cluster for tests (this crate's and the server's): `initdb` in a
//! temporary directory, run as the `postgres` user when the tests run as root (PostgreSQL
//! refuses to run as root), listening on an ephemeral loopback port only.
//!
//! [`PgCluster::shared`] starts one cluster per test binary (killed by PID when the
//! process exits); [`PgCluster::database`] gives each test a fresh database of its own.
//! A test that stops and restarts the server (fault tests) owns a [`PgCluster::start`]ed
//! cluster, killed by its `Drop`.
//!
//! Binaries are looked up in `BERTH_PG_BIN`, then `/usr/lib/postgresql/{17,16,15}/bin`
//! (Debian's `postgresql` package; `scripts/install-test-deps` installs it).

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running (or stopped) private PostgreSQL cluster.
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    child: Mutex<Option<Child>>,
    /// Remove `dir` on drop (false for the shared cluster, cleaned up at exit).
    owned: bool,
}

static SHARED: OnceLock<PgCluster> = OnceLock::new();
/// PID of the shared cluster's postmaster, for the exit hook.
static SHARED_PID: AtomicU32 = AtomicU32::new(0);
static SHARED_DIR: OnceLock<PathBuf> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

extern "C" fn stop_shared_at_exit() {
    let pid = SHARED_PID.load(Ordering::SeqCst);
    if pid != 0 {
        // SIGQUIT: immediate shutdown; the postmaster takes its backends with it.
        // SAFETY: kill(2) on a PID we started.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: kill with signal 0 only probes whether the process exists.
        while unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    if let Some(dir) = SHARED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_PG_BIN") {
        return PathBuf::from(dir);
    }
    for v in ["17", "16", "15"] {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if dir.join("postgres").exists() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin; \
         run scripts/install-test-deps (apt-get install postgresql) or set BERTH_PG_BIN"
    );
}

/// uid and gid of the `postgres` user when running as root (None otherwise).
fn owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id(1)");
        assert!(
            out.status.success(),
            "no `postgres` user: install the postgresql package (scripts/install-test-deps)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

impl PgCluster {
    /// The cluster shared by every test of this binary, started on first use.
    pub fn shared() -> &'static PgCluster {
        SHARED.get_or_init(|| {
            let cluster = PgCluster::start_inner(false);
            let _ = SHARED_DIR.set(cluster.dir.clone());
            SHARED_PID.store(cluster.pid().unwrap_or(0), Ordering::SeqCst);
            // SAFETY: registering a plain extern "C" function.
            unsafe {
                libc::atexit(stop_shared_at_exit);
            }
            cluster
        })
    }

    /// A cluster of the caller's own, stopped and deleted on drop.
    pub fn start() -> PgCluster {
        PgCluster::start_inner(true)
    }

    fn start_inner(owned: bool) -> PgCluster {
        let bin = pg_bin();
        let owner = owner();
        let dir = std::env::temp_dir().join(format!(
            "berth-pg-{}-{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create cluster directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        if let Some((uid, gid)) = owner {
            for p in [dir.clone(), dir.join("data")] {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null());
        as_owner(&mut initdb, owner);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = PgCluster {
            dir,
            port: free_port(),
            bin,
            owner,
            child: Mutex::new(None),
            owned,
        };
        cluster.resume();
        cluster
    }

    /// The postmaster's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Start the server again after [`PgCluster::stop`] (same port, same data).
    pub fn resume(&self) {
        let mut child = self.child.lock().unwrap();
        assert!(child.is_none(), "the cluster is already running");
        let log = std::fs::File::create(self.dir.join("server.log")).expect("server log");
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=32MB",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        as_owner(&mut cmd, self.owner);
        let spawned = cmd.spawn().expect("start postgres");
        *child = Some(spawned);
        drop(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if let Some(child) = self.child.lock().unwrap().as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "postgres exited with {status} at start: {}",
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within {START_TIMEOUT:?}: {}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server (fast shutdown: clients are disconnected) and wait for it to exit.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return;
        };
        // SAFETY: kill(2) on the postmaster we started; SIGINT = fast shutdown.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database; its URL.
    pub async fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect to the test cluster");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let _ = conn.close().await;
        self.url(&name)
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
