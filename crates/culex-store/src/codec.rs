//! The record format: small versioned binary headers around an MQTT 5 PUBLISH.
//!
//! Every value starts with [`RECORD_VERSION`]. Integers are big-endian. Strings are a `u32`
//! length and UTF-8 bytes. Messages are stored as a complete MQTT 5 PUBLISH packet (encoded
//! with `culex_proto::encode_publish`, decoded with the strict `culex_proto::decode`), so every
//! property survives and a damaged record is refused instead of misread. Times are wall-clock
//! milliseconds since the Unix epoch.
//!
//! ```text
//! retained value:  version u8 | flags u8 (bit 0: has expiry) | [expiry_ms u64] | PUBLISH
//! message value:   version u8 | flags u8 (bit 0: has expiry, bit 1: retain as delivered,
//!                  bit 2: has publication) | [expiry_ms u64] | [publication u64] | qos u8 | state u8 (0 queued, 1 wait PUBACK,
//!                  2 wait PUBREC, 3 released) | packet_id u16 (0 when queued)
//!                  | n u32 | n × subscription id u32 | PUBLISH
//! session value:   version u8 | flags u8 (bit 0: has username, bit 1: has expires_at)
//!                  | [username str] | expiry_interval u32 | [expires_at_ms u64]
//!                  | n u32 | n × (filter str | options u8 | has_id u8 | [id u32])
//!                  | m u32 | m × packet_id u16
//! ```
//!
//! Subscription options use the SUBSCRIBE option byte layout (QoS bits 0–1, No Local bit 2,
//! Retain As Published bit 3, Retain Handling bits 4–5). The PUBLISH carries the message's own
//! QoS and RETAIN flag, and packet identifier 1 when its QoS is above 0 (a placeholder: the
//! packet identifier in use is in the message header).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use culex_broker::persist::{MessageRecord, MessageState, SessionRecord, SubscriptionRecord};
use culex_broker::Message;
use culex_proto::{Packet, Protocol, PublishView, QoS, RetainHandling, SubscriptionOptions};

/// Version byte at the start of every record this build writes.
pub(crate) const RECORD_VERSION: u8 = 1;

/// A pair of clock readings taken at the same moment, to convert `Instant`s (which the broker
/// uses) to wall-clock time (which survives a restart) and back.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    /// Monotonic time.
    pub now: Instant,
    /// Wall-clock time at the same moment.
    pub wall: SystemTime,
}

impl Clocks {
    /// Reads both clocks now.
    pub fn now() -> Clocks {
        Clocks {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `t` as wall-clock milliseconds since the Unix epoch.
    pub(crate) fn instant_to_ms(&self, t: Instant) -> u64 {
        let wall = if t >= self.now {
            self.wall.checked_add(t - self.now)
        } else {
            self.wall.checked_sub(self.now - t)
        };
        wall.map_or(u64::MAX, system_time_to_ms)
    }

    /// Wall-clock `ms` as an `Instant`: `None` if it is not in the future (expired);
    /// `Some(None)` if it is too far away to represent (treated as never).
    pub(crate) fn ms_to_instant(&self, ms: u64) -> Option<Option<Instant>> {
        let remaining = ms_to_system_time(ms).duration_since(self.wall).ok()?;
        if remaining.is_zero() {
            return None;
        }
        Some(self.now.checked_add(remaining))
    }
}

/// Milliseconds since the Unix epoch (0 before it, saturating far in the future).
pub(crate) fn system_time_to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time `ms` milliseconds after the Unix epoch (saturating).
pub(crate) fn ms_to_system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100))
}

/// Why a record could not be encoded or decoded (the caller adds table and key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodecError(pub(crate) String);

impl CodecError {
    fn new(s: impl Into<String>) -> CodecError {
        CodecError(s.into())
    }
}

type Result<T> = std::result::Result<T, CodecError>;

// ---------------------------------------------------------------------------------------------
// Encoding

