use super::*;
use crate::test_util::TempConfig;
use crate::Listener;
use std::time::Duration;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_with(text: &str, vars: &[(&str, &str)]) -> (TempConfig, Result<Loaded, ConfigError>) {
    let dir = TempConfig::new();
    let path = dir.file("culex.toml", text);
    let result = load(&path, env(vars));
    (dir, result)
}

fn config_env(text: &str, vars: &[(&str, &str)]) -> Config {
    match load_with(text, vars).1 {
        Ok(loaded) => {
            assert_eq!(loaded.warnings, Vec::<String>::new());
            loaded.config
        }
        Err(e) => panic!("{text:?} should load, got:\n{e}"),
    }
}

fn config(text: &str) -> Config {
    config_env(text, &[])
}

/// All errors of `text`, displayed one per line, temp dir removed.
fn errors_env(text: &str, vars: &[(&str, &str)]) -> String {
    let (dir, result) = load_with(text, vars);
    match result {
        Ok(loaded) => panic!("{text:?} should fail, got {:?}", loaded.config),
        Err(e) => dir.strip(&e.to_string()),
    }
}

fn errors(text: &str) -> String {
    errors_env(text, &[])
}

#[test]
fn empty_file_is_the_embedded_default() {
    // Without the metrics endpoint: a file serves metrics only when it says so.
    assert_eq!(config(""), Config::default());
    assert_eq!(config("# nothing\n[limits]\n"), Config::default());
}

#[test]
fn observability_sections() {
    let c = config(
        "[metrics]\nlisten = \"[::1]:9000\"\n[sys]\ninterval = \"1m\"\n[log]\nformat = \"json\"\nlevel = \"debug\"\n",
    );
    assert_eq!(
        c.metrics.listen,
        Some("[::1]:9000".parse().expect("address"))
    );
    assert_eq!(c.sys.interval, std::time::Duration::from_secs(60));
    assert_eq!(c.log.format, crate::LogFormat::Json);
    assert_eq!(c.log.level, crate::LogLevel::Debug);
    assert_eq!(
        config("[sys]\ninterval = 0\n").sys.interval,
        std::time::Duration::ZERO
    );
    assert_eq!(
        config("[sys]\ninterval = 5\n").sys.interval,
        std::time::Duration::from_secs(5)
    );
}

#[test]
fn full_file() {
    let c = config(
        r#"
[[listeners]]
port = 1883

[[listeners]]
host = "::1"
port = 8883

[security]
allow_anonymous = true

[limits]
max_inflight_messages = 10
max_queued_messages = 5
max_queued_bytes = 1000000
max_inflight_bytes = 65536
queue_full_policy = "drop"
slow_client_timeout = 5
auth_failure_limit = 3
message_size_limit = 1024
max_packet_size = 2048
max_keepalive = 60
max_connections = 100
max_topic_levels = 16
max_topic_length = 1024

[sessions]
allow_zero_length_clientid = false
auto_id_prefix = "culex-"
persistent_client_expiration = "1h 30m"

[mqtt]
retain_available = false
max_qos = 1
upgrade_outgoing_qos = true
"#,
    );
    assert_eq!(
        c,
        Config {
            listeners: vec![Listener::all_interfaces(1883), Listener::new("::1", 8883)],
            security: crate::Security {
                allow_anonymous: true,
                password_file: None,
                acl_file: None,
                use_username_as_clientid: false,
            },
            per_listener_settings: false,
            user: None,
            limits: crate::Limits {
                max_inflight_messages: 10,
                max_queued_messages: 5,
                max_queued_bytes: 1_000_000,
                max_inflight_bytes: 65536,
                queue_full_policy: crate::QueueFullPolicy::Drop,
                memory_limit: 0,
                auth_failure_limit: 3,
                slow_client_timeout: std::time::Duration::from_secs(5),
                message_size_limit: 1024,
                max_packet_size: 2048,
                max_keepalive: 60,
                max_connections: Some(100),
                max_topic_levels: 16,
                max_topic_length: 1024,
            },
            sessions: crate::Sessions {
                allow_zero_length_clientid: false,
                auto_id_prefix: "culex-".into(),
                clientid_prefixes: None,
                persistent_client_expiration: Some(Duration::from_secs(5400)),
            },
            mqtt: crate::Mqtt {
                check_retain_source: true,
                retain_available: false,
                max_qos: 1,
                upgrade_outgoing_qos: true,
            },
            ..Config::default()
        }
    );
}

