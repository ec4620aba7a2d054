//! Test helpers: an in-process Culex on an ephemeral loopback port, and a raw-packet client for
//! exact byte-level checks. Nothing here is mocked: the broker is the real server and the
//! client speaks over a real TCP socket.

pub mod pki;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use culex::RunningServer;
use culex_config::{Config, Listener};
use culex_proto::{decode, encode, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen promptly. Generous on purpose:
/// tests run on a busy 2-core machine.
pub const WAIT: Duration = Duration::from_secs(10);

/// A broker running in this process on 127.0.0.1 with an ephemeral port.
#[derive(Debug)]
pub struct TestBroker {
    /// Where clients connect.
    pub addr: SocketAddr,
    server: RunningServer,
}

/// Test brokers run many at once: persistence in the default `./culex-data` (as
/// [`Config::embedded_default`] has it) would make them fight over one store, so it is turned
/// off there. A test that wants persistence names its own (temporary) directory.
fn no_shared_store(config: &mut Config) {
    if config.persistence.dir == std::path::Path::new(culex_config::DEFAULT_DATA_DIR) {
        config.persistence.enabled = false;
    }
}

impl TestBroker {
    /// Starts the embedded default configuration on 127.0.0.1, port 0, without the metrics
    /// endpoint (many test brokers run at once; none may take port 9234) and without the
    /// default store directory.
    pub async fn start() -> Result<Self> {
        Self::start_with(Config::embedded_default()).await
    }

    /// Starts `config` with its listeners replaced by one on 127.0.0.1, port 0. A metrics
    /// endpoint, if `config` has one, moves to 127.0.0.1, port 0 (see
    /// [`TestBroker::metrics_addr`]), except that of [`Config::embedded_default`], which is
    /// dropped: ask for one with [`TestBroker::start_with_metrics`].
    pub async fn start_with(mut config: Config) -> Result<Self> {
        config.listeners = vec![Listener::new("127.0.0.1", 0)];
        no_shared_store(&mut config);
        config.metrics.listen = match config.metrics.listen {
            None => None,
            Some(a) if a == culex_config::DEFAULT_METRICS_LISTEN => None,
            Some(_) => Some(metrics_any_port()),
        };
        let server = culex::start(&config).await?;
        let addr = *server
            .local_addrs()
            .first()
            .ok_or_else(|| anyhow!("server bound no address"))?;
        Ok(TestBroker { addr, server })
    }

    /// Starts `config` with a metrics endpoint on 127.0.0.1, port 0; the rest as
    /// [`TestBroker::start_with`].
    pub async fn start_with_metrics(mut config: Config) -> Result<Self> {
        config.metrics.listen = Some(metrics_any_port());
        Self::start_with(config).await
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if the broker has the endpoint.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    /// Starts `config` exactly as given, listeners included (use port 0 for each). `addr` is the
    /// first bound address; [`TestBroker::local_addrs`] has them all, in listener order.
    pub async fn start_exact(mut config: Config) -> Result<Self> {
        no_shared_store(&mut config);
        let server = culex::start(&config).await?;
        let addr = *server
            .local_addrs()
            .first()
            .ok_or_else(|| anyhow!("server bound no address"))?;
        Ok(TestBroker { addr, server })
    }

    /// Every bound address, in the order of the configuration's listeners.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.server.local_addrs()
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The running server (counters).
    pub fn server(&self) -> &RunningServer {
        &self.server
    }

    /// Shuts the broker down cleanly.
    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// A client that sends and receives packets (or raw bytes) exactly as given.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    /// The protocol used to encode and decode packets.
    pub protocol: Protocol,
}

impl RawClient {
    /// Connects a socket (no MQTT CONNECT is sent).
    pub async fn connect(addr: SocketAddr, protocol: Protocol) -> Result<Self> {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: BytesMut::new(),
            protocol,
        })
    }

    /// Connects a socket from the local address `local` (port 0: any), e.g. another loopback
    /// address, to look like a different source.
    pub async fn connect_from(
        addr: SocketAddr,
        local: std::net::IpAddr,
        protocol: Protocol,
    ) -> Result<Self> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .context("connect timed out")??;
        stream.set_nodelay(true)?;
        Ok(RawClient {
            stream,
            buf: BytesMut::new(),
            protocol,
        })
    }

    /// Writes raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Encodes and writes a packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<()> {
        let mut out = BytesMut::new();
        encode(packet, self.protocol, &mut out)?;
        self.send_bytes(&out).await
    }

    /// Receives the next packet; fails on timeout or if the server closed the connection.
    pub async fn recv(&mut self) -> Result<Packet> {
        match self.recv_or_closed().await? {
            Some(p) => Ok(p),
            None => bail!("connection closed by server"),
        }
    }

    /// Receives the next packet, or `None` if the server closed the connection.
    pub async fn recv_or_closed(&mut self) -> Result<Option<Packet>> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .context("timed out waiting for a packet")?
    }

    async fn recv_inner(&mut self) -> Result<Option<Packet>> {
        loop {
            if let Some(p) = decode(&mut self.buf, Some(self.protocol), u32::MAX)? {
                return Ok(Some(p));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Receives the next packet within `wait`; `None` if none came in that time. Fails if the
    /// server closed the connection.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Option<Packet>> {
        match tokio::time::timeout(wait, self.recv_inner()).await {
            Err(_) => Ok(None),
            Ok(Ok(Some(p))) => Ok(Some(p)),
            Ok(Ok(None)) => bail!("connection closed by server"),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Reads whatever bytes arrive next (at least one; none if the server closed), including
    /// bytes already buffered but not decoded.
    pub async fn read_some(&mut self) -> Result<Vec<u8>> {
        if !self.buf.is_empty() {
            return Ok(std::mem::take(&mut self.buf).to_vec());
        }
        let mut chunk = vec![0; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .context("timed out waiting for bytes")??;
        chunk.truncate(n);
        Ok(chunk)
    }

    /// Reads raw bytes until the server closes the connection; returns them.
    pub async fn read_until_closed(&mut self) -> Result<Vec<u8>> {
        let mut all = std::mem::take(&mut self.buf).to_vec();
        tokio::time::timeout(WAIT, self.stream.read_to_end(&mut all))
            .await
            .context("server did not close the connection")??;
        Ok(all)
    }

    /// Waits until the server closes the connection, returning the packets received first.
    pub async fn expect_closed(&mut self) -> Result<Vec<Packet>> {
        let mut packets = Vec::new();
        while let Some(p) = self.recv_or_closed().await? {
            packets.push(p);
        }
        Ok(packets)
    }

    /// Asserts nothing arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> Result<()> {
        match tokio::time::timeout(quiet, self.recv_inner()).await {
            Err(_) => Ok(()),
            Ok(Ok(Some(p))) => bail!("expected silence, got {p:?}"),
            Ok(Ok(None)) => bail!("expected silence, connection closed"),
            Ok(Err(e)) => Err(e),
        }
    }
}

fn metrics_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A [`std::process::Command`] for the `culex` binary at `bin` (pass
/// `env!("CARGO_BIN_EXE_culex")`) with a clean environment: plain log lines at the default level
/// (no colours, no `RUST_LOG`) and no `CULEX__` overrides leaking in from the caller.
pub fn culex_command(bin: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    cmd.env("NO_COLOR", "1").env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CULEX__") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Environment switch that turns a missing external peer (Mosquitto, its clients,
/// `mosquitto_passwd`, paho-mqtt) from a skipped test into a failure; CI sets it to `1` so
/// that a test cannot pass by not running.
pub const REQUIRE_PEERS: &str = "CULEX_REQUIRE_MOSQUITTO";

/// Reports that a test's external peer is missing: a note (the test then passes without that
/// part), or, with [`REQUIRE_PEERS`] set to `1`, a panic.
#[allow(clippy::panic)] // test support: failing the calling test is the point
pub fn peer_missing(note: &str) {
    if std::env::var(REQUIRE_PEERS).is_ok_and(|v| v == "1") {
        panic!("{note}, and {REQUIRE_PEERS}=1 requires it");
    }
    eprintln!("NOTE: {note}; skipping");
}

/// True if the `mosquitto` broker is installed; otherwise [`peer_missing`] (a note, and the
/// calling test passes without running, or a failure under `CULEX_REQUIRE_MOSQUITTO=1`).
pub fn have_mosquitto() -> bool {
    let ok = std::process::Command::new("mosquitto")
        .arg("-h")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !ok {
        peer_missing("mosquitto is not installed");
    }
    ok
}

/// A port that was free a moment ago, for tests that spawn the real binary with `-p`. Prefer
/// port 0 wherever the server can report what it bound.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `GET path` over HTTP/1.0 on `addr` (the metrics listener): the status code and the body.
/// Gives up after `limit`.
pub async fn http_get(addr: SocketAddr, path: &str, limit: Duration) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(limit, s.read_to_string(&mut out))
        .await
        .context("HTTP response")??;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status line")?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((code, body))
}
