//! Several Culex processes acting as one broker over NATS JetStream (`cluster_backplane`):
//! real `nats-server` processes (Debian's package), real `culex` processes, rumqttc clients.
//! Skipped with a note when nats-server is missing, unless `CULEX_REQUIRE_NATS=1` (CI).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

#[path = "bridge_support/mod.rs"]
mod bridge_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bridge_support::{free_port, http_get, metric, Culex, Mqtt, TIMEOUT};
use rumqttc::QoS;
use tempfile::TempDir;

/// Held by every test here for its whole run: each starts NATS and three nodes, and many keep
/// a steady load on them while something happens (a NATS server or a node killed, sessions
/// moving, a stream deleted); two at once overload a 2-core machine (queues reach
/// `max_queued_messages` and their drops are counted, late copies and waits time out), which
/// is not what they test.
static UNDER_LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`UNDER_LOAD`], also after a test that held it failed.
fn under_load() -> std::sync::MutexGuard<'static, ()> {
    UNDER_LOAD.lock().unwrap_or_else(|e| e.into_inner())
}

fn have_nats() -> bool {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CULEX_REQUIRE_NATS").is_none(),
            "nats-server is required (CULEX_REQUIRE_NATS is set)"
        );
        eprintln!("note: nats-server not installed; cluster test skipped");
    }
    found
}

/// One `nats-server` with JetStream, part of a NATS cluster when given routes.
struct NatsServer {
    port: u16,
    cluster_port: u16,
    name: String,
    dir: TempDir,
    child: Option<Child>,
    routes: Vec<u16>,
}

impl NatsServer {
    /// Starts the server (again, after [`NatsServer::kill`]) on its ports.
    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(self.dir.path())
            .args(["--name", &self.name]);
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args([
                "--cluster_name",
                "culex-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
                "--routes",
                &routes.join(","),
            ]);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + TIMEOUT;
        let mut log = Vec::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("Server is ready") => break,
                Ok(line) => log.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "nats-server {} did not start:\n{}",
                        self.name,
                        log.join("\n")
                    ));
                }
            }
        }
        // Keep draining its log so that it never blocks on a full pipe.
        thread::spawn(move || while rx.recv().is_ok() {});
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// NATS servers for a test: one, or a cluster of three.
struct Nats {
    servers: Vec<NatsServer>,
}

impl Nats {
    /// Starts `count` servers on free ports; again on other ports when one of them could not
    /// start (a port found free may be taken by another test's process before the server
    /// binds it).
    fn start(count: usize) -> Nats {
        let mut last = String::new();
        for _ in 0..5 {
            match Nats::try_start(count) {
                Ok(nats) => return nats,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    fn try_start(count: usize) -> Result<Nats, String> {
        let ports: Vec<(u16, u16)> = (0..count).map(|_| (free_port(), free_port())).collect();
        let mut servers: Vec<NatsServer> = ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cluster_port))| NatsServer {
                port,
                cluster_port,
                name: format!("n{}", i + 1),
                dir: TempDir::new().expect("tempdir"),
                child: None,
                routes: if count > 1 {
                    ports
                        .iter()
                        .filter(|(p, _)| *p != port)
                        .map(|(_, c)| *c)
                        .collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        for s in &mut servers {
            s.try_spawn()?;
        }
        Ok(Nats { servers })
    }

    fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A `culex` node of the cluster on `nats`, with its MQTT and metrics ports.
struct Node {
    /// Its process (killed on drop).
    culex: Culex,
    port: u16,
    metrics: u16,
}

impl Node {
    /// The body of `/readyz`.
    fn readyz(&self) -> String {
        let response = http_get(self.metrics, "/readyz");
        response
            .split_once("\r\n\r\n")
            .map_or(response.clone(), |(_, body)| body.to_owned())
    }

    fn metric(&self, series: &str) -> Option<f64> {
        metric(&http_get(self.metrics, "/metrics"), series)
    }

    /// The node's warnings and closed connections from its log, for a failure's message.
    fn warnings(&self) -> String {
        self.culex
            .log()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains("connection closed"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every nonzero series of the node's cluster and drop metrics, for a failure's message.
    fn drops(&self) -> String {
        let text = http_get(self.metrics, "/metrics");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with("culex_cluster_") || l.contains("dropped"))
            .filter(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn node(nats: &Nats, name: &str, replicas: usize, extra: &str) -> Node {
    let culex = Culex::start(&format!(
        "listener 0 127.0.0.1\nallow_anonymous true\nmetrics_listener 127.0.0.1:0\n\
         cluster_backplane {}\ncluster_node_name {name}\ncluster_replicas {replicas}\n{extra}",
        nats.urls()
    ));
    let metrics = culex.port_after("metrics on 127.0.0.1:");
    let port = culex.port_after("listening on 127.0.0.1:");
    culex.wait_in_log("cluster link up");
    Node {
        culex,
        port,
        metrics,
    }
}

/// Waits until `cond` holds (polling), or fails with `what`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `count` messages on `client`, as payload -> times received.
fn receive(client: &Mqtt, count: usize) -> HashMap<String, usize> {
    let mut got: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + TIMEOUT;
    for _ in 0..count {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = client
            .messages
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("got only {got:?}"));
        *got.entry(String::from_utf8_lossy(&p.payload).into_owned())
            .or_insert(0) += 1;
    }
    got
}

/// Everything `client` receives until `fence` arrives on `topic` (the fence excluded), as
/// payload -> times received.
fn until_fence(client: &Mqtt, topic: &str, fence: &str) -> HashMap<String, usize> {
    let mut got = HashMap::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = client
            .messages
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no fence {fence:?}; got {got:?}"));
        let payload = String::from_utf8_lossy(&p.payload).into_owned();
        if p.topic == topic && payload == fence {
            return got;
        }
        *got.entry(payload).or_insert(0) += 1;
    }
}

/// A PUBLISH accepted on node 1 reaches subscribers on nodes 2 and 3 at QoS 0, 1 and 2, each
/// once; node 1's own subscriber gets it once too (nothing echoes back from the backplane).
#[test]
fn messages_cross_nodes_once_at_every_qos() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let n3 = node(&nats, "node3", 1, "");
    let subs: Vec<Mqtt> = [&n1, &n2, &n3]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let c = Mqtt::connect(n.port, &format!("sub{i}"), true);
            c.subscribe("t/#", QoS::ExactlyOnce);
            c
        })
        .collect();
    let publisher = Mqtt::connect(n1.port, "pub", true);
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let mut expected = HashMap::new();
    for i in 0..30 {
        let payload = format!("m{i}");
        publisher.publish(&format!("t/{}", i % 4), &payload, qos[i % 3]);
        expected.insert(payload, 1);
    }
    // QoS 0 takes another path than QoS 1/2 (core NATS, not the stream): wait for all, then
    // fence with one more of each and check nothing arrived twice.
    for (i, sub) in subs.iter().enumerate() {
        let mut got: HashMap<String, usize> = HashMap::new();
        let deadline = Instant::now() + TIMEOUT;
        while got.len() < expected.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let p = sub
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("subscriber on node {} got only {got:?}", i + 1));
            *got.entry(String::from_utf8_lossy(&p.payload).into_owned())
                .or_insert(0) += 1;
        }
        assert_eq!(got, expected, "node {}", i + 1);
    }
    publisher.publish("t/fence", "fence1", QoS::AtLeastOnce);
    for (i, sub) in subs.iter().enumerate() {
        let extra = until_fence(sub, "t/fence", "fence1");
        assert!(extra.is_empty(), "node {} got again: {extra:?}", i + 1);
    }
    drop((n1, n2, n3));
}

/// Retained messages and wills cross nodes: a retained message published on node 1 is
/// retained on node 2 for a later subscriber, and the will of a client of node 1 that dies
/// reaches a subscriber on node 2.
#[test]
fn retained_messages_and_wills_cross_nodes() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let watcher = Mqtt::connect(n2.port, "watcher", true);
    watcher.subscribe("state/#", QoS::AtLeastOnce);
    let publisher = Mqtt::connect(n1.port, "pub", true);
    publisher
        .client
        .publish("state/lamp", QoS::AtLeastOnce, true, b"on".to_vec())
        .unwrap();
    watcher.recv_matching("state/lamp", "on");
    let late = Mqtt::connect(n2.port, "late", true);
    late.subscribe("state/#", QoS::AtLeastOnce);
    let p = late.recv_matching("state/lamp", "on");
    assert!(p.retain, "delivered as a retained message");

