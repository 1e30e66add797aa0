//! Failed-login limiting per account and per client address, in memory.
//!
//! Each account name and each client address has a failure counter. Past a number of free
//! failures, every further failure blocks the key for an exponentially growing time:
//!
//! | key | free failures | then blocked for |
//! |---|---|---|
//! | account | 5 | 1 s, 2 s, 4 s, … up to 15 min |
//! | address | 20 | 1 s, 2 s, 4 s, … up to 15 min |
//!
//! Addresses get more free failures because many users can share one (NAT, a CI runner).
//! IPv6 addresses are counted per /64 (one host usually owns a whole /64), and
//! IPv4-mapped IPv6 addresses as IPv4. A counter is forgotten once its key has had no
//! failure for [`LimiterConfig::forget_after`] (1 hour) and is not blocked; a successful
//! login resets the account's counter (not the address's, so one valid account does not
//! let an address keep guessing others).
//!
//! Usage by a login handler:
//!
//! 1. [`LoginLimiter::check`] before looking at the password — if it returns
//!    [`Throttled`], refuse without verifying (HTTP 429 with `Retry-After`, or 401);
//! 2. verify the password;
//! 3. [`LoginLimiter::record_failure`] or [`LoginLimiter::record_success`].
//!
//! Memory is bounded: account names are kept as keyed 64-bit hashes (a long name costs no
//! more than a short one), and at most [`LimiterConfig::max_entries`] counters are held.
//! When full, forgotten entries are purged, then the least recently failed unblocked
//! entries are evicted (blocked ones last). Time comes from a [`Clock`], so tests can use
//! [`ManualClock`].

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A source of monotonic time.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock(Mutex::new(Instant::now()))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += by;
    }
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Backoff for one kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Failures allowed before blocking starts.
    pub free_failures: u32,
    /// Block after the first failure beyond the free ones; doubles with each further one.
    pub base_delay: Duration,
    /// Longest block.
    pub max_delay: Duration,
}

impl Backoff {
    /// How long to block after `failures` failures (zero within the free ones).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures <= self.free_failures {
            return Duration::ZERO;
        }
        let exp = (failures - self.free_failures - 1).min(31);
        self.base_delay
            .checked_mul(1u32 << exp)
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }
}

/// Settings of a [`LoginLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterConfig {
    pub account: Backoff,
    pub address: Backoff,
    /// A key with no failure for this long (and not blocked) starts from zero again.
    pub forget_after: Duration,
    /// Most counters held (accounts and addresses together).
    pub max_entries: usize,
}

impl Default for LimiterConfig {
    /// 5 failures per account / 20 per address, then 1 s doubling up to 15 min; forget after
    /// 1 hour; at most 65 536 counters (a few MiB).
    fn default() -> LimiterConfig {
        LimiterConfig {
            account: Backoff {
                free_failures: 5,
                base_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(15 * 60),
            },
            address: Backoff {
                free_failures: 20,
                base_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(15 * 60),
            },
            forget_after: Duration::from_secs(3600),
            max_entries: 65_536,
        }
    }
}

/// Which limit refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottledBy {
    Account,
    Address,
}

/// A login refused without checking the password, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub by: ThrottledBy,
    pub retry_after: Duration,
}

impl std::fmt::Display for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whom = match self.by {
            ThrottledBy::Account => "for this account",
            ThrottledBy::Address => "from this address",
        };
        write!(
            f,
            "too many failed logins {whom}; try again in {} seconds",
            self.retry_after_secs()
        )
    }
}

impl std::error::Error for Throttled {}

