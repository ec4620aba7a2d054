//! The checks every configuration must pass, whatever syntax it came from.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use crate::options::{self, check_int};
use crate::{duration, Config, Listener, Persistence, Security, Tls};

/// One failed check. Loaders turn it into a [`Diagnostic`](crate::Diagnostic)
/// with the file and line of the offending option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// TOML path of the offending value: `limits.max_qos`,
    /// `listeners[1].host`, or `listeners`.
    pub(crate) key: String,
    /// Index of the listener concerned, if any.
    pub(crate) listener: Option<usize>,
    /// The option concerned, if any, by its mosquitto.conf name (the same as
    /// the TOML key except for a few, such as `persistence_location`): a
    /// scalar option, or with `listener` an option of that listener
    /// (`certfile`, `password_file`, ...).
    pub(crate) option: Option<&'static str>,
    /// What is wrong and what is allowed.
    pub(crate) message: String,
}

/// Every problem with `config`, in a stable order (listeners first).
pub(crate) fn problems(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    check_listeners(&config.listeners, &mut out);
    for (i, listener) in config.listeners.iter().enumerate() {
        if let Some(tls) = &listener.tls {
            check_tls(i, tls, &mut out);
        }
        match (&listener.security, config.per_listener_settings) {
            (Some(security), true) => check_security(
                security,
                &format!("listeners[{i}].security"),
                Some(i),
                &mut out,
            ),
            (Some(_), false) => out.push(Problem {
                key: format!("listeners[{i}].security"),
                listener: Some(i),
                option: None,
                message: "listener security settings need per_listener_settings = true \
                          (without it, the global security settings apply to every listener)"
                    .to_owned(),
            }),
            (None, _) => {}
        }
    }
    check_security(&config.security, "security", None, &mut out);

    let limits = &config.limits;
    if limits.max_inflight_messages == 0 {
        // Files write "unlimited" as 0 and store it as 65535; a stored 0 can
        // only come from code.
        out.push(Problem {
            key: "limits.max_inflight_messages".to_owned(),
            listener: None,
            option: Some("max_inflight_messages"),
            message:
                "value 0 is not a valid stored value; allowed: 1 to 65535 (65535 for unlimited)"
                    .to_owned(),
        });
    }
    // Every integer option, read back as a file would write it, against its range.
    for spec in options::OPTIONS {
        if let (options::Kind::Int { .. }, Some(options::Value::Int(value))) =
            (spec.kind, spec.get(config))
        {
            if let Err(message) = check_int(spec, value) {
                out.push(Problem {
                    key: spec.path(),
                    listener: None,
                    option: Some(spec.key),
                    message,
                });
            }
        }
    }

    if config
        .sessions
        .persistent_client_expiration
        .is_some_and(|d| d.is_zero())
    {
        out.push(Problem {
            key: "sessions.persistent_client_expiration".to_owned(),
            listener: None,
            option: Some("persistent_client_expiration"),
            message: "must be greater than zero; leave it unset to keep sessions forever"
                .to_owned(),
        });
    }
    // Durations feed clock arithmetic: above MAX_DURATION they are refused (the parsers
    // already do; this covers configurations built in code).
    let mut too_long = |key: String, option: &'static str, d: Duration| {
        if d > crate::MAX_DURATION {
            out.push(Problem {
                key,
                listener: None,
                option: Some(option),
                message: "too long: at most 100 years (100y); leave the option out for no limit"
                    .to_owned(),
            });
        }
    };
    if let Some(d) = config.sessions.persistent_client_expiration {
        too_long(
            "sessions.persistent_client_expiration".to_owned(),
            "persistent_client_expiration",
            d,
        );
    }
    too_long(
        "sys.interval".to_owned(),
        "sys_interval",
        config.sys.interval,
    );
    too_long(
        "limits.slow_client_timeout".to_owned(),
        "slow_client_timeout",
        config.limits.slow_client_timeout,
    );
    for (i, b) in config.bridges.iter().enumerate() {
        too_long(
            format!("bridges[{i}].restart_timeout"),
            "restart_timeout",
            b.backoff_max,
        );
        too_long(
            format!("bridges[{i}].idle_timeout"),
            "idle_timeout",
            b.idle_timeout,
        );
    }
    if config.user.as_deref().is_some_and(str::is_empty) {
        out.push(Problem {
            key: "user".to_owned(),
            listener: None,
            option: Some("user"),
            message: "a user name cannot be empty; leave `user` out for the default (culex)"
                .to_owned(),
        });
    }
    check_persistence(&config.persistence, &mut out);
    check_cluster(&config.cluster, &mut out);
    out
}

