//! Sessions that moved from this node to another one, and the late copies for them.
//!
//! A session moves only once the new node's interest is known to every node (see
//! `router/migrate.rs` in culex-broker), so what is published after that reaches the new node.
//! A copy that another node sent *here alone*, before it knew of the new node, can still be on
//! its way (in the publishing node's link, in the stream, in this node's link or on its way
//! into this node's router) when this node hands the session over: this node would deliver it
//! to no one. So from the moment a move is asked for (before the router gives the session up)
//! until [`LINGER`] after it, every stream message this node's router accepts that the session
//! wants is passed on to the new node ([`tail_subject`]), which queues it for the session
//! alone; unless the new node got a copy itself: every stored copy names the nodes its
//! publication went to ([`DEST_HEADER`]). What the router accepted before the move was asked
//! for is in the session's image; what it accepted meanwhile may be in both (at least once).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use culex_proto::topic::{matches, parse_shared};

/// How long after a move late copies are passed on.
pub const LINGER: Duration = Duration::from_secs(30);
/// The header of a stored copy naming every node its publication went to (`,`-separated).
pub const DEST_HEADER: &str = "Culex-Dest";
/// The header of a session request naming the node that asks.
pub const FROM_HEADER: &str = "Culex-From";

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
    /// The session's filters; `None` (every topic) until the router has given the image.
    filters: Option<Vec<String>>,
    until: Instant,
}

/// The sessions that moved away from this node in the last [`LINGER`].
#[derive(Debug, Default)]
pub struct Departures {
    list: Mutex<Vec<Departure>>,
    /// How many are listed (read without the lock on every imported message).
    count: AtomicUsize,
}

impl Departures {
    /// Node `to` asks for `client_id`'s session: from now on, what the router accepts may
    /// come too late for the image.
    pub fn departing(&self, client_id: &str, to: &str) {
        if let Ok(mut list) = self.list.lock() {
            list.retain(|d| d.client_id != client_id);
            list.push(Departure {
                client_id: client_id.to_owned(),
                to: to.to_owned(),
                filters: None,
                until: Instant::now() + LINGER,
            });
            self.count.store(list.len(), Ordering::Relaxed);
        }
    }

    /// `client_id`'s session, subscribed to `filters`, moved to node `to`.
    pub fn departed(&self, client_id: &str, to: &str, filters: Vec<String>) {
        let filters = filters
            .into_iter()
            .filter(|f| matches!(parse_shared(f), Ok(None)))
            .collect();
        if let Ok(mut list) = self.list.lock() {
            list.retain(|d| d.client_id != client_id);
            list.push(Departure {
                client_id: client_id.to_owned(),
                to: to.to_owned(),
                filters: Some(filters),
                until: Instant::now() + LINGER,
            });
            self.count.store(list.len(), Ordering::Relaxed);
        }
    }

    /// Whether no session moved away lately.
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Relaxed) == 0
    }

    /// `client_id`'s session is here again (or never left: the move did not happen): nothing
    /// more is passed on for it.
    pub fn returned(&self, client_id: &str) {
        if self.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Ok(mut list) = self.list.lock() {
            list.retain(|d| d.client_id != client_id);
            self.count.store(list.len(), Ordering::Relaxed);
        }
    }

    /// The sessions (client identifier, node) a copy on `topic` should be passed on to: those
    /// that moved lately, subscribe to `topic`, and whose new node is not among `dests` (the
    /// nodes the publication went to; `None`: not known, passed on).
    pub fn late_for(&self, topic: &str, dests: Option<&str>) -> Vec<(String, String)> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        let Ok(mut list) = self.list.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        list.retain(|d| d.until > now);
        self.count.store(list.len(), Ordering::Relaxed);
        list.iter()
            .filter(|d| dests.is_none_or(|dests| !names(dests, &d.to)))
            .filter(|d| {
                d.filters
                    .as_ref()
                    .is_none_or(|fs| fs.iter().any(|f| matches(f, topic)))
            })
            .map(|d| (d.client_id.clone(), d.to.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_copy_goes_to_a_session_that_wants_it_unless_its_node_had_one() {
        let d = Departures::default();
        assert!(d.late_for("a/b", None).is_empty());
        d.departed("c1", "n2", vec!["a/#".into(), "$share/g/x".into()]);
        d.departed("c2", "n3", vec!["z".into()]);
        assert_eq!(d.late_for("a/b", Some("n1")), [("c1".into(), "n2".into())]);
        assert!(
            d.late_for("a/b", Some("n1,n2")).is_empty(),
            "n2 had its copy"
        );
        assert_eq!(d.late_for("a/b", None).len(), 1, "not known: passed on");
        assert!(
            d.late_for("x", None).is_empty(),
            "shared filters are not followed"
        );
        d.returned("c1");
        assert!(d.late_for("a/b", None).is_empty());
        assert_eq!(d.late_for("z", Some("")).len(), 1);
        d.departing("c3", "n4");
        assert_eq!(
            d.late_for("any/thing", Some("n1")),
            [("c3".into(), "n4".into())],
            "while the image is made: every topic"
        );
        d.departed("c3", "n4", vec!["q".into()]);
        assert!(d.late_for("any/thing", Some("n1")).is_empty());
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
