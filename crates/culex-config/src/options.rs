//! The scalar options both syntaxes share: their section, name, kind and
//! allowed values, and how a checked value is stored in a [`Config`].
//!
//! Listeners are not scalar options; each syntax handles them itself.

use std::path::PathBuf;
use std::time::Duration;

use crate::{
    Config, LogFormat, LogLevel, QueueFullPolicy, Security, SyncPolicy, MQTT_MAX_PACKET_SIZE,
};

/// The TOML section an option lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// Top-level keys of a TOML file (`per_listener_settings`).
    Root,
    Security,
    Limits,
    Sessions,
    Persistence,
    Mqtt,
    Metrics,
    Sys,
    Log,
}

impl Section {
    /// Every named section (TOML tables), in file order.
    pub(crate) const ALL: [Section; 8] = [
        Section::Security,
        Section::Limits,
        Section::Sessions,
        Section::Persistence,
        Section::Mqtt,
        Section::Metrics,
        Section::Sys,
        Section::Log,
    ];

    /// The section's name in TOML.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Section::Root => "",
            Section::Security => "security",
            Section::Limits => "limits",
            Section::Sessions => "sessions",
            Section::Persistence => "persistence",
            Section::Mqtt => "mqtt",
            Section::Metrics => "metrics",
            Section::Sys => "sys",
            Section::Log => "log",
        }
    }

    /// The section called `name`, if any.
    pub(crate) fn from_name(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What values an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `true` or `false`.
    Bool,
    /// An integer from `min` to `max`; `allowed` says so in words.
    Int {
        min: i64,
        max: i64,
        allowed: &'static str,
    },
    /// Any string.
    Str,
    /// A file path (a non-empty string; mosquitto.conf: the rest of the
    /// line). Checked to be readable by validation, not here.
    Path,
    /// A duration (syntax differs between mosquitto.conf and TOML).
    Duration,
    /// An interval that may be zero: whole seconds in mosquitto.conf; whole seconds or a
    /// duration string in TOML.
    Seconds,
    /// A short delay that may be zero, at most [`crate::MAX_BATCH_DELAY`]: whole
    /// milliseconds in mosquitto.conf; a duration string such as `"10ms"` in TOML.
    Delay,
    /// An IP address and port, `ADDR:PORT` (`[::1]:PORT` for IPv6).
    SocketAddr,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
}

/// One scalar option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spec {
    pub(crate) section: Section,
    /// The name in TOML (and in mosquitto.conf unless `conf_key` differs).
    pub(crate) key: &'static str,
    /// The name in mosquitto.conf; empty when the option exists only in TOML.
    pub(crate) conf_key: &'static str,
    pub(crate) kind: Kind,
}

impl Spec {
    /// `section.key`, the option's path in TOML (just `key` at the top
    /// level).
    pub(crate) fn path(&self) -> String {
        match self.section {
            Section::Root => self.key.to_owned(),
            section => format!("{}.{}", section.name(), self.key),
        }
    }

    /// Whether this is a security option, which belongs to one listener
    /// when `per_listener_settings` is `true`.
    pub(crate) fn is_security(&self) -> bool {
        self.section == Section::Security
    }
}

const MAX_INT: i64 = i32::MAX as i64;

