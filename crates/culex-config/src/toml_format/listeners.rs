//! The `[[listeners]]` array of a TOML file: each listener's keys, its TLS keys, and its own
//! security options with `per_listener_settings`.

use super::*;

pub(super) fn check_listeners(
    path: &Path,
    text: &str,
    item: &Item,
    line: Option<usize>,
    checked: &mut Checked,
) {
    // [[listeners]] sections, or listeners = [{ ... }, ...].
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
                    other => {
                        checked.error(
                            path,
                            line,
                            "listeners",
                            format!(
                                "each listener must be a table such as {{ host = \"127.0.0.1\", port = 1883 }}; found {}",
                                describe_item(&Item::Value(other.clone()))
                            ),
                        );
                    }
                }
            }
        }
        other => {
            checked.error(
                path,
                line,
                "listeners",
                format!(
                    "'listeners' must be an array of tables: write [[listeners]] sections; found {}",
                    describe_item(other)
                ),
            );
            return;
        }
    }
    for (i, (table, table_line)) in tables.into_iter().enumerate() {
        let name = format!("listeners[{i}]");
        let table_line = table_line.or(line);
        if let Some(l) = table_line {
            checked.lines.insert(name.clone(), l);
        }
        let mut has_port = false;
        for (key, value) in table.iter() {
            let key_line = key_line(text, table, key).or(table_line);
            let full = format!("{name}.{key}");
            if let Some(l) = key_line {
                checked.lines.insert(full.clone(), l);
            }
            let problem = match (key, value.as_value()) {
                ("host", Some(TomlValue::String(_))) => None,
                ("host", _) => Some(format!(
                    "expected a string (an IP address or host name; leave it out for all interfaces), found {}",
                    describe_item(value)
                )),
                ("port", Some(TomlValue::Integer(port))) => {
                    has_port = true;
                    let port = *port.value();
                    (!(0..=65535).contains(&port)).then(|| {
                        format!(
                            "value {port} is out of range; allowed: 0 to 65535 (0 = an ephemeral port chosen by the system)"
                        )
                    })
                }
                ("port", _) => {
                    has_port = true;
                    Some(format!(
                        "expected an integer (0 to 65535), found {}",
                        describe_item(value)
                    ))
                }
                ("protocol", Some(TomlValue::String(p))) => {
                    (!matches!(p.value().as_str(), "mqtt" | "websockets")).then(|| {
                        format!(
                            "invalid value \"{}\"; allowed: \"mqtt\" or \"websockets\"",
                            p.value()
                        )
                    })
                }
                ("protocol", _) => Some(format!(
                    "expected a string (\"mqtt\" or \"websockets\"), found {}",
                    describe_item(value)
                )),
                ("socket_domain", Some(TomlValue::String(d))) => {
                    crate::SocketDomain::parse(d.value()).err()
                }
                ("socket_domain", _) => Some(format!(
                    "expected a string (\"ipv4\" or \"ipv6\"), found {}",
                    describe_item(value)
                )),
                ("bind_interface", Some(TomlValue::String(_))) => None,
                ("mount_point", Some(TomlValue::String(m))) => {
                    culex_proto::topic::validate_topic_name(m.value())
                        .err()
                        .map(|e| format!("'{}' is not a topic prefix: {e}", m.value()))
                }
                ("mount_point", _) => Some(format!(
                    "expected a topic prefix (a string), found {}",
                    describe_item(value)
                )),
                ("bind_interface", _) => Some(format!(
                    "expected an interface name (a string), found {}",
                    describe_item(value)
                )),
                ("tls", _) => {
                    check_listener_tls(path, text, value, &full, key_line, checked);
                    None
                }
                ("security", _) => {
                    check_listener_security(path, text, value, (i, &full), key_line, checked);
                    None
                }
                _ => Some(format!(
                    "unknown key '{full}'; allowed keys: host, port, protocol, socket_domain, \
                     bind_interface, mount_point, tls, security"
                )),
            };
            if let Some(message) = problem {
                checked.error(path, key_line, &full, message);
            }
        }
        if !has_port {
            checked.error(
                path,
                table_line,
                &format!("{name}.port"),
                "missing port; every listener needs one, e.g. port = 1883",
            );
        }
    }
}

/// TLS keys, in the order the documentation lists them.
const TLS_KEYS: &str =
    "certfile, keyfile, cafile, capath, crlfile, require_certificate, use_identity_as_username, \
     use_subject_as_username, ciphers, ciphers_tls13, tls_version";

