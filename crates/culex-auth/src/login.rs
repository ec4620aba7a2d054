//! What keeps password logins cheap under attack: a cache of recently verified credentials and
//! a per-source failure limiter. Both are plain state driven with the current time (no clock,
//! no threads); the broker keeps them behind a lock and does the hashing elsewhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha512};

use crate::AuthError;

/// Credentials that verified recently, so that a device reconnecting again and again (or a
/// fleet reconnecting after a network blip) does not pay for a slow hash each time.
///
/// Entries are keyed by a keyed hash of user name and password (SHA-512 under a random
/// per-process key, truncated to 32 bytes): the cache never holds a password, and a key cannot
/// be recomputed without the process's secret. An entry is valid only with the password file
/// entry it was verified against (its fingerprint) and only for `ttl`; the broker clears the
/// cache on every reload as well. At most `capacity` entries: when full, expired ones are
/// dropped, then the one closest to expiry.
#[derive(Debug)]
pub struct CredentialCache {
    secret: [u8; 32],
    entries: HashMap<[u8; 32], Cached>,
    capacity: usize,
    ttl: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Cached {
    fingerprint: u64,
    expires: Instant,
}

impl CredentialCache {
    /// An empty cache of at most `capacity` entries, each valid for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Result<CredentialCache, AuthError> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|e| AuthError::Hash(format!("no system randomness: {e}")))?;
        Ok(CredentialCache {
            secret,
            entries: HashMap::new(),
            capacity,
            ttl,
        })
    }

    fn key(&self, username: &str, password: &[u8]) -> [u8; 32] {
        let mut h = Sha512::new();
        h.update(self.secret);
        // The length keeps ("ab", "c") and ("a", "bc") apart.
        h.update((username.len() as u64).to_be_bytes());
        h.update(username.as_bytes());
        h.update(password);
        let digest = h.finalize();
        let mut key = [0u8; 32];
        key.copy_from_slice(&digest[..32]);
        key
    }

