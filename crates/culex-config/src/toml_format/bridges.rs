//! `[[bridges]]`: each table is read into a [`Draft`] and finished like a mosquitto.conf
//! `connection` block, so every option means the same in both syntaxes.

use std::path::Path;

use crate::bridge::{BridgeConfig, BridgeProtocol, BridgeTls, Direction, TopicRule};
use culex_proto::QoS;
use toml_edit::{Item, TableLike, Value as TomlValue};

use super::{describe_item, key_line, line_of, Checked};
use crate::bridges::{self, Draft};
use crate::duration;

/// The keys of a `[[bridges]]` table.
const KEYS: &[&str] = &[
    "name",
    "preset",
    "login",
    "password",
    "addresses",
    "topics",
    "remote_username",
    "remote_password",
    "remote_clientid",
    "local_clientid",
    "cleansession",
    "local_cleansession",
    "keepalive",
    "backoff",
    "try_private",
    "notifications",
    "notification_topic",
    "notifications_local_only",
    "protocol",
    "outgoing_retain",
    "republish_on_connect",
    "attempt_unsubscribe",
    "round_robin",
    "receive_maximum",
    "max_packet_size",
    "tls",
    "start_type",
    "threshold",
    "idle_timeout",
    "bind_address",
    "queue_limit",
    "queue_bytes",
];

/// The TOML key of a mosquitto.conf bridge option (for locating validation errors).
fn toml_key(option: &str) -> &'static str {
    match option {
        "address" | "addresses" => "addresses",
        "topic" => "topics",
        "bridge_preset" => "preset",
        "remote_username" => "remote_username",
        "remote_password" => "remote_password",
        "remote_clientid" => "remote_clientid",
        "local_clientid" => "local_clientid",
        "cleansession" => "cleansession",
        "local_cleansession" => "local_cleansession",
        "keepalive_interval" => "keepalive",
        "restart_timeout" => "backoff",
        "try_private" => "try_private",
        "notifications" => "notifications",
        "notification_topic" => "notification_topic",
        "notifications_local_only" => "notifications_local_only",
        "bridge_protocol_version" => "protocol",
        "bridge_outgoing_retain" => "outgoing_retain",
        "bridge_republish_on_connect" => "republish_on_connect",
        "bridge_attempt_unsubscribe" => "attempt_unsubscribe",
        "round_robin" => "round_robin",
        "bridge_receive_maximum" => "receive_maximum",
        "bridge_max_packet_size" => "max_packet_size",
        "bridge_cafile" | "bridge_capath" | "bridge_certfile" | "bridge_keyfile"
        | "bridge_insecure" | "bridge_tls_version" => "tls",
        "start_type" => "start_type",
        "threshold" => "threshold",
        "idle_timeout" => "idle_timeout",
        "bridge_bind_address" => "bind_address",
        "queue_limit" | "bridge_queue_limit" => "queue_limit",
        "queue_bytes" | "bridge_queue_bytes" => "queue_bytes",
        _ => "name",
    }
}

