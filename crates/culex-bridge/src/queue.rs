//! Store-and-forward: `out` messages the bridge task holds on their way to the remote link.
//!
//! The durable part of store-and-forward is not here: QoS 1/2 messages stay in the bridge's
//! session in the local broker (persisted like any session, bounded by `queue_limit` /
//! `queue_bytes`, oldest dropped) until the remote has acknowledged them, because the bridge
//! acknowledges each one locally only then. This queue holds the few the broker has handed over
//! (at most the bridge's Receive Maximum) while they wait for room in the remote window.

use std::collections::VecDeque;

use bytes::Bytes;
use culex_proto::QoS;

/// The acknowledgement the bridge owes the local broker for a message, sent once the remote
/// has the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAck {
    /// Packet identifier of the local delivery.
    pub packet_id: u16,
    /// Its QoS (1: PUBACK, 2: PUBREC).
    pub qos: QoS,
}

/// A message on its way to the remote, topic already remapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Remote topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS to publish with.
    pub qos: QoS,
    /// RETAIN flag to publish with.
    pub retain: bool,
    /// What to acknowledge locally once the remote has it (`None` for QoS 0 deliveries).
    pub local_ack: Option<LocalAck>,
}

impl QueuedMessage {
    /// Approximate memory held by the message.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

/// A bounded FIFO of the messages the bridge task holds for the remote: it keeps order and
/// never grows past its bound (when full, `push` evicts the oldest message and returns it so
/// it can be counted).
#[derive(Debug)]
pub struct MemoryQueue {
    limit: usize,
    items: VecDeque<QueuedMessage>,
}

impl MemoryQueue {
    /// A queue holding at most `limit` messages (at least 1).
    pub fn new(limit: usize) -> Self {
        MemoryQueue {
            limit: limit.max(1),
            items: VecDeque::new(),
        }
    }

    /// Appends `message`; returns the message evicted to make room, if any.
    pub fn push(&mut self, message: QueuedMessage) -> Option<QueuedMessage> {
        let evicted = if self.items.len() >= self.limit {
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(message);
        evicted
    }

    /// The oldest message, removed.
    pub fn pop(&mut self) -> Option<QueuedMessage> {
        self.items.pop_front()
    }

    /// Puts a message back at the front (it could not be sent after all).
    pub fn push_front(&mut self, message: QueuedMessage) {
        self.items.push_front(message);
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The queued messages, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: u32) -> QueuedMessage {
        QueuedMessage {
            topic: format!("t/{i}"),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            local_ack: None,
        }
    }

    #[test]
    fn fifo_bounded_oldest_evicted() {
        let mut q = MemoryQueue::new(3);
        for i in 0..3 {
            assert_eq!(q.push(m(i)), None);
        }
        assert_eq!(q.push(m(3)), Some(m(0)));
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(), Some(m(1)));
        q.push_front(m(1));
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, vec![m(1), m(2), m(3)]);
        assert!(q.is_empty());
    }
}
