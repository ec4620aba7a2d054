//! Encoding: packets to bytes.
//!
//! Every packet is written twice by the same code: once into a byte counter (which also runs
//! every check, so a failing `encode` leaves the output untouched) and once into the buffer.
//! MQTT 3.1 / 3.1.1 forms drop what those versions cannot carry (properties, reason codes of
//! acknowledgements and DISCONNECT). MQTT 5 forms are the shortest the specification allows.
//!
//! The encoder checks the structure (sizes, packet identifiers, reason codes and properties
//! allowed in the packet) but not the syntax of topic names and filters, which the caller builds.

mod props;

use bytes::BytesMut;

use crate::packet::*;
use crate::properties::{PropCtx, Properties};
use crate::reason::ReasonCode;

/// Largest remaining length (and Variable Byte Integer) the protocol can express.
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet body exceeds the largest remaining length, 268,435,455 bytes.
    #[error("packet body of {size} bytes exceeds the maximum remaining length 268435455")]
    PacketTooLarge {
        /// Size of the body (variable header and payload).
        size: usize,
    },
    /// A string or binary field exceeds 65,535 bytes.
    #[error("{what} of {len} bytes exceeds 65535 bytes")]
    TooLong {
        /// Which kind of field.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// A Variable Byte Integer value (a Subscription Identifier) exceeds 268,435,455.
    #[error("variable byte integer {value} exceeds 268435455")]
    VarIntOutOfRange {
        /// The value.
        value: u32,
    },
    /// The packet breaks a rule of the protocol version it is encoded for.
    #[error("cannot encode {packet}: {what}")]
    Invalid {
        /// Packet type name.
        packet: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}

type Result<T = ()> = std::result::Result<T, EncodeError>;

fn invalid(packet: &'static str, what: &'static str) -> EncodeError {
    EncodeError::Invalid { packet, what }
}

/// Where encoded bytes go: a buffer, or a counter measuring the size.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 = self.0.saturating_add(bytes.len());
    }
}

impl Sink for BytesMut {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

fn put_u8<S: Sink>(s: &mut S, v: u8) {
    s.put(&[v]);
}

fn put_u16<S: Sink>(s: &mut S, v: u16) {
    s.put(&v.to_be_bytes());
}

fn put_u32<S: Sink>(s: &mut S, v: u32) {
    s.put(&v.to_be_bytes());
}

fn put_varint<S: Sink>(s: &mut S, value: u32) -> Result {
    if value as usize > MAX_REMAINING_LENGTH {
        return Err(EncodeError::VarIntOutOfRange { value });
    }
    let mut bytes = [0u8; 4];
    let mut len = 0;
    let mut rest = value;
    for slot in bytes.iter_mut() {
        let mut b = (rest & 0x7F) as u8;
        rest >>= 7;
        if rest != 0 {
            b |= 0x80;
        }
        *slot = b;
        len += 1;
        if rest == 0 {
            break;
        }
    }
    s.put(bytes.get(..len).unwrap_or_default());
    Ok(())
}

fn put_binary<S: Sink>(s: &mut S, what: &'static str, v: &[u8]) -> Result {
    let len = u16::try_from(v.len()).map_err(|_| EncodeError::TooLong { what, len: v.len() })?;
    put_u16(s, len);
    s.put(v);
    Ok(())
}

fn put_str<S: Sink>(s: &mut S, v: &str) -> Result {
    put_binary(s, "string", v.as_bytes())
}

fn put_packet_id<S: Sink>(s: &mut S, packet: &'static str, id: u16) -> Result {
    if id == 0 {
        return Err(invalid(packet, "packet identifier 0"));
    }
    put_u16(s, id);
    Ok(())
}

fn put_reason<S: Sink>(s: &mut S, packet: &'static str, t: u8, code: ReasonCode) -> Result {
    if !code.is_valid_for(t) {
        return Err(invalid(packet, "reason code not allowed in this packet"));
    }
    put_u8(s, code.as_u8());
    Ok(())
}

/// Something that can be written as one control packet.
trait Body {
    fn first_byte(&self) -> u8;
    fn write<S: Sink>(&self, p: Protocol, s: &mut S) -> Result;
}

/// Size of the body, checked against the largest remaining length.
fn body_len<B: Body>(b: &B, p: Protocol) -> Result<usize> {
    let mut c = Counter(0);
    b.write(p, &mut c)?;
    if c.0 > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge { size: c.0 });
    }
    Ok(c.0)
}

fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn encode_body<B: Body>(b: &B, p: Protocol, out: &mut BytesMut) -> Result {
    let len = body_len(b, p)?;
    out.reserve(1 + varint_len(len) + len);
    put_u8(out, b.first_byte());
    put_varint(
        out,
        u32::try_from(len).map_err(|_| EncodeError::PacketTooLarge { size: len })?,
    )?;
    b.write(p, out)
}

fn encoded_body_len<B: Body>(b: &B, p: Protocol) -> Result<usize> {
    let len = body_len(b, p)?;
    Ok(1 + varint_len(len) + len)
}

/// Appends the encoding of `packet` for `protocol` to `out`. On error nothing is appended.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) -> Result {
    encode_body(packet, protocol, out)
}

/// Size in bytes [`encode`] would write (fixed header included), for honouring a peer's
/// Maximum Packet Size.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> Result<usize> {
    encoded_body_len(packet, protocol)
}

/// Borrowed view of a PUBLISH for the broker's hot path: encodes a message for one subscriber
/// without building a [`Publish`] (no `String` or [`Properties`] clones).
#[derive(Debug, Clone, Copy)]
pub struct PublishView<'a> {
    /// DUP flag.
    pub dup: bool,
    /// QoS level.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name (may be empty in MQTT 5 when `properties` has a Topic Alias).
    pub topic: &'a str,
    /// Packet identifier: `Some` (non-zero) exactly when `qos` is 1 or 2.
    pub packet_id: Option<u16>,
    /// MQTT 5 properties; ignored for older versions.
    pub properties: &'a Properties,
    /// Application payload.
    pub payload: &'a [u8],
}

impl<'a> From<&'a Publish> for PublishView<'a> {
    fn from(p: &'a Publish) -> Self {
        PublishView {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            packet_id: p.packet_id,
            properties: &p.properties,
            payload: &p.payload,
        }
    }
}

/// Appends the encoding of the PUBLISH `view` for `protocol` to `out`. On error nothing is
/// appended.
pub fn encode_publish(view: &PublishView<'_>, protocol: Protocol, out: &mut BytesMut) -> Result {
    encode_body(view, protocol, out)
}

/// Size in bytes [`encode_publish`] would write (fixed header included).
pub fn publish_encoded_len(view: &PublishView<'_>, protocol: Protocol) -> Result<usize> {
    encoded_body_len(view, protocol)
}

/// A PUBLISH sent with a server-assigned Topic Alias (MQTT 5 only): `topic` is the full name
/// when the alias is being set, empty when the alias alone names it. The properties of the
/// view are written as they are, followed by the Topic Alias.
#[derive(Debug, Clone, Copy)]
pub struct AliasedPublish<'a> {
    /// The PUBLISH; its `topic` is what goes on the wire (empty to use the alias alone).
    pub view: PublishView<'a>,
    /// The Topic Alias, 1 to the client's Topic Alias Maximum.
    pub alias: u16,
}

/// Appends the encoding of an aliased PUBLISH (MQTT 5) to `out`. On error nothing is appended.
pub fn encode_aliased_publish(publish: &AliasedPublish<'_>, out: &mut BytesMut) -> Result {
    encode_body(publish, Protocol::V5, out)
}

/// Size in bytes [`encode_aliased_publish`] would write (fixed header included).
pub fn aliased_publish_encoded_len(publish: &AliasedPublish<'_>) -> Result<usize> {
    encoded_body_len(publish, Protocol::V5)
}

impl Body for AliasedPublish<'_> {
    fn first_byte(&self) -> u8 {
        self.view.first_byte()
    }

    fn write<S: Sink>(&self, p: Protocol, s: &mut S) -> Result {
        if !p.is_v5() {
            return Err(invalid("PUBLISH", "Topic Alias before MQTT 5"));
        }
        if self.alias == 0 {
            return Err(invalid("PUBLISH", "Topic Alias 0"));
        }
        let v = &self.view;
        if v.dup && v.qos == QoS::AtMostOnce {
            return Err(invalid("PUBLISH", "DUP set on a QoS 0 message"));
        }
        put_str(s, v.topic)?;
        match (v.qos, v.packet_id) {
            (QoS::AtMostOnce, None) => {}
            (QoS::AtMostOnce, Some(_)) => {
                return Err(invalid("PUBLISH", "packet identifier on a QoS 0 message"))
            }
            (_, Some(id)) => put_packet_id(s, "PUBLISH", id)?,
            (_, None) => return Err(invalid("PUBLISH", "QoS 1/2 message without identifier")),
        }
        props::write_with_alias(s, v.properties, self.alias)?;
        s.put(v.payload);
        Ok(())
    }
}

