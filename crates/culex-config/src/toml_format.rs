//! TOML syntax, with `CULEX__SECTION__KEY` environment overrides.
//!
//! Loading goes in three steps:
//!
//! 1. the file is parsed with `toml_edit`, which keeps the position of every
//!    key, and every key and value is checked against the option table, so
//!    that every problem (unknown key, wrong type, out of range) is reported
//!    with its line; the environment overrides are checked the same way;
//! 2. the values checked in step 1 are stored through the option table, the file's first
//!    and then the environment's; `[[listeners]]` are deserialized by the `config` crate
//!    (serde, `deny_unknown_fields`);
//! 3. the result is validated like any configuration.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml_edit::{ImDocument, Item, TableLike, Value as TomlValue};

use crate::error::{ConfigError, Diagnostic};
use crate::options::{self, check_int, Kind, Section, Spec, Value};
use crate::validate;
use crate::{duration, Config, Loaded, Security};

mod bridges;
mod listeners;

use listeners::check_listeners;

/// Prefix of environment overrides, followed by `SECTION__KEY`.
pub(crate) const ENV_PREFIX: &str = "CULEX__";

/// The environment variables whose name starts with `CULEX__` (in any case,
/// as the `config` crate matches them).
pub(crate) fn culex_env_vars() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            name.to_ascii_uppercase()
                .starts_with(ENV_PREFIX)
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect();
    vars.sort();
    vars
}

