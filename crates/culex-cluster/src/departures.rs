//! Sessions that moved from this node to another one, and the late copies for them.
//!
//! A session moves only once the new node's interest is known to every node (see
//! `router/migrate.rs` in culex-broker), so what is published after that reaches the new node.
//! A copy that another node sent *here alone*, before it knew of the new node, can still be on
//! its way (in the publishing node's link, in the stream, in this node's link or on its way
//! into this node's router) when this node hands the session over: this node would deliver it
//! to no one. So from the moment the router hands the session over (it tells so before it
//! routes anything else) until [`LINGER`] after, every stream message this node's router
//! accepts that the session wants is passed on to the new node ([`tail_subject`]), which
//! queues it for the session alone, or passes it on again if the session has moved on since;
//! unless the new node got a copy for the session itself: every stored copy names the nodes
//! its publication went to ([`DEST_HEADER`]), and the new node names, per publishing node, the
//! last publication it had read from its stream when it prepared the session
//! ([`CUTOFF_HEADER`], from [`Departures::imported`]): a copy the new node got but read before
//! it prepared the session (another of its clients wanted the topic) went to no one there, so
//! it is passed on too. The link learns that the router accepted a message a little after
//! it did, so a copy routed just before the hand-over may be in the image and passed on too
//! (at least once). The old node confirms such a copy to the stream only once the new node has
//! it (or could not be reached: counted).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use culex_proto::topic::{matches, parse_shared};

/// How long after a move late copies are passed on.
pub const LINGER: Duration = Duration::from_secs(30);
/// How long one attempt at passing a late copy on may take.
pub const TAIL_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts at passing a late copy on (a node that does not answer in time); all within the
/// stream's wait for a confirmation (10 s), so that the stream does not send the copy again
/// meanwhile.
pub const TAIL_ATTEMPTS: u32 = 3;
/// The header of a stored copy naming every node its publication went to (`,`-separated).
pub const DEST_HEADER: &str = "Culex-Dest";
/// The header of a session request naming the node that asks.
pub const FROM_HEADER: &str = "Culex-From";
/// The header of a session request giving, per publishing node and boot, the last
/// publication the asking node had read from its stream (`<node>-<boot>=<n>`, `,`-separated).
pub const CUTOFF_HEADER: &str = "Culex-Cutoff";

/// The publishing node and boot of a stored copy's `Nats-Msg-Id` (`<node>-<boot>-<n>`, then
/// `.<destination>`), and the publication's number `n`.
pub fn origin_and_number(msg_id: &str) -> Option<(&str, u64)> {
    let base = msg_id.split('.').next()?;
    let (origin, n) = base.rsplit_once('-')?;
    Some((origin, n.parse().ok()?))
}

/// Parses a [`CUTOFF_HEADER`] value (what does not parse is left out).
fn parse_cutoffs(value: &str) -> HashMap<String, u64> {
    value
        .split(',')
        .filter_map(|pair| {
            let (origin, n) = pair.split_once('=')?;
            Some((origin.to_owned(), n.parse().ok()?))
        })
        .collect()
}

/// The subject on which `node` takes late copies for sessions that moved to it.
pub fn tail_subject(cluster: &str, node: &str) -> String {
    format!("{cluster}.tail.{node}")
}

/// A late copy for `client_id`'s session: `len u16 | client_id | envelope`.
pub fn encode_tail(client_id: &str, envelope: &[u8]) -> Option<Bytes> {
    let len = u16::try_from(client_id.len()).ok()?;
    let mut out = BytesMut::with_capacity(2 + client_id.len() + envelope.len());
    out.put_u16(len);
    out.put_slice(client_id.as_bytes());
    out.put_slice(envelope);
    Some(out.freeze())
}

/// The client identifier and the envelope of a late copy.
pub fn decode_tail(payload: &[u8]) -> Option<(&str, &[u8])> {
    let (len, rest) = payload.split_at_checked(2)?;
    let len = usize::from(u16::from_be_bytes(len.try_into().ok()?));
    let (id, envelope) = rest.split_at_checked(len)?;
    Some((std::str::from_utf8(id).ok()?, envelope))
}

/// Whether the [`DEST_HEADER`] value `dests` names `node`.
pub fn names(dests: &str, node: &str) -> bool {
    dests.split(',').any(|d| d == node)
}

