//! What the router asks a persistent store to keep, and what a store hands back at start-up.
//!
//! Plain data only: the router emits [`StoreOp`]s through a [`StoreSink`] (implemented by the
//! `culex-store` crate's writer handle, or by a test double) and is seeded at start-up from a
//! [`Recovered`]. Nothing here does IO or reads the clock.
//!
//! Durability protocol: [`StoreSink::submit`] returns a ticket; tickets increase in submission
//! order, and once the store reports a ticket as committed, that op and every op submitted
//! before it are durable (as far as the store's sync policy promises). The router therefore
//! holds back a publisher's PUBACK / PUBREC until the ticket of the last op that message caused
//! has been reported.

use std::sync::Arc;
use std::time::SystemTime;

use culex_proto::{QoS, SubscriptionOptions};

use crate::message::Message;

/// A change the router asks the store to make durable. Applied in submission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Set (`Some`) or clear (`None`) the retained message of a topic.
    Retain {
        /// Topic name the message is retained under.
        topic: Arc<str>,
        /// The new retained message, or `None` to clear the topic.
        message: Option<Arc<Message>>,
    },
    /// Create or replace (`Some`) or delete (`None`, which also deletes all its messages) a
    /// persistent session.
    Session {
        /// Client identifier of the session.
        client_id: Arc<str>,
        /// The session's new state, or `None` to delete it.
        record: Option<SessionRecord>,
    },
    /// Several ops that must become durable together or not at all (the store applies them in
    /// one transaction): e.g. a QoS 2 message in its subscribers' sessions and its packet id.
    Group(Vec<StoreOp>),
    /// Add or replace (`Some`) or delete (`None`) one queued or in-flight message of a
    /// session, keyed by a per-session sequence number.
    Message {
        /// Client identifier of the session the message belongs to.
        client_id: Arc<str>,
        /// Per-session sequence number: the order in which messages are redelivered.
        seq: u64,
        /// The message and its delivery state, or `None` to delete it.
        record: Option<MessageRecord>,
    },
}

/// The durable part of a persistent session (its messages are stored separately, see
/// [`StoreOp::Message`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// User name the client authenticated with, if any (ACLs are re-checked with it).
    pub username: Option<String>,
    /// Session Expiry Interval in seconds; `u32::MAX` means the session never expires.
    pub expiry_interval: u32,
    /// Wall-clock time at which the session expires; set while the client is offline, `None`
    /// while it is connected (or if it never expires). A session recovered with `None` was
    /// online when the broker stopped: its expiry starts counting at recovery.
    pub expires_at: Option<SystemTime>,
    /// The session's subscriptions.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Packet identifiers of inbound QoS 2 messages received (PUBREC sent) whose PUBREL has
    /// not arrived yet [MQTT-4.3.3-10].
    pub inbound_qos2: Vec<u16>,
}

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    /// Full topic filter, including any `$share/{group}/` prefix.
    pub filter: String,
    /// Subscription options.
    pub options: SubscriptionOptions,
    /// Subscription Identifier, if the SUBSCRIBE carried one.
    pub id: Option<u32>,
}

/// One outgoing QoS 1/2 message of a session, queued or in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// The message (shared with every other session it was routed to).
    pub message: Arc<Message>,
    /// QoS it is delivered with to this session.
    pub qos: QoS,
    /// RETAIN flag it is delivered with to this session.
    pub retain: bool,
    /// Subscription Identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// Where the delivery stands.
    pub state: MessageState,
}

/// Where the delivery of a session's message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Waiting for room in the in-flight window; not sent yet.
    Queued,
    /// QoS 1 PUBLISH sent with this packet identifier, PUBACK awaited.
    WaitPubAck(u16),
    /// QoS 2 PUBLISH sent with this packet identifier, PUBREC awaited.
    WaitPubRec(u16),
    /// PUBREL sent for this packet identifier, PUBCOMP awaited.
    Released(u16),
}

/// Where the router sends [`StoreOp`]s.
pub trait StoreSink: Send + std::fmt::Debug {
    /// Queues `op` and returns its ticket (increasing with every call). The op is durable once
    /// the store reports that ticket, or a later one, as committed. Never blocks.
    fn submit(&mut self, op: StoreOp) -> u64;
}

/// What a store hands the router at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Retained messages (expired ones already dropped).
    pub retained: Vec<Arc<Message>>,
    /// Persistent sessions (expired ones already dropped).
    pub sessions: Vec<RecoveredSession>,
}

/// One persistent session as recovered from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Session state.
    pub record: SessionRecord,
    /// The session's queued and in-flight messages with their sequence numbers, in sequence
    /// order (the order of redelivery).
    pub messages: Vec<(u64, MessageRecord)>,
}
