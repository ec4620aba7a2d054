//! The configurations shipped in `deploy/` keep the broker's state across a restart, as an
//! operator following deploy/README.md would see it: each of `deploy/systemd/culex.conf` and
//! `deploy/docker/culex.conf`, as written, with only its paths and ports moved into a temporary
//! directory, runs the real `culex` binary; a retained message published before a clean stop
//! (SIGTERM, what `systemctl restart` and `docker stop` send) is delivered after the restart.
//!
//! The rewrite is deliberately narrow: `/etc/culex/...` and `/var/lib/culex/...` move under the
//! temporary directory, every `listener` becomes `listener 0 127.0.0.1` and `metrics_listener`
//! becomes `127.0.0.1:0`; any other absolute path in an option makes the test fail, asking for
//! the rewrite to learn it, rather than pointing a test at the real /etc or /var. Nothing is
//! added: if a shipped configuration stops turning persistence on, the message is lost and the
//! test fails. The broker runs in the state directory, as the unit's `WorkingDirectory=` and
//! the image's `WORKDIR`, so a store at a relative path would be caught there too.
//!
//! Synchronisation is on events only: the `listening on ADDR` log line, CONNACK, PUBACK (a
//! retained QoS 1 message is acknowledged once the store committed it), process exit, and after
//! the restart a marker message published after subscribing, which the retained message must
//! precede.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use culex_proto::{
    Connect, Disconnect, Packet, Properties, Protocol, Publish, QoS, ReasonCode, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use culex_test_support::RawClient;
use tempfile::TempDir;

/// How long any one step may take (start-up, an MQTT exchange, shutdown) before the test gives
/// up. Generous: a debug build on a busy two-core machine.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The user the rewritten configurations' password and ACL files allow.
const USER: &str = "alice";
const PASSWORD: &str = "deploy-test-password";

/// Retained topic, and the marker that must arrive after it on resubscribing.
const TOPIC: &str = "deploy/test/retained";
const MARKER: &str = "deploy/test/marker";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn culex() -> Command {
    let mut cmd = culex_test_support::culex_command(env!("CARGO_BIN_EXE_culex"));
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

// --- The rewrite ---------------------------------------------------------------------------

/// Where the rewritten configuration puts things.
struct Layout {
    /// Stands for `/etc/culex`.
    etc: PathBuf,
    /// Stands for `/var/lib/culex`: the state directory and working directory.
    state: PathBuf,
}

/// `text` (mosquitto.conf syntax, from `file`) with its paths moved into `layout` and its
/// listeners on loopback ports chosen by the kernel. Comments are kept as they are.
fn rewrite(file: &str, text: &str, layout: &Layout) -> String {
    let move_path = |word: &str, lineno: usize| -> String {
        for (prefix, to) in [
            ("/etc/culex", &layout.etc),
            ("/var/lib/culex", &layout.state),
        ] {
            if let Some(rest) = word.strip_prefix(prefix) {
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{}{rest}", to.display());
                }
            }
        }
        assert!(
            !word.starts_with('/'),
            "{file}:{lineno}: absolute path {word:?} outside /etc/culex and /var/lib/culex; \
             teach tests/deploy.rs where to put it in the test's temporary directory"
        );
        word.to_owned()
    };
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let option = trimmed.split_whitespace().next().unwrap_or("");
        let new = if trimmed.is_empty() || trimmed.starts_with('#') {
            line.to_owned()
        } else if option == "listener" {
            "listener 0 127.0.0.1".to_owned()
        } else if option == "metrics_listener" {
            "metrics_listener 127.0.0.1:0".to_owned()
        } else {
            trimmed
                .split_whitespace()
                .map(|w| move_path(w, i + 1))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push_str(&new);
        out.push('\n');
    }
    out
}

/// Whether a mosquitto.conf text sets `option` (on a line that is not a comment).
fn has_option(text: &str, option: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().next() == Some(option))
}

#[test]
fn rewrite_moves_paths_and_listeners_and_keeps_comments() {
    let layout = Layout {
        etc: PathBuf::from("/tmp/x/etc"),
        state: PathBuf::from("/tmp/x/state"),
    };
    let text = "# listener 1883 /etc/culex/ stays\nlistener 1883\nlistener 8883 0.0.0.0\n\
                metrics_listener 0.0.0.0:9234\npassword_file /etc/culex/passwd\n\
                persistence_location /var/lib/culex/\npersistence true\n";
    assert_eq!(
        rewrite("t.conf", text, &layout),
        "# listener 1883 /etc/culex/ stays\nlistener 0 127.0.0.1\nlistener 0 127.0.0.1\n\
         metrics_listener 127.0.0.1:0\npassword_file /tmp/x/etc/passwd\n\
         persistence_location /tmp/x/state/\npersistence true\n"
    );
}

#[test]
#[should_panic(expected = "absolute path \"/var/log/culex.log\"")]
fn rewrite_refuses_a_path_it_does_not_know() {
    let layout = Layout {
        etc: PathBuf::from("/tmp/x/etc"),
        state: PathBuf::from("/tmp/x/state"),
    };
    rewrite("t.conf", "log_dest file /var/log/culex.log\n", &layout);
}