#[derive(Debug)]
struct Departure {
    client_id: String,
    to: String,
    /// What `to` had read from its stream when it prepared the session
    /// ([`CUTOFF_HEADER`]).
    cutoffs: HashMap<String, u64>,
    /// The session's filters, once the router has handed the session over; `None` while the
    /// move is asked for and the session is still here (nothing is passed on then).
    filters: Option<Vec<String>>,
    until: Instant,
}

/// The sessions that are moving away from this node or moved in the last [`LINGER`].
#[derive(Debug, Default)]
pub struct Departures {
    list: Mutex<Vec<Departure>>,
    /// The last publication this node's link has read from its stream, per publishing node
    /// and boot.
    read: Mutex<HashMap<String, u64>>,
    /// How many are listed (read without the lock on every imported message).
    count: AtomicUsize,
}

impl Departures {
    fn edit(&self, f: impl FnOnce(&mut Vec<Departure>)) {
        if let Ok(mut list) = self.list.lock() {
            f(&mut list);
            self.count.store(list.len(), Ordering::Relaxed);
        }
    }

    /// Node `to` asks for `client_id`'s session (nothing is passed on until the router has
    /// handed it over: [`Departures::exported`]).
    pub fn departing(&self, client_id: &str, to: &str, cutoffs: Option<&str>) {
        let cutoffs = cutoffs.map(parse_cutoffs).unwrap_or_default();
        self.edit(|list| {
            list.retain(|d| !(d.client_id == client_id && d.to == to));
            list.push(Departure {
                client_id: client_id.to_owned(),
                to: to.to_owned(),
                cutoffs,
                filters: None,
                until: Instant::now() + LINGER,
            });
        });
    }

    /// The router has handed `client_id`'s session, subscribed to `filters`, over (before it
    /// routes anything else): from now on, copies it wants go on to the node that asked.
    pub fn exported(&self, client_id: &str, filters: &[&str]) {
        if self.is_empty() {
            return;
        }
        let filters: Vec<String> = filters
            .iter()
            .filter(|f| matches!(parse_shared(f), Ok(None)))
            .map(|f| (*f).to_owned())
            .collect();
        self.edit(|list| {
            for d in list
                .iter_mut()
                .filter(|d| d.client_id == client_id && d.filters.is_none())
            {
                d.filters = Some(filters.clone());
                d.until = Instant::now() + LINGER;
            }
        });
    }

    /// The move of `client_id`'s session to `to` did not happen (no session here, or the
    /// transfer failed and the session stays).
    pub fn abandoned(&self, client_id: &str, to: &str) {
        self.edit(|list| list.retain(|d| !(d.client_id == client_id && d.to == to)));
    }

    /// `client_id`'s session is here again: nothing more is passed on for it.
    pub fn returned(&self, client_id: &str) {
        if self.is_empty() {
            return;
        }
        self.edit(|list| list.retain(|d| d.client_id != client_id));
    }

