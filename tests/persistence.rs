//! Persistence end to end, with the real `culex` binary: retained messages and persistent
//! sessions (subscriptions, queued and in-flight QoS 1/2 messages, QoS 2 packet ids) survive a
//! clean restart (SIGTERM) and a crash (`kill -9`); expired sessions are dropped at load; a
//! locked or corrupt store stops the broker with a clear error; `--reset-store` moves a bad store
//! aside; `culex -p PORT` alone persists nothing.
//!
//! Every test has its own temporary directory holding a mosquitto.conf file and the data
//! directory. Brokers listen on port 0 and the test reads the port from the `listening on ADDR`
//! log line (a restart gets a new port). Tests synchronise on events: a PUBACK / PUBREC /
//! PUBCOMP the broker sent means the change behind it is durable (that is the guarantee under
//! test), SUBACK before publishing, a marker message after one that must not arrive twice, and
//! process exit before a restart on the same directory. A [`Broker`] guard kills its process if a
//! test fails half-way.
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

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use culex_proto::{
    ConnAck, Connect, Packet, Properties, Protocol, PubResp, Publish, QoS, ReasonCode, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use culex_test_support::RawClient;
use tempfile::TempDir;

/// How long anything may take before the test gives up: start-up, an MQTT exchange, shutdown.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A short quiet period for "nothing more arrives" checks, used only after a positive
/// synchronisation point (a marker message).
const QUIET: Duration = Duration::from_millis(500);

// --- The broker process ------------------------------------------------------------------

fn culex() -> Command {
    let mut cmd = culex_test_support::culex_command(env!("CARGO_BIN_EXE_culex"));
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

/// Waits for `child` to exit, polling, for at most `limit`.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case the log is coloured anyway.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `culex` process whose stderr is read line by line in a thread. Dropping it kills the
/// process if it is still running, so a failed assertion never leaves a broker behind (or a
/// store locked).
struct Broker {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    exited: Option<ExitStatus>,
    port: Option<u16>,
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
                let line = strip_ansi(&line);
                log2.lock().expect("log lock").push(line.clone());
                // The receiver may be gone; keep draining so the child never blocks on a pipe.
                let _ = tx.send(line);
            }
        });
        Broker {
            child,
            lines,
            log,
            exited: None,
            port: None,
        }
    }

    /// Everything the broker wrote to stderr so far.
    fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits for a stderr line containing `needle`; returns that line.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no log line containing {needle:?} within {TIMEOUT:?}; log so far:\n{}",
                    self.log()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(TIMEOUT);
                    panic!(
                        "culex closed stderr ({status:?}) before logging {needle:?}; log:\n{}",
                        self.log()
                    )
                }
            }
        }
    }

    /// Waits for the `listening on 127.0.0.1:PORT` line, remembers PORT and returns it.
    fn wait_listening(&mut self) -> u16 {
        const NEEDLE: &str = "listening on 127.0.0.1:";
        let line = self.wait_for_line(NEEDLE);
        let rest = &line[line.find(NEEDLE).expect("needle") + NEEDLE.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let port: u16 = digits
            .parse()
            .unwrap_or_else(|e| panic!("bad port in log line {line:?}: {e}"));
        assert_ne!(
            port, 0,
            "the log must show the port actually bound: {line:?}"
        );
        self.port = Some(port);
        port
    }

    /// Where MQTT clients connect.
    fn addr(&self) -> SocketAddr {
        let port = self.port.expect("broker not listening yet");
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        // The shell's built-in `kill`: no libc dependency, and no need for procps' kill(1).
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$0\" \"$1\"", sig])
            .arg(self.pid().to_string())
            .status()
            .expect("run sh -c kill");
        assert!(status.success(), "kill -s {sig} {} failed", self.pid());
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_timeout(&mut self.child, limit);
        }
        self.exited
    }

    /// Waits for the process to exit on its own; returns its status and its full stderr.
    fn expect_exit(&mut self) -> (ExitStatus, String) {
        let Some(status) = self.wait_exit(TIMEOUT) else {
            panic!(
                "culex still running after {TIMEOUT:?}; log:\n{}",
                self.log()
            )
        };
        // stderr is closed once the process is gone; let the reader thread catch up.
        let deadline = Instant::now() + TIMEOUT;
        while self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
        {}
        (status, self.log())
    }

    /// SIGTERM: a clean shutdown that must end with exit status 0 (store closed, lock
    /// released).
    fn term(mut self) {
        self.signal("TERM");
        let (status, log) = self.expect_exit();
        assert!(
            status.success(),
            "culex exited with {status:?} after SIGTERM; log:\n{log}"
        );
    }

    /// SIGKILL (`kill -9`): a crash, no chance to flush anything.
    fn kill9(mut self) {
        self.signal("KILL");
        let Some(status) = self.wait_exit(TIMEOUT) else {
            panic!("culex still running {TIMEOUT:?} after SIGKILL")
        };
        assert!(!status.success(), "SIGKILL reported success: {status:?}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

/// A temporary directory with a mosquitto.conf file enabling persistence in `data/`.
struct Setup {
    tmp: TempDir,
    conf: PathBuf,
    data: PathBuf,
}

impl Setup {
    /// `persistence_sync` as given (`None`: the default, batched); `extra` lines are appended.
    fn new(sync: Option<&str>, extra: &str) -> Setup {
        let tmp = TempDir::new().expect("temp dir");
        let data = tmp.path().join("data");
        let mut text = format!(
            "listener 0 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {}\n",
            data.to_str().expect("temp paths are UTF-8")
        );
        if let Some(sync) = sync {
            text.push_str(&format!("persistence_sync {sync}\n"));
        }
        text.push_str(extra);
        let conf = tmp.path().join("culex.conf");
        fs::write(&conf, text).expect("write config file");
        Setup { tmp, conf, data }
    }

    /// The database file inside the data directory.
    fn db(&self) -> PathBuf {
        self.data.join("culex.redb")
    }

    /// Spawns `culex -c CONF EXTRA...` without waiting for anything.
    fn spawn(&self, extra: &[&str]) -> Broker {
        let mut cmd = culex();
        cmd.arg("-c").arg(&self.conf).args(extra);
        cmd.current_dir(self.tmp.path());
        Broker::spawn(cmd)
    }

    /// Starts the broker and waits until it listens; checks it reported its store.
    fn start_with(&self, extra: &[&str]) -> Broker {
        let mut b = self.spawn(extra);
        b.wait_listening();
        let log = b.log();
        assert!(
            log.lines()
                .any(|l| l.contains("store ") && l.contains("culex.redb")),
            "no `store .../culex.redb: ...` line at start; log:\n{log}"
        );
        b
    }

    fn start(&self) -> Broker {
        self.start_with(&[])
    }
}

// --- MQTT helpers (raw packets) ----------------------------------------------------------

/// Receives the next packet with [`TIMEOUT`]. `RawClient::recv` gives up after its own, shorter
/// wait; reading is cancellation-safe (bytes stay in its buffer), so waiting again is fine.
async fn recv(c: &mut RawClient) -> Result<Packet> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match c.recv().await {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() < deadline && format!("{e}").contains("timed out") => {}
            Err(e) => return Err(e),
        }
    }
}

