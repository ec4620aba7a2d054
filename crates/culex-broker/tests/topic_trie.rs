//! Tests of the subscription tree against the `culex_proto::topic::matches` oracle.

use std::collections::{BTreeMap, HashMap};

use culex_broker::trie::SubscriptionTree;
use culex_proto::topic::{matches, parse_shared, validate_topic_filter};
use proptest::prelude::*;

/// Direct matches of `topic`, sorted, as (key, value).
fn direct_matches(tree: &mut SubscriptionTree<u32, String>, topic: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    tree.matches(topic, |_| true, |_| true, &mut out);
    out.sort();
    out
}

/// What brute force over every (filter, key) says should match `topic`, sorted.
fn brute_force<'a>(
    subs: impl IntoIterator<Item = (&'a str, u32)>,
    topic: &str,
) -> Vec<(u32, String)> {
    let mut out: Vec<(u32, String)> = subs
        .into_iter()
        .filter(|(filter, _)| matches(filter, topic))
        .map(|(filter, key)| (key, filter.to_string()))
        .collect();
    out.sort();
    out
}

const FILTERS: &[&str] = &[
    "#",
    "+",
    "+/+",
    "/+",
    "/#",
    "+/#",
    "sport/#",
    "sport/+",
    "sport/tennis/+",
    "sport/tennis/player1/#",
    "sport/tennis/player1",
    "+/tennis/#",
    "sport/+/player1",
    "+/monitor/Clients",
    "$SYS/#",
    "$SYS/+",
    "$SYS/monitor/+",
    "$SYS/monitor/Clients",
    "a//b",
    "a/+/b",
    "/",
    "//",
    "/finance",
];

const TOPICS: &[&str] = &[
    "sport",
    "sport/",
    "sports",
    "sport/tennis",
    "sport/tennis/player1",
    "sport/tennis/player2",
    "sport/tennis/player1/ranking",
    "sport/tennis/player1/score/wimbledon",
    "sport/golf/player1",
    "/finance",
    "/",
    "//",
    "a//b",
    "a/x/b",
    "$SYS",
    "$SYS/x",
    "$SYS/monitor/Clients",
    "$SYS/monitor/Other",
    "x/monitor/Clients",
    "$",
    "a$/x",
];

#[test]
fn table_agrees_with_matches() {
    let mut tree = SubscriptionTree::new();
    for (key, filter) in FILTERS.iter().enumerate() {
        assert_eq!(validate_topic_filter(filter), Ok(()), "{filter}");
        assert_eq!(tree.insert(filter, key as u32, filter.to_string()), None);
    }
    assert_eq!(tree.len(), FILTERS.len());
    for topic in TOPICS {
        let expected = brute_force(
            FILTERS
                .iter()
                .enumerate()
                .map(|(key, filter)| (*filter, key as u32)),
            topic,
        );
        assert_eq!(
            direct_matches(&mut tree, topic),
            expected,
            "topic {topic:?}"
        );
    }
}

#[test]
fn dollar_topics_and_first_level_wildcards() {
    let mut tree = SubscriptionTree::new();
    tree.insert("#", 1u32, ());
    tree.insert("+/monitor/Clients", 2, ());
    tree.insert("$SYS/#", 3, ());
    tree.insert("$share/g/#", 4, ());
    tree.insert("$share/g/+/monitor/Clients", 5, ());
    let keys = |tree: &mut SubscriptionTree<u32, ()>, topic: &str| {
        let mut out = Vec::new();
        tree.matches(topic, |_| true, |_| true, &mut out);
        let mut keys: Vec<u32> = out.into_iter().map(|(k, ())| k).collect();
        keys.sort_unstable();
        keys
    };
    assert_eq!(keys(&mut tree, "$SYS/monitor/Clients"), vec![3]);
    assert_eq!(keys(&mut tree, "$SYS/x"), vec![3]);
    assert_eq!(keys(&mut tree, "$SYS"), vec![3]);
    assert_eq!(keys(&mut tree, "x/monitor/Clients"), vec![1, 2, 4, 5]);
    assert_eq!(keys(&mut tree, "x/$SYS"), vec![1, 4]);
}

