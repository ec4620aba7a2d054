//! Metric names, their descriptions, and the Prometheus exposition.
//!
//! The hot path keeps plain relaxed atomics ([`Counters`]) and the router keeps its own
//! [`RouterStats`](culex_broker::RouterStats); nothing here runs per message. At scrape time
//! the endpoint takes one [`Sample`] (the counters plus a router snapshot) and writes it into a
//! per-server `metrics` recorder with `absolute`/`set`, then renders the Prometheus text.
//! There is no global recorder, so many brokers can run in one process (tests). The `$SYS`
//! publisher reads the same [`Sample`], so both report the same numbers.
//!
//! One family is written by hand after the recorder's text: the store's commit-duration
//! histogram ([`STORE_COMMIT_DURATION`]). The store's writer thread counts each commit into
//! fixed buckets (plain atomics, constant memory), and a `metrics` histogram can only be
//! built from individual observations, which the recorder would hold until the next scrape
//! (without bound, if nothing scrapes).

use culex_broker::RouterSnapshot;
use culex_store::{StoreStats, COMMIT_BUCKET_BOUNDS};
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::counters::{Counters, Refusal, PACKET_TYPES};

/// Sockets open now (accepted, not yet closed).
pub const CONNECTIONS_CURRENT: &str = "culex_connections_current";
/// The configured `max_connections`; not exported when unlimited.
pub const MAX_CONNECTIONS: &str = "culex_max_connections";
/// Sockets accepted.
pub const CONNECTIONS_ACCEPTED: &str = "culex_connections_accepted_total";
/// Connections refused, label `reason`.
pub const CONNECTIONS_REFUSED: &str = "culex_connections_refused_total";
/// Successful CONNECTs.
pub const CLIENT_CONNECTS: &str = "culex_client_connects_total";
/// Clients connected now.
pub const CLIENTS_CONNECTED: &str = "culex_clients_connected";
/// Most clients connected at once since start.
pub const CLIENTS_MAXIMUM: &str = "culex_clients_maximum";
/// Sessions, connected and offline.
pub const SESSIONS: &str = "culex_sessions";
/// Persistent sessions whose client is offline.
pub const SESSIONS_OFFLINE: &str = "culex_persistent_sessions_offline";
/// Sessions ended by their expiry.
pub const SESSIONS_EXPIRED: &str = "culex_sessions_expired_total";
/// PUBLISH packets received from clients, label `qos`.
pub const MESSAGES_RECEIVED: &str = "culex_messages_received_total";
/// PUBLISH packets sent to clients, label `qos`.
pub const MESSAGES_SENT: &str = "culex_messages_sent_total";
/// Packets received, label `type`.
pub const PACKETS_RECEIVED: &str = "culex_packets_received_total";
/// Packets sent, label `type`.
pub const PACKETS_SENT: &str = "culex_packets_sent_total";
/// MQTT bytes received.
pub const BYTES_RECEIVED: &str = "culex_received_bytes_total";
/// MQTT bytes sent.
pub const BYTES_SENT: &str = "culex_sent_bytes_total";
/// PUBLISH payload bytes received.
pub const PUBLISH_BYTES_RECEIVED: &str = "culex_publish_received_bytes_total";
/// PUBLISH payload bytes sent.
pub const PUBLISH_BYTES_SENT: &str = "culex_publish_sent_bytes_total";
/// Messages dropped, label `reason`.
pub const PUBLISH_DROPPED: &str = "culex_publish_dropped_total";
/// Wills published.
pub const WILLS_PUBLISHED: &str = "culex_wills_published_total";
/// Retained messages.
pub const RETAINED_MESSAGES: &str = "culex_retained_messages";
/// Payload bytes of the retained messages.
pub const RETAINED_BYTES: &str = "culex_retained_bytes";
/// Subscriptions.
pub const SUBSCRIPTIONS: &str = "culex_subscriptions";
/// Shared-subscription memberships.
pub const SHARED_SUBSCRIPTIONS: &str = "culex_shared_subscriptions";
/// QoS 1/2 messages in flight.
pub const INFLIGHT_MESSAGES: &str = "culex_inflight_messages";
/// QoS 1/2 messages queued.
pub const QUEUED_MESSAGES: &str = "culex_queued_messages";
/// Bytes of the queued messages.
pub const QUEUED_BYTES: &str = "culex_queued_bytes";
/// Authentication failures.
pub const AUTH_FAILURES: &str = "culex_auth_failures_total";
/// Logins refused without a password check.
pub const AUTH_THROTTLED: &str = "culex_auth_throttled_total";
/// ACL denials, label `action`.
pub const ACL_DENIED: &str = "culex_acl_denied_total";
/// Configuration reloads, label `result`.
pub const CONFIG_RELOADS: &str = "culex_config_reloads_total";
/// Connections closed because a reload no longer lets their client in.
pub const CONNECTIONS_REVOKED: &str = "culex_connections_revoked_total";
/// TLS handshakes that failed.
pub const TLS_HANDSHAKE_FAILURES: &str = "culex_tls_handshake_failures_total";
/// WebSocket upgrades that failed.
pub const WEBSOCKET_HANDSHAKE_FAILURES: &str = "culex_websocket_handshake_failures_total";
/// Connections closed for protocol errors.
pub const PROTOCOL_ERRORS: &str = "culex_protocol_errors_total";
/// Commands waiting in the router's channel.
pub const ROUTER_QUEUE_DEPTH: &str = "culex_router_queue_depth";
/// Capacity of the router's channel.
pub const ROUTER_QUEUE_CAPACITY: &str = "culex_router_queue_capacity";
/// Seconds since the server started.
pub const UPTIME: &str = "culex_uptime_seconds";
/// Always 1, label `version`.
pub const BUILD_INFO: &str = "culex_build_info";
/// Store write transactions committed.
pub const STORE_COMMITS: &str = "culex_store_commits_total";
/// Store commits that were synced to disk.
pub const STORE_DURABLE_COMMITS: &str = "culex_store_durable_commits_total";
/// Changes (ops) in committed store batches.
pub const STORE_OPS: &str = "culex_store_ops_total";
/// Histogram of store commit durations (`_bucket`, `_sum`, `_count`).
pub const STORE_COMMIT_DURATION: &str = "culex_store_commit_duration_seconds";
/// The `# HELP` text of [`STORE_COMMIT_DURATION`].
const STORE_COMMIT_DURATION_HELP: &str =
    "Duration of store commits (encode, write, and fsync when durable), in seconds.";