#[test]
fn persistence_section() {
    use crate::{Persistence, SyncPolicy};

    assert_eq!(config("").persistence, Persistence::default());
    let c = config(
        "[persistence]\nenabled = true\ndir = \"/var/lib/culex\"\nsync = \"never\"\nbatch_delay = \"250ms\"\n",
    );
    assert_eq!(
        c.persistence,
        Persistence {
            enabled: true,
            dir: "/var/lib/culex".into(),
            file: "culex.redb".into(),
            sync: SyncPolicy::Never,
            batch_delay: Duration::from_millis(250),
        }
    );
    for (word, sync) in [
        ("always", SyncPolicy::Always),
        ("batched", SyncPolicy::Batched),
        ("never", SyncPolicy::Never),
    ] {
        assert_eq!(
            config(&format!("[persistence]\nsync = \"{word}\"\n"))
                .persistence
                .sync,
            sync
        );
    }
    for (text, ms) in [("0ms", 0), ("10ms", 10), ("1s", 1000), ("1000ms", 1000)] {
        assert_eq!(
            config(&format!("[persistence]\nbatch_delay = \"{text}\"\n"))
                .persistence
                .batch_delay,
            Duration::from_millis(ms),
            "{text}"
        );
    }
}

#[test]
fn persistence_errors() {
    assert_eq!(
        errors("[persistence]\nenabled = \"yes\"\n"),
        "culex.toml:2: option 'persistence.enabled': expected true or false, found string \"yes\""
    );
    assert_eq!(
        errors("[persistence]\ndir = \"\"\n"),
        "culex.toml:2: option 'persistence.dir': the path must not be empty; leave the key out instead"
    );
    assert_eq!(
        errors("[persistence]\ndir = 5\n"),
        "culex.toml:2: option 'persistence.dir': expected a file path (a string), found integer 5"
    );
    assert_eq!(
        errors("[persistence]\nsync = \"sometimes\"\n"),
        "culex.toml:2: option 'persistence.sync': invalid value 'sometimes'; allowed: always, batched, never"
    );
    assert_eq!(
        errors("[persistence]\n\nbatch_delay = \"2s\"\n"),
        "culex.toml:3: option 'persistence.batch_delay': batch delay \"2s\" is too long: it may be at most 1 s; allowed: 0 to 1s (e.g. \"10ms\")"
    );
    assert_eq!(
        errors("[persistence]\nbatch_delay = 10\n"),
        "culex.toml:2: option 'persistence.batch_delay': expected a duration string such as \"10ms\", \"0ms\" or \"1s\" (at most 1 s), found integer 10"
    );
    assert!(errors("[persistence]\nbatch_delay = \"soon\"\n").contains("invalid duration \"soon\""));

    // An existing file is not a directory: an error naming the option, the line and the path.
    let dir = TempConfig::new();
    let file = dir.file("data", "x");
    let path = dir.file(
        "culex.toml",
        &format!(
            "[persistence]\nenabled = true\ndir = \"{}\"\n",
            file.display()
        ),
    );
    let e = load(&path, vec![]).expect_err("not a directory");
    assert_eq!(
        dir.strip(&e.to_string()),
        "culex.toml:3: option 'persistence.dir': 'data' exists but is not a directory; \
         the store lives in a directory (created if missing; relative paths are relative to \
         the current directory, as in mosquitto)"
    );
    // Unused while persistence is off, so not checked.
    let path = dir.file(
        "off.toml",
        &format!("[persistence]\ndir = \"{}\"\n", file.display()),
    );
    assert!(load(&path, vec![]).is_ok());
}

