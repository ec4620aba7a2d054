//! Bridges: mosquitto.conf `connection NAME` blocks and TOML `[[bridges]]` tables, both read
//! into a [`Draft`] (what the file said, nothing more) and finished into a
//! [`crate::bridge::BridgeConfig`] with Mosquitto's defaults (or a preset's), then validated by
//! [`BridgeConfig::validate`]. Both syntaxes share the finishing step, so an option means the
//! same thing in either.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::bridge::{
    BridgeConfig, BridgeProtocol, BridgeTls, InvalidBridge, StartType, TlsVersion, TopicRule,
};

/// The options of a mosquitto.conf `connection` block, in Mosquitto's spelling (plus Culex's
/// `bridge_preset`, `bridge_queue_limit` and `bridge_queue_bytes`). They apply to the most recent `connection` line.
pub(crate) const CONF_OPTIONS: &[&str] = &[
    "address",
    "addresses",
    "topic",
    "remote_username",
    "remote_password",
    "remote_clientid",
    "local_clientid",
    "cleansession",
    "local_cleansession",
    "keepalive_interval",
    "restart_timeout",
    "try_private",
    "notifications",
    "notification_topic",
    "bridge_protocol_version",
    "bridge_outgoing_retain",
    "bridge_republish_on_connect",
    "bridge_attempt_unsubscribe",
    "round_robin",
    "bridge_receive_maximum",
    "notifications_local_only",
    "clientid",
    "username",
    "password",
    "local_username",
    "local_password",
    "bridge_max_packet_size",
    "bridge_cafile",
    "bridge_capath",
    "bridge_certfile",
    "bridge_keyfile",
    "bridge_insecure",
    "bridge_tls_version",
    "start_type",
    "threshold",
    "idle_timeout",
    "bridge_bind_address",
    "bridge_preset",
    "bridge_queue_limit",
    "bridge_queue_bytes",
];

/// Presets known to `bridge_preset` / `preset`.
pub(crate) const PRESETS: &str = "sber";

/// What the configuration said about one bridge; `None` / empty means "not given".
#[derive(Debug, Default, Clone)]
pub(crate) struct Draft {
    pub(crate) name: String,
    pub(crate) preset: Option<String>,
    pub(crate) addresses: Option<Vec<(String, u16)>>,
    pub(crate) topics: Vec<TopicRule>,
    pub(crate) remote_username: Option<String>,
    pub(crate) remote_password: Option<String>,
    pub(crate) remote_clientid: Option<String>,
    pub(crate) local_clientid: Option<String>,
    pub(crate) cleansession: Option<bool>,
    pub(crate) local_cleansession: Option<bool>,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) backoff_min: Option<Duration>,
    pub(crate) backoff_max: Option<Duration>,
    pub(crate) try_private: Option<bool>,
    pub(crate) notifications: Option<bool>,
    pub(crate) notification_topic: Option<String>,
    pub(crate) notifications_local_only: Option<bool>,
    pub(crate) protocol: Option<BridgeProtocol>,
    pub(crate) outgoing_retain: Option<bool>,
    pub(crate) republish_on_connect: Option<bool>,
    pub(crate) attempt_unsubscribe: Option<bool>,
    pub(crate) round_robin: Option<bool>,
    pub(crate) receive_maximum: Option<u16>,
    pub(crate) max_packet_size: Option<u32>,
    /// TLS options given (any of them turns TLS on).
    pub(crate) tls: Option<BridgeTls>,
    pub(crate) start_type: Option<StartType>,
    pub(crate) threshold: Option<u32>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) bind_address: Option<IpAddr>,
    pub(crate) queue_limit: Option<usize>,
    pub(crate) queue_bytes: Option<u64>,
}

