//! In a cluster: which topic filters this node's sessions subscribe to, for the other nodes to
//! send it only matching messages (see [`InterestSink`]).
//!
//! The router counts the subscriptions per filter (a shared one by its topic part) and tells
//! the sink when a filter gains its first subscription here or loses its last. A SUBSCRIBE
//! that gave this node a new filter gets its SUBACK only once the sink reports that the other
//! nodes know of it ([`Command::InterestSynced`](crate::Command::InterestSynced)): a message
//! published anywhere in the cluster after the SUBACK reaches the new subscription.

use std::sync::Arc;

use culex_proto::topic::parse_shared;
use culex_proto::Packet;
use rustc_hash::FxHashMap;

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
    /// A filter gained its first subscription while the current command was handled.
    pub(super) grew: bool,
    /// SUBACKs waiting for the other nodes: token -> (session, its connection, the SUBACK).
    held: FxHashMap<u64, (SessionId, ConnId, Packet)>,
    next_token: u64,
}

fn routing_filter(filter: &str) -> &str {
    match parse_shared(filter) {
        Ok(Some(shared)) => shared.filter,
        _ => filter,
    }
}

impl Interest {
    /// Whether `client_id`'s subscriptions count.
    pub(super) fn counts_for(&self, client_id: &str) -> bool {
        self.sink.is_some() && self.link_client.as_deref() != Some(client_id)
    }

    /// A subscription to `filter` was added (not replaced).
    pub(super) fn added(&mut self, filter: &str) {
        let Some(sink) = &self.sink else {
            return;
        };
        let filter = routing_filter(filter);
        let count = self.counts.entry(filter.into()).or_default();
        *count += 1;
        if *count == 1 {
            sink.changed(filter, true);
            self.grew = true;
        }
    }

    /// A subscription to `filter` was removed.
    pub(super) fn removed(&mut self, filter: &str) {
        let Some(sink) = &self.sink else {
            return;
        };
        let filter = routing_filter(filter);
        let Some(count) = self.counts.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(filter);
            sink.changed(filter, false);
        }
    }
}

impl Router {
    /// In a cluster: tells `sink` which filters this node's sessions subscribe to (the
    /// subscriptions of `link_client`, the cluster link itself, left out), and holds the
    /// SUBACK of a SUBSCRIBE that added one until the sink says the cluster knows.
    pub fn set_interest_sink(&mut self, sink: Arc<dyn InterestSink>, link_client: &str) {
        for s in self.sessions.values() {
            if *s.client_id != *link_client {
                for filter in s.subscriptions.keys() {
                    let filter = routing_filter(filter);
                    let count = self.interest.counts.entry(filter.into()).or_default();
                    *count += 1;
                    if *count == 1 {
                        sink.changed(filter, true);
                    }
                }
            }
        }
        self.interest.sink = Some(sink);
        self.interest.link_client = Some(link_client.into());
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
