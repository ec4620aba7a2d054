//! Configuration for Culex, an MQTT broker.
//!
//! The configuration model is [`Config`]. It can be loaded from two syntaxes
//! with [`load_file`]:
//!
//! * **TOML** (any path ending in `.toml`), with sections `[[listeners]]`,
//!   `[security]`, `[limits]`, `[sessions]`, `[persistence]`, `[mqtt]`,
//!   `[metrics]`, `[sys]` and `[log]`; every key can be
//!   overridden from the environment as `CULEX__SECTION__KEY`, e.g.
//!   `CULEX__LIMITS__MAX_INFLIGHT_MESSAGES=50`.
//! * **mosquitto.conf** syntax (every other path): one `option value` per
//!   line, as understood by Mosquitto 2, for the options Culex supports.
//!
//! Both syntaxes are checked by the same validation ([`Config::validate`]) and
//! every problem is reported at once, each naming the file, the line (where
//! known), the option, what was wrong and what is allowed; see
//! [`ConfigError`]. `docs/configuration.md` in the repository describes every
//! option and the differences from Mosquitto.
//!
//! Defaults are defined in exactly one place: the [`Default`] impls of the
//! model types below (plus [`Config::embedded_default`], which is
//! `Config::default()` with the metrics endpoint on 127.0.0.1:9234 and
//! persistence enabled).

// A dependency the library does not use fails the lint build (`toml` sat here unused).
// Unit-test builds also see the dev-dependencies, so the check is for the library itself.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod bridge;
mod bridges;
#[cfg(test)]
mod cluster_tests;
mod duration;
mod error;
mod listener;
mod mosquitto;
mod options;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod test_util;
pub mod tls_ciphers;
mod toml_format;
mod validate;

pub use error::{ConfigError, Diagnostic};
pub use listener::{Listener, ListenerProtocol, SocketDomain, Tls, TlsVersion};
pub use options::{numeric_option_edges, OptionEdges};

/// The largest value of MQTT's variable byte integer, and so the largest
/// packet (and payload) size MQTT can express: 268435455 bytes (256 MiB - 1).
pub const MQTT_MAX_PACKET_SIZE: u32 = 268_435_455;

/// Default [`Limits::max_packet_size`]: 16 MiB.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 16 * 1024 * 1024;

/// The port a broker listens on when nothing else is said: 1883.
pub const DEFAULT_PORT: u16 = 1883;

/// Where the embedded default configuration (`culex` with no `-c` and no `-p`) serves
/// metrics: 127.0.0.1:9234.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9234);

/// Default `$SYS` update interval: 10 seconds (as Mosquitto).
pub const DEFAULT_SYS_INTERVAL: Duration = Duration::from_secs(10);

/// The store's default file name inside the data directory (`persistence_file`).
pub const DEFAULT_STORE_FILE: &str = "culex.redb";

/// Default [`Persistence::dir`]: `culex-data`, relative to the broker's working directory
/// (like Mosquitto's `persistence_location`).
pub const DEFAULT_DATA_DIR: &str = "culex-data";

/// Default [`Persistence::batch_delay`]: 10 ms.
pub const DEFAULT_BATCH_DELAY: Duration = Duration::from_millis(10);

/// The largest [`Persistence::batch_delay`] allowed: 1 s.
pub const MAX_BATCH_DELAY: Duration = Duration::from_secs(1);

/// The longest duration any option accepts: 100 years (`100y`). Longer ones would overflow
/// the clock arithmetic they feed and mean "never" anyway; leave the option out (or write
/// `never` in TOML) for that.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Default [`Limits::max_queued_bytes`]: 64 MiB, so that a client that stops reading can pin
/// no more than that however large the messages (1,000 queued 1 MB messages would be 1 GB).
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 64 * 1024 * 1024;

/// Default [`Limits::auth_failure_limit`].
pub const DEFAULT_AUTH_FAILURE_LIMIT: u32 = 10;

/// Default [`Limits::slow_client_timeout`]: 30 s.
pub const DEFAULT_SLOW_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What happens to a QoS 1/2 message that would overflow an online subscriber's queue
/// ([`Limits::queue_full_policy`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum QueueFullPolicy {
    /// Queue it and hold the publisher's acknowledgement until the queue drains. Written
    /// `block`. The default.
    #[default]
    Block,
    /// Drop it (counted). Written `drop`.
    Drop,
}

