//! Several Culex processes acting as one broker over NATS JetStream (`cluster_backplane`):
//! real `nats-server` processes (Debian's package), real `culex` processes, rumqttc clients.
//! Skipped with a note when nats-server is missing, unless `CULEX_REQUIRE_NATS=1` (CI).

#[path = "bridge_support/mod.rs"]
mod bridge_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bridge_support::{free_port, Culex, Mqtt, TIMEOUT};
use rumqttc::QoS;
use tempfile::TempDir;

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
    fn spawn(&mut self) {
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
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("Server is ready") => break,
                Ok(_) => {}
                Err(_) => panic!("nats-server {} did not start", self.name),
            }
        }
        // Keep draining its log so that it never blocks on a full pipe.
        thread::spawn(move || while rx.recv().is_ok() {});
        self.child = Some(child);
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
    fn start(count: usize) -> Nats {
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
            s.spawn();
        }
        Nats { servers }
    }

    fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A `culex` node of the cluster on `nats`, with its MQTT port.
struct Node {
    culex: Culex,
    port: u16,
}

fn node(nats: &Nats, name: &str, replicas: usize, extra: &str) -> Node {
    let culex = Culex::start(&format!(
        "listener 0 127.0.0.1\nallow_anonymous true\n\
         cluster_backplane {}\ncluster_node_name {name}\ncluster_replicas {replicas}\n{extra}",
        nats.urls()
    ));
    let port = culex.port_after("listening on 127.0.0.1:");
    culex.wait_in_log("cluster link up");
    Node { culex, port }
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
            *got.entry(String::from_utf8_lossy(&p.payload).into_owned()).or_insert(0) += 1;
        }
        assert_eq!(got, expected, "node {}", i + 1);
    }
    publisher.publish("t/fence", "fence1", QoS::AtLeastOnce);
    for (i, sub) in subs.iter().enumerate() {
        let extra = until_fence(sub, "t/fence", "fence1");
        assert!(extra.is_empty(), "node {} got again: {extra:?}", i + 1);
    }
    eprintln!("{}", n2.culex.log());
    drop((n1, n2, n3));
}