/// `[persistence]`: a batch delay of at most 1 s; a directory name that is not empty and,
/// when persistence is enabled, does not name something other than a directory (a missing
/// directory is created by the broker).
fn check_persistence(persistence: &Persistence, out: &mut Vec<Problem>) {
    if let Err(message) = duration::check_delay(
        persistence.batch_delay,
        &humantime_serde::re::humantime::format_duration(persistence.batch_delay).to_string(),
    ) {
        out.push(Problem {
            key: "persistence.batch_delay".to_owned(),
            listener: None,
            option: Some("persistence_batch_delay"),
            message,
        });
    }
    let file = persistence.file.as_str();
    if file.is_empty() || file.contains('/') || file == "." || file == ".." {
        out.push(Problem {
            key: "persistence.file".to_owned(),
            listener: None,
            option: Some("persistence_file"),
            message: format!(
                "'{file}' is not a file name; persistence_file names the store's file inside \
                 persistence_location (no '/')"
            ),
        });
    }
    let dir = &persistence.dir;
    let message = if dir.as_os_str().is_empty() {
        Some("the directory name must not be empty".to_owned())
    } else if persistence.enabled && dir.exists() && !dir.is_dir() {
        Some(format!(
            "'{}' exists but is not a directory; the store lives in a directory (created if \
             missing; {RELATIVE})",
            dir.display()
        ))
    } else {
        None
    };
    if let Some(message) = message {
        out.push(Problem {
            key: "persistence.dir".to_owned(),
            listener: None,
            option: Some("persistence_location"),
            message,
        });
    }
}

/// `[cluster]`: a node name that is safe in NATS subjects and consumer names, required with a
/// backplane; a readable credentials file.
fn check_cluster(cluster: &crate::Cluster, out: &mut Vec<Problem>) {
    let mut problem = |key: &str, option: &'static str, message: String| {
        out.push(Problem {
            key: format!("cluster.{key}"),
            listener: None,
            option: Some(option),
            message,
        })
    };
    let safe = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match &cluster.node_name {
        Some(name) if !safe(name) => problem(
            "node_name",
            "cluster_node_name",
            format!("'{name}' is not a valid node name; allowed: 1 to 64 letters, digits, '-' and '_'"),
        ),
        None if cluster.enabled() => problem(
            "node_name",
            "cluster_node_name",
            "a cluster node needs a name unique in the cluster (cluster_node_name / [cluster] node_name)".to_owned(),
        ),
        _ => {}
    }
    if !safe(&cluster.name) {
        problem(
            "name",
            "cluster_name",
            format!(
                "'{}' is not a valid cluster name; allowed: 1 to 64 letters, digits, '-' and '_'",
                cluster.name
            ),
        );
    }
    if let Some(Err(message)) = cluster.credentials.as_deref().map(check_file) {
        problem("credentials", "cluster_credentials", message);
    }
    if !cluster.enabled() && (cluster.node_name.is_some() || cluster.credentials.is_some()) {
        problem(
            "backplane",
            "cluster_backplane",
            "cluster options are set but no backplane: add cluster_backplane nats://HOST:PORT (or remove the cluster options)".to_owned(),
        );
    }
}

/// Where relative paths are looked up, for error messages.
const RELATIVE: &str = "relative paths are relative to the current directory, as in mosquitto";

/// Checks that `path` is a file that can be opened for reading.
pub(crate) fn check_file(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("the file name must not be empty".to_owned());
    }
    if path.is_dir() {
        return Err(format!(
            "'{}' is a directory; expected a file",
            path.display()
        ));
    }
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) if path.is_relative() => Err(format!(
            "cannot read '{}': {e} ({RELATIVE})",
            path.display()
        )),
        Err(e) => Err(format!("cannot read '{}': {e}", path.display())),
    }
}

/// Checks that `path` is a directory that can be listed.
fn check_dir(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("the directory name must not be empty".to_owned());
    }
    match std::fs::read_dir(path) {
        Ok(_) => Ok(()),
        Err(e) if path.is_relative() => Err(format!(
            "cannot open directory '{}': {e} ({RELATIVE})",
            path.display()
        )),
        Err(e) => Err(format!("cannot open directory '{}': {e}", path.display())),
    }
}