#[test]
fn persistence_environment_overrides() {
    use crate::SyncPolicy;

    let c = config_env(
        "[persistence]\nenabled = false\nbatch_delay = \"10ms\"\n",
        &[
            ("CULEX__PERSISTENCE__ENABLED", "true"),
            ("CULEX__PERSISTENCE__DIR", "007"),
            ("CULEX__PERSISTENCE__SYNC", "always"),
            ("CULEX__PERSISTENCE__BATCH_DELAY", "500ms"),
        ],
    );
    assert!(c.persistence.enabled);
    assert_eq!(
        c.persistence.dir,
        std::path::PathBuf::from("007"),
        "paths are taken verbatim"
    );
    assert_eq!(c.persistence.sync, SyncPolicy::Always);
    assert_eq!(c.persistence.batch_delay, Duration::from_millis(500));
    assert_eq!(
        config_env("", &[("CULEX__PERSISTENCE__BATCH_DELAY", "0")])
            .persistence
            .batch_delay,
        Duration::ZERO
    );

    assert_eq!(
        errors_env("", &[("CULEX__PERSISTENCE__BATCH_DELAY", "5s")]),
        "environment variable CULEX__PERSISTENCE__BATCH_DELAY: option 'persistence.batch_delay': batch delay \"5s\" is too long: it may be at most 1 s; allowed: 0 to 1s (e.g. \"10ms\")"
    );
    assert!(errors_env("", &[("CULEX__PERSISTENCE__SYNC", "sometimes")])
        .contains("allowed: always, batched, never"));
    assert!(errors_env("", &[("CULEX__PERSISTENCE__ENABLED", "yes")])
        .contains("allowed: true or false"));
    assert!(errors_env("", &[("CULEX__PERSISTENCE__FOLDER", "x")])
        .contains("unknown override 'CULEX__PERSISTENCE__FOLDER'"));
    assert!(errors_env("", &[("CULEX__PERSISTENCE__FILE", "a/b")]).contains("is not a file name"));
    // Validation problems of values from the environment name the variable.
    let dir = TempConfig::new();
    let file = dir.file("data", "x");
    let text = errors_env(
        "[persistence]\nenabled = true\n",
        &[("CULEX__PERSISTENCE__DIR", &file.display().to_string())],
    );
    assert!(
        text.starts_with(
            "environment variable CULEX__PERSISTENCE__DIR: option 'persistence.dir': '"
        ) && text.contains("exists but is not a directory"),
        "{text}"
    );
}

#[test]
fn special_values() {
    let c = config("[limits]\nmax_inflight_messages = 0\nmax_connections = -1\n");
    assert_eq!(c.limits.max_inflight_messages, 65535);
    assert_eq!(c.limits.max_connections, None);
    let c = config("[sessions]\npersistent_client_expiration = \"never\"\n");
    assert_eq!(c.sessions.persistent_client_expiration, None);
    let c = config("[sessions]\npersistent_client_expiration = \"30m\"\n");
    assert_eq!(
        c.sessions.persistent_client_expiration,
        Some(Duration::from_secs(1800)),
        "m is minutes in TOML"
    );
    // Dotted keys and inline listener tables work too.
    let c = config(
        "mqtt.max_qos = 1\nlisteners = [{ port = 1 }, { host = \"localhost\", port = 2 }]\n",
    );
    assert_eq!(c.mqtt.max_qos, 1);
    assert_eq!(
        c.listeners,
        vec![Listener::all_interfaces(1), Listener::new("localhost", 2)]
    );
}

#[test]
fn anonymous_rule() {
    // No listeners: loopback, anonymous allowed.
    let c = config("[mqtt]\nmax_qos = 1\n");
    assert_eq!(c.listeners, Listener::loopback(1883));
    assert!(c.security.allow_anonymous);
    // Listeners given: anonymous off unless set.
    let c = config("[[listeners]]\nport = 1883\n");
    assert!(!c.security.allow_anonymous);
    let c = config("[[listeners]]\nport = 1883\n[security]\nallow_anonymous = true\n");
    assert!(c.security.allow_anonymous);
    let c = config_env(
        "[[listeners]]\nport = 1883\n",
        &[("CULEX__SECURITY__ALLOW_ANONYMOUS", "true")],
    );
    assert!(c.security.allow_anonymous);
    let c = config("[security]\nallow_anonymous = false\n");
    assert!(!c.security.allow_anonymous);
}

