//! Resuming interrupted downloads, through a TCP proxy on 127.0.0.1 that sits between the
//! client and a real `berth serve` and closes connections in the middle of a layer.
//!
//! The proxy forwards bytes untouched (TLS runs end to end between `berth` and the
//! server, whose certificate names 127.0.0.1, so the proxy's port changes nothing) and
//! counts every byte it passes from the server to the client. A connection is cut once it
//! has carried `cut_after` bytes from the server, for the first `cuts` connections that get
//! that far (token, manifest and config responses are far smaller than that).
//!
//! * `berth fetch --rootfs` through a proxy that cuts the layer twice: the fetch resumes
//!   with `Range` (the JSON report says from which byte), the root filesystem is complete
//!   and verified, and the proxy carried well under twice the layer (a restart from zero
//!   would carry at least 1.6 times it).
//! * `berth pull --layout` through a proxy that cuts every connection: it gives up after
//!   its attempts, keeping the bytes it has; the next `berth pull` (no cuts) resumes from
//!   them, so it transfers only the rest of the layer.
//!
//! A digest mismatch (corrupted bytes) is covered by `fetch_rootfs.rs`
//! (`corrupted_blob_aborts_without_partial_rootfs`) and `client_berth.rs`.

mod common;
mod fixtures;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{Berth, CmdOutput, berth_bin, need, run_cmd};
use flate2::{Compression, GzBuilder};
use serde_json::json;
use sha2::{Digest, Sha256};

const TIMEOUT: Duration = Duration::from_secs(180);
/// Size of the incompressible file in the test layer.
const NOISE: usize = 8 << 20;

// ---------------------------------------------------------------------------------------
// The cutting proxy
// ---------------------------------------------------------------------------------------

struct CuttingProxy {
    addr: SocketAddr,
    /// Bytes passed from the server to the client, all connections.
    down: Arc<AtomicU64>,
    /// Connections cut so far.
    cut: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl CuttingProxy {
    fn start(upstream: SocketAddr, cut_after: u64, cuts: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (down, cut, stop) = (down.clone(), cut.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            client.set_nonblocking(false).unwrap();
                            let (down, cut) = (down.clone(), cut.clone());
                            std::thread::spawn(move || {
                                relay(client, upstream, &down, &cut, cut_after, cuts)
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("proxy accept: {e}"),
                    }
                }
            })
        };
        CuttingProxy {
            addr,
            down,
            cut,
            stop,
            accept: Some(accept),
        }
    }

    fn down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    fn cuts(&self) -> u64 {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Relay one connection; cut it after `cut_after` bytes from the server if fewer than
/// `cuts` connections have been cut so far.
fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    down: &AtomicU64,
    cut: &AtomicU64,
    cut_after: u64,
    cuts: u64,
) {
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut s_out);
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let mut client_out = client;
    let mut buf = vec![0u8; 16 * 1024];
    let mut carried = 0u64;
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let cut_here = carried + n as u64 > cut_after
            && cut
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                    (c < cuts).then_some(c + 1)
                })
                .is_ok();
        let send = if cut_here {
            (cut_after - carried) as usize
        } else {
            n
        };
        if client_out.write_all(&buf[..send]).is_err() {
            break;
        }
        carried += send as u64;
        down.fetch_add(send as u64, Ordering::SeqCst);
        if cut_here {
            let _ = client_out.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            break;
        }
    }
    let _ = client_out.shutdown(Shutdown::Both);
    let _ = up.join();
}

// ---------------------------------------------------------------------------------------
// The image: one gzip layer holding 8 MiB of incompressible data
// ---------------------------------------------------------------------------------------

fn pseudo_random(len: usize, seed: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while v.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(i.to_le_bytes());
        v.extend_from_slice(&h.finalize());
        i += 1;
    }
    v.truncate(len);
    v
}

struct BigImage {
    layout: std::path::PathBuf,
    noise: Vec<u8>,
    layer: fixtures::Descriptor,
}

fn big_image(dir: &Path, seed: &str) -> BigImage {
    let noise = pseudo_random(NOISE, seed);
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], kind: tar::EntryType, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, path, data).unwrap();
    };
    add("data/", b"", tar::EntryType::Directory, 0o755);
    add("data/noise.bin", &noise, tar::EntryType::Regular, 0o644);
    add(
        "data/hello.txt",
        b"resumed\n",
        tar::EntryType::Regular,
        0o644,
    );
    let tar = tar.into_inner().unwrap();
    let diff_id = fixtures::sha256_digest(&tar);
    let mut gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();

    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fixtures::write_blob(dir, &gz);
    let layer = fixtures::Descriptor::of(fixtures::OCI_LAYER_GZIP, &gz);
    let config = serde_json::to_vec(&json!({
        "architecture": fixtures::host_arch(),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    fixtures::write_blob(dir, &config);
    let config = fixtures::Descriptor::of(fixtures::OCI_CONFIG, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": fixtures::OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json()],
    }))
    .unwrap();
    fixtures::write_blob(dir, &manifest);
    let m = fixtures::Descriptor::of(fixtures::OCI_MANIFEST, &manifest);
    let mut top = m.to_json();
    top["annotations"] = json!({ fixtures::REF_NAME: "v1" });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]})).unwrap(),
    )
    .unwrap();
    BigImage {
        layout: dir.to_path_buf(),
        noise,
        layer,
    }
}

