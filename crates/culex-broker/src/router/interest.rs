//! In a cluster: which topic filters this node's sessions subscribe to, for the other nodes to
//! send it only matching messages (see [`InterestSink`]).
//!
//! The router counts the subscriptions per filter (a shared one, `$share/{group}/{filter}`,
//! on its own: it also tells the cluster the group has members here) and tells the sink when
//! a filter gains its first subscription here or loses its last. A SUBSCRIBE
//! that gave this node a new filter gets its SUBACK only once the sink reports that the other
//! nodes know of it ([`Command::InterestSynced`](crate::Command::InterestSynced)): a message
//! published anywhere in the cluster after the SUBACK reaches the new subscription. The SUBACK
//! of a persistent session's SUBSCRIBE also waits for the session's record to be written for
//! the cluster ([`InterestSink::record`], [`Command::RecordWritten`]): should this node die,
//! another rebuilds the session with that subscription.
//!
//! [`Command::RecordWritten`]: crate::Command::RecordWritten
//! It counts the subscriptions of persistent sessions (session expiry above 0) apart too: a
//! message published here that no other node wants needs the backplane only when one of those
//! matches (the cluster keeps it for them should this node die).

use std::sync::Arc;
use std::time::Instant;

use culex_proto::Packet;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{Router, SessionId};
use crate::api::{ConnId, InterestSink};
use crate::session::Pending;

/// The router's side of the cluster's interest.
#[derive(Debug, Default)]
pub(super) struct Interest {
    sink: Option<Arc<dyn InterestSink>>,
    /// The cluster link's own client: its subscription to every topic asks nothing of the
    /// other nodes.
    link_client: Option<Arc<str>>,
    /// Subscriptions per filter.
    counts: FxHashMap<Box<str>, u32>,
    /// Subscriptions of persistent sessions per filter.
    persistent: FxHashMap<Box<str>, u32>,
    /// Sessions whose subscriptions count in `persistent`.
    persistent_sessions: FxHashSet<SessionId>,
    /// The current command added a subscription the other nodes may not know of yet: its
    /// answer waits for them.
    pub(super) grew: bool,
    /// The filters that gained their first subscription in the current command.
    grown: Vec<Box<str>>,
    /// Filters told to the sink whose sync has not come back yet, each with the token that
    /// waits for it: another subscription to one of them waits too.
    unsynced: FxHashMap<Box<str>, u64>,
    /// SUBACKs waiting for the other nodes, by token.
    held: FxHashMap<u64, Held>,
    next_token: u64,
    /// While one session takes another's place: the filters that changed, with whether each
    /// was present before (told once the swap is done, only where it differs: the sink must
    /// never see a filter both sessions have go away for a moment).
    deferred: Option<Deferred>,
}

#[derive(Debug, Default)]
struct Deferred {
    changed: FxHashMap<Box<str>, bool>,
    persistent: FxHashMap<Box<str>, bool>,
}

/// A SUBACK waiting for the other nodes, and the retained messages that follow it.
#[derive(Debug)]
struct Held {
    sid: SessionId,
    /// The connection it answers (none: the session had none; only the filters count).
    conn: Option<ConnId>,
    suback: Packet,
    retained: Vec<Pending>,
    /// The filters it waits for.
    filters: Vec<Box<str>>,
    /// Answers still to come: the other nodes' sync, the session's record.
    pending: u8,
}

impl Interest {
    /// Whether `client_id`'s subscriptions count.
    pub(super) fn counts_for(&self, client_id: &str) -> bool {
        self.sink.is_some() && self.link_client.as_deref() != Some(client_id)
    }

    /// Tells the sink that `filter` gained its first subscription (or lost its last), or
    /// notes it while deferred.
    fn tell(&mut self, filter: &str, present: bool) {
        match (&mut self.deferred, &self.sink) {
            (Some(d), _) => {
                d.changed.entry(filter.into()).or_insert(!present);
            }
            (None, Some(sink)) => sink.changed(filter, present),
            (None, None) => {}
        }
    }