/// A problem found when finishing a bridge: the option (mosquitto.conf spelling) and the
/// message, which names the bridge.
pub(crate) type Problem = (&'static str, String);

fn problem(name: &str, option: &'static str, why: impl std::fmt::Display) -> Problem {
    (option, format!("bridge \"{name}\": {why}"))
}

impl Draft {
    fn tls_mut(&mut self) -> &mut BridgeTls {
        self.tls.get_or_insert_with(BridgeTls::default)
    }

    /// Applies the defaults (Mosquitto's, or the preset's) and validates.
    pub(crate) fn finish(self) -> Result<BridgeConfig, Problem> {
        let name = self.name.clone();
        let mut c = match self.preset.as_deref() {
            Some("sber") => {
                let Some(login) = self.remote_username.clone() else {
                    return Err(problem(
                        &name,
                        "bridge_preset",
                        "the sber preset needs the Sber Studio login (remote_username; `login` in TOML)",
                    ));
                };
                let Some(password) = self.remote_password.clone() else {
                    return Err(problem(
                        &name,
                        "bridge_preset",
                        "the sber preset needs the Sber Studio password (remote_password; `password` in TOML)",
                    ));
                };
                let mut c = BridgeConfig::sber(&login, &password);
                c.name = name.clone();
                c.notification_topic = Some(BridgeConfig::name_notification_topic(&name));
                if let Some(addresses) = &self.addresses {
                    c.addresses = addresses.clone();
                }
                c
            }
            Some(other) => {
                return Err(problem(
                    &name,
                    "bridge_preset",
                    format!("unknown preset '{other}'; known presets: {PRESETS}"),
                ))
            }
            None => {
                let addresses = match &self.addresses {
                    Some(a) if !a.is_empty() => a.clone(),
                    _ => {
                        return Err(problem(
                            &name,
                            "address",
                            "the bridge needs a remote address (`address HOST[:PORT]`)",
                        ))
                    }
                };
                let (host, port) = addresses[0].clone();
                let mut c = BridgeConfig::new(name.clone(), host, port);
                c.addresses = addresses;
                c
            }
        };
        if !self.topics.is_empty() {
            // With a preset, `topic` lines replace the preset's topics.
            c.topics = self.topics;
        }
        if self.remote_username.is_some() {
            c.remote_username = self.remote_username;
        }
        if self.remote_password.is_some() {
            c.remote_password = self.remote_password;
        }
        if let Some(id) = self.remote_clientid {
            if self.preset.is_none() {
                // Mosquitto's default local client id follows the remote one.
                c.local_clientid = format!("local.{id}");
            }
            c.remote_clientid = id;
        }
        if let Some(id) = self.local_clientid {
            c.local_clientid = id;
        }
        if let Some(clean) = self.cleansession {
            c.cleansession = clean;
            c.local_cleansession = clean;
        }
        if let Some(clean) = self.local_cleansession {
            c.local_cleansession = clean;
        }
        if let Some(k) = self.keepalive {
            c.keepalive = k;
        }
        if let Some(min) = self.backoff_min {
            c.backoff_min = min;
            // `restart_timeout BASE` alone is a constant delay, as in Mosquitto.
            c.backoff_max = self.backoff_max.unwrap_or(min);
        } else if let Some(max) = self.backoff_max {
            c.backoff_max = max;
        }
        if let Some(v) = self.try_private {
            c.try_private = v;
        }
        if let Some(v) = self.notifications {
            c.notifications = v;
        }
        if self.notification_topic.is_some() {
            c.notification_topic = self.notification_topic;
        }
        if let Some(v) = self.notifications_local_only {
            c.notifications_local_only = v;
        }
        if let Some(v) = self.protocol {
            c.protocol = v;
        }
        if let Some(v) = self.outgoing_retain {
            c.outgoing_retain = v;
        }
        if let Some(v) = self.republish_on_connect {
            c.republish_on_connect = v;
        }
        if let Some(v) = self.attempt_unsubscribe {
            c.attempt_unsubscribe = v;
        }
        if let Some(v) = self.round_robin {
            c.round_robin = v;
        }
        if self.receive_maximum.is_some() {
            c.receive_maximum = self.receive_maximum;
        }
        if self.max_packet_size.is_some() {
            c.max_packet_size = self.max_packet_size;
        }
        if let Some(given) = self.tls {
            let mut tls = c.tls.take().unwrap_or_default();
            if given.cafile.is_some() {
                tls.cafile = given.cafile;
            }
            if given.capath.is_some() {
                tls.capath = given.capath;
            }
            if given.certfile.is_some() {
                tls.certfile = given.certfile;
            }
            if given.keyfile.is_some() {
                tls.keyfile = given.keyfile;
            }
            if given.version.is_some() {
                tls.version = given.version;
            }
            tls.insecure |= given.insecure;
            c.tls = Some(tls);
        }
        if let Some(v) = self.start_type {
            c.start_type = v;
        }
        if let Some(v) = self.threshold {
            c.threshold = v;
        }
        if let Some(v) = self.idle_timeout {
            c.idle_timeout = v;
        }
        if self.bind_address.is_some() {
            c.bind_address = self.bind_address;
        }
        if let Some(v) = self.queue_limit {
            c.queue_limit = v;
        }
        if let Some(v) = self.queue_bytes {
            c.queue_bytes = v;
        }
        match c.validate() {
            Ok(()) => Ok(c),
            Err(InvalidBridge { option, why, .. }) => Err(problem(&name, option, why)),
        }
    }

    /// Applies one mosquitto.conf option of this bridge. `rest` is the text after the option
    /// name, `words` its words.
    pub(crate) fn apply_conf(
        &mut self,
        option: &str,
        rest: &str,
        words: &[&str],
    ) -> Result<(), String> {
        match option {
            "address" | "addresses" => {
                if words.is_empty() {
                    return Err(
                        "missing value; expected: address HOST[:PORT] [HOST[:PORT] ...]".into(),
                    );
                }
                let list = words
                    .iter()
                    .map(|w| parse_host_port(w))
                    .collect::<Result<Vec<_>, _>>()?;
                self.addresses = Some(list);
            }
            "topic" => {
                let rule = TopicRule::parse_mosquitto(rest)?;
                self.topics.push(rule);
            }
            // `username`, `password` and `clientid` are Mosquitto's older names.
            "remote_username" | "username" => {
                self.remote_username = Some(string(option, rest)?);
            }
            "remote_password" | "password" => {
                self.remote_password = Some(string(option, rest)?);
            }
            "remote_clientid" | "clientid" => {
                self.remote_clientid = Some(one(option, words)?.to_owned());
            }
            "local_clientid" => self.local_clientid = Some(one(option, words)?.to_owned()),
            "cleansession" => self.cleansession = Some(boolean(one(option, words)?)?),
            "local_cleansession" => self.local_cleansession = Some(boolean(one(option, words)?)?),
            "keepalive_interval" => self.keepalive = Some(seconds(one(option, words)?)?),
            "restart_timeout" => match words {
                [base] => {
                    self.backoff_min = Some(seconds(base)?);
                    self.backoff_max = None;
                }
                [base, cap] => {
                    self.backoff_min = Some(seconds(base)?);
                    self.backoff_max = Some(seconds(cap)?);
                }
                [] => {
                    return Err(
                        "missing value; expected: restart_timeout BASE [CAP] (seconds)".into(),
                    )
                }
                _ => {
                    return Err(format!(
                        "too many values '{rest}'; expected: restart_timeout BASE [CAP] (seconds)"
                    ))
                }
            },
            "try_private" => self.try_private = Some(boolean(one(option, words)?)?),
            "notifications" => self.notifications = Some(boolean(one(option, words)?)?),
            "notification_topic" => {
                self.notification_topic = Some(one(option, words)?.to_owned());
            }
            "bridge_protocol_version" => {
                self.protocol =
                    Some(match one(option, words)? {
                        "mqttv311" => BridgeProtocol::V311,
                        "mqttv50" => BridgeProtocol::V5,
                        "mqttv31" => return Err(
                            "mqttv31 is not supported for bridges; allowed: mqttv311 or mqttv50"
                                .into(),
                        ),
                        other => {
                            return Err(format!(
                                "invalid value '{other}'; allowed: mqttv311 or mqttv50"
                            ))
                        }
                    });
            }
            "bridge_outgoing_retain" => self.outgoing_retain = Some(boolean(one(option, words)?)?),
            "bridge_republish_on_connect" => {
                self.republish_on_connect = Some(boolean(one(option, words)?)?);
            }
            "bridge_attempt_unsubscribe" => {
                self.attempt_unsubscribe = Some(boolean(one(option, words)?)?);
            }
            "round_robin" => self.round_robin = Some(boolean(one(option, words)?)?),
            // Accepted, with a warning from the reader: the bridge's local connection is the
            // broker's own internal one, which no password or ACL applies to.
            "local_username" | "local_password" => {}
            "bridge_receive_maximum" => {
                let w = one(option, words)?;
                self.receive_maximum = Some(
                    w.parse::<u16>()
                        .ok()
                        .filter(|v| *v > 0)
                        .ok_or_else(|| format!("invalid value '{w}'; allowed: 1 to 65535"))?,
                );
            }
            "notifications_local_only" => {
                self.notifications_local_only = Some(boolean(one(option, words)?)?);
            }
            "bridge_max_packet_size" => {
                let w = one(option, words)?;
                self.max_packet_size = Some(w.parse::<u32>().map_err(|_| {
                    format!("invalid value '{w}'; allowed: a whole number of bytes, 1 or more")
                })?);
            }
            "bridge_cafile" => self.tls_mut().cafile = Some(path(option, rest)?),
            "bridge_capath" => self.tls_mut().capath = Some(path(option, rest)?),
            "bridge_certfile" => self.tls_mut().certfile = Some(path(option, rest)?),
            "bridge_keyfile" => self.tls_mut().keyfile = Some(path(option, rest)?),
            "bridge_insecure" => self.tls_mut().insecure = boolean(one(option, words)?)?,
            "bridge_tls_version" => {
                self.tls_mut().version = Some(tls_version(one(option, words)?)?);
            }
            "start_type" => self.start_type = Some(start_type(one(option, words)?)?),
            "threshold" => {
                let w = one(option, words)?;
                self.threshold =
                    Some(w.parse::<u32>().map_err(|_| {
                        format!("invalid value '{w}'; allowed: 1 or more messages")
                    })?);
            }
            "idle_timeout" => self.idle_timeout = Some(seconds(one(option, words)?)?),
            "bridge_bind_address" => {
                let w = one(option, words)?;
                self.bind_address = Some(
                    w.parse()
                        .map_err(|_| format!("invalid value '{w}'; allowed: an IP address"))?,
                );
            }
            "bridge_preset" => self.preset = Some(one(option, words)?.to_owned()),
            "bridge_queue_limit" => {
                let w = one(option, words)?;
                self.queue_limit =
                    Some(w.parse::<usize>().map_err(|_| {
                        format!("invalid value '{w}'; allowed: 1 or more messages")
                    })?);
            }
            "bridge_queue_bytes" => {
                let w = one(option, words)?;
                self.queue_bytes = Some(w.parse::<u64>().map_err(|_| {
                    format!("invalid value '{w}'; allowed: 0 (no byte limit) or more bytes")
                })?);
            }
            other => return Err(format!("unknown bridge option '{other}'")),
        }
        Ok(())
    }
}

fn one<'a>(option: &str, words: &[&'a str]) -> Result<&'a str, String> {
    match words {
        [w] => Ok(w),
        [] => Err(format!("missing value for '{option}'")),
        _ => Err(format!(
            "too many values '{}'; '{option}' takes one value",
            words.join(" ")
        )),
    }
}