impl QueueFullPolicy {
    /// Every name, for messages.
    pub const NAMES: &'static [&'static str] = &["block", "drop"];

    /// Parses one of [`QueueFullPolicy::NAMES`].
    pub fn parse(text: &str) -> Option<QueueFullPolicy> {
        match text {
            "block" => Some(QueueFullPolicy::Block),
            "drop" => Some(QueueFullPolicy::Drop),
            _ => None,
        }
    }

    /// The name used in both syntaxes.
    pub fn name(self) -> &'static str {
        match self {
            QueueFullPolicy::Block => "block",
            QueueFullPolicy::Drop => "drop",
        }
    }
}

/// The complete broker configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where the broker accepts MQTT connections. Never empty in a validated
    /// configuration.
    pub listeners: Vec<Listener>,
    /// Authentication settings: for every listener, or, when
    /// `per_listener_settings` is `true`, for none (each listener has its
    /// own); see [`Config::security_for`].
    pub security: Security,
    /// Mosquitto's `per_listener_settings`: whether each listener has its own
    /// `allow_anonymous`, `password_file` and `acl_file`
    /// ([`Listener::security`]). Default `false`: [`Config::security`]
    /// applies to all listeners. A top-level key in TOML.
    pub per_listener_settings: bool,
    /// Mosquitto's `user`: when the broker starts as root, the user it switches to once the
    /// listeners are bound and the store and log files are open. `None` means `culex`, or
    /// `nobody` if no `culex` user exists (Mosquitto's rule for its `mosquitto` user);
    /// `root` keeps root. Without root privileges it has no effect. A top-level key in TOML.
    pub user: Option<String>,
    /// Resource limits.
    pub limits: Limits,
    /// Session and client identifier settings.
    pub sessions: Sessions,
    /// The on-disk store of retained messages and persistent sessions.
    pub persistence: Persistence,
    /// MQTT protocol feature settings.
    pub mqtt: Mqtt,
    /// The metrics and health HTTP endpoint.
    pub metrics: Metrics,
    /// The `$SYS` topic tree.
    pub sys: Sys,
    /// Logging.
    pub log: Log,
    /// Scale-out over a NATS JetStream backplane; off unless `backplane` is set.
    pub cluster: Cluster,
    /// Bridges to remote brokers: mosquitto.conf `connection` blocks or TOML `[[bridges]]`,
    /// already validated ([`crate::bridge::BridgeConfig::validate`]). Not settable from the
    /// environment.
    pub bridges: Vec<crate::bridge::BridgeConfig>,
}

/// Default [`Cluster::name`]: `culex`.
pub const DEFAULT_CLUSTER_NAME: &str = "culex";

/// Default [`Cluster::replicas`]: 3, so that the backplane keeps every stored message through
/// the loss of one NATS server.
pub const DEFAULT_CLUSTER_REPLICAS: u8 = 3;

/// Several Culex nodes acting as one broker over NATS JetStream (`[cluster]`; mosquitto.conf
/// `cluster_*`). Nothing of it runs while [`Cluster::backplane`] is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// NATS server URLs (`nats://HOST:PORT`, `tls://HOST:PORT`); empty (the default): no
    /// cluster.
    pub backplane: Vec<String>,
    /// This node's name, unique in the cluster (letters, digits, `-`, `_`). Required with a
    /// backplane.
    pub node_name: Option<String>,
    /// A NATS credentials file (`.creds`: JWT and NKey seed), if the servers require one.
    pub credentials: Option<PathBuf>,
    /// The cluster's name: the prefix of its NATS subjects, streams and buckets, so that
    /// several clusters can share one NATS system. Default [`DEFAULT_CLUSTER_NAME`].
    pub name: String,
    /// Replicas of the JetStream streams and buckets (1 to 5; at most the number of NATS
    /// servers). Default [`DEFAULT_CLUSTER_REPLICAS`].
    pub replicas: u8,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            backplane: Vec::new(),
            node_name: None,
            credentials: None,
            name: DEFAULT_CLUSTER_NAME.to_owned(),
            replicas: DEFAULT_CLUSTER_REPLICAS,
        }
    }
}

