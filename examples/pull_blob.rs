//! The pull client of `scripts/bench`: one HTTPS GET over HTTP/1.1, body counted and
//! discarded, seconds from connect to last byte printed on stdout.
//!
//!     pull_blob URL CA_PEM EXPECTED_BODY_BYTES
//!
//! Why not curl: on the 2-core bench machine curl (and Python's `ssl`) read TLS records a
//! few KiB per system call and copy every byte twice more, using more CPU per GiB than
//! either server, so both servers measured the client. This reads the socket 1 MiB at a
//! time and decrypts in place with rustls' unbuffered API (aws-lc-rs AES-GCM), so the
//! server is what is measured.
//! The same client is used for Berth and for Distribution.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};

const SOCKET_READ: usize = 1 << 20;

fn main() {
    if let Err(e) = run() {
        eprintln!("pull_blob: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, ca, want] = args.as_slice() else {
        return Err("usage: pull_blob URL CA_PEM EXPECTED_BODY_BYTES".into());
    };
    let want: u64 = want.parse().map_err(|e| format!("body size {want}: {e}"))?;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url}: only https:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("{url}: the URL needs a port"))?;
    let port: u16 = port.parse().map_err(|e| format!("port {port}: {e}"))?;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        let cert = cert.map_err(|e| format!("{ca}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{ca}: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;

    let started = Instant::now();
    let mut sock = TcpStream::connect((host, port)).map_err(|e| format!("{authority}: {e}"))?;
    let mut conn =
        UnbufferedClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let mut response = Response::default();
    let mut incoming = vec![0u8; SOCKET_READ];
    // Unprocessed TLS bytes are incoming[start..used]; the front is only moved (a partial
    // record, at most ~16 KiB) before reading more.
    let (mut start, mut used) = (0, 0);
    let mut outgoing = vec![0u8; 64 * 1024];
    let mut pending = 0;
    let mut sent = false;
    loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut incoming[start..used]);
        let mut need_input = false;
        match state.map_err(|e| format!("TLS: {e}"))? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let record = record.map_err(|e| format!("TLS: {e}"))?;
                    discard += record.discard;
                    response.take(record.payload)?;
                }
            }
            ConnectionState::EncodeTlsData(mut handshake) => {
                pending += handshake
                    .encode(&mut outgoing[pending..])
                    .map_err(|e| format!("TLS: {e}"))?;
            }
            ConnectionState::TransmitTlsData(transmit) => {
                sock.write_all(&outgoing[..pending])
                    .map_err(|e| format!("sending: {e}"))?;
                pending = 0;
                transmit.done();
            }
            ConnectionState::BlockedHandshake => need_input = true,
            ConnectionState::WriteTraffic(mut traffic) => {
                if sent {
                    need_input = true;
                } else {
                    let n = traffic
                        .encrypt(request.as_bytes(), &mut outgoing)
                        .map_err(|e| format!("TLS: {e}"))?;
                    sock.write_all(&outgoing[..n])
                        .map_err(|e| format!("sending the request: {e}"))?;
                    sent = true;
                }
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => break,
            _ => return Err("unexpected TLS state".into()),
        }
        start += discard;
        if need_input {
            incoming.copy_within(start..used, 0);
            used -= start;
            start = 0;
            let n = sock
                .read(&mut incoming[used..])
                .map_err(|e| format!("reading the response: {e}"))?;
            if n == 0 {
                break; // closed without close_notify: the length check below decides
            }
            used += n;
        }
    }
    if response.body != want {
        return Err(format!("got {} body bytes, expected {want}", response.body));
    }
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}

/// The HTTP response as it arrives: headers (status checked), then body bytes counted.
#[derive(Default)]
struct Response {
    head: Vec<u8>,
    in_body: bool,
    body: u64,
}

impl Response {
    fn take(&mut self, payload: &[u8]) -> Result<(), String> {
        if self.in_body {
            self.body += payload.len() as u64;
            return Ok(());
        }
        self.head.extend_from_slice(payload);
        if let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !self.head.starts_with(b"HTTP/1.1 200 ") {
                let status = String::from_utf8_lossy(&self.head[..end]);
                return Err(format!(
                    "unexpected response: {}",
                    status.lines().next().unwrap_or("")
                ));
            }
            self.body = (self.head.len() - end - 4) as u64;
            self.in_body = true;
        } else if self.head.len() > 64 * 1024 {
            return Err("response headers over 64 KiB".into());
        }
        Ok(())
    }
}
