use super::*;
use crate::test_util::{write, TempConfig};
use std::time::Duration;

/// Loads `text` as `culex.conf` in a fresh directory.
fn load_text(text: &str) -> (TempConfig, Result<Loaded, ConfigError>) {
    let dir = TempConfig::new();
    let path = dir.file("culex.conf", text);
    let result = load(&path);
    (dir, result)
}

fn config(text: &str) -> Config {
    match load_text(text).1 {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("{text:?} should load, got:\n{e}"),
    }
}

/// The single error of `text`, displayed, with the temp dir removed.
fn error(text: &str) -> String {
    let (dir, result) = load_text(text);
    match result {
        Ok(loaded) => panic!("{text:?} should fail, got {:?}", loaded.config),
        Err(e) => {
            assert_eq!(e.diagnostics.len(), 1, "{e}");
            dir.strip(&e.to_string())
        }
    }
}

fn warnings(text: &str) -> Vec<String> {
    let (dir, result) = load_text(text);
    match result {
        Ok(loaded) => loaded.warnings.iter().map(|w| dir.strip(w)).collect(),
        Err(e) => panic!("{text:?} should load, got:\n{e}"),
    }
}

#[test]
fn empty_file_is_mosquitto_2_default() {
    // The embedded default without the metrics endpoint: a file serves metrics only when it
    // says so.
    let c = config("");
    assert_eq!(c, Config::default());
    assert_eq!(c.metrics.listen, None);
    let c = config("# only a comment\n\n   \n");
    assert_eq!(c, Config::default());
}

#[test]
fn observability_options() {
    let c = config(
        "metrics_listener 127.0.0.1:0\nsys_interval 3\nlog_format json\n\
         log_type error\nlog_type debug\nlog_type warning\n",
    );
    assert_eq!(c.metrics.listen, Some(([127, 0, 0, 1], 0).into()));
    assert_eq!(c.sys.interval, std::time::Duration::from_secs(3));
    assert_eq!(c.log.format, crate::LogFormat::Json);
    assert_eq!(
        c.log.level,
        crate::LogLevel::Debug,
        "the most verbose log_type wins"
    );
    assert_eq!(config("log_type none\n").log.level, crate::LogLevel::Off);
    assert_eq!(config("log_type notice\n").log.level, crate::LogLevel::Info);
    assert_eq!(
        config("sys_interval 0\n").sys.interval,
        std::time::Duration::ZERO
    );
    assert!(error("metrics_listener localhost\n").contains("expected IP:PORT"));
    assert!(error("sys_interval 10s\n").contains("whole seconds"));
    assert!(error("log_format xml\n").contains("allowed: text, json"));
    assert!(error("log_type verbose\n").contains("invalid value 'verbose'"));
}

#[test]
fn comments_blank_lines_and_whitespace() {
    let c = config("# comment\n\n  max_qos 1  \r\n\t# indented comment\nretain_available\tfalse\n");
    assert_eq!(c.mqtt.max_qos, 1);
    assert!(!c.mqtt.retain_available);
    // A '#' after a value is not a comment, as in mosquitto.
    assert_eq!(
        error("max_qos 1 # one\n"),
        "culex.conf:1: option 'max_qos': too many values '1 # one'; expected one value: 0, 1 or 2"
    );
}

#[test]
fn listeners_and_anonymous_rule() {
    let c = config("listener 1883\n");
    assert_eq!(c.listeners, vec![Listener::all_interfaces(1883)]);
    assert!(
        !c.security.allow_anonymous,
        "listener defined: anonymous off"
    );

    let c = config("listener 1883 127.0.0.1\nlistener 8883 ::1\nallow_anonymous true\n");
    assert_eq!(
        c.listeners,
        vec![Listener::new("127.0.0.1", 1883), Listener::new("::1", 8883)]
    );
    assert!(c.security.allow_anonymous);

    let c = config("port 1884\n");
    assert_eq!(c.listeners, vec![Listener::all_interfaces(1884)]);
    assert!(!c.security.allow_anonymous);

    let c = config("bind_address 10.0.0.1\nport 1884\nlistener 1885\n");
    assert_eq!(
        c.listeners,
        vec![
            Listener::new("10.0.0.1", 1884),
            Listener::all_interfaces(1885)
        ]
    );

    // bind_address alone: the default listener on port 1883.
    let c = config("bind_address 127.0.0.1\n");
    assert_eq!(c.listeners, vec![Listener::new("127.0.0.1", 1883)]);

    // No listener: loopback, anonymous allowed unless said otherwise.
    let c = config("allow_anonymous false\n");
    assert_eq!(c.listeners, Listener::loopback(1883));
    assert!(!c.security.allow_anonymous);

    let c = config("listener 0\nlistener 0\n");
    assert_eq!(c.listeners.len(), 2, "port 0 never collides");
}