    /// [`Interest::tell`] for the subscriptions of persistent sessions.
    fn tell_persistent(&mut self, filter: &str, present: bool) {
        match (&mut self.deferred, &self.sink) {
            (Some(d), _) => {
                d.persistent.entry(filter.into()).or_insert(!present);
            }
            (None, Some(sink)) => sink.persistent_changed(filter, present),
            (None, None) => {}
        }
    }

    /// Holds what would be told to the sink until [`Interest::flush`].
    pub(super) fn defer(&mut self) {
        if self.sink.is_some() && self.deferred.is_none() {
            self.deferred = Some(Deferred::default());
        }
    }

    /// Tells the sink what changed since [`Interest::defer`], as it is now.
    pub(super) fn flush(&mut self) {
        let (Some(d), Some(sink)) = (self.deferred.take(), &self.sink) else {
            return;
        };
        for (filter, was) in d.changed {
            let now = self.counts.contains_key(&filter);
            if now != was {
                sink.changed(&filter, now);
            }
        }
        for (filter, was) in d.persistent {
            let now = self.persistent.contains_key(&filter);
            if now != was {
                sink.persistent_changed(&filter, now);
            }
        }
    }

    /// A subscription of `sid` to `filter` was added (not replaced).
    pub(super) fn added(&mut self, filter: &str, sid: SessionId) {
        if self.sink.is_none() {
            return;
        }
        if up(&mut self.counts, filter) {
            self.tell(filter, true);
            self.grew = true;
            self.grown.push(filter.into());
        } else if self.unsynced.contains_key(filter) {
            self.grew = true;
        }
        if self.persistent_sessions.contains(&sid) && up(&mut self.persistent, filter) {
            self.tell_persistent(filter, true);
        }
    }

    /// A command that may add subscriptions begins.
    pub(super) fn begin(&mut self) {
        self.grew = false;
        self.grown.clear();
    }

    /// A subscription of `sid` to `filter` was removed.
    pub(super) fn removed(&mut self, filter: &str, sid: SessionId) {
        if self.sink.is_none() {
            return;
        }
        if down(&mut self.counts, filter) {
            self.tell(filter, false);
        }
        if self.persistent_sessions.contains(&sid) && down(&mut self.persistent, filter) {
            self.tell_persistent(filter, false);
        }
    }

    /// Session `sid` of `client_id` is persistent (or not) now, with `filters`: its
    /// subscriptions count as persistent from now on (or no longer).
    pub(super) fn persistence<'a>(
        &mut self,
        sid: SessionId,
        client_id: &str,
        persistent: bool,
        filters: impl Iterator<Item = &'a String>,
    ) {
        if !self.counts_for(client_id) || self.persistent_sessions.contains(&sid) == persistent {
            return;
        }
        if persistent {
            self.persistent_sessions.insert(sid);
        } else {
            self.persistent_sessions.remove(&sid);
        }
        for filter in filters {
            let changed = if persistent {
                up(&mut self.persistent, filter)
            } else {
                down(&mut self.persistent, filter)
            };
            if changed {
                self.tell_persistent(filter, persistent);
            }
        }
    }

    /// Session `sid` ended (its subscriptions were removed).
    pub(super) fn forget(&mut self, sid: SessionId) {
        self.persistent_sessions.remove(&sid);
    }
}

/// Counts one more for `filter`; true when it is the first.
fn up(counts: &mut FxHashMap<Box<str>, u32>, filter: &str) -> bool {
    let count = counts.entry(filter.into()).or_default();
    *count += 1;
    *count == 1
}

/// Counts one less for `filter`; true when it was the last.
fn down(counts: &mut FxHashMap<Box<str>, u32>, filter: &str) -> bool {
    let Some(count) = counts.get_mut(filter) else {
        return false;
    };
    *count -= 1;
    if *count == 0 {
        counts.remove(filter);
        return true;
    }
    false
}

