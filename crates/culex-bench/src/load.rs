//! Publish/subscribe load: closed-loop saturation and open-loop fixed rate.
//!
//! Every publisher sends to one topic; subscribers subscribe to it exactly (or through a shared
//! subscription). Each payload starts with the publisher's sequence number, the send time and
//! the publisher index, so subscribers can measure latency and check loss, duplicates and order.
//!
//! Closed loop: each publisher keeps at most `window` messages in flight *end to end* (published
//! but not yet delivered to every subscriber that should get it) and, for QoS 1/2, at most
//! `window` unacknowledged PUBLISHes. A window that stops moving for `stall` (a message the
//! broker dropped) is reset and counted. Open loop: publishers send on a fixed schedule whatever
//! the broker does; the send timestamp is taken when the message is written.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use culex_proto::{Protocol, QoS};
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::procfs;
use crate::report::{BrokerUsage, Checks, LatencySummary, LoadReport};
use crate::wire::{self, Incoming, PublishTemplate};

/// Largest batch written in one `write_all`.
const WRITE_BATCH: usize = 64 * 1024;
/// Highest latency the histograms hold (60 s, in ns).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Settings of a publish/subscribe run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct LoadOpts {
    /// Broker address.
    pub(crate) addr: SocketAddr,
    /// Where the subscribers connect, in turn (subscriber i to `sub_addrs[i % len]`): `addr`,
    /// or other brokers that receive the messages through a bridge or a cluster (the topic
    /// must arrive unchanged).
    pub(crate) sub_addrs: Vec<SocketAddr>,
    /// MQTT version spoken by every client.
    #[serde(serialize_with = "ser_protocol")]
    pub(crate) protocol: Protocol,
    /// Number of publishers.
    pub(crate) publishers: u32,
    /// Number of subscribers.
    pub(crate) subscribers: u32,
    /// QoS of the PUBLISHes.
    #[serde(serialize_with = "ser_qos")]
    pub(crate) qos: QoS,
    /// QoS of the subscriptions.
    #[serde(serialize_with = "ser_qos")]
    pub(crate) sub_qos: QoS,
    /// Payload size in bytes (at least 20).
    pub(crate) payload: usize,
    /// Subscribers share one `$share/bench/...` subscription.
    pub(crate) shared: bool,
    /// Fixed total publish rate (open loop); `None` = closed-loop saturation.
    pub(crate) rate: Option<f64>,
    /// Closed-loop window per publisher (messages in flight end to end).
    pub(crate) window: u32,
    /// Time before the measured window starts.
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub(crate) warmup: Duration,
    /// Length of the measured window.
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub(crate) duration: Duration,
    /// Messages per publisher, after which it stops (bounded-count runs).
    pub(crate) count: Option<u64>,
    /// Longest wait for outstanding deliveries after the publishers stopped.
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub(crate) drain: Duration,
    /// A closed-loop window that has not moved for this long is reset (lost messages).
    #[serde(serialize_with = "crate::report::ser_secs")]
    pub(crate) stall: Duration,
    /// Broker PID for CPU and RSS sampling.
    pub(crate) broker_pid: Option<u32>,
    /// Topic published to.
    pub(crate) topic: String,
    /// Prefix of client identifiers.
    pub(crate) client_prefix: String,
}

fn ser_protocol<S: serde::Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match p {
        Protocol::V31 => "3.1",
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5",
    })
}

fn ser_qos<S: serde::Serializer>(q: &QoS, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u8(q.as_u8())
}

/// What publishers and subscribers share.
struct Shared {
    origin: Instant,
    protocol: Protocol,
    /// Deliveries each message should produce.
    fanout: u64,
    /// Start and end of the measured window, ns since `origin` (by send time).
    measure_start_ns: AtomicU64,
    measure_end_ns: AtomicU64,
    delivered_total: AtomicU64,
    published_total: AtomicU64,
    publishers_done: AtomicU64,
    done_notify: Notify,
    pubs: Vec<PubShared>,
}