    // A node that joins later gets the cluster's retained messages from the bucket; a cleared
    // one is gone there too.
    publisher
        .client
        .publish("state/door", QoS::AtLeastOnce, true, b"open".to_vec())
        .unwrap();
    watcher.recv_matching("state/door", "open");
    publisher
        .client
        .publish("state/door", QoS::AtLeastOnce, true, Vec::new())
        .unwrap();
    watcher.recv_matching("state/door", "");
    let n3 = node(&nats, "node3", 1, "");
    let newcomer = Mqtt::connect(n3.port, "newcomer", true);
    newcomer.subscribe("state/#", QoS::AtLeastOnce);
    let p = newcomer.recv_matching("state/lamp", "on");
    assert!(p.retain);
    newcomer.subscribe("fence/#", QoS::AtLeastOnce);
    publisher.publish("fence/x", "fence", QoS::AtLeastOnce);
    let extra = until_fence(&newcomer, "fence/x", "fence");
    assert!(
        extra.is_empty(),
        "the cleared retained message came back: {extra:?}"
    );

    // A will: its client's connection drops without DISCONNECT.
    let mut opts = rumqttc::MqttOptions::new("mortal", "127.0.0.1", n1.port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_last_will(rumqttc::LastWill::new(
        "state/mortal",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut connection) = rumqttc::Client::new(opts, 10);
    let (tx, rx) = mpsc::channel();
    let conn_thread = thread::spawn(move || {
        for event in connection.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) = event {
                let _ = tx.send(());
                return; // dropping the connection closes the socket: no DISCONNECT
            }
        }
    });
    rx.recv_timeout(TIMEOUT).expect("CONNACK");
    conn_thread.join().expect("thread");
    drop(client);
    watcher.recv_matching("state/mortal", "gone");
}

/// While the backplane is down a node says so (`/readyz` 503, the metric 0), keeps serving
/// its own clients and keeps the QoS 1 messages published meanwhile; once NATS is back they
/// reach the other node, each once.
#[test]
fn a_backplane_outage_loses_no_acknowledged_message() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let mut nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    assert_eq!(n1.readyz(), "ready\n");
    let remote = Mqtt::connect(n2.port, "remote", true);
    remote.subscribe("t/#", QoS::AtLeastOnce);
    let local = Mqtt::connect(n1.port, "local", true);
    local.subscribe("t/#", QoS::AtLeastOnce);
    let publisher = Mqtt::connect(n1.port, "pub", true);
    publisher.publish("t/a", "before", QoS::AtLeastOnce);
    remote.recv_matching("t/a", "before");
    local.recv_matching("t/a", "before");

    nats.servers[0].kill();
    wait_until("node 1 not ready", || n1.readyz().contains("backplane"));
    assert_eq!(n1.metric("culex_cluster_backplane_connected"), Some(0.0));
    for i in 0..20 {
        publisher.publish("t/a", &format!("during{i}"), QoS::AtLeastOnce);
    }
    // Node 1's own subscriber is served all along.
    let got = receive(&local, 20);
    assert_eq!(got.len(), 20, "{got:?}");

    // Their first attempts to reach JetStream fail (and are retried).
    wait_until("failed publications", || {
        n1.metric("culex_cluster_publish_failures_total")
            .is_some_and(|n| n >= 1.0)
    });
    assert!(n1
        .metric("culex_cluster_lag_messages{stage=\"pending\"}")
        .is_some_and(|n| n >= 1.0));
    nats.servers[0].spawn();
    wait_until("node 1 ready again", || n1.readyz() == "ready\n");
    let got = receive(&remote, 20);
    let want: HashMap<String, usize> = (0..20).map(|i| (format!("during{i}"), 1)).collect();
    assert_eq!(got, want);
    publisher.publish("t/fence", "fence", QoS::AtLeastOnce);
    let extra = until_fence(&remote, "t/fence", "fence");
    assert!(extra.is_empty(), "again: {extra:?}");
}

/// Three NATS servers (JetStream, 3 replicas) under three Culex nodes: a stream of QoS 1
/// messages published on node 1 while one NATS server is killed (SIGKILL) and restarted
/// reaches the subscribers on nodes 2 and 3, every message (at least once). The link's
/// JetStream publications in flight to the dead server fail after a few seconds and go again
/// through another: node 1 holds its publisher's PUBACKs meanwhile. Until the broker stopped
/// counting the keepalive of a connection it was not reading (it owed the publisher too many
/// answers), it closed the publisher for keepalive timeout after 7.5 s, and the clean-session
/// publisher dropped its 99 messages in flight (about one run in five on a 2-core machine).
#[test]
fn a_nats_server_killed_under_load_loses_nothing() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let mut nats = Nats::start(3);
    let n1 = node(&nats, "node1", 3, "");
    let n2 = node(&nats, "node2", 3, "");
    let n3 = node(&nats, "node3", 3, "");
    let subs: Vec<Mqtt> = [&n2, &n3]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let c = Mqtt::connect(n.port, &format!("sub{i}"), true);
            c.subscribe("load/#", QoS::AtLeastOnce);
            c
        })
        .collect();
    let publisher = Mqtt::connect(n1.port, "pub", true);
    const N: usize = 600;
    for i in 0..N {
        if i == N / 3 {
            nats.servers[1].kill();
        }
        if i == 2 * N / 3 {
            nats.servers[1].spawn();
        }
        publisher.publish("load/x", &format!("m{i}"), QoS::AtLeastOnce);
    }
    // What each subscriber still misses when the time is up (both are waited for, so that a
    // failure says whether the copies for one node or for both went missing).
    let deadline = Instant::now() + TIMEOUT * 2;
    let missing: Vec<Vec<usize>> = subs
        .iter()
        .map(|sub| {
            let mut missing: std::collections::BTreeSet<usize> = (0..N).collect();
            while !missing.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(p) = sub.messages.recv_timeout(left) else {
                    break;
                };
                if let Some(i) = String::from_utf8_lossy(&p.payload)
                    .strip_prefix('m')
                    .and_then(|i| i.parse().ok())
                {
                    missing.remove(&i);
                }
            }
            missing.into_iter().collect()
        })
        .collect();
    assert!(
        missing.iter().all(Vec::is_empty),
        "missing of {N}: on node 2 {:?}, on node 3 {:?}\nnode1: {}\n{}\nnode2: {}\n{}\nnode3: {}\n{}",
        missing[0],
        missing[1],
        n1.drops(),
        n1.warnings(),
        n2.drops(),
        n2.warnings(),
        n3.drops(),
        n3.warnings()
    );
    drop((n1, n2, n3));
}

