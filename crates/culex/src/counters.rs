//! Server-wide counters kept by connection tasks: plain relaxed atomics, so the hot path pays
//! one uncontended `fetch_add` per event. The metrics endpoint and the `$SYS` publisher read
//! them (with the router's own counters) when they need them, never the other way round.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use culex_bridge::BridgeStats;
use culex_proto::{Packet, QoS, ReasonCode};

/// A monotonically increasing count or a gauge, readable from anywhere.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds one and returns the new value.
    pub fn inc_get(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }
    /// Subtracts one (gauges).
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Raises the value to `n` if it is lower (peaks).
    pub fn max(&self, n: u64) {
        self.0.fetch_max(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a connection was refused before it became a client (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached; the socket was closed at once.
    MaxConnections,
    /// Bad user name or password, no password when one is needed, or no client certificate
    /// identity when `use_identity_as_username` is set.
    NotAuthorized,
    /// Client identifier not allowed (empty where that is not allowed; also v3 keepalive
    /// above `max_keepalive`, which MQTT 3 can only refuse this way).
    BadClientId,
    /// A protocol name or level the broker does not speak.
    UnsupportedProtocol,
    /// A malformed CONNECT, or something other than CONNECT first.
    ProtocolError,
    /// Anything else (QoS or retain of the will not supported, bad authentication method,
    /// server unavailable).
    Other,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 6] = [
        Refusal::MaxConnections,
        Refusal::NotAuthorized,
        Refusal::BadClientId,
        Refusal::UnsupportedProtocol,
        Refusal::ProtocolError,
        Refusal::Other,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::BadClientId => "bad_client_id",
            Refusal::UnsupportedProtocol => "unsupported_protocol",
            Refusal::ProtocolError => "protocol_error",
            Refusal::Other => "other",
        }
    }

    /// The reason a refusing CONNACK carries, classified.
    pub fn from_reason_code(code: ReasonCode) -> Refusal {
        match code {
            ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword => Refusal::NotAuthorized,
            ReasonCode::ClientIdentifierNotValid => Refusal::BadClientId,
            ReasonCode::UnsupportedProtocolVersion => Refusal::UnsupportedProtocol,
            ReasonCode::ProtocolError | ReasonCode::MalformedPacket => Refusal::ProtocolError,
            _ => Refusal::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// MQTT control packet type names by type number (1..=15), the `type` label.
pub const PACKET_TYPES: [&str; 16] = [
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];

/// The MQTT control packet type number of `p`.
pub fn packet_type(p: &Packet) -> usize {
    match p {
        Packet::Connect(_) => 1,
        Packet::ConnAck(_) => 2,
        Packet::Publish(_) => 3,
        Packet::PubAck(_) => 4,
        Packet::PubRec(_) => 5,
        Packet::PubRel(_) => 6,
        Packet::PubComp(_) => 7,
        Packet::Subscribe(_) => 8,
        Packet::SubAck(_) => 9,
        Packet::Unsubscribe(_) => 10,
        Packet::UnsubAck(_) => 11,
        Packet::PingReq => 12,
        Packet::PingResp => 13,
        Packet::Disconnect(_) => 14,
        Packet::Auth(_) => 15,
    }
}

/// The statistics of the running bridges, by name, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct BridgeRegistry {
    stats: Mutex<Vec<(String, Arc<BridgeStats>)>>,
}

impl BridgeRegistry {
    /// The bridges' names and statistics, in configuration order.
    pub fn snapshot(&self) -> Vec<(String, Arc<BridgeStats>)> {
        self.stats.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Replaces the list (when the bridges start or are reloaded).
    pub(crate) fn set(&self, stats: Vec<(String, Arc<BridgeStats>)>) {
        if let Ok(mut g) = self.stats.lock() {
            *g = stats;
        }
    }
}

/// Server-wide counters kept by connection tasks and accept loops.
#[derive(Debug, Default)]
pub struct Counters {
    /// The bridges' statistics, read at scrape time.
    pub bridges: BridgeRegistry,
    /// The cluster link's statistics, when the node is part of a cluster (set once at start).
    pub cluster: std::sync::OnceLock<Arc<culex_cluster::ClusterStats>>,
    /// The store writer's statistics, when persistence is on (set once at start).
    pub store: std::sync::OnceLock<culex_store::StatsReader>,
    /// Sockets accepted (before `max_connections` and any handshake).
    pub accepted: Counter,
    /// Sockets open now: accepted and not yet closed (gauge).
    pub open_connections: Counter,
    /// The configured `max_connections`, 0 when unlimited (see [`Counters::max_connections`]).
    max_connections: Counter,
    /// Connections closed at once because `max_connections` was reached.
    pub rejected_max_connections: Counter,
    /// CONNECTs refused (CONNACK with an error, or a malformed CONNECT), all reasons.
    pub refused: Counter,
    /// The same, by reason (indexed like [`Refusal::ALL`]; `max_connections` stays 0 here:
    /// see `rejected_max_connections`).
    refused_by: [Counter; 6],
    /// Clients connected now: CONNACK sent, connection not yet ended (gauge).
    pub connected: Counter,
    /// The most clients connected at once since start.
    pub connected_max: Counter,
    /// Successful CONNECTs since start.
    pub connects: Counter,
    /// Connections closed for malformed or out-of-order packets.
    pub protocol_errors: Counter,
    /// Connections refused for authentication.
    pub auth_failures: Counter,
    /// Of those, refused without a password check: the source was backing off after failures,
    /// or too many logins waited for a hashing thread.
    pub auth_throttled: Counter,
    /// PUBLISH packets received, by QoS.
    pub publish_received: [Counter; 3],
    /// PUBLISH packets sent, by QoS.
    pub publish_sent: [Counter; 3],
    /// Payload bytes of the PUBLISH packets received.
    pub publish_bytes_received: Counter,
    /// Payload bytes of the PUBLISH packets sent.
    pub publish_bytes_sent: Counter,
    /// Packets received, by MQTT packet type number ([`PACKET_TYPES`]).
    pub packets_received: [Counter; 16],
    /// Packets sent, by MQTT packet type number ([`PACKET_TYPES`]).
    pub packets_sent: [Counter; 16],
    /// MQTT bytes read from clients (after TLS and WebSocket framing are removed).
    pub bytes_received: Counter,
    /// MQTT bytes written to clients.
    pub bytes_sent: Counter,
    /// PUBLISH packets dropped for exceeding `message_size_limit`.
    pub dropped_too_large: Counter,
    /// PUBLISH packets refused by the ACL (or aimed at `$SYS`).
    pub acl_denied_publish: Counter,
    /// Reloads that applied.
    pub reloads_ok: Counter,
    /// Connections closed by a reload: user removed, password changed, anonymous access or
    /// certificate no longer accepted.
    pub revoked_connections: Counter,
    /// Reloads that failed (previous rules kept).
    pub reloads_failed: Counter,
    /// TLS handshakes that failed or timed out (bad or missing client certificate, wrong TLS
    /// version, not TLS at all, too slow).
    pub tls_handshake_failures: Counter,
    /// WebSocket upgrades that failed or timed out (not a WebSocket request, no `mqtt`
    /// subprotocol, too slow).
    pub websocket_handshake_failures: Counter,
}

impl Counters {
    /// Records the configured `max_connections` (`None`: unlimited), set once at start.
    pub fn set_max_connections(&self, limit: Option<usize>) {
        let limit = limit.map_or(0, |n| u64::try_from(n).unwrap_or(u64::MAX));
        self.max_connections.0.store(limit, Ordering::Relaxed);
    }

    /// The configured `max_connections`, the limit of [`Counters::open_connections`];
    /// `None` when unlimited.
    pub fn max_connections(&self) -> Option<u64> {
        match self.max_connections.get() {
            0 => None,
            n => Some(n),
        }
    }

    /// Counts a refused CONNECT.
    pub fn refuse(&self, why: Refusal) {
        self.refused.inc();
        if let Some(c) = self.refused_by.get(why.index()) {
            c.inc();
        }
    }

    /// Counts a socket closed at once because `max_connections` was reached.
    pub fn refuse_max_connections(&self) {
        self.rejected_max_connections.inc();
    }

    /// Refused connections for `why`, `max_connections` included.
    pub fn refused_for(&self, why: Refusal) -> u64 {
        match why {
            Refusal::MaxConnections => self.rejected_max_connections.get(),
            other => self.refused_by.get(other.index()).map_or(0, Counter::get),
        }
    }

    /// Counts a PUBLISH received at `qos` with `payload` bytes.
    pub fn publish_in(&self, qos: QoS, payload: usize) {
        if let Some(c) = self.publish_received.get(usize::from(qos.as_u8())) {
            c.inc();
        }
        self.publish_bytes_received.add(payload as u64);
    }

    /// Counts a PUBLISH sent at `qos` with `payload` bytes.
    pub fn publish_out(&self, qos: QoS, payload: usize) {
        if let Some(c) = self.publish_sent.get(usize::from(qos.as_u8())) {
            c.inc();
        }
        self.publish_bytes_sent.add(payload as u64);
        if let Some(c) = self.packets_sent.get(3) {
            c.inc();
        }
    }

    /// Counts a packet received.
    pub fn packet_in(&self, p: &Packet) {
        if let Some(c) = self.packets_received.get(packet_type(p)) {
            c.inc();
        }
    }

    /// Counts a packet sent (PUBLISH deliveries are counted by [`Counters::publish_out`]).
    pub fn packet_out(&self, p: &Packet) {
        if let Some(c) = self.packets_sent.get(packet_type(p)) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_reason_and_in_total() {
        let c = Counters::default();
        c.refuse(Refusal::from_reason_code(ReasonCode::BadUserNameOrPassword));
        c.refuse(Refusal::from_reason_code(ReasonCode::NotAuthorized));
        c.refuse(Refusal::from_reason_code(ReasonCode::QoSNotSupported));
        c.rejected_max_connections.inc();
        assert_eq!(c.refused.get(), 3);
        assert_eq!(c.refused_for(Refusal::NotAuthorized), 2);
        assert_eq!(c.refused_for(Refusal::Other), 1);
        assert_eq!(c.refused_for(Refusal::MaxConnections), 1);
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn max_connections_is_none_when_unlimited() {
        let c = Counters::default();
        assert_eq!(c.max_connections(), None);
        c.set_max_connections(Some(500));
        assert_eq!(c.max_connections(), Some(500));
        c.set_max_connections(None);
        assert_eq!(c.max_connections(), None);
    }

    #[test]
    fn packet_types_match_the_names() {
        assert_eq!(PACKET_TYPES[packet_type(&Packet::PingReq)], "pingreq");
        assert_eq!(PACKET_TYPES[packet_type(&Packet::PingResp)], "pingresp");
    }
}
