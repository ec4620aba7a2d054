//! The router's side of persistence: what it tells the store, how it holds acknowledgements
//! back until the store says the changes behind them are durable, and how it rebuilds its
//! state from what the store recovered at start-up.
//!
//! A session is written to the store while it is persistent (session expiry > 0). Its
//! messages are journaled by the session itself (`Outgoing::take_changes`) and flushed here
//! after every change; retained messages are written as they change.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use culex_proto::{Packet, PubResp, QoS, ReasonCode};

use super::{Router, SessionId};
use crate::api::{AccessPolicy, ConnId, Outbound};
use crate::message::Message;
use crate::persist::{
    MessageRecord, Recovered, SessionRecord, StoreOp, StoreSink, SubscriptionRecord,
};
use crate::session::{Change, Pending, Subscription};

/// Persistence state of the router: the store's sink and the acknowledgements waiting for it.
#[derive(Debug, Default)]
pub(super) struct Persistence {
    sink: Option<Box<dyn StoreSink>>,
    /// Ticket of the last change submitted.
    last_ticket: u64,
    /// Highest ticket the store reported durable.
    durable: u64,
    /// Acknowledgements (and held deliveries) in the order they were decided, each with the
    /// ticket it waits for.
    acks: VecDeque<(u64, ConnId, Outbound)>,
    /// While routing a QoS 2 PUBLISH the router acknowledges: its deliveries, held back until
    /// what they depend on is durable.
    hold: Option<Vec<(ConnId, Outbound)>>,
    /// While holding: the store ops, submitted as one group when the hold ends.
    group: Option<Vec<StoreOp>>,
    /// How many of `acks` belong to each connection (an ack may only overtake none of them).
    waiting: rustc_hash::FxHashMap<ConnId, usize>,
    /// Wall-clock time matching an instant, to store expiry times that survive a restart.
    wall_origin: Option<(Instant, SystemTime)>,
}

impl Router {
    /// A router that writes what must survive a restart to `sink`. `now` and `wall` are the
    /// same moment on the monotonic and the wall clock; expiry times are stored as wall-clock
    /// times derived from them, so the router still never reads a clock itself.
    pub fn with_store(
        settings: crate::BrokerSettings,
        sink: Box<dyn StoreSink>,
        now: Instant,
        wall: SystemTime,
    ) -> Router {
        let mut r = Router::new(settings);
        r.persist.sink = Some(sink);
        r.persist.wall_origin = Some((now, wall));
        r
    }

    /// Rebuilds retained messages and offline sessions recovered from the store. Restored
    /// sessions check deliveries against `access` until their client reconnects (and brings
    /// its own listener's rules).
    pub fn restore(
        &mut self,
        recovered: Recovered,
        now: Instant,
        access: Option<Arc<dyn AccessPolicy>>,
    ) {
        for message in recovered.retained {
            if message.topic.starts_with("$SYS/") {
                continue;
            }
            self.retained_bytes += message.payload.len() as u64;
            let topic = Arc::clone(&message.topic);
            self.retained.insert(&topic, message);
        }
        if !self.retained.is_empty() {
            self.next_retained_sweep = Some(now + super::RETAINED_SWEEP);
        }
        for rs in recovered.sessions {
            self.restore_session(rs, now, access.clone(), true);
        }
    }