fn string(option: &str, rest: &str) -> Result<String, String> {
    if rest.is_empty() {
        Err(format!("missing value for '{option}'"))
    } else {
        Ok(rest.to_owned())
    }
}

fn path(option: &str, rest: &str) -> Result<PathBuf, String> {
    string(option, rest).map(PathBuf::from)
}

fn boolean(word: &str) -> Result<bool, String> {
    match word {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("invalid value '{other}'; allowed: true or false")),
    }
}

fn seconds(word: &str) -> Result<Duration, String> {
    let d = word
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("invalid value '{word}'; allowed: whole seconds, 0 or more"))?;
    crate::duration::check_max(d, &format!("'{word}'"))
}

pub(crate) fn tls_version(word: &str) -> Result<TlsVersion, String> {
    match word {
        "tlsv1.2" => Ok(TlsVersion::Tls12),
        "tlsv1.3" => Ok(TlsVersion::Tls13),
        other => Err(format!(
            "invalid value '{other}'; allowed: tlsv1.2 or tlsv1.3 (rustls has no older versions)"
        )),
    }
}

pub(crate) fn start_type(word: &str) -> Result<StartType, String> {
    match word {
        "automatic" => Ok(StartType::Automatic),
        "lazy" => Ok(StartType::Lazy),
        "once" => Ok(StartType::Once),
        other => Err(format!(
            "invalid value '{other}'; allowed: automatic, lazy or once"
        )),
    }
}

/// `HOST[:PORT]` (port 1883 when left out); `[v6]:PORT` for IPv6 with a port.
pub(crate) fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("invalid address '{text}'; expected HOST or HOST:PORT (port 1 to 65535)");
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if text.matches(':').count() > 1 {
        // A bare IPv6 address.
        (text, None)
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => 1883,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad()),
        },
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(parse_host_port("a").unwrap(), ("a".into(), 1883));
        assert_eq!(parse_host_port("a:8883").unwrap(), ("a".into(), 8883));
        assert_eq!(parse_host_port("[::1]:1884").unwrap(), ("::1".into(), 1884));
        assert_eq!(parse_host_port("::1").unwrap(), ("::1".into(), 1883));
        assert!(parse_host_port("a:0").is_err());
        assert!(parse_host_port("a:x").is_err());
        assert!(parse_host_port(":1").is_err());
    }
}
