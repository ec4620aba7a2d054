//! The broker's side of password checks, shared by every listener.
//!
//! - Hashes are verified on a bounded pool: at most half the cores (at least one) hash at once,
//!   each on a blocking thread, so a storm of logins cannot take every core from the clients
//!   already connected; at most [`WAITING_PER_PERMIT`] logins per permit wait for one, and the
//!   rest are refused at once as Server busy (MQTT 3.1.1: server unavailable).
//! - A recently verified user name and password skips the hash
//!   ([`culex_auth::CredentialCache`]; cleared on every reload).
//! - A source address that keeps failing is refused for a while without a check
//!   ([`culex_auth::FailureLimiter`], `auth_failure_limit`), answered Connection rate exceeded
//!   (3.1.1: server unavailable), logged once per source per minute.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use culex_auth::{AuthResult, Blocked, CredentialCache, FailureLimiter, PasswordFile};
use culex_proto::ReasonCode;
use tokio::sync::Semaphore;

/// Logins that may wait for a hashing thread, per thread.
pub(crate) const WAITING_PER_PERMIT: usize = 64;
/// Credentials remembered at once.
const CACHE_CAPACITY: usize = 4096;
/// How long a verified credential is remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);

/// Pool, cache and limiter; see the module documentation.
#[derive(Debug)]
pub(crate) struct LoginGate {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `None` if the system had no randomness for its key: nothing is cached then.
    cache: Option<CredentialCache>,
    limiter: FailureLimiter,
}

/// Stops counting a waiting login however its wait ends (the client may go away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LoginGate {
    /// A gate whose limiter allows `failure_limit` failures in a row per source (0: no limit).
    pub(crate) fn new(failure_limit: u32) -> LoginGate {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads((cores / 2).max(1), failure_limit)
    }

    /// A gate hashing on at most `threads` threads at once.
    pub(crate) fn with_threads(threads: usize, failure_limit: u32) -> LoginGate {
        let cache = match CredentialCache::new(CACHE_CAPACITY, CACHE_TTL) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("login cache disabled: {e}");
                None
            }
        };
        LoginGate {
            permits: Arc::new(Semaphore::new(threads)),
            waiting: AtomicUsize::new(0),
            max_waiting: threads * WAITING_PER_PERMIT,
            state: Mutex::new(State {
                cache,
                limiter: FailureLimiter::new(failure_limit),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves cache and limiter usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(wait)` while `source` is refused for its failures.
    pub(crate) fn check_source(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        self.state().limiter.check(source, now)
    }

    /// True if these credentials verified against the entry with `fingerprint` recently.
    pub(crate) fn cached(
        &self,
        user: &str,
        password: &[u8],
        fingerprint: u64,
        now: Instant,
    ) -> bool {
        self.state()
            .cache
            .as_mut()
            .is_some_and(|c| c.hit(user, password, fingerprint, now))
    }

    /// A successful check: remembered, and the source's failures forgotten.
    pub(crate) fn succeeded(
        &self,
        source: IpAddr,
        user: &str,
        password: &[u8],
        fingerprint: u64,
        now: Instant,
    ) {
        let mut st = self.state();
        st.limiter.succeeded(source);
        if let Some(c) = st.cache.as_mut() {
            c.insert(user, password, fingerprint, now);
        }
    }

    /// A failed check; `Some` when it blocks the source.
    pub(crate) fn failed(&self, source: IpAddr, now: Instant) -> Option<Blocked> {
        self.state().limiter.failed(source, now)
    }

    /// Forgets every cached credential (the password files were reloaded).
    pub(crate) fn clear_cache(&self) {
        if let Some(c) = self.state().cache.as_mut() {
            c.clear();
        }
    }

    /// Verifies on the pool. `Err(ServerBusy)` when too many logins wait already.
    pub(crate) async fn verify(
        &self,
        passwords: Arc<PasswordFile>,
        user: String,
        password: Vec<u8>,
    ) -> Result<AuthResult, ReasonCode> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(ReasonCode::ServerBusy);
        }
        let waiting = Waiting(&self.waiting);
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ReasonCode::ServerUnavailable)?;
        drop(waiting);
        // The permit goes with the hashing, so a client that leaves meanwhile does not free
        // its thread's place before the hash is done.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            passwords.check(&user, &password)
        })
        .await
        .map_err(|_| ReasonCode::ServerUnavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<PasswordFile> {
        let hash = culex_auth::password_hash(b"pw", culex_auth::HashKind::Sha512).unwrap();
        let text = format!("alice:{hash}\n");
        Arc::new(
            PasswordFile::parse(&text, std::path::Path::new("p"))
                .unwrap()
                .0,
        )
    }

    #[tokio::test]
    async fn verifies_on_the_pool_and_refuses_beyond_the_waiting_limit() {
        let gate = LoginGate::with_threads(1, 0);
        let ok = gate.verify(file(), "alice".into(), b"pw".to_vec()).await;
        assert_eq!(ok, Ok(AuthResult::Ok));
        // Hold the only thread, and fill the waiting places.
        let held = Arc::clone(&gate.permits).acquire_owned().await.unwrap();
        gate.waiting.store(gate.max_waiting, Ordering::Release);
        let busy = gate.verify(file(), "alice".into(), b"pw".to_vec()).await;
        assert_eq!(busy, Err(ReasonCode::ServerBusy));
        assert_eq!(gate.waiting.load(Ordering::Acquire), gate.max_waiting);
        gate.waiting.store(0, Ordering::Release);
        // A waiting login that is given up stops counting.
        let wait = gate.verify(file(), "alice".into(), b"pw".to_vec());
        let gave_up = tokio::time::timeout(Duration::from_millis(50), wait).await;
        assert!(gave_up.is_err(), "waits while the thread is held");
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
        drop(held);
    }

    #[test]
    fn a_success_is_cached_and_clears_the_source() {
        let gate = LoginGate::with_threads(1, 2);
        let (src, now) = (IpAddr::from([127, 0, 0, 1]), Instant::now());
        gate.failed(src, now);
        assert!(gate.failed(src, now).is_some());
        assert!(gate.check_source(src, now).is_err());
        gate.succeeded(src, "alice", b"pw", 9, now);
        assert!(gate.check_source(src, now).is_ok());
        assert!(gate.cached("alice", b"pw", 9, now));
        gate.clear_cache();
        assert!(!gate.cached("alice", b"pw", 9, now));
    }
}