/// A client identifier is unique in the cluster: when a client connects on node 2 with the
/// identifier of a client of node 1, node 1's client is disconnected (taken over) and the new
/// one stays.
#[test]
fn a_client_id_connecting_on_another_node_takes_over() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    // The first client: its event loop reports the end of its connection and stops.
    let mut opts = rumqttc::MqttOptions::new("roamer", "127.0.0.1", n1.port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (_first, mut connection) = rumqttc::Client::new(opts, 10);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = tx.send("connected");
                }
                Err(_) => {
                    let _ = tx.send("closed");
                    return;
                }
                Ok(_) => {}
            }
        }
    });
    assert_eq!(rx.recv_timeout(TIMEOUT), Ok("connected"));
    wait_until("node 1's claim", || {
        n1.metric("culex_cluster_claims_total{direction=\"sent\"}")
            .is_some_and(|n| n >= 1.0)
    });
    assert_eq!(
        rx.try_recv(),
        Err(mpsc::TryRecvError::Empty),
        "still connected"
    );

    let second = Mqtt::connect(n2.port, "roamer", true);
    assert_eq!(
        rx.recv_timeout(TIMEOUT),
        Ok("closed"),
        "node 1's client taken over"
    );
    // The newer connection is not taken over in turn: it still works.
    second.subscribe("roam/#", QoS::AtLeastOnce);
    let other = Mqtt::connect(n1.port, "other", true);
    other.publish("roam/x", "still here", QoS::AtLeastOnce);
    second.recv_matching("roam/x", "still here");
    // Had it been taken over, its client would have reconnected and claimed the id again.
    assert_eq!(
        n2.metric("culex_cluster_claims_total{direction=\"sent\"}"),
        Some(1.0)
    );
}

/// A publisher's PUBACK means the backplane has its message: while NATS is down a node holds
/// its publishers' acknowledgements (and says it is not ready). Killed (SIGKILL) meanwhile and
/// restarted, it still hands over what it had received (its link's session is persisted with
/// the node's store), and the publisher, resending what was never acknowledged, gets every
/// message to the subscriber on another node.
#[test]
fn acknowledgements_wait_for_the_backplane_and_a_killed_node_keeps_what_it_received() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let mut nats = Nats::start(1);
    let store = TempDir::new().expect("tempdir");
    // A port that stays the same across the restart, for the publisher to come back to.
    let fixed = free_port();
    let mut n1 = node(
        &nats,
        "node1",
        1,
        &format!(
            "persistence true\npersistence_location {}/\nlistener {fixed} 127.0.0.1\n",
            store.path().display()
        ),
    );
    let n2 = node(&nats, "node2", 1, "");
    let sub = Mqtt::connect(n2.port, "sub", true);
    sub.subscribe("k/#", QoS::AtLeastOnce);
    nats.servers[0].kill();
    wait_until("node 1 without backplane", || {
        n1.readyz().contains("backplane")
    });

    // A publisher that counts its PUBACKs.
    let mut opts = rumqttc::MqttOptions::new("pub", "127.0.0.1", fixed);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(100);
    opts.set_clean_session(false);
    let (client, mut connection) = rumqttc::Client::new(opts, 1000);
    let (tx, acks) = mpsc::channel();
    thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Reconnects (node 1 restarts) and resends what was not acknowledged.
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    const N: usize = 500;
    for i in 0..N {
        client
            .publish("k/x", QoS::AtLeastOnce, false, format!("m{i}").into_bytes())
            .unwrap();
    }
    wait_until("node 1 to hold publications for the backplane", || {
        let queued = n1
            .metric("culex_cluster_lag_messages{stage=\"queued\"}")
            .unwrap_or(0.0);
        let pending = n1
            .metric("culex_cluster_lag_messages{stage=\"pending\"}")
            .unwrap_or(0.0);
        queued + pending >= 10.0
    });
    assert_eq!(
        acks.try_recv(),
        Err(mpsc::TryRecvError::Empty),
        "nothing acknowledged without the backplane"
    );
    n1.culex.crash_and_restart();
    nats.servers[0].spawn();
    n1.metrics = n1.culex.port_after("metrics on 127.0.0.1:");
    n1.culex.wait_for_line("cluster link up");

    let mut missing: std::collections::HashSet<String> = (0..N).map(|i| format!("m{i}")).collect();
    let deadline = Instant::now() + TIMEOUT;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(p) = sub.messages.recv_timeout(left) else {
            panic!(
                "{} of {N} messages never arrived; out {:?} in {:?} lag {:?} pending {:?} failures {:?}",
                missing.len(),
                n1.metric("culex_cluster_messages_out_total"),
                n2.metric("culex_cluster_messages_in_total"),
                n1.metric("culex_cluster_lag_messages{stage=\"queued\"}"),
                n1.metric("culex_cluster_lag_messages{stage=\"pending\"}"),
                n1.metric("culex_cluster_publish_failures_total")
            );
        };
        missing.remove(String::from_utf8_lossy(&p.payload).as_ref());
    }
    for i in 0..N {
        acks.recv_timeout(TIMEOUT)
            .unwrap_or_else(|_| panic!("only {i} of {N} acknowledged"));
    }
}

/// A node killed (SIGKILL) under load while a client publishes to it: every message the node
/// had acknowledged reaches the subscriber on another node (a PUBACK waits until the
/// backplane has the message, so the node's death cannot take an acknowledged one with it).
#[test]
fn a_killed_nodes_acknowledged_publications_survive_it() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let sub = Mqtt::connect(n1.port, "far", true);
    sub.subscribe("s/#", QoS::AtLeastOnce);

    // A publisher on node 2 that records which payloads were acknowledged.
    let mut opts = rumqttc::MqttOptions::new("doomed-pub", "127.0.0.1", n2.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_inflight(200);
    let (client, mut connection) = rumqttc::Client::new(opts, 5000);
    let (tx, acked) = mpsc::channel::<usize>();
    thread::spawn(move || {
        // Packet ids in the order of the publications: payload i went out as `ids[i]`.
        let mut in_flight: HashMap<u16, usize> = HashMap::new();
        let mut next = 0usize;
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    in_flight.insert(pkid, next);
                    next += 1;
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(a))) => {
                    if let Some(i) = in_flight.remove(&a.pkid) {
                        if tx.send(i).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    const N: usize = 3000;
    for i in 0..N {
        client
            .publish("s/x", QoS::AtLeastOnce, false, i.to_string().into_bytes())
            .unwrap();
    }
    let mut confirmed = std::collections::HashSet::new();
    while confirmed.len() < 1000 {
        confirmed.insert(acked.recv_timeout(TIMEOUT).expect("acknowledgements"));
    }
    drop(n2); // SIGKILL in the middle of the stream
    while let Ok(i) = acked.try_recv() {
        confirmed.insert(i);
    }
    let mut missing: std::collections::HashSet<String> =
        confirmed.iter().map(usize::to_string).collect();
    let deadline = Instant::now() + TIMEOUT;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(p) = sub.messages.recv_timeout(left) else {
            panic!(
                "{} of {} acknowledged messages never arrived",
                missing.len(),
                confirmed.len()
            );
        };
        missing.remove(String::from_utf8_lossy(&p.payload).as_ref());
    }
}

/// Cluster settings are read at start: a reload (SIGHUP) that changes them says they wait for
/// a restart, and the node keeps working in its cluster.
#[test]
fn a_reload_with_changed_cluster_settings_says_they_need_a_restart() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let text = std::fs::read_to_string(&n1.culex.path).unwrap();
    std::fs::write(
        &n1.culex.path,
        text.replace("cluster_node_name node1", "cluster_node_name renamed"),
    )
    .unwrap();
    n1.culex.signal("HUP");
    n1.culex.wait_in_log("cluster settings changed in ");
    let sub = Mqtt::connect(n2.port, "sub", true);
    sub.subscribe("r/#", QoS::AtLeastOnce);
    let publisher = Mqtt::connect(n1.port, "pub", true);
    publisher.publish("r/x", "after reload", QoS::AtLeastOnce);
    sub.recv_matching("r/x", "after reload");
}

