//! Decoding: bytes to packets.
//!
//! [`decode`] checks every rule a receiver can check on a single packet; rules that need
//! connection state (topic alias ranges, packet identifiers in flight, direction of a packet)
//! are the caller's.

mod props;
mod reader;

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::*;
use crate::properties::{PropCtx, Properties};
use crate::reason::ReasonCode;
use crate::topic::TopicError;
use reader::{malformed, parse_varint, protocol_error, Reader};

type Result<T> = std::result::Result<T, DecodeError>;

/// Fixed header of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Packet type, the high nibble of the first byte (1 = CONNECT ... 15 = AUTH).
    pub packet_type: u8,
    /// Flags, the low nibble of the first byte.
    pub flags: u8,
    /// Remaining length: the size of the variable header and payload.
    pub remaining_length: u32,
    /// Size of the fixed header itself (2 to 5 bytes).
    pub header_len: usize,
}

impl FixedHeader {
    /// Size of the whole packet, fixed header included.
    pub fn packet_len(&self) -> u64 {
        self.header_len as u64 + u64::from(self.remaining_length)
    }
}

/// Reads the fixed header from the front of `buf` without consuming it. `Ok(None)` when the
/// header is incomplete.
///
/// The remaining length must be a Variable Byte Integer of at most 4 bytes in its shortest form
/// (`[MQTT-1.5.5-1]`), and the whole packet must fit in `max_packet_size` bytes, otherwise
/// [`DecodeError::PacketTooLarge`] is returned before any of the body has arrived. Pass
/// `u32::MAX` for no limit beyond the protocol's own.
pub fn peek_header(buf: &[u8], max_packet_size: u32) -> Result<Option<FixedHeader>> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let Some((remaining_length, len)) = parse_varint(rest)? else {
        return Ok(None);
    };
    let header = FixedHeader {
        packet_type: first >> 4,
        flags: first & 0x0F,
        remaining_length,
        header_len: 1 + len,
    };
    let size = header.packet_len();
    if size > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok(Some(header))
}

/// Mosquitto's bridge extension: a bridge connecting with `try_private` sets the top bit of the
/// CONNECT protocol level (0x83 for MQTT 3.1, 0x84 for 3.1.1) to say "I am a bridge". If the
/// buffer starts with such a CONNECT (header and protocol name complete), clears the bit so
/// the packet decodes as the plain version, and returns true. Anything else is left alone.
pub fn take_bridge_bit(buf: &mut BytesMut) -> bool {
    let Some(&first) = buf.first() else {
        return false;
    };
    if first != 0x10 {
        return false;
    }
    let Ok(Some((_, len))) = parse_varint(&buf[1..]) else {
        return false;
    };
    let start = 1 + len;
    for (name, level) in [(&b"MQTT"[..], 4u8), (&b"MQIsdp"[..], 3u8)] {
        let end = start + 2 + name.len();
        let Some(head) = buf.get(start..=end) else {
            continue;
        };
        let name_len = usize::from(u16::from_be_bytes([head[0], head[1]]));
        if name_len == name.len()
            && &head[2..2 + name.len()] == name
            && head[2 + name.len()] == level | 0x80
        {
            if let Some(b) = buf.get_mut(end) {
                *b = level;
                return true;
            }
        }
    }
    false
}

/// Decodes one packet from the front of `buf`, consuming its bytes only when a whole packet was
/// decoded: `Ok(None)` (more bytes needed) and errors leave `buf` unchanged.
///
/// `protocol` is `None` before the connection's CONNECT was received: then only CONNECT is
/// accepted (`[MQTT-3.1.0-1]`) and its own protocol name and level decide how it is parsed. With
/// `Some(p)` a CONNECT is a protocol error (`[MQTT-3.1.0-2]`) and other packets are parsed per
/// `p`. Packets of both directions are decoded; rejecting the wrong direction is the caller's
/// job. Binary data and payloads are slices of the received buffer (no copy).
///
/// The first byte is checked as soon as it arrives, and the size limit as soon as the fixed
/// header is complete, so an invalid or oversized packet is refused before its body is read.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_packet_size: u32,
) -> Result<Option<Packet>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first >> 4, first & 0x0F, protocol)?;
    let Some(header) = peek_header(buf, max_packet_size)? else {
        return Ok(None);
    };
    let total = usize::try_from(header.packet_len()).unwrap_or(usize::MAX);
    if buf.len() < total {
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    let body = frame.slice(header.header_len.min(frame.len())..);
    match parse(header.packet_type, header.flags, body, protocol) {
        Ok(packet) => Ok(Some(packet)),
        Err(e) => {
            // Put the packet back so that an error leaves the buffer as it was.
            let mut restored = BytesMut::with_capacity(frame.len() + buf.len());
            restored.extend_from_slice(&frame);
            restored.extend_from_slice(buf);
            *buf = restored;
            Err(e)
        }
    }
}