/// Every scalar option.
pub(crate) const OPTIONS: &[Spec] = &[
    Spec {
        section: Section::Root,
        key: "per_listener_settings",
        conf_key: "per_listener_settings",
        kind: Kind::Bool,
    },
    Spec {
        section: Section::Root,
        key: "user",
        conf_key: "user",
        kind: Kind::Str,
    },
    Spec {
        section: Section::Security,
        key: "allow_anonymous",
        conf_key: "allow_anonymous",
        kind: Kind::Bool,
    },
    Spec {
        section: Section::Security,
        key: "password_file",
        conf_key: "password_file",
        kind: Kind::Path,
    },
    Spec {
        section: Section::Security,
        key: "acl_file",
        conf_key: "acl_file",
        kind: Kind::Path,
    },
    Spec {
        section: Section::Security,
        key: "use_username_as_clientid",
        conf_key: "use_username_as_clientid",
        kind: Kind::Bool,
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
    },
    Spec {
        section: Section::Limits,
        key: "queue_full_policy",
        conf_key: "queue_full_policy",
        kind: Kind::Choice(QueueFullPolicy::NAMES),
    },
    Spec {
        section: Section::Limits,
        key: "slow_client_timeout",
        conf_key: "slow_client_timeout",
        kind: Kind::Seconds,
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
    },
    Spec {
        section: Section::Sessions,
        key: "allow_zero_length_clientid",
        conf_key: "allow_zero_length_clientid",
        kind: Kind::Bool,
    },
    Spec {
        section: Section::Sessions,
        key: "auto_id_prefix",
        conf_key: "auto_id_prefix",
        kind: Kind::Str,
    },
    Spec {
        section: Section::Sessions,
        key: "clientid_prefixes",
        conf_key: "clientid_prefixes",
        kind: Kind::Str,
    },
    Spec {
        section: Section::Sessions,
        key: "persistent_client_expiration",
        conf_key: "persistent_client_expiration",
        kind: Kind::Duration,
    },
    Spec {
        section: Section::Persistence,
        key: "enabled",
        conf_key: "persistence",
        kind: Kind::Bool,
    },
    Spec {
        section: Section::Persistence,
        key: "dir",
        conf_key: "persistence_location",
        kind: Kind::Path,
    },
    Spec {
        section: Section::Persistence,
        key: "file",
        conf_key: "persistence_file",
        kind: Kind::Str,
    },
    Spec {
        section: Section::Persistence,
        key: "sync",
        conf_key: "persistence_sync",
        kind: Kind::Choice(SyncPolicy::NAMES),
    },
    Spec {
        section: Section::Persistence,
        key: "batch_delay",
        conf_key: "persistence_batch_delay",
        kind: Kind::Delay,
    },
    Spec {
        section: Section::Mqtt,
        key: "retain_available",
        conf_key: "retain_available",
        kind: Kind::Bool,
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
    },
    Spec {
        section: Section::Mqtt,
        key: "upgrade_outgoing_qos",
        conf_key: "upgrade_outgoing_qos",
        kind: Kind::Bool,
    },
    Spec {
        section: Section::Mqtt,
        key: "check_retain_source",
        conf_key: "check_retain_source",
        kind: Kind::Bool,
    },
    Spec {
        section: Section::Metrics,
        key: "listen",
        conf_key: "metrics_listener",
        kind: Kind::SocketAddr,
    },
    Spec {
        section: Section::Sys,
        key: "interval",
        conf_key: "sys_interval",
        kind: Kind::Seconds,
    },
    Spec {
        section: Section::Log,
        key: "format",
        conf_key: "log_format",
        kind: Kind::Choice(LogFormat::NAMES),
    },
    Spec {
        section: Section::Log,
        key: "connection_messages",
        conf_key: "connection_messages",
        kind: Kind::Bool,
    },
    Spec {
        section: Section::Log,
        key: "level",
        // mosquitto.conf has `log_type`, which can be repeated; its reader maps it.
        conf_key: "",
        kind: Kind::Choice(LogLevel::NAMES),
    },
];

/// The option called `key` in TOML.
/// One mosquitto.conf option that takes a number or a duration, with the values at the edges
/// of what it accepts and just beyond them: for tests that drive every limit to its extremes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionEdges {
    /// The option's name in mosquitto.conf.
    pub name: &'static str,
    /// Values the option accepts, at the edges of its range (as written in mosquitto.conf).
    pub accepted: Vec<String>,
    /// Values just beyond its range: a load must refuse them with an error naming the option.
    pub refused: Vec<String>,
}

