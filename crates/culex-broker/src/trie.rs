//! Subscription tree: routes a topic name to the subscriptions whose filters match it.
//!
//! Filters are stored in a trie with one edge per topic level. Each node has a map of literal
//! children plus dedicated `+` and `#` children, the direct subscribers of the filter ending
//! there, and its shared subscription groups. Matching a topic walks only the branches the topic
//! can reach (the literal child and the `+` child at each level, and any `#` child on the way),
//! so its cost grows with topic depth and the number of matching wildcard branches, never with
//! the total number of subscriptions.
//!
//! Nodes live in an arena and are addressed by index, with a parent link each. Nothing is
//! recursive: insert, remove and match all iterate, so a topic or filter with tens of thousands
//! of levels cannot exhaust the stack. Matching reuses a traversal stack kept in the tree, so it
//! allocates nothing beyond what it appends to the caller's vector (and the clones of `V`).
//! Empty nodes are pruned on removal and their slots reused; when the tree becomes empty the
//! arena is released.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::mem;

use culex_proto::topic::parse_shared;

/// Arena index of the root node, which stands for no level at all.
const ROOT: usize = 0;

/// One level of the trie.
struct Node<K, V> {
    /// Arena index of the parent (the root is its own parent).
    parent: usize,
    /// Children reached by a literal level.
    children: HashMap<Box<str>, usize>,
    /// Child reached by a `+` level.
    plus: Option<usize>,
    /// Child reached by a `#` level.
    hash: Option<usize>,
    /// Non-shared subscriptions whose filter ends at this node.
    direct: HashMap<K, V>,
    /// Shared subscription groups whose filter ends at this node, by ShareName.
    shared: HashMap<Box<str>, Group<K, V>>,
}

impl<K, V> Node<K, V> {
    fn new(parent: usize) -> Self {
        Node {
            parent,
            children: HashMap::new(),
            plus: None,
            hash: None,
            direct: HashMap::new(),
            shared: HashMap::new(),
        }
    }

    /// True when the node holds no subscription and has no child, so it can be pruned.
    fn is_empty(&self) -> bool {
        self.direct.is_empty()
            && self.shared.is_empty()
            && self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
    }

    /// The child reached by `level`, if any.
    fn child(&self, level: &str) -> Option<usize> {
        match level {
            "+" => self.plus,
            "#" => self.hash,
            _ => self.children.get(level).copied(),
        }
    }

    /// Links `child` as the child reached by `level`.
    fn set_child(&mut self, level: &str, child: usize) {
        match level {
            "+" => self.plus = Some(child),
            "#" => self.hash = Some(child),
            _ => {
                self.children.insert(level.into(), child);
            }
        }
    }

    /// Unlinks the child reached by `level`.
    fn unset_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
    }
}

/// The members of one shared subscription group on one filter, in subscription order, with the
/// round-robin cursor.
struct Group<K, V> {
    /// The full filter, `$share/{group}/{filter}`: the group's name across a cluster.
    id: Box<str>,
    members: Vec<(K, V)>,
    /// Index of the member to try first on the next message.
    next: usize,
}

impl<K: Copy + Eq, V> Group<K, V> {
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.members.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(mem::replace(v, value)),
            None => {
                self.members.push((key, value));
                None
            }
        }
    }

    fn remove(&mut self, key: K) -> Option<V> {
        let index = self.members.iter().position(|(k, _)| *k == key)?;
        let (_, value) = self.members.remove(index);
        if index < self.next {
            self.next -= 1;
        }
        Some(value)
    }

    /// Picks the next member in round-robin order for which `eligible` holds, or simply the
    /// next member if none does, and advances the cursor past it.
    fn pick(&mut self, eligible: &impl Fn(K) -> bool) -> Option<&(K, V)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        let chosen = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.members.get(i).is_some_and(|(k, _)| eligible(*k)))
            .unwrap_or(start);
        self.next = (chosen + 1) % n;
        self.members.get(chosen)
    }
}

/// Splits a stored filter into its shared group (if any) and the filter proper.
///
/// A filter that begins with `$share/` but is not a well-formed shared filter is taken as an
/// ordinary filter (callers validate first, so this does not happen in practice).
fn split_filter(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Ok(Some(shared)) => (Some(shared.group), shared.filter),
        _ => (None, filter),
    }
}

