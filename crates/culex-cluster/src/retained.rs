//! Retained messages in a replicated JetStream key-value bucket, so that a node that joins
//! (or restarts without its own store) gets every topic's retained message, with its expiry.
//!
//! Key: the SHA-256 of the topic in hex (KV keys allow only `[-/_=.a-zA-Z0-9]`, and a topic
//! may be 65535 bytes). Value: when it was stored (Unix milliseconds, 8 bytes big-endian),
//! then the envelope (the PUBLISH, topic included). A cleared retained message (empty
//! payload) deletes its key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use bytes::{BufMut, Bytes, BytesMut};
use culex_proto::Publish;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::envelope::{decode_publish, encode_publish};

/// The bucket's name for `cluster`.
pub fn bucket_name(cluster: &str) -> String {
    format!("{cluster}-retained")
}

/// The key of `topic`.
pub fn key(topic: &str) -> String {
    let digest = Sha256::digest(topic.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The stored form of a retained message.
pub fn value(p: &Publish, stored_ms: u64) -> Result<Bytes, culex_proto::EncodeError> {
    let envelope = encode_publish(p)?;
    let mut out = BytesMut::with_capacity(8 + envelope.len());
    out.put_u64(stored_ms);
    out.put_slice(&envelope);
    Ok(out.freeze())
}

/// The message of a stored value as it should be retained `now_ms`: its Message Expiry
/// Interval shortened by the time it has been stored; `None` once expired or unreadable.
pub fn restore(value: &[u8], now_ms: u64) -> Option<Publish> {
    let (stamp, envelope) = value.split_at_checked(8)?;
    let stored = u64::from_be_bytes(stamp.try_into().ok()?);
    let mut p = decode_publish(envelope).ok()?;
    if let Some(interval) = p.properties.message_expiry_interval {
        let age_s = now_ms.saturating_sub(stored) / 1000;
        let left = u64::from(interval).checked_sub(age_s).filter(|l| *l > 0)?;
        p.properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(interval));
    }
    Some(p)
}

/// Opens (or creates) the bucket.
pub async fn open(
    js: &jetstream::Context,
    cluster: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    crate::bucket::open(
        js,
        &bucket_name(cluster),
        "Culex retained messages",
        replicas,
    )
    .await
}

/// Stores (or, for an empty payload, removes) the retained message `p`.
pub async fn store(bucket: &kv::Store, p: &Publish) -> Result<(), String> {
    let key = key(&p.topic);
    if p.payload.is_empty() {
        return bucket.delete(&key).await.map_err(|e| e.to_string());
    }
    let value = value(p, now_ms()).map_err(|e| e.to_string())?;
    bucket
        .put(&key, value)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every retained message in the bucket that has not expired.
pub async fn load(bucket: &kv::Store) -> Result<Vec<Publish>, String> {
    let mut keys = bucket.keys().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let now = now_ms();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        if let Some(value) = bucket.get(&key).await.map_err(|e| e.to_string())? {
            if let Some(p) = restore(&value, now) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// How long a load may take before the link goes on without it (and logs so).
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use culex_proto::{Properties, QoS};

    use super::*;

    fn message(expiry: Option<u32>) -> Publish {
        let mut properties = Properties::default();
        properties.message_expiry_interval = expiry;
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(1),
            properties,
            payload: Bytes::from_static(b"on"),
        }
    }

    #[test]
    fn keys_are_valid_kv_keys_and_differ_by_topic() {
        let k = key("a/b");
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(k, key("a/c"));
        assert_eq!(key(&"x".repeat(65535)).len(), 64);
    }

    #[test]
    fn expiry_counts_the_time_stored() {
        let v = value(&message(Some(100)), 1_000_000).expect("encodes");
        let p = restore(&v, 1_000_000 + 30_000).expect("still there");
        assert_eq!(p.properties.message_expiry_interval, Some(70));
        assert!(restore(&v, 1_000_000 + 100_000).is_none(), "expired");
        let v = value(&message(None), 1).expect("encodes");
        assert_eq!(
            restore(&v, u64::MAX).map(|p| p.properties.message_expiry_interval),
            Some(None),
            "no expiry: kept forever"
        );
        assert!(restore(b"short", 0).is_none());
        assert!(restore(b"12345678garbage", 0).is_none());
    }
}