/// Duration of the last store commit.
pub const STORE_LAST_COMMIT_SECONDS: &str = "culex_store_last_commit_seconds";
/// Changes submitted to the store and not yet committed.
pub const STORE_BACKLOG: &str = "culex_store_backlog_ops";
/// 1 once the store writer stopped for good (it died, or gave up at shutdown), else 0.
pub const STORE_FAILED: &str = "culex_store_failed";
/// 1 while store commits fail and are retried (disk full, I/O errors), else 0.
pub const STORE_FAILING: &str = "culex_store_failing";
/// Store commit attempts that failed (each retry counts).
pub const STORE_COMMIT_FAILURES: &str = "culex_store_commit_failures_total";
/// Times a full online queue started holding its publishers' acknowledgements back.
pub const FLOW_BLOCKED: &str = "culex_flow_blocked_total";
/// Subscribers disconnected for holding publishers back past `slow_client_timeout`.
pub const SLOW_CLIENT_DISCONNECTS: &str = "culex_slow_client_disconnects_total";
/// Whether a bridge's remote link is up (0/1), label `bridge`.
pub const BRIDGE_CONNECTED: &str = "culex_bridge_connected";
/// Successful bridge connections to the remote, label `bridge`.
pub const BRIDGE_CONNECTS: &str = "culex_bridge_connects_total";
/// Failed bridge connect attempts (one per address tried), label `bridge`.
pub const BRIDGE_RECONNECT_ATTEMPTS: &str = "culex_bridge_reconnect_attempts_total";
/// Messages forwarded by a bridge, labels `bridge`, `direction` (`in`, `out`).
pub const BRIDGE_FORWARDED: &str = "culex_bridge_messages_forwarded_total";
/// Messages waiting in a bridge's store-and-forward queue, label `bridge`.
pub const BRIDGE_QUEUED: &str = "culex_bridge_queued_messages";
/// Messages a bridge dropped, labels `bridge`, `reason`.
pub const BRIDGE_DROPPED: &str = "culex_bridge_dropped_total";
/// Unix time of a bridge's last successful connect (0 if never), label `bridge`.
pub const BRIDGE_LAST_CONNECT: &str = "culex_bridge_last_connect_timestamp_seconds";
/// 1 for a bridge's current link state, 0 for the others; labels `bridge`, `state`.
pub const BRIDGE_STATE: &str = "culex_bridge_state";
/// Unix time of a bridge's last connect failure or link loss (0 if none), label `bridge`.
pub const BRIDGE_LAST_ERROR: &str = "culex_bridge_last_error_timestamp_seconds";
/// Unix time of a bridge's next connect attempt while it waits (0 otherwise), label `bridge`.
pub const BRIDGE_NEXT_ATTEMPT: &str = "culex_bridge_next_attempt_timestamp_seconds";
/// Reasons of [`BRIDGE_DROPPED`].
pub const BRIDGE_DROP_REASONS: [&str; 3] = ["queue_full", "offline_qos0", "other"];
/// Drop reasons, the `reason` label of [`PUBLISH_DROPPED`].
pub const DROP_REASONS: [&str; 6] = [
    "queue_full",
    "outbox_full",
    "too_large",
    "acl_denied",
    "expired",
    "offline_qos0",
];