fn connect_packet(protocol: Protocol, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol,
        clean_start,
        keep_alive: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// A persistent-session CONNECT: 3.1.1 clean session 0; 5.0 clean start 0 with a session
/// expiry of `expiry` seconds.
fn persistent_connect_expiry(protocol: Protocol, client_id: &str, expiry: u32) -> Connect {
    let mut c = connect_packet(protocol, client_id, false);
    if protocol.is_v5() {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c
}

/// A persistent-session CONNECT with a session expiry of one hour (5.0).
fn persistent_connect(protocol: Protocol, client_id: &str) -> Connect {
    persistent_connect_expiry(protocol, client_id, 3600)
}

/// Connects with `connect` and insists the CONNACK accepts it.
async fn connect_ok(addr: SocketAddr, connect: Connect) -> Result<(RawClient, ConnAck)> {
    let mut c = RawClient::connect(addr, connect.protocol).await?;
    c.send(&Packet::Connect(Box::new(connect))).await?;
    match recv(&mut c).await? {
        Packet::ConnAck(ack) => {
            ensure!(
                ack.reason_code.as_u8() == 0,
                "CONNECT refused: {:?}",
                ack.reason_code
            );
            Ok((c, ack))
        }
        other => bail!("expected CONNACK, got {other:?}"),
    }
}

/// A clean-session client after a successful CONNACK.
async fn connect_clean(addr: SocketAddr, protocol: Protocol, client_id: &str) -> Result<RawClient> {
    Ok(connect_ok(addr, connect_packet(protocol, client_id, true))
        .await?
        .0)
}

/// Sends one SUBSCRIBE and waits for its SUBACK; checks every filter was granted its QoS. Any
/// PUBLISH before the SUBACK is an error.
async fn subscribe(c: &mut RawClient, packet_id: u16, filters: &[(&str, QoS)]) -> Result<()> {
    let sub = Subscribe {
        packet_id,
        filters: filters
            .iter()
            .map(|(f, qos)| SubscribeFilter {
                filter: (*f).to_owned(),
                options: SubscriptionOptions {
                    qos: *qos,
                    ..SubscriptionOptions::default()
                },
            })
            .collect(),
        properties: Properties::default(),
    };
    c.send(&Packet::Subscribe(sub)).await?;
    match recv(c).await? {
        Packet::SubAck(ack) => {
            ensure!(ack.packet_id == packet_id, "SUBACK id {}", ack.packet_id);
            let granted: Vec<u8> = ack.reason_codes.iter().map(|r| r.as_u8()).collect();
            let wanted: Vec<u8> = filters.iter().map(|(_, q)| q.as_u8()).collect();
            ensure!(
                granted == wanted,
                "SUBACK granted {granted:?}, asked {wanted:?}"
            );
            Ok(())
        }
        other => bail!("expected SUBACK, got {other:?}"),
    }
}

fn publish_packet(
    topic: &str,
    payload: impl Into<Bytes>,
    qos: QoS,
    retain: bool,
    packet_id: u16,
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: Properties::default(),
        payload: payload.into(),
    }
}

/// Sends `p` and completes its QoS flow (PUBACK, or PUBREC / PUBREL / PUBCOMP) with success
/// codes. When this returns for QoS 1/2, the broker has acknowledged the message.
async fn publish_flow(c: &mut RawClient, p: Publish) -> Result<()> {
    let (qos, id) = (p.qos, p.packet_id.unwrap_or(0));
    c.send(&Packet::Publish(p)).await?;
    match qos {
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce => match recv(c).await? {
            Packet::PubAck(a) if a.packet_id == id && a.reason_code.as_u8() < 0x80 => Ok(()),
            other => bail!("expected PUBACK {id}, got {other:?}"),
        },
        QoS::ExactlyOnce => {
            match recv(c).await? {
                Packet::PubRec(a) if a.packet_id == id && a.reason_code.as_u8() < 0x80 => {}
                other => bail!("expected PUBREC {id}, got {other:?}"),
            }
            c.send(&Packet::PubRel(PubResp::new(id))).await?;
            match recv(c).await? {
                Packet::PubComp(a) if a.packet_id == id && a.reason_code.as_u8() == 0 => Ok(()),
                other => bail!("expected PUBCOMP {id}, got {other:?}"),
            }
        }
    }
}

async fn publish(
    c: &mut RawClient,
    topic: &str,
    payload: impl Into<Bytes>,
    qos: QoS,
    retain: bool,
    packet_id: u16,
) -> Result<()> {
    publish_flow(c, publish_packet(topic, payload, qos, retain, packet_id)).await
}

/// Makes everything the broker changed before durable: a retained QoS 1 message is a store
/// change, and its PUBACK is only sent once it (and, the store committing in order, everything
/// submitted before it) is durable. Used where the change under test (a delivery marked sent, a
/// PUBREC received) has no acknowledgement of its own that a client could wait for.
async fn durable_barrier(c: &mut RawClient, packet_id: u16) -> Result<()> {
    let topic = format!("culex-ptest/barrier/{packet_id}");
    publish(c, &topic, "barrier", QoS::AtLeastOnce, true, packet_id).await
}

/// Receives the next PUBLISH. A PUBREL for an earlier QoS 2 delivery may come first (the
/// broker need not wait for one exchange to finish before sending the next message): it is
/// answered with PUBCOMP.
async fn recv_publish(c: &mut RawClient) -> Result<Publish> {
    loop {
        match recv(c).await? {
            Packet::Publish(p) => return Ok(p),
            Packet::PubRel(r) => c.send(&Packet::PubComp(PubResp::new(r.packet_id))).await?,
            other => bail!("expected PUBLISH, got {other:?}"),
        }
    }
}

/// Acknowledges a received PUBLISH: PUBACK, or for QoS 2 PUBREC (the broker's PUBREL is
/// answered by [`recv_publish`] or [`expect_silence`]).
async fn ack_publish(c: &mut RawClient, p: &Publish) -> Result<()> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, _) => Ok(()),
        (QoS::AtLeastOnce, Some(id)) => c.send(&Packet::PubAck(PubResp::new(id))).await,
        (QoS::ExactlyOnce, Some(id)) => c.send(&Packet::PubRec(PubResp::new(id))).await,
        (_, None) => bail!("QoS > 0 PUBLISH without packet id: {p:?}"),
    }
}

async fn recv_publish_ack(c: &mut RawClient) -> Result<Publish> {
    let p = recv_publish(c).await?;
    ack_publish(c, &p).await?;
    Ok(p)
}

/// Receives (and acknowledges) every PUBLISH up to and including the first one on `marker`.
async fn collect_until(c: &mut RawClient, marker: &str) -> Result<Vec<Publish>> {
    let mut got = Vec::new();
    loop {
        let p = recv_publish_ack(c).await?;
        let done = p.topic == marker;
        got.push(p);
        if done {
            return Ok(got);
        }
    }
}

/// Checks no PUBLISH (or anything else) arrives within [`QUIET`]; PUBRELs of earlier QoS 2
/// deliveries are answered with PUBCOMP.
async fn expect_silence(c: &mut RawClient) -> Result<()> {
    let until = tokio::time::Instant::now() + QUIET;
    loop {
        match tokio::time::timeout_at(until, c.recv()).await {
            Err(_) => return Ok(()),
            Ok(Ok(Packet::PubRel(r))) => {
                c.send(&Packet::PubComp(PubResp::new(r.packet_id))).await?;
            }
            Ok(Ok(p)) => bail!("expected silence, got {p:?}"),
            Ok(Err(e)) => return Err(e.context("expected silence")),
        }
    }
}

fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Sends a normal DISCONNECT and waits for the server to close the socket.
async fn disconnect(mut c: RawClient) -> Result<()> {
    c.send(&Packet::Disconnect(culex_proto::Disconnect::new(
        ReasonCode::NormalDisconnection,
    )))
    .await?;
    let rest = c.expect_closed().await?;
    ensure!(rest.is_empty(), "packets after DISCONNECT: {rest:?}");
    Ok(())
}

/// Publishes a non-retained QoS 1 `marker` from a fresh clean client (and disconnects it).
async fn publish_marker(addr: SocketAddr, protocol: Protocol, marker: &str) -> Result<()> {
    let mut c = connect_clean(addr, protocol, "ptest-marker").await?;
    publish(&mut c, marker, "marker", QoS::AtLeastOnce, false, 1).await?;
    disconnect(c).await
}

/// How the broker is stopped before a restart.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGTERM, clean shutdown.
    Term,
    /// SIGKILL: a crash.
    Kill,
}

fn stop(broker: Broker, how: Stop) {
    match how {
        Stop::Term => broker.term(),
        Stop::Kill => broker.kill9(),
    }
}

// --- 1. Retained messages ------------------------------------------------------------------

/// 5.0 properties a retained message must keep across a restart.
fn rich_properties() -> Properties {
    Properties::from(culex_proto::PropertyValues {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("text/plain; charset=utf-8".to_owned()),
        response_topic: Some("ret/replies".to_owned()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("origin".to_owned(), "sensor-7".to_owned()),
            ("unit".to_owned(), "celsius".to_owned()),
            ("origin".to_owned(), "second value, same key".to_owned()),
        ],
        ..Default::default()
    })
}

/// Subscribes a new clean client to `ret/#` and checks exactly the retained messages
/// `ret/q0`, `ret/q1` and `ret/q2` arrive (with the retain flag and their properties), and not
/// the cleared `ret/cleared`.
async fn check_retained(addr: SocketAddr, protocol: Protocol) -> Result<()> {
    let mut sub = connect_clean(addr, protocol, "ret-sub").await?;
    subscribe(&mut sub, 1, &[("ret/#", QoS::ExactlyOnce)]).await?;
    // Retained messages are sent right after the SUBACK, so before this later message.
    publish_marker(addr, protocol, "ret/marker").await?;
    let mut got = collect_until(&mut sub, "ret/marker").await?;
    let marker = got.pop().expect("marker");
    ensure!(!marker.retain, "the marker is not retained: {marker:?}");
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let summary: Vec<(String, String, QoS, bool)> = got
        .iter()
        .map(|p| (p.topic.clone(), text(p), p.qos, p.retain))
        .collect();
    ensure!(
        summary
            == vec![
                ("ret/q0".into(), "zero".into(), QoS::AtMostOnce, true),
                ("ret/q1".into(), "one".into(), QoS::AtLeastOnce, true),
                ("ret/q2".into(), "two".into(), QoS::ExactlyOnce, true),
            ],
        "retained messages after restart: {summary:?} (full: {got:?})"
    );
    if protocol.is_v5() {
        let want = rich_properties();
        for p in &got {
            let have = &p.properties;
            ensure!(
                have.payload_format_indicator == want.payload_format_indicator
                    && have.content_type == want.content_type
                    && have.response_topic == want.response_topic
                    && have.correlation_data == want.correlation_data
                    && have.user_properties == want.user_properties,
                "properties of {} changed: {have:?}",
                p.topic
            );
            // [MQTT-3.3.2-6] the expiry is what is left of it, so at most what was sent.
            ensure!(
                matches!(have.message_expiry_interval, Some(s) if s > 3000 && s <= 3600),
                "message expiry of {}: {:?}",
                p.topic,
                have.message_expiry_interval
            );
        }
    }
    expect_silence(&mut sub).await?;
    disconnect(sub).await
}

async fn retained_messages_survive_restarts(protocol: Protocol) -> Result<()> {
    let setup = Setup::new(None, "");
    let broker = setup.start();
    let addr = broker.addr();
    let mut publisher = connect_clean(addr, protocol, "ret-pub").await?;
    let props = if protocol.is_v5() {
        rich_properties()
    } else {
        Properties::default()
    };
    let retained = |topic: &str, payload: &'static str, qos: QoS, id: u16| {
        let mut p = publish_packet(topic, payload, qos, true, id);
        p.properties = props.clone();
        p
    };
    publish_flow(
        &mut publisher,
        retained("ret/q0", "zero", QoS::AtMostOnce, 0),
    )
    .await?;
    publish_flow(
        &mut publisher,
        retained("ret/q1", "one", QoS::AtLeastOnce, 1),
    )
    .await?;
    publish_flow(
        &mut publisher,
        retained("ret/q2", "two", QoS::ExactlyOnce, 2),
    )
    .await?;
    publish_flow(
        &mut publisher,
        retained("ret/cleared", "soon gone", QoS::AtLeastOnce, 3),
    )
    .await?;
    // An empty retained payload clears the topic's retained message.
    publish(&mut publisher, "ret/cleared", "", QoS::AtLeastOnce, true, 4).await?;
    disconnect(publisher).await?;
    check_retained(addr, protocol)
        .await
        .context("before any restart")?;

    broker.term();
    let broker = setup.start();
    check_retained(broker.addr(), protocol)
        .await
        .context("after SIGTERM and restart")?;

    // What was recovered stays on disk: a crash now loses none of it.
    broker.kill9();
    let broker = setup.start();
    check_retained(broker.addr(), protocol)
        .await
        .context("after a second restart, this time after kill -9")?;
    broker.term();
    Ok(())
}

#[tokio::test]
async fn retained_messages_survive_restarts_v311() -> Result<()> {
    retained_messages_survive_restarts(Protocol::V311).await
}

#[tokio::test]
async fn retained_messages_and_properties_survive_restarts_v5() -> Result<()> {
    retained_messages_survive_restarts(Protocol::V5).await
}

// --- 2 and 3. Offline persistent sessions across SIGTERM and kill -9 -----------------------