fn push(reg: &Berth, image: &BigImage, repo_tag: &str) {
    need("skopeo");
    run_cmd(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--dest-creds"])
            .arg(common::admin_creds())
            .arg("--dest-cert-dir")
            .arg(reg.cert_dir())
            .arg(format!("oci:{}:v1", image.layout.display()))
            .arg(format!("docker://{}/{repo_tag}", reg.host())),
        TIMEOUT,
    )
    .ok();
}

fn berth(reg: &Berth, tmp: &Path, args: &[&str]) -> CmdOutput {
    run_cmd(
        Command::new(berth_bin())
            .args(args)
            .arg("--ca-bundle")
            .arg(reg.ca_path())
            .arg("--docker-config")
            .arg(tmp.join("no-docker-config"))
            .env("BERTH_LOG", "warn"),
        TIMEOUT,
    )
}

fn upstream(reg: &Berth) -> SocketAddr {
    reg.host().parse().expect("127.0.0.1:PORT")
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn fetch_resumes_a_layer_cut_twice_mid_transfer() {
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let image = big_image(&tmp.path().join("src"), "fetch-resume");
    push(&reg, &image, "library/big:v1");
    let size = image.layer.size;
    assert!(size > NOISE as u64, "the layer is incompressible: {size}");

    // Cut the first two connections that carry 30% of the layer.
    let cut_after = size * 3 / 10;
    let proxy = CuttingProxy::start(upstream(&reg), cut_after, 2);
    let rootfs = tmp.path().join("rootfs");
    let cache = tmp.path().join("cache");
    let out = berth(
        &reg,
        tmp.path(),
        &[
            "fetch",
            &format!("{}/library/big:v1", proxy.addr),
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
            "--output",
            "json",
        ],
    )
    .ok();
    assert_eq!(proxy.cuts(), 2, "the proxy cut two connections");

    // The root filesystem is complete and correct.
    assert_eq!(
        std::fs::read(rootfs.join("data/noise.bin")).unwrap(),
        image.noise,
        "noise.bin after a resumed download"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("data/hello.txt")).unwrap(),
        "resumed\n"
    );
    // The report says the layer resumed past both cuts (each attempt kept what it got).
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let downloaded = events
        .iter()
        .find(|e| e["event"] == "layer_downloaded")
        .unwrap_or_else(|| panic!("no layer_downloaded event: {}", out.stdout));
    let resumed_from = downloaded["resumed_from"].as_u64().unwrap();
    assert!(
        resumed_from > size / 2 && resumed_from < size,
        "resumed_from {resumed_from} of {size} (two cuts at {cut_after} bytes each): {downloaded}"
    );
    // It resumed rather than restarted: the proxy carried the layer about once.
    let carried = proxy.down();
    eprintln!(
        "fetch through the cutting proxy: layer {size} bytes, carried {carried} bytes \
         ({:.2}x), resumed from byte {resumed_from}",
        carried as f64 / size as f64
    );
    assert!(
        carried < size + size / 5,
        "the proxy carried {carried} bytes for a {size}-byte layer: the download restarted \
         instead of resuming (a restart carries at least {} bytes)",
        size + 2 * cut_after
    );
    // The cache holds the verified blob and no partial file.
    let hex = image.layer.hex();
    assert!(cache.join("blobs/sha256").join(hex).is_file());
    assert!(!cache.join("partial").join(format!("sha256-{hex}")).exists());
}

#[test]
fn pull_keeps_what_it_got_and_the_next_pull_resumes() {
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let image = big_image(&tmp.path().join("src"), "pull-resume");
    push(&reg, &image, "library/big:v1");
    let size = image.layer.size;
    let layout = tmp.path().join("pulled");

    // Every connection is cut after a fifth of the layer: four attempts get 4/5 of it.
    let cut_after = size / 5;
    let proxy = CuttingProxy::start(upstream(&reg), cut_after, u64::MAX);
    let out = berth(
        &reg,
        tmp.path(),
        &[
            "pull",
            &format!("{}/library/big:v1", proxy.addr),
            "--layout",
            layout.to_str().unwrap(),
        ],
    );
    assert!(
        !out.success(),
        "a pull whose every connection is cut succeeded: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("interrupted"),
        "the error says the transfer was interrupted:\n{}",
        out.stderr
    );
    let partial = layout
        .join("blobs/sha256")
        .join(format!(".partial-{}", image.layer.hex()));
    let kept = std::fs::metadata(&partial)
        .unwrap_or_else(|e| panic!("no partial file {} kept: {e}", partial.display()))
        .len();
    assert!(
        kept >= 3 * cut_after && kept < size,
        "kept {kept} bytes of {size} after four cut attempts"
    );
    drop(proxy);

    // The next pull (nothing cut) resumes: it transfers only what was missing.
    let proxy = CuttingProxy::start(upstream(&reg), u64::MAX, 0);
    berth(
        &reg,
        tmp.path(),
        &[
            "pull",
            &format!("{}/library/big:v1", proxy.addr),
            "--layout",
            layout.to_str().unwrap(),
        ],
    )
    .ok();
    let carried = proxy.down();
    eprintln!(
        "second pull: layer {size} bytes, {kept} kept from the first, carried {carried} bytes"
    );
    assert!(
        carried < size - kept + 256 * 1024,
        "the second pull carried {carried} bytes although {kept} of {size} were on disk"
    );
    assert!(!partial.exists(), "the partial file was renamed into place");
    assert_eq!(
        fixtures::blob_digests(&layout),
        fixtures::blob_digests(&image.layout),
        "the pulled layout holds exactly the image's blobs, verified"
    );
}
