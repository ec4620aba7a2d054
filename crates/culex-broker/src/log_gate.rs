//! Rate limits for log lines about one client (denials, drops), so that an operator sees who
//! is refused what without a misbehaving client flooding the log.

use std::time::{Duration, Instant};

/// At most one line of a kind per client per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The first line at once, then at most one per [`LOG_EVERY`], each saying how many were left
/// out since the previous one.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogGate {
    next: Option<Instant>,
    skipped: u64,
}

impl LogGate {
    /// `Some(left out since the last line)` when a line may be logged at `now`.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.skipped = self.skipped.saturating_add(1);
            return None;
        }
        self.next = now.checked_add(LOG_EVERY);
        Some(std::mem::take(&mut self.skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_counting_the_rest() {
        let t0 = Instant::now();
        let mut g = LogGate::default();
        assert_eq!(g.allow(t0), Some(0));
        assert_eq!(g.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(g.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(g.allow(t0 + LOG_EVERY), Some(2));
        assert_eq!(g.allow(t0 + LOG_EVERY), None);
    }
}
