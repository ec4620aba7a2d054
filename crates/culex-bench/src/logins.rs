//! `logins`: what a password-guessing storm does to everyone else.
//!
//! `--storm` clients (from `--storm-source`, another loopback address) log in with a wrong
//! password again and again, each as soon as it is answered. Meanwhile, from the main source:
//! a valid user logs in every `--interval-ms` (CONNECT → CONNACK latency, each on a fresh
//! connection), and one connected client publishes QoS 1 to itself (PUBLISH → delivery latency:
//! "connected clients are unaffected"). Then, with the storm over and after `--settle`, known
//! and unknown user names with wrong passwords are timed in alternation from further sources
//! (`--probe-source` and the addresses after it, one per pair), to see whether timing tells
//! them apart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use culex_proto::{
    decode, encode, Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::tcp_connect;

/// What [`run`] needs.
#[derive(Debug, Clone)]
pub(crate) struct LoginOpts {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub user: String,
    pub password: String,
    pub unknown_user: String,
    pub storm: u32,
    pub storm_source: SocketAddr,
    pub probe_source: SocketAddr,
    pub duration: Duration,
    pub interval: Duration,
    pub settle: Duration,
    pub probes: u32,
    pub client_prefix: String,
}

/// Latency summary in milliseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    fn of(mut v: Vec<Duration>) -> Summary {
        v.sort_unstable();
        let at = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1000.0
        };
        Summary {
            count: v.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// The report.
#[derive(Debug, Serialize)]
pub(crate) struct LoginReport {
    /// Valid logins during the storm: CONNECT → CONNACK.
    pub valid_login: Summary,
    /// Valid logins that were refused or timed out.
    pub valid_failed: u64,
    /// The connected client's QoS 1 PUBLISH → delivery during the storm.
    pub connected_roundtrip: Summary,
    /// Storm attempts answered, by CONNACK reason.
    pub storm_attempts: u64,
    pub storm_not_authorized: u64,
    pub storm_throttled: u64,
    pub storm_other: u64,
    /// After the storm: wrong password for the known user, and for an unknown one.
    pub known_user_wrong_password: Summary,
    pub unknown_user: Summary,
    /// (median unknown − median known) ÷ median known, in percent.
    pub median_difference_percent: f64,
    /// The median over pairs of (unknown − known) ÷ known, in percent.
    pub pairwise_median_difference_percent: f64,
}

/// One login on a fresh connection: the CONNACK reason and the time to it.
async fn login(
    addr: SocketAddr,
    local: Option<SocketAddr>,
    protocol: Protocol,
    client_id: &str,
    user: &str,
    password: &str,
) -> Result<(ReasonCode, Duration, TcpStream, BytesMut)> {
    let mut stream = tcp_connect(addr, local).await?;
    let connect = Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: Some(user.to_owned()),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
        properties: Properties::default(),
    }));
    let mut out = BytesMut::new();
    encode(&connect, protocol, &mut out).context("encoding CONNECT")?;
    let start = Instant::now();
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(256);
    let packet = tokio::time::timeout(
        Duration::from_secs(30),
        read(&mut stream, &mut buf, protocol),
    )
    .await
    .map_err(|_| anyhow!("no CONNACK within 30 s"))??;
    let took = start.elapsed();
    match packet {
        Packet::ConnAck(ack) => Ok((ack.reason_code, took, stream, buf)),
        other => bail!("expected CONNACK, got {}", other.name()),
    }
}

async fn read(stream: &mut TcpStream, buf: &mut BytesMut, protocol: Protocol) -> Result<Packet> {
    loop {
        if let Some(p) = decode(buf, Some(protocol), u32::MAX)? {
            return Ok(p);
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("connection closed by the broker");
        }
    }
}

/// The source of probe `i`: a different loopback address for each pair of probes (two
/// failures each), so the failure limiter never answers a probe without a check.
fn probe_ip(base: std::net::IpAddr, i: u32) -> std::net::IpAddr {
    match base {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            let c = c.wrapping_add((i / 250) as u8);
            std::net::IpAddr::from([a, b, c, 1 + (i % 250) as u8])
        }
        v6 => v6,
    }
}