    /// Whether no session is moving away or moved lately.
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    /// The node `client_id`'s session moved to from here lately, if it did: where a late copy
    /// for it that reached this node after it left goes on to.
    pub fn moved_to(&self, client_id: &str) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let now = Instant::now();
        let list = self.list.lock().ok()?;
        list.iter()
            .rev()
            .find(|d| d.client_id == client_id && d.filters.is_some() && d.until > now)
            .map(|d| d.to.clone())
    }

    /// This node's link read the stored copy with `msg_id` from its stream (see
    /// [`Departures::cutoffs`]).
    pub fn imported(&self, msg_id: &str) {
        let Some((origin, n)) = origin_and_number(msg_id) else {
            return;
        };
        if let Ok(mut read) = self.read.lock() {
            match read.get_mut(origin) {
                Some(last) => *last = (*last).max(n),
                None => {
                    read.insert(origin.to_owned(), n);
                }
            }
        }
    }

    /// The [`CUTOFF_HEADER`] value for a session request: what this node's link has read so
    /// far.
    pub fn cutoffs(&self) -> String {
        self.read.lock().map_or_else(
            |_| String::new(),
            |read| {
                read.iter()
                    .map(|(origin, n)| format!("{origin}={n}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        )
    }

    /// The sessions (client identifier, node) a copy on `topic` should be passed on to: those
    /// handed over lately that subscribe to `topic`, unless their new node got the copy
    /// after it prepared the session: among `dests` (the nodes the publication went to;
    /// `None`: not known) and read there after the cutoff it gave for the copy's `msg_id`.
    pub fn late_for(
        &self,
        topic: &str,
        dests: Option<&str>,
        msg_id: Option<&str>,
    ) -> Vec<(String, String)> {
        if self.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let mut out = Vec::new();
        self.edit(|list| {
            list.retain(|d| d.until > now);
            out = list
                .iter()
                .filter(|d| {
                    let had_it = dests.is_some_and(|dests| names(dests, &d.to));
                    let read_before =
                        msg_id
                            .and_then(origin_and_number)
                            .is_some_and(|(origin, n)| {
                                d.cutoffs.get(origin).is_some_and(|&cut| n <= cut)
                            });
                    !had_it || read_before
                })
                .filter(|d| {
                    d.filters
                        .as_ref()
                        .is_some_and(|fs| fs.iter().any(|f| matches(f, topic)))
                })
                .map(|d| (d.client_id.clone(), d.to.clone()))
                .collect();
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_copy_goes_to_a_session_that_wants_it_unless_its_node_had_one() {
        let d = Departures::default();
        assert!(d.late_for("a/b", None, None).is_empty());
        d.departing("c1", "n2", None);
        assert!(
            d.late_for("a/b", None, None).is_empty(),
            "still here: nothing passed on"
        );
        d.exported("c1", &["a/#", "$share/g/x"]);
        d.departing("c2", "n3", None);
        d.exported("c2", &["z"]);
        assert_eq!(
            d.late_for("a/b", Some("n1"), None),
            [("c1".into(), "n2".into())]
        );
        assert!(
            d.late_for("a/b", Some("n1,n2"), None).is_empty(),
            "n2 had its copy"
        );
        assert_eq!(
            d.late_for("a/b", None, None).len(),
            1,
            "not known: passed on"
        );
        assert!(
            d.late_for("x", None, None).is_empty(),
            "shared filters are not followed"
        );
        assert_eq!(d.moved_to("c1").as_deref(), Some("n2"));
        d.returned("c1");
        assert!(d.late_for("a/b", None, None).is_empty());
        assert_eq!(d.moved_to("c1"), None);
        assert_eq!(d.late_for("z", Some(""), None).len(), 1);
    }

    #[test]
    fn a_copy_the_new_node_read_before_it_prepared_the_session_is_passed_on() {
        let d = Departures::default();
        d.imported("n1-77-5.n2");
        d.imported("n1-77-9.n2");
        d.imported("n1-77-7.n2");
        d.imported("n4-12-3.n2");
        let mut cutoffs: Vec<String> = d.cutoffs().split(',').map(str::to_owned).collect();
        cutoffs.sort();
        assert_eq!(cutoffs, ["n1-77=9", "n4-12=3"]);
        // The old node, told what n2 had read when it asked.
        let old = Departures::default();
        old.departing("c", "n2", Some("n1-77=9,n4-12=3,garbage"));
        old.exported("c", &["t"]);
        let to_n2 = [("c".to_owned(), "n2".to_owned())];
        assert_eq!(old.late_for("t", Some("n2"), Some("n1-77-9.n3")), to_n2);
        assert!(old
            .late_for("t", Some("n2"), Some("n1-77-10.n3"))
            .is_empty());
        assert!(
            old.late_for("t", Some("n2,n3"), Some("n5-1-1.n3"))
                .is_empty(),
            "nothing read from n5 before: n2 read it after"
        );
        assert_eq!(old.late_for("t", Some("n3"), Some("n1-77-10.n3")), to_n2);
        assert_eq!(old.late_for("t", Some("n2"), None), []);
        assert_eq!(origin_and_number("a-b-c-12.x"), Some(("a-b-c", 12)));
        assert_eq!(origin_and_number("nonumber"), None);
    }

    #[test]
    fn a_failed_move_removes_only_its_own_entry() {
        let d = Departures::default();
        d.departing("c", "n2", None);
        d.exported("c", &["t"]);
        // Another node asks too; it finds nothing here and gives up.
        d.departing("c", "n3", None);
        d.abandoned("c", "n3");
        assert_eq!(d.late_for("t", None, None), [("c".into(), "n2".into())]);
        d.abandoned("c", "n2");
        assert!(d.is_empty());
    }

    #[test]
    fn tails_decode_what_they_encode_and_refuse_garbage() {
        let t = encode_tail("c1", b"env").unwrap();
        assert_eq!(decode_tail(&t), Some(("c1", &b"env"[..])));
        assert_eq!(decode_tail(&[0, 9, b'x']), None);
        assert_eq!(decode_tail(&[]), None);
        assert!(!names("n10,n2", "n1"));
        assert!(names("n10,n1", "n1"));
    }
}
