//! Every scalar option, once: its names, values, description and field.
//!
//! Adding an option is one entry here plus its behaviour; the loaders of both syntaxes,
//! validation, the environment overrides and the option tables of docs/configuration.md
//! (regenerated with `CULEX_UPDATE_DOCS=1 cargo test -p culex-config options::doc`) follow.

use super::{Field, Kind, Section, Spec, Value};
use crate::{LogFormat, LogLevel, QueueFullPolicy, SyncPolicy, MQTT_MAX_PACKET_SIZE};

const MAX_INT: i64 = i32::MAX as i64;

/// A [`Field::Config`] for a field stored as the file writes it.
macro_rules! field {
    (int $($f:ident).+) => {
        Field::Config {
            set: |c, v| v.int().map(|x| c.$($f).+ = x),
            get: |c| Some(Value::of_int(c.$($f).+)),
        }
    };
    (bool $($f:ident).+) => {
        Field::Config {
            set: |c, v| v.boolean().map(|x| c.$($f).+ = x),
            get: |c| Some(Value::Bool(c.$($f).+)),
        }
    };
    (string $($f:ident).+) => {
        Field::Config {
            set: |c, v| v.string().map(|x| c.$($f).+ = x),
            get: |c| Some(Value::Str(c.$($f).+.clone())),
        }
    };
    (seconds $($f:ident).+) => {
        Field::Config {
            set: |c, v| v.seconds().map(|x| c.$($f).+ = x),
            get: |c| Some(Value::Seconds(c.$($f).+)),
        }
    };
    (choice $t:ident $($f:ident).+) => {
        Field::Config {
            set: |c, v| v.choice($t::parse).map(|x| c.$($f).+ = x),
            get: |c| Some(Value::Str(c.$($f).+.name().to_owned())),
        }
    };
}

