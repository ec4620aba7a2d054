//! Delivery and security under pressure (issue 19), through the real `culex` binary: a
//! subscriber that stops reading cannot pin more than `max_queued_bytes`, however large the
//! messages, and is disconnected once its socket takes nothing for `slow_client_timeout`;
//! the default configuration bounds it without any option set; and a password-guessing
//! source is made to back off while other clients log in as usual.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use culex_proto::{
    Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use culex_test_support::RawClient;
use tempfile::TempDir;

/// How long anything may take on a busy machine.
const LONG: Duration = Duration::from_secs(60);

/// A `culex` process on a config file; its stderr lines arrive on `lines`. Killed on drop.
struct Broker {
    child: Child,
    lines: Receiver<String>,
    addr: SocketAddr,
}

impl Broker {
    fn start(dir: &TempDir, config: &str) -> Broker {
        let path = dir.path().join("culex.conf");
        // Root in CI: stay root, so that /proc of the process stays readable to the test.
        std::fs::write(&path, format!("listener 0 127.0.0.1\nuser root\n{config}")).unwrap();
        let mut cmd: Command = culex_test_support::culex_command(env!("CARGO_BIN_EXE_culex"));
        let mut child = cmd
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn culex");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut b = Broker {
            child,
            lines,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = b.wait_for("listening on 127.0.0.1:");
        let port: String = line
            .split("listening on 127.0.0.1:")
            .nth(1)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        b.addr.set_port(port.parse().unwrap());
        b
    }

    fn wait_for(&mut self, needle: &str) -> String {
        self.lines_until(needle).pop().expect("the line")
    }

    /// The log lines up to and including the first that contains `needle`.
    fn lines_until(&mut self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + LONG;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!(
                    "no log line with {needle:?}: {e}; before it:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Resident memory of the broker process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kb * 1024
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(
    addr: SocketAddr,
    id: &str,
    user: Option<(&str, &str)>,
) -> Result<(RawClient, ReasonCode)> {
    connect_from(addr, std::net::IpAddr::from([127, 0, 0, 1]), id, user).await
}

async fn connect_from(
    addr: SocketAddr,
    source: std::net::IpAddr,
    id: &str,
    user: Option<(&str, &str)>,
) -> Result<(RawClient, ReasonCode)> {
    let mut c = RawClient::connect_from(addr, source, Protocol::V5).await?;
    c.send(&Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 600,
        client_id: id.into(),
        will: None,
        username: user.map(|(u, _)| u.to_owned()),
        password: user.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
        properties: Properties::default(),
    })))
    .await?;
    match c.recv_within(LONG).await? {
        Some(Packet::ConnAck(a)) => Ok((c, a.reason_code)),
        other => bail!("{id}: expected CONNACK, got {other:?}"),
    }
}

async fn subscribe(c: &mut RawClient, filter: &str, qos: QoS) -> Result<()> {
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: Properties::default(),
    }))
    .await?;
    match c.recv_within(LONG).await? {
        Some(Packet::SubAck(_)) => Ok(()),
        other => bail!("expected SUBACK, got {other:?}"),
    }
}

fn publish(topic: &str, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: None,
        properties: Properties::default(),
        payload,
    })
}

/// A subscriber that never reads, fed 400 messages of 1 MB: the broker holds at most about
/// `max_queued_bytes` for it (64 MiB by default, no option set), not 400 MB, and disconnects
/// it once its socket has taken nothing for `slow_client_timeout`. (Issue 19: RSS went from
/// 13 MB to 1.55 GB.)
async fn stuck_subscriber(config: &str) -> Result<(u64, u64)> {
    let dir = TempDir::new()?;
    let mut broker = Broker::start(&dir, config);
    let before = broker.rss();
    let (mut stuck, _) = connect(broker.addr, "stuck", None).await?;
    subscribe(&mut stuck, "big/#", QoS::AtMostOnce).await?;
    let (mut marker, _) = connect(broker.addr, "marker", None).await?;
    subscribe(&mut marker, "done", QoS::AtMostOnce).await?;
    let (mut publisher, _) = connect(broker.addr, "publisher", None).await?;
    let payload = Bytes::from(vec![0x5a; 1 << 20]);
    let mut peak = 0;
    for i in 0..400 {
        publisher
            .send(&publish("big/x", payload.clone()))
            .await
            .with_context(|| format!("publish {i}"))?;
        if i % 10 == 9 {
            // The router takes one connection's messages in order: once the marker arrives,
            // every message before it was handled. Waiting for it every 10 messages keeps
            // what is in transit small, so the broker's memory is what it holds for `stuck`.
            publisher.send(&publish("done", Bytes::new())).await?;
            match marker.recv_within(LONG).await? {
                Some(Packet::Publish(p)) if p.topic == "done" => {}
                other => bail!("expected the marker, got {other:?}"),
            }
            peak = peak.max(broker.rss());
        }
    }
    // The drops are logged (once per client per 10 s, with the count), then the disconnect.
    let line = broker.wait_for("does not keep up");
    assert!(line.contains("client_id=stuck"), "{line}");
    let line = broker.wait_for("client stopped reading");
    assert!(line.contains("stuck"), "{line}");
    drop(stuck);
    Ok((before, peak))
}

