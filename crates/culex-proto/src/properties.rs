//! MQTT 5 properties.
//!
//! One struct holds every property; which ones a packet may carry is checked by the decoder
//! (`[MQTT-2.2.2-*]`, and per packet in chapter 3). Absent properties are `None` / empty. For
//! MQTT 3.1 and 3.1.1 every packet's properties are empty and nothing is encoded.

use bytes::Bytes;

/// A User Property: a UTF-8 string pair; order and duplicates are preserved.
pub type UserProperty = (String, String);

/// The MQTT 5 properties of a packet or will: [`PropertyValues`] behind a pointer that is
/// null while no property is set.
///
/// Most packets carry no properties (every MQTT 3.1.1 packet, most MQTT 5 acknowledgements),
/// and packets move by value through decoders and channels by the million: boxed, a
/// PUBACK is 16 bytes instead of 350. Reading a field of empty properties reads a shared empty
/// set; writing one allocates the set (`DerefMut`).
#[derive(Clone, Default)]
pub struct Properties(Option<Box<PropertyValues>>);

/// The values of [`Properties`], one field per MQTT 5 property.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyValues {
    /// 0x01 Payload Format Indicator (PUBLISH, will).
    pub payload_format_indicator: Option<u8>,
    /// 0x02 Message Expiry Interval in seconds (PUBLISH, will).
    pub message_expiry_interval: Option<u32>,
    /// 0x03 Content Type (PUBLISH, will).
    pub content_type: Option<String>,
    /// 0x08 Response Topic (PUBLISH, will).
    pub response_topic: Option<String>,
    /// 0x09 Correlation Data (PUBLISH, will).
    pub correlation_data: Option<Bytes>,
    /// 0x0B Subscription Identifier(s). SUBSCRIBE carries at most one; a PUBLISH from the
    /// server may carry several.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11 Session Expiry Interval in seconds (CONNECT, CONNACK, DISCONNECT).
    pub session_expiry_interval: Option<u32>,
    /// 0x12 Assigned Client Identifier (CONNACK).
    pub assigned_client_identifier: Option<String>,
    /// 0x13 Server Keep Alive (CONNACK).
    pub server_keep_alive: Option<u16>,
    /// 0x15 Authentication Method (CONNECT, CONNACK, AUTH).
    pub authentication_method: Option<String>,
    /// 0x16 Authentication Data (CONNECT, CONNACK, AUTH).
    pub authentication_data: Option<Bytes>,
    /// 0x17 Request Problem Information (CONNECT).
    pub request_problem_information: Option<u8>,
    /// 0x18 Will Delay Interval in seconds (will).
    pub will_delay_interval: Option<u32>,
    /// 0x19 Request Response Information (CONNECT).
    pub request_response_information: Option<u8>,
    /// 0x1A Response Information (CONNACK).
    pub response_information: Option<String>,
    /// 0x1C Server Reference (CONNACK, DISCONNECT).
    pub server_reference: Option<String>,
    /// 0x1F Reason String (acks, CONNACK, DISCONNECT, AUTH).
    pub reason_string: Option<String>,
    /// 0x21 Receive Maximum (CONNECT, CONNACK); never 0.
    pub receive_maximum: Option<u16>,
    /// 0x22 Topic Alias Maximum (CONNECT, CONNACK).
    pub topic_alias_maximum: Option<u16>,
    /// 0x23 Topic Alias (PUBLISH); never 0.
    pub topic_alias: Option<u16>,
    /// 0x24 Maximum QoS (CONNACK); 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25 Retain Available (CONNACK); 0 or 1.
    pub retain_available: Option<u8>,
    /// 0x26 User Property (all packets with properties).
    pub user_properties: Vec<UserProperty>,
    /// 0x27 Maximum Packet Size (CONNECT, CONNACK); never 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28 Wildcard Subscription Available (CONNACK); 0 or 1.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 Subscription Identifier Available (CONNACK); 0 or 1.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A Shared Subscription Available (CONNACK); 0 or 1.
    pub shared_subscription_available: Option<u8>,
}

/// What empty [`Properties`] read as.
static EMPTY: PropertyValues = PropertyValues {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl Properties {
    /// True when no property is set.
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(|v| *v == EMPTY)
    }

    /// The values, by value (to move fields out).
    pub fn into_values(self) -> PropertyValues {
        self.0.map(|v| *v).unwrap_or_default()
    }
}

impl std::ops::Deref for Properties {
    type Target = PropertyValues;