/// A persistent subscriber (QoS 1 and QoS 2 filters) goes offline; a publisher sends QoS 1 and
/// QoS 2 messages (one by one, then a pipelined burst of QoS 1) and a retained message, each
/// acknowledged; the broker is stopped (`how`) right after the last acknowledgement and
/// restarted; the subscriber gets everything in order, its subscriptions still work.
async fn offline_session_survives(protocol: Protocol, sync: Option<&str>, how: Stop) -> Result<()> {
    let setup = Setup::new(sync, "");
    let broker = setup.start();
    let addr = broker.addr();

    let (mut sub, ack) = connect_ok(addr, persistent_connect(protocol, "off-sub")).await?;
    ensure!(!ack.session_present, "new session reported present");
    subscribe(
        &mut sub,
        1,
        &[
            ("off/q1/#", QoS::AtLeastOnce),
            ("off/q2/#", QoS::ExactlyOnce),
        ],
    )
    .await?;
    disconnect(sub).await?;

    let mut publisher = connect_clean(addr, protocol, "off-pub").await?;
    let mut expected: Vec<(String, String, QoS)> = Vec::new();
    let mut id: u16 = 0;
    for i in 0..6 {
        id += 1;
        let (topic, qos) = if i % 2 == 0 {
            (format!("off/q1/{i}"), QoS::AtLeastOnce)
        } else {
            (format!("off/q2/{i}"), QoS::ExactlyOnce)
        };
        let payload = format!("message {i} at QoS {}", qos.as_u8());
        publish(&mut publisher, &topic, payload.clone(), qos, false, id).await?;
        expected.push((topic, payload, qos));
    }
    // A pipelined burst: the PUBACKs come back in order, each once its message is durable.
    let first_burst_id = id + 1;
    for i in 6..26 {
        id += 1;
        let topic = format!("off/q1/burst/{i}");
        let payload = format!("burst {i}");
        publisher
            .send(&Packet::Publish(publish_packet(
                &topic,
                payload.clone(),
                QoS::AtLeastOnce,
                false,
                id,
            )))
            .await?;
        expected.push((topic, payload, QoS::AtLeastOnce));
    }
    for want in first_burst_id..=id {
        match recv(&mut publisher).await? {
            Packet::PubAck(a) if a.packet_id == want && a.reason_code.as_u8() < 0x80 => {}
            other => bail!("expected PUBACK {want} (acks in order), got {other:?}"),
        }
    }
    // Last, a retained message nobody is subscribed to; the stop follows its PUBACK at once.
    publish(
        &mut publisher,
        "off/retained",
        "kept",
        QoS::AtLeastOnce,
        true,
        id + 1,
    )
    .await?;
    stop(broker, how);
    drop(publisher);

    let broker = setup.start();
    let addr = broker.addr();
    let (mut sub, ack) = connect_ok(addr, persistent_connect(protocol, "off-sub")).await?;
    ensure!(
        ack.session_present,
        "persistent session lost across the restart ({how:?})"
    );
    // The subscriber's connection closes its socket before the router hears of the DISCONNECT,
    // so the first messages may have been sent to the closing connection (in flight, then
    // redelivered with DUP). Those come first; no message after a first delivery has DUP.
    let mut first_delivery_seen = false;
    for (n, (topic, payload, qos)) in expected.iter().enumerate() {
        let p = recv_publish(&mut sub)
            .await
            .with_context(|| format!("waiting for queued message #{n} {topic:?}"))?;
        ensure!(
            (&p.topic, &text(&p), p.qos) == (topic, payload, *qos),
            "queued message #{n}: expected {topic} {payload:?} QoS {qos:?}, got {p:?}"
        );
        ensure!(
            !(p.dup && first_delivery_seen),
            "message #{n} has DUP after a message without it (only messages in flight before \
             the stop may be redeliveries): {p:?}"
        );
        first_delivery_seen |= !p.dup;
        ensure!(!p.retain, "message #{n} has the retain flag: {p:?}");
        ack_publish(&mut sub, &p).await?;
    }
    // The subscriptions were restored: new messages arrive too.
    let mut publisher = connect_clean(addr, protocol, "off-pub").await?;
    publish(
        &mut publisher,
        "off/q2/after",
        "after",
        QoS::ExactlyOnce,
        false,
        1,
    )
    .await?;
    publish(
        &mut publisher,
        "off/q1/after",
        "after",
        QoS::AtLeastOnce,
        false,
        2,
    )
    .await?;
    let a = recv_publish_ack(&mut sub).await?;
    let b = recv_publish_ack(&mut sub).await?;
    ensure!(
        (a.topic.as_str(), a.qos, b.topic.as_str(), b.qos)
            == (
                "off/q2/after",
                QoS::ExactlyOnce,
                "off/q1/after",
                QoS::AtLeastOnce
            ),
        "after the restart: {a:?} then {b:?}"
    );
    expect_silence(&mut sub).await?;

    // The retained message acknowledged just before the stop is there.
    let mut probe = connect_clean(addr, protocol, "off-probe").await?;
    subscribe(&mut probe, 1, &[("off/retained", QoS::AtLeastOnce)]).await?;
    let r = recv_publish_ack(&mut probe).await?;
    ensure!(
        (r.topic.as_str(), text(&r).as_str(), r.retain) == ("off/retained", "kept", true),
        "retained message after the restart: {r:?}"
    );
    disconnect(probe).await?;
    disconnect(sub).await?;
    disconnect(publisher).await?;
    broker.term();
    Ok(())
}

#[tokio::test]
async fn offline_session_survives_sigterm_v311() -> Result<()> {
    offline_session_survives(Protocol::V311, None, Stop::Term).await
}

#[tokio::test]
async fn offline_session_survives_sigterm_v5() -> Result<()> {
    offline_session_survives(Protocol::V5, None, Stop::Term).await
}

#[tokio::test]
async fn offline_session_survives_kill9_batched_v311() -> Result<()> {
    offline_session_survives(Protocol::V311, None, Stop::Kill).await
}

#[tokio::test]
async fn offline_session_survives_kill9_batched_v5() -> Result<()> {
    offline_session_survives(Protocol::V5, None, Stop::Kill).await
}

#[tokio::test]
async fn offline_session_survives_kill9_sync_always_v311() -> Result<()> {
    offline_session_survives(Protocol::V311, Some("always"), Stop::Kill).await
}

#[tokio::test]
async fn offline_session_survives_kill9_sync_always_v5() -> Result<()> {
    offline_session_survives(Protocol::V5, Some("always"), Stop::Kill).await
}

#[tokio::test]
async fn offline_session_survives_sigterm_sync_never_v5() -> Result<()> {
    // `never` may lose the last moments in a crash, but a clean shutdown loses nothing.
    offline_session_survives(Protocol::V5, Some("never"), Stop::Term).await
}

// --- 4. Unacknowledged in-flight delivery ----------------------------------------------------

async fn inflight_redelivered_with_dup(protocol: Protocol) -> Result<()> {
    let setup = Setup::new(None, "");
    let broker = setup.start();
    let addr = broker.addr();
    let (mut sub, _) = connect_ok(addr, persistent_connect(protocol, "inf-sub")).await?;
    subscribe(&mut sub, 1, &[("inf/#", QoS::AtLeastOnce)]).await?;

    let mut publisher = connect_clean(addr, protocol, "inf-pub").await?;
    publish(
        &mut publisher,
        "inf/a",
        "unacked",
        QoS::AtLeastOnce,
        false,
        1,
    )
    .await?;
    let first = recv_publish(&mut sub).await?;
    ensure!(
        (first.topic.as_str(), first.qos, first.dup) == ("inf/a", QoS::AtLeastOnce, false),
        "first delivery: {first:?}"
    );
    let packet_id = first.packet_id.context("QoS 1 without packet id")?;
    // No PUBACK from the subscriber. Let the "sent" state reach the disk, then crash.
    durable_barrier(&mut publisher, 2).await?;
    broker.kill9();
    drop((sub, publisher));

    let broker = setup.start();
    let addr = broker.addr();
    let (mut sub, ack) = connect_ok(addr, persistent_connect(protocol, "inf-sub")).await?;
    ensure!(ack.session_present, "persistent session lost in the crash");
    let again = recv_publish(&mut sub).await?;
    // [MQTT-4.4.0-1] resent with the original packet id; [MQTT-3.3.1-1] DUP = 1.
    ensure!(
        (
            again.topic.as_str(),
            text(&again).as_str(),
            again.qos,
            again.packet_id
        ) == ("inf/a", "unacked", QoS::AtLeastOnce, Some(packet_id)),
        "redelivery after the crash: {again:?} (first delivery had packet id {packet_id})"
    );
    ensure!(
        again.dup,
        "redelivery after the crash without DUP: {again:?}"
    );
    ack_publish(&mut sub, &again).await?;
    publish_marker(addr, protocol, "inf/marker").await?;
    let m = recv_publish_ack(&mut sub).await?;
    ensure!(m.topic == "inf/marker", "expected the marker, got {m:?}");
    expect_silence(&mut sub).await?;
    disconnect(sub).await?;
    broker.term();
    Ok(())
}

