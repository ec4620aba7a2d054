//! Observability end to end: the real server (in-process on port 0, and the real binary),
//! scraped over HTTP. Every scrape is parsed whole with a Prometheus text-format parser, and
//! every line must be a HELP, a TYPE or a sample of a described metric, so a malformed
//! exposition fails. Traffic is driven with a raw-packet client so each counter's change is
//! known exactly.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use culex_config::Config;
use culex_proto::{
    encode, Connect, Packet, Properties, Protocol, PubResp, Publish, QoS, ReasonCode, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use culex_test_support::{RawClient, TestBroker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP response: status, headers (lower-case names), body.
struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of head")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("no status line")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    // Chunked bodies are not expected (Content-Length is known), but decode them if present.
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Samples by name and sorted labels (`name{a="1",b="2"}`); a histogram's buckets as
/// `name_bucket{le="0.5"}`.
#[derive(Debug)]
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn get(&self, key: &str) -> f64 {
        *self.0.get(key).unwrap_or_else(|| panic!("no sample {key}"))
    }
}

/// Parses a whole exposition strictly.
fn parse_exposition(body: &str) -> Result<Metrics> {
    let lines: Vec<&str> = body.lines().collect();
    let mut sample_lines = 0;
    for l in &lines {
        let l = l.trim();
        if l.is_empty() {
            continue;
        }
        if l.starts_with('#') {
            ensure!(
                l.starts_with("# HELP ") || l.starts_with("# TYPE "),
                "unexpected comment line: {l}"
            );
        } else {
            sample_lines += 1;
        }
    }
    let scrape = prometheus_parse::Scrape::parse(lines.iter().map(|l| Ok((*l).to_owned())))?;
    // The parser folds a histogram's `_bucket` lines into one sample.
    let parsed: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.len(),
            _ => 1,
        })
        .sum();
    ensure!(
        parsed == sample_lines,
        "{} sample lines but {} parsed samples:\n{body}",
        sample_lines,
        parsed
    );
    let mut out = HashMap::new();
    for s in scrape.samples {
        // The process metrics keep the standard names every Prometheus client exports.
        ensure!(
            s.metric.starts_with("culex_") || s.metric.starts_with("process_"),
            "metric without the culex_ prefix: {}",
            s.metric
        );
        let family = ["_total", "_sum", "_count"]
            .iter()
            .find_map(|suffix| s.metric.strip_suffix(suffix))
            .unwrap_or(&s.metric);
        ensure!(
            scrape.docs.contains_key(&s.metric) || scrape.docs.contains_key(family),
            "metric {} has no HELP",
            s.metric
        );
        for forbidden in ["client_id", "topic", "client"] {
            ensure!(
                s.labels.get(forbidden).is_none(),
                "unbounded label {forbidden} on {}",
                s.metric
            );
        }
        let labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let values = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => vec![(s.metric.clone(), labels, v)],
            prometheus_parse::Value::Histogram(buckets) => buckets
                .iter()
                .map(|b| {
                    let le = if b.less_than == f64::INFINITY {
                        "+Inf".to_owned()
                    } else {
                        b.less_than.to_string()
                    };
                    let mut labels = labels.clone();
                    labels.push(("le".to_owned(), le));
                    (format!("{}_bucket", s.metric), labels, b.count)
                })
                .collect(),
            other => bail!("unexpected value kind for {}: {other:?}", s.metric),
        };
        for (name, mut labels, value) in values {
            labels.sort();
            let key = if labels.is_empty() {
                name
            } else {
                let inner: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                format!("{name}{{{}}}", inner.join(","))
            };
            ensure!(
                out.insert(key.clone(), value).is_none(),
                "duplicate sample {key}"
            );
        }
    }
    Ok(Metrics(out))
}

async fn scrape(addr: SocketAddr) -> Result<Metrics> {
    let r = http_get(addr, "/metrics").await?;
    ensure!(r.status == 200, "status {}: {}", r.status, r.body);
    ensure!(
        r.headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "content type {:?}",
        r.headers.get("content-type")
    );
    parse_exposition(&r.body)
}

