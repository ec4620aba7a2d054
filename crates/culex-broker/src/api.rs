//! What connection tasks and the router say to each other.

use std::borrow::Cow;
use std::sync::Arc;

use culex_proto::{
    publish_encoded_len, EncodeError, LastWill, Packet, Properties, Protocol, Publish, PublishView,
    QoS, ReasonCode, Subscribe, Unsubscribe,
};
use tokio::sync::oneshot;

use crate::message::Message;
use crate::outbox::Outbox;
use crate::stats::RouterSnapshot;

/// Identifies one network connection for its whole life (never reused).
pub type ConnId = u64;

/// Outbox slots kept for control packets (SUBACK, UNSUBACK, PUBREL, DISCONNECT).
pub(crate) const CONTROL_RESERVE: usize = 64;

/// Decides what a client may read, write and subscribe to: the ACL. The binary implements it
/// over its reloadable ACL file, so every check sees the rules in force at that moment.
pub trait AccessPolicy: Send + Sync + std::fmt::Debug {
    /// May this client receive messages published to `topic`?
    fn can_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool;
    /// May this client publish to `topic` (also checked for its will when the will is sent)?
    fn can_write(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool;
    /// May this client subscribe to `filter`?
    fn can_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool;
}

/// In a cluster: which node delivers a message to a shared subscription group whose members
/// are on several nodes (every node sees every message and asks; one answers yes).
pub trait SharedPlacement: Send + Sync + std::fmt::Debug {
    /// Whether this node delivers the message whose content hashes to `hash` to the group
    /// `group` (its full filter, `$share/{group}/{filter}`).
    fn takes(&self, group: &str, hash: u64) -> bool;
}

/// In a cluster: told which topic filters this node's sessions subscribe to, so that the
/// other nodes send this node only the messages it needs.
pub trait InterestSink: Send + Sync + std::fmt::Debug {
    /// `filter` (a shared subscription's whole, `$share/{group}/{filter}`: the group has
    /// members here) gained its first subscription on this node (`present`) or lost its last.
    fn changed(&self, filter: &str, present: bool);
    /// `filter` gained its first subscription of a persistent session on this node, or lost
    /// its last.
    fn persistent_changed(&self, filter: &str, present: bool);
    /// Once the other nodes know of every change told so far, the router is to get
    /// [`Command::InterestSynced`] with `token` (and the SUBACK it holds goes out).
    fn sync(&self, token: u64);
    /// The session of `client_id`, subscribed to `filters`, was handed to another node
    /// ([`Command::ExportSession`]): told before the router routes anything else, so that
    /// what the session would have wanted from then on can be passed on to it.
    fn session_exported(&self, client_id: &str, filters: &[&str]) {
        let _ = (client_id, filters);
    }
    /// A persistent session's SUBSCRIBE changed its `record`: whether the sink writes it for
    /// the cluster now and then gives the router [`Command::RecordWritten`] with `token` (the
    /// SUBACK waits for it, so that a session whose client has its SUBACK can be rebuilt
    /// elsewhere should this node die). `false`: the SUBACK does not wait for it.
    fn record(&self, token: u64, client_id: &str, record: crate::persist::SessionRecord) -> bool {
        let _ = (token, client_id, record);
        false
    }
}

/// Told about one session's queue: the bridges watch the local session that holds what waits
/// for their remote link.
pub trait QueueObserver: Send + Sync + std::fmt::Debug {
    /// The session now has `queued` messages waiting behind its in-flight window.
    fn queue_changed(&self, queued: usize);
    /// `n` queued messages were dropped to make room (the queue was full).
    fn dropped(&self, n: u64);
}

/// Queue limits of one session that differ from the broker's `max_queued_messages` /
/// `max_queued_bytes` (the bridges' local sessions: their queue is the store-and-forward queue).
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    /// Queued messages at most.
    pub max_messages: usize,
    /// Queued payload bytes at most; 0 = no byte limit.
    pub max_bytes: u64,
    /// When full, drop the oldest queued message (counted) instead of refusing the new one.
    pub drop_oldest: bool,
    /// In-flight window instead of the broker's `max_inflight_messages` (the client's Receive
    /// Maximum still applies).
    pub max_inflight: Option<u16>,
    /// Told about the queue's length and drops.
    pub observer: Option<Arc<dyn QueueObserver>>,
    /// A client's acknowledgement of a QoS 1/2 PUBLISH this session gets waits until the
    /// session has acknowledged it in turn (the cluster link: once the backplane stored it),
    /// so that what a publisher was told is kept survives this node.
    pub confirms_publishers: bool,
}