#[tokio::test]
async fn unacknowledged_delivery_redelivered_with_dup_after_kill9_v311() -> Result<()> {
    inflight_redelivered_with_dup(Protocol::V311).await
}

#[tokio::test]
async fn unacknowledged_delivery_redelivered_with_dup_after_kill9_v5() -> Result<()> {
    inflight_redelivered_with_dup(Protocol::V5).await
}

// --- 5. QoS 2 exactly once across a crash ----------------------------------------------------

/// Incoming side: PUBLISH QoS 2 → PUBREC → crash → restart → the client resends the PUBLISH
/// with DUP → PUBREC → PUBREL → PUBCOMP; subscribers get the message exactly once.
async fn qos2_incoming_exactly_once_across_crash(
    protocol: Protocol,
    sync: Option<&str>,
) -> Result<()> {
    let setup = Setup::new(sync, "");
    let broker = setup.start();
    let addr = broker.addr();
    // Two persistent subscribers: "late" reconnects after the whole exchange, "early" right
    // after the restart, before the publisher's retransmission.
    for id in ["x2-late", "x2-early"] {
        let (mut s, _) = connect_ok(addr, persistent_connect(protocol, id)).await?;
        subscribe(&mut s, 1, &[("x2/#", QoS::ExactlyOnce)]).await?;
        disconnect(s).await?;
    }
    let (mut publisher, _) = connect_ok(addr, persistent_connect(protocol, "x2-pub")).await?;
    let original = publish_packet("x2/once", "exactly once", QoS::ExactlyOnce, false, 7);
    publisher.send(&Packet::Publish(original.clone())).await?;
    match recv(&mut publisher).await? {
        Packet::PubRec(r) if r.packet_id == 7 && r.reason_code.as_u8() < 0x80 => {}
        other => bail!("expected PUBREC 7, got {other:?}"),
    }
    broker.kill9();
    drop(publisher);

    let broker = setup.start();
    let addr = broker.addr();
    let (mut early, ack) = connect_ok(addr, persistent_connect(protocol, "x2-early")).await?;
    ensure!(ack.session_present, "x2-early: session lost in the crash");

    let (mut publisher, ack) = connect_ok(addr, persistent_connect(protocol, "x2-pub")).await?;
    ensure!(ack.session_present, "x2-pub: session lost in the crash");
    // [MQTT-4.3.3-*] the sender retransmits the unacknowledged PUBLISH with DUP = 1, same id.
    let mut again = original;
    again.dup = true;
    publisher.send(&Packet::Publish(again)).await?;
    match recv(&mut publisher).await? {
        Packet::PubRec(r) if r.packet_id == 7 && r.reason_code.as_u8() < 0x80 => {}
        other => bail!("expected PUBREC 7 for the retransmission, got {other:?}"),
    }
    publisher.send(&Packet::PubRel(PubResp::new(7))).await?;
    match recv(&mut publisher).await? {
        // A PUBCOMP "packet identifier not found" (0x92) would mean the broker forgot the id.
        Packet::PubComp(c) if c.packet_id == 7 && c.reason_code.as_u8() == 0 => {}
        other => bail!("expected PUBCOMP 7 (success), got {other:?}"),
    }
    publish(
        &mut publisher,
        "x2/marker",
        "marker",
        QoS::AtLeastOnce,
        false,
        8,
    )
    .await?;
    disconnect(publisher).await?;

    let got = collect_until(&mut early, "x2/marker").await?;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    ensure!(
        topics == ["x2/once", "x2/marker"],
        "x2-early (online after the restart) got {topics:?}: {got:?}"
    );
    expect_silence(&mut early).await?;
    disconnect(early).await?;

    let (mut late, ack) = connect_ok(addr, persistent_connect(protocol, "x2-late")).await?;
    ensure!(ack.session_present, "x2-late: session lost in the crash");
    let got = collect_until(&mut late, "x2/marker").await?;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    ensure!(
        topics == ["x2/once", "x2/marker"],
        "x2-late (offline throughout) got {topics:?}: {got:?}"
    );
    ensure!(text(&got[0]) == "exactly once", "payload: {:?}", got[0]);
    expect_silence(&mut late).await?;
    disconnect(late).await?;
    broker.term();
    Ok(())
}

#[tokio::test]
async fn qos2_incoming_exactly_once_across_kill9_v311() -> Result<()> {
    qos2_incoming_exactly_once_across_crash(Protocol::V311, None).await
}

#[tokio::test]
async fn qos2_incoming_exactly_once_across_kill9_v5() -> Result<()> {
    qos2_incoming_exactly_once_across_crash(Protocol::V5, None).await
}

#[tokio::test]
async fn qos2_incoming_exactly_once_across_kill9_sync_always_v5() -> Result<()> {
    qos2_incoming_exactly_once_across_crash(Protocol::V5, Some("always")).await
}

/// The publisher's connection drops after PUBREC; it reconnects (session present) and drops
/// again (`crash`: the broker is killed instead, once everything up to the reconnection is
/// durable); it reconnects and retransmits the PUBLISH with DUP: the message must still be
/// delivered once, and PUBREL answered with a successful PUBCOMP. The packet id awaiting PUBREL
/// belongs to the session until PUBREL, however many connections and restarts that takes.
async fn qos2_retransmission_after_reconnects(protocol: Protocol, crash: bool) -> Result<()> {
    let setup = Setup::new(None, "");
    let mut broker = setup.start();
    let addr = broker.addr();
    let (mut s, _) = connect_ok(addr, persistent_connect(protocol, "rr-sub")).await?;
    subscribe(&mut s, 1, &[("rr/#", QoS::ExactlyOnce)]).await?;
    disconnect(s).await?;

    let (mut conn1, _) = connect_ok(addr, persistent_connect(protocol, "rr-pub")).await?;
    let original = publish_packet("rr/once", "exactly once", QoS::ExactlyOnce, false, 9);
    conn1.send(&Packet::Publish(original.clone())).await?;
    match recv(&mut conn1).await? {
        Packet::PubRec(r) if r.packet_id == 9 && r.reason_code.as_u8() < 0x80 => {}
        other => bail!("expected PUBREC 9, got {other:?}"),
    }
    drop(conn1); // the network fails: no DISCONNECT, no PUBREL
    let (conn2, ack) = connect_ok(addr, persistent_connect(protocol, "rr-pub")).await?;
    ensure!(
        ack.session_present,
        "rr-pub: session not present on reconnect"
    );
    drop(conn2); // and fails again before the client could retransmit
    if crash {
        let mut other = connect_clean(addr, protocol, "rr-barrier").await?;
        durable_barrier(&mut other, 1).await?;
        broker.kill9();
        broker = setup.start();
    }
    let addr = broker.addr();
    let (mut conn3, ack) = connect_ok(addr, persistent_connect(protocol, "rr-pub")).await?;
    ensure!(
        ack.session_present,
        "rr-pub: session not present on the last reconnect"
    );
    let mut again = original;
    again.dup = true;
    conn3.send(&Packet::Publish(again)).await?;
    match recv(&mut conn3).await? {
        Packet::PubRec(r) if r.packet_id == 9 && r.reason_code.as_u8() < 0x80 => {}
        other => bail!("expected PUBREC 9 for the retransmission, got {other:?}"),
    }
    conn3.send(&Packet::PubRel(PubResp::new(9))).await?;
    let comp = match recv(&mut conn3).await? {
        Packet::PubComp(c) if c.packet_id == 9 => c,
        other => bail!("expected PUBCOMP 9, got {other:?}"),
    };
    publish(
        &mut conn3,
        "rr/marker",
        "marker",
        QoS::AtLeastOnce,
        false,
        10,
    )
    .await?;
    disconnect(conn3).await?;

    let (mut sub, ack) = connect_ok(addr, persistent_connect(protocol, "rr-sub")).await?;
    ensure!(ack.session_present, "rr-sub: session lost");
    let got = collect_until(&mut sub, "rr/marker").await?;
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    ensure!(
        topics == ["rr/once", "rr/marker"],
        "the QoS 2 message must arrive exactly once; got {topics:?} (PUBCOMP reason {:?})",
        comp.reason_code
    );
    ensure!(
        comp.reason_code.as_u8() == 0,
        "PUBCOMP for the retransmitted message: {:?} (the broker forgot the packet id)",
        comp.reason_code
    );
    expect_silence(&mut sub).await?;
    disconnect(sub).await?;
    broker.term();
    Ok(())
}

