//! Sans-IO MQTT codec for protocol versions 3.1, 3.1.1 and 5.0.
//!
//! The crate knows nothing about sockets or clocks. [`decode`] takes a buffer of received bytes
//! and returns at most one complete [`Packet`], `Ok(None)` when more bytes are needed, or a
//! [`DecodeError`] naming the specification rule the input broke. [`encode`] appends a packet to
//! an output buffer. [`topic`] validates topic names and filters and matches them.
//!
//! Every MUST of the specification that a receiver can check is enforced on decode, and each
//! violation carries its rule identifier (for example `[MQTT-3.3.2-2]`) and the MQTT 5 reason code
//! a server sends in its DISCONNECT.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reason;
pub mod topic;

pub use decode::{decode, peek_header, take_bridge_bit, FixedHeader};
pub use encode::{
    aliased_publish_encoded_len, encode, encode_aliased_publish, encode_publish, encoded_len,
    publish_encoded_len, AliasedPublish, EncodeError, PublishView,
};
pub use error::DecodeError;
pub use packet::*;
pub use properties::{Properties, PropertyValues, UserProperty};
pub use reason::ReasonCode;
