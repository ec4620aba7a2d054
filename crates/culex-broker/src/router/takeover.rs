//! Connection events of one client id in the order its sockets produced them.
//!
//! A client may send DISCONNECT and open a new connection at once; the new connection's
//! CONNECT can then reach the router before the old connection has read that DISCONNECT. Were
//! the CONNECT handled first, it would take over a live session (session present, old
//! subscriptions kept) that the client had just ended, and the old connection's will could be
//! published. So a CONNECT for a client id whose connection is still live asks that connection
//! to close (DISCONNECT 0x8E, after it handled what its client had already sent) and waits for
//! its end to be applied; only then is it answered. A connection that does not end within
//! [`TAKEOVER_WAIT`] is taken over anyway.

use std::time::{Duration, Instant};

use culex_proto::ReasonCode;
use rustc_hash::FxHashMap;

use super::Router;
use crate::api::{ConnId, ConnectRequest};

/// How long a CONNECT waits for the connection it takes over to end.
pub(super) const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// CONNECTs waiting for the end of the connection they take over.
#[derive(Debug, Default)]
pub(super) struct Takeovers {
    /// By the connection being taken over: until when to wait, and the waiting CONNECT.
    waiting: FxHashMap<ConnId, (Instant, Box<ConnectRequest>)>,
}

impl Router {
    /// The live connection of `client_id`, if any.
    pub(super) fn live_connection(&self, client_id: &str) -> Option<ConnId> {
        let sid = self.by_client.get(client_id)?;
        self.sessions.get(sid)?.link.as_ref().map(|l| l.conn)
    }

    /// `req` takes over `old`, which is still connected: `old` is asked to close and `req`
    /// waits for its end ([`Router::takeover_ready`]).
    pub(super) fn defer_takeover(&mut self, old: ConnId, req: ConnectRequest, now: Instant) {
        if let Some(link) = self
            .by_conn
            .get(&old)
            .and_then(|sid| self.sessions.get(sid))
            .and_then(|s| s.link.as_ref())
        {
            link.outbox.close(ReasonCode::SessionTakenOver);
        }
        let wait = (now + TAKEOVER_WAIT, Box::new(req));
        if let Some((_, earlier)) = self.takeovers.waiting.insert(old, wait) {
            // An even newer CONNECT for the same client id: the one that waited never gets the
            // session (dropping its reply refuses it).
            earlier.outbox.close(ReasonCode::SessionTakenOver);
        }
    }

    /// `conn` has ended and its end is applied: the CONNECT that waited for it connects now.
    pub(super) fn takeover_ready(&mut self, conn: ConnId, now: Instant) {
        if let Some((_, req)) = self.takeovers.waiting.remove(&conn) {
            self.connect(*req, now);
        }
    }

    /// Waits that ran out: the old connection is detached (as in any takeover) and the
    /// CONNECT proceeds; the old connection's end, when it comes, changes nothing.
    pub(super) fn expire_takeovers(&mut self, now: Instant) {
        let due: Vec<ConnId> = self
            .takeovers
            .waiting
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(conn, _)| *conn)
            .collect();
        for old in due {
            if let Some(sid) = self.by_conn.get(&old).copied() {
                tracing::warn!(
                    conn = old,
                    "a taken-over connection did not end in time; detached"
                );
                self.take_over(sid, now);
            }
            self.takeover_ready(old, now);
        }
    }

    /// When the next wait runs out.
    pub(super) fn next_takeover_deadline(&self) -> Option<Instant> {
        self.takeovers.waiting.values().map(|(at, _)| *at).min()
    }
}
