//! Decode errors. Each carries the specification rule it enforces and maps to the MQTT 5
//! reason code of the DISCONNECT a server sends before closing the connection.

use crate::reason::ReasonCode;

/// Why bytes received could not be decoded into a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet is not well formed: `rule` is the specification rule it breaks, e.g.
    /// `"[MQTT-3.3.2-2]"`, and `what` says what was wrong.
    #[error("{rule} malformed packet: {what}")]
    Malformed {
        /// Rule identifier from the specification, or the section number.
        rule: &'static str,
        /// Human-readable description of the violation.
        what: &'static str,
    },
    /// The packet is well formed but breaks a protocol rule (wrong place, wrong combination).
    #[error("{rule} protocol error: {what}")]
    Protocol {
        /// Rule identifier from the specification.
        rule: &'static str,
        /// Human-readable description of the violation.
        what: &'static str,
    },
    /// The remaining length announces a packet larger than the allowed maximum. Detected from
    /// the fixed header alone, before any of the body is buffered.
    #[error("[MQTT-3.2.2-15] packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge {
        /// Total size of the announced packet (fixed header included).
        size: u64,
        /// The limit in force.
        max: u32,
    },
    /// CONNECT carries a protocol name/level this codec does not speak.
    #[error("[MQTT-3.1.2-2] unsupported protocol version: name {name:?}, level {level}")]
    UnsupportedProtocol {
        /// The protocol name received.
        name: String,
        /// The protocol level received.
        level: u8,
    },
}

impl DecodeError {
    /// The MQTT 5 reason code for the DISCONNECT (or CONNACK) sent because of this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed { .. } => ReasonCode::MalformedPacket,
            DecodeError::Protocol { .. } => ReasonCode::ProtocolError,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UnsupportedProtocolVersion,
        }
    }
}
