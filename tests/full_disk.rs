//! A full disk (issue 13): the registry's data directory on a small tmpfs that the test
//! mounts itself (the suite runs as root) and unmounts on drop, pass or fail.
//!
//! Shown here: an oversized push gets a clear 507 through curl and skopeo and leaves no
//! file in `uploads/`, and a small push right after succeeds; a chunked upload that runs
//! out of space keeps what was acknowledged and can be resumed once space is freed, or
//! cancelled; the free-space reserve refuses new uploads up front while a tag move (the
//! metadata database) still works; recovery needs no restart; a restart removes planted
//! orphan upload files; everything pushed still pulls and verifies.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Berth, need, run_cmd};

const MIB: usize = 1 << 20;

/// A tmpfs of `mib` MiB mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: usize) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = run_cmd(
            Command::new("mount").args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m"),
                "tmpfs",
                dir.path().to_str().unwrap(),
            ]),
            Duration::from_secs(30),
        );
        assert!(
            out.success(),
            "mounting a tmpfs needs root (the test suite runs as root): {out:?}"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Start Berth with its data directory on `fs` and a 4 MiB free-space reserve.
fn start_on(fs: &Tmpfs) -> Berth {
    let data = tempfile::tempdir_in(fs.path()).unwrap();
    start_in(data)
}

fn start_in(data: tempfile::TempDir) -> Berth {
    let config = data.path().join("berth.toml");
    std::fs::write(
        &config,
        "[limits]\nmin_free_bytes = 4194304\nmin_free_percent = 100.0\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    Berth::start_in(data, &["--config", &config])
}

fn digest_of(bytes: &[u8]) -> String {
    common::sha256_digest(bytes)
}

/// Incompressible bytes (xorshift), different per `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn uploads(reg: &Berth) -> Vec<String> {
    std::fs::read_dir(reg.data.path().join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Fill `fs` with a ballast file until `free` bytes are left; returns its path.
fn ballast(fs: &Tmpfs, name: &str, len: usize) -> PathBuf {
    let path = fs.path().join(name);
    std::fs::write(&path, noise(len, 7)).unwrap();
    path
}

async fn push_blob(reg: &Berth, repo: &str, blob: &[u8]) -> reqwest::Response {
    reg.client()
        .post(format!(
            "{}/v2/{repo}/blobs/uploads/?digest={}",
            reg.url(),
            digest_of(blob)
        ))
        .header("content-type", "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .unwrap()
}

/// Push a small image (config + layer) as `repo:tag`; returns the manifest bytes.
async fn push_small_image(reg: &Berth, repo: &str, tag: &str, seed: u64) -> Vec<u8> {
    let layer = noise(64 * 1024, seed);
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    for blob in [&layer, &config] {
        let resp = push_blob(reg, repo, blob).await;
        assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    }
    let manifest = manifest_json(&config, &layer);
    put_manifest(reg, repo, tag, &manifest).await;
    manifest
}

fn manifest_json(config: &[u8], layer: &[u8]) -> Vec<u8> {
    common::image_manifest_json(config, layer)
}

async fn put_manifest(reg: &Berth, repo: &str, tag: &str, manifest: &[u8]) {
    let resp = reg
        .client()
        .put(format!("{}/v2/{repo}/manifests/{tag}", reg.url()))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
}

/// Every tag of `repo` pulls, and every blob it names hashes to its digest.
async fn verify_all(reg: &Berth, repo: &str, tags: &[&str]) {
    let client = reg.client();
    for tag in tags {
        let resp = client
            .get(format!("{}/v2/{repo}/manifests/{tag}", reg.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{repo}:{tag}");
        let manifest: serde_json::Value = resp.json().await.unwrap();
        let mut blobs = vec![manifest["config"].clone()];
        blobs.extend(manifest["layers"].as_array().unwrap().iter().cloned());
        for desc in blobs {
            let digest = desc["digest"].as_str().unwrap();
            let bytes = client
                .get(format!("{}/v2/{repo}/blobs/{digest}", reg.url()))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(digest_of(&bytes), digest, "{repo}:{tag} blob");
        }
    }
}

/// Write an OCI layout with one image whose layer is `layer`.
fn oci_layout(dir: &Path, layer: &[u8]) -> String {
    common::one_layer_oci_layout(dir, "big", layer)
}

#[tokio::test]
async fn oversized_push_is_refused_clearly_and_a_small_push_follows() {
    need("curl");
    need("skopeo");
    let fs = Tmpfs::mount(48);
    let reg = start_on(&fs);
    let work = tempfile::tempdir().unwrap();

    // curl, monolithic upload of 60 MiB: refused up front (Content-Length > free space).
    let big = noise(60 * MIB, 1);
    let big_path = work.path().join("big.bin");
    std::fs::write(&big_path, &big).unwrap();
    for http in ["--http1.1", "--http2"] {
        let out = run_cmd(
            Command::new("curl").args([
                http,
                "-sS",
                "-i",
                "--cacert",
                reg.ca_path().to_str().unwrap(),
                "-u",
                &common::admin_creds(),
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                &format!("@{}", big_path.display()),
                &format!(
                    "{}/v2/library/big/blobs/uploads/?digest={}",
                    reg.url(),
                    digest_of(&big)
                ),
            ]),
            Duration::from_secs(120),
        );
        let status = if http == "--http1.1" {
            "HTTP/1.1 507"
        } else {
            "HTTP/2 507"
        };
        assert!(out.stdout.starts_with(status), "{out:?}");
        assert!(out.stdout.contains("storage is full"), "{out:?}");
        assert!(out.stdout.contains("needs 60.0 MiB"), "{out:?}");
    }
    assert!(uploads(&reg).is_empty(), "{:?}", uploads(&reg));

    // skopeo streams the layer in one PATCH without a length: it runs out of space
    // mid-way, and the upload is released at once.
    let layout = oci_layout(&work.path().join("layout"), &big);
    let cert_dir = reg.cert_dir();
    let out = run_cmd(
        Command::new("skopeo").args([
            "--insecure-policy",
            "copy",
            "--retry-times",
            "0",
            "--dest-creds",
            &common::admin_creds(),
            "--dest-cert-dir",
            cert_dir.to_str().unwrap(),
            &layout,
            &format!("docker://{}/library/big:v1", reg.host()),
        ]),
        Duration::from_secs(180),
    );
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("507")
            && (out.stderr.contains("Insufficient Storage")
                || out.stderr.contains("storage is full")),
        "skopeo should name the cause: {out:?}"
    );
    assert!(uploads(&reg).is_empty(), "{:?}", uploads(&reg));

    // A small push right after succeeds, without a restart.
    push_small_image(&reg, "library/small", "v1", 2).await;
    verify_all(&reg, "library/small", &["v1"]).await;

    // /readyz shows the free space and the reserve.
    let v: serde_json::Value = reg
        .client()
        .get(format!("{}/readyz", reg.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["checks"]["storage"]["reserve_bytes"],
        4 * MIB as u64,
        "{v}"
    );
    assert!(v["refusals"]["storage_full"].as_u64().unwrap() >= 2, "{v}");
}

#[tokio::test]
async fn chunked_upload_out_of_space_is_resumable_or_cancellable_and_the_reserve_holds() {
    let fs = Tmpfs::mount(48);
    let reg = start_on(&fs);
    let client = reg.client();
    push_small_image(&reg, "library/app", "v1", 3).await;
    let filler = ballast(&fs, "ballast-1", 20 * MIB);

    // Chunk 1 (10 MiB) fits; chunk 2 (20 MiB) does not.
    let blob = noise(30 * MIB, 4);
    let resp = client
        .post(format!("{}/v2/library/app/blobs/uploads/", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let url = format!(
        "{}{}",
        reg.url(),
        resp.headers()["location"].to_str().unwrap()
    );
    let patch = |range: (usize, usize)| {
        client
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{}-{}", range.0, range.1 - 1))
            // A stream: no Content-Length, so the space runs out mid-write.
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                blob[range.0..range.1]
                    .chunks(MIB)
                    .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                    .collect::<Vec<_>>(),
            )))
            .send()
    };
    assert_eq!(patch((0, 10 * MIB)).await.unwrap().status(), 202);
    let resp = patch((10 * MIB, 30 * MIB)).await.unwrap();
    assert_eq!(resp.status(), 507);
    assert_eq!(resp.headers()["retry-after"], "60");
    let text = resp.text().await.unwrap();
    assert!(text.contains("storage is full"), "{text}");
    assert!(text.contains("resume it at offset 10485760"), "{text}");
    // Only the acknowledged bytes are kept, and the session is reachable.
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["range"], format!("0-{}", 10 * MIB - 1));
    let files = uploads(&reg);
    assert_eq!(files.len(), 1);
    let len = std::fs::metadata(reg.data.path().join("uploads").join(&files[0]))
        .unwrap()
        .len();
    assert_eq!(len, 10 * MIB as u64);

    // Below the reserve, new uploads are refused up front, while the metadata database
    // stays writable (a tag move) and reads keep working.
    let free_now = fs_free(fs.path());
    let _filler2 = ballast(&fs, "ballast-2", (free_now - 2 * MIB as u64) as usize);
    let resp = client
        .post(format!("{}/v2/library/app/blobs/uploads/", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 507);
    let text = resp.text().await.unwrap();
    assert!(text.contains("kept in reserve"), "{text}");
    let manifest = client
        .get(format!("{}/v2/library/app/manifests/v1", reg.url()))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    put_manifest(&reg, "library/app", "moved", &manifest).await;
    verify_all(&reg, "library/app", &["v1", "moved"]).await;

    // Space is freed: the upload resumes from the reported offset and completes, and a
    // new upload is accepted, with no restart.
    std::fs::remove_file(fs.path().join("ballast-2")).unwrap();
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(patch((10 * MIB, 30 * MIB)).await.unwrap().status(), 202);
    let resp = client
        .put(format!("{url}?digest={}", digest_of(&blob)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    push_small_image(&reg, "library/app", "v2", 5).await;

    // Another chunked upload runs out of space and is cancelled: nothing is left.
    let _filler3 = ballast(&fs, "ballast-3", 4 * MIB);
    let resp = client
        .post(format!("{}/v2/library/app/blobs/uploads/", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    let url = format!(
        "{}{}",
        reg.url(),
        resp.headers()["location"].to_str().unwrap()
    );
    let chunk = |from: usize, to: usize| {
        client
            .patch(&url)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{from}-{}", to - 1))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                blob[from..to]
                    .chunks(MIB)
                    .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                    .collect::<Vec<_>>(),
            )))
            .send()
    };
    assert_eq!(chunk(0, MIB).await.unwrap().status(), 202);
    assert_eq!(chunk(MIB, 30 * MIB).await.unwrap().status(), 507);
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 204);
    assert!(uploads(&reg).is_empty(), "{:?}", uploads(&reg));

    verify_all(&reg, "library/app", &["v1", "moved", "v2"]).await;
    let resp = client
        .get(format!(
            "{}/v2/library/app/blobs/{}",
            reg.url(),
            digest_of(&blob)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(digest_of(&resp.bytes().await.unwrap()), digest_of(&blob));
}

fn fs_free(path: &Path) -> u64 {
    let out = run_cmd(
        Command::new("df").args(["-B1", "--output=avail", path.to_str().unwrap()]),
        Duration::from_secs(10),
    );
    out.stdout.lines().nth(1).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn restart_removes_orphan_upload_files_and_keeps_live_sessions() {
    let reg = start_in(tempfile::tempdir().unwrap());
    let client = reg.client();
    let resp = client
        .post(format!("{}/v2/library/live/blobs/uploads/", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = client
        .patch(format!("{}{location}", reg.url()))
        .header("content-type", "application/octet-stream")
        .body(vec![1u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let data = reg.kill();
    // Orphans: files no session owns (a crash between the file and its database row).
    let orphans = [
        "0b5c2a36-7d4e-4f7a-9c1e-2f1d3a4b5c6d",
        "1c6d3b47-8e5f-4a8b-8d2f-3a2e4b5c6d7e",
    ];
    for id in orphans {
        std::fs::write(data.path().join("uploads").join(id), vec![0u8; 4096]).unwrap();
    }
    let reg = start_in(data);
    let left = uploads(&reg);
    for id in orphans {
        assert!(
            !left.iter().any(|f| f == id),
            "orphan {id} survived: {left:?}"
        );
    }
    assert_eq!(left.len(), 1, "{left:?}");
    // The live session survived, with its bytes.
    let resp = reg
        .client()
        .get(format!("{}{location}", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["range"], "0-999");
}