// --- The broker process ---------------------------------------------------------------------

/// A `culex` process whose stderr is read line by line in a thread. Dropping it kills the
/// process if it is still running, so a failed assertion leaves no broker (or store lock) behind.
struct Broker {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    exited: bool,
}

impl Broker {
    fn spawn(mut cmd: Command) -> Broker {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn culex");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().expect("log lock").push(line.clone());
                // The receiver may be gone; keep draining so the child never blocks on a pipe.
                let _ = tx.send(line);
            }
        });
        Broker {
            child,
            lines,
            log,
            exited: false,
        }
    }

    fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits for the `listening on 127.0.0.1:PORT` line; returns that address.
    fn wait_listening(&mut self) -> SocketAddr {
        const NEEDLE: &str = "listening on 127.0.0.1:";
        let deadline = Instant::now() + TIMEOUT;
        let line = loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(NEEDLE) => break line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!("not listening after {TIMEOUT:?}; log:\n{}", self.log())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit();
                    panic!(
                        "culex exited ({status:?}) before listening; log:\n{}",
                        self.log()
                    )
                }
            }
        };
        let rest = &line[line.find(NEEDLE).expect("needle") + NEEDLE.len()..];
        let port: u16 = rest
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or_else(|e| panic!("bad port in {line:?}: {e}"));
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The store file named by the `store PATH: N retained messages, ...` line at start.
    fn store_path(&self) -> Option<PathBuf> {
        self.log.lock().expect("log lock").iter().find_map(|l| {
            let rest = &l[l.find(" store /")? + " store ".len()..];
            Some(PathBuf::from(&rest[..rest.find(": ")?]))
        })
    }

    fn wait_exit(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = true;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as `systemctl stop` and `docker stop` send: must end with exit status 0.
    fn term(mut self) {
        let status = Command::new("sh")
            .args(["-c", "kill -s TERM \"$0\""])
            .arg(self.child.id().to_string())
            .status()
            .expect("run sh -c kill");
        assert!(status.success(), "kill -s TERM failed");
        match self.wait_exit() {
            Some(s) if s.success() => {}
            other => panic!(
                "culex did not exit 0 after SIGTERM ({other:?}); log:\n{}",
                self.log()
            ),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// --- MQTT -------------------------------------------------------------------------------------

/// Receives the next packet, waiting up to [`TIMEOUT`].
async fn recv(c: &mut RawClient, waiting_for: &str) -> Packet {
    match c.recv_within(TIMEOUT).await {
        Ok(Some(p)) => p,
        Ok(None) => panic!("no packet within {TIMEOUT:?} while waiting for {waiting_for}"),
        Err(e) => panic!("while waiting for {waiting_for}: {e:#}"),
    }
}

/// A clean 3.1.1 session, logged in as [`USER`] when the configuration requires passwords.
async fn connect(addr: SocketAddr, client_id: &str, login: bool) -> RawClient {
    let mut c = RawClient::connect(addr, Protocol::V311)
        .await
        .expect("TCP connect");
    let connect = Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: login.then(|| USER.to_owned()),
        password: login.then(|| Bytes::from_static(PASSWORD.as_bytes())),
        properties: Properties::default(),
    };
    c.send(&Packet::Connect(Box::new(connect)))
        .await
        .expect("send CONNECT");
    match recv(&mut c, "CONNACK").await {
        Packet::ConnAck(ack) => assert_eq!(
            ack.reason_code.as_u8(),
            0,
            "CONNECT refused: {:?}",
            ack.reason_code
        ),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c
}

/// Publishes at QoS 1 and waits for the PUBACK.
async fn publish(c: &mut RawClient, topic: &str, payload: &str, retain: bool, packet_id: u16) {
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: topic.to_owned(),
        packet_id: Some(packet_id),
        properties: Properties::default(),
        payload: Bytes::from(payload.to_owned()),
    };
    c.send(&Packet::Publish(publish))
        .await
        .expect("send PUBLISH");
    match recv(c, "PUBACK").await {
        Packet::PubAck(ack) if ack.packet_id == packet_id => {}
        other => panic!("expected PUBACK {packet_id}, got {other:?}"),
    }
}

async fn disconnect(mut c: RawClient) {
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::NormalDisconnection,
    )))
    .await
    .expect("send DISCONNECT");
    let rest = c
        .expect_closed()
        .await
        .expect("server closes after DISCONNECT");
    assert!(rest.is_empty(), "packets after DISCONNECT: {rest:?}");
}

