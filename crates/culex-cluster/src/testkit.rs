//! NATS servers for tests (feature `testkit`, never part of a normal build).
//!
//! [`NatsCluster::start`] runs one `nats-server` (Debian's package, 2.9 or newer) or a cluster
//! of several on 127.0.0.1, each with JetStream (`-js`), its own store directory in a temporary
//! directory, a client port and, in a cluster, a route port with `--routes` to every other
//! server. It returns once JetStream is usable: a stream with as many replicas as servers (at
//! most 3) could be created. [`NatsCluster::kill`] sends SIGKILL to one server and
//! [`NatsCluster::restart`] starts it again on the same ports and store; dropping the cluster
//! kills every server.
//!
//! Ports are picked by binding port 0 and releasing it (nats-server's `-p -1` would pick its own
//! client port, but the route ports must be known before the servers that route to each other
//! start); a start that fails because another process took a port in between is retried with
//! new ports.
//!
//! Tests call [`nats_server_available`] (or [`NatsCluster::start_or_skip`]) first: without
//! `nats-server` they print a notice and skip, unless the environment sets
//! `CULEX_REQUIRE_NATS=1`, in which case a missing server is an error (CI).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tempfile::TempDir;
use tokio::sync::watch;

/// How long one server may take to say "Server is ready" (the machine may be busy).
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long JetStream may take to elect its leaders after the servers are up.
pub const JETSTREAM_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// One readiness probe (connect, create a stream, publish, delete it).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a start is tried with fresh ports.
const START_ATTEMPTS: usize = 3;
/// Lines of each server's log kept for error messages.
const LOG_LINES: usize = 40;

/// Why the NATS servers of a test could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// `nats-server` is not installed and `CULEX_REQUIRE_NATS` is set.
    #[error("nats-server is not installed and CULEX_REQUIRE_NATS is set")]
    Required,
    /// A local port or temporary directory could not be had, or the process not spawned.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A server exited or did not become ready in time; the tail of its log.
    #[error("nats-server {name} did not start: {log}")]
    NotStarted {
        /// The server's name.
        name: String,
        /// Its last log lines.
        log: String,
    },
    /// JetStream did not become usable in time.
    #[error("JetStream not ready after {0:?}: {1}")]
    JetStreamNotReady(Duration, String),
    /// No server with that index.
    #[error("no server {0}")]
    NoServer(usize),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> TestkitError + '_ {
    move |source| TestkitError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Whether `nats-server` can be run. `Ok(false)` (after printing a notice to stderr) when it is
/// missing and the test should skip; an error when it is missing and `CULEX_REQUIRE_NATS=1`.
pub fn nats_server_available() -> Result<bool, TestkitError> {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Ok(true);
    }
    if std::env::var("CULEX_REQUIRE_NATS").is_ok_and(|v| v == "1") {
        return Err(TestkitError::Required);
    }
    eprintln!("note: nats-server not installed; test skipped (CULEX_REQUIRE_NATS=1 makes it fail)");
    Ok(false)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("read a bound port"))?
        .port())
}

/// What a server's log said so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Exited,
}