/// Runs the scenario.
pub(crate) async fn run(o: LoginOpts) -> Result<LoginReport> {
    // The connected client: subscribed to its own topic.
    let (code, _, mut conn, mut cbuf) = login(
        o.addr,
        None,
        o.protocol,
        &format!("{}-steady", o.client_prefix),
        &o.user,
        &o.password,
    )
    .await?;
    if code != ReasonCode::Success {
        bail!("the valid user was refused: {code:?} (check --user/--password)");
    }
    let topic = format!("{}/steady", o.client_prefix);
    let sub = Packet::Subscribe(culex_proto::Subscribe {
        packet_id: 1,
        filters: vec![culex_proto::SubscribeFilter {
            filter: topic.clone(),
            options: culex_proto::SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        }],
        properties: Properties::default(),
    });
    let mut out = BytesMut::new();
    encode(&sub, o.protocol, &mut out)?;
    conn.write_all(&out).await?;
    match read(&mut conn, &mut cbuf, o.protocol).await? {
        Packet::SubAck(_) => {}
        other => bail!("expected SUBACK, got {}", other.name()),
    }

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let mut storm = Vec::new();
    for i in 0..o.storm {
        let (stop, attempts, o) = (Arc::clone(&stop), Arc::clone(&attempts), o.clone());
        storm.push(tokio::spawn(async move {
            let id = format!("{}-storm{i}", o.client_prefix);
            while !stop.load(Ordering::Relaxed) {
                let r = login(
                    o.addr,
                    Some(SocketAddr::new(o.storm_source.ip(), 0)),
                    o.protocol,
                    &id,
                    &o.user,
                    "wrong password",
                )
                .await;
                attempts[0].fetch_add(1, Ordering::Relaxed);
                let slot = match r {
                    Ok((ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword, ..)) => 1,
                    Ok((
                        ReasonCode::ConnectionRateExceeded
                        | ReasonCode::ServerBusy
                        | ReasonCode::ServerUnavailable,
                        ..,
                    )) => 2,
                    _ => 3,
                };
                attempts[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // During the storm: valid logins, and the connected client's round trips.
    let end = Instant::now() + o.duration;
    let mut valid = Vec::new();
    let mut valid_failed = 0u64;
    let mut rtt = Vec::new();
    let mut n = 0u64;
    let mut next_pid = 1u16;
    while Instant::now() < end {
        n += 1;
        let id = format!("{}-valid{n}", o.client_prefix);
        match login(o.addr, None, o.protocol, &id, &o.user, &o.password).await {
            Ok((ReasonCode::Success, took, ..)) => valid.push(took),
            _ => valid_failed += 1,
        }
        next_pid = next_pid.checked_add(1).unwrap_or(1);
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.clone(),
            packet_id: Some(next_pid),
            properties: Properties::default(),
            payload: Bytes::from_static(b"ping"),
        });
        let mut out = BytesMut::new();
        encode(&publish, o.protocol, &mut out)?;
        let sent = Instant::now();
        conn.write_all(&out).await?;
        // The PUBACK and the delivery come in either order; wait for the delivery.
        loop {
            match read(&mut conn, &mut cbuf, o.protocol).await? {
                Packet::Publish(p) => {
                    rtt.push(sent.elapsed());
                    if let Some(id) = p.packet_id {
                        let mut ack = BytesMut::new();
                        crate::wire::put_ack(&mut ack, crate::wire::PUBACK, id);
                        conn.write_all(&ack).await?;
                    }
                    break;
                }
                Packet::PubAck(_) => {}
                other => bail!("connected client got {}", other.name()),
            }
        }
        tokio::time::sleep(o.interval).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in storm {
        let _ = tokio::time::timeout(Duration::from_secs(35), t).await;
    }

    // After the storm: known vs unknown user, wrong passwords, alternating, from a source
    // that has not failed yet (the limiter would answer it without a check otherwise).
    tokio::time::sleep(o.settle).await;
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..o.probes {
        // Which goes first alternates, so neither gets a systematic head start.
        let mut pair = [(&o.user, &mut known), (&o.unknown_user, &mut unknown)];
        if i % 2 == 1 {
            pair.reverse();
        }
        for (user, into) in pair {
            let id = format!("{}-probe{i}", o.client_prefix);
            let local = Some(SocketAddr::new(probe_ip(o.probe_source.ip(), i), 0));
            let (code, took, ..) =
                login(o.addr, local, o.protocol, &id, user, "also wrong").await?;
            if !matches!(
                code,
                ReasonCode::NotAuthorized | ReasonCode::BadUserNameOrPassword
            ) {
                bail!("a probe login was answered {code:?}, not as a wrong password");
            }
            into.push(took);
        }
    }
    // Per pair (taken back to back), which is steadier than medians over a run whose machine
    // speed drifts.
    let mut pairs: Vec<f64> = known
        .iter()
        .zip(&unknown)
        .map(|(k, u)| (u.as_secs_f64() - k.as_secs_f64()) / k.as_secs_f64().max(1e-9) * 100.0)
        .collect();
    pairs.sort_by(f64::total_cmp);
    let pair_median = pairs.get(pairs.len() / 2).copied().unwrap_or(0.0);
    let known = Summary::of(known);
    let unknown = Summary::of(unknown);
    let diff = if known.p50_ms > 0.0 {
        (unknown.p50_ms - known.p50_ms) / known.p50_ms * 100.0
    } else {
        0.0
    };
    Ok(LoginReport {
        valid_login: Summary::of(valid),
        valid_failed,
        connected_roundtrip: Summary::of(rtt),
        storm_attempts: attempts[0].load(Ordering::Relaxed),
        storm_not_authorized: attempts[1].load(Ordering::Relaxed),
        storm_throttled: attempts[2].load(Ordering::Relaxed),
        storm_other: attempts[3].load(Ordering::Relaxed),
        known_user_wrong_password: known,
        unknown_user: unknown,
        median_difference_percent: diff,
        pairwise_median_difference_percent: pair_median,
    })
}