/// A raw client that counts the bytes it sends.
struct Client {
    raw: RawClient,
    sent: usize,
}

impl Client {
    async fn open(addr: SocketAddr) -> Result<Client> {
        Ok(Client {
            raw: RawClient::connect(addr, Protocol::V5).await?,
            sent: 0,
        })
    }

    async fn send(&mut self, p: Packet) -> Result<()> {
        let mut b = BytesMut::new();
        encode(&p, Protocol::V5, &mut b)?;
        self.sent += b.len();
        self.raw.send_bytes(&b).await
    }

    async fn recv(&mut self) -> Result<Packet> {
        self.raw.recv().await
    }
}

fn connect(id: &str, user: &str, password: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: id.to_owned(),
        will: None,
        username: Some(user.to_owned()),
        password: Some(Bytes::from(password.to_owned())),
        properties: Properties::default(),
    }))
}

fn publish(topic: &str, qos: QoS, id: u16, retain: bool, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(id),
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    })
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: filter.to_owned(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: Properties::default(),
    })
}

async fn connack(c: &mut Client) -> Result<ReasonCode> {
    match c.recv().await? {
        Packet::ConnAck(a) => Ok(a.reason_code),
        other => bail!("expected CONNACK, got {other:?}"),
    }
}

/// A broker with a password file (alice/secret), an ACL (alice may use a/# only), small
/// queues, no $SYS, and the metrics endpoint on port 0.
async fn secured_broker(dir: &tempfile::TempDir) -> Result<TestBroker> {
    let hash = culex_auth::password_hash(b"secret", culex_auth::HashKind::Sha512)?;
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, format!("alice:{hash}\n"))?;
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite a/#\n")?;
    let mut config = Config::default();
    config.security.allow_anonymous = false;
    config.security.password_file = Some(passwd);
    config.security.acl_file = Some(acl);
    config.limits.max_inflight_messages = 1;
    config.limits.max_queued_messages = 2;
    // The queue-full drop counter is what these tests watch; the default policy (block)
    // queues instead, and has its own tests (e2e flow, router flow).
    config.limits.queue_full_policy = culex_config::QueueFullPolicy::Drop;
    config.sys.interval = Duration::ZERO;
    TestBroker::start_with_metrics(config).await
}

