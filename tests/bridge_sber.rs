//! The Sber preset through the `culex` binary against a Sber-like remote: Debian's `mosquitto`
//! with TLS, a password file and Sber's ACL (the login writes `sberdevices/v1/<login>/up/#`,
//! reads its `down/#` and the global `__config`). The remote logs every packet, so the tests
//! read what it saw: PINGREQs, the order of the packets after a connect, and when it noticed a
//! closed link. The "cloud" side of the tests talks to the same remote on a plain listener.
//!
//! - a link with only `out` traffic stays up (one connect) and pings;
//! - commands from the cloud arrive, every one, sparse or every 100 ms;
//! - a frozen remote (SIGSTOP) is declared dead within 1.5 keepalive intervals, its socket is
//!   closed (the remote logs the close once it runs again), and the bridge reconnects;
//! - after a restart of the remote it sees `up/config`, then `up/status`, then SUBSCRIBE;
//! - refused credentials: one WARN, `credentials_refused` in the metrics and `$SYS`, and a reload
//!   with the right password connects at once instead of waiting out the backoff cap.
//!
//! Without `mosquitto` installed the tests print a note and pass.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

mod bridge_support;

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bridge_support::*;
use culex_test_support::have_mosquitto;
use culex_test_support::pki::Pki;
use rumqttc::QoS;

const LOGIN: &str = "dev123";
const PASSWORD: &str = "s3cret";
const KEEPALIVE: u64 = 5;

/// The Sber-like remote: its plain port is `port` (for the test's cloud clients), its TLS port
/// the returned one (for the bridge).
struct Remote {
    mosquitto: Mosquitto,
    tls_port: u16,
    pki: Pki,
    /// The password and ACL files (read again when the remote restarts).
    _files: tempfile::TempDir,
}

impl Remote {
    fn start() -> Remote {
        let pki = Pki::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        for (i, (user, password)) in [(LOGIN, PASSWORD), ("cloud", "cloudpw")]
            .into_iter()
            .enumerate()
        {
            let mut cmd = culex();
            cmd.arg("passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd
                .arg("-b")
                .arg(&passwd)
                .arg(user)
                .arg(password)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let acl = dir.path().join("acl");
        std::fs::write(
            &acl,
            format!(
                "user {LOGIN}\n\
                 topic write sberdevices/v1/{LOGIN}/up/#\n\
                 topic read sberdevices/v1/{LOGIN}/down/#\n\
                 topic read sberdevices/v1/__config\n\
                 user cloud\n\
                 topic readwrite sberdevices/#\n"
            ),
        )
        .unwrap();
        let tls_port = free_port();
        let mosquitto = Mosquitto::start_with(
            &format!(
                "allow_anonymous false\npassword_file {}\nacl_file {}\n",
                passwd.display(),
                acl.display()
            ),
            &format!(
                "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
                pki.path(Pki::CA).display(),
                pki.path(Pki::SERVER_CERT).display(),
                pki.path(Pki::SERVER_KEY).display()
            ),
        );
        Remote {
            mosquitto,
            tls_port,
            pki,
            _files: dir,
        }
    }

    fn cloud(&self, id: &str) -> Mqtt {
        Mqtt::connect_as(self.mosquitto.port, id, true, Some(("cloud", "cloudpw")))
    }

    fn log(&self) -> String {
        self.mosquitto.log()
    }

    /// Log lines about the bridge's client id, from the remote's log.
    fn lines_of_bridge(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(LOGIN))
            .map(str::to_string)
            .collect()
    }

    fn connects(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains(&format!(" as {LOGIN} ")))
            .count()
    }

    fn assert_one_connect(&self) {
        assert_eq!(
            self.connects(),
            1,
            "one connect; remote log:\n{}",
            self.log()
        );
    }

