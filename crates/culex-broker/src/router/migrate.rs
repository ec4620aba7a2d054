//! Sessions that move between the nodes of a cluster.
//!
//! A client that reconnects to another node with Clean Start 0 resumes its session there: the
//! node that holds the session is asked to give it up ([`Command::ExportSession`]). If its
//! client is still connected here, that connection is closed (DISCONNECT 0x8E, as in any
//! takeover) and the export waits for its end, so that what the client acknowledged on its
//! way out is settled; then the session's image (subscriptions, queued and in-flight QoS 1/2
//! messages, inbound QoS 2 packet identifiers) is handed over and the session ends here
//! without its delayed will (the session goes on elsewhere). The other node rebuilds it
//! ([`Command::AdoptSession`]) just before its client's CONNECT is handled.
//!
//! A move overlaps, it is not a bare hand-off: before the other node is asked, the node the
//! client came to *prepares* the session from the cluster's record ([`Command::PrepareSession`]:
//! its subscriptions in force, offline, queueing) and the other nodes learn that it wants the
//! session's topics. So every message published from then on goes to the new node too (and is
//! queued in the prepared session), and what the old node got before it gave the session up is
//! in the image. The image then takes the prepared session's place, with what that had
//! queued after the image's own messages. Copies already on their way to the old node alone
//! when it gives the session up are passed on by its cluster link (`culex_cluster::departures`).
//!
//! A message that reached the session on both nodes is kept once: every copy of a publication
//! from the cluster names it ([`Message::publication`]), so what the prepared session queued
//! that the image has too is dropped when they merge, and for [`RECENT`] after the move the
//! session takes each publication once (the image's, what it had queued here, what this node
//! routes to it and the late copies the old node passes on; up to [`RECENT_LIMIT`] of them).
//! What the old node had delivered to a client still connected there (a takeover) is not in
//! the image and may come again.
//!
//! [`Message::publication`]: crate::Message::publication
//!
//! [`Command::ExportSession`]: crate::Command::ExportSession
//! [`Command::AdoptSession`]: crate::Command::AdoptSession
//! [`Command::PrepareSession`]: crate::Command::PrepareSession

use std::sync::Arc;
use std::time::{Duration, Instant};

use culex_proto::ReasonCode;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::oneshot;

use super::takeover::TAKEOVER_WAIT;
use super::{Router, SessionId};
use crate::api::ConnId;
use crate::persist::{MessageRecord, RecoveredSession};
use crate::session::Change;

/// How long after a move a session takes each publication once: the old node passes on what
/// it routes within the time its link lags (well under a second here), asking again for up to
/// 6 s when no answer comes; this node's own copies can lag as long.
pub(super) const RECENT: Duration = Duration::from_secs(10);
/// Publications remembered per session that moved here, at most (about 1.5 MB); beyond, the
/// rest of the window only checks.
const RECENT_LIMIT: usize = 50_000;

/// Where an exported session goes.
pub(crate) type ExportReply = oneshot::Sender<Option<RecoveredSession>>;

/// Exports and discards waiting for the end of a connection.
#[derive(Debug, Default)]
pub(super) struct Migrations {
    /// By the connection being closed: until when to wait, its client, and what to do then.
    waiting: FxHashMap<ConnId, (Instant, Arc<str>, AfterEnd)>,
    /// Client identifiers of sessions prepared here for a move that is under way.
    prepared: FxHashSet<Arc<str>>,
    /// Sessions that moved here lately: until when, and the publications they have had.
    recent: FxHashMap<SessionId, (Instant, FxHashSet<u64>)>,
}

impl Migrations {
    /// Whether session `sid`, which moved here lately, has had `publication` already (if
    /// not, it has it from now on).
    pub(super) fn had(&mut self, sid: SessionId, publication: u64, now: Instant) -> bool {
        if self.recent.is_empty() {
            return false;
        }
        match self.recent.get_mut(&sid) {
            Some((until, _)) if *until <= now => {
                self.recent.remove(&sid);
                false
            }
            Some((_, had)) if had.contains(&publication) => true,
            Some((_, had)) => {
                if had.len() < RECENT_LIMIT {
                    had.insert(publication);
                }
                false
            }
            None => false,
        }
    }

