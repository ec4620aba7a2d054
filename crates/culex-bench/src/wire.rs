//! MQTT on the wire for the load generator: connecting, subscribing, a PUBLISH template that is
//! patched in place for every message, and a lean PUBLISH parser for the receive hot path.
//!
//! Framing and every packet other than an incoming PUBLISH go through `culex-proto`; incoming
//! PUBLISH packets are parsed here without allocating (the generator must stay cheaper than the
//! broker it measures).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use culex_proto::{
    decode, encode, encode_publish, peek_header, Connect, Disconnect, Packet, Properties, Protocol,
    PublishView, QoS, ReasonCode, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long to wait for CONNACK / SUBACK before giving up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the fixed part of every generated payload: sequence number, send timestamp, publisher.
pub(crate) const PAYLOAD_HEADER: usize = 20;

/// Opens a TCP connection, optionally from a given local address (used to spread thousands of
/// loopback connections over several source addresses).
pub(crate) async fn tcp_connect(addr: SocketAddr, local: Option<SocketAddr>) -> Result<TcpStream> {
    let stream = match local {
        None => TcpStream::connect(addr).await?,
        Some(local) => {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(local)?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends CONNECT (clean session) and waits for a successful CONNACK. Returns the broker's
/// Receive Maximum (MQTT 5), the most unacknowledged QoS 1/2 PUBLISHes it accepts from us.
pub(crate) async fn mqtt_connect(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    protocol: Protocol,
    client_id: &str,
    keep_alive: u16,
) -> Result<Option<u16>> {
    let connect = Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    let mut out = BytesMut::with_capacity(64);
    encode(&connect, protocol, &mut out).context("encoding CONNECT")?;
    stream.write_all(&out).await?;
    let packet = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_packet(stream, buf, protocol))
        .await
        .map_err(|_| anyhow!("no CONNACK within {HANDSHAKE_TIMEOUT:?}"))??;
    match packet {
        Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => {
            Ok(ack.properties.receive_maximum)
        }
        Packet::ConnAck(ack) => bail!("connection refused: {:?}", ack.reason_code),
        other => bail!("expected CONNACK, got {}", other.name()),
    }
}

/// Subscribes to one filter and waits for a SUBACK granting it.
pub(crate) async fn mqtt_subscribe(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    protocol: Protocol,
    filter: &str,
    qos: QoS,
) -> Result<()> {
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.to_owned(),
            options: SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
        }],
        properties: Properties::default(),
    });
    let mut out = BytesMut::with_capacity(64);
    encode(&subscribe, protocol, &mut out).context("encoding SUBSCRIBE")?;
    stream.write_all(&out).await?;
    let packet = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_packet(stream, buf, protocol))
        .await
        .map_err(|_| anyhow!("no SUBACK within {HANDSHAKE_TIMEOUT:?}"))??;
    match packet {
        Packet::SubAck(ack) => match ack.reason_codes.first() {
            Some(code) if !code.is_error() => Ok(()),
            other => bail!("subscription to {filter} refused: {other:?}"),
        },
        other => bail!("expected SUBACK, got {}", other.name()),
    }
}

/// Encodes a DISCONNECT (normal disconnection).
pub(crate) fn disconnect_bytes(protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::with_capacity(4);
    // A DISCONNECT without properties always encodes; an empty buffer just closes the socket.
    let _ = encode(
        &Packet::Disconnect(Disconnect::new(ReasonCode::NormalDisconnection)),
        protocol,
        &mut out,
    );
    out
}

/// Reads until one whole packet is buffered and decodes it.
async fn read_packet(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    protocol: Protocol,
) -> Result<Packet> {
    loop {
        if let Some(packet) = decode(buf, Some(protocol), u32::MAX)? {
            return Ok(packet);
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed by the broker");
        }
    }
}

/// Appends a QoS acknowledgement (PUBACK, PUBREC, PUBREL or PUBCOMP) with success and no
/// properties. The short forms are the same in 3.1.1 and 5.0.
pub(crate) fn put_ack(out: &mut BytesMut, packet_type: u8, packet_id: u16) {
    let flags = if packet_type == PUBREL { 0x02 } else { 0x00 };
    let [hi, lo] = packet_id.to_be_bytes();
    out.extend_from_slice(&[(packet_type << 4) | flags, 2, hi, lo]);
}

