//! The bridge configuration model: plain structs with Mosquitto's option semantics, checked by
//! [`BridgeConfig::validate`]. Parsing (TOML `[[bridges]]`, mosquitto.conf `connection` blocks)
//! is in this crate's `bridges` and `toml_format` modules; running a bridge is `culex-bridge`'s,
//! which depends on this crate (never the reverse: the configuration needs no async runtime).

pub mod topic;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use culex_proto::QoS;

pub use topic::{Direction, TopicRule};

/// A bridge configuration that cannot work: names the bridge and the option (mosquitto.conf
/// spelling) and says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBridge {
    /// The bridge's `connection` name.
    pub bridge: String,
    /// The option, spelled as in mosquitto.conf (`topic`, `address`, `restart_timeout`, ...).
    pub option: &'static str,
    /// What is wrong and, where possible, how to fix it.
    pub why: String,
}

impl InvalidBridge {
    pub(crate) fn new(bridge: &str, option: &'static str, why: impl Into<String>) -> Self {
        InvalidBridge {
            bridge: bridge.to_string(),
            option,
            why: why.into(),
        }
    }
}

impl std::fmt::Display for InvalidBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bridge {:?}: option `{}`: {}",
            self.bridge, self.option, self.why
        )
    }
}

impl std::error::Error for InvalidBridge {}

/// The remote host of the Sber smart-home cloud broker.
pub const SBER_HOST: &str = "mqtt-partners.iot.sberdevices.ru";
/// The Sber broker's TLS port.
pub const SBER_PORT: u16 = 8883;
/// The local prefix under which the Sber preset mirrors the Sber topic tree.
pub const SBER_LOCAL_PREFIX: &str = "sber/";

/// MQTT version the bridge speaks to the remote (`bridge_protocol_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeProtocol {
    /// `mqttv311` (Mosquitto's default).
    V311,
    /// `mqttv50`.
    V5,
}

/// TLS protocol version pinned with `bridge_tls_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// `tlsv1.2`: TLS 1.2 only.
    Tls12,
    /// `tlsv1.3`: TLS 1.3 only.
    Tls13,
}

/// TLS to the remote (`bridge_cafile`, `bridge_capath`, `bridge_certfile`, `bridge_keyfile`,
/// `bridge_insecure`, `bridge_tls_version`). The platform's trusted roots are always loaded;
/// `cafile` and `capath` add to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeTls {
    /// PEM file of extra trusted CA certificates.
    pub cafile: Option<PathBuf>,
    /// Directory of extra trusted CA certificates (every `.pem` / `.crt` file in it).
    pub capath: Option<PathBuf>,
    /// PEM client certificate chain.
    pub certfile: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub keyfile: Option<PathBuf>,
    /// Accept a server certificate issued for another host name (the chain is still verified).
    /// Logged as a warning at every connect. Never a default.
    pub insecure: bool,
    /// Pin one TLS version; `None` allows TLS 1.2 and 1.3.
    pub version: Option<TlsVersion>,
}

/// When the bridge connects (`start_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartType {
    /// Connect at start and reconnect whenever the link drops.
    Automatic,
    /// Connect once `threshold` messages are queued; disconnect after `idle_timeout` without
    /// traffic.
    Lazy,
    /// Connect once at start; do not reconnect.
    Once,
}

