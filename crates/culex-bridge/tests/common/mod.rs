//! Test helpers: real `mosquitto` processes as remote brokers, an in-process Culex as the local
//! broker, and small client helpers.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use culex_bridge::{Bridge, BridgeConfig, BridgeHandle, LinkState, LocalConnector};
use culex_client::transport::{BoxStream, TlsOptions, TransportOptions};
use culex_client::{ConnectOptions, Connection, Message};
use culex_proto::{Properties, Protocol, Publish, QoS, SubscribeFilter, SubscriptionOptions};
use tokio::sync::watch;

pub use culex_test_support::have_mosquitto;

/// Generous: a busy 2-core machine.
pub const WAIT: Duration = Duration::from_secs(15);

/// A port that was free a moment ago (bound to 127.0.0.1:0 and released).
pub fn free_port() -> u16 {
    culex_test_support::free_port().unwrap()
}

/// A `mosquitto` process on 127.0.0.1; killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    conf: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto on a free port with `extra` appended to the listener configuration
    /// (e.g. TLS files, password_file). Anonymous access is allowed unless `extra` says
    /// otherwise.
    pub async fn start(extra: &str) -> Mosquitto {
        Self::start_on(free_port(), extra).await
    }

    /// As [`Mosquitto::start`] on a given port.
    pub async fn start_on(port: u16, extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        let anonymous = if extra.contains("allow_anonymous") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        let text = format!(
            "user root\nlistener {port} 127.0.0.1\n{anonymous}{extra}\n\
             persistence_location {}/\nlog_dest file {}/mosquitto.log\nlog_type all\n",
            dir.path().display(),
            dir.path().display()
        );
        std::fs::write(&conf, text).unwrap();
        let mut m = Mosquitto {
            port,
            child: None,
            conf,
            dir,
        };
        m.restart().await;
        m
    }

    /// (Re)starts the process with the same configuration and port; waits until it accepts.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "mosquitto exited with {status}: {}",
                        std::fs::read_to_string(self.dir.path().join("mosquitto.log"))
                            .unwrap_or_default()
                    );
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (e.g. "TERM", "KILL", "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Stops the process (SIGTERM: mosquitto saves its persistence file) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.signal_pid(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal_pid(&self, pid: u32, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // Resume a stopped process so it can die.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// Writes a mosquitto password file with `users` (name, password).
pub fn password_file(path: &Path, users: &[(&str, &str)]) {
    std::fs::File::create(path).unwrap();
    for (u, p) in users {
        let st = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(path)
            .arg(u)
            .arg(p)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
}

pub fn write_file(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The local broker: an in-process Culex on 127.0.0.1, port 0, with the configuration a file
/// that sets nothing means (anonymous access, no metrics endpoint, no persistence: many run at
/// once and must not share a data directory).
pub async fn local_broker() -> culex_test_support::TestBroker {
    culex_test_support::TestBroker::start_with(culex_config::Config::default())
        .await
        .unwrap()
}

/// A local connector that dials `addr` over TCP.
pub fn tcp_connector(addr: SocketAddr) -> LocalConnector {
    Box::new(move || {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxStream)
        })
    })
}

/// A bridge running against a local broker, with its shutdown switch.
pub struct Running {
    pub handle: BridgeHandle,
    shutdown: watch::Sender<bool>,
}

impl Running {
    pub fn spawn(config: BridgeConfig, local: SocketAddr) -> Running {
        let (tx, rx) = watch::channel(false);
        let handle = Bridge::spawn(config, tcp_connector(local), rx).unwrap();
        Running {
            handle,
            shutdown: tx,
        }
    }

    pub fn stats(&self) -> &culex_bridge::BridgeStats {
        self.handle.stats()
    }

    /// Waits until the link is up (subscriptions made).
    pub async fn connected(&self) {
        self.wait_state(LinkState::Connected).await;
    }

    pub async fn wait_state(&self, state: LinkState) {
        wait_for(&format!("bridge state {state:?}"), || {
            self.stats().state() == state
        })
        .await;
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        tokio::time::timeout(WAIT, self.handle.join())
            .await
            .unwrap();
    }
}

/// Polls `cond` every 20 ms until it holds, failing after [`WAIT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A test client (culex-client) on 127.0.0.1:`port`.
pub async fn client(port: u16, id: &str) -> Connection {
    client_with(TransportOptions::tcp("127.0.0.1", port), id, None, true).await
}

pub async fn client_with(
    transport: TransportOptions,
    id: &str,
    credentials: Option<(&str, &str)>,
    clean: bool,
) -> Connection {
    let mut o = ConnectOptions::new(id);
    o.protocol = Protocol::V311;
    o.clean_start = clean;
    if let Some((u, p)) = credentials {
        o.username = Some(u.into());
        o.password = Some(bytes::Bytes::from(p.to_string()));
    }
    Connection::connect(&transport, o).await.unwrap()
}

pub fn tls_transport(port: u16, ca: &Path) -> TransportOptions {
    let mut t = TransportOptions::tcp("127.0.0.1", port);
    t.tls = Some(TlsOptions {
        ca_file: Some(ca.to_path_buf()),
        ..TlsOptions::default()
    });
    t
}

pub async fn subscribe(c: &mut Connection, filter: &str, qos: QoS) {
    let ack = c
        .subscribe(
            vec![SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            Properties::default(),
        )
        .await
        .unwrap();
    assert!(ack.reason_codes[0].as_u8() < 0x80, "{ack:?}");
}

pub async fn publish(c: &mut Connection, topic: &str, payload: &str, qos: QoS) {
    c.publish(Message::new(topic, payload.to_string(), qos))
        .await
        .unwrap();
}

/// The next message within [`WAIT`].
pub async fn recv(c: &mut Connection) -> Publish {
    tokio::time::timeout(WAIT, c.recv())
        .await
        .expect("timed out waiting for a message")
        .unwrap()
}

/// Every message arriving within `quiet` of the previous one.
pub async fn recv_all(c: &mut Connection, quiet: Duration) -> Vec<Publish> {
    let mut v = Vec::new();
    while let Ok(Ok(p)) = tokio::time::timeout(quiet, c.recv()).await {
        v.push(p);
    }
    v
}

/// Captured log output (for "logged once" checks).
#[derive(Clone, Default)]
pub struct LogCapture(pub Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs a capturing subscriber for this thread (use with current-thread tests).
pub fn capture_logs() -> (LogCapture, tracing::subscriber::DefaultGuard) {
    let cap = LogCapture::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(cap.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let guard = tracing::subscriber::set_default(sub);
    (cap, guard)
}

/// A bridge config with fast test timings to `port`.
pub fn fast_config(name: &str, port: u16) -> BridgeConfig {
    let mut c = BridgeConfig::new(name, "127.0.0.1", port);
    c.remote_clientid = format!("remote-{name}");
    c.local_clientid = format!("local-{name}");
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(500);
    c.keepalive = Duration::from_secs(5);
    c
}