/// The first level of `rest` and the position of the level after it (`pos` is where `rest`
/// starts in the whole string).
fn next_level(rest: &str, pos: usize) -> (&str, usize) {
    let level = rest.split_once('/').map_or(rest, |(level, _)| level);
    (level, pos + level.len() + 1)
}

/// Subscriptions indexed by topic filter, for routing published messages.
///
/// `K` identifies a subscriber (the broker uses a small session id) and `V` is what is stored
/// per subscription (subscription options and identifier), cloned into match results.
///
/// Each (filter, key) pair is one subscription. A filter of the form `$share/{group}/{filter}`
/// is a membership of `key` in the shared group `group` on `filter`; it is separate from a direct
/// subscription of the same key to `filter` and from memberships in other groups.
pub struct SubscriptionTree<K, V> {
    /// Arena of nodes; index 0 is the root. Free slots hold empty nodes and are listed in `free`.
    nodes: Vec<Node<K, V>>,
    /// Free arena slots, reused before the arena grows.
    free: Vec<usize>,
    /// Traversal stack reused by [`SubscriptionTree::matches`]: (node, position in the topic of
    /// the next level to consume, past the end when all levels are consumed).
    stack: Vec<(usize, usize)>,
    /// Number of subscriptions, direct and shared.
    len: usize,
    /// Number of shared memberships.
    shared_len: usize,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        SubscriptionTree {
            nodes: vec![Node::new(ROOT)],
            free: Vec::new(),
            stack: Vec::new(),
            len: 0,
            shared_len: 0,
        }
    }
}

impl<K, V> fmt::Debug for SubscriptionTree<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("len", &self.len)
            .field("shared_len", &self.shared_len)
            .field("nodes", &self.node_count())
            .finish()
    }
}

impl<K, V> SubscriptionTree<K, V> {
    /// Number of subscriptions: direct subscriptions plus shared memberships.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of shared memberships.
    pub fn shared_len(&self) -> usize {
        self.shared_len
    }

    /// The shared groups that have members, by full filter (`$share/{group}/{filter}`).
    pub fn shared_groups(&self) -> Vec<String> {
        if self.shared_len == 0 {
            return Vec::new();
        }
        self.nodes
            .iter()
            .flat_map(|n| n.shared.values())
            .filter(|g| !g.members.is_empty())
            .map(|g| g.id.to_string())
            .collect()
    }

    /// True when there is no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes in use, the root excepted (for diagnostics and memory accounting);
    /// zero when the tree is empty.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - 1 - self.free.len()
    }
}