/// A persistent session follows its client to another node: what was queued for it on node 2
/// while it was away (QoS 1 and 2, published on node 1) is delivered on node 3 with session
/// present = 1, its subscription works there, and node 2 keeps nothing of it; it moves back
/// the same way.
#[test]
fn a_persistent_session_resumes_on_another_node() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let n3 = node(&nats, "node3", 1, "");
    let mover = Mqtt::connect(n2.port, "mover", false);
    assert!(!mover.session_present);
    mover.subscribe("mv/#", QoS::ExactlyOnce);
    let watcher = Mqtt::connect(n2.port, "watcher", true);
    watcher.subscribe("mv/#", QoS::AtLeastOnce);
    let publisher = Mqtt::connect(n1.port, "pub", true);
    publisher.publish("mv/live", "live", QoS::AtLeastOnce);
    mover.recv_matching("mv/live", "live");
    watcher.recv_matching("mv/live", "live");
    drop(mover);
    wait_until("node 2 to see the mover go", || {
        n2.metric("culex_persistent_sessions_offline") == Some(1.0)
    });

    let mut expected = HashMap::new();
    for i in 0..100 {
        let payload = format!("q{i}");
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publisher.publish(&format!("mv/{}", i % 5), &payload, qos);
        expected.insert(payload, 1);
    }
    publisher.publish("mv/fence", "fence", QoS::AtLeastOnce);
    // Once the watcher on node 2 has the fence, node 2 has queued everything for the mover.
    assert_eq!(until_fence(&watcher, "mv/fence", "fence"), expected);

    let moved = Mqtt::connect(n3.port, "mover", false);
    assert!(moved.session_present, "the session came along");
    let mut got = receive(&moved, expected.len() + 1);
    assert_eq!(got.remove("fence"), Some(1));
    assert_eq!(got, expected, "every queued message, once");
    publisher.publish("mv/after", "after", QoS::AtLeastOnce);
    moved.recv_matching("mv/after", "after");
    assert_eq!(
        n2.metric("culex_cluster_sessions_total{event=\"out\"}"),
        Some(1.0)
    );
    assert_eq!(
        n3.metric("culex_cluster_sessions_total{event=\"in\"}"),
        Some(1.0)
    );
    assert_eq!(
        n2.metric("culex_persistent_sessions_offline"),
        Some(0.0),
        "nothing left of it on node 2"
    );

    // And back to node 2, with what was published while it moved.
    drop(moved);
    wait_until("node 3 to see the mover go", || {
        n3.metric("culex_persistent_sessions_offline") == Some(1.0)
    });
    publisher.publish("mv/away", "away", QoS::ExactlyOnce);
    publisher.publish("mv/fence", "fence2", QoS::AtLeastOnce);
    until_fence(&watcher, "mv/fence", "fence2");
    let back = Mqtt::connect(n2.port, "mover", false);
    assert!(back.session_present);
    back.recv_matching("mv/away", "away");
    back.recv_matching("mv/fence", "fence2");
    drop((n1, n2, n3));
}

/// A node is killed (SIGKILL) under QoS 1 load while it holds messages for a persistent
/// session whose client went away: the client comes back on another node, gets its session
/// (session present = 1) rebuilt from the cluster's record, and with what it had received
/// before, every message the publisher had acknowledged: those queued on the dead node and
/// those published while no node held the session (at least once: some may come twice).
/// A persistent session subscribed right before its node dies is rebuilt on another node with
/// every message acknowledged to its publisher: its SUBACK waited until the cluster had the
/// session's record. Before, the record followed with the node's next report (within a
/// second): killed in between, the node left no record, and the client got a new session
/// without the messages (session present 0, most runs).
#[test]
fn a_session_subscribed_just_before_its_node_dies_fails_over() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let n3 = node(&nats, "node3", 1, "");
    let publisher = Mqtt::connect(n1.port, "quick-pub", true);
    publisher.subscribe("quick-fence/#", QoS::AtLeastOnce);
    let client = Mqtt::connect(n2.port, "quick", false);
    client.subscribe("quick/#", QoS::AtLeastOnce);
    assert!(client.close().is_empty());
    let count = 50;
    for i in 0..count {
        publisher.publish("quick/x", &format!("q{i}"), QoS::AtLeastOnce);
    }
    // A QoS 1 round trip after the last one: every publication acknowledged.
    publisher.publish("quick-fence/done", "done", QoS::AtLeastOnce);
    publisher.recv_matching("quick-fence/done", "done");
    drop(n2); // SIGKILL, within a second of the SUBACK
    let again = Mqtt::connect(n3.port, "quick", false);
    assert!(again.session_present, "the session was rebuilt on node 3");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < count {
        let m = again.recv();
        seen.insert(String::from_utf8_lossy(&m.payload).into_owned());
    }
    drop((n1, n3));
}

#[test]
fn a_killed_nodes_persistent_session_fails_over_with_every_acknowledged_message() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let n3 = node(&nats, "node3", 1, "");
    let first = Mqtt::connect(n2.port, "survivor", false);
    first.subscribe("k/#", QoS::AtLeastOnce);
    wait_until("node 2 to record the session in the cluster", || {
        n2.metric("culex_cluster_sessions_total{event=\"recorded\"}")
            .is_some_and(|n| n >= 1.0)
    });
    let count = 3000;
    let port = n1.port;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let published = std::sync::Arc::clone(&progress);
    let publisher = thread::spawn(move || {
        let p = Mqtt::connect(port, "steady", true);
        for i in 0..count {
            p.publish(&format!("k/{}", i % 7), &i.to_string(), QoS::AtLeastOnce);
            published.store(i + 1, std::sync::atomic::Ordering::Relaxed);
            if i % 50 == 0 {
                thread::sleep(Duration::from_millis(10));
            }
        }
        // Every publication acknowledged: a QoS 1 round trip after the last one.
        p.subscribe("fence/#", QoS::AtLeastOnce);
        p.publish("fence/done", "done", QoS::AtLeastOnce);
        p.recv_matching("fence/done", "done");
    });
    let at_least = |n: usize| {
        wait_until(&format!("{n} publications"), || {
            progress.load(std::sync::atomic::Ordering::Relaxed) >= n
        });
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let note = |m: rumqttc::Publish, seen: &mut HashMap<String, usize>| {
        *seen
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_insert(0) += 1;
    };
    while seen.len() < 300 {
        note(first.recv(), &mut seen);
    }
    // The client goes away; node 2 queues for its session.
    drop(first);
    wait_until("node 2 to see the client go", || {
        n2.metric("culex_persistent_sessions_offline") == Some(1.0)
    });
    let gone_at = progress.load(std::sync::atomic::Ordering::Relaxed);
    at_least(gone_at + 600);
    wait_until("node 2 to queue for the session", || {
        n2.metric("culex_queued_messages")
            .is_some_and(|n| n >= 100.0)
    });
    drop(n2); // SIGKILL, with messages queued for the session
              // Published while no node holds the session.
    let killed_at = progress.load(std::sync::atomic::Ordering::Relaxed);
    at_least(killed_at + 600);
    let before = seen.len();
    let again = Mqtt::connect(n3.port, "survivor", false);
    assert!(again.session_present, "the session was rebuilt on node 3");
    publisher.join().expect("publisher");
    let deadline = Instant::now() + TIMEOUT;
    while seen.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(m) = again.messages.recv_timeout(left) else {
            let missing: Vec<usize> = (0..count)
                .filter(|i| !seen.contains_key(&i.to_string()))
                .collect();
            panic!(
                "{} of {count} never arrived (had {before} before the kill): {missing:?}",
                missing.len()
            );
        };
        note(m, &mut seen);
    }
    assert_eq!(
        n3.metric("culex_cluster_sessions_total{event=\"recovered\"}"),
        Some(1.0)
    );
    // Its subscription works on node 3 from now on.
    let later = Mqtt::connect(n1.port, "later", true);
    later.publish("k/after", "after", QoS::AtLeastOnce);
    again.recv_matching("k/after", "after");
}

