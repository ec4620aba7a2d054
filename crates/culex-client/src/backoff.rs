//! Reconnect delays: decorrelated jitter, as in Mosquitto's bridge and the AWS architecture
//! blog's "Exponential Backoff And Jitter".

use std::time::Duration;

use rand::Rng;

/// Reconnect delay generator: each delay is drawn uniformly from `[base, 3 × previous]` and
/// capped at `cap`, so clients that lost the same server spread out instead of retrying in
/// lock-step. [`Backoff::reset`] after a connection succeeded.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    previous: Duration,
}

impl Backoff {
    /// Delays start at `base` and never exceed `cap` (`cap` below `base` is raised to `base`).
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            previous: base,
        }
    }

    /// The next delay, drawn with `rng`.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let lo = self.base.as_millis();
        let hi = self.previous.as_millis().saturating_mul(3).max(lo);
        let ms = if hi > lo { rng.gen_range(lo..=hi) } else { lo };
        let delay = Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)).min(self.cap);
        self.previous = delay;
        delay
    }

    /// The next delay, drawn with the thread-local random generator.
    pub fn next_random(&mut self) -> Duration {
        self.next_delay(&mut rand::thread_rng())
    }

    /// Starts over from `base` (call after a successful connection).
    pub fn reset(&mut self) {
        self.previous = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn delays_stay_within_bounds_and_grow() {
        let mut rng = StdRng::seed_from_u64(7);
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        let mut b = Backoff::new(base, cap);
        let mut prev = base;
        let mut reached_cap = false;
        for _ in 0..200 {
            let d = b.next_delay(&mut rng);
            assert!(d >= base && d <= cap, "{d:?}");
            assert!(d <= prev * 3, "{d:?} after {prev:?}");
            reached_cap |= d == cap;
            prev = d;
        }
        assert!(reached_cap, "200 draws never reached the cap");
        b.reset();
        assert!(b.next_delay(&mut rng) <= base * 3);
    }

    #[test]
    fn degenerate_ranges() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.next_delay(&mut rng), Duration::from_secs(2));
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(z.next_delay(&mut rng), Duration::ZERO);
    }
}