#[tokio::test]
async fn qos2_retransmission_after_two_reconnects_delivered_once_v311() -> Result<()> {
    qos2_retransmission_after_reconnects(Protocol::V311, false).await
}

#[tokio::test]
async fn qos2_retransmission_after_two_reconnects_delivered_once_v5() -> Result<()> {
    qos2_retransmission_after_reconnects(Protocol::V5, false).await
}

#[tokio::test]
async fn qos2_retransmission_after_reconnect_and_kill9_delivered_once_v311() -> Result<()> {
    qos2_retransmission_after_reconnects(Protocol::V311, true).await
}

#[tokio::test]
async fn qos2_retransmission_after_reconnect_and_kill9_delivered_once_v5() -> Result<()> {
    qos2_retransmission_after_reconnects(Protocol::V5, true).await
}

/// Outgoing side: the subscriber got PUBLISH QoS 2, sent PUBREC and got PUBREL, then the broker
/// crashes; after the restart the broker resends PUBREL, not the PUBLISH.
async fn qos2_outgoing_pubrel_resent_after_crash(protocol: Protocol) -> Result<()> {
    let setup = Setup::new(None, "");
    let broker = setup.start();
    let addr = broker.addr();
    let (mut sub, _) = connect_ok(addr, persistent_connect(protocol, "x2o-sub")).await?;
    subscribe(&mut sub, 1, &[("x2o/#", QoS::ExactlyOnce)]).await?;
    let mut publisher = connect_clean(addr, protocol, "x2o-pub").await?;
    publish(
        &mut publisher,
        "x2o/msg",
        "once",
        QoS::ExactlyOnce,
        false,
        1,
    )
    .await?;

    let p = recv_publish(&mut sub).await?;
    ensure!(
        (p.topic.as_str(), p.qos) == ("x2o/msg", QoS::ExactlyOnce),
        "delivery: {p:?}"
    );
    let id = p.packet_id.context("QoS 2 without packet id")?;
    sub.send(&Packet::PubRec(PubResp::new(id))).await?;
    match recv(&mut sub).await? {
        Packet::PubRel(r) if r.packet_id == id => {}
        other => bail!("expected PUBREL {id}, got {other:?}"),
    }
    // No PUBCOMP. Let the "PUBREC received" state reach the disk, then crash.
    durable_barrier(&mut publisher, 2).await?;
    broker.kill9();
    drop((sub, publisher));

    let broker = setup.start();
    let addr = broker.addr();
    let (mut sub, ack) = connect_ok(addr, persistent_connect(protocol, "x2o-sub")).await?;
    ensure!(ack.session_present, "persistent session lost in the crash");
    // [MQTT-4.4.0-1] on reconnect the broker resends unacknowledged PUBREL packets.
    match recv(&mut sub).await? {
        Packet::PubRel(r) if r.packet_id == id => {}
        other => {
            bail!("expected PUBREL {id} after the restart (not the PUBLISH again), got {other:?}")
        }
    }
    sub.send(&Packet::PubComp(PubResp::new(id))).await?;
    publish_marker(addr, protocol, "x2o/marker").await?;
    let m = recv_publish_ack(&mut sub).await?;
    ensure!(
        m.topic == "x2o/marker",
        "expected only the marker after PUBCOMP, got {m:?}"
    );
    expect_silence(&mut sub).await?;
    disconnect(sub).await?;
    broker.term();
    Ok(())
}

#[tokio::test]
async fn qos2_outgoing_pubrel_resent_after_kill9_v311() -> Result<()> {
    qos2_outgoing_pubrel_resent_after_crash(Protocol::V311).await
}

#[tokio::test]
async fn qos2_outgoing_pubrel_resent_after_kill9_v5() -> Result<()> {
    qos2_outgoing_pubrel_resent_after_crash(Protocol::V5).await
}

// --- 6. Session expiry ---------------------------------------------------------------------

/// Waits until `at`, however long the test has taken so far.
fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        thread::sleep(at - now);
    }
}

#[tokio::test]
async fn expired_v5_session_is_dropped_at_load() -> Result<()> {
    let setup = Setup::new(None, "");
    let broker = setup.start();
    let addr = broker.addr();
    let (mut short, _) = connect_ok(
        addr,
        persistent_connect_expiry(Protocol::V5, "exp-short", 2),
    )
    .await?;
    subscribe(&mut short, 1, &[("exp/#", QoS::AtLeastOnce)]).await?;
    disconnect(short).await?;
    let disconnected = Instant::now();
    // A control: a session with a long expiry is still there after the restart.
    let (mut long, _) = connect_ok(addr, persistent_connect(Protocol::V5, "exp-long")).await?;
    subscribe(&mut long, 1, &[("exp/#", QoS::AtLeastOnce)]).await?;
    disconnect(long).await?;
    broker.term();

    sleep_until(disconnected + Duration::from_millis(3500));
    let mut broker = setup.start();
    let addr = broker.addr();
    let store_line = broker
        .log()
        .lines()
        .find(|l| l.contains("store ") && l.contains("culex.redb"))
        .map(str::to_owned)
        .unwrap_or_default();
    let (c, ack) = connect_ok(
        addr,
        persistent_connect_expiry(Protocol::V5, "exp-short", 2),
    )
    .await?;
    ensure!(
        !ack.session_present,
        "session with expiry 2 s still present after 3.5 s offline; store line: {store_line}"
    );
    disconnect(c).await?;
    let (c, ack) = connect_ok(addr, persistent_connect(Protocol::V5, "exp-long")).await?;
    ensure!(ack.session_present, "session with expiry 3600 s lost");
    disconnect(c).await?;
    ensure!(
        store_line.contains("1 expired sessions"),
        "the start-up report should count the expired session: {store_line:?}"
    );
    broker.signal("TERM");
    let (status, log) = broker.expect_exit();
    ensure!(status.success(), "exit {status:?}; log:\n{log}");
    Ok(())
}

