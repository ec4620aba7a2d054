//! mosquitto.conf syntax.
//!
//! One `option value...` per line; lines whose first non-blank character is
//! `#` are comments; blank lines are ignored; leading and trailing blanks are
//! trimmed; words are separated by spaces or tabs. See `docs/configuration.md`
//! for the options and the differences from Mosquitto.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::bridges::{self, Draft};
use crate::error::{ConfigError, Diagnostic};
use crate::options::{self, check_int, Kind, Spec, Value};
use crate::validate::{self, Problem};
use crate::{
    duration, Config, Listener, ListenerProtocol, Loaded, LogLevel, Security, Tls, TlsVersion,
    DEFAULT_PORT,
};

/// Options of one listener: they apply to the most recent `listener` line
/// (before any, to the default listener of `port`/`bind_address`).
const LISTENER_OPTIONS: &[&str] = &[
    "protocol",
    "socket_domain",
    "bind_interface",
    "mount_point",
    "certfile",
    "keyfile",
    "cafile",
    "capath",
    "crlfile",
    "require_certificate",
    "use_identity_as_username",
    "use_subject_as_username",
    "ciphers",
    "ciphers_tls1.3",
    "tls_version",
];

/// The listener options that make a listener a TLS listener.
const TLS_OPTIONS: &[&str] = &[
    "certfile",
    "keyfile",
    "cafile",
    "capath",
    "crlfile",
    "require_certificate",
    "use_identity_as_username",
    "use_subject_as_username",
    "ciphers",
    "ciphers_tls1.3",
    "tls_version",
];

/// A checked listener option value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListenerValue {
    Protocol(ListenerProtocol),
    Path(PathBuf),
    Bool(bool),
    Version(TlsVersion),
    Text(String),
    Domain(crate::SocketDomain),
}

/// The listener options given for one listener, with where each was given.
#[derive(Debug, Default)]
struct ListenerOpts {
    values: HashMap<&'static str, (ListenerValue, Loc)>,
}

impl ListenerOpts {
    fn path(&self, key: &str) -> Option<PathBuf> {
        match self.values.get(key) {
            Some((ListenerValue::Path(p), _)) => Some(p.clone()),
            _ => None,
        }
    }

    fn text(&self, key: &str) -> Option<String> {
        match self.values.get(key) {
            Some((ListenerValue::Text(t), _)) => Some(t.clone()),
            _ => None,
        }
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.values.get(key), Some((ListenerValue::Bool(true), _)))
    }

    fn loc(&self, key: &str) -> Option<&Loc> {
        self.values.get(key).map(|(_, loc)| loc)
    }
}

/// A `listener` line and the options that followed it.
#[derive(Debug)]
struct PendingListener {
    listener: Listener,
    loc: Loc,
    opts: ListenerOpts,
}

/// A security option (`allow_anonymous`, `password_file`, `acl_file`), kept
/// until the end of the file because `per_listener_settings` decides where
/// it goes.
#[derive(Debug)]
struct SecuritySetting {
    spec: &'static Spec,
    value: Value,
    loc: Loc,
    /// Index of the `listener` line it follows, if any.
    after_listener: Option<usize>,
}

/// Where a listener and its options were written, for diagnostics.
#[derive(Debug, Clone)]
struct Origin {
    /// `listener`, `port` or `bind_address`.
    option: &'static str,
    loc: Option<Loc>,
    /// Where each listener option (TLS and per-listener security) was given.
    options: HashMap<&'static str, Loc>,
}

/// Options that are accepted, with a warning, and otherwise ignored.
const IGNORED: &[&str] = &[
    "pid_file",
    // Removed or without effect in Mosquitto 2.0 too.
    "retry_interval",
    "store_clean_interval",
    "websockets_log_level",
];

/// Mosquitto persistence options that are accepted (their value checked), with a warning
/// explaining why Culex does not need them, and otherwise ignored.
const PERSISTENCE_IGNORED: &[&str] = &["autosave_interval", "autosave_on_changes"];

/// Mosquitto options Culex does not support yet: an error that says so.
const MOSQUITTO_UNSUPPORTED: &[&str] = &[
    "accept_protocol_versions",
    "allow_duplicate_messages",
    "auth_opt_",
    "auth_plugin",
    "auth_plugin_deny_special_chars",
    "bridge_alpn",
    "bridge_identity",
    "bridge_max_topic_alias",
    "bridge_psk",
    "bridge_require_ocsp",
    "bridge_session_expiry_interval",
    "dhparamfile",
    "enable_proxy_protocol",
    "global_max_clients",
    "global_max_connections",
    "http_dir",
    "max_topic_alias",
    "ocsp_data",
    "plugin",
    "plugin_load",
    "plugin_opt_",
    "plugin_use",
    "proxy_protocol_v2_require_tls",
    "psk_file",
    "psk_hint",
    "retain_expiry_interval",
    "tls_engine",
    "tls_engine_kpass_sha1",
    "tls_keyform",
    "websockets_headers_size",
    "websockets_origin",
];

