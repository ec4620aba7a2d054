//! The state the bridge replays to the remote after every (re)connect: the latest message per
//! `out` topic, in the order the topics first appeared.
//!
//! Two of these make the reconnect order (see `runtime`): the retained state of each `out`
//! topic first (for Sber: the device list, `up/config`), then the latest non-retained message of
//! each other topic (`up/status`), then the `in` subscriptions. The bridge's local subscription
//! stays up while the remote link is down and sees every change, so its copies are current.

use std::collections::HashMap;

use crate::queue::QueuedMessage;

/// What [`TopicStates::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// A new topic.
    Added,
    /// The topic's previous message was replaced; `unsent` says whether that message had not
    /// gone to the remote yet (so it was dropped, and is counted as such).
    Replaced {
        /// The replaced message was never sent.
        unsent: bool,
    },
    /// The bound was reached: the message is not kept.
    Full,
}

#[derive(Debug)]
struct Kept {
    message: QueuedMessage,
    /// Not yet sent to the remote (kept while the link was down).
    unsent: bool,
}

/// The latest message per topic, bounded by a number of topics, in first-seen order.
#[derive(Debug)]
pub(crate) struct TopicStates {
    limit: usize,
    unsent: usize,
    index: HashMap<String, usize>,
    items: Vec<Kept>,
}

impl TopicStates {
    /// Keeps at most `limit` topics.
    pub(crate) fn new(limit: usize) -> Self {
        TopicStates {
            limit,
            unsent: 0,
            index: HashMap::new(),
            items: Vec::new(),
        }
    }

    /// Number of topics kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Topics whose message has not gone to the remote.
    pub(crate) fn unsent(&self) -> usize {
        self.unsent
    }

    /// Keeps `message` as its topic's latest (`unsent`: not handed to the remote).
    pub(crate) fn put(&mut self, message: QueuedMessage, unsent: bool) -> Put {
        if let Some(kept) = self
            .index
            .get(&message.topic)
            .and_then(|&i| self.items.get_mut(i))
        {
            let was_unsent = kept.unsent;
            *kept = Kept { message, unsent };
            self.unsent = self.unsent + usize::from(unsent) - usize::from(was_unsent);
            return Put::Replaced { unsent: was_unsent };
        }
        if self.items.len() >= self.limit {
            return Put::Full;
        }
        self.index.insert(message.topic.clone(), self.items.len());
        self.items.push(Kept { message, unsent });
        self.unsent += usize::from(unsent);
        Put::Added
    }

    /// Forgets `topic` (a retained state was cleared).
    pub(crate) fn remove(&mut self, topic: &str) {
        if let Some(i) = self.index.remove(topic) {
            let kept = self.items.remove(i);
            self.unsent -= usize::from(kept.unsent);
            for slot in self.index.values_mut() {
                if *slot > i {
                    *slot -= 1;
                }
            }
        }
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.items.clear();
        self.unsent = 0;
    }

    /// Copies of the kept messages in first-seen order, all of them (`all`) or only those not
    /// sent yet; every one counts as sent afterwards.
    pub(crate) fn take_for_send(&mut self, all: bool) -> Vec<QueuedMessage> {
        let mut out = Vec::new();
        for kept in &mut self.items {
            if all || kept.unsent {
                out.push(kept.message.clone());
            }
            kept.unsent = false;
        }
        self.unsent = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use culex_proto::QoS;

    fn m(topic: &str, payload: &'static str) -> QueuedMessage {
        QueuedMessage {
            topic: topic.into(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: false,
            local_ack: None,
        }
    }

    #[test]
    fn latest_per_topic_in_first_seen_order_and_bounded() {
        let mut s = TopicStates::new(2);
        assert_eq!(s.put(m("a", "1"), true), Put::Added);
        assert_eq!(s.put(m("b", "1"), false), Put::Added);
        assert_eq!(s.put(m("a", "2"), true), Put::Replaced { unsent: true });
        assert_eq!(s.put(m("b", "2"), true), Put::Replaced { unsent: false });
        assert_eq!(s.put(m("c", "1"), true), Put::Full);
        assert_eq!(s.unsent(), 2);
        let sent: Vec<_> = s
            .take_for_send(false)
            .into_iter()
            .map(|q| (q.topic, q.payload))
            .collect();
        assert_eq!(
            sent,
            vec![
                ("a".to_string(), Bytes::from_static(b"2")),
                ("b".to_string(), Bytes::from_static(b"2"))
            ]
        );
        assert_eq!(s.unsent(), 0);
        assert!(s.take_for_send(false).is_empty());
        assert_eq!(s.take_for_send(true).len(), 2);
        s.remove("a");
        assert_eq!(s.len(), 1);
        assert_eq!(s.put(m("b", "3"), false), Put::Replaced { unsent: false });
        assert_eq!(s.put(m("c", "1"), false), Put::Added);
        let order: Vec<_> = s.take_for_send(true).into_iter().map(|q| q.topic).collect();
        assert_eq!(order, vec!["b", "c"]);
        s.clear();
        assert_eq!(s.len(), 0);
    }
}