/// Checks the packet type and fixed-header flags (`[MQTT-2.1.3-1]`) and that CONNECT comes
/// first and only once.
fn check_first_byte(packet_type: u8, flags: u8, protocol: Option<Protocol>) -> Result<()> {
    match protocol {
        None if packet_type != 1 => {
            return Err(protocol_error(
                "[MQTT-3.1.0-1]",
                "the first packet of a connection must be CONNECT",
            ))
        }
        Some(_) if packet_type == 1 => {
            return Err(protocol_error("[MQTT-3.1.0-2]", "second CONNECT packet"))
        }
        _ => {}
    }
    let expected = match packet_type {
        0 => return Err(malformed("[2.1.2]", "reserved packet type 0")),
        15 if protocol != Some(Protocol::V5) => {
            return Err(malformed(
                "[2.1.2]",
                "packet type 15 is reserved before MQTT 5",
            ))
        }
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(malformed("[MQTT-3.3.1-4]", "PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(malformed("[MQTT-3.3.1-2]", "DUP set on a QoS 0 PUBLISH"));
            }
            return Ok(());
        }
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(malformed("[MQTT-2.1.3-1]", "invalid fixed header flags"));
    }
    Ok(())
}

/// Parses a complete packet body.
fn parse(packet_type: u8, flags: u8, body: Bytes, protocol: Option<Protocol>) -> Result<Packet> {
    let mut r = Reader::new(body);
    let packet = if packet_type == 1 {
        Packet::Connect(Box::new(connect(&mut r)?))
    } else {
        let Some(p) = protocol else {
            return Err(protocol_error(
                "[MQTT-3.1.0-1]",
                "the first packet of a connection must be CONNECT",
            ));
        };
        match packet_type {
            2 => Packet::ConnAck(connack(&mut r, p)?),
            3 => Packet::Publish(publish(&mut r, flags, p)?),
            4 => Packet::PubAck(pub_resp(&mut r, packet_type, p)?),
            5 => Packet::PubRec(pub_resp(&mut r, packet_type, p)?),
            6 => Packet::PubRel(pub_resp(&mut r, packet_type, p)?),
            7 => Packet::PubComp(pub_resp(&mut r, packet_type, p)?),
            8 => Packet::Subscribe(subscribe(&mut r, p)?),
            9 => Packet::SubAck(suback(&mut r, p)?),
            10 => Packet::Unsubscribe(unsubscribe(&mut r, p)?),
            11 => Packet::UnsubAck(unsuback(&mut r, p)?),
            12 => Packet::PingReq,
            13 => Packet::PingResp,
            14 => Packet::Disconnect(disconnect(&mut r, p)?),
            15 if p.is_v5() => Packet::Auth(auth(&mut r)?),
            _ => return Err(malformed("[2.1.2]", "reserved packet type")),
        }
    };
    r.finish()?;
    Ok(packet)
}

