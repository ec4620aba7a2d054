//! The configuration files shipped in `configs/` load as documented.
//!
//! These go through `load_file`, which reads `CULEX__*` environment
//! variables; no test in this binary sets any (the environment override test
//! is a separate binary, `env_override.rs`).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::path::PathBuf;

use culex_config::{load_file, Config, Listener, Loaded, Persistence, SyncPolicy};

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name)
}

fn load(name: &str) -> Loaded {
    match load_file(&shipped(name)) {
        Ok(loaded) => loaded,
        Err(e) => panic!("configs/{name} should load:\n{e}"),
    }
}

#[test]
fn default_toml_is_the_embedded_default() {
    let loaded = load("default.toml");
    assert_eq!(loaded.warnings, Vec::<String>::new());
    assert_eq!(loaded.config, Config::embedded_default());
}

#[test]
fn example_toml_and_conf_are_equivalent() {
    let toml = load("example.toml");
    let conf = load("example.conf");
    assert_eq!(toml.warnings, Vec::<String>::new());
    assert_eq!(conf.warnings, Vec::<String>::new());
    assert_eq!(toml.config, conf.config);

    // And they really say something (not just the defaults).
    let c = toml.config;
    assert_eq!(
        c.listeners,
        vec![
            Listener::all_interfaces(1883),
            Listener::new("127.0.0.1", 8883)
        ]
    );
    assert!(c.security.allow_anonymous);
    assert_eq!(c.limits.max_inflight_messages, 50);
    assert_eq!(c.limits.max_connections, Some(10_000));
    assert!(!c.sessions.allow_zero_length_clientid);
    assert_eq!(c.sessions.auto_id_prefix, "culex-");
    assert_eq!(
        c.sessions.persistent_client_expiration,
        Some(std::time::Duration::from_secs(14 * 86_400))
    );
    assert_eq!(c.mqtt.max_qos, 1);
    assert_eq!(
        c.persistence,
        Persistence {
            enabled: true,
            dir: PathBuf::from("/var/lib/culex"),
            file: "culex.redb".into(),
            sync: SyncPolicy::Batched,
            batch_delay: std::time::Duration::from_millis(20),
        }
    );
    assert_ne!(c, Config::embedded_default());
}

#[test]
fn embedded_defaults() {
    let c = Config::embedded_default();
    assert_eq!(
        c.listeners,
        vec![Listener::new("127.0.0.1", 1883), Listener::new("::1", 1883)]
    );
    assert!(c.security.allow_anonymous);
    assert_eq!(c.limits.max_inflight_messages, 20);
    assert_eq!(c.limits.max_queued_messages, 1000);
    assert_eq!(c.limits.max_queued_bytes, 64 * 1024 * 1024);
    assert_eq!(c.limits.message_size_limit, 0);
    assert_eq!(c.limits.max_packet_size, 16 * 1024 * 1024);
    assert_eq!(c.limits.max_keepalive, 65535);
    assert_eq!(c.limits.max_connections, None);
    assert!(c.sessions.allow_zero_length_clientid);
    assert_eq!(c.sessions.auto_id_prefix, "auto-");
    assert_eq!(c.sessions.persistent_client_expiration, None);
    assert!(c.mqtt.retain_available);
    assert_eq!(c.mqtt.max_qos, 2);
    assert!(!c.mqtt.upgrade_outgoing_qos);
    assert_eq!(c.metrics.listen, Some(culex_config::DEFAULT_METRICS_LISTEN));
    assert_eq!(c.sys.interval, std::time::Duration::from_secs(10));
    assert_eq!(
        c.persistence,
        Persistence {
            enabled: true,
            dir: PathBuf::from("culex-data"),
            file: "culex.redb".into(),
            sync: SyncPolicy::Always,
            batch_delay: std::time::Duration::from_millis(10),
        }
    );
    assert_eq!(
        Config {
            metrics: Default::default(),
            persistence: Persistence {
                enabled: false,
                ..c.persistence.clone()
            },
            ..c.clone()
        },
        Config::default(),
        "a file that sets nothing differs only by serving no metrics and persisting nothing"
    );
    assert!(
        !Config::default().persistence.enabled,
        "mosquitto's persistence false"
    );
    assert_eq!(c.validate(), Ok(()));

    let p = Config::embedded_on_port(1999);
    assert_eq!(p.listeners, Listener::loopback(1999));
    assert_eq!(p.metrics.listen, None, "-p PORT serves no metrics");
    assert!(
        !p.persistence.enabled,
        "-p PORT instances never share a store"
    );
    assert_eq!(
        Config {
            listeners: c.listeners.clone(),
            metrics: c.metrics.clone(),
            persistence: c.persistence.clone(),
            ..p
        },
        c
    );
}

