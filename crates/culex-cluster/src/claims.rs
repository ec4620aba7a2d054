//! Client identifiers are unique in the cluster: a node where a client connects claims its
//! identifier on a core NATS subject, and the other nodes take over their own client of that
//! identifier (DISCONNECT 0x8E), as one broker does when a second connection uses an
//! identifier. A claim carries the time of its connection, so that a claim that arrives after
//! a newer local connection of the same identifier does not disconnect the newer one (the
//! other node gets this node's claim and gives way instead).

use std::collections::{HashMap, VecDeque};

/// Local connections remembered to judge claims against (the oldest are forgotten first).
const REMEMBERED: usize = 100_000;

/// The subject claims travel on.
pub fn subject(cluster: &str) -> String {
    format!("{cluster}.claims")
}

/// A claim's payload: the connection time (Unix milliseconds) and the client identifier.
pub fn encode(at_ms: u64, client_id: &str) -> String {
    format!("{at_ms} {client_id}")
}

/// The connection time and client identifier of a claim's payload.
pub fn decode(payload: &[u8]) -> Option<(u64, String)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (at, id) = text.split_once(' ')?;
    Some((at.parse().ok()?, id.to_owned()))
}

/// The local connections of this node, by client identifier, with their times.
#[derive(Debug, Default)]
pub struct Claims {
    latest: HashMap<String, u64>,
    order: VecDeque<(String, u64)>,
}

impl Claims {
    /// A client connected here at `at_ms`.
    pub fn local(&mut self, client_id: &str, at_ms: u64) {
        self.latest.insert(client_id.to_owned(), at_ms);
        self.order.push_back((client_id.to_owned(), at_ms));
        while self.order.len() > REMEMBERED {
            if let Some((id, at)) = self.order.pop_front() {
                if self.latest.get(&id) == Some(&at) {
                    self.latest.remove(&id);
                }
            }
        }
    }

    /// Another node claims `client_id` for a connection made at `at_ms`: whether this node's
    /// client of that identifier must go (it is not newer than the claim).
    pub fn must_yield(&self, client_id: &str, at_ms: u64) -> bool {
        self.latest.get(client_id).is_none_or(|&ours| ours <= at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        assert_eq!(
            decode(encode(5, "a b").as_bytes()),
            Some((5, "a b".to_owned()))
        );
        assert_eq!(decode(encode(7, "").as_bytes()), Some((7, String::new())));
        for bad in [&b""[..], b"x y", b"12", b"\xff 1"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_newer_connection_stays() {
        let mut c = Claims::default();
        assert!(c.must_yield("x", 10), "unknown here: nothing to keep");
        c.local("x", 100);
        assert!(!c.must_yield("x", 50), "a claim older than our connection");
        assert!(c.must_yield("x", 150), "a newer connection elsewhere");
        assert!(c.must_yield("x", 100), "a tie: both give way");
    }

    #[test]
    fn memory_is_bounded() {
        let mut c = Claims::default();
        for i in 0..(REMEMBERED as u64 + 10) {
            c.local(&format!("c{i}"), i);
        }
        assert!(c.latest.len() <= REMEMBERED);
        assert!(c.must_yield("c0", 0), "forgotten");
        assert!(!c.must_yield(&format!("c{}", REMEMBERED + 9), 0));
    }
}
