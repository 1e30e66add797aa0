//! The connection layer: the accept loop, TLS, and every bound on what a connection may
//! hold (Berth's own loop over tokio-rustls and hyper-util's HTTP/1.1 + HTTP/2 builder,
//! rather than axum-server, so that each bound is one place).
//!
//! - Connections are bounded globally (`limits.max_connections`, never above what the
//!   open-file limit allows) and per client address (`max_connections_per_address`);
//!   one over a bound is closed at accept and the refusal logged once a minute per client.
//!   `EMFILE` at accept pauses the loop instead of spinning.
//! - Time: the TLS handshake (`tls_handshake_timeout_secs`); the request head
//!   (`header_timeout_secs`: hyper's HTTP/1.1 header timeout, which also bounds an idle
//!   keep-alive connection; an HTTP/2 connection with no request in flight must complete
//!   a request head within that time of its last request, so a HEADERS frame trickled byte
//!   by byte, or pings alone, cannot hold it open — h2 itself cuts a head split into too
//!   many `CONTINUATION` frames);
//!   request bodies (`body_idle_timeout_secs`, see [`crate::body`]); a connection without
//!   any byte read or written (`idle_timeout_secs`).
//! - Plain HTTP sent to the HTTPS port (the first byte is an ASCII letter, not a TLS
//!   record) gets a plain-text `400` naming the cause, as Go's and nginx's TLS servers do.
//! - Lingering close: when a connection ends, its write side is shut down and what the
//!   client is still sending is read and discarded for a short while before the socket is
//!   closed, so that a response sent before the request body was read (a 413, a refused
//!   upload) is not destroyed by a TCP reset (nginx's `lingering_close`).
//! - Graceful shutdown: on the signal the loop stops accepting, every connection is told
//!   to finish its in-flight requests, and the server waits up to `drain` for them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tower::Service;

use crate::config::Limits;
use crate::limits::{Refusal, Refusals};

/// How long a closing connection keeps reading what the client still sends: per read,
/// and in total.
const LINGER_IDLE: Duration = Duration::from_secs(2);
const LINGER_MAX: Duration = Duration::from_secs(30);
/// How long an HTTP/2 connection told to go away (`GOAWAY`) may take to close.
const GOAWAY_GRACE: Duration = Duration::from_secs(2);
/// File descriptors kept for everything that is not a connection (database, blobs, logs).
const FD_RESERVE: u64 = 512;

/// The text of the `400` for plain HTTP on the HTTPS port.
pub const PLAIN_HTTP_MESSAGE: &str = "Client sent an HTTP request to an HTTPS server.\n\
This port speaks HTTPS only: use https:// in the URL. For Docker, trust the registry's CA \
(/etc/docker/certs.d/HOST:PORT/ca.crt, printed by `berth cert init`) rather than listing it \
under insecure-registries.\n";

/// Everything the accept loop needs.
pub struct Server {
    pub app: Router,
    /// `None` serves plain HTTP (behind a TLS-terminating proxy).
    pub tls: Option<TlsAcceptor>,
    pub limits: Limits,
    pub refusals: Arc<Refusals>,
    pub builder: auto::Builder<TokioExecutor>,
    /// How long in-flight requests may take to finish after the shutdown signal.
    pub drain: Duration,
}

/// An HTTP/1.1 + HTTP/2 builder with the timer the timeouts need.
pub fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .http2()
        .timer(TokioTimer::new());
    builder
}

