//! The JSON report: every number a run produced.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procfs::ProcSample;

/// Latency distribution in microseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct LatencySummary {
    /// Samples recorded.
    pub(crate) count: u64,
    /// Mean, µs.
    pub(crate) mean_us: f64,
    /// Median, µs.
    pub(crate) p50_us: f64,
    /// 90th percentile, µs.
    pub(crate) p90_us: f64,
    /// 99th percentile, µs.
    pub(crate) p99_us: f64,
    /// 99.9th percentile, µs.
    pub(crate) p999_us: f64,
    /// Largest sample, µs.
    pub(crate) max_us: f64,
}

impl LatencySummary {
    /// Summarises a histogram of nanoseconds.
    pub(crate) fn from_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Loss, duplicate and ordering checks, over the whole run (warm-up and drain included).
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Checks {
    /// Messages published (all publishers).
    pub(crate) published: u64,
    /// Deliveries expected: published × subscribers (or × 1 for a shared subscription).
    pub(crate) expected_deliveries: u64,
    /// Deliveries received, duplicates included.
    pub(crate) received: u64,
    /// Expected deliveries that never arrived.
    pub(crate) lost: u64,
    /// Deliveries of a message the subscriber (or the shared group) had already received.
    pub(crate) duplicates: u64,
    /// Deliveries with a lower sequence number than an earlier one from the same publisher
    /// (per subscriber).
    pub(crate) out_of_order: u64,
    /// Payloads without the generator's header (not ours).
    pub(crate) foreign: u64,
}

/// Broker usage during the measured window (needs `--broker-pid`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BrokerUsage {
    /// PID sampled.
    pub(crate) pid: u32,
    /// At the start of the measured window.
    pub(crate) start: ProcSample,
    /// At its end.
    pub(crate) end: ProcSample,
    /// CPU seconds (user + system) used in the window.
    pub(crate) cpu_seconds: f64,
    /// Broker CPU utilisation in the window (1.0 = one core).
    pub(crate) cpu_cores: f64,
    /// CPU time per delivered message, µs.
    pub(crate) cpu_us_per_delivery: Option<f64>,
    /// RSS after the drain, KiB.
    pub(crate) rss_after_drain_kib: Option<u64>,
}

/// Result of a publish/subscribe run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoadReport {
    /// `closed-loop` (saturation) or `open-loop` (fixed rate).
    pub(crate) mode: &'static str,
    /// Settings of the run.
    pub(crate) settings: serde_json::Value,
    /// Length of the measured window, seconds.
    pub(crate) measured_seconds: f64,
    /// Messages published per second in the window (all publishers).
    pub(crate) publish_rate: f64,
    /// Deliveries per second in the window (all subscribers).
    pub(crate) delivery_rate: f64,
    /// Publish → deliver latency of messages sent in the window.
    pub(crate) latency: LatencySummary,
    /// How late the open-loop sender was against its schedule (open loop only).
    pub(crate) send_lag: Option<LatencySummary>,
    /// Loss, duplicates, order.
    pub(crate) checks: Checks,
    /// Broker CPU and memory, when `--broker-pid` was given.
    pub(crate) broker: Option<BrokerUsage>,
}

/// Result of a connections run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnReport {
    /// Settings of the run.
    pub(crate) settings: serde_json::Value,
    /// Connections established (CONNACK received).
    pub(crate) connected: u64,
    /// Connection attempts that failed.
    pub(crate) failed: u64,
    /// Time to establish them all, seconds.
    pub(crate) connect_seconds: f64,
    /// Connections per second (connected / connect_seconds).
    pub(crate) connect_rate: f64,
    /// TCP connect + CONNECT → CONNACK time per connection.
    pub(crate) connect_latency: LatencySummary,
    /// Broker RSS before connecting, KiB.
    pub(crate) rss_before_kib: Option<u64>,
    /// Broker RSS with all connections idle, KiB.
    pub(crate) rss_idle_kib: Option<u64>,
    /// Broker RSS after they were closed, KiB.
    pub(crate) rss_after_close_kib: Option<u64>,
    /// (rss_idle − rss_before) / connected, bytes.
    pub(crate) rss_bytes_per_connection: Option<f64>,
    /// Broker CPU seconds spent while connecting.
    pub(crate) broker_cpu_seconds_connecting: Option<f64>,
}

/// Serialises a duration as seconds (a float).
pub(crate) fn ser_secs<S: serde::Serializer>(
    d: &std::time::Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}