/// A CONNECT the connection task has decoded, checked and authenticated.
#[derive(Debug)]
pub struct ConnectRequest {
    /// The connection.
    pub conn: ConnId,
    /// Protocol version it speaks.
    pub protocol: Protocol,
    /// Client identifier; empty means "assign one".
    pub client_id: String,
    /// Clean session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Session expiry interval in seconds after the connection ends: 0 ends the session with
    /// the connection; `u32::MAX` never expires. For 3.1.1 the connection passes 0 for a clean
    /// session and `u32::MAX` otherwise.
    pub session_expiry: u32,
    /// The client's Receive Maximum (65535 when it sent none).
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size (`u32::MAX` when it sent none).
    pub maximum_packet_size: u32,
    /// Will message, if any.
    pub will: Option<LastWill>,
    /// Authenticated user name, if any.
    pub username: Option<String>,
    /// The ACL in force for this client; `None` allows everything.
    pub access: Option<Arc<dyn AccessPolicy>>,
    /// Queue limits for this session instead of the broker's; `None` for ordinary clients.
    pub queue: Option<QueuePolicy>,
    /// Where the router sends this connection's packets.
    pub outbox: Outbox,
    /// Where the router sends its answer, before anything goes to the outbox.
    pub reply: oneshot::Sender<ConnectOutcome>,
}

/// The router's answer to a [`ConnectRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOutcome {
    /// Session present flag for CONNACK.
    pub session_present: bool,
    /// The client identifier in force (assigned when the request's was empty).
    pub client_id: Arc<str>,
    /// True when the router assigned the identifier (MQTT 5 then returns it in CONNACK).
    pub assigned: bool,
    /// Packet identifiers of QoS 2 messages received from this client whose PUBREL is still
    /// awaited (kept with the session across connections).
    pub inbound_qos2: Vec<u16>,
}

/// How a connection ended, for the will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectKind {
    /// DISCONNECT with a normal reason: the will is discarded.
    Normal,
    /// Anything else (socket closed, protocol error, keepalive timeout, DISCONNECT 0x04, server
    /// shutdown): the will is published.
    WithWill,
}

