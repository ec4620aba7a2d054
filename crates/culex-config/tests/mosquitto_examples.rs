//! Mosquitto's own configuration examples load unchanged: Debian's stock
//! `/etc/mosquitto/mosquitto.conf` and every example in the mosquitto.conf(5) man page
//! (Mosquitto 2.0.11, Debian bookworm), each quoted as the page or the package has it.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::path::{Path, PathBuf};
use std::time::Duration;

use culex_config::{load_file, Loaded};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &Path) -> Loaded {
    match load_file(path) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{} should load:\n{e}", path.display()),
    }
}

/// Debian's `/etc/mosquitto/mosquitto.conf`, verbatim but for `include_dir`, which names a
/// directory of this test (the package's holds only a README).
#[test]
fn debian_stock_mosquitto_conf() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "conf.d/README",
        "Any files placed in this directory ...\n",
    );
    let stock = "\
# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir /etc/mosquitto/conf.d
";
    let conf_d = dir.path().join("conf.d");
    let text = stock.replace("/etc/mosquitto/conf.d", conf_d.to_str().unwrap());
    let loaded = load(&write(dir.path(), "mosquitto.conf", &text));
    let c = &loaded.config;
    assert!(c.persistence.enabled);
    assert_eq!(c.persistence.dir, PathBuf::from("/var/lib/mosquitto/"));
    // Mosquitto 2 without a listener: the loopback listeners on 1883.
    assert!(c.listeners.iter().all(|l| l.port == 1883));
    // pid_file and log_dest are accepted with a warning saying they are ignored.
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
    assert!(loaded.warnings.iter().any(|w| w.contains("'pid_file'")));
    assert!(loaded.warnings.iter().any(|w| w.contains("'log_dest'")));
}

/// mosquitto.conf(5), `include_dir`: "include_dir one.d / include_dir two.d" loads one.d's
/// files (B.conf, C.conf) then two.d's (A.conf, D.conf), each directory in order.
#[test]
fn man_page_include_dir_example() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in [
        "one.d/B.conf",
        "one.d/C.conf",
        "two.d/A.conf",
        "two.d/D.conf",
    ]
    .iter()
    .enumerate()
    {
        write(dir.path(), name, &format!("max_keepalive {}\n", 100 + i));
    }
    let main = format!(
        "include_dir {}\ninclude_dir {}\n",
        dir.path().join("one.d").display(),
        dir.path().join("two.d").display()
    );
    let loaded = load(&write(dir.path(), "mosquitto.conf", &main));
    // D.conf, the last file loaded, decides.
    assert_eq!(loaded.config.limits.max_keepalive, 103);
    // Each later file's warning names it first: "FILE:1: option ... given more than once".
    let order: Vec<String> = loaded
        .warnings
        .iter()
        .filter_map(|w| w.split(':').next())
        .filter_map(|f| Path::new(f).file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        order,
        ["C.conf", "A.conf", "D.conf"],
        "{:?}",
        loaded.warnings
    );
}

/// mosquitto.conf(5), `log_timestamp_format`: "log_timestamp_format %Y-%m-%dT%H:%M:%S".
#[test]
fn man_page_log_timestamp_format_example() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "m.conf",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S\n",
    );
    let loaded = load(&path);
    assert!(loaded.warnings[0].contains("'log_timestamp_format' is accepted but ignored"));
}

/// mosquitto.conf(5), bridges: `restart_timeout 20` (a constant delay) and
/// `restart_timeout 10 30` (backoff from 10 s up to 30 s), and the topic example
/// `topic # both 2 local/topic/ remote/topic/`.
#[test]
fn man_page_bridge_option_examples() {
    let dir = tempfile::tempdir().unwrap();
    let bridge =
        |extra: &str| format!("connection b\naddress 127.0.0.1:1884\ntopic # out\n{extra}\n");
    let c = load(&write(dir.path(), "a.conf", &bridge("restart_timeout 20"))).config;
    assert_eq!(
        (c.bridges[0].backoff_min, c.bridges[0].backoff_max),
        (Duration::from_secs(20), Duration::from_secs(20))
    );
    let c = load(&write(
        dir.path(),
        "b.conf",
        &bridge("restart_timeout 10 30"),
    ))
    .config;
    assert_eq!(
        (c.bridges[0].backoff_min, c.bridges[0].backoff_max),
        (Duration::from_secs(10), Duration::from_secs(30))
    );
    let c = load(&write(
        dir.path(),
        "c.conf",
        &bridge("topic # both 2 local/topic/ remote/topic/"),
    ))
    .config;
    let rule = &c.bridges[0].topics[1];
    assert_eq!(
        (
            rule.pattern.as_str(),
            rule.local_prefix.as_str(),
            rule.remote_prefix.as_str()
        ),
        ("#", "local/topic/", "remote/topic/")
    );
}

/// mosquitto.conf(5), the bridge example at the end of the page, verbatim.
#[test]
fn man_page_bridge_example() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
connection test-mosquitto-org
address test.mosquitto.org
cleansession true
topic clients/total in 0 test/mosquitto/org/ $SYS/broker/
";
    let c = load(&write(dir.path(), "bridge.conf", text)).config;
    let b = &c.bridges[0];
    assert_eq!(b.name, "test-mosquitto-org");
    assert_eq!(b.addresses, [("test.mosquitto.org".to_owned(), 1883)]);
    assert!(b.cleansession);
    let rule = &b.topics[0];
    assert_eq!(
        (
            rule.pattern.as_str(),
            rule.local_prefix.as_str(),
            rule.remote_prefix.as_str()
        ),
        ("clients/total", "test/mosquitto/org/", "$SYS/broker/")
    );
}
