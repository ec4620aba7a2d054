//! What a node of a cluster tells the cluster about its sessions, and the messages it is given
//! back for a session whose node died.
//!
//! The cluster records each persistent session's subscriptions (so that another node can
//! rebuild the session if this node dies) and, for the whole node, how far back in time its
//! undelivered messages go (so that the other node knows from when to read the cluster's
//! stream again for it). The router keeps the set of persistent sessions whose record changed
//! and stamps every message it queues with the second it took it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use culex_proto::topic::{matches, parse_shared};
use culex_proto::QoS;
use rustc_hash::FxHashSet;

use super::{Router, SessionId};
use crate::api::SharedPlacement;
use crate::message::Message;
use crate::persist::SessionRecord;
use crate::session::Pending;

/// The router's side of the cluster's records.
#[derive(Debug, Default)]
pub(super) struct Tracking {
    /// The instant of second 0 of `Pending::queued_at` (the first the router saw).
    epoch: Option<Instant>,
    /// Client identifiers of sessions whose record changed since the last report.
    changed: FxHashSet<Arc<str>>,
    /// Client identifiers whose record the cluster has (reported, not ended since).
    recorded: FxHashSet<Arc<str>>,
    /// Which node serves a shared group with members on several nodes.
    pub(super) placement: Option<Arc<dyn SharedPlacement>>,
    /// Sessions recovered from the store that no client has connected to since: the only
    /// ones a report may find stale (another node took them over while this one was down).
    recovered: FxHashSet<Arc<str>>,
}

/// What the router reports to the cluster ([`Command::ClusterReport`](crate::Command::ClusterReport)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterReport {
    /// Age of the oldest message queued or in flight for a persistent session (whole
    /// seconds, rounded down; one that came from the store or another node counts as taken
    /// when the router started); `None` when there is none.
    pub oldest_pending: Option<Duration>,
    /// Sessions whose record changed since the last report: their record while persistent,
    /// `None` once they ended (or stopped being persistent) here.
    pub changed: Vec<(Arc<str>, Option<SessionRecord>)>,
}

impl Router {
    /// In a cluster: asks `placement` which node serves each shared group (see
    /// [`SharedPlacement`]).
    pub fn set_shared_placement(&mut self, placement: Arc<dyn SharedPlacement>) {
        self.cluster.placement = Some(placement);
    }

    /// `now` in whole seconds of the router's clock (see [`Pending::queued_at`]).
    pub(super) fn secs(&mut self, now: Instant) -> u32 {
        let epoch = *self.cluster.epoch.get_or_insert(now);
        u32::try_from(now.saturating_duration_since(epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// A session recovered from the store: reported, and ended if another node holds it.
    pub(super) fn session_recovered(&mut self, sid: SessionId) {
        if !self.settings.cluster {
            return;
        }
        if let Some(s) = self.sessions.get(&sid) {
            self.cluster.recovered.insert(Arc::clone(&s.client_id));
        }
        self.session_changed(sid);
    }

    /// Another node holds `client_id`'s session: a copy recovered here from the store that
    /// no client has used since ends.
    pub(super) fn discard_stale(&mut self, client_id: &str, now: Instant) {
        if !self.cluster.recovered.remove(client_id) {
            return;
        }
        if let Some(&sid) = self.by_client.get(client_id) {
            if self.live_connection(client_id).is_none() {
                self.stats.sessions_stale_dropped += 1;
                self.end_session(sid, now);
            }
        }
    }

    /// A client connected to (or a session moved into) `client_id`'s session here: it is no
    /// longer a copy recovered from the store.
    pub(super) fn session_used(&mut self, client_id: &str) {
        if !self.cluster.recovered.is_empty() {
            self.cluster.recovered.remove(client_id);
        }
    }

    /// Notes that a session's record (persistence, subscriptions, existence) changed.
    pub(super) fn session_changed(&mut self, sid: SessionId) {
        if !self.settings.cluster {
            return;
        }
        if let Some(s) = self.sessions.get(&sid) {
            // Sessions that never were persistent need no record, nor its removal.
            if s.expiry_interval > 0 || self.cluster.recorded.contains(&s.client_id) {
                self.cluster.changed.insert(Arc::clone(&s.client_id));
            }
        }
    }

    /// The report, emptying the set of changed sessions.
    pub(super) fn cluster_report(&mut self, now: Instant) -> ClusterReport {
        let now_s = self.secs(now);
        let oldest = self
            .sessions
            .values()
            .filter(|s| s.expiry_interval > 0)
            .filter_map(|s| s.outgoing.oldest_queued_at())
            .min();
        let changed: Vec<Arc<str>> = self.cluster.changed.drain().collect();
        let changed = changed
            .into_iter()
            .map(|id| {
                let record = self
                    .by_client
                    .get(&id)
                    .filter(|sid| {
                        self.sessions
                            .get(sid)
                            .is_some_and(|s| s.expiry_interval > 0)
                    })
                    .and_then(|sid| self.session_record(*sid));
                if record.is_some() {
                    self.cluster.recorded.insert(Arc::clone(&id));
                } else {
                    self.cluster.recorded.remove(&id);
                }
                (id, record)
            })
            .collect();
        ClusterReport {
            oldest_pending: oldest.map(|q| Duration::from_secs(u64::from(now_s.saturating_sub(q)))),
            changed,
        }
    }

    /// Queues `messages` for the session of `client_id` alone, each at the highest QoS of its
    /// matching (non-shared) subscriptions; those none matches are skipped. Takes only what
    /// the session's queue has room for and answers with the rest (`Err` with their number
    /// when the session is gone or offline: nobody will make room, they are dropped).
    pub(super) fn replay(
        &mut self,
        client_id: &str,
        messages: Vec<Message>,
        now: Instant,
    ) -> Result<Vec<Message>, usize> {
        let total = messages.len();
        let Some(&sid) = self.by_client.get(client_id) else {
            return Err(total);
        };
        let mut rest = messages.into_iter();
        while let Some(message) = rest.next() {
            let Some(s) = self.sessions.get(&sid) else {
                return Err(rest.len() + 1);
            };
            let limits = s.queue_limits(&self.settings);
            if s.outgoing.queued_len() >= limits.max_messages {
                if s.link.is_none() {
                    return Err(rest.len() + 1);
                }
                let mut left = vec![message];
                left.extend(rest);
                return Ok(left);
            }
            let mut qos: Option<QoS> = None;
            let mut retain = false;
            let mut ids = Vec::new();
            for (filter, sub) in &s.subscriptions {
                if !matches!(parse_shared(filter), Ok(None)) || !matches(filter, &message.topic) {
                    continue;
                }
                let q = self.delivery_qos(sub.options.qos, message.qos);
                qos = Some(qos.map_or(q, |old| old.max(q)));
                retain |= sub.options.retain_as_published && message.retain;
                ids.extend(sub.id);
            }
            let Some(qos) = qos else {
                continue;
            };
            self.stats.replayed += 1;
            let pending = Pending {
                message: Arc::new(message),
                qos,
                retain,
                subscription_ids: ids.into(),
                seq: 0,
                queued_at: 0,
            };
            self.deliver(sid, pending, now);
        }
        Ok(Vec::new())
    }
}