    fn deref(&self) -> &PropertyValues {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut PropertyValues {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<PropertyValues> for Properties {
    fn from(values: PropertyValues) -> Self {
        Properties(Some(Box::new(values)))
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Properties {}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Property identifiers (MQTT 5 section 2.2.2.2, table 2-4).
pub(crate) mod id {
    pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub(crate) const CONTENT_TYPE: u8 = 0x03;
    pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
    pub(crate) const CORRELATION_DATA: u8 = 0x09;
    pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
    pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
    pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
    pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
    pub(crate) const REASON_STRING: u8 = 0x1F;
    pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
    pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub(crate) const TOPIC_ALIAS: u8 = 0x23;
    pub(crate) const MAXIMUM_QOS: u8 = 0x24;
    pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
    pub(crate) const USER_PROPERTY: u8 = 0x26;
    pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// The property section being read or written: decides which identifiers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropCtx {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubResp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// The bit set of identifiers `ids` (evaluated at compile time).
const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut rest = ids;
    while let [first, tail @ ..] = rest {
        m |= 1u64 << *first;
        rest = tail;
    }
    m
}

impl PropCtx {
    /// Bit `i` set when identifier `i` may appear in this section.
    const fn allowed(self) -> u64 {
        use id::*;
        match self {
            PropCtx::Connect => {
                const {
                    mask(&[
                        SESSION_EXPIRY_INTERVAL,
                        AUTHENTICATION_METHOD,
                        AUTHENTICATION_DATA,
                        REQUEST_PROBLEM_INFORMATION,
                        REQUEST_RESPONSE_INFORMATION,
                        RECEIVE_MAXIMUM,
                        TOPIC_ALIAS_MAXIMUM,
                        USER_PROPERTY,
                        MAXIMUM_PACKET_SIZE,
                    ])
                }
            }
            PropCtx::Will => {
                const {
                    mask(&[
                        PAYLOAD_FORMAT_INDICATOR,
                        MESSAGE_EXPIRY_INTERVAL,
                        CONTENT_TYPE,
                        RESPONSE_TOPIC,
                        CORRELATION_DATA,
                        WILL_DELAY_INTERVAL,
                        USER_PROPERTY,
                    ])
                }
            }
            PropCtx::ConnAck => {
                const {
                    mask(&[
                        SESSION_EXPIRY_INTERVAL,
                        ASSIGNED_CLIENT_IDENTIFIER,
                        SERVER_KEEP_ALIVE,
                        AUTHENTICATION_METHOD,
                        AUTHENTICATION_DATA,
                        RESPONSE_INFORMATION,
                        SERVER_REFERENCE,
                        REASON_STRING,
                        RECEIVE_MAXIMUM,
                        TOPIC_ALIAS_MAXIMUM,
                        MAXIMUM_QOS,
                        RETAIN_AVAILABLE,
                        USER_PROPERTY,
                        MAXIMUM_PACKET_SIZE,
                        WILDCARD_SUBSCRIPTION_AVAILABLE,
                        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                        SHARED_SUBSCRIPTION_AVAILABLE,
                    ])
                }
            }
            PropCtx::Publish => {
                const {
                    mask(&[
                        PAYLOAD_FORMAT_INDICATOR,
                        MESSAGE_EXPIRY_INTERVAL,
                        CONTENT_TYPE,
                        RESPONSE_TOPIC,
                        CORRELATION_DATA,
                        SUBSCRIPTION_IDENTIFIER,
                        TOPIC_ALIAS,
                        USER_PROPERTY,
                    ])
                }
            }
            PropCtx::PubResp | PropCtx::SubAck | PropCtx::UnsubAck => {
                const { mask(&[REASON_STRING, USER_PROPERTY]) }
            }
            PropCtx::Subscribe => const { mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]) },
            PropCtx::Unsubscribe => const { mask(&[USER_PROPERTY]) },
            PropCtx::Disconnect => {
                const {
                    mask(&[
                        SESSION_EXPIRY_INTERVAL,
                        SERVER_REFERENCE,
                        REASON_STRING,
                        USER_PROPERTY,
                    ])
                }
            }
            PropCtx::Auth => {
                const {
                    mask(&[
                        AUTHENTICATION_METHOD,
                        AUTHENTICATION_DATA,
                        REASON_STRING,
                        USER_PROPERTY,
                    ])
                }
            }
        }
    }

    /// True when property `id` may appear in this section.
    pub(crate) fn allows(self, id: u8) -> bool {
        id < 64 && self.allowed() & (1u64 << id) != 0
    }

    /// True when property `id` may appear more than once in this section.
    pub(crate) fn repeatable(self, id: u8) -> bool {
        id == id::USER_PROPERTY || (id == id::SUBSCRIPTION_IDENTIFIER && self == PropCtx::Publish)
    }

    /// The packet (or will) the section belongs to, for error messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PropCtx::Connect => "CONNECT",
            PropCtx::Will => "CONNECT will",
            PropCtx::ConnAck => "CONNACK",
            PropCtx::Publish => "PUBLISH",
            PropCtx::PubResp => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            PropCtx::Subscribe => "SUBSCRIBE",
            PropCtx::SubAck => "SUBACK",
            PropCtx::Unsubscribe => "UNSUBSCRIBE",
            PropCtx::UnsubAck => "UNSUBACK",
            PropCtx::Disconnect => "DISCONNECT",
            PropCtx::Auth => "AUTH",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Packet, PubResp};

    /// Packets move by value from the decoder to the router: absent properties cost a null
    /// pointer, not the 340-byte set.
    #[test]
    fn packets_stay_small() {
        assert_eq!(std::mem::size_of::<Properties>(), 8);
        assert!(std::mem::size_of::<PubResp>() <= 16);
        let packet = std::mem::size_of::<Packet>();
        assert!(packet <= 80, "Packet is {packet} bytes");
    }

    #[test]
    fn empty_reads_as_default_and_writes_allocate() {
        let mut p = Properties::default();
        assert!(p.is_empty());
        assert_eq!(p.reason_string, None);
        assert_eq!(p, Properties::from(PropertyValues::default()));
        p.topic_alias = Some(3);
        assert!(!p.is_empty());
        assert_eq!(p.topic_alias, Some(3));
        p.topic_alias = None;
        assert!(p.is_empty(), "a set emptied again is empty");
        assert_eq!(p, Properties::default());
        assert_eq!(p.into_values(), PropertyValues::default());
    }
}
