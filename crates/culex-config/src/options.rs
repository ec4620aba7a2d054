//! The scalar options both syntaxes share: their section, name, kind and
//! allowed values, and how a checked value is stored in a [`Config`].
//!
//! Listeners are not scalar options; each syntax handles them itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{Config, Security};

#[cfg(test)]
mod doc;
mod table;

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
    Cluster,
}

impl Section {
    /// Every named section (TOML tables), in file order.
    pub(crate) const ALL: [Section; 9] = [
        Section::Security,
        Section::Limits,
        Section::Sessions,
        Section::Persistence,
        Section::Mqtt,
        Section::Metrics,
        Section::Sys,
        Section::Log,
        Section::Cluster,
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
            Section::Cluster => "cluster",
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
    /// Server URLs (`nats://HOST:PORT`, `tls://HOST:PORT`): comma-separated in mosquitto.conf
    /// and environment overrides, an array of strings (or one such string) in TOML.
    Urls,
}

/// One scalar option: its names, the values it takes, its one-line description and where
/// its value lives in a [`Config`]. Every scalar option is one entry of [`OPTIONS`]; both
/// loaders, validation and the option tables of docs/configuration.md are driven by it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) section: Section,
    /// The name in TOML (and in mosquitto.conf unless `conf_key` differs).
    pub(crate) key: &'static str,
    /// The name in mosquitto.conf; empty when the option exists only in TOML.
    pub(crate) conf_key: &'static str,
    pub(crate) kind: Kind,
    /// What the option does, for docs/configuration.md (Markdown, one paragraph).
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "read by the docs test (options::doc)")
    )]
    pub(crate) doc: &'static str,
    /// Where the value is stored.
    pub(crate) field: Field,
}

/// Where an option's value is stored, and how it is read back in the form a file writes it
/// (`max_connections` unlimited reads back as `-1`): for validation of hand-made configs
/// and for the documented defaults.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Field {
    /// A field of the [`Config`].
    Config {
        set: fn(&mut Config, Value) -> Result<(), String>,
        /// `None` when the option is unset.
        get: fn(&Config) -> Option<Value>,
    },
    /// A field of a [`Security`]: the global one, or one listener's with
    /// `per_listener_settings`.
    Security {
        set: fn(&mut Security, Value) -> Result<(), String>,
        get: fn(&Security) -> Option<Value>,
    },
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
        matches!(self.field, Field::Security { .. })
    }

    /// The option's value in `config` as a file would write it; `None` when unset.
    pub(crate) fn get(&self, config: &Config) -> Option<Value> {
        match self.field {
            Field::Config { get, .. } => get(config),
            Field::Security { get, .. } => get(&config.security),
        }
    }
}

pub(crate) use table::OPTIONS;

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
                Kind::Bool
                | Kind::Str
                | Kind::Path
                | Kind::SocketAddr
                | Kind::Choice(_)
                | Kind::Urls => return None,
            };
            Some(OptionEdges {
                name: s.conf_key,
                accepted,
                refused,
            })
        })
        .collect()
}

/// The option called `key` in TOML.
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

/// Parses server URLs for [`Kind::Urls`]: separated by commas (or spaces), each
/// `nats://HOST:PORT` or `tls://HOST:PORT` (`HOST:PORT` alone means `nats://`).
pub(crate) fn parse_urls<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in items
        .into_iter()
        .flat_map(|s| s.split([',', ' ', '\t']))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (scheme, rest) = match item.split_once("://") {
            Some((scheme @ ("nats" | "tls"), rest)) => (scheme, rest),
            Some((other, _)) => {
                return Err(format!(
                    "invalid URL '{item}': scheme '{other}' is not supported; allowed: nats://HOST:PORT or tls://HOST:PORT"
                ))
            }
            None => ("nats", item),
        };
        let port_ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok || rest.contains(['/', '@']) {
            return Err(format!(
                "invalid URL '{item}'; expected nats://HOST:PORT or tls://HOST:PORT, e.g. nats://10.0.0.1:4222 (credentials go in cluster_credentials)"
            ));
        }
        out.push(format!("{scheme}://{rest}"));
    }
    if out.is_empty() {
        return Err(
            "no server URL given; expected nats://HOST:PORT[,nats://HOST:PORT...]".to_owned(),
        );
    }
    Ok(out)
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
    Int(i128),
    Str(String),
    Path(PathBuf),
    /// `None`: never.
    Duration(Option<Duration>),
    Seconds(Duration),
    Delay(Duration),
    Addr(SocketAddr),
    Urls(Vec<String>),
}

impl Value {
    /// An integer field's value (saturating: no field holds more than an `i128`).
    pub(crate) fn of_int<T: TryInto<i128>>(value: T) -> Value {
        Value::Int(value.try_into().unwrap_or(i128::MAX))
    }

    fn mismatch(&self, expected: &str) -> String {
        format!("internal error: expected {expected}, got {self:?}")
    }

    /// An integer, narrowed to the field's type.
    pub(crate) fn int<T: TryFrom<i128>>(self) -> Result<T, String> {
        match self {
            Value::Int(v) => T::try_from(v).map_err(|_| format!("value {v} is out of range")),
            other => Err(other.mismatch("an integer")),
        }
    }

    pub(crate) fn boolean(self) -> Result<bool, String> {
        match self {
            Value::Bool(b) => Ok(b),
            other => Err(other.mismatch("true or false")),
        }
    }

    pub(crate) fn string(self) -> Result<String, String> {
        match self {
            Value::Str(s) => Ok(s),
            other => Err(other.mismatch("a string")),
        }
    }