/// A `connection NAME` block and where its options were written.
struct PendingBridge {
    draft: Draft,
    /// The `connection` line.
    loc: Loc,
    /// Where each option was last given.
    locs: HashMap<&'static str, Loc>,
    /// An option was already reported: skip the whole-bridge checks (no follow-on errors).
    failed: bool,
}

/// Where something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loc {
    file: PathBuf,
    line: usize,
}

impl Loc {
    fn label(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// State while reading a mosquitto.conf file and its includes.
struct Reader {
    config: Config,
    diagnostics: Vec<Diagnostic>,
    warnings: Vec<String>,
    /// `listener` lines, in order, with their options.
    listeners: Vec<PendingListener>,
    /// Listener options given before any `listener` line: they belong to
    /// the default listener.
    default_opts: ListenerOpts,
    /// Security options, in file order.
    security: Vec<SecuritySetting>,
    /// `port`, for the default listener.
    default_port: Option<(u16, Loc)>,
    /// `bind_address`, for the default listener.
    bind_address: Option<(String, Loc)>,
    /// Where each scalar option was last set.
    set_at: HashMap<&'static str, Loc>,
    /// The most verbose of the `log_type` lines, if any.
    log_type: Option<LogLevel>,
    /// `connection` blocks, in order; bridge options apply to the last one.
    bridges: Vec<PendingBridge>,
}

/// Loads a mosquitto.conf file (and the files it includes).
pub(crate) fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let mut reader = Reader {
        config: Config::default(),
        diagnostics: Vec::new(),
        warnings: Vec::new(),
        listeners: Vec::new(),
        default_opts: ListenerOpts::default(),
        security: Vec::new(),
        default_port: None,
        bind_address: None,
        set_at: HashMap::new(),
        log_type: None,
        bridges: Vec::new(),
    };
    let text = read_text(path)?;
    reader.read(path, &text, 0);
    reader.finish(path)
}

/// Reads a whole file as UTF-8; the error names the path.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    let fail = |message: String| {
        ConfigError::single(Diagnostic {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message,
        })
    };
    if path.is_dir() {
        return Err(fail(
            "cannot read configuration file: it is a directory".to_owned(),
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| fail(format!("cannot read configuration file: {e}")))?;
    match String::from_utf8(bytes) {
        Ok(mut text) => {
            if text.starts_with('\u{feff}') {
                text.remove(0);
            }
            Ok(text)
        }
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..valid]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            Err(ConfigError::single(Diagnostic {
                file: path.to_path_buf(),
                line: Some(line),
                key: String::new(),
                message: "the file is not valid UTF-8".to_owned(),
            }))
        }
    }
}