impl Cluster {
    /// Whether clustering is configured.
    pub fn enabled(&self) -> bool {
        !self.backplane.is_empty()
    }
}

/// The HTTP endpoint serving `/metrics` (Prometheus), `/healthz` and `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metrics {
    /// Address and port to serve on (`IP:PORT`; port 0 picks a free one). `None`, the
    /// default for configuration files, serves nothing. mosquitto.conf: `metrics_listener`.
    pub listen: Option<SocketAddr>,
}

/// The `$SYS/broker/...` topics the broker publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sys {
    /// How often the tree is updated; zero disables it. Default 10 s. TOML: whole seconds
    /// (`interval = 10`) or a duration string (`"10s"`); mosquitto.conf: `sys_interval N`.
    pub interval: Duration,
}

impl Default for Sys {
    fn default() -> Self {
        Sys {
            interval: DEFAULT_SYS_INTERVAL,
        }
    }
}

/// Logging settings. `RUST_LOG` and `culex -v` override the level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    /// Human-readable lines (the default) or JSON lines.
    pub format: LogFormat,
    /// The most verbose level logged. Default `info`.
    pub level: LogLevel,
    /// `connection_messages`: log each client's connect and disconnect at INFO. Default
    /// `true`; refusals are logged either way.
    pub connection_messages: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::default(),
            level: LogLevel::default(),
            connection_messages: true,
        }
    }
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text. Written `text`.
    #[default]
    Text,
    /// One JSON object per line. Written `json`.
    Json,
}

impl LogFormat {
    /// Every name, for messages.
    pub const NAMES: &'static [&'static str] = &["text", "json"];

    /// Parses `text` or `json`.
    pub fn parse(text: &str) -> Option<LogFormat> {
        match text {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    /// The name used in both syntaxes.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The most verbose level logged (`[log] level`; mosquitto.conf `log_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing. Written `off` (mosquitto.conf `log_type none`).
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Informational messages too (connections, reloads). The default.
    #[default]
    Info,
    /// Debugging detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// Every name, least verbose first, for messages.
    pub const NAMES: &'static [&'static str] = &["off", "error", "warn", "info", "debug", "trace"];

    /// Parses one of [`LogLevel::NAMES`].
    pub fn parse(text: &str) -> Option<LogLevel> {
        Some(match text {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }

    /// The name, as a `tracing` filter directive understands it.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Authentication and authorisation settings: global (`[security]`), or of
/// one listener when [`Config::per_listener_settings`] is `true`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Security {
    /// Whether clients that connect without a username may connect.
    ///
    /// `Security::default()` has `true`, but when a configuration *file*
    /// defines its own listeners and does not set this option, the loader
    /// sets it to `false` (Mosquitto 2 behaviour: a broker reachable from
    /// the network is not open by default). Per-listener settings likewise
    /// default to `false`.
    pub allow_anonymous: bool,
    /// Mosquitto password file (`user:hash` lines); `None` means no
    /// password checks. Relative to the working directory.
    pub password_file: Option<PathBuf>,
    /// Mosquitto ACL file; `None` means no topic access control.
    /// Relative to the working directory.
    pub acl_file: Option<PathBuf>,
    /// `use_username_as_clientid`: the authenticated user name replaces the client
    /// identifier, so a user has one session; clients without a user name are refused as
    /// not authorised (as in Mosquitto). Default `false`.
    pub use_username_as_clientid: bool,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            use_username_as_clientid: false,
        }
    }
}