    /// Rebuilds one offline session: recovered from the store (`stored`: its messages are
    /// already there), or moved here from another node of a cluster (written to the store, if
    /// any, when its client connects).
    pub(super) fn restore_session(
        &mut self,
        rs: crate::persist::RecoveredSession,
        now: Instant,
        access: Option<Arc<dyn AccessPolicy>>,
        stored: bool,
    ) {
        let sid = self.new_session(Arc::clone(&rs.client_id));
        let expires_at = match rs.record.expires_at {
            Some(wall) => self.instant_of(wall, now),
            None if rs.record.expiry_interval == u32::MAX => self
                .settings
                .persistent_client_expiration
                .and_then(|d| super::later(now, d)),
            None => super::later(
                now,
                Duration::from_secs(u64::from(rs.record.expiry_interval)),
            ),
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.username = rs.record.username;
        s.expiry_interval = rs.record.expiry_interval;
        self.interest
            .persistence(sid, &s.client_id, s.expiry_interval > 0, std::iter::empty());
        s.inbound_qos2 = rs.record.inbound_qos2;
        s.access = access;
        let counts = self.interest.counts_for(&s.client_id);
        for sub in rs.record.subscriptions {
            let entry = Subscription {
                options: sub.options,
                id: sub.id,
            };
            if self.tree.insert(&sub.filter, sid, entry).is_none() && counts {
                self.interest.added(&sub.filter, sid);
            }
            s.subscriptions.insert(sub.filter, entry);
        }
        let messages = rs
            .messages
            .into_iter()
            .map(|(seq, m)| {
                let pending = Pending {
                    message: m.message,
                    qos: m.qos,
                    retain: m.retain,
                    subscription_ids: m.subscription_ids.into(),
                    seq,
                    queued_at: 0,
                };
                (seq, pending, m.state)
            })
            .collect();
        s.outgoing.restore(messages);
        s.outgoing.set_journal(stored);
        if let Some(at) = expires_at {
            s.expires_at = Some(at);
            self.expiries.insert((at, sid));
        }
        // A session recovered from the store is reported to the cluster, which says whether
        // another node took it over while this one was down.
        if stored {
            self.session_recovered(sid);
        }
    }

    /// The instant of a stored wall-clock time; `None` (never) when it is beyond the clock's
    /// range (a damaged or far-future record).
    fn instant_of(&self, wall: SystemTime, now: Instant) -> Option<Instant> {
        let Some((i0, w0)) = self.persist.wall_origin else {
            return Some(now);
        };
        match wall.duration_since(w0) {
            Ok(ahead) => super::later(i0, ahead),
            // In the past: due now.
            Err(_) => Some(now),
        }
    }

    fn wall_of(&self, at: Instant) -> Option<SystemTime> {
        let (i0, w0) = self.persist.wall_origin?;
        w0.checked_add(at.saturating_duration_since(i0))
    }

    fn submit(&mut self, op: StoreOp) {
        if let Some(group) = self.persist.group.as_mut() {
            group.push(op);
            return;
        }
        if let Some(sink) = self.persist.sink.as_mut() {
            self.persist.last_ticket = sink.submit(op);
        }
    }

    /// True when the broker persists and this session is written to the store.
    pub(super) fn is_stored(&self, sid: SessionId) -> bool {
        self.persist.sink.is_some()
            && self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.outgoing.journaled())
    }

