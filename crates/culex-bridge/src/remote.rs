//! Opening the byte stream to a remote broker: TCP (optionally from `bridge_bind_address`), TLS
//! with a trust store rebuilt on every connect, and the bridge bit for `try_private`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use culex_client::transport::{tls_config_with_roots, tls_handshake, BoxStream, TlsOptions};
use culex_client::ClientError;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use culex_config::bridge::{BridgeConfig, BridgeProtocol, BridgeTls, TlsVersion};

/// Builds the rustls client configuration for a bridge: the platform's trusted roots plus
/// `cafile` and every certificate file in `capath`; client certificate; `insecure`; version pin.
/// Called on every connect attempt, so changed files take effect at the next reconnect.
pub fn tls_client_config(tls: &BridgeTls) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // Skip platform certificates rustls cannot parse, as browsers do.
        let _ = roots.add(cert);
    }
    if let Some(file) = &tls.cafile {
        culex_client::transport::add_ca_file(&mut roots, file)?;
    }
    if let Some(dir) = &tls.capath {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            ClientError::Config(format!("cannot read bridge_capath {}: {e}", dir.display()))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_cert = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "pem" | "crt" | "cer"))
                || path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.len() > 9 && n.as_bytes()[8] == b'.'); // OpenSSL hash links
            if is_cert && path.is_file() {
                culex_client::transport::add_ca_file(&mut roots, &path)?;
            }
        }
    }
    if roots.is_empty() {
        return Err(ClientError::Config(
            "no trusted CA certificates: the platform has none and bridge_cafile/bridge_capath add none".into(),
        ));
    }
    let options = TlsOptions {
        ca_file: None,
        cert_file: tls.certfile.clone(),
        key_file: tls.keyfile.clone(),
        insecure: tls.insecure,
        alpn: Vec::new(),
        server_name: None,
    };
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.version {
        None => rustls::DEFAULT_VERSIONS,
        Some(TlsVersion::Tls12) => &[&rustls::version::TLS12],
        Some(TlsVersion::Tls13) => &[&rustls::version::TLS13],
    };
    tls_config_with_roots(roots, &options, versions)
}

/// Opens the stream to `host:port` for `config` within `timeout`: TCP, then TLS if configured,
/// then the bridge-bit rewrite for `try_private` with MQTT 3.1.1.
pub(crate) async fn open(
    config: &BridgeConfig,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<BoxStream, ClientError> {
    tokio::time::timeout(timeout, open_inner(config, host, port))
        .await
        .map_err(|_| ClientError::Timeout("connecting"))?
}

async fn open_inner(
    config: &BridgeConfig,
    host: &str,
    port: u16,
) -> Result<BoxStream, ClientError> {
    let tcp = tcp_connect(config, host, port).await?;
    tcp.set_nodelay(true)?;
    let stream: BoxStream = match &config.tls {
        None => Box::new(tcp),
        Some(tls) => {
            if tls.insecure {
                tracing::warn!(
                    bridge = %config.name,
                    "bridge_insecure is set: the remote certificate's host name is NOT checked \
                     for {host}:{port}; anyone with a certificate from a trusted CA can \
                     impersonate the remote broker"
                );
            }
            tls_handshake(tcp, tls_client_config(tls)?, host).await?
        }
    };
    if config.try_private && config.protocol == BridgeProtocol::V311 {
        Ok(Box::new(BridgeBitStream::new(stream)))
    } else {
        Ok(stream)
    }
}

async fn tcp_connect(
    config: &BridgeConfig,
    host: &str,
    port: u16,
) -> Result<TcpStream, ClientError> {
    let Some(bind) = config.bind_address else {
        return Ok(TcpStream::connect((host, port)).await?);
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        if addr.is_ipv4() != bind.is_ipv4() {
            continue;
        }
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(bind, 0))?;
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("{host} has no address of the family of bridge_bind_address {bind}"),
            )
        })
        .into())
}

/// Rewrites the protocol level of the first CONNECT written from 4 to `0x84`: Mosquitto's
/// bridge bit (`try_private`). A remote that knows it treats the connection as a bridge: it does
/// not send our own messages back (no-local) and keeps their RETAIN flag.
pub(crate) struct BridgeBitStream {
    inner: BoxStream,
    /// The first bytes written (up to [`HEADER_MAX`]), to find the level byte.
    head: Vec<u8>,
    /// Absolute offset of the protocol level byte, once the CONNECT header has been seen.
    level_at: Option<usize>,
    done: bool,
}

