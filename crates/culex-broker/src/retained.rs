//! Retained message store: at most one value per topic name, looked up by topic filter.
//!
//! Values are kept in a tree with one edge per topic level, so a subscription's filter is
//! matched by walking only the branches it can reach: a literal level follows one edge, `+`
//! follows every edge of its level, and `#` takes a whole subtree. Each value is stored with
//! its topic name so that [`RetainedStore::retain`] can hand it to its predicate.
//!
//! As in the subscription tree, nodes live in an arena with parent links and nothing is
//! recursive, so very deep topics cannot exhaust the stack. Empty nodes are pruned and their
//! slots reused; the arena is released when the store becomes empty.

use std::collections::HashMap;
use std::fmt;
use std::mem;

/// Arena index of the root node, which stands for no level at all.
const ROOT: usize = 0;

/// A retained value with the topic name it was published to.
struct Entry<T> {
    topic: Box<str>,
    value: T,
}

/// One level of the tree.
struct Node<T> {
    /// Arena index of the parent (the root is its own parent).
    parent: usize,
    /// Children by level.
    children: HashMap<Box<str>, usize>,
    /// The value retained on the topic that ends here.
    entry: Option<Entry<T>>,
}

impl<T> Node<T> {
    fn new(parent: usize) -> Self {
        Node {
            parent,
            children: HashMap::new(),
            entry: None,
        }
    }
}

/// Retained messages indexed by topic name.
///
/// `T` is whatever the broker retains per topic (the message, with its expiry time).
pub struct RetainedStore<T> {
    /// Arena of nodes; index 0 is the root. Free slots hold empty nodes and are listed in `free`.
    nodes: Vec<Node<T>>,
    /// Free arena slots, reused before the arena grows.
    free: Vec<usize>,
    /// Number of retained values.
    len: usize,
}

impl<T> Default for RetainedStore<T> {
    fn default() -> Self {
        RetainedStore {
            nodes: vec![Node::new(ROOT)],
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> fmt::Debug for RetainedStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.len)
            .field("nodes", &self.node_count())
            .finish()
    }
}

impl<T> RetainedStore<T> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Retains `value` on the topic name `topic` (which must be valid: no wildcards); returns
    /// the value it replaces, if any.
    ///
    /// Deleting a retained message (a retained PUBLISH with an empty payload) is
    /// [`RetainedStore::remove`], for the caller to choose.
    pub fn insert(&mut self, topic: &str, value: T) -> Option<T> {
        let mut cur = ROOT;
        for level in topic.split('/') {
            cur = match self.nodes[cur].children.get(level) {
                Some(&child) => child,
                None => {
                    let child = self.alloc(cur);
                    self.nodes[cur].children.insert(level.into(), child);
                    child
                }
            };
        }
        match &mut self.nodes[cur].entry {
            Some(entry) => Some(mem::replace(&mut entry.value, value)),
            slot @ None => {
                *slot = Some(Entry {
                    topic: topic.into(),
                    value,
                });
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value retained on `topic`, returning it. Nodes left empty are pruned.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let index = self.find(topic)?;
        let entry = self.nodes[index].entry.take()?;
        self.len -= 1;
        self.prune(index, topic);
        self.release_if_empty();
        Some(entry.value)
    }

    /// The value retained on `topic`, if any.
    pub fn get(&self, topic: &str) -> Option<&T> {
        let index = self.find(topic)?;
        self.nodes[index].entry.as_ref().map(|entry| &entry.value)
    }

    /// Appends to `out` every retained value whose topic matches the topic filter `filter`
    /// (an ordinary filter: for a shared subscription pass the part after `$share/{group}/`).
    ///
    /// A wildcard in the first level does not match topics beginning with `$` [MQTT-4.7.2-1]:
    /// `#` does not return `$SYS/...` topics, `$SYS/#` does. `sport/#` returns `sport` itself.
    /// Values are in no particular order.
    pub fn matching<'a>(&'a self, filter: &str, out: &mut Vec<&'a T>) {
        // (node, position in `filter` of the next level, past the end when all are consumed).
        let mut stack = vec![(ROOT, 0)];
        while let Some((index, pos)) = stack.pop() {
            let node = &self.nodes[index];
            let Some(rest) = filter.get(pos..) else {
                // Every level consumed: the topic ending here matches.
                if let Some(entry) = &node.entry {
                    out.push(&entry.value);
                }
                continue;
            };
            let level = rest.split_once('/').map_or(rest, |(level, _)| level);
            let next = pos + level.len() + 1;
            match level {
                "#" => self.subtree(index, out),
                "+" => stack.extend(
                    node.children
                        .iter()
                        .filter(|(level, _)| index != ROOT || !level.starts_with('$'))
                        .map(|(_, &child)| (child, next)),
                ),
                _ => {
                    if let Some(&child) = node.children.get(level) {
                        stack.push((child, next));
                    }
                }
            }
        }
    }

    /// Keeps only the values for which `keep(topic, value)` is true (for expiry sweeps), pruning
    /// the nodes left empty. Takes time proportional to the size of the store.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &T) -> bool) {
        for index in 1..self.nodes.len() {
            let Some(entry) = &self.nodes[index].entry else {
                continue;
            };
            if keep(&entry.topic, &entry.value) {
                continue;
            }
            if let Some(entry) = self.nodes[index].entry.take() {
                self.len -= 1;
                // Only empty nodes are released, so no value is skipped by the loop.
                self.prune(index, &entry.topic);
            }
        }
        self.release_if_empty();
    }

    /// Number of retained values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of tree nodes in use, the root excepted (for diagnostics and memory accounting);
    /// zero when the store is empty.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - 1 - self.free.len()
    }

    /// The node where `topic` ends, if it exists.
    fn find(&self, topic: &str) -> Option<usize> {
        topic.split('/').try_fold(ROOT, |cur, level| {
            self.nodes[cur].children.get(level).copied()
        })
    }

    /// Appends every value in the subtree of `index`, the node itself included. At the root,
    /// topics beginning with `$` are left out (a first-level `#` does not match them).
    fn subtree<'a>(&'a self, index: usize, out: &mut Vec<&'a T>) {
        let mut stack = vec![index];
        while let Some(index) = stack.pop() {
            let node = &self.nodes[index];
            if let Some(entry) = &node.entry {
                out.push(&entry.value);
            }
            stack.extend(
                node.children
                    .iter()
                    .filter(|(level, _)| index != ROOT || !level.starts_with('$'))
                    .map(|(_, &child)| child),
            );
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

    /// Prunes `index`, the node where `topic` ends, and its ancestors as long as they are
    /// empty.
    fn prune(&mut self, mut index: usize, topic: &str) {
        for level in topic.rsplit('/') {
            let node = &self.nodes[index];
            if index == ROOT || node.entry.is_some() || !node.children.is_empty() {
                break;
            }
            let parent = node.parent;
            self.nodes[parent].children.remove(level);
            self.nodes[index] = Node::new(ROOT);
            self.free.push(index);
            index = parent;
        }
    }

    /// Releases the arena if the store is empty (every node has been pruned by then).
    fn release_if_empty(&mut self) {
        if self.len == 0 {
            *self = Self::default();
        }
    }
}