    fn wait_until(&self, what: &str, cond: impl Fn(&Remote) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "remote: {what}; its log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The local broker with the Sber preset pointed at `remote`'s TLS port.
fn local(remote: &Remote, password: &str, extra: &str) -> Culex {
    Culex::start(&local_conf(remote, password, extra))
}

fn local_conf(remote: &Remote, password: &str, extra: &str) -> String {
    format!(
        "listener 0 127.0.0.1\nallow_anonymous true\nmetrics_listener 127.0.0.1:0\n\
         connection sber\n\
         bridge_preset sber\n\
         remote_username {LOGIN}\n\
         remote_password {password}\n\
         address 127.0.0.1:{}\n\
         bridge_cafile {}\n\
         keepalive_interval {KEEPALIVE}\n\
         restart_timeout 1 2\n{extra}",
        remote.tls_port,
        remote.pki.path(Pki::CA).display()
    )
}

/// The local broker with its bridge connected, a device client and a client subscribed to the
/// commands (`sber/down/#`).
fn connected_link(remote: &Remote) -> (Culex, Mqtt, Mqtt) {
    let local = local(remote, PASSWORD, "");
    let port = local.port_after("listening on 127.0.0.1:");
    local.wait_in_log("bridge connected to the remote broker");
    let device = Mqtt::connect(port, "device", true);
    let sub = Mqtt::connect(port, "commands", true);
    sub.subscribe("sber/down/#", QoS::AtMostOnce);
    (local, device, sub)
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Publishes `sber/up/status` every 200 ms from a local device until `until`, and the cloud's
/// commands (sequence numbers) at the offsets `commands` (from now), then returns.
fn run_traffic(device: &Mqtt, cloud: &Mqtt, until: Duration, commands: &[Duration]) {
    let start = Instant::now();
    let mut next_command = 0;
    let mut tick = 0u64;
    while start.elapsed() < until {
        let next_status = Duration::from_millis(200 * tick);
        let next_cmd = commands.get(next_command).copied();
        match next_cmd {
            Some(at) if at <= next_status => {
                sleep_until(start + at);
                cloud.publish(
                    &format!("sberdevices/v1/{LOGIN}/down/commands"),
                    &next_command.to_string(),
                    QoS::AtMostOnce,
                );
                next_command += 1;
            }
            _ => {
                sleep_until(start + next_status);
                device.publish(
                    "sber/up/status",
                    &format!("{{\"tick\":{tick}}}"),
                    QoS::AtMostOnce,
                );
                tick += 1;
            }
        }
    }
    assert_eq!(next_command, commands.len(), "all commands were sent");
}

fn sleep_until(at: Instant) {
    if let Some(d) = at.checked_duration_since(Instant::now()) {
        thread::sleep(d);
    }
}

/// Collects the commands that reached the local subscriber (numbers), waiting up to `wait` for
/// the last ones.
fn commands_received(sub: &Mqtt, expected: usize, wait: Duration) -> Vec<usize> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        match sub.messages.recv_timeout(left) {
            Ok(p) if p.topic == "sber/down/commands" => {
                got.push(String::from_utf8_lossy(&p.payload).parse().unwrap());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got
}

/// A link with only `out` traffic (a status every 200 ms) and commands now and then from the
/// cloud: one connect for the whole run, a PINGREQ about every keepalive interval, and every
/// command arrives. Before the fix the bridge pinged only when it had sent nothing for an
/// interval, so it never pinged, took the silence for a dead link after twice the keepalive
/// (plus 5 s), reconnected, and lost the commands the remote sent into the abandoned socket.
#[test]
fn one_way_traffic_keeps_one_link_that_pings_and_loses_no_command() {
    if !have_mosquitto() {
        return;
    }
    let remote = Remote::start();
    let (local, device, sub) = connected_link(&remote);
    let cloud = remote.cloud("cloud-commands");
    let ups = remote.cloud("cloud-ups");
    ups.subscribe(&format!("sberdevices/v1/{LOGIN}/up/#"), QoS::AtMostOnce);

    // Commands are sparse: one every 6 s from second 12 on, so the link sees no incoming
    // traffic for longer than an interval in between (and needs its pings).
    let commands: Vec<Duration> = (0..3).map(|i| Duration::from_secs(12 + 6 * i)).collect();
    let started = Instant::now();
    run_traffic(&device, &cloud, Duration::from_secs(30), &commands);
    let got = commands_received(&sub, commands.len(), TIMEOUT);
    assert_eq!(got, vec![0, 1, 2], "every command arrives, in order");

    let statuses = ups.messages.try_iter().count();
    assert!(
        statuses >= 140,
        "only {statuses} statuses reached the cloud"
    );
    remote.assert_one_connect();
    assert_eq!(
        count(&local.log(), "bridge lost the remote link"),
        0,
        "{}",
        local.log()
    );
    let pings = count(&remote.log(), &format!("Received PINGREQ from {LOGIN}"));
    let intervals = started.elapsed().as_secs() / KEEPALIVE;
    assert!(
        pings + 2 >= usize::try_from(intervals).unwrap(),
        "{pings} PINGREQs in {intervals} keepalive intervals; remote log:\n{}",
        remote.log()
    );
}

/// A minute of status every 200 ms and commands every 100 ms: every command arrives, in order,
/// over one link.
#[test]
fn commands_every_100ms_for_a_minute_all_arrive() {
    if !have_mosquitto() {
        return;
    }
    let remote = Remote::start();
    let (_local, device, sub) = connected_link(&remote);
    let cloud = remote.cloud("cloud-commands");

    let commands: Vec<Duration> = (0..600).map(|i| Duration::from_millis(100 * i)).collect();
    run_traffic(&device, &cloud, Duration::from_secs(60), &commands);
    let got = commands_received(&sub, commands.len(), TIMEOUT);
    assert_eq!(got.len(), 600, "{} of 600 commands arrived", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order");
    remote.assert_one_connect();
}

/// The remote is frozen (SIGSTOP) for 10 s: the bridge declares the link dead within 1.5
/// keepalive intervals plus a bound and closes its socket — while the remote is still frozen,
/// the remote's end of that connection is no longer ESTABLISHED (the kernel got our FIN), so
/// once it runs again it cannot send into a link the bridge has abandoned — and reconnects.
#[test]
fn frozen_remote_is_declared_dead_its_socket_closed_and_the_link_back() {
    if !have_mosquitto() {
        return;
    }
    let remote = Remote::start();
    let local = local(&remote, PASSWORD, "");
    let port = local.port_after("listening on 127.0.0.1:");
    local.wait_in_log("bridge connected to the remote broker");
    let device = Mqtt::connect(port, "device", true);
    device.publish("sber/up/status", "{}", QoS::AtMostOnce);
    remote.wait_until("the bridge's first status", |r| {
        r.log().contains(&format!("Received PUBLISH from {LOGIN}"))
    });

    let bridge_port = bridge_peer_port(&remote);
    remote.mosquitto.signal("STOP");
    let frozen = Instant::now();
    let stop_traffic = Instant::now() + Duration::from_secs(10);
    while Instant::now() < stop_traffic && !local.log().contains("bridge lost the remote link") {
        device.publish("sber/up/status", "{}", QoS::AtMostOnce);
        thread::sleep(Duration::from_millis(200));
    }
    let detected = frozen.elapsed();
    let lost = local.log();
    // Still frozen: the remote's end of the old connection got our FIN (CLOSE_WAIT) or our
    // RST (gone); it is not ESTABLISHED any more, so the remote will not send into it.
    let old = tcp_state(remote.tls_port, bridge_port);
    sleep_until(frozen + Duration::from_secs(10));
    remote.mosquitto.signal("CONT");
    assert!(
        lost.contains("bridge lost the remote link"),
        "not detected while frozen; log:\n{lost}"
    );
    assert!(lost.contains("keepalive timeout"), "{lost}");
    // 1.5 × keepalive after the last packet received (at most the freeze itself), plus the
    // time to read what is left and the log line (bounded by 1.5 s here).
    let bound = Duration::from_millis(KEEPALIVE * 1500 + 1500);
    assert!(
        detected <= bound,
        "detected after {detected:?} (bound {bound:?})"
    );

    assert!(
        matches!(old.as_deref(), None | Some(TCP_CLOSE_WAIT)),
        "the remote's end of the dead link is in TCP state {old:?} (01 = ESTABLISHED)"
    );
    remote.wait_until("a second connect", |r| r.connects() >= 2);
    local.wait_in_log("bridge connected to the remote broker");
    assert_eq!(
        count(&local.log(), "bridge connected to the remote broker"),
        2
    );
}

/// After every (re)connect the remote sees the device list (`up/config`, retained locally)
/// first, then the latest status (re-published: `bridge_republish_on_connect` is on in the
/// preset), then the SUBSCRIBE for commands, all without RETAIN (the preset's
/// `bridge_outgoing_retain false`).
#[test]
fn after_a_remote_restart_config_then_status_then_subscribe() {
    if !have_mosquitto() {
        return;
    }
    let mut remote = Remote::start();
    let local = local(&remote, PASSWORD, "");
    let metrics_port = local.port_after("metrics on 127.0.0.1:");
    let port = local.port_after("listening on 127.0.0.1:");
    let device = Mqtt::connect(port, "device", true);
    device.publish("sber/up/status", "{\"on\":false}", QoS::AtMostOnce);
    device
        .client
        .publish(
            "sber/up/config",
            QoS::AtMostOnce,
            true,
            b"{\"devices\":[1]}".to_vec(),
        )
        .unwrap();
    device.publish("sber/up/status", "{\"on\":true}", QoS::AtMostOnce);
    local.wait_in_log("bridge connected to the remote broker");
    let order = |r: &Remote, from: usize| -> Vec<String> {
        r.lines_of_bridge()
            .into_iter()
            .skip(from)
            .filter_map(|l| {
                if l.contains("Received SUBSCRIBE") {
                    Some("SUBSCRIBE".to_string())
                } else if let Some(i) = l.find("Received PUBLISH from") {
                    let rest = &l[i..];
                    let topic = rest.split('\'').nth(1)?;
                    let retain = rest.contains(", r1,");
                    Some(format!("{topic} r{}", u8::from(retain)))
                } else {
                    None
                }
            })
            .collect()
    };
    let config = format!("sberdevices/v1/{LOGIN}/up/config r0");
    let status = format!("sberdevices/v1/{LOGIN}/up/status r0");

    // Restart the remote; a status published while it is down goes out after the config.
    remote.mosquitto.stop();
    let skip = remote.lines_of_bridge().len();
    local.wait_in_log("bridge lost the remote link");
    device.publish("sber/up/status", r#"{"on":"while down"}"#, QoS::AtMostOnce);
    thread::sleep(Duration::from_millis(300));
    remote.mosquitto.restart();
    remote.wait_until("the bridge back with its subscription", |r| {
        order(r, skip).contains(&"SUBSCRIBE".to_string())
    });
    let seen = order(&remote, skip);
    assert_eq!(
        seen[..3],
        [config.clone(), status.clone(), "SUBSCRIBE".to_string()],
        "remote's packet order after the restart; log:\n{}",
        remote.log()
    );
    // The status sent is the latest one, published while the remote was down (mosquitto logs
    // its size, 19 bytes, not the payload).
    let sent_status = remote
        .lines_of_bridge()
        .into_iter()
        .skip(skip)
        .find(|l| l.contains("Received PUBLISH") && l.contains("up/status"))
        .unwrap();
    let latest = "{\"on\":\"while down\"}";
    assert!(
        sent_status.contains(&format!("({} bytes)", latest.len())),
        "not the latest status: {sent_status}"
    );
    wait_for_metric(
        metrics_port,
        "culex_bridge_state{bridge=\"sber\",state=\"connected\"}",
        1.0,
    );
}

/// The bridge's port of its (first) connection to the remote, from the remote's log.
fn bridge_peer_port(remote: &Remote) -> u16 {
    let line = remote
        .lines_of_bridge()
        .into_iter()
        .find(|l| l.contains("New client connected from 127.0.0.1:"))
        .expect("the bridge's connect in the remote's log");
    let rest = &line[line.find("127.0.0.1:").unwrap() + "127.0.0.1:".len()..];
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// `/proc/net/tcp` state of a CLOSE_WAIT socket.
const TCP_CLOSE_WAIT: &str = "08";

/// The kernel's TCP state (hex, as in `/proc/net/tcp`) of the socket 127.0.0.1:`local` ↔
/// 127.0.0.1:`peer`, if it exists.
fn tcp_state(local: u16, peer: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let (l, p) = (
        format!("0100007F:{local:04X}"),
        format!("0100007F:{peer:04X}"),
    );
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&l.as_str()) && f.get(2) == Some(&p.as_str()))
            .then(|| f.get(3).map(|s| (*s).to_string()))
            .flatten()
    })
}

fn wait_for_metric(port: u16, series: &str, value: f64) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = http_get(port, "/metrics");
        if metric(&text, series) == Some(value) {
            return text;
        }
        assert!(Instant::now() < deadline, "{series} never {value}:\n{text}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Wrong password: the attempts go on at about the backoff cap (jittered; the schedule itself
/// is unit-tested with a seeded generator), one WARN for the repeated refusal, the state
/// `credentials_refused` in the metrics and in `$SYS/broker/connection/sber/link_state`; then a
/// reload with the right password connects at once, not after the 4–5 minutes the cap asks.
#[test]
fn refused_credentials_warn_once_show_their_state_and_a_reload_retries_at_once() {
    if !have_mosquitto() {
        return;
    }
    let remote = Remote::start();
    let local = local(&remote, "wrong", "");
    let metrics_port = local.port_after("metrics on 127.0.0.1:");
    let port = local.port_after("listening on 127.0.0.1:");
    let watcher = Mqtt::connect(port, "watcher", true);
    watcher.subscribe("$SYS/broker/connection/sber/#", QoS::AtMostOnce);
    wait_for_metric(
        metrics_port,
        "culex_bridge_state{bridge=\"sber\",state=\"credentials_refused\"}",
        1.0,
    );
    watcher.recv_matching(
        "$SYS/broker/connection/sber/link_state",
        "credentials_refused",
    );
    // Three more refusals (the cap is 2 s here).
    let attempts = |text: &str| {
        metric(
            text,
            "culex_bridge_reconnect_attempts_total{bridge=\"sber\"}",
        )
        .unwrap_or(0.0)
    };
    let first = attempts(&http_get(metrics_port, "/metrics"));
    let deadline = Instant::now() + TIMEOUT;
    while attempts(&http_get(metrics_port, "/metrics")) < first + 3.0 {
        assert!(
            Instant::now() < deadline,
            "no further attempts:\n{}",
            local.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let log = local.log();
    assert_eq!(
        count(&log, "refused the bridge's credentials"),
        1,
        "one warning for a repeated refusal:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("refused the bridge's credentials")),
        "{log}"
    );
    let text = http_get(metrics_port, "/metrics");
    assert!(
        metric(
            &text,
            "culex_bridge_last_error_timestamp_seconds{bridge=\"sber\"}"
        )
        .is_some_and(|t| (t - unix_now()).abs() < 60.0),
        "{text}"
    );

    // A long cap now (reloaded in place): the next refusal waits 4-5 minutes.
    let path = local.path.clone();
    std::fs::write(
        &path,
        local_conf(&remote, "wrong", "").replace("restart_timeout 1 2", "restart_timeout 1 300"),
    )
    .unwrap();
    local.signal("HUP");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = http_get(metrics_port, "/metrics");
        let next = metric(
            &text,
            "culex_bridge_next_attempt_timestamp_seconds{bridge=\"sber\"}",
        )
        .unwrap_or(0.0);
        if next > unix_now() + 200.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no long wait scheduled:\n{text}");
        thread::sleep(Duration::from_millis(200));
    }
    // The right password: the reload restarts the bridge, which connects at once.
    std::fs::write(
        &path,
        local_conf(&remote, PASSWORD, "").replace("restart_timeout 1 2", "restart_timeout 1 300"),
    )
    .unwrap();
    let reloaded = Instant::now();
    local.signal("HUP");
    wait_for_metric(
        metrics_port,
        "culex_bridge_state{bridge=\"sber\",state=\"connected\"}",
        1.0,
    );
    assert!(
        reloaded.elapsed() < Duration::from_secs(20),
        "connected {:?} after the reload",
        reloaded.elapsed()
    );
    watcher.recv_matching("$SYS/broker/connection/sber/link_state", "connected");
}
