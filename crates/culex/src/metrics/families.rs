//! Every metric family Culex exports, described once: name, kind, unit, labels, help text,
//! documentation, the `$SYS` topics that report its total, and how to read it from a
//! [`Sample`]. The Prometheus exporter, the `$SYS` tree and the tables in docs/metrics.md
//! (checked by a test) are all made from [`FAMILIES`].

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
}

#[cfg(test)]
impl Group {
    /// All groups, in the order of docs/metrics.md.
    pub(crate) const ALL: [Group; 3] = [Group::Broker, Group::Bridge, Group::Store];

    /// The name in the docs' generated-block markers.
    pub(crate) fn marker(self) -> &'static str {
        match self {
            Group::Broker => "metrics-broker",
            Group::Bridge => "metrics-bridges",
            Group::Store => "metrics-store",
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
    /// The sum of the family's series in `sample` (what `$SYS` publishes).
    pub(crate) fn total(&self, sample: &Sample) -> f64 {
        let mut sum = 0.0;
        (self.read)(sample, &mut |_, v| sum += v);
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
    FAMILIES.iter().find(|f| f.name == name)
}

/// The Markdown table of `group`'s families, as between its markers in docs/metrics.md.
#[cfg(test)]
pub(crate) fn doc_table(group: Group) -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n| --- | --- | --- | --- |\n");
    for f in FAMILIES.iter().filter(|f| f.group == group) {
        out.push_str(&f.doc_row());
        out.push('\n');
    }
    out
}

/// The Markdown rows of the `$SYS` topics that report a family's total.
#[cfg(test)]
pub(crate) fn sys_doc_rows() -> String {
    let mut out = String::from("| topic | meaning (same source as) |\n| --- | --- |\n");
    for f in FAMILIES.iter().filter(|f| !f.sys.is_empty()) {
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

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

const QOS_LABELS: [&str; 3] = ["0", "1", "2"];

/// Every family, in the order of docs/metrics.md.
pub(crate) static FAMILIES: &[Family] = &[
    Family {
        name: "culex_connections_current",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Network connections open now (accepted, not yet closed).",
        doc: "network connections open now (accepted, not yet closed; handshakes included)",
        sys: &[],
        read: |s, e| one(e, s.counters.open_connections.get()),
    },
    Family {
        name: "culex_max_connections",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "The configured max_connections, the limit of culex_connections_current; absent when unlimited.",
        doc: "the configured `max_connections`, the limit `culex_connections_current` counts against (a socket beyond it is closed at once). **Absent when unlimited** (`max_connections -1`, the default): there is no limit to approach, and a ratio against it then returns nothing instead of a misleading 0. The limit is then the file descriptor limit, `process_max_fds`",
        sys: &[],
        read: |s, e| {
            if let Some(limit) = s.counters.max_connections() {
                one(e, limit);
            }
        },
    },
    Family {
        name: "culex_connections_accepted_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Network connections accepted, before max_connections and any handshake.",
        doc: "sockets accepted, before `max_connections` and any TLS/WebSocket handshake",
        sys: &[],
        read: |s, e| one(e, s.counters.accepted.get()),
    },
    Family {
        name: "culex_connections_refused_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "`reason`: `max_connections`, `not_authorized`, `bad_client_id`, `unsupported_protocol`, `protocol_error`, `other`",
        help: "Connections refused before becoming a client, by reason.",
        doc: "connections refused before becoming clients. `max_connections`: closed at once; `not_authorized`: bad user name/password or no certificate identity; `bad_client_id`: client id not allowed (also an MQTT 3 keepalive above `max_keepalive`); `unsupported_protocol`: unknown protocol name/level; `protocol_error`: malformed CONNECT or another packet first; `other`: will QoS/retain not supported, bad authentication method, router unavailable",
        sys: &[],
        read: |s, e| {
            for why in Refusal::ALL {
                e(&[("reason", why.label())], s.counters.refused_for(why) as f64);
            }
        },
    },
    Family {
        name: "culex_client_connects_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "CONNECTs accepted (CONNACK success sent).",
        doc: "",
        sys: &[],
        read: |s, e| one(e, s.counters.connects.get()),
    },
    Family {
        name: "culex_clients_connected",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Clients connected now.",
        doc: "clients connected now (sessions with a live connection)",
        sys: &["clients/connected", "clients/active"],
        read: |s, e| one(e, s.router.connected),
    },
    Family {
        name: "culex_clients_maximum",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "The most clients connected at once since the broker started.",
        doc: "",
        sys: &["clients/maximum"],
        read: |s, e| one(e, s.counters.connected_max.get()),
    },
    Family {
        name: "culex_sessions",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Sessions, connected and offline.",
        doc: "",
        sys: &["clients/total"],
        read: |s, e| one(e, s.router.sessions),
    },
    Family {
        name: "culex_persistent_sessions_offline",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Persistent sessions whose client is not connected.",
        doc: "",
        sys: &["clients/disconnected", "clients/inactive"],
        read: |s, e| one(e, s.router.offline_sessions),
    },
    Family {
        name: "culex_sessions_expired_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Offline sessions removed by their expiry.",
        doc: "",
        sys: &["clients/expired"],
        read: |s, e| one(e, s.router.stats.sessions_expired),
    },
    Family {
        name: "culex_messages_received_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "`qos`: `0`, `1`, `2`",
        help: "PUBLISH packets received from clients, by QoS.",
        doc: "PUBLISH packets received from clients (ACL-denied and oversized ones included)",
        sys: &["publish/messages/received"],
        read: |s, e| {
            for (qos, label) in QOS_LABELS.iter().enumerate() {
                let v = s.counters.publish_received.get(qos).map_or(0, |c| c.get());
                e(&[("qos", label)], v as f64);
            }
        },
    },
    Family {
        name: "culex_messages_sent_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "`qos`",
        help: "PUBLISH packets sent to clients, by QoS.",
        doc: "PUBLISH packets sent to clients (redeliveries and `$SYS` deliveries included)",
        sys: &["publish/messages/sent"],
        read: |s, e| {
            for (qos, label) in QOS_LABELS.iter().enumerate() {
                let v = s.counters.publish_sent.get(qos).map_or(0, |c| c.get());
                e(&[("qos", label)], v as f64);
            }
        },
    },
    Family {
        name: "culex_packets_received_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "`type`: `connect`, `publish`, `puback`, … `auth`",
        help: "MQTT packets received, by packet type.",
        doc: "",
        sys: &["messages/received"],
        read: |s, e| {
            for (t, label) in PACKET_TYPES.iter().enumerate().skip(1) {
                let v = s.counters.packets_received.get(t).map_or(0, |c| c.get());
                e(&[("type", label)], v as f64);
            }
        },
    },
    Family {
        name: "culex_packets_sent_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "`type`",
        help: "MQTT packets sent, by packet type.",
        doc: "",
        sys: &["messages/sent"],
        read: |s, e| {
            for (t, label) in PACKET_TYPES.iter().enumerate().skip(1) {
                let v = s.counters.packets_sent.get(t).map_or(0, |c| c.get());
                e(&[("type", label)], v as f64);
            }
        },
    },
    Family {
        name: "culex_received_bytes_total",
        kind: Kind::Counter,
        unit: Some(Unit::Bytes),
        group: Group::Broker,
        labels: "",
        help: "MQTT bytes received (after TLS and WebSocket framing).",
        doc: "MQTT bytes read from clients (after TLS and WebSocket framing are removed)",
        sys: &["bytes/received"],
        read: |s, e| one(e, s.counters.bytes_received.get()),
    },
    Family {
        name: "culex_sent_bytes_total",
        kind: Kind::Counter,
        unit: Some(Unit::Bytes),
        group: Group::Broker,
        labels: "",
        help: "MQTT bytes sent (before TLS and WebSocket framing).",
        doc: "MQTT bytes written to clients",
        sys: &["bytes/sent"],
        read: |s, e| one(e, s.counters.bytes_sent.get()),
    },
    Family {
        name: "culex_publish_received_bytes_total",
        kind: Kind::Counter,
        unit: Some(Unit::Bytes),
        group: Group::Broker,
        labels: "",
        help: "Payload bytes of the PUBLISH packets received.",
        doc: "",
        sys: &["publish/bytes/received"],
        read: |s, e| one(e, s.counters.publish_bytes_received.get()),
    },
    Family {
        name: "culex_publish_sent_bytes_total",
        kind: Kind::Counter,
        unit: Some(Unit::Bytes),
        group: Group::Broker,
        labels: "",
        help: "Payload bytes of the PUBLISH packets sent.",
        doc: "",
        sys: &["publish/bytes/sent"],
        read: |s, e| one(e, s.counters.publish_bytes_sent.get()),
    },
    Family {
        name: "culex_publish_dropped_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "`reason`: `queue_full`, `outbox_full`, `too_large`, `acl_denied`, `expired`, `offline_qos0`",
        help: "Messages dropped instead of delivered, by reason.",
        doc: "messages not delivered. `queue_full`: a session's QoS 1/2 queue was full (`max_queued_messages`/`max_queued_bytes`); `outbox_full`: QoS 0 to a slow consumer; `too_large`: over `message_size_limit` or the client's Maximum Packet Size; `acl_denied`: publish refused, delivery withheld (read), or will refused by the ACL; `expired`: Message Expiry Interval elapsed (queued or retained); `offline_qos0`: QoS 0 not queued for an offline session",
        sys: &["publish/messages/dropped"],
        read: |s, e| {
            for (reason, v) in dropped(s) {
                e(&[("reason", reason)], v as f64);
            }
        },
    },
    Family {
        name: "culex_flow_blocked_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Times an online subscriber's full queue started holding its publishers' acknowledgements back (queue_full_policy block).",
        doc: "times an online subscriber's full queue started holding its publishers' PUBACK/PUBREC back (`queue_full_policy block`)",
        sys: &[],
        read: |s, e| one(e, s.router.stats.flow_blocked),
    },
    Family {
        name: "culex_slow_client_disconnects_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Subscribers disconnected for holding publishers back longer than slow_client_timeout.",
        doc: "subscribers disconnected (MQTT 5: 0x97) for holding publishers back without progress longer than `slow_client_timeout`",
        sys: &[],
        read: |s, e| one(e, s.router.stats.slow_client_disconnects),
    },
    Family {
        name: "culex_wills_published_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Will messages published.",
        doc: "",
        sys: &[],
        read: |s, e| one(e, s.router.stats.wills_published),
    },
    Family {
        name: "culex_retained_messages",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Retained messages held.",
        doc: "retained messages held (`$SYS` topics included)",
        sys: &["retained messages/count"],
        read: |s, e| one(e, s.router.retained_count),
    },
    Family {
        name: "culex_retained_bytes",
        kind: Kind::Gauge,
        unit: Some(Unit::Bytes),
        group: Group::Broker,
        labels: "",
        help: "Payload bytes of the retained messages.",
        doc: "",
        sys: &[],
        read: |s, e| one(e, s.router.retained_bytes),
    },
    Family {
        name: "culex_subscriptions",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Subscriptions, shared-subscription memberships included.",
        doc: "",
        sys: &["subscriptions/count"],
        read: |s, e| one(e, s.router.subscriptions),
    },
    Family {
        name: "culex_shared_subscriptions",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Shared-subscription memberships.",
        doc: "",
        sys: &["shared_subscriptions/count"],
        read: |s, e| one(e, s.router.shared_subscriptions),
    },
    Family {
        name: "culex_inflight_messages",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "QoS 1/2 messages sent to clients and not yet acknowledged.",
        doc: "QoS 1/2 messages sent and not yet acknowledged, all sessions",
        sys: &[],
        read: |s, e| one(e, s.router.inflight),
    },
    Family {
        name: "culex_queued_messages",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "QoS 1/2 messages queued behind the in-flight windows.",
        doc: "QoS 1/2 messages queued behind the in-flight windows, all sessions (offline persistent sessions included)",
        sys: &[],
        read: |s, e| one(e, s.router.queued),
    },
    Family {
        name: "culex_queued_bytes",
        kind: Kind::Gauge,
        unit: Some(Unit::Bytes),
        group: Group::Broker,
        labels: "",
        help: "Topic and payload bytes of the queued messages.",
        doc: "",
        sys: &[],
        read: |s, e| one(e, s.router.queued_bytes),
    },
    Family {
        name: "culex_auth_failures_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Connections refused by authentication (password or certificate identity).",
        doc: "connections refused by authentication (password, or certificate identity with `use_identity_as_username`)",
        sys: &[],
        read: |s, e| one(e, s.counters.auth_failures.get()),
    },
    Family {
        name: "culex_auth_throttled_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Logins refused without a password check: the source address was backing off after repeated failures (auth_failure_limit), or too many logins waited for a hashing thread.",
        doc: "of those, refused without a password check: the source address was backing off after `auth_failure_limit` failures in a row, or too many logins waited for a hashing thread",
        sys: &[],
        read: |s, e| one(e, s.counters.auth_throttled.get()),
    },
    Family {
        name: "culex_acl_denied_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "`action`: `publish`, `subscribe`, `read`, `will`",
        help: "Operations denied by the ACL, by action (publish, subscribe, read, will).",
        doc: "operations the ACL denied: PUBLISH refused, SUBSCRIBE filter refused, delivery withheld from a subscriber, will not published",
        sys: &[],
        read: |s, e| {
            let st = &s.router.stats;
            for (action, v) in [
                ("publish", s.counters.acl_denied_publish.get()),
                ("subscribe", st.subscriptions_denied),
                ("read", st.dropped_acl_read),
                ("will", st.dropped_acl_will),
            ] {
                e(&[("action", action)], v as f64);
            }
        },
    },
    Family {
        name: "culex_config_reloads_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "`result`: `ok`, `failed`",
        help: "Reloads of password, ACL and certificate files (SIGHUP), by result.",
        doc: "SIGHUP reloads of password, ACL and certificate files",
        sys: &[],
        read: |s, e| {
            e(&[("result", "ok")], s.counters.reloads_ok.get() as f64);
            e(&[("result", "failed")], s.counters.reloads_failed.get() as f64);
        },
    },
    Family {
        name: "culex_connections_revoked_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Connections closed by a reload: user removed, password changed, certificate revoked, or anonymous access no longer allowed.",
        doc: "connections closed by a reload because their client is no longer let in: user removed from the password file, password changed, client certificate revoked or no longer trusted, anonymous access no longer allowed (MQTT 5 clients get DISCONNECT 0x87 with the reason)",
        sys: &[],
        read: |s, e| one(e, s.counters.revoked_connections.get()),
    },
    Family {
        name: "culex_tls_handshake_failures_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "TLS handshakes that failed or timed out.",
        doc: "",
        sys: &[],
        read: |s, e| one(e, s.counters.tls_handshake_failures.get()),
    },
    Family {
        name: "culex_websocket_handshake_failures_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "WebSocket upgrades that failed or timed out.",
        doc: "",
        sys: &[],
        read: |s, e| one(e, s.counters.websocket_handshake_failures.get()),
    },
    Family {
        name: "culex_protocol_errors_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Connections closed for malformed or out-of-order packets.",
        doc: "",
        sys: &[],
        read: |s, e| one(e, s.counters.protocol_errors.get()),
    },
    Family {
        name: "culex_router_queue_depth",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Commands waiting in the router's channel.",
        doc: "commands waiting in the router's channel (a router falling behind shows here first)",
        sys: &[],
        read: |s, e| one(e, s.extra.router_queue_depth),
    },
    Family {
        name: "culex_router_queue_capacity",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "",
        help: "Capacity of the router's channel.",
        doc: "capacity of the router's channel (16384)",
        sys: &[],
        read: |s, e| one(e, s.extra.router_queue_capacity),
    },
    Family {
        name: "culex_uptime_seconds",
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        group: Group::Broker,
        labels: "",
        help: "Seconds since the broker started.",
        doc: "",
        sys: &[],
        read: |s, e| e(&[], s.extra.uptime_seconds),
    },
    Family {
        name: "culex_build_info",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Broker,
        labels: "`version`",
        help: "Always 1; the version is a label.",
        doc: "always 1",
        sys: &[],
        read: |_, e| e(&[("version", env!("CARGO_PKG_VERSION"))], 1.0),
    },
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
    Family {
        name: "culex_store_commits_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Store,
        labels: "",
        help: "Store write transactions committed (group commits).",
        doc: "store write transactions committed (one per group commit)",
        sys: &[],
        read: |s, e| store(s, e, |st| st.commits as f64),
    },
    Family {
        name: "culex_store_durable_commits_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Store,
        labels: "",
        help: "Store commits synced to disk (fsync).",
        doc: "of which synced to disk (fsync)",
        sys: &[],
        read: |s, e| store(s, e, |st| st.durable_commits as f64),
    },
    Family {
        name: "culex_store_ops_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Store,
        labels: "",
        help: "Changes written in committed store batches.",
        doc: "changes written in committed batches",
        sys: &[],
        read: |s, e| store(s, e, |st| st.ops as f64),
    },
    Family {
        name: super::STORE_COMMIT_DURATION,
        kind: Kind::Histogram,
        unit: None,
        group: Group::Store,
        labels: "`le` on `_bucket`",
        help: super::STORE_COMMIT_DURATION_HELP,
        doc: "duration of each commit (encode, write, and fsync when durable): `_bucket{le=...}` with bounds 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 s and `+Inf`; `_sum`, `_count` (equal to `culex_store_commits_total`: the once-a-second checkpoint of `persistence_sync never` is a commit too)",
        sys: &[],
        read: |_, _| {},
    },
    Family {
        name: "culex_store_last_commit_seconds",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Store,
        labels: "",
        help: "Duration of the last store commit, in seconds.",
        doc: "duration of the last commit",
        sys: &[],
        read: |s, e| store(s, e, |st| st.last_latency_ns as f64 / 1e9),
    },
    Family {
        name: "culex_store_backlog_ops",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Store,
        labels: "",
        help: "Changes submitted to the store and not yet committed.",
        doc: "changes submitted and not yet committed",
        sys: &[],
        read: |s, e| store(s, e, |st| st.backlog as f64),
    },
    Family {
        name: "culex_store_failed",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Store,
        labels: "",
        help: "1 once the store writer stopped for good (it died or gave up at shutdown; see the log), else 0.",
        doc: "1 once the store writer stopped for good (it died, or gave up on a failing commit at shutdown); `/healthz` is then 503",
        sys: &[],
        read: |s, e| store(s, e, |st| flag(st.failed)),
    },
    Family {
        name: "culex_store_failing",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Store,
        labels: "",
        help: "1 while store commits fail and are retried (disk full, I/O errors): acknowledgements that wait for the store are held and /readyz is 503; else 0.",
        doc: "1 while commits fail (disk full, file size limit, I/O errors) and are retried with backoff (also 1 when the writer stopped): acknowledgements that wait for the store are held (publishers slow down, nothing unstored is acknowledged), and `/readyz` is 503 saying so. Back to 0 when a commit succeeds. Alert: `CulexStoreFailing`",
        sys: &[],
        read: |s, e| store(s, e, |st| flag(st.failing || st.failed)),
    },
    Family {
        name: "culex_store_commit_failures_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Store,
        labels: "",
        help: "Store commit attempts that failed (each retry counts).",
        doc: "commit attempts that failed (each retry counts)",
        sys: &[],
        read: |s, e| store(s, e, |st| st.commit_failures as f64),
    },
];

#[cfg(test)]
mod tests;