    /// Session `sid` did not take `publication` after all (its queue was full): another
    /// copy may still come.
    pub(super) fn not_had(&mut self, sid: SessionId, publication: u64) {
        if let Some((_, had)) = self.recent.get_mut(&sid) {
            had.remove(&publication);
        }
    }
}

#[derive(Debug)]
enum AfterEnd {
    /// Export the session to these requests (the first gets it, later ones get nothing).
    Export(Vec<ExportReply>),
    /// End the session: its client connected on another node.
    Discard,
}

impl Router {
    /// Another node asks for the session of `client_id`; `reply` gets its image (`None` when
    /// there is no session here).
    pub(super) fn export_session(&mut self, client_id: &str, reply: ExportReply, now: Instant) {
        let Some(&sid) = self.by_client.get(client_id) else {
            let _ = reply.send(None);
            return;
        };
        if let Some(conn) = self.live_connection(client_id) {
            self.close_link(sid, ReasonCode::SessionTakenOver);
            let wait = (now + TAKEOVER_WAIT, Arc::from(client_id), AfterEnd::Discard);
            match self.migrations.waiting.entry(conn).or_insert(wait) {
                (_, _, AfterEnd::Export(replies)) => replies.push(reply),
                (_, _, after) => *after = AfterEnd::Export(vec![reply]),
            }
            return;
        }
        let image = self.session_image(sid);
        self.tell_exported(sid);
        self.cancel_delayed_will(sid);
        self.end_session(sid, now);
        self.stats.sessions_moved_out += 1;
        let _ = reply.send(image);
    }

    /// A client of `client_id` connected on another node: the session here ends (once its
    /// connection, if any, has ended), as a session does when its client starts a clean one
    /// or has resumed it elsewhere.
    pub(super) fn discard_session(&mut self, client_id: &str, now: Instant) {
        let Some(&sid) = self.by_client.get(client_id) else {
            return;
        };
        match self.live_connection(client_id) {
            Some(conn) => {
                self.close_link(sid, ReasonCode::SessionTakenOver);
                self.migrations.waiting.entry(conn).or_insert((
                    now + TAKEOVER_WAIT,
                    Arc::from(client_id),
                    AfterEnd::Discard,
                ));
            }
            None => self.end_session(sid, now),
        }
    }

    /// A session that moved here from another node: rebuilt offline, replacing any session
    /// of its client id here (which is older); a session prepared for this move gives it what
    /// it queued meanwhile, after the image's messages. Its client's CONNECT follows.
    pub(super) fn adopt_session(&mut self, mut image: RecoveredSession, now: Instant) {
        // The cluster sees the filters the two sessions share stay (never go for a moment).
        self.interest.defer();
        let mut had: FxHashSet<u64> = image
            .messages
            .iter()
            .filter_map(|(_, m)| m.message.publication)
            .collect();
        if let Some(&sid) = self.by_client.get(&image.client_id) {
            if self.migrations.prepared.remove(&image.client_id) {
                let next = image.messages.last().map_or(1, |(seq, _)| seq + 1);
                let prepared = self.image_messages(sid);
                let before = prepared.len();
                // Each publication once: what the image has, or what came here twice (a late
                // copy the old node passed on before the image).
                let queued: Vec<MessageRecord> = prepared
                    .into_iter()
                    .map(|(_, m)| m)
                    .filter(|m| m.message.publication.is_none_or(|p| had.insert(p)))
                    .collect();
                self.stats.move_duplicates += (before - queued.len()) as u64;
                image.messages.extend((next..).zip(queued));
            }
            self.take_over(sid, now);
            self.cancel_delayed_will(sid);
            self.end_session(sid, now);
        }
        self.stats.sessions_moved_in += 1;
        self.migrations.recent.retain(|_, (until, _)| *until > now);
        let client_id = Arc::clone(&image.client_id);
        self.session_used(&client_id);
        self.restore_session(image, now, None, false);
        if let Some(&sid) = self.by_client.get(&client_id) {
            self.migrations.recent.insert(sid, (now + RECENT, had));
        }
        self.interest.flush();
    }

