//! Culex's outbound bridge connector: mirrors topic trees between the local broker and remote
//! MQTT brokers, with Mosquitto's bridge semantics.
//!
//! - [`BridgeConfig`]: the options of one bridge (Mosquitto's names in the field docs), with
//!   [`BridgeConfig::validate`] and the [`BridgeConfig::sber`] preset.
//! - [`topic`]: `topic PATTERN [out|in|both] [QOS] [LOCAL-PREFIX REMOTE-PREFIX]` rules and the
//!   remapping between local and remote topics.
//! - [`ReconnectPolicy`]: jittered exponential backoff between `restart_timeout` bounds, reset
//!   after a CONNACK; bad credentials wait the maximum.
//! - Store-and-forward: `out` QoS 1/2 messages are acknowledged to the local broker only once
//!   the remote has them, so while the link is down they wait, durably and bounded, in the
//!   bridge's local session; the bridge itself holds at most its Receive Maximum of them
//!   ([`MemoryQueue`]) and the latest QoS 0 message per topic.
//! - [`Bridge::spawn`]: the bridge task. It connects to the local broker through a
//!   [`LocalConnector`] (an in-process stream in the broker, TCP in tests) and to the remote
//!   through `culex-client` (TCP or TLS), and forwards both ways. [`BridgeStats`] exposes its
//!   state and counters as atomics.
//!
//! No loops: the local connection uses MQTT 5 with No Local; an MQTT 5 remote gets No Local
//! subscriptions; an MQTT 3.1.1 remote gets the bridge bit (`try_private`) or, without it,
//! echo suppression by origin tracking.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod backoff;
mod echo;
mod error;
mod queue;
mod remote;
mod runtime;
mod state;
mod stats;

pub use backoff::{ChangeLog, FailureKind, ReconnectPolicy, STABLE_LINK};
// The configuration model lives in culex-config (which must not depend on this crate's async
// runtime); re-exported so that users of bridges find it here too.
pub use culex_config::bridge::topic;
pub use culex_config::bridge::{
    BridgeConfig, BridgeProtocol, BridgeTls, InvalidBridge, StartType, TlsVersion, SBER_HOST,
    SBER_LOCAL_PREFIX, SBER_PORT,
};
pub use culex_config::bridge::{Direction, TopicRule};
pub use error::BridgeError;
pub use queue::{LocalAck, MemoryQueue, QueuedMessage};
pub use remote::tls_client_config;
pub use runtime::{BoxFuture, Bridge, BridgeHandle, LocalConnector};
pub use stats::{BridgeStats, LinkState};
