//! A private containerd daemon for interop tests: its own root, state, socket and config,
//! killed by PID (then its directory removed) when dropped.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{ChildGuard, CmdOutput, need, run_cmd};

/// The containerd namespace the tests' images live in.
pub const NAMESPACE: &str = "berth-test";
/// Bound on one `ctr` command.
const TIMEOUT: Duration = Duration::from_secs(180);

/// A private containerd daemon in a temporary directory.
pub struct Containerd {
    // Field order matters: the process is killed before its directory is removed.
    proc: ChildGuard,
    dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Containerd {
    pub fn start() -> Containerd {
        need("containerd");
        need("ctr");
        // Short path: the socket must fit in sockaddr_un (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("bctd")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("c.sock");
        let config = dir.path().join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
                root = root.display(),
                state = state.display(),
                socket = socket.display(),
                opt = dir.path().join("opt").display(),
            ),
        )
        .unwrap();
        let log = fs::File::create(dir.path().join("containerd.log")).unwrap();
        let proc = ChildGuard::spawn(
            "containerd",
            Command::new("containerd")
                .arg("--config")
                .arg(&config)
                .arg("--root")
                .arg(&root)
                .arg("--state")
                .arg(&state)
                .arg("--address")
                .arg(&socket)
                .arg("--log-level")
                .arg("warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let mut c = Containerd { proc, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(c.proc.running(), "containerd exited early:\n{}", c.log());
            if c.socket.exists() && c.ctr(&["version"]).success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 60 s:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address SOCK --namespace berth-test ARGS…`
    pub fn ctr(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", NAMESPACE])
            .args(args);
        run_cmd(&mut cmd, TIMEOUT)
    }

    /// Where the native snapshotter keeps the committed snapshot `key` (read-only view).
    pub fn snapshot_dir(&self, key: &str) -> PathBuf {
        let view = format!("berth-view-{}", &key["sha256:".len()..][..12]);
        let out = self.ctr(&[
            "snapshots",
            "--snapshotter",
            "native",
            "view",
            "--mounts",
            &view,
            key,
        ]);
        let out = out.ok();
        let mounts: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("ctr snapshots view --mounts: {e}: {}", out.stdout));
        // containerd 1.6 prints Go field names (`Source`); newer ones print `source`.
        let m = &mounts[0];
        let source = m["Source"].as_str().or(m["source"].as_str());
        let source = source.unwrap_or_else(|| panic!("ctr snapshots view --mounts: {mounts}"));
        PathBuf::from(source)
    }
}
