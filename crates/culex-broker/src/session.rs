//! One client session: its subscriptions, its will, and the outgoing QoS 1/2 state machine
//! (in-flight window, packet identifiers, bounded queue).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rustc_hash::FxHashMap;
use tracing::{info, warn};

use culex_proto::{LastWill, Protocol, QoS, SubscriptionOptions};

use crate::api::{AccessPolicy, ConnId, Delivery, QueuePolicy, SubscriptionIds};
use crate::log_clip::Clipped;
use crate::log_gate::LogGate;
use crate::message::Message;
use crate::outbox::Outbox;
use crate::persist::MessageState;
use crate::settings::BrokerSettings;

/// A live connection attached to a session.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) conn: ConnId,
    pub(crate) outbox: Outbox,
    pub(crate) protocol: Protocol,
    pub(crate) receive_maximum: u16,
    pub(crate) maximum_packet_size: u32,
    /// QoS 0 messages waiting for room in the outbox (see router/retained_send.rs); boxed
    /// and only while there are some, since every connected session carries the slot.
    pub(crate) backlog: Option<Box<Qos0Backlog>>,
}

/// QoS 0 messages for one connection that wait for room in its outbox: retained messages
/// sent on SUBSCRIBE, and the live ones that arrive behind them.
#[derive(Debug, Default)]
pub(crate) struct Qos0Backlog {
    /// In order; `true` marks a live message.
    pub(crate) items: VecDeque<(Pending, bool)>,
    /// How many of `items` are live (bounded by the QoS 0 budget of the outbox).
    pub(crate) live: usize,
}

/// One subscription of a session, stored under its full filter (including `$share/...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub(crate) options: SubscriptionOptions,
    pub(crate) id: Option<u32>,
}

/// A message waiting for room in the in-flight window.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) message: Arc<Message>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) subscription_ids: SubscriptionIds,
    /// Per-session sequence number, assigned when the session takes the message (0 before):
    /// the order of delivery and the message's key in the store.
    pub(crate) seq: u64,
    /// When the router took the message, in whole seconds of its clock (`Router::secs`);
    /// 0 for messages recovered from the store or moved from another node (as old as can be).
    pub(crate) queued_at: u32,
}

/// A change to a session's messages, journaled for the store while the session is persistent.
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// The message with this sequence number is now in this state.
    Put(u64, Pending, MessageState),
    /// The message with this sequence number is gone (delivered, dropped or expired).
    Delete(u64),
}

/// Where an outgoing QoS 1/2 exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflightState {
    /// QoS 1 PUBLISH sent, PUBACK awaited.
    WaitPubAck,
    /// QoS 2 PUBLISH sent, PUBREC awaited.
    WaitPubRec,
    /// PUBREL sent, PUBCOMP awaited.
    Released,
}

#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    /// `pending.seq` orders redelivery as the original sending [MQTT-4.6.0-1].
    pub(crate) pending: Pending,
    pub(crate) state: InflightState,
}

impl Inflight {
    fn stored_state(&self, packet_id: u16) -> MessageState {
        match self.state {
            InflightState::WaitPubAck => MessageState::WaitPubAck(packet_id),
            InflightState::WaitPubRec => MessageState::WaitPubRec(packet_id),
            InflightState::Released => MessageState::Released(packet_id),
        }
    }
}

/// What a redelivery on reconnect sends.
#[derive(Debug)]
pub(crate) enum Resend {
    Publish(Delivery),
    PubRel(u16),
}

/// Why a message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    QueueFull,
}

/// The queue limits in force for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueLimits {
    pub(crate) max_messages: usize,
    /// 0 = no byte limit.
    pub(crate) max_bytes: u64,
    /// Evict the oldest queued messages to make room instead of refusing.
    pub(crate) drop_oldest: bool,
}

impl QueueLimits {
    /// No limit: a queue that must take a message (flow control holds its publisher back).
    pub(crate) const UNBOUNDED: QueueLimits = QueueLimits {
        max_messages: usize::MAX,
        max_bytes: 0,
        drop_oldest: false,
    };

    /// The broker-wide limits, or the session's own.
    /// These limits with `bytes` already taken elsewhere (the outbox): the byte limit, if
    /// any, shrinks by that much (never to "no limit").
    pub(crate) fn less_bytes(self, bytes: u64) -> Self {
        if self.max_bytes == 0 {
            return self;
        }
        QueueLimits {
            max_bytes: self.max_bytes.saturating_sub(bytes).max(1),
            ..self
        }
    }

