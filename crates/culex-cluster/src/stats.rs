//! What the cluster link counts, read by the broker's metrics, `$SYS` and `/readyz`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters and state of one node's cluster link. All fields are updated by the link and read
/// by anyone.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Whether the link has a NATS connection and its JetStream stream (false until then and
    /// while the backplane is lost).
    pub backplane_connected: AtomicBool,
    /// Messages this node handed to the backplane (QoS 0 sent; QoS 1/2 stored by JetStream).
    pub messages_out: AtomicU64,
    /// Messages from other nodes delivered into this node's router.
    pub messages_in: AtomicU64,
    /// QoS 1/2 messages waiting for JetStream's acknowledgement (or for a retry).
    pub pending_out: AtomicU64,
    /// Publications to the backplane that failed and were retried (QoS 1/2) or dropped (QoS 0).
    pub publish_failures: AtomicU64,
    /// QoS 0 messages dropped because the backplane was down.
    pub dropped_qos0: AtomicU64,
    /// Messages larger than the NATS servers accept (`max_payload`), dropped.
    pub dropped_too_large: AtomicU64,
    /// Copies of QoS 1/2 messages for a node whose stream is missing (removed from the
    /// cluster), dropped.
    pub dropped_no_stream: AtomicU64,
    /// Messages from the backplane that could not be read (counted, acknowledged, skipped).
    pub bad_messages: AtomicU64,
    /// Messages waiting in the link's local session for the backplane.
    pub queued: AtomicU64,
    /// Messages the link's local session dropped (oldest first) when full.
    pub dropped_queue_full: AtomicU64,
    /// Client identifiers this node claimed (a client connected here).
    pub claims_sent: AtomicU64,
    /// Claims from other nodes this node gave way to (its client of the identifier, if any,
    /// taken over).
    pub claims_yielded: AtomicU64,
    /// Times NATS reported this node too slow for a subscription (QoS 0 messages from other
    /// nodes dropped).
    pub slow_consumer: AtomicU64,
    /// Times the NATS connection was (re-)established.
    pub connects: AtomicU64,
    /// Sessions this node took over from another node (their client resumed them here).
    pub sessions_in: AtomicU64,
    /// Sessions this node handed to another node.
    pub sessions_out: AtomicU64,
    /// Sessions that could not be resumed because the node that held them is gone (its
    /// client started a new session).
    pub sessions_lost: AtomicU64,
    /// Session transfers that failed (the client was refused and retries; the session stayed
    /// where it was).
    pub session_transfer_failures: AtomicU64,
    /// Pairs of another node and a shared group with members there, as known here.
    pub shared_memberships: AtomicU64,
    /// Session records (and removals) written to the cluster's bucket.
    pub session_records: AtomicU64,
    /// Messages read back from the stream for a rebuilt session beyond the limit, left out.
    pub dropped_replay: AtomicU64,
    /// Copies for a session that moved away lately, imported here after it left and passed
    /// on to its new node (see [`crate::departures`]).
    pub late_passed_on: AtomicU64,
    /// Such copies that could not be passed on (the new node did not answer, or no longer
    /// has the session).
    pub dropped_late: AtomicU64,
    /// Sessions rebuilt here from the cluster's records after their node died (subscriptions
    /// and the stream's messages since that node's floor).
    pub sessions_recovered: AtomicU64,
    /// Messages published here that no other node had a subscription for (not sent).
    pub unrouted: AtomicU64,
    /// Filters of other nodes' subscriptions known here (routing).
    pub remote_filters: AtomicU64,
    /// Filters of this node written to (or removed from) the cluster's interest bucket.
    pub interest_updates: AtomicU64,
    /// SUBACKs sent before every other live node confirmed it knew of a new filter (the
    /// backplane was down or a node did not answer in time).
    pub interest_sync_timeouts: AtomicU64,
    /// Stream time (Unix ms) before which this node's link has confirmed every stream message
    /// it will ever get: the oldest one it holds unconfirmed, else the newest it received
    /// (later ones come in stream order); 0 until the link runs.
    pub import_floor_ms: AtomicU64,
    /// How long stream messages waited before this node's link received them.
    pub import_lag: Mutex<LagWindow>,
}

/// The longest wait of a stream message before the link received it, per minute, for the
/// last day: a message now queued here was stored in the stream at most that long before it
/// arrived.
#[derive(Debug, Default)]
pub struct LagWindow {
    minutes: VecDeque<(u64, u64)>,
}

/// Minutes kept.
const LAG_MINUTES: usize = 24 * 60;

impl LagWindow {
    /// A message received at `now_ms` had waited `lag_ms`.
    pub fn record(&mut self, now_ms: u64, lag_ms: u64) {
        let minute = now_ms / 60_000;
        match self.minutes.back_mut() {
            Some((m, max)) if *m == minute => *max = (*max).max(lag_ms),
            _ => {
                self.minutes.push_back((minute, lag_ms));
                if self.minutes.len() > LAG_MINUTES {
                    self.minutes.pop_front();
                }
            }
        }
    }

    /// The longest wait of messages received since `since_ms` (whole minutes, rounded out);
    /// with nothing recorded that far back, the longest wait recorded at all.
    pub fn max_since(&self, since_ms: u64) -> u64 {
        let from = (since_ms / 60_000).saturating_sub(1);
        let covered = self.minutes.front().is_some_and(|(m, _)| *m <= from);
        self.minutes
            .iter()
            .filter(|(m, _)| !covered || *m >= from)
            .map(|(_, lag)| *lag)
            .max()
            .unwrap_or(0)
    }
}

impl ClusterStats {
    /// Whether the backplane is usable.
    pub fn connected(&self) -> bool {
        self.backplane_connected.load(Ordering::Relaxed)
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_window_keeps_the_longest_wait_per_minute() {
        let mut w = LagWindow::default();
        assert_eq!(w.max_since(0), 0);
        let t = 100 * 60_000;
        w.record(t, 5);
        w.record(t + 1_000, 900);
        w.record(t + 5 * 60_000, 20);
        assert_eq!(w.max_since(t + 5 * 60_000), 20, "only the last minutes");
        assert_eq!(w.max_since(t), 900);
        assert_eq!(
            w.max_since(t - 3_600_000),
            900,
            "older than recorded: everything"
        );
        for i in 0..(LAG_MINUTES as u64 + 10) {
            w.record(t + i * 60_000, 1);
        }
        assert!(w.minutes.len() <= LAG_MINUTES);
    }
}
