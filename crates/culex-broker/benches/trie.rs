//! Match cost of the subscription tree and the retained store with 10k and 100k entries.
//!
//! Run with `cargo bench -p culex-broker --bench trie`.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use culex_broker::retained::RetainedStore;
use culex_broker::trie::SubscriptionTree;

/// A tree of `n` subscriptions shaped like a fleet of devices: per-device exact and wildcard
/// filters, per-site wildcards, a few global wildcards and a shared group.
fn tree(n: u32) -> SubscriptionTree<u32, u8> {
    let mut tree = SubscriptionTree::new();
    let mut key = 0;
    while key < n {
        let device = key / 4;
        let site = device % 100;
        let filter = match key % 4 {
            0 => format!("site/{site}/device/{device}/telemetry/temp"),
            1 => format!("site/{site}/device/{device}/cmd/#"),
            2 => format!("site/{site}/device/+/telemetry/{}", device % 10),
            _ => format!("$share/workers/site/{site}/device/+/alerts"),
        };
        tree.insert(&filter, key, 1);
        key += 1;
    }
    tree.insert("#", n, 0);
    tree.insert("site/+/device/+/telemetry/+", n + 1, 0);
    tree.insert("$SYS/#", n + 2, 0);
    tree
}

fn bench_trie(c: &mut Criterion) {
    let mut group = c.benchmark_group("trie_matches");
    for n in [10_000u32, 100_000] {
        let mut tree = tree(n);
        let mut out = Vec::with_capacity(64);
        for topic in [
            "site/42/device/1042/telemetry/temp",
            "site/42/device/1042/cmd/reboot/now",
            "site/42/device/1042/alerts",
            "unrelated/topic/with/levels",
            "$SYS/broker/load",
        ] {
            group.bench_with_input(BenchmarkId::new(topic, n), &topic, |b, topic| {
                b.iter(|| {
                    out.clear();
                    tree.matches(black_box(topic), |_| true, |_| true, &mut out);
                    black_box(out.len())
                })
            });
        }
        group.bench_function(BenchmarkId::new("insert+remove", n), |b| {
            b.iter(|| {
                tree.insert("site/7/device/999999/telemetry/+", u32::MAX, 1);
                tree.remove("site/7/device/999999/telemetry/+", u32::MAX)
            })
        });
    }
    group.finish();
}

fn bench_retained(c: &mut Criterion) {
    let mut group = c.benchmark_group("retained_matching");
    for n in [10_000u32, 100_000] {
        let mut store = RetainedStore::new();
        for i in 0..n {
            store.insert(&format!("site/{}/device/{i}/status", i % 100), i);
        }
        let mut out = Vec::with_capacity(n as usize);
        for filter in [
            "site/42/device/1042/status",
            "site/42/device/+/status",
            "site/+/device/1042/status",
        ] {
            group.bench_with_input(BenchmarkId::new(filter, n), &filter, |b, filter| {
                b.iter(|| {
                    out.clear();
                    store.matching(black_box(filter), &mut out);
                    black_box(out.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_trie, bench_retained);
criterion_main!(benches);
