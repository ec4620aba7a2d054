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

mod bridge_options;
mod finish;
mod listeners;
mod words;

use listeners::{build_tls, sorted};
#[cfg(test)]
use words::{edit_distance, supported_options};
use words::{parse_bool, parse_int, parse_port, unknown_option_message};

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
            Kind::Urls => "nats://HOST:PORT, several separated by commas".to_owned(),
        };
        let value = match (spec.kind, words) {
            (_, []) => Err(format!("missing value; allowed: {expected}")),
            // Strings and paths take the rest of the line, like mosquitto.
            (Kind::Str, _) => Ok(Value::Str(rest.to_owned())),
            (Kind::Path, _) => Ok(Value::Path(PathBuf::from(rest))),
            (Kind::Urls, _) => options::parse_urls([rest]).map(Value::Urls),
            (_, [_, _, ..]) => Err(format!(
                "too many values '{}'; expected one value: {expected}",
                words.join(" ")
            )),
            (Kind::Bool, [word]) => parse_bool(word).map(Value::Bool),
            (Kind::Int { .. }, [word]) => parse_int(word, &expected)
                .and_then(|v| check_int(spec, v))
                .map(Value::of_int),
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
}

#[cfg(test)]
mod tests;