fn read_properties(r: &mut Reader, p: Protocol, ctx: PropCtx) -> Result<Properties> {
    if p.is_v5() {
        props::read(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn packet_id(r: &mut Reader) -> Result<u16> {
    match r.u16("truncated packet identifier")? {
        0 => Err(protocol_error("[MQTT-2.2.1-3]", "packet identifier 0")),
        id => Ok(id),
    }
}

fn reason(r: &mut Reader, packet_type: u8) -> Result<ReasonCode> {
    let byte = r.u8("truncated reason code")?;
    ReasonCode::from_byte(packet_type, byte)
        .ok_or_else(|| malformed("[2.4]", "invalid reason code for this packet"))
}

fn connect(r: &mut Reader) -> Result<Connect> {
    let name = r.string("truncated protocol name")?;
    let level = r.u8("truncated protocol level")?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        ("MQIsdp", 3) => Protocol::V31,
        _ => return Err(DecodeError::UnsupportedProtocol { name, level }),
    };
    let flags = r.u8("truncated connect flags")?;
    if flags & 0x01 != 0 {
        return Err(malformed("[MQTT-3.1.2-3]", "CONNECT reserved flag is set"));
    }
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos != 0 {
        return Err(malformed(
            "[MQTT-3.1.2-11]",
            "Will QoS set without the Will Flag",
        ));
    }
    if !will_flag && will_retain {
        return Err(malformed(
            "[MQTT-3.1.2-13]",
            "Will Retain set without the Will Flag",
        ));
    }
    let will_qos =
        QoS::from_u8(will_qos).ok_or_else(|| malformed("[MQTT-3.1.2-12]", "Will QoS 3"))?;
    if !protocol.is_v5() && password_flag && !username_flag {
        // The 3.1.1 id; MQTT 5 allows a password without a user name.
        return Err(malformed(
            "3.1.1 [MQTT-3.1.2-22]",
            "Password Flag set without the User Name Flag",
        ));
    }
    let keep_alive = r.u16("truncated keep alive")?;
    let properties = read_properties(r, protocol, PropCtx::Connect)?;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(protocol_error(
            "[3.1.2.11.10]",
            "Authentication Data without Authentication Method",
        ));
    }
    let client_id = r.string("truncated client identifier")?;
    let will = if will_flag {
        let properties = read_properties(r, protocol, PropCtx::Will)?;
        let topic = r.string("truncated will topic")?;
        check_topic_name(&topic, "[MQTT-3.1.3-11]")?;
        let payload = r.binary("truncated will payload")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = username_flag
        .then(|| r.string("truncated user name"))
        .transpose()?;
    let password = password_flag
        .then(|| r.binary("truncated password"))
        .transpose()?;
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader, p: Protocol) -> Result<ConnAck> {
    let flags = r.u8("truncated connect acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(malformed(
            "[MQTT-3.2.2-1]",
            "CONNACK reserved flags are set",
        ));
    }
    let code = r.u8("truncated connect reason code")?;
    let reason_code = if p.is_v5() {
        ReasonCode::from_byte(2, code)
    } else {
        ReasonCode::from_v3_connect_return_code(code)
    }
    .ok_or_else(|| malformed("[3.2.2.2]", "invalid CONNACK reason code"))?;
    let session_present = flags & 0x01 != 0;
    if session_present && code != 0 {
        return Err(protocol_error(
            "[MQTT-3.2.2-6]",
            "Session Present set in a refusing CONNACK",
        ));
    }
    let properties = read_properties(r, p, PropCtx::ConnAck)?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn publish(r: &mut Reader, flags: u8, p: Protocol) -> Result<Publish> {
    let qos = QoS::from_u8((flags >> 1) & 0b11)
        .ok_or_else(|| malformed("[MQTT-3.3.1-4]", "PUBLISH with QoS 3"))?;
    let topic = r.string("truncated topic name")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(packet_id(r)?),
    };
    let properties = read_properties(r, p, PropCtx::Publish)?;
    if topic.is_empty() && p.is_v5() {
        if properties.topic_alias.is_none() {
            return Err(protocol_error(
                "[3.3.2.1]",
                "empty topic name without a Topic Alias",
            ));
        }
    } else {
        check_topic_name(&topic, "[MQTT-3.3.2-2]")?;
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

fn pub_resp(r: &mut Reader, packet_type: u8, p: Protocol) -> Result<PubResp> {
    let mut resp = PubResp::new(packet_id(r)?);
    // MQTT 5 3.4.2.1: the reason code may be omitted (Success), and the property length too.
    if p.is_v5() && !r.is_empty() {
        resp.reason_code = reason(r, packet_type)?;
        if !r.is_empty() {
            resp.properties = props::read(r, PropCtx::PubResp)?;
        }
    }
    Ok(resp)
}

fn subscribe(r: &mut Reader, p: Protocol) -> Result<Subscribe> {
    let packet_id = packet_id(r)?;
    let properties = read_properties(r, p, PropCtx::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("truncated topic filter")?;
        let options = subscription_options(r.u8("truncated subscription options")?, &filter, p)?;
        check_topic_filter(&filter)?;
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        // 5.0 numbers this rule [MQTT-3.8.3-2]; 3.1.1 [MQTT-3.8.3-3].
        let rule = if p.is_v5() {
            "[MQTT-3.8.3-2]"
        } else {
            "3.1.1 [MQTT-3.8.3-3]"
        };
        return Err(protocol_error(rule, "SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn subscription_options(byte: u8, filter: &str, p: Protocol) -> Result<SubscriptionOptions> {
    if !p.is_v5() {
        let qos = QoS::from_u8(byte).ok_or_else(|| {
            malformed(
                "3.1.1 [MQTT-3.8.3-4]",
                "requested QoS byte is not 0, 1 or 2",
            )
        })?;
        return Ok(SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        });
    }
    if byte & 0xC0 != 0 {
        return Err(malformed(
            "[MQTT-3.8.3-5]",
            "subscription options reserved bits are set",
        ));
    }
    let qos = QoS::from_u8(byte & 0b11)
        .ok_or_else(|| protocol_error("[3.8.3.1]", "subscription Maximum QoS 3"))?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(protocol_error("[3.8.3.1]", "Retain Handling 3")),
    };
    let no_local = byte & 0b0100 != 0;
    if no_local && filter.starts_with("$share/") {
        return Err(protocol_error(
            "[MQTT-3.8.3-4]",
            "No Local set on a shared subscription",
        ));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn suback(r: &mut Reader, p: Protocol) -> Result<SubAck> {
    let packet_id = packet_id(r)?;
    let properties = read_properties(r, p, PropCtx::SubAck)?;
    let mut reason_codes = Vec::new();
    while !r.is_empty() {
        let byte = r.u8("truncated SUBACK reason code")?;
        let code = if p.is_v5() {
            ReasonCode::from_byte(9, byte)
        } else {
            match byte {
                0x80 => Some(ReasonCode::UnspecifiedError),
                _ => QoS::from_u8(byte).map(ReasonCode::granted),
            }
        };
        reason_codes
            .push(code.ok_or_else(|| malformed("[MQTT-3.9.3-2]", "invalid SUBACK return code"))?);
    }
    if reason_codes.is_empty() {
        return Err(protocol_error(
            "[MQTT-3.9.3-1]",
            "SUBACK without reason codes",
        ));
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, p: Protocol) -> Result<Unsubscribe> {
    let packet_id = packet_id(r)?;
    let properties = read_properties(r, p, PropCtx::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("truncated topic filter")?;
        check_topic_filter(&filter)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(protocol_error(
            "[MQTT-3.10.3-2]",
            "UNSUBSCRIBE without topic filters",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader, p: Protocol) -> Result<UnsubAck> {
    let packet_id = packet_id(r)?;
    let mut ack = UnsubAck {
        packet_id,
        reason_codes: Vec::new(),
        properties: Properties::default(),
    };
    if p.is_v5() {
        ack.properties = props::read(r, PropCtx::UnsubAck)?;
        while !r.is_empty() {
            ack.reason_codes.push(reason(r, 11)?);
        }
        if ack.reason_codes.is_empty() {
            return Err(protocol_error(
                "[MQTT-3.11.3-1]",
                "UNSUBACK without reason codes",
            ));
        }
    }
    Ok(ack)
}

fn disconnect(r: &mut Reader, p: Protocol) -> Result<Disconnect> {
    let mut d = Disconnect::new(ReasonCode::NormalDisconnection);
    // MQTT 5 3.14.2.1: an empty body means Normal disconnection without properties.
    if p.is_v5() && !r.is_empty() {
        d.reason_code = reason(r, 14)?;
        if !r.is_empty() {
            d.properties = props::read(r, PropCtx::Disconnect)?;
        }
    }
    Ok(d)
}

fn auth(r: &mut Reader) -> Result<Auth> {
    // MQTT 5 3.15.2.1: an empty body means Success without properties.
    if r.is_empty() {
        return Ok(Auth {
            reason_code: ReasonCode::Success,
            properties: Properties::default(),
        });
    }
    let reason_code = reason(r, 15)?;
    let properties = props::read(r, PropCtx::Auth)?;
    if properties.authentication_method.is_none() {
        return Err(protocol_error(
            "[3.15.2.2.2]",
            "AUTH without Authentication Method",
        ));
    }
    Ok(Auth {
        reason_code,
        properties,
    })
}

/// Checks a topic name (PUBLISH, will, Response Topic); `rule` is the context's rule against
/// wildcards in it. A malformed name is a Malformed Packet: reason code 0x90 is for names that
/// are well formed but refused.
fn check_topic_name(topic: &str, rule: &'static str) -> Result<()> {
    crate::topic::validate_topic_name(topic).map_err(|e| topic_error(e, rule))
}

/// Checks a topic filter (SUBSCRIBE, UNSUBSCRIBE). A malformed filter is a Malformed Packet:
/// reason code 0x8F is for filters that are well formed but refused.
fn check_topic_filter(filter: &str) -> Result<()> {
    crate::topic::validate_topic_filter(filter).map_err(|e| topic_error(e, "[MQTT-4.7.0-1]"))
}

fn topic_error(e: TopicError, wildcard_rule: &'static str) -> DecodeError {
    let (rule, what) = match e {
        TopicError::Empty => ("[MQTT-4.7.3-1]", "empty topic name or filter"),
        TopicError::TooLong => ("[MQTT-4.7.3-3]", "topic longer than 65535 bytes"),
        TopicError::NullCharacter => ("[MQTT-4.7.3-2]", "topic contains U+0000"),
        TopicError::WildcardInName => (wildcard_rule, "wildcard in a topic name"),
        TopicError::MultiLevelWildcard => ("[MQTT-4.7.1-1]", "misplaced '#' in a topic filter"),
        TopicError::SingleLevelWildcard => ("[MQTT-4.7.1-2]", "misplaced '+' in a topic filter"),
        TopicError::EmptyShareName => ("[MQTT-4.8.2-1]", "empty ShareName"),
        TopicError::InvalidShareName => ("[MQTT-4.8.2-2]", "invalid ShareName"),
        TopicError::EmptySharedFilter => ("[MQTT-4.8.2-2]", "empty shared subscription filter"),
    };
    malformed(rule, what)
}