/// PUBLISH packet type.
pub(crate) const PUBLISH: u8 = 3;
/// PUBACK packet type.
pub(crate) const PUBACK: u8 = 4;
/// PUBREC packet type.
pub(crate) const PUBREC: u8 = 5;
/// PUBREL packet type.
pub(crate) const PUBREL: u8 = 6;
/// PUBCOMP packet type.
pub(crate) const PUBCOMP: u8 = 7;

/// One packet read from the receive buffer, in the form the hot paths need.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A PUBLISH: its QoS, packet id (0 for QoS 0) and the start of the payload.
    Publish {
        /// QoS of the delivery.
        qos: u8,
        /// Packet identifier, 0 for QoS 0.
        packet_id: u16,
        /// The generated payload header, if the payload carries one.
        header: Option<PayloadHeader>,
    },
    /// PUBACK, PUBREC, PUBREL or PUBCOMP with its packet id.
    Ack {
        /// Packet type (4 to 7).
        packet_type: u8,
        /// Packet identifier.
        packet_id: u16,
    },
    /// Anything else (PINGRESP, DISCONNECT, ...), by type.
    Other(u8),
}

/// The fixed header of every generated payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PayloadHeader {
    /// Per-publisher sequence number, from 0.
    pub(crate) seq: u64,
    /// Send time, nanoseconds since the run's clock origin.
    pub(crate) sent_ns: u64,
    /// Index of the publisher.
    pub(crate) publisher: u32,
}

/// Takes the next complete packet off the front of `buf`. `Ok(None)` when more bytes are needed.
pub(crate) fn next_incoming(buf: &mut BytesMut, protocol: Protocol) -> Result<Option<Incoming>> {
    let Some(header) = peek_header(buf, u32::MAX)? else {
        return Ok(None);
    };
    let total = usize::try_from(header.packet_len())?;
    if buf.len() < total {
        return Ok(None);
    }
    let body = buf
        .get(header.header_len..total)
        .ok_or_else(|| anyhow!("truncated packet"))?;
    let incoming = match header.packet_type {
        PUBLISH => parse_publish(header.flags, body, protocol)?,
        t @ PUBACK..=PUBCOMP => {
            let id = body
                .get(..2)
                .ok_or_else(|| anyhow!("acknowledgement without packet id"))?;
            Incoming::Ack {
                packet_type: t,
                packet_id: u16::from_be_bytes([id[0], id[1]]),
            }
        }
        t => Incoming::Other(t),
    };
    buf.advance(total);
    Ok(Some(incoming))
}

fn parse_publish(flags: u8, body: &[u8], protocol: Protocol) -> Result<Incoming> {
    let qos = (flags >> 1) & 0x03;
    let topic_len = usize::from(u16::from_be_bytes(
        body.get(..2)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("PUBLISH too short"))?,
    ));
    let mut pos = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        let id = body
            .get(pos..pos + 2)
            .ok_or_else(|| anyhow!("PUBLISH without packet id"))?;
        packet_id = u16::from_be_bytes([id[0], id[1]]);
        pos += 2;
    }
    if protocol.is_v5() {
        // Properties: a Variable Byte Integer length, then the properties, skipped.
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = *body
                .get(pos)
                .ok_or_else(|| anyhow!("PUBLISH properties truncated"))?;
            pos += 1;
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            if b & 0x80 == 0 || shift > 21 {
                break;
            }
        }
        pos += len;
    }
    let payload = body.get(pos..).unwrap_or_default();
    Ok(Incoming::Publish {
        qos,
        packet_id,
        header: read_payload_header(payload),
    })
}

fn read_payload_header(payload: &[u8]) -> Option<PayloadHeader> {
    let seq = u64::from_be_bytes(payload.get(0..8)?.try_into().ok()?);
    let sent_ns = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    let publisher = u32::from_be_bytes(payload.get(16..20)?.try_into().ok()?);
    Some(PayloadHeader {
        seq,
        sent_ns,
        publisher,
    })
}

/// A PUBLISH packet encoded once, with the offsets of the fields that change per message.
#[derive(Debug, Clone)]
pub(crate) struct PublishTemplate {
    bytes: Vec<u8>,
    packet_id_at: Option<usize>,
    payload_at: usize,
}