/// Clients that let the broker assign their identifier (empty client id) on different nodes
/// get different identifiers: before, both nodes assigned `auto-00000001`, and the second
/// node's claim took the first node's client over.
#[test]
fn assigned_client_identifiers_are_unique_across_nodes() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let first = Mqtt::connect(n2.port, "", true);
    first.subscribe("a/#", QoS::AtLeastOnce);
    wait_until("node 2's claim", || {
        n2.metric("culex_cluster_claims_total{direction=\"sent\"}") == Some(1.0)
    });
    let second = Mqtt::connect(n1.port, "", true);
    wait_until("node 1's claim at node 2", || {
        n2.metric("culex_cluster_claims_total{direction=\"yielded\"}") == Some(1.0)
    });
    // Taken over, the first client would have reconnected and claimed again.
    second.publish("a/1", "one", QoS::AtLeastOnce);
    first.recv_matching("a/1", "one");
    assert_eq!(
        n2.metric("culex_cluster_claims_total{direction=\"sent\"}"),
        Some(1.0)
    );
}

/// One publisher's messages arrive on another node in the order it published them, at QoS 1
/// and 2 (they travel through the stream). Before, the link's concurrent JetStream
/// publications left in any order: hundreds of these 2,000 arrived out of order.
#[test]
fn per_publisher_order_is_kept_across_nodes() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let sub = Mqtt::connect(n2.port, "ordered", true);
    sub.subscribe("ord/#", QoS::ExactlyOnce);
    let publisher = Mqtt::connect(n1.port, "orderly", true);
    let count = 2000;
    for i in 0..count {
        let qos = if i % 3 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher.publish("ord/x", &i.to_string(), qos);
    }
    let got: Vec<usize> = (0..count)
        .map(|_| {
            String::from_utf8_lossy(&sub.recv().payload)
                .parse()
                .unwrap()
        })
        .collect();
    let out_of_order = got.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(out_of_order, 0, "{got:?}");
    assert_eq!(got, (0..count).collect::<Vec<_>>());
}

/// A shared subscription group with members on two nodes gets each message once across the
/// cluster (QoS 0, 1 and 2, published on a third node), spread over both nodes; ordinary
/// subscribers still get every message.
#[test]
fn a_shared_group_spread_over_nodes_gets_each_message_once() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let n3 = node(&nats, "node3", 1, "");
    let members: Vec<Mqtt> = [(&n2, "m2a"), (&n2, "m2b"), (&n3, "m3")]
        .iter()
        .map(|(n, id)| {
            let c = Mqtt::connect(n.port, id, true);
            c.subscribe("$share/workers/job/#", QoS::ExactlyOnce);
            c
        })
        .collect();
    let plain = Mqtt::connect(n3.port, "plain", true);
    plain.subscribe("job/#", QoS::AtLeastOnce);
    // Nodes 2 and 3 know of each other's members.
    for n in [&n2, &n3] {
        wait_until("the groups' announcements", || {
            n.metric("culex_cluster_shared_memberships") == Some(1.0)
        });
    }
    let publisher = Mqtt::connect(n1.port, "boss", true);
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let count = 300;
    for i in 0..count {
        publisher.publish(&format!("job/{}", i % 5), &format!("j{i}"), qos[i % 3]);
    }
    publisher.publish("job/fence", "fence", QoS::AtLeastOnce);
    let everything = until_fence(&plain, "job/fence", "fence");
    assert_eq!(everything.len(), count, "the plain subscriber gets all");
    // Every QoS 1/2 job reaches the group (QoS 0 may be dropped by a busy node), and the
    // fence, which went to one member.
    let needed: std::collections::HashSet<String> = (0..count)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("j{i}"))
        .chain(["fence".to_owned()])
        .collect();
    let mut got: HashMap<String, usize> = HashMap::new();
    let mut per_member = vec![0usize; members.len()];
    let mut take = |i: usize, p: rumqttc::Publish, got: &mut HashMap<String, usize>| {
        per_member[i] += 1;
        *got.entry(String::from_utf8_lossy(&p.payload).into_owned())
            .or_insert(0) += 1;
    };
    let deadline = Instant::now() + TIMEOUT;
    while !needed.iter().all(|n| got.contains_key(n)) {
        assert!(
            Instant::now() < deadline,
            "missing {:?}",
            needed
                .iter()
                .filter(|n| !got.contains_key(*n))
                .collect::<Vec<_>>()
        );
        let mut any = false;
        for (i, m) in members.iter().enumerate() {
            while let Ok(p) = m.messages.try_recv() {
                take(i, p, &mut got);
                any = true;
            }
        }
        if !any {
            thread::sleep(Duration::from_millis(10));
        }
    }
    // Whatever else is on its way (a second copy would be) arrives before the plain
    // subscriber's fence did on the same node; collect what is there.
    for (i, m) in members.iter().enumerate() {
        while let Ok(p) = m.messages.recv_timeout(Duration::from_millis(200)) {
            take(i, p, &mut got);
        }
    }
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered to the group more than once: {twice:?}"
    );
    assert!(
        per_member[0] + per_member[1] > 0 && per_member[2] > 0,
        "both nodes serve the group: {per_member:?}"
    );
}