impl Security {
    /// The per-listener default: anonymous clients refused, no files.
    pub fn per_listener_default() -> Security {
        Security {
            allow_anonymous: false,
            ..Security::default()
        }
    }
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most QoS 1 and 2 messages in flight to one client at once (also sent
    /// to MQTT v5 clients as Receive Maximum). Default 20. In configuration
    /// files `0` means unlimited and is stored as 65535, the protocol maximum.
    pub max_inflight_messages: u16,
    /// `queue_full_policy`: what happens to a QoS 1/2 message that would overflow an
    /// **online** subscriber's queue. `block` (the default) queues it and holds its
    /// publisher's acknowledgement until the queue drains (publishers slow down to the pace of
    /// their subscribers; nothing acknowledged is dropped); `drop` drops it (counted), as
    /// Mosquitto does. Offline sessions always drop (counted).
    pub queue_full_policy: QueueFullPolicy,
    /// `memory_limit`: bytes (topic and payload) queued across all sessions, 0 (the
    /// default) for no global limit. Beyond it, a QoS 1/2 message for an online subscriber is
    /// handled as if its queue were full (held under `queue_full_policy block`, else dropped),
    /// and one for an offline session is dropped (counted).
    pub memory_limit: u64,
    /// `auth_failure_limit`: failed password logins in a row (each within a minute of the
    /// previous) from one source address before that address is refused without a check for
    /// 1 s, doubling with each further failure up to 60 s; a success clears it. Default 10;
    /// 0 turns the limiter off.
    pub auth_failure_limit: u32,
    /// `slow_client_timeout`: a subscriber that holds publishers back this long without
    /// acknowledging anything is disconnected (MQTT 5: 0x97 Quota exceeded) and its queue
    /// trimmed to the limits. Default 30 s; 0 never disconnects.
    pub slow_client_timeout: Duration,
    /// Bytes (topic and payload) of QoS 1/2 messages in flight to one client: a message
    /// starts while fewer are in flight, so one larger than the limit still goes, alone, as
    /// in Mosquitto. `0` (the default) means no byte limit.
    pub max_inflight_bytes: u64,
    /// Most messages queued for one client (beyond those in flight).
    /// Default 1000. Must be at least 1: unlike Mosquitto, `0` ("unlimited")
    /// is an error, because every queue in Culex is bounded.
    pub max_queued_messages: usize,
    /// Most message bytes (topic and payload) waiting for one client: its session queue and
    /// what its connection has not written yet. Default [`DEFAULT_MAX_QUEUED_BYTES`] (64 MiB;
    /// Mosquitto's default is no limit); `0` means no byte limit, the message count limit
    /// still applies.
    pub max_queued_bytes: u64,
    /// Largest PUBLISH payload accepted, in bytes; `0` (the default) means no
    /// limit other than `max_packet_size`. At most 268435455.
    pub message_size_limit: u32,
    /// Largest MQTT packet accepted, in bytes, 20 to 268435455. The default
    /// is 16 MiB (16777216), stricter than Mosquitto's 268435455, to bound
    /// the memory one client can make the broker allocate.
    pub max_packet_size: u32,
    /// Largest keep alive, in seconds, a client may use; clients asking for
    /// more are told (MQTT v5) or refused (v3). Default 65535.
    pub max_keepalive: u16,
    /// Most client connections at once; `None` (the default) is unlimited.
    /// Written `-1` in configuration files, like Mosquitto.
    pub max_connections: Option<usize>,
    /// Most levels in a topic name or filter (`a/b/c` has three); deeper ones are refused
    /// (PUBLISH acknowledged with 0x90 / not routed, SUBSCRIBE answered 0x8F). Default 200,
    /// Mosquitto's fixed limit.
    pub max_topic_levels: u16,
    /// Longest topic name or filter, in bytes (1 to 65535, the MQTT maximum and the default);
    /// longer ones are refused like too-deep ones.
    pub max_topic_length: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            max_inflight_bytes: 0,
            queue_full_policy: QueueFullPolicy::Block,
            memory_limit: 0,
            auth_failure_limit: DEFAULT_AUTH_FAILURE_LIMIT,
            slow_client_timeout: DEFAULT_SLOW_CLIENT_TIMEOUT,
            message_size_limit: 0,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            max_keepalive: 65535,
            max_connections: None,
            max_topic_levels: 200,
            max_topic_length: 65535,
        }
    }
}

/// Session and client identifier settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    /// Whether a client may connect with an empty client identifier (the
    /// broker then assigns one). Default `true`.
    pub allow_zero_length_clientid: bool,
    /// Prefix of client identifiers the broker assigns. Default `"auto-"`.
    pub auto_id_prefix: String,
    /// `clientid_prefixes`: when set, only clients whose identifier starts with it may
    /// connect (others are refused as not authorised, as in Mosquitto). Default: none.
    pub clientid_prefixes: Option<String>,
    /// How long a persistent session of a disconnected client is kept;
    /// `None` (the default) keeps it until the client cleans it.
    pub persistent_client_expiration: Option<Duration>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            allow_zero_length_clientid: true,
            auto_id_prefix: "auto-".to_owned(),
            clientid_prefixes: None,
            persistent_client_expiration: None,
        }
    }
}