    pub(crate) fn of(settings: &BrokerSettings, policy: Option<&QueuePolicy>) -> Self {
        match policy {
            Some(p) => QueueLimits {
                max_messages: p.max_messages,
                max_bytes: p.max_bytes,
                drop_oldest: p.drop_oldest,
            },
            None => QueueLimits {
                max_messages: settings.max_queued_messages,
                max_bytes: settings.max_queued_bytes,
                drop_oldest: false,
            },
        }
    }
}

/// Queue capacity (in messages) an empty queue keeps; a larger one is released when drained.
const QUEUE_KEEP: usize = 64;

/// How much may be in flight to one client at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// QoS 1/2 messages (`max_inflight_messages`, the client's Receive Maximum).
    pub(crate) messages: usize,
    /// Bytes ([`Message::size`](crate::Message::size)) of the messages in flight
    /// (`max_inflight_bytes`): a new one starts while fewer are in flight, so one message
    /// larger than the limit still goes, alone, as in Mosquitto. 0 = no byte limit.
    pub(crate) bytes: u64,
}

impl Window {
    /// A window of `messages` with no byte limit.
    #[cfg(test)]
    pub(crate) fn messages(messages: usize) -> Window {
        Window { messages, bytes: 0 }
    }
}

/// The bytes queued in one session, kept in step with a broker-wide total (if counted into
/// one): every change goes through [`QueuedBytes::add`] and [`QueuedBytes::sub`], and what is
/// left when the queue goes away is taken off the total.
#[derive(Debug, Default)]
struct QueuedBytes {
    mine: u64,
    total: Option<Arc<AtomicU64>>,
}

impl QueuedBytes {
    fn get(&self) -> u64 {
        self.mine
    }