#[test]
fn replace_returns_previous_value() {
    let mut tree = SubscriptionTree::new();
    assert_eq!(tree.insert("a/+", 1u32, 10), None);
    assert_eq!(tree.insert("a/+", 1, 11), Some(10));
    assert_eq!(tree.insert("$share/g/a/+", 1, 20), None);
    assert_eq!(tree.insert("$share/g/a/+", 1, 21), Some(20));
    assert_eq!(tree.insert("$share/h/a/+", 1, 30), None);
    assert_eq!(tree.len(), 3);
    assert_eq!(tree.shared_len(), 2);
    let mut out = Vec::new();
    tree.matches("a/b", |_| true, |_| true, &mut out);
    out.sort_unstable();
    // The direct subscription and one member of each group: the key appears three times.
    assert_eq!(out, vec![(1, 11), (1, 21), (1, 30)]);
    assert_eq!(tree.remove("$share/g/a/+", 1), Some(21));
    assert_eq!(tree.remove("$share/g/a/+", 1), None);
    assert_eq!(tree.remove("a/+", 2), None);
    assert_eq!(tree.remove("a/b", 1), None);
    assert_eq!(tree.remove("a/+", 1), Some(11));
    assert_eq!(tree.len(), 1);
    assert_eq!(tree.shared_len(), 1);
    assert_eq!(tree.remove("$share/h/a/+", 1), Some(30));
    assert!(tree.is_empty());
    assert_eq!(tree.node_count(), 0);
}

/// Delivers `n` messages to `topic` and counts how often each key is chosen.
fn deliveries(
    tree: &mut SubscriptionTree<u32, ()>,
    topic: &str,
    n: usize,
    eligible: impl Fn(u32) -> bool,
) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    let mut out = Vec::new();
    for _ in 0..n {
        out.clear();
        tree.matches(topic, &eligible, |_| true, &mut out);
        assert_eq!(out.len(), 1, "one member per group");
        for (key, ()) in &out {
            *counts.entry(*key).or_default() += 1;
        }
    }
    counts
}

#[test]
fn shared_round_robin_is_fair() {
    let mut tree = SubscriptionTree::new();
    for key in 0..3u32 {
        tree.insert("$share/workers/jobs/+", key, ());
    }
    assert_eq!(tree.shared_len(), 3);
    // Strict rotation in subscription order.
    let mut order = Vec::new();
    let mut out = Vec::new();
    for _ in 0..6 {
        out.clear();
        tree.matches("jobs/1", |_| true, |_| true, &mut out);
        order.extend(out.iter().map(|(k, ())| *k));
    }
    assert_eq!(order, vec![0, 1, 2, 0, 1, 2]);
    let counts = deliveries(&mut tree, "jobs/2", 300, |_| true);
    assert_eq!(counts, BTreeMap::from([(0, 100), (1, 100), (2, 100)]));

    // A member leaving keeps the rotation going among the rest.
    tree.remove("$share/workers/jobs/+", 1);
    let counts = deliveries(&mut tree, "jobs/3", 100, |_| true);
    assert_eq!(counts, BTreeMap::from([(0, 50), (2, 50)]));
    tree.insert("$share/workers/jobs/+", 7, ());
    let counts = deliveries(&mut tree, "jobs/3", 90, |_| true);
    assert_eq!(counts, BTreeMap::from([(0, 30), (2, 30), (7, 30)]));
}

#[test]
fn shared_groups_are_independent() {
    let mut tree = SubscriptionTree::new();
    tree.insert("$share/g1/t", 1u32, ());
    tree.insert("$share/g1/t", 2, ());
    tree.insert("$share/g2/t", 3, ());
    tree.insert("$share/g1/+", 4, ());
    tree.insert("t", 5, ());
    let mut out = Vec::new();
    for _ in 0..4 {
        out.clear();
        tree.matches("t", |_| true, |_| true, &mut out);
        let keys: Vec<u32> = out.iter().map(|(k, ())| *k).collect();
        // g1 on "t" (1 or 2), g2 on "t" (3), g1 on "+" (4: a different filter), direct 5.
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(keys.iter().filter(|k| **k == 1 || **k == 2).count(), 1);
        for k in [3, 4, 5] {
            assert!(keys.contains(&k), "{keys:?}");
        }
    }
    // "$share/g1/t" is not a subscription to the literal topic "$share/g1/t".
    out.clear();
    tree.matches("$share/g1/t", |_| true, |_| true, &mut out);
    assert!(out.is_empty());
}