/// [`OptionEdges`] for every numeric and duration option of mosquitto.conf, from the same
/// table the loaders use, so a new option is covered as soon as it exists.
pub fn numeric_option_edges() -> Vec<OptionEdges> {
    let max_secs = crate::MAX_DURATION.as_secs();
    OPTIONS
        .iter()
        .filter(|s| !s.conf_key.is_empty())
        .filter_map(|s| {
            let (accepted, refused) = match s.kind {
                Kind::Int { min, max, .. } => (
                    vec![min.to_string(), max.to_string()],
                    vec![
                        (i128::from(min) - 1).to_string(),
                        (i128::from(max) + 1).to_string(),
                    ],
                ),
                Kind::Duration => (
                    vec!["1s".to_owned(), "100y".to_owned()],
                    vec![
                        "101y".to_owned(),
                        "300000000000y".to_owned(),
                        "0s".to_owned(),
                    ],
                ),
                Kind::Seconds => (
                    vec!["0".to_owned(), max_secs.to_string()],
                    vec![(max_secs + 1).to_string(), u64::MAX.to_string()],
                ),
                Kind::Delay => (
                    vec!["0".to_owned(), "1000".to_owned()],
                    vec!["1001".to_owned()],
                ),
                Kind::Bool | Kind::Str | Kind::Path | Kind::SocketAddr | Kind::Choice(_) => {
                    return None
                }
            };
            Some(OptionEdges {
                name: s.conf_key,
                accepted,
                refused,
            })
        })
        .collect()
}

pub(crate) fn find(key: &str) -> Option<&'static Spec> {
    OPTIONS.iter().find(|s| s.key == key)
}

/// The option called `name` in mosquitto.conf.
pub(crate) fn find_conf(name: &str) -> Option<&'static Spec> {
    OPTIONS
        .iter()
        .find(|s| !s.conf_key.is_empty() && s.conf_key == name)
}

/// Parses `ADDR:PORT`; the error says what is allowed.
pub(crate) fn parse_socket_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "invalid address '{text}'; expected IP:PORT such as 127.0.0.1:9234 or [::1]:9234 (port 0 picks a free port)"
        )
    })
}

/// Checks a word against a [`Kind::Choice`].
pub(crate) fn check_choice(allowed: &[&str], text: &str) -> Result<(), String> {
    if allowed.contains(&text) {
        Ok(())
    } else {
        Err(format!(
            "invalid value '{text}'; allowed: {}",
            allowed.join(", ")
        ))
    }
}

/// The option `key` of `section`.
pub(crate) fn find_in(section: Section, key: &str) -> Option<&'static Spec> {
    OPTIONS
        .iter()
        .find(|s| s.section == section && s.key == key)
}

/// The names of the options of `section`, for "allowed keys" hints.
pub(crate) fn keys_of(section: Section) -> Vec<&'static str> {
    OPTIONS
        .iter()
        .filter(|s| s.section == section)
        .map(|s| s.key)
        .collect()
}

/// Checks an integer against the option's range; the error says what is
/// allowed.
pub(crate) fn check_int(spec: &Spec, value: i128) -> Result<i64, String> {
    let Kind::Int { min, max, allowed } = spec.kind else {
        return Err(format!("option '{}' does not take an integer", spec.key));
    };
    // Values with a special explanation.
    match (spec.key, value) {
        ("max_queued_messages", 0) => {
            return Err(
                "value 0 is not allowed: Culex bounds every queue, there is no \
                 'unlimited' (unlike mosquitto); use a large number such as 100000; \
                 allowed: 1 to 2147483647"
                    .to_owned(),
            )
        }
        ("max_connections", 0) => {
            return Err(
                "value 0 would refuse every connection; allowed: -1 (unlimited) or 1 to 2147483647"
                    .to_owned(),
            )
        }
        _ => {}
    }
    if value < i128::from(min) || value > i128::from(max) {
        return Err(format!("value {value} is out of range; allowed: {allowed}"));
    }
    i64::try_from(value).map_err(|_| format!("value {value} is out of range; allowed: {allowed}"))
}

/// A checked option value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Bool(bool),
    Int(i64),
    Str(String),
    Path(PathBuf),
    Duration(Option<Duration>),
    Seconds(Duration),
    Delay(Duration),
    Addr(std::net::SocketAddr),
}

