//! Flow control for `queue_full_policy block` (the default): a QoS 1/2 message that would
//! overflow an **online** subscriber's queue is queued anyway and its publisher's
//! acknowledgement (PUBACK / PUBREC) is held until that queue has drained below its low-water
//! mark. The publisher's connection stops reading while the router owes it answers, and an
//! MQTT 5 publisher runs out of Receive Maximum: publishers slow down to the pace of their
//! slowest online subscriber instead of the broker acknowledging messages it then drops.
//!
//! Bounds: the router acknowledges every QoS 1/2 PUBLISH under this policy, so what a queue
//! holds beyond its limit is at most what the publishers routing to it have unanswered (a
//! connection stops reading at a fixed number of those). A subscriber that makes no progress
//! for `slow_client_timeout` while it holds publishers back is disconnected (MQTT 5: 0x97
//! Quota exceeded); its session keeps a queue trimmed to the limits, and the publishers go on.
//! Offline sessions and QoS 0 messages keep the bounded drop (counted).
//!
//! Acknowledgements keep their order per publisher [MQTT-4.6.0-2]: one that waits holds back
//! every later answer to the same connection.
//!
//! The same queue of owed answers serves sessions that confirm publications
//! (`QueuePolicy::confirms_publishers`, the cluster link): the answer to a PUBLISH routed to
//! such a session waits until the session no longer holds that message (acknowledged it, or
//! dropped it: then nothing would ever confirm it).

use std::collections::VecDeque;
use std::time::Instant;

use culex_proto::{Packet, ReasonCode};
use rustc_hash::{FxHashMap, FxHashSet};

use super::Router;
use super::SessionId;
use crate::api::ConnId;
use crate::session::QueueLimits;

/// The flow control state of the router.
#[derive(Debug, Default)]
pub(super) struct Flow {
    /// While routing a client's PUBLISH: the publisher's connection, whether the router
    /// answers it (else the connection already did), and the over-full subscriber sessions
    /// the message went into.
    routing: Option<Routing>,
    /// Publisher connections told to let the router answer (`Outbound::Pressure(true)`).
    pressured: FxHashSet<ConnId>,
    /// Answers owed to each publisher connection, in order, while any of them waits.
    owed: FxHashMap<ConnId, Owed>,
    /// Subscriber sessions over their queue limit that hold answers back.
    holders: FxHashMap<SessionId, Holder>,
    /// Subscribers being disconnected for slowness: until their connection has ended, what
    /// overflows their queue is dropped rather than holding publishers back again.
    slow: FxHashSet<SessionId>,
    /// Confirming sessions: the messages (by sequence number, increasing) whose publishers'
    /// answers wait for them: (sequence number, publisher connection, answer's number).
    confirms: FxHashMap<SessionId, VecDeque<(u64, ConnId, u64)>>,
}

/// The PUBLISH being routed.
#[derive(Debug)]
struct Routing {
    conn: ConnId,
    router_acks: bool,
    over: Vec<SessionId>,
    /// Confirming sessions that took the message, with its sequence number there.
    confirm: Vec<(SessionId, u64)>,
}

/// The answers owed to one connection.
#[derive(Debug, Default)]
struct Owed {
    /// Sequence number of the first entry of `queue`.
    first: u64,
    queue: VecDeque<Entry>,
}

/// One answer, and how many over-full queues it still waits for.
#[derive(Debug)]
struct Entry {
    waits: u32,
    packet: Packet,
}

/// A subscriber session over its queue limit.
#[derive(Debug)]
struct Holder {
    /// When it last made progress (became a holder, or acknowledged a delivery).
    since: Instant,
    /// The answers it holds back: (publisher connection, sequence number).
    held: Vec<(ConnId, u64)>,
}

impl Flow {
    /// The earliest time a holder reaches its slow-client timeout.
    pub(super) fn next_deadline(&self, timeout: std::time::Duration) -> Option<Instant> {
        if timeout.is_zero() {
            return None;
        }
        self.holders
            .values()
            .map(|h| super::later(h.since, timeout))
            .min()
            .flatten()
    }
}

/// The answer numbered `seq` among those owed, if still owed.
fn seq_index(owed: &mut Owed, seq: u64) -> Option<&mut Entry> {
    let i = seq.checked_sub(owed.first)?;
    usize::try_from(i).ok().and_then(|i| owed.queue.get_mut(i))
}

/// The low-water mark of a queue with these limits: half of each limit.
fn drained(limits: QueueLimits, queued: usize, queued_bytes: u64) -> bool {
    queued <= limits.max_messages / 2
        && (limits.max_bytes == 0 || queued_bytes <= limits.max_bytes / 2)
}

impl Router {
    /// Starts routing a PUBLISH from `conn`; `router_acks`: the router answers it (else the
    /// connection already has).
    pub(super) fn flow_begin(&mut self, conn: ConnId, router_acks: bool) {
        self.flow.routing = Some(Routing {
            conn,
            router_acks,
            over: Vec::new(),
            confirm: Vec::new(),
        });
    }

