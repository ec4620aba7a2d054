//! The Prometheus exposition, from the table of metric families in [`families`].
//!
//! The hot path keeps plain relaxed atomics ([`Counters`]) and the router keeps its own
//! [`RouterStats`](culex_broker::RouterStats); nothing here runs per message. At scrape time
//! the endpoint takes one [`Sample`] (the counters beside a router snapshot) and writes every
//! family's series into a per-server `metrics` recorder with `absolute`/`set`, then renders the
//! Prometheus text. There is no global recorder, so many brokers can run in one process
//! (tests). The `$SYS` publisher reads the same families from the same kind of [`Sample`], so
//! both report the same numbers, and docs/metrics.md's tables are made from the same table.
//!
//! One family is written by hand after the recorder's text: the store's commit-duration
//! histogram ([`STORE_COMMIT_DURATION`]). The store's writer thread counts each commit into
//! fixed buckets (plain atomics, constant memory), and a `metrics` histogram can only be
//! built from individual observations, which the recorder would hold until the next scrape
//! (without bound, if nothing scrapes).

use std::sync::Arc;

use culex_broker::RouterSnapshot;
use culex_store::{StoreStats, COMMIT_BUCKET_BOUNDS};
use metrics::{describe_counter, describe_gauge, Label};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::counters::Counters;

pub(crate) mod families;

use families::Kind;

/// Histogram of store commit durations (`_bucket`, `_sum`, `_count`).
pub const STORE_COMMIT_DURATION: &str = "culex_store_commit_duration_seconds";
/// The `# HELP` text of [`STORE_COMMIT_DURATION`].
const STORE_COMMIT_DURATION_HELP: &str =
    "Duration of store commits (encode, write, and fsync when durable), in seconds.";

/// Everything the metrics and `$SYS` report, at one moment: the live counters, a router
/// snapshot, and what only the endpoint knows.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The connection tasks' counters (and the bridges' and store's statistics).
    pub counters: Arc<Counters>,
    /// The router's part.
    pub router: RouterSnapshot,
    /// The endpoint's part (zero for `$SYS`, which does not report it).
    pub extra: Extra,
}

impl Sample {
    /// The counters beside a router snapshot.
    pub fn new(counters: Arc<Counters>, router: RouterSnapshot) -> Sample {
        Sample {
            counters,
            router,
            extra: Extra::default(),
        }
    }

    /// Messages held: retained, queued and in flight (`$SYS/broker/messages/stored`).
    pub fn stored_messages(&self) -> u64 {
        self.router.retained_count + self.router.queued + self.router.inflight
    }

    /// Bytes of the held messages: retained payloads and queued topic + payload.
    pub fn stored_bytes(&self) -> u64 {
        self.router.retained_bytes + self.router.queued_bytes
    }
}

/// What a scrape reports besides the counters and the router.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra {
    /// Commands waiting in the router's channel.
    pub router_queue_depth: u64,
    /// Capacity of the router's channel.
    pub router_queue_capacity: u64,
    /// Seconds since start.
    pub uptime_seconds: f64,
}

/// A per-server Prometheus recorder with every metric described.
pub(crate) struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// A recorder of its own (not installed globally), with every metric described.
    ///
    /// The process metrics keep their standard unprefixed names (`process_cpu_seconds_total`,
    /// `process_resident_memory_bytes`, `process_open_fds`, ...), as every Prometheus client
    /// library exports them, so existing dashboards and alerts on them work unchanged.
    pub(crate) fn new() -> Exporter {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || {
            describe();
            process.describe();
        });
        Exporter {
            recorder,
            handle,
            process,
        }
    }

    /// Writes `sample` into the recorder and renders the Prometheus text format.
    pub(crate) fn render(&self, sample: &Sample) -> String {
        metrics::with_local_recorder(&self.recorder, || {
            record(sample);
            self.process.collect();
        });
        let mut text = self.handle.render();
        if let Some(reader) = sample.counters.store.get() {
            write_commit_histogram(&mut text, &reader.stats());
        }
        text
    }
}

/// Appends [`STORE_COMMIT_DURATION`] as a Prometheus histogram: cumulative `_bucket` series
/// with the bounds of [`COMMIT_BUCKET_BOUNDS`] and `+Inf`, then `_sum` and `_count`.
fn write_commit_histogram(out: &mut String, st: &StoreStats) {
    use std::fmt::Write as _;
    let name = STORE_COMMIT_DURATION;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {STORE_COMMIT_DURATION_HELP}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative: u64 = 0;
    for (bound, n) in COMMIT_BUCKET_BOUNDS.iter().zip(st.commit_buckets) {
        cumulative = cumulative.saturating_add(n);
        let le = bound.as_secs_f64();
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let count = st
        .commit_buckets
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(*n));
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", st.total_latency_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count {count}");
    out.push('\n');
}

/// Describes every family to the current recorder.
fn describe() {
    for f in families::all() {
        match (f.kind, f.unit) {
            (Kind::Counter, Some(unit)) => describe_counter!(f.name, unit, f.help),
            (Kind::Counter, None) => describe_counter!(f.name, f.help),
            (Kind::Gauge, Some(unit)) => describe_gauge!(f.name, unit, f.help),
            (Kind::Gauge, None) => describe_gauge!(f.name, f.help),
            (Kind::Histogram, _) => {}
        }
    }
}

/// Writes every family's series in `sample` into the current recorder.
fn record(sample: &Sample) {
    for f in families::all() {
        (f.read)(sample, &mut |labels, value| {
            let labels: Vec<Label> = labels
                .iter()
                .map(|(k, v)| Label::new(*k, v.to_string()))
                .collect();
            match f.kind {
                Kind::Counter => metrics::counter!(f.name, labels).absolute(value as u64),
                Kind::Gauge => metrics::gauge!(f.name, labels).set(value),
                Kind::Histogram => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_histogram_is_cumulative_and_ends_with_inf_sum_and_count() {
        let mut st = StoreStats {
            total_latency_ns: 1_500_000_000,
            ..StoreStats::default()
        };
        st.commit_buckets[0] = 2; // <= 100 µs
        st.commit_buckets[3] = 1; // <= 1 ms
        st.commit_buckets[COMMIT_BUCKET_BOUNDS.len()] = 1; // > 10 s
        let mut text = String::from("culex_x 1\n");
        write_commit_histogram(&mut text, &st);
        let lines: Vec<&str> = text.lines().collect();
        let name = STORE_COMMIT_DURATION;
        assert_eq!(
            lines[1],
            format!("# HELP {name} {STORE_COMMIT_DURATION_HELP}")
        );
        assert_eq!(lines[2], format!("# TYPE {name} histogram"));
        assert_eq!(lines[3], format!("{name}_bucket{{le=\"0.0001\"}} 2"));
        assert_eq!(lines[4], format!("{name}_bucket{{le=\"0.00025\"}} 2"));
        assert_eq!(lines[6], format!("{name}_bucket{{le=\"0.001\"}} 3"));
        assert_eq!(lines[15], format!("{name}_bucket{{le=\"1\"}} 3"));
        assert_eq!(lines[18], format!("{name}_bucket{{le=\"10\"}} 3"));
        assert_eq!(lines[19], format!("{name}_bucket{{le=\"+Inf\"}} 4"));
        assert_eq!(lines[20], format!("{name}_sum 1.5"));
        assert_eq!(lines[21], format!("{name}_count 4"));
    }
}
