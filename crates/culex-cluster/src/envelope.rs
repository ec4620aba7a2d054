//! What travels on the backplane: the MQTT 5 PUBLISH itself (topic, QoS, RETAIN flag,
//! properties and payload, encoded by culex-proto), so that every node re-publishes exactly
//! what its peer accepted. The originating node rides in a NATS header, for echo suppression.

use bytes::{Bytes, BytesMut};
use culex_proto::{decode, encode, Packet, Properties, Protocol, Publish, QoS};

/// NATS header naming the node a message entered the cluster at.
pub const ORIGIN_HEADER: &str = "Culex-Origin";

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