impl Server {
    /// Accept and serve until `shutdown` completes, then drain.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let nofile = crate::limits::raise_nofile_limit();
        let max = self
            .limits
            .max_connections
            .min(nofile.saturating_sub(FD_RESERVE).max(16) as usize)
            .max(1);
        if max < self.limits.max_connections {
            tracing::warn!(
                configured = self.limits.max_connections,
                effective = max,
                open_files_limit = nofile,
                "limits.max_connections is above what the open-file limit allows; raise \
                 the hard RLIMIT_NOFILE (LimitNOFILE= in systemd) to use it"
            );
        }
        let shared = Arc::new(Shared {
            app: self.app,
            tls: self.tls,
            builder: self.builder,
            per_address: Mutex::new(HashMap::new()),
            limits: self.limits,
            refusals: self.refusals,
        });
        let threads = ConnThreads::start()?;
        let global = Arc::new(Semaphore::new(max));
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                r = listener.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: wait for connections to end rather than spin.
                    tracing::warn!(error = %e, "accept failed; pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(global_permit) = global.clone().try_acquire_owned() else {
                shared.refusals.note(
                    peer.ip(),
                    Refusal::Connections,
                    &format!(
                        "connection refused: {max} connections are open (limits.max_connections)"
                    ),
                );
                drop(tcp);
                continue;
            };
            let Some(permit) = shared.admit(peer.ip(), global_permit) else {
                shared.refusals.note(
                    peer.ip(),
                    Refusal::ConnectionsPerAddress,
                    &format!(
                        "connection refused: {} connections from this address are open \
                         (limits.max_connections_per_address)",
                        shared.limits.max_connections_per_address
                    ),
                );
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            threads.serve(tcp, peer, permit, stop_rx.clone(), &shared);
        }
        drop(listener);
        let _ = stop_tx.send(true);
        // Every connection holds one permit until it is closed (lingering included).
        let all = u32::try_from(max).unwrap_or(u32::MAX);
        if tokio::time::timeout(self.drain, global.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "some connections were still busy after {} s; closing them",
                self.drain.as_secs()
            );
        }
        // Ends the connection threads (and with their runtimes, what still runs there).
        drop(threads);
        Ok(())
    }
}

/// An accepted connection on its way to a connection thread.
struct Job {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    permit: Permit,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// The threads that serve connections: one per CPU, each running a single-threaded tokio
/// runtime, and each connection served from start to end by one of them (the one with
/// the fewest open connections when it was accepted).
///
/// Why not tokio's work-stealing runtime: it moved a connection's tasks between its worker
/// threads as they woke (socket readiness, the blocking pool's hash-and-write completions,
/// the HTTP/2 stream task woken by its connection task), and every move is a thread wake-up
/// plus the connection's buffers changing CPU cache. An HTTP/2 push of 1 GiB by curl cost
/// 2.02 server CPU-s that way on 2 cores against 1.76 with these threads (12 pushes each);
/// HTTP/1.1 pushes and pulls cost the same. A request that asks PostgreSQL pays a wake-up
/// across threads instead (the pool's sockets are watched by the runtime that opened them):
/// manifest GETs on PostgreSQL ran ~10% slower (BENCHMARKS.md, session 9).
/// Work that is not a connection's (the collector, replication, webhooks) stays on the
/// main runtime; what a request spawns runs on its connection's thread.
/// Blocking threads (hashing, disk writes, memory-map faults) of all connection threads
/// together: tokio's default for one runtime.
const BLOCKING_THREADS: usize = 512;

struct ConnThreads {
    threads: Vec<ConnThread>,
    next: AtomicUsize,
}

struct ConnThread {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections this thread serves now.
    open: Arc<AtomicUsize>,
}

impl ConnThreads {
    fn start() -> io::Result<ConnThreads> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // The process as a whole keeps tokio's default bound on blocking threads.
                .max_blocking_threads((BLOCKING_THREADS / n).max(8))
                .thread_name(format!("berth-conn-{i}-blocking"))
                .build()?;
            let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
            let open = Arc::new(AtomicUsize::new(0));
            let served = open.clone();
            std::thread::Builder::new()
                .name(format!("berth-conn-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            let served = served.clone();
                            // Registered with this thread's I/O driver from here on.
                            match TcpStream::from_std(job.tcp) {
                                Ok(tcp) => {
                                    tokio::spawn(async move {
                                        job.shared
                                            .connection(tcp, job.peer, job.permit, job.stop)
                                            .await;
                                        served.fetch_sub(1, Ordering::AcqRel);
                                    });
                                }
                                Err(e) => {
                                    served.fetch_sub(1, Ordering::AcqRel);
                                    tracing::warn!(client = %job.peer, error = %e,
                                        "cannot take over an accepted connection; closed");
                                }
                            }
                        }
                    });
                })?;
            threads.push(ConnThread { jobs, open });
        }
        Ok(ConnThreads {
            threads,
            next: AtomicUsize::new(0),
        })
    }

    /// Hand an accepted connection to the thread with the fewest open connections (ties
    /// in turn).
    fn serve(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        stop: watch::Receiver<bool>,
        shared: &Arc<Shared>,
    ) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let open: Vec<usize> = self
            .threads
            .iter()
            .map(|t| t.open.load(Ordering::Acquire))
            .collect();
        let chosen = &self.threads[least_loaded(&open, start)];
        // Leaves this runtime's I/O driver; the chosen thread registers it with its own.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "cannot hand over an accepted connection; closed");
                return;
            }
        };
        chosen.open.fetch_add(1, Ordering::AcqRel);
        let job = Job {
            tcp,
            peer,
            permit,
            stop,
            shared: shared.clone(),
        };
        if let Err(mpsc::error::SendError(lost)) = chosen.jobs.send(job) {
            chosen.open.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(client = %lost.peer, "connection thread gone; connection closed");
        }
    }
}