#[test]
fn listener_errors() {
    assert_eq!(
        error("listener\n"),
        "culex.conf:1: option 'listener': missing port; expected: listener PORT [BIND_ADDRESS]"
    );
    assert_eq!(
        error("listener 1883 127.0.0.1 extra\n"),
        "culex.conf:1: option 'listener': too many values '1883 127.0.0.1 extra'; expected: listener PORT [BIND_ADDRESS]"
    );
    assert_eq!(
        error("listener 70000\n"),
        "culex.conf:1: option 'listener': port 70000 is out of range; allowed: 0 to 65535 (0 = an ephemeral port chosen by the system)"
    );
    assert!(error("listener abc\n").contains("value 'abc' is not a whole number"));
    assert!(error("listener -1\n").contains("port -1 is out of range"));
    assert!(error("port\n").contains("option 'port': missing value"));
    assert!(error("port 1 2\n").contains("too many values"));
    assert!(error("bind_address\n").contains("option 'bind_address': missing value"));
    assert!(error("bind_address a b\n").contains("too many values"));
    assert_eq!(
        error("listener 1883 [::1]\n"),
        "culex.conf:1: option 'listener': host '[::1]': write IPv6 addresses without brackets, e.g. ::1"
    );
    assert!(error("listener 0 /tmp/mosquitto.sock\n").contains("not supported yet by Culex"));
    assert_eq!(
        error("bind_address bad_host!\nport 1883\n"),
        "culex.conf:1: option 'bind_address': host 'bad_host!' is not an IP address or host name; allowed: e.g. 127.0.0.1, ::1, 0.0.0.0 or localhost"
    );
    assert_eq!(
        error("listener 1883 127.0.0.1\nlistener 1883 127.0.0.1\n"),
        "culex.conf:2: option 'listener': listener 127.0.0.1:1883 is defined more than once; each host and port may be used once"
    );
    assert_eq!(
        error("port 1883\nlistener 1883\n"),
        "culex.conf:2: option 'listener': listener *:1883 (all interfaces) is defined more than once; each host and port may be used once"
    );
}

#[test]
fn port_and_bind_address_repeated_warn() {
    let w = warnings("port 1883\nport 1884\n");
    assert_eq!(
        w,
        ["culex.conf:2: option 'port' is given more than once (also at culex.conf:1); only the last one is used"]
    );
    assert_eq!(warnings("bind_address ::1\nbind_address ::\n").len(), 1);
}

#[test]
fn booleans() {
    for (key, get) in [
        (
            "allow_anonymous",
            (|c: &Config| c.security.allow_anonymous) as fn(&Config) -> bool,
        ),
        ("allow_zero_length_clientid", |c| {
            c.sessions.allow_zero_length_clientid
        }),
        ("retain_available", |c| c.mqtt.retain_available),
        ("upgrade_outgoing_qos", |c| c.mqtt.upgrade_outgoing_qos),
    ] {
        assert!(get(&config(&format!("{key} true\n"))), "{key}");
        assert!(!get(&config(&format!("{key} false\n"))), "{key}");
        // mosquitto also accepts 1 and 0.
        assert!(get(&config(&format!("{key} 1\n"))), "{key}");
        assert!(!get(&config(&format!("{key} 0\n"))), "{key}");
        for bad in ["yes", "True", "on", "2"] {
            assert_eq!(
                error(&format!("{key} {bad}\n")),
                format!(
                    "culex.conf:1: option '{key}': invalid value '{bad}'; allowed: true or false"
                )
            );
        }
        assert_eq!(
            error(&format!("{key}\n")),
            format!("culex.conf:1: option '{key}': missing value; allowed: true or false")
        );
        assert!(error(&format!("{key} true false\n")).contains("too many values 'true false'"));
    }
}

#[test]
fn integers() {
    let c = config(
        "max_inflight_messages 10\nmax_queued_messages 5\nmax_queued_bytes 1000000\n\
         message_size_limit 1024\nmax_packet_size 2048\nmax_keepalive 60\n\
         max_connections 100\nmax_qos 1\n",
    );
    assert_eq!(c.limits.max_inflight_messages, 10);
    assert_eq!(c.limits.max_queued_messages, 5);
    assert_eq!(c.limits.max_queued_bytes, 1_000_000);
    assert_eq!(c.limits.message_size_limit, 1024);
    assert_eq!(c.limits.max_packet_size, 2048);
    assert_eq!(c.limits.max_keepalive, 60);
    assert_eq!(c.limits.max_connections, Some(100));
    assert_eq!(c.mqtt.max_qos, 1);

    // Special values.
    assert_eq!(
        config("max_inflight_messages 0\n")
            .limits
            .max_inflight_messages,
        65535
    );
    assert_eq!(
        config("max_inflight_messages 65535\n")
            .limits
            .max_inflight_messages,
        65535
    );
    assert_eq!(config("max_connections -1\n").limits.max_connections, None);
    assert_eq!(config("max_qos 0\n").mqtt.max_qos, 0);
    assert_eq!(config("max_keepalive 0\n").limits.max_keepalive, 0);
    assert_eq!(config("max_packet_size 20\n").limits.max_packet_size, 20);
    assert_eq!(
        config("max_packet_size 268435455\n").limits.max_packet_size,
        268_435_455
    );
    assert_eq!(
        config("message_size_limit 0\n").limits.message_size_limit,
        0
    );
}