fn delta(before: &Metrics, after: &Metrics, key: &str) -> f64 {
    after.get(key) - before.0.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_by_exactly_the_traffic() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = secured_broker(&dir).await?;
    let maddr = broker.metrics_addr().context("metrics endpoint")?;
    let m0 = scrape(maddr).await?;
    let mut bytes_in = 0;

    // A bad password.
    let mut bad = Client::open(broker.addr).await?;
    bad.send(connect("bad", "alice", "wrong")).await?;
    ensure!(connack(&mut bad).await? == ReasonCode::NotAuthorized);
    bytes_in += bad.sent;

    // A subscriber with an in-flight window of 1 and a queue of 2 that never acknowledges.
    let mut sub = Client::open(broker.addr).await?;
    sub.send(connect("sub", "alice", "secret")).await?;
    ensure!(connack(&mut sub).await? == ReasonCode::Success);
    sub.send(subscribe("a/#", QoS::AtLeastOnce)).await?;
    ensure!(matches!(sub.recv().await?, Packet::SubAck(_)));
    // Subscribing outside the ACL is refused.
    sub.send(subscribe("b/#", QoS::AtLeastOnce)).await?;
    match sub.recv().await? {
        Packet::SubAck(a) => ensure!(a.reason_codes == vec![ReasonCode::NotAuthorized]),
        other => bail!("expected SUBACK, got {other:?}"),
    }

    let mut publ = Client::open(broker.addr).await?;
    publ.send(connect("pub", "alice", "secret")).await?;
    ensure!(connack(&mut publ).await? == ReasonCode::Success);
    publ.send(publish("a/0", QoS::AtMostOnce, 0, false, b"zero"))
        .await?;
    publ.send(publish("a/1", QoS::AtLeastOnce, 1, false, b"one"))
        .await?;
    ensure!(matches!(publ.recv().await?, Packet::PubAck(_)));
    publ.send(publish("a/2", QoS::ExactlyOnce, 2, false, b"two"))
        .await?;
    ensure!(matches!(publ.recv().await?, Packet::PubRec(_)));
    publ.send(Packet::PubRel(PubResp::new(2))).await?;
    ensure!(matches!(publ.recv().await?, Packet::PubComp(_)));
    // a/2 waits in the queue behind a/1; a/3 fills it; a/4 is dropped (queue full).
    for (i, t) in [(3, "a/3"), (4, "a/4")] {
        publ.send(publish(t, QoS::AtLeastOnce, i, false, b"more"))
            .await?;
        ensure!(matches!(publ.recv().await?, Packet::PubAck(_)));
    }
    // Denied by the ACL: acknowledged with 0x87 and dropped.
    publ.send(publish("b/1", QoS::AtLeastOnce, 5, false, b"no"))
        .await?;
    match publ.recv().await? {
        Packet::PubAck(a) => ensure!(a.reason_code == ReasonCode::NotAuthorized),
        other => bail!("expected PUBACK, got {other:?}"),
    }
    // A retained message (QoS 0: delivered at once, beside the full queue).
    publ.send(publish("a/r", QoS::AtMostOnce, 0, true, b"kept"))
        .await?;
    // PINGREQ/PINGRESP as a barrier: everything above has reached the router.
    publ.send(Packet::PingReq).await?;
    ensure!(matches!(publ.recv().await?, Packet::PingResp));
    bytes_in += sub.sent + publ.sent;

    // The subscriber got a/0 (QoS 0), a/1 (QoS 1, unacknowledged) and a/r (QoS 0).
    for want in ["a/0", "a/1", "a/r"] {
        match sub.recv().await? {
            Packet::Publish(p) => ensure!(p.topic == want, "got {} for {want}", p.topic),
            other => bail!("expected PUBLISH, got {other:?}"),
        }
    }

    let m = scrape(maddr).await?;
    let d = |k: &str| delta(&m0, &m, k);
    assert_eq!(d("culex_connections_accepted_total"), 3.0);
    assert_eq!(d("culex_client_connects_total"), 2.0);
    assert_eq!(d("culex_auth_failures_total"), 1.0);
    assert_eq!(
        d("culex_connections_refused_total{reason=\"not_authorized\"}"),
        1.0
    );
    assert_eq!(
        d("culex_connections_refused_total{reason=\"max_connections\"}"),
        0.0
    );
    assert_eq!(m.get("culex_clients_connected"), 2.0);
    assert_eq!(m.get("culex_sessions"), 2.0);
    assert_eq!(m.get("culex_persistent_sessions_offline"), 0.0);
    assert_eq!(d("culex_messages_received_total{qos=\"0\"}"), 2.0);
    assert_eq!(d("culex_messages_received_total{qos=\"1\"}"), 4.0);
    assert_eq!(d("culex_messages_received_total{qos=\"2\"}"), 1.0);
    assert_eq!(d("culex_messages_sent_total{qos=\"0\"}"), 2.0);
    assert_eq!(d("culex_messages_sent_total{qos=\"1\"}"), 1.0);
    assert_eq!(d("culex_messages_sent_total{qos=\"2\"}"), 0.0);
    assert_eq!(d("culex_packets_received_total{type=\"connect\"}"), 3.0);
    assert_eq!(d("culex_packets_received_total{type=\"publish\"}"), 7.0);
    assert_eq!(d("culex_packets_received_total{type=\"pubrel\"}"), 1.0);
    assert_eq!(d("culex_packets_received_total{type=\"subscribe\"}"), 2.0);
    assert_eq!(d("culex_packets_received_total{type=\"pingreq\"}"), 1.0);
    assert_eq!(d("culex_packets_sent_total{type=\"connack\"}"), 3.0);
    assert_eq!(d("culex_packets_sent_total{type=\"puback\"}"), 4.0);
    assert_eq!(d("culex_packets_sent_total{type=\"pubrec\"}"), 1.0);
    assert_eq!(d("culex_packets_sent_total{type=\"pubcomp\"}"), 1.0);
    assert_eq!(d("culex_packets_sent_total{type=\"suback\"}"), 2.0);
    assert_eq!(d("culex_packets_sent_total{type=\"publish\"}"), 3.0);
    assert_eq!(d("culex_received_bytes_total"), bytes_in as f64);
    assert_eq!(
        d("culex_publish_received_bytes_total"),
        (4 + 3 + 3 + 4 + 4 + 2 + 4) as f64
    );
    assert_eq!(d("culex_publish_sent_bytes_total"), (4 + 3 + 4) as f64);
    assert_eq!(d("culex_publish_dropped_total{reason=\"queue_full\"}"), 1.0);
    assert_eq!(d("culex_publish_dropped_total{reason=\"acl_denied\"}"), 1.0);
    assert_eq!(
        d("culex_publish_dropped_total{reason=\"outbox_full\"}"),
        0.0
    );
    assert_eq!(d("culex_acl_denied_total{action=\"publish\"}"), 1.0);
    assert_eq!(d("culex_acl_denied_total{action=\"subscribe\"}"), 1.0);
    assert_eq!(m.get("culex_inflight_messages"), 1.0);
    assert_eq!(m.get("culex_queued_messages"), 2.0);
    assert_eq!(m.get("culex_subscriptions"), 1.0);
    assert_eq!(m.get("culex_shared_subscriptions"), 0.0);
    assert_eq!(m.get("culex_retained_messages"), 1.0);
    assert_eq!(m.get("culex_retained_bytes"), 4.0);
    assert_eq!(d("culex_config_reloads_total{result=\"ok\"}"), 0.0);
    assert_eq!(m.get("culex_router_queue_capacity"), 16384.0);
    assert!(m.get("culex_router_queue_depth") >= 0.0);
    assert_eq!(
        m.get(&format!(
            "culex_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    // Process metrics, from metrics-process at scrape time, under their standard names.
    assert!(m.get("process_resident_memory_bytes") > 0.0);
    assert!(m.get("process_open_fds") > 0.0);
    assert!(m.get("process_max_fds") >= m.get("process_open_fds"));
    assert!(m.get("process_start_time_seconds") > 0.0);
    assert!(m.0.keys().all(|k| !k.starts_with("culex_process_")));
    // max_connections is unlimited by default: no limit to report.
    assert!(!m.0.contains_key("culex_max_connections"));

    // A reload is counted.
    broker
        .server()
        .reload()
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let m2 = scrape(maddr).await?;
    assert_eq!(
        delta(&m, &m2, "culex_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn health_and_readiness() -> Result<()> {
    let broker = TestBroker::start_with_metrics(Config::default()).await?;
    let addr = broker.metrics_addr().context("metrics endpoint")?;
    assert!(broker.server().is_ready());
    let r = http_get(addr, "/healthz").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = http_get(addr, "/readyz").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    assert_eq!(http_get(addr, "/other").await?.status, 404);
    broker.stop().await;
    // After shutdown the endpoint is gone.
    assert!(TcpStream::connect(addr).await.is_err());
    Ok(())
}

#[tokio::test]
async fn test_brokers_do_not_serve_metrics_unless_asked() -> Result<()> {
    let broker = TestBroker::start().await?;
    assert_eq!(broker.metrics_addr(), None);
    broker.stop().await;
    Ok(())
}

/// Reads `$SYS` messages until `done` says the collected values are complete.
async fn collect_sys(
    c: &mut Client,
    values: &mut HashMap<String, String>,
    done: impl Fn(&HashMap<String, String>) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(values) {
        let p = tokio::time::timeout_at(deadline, c.recv())
            .await
            .context("timed out waiting for $SYS values")??;
        if let Packet::Publish(p) = p {
            values.insert(
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn sys_topics_arrive_and_match_the_metrics() -> Result<()> {
    let mut config = Config::default();
    config.sys.interval = Duration::from_secs(1);
    let broker = TestBroker::start_with_metrics(config).await?;
    let maddr = broker.metrics_addr().context("metrics endpoint")?;

    let mut sub = Client::open(broker.addr).await?;
    sub.send(connect("sys-watcher", "u", "p")).await?;
    ensure!(connack(&mut sub).await? == ReasonCode::Success);
    sub.send(subscribe("$SYS/#", QoS::AtMostOnce)).await?;
    ensure!(matches!(sub.recv().await?, Packet::SubAck(_)));

    let mut publ = Client::open(broker.addr).await?;
    publ.send(connect("sys-pub", "u", "p")).await?;
    ensure!(connack(&mut publ).await? == ReasonCode::Success);
    for i in 0..5u16 {
        publ.send(publish("x/y", QoS::AtLeastOnce, i + 1, false, b"12345"))
            .await?;
        ensure!(matches!(publ.recv().await?, Packet::PubAck(_)));
    }

    // Topics of every full publication. A tick publishes them in one burst, so wait for all of
    // them, not only the counters: the tick that carries the counters may be the first one.
    const EVERY_TICK: [&str; 15] = [
        "$SYS/broker/clients/maximum",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/messages/stored",
        "$SYS/broker/store/messages/count",
        "$SYS/broker/store/messages/bytes",
        "$SYS/broker/shared_subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/publish/messages/sent",
        "$SYS/broker/publish/bytes/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/load/messages/received/1min",
        "$SYS/broker/load/connections/5min",
        "$SYS/broker/load/sockets/15min",
    ];
    let mut sys = HashMap::new();
    collect_sys(&mut sub, &mut sys, |v| {
        EVERY_TICK.iter().all(|t| v.contains_key(*t))
            && v.get("$SYS/broker/publish/messages/received")
                .map(String::as_str)
                == Some("5")
            && v.get("$SYS/broker/publish/bytes/received")
                .map(String::as_str)
                == Some("25")
            && v.get("$SYS/broker/clients/connected").map(String::as_str) == Some("2")
            && v.get("$SYS/broker/subscriptions/count").map(String::as_str) == Some("1")
            && v.contains_key("$SYS/broker/load/publish/received/15min")
    })
    .await?;
    let m = scrape(maddr).await?;
    let received: f64 = ["0", "1", "2"]
        .iter()
        .map(|q| m.get(&format!("culex_messages_received_total{{qos=\"{q}\"}}")))
        .sum();
    assert_eq!(received, 5.0);
    assert_eq!(m.get("culex_clients_connected"), 2.0);
    assert_eq!(m.get("culex_subscriptions"), 1.0);
    assert_eq!(m.get("culex_publish_received_bytes_total"), 25.0);
    assert_eq!(sys["$SYS/broker/publish/bytes/received"], "25");
    assert_eq!(
        sys["$SYS/broker/version"],
        format!("culex version {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(sys["$SYS/broker/uptime"].ends_with(" seconds"));
    assert_eq!(sys["$SYS/broker/clients/total"], "2");
    assert_eq!(sys["$SYS/broker/clients/disconnected"], "0");
    assert_eq!(sys["$SYS/broker/publish/messages/dropped"], "0");
    for topic in EVERY_TICK {
        let v = sys.get(topic).with_context(|| format!("{topic} missing"))?;
        ensure!(v.parse::<f64>().is_ok(), "{topic} = {v:?}");
    }
    // $SYS messages are retained: a late subscriber gets them at once.
    let mut late = Client::open(broker.addr).await?;
    late.send(connect("late", "u", "p")).await?;
    ensure!(connack(&mut late).await? == ReasonCode::Success);
    late.send(subscribe("$SYS/broker/version", QoS::AtMostOnce))
        .await?;
    ensure!(matches!(late.recv().await?, Packet::SubAck(_)));
    match late.recv().await? {
        Packet::Publish(p) => ensure!(p.retain && p.topic == "$SYS/broker/version"),
        other => bail!("expected the retained version, got {other:?}"),
    }
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn the_binary_serves_metrics_where_configured_and_logs_json() -> Result<()> {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("culex.conf");
    std::fs::write(
        &conf,
        "listener 0 127.0.0.1\nallow_anonymous true\nmetrics_listener 127.0.0.1:0\nsys_interval 0\nlog_format json\n",
    )?;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_culex"))
        .arg("-c")
        .arg(&conf)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr: Option<SocketAddr> = None;
    let mut lines = Vec::new();
    while addr.is_none() {
        let line = rx
            .recv_timeout(WAIT)
            .with_context(|| format!("no 'metrics on' line; got {lines:?}"))?;
        ensure!(
            line.starts_with('{') && line.ends_with('}'),
            "not a JSON line: {line}"
        );
        if let Some(rest) = line.split("metrics on ").nth(1) {
            addr = Some(rest.split('"').next().context("address")?.parse()?);
        }
        lines.push(line);
    }
    let addr = addr.context("address")?;
    let result = async {
        // "metrics on" is logged before the MQTT listeners are bound: /readyz may still say
        // 503 (not ready) for a moment, then 200.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = http_get(addr, "/readyz").await?;
            if r.status == 200 {
                break;
            }
            ensure!(r.status == 503, "readyz {}", r.status);
            ensure!(tokio::time::Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let m = scrape(addr).await?;
        ensure!(m.get("culex_clients_connected") == 0.0);
        ensure!(m.get("culex_uptime_seconds") >= 0.0);
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[tokio::test]
async fn store_metrics_count_commits_when_persistence_is_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.security.allow_anonymous = true;
    config.sys.interval = Duration::ZERO;
    config.persistence.enabled = true;
    config.persistence.dir = dir.path().join("store");
    config.limits.max_connections = Some(50);
    let broker = TestBroker::start_with_metrics(config).await?;
    let addr = broker.metrics_addr().context("metrics endpoint")?;
    let before = scrape(addr).await?;
    assert_eq!(before.get("culex_store_failed"), 0.0);
    // The configured limit, beside the connections it limits.
    assert_eq!(before.get("culex_max_connections"), 50.0);

    let mut c = Client::open(broker.addr).await?;
    c.send(Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: "store-metrics".to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    })))
    .await?;
    assert_eq!(connack(&mut c).await?, ReasonCode::Success);
    // A retained QoS 1 message is written to the store; its PUBACK comes once it is durable.
    c.send(publish("kept/x", QoS::AtLeastOnce, 1, true, b"v"))
        .await?;
    match c.recv().await? {
        Packet::PubAck(a) => assert_eq!(a.packet_id, 1),
        other => bail!("expected PUBACK, got {other:?}"),
    }
    let after = scrape(addr).await?;
    assert!(delta(&before, &after, "culex_store_commits_total") >= 1.0);
    assert!(delta(&before, &after, "culex_store_ops_total") >= 1.0);
    assert!(after.get("culex_store_last_commit_seconds") > 0.0);
    assert_eq!(after.get("culex_store_backlog_ops"), 0.0);

    // Commit durations as a histogram: cumulative buckets from 100 µs to 10 s and +Inf,
    // counting every commit; no lifetime mean.
    let h = "culex_store_commit_duration_seconds";
    let les = [
        "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
        "0.25", "0.5", "1", "2.5", "5", "10", "+Inf",
    ];
    let buckets: Vec<f64> = les
        .iter()
        .map(|le| after.get(&format!("{h}_bucket{{le=\"{le}\"}}")))
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    let count = after.get(&format!("{h}_count"));
    assert_eq!(buckets.last().copied(), Some(count));
    assert_eq!(count, after.get("culex_store_commits_total"));
    assert!(delta(&before, &after, &format!("{h}_count")) >= 1.0);
    assert!(after.get(&format!("{h}_sum")) > 0.0);
    let histogram_keys = after.0.keys().filter(|k| k.starts_with(h)).count();
    assert_eq!(histogram_keys, les.len() + 2, "only _bucket, _sum, _count");
    broker.stop().await;
    Ok(())
}