/// Stores a security option's value in `security` (global or one
/// listener's).
pub(crate) fn apply_security(
    security: &mut Security,
    spec: &Spec,
    value: Value,
) -> Result<(), String> {
    let bad = || format!("internal error: unexpected value for option '{}'", spec.key);
    match (spec.key, value) {
        ("allow_anonymous", Value::Bool(b)) => security.allow_anonymous = b,
        ("password_file", Value::Path(p)) => security.password_file = Some(p),
        ("acl_file", Value::Path(p)) => security.acl_file = Some(p),
        ("use_username_as_clientid", Value::Bool(b)) => security.use_username_as_clientid = b,
        _ => return Err(bad()),
    }
    Ok(())
}

/// Stores a value (already checked by [`check_int`] for integers) in
/// `config`. Applies the file-format conventions: `max_inflight_messages 0`
/// is stored as 65535, `max_connections -1` as `None`. Security options go
/// to the global [`Config::security`].
pub(crate) fn apply(config: &mut Config, spec: &Spec, value: Value) -> Result<(), String> {
    if spec.is_security() {
        return apply_security(&mut config.security, spec, value);
    }
    let bad = || format!("internal error: unexpected value for option '{}'", spec.key);
    let int = |v: &Value| match v {
        Value::Int(i) => Ok(*i),
        _ => Err(bad()),
    };
    let boolean = |v: &Value| match v {
        Value::Bool(b) => Ok(*b),
        _ => Err(bad()),
    };
    let range = |v: i64| format!("value {v} is out of range");
    match spec.key {
        "per_listener_settings" => config.per_listener_settings = boolean(&value)?,
        "user" => match value {
            Value::Str(s) => config.user = Some(s),
            _ => return Err(bad()),
        },
        "max_inflight_messages" => {
            let v = int(&value)?;
            config.limits.max_inflight_messages = if v == 0 {
                u16::MAX
            } else {
                u16::try_from(v).map_err(|_| range(v))?
            };
        }
        "max_queued_messages" => {
            let v = int(&value)?;
            config.limits.max_queued_messages = usize::try_from(v).map_err(|_| range(v))?;
        }
        "auth_failure_limit" => {
            let v = int(&value)?;
            config.limits.auth_failure_limit = u32::try_from(v).map_err(|_| range(v))?;
        }
        "memory_limit" => {
            let v = int(&value)?;
            config.limits.memory_limit = u64::try_from(v).map_err(|_| range(v))?;
        }
        "queue_full_policy" => match value {
            Value::Str(s) => {
                config.limits.queue_full_policy = QueueFullPolicy::parse(&s).ok_or_else(bad)?;
            }
            _ => return Err(bad()),
        },
        "slow_client_timeout" => match value {
            Value::Seconds(d) => config.limits.slow_client_timeout = d,
            _ => return Err(bad()),
        },
        "max_inflight_bytes" => {
            let v = int(&value)?;
            config.limits.max_inflight_bytes = u64::try_from(v).map_err(|_| range(v))?;
        }
        "max_queued_bytes" => {
            let v = int(&value)?;
            config.limits.max_queued_bytes = u64::try_from(v).map_err(|_| range(v))?;
        }
        "message_size_limit" => {
            let v = int(&value)?;
            config.limits.message_size_limit = u32::try_from(v).map_err(|_| range(v))?;
        }
        "max_packet_size" => {
            let v = int(&value)?;
            config.limits.max_packet_size = u32::try_from(v).map_err(|_| range(v))?;
        }
        "max_keepalive" => {
            let v = int(&value)?;
            config.limits.max_keepalive = u16::try_from(v).map_err(|_| range(v))?;
        }
        "max_topic_levels" => {
            let v = int(&value)?;
            config.limits.max_topic_levels = u16::try_from(v).map_err(|_| range(v))?;
        }
        "max_topic_length" => {
            let v = int(&value)?;
            config.limits.max_topic_length = u16::try_from(v).map_err(|_| range(v))?;
        }
        "max_connections" => {
            let v = int(&value)?;
            config.limits.max_connections = if v < 0 {
                None
            } else {
                Some(usize::try_from(v).map_err(|_| range(v))?)
            };
        }
        "allow_zero_length_clientid" => {
            config.sessions.allow_zero_length_clientid = boolean(&value)?
        }
        "auto_id_prefix" => match value {
            Value::Str(s) => config.sessions.auto_id_prefix = s,
            _ => return Err(bad()),
        },
        "clientid_prefixes" => match value {
            Value::Str(s) => config.sessions.clientid_prefixes = Some(s),
            _ => return Err(bad()),
        },
        "persistent_client_expiration" => match value {
            Value::Duration(d) => config.sessions.persistent_client_expiration = d,
            _ => return Err(bad()),
        },
        "enabled" => config.persistence.enabled = boolean(&value)?,
        "dir" => match value {
            Value::Path(p) => config.persistence.dir = p,
            _ => return Err(bad()),
        },
        "file" => match value {
            Value::Str(s) => config.persistence.file = s,
            _ => return Err(bad()),
        },
        "sync" => match value {
            Value::Str(s) => config.persistence.sync = SyncPolicy::parse(&s).ok_or_else(bad)?,
            _ => return Err(bad()),
        },
        "batch_delay" => match value {
            Value::Delay(d) => config.persistence.batch_delay = d,
            _ => return Err(bad()),
        },
        "retain_available" => config.mqtt.retain_available = boolean(&value)?,
        "max_qos" => {
            let v = int(&value)?;
            config.mqtt.max_qos = u8::try_from(v).map_err(|_| range(v))?;
        }
        "upgrade_outgoing_qos" => config.mqtt.upgrade_outgoing_qos = boolean(&value)?,
        "check_retain_source" => config.mqtt.check_retain_source = boolean(&value)?,
        "listen" => match value {
            Value::Addr(a) => config.metrics.listen = Some(a),
            _ => return Err(bad()),
        },
        "interval" => match value {
            Value::Seconds(d) => config.sys.interval = d,
            _ => return Err(bad()),
        },
        "format" => match value {
            Value::Str(s) => config.log.format = LogFormat::parse(&s).ok_or_else(bad)?,
            _ => return Err(bad()),
        },
        "level" => match value {
            Value::Str(s) => config.log.level = LogLevel::parse(&s).ok_or_else(bad)?,
            _ => return Err(bad()),
        },
        "connection_messages" => config.log.connection_messages = boolean(&value)?,
        _ => return Err(bad()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_can_be_applied() {
        for spec in OPTIONS {
            let mut config = Config::default();
            let value = match spec.kind {
                Kind::Bool => Value::Bool(false),
                Kind::Int { max, .. } => Value::Int(max),
                Kind::Str => Value::Str("x".into()),
                Kind::Path => Value::Path("x".into()),
                Kind::Duration => Value::Duration(Some(Duration::from_secs(1))),
                Kind::Seconds => Value::Seconds(Duration::from_secs(1)),
                Kind::Delay => Value::Delay(Duration::from_millis(1)),
                Kind::SocketAddr => Value::Addr(([127, 0, 0, 1], 1).into()),
                Kind::Choice(words) => Value::Str(words[0].into()),
            };
            assert_eq!(apply(&mut config, spec, value), Ok(()), "{}", spec.key);
        }
    }

    #[test]
    fn ranges_name_what_is_allowed() {
        let spec = find("max_qos").expect("max_qos exists");
        assert_eq!(check_int(spec, 2), Ok(2));
        assert_eq!(
            check_int(spec, 3),
            Err("value 3 is out of range; allowed: 0, 1 or 2".to_owned())
        );
        let spec = find("max_queued_messages").expect("exists");
        assert!(check_int(spec, 0)
            .expect_err("0 rejected")
            .contains("use a large number"));
        let spec = find("max_connections").expect("exists");
        assert_eq!(check_int(spec, -1), Ok(-1));
        assert!(check_int(spec, 0).is_err());
        assert!(check_int(spec, -2).is_err());
    }
}
