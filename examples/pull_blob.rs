//! The pull client of `scripts/bench`: one HTTPS GET over HTTP/1.1, body counted and
//! discarded, seconds from connect to last byte printed on stdout.
//!
//!     pull_blob URL CA_PEM EXPECTED_BODY_BYTES
//!
//! Why not curl: on the 2-core bench machine curl (and Python's `ssl`) read TLS records a
//! few KiB per system call and use more CPU per GiB than either server, so both servers
//! measure the client. This reads the socket 1 MiB at a time and decrypts with rustls
//! (aws-lc-rs, the same AES-GCM as curl's OpenSSL), so the server is what is measured.
//! The same client is used for Berth and for Distribution.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

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
    let sock = TcpStream::connect((host, port)).map_err(|e| format!("{authority}: {e}"))?;
    let mut writer = sock.try_clone().map_err(|e| e.to_string())?;
    let mut socket = Duplex {
        reader: BufReader::with_capacity(SOCKET_READ, sock),
        writer: &mut writer,
    };
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut socket);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;

    let mut buf = vec![0u8; SOCKET_READ];
    let mut head = Vec::new();
    let mut body: u64 = 0;
    loop {
        let n = match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // The server closing without close_notify after a complete body is fine.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && body == want => break,
            Err(e) => return Err(format!("reading the response: {e}")),
        };
        if body == 0 && !head.ends_with(b"\r\n\r\n") {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                let status = String::from_utf8_lossy(&head[..head.len().min(64)]).to_string();
                if !status.starts_with("HTTP/1.1 200 ") {
                    return Err(format!(
                        "unexpected response: {}",
                        status.lines().next().unwrap_or("")
                    ));
                }
                body = (head.len() - end - 4) as u64;
                head.truncate(end + 4);
            }
        } else {
            body += n as u64;
        }
    }
    if body != want {
        return Err(format!("got {body} body bytes, expected {want}"));
    }
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}

/// A socket read through a large buffer and written directly.
struct Duplex<'a> {
    reader: BufReader<TcpStream>,
    writer: &'a mut TcpStream,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}
