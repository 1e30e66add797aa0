//! Slow and abusive clients (issue 12) and refusals that must reach the client (issue 14,
//! items 3 and 7), against the real `berth serve` binary over TLS with small bounds
//! (2 s timeouts) so the suite stays fast.
//!
//! Raw sockets play the misbehaving clients: a slow-header client (slowloris), a stalled
//! upload, a slow but steady upload, plain HTTP on the HTTPS port, and clients that send a
//! whole oversized body before reading the answer (over HTTP/1.1 and HTTP/2). `soak` runs
//! many slow and stalled connections next to normal pushes and pulls; its scale comes from
//! `BERTH_SOAK_*` variables (scripts/soak-slow-clients runs the large version).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ADMIN_PASSWORD, ADMIN_USER, Berth, basic_auth};

/// Small bounds: every timeout 2 s, three upload sessions per principal, 4 MiB blobs.
const CONFIG: &str = r#"
[limits]
tls_handshake_timeout_secs = 2
header_timeout_secs = 2
body_idle_timeout_secs = 2
idle_timeout_secs = 5
max_upload_sessions = 3
max_blob_bytes = 4194304
max_connections_per_address = 400
"#;

fn start() -> Berth {
    start_with_config(CONFIG)
}

fn start_with_config(config: &str) -> Berth {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, config).unwrap();
    let reg = Berth::start_with(&["--config", path.to_str().unwrap()]);
    // Keep the config file's directory alive as long as the server.
    std::mem::forget(dir);
    reg
}

fn auth() -> String {
    basic_auth(ADMIN_USER, ADMIN_PASSWORD)
}

fn digest_of(bytes: &[u8]) -> String {
    common::sha256_digest(bytes)
}

fn ca_roots(reg: &Berth) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&reg.ca_pem()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

fn tls_config(reg: &Berth, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let roots = ca_roots(reg);
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A blocking TLS connection speaking HTTP/1.1, with a read timeout.
fn tls_connect(reg: &Berth) -> Tls {
    let config = tls_config(reg, &[b"http/1.1"]);
    let name = rustls::pki_types::ServerName::IpAddress(reg.addr.ip().into());
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(reg.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // Finish the handshake now, so timings below measure HTTP only.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// The server chooses AES-128-GCM (as Go's TLS stack does) even when the client lists
/// AES-256-GCM first, and still serves a client that offers only other suites.
#[test]
fn server_prefers_aes_128_gcm() {
    use rustls::CipherSuite;
    let reg = start();
    let tls = tls_connect(&reg);
    assert_eq!(
        tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite() == CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca_roots(&reg))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::IpAddress(reg.addr.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(reg.addr).unwrap());
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    assert_eq!(
        tls.conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
    );
}

/// Read until the server closes (EOF, reset or TLS error); returns what arrived.
fn read_until_closed(stream: &mut impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the server kept the connection open for 20 s");
            }
            Err(_) => break,
        }
    }
    out
}

/// Read one HTTP/1.1 response with a Content-Length body; returns (status, head, body).
fn read_response(stream: &mut impl Read) -> (u16, String, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).expect("read response head");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while data.len() < head_end + len {
        let n = stream.read(&mut buf).expect("read response body");
        assert!(n > 0, "connection closed inside the response body");
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + len]).to_string();
    (status, head, body)
}

async fn start_upload(reg: &Berth, client: &reqwest::Client, repo: &str) -> reqwest::Response {
    client
        .post(format!("{}/v2/{repo}/blobs/uploads/", reg.url()))
        .send()
        .await
        .unwrap()
}

