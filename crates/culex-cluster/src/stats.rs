//! What the cluster link counts, read by the broker's metrics, `$SYS` and `/readyz`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