/// One bridge: an outbound MQTT connection from the local broker to a remote one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// `connection NAME`: identifies the bridge in logs, errors and statistics.
    pub name: String,
    /// `address` / `addresses`: remote brokers, tried in order on every connect attempt.
    pub addresses: Vec<(String, u16)>,
    /// `topic` lines.
    pub topics: Vec<TopicRule>,
    /// `remote_username`.
    pub remote_username: Option<String>,
    /// `remote_password`.
    pub remote_password: Option<String>,
    /// `remote_clientid`: client id on the remote broker.
    pub remote_clientid: String,
    /// `local_clientid`: client id of the bridge's connection to the local broker.
    pub local_clientid: String,
    /// `cleansession` for the remote connection (Mosquitto's default: false, so the remote keeps
    /// the bridge's subscriptions and queued messages across reconnects).
    pub cleansession: bool,
    /// `local_cleansession` for the local connection (defaults to `cleansession`).
    pub local_cleansession: bool,
    /// `keepalive_interval` on the remote connection (a missed PINGRESP closes the link).
    pub keepalive: Duration,
    /// `restart_timeout BASE`: the smallest reconnect delay.
    pub backoff_min: Duration,
    /// `restart_timeout BASE CAP`: the largest reconnect delay.
    pub backoff_max: Duration,
    /// `try_private`: with MQTT 3.1.1, set the bridge bit in CONNECT (protocol level `0x84`) so
    /// a Mosquitto-compatible remote neither echoes our messages back nor clears their RETAIN.
    pub try_private: bool,
    /// `notifications`: publish `1`/`0` (retained) on connect/disconnect, locally.
    pub notifications: bool,
    /// `notifications_local_only`: publish the notifications on the local broker only (Culex's
    /// default: `true`, since remotes such as Sber refuse `$SYS`). `false` also publishes them
    /// on the remote, as Mosquitto does by default: `1` retained after each connect, `0` as the
    /// bridge's will (and before a clean disconnect).
    pub notifications_local_only: bool,
    /// `notification_topic`; `None` means `$SYS/broker/connection/<remote_clientid>/state`.
    pub notification_topic: Option<String>,
    /// `bridge_protocol_version`.
    pub protocol: BridgeProtocol,
    /// `bridge_outgoing_retain`: keep the RETAIN flag of messages sent to the remote.
    pub outgoing_retain: bool,
    /// `bridge_republish_on_connect` (Culex): after every (re)connect, send the remote the
    /// latest non-retained message of each `out` topic again, after the retained states and
    /// before the `in` subscriptions (clients of state-keeping clouds such as Sber re-publish
    /// their state on every connect). Off: only messages kept while the link was down go out.
    pub republish_on_connect: bool,
    /// `bridge_attempt_unsubscribe`: on every connect, UNSUBSCRIBE on the remote from the
    /// filters of `out`-only rules, so a persistent remote session does not keep sending what
    /// an earlier configuration subscribed to (Mosquitto's default: true; Sber preset: false).
    pub attempt_unsubscribe: bool,
    /// `round_robin`: with several addresses, each connect round starts at the address after
    /// the one last connected to; off (Mosquitto's default), every round starts at the first
    /// (the main broker) and the others are failovers.
    pub round_robin: bool,
    /// `bridge_receive_maximum`: the Receive Maximum announced to an MQTT 5 remote (how many
    /// QoS 1/2 messages it may send unacknowledged); `None`: not announced (65,535).
    pub receive_maximum: Option<u16>,
    /// `bridge_max_packet_size`: larger messages are not sent to the remote (dropped and
    /// counted), and larger packets from it close the link.
    pub max_packet_size: Option<u32>,
    /// TLS to the remote, if enabled.
    pub tls: Option<BridgeTls>,
    /// `start_type`.
    pub start_type: StartType,
    /// `threshold`: queued messages that make a lazy bridge connect.
    pub threshold: u32,
    /// `idle_timeout`: a lazy bridge disconnects after this long without traffic.
    pub idle_timeout: Duration,
    /// `bridge_bind_address`: local address for the outgoing socket.
    pub bind_address: Option<IpAddr>,
    /// Store-and-forward bound: `out` messages (QoS 1/2) queued while the remote is down. When
    /// full the oldest is dropped and counted. The queue is the bridge's session in the local
    /// broker, so it is as durable as the broker's persistence.
    pub queue_limit: usize,
    /// Store-and-forward bound in topic + payload bytes (0 = count limit only). When full the
    /// oldest is dropped and counted.
    pub queue_bytes: u64,
}

impl BridgeConfig {
    /// A bridge with Mosquitto's defaults to one address and no topics: MQTT 3.1.1, keepalive
    /// 60 s, restart 5 s → 300 s, `cleansession false`, `try_private true`, notifications on,
    /// automatic start, outgoing retain on, no TLS, remote client id `<hostname>.<name>` and
    /// local client id `local.<remote client id>`, 10,000 queued messages and 64 MiB.
    pub fn new(name: impl Into<String>, host: impl Into<String>, port: u16) -> Self {
        let name = name.into();
        let remote_clientid = format!("{}.{name}", hostname());
        BridgeConfig {
            local_clientid: format!("local.{remote_clientid}"),
            remote_clientid,
            name,
            addresses: vec![(host.into(), port)],
            topics: Vec::new(),
            remote_username: None,
            remote_password: None,
            cleansession: false,
            local_cleansession: false,
            keepalive: Duration::from_secs(60),
            backoff_min: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            try_private: true,
            notifications: true,
            notifications_local_only: true,
            notification_topic: None,
            protocol: BridgeProtocol::V311,
            outgoing_retain: true,
            republish_on_connect: false,
            attempt_unsubscribe: true,
            round_robin: false,
            receive_maximum: None,
            max_packet_size: None,
            tls: None,
            start_type: StartType::Automatic,
            threshold: 10,
            idle_timeout: Duration::from_secs(60),
            bind_address: None,
            queue_limit: 10_000,
            queue_bytes: 64 * 1024 * 1024,
        }
    }

