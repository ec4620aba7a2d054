//! Connection scenarios: how fast the broker accepts connections, and how much memory each idle
//! connection costs it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use bytes::BytesMut;
use culex_proto::Protocol;
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::procfs;
use crate::report::{ConnReport, LatencySummary};
use crate::wire;

/// Settings of a connections run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ConnOpts {
    /// Broker address.
    pub(crate) addr: SocketAddr,
    /// MQTT version.
    #[serde(skip)]
    pub(crate) protocol: Protocol,
    /// Connections to open.
    pub(crate) count: u64,
    /// Connection attempts in progress at once.
    pub(crate) concurrency: u64,
    /// Keep alive sent in CONNECT, seconds.
    pub(crate) keep_alive: u16,
    /// How long to hold the connections idle before reading the broker's RSS.
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub(crate) hold: Duration,
    /// Broker PID for RSS and CPU sampling.
    pub(crate) broker_pid: Option<u32>,
    /// Prefix of client identifiers.
    pub(crate) client_prefix: String,
}

/// Opens `count` idle connections, measures, closes them.
pub(crate) async fn run(opts: ConnOpts) -> Result<ConnReport> {
    let rss_before = opts.broker_pid.map(procfs::rss_kib).transpose()?;
    let cpu_before = opts.broker_pid.map(procfs::cpu_seconds).transpose()?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let next = Arc::clone(&next);
        let opts = opts.clone();
        workers.push(tokio::spawn(
            async move { connect_worker(&opts, &next).await },
        ));
    }
    let mut streams: Vec<TcpStream> = Vec::new();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| anyhow!("histogram: {e}"))?;
    let mut failed = 0;
    let mut first_error = None;
    for w in workers {
        let (s, h, f, err) = w.await??;
        streams.extend(s);
        latency.add(&h).map_err(|e| anyhow!("histogram: {e}"))?;
        failed += f;
        if first_error.is_none() {
            first_error = err;
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let cpu_after = opts.broker_pid.map(procfs::cpu_seconds).transpose()?;
    if let Some(e) = first_error {
        eprintln!("culex-bench: {failed} connection(s) failed; first error: {e:#}");
    }
    tokio::time::sleep(opts.hold).await;
    let rss_idle = opts.broker_pid.map(procfs::rss_kib).transpose()?;
    let connected = streams.len() as u64;

    let bye = wire::disconnect_bytes(opts.protocol);
    for s in &mut streams {
        let _ = s.write_all(&bye).await;
    }
    drop(streams);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_close = opts.broker_pid.map(procfs::rss_kib).transpose()?;

    let per_conn = match (rss_before, rss_idle) {
        (Some(b), Some(i)) if connected > 0 => {
            Some((i as f64 - b as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    Ok(ConnReport {
        settings: serde_json::to_value(&opts)?,
        connected,
        failed,
        connect_seconds,
        connect_rate: if connect_seconds > 0.0 {
            connected as f64 / connect_seconds
        } else {
            0.0
        },
        connect_latency: LatencySummary::from_ns(&latency),
        rss_before_kib: rss_before,
        rss_idle_kib: rss_idle,
        rss_after_close_kib: rss_after_close,
        rss_bytes_per_connection: per_conn,
        broker_cpu_seconds_connecting: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => Some(a - b),
            _ => None,
        },
    })
}

type WorkerResult = (Vec<TcpStream>, Histogram<u64>, u64, Option<anyhow::Error>);

async fn connect_worker(opts: &ConnOpts, next: &AtomicU64) -> Result<WorkerResult> {
    let mut streams = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| anyhow!("histogram: {e}"))?;
    let mut buf = BytesMut::with_capacity(256);
    loop {
        let i = next.fetch_add(1, SeqCst);
        if i >= opts.count {
            break;
        }
        let t0 = Instant::now();
        match connect_one(opts, i, &mut buf).await {
            Ok(s) => {
                hist.saturating_record(
                    u64::try_from(t0.elapsed().as_nanos())
                        .unwrap_or(u64::MAX)
                        .max(1),
                );
                streams.push(s);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    Ok((streams, hist, failed, first_error))
}

async fn connect_one(opts: &ConnOpts, i: u64, buf: &mut BytesMut) -> Result<TcpStream> {
    // Spread loopback connections over 127.1.x.y so that tens of thousands of them (and their
    // TIME_WAIT remains from earlier rounds) never exhaust the ephemeral ports of one address.
    let local = match opts.addr.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            let x = ((i / 250) % 250) as u8;
            let y = (i % 250) as u8 + 1;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 1, x, y)), 0))
        }
        _ => None,
    };
    let mut stream = wire::tcp_connect(opts.addr, local).await?;
    buf.clear();
    let id = format!("{}-c{i}", opts.client_prefix);
    wire::mqtt_connect(&mut stream, buf, opts.protocol, &id, opts.keep_alive).await?;
    Ok(stream)
}