    /// A session another node holds is about to move here: rebuilt from the cluster's record
    /// (`record`: its subscriptions, no messages), offline, so that it queues what arrives
    /// during the move; replaced by the image when it comes ([`Router::adopt_session`]).
    /// Nothing is prepared while this node has a session of that client (the move may not
    /// happen: the other node may have none; a session here must not be lost for it).
    pub(super) fn prepare_session(&mut self, record: RecoveredSession, now: Instant) {
        if self.by_client.contains_key(&record.client_id) {
            return;
        }
        let client_id = Arc::clone(&record.client_id);
        self.restore_session(record, now, None, false);
        self.session_used(&client_id);
        self.migrations.prepared.insert(client_id);
    }

    /// `client_id`'s session `sid` here ends: it is no longer one prepared for a move, nor
    /// one that moved here.
    pub(super) fn forget_prepared(&mut self, sid: SessionId, client_id: &str) {
        if !self.migrations.prepared.is_empty() {
            self.migrations.prepared.remove(client_id);
        }
        if !self.migrations.recent.is_empty() {
            self.migrations.recent.remove(&sid);
        }
    }

    /// The move a session was prepared for did not happen (the other node had no session, or
    /// the transfer failed): the prepared session ends, unless a client uses it now.
    pub(super) fn abandon_prepared(&mut self, client_id: &str, now: Instant) {
        if !self.migrations.prepared.remove(client_id) {
            return;
        }
        if let (Some(&sid), None) = (
            self.by_client.get(client_id),
            self.live_connection(client_id),
        ) {
            self.end_session(sid, now);
        }
    }

    /// `conn` has ended and its end is applied: an export or discard that waited for it
    /// proceeds.
    pub(super) fn migration_ready(&mut self, conn: ConnId, now: Instant) {
        let Some((_, client_id, after)) = self.migrations.waiting.remove(&conn) else {
            return;
        };
        match after {
            AfterEnd::Export(replies) => {
                let mut replies = replies.into_iter();
                if let Some(first) = replies.next() {
                    // Answers `None` when the session ended with its connection (expiry 0).
                    self.export_session(&client_id, first, now);
                }
                for later in replies {
                    let _ = later.send(None);
                }
            }
            AfterEnd::Discard => {
                let sid = self.by_client.get(&client_id).copied();
                if let (Some(sid), None) = (sid, self.live_connection(&client_id)) {
                    self.end_session(sid, now);
                }
            }
        }
    }

    /// Waits that ran out: the connection is detached and the export or discard proceeds.
    pub(super) fn expire_migrations(&mut self, now: Instant) {
        let due: Vec<ConnId> = self
            .migrations
            .waiting
            .iter()
            .filter(|(_, (at, _, _))| *at <= now)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in due {
            if let Some(sid) = self.by_conn.get(&conn).copied() {
                tracing::warn!(
                    conn,
                    "a connection asked to close for a session move did not end in time; detached"
                );
                self.take_over(sid, now);
            }
            self.migration_ready(conn, now);
        }
    }

    /// When the next wait runs out.
    pub(super) fn next_migration_deadline(&self) -> Option<Instant> {
        self.migrations.waiting.values().map(|(at, _, _)| *at).min()
    }

    fn close_link(&self, sid: SessionId, reason: ReasonCode) {
        if let Some(link) = self.sessions.get(&sid).and_then(|s| s.link.as_ref()) {
            link.outbox.close(reason);
        }
    }

    /// The image of a session to hand to another node.
    fn session_image(&self, sid: SessionId) -> Option<RecoveredSession> {
        let s = self.sessions.get(&sid)?;
        let mut record = self.session_record(sid)?;
        record.expires_at = None;
        Some(RecoveredSession {
            client_id: Arc::clone(&s.client_id),
            record,
            messages: self.image_messages(sid),
        })
    }

    /// A session's queued and in-flight messages, in sequence order.
    fn image_messages(&self, sid: SessionId) -> Vec<(u64, MessageRecord)> {
        let Some(s) = self.sessions.get(&sid) else {
            return Vec::new();
        };
        s.outgoing
            .snapshot()
            .into_iter()
            .filter_map(|c| match c {
                Change::Put(seq, p, state) => Some((
                    seq,
                    MessageRecord {
                        message: p.message,
                        qos: p.qos,
                        retain: p.retain,
                        subscription_ids: p.subscription_ids.into_vec(),
                        state,
                    },
                )),
                Change::Delete(_) => None,
            })
            .collect()
    }
}