/// `persistent_client_expiration` (3.1.1 sessions never expire by themselves) also removes a
/// stale session at load.
#[tokio::test]
async fn persistent_client_expiration_drops_stale_v311_session_at_load() -> Result<()> {
    let setup = Setup::new(None, "persistent_client_expiration 2s\n");
    let broker = setup.start();
    let addr = broker.addr();
    let (mut c, _) = connect_ok(addr, persistent_connect(Protocol::V311, "pce-sub")).await?;
    subscribe(&mut c, 1, &[("pce/#", QoS::AtLeastOnce)]).await?;
    disconnect(c).await?;
    let disconnected = Instant::now();
    broker.term();

    sleep_until(disconnected + Duration::from_millis(3500));
    let broker = setup.start();
    let log = broker.log();
    let (c, ack) = connect_ok(broker.addr(), persistent_connect(Protocol::V311, "pce-sub")).await?;
    ensure!(
        !ack.session_present,
        "3.1.1 session still present 3.5 s after disconnect with persistent_client_expiration 2s; \
         log:\n{log}"
    );
    disconnect(c).await?;
    broker.term();
    Ok(())
}

// --- 7. One process per data directory -------------------------------------------------------

#[tokio::test]
async fn second_process_on_the_same_data_dir_is_refused() -> Result<()> {
    let setup = Setup::new(None, "");
    let first = setup.start();
    let mut second = setup.spawn(&[]);
    let (status, log) = second.expect_exit();
    ensure!(
        !status.success(),
        "a second broker started on a store in use; log:\n{log}"
    );
    let dir = setup.data.to_str().expect("UTF-8 path");
    ensure!(
        log.contains(dir),
        "the error should name the data directory {dir}; log:\n{log}"
    );
    let lower = log.to_lowercase();
    ensure!(
        lower.contains("in use") || lower.contains("lock"),
        "the error should say the store is in use / locked; log:\n{log}"
    );
    // The first broker is unaffected.
    let c = connect_clean(first.addr(), Protocol::V5, "still-here").await?;
    disconnect(c).await?;
    first.term();
    Ok(())
}

// --- 8. Corrupt store, --reset-store ---------------------------------------------------------

/// Writes a retained message and stops cleanly, so the data directory holds a real store.
async fn make_store(setup: &Setup) -> Result<()> {
    let broker = setup.start();
    let mut c = connect_clean(broker.addr(), Protocol::V311, "mk").await?;
    publish(&mut c, "bad/x", "old", QoS::AtLeastOnce, true, 1).await?;
    disconnect(c).await?;
    broker.term();
    ensure!(
        setup.db().is_file(),
        "no {} after a clean stop",
        setup.db().display()
    );
    Ok(())
}

/// The damaged store is refused with a clear message; `--reset-store` moves it aside (the
/// `culex.redb.bad-*` file holds exactly `damaged`) and starts empty.
async fn damaged_store_refused_then_reset(setup: &Setup, damaged: &[u8]) -> Result<()> {
    let mut refused = setup.spawn(&[]);
    let (status, log) = refused.expect_exit();
    ensure!(
        !status.success(),
        "the broker started on a damaged store; log:\n{log}"
    );
    ensure!(
        log.contains("--reset-store"),
        "the error should mention --reset-store; log:\n{log}"
    );
    let db = setup.db();
    let db_path = db.to_str().expect("UTF-8 path");
    ensure!(
        log.contains(db_path),
        "the error should name the store {db_path}; log:\n{log}"
    );
    ensure!(
        fs::read(&db)? == damaged,
        "a refused start must leave the damaged file alone"
    );

    let broker = setup.start_with(&["--reset-store"]);
    let addr = broker.addr();
    let mut sub = connect_clean(addr, Protocol::V311, "after-reset").await?;
    subscribe(&mut sub, 1, &[("bad/#", QoS::AtLeastOnce)]).await?;
    publish_marker(addr, Protocol::V311, "bad/marker").await?;
    let got = collect_until(&mut sub, "bad/marker").await?;
    ensure!(
        got.len() == 1,
        "the reset store should start empty, got {got:?}"
    );
    disconnect(sub).await?;
    broker.term();

    let aside: Vec<PathBuf> = fs::read_dir(&setup.data)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("culex.redb.bad-"))
        })
        .collect();
    ensure!(
        aside.len() == 1,
        "expected one culex.redb.bad-* file in {}, found {aside:?}",
        setup.data.display()
    );
    ensure!(
        fs::read(&aside[0])? == damaged,
        "{} does not hold the damaged store's bytes",
        aside[0].display()
    );
    ensure!(db.is_file(), "no new store after --reset-store");
    Ok(())
}

#[tokio::test]
async fn garbage_store_is_refused_and_reset_store_moves_it_aside() -> Result<()> {
    let setup = Setup::new(None, "");
    make_store(&setup).await?;
    let garbage: Vec<u8> = b"this is not a redb database, just garbage\n"
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect();
    fs::write(setup.db(), &garbage)?;
    damaged_store_refused_then_reset(&setup, &garbage).await
}

#[tokio::test]
async fn truncated_store_is_refused_and_reset_store_moves_it_aside() -> Result<()> {
    let setup = Setup::new(None, "");
    make_store(&setup).await?;
    let mut bytes = fs::read(setup.db())?;
    bytes.truncate(bytes.len() / 2);
    fs::write(setup.db(), &bytes)?;
    damaged_store_refused_then_reset(&setup, &bytes).await
}