async fn new_session(reg: &Berth, client: &reqwest::Client, repo: &str) -> String {
    let resp = start_upload(reg, client, repo).await;
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    resp.headers()["location"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn slow_header_client_is_closed_after_the_header_timeout() {
    let reg = start();
    let addr = reg.addr;
    let mut tls = tls_connect(&reg);
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    tls.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    let started = Instant::now();
    // One header byte every 300 ms: each is progress, none completes the head.
    let closed_after = loop {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a slow-header client was still connected after 15 s ({addr})"
        );
        if tls.write_all(b"a").and_then(|()| tls.flush()).is_err() {
            break started.elapsed();
        }
        let mut buf = [0u8; 64];
        match tls.read(&mut buf) {
            Ok(_) => break started.elapsed(),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break started.elapsed(),
        }
    };
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(8),
        "closed after {closed_after:?}; the header timeout is 2 s"
    );

    // A TCP connection that never starts TLS is closed after the handshake timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    read_until_closed(&mut idle);
    assert!(started.elapsed() < Duration::from_secs(8));

    // The server still serves.
    let resp = reg
        .client()
        .get(format!("{}/v2/", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// One HTTP/2 frame: (type, flags, stream id, payload).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// What a raw HTTP/2 client saw of the server.
#[derive(Debug, PartialEq)]
enum H2Event {
    /// A HEADERS frame on this stream.
    Headers(u32),
    /// A GOAWAY frame with this error code.
    GoAway(u32),
    Closed,
}

/// Read frames until a HEADERS frame, a GOAWAY or the end of the connection, answering
/// SETTINGS and PING as a client must; `None` when nothing arrived before the read timeout.
fn h2_next_event(tls: &mut Tls, buf: &mut Vec<u8>) -> Option<H2Event> {
    loop {
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                1 => return Some(H2Event::Headers(stream)),
                4 if flags & 1 == 0 => {
                    let _ = tls.write_all(&h2_frame(4, 1, 0, &[]));
                }
                6 if flags & 1 == 0 => {
                    let _ = tls.write_all(&h2_frame(6, 1, 0, &payload));
                }
                7 if payload.len() >= 8 => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    return Some(H2Event::GoAway(code));
                }
                _ => {}
            }
        }
        let mut chunk = [0u8; 16384];
        match tls.read(&mut chunk) {
            Ok(0) => return Some(H2Event::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return None;
            }
            Err(_) => return Some(H2Event::Closed),
        }
    }
}