/// A node that was down while its client's session moved on to another node drops the copy
/// it recovers from its store once it is back (before, the stale copy stayed, queuing
/// messages nobody would read, until it expired).
#[test]
fn a_node_back_from_the_dead_drops_its_copy_of_a_session_that_moved_on() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let store = TempDir::new().expect("tempdir");
    let mut n2 = node(
        &nats,
        "node2",
        1,
        &format!(
            "persistence true\npersistence_location {}/\n",
            store.path().display()
        ),
    );
    let n3 = node(&nats, "node3", 1, "");
    let first = Mqtt::connect(n2.port, "wanderer", false);
    first.subscribe("w/#", QoS::AtLeastOnce);
    wait_until("node 2 to record the session", || {
        n2.metric("culex_cluster_sessions_total{event=\"recorded\"}")
            .is_some_and(|n| n >= 1.0)
    });
    drop(first);
    wait_until("node 2 to see the client go", || {
        n2.metric("culex_persistent_sessions_offline") == Some(1.0)
    });
    n2.culex.signal("KILL");
    let moved = Mqtt::connect(n3.port, "wanderer", false);
    assert!(moved.session_present, "rebuilt on node 3");
    n2.culex.crash_and_restart();
    n2.metrics = n2.culex.port_after("metrics on 127.0.0.1:");
    n2.culex.wait_in_log("cluster link up");
    wait_until("node 2 to drop its stale copy", || {
        n2.metric("culex_cluster_sessions_total{event=\"stale_dropped\"}") == Some(1.0)
    });
    assert_eq!(n2.metric("culex_persistent_sessions_offline"), Some(0.0));
    // The session lives on node 3.
    let p = Mqtt::connect(n3.port, "wp", true);
    p.publish("w/x", "still", QoS::AtLeastOnce);
    moved.recv_matching("w/x", "still");
}

/// Interest routing: a node gets only the messages its clients (or offline persistent
/// sessions) subscribe to. Node 3 subscribes to `b/+` and a shared `c/#`: of a burst to `a/x`
/// (node 2's subscription) it receives nothing; once its client unsubscribes from `b/+`,
/// nothing on `b/…` reaches it either; a topic nobody subscribes to leaves node 1 at all.
#[test]
fn each_node_gets_only_what_its_clients_subscribed_to() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let n3 = node(&nats, "node3", 1, "");
    let in_of = |n: &Node| n.metric("culex_cluster_messages_in_total").unwrap_or(-1.0);
    let sub2 = Mqtt::connect(n2.port, "sub2", true);
    sub2.subscribe("a/#", QoS::AtLeastOnce);
    let sub3 = Mqtt::connect(n3.port, "sub3", true);
    sub3.subscribe("b/+", QoS::AtLeastOnce);
    sub3.subscribe("$share/g/c/#", QoS::AtLeastOnce);
    assert_eq!(n1.metric("culex_cluster_remote_filters"), Some(3.0));

    let publisher = Mqtt::connect(n1.port, "pub", true);
    for i in 0..100 {
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher.publish("a/x", &format!("a{i}"), qos);
    }
    assert_eq!(receive(&sub2, 100).len(), 100);
    // Fences on both paths (core NATS for QoS 0, the stream for QoS 1), published after the
    // burst: once node 3 has both, it would have had the burst too.
    publisher.publish("b/fence", "f0", QoS::AtMostOnce);
    publisher.publish("b/fence", "f1", QoS::AtLeastOnce);
    let fences = receive(&sub3, 2);
    assert_eq!(fences.len(), 2, "{fences:?}");
    wait_until("node 3 counting its two messages", || in_of(&n3) >= 2.0);
    assert_eq!(
        in_of(&n3),
        2.0,
        "node 3 got messages nobody there subscribed to"
    );
    wait_until("node 2 counting the burst", || in_of(&n2) >= 100.0);
    assert_eq!(in_of(&n2), 100.0);

    let before = n1.metric("culex_cluster_unrouted_total").unwrap_or(0.0);
    for i in 0..10 {
        publisher.publish("nobody/here", &format!("n{i}"), QoS::AtLeastOnce);
    }
    publisher.publish("c/1", "shared", QoS::AtLeastOnce);
    assert_eq!(sub3.recv().payload, "shared".as_bytes());
    assert!(n1.metric("culex_cluster_unrouted_total").unwrap_or(0.0) >= before + 10.0);

    // The last subscription to b/+ on node 3 goes: node 1 learns it, and stops sending.
    sub3.client.unsubscribe("b/+").unwrap();
    wait_until("node 1 forgetting b/+", || {
        n1.metric("culex_cluster_remote_filters") == Some(2.0)
    });
    let in3 = in_of(&n3);
    for i in 0..20 {
        publisher.publish("b/x", &format!("b{i}"), QoS::AtLeastOnce);
    }
    publisher.publish("c/2", "shared2", QoS::AtLeastOnce);
    assert_eq!(sub3.recv().payload, "shared2".as_bytes());
    wait_until("node 3 counting the shared message", || {
        in_of(&n3) >= in3 + 1.0
    });
    assert_eq!(in_of(&n3), in3 + 1.0, "node 3 still gets b/x");
}

/// A subscription made on one node gets a message published on another right after its
/// SUBACK: the SUBACK of a new filter waits until the other nodes know of it.
#[test]
fn a_message_published_right_after_a_suback_reaches_the_new_subscription() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let _n3 = node(&nats, "node3", 1, "");
    let sub = Mqtt::connect(n2.port, "sub", true);
    let publisher = Mqtt::connect(n1.port, "pub", true);
    for i in 0..30 {
        let topic = format!("fresh/{i}");
        sub.subscribe(&topic, QoS::AtLeastOnce);
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher.publish(&topic, &format!("p{i}"), qos);
        let p = sub
            .messages
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{topic}: the message published after SUBACK was lost"));
        assert_eq!(p.topic, topic);
    }
}

/// A persistent session that moves to another node gets a message published right after its
/// CONNACK there: the move waits until the other nodes know the new node wants its topics.
#[test]
fn a_moved_session_gets_what_is_published_right_after_its_connack() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let n3 = node(&nats, "node3", 1, "");
    let publisher = Mqtt::connect(n1.port, "pub", true);
    let first = Mqtt::connect(n2.port, "nomad", false);
    first.subscribe("nomad/#", QoS::AtLeastOnce);
    drop(first);
    for i in 0..10 {
        let to = if i % 2 == 0 { &n3 } else { &n2 };
        let nomad = Mqtt::connect(to.port, "nomad", false);
        assert!(nomad.session_present, "move {i}: the session came along");
        publisher.publish("nomad/x", &format!("after{i}"), QoS::AtLeastOnce);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let p = nomad.messages.recv_timeout(left).unwrap_or_else(|_| {
                panic!("move {i}: the message published after CONNACK was lost")
            });
            if p.payload == format!("after{i}").as_bytes() {
                break;
            }
        }
        drop(nomad);
    }
}

/// A QoS 1 message that no other node wants stays off the backplane, unless a persistent
/// session here subscribes to it: then one copy is kept in the stream (read back for that
/// session should this node die).
#[test]
fn local_traffic_stays_local_unless_a_persistent_session_needs_it() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let _n2 = node(&nats, "node2", 1, "");
    let out = || {
        n1.metric("culex_cluster_messages_out_total")
            .unwrap_or(-1.0)
    };
    let clean = Mqtt::connect(n1.port, "clean", true);
    clean.subscribe("local/#", QoS::AtLeastOnce);
    let publisher = Mqtt::connect(n1.port, "pub", true);
    for i in 0..50 {
        publisher.publish("local/a", &format!("c{i}"), QoS::AtLeastOnce);
    }
    assert_eq!(receive(&clean, 50).len(), 50);
    assert_eq!(
        out(),
        0.0,
        "QoS 1 for a clean session here went to the backplane"
    );

    let durable = Mqtt::connect(n1.port, "durable", false);
    durable.subscribe("local/#", QoS::AtLeastOnce);
    for i in 0..50 {
        publisher.publish("local/b", &format!("d{i}"), QoS::AtLeastOnce);
    }
    assert_eq!(receive(&durable, 50).len(), 50);
    wait_until("the kept copies", || out() >= 50.0);
    assert_eq!(out(), 50.0, "one kept copy each");
}