    pub(crate) fn path(self) -> Result<PathBuf, String> {
        match self {
            Value::Path(p) => Ok(p),
            other => Err(other.mismatch("a path")),
        }
    }

    /// One of a [`Kind::Choice`]'s words, parsed.
    pub(crate) fn choice<T>(self, parse: fn(&str) -> Option<T>) -> Result<T, String> {
        match self {
            Value::Str(s) => parse(&s).ok_or_else(|| format!("internal error: unknown word '{s}'")),
            other => Err(other.mismatch("a word")),
        }
    }

    pub(crate) fn duration(self) -> Result<Option<Duration>, String> {
        match self {
            Value::Duration(d) => Ok(d),
            other => Err(other.mismatch("a duration")),
        }
    }

    pub(crate) fn seconds(self) -> Result<Duration, String> {
        match self {
            Value::Seconds(d) => Ok(d),
            other => Err(other.mismatch("seconds")),
        }
    }

    pub(crate) fn delay(self) -> Result<Duration, String> {
        match self {
            Value::Delay(d) => Ok(d),
            other => Err(other.mismatch("a delay")),
        }
    }

    pub(crate) fn addr(self) -> Result<SocketAddr, String> {
        match self {
            Value::Addr(a) => Ok(a),
            other => Err(other.mismatch("an address")),
        }
    }

    pub(crate) fn urls(self) -> Result<Vec<String>, String> {
        match self {
            Value::Urls(u) => Ok(u),
            other => Err(other.mismatch("server URLs")),
        }
    }

    /// The value as TOML writes it (`20`, `true`, `"auto-"`, `"10ms"`).
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "used by the docs test (options::doc)")
    )]
    pub(crate) fn toml(&self) -> String {
        let quoted = |s: &str| format!("{s:?}");
        match self {
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Str(s) => quoted(s),
            Value::Path(p) => quoted(&p.to_string_lossy()),
            Value::Duration(None) => quoted("never"),
            Value::Duration(Some(d)) | Value::Delay(d) => {
                quoted(&humantime_serde::re::humantime::format_duration(*d).to_string())
            }
            Value::Seconds(d) => d.as_secs().to_string(),
            Value::Addr(a) => quoted(&a.to_string()),
            Value::Urls(u) => format!(
                "[{}]",
                u.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Stores a security option's value in `security` (global or one
/// listener's).
pub(crate) fn apply_security(
    security: &mut Security,
    spec: &Spec,
    value: Value,
) -> Result<(), String> {
    match spec.field {
        Field::Security { set, .. } => set(security, value),
        Field::Config { .. } => Err(format!(
            "internal error: option '{}' is not a security option",
            spec.key
        )),
    }
}

/// Stores a value (already checked by [`check_int`] for integers) in
/// `config`, applying the file-format conventions (`max_inflight_messages 0`
/// is stored as 65535, `max_connections -1` as `None`). Security options go
/// to the global [`Config::security`].
pub(crate) fn apply(config: &mut Config, spec: &Spec, value: Value) -> Result<(), String> {
    match spec.field {
        Field::Config { set, .. } => set(config, value),
        Field::Security { set, .. } => set(&mut config.security, value),
    }
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
                Kind::Int { max, .. } => Value::Int(i128::from(max)),
                Kind::Str => Value::Str("x".into()),
                Kind::Path => Value::Path("x".into()),
                Kind::Duration => Value::Duration(Some(Duration::from_secs(1))),
                Kind::Seconds => Value::Seconds(Duration::from_secs(1)),
                Kind::Delay => Value::Delay(Duration::from_millis(1)),
                Kind::SocketAddr => Value::Addr(([127, 0, 0, 1], 1).into()),
                Kind::Urls => Value::Urls(vec!["nats://127.0.0.1:4222".into()]),
                Kind::Choice(words) => Value::Str(words[0].into()),
            };
            assert_eq!(apply(&mut config, spec, value), Ok(()), "{}", spec.key);
        }
    }

    /// Each option's getter reads back what its setter stored: storing the value read from a
    /// configuration changes nothing, for the defaults and for a value of every kind.
    #[test]
    fn every_option_reads_back_what_it_stores() {
        for base in [Config::default(), Config::embedded_default()] {
            for spec in OPTIONS {
                let Some(value) = spec.get(&base) else {
                    continue;
                };
                let mut config = base.clone();
                assert_eq!(apply(&mut config, spec, value), Ok(()), "{}", spec.key);
                assert_eq!(config, base, "{}", spec.key);
            }
        }
        for spec in OPTIONS {
            let value = match spec.kind {
                Kind::Bool => Value::Bool(spec.get(&Config::default()) != Some(Value::Bool(true))),
                Kind::Int { min, .. } if min > 0 => Value::Int(i128::from(min)),
                Kind::Int { .. } => Value::Int(1),
                Kind::Str => Value::Str("x y".into()),
                Kind::Path => Value::Path("some/where".into()),
                Kind::Duration => Value::Duration(Some(Duration::from_secs(7))),
                Kind::Seconds => Value::Seconds(Duration::from_secs(7)),
                Kind::Delay => Value::Delay(Duration::from_millis(7)),
                Kind::SocketAddr => Value::Addr(([127, 0, 0, 1], 7).into()),
                Kind::Urls => Value::Urls(vec!["nats://a:1".into(), "tls://b:2".into()]),
                Kind::Choice(words) => Value::Str(words[words.len() - 1].into()),
            };
            let mut config = Config::default();
            assert_eq!(
                apply(&mut config, spec, value.clone()),
                Ok(()),
                "{}",
                spec.key
            );
            assert_ne!(config, Config::default(), "{} stored nothing", spec.key);
            assert_eq!(spec.get(&config), Some(value), "{}", spec.key);
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
