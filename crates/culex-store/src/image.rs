//! A whole session as one value, for handing it to another node of a cluster: the same
//! records the store keeps (see `codec.rs`), framed together.
//!
//! ```text
//! image: version u8 | client_id str | session_len u32 | session value
//!        | n u32 | n × (seq u64 | len u32 | message value)
//! ```
//!
//! Expiry times travel as wall-clock milliseconds, so a queued message whose expiry passes
//! on the way is dropped when the image is read, as after a restart.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use culex_broker::persist::{MessageRecord, RecoveredSession, SessionRecord};

use crate::codec::{self, Clocks, CodecError, Decoded, RECORD_VERSION};

/// Encodes a session's image (the record and its messages in sequence order).
pub fn encode_session_image(
    client_id: &str,
    record: &SessionRecord,
    messages: &[(u64, MessageRecord)],
    clocks: &Clocks,
) -> Result<Vec<u8>, String> {
    let session = codec::encode_session(record).map_err(|e| e.0)?;
    let mut out = BytesMut::with_capacity(64 + client_id.len() + session.len());
    out.put_u8(RECORD_VERSION);
    put_len(&mut out, client_id.len())?;
    out.put_slice(client_id.as_bytes());
    put_len(&mut out, session.len())?;
    out.put_slice(&session);
    put_len(&mut out, messages.len())?;
    for (seq, m) in messages {
        let value = codec::encode_message(m, clocks).map_err(|e| e.0)?;
        out.put_u64(*seq);
        put_len(&mut out, value.len())?;
        out.put_slice(&value);
    }
    Ok(out.to_vec())
}

fn put_len(out: &mut BytesMut, n: usize) -> Result<(), String> {
    out.put_u32(u32::try_from(n).map_err(|_| "session image too large".to_owned())?);
    Ok(())
}

/// Decodes a session's image; queued messages that expired on the way are left out.
pub fn decode_session_image(value: &[u8], clocks: &Clocks) -> Result<RecoveredSession, String> {
    let mut r = Cursor(value);
    let version = r.take(1)?[0];
    if version != RECORD_VERSION {
        return Err(format!("unknown session image version {version}"));
    }
    let n = r.len()?;
    let client_id = std::str::from_utf8(r.take(n)?)
        .map_err(|_| "client identifier not UTF-8".to_owned())?
        .to_owned();
    let n = r.len()?;
    let record = codec::decode_session(r.take(n)?).map_err(|CodecError(e)| e)?;
    let count = r.len()?;
    // Each message takes at least 12 bytes of framing: a damaged count cannot allocate much.
    let mut messages = Vec::with_capacity(count.min(r.0.len() / 12));
    for _ in 0..count {
        let seq = u64::from_be_bytes(r.take(8)?.try_into().map_err(|_| "truncated".to_owned())?);
        let n = r.len()?;
        match codec::decode_message(r.take(n)?, clocks).map_err(|CodecError(e)| e)? {
            Decoded::Live(m) => messages.push((seq, m)),
            Decoded::Expired => {}
        }
    }
    if !r.0.is_empty() {
        return Err(format!(
            "{} unexpected bytes at the end of a session image",
            r.0.len()
        ));
    }
    Ok(RecoveredSession {
        client_id: Arc::from(client_id),
        record,
        messages,
    })
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| "truncated session image".to_owned())?;
        self.0 = rest;
        Ok(head)
    }

    fn len(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        usize::try_from(n).map_err(|_| "length out of range".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use culex_broker::persist::{MessageState, SubscriptionRecord};
    use culex_broker::Message;
    use culex_proto::{Properties, QoS, SubscriptionOptions};

    use super::*;

    fn message(topic: &str, expires: Option<Duration>, clocks: &Clocks) -> MessageRecord {
        MessageRecord {
            message: Arc::new(Message {
                topic: Arc::from(topic),
                payload: Bytes::from_static(b"payload"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
                expires_at: expires.map(|d| clocks.now + d),
                origin: Some(9),
                publication: None,
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![3],
            state: MessageState::Queued,
        }
    }

    #[test]
    fn an_image_round_trips_and_drops_what_expired_on_the_way() {
        let clocks = Clocks::now();
        let record = SessionRecord {
            username: Some("u".into()),
            expiry_interval: 300,
            expires_at: None,
            subscriptions: vec![SubscriptionRecord {
                filter: "a/#".into(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
                id: Some(3),
            }],
            inbound_qos2: vec![5, 6],
        };
        let mut inflight = message("a/1", None, &clocks);
        inflight.state = MessageState::WaitPubAck(4);
        let messages = vec![
            (1, inflight),
            (2, message("a/2", Some(Duration::from_secs(1)), &clocks)),
            (3, message("a/3", Some(Duration::from_secs(3600)), &clocks)),
        ];
        let bytes = encode_session_image("c", &record, &messages, &clocks).unwrap();
        let back = decode_session_image(&bytes, &clocks).unwrap();
        assert_eq!(&*back.client_id, "c");
        assert_eq!(back.record, record);
        assert_eq!(back.messages.len(), 3);
        assert_eq!(back.messages[0].1.state, MessageState::WaitPubAck(4));
        let later = Clocks {
            now: clocks.now + Duration::from_secs(2),
            wall: clocks.wall + Duration::from_secs(2),
        };
        let back = decode_session_image(&bytes, &later).unwrap();
        let seqs: Vec<u64> = back.messages.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 3], "a/2 expired on the way");
    }

    #[test]
    fn damaged_images_are_refused_not_a_panic() {
        let clocks = Clocks::now();
        let record = SessionRecord {
            username: None,
            expiry_interval: 1,
            expires_at: None,
            subscriptions: vec![],
            inbound_qos2: vec![],
        };
        let bytes =
            encode_session_image("c", &record, &[(1, message("t", None, &clocks))], &clocks)
                .unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode_session_image(&bytes[..cut], &clocks).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode_session_image(&extra, &clocks).is_err());
        let mut huge = bytes;
        let last = huge.len() - 1;
        huge[last] ^= 0xff;
        let _ = decode_session_image(&huge, &clocks);
        assert!(decode_session_image(&[1, 0xff, 0xff, 0xff, 0xff], &clocks).is_err());
    }
}
