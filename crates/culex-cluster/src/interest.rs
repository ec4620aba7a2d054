//! Which nodes of the cluster want which topics: each node's subscription filters, for routing
//! a message only to the nodes with a matching subscription.
//!
//! Every node keeps its filters in the replicated key-value bucket `<cluster>-interest`, one
//! key per filter (`<node>.<hash of the filter>`, the filter itself as the value, so that any
//! filter fits in a key), and every node watches the whole bucket into an [`InterestTable`]. A
//! shared subscription's filter (`$share/{group}/{filter}`) routes by its topic part and says
//! the group has members on that node ([`crate::shared`]). [`crate::interest_sync`] keeps the bucket and the tables
//! in step.

use std::collections::HashMap;
use std::sync::Arc;

use culex_proto::topic::parse_shared;

/// The name of the cluster's interest bucket.
pub fn bucket_name(cluster: &str) -> String {
    format!("{cluster}-interest")
}

/// The bucket key of `node`'s interest in `filter`.
pub fn key(node: &str, filter: &str) -> String {
    let (a, b) = hash128(filter.as_bytes());
    format!("{node}.{a:016x}{b:016x}")
}

/// The node a bucket key belongs to.
pub fn node_of_key(key: &str) -> Option<&str> {
    key.split_once('.').map(|(node, _)| node)
}

/// The filter whose topics a subscription filter asks the cluster for: the filter itself, or
/// the topic part of a shared one; `None` for an invalid shared filter.
pub fn routing_filter(filter: &str) -> Option<&str> {
    match parse_shared(filter) {
        Ok(Some(shared)) => Some(shared.filter),
        Ok(None) => Some(filter),
        Err(_) => None,
    }
}

/// A stable 128-bit hash (two FNV-1a 64 with different bases): the same on every node and
/// every version, unlike the standard library's.
fn hash128(bytes: &[u8]) -> (u64, u64) {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for &byte in bytes {
        a = (a ^ u64::from(byte)).wrapping_mul(PRIME);
        b = (b ^ u64::from(byte.rotate_left(3))).wrapping_mul(PRIME);
    }
    (a, b)
}

/// Nodes beyond this many share the last bit of a set: each of them gets what any of them
/// wants (more than needed, never less).
const BITS: usize = 64;

/// A set of nodes (by index).
type NodeSet = u64;

fn bit(index: usize) -> NodeSet {
    1 << index.min(BITS - 1)
}

/// One level of the filter tree.
#[derive(Debug, Default)]
struct Level {
    children: HashMap<Box<str>, Level>,
    plus: Option<Box<Level>>,
    /// Nodes with a filter ending here.
    here: NodeSet,
    /// Nodes with a filter ending in `#` here (it matches this level and everything below).
    hash: NodeSet,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.here == 0 && self.hash == 0 && self.children.is_empty() && self.plus.is_none()
    }

    /// Sets or clears `set`'s bits for `levels`; true when this level is left empty.
    fn update(&mut self, levels: &[&str], set: NodeSet, add: bool) -> bool {
        let apply = |bits: &mut NodeSet| {
            if add {
                *bits |= set;
            } else {
                *bits &= !set;
            }
        };
        match levels.split_first() {
            None => apply(&mut self.here),
            Some((&"#", _)) => apply(&mut self.hash),
            Some((&"+", rest)) => {
                let child = self.plus.get_or_insert_with(Box::default);
                if child.update(rest, set, add) {
                    self.plus = None;
                }
            }
            Some((level, rest)) => {
                let child = self.children.entry((*level).into()).or_default();
                if child.update(rest, set, add) {
                    self.children.remove(*level);
                }
            }
        }
        self.is_empty()
    }

    /// The nodes with a filter matching the topic whose remaining levels are `levels`;
    /// `dollar_root`: this is the root and the topic starts with `$` (wildcards at the first
    /// level do not match it [MQTT-4.7.2-1]).
    fn matching(&self, levels: &[&str], dollar_root: bool) -> NodeSet {
        let mut out = if dollar_root { 0 } else { self.hash };
        match levels.split_first() {
            None => out |= self.here,
            Some((level, rest)) => {
                if let Some(child) = self.children.get(*level) {
                    out |= child.matching(rest, false);
                }
                if !dollar_root {
                    if let Some(child) = &self.plus {
                        out |= child.matching(rest, false);
                    }
                }
            }
        }
        out
    }
}