#[test]
fn syntax_is_chosen_by_file_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The same text is valid mosquitto.conf but invalid TOML.
    let text = "max_qos 1\n";
    let conf = dir.path().join("culex.conf");
    let toml = dir.path().join("culex.toml");
    let other = dir.path().join("mosquitto.cfg");
    for p in [&conf, &toml, &other] {
        std::fs::write(p, text).expect("write");
    }
    assert_eq!(load_file(&conf).expect("conf").config.mqtt.max_qos, 1);
    assert_eq!(load_file(&other).expect("other").config.mqtt.max_qos, 1);
    let e = load_file(&toml).expect_err("not TOML");
    assert_eq!(e.diagnostics[0].file, toml);
    assert_eq!(e.diagnostics[0].line, Some(1));
}

#[test]
fn validate_reports_every_problem() {
    let mut c = Config::embedded_default();
    c.listeners.push(Listener::new("127.0.0.1", 1883));
    c.mqtt.max_qos = 5;
    let e = c.validate().expect_err("invalid");
    assert_eq!(
        e.to_string(),
        "option 'listeners[2]': listener 127.0.0.1:1883 is defined more than once; each host and port may be used once\n\
         option 'mqtt.max_qos': value 5 is out of range; allowed: 0, 1 or 2"
    );
}

#[test]
fn tls_examples_are_equivalent() {
    use culex_config::{ListenerProtocol, TlsVersion};

    // The examples name files under /etc/culex; make them in a temporary directory.
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir(root.join("certs")).expect("mkdir");
    for f in [
        "certs/server.pem",
        "certs/server.key",
        "certs/ca.pem",
        "passwd",
        "acl",
    ] {
        std::fs::write(root.join(f), "x\n").expect("write");
    }
    let load_moved = |name: &str| {
        let text = std::fs::read_to_string(shipped(name)).expect("read example");
        let moved = root.join(name);
        std::fs::write(
            &moved,
            text.replace("/etc/culex/", &format!("{}/", root.display())),
        )
        .expect("write");
        match load_file(&moved) {
            Ok(loaded) => loaded,
            Err(e) => panic!("configs/{name} should load:\n{e}"),
        }
    };
    let toml = load_moved("tls.toml");
    let conf = load_moved("tls.conf");
    assert_eq!(toml.warnings, Vec::<String>::new());
    assert_eq!(conf.warnings, Vec::<String>::new());
    assert_eq!(toml.config, conf.config);

    let c = toml.config;
    assert_eq!(c.listeners.len(), 3);
    assert!(c.listeners[0].tls.is_none());
    let tls = c.listeners[1].tls.as_ref().expect("8883 is TLS");
    assert!(tls.require_certificate && tls.use_identity_as_username);
    assert_eq!(tls.tls_version, TlsVersion::V1_2);
    assert_eq!(tls.cafile, Some(root.join("certs/ca.pem")));
    assert_eq!(c.listeners[2].protocol, ListenerProtocol::Websockets);
    assert!(c.listeners[2].tls.is_some());
    assert!(!c.security.allow_anonymous);
    assert_eq!(c.security.acl_file, Some(root.join("acl")));
}

#[test]
fn sber_bridge_toml_and_conf_are_equivalent() {
    let toml = load("sber-bridge.toml");
    let conf = load("sber-bridge.conf");
    assert_eq!(toml.warnings, Vec::<String>::new());
    assert_eq!(conf.warnings, Vec::<String>::new());
    assert_eq!(toml.config, conf.config);
    let bridges = &toml.config.bridges;
    assert_eq!(bridges.len(), 1);
    let b = &bridges[0];
    assert_eq!(b.name, "sber");
    assert_eq!(
        b.addresses,
        vec![(
            culex_config::bridge::SBER_HOST.to_string(),
            culex_config::bridge::SBER_PORT
        )]
    );
    assert!(b.tls.as_ref().is_some_and(|t| !t.insecure));
    assert_eq!(b.remote_clientid, "my-sber-login");
    assert_eq!(
        b.topics[0].remote_filter(),
        "sberdevices/v1/my-sber-login/up/#"
    );
    assert_eq!(b.notification_topic.as_deref(), Some("sber/bridge/state"));
}
