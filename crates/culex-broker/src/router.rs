//! The router: owns every session, the subscription tree, retained messages and wills.
//!
//! It is a plain struct driven by one task that feeds it [`Command`]s and the current time;
//! there are no locks. Packets for clients go into their bounded outboxes with `try_send`, and
//! the window and budget arithmetic below guarantees that QoS 1/2 deliveries and control packets
//! always fit; only QoS 0 deliveries to a slow consumer are dropped (and counted).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use culex_proto::topic::{exceeds_limits, parse_shared};
use culex_proto::{
    Packet, Properties, PubResp, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use crate::api::{
    Command, ConnId, ConnectOutcome, ConnectRequest, Delivery, DisconnectKind, Outbound,
    CONTROL_RESERVE,
};
use crate::log_clip::Clipped;
use crate::message::Message;
use crate::outbox::TrySendError;
use crate::retained::RetainedStore;
use crate::session::{
    Link, Pending, PendingWill, QueueLimits, Refusal, Resend, Session, Subscription,
};
use crate::settings::BrokerSettings;
use crate::stats::{RouterSnapshot, RouterStats};
use crate::trie::SubscriptionTree;

pub(crate) type SessionId = u64;

/// How often expired retained messages are swept out.
const RETAINED_SWEEP: Duration = Duration::from_secs(60);

/// Retained payloads up to this size are copied into an allocation of their own. A payload is
/// a slice of the buffer its connection read it into (up to 8 KiB, shared with the packets
/// around it); a small retained message kept for days would keep that whole buffer alive.
const RETAINED_COPY_MAX: usize = 1024;

/// The broker's routing core. See the module documentation.
#[derive(Debug)]
pub struct Router {
    settings: BrokerSettings,
    /// Boxed: a session is a few hundred bytes, and the map keeps up to twice as many slots as
    /// sessions (every connected client has one).
    sessions: FxHashMap<SessionId, Box<Session>>,
    by_client: HashMap<Arc<str>, SessionId>,
    by_conn: FxHashMap<ConnId, SessionId>,
    next_session: SessionId,
    next_auto_id: u64,
    tree: SubscriptionTree<SessionId, Subscription>,
    retained: RetainedStore<Arc<Message>>,
    retained_bytes: u64,
    /// Offline sessions by expiry time.
    expiries: BTreeSet<(Instant, SessionId)>,
    /// Delayed wills by due time; the will itself waits in `delayed`.
    will_due: BTreeSet<(Instant, SessionId)>,
    delayed: FxHashMap<SessionId, (Instant, PendingWill)>,
    next_retained_sweep: Option<Instant>,
    stats: RouterStats,
    scratch: Vec<(SessionId, Subscription)>,
    persist: persist_glue::Persistence,
    /// [`Command::Shutdown`] was handled: connections are closed as they link.
    shutting_down: bool,
    /// CONNECTs waiting for the end of the connection they take over.
    takeovers: takeover::Takeovers,
    /// Sessions moving to (or ending for) another node of a cluster, waiting for their
    /// connection to end.
    migrations: migrate::Migrations,
    /// In a cluster: what the cluster is told about this node's sessions.
    cluster: cluster_report::Tracking,
    /// In a cluster: the filters this node subscribes to, for the other nodes.
    interest: interest::Interest,
    /// Who published each retained message (`check_retain_source`).
    retain_sources: retain_source::RetainSources,
    /// Acknowledgements held back by over-full subscriber queues (`queue_full_policy`).
    flow: flow::Flow,
    /// Bytes queued across all sessions (each session's queue counts itself in), for
    /// `memory_limit`.
    queued_total: Arc<std::sync::atomic::AtomicU64>,
}

mod access;
mod cluster_report;
pub use cluster_report::ClusterReport;
mod deliver;
mod flow;
mod interest;
mod migrate;
mod persist_glue;
mod retain_source;
mod retained_send;
mod takeover;
mod wills;

/// `now + d`, or `None` when that is beyond what the clock can hold: every configured or
/// wire-supplied duration is added this way, and `None` means "never" (no expiry, no
/// deadline), never a panic.
pub(crate) fn later(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

impl Router {
    /// A router with no sessions, enforcing `settings`.
    pub fn new(settings: BrokerSettings) -> Self {
        Router {
            settings,
            sessions: FxHashMap::default(),
            by_client: HashMap::new(),
            by_conn: FxHashMap::default(),
            next_session: 1,
            next_auto_id: 1,
            tree: SubscriptionTree::new(),
            retained: RetainedStore::new(),
            retained_bytes: 0,
            expiries: BTreeSet::new(),
            will_due: BTreeSet::new(),
            delayed: FxHashMap::default(),
            next_retained_sweep: None,
            stats: RouterStats::default(),
            scratch: Vec::new(),
            persist: persist_glue::Persistence::default(),
            shutting_down: false,
            takeovers: takeover::Takeovers::default(),
            migrations: migrate::Migrations::default(),
            cluster: cluster_report::Tracking::default(),
            interest: interest::Interest::default(),
            retain_sources: retain_source::RetainSources::new(),
            flow: flow::Flow::default(),
            queued_total: Arc::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    /// Counters of what was routed and dropped.
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    /// Number of sessions (connected and offline).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of connected clients.
    pub fn connected_count(&self) -> usize {
        self.by_conn.len()
    }

    /// Number of subscriptions (shared memberships included).
    pub fn subscription_count(&self) -> usize {
        self.tree.len()
    }

    /// Number of shared-subscription memberships.
    pub fn shared_subscription_count(&self) -> usize {
        self.tree.shared_len()
    }

    /// Number of retained messages and their payload bytes.
    pub fn retained_count(&self) -> (usize, u64) {
        (self.retained.len(), self.retained_bytes)
    }

    /// Messages queued or in flight across all sessions.
    pub fn queued_count(&self) -> (usize, usize) {
        self.sessions.values().fold((0, 0), |(q, f), s| {
            (q + s.outgoing.queued_len(), f + s.outgoing.inflight_len())
        })
    }

    /// Counters and gauges at this moment. Queued and in-flight totals are summed over the
    /// sessions (O(sessions)); it is called once per scrape or `$SYS` update, not per message.
    pub fn snapshot(&self) -> RouterSnapshot {
        let (mut queued, mut queued_bytes, mut inflight) = (0u64, 0u64, 0u64);
        for s in self.sessions.values() {
            queued += s.outgoing.queued_len() as u64;
            queued_bytes += s.outgoing.queued_bytes();
            inflight += s.outgoing.inflight_len() as u64;
        }
        let sessions = self.sessions.len() as u64;
        let connected = self.by_conn.len() as u64;
        RouterSnapshot {
            stats: self.stats.clone(),
            sessions,
            connected,
            offline_sessions: sessions.saturating_sub(connected),
            subscriptions: self.tree.len() as u64,
            shared_subscriptions: self.tree.shared_len() as u64,
            retained_count: self.retained.len() as u64,
            retained_bytes: self.retained_bytes,
            queued,
            queued_bytes,
            inflight,
        }
    }

    /// Handles one command at time `now`.
    pub fn handle(&mut self, command: Command, now: Instant) {
        match command {
            Command::Connect(req) => self.connect(*req, now),
            Command::AccessChanged => self.access_changed(now),
            Command::Ping { reply } => {
                let _ = reply.send(());
            }
            Command::Publish {
                conn,
                publish,
                ack,
                publication,
            } => {
                let Some(&sid) = self.by_conn.get(&conn) else {
                    return;
                };
                let (qos, packet_id) = (publish.qos, publish.packet_id.unwrap_or(0));
                let mut properties = publish.properties;
                properties.topic_alias = None;
                properties.subscription_identifiers.clear();
                let expires_at = properties
                    .message_expiry_interval
                    .and_then(|s| later(now, Duration::from_secs(u64::from(s))));
                let message = Message {
                    topic: publish.topic.into(),
                    payload: publish.payload,
                    qos: publish.qos,
                    retain: publish.retain,
                    properties,
                    expires_at,
                    origin: Some(sid),
                    publication,
                };
                self.stats.messages_received += 1;
                let hold = ack && qos == QoS::ExactlyOnce;
                if hold {
                    self.hold_deliveries();
                }
                self.flow_begin(conn, ack);
                self.route(Arc::new(message), now);
                if ack {
                    self.ack_publish(sid, conn, qos, packet_id);
                }
                self.flow_end();
                if hold {
                    self.release_held();
                }
            }
            Command::PubRel { conn, packet_id } => self.pubrel(conn, packet_id),
            Command::Ack { conn, packet } => self.flow_answer(conn, *packet, false),
            Command::Durable { ticket } => self.durable(ticket),
            Command::Stats { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Command::Shutdown => {
                self.shutting_down = true;
                for s in self.sessions.values() {
                    if let Some(link) = &s.link {
                        link.outbox.close(ReasonCode::ServerShuttingDown);
                    }
                }
            }
            Command::TakenOverElsewhere { client_id } => self.discard_session(&client_id, now),
            Command::ExportSession { client_id, reply } => {
                self.export_session(&client_id, reply, now)
            }
            Command::AdoptSession { session } => self.adopt_session(*session, now),
            Command::PrepareSession { record } => self.prepare_session(*record, now),
            Command::AbandonPrepared { client_id } => self.abandon_prepared(&client_id, now),
            Command::DiscardIfOffline { client_id } => self.discard_stale(&client_id, now),
            Command::InterestSynced { tokens } => self.interest_synced(tokens, now),
            Command::RecordWritten { token } => self.interest_synced(vec![token], now),
            Command::ClusterReport { reply } => {
                let _ = reply.send(self.cluster_report(now));
            }
            Command::Replay {
                client_id,
                messages,
                reply,
            } => {
                let _ = reply.send(self.replay(&client_id, messages, now));
            }
            Command::PublishInternal { message } => {
                self.stats.internal_published += 1;
                self.route(Arc::new(message), now);
            }
            Command::OutboxSpace { conn } => {
                if let Some(sid) = self.linked(conn) {
                    self.send_backlog(sid, now);
                }
            }
            Command::PubAck { conn, packet_id } => {
                if let Some(sid) = self.linked(conn) {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.outgoing.ack(packet_id);
                    }
                    self.flush_changes(sid);
                    self.pump(sid, now);
                }
            }
            Command::PubRec {
                conn,
                packet_id,
                reason,
            } => self.pubrec(conn, packet_id, reason, now),
            Command::PubComp { conn, packet_id } => {
                if let Some(sid) = self.linked(conn) {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.outgoing.comp(packet_id);
                    }
                    self.flush_changes(sid);
                    self.pump(sid, now);
                }
            }
            Command::Subscribe { conn, subscribe } => self.subscribe(conn, subscribe, now),
            Command::Unsubscribe { conn, unsubscribe } => self.unsubscribe(conn, unsubscribe),
            Command::Disconnect {
                conn,
                kind,
                session_expiry,
                inbound_qos2,
            } => {
                self.disconnect(conn, kind, session_expiry, inbound_qos2, now);
                self.takeover_ready(conn, now);
                self.migration_ready(conn, now);
            }
        }
    }

    /// The earliest time [`Router::tick`] has work to do, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        let a = self.expiries.first().map(|(t, _)| *t);
        let b = self.will_due.first().map(|(t, _)| *t);
        let c = self.next_retained_sweep;
        let d = self.next_takeover_deadline();
        let e = self.flow.next_deadline(self.settings.slow_client_timeout);
        let f = self.next_migration_deadline();
        [a, b, c, d, e, f].into_iter().flatten().min()
    }

    /// Publishes delayed wills that are due and ends sessions whose expiry has passed.
    pub fn tick(&mut self, now: Instant) {
        self.expire_takeovers(now);
        self.expire_migrations(now);
        self.flow_tick(now);
        while let Some(&(due, sid)) = self.will_due.first() {
            if due > now {
                break;
            }
            self.will_due.remove(&(due, sid));
            if let Some((_, will)) = self.delayed.remove(&sid) {
                self.publish_will(will, now);
            }
        }
        while let Some(&(due, sid)) = self.expiries.first() {
            if due > now {
                break;
            }
            self.expiries.remove(&(due, sid));
            self.stats.sessions_expired += 1;
            self.end_session(sid, now);
        }
        if self.next_retained_sweep.is_some_and(|t| t <= now) {
            let mut freed = 0u64;
            let mut gone: Vec<Arc<Message>> = Vec::new();
            self.retained.retain(|_, m| {
                let keep = !m.is_expired(now);
                if !keep {
                    freed += m.payload.len() as u64;
                    gone.push(Arc::clone(m));
                }
                keep
            });
            self.retained_bytes = self.retained_bytes.saturating_sub(freed);
            self.stats.dropped_expired += gone.len() as u64;
            for m in &gone {
                self.retain_sources.remove(&m.topic);
            }
            for m in gone {
                // An empty-payload twin of the message tells the store to clear the topic.
                let clear = Message {
                    payload: bytes::Bytes::new(),
                    ..(*m).clone()
                };
                self.store_retained(&Arc::new(clear));
            }
            self.next_retained_sweep = (!self.retained.is_empty()).then(|| now + RETAINED_SWEEP);
        }
    }

    fn linked(&self, conn: ConnId) -> Option<SessionId> {
        self.by_conn.get(&conn).copied()
    }

    fn connect(&mut self, req: ConnectRequest, now: Instant) {
        if let Some(old) = self.live_connection(&req.client_id) {
            // Answered once `old` has ended (see `router/takeover.rs`).
            self.defer_takeover(old, req, now);
            return;
        }
        let ConnectRequest {
            conn,
            protocol,
            client_id,
            clean_start,
            session_expiry,
            receive_maximum,
            maximum_packet_size,
            will,
            username,
            access,
            queue,
            outbox,
            reply,
        } = req;
        let (client_id, assigned): (Arc<str>, bool) = if client_id.is_empty() {
            (self.assign_client_id(), true)
        } else {
            (client_id.into(), false)
        };

        let mut session_present = false;
        let mut inbound_qos2 = Vec::new();
        let existing = self.by_client.get(&client_id).copied();
        let sid = match existing {
            Some(sid) => {
                self.take_over(sid, now);
                // A new connection to the session means a delayed will must not be sent.
                self.cancel_delayed_will(sid);
                if clean_start {
                    self.end_session(sid, now);
                    self.new_session(Arc::clone(&client_id))
                } else {
                    session_present = true;
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        if let Some(at) = s.expires_at.take() {
                            self.expiries.remove(&(at, sid));
                        }
                        // With persistence the router keeps tracking these itself (it acks
                        // them); without, the connection takes them over until it ends.
                        inbound_qos2 = if s.outgoing.journaled() || self.settings.cluster {
                            s.inbound_qos2.clone()
                        } else {
                            std::mem::take(&mut s.inbound_qos2)
                        };
                    }
                    sid
                }
            }
            None => self.new_session(Arc::clone(&client_id)),
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if self.shutting_down {
            outbox.close(ReasonCode::ServerShuttingDown);
        }
        s.link = Some(Link {
            conn,
            outbox,
            protocol,
            receive_maximum,
            maximum_packet_size,
            backlog: None,
        });
        s.expiry_interval = session_expiry;
        s.will = will.map(Box::new);
        let persistent = session_expiry > 0;
        self.interest
            .persistence(sid, &s.client_id, persistent, s.subscriptions.keys());
        s.username = username;
        s.access = access;
        s.set_queue_policy(queue);
        s.observe_queue(0);
        self.by_conn.insert(conn, sid);
        self.store_after_connect(sid);
        self.session_changed(sid);
        self.session_used(&client_id);
        debug!(client_id = %Clipped(&client_id), conn, session_present, "client connected");
        let outcome = ConnectOutcome {
            session_present,
            client_id,
            assigned,
            inbound_qos2,
        };
        if reply.send(outcome).is_err() {
            // The connection went away while we worked; its Disconnect command follows.
            return;
        }
        if session_present {
            self.resume(sid, now);
        }
    }

    fn assign_client_id(&mut self) -> Arc<str> {
        loop {
            let id: Arc<str> =
                format!("{}{:08x}", self.settings.auto_id_prefix, self.next_auto_id).into();
            self.next_auto_id += 1;
            if !self.by_client.contains_key(&id) {
                return id;
            }
        }
    }

    fn new_session(&mut self, client_id: Arc<str>) -> SessionId {
        let sid = self.next_session;
        self.next_session += 1;
        self.by_client.insert(Arc::clone(&client_id), sid);
        let mut session = Box::new(Session::new(client_id));
        session.outgoing.count_into(Arc::clone(&self.queued_total));
        self.sessions.insert(sid, session);
        sid
    }

    /// Disconnects the connection currently attached to `sid`, if any: session taken over.
    fn take_over(&mut self, sid: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some(link) = s.link.take() else {
            return;
        };
        debug!(client_id = %Clipped(&s.client_id), old_conn = link.conn, "session taken over");
        link.outbox.close(ReasonCode::SessionTakenOver);
        self.by_conn.remove(&link.conn);
        if let Some(will) = PendingWill::take_from(s) {
            self.schedule_will(sid, will, now);
        }
    }

    /// Redelivers in-flight messages and drains the queue after a session resumes.
    fn resume(&mut self, sid: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let resend = s.outgoing.redeliver(now);
        for r in resend {
            match r {
                Resend::Publish(d) => self.send_delivery(sid, d),
                Resend::PubRel(id) => self.send_control(sid, Packet::PubRel(PubResp::new(id))),
            }
        }
        self.pump(sid, now);
    }

    /// Moves queued messages into the window while it has room.
    fn pump(&mut self, sid: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if s.link.is_none() {
            return;
        }
        let window = s.window(&self.settings);
        let ready = s
            .outgoing
            .pump(window, now, &mut self.stats.dropped_expired);
        if !ready.is_empty() {
            s.observe_queue(0);
        }
        for d in ready {
            self.send_delivery(sid, d);
        }
        self.flush_changes(sid);
        // Acknowledgements this session held back go out once its queue has drained, and
        // those waiting for it to confirm messages once it has.
        self.flow_progress(sid, now);
        self.flow_confirmed(sid);
    }

    fn pubrec(&mut self, conn: ConnId, packet_id: u16, reason: ReasonCode, now: Instant) {
        let Some(sid) = self.linked(conn) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let released = s.outgoing.rec(packet_id, reason.is_error());
        let v5 = s.link.as_ref().is_some_and(|l| l.protocol.is_v5());
        self.flush_changes(sid);
        self.flow_confirmed(sid);
        if released {
            self.send_pubrel(sid, Packet::PubRel(PubResp::new(packet_id)));
        } else if reason.is_error() {
            self.pump(sid, now);
        } else if v5 {
            let mut rel = PubResp::new(packet_id);
            rel.reason_code = ReasonCode::PacketIdentifierNotFound;
            self.send_control(sid, Packet::PubRel(rel));
        }
    }

    fn subscribe(&mut self, conn: ConnId, subscribe: Subscribe, now: Instant) {
        let Some(sid) = self.linked(conn) else {
            return;
        };
        self.interest.begin();
        let sub_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained: Vec<(Arc<Message>, QoS, Option<u32>)> = Vec::new();
        let mut protocol_error = false;
        for f in &subscribe.filters {
            let settings = &self.settings;
            if exceeds_limits(
                &f.filter,
                settings.max_topic_levels,
                settings.max_topic_length,
            ) {
                reason_codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let shared = match parse_shared(&f.filter) {
                Ok(s) => s.is_some(),
                Err(_) => {
                    reason_codes.push(ReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            if shared && f.options.no_local {
                // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
                protocol_error = true;
                break;
            }
            let Some(s) = self.sessions.get(&sid) else {
                return;
            };
            if let Some(acl) = &s.access {
                if !acl.can_subscribe(s.username.as_deref(), &s.client_id, &f.filter) {
                    self.stats.subscriptions_denied += 1;
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.log_refusal(now, &f.filter, Refusal::AclSubscribe, 1);
                    }
                    reason_codes.push(ReasonCode::NotAuthorized);
                    continue;
                }
            }
            let mut options = f.options;
            options.qos = options.qos.min(self.settings.max_qos);
            let entry = Subscription {
                options,
                id: sub_id,
            };
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            let existed = s.subscriptions.insert(f.filter.clone(), entry).is_some();
            let counts = self.interest.counts_for(&s.client_id);
            if self.tree.insert(&f.filter, sid, entry).is_none() && counts {
                self.interest.added(&f.filter, sid);
            }
            reason_codes.push(ReasonCode::granted(options.qos));
            let send_retained = !shared
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                let mut found = Vec::new();
                self.retained.matching(&f.filter, &mut found);
                let before = found.len();
                found.retain(|m| self.retain_source_allows(&m.topic));
                self.stats.dropped_acl_read += (before - found.len()) as u64;
                retained.extend(
                    found
                        .into_iter()
                        .filter(|m| !m.is_expired(now))
                        .map(|m| (Arc::clone(m), options.qos, sub_id)),
                );
            }
        }
        if protocol_error {
            self.send_outbound(sid, Outbound::Close(ReasonCode::ProtocolError));
            return;
        }
        self.store_session(sid);
        self.session_changed(sid);
        let suback = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reason_codes,
            properties: Properties::default(),
        });
        let queued_at = self.secs(now);
        let retained = retained
            .into_iter()
            .map(|(message, sub_qos, id)| Pending {
                qos: self.delivery_qos(sub_qos, message.qos),
                message,
                retain: true,
                subscription_ids: id.into_iter().collect(),
                seq: 0,
                queued_at,
            })
            .collect();
        self.send_suback(sid, suback, retained, now);
    }

    fn unsubscribe(&mut self, conn: ConnId, unsubscribe: Unsubscribe) {
        let Some(sid) = self.linked(conn) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
        let counts = self.interest.counts_for(&s.client_id);
        for f in &unsubscribe.filters {
            if s.subscriptions.remove(f).is_some() {
                if self.tree.remove(f, sid).is_some() && counts {
                    self.interest.removed(f, sid);
                }
                reason_codes.push(ReasonCode::Success);
            } else {
                reason_codes.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        self.store_session(sid);
        self.session_changed(sid);
        self.send_control(
            sid,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                reason_codes,
                properties: Properties::default(),
            }),
        );
    }

    fn disconnect(
        &mut self,
        conn: ConnId,
        kind: DisconnectKind,
        session_expiry: Option<u32>,
        inbound_qos2: Vec<u16>,
        now: Instant,
    ) {
        // A connection that was taken over is no longer in `by_conn`: nothing to do.
        let Some(sid) = self.by_conn.remove(&conn) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(link) = s.link.take() {
            // QoS 0 messages still waiting for its outbox go with the connection.
            self.stats.dropped_offline_qos0 += link.backlog.map_or(0, |b| b.items.len() as u64);
        }
        if !s.outgoing.journaled() && !self.settings.cluster {
            // With persistence the router tracked these itself (it acknowledged them).
            s.inbound_qos2 = inbound_qos2;
        }
        if let Some(e) = session_expiry {
            s.expiry_interval = e;
            self.interest
                .persistence(sid, &s.client_id, e > 0, s.subscriptions.keys());
        }
        let will = PendingWill::take_from(s);
        let expiry = s.expiry_interval;
        debug!(client_id = %Clipped(&s.client_id), conn, ?kind, "client disconnected");
        // Nothing is owed to it as a publisher; as a subscriber it holds nobody back now.
        self.flow_disconnected(sid, conn);
        if kind == DisconnectKind::WithWill {
            if let Some(will) = will {
                self.schedule_will(sid, will, now);
            }
        }
        if expiry == 0 {
            self.end_session(sid, now);
            return;
        }
        let lifetime = if expiry == u32::MAX {
            self.settings.persistent_client_expiration
        } else {
            Some(Duration::from_secs(u64::from(expiry)))
        };
        if let Some(at) = lifetime.and_then(|d| later(now, d)) {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.expires_at = Some(at);
            }
            self.expiries.insert((at, sid));
        }
        self.store_session(sid);
    }

    /// Removes a session and its subscriptions. A will still waiting for its delay is
    /// published now: the session's end is the other deadline of a delayed will.
    fn end_session(&mut self, sid: SessionId, now: Instant) {
        if let Some((due, will)) = self.delayed.remove(&sid) {
            self.will_due.remove(&(due, sid));
            self.publish_will(will, now);
        }
        let was_stored = self.is_stored(sid);
        self.session_changed(sid);
        self.flow_disconnected(sid, 0);
        let Some(s) = self.sessions.remove(&sid) else {
            return;
        };
        self.unstore_session(Arc::clone(&s.client_id), was_stored);
        if let Some(at) = s.expires_at {
            self.expiries.remove(&(at, sid));
        }
        let counts = self.interest.counts_for(&s.client_id);
        for filter in s.subscriptions.keys() {
            if self.tree.remove(filter, sid).is_some() && counts {
                self.interest.removed(filter, sid);
            }
        }
        self.interest.forget(sid);
        if let Some(link) = &s.link {
            self.by_conn.remove(&link.conn);
        }
        self.by_client.remove(&s.client_id);
        self.forget_prepared(sid, &s.client_id);
    }
}

#[cfg(test)]
mod tests;