#[test]
fn integer_errors() {
    assert_eq!(
        error("max_qos 3\n"),
        "culex.conf:1: option 'max_qos': value 3 is out of range; allowed: 0, 1 or 2"
    );
    assert_eq!(
        error("max_inflight_messages 65536\n"),
        "culex.conf:1: option 'max_inflight_messages': value 65536 is out of range; allowed: 0 to 65535 (0 means unlimited, the same as 65535)"
    );
    assert!(error("max_inflight_messages -1\n").contains("value -1 is out of range"));
    assert!(error("max_queued_messages 0\n").contains("use a large number"));
    assert!(error("max_queued_messages -5\n")
        .contains("value -5 is out of range; allowed: 1 to 2147483647"));
    assert!(error("max_queued_bytes -1\n").contains("out of range"));
    assert!(error("message_size_limit 268435456\n").contains("allowed: 0 (no limit) to 268435455"));
    assert!(error("max_packet_size 19\n").contains("allowed: 20 to 268435455"));
    assert!(error("max_packet_size 268435456\n").contains("out of range"));
    assert!(error("max_keepalive 65536\n").contains("allowed: 0 to 65535"));
    assert!(error("max_connections 0\n").contains("would refuse every connection"));
    assert!(error("max_connections -2\n").contains("allowed: -1 (unlimited) or 1 to 2147483647"));
    assert_eq!(
        error("max_qos two\n"),
        "culex.conf:1: option 'max_qos': value 'two' is not a whole number; allowed: 0, 1 or 2"
    );
    for garbage in ["1.5", "0x10", "+1", "1e3", "-", "1_000"] {
        assert!(
            error(&format!("max_keepalive {garbage}\n")).contains("is not a whole number"),
            "{garbage}"
        );
    }
    assert!(error("max_keepalive 010\n").contains("leading zero"));
    assert!(
        error("max_queued_bytes 99999999999999999999999999999999999999999999\n")
            .contains("out of range")
    );
    assert!(error("max_queued_bytes 9223372036854775808\n").contains("out of range"));
    assert_eq!(
        error("max_qos\n"),
        "culex.conf:1: option 'max_qos': missing value; allowed: 0, 1 or 2"
    );
}

#[test]
fn strings_and_durations() {
    let c = config("auto_id_prefix culex-\n");
    assert_eq!(c.sessions.auto_id_prefix, "culex-");
    // Strings take the rest of the line, as in mosquitto.
    let c = config("auto_id_prefix my prefix \n");
    assert_eq!(c.sessions.auto_id_prefix, "my prefix");
    assert!(error("auto_id_prefix\n").contains("missing value"));

    let day = 86_400;
    for (text, secs) in [
        ("3600s", 3600),
        ("1h", 3600),
        ("2d", 2 * day),
        ("1w", 7 * day),
        ("1m", 30 * day),
        ("1y", 365 * day),
    ] {
        let c = config(&format!("persistent_client_expiration {text}\n"));
        assert_eq!(
            c.sessions.persistent_client_expiration,
            Some(Duration::from_secs(secs)),
            "{text}"
        );
    }
    assert!(error("persistent_client_expiration 10\n").contains("invalid duration '10'"));
    assert!(error("persistent_client_expiration 0d\n").contains("greater than zero"));
    assert!(error("persistent_client_expiration 1x\n").contains("m (months of 30 days)"));
    assert!(error("persistent_client_expiration\n").contains("missing value"));
    assert!(error("persistent_client_expiration 1d 2d\n").contains("too many values"));
}