impl Reader {
    fn error(&mut self, loc: &Loc, key: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            file: loc.file.clone(),
            line: Some(loc.line),
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn warn(&mut self, loc: &Loc, message: impl AsRef<str>) {
        self.warnings
            .push(format!("{}: {}", loc.label(), message.as_ref()));
    }

    /// Reads the lines of `file`; `level` is 0 for the main file, 1 for
    /// files loaded by `include_dir`.
    fn read(&mut self, file: &Path, text: &str, level: usize) {
        for (index, raw) in text.split('\n').enumerate() {
            let line = raw.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r');
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let loc = Loc {
                file: file.to_path_buf(),
                line: index + 1,
            };
            let (option, rest) = match line.find([' ', '\t']) {
                Some(i) => (&line[..i], line[i..].trim_start_matches([' ', '\t'])),
                None => (line, ""),
            };
            let words: Vec<&str> = rest.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
            self.option(&loc, option, rest, &words, level);
        }
    }

    fn option(&mut self, loc: &Loc, option: &str, rest: &str, words: &[&str], level: usize) {
        match option {
            "listener" => self.listener(loc, words),
            "port" => {
                if let Some(port) = self.one_port(loc, option, words, "port PORT") {
                    if let Some((_, previous)) = &self.default_port {
                        let previous = previous.label();
                        self.warn(
                            loc,
                            format!("option 'port' is given more than once (also at {previous}); only the last one is used"),
                        );
                    }
                    self.default_port = Some((port, loc.clone()));
                }
            }
            "bind_address" => match words {
                [address] => {
                    if let Some((_, previous)) = &self.bind_address {
                        let previous = previous.label();
                        self.warn(
                            loc,
                            format!("option 'bind_address' is given more than once (also at {previous}); only the last one is used"),
                        );
                    }
                    self.bind_address = Some(((*address).to_owned(), loc.clone()));
                }
                [] => self.error(
                    loc,
                    option,
                    "missing value; expected: bind_address ADDRESS (an IP address or host name)",
                ),
                _ => self.error(
                    loc,
                    option,
                    format!(
                        "too many values '{rest}'; expected: bind_address ADDRESS (an IP address or host name)"
                    ),
                ),
            },
            "include_dir" => self.include_dir(loc, rest, level),
            "connection" => self.connection(loc, words),
            _ if bridges::CONF_OPTIONS.contains(&option) => {
                self.bridge_option(loc, option, rest, words);
            }
            "log_type" => self.log_type(loc, words),
            // Mosquitto's later name for `max_qos`.
            "maximum_qos" => {
                if let Some(spec) = options::find_conf("max_qos") {
                    self.scalar(loc, spec, rest, words);
                }
            }
            "set_tcp_nodelay" | "queue_qos0_messages" => {
                self.behaviour_option(loc, option, words);
            }
            "autosave_interval" | "autosave_on_changes" => {
                self.persistence_ignored(loc, option, rest, words);
            }
            _ => {
                if let Some(key) = LISTENER_OPTIONS.iter().find(|k| **k == option) {
                    self.listener_option(loc, key, rest, words);
                } else if let Some(spec) = options::find_conf(option) {
                    self.scalar(loc, spec, rest, words);
                } else if option.starts_with("log_") || IGNORED.contains(&option) {
                    self.warn(
                        loc,
                        format!("option '{option}' is accepted but ignored by Culex"),
                    );
                } else {
                    let message = unknown_option_message(option);
                    self.error(loc, option, message);
                }
            }
        }
    }

    /// Mosquitto options whose behaviour Culex has built in: accepted when the value asks for
    /// that behaviour, an error saying so otherwise.
    fn behaviour_option(&mut self, loc: &Loc, option: &str, words: &[&str]) {
        let value = match words {
            [w] => *w,
            [] => return self.error(loc, option, "missing value".to_owned()),
            _ => {
                return self.error(
                    loc,
                    option,
                    format!("too many values '{}'", words.join(" ")),
                )
            }
        };
        let problem = match (option, parse_bool(value)) {
            ("set_tcp_nodelay", Ok(_)) => {
                // Culex always sets TCP_NODELAY and batches its writes itself.
                if value == "false" || value == "0" {
                    self.warn(
                        loc,
                        "option 'set_tcp_nodelay false' is ignored: Culex always sets \
                         TCP_NODELAY and batches what it writes itself",
                    );
                }
                None
            }
            ("queue_qos0_messages", Ok(false)) => None,
            ("queue_qos0_messages", Ok(true)) => Some(
                "not supported yet: Culex does not queue QoS 0 messages for offline clients \
                 (counted as dropped); use QoS 1 for messages an offline client must get"
                    .to_owned(),
            ),
            (_, Err(e)) => Some(e),
            _ => None,
        };
        if let Some(message) = problem {
            self.error(loc, option, message);
        }
    }

    /// `listener PORT [BIND_ADDRESS]`.
    fn listener(&mut self, loc: &Loc, words: &[&str]) {
        const USAGE: &str = "expected: listener PORT [BIND_ADDRESS]";
        let (port, host) = match words {
            [port] => (*port, None),
            [port, host] => (*port, Some((*host).to_owned())),
            [] => {
                self.error(loc, "listener", format!("missing port; {USAGE}"));
                return;
            }
            _ => {
                self.error(
                    loc,
                    "listener",
                    format!("too many values '{}'; {USAGE}", words.join(" ")),
                );
                return;
            }
        };
        match parse_port(port) {
            Ok(port) => self.listeners.push(PendingListener {
                listener: Listener {
                    host,
                    ..Listener::all_interfaces(port)
                },
                loc: loc.clone(),
                opts: ListenerOpts::default(),
            }),
            Err(message) => self.error(loc, "listener", message),
        }
    }

    /// `connection NAME`: starts a bridge; the bridge options that follow apply to it, until
    /// the next `connection` line (as in Mosquitto).
    fn connection(&mut self, loc: &Loc, words: &[&str]) {
        let name = match words {
            [name] => (*name).to_owned(),
            [] => {
                self.error(
                    loc,
                    "connection",
                    "missing value; expected: connection NAME",
                );
                return;
            }
            _ => {
                self.error(
                    loc,
                    "connection",
                    format!(
                        "too many values '{}'; expected: connection NAME",
                        words.join(" ")
                    ),
                );
                return;
            }
        };
        if let Some(previous) = self.bridges.iter().find(|b| b.draft.name == name) {
            let previous = previous.loc.label();
            self.error(
                loc,
                "connection",
                format!("bridge \"{name}\" is already defined at {previous}; bridge names must be unique"),
            );
        }
        self.bridges.push(PendingBridge {
            draft: Draft {
                name,
                ..Draft::default()
            },
            loc: loc.clone(),
            locs: HashMap::new(),
            failed: false,
        });
    }

    /// An option of the current bridge (`address`, `topic`, `remote_username`, ...).
    fn bridge_option(&mut self, loc: &Loc, option: &str, rest: &str, words: &[&str]) {
        let Some(key) = bridges::CONF_OPTIONS.iter().copied().find(|k| *k == option) else {
            return;
        };
        let Some(bridge) = self.bridges.last_mut() else {
            self.error(
                loc,
                key,
                format!(
                    "'{key}' is a bridge option; it must follow a `connection NAME` line (the bridge it configures)"
                ),
            );
            return;
        };
        let name = bridge.draft.name.clone();
        if matches!(key, "local_username" | "local_password") {
            self.warn(
                loc,
                format!(
                    "option '{key}' is accepted but ignored by Culex: bridge \"{name}\" reaches \
                     the local broker over an internal connection that no password or ACL \
                     applies to"
                ),
            );
            return;
        }
        let result = bridge.draft.apply_conf(key, rest, words).and_then(|()| {
            // Check each topic rule where it is written.
            match (key, bridge.draft.topics.last()) {
                ("topic", Some(rule)) => rule.validate(&name).map_err(|e| e.why),
                _ => Ok(()),
            }
        });
        if key != "topic" {
            bridge.locs.insert(key, loc.clone());
        }
        if let Err(message) = result {
            bridge.failed = true;
            self.error(loc, key, format!("bridge \"{name}\": {message}"));
        }
    }

    /// An option of the current listener (`certfile`, `protocol`, ...).
    fn listener_option(&mut self, loc: &Loc, key: &'static str, rest: &str, words: &[&str]) {
        let value =
            match key {
                "protocol" => match words {
                    ["mqtt"] => Ok(ListenerValue::Protocol(ListenerProtocol::Mqtt)),
                    ["websockets"] => Ok(ListenerValue::Protocol(ListenerProtocol::Websockets)),
                    [] => Err("missing value; allowed: mqtt or websockets".to_owned()),
                    [other] => Err(format!(
                        "invalid value '{other}'; allowed: mqtt or websockets"
                    )),
                    _ => Err(format!(
                        "too many values '{rest}'; allowed: mqtt or websockets"
                    )),
                },
                "socket_domain" => match words {
                    [word] => crate::SocketDomain::parse(word).map(ListenerValue::Domain),
                    _ => Err("expected one value: ipv4 or ipv6".to_owned()),
                },
                "mount_point" => match words {
                    [prefix] => culex_proto::topic::validate_topic_name(prefix)
                        .map(|()| ListenerValue::Text((*prefix).to_owned()))
                        .map_err(|e| format!("'{prefix}' is not a topic prefix: {e}")),
                    _ => Err("expected one value: a topic prefix, e.g. site1/".to_owned()),
                },
                "bind_interface" => match words {
                    [name] => Ok(ListenerValue::Text((*name).to_owned())),
                    _ => Err("expected one value: the interface name, e.g. eth0".to_owned()),
                },
                "ciphers" => crate::tls_ciphers::parse_tls12(rest)
                    .map(|_| ListenerValue::Text(rest.to_owned())),
                "ciphers_tls1.3" => crate::tls_ciphers::parse_tls13(rest)
                    .map(|_| ListenerValue::Text(rest.to_owned())),
                "require_certificate" | "use_identity_as_username" | "use_subject_as_username" => {
                    match words {
                        [word] => parse_bool(word).map(ListenerValue::Bool),
                        [] => Err("missing value; allowed: true or false".to_owned()),
                        _ => Err(format!("too many values '{rest}'; allowed: true or false")),
                    }
                }
                "tls_version" => match words {
                    [word] => TlsVersion::parse(word).map(ListenerValue::Version),
                    [] => Err("missing value; allowed: tlsv1.2 or tlsv1.3".to_owned()),
                    _ => Err(format!(
                        "too many values '{rest}'; allowed: tlsv1.2 or tlsv1.3"
                    )),
                },
                // Paths take the rest of the line, like mosquitto.
                _ if rest.is_empty() => Err(format!("missing value; expected: {key} PATH")),
                _ => Ok(ListenerValue::Path(PathBuf::from(rest))),
            };
        let value = match value {
            Ok(value) => value,
            Err(message) => {
                self.error(loc, key, message);
                return;
            }
        };
        let opts = match self.listeners.last_mut() {
            Some(pending) => &mut pending.opts,
            None => &mut self.default_opts,
        };
        if let Some((_, previous)) = opts.values.insert(key, (value, loc.clone())) {
            let previous = previous.label();
            self.warn(
                loc,
                format!("option '{key}' is given more than once for this listener (also at {previous}); the last value is used"),
            );
        }
    }

    /// The single port value of `port`.
    fn one_port(&mut self, loc: &Loc, option: &str, words: &[&str], usage: &str) -> Option<u16> {
        match words {
            [port] => match parse_port(port) {
                Ok(port) => Some(port),
                Err(message) => {
                    self.error(loc, option, message);
                    None
                }
            },
            [] => {
                self.error(loc, option, format!("missing value; expected: {usage}"));
                None
            }
            _ => {
                self.error(
                    loc,
                    option,
                    format!("too many values '{}'; expected: {usage}", words.join(" ")),
                );
                None
            }
        }
    }

    /// `log_type TYPE`, repeatable like Mosquitto's: the most verbose type given sets the
    /// level (`debug` and `all`: debug; `error`: error; `warning`: warn; `notice`,
    /// `information`, `subscribe`, `unsubscribe`, `websockets`: info; `none`: off).
    fn log_type(&mut self, loc: &Loc, words: &[&str]) {
        const ALLOWED: &str = "debug, error, warning, notice, information, subscribe, \
                               unsubscribe, websockets, none or all";
        let level = match words {
            ["debug" | "all"] => LogLevel::Debug,
            ["error"] => LogLevel::Error,
            ["warning"] => LogLevel::Warn,
            ["notice" | "information" | "subscribe" | "unsubscribe" | "websockets"] => {
                LogLevel::Info
            }
            ["none"] => LogLevel::Off,
            [] => {
                self.error(
                    loc,
                    "log_type",
                    format!("missing value; allowed: {ALLOWED}"),
                );
                return;
            }
            [word] => {
                self.error(
                    loc,
                    "log_type",
                    format!("invalid value '{word}'; allowed: {ALLOWED}"),
                );
                return;
            }
            _ => {
                self.error(
                    loc,
                    "log_type",
                    format!(
                        "too many values '{}'; give one type per log_type line",
                        words.join(" ")
                    ),
                );
                return;
            }
        };
        self.log_type = Some(self.log_type.map_or(level, |old| old.max(level)));
    }

    /// `autosave_interval N`, `autosave_on_changes BOOL`: Mosquitto saves its in-memory state
    /// now and then; Culex commits every change to its store as it happens, so these are
    /// checked, then ignored with a warning saying why.
    fn persistence_ignored(&mut self, loc: &Loc, option: &str, rest: &str, words: &[&str]) {
        let (checked, why) = match option {
            "autosave_interval" => (
                match words {
                    [word] => parse_int(word, "0 or more seconds").and_then(|v| {
                        if v < 0 {
                            Err(format!(
                                "value {v} is out of range; allowed: 0 or more seconds"
                            ))
                        } else {
                            Ok(())
                        }
                    }),
                    [] => Err("missing value; allowed: 0 or more seconds".to_owned()),
                    _ => Err(format!(
                        "too many values '{rest}'; expected one value: 0 or more seconds"
                    )),
                },
                "Culex commits changes continuously (group commit, see persistence_sync); \
                 autosave_interval is ignored",
            ),
            _ => (
                match words {
                    [word] => parse_bool(word).map(|_| ()),
                    [] => Err("missing value; allowed: true or false".to_owned()),
                    _ => Err(format!("too many values '{rest}'; allowed: true or false")),
                },
                "Culex commits changes continuously (group commit, see persistence_sync); \
                 autosave_on_changes is ignored",
            ),
        };
        match checked {
            Ok(()) => self.warn(loc, why),
            Err(message) => self.error(loc, option, message),
        }
    }

    /// An option from the shared table.
    fn scalar(&mut self, loc: &Loc, spec: &'static Spec, rest: &str, words: &[&str]) {
        let key = spec.conf_key;
        let expected = match spec.kind {
            Kind::Bool => "true or false".to_owned(),
            Kind::Int { allowed, .. } => allowed.to_owned(),
            Kind::Str => "a string".to_owned(),
            Kind::Path => "a file path".to_owned(),
            Kind::Duration => {
                "a duration such as 2d or 1w (units s, h, d, w, m = 30 days, y = 365 days)"
                    .to_owned()
            }
            Kind::Seconds => "whole seconds, 0 or more (0 disables)".to_owned(),
            Kind::Delay => "whole milliseconds, 0 to 1000 (at most 1 s), e.g. 10".to_owned(),
            Kind::SocketAddr => "IP:PORT such as 127.0.0.1:9234 or [::1]:9234".to_owned(),
            Kind::Choice(words) => words.join(", "),
        };
        let value = match (spec.kind, words) {
            (_, []) => Err(format!("missing value; allowed: {expected}")),
            // Strings and paths take the rest of the line, like mosquitto.
            (Kind::Str, _) => Ok(Value::Str(rest.to_owned())),
            (Kind::Path, _) => Ok(Value::Path(PathBuf::from(rest))),
            (_, [_, _, ..]) => Err(format!(
                "too many values '{}'; expected one value: {expected}",
                words.join(" ")
            )),
            (Kind::Bool, [word]) => parse_bool(word).map(Value::Bool),
            (Kind::Int { .. }, [word]) => parse_int(word, &expected)
                .and_then(|v| check_int(spec, v))
                .map(Value::Int),
            (Kind::Duration, [word]) => {
                duration::parse_mosquitto(word).map(|d| Value::Duration(Some(d)))
            }
            (Kind::Seconds, [word]) => word
                .parse::<u64>()
                .map(|n| Value::Seconds(std::time::Duration::from_secs(n)))
                .map_err(|_| format!("invalid value '{word}'; allowed: {expected}")),
            (Kind::Delay, [word]) => duration::parse_delay_millis(word).map(Value::Delay),
            (Kind::SocketAddr, [word]) => options::parse_socket_addr(word).map(Value::Addr),
            (Kind::Choice(allowed), [word]) => {
                options::check_choice(allowed, word).map(|()| Value::Str((*word).to_owned()))
            }
        };
        match value {
            Ok(value) if spec.is_security() => self.security.push(SecuritySetting {
                spec,
                value,
                loc: loc.clone(),
                after_listener: self.listeners.len().checked_sub(1),
            }),
            Ok(value) => {
                if let Err(message) = options::apply(&mut self.config, spec, value) {
                    self.error(loc, key, message);
                    return;
                }
                if let Some(previous) = self.set_at.get(key) {
                    let previous = previous.label();
                    self.warn(
                        loc,
                        format!("option '{key}' is given more than once (also at {previous}); the last value is used"),
                    );
                }
                self.set_at.insert(key, loc.clone());
            }
            Err(message) => self.error(loc, key, message),
        }
    }

    /// `include_dir DIR`: every `*.conf` file in DIR, in alphabetical order.
    fn include_dir(&mut self, loc: &Loc, rest: &str, level: usize) {
        const KEY: &str = "include_dir";
        if level > 0 {
            self.error(
                loc,
                KEY,
                "include_dir is only allowed in the main configuration file (as in mosquitto)",
            );
            return;
        }
        if rest.is_empty() {
            self.error(loc, KEY, "missing value; expected: include_dir DIRECTORY");
            return;
        }
        // Like mosquitto, a relative directory is relative to the current
        // working directory, not to the including file.
        let dir = PathBuf::from(rest);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.error(
                    loc,
                    KEY,
                    format!(
                        "cannot open directory '{}': {e} (relative paths are relative to the current directory, as in mosquitto)",
                        dir.display()
                    ),
                );
                return;
            }
        };
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.error(
                        loc,
                        KEY,
                        format!("cannot list directory '{}': {e}", dir.display()),
                    );
                    return;
                }
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() > ".conf".len() && name.ends_with(".conf") {
                files.push((name, entry.path()));
            }
        }
        // Alphabetical, ignoring case like mosquitto (strcasecmp); ties by
        // exact name so the order is stable.
        files.sort_by(|(a, _), (b, _)| {
            a.to_lowercase()
                .cmp(&b.to_lowercase())
                .then_with(|| a.cmp(b))
        });
        for (_, file) in files {
            match read_text(&file) {
                Ok(text) => self.read(&file, &text, level + 1),
                Err(e) => self.diagnostics.extend(e.diagnostics),
            }
        }
    }

    /// Builds the listeners, applies the security options and the
    /// allow_anonymous rule, validates.
    fn finish(mut self, main_file: &Path) -> Result<Loaded, ConfigError> {
        if let Some(level) = self.log_type {
            self.config.log.level = level;
        }
        let mut origins: Vec<Origin> = Vec::new();
        let mut listeners = Vec::new();
        let mut opts = Vec::new();
        let default_opts = std::mem::take(&mut self.default_opts);
        let has_default = self.default_port.is_some() || self.bind_address.is_some();
        if has_default {
            let port = self.default_port.as_ref().map_or(DEFAULT_PORT, |(p, _)| *p);
            let host = self.bind_address.as_ref().map(|(h, _)| h.clone());
            // Report problems with the default listener at bind_address when
            // it is about the host, else at port.
            let (option, loc) = match (&self.bind_address, &self.default_port) {
                (Some((_, loc)), None) => ("bind_address", Some(loc.clone())),
                (_, Some((_, loc))) => ("port", Some(loc.clone())),
                (None, None) => ("port", None),
            };
            origins.push(Origin {
                option,
                loc: loc.clone(),
                options: HashMap::new(),
            });
            listeners.push(Listener {
                host,
                ..Listener::all_interfaces(port)
            });
            opts.push((default_opts, loc));
        } else {
            for (key, (_, loc)) in sorted(&default_opts) {
                self.error(
                    &loc,
                    key,
                    format!(
                        "option '{key}' applies to a listener, but there is no `listener` line \
                         before it and no default listener (`port`); put it after the \
                         `listener` line it is for"
                    ),
                );
            }
        }
        // Index of the first `listener` line in `listeners`.
        let first_line = listeners.len();
        for pending in self.listeners.drain(..) {
            origins.push(Origin {
                option: "listener",
                loc: Some(pending.loc.clone()),
                options: HashMap::new(),
            });
            listeners.push(pending.listener);
            opts.push((pending.opts, Some(pending.loc)));
        }
        for (i, (listener_opts, listener_loc)) in opts.into_iter().enumerate() {
            let (Some(listener), Some(origin)) = (listeners.get_mut(i), origins.get_mut(i)) else {
                continue;
            };
            for (key, (_, loc)) in &listener_opts.values {
                origin.options.insert(key, loc.clone());
            }
            if let Some((ListenerValue::Protocol(p), _)) = listener_opts.values.get("protocol") {
                listener.protocol = *p;
            }
            if let Some((ListenerValue::Domain(d), _)) = listener_opts.values.get("socket_domain") {
                listener.socket_domain = Some(*d);
            }
            listener.bind_interface = listener_opts.text("bind_interface");
            listener.mount_point = listener_opts.text("mount_point");
            match build_tls(&listener_opts) {
                Ok(tls) => listener.tls = tls,
                Err((loc, key, message)) => {
                    let loc = loc.or(listener_loc);
                    match loc {
                        Some(loc) => self.error(&loc, key, message),
                        None => self.diagnostics.push(Diagnostic {
                            file: main_file.to_path_buf(),
                            line: None,
                            key: key.to_owned(),
                            message,
                        }),
                    }
                }
            }
        }

        let defines_listeners = !listeners.is_empty();
        if defines_listeners {
            self.config.listeners = listeners;
        } else {
            // Mosquitto 2 without listeners: loopback only, anonymous allowed.
            self.config.listeners = Listener::loopback(DEFAULT_PORT);
        }
        self.apply_security(&mut origins, has_default, first_line, defines_listeners);

        for pending in std::mem::take(&mut self.bridges) {
            if pending.failed {
                continue;
            }
            match pending.draft.finish() {
                Ok(bridge) => self.config.bridges.push(bridge),
                Err((option, message)) => {
                    let at = pending.locs.get(option).unwrap_or(&pending.loc).clone();
                    let key = if pending.locs.contains_key(option) {
                        option
                    } else {
                        "connection"
                    };
                    // Name the option in the message when reported at the `connection` line.
                    let message = if key == option {
                        message
                    } else {
                        format!("{message} (option '{option}')")
                    };
                    self.error(&at, key, message);
                }
            }
        }
        for problem in validate::problems(&self.config) {
            let diagnostic = self.locate(problem, &origins, main_file);
            self.diagnostics.push(diagnostic);
        }
        if self.diagnostics.is_empty() {
            Ok(Loaded {
                config: self.config,
                warnings: self.warnings,
            })
        } else {
            Err(ConfigError {
                diagnostics: self.diagnostics,
            })
        }
    }

    /// Applies `allow_anonymous`, `password_file` and `acl_file`: globally,
    /// or with `per_listener_settings true` to the listener each follows.
    fn apply_security(
        &mut self,
        origins: &mut [Origin],
        has_default: bool,
        first_line: usize,
        defines_listeners: bool,
    ) {
        let settings = std::mem::take(&mut self.security);
        let per_listener = self.config.per_listener_settings;
        if per_listener {
            if !defines_listeners {
                let loc = self.set_at.get("per_listener_settings").cloned();
                if let Some(loc) = loc {
                    self.error(
                        &loc,
                        "per_listener_settings",
                        "per_listener_settings true needs at least one `listener` line \
                         (each listener then has its own security options)",
                    );
                }
                return;
            }
            for listener in &mut self.config.listeners {
                listener.security = Some(Security::per_listener_default());
            }
        }
        // Where each option was set, per target (None = global), for the
        // "given more than once" warning.
        let mut seen: HashMap<(Option<usize>, &'static str), Loc> = HashMap::new();
        for setting in settings {
            let key = setting.spec.key;
            let target = if per_listener {
                match setting.after_listener {
                    Some(line) => Some(first_line + line),
                    None if has_default => Some(0),
                    None => {
                        self.error(
                            &setting.loc,
                            key,
                            format!(
                                "with per_listener_settings true, '{key}' applies to the listener \
                                 it follows, but there is no `listener` line before it and no \
                                 default listener (`port`); put it after the `listener` line it is for"
                            ),
                        );
                        continue;
                    }
                }
            } else {
                None
            };
            let security = match target {
                Some(i) => self
                    .config
                    .listeners
                    .get_mut(i)
                    .and_then(|l| l.security.as_mut()),
                None => Some(&mut self.config.security),
            };
            let Some(security) = security else {
                continue;
            };
            if let Err(message) = options::apply_security(security, setting.spec, setting.value) {
                self.error(&setting.loc, key, message);
                continue;
            }
            if let Some(previous) = seen.insert((target, key), setting.loc.clone()) {
                let previous = previous.label();
                let scope = if target.is_some() {
                    " for this listener"
                } else {
                    ""
                };
                self.warn(
                    &setting.loc,
                    format!("option '{key}' is given more than once{scope} (also at {previous}); the last value is used"),
                );
            }
            match target.and_then(|i| origins.get_mut(i)) {
                Some(origin) => {
                    origin.options.insert(key, setting.loc);
                }
                None => {
                    self.set_at.insert(key, setting.loc);
                }
            }
        }
        // Mosquitto 2 rule: a file that defines listeners does not allow
        // anonymous clients unless it says so.
        if defines_listeners && !self.set_at.contains_key("allow_anonymous") {
            self.config.security.allow_anonymous = false;
        }
    }

    /// Turns a validation problem into a diagnostic at the line that caused
    /// it.
    fn locate(&self, problem: Problem, origins: &[Origin], main_file: &Path) -> Diagnostic {
        let mut key = problem.option.map_or_else(String::new, str::to_owned);
        let mut loc = problem.option.and_then(|o| self.set_at.get(o).cloned());
        if let Some(origin) = problem.listener.and_then(|i| origins.get(i)) {
            match problem.option.and_then(|o| origin.options.get(o)) {
                Some(l) => loc = Some(l.clone()),
                None => {
                    key = origin.option.to_owned();
                    loc = origin.loc.clone();
                    if origin.option == "port" && problem.key.ends_with(".host") {
                        if let Some((_, l)) = &self.bind_address {
                            key = "bind_address".to_owned();
                            loc = Some(l.clone());
                        }
                    }
                }
            }
        }
        Diagnostic {
            file: loc
                .as_ref()
                .map_or_else(|| main_file.to_path_buf(), |l| l.file.clone()),
            line: loc.map(|l| l.line),
            key,
            message: problem.message,
        }
    }
}