/// What the checks of step 1 learned.
struct Checked {
    diagnostics: Vec<Diagnostic>,
    /// Line of each key path (`limits.max_qos`, `listeners[0]`,
    /// `listeners[0].port`).
    lines: HashMap<String, usize>,
    /// Whether the file defines listeners.
    listeners_given: bool,
    /// Options set from the environment: path -> (variable name, raw value).
    from_env: HashMap<String, (String, String)>,
    /// `[[bridges]]`, checked and finished.
    bridges: Vec<crate::bridge::BridgeConfig>,
    /// Option values of the file and then of the environment, in the order they are stored.
    values: Vec<(&'static Spec, Value)>,
    /// Security option values of `[listeners.security]`: listener index, option, value.
    listener_security: Vec<(usize, &'static Spec, Value)>,
}

impl Checked {
    fn error(&mut self, file: &Path, line: Option<usize>, key: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            file: file.to_path_buf(),
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }
}

/// Loads a TOML file with the given `CULEX__` environment variables.
pub(crate) fn load(path: &Path, env: Vec<(String, String)>) -> Result<Loaded, ConfigError> {
    let file_error = |line: Option<usize>, message: String| {
        ConfigError::single(Diagnostic {
            file: path.to_path_buf(),
            line,
            key: String::new(),
            message,
        })
    };
    if path.is_dir() {
        return Err(file_error(
            None,
            "cannot read configuration file: it is a directory".to_owned(),
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_error(None, format!("cannot read configuration file: {e}")))?;

    // Step 1: check the file and the environment, with positions.
    let doc = ImDocument::parse(text.as_str()).map_err(|e| {
        let line = e.span().map(|span| line_of(&text, span.start));
        file_error(
            line,
            format!("TOML syntax error: {}", e.message().trim_end()),
        )
    })?;
    let mut checked = Checked {
        diagnostics: Vec::new(),
        lines: HashMap::new(),
        listeners_given: false,
        from_env: HashMap::new(),
        bridges: Vec::new(),
        values: Vec::new(),
        listener_security: Vec::new(),
    };
    check_document(path, &text, &doc, &mut checked);
    check_env(&env, &mut checked);
    if !checked.diagnostics.is_empty() {
        return Err(ConfigError {
            diagnostics: checked.diagnostics,
        });
    }

    // Step 2: store the values; deserialize the listeners.
    let mut config = Config::default();
    if checked.listeners_given {
        let merged = config::Config::builder()
            .add_source(config::File::from_str(
                &listeners_only(&doc),
                config::FileFormat::Toml,
            ))
            .build()
            .map_err(|e| file_error(None, format!("cannot load configuration: {e}")))?;
        config.listeners = merged
            .get("listeners")
            .map_err(|e| file_error(None, format!("invalid listeners: {e}")))?;
    }
    for (spec, value) in std::mem::take(&mut checked.values) {
        if let Err(message) = options::apply(&mut config, spec, value) {
            return Err(file_error(
                checked.lines.get(&spec.path()).copied(),
                message,
            ));
        }
    }
    for (i, spec, value) in std::mem::take(&mut checked.listener_security) {
        let Some(listener) = config.listeners.get_mut(i) else {
            continue;
        };
        let security = listener
            .security
            .get_or_insert_with(Security::per_listener_default);
        if let Err(message) = options::apply_security(security, spec, value) {
            return Err(file_error(None, message));
        }
    }
    config.bridges = std::mem::take(&mut checked.bridges);
    if let Err(diagnostics) = per_listener(path, &mut config, &checked) {
        return Err(ConfigError { diagnostics });
    }
    // Mosquitto 2 rule: a configuration that defines its own listeners does
    // not allow anonymous clients unless it says so.
    if checked.listeners_given
        && !checked.lines.contains_key("security.allow_anonymous")
        && !checked.from_env.contains_key("security.allow_anonymous")
    {
        config.security.allow_anonymous = false;
    }

    // Step 3: validate.
    let diagnostics: Vec<Diagnostic> = validate::problems(&config)
        .into_iter()
        .map(|problem| {
            if let Some((name, _)) = checked.from_env.get(&problem.key) {
                return Diagnostic {
                    file: PathBuf::from(format!("environment variable {name}")),
                    line: None,
                    key: problem.key,
                    message: problem.message,
                };
            }
            let line = checked.lines.get(&problem.key).copied().or_else(|| {
                problem
                    .listener
                    .and_then(|i| checked.lines.get(&format!("listeners[{i}]")).copied())
            });
            Diagnostic {
                file: path.to_path_buf(),
                line,
                key: problem.key,
                message: problem.message,
            }
        })
        .collect();
    if diagnostics.is_empty() {
        Ok(Loaded {
            config,
            warnings: Vec::new(),
        })
    } else {
        Err(ConfigError { diagnostics })
    }
}

/// `per_listener_settings`: with `true`, every listener gets its own
/// security settings (anonymous refused unless its `[listeners.security]`
/// says otherwise) and the global `[security]` must be empty.
fn per_listener(
    path: &Path,
    config: &mut Config,
    checked: &Checked,
) -> Result<(), Vec<Diagnostic>> {
    let diagnostic = |key: &str, message: String| {
        let (file, line) = match checked.from_env.get(key) {
            Some((name, _)) => (PathBuf::from(format!("environment variable {name}")), None),
            None => (path.to_path_buf(), checked.lines.get(key).copied()),
        };
        Diagnostic {
            file,
            line,
            key: key.to_owned(),
            message,
        }
    };
    let mut out = Vec::new();
    if !config.per_listener_settings {
        return Ok(());
    }
    if !checked.listeners_given {
        out.push(diagnostic(
            "per_listener_settings",
            "per_listener_settings = true needs [[listeners]] (each listener then has its own [listeners.security])".to_owned(),
        ));
    }
    let mut global: Vec<&String> = checked
        .lines
        .keys()
        .chain(checked.from_env.keys())
        .filter(|k| k.starts_with("security."))
        .collect();
    global.sort_by_key(|k| (checked.lines.get(*k).copied(), (*k).clone()));
    global.dedup();
    for key in global {
        out.push(diagnostic(
            key,
            "with per_listener_settings = true there are no global security settings; \
             set this in the [listeners.security] of each listener"
                .to_owned(),
        ));
    }
    for (i, listener) in config.listeners.iter_mut().enumerate() {
        let security = listener
            .security
            .get_or_insert_with(Security::per_listener_default);
        if !checked
            .lines
            .contains_key(&format!("listeners[{i}].security.allow_anonymous"))
        {
            security.allow_anonymous = false;
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

/// A path value: any non-empty string (whether the file can be read is
/// checked by validation).
fn check_path(text: &str) -> Result<(), String> {
    if text.is_empty() {
        Err("the path must not be empty; leave the key out instead".to_owned())
    } else {
        Ok(())
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Line of `key` in `table`, if known.
fn key_line(text: &str, table: &dyn TableLike, key: &str) -> Option<usize> {
    table
        .key(key)
        .and_then(|k| k.span())
        .map(|span| line_of(text, span.start))
}

const TOP_LEVEL: &str = "per_listener_settings, listeners, security, limits, sessions, \
     persistence, mqtt, metrics, sys, log, cluster, bridges";

fn check_document(path: &Path, text: &str, doc: &ImDocument<&str>, checked: &mut Checked) {
    let root = doc.as_table();
    for (key, item) in root.iter() {
        let line = key_line(text, root, key);
        if key == "bridges" {
            let found = bridges::check_bridges(path, text, item, line, checked);
            checked.bridges = found;
        } else if key == "listeners" {
            checked.listeners_given = true;
            if let Some(line) = line {
                checked.lines.insert("listeners".to_owned(), line);
            }
            check_listeners(path, text, item, line, checked);
        } else if let Some(section) = Section::from_name(key) {
            match item.as_table_like() {
                Some(table) => check_section(path, text, section, table, checked),
                None => checked.error(
                    path,
                    line,
                    key,
                    format!(
                        "'{key}' must be a table: write a [{key}] section; found {}",
                        describe_item(item)
                    ),
                ),
            }
        } else if let Some(spec) = options::find_in(Section::Root, key) {
            if let Some(line) = line {
                checked.lines.insert(spec.path(), line);
            }
            match parse_value(spec, item) {
                Ok(value) => checked.values.push((spec, value)),
                Err(message) => checked.error(path, line, key, message),
            }
        } else if let Some(spec) = options::find(key) {
            checked.error(
                path,
                line,
                key,
                format!(
                    "unknown key '{key}' at the top level; it belongs in the [{}] section: {}",
                    spec.section.name(),
                    spec.path()
                ),
            );
        } else {
            checked.error(
                path,
                line,
                key,
                format!("unknown key '{key}'; allowed top-level keys: {TOP_LEVEL}"),
            );
        }
    }
}

fn check_section(
    path: &Path,
    text: &str,
    section: Section,
    table: &dyn TableLike,
    checked: &mut Checked,
) {
    for (key, item) in table.iter() {
        let line = key_line(text, table, key);
        let full = format!("{}.{key}", section.name());
        let Some(spec) = options::find_in(section, key) else {
            let mut message = format!(
                "unknown key '{full}'; allowed keys in [{}]: {}",
                section.name(),
                options::keys_of(section).join(", ")
            );
            if let Some(other) = options::find(key) {
                message = if other.section == Section::Root {
                    format!(
                        "unknown key '{full}'; '{key}' is a top-level key: write it before the first [section]"
                    )
                } else {
                    format!(
                        "unknown key '{full}'; '{key}' belongs in the [{}] section",
                        other.section.name()
                    )
                };
            }
            checked.error(path, line, &full, message);
            continue;
        };
        if let Some(line) = line {
            checked.lines.insert(full.clone(), line);
        }
        match parse_value(spec, item) {
            Ok(value) => checked.values.push((spec, value)),
            Err(message) => checked.error(path, line, &full, message),
        }
    }
}

/// Checks a file value against the option's kind and range.
fn parse_value(spec: &Spec, item: &Item) -> Result<Value, String> {
    let value = item.as_value();
    match (spec.kind, value) {
        (Kind::Bool, Some(TomlValue::Boolean(b))) => Ok(Value::Bool(*b.value())),
        (Kind::Int { .. }, Some(TomlValue::Integer(i))) => {
            check_int(spec, i128::from(*i.value())).map(Value::of_int)
        }
        (Kind::Str, Some(TomlValue::String(s))) => Ok(Value::Str(s.value().clone())),
        (Kind::Path, Some(TomlValue::String(s))) => {
            check_path(s.value()).map(|()| Value::Path(PathBuf::from(s.value())))
        }
        (Kind::Duration, Some(TomlValue::String(s))) => {
            duration::parse_toml(s.value()).map(Value::Duration)
        }
        (Kind::Seconds, Some(TomlValue::Integer(i))) if *i.value() < 0 => Err(format!(
            "value {} is out of range; allowed: 0 or more seconds (0 disables)",
            i.value()
        )),
        (Kind::Seconds, Some(TomlValue::Integer(i))) => {
            duration::parse_seconds(&i.value().to_string()).map(Value::Seconds)
        }
        (Kind::Seconds, Some(TomlValue::String(s))) => {
            duration::parse_seconds(s.value()).map(Value::Seconds)
        }
        (Kind::Delay, Some(TomlValue::String(s))) => {
            duration::parse_delay(s.value()).map(Value::Delay)
        }
        (Kind::SocketAddr, Some(TomlValue::String(s))) => {
            options::parse_socket_addr(s.value()).map(Value::Addr)
        }
        (Kind::Choice(allowed), Some(TomlValue::String(s))) => {
            options::check_choice(allowed, s.value()).map(|()| Value::Str(s.value().clone()))
        }
        (Kind::Urls, Some(TomlValue::String(s))) => {
            options::parse_urls([s.value().as_str()]).map(Value::Urls)
        }
        (Kind::Urls, Some(TomlValue::Array(array))) => {
            let items: Option<Vec<&str>> = array.iter().map(|v| v.as_str()).collect();
            match items {
                Some(items) => options::parse_urls(items).map(Value::Urls),
                None => Err(format!(
                    "expected {}, found an array with a non-string item",
                    expected(Kind::Urls)
                )),
            }
        }
        (kind, _) => Err(format!(
            "expected {}, found {}",
            expected(kind),
            describe_item(item)
        )),
    }
}

/// The file's `listeners` alone, without `[listeners.security]` (stored through the option
/// table), for serde.
fn listeners_only(doc: &ImDocument<&str>) -> String {
    let mut out = toml_edit::DocumentMut::new();
    if let Some(item) = doc.as_table().get("listeners") {
        let mut item = item.clone();
        match &mut item {
            Item::ArrayOfTables(array) => {
                for table in array.iter_mut() {
                    table.remove("security");
                }
            }
            Item::Value(TomlValue::Array(array)) => {
                for value in array.iter_mut() {
                    if let TomlValue::InlineTable(table) = value {
                        table.remove("security");
                    }
                }
            }
            _ => {}
        }
        out.insert("listeners", item);
    }
    out.to_string()
}

fn expected(kind: Kind) -> String {
    match kind {
        Kind::Bool => "true or false".to_owned(),
        Kind::Int { allowed, .. } => format!("an integer ({allowed})"),
        Kind::Str => "a string".to_owned(),
        Kind::Path => "a file path (a string)".to_owned(),
        Kind::Duration => {
            "a duration string such as \"30m\" (minutes), \"12h\", \"2d\", \"1w\", or \"never\""
                .to_owned()
        }
        Kind::Seconds => {
            "whole seconds (an integer, 0 disables) or a duration string such as \"10s\"".to_owned()
        }
        Kind::Delay => {
            "a duration string such as \"10ms\", \"0ms\" or \"1s\" (at most 1 s)".to_owned()
        }
        Kind::SocketAddr => "a string \"IP:PORT\" such as \"127.0.0.1:9234\"".to_owned(),
        Kind::Choice(words) => format!("one of the strings {}", words.join(", ")),
        Kind::Urls => "an array of strings such as [\"nats://10.0.0.1:4222\"]".to_owned(),
    }
}

/// "integer 3", "string \"x\"", ... for messages.
fn describe_item(item: &Item) -> String {
    match item {
        Item::None => "nothing".to_owned(),
        Item::Table(_) => "a table".to_owned(),
        Item::ArrayOfTables(_) => "an array of tables".to_owned(),
        Item::Value(v) => match v {
            TomlValue::String(s) => format!("string {:?}", s.value()),
            TomlValue::Integer(i) => format!("integer {}", i.value()),
            TomlValue::Float(f) => format!("float {}", f.value()),
            TomlValue::Boolean(b) => format!("boolean {}", b.value()),
            TomlValue::Datetime(d) => format!("date-time {}", d.value()),
            TomlValue::Array(_) => "an array".to_owned(),
            TomlValue::InlineTable(_) => "an inline table".to_owned(),
        },
    }
}

/// Checks `CULEX__SECTION__KEY` variables.
fn check_env(env: &[(String, String)], checked: &mut Checked) {
    for (name, raw) in env {
        let label = PathBuf::from(format!("environment variable {name}"));
        let rest = name
            .get(ENV_PREFIX.len()..)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let parts: Vec<&str> = rest.split("__").collect();
        let spec = match parts.as_slice() {
            [key] => options::find_in(Section::Root, key),
            [section, key] => Section::from_name(section).and_then(|s| options::find_in(s, key)),
            _ => None,
        };
        let Some(spec) = spec else {
            let message = if rest.starts_with("listeners") {
                "listeners cannot be set from the environment; define them in the file".to_owned()
            } else {
                format!(
                    "unknown override '{name}'; overrides are named CULEX__SECTION__KEY, e.g. \
                     CULEX__LIMITS__MAX_INFLIGHT_MESSAGES; allowed: {}",
                    options::OPTIONS
                        .iter()
                        .map(|s| format!(
                            "{ENV_PREFIX}{}",
                            s.path().replace('.', "__").to_ascii_uppercase()
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            checked.diagnostics.push(Diagnostic {
                file: label,
                line: None,
                key: name.clone(),
                message,
            });
            continue;
        };
        let result = match spec.kind {
            Kind::Bool => match raw.to_ascii_lowercase().as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(format!("invalid value '{raw}'; allowed: true or false")),
            },
            Kind::Int { allowed, .. } => match raw.parse::<i64>() {
                Ok(v) => check_int(spec, i128::from(v)).map(Value::of_int),
                Err(_) => Err(format!(
                    "value '{raw}' is not a whole number; allowed: {allowed}"
                )),
            },
            Kind::Str => Ok(Value::Str(raw.clone())),
            Kind::Path => check_path(raw).map(|()| Value::Path(PathBuf::from(raw))),
            Kind::Duration => duration::parse_toml(raw).map(Value::Duration),
            Kind::Seconds => duration::parse_seconds(raw).map(Value::Seconds),
            Kind::Delay => duration::parse_delay(raw).map(Value::Delay),
            Kind::SocketAddr => options::parse_socket_addr(raw).map(Value::Addr),
            Kind::Choice(allowed) => {
                options::check_choice(allowed, raw).map(|()| Value::Str(raw.clone()))
            }
            Kind::Urls => options::parse_urls([raw.as_str()]).map(Value::Urls),
        };
        match result {
            Ok(value) => checked.values.push((spec, value)),
            Err(message) => checked.diagnostics.push(Diagnostic {
                file: label,
                line: None,
                key: spec.path(),
                message,
            }),
        }
        checked
            .from_env
            .insert(spec.path(), (name.clone(), raw.clone()));
    }
}

#[cfg(test)]
mod tests;