    /// The Sber smart-home cloud preset: needs only the Sber Studio MQTT `login` and `password`.
    ///
    /// - remote `mqtt-partners.iot.sberdevices.ru:8883`, TLS with the platform's roots (add the
    ///   Russian Trusted Root CA with `tls.cafile` if the platform lacks it), MQTT 3.1.1,
    ///   keepalive 60 s, user name and client id = `login`, clean session, backoff 5 s → 300 s;
    /// - topics, all QoS 0 (Sber grants QoS 0), mirrored under the local prefix `sber/`:
    ///   local `sber/up/#` → remote `sberdevices/v1/<login>/up/#`; remote
    ///   `sberdevices/v1/<login>/down/#` → local `sber/down/#`; remote
    ///   `sberdevices/v1/__config` → local `sber/__config`;
    /// - `try_private` off (Sber's broker is not Mosquitto and would refuse the bridge bit);
    ///   notifications on, local only, on `$SYS/broker/connection/sber/state` (the connection
    ///   name, not the login, which is the client id);
    /// - `bridge_outgoing_retain false`: Sber's reference clients publish non-retained, and the
    ///   cloud keeps device state itself;
    /// - `bridge_republish_on_connect true`: after every (re)connect the device list and then the
    ///   latest status are sent again, as Sber's reference clients do.
    ///
    /// Every field can be changed afterwards (e.g. `addresses` for a test remote, or the
    /// client id).
    pub fn sber(login: &str, password: &str) -> BridgeConfig {
        let mut c = BridgeConfig::new("sber", SBER_HOST, SBER_PORT);
        let remote_prefix = format!("sberdevices/v1/{login}/");
        c.topics = vec![
            TopicRule::new("up/#", Direction::Out, QoS::AtMostOnce)
                .with_prefixes(SBER_LOCAL_PREFIX, remote_prefix.clone()),
            TopicRule::new("down/#", Direction::In, QoS::AtMostOnce)
                .with_prefixes(SBER_LOCAL_PREFIX, remote_prefix),
            TopicRule::new("__config", Direction::In, QoS::AtMostOnce)
                .with_prefixes(SBER_LOCAL_PREFIX, "sberdevices/v1/"),
        ];
        c.remote_username = Some(login.to_string());
        c.remote_password = Some(password.to_string());
        c.remote_clientid = login.to_string();
        c.local_clientid = format!("local.sber.{login}");
        c.cleansession = true;
        c.local_cleansession = true;
        c.keepalive = Duration::from_secs(60);
        c.backoff_min = Duration::from_secs(5);
        c.backoff_max = Duration::from_secs(300);
        c.try_private = false;
        c.protocol = BridgeProtocol::V311;
        c.tls = Some(BridgeTls::default());
        c.outgoing_retain = false;
        c.republish_on_connect = true;
        // Sber's broker is not Mosquitto; keep to the packets its clients send.
        c.attempt_unsubscribe = false;
        c.notification_topic = Some(Self::name_notification_topic(&c.name));
        c
    }

    /// `$SYS/broker/connection/<name>/state`: the notification topic by connection name (the
    /// Sber preset's default, so the login does not appear in `$SYS`).
    pub fn name_notification_topic(name: &str) -> String {
        format!("$SYS/broker/connection/{name}/state")
    }

    /// The topic notifications are published on.
    pub fn notification_topic(&self) -> String {
        self.notification_topic
            .clone()
            .unwrap_or_else(|| format!("$SYS/broker/connection/{}/state", self.remote_clientid))
    }