impl PublishTemplate {
    /// Encodes a PUBLISH of `payload_len` bytes (at least [`PAYLOAD_HEADER`]) to `topic`, and
    /// checks by decoding a patched copy that the offsets are right.
    pub(crate) fn new(
        protocol: Protocol,
        topic: &str,
        qos: QoS,
        payload_len: usize,
        publisher: u32,
    ) -> Result<Self> {
        if payload_len < PAYLOAD_HEADER {
            bail!(
                "payload must be at least {PAYLOAD_HEADER} bytes (sequence, timestamp, publisher)"
            );
        }
        let mut payload = vec![0x5A; payload_len];
        if let Some(p) = payload.get_mut(16..20) {
            p.copy_from_slice(&publisher.to_be_bytes());
        }
        let properties = Properties::default();
        let view = PublishView {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            properties: &properties,
            payload: &payload,
        };
        let mut out = BytesMut::new();
        encode_publish(&view, protocol, &mut out).context("encoding PUBLISH")?;
        let payload_at = out.len() - payload_len;
        // Packet id sits right before the payload (3.1.1) or before the empty property block (5).
        let props_len = usize::from(protocol.is_v5());
        let packet_id_at = (qos != QoS::AtMostOnce).then(|| payload_at - props_len - 2);
        let mut template = PublishTemplate {
            bytes: out.to_vec(),
            packet_id_at,
            payload_at,
        };
        // Self-check: patch and decode with the workspace codec.
        let mut check = BytesMut::new();
        template.append(&mut check, 0xBEEF, 7, 11);
        match decode(&mut check, Some(protocol), u32::MAX)? {
            Some(Packet::Publish(p))
                if p.packet_id == packet_id_at.map(|_| 0xBEEF)
                    && read_payload_header(&p.payload).map(|h| (h.seq, h.sent_ns, h.publisher))
                        == Some((7, 11, publisher)) => {}
            _ => bail!("internal error: PUBLISH template offsets are wrong"),
        }
        template.bytes.shrink_to_fit();
        Ok(template)
    }

    /// Appends one message with this packet id, sequence number and timestamp.
    pub(crate) fn append(&mut self, out: &mut BytesMut, packet_id: u16, seq: u64, sent_ns: u64) {
        if let Some(at) = self.packet_id_at {
            if let Some(slot) = self.bytes.get_mut(at..at + 2) {
                slot.copy_from_slice(&packet_id.to_be_bytes());
            }
        }
        let p = self.payload_at;
        if let Some(slot) = self.bytes.get_mut(p..p + 8) {
            slot.copy_from_slice(&seq.to_be_bytes());
        }
        if let Some(slot) = self.bytes.get_mut(p + 8..p + 16) {
            slot.copy_from_slice(&sent_ns.to_be_bytes());
        }
        out.extend_from_slice(&self.bytes);
    }

    /// Size of one encoded message.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }
}

/// Acknowledgement encoding check against the workspace codec (used in tests).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_short_form_decodes() {
        for (t, proto) in [
            (PUBACK, Protocol::V311),
            (PUBREC, Protocol::V5),
            (PUBREL, Protocol::V311),
            (PUBCOMP, Protocol::V5),
        ] {
            let mut out = BytesMut::new();
            put_ack(&mut out, t, 42);
            let p = decode(&mut out, Some(proto), u32::MAX).unwrap().unwrap();
            let id = match p {
                Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
                    r.packet_id
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(id, 42);
        }
    }

    #[test]
    fn template_roundtrip_all_versions() {
        for proto in [Protocol::V311, Protocol::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut t = PublishTemplate::new(proto, "a/b", qos, 64, 3).unwrap();
                let mut out = BytesMut::new();
                t.append(&mut out, 9, 100, 200);
                match next_incoming(&mut out, proto).unwrap().unwrap() {
                    Incoming::Publish {
                        qos: q,
                        packet_id,
                        header: Some(h),
                    } => {
                        assert_eq!(q, qos.as_u8());
                        assert_eq!(packet_id, if q == 0 { 0 } else { 9 });
                        assert_eq!((h.seq, h.sent_ns, h.publisher), (100, 200, 3));
                    }
                    other => panic!("{other:?}"),
                }
                assert!(out.is_empty());
            }
        }
    }
}