struct PubShared {
    delivered: AtomicU64,
    waiting: AtomicBool,
    notify: Notify,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// What a publisher reports at the end.
struct PubResult {
    published: u64,
    window_resets: u64,
    id_stalls: u64,
    send_lag: Histogram<u64>,
}

/// What a subscriber reports at the end.
struct SubResult {
    latency: Histogram<u64>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    /// Per publisher: bitmap of sequence numbers seen.
    seen: Vec<Vec<u64>>,
}

/// Runs one publish/subscribe scenario and reports.
pub(crate) async fn run(opts: LoadOpts) -> Result<LoadReport> {
    if opts.publishers == 0 || opts.subscribers == 0 {
        bail!("need at least one publisher and one subscriber");
    }
    if opts.window == 0 {
        bail!("--window must be at least 1");
    }
    let fanout = if opts.shared {
        1
    } else {
        u64::from(opts.subscribers)
    };
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        protocol: opts.protocol,
        fanout,
        measure_start_ns: AtomicU64::new(u64::MAX),
        measure_end_ns: AtomicU64::new(u64::MAX),
        delivered_total: AtomicU64::new(0),
        published_total: AtomicU64::new(0),
        publishers_done: AtomicU64::new(0),
        done_notify: Notify::new(),
        pubs: (0..opts.publishers)
            .map(|_| PubShared {
                delivered: AtomicU64::new(0),
                waiting: AtomicBool::new(false),
                notify: Notify::new(),
            })
            .collect(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    // Subscribers first, each subscribed before any message is sent.
    let filter = if opts.shared {
        format!("$share/bench/{}", opts.topic)
    } else {
        opts.topic.clone()
    };
    let mut subs = Vec::new();
    for i in 0..opts.subscribers {
        let sub_addr = opts.sub_addrs[i as usize % opts.sub_addrs.len()];
        let mut stream = wire::tcp_connect(sub_addr, None)
            .await
            .with_context(|| format!("connecting subscriber {i} to {sub_addr}"))?;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let id = format!("{}-s{i}", opts.client_prefix);
        wire::mqtt_connect(&mut stream, &mut buf, opts.protocol, &id, 60).await?;
        wire::mqtt_subscribe(&mut stream, &mut buf, opts.protocol, &filter, opts.sub_qos).await?;
        let shared = Arc::clone(&shared);
        let stop = stop_rx.clone();
        subs.push(tokio::spawn(subscriber(stream, buf, shared, stop)));
    }
    // Publishers connected before any starts.
    let mut pub_streams = Vec::new();
    for i in 0..opts.publishers {
        let mut stream = wire::tcp_connect(opts.addr, None)
            .await
            .with_context(|| format!("connecting publisher {i} to {}", opts.addr))?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let id = format!("{}-p{i}", opts.client_prefix);
        let receive_max = wire::mqtt_connect(&mut stream, &mut buf, opts.protocol, &id, 60).await?;
        let template = PublishTemplate::new(opts.protocol, &opts.topic, opts.qos, opts.payload, i)?;
        pub_streams.push((stream, buf, template, receive_max));
    }
    // Let the subscriptions settle (some brokers apply them asynchronously).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let start_ns = shared.now_ns();
    let mut pubs = Vec::new();
    for (i, (stream, buf, template, receive_max)) in pub_streams.into_iter().enumerate() {
        let mut max_ids = opts.window;
        if let Some(rm) = receive_max {
            max_ids = max_ids.min(u32::from(rm));
        }
        let cfg = PubCfg {
            index: i,
            qos: opts.qos,
            window: u64::from(opts.window),
            max_ids: if opts.rate.is_some() {
                receive_max.map_or(60_000, u32::from)
            } else {
                max_ids
            },
            rate: opts.rate.map(|r| r / f64::from(opts.publishers)),
            count: opts.count,
            stall: opts.stall,
            start_ns,
        };
        let shared = Arc::clone(&shared);
        let stop = stop_rx.clone();
        pubs.push(tokio::spawn(publisher(
            stream, buf, template, cfg, shared, stop,
        )));
    }

    // Measured window.
    let all_done = |s: &Shared| s.publishers_done.load(SeqCst) >= u64::from(opts.publishers);
    wait_or_done(&shared, opts.warmup, &all_done).await;
    let m_start = Instant::now();
    shared.measure_start_ns.store(shared.now_ns(), SeqCst);
    let pub_start = shared.published_total.load(SeqCst);
    let del_start = shared.delivered_total.load(SeqCst);
    let proc_start = opts.broker_pid.map(procfs::sample).transpose()?;
    wait_or_done(&shared, opts.duration, &all_done).await;
    shared.measure_end_ns.store(shared.now_ns(), SeqCst);
    let pub_end = shared.published_total.load(SeqCst);
    let del_end = shared.delivered_total.load(SeqCst);
    let proc_end = opts.broker_pid.map(procfs::sample).transpose()?;
    let measured = m_start.elapsed().as_secs_f64();

    // Stop publishing, then drain.
    stop_tx.send_replace(true);
    let mut pub_results = Vec::new();
    for p in pubs {
        pub_results.push(p.await.context("publisher task")??);
    }
    let published: u64 = pub_results.iter().map(|r| r.published).sum();
    let expected = published * fanout;
    let drain_deadline = Instant::now() + opts.drain;
    let mut last = shared.delivered_total.load(SeqCst);
    let mut last_change = Instant::now();
    while Instant::now() < drain_deadline {
        let now = shared.delivered_total.load(SeqCst);
        if now >= expected {
            break;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_millis(1500) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rss_after_drain = opts.broker_pid.map(procfs::rss_kib).transpose()?;
    // Subscribers were told to stop together with the publishers; they exit on the watch only
    // once the drain is over, so signal them again by closing the channel.
    drop(stop_tx);
    let mut sub_results = Vec::new();
    for s in subs {
        sub_results.push(s.await.context("subscriber task")??);
    }

    // Checks.
    let mut checks = Checks {
        published,
        expected_deliveries: expected,
        ..Checks::default()
    };
    let mut latency = new_histogram()?;
    for s in &sub_results {
        checks.received += s.received;
        checks.duplicates += s.duplicates;
        checks.out_of_order += s.out_of_order;
        checks.foreign += s.foreign;
        latency
            .add(&s.latency)
            .map_err(|e| anyhow!("histogram: {e}"))?;
    }
    let sent_per_pub: Vec<u64> = pub_results.iter().map(|r| r.published).collect();
    if opts.shared {
        // The group as a whole must see every message once.
        for (p, &sent) in sent_per_pub.iter().enumerate() {
            let mut union: Vec<u64> = Vec::new();
            let mut sum = 0u64;
            for s in &sub_results {
                let bits = s.seen.get(p).map(Vec::as_slice).unwrap_or_default();
                sum += popcount(bits);
                if union.len() < bits.len() {
                    union.resize(bits.len(), 0);
                }
                for (u, b) in union.iter_mut().zip(bits) {
                    *u |= b;
                }
            }
            let unique = popcount(&union);
            checks.duplicates += sum - unique;
            checks.lost += sent.saturating_sub(unique);
        }
    } else {
        for s in &sub_results {
            for (p, &sent) in sent_per_pub.iter().enumerate() {
                let bits = s.seen.get(p).map(Vec::as_slice).unwrap_or_default();
                checks.lost += sent.saturating_sub(popcount(bits));
            }
        }
    }
    let mut send_lag = new_histogram()?;
    for r in &pub_results {
        send_lag
            .add(&r.send_lag)
            .map_err(|e| anyhow!("histogram: {e}"))?;
    }
    let window_resets: u64 = pub_results.iter().map(|r| r.window_resets).sum();
    let id_stalls: u64 = pub_results.iter().map(|r| r.id_stalls).sum();

    let deliveries = del_end.saturating_sub(del_start);
    let broker = match (opts.broker_pid, proc_start, proc_end) {
        (Some(pid), Some(start), Some(end)) => {
            let cpu = (end.cpu_seconds - start.cpu_seconds).max(0.0);
            Some(BrokerUsage {
                pid,
                start,
                end,
                cpu_seconds: cpu,
                cpu_cores: if measured > 0.0 { cpu / measured } else { 0.0 },
                cpu_us_per_delivery: (deliveries > 0).then(|| cpu * 1e6 / deliveries as f64),
                rss_after_drain_kib: rss_after_drain,
            })
        }
        _ => None,
    };
    let mut settings = serde_json::to_value(&opts)?;
    if let Some(obj) = settings.as_object_mut() {
        obj.insert("window_resets".into(), window_resets.into());
        obj.insert("packet_id_stalls".into(), id_stalls.into());
    }
    Ok(LoadReport {
        mode: if opts.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        },
        settings,
        measured_seconds: measured,
        publish_rate: rate(pub_end.saturating_sub(pub_start), measured),
        delivery_rate: rate(deliveries, measured),
        latency: LatencySummary::from_ns(&latency),
        send_lag: opts.rate.map(|_| LatencySummary::from_ns(&send_lag)),
        checks,
        broker,
    })
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn popcount(bits: &[u64]) -> u64 {
    bits.iter().map(|w| u64::from(w.count_ones())).sum()
}

/// Sleeps for `d`, or less if every publisher has finished (count-bounded runs).
async fn wait_or_done(shared: &Shared, d: Duration, all_done: &impl Fn(&Shared) -> bool) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        if all_done(shared) {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = shared.done_notify.notified() => {}
        }
    }
}

struct PubCfg {
    index: usize,
    qos: QoS,
    window: u64,
    max_ids: u32,
    rate: Option<f64>,
    count: Option<u64>,
    stall: Duration,
    start_ns: u64,
}

/// Packet identifiers in use by one publisher.
struct Ids {
    in_use: Vec<bool>,
    count: u32,
    next: u16,
}

impl Ids {
    fn new() -> Self {
        Ids {
            in_use: vec![false; 65536],
            count: 0,
            next: 1,
        }
    }

    fn alloc(&mut self) -> Option<u16> {
        if self.count >= 65535 {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if self.next == u16::MAX {
                1
            } else {
                self.next + 1
            };
            if let Some(slot) = self.in_use.get_mut(usize::from(id)) {
                if !*slot {
                    *slot = true;
                    self.count += 1;
                    return Some(id);
                }
            }
        }
    }

    fn free(&mut self, id: u16) {
        if let Some(slot) = self.in_use.get_mut(usize::from(id)) {
            if *slot {
                *slot = false;
                self.count -= 1;
            }
        }
    }
}

async fn publisher(
    mut stream: TcpStream,
    mut buf: BytesMut,
    mut template: PublishTemplate,
    cfg: PubCfg,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<PubResult> {
    let me = shared
        .pubs
        .get(cfg.index)
        .ok_or_else(|| anyhow!("publisher index out of range"))?;
    let fanout = shared.fanout;
    let mut ids = Ids::new();
    let mut seq: u64 = 0;
    let mut forgiven: u64 = 0;
    let mut result = PubResult {
        published: 0,
        window_resets: 0,
        id_stalls: 0,
        send_lag: new_histogram()?,
    };
    let mut out = BytesMut::with_capacity(WRITE_BATCH + template.len());
    let mut acks = BytesMut::new();
    let uses_ids = cfg.qos != QoS::AtMostOnce;
    let limit = cfg.count.unwrap_or(u64::MAX);
    let mut last_progress = (shared.delivered_total.load(SeqCst), Instant::now());
    let batch_interval = Duration::from_millis(1);

    while !*stop.borrow() && seq < limit {
        // Acknowledgements that have already arrived.
        loop {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            match stream.try_read_buf(&mut buf) {
                Ok(0) => bail!("publisher {}: broker closed the connection", cfg.index),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        handle_acks(&mut buf, shared.protocol, &mut ids, &mut acks)?;

        let now_ns = shared.now_ns();
        match cfg.rate {
            None => {
                // Closed loop: fill the window.
                let delivered = me.delivered.load(SeqCst);
                while out.len() < WRITE_BATCH && seq < limit {
                    let outstanding = (seq * fanout).saturating_sub(delivered + forgiven);
                    if outstanding + fanout > cfg.window * fanout {
                        break;
                    }
                    let id = if uses_ids {
                        if ids.count >= cfg.max_ids {
                            break;
                        }
                        match ids.alloc() {
                            Some(id) => id,
                            None => break,
                        }
                    } else {
                        0
                    };
                    template.append(&mut out, id, seq, now_ns);
                    seq += 1;
                }
            }
            Some(per_sec) => {
                // Open loop: everything due by now, stamped with the actual send time.
                let elapsed = now_ns.saturating_sub(cfg.start_ns) as f64 / 1e9;
                let due = ((elapsed * per_sec) as u64 + 1).min(limit);
                let m_start = shared.measure_start_ns.load(SeqCst);
                let m_end = shared.measure_end_ns.load(SeqCst);
                while seq < due && out.len() < WRITE_BATCH {
                    let id = if uses_ids {
                        match (ids.count < cfg.max_ids).then(|| ids.alloc()).flatten() {
                            Some(id) => id,
                            None => {
                                result.id_stalls += 1;
                                break;
                            }
                        }
                    } else {
                        0
                    };
                    let intended = cfg.start_ns + (seq as f64 / per_sec * 1e9) as u64;
                    if intended >= m_start && intended < m_end {
                        result
                            .send_lag
                            .saturating_record(now_ns.saturating_sub(intended).max(1));
                    }
                    template.append(&mut out, id, seq, now_ns);
                    seq += 1;
                }
            }
        }
        out.extend_from_slice(&acks);
        acks.clear();
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
            let sent = seq - result.published;
            result.published = seq;
            shared.published_total.fetch_add(sent, SeqCst);
            if cfg.rate.is_none() {
                continue;
            }
        }
        // Nothing could be sent: wait for room in the window, an ack, the next tick or stop.
        match cfg.rate {
            None => {
                me.waiting.store(true, SeqCst);
                let delivered = me.delivered.load(SeqCst);
                let outstanding = (seq * fanout).saturating_sub(delivered + forgiven);
                let window_open = outstanding + fanout <= cfg.window * fanout;
                let ids_open = !uses_ids || ids.count < cfg.max_ids;
                if window_open && ids_open {
                    me.waiting.store(false, SeqCst);
                    continue;
                }
                // Progress is any delivery at all: a broker may serve publishers unevenly.
                let all = shared.delivered_total.load(SeqCst);
                if all != last_progress.0 {
                    last_progress = (all, Instant::now());
                }
                let stall_left = cfg.stall.saturating_sub(last_progress.1.elapsed());
                tokio::select! {
                    _ = me.notify.notified() => {}
                    r = stream.readable() => r?,
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(stall_left) => {
                        if !window_open && shared.delivered_total.load(SeqCst) == last_progress.0 {
                            // Deliveries stopped: those messages were dropped. Start afresh.
                            let mine = me.delivered.load(SeqCst);
                            forgiven = (seq * fanout).saturating_sub(mine);
                            result.window_resets += 1;
                            last_progress = (last_progress.0, Instant::now());
                        }
                    }
                }
                me.waiting.store(false, SeqCst);
            }
            Some(per_sec) => {
                let next_ns = cfg.start_ns + (seq as f64 / per_sec * 1e9) as u64;
                let wait = Duration::from_nanos(next_ns.saturating_sub(shared.now_ns()));
                let id_starved = uses_ids && ids.count >= cfg.max_ids;
                if wait.is_zero() && !id_starved {
                    continue;
                }
                let wait = if id_starved { batch_interval } else { wait };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    r = stream.readable() => r?,
                    _ = stop.changed() => {}
                }
            }
        }
    }
    shared.publishers_done.fetch_add(1, SeqCst);
    shared.done_notify.notify_one();
    // Collect the last acknowledgements (best effort), then leave cleanly.
    let deadline = Instant::now() + Duration::from_secs(2);
    while uses_ids && ids.count > 0 && Instant::now() < deadline {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        let read = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf),
        )
        .await;
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
        handle_acks(&mut buf, shared.protocol, &mut ids, &mut acks)?;
        if !acks.is_empty() {
            stream.write_all(&acks).await?;
            acks.clear();
        }
    }
    let _ = stream
        .write_all(&wire::disconnect_bytes(shared.protocol))
        .await;
    Ok(result)
}

/// Frees packet ids on PUBACK / PUBCOMP and answers PUBREC with PUBREL.
fn handle_acks(
    buf: &mut BytesMut,
    protocol: Protocol,
    ids: &mut Ids,
    acks: &mut BytesMut,
) -> Result<()> {
    while let Some(incoming) = wire::next_incoming(buf, protocol)? {
        match incoming {
            Incoming::Ack {
                packet_type: wire::PUBACK | wire::PUBCOMP,
                packet_id,
            } => ids.free(packet_id),
            Incoming::Ack {
                packet_type: wire::PUBREC,
                packet_id,
            } => wire::put_ack(acks, wire::PUBREL, packet_id),
            Incoming::Other(14) => bail!("broker sent DISCONNECT to a publisher"),
            _ => {}
        }
    }
    Ok(())
}

async fn subscriber(
    mut stream: TcpStream,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<SubResult> {
    let npubs = shared.pubs.len();
    let mut r = SubResult {
        latency: new_histogram()?,
        received: 0,
        duplicates: 0,
        out_of_order: 0,
        foreign: 0,
        seen: vec![Vec::new(); npubs],
    };
    let mut last_seq: Vec<Option<u64>> = vec![None; npubs];
    let mut counts = vec![0u64; npubs];
    let mut out = BytesMut::with_capacity(4096);
    loop {
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(256 * 1024);
        }
        tokio::select! {
            biased;
            read = tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf) => {
                if read? == 0 {
                    bail!("subscriber: broker closed the connection");
                }
            }
            changed = stop.changed() => {
                // Closed channel: the run is over. A `true` alone means "publishers stopped".
                if changed.is_err() {
                    break;
                }
                continue;
            }
        }
        let now_ns = shared.now_ns();
        let m_start = shared.measure_start_ns.load(SeqCst);
        let m_end = shared.measure_end_ns.load(SeqCst);
        while let Some(incoming) = wire::next_incoming(&mut buf, shared.protocol)? {
            match incoming {
                Incoming::Publish {
                    qos,
                    packet_id,
                    header,
                } => {
                    match qos {
                        1 => wire::put_ack(&mut out, wire::PUBACK, packet_id),
                        2 => wire::put_ack(&mut out, wire::PUBREC, packet_id),
                        _ => {}
                    }
                    r.received += 1;
                    let Some(h) = header else {
                        r.foreign += 1;
                        continue;
                    };
                    let p = h.publisher as usize;
                    let word = usize::try_from(h.seq / 64).unwrap_or(usize::MAX);
                    let (Some(seen), Some(last), Some(count)) =
                        (r.seen.get_mut(p), last_seq.get_mut(p), counts.get_mut(p))
                    else {
                        r.foreign += 1;
                        continue;
                    };
                    if word > (1 << 26) {
                        r.foreign += 1;
                        continue;
                    }
                    if seen.len() <= word {
                        seen.resize(word + 1, 0);
                    }
                    let bit = 1u64 << (h.seq % 64);
                    if let Some(w) = seen.get_mut(word) {
                        if *w & bit != 0 {
                            r.duplicates += 1;
                        }
                        *w |= bit;
                    }
                    match *last {
                        Some(l) if h.seq < l => r.out_of_order += 1,
                        _ => *last = Some(h.seq),
                    }
                    *count += 1;
                    if h.sent_ns >= m_start && h.sent_ns < m_end {
                        r.latency
                            .saturating_record(now_ns.saturating_sub(h.sent_ns).max(1));
                    }
                }
                Incoming::Ack {
                    packet_type: wire::PUBREL,
                    packet_id,
                } => wire::put_ack(&mut out, wire::PUBCOMP, packet_id),
                Incoming::Other(14) => bail!("broker sent DISCONNECT to a subscriber"),
                _ => {}
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        let mut total = 0;
        for (p, count) in counts.iter_mut().enumerate() {
            if *count == 0 {
                continue;
            }
            total += *count;
            if let Some(ps) = shared.pubs.get(p) {
                ps.delivered.fetch_add(*count, SeqCst);
                if ps.waiting.swap(false, SeqCst) {
                    ps.notify.notify_one();
                }
            }
            *count = 0;
        }
        shared.delivered_total.fetch_add(total, SeqCst);
    }
    let _ = stream
        .write_all(&wire::disconnect_bytes(shared.protocol))
        .await;
    Ok(r)
}