/// Subscribes to [`TOPIC`] and [`MARKER`], publishes a marker and returns the payload of the
/// retained message on [`TOPIC`] delivered before the marker came back, if any. The broker sends
/// a topic's retained message when the subscription is made, before it handles the marker
/// published afterwards on the same connection.
async fn retained_before_marker(c: &mut RawClient) -> Option<String> {
    let subscribe = Subscribe {
        packet_id: 1,
        filters: [TOPIC, MARKER]
            .into_iter()
            .map(|f| SubscribeFilter {
                filter: f.to_owned(),
                options: SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    ..SubscriptionOptions::default()
                },
            })
            .collect(),
        properties: Properties::default(),
    };
    c.send(&Packet::Subscribe(subscribe))
        .await
        .expect("send SUBSCRIBE");
    let mut retained = None;
    let mut subacked = false;
    let mut marker_sent = false;
    loop {
        if subacked && !marker_sent {
            let publish = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: MARKER.to_owned(),
                packet_id: None,
                properties: Properties::default(),
                payload: Bytes::from_static(b"marker"),
            };
            c.send(&Packet::Publish(publish))
                .await
                .expect("send marker");
            marker_sent = true;
        }
        match recv(c, "SUBACK, the retained message and the marker").await {
            Packet::SubAck(ack) => {
                let granted: Vec<u8> = ack.reason_codes.iter().map(|r| r.as_u8()).collect();
                assert_eq!(granted, [0, 0], "SUBACK refused a filter: {ack:?}");
                subacked = true;
            }
            Packet::Publish(p) if p.topic == TOPIC => {
                assert!(
                    p.retain,
                    "message on {TOPIC} without the retain flag: {p:?}"
                );
                retained = Some(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Packet::Publish(p) if p.topic == MARKER && marker_sent => return retained,
            other => panic!("unexpected packet {other:?}"),
        }
    }
}

// --- The test ---------------------------------------------------------------------------------

/// Starts the broker on `deploy/<which>/culex.conf` (rewritten), publishes a retained
/// message, restarts the broker with SIGTERM and expects the message back.
fn shipped_config_keeps_retained_messages_across_a_restart(which: &str) {
    let file = format!("deploy/{which}/culex.conf");
    let shipped =
        fs::read_to_string(repo_root().join(&file)).unwrap_or_else(|e| panic!("read {file}: {e}"));

    let tmp = TempDir::new().expect("temp dir");
    let layout = Layout {
        etc: tmp.path().join("etc/culex"),
        state: tmp.path().join("var/lib/culex"),
    };
    fs::create_dir_all(&layout.etc).expect("create etc");
    // Created by systemd (StateDirectory=) or the image (the volume), before the broker starts.
    fs::create_dir_all(&layout.state).expect("create state directory");

    // The password and ACL files deploy/README.md has the operator create (cheap hashing: this
    // is about state, not passwords).
    let status = culex()
        .args(["passwd", "-c", "-I", "1000", "-b"])
        .arg(layout.etc.join("passwd"))
        .args([USER, PASSWORD])
        .status()
        .expect("run culex passwd");
    assert!(status.success(), "culex passwd failed: {status:?}");
    fs::write(
        layout.etc.join("acl"),
        format!("user {USER}\ntopic readwrite #\n"),
    )
    .expect("write acl");

    let text = rewrite(&file, &shipped, &layout);
    let conf = layout.etc.join("culex.conf");
    fs::write(&conf, &text).expect("write culex.conf");
    let login = has_option(&text, "password_file");

    // As the unit's ExecStartPre= does.
    let out = culex()
        .arg("--check")
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::piped())
        .output()
        .expect("run culex --check");
    assert!(
        out.status.success(),
        "culex --check refuses the rewritten {file}:\n{}\n--- config ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );

    let start = || {
        let mut cmd = culex();
        cmd.arg("-c").arg(&conf).current_dir(&layout.state);
        let mut broker = Broker::spawn(cmd);
        let addr = broker.wait_listening();
        (broker, addr)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let payload = format!("kept by {file}");

    let (broker, addr) = start();
    rt.block_on(async {
        let mut c = connect(addr, "deploy-publisher", login).await;
        publish(&mut c, TOPIC, &payload, true, 1).await;
        disconnect(c).await;
    });
    let store = broker.store_path();
    broker.term();

    let (broker, addr) = start();
    let got = rt.block_on(async {
        let mut c = connect(addr, "deploy-subscriber", login).await;
        let got = retained_before_marker(&mut c).await;
        disconnect(c).await;
        got
    });
    let log = broker.log();
    assert_eq!(
        got.as_deref(),
        Some(payload.as_str()),
        "the retained message did not survive a restart with {file} ({}); \
         it must set `persistence true` and `persistence_location /var/lib/culex/`.\n\
         --- rewritten config ---\n{text}--- log after the restart ---\n{log}",
        match &store {
            Some(p) => format!("store {}", p.display()),
            None => "no store was opened".to_owned(),
        },
    );
    // The store is in the state directory: the StateDirectory= of the unit, the volume of the
    // image. Anywhere else it would be lost (or refused by the sandbox) in production.
    let store = store.expect("a store was opened");
    assert!(
        store.starts_with(&layout.state),
        "{file} keeps its store at {} (rewritten), outside the state directory {}",
        store.display(),
        layout.state.display()
    );
    broker.term();
}

#[test]
fn systemd_config_keeps_retained_messages_across_a_restart() {
    shipped_config_keeps_retained_messages_across_a_restart("systemd");
}

#[test]
fn docker_config_keeps_retained_messages_across_a_restart() {
    shipped_config_keeps_retained_messages_across_a_restart("docker");
}