fn put_str(out: &mut BytesMut, s: &str) -> Result<()> {
    let len = u32::try_from(s.len()).map_err(|_| CodecError::new("string too long"))?;
    out.put_u32(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_publish(out: &mut BytesMut, m: &Message) -> Result<()> {
    let view = PublishView {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        topic: &m.topic,
        packet_id: (m.qos != QoS::AtMostOnce).then_some(1),
        properties: &m.properties,
        payload: &m.payload,
    };
    culex_proto::encode_publish(&view, Protocol::V5, out).map_err(|e| CodecError(e.to_string()))
}

/// Encodes a retained message; `clocks` converts its expiry to wall-clock time.
pub(crate) fn encode_retained(m: &Message, clocks: &Clocks) -> Result<Vec<u8>> {
    let mut out = BytesMut::with_capacity(m.payload.len() + m.topic.len() + 32);
    out.put_u8(RECORD_VERSION);
    match m.expires_at {
        Some(t) => {
            out.put_u8(1);
            out.put_u64(clocks.instant_to_ms(t));
        }
        None => out.put_u8(0),
    }
    put_publish(&mut out, m)?;
    Ok(out.to_vec())
}

fn state_parts(s: MessageState) -> (u8, u16) {
    match s {
        MessageState::Queued => (0, 0),
        MessageState::WaitPubAck(id) => (1, id),
        MessageState::WaitPubRec(id) => (2, id),
        MessageState::Released(id) => (3, id),
    }
}

/// Encodes a session's message record.
pub(crate) fn encode_message(r: &MessageRecord, clocks: &Clocks) -> Result<Vec<u8>> {
    let m = &r.message;
    let mut out = BytesMut::with_capacity(
        m.payload.len() + m.topic.len() + 48 + 4 * r.subscription_ids.len(),
    );
    out.put_u8(RECORD_VERSION);
    let flags = u8::from(m.expires_at.is_some())
        | u8::from(r.retain) << 1
        | u8::from(m.publication.is_some()) << 2;
    out.put_u8(flags);
    if let Some(t) = m.expires_at {
        out.put_u64(clocks.instant_to_ms(t));
    }
    if let Some(id) = m.publication {
        out.put_u64(id);
    }
    out.put_u8(r.qos.as_u8());
    let (state, packet_id) = state_parts(r.state);
    out.put_u8(state);
    out.put_u16(packet_id);
    let n = u32::try_from(r.subscription_ids.len())
        .map_err(|_| CodecError::new("too many subscription identifiers"))?;
    out.put_u32(n);
    for id in &r.subscription_ids {
        out.put_u32(*id);
    }
    put_publish(&mut out, m)?;
    Ok(out.to_vec())
}

fn options_byte(o: &SubscriptionOptions) -> u8 {
    o.qos.as_u8()
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling as u8) << 4
}

/// Encodes a session record.
pub(crate) fn encode_session(r: &SessionRecord) -> Result<Vec<u8>> {
    let mut out = BytesMut::with_capacity(64 + 32 * r.subscriptions.len());
    out.put_u8(RECORD_VERSION);
    out.put_u8(u8::from(r.username.is_some()) | u8::from(r.expires_at.is_some()) << 1);
    if let Some(u) = &r.username {
        put_str(&mut out, u)?;
    }
    out.put_u32(r.expiry_interval);
    if let Some(t) = r.expires_at {
        out.put_u64(system_time_to_ms(t));
    }
    let n = u32::try_from(r.subscriptions.len())
        .map_err(|_| CodecError::new("too many subscriptions"))?;
    out.put_u32(n);
    for s in &r.subscriptions {
        put_str(&mut out, &s.filter)?;
        out.put_u8(options_byte(&s.options));
        match s.id {
            Some(id) => {
                out.put_u8(1);
                out.put_u32(id);
            }
            None => out.put_u8(0),
        }
    }
    let n = u32::try_from(r.inbound_qos2.len())
        .map_err(|_| CodecError::new("too many inbound packet identifiers"))?;
    out.put_u32(n);
    for id in &r.inbound_qos2 {
        out.put_u16(*id);
    }
    Ok(out.to_vec())
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// A bounds-checked reader over a record.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(CodecError(format!("truncated record ({what})")));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).map_err(|_| CodecError(format!("{what} too long")))?;
        let b = self.take(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError(format!("{what} is not UTF-8")))
    }

    /// A count of items each at least `min_size` bytes long, checked against what is left so
    /// a corrupt count cannot make us allocate much.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let n = usize::try_from(self.u32(what)?).unwrap_or(usize::MAX);
        if n.saturating_mul(min_size) > self.buf.len() {
            return Err(CodecError(format!("{what} count {n} exceeds the record")));
        }
        Ok(n)
    }

    fn version(&mut self) -> Result<()> {
        match self.u8("version")? {
            RECORD_VERSION => Ok(()),
            v => Err(CodecError(format!("unknown record version {v}"))),
        }
    }

    fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError(format!(
                "{} unexpected bytes at the end",
                self.buf.len()
            )))
        }
    }
}