/// The on-disk store of retained messages and persistent sessions (with their queued and
/// in-flight QoS 1 and 2 messages). TOML: `[persistence]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    /// Whether state is stored on disk and restored at startup. Default `false` for
    /// configuration files (as Mosquitto's `persistence false`); `true` in
    /// [`Config::embedded_default`]. mosquitto.conf: `persistence`.
    pub enabled: bool,
    /// The directory holding the store (the file `culex.redb`), created if missing.
    /// Relative paths are relative to the broker's working directory. Default
    /// [`DEFAULT_DATA_DIR`]. mosquitto.conf: `persistence_location`.
    pub dir: PathBuf,
    /// The store's file name inside `dir` (`persistence_file`). Default `culex.redb`. Two
    /// brokers may share a directory with different files: each file has its own lock. (The
    /// format is Culex's own: a Mosquitto `mosquitto.db` cannot be read, so do not name it.)
    pub file: String,
    /// When commits are made durable (fsync). Default [`SyncPolicy::Always`].
    /// mosquitto.conf: `persistence_sync` (a Culex extension).
    pub sync: SyncPolicy,
    /// With [`SyncPolicy::Batched`], how long the store waits after the first change of a
    /// batch for more before committing it; 0 to [`MAX_BATCH_DELAY`]. Default
    /// [`DEFAULT_BATCH_DELAY`]. TOML: a duration string such as `"10ms"`; mosquitto.conf:
    /// `persistence_batch_delay MS`, whole milliseconds (a Culex extension).
    pub batch_delay: Duration,
}

impl Default for Persistence {
    fn default() -> Self {
        Persistence {
            enabled: false,
            dir: PathBuf::from(DEFAULT_DATA_DIR),
            file: DEFAULT_STORE_FILE.to_owned(),
            sync: SyncPolicy::default(),
            batch_delay: DEFAULT_BATCH_DELAY,
        }
    }
}

/// When the store makes its commits durable (`[persistence] sync`; mosquitto.conf
/// `persistence_sync`). Changes are committed in batches (group commit) whatever the
/// policy; see `docs/configuration.md` for the trade-off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SyncPolicy {
    /// Every batch is fsynced as soon as the changes waiting have been drained into it.
    /// Written `always`. The default: group commit already puts everything that arrives
    /// during one fsync into the next, so it is also the fastest under load.
    #[default]
    Always,
    /// The store waits up to [`Persistence::batch_delay`] to grow a batch, then fsyncs it.
    /// Written `batched`. Fewer fsyncs when many publishers trickle; slower otherwise.
    Batched,
    /// Batches are committed without fsync. Written `never`.
    Never,
}

impl SyncPolicy {
    /// Every name, for messages.
    pub const NAMES: &'static [&'static str] = &["always", "batched", "never"];

    /// Parses one of [`SyncPolicy::NAMES`].
    pub fn parse(text: &str) -> Option<SyncPolicy> {
        match text {
            "always" => Some(SyncPolicy::Always),
            "batched" => Some(SyncPolicy::Batched),
            "never" => Some(SyncPolicy::Never),
            _ => None,
        }
    }

    /// The name used in both syntaxes.
    pub fn name(self) -> &'static str {
        match self {
            SyncPolicy::Always => "always",
            SyncPolicy::Batched => "batched",
            SyncPolicy::Never => "never",
        }
    }
}

/// MQTT protocol feature settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt {
    /// Whether retained messages are supported. Default `true`.
    pub retain_available: bool,
    /// Highest QoS the broker supports: 0, 1 or 2 (a plain `u8`, checked by
    /// [`Config::validate`]). Default 2.
    pub max_qos: u8,
    /// Whether messages are delivered with the subscription's QoS even when
    /// published with a lower one. Default `false`.
    pub upgrade_outgoing_qos: bool,
    /// `check_retain_source`: before a retained message is sent to a new subscriber, check
    /// that its publisher may still write its topic (the ACL may have changed since);
    /// messages whose publisher lost the right are not sent. Default `true`, as in Mosquitto.
    /// Retained messages recovered from the store after a restart carry no publisher and are
    /// sent.
    pub check_retain_source: bool,
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            retain_available: true,
            max_qos: 2,
            upgrade_outgoing_qos: false,
            check_retain_source: true,
        }
    }
}