/// The listener options of `opts` in file order.
fn sorted(opts: &ListenerOpts) -> Vec<(&'static str, (ListenerValue, Loc))> {
    let mut all: Vec<(&'static str, (ListenerValue, Loc))> =
        opts.values.iter().map(|(k, v)| (*k, v.clone())).collect();
    all.sort_by(|a, b| (&a.1 .1.file, a.1 .1.line).cmp(&(&b.1 .1.file, b.1 .1.line)));
    all
}

/// The TLS settings of a listener from its options; `None` when it has no
/// TLS option. The error names where and which option is wrong.
#[allow(clippy::type_complexity)]
fn build_tls(opts: &ListenerOpts) -> Result<Option<Tls>, (Option<Loc>, &'static str, String)> {
    let given: Vec<(&'static str, (ListenerValue, Loc))> = sorted(opts)
        .into_iter()
        .filter(|(k, _)| TLS_OPTIONS.contains(k))
        .collect();
    let Some((first, (_, first_loc))) = given.first() else {
        return Ok(None);
    };
    let (certfile, keyfile) = match (opts.path("certfile"), opts.path("keyfile")) {
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err((
                opts.loc("certfile").cloned(),
                "certfile",
                "certfile is given without keyfile; a TLS listener needs both".to_owned(),
            ))
        }
        (None, Some(_)) => {
            return Err((
                opts.loc("keyfile").cloned(),
                "keyfile",
                "keyfile is given without certfile; a TLS listener needs both".to_owned(),
            ))
        }
        (None, None) => {
            return Err((
                Some(first_loc.clone()),
                first,
                format!(
                    "'{first}' is a TLS option, but this listener has no certfile and keyfile; \
                     a TLS listener needs both"
                ),
            ))
        }
    };
    let tls_version = match opts.values.get("tls_version") {
        Some((ListenerValue::Version(v), _)) => *v,
        _ => TlsVersion::default(),
    };
    Ok(Some(Tls {
        certfile,
        keyfile,
        cafile: opts.path("cafile"),
        capath: opts.path("capath"),
        crlfile: opts.path("crlfile"),
        require_certificate: opts.flag("require_certificate"),
        use_identity_as_username: opts.flag("use_identity_as_username"),
        use_subject_as_username: opts.flag("use_subject_as_username"),
        ciphers: opts.text("ciphers"),
        ciphers_tls13: opts.text("ciphers_tls1.3"),
        tls_version,
    }))
}

/// A boolean: `true`/`false`, or `1`/`0` as Mosquitto accepts.
fn parse_bool(word: &str) -> Result<bool, String> {
    match word {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("invalid value '{other}'; allowed: true or false")),
    }
}