/// Fixed header (1) + remaining length (≤ 4) + protocol name (6) + level (1).
const HEADER_MAX: usize = 12;

impl BridgeBitStream {
    pub(crate) fn new(inner: BoxStream) -> Self {
        BridgeBitStream {
            inner,
            head: Vec::with_capacity(HEADER_MAX),
            level_at: None,
            done: false,
        }
    }

    /// Offset of the level byte in a CONNECT starting at `buf[0]`, if `buf` holds enough of it.
    fn level_offset(buf: &[u8]) -> Option<usize> {
        if buf.first() != Some(&0x10) {
            return None;
        }
        // Remaining length: 1 to 4 bytes, high bit = continuation.
        let mut i = 1;
        while i < 5 {
            let b = *buf.get(i)?;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        // Protocol name "MQTT" (length 4) precedes the level.
        if buf.get(i..i + 6)? != b"\x00\x04MQTT" {
            return None;
        }
        Some(i + 6)
    }
}

impl AsyncRead for BridgeBitStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for BridgeBitStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.done {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        let start = self.head.len();
        if self.level_at.is_none() {
            let mut probe = self.head.clone();
            probe.extend_from_slice(&buf[..buf.len().min(HEADER_MAX - start)]);
            self.level_at = Self::level_offset(&probe);
            if self.level_at.is_none()
                && (probe.len() >= HEADER_MAX || probe.first() != Some(&0x10))
            {
                // Not a CONNECT we understand: pass everything through untouched.
                self.done = true;
                return Pin::new(&mut self.inner).poll_write(cx, buf);
            }
        }
        let patched;
        let out: &[u8] = match self.level_at {
            Some(at) if at >= start && at < start + buf.len() && buf[at - start] == 4 => {
                let mut copy = buf.to_vec();
                copy[at - start] = 0x84;
                patched = copy;
                &patched
            }
            _ => buf,
        };
        let result = Pin::new(&mut self.inner).poll_write(cx, out);
        if let Poll::Ready(Ok(n)) = &result {
            let n = *n;
            let keep = n.min(HEADER_MAX.saturating_sub(start));
            self.head.extend_from_slice(&buf[..keep]);
            let written = start + n;
            if self.level_at.is_some_and(|at| written > at) || written >= HEADER_MAX {
                self.done = true;
                self.head = Vec::new();
            }
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use culex_proto::{encode, Connect, Packet, Properties, Protocol};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn connect_bytes(client_id: &str) -> Vec<u8> {
        let c = Connect {
            protocol: Protocol::V311,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        let mut b = BytesMut::new();
        encode(&Packet::Connect(Box::new(c)), Protocol::V311, &mut b).unwrap();
        b.to_vec()
    }

    #[tokio::test]
    async fn bridge_bit_is_set_on_the_first_connect_only() {
        // A long client id makes the remaining length two bytes long.
        for id in ["b", &"x".repeat(200)] {
            let original = connect_bytes(id);
            let (a, mut b) = tokio::io::duplex(4096);
            let mut s = BridgeBitStream::new(Box::new(a));
            // Write in awkward pieces to cross the level byte at a chunk boundary.
            let (first, rest) = original.split_at(3);
            s.write_all(first).await.unwrap();
            s.write_all(rest).await.unwrap();
            s.write_all(&original).await.unwrap();
            s.flush().await.unwrap();
            let mut got = vec![0; original.len() * 2];
            b.read_exact(&mut got).await.unwrap();
            let at = BridgeBitStream::level_offset(&original).unwrap();
            assert_eq!(original[at], 4);
            let mut expected = original.clone();
            expected[at] = 0x84;
            assert_eq!(&got[..original.len()], &expected[..]);
            assert_eq!(&got[original.len()..], &original[..]);
        }
    }

    #[test]
    fn tls_config_needs_readable_files() {
        let tls = BridgeTls {
            cafile: Some("/nonexistent/ca.pem".into()),
            ..BridgeTls::default()
        };
        let e = tls_client_config(&tls).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