impl Default for Config {
    /// What a configuration file that sets nothing means: [`Config::embedded_default`]
    /// without the metrics endpoint (a file serves metrics only when it says so) and
    /// without persistence (Mosquitto's `persistence false`).
    fn default() -> Self {
        Config {
            listeners: Listener::loopback(DEFAULT_PORT),
            security: Security::default(),
            per_listener_settings: false,
            user: None,
            limits: Limits::default(),
            sessions: Sessions::default(),
            persistence: Persistence::default(),
            mqtt: Mqtt::default(),
            metrics: Metrics::default(),
            sys: Sys::default(),
            log: Log::default(),
            cluster: Cluster::default(),
            bridges: Vec::new(),
        }
    }
}

impl Config {
    /// Embedded default used when `culex` runs with no arguments: listeners
    /// `127.0.0.1:1883` and `[::1]:1883`, `allow_anonymous = true`, metrics on
    /// [`DEFAULT_METRICS_LISTEN`], persistence enabled in [`DEFAULT_DATA_DIR`],
    /// all other defaults. `configs/default.toml` in the repository is this
    /// configuration written out.
    pub fn embedded_default() -> Config {
        Config {
            metrics: Metrics {
                listen: Some(DEFAULT_METRICS_LISTEN),
            },
            persistence: Persistence {
                enabled: true,
                ..Persistence::default()
            },
            ..Config::default()
        }
    }

    /// `culex -p PORT` without a configuration file: the embedded default on
    /// another port (loopback only, IPv4 and IPv6), without the metrics
    /// endpoint and without persistence, so that throwaway instances never
    /// clash on its port nor share a store.
    pub fn embedded_on_port(port: u16) -> Config {
        Config {
            listeners: Listener::loopback(port),
            ..Config::default()
        }
    }

    /// The authentication settings that apply to clients of `listener`: its
    /// own with `per_listener_settings` (when it has them), otherwise the
    /// global [`Config::security`].
    pub fn security_for<'a>(&'a self, listener: &'a Listener) -> &'a Security {
        match (&listener.security, self.per_listener_settings) {
            (Some(own), true) => own,
            _ => &self.security,
        }
    }

    /// Checks the rules every configuration must satisfy (at least one
    /// listener, no duplicate listener, valid host names, every value in its
    /// range, TLS and security files that exist and can be read, TLS options
    /// that go together, a persistence directory that is a directory). Loading a file runs this already; call it after changing a
    /// `Config` by hand. The diagnostics of the error name no file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = validate::problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                diagnostics: problems
                    .into_iter()
                    .map(|p| Diagnostic {
                        file: Default::default(),
                        line: None,
                        key: p.key,
                        message: p.message,
                    })
                    .collect(),
            })
        }
    }
}

/// What loading produced: the configuration plus warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Things that did not stop loading but deserve the operator's attention
    /// (e.g. `FILE:LINE: option 'log_dest' is accepted but ignored by Culex`).
    /// Each names the file and line it is about.
    pub warnings: Vec<String>,
}

/// Loads a configuration file: a path ending in `.toml` is TOML (with
/// `CULEX__SECTION__KEY` environment overrides), anything else is
/// mosquitto.conf syntax.
///
/// Returns every problem found, not just the first; a missing or unreadable
/// file is an error naming the path.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    if is_toml_path(path) {
        toml_format::load(path, toml_format::culex_env_vars())
    } else {
        let mut loaded = mosquitto::load(path)?;
        let ignored: Vec<String> = toml_format::culex_env_vars()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        if !ignored.is_empty() {
            loaded.warnings.push(format!(
                "{}: environment variable(s) {} ignored: CULEX__ overrides apply only to TOML configuration files",
                path.display(),
                ignored.join(", ")
            ));
        }
        Ok(loaded)
    }
}

/// Whether `load_file` treats `path` as TOML (its name ends in `.toml`).
fn is_toml_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

#[cfg(test)]
mod robustness_tests;