/// Decodes the PUBLISH that ends a record into a message with expiry `expires_at`.
fn decode_publish(rest: &[u8], expires_at: Option<Instant>) -> Result<Message> {
    let mut buf = BytesMut::from(rest);
    let packet = culex_proto::decode(&mut buf, Some(Protocol::V5), u32::MAX)
        .map_err(|e| CodecError(format!("bad PUBLISH: {e}")))?;
    let Some(Packet::Publish(p)) = packet else {
        return Err(CodecError::new(
            "truncated or wrong packet instead of a PUBLISH",
        ));
    };
    if !buf.is_empty() {
        return Err(CodecError(format!(
            "{} unexpected bytes after the PUBLISH",
            buf.len()
        )));
    }
    Ok(Message {
        topic: Arc::from(p.topic),
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties: p.properties,
        expires_at,
        origin: None,
        publication: None,
    })
}

/// A decoded message whose expiry has been checked.
pub(crate) enum Decoded<T> {
    /// Live.
    Live(T),
    /// Its expiry has passed (the record was well-formed).
    Expired,
}

fn expiry(r: &mut Reader<'_>, has: bool, clocks: &Clocks) -> Result<Option<Option<Instant>>> {
    if !has {
        return Ok(Some(None));
    }
    let ms = r.u64("expiry")?;
    Ok(clocks.ms_to_instant(ms))
}

/// Decodes a retained message.
pub(crate) fn decode_retained(value: &[u8], clocks: &Clocks) -> Result<Decoded<Message>> {
    let mut r = Reader { buf: value };
    r.version()?;
    let flags = r.u8("flags")?;
    if flags & !1 != 0 {
        return Err(CodecError(format!("unknown flags {flags:#04x}")));
    }
    let expires = expiry(&mut r, flags & 1 != 0, clocks)?;
    let message = decode_publish(r.buf, expires.flatten())?;
    Ok(match expires {
        Some(_) => Decoded::Live(message),
        None => Decoded::Expired,
    })
}