impl Router {
    /// In a cluster: tells `sink` which filters this node's sessions subscribe to (the
    /// subscriptions of `link_client`, the cluster link itself, left out), and holds the
    /// SUBACK of a SUBSCRIBE that added one until the sink says the cluster knows.
    pub fn set_interest_sink(&mut self, sink: Arc<dyn InterestSink>, link_client: &str) {
        self.interest.sink = Some(sink);
        self.interest.link_client = Some(link_client.into());
        for (&sid, s) in &self.sessions {
            if !self.interest.counts_for(&s.client_id) {
                continue;
            }
            self.interest
                .persistence(sid, &s.client_id, s.expiry_interval > 0, std::iter::empty());
            for filter in s.subscriptions.keys() {
                self.interest.added(filter, sid);
            }
        }
        self.interest.begin();
    }

    /// Tells the sink that `sid`'s session is handed to another node (see
    /// [`InterestSink::session_exported`]).
    pub(super) fn tell_exported(&self, sid: SessionId) {
        let (Some(sink), Some(s)) = (&self.interest.sink, self.sessions.get(&sid)) else {
            return;
        };
        let filters: Vec<&str> = s.subscriptions.keys().map(|f| &**f).collect();
        sink.session_exported(&s.client_id, &filters);
    }

    /// Sends `suback` to `sid`, then the `retained` messages its subscriptions found: now,
    /// or once the cluster knows of the filters it added (or of those it subscribed to that
    /// another SUBSCRIBE had just added).
    pub(super) fn send_suback(
        &mut self,
        sid: SessionId,
        suback: Packet,
        retained: Vec<Pending>,
        now: Instant,
    ) {
        let grew = std::mem::take(&mut self.interest.grew);
        let filters = std::mem::take(&mut self.interest.grown);
        let Some(sink) = self.interest.sink.clone() else {
            self.send_control(sid, suback);
            self.send_retained(sid, retained, now);
            return;
        };
        let (conn, client_id, persistent) = match self.sessions.get(&sid) {
            Some(s) => (
                s.link.as_ref().map(|l| l.conn),
                Arc::clone(&s.client_id),
                s.expiry_interval > 0,
            ),
            None => return,
        };
        let token = self.interest.next_token + 1;
        let record = persistent && self.interest.counts_for(&client_id);
        let recorded = record
            && self
                .session_record(sid)
                .is_some_and(|r| sink.record(token, &client_id, r));
        if !grew && !recorded {
            self.send_control(sid, suback);
            self.send_retained(sid, retained, now);
            return;
        }
        self.interest.next_token = token;
        for f in &filters {
            self.interest.unsynced.insert(f.clone(), token);
        }
        self.interest.held.insert(
            token,
            Held {
                sid,
                conn,
                suback,
                retained,
                filters,
                pending: u8::from(grew) + u8::from(recorded),
            },
        );
        if grew {
            sink.sync(token);
        }
    }

    /// The cluster knows of the filters (or has the record) behind `tokens`: SUBACKs that
    /// wait for nothing more (and the retained messages after them) go to connections still
    /// open.
    pub(super) fn interest_synced(&mut self, tokens: Vec<u64>, now: Instant) {
        for token in tokens {
            let Some(waiting) = self.interest.held.get_mut(&token) else {
                continue;
            };
            waiting.pending = waiting.pending.saturating_sub(1);
            if waiting.pending > 0 {
                continue;
            }
            let Some(held) = self.interest.held.remove(&token) else {
                continue;
            };
            for f in &held.filters {
                if self.interest.unsynced.get(f) == Some(&token) {
                    self.interest.unsynced.remove(f);
                }
            }
            let same_connection = held.conn.is_some()
                && self
                    .sessions
                    .get(&held.sid)
                    .and_then(|s| s.link.as_ref())
                    .map(|l| l.conn)
                    == held.conn;
            if same_connection {
                self.send_control(held.sid, held.suback);
                self.send_retained(held.sid, held.retained, now);
            }
        }
    }
}