/// A shared group that gains a member on another node shares each message between the nodes
/// from that member's SUBACK on: nothing twice, nothing lost.
#[test]
fn a_shared_group_member_joining_on_another_node_takes_its_share_from_its_suback() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let n3 = node(&nats, "node3", 1, "");
    let m1 = Mqtt::connect(n2.port, "m1", true);
    m1.subscribe("$share/g/sg/#", QoS::AtLeastOnce);
    let publisher = Mqtt::connect(n1.port, "pub", true);
    publisher.publish("sg/first", "first", QoS::AtLeastOnce);
    m1.recv_matching("sg/first", "first");
    let m2 = Mqtt::connect(n3.port, "m2", true);
    m2.subscribe("$share/g/sg/#", QoS::AtLeastOnce);
    const N: usize = 200;
    for i in 0..N {
        publisher.publish(&format!("sg/{i}"), &format!("m{i}"), QoS::AtLeastOnce);
    }
    // Fences until each member has one: what either got twice arrived before its fence.
    let mut got: HashMap<String, usize> = HashMap::new();
    let mut per_member = [0usize; 2];
    let mut fenced = [false; 2];
    let mut k = 0;
    let deadline = Instant::now() + TIMEOUT;
    while !(fenced[0] && fenced[1]) {
        assert!(Instant::now() < deadline, "got {} of {N}", got.len());
        if got.len() >= N {
            publisher.publish(
                &format!("sg/fence{k}"),
                &format!("fence{k}"),
                QoS::AtLeastOnce,
            );
            k += 1;
        }
        for (i, m) in [&m1, &m2].iter().enumerate() {
            while let Ok(p) = m.messages.recv_timeout(Duration::from_millis(20)) {
                let payload = String::from_utf8_lossy(&p.payload).into_owned();
                if payload.starts_with("fence") {
                    fenced[i] = true;
                } else {
                    per_member[i] += 1;
                    *got.entry(payload).or_insert(0) += 1;
                }
            }
        }
    }
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered to the group twice: {twice:?}");
    assert_eq!(got.len(), N);
    assert!(
        per_member[0] > 0 && per_member[1] > 0,
        "both members serve: {per_member:?}"
    );
}

/// A node that has just joined routes what its clients publish to subscriptions made on other
/// nodes right after it started: the other nodes' SUBACKs wait for it too.
#[test]
fn a_node_that_just_joined_gets_subscriptions_made_elsewhere_right_after() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let sub = Mqtt::connect(n1.port, "sub", true);
    let mut joined = Vec::new();
    for i in 0..5 {
        let newcomer = node(&nats, &format!("new{i}"), 1, "");
        let topic = format!("joined/{i}");
        sub.subscribe(&topic, QoS::AtLeastOnce);
        let publisher = Mqtt::connect(newcomer.port, &format!("pub{i}"), true);
        publisher.publish(&topic, "hello", QoS::AtLeastOnce);
        let p = sub
            .messages
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{topic}: published on a node that just joined, lost"));
        assert_eq!(p.topic, topic);
        joined.push((newcomer, publisher));
    }
}

/// A node whose backplane cannot be reached from its start still answers a SUBSCRIBE (the
/// SUBACK waits at most a few seconds for the cluster, counted; before, it waited for ever),
/// and refuses network clients the cluster link's client identifiers (on any node's name:
/// such a client would take the link's session, and every message of the cluster, over).
#[test]
fn a_node_without_its_backplane_answers_subscribes_and_keeps_the_link_s_client_id() {
    let nobody = free_port();
    let culex = Culex::start(&format!(
        "listener 0 127.0.0.1\nallow_anonymous true\nmetrics_listener 127.0.0.1:0\n\
         cluster_backplane nats://127.0.0.1:{nobody}\ncluster_node_name node1\ncluster_replicas 1\n"
    ));
    let metrics = culex.port_after("metrics on 127.0.0.1:");
    let port = culex.port_after("listening on 127.0.0.1:");
    let client = Mqtt::connect(port, "sub", true);
    client.subscribe("t/#", QoS::AtLeastOnce);
    let text = http_get(metrics, "/metrics");
    assert!(
        metric(&text, "culex_cluster_interest_sync_timeouts_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    // Served locally all the same.
    let publisher = Mqtt::connect(port, "pub", true);
    publisher.publish("t/a", "local", QoS::AtMostOnce);
    client.recv_matching("t/a", "local");

    for id in ["culex-cluster-node1", "culex-cluster-node2"] {
        let (_client, mut connection) =
            rumqttc::Client::new(rumqttc::MqttOptions::new(id, "127.0.0.1", port), 10);
        let first = connection
            .iter()
            .find(|e| !matches!(e, Ok(rumqttc::Event::Outgoing(_))));
        assert!(
            matches!(
                first,
                Some(Err(rumqttc::ConnectionError::ConnectionRefused(
                    rumqttc::ConnectReturnCode::BadClientId
                )))
            ),
            "{id}: {first:?}"
        );
    }
}

/// Sends one request to the NATS server on `port` over its text protocol and returns the
/// reply's payload (the tests need no NATS client of their own).
fn nats_request(port: u16, subject: &str, payload: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("NATS");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.test 1\r\nPUB {subject} _INBOX.test {}\r\n{payload}\r\n",
        payload.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("a reply");
        assert!(n > 0, "NATS closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(at) = text.find("MSG _INBOX.test") {
            let rest = &text[at..];
            if let Some((header, body)) = rest.split_once("\r\n") {
                let len: usize = header
                    .rsplit(' ')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return body[..len].to_owned();
                }
            }
        }
    }
}

/// A node removed for good (killed, and its stream deleted by the operator) while the
/// others still hold its subscriptions: the copies for it are dropped and counted
/// (`culex_cluster_dropped_total{reason="no_stream"}`), and the rest of the cluster's QoS 1
/// traffic goes on. Before, each such copy was retried for ever and, once the link's window
/// of 256 was full of them, nothing more crossed nodes.
#[test]
fn a_node_whose_stream_is_deleted_does_not_stall_the_others() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let nats = Nats::start(1);
    let n1 = node(&nats, "node1", 1, "");
    let n2 = node(&nats, "node2", 1, "");
    let n3 = node(&nats, "node3", 1, "");
    let gone = Mqtt::connect(n2.port, "gone", true);
    gone.subscribe("dead/#", QoS::AtLeastOnce);
    let live = Mqtt::connect(n3.port, "live", true);
    live.subscribe("live/#", QoS::AtLeastOnce);
    drop(gone);
    drop(n2); // SIGKILL: its filters stay in the interest bucket
    let reply = nats_request(
        nats.servers[0].port,
        "$JS.API.STREAM.DELETE.culex-in-node2",
        "",
    );
    assert!(reply.contains("\"success\":true"), "{reply}");

    let publisher = Mqtt::connect(n1.port, "pub", true);
    for i in 0..400 {
        publisher.publish("dead/x", &i.to_string(), QoS::AtLeastOnce);
    }
    publisher.publish("live/x", "after", QoS::AtLeastOnce);
    live.recv_matching("live/x", "after");
    wait_until("the dropped copies counted", || {
        n1.metric("culex_cluster_dropped_total{reason=\"no_stream\"}")
            .is_some_and(|n| n >= 1.0)
    });
}

