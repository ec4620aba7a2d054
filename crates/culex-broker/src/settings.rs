//! Limits and switches the router enforces, derived from the configuration by the binary.

use std::time::Duration;

use culex_proto::QoS;

/// What the router needs to know of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// In-flight window per session for outgoing QoS 1/2 messages (`max_inflight_messages`).
    pub max_inflight_messages: u16,
    /// Bytes of outgoing QoS 1/2 messages in flight per session; 0 = no byte limit
    /// (`max_inflight_bytes`). A message starts while fewer bytes are in flight.
    pub max_inflight_bytes: u64,
    /// Queued messages per session beyond the in-flight window (`max_queued_messages`).
    pub max_queued_messages: usize,
    /// Queued payload bytes per session; 0 = no byte limit (`max_queued_bytes`).
    pub max_queued_bytes: u64,
    /// Whether retained messages are supported (`retain_available`).
    pub retain_available: bool,
    /// Highest QoS the server supports (`max_qos`).
    pub max_qos: QoS,
    /// Deliver at the subscription's QoS instead of the lower of the two (`upgrade_outgoing_qos`).
    pub upgrade_outgoing_qos: bool,
    /// Expiry of persistent sessions of clients that never set one (`persistent_client_expiration`).
    pub persistent_client_expiration: Option<Duration>,
    /// Prefix of assigned client identifiers (`auto_id_prefix`).
    pub auto_id_prefix: String,
    /// QoS 0 messages the outbox of one connection may hold before further ones are dropped.
    pub max_outbox_qos0: usize,
    /// Check a retained message's publisher may still write its topic before sending it to a
    /// new subscriber (`check_retain_source`).
    pub check_retain_source: bool,
    /// Most levels in a subscription's filter (`max_topic_levels`).
    pub max_topic_levels: u16,
    /// Longest subscription filter in bytes (`max_topic_length`).
    pub max_topic_length: u16,
    /// `queue_full_policy block` (true, the default): a QoS 1/2 message that would overflow
    /// an online subscriber's queue is queued and its publisher's acknowledgement held until
    /// the queue drains; `drop` (false): it is dropped (counted), as offline sessions always do.
    pub queue_full_block: bool,
    /// Bytes queued across all sessions before new QoS 1/2 messages are treated as if their
    /// session's queue were full (`memory_limit`); 0 = no global limit.
    pub memory_limit: u64,
    /// How long a subscriber may hold publishers back without progress before it is
    /// disconnected (`slow_client_timeout`); zero never disconnects.
    pub slow_client_timeout: Duration,
    /// This node is part of a cluster: the router keeps track of persistent sessions whose
    /// subscriptions changed and of the age of their oldest pending message, for the cluster
    /// to record ([`Command::ClusterReport`](crate::Command::ClusterReport)).
    pub cluster: bool,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            max_inflight_messages: 20,
            max_inflight_bytes: 0,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            retain_available: true,
            max_qos: QoS::ExactlyOnce,
            upgrade_outgoing_qos: false,
            persistent_client_expiration: None,
            auto_id_prefix: "auto-".to_string(),
            max_outbox_qos0: 1000,
            check_retain_source: true,
            max_topic_levels: 200,
            max_topic_length: u16::MAX,
            queue_full_block: true,
            memory_limit: 0,
            slow_client_timeout: Duration::from_secs(30),
            cluster: false,
        }
    }
}

impl BrokerSettings {
    /// Capacity of a connection's outbox: room for a full in-flight window of the largest
    /// allowed size, the QoS 0 budget and control packets. The router never blocks on it.
    pub fn outbox_capacity(&self, window: u16) -> usize {
        usize::from(window) + self.max_outbox_qos0 + crate::api::CONTROL_RESERVE
    }
}