/// Every scalar option, in the order of docs/configuration.md.
pub(crate) const OPTIONS: &[Spec] = &[
    Spec {
        section: Section::Root,
        key: "per_listener_settings",
        conf_key: "per_listener_settings",
        kind: Kind::Bool,
        doc: "Whether each listener has its own `allow_anonymous`, `password_file`, `acl_file` \
              and `use_username_as_clientid` (see below). A top-level key in TOML: write it \
              before the first `[section]`.",
        field: field!(bool per_listener_settings),
    },
    Spec {
        section: Section::Root,
        key: "user",
        conf_key: "user",
        kind: Kind::Str,
        doc: "Started as root, the user the broker switches to once its listeners are bound; \
              unset means `culex`, or `nobody` when no `culex` user exists (see below). A \
              top-level key in TOML.",
        field: Field::Config {
            set: |c, v| v.string().map(|x| c.user = Some(x)),
            get: |c| c.user.clone().map(Value::Str),
        },
    },
    Spec {
        section: Section::Security,
        key: "allow_anonymous",
        conf_key: "allow_anonymous",
        kind: Kind::Bool,
        doc: "Whether clients may connect without a username. A file that defines listeners \
              and does not set it gets `false` (see below).",
        field: Field::Security {
            set: |s, v| v.boolean().map(|x| s.allow_anonymous = x),
            get: |s| Some(Value::Bool(s.allow_anonymous)),
        },
    },
    Spec {
        section: Section::Security,
        key: "password_file",
        conf_key: "password_file",
        kind: Kind::Path,
        doc: "Mosquitto password file (`user:hash` lines); unset: no password checks.",
        field: Field::Security {
            set: |s, v| v.path().map(|x| s.password_file = Some(x)),
            get: |s| s.password_file.clone().map(Value::Path),
        },
    },
    Spec {
        section: Section::Security,
        key: "acl_file",
        conf_key: "acl_file",
        kind: Kind::Path,
        doc: "Mosquitto ACL file; unset: no topic access control.",
        field: Field::Security {
            set: |s, v| v.path().map(|x| s.acl_file = Some(x)),
            get: |s| s.acl_file.clone().map(Value::Path),
        },
    },
    Spec {
        section: Section::Security,
        key: "use_username_as_clientid",
        conf_key: "use_username_as_clientid",
        kind: Kind::Bool,
        doc: "The authenticated user name replaces the client id (one session per user); \
              clients without a user name are refused as not authorised.",
        field: Field::Security {
            set: |s, v| v.boolean().map(|x| s.use_username_as_clientid = x),
            get: |s| Some(Value::Bool(s.use_username_as_clientid)),
        },
    },
    Spec {
        section: Section::Limits,
        key: "max_inflight_messages",
        conf_key: "max_inflight_messages",
        kind: Kind::Int {
            min: 0,
            max: 65535,
            allowed: "0 to 65535 (0 means unlimited, the same as 65535)",
        },
        doc: "QoS 1 and 2 messages in flight to one client at once (also the MQTT v5 Receive \
              Maximum). `0` means unlimited and is stored as 65535.",
        field: Field::Config {
            set: |c, v| {
                let n: u16 = v.int()?;
                c.limits.max_inflight_messages = if n == 0 { u16::MAX } else { n };
                Ok(())
            },
            get: |c| Some(Value::of_int(c.limits.max_inflight_messages)),
        },
    },
    Spec {
        section: Section::Limits,
        key: "max_inflight_bytes",
        conf_key: "max_inflight_bytes",
        kind: Kind::Int {
            min: 0,
            max: i64::MAX,
            allowed: "0 (no byte limit) to 9223372036854775807",
        },
        doc: "Bytes (topic and payload) of QoS 1 and 2 messages in flight to one client. A \
              message starts while fewer bytes than this are in flight, so one larger than the \
              limit still goes, alone (Mosquitto's rule); the message count limit applies too. \
              `0` = no byte limit.",
        field: field!(int limits.max_inflight_bytes),
    },
    Spec {
        section: Section::Limits,
        key: "queue_full_policy",
        conf_key: "queue_full_policy",
        kind: Kind::Choice(QueueFullPolicy::NAMES),
        doc: "What happens to a QoS 1/2 message that would overflow an **online** subscriber's \
              queue. `block`: it is queued beyond the limit and its publisher's PUBACK/PUBREC is \
              held until the queue has drained to half its limits; the publisher's connection \
              stops reading while answers are owed (MQTT 5: its Receive Maximum runs out), so \
              publishers slow to the pace of their subscribers and nothing acknowledged is \
              dropped. `drop`: it is dropped and counted \
              (`culex_publish_dropped_total{reason=\"queue_full\"}`), as Mosquitto does. \
              Offline sessions and QoS 0 always drop (counted).",
        field: field!(choice QueueFullPolicy limits.queue_full_policy),
    },
    Spec {
        section: Section::Limits,
        key: "memory_limit",
        conf_key: "memory_limit",
        kind: Kind::Int {
            min: 0,
            max: i64::MAX,
            allowed: "0 (no limit) to 9223372036854775807",
        },
        doc: "Bytes (topic and payload) queued across all sessions; `0` = no global limit. \
              Beyond it a QoS 1/2 message for an **online** subscriber is handled as if its own \
              queue were full (held under `queue_full_policy block`, else dropped) and one for \
              an offline session is dropped (counted as `queue_full`). Bridges' \
              store-and-forward queues keep their own limits. Worst case memory for queued \
              messages: without it, `max_queued_messages` × largest message per session, plus \
              under `block` what publishers sent before they were told to wait (per publisher, \
              at most one read of 8 KB of packets and the 48 answers a connection may be \
              owed); with it, about this figure plus that overshoot.",
        field: field!(int limits.memory_limit),
    },
    Spec {
        section: Section::Limits,
        key: "auth_failure_limit",
        conf_key: "auth_failure_limit",
        kind: Kind::Int {
            min: 0,
            max: u32::MAX as i64,
            allowed: "0 (no limit) to 4294967295",
        },
        doc: "Failed password logins in a row (each within a minute of the previous) from one \
              source address before that address is refused without a password check (MQTT 5 \
              CONNACK 0x9F Connection rate exceeded, 3.1.1: server unavailable) for 1 s, \
              doubling with each further failure up to 60 s; a successful login clears it. \
              Logged once per source per minute, counted in `culex_auth_throttled_total`. `0`: \
              no limit.",
        field: field!(int limits.auth_failure_limit),
    },
    Spec {
        section: Section::Limits,
        key: "slow_client_timeout",
        conf_key: "slow_client_timeout",
        kind: Kind::Seconds,
        doc: "A subscriber that holds publishers back this long without acknowledging anything \
              is disconnected (MQTT 5: DISCONNECT 0x97 Quota exceeded), its queue trimmed to \
              the limits (drops counted) and the held acknowledgements released. A client \
              whose socket accepts nothing for this long (it stopped reading) is disconnected \
              too. `0`: never (a write that makes no progress still gives up after an hour).",
        field: field!(seconds limits.slow_client_timeout),
    },
    Spec {
        section: Section::Limits,
        key: "max_queued_messages",
        conf_key: "max_queued_messages",
        kind: Kind::Int {
            min: 1,
            max: MAX_INT,
            allowed: "1 to 2147483647",
        },
        doc: "Messages queued for one client beyond those in flight. Unlike Mosquitto, `0` \
              (unlimited) is refused: every queue in Culex is bounded.",
        field: field!(int limits.max_queued_messages),
    },
    Spec {
        section: Section::Limits,
        key: "max_queued_bytes",
        conf_key: "max_queued_bytes",
        kind: Kind::Int {
            min: 0,
            max: i64::MAX,
            allowed: "0 (no byte limit) to 9223372036854775807",
        },
        doc: "Message bytes (topic and payload) waiting for one client (default 64 MiB): its \
              session queue **and** what its connection has not yet written (QoS 0 beyond it \
              is dropped as `outbox_full`, QoS 1/2 handled as for a full queue). Mosquitto's \
              default is no limit; Culex's keeps a client that stops reading from pinning more \
              than this, however large the messages (1,000 queued 1 MB messages would \
              otherwise be 1 GB). `0` = no byte limit (the count limit still applies). Worst \
              case per client: this, plus one message larger than what is left (a message \
              always fits an empty queue), plus the in-flight window (`max_inflight_messages` \
              × message size, or `max_inflight_bytes`), plus the write buffer of one batch; a \
              client whose writes make no progress for `slow_client_timeout` is disconnected.",
        field: field!(int limits.max_queued_bytes),
    },
    Spec {
        section: Section::Limits,
        key: "message_size_limit",
        conf_key: "message_size_limit",
        kind: Kind::Int {
            min: 0,
            max: MQTT_MAX_PACKET_SIZE as i64,
            allowed: "0 (no limit) to 268435455",
        },
        doc: "Largest PUBLISH payload accepted, in bytes; `0` = no limit other than \
              `max_packet_size`.",
        field: field!(int limits.message_size_limit),
    },
    Spec {
        section: Section::Limits,
        key: "max_packet_size",
        conf_key: "max_packet_size",
        kind: Kind::Int {
            min: 20,
            max: MQTT_MAX_PACKET_SIZE as i64,
            allowed: "20 to 268435455",
        },
        doc: "Largest MQTT packet accepted, in bytes (default 16 MiB, stricter than \
              Mosquitto's 268435455, to bound what one client can make the broker allocate).",
        field: field!(int limits.max_packet_size),
    },
    Spec {
        section: Section::Limits,
        key: "max_keepalive",
        conf_key: "max_keepalive",
        kind: Kind::Int {
            min: 0,
            max: 65535,
            allowed: "0 to 65535",
        },
        doc: "Largest keep alive (seconds) a client may use; clients asking for more are told \
              (MQTT v5) or refused (v3).",
        field: field!(int limits.max_keepalive),
    },
    Spec {
        section: Section::Limits,
        key: "max_topic_levels",
        conf_key: "max_topic_levels",
        kind: Kind::Int {
            min: 1,
            max: 65535,
            allowed: "1 to 65535",
        },
        doc: "Most levels in a topic name or filter (Mosquitto's fixed limit is 200). A PUBLISH \
              beyond it is acknowledged with 0x90 Topic Name invalid (MQTT 5; 3.1.1 cannot say \
              why) and not routed, counted in \
              `culex_publish_dropped_total{reason=\"too_large\"}`; a filter beyond it gets \
              SUBACK 0x8F (3.1.1: 0x80).",
        field: field!(int limits.max_topic_levels),
    },
    Spec {
        section: Section::Limits,
        key: "max_topic_length",
        conf_key: "max_topic_length",
        kind: Kind::Int {
            min: 1,
            max: 65535,
            allowed: "1 to 65535",
        },
        doc: "Longest topic name or filter in bytes; refused like `max_topic_levels`.",
        field: field!(int limits.max_topic_length),
    },
    Spec {
        section: Section::Limits,
        key: "max_connections",
        conf_key: "max_connections",
        kind: Kind::Int {
            min: -1,
            max: MAX_INT,
            allowed: "-1 (unlimited) or 1 to 2147483647",
        },
        doc: "Most client connections at once; `-1`: unlimited.",
        field: Field::Config {
            set: |c, v| {
                let n: i64 = v.int()?;
                c.limits.max_connections = if n < 0 {
                    None
                } else {
                    Some(usize::try_from(n).map_err(|_| format!("value {n} is out of range"))?)
                };
                Ok(())
            },
            get: |c| {
                Some(
                    c.limits
                        .max_connections
                        .map_or(Value::Int(-1), Value::of_int),
                )
            },
        },
    },
    Spec {
        section: Section::Sessions,
        key: "allow_zero_length_clientid",
        conf_key: "allow_zero_length_clientid",
        kind: Kind::Bool,
        doc: "Whether a client may connect with an empty client id (the broker assigns one).",
        field: field!(bool sessions.allow_zero_length_clientid),
    },
    Spec {
        section: Section::Sessions,
        key: "auto_id_prefix",
        conf_key: "auto_id_prefix",
        kind: Kind::Str,
        doc: "Prefix of client ids the broker assigns. In mosquitto.conf the value is the rest \
              of the line.",
        field: field!(string sessions.auto_id_prefix),
    },
    Spec {
        section: Section::Sessions,
        key: "clientid_prefixes",
        conf_key: "clientid_prefixes",
        kind: Kind::Str,
        doc: "When set, only clients whose id starts with it may connect (others are refused \
              as not authorised, as in Mosquitto). The broker's own connections (bridges' local \
              sessions, the cluster link) are exempt; their ids (each bridge's \
              `local_clientid`, and in a cluster any id starting with `culex-cluster-`) are \
              refused to network clients (0x85 Client Identifier not valid).",
        field: Field::Config {
            set: |c, v| v.string().map(|x| c.sessions.clientid_prefixes = Some(x)),
            get: |c| c.sessions.clientid_prefixes.clone().map(Value::Str),
        },
    },
    Spec {
        section: Section::Sessions,
        key: "persistent_client_expiration",
        conf_key: "persistent_client_expiration",
        kind: Kind::Duration,
        doc: "How long the session of a disconnected persistent client is kept (see the \
              duration syntax below).",
        field: Field::Config {
            set: |c, v| {
                v.duration()
                    .map(|x| c.sessions.persistent_client_expiration = x)
            },
            get: |c| Some(Value::Duration(c.sessions.persistent_client_expiration)),
        },
    },
    Spec {
        section: Section::Persistence,
        key: "enabled",
        conf_key: "persistence",
        kind: Kind::Bool,
        doc: "Whether retained messages and persistent sessions are stored on disk and \
              restored at startup. `false` in a configuration file (as Mosquitto) and for \
              `culex -p PORT`; `true` in the embedded default (`culex` with no arguments).",
        field: field!(bool persistence.enabled),
    },
    Spec {
        section: Section::Persistence,
        key: "dir",
        conf_key: "persistence_location",
        kind: Kind::Path,
        doc: "The directory holding the store, created if missing; relative to the broker's \
              working directory.",
        field: Field::Config {
            set: |c, v| v.path().map(|x| c.persistence.dir = x),
            get: |c| Some(Value::Path(c.persistence.dir.clone())),
        },
    },
    Spec {
        section: Section::Persistence,
        key: "file",
        conf_key: "persistence_file",
        kind: Kind::Str,
        doc: "The store's file name inside `dir` (no `/`).",
        field: field!(string persistence.file),
    },
    Spec {
        section: Section::Persistence,
        key: "sync",
        conf_key: "persistence_sync",
        kind: Kind::Choice(SyncPolicy::NAMES),
        doc: "When commits are made durable (fsync); see the trade-off below. A Culex \
              extension.",
        field: field!(choice SyncPolicy persistence.sync),
    },
    Spec {
        section: Section::Persistence,
        key: "batch_delay",
        conf_key: "persistence_batch_delay",
        kind: Kind::Delay,
        doc: "With `sync = \"batched\"`, how long the store waits after the first change of a \
              batch for more. A Culex extension.",
        field: Field::Config {
            set: |c, v| v.delay().map(|x| c.persistence.batch_delay = x),
            get: |c| Some(Value::Delay(c.persistence.batch_delay)),
        },
    },
    Spec {
        section: Section::Mqtt,
        key: "retain_available",
        conf_key: "retain_available",
        kind: Kind::Bool,
        doc: "Whether retained messages are supported.",
        field: field!(bool mqtt.retain_available),
    },
    Spec {
        section: Section::Mqtt,
        key: "max_qos",
        conf_key: "max_qos",
        kind: Kind::Int {
            min: 0,
            max: 2,
            allowed: "0, 1 or 2",
        },
        doc: "Highest QoS the broker supports.",
        field: field!(int mqtt.max_qos),
    },
    Spec {
        section: Section::Mqtt,
        key: "upgrade_outgoing_qos",
        conf_key: "upgrade_outgoing_qos",
        kind: Kind::Bool,
        doc: "Deliver messages with the subscription's QoS even if they were published with a \
              lower one.",
        field: field!(bool mqtt.upgrade_outgoing_qos),
    },
    Spec {
        section: Section::Mqtt,
        key: "check_retain_source",
        conf_key: "check_retain_source",
        kind: Kind::Bool,
        doc: "Before a retained message goes to a new subscriber, check that its publisher may \
              still write its topic (the ACL may have changed since, e.g. by a reload); if not, \
              it is not sent (counted in `culex_acl_denied_total{action=\"read\"}`). As in \
              Mosquitto. Retained messages recovered from the store after a restart carry no \
              publisher and are sent.",
        field: field!(bool mqtt.check_retain_source),
    },
    Spec {
        section: Section::Metrics,
        key: "listen",
        conf_key: "metrics_listener",
        kind: Kind::SocketAddr,
        doc: "Serves `/metrics` (Prometheus), `/healthz` and `/readyz` over plain HTTP on this \
              IP address and port (port 0 picks a free one); unset: no endpoint.",
        field: Field::Config {
            set: |c, v| v.addr().map(|x| c.metrics.listen = Some(x)),
            get: |c| c.metrics.listen.map(Value::Addr),
        },
    },
    Spec {
        section: Section::Sys,
        key: "interval",
        conf_key: "sys_interval",
        kind: Kind::Seconds,
        doc: "Seconds between `$SYS` updates; `0` disables `$SYS`.",
        field: field!(seconds sys.interval),
    },
    Spec {
        section: Section::Log,
        key: "format",
        conf_key: "log_format",
        kind: Kind::Choice(LogFormat::NAMES),
        doc: "Human-readable lines (`text`) or one JSON object per line (`json`). A Culex \
              extension.",
        field: field!(choice LogFormat log.format),
    },
    Spec {
        section: Section::Log,
        key: "connection_messages",
        conf_key: "connection_messages",
        kind: Kind::Bool,
        doc: "An INFO line per client connect and disconnect; refusals are logged either way.",
        field: field!(bool log.connection_messages),
    },
    Spec {
        section: Section::Log,
        key: "level",
        // mosquitto.conf has `log_type`, which can be repeated; its reader maps it.
        conf_key: "",
        kind: Kind::Choice(LogLevel::NAMES),
        doc: "The most verbose level logged. mosquitto.conf: `log_type`, repeatable (below).",
        field: field!(choice LogLevel log.level),
    },
    Spec {
        section: Section::Cluster,
        key: "backplane",
        conf_key: "cluster_backplane",
        kind: Kind::Urls,
        doc: "The NATS servers (JetStream enabled) through which this node and the others act as \
              one broker; unset: a single node, no cluster code runs. See docs/cluster.md.",
        field: Field::Config {
            set: |c, v| v.urls().map(|x| c.cluster.backplane = x),
            get: |c| {
                (!c.cluster.backplane.is_empty()).then(|| Value::Urls(c.cluster.backplane.clone()))
            },
        },
    },
    Spec {
        section: Section::Cluster,
        key: "node_name",
        conf_key: "cluster_node_name",
        kind: Kind::Str,
        doc: "This node's name, unique in the cluster: letters, digits, `-` and `_`, at most 64. \
              Required with `backplane`.",
        field: Field::Config {
            set: |c, v| v.string().map(|x| c.cluster.node_name = Some(x)),
            get: |c| c.cluster.node_name.clone().map(Value::Str),
        },
    },
    Spec {
        section: Section::Cluster,
        key: "credentials",
        conf_key: "cluster_credentials",
        kind: Kind::Path,
        doc: "A NATS credentials file (`.creds`: user JWT and NKey seed) when the servers \
              require one.",
        field: Field::Config {
            set: |c, v| v.path().map(|x| c.cluster.credentials = Some(x)),
            get: |c| c.cluster.credentials.clone().map(Value::Path),
        },
    },
    Spec {
        section: Section::Cluster,
        key: "name",
        conf_key: "cluster_name",
        kind: Kind::Str,
        doc: "The cluster's name, the prefix of its NATS subjects, streams and buckets \
              (letters, digits, `-` and `_`), so that several clusters can share one NATS \
              system.",
        field: field!(string cluster.name),
    },
    Spec {
        section: Section::Cluster,
        key: "replicas",
        conf_key: "cluster_replicas",
        kind: Kind::Int {
            min: 1,
            max: 5,
            allowed: "1 to 5 (at most the number of NATS servers)",
        },
        doc: "Copies JetStream keeps of each stored message and retained message: 3 survives \
              the loss of one NATS server; 1 for a single NATS server.",
        field: field!(int cluster.replicas),
    },
];