/// Decodes a session's message record. `Expired` only for a queued message past its expiry:
/// a message already in flight is kept (its delivery has started, [MQTT-3.3.2-5]).
pub(crate) fn decode_message(value: &[u8], clocks: &Clocks) -> Result<Decoded<MessageRecord>> {
    let mut r = Reader { buf: value };
    r.version()?;
    let flags = r.u8("flags")?;
    if flags & !7 != 0 {
        return Err(CodecError(format!("unknown flags {flags:#04x}")));
    }
    let expires = expiry(&mut r, flags & 1 != 0, clocks)?;
    let publication = if flags & 4 != 0 {
        Some(r.u64("publication")?)
    } else {
        None
    };
    let qos = r.u8("qos")?;
    let qos = QoS::from_u8(qos).ok_or_else(|| CodecError(format!("bad QoS {qos}")))?;
    let state = r.u8("state")?;
    let packet_id = r.u16("packet id")?;
    let state = match (state, packet_id) {
        (0, 0) => MessageState::Queued,
        (1, id) if id != 0 => MessageState::WaitPubAck(id),
        (2, id) if id != 0 => MessageState::WaitPubRec(id),
        (3, id) if id != 0 => MessageState::Released(id),
        (s, id) => return Err(CodecError(format!("bad state {s} with packet id {id}"))),
    };
    let n = r.count(4, "subscription ids")?;
    let mut subscription_ids = Vec::with_capacity(n);
    for _ in 0..n {
        subscription_ids.push(r.u32("subscription id")?);
    }
    // An expired in-flight message keeps its delivery going; it just no longer expires.
    let expires_at = match expires {
        Some(t) => t,
        None if state == MessageState::Queued => None,
        None => Some(clocks.now),
    };
    let message = Message {
        publication,
        ..decode_publish(r.buf, expires_at)?
    };
    if expires.is_none() && state == MessageState::Queued {
        return Ok(Decoded::Expired);
    }
    Ok(Decoded::Live(MessageRecord {
        message: Arc::new(message),
        qos,
        retain: flags & 2 != 0,
        subscription_ids,
        state,
    }))
}

