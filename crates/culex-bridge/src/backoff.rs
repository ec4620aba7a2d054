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

/// A link up at least this long counts as healthy: when it drops, the first retry is quick.
pub const STABLE_LINK: Duration = Duration::from_secs(30);

/// The first retry after a healthy link dropped comes after 1 to 2 seconds (never above the
/// configured maximum).
const QUICK_RETRY: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(2));

/// Reconnect delays between `min` and `max`: decorrelated jitter (each delay uniform in
/// `[min, 3 × previous]`, capped at `max`, as Mosquitto's bridge does), never giving up; bad
/// credentials wait about `max` (jittered down by up to a fifth, so many bridges refused at once
/// do not return in lock-step). A link that had been up for [`STABLE_LINK`] or more is retried
/// quickly ([`ReconnectPolicy::after_stable_link`]) and the schedule starts over; a link that
/// drops sooner keeps growing the delay, so a remote that accepts and then kicks the bridge is
/// not hammered.
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
            FailureKind::BadCredentials => {
                let lo = self.max.mul_f64(0.8);
                jitter(lo, self.max, rng)
            }
        }
    }

    /// The delay after a link that had been up for [`STABLE_LINK`] dropped: 1 to 2 s (at most
    /// `max`), and the schedule starts over from `min` for the failures that may follow.
    pub fn after_stable_link<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        self.backoff.reset();
        jitter(QUICK_RETRY.0, QUICK_RETRY.1, rng).min(self.max)
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

/// Uniform in `[lo, hi]`, millisecond steps.
fn jitter<R: Rng + ?Sized>(lo: Duration, hi: Duration, rng: &mut R) -> Duration {
    let (lo_ms, hi_ms) = (lo.as_millis(), hi.as_millis());
    let ms = if hi_ms > lo_ms {
        rng.gen_range(lo_ms..=hi_ms)
    } else {
        lo_ms
    };
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
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
    fn bad_credentials_wait_about_the_maximum_with_jitter() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut p = ReconnectPolicy::new(MIN, MAX);
        let delays: Vec<Duration> = (0..20)
            .map(|_| p.next_delay(FailureKind::BadCredentials, &mut rng))
            .collect();
        for d in &delays {
            assert!(*d >= MAX.mul_f64(0.8) && *d <= MAX, "{d:?}");
        }
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "not jittered: {delays:?}");
    }

    #[test]
    fn a_healthy_link_is_retried_within_two_seconds_then_grows() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut p = ReconnectPolicy::new(MIN, MAX);
        for _ in 0..30 {
            p.next_delay(FailureKind::Transient, &mut rng);
        }
        let mut quick = std::collections::HashSet::new();
        for _ in 0..20 {
            let d = p.after_stable_link(&mut rng);
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(2),
                "{d:?}"
            );
            quick.insert(d);
        }
        assert!(quick.len() > 10, "not jittered: {quick:?}");
        // The failures that follow start over from the minimum.
        let d = p.next_delay(FailureKind::Transient, &mut rng);
        assert!(d >= MIN && d <= MIN * 3, "{d:?}");
        // Never above a configured maximum below one second.
        let mut tight =
            ReconnectPolicy::new(Duration::from_millis(100), Duration::from_millis(500));
        assert_eq!(
            tight.after_stable_link(&mut rng),
            Duration::from_millis(500)
        );
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