#[test]
fn persistence_options() {
    use crate::{Persistence, SyncPolicy};

    // Mosquitto's default: no persistence.
    assert_eq!(config("").persistence, Persistence::default());
    assert!(!config("").persistence.enabled);

    let c = config(
        "persistence true
persistence_location /var/lib/culex/
         persistence_sync always
persistence_batch_delay 250
",
    );
    assert_eq!(
        c.persistence,
        Persistence {
            enabled: true,
            dir: "/var/lib/culex/".into(),
            file: "culex.redb".into(),
            sync: SyncPolicy::Always,
            batch_delay: Duration::from_millis(250),
        }
    );
    assert!(
        !config(
            "persistence false
"
        )
        .persistence
        .enabled
    );
    assert!(
        config(
            "persistence 1
"
        )
        .persistence
        .enabled
    );
    for (word, sync) in [
        ("always", SyncPolicy::Always),
        ("batched", SyncPolicy::Batched),
        ("never", SyncPolicy::Never),
    ] {
        assert_eq!(
            config(&format!(
                "persistence_sync {word}
"
            ))
            .persistence
            .sync,
            sync
        );
    }
    // The location is the rest of the line (it may contain spaces).
    assert_eq!(
        config(
            "persistence_location my data
"
        )
        .persistence
        .dir,
        std::path::PathBuf::from("my data")
    );
    assert_eq!(
        config(
            "persistence_batch_delay 0
"
        )
        .persistence
        .batch_delay,
        Duration::ZERO
    );
    assert_eq!(
        config(
            "persistence_batch_delay 1000
"
        )
        .persistence
        .batch_delay,
        Duration::from_secs(1)
    );

    assert_eq!(
        error(
            "persistence yes
"
        ),
        "culex.conf:1: option 'persistence': invalid value 'yes'; allowed: true or false"
    );
    assert_eq!(
        error(
            "persistence_location
"
        ),
        "culex.conf:1: option 'persistence_location': missing value; allowed: a file path"
    );
    assert_eq!(
        error("persistence_sync sometimes
"),
        "culex.conf:1: option 'persistence_sync': invalid value 'sometimes'; allowed: always, batched, never"
    );
    assert_eq!(
        error("\npersistence_batch_delay 1001
"),
        "culex.conf:2: option 'persistence_batch_delay': batch delay 1001 ms is too long: it may be at most 1 s; allowed: whole milliseconds, 0 to 1000 (at most 1 s), e.g. 10"
    );
    assert!(error(
        "persistence_batch_delay 10ms
"
    )
    .contains("invalid value '10ms'"));
    assert!(error(
        "persistence_batch_delay -1
"
    )
    .contains("invalid value '-1'"));
    assert!(error(
        "persistence_batch_delay 010
"
    )
    .contains("leading zero"));
    assert!(error(
        "persistence_batch_delay 1 2
"
    )
    .contains("too many values"));

    // An existing file is not a directory: an error naming the option, the line and the path.
    let dir = TempConfig::new();
    let file = dir.file("data", "x");
    let path = dir.file(
        "culex.conf",
        &format!(
            "persistence true\npersistence_location {}\n",
            file.display()
        ),
    );
    let e = load(&path).expect_err("not a directory");
    assert_eq!(
        dir.strip(&e.to_string()),
        "culex.conf:2: option 'persistence_location': 'data' exists but is not a directory; \
         the store lives in a directory (created if missing; relative paths are relative to \
         the current directory, as in mosquitto)"
    );
    // Unused while persistence is off, so not checked.
    let path = dir.file(
        "off.conf",
        &format!("persistence_location {}\n", file.display()),
    );
    assert!(load(&path).is_ok());
}

#[test]
fn mosquitto_persistence_options_warn() {
    let (dir, result) = load_text(
        "persistence true
persistence_file broker-a.redb

         autosave_interval 1800
autosave_on_changes false
",
    );
    let loaded = result.expect("loads");
    assert!(loaded.config.persistence.enabled);
    // persistence_file names the store's file.
    assert_eq!(loaded.config.persistence.file, "broker-a.redb");
    assert_eq!(
        loaded
            .warnings
            .iter()
            .map(|w| dir.strip(w))
            .collect::<Vec<_>>(),
        [
            "culex.conf:4: Culex commits changes continuously (group commit, see persistence_sync); autosave_interval is ignored",
            "culex.conf:5: Culex commits changes continuously (group commit, see persistence_sync); autosave_on_changes is ignored",
        ]
    );
    // Their values are still checked.
    assert!(error("persistence_file\n").starts_with("culex.conf:1: option 'persistence_file'"));
    assert!(error("persistence_file data/x.redb\n").contains("is not a file name"));
    assert_eq!(config("").persistence.file, "culex.redb");
    assert!(error(
        "autosave_interval soon
"
    )
    .contains("is not a whole number"));
    assert!(error(
        "autosave_interval -1
"
    )
    .contains("out of range"));
    assert!(error(
        "autosave_interval
"
    )
    .contains("missing value"));
    assert!(error(
        "autosave_on_changes maybe
"
    )
    .contains("allowed: true or false"));
    // A misspelling gets a hint.
    assert_eq!(
        error(
            "persistance true
"
        ),
        "culex.conf:1: unknown option 'persistance'; did you mean 'persistence'?"
    );
}

#[test]
fn repeated_options_warn_and_last_wins() {
    let (dir, result) = load_text("max_qos 1\nmax_qos 0\n");
    let loaded = result.expect("loads");
    assert_eq!(loaded.config.mqtt.max_qos, 0);
    assert_eq!(
        dir.strip(&loaded.warnings.join("\n")),
        "culex.conf:2: option 'max_qos' is given more than once (also at culex.conf:1); the last value is used"
    );
}

#[test]
fn ignored_options_warn() {
    let w = warnings(
        "log_dest stdout\nlog_timestamp true\nlog_timestamp_format %Y\n\
         connection_messages true\npid_file /run/m.pid\nuser mosquitto\n",
    );
    // connection_messages and user are honoured now, not ignored.
    assert_eq!(w.len(), 4);
    assert_eq!(
        w[0],
        "culex.conf:1: option 'log_dest' is accepted but ignored by Culex"
    );
    assert_eq!(
        w[3],
        "culex.conf:5: option 'pid_file' is accepted but ignored by Culex"
    );
}

/// `max_inflight_bytes` (refused before Culex had it) is Mosquitto's, 0 = no byte limit.
#[test]
fn max_inflight_bytes_option() {
    assert_eq!(
        config("max_inflight_bytes 4096\n")
            .limits
            .max_inflight_bytes,
        4096
    );
    assert_eq!(config("").limits.max_inflight_bytes, 0);
}

/// `user` (whom a broker started as root becomes) in both syntaxes; an empty name is refused.
#[test]
fn user_option() {
    assert_eq!(
        config("user mosquitto\n").user.as_deref(),
        Some("mosquitto")
    );
    assert_eq!(config("").user, None);
    let dir = TempConfig::new();
    let toml = dir.file("c.toml", "user = \"culex\"\n");
    let loaded = crate::load_file(&toml).expect("load TOML");
    assert_eq!(loaded.config.user.as_deref(), Some("culex"));
    let bad = dir.file("e.toml", "user = \"\"\n");
    let err = crate::load_file(&bad).expect_err("empty user").to_string();
    assert!(
        err.contains("user") && err.contains("cannot be empty"),
        "{err}"
    );
}

/// Mosquitto options people carry over: `connection_messages` is honoured, `maximum_qos` is
/// `max_qos`, and the options whose behaviour Culex has built in are accepted with the value
/// that asks for it and refused, with the reason, otherwise.
#[test]
fn migrated_behaviour_options() {
    let c = config(
        "connection_messages false\nmaximum_qos 1\nset_tcp_nodelay true\n\
         queue_qos0_messages false\nmemory_limit 0\n",
    );
    assert!(!c.log.connection_messages);
    assert_eq!(c.mqtt.max_qos, 1);
    assert!(config("").log.connection_messages);
    let w = warnings("set_tcp_nodelay false\n");
    assert!(w[0].contains("always sets TCP_NODELAY"), "{w:?}");
    assert!(error("queue_qos0_messages true\n").starts_with(
        "culex.conf:1: option 'queue_qos0_messages': not supported yet: Culex does not queue QoS 0"
    ));
    // memory_limit is honoured: a global cap on queued bytes.
    assert_eq!(
        config("memory_limit 1000000\n").limits.memory_limit,
        1_000_000
    );
    assert!(error("memory_limit lots\n").contains("memory_limit"));
}

#[test]
fn socket_domain_and_bind_interface() {
    let c = config("listener 1883\nsocket_domain ipv4\nbind_interface eth0\nlistener 1884\n");
    assert_eq!(
        c.listeners[0].socket_domain,
        Some(crate::SocketDomain::Ipv4)
    );
    assert_eq!(c.listeners[0].bind_interface.as_deref(), Some("eth0"));
    assert_eq!(c.listeners[1].socket_domain, None);
    assert!(error("listener 1883\nsocket_domain ipv5\n").contains("allowed: ipv4 or ipv6"));
}

#[test]
fn unknown_options() {
    assert_eq!(
        error("\n\nfoo bar\n"),
        format!(
            "culex.conf:3: unknown option 'foo'; supported options: {}",
            supported_options().join(", ")
        )
    );
    assert_eq!(
        error("dhparamfile /etc/mosquitto/dh.pem\n"),
        "culex.conf:1: unknown option 'dhparamfile': this mosquitto option is not supported yet by Culex"
    );
    for option in [
        "allow_duplicate_messages true",
        "bridge_foo 1",
        "plugin_opt_x 1",
    ] {
        assert!(
            error(&format!("{option}\n")).contains("not supported yet by Culex"),
            "{option}"
        );
    }
    assert_eq!(
        error("max_qso 1\n"),
        "culex.conf:1: unknown option 'max_qso'; did you mean 'max_qos'?"
    );
    assert!(error("[limits]\n").contains("name it *.toml"));
    assert!(error("max_qos=1\n").contains("name it *.toml"));
}

#[test]
fn every_problem_is_reported() {
    let (dir, result) =
        load_text("max_qos 3\nfoo 1\nlistener 1883\nlistener 1883\nmax_keepalive x\n");
    let e = result.expect_err("fails");
    let lines: Vec<String> = e
        .diagnostics
        .iter()
        .map(|d| dir.strip(&d.to_string()))
        .map(|d| d.split(':').take(2).collect::<Vec<_>>().join(":"))
        .collect();
    assert_eq!(
        lines,
        [
            "culex.conf:1",
            "culex.conf:2",
            "culex.conf:5",
            "culex.conf:4"
        ]
    );
}

#[test]
fn missing_and_unreadable_files() {
    let dir = TempConfig::new();
    let missing = dir.path().join("nope.conf");
    let e = load(&missing).expect_err("missing file");
    assert_eq!(e.diagnostics[0].file, missing);
    assert!(dir
        .strip(&e.to_string())
        .starts_with("nope.conf: cannot read configuration file:"));

    let e = load(dir.path()).expect_err("directory");
    assert!(e.to_string().contains("it is a directory"));

    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, b"max_qos 1\nmax_qos \xff\n").expect("write");
    let e = load(&bad).expect_err("not UTF-8");
    assert_eq!(e.diagnostics[0].line, Some(2));
}

#[test]
fn include_dir_loads_conf_files_in_order() {
    let dir = TempConfig::new();
    let inc = dir.path().join("conf.d");
    std::fs::create_dir(&inc).expect("mkdir");
    write(&inc.join("b.conf"), "max_qos 1\nlistener 1884\n");
    write(&inc.join("A.conf"), "max_qos 0\nlistener 1883\n");
    write(&inc.join("c.conf"), "max_keepalive 30\n");
    write(&inc.join("ignored.txt"), "garbage here\n");
    write(&inc.join(".conf"), "garbage here\n");
    std::fs::create_dir(inc.join("sub.d")).expect("mkdir");
    // Absolute path: relative include_dir paths follow the working directory.
    let main = dir.file(
        "main.conf",
        &format!(
            "max_qos 2\ninclude_dir {}\nmax_keepalive 40\n",
            inc.display()
        ),
    );
    let loaded = load(&main).expect("loads");
    // A.conf, then b.conf (case-insensitive order): last max_qos is 1.
    assert_eq!(loaded.config.mqtt.max_qos, 1);
    assert_eq!(
        loaded.config.listeners,
        vec![
            Listener::all_interfaces(1883),
            Listener::all_interfaces(1884)
        ]
    );
    assert_eq!(loaded.config.limits.max_keepalive, 40);
    assert_eq!(
        loaded
            .warnings
            .iter()
            .map(|w| dir.strip(w))
            .collect::<Vec<_>>(),
        [
            "conf.d/A.conf:1: option 'max_qos' is given more than once (also at main.conf:1); the last value is used",
            "conf.d/b.conf:1: option 'max_qos' is given more than once (also at conf.d/A.conf:1); the last value is used",
            "main.conf:3: option 'max_keepalive' is given more than once (also at conf.d/c.conf:1); the last value is used",
        ]
    );
}

#[test]
fn include_dir_diagnostics_name_the_included_file() {
    let dir = TempConfig::new();
    let inc = dir.path().join("conf.d");
    std::fs::create_dir(&inc).expect("mkdir");
    write(&inc.join("10-limits.conf"), "# limits\nmax_qos 7\n");
    write(
        &inc.join("20-more.conf"),
        "listener 1883\n\nwhatever 1\ninclude_dir /tmp\n",
    );
    write(&inc.join("30-dup.conf"), "listener 1883\n");
    let main = dir.file(
        "main.conf",
        &format!("include_dir {}\nmax_qos x\n", inc.display()),
    );
    let e = load(&main).expect_err("fails");
    let text = dir.strip(&e.to_string());
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "conf.d/10-limits.conf:2: option 'max_qos': value 7 is out of range; allowed: 0, 1 or 2",
            &format!(
                "conf.d/20-more.conf:3: unknown option 'whatever'; supported options: {}",
                supported_options().join(", ")
            ),
            "conf.d/20-more.conf:4: option 'include_dir': include_dir is only allowed in the main configuration file (as in mosquitto)",
            "main.conf:2: option 'max_qos': value 'x' is not a whole number; allowed: 0, 1 or 2",
            "conf.d/30-dup.conf:1: option 'listener': listener *:1883 (all interfaces) is defined more than once; each host and port may be used once",
        ]
    );
}