#[test]
fn shared_eligibility() {
    let mut tree = SubscriptionTree::new();
    for key in 0..4u32 {
        tree.insert("$share/g/a/#", key, ());
    }
    // Only eligible members are chosen, still in rotation.
    let counts = deliveries(&mut tree, "a/b", 100, |k| k % 2 == 1);
    assert_eq!(counts, BTreeMap::from([(1, 50), (3, 50)]));
    let counts = deliveries(&mut tree, "a", 10, |k| k == 2);
    assert_eq!(counts, BTreeMap::from([(2, 10)]));
    // Nobody eligible: round-robin over everyone.
    let counts = deliveries(&mut tree, "a/c", 40, |_| false);
    assert_eq!(counts, BTreeMap::from([(0, 10), (1, 10), (2, 10), (3, 10)]));
}

#[test]
fn removing_everything_prunes_every_node() {
    let mut tree = SubscriptionTree::new();
    let mut subs = Vec::new();
    for (i, filter) in FILTERS.iter().enumerate() {
        for key in 0..3u32 {
            subs.push((filter.to_string(), key));
            subs.push((format!("$share/g{}/{filter}", i % 2), key));
        }
    }
    for round in 0..3 {
        for (filter, key) in &subs {
            assert_eq!(tree.insert(filter, *key, round), None);
        }
        assert_eq!(tree.len(), subs.len());
        assert_eq!(tree.shared_len(), subs.len() / 2);
        assert!(tree.node_count() > 0);
        // Remove half, check the node count equals that of a tree built from the rest.
        let (gone, kept) = subs.split_at(subs.len() / 2);
        for (filter, key) in gone {
            assert_eq!(tree.remove(filter, *key), Some(round));
        }
        let mut fresh = SubscriptionTree::new();
        for (filter, key) in kept {
            fresh.insert(filter, *key, round);
        }
        assert_eq!(tree.node_count(), fresh.node_count());
        for (filter, key) in kept {
            assert_eq!(tree.remove(filter, *key), Some(round));
        }
        assert!(tree.is_empty());
        assert_eq!(tree.shared_len(), 0);
        assert_eq!(tree.node_count(), 0);
    }
}

#[test]
fn very_deep_topics_do_not_overflow_the_stack() {
    let depth = 30_000;
    let literal = vec!["a"; depth].join("/");
    let plus = vec!["+"; depth].join("/");
    let mut hash = vec!["a"; depth - 1].join("/");
    hash.push_str("/#");
    let mut tree = SubscriptionTree::new();
    tree.insert(&literal, 1u32, ());
    tree.insert(&plus, 2, ());
    tree.insert(&hash, 3, ());
    tree.insert("#", 4, ());
    let mut out = Vec::new();
    tree.matches(&literal, |_| true, |_| true, &mut out);
    let mut keys: Vec<u32> = out.iter().map(|(k, ())| *k).collect();
    keys.sort_unstable();
    assert_eq!(keys, vec![1, 2, 3, 4]);
    assert_eq!(tree.remove(&literal, 1), Some(()));
    assert_eq!(tree.remove(&plus, 2), Some(()));
    assert_eq!(tree.remove(&hash, 3), Some(()));
    assert_eq!(tree.remove("#", 4), Some(()));
    assert_eq!(tree.node_count(), 0);
}

// ---- property tests ----

fn name_level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "$x", ""])
}

/// Non-empty topic names over a small alphabet, so that collisions are frequent.
fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(name_level(), 1..5)
        .prop_map(|v| v.join("/"))
        .prop_filter("names are non-empty", |s| !s.is_empty())
}

