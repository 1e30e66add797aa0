//! Client certificates (mutual TLS) from Docker's `certs.d/<host:port>/` layout:
//! `client.cert` + `client.key` next to `ca.crt`.
//!
//! Berth itself does not ask for client certificates, so the registry here is a tiny
//! HTTPS server written with rustls inside the test: it *requires* a client certificate
//! signed by its client CA, answers `GET /v2/` and `GET /v2/demo/tags/list`, and records
//! the subject of every client certificate it accepted. Certificates are made with the
//! `openssl` command line (EC P-256): a server CA and a server certificate for 127.0.0.1,
//! a client CA and a client certificate (extendedKeyUsage clientAuth), and a second
//! client certificate from an unrelated CA.
//!
//! * no client certificate: `berth ls` fails and says where Docker expects one;
//! * `client.cert` + `client.key` in `certs.d/127.0.0.1:PORT/`: `berth ls` lists the tags
//!   and the server saw the certificate;
//! * a certificate from another CA: refused, and the error names the file;
//! * `client.cert` without `client.key`: an error naming the missing key file.
//!
//! The server thread stops when the test ends; `openssl` and `berth` run bounded in time.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{CmdOutput, berth_bin, need, run_cmd};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Certificates (openssl CLI)
// ---------------------------------------------------------------------------------------

fn openssl(dir: &Path, args: &[&str]) {
    need("openssl");
    run_cmd(Command::new("openssl").args(args).current_dir(dir), TIMEOUT).ok();
}

/// `NAME.key` + self-signed CA `NAME.crt`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `NAME.key` + `NAME.crt` signed by the CA `ca`, with the given extensions.
fn make_leaf(dir: &Path, name: &str, ca: &str, cn: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// The mutual-TLS registry
// ---------------------------------------------------------------------------------------

struct MtlsRegistry {
    addr: SocketAddr,
    /// Subjects (as DER) of the client certificates of requests that were answered.
    clients: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl MtlsRegistry {
    fn start(server_crt: &Path, server_key: &Path, client_ca: &Path) -> MtlsRegistry {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(client_ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(server_crt)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(server_key).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (clients, stop) = (clients.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let (config, clients) = (config.clone(), clients.clone());
                            std::thread::spawn(move || serve(tcp, config, &clients));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        };
        MtlsRegistry {
            addr,
            clients,
            stop,
            accept: Some(accept),
        }
    }

    fn accepted(&self) -> usize {
        self.clients.lock().unwrap().len()
    }
}

impl Drop for MtlsRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One connection: TLS with a required client certificate, one request, one answer.
fn serve(tcp: TcpStream, config: Arc<rustls::ServerConfig>, clients: &Mutex<Vec<Vec<u8>>>) {
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return, // handshake refused, or the client went away
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    if let Some(certs) = tls.conn.peer_certificates() {
        clients.lock().unwrap().push(certs[0].to_vec());
    }
    let (status, body) = if path == "/v2/" {
        ("200 OK", "{}".to_string())
    } else if path.starts_with("/v2/demo/tags/list") {
        (
            "200 OK",
            r#"{"name":"demo","tags":["v1","v2"]}"#.to_string(),
        )
    } else {
        (
            "404 Not Found",
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}"#
                .to_string(),
        )
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
         Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.write_all(resp.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

fn ls(target: &str, certs_dir: &Path, tmp: &Path) -> CmdOutput {
    let none = tmp.join("none");
    run_cmd(
        Command::new(berth_bin())
            .args(["ls", target, "--certs-dir"])
            .arg(certs_dir)
            .arg("--hosts-dir")
            .arg(&none)
            .arg("--daemon-json")
            .arg(none.join("daemon.json"))
            .arg("--docker-config")
            .arg(&none)
            .env("BERTH_LOG", "warn"),
        TIMEOUT,
    )
}

fn copy(from: &Path, to: PathBuf) {
    std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy to {}: {e}", to.display()));
}

#[test]
fn client_certificate_from_certs_d_for_a_registry_that_requires_one() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_ca(&pki, "server-ca");
    make_leaf(
        &pki,
        "server",
        "server-ca",
        "127.0.0.1",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    make_ca(&pki, "client-ca");
    make_leaf(
        &pki,
        "node",
        "client-ca",
        "berth-node",
        "extendedKeyUsage=clientAuth\n",
    );
    make_ca(&pki, "other-ca");
    make_leaf(
        &pki,
        "stranger",
        "other-ca",
        "berth-stranger",
        "extendedKeyUsage=clientAuth\n",
    );

    let reg = MtlsRegistry::start(
        &pki.join("server.crt"),
        &pki.join("server.key"),
        &pki.join("client-ca.crt"),
    );
    let host = reg.addr.to_string();
    let target = format!("{host}/demo");

    // certs.d with only the registry's CA: the server refuses the handshake.
    let certs_d = tmp.path().join("certs.d");
    let dir = certs_d.join(&host);
    std::fs::create_dir_all(&dir).unwrap();
    copy(&pki.join("server-ca.crt"), dir.join("ca.crt"));
    let out = ls(&target, &certs_d, tmp.path());
    assert!(
        !out.success(),
        "ls without a client certificate: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("requires a client certificate")
            && out.stderr.contains("none is configured")
            && out.stderr.contains(&format!("certs.d/{host}/client.cert")),
        "the error says where the client certificate goes:\n{}",
        out.stderr
    );
    assert_eq!(reg.accepted(), 0);

    // client.cert without client.key: an error naming the missing file.
    copy(&pki.join("node.crt"), dir.join("client.cert"));
    let out = ls(&target, &certs_d, tmp.path());
    assert!(!out.success());
    assert!(
        out.stderr.contains("has no key") && out.stderr.contains("client.key"),
        "{}",
        out.stderr
    );

    // The pair, as Docker lays it out: the tags are listed, the certificate was seen.
    copy(&pki.join("node.key"), dir.join("client.key"));
    let out = ls(&target, &certs_d, tmp.path()).ok();
    let tags: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(tags, ["v1", "v2"], "{}", out.stdout);
    assert!(reg.accepted() >= 1, "the server saw a client certificate");
    let node_der = CertificateDer::from_pem_file(pki.join("node.crt")).unwrap();
    assert!(
        reg.clients
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.as_slice() == node_der.as_ref()),
        "every accepted request presented client.cert"
    );

    // A certificate from a CA the registry does not trust is refused, and named.
    copy(&pki.join("stranger.crt"), dir.join("client.cert"));
    copy(&pki.join("stranger.key"), dir.join("client.key"));
    let before = reg.accepted();
    let out = ls(&target, &certs_d, tmp.path());
    assert!(!out.success(), "a stranger's certificate was accepted");
    assert!(
        out.stderr.contains("refused the client certificate") && out.stderr.contains("client.cert"),
        "{}",
        out.stderr
    );
    assert_eq!(reg.accepted(), before);
}
