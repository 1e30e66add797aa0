//! Bounds on what clients may hold, and the record of refusals.
//!
//! - [`Refusals`]: every refusal of a bound (connections, upload sessions, disk space,
//!   timeouts) is counted by kind, and logged at most once per client address and kind
//!   per minute, so that a flood of refused clients cannot flood the log.
//! - [`DiskSpace`]: free space and the configured reserve of the data directory's
//!   filesystem (`statvfs`), for the up-front refusal of new uploads, `/readyz` and the
//!   console.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Too many connections from all clients together.
    Connections,
    /// Too many connections from one address.
    ConnectionsPerAddress,
    /// The TLS handshake did not complete in time.
    HandshakeTimeout,
    /// Plain HTTP reached the HTTPS port.
    PlainHttp,
    /// A request head (or the first HTTP/2 request) did not arrive in time.
    HeaderTimeout,
    /// A request body stalled.
    BodyIdle,
    /// A connection stayed without traffic.
    ConnectionIdle,
    /// Too many open upload sessions.
    UploadSessions,
    /// The disk is full or below the reserve.
    StorageFull,
}

impl Refusal {
    const ALL: [Refusal; 9] = [
        Refusal::Connections,
        Refusal::ConnectionsPerAddress,
        Refusal::HandshakeTimeout,
        Refusal::PlainHttp,
        Refusal::HeaderTimeout,
        Refusal::BodyIdle,
        Refusal::ConnectionIdle,
        Refusal::UploadSessions,
        Refusal::StorageFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::ConnectionsPerAddress => "connections_per_address",
            Refusal::HandshakeTimeout => "tls_handshake_timeout",
            Refusal::PlainHttp => "plain_http",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::BodyIdle => "body_idle_timeout",
            Refusal::ConnectionIdle => "connection_idle_timeout",
            Refusal::UploadSessions => "upload_sessions",
            Refusal::StorageFull => "storage_full",
        }
    }
}

/// How often one client's refusals of one kind are logged.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Entries kept before old ones are dropped (bounds the memory a flood can take).
const MAX_REMEMBERED: usize = 16_384;

/// Counts of refusals by kind, and the last time each (client, kind) was logged.
#[derive(Default)]
pub struct Refusals {
    counts: [AtomicU64; Refusal::ALL.len()],
    logged: Mutex<HashMap<(IpAddr, Refusal), Instant>>,
}

impl Refusals {
    /// Count a refusal, and log it unless this client's refusals of this kind were logged
    /// less than a minute ago.
    pub fn note(&self, client: IpAddr, kind: Refusal, detail: &str) {
        self.counts[kind as usize].fetch_add(1, Ordering::Relaxed);
        if self.should_log(client, kind, Instant::now()) {
            tracing::warn!(
                client = %client,
                refusal = kind.name(),
                total = self.count(kind),
                "{detail} (logged once a minute per client)"
            );
        }
    }

    fn should_log(&self, client: IpAddr, kind: Refusal, now: Instant) -> bool {
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if logged.len() >= MAX_REMEMBERED {
            logged.retain(|_, at| now.duration_since(*at) < LOG_EVERY);
            if logged.len() >= MAX_REMEMBERED {
                // Still full of recent entries: a flood from many addresses; log nothing
                // more this minute (the counters keep counting).
                return false;
            }
        }
        match logged.get(&(client, kind)) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                logged.insert((client, kind), now);
                true
            }
        }
    }

    /// Refusals of `kind` since start.
    pub fn count(&self, kind: Refusal) -> u64 {
        self.counts[kind as usize].load(Ordering::Relaxed)
    }

    /// Every kind with its count (for `/readyz`).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|k| (k.name(), self.count(*k)))
            .collect()
    }
}

/// Free space of the filesystem holding the data directory.
#[derive(Debug, Clone)]
pub struct DiskSpace {
    dir: PathBuf,
    limits: Limits,
}

/// One look at the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceReport {
    /// Size of the filesystem.
    pub total: u64,
    /// Bytes available to the server's user.
    pub free: u64,
    /// The configured reserve on this filesystem.
    pub reserve: u64,
}

impl SpaceReport {
    /// Free space is below the reserve: new uploads are refused.
    pub fn in_reserve(&self) -> bool {
        self.reserve > 0 && self.free < self.reserve
    }
}

impl DiskSpace {
    pub fn new(dir: PathBuf, limits: Limits) -> DiskSpace {
        DiskSpace { dir, limits }
    }

    /// Free space and reserve now (`statvfs`, no I/O to the device).
    pub fn report(&self) -> std::io::Result<SpaceReport> {
        let (total, free) = statvfs(&self.dir)?;
        Ok(SpaceReport {
            total,
            free,
            reserve: self.limits.reserve_bytes(total),
        })
    }
}

/// `(total, available)` bytes of the filesystem holding `dir`.
fn statvfs(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("data directory path contains a NUL byte"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string and `st` a writable statvfs struct.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize;
    Ok((st.f_blocks * frsize, st.f_bavail * frsize))
}

/// Human-readable bytes (`1.5 GiB`), for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Raise the soft limit on open files to the hard limit (as Go's runtime does), so that
/// the connection bound, not `EMFILE`, is what limits clients. Returns the soft limit
/// now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_a_minute_per_client() {
        let r = Refusals::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(r.should_log(a, Refusal::Connections, t0));
        assert!(!r.should_log(a, Refusal::Connections, t0 + Duration::from_secs(59)));
        assert!(r.should_log(a, Refusal::UploadSessions, t0));
        assert!(r.should_log(b, Refusal::Connections, t0));
        assert!(r.should_log(a, Refusal::Connections, t0 + Duration::from_secs(61)));
        r.note(a, Refusal::StorageFull, "test");
        r.note(a, Refusal::StorageFull, "test");
        assert_eq!(r.count(Refusal::StorageFull), 2);
    }

    #[test]
    fn reserve_is_the_smaller_bound() {
        let limits = Limits {
            min_free_bytes: 1 << 30,
            min_free_percent: 1.0,
            ..Limits::default()
        };
        assert_eq!(limits.reserve_bytes(48 << 20), (48 << 20) / 100);
        assert_eq!(limits.reserve_bytes(10 << 40), 1 << 30);
        let off = Limits {
            min_free_bytes: 0,
            ..Limits::default()
        };
        assert_eq!(off.reserve_bytes(10 << 40), 0);
    }

    #[test]
    fn disk_space_reports_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let report = DiskSpace::new(dir.path().to_owned(), Limits::default())
            .report()
            .unwrap();
        assert!(report.total > 0 && report.free <= report.total);
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