/// `[listeners.tls]` of listener `name` (`listeners[0].tls`).
pub(super) fn check_listener_tls(
    path: &Path,
    text: &str,
    item: &Item,
    name: &str,
    line: Option<usize>,
    checked: &mut Checked,
) {
    let Some(table) = item.as_table_like() else {
        checked.error(
            path,
            line,
            name,
            format!(
                "'{name}' must be a table: write a [listeners.tls] section after the [[listeners]] it belongs to; found {}",
                describe_item(item)
            ),
        );
        return;
    };
    let mut has = (false, false);
    for (key, value) in table.iter() {
        let key_line = key_line(text, table, key).or(line);
        let full = format!("{name}.{key}");
        if let Some(l) = key_line {
            checked.lines.insert(full.clone(), l);
        }
        let problem = match (key, value.as_value()) {
            (
                "certfile" | "keyfile" | "cafile" | "capath" | "crlfile",
                Some(TomlValue::String(s)),
            ) => {
                match key {
                    "certfile" => has.0 = true,
                    "keyfile" => has.1 = true,
                    _ => {}
                }
                check_path(s.value()).err()
            }
            ("certfile" | "keyfile" | "cafile" | "capath" | "crlfile", _) => Some(format!(
                "expected a file path (a string), found {}",
                describe_item(value)
            )),
            ("ciphers", Some(TomlValue::String(s))) => {
                crate::tls_ciphers::parse_tls12(s.value()).err()
            }
            ("ciphers_tls13", Some(TomlValue::String(s))) => {
                crate::tls_ciphers::parse_tls13(s.value()).err()
            }
            ("ciphers" | "ciphers_tls13", _) => Some(format!(
                "expected a string of cipher suite names separated by ':', found {}",
                describe_item(value)
            )),
            (
                "require_certificate" | "use_identity_as_username" | "use_subject_as_username",
                Some(TomlValue::Boolean(_)),
            ) => None,
            ("require_certificate" | "use_identity_as_username" | "use_subject_as_username", _) => {
                Some(format!(
                    "expected true or false, found {}",
                    describe_item(value)
                ))
            }
            ("tls_version", Some(TomlValue::String(s))) => {
                crate::TlsVersion::parse(s.value()).err()
            }
            ("tls_version", _) => Some(format!(
                "expected a string (\"tlsv1.2\" or \"tlsv1.3\"), found {}",
                describe_item(value)
            )),
            _ => Some(format!("unknown key '{full}'; allowed keys: {TLS_KEYS}")),
        };
        if let Some(message) = problem {
            checked.error(path, key_line, &full, message);
        }
    }
    let table_line = line;
    match has {
        (true, true) => {}
        (true, false) => checked.error(
            path,
            table_line,
            &format!("{name}.keyfile"),
            "certfile is given without keyfile; a TLS listener needs both",
        ),
        (false, true) => checked.error(
            path,
            table_line,
            &format!("{name}.certfile"),
            "keyfile is given without certfile; a TLS listener needs both",
        ),
        (false, false) => checked.error(
            path,
            table_line,
            name,
            "a TLS listener needs certfile and keyfile",
        ),
    }
}

/// `[listeners.security]` of listener `name` (`listeners[0].security`).
pub(super) fn check_listener_security(
    path: &Path,
    text: &str,
    item: &Item,
    (index, name): (usize, &str),
    line: Option<usize>,
    checked: &mut Checked,
) {
    let Some(table) = item.as_table_like() else {
        checked.error(
            path,
            line,
            name,
            format!(
                "'{name}' must be a table: write a [listeners.security] section after the [[listeners]] it belongs to; found {}",
                describe_item(item)
            ),
        );
        return;
    };
    for (key, value) in table.iter() {
        let key_line = key_line(text, table, key).or(line);
        let full = format!("{name}.{key}");
        let Some(spec) = options::find_in(Section::Security, key) else {
            checked.error(
                path,
                key_line,
                &full,
                format!(
                    "unknown key '{full}'; allowed keys: {}",
                    options::keys_of(Section::Security).join(", ")
                ),
            );
            continue;
        };
        if let Some(l) = key_line {
            checked.lines.insert(full.clone(), l);
        }
        match parse_value(spec, value) {
            Ok(value) => checked.listener_security.push((index, spec, value)),
            Err(message) => checked.error(path, key_line, &full, message),
        }
    }
}
