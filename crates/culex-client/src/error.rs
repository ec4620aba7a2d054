//! The client's error type.

use culex_proto::{DecodeError, EncodeError, Protocol, ReasonCode};

/// Everything that can go wrong in a client session.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket operation failed (name resolution, connect, read, write).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration or handshake failed.
    #[error("TLS error: {0}")]
    Tls(String),
    /// The WebSocket handshake or framing failed.
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    /// The server refused the connection in its CONNACK.
    #[error("Connection error: {}", connack_text(*reason, *protocol))]
    Refused {
        /// The refusal reason (MQTT 3.1.1 return codes are mapped to their MQTT 5 reason).
        reason: ReasonCode,
        /// The protocol version of the connection, which decides the wire value.
        protocol: Protocol,
    },
    /// The server sent bytes that are not a valid MQTT packet.
    #[error("invalid packet from server: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded.
    #[error("cannot encode packet: {0}")]
    Encode(#[from] EncodeError),
    /// The server broke a protocol rule the codec cannot see (wrong packet for a client,
    /// acknowledgement before CONNACK, ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No PINGRESP (or other packet) arrived within the keepalive interval after a PINGREQ.
    #[error("keepalive timeout: no answer from the server")]
    KeepAliveTimeout,
    /// The server closed the connection without a DISCONNECT.
    #[error("connection closed by the server")]
    ConnectionClosed,
    /// The server sent DISCONNECT (MQTT 5 carries a reason).
    #[error("disconnected by the server: {}{}", reason_text(*reason), reason_string.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    ServerDisconnect {
        /// The DISCONNECT reason code.
        reason: ReasonCode,
        /// The Reason String property, if the server sent one.
        reason_string: Option<String>,
    },
    /// An operation did not complete in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// A topic name or filter is not valid.
    #[error("invalid topic {topic:?}: {why}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// Why it is invalid.
        why: String,
    },
    /// All 65,535 packet identifiers are in use.
    #[error("no packet identifier available: 65535 operations in flight")]
    NoPacketIdAvailable,
    /// The operation needs a connected session.
    #[error("not connected")]
    NotConnected,
    /// The packet is larger than the server's Maximum Packet Size.
    #[error("packet of {size} bytes exceeds the server's maximum packet size {max}")]
    PacketTooLarge {
        /// Encoded size of the packet.
        size: usize,
        /// The server's limit.
        max: u32,
    },
    /// The server does not support the requested QoS or retain (MQTT 5 CONNACK properties).
    #[error("not supported by the server: {0}")]
    Unsupported(String),
    /// A configuration value (certificate file, key file, URL) is unusable.
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The CONNACK code on the wire when the connection was refused: the 3.1/3.1.1 return code
    /// (1 to 5) or the MQTT 5 reason code (128 and above). `None` for other errors.
    pub fn connack_code(&self) -> Option<u8> {
        match self {
            ClientError::Refused { reason, protocol } => {
                Some(connack_wire_value(*reason, *protocol))
            }
            _ => None,
        }
    }
}

fn connack_wire_value(reason: ReasonCode, protocol: Protocol) -> u8 {
    if protocol.is_v5() {
        reason.as_u8()
    } else {
        reason.to_v3_connect_return_code() as u8
    }
}

/// A human description of a CONNACK refusal, worded like Mosquitto's clients: for 3.1/3.1.1
/// "Connection Refused: not authorised.", for MQTT 5 the reason code's name ("Not authorized").
pub fn connack_text(reason: ReasonCode, protocol: Protocol) -> String {
    if protocol.is_v5() {
        return reason_text(reason).to_string();
    }
    match connack_wire_value(reason, protocol) {
        0 => "Connection Accepted.",
        1 => "Connection Refused: unacceptable protocol version.",
        2 => "Connection Refused: identifier rejected.",
        3 => "Connection Refused: broker unavailable.",
        4 => "Connection Refused: bad username or password.",
        5 => "Connection Refused: not authorised.",
        _ => "Connection Refused: unknown reason.",
    }
    .to_string()
}

/// The specification's name of an MQTT 5 reason code.
pub(crate) fn reason_text(reason: ReasonCode) -> &'static str {
    use ReasonCode::*;
    match reason {
        Success => "Success",
        NormalDisconnection => "Normal disconnection",
        GrantedQoS0 => "Granted QoS 0",
        GrantedQoS1 => "Granted QoS 1",
        GrantedQoS2 => "Granted QoS 2",
        DisconnectWithWillMessage => "Disconnect with Will Message",
        NoMatchingSubscribers => "No matching subscribers",
        NoSubscriptionExisted => "No subscription existed",
        ContinueAuthentication => "Continue authentication",
        ReAuthenticate => "Re-authenticate",
        UnspecifiedError => "Unspecified error",
        MalformedPacket => "Malformed Packet",
        ProtocolError => "Protocol Error",
        ImplementationSpecificError => "Implementation specific error",
        UnsupportedProtocolVersion => "Unsupported Protocol Version",
        ClientIdentifierNotValid => "Client Identifier not valid",
        BadUserNameOrPassword => "Bad User Name or Password",
        NotAuthorized => "Not authorized",
        ServerUnavailable => "Server unavailable",
        ServerBusy => "Server busy",
        Banned => "Banned",
        ServerShuttingDown => "Server shutting down",
        BadAuthenticationMethod => "Bad authentication method",
        KeepAliveTimeout => "Keep Alive timeout",
        SessionTakenOver => "Session taken over",
        TopicFilterInvalid => "Topic Filter invalid",
        TopicNameInvalid => "Topic Name invalid",
        PacketIdentifierInUse => "Packet Identifier in use",
        PacketIdentifierNotFound => "Packet Identifier not found",
        ReceiveMaximumExceeded => "Receive Maximum exceeded",
        TopicAliasInvalid => "Topic Alias invalid",
        PacketTooLarge => "Packet too large",
        MessageRateTooHigh => "Message rate too high",
        QuotaExceeded => "Quota exceeded",
        AdministrativeAction => "Administrative action",
        PayloadFormatInvalid => "Payload format invalid",
        RetainNotSupported => "Retain not supported",
        QoSNotSupported => "QoS not supported",
        UseAnotherServer => "Use another server",
        ServerMoved => "Server moved",
        SharedSubscriptionsNotSupported => "Shared Subscriptions not supported",
        ConnectionRateExceeded => "Connection rate exceeded",
        MaximumConnectTime => "Maximum connect time",
        SubscriptionIdentifiersNotSupported => "Subscription Identifiers not supported",
        WildcardSubscriptionsNotSupported => "Wildcard Subscriptions not supported",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_and_texts() {
        let v3 = ClientError::Refused {
            reason: ReasonCode::NotAuthorized,
            protocol: Protocol::V311,
        };
        assert_eq!(v3.connack_code(), Some(5));
        assert_eq!(
            v3.to_string(),
            "Connection error: Connection Refused: not authorised."
        );
        let v5 = ClientError::Refused {
            reason: ReasonCode::NotAuthorized,
            protocol: Protocol::V5,
        };
        assert_eq!(v5.connack_code(), Some(135));
        assert_eq!(v5.to_string(), "Connection error: Not authorized");
    }
}