#[tokio::test]
async fn a_stuck_subscriber_with_1mb_messages_stays_under_the_byte_bound() -> Result<()> {
    let (before, peak) = stuck_subscriber("allow_anonymous true\nslow_client_timeout 3\n").await?;
    let grew = peak.saturating_sub(before);
    // At most 64 MiB queued and unwritten, plus buffers and what the allocator keeps: well
    // under the 400 MB sent. Measured here (debug build): 76 MiB; 59 MiB with a subscriber
    // that reads everything; 399 MiB with `max_queued_bytes 0` (the outbox held it all).
    assert!(
        grew < 128 << 20,
        "broker RSS grew by {} MiB (from {} MiB)",
        grew >> 20,
        before >> 20
    );
    Ok(())
}

/// A source that keeps sending wrong passwords is refused without a check after
/// `auth_failure_limit` failures (MQTT 5: Connection rate exceeded), while a client from
/// another address logs in as usual, and a success from the blocked source, once its wait is
/// over, clears it.
#[tokio::test]
async fn a_guessing_source_backs_off_and_others_log_in() -> Result<()> {
    let dir = TempDir::new()?;
    let passwd = dir.path().join("passwd");
    let status = culex_test_support::culex_command(env!("CARGO_BIN_EXE_culex"))
        .args(["passwd", "-c", "-b", "-H", "sha512"])
        .arg(&passwd)
        .args(["alice", "right"])
        .status()?;
    assert!(status.success());
    let mut broker = Broker::start(
        &dir,
        &format!(
            "allow_anonymous false\npassword_file {}\nauth_failure_limit 3\n",
            passwd.display()
        ),
    );
    for i in 0..3 {
        let (_, code) =
            connect(broker.addr, &format!("guess{i}"), Some(("alice", "wrong"))).await?;
        assert_eq!(code, ReasonCode::NotAuthorized, "attempt {i}");
    }
    broker.wait_for("repeated login failures");
    // Blocked now, even with the right password: refused without a check.
    let (_, code) = connect(broker.addr, "guess-right", Some(("alice", "right"))).await?;
    assert_eq!(code, ReasonCode::ConnectionRateExceeded);
    // Another source is not affected.
    let other = std::net::IpAddr::from([127, 0, 0, 2]);
    let (_, code) = connect_from(broker.addr, other, "other", Some(("alice", "right"))).await?;
    assert_eq!(code, ReasonCode::Success);
    // After the first backoff (1 s), the right password gets in and clears the source.
    tokio::time::sleep(culex_auth::FIRST_BACKOFF + Duration::from_millis(200)).await;
    let (_, code) = connect(broker.addr, "after", Some(("alice", "right"))).await?;
    assert_eq!(code, ReasonCode::Success);
    let (_, code) = connect(broker.addr, "again", Some(("alice", "wrong"))).await?;
    assert_eq!(code, ReasonCode::NotAuthorized, "the count started again");
    Ok(())
}

