//! Tests of the retained message store against the `culex_proto::topic::matches` oracle.

use std::collections::BTreeMap;

use culex_broker::retained::RetainedStore;
use culex_proto::topic::{matches, validate_topic_filter, validate_topic_name};
use proptest::prelude::*;

/// The topics retained in `store` that match `filter`, sorted (values are their topics).
fn matching(store: &RetainedStore<String>, filter: &str) -> Vec<String> {
    let mut out = Vec::new();
    store.matching(filter, &mut out);
    let mut topics: Vec<String> = out.into_iter().cloned().collect();
    topics.sort();
    topics
}

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
    "a/$x",
    "$SYS",
    "$SYS/x",
    "$SYS/monitor/Clients",
    "$SYS/monitor/Other",
    "x/monitor/Clients",
    "$",
    "a$/x",
];

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
    "$SYS",
    "$",
    "a//b",
    "a/+/b",
    "a/+",
    "a/#",
    "/",
    "//",
    "/finance",
    "nothing/#",
];

fn store_of(topics: &[&str]) -> RetainedStore<String> {
    let mut store = RetainedStore::new();
    for topic in topics {
        assert!(validate_topic_name(topic).is_ok(), "{topic}");
        assert_eq!(store.insert(topic, topic.to_string()), None);
    }
    store
}

#[test]
fn table_agrees_with_matches() {
    let store = store_of(TOPICS);
    assert_eq!(store.len(), TOPICS.len());
    for filter in FILTERS {
        assert_eq!(validate_topic_filter(filter), Ok(()), "{filter}");
        let mut expected: Vec<String> = TOPICS
            .iter()
            .filter(|t| matches(filter, t))
            .map(|t| t.to_string())
            .collect();
        expected.sort();
        assert_eq!(matching(&store, filter), expected, "filter {filter:?}");
    }
}

#[test]
fn dollar_topics() {
    let store = store_of(&["$SYS/x", "$SYS/monitor/Clients", "a", "b/$SYS"]);
    assert_eq!(matching(&store, "#"), vec!["a", "b/$SYS"]);
    assert_eq!(matching(&store, "+/monitor/Clients"), Vec::<String>::new());
    assert_eq!(
        matching(&store, "$SYS/#"),
        vec!["$SYS/monitor/Clients", "$SYS/x"]
    );
    assert_eq!(matching(&store, "$SYS/+"), vec!["$SYS/x"]);
    assert_eq!(matching(&store, "+/+"), vec!["b/$SYS"]);
}

#[test]
fn insert_get_replace_remove() {
    let mut store = RetainedStore::new();
    assert!(store.is_empty());
    assert_eq!(store.insert("a/b", 1), None);
    assert_eq!(store.insert("a/b", 2), Some(1));
    assert_eq!(store.insert("a", 3), None);
    assert_eq!(store.len(), 2);
    assert_eq!(store.get("a/b"), Some(&2));
    assert_eq!(store.get("a"), Some(&3));
    assert_eq!(store.get("a/b/c"), None);
    assert_eq!(store.get("b"), None);
    assert_eq!(store.remove("a"), Some(3));
    assert_eq!(store.remove("a"), None);
    assert_eq!(store.get("a/b"), Some(&2));
    // "a" still has a child, so only "a/b" removal prunes everything.
    assert_eq!(store.node_count(), 2);
    assert_eq!(store.remove("a/b/c"), None);
    assert_eq!(store.remove("a/b"), Some(2));
    assert!(store.is_empty());
    assert_eq!(store.node_count(), 0);
}

#[test]
fn retain_sees_topics_and_prunes() {
    let mut store = store_of(TOPICS);
    let mut seen = Vec::new();
    store.retain(|topic, value| {
        assert_eq!(topic, value);
        seen.push(topic.to_string());
        !topic.starts_with("sport")
    });
    seen.sort();
    let mut all: Vec<String> = TOPICS.iter().map(|t| t.to_string()).collect();
    all.sort();
    assert_eq!(seen, all);
    let kept: Vec<&str> = TOPICS
        .iter()
        .copied()
        .filter(|t| !t.starts_with("sport"))
        .collect();
    assert_eq!(store.len(), kept.len());
    assert_eq!(store.node_count(), store_of(&kept).node_count());
    assert_eq!(matching(&store, "sport/#"), Vec::<String>::new());
    store.retain(|_, _| false);
    assert!(store.is_empty());
    assert_eq!(store.node_count(), 0);
    // Still usable afterwards.
    store.insert("x", "x".to_string());
    assert_eq!(matching(&store, "#"), vec!["x"]);
}

#[test]
fn very_deep_topics_do_not_overflow_the_stack() {
    let depth = 30_000;
    let topic = vec!["a"; depth].join("/");
    let plus = vec!["+"; depth].join("/");
    let mut store = RetainedStore::new();
    store.insert(&topic, 1);
    store.insert("a", 2);
    let mut out = Vec::new();
    store.matching("#", &mut out);
    out.sort_unstable();
    assert_eq!(out, vec![&1, &2]);
    out.clear();
    store.matching(&plus, &mut out);
    assert_eq!(out, vec![&1]);
    store.retain(|_, v| *v == 2);
    assert_eq!(store.node_count(), 1);
    assert_eq!(store.remove("a"), Some(2));
    assert_eq!(store.node_count(), 0);
}

// ---- property tests ----

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "$x", ""]), 1..5)
        .prop_map(|v| v.join("/"))
        .prop_filter("names are non-empty", |s| !s.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "$x", "", "+"]), 1..5),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash {
                let last = levels.len() - 1;
                levels[last] = "#";
            }
            levels.join("/")
        })
        .prop_filter("filters are non-empty", |s| !s.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn store_agrees_with_brute_force(
        ops in prop::collection::vec((topic(), any::<bool>()), 0..40),
        filters in prop::collection::vec(filter(), 1..8),
        cutoff in 0usize..40,
    ) {
        let mut store = RetainedStore::new();
        let mut model: BTreeMap<String, usize> = BTreeMap::new();
        for (i, (topic, insert)) in ops.iter().enumerate() {
            if *insert {
                prop_assert_eq!(store.insert(topic, i), model.insert(topic.clone(), i));
            } else {
                prop_assert_eq!(store.remove(topic), model.remove(topic));
            }
            prop_assert_eq!(store.len(), model.len());
            prop_assert_eq!(store.get(topic), model.get(topic));
        }
        for filter in &filters {
            prop_assert_eq!(validate_topic_filter(filter), Ok(()));
            let mut out = Vec::new();
            store.matching(filter, &mut out);
            let mut got: Vec<usize> = out.into_iter().copied().collect();
            got.sort_unstable();
            let mut expected: Vec<usize> = model
                .iter()
                .filter(|(t, _)| matches(filter, t))
                .map(|(_, v)| *v)
                .collect();
            expected.sort_unstable();
            prop_assert_eq!(got, expected, "filter {:?}", filter);
        }

        // retain: same survivors as the model, same shape as a store built from them.
        store.retain(|topic, v| {
            assert_eq!(model.get(topic), Some(v));
            *v < cutoff
        });
        model.retain(|_, v| *v < cutoff);
        prop_assert_eq!(store.len(), model.len());
        let mut fresh = RetainedStore::new();
        for (topic, v) in &model {
            prop_assert_eq!(store.get(topic), Some(v));
            fresh.insert(topic, *v);
        }
        prop_assert_eq!(store.node_count(), fresh.node_count());

        for topic in model.keys() {
            prop_assert!(store.remove(topic).is_some());
        }
        prop_assert!(store.is_empty());
        prop_assert_eq!(store.node_count(), 0);
    }
}