#[test]
fn include_dir_errors() {
    assert!(error("include_dir\n").contains("missing value"));
    let text = error("include_dir /nonexistent/culex-dir\n");
    assert!(
        text.starts_with(
            "culex.conf:1: option 'include_dir': cannot open directory '/nonexistent/culex-dir'"
        ),
        "{text}"
    );
    assert!(text.contains("relative to the current directory"));
}

#[test]
fn edit_distance_works() {
    assert_eq!(edit_distance("max_qos", "max_qos"), 0);
    assert_eq!(edit_distance("max_qso", "max_qos"), 2);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}

#[test]
fn bridge_connection_block() {
    use crate::bridge::{BridgeProtocol, Direction, StartType, TlsVersion};
    let c = config(
        "listener 1883 127.0.0.1\nallow_anonymous true\n\
         connection site\n\
         address remote.example:1884 backup.example\n\
         topic sensors/# out 1 local/ remote/\n\
         topic cmd/# in 2\n\
         topic \"\" both 0 a/b c/d\n\
         remote_username u\nremote_password p w\n\
         remote_clientid rid\n\
         cleansession true\nlocal_cleansession false\n\
         keepalive_interval 30\nrestart_timeout 2 60\n\
         try_private false\nnotifications false\nnotification_topic n/state\n\
         bridge_protocol_version mqttv50\nbridge_outgoing_retain false\n\
         bridge_republish_on_connect true\n\
         bridge_max_packet_size 1000\nbridge_cafile /ca.pem\nbridge_tls_version tlsv1.3\n\
         start_type lazy\nthreshold 5\nidle_timeout 9\nbridge_bind_address 127.0.0.1\n\
         bridge_queue_limit 7\n\
         connection second\naddress other\ntopic # out\n",
    );
    assert_eq!(c.bridges.len(), 2);
    let b = &c.bridges[0];
    assert_eq!(b.name, "site");
    assert_eq!(
        b.addresses,
        vec![
            ("remote.example".into(), 1884),
            ("backup.example".into(), 1883)
        ]
    );
    assert_eq!(b.topics.len(), 3);
    assert_eq!(b.topics[0].local_filter(), "local/sensors/#");
    assert_eq!(b.topics[0].remote_filter(), "remote/sensors/#");
    assert_eq!(b.topics[1].direction, Direction::In);
    assert_eq!(b.topics[2].pattern, "");
    assert_eq!(b.remote_username.as_deref(), Some("u"));
    assert_eq!(b.remote_password.as_deref(), Some("p w"));
    assert_eq!(b.remote_clientid, "rid");
    assert_eq!(b.local_clientid, "local.rid");
    assert!(b.cleansession && !b.local_cleansession);
    assert_eq!(b.keepalive, Duration::from_secs(30));
    assert_eq!(
        (b.backoff_min, b.backoff_max),
        (Duration::from_secs(2), Duration::from_secs(60))
    );
    assert!(!b.try_private && !b.notifications && !b.outgoing_retain);
    assert!(b.republish_on_connect && !c.bridges[1].republish_on_connect);
    assert_eq!(b.notification_topic.as_deref(), Some("n/state"));
    assert_eq!(b.protocol, BridgeProtocol::V5);
    assert_eq!(b.max_packet_size, Some(1000));
    let tls = b.tls.as_ref().unwrap();
    assert_eq!(tls.cafile.as_deref(), Some(std::path::Path::new("/ca.pem")));
    assert_eq!(tls.version, Some(TlsVersion::Tls13));
    assert_eq!(b.start_type, StartType::Lazy);
    assert_eq!((b.threshold, b.idle_timeout), (5, Duration::from_secs(9)));
    assert_eq!(b.bind_address, Some([127, 0, 0, 1].into()));
    assert_eq!(b.queue_limit, 7);
    let b = &c.bridges[1];
    assert_eq!(b.addresses, vec![("other".into(), 1883)]);
    assert!(b.tls.is_none() && b.try_private && !b.cleansession);
    assert!(b.remote_clientid.ends_with(".second"));
    // The listener is unaffected by the bridge lines.
    assert_eq!(c.listeners.len(), 1);
}