#[test]
fn unknown_keys_name_key_and_line() {
    assert_eq!(
        errors("[limits]\nmax_qos = 1\n\nbogus = 2\n"),
        "culex.toml:2: unknown key 'limits.max_qos'; 'max_qos' belongs in the [mqtt] section\n\
         culex.toml:4: unknown key 'limits.bogus'; allowed keys in [limits]: max_inflight_messages, \
         max_inflight_bytes, queue_full_policy, memory_limit, auth_failure_limit, slow_client_timeout, max_queued_messages, max_queued_bytes, message_size_limit, max_packet_size, max_keepalive, \
         max_topic_levels, max_topic_length, max_connections"
    );
    assert_eq!(
        errors("# top\nfoo = 1\n"),
        "culex.toml:2: unknown key 'foo'; allowed top-level keys: per_listener_settings, listeners, security, limits, sessions, persistence, mqtt, metrics, sys, log, cluster, bridges"
    );
    assert_eq!(
        errors("\nmax_qos = 1\n"),
        "culex.toml:2: unknown key 'max_qos' at the top level; it belongs in the [mqtt] section: mqtt.max_qos"
    );
    assert_eq!(
        errors("[[listeners]]\nport = 1883\nhots = \"::1\"\n"),
        "culex.toml:3: unknown key 'listeners[0].hots'; allowed keys: host, port, protocol, socket_domain, bind_interface, mount_point, tls, security"
    );
    assert_eq!(
        errors("[persistence]\nenabled = true\n\npath = \"culex.db\"\n"),
        "culex.toml:4: unknown key 'persistence.path'; allowed keys in [persistence]: enabled, dir, file, sync, batch_delay"
    );
    assert_eq!(
        errors("[persistence]\nmax_qos = 1\n"),
        "culex.toml:2: unknown key 'persistence.max_qos'; 'max_qos' belongs in the [mqtt] section"
    );
    assert_eq!(
        errors("\nenabled = true\n"),
        "culex.toml:2: unknown key 'enabled' at the top level; it belongs in the [persistence] section: persistence.enabled"
    );
    assert_eq!(
        errors("security = 1\n"),
        "culex.toml:1: 'security' must be a table: write a [security] section; found integer 1"
    );
}

#[test]
fn wrong_types_and_ranges() {
    assert_eq!(
        errors("[mqtt]\n\nmax_qos = 3\n"),
        "culex.toml:3: option 'mqtt.max_qos': value 3 is out of range; allowed: 0, 1 or 2"
    );
    assert_eq!(
        errors("[mqtt]\nmax_qos = \"2\"\n"),
        "culex.toml:2: option 'mqtt.max_qos': expected an integer (0, 1 or 2), found string \"2\""
    );
    assert_eq!(
        errors("[security]\nallow_anonymous = \"yes\"\n"),
        "culex.toml:2: option 'security.allow_anonymous': expected true or false, found string \"yes\""
    );
    assert_eq!(
        errors("[sessions]\nauto_id_prefix = 5\n"),
        "culex.toml:2: option 'sessions.auto_id_prefix': expected a string, found integer 5"
    );
    assert!(errors("[sessions]\npersistent_client_expiration = 3600\n")
        .contains("expected a duration string"));
    assert!(
        errors("[sessions]\npersistent_client_expiration = \"3600\"\n")
            .contains("invalid duration \"3600\"")
    );
    assert!(errors("[limits]\nmax_queued_messages = 0\n").contains("use a large number"));
    assert!(
        errors("[limits]\nmax_inflight_messages = 70000\n").contains("value 70000 is out of range")
    );
    assert!(errors("[limits]\nmax_inflight_messages = 1.5\n").contains("found float 1.5"));
    assert!(errors("[limits]\nmax_connections = 0\n").contains("would refuse every connection"));
    assert!(errors("[limits]\nmax_packet_size = 19\n").contains("allowed: 20 to 268435455"));
    assert!(errors("[limits]\nmessage_size_limit = 268435456\n").contains("out of range"));
    assert!(errors("[limits]\nmax_keepalive = -1\n").contains("allowed: 0 to 65535"));
    assert!(errors("[limits]\nmax_queued_bytes = -1\n").contains("out of range"));
    assert!(errors("[limits]\nmax_keepalive = [1]\n").contains("found an array"));
}

#[test]
fn listener_errors() {
    assert_eq!(
        errors("[[listeners]]\nhost = \"::1\"\n"),
        "culex.toml:1: option 'listeners[0].port': missing port; every listener needs one, e.g. port = 1883"
    );
    assert_eq!(
        errors("[[listeners]]\nport = 70000\n"),
        "culex.toml:2: option 'listeners[0].port': value 70000 is out of range; allowed: 0 to 65535 (0 = an ephemeral port chosen by the system)"
    );
    assert!(errors("[[listeners]]\nport = \"1883\"\n").contains("expected an integer (0 to 65535)"));
    assert!(errors("[[listeners]]\nport = 1\nhost = 1\n").contains("expected a string"));
    assert_eq!(
        errors("[[listeners]]\nport = 1883\n\n[[listeners]]\nport = 1883\n"),
        "culex.toml:4: option 'listeners[1]': listener *:1883 (all interfaces) is defined more than once; each host and port may be used once"
    );
    assert_eq!(
        errors("[[listeners]]\nport = 1883\nhost = \"[::1]\"\n"),
        "culex.toml:3: option 'listeners[0].host': host '[::1]': write IPv6 addresses without brackets, e.g. ::1"
    );
    assert_eq!(
        errors("listeners = []\n"),
        "culex.toml:1: option 'listeners': no listener configured; at least one listener is required"
    );
    assert!(errors("[listeners]\nport = 1\n").contains("must be an array of tables"));
    assert!(errors("listeners = [1]\n").contains("each listener must be a table"));
}

