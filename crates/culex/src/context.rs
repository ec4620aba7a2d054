//! What the connection tasks share with the server that spawned them: the limits they enforce,
//! the listener that accepted them, the router's channel, and their place under
//! `max_connections`. Built by `server`, used by `connection`, `transport` and `bridges`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use culex_broker::{BrokerSettings, Command, QueuePolicy};
use culex_config::{Config, ListenerProtocol};
use culex_proto::QoS;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::counters::Counters;
use crate::security::SecurityHandle;
use crate::tls::TlsListener;

/// Limits each connection task enforces, from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct ConnLimits {
    pub(crate) max_packet_size: u32,
    pub(crate) message_size_limit: u32,
    pub(crate) max_keepalive: u16,
    pub(crate) max_inflight_messages: u16,
    pub(crate) allow_zero_length_clientid: bool,
    pub(crate) retain_available: bool,
    pub(crate) max_qos: QoS,
    pub(crate) connect_timeout: Duration,
    /// The router acknowledges QoS 1/2 publishes (after the store made them durable).
    pub(crate) router_acks: bool,
    /// A client whose socket takes nothing for this long is disconnected: it stopped reading
    /// (`slow_client_timeout`; with 0, an hour).
    pub(crate) write_timeout: Duration,
    /// `connection_messages`: an INFO line per connect and disconnect.
    pub(crate) connection_messages: bool,
    /// `max_topic_levels` and `max_topic_length`: PUBLISH topics beyond them are refused.
    pub(crate) max_topic_levels: u16,
    pub(crate) max_topic_length: u16,
    /// `clientid_prefixes`: client identifiers must start with it.
    pub(crate) clientid_prefixes: Option<Box<str>>,
    /// Client identifiers of the broker's own connections (each bridge's local session):
    /// refused to network clients, which would take those sessions over.
    pub(crate) reserved_client_ids: Box<[Box<str>]>,
    /// In a cluster, the prefix of the cluster link's client identifiers (on every node:
    /// a claim of one on this node would end the link's session on its own), refused too.
    pub(crate) reserved_client_prefix: Option<Box<str>>,
}

impl ConnLimits {
    /// Whether `client_id` belongs to the broker's own connections.
    pub(crate) fn is_reserved(&self, client_id: &str) -> bool {
        self.reserved_client_ids.iter().any(|id| **id == *client_id)
            || self
                .reserved_client_prefix
                .as_deref()
                .is_some_and(|p| client_id.starts_with(p))
    }
}

/// What a connection needs to know of the listener that accepted it.
#[derive(Debug)]
pub(crate) struct ListenerCtx {
    /// The bound address.
    pub(crate) local: SocketAddr,
    /// MQTT directly, or MQTT over WebSocket.
    pub(crate) protocol: ListenerProtocol,
    /// The TLS side, for TLS listeners; shared by the sockets of one configured listener.
    pub(crate) tls: Option<Arc<TlsListener>>,
    /// Password file, ACL and anonymous access in force for this listener.
    pub(crate) security: Arc<SecurityHandle>,
    /// Queue limits for the sessions of this listener's clients instead of the broker's (the
    /// in-process listener of one bridge); `None` for network listeners.
    pub(crate) queue: Option<QueuePolicy>,
    /// `mount_point`: the prefix of every topic of this listener's clients.
    pub(crate) mount_point: Option<Arc<str>>,
}

/// State every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) router: mpsc::Sender<Command>,
    pub(crate) limits: Arc<ConnLimits>,
    pub(crate) broker: BrokerSettings,
    pub(crate) counters: Arc<Counters>,
    /// In a cluster: where clients that connect here are claimed and their sessions found.
    pub(crate) cluster: Option<crate::cluster::ClusterConns>,
}

/// The limits of [`ConnLimits`] from the configuration.
pub(crate) fn conn_limits(config: &Config) -> ConnLimits {
    ConnLimits {
        max_packet_size: config.limits.max_packet_size,
        message_size_limit: config.limits.message_size_limit,
        max_keepalive: config.limits.max_keepalive,
        max_inflight_messages: config.limits.max_inflight_messages.max(1),
        allow_zero_length_clientid: config.sessions.allow_zero_length_clientid,
        retain_available: config.mqtt.retain_available,
        max_qos: QoS::from_u8(config.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce),
        connect_timeout: Duration::from_secs(10),
        // In a cluster the router answers once the backplane has the message.
        router_acks: config.persistence.enabled || config.cluster.enabled(),
        write_timeout: if config.limits.slow_client_timeout.is_zero() {
            Duration::from_secs(3600)
        } else {
            config.limits.slow_client_timeout
        },
        connection_messages: config.log.connection_messages,
        max_topic_levels: config.limits.max_topic_levels,
        max_topic_length: config.limits.max_topic_length,
        clientid_prefixes: config.sessions.clientid_prefixes.as_deref().map(Box::from),
        reserved_client_ids: config
            .bridges
            .iter()
            .map(|b| Box::from(b.local_clientid.as_str()))
            .collect(),
        reserved_client_prefix: config
            .cluster
            .enabled()
            .then(|| Box::from(culex_cluster::link::LOCAL_CLIENT_PREFIX)),
    }
}

/// An accepted socket's place: counted in `open_connections` and holding a permit under
/// `max_connections` until dropped, when its connection ends.
pub(crate) struct ConnSlot {
    counters: Arc<Counters>,
    _permit: OwnedSemaphorePermit,
}

impl ConnSlot {
    pub(crate) fn new(counters: Arc<Counters>, permit: OwnedSemaphorePermit) -> Self {
        counters.open_connections.inc();
        ConnSlot {
            counters,
            _permit: permit,
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.counters.open_connections.dec();
    }
}
