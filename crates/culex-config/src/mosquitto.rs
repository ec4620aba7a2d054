//! mosquitto.conf syntax.
//!
//! One `option value...` per line; lines whose first non-blank character is
//! `#` are comments; blank lines are ignored; leading and trailing blanks are
//! trimmed; words are separated by spaces or tabs. See `docs/configuration.md`
//! for the options and the differences from Mosquitto.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Diagnostic};
use crate::options::{self, check_int, Kind, Spec, Value};
use crate::validate::{self, Problem};
use crate::{duration, Config, Listener, Loaded, DEFAULT_PORT};

/// Options that are accepted, with a warning, and otherwise ignored.
const IGNORED: &[&str] = &["connection_messages", "pid_file", "user"];

/// Mosquitto options Culex does not support yet: an error that says so.
const MOSQUITTO_UNSUPPORTED: &[&str] = &[
    "accept_protocol_versions",
    "acl_file",
    "address",
    "addresses",
    "allow_duplicate_messages",
    "auth_opt_",
    "auth_plugin",
    "auth_plugin_deny_special_chars",
    "autosave_interval",
    "autosave_on_changes",
    "bind_interface",
    "bridge_alpn",
    "bridge_attempt_unsubscribe",
    "bridge_bind_address",
    "bridge_cafile",
    "bridge_capath",
    "bridge_certfile",
    "bridge_identity",
    "bridge_insecure",
    "bridge_keyfile",
    "bridge_max_packet_size",
    "bridge_max_topic_alias",
    "bridge_outgoing_retain",
    "bridge_protocol_version",
    "bridge_psk",
    "bridge_receive_maximum",
    "bridge_require_ocsp",
    "bridge_session_expiry_interval",
    "bridge_tls_version",
    "cafile",
    "capath",
    "certfile",
    "check_retain_source",
    "ciphers",
    "ciphers_tls1.3",
    "cleansession",
    "clientid",
    "clientid_prefixes",
    "connection",
    "crlfile",
    "dhparamfile",
    "enable_proxy_protocol",
    "global_max_clients",
    "global_max_connections",
    "http_dir",
    "idle_timeout",
    "keepalive_interval",
    "keyfile",
    "local_cleansession",
    "local_clientid",
    "local_password",
    "local_username",
    "max_inflight_bytes",
    "max_topic_alias",
    "memory_limit",
    "mount_point",
    "notification_topic",
    "notifications",
    "notifications_local_only",
    "ocsp_data",
    "password",
    "password_file",
    "per_listener_settings",
    "persistence",
    "persistence_file",
    "persistence_location",
    "plugin",
    "plugin_load",
    "plugin_opt_",
    "plugin_use",
    "protocol",
    "proxy_protocol_v2_require_tls",
    "psk_file",
    "psk_hint",
    "queue_qos0_messages",
    "remote_clientid",
    "remote_password",
    "remote_username",
    "require_certificate",
    "restart_timeout",
    "retain_expiry_interval",
    "retry_interval",
    "round_robin",
    "set_tcp_nodelay",
    "socket_domain",
    "start_type",
    "store_clean_interval",
    "sys_interval",
    "threshold",
    "tls_engine",
    "tls_engine_kpass_sha1",
    "tls_keyform",
    "tls_version",
    "topic",
    "try_private",
    "use_identity_as_username",
    "use_subject_as_username",
    "use_username_as_clientid",
    "username",
    "websockets_headers_size",
    "websockets_log_level",
    "websockets_origin",
];

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
    /// `listener` lines, in order.
    listeners: Vec<(Listener, Loc)>,
    /// `port`, for the default listener.
    default_port: Option<(u16, Loc)>,
    /// `bind_address`, for the default listener.
    bind_address: Option<(String, Loc)>,
    /// Where each scalar option was last set.
    set_at: HashMap<&'static str, Loc>,
}