/// Everything the metrics and `$SYS` report, taken at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// The router's part.
    pub router: RouterSnapshot,
    /// Sockets accepted.
    pub sockets_accepted: u64,
    /// Sockets open now.
    pub sockets_open: u64,
    /// Successful CONNECTs.
    pub connects: u64,
    /// Most clients connected at once.
    pub clients_maximum: u64,
    /// PUBLISH packets received by QoS.
    pub publish_received: [u64; 3],
    /// PUBLISH packets sent by QoS.
    pub publish_sent: [u64; 3],
    /// Packets received, all types.
    pub packets_received: u64,
    /// Packets sent, all types.
    pub packets_sent: u64,
    /// MQTT bytes received.
    pub bytes_received: u64,
    /// MQTT bytes sent.
    pub bytes_sent: u64,
    /// PUBLISH payload bytes received.
    pub publish_bytes_received: u64,
    /// PUBLISH payload bytes sent.
    pub publish_bytes_sent: u64,
    /// Dropped messages by reason, in [`DROP_REASONS`] order.
    pub dropped: [u64; 6],
}

impl Sample {
    /// Reads the counters and combines them with a router snapshot.
    pub fn new(c: &Counters, router: RouterSnapshot) -> Sample {
        let s = &router.stats;
        let dropped = [
            s.dropped_queue_full,
            s.dropped_outbox_full,
            s.dropped_too_large + c.dropped_too_large.get(),
            c.acl_denied_publish.get() + s.dropped_acl_read + s.dropped_acl_will,
            s.dropped_expired,
            s.dropped_offline_qos0,
        ];
        Sample {
            sockets_accepted: c.accepted.get(),
            sockets_open: c.open_connections.get(),
            connects: c.connects.get(),
            clients_maximum: c.connected_max.get(),
            publish_received: c.publish_received.each_ref().map(|x| x.get()),
            publish_sent: c.publish_sent.each_ref().map(|x| x.get()),
            packets_received: c.packets_received_total(),
            packets_sent: c.packets_sent_total(),
            bytes_received: c.bytes_received.get(),
            bytes_sent: c.bytes_sent.get(),
            publish_bytes_received: c.publish_bytes_received.get(),
            publish_bytes_sent: c.publish_bytes_sent.get(),
            dropped,
            router,
        }
    }

