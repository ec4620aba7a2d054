//! Retained messages sent on SUBSCRIBE, paced by the subscriber.
//!
//! A subscription to `#` may match tens of thousands of retained messages, and every one of
//! them is sent, however many [MQTT-3.3.1-9]; none is copied (the session holds references to
//! the retained store's messages), and the router never waits for the client.
//!
//! - QoS 1/2: they join the session's queue beyond its `max_queued_messages` (the subscriber
//!   asked for them; they are not a publisher's burst to hold back) and go out as the in-flight
//!   window allows, like any queued message.
//! - QoS 0: they wait in the connection's [`Qos0Backlog`](crate::session::Qos0Backlog) and
//!   go out while its outbox has room for QoS 0. When it is full, the router asks the
//!   connection to say when half of the QoS 0 budget is free again
//!   ([`Outbox::want_space`](crate::Outbox::want_space)) and continues on
//!   [`Command::OutboxSpace`](crate::Command::OutboxSpace). Live QoS 0 messages for that
//!   connection wait behind the backlog (a retained message never overtakes a newer one on
//!   its topic), at most `max_outbox_qos0` of them; more are dropped and counted, as they
//!   would be by a full outbox.
//!
//! A connection that ends drops its QoS 0 backlog (counted as offline QoS 0 drops).

use std::time::Instant;

use culex_proto::QoS;

use super::{Router, SessionId};
use crate::api::{Delivery, CONTROL_RESERVE};
use crate::session::{Pending, QueueLimits};

impl Router {
    /// Sends the retained messages a SUBSCRIBE matched (already filtered by the ACL and
    /// expiry, in the order found) to session `sid`.
    pub(super) fn send_retained(&mut self, sid: SessionId, retained: Vec<Pending>, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let window = s.window(&self.settings);
        let mut direct = Vec::new();
        for pending in retained {
            if !s.can_read(&pending.message.topic) {
                self.stats.dropped_acl_read += 1;
                continue;
            }
            let Some(link) = &mut s.link else {
                break;
            };
            if pending.qos == QoS::AtMostOnce {
                link.backlog
                    .get_or_insert_with(Box::default)
                    .items
                    .push_back((pending, false));
            } else if s.outgoing.has_room(window) {
                direct.push(s.outgoing.start(pending, now));
            } else {
                // Unbounded limits neither refuse nor evict; counted if that ever changes.
                self.stats.dropped_queue_full += s
                    .outgoing
                    .enqueue(pending, QueueLimits::UNBOUNDED)
                    .unwrap_or(1);
            }
        }
        s.observe_queue(0);
        for d in direct {
            self.send_delivery(sid, d);
        }
        self.flush_changes(sid);
        self.send_backlog(sid, now);
    }

    /// Sends QoS 0 messages from the connection's backlog while its outbox has room for QoS 0.
    pub(super) fn send_backlog(&mut self, sid: SessionId, now: Instant) {
        loop {
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            let reserve = s.window(&self.settings).messages + CONTROL_RESERVE;
            let max_bytes = s.queue_limits(&self.settings).max_bytes;
            let Some(link) = &mut s.link else {
                return;
            };
            if link.backlog.as_ref().is_none_or(|b| b.items.is_empty()) {
                // A burst's worth of storage is not kept for good.
                link.backlog = None;
                return;
            }
            // The outbox's share of `max_queued_bytes` is used up: wait until half of what it
            // holds is written.
            let over_bytes = max_bytes > 0 && link.outbox.bytes() >= max_bytes;
            if link.outbox.capacity() <= reserve || over_bytes {
                let wanted = if over_bytes {
                    link.outbox.capacity() + (link.outbox.len() / 2).max(1)
                } else {
                    reserve + (self.settings.max_outbox_qos0 / 2).max(1)
                };
                if link.outbox.want_space(wanted) {
                    continue;
                }
                return;
            }
            let Some(backlog) = &mut link.backlog else {
                return;
            };
            let Some((pending, live)) = backlog.items.pop_front() else {
                return;
            };
            if live {
                backlog.live -= 1;
            }
            if pending.message.is_expired(now) {
                self.stats.dropped_expired += 1;
                continue;
            }
            let d = Delivery {
                expiry_interval: pending.message.remaining_expiry(now),
                message: pending.message,
                qos: QoS::AtMostOnce,
                packet_id: None,
                dup: false,
                retain: pending.retain,
                subscription_ids: pending.subscription_ids,
            };
            self.send_delivery(sid, d);
        }
    }
}