    fn add(&mut self, n: u64) {
        self.mine += n;
        if let Some(t) = &self.total {
            t.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn sub(&mut self, n: u64) {
        let n = n.min(self.mine);
        self.mine -= n;
        if let Some(t) = &self.total {
            t.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        let left = self.mine;
        self.sub(left);
    }
}

/// The outgoing side of a session: in-flight QoS 1/2 messages and the queue behind them.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    inflight: FxHashMap<u16, Inflight>,
    /// Total size of the messages in `inflight`.
    inflight_bytes: u64,
    queue: VecDeque<Pending>,
    queued_bytes: QueuedBytes,
    next_packet_id: u16,
    next_seq: u64,
    /// Changes since the last `take_changes`, recorded only while `journal` is on.
    changes: Vec<Change>,
    journal: bool,
}

impl Outgoing {
    /// Starts or stops journaling changes for the store.
    pub(crate) fn set_journal(&mut self, on: bool) {
        self.journal = on;
        if !on {
            self.changes.clear();
        }
    }

    /// True while changes are journaled (the session is written to the store).
    pub(crate) fn journaled(&self) -> bool {
        self.journal
    }

    /// The changes journaled since the last call.
    pub(crate) fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Every message of the session as it stands, in sequence order (to write a whole
    /// session to the store when it becomes persistent).
    pub(crate) fn snapshot(&self) -> Vec<Change> {
        let mut all: Vec<Change> = self
            .inflight
            .iter()
            .map(|(id, f)| Change::Put(f.pending.seq, f.pending.clone(), f.stored_state(*id)))
            .chain(
                self.queue
                    .iter()
                    .map(|p| Change::Put(p.seq, p.clone(), MessageState::Queued)),
            )
            .collect();
        all.sort_by_key(|c| match c {
            Change::Put(seq, ..) | Change::Delete(seq) => *seq,
        });
        all
    }

    /// Rebuilds the outgoing state of a session loaded from the store.
    pub(crate) fn restore(&mut self, messages: Vec<(u64, Pending, MessageState)>) {
        for (seq, mut pending, state) in messages {
            pending.seq = seq;
            self.next_seq = self.next_seq.max(seq + 1);
            let (id, state) = match state {
                MessageState::Queued => {
                    self.queued_bytes.add(pending.message.size());
                    self.queue.push_back(pending);
                    continue;
                }
                MessageState::WaitPubAck(id) => (id, InflightState::WaitPubAck),
                MessageState::WaitPubRec(id) => (id, InflightState::WaitPubRec),
                MessageState::Released(id) => (id, InflightState::Released),
            };
            self.next_packet_id = self.next_packet_id.max(id);
            self.inflight_bytes += pending.message.size();
            self.inflight.insert(id, Inflight { pending, state });
        }
    }

    fn record(&mut self, change: Change) {
        if self.journal {
            self.changes.push(change);
        }
    }

    fn assign_seq(&mut self, pending: &mut Pending) {
        if pending.seq == 0 {
            self.next_seq = self.next_seq.max(1);
            pending.seq = self.next_seq;
            self.next_seq += 1;
        }
    }

    /// Sequence number of the last message taken (0 before the first).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// The lowest sequence number still queued or in flight (PUBREL sent included), if any.
    pub(crate) fn lowest_outstanding(&self) -> Option<u64> {
        let inflight = self.inflight.values().map(|f| f.pending.seq).min();
        let queued = self.queue.front().map(|p| p.seq);
        inflight.into_iter().chain(queued).min()
    }

    /// When the oldest queued or in-flight message was taken (see [`Pending::queued_at`]).
    pub(crate) fn oldest_queued_at(&self) -> Option<u32> {
        let inflight = self.inflight.values().map(|f| f.pending.queued_at).min();
        let queued = self.queue.iter().map(|p| p.queued_at).min();
        inflight.into_iter().chain(queued).min()
    }

    pub(crate) fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub(crate) fn queued_len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn queued_bytes(&self) -> u64 {
        self.queued_bytes.get()
    }

    /// Counts this queue's bytes into `total` (the broker-wide figure `memory_limit` caps)
    /// from now on, including what it already holds.
    pub(crate) fn count_into(&mut self, total: Arc<AtomicU64>) {
        total.fetch_add(self.queued_bytes.mine, Ordering::Relaxed);
        if let Some(old) = self.queued_bytes.total.replace(total) {
            old.fetch_sub(self.queued_bytes.mine, Ordering::Relaxed);
        }
    }

    /// Whether `pending` fits the queue under `limits` without evicting anything.
    pub(crate) fn fits(&self, pending: &Pending, limits: QueueLimits) -> bool {
        let size = pending.message.size();
        let over_bytes = limits.max_bytes > 0
            && self.queued_bytes.get() + size > limits.max_bytes
            && !self.queue.is_empty();
        self.queue.len() < limits.max_messages && !over_bytes
    }

    /// Drops the newest queued messages until the queue is within `limits` (a queue that
    /// flow control let grow beyond them, once its client is gone). Returns how many.
    pub(crate) fn trim(&mut self, limits: QueueLimits) -> u64 {
        let mut dropped = 0;
        while self.queue.len() > limits.max_messages
            || (limits.max_bytes > 0
                && self.queued_bytes.get() > limits.max_bytes
                && self.queue.len() > 1)
        {
            let Some(p) = self.queue.pop_back() else {
                break;
            };
            self.queued_bytes.sub(p.message.size());
            self.record(Change::Delete(p.seq));
            dropped += 1;
        }
        dropped
    }

    /// Adds a QoS 1/2 message behind the window, within the queue limits. With
    /// `drop_oldest`, the oldest queued messages make room; returns how many were dropped.
    pub(crate) fn enqueue(
        &mut self,
        pending: Pending,
        limits: QueueLimits,
    ) -> Result<u64, Refused> {
        let size = pending.message.size();
        let full = |o: &Self| {
            let over_bytes = limits.max_bytes > 0
                && o.queued_bytes.get() + size > limits.max_bytes
                && !o.queue.is_empty();
            o.queue.len() >= limits.max_messages || over_bytes
        };
        let mut evicted = 0;
        while full(self) {
            if !limits.drop_oldest {
                return Err(Refused::QueueFull);
            }
            let Some(old) = self.queue.pop_front() else {
                // Nothing to evict (a zero limit): refuse.
                return Err(Refused::QueueFull);
            };
            self.queued_bytes.sub(old.message.size());
            self.record(Change::Delete(old.seq));
            evicted += 1;
        }
        let mut pending = pending;
        self.assign_seq(&mut pending);
        self.queued_bytes.add(size);
        if self.journal {
            self.changes.push(Change::Put(
                pending.seq,
                pending.clone(),
                MessageState::Queued,
            ));
        }
        self.queue.push_back(pending);
        Ok(evicted)
    }

    /// Moves queued messages into the window while there is room, returning the deliveries
    /// to send. Expired messages are dropped and counted in `expired`.
    pub(crate) fn pump(
        &mut self,
        window: Window,
        now: Instant,
        expired: &mut u64,
    ) -> Vec<Delivery> {
        let mut out = Vec::new();
        while self.window_open(window) {
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes.sub(p.message.size());
            if p.message.is_expired(now) {
                *expired += 1;
                self.record(Change::Delete(p.seq));
                continue;
            }
            out.push(self.start(p, now));
        }
        if self.queue.is_empty() && self.queue.capacity() > QUEUE_KEEP {
            // The queue only fills while the window is full (a burst, or an offline client);
            // once drained, give its memory back instead of keeping the burst's size for good.
            self.queue = VecDeque::new();
        }
        out
    }

    /// True when a new message may go straight into the window.
    pub(crate) fn has_room(&self, window: Window) -> bool {
        self.queue.is_empty() && self.window_open(window)
    }

    /// True when one more message may start: below both the message and the byte limit.
    fn window_open(&self, window: Window) -> bool {
        self.inflight.len() < window.messages
            && (window.bytes == 0 || self.inflight_bytes < window.bytes)
    }

    /// Takes an exchange out of the window.
    fn remove_inflight(&mut self, packet_id: u16) -> Option<Inflight> {
        let f = self.inflight.remove(&packet_id)?;
        self.inflight_bytes = self.inflight_bytes.saturating_sub(f.pending.message.size());
        Some(f)
    }

    /// Puts a message into the window and returns its delivery.
    pub(crate) fn start(&mut self, mut pending: Pending, now: Instant) -> Delivery {
        self.assign_seq(&mut pending);
        let packet_id = self.allocate_packet_id();
        let state = if pending.qos == QoS::ExactlyOnce {
            InflightState::WaitPubRec
        } else {
            InflightState::WaitPubAck
        };
        let delivery = Delivery {
            message: Arc::clone(&pending.message),
            qos: pending.qos,
            packet_id: Some(packet_id),
            dup: false,
            retain: pending.retain,
            subscription_ids: pending.subscription_ids.clone(),
            expiry_interval: pending.message.remaining_expiry(now),
        };
        let inflight = Inflight { pending, state };
        self.inflight_bytes += inflight.pending.message.size();
        if self.journal {
            self.changes.push(Change::Put(
                inflight.pending.seq,
                inflight.pending.clone(),
                inflight.stored_state(packet_id),
            ));
        }
        self.inflight.insert(packet_id, inflight);
        delivery
    }

    /// Next free non-zero packet identifier. The window is at most 65535 wide, so one is free.
    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                self.next_packet_id = 1;
            }
            if !self.inflight.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    /// PUBACK: true if it completed a QoS 1 exchange.
    pub(crate) fn ack(&mut self, packet_id: u16) -> bool {
        self.finish_if(packet_id, InflightState::WaitPubAck)
    }

    /// PUBCOMP: true if it completed a QoS 2 exchange.
    pub(crate) fn comp(&mut self, packet_id: u16) -> bool {
        self.finish_if(packet_id, InflightState::Released)
    }

    fn finish_if(&mut self, packet_id: u16, expected: InflightState) -> bool {
        // One lookup: this runs for every acknowledgement.
        let Entry::Occupied(entry) = self.inflight.entry(packet_id) else {
            return false;
        };
        if entry.get().state != expected {
            return false;
        }
        let f = entry.remove();
        self.inflight_bytes = self.inflight_bytes.saturating_sub(f.pending.message.size());
        self.record(Change::Delete(f.pending.seq));
        true
    }

    /// PUBREC. Success moves the exchange to PUBREL (returns true: send PUBREL); an error
    /// reason ends it (returns false). Unknown ids return false. A PUBREC for an exchange
    /// already at PUBREL is answered with PUBREL again.
    pub(crate) fn rec(&mut self, packet_id: u16, error: bool) -> bool {
        match self.inflight.get_mut(&packet_id) {
            Some(f) if f.state == InflightState::WaitPubRec && error => {
                let seq = f.pending.seq;
                self.remove_inflight(packet_id);
                self.record(Change::Delete(seq));
                false
            }
            Some(f) if matches!(f.state, InflightState::WaitPubRec | InflightState::Released) => {
                let changed = f.state != InflightState::Released;
                f.state = InflightState::Released;
                if changed && self.journal {
                    let put = Change::Put(
                        f.pending.seq,
                        f.pending.clone(),
                        MessageState::Released(packet_id),
                    );
                    self.changes.push(put);
                }
                true
            }
            _ => false,
        }
    }

    /// Everything to resend when a persistent session reconnects, in original order: PUBLISH
    /// with DUP for unacknowledged messages, PUBREL for those past PUBREC [MQTT-4.4.0-1].
    /// Expiry does not apply to them: their delivery has started.
    pub(crate) fn redeliver(&mut self, now: Instant) -> Vec<Resend> {
        let mut ids: Vec<(u64, u16)> = self
            .inflight
            .iter()
            .map(|(id, f)| (f.pending.seq, *id))
            .collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for (_, id) in ids {
            let Some(f) = self.inflight.get(&id) else {
                continue;
            };
            // Onward delivery has started for everything in flight, so expiry no longer
            // applies: it is resent whatever its age (MQTT 5 section 3.3.2.3.3).
            match f.state {
                InflightState::Released => out.push(Resend::PubRel(id)),
                _ => out.push(Resend::Publish(Delivery {
                    message: Arc::clone(&f.pending.message),
                    qos: f.pending.qos,
                    packet_id: Some(id),
                    dup: true,
                    retain: f.pending.retain,
                    subscription_ids: f.pending.subscription_ids.clone(),
                    expiry_interval: f.pending.message.remaining_expiry(now),
                })),
            }
        }
        out
    }

    /// Drops every queued message, and every in-flight one not yet past PUBREC, whose topic
    /// `may_read` refuses (the ACL changed): none of them is sent or resent. Returns how many.
    pub(crate) fn revoke(&mut self, may_read: impl Fn(&str) -> bool) -> u64 {
        let mut dropped = 0;
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for p in std::mem::take(&mut self.queue) {
            if may_read(&p.message.topic) {
                kept.push_back(p);
            } else {
                self.queued_bytes.sub(p.message.size());
                self.record(Change::Delete(p.seq));
                dropped += 1;
            }
        }
        self.queue = kept;
        let denied: Vec<u16> = self
            .inflight
            .iter()
            // Past PUBREC the client has the message; PUBREL/PUBCOMP only finish the exchange.
            .filter(|(_, f)| {
                f.state != InflightState::Released && !may_read(&f.pending.message.topic)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in denied {
            self.abandon(id);
            dropped += 1;
        }
        dropped
    }

    /// Removes an in-flight entry that could not be delivered (e.g. too large for the client).
    pub(crate) fn abandon(&mut self, packet_id: u16) {
        if let Some(f) = self.remove_inflight(packet_id) {
            self.record(Change::Delete(f.pending.seq));
        }
    }
}

/// One client session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: Arc<str>,
    pub(crate) link: Option<Link>,
    pub(crate) subscriptions: HashMap<String, Subscription>,
    pub(crate) outgoing: Outgoing,
    /// Session expiry interval in seconds; `u32::MAX` never expires.
    pub(crate) expiry_interval: u32,
    /// When an offline session expires.
    pub(crate) expires_at: Option<Instant>,
    /// Boxed: most sessions have none, and a will (with its properties) is ~400 bytes.
    pub(crate) will: Option<Box<LastWill>>,
    pub(crate) inbound_qos2: Vec<u16>,
    pub(crate) username: Option<String>,
    pub(crate) access: Option<Arc<dyn AccessPolicy>>,
    /// What few sessions need (see [`Rare`]), allocated with the first use.
    rare: Option<Box<Rare>>,
}

/// The parts of a session most never use, boxed together: every session's slot is paid by
/// each connection, and a session map at 15,000 entries holds about twice their size.
#[derive(Debug, Default)]
struct Rare {
    /// Queue limits of its own (from the last CONNECT) instead of the broker's: only bridges
    /// have one.
    queue_policy: Option<QueuePolicy>,
    /// Rate limit of the log lines about this client's denials and drops.
    log_gate: LogGate,
}

/// Why messages were not delivered to a client, for [`Session::log_refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The ACL does not let it read the topic (INFO).
    AclRead,
    /// The ACL does not let it subscribe to the filter (INFO).
    AclSubscribe,
    /// Its queue or outbox was full (WARN).
    Full(&'static str),
}

impl Session {
    /// The queue limits in force for this session.
    pub(crate) fn queue_limits(&self, settings: &BrokerSettings) -> QueueLimits {
        QueueLimits::of(settings, self.queue_policy())
    }

    /// Queue limits of its own (from the last CONNECT), if any; `None` uses the broker's.
    pub(crate) fn queue_policy(&self) -> Option<&QueuePolicy> {
        self.rare.as_ref().and_then(|r| r.queue_policy.as_ref())
    }

    /// Sets (or clears) the queue limits of its own, at CONNECT.
    pub(crate) fn set_queue_policy(&mut self, policy: Option<QueuePolicy>) {
        match (&mut self.rare, policy) {
            (Some(rare), policy) => rare.queue_policy = policy,
            (None, None) => {}
            (None, Some(policy)) => {
                self.rare = Some(Box::new(Rare {
                    queue_policy: Some(policy),
                    ..Rare::default()
                }));
            }
        }
    }

    /// Tells the session's queue observer (if any) the queue length and how many messages
    /// were just dropped from it (0: none).
    pub(crate) fn observe_queue(&self, dropped: u64) {
        if let Some(o) = self.queue_policy().and_then(|p| p.observer.as_ref()) {
            if dropped > 0 {
                o.dropped(dropped);
            }
            o.queue_changed(self.outgoing.queued_len());
        }
    }

    /// Logs that `count` messages on `topic` (or a subscription to it) were refused to this
    /// client, and why: at most one line per client per [`LOG_EVERY`](crate::log_gate::LOG_EVERY),
    /// counting those left out.
    pub(crate) fn log_refusal(&mut self, now: Instant, topic: &str, why: Refusal, count: u64) {
        let rare = self.rare.get_or_insert_with(Box::default);
        let Some(skipped) = rare.log_gate.allow(now) else {
            return;
        };
        let (client_id, user) = (
            Clipped(&self.client_id),
            self.username.as_deref().unwrap_or(""),
        );
        let topic = Clipped(topic);
        match why {
            Refusal::AclRead => info!(client_id = %client_id, user, topic = %topic,
                not_logged_since = skipped, "message withheld: the ACL does not let this client read the topic"),
            Refusal::AclSubscribe => info!(client_id = %client_id, user, filter = %topic,
                not_logged_since = skipped, "subscription refused by the ACL"),
            Refusal::Full(what) => warn!(client_id = %client_id, user, topic = %topic, count,
                not_logged_since = skipped, "messages dropped for a client that does not keep up: {what}"),
        }
    }

    /// The ACL allows this session to read `topic` (always, without an ACL).
    pub(crate) fn can_read(&self, topic: &str) -> bool {
        self.access
            .as_ref()
            .is_none_or(|a| a.can_read(self.username.as_deref(), &self.client_id, topic))
    }
}

/// A will waiting to be published, with what is needed to check it against the ACL when it is
/// sent (the session may be gone by then).
#[derive(Debug, Clone)]
pub(crate) struct PendingWill {
    pub(crate) will: LastWill,
    pub(crate) client_id: Arc<str>,
    pub(crate) username: Option<String>,
    pub(crate) access: Option<Arc<dyn AccessPolicy>>,
}

impl PendingWill {
    /// Takes the session's will, if any, with its owner's identity.
    pub(crate) fn take_from(s: &mut Session) -> Option<PendingWill> {
        let will = *s.will.take()?;
        Some(PendingWill {
            will,
            client_id: Arc::clone(&s.client_id),
            username: s.username.clone(),
            access: s.access.clone(),
        })
    }

    /// The ACL allows publishing the will now.
    pub(crate) fn allowed(&self) -> bool {
        self.access.as_ref().is_none_or(|a| {
            a.can_write(self.username.as_deref(), &self.client_id, &self.will.topic)
        })
    }
}

impl Session {
    pub(crate) fn new(client_id: Arc<str>) -> Self {
        Session {
            client_id,
            link: None,
            subscriptions: HashMap::new(),
            outgoing: Outgoing::default(),
            expiry_interval: 0,
            expires_at: None,
            will: None,
            inbound_qos2: Vec::new(),
            username: None,
            access: None,
            rare: None,
        }
    }

    /// The in-flight window in force: our limits and the client's Receive Maximum.
    pub(crate) fn window(&self, settings: &BrokerSettings) -> Window {
        let ours = self
            .queue_policy()
            .and_then(|p| p.max_inflight)
            .unwrap_or(settings.max_inflight_messages)
            .max(1);
        let theirs = self
            .link
            .as_ref()
            .map_or(ours, |l| l.receive_maximum.max(1));
        Window {
            messages: usize::from(ours.min(theirs)),
            bytes: settings.max_inflight_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn lim(s: &BrokerSettings) -> QueueLimits {
        QueueLimits::of(s, None)
    }

    #[test]
    fn drop_oldest_makes_room_and_journals_the_eviction() {
        let mut o = Outgoing::default();
        o.set_journal(true);
        let limits = QueueLimits {
            max_messages: 2,
            max_bytes: 0,
            drop_oldest: true,
        };
        for t in ["a", "b"] {
            assert_eq!(
                o.enqueue(pending(msg(t, None), QoS::AtLeastOnce), limits),
                Ok(0)
            );
        }
        let _ = o.take_changes();
        assert_eq!(
            o.enqueue(pending(msg("c", None), QoS::AtLeastOnce), limits),
            Ok(1)
        );
        assert_eq!(o.queued_len(), 2);
        let changes = o.take_changes();
        assert!(matches!(changes[0], Change::Delete(1)), "{changes:?}");
        let mut expired = 0;
        let out = o.pump(Window::messages(10), Instant::now(), &mut expired);
        let topics: Vec<&str> = out.iter().map(|d| &*d.message.topic).collect();
        assert_eq!(topics, ["b", "c"]);
        // A byte limit evicts as many as needed.
        let limits = QueueLimits {
            max_messages: 10,
            max_bytes: 4,
            drop_oldest: true,
        };
        let mut o = Outgoing::default();
        for t in ["a", "b"] {
            o.enqueue(pending(msg(t, None), QoS::AtLeastOnce), limits)
                .unwrap();
        }
        assert_eq!(
            o.enqueue(pending(msg("c", None), QoS::AtLeastOnce), limits),
            Ok(1)
        );
        assert_eq!(o.queued_bytes(), 4);
    }

    fn msg(topic: &str, expires_at: Option<Instant>) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at,
            origin: None,
            publication: None,
        })
    }

    fn pending(m: Arc<Message>, qos: QoS) -> Pending {
        Pending {
            message: m,
            qos,
            retain: false,
            subscription_ids: SubscriptionIds::default(),
            seq: 0,
            queued_at: 0,
        }
    }

    #[test]
    fn window_then_queue_then_pump_in_order() {
        let now = Instant::now();
        let s = BrokerSettings {
            max_queued_messages: 2,
            ..Default::default()
        };
        let mut o = Outgoing::default();
        let d1 = o.start(pending(msg("a", None), QoS::AtLeastOnce), now);
        assert_eq!(d1.packet_id, Some(1));
        assert!(!o.has_room(Window::messages(1)));
        o.enqueue(pending(msg("b", None), QoS::AtLeastOnce), lim(&s))
            .unwrap();
        o.enqueue(pending(msg("c", None), QoS::ExactlyOnce), lim(&s))
            .unwrap();
        assert_eq!(
            o.enqueue(pending(msg("d", None), QoS::AtLeastOnce), lim(&s)),
            Err(Refused::QueueFull)
        );
        let mut expired = 0;
        assert!(o.pump(Window::messages(1), now, &mut expired).is_empty());
        assert!(o.ack(1));
        assert!(
            !o.ack(1),
            "a second PUBACK for the same id completes nothing"
        );
        let next = o.pump(Window::messages(1), now, &mut expired);
        assert_eq!(next.len(), 1);
        assert_eq!(&*next[0].message.topic, "b");
        assert_eq!(next[0].packet_id, Some(2));
    }

    /// `max_inflight_bytes`, Mosquitto's rule: a message starts while fewer bytes than the
    /// limit are in flight, so one larger than the limit still goes, alone; completions (PUBACK,
    /// PUBCOMP, a PUBREC error, an abandoned delivery) give their bytes back.
    #[test]
    fn byte_window_limits_what_is_in_flight() {
        let now = Instant::now();
        let window = Window {
            messages: 10,
            bytes: 10,
        };
        let sized = |topic: &str| pending(msg(topic, None), QoS::AtLeastOnce); // topic + 1 byte
        let mut o = Outgoing::default();
        assert!(o.has_room(window));
        let a = o.start(sized("aaaa"), now); // 5 bytes
        assert!(o.has_room(window), "5 of 10 bytes in flight");
        let b = o.start(sized("bbbbbbb"), now); // 8 bytes: 13 in flight
        assert!(!o.has_room(window), "13 of 10 bytes in flight");
        let s = BrokerSettings::default();
        o.enqueue(sized("c"), lim(&s)).unwrap();
        let mut expired = 0;
        assert!(o.pump(window, now, &mut expired).is_empty());
        assert!(o.ack(a.packet_id.unwrap()));
        let c = o.pump(window, now, &mut expired);
        assert_eq!(c.len(), 1, "8 of 10 bytes in flight: the next one starts");
        assert!(!o.has_room(window), "10 of 10 bytes in flight");
        o.abandon(b.packet_id.unwrap());
        assert!(o.ack(c[0].packet_id.unwrap()));
        // Alone, a message larger than the whole limit still goes.
        let big = o.start(sized("a-topic-longer-than-ten-bytes"), now);
        assert!(!o.has_room(window));
        let q2 = o.start(pending(msg("q", None), QoS::ExactlyOnce), now);
        assert!(
            !o.rec(q2.packet_id.unwrap(), true),
            "a PUBREC error ends it"
        );
        assert!(o.ack(big.packet_id.unwrap()));
        assert!(o.has_room(window));
        assert_eq!(o.inflight_bytes, 0);
    }

    #[test]
    fn qos2_flow_and_redelivery_order() {
        let now = Instant::now();
        let mut o = Outgoing::default();
        let a = o.start(pending(msg("a", None), QoS::ExactlyOnce), now);
        let b = o.start(pending(msg("b", None), QoS::AtLeastOnce), now);
        let a_id = a.packet_id.unwrap();
        assert!(!o.comp(a_id), "PUBCOMP before PUBREC is ignored");
        assert!(o.rec(a_id, false));
        assert!(o.rec(a_id, false), "a repeated PUBREC gets PUBREL again");
        let resend = o.redeliver(now);
        assert!(matches!(resend[0], Resend::PubRel(id) if id == a_id));
        match &resend[1] {
            Resend::Publish(d) => {
                assert!(d.dup);
                assert_eq!(d.packet_id, b.packet_id);
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
        assert!(o.comp(a_id));
        assert_eq!(o.inflight_len(), 1);
    }

    #[test]
    fn pubrec_error_ends_exchange() {
        let now = Instant::now();
        let mut o = Outgoing::default();
        let a = o.start(pending(msg("a", None), QoS::ExactlyOnce), now);
        assert!(!o.rec(a.packet_id.unwrap(), true));
        assert_eq!(o.inflight_len(), 0);
    }

    #[test]
    fn expired_messages_are_dropped_from_queue_with_virtual_clock() {
        let t0 = Instant::now();
        let s = BrokerSettings::default();
        let mut o = Outgoing::default();
        o.enqueue(
            pending(
                msg("old", Some(t0 + Duration::from_secs(5))),
                QoS::AtLeastOnce,
            ),
            lim(&s),
        )
        .unwrap();
        o.enqueue(pending(msg("new", None), QoS::AtLeastOnce), lim(&s))
            .unwrap();
        let mut expired = 0;
        let out = o.pump(
            Window::messages(10),
            t0 + Duration::from_secs(6),
            &mut expired,
        );
        assert_eq!(expired, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(&*out[0].message.topic, "new");
    }

    #[test]
    fn expired_inflight_message_is_still_redelivered() {
        let t0 = Instant::now();
        let mut o = Outgoing::default();
        let m = msg("a", Some(t0 + Duration::from_secs(1)));
        let d = o.start(pending(m, QoS::ExactlyOnce), t0);
        let resend = o.redeliver(t0 + Duration::from_secs(60));
        match resend.as_slice() {
            [Resend::Publish(again)] => {
                assert!(again.dup);
                assert_eq!(again.packet_id, d.packet_id);
                assert_eq!(again.expiry_interval, Some(0));
            }
            other => panic!("expected one PUBLISH, got {other:?}"),
        }
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let now = Instant::now();
        let mut o = Outgoing {
            next_packet_id: u16::MAX - 1,
            ..Default::default()
        };
        let a = o.start(pending(msg("a", None), QoS::AtLeastOnce), now);
        let b = o.start(pending(msg("b", None), QoS::AtLeastOnce), now);
        assert_eq!(a.packet_id, Some(u16::MAX));
        assert_eq!(b.packet_id, Some(1));
    }

    #[test]
    fn byte_limit_bounds_queue() {
        let s = BrokerSettings {
            max_queued_bytes: 4,
            ..Default::default()
        };
        let mut o = Outgoing::default();
        // "ab" + "x" = 3 bytes each; the first always fits, the second would exceed 4.
        o.enqueue(pending(msg("ab", None), QoS::AtLeastOnce), lim(&s))
            .unwrap();
        assert_eq!(
            o.enqueue(pending(msg("ab", None), QoS::AtLeastOnce), lim(&s)),
            Err(Refused::QueueFull)
        );
        assert_eq!(o.queued_len(), 1);
    }
}