impl Body for PublishView<'_> {
    fn first_byte(&self) -> u8 {
        0x30 | u8::from(self.dup) << 3 | self.qos.as_u8() << 1 | u8::from(self.retain)
    }

    fn write<S: Sink>(&self, p: Protocol, s: &mut S) -> Result {
        if self.dup && self.qos == QoS::AtMostOnce {
            return Err(invalid("PUBLISH", "DUP set on a QoS 0 message"));
        }
        put_str(s, self.topic)?;
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) => {}
            (QoS::AtMostOnce, Some(_)) => {
                return Err(invalid("PUBLISH", "packet identifier on a QoS 0 message"))
            }
            (_, Some(id)) => put_packet_id(s, "PUBLISH", id)?,
            (_, None) => return Err(invalid("PUBLISH", "QoS 1/2 message without identifier")),
        }
        if p.is_v5() {
            props::write(s, self.properties, PropCtx::Publish)?;
        }
        s.put(self.payload);
        Ok(())
    }
}

impl Body for Packet {
    fn first_byte(&self) -> u8 {
        match self {
            Packet::Connect(_) => 0x10,
            Packet::ConnAck(_) => 0x20,
            Packet::Publish(x) => PublishView::from(x).first_byte(),
            Packet::PubAck(_) => 0x40,
            Packet::PubRec(_) => 0x50,
            Packet::PubRel(_) => 0x62,
            Packet::PubComp(_) => 0x70,
            Packet::Subscribe(_) => 0x82,
            Packet::SubAck(_) => 0x90,
            Packet::Unsubscribe(_) => 0xA2,
            Packet::UnsubAck(_) => 0xB0,
            Packet::PingReq => 0xC0,
            Packet::PingResp => 0xD0,
            Packet::Disconnect(_) => 0xE0,
            Packet::Auth(_) => 0xF0,
        }
    }

    fn write<S: Sink>(&self, p: Protocol, s: &mut S) -> Result {
        match self {
            Packet::Connect(c) => connect(c, p, s),
            Packet::ConnAck(c) => connack(c, p, s),
            Packet::Publish(x) => PublishView::from(x).write(p, s),
            Packet::PubAck(x) => pub_resp(x, "PUBACK", 4, p, s),
            Packet::PubRec(x) => pub_resp(x, "PUBREC", 5, p, s),
            Packet::PubRel(x) => pub_resp(x, "PUBREL", 6, p, s),
            Packet::PubComp(x) => pub_resp(x, "PUBCOMP", 7, p, s),
            Packet::Subscribe(x) => subscribe(x, p, s),
            Packet::SubAck(x) => suback(x, p, s),
            Packet::Unsubscribe(x) => unsubscribe(x, p, s),
            Packet::UnsubAck(x) => unsuback(x, p, s),
            Packet::PingReq | Packet::PingResp => Ok(()),
            Packet::Disconnect(x) => disconnect(x, p, s),
            Packet::Auth(x) => auth(x, p, s),
        }
    }
}

fn connect<S: Sink>(c: &Connect, p: Protocol, s: &mut S) -> Result {
    if c.protocol != p {
        return Err(invalid(
            "CONNECT",
            "protocol differs from the one encoded for",
        ));
    }
    if !p.is_v5() && c.password.is_some() && c.username.is_none() {
        return Err(invalid(
            "CONNECT",
            "password without user name before MQTT 5",
        ));
    }
    put_str(s, p.name())?;
    put_u8(s, p.level());
    let mut flags = u8::from(c.clean_start) << 1
        | u8::from(c.username.is_some()) << 7
        | u8::from(c.password.is_some()) << 6;
    if let Some(w) = &c.will {
        flags |= 0x04 | w.qos.as_u8() << 3 | u8::from(w.retain) << 5;
    }
    put_u8(s, flags);
    put_u16(s, c.keep_alive);
    if p.is_v5() {
        props::write(s, &c.properties, PropCtx::Connect)?;
    }
    put_str(s, &c.client_id)?;
    if let Some(w) = &c.will {
        if p.is_v5() {
            props::write(s, &w.properties, PropCtx::Will)?;
        }
        put_str(s, &w.topic)?;
        put_binary(s, "will payload", &w.payload)?;
    }
    if let Some(u) = &c.username {
        put_str(s, u)?;
    }
    if let Some(pw) = &c.password {
        put_binary(s, "password", pw)?;
    }
    Ok(())
}

