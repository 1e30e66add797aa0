//! `berth fetch` end to end against a real `berth serve` over HTTPS with its self-signed CA:
//!
//! * the fixture image (3 gzip layers: a whiteout, a symlink, an overwritten file) is
//!   pushed with skopeo, fetched with `berth fetch --rootfs`, and the tree compared entry
//!   by entry (type, mode, contents, link target, mtime) with `umoci unpack` of the same
//!   OCI layout;
//! * a second fetch with the same cache transfers no blob: the server's request log
//!   (`RUST_LOG=berth=info`, one line per request on stderr) shows no blob GET, and the
//!   blobs are even unlinked from the repository before it;
//! * a blob corrupted on the server's disk makes the fetch fail with a digest mismatch and
//!   leaves neither the root filesystem nor a `DIR.tmp-*` sibling;
//! * `--layout` writes the same blobs as the source layout; `--platform` picks from an
//!   index.
//!
//! Every process started here is stopped by PID when its guard drops. skopeo and umoci
//! are required (scripts/install-test-deps); a missing peer fails, never skips.

mod common;
mod fixtures;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ChildGuard, CmdOutput, berth_bin, need, run_cmd};

const TIMEOUT: Duration = Duration::from_secs(180);

/// `berth serve` with its stderr (the request log) captured in a file.
struct Server {
    // Field order: the process is killed before its directory is removed.
    _proc: ChildGuard,
    addr: String,
    log: PathBuf,
    data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("server.log");
        let mut cmd = Command::new(berth_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data.path())
            .env("RUST_LOG", "berth=info,warn")
            .env("NO_COLOR", "1")
            .env("BERTH_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
            .env("BERTH_AUTO_CREATE_PROJECTS", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(fs::File::create(&log).unwrap()));
        let mut proc = ChildGuard::spawn("berth serve", &mut cmd);
        let url = common::listening_url(&mut proc.child)
            .expect("berth serve reports its address within 60 s");
        let addr = url.split_once("://").unwrap().1.to_string();
        Server {
            _proc: proc,
            addr,
            log,
            data,
        }
    }

    fn ca(&self) -> PathBuf {
        self.data.path().join("tls/ca.crt")
    }

    fn cert_dir(&self) -> PathBuf {
        let dir = self.data.path().join("client-certs");
        fs::create_dir_all(&dir).unwrap();
        fs::copy(self.ca(), dir.join("ca.crt")).unwrap();
        dir
    }

    /// Request-log lines so far that are GETs of a blob.
    fn blob_gets(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("berth::http") && l.contains("GET") && l.contains("/blobs/"))
            .map(str::to_string)
            .collect()
    }

    fn request_lines(&self) -> usize {
        fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("berth::http"))
            .count()
    }

    fn push(&self, layout: &fixtures::Layout, repo_tag: &str, all: bool) {
        need("skopeo");
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy"]);
        if all {
            cmd.arg("--all");
        }
        cmd.arg("--dest-creds")
            .arg(common::admin_creds())
            .arg("--dest-cert-dir")
            .arg(self.cert_dir())
            .arg(layout.oci_ref())
            .arg(format!("docker://{}/{repo_tag}", self.addr));
        run_cmd(&mut cmd, TIMEOUT).ok();
    }

    /// `berth fetch REF ARGS --output json` with this server's CA.
    fn fetch(
        &self,
        repo_tag: &str,
        cache: &Path,
        args: &[&str],
    ) -> (CmdOutput, Vec<serde_json::Value>) {
        let mut cmd = Command::new(berth_bin());
        cmd.arg("fetch")
            .arg(format!("{}/{repo_tag}", self.addr))
            .arg("--cache")
            .arg(cache)
            .arg("--ca-bundle")
            .arg(self.ca())
            .args(["--output", "json", "--docker-config"])
            .arg(cache.join("no-docker-config"))
            .args(args);
        let out = run_cmd(&mut cmd, TIMEOUT);
        let events = out
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (out, events)
    }
}

fn done_event(events: &[serde_json::Value]) -> &serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == "done")
        .unwrap_or_else(|| panic!("no done event in {events:#?}"))
}

