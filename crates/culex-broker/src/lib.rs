//! The Culex broker core.
//!
//! Everything here is driven by its caller: the [`Router`] is a plain struct that owns sessions,
//! subscriptions, retained messages and wills, and is fed [`Command`]s together with the current
//! time. Nothing in this crate reads the clock or touches a socket; connection tasks (in the
//! `culex` binary) decode packets, send commands, and write what arrives in their [`Outbox`].
//! That keeps every rule here testable with a virtual clock.

mod api;
pub mod log_clip;
pub mod log_gate;
mod message;
mod outbox;
pub mod persist;
pub mod retained;
mod router;
mod session;
mod settings;
mod stats;
pub mod trie;

pub use api::{
    AccessPolicy, Command, ConnId, ConnectOutcome, ConnectRequest, Delivery, DisconnectKind,
    InterestSink, Outbound, QueueObserver, QueuePolicy, SharedPlacement, SubscriptionIds,
};
pub use message::Message;
pub use outbox::{outbox, Outbox, OutboxReceiver, TryRecvError, TrySendError};
pub use router::{ClusterReport, Router};
pub use settings::BrokerSettings;
pub use stats::{RouterSnapshot, RouterStats};