/// The other nodes' filters, as read from the interest bucket.
#[derive(Debug, Default)]
pub struct InterestTable {
    /// Node names by index.
    nodes: Vec<Arc<str>>,
    index: HashMap<Arc<str>, usize>,
    root: Level,
    /// Bucket key -> (node index, filter as written), for deletions (which carry only the
    /// key).
    by_key: HashMap<String, (usize, String)>,
    /// Keys per node and topic filter (a plain filter and shared ones on the same topics are
    /// one topic filter).
    counts: HashMap<(usize, String), u32>,
}

impl InterestTable {
    fn node_index(&mut self, node: &str) -> usize {
        if let Some(&i) = self.index.get(node) {
            return i;
        }
        let name: Arc<str> = node.into();
        self.nodes.push(Arc::clone(&name));
        self.index.insert(name, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// The bucket says `key` (of `node`) holds `filter`. False when that was known already.
    pub fn put(&mut self, key: &str, node: &str, filter: &str) -> bool {
        if self.by_key.get(key).is_some_and(|(_, f)| f == filter) {
            return false;
        }
        self.delete(key);
        let Some(topics) = routing_filter(filter) else {
            return false;
        };
        let i = self.node_index(node);
        self.by_key.insert(key.to_owned(), (i, filter.to_owned()));
        let count = self.counts.entry((i, topics.to_owned())).or_default();
        *count += 1;
        if *count == 1 {
            let levels: Vec<&str> = topics.split('/').collect();
            self.root.update(&levels, bit(i), true);
        }
        true
    }

    /// The bucket no longer holds `key`: its node and filter, if it was known.
    pub fn delete(&mut self, key: &str) -> Option<(Arc<str>, String)> {
        let (i, written) = self.by_key.remove(key)?;
        let removed = self.nodes.get(i).map(|n| (Arc::clone(n), written.clone()));
        let filter = routing_filter(&written).unwrap_or_default().to_owned();
        self.forget(i, filter);
        removed
    }

    /// One key less of node `i` for topic filter `filter`.
    fn forget(&mut self, i: usize, filter: String) {
        let entry = (i, filter);
        let Some(count) = self.counts.get_mut(&entry) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.counts.remove(&entry);
        let (i, filter) = entry;
        // A node sharing the overflow bit keeps it while any of those nodes wants the filter.
        if i >= BITS - 1
            && self
                .counts
                .keys()
                .any(|(j, f)| *j >= BITS - 1 && *f == filter)
        {
            return;
        }
        let levels: Vec<&str> = filter.split('/').collect();
        self.root.update(&levels, bit(i), false);
    }

    /// The nodes with a subscription matching `topic`, `except` left out, in `out`.
    pub fn nodes_for(&self, topic: &str, except: &str, out: &mut Vec<Arc<str>>) {
        out.clear();
        let levels: Vec<&str> = topic.split('/').collect();
        let set = self.root.matching(&levels, topic.starts_with('$'));
        if set == 0 {
            return;
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if set & bit(i) != 0 && &**node != except {
                out.push(Arc::clone(node));
            }
        }
    }

    /// Whether any node has a subscription matching `topic`.
    pub fn any(&self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        self.root.matching(&levels, topic.starts_with('$')) != 0
    }

    /// Filters known, over all nodes.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no node wants anything.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use culex_proto::topic::matches;

    fn nodes(t: &InterestTable, topic: &str, except: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.nodes_for(topic, except, &mut out);
        let mut out: Vec<String> = out.iter().map(|n| n.to_string()).collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn keys_name_their_node_and_differ_per_filter() {
        let k = key("node-1", "a/+/#");
        assert_eq!(node_of_key(&k), Some("node-1"));
        assert_eq!(k, key("node-1", "a/+/#"), "stable");
        assert_ne!(k, key("node-1", "a/+"));
        assert!(
            k.len() < 64
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        );
        assert_eq!(routing_filter("$share/g/a/#"), Some("a/#"));
        assert_eq!(routing_filter("a/#"), Some("a/#"));
    }

    #[test]
    fn agrees_with_mqtt_matching_on_every_pair() {
        let filters = [
            "#", "+", "a", "a/#", "a/+", "+/b", "a/b", "a//c", "+/+", "a/+/c", "$SYS/#", "$SYS/+",
            "+/#", "/", "/+", "$x", "", "a/b/#",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "a//c", "b", "/", "/x", "$SYS/x", "$SYS", "$x", "x/b", "a/c", "",
            "a/", "$SYS/x/y",
        ];
        for filter in filters {
            let mut t = InterestTable::default();
            t.put(&key("n", filter), "n", filter);
            for topic in topics {
                let want = matches(filter, topic);
                assert_eq!(
                    !nodes(&t, topic, "").is_empty(),
                    want,
                    "{filter} vs {topic}"
                );
                assert_eq!(t.any(topic), want, "{filter} vs {topic}");
            }
            t.delete(&key("n", filter));
            assert!(t.root.is_empty(), "{filter}: emptied");
        }
    }

    #[test]
    fn each_node_gets_what_it_asked_for_until_it_stops_asking() {
        let mut t = InterestTable::default();
        t.put(&key("a", "x/#"), "a", "x/#");
        t.put(&key("b", "x/1"), "b", "x/1");
        t.put(&key("c", "y"), "c", "y");
        assert_eq!(nodes(&t, "x/1", ""), ["a", "b"]);
        assert_eq!(nodes(&t, "x/1", "a"), ["b"], "the asking node left out");
        assert_eq!(nodes(&t, "x/2", ""), ["a"]);
        assert_eq!(nodes(&t, "y", ""), ["c"]);
        assert!(nodes(&t, "z", "").is_empty());
        t.delete(&key("a", "x/#"));
        assert_eq!(nodes(&t, "x/1", ""), ["b"]);
        t.delete(&key("a", "x/#"));
        t.delete(&key("b", "x/1"));
        assert!(nodes(&t, "x/1", "").is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_shared_filter_routes_by_its_topics_beside_a_plain_one() {
        let mut t = InterestTable::default();
        assert!(t.put(&key("a", "x/+"), "a", "x/+"));
        assert!(t.put(&key("a", "$share/g/x/+"), "a", "$share/g/x/+"));
        assert!(!t.put(&key("a", "x/+"), "a", "x/+"), "known already");
        assert_eq!(nodes(&t, "x/1", ""), ["a"]);
        assert_eq!(
            t.delete(&key("a", "x/+")).map(|(n, f)| (n.to_string(), f)),
            Some(("a".to_owned(), "x/+".to_owned()))
        );
        assert_eq!(
            nodes(&t, "x/1", ""),
            ["a"],
            "the shared one still wants x/+"
        );
        t.delete(&key("a", "$share/g/x/+"));
        assert!(nodes(&t, "x/1", "").is_empty());
        assert!(
            !t.put(&key("a", "$share//x"), "a", "$share//x"),
            "not a filter"
        );
    }

    #[test]
    fn more_nodes_than_bits_over_deliver_but_never_miss() {
        let mut t = InterestTable::default();
        for i in 0..70 {
            let n = format!("n{i}");
            t.put(&key(&n, &format!("t/{i}")), &n, &format!("t/{i}"));
        }
        for i in 0..70 {
            let got = nodes(&t, &format!("t/{i}"), "");
            assert!(got.contains(&format!("n{i}")), "{i}: {got:?}");
            if i < 63 {
                assert_eq!(got.len(), 1);
            }
        }
        t.delete(&key("n65", "t/65"));
        assert!(nodes(&t, "t/66", "").contains(&"n66".to_owned()));
    }
}
