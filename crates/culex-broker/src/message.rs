//! The shared application message.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use culex_proto::{Properties, QoS};

/// An application message as routed: one allocation shared by every subscriber (`Arc<Message>`);
/// the payload is `Bytes`, so fan-out copies pointers, never the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// RETAIN flag it was published with.
    pub retain: bool,
    /// MQTT 5 properties forwarded to subscribers (Topic Alias and Subscription Identifiers
    /// removed; Message Expiry Interval rewritten on delivery).
    pub properties: Properties,
    /// When the message expires (from the Message Expiry Interval), if ever.
    pub expires_at: Option<Instant>,
    /// Session of the publisher, for No Local; `None` for wills and internal messages.
    pub origin: Option<u64>,
    /// In a cluster, the identity of the publication this message is a copy of: the same on
    /// every node's copy, so that a session moving between nodes keeps one copy of what
    /// reached both (see `router/migrate.rs`); `None` for messages published on this node
    /// and outside a cluster.
    pub publication: Option<u64>,
}

impl Message {
    /// True if the message has expired at `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// The remaining Message Expiry Interval in whole seconds at `now` (rounded up), or `None`
    /// if the message does not expire.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// Bytes this message counts against a queue's byte limit.
    pub fn size(&self) -> u64 {
        (self.topic.len() + self.payload.len()) as u64
    }
}
