//! The cluster link's families, when the node is part of a cluster.

use std::sync::atomic::Ordering::Relaxed;

use super::*;

/// In the order of docs/metrics.md.
pub(super) static CLUSTER: &[Family] = &[
    Family {
        name: "culex_cluster_backplane_connected",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "1 while the node has its NATS connection and JetStream stream, else 0.",
        doc: "1 while the node has its NATS connection and JetStream stream, else 0 (`/readyz` answers 503 meanwhile)",
        sys: &["cluster/backplane_connected"],
        read: |s, e| cluster(s, e, |st| flag(st.connected())),
    },
    Family {
        name: "culex_cluster_connects_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Times the node set up its backplane connection.",
        doc: "times the node set up its backplane connection (NATS reconnects underneath are not counted)",
        sys: &[],
        read: |s, e| cluster(s, e, |st| st.connects.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_messages_out_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Copies of messages published on this node handed to the backplane, one per node that wanted each.",
        doc: "copies of messages published on this node handed to the backplane, one per other node with a matching subscription (QoS 0 sent; QoS 1/2 stored by JetStream; a QoS 1/2 message no other node wanted is stored once all the same, for this node's persistent sessions)",
        sys: &["cluster/messages/sent"],
        read: |s, e| cluster(s, e, |st| st.messages_out.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_messages_in_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Messages from other nodes delivered into this node's router.",
        doc: "messages from other nodes delivered into this node's router",
        sys: &["cluster/messages/received"],
        read: |s, e| cluster(s, e, |st| st.messages_in.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_unrouted_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Messages published on this node that no other node had a subscription for.",
        doc: "messages published on this node that no other node had a subscription for: not sent to any (interest routing)",
        sys: &[],
        read: |s, e| cluster(s, e, |st| st.unrouted.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_remote_filters",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Subscription filters of other nodes known here, for routing.",
        doc: "subscription filters of the other nodes (each node's distinct filters, a shared one by its topic part), read from the cluster's interest bucket; a message goes only to nodes with a matching one",
        sys: &[],
        read: |s, e| cluster(s, e, |st| st.remote_filters.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_interest_updates_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "This node's filters written to or removed from the cluster's interest bucket.",
        doc: "this node's filters written to (first subscription here) or removed from (last one gone) the cluster's interest bucket",
        sys: &[],
        read: |s, e| cluster(s, e, |st| st.interest_updates.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_interest_sync_timeouts_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "SUBACKs sent before every other live node confirmed it knew the new filter.",
        doc: "SUBACKs of a new filter sent after 2 s without every other live node confirming it knew of it (a node dying, or the backplane down): messages published elsewhere just after such a SUBACK may miss the subscription",
        sys: &[],
        read: |s, e| cluster(s, e, |st| st.interest_sync_timeouts.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_lag_messages",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Cluster,
        labels: "`stage`: `queued` (in the link's session here), `pending` (sent to JetStream, not yet confirmed)",
        help: "QoS 1/2 messages published here that the backplane does not have yet.",
        doc: "QoS 1/2 messages published here that the backplane does not have yet",
        sys: &[],
        read: |s, e| {
            if let Some(st) = s.counters.cluster.get() {
                e(&[("stage", "queued")], st.queued.load(Relaxed) as f64);
                e(&[("stage", "pending")], st.pending_out.load(Relaxed) as f64);
            }
        },
    },
    Family {
        name: "culex_cluster_slow_consumer_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Times NATS dropped QoS 0 messages from other nodes because this node read too slowly.",
        doc: "times NATS dropped QoS 0 messages from other nodes because this node read too slowly (events, not messages; QoS 1/2 are never dropped this way)",
        sys: &[],
        read: |s, e| cluster(s, e, |st| st.slow_consumer.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_claims_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "`direction`: `sent` (a client connected here), `yielded` (another node's claim taken: our client of that identifier, if any, got DISCONNECT 0x8E)",
        help: "Client identifier claims, by direction.",
        doc: "client identifier claims that keep identifiers unique in the cluster",
        sys: &[],
        read: |s, e| {
            if let Some(st) = s.counters.cluster.get() {
                e(&[("direction", "sent")], st.claims_sent.load(Relaxed) as f64);
                e(&[("direction", "yielded")], st.claims_yielded.load(Relaxed) as f64);
            }
        },
    },
    Family {
        name: "culex_cluster_sessions_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "`event`: `in` (a client resumed here a session another node held), `out` (handed to another node), `recovered` (the node that held it was gone: rebuilt here from the cluster's record and the stream), `lost` (the node that held it was gone and left no record, or the stream could not be read), `transfer_failed` (the move failed; the client was refused and the session stayed), `recorded` (a session's record written to the cluster, or removed), `stale_dropped` (an offline copy ended here because another node holds the session: it moved on while this node was down)",
        help: "Persistent sessions moved between nodes, by event.",
        doc: "persistent sessions that followed their client to another node",
        sys: &[],
        read: |s, e| {
            if let Some(st) = s.counters.cluster.get() {
                e(&[("event", "in")], st.sessions_in.load(Relaxed) as f64);
                e(&[("event", "out")], st.sessions_out.load(Relaxed) as f64);
                e(&[("event", "recovered")], st.sessions_recovered.load(Relaxed) as f64);
                e(&[("event", "lost")], st.sessions_lost.load(Relaxed) as f64);
                e(&[("event", "recorded")], st.session_records.load(Relaxed) as f64);
                // Counted where the copy ends: the router keeps one a client is using.
                e(
                    &[("event", "stale_dropped")],
                    s.router.stats.sessions_stale_dropped as f64,
                );
                e(
                    &[("event", "transfer_failed")],
                    st.session_transfer_failures.load(Relaxed) as f64,
                );
            }
        },
    },
    Family {
        name: "culex_cluster_shared_memberships",
        kind: Kind::Gauge,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Shared subscription groups with members on other nodes, as pairs of node and group known here.",
        doc: "shared subscription groups with members on other nodes (pairs of node and group), from the cluster's interest bucket, live nodes only; a message to a group with members on several nodes goes to one of them",
        sys: &[],
        read: |s, e| cluster(s, e, |st| st.shared_memberships.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_publish_failures_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Publications to JetStream that failed and were retried.",
        doc: "publications to JetStream that failed (timeout, no leader) and were retried; the local message stays unacknowledged meanwhile",
        sys: &[],
        read: |s, e| cluster(s, e, |st| st.publish_failures.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_dropped_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "`reason`: `queue_full` (the link's session here was full: oldest dropped), `qos0_offline` (QoS 0 while the backplane was down), `too_large` (above the NATS servers' `max_payload`), `no_stream` (a QoS 1/2 copy for a node whose stream is missing: removed from the cluster), `unreadable` (a backplane message that is not a Culex envelope), `replay_limit` (read back from the stream for a session whose node died, beyond 100,000 messages), `late_copy` (a copy for a session that had just moved to another node, which could not be passed on to it: that node did not answer in three attempts, or its session was gone, or its queue full)",
        help: "Messages the cluster link dropped, by reason.",
        doc: "messages the cluster link dropped",
        sys: &[],
        read: |s, e| {
            if let Some(st) = s.counters.cluster.get() {
                e(&[("reason", "queue_full")], st.dropped_queue_full.load(Relaxed) as f64);
                e(&[("reason", "qos0_offline")], st.dropped_qos0.load(Relaxed) as f64);
                e(&[("reason", "too_large")], st.dropped_too_large.load(Relaxed) as f64);
                e(&[("reason", "no_stream")], st.dropped_no_stream.load(Relaxed) as f64);
                e(&[("reason", "unreadable")], st.bad_messages.load(Relaxed) as f64);
                e(&[("reason", "replay_limit")], st.dropped_replay.load(Relaxed) as f64);
                e(&[("reason", "late_copy")], st.dropped_late.load(Relaxed) as f64);
            }
        },
    },
    Family {
        name: "culex_cluster_late_copies_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Copies for sessions that had just moved to another node, passed on to it.",
        doc: "QoS 1/2 copies that reached this node for a persistent session after it had moved to another node (sent before the sender knew of the move), passed on to that node; see docs/cluster.md",
        sys: &[],
        read: |s, e| cluster(s, e, |st| st.late_passed_on.load(Relaxed) as f64),
    },
    Family {
        name: "culex_cluster_move_duplicates_total",
        kind: Kind::Counter,
        unit: None,
        group: Group::Cluster,
        labels: "",
        help: "Second copies of a message that a session moving here got from both nodes, kept once.",
        doc: "QoS 1/2 messages that a persistent session moving to this node got twice (in the image from its old node and queued here during the move, or passed on late by the old node), delivered once; see docs/cluster.md",
        sys: &[],
        read: |s, e| {
            if s.counters.cluster.get().is_some() {
                e(&[], s.router.stats.move_duplicates as f64);
            }
        },
    },
];
