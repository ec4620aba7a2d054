//! Shared subscription groups across the nodes of a cluster: each message to one member of
//! a group cluster-wide.
//!
//! A group's messages reach every node with members (the group's filter is part of those
//! nodes' interest, [`crate::interest`]). Which nodes have members comes from the same
//! interest bucket: a node writes a key for each shared subscription filter
//! (`$share/{group}/{filter}`) with members on it, and the SUBACK that gave a node its first
//! member of a group waits until the other live nodes have read it. From that each node knows,
//! per group, the sorted list of live nodes with members. For a message, the node at index
//! `hash % len` of its group's list delivers it (to one of its members, round-robin); the hash
//! is of the message's topic and payload, the same on every node. Liveness comes from the
//! announcements every node makes once a second on `<cluster>.groups.<node>`: a node not
//! heard from for [`EXPIRY`] is taken out of the lists (its keys stay, for when it returns). A
//! node whose keys are read before its first announcement counts as heard from then (so a
//! node that has just started counts the others in at once; one of them that is gone is
//! taken out [`EXPIRY`] later, its share of a group's messages dropped until then).
//!
//! Limits: a node that loses a group's last member stops serving the group at once, the
//! others when they read the bucket (milliseconds): a message in between may be dropped there.
//! Groups whose members are all on one node behave exactly as on a single broker.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// A node not heard from for this long no longer serves any group.
pub const EXPIRY: Duration = Duration::from_secs(3);

/// The subject on which `node` announces it is alive (an empty message once a second).
pub fn subject(cluster: &str, node: &str) -> String {
    format!("{cluster}.groups.{node}")
}

/// Which node serves each shared group; shared by the router (asking) and the interest task
/// and session directory (updating).
#[derive(Debug)]
pub struct Placement {
    node: String,
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    local: HashSet<String>,
    /// Groups with members on each other node (from the interest bucket).
    remote: HashMap<String, HashSet<String>>,
    /// When each other node was last heard from.
    seen: HashMap<String, Instant>,
    /// Group -> sorted live nodes with members (this node included).
    by_group: HashMap<String, Vec<String>>,
}

impl State {
    fn rebuild(&mut self, me: &str) {
        let mut by_group: HashMap<String, Vec<String>> = HashMap::new();
        for g in &self.local {
            by_group.entry(g.clone()).or_default().push(me.to_owned());
        }
        for (node, groups) in &self.remote {
            if !self.seen.contains_key(node) {
                continue;
            }
            for g in groups {
                by_group.entry(g.clone()).or_default().push(node.clone());
            }
        }
        for nodes in by_group.values_mut() {
            nodes.sort();
        }
        self.by_group = by_group;
    }
}

impl Placement {
    /// The placement of node `node`.
    pub fn new(node: &str) -> Placement {
        Placement {
            node: node.to_owned(),
            state: RwLock::default(),
        }
    }

    /// Whether this node delivers the message hashing to `hash` to `group`.
    pub fn takes(&self, group: &str, hash: u64) -> bool {
        let Ok(state) = self.state.read() else {
            return true;
        };
        match state.by_group.get(group) {
            Some(nodes) if nodes.len() > 1 => {
                let i = usize::try_from(hash % nodes.len() as u64).unwrap_or(0);
                nodes.get(i).is_none_or(|n| *n == self.node)
            }
            _ => true,
        }
    }

    /// `group` gained its first member on this node (`present`) or lost its last.
    pub fn set_local(&self, group: &str, present: bool) {
        if let Ok(mut state) = self.state.write() {
            let changed = if present {
                state.local.insert(group.to_owned())
            } else {
                state.local.remove(group)
            };
            if changed {
                state.rebuild(&self.node);
            }
        }
    }

    /// The interest bucket says `group` has members on `node` (`present`) or no longer.
    pub fn set_remote(&self, node: &str, group: &str, present: bool) {
        if node == self.node {
            return;
        }
        if let Ok(mut state) = self.state.write() {
            let groups = state.remote.entry(node.to_owned()).or_default();
            let changed = if present {
                groups.insert(group.to_owned())
            } else {
                groups.remove(group)
            };
            if changed {
                state.rebuild(&self.node);
            }
        }
    }

