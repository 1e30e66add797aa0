//! A tiny HTTPS webhook receiver for the tests (HTTP/1.1 over tokio-rustls, its own CA made
//! by berth-pki, 127.0.0.1, an ephemeral port), stopped on drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a receiver does with requests.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer 500 to the first `n` requests, then 200.
    FailFirst(usize),
    /// Accept the connection and the TLS handshake, then never answer.
    Never,
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// A tiny HTTPS webhook receiver (HTTP/1.1 over tokio-rustls), stopped on drop.
pub struct Receiver {
    pub addr: SocketAddr,
    /// The receiver's CA certificate (PEM), for the webhook's CA bundle.
    pub ca_pem: String,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start(mode: Mode) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = berth_pki::generate_ca("webhook receiver test CA").unwrap();
        let cert = berth_pki::issue_server_cert(&ca, &[], &["127.0.0.1".parse().unwrap()]).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = got.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, log) = (acceptor.clone(), log.clone());
                conns.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    if mode == Mode::Never {
                        // Hold the connection, read nothing, answer nothing.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let mut buf = Vec::new();
                    loop {
                        let Some(req) = read_request(&mut tls, &mut buf).await else {
                            return;
                        };
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(req);
                            log.len()
                        };
                        let fail = matches!(mode, Mode::FailFirst(k) if n <= k);
                        let resp: &[u8] = if fail {
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 7\r\n\r\nnot yet"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if tls.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            ca_pem: ca.cert_pem,
            got,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Wait until `n` requests arrived (at most `within`).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver got {} requests within {within:?}, expected {n}: {:?}",
                got.len(),
                got.iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Read one HTTP/1.1 request (head + Content-Length body); None at EOF.
pub async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<Received> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    buf.drain(..head_end + 4);
    while buf.len() < len {
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Some(Received { headers, body })
}

impl Receiver {
    /// The first JSON body matching `want`, waiting at most `within`.
    pub async fn wait_json(&self, within: Duration, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let got: Vec<Value> = self
                .received()
                .iter()
                .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
                .collect();
            if let Some(v) = got.iter().find(|v| want(v)) {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching webhook within {within:?}; got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