    /// Starts (or stops) writing a session to the store after a CONNECT decided whether it is
    /// persistent.
    pub(super) fn store_after_connect(&mut self, sid: SessionId) {
        if self.persist.sink.is_none() {
            return;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let persistent = s.expiry_interval > 0;
        let was = s.outgoing.journaled();
        if persistent {
            s.outgoing.set_journal(true);
            let backlog = if was {
                Vec::new()
            } else {
                s.outgoing.snapshot()
            };
            self.store_session(sid);
            self.submit_changes(sid, backlog);
        } else if was {
            s.outgoing.set_journal(false);
            let client_id = Arc::clone(&s.client_id);
            self.submit(StoreOp::Session {
                client_id,
                record: None,
            });
        }
    }

    /// Writes the session's record (not its messages) if it is stored.
    pub(super) fn store_session(&mut self, sid: SessionId) {
        if !self.is_stored(sid) {
            return;
        }
        let Some(record) = self.session_record(sid) else {
            return;
        };
        let Some(client_id) = self.sessions.get(&sid).map(|s| Arc::clone(&s.client_id)) else {
            return;
        };
        self.submit(StoreOp::Session {
            client_id,
            record: Some(record),
        });
    }

    /// The durable part of a session, as the store keeps it.
    pub(super) fn session_record(&self, sid: SessionId) -> Option<SessionRecord> {
        let s = self.sessions.get(&sid)?;
        Some(SessionRecord {
            username: s.username.clone(),
            expiry_interval: s.expiry_interval,
            expires_at: s.expires_at.and_then(|at| self.wall_of(at)),
            subscriptions: s
                .subscriptions
                .iter()
                .map(|(filter, sub)| SubscriptionRecord {
                    filter: filter.clone(),
                    options: sub.options,
                    id: sub.id,
                })
                .collect(),
            inbound_qos2: s.inbound_qos2.clone(),
        })
    }

    /// Deletes a stored session and its messages (the session ended).
    pub(super) fn unstore_session(&mut self, client_id: Arc<str>, was_stored: bool) {
        if was_stored {
            self.submit(StoreOp::Session {
                client_id,
                record: None,
            });
        }
    }

    /// Writes the message changes a session journaled.
    pub(super) fn flush_changes(&mut self, sid: SessionId) {
        if self.persist.sink.is_none() {
            return;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let changes = s.outgoing.take_changes();
        if !changes.is_empty() {
            self.submit_changes(sid, changes);
        }
    }

    fn submit_changes(&mut self, sid: SessionId, changes: Vec<Change>) {
        let Some(client_id) = self.sessions.get(&sid).map(|s| Arc::clone(&s.client_id)) else {
            return;
        };
        for change in changes {
            let op = match change {
                Change::Put(seq, p, state) => StoreOp::Message {
                    client_id: Arc::clone(&client_id),
                    seq,
                    record: Some(MessageRecord {
                        message: p.message,
                        qos: p.qos,
                        retain: p.retain,
                        subscription_ids: p.subscription_ids.into_vec(),
                        state,
                    }),
                },
                Change::Delete(seq) => StoreOp::Message {
                    client_id: Arc::clone(&client_id),
                    seq,
                    record: None,
                },
            };
            self.submit(op);
        }
    }

    /// Writes a retained message change.
    pub(super) fn store_retained(&mut self, message: &Arc<Message>) {
        // The broker's own $SYS tree describes this run only; it is rebuilt after a restart.
        if self.persist.sink.is_none() || message.topic.starts_with("$SYS/") {
            return;
        }
        let stored = (!message.payload.is_empty()).then(|| Arc::clone(message));
        self.submit(StoreOp::Retain {
            topic: Arc::clone(&message.topic),
            message: stored,
        });
    }

    /// Acknowledges a client's QoS 1/2 PUBLISH once what it caused is durable.
    pub(super) fn ack_publish(&mut self, sid: SessionId, conn: ConnId, qos: QoS, packet_id: u16) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.flow_answer(conn, Packet::PubAck(PubResp::new(packet_id)), true);
            }
            QoS::ExactlyOnce => {
                // The packet id must outlive a restart until PUBREL, or a retransmission after
                // the restart would be delivered twice.
                if let Some(s) = self.sessions.get_mut(&sid) {
                    if !s.inbound_qos2.contains(&packet_id) {
                        s.inbound_qos2.push(packet_id);
                    }
                }
                self.store_session(sid);
                self.flow_answer(conn, Packet::PubRec(PubResp::new(packet_id)), true);
            }
        }
    }

    /// PUBREL from a client: forget the packet id, then PUBCOMP once that is durable.
    pub(super) fn pubrel(&mut self, conn: ConnId, packet_id: u16) {
        let Some(sid) = self.linked(conn) else {
            return;
        };
        let mut comp = PubResp::new(packet_id);
        let known = self.sessions.get_mut(&sid).is_some_and(|s| {
            let before = s.inbound_qos2.len();
            s.inbound_qos2.retain(|&id| id != packet_id);
            s.inbound_qos2.len() != before
        });
        if known {
            self.store_session(sid);
        } else if self
            .sessions
            .get(&sid)
            .and_then(|s| s.link.as_ref())
            .is_some_and(|l| l.protocol.is_v5())
        {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.flow_answer(conn, Packet::PubComp(comp), false);
    }

    /// Queues an acknowledgement behind the last change submitted and every earlier
    /// acknowledgement of the same connection; sends it at once when nothing is pending.
    pub(super) fn queue_ack(&mut self, conn: ConnId, packet: Packet) {
        self.queue_outbound(conn, Outbound::Packet(Box::new(packet)));
    }

    fn queue_outbound(&mut self, conn: ConnId, out: Outbound) {
        if let Some(held) = self.persist.hold.as_mut() {
            // Its ticket is known once the group is submitted (`release_held`).
            held.push((conn, out));
            return;
        }
        let ticket = self.persist.last_ticket;
        let waiting = self.persist.waiting.get(&conn).copied().unwrap_or(0);
        if ticket <= self.persist.durable && waiting == 0 {
            self.send_to_conn(conn, out);
            return;
        }
        self.persist.acks.push_back((ticket, conn, out));
        *self.persist.waiting.entry(conn).or_insert(0) += 1;
    }

    /// Exactly once across a crash: the deliveries of a QoS 2 PUBLISH the router acknowledges
    /// go out only once the message (in the subscribers' sessions) and its packet id are
    /// durable. Sent earlier, a crash before that point would lose the packet id, and the
    /// publisher's retransmission would reach the subscribers a second time. Call
    /// [`Router::release_held`] after routing and acknowledging.
    pub(super) fn hold_deliveries(&mut self) {
        if self.persist.sink.is_some() {
            self.persist.hold = Some(Vec::new());
            self.persist.group = Some(Vec::new());
        }
    }

    /// True while deliveries are held (see [`Router::hold_deliveries`]).
    pub(super) fn holding(&self) -> bool {
        self.persist.hold.is_some()
    }

    /// Where `send_delivery` puts a delivery while deliveries are held.
    pub(super) fn held(&mut self) -> Option<&mut Vec<(ConnId, Outbound)>> {
        self.persist.hold.as_mut()
    }

    /// Submits the held store ops as one group (the message in its subscribers' sessions and
    /// its packet id become durable together: a crash between the two would deliver the
    /// publisher's retransmission a second time), then queues the held deliveries and
    /// acknowledgements behind it.
    pub(super) fn release_held(&mut self) {
        if let Some(ops) = self.persist.group.take() {
            if !ops.is_empty() {
                self.submit(StoreOp::Group(ops));
            }
        }
        if let Some(held) = self.persist.hold.take() {
            for (conn, out) in held {
                self.queue_outbound(conn, out);
            }
        }
    }

    /// PUBREL to a subscriber after its PUBREC: only once the Released state is durable (as
    /// MQTT's Method A requires). Sent earlier, a crash would bring the message back as
    /// "PUBREC awaited" and resend the PUBLISH, which a receiver that already completed the
    /// exchange takes for a new message.
    pub(super) fn send_pubrel(&mut self, sid: SessionId, packet: Packet) {
        let conn = self
            .sessions
            .get(&sid)
            .filter(|s| s.outgoing.journaled())
            .and_then(|s| s.link.as_ref())
            .map(|l| l.conn);
        match conn {
            Some(conn) if self.persist.sink.is_some() => self.queue_ack(conn, packet),
            _ => self.send_control(sid, packet),
        }
    }

    /// The store made everything up to `ticket` durable: release the acknowledgements that
    /// waited for it, in order.
    pub(super) fn durable(&mut self, ticket: u64) {
        self.persist.durable = self.persist.durable.max(ticket);
        while let Some((t, _, _)) = self.persist.acks.front() {
            if *t > self.persist.durable {
                break;
            }
            let Some((_, conn, out)) = self.persist.acks.pop_front() else {
                break;
            };
            if let Some(n) = self.persist.waiting.get_mut(&conn) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.persist.waiting.remove(&conn);
                }
            }
            self.send_to_conn(conn, out);
        }
    }

    /// Acknowledgements waiting for the store (for metrics).
    pub fn acks_waiting(&self) -> usize {
        self.persist.acks.len()
    }

    /// Sends `out` to connection `conn` if it is still the live link of its session (into the
    /// outbox's reserved control slots).
    pub(super) fn send_to_conn(&mut self, conn: ConnId, out: Outbound) {
        let link = self
            .by_conn
            .get(&conn)
            .and_then(|sid| self.sessions.get(sid))
            .and_then(|s| s.link.as_ref())
            .filter(|l| l.conn == conn);
        if let Some(link) = link {
            // Control slots are reserved in every outbox; a closed one means the connection
            // is ending and needs no acknowledgement any more.
            let _ = link.outbox.try_send(out);
        }
    }
}