/// Commands from connection tasks to the router.
#[derive(Debug)]
pub enum Command {
    /// A client connected.
    Connect(Box<ConnectRequest>),
    /// Liveness probe (`/healthz`, the systemd watchdog): the router answers at once, proving
    /// its loop is turning.
    Ping {
        /// Where the answer goes.
        reply: oneshot::Sender<()>,
    },
    /// The password, ACL or certificate files were reloaded: queued and in-flight messages
    /// that a session may no longer read are dropped (counted as ACL drops), and every live
    /// connection is asked to [`Outbound::Recheck`] its client.
    AccessChanged,
    /// A PUBLISH from a client, already validated (topic alias resolved, limits checked, ACL
    /// allowed). Acknowledged by the connection task unless `ack` is set; then the router
    /// answers.
    Publish {
        /// The connection.
        conn: ConnId,
        /// The packet.
        publish: Publish,
        /// The router acknowledges it (PUBACK / PUBREC) once what it caused is durable; set
        /// for QoS 1/2 when the broker persists, otherwise the connection acked it already.
        ack: bool,
        /// In a cluster, the publication a message from the cluster link is a copy of
        /// ([`Message::publication`]); `None` for every other client.
        publication: Option<u64>,
    },
    /// PUBREL from a client, when the router acknowledges (persistence on): the router forgets
    /// the packet id and sends PUBCOMP once that is durable.
    PubRel {
        /// The connection.
        conn: ConnId,
        /// Packet identifier.
        packet_id: u16,
    },
    /// An acknowledgement the connection decided on (e.g. for a refused or duplicate PUBLISH)
    /// that must keep its place behind acknowledgements still waiting for the store.
    Ack {
        /// The connection.
        conn: ConnId,
        /// PUBACK, PUBREC or PUBCOMP.
        packet: Box<Packet>,
    },
    /// The store has made every change up to this ticket durable.
    Durable {
        /// The highest durable ticket.
        ticket: u64,
    },
    /// The connection's outbox has the free room the router asked for
    /// ([`Outbox::want_space`](crate::Outbox::want_space)): it sends the next QoS 0
    /// messages waiting for that connection.
    OutboxSpace {
        /// The connection.
        conn: ConnId,
    },
    /// PUBACK from a client for a QoS 1 delivery.
    PubAck {
        /// The connection.
        conn: ConnId,
        /// Packet identifier.
        packet_id: u16,
    },
    /// PUBREC from a client for a QoS 2 delivery.
    PubRec {
        /// The connection.
        conn: ConnId,
        /// Packet identifier.
        packet_id: u16,
        /// Its reason code (MQTT 5; an error ends the exchange).
        reason: ReasonCode,
    },
    /// PUBCOMP from a client for a QoS 2 delivery.
    PubComp {
        /// The connection.
        conn: ConnId,
        /// Packet identifier.
        packet_id: u16,
    },
    /// SUBSCRIBE; the router answers with SUBACK in the outbox, then retained messages.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// The packet (filters validated by the codec).
        subscribe: Subscribe,
    },
    /// UNSUBSCRIBE; the router answers with UNSUBACK in the outbox.
    Unsubscribe {
        /// The connection.
        conn: ConnId,
        /// The packet.
        unsubscribe: Unsubscribe,
    },
    /// The connection ended.
    Disconnect {
        /// The connection.
        conn: ConnId,
        /// Whether the will is published.
        kind: DisconnectKind,
        /// New session expiry interval from an MQTT 5 DISCONNECT, if it carried one.
        session_expiry: Option<u32>,
        /// QoS 2 packet identifiers still awaiting PUBREL.
        inbound_qos2: Vec<u16>,
    },
    /// Asks for a [`RouterSnapshot`] (metrics scrape, `$SYS` update).
    Stats {
        /// Where the snapshot goes.
        reply: oneshot::Sender<RouterSnapshot>,
    },
    /// The server is stopping: every connected client is told to close (MQTT 5 clients get
    /// DISCONNECT 0x8B), and so is any client that connects after this.
    Shutdown,
    /// A message the broker publishes itself (`$SYS`): no ACL check on publishing (readers'
    /// ACLs still apply), no origin, not counted as received from a client.
    PublishInternal {
        /// The message.
        message: Message,
    },
    /// Another node of the cluster accepted a connection with this client identifier: the
    /// client connected here, if any, is taken over (MQTT 5: DISCONNECT 0x8E), as when a
    /// second connection with its identifier arrives on this node, and the session here ends
    /// (the client started a clean one or resumed this one there).
    TakenOverElsewhere {
        /// The client identifier.
        client_id: String,
    },
    /// Another node of the cluster resumes this client's session: its connection here, if
    /// any, is closed (DISCONNECT 0x8E) and waited for, then the session's image is sent and
    /// the session ends here (see `router/migrate.rs`). `None` when there is no session.
    ExportSession {
        /// The client identifier.
        client_id: String,
        /// Where the image goes.
        reply: oneshot::Sender<Option<crate::persist::RecoveredSession>>,
    },
    /// A session moved here from another node of the cluster: rebuilt offline (replacing any
    /// session of its client here) just before its client's CONNECT.
    AdoptSession {
        /// The session as the other node had it.
        session: Box<crate::persist::RecoveredSession>,
    },
    /// A session another node of the cluster holds is about to move here: rebuilt now from
    /// the cluster's record (its subscriptions), offline, so that it queues what is published
    /// during the move; [`Command::AdoptSession`] then replaces it with the image, keeping
    /// what it queued (see `router/migrate.rs`).
    PrepareSession {
        /// The session's record: its subscriptions, no messages.
        record: Box<crate::persist::RecoveredSession>,
    },
    /// The move a session was prepared for did not happen: the prepared session ends, unless
    /// a client uses it by now.
    AbandonPrepared {
        /// The client identifier.
        client_id: String,
    },
    /// In a cluster: another node holds this client's session (it moved on while this node
    /// was down): the copy recovered here from the store ends, if no client has used it since.
    DiscardIfOffline {
        /// The client identifier.
        client_id: String,
    },
    /// In a cluster: the other nodes know of the filters behind these tokens
    /// ([`InterestSink::sync`]).
    InterestSynced {
        /// The tokens.
        tokens: Vec<u64>,
    },
    /// In a cluster: the record behind this token was written, or could not be
    /// ([`InterestSink::record`]).
    RecordWritten {
        /// The token.
        token: u64,
    },
    /// In a cluster (`BrokerSettings::cluster`): what the cluster records about this node's
    /// sessions, asked for about once a second.
    ClusterReport {
        /// Where the report goes.
        reply: oneshot::Sender<crate::ClusterReport>,
    },
    /// Messages read back from the cluster's stream for one session whose node died: queued
    /// for that session only, as its subscriptions match them, as far as its queue has room
    /// (see `router/cluster_report.rs`).
    Replay {
        /// The session's client identifier.
        client_id: String,
        /// The messages, in stream order.
        messages: Vec<Message>,
        /// The messages not taken for want of room; `Err` with their number when the session
        /// is gone or offline (nothing will make room: they are dropped).
        reply: oneshot::Sender<Result<Vec<Message>, usize>>,
    },
}

