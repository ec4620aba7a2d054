//! In a cluster: which topic filters this node's sessions subscribe to, for the other nodes to
//! send it only matching messages (see [`InterestSink`]).
//!
//! The router counts the subscriptions per filter (a shared one, `$share/{group}/{filter}`,
//! on its own: it also tells the cluster the group has members here) and tells the sink when
//! a filter gains its first subscription here or loses its last. A SUBSCRIBE
//! that gave this node a new filter gets its SUBACK only once the sink reports that the other
//! nodes know of it ([`Command::InterestSynced`](crate::Command::InterestSynced)): a message
//! published anywhere in the cluster after the SUBACK reaches the new subscription.
//!
//! It counts the subscriptions of persistent sessions (session expiry above 0) apart too: a
//! message published here that no other node wants needs the backplane only when one of those
//! matches (the cluster keeps it for them should this node die).

use std::sync::Arc;

use culex_proto::Packet;
use rustc_hash::{FxHashMap, FxHashSet};

use super::{Router, SessionId};
use crate::api::{ConnId, InterestSink};

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
    /// A filter gained its first subscription while the current command was handled.
    pub(super) grew: bool,
    /// SUBACKs waiting for the other nodes: token -> (session, its connection, the SUBACK).
    held: FxHashMap<u64, (SessionId, ConnId, Packet)>,
    next_token: u64,
}

impl Interest {
    /// Whether `client_id`'s subscriptions count.
    pub(super) fn counts_for(&self, client_id: &str) -> bool {
        self.sink.is_some() && self.link_client.as_deref() != Some(client_id)
    }

    /// A subscription of `sid` to `filter` was added (not replaced).
    pub(super) fn added(&mut self, filter: &str, sid: SessionId) {
        let Some(sink) = &self.sink else {
            return;
        };
        if up(&mut self.counts, filter) {
            sink.changed(filter, true);
            self.grew = true;
        }
        if self.persistent_sessions.contains(&sid) && up(&mut self.persistent, filter) {
            sink.persistent_changed(filter, true);
        }
    }

    /// A subscription of `sid` to `filter` was removed.
    pub(super) fn removed(&mut self, filter: &str, sid: SessionId) {
        let Some(sink) = &self.sink else {
            return;
        };
        if down(&mut self.counts, filter) {
            sink.changed(filter, false);
        }
        if self.persistent_sessions.contains(&sid) && down(&mut self.persistent, filter) {
            sink.persistent_changed(filter, false);
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
        let Some(sink) = &self.sink else {
            return;
        };
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
                sink.persistent_changed(filter, persistent);
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
        self.interest.grew = false;
    }

    /// Sends `suback` to `sid` now, or once the cluster knows of the filters it added.
    pub(super) fn send_suback(&mut self, sid: SessionId, suback: Packet) {
        let grew = std::mem::take(&mut self.interest.grew);
        let conn = self
            .sessions
            .get(&sid)
            .and_then(|s| s.link.as_ref())
            .map(|l| l.conn);
        match (&self.interest.sink, conn) {
            (Some(sink), Some(conn)) if grew => {
                self.interest.next_token += 1;
                let token = self.interest.next_token;
                self.interest.held.insert(token, (sid, conn, suback));
                sink.sync(token);
            }
            _ => self.send_control(sid, suback),
        }
    }

    /// The cluster knows of the filters behind `tokens`: their SUBACKs go to connections
    /// still open.
    pub(super) fn interest_synced(&mut self, tokens: Vec<u64>) {
        for token in tokens {
            let Some((sid, conn, suback)) = self.interest.held.remove(&token) else {
                continue;
            };
            let same_connection = self
                .sessions
                .get(&sid)
                .and_then(|s| s.link.as_ref())
                .is_some_and(|l| l.conn == conn);
            if same_connection {
                self.send_control(sid, suback);
            }
        }
    }
}