impl Throttled {
    /// Whole seconds, rounded up (for a `Retry-After` header).
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Account(u64),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn blocked_at(&self, now: Instant) -> Option<Duration> {
        self.blocked_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    fn forgotten_at(&self, now: Instant, forget_after: Duration) -> bool {
        self.blocked_at(now).is_none()
            && now.saturating_duration_since(self.last_failure) >= forget_after
    }
}

/// The failed-login limiter (cheap to share: wrap in an `Arc`).
pub struct LoginLimiter {
    config: LimiterConfig,
    clock: Arc<dyn Clock>,
    hasher: RandomState,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl std::fmt::Debug for LoginLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLimiter")
            .field("config", &self.config)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for LoginLimiter {
    fn default() -> LoginLimiter {
        LoginLimiter::new(LimiterConfig::default())
    }
}

impl LoginLimiter {
    pub fn new(config: LimiterConfig) -> LoginLimiter {
        LoginLimiter::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(config: LimiterConfig, clock: Arc<dyn Clock>) -> LoginLimiter {
        LoginLimiter {
            config,
            clock,
            hasher: RandomState::new(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // The map stays consistent even if a holder panicked: every update is one insert.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn account_key(&self, account: &str) -> Key {
        Key::Account(self.hasher.hash_one(account))
    }

    fn backoff(&self, key: &Key) -> &Backoff {
        match key {
            Key::Account(_) => &self.config.account,
            Key::Address(_) => &self.config.address,
        }
    }

    /// Refuse (without checking the password) if the account or the address is blocked.
    /// When both are, the longer wait is reported.
    pub fn check(&self, account: &str, addr: IpAddr) -> Result<(), Throttled> {
        let now = self.clock.now();
        let entries = self.lock();
        let wait = |key: Key| entries.get(&key).and_then(|e| e.blocked_at(now));
        let by_account = wait(self.account_key(account)).map(|d| Throttled {
            by: ThrottledBy::Account,
            retry_after: d,
        });
        let by_address = wait(Key::Address(normalize(addr))).map(|d| Throttled {
            by: ThrottledBy::Address,
            retry_after: d,
        });
        match (by_account, by_address) {
            (Some(a), Some(b)) => Err(if b.retry_after > a.retry_after { b } else { a }),
            (Some(t), None) | (None, Some(t)) => Err(t),
            (None, None) => Ok(()),
        }
    }

    /// Count a failed login. Returns how long the account or address is now blocked for
    /// (the longer of the two), if at all.
    pub fn record_failure(&self, account: &str, addr: IpAddr) -> Option<Duration> {
        let now = self.clock.now();
        let mut entries = self.lock();
        let mut longest = Duration::ZERO;
        for key in [self.account_key(account), Key::Address(normalize(addr))] {
            if !entries.contains_key(&key) && entries.len() >= self.config.max_entries {
                self.make_room(&mut entries, now);
            }
            let forget_after = self.config.forget_after;
            let entry = entries.entry(key).or_insert(Entry {
                failures: 0,
                last_failure: now,
                blocked_until: None,
            });
            if entry.forgotten_at(now, forget_after) {
                entry.failures = 0;
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            let delay = self.backoff(&key).delay(entry.failures);
            if !delay.is_zero() {
                let until = now + delay;
                entry.blocked_until = Some(entry.blocked_until.map_or(until, |u| u.max(until)));
                longest = longest.max(delay);
            }
        }
        (!longest.is_zero()).then_some(longest)
    }

    /// A successful login: forget the account's failures (the address keeps its count).
    pub fn record_success(&self, account: &str, _addr: IpAddr) {
        let key = self.account_key(account);
        self.lock().remove(&key);
    }

    /// The limits this limiter applies (a limiter shared by replicas applies the same).
    pub fn config(&self) -> &LimiterConfig {
        &self.config
    }

    /// Counters currently held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop forgotten entries; if that frees less than 1/8 of the capacity, also evict the
    /// least recently failed entries (unblocked before blocked) down to 7/8 of it, so that
    /// this O(n) pass runs at most once per n/8 insertions.
    fn make_room(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        let forget_after = self.config.forget_after;
        entries.retain(|_, e| !e.forgotten_at(now, forget_after));
        let target = self.config.max_entries - self.config.max_entries / 8;
        let target = target.min(self.config.max_entries.saturating_sub(1));
        if entries.len() <= target {
            return;
        }
        let mut order: Vec<(bool, Instant, Key)> = entries
            .iter()
            .map(|(k, e)| (e.blocked_at(now).is_some(), e.last_failure, *k))
            .collect();
        let excess = entries.len() - target;
        order.select_nth_unstable_by(excess - 1, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (_, _, key) in &order[..excess] {
            entries.remove(key);
        }
    }
}

/// Count IPv6 clients per /64 and IPv4-mapped addresses as IPv4.
/// The address a failure is counted against: IPv4 as is (also when IPv4-mapped), IPv6 by
/// its /64 prefix (one host usually holds a whole /64).
pub fn normalize(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn limiter(config: LimiterConfig) -> (LoginLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (LoginLimiter::with_clock(config, clock.clone()), clock)
    }

    #[test]
    fn backoff_schedule() {
        let b = LimiterConfig::default().account;
        let secs: Vec<u64> = (0..=20).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(
            secs,
            [
                0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900, 900
            ]
        );
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(900));
    }

    #[test]
    fn five_failures_then_exponential_backoff() {
        let (l, clock) = limiter(LimiterConfig::default());
        for i in 1..=5 {
            assert_eq!(l.check("alice", ip(1)), Ok(()));
            assert_eq!(l.record_failure("alice", ip(i)), None);
        }
        // The sixth failure blocks the account for 1 s, from any address.
        assert_eq!(
            l.record_failure("alice", ip(6)),
            Some(Duration::from_secs(1))
        );
        let t = l.check("alice", ip(99)).unwrap_err();
        assert_eq!(t.by, ThrottledBy::Account);
        assert_eq!(t.retry_after, Duration::from_secs(1));
        assert_eq!(t.retry_after_secs(), 1);
        assert_eq!(
            t.to_string(),
            "too many failed logins for this account; try again in 1 seconds"
        );
        // Other accounts are unaffected.
        assert_eq!(l.check("bob", ip(99)), Ok(()));
        clock.advance(Duration::from_millis(400));
        assert_eq!(l.check("alice", ip(1)).unwrap_err().retry_after_secs(), 1);
        clock.advance(Duration::from_millis(600));
        assert_eq!(l.check("alice", ip(1)), Ok(()));
        // Then 2 s, 4 s, …
        assert_eq!(
            l.record_failure("alice", ip(1)),
            Some(Duration::from_secs(2))
        );
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            l.record_failure("alice", ip(1)),
            Some(Duration::from_secs(4))
        );
        for _ in 0..20 {
            clock.advance(Duration::from_secs(900));
            l.record_failure("alice", ip(1));
        }
        assert_eq!(
            l.check("alice", ip(1)).unwrap_err().retry_after,
            Duration::from_secs(900)
        );
    }

    #[test]
    fn success_resets_the_account_but_not_the_address() {
        let (l, _clock) = limiter(LimiterConfig::default());
        for _ in 0..5 {
            l.record_failure("alice", ip(1));
        }
        l.record_success("alice", ip(1));
        // Five more free failures for the account.
        for _ in 0..5 {
            assert_eq!(l.record_failure("alice", ip(1)), None);
        }
        // The address has 10 failures now; 10 more on other accounts reach its 20 free ones.
        for n in 0..10 {
            assert_eq!(l.record_failure(&format!("user{n}"), ip(1)), None);
        }
        assert_eq!(l.record_failure("zed", ip(1)), Some(Duration::from_secs(1)));
        let t = l.check("fresh-account", ip(1)).unwrap_err();
        assert_eq!(t.by, ThrottledBy::Address);
        assert!(t.to_string().contains("from this address"));
        assert_eq!(l.check("fresh-account", ip(2)), Ok(()));
    }

    #[test]
    fn counters_are_forgotten_after_an_hour() {
        let (l, clock) = limiter(LimiterConfig::default());
        for _ in 0..5 {
            l.record_failure("alice", ip(1));
        }
        clock.advance(Duration::from_secs(3600));
        // Starts from zero again: this is failure 1, not 6.
        assert_eq!(l.record_failure("alice", ip(1)), None);
        for _ in 0..4 {
            assert_eq!(l.record_failure("alice", ip(1)), None);
        }
        assert!(l.record_failure("alice", ip(1)).is_some());
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_v4_as_v4() {
        let (l, _clock) = limiter(LimiterConfig::default());
        for i in 0..21u16 {
            let a: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, i, i, i, i));
            l.record_failure(&format!("u{i}"), a);
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert_eq!(
            l.check("new", same_64).unwrap_err().by,
            ThrottledBy::Address
        );
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(l.check("new", other_64), Ok(()));

        for i in 0..21 {
            l.record_failure(&format!("v{i}"), ip(7));
        }
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(l.check("new", mapped).unwrap_err().by, ThrottledBy::Address);
    }

    #[test]
    fn both_blocked_reports_the_longer_wait() {
        let config = LimiterConfig {
            address: Backoff {
                free_failures: 0,
                base_delay: Duration::from_secs(100),
                max_delay: Duration::from_secs(100),
            },
            ..LimiterConfig::default()
        };
        let (l, _clock) = limiter(config);
        for _ in 0..6 {
            l.record_failure("alice", ip(1));
        }
        let t = l.check("alice", ip(1)).unwrap_err();
        assert_eq!(t.by, ThrottledBy::Address);
        assert_eq!(t.retry_after, Duration::from_secs(100));
    }

    #[test]
    fn memory_is_bounded_and_blocked_entries_survive_eviction() {
        let config = LimiterConfig {
            max_entries: 64,
            ..LimiterConfig::default()
        };
        let (l, clock) = limiter(config);
        // Block "victim" for the longest time (15 min).
        for _ in 0..16 {
            l.record_failure("victim", ip(1));
        }
        assert!(l.check("victim", ip(2)).is_err());
        // Flood with distinct accounts and addresses, as an attacker would.
        for i in 0..10_000u32 {
            clock.advance(Duration::from_millis(1));
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i + 1000));
            l.record_failure(&format!("name-{i}-{}", "x".repeat(100)), addr);
            assert!(l.len() <= 64, "{} entries", l.len());
        }
        // The blocked account is still blocked (eviction prefers unblocked entries).
        assert_eq!(
            l.check("victim", ip(2)).unwrap_err().by,
            ThrottledBy::Account
        );
        assert!(!l.is_empty());
    }

    #[test]
    fn forgotten_entries_are_purged_first() {
        let config = LimiterConfig {
            max_entries: 8,
            ..LimiterConfig::default()
        };
        let (l, clock) = limiter(config);
        for i in 0..4 {
            l.record_failure(&format!("old{i}"), ip(i));
        }
        assert_eq!(l.len(), 8);
        clock.advance(Duration::from_secs(3601));
        l.record_failure("new", ip(100));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn tiny_capacity_still_works() {
        let config = LimiterConfig {
            max_entries: 1,
            ..LimiterConfig::default()
        };
        let (l, _clock) = limiter(config);
        for i in 0..10 {
            l.record_failure(&format!("a{i}"), ip(i));
            assert!(l.len() <= 2);
        }
    }

    #[test]
    fn shared_between_threads() {
        let l = Arc::new(LoginLimiter::default());
        std::thread::scope(|s| {
            for t in 0..4 {
                let l = l.clone();
                s.spawn(move || {
                    for _ in 0..100 {
                        l.record_failure("shared", ip(t));
                    }
                });
            }
        });
        assert!(l.check("shared", ip(200)).is_err());
        assert!(format!("{l:?}").contains("LoginLimiter"));
    }
}