/// What [`walk`] saw. Every message is acknowledged to its publisher before the test looks (a
/// fence on a clean subscriber comes after them).
struct Walk {
    /// The messages that never reached the walking session.
    lost: Vec<usize>,
    /// How many were published.
    sent: usize,
    /// How many the session got more than once.
    twice: usize,
    /// Second copies the nodes kept from the session
    /// (`culex_cluster_move_duplicates_total`).
    skipped: f64,
    /// The nodes' nonzero drop and move counters ([`Node::drops`]), for a failure's message.
    counted: String,
}

/// A persistent session walks between nodes 2 and 3 (`moving`) or reconnects to node 2 again
/// and again, while node 1 publishes QoS 1 to it; with `bystanders`, a client on each of
/// nodes 2 and 3 subscribes to the same topics (so both nodes get every message).
fn walk(moving: bool, bystanders: bool) -> Walk {
    let nats = Nats::start(1);
    // Queues deep enough for the load through a move on a busy machine: what a full queue
    // drops (counted) is the queue limits' business, not the move's.
    let queues = "max_queued_messages 1000000\n";
    let n1 = node(&nats, "node1", 1, queues);
    let n2 = node(&nats, "node2", 1, queues);
    let n3 = node(&nats, "node3", 1, queues);
    let first = Mqtt::connect(n2.port, "walker", false);
    first.subscribe("walk/#", QoS::AtLeastOnce);
    let watcher = Mqtt::connect(n1.port, "walk-watcher", true);
    watcher.subscribe("walk/#", QoS::AtLeastOnce);
    let _bystanders: Vec<Mqtt> = [&n2, &n3]
        .iter()
        .filter(|_| bystanders)
        .enumerate()
        .map(|(i, n)| {
            let b = Mqtt::connect(n.port, &format!("walk-bystander-{i}"), true);
            b.subscribe("walk/#", QoS::AtMostOnce);
            b
        })
        .collect();
    // The cluster has the session's record (written within a second): a move prepares the
    // session from it.
    wait_until("node 2 to record the session", || {
        n2.metric("culex_cluster_sessions_total{event=\"recorded\"}") >= Some(1.0)
    });
    let mut got: HashMap<String, usize> = HashMap::new();
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = {
        let running = std::sync::Arc::clone(&running);
        let port = n1.port;
        thread::spawn(move || {
            let publisher = Mqtt::connect(port, "walk-pub", true);
            let mut sent = 0usize;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                publisher.publish("walk/x", &format!("m{sent}"), QoS::AtLeastOnce);
                sent += 1;
                if sent.is_multiple_of(20) {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            publisher.publish("walk/fence", "fence", QoS::AtLeastOnce);
            // Kept until the fence has come round (its in-flight messages with it).
            (publisher, sent)
        })
    };
    thread::sleep(Duration::from_millis(300));
    let mut walker = first;
    for i in 0..12 {
        thread::sleep(Duration::from_millis(150));
        let to = if moving && i % 2 == 0 { &n3 } else { &n2 };
        // What the client received (and acknowledged) before it went counts as delivered.
        for p in walker.close() {
            *got.entry(String::from_utf8_lossy(&p.payload).into_owned())
                .or_insert(0) += 1;
        }
        walker = Mqtt::connect(to.port, "walker", false);
        assert!(walker.session_present, "resume {i}: the session came along");
    }
    thread::sleep(Duration::from_millis(150));
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let (_publisher, sent) = publisher.join().unwrap();
    until_fence(&watcher, "walk/fence", "fence");
    for (payload, n) in until_fence(&walker, "walk/fence", "fence") {
        *got.entry(payload).or_insert(0) += n;
    }
    let lost = (0..sent)
        .filter(|i| !got.contains_key(&format!("m{i}")))
        .collect();
    let twice = got.values().map(|n| n.saturating_sub(1)).sum();
    let skipped = [&n2, &n3]
        .iter()
        .filter_map(|n| n.metric("culex_cluster_move_duplicates_total"))
        .sum();
    let counted = [("node1", &n1), ("node2", &n2), ("node3", &n3)]
        .iter()
        .map(|(name, n)| format!("{name}: {}", n.drops()))
        .collect::<Vec<_>>()
        .join("\n");
    drop((n1, n2, n3));
    Walk {
        lost,
        sent,
        twice,
        skipped,
        counted,
    }
}

/// The same load on a session that its client resumes again and again on the same node of
/// the cluster: nothing lost (the control for the next test).
#[test]
fn a_session_resumed_on_its_node_under_load_loses_nothing() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let Walk {
        lost,
        sent,
        counted,
        ..
    } = walk(false, false);
    assert!(
        lost.is_empty(),
        "{} of {sent} lost: {lost:?}\n{counted}",
        lost.len()
    );
}

/// A persistent session moves between two nodes 12 times while node 1 publishes QoS 1 to it
/// without a pause (~7,000 msg/s): nothing is lost, and what reached both nodes during a move
/// is delivered once but for a few (0–3 of ~22,000 twice in 8 runs; 86–208 before the nodes
/// kept one copy per publication; the rest: at least once across a move). Before, 800–1,400 of ~21,000 were lost with the session handed off bare
/// (published when no node's interest was visible to node 1, or imported by the old node after
/// it gave the session up), 110–600 once the new node prepared the session and made its
/// interest known first (copies sent to the old node alone, still on their way), and 9–16 in
/// about one run of 15 while the image's replacing the prepared session removed and re-added
/// their shared filters (a node that read the removal in between routed to no one). With the
/// default `max_queued_messages` (1000) and a core kept busy by another process, a move took
/// long enough for the session's queue to fill (15–767 lost in 3 runs of 4, every one counted
/// as `queue_full` or `late_copy`; a CI run lost 142, not known whether counted): [`walk`]
/// sets deep queues.
#[test]
fn a_session_moving_under_load_loses_nothing() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let Walk {
        lost,
        sent,
        twice,
        skipped,
        counted,
    } = walk(true, false);
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for &i in &lost {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => ranges.push((i, i)),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {sent} messages never reached the moving session, in runs {ranges:?}\n{counted}",
        lost.len()
    );
    // Copies that reached both nodes during a move are kept once: the nodes dropped some
    // second copies (none without the publication's identity crossing the link), and few
    // come twice (a loose bound: about 1 in 200 came twice before).
    assert!(skipped > 0.0, "no second copy kept from the moving session");
    assert!(
        twice < sent / 100,
        "{twice} of {sent} delivered twice ({skipped} second copies kept)"
    );
}

/// The same moves while a client on each node subscribes to the walker's topics too: every
/// node gets every message, also before it prepares the session, so the new node's copy of
/// a message the old node had not yet routed when it gave the session up reached no one there.
/// Before the old node passed those on too (it passed on only what the new node had not been
/// sent), 50-61 were lost in 2 runs of 5.
#[test]
fn a_session_moving_where_others_want_its_topics_loses_nothing() {
    if !have_nats() {
        return;
    }
    let _load = under_load();
    let Walk {
        lost,
        sent,
        twice,
        counted,
        ..
    } = walk(true, true);
    assert!(
        lost.is_empty(),
        "{} of {sent} messages never reached the moving session: {:?}\n{counted}",
        lost.len(),
        lost.get(..50)
    );
    assert!(twice < sent / 100, "{twice} of {sent} delivered twice");
}