/// Checks `bridges` and returns the finished bridges (errors go to `checked`).
pub(super) fn check_bridges(
    path: &Path,
    text: &str,
    item: &Item,
    line: Option<usize>,
    checked: &mut Checked,
) -> Vec<BridgeConfig> {
    let mut tables: Vec<(&dyn TableLike, Option<usize>)> = Vec::new();
    match item {
        Item::ArrayOfTables(array) => {
            for table in array.iter() {
                let line = table.span().map(|s| line_of(text, s.start));
                tables.push((table as &dyn TableLike, line));
            }
        }
        Item::Value(TomlValue::Array(array)) => {
            for value in array.iter() {
                let line = value.span().map(|s| line_of(text, s.start));
                match value {
                    TomlValue::InlineTable(table) => tables.push((table as &dyn TableLike, line)),
                    _ => checked.error(
                        path,
                        line,
                        "bridges",
                        "each bridge must be a table: write [[bridges]] sections",
                    ),
                }
            }
        }
        other => {
            checked.error(
                path,
                line,
                "bridges",
                format!(
                    "'bridges' must be an array of tables: write [[bridges]] sections; found {}",
                    describe_item(other)
                ),
            );
            return Vec::new();
        }
    }
    let mut out = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, (table, table_line)) in tables.into_iter().enumerate() {
        let prefix = format!("bridges[{i}]");
        let at = |key: &str| key_line(text, table, key).or(table_line);
        let mut reader = TableReader {
            path,
            prefix: &prefix,
            checked: &mut *checked,
            ok: true,
            name: String::new(),
        };
        let draft = reader.read(table, &at);
        let ok = reader.ok;
        if !ok {
            continue;
        }
        if names.contains(&draft.name) {
            checked.error(
                path,
                at("name"),
                &format!("{prefix}.name"),
                format!(
                    "bridge \"{}\" is defined twice; bridge names must be unique",
                    draft.name
                ),
            );
            continue;
        }
        names.push(draft.name.clone());
        match draft.finish() {
            Ok(bridge) => out.push(bridge),
            Err((option, message)) => {
                let key = toml_key(option);
                checked.error(path, at(key), &format!("{prefix}.{key}"), message);
            }
        }
    }
    out
}

struct TableReader<'a> {
    path: &'a Path,
    prefix: &'a str,
    checked: &'a mut Checked,
    ok: bool,
    name: String,
}