/// Refusals are logged with client id, user and topic, at most one line per client per
/// 10 s (counting the rest), so an operator sees who is refused what without a flood.
#[tokio::test]
async fn acl_refusals_are_logged_once_per_client_per_interval() -> Result<()> {
    let dir = TempDir::new()?;
    let passwd = dir.path().join("passwd");
    let acl = dir.path().join("acl");
    let status = culex_test_support::culex_command(env!("CARGO_BIN_EXE_culex"))
        .args(["passwd", "-c", "-b", "-H", "sha512"])
        .arg(&passwd)
        .args(["alice", "pw"])
        .status()?;
    assert!(status.success());
    std::fs::write(&acl, "user alice\ntopic readwrite public/#\n")?;
    let mut broker = Broker::start(
        &dir,
        &format!(
            "allow_anonymous false\npassword_file {}\nacl_file {}\n",
            passwd.display(),
            acl.display()
        ),
    );
    let (mut c, code) = connect(broker.addr, "alice-dev", Some(("alice", "pw"))).await?;
    assert_eq!(code, ReasonCode::Success);
    for _ in 0..100 {
        c.send(&publish("secret/x", Bytes::from_static(b"no")))
            .await?;
    }
    // The SUBSCRIBE comes after the publishes on the same connection: its refusal is logged
    // after theirs.
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "secret/#".into(),
            options: SubscriptionOptions::default(),
        }],
        properties: Properties::default(),
    }))
    .await?;
    match c.recv_within(LONG).await? {
        Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, vec![ReasonCode::NotAuthorized]),
        other => bail!("expected SUBACK, got {other:?}"),
    }
    let lines = broker.lines_until("subscription refused by the ACL");
    let publish_lines: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("publish refused by the ACL"))
        .collect();
    assert_eq!(publish_lines.len(), 1, "rate-limited: {publish_lines:?}");
    let first = publish_lines[0];
    for part in ["client_id=alice-dev", "user=\"alice\"", "topic=secret/x"] {
        assert!(first.contains(part), "{part} missing: {first}");
    }
    let sub = lines.last().expect("line");
    assert!(
        sub.contains("filter=secret/#") && sub.contains("alice-dev"),
        "{sub}"
    );
    Ok(())
}

/// 50,000 retained messages reach a new QoS 0 and a new QoS 1 subscriber, every one, while the
/// broker's memory grows by little more than the references it queues (the messages are not
/// copied). (Issue 19: each got 1,000.)
#[tokio::test]
async fn fifty_thousand_retained_arrive_with_bounded_memory() -> Result<()> {
    const N: usize = 50_000;
    let dir = TempDir::new()?;
    let broker = Broker::start(&dir, "allow_anonymous true\n");
    let (mut marker, _) = connect(broker.addr, "marker", None).await?;
    subscribe(&mut marker, "loaded", QoS::AtMostOnce).await?;
    let (mut loader, _) = connect(broker.addr, "loader", None).await?;
    let payload = Bytes::from(vec![b'r'; 100]);
    for i in 0..N {
        let mut p = publish(&format!("many/{i}"), payload.clone());
        if let Packet::Publish(p) = &mut p {
            p.retain = true;
        }
        loader.send(&p).await?;
    }
    loader.send(&publish("loaded", Bytes::new())).await?;
    match marker.recv_within(LONG).await? {
        Some(Packet::Publish(p)) if p.topic == "loaded" => {}
        other => bail!("expected the marker, got {other:?}"),
    }
    let before = broker.rss();
    let mut peak = before;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let started = Instant::now();
        let (mut sub, _) = connect(broker.addr, &format!("all-{qos:?}"), None).await?;
        subscribe(&mut sub, "many/#", qos).await?;
        let mut got = std::collections::HashSet::new();
        while got.len() < N {
            match sub.recv_within(LONG).await? {
                Some(Packet::Publish(p)) => {
                    if let Some(id) = p.packet_id {
                        sub.send(&Packet::PubAck(culex_proto::PubResp::new(id)))
                            .await?;
                    }
                    assert!(got.insert(p.topic), "a duplicate");
                }
                other => bail!("{qos:?}: after {}: {other:?}", got.len()),
            }
            if got.len() % 5000 == 0 {
                peak = peak.max(broker.rss());
            }
        }
        eprintln!("{qos:?}: {N} retained in {:?}", started.elapsed());
    }
    let grew = peak.saturating_sub(before);
    // The retained store itself is about 10 MB here; delivering it must not copy it.
    assert!(grew < 32 << 20, "RSS grew by {} MiB", grew >> 20);
    Ok(())
}