/// The TLS options of listener `i`.
fn check_tls(i: usize, tls: &Tls, out: &mut Vec<Problem>) {
    let mut problem = |option: &'static str, message: String| {
        out.push(Problem {
            key: format!("listeners[{i}].tls.{option}"),
            listener: Some(i),
            option: Some(option),
            message,
        });
    };
    for (option, path) in [
        ("certfile", Some(&tls.certfile)),
        ("keyfile", Some(&tls.keyfile)),
        ("cafile", tls.cafile.as_ref()),
        ("crlfile", tls.crlfile.as_ref()),
    ] {
        if let Some(Err(message)) = path.map(|p| check_file(p)) {
            problem(option, message);
        }
    }
    if let Some(Err(message)) = tls.capath.as_deref().map(check_dir) {
        problem("capath", message);
    }
    let has_ca = tls.cafile.is_some() || tls.capath.is_some();
    // Options that only make sense with a CA to verify client certificates against.
    for (set, option, why) in [
        (
            tls.require_certificate,
            "require_certificate",
            "the CA certificates that client certificates are verified against",
        ),
        (
            tls.crlfile.is_some(),
            "crlfile",
            "revocation lists apply to verified client certificates",
        ),
        (
            tls.use_subject_as_username,
            "use_subject_as_username",
            "only a verified client certificate can name the user",
        ),
        (
            tls.use_identity_as_username,
            "use_identity_as_username",
            "only a verified client certificate can name the user",
        ),
    ] {
        if set && !has_ca {
            problem(option, format!("{option} needs cafile (or capath): {why}"));
        }
    }
    if tls.use_subject_as_username && tls.use_identity_as_username {
        problem(
            "use_subject_as_username",
            "use_subject_as_username and use_identity_as_username both name the user; set one"
                .to_owned(),
        );
    }
}

/// The files of a security section (`prefix` is `security` or
/// `listeners[i].security`).
fn check_security(
    security: &Security,
    prefix: &str,
    listener: Option<usize>,
    out: &mut Vec<Problem>,
) {
    for (option, path) in [
        ("password_file", &security.password_file),
        ("acl_file", &security.acl_file),
    ] {
        if let Some(Err(message)) = path.as_deref().map(check_file) {
            out.push(Problem {
                key: format!("{prefix}.{option}"),
                listener,
                option: Some(option),
                message,
            });
        }
    }
}

fn check_listeners(listeners: &[Listener], out: &mut Vec<Problem>) {
    if listeners.is_empty() {
        out.push(Problem {
            key: "listeners".to_owned(),
            listener: None,
            option: None,
            message: "no listener configured; at least one listener is required".to_owned(),
        });
        return;
    }
    let mut seen: HashMap<(String, u16), usize> = HashMap::new();
    for (i, listener) in listeners.iter().enumerate() {
        if let Some(host) = &listener.host {
            if let Err(message) = check_host(host) {
                out.push(Problem {
                    key: format!("listeners[{i}].host"),
                    listener: Some(i),
                    option: None,
                    message,
                });
                continue;
            }
        }
        // Port 0 asks for a fresh ephemeral port each time, so it never
        // collides.
        if listener.port == 0 {
            continue;
        }
        let host_key = listener.host.as_deref().map_or_else(String::new, |h| {
            h.parse::<IpAddr>()
                .map_or_else(|_| h.to_ascii_lowercase(), |ip| ip.to_string())
        });
        if seen.insert((host_key, listener.port), i).is_some() {
            out.push(Problem {
                key: format!("listeners[{i}]"),
                listener: Some(i),
                option: None,
                message: format!(
                    "listener {} is defined more than once; each host and port may be used once",
                    display_listener(listener)
                ),
            });
        }
    }
}

/// `host:port` for messages: `[::1]:1883`, `*:1883` for all interfaces.
pub(crate) fn display_listener(listener: &Listener) -> String {
    match &listener.host {
        None => format!("*:{} (all interfaces)", listener.port),
        Some(h) if h.contains(':') => format!("[{h}]:{}", listener.port),
        Some(h) => format!("{h}:{}", listener.port),
    }
}