/// A PUBLISH for one subscriber. The connection task encodes it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// QoS of this delivery.
    pub qos: QoS,
    /// Packet identifier for QoS 1/2.
    pub packet_id: Option<u16>,
    /// DUP flag (redelivery).
    pub dup: bool,
    /// RETAIN flag as sent to this subscriber.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions (MQTT 5).
    pub subscription_ids: SubscriptionIds,
    /// Message Expiry Interval to send (MQTT 5), already reduced by the time spent waiting.
    pub expiry_interval: Option<u32>,
}

/// The Subscription Identifiers of a delivery (MQTT 5), one pointer wide and allocated only
/// when there are some: every connection's outbox channel holds deliveries in blocks of 32,
/// allocated up front, so their size is paid by each idle connection (48 -> 32 bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
// A `Vec` is three words and a `Box<[u32]>` two; the extra allocation is only for deliveries
// that carry identifiers.
#[allow(clippy::box_collection)]
pub struct SubscriptionIds(Option<Box<Vec<u32>>>);

impl SubscriptionIds {
    /// The identifiers, in the order of the matching subscriptions.
    pub fn as_slice(&self) -> &[u32] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The identifiers as a vector.
    pub fn into_vec(self) -> Vec<u32> {
        self.0.map_or_else(Vec::new, |v| *v)
    }
}

impl From<Vec<u32>> for SubscriptionIds {
    fn from(ids: Vec<u32>) -> Self {
        SubscriptionIds((!ids.is_empty()).then(|| Box::new(ids)))
    }
}

impl FromIterator<u32> for SubscriptionIds {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        Vec::from_iter(iter).into()
    }
}

/// What the router puts in a connection's outbox.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A PUBLISH.
    Deliver(Delivery),
    /// A control packet (SUBACK, UNSUBACK, PUBREL), boxed: they are rare and large.
    Packet(Box<Packet>),
    /// Close the connection: send DISCONNECT with this reason first (MQTT 5), e.g. session
    /// taken over (0x8E).
    Close(ReasonCode),
    /// The password, ACL or certificate files were reloaded: the connection checks that its
    /// client is still let in (user still there, same password entry, certificate not
    /// revoked) and closes itself if not.
    Recheck,
    /// Flow control (`queue_full_policy block`): `true` when this client's messages overfill
    /// a subscriber's queue, so the connection lets the router answer its QoS 1/2 PUBLISH
    /// (and the router can hold the answers); `false` once that has passed.
    Pressure(bool),
}

impl Delivery {
    /// The MQTT 5 properties this PUBLISH carries: the message's own, with this delivery's
    /// Subscription Identifiers and remaining Message Expiry Interval. Borrowed when unchanged.
    pub fn properties(&self) -> Cow<'_, Properties> {
        let own = &self.message.properties;
        if self.subscription_ids.is_empty() && self.expiry_interval == own.message_expiry_interval {
            return Cow::Borrowed(own);
        }
        let mut p = own.clone();
        p.subscription_identifiers = self.subscription_ids.as_slice().to_vec();
        p.message_expiry_interval = self.expiry_interval;
        Cow::Owned(p)
    }

    /// The borrowed PUBLISH view the encoder takes, with `properties` from
    /// [`Delivery::properties`].
    pub fn view<'a>(&'a self, properties: &'a Properties) -> PublishView<'a> {
        PublishView {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.message.topic,
            packet_id: self.packet_id,
            properties,
            payload: &self.message.payload,
        }
    }

    /// Size of this PUBLISH on the wire for `protocol`.
    pub fn encoded_len(&self, protocol: Protocol) -> Result<usize, EncodeError> {
        let props = self.properties();
        publish_encoded_len(&self.view(&props), protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outbox items are queued by the thousand for a busy subscriber: keep them small.
    #[test]
    fn outbound_is_small() {
        assert_eq!(std::mem::size_of::<SubscriptionIds>(), 8);
        assert!(
            std::mem::size_of::<Outbound>() <= 32,
            "{}",
            std::mem::size_of::<Outbound>()
        );
    }

    /// Every PUBLISH and acknowledgement a client sends travels to the router as a `Command`,
    /// moved through a channel: boxed properties keep it small (it was 432 bytes, and copying
    /// it was the largest single cost of a QoS 1 fan-out).
    #[test]
    fn command_is_small() {
        let size = std::mem::size_of::<Command>();
        assert!(size <= 128, "Command is {size} bytes");
    }

    #[test]
    fn subscription_ids_round_trip() {
        let none = SubscriptionIds::from(Vec::new());
        assert!(none.is_empty());
        assert_eq!(none.as_slice(), &[] as &[u32]);
        let some: SubscriptionIds = [3, 7].into_iter().collect();
        assert!(!some.is_empty());
        assert_eq!(some.as_slice(), &[3, 7]);
        assert_eq!(some.into_vec(), vec![3, 7]);
    }
}
