//! Values of one word (booleans, ports, integers) and the message for an unknown option.

use super::*;

/// A boolean: `true`/`false`, or `1`/`0` as Mosquitto accepts.
pub(super) fn parse_bool(word: &str) -> Result<bool, String> {
    match word {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(format!("invalid value '{other}'; allowed: true or false")),
    }
}

/// A port: 0 to 65535 (0 = an ephemeral port chosen by the system).
pub(super) fn parse_port(word: &str) -> Result<u16, String> {
    const ALLOWED: &str = "0 to 65535 (0 = an ephemeral port chosen by the system)";
    let value = parse_int(word, ALLOWED)?;
    u16::try_from(value).map_err(|_| format!("port {value} is out of range; allowed: {ALLOWED}"))
}

/// A decimal integer, strictly: optional `-`, digits, no leading zeros.
pub(super) fn parse_int(word: &str, allowed: &str) -> Result<i128, String> {
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
pub(super) fn unknown_option_message(option: &str) -> String {
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
pub(super) fn supported_options() -> Vec<&'static str> {
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
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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