/// Valid filters over {a, b, $x, +, ""} with an optional final '#', sometimes shared.
fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "$x", "", "+"]), 1..5),
        any::<bool>(),
        prop::sample::select(vec![None, Some("g"), Some("h")]),
    )
        .prop_map(|(mut levels, hash, group)| {
            if hash {
                let last = levels.len() - 1;
                levels[last] = "#";
            }
            let filter = levels.join("/");
            match group {
                Some(group) if !filter.is_empty() => format!("$share/{group}/{filter}"),
                _ => filter,
            }
        })
        .prop_filter("filters are non-empty", |s| !s.is_empty())
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String, u32),
    Remove(String, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (filter(), 0..4u32).prop_map(|(f, k)| Op::Insert(f, k)),
        1 => (filter(), 0..4u32).prop_map(|(f, k)| Op::Remove(f, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trie_agrees_with_brute_force(
        ops in prop::collection::vec(op(), 0..40),
        topics in prop::collection::vec(topic(), 1..8),
    ) {
        let mut tree = SubscriptionTree::new();
        // Model: (filter as written, key) -> value.
        let mut model: HashMap<(String, u32), usize> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Insert(f, k) => {
                    prop_assert_eq!(validate_topic_filter(f), Ok(()));
                    prop_assert_eq!(tree.insert(f, *k, i), model.insert((f.clone(), *k), i));
                }
                Op::Remove(f, k) => {
                    prop_assert_eq!(tree.remove(f, *k), model.remove(&(f.clone(), *k)));
                }
            }
            prop_assert_eq!(tree.len(), model.len());
        }
        let shared = model.keys().filter(|(f, _)| f.starts_with("$share/")).count();
        prop_assert_eq!(tree.shared_len(), shared);

        for topic in &topics {
            let mut out = Vec::new();
            tree.matches(topic, |_| true, |_| true, &mut out);
            // Direct subscriptions: exactly the brute-force set.
            let mut expected_direct: Vec<(u32, usize)> = model
                .iter()
                .filter(|((f, _), _)| !f.starts_with("$share/") && matches(f, topic))
                .map(|((_, k), v)| (*k, *v))
                .collect();
            expected_direct.sort_unstable();
            // Shared: one member per matching (group, filter).
            let mut groups: BTreeMap<(String, String), Vec<(u32, usize)>> = BTreeMap::new();
            for ((f, k), v) in &model {
                if let Ok(Some(s)) = parse_shared(f) {
                    if matches(s.filter, topic) {
                        groups
                            .entry((s.group.to_string(), s.filter.to_string()))
                            .or_default()
                            .push((*k, *v));
                    }
                }
            }
            let mut rest = out.clone();
            rest.sort_unstable();
            for pair in &expected_direct {
                let pos = rest.iter().position(|p| p == pair);
                prop_assert!(pos.is_some(), "missing direct {:?} for {:?}", pair, topic);
                if let Some(pos) = pos {
                    rest.remove(pos);
                }
            }
            prop_assert_eq!(rest.len(), groups.len(), "topic {:?}: {:?}", topic, out);
            for members in groups.values() {
                let pos = rest.iter().position(|p| members.contains(p));
                prop_assert!(pos.is_some(), "no member of {:?} chosen", members);
                if let Some(pos) = pos {
                    rest.remove(pos);
                }
            }
        }

        // Removing everything prunes every node.
        for (f, k) in model.keys() {
            prop_assert!(tree.remove(f, *k).is_some());
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.node_count(), 0);
    }
}

#[test]
fn a_shared_group_left_to_another_node_is_skipped_and_groups_are_listed() {
    let mut tree: SubscriptionTree<u32, ()> = SubscriptionTree::new();
    tree.insert("$share/g/t/#", 1, ());
    tree.insert("$share/h/t/#", 2, ());
    tree.insert("t/#", 3, ());
    let mut groups = tree.shared_groups();
    groups.sort();
    assert_eq!(groups, vec!["$share/g/t/#", "$share/h/t/#"]);
    let mut out = Vec::new();
    tree.matches("t/x", |_| true, |group| group != "$share/g/t/#", &mut out);
    let mut keys: Vec<u32> = out.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    assert_eq!(keys, vec![2, 3], "group g is taken elsewhere");
    tree.remove("$share/h/t/#", 2);
    assert_eq!(tree.shared_groups(), vec!["$share/g/t/#"]);
}