/// Loads a mosquitto.conf file (and the files it includes).
pub(crate) fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let mut reader = Reader {
        config: Config::default(),
        diagnostics: Vec::new(),
        warnings: Vec::new(),
        listeners: Vec::new(),
        default_port: None,
        bind_address: None,
        set_at: HashMap::new(),
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
            _ => {
                if let Some(spec) = options::find(option) {
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
            Ok(port) => self.listeners.push((Listener { host, port }, loc.clone())),
            Err(message) => self.error(loc, "listener", message),
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

    /// An option from the shared table.
    fn scalar(&mut self, loc: &Loc, spec: &'static Spec, rest: &str, words: &[&str]) {
        let key = spec.key;
        let expected = match spec.kind {
            Kind::Bool => "true or false".to_owned(),
            Kind::Int { allowed, .. } => allowed.to_owned(),
            Kind::Str => "a string".to_owned(),
            Kind::Duration => {
                "a duration such as 2d or 1w (units s, h, d, w, m = 30 days, y = 365 days)"
                    .to_owned()
            }
        };
        let value = match (spec.kind, words) {
            (_, []) => Err(format!("missing value; allowed: {expected}")),
            // Strings take the rest of the line, like mosquitto.
            (Kind::Str, _) => Ok(Value::Str(rest.to_owned())),
            (_, [_, _, ..]) => Err(format!(
                "too many values '{}'; expected one value: {expected}",
                words.join(" ")
            )),
            (Kind::Bool, [word]) => match *word {
                "true" | "1" => Ok(Value::Bool(true)),
                "false" | "0" => Ok(Value::Bool(false)),
                other => Err(format!("invalid value '{other}'; allowed: true or false")),
            },
            (Kind::Int { .. }, [word]) => parse_int(word, &expected)
                .and_then(|v| check_int(spec, v))
                .map(Value::Int),
            (Kind::Duration, [word]) => {
                duration::parse_mosquitto(word).map(|d| Value::Duration(Some(d)))
            }
        };
        match value {
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

    /// Builds the listeners, applies the allow_anonymous rule, validates.
    fn finish(mut self, main_file: &Path) -> Result<Loaded, ConfigError> {
        let mut origins: Vec<(&'static str, Option<Loc>)> = Vec::new();
        let mut listeners = Vec::new();
        if self.default_port.is_some() || self.bind_address.is_some() {
            let port = self.default_port.as_ref().map_or(DEFAULT_PORT, |(p, _)| *p);
            let host = self.bind_address.as_ref().map(|(h, _)| h.clone());
            // Report problems with the default listener at bind_address when
            // it is about the host, else at port.
            let origin = match (&self.bind_address, &self.default_port) {
                (Some((_, loc)), None) => ("bind_address", Some(loc.clone())),
                (_, Some((_, loc))) => ("port", Some(loc.clone())),
                (None, None) => ("port", None),
            };
            origins.push(origin);
            listeners.push(Listener { host, port });
        }
        for (listener, loc) in self.listeners.drain(..) {
            origins.push(("listener", Some(loc)));
            listeners.push(listener);
        }
        if listeners.is_empty() {
            // Mosquitto 2 without listeners: loopback only, anonymous allowed.
            self.config.listeners = Listener::loopback(DEFAULT_PORT);
        } else {
            self.config.listeners = listeners;
            if !self.set_at.contains_key("allow_anonymous") {
                self.config.security.allow_anonymous = false;
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

    /// Turns a validation problem into a diagnostic at the line that caused
    /// it.
    fn locate(
        &self,
        problem: Problem,
        origins: &[(&'static str, Option<Loc>)],
        main_file: &Path,
    ) -> Diagnostic {
        let mut key = problem.option.map_or_else(String::new, str::to_owned);
        let mut loc = problem.option.and_then(|o| self.set_at.get(o).cloned());
        if let Some(i) = problem.listener {
            if let Some((option, origin)) = origins.get(i) {
                key = (*option).to_owned();
                loc = origin.clone();
                if *option == "port" && problem.key.ends_with(".host") {
                    if let Some((_, l)) = &self.bind_address {
                        key = "bind_address".to_owned();
                        loc = Some(l.clone());
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
    let mut names = vec!["listener", "port", "bind_address", "include_dir"];
    names.extend(options::OPTIONS.iter().map(|s| s.key));
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