/// A port: 0 to 65535 (0 = an ephemeral port chosen by the system).
fn parse_port(word: &str) -> Result<u16, String> {
    const ALLOWED: &str = "0 to 65535 (0 = an ephemeral port chosen by the system)";
    let value = parse_int(word, ALLOWED)?;
    u16::try_from(value).map_err(|_| format!("port {value} is out of range; allowed: {ALLOWED}"))
}

/// A decimal integer, strictly: optional `-`, digits, no leading zeros.
fn parse_int(word: &str, allowed: &str) -> Result<i128, String> {
    let digits = word.strip_prefix('-').unwrap_or(word);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "value '{word}' is not a whole number; allowed: {allowed}"
        ));
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(format!(
            "value '{word}' has a leading zero (mosquitto would read it as octal); write it without, allowed: {allowed}"
        ));
    }
    word.parse::<i128>()
        .map_err(|_| format!("value {word} is out of range; allowed: {allowed}"))
}

/// The message for an option Culex does not know.
fn unknown_option_message(option: &str) -> String {
    if MOSQUITTO_UNSUPPORTED.contains(&option)
        || option.starts_with("auth_opt_")
        || option.starts_with("plugin_opt_")
        || option.starts_with("bridge_")
    {
        return format!(
            "unknown option '{option}': this mosquitto option is not supported yet by Culex"
        );
    }
    if option.contains('=') || option.starts_with('[') {
        return format!(
            "unknown option '{option}': this file is read as mosquitto.conf syntax (`option value` lines); \
             name it *.toml to use TOML syntax"
        );
    }
    let supported = supported_options();
    if let Some(close) = supported
        .iter()
        .filter(|s| edit_distance(s, option) <= 2)
        .min_by_key(|s| edit_distance(s, option))
    {
        return format!("unknown option '{option}'; did you mean '{close}'?");
    }
    format!(
        "unknown option '{option}'; supported options: {}",
        supported.join(", ")
    )
}

/// Every option name this syntax accepts without an error.
fn supported_options() -> Vec<&'static str> {
    let mut names = vec![
        "listener",
        "port",
        "bind_address",
        "include_dir",
        "log_type",
        "maximum_qos",
        "set_tcp_nodelay",
        "queue_qos0_messages",
    ];
    names.extend(LISTENER_OPTIONS);
    names.push("connection");
    names.extend(bridges::CONF_OPTIONS);
    names.extend(PERSISTENCE_IGNORED);
    names.extend(
        options::OPTIONS
            .iter()
            .map(|s| s.conf_key)
            .filter(|k| !k.is_empty()),
    );
    names
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests;