/// One `nats-server` process (or its ports and store while it is stopped).
#[derive(Debug)]
struct Server {
    name: String,
    port: u16,
    cluster_port: u16,
    store: TempDir,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    fn new(name: String) -> Result<Server, TestkitError> {
        Ok(Server {
            name,
            port: free_port()?,
            cluster_port: free_port()?,
            store: TempDir::new().map_err(io("create a store directory"))?,
            child: None,
            log: Arc::default(),
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Spawns the process and waits for "Server is ready". `routes` are the route ports of
    /// the other servers; `None` for a server on its own.
    async fn spawn(&mut self, cluster: Option<(&str, &[u16])>) -> Result<(), TestkitError> {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .arg("-sd")
            .arg(self.store.path())
            .args(["--name", &self.name]);
        if let Some((cluster_name, routes)) = cluster {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args([
                "--cluster_name",
                cluster_name,
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.cluster_port),
                "--routes",
                &routes.join(","),
            ]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io("spawn nats-server"))?;
        let (phase_tx, mut phase) = watch::channel(Phase::Starting);
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&self.log);
            // Reads the log to its end, so that the server never blocks on a full pipe.
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("Server is ready") {
                        let _ = phase_tx.send(Phase::Ready);
                    }
                    if let Ok(mut log) = log.lock() {
                        if log.len() == LOG_LINES {
                            log.pop_front();
                        }
                        log.push_back(line);
                    }
                }
                let _ = phase_tx.send(Phase::Exited);
            });
        }
        self.child = Some(child);
        let ready = tokio::time::timeout(
            SERVER_START_TIMEOUT,
            phase.wait_for(|p| *p != Phase::Starting),
        )
        .await;
        match ready {
            Ok(Ok(p)) if *p == Phase::Ready => Ok(()),
            _ => {
                self.kill();
                Err(TestkitError::NotStarted {
                    name: self.name.clone(),
                    log: self.log_tail(),
                })
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `nats-server`, or a cluster of them, with JetStream; killed on drop.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<Server>,
    cluster_name: String,
    started_in: Duration,
}

impl NatsCluster {
    /// Like [`NatsCluster::start`], but `Ok(None)` (after a notice) when `nats-server` is
    /// missing and not required (see [`nats_server_available`]).
    pub async fn start_or_skip(count: usize) -> Result<Option<NatsCluster>, TestkitError> {
        if !nats_server_available()? {
            return Ok(None);
        }
        Self::start(count).await.map(Some)
    }

    /// Starts `count` servers (1 = a server on its own; more = one NATS cluster) and waits
    /// until JetStream can create a stream with `min(count, 3)` replicas.
    pub async fn start(count: usize) -> Result<NatsCluster, TestkitError> {
        let began = Instant::now();
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(count.max(1)).await {
                Ok(mut cluster) => {
                    cluster.wait_jetstream().await?;
                    cluster.started_in = began.elapsed();
                    return Ok(cluster);
                }
                // Most likely a port taken between picking and binding: try new ones.
                Err(e @ TestkitError::NotStarted { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(TestkitError::NoServer(0)))
    }

    async fn try_start(count: usize) -> Result<NatsCluster, TestkitError> {
        let servers = (1..=count)
            .map(|i| Server::new(format!("n{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cluster = NatsCluster {
            servers,
            cluster_name: "culex-test".to_owned(),
            started_in: Duration::ZERO,
        };
        for i in 0..count {
            cluster.spawn(i).await?;
        }
        Ok(cluster)
    }

    async fn spawn(&mut self, index: usize) -> Result<(), TestkitError> {
        let routes: Vec<u16> = self
            .servers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, s)| s.cluster_port)
            .collect();
        let clustered = self.servers.len() > 1;
        let name = self.cluster_name.clone();
        let server = self
            .servers
            .get_mut(index)
            .ok_or(TestkitError::NoServer(index))?;
        server
            .spawn(clustered.then_some((name.as_str(), routes.as_slice())))
            .await
    }

    /// Polls until a stream with as many replicas as servers (at most 3) can be created.
    async fn wait_jetstream(&self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + JETSTREAM_READY_TIMEOUT;
        let replicas = self.servers.len().min(3);
        let mut last = String::new();
        while Instant::now() < deadline {
            // Asked again often and briefly: a request made before JetStream's leaders are
            // elected gets no answer at all, and a long wait then costs more than a new try.
            match tokio::time::timeout(ATTEMPT_TIMEOUT, self.try_stream(replicas)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(_) => last = format!("no answer in {ATTEMPT_TIMEOUT:?}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(TestkitError::JetStreamNotReady(
            JETSTREAM_READY_TIMEOUT,
            last,
        ))
    }

    async fn try_stream(&self, replicas: usize) -> Result<(), String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(ATTEMPT_TIMEOUT)
            .request_timeout(Some(ATTEMPT_TIMEOUT / 2))
            .connect(self.urls())
            .await
            .map_err(|e| e.to_string())?;
        let mut js = jetstream::new(client);
        js.set_timeout(ATTEMPT_TIMEOUT / 2);
        let name = "TESTKIT_READY";
        let config = jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec!["testkit.ready".to_owned()],
            num_replicas: replicas,
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| e.to_string())?;
        js.publish("testkit.ready", "ready".into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        js.delete_stream(name).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// How long [`NatsCluster::start`] took, JetStream readiness included.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// How many servers there are (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether there is no server (never, once started).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The client URL of server `index` (0-based), or `None`.
    pub fn url(&self, index: usize) -> Option<String> {
        self.servers.get(index).map(Server::url)
    }

    /// The client URLs of every server.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Server::url).collect()
    }

    /// A client connected to any of the servers (and reconnecting to any of them).
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.urls())
            .await
    }

    /// A client connected to server `index` only.
    pub async fn connect_to(
        &self,
        index: usize,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        let url = self.url(index).unwrap_or_default();
        async_nats::connect(url).await
    }

    /// Kills server `index` with SIGKILL (its ports and store are kept for a restart).
    pub fn kill(&mut self, index: usize) -> Result<(), TestkitError> {
        self.servers
            .get_mut(index)
            .ok_or(TestkitError::NoServer(index))?
            .kill();
        Ok(())
    }

    /// Starts server `index` again on its ports and store, and waits until it is ready and
    /// JetStream can again create a fully replicated stream.
    pub async fn restart(&mut self, index: usize) -> Result<(), TestkitError> {
        self.kill(index)?;
        self.spawn(index).await?;
        self.wait_jetstream().await
    }

    /// The last lines server `index` logged.
    pub fn log(&self, index: usize) -> String {
        self.servers
            .get(index)
            .map(Server::log_tail)
            .unwrap_or_default()
    }
}
