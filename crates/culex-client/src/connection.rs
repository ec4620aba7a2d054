//! A [`ClientSession`] driven over a byte stream with tokio.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use culex_proto::{
    decode, encode, ConnAck, Packet, Properties, Publish, QoS, ReasonCode, SubAck, SubscribeFilter,
    UnsubAck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::error::ClientError;
use crate::session::{ClientSession, ConnectOptions, Event, Message};
use crate::transport::{self, BoxStream, TransportOptions};

type Result<T> = std::result::Result<T, ClientError>;

/// Which way a packet went, for a [`PacketHook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Written to the server.
    Sent,
    /// Received from the server.
    Received,
}

/// Called with every packet sent or received (for debug output and tracing).
pub type PacketHook = Box<dyn FnMut(Direction, &Packet) + Send>;

/// An open MQTT connection: a [`ClientSession`] driven over a [`BoxStream`].
///
/// Every async method makes progress on the whole connection while it waits: it writes what the
/// session queued, reads and answers what the server sends (acknowledgements, PINGRESP,
/// incoming publications, which are buffered for [`Connection::recv`]) and sends keepalive
/// pings on time. There is no background task; the connection only makes progress while one of
/// its async methods is being awaited, so a caller that is busy elsewhere for longer than the
/// keepalive interval should keep [`Connection::recv`] in a `select!`.
///
/// The methods are cancel-safe in the sense that matters for `select!`: a cancelled call loses
/// no received data and leaves no half-written packet behind (pending output stays buffered
/// and is written by the next call). A publication queued by a cancelled
/// [`Connection::publish`] is still delivered.
pub struct Connection {
    io: BoxStream,
    session: ClientSession,
    rbuf: BytesMut,
    wbuf: BytesMut,
    messages: VecDeque<Publish>,
    published: HashMap<u16, ReasonCode>,
    subacks: HashMap<u16, SubAck>,
    unsubacks: HashMap<u16, UnsubAck>,
    connack: Option<ConnAck>,
    hook: Option<PacketHook>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session)
            .field("buffered_messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Connection {
    /// Opens the transport and performs the MQTT handshake (CONNECT / CONNACK), both within
    /// `transport.connect_timeout`. A refusal is [`ClientError::Refused`].
    pub async fn connect(transport: &TransportOptions, options: ConnectOptions) -> Result<Self> {
        Self::connect_with_hook(transport, options, None).await
    }

    /// [`Connection::connect`] with a hook that sees every packet, CONNECT included.
    pub async fn connect_with_hook(
        transport: &TransportOptions,
        options: ConnectOptions,
        hook: Option<PacketHook>,
    ) -> Result<Self> {
        let io = transport::open(transport).await?;
        Self::handshake(
            io,
            ClientSession::new(options),
            hook,
            transport.connect_timeout,
        )
        .await
    }

    /// Performs the MQTT handshake for `session` over an already open stream, within
    /// `timeout`. Use this to reconnect a session kept from [`Connection::into_session`]: with
    /// a persistent session the server still has, unacknowledged publications are resent.
    pub async fn handshake(
        io: BoxStream,
        session: ClientSession,
        hook: Option<PacketHook>,
        timeout: Duration,
    ) -> Result<Self> {
        let mut conn = Connection {
            io,
            session,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            messages: VecDeque::new(),
            published: HashMap::new(),
            subacks: HashMap::new(),
            unsubacks: HashMap::new(),
            connack: None,
            hook,
        };
        conn.await_connack(timeout).await?;
        Ok(conn)
    }

    /// Reconnects the same session over a new stream (after the previous one failed): sends
    /// CONNECT and waits for CONNACK within `timeout`. If the server kept the session
    /// (`session_present`), unacknowledged publications are resent; otherwise subscriptions are
    /// gone and the caller subscribes again. Unanswered SUBSCRIBE/UNSUBSCRIBE calls are void.
    /// On failure the connection stays disconnected and `reconnect` may be tried again.
    pub async fn reconnect(&mut self, io: BoxStream, timeout: Duration) -> Result<()> {
        self.io = io;
        self.rbuf.clear();
        self.wbuf.clear();
        self.subacks.clear();
        self.unsubacks.clear();
        self.connack = None;
        self.await_connack(timeout).await
    }

    async fn await_connack(&mut self, timeout: Duration) -> Result<()> {
        self.session.connect(now());
        let result = tokio::time::timeout(timeout, async {
            while self.connack.is_none() {
                self.drive_once().await?;
            }
            Ok::<(), ClientError>(())
        })
        .await
        .unwrap_or(Err(ClientError::Timeout("waiting for CONNACK")));
        if result.is_err() {
            self.session.connection_lost();
        }
        result
    }

    /// The server's CONNACK.
    pub fn connack(&self) -> Option<&ConnAck> {
        self.connack.as_ref()
    }

    /// The session state (client id in force, publications pending, ...).
    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// Ends this connection without DISCONNECT and returns the session, to resume it over a
    /// new stream with [`Connection::handshake`].
    pub fn into_session(mut self) -> (ClientSession, Option<PacketHook>) {
        self.session.connection_lost();
        (self.session, self.hook.take())
    }

    /// Publishes and waits until the publication completes: at once for QoS 0 (once written),
    /// on PUBACK for QoS 1, on PUBCOMP for QoS 2. Returns the server's reason code (MQTT 5 may
    /// report e.g. `NotAuthorized` or `NoMatchingSubscribers`; always `Success` before 5.0).
    pub async fn publish(&mut self, message: Message) -> Result<ReasonCode> {
        match self.session.publish(message)? {
            None => {
                self.flush().await?;
                Ok(ReasonCode::Success)
            }
            Some(id) => self.wait_published(id).await,
        }
    }

    /// Queues a publication without waiting for it; returns its packet identifier for QoS 1/2.
    /// It is written by the next async call ([`Connection::flush`] at the latest). Completion
    /// can be awaited with [`Connection::wait_published`] or [`Connection::wait_idle`].
    pub fn start_publish(&mut self, message: Message) -> Result<Option<u16>> {
        self.session.publish(message)
    }

    /// With [`crate::ConnectOptions::manual_acks`]: acknowledges an incoming QoS 1/2 message
    /// (see [`ClientSession::ack`]); written by the next async call.
    pub fn ack(&mut self, packet_id: u16, qos: QoS) {
        self.session.ack(packet_id, qos);
    }

    /// Waits for the QoS 1/2 publication `packet_id` to complete; returns its reason code.
    pub async fn wait_published(&mut self, packet_id: u16) -> Result<ReasonCode> {
        loop {
            if let Some(rc) = self.published.remove(&packet_id) {
                return Ok(rc);
            }
            self.drive_once().await?;
        }
    }

    /// Waits until every publication, SUBSCRIBE and UNSUBSCRIBE has been acknowledged; returns
    /// the completed publications not yet collected by [`Connection::wait_published`], as
    /// (packet identifier, reason code) pairs.
    pub async fn wait_idle(&mut self) -> Result<Vec<(u16, ReasonCode)>> {
        self.flush().await?;
        while !self.session.is_idle() {
            self.drive_once().await?;
        }
        Ok(self.published.drain().collect())
    }

    /// Takes the completed publications not yet collected by [`Connection::wait_published`], as
    /// (packet identifier, reason code) pairs, without waiting. Callers that queue many
    /// publications with [`Connection::start_publish`] call it to learn of completions.
    pub fn take_published(&mut self) -> Vec<(u16, ReasonCode)> {
        self.published.drain().collect()
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(
        &mut self,
        filters: Vec<SubscribeFilter>,
        properties: Properties,
    ) -> Result<SubAck> {
        let id = self.session.subscribe(filters, properties)?;
        loop {
            if let Some(ack) = self.subacks.remove(&id) {
                return Ok(ack);
            }
            self.drive_once().await?;
        }
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filters: Vec<String>) -> Result<UnsubAck> {
        let id = self.session.unsubscribe(filters)?;
        loop {
            if let Some(ack) = self.unsubacks.remove(&id) {
                return Ok(ack);
            }
            self.drive_once().await?;
        }
    }

    /// The next application message from the server. Messages that arrived while another call
    /// was waiting are returned first, in order.
    pub async fn recv(&mut self) -> Result<Publish> {
        loop {
            if let Some(m) = self.messages.pop_front() {
                return Ok(m);
            }
            self.drive_once().await?;
        }
    }

    /// Makes one step of progress: writes pending output, then waits for the next input from
    /// the server or the next keepalive timer, and handles it. Incoming messages are buffered
    /// for [`Connection::recv`] / [`Connection::try_recv`]. Use it to wait for conditions the
    /// other methods do not cover (e.g. `while conn.session().pending_publishes() > n`).
    pub async fn progress(&mut self) -> Result<()> {
        self.drive_once().await
    }

    /// A message already received, without waiting.
    pub fn try_recv(&mut self) -> Option<Publish> {
        self.messages.pop_front()
    }

    /// Writes everything queued. With keepalive on, a write that cannot complete by the
    /// session's liveness deadline (the server stopped reading) fails with
    /// [`ClientError::KeepAliveTimeout`]: a successful write proves nothing, only reads do.
    pub async fn flush(&mut self) -> Result<()> {
        let protocol = self.session.protocol();
        while let Some(packet) = self.session.poll_transmit(now()) {
            if let Some(hook) = self.hook.as_mut() {
                hook(Direction::Sent, &packet);
            }
            encode(&packet, protocol, &mut self.wbuf)?;
        }
        let deadline = self.session.liveness_deadline().map(Instant::from_std);
        let written = match deadline {
            Some(d) => tokio::time::timeout_at(d, write_all(&mut self.io, &mut self.wbuf))
                .await
                .unwrap_or(Err(ClientError::KeepAliveTimeout)),
            None => write_all(&mut self.io, &mut self.wbuf).await,
        };
        if written.is_err() {
            self.session.connection_lost();
        }
        written
    }

    /// Ends the connection and closes the stream, keeping the session for a later
    /// [`Connection::reconnect`]: sends DISCONNECT with `reason` if the connection is still up,
    /// shuts the write side down, then reads until the server closes its side (at most
    /// `linger`, and no longer than 250 ms without data) so that what the server sent
    /// before the close is handled, not discarded: messages are buffered for
    /// [`Connection::try_recv`], completed publications for [`Connection::take_published`].
    /// Afterwards the stream is dropped, so the server sees the connection end even when this
    /// side gave up on it (a keepalive timeout) while the server still thinks it is up.
    pub async fn close(&mut self, reason: ReasonCode, linger: Duration) {
        let deadline = Instant::now() + linger;
        if self.session.is_connected() {
            self.session.disconnect(reason);
        } else {
            self.session.close_without_disconnect();
        }
        let _ = tokio::time::timeout_at(deadline, async {
            if self.flush().await.is_ok() {
                let _ = self.io.shutdown().await;
            }
        })
        .await;
        loop {
            let until = deadline.min(Instant::now() + CLOSE_IDLE);
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(4096);
            }
            match tokio::time::timeout_at(until, self.io.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {
                    if self.process_input().is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        self.session.connection_lost();
        self.io = Box::new(Closed);
        self.rbuf.clear();
        self.wbuf.clear();
    }

    /// Sends DISCONNECT (Normal disconnection) and closes the stream.
    pub async fn disconnect(self) -> Result<()> {
        self.disconnect_with(ReasonCode::NormalDisconnection).await
    }

    /// Sends DISCONNECT with `reason` (MQTT 5; e.g. `DisconnectWithWillMessage`) and closes
    /// the stream.
    pub async fn disconnect_with(mut self, reason: ReasonCode) -> Result<()> {
        self.session.disconnect(reason);
        self.flush().await?;
        // The server closes its side on DISCONNECT; a failing shutdown changes nothing.
        let _ = self.io.shutdown().await;
        Ok(())
    }

    /// One step: write pending output, then wait for input or the next timer.
    async fn drive_once(&mut self) -> Result<()> {
        self.flush().await?;
        let deadline = self.session.poll_timeout().map(Instant::from_std);
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        tokio::select! {
            read = self.io.read_buf(&mut self.rbuf) => {
                let n = match read {
                    Ok(n) => n,
                    Err(e) => {
                        self.session.connection_lost();
                        return Err(e.into());
                    }
                };
                let result = self.process_input();
                if n == 0 && result.is_ok() {
                    self.session.connection_lost();
                    return Err(ClientError::ConnectionClosed);
                }
                result
            }
            () = sleep_until(deadline) => {
                let result = self.session.handle_timeout(now());
                if result.is_err() {
                    self.session.connection_lost();
                }
                result
            }
        }
    }

    /// Decodes and handles every complete packet in the read buffer.
    fn process_input(&mut self) -> Result<()> {
        let protocol = self.session.protocol();
        let max = self.session.options().max_packet_size;
        let outcome = loop {
            let packet = match decode(&mut self.rbuf, Some(protocol), max) {
                Ok(Some(p)) => p,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            };
            if let Some(hook) = self.hook.as_mut() {
                hook(Direction::Received, &packet);
            }
            if let Err(e) = self.session.handle_packet(packet, now()) {
                break Err(e);
            }
        };
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Connected(ack) => self.connack = Some(ack),
                Event::Message(m) => self.messages.push_back(m),
                Event::Published {
                    packet_id,
                    reason_code,
                } => {
                    self.published.insert(packet_id, reason_code);
                }
                Event::SubAck(ack) => {
                    self.subacks.insert(ack.packet_id, ack);
                }
                Event::UnsubAck(ack) => {
                    self.unsubacks.insert(ack.packet_id, ack);
                }
                Event::PingResp => {}
            }
        }
        if outcome.is_err() {
            self.session.connection_lost();
        }
        outcome
    }
}

/// How long [`Connection::close`] waits for more data from the server before it stops reading.
const CLOSE_IDLE: Duration = Duration::from_millis(250);

async fn write_all(io: &mut BoxStream, buf: &mut BytesMut) -> Result<()> {
    while !buf.is_empty() {
        let n = io.write(buf).await?;
        if n == 0 {
            return Err(ClientError::ConnectionClosed);
        }
        buf.advance(n);
    }
    io.flush().await?;
    Ok(())
}

/// The stream of a closed connection: end of file to reads, an error to writes.
struct Closed;

impl tokio::io::AsyncRead for Closed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Closed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use culex_proto::{Protocol, PubResp, QoS, SubscriptionOptions};
    use tokio::io::{duplex, DuplexStream};

    /// The server end of an in-memory pipe, speaking raw packets.
    struct FakeServer {
        io: DuplexStream,
        buf: BytesMut,
        protocol: Protocol,
    }

    impl FakeServer {
        async fn recv(&mut self) -> Option<Packet> {
            loop {
                if let Some(p) = decode(&mut self.buf, Some(self.protocol), u32::MAX).unwrap() {
                    return Some(p);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }
        async fn recv_connect(&mut self) -> culex_proto::Connect {
            loop {
                if let Some(p) = decode(&mut self.buf, None, u32::MAX).unwrap() {
                    match p {
                        Packet::Connect(c) => return *c,
                        other => panic!("expected CONNECT, got {other:?}"),
                    }
                }
                assert!(self.io.read_buf(&mut self.buf).await.unwrap() > 0);
            }
        }
        async fn send(&mut self, p: Packet) {
            let mut out = BytesMut::new();
            encode(&p, self.protocol, &mut out).unwrap();
            self.io.write_all(&out).await.unwrap();
        }
    }

    fn ok_connack() -> Packet {
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: Properties::default(),
        })
    }

    async fn pair(options: ConnectOptions) -> (Connection, FakeServer) {
        let (client_io, server_io) = duplex(64 * 1024);
        let protocol = options.protocol;
        let mut server = FakeServer {
            io: server_io,
            buf: BytesMut::new(),
            protocol,
        };
        let client = tokio::spawn(Connection::handshake(
            Box::new(client_io),
            ClientSession::new(options),
            None,
            Duration::from_secs(5),
        ));
        let connect = server.recv_connect().await;
        assert_eq!(connect.protocol, protocol);
        server.send(ok_connack()).await;
        (client.await.unwrap().unwrap(), server)
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_ping_after_idle_interval() {
        let mut opts = ConnectOptions::new("ka");
        opts.keep_alive = 30;
        let (mut client, mut server) = pair(opts).await;
        let start = Instant::now();
        let task = tokio::spawn(async move {
            let r = client.recv().await;
            (client, r)
        });
        assert_eq!(server.recv().await, Some(Packet::PingReq));
        // Paused time auto-advances to the next timer: exactly one keepalive interval.
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        server.send(Packet::PingResp).await;
        assert_eq!(server.recv().await, Some(Packet::PingReq));
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        // No PINGRESP this time: the client gives up half an interval later.
        let (_client, r) = task.await.unwrap();
        assert!(matches!(r, Err(ClientError::KeepAliveTimeout)), "{r:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(75));
    }

    /// A server that stops reading: the write blocks, and the connection gives up at the
    /// liveness deadline (one interval plus the ping answer time after the last packet read)
    /// instead of waiting forever.
    #[tokio::test(start_paused = true)]
    async fn blocked_write_fails_at_the_liveness_deadline() {
        let mut opts = ConnectOptions::new("blocked");
        opts.keep_alive = 10;
        let (mut client, _server) = pair(opts).await;
        let start = Instant::now();
        let payload = Bytes::from(vec![0u8; 256 * 1024]);
        let r = client
            .publish(Message::new("t", payload, QoS::AtMostOnce))
            .await;
        assert!(matches!(r, Err(ClientError::KeepAliveTimeout)), "{r:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        assert!(!client.session().is_connected());
    }

    /// `close` sends DISCONNECT, shuts down, and still takes what the server had sent.
    #[tokio::test]
    async fn close_keeps_what_the_server_sent_and_ends_the_stream() {
        let (mut client, mut server) = pair(ConnectOptions::new("closer")).await;
        server
            .send(Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "down/commands".into(),
                packet_id: None,
                properties: Properties::default(),
                payload: Bytes::from_static(b"on"),
            }))
            .await;
        client
            .close(ReasonCode::NormalDisconnection, Duration::from_secs(5))
            .await;
        let m = client
            .try_recv()
            .expect("the message sent before the close");
        assert_eq!(&m.payload[..], b"on");
        assert!(matches!(server.recv().await, Some(Packet::Disconnect(_))));
        assert_eq!(server.recv().await, None, "the stream is closed");
        assert!(!client.session().is_connected());
    }

    #[tokio::test(start_paused = true)]
    async fn connack_timeout() {
        let (client_io, _server_io) = duplex(1024);
        let r = Connection::handshake(
            Box::new(client_io),
            ClientSession::new(ConnectOptions::new("x")),
            None,
            Duration::from_secs(10),
        )
        .await;
        assert!(matches!(r, Err(ClientError::Timeout(_))));
    }

    #[tokio::test]
    async fn refused_connection() {
        let (client_io, server_io) = duplex(1024);
        let mut server = FakeServer {
            io: server_io,
            buf: BytesMut::new(),
            protocol: Protocol::V5,
        };
        let mut opts = ConnectOptions::new("x");
        opts.protocol = Protocol::V5;
        let client = tokio::spawn(Connection::handshake(
            Box::new(client_io),
            ClientSession::new(opts),
            None,
            Duration::from_secs(5),
        ));
        server.recv_connect().await;
        server
            .send(Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::BadUserNameOrPassword,
                properties: Properties::default(),
            }))
            .await;
        let err = client.await.unwrap().unwrap_err();
        assert_eq!(err.connack_code(), Some(0x86));
    }

    #[tokio::test]
    async fn qos2_publish_subscribe_and_receive() {
        let (mut client, mut server) = pair(ConnectOptions::new("q2")).await;
        let srv = tokio::spawn(async move {
            let Some(Packet::Publish(p)) = server.recv().await else {
                panic!("expected PUBLISH")
            };
            let id = p.packet_id.unwrap();
            server.send(Packet::PubRec(PubResp::new(id))).await;
            assert_eq!(server.recv().await, Some(Packet::PubRel(PubResp::new(id))));
            // An incoming message arrives before PUBCOMP: it must be buffered for recv().
            server
                .send(Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: "in".into(),
                    packet_id: Some(9),
                    properties: Properties::default(),
                    payload: Bytes::from_static(b"hi"),
                }))
                .await;
            server.send(Packet::PubComp(PubResp::new(id))).await;
            assert_eq!(server.recv().await, Some(Packet::PubAck(PubResp::new(9))));
            let Some(Packet::Subscribe(s)) = server.recv().await else {
                panic!("expected SUBSCRIBE")
            };
            server
                .send(Packet::SubAck(SubAck {
                    packet_id: s.packet_id,
                    reason_codes: vec![ReasonCode::GrantedQoS1],
                    properties: Properties::default(),
                }))
                .await;
            assert!(matches!(server.recv().await, Some(Packet::Disconnect(_))));
            assert_eq!(server.recv().await, None);
        });
        let rc = client
            .publish(Message::new("out", "x", QoS::ExactlyOnce))
            .await
            .unwrap();
        assert_eq!(rc, ReasonCode::Success);
        let ack = client
            .subscribe(
                vec![SubscribeFilter {
                    filter: "in".into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                }],
                Properties::default(),
            )
            .await
            .unwrap();
        assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQoS1]);
        let m = client.recv().await.unwrap();
        assert_eq!((m.topic.as_str(), &m.payload[..]), ("in", &b"hi"[..]));
        client.disconnect().await.unwrap();
        srv.await.unwrap();
    }

    #[tokio::test]
    async fn server_close_is_reported() {
        let (mut client, server) = pair(ConnectOptions::new("c")).await;
        drop(server);
        assert!(matches!(
            client.recv().await,
            Err(ClientError::ConnectionClosed) | Err(ClientError::Io(_))
        ));
    }
}