/// Every entry below `root`: type, permission bits, contents or link target, mtime for
/// regular files and links.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let desc = if ft.is_symlink() {
                format!(
                    "symlink -> {} mtime {}",
                    fs::read_link(&p).unwrap().display(),
                    md.mtime()
                )
            } else if ft.is_dir() {
                walk(root, &p, out);
                format!(
                    "dir {:o} uid {} gid {}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid()
                )
            } else {
                let bytes = fs::read(&p).unwrap();
                format!(
                    "file {:o} uid {} gid {} mtime {} {} bytes sha256 {}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    md.mtime(),
                    bytes.len(),
                    fixtures::sha256_digest(&bytes)
                )
            };
            out.insert(rel, desc);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn siblings_named(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn fetch_rootfs_matches_umoci_and_second_fetch_hits_cache() {
    need("umoci");
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&work.path().join("layout"), "v1");
    server.push(&layout, "library/fixture:v1", false);

    // umoci's view of the same image.
    let bundle = work.path().join("bundle");
    let mut umoci = Command::new("umoci");
    umoci.arg("unpack");
    if !rustix_is_root() {
        umoci.arg("--rootless");
    }
    umoci
        .arg("--image")
        .arg(format!("{}:v1", layout.path.display()))
        .arg(&bundle);
    run_cmd(&mut umoci, TIMEOUT).ok();
    let expected = tree(&bundle.join("rootfs"));

    // Cold fetch.
    let cache = work.path().join("cache");
    let rootfs = work.path().join("out/rootfs");
    let (out, events) = server.fetch(
        "library/fixture:v1",
        &cache,
        &["--rootfs", rootfs.to_str().unwrap()],
    );
    let out = out.ok();
    let done = done_event(&events);
    assert_eq!(done["layers"], 3, "{}", out.stdout);
    assert_eq!(done["cached_layers"], 0);
    let total: u64 = layout.images[0].layers.iter().map(|l| l.size).sum();
    assert_eq!(done["transferred_bytes"], total);
    assert_eq!(done["manifest_digest"], layout.manifest_digest());
    assert!(events.iter().any(|e| e["event"] == "resolved"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "layer_applied")
            .count(),
        3
    );
    let whiteouts: u64 = events
        .iter()
        .filter(|e| e["event"] == "layer_applied")
        .map(|e| e["stats"]["whiteouts"].as_u64().unwrap())
        .sum();
    assert_eq!(whiteouts, 1);

    let got = tree(&rootfs);
    assert_eq!(got, expected, "berth fetch and umoci unpack differ");
    for (path, content) in fixtures::EXPECTED_FILES {
        assert_eq!(
            fs::read_to_string(rootfs.join(path)).unwrap(),
            *content,
            "{path}"
        );
    }
    for path in fixtures::ABSENT_FILES {
        assert!(
            fs::symlink_metadata(rootfs.join(path)).is_err(),
            "{path} must be whited out"
        );
    }
    assert!(
        !got.keys().any(|k| k.contains(".wh.")),
        "whiteout files must not be materialized"
    );
    assert_eq!(
        fs::read_link(rootfs.join(fixtures::SYMLINK.0)).unwrap(),
        Path::new(fixtures::SYMLINK.1)
    );
    assert_eq!(
        fs::read(rootfs.join("usr/share/berth/noise.bin"))
            .unwrap()
            .len(),
        fixtures::NOISE_LEN
    );
    assert!(siblings_named(rootfs.parent().unwrap(), "rootfs.tmp-").is_empty());
    // The cache holds every layer and the config, verified.
    for d in layout
        .layer_digests()
        .iter()
        .chain([&layout.images[0].config.digest])
    {
        let p = cache
            .join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap());
        assert_eq!(fixtures::sha256_digest(&fs::read(&p).unwrap()), *d);
    }

    let gets_after_cold = server.blob_gets();
    assert_eq!(
        gets_after_cold.len(),
        4,
        "3 layers + config: {gets_after_cold:#?}"
    );

    // Unlink the blobs from the repository: a fetch that needed them would now fail.
    delete_blobs(&server, &layout);
    let gets_before_warm = server.blob_gets();
    let requests_before_warm = server.request_lines();

    // Warm fetch into a second directory with the same cache.
    let rootfs2 = work.path().join("out/rootfs2");
    let (out2, events2) = server.fetch(
        "library/fixture:v1",
        &cache,
        &["--rootfs", rootfs2.to_str().unwrap()],
    );
    let out2 = out2.ok();
    let done2 = done_event(&events2);
    assert_eq!(done2["cached_layers"], 3, "{}", out2.stdout);
    assert_eq!(done2["transferred_bytes"], 0);
    assert!(
        events2
            .iter()
            .filter(|e| e["event"] == "layer_downloaded")
            .all(|e| e["cached"] == true && e["transferred"] == 0)
    );
    assert_eq!(
        server.blob_gets(),
        gets_before_warm,
        "the warm fetch must not GET any blob"
    );
    assert!(
        server.request_lines() > requests_before_warm,
        "the manifest is still resolved"
    );
    assert_eq!(tree(&rootfs2), expected);

    // A non-empty destination is refused before anything is transferred.
    let (out3, _) = server.fetch(
        "library/fixture:v1",
        &cache,
        &["--rootfs", rootfs2.to_str().unwrap()],
    );
    assert!(!out3.success());
    assert!(out3.stderr.contains("not empty"), "{}", out3.stderr);
}