#[test]
fn bridge_restart_timeout_one_value_is_constant() {
    let c = config("connection b\naddress h\ntopic #\nrestart_timeout 20\n");
    assert_eq!(c.bridges[0].backoff_min, Duration::from_secs(20));
    assert_eq!(c.bridges[0].backoff_max, Duration::from_secs(20));
}

/// Mosquitto's bridge options carried over: the old `clientid`/`username`/`password` names,
/// `bridge_attempt_unsubscribe` (default on), `round_robin`, `bridge_receive_maximum`, and
/// `notifications_local_only` (Culex's default `true`; `false` publishes on the remote too).
#[test]
fn bridge_mosquitto_compat_options() {
    let c = config(
        "connection a\naddress h1 h2\ntopic # out\nclientid old-id\nusername u\npassword p\n\
         round_robin true\nbridge_attempt_unsubscribe false\nbridge_protocol_version mqttv50\n\
         bridge_receive_maximum 50\nnotifications_local_only true\n\
         connection b\naddress h3\ntopic # out\n",
    );
    let (a, b) = (&c.bridges[0], &c.bridges[1]);
    assert_eq!(a.remote_clientid, "old-id");
    assert_eq!(a.remote_username.as_deref(), Some("u"));
    assert_eq!(a.remote_password.as_deref(), Some("p"));
    assert!(a.round_robin && !a.attempt_unsubscribe);
    assert_eq!(a.receive_maximum, Some(50));
    assert!(!b.round_robin && b.attempt_unsubscribe && b.receive_maximum.is_none());
    assert!(a.notifications_local_only && b.notifications_local_only);
    let w = warnings(
        "connection a\naddress h\ntopic # out\nlocal_username u\nlocal_password p\n\
         retry_interval 20\n",
    );
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].contains("'local_username' is accepted but ignored"),
        "{w:?}"
    );
    assert!(
        w[2].contains("'retry_interval' is accepted but ignored"),
        "{w:?}"
    );
    let c = config("clientid_prefixes secure-\n");
    assert_eq!(c.sessions.clientid_prefixes.as_deref(), Some("secure-"));
    let c = config("connection a\naddress h\ntopic # out\nnotifications_local_only false\n");
    assert!(!c.bridges[0].notifications_local_only);
    assert!(
        error("connection a\naddress h\ntopic # out\nbridge_receive_maximum 0\n")
            .contains("allowed: 1 to 65535")
    );
}