impl<K: Copy + Eq + Hash, V: Clone> SubscriptionTree<K, V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the subscription of `key` to `filter`, or replaces its value if it exists; returns
    /// the previous value when it replaced one.
    ///
    /// `filter` must be valid (see `culex_proto::topic::validate_topic_filter`). If it has the
    /// form `$share/{group}/{filter}` it is a membership of `key` in the shared group `group`,
    /// parsed with `culex_proto::topic::parse_shared`; new members join the end of the group's
    /// round-robin order.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let full = filter;
        let (group, filter) = split_filter(filter);
        let mut cur = ROOT;
        for level in filter.split('/') {
            cur = match self.nodes[cur].child(level) {
                Some(child) => child,
                None => {
                    let child = self.alloc(cur);
                    self.nodes[cur].set_child(level, child);
                    child
                }
            };
        }
        let node = &mut self.nodes[cur];
        let previous = match group {
            None => node.direct.insert(key, value),
            Some(group) => {
                if let Some(members) = node.shared.get_mut(group) {
                    members.insert(key, value)
                } else {
                    let members = Group {
                        id: full.into(),
                        members: vec![(key, value)],
                        next: 0,
                    };
                    node.shared.insert(group.into(), members);
                    None
                }
            }
        };
        if previous.is_none() {
            self.len += 1;
            if group.is_some() {
                self.shared_len += 1;
            }
        }
        previous
    }

    /// Removes the subscription of `key` to `filter` (written as it was inserted, `$share/`
    /// prefix included for a shared membership); returns its value, or `None` if there was no
    /// such subscription. Nodes left empty are pruned.
    pub fn remove(&mut self, filter: &str, key: K) -> Option<V> {
        let (group, filter) = split_filter(filter);
        let mut cur = ROOT;
        for level in filter.split('/') {
            cur = self.nodes[cur].child(level)?;
        }
        let node = &mut self.nodes[cur];
        let removed = match group {
            None => node.direct.remove(&key)?,
            Some(group) => {
                let members = node.shared.get_mut(group)?;
                let removed = members.remove(key)?;
                if members.members.is_empty() {
                    node.shared.remove(group);
                }
                self.shared_len -= 1;
                removed
            }
        };
        self.len -= 1;
        self.prune(cur, filter);
        Some(removed)
    }

    /// Appends to `out` every subscription whose filter matches the topic name `topic`:
    ///
    /// * every direct subscription, as `(key, value)`; a key appears once per matching filter,
    ///   so the caller merges duplicates (MQTT 5 3.3.4: one delivery, with every matching
    ///   subscription identifier);
    /// * for every matching shared group (one group on one filter) for which `take(group)`
    ///   holds (`group` is its full filter, `$share/{group}/{filter}`), a single member chosen
    ///   round-robin among the members for which `eligible(key)` is true, or round-robin over
    ///   all members if none is eligible.
    ///
    /// A topic beginning with `$` is not matched by a wildcard in the first level
    /// [MQTT-4.7.2-1]. Results are in no particular order.
    pub fn matches(
        &mut self,
        topic: &str,
        eligible: impl Fn(K) -> bool,
        take: impl Fn(&str) -> bool,
        out: &mut Vec<(K, V)>,
    ) {
        let dollar = topic.starts_with('$');
        let Self { nodes, stack, .. } = self;
        stack.clear();
        stack.push((ROOT, 0));
        while let Some((index, pos)) = stack.pop() {
            // Wildcards at the first level do not match topics beginning with '$'.
            let wildcards = pos != 0 || !dollar;
            // A '#' child matches the remaining levels, whatever they are, and the parent level.
            if wildcards {
                if let Some(hash) = nodes[index].hash {
                    emit(&mut nodes[hash], &eligible, &take, out);
                }
            }
            match topic.get(pos..) {
                // Every level consumed: the filters ending here match.
                None => emit(&mut nodes[index], &eligible, &take, out),
                Some(rest) => {
                    let (level, next) = next_level(rest, pos);
                    let node = &nodes[index];
                    if let Some(&child) = node.children.get(level) {
                        stack.push((child, next));
                    }
                    if wildcards {
                        if let Some(plus) = node.plus {
                            stack.push((plus, next));
                        }
                    }
                }
            }
        }
    }

    /// A fresh node under `parent`, in a free slot if there is one.
    fn alloc(&mut self, parent: usize) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.nodes[index].parent = parent;
                index
            }
            None => {
                self.nodes.push(Node::new(parent));
                self.nodes.len() - 1
            }
        }
    }

    /// Prunes `index`, the node where `filter` ends, and its ancestors as long as they are
    /// empty. Releases the arena when the tree is empty.
    fn prune(&mut self, mut index: usize, filter: &str) {
        for level in filter.rsplit('/') {
            let node = &self.nodes[index];
            if index == ROOT || !node.is_empty() {
                break;
            }
            let parent = node.parent;
            self.nodes[parent].unset_child(level);
            // Drop the maps' storage; the slot keeps an empty node until reused.
            self.nodes[index] = Node::new(ROOT);
            self.free.push(index);
            index = parent;
        }
        if self.len == 0 {
            *self = Self::default();
        }
    }
}

/// Appends the subscriptions of the filter ending at `node`: all direct ones, and one member
/// of each shared group.
fn emit<K: Copy + Eq, V: Clone>(
    node: &mut Node<K, V>,
    eligible: &impl Fn(K) -> bool,
    take: &impl Fn(&str) -> bool,
    out: &mut Vec<(K, V)>,
) {
    out.extend(node.direct.iter().map(|(k, v)| (*k, v.clone())));
    for group in node.shared.values_mut() {
        if !take(&group.id) {
            continue;
        }
        if let Some((k, v)) = group.pick(eligible) {
            out.push((*k, v.clone()));
        }
    }
}
