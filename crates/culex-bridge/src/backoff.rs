//! The reconnect policy: when to try the remote again after a failure.
//!
//! Pure and clock-free: callers pass the random generator, so the schedule is unit-tested with a
//! seeded one; the runtime sleeps for what it returns.

use std::time::Duration;

use culex_client::{Backoff, ClientError};
use rand::Rng;

/// What kind of failure ended a connect attempt or a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Network, TLS, protocol or timeout: retried with growing, jittered delays.
    Transient,
    /// The remote refused our credentials (CONNACK 4 or 5, MQTT 5 `0x86` or `0x87`): retrying
    /// soon cannot help, so the bridge waits the maximum delay every time.
    BadCredentials,
}

impl FailureKind {
    /// Classifies a client error.
    pub fn of(error: &ClientError) -> FailureKind {
        match error.connack_code() {
            Some(4 | 5 | 0x86 | 0x87) => FailureKind::BadCredentials,
            _ => FailureKind::Transient,
        }
    }
}

/// Reconnect delays between `min` and `max`: decorrelated jitter (each delay uniform in
/// `[min, 3 × previous]`, capped at `max`, as Mosquitto's bridge does), reset after a successful
/// CONNACK, never giving up; bad credentials always wait `max`.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    backoff: Backoff,
    max: Duration,
}

impl ReconnectPolicy {
    /// A policy for `restart_timeout min max` (a `max` below `min` is raised to `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        ReconnectPolicy {
            backoff: Backoff::new(min, max),
            max: max.max(min),
        }
    }

    /// The delay before the next attempt after a failure of `kind`, drawn with `rng`.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, kind: FailureKind, rng: &mut R) -> Duration {
        match kind {
            FailureKind::Transient => self.backoff.next_delay(rng),
            FailureKind::BadCredentials => self.max,
        }
    }

    /// Starts over from `min`: call after a CONNACK accepted the connection.
    pub fn reset(&mut self) {
        self.backoff.reset();
    }

    /// New bounds (a reload); the schedule starts again from `min`.
    pub fn set_bounds(&mut self, min: Duration, max: Duration) {
        *self = ReconnectPolicy::new(min, max);
    }
}

/// Remembers the last failure logged, so a failure repeated on every attempt is logged once
/// (and again only when it changes or the link recovered in between).
#[derive(Debug, Default, Clone)]
pub struct ChangeLog {
    last: Option<String>,
}

impl ChangeLog {
    /// True if `what` differs from the last failure seen (so it should be logged loudly).
    pub fn changed(&mut self, what: &str) -> bool {
        if self.last.as_deref() == Some(what) {
            return false;
        }
        self.last = Some(what.to_string());
        true
    }

    /// Forgets the last failure (call after a success).
    pub fn clear(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use culex_proto::{Protocol, ReasonCode};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const MIN: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn transient_failures_grow_within_bounds_with_jitter() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut p = ReconnectPolicy::new(MIN, MAX);
        let delays: Vec<Duration> = (0..50)
            .map(|_| p.next_delay(FailureKind::Transient, &mut rng))
            .collect();
        let mut prev = MIN;
        for d in &delays {
            assert!(*d >= MIN && *d <= MAX, "{d:?}");
            assert!(*d <= prev * 3, "{d:?} after {prev:?}");
            prev = *d;
        }
        assert!(delays.contains(&MAX), "never reached the cap: {delays:?}");
        // Jitter: not one fixed schedule.
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 5, "{delays:?}");
        // The same seed gives the same schedule (the policy itself holds no randomness).
        let mut rng2 = StdRng::seed_from_u64(42);
        let mut p2 = ReconnectPolicy::new(MIN, MAX);
        let again: Vec<Duration> = (0..50)
            .map(|_| p2.next_delay(FailureKind::Transient, &mut rng2))
            .collect();
        assert_eq!(delays, again);
    }

    #[test]
    fn reset_after_success_starts_over() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut p = ReconnectPolicy::new(MIN, MAX);
        for _ in 0..30 {
            p.next_delay(FailureKind::Transient, &mut rng);
        }
        p.reset();
        let d = p.next_delay(FailureKind::Transient, &mut rng);
        assert!(d >= MIN && d <= MIN * 3, "{d:?}");
    }

    #[test]
    fn bad_credentials_wait_the_maximum() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut p = ReconnectPolicy::new(MIN, MAX);
        for _ in 0..5 {
            assert_eq!(p.next_delay(FailureKind::BadCredentials, &mut rng), MAX);
        }
    }

    #[test]
    fn classification() {
        for (reason, protocol, kind) in [
            (
                ReasonCode::BadUserNameOrPassword,
                Protocol::V311,
                FailureKind::BadCredentials,
            ),
            (
                ReasonCode::NotAuthorized,
                Protocol::V311,
                FailureKind::BadCredentials,
            ),
            (
                ReasonCode::BadUserNameOrPassword,
                Protocol::V5,
                FailureKind::BadCredentials,
            ),
            (
                ReasonCode::NotAuthorized,
                Protocol::V5,
                FailureKind::BadCredentials,
            ),
            (
                ReasonCode::ServerUnavailable,
                Protocol::V311,
                FailureKind::Transient,
            ),
            (ReasonCode::ServerBusy, Protocol::V5, FailureKind::Transient),
        ] {
            let e = ClientError::Refused { reason, protocol };
            assert_eq!(FailureKind::of(&e), kind, "{e}");
        }
        assert_eq!(
            FailureKind::of(&ClientError::ConnectionClosed),
            FailureKind::Transient
        );
    }

    #[test]
    fn change_log_logs_once_per_change() {
        let mut l = ChangeLog::default();
        assert!(l.changed("bad password"));
        assert!(!l.changed("bad password"));
        assert!(l.changed("refused"));
        assert!(l.changed("bad password"));
        l.clear();
        assert!(l.changed("bad password"));
    }
}
