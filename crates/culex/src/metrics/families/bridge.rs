//! One series per configured bridge (label `bridge`), from each bridge's statistics.

use super::*;

/// In the order of docs/metrics.md.
pub(super) static BRIDGE: &[Family] = &[
    Family {
        name: "culex_bridge_connected",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Bridge,
        labels: "`bridge`",
        help: "1 while the bridge's link to its remote broker is up, else 0.",
        doc: "1 while the link to the remote broker is up (CONNACK accepted, subscriptions made), else 0",
        sys: &[],
        read: |s, e| {
            per_bridge(s, e, |st| {
                flag(st.state() == culex_bridge::LinkState::Connected)
            })
        },
    },
    Family {
        name: "culex_bridge_connects_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Bridge,
        labels: "`bridge`",
        help: "Successful bridge connections to the remote broker (CONNACK accepted).",
        doc: "successful connections to the remote broker",
        sys: &[],
        read: |s, e| per_bridge(s, e, |st| st.connects.load(Relaxed) as f64),
    },
    Family {
        name: "culex_bridge_reconnect_attempts_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Bridge,
        labels: "`bridge`",
        help: "Failed bridge connect attempts, one per remote address tried.",
        doc: "failed connect attempts, one per remote address tried",
        sys: &[],
        read: |s, e| per_bridge(s, e, |st| st.reconnect_attempts.load(Relaxed) as f64),
    },
    Family {
        name: "culex_bridge_messages_forwarded_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Bridge,
        labels: "`bridge`, `direction`: `out`, `in`",
        help: "Messages forwarded by the bridge, by direction (out: local to remote, in: remote to local).",
        doc: "messages forwarded: `out` local → remote (handed to the remote session), `in` remote → local",
        sys: &[],
        read: |s, e| {
            for (name, st) in s.counters.bridges.snapshot() {
                let out = st.forwarded_out.load(Relaxed) as f64;
                e(&[("bridge", &name), ("direction", "out")], out);
                let inward = st.forwarded_in.load(Relaxed) as f64;
                e(&[("bridge", &name), ("direction", "in")], inward);
            }
        },
    },
    Family {
        name: "culex_bridge_queued_messages",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Bridge,
        labels: "`bridge`",
        help: "Messages waiting in the bridge's store-and-forward queue.",
        doc: "`out` messages waiting for the remote: held by the bridge (at most its window of 64, plus the latest QoS 0 state per topic while down) and queued in its local session (bounded by `bridge_queue_limit` / `bridge_queue_bytes`)",
        sys: &[],
        read: |s, e| per_bridge(s, e, |st| st.queued_total() as f64),
    },
    Family {
        name: "culex_bridge_dropped_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Bridge,
        labels: "`bridge`, `reason`: `queue_full`, `offline_qos0`, `other`",
        help: "Messages the bridge dropped, by reason (queue_full, offline_qos0, other).",
        doc: "messages the bridge dropped. `queue_full`: the queue (`bridge_queue_limit` / `bridge_queue_bytes`) was full, the oldest went; `offline_qos0`: a QoS 0 `out` message replaced by a newer one on the same topic while the remote was down (only the latest is kept), or beyond `bridge_queue_limit` topics; `other`: over `bridge_max_packet_size`, refused by the remote, no matching `in` rule, or an echo of the bridge's own message",
        sys: &[],
        read: |s, e| {
            for (name, st) in s.counters.bridges.snapshot() {
                for (reason, v) in [
                    ("queue_full", &st.dropped_queue_full),
                    ("offline_qos0", &st.dropped_qos0_offline),
                    ("other", &st.dropped_other),
                ] {
                    e(&[("bridge", &name), ("reason", reason)], v.load(Relaxed) as f64);
                }
            }
        },
    },
    Family {
        name: "culex_bridge_last_connect_timestamp_seconds",
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        group: Group::Bridge,
        labels: "`bridge`",
        help: "Unix time of the bridge's last successful connect; 0 if it never connected.",
        doc: "Unix time of the last successful connect; 0 if it never connected",
        sys: &[],
        read: |s, e| per_bridge(s, e, |st| st.last_connect_unix.load(Relaxed) as f64),
    },
    Family {
        name: "culex_bridge_state",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Bridge,
        labels: "`bridge`, `state`: `stopped`, `connecting`, `connected`, `backing_off`, `idle`, `credentials_refused`, `tls_failed`",
        help: "1 for the bridge's current link state (stopped, connecting, connected, backing_off, idle, credentials_refused, tls_failed), 0 for the others.",
        doc: "1 for the link's current state, 0 for the others. `credentials_refused`: the remote refused the login (retried at about the backoff cap, at once after a reload that changes it); `tls_failed`: the TLS handshake failed (certificate, CA, version); `backing_off`: any other failure, waiting with jittered backoff; `idle`: a lazy bridge below its threshold",
        sys: &[],
        read: |s, e| {
            for (name, st) in s.counters.bridges.snapshot() {
                let state = st.state();
                for each in culex_bridge::LinkState::ALL {
                    e(&[("bridge", &name), ("state", each.as_str())], flag(each == state));
                }
            }
        },
    },
    Family {
        name: "culex_bridge_last_error_timestamp_seconds",
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        group: Group::Bridge,
        labels: "`bridge`",
        help: "Unix time of the bridge's last connect failure or link loss; 0 if none.",
        doc: "Unix time of the last connect failure or link loss; 0 if none (the text is in the log and in `$SYS/broker/connection/<name>/last_error`)",
        sys: &[],
        read: |s, e| per_bridge(s, e, |st| st.last_error_unix.load(Relaxed) as f64),
    },
    Family {
        name: "culex_bridge_backoff_seconds",
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        group: Group::Bridge,
        labels: "`bridge`",
        help: "The delay the bridge's backoff drew before its latest scheduled connect attempt.",
        doc: "The delay drawn before the latest scheduled connect attempt (jittered exponential backoff between `restart_timeout`'s minimum and maximum; the maximum after refused credentials); 0 before the first failure",
        sys: &[],
        read: |s, e| per_bridge(s, e, |st| st.last_backoff_ms.load(Relaxed) as f64 / 1000.0),
    },
    Family {
        name: "culex_bridge_next_attempt_timestamp_seconds",
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        group: Group::Bridge,
        labels: "`bridge`",
        help: "Unix time of the bridge's next connect attempt while it waits; 0 when not waiting.",
        doc: "Unix time of the next connect attempt while the bridge waits (`backing_off`, `credentials_refused`, `tls_failed`); 0 otherwise",
        sys: &[],
        read: |s, e| {
            per_bridge(s, e, |st| {
                use culex_bridge::LinkState::{BackingOff, CredentialsRefused, TlsFailed};
                match st.state() {
                    BackingOff | CredentialsRefused | TlsFailed => {
                        st.next_attempt_unix_ms.load(Relaxed) as f64 / 1000.0
                    }
                    _ => 0.0,
                }
            })
        },
    },
];
