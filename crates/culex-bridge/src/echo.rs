//! Origin tracking for MQTT 3.1.1 remotes without the bridge bit: such a remote sends our own
//! `both` messages back to us, since 3.1.1 has no No Local option. The bridge remembers what it
//! just sent (topic and payload fingerprint) and drops the first identical message that comes
//! back within a short window.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Fingerprints of recently sent messages.
#[derive(Debug)]
pub(crate) struct EchoFilter {
    ttl: Duration,
    capacity: usize,
    order: VecDeque<(u64, Instant)>,
    counts: HashMap<u64, u32>,
}

fn fingerprint(topic: &str, payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    topic.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

impl EchoFilter {
    pub(crate) fn new(ttl: Duration, capacity: usize) -> Self {
        EchoFilter {
            ttl,
            capacity: capacity.max(1),
            order: VecDeque::new(),
            counts: HashMap::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(fp, at)) = self.order.front() {
            if now.duration_since(at) < self.ttl && self.order.len() <= self.capacity {
                break;
            }
            self.order.pop_front();
            self.forget(fp);
        }
    }

    fn forget(&mut self, fp: u64) {
        if let Some(c) = self.counts.get_mut(&fp) {
            *c -= 1;
            if *c == 0 {
                self.counts.remove(&fp);
            }
        }
    }

    /// Records a message sent to the remote on `topic`.
    pub(crate) fn record(&mut self, topic: &str, payload: &[u8], now: Instant) {
        let fp = fingerprint(topic, payload);
        self.order.push_back((fp, now));
        *self.counts.entry(fp).or_insert(0) += 1;
        self.expire(now);
    }

    /// True (and the record consumed) if a message received on `topic` is the echo of one we
    /// sent.
    pub(crate) fn take(&mut self, topic: &str, payload: &[u8], now: Instant) -> bool {
        self.expire(now);
        let fp = fingerprint(topic, payload);
        if !self.counts.contains_key(&fp) {
            return false;
        }
        self.forget(fp);
        if let Some(pos) = self.order.iter().position(|(f, _)| *f == fp) {
            self.order.remove(pos);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_dropped_once_within_the_window() {
        let t0 = Instant::now();
        let mut f = EchoFilter::new(Duration::from_secs(10), 100);
        f.record("a", b"1", t0);
        f.record("a", b"1", t0);
        assert!(!f.take("a", b"2", t0));
        assert!(!f.take("b", b"1", t0));
        assert!(f.take("a", b"1", t0));
        assert!(f.take("a", b"1", t0));
        assert!(!f.take("a", b"1", t0));
        f.record("a", b"1", t0);
        assert!(!f.take("a", b"1", t0 + Duration::from_secs(11)));
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut f = EchoFilter::new(Duration::from_secs(10), 2);
        for i in 0..5u8 {
            f.record("a", &[i], t0);
        }
        assert!(!f.take("a", &[0], t0));
        assert!(f.take("a", &[4], t0));
        assert!(f.order.len() <= 2 && f.counts.len() <= 2);
    }
}