    /// Routing of the PUBLISH is over (its answer, if the router gives it, was decided).
    pub(super) fn flow_end(&mut self) {
        self.flow.routing = None;
    }

    /// While routing a client's QoS 1/2 PUBLISH the router answers: `sid`, a confirming
    /// session, took the message as `seq`; the answer waits for it.
    pub(super) fn flow_confirm(&mut self, sid: SessionId, seq: u64) {
        if let Some(r) = self.flow.routing.as_mut().filter(|r| r.router_acks) {
            r.confirm.push((sid, seq));
        }
    }

    /// True while routing a PUBLISH whose answer the router gives.
    pub(super) fn flow_router_answers(&self) -> bool {
        self.flow.routing.as_ref().is_some_and(|r| r.router_acks)
    }

    /// `sid` (a confirming session) acknowledged or dropped messages: the answers that waited
    /// for messages it no longer holds go out.
    pub(super) fn flow_confirmed(&mut self, sid: SessionId) {
        let Some(waiting) = self.flow.confirms.get_mut(&sid) else {
            return;
        };
        let lowest = self
            .sessions
            .get(&sid)
            .map_or(Some(u64::MAX), |s| s.outgoing.lowest_outstanding());
        let mut released = Vec::new();
        while let Some(&(seq, conn, owed_seq)) = waiting.front() {
            // Held while the session still has it: the lowest outstanding or later.
            if lowest.is_some_and(|low| seq >= low) {
                break;
            }
            waiting.pop_front();
            released.push((conn, owed_seq));
        }
        if waiting.is_empty() {
            self.flow.confirms.remove(&sid);
        }
        self.flow_unblock(released);
    }

    /// `sid` ends: every answer that waited for it goes (its messages will never be
    /// confirmed).
    fn sessions_gone_confirm(&mut self, sid: SessionId) {
        if let Some(waiting) = self.flow.confirms.remove(&sid) {
            self.flow_unblock(
                waiting
                    .into_iter()
                    .map(|(_, conn, owed_seq)| (conn, owed_seq)),
            );
        }
    }

    /// Each answer named (publisher connection, answer's number) waits for one thing less;
    /// what no longer waits goes out. Returns the connections concerned.
    fn flow_unblock(&mut self, released: impl IntoIterator<Item = (ConnId, u64)>) -> Vec<ConnId> {
        let mut conns = Vec::new();
        for (conn, owed_seq) in released {
            let Some(entry) = self
                .flow
                .owed
                .get_mut(&conn)
                .and_then(|o| seq_index(o, owed_seq))
            else {
                continue;
            };
            entry.waits = entry.waits.saturating_sub(1);
            if !conns.contains(&conn) {
                conns.push(conn);
            }
        }
        for conn in &conns {
            self.flow_send_ready(*conn);
        }
        conns
    }

    /// A QoS 1/2 message does not fit `sid`'s queue. True when it may be queued beyond the
    /// limit with its publisher's answer held (policy `block`, the subscriber online, and the
    /// router acknowledging the PUBLISH being routed); false when it is dropped as before.
    pub(super) fn flow_overfull(&mut self, sid: SessionId, online: bool, now: Instant) -> bool {
        if !self.settings.queue_full_block || !online || self.flow.slow.contains(&sid) {
            return false;
        }
        let Some(routing) = self.flow.routing.as_mut() else {
            return false;
        };
        if !routing.router_acks {
            // Already acknowledged by its connection: queued all the same (nothing
            // acknowledged is dropped; the overshoot is bounded by what the publisher sent
            // before it heard), and the publisher is told to let the router answer from now
            // on, so that the next ones can be held.
            let conn = routing.conn;
            if self.flow.pressured.insert(conn) {
                self.send_to_conn(conn, crate::api::Outbound::Pressure(true));
            }
        } else if !routing.over.contains(&sid) {
            routing.over.push(sid);
        }
        if !self.flow.holders.contains_key(&sid) {
            self.stats.flow_blocked += 1;
            self.flow.holders.insert(
                sid,
                Holder {
                    since: now,
                    held: Vec::new(),
                },
            );
        }
        true
    }

    /// Sends `packet` (an answer to `conn`) now, or after what it must wait for: the
    /// over-full queues the PUBLISH being routed went into (`routed`: this is that PUBLISH's
    /// answer) and every earlier answer to the same connection.
    pub(super) fn flow_answer(&mut self, conn: ConnId, packet: Packet, routed: bool) {
        let (over, confirm) = if routed {
            match self.flow.routing.take() {
                Some(r) if r.conn == conn => (r.over, r.confirm),
                _ => (Vec::new(), Vec::new()),
            }
        } else {
            (Vec::new(), Vec::new())
        };
        if over.is_empty() && confirm.is_empty() && !self.flow.owed.contains_key(&conn) {
            self.queue_ack(conn, packet);
            return;
        }
        let owed = self.flow.owed.entry(conn).or_default();
        let seq = owed.first + owed.queue.len() as u64;
        owed.queue.push_back(Entry {
            waits: u32::try_from(over.len() + confirm.len()).unwrap_or(u32::MAX),
            packet,
        });
        for sid in over {
            if let Some(h) = self.flow.holders.get_mut(&sid) {
                h.held.push((conn, seq));
            }
        }
        let confirming: Vec<SessionId> = confirm.iter().map(|(sid, _)| *sid).collect();
        for (sid, msg_seq) in confirm {
            self.flow
                .confirms
                .entry(sid)
                .or_default()
                .push_back((msg_seq, conn, seq));
        }
        // A confirming session may have finished with the message already.
        for sid in confirming {
            self.flow_confirmed(sid);
        }
        self.flow_send_ready(conn);
    }