/// The index of the smallest of `open` (connections per thread), the first such counting
/// from `turn % open.len()`, so that ties go to each thread in turn.
fn least_loaded(open: &[usize], turn: usize) -> usize {
    let n = open.len();
    (0..n)
        .map(|k| (turn + k) % n)
        .min_by_key(|&i| open[i])
        .unwrap_or(0)
}

struct Shared {
    app: Router,
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    limits: Limits,
    refusals: Arc<Refusals>,
}

/// A connection's place under both bounds; released on drop.
struct Permit {
    _global: OwnedSemaphorePermit,
    addr: IpAddr,
    shared: Arc<Shared>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut map = self
            .shared
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

impl Shared {
    fn admit(self: &Arc<Self>, addr: IpAddr, global: OwnedSemaphorePermit) -> Option<Permit> {
        let mut map = self
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(addr).or_insert(0);
        if *n >= self.limits.max_connections_per_address.max(1) {
            return None;
        }
        *n += 1;
        Some(Permit {
            _global: global,
            addr,
            shared: self.clone(),
        })
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        mut stop: watch::Receiver<bool>,
    ) {
        let limits = &self.limits;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(acceptor) => {
                let deadline = tokio::time::Instant::now() + limits.tls_handshake_timeout();
                let mut first = [0u8; 1];
                match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
                    Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
                        self.refusals.note(
                            peer.ip(),
                            Refusal::PlainHttp,
                            "plain HTTP request on the HTTPS port: answered 400",
                        );
                        plain_http_reply(tcp, deadline).await;
                        drop(permit);
                        return;
                    }
                    Ok(Ok(1)) => {}
                    Ok(_) => return, // closed or failed before sending anything
                    Err(_) => {
                        self.refusals.note(
                            peer.ip(),
                            Refusal::HandshakeTimeout,
                            "TLS handshake not started in time (limits.tls_handshake_timeout_secs)",
                        );
                        return;
                    }
                }
                match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        self.refusals.note(
                            peer.ip(),
                            Refusal::HandshakeTimeout,
                            "TLS handshake not completed in time (limits.tls_handshake_timeout_secs)",
                        );
                        return;
                    }
                }
            }
        };

        let activity = Arc::new(Activity::new());
        // HTTP/1.1 heads are timed by hyper; HTTP/2 streams by `Requests` below.
        let requests = match &stream {
            Stream::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Some(Arc::new(Requests::new()))
            }
            _ => None,
        };
        let io = ConnIo {
            stream: Some(stream),
            activity: activity.clone(),
            permit: Some(permit),
        };
        let seen = Arc::new(AtomicBool::new(false));
        let service = {
            let seen = seen.clone();
            let app = self.app.clone();
            let idle = limits.body_idle_timeout();
            let requests = requests.clone();
            hyper::service::service_fn(move |req: Request<Incoming>| {
                seen.store(true, Ordering::Relaxed);
                let mut app = app.clone();
                let in_flight = requests.as_ref().map(Requests::start);
                async move {
                    let (mut parts, body) = req.into_parts();
                    parts.extensions.insert(ConnectInfo(peer));
                    let (body, rest) = crate::body::guard(body, idle);
                    let resp = app.call(Request::from_parts(parts, body)).await?;
                    let resp = crate::body::attach(resp, rest, idle);
                    Ok::<_, Infallible>(match in_flight {
                        Some(guard) => resp.map(|body| {
                            Body::new(InFlightBody {
                                body,
                                _guard: guard,
                            })
                        }),
                        None => resp,
                    })
                }
            })
        };
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);

        let header_timeout = limits.header_timeout();
        let idle_timeout = limits.idle_timeout();
        let started = tokio::time::Instant::now();
        let check = tokio::time::sleep(header_timeout.min(idle_timeout));
        tokio::pin!(check);
        let mut stopping = false;
        // Set once the connection was told to go away for want of a request (HTTP/2).
        let mut closing: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        let timed_out = e
                            .downcast_ref::<hyper::Error>()
                            .is_some_and(hyper::Error::is_timeout);
                        // An idle keep-alive connection ends the same way; only a head that
                        // started to arrive and stalled is a refusal.
                        if timed_out && activity.idle() < header_timeout {
                            self.refusals.note(
                                peer.ip(),
                                Refusal::HeaderTimeout,
                                "request head not received in time (limits.header_timeout_secs); connection closed",
                            );
                        } else if !timed_out {
                            tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                        }
                    }
                    break;
                }
                () = &mut check => {
                    let now = tokio::time::Instant::now();
                    if closing.is_some_and(|deadline| now >= deadline) {
                        break;
                    }
                    if let (Some(requests), None) = (&requests, closing) {
                        let quiet = requests.quiet();
                        if requests.in_flight() == 0 && quiet >= header_timeout {
                            // Bytes arrived lately but no request head completed: a trickled
                            // header block or pings only. Otherwise an idle pooled connection.
                            if activity.idle() < header_timeout {
                                self.refusals.note(
                                    peer.ip(),
                                    Refusal::HeaderTimeout,
                                    "no complete HTTP/2 request head in time (limits.header_timeout_secs); connection closed",
                                );
                            }
                            conn.as_mut().graceful_shutdown();
                            let deadline = now + GOAWAY_GRACE;
                            closing = Some(deadline);
                            check.as_mut().reset(deadline);
                            continue;
                        }
                    }
                    let first_due = started + header_timeout;
                    if !seen.load(Ordering::Relaxed) && now >= first_due {
                        self.refusals.note(
                            peer.ip(),
                            Refusal::HeaderTimeout,
                            "no request received in time after connecting (limits.header_timeout_secs); connection closed",
                        );
                        break;
                    }
                    let idle_for = activity.idle();
                    if idle_for >= idle_timeout {
                        self.refusals.note(
                            peer.ip(),
                            Refusal::ConnectionIdle,
                            "no traffic on the connection in time (limits.idle_timeout_secs); connection closed",
                        );
                        break;
                    }
                    let mut next = now + (idle_timeout - idle_for);
                    if !seen.load(Ordering::Relaxed) {
                        next = next.min(first_due);
                    }
                    if let Some(deadline) = closing {
                        next = next.min(deadline);
                    } else if let Some(requests) = &requests {
                        // In flight: look again a header timeout from now (the request may
                        // end at any moment); quiet: when the timeout is due.
                        let wait = if requests.in_flight() > 0 {
                            header_timeout
                        } else {
                            header_timeout.saturating_sub(requests.quiet())
                        };
                        next = next.min(now + wait.max(Duration::from_millis(50)));
                    }
                    check.as_mut().reset(next);
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The requests of one HTTP/2 connection: how many are in flight (handler running or
/// response body still being sent) and when one last started or ended.
struct Requests {
    in_flight: AtomicUsize,
    changed: Activity,
}

impl Requests {
    fn new() -> Requests {
        Requests {
            in_flight: AtomicUsize::new(0),
            changed: Activity::new(),
        }
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.changed.touch();
        InFlight(self.clone())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// How long since a request last started or ended.
    fn quiet(&self) -> Duration {
        self.changed.idle()
    }
}

/// One request in flight; ends when its response body has been sent or dropped.
struct InFlight(Arc<Requests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.changed.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct InFlightBody {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for InFlightBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// When the connection last read or wrote a byte.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Say goodbye at the TLS level (`close_notify`, so that a client holding the
    /// connection in its pool sees it closed rather than reset), then hand back the socket.
    async fn close_tls(self) -> TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(mut tls) => {
                let _ = tokio::time::timeout(LINGER_IDLE, tls.shutdown()).await;
                tls.into_inner().0
            }
        }
    }
}

/// The connection's socket as hyper sees it: records activity, and on drop hands the
/// socket (and the connection's permit) to a lingering close.
struct ConnIo {
    stream: Option<Stream>,
    activity: Arc<Activity>,
    permit: Option<Permit>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if let (Some(stream), Ok(rt)) = (self.stream.take(), tokio::runtime::Handle::try_current())
        {
            let permit = self.permit.take();
            rt.spawn(async move {
                linger(stream.close_tls().await).await;
                drop(permit);
            });
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = match this.stream.as_mut() {
            Some(Stream::Plain(s)) => Pin::new(s).poll_read(cx, buf),
            Some(Stream::Tls(s)) => Pin::new(s.as_mut()).poll_read(cx, buf),
            None => return Poll::Ready(Err(closed())),
        };
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = match this.stream.as_mut() {
            Some(Stream::Plain(s)) => Pin::new(s).poll_write(cx, data),
            Some(Stream::Tls(s)) => Pin::new(s.as_mut()).poll_write(cx, data),
            None => return Poll::Ready(Err(closed())),
        };
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = match this.stream.as_mut() {
            Some(Stream::Plain(s)) => Pin::new(s).poll_write_vectored(cx, bufs),
            Some(Stream::Tls(s)) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            None => return Poll::Ready(Err(closed())),
        };
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Some(Stream::Plain(s)) => s.is_write_vectored(),
            Some(Stream::Tls(s)) => s.is_write_vectored(),
            None => false,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(Stream::Plain(s)) => Pin::new(s).poll_flush(cx),
            Some(Stream::Tls(s)) => Pin::new(s.as_mut()).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.as_mut() {
            Some(Stream::Plain(s)) => Pin::new(s).poll_shutdown(cx),
            Some(Stream::Tls(s)) => Pin::new(s.as_mut()).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Shut down the write side, then read and discard what the client still sends until it
/// closes, goes quiet for `LINGER_IDLE`, or `LINGER_MAX` has passed; then close. Closing
/// a socket with unread data would send a reset that can destroy the response in the
/// client's receive buffer before the client reads it.
async fn linger(mut tcp: TcpStream) {
    let _ = tcp.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER_MAX;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let step = (tokio::time::Instant::now() + LINGER_IDLE).min(deadline);
        match tokio::time::timeout_at(step, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => break,
        }
    }
}

/// Answer plain HTTP on the HTTPS port with a `400` naming the cause (after reading the
/// request head, bounded, so that closing does not reset the reply away).
async fn plain_http_reply(mut tcp: TcpStream, deadline: tokio::time::Instant) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{PLAIN_HTTP_MESSAGE}",
        PLAIN_HTTP_MESSAGE.len()
    );
    if tokio::time::timeout_at(deadline, tcp.write_all(reply.as_bytes()))
        .await
        .is_ok()
    {
        linger(tcp).await;
    }
}

#[cfg(test)]
mod tests {
    use super::least_loaded;

    #[test]
    fn ties_rotate_and_the_least_loaded_wins() {
        assert_eq!(least_loaded(&[0, 0], 0), 0);
        assert_eq!(least_loaded(&[0, 0], 1), 1);
        assert_eq!(least_loaded(&[0, 0, 0], 5), 2);
        assert_eq!(least_loaded(&[3, 1, 2], 0), 1);
        assert_eq!(least_loaded(&[3, 1, 1], 0), 1);
        assert_eq!(least_loaded(&[3, 1, 1], 2), 2);
        assert_eq!(least_loaded(&[7], 9), 0);
    }
}