#[test]
fn syntax_errors_give_the_line() {
    let text = errors("[limits]\nmax_qos = 1\nmax_keepalive = \n");
    assert!(
        text.starts_with("culex.toml:3: TOML syntax error:"),
        "{text}"
    );
    let text = errors("[limits\n");
    assert!(
        text.starts_with("culex.toml:1: TOML syntax error:"),
        "{text}"
    );
    let text = errors("[mqtt]\nmax_qos = 1\nmax_qos = 2\n");
    assert!(
        text.starts_with("culex.toml:3: TOML syntax error:"),
        "{text}"
    );
}

#[test]
fn every_problem_is_reported() {
    let text = errors("foo = 1\n[mqtt]\nmax_qos = 9\n[limits]\nmax_keepalive = true\n");
    assert_eq!(text.lines().count(), 3, "{text}");
}

#[test]
fn missing_and_unreadable_files() {
    let dir = TempConfig::new();
    let missing = dir.path().join("nope.toml");
    let e = load(&missing, vec![]).expect_err("missing");
    assert_eq!(e.diagnostics[0].file, missing);
    assert!(dir
        .strip(&e.to_string())
        .starts_with("nope.toml: cannot read configuration file:"));
    let e = load(dir.path(), vec![]).expect_err("a directory");
    assert!(e.to_string().contains("it is a directory"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, b"[mqtt]\nmax_qos = \xff\n").expect("write");
    let e = load(&bad, vec![]).expect_err("not UTF-8");
    assert_eq!(e.diagnostics[0].file, bad);
}

#[test]
fn environment_overrides() {
    let file = "[limits]\nmax_inflight_messages = 10\n";
    let c = config_env(file, &[("CULEX__LIMITS__MAX_INFLIGHT_MESSAGES", "50")]);
    assert_eq!(c.limits.max_inflight_messages, 50);

    // Any key, any section, whether or not the file sets it; names are
    // case-insensitive like the config crate's.
    let c = config_env(
        "",
        &[
            ("CULEX__MQTT__MAX_QOS", "1"),
            ("CULEX__MQTT__RETAIN_AVAILABLE", "FALSE"),
            ("culex__limits__max_connections", "-1"),
            ("CULEX__LIMITS__MAX_QUEUED_BYTES", "4096"),
            ("CULEX__SESSIONS__AUTO_ID_PREFIX", "007"),
            ("CULEX__SESSIONS__PERSISTENT_CLIENT_EXPIRATION", "2d"),
            ("CULEX__SECURITY__ALLOW_ANONYMOUS", "false"),
        ],
    );
    assert_eq!(c.mqtt.max_qos, 1);
    assert!(!c.mqtt.retain_available);
    assert_eq!(c.limits.max_connections, None);
    assert_eq!(c.limits.max_queued_bytes, 4096);
    assert_eq!(
        c.sessions.auto_id_prefix, "007",
        "strings are taken verbatim"
    );
    assert_eq!(
        c.sessions.persistent_client_expiration,
        Some(Duration::from_secs(2 * 86_400))
    );
    assert!(!c.security.allow_anonymous);

    // Variables that merely start with CULEX_ (one underscore) are not
    // overrides; culex_env_vars() does not collect them either.
    assert!(!"CULEX_LIMITS__MAX_QOS"
        .to_ascii_uppercase()
        .starts_with(ENV_PREFIX));
}

#[test]
fn environment_errors() {
    assert_eq!(
        errors_env("", &[("CULEX__MQTT__MAX_QOS", "3")]),
        "environment variable CULEX__MQTT__MAX_QOS: option 'mqtt.max_qos': value 3 is out of range; allowed: 0, 1 or 2"
    );
    assert_eq!(
        errors_env("", &[("CULEX__MQTT__MAX_QOS", "two")]),
        "environment variable CULEX__MQTT__MAX_QOS: option 'mqtt.max_qos': value 'two' is not a whole number; allowed: 0, 1 or 2"
    );
    assert!(errors_env("", &[("CULEX__MQTT__RETAIN_AVAILABLE", "yes")])
        .contains("invalid value 'yes'; allowed: true or false"));
    assert!(errors_env(
        "",
        &[("CULEX__SESSIONS__PERSISTENT_CLIENT_EXPIRATION", "soon")]
    )
    .contains("invalid duration \"soon\""));
    let text = errors_env("", &[("CULEX__LIMITS__BOGUS", "1")]);
    assert!(
        text.starts_with(
            "environment variable CULEX__LIMITS__BOGUS: unknown override 'CULEX__LIMITS__BOGUS'"
        ),
        "{text}"
    );
    assert!(text.contains("CULEX__LIMITS__MAX_INFLIGHT_MESSAGES"));
    assert!(errors_env("", &[("CULEX__MAX_QOS", "1")]).contains("unknown override"));
    assert!(errors_env("", &[("CULEX__LISTENERS__0__PORT", "1")])
        .contains("listeners cannot be set from the environment"));
    // Validation problems of values from the environment name the variable.
    assert_eq!(
        errors_env(
            "[[listeners]]\nport = 1883\n",
            &[("CULEX__LIMITS__MAX_INFLIGHT_MESSAGES", "70000")]
        ),
        "environment variable CULEX__LIMITS__MAX_INFLIGHT_MESSAGES: option 'limits.max_inflight_messages': value 70000 is out of range; allowed: 0 to 65535 (0 means unlimited, the same as 65535)"
    );
}

#[test]
fn bridges_tables() {
    use crate::bridge::{BridgeProtocol, Direction};
    let c = config(
        r#"
[[bridges]]
name = "site"
addresses = ["remote.example:1884", "backup.example"]
remote_username = "u"
remote_password = "p"
cleansession = true
keepalive = "30s"
backoff = { min = "2s", max = "1m" }
protocol = "5"
try_private = false
notification_topic = "n/state"
queue_limit = 7

[[bridges.topics]]
pattern = "sensors/#"
direction = "out"
qos = 1
local_prefix = "local/"
remote_prefix = "remote/"

[[bridges.topics]]
pattern = "cmd/#"
direction = "in"

[bridges.tls]
cafile = "/ca.pem"
version = "tlsv1.2"

[[bridges]]
name = "sber"
preset = "sber"
login = "dev1"
password = "pw"
republish_on_connect = false
"#,
    );
    assert_eq!(c.bridges.len(), 2);
    let b = &c.bridges[0];
    assert_eq!(
        b.addresses,
        vec![
            ("remote.example".into(), 1884),
            ("backup.example".into(), 1883)
        ]
    );
    assert_eq!(b.topics.len(), 2);
    assert_eq!(b.topics[0].remote_filter(), "remote/sensors/#");
    assert_eq!(b.topics[1].direction, Direction::In);
    assert_eq!(b.keepalive, Duration::from_secs(30));
    assert_eq!(
        (b.backoff_min, b.backoff_max),
        (Duration::from_secs(2), Duration::from_secs(60))
    );
    assert_eq!(b.protocol, BridgeProtocol::V5);
    assert!(b.cleansession && b.local_cleansession && !b.try_private);
    assert_eq!(b.queue_limit, 7);
    assert!(b.tls.is_some());
    let s = &c.bridges[1];
    assert_eq!(s.remote_clientid, "dev1");
    assert_eq!(s.topics[0].remote_filter(), "sberdevices/v1/dev1/up/#");
    assert!(!s.republish_on_connect && !s.outgoing_retain);
    // The rest of the file is unaffected.
    assert_eq!(c.listeners, Config::default().listeners);
}

#[test]
fn bridges_errors_name_bridge_key_and_line() {
    let e = errors("[[bridges]]\nname = \"b\"\naddresses = [\"h\"]\nbogus = 1\n[[bridges.topics]]\npattern = \"#\"\n");
    assert!(
        e.starts_with("culex.toml:4: option 'bridges[0].bogus': bridge \"b\": unknown key 'bogus'"),
        "{e}"
    );
    let e = errors("[[bridges]]\nname = \"b\"\naddresses = [\"h\"]\nkeepalive = 2\n[[bridges.topics]]\npattern = \"#\"\n");
    assert!(
        e.starts_with("culex.toml:4: option 'bridges[0].keepalive': bridge \"b\": "),
        "{e}"
    );
    let e = errors("[[bridges]]\nname = \"b\"\naddresses = [\"h\"]\n");
    assert!(
        e.starts_with("culex.toml:3: option 'bridges[0].topics': bridge \"b\": ")
            || e.contains("bridges[0].topics"),
        "{e}"
    );
    let e = errors("[[bridges]]\naddresses = [\"h\"]\n");
    assert!(e.contains("needs a `name`"), "{e}");
}
