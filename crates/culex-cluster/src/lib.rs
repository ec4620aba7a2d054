//! Scale-out for Culex: several nodes act as one MQTT broker over a NATS JetStream backplane
//! (`[cluster]` / `cluster_*` in the configuration; nothing here runs without it).
//!
//! Each node runs one [`link`]: an internal client of its own broker (like a bridge) that
//! subscribes to every topic with MQTT 5 No Local and hands what local clients publish to
//! the backplane, and that publishes what other nodes sent into its broker, where the ordinary
//! router delivers it. QoS 0 travels on core NATS subjects (at most once, as QoS 0 promises);
//! QoS 1 and 2 are stored in a replicated JetStream stream before the local router is told the
//! link has them, and each node reads the stream through its own durable consumer, confirming
//! each message only once its broker has accepted it (at least once end to end). See
//! docs/cluster.md for what is shared, the guarantees and their limits.

pub mod bucket;
pub mod claims;
pub mod departures;
pub mod envelope;
pub mod interest;
pub mod interest_sync;
pub mod link;
pub mod records;
pub mod replay;
pub mod retained;
pub mod sessions;
pub mod shared;
pub mod stats;
pub mod subject;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use link::{spawn, Settings};
pub use stats::ClusterStats;