#[test]
fn bridge_sber_preset() {
    let c = config(
        "connection sber\nbridge_preset sber\nremote_username dev1\nremote_password pw\n\
         address 127.0.0.1:8883\nbridge_cafile /ca.pem\n",
    );
    let b = &c.bridges[0];
    assert_eq!(b.name, "sber");
    assert_eq!(b.addresses, vec![("127.0.0.1".into(), 8883)]);
    assert_eq!(b.remote_clientid, "dev1");
    assert_eq!(b.topics[0].remote_filter(), "sberdevices/v1/dev1/up/#");
    assert_eq!(b.topics[0].local_filter(), "sber/up/#");
    let tls = b.tls.as_ref().unwrap();
    assert_eq!(tls.cafile.as_deref(), Some(std::path::Path::new("/ca.pem")));
    assert!(!tls.insecure);
    // Sent without RETAIN, state re-published on every connect, `$SYS` topic by name.
    assert!(!b.outgoing_retain && b.republish_on_connect);
    assert_eq!(b.notification_topic(), "$SYS/broker/connection/sber/state");
    let c = config(
        "connection home-sber\nbridge_preset sber\nremote_username dev1\nremote_password pw\n\
         bridge_outgoing_retain true\nbridge_republish_on_connect false\n",
    );
    assert_eq!(
        c.bridges[0].addresses,
        vec![(crate::bridge::SBER_HOST.to_string(), 8883)]
    );
    assert!(c.bridges[0].outgoing_retain && !c.bridges[0].republish_on_connect);
    assert_eq!(
        c.bridges[0].notification_topic(),
        "$SYS/broker/connection/home-sber/state"
    );
}