    /// PUBLISH packets received, all QoS.
    pub fn publish_received_total(&self) -> u64 {
        self.publish_received.iter().sum()
    }

    /// PUBLISH packets sent, all QoS.
    pub fn publish_sent_total(&self) -> u64 {
        self.publish_sent.iter().sum()
    }

    /// Messages dropped, all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
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

/// What a scrape reports besides the [`Sample`].
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
    pub(crate) fn render(&self, c: &Counters, sample: &Sample, extra: Extra) -> String {
        let store = c.store.get().map(|reader| reader.stats());
        metrics::with_local_recorder(&self.recorder, || {
            record(c, sample, extra);
            if let Some(st) = &store {
                record_store(st);
            }
            self.process.collect();
        });
        let mut text = self.handle.render();
        if let Some(st) = &store {
            write_commit_histogram(&mut text, st);
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

fn describe() {
    describe_counter!(
        STORE_COMMITS,
        "Store write transactions committed (group commits)."
    );
    describe_counter!(
        STORE_DURABLE_COMMITS,
        "Store commits synced to disk (fsync)."
    );
    describe_counter!(STORE_OPS, "Changes written in committed store batches.");
    describe_gauge!(
        STORE_LAST_COMMIT_SECONDS,
        "Duration of the last store commit, in seconds."
    );
    describe_gauge!(
        STORE_BACKLOG,
        "Changes submitted to the store and not yet committed."
    );
    describe_gauge!(
        STORE_FAILED,
        "1 once the store writer stopped for good (it died or gave up at shutdown; see the log), else 0."
    );
    describe_gauge!(
        STORE_FAILING,
        "1 while store commits fail and are retried (disk full, I/O errors): acknowledgements \
         that wait for the store are held and /readyz is 503; else 0."
    );
    describe_counter!(
        STORE_COMMIT_FAILURES,
        "Store commit attempts that failed (each retry counts)."
    );
    describe_counter!(
        FLOW_BLOCKED,
        "Times an online subscriber's full queue started holding its publishers' \
         acknowledgements back (queue_full_policy block)."
    );
    describe_counter!(
        SLOW_CLIENT_DISCONNECTS,
        "Subscribers disconnected for holding publishers back longer than slow_client_timeout."
    );
    describe_gauge!(
        CONNECTIONS_CURRENT,
        "Network connections open now (accepted, not yet closed)."
    );
    describe_gauge!(
        MAX_CONNECTIONS,
        "The configured max_connections, the limit of culex_connections_current; absent when unlimited."
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "Network connections accepted, before max_connections and any handshake."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused before becoming a client, by reason."
    );
    describe_counter!(CLIENT_CONNECTS, "CONNECTs accepted (CONNACK success sent).");
    describe_gauge!(CLIENTS_CONNECTED, "Clients connected now.");
    describe_gauge!(
        CLIENTS_MAXIMUM,
        "The most clients connected at once since the broker started."
    );
    describe_gauge!(SESSIONS, "Sessions, connected and offline.");
    describe_gauge!(
        SESSIONS_OFFLINE,
        "Persistent sessions whose client is not connected."
    );
    describe_counter!(
        SESSIONS_EXPIRED,
        "Offline sessions removed by their expiry."
    );
    describe_counter!(
        MESSAGES_RECEIVED,
        "PUBLISH packets received from clients, by QoS."
    );
    describe_counter!(MESSAGES_SENT, "PUBLISH packets sent to clients, by QoS.");
    describe_counter!(PACKETS_RECEIVED, "MQTT packets received, by packet type.");
    describe_counter!(PACKETS_SENT, "MQTT packets sent, by packet type.");
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "MQTT bytes received (after TLS and WebSocket framing)."
    );
    describe_counter!(
        BYTES_SENT,
        Unit::Bytes,
        "MQTT bytes sent (before TLS and WebSocket framing)."
    );
    describe_counter!(
        PUBLISH_BYTES_RECEIVED,
        Unit::Bytes,
        "Payload bytes of the PUBLISH packets received."
    );
    describe_counter!(
        PUBLISH_BYTES_SENT,
        Unit::Bytes,
        "Payload bytes of the PUBLISH packets sent."
    );
    describe_counter!(
        PUBLISH_DROPPED,
        "Messages dropped instead of delivered, by reason."
    );
    describe_counter!(WILLS_PUBLISHED, "Will messages published.");
    describe_gauge!(RETAINED_MESSAGES, "Retained messages held.");
    describe_gauge!(
        RETAINED_BYTES,
        Unit::Bytes,
        "Payload bytes of the retained messages."
    );
    describe_gauge!(
        SUBSCRIPTIONS,
        "Subscriptions, shared-subscription memberships included."
    );
    describe_gauge!(SHARED_SUBSCRIPTIONS, "Shared-subscription memberships.");
    describe_gauge!(
        INFLIGHT_MESSAGES,
        "QoS 1/2 messages sent to clients and not yet acknowledged."
    );
    describe_gauge!(
        QUEUED_MESSAGES,
        "QoS 1/2 messages queued behind the in-flight windows."
    );
    describe_gauge!(
        QUEUED_BYTES,
        Unit::Bytes,
        "Topic and payload bytes of the queued messages."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Connections refused by authentication (password or certificate identity)."
    );
    describe_counter!(
        AUTH_THROTTLED,
        "Logins refused without a password check: the source address was backing off after \
         repeated failures (auth_failure_limit), or too many logins waited for a hashing thread."
    );
    describe_counter!(
        ACL_DENIED,
        "Operations denied by the ACL, by action (publish, subscribe, read, will)."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Reloads of password, ACL and certificate files (SIGHUP), by result."
    );
    describe_counter!(
        CONNECTIONS_REVOKED,
        "Connections closed by a reload: user removed, password changed, certificate revoked, \
         or anonymous access no longer allowed."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed or timed out."
    );
    describe_counter!(
        WEBSOCKET_HANDSHAKE_FAILURES,
        "WebSocket upgrades that failed or timed out."
    );
    describe_counter!(
        PROTOCOL_ERRORS,
        "Connections closed for malformed or out-of-order packets."
    );
    describe_gauge!(
        ROUTER_QUEUE_DEPTH,
        "Commands waiting in the router's channel."
    );
    describe_gauge!(ROUTER_QUEUE_CAPACITY, "Capacity of the router's channel.");
    describe_gauge!(UPTIME, Unit::Seconds, "Seconds since the broker started.");
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
    describe_gauge!(
        BRIDGE_CONNECTED,
        "1 while the bridge's link to its remote broker is up, else 0."
    );
    describe_counter!(
        BRIDGE_CONNECTS,
        "Successful bridge connections to the remote broker (CONNACK accepted)."
    );
    describe_counter!(
        BRIDGE_RECONNECT_ATTEMPTS,
        "Failed bridge connect attempts, one per remote address tried."
    );
    describe_counter!(
        BRIDGE_FORWARDED,
        "Messages forwarded by the bridge, by direction (out: local to remote, in: remote to local)."
    );
    describe_gauge!(
        BRIDGE_QUEUED,
        "Messages waiting in the bridge's store-and-forward queue."
    );
    describe_counter!(
        BRIDGE_DROPPED,
        "Messages the bridge dropped, by reason (queue_full, offline_qos0, other)."
    );
    describe_gauge!(
        BRIDGE_LAST_CONNECT,
        Unit::Seconds,
        "Unix time of the bridge's last successful connect; 0 if it never connected."
    );
    describe_gauge!(
        BRIDGE_STATE,
        "1 for the bridge's current link state (stopped, connecting, connected, backing_off, idle, credentials_refused, tls_failed), 0 for the others."
    );
    describe_gauge!(
        BRIDGE_LAST_ERROR,
        Unit::Seconds,
        "Unix time of the bridge's last connect failure or link loss; 0 if none."
    );
    describe_gauge!(
        BRIDGE_NEXT_ATTEMPT,
        Unit::Seconds,
        "Unix time of the bridge's next connect attempt while it waits; 0 when not waiting."
    );
}

/// The `culex_store_*` metrics, when persistence is on (except the commit-duration histogram:
/// see [`write_commit_histogram`]).
fn record_store(st: &StoreStats) {
    counter!(STORE_COMMITS).absolute(st.commits);
    counter!(STORE_DURABLE_COMMITS).absolute(st.durable_commits);
    counter!(STORE_OPS).absolute(st.ops);
    gauge!(STORE_LAST_COMMIT_SECONDS).set(st.last_latency_ns as f64 / 1e9);
    gauge!(STORE_BACKLOG).set(st.backlog as f64);
    gauge!(STORE_FAILED).set(if st.failed { 1.0 } else { 0.0 });
    gauge!(STORE_FAILING).set(if st.failing || st.failed { 1.0 } else { 0.0 });
    counter!(STORE_COMMIT_FAILURES).absolute(st.commit_failures);
}

/// The `culex_bridge_*` metrics, from each bridge's statistics.
fn record_bridges(c: &Counters) {
    use std::sync::atomic::Ordering::Relaxed;
    for (name, st) in c.bridges.snapshot() {
        let connected = st.state() == culex_bridge::LinkState::Connected;
        gauge!(BRIDGE_CONNECTED, "bridge" => name.clone()).set(if connected { 1.0 } else { 0.0 });
        counter!(BRIDGE_CONNECTS, "bridge" => name.clone()).absolute(st.connects.load(Relaxed));
        counter!(BRIDGE_RECONNECT_ATTEMPTS, "bridge" => name.clone())
            .absolute(st.reconnect_attempts.load(Relaxed));
        counter!(BRIDGE_FORWARDED, "bridge" => name.clone(), "direction" => "out")
            .absolute(st.forwarded_out.load(Relaxed));
        counter!(BRIDGE_FORWARDED, "bridge" => name.clone(), "direction" => "in")
            .absolute(st.forwarded_in.load(Relaxed));
        gauge!(BRIDGE_QUEUED, "bridge" => name.clone()).set(st.queued_total() as f64);
        let dropped = [
            st.dropped_queue_full.load(Relaxed),
            st.dropped_qos0_offline.load(Relaxed),
            st.dropped_other.load(Relaxed),
        ];
        for (reason, v) in BRIDGE_DROP_REASONS.iter().zip(dropped) {
            counter!(BRIDGE_DROPPED, "bridge" => name.clone(), "reason" => *reason).absolute(v);
        }
        gauge!(BRIDGE_LAST_CONNECT, "bridge" => name.clone())
            .set(st.last_connect_unix.load(Relaxed) as f64);
        let state = st.state();
        for s in culex_bridge::LinkState::ALL {
            gauge!(BRIDGE_STATE, "bridge" => name.clone(), "state" => s.as_str())
                .set(if s == state { 1.0 } else { 0.0 });
        }
        gauge!(BRIDGE_LAST_ERROR, "bridge" => name.clone())
            .set(st.last_error_unix.load(Relaxed) as f64);
        let next_ms = match state {
            culex_bridge::LinkState::BackingOff
            | culex_bridge::LinkState::CredentialsRefused
            | culex_bridge::LinkState::TlsFailed => st.next_attempt_unix_ms.load(Relaxed),
            _ => 0,
        };
        gauge!(BRIDGE_NEXT_ATTEMPT, "bridge" => name.clone()).set(next_ms as f64 / 1000.0);
    }
}

fn record(c: &Counters, s: &Sample, extra: Extra) {
    let r = &s.router;
    let st = &r.stats;
    gauge!(CONNECTIONS_CURRENT).set(s.sockets_open as f64);
    if let Some(limit) = c.max_connections() {
        gauge!(MAX_CONNECTIONS).set(limit as f64);
    }
    counter!(CONNECTIONS_ACCEPTED).absolute(s.sockets_accepted);
    for why in Refusal::ALL {
        counter!(CONNECTIONS_REFUSED, "reason" => why.label()).absolute(c.refused_for(why));
    }
    counter!(CLIENT_CONNECTS).absolute(s.connects);
    gauge!(CLIENTS_CONNECTED).set(r.connected as f64);
    gauge!(CLIENTS_MAXIMUM).set(s.clients_maximum as f64);
    gauge!(SESSIONS).set(r.sessions as f64);
    gauge!(SESSIONS_OFFLINE).set(r.offline_sessions as f64);
    counter!(SESSIONS_EXPIRED).absolute(st.sessions_expired);
    for (qos, label) in ["0", "1", "2"].into_iter().enumerate() {
        counter!(MESSAGES_RECEIVED, "qos" => label).absolute(s.publish_received[qos]);
        counter!(MESSAGES_SENT, "qos" => label).absolute(s.publish_sent[qos]);
    }
    for (t, label) in PACKET_TYPES.iter().enumerate().skip(1) {
        let (rx, tx) = (
            c.packets_received.get(t).map_or(0, |x| x.get()),
            c.packets_sent.get(t).map_or(0, |x| x.get()),
        );
        counter!(PACKETS_RECEIVED, "type" => *label).absolute(rx);
        counter!(PACKETS_SENT, "type" => *label).absolute(tx);
    }
    counter!(BYTES_RECEIVED).absolute(s.bytes_received);
    counter!(BYTES_SENT).absolute(s.bytes_sent);
    counter!(PUBLISH_BYTES_RECEIVED).absolute(s.publish_bytes_received);
    counter!(PUBLISH_BYTES_SENT).absolute(s.publish_bytes_sent);
    for (reason, v) in DROP_REASONS.iter().zip(s.dropped) {
        counter!(PUBLISH_DROPPED, "reason" => *reason).absolute(v);
    }
    counter!(WILLS_PUBLISHED).absolute(st.wills_published);
    counter!(FLOW_BLOCKED).absolute(st.flow_blocked);
    counter!(SLOW_CLIENT_DISCONNECTS).absolute(st.slow_client_disconnects);
    gauge!(RETAINED_MESSAGES).set(r.retained_count as f64);
    gauge!(RETAINED_BYTES).set(r.retained_bytes as f64);
    gauge!(SUBSCRIPTIONS).set(r.subscriptions as f64);
    gauge!(SHARED_SUBSCRIPTIONS).set(r.shared_subscriptions as f64);
    gauge!(INFLIGHT_MESSAGES).set(r.inflight as f64);
    gauge!(QUEUED_MESSAGES).set(r.queued as f64);
    gauge!(QUEUED_BYTES).set(r.queued_bytes as f64);
    counter!(AUTH_FAILURES).absolute(c.auth_failures.get());
    counter!(AUTH_THROTTLED).absolute(c.auth_throttled.get());
    for (action, v) in [
        ("publish", c.acl_denied_publish.get()),
        ("subscribe", st.subscriptions_denied),
        ("read", st.dropped_acl_read),
        ("will", st.dropped_acl_will),
    ] {
        counter!(ACL_DENIED, "action" => action).absolute(v);
    }
    counter!(CONFIG_RELOADS, "result" => "ok").absolute(c.reloads_ok.get());
    counter!(CONFIG_RELOADS, "result" => "failed").absolute(c.reloads_failed.get());
    counter!(CONNECTIONS_REVOKED).absolute(c.revoked_connections.get());
    counter!(TLS_HANDSHAKE_FAILURES).absolute(c.tls_handshake_failures.get());
    counter!(WEBSOCKET_HANDSHAKE_FAILURES).absolute(c.websocket_handshake_failures.get());
    counter!(PROTOCOL_ERRORS).absolute(c.protocol_errors.get());
    gauge!(ROUTER_QUEUE_DEPTH).set(extra.router_queue_depth as f64);
    gauge!(ROUTER_QUEUE_CAPACITY).set(extra.router_queue_capacity as f64);
    gauge!(UPTIME).set(extra.uptime_seconds);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    record_bridges(c);
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