#[tokio::test]
async fn http2_header_block_trickled_after_a_request_is_closed_after_the_header_timeout() {
    let reg = start();
    let config = tls_config(&reg, &[b"h2"]);
    let name = rustls::pki_types::ServerName::IpAddress(reg.addr.ip().into());
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = TcpStream::connect(reg.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));

    // A complete request first (GET /v2/, HPACK literals without indexing), so the
    // connection is past its first-request deadline.
    let authority = reg.addr.to_string();
    let mut head = vec![0x82, 0x87, 0x04, 4];
    head.extend_from_slice(b"/v2/");
    head.extend_from_slice(&[0x01, authority.len() as u8]);
    head.extend_from_slice(authority.as_bytes());
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    tls.write_all(&h2_frame(4, 0, 0, &[])).unwrap();
    tls.write_all(&h2_frame(1, 0x5, 1, &head)).unwrap();
    let mut buf = Vec::new();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no response to the first request"
        );
        match h2_next_event(&mut tls, &mut buf) {
            Some(H2Event::Headers(1)) => break,
            Some(H2Event::Headers(_)) | None => {}
            Some(other) => panic!("the connection ended before the first response: {other:?}"),
        }
    }

    // Then a request head that never ends: a HEADERS frame announcing 4,000 bytes, sent
    // one byte every 300 ms (each is progress, none completes the frame). A head split
    // into many CONTINUATION frames is already cut by h2's CONTINUATION-flood bound.
    let mut announced = h2_frame(1, 0x5, 3, &[]);
    announced[..3].copy_from_slice(&[0, 0x0f, 0xa0]);
    tls.write_all(&announced).unwrap();
    let started = Instant::now();
    let ended = loop {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a trickled HTTP/2 header block kept the connection open for 15 s"
        );
        if tls.write_all(&[0x84]).and_then(|()| tls.flush()).is_err() {
            break H2Event::Closed;
        }
        match h2_next_event(&mut tls, &mut buf) {
            Some(H2Event::Headers(_)) => panic!("the never-ending header block got a response"),
            Some(event) => break event,
            None => {}
        }
    };
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(8),
        "{ended:?} after {closed_after:?}; the header timeout is 2 s"
    );

    // The server still serves HTTP/2 clients.
    let certs = reqwest::Certificate::from_pem_bundle(&reg.ca_pem()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only(certs)
        .build()
        .unwrap();
    let resp = client
        .get(format!("{}/v2/", reg.url()))
        .header("authorization", auth())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn stalled_upload_is_closed_then_resumed_from_the_reported_offset() {
    let reg = start();
    let client = reg.client();
    let location = new_session(&reg, &client, "library/stalled").await;
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();

    let mut tls = tls_connect(&reg);
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n",
        auth()
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(&blob[..1000]).unwrap();
    tls.flush().unwrap();
    let started = Instant::now();
    let (status, _, body) = read_response(&mut tls);
    let waited = started.elapsed();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("body_idle_timeout_secs"), "{body}");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "answered after {waited:?}; the body idle timeout is 2 s"
    );
    read_until_closed(&mut tls);

    // The registry reports what it kept; a normal client resumes from there (a new
    // client: the first one's pooled connection has reached the 2 s keep-alive bound).
    let client = reg.client();
    let url = format!("{}{location}", reg.url());
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["range"], "0-999");
    let resp = client
        .patch(&url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("1000-{}", blob.len() - 1))
        .body(blob[1000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let digest = digest_of(&blob);
    let resp = client
        .put(format!("{url}?digest={digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let pulled = client
        .get(format!("{}/v2/library/stalled/blobs/{digest}", reg.url()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(pulled.as_ref(), &blob[..]);
    let ready: serde_json::Value = client
        .get(format!("{}/readyz", reg.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["refusals"]["body_idle_timeout"], 1, "{ready}");
}

#[tokio::test]
async fn slow_steady_upload_is_never_cut() {
    let reg = start();
    let client = reg.client();
    let location = new_session(&reg, &client, "library/trickle").await;
    // 10 chunks of 32 KiB, one every 700 ms: 7 s in all, longer than every timeout (2 s
    // body idle, 5 s connection idle), but never idle for 2 s.
    let chunks: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 32 * 1024]).collect();
    let all: Vec<u8> = chunks.concat();
    let stream = futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        it.next().map(|c| (Ok::<_, std::io::Error>(c), it))
    });
    let started = Instant::now();
    let resp = client
        .patch(format!("{}{location}", reg.url()))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() > Duration::from_secs(6));
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    assert_eq!(
        resp.headers()["range"].to_str().unwrap(),
        format!("0-{}", all.len() - 1)
    );
    let digest = digest_of(&all);
    let resp = client
        .put(format!("{}{location}?digest={digest}", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn upload_session_limit_refuses_then_accepts_after_finish_or_cancel() {
    let reg = start();
    let client = reg.client();
    // Twelve at once from one account: the count and the insert are one step, so exactly
    // three (the limit) are admitted.
    let racing = futures_util::future::join_all(
        (0..12).map(|_| start_upload(&reg, &client, "library/many")),
    )
    .await;
    let statuses: Vec<u16> = racing.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        (
            statuses.iter().filter(|s| **s == 202).count(),
            statuses.iter().filter(|s| **s == 429).count()
        ),
        (3, 9),
        "{statuses:?}"
    );
    let mut sessions: Vec<String> = racing
        .iter()
        .filter(|r| r.status() == 202)
        .map(|r| r.headers()["location"].to_str().unwrap().to_string())
        .collect();
    let refused = start_upload(&reg, &client, "library/many").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "60");
    let body = refused.text().await.unwrap();
    assert!(body.contains("TOOMANYREQUESTS"), "{body}");
    assert!(body.contains("max_upload_sessions"), "{body}");
    assert!(body.contains("user:admin"), "{body}");

    // Cancel one: a new session is accepted.
    let resp = client
        .delete(format!("{}{}", reg.url(), sessions.pop().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    sessions.push(new_session(&reg, &client, "library/many").await);
    assert_eq!(
        start_upload(&reg, &client, "library/many").await.status(),
        429
    );

    // Finish one: a new session is accepted.
    let blob = b"finished".to_vec();
    let resp = client
        .put(format!(
            "{}{}?digest={}",
            reg.url(),
            sessions.pop().unwrap(),
            digest_of(&blob)
        ))
        .header("content-type", "application/octet-stream")
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    new_session(&reg, &client, "library/many").await;
}

#[tokio::test]
async fn plain_http_on_the_https_port_gets_a_400_naming_the_cause() {
    let reg = start();
    let mut tcp = TcpStream::connect(reg.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.write_all(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
        .unwrap();
    let reply = String::from_utf8(read_until_closed(&mut tcp)).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.contains("HTTP request to an HTTPS server"), "{reply}");

    // As curl shows it.
    common::need("curl");
    let out = common::run_cmd(
        std::process::Command::new("curl").args(["-sS", "-i", &format!("http://{}/v2/", reg.addr)]),
        Duration::from_secs(30),
    );
    assert!(out.stdout.starts_with("HTTP/1.1 400"), "{out:?}");
    assert!(out.stdout.contains("use https://"), "{out:?}");
}

/// A 5 MiB manifest and a blob over `max_blob_bytes`, each sent whole before the answer
/// is read: the refusal arrives as a complete response over HTTP/1.1.
#[tokio::test]
async fn early_refusals_reach_http1_clients_that_send_the_whole_body() {
    let reg = start();
    let manifest = vec![b' '; 5 << 20];
    let mut tls = tls_connect(&reg);
    let head = format!(
        "PUT /v2/library/big/manifests/v1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
        auth(),
        manifest.len()
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(&manifest)
        .expect("the server reset the connection while the body was sent");
    tls.flush().unwrap();
    let (status, _, body) = read_response(&mut tls);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("SIZE_INVALID"), "{body}");

    let blob = vec![7u8; 24 << 20];
    let mut tls = tls_connect(&reg);
    let head = format!(
        "POST /v2/library/big/blobs/uploads/?digest={} HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        digest_of(&blob),
        auth(),
        blob.len()
    );
    tls.write_all(head.as_bytes()).unwrap();
    tls.write_all(&blob)
        .expect("the server reset the connection while the body was sent");
    tls.flush().unwrap();
    let (status, _, body) = read_response(&mut tls);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("SIZE_INVALID"), "{body}");
}

/// The same refusals over HTTP/2 (negotiated by ALPN): complete responses, no stream reset.
#[tokio::test]
async fn early_refusals_reach_http2_clients() {
    let reg = start();
    let certs = reqwest::Certificate::from_pem_bundle(&reg.ca_pem()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only(certs)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let resp = client
        .put(format!("{}/v2/library/big/manifests/v1", reg.url()))
        .header("authorization", auth())
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(vec![b' '; 5 << 20])
        .send()
        .await
        .expect("the refusal of a 5 MiB manifest arrives over HTTP/2");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 413);
    let body = resp.text().await.unwrap();
    assert!(body.contains("SIZE_INVALID"), "{body}");

    let blob = vec![7u8; 24 << 20];
    let resp = client
        .post(format!(
            "{}/v2/library/big/blobs/uploads/?digest={}",
            reg.url(),
            digest_of(&blob)
        ))
        .header("authorization", auth())
        .header("content-type", "application/octet-stream")
        .body(blob)
        .send()
        .await
        .expect("the refusal of an oversized blob arrives over HTTP/2");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 400);
    let body = resp.text().await.unwrap();
    assert!(body.contains("SIZE_INVALID"), "{body}");
    // The connection is still usable.
    let resp = client
        .get(format!("{}/v2/", reg.url()))
        .header("authorization", auth())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn readyz_shows_database_and_free_space() {
    let reg = start();
    let resp = reg
        .anon_client()
        .get(format!("{}/readyz", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["checks"]["database"]["ok"], true, "{v}");
    assert!(
        v["checks"]["storage"]["free_bytes"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(v["checks"]["storage"]["reserve_bytes"].is_u64(), "{v}");
}

// ---------------------------------------------------------------------------------------
// Soak: many slow and stalled connections next to normal pushes and pulls.
// ---------------------------------------------------------------------------------------

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Open file descriptors and resident memory (KiB) of a process.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// A connection from `source` (a loopback address of its own, as a separate client).
async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// One misbehaving client, repeated until `until`: even ids send a request head one byte
/// at a time over TLS (slowloris), odd ids start an upload and stall.
async fn misbehave(
    id: usize,
    source: IpAddr,
    to: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    until: Instant,
) {
    use tokio::io::AsyncWriteExt;
    while Instant::now() < until {
        let Ok(tcp) = connect_from(source, to).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp)).await
        else {
            continue;
        };
        let head: &[u8] = if id.is_multiple_of(2) {
            b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: "
        } else {
            b"PATCH /v2/library/soak/blobs/uploads/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
        };
        if s.write_all(head).await.is_err() {
            continue;
        }
        // Then a byte every 1.5 s until the server gives up on us.
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            if s.write_all(b"a").await.is_err() || s.flush().await.is_err() {
                break;
            }
        }
    }
}

/// An OCI layout with one small image tagged `x`; returns its `oci:` reference.
fn small_oci_layout(dir: &std::path::Path) -> String {
    common::one_layer_oci_layout(dir, "x", &vec![42u8; 256 * 1024])
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

async fn manifest_gets(reg: &Berth, client: &reqwest::Client, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let resp = client
            .get(format!("{}/v2/library/soak/manifests/v1", reg.url()))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .expect("manifest GET during the soak");
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        out.push(started.elapsed());
    }
    out
}

/// Push a small image (config + layer + manifest) as `tag`; every step must succeed.
async fn push_image(reg: &Berth, client: &reqwest::Client, tag: &str) {
    let layer: Vec<u8> = format!("layer {tag}").repeat(4096).into_bytes();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","tag":"{tag}"}}"#).into_bytes();
    for blob in [&layer, &config] {
        let resp = client
            .post(format!(
                "{}/v2/library/soak/blobs/uploads/?digest={}",
                reg.url(),
                digest_of(blob)
            ))
            .header("content-type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .await
            .expect("blob push during the soak");
        assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(&layer), "size": layer.len()}],
    });
    let resp = client
        .put(format!("{}/v2/library/soak/manifests/{tag}", reg.url()))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .expect("manifest push during the soak");
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
}

/// `BERTH_SOAK_CONNECTIONS` misbehaving connections (default 300) from
/// `BERTH_SOAK_ADDRESSES` loopback addresses (default 4) for `BERTH_SOAK_SECS` (default
/// 12) while a normal client pushes and pulls from 127.0.0.1: every normal operation
/// succeeds, the server's descriptors stay below the bound, and the manifest GET p99
/// stays within 2x of the quiet value (plus 20 ms of scheduling noise on a shared CI
/// machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let conns = env_usize("BERTH_SOAK_CONNECTIONS", 300);
    let addresses = env_usize("BERTH_SOAK_ADDRESSES", 4).max(1);
    let secs = env_usize("BERTH_SOAK_SECS", 12) as u64;
    let per_address = conns.div_ceil(addresses) + 16;
    let reg = start_with_config(&format!(
        "[limits]\ntls_handshake_timeout_secs = 2\nheader_timeout_secs = 4\n\
         body_idle_timeout_secs = 4\nidle_timeout_secs = 10\n\
         max_connections_per_address = {per_address}\n"
    ));
    let client = reg.client();
    push_image(&reg, &client, "v1").await;
    manifest_gets(&reg, &client, 50).await; // warm up
    let quiet = p99(manifest_gets(&reg, &client, 400).await);
    let (fds_quiet, rss_quiet) = fds_and_rss(reg.pid());

    let until = Instant::now() + Duration::from_secs(secs);
    let tls = tokio_rustls::TlsConnector::from(tls_config(&reg, &[b"http/1.1"]));
    let mut tasks = Vec::new();
    for id in 0..conns {
        let source = IpAddr::from([127, 0, 0, 2 + (id % addresses) as u8]);
        tasks.push(tokio::spawn(misbehave(
            id,
            source,
            reg.addr,
            tls.clone(),
            until,
        )));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // skopeo pushes and pulls next to the flood, from its own thread.
    let skopeo = {
        let layout = tempfile::tempdir().unwrap();
        let src = small_oci_layout(layout.path());
        let cert_dir = reg.cert_dir();
        let host = reg.host();
        std::thread::spawn(move || {
            let mut done = 0;
            while Instant::now() < until || done == 0 {
                let target = format!("docker://{host}/library/soak-skopeo:s{done}");
                let pulled = layout.path().join(format!("pulled-{done}"));
                for (from, to) in [
                    (src.clone(), target.clone()),
                    (target.clone(), format!("oci:{}:x", pulled.display())),
                ] {
                    let out = common::run_cmd(
                        std::process::Command::new("skopeo").args([
                            "--insecure-policy",
                            "copy",
                            "--src-creds",
                            &common::admin_creds(),
                            "--dest-creds",
                            &common::admin_creds(),
                            "--src-cert-dir",
                            cert_dir.to_str().unwrap(),
                            "--dest-cert-dir",
                            cert_dir.to_str().unwrap(),
                            &from,
                            &to,
                        ]),
                        Duration::from_secs(120),
                    );
                    assert!(out.success(), "skopeo during the soak: {out:?}");
                }
                done += 1;
            }
            done
        })
    };
    let mut busy = Vec::new();
    let mut max_fds = 0;
    let mut max_rss = 0;
    let mut round = 0;
    while Instant::now() < until {
        push_image(&reg, &client, &format!("r{round}")).await;
        busy.extend(manifest_gets(&reg, &client, 100).await);
        let (fds, rss) = fds_and_rss(reg.pid());
        max_fds = max_fds.max(fds);
        max_rss = max_rss.max(rss);
        round += 1;
    }
    for t in tasks {
        t.abort();
    }
    let skopeo_rounds = tokio::task::spawn_blocking(move || skopeo.join())
        .await
        .unwrap()
        .expect("skopeo pushes and pulls succeed during the soak");
    let busy = p99(busy);
    println!(
        "soak: {conns} slow/stalled connections from {addresses} addresses for {secs} s; \
         manifest GET p99 quiet {quiet:?}, under load {busy:?}; server fds {fds_quiet} -> \
         max {max_fds}; RSS {rss_quiet} KiB -> max {max_rss} KiB; {round} API pushes, \
         {skopeo_rounds} skopeo push+pull rounds"
    );
    assert!(round > 0);
    assert!(
        max_fds < fds_quiet + conns + 64,
        "descriptors grew beyond the connections: {max_fds}"
    );
    assert!(
        busy <= quiet * 2 + Duration::from_millis(20),
        "manifest GET p99 {busy:?} under load vs {quiet:?} quiet"
    );
    // The server is still healthy after the flood.
    let resp = client
        .get(format!("{}/readyz", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