    /// Sends the answers at the front of `conn`'s queue that wait for nothing any more.
    fn flow_send_ready(&mut self, conn: ConnId) {
        loop {
            let Some(owed) = self.flow.owed.get_mut(&conn) else {
                return;
            };
            if owed.queue.front().is_none_or(|e| e.waits > 0) {
                if owed.queue.is_empty() {
                    self.flow.owed.remove(&conn);
                }
                return;
            }
            let Some(entry) = owed.queue.pop_front() else {
                return;
            };
            owed.first += 1;
            self.queue_ack(conn, entry.packet);
        }
    }

    /// `sid` made progress (acknowledged a delivery, went offline, ended): if its queue is
    /// below the low-water mark, or it is offline, what it held back goes out.
    pub(super) fn flow_progress(&mut self, sid: SessionId, now: Instant) {
        if !self.flow.holders.contains_key(&sid) {
            return;
        }
        let release = match self.sessions.get(&sid) {
            None => true,
            Some(s) => {
                s.link.is_none()
                    || drained(
                        s.queue_limits(&self.settings),
                        s.outgoing.queued_len(),
                        s.outgoing.queued_bytes(),
                    )
            }
        };
        if !release {
            if let Some(h) = self.flow.holders.get_mut(&sid) {
                h.since = now;
            }
            return;
        }
        self.flow_release(sid);
    }

    /// Stops `sid` holding anything back.
    fn flow_release(&mut self, sid: SessionId) {
        let Some(holder) = self.flow.holders.remove(&sid) else {
            return;
        };
        let conns = self.flow_unblock(holder.held);
        // Publishers no longer held back by anyone may answer themselves again.
        let done: Vec<ConnId> = if self.flow.holders.is_empty() {
            self.flow.pressured.drain().collect()
        } else {
            conns
                .into_iter()
                .filter(|c| !self.flow.owed.contains_key(c) && self.flow.pressured.remove(c))
                .collect()
        };
        for conn in done {
            self.send_to_conn(conn, crate::api::Outbound::Pressure(false));
        }
    }

    /// Session `sid`'s connection `conn` ended (or the session did; `conn` 0): nothing is
    /// owed to it as a publisher, and as a subscriber it holds nobody back any more. Its
    /// queue, if flow control let it grow, is trimmed to the limits (an offline session's
    /// queue is bounded; what is dropped is counted).
    pub(super) fn flow_disconnected(&mut self, sid: SessionId, conn: ConnId) {
        self.flow.owed.remove(&conn);
        self.flow.pressured.remove(&conn);
        self.flow.slow.remove(&sid);
        if conn == 0 {
            // The session ends: nothing it held will be confirmed.
            self.sessions_gone_confirm(sid);
        }
        if !self.flow.holders.contains_key(&sid) {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            let limits = s.queue_limits(&self.settings);
            let dropped = s.outgoing.trim(limits);
            self.stats.dropped_queue_full += dropped;
            s.observe_queue(dropped);
            self.flush_changes(sid);
        }
        self.flow_release(sid);
    }

    /// Disconnects subscribers that held publishers back without progress for
    /// `slow_client_timeout`; their sessions keep a queue trimmed to the limits.
    pub(super) fn flow_tick(&mut self, now: Instant) {
        let timeout = self.settings.slow_client_timeout;
        if timeout.is_zero() {
            return;
        }
        let stuck: Vec<SessionId> = self
            .flow
            .holders
            .iter()
            .filter(|(_, h)| super::later(h.since, timeout).is_some_and(|t| t <= now))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in stuck {
            if let Some(s) = self.sessions.get_mut(&sid) {
                if let Some(link) = &s.link {
                    tracing::info!(client_id = %crate::log_clip::Clipped(&s.client_id),
                        "disconnecting a slow subscriber: its queue stayed full for slow_client_timeout");
                    link.outbox.close(ReasonCode::QuotaExceeded);
                    self.flow.slow.insert(sid);
                }
                let limits = s.queue_limits(&self.settings);
                let dropped = s.outgoing.trim(limits);
                self.stats.dropped_queue_full += dropped;
                s.observe_queue(dropped);
                self.stats.slow_client_disconnects += 1;
            }
            self.flush_changes(sid);
            self.flow_release(sid);
        }
    }
}