#[test]
fn bridge_errors_name_bridge_option_file_and_line() {
    assert_eq!(
        error("address h\n"),
        "culex.conf:1: 'address' is a bridge option; it must follow a `connection NAME` line (the bridge it configures)"
    );
    assert_eq!(
        error("connection b\naddress h\ntopic # sideways\n"),
        "culex.conf:3: option 'topic': bridge \"b\": direction \"sideways\" is not one of `out`, `in`, `both`"
    );
    assert!(error("connection b\naddress h\ntopic a/# out 0 x/+/ y/\n").starts_with(
        "culex.conf:3: option 'topic': bridge \"b\": invalid local prefix \"x/+/\" (a prefix is a topic name without wildcards)"
    ));
    let e = error("connection b\naddress h\ntopic #\nkeepalive_interval 2\n");
    assert!(
        e.starts_with("culex.conf:4: option 'keepalive_interval': bridge \"b\": "),
        "{e}"
    );
    let e = error("connection b\naddress h\ntopic #\nrestart_timeout 10 5\n");
    assert!(
        e.starts_with("culex.conf:4: option 'restart_timeout': bridge \"b\": "),
        "{e}"
    );
    let e = error("connection b\ntopic #\n");
    assert!(
        e.starts_with("culex.conf:1: option 'connection': bridge \"b\": "),
        "{e}"
    );
    assert!(e.contains("option 'address'"), "{e}");
    let e = error("connection b\naddress h\n");
    assert!(
        e.starts_with("culex.conf:1: option 'connection': bridge \"b\": "),
        "{e}"
    );
    assert!(e.contains("option 'topic'"), "{e}");
    let e = error("connection b\naddress h:0\ntopic #\n");
    assert!(
        e.starts_with("culex.conf:2: option 'address': bridge \"b\": invalid address"),
        "{e}"
    );
    let e = error("connection b\naddress h\ntopic #\nbridge_preset acme\n");
    assert!(e.contains("unknown preset 'acme'"), "{e}");
    let e = error("connection b\nbridge_preset sber\nremote_password x\n");
    assert!(
        e.starts_with("culex.conf:2: option 'bridge_preset': bridge \"b\""),
        "{e}"
    );
    let e = error("connection b\naddress h\ntopic #\nconnection b\naddress h\ntopic #\n");
    assert!(
        e.starts_with(
            "culex.conf:4: option 'connection': bridge \"b\" is already defined at culex.conf:1"
        ),
        "{e}"
    );
    let e = error("connection b\naddress h\ntopic #\nbridge_tls_version tlsv1.1\n");
    assert!(
        e.starts_with("culex.conf:4: option 'bridge_tls_version'"),
        "{e}"
    );
    let e = error("connection b\naddress h\ntopic #\nbridge_certfile /c.pem\n");
    assert!(
        e.starts_with("culex.conf:4: option 'bridge_certfile': bridge \"b\""),
        "{e}"
    );
    let e = error("connection b\naddress h\ntopic #\nbridge_psk x\n");
    assert!(e.contains("not supported yet"), "{e}");
}