/// Checks a listener host: an IP address or a host name.
pub(crate) fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty; leave it out to listen on all interfaces".to_owned());
    }
    if host.starts_with('[') {
        return Err(format!(
            "host '{host}': write IPv6 addresses without brackets, e.g. ::1"
        ));
    }
    if host.starts_with('/') {
        return Err(format!(
            "host '{host}': unix socket listeners are not supported yet by Culex; \
             allowed: an IP address or host name"
        ));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let valid_name = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid_name {
        Ok(())
    } else {
        Err(format!(
            "host '{host}' is not an IP address or host name; allowed: e.g. 127.0.0.1, ::1, 0.0.0.0 or localhost"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn default_is_valid() {
        assert_eq!(problems(&Config::embedded_default()), vec![]);
        assert_eq!(problems(&Config::embedded_on_port(0)), vec![]);
    }

    #[test]
    fn listeners_are_required_and_unique() {
        let mut c = Config::default();
        c.listeners.clear();
        assert_eq!(problems(&c)[0].key, "listeners");

        c.listeners = vec![
            Listener::new("::1", 1883),
            Listener::new("0:0:0:0:0:0:0:1", 1883),
            Listener::all_interfaces(1883),
            Listener::all_interfaces(1883),
            Listener::all_interfaces(0),
            Listener::all_interfaces(0),
        ];
        let p = problems(&c);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].listener, Some(1));
        assert!(p[0].message.contains("[0:0:0:0:0:0:0:1]:1883"));
        assert_eq!(p[1].listener, Some(3));
    }

    #[test]
    fn hosts() {
        for ok in [
            "127.0.0.1",
            "::",
            "::1",
            "localhost",
            "broker.example.com",
            "a-b",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
        for bad in ["", "[::1]", "/tmp/sock", "a b", "-a", "a..b", "ex_ample"] {
            assert!(check_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scalar_ranges() {
        let mut c = Config::default();
        c.mqtt.max_qos = 3;
        c.limits.max_inflight_messages = 0;
        c.limits.max_queued_messages = 0;
        c.limits.max_packet_size = 19;
        c.limits.message_size_limit = 268_435_456;
        c.limits.max_connections = Some(0);
        c.sessions.persistent_client_expiration = Some(Duration::ZERO);
        c.persistence.batch_delay = Duration::from_millis(1001);
        c.persistence.dir = "".into();
        let keys: Vec<String> = problems(&c).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "limits.max_inflight_messages",
                "limits.max_queued_messages",
                "limits.message_size_limit",
                "limits.max_packet_size",
                "limits.max_connections",
                "mqtt.max_qos",
                "sessions.persistent_client_expiration",
                "persistence.batch_delay",
                "persistence.dir",
            ]
        );
        c.persistence.batch_delay = crate::MAX_BATCH_DELAY;
        let p = problems(&c);
        assert_eq!(p.last().map(|p| p.key.as_str()), Some("persistence.dir"));
        assert_eq!(
            p.last().map(|p| p.message.as_str()),
            Some("the directory name must not be empty")
        );
        c.persistence.batch_delay = Duration::from_secs(2);
        let p = problems(&c);
        assert_eq!(
            p.iter()
                .find(|p| p.key == "persistence.batch_delay")
                .map(|p| p.message.as_str()),
            Some(
                "batch delay 2s is too long: it may be at most 1 s; allowed: 0 to 1s (e.g. \"10ms\")"
            )
        );
    }

    #[test]
    fn persistence_dir_must_be_a_directory_when_enabled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").expect("write");
        let mut c = Config::default();
        c.persistence.dir = file.clone();
        // Disabled: the directory is not used, so not checked.
        assert_eq!(problems(&c), vec![]);
        c.persistence.enabled = true;
        assert_eq!(
            problems(&c),
            vec![Problem {
                key: "persistence.dir".to_owned(),
                listener: None,
                option: Some("persistence_location"),
                message: format!(
                    "'{}' exists but is not a directory; the store lives in a directory (created \
                     if missing; {RELATIVE})",
                    file.display()
                ),
            }]
        );
        // An existing directory, or one that does not exist yet, is fine.
        c.persistence.dir = dir.path().to_path_buf();
        assert_eq!(problems(&c), vec![]);
        c.persistence.dir = dir.path().join("new/store");
        assert_eq!(problems(&c), vec![]);
    }
}
