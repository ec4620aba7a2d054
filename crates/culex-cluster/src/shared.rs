//! Shared subscription groups across the nodes of a cluster: each message to one member of
//! a group cluster-wide.
//!
//! Every node sees every message. Each node tells the others, about once a second on
//! `<cluster>.groups.<node>`, which shared groups (by full filter, `$share/{group}/{filter}`)
//! have members on it; from that each node knows, per group, the sorted list of nodes with
//! members. For a message, the node at index `hash % len` of its group's list delivers it
//! (to one of its members, round-robin); the hash is of the message's topic and payload, the
//! same on every node. A node not heard from for [`EXPIRY`] is taken out of the lists.
//!
//! Limits: the lists are only as fresh as the last announcements, so for up to a second after
//! a group's membership changes on a node, a message may reach the group on two nodes, or on
//! a node where the group has just lost its last member (and is dropped there, QoS 0 as
//! QoS 1). Groups whose members are all on one node behave exactly as on a single broker.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

/// A node not heard from for this long no longer serves any group.
pub const EXPIRY: Duration = Duration::from_secs(3);

/// The subject on which `node` announces its groups.
pub fn subject(cluster: &str, node: &str) -> String {
    format!("{cluster}.groups.{node}")
}

/// An announcement: each group as a `u32` length and its bytes.
pub fn encode(groups: &[String]) -> Bytes {
    let mut out = BytesMut::new();
    for g in groups {
        out.put_u32(u32::try_from(g.len()).unwrap_or(u32::MAX));
        out.put_slice(g.as_bytes());
    }
    out.freeze()
}

/// The groups of an announcement; `None` when it is malformed.
pub fn decode(mut payload: &[u8]) -> Option<Vec<String>> {
    let mut groups = Vec::new();
    while !payload.is_empty() {
        let (len, rest) = payload.split_at_checked(4)?;
        let len = usize::try_from(u32::from_be_bytes(len.try_into().ok()?)).ok()?;
        let (group, rest) = rest.split_at_checked(len)?;
        groups.push(std::str::from_utf8(group).ok()?.to_owned());
        payload = rest;
    }
    Some(groups)
}

/// Which node serves each shared group; shared by the router (asking) and the directory
/// (updating).
#[derive(Debug)]
pub struct Placement {
    node: String,
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    local: HashSet<String>,
    remote: HashMap<String, (Instant, HashSet<String>)>,
    /// Group -> sorted nodes with members (this node included).
    by_group: HashMap<String, Vec<String>>,
}

impl State {
    fn rebuild(&mut self, me: &str) {
        let mut by_group: HashMap<String, Vec<String>> = HashMap::new();
        for g in &self.local {
            by_group.entry(g.clone()).or_default().push(me.to_owned());
        }
        for (node, (_, groups)) in &self.remote {
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

    /// The groups with members on this node now.
    pub fn set_local(&self, groups: Vec<String>) {
        if let Ok(mut state) = self.state.write() {
            let groups: HashSet<String> = groups.into_iter().collect();
            if state.local != groups {
                state.local = groups;
                state.rebuild(&self.node);
            }
        }
    }

    /// `node` announced its groups at `now`.
    pub fn set_remote(&self, node: &str, groups: Vec<String>, now: Instant) {
        if node == self.node {
            return;
        }
        if let Ok(mut state) = self.state.write() {
            let groups: HashSet<String> = groups.into_iter().collect();
            let changed = state.remote.get(node).is_none_or(|(_, old)| *old != groups);
            state.remote.insert(node.to_owned(), (now, groups));
            if changed {
                state.rebuild(&self.node);
            }
        }
    }

    /// Takes out nodes not heard from since `now - EXPIRY`.
    pub fn expire(&self, now: Instant) {
        if let Ok(mut state) = self.state.write() {
            let before = state.remote.len();
            state
                .remote
                .retain(|_, (seen, _)| now.saturating_duration_since(*seen) < EXPIRY);
            if state.remote.len() != before {
                state.rebuild(&self.node);
            }
        }
    }

    /// The other nodes heard from within [`EXPIRY`] before `now` (each node announces itself
    /// every second, with or without groups).
    pub fn live_nodes(&self, now: Instant) -> Vec<String> {
        self.state.read().map_or_else(
            |_| Vec::new(),
            |s| {
                s.remote
                    .iter()
                    .filter(|(_, (seen, _))| now.saturating_duration_since(*seen) < EXPIRY)
                    .map(|(node, _)| node.clone())
                    .collect()
            },
        )
    }

    /// Pairs of another node and a group with members there, as known here.
    pub fn remote_memberships(&self) -> usize {
        self.state
            .read()
            .map_or(0, |s| s.remote.values().map(|(_, g)| g.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip() {
        let groups = vec!["$share/g/a/#".to_owned(), "$share/h/\n".to_owned()];
        assert_eq!(decode(&encode(&groups)), Some(groups));
        assert_eq!(decode(&[]), Some(vec![]));
        assert_eq!(decode(&[0, 0, 0, 5, b'a']), None);
    }

    #[test]
    fn exactly_one_node_takes_each_message_and_the_dead_drop_out() {
        let t0 = Instant::now();
        let g = "$share/g/t".to_owned();
        let nodes: Vec<Placement> = ["a", "b", "c"].iter().map(|n| Placement::new(n)).collect();
        for p in &nodes {
            p.set_local(vec![g.clone()]);
            for other in ["a", "b", "c"] {
                p.set_remote(other, vec![g.clone()], t0);
            }
        }
        let mut per_node = [0; 3];
        for hash in 0..300u64 {
            let takers: Vec<usize> = (0..3).filter(|&i| nodes[i].takes(&g, hash)).collect();
            assert_eq!(takers.len(), 1, "hash {hash}: {takers:?}");
            per_node[takers[0]] += 1;
        }
        assert_eq!(per_node, [100, 100, 100]);
        assert!(
            nodes[0].takes("$share/other/t", 7),
            "unknown elsewhere: ours"
        );
        // c goes silent: a and b share between them.
        for p in &nodes[..2] {
            p.set_remote(
                if p.node == "a" { "b" } else { "a" },
                vec![g.clone()],
                t0 + EXPIRY,
            );
            p.expire(t0 + EXPIRY);
        }
        for hash in 0..100u64 {
            assert_eq!(
                nodes[0].takes(&g, hash) as u8 + nodes[1].takes(&g, hash) as u8,
                1
            );
        }
        assert_eq!(nodes[0].remote_memberships(), 1);
    }
}
