//! Routing a message and handing it to sessions: to the connection's outbox when the window
//! and the outbox allow, into the session's bounded queue otherwise; retained store updates.

use super::*;

/// A hash of a message's topic and payload that every node of a cluster computes alike (no
/// random seed), to agree on which node serves a shared group.
fn content_hash(message: &Message) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    message.topic.hash(&mut h);
    message.payload.hash(&mut h);
    h.finish()
}

impl Router {
    /// The QoS of a delivery for a subscription granted `sub` of a message published at `msg`.
    pub(super) fn delivery_qos(&self, sub: QoS, msg: QoS) -> QoS {
        if self.settings.upgrade_outgoing_qos {
            sub
        } else {
            sub.min(msg)
        }
    }

    /// Routes a message to every matching subscription and updates the retained store.
    pub(super) fn route(&mut self, message: Arc<Message>, now: Instant) {
        if message.retain {
            self.update_retained(&message, now);
        }
        let mut matches = std::mem::take(&mut self.scratch);
        matches.clear();
        {
            let sessions = &self.sessions;
            // In a cluster, a shared group with members on other nodes too gets the message
            // here only when this node is the one chosen for it.
            let placement = self
                .cluster
                .placement
                .as_ref()
                .filter(|_| self.tree.shared_len() > 0);
            let hash = placement.map(|_| content_hash(&message));
            self.tree.matches(
                &message.topic,
                |k| sessions.get(&k).is_some_and(|s| s.link.is_some()),
                |group| match (placement, hash) {
                    (Some(p), Some(h)) => p.takes(group, h),
                    _ => true,
                },
                &mut matches,
            );
        }
        // One copy per session at the highest QoS of its matching subscriptions, carrying
        // every matching subscription identifier.
        matches.sort_unstable_by_key(|(sid, _)| *sid);
        let mut i = 0;
        while i < matches.len() {
            let sid = matches[i].0;
            let mut qos: Option<QoS> = None;
            let mut retain = false;
            let mut ids = Vec::new();
            while i < matches.len() && matches[i].0 == sid {
                let sub = matches[i].1;
                i += 1;
                if sub.options.no_local && message.origin == Some(sid) {
                    continue;
                }
                let q = self.delivery_qos(sub.options.qos, message.qos);
                qos = Some(qos.map_or(q, |old| old.max(q)));
                retain |= sub.options.retain_as_published && message.retain;
                ids.extend(sub.id);
            }
            if let Some(qos) = qos {
                let pending = Pending {
                    message: Arc::clone(&message),
                    qos,
                    retain,
                    subscription_ids: ids.into(),
                    seq: 0,
                    queued_at: self.secs(now),
                };
                let confirms = qos != QoS::AtMostOnce
                    && self.flow_router_answers()
                    && self
                        .sessions
                        .get(&sid)
                        .is_some_and(|s| s.queue_policy().is_some_and(|p| p.confirms_publishers));
                if confirms {
                    let before = self.last_seq(sid);
                    self.deliver(sid, pending, now);
                    let after = self.last_seq(sid);
                    if after > before {
                        self.flow_confirm(sid, after);
                    }
                } else {
                    self.deliver(sid, pending, now);
                }
            }
        }
        matches.clear();
        self.scratch = matches;
    }

    pub(super) fn update_retained(&mut self, message: &Arc<Message>, now: Instant) {
        self.store_retained(message);
        self.note_retain_source(message);
        let old = if message.payload.is_empty() {
            self.retained.remove(&message.topic)
        } else {
            self.retained_bytes += message.payload.len() as u64;
            if self.next_retained_sweep.is_none() {
                self.next_retained_sweep = Some(now + RETAINED_SWEEP);
            }
            let stored = if message.payload.len() <= RETAINED_COPY_MAX {
                Arc::new(Message {
                    payload: Bytes::copy_from_slice(&message.payload),
                    ..Message::clone(message)
                })
            } else {
                Arc::clone(message)
            };
            self.retained.insert(&message.topic, stored)
        };
        if let Some(old) = old {
            self.retained_bytes = self.retained_bytes.saturating_sub(old.payload.len() as u64);
        }
    }

    fn last_seq(&self, sid: SessionId) -> u64 {
        self.sessions.get(&sid).map_or(0, |s| s.outgoing.last_seq())
    }

    /// Hands a message to one session: straight to the connection when the window allows,
    /// otherwise into the session's bounded queue.
    pub(super) fn deliver(&mut self, sid: SessionId, pending: Pending, now: Instant) {
        self.deliver_now(sid, pending, now);
        self.flush_changes(sid);
    }

