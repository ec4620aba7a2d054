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
}