    /// The interest bucket has keys of `node`: unless it was heard from already, it counts
    /// as heard from now (a node that has just started has heard nobody's announcement yet;
    /// a node that is gone drops out [`EXPIRY`] later).
    pub fn heard_of(&self, node: &str, now: Instant) {
        if node == self.node {
            return;
        }
        if let Ok(mut state) = self.state.write() {
            if !state.seen.contains_key(node) {
                state.seen.insert(node.to_owned(), now);
                state.rebuild(&self.node);
            }
        }
    }

    /// `node` announced itself at `now`.
    pub fn heard(&self, node: &str, now: Instant) {
        if node == self.node {
            return;
        }
        if let Ok(mut state) = self.state.write() {
            let new = state.seen.insert(node.to_owned(), now).is_none();
            if new {
                state.rebuild(&self.node);
            }
        }
    }

    /// Takes out nodes not heard from since `now - EXPIRY`.
    pub fn expire(&self, now: Instant) {
        if let Ok(mut state) = self.state.write() {
            let before = state.seen.len();
            state
                .seen
                .retain(|_, seen| now.saturating_duration_since(*seen) < EXPIRY);
            if state.seen.len() != before {
                state.rebuild(&self.node);
            }
        }
    }

    /// The other nodes heard from within [`EXPIRY`] before `now` (each node announces itself
    /// every second).
    pub fn live_nodes(&self, now: Instant) -> Vec<String> {
        self.state.read().map_or_else(
            |_| Vec::new(),
            |s| {
                s.seen
                    .iter()
                    .filter(|(_, seen)| now.saturating_duration_since(**seen) < EXPIRY)
                    .map(|(node, _)| node.clone())
                    .collect()
            },
        )
    }

    /// Pairs of another live node and a group with members there, as known here.
    pub fn remote_memberships(&self) -> usize {
        self.state.read().map_or(0, |s| {
            s.remote
                .iter()
                .filter(|(node, _)| s.seen.contains_key(*node))
                .map(|(_, g)| g.len())
                .sum()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_live_node_takes_each_message() {
        let t0 = Instant::now();
        let g = "$share/g/t";
        let nodes: Vec<Placement> = ["a", "b", "c"].iter().map(|n| Placement::new(n)).collect();
        for p in &nodes {
            p.set_local(g, true);
            for other in ["a", "b", "c"] {
                p.set_remote(other, g, true);
                p.heard(other, t0);
            }
        }
        let mut per_node = [0; 3];
        for hash in 0..300u64 {
            let takers: Vec<usize> = (0..3).filter(|&i| nodes[i].takes(g, hash)).collect();
            assert_eq!(takers.len(), 1, "hash {hash}: {takers:?}");
            per_node[takers[0]] += 1;
        }
        assert_eq!(per_node, [100, 100, 100]);
        assert!(
            nodes[0].takes("$share/other/t", 7),
            "unknown elsewhere: ours"
        );
        // c goes silent: a and b share between them; c's membership is kept for its return.
        for p in &nodes[..2] {
            p.heard(if p.node == "a" { "b" } else { "a" }, t0 + EXPIRY);
            p.expire(t0 + EXPIRY);
        }
        for hash in 0..100u64 {
            assert_eq!(
                nodes[0].takes(g, hash) as u8 + nodes[1].takes(g, hash) as u8,
                1
            );
        }
        assert_eq!(nodes[0].remote_memberships(), 1);
        nodes[0].heard("c", t0 + EXPIRY);
        assert_eq!(nodes[0].remote_memberships(), 2, "back");
        // b's last member leaves: a takes everything.
        nodes[0].set_remote("b", g, false);
        nodes[0].set_remote("c", g, false);
        assert!((0..50u64).all(|h| nodes[0].takes(g, h)));
    }
}