    /// Checks the options for values that cannot work and for inconsistent combinations.
    /// Errors name the bridge and the option (mosquitto.conf spelling).
    pub fn validate(&self) -> Result<(), InvalidBridge> {
        let name = self.name.as_str();
        let bad = |option, why: &str| Err(InvalidBridge::new(name, option, why));
        if name.is_empty() {
            return bad("connection", "the bridge needs a name");
        }
        if self.addresses.is_empty() {
            return bad("address", "the bridge needs at least one remote address");
        }
        for (host, port) in &self.addresses {
            if host.is_empty() {
                return bad("address", "empty host name");
            }
            if *port == 0 {
                return bad("address", &format!("port 0 for {host}"));
            }
        }
        if self.topics.is_empty() {
            return bad("topic", "the bridge needs at least one `topic` line");
        }
        for rule in &self.topics {
            rule.validate(name)?;
        }
        if self.remote_clientid.is_empty() {
            return bad("remote_clientid", "must not be empty");
        }
        if self.local_clientid.is_empty() {
            return bad("local_clientid", "must not be empty");
        }
        if self.local_clientid == self.remote_clientid {
            // Mosquitto refuses this too: a bridge to itself would take over its own session.
            return bad(
                "local_clientid",
                "must differ from remote_clientid (a bridge looping back would take over its own session)",
            );
        }
        if self.remote_password.is_some() && self.remote_username.is_none() {
            return bad(
                "remote_password",
                "needs remote_username (MQTT 3.1.1 sends a password only with a user name)",
            );
        }
        if self.keepalive > Duration::from_secs(u64::from(u16::MAX)) {
            return bad("keepalive_interval", "at most 65535 seconds");
        }
        if !self.keepalive.is_zero() && self.keepalive < Duration::from_secs(5) {
            return bad(
                "keepalive_interval",
                "below 5 seconds (Mosquitto's minimum); use 0 to disable",
            );
        }
        if self.backoff_min.is_zero() {
            return bad("restart_timeout", "the base delay must be above zero");
        }
        if self.backoff_max < self.backoff_min {
            return bad(
                "restart_timeout",
                "the cap is below the base (`restart_timeout BASE CAP`)",
            );
        }
        if let Some(topic) = &self.notification_topic {
            culex_proto::topic::validate_topic_name(topic).map_err(|e| {
                InvalidBridge::new(name, "notification_topic", format!("{topic:?}: {e}"))
            })?;
        }
        if self.max_packet_size == Some(0) {
            return bad("bridge_max_packet_size", "must be above zero");
        }
        if let Some(tls) = &self.tls {
            if tls.certfile.is_some() != tls.keyfile.is_some() {
                return bad(
                    "bridge_certfile",
                    "bridge_certfile and bridge_keyfile must be given together",
                );
            }
        }
        if self.start_type == StartType::Lazy && self.threshold == 0 {
            return bad("threshold", "a lazy bridge needs a threshold of at least 1");
        }
        if self.queue_limit == 0 {
            return bad("queue_limit", "must be at least 1");
        }
        Ok(())
    }

    /// What is allowed but probably a mistake, for the log when the bridge starts.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.tls.is_none()
            && self.bind_address.is_none()
            && self.addresses.iter().any(|(_, p)| *p == 8883)
            && self.remote_password.is_some()
        {
            // Not an error: some brokers serve plain MQTT on 8883.
            out.push(
                "bridge sends a password to port 8883 without TLS; set bridge_cafile or \
                 bridge_insecure?"
                    .to_string(),
            );
        }
        out
    }

    /// True when `other` differs from this configuration only in what a running bridge can
    /// take over without reconnecting: topics, backoff bounds, notifications and
    /// `bridge_outgoing_retain`. Everything else (addresses, credentials, client ids,
    /// sessions, protocol, TLS, keepalive, start type, limits) needs a new connection.
    pub fn same_link(&self, other: &BridgeConfig) -> bool {
        let mut soft = other.clone();
        soft.topics.clone_from(&self.topics);
        soft.backoff_min = self.backoff_min;
        soft.backoff_max = self.backoff_max;
        soft.notifications = self.notifications;
        soft.notification_topic.clone_from(&self.notification_topic);
        soft.outgoing_retain = self.outgoing_retain;
        soft.republish_on_connect = self.republish_on_connect;
        soft.attempt_unsubscribe = self.attempt_unsubscribe;
        soft == *self
    }
}

