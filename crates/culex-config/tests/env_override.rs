//! `CULEX__SECTION__KEY` environment variables override TOML values.
//!
//! This binary holds a single test, so changing the process environment
//! cannot race with anything else.

use culex_config::load_file;

#[test]
fn environment_overrides_toml_but_not_mosquitto_conf() {
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = dir.path().join("culex.toml");
    std::fs::write(&toml, "[limits]\nmax_inflight_messages = 10\n").expect("write");
    let conf = dir.path().join("culex.conf");
    std::fs::write(&conf, "max_inflight_messages 10\n").expect("write");

    let base = load_file(&toml).expect("loads").config;
    assert_eq!(base.limits.max_inflight_messages, 10);

    std::env::set_var("CULEX__LIMITS__MAX_INFLIGHT_MESSAGES", "50");
    std::env::set_var("CULEX__MQTT__MAX_QOS", "1");
    std::env::set_var("CULEX__PERSISTENCE__ENABLED", "true");
    std::env::set_var("CULEX__PERSISTENCE__BATCH_DELAY", "50ms");
    // One underscore after the prefix: not an override, ignored.
    std::env::set_var("CULEX_MQTT__RETAIN_AVAILABLE", "false");

    let loaded = load_file(&toml).expect("loads with overrides");
    assert_eq!(loaded.config.limits.max_inflight_messages, 50);
    assert_eq!(loaded.config.mqtt.max_qos, 1);
    assert!(loaded.config.persistence.enabled);
    assert_eq!(
        loaded.config.persistence.batch_delay,
        std::time::Duration::from_millis(50)
    );
    assert!(loaded.config.mqtt.retain_available);
    assert_eq!(loaded.warnings, Vec::<String>::new());

    // mosquitto.conf files ignore them, with a warning.
    let loaded = load_file(&conf).expect("conf loads");
    assert_eq!(loaded.config.limits.max_inflight_messages, 10);
    assert_eq!(loaded.config.mqtt.max_qos, 2);
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0].contains(
            "CULEX__LIMITS__MAX_INFLIGHT_MESSAGES, CULEX__MQTT__MAX_QOS, CULEX__PERSISTENCE__BATCH_DELAY, CULEX__PERSISTENCE__ENABLED ignored: CULEX__ overrides apply only to TOML"
        ),
        "{:?}",
        loaded.warnings
    );

    // A bad override is an error naming the variable.
    std::env::set_var("CULEX__MQTT__MAX_QOS", "3");
    let e = load_file(&toml).expect_err("bad override");
    assert_eq!(
        e.to_string(),
        "environment variable CULEX__MQTT__MAX_QOS: option 'mqtt.max_qos': value 3 is out of range; allowed: 0, 1 or 2"
    );

    std::env::remove_var("CULEX__LIMITS__MAX_INFLIGHT_MESSAGES");
    std::env::remove_var("CULEX__MQTT__MAX_QOS");
    std::env::remove_var("CULEX__PERSISTENCE__ENABLED");
    std::env::remove_var("CULEX__PERSISTENCE__BATCH_DELAY");
    std::env::remove_var("CULEX_MQTT__RETAIN_AVAILABLE");
    assert_eq!(load_file(&toml).expect("loads").config, base);
}