/// DELETE each layer and the config from the repository (the registry unlinks them), so
/// any later GET of them fails.
fn delete_blobs(server: &Server, layout: &fixtures::Layout) {
    {
        for d in layout
            .layer_digests()
            .iter()
            .chain([&layout.images[0].config.digest])
        {
            let out = run_cmd(
                Command::new("curl")
                    .args([
                        "-sS",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-X",
                        "DELETE",
                    ])
                    .arg("-u")
                    .arg(common::admin_creds())
                    .arg("--cacert")
                    .arg(server.ca())
                    .arg(format!(
                        "https://{}/v2/library/fixture/blobs/{d}",
                        server.addr
                    )),
                TIMEOUT,
            )
            .ok();
            assert_eq!(out.stdout.trim(), "202", "DELETE blob {d}");
            let out = run_cmd(
                Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                    .arg(server.ca())
                    .arg(format!(
                        "https://{}/v2/library/fixture/blobs/{d}",
                        server.addr
                    )),
                TIMEOUT,
            )
            .ok();
            assert_eq!(
                out.stdout.trim(),
                "404",
                "blob {d} still served after DELETE"
            );
        }
    }
}

#[test]
fn corrupted_blob_aborts_without_partial_rootfs() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&work.path().join("layout"), "v1");
    server.push(&layout, "library/corrupt:v1", false);
    // Flip bytes of the second layer in the registry's storage (same size).
    let digest = &layout.layer_digests()[1];
    let hex = digest.strip_prefix("sha256:").unwrap();
    let blob = server
        .data
        .path()
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(hex);
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    fs::write(&blob, &bytes).unwrap();

    let cache = work.path().join("cache");
    let parent = work.path().join("out");
    let rootfs = parent.join("rootfs");
    let (out, events) = server.fetch(
        "library/corrupt:v1",
        &cache,
        &["--rootfs", rootfs.to_str().unwrap()],
    );
    assert!(
        !out.success(),
        "fetch of a corrupted blob must fail: {}",
        out.stdout
    );
    assert!(out.stderr.contains("digest mismatch"), "{}", out.stderr);
    assert!(out.stderr.contains(digest.as_str()), "{}", out.stderr);
    assert!(events.iter().any(|e| e["event"] == "error"));
    assert!(!rootfs.exists(), "no partial root filesystem");
    if parent.exists() {
        assert!(
            siblings_named(&parent, "rootfs").is_empty(),
            "no DIR.tmp-* left behind"
        );
    }
    // Nothing unverified entered the cache.
    assert!(!cache.join("blobs/sha256").join(hex).exists());
}

#[test]
fn fetch_layout_and_platform_selection() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = fixtures::image_layout(&work.path().join("layout"), "v1");
    server.push(&layout, "library/lay:v1", false);
    let cache = work.path().join("cache");
    let out_layout = work.path().join("oci");
    let (out, _) = server.fetch(
        "library/lay:v1",
        &cache,
        &["--layout", out_layout.to_str().unwrap()],
    );
    out.ok();
    assert_eq!(
        fixtures::blob_digests(&out_layout),
        layout.all_blob_digests()
    );
    let desc = fixtures::find_tagged(&out_layout, "v1");
    assert_eq!(desc.digest, layout.manifest_digest());
    // The layout is readable by umoci.
    need("umoci");
    let bundle = work.path().join("bundle");
    let mut umoci = Command::new("umoci");
    umoci.arg("unpack");
    if !rustix_is_root() {
        umoci.arg("--rootless");
    }
    umoci
        .arg("--image")
        .arg(format!("{}:v1", out_layout.display()))
        .arg(&bundle);
    run_cmd(&mut umoci, TIMEOUT).ok();

    // An index: pick linux/arm64 explicitly.
    let multi = fixtures::multi_arch_layout(&work.path().join("multi"), "m1");
    server.push(&multi, "library/multi:m1", true);
    let rootfs = work.path().join("arm64");
    let (out, events) = server.fetch(
        "library/multi:m1",
        &cache,
        &[
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--platform",
            "linux/arm64",
        ],
    );
    out.ok();
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/berth-arch")).unwrap(),
        "linux/arm64\n"
    );
    let arm = multi
        .images
        .iter()
        .find(|i| i.architecture == "arm64")
        .unwrap();
    assert_eq!(done_event(&events)["manifest_digest"], arm.manifest.digest);
    // Its first two layers have the same content as the single-arch image's (another
    // repository): the cache is content-addressed, so they are not downloaded again.
    assert_eq!(done_event(&events)["cached_layers"], 2);
}

fn rustix_is_root() -> bool {
    // Avoid a dependency for one call: /proc/self/status "Uid:" line, effective uid.
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}
