//! What travels on the backplane: the MQTT 5 PUBLISH itself (topic, QoS, RETAIN flag,
//! properties and payload, encoded by culex-proto), so that every node re-publishes exactly
//! what its peer accepted. The originating node rides in a NATS header, for echo suppression.
//!
//! Each stored copy of a publication also carries the publication's identity (from its
//! `Nats-Msg-Id`, [`publication_of`]), which the link hands to its broker in a user property
//! ([`PUBLICATION_PROPERTY`]) that the broker takes off again: a session that moves between
//! nodes keeps one copy of what reached both.

use bytes::{Bytes, BytesMut};
use culex_proto::{decode, encode, Packet, Properties, Protocol, Publish, QoS};

/// NATS header naming the node a message entered the cluster at.
pub const ORIGIN_HEADER: &str = "Culex-Origin";

/// NATS header of a late copy passed on to a session's new node: its publication
/// ([`publication_of`]), as a decimal number.
pub const PUBLICATION_HEADER: &str = "Culex-Publication";

/// User property by which the cluster link tells its broker which publication a message from
/// the stream is a copy of (a decimal number). The broker takes it off the link's own
/// messages ([`take_publication`]), so no subscriber sees it.
pub const PUBLICATION_PROPERTY: &str = "culex-publication";

/// The identity of a publication, from a stored copy's `Nats-Msg-Id`: `<node>-<boot>-<n>`,
/// followed by `.<destination node>` in a destination's copy (node names have no `.`). The
/// same for every copy of one publication, on every node: a 64-bit FNV-1a hash of
/// `<node>-<boot>-<n>` finished with SplitMix64's mixer (it runs for every message from the
/// stream, so it must be cheap).
pub fn publication_of(msg_id: &str) -> u64 {
    let base = msg_id.split('.').next().unwrap_or(msg_id);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in base.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Takes the [`PUBLICATION_PROPERTY`] the link added (the last one: a client's own property of
/// that name stays, as it sent it) off `properties`: the publication it names, if any.
pub fn take_publication(properties: &mut Properties) -> Option<u64> {
    if properties.is_empty() || properties.user_properties.is_empty() {
        return None;
    }
    let at = properties
        .user_properties
        .iter()
        .rposition(|(k, _)| k == PUBLICATION_PROPERTY)?;
    let (_, value) = properties.user_properties.remove(at);
    if properties.is_empty() {
        // Nothing else set: no allocation to carry (and clone) along with the message.
        *properties = Properties::default();
    }
    value.parse().ok()
}

/// Largest envelope decoded: MQTT's largest packet.
const MAX_ENVELOPE: u32 = 268_435_455 + 5;

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a complete MQTT 5 packet.
    #[error("not an MQTT packet: {0}")]
    Decode(String),
    /// A complete packet, but not a PUBLISH (or trailing bytes).
    #[error("not a single PUBLISH packet")]
    NotPublish,
}

/// Encodes `publish` for the backplane. Per-connection properties (topic alias, the
/// subscriber's subscription identifiers) are left out; the DUP flag is cleared.
pub fn encode_publish(publish: &Publish) -> Result<Bytes, culex_proto::EncodeError> {
    let mut properties: Properties = publish.properties.clone();
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: publish.qos,
        retain: publish.retain,
        topic: publish.topic.clone(),
        packet_id: (publish.qos != QoS::AtMostOnce).then_some(1),
        properties,
        payload: publish.payload.clone(),
    });
    let mut out = BytesMut::new();
    encode(&packet, Protocol::V5, &mut out)?;
    Ok(out.freeze())
}

/// Decodes an envelope made by [`encode_publish`].
pub fn decode_publish(bytes: &[u8]) -> Result<Publish, EnvelopeError> {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, Some(Protocol::V5), MAX_ENVELOPE) {
        Ok(Some(Packet::Publish(p))) if buf.is_empty() => Ok(p),
        Ok(Some(_)) => Err(EnvelopeError::NotPublish),
        Ok(None) => Err(EnvelopeError::Decode("truncated".to_owned())),
        Err(e) => Err(EnvelopeError::Decode(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_survives_the_trip_without_per_connection_properties() {
        let mut properties = Properties::default();
        properties.content_type = Some("text/plain".into());
        properties.topic_alias = Some(3);
        properties.subscription_identifiers = vec![7];
        properties.message_expiry_interval = Some(60);
        let sent = Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(77),
            properties,
            payload: Bytes::from_static(b"hello"),
        };
        let got = decode_publish(&encode_publish(&sent).expect("encodes")).expect("decodes");
        assert_eq!(got.topic, "a/b");
        assert_eq!(
            (got.qos, got.retain, got.dup),
            (QoS::ExactlyOnce, true, false)
        );
        assert_eq!(got.payload, sent.payload);
        assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(got.properties.message_expiry_interval, Some(60));
        assert_eq!(got.properties.topic_alias, None);
        assert!(got.properties.subscription_identifiers.is_empty());
    }

    #[test]
    fn every_copy_of_a_publication_has_its_identity() {
        let base = publication_of("node1-1733400000123-42");
        assert_eq!(publication_of("node1-1733400000123-42.node2"), base);
        assert_eq!(publication_of("node1-1733400000123-42.node3"), base);
        assert_ne!(publication_of("node1-1733400000123-43.node2"), base);
        assert_ne!(publication_of("node2-1733400000123-42.node1"), base);
    }

    #[test]
    fn the_publication_property_is_taken_off() {
        let mut properties = Properties::default();
        // A client's own property of that name (first), then the link's (last).
        properties.user_properties = vec![
            (PUBLICATION_PROPERTY.into(), "5".into()),
            ("a".into(), "1".into()),
            (PUBLICATION_PROPERTY.into(), "77".into()),
        ];
        assert_eq!(take_publication(&mut properties), Some(77));
        assert_eq!(
            properties.user_properties,
            vec![
                (PUBLICATION_PROPERTY.into(), "5".into()),
                ("a".into(), "1".into())
            ]
        );
        let mut empty = Properties::default();
        assert_eq!(take_publication(&mut empty), None);
        assert!(empty.is_empty(), "reading allocates nothing");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x82\x02\x00\x01",
            b"\x30\x03\x00\x01a\xff",
        ] {
            assert!(decode_publish(bytes).is_err(), "{bytes:?}");
        }
    }
}
