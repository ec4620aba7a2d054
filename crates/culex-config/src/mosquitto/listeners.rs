//! The `listener` line, the options that apply to the current listener, and the TLS
//! settings built from them.

use super::*;

impl Reader {
    /// `listener PORT [BIND_ADDRESS]`.
    pub(super) fn listener(&mut self, loc: &Loc, words: &[&str]) {
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

    /// An option of the current listener (`certfile`, `protocol`, ...).
    pub(super) fn listener_option(
        &mut self,
        loc: &Loc,
        key: &'static str,
        rest: &str,
        words: &[&str],
    ) {
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
    pub(super) fn one_port(
        &mut self,
        loc: &Loc,
        option: &str,
        words: &[&str],
        usage: &str,
    ) -> Option<u16> {
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
}

/// The listener options of `opts` in file order.
pub(super) fn sorted(opts: &ListenerOpts) -> Vec<(&'static str, (ListenerValue, Loc))> {
    let mut all: Vec<(&'static str, (ListenerValue, Loc))> =
        opts.values.iter().map(|(k, v)| (*k, v.clone())).collect();
    all.sort_by(|a, b| (&a.1 .1.file, a.1 .1.line).cmp(&(&b.1 .1.file, b.1 .1.line)));
    all
}

/// The TLS settings of a listener from its options; `None` when it has no
/// TLS option. The error names where and which option is wrong.
#[allow(clippy::type_complexity)]
pub(super) fn build_tls(
    opts: &ListenerOpts,
) -> Result<Option<Tls>, (Option<Loc>, &'static str, String)> {
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