    /// True if `username` and `password` verified against the entry with `fingerprint` within
    /// the last `ttl`.
    pub fn hit(&mut self, username: &str, password: &[u8], fingerprint: u64, now: Instant) -> bool {
        let key = self.key(username, password);
        match self.entries.get(&key) {
            Some(c) if c.fingerprint == fingerprint && now < c.expires => true,
            Some(_) => {
                self.entries.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Remembers that `username` and `password` verified against the entry with
    /// `fingerprint`.
    pub fn insert(&mut self, username: &str, password: &[u8], fingerprint: u64, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let key = self.key(username, password);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, c| now < c.expires);
            if self.entries.len() >= self.capacity {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        let expires = now.checked_add(self.ttl).unwrap_or(now);
        self.entries.insert(
            key,
            Cached {
                fingerprint,
                expires,
            },
        );
    }

    /// Forgets everything (on reload).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Failures further apart than this start the count again.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The first block, once a source reaches the limit; each later failure doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest block.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A blocked source is logged at most once per this interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Sources tracked at once; beyond, the stalest are forgotten.
const MAX_SOURCES: usize = 65_536;

/// Slows down password guessing per source address: after `limit` failed logins in a row
/// (each within [`FAILURE_WINDOW`] of the previous), the source is refused without a password
/// check for [`FIRST_BACKOFF`], doubling with every further failure up to [`MAX_BACKOFF`]. A
/// successful login clears the source. `limit` 0 turns the limiter off.
#[derive(Debug)]
pub struct FailureLimiter {
    limit: u32,
    sources: HashMap<IpAddr, Source>,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
    backoff: Duration,
    logged: Option<Instant>,
}

/// A failure that blocks its source (from [`FailureLimiter::failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// Failures in a row from the source.
    pub failures: u32,
    /// How long the source is refused.
    pub backoff: Duration,
    /// Log this one: the first block of the source within [`LOG_INTERVAL`].
    pub log: bool,
}

impl FailureLimiter {
    /// A limiter allowing `limit` failures in a row per source (0: no limit).
    pub fn new(limit: u32) -> FailureLimiter {
        FailureLimiter {
            limit,
            sources: HashMap::new(),
        }
    }

    /// `Err(wait)` while `source` is blocked: refuse it without checking its password.
    pub fn check(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        match self.sources.get(&source).and_then(|s| s.blocked_until) {
            Some(until) if now < until => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records a failed login from `source`; `Some` when it blocks the source.
    pub fn failed(&mut self, source: IpAddr, now: Instant) -> Option<Blocked> {
        if self.limit == 0 {
            return None;
        }
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            self.forget_stale(now);
            if self.sources.len() >= MAX_SOURCES {
                return None;
            }
        }
        let s = self.sources.entry(source).or_insert(Source {
            failures: 0,
            last: now,
            blocked_until: None,
            backoff: Duration::ZERO,
            logged: None,
        });
        if now.saturating_duration_since(s.last) > FAILURE_WINDOW {
            // A fresh start after a quiet minute (the log interval is kept).
            s.failures = 0;
            s.backoff = Duration::ZERO;
            s.blocked_until = None;
        }
        s.last = now;
        s.failures = s.failures.saturating_add(1);
        if s.failures < self.limit {
            return None;
        }
        s.backoff = if s.backoff.is_zero() {
            FIRST_BACKOFF
        } else {
            (s.backoff * 2).min(MAX_BACKOFF)
        };
        s.blocked_until = now.checked_add(s.backoff);
        let log = s
            .logged
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_INTERVAL);
        if log {
            s.logged = Some(now);
        }
        Some(Blocked {
            failures: s.failures,
            backoff: s.backoff,
            log,
        })
    }

    /// Records a successful login from `source`: its failures are forgotten.
    pub fn succeeded(&mut self, source: IpAddr) {
        self.sources.remove(&source);
    }

    /// Number of sources tracked.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    fn forget_stale(&mut self, now: Instant) {
        self.sources.retain(|_, s| {
            s.blocked_until.is_some_and(|t| now < t)
                || now.saturating_duration_since(s.last) <= FAILURE_WINDOW
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn cache_hits_only_the_same_credentials_and_entry_within_ttl() {
        let t0 = Instant::now();
        let mut c = CredentialCache::new(4, Duration::from_secs(10)).unwrap();
        assert!(!c.hit("alice", b"pw", 7, t0));
        c.insert("alice", b"pw", 7, t0);
        assert!(c.hit("alice", b"pw", 7, t0 + Duration::from_secs(9)));
        assert!(!c.hit("alice", b"other", 7, t0), "another password");
        assert!(!c.hit("alic", b"epw", 7, t0), "same bytes, split elsewhere");
        assert!(!c.hit("alice", b"pw", 8, t0), "the entry changed: dropped");
        assert!(!c.hit("alice", b"pw", 7, t0), "and stays dropped");
        c.insert("alice", b"pw", 7, t0);
        assert!(
            !c.hit("alice", b"pw", 7, t0 + Duration::from_secs(10)),
            "expired"
        );
        c.insert("alice", b"pw", 7, t0);
        c.clear();
        assert!(c.is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let t0 = Instant::now();
        let mut c = CredentialCache::new(3, Duration::from_secs(10)).unwrap();
        for (i, user) in ["a", "b", "c", "d"].iter().enumerate() {
            c.insert(user, b"pw", 1, t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(c.len(), 3);
        assert!(!c.hit("a", b"pw", 1, t0), "the one closest to expiry went");
        assert!(c.hit("d", b"pw", 1, t0 + Duration::from_secs(4)));
    }

    #[test]
    fn the_cache_key_is_secret_per_process() {
        let a = CredentialCache::new(1, Duration::from_secs(1)).unwrap();
        let b = CredentialCache::new(1, Duration::from_secs(1)).unwrap();
        assert_ne!(a.key("u", b"p"), b.key("u", b"p"));
    }

    #[test]
    fn a_source_is_blocked_after_the_limit_with_doubling_backoff() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3);
        assert_eq!(l.failed(ip(1), t0), None);
        assert_eq!(l.failed(ip(1), t0), None);
        assert!(l.check(ip(1), t0).is_ok());
        let b = l.failed(ip(1), t0).expect("blocked at the limit");
        assert_eq!((b.failures, b.backoff, b.log), (3, FIRST_BACKOFF, true));
        assert_eq!(l.check(ip(1), t0), Err(FIRST_BACKOFF));
        assert!(l.check(ip(2), t0).is_ok(), "other sources are not affected");
        let t1 = t0 + FIRST_BACKOFF;
        assert!(l.check(ip(1), t1).is_ok(), "the block ends");
        let b = l.failed(ip(1), t1).expect("blocked again");
        assert_eq!((b.backoff, b.log), (FIRST_BACKOFF * 2, false));
        // Doubling stops at the maximum.
        let mut t = t1;
        for _ in 0..10 {
            t += MAX_BACKOFF;
            l.failed(ip(1), t);
        }
        assert_eq!(l.check(ip(1), t), Err(MAX_BACKOFF));
        // A success forgets the source.
        l.succeeded(ip(1));
        assert!(l.check(ip(1), t).is_ok());
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn failures_a_quiet_minute_apart_start_again() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(2);
        l.failed(ip(1), t0);
        let later = t0 + FAILURE_WINDOW + Duration::from_secs(1);
        assert_eq!(l.failed(ip(1), later), None);
        assert!(l.failed(ip(1), later).is_some());
    }

    #[test]
    fn a_zero_limit_never_blocks() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(0);
        for _ in 0..100 {
            assert_eq!(l.failed(ip(1), t0), None);
        }
        assert!(l.check(ip(1), t0).is_ok());
        assert_eq!(l.tracked(), 0);
    }
}