fn connack<S: Sink>(c: &ConnAck, p: Protocol, s: &mut S) -> Result {
    // MQTT 3.1 has no session-present flag: the byte is reserved and must be 0.
    put_u8(s, u8::from(c.session_present && p != Protocol::V31));
    if p.is_v5() {
        put_reason(s, "CONNACK", 2, c.reason_code)?;
        props::write(s, &c.properties, PropCtx::ConnAck)?;
    } else {
        put_u8(s, c.reason_code.to_v3_connect_return_code() as u8);
    }
    Ok(())
}

fn pub_resp<S: Sink>(r: &PubResp, name: &'static str, t: u8, p: Protocol, s: &mut S) -> Result {
    put_packet_id(s, name, r.packet_id)?;
    if !p.is_v5() {
        return Ok(());
    }
    let no_props = r.properties.is_empty();
    if no_props && r.reason_code.as_u8() == 0 {
        return Ok(());
    }
    put_reason(s, name, t, r.reason_code)?;
    if !no_props {
        props::write(s, &r.properties, PropCtx::PubResp)?;
    }
    Ok(())
}

fn subscribe<S: Sink>(x: &Subscribe, p: Protocol, s: &mut S) -> Result {
    put_packet_id(s, "SUBSCRIBE", x.packet_id)?;
    if x.filters.is_empty() {
        return Err(invalid("SUBSCRIBE", "no topic filter"));
    }
    if p.is_v5() {
        props::write(s, &x.properties, PropCtx::Subscribe)?;
    }
    for f in &x.filters {
        put_str(s, &f.filter)?;
        let o = &f.options;
        let mut byte = o.qos.as_u8();
        if p.is_v5() {
            byte |= u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | (o.retain_handling as u8) << 4;
        }
        put_u8(s, byte);
    }
    Ok(())
}

fn suback<S: Sink>(x: &SubAck, p: Protocol, s: &mut S) -> Result {
    put_packet_id(s, "SUBACK", x.packet_id)?;
    if x.reason_codes.is_empty() {
        return Err(invalid("SUBACK", "no reason code"));
    }
    if p.is_v5() {
        props::write(s, &x.properties, PropCtx::SubAck)?;
        for &code in &x.reason_codes {
            put_reason(s, "SUBACK", 9, code)?;
        }
    } else {
        for code in &x.reason_codes {
            put_u8(
                s,
                match code.as_u8() {
                    v @ 0..=2 => v,
                    _ => 0x80,
                },
            );
        }
    }
    Ok(())
}

fn unsubscribe<S: Sink>(x: &Unsubscribe, p: Protocol, s: &mut S) -> Result {
    put_packet_id(s, "UNSUBSCRIBE", x.packet_id)?;
    if x.filters.is_empty() {
        return Err(invalid("UNSUBSCRIBE", "no topic filter"));
    }
    if p.is_v5() {
        props::write(s, &x.properties, PropCtx::Unsubscribe)?;
    }
    for f in &x.filters {
        put_str(s, f)?;
    }
    Ok(())
}

fn unsuback<S: Sink>(x: &UnsubAck, p: Protocol, s: &mut S) -> Result {
    put_packet_id(s, "UNSUBACK", x.packet_id)?;
    if !p.is_v5() {
        return Ok(());
    }
    if x.reason_codes.is_empty() {
        return Err(invalid("UNSUBACK", "no reason code"));
    }
    props::write(s, &x.properties, PropCtx::UnsubAck)?;
    for &code in &x.reason_codes {
        put_reason(s, "UNSUBACK", 11, code)?;
    }
    Ok(())
}

fn disconnect<S: Sink>(x: &Disconnect, p: Protocol, s: &mut S) -> Result {
    if !p.is_v5() {
        return Ok(());
    }
    let no_props = x.properties.is_empty();
    if no_props && x.reason_code.as_u8() == 0 {
        return Ok(());
    }
    put_reason(s, "DISCONNECT", 14, x.reason_code)?;
    if !no_props {
        props::write(s, &x.properties, PropCtx::Disconnect)?;
    }
    Ok(())
}

fn auth<S: Sink>(x: &Auth, p: Protocol, s: &mut S) -> Result {
    if !p.is_v5() {
        return Err(invalid("AUTH", "AUTH exists only in MQTT 5"));
    }
    if x.properties.is_empty() && x.reason_code.as_u8() == 0 {
        return Ok(());
    }
    if x.properties.authentication_method.is_none() {
        return Err(invalid("AUTH", "Authentication Method missing"));
    }
    put_reason(s, "AUTH", 15, x.reason_code)?;
    props::write(s, &x.properties, PropCtx::Auth)
}
