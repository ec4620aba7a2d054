//! An async MQTT 3.1 / 3.1.1 / 5.0 client built on the sans-IO codec [`culex_proto`].
//!
//! The crate has three layers, each usable on its own:
//!
//! - [`ClientSession`]: the client role of the MQTT session as a deterministic state machine with
//!   no IO and no clock. It builds CONNECT, allocates packet identifiers, tracks QoS 1 and QoS 2
//!   publications in flight (both directions), answers acknowledgements and decides when a
//!   PINGREQ is due. The caller feeds it received packets ([`ClientSession::handle_packet`]) and the
//!   current time ([`ClientSession::handle_timeout`]) and drains packets to send
//!   ([`ClientSession::poll_transmit`]) and events ([`ClientSession::poll_event`]).
//! - [`transport`]: opens the byte stream the codec runs over: TCP, TLS (rustls, ring provider),
//!   and WebSocket (subprotocol `mqtt`) over either, all as one [`transport::BoxStream`].
//!   [`ws::WsByteStream`], the WebSocket-to-bytes adapter, is the broker's too.
//! - [`Connection`]: drives a session over a stream with tokio: `connect`, `publish`,
//!   `subscribe`, `unsubscribe`, `recv` (incoming publications), `disconnect`. Keepalive timers
//!   use tokio time, so tests can pause time.
//!
//! [`Backoff`] computes reconnect delays (decorrelated jitter) for callers that reconnect.
//!
//! ```no_run
//! # async fn demo() -> Result<(), culex_client::ClientError> {
//! use culex_client::{Connection, ConnectOptions, Message, transport::TransportOptions};
//! use culex_proto::QoS;
//!
//! let transport = TransportOptions::tcp("localhost", 1883);
//! let mut conn = Connection::connect(&transport, ConnectOptions::new("demo")).await?;
//! conn.publish(Message::new("greeting", "hello", QoS::AtLeastOnce)).await?;
//! conn.disconnect().await?;
//! # Ok(()) }
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod backoff;
mod connection;
mod error;
mod session;
pub mod transport;
pub mod ws;

pub use backoff::Backoff;
pub use connection::{Connection, Direction, PacketHook};
pub use error::{connack_text, ClientError};
pub use session::{ClientSession, ConnectOptions, Event, Message};