/// The host name for default client ids (Mosquitto uses `<hostname>.<connection name>`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "culex".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::topic::{remap_in, remap_out};

    fn valid() -> BridgeConfig {
        let mut c = BridgeConfig::new("b", "remote.example", 1883);
        c.topics = vec![TopicRule::new("a/#", Direction::Both, QoS::AtLeastOnce)];
        c
    }

    #[test]
    fn defaults_follow_mosquitto() {
        let c = valid();
        c.validate().unwrap();
        assert!(c.remote_clientid.ends_with(".b"));
        assert_eq!(c.local_clientid, format!("local.{}", c.remote_clientid));
        assert_eq!(
            c.notification_topic(),
            format!("$SYS/broker/connection/{}/state", c.remote_clientid)
        );
        assert_eq!((c.backoff_min.as_secs(), c.backoff_max.as_secs()), (5, 300));
        assert!(c.try_private && c.notifications && !c.cleansession && c.outgoing_retain);
    }

    #[test]
    fn sber_preset() {
        let c = BridgeConfig::sber("dev123", "secret");
        c.validate().unwrap();
        assert_eq!(c.addresses, vec![(SBER_HOST.to_string(), 8883)]);
        assert_eq!(c.tls, Some(BridgeTls::default()));
        assert!(!c.tls.as_ref().unwrap().insecure);
        assert_eq!(c.protocol, BridgeProtocol::V311);
        assert_eq!(c.keepalive, Duration::from_secs(60));
        assert_eq!(c.remote_clientid, "dev123");
        assert_eq!(c.remote_username.as_deref(), Some("dev123"));
        assert_eq!(c.remote_password.as_deref(), Some("secret"));
        assert!(c.cleansession);
        assert!(!c.try_private);
        assert!(c.topics.iter().all(|t| t.qos == QoS::AtMostOnce));
        let out = |t: &str| remap_out(&c.topics, t).map(|(t, _)| t);
        let inn = |t: &str| remap_in(&c.topics, t).map(|(t, _)| t);
        assert_eq!(
            out("sber/up/config").as_deref(),
            Some("sberdevices/v1/dev123/up/config")
        );
        assert_eq!(
            out("sber/up/status").as_deref(),
            Some("sberdevices/v1/dev123/up/status")
        );
        assert_eq!(
            out("sber/up/x/y").as_deref(),
            Some("sberdevices/v1/dev123/up/x/y")
        );
        assert_eq!(out("sber/down/commands"), None);
        assert_eq!(
            inn("sberdevices/v1/dev123/down/commands").as_deref(),
            Some("sber/down/commands")
        );
        assert_eq!(
            inn("sberdevices/v1/dev123/down/a/b").as_deref(),
            Some("sber/down/a/b")
        );
        assert_eq!(
            inn("sberdevices/v1/__config").as_deref(),
            Some("sber/__config")
        );
        assert_eq!(inn("sberdevices/v1/other/down/commands"), None);
        assert_eq!(inn("sberdevices/v1/dev123/up/status"), None);
        let filters: Vec<_> = c.topics.iter().map(|t| t.remote_filter()).collect();
        assert_eq!(
            filters,
            [
                "sberdevices/v1/dev123/up/#",
                "sberdevices/v1/dev123/down/#",
                "sberdevices/v1/__config"
            ]
        );
    }

    #[test]
    fn validation_names_bridge_and_option() {
        type Breaker = Box<dyn Fn(&mut BridgeConfig)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("address", Box::new(|c| c.addresses.clear())),
            ("address", Box::new(|c| c.addresses[0].1 = 0)),
            ("topic", Box::new(|c| c.topics.clear())),
            (
                "topic",
                Box::new(|c| c.topics[0].local_prefix = "x/+/".into()),
            ),
            (
                "remote_password",
                Box::new(|c| c.remote_password = Some("p".into())),
            ),
            (
                "restart_timeout",
                Box::new(|c| c.backoff_max = Duration::from_secs(1)),
            ),
            (
                "restart_timeout",
                Box::new(|c| c.backoff_min = Duration::ZERO),
            ),
            (
                "keepalive_interval",
                Box::new(|c| c.keepalive = Duration::from_secs(2)),
            ),
            (
                "keepalive_interval",
                Box::new(|c| c.keepalive = Duration::from_secs(70_000)),
            ),
            (
                "local_clientid",
                Box::new(|c| c.local_clientid = c.remote_clientid.clone()),
            ),
            (
                "notification_topic",
                Box::new(|c| c.notification_topic = Some("a/#".into())),
            ),
            (
                "bridge_certfile",
                Box::new(|c| {
                    c.tls = Some(BridgeTls {
                        certfile: Some("c.pem".into()),
                        ..BridgeTls::default()
                    })
                }),
            ),
            (
                "threshold",
                Box::new(|c| {
                    c.start_type = StartType::Lazy;
                    c.threshold = 0
                }),
            ),
            (
                "bridge_max_packet_size",
                Box::new(|c| c.max_packet_size = Some(0)),
            ),
            ("queue_limit", Box::new(|c| c.queue_limit = 0)),
        ];
        for (option, break_it) in cases {
            let mut c = valid();
            break_it(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.starts_with("bridge \"b\": option `") && e.contains(&format!("`{option}`")),
                "{option}: {e}"
            );
        }
    }

    #[test]
    fn a_password_to_8883_without_tls_is_a_warning_not_an_error() {
        let mut c = valid();
        c.addresses = vec![("remote.example".into(), 8883)];
        c.remote_username = Some("u".into());
        c.remote_password = Some("pw".into());
        assert!(c.validate().is_ok());
        assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
        c.tls = Some(BridgeTls::default());
        assert!(c.warnings().is_empty());
    }
}