    pub(super) fn deliver_now(&mut self, sid: SessionId, pending: Pending, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !s.can_read(&pending.message.topic) {
            self.stats.dropped_acl_read += 1;
            s.log_refusal(now, &pending.message.topic, Refusal::AclRead, 1);
            return;
        }
        if pending.qos == QoS::AtMostOnce {
            let reserve = s.window(&self.settings).messages + CONTROL_RESERVE;
            let max_bytes = s.queue_limits(&self.settings).max_bytes;
            let Some(link) = &mut s.link else {
                self.stats.dropped_offline_qos0 += 1;
                return;
            };
            if let Some(backlog) = &mut link.backlog {
                // Behind retained messages still waiting for room: never overtake them.
                if backlog.live >= self.settings.max_outbox_qos0 {
                    self.stats.dropped_outbox_full += 1;
                    let why = Refusal::Full("QoS 0 budget of the outbox (max_queued_messages)");
                    s.log_refusal(now, &pending.message.topic, why, 1);
                } else {
                    backlog.live += 1;
                    backlog.items.push_back((pending, true));
                }
                return;
            }
            // `max_queued_bytes` covers the outbox too: what waits there and in the queue.
            let held = link.outbox.bytes() + s.outgoing.queued_bytes();
            let over_bytes = max_bytes > 0 && held > 0 && held + pending.message.size() > max_bytes;
            if link.outbox.capacity() <= reserve || over_bytes {
                self.stats.dropped_outbox_full += 1;
                let why = Refusal::Full(if over_bytes {
                    "QoS 0 beyond max_queued_bytes"
                } else {
                    "QoS 0 budget of the outbox (max_queued_messages)"
                });
                s.log_refusal(now, &pending.message.topic, why, 1);
                return;
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
            return;
        }
        let publication = pending.message.publication;
        if let Some(p) = publication {
            // A session that moved here lately takes each publication once (see migrate.rs).
            if self.migrations.had(sid, p, now) {
                self.stats.move_duplicates += 1;
                return;
            }
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let window = s.window(&self.settings);
        if s.link.is_some() && s.outgoing.has_room(window) {
            let d = s.outgoing.start(pending, now);
            self.send_delivery(sid, d);
            return;
        }
        // `max_queued_bytes` covers what waits in the outbox as well as the queue.
        let in_outbox = s.link.as_ref().map_or(0, |l| l.outbox.bytes());
        let limits = s.queue_limits(&self.settings).less_bytes(in_outbox);
        let online = s.link.is_some();
        let over_memory = self.settings.memory_limit > 0
            && self
                .queued_total
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_add(pending.message.size())
                > self.settings.memory_limit;
        // Queues that evict their oldest (bridges' store-and-forward) keep their own limits.
        let over_memory = over_memory && !limits.drop_oldest;
        let overfull = !limits.drop_oldest && (over_memory || !s.outgoing.fits(&pending, limits));
        // `queue_full_policy block`: an online subscriber's queue takes it beyond the limit,
        // and the publisher's acknowledgement waits (see router/flow.rs).
        let limits = if overfull && self.flow_overfull(sid, online, now) {
            QueueLimits::UNBOUNDED
        } else {
            limits
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if over_memory && limits != QueueLimits::UNBOUNDED {
            // Beyond `memory_limit` and not held for an online subscriber: dropped.
            if let Some(p) = publication {
                self.migrations.not_had(sid, p);
            }
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            self.stats.dropped_queue_full += 1;
            s.observe_queue(1);
            let why = Refusal::Full("the broker's memory_limit is reached");
            s.log_refusal(now, &pending.message.topic, why, 1);
            return;
        }
        // Dropped: the evicted oldest messages, or the refused new one.
        let topic = Arc::clone(&pending.message.topic);
        let dropped = s.outgoing.enqueue(pending, limits).unwrap_or(1);
        self.stats.dropped_queue_full += dropped;
        s.observe_queue(dropped);
        if dropped > 0 && !limits.drop_oldest {
            if let Some(p) = publication {
                self.migrations.not_had(sid, p);
            }
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if dropped > 0 {
            let why = Refusal::Full(if online {
                "queue full (max_queued_messages / max_queued_bytes)"
            } else {
                "offline session's queue full (max_queued_messages / max_queued_bytes)"
            });
            s.log_refusal(now, &topic, why, dropped);
        }
    }

    /// Sends a delivery to the session's connection, dropping it if it exceeds the client's
    /// Maximum Packet Size [MQTT-3.1.2-25] (a QoS 1/2 one then leaves the window as if sent).
    pub(super) fn send_delivery(&mut self, sid: SessionId, d: Delivery) {
        let holding = self.holding();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(link) = &s.link else {
            return;
        };
        if link.maximum_packet_size < u32::MAX {
            let too_large = d
                .encoded_len(link.protocol)
                .map_or(true, |n| n > link.maximum_packet_size as usize);
            if too_large {
                self.stats.dropped_too_large += 1;
                if let Some(id) = d.packet_id {
                    s.outgoing.abandon(id);
                }
                self.flush_changes(sid);
                return;
            }
        }
        let conn = link.conn;
        if holding {
            if let Some(held) = self.held() {
                held.push((conn, Outbound::Deliver(d)));
                self.stats.messages_sent += 1;
            }
            return;
        }
        match link.outbox.try_send(Outbound::Deliver(d)) {
            Ok(()) => self.stats.messages_sent += 1,
            Err(e) => {
                // Cannot happen for QoS 1/2 (the window fits the outbox); a closed outbox means
                // the connection is ending and its Disconnect command is on its way. In-flight
                // messages stay in the window for redelivery.
                if let TrySendError::Full(Outbound::Deliver(d)) = &e {
                    if d.qos == QoS::AtMostOnce {
                        self.stats.dropped_outbox_full += 1;
                    } else {
                        warn!(conn, "outbox full for a QoS>0 delivery");
                    }
                }
            }
        }
    }

    pub(super) fn send_control(&mut self, sid: SessionId, packet: Packet) {
        self.send_outbound(sid, Outbound::Packet(Box::new(packet)));
    }

    pub(super) fn send_outbound(&mut self, sid: SessionId, out: Outbound) {
        if let Some(link) = self.sessions.get(&sid).and_then(|s| s.link.as_ref()) {
            if link.outbox.try_send(out).is_err() {
                debug!(
                    conn = link.conn,
                    "outbox closed or full for a control packet"
                );
            }
        }
    }
}