/// Decodes a session record.
pub(crate) fn decode_session(value: &[u8]) -> Result<SessionRecord> {
    let mut r = Reader { buf: value };
    r.version()?;
    let flags = r.u8("flags")?;
    if flags & !3 != 0 {
        return Err(CodecError(format!("unknown flags {flags:#04x}")));
    }
    let username = if flags & 1 != 0 {
        Some(r.string("username")?)
    } else {
        None
    };
    let expiry_interval = r.u32("expiry interval")?;
    let expires_at = if flags & 2 != 0 {
        Some(ms_to_system_time(r.u64("expires at")?))
    } else {
        None
    };
    let n = r.count(6, "subscriptions")?;
    let mut subscriptions = Vec::with_capacity(n);
    for _ in 0..n {
        let filter = r.string("filter")?;
        let o = r.u8("subscription options")?;
        let qos = QoS::from_u8(o & 3)
            .ok_or_else(|| CodecError(format!("bad subscription options {o:#04x}")))?;
        let retain_handling = match (o >> 4) & 3 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(CodecError(format!("bad subscription options {o:#04x}"))),
        };
        if o & 0xC0 != 0 {
            return Err(CodecError(format!("bad subscription options {o:#04x}")));
        }
        let id = match r.u8("subscription id flag")? {
            0 => None,
            1 => Some(r.u32("subscription id")?),
            f => return Err(CodecError(format!("bad subscription id flag {f}"))),
        };
        subscriptions.push(SubscriptionRecord {
            filter,
            options: SubscriptionOptions {
                qos,
                no_local: o & 4 != 0,
                retain_as_published: o & 8 != 0,
                retain_handling,
            },
            id,
        });
    }
    let n = r.count(2, "inbound packet ids")?;
    let mut inbound_qos2 = Vec::with_capacity(n);
    for _ in 0..n {
        inbound_qos2.push(r.u16("inbound packet id")?);
    }
    r.finish()?;
    Ok(SessionRecord {
        username,
        expiry_interval,
        expires_at,
        subscriptions,
        inbound_qos2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use culex_proto::Properties;

    fn clocks() -> Clocks {
        Clocks::now()
    }

    fn message(expires: Option<Duration>, c: &Clocks) -> Message {
        Message {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Properties::from(culex_proto::PropertyValues {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("r/t".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                ..Default::default()
            }),
            expires_at: expires.map(|d| c.now + d),
            origin: Some(7),
            publication: None,
        }
    }

    #[test]
    fn retained_round_trip() {
        let c = clocks();
        let m = message(Some(Duration::from_secs(60)), &c);
        let bytes = encode_retained(&m, &c).unwrap();
        let Decoded::Live(back) = decode_retained(&bytes, &c).unwrap() else {
            panic!("expired")
        };
        // Expiry goes through milliseconds; origin is not stored.
        let diff = back.expires_at.unwrap().max(m.expires_at.unwrap())
            - back.expires_at.unwrap().min(m.expires_at.unwrap());
        assert!(diff <= Duration::from_millis(1), "{diff:?}");
        assert_eq!(back.origin, None);
        assert_eq!(
            Message {
                expires_at: m.expires_at,
                origin: m.origin,
                publication: None,
                ..back
            },
            m
        );
    }

    #[test]
    fn expired_queued_dropped_inflight_kept() {
        let c = clocks();
        let m = Arc::new(message(Some(Duration::from_secs(1)), &c));
        let later = Clocks {
            now: c.now + Duration::from_secs(2),
            wall: c.wall + Duration::from_secs(2),
        };
        let mut rec = MessageRecord {
            message: m,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![1, 268_435_455],
            state: MessageState::Queued,
        };
        let bytes = encode_message(&rec, &c).unwrap();
        assert!(matches!(
            decode_message(&bytes, &later).unwrap(),
            Decoded::Expired
        ));
        rec.state = MessageState::WaitPubAck(9);
        let bytes = encode_message(&rec, &c).unwrap();
        let Decoded::Live(back) = decode_message(&bytes, &later).unwrap() else {
            panic!("in-flight message dropped")
        };
        assert_eq!(back.state, MessageState::WaitPubAck(9));
        assert_eq!(back.subscription_ids, vec![1, 268_435_455]);
    }

    #[test]
    fn a_message_keeps_its_cluster_publication() {
        let c = clocks();
        for publication in [None, Some(0), Some(u64::MAX)] {
            let rec = MessageRecord {
                message: Arc::new(Message {
                    publication,
                    ..message(Some(Duration::from_secs(60)), &c)
                }),
                qos: QoS::ExactlyOnce,
                retain: false,
                subscription_ids: vec![2],
                state: MessageState::WaitPubRec(3),
            };
            let bytes = encode_message(&rec, &c).unwrap();
            let Decoded::Live(back) = decode_message(&bytes, &c).unwrap() else {
                panic!("dropped")
            };
            assert_eq!(back.message.publication, publication);
            assert_eq!(back.message.payload, rec.message.payload);
            assert_eq!(back.state, MessageState::WaitPubRec(3));
            assert_eq!(back.subscription_ids, vec![2]);
        }
    }

    #[test]
    fn garbage_never_panics() {
        let c = clocks();
        let m = message(None, &c);
        let rec = MessageRecord {
            message: Arc::new(m.clone()),
            qos: QoS::AtLeastOnce,
            retain: true,
            subscription_ids: vec![3],
            state: MessageState::Released(5),
        };
        let session = SessionRecord {
            username: Some("u".into()),
            expiry_interval: 10,
            expires_at: Some(c.wall),
            subscriptions: vec![SubscriptionRecord {
                filter: "a/#".into(),
                options: SubscriptionOptions::default(),
                id: Some(4),
            }],
            inbound_qos2: vec![1, 2],
        };
        let records = [
            encode_retained(&m, &c).unwrap(),
            encode_message(&rec, &c).unwrap(),
            encode_session(&session).unwrap(),
        ];
        // Every truncation and every single-byte corruption decodes to Ok or Err, never a panic.
        for r in &records {
            for cut in 0..r.len() {
                let _ = decode_retained(&r[..cut], &c);
                let _ = decode_message(&r[..cut], &c);
                let _ = decode_session(&r[..cut]);
            }
            for i in 0..r.len() {
                for b in [0u8, 0x7f, 0xff] {
                    let mut v = r.clone();
                    v[i] = b;
                    let _ = decode_retained(&v, &c);
                    let _ = decode_message(&v, &c);
                    let _ = decode_session(&v);
                }
            }
        }
        assert!(decode_session(&records[0][..3]).is_err());
        assert!(decode_message(b"\x02", &c).is_err());
    }
}
