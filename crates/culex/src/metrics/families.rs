//! Every metric family Culex exports, described once: name, kind, unit, labels, help text,
//! documentation, the `$SYS` topics that report its total, and how to read it from a
//! [`Sample`]. The Prometheus exporter, the `$SYS` tree and the tables in docs/metrics.md
//! (checked by a test) are all made from [`all`].

use std::sync::atomic::Ordering::Relaxed;

use metrics::Unit;

use super::Sample;
use crate::counters::{Refusal, PACKET_TYPES};

/// Prometheus metric kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    /// Written after the recorder's text (see `write_commit_histogram`); read here as nothing.
    Histogram,
}

#[cfg(test)]
impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Where a family is documented in docs/metrics.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    Broker,
    Bridge,
    Store,
    Cluster,
}

#[cfg(test)]
impl Group {
    /// All groups, in the order of docs/metrics.md.
    pub(crate) const ALL: [Group; 4] = [Group::Broker, Group::Bridge, Group::Store, Group::Cluster];

    /// The name in the docs' generated-block markers.
    pub(crate) fn marker(self) -> &'static str {
        match self {
            Group::Broker => "metrics-broker",
            Group::Bridge => "metrics-bridges",
            Group::Store => "metrics-store",
            Group::Cluster => "metrics-cluster",
        }
    }
}

/// Receives one series of a family: its labels and value.
pub(crate) type Emit<'e> = dyn FnMut(&[(&'static str, &str)], f64) + 'e;

/// One metric family.
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) unit: Option<Unit>,
    /// Where docs/metrics.md lists it. This, `labels` and `doc` are read only to make the
    /// docs' tables, by the test that checks them.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) group: Group,
    /// The labels and their values, as documented (Markdown); empty when none.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) labels: &'static str,
    /// The `# HELP` text.
    pub(crate) help: &'static str,
    /// The meaning in docs/metrics.md (Markdown); the help text when empty.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) doc: &'static str,
    /// `$SYS/broker/...` topics (without the prefix) that publish the family's total.
    pub(crate) sys: &'static [&'static str],
    /// Emits every series of the family in `sample` (none when it does not apply).
    pub(crate) read: fn(&Sample, &mut Emit<'_>),
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family").field("name", &self.name).finish()
    }
}

impl Family {
    /// The sum of the family's series in `sample` (what `$SYS` publishes); `None` when it has
    /// none now (the cluster's families on a single node).
    pub(crate) fn total(&self, sample: &Sample) -> Option<f64> {
        let mut sum = None;
        (self.read)(sample, &mut |_, v| *sum.get_or_insert(0.0) += v);
        sum
    }

    /// The family's row in docs/metrics.md.
    #[cfg(test)]
    fn doc_row(&self) -> String {
        let meaning = if self.doc.is_empty() {
            sentence_part(self.help)
        } else {
            self.doc.to_string()
        };
        let labels = if self.labels.is_empty() {
            String::from(" ")
        } else {
            format!(" {} ", self.labels)
        };
        format!(
            "| `{}` | {} |{labels}| {meaning} |",
            self.name,
            self.kind.as_str(),
        )
    }
}

/// A help sentence as a table cell: no final period, and a lower-case first word unless it is
/// an acronym (`MQTT bytes`, `QoS 1/2 messages`).
#[cfg(test)]
fn sentence_part(help: &str) -> String {
    let text = help.trim_end_matches('.');
    let first_word = text.split(' ').next().unwrap_or("");
    let mut chars = text.chars();
    match chars.next() {
        Some(first) if first_word.chars().skip(1).all(|c| !c.is_uppercase()) => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text.to_string(),
    }
}

/// The family named `name`.
pub(crate) fn family(name: &str) -> Option<&'static Family> {
    all().find(|f| f.name == name)
}

/// The Markdown table of `group`'s families, as between its markers in docs/metrics.md.
#[cfg(test)]
pub(crate) fn doc_table(group: Group) -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n");
    for f in all().filter(|f| f.group == group) {
        out.push_str(&f.doc_row());
        out.push('\n');
    }
    out
}

/// The Markdown rows of the `$SYS` topics that report a family's total.
#[cfg(test)]
pub(crate) fn sys_doc_rows() -> String {
    let mut out = String::from("| topic | meaning (same source as) |\n| --- | --- |\n");
    for f in all().filter(|f| !f.sys.is_empty()) {
        let topics: Vec<String> = f.sys.iter().map(|t| format!("`$SYS/broker/{t}`")).collect();
        let summed = if f.labels.is_empty() {
            format!("`{}`", f.name)
        } else {
            format!("sum of `{}`", f.name)
        };
        out.push_str(&format!(
            "| {} | {} ({summed}) |\n",
            topics.join(", "),
            sentence_part(f.help)
        ));
    }
    out
}

fn one(emit: &mut Emit<'_>, v: u64) {
    emit(&[], v as f64);
}

/// Drop reasons, the `reason` label of `culex_publish_dropped_total`, with their counts.
fn dropped(s: &Sample) -> [(&'static str, u64); 6] {
    let (c, st) = (&s.counters, &s.router.stats);
    [
        ("queue_full", st.dropped_queue_full),
        ("outbox_full", st.dropped_outbox_full),
        (
            "too_large",
            st.dropped_too_large + c.dropped_too_large.get(),
        ),
        (
            "acl_denied",
            c.acl_denied_publish.get() + st.dropped_acl_read + st.dropped_acl_will,
        ),
        ("expired", st.dropped_expired),
        ("offline_qos0", st.dropped_offline_qos0),
    ]
}

/// Emits one series per bridge from its statistics.
fn per_bridge(s: &Sample, emit: &mut Emit<'_>, value: fn(&culex_bridge::BridgeStats) -> f64) {
    for (name, st) in s.counters.bridges.snapshot() {
        emit(&[("bridge", &name)], value(&st));
    }
}

/// Emits the store's value, when persistence is on.
fn store(s: &Sample, emit: &mut Emit<'_>, value: fn(&culex_store::StoreStats) -> f64) {
    if let Some(reader) = s.counters.store.get() {
        emit(&[], value(&reader.stats()));
    }
}

fn cluster(s: &Sample, emit: &mut Emit<'_>, value: fn(&culex_cluster::ClusterStats) -> f64) {
    if let Some(stats) = s.counters.cluster.get() {
        emit(&[], value(stats));
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

const QOS_LABELS: [&str; 3] = ["0", "1", "2"];

mod bridge;
mod broker;
mod cluster;
mod store;

/// Every family, in the order of docs/metrics.md.
pub(crate) fn all() -> impl Iterator<Item = &'static Family> {
    broker::BROKER
        .iter()
        .chain(bridge::BRIDGE)
        .chain(store::STORE)
        .chain(cluster::CLUSTER)
}

#[cfg(test)]
mod tests;
