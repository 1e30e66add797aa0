//! Pushes over HTTP/2, the protocol Go's default transport (crane, oras-go and what builds on
//! them), curl and many SDKs negotiate with a TLS registry: a large blob in one PUT and in
//! chunked PATCHes, by curl with ALPN h2, then pulled back over HTTP/2 and verified.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Berth, admin_creds, need, run_cmd};
use sha2::{Digest as _, Sha256};

/// `curl --http2` against the server, trusting its CA, as the administrator; the body goes
/// to `output`. Returns the status and the `Location` header; asserts HTTP/2 was spoken.
fn curl(reg: &Berth, output: &Path, args: &[&str]) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "--cacert"])
        .arg(reg.ca_path())
        .args(["-u", &admin_creds(), "-H", "Expect:", "-o"])
        .arg(output)
        .args(["-w", "%{http_version} %{http_code} %header{location}"])
        .args(args);
    let out = run_cmd(&mut cmd, Duration::from_secs(120)).ok();
    let mut parts = out.stdout.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts.next().unwrap_or_default().to_string();
    let location = parts.next().unwrap_or_default().trim().to_string();
    assert_eq!(version, "2", "curl did not speak HTTP/2: {out:?}");
    (status, location)
}

fn absolute(reg: &Berth, location: &str) -> String {
    if location.starts_with("http") {
        location.to_string()
    } else {
        format!("{}{location}", reg.url())
    }
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

/// Deterministic pseudo-random bytes (a SHA-256 chain), written to `path`.
fn write_blob(path: &Path, len: usize) -> (Vec<u8>, String) {
    let mut data = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest(path.display().to_string().as_bytes()).to_vec();
    while data.len() < len {
        block = Sha256::digest(&block).to_vec();
        data.extend_from_slice(&block);
    }
    data.truncate(len);
    std::fs::write(path, &data).unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    (data, digest)
}

#[test]
fn large_blob_pushed_over_http2_in_one_put_and_in_chunks() {
    need("curl");
    let reg = Berth::start();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let sink = t.join("body");
    let blob = t.join("blob");
    let uploads = format!("{}/v2/library/h2/blobs/uploads/", reg.url());
    let pull_verifies = |digest: &str| {
        let pulled = t.join("pulled");
        let url = format!("{}/v2/library/h2/blobs/{digest}", reg.url());
        let (status, _) = curl(&reg, &pulled, &[&url]);
        assert_eq!(status, "200");
        let got = Sha256::digest(std::fs::read(&pulled).unwrap());
        assert_eq!(format!("sha256:{}", hex::encode(got)), digest);
    };

    // One monolithic PUT of 96 MiB: far beyond any HTTP/2 flow-control window.
    let (_, digest) = write_blob(&blob, 96 << 20);
    let (status, location) = curl(&reg, &sink, &["-X", "POST", &uploads]);
    assert_eq!(status, "202");
    let put = with_digest(&absolute(&reg, &location), &digest);
    let (status, location) = curl(
        &reg,
        &sink,
        &[
            "-T",
            blob.to_str().unwrap(),
            "-H",
            "Content-Type: application/octet-stream",
            &put,
        ],
    );
    assert_eq!(
        status,
        "201",
        "monolithic HTTP/2 PUT: {}",
        std::fs::read_to_string(&sink).unwrap_or_default()
    );
    assert!(location.ends_with(&digest), "{location}");
    pull_verifies(&digest);

    // Chunked: three PATCHes of uneven sizes (one far past the stream window), then PUT.
    let (data, digest) = write_blob(&blob, 40 << 20);
    let (status, location) = curl(&reg, &sink, &["-X", "POST", &uploads]);
    assert_eq!(status, "202");
    let mut upload = absolute(&reg, &location);
    let mut offset = 0;
    for (i, len) in [(1 << 20) + 17, 30 << 20, (9 << 20) - 17]
        .into_iter()
        .enumerate()
    {
        let chunk = t.join(format!("chunk{i}"));
        std::fs::write(&chunk, &data[offset..offset + len]).unwrap();
        let range = format!("Content-Range: {}-{}", offset, offset + len - 1);
        let body = format!("@{}", chunk.display());
        let (status, location) = curl(
            &reg,
            &sink,
            &[
                "-X",
                "PATCH",
                "--data-binary",
                &body,
                "-H",
                "Content-Type: application/octet-stream",
                "-H",
                &range,
                &upload,
            ],
        );
        assert_eq!(
            status,
            "202",
            "PATCH {i}: {}",
            std::fs::read_to_string(&sink).unwrap_or_default()
        );
        upload = absolute(&reg, &location);
        offset += len;
    }
    assert_eq!(offset, data.len());
    let (status, _) = curl(
        &reg,
        &sink,
        &[
            "-X",
            "PUT",
            "-H",
            "Content-Length: 0",
            &with_digest(&upload, &digest),
        ],
    );
    assert_eq!(status, "201", "closing PUT of the chunked upload");
    pull_verifies(&digest);
}
