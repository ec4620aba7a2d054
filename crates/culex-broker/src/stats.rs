//! Counters the router keeps; the metrics endpoint reads them.

/// Counters of what the router did and, above all, dropped. Every drop is counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// PUBLISH packets routed (from clients and wills).
    pub messages_received: u64,
    /// Deliveries handed to connections.
    pub messages_sent: u64,
    /// QoS 1/2 messages dropped because a session's queue was full.
    pub dropped_queue_full: u64,
    /// QoS 0 messages dropped because a connection's outbox was full (slow consumer).
    pub dropped_outbox_full: u64,
    /// Messages dropped because the client's Maximum Packet Size is smaller than the message.
    pub dropped_too_large: u64,
    /// Messages dropped because their Message Expiry Interval elapsed before delivery.
    pub dropped_expired: u64,
    /// QoS 0 messages not queued for an offline persistent session.
    pub dropped_offline_qos0: u64,
    /// Deliveries withheld because the ACL denies the subscriber reading the topic.
    pub dropped_acl_read: u64,
    /// Wills not published because the ACL denies their client writing the will topic.
    pub dropped_acl_will: u64,
    /// Subscriptions refused by the ACL.
    pub subscriptions_denied: u64,
    /// Wills published.
    pub wills_published: u64,
    /// Sessions removed because their expiry interval elapsed.
    pub sessions_expired: u64,
    /// Messages the broker published itself (`$SYS`); not in `messages_received`.
    pub internal_published: u64,
    /// Times an online subscriber's full queue started holding its publishers back
    /// (`queue_full_policy block`).
    pub flow_blocked: u64,
    /// Subscribers disconnected for holding publishers back longer than
    /// `slow_client_timeout`.
    pub slow_client_disconnects: u64,
    /// Sessions handed to another node of the cluster (their client resumed them there).
    pub sessions_moved_out: u64,
    /// Sessions taken over from another node of the cluster.
    pub sessions_moved_in: u64,
    /// Messages read back from the cluster's stream for sessions whose node died, queued.
    pub replayed: u64,
    /// Offline sessions ended because another node of the cluster holds them (they moved on
    /// while this node was down).
    pub sessions_stale_dropped: u64,
    /// Copies of a message that a session moving here got from both nodes (its image and
    /// what it queued during the move, or a late copy the old node passed on), kept once.
    pub move_duplicates: u64,
}

impl RouterStats {
    /// Every message the router dropped, whatever the reason (ACL denials included).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_outbox_full
            + self.dropped_too_large
            + self.dropped_expired
            + self.dropped_offline_qos0
            + self.dropped_acl_read
            + self.dropped_acl_will
    }
}

/// A consistent picture of the router at one moment: its counters and its gauges. The
/// metrics endpoint and the `$SYS` publisher both read one, so their values agree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterSnapshot {
    /// The counters.
    pub stats: RouterStats,
    /// Sessions, connected and offline.
    pub sessions: u64,
    /// Clients connected (sessions with a live connection).
    pub connected: u64,
    /// Persistent sessions whose client is not connected.
    pub offline_sessions: u64,
    /// Subscriptions (shared memberships included).
    pub subscriptions: u64,
    /// Shared-subscription memberships.
    pub shared_subscriptions: u64,
    /// Retained messages.
    pub retained_count: u64,
    /// Payload bytes of the retained messages.
    pub retained_bytes: u64,
    /// QoS 1/2 messages queued behind the in-flight windows, all sessions.
    pub queued: u64,
    /// Bytes (topic + payload) of the queued messages.
    pub queued_bytes: u64,
    /// QoS 1/2 messages in flight (sent, not yet acknowledged), all sessions.
    pub inflight: u64,
}