// --- 9. `culex -p PORT` persists nothing ----------------------------------------------------

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[tokio::test]
async fn port_only_creates_no_data_dir() -> Result<()> {
    let cwd = TempDir::new()?;
    let mut cmd = culex();
    cmd.args(["-p", "0"]).current_dir(cwd.path());
    let mut broker = Broker::spawn(cmd);
    broker.wait_listening();
    let c = connect_clean(broker.addr(), Protocol::V311, "no-store").await?;
    disconnect(c).await?;
    let log = broker.log();
    broker.term();
    ensure!(
        !cwd.path().join("culex-data").exists(),
        "`culex -p 0` created culex-data"
    );
    ensure!(
        entries(cwd.path()).is_empty(),
        "`culex -p 0` wrote to its working directory: {:?}",
        entries(cwd.path())
    );
    ensure!(
        !log.contains("culex.redb"),
        "`culex -p 0` opened a store; log:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn port_with_data_dir_persists_there() -> Result<()> {
    let cwd = TempDir::new()?;
    let data = cwd.path().join("elsewhere");
    let start = || {
        let mut cmd = culex();
        cmd.args(["-p", "0", "--data-dir"])
            .arg(&data)
            .current_dir(cwd.path());
        let mut b = Broker::spawn(cmd);
        b.wait_listening();
        b
    };
    let broker = start();
    let mut c = connect_clean(broker.addr(), Protocol::V311, "dd-pub").await?;
    publish(&mut c, "dd/x", "kept", QoS::AtLeastOnce, true, 1).await?;
    disconnect(c).await?;
    broker.term();
    ensure!(data.join("culex.redb").is_file(), "no store in --data-dir");
    ensure!(
        !cwd.path().join("culex-data").exists(),
        "--data-dir must replace ./culex-data"
    );

    let broker = start();
    let mut c = connect_clean(broker.addr(), Protocol::V311, "dd-sub").await?;
    subscribe(&mut c, 1, &[("dd/#", QoS::AtLeastOnce)]).await?;
    let r = recv_publish_ack(&mut c).await?;
    ensure!(
        (r.topic.as_str(), text(&r).as_str(), r.retain) == ("dd/x", "kept", true),
        "retained message after restart: {r:?}"
    );
    disconnect(c).await?;
    broker.term();
    Ok(())
}

/// `persistence_file`: two brokers keep separate stores in one `persistence_location` (each
/// file has its own lock; before, the second broker found the directory locked), and each gets
/// back only its own retained message after a restart.
#[tokio::test]
async fn two_brokers_with_different_persistence_files_share_a_directory() -> Result<()> {
    let tmp = TempDir::new()?;
    let data = tmp.path().join("data");
    let conf = |name: &str| -> Result<PathBuf> {
        let path = tmp.path().join(format!("{name}.conf"));
        fs::write(
            &path,
            format!(
                "listener 0 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}\npersistence_file {name}.redb\n",
                data.display()
            ),
        )?;
        Ok(path)
    };
    let start = |conf: &PathBuf| {
        let mut cmd = culex();
        cmd.arg("-c").arg(conf);
        let mut b = Broker::spawn(cmd);
        b.wait_listening();
        b
    };
    let (conf_a, conf_b) = (conf("a")?, conf("b")?);
    let (a, b) = (start(&conf_a), start(&conf_b));
    for (broker, name) in [(&a, "a"), (&b, "b")] {
        let mut c = connect_clean(broker.addr(), Protocol::V311, "pf-pub").await?;
        publish(
            &mut c,
            &format!("pf/{name}"),
            name,
            QoS::AtLeastOnce,
            true,
            1,
        )
        .await?;
        disconnect(c).await?;
    }
    a.term();
    b.term();
    assert!(data.join("a.redb").exists() && data.join("b.redb").exists());
    for (conf, name) in [(&conf_a, "a"), (&conf_b, "b")] {
        let broker = start(conf);
        let mut c = connect_clean(broker.addr(), Protocol::V311, "pf-sub").await?;
        subscribe(&mut c, 1, &[("pf/#", QoS::AtLeastOnce)]).await?;
        let p = recv_publish_ack(&mut c).await?;
        assert_eq!(
            (p.topic.as_str(), text(&p).as_str()),
            (format!("pf/{name}").as_str(), name)
        );
        expect_silence(&mut c).await?;
        broker.term();
    }
    Ok(())
}

// --- A full disk -------------------------------------------------------------------------

/// `GET path` on the metrics listener: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    culex_test_support::http_get(addr, path, TIMEOUT).await
}

/// Sets the file size limit (RLIMIT_FSIZE, soft and hard as they are) of process `pid`.
fn set_fsize(pid: u32, bytes: u64) {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a plain system call on a local struct.
    let rc = unsafe {
        libc::prlimit(
            libc::pid_t::try_from(pid).expect("pid"),
            libc::RLIMIT_FSIZE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The disk fills under QoS 1 load (a file size limit on the broker, as a full disk behaves):
/// the publisher's acknowledgements are held (back-pressure, nothing acknowledged that is not
/// stored), `/readyz` says why it is unready while `/healthz` stays up, and once space
/// returns the held acknowledgements go out and every acknowledged message survives a
/// restart. (`user root`: changing another user's limits needs CAP_SYS_RESOURCE, which test
/// containers often lack.)
#[tokio::test]
async fn a_full_disk_makes_the_broker_unready_and_loses_nothing_acknowledged() -> Result<()> {
    let root = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!("NOTE: not root: cannot raise the broker's file size limit back; skipped");
        return Ok(());
    }
    let setup = Setup::new(Some("always"), "metrics_listener 127.0.0.1:0\nuser root\n");
    let broker = setup.start();
    let addr = broker.addr();
    let metrics: SocketAddr = {
        // Logged before `listening on`, which `start` waited for.
        let log = broker.log();
        let line = log
            .lines()
            .find(|l| l.contains("metrics on "))
            .context("no `metrics on` line")?;
        let at = line.find("metrics on ").expect("needle") + "metrics on ".len();
        line[at..].trim().parse().context("metrics address")?
    };
    let mut c = connect_clean(addr, Protocol::V5, "ptest-full").await?;
    publish(&mut c, "big/0", "before", QoS::AtLeastOnce, true, 1).await?;
    ensure!(
        http_get(metrics, "/readyz").await?.0 == 200,
        "ready at first"
    );

    // The disk is full: the store file may not grow any more.
    let size = fs::metadata(setup.db())?.len();
    set_fsize(broker.pid(), size);
    let big = Bytes::from(vec![b'x'; 256 * 1024]);
    for i in 1..=8u16 {
        let mut p = publish_packet(
            &format!("big/{i}"),
            big.clone(),
            QoS::AtLeastOnce,
            true,
            i + 1,
        );
        p.retain = true;
        c.send(&Packet::Publish(p)).await?;
    }
    // Unready, with the reason; alive.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (code, body) = http_get(metrics, "/readyz").await?;
        if code == 503 {
            ensure!(body.contains("store commits are failing"), "{body}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "/readyz stayed {code} with a full disk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        http_get(metrics, "/healthz").await?.0 == 200,
        "alive while the disk is full"
    );
    let mut acked = Vec::new();
    while let Ok(Ok(p)) = tokio::time::timeout(QUIET, c.recv()).await {
        if let Packet::PubAck(a) = p {
            acked.push(a.packet_id);
        }
    }
    ensure!(
        acked.len() < 8,
        "every PUBACK arrived although the disk is full: {acked:?}"
    );
    ensure!(
        broker.log().contains("store commit failed; retrying"),
        "log:\n{}",
        broker.log()
    );

    // Space returns: the held acknowledgements arrive, the broker is ready again.
    set_fsize(broker.pid(), libc::RLIM_INFINITY);
    while acked.len() < 8 {
        match recv(&mut c).await? {
            Packet::PubAck(a) => acked.push(a.packet_id),
            other => bail!("expected PUBACK, got {other:?}"),
        }
    }
    let deadline = Instant::now() + TIMEOUT;
    while http_get(metrics, "/readyz").await?.0 != 200 {
        ensure!(Instant::now() < deadline, "/readyz did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    disconnect(c).await?;
    broker.term();

    // Everything acknowledged is in the store.
    let broker = setup.start();
    let mut s = connect_clean(broker.addr(), Protocol::V5, "ptest-full-check").await?;
    subscribe(&mut s, 1, &[("big/#", QoS::AtLeastOnce)]).await?;
    let mut topics = Vec::new();
    for _ in 0..9 {
        topics.push(recv_publish_ack(&mut s).await?.topic);
    }
    topics.sort();
    let mut want: Vec<String> = (0..=8).map(|i| format!("big/{i}")).collect();
    want.sort();
    ensure!(topics == want, "retained after the restart: {topics:?}");
    broker.term();
    Ok(())
}