impl TableReader<'_> {
    fn fail(&mut self, line: Option<usize>, key: &str, message: impl Into<String>) {
        self.ok = false;
        let message = if self.name.is_empty() {
            message.into()
        } else {
            format!("bridge \"{}\": {}", self.name, message.into())
        };
        self.checked
            .error(self.path, line, &format!("{}.{key}", self.prefix), message);
    }

    fn read(&mut self, table: &dyn TableLike, at: &dyn Fn(&str) -> Option<usize>) -> Draft {
        let mut draft = Draft::default();
        match table.get("name").map(|i| (i.as_str(), i)) {
            Some((Some(name), _)) if !name.is_empty() => {
                draft.name = name.to_owned();
                self.name = name.to_owned();
            }
            Some((_, item)) => {
                let found = describe_item(item);
                self.fail(
                    at("name"),
                    "name",
                    format!("the bridge name must be a non-empty string; found {found}"),
                );
            }
            None => self.fail(
                at("name"),
                "name",
                "every [[bridges]] table needs a `name` (mosquitto.conf: `connection NAME`)",
            ),
        }
        for (key, item) in table.iter() {
            let line = at(key);
            if let Err(message) = self.value(&mut draft, key, item) {
                self.fail(line, key, message);
            }
        }
        draft
    }

    fn value(&mut self, d: &mut Draft, key: &str, item: &Item) -> Result<(), String> {
        match key {
            "name" => {}
            "preset" => d.preset = Some(string(item)?),
            "login" | "remote_username" => d.remote_username = Some(string(item)?),
            "password" | "remote_password" => d.remote_password = Some(string(item)?),
            "addresses" => {
                let list: Vec<String> = match item {
                    Item::Value(TomlValue::String(s)) => vec![s.value().clone()],
                    Item::Value(TomlValue::Array(a)) => a
                        .iter()
                        .map(|v| {
                            v.as_str().map(str::to_owned).ok_or_else(|| {
                                "addresses must be strings such as \"host:1883\"".to_owned()
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    other => {
                        return Err(format!(
                            "expected an array of \"host:port\" strings; found {}",
                            describe_item(other)
                        ))
                    }
                };
                d.addresses = Some(
                    list.iter()
                        .map(|a| bridges::parse_host_port(a))
                        .collect::<Result<_, _>>()?,
                );
            }
            "topics" => {
                let mut tables: Vec<&dyn TableLike> = Vec::new();
                match item {
                    Item::ArrayOfTables(a) => tables.extend(a.iter().map(|t| t as &dyn TableLike)),
                    Item::Value(TomlValue::Array(a)) => {
                        for v in a.iter() {
                            match v {
                                TomlValue::InlineTable(t) => tables.push(t as &dyn TableLike),
                                _ => return Err(
                                    "each topic must be a table such as { pattern = \"a/#\", direction = \"out\" }"
                                        .into(),
                                ),
                            }
                        }
                    }
                    other => {
                        return Err(format!(
                            "expected [[bridges.topics]] tables; found {}",
                            describe_item(other)
                        ))
                    }
                }
                for t in tables {
                    let rule = topic(t)?;
                    rule.validate(&d.name).map_err(|e| e.why)?;
                    d.topics.push(rule);
                }
            }
            "remote_clientid" => d.remote_clientid = Some(string(item)?),
            "local_clientid" => d.local_clientid = Some(string(item)?),
            "cleansession" => d.cleansession = Some(boolean(item)?),
            "local_cleansession" => d.local_cleansession = Some(boolean(item)?),
            "keepalive" => d.keepalive = Some(seconds(item)?),
            "backoff" => {
                let t = item.as_table_like().ok_or_else(|| {
                    format!(
                        "expected a table such as {{ min = \"5s\", max = \"300s\" }}; found {}",
                        describe_item(item)
                    )
                })?;
                for (k, v) in t.iter() {
                    match k {
                        "min" => d.backoff_min = Some(seconds(v)?),
                        "max" => d.backoff_max = Some(seconds(v)?),
                        other => {
                            return Err(format!(
                                "unknown key '{other}' in backoff; allowed: min, max"
                            ))
                        }
                    }
                }
                if d.backoff_min.is_none() {
                    // Only a cap: keep the default base.
                    d.backoff_min = Some(std::time::Duration::from_secs(5));
                }
                if d.backoff_max.is_none() {
                    d.backoff_max = Some(
                        std::time::Duration::from_secs(300).max(d.backoff_min.unwrap_or_default()),
                    );
                }
            }
            "try_private" => d.try_private = Some(boolean(item)?),
            "notifications" => d.notifications = Some(boolean(item)?),
            "notification_topic" => d.notification_topic = Some(string(item)?),
            "notifications_local_only" => d.notifications_local_only = Some(boolean(item)?),
            "protocol" => {
                d.protocol = Some(match string(item)?.as_str() {
                    "3.1.1" | "mqttv311" => BridgeProtocol::V311,
                    "5" | "5.0" | "mqttv50" => BridgeProtocol::V5,
                    other => {
                        return Err(format!(
                            "invalid protocol \"{other}\"; allowed: \"3.1.1\" or \"5\""
                        ))
                    }
                });
            }
            "outgoing_retain" => d.outgoing_retain = Some(boolean(item)?),
            "republish_on_connect" => d.republish_on_connect = Some(boolean(item)?),
            "attempt_unsubscribe" => d.attempt_unsubscribe = Some(boolean(item)?),
            "round_robin" => d.round_robin = Some(boolean(item)?),
            "receive_maximum" => d.receive_maximum = Some(int(item, 1, 65535)? as u16),
            "max_packet_size" => d.max_packet_size = Some(int(item, 1, u32::MAX.into())? as u32),
            "tls" => {
                let t = item.as_table_like().ok_or_else(|| {
                    format!(
                        "expected a [bridges.tls] table; found {}",
                        describe_item(item)
                    )
                })?;
                let mut tls = BridgeTls::default();
                for (k, v) in t.iter() {
                    match k {
                        "cafile" => tls.cafile = Some(string(v)?.into()),
                        "capath" => tls.capath = Some(string(v)?.into()),
                        "certfile" => tls.certfile = Some(string(v)?.into()),
                        "keyfile" => tls.keyfile = Some(string(v)?.into()),
                        "insecure" => tls.insecure = boolean(v)?,
                        "version" => tls.version = Some(bridges::tls_version(&string(v)?)?),
                        other => {
                            return Err(format!(
                                "unknown key '{other}' in tls; allowed: cafile, capath, certfile, keyfile, insecure, version"
                            ))
                        }
                    }
                }
                d.tls = Some(tls);
            }
            "start_type" => d.start_type = Some(bridges::start_type(&string(item)?)?),
            "threshold" => d.threshold = Some(int(item, 0, u32::MAX.into())? as u32),
            "idle_timeout" => d.idle_timeout = Some(seconds(item)?),
            "bind_address" => {
                let s = string(item)?;
                d.bind_address = Some(
                    s.parse()
                        .map_err(|_| format!("invalid address \"{s}\"; allowed: an IP address"))?,
                );
            }
            "queue_limit" => {
                d.queue_limit =
                    Some(usize::try_from(int(item, 0, i64::MAX)?).unwrap_or(usize::MAX));
            }
            "queue_bytes" => {
                d.queue_bytes = Some(u64::try_from(int(item, 0, i64::MAX)?).unwrap_or(u64::MAX));
            }
            other => {
                return Err(format!(
                    "unknown key '{other}' in [[bridges]]; allowed: {}",
                    KEYS.join(", ")
                ))
            }
        }
        Ok(())
    }
}

fn topic(t: &dyn TableLike) -> Result<TopicRule, String> {
    let mut pattern = None;
    let mut direction = Direction::Out;
    let mut qos = QoS::AtMostOnce;
    let mut local = String::new();
    let mut remote = String::new();
    for (k, v) in t.iter() {
        match k {
            "pattern" => pattern = Some(string(v)?),
            "direction" => {
                direction = match string(v)?.as_str() {
                    "out" => Direction::Out,
                    "in" => Direction::In,
                    "both" => Direction::Both,
                    other => {
                        return Err(format!(
                            "invalid direction \"{other}\"; allowed: \"out\", \"in\", \"both\""
                        ))
                    }
                }
            }
            "qos" => {
                qos = match int(v, 0, 2)? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                }
            }
            "local_prefix" => local = string(v)?,
            "remote_prefix" => remote = string(v)?,
            other => {
                return Err(format!(
                    "unknown key '{other}' in a topic; allowed: pattern, direction, qos, local_prefix, remote_prefix"
                ))
            }
        }
    }
    let pattern = pattern.ok_or("every topic needs a `pattern` (\"\" for a one-topic mapping)")?;
    Ok(TopicRule::new(pattern, direction, qos).with_prefixes(local, remote))
}

fn string(item: &Item) -> Result<String, String> {
    item.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("expected a string; found {}", describe_item(item)))
}

fn boolean(item: &Item) -> Result<bool, String> {
    item.as_bool()
        .ok_or_else(|| format!("expected true or false; found {}", describe_item(item)))
}

fn int(item: &Item, min: i64, max: i64) -> Result<i64, String> {
    match item.as_integer() {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) => Err(format!(
            "value {v} is out of range; allowed: {min} to {max}"
        )),
        None => Err(format!(
            "expected a whole number; found {}",
            describe_item(item)
        )),
    }
}

/// Whole seconds (an integer) or a duration string such as "60s" or "5m".
fn seconds(item: &Item) -> Result<std::time::Duration, String> {
    if let Some(v) = item.as_integer() {
        let d = u64::try_from(v)
            .map(std::time::Duration::from_secs)
            .map_err(|_| format!("value {v} is out of range; allowed: 0 or more seconds"))?;
        return duration::check_max(d, &v.to_string());
    }
    match item.as_str() {
        Some(s) => duration::parse_seconds(s),
        None => Err(format!(
            "expected seconds or a duration such as \"60s\"; found {}",
            describe_item(item)
        )),
    }
}
