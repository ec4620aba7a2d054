//! One client connection: decode, enforce limits, talk to the router, encode and write.
//!
//! The task owns the socket. It reads with `read_buf` (cancel-safe, so it can sit in a
//! `select!` beside the outbox and the keepalive timer), decodes every complete packet in the
//! buffer, and writes everything ready in one `write_all` per wake-up. QoS 1/2 acknowledgements
//! of the client's publishes are written here; the inbound QoS 2 state (packet ids awaiting
//! PUBREL) lives here while connected and goes back to the router's session on disconnect.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use culex_broker::{
    AccessPolicy, Command, ConnId, ConnectOutcome, ConnectRequest, DisconnectKind, Outbound,
    OutboxReceiver,
};
use culex_proto::{
    aliased_publish_encoded_len, decode, encode, encode_aliased_publish, encode_publish,
    encoded_len, peek_header, AliasedPublish, ConnAck, Connect, DecodeError, Disconnect, Packet,
    Properties, Protocol, PubResp, Publish, QoS, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use rustls_pki_types::CertificateDer;

use crate::counters::Refusal;
use crate::security::Admission;
use crate::server::{ConnSlot, ListenerCtx, Shared};
use culex_broker::log_clip::Clipped;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// Remote socket address.
    pub(crate) addr: SocketAddr,
    /// The listener that accepted it.
    pub(crate) listener: Arc<ListenerCtx>,
    /// Identity from a verified TLS client certificate (its subject CN), if any.
    pub(crate) identity: Option<String>,
    /// The verified TLS client certificate chain (leaf first), if the client sent one.
    pub(crate) client_cert: Option<Arc<Vec<CertificateDer<'static>>>>,
}

mod aliases;

use aliases::Aliases;
use aliases::TOPIC_ALIAS_MAX;

/// Outbox items encoded per wake-up at most, so one busy subscriber cannot starve its reads.
const MAX_BATCH: usize = 256;
/// Flush the write buffer once it holds this many bytes.
const FLUSH_BYTES: usize = 64 * 1024;
/// Packets awaiting an answer from the router (SUBSCRIBE, UNSUBSCRIBE, and with persistence
/// QoS 1/2 PUBLISH and PUBREL) before the task stops reading. Below the outbox's 64 control
/// slots, so every answer fits.
const MAX_PENDING_REPLIES: usize = 48;
/// Prefix of the Response Information returned to a client that asks for it (MQTT 5 Request
/// Response Information 1): `culex/response/<client id>`.
pub(crate) const RESPONSE_INFORMATION_PREFIX: &str = "culex/response/";
/// Longest Reason String the server sends (a longer explanation is cut at a character
/// boundary).
const REASON_STRING_MAX: usize = 128;

/// Why the connection ended, decided where it happened.
#[derive(Debug)]
struct Ending {
    /// Will handling.
    kind: DisconnectKind,
    /// DISCONNECT reason to send first (MQTT 5), if any.
    send: Option<ReasonCode>,
    /// Session expiry from the client's DISCONNECT.
    session_expiry: Option<u32>,
    /// Why, for the log.
    why: String,
    /// The client may still be sending: read (and discard) until it closes, bounded by
    /// [`CLOSE_LINGER`], before closing the socket. False once the socket failed or the client
    /// closed it.
    linger: bool,
}

impl Ending {
    fn abnormal(send: Option<ReasonCode>, why: impl Into<String>) -> Self {
        Ending {
            kind: DisconnectKind::WithWill,
            send,
            session_expiry: None,
            why: why.into(),
            linger: true,
        }
    }

    /// The socket is closed by the client or failed: nothing to wait for.
    fn socket_gone(why: impl Into<String>) -> Self {
        Ending {
            linger: false,
            ..Ending::abnormal(None, why)
        }
    }
}

/// How long a closing connection keeps reading (and discarding) what the client still sends
/// after the server's DISCONNECT and shutdown. Closing a socket with unread data makes the
/// kernel answer with RST, and a client that gets RST while writing (BrokenPipe) often never
/// reads the DISCONNECT that explains why.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// At most this many reads of what a taken-over connection's socket still holds.
const LAST_INPUT_READS: usize = 16;

/// Serves one accepted connection until it ends.
pub(crate) fn serve<S>(
    stream: S,
    peer: Peer,
    conn: ConnId,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    serve_in_slot(stream, peer, conn, shared, shutdown, None)
}

/// [`serve`], holding `slot` (the accepted socket's place under `max_connections`) until the
/// connection ends.
///
/// Not an `async fn`: an async fn keeps its arguments beside the locals they are moved into,
/// for the whole life of the future. Here the connection state is built first and the async
/// block works on it in place.
pub(crate) fn serve_in_slot<S>(
    stream: S,
    peer: Peer,
    conn: ConnId,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    slot: Option<ConnSlot>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    // The buffers are allocated when there is something to read or write, and released once
    // the connection has been quiet for a while (see `run`): an idle connection holds none.
    let mut c = Conn {
        io: stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        conn,
        peer: peer.addr,
        listener: peer.listener,
        username: peer.identity,
        login: peer.client_cert.map(|c| {
            Box::new(Login {
                admission: Admission::Anonymous,
                client_cert: Some(c),
            })
        }),
        deny_log: None,
        shared,
        protocol: Protocol::V311,
        client_id: Arc::from(""),
        keep_alive: 0,
        session_expiry: 0,
        inbound_qos2: Vec::new(),
        aliases: None,
        client_max_packet: u32::MAX,
        problem_information: true,
        bridge: false,
        pressure: false,
        router_mode: false,
        pending_replies: 0,
        blocked: VecDeque::new(),
    };
    // This future lives as long as the connection, and is as large as the largest state held
    // across any of its awaits. The handshake and the ending run once and hold packet-sized
    // values: boxed, they cost an allocation while they run instead of every idle connection
    // carrying their state (`future_sizes` in the tests keeps an eye on it).
    async move {
        // Held (not used) until the connection ends.
        let _ = &slot;
        let Some(mut outbox) = Box::pin(c.handshake(&mut shutdown)).await else {
            return;
        };
        // Most clients are quiet after CONNACK: give the handshake's buffers back now.
        c.release_buffers();
        // From here the router tells the connection when the server stops (a `Close` in the
        // outbox), so the connected loop does not wait on `shutdown` itself.
        drop(shutdown);
        let ending = c.run(&mut outbox).await;
        let ending = Box::pin(c.last_input(ending)).await;
        Box::pin(c.finish(ending)).await;
    }
}

/// Bytes read at a time into an empty read buffer (through the stack, see [`poll_read_lazy`]),
/// and the room kept for the next read while a packet is incomplete.
const READ_CHUNK: usize = 8192;
/// Room reserved in an empty write buffer on first use.
const WRITE_CHUNK: usize = 4096;
/// A connection that has had nothing to read or write for this long frees its (empty) read
/// and write buffers. Busy connections keep theirs, so a burst does not allocate per write.
const BUFFER_IDLE: Duration = Duration::from_secs(1);

/// Reads from `io` into `buf`. With no room in `buf` (an idle connection holds no buffer),
/// the read goes to a buffer on the stack, and only what arrived is copied into a newly
/// allocated `buf`: waiting for input costs no heap memory.
fn poll_read_lazy<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() > buf.len() {
        // `read_buf` keeps no state between polls (it is cancel-safe), so a fresh one per
        // poll is fine.
        return std::pin::pin!(io.read_buf(buf)).poll(cx);
    }
    let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let got = read.filled();
    buf.reserve(READ_CHUNK.max(got.len()));
    buf.extend_from_slice(got);
    Poll::Ready(Ok(got.len()))
}

/// How a client was let in, kept to check it again after a reload.
#[derive(Debug)]
struct Login {
    admission: Admission,
    /// The client's verified TLS certificate chain (leaf first), if it sent one.
    client_cert: Option<Arc<Vec<CertificateDer<'static>>>>,
}

struct Conn<S> {
    /// The client's stream, read and written from this task only (never at the same time).
    io: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    conn: ConnId,
    peer: SocketAddr,
    listener: Arc<ListenerCtx>,
    /// The authenticated user name (or certificate identity), for ACL checks. Before CONNECT
    /// is accepted: the identity from the client's TLS certificate, if any (kept here rather
    /// than beside this struct, where every connection would carry the empty slot).
    username: Option<String>,
    /// How the client was let in, to check again after a reload; `None` for an anonymous
    /// client without a certificate (boxed: most connections need nothing here).
    login: Option<Box<Login>>,
    /// Rate limit of the log lines about publishes the ACL refused (allocated with the first).
    deny_log: Option<Box<culex_broker::log_gate::LogGate>>,
    shared: Arc<Shared>,
    protocol: Protocol,
    client_id: Arc<str>,
    /// Keep Alive in force, in seconds (0: none).
    keep_alive: u16,
    session_expiry: u32,
    inbound_qos2: Vec<u16>,
    /// Topic Aliases (MQTT 5), allocated when the client uses them or allows the server to.
    aliases: Option<Box<Aliases>>,
    /// The client's Maximum Packet Size (MQTT 5; `u32::MAX` when it sent none).
    client_max_packet: u32,
    /// The client's Request Problem Information (MQTT 5; true unless it sent 0): Reason
    /// Strings on acknowledgements only when true [MQTT-3.1.2-29].
    problem_information: bool,
    /// The client connected with Mosquitto's bridge bit (`try_private`): its subscriptions get
    /// No Local and Retain As Published.
    bridge: bool,
    /// Flow control: this client's messages overfill a subscriber's queue
    /// ([`Outbound::Pressure`]).
    pressure: bool,
    /// The router answers this client's QoS 1/2 PUBLISH (see [`Conn::router_answers`]).
    router_mode: bool,
    pending_replies: usize,
    /// Commands the router's full channel could not take yet, in order: `run` waits until
    /// they are sent before handling anything else (backpressure on a busy router).
    blocked: VecDeque<Command>,
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads CONNECT, checks it, registers with the router and writes CONNACK. Returns the
    /// outbox on success; on failure the connection is already answered and closed.
    async fn handshake(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<OutboxReceiver> {
        let limits = &self.shared.limits;
        let first = tokio::select! {
            r = timeout(limits.connect_timeout, self.read_packet(None)) => r,
            _ = shutdown.changed() => return None,
        };
        let connect = match first {
            Err(_) => {
                debug!(peer = %self.peer, "no CONNECT in time; closing");
                return None;
            }
            Ok(Ok(Some(Packet::Connect(c)))) => {
                self.shared.counters.packets_received[1].inc();
                c
            }
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(other))) => {
                debug!(peer = %self.peer, packet = other.name(), "first packet is not CONNECT; closing");
                self.shared.counters.packet_in(&other);
                self.shared.counters.protocol_errors.inc();
                self.shared.counters.refuse(Refusal::ProtocolError);
                return None;
            }
            Ok(Err(DecodeError::UnsupportedProtocol { name, level })) => {
                debug!(peer = %self.peer, %name, level, "unsupported protocol version");
                // [MQTT-3.1.2-2] answer in the newest form the client can read, then close.
                let protocol = if level == 5 {
                    Protocol::V5
                } else {
                    Protocol::V311
                };
                self.protocol = protocol;
                self.refuse(ReasonCode::UnsupportedProtocolVersion).await;
                return None;
            }
            Ok(Err(e)) => {
                info!(peer = %self.peer, error = %e, "bad CONNECT; closing");
                self.shared.counters.protocol_errors.inc();
                self.shared.counters.refuse(Refusal::ProtocolError);
                return None;
            }
        };
        self.protocol = connect.protocol;
        self.accept(*connect).await
    }

    async fn accept(&mut self, mut connect: Connect) -> Option<OutboxReceiver> {
        let identity = self.username.take();
        let limits = Arc::clone(&self.shared.limits);
        let v5 = self.protocol.is_v5();
        if v5 {
            // Known before any answer: even a refusing CONNACK must fit [MQTT-3.2.2-19].
            self.client_max_packet = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
            self.problem_information = connect.properties.request_problem_information != Some(0);
        }

        // Client identifier rules.
        if connect.client_id.is_empty() {
            let refuse = match self.protocol {
                Protocol::V31 => true,
                // [MQTT-3.1.3-8]
                Protocol::V311 => !connect.clean_start || !limits.allow_zero_length_clientid,
                Protocol::V5 => !limits.allow_zero_length_clientid,
            };
            if refuse {
                self.refuse(ReasonCode::ClientIdentifierNotValid).await;
                return None;
            }
        }
        if let Some(prefix) = limits.clientid_prefixes.as_deref() {
            if !connect.client_id.is_empty() && !connect.client_id.starts_with(prefix) {
                info!(peer = %self.peer, client_id = %Clipped(&connect.client_id),
                    "client refused: client id does not start with clientid_prefixes");
                // Mosquitto answers "not authorised" here too.
                self.refuse(ReasonCode::NotAuthorized).await;
                return None;
            }
        }
        // `message_size_limit` applies to the will too (as in Mosquitto): a will the broker
        // would refuse as a message is refused at CONNECT.
        let will_too_large = connect.will.as_ref().is_some_and(|w| {
            limits.message_size_limit > 0 && w.payload.len() > limits.message_size_limit as usize
        });
        if will_too_large {
            info!(peer = %self.peer, client_id = %Clipped(&connect.client_id),
                "client refused: will payload larger than message_size_limit");
            self.refuse(if v5 {
                ReasonCode::PacketTooLarge
            } else {
                ReasonCode::NotAuthorized
            })
            .await;
            return None;
        }
        let security = Arc::clone(&self.listener.security);
        let (username, admission) = match security
            .authenticate(
                connect.username.as_deref(),
                connect.password.as_deref(),
                identity.as_deref(),
                self.peer.ip(),
            )
            .await
        {
            Ok(u) => u,
            Err(reason) => {
                // The password is never logged.
                info!(peer = %self.peer, client_id = %Clipped(&connect.client_id),
                    username = %Clipped(connect.username.as_deref().unwrap_or("")), "client refused: not authorised");
                self.shared.counters.auth_failures.inc();
                if matches!(
                    reason,
                    ReasonCode::ConnectionRateExceeded | ReasonCode::ServerBusy
                ) {
                    self.shared.counters.auth_throttled.inc();
                }
                self.refuse(reason).await;
                return None;
            }
        };
        if security.use_username_as_clientid() {
            // The user name is the client id (a user has one session); without a user name
            // there is none to use, and Mosquitto refuses as not authorised too.
            match &username {
                Some(user) => connect.client_id.clone_from(user),
                None => {
                    info!(peer = %self.peer, client_id = %Clipped(&connect.client_id),
                        "client refused: use_username_as_clientid is set and the client has no user name");
                    self.refuse(ReasonCode::NotAuthorized).await;
                    return None;
                }
            }
        }
        self.username.clone_from(&username);
        match (&mut self.login, admission) {
            (None, Admission::Anonymous) => {}
            (Some(login), _) => login.admission = admission,
            (None, _) => {
                self.login = Some(Box::new(Login {
                    admission,
                    client_cert: None,
                }));
            }
        }
        if connect.properties.authentication_method.is_some() {
            self.refuse(ReasonCode::BadAuthenticationMethod).await;
            return None;
        }
        if let (Some(mount), Some(will)) = (&self.listener.mount_point, connect.will.as_mut()) {
            will.topic = format!("{mount}{}", will.topic);
        }
        if let Some(will) = &connect.will {
            if will.qos > limits.max_qos {
                self.refuse(ReasonCode::QoSNotSupported).await;
                return None;
            }
            if will.retain && !limits.retain_available {
                self.refuse(ReasonCode::RetainNotSupported).await;
                return None;
            }
            // The will's payload is checked like a PUBLISH's (section 3.1.3.2.3).
            if v5 && !payload_format_valid(&will.properties, &will.payload) {
                self.refuse(ReasonCode::PayloadFormatInvalid).await;
                return None;
            }
        }
        // Keepalive.
        let mut server_keep_alive = None;
        let mut keep_alive = connect.keep_alive;
        if keep_alive > limits.max_keepalive || (keep_alive == 0 && limits.max_keepalive < u16::MAX)
        {
            if v5 {
                keep_alive = limits.max_keepalive;
                server_keep_alive = Some(keep_alive);
            } else if keep_alive > limits.max_keepalive {
                self.refuse(ReasonCode::ClientIdentifierNotValid).await;
                return None;
            }
        }
        self.keep_alive = keep_alive;
        self.session_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let ours = self
            .listener
            .queue
            .as_ref()
            .and_then(|q| q.max_inflight)
            .unwrap_or(limits.max_inflight_messages);
        let window = ours.min(receive_maximum).max(1);
        let (tx, rx) = culex_broker::outbox(self.shared.broker.outbox_capacity(window));
        let (reply_tx, reply_rx) = oneshot::channel();
        let req = ConnectRequest {
            conn: self.conn,
            protocol: self.protocol,
            client_id: connect.client_id,
            clean_start: connect.clean_start,
            session_expiry: self.session_expiry,
            receive_maximum,
            maximum_packet_size: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
            will: connect.will,
            username,
            access: Some(security),
            queue: self.listener.queue.clone(),
            outbox: tx,
            reply: reply_tx,
        };
        if self
            .shared
            .router
            .send(Command::Connect(Box::new(req)))
            .await
            .is_err()
        {
            self.refuse(ReasonCode::ServerUnavailable).await;
            return None;
        }
        let Ok(outcome) = reply_rx.await else {
            self.refuse(ReasonCode::ServerUnavailable).await;
            return None;
        };
        let ConnectOutcome {
            session_present,
            client_id,
            assigned,
            inbound_qos2,
        } = outcome;
        self.client_id = Arc::clone(&client_id);
        self.inbound_qos2 = inbound_qos2;
        let mut properties = Properties::default();
        if v5 {
            properties.receive_maximum = Some(limits.max_inflight_messages.max(1));
            properties.maximum_packet_size = Some(limits.max_packet_size);
            properties.topic_alias_maximum = Some(TOPIC_ALIAS_MAX);
            properties.retain_available = Some(u8::from(limits.retain_available));
            if limits.max_qos < QoS::ExactlyOnce {
                properties.maximum_qos = Some(limits.max_qos.as_u8());
            }
            properties.wildcard_subscription_available = Some(1);
            properties.subscription_identifier_available = Some(1);
            properties.shared_subscription_available = Some(1);
            properties.server_keep_alive = server_keep_alive;
            if assigned {
                properties.assigned_client_identifier = Some(client_id.to_string());
            }
            // Only when asked for [MQTT-3.1.2-28].
            if connect.properties.request_response_information == Some(1) {
                properties.response_information =
                    Some(format!("{RESPONSE_INFORMATION_PREFIX}{client_id}"));
            }
            self.aliases = Aliases::toward(connect.properties.topic_alias_maximum.unwrap_or(0));
        }
        let connack = Packet::ConnAck(ConnAck {
            session_present,
            reason_code: ReasonCode::Success,
            properties,
        });
        let now_connected = self.shared.counters.connected.inc_get();
        self.shared.counters.connected_max.max(now_connected);
        self.shared.counters.connects.inc();
        if self.shared.limits.connection_messages {
            info!(peer = %self.peer, listener = %self.listener.local, client_id = %Clipped(&client_id), protocol = ?self.protocol,
                session_present, "client connected");
        }
        if self.queue(connack).is_err() || self.flush().await.is_err() {
            self.finish(Ending::socket_gone("write failed")).await;
            return None;
        }
        Some(rx)
    }

    /// Sends a refusing CONNACK and closes.
    async fn refuse(&mut self, reason: ReasonCode) {
        self.shared
            .counters
            .refuse(Refusal::from_reason_code(reason));
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: reason,
            properties: Properties::default(),
        });
        if self.queue(connack).is_ok() {
            let _ = self.flush().await;
        }
        let _ = self.io.shutdown().await;
    }

    /// Reads until one packet is decoded, the peer closes (`Ok(None)`) or the input is bad.
    async fn read_packet(
        &mut self,
        protocol: Option<Protocol>,
    ) -> Result<Option<Packet>, DecodeError> {
        let max = self.shared.limits.max_packet_size;
        loop {
            if protocol.is_none() && culex_proto::take_bridge_bit(&mut self.rbuf) {
                self.bridge = true;
            }
            if let Some(p) = decode(&mut self.rbuf, protocol, max)? {
                return Ok(Some(p));
            }
            self.rbuf.reserve(4096);
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.shared.counters.bytes_received.add(n as u64),
            }
        }
    }

    /// The connected loop. Returns how the connection ended.
    async fn run(&mut self, outbox: &mut OutboxReceiver) -> Ending {
        let max = self.shared.limits.max_packet_size;
        let keepalive = Duration::from_secs(u64::from(self.keep_alive)).mul_f32(1.5);
        let mut deadline = Instant::now() + keepalive;
        loop {
            // Handle every complete packet already buffered. Packets are handled without
            // awaiting (so no packet-sized value is part of this future's waiting state); a
            // command the router cannot take yet waits in `blocked` and is sent here.
            // The keepalive deadline moves once per batch of packets, not per packet: reading
            // the clock for each PUBACK of a burst costs more than the rest of its handling.
            let mut received = false;
            loop {
                let end = match decode(&mut self.rbuf, Some(self.protocol), max) {
                    Ok(Some(packet)) => {
                        received = true;
                        self.on_packet(packet)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.shared.counters.protocol_errors.inc();
                        return Ending::abnormal(Some(e.reason_code()), e.to_string());
                    }
                };
                if !self.blocked.is_empty() {
                    if let Err(end) = self.send_blocked().await {
                        return end;
                    }
                }
                if let Some(end) = end {
                    return end;
                }
            }
            // Commands the router could not take at once (the last one may have come from the
            // outbox branch below, with no packet after it to send it).
            if !self.blocked.is_empty() {
                if let Err(end) = self.send_blocked().await {
                    return end;
                }
            }
            if !self.wbuf.is_empty() {
                if let Err(why) = self.flush().await {
                    return Ending::socket_gone(why);
                }
            }
            let reading = self.pending_replies < MAX_PENDING_REPLIES;
            // A packet larger than the buffer gets room for exactly the rest of it: grown
            // chunk by chunk (doubling), the buffer would end up to twice the packet's size,
            // and a queued payload keeps its whole buffer alive (`max_queued_bytes` counts
            // payloads, so the memory it bounds would be up to twice the figure).
            if let Ok(Some(h)) = peek_header(&self.rbuf, max) {
                let total = usize::try_from(h.packet_len()).unwrap_or(usize::MAX);
                if total > self.rbuf.capacity() {
                    self.rbuf.reserve(total - self.rbuf.len());
                }
            }
            // A released read buffer stays released until data arrives (`poll_read_lazy`).
            if self.rbuf.capacity() != 0 && self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(READ_CHUNK);
            }
            // One timer for both the keepalive and, while buffers are held, their release
            // once the connection has been quiet for `BUFFER_IDLE`.
            let holds = self.holds_buffers();
            let now = (received || holds).then(Instant::now);
            if let (true, Some(now)) = (received, now) {
                deadline = now + keepalive;
            }
            let release_at = now.filter(|_| holds).map(|now| now + BUFFER_IDLE);
            let timer = match (release_at, keepalive.is_zero()) {
                (Some(at), true) => Some(at),
                (Some(at), false) => Some(at.min(deadline)),
                (None, true) => None,
                (None, false) => Some(deadline),
            };
            tokio::select! {
                biased;
                item = outbox.recv() => {
                    let Some(item) = item else {
                        return Ending::abnormal(None, "router gone");
                    };
                    if let Some(end) = self.on_outbound(item) {
                        return end;
                    }
                    let mut n = 1;
                    while n < MAX_BATCH && self.wbuf.len() < FLUSH_BYTES {
                        let Ok(item) = outbox.try_recv() else { break };
                        n += 1;
                        if let Some(end) = self.on_outbound(item) {
                            return end;
                        }
                    }
                    if outbox.space_wanted() {
                        if let Err(end) = self.command(Command::OutboxSpace { conn: self.conn }) {
                            return end;
                        }
                    }
                }
                r = poll_fn(|cx| poll_read_lazy(&mut self.io, &mut self.rbuf, cx)), if reading => {
                    match r {
                        Ok(0) => return Ending::socket_gone("connection closed by client"),
                        Err(e) => return Ending::socket_gone(format!("read error: {e}")),
                        Ok(n) => self.shared.counters.bytes_received.add(n as u64),
                    }
                }
                _ = sleep_until(timer.unwrap_or(deadline)), if timer.is_some() => {
                    if !keepalive.is_zero() && Instant::now() >= deadline {
                        return Ending::abnormal(Some(ReasonCode::KeepAliveTimeout), "keepalive timeout");
                    }
                    self.release_buffers();
                    // A burst also grew the outbox; it is drained by now (it was polled first).
                    outbox.shrink();
                }
            }
        }
    }

    /// The router closes this connection because a newer one takes its session over. What
    /// this client sent before that still counts, in order: the packets already buffered and
    /// those the socket holds right now are handled first, above all a DISCONNECT, which
    /// decides whether the session and the will survive (the router answers the new
    /// connection only once this one's end is applied). Any other ending is returned as is.
    async fn last_input(&mut self, end: Ending) -> Ending {
        if end.send != Some(ReasonCode::SessionTakenOver) {
            return end;
        }
        let max = self.shared.limits.max_packet_size;
        for _ in 0..LAST_INPUT_READS {
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(READ_CHUNK);
            }
            // Only what is there now: a zero timeout polls the read once.
            match timeout(Duration::ZERO, self.io.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => self.shared.counters.bytes_received.add(n as u64),
                _ => break,
            }
        }
        while let Ok(Some(packet)) = decode(&mut self.rbuf, Some(self.protocol), max) {
            let ended = self.on_packet(packet);
            if !self.blocked.is_empty() && self.send_blocked().await.is_err() {
                break;
            }
            if let Some(client_end) = ended {
                // The client ended the connection itself (DISCONNECT, or a protocol error).
                return client_end;
            }
        }
        end
    }

    /// Acknowledges a PUBLISH that is not routed (MQTT 5 with `reason`; 3.1.1 cannot say
    /// why), as Mosquitto does for denied publishes; QoS 0 is dropped silently.
    fn refuse_publish(
        &mut self,
        p: &Publish,
        packet_id: u16,
        reason: ReasonCode,
    ) -> Option<Ending> {
        let v5 = self.protocol.is_v5();
        let mut ack = PubResp::new(packet_id);
        if v5 {
            ack.reason_code = reason;
        }
        match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => self.ack(Packet::PubAck(ack)),
            QoS::ExactlyOnce => {
                if !v5 && !self.inbound_qos2.contains(&packet_id) {
                    // 3.1.1 has no failure PUBREC: the client goes on to PUBREL.
                    self.inbound_qos2.push(packet_id);
                }
                self.ack(Packet::PubRec(ack))
            }
        }
    }

    /// True while the connection holds a buffer it could give back.
    fn holds_buffers(&self) -> bool {
        (self.wbuf.is_empty() && self.wbuf.capacity() != 0)
            || (self.rbuf.is_empty() && self.rbuf.capacity() != 0)
    }

    /// Frees the read and write buffers if they hold nothing: a quiet connection keeps no
    /// buffer; the next read goes through the stack and the next write allocates anew.
    fn release_buffers(&mut self) {
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    /// Handles one packet from the client. `Some` ends the connection.
    fn on_packet(&mut self, packet: Packet) -> Option<Ending> {
        let v5 = self.protocol.is_v5();
        self.shared.counters.packet_in(&packet);
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubRel(r) => {
                let mut comp = PubResp::new(r.packet_id);
                let known =
                    if let Some(i) = self.inbound_qos2.iter().position(|&id| id == r.packet_id) {
                        self.inbound_qos2.swap_remove(i);
                        true
                    } else {
                        false
                    };
                if self.shared.limits.router_acks {
                    // Persistence: the stored session forgets the id first; the router sends
                    // PUBCOMP.
                    self.pending_replies += 1;
                    return self
                        .command(Command::PubRel {
                            conn: self.conn,
                            packet_id: r.packet_id,
                        })
                        .err();
                }
                if !known && v5 {
                    comp.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                // Through the router while it answers this client (flow control), so the
                // PUBCOMP keeps its place behind answers it still owes.
                self.ack(Packet::PubComp(comp))
            }
            Packet::PubAck(r) => self
                .command(Command::PubAck {
                    conn: self.conn,
                    packet_id: r.packet_id,
                })
                .err(),
            Packet::PubRec(r) => self
                .command(Command::PubRec {
                    conn: self.conn,
                    packet_id: r.packet_id,
                    reason: r.reason_code,
                })
                .err(),
            Packet::PubComp(r) => self
                .command(Command::PubComp {
                    conn: self.conn,
                    packet_id: r.packet_id,
                })
                .err(),
            Packet::Subscribe(mut s) => {
                if let Some(mount) = &self.listener.mount_point {
                    for f in &mut s.filters {
                        f.filter = mounted_filter(mount, &f.filter);
                    }
                }
                if self.bridge {
                    // A bridge (Mosquitto's protocol-level bit) must not get its own messages
                    // back, and needs the retain flag as published: what MQTT 5 asks for with
                    // No Local and Retain As Published.
                    for f in &mut s.filters {
                        f.options.no_local = true;
                        f.options.retain_as_published = true;
                    }
                }
                self.pending_replies += 1;
                self.command(Command::Subscribe {
                    conn: self.conn,
                    subscribe: s,
                })
                .err()
            }
            Packet::Unsubscribe(mut u) => {
                if let Some(mount) = &self.listener.mount_point {
                    for f in &mut u.filters {
                        *f = mounted_filter(mount, f);
                    }
                }
                self.pending_replies += 1;
                self.command(Command::Unsubscribe {
                    conn: self.conn,
                    unsubscribe: u,
                })
                .err()
            }
            Packet::PingReq => self.queue_or_end(Packet::PingResp),
            Packet::Disconnect(d) => Some(self.on_disconnect(d)),
            Packet::Auth(_) => Some(Ending::abnormal(
                Some(ReasonCode::BadAuthenticationMethod),
                "AUTH without an authentication method",
            )),
            other => {
                self.shared.counters.protocol_errors.inc();
                Some(Ending::abnormal(
                    Some(ReasonCode::ProtocolError),
                    format!("{} is not sent by clients", other.name()),
                ))
            }
        }
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Ending {
        let requested = d.properties.session_expiry_interval;
        if self.session_expiry == 0 && requested.is_some_and(|e| e != 0) {
            // Section 3.14.2.2.2 (a protocol error without a rule id; [MQTT-3.14.2-2] is the
            // server's side: it never sends a Session Expiry Interval on DISCONNECT).
            self.shared.counters.protocol_errors.inc();
            return Ending::abnormal(
                Some(ReasonCode::ProtocolError),
                "DISCONNECT sets a session expiry after CONNECT set 0",
            );
        }
        let kind = if d.reason_code == ReasonCode::DisconnectWithWillMessage {
            DisconnectKind::WithWill
        } else {
            DisconnectKind::Normal
        };
        Ending {
            kind,
            send: None,
            session_expiry: requested,
            why: "client disconnected".into(),
            // The client ended the connection: it waits for nothing from us.
            linger: false,
        }
    }

    fn on_publish(&mut self, mut p: Publish) -> Option<Ending> {
        let limits = Arc::clone(&self.shared.limits);
        let v5 = self.protocol.is_v5();
        self.shared.counters.publish_in(p.qos, p.payload.len());
        if v5 {
            if let Some(alias) = p.properties.topic_alias {
                let aliases = self.aliases.get_or_insert_with(Box::default);
                if let Err((reason, why)) = aliases.resolve_inbound(alias, &mut p.topic) {
                    return Some(Ending::abnormal(Some(reason), why));
                }
                p.properties.topic_alias = None;
            }
        }
        if let Some(mount) = &self.listener.mount_point {
            p.topic = format!("{mount}{}", p.topic);
        }
        if p.qos > limits.max_qos {
            return Some(Ending::abnormal(
                Some(ReasonCode::QoSNotSupported),
                "PUBLISH above the server's maximum QoS",
            ));
        }
        if p.retain && !limits.retain_available {
            return Some(Ending::abnormal(
                Some(ReasonCode::RetainNotSupported),
                "retained PUBLISH but retain is not available",
            ));
        }
        let too_large =
            limits.message_size_limit > 0 && p.payload.len() > limits.message_size_limit as usize;
        let packet_id = p.packet_id.unwrap_or(0);
        if v5 && !payload_format_valid(&p.properties, &p.payload) {
            // [MQTT-3.3.2-4] allows checking a UTF-8 payload: QoS 1/2 are answered 0x99 and
            // dropped (the connection stays); QoS 0 has no answer but DISCONNECT 0x99.
            debug!(client_id = %Clipped(&self.client_id), topic = %Clipped(&p.topic), "payload is not UTF-8 as indicated");
            let mut ack = PubResp::new(packet_id);
            ack.reason_code = ReasonCode::PayloadFormatInvalid;
            return match p.qos {
                QoS::AtMostOnce => Some(Ending::abnormal(
                    Some(ReasonCode::PayloadFormatInvalid),
                    "payload is not UTF-8 but its Payload Format Indicator says so",
                )),
                QoS::AtLeastOnce => self.ack(Packet::PubAck(ack)),
                QoS::ExactlyOnce => self.ack(Packet::PubRec(ack)),
            };
        }
        if culex_proto::topic::exceeds_limits(
            &p.topic,
            limits.max_topic_levels,
            limits.max_topic_length,
        ) {
            // Refused like a denied publish (MQTT 5: 0x90), counted as too large.
            self.shared.counters.dropped_too_large.inc();
            debug!(client_id = %Clipped(&self.client_id), topic = %Clipped(&p.topic), "topic beyond max_topic_levels / max_topic_length");
            return self.refuse_publish(&p, packet_id, ReasonCode::TopicNameInvalid);
        }
        let allowed =
            self.listener
                .security
                .can_write(self.username.as_deref(), &self.client_id, &p.topic);
        if !allowed {
            // Denied publishes are acknowledged (MQTT 5: 0x87) and dropped, as Mosquitto does.
            self.shared.counters.acl_denied_publish.inc();
            let gate = self.deny_log.get_or_insert_with(Box::default);
            if let Some(skipped) = gate.allow(std::time::Instant::now()) {
                info!(client_id = %Clipped(&self.client_id),
                    user = self.username.as_deref().unwrap_or(""), topic = %Clipped(&p.topic),
                    not_logged_since = skipped, "publish refused by the ACL");
            }
            return self.refuse_publish(&p, packet_id, ReasonCode::NotAuthorized);
        }
        match p.qos {
            QoS::AtMostOnce => {
                if too_large {
                    self.shared.counters.dropped_too_large.inc();
                    return None;
                }
                self.route(p).err()
            }
            QoS::AtLeastOnce => {
                let mut ack = PubResp::new(packet_id);
                if too_large {
                    self.shared.counters.dropped_too_large.inc();
                    if v5 {
                        ack.reason_code = ReasonCode::QuotaExceeded;
                    }
                    return self.ack(Packet::PubAck(ack));
                }
                match self.route(p) {
                    Ok(true) => None,
                    Ok(false) => self.queue_or_end(Packet::PubAck(ack)),
                    Err(end) => Some(end),
                }
            }
            QoS::ExactlyOnce => {
                let mut rec = PubResp::new(packet_id);
                if self.inbound_qos2.contains(&packet_id) {
                    // A retransmission: already routed once [MQTT-4.3.3-10].
                    self.ack(Packet::PubRec(rec))
                } else if too_large {
                    self.shared.counters.dropped_too_large.inc();
                    if v5 {
                        rec.reason_code = ReasonCode::QuotaExceeded;
                    }
                    self.ack(Packet::PubRec(rec))
                } else {
                    let receive_max = limits.max_inflight_messages.max(1);
                    if v5 && self.inbound_qos2.len() >= usize::from(receive_max) {
                        return Some(Ending::abnormal(
                            Some(ReasonCode::ReceiveMaximumExceeded),
                            "client exceeded the server's Receive Maximum",
                        ));
                    }
                    self.inbound_qos2.push(packet_id);
                    match self.route(p) {
                        Ok(true) => None,
                        Ok(false) => self.queue_or_end(Packet::PubRec(rec)),
                        Err(end) => Some(end),
                    }
                }
            }
        }
    }

    /// Hands a PUBLISH to the router. Returns true when the router will acknowledge it (after
    /// what it caused is durable); false when the connection acknowledges it now.
    fn route(&mut self, p: Publish) -> Result<bool, Ending> {
        let ack = p.qos != QoS::AtMostOnce && self.router_answers();
        if ack {
            self.pending_replies += 1;
        }
        self.command(Command::Publish {
            conn: self.conn,
            publish: p,
            ack,
        })?;
        Ok(ack)
    }

    /// Whether the router answers this client's QoS 1/2 PUBLISH (and the connection's own
    /// answers go through it, to keep their order): always with persistence (answers wait
    /// for the store); while flow control says this client's messages overfill a subscriber's
    /// queue (`Outbound::Pressure`, answers wait for it to drain); and after that until every
    /// answer the router owes has been written, so that a direct answer never overtakes one.
    fn router_answers(&mut self) -> bool {
        if self.shared.limits.router_acks {
            return true;
        }
        if self.pressure {
            self.router_mode = true;
        } else if self.router_mode && self.pending_replies == 0 {
            self.router_mode = false;
        }
        self.router_mode
    }

    /// Sends an acknowledgement the connection decided on. With persistence it goes through
    /// the router, so it cannot overtake acknowledgements still waiting for the store.
    fn ack(&mut self, packet: Packet) -> Option<Ending> {
        if !self.router_answers() {
            return self.queue_or_end(packet);
        }
        self.pending_replies += 1;
        self.command(Command::Ack {
            conn: self.conn,
            packet: Box::new(packet),
        })
        .err()
    }

    /// Sends a command to the router, or, when its channel is full, queues it in `blocked`
    /// for `run` to send (waiting for room: backpressure on a busy router) before it handles
    /// anything else.
    fn command(&mut self, cmd: Command) -> Result<(), Ending> {
        if !self.blocked.is_empty() {
            self.blocked.push_back(cmd);
            return Ok(());
        }
        match self.shared.router.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                self.blocked.push_back(cmd);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(router_gone()),
        }
    }

    /// Sends the commands in `blocked`, in order, as the router makes room. Only a permit is
    /// awaited, so the waiting state holds no command.
    async fn send_blocked(&mut self) -> Result<(), Ending> {
        while !self.blocked.is_empty() {
            let permit = self
                .shared
                .router
                .reserve()
                .await
                .map_err(|_| router_gone())?;
            if let Some(cmd) = self.blocked.pop_front() {
                permit.send(cmd);
            }
        }
        Ok(())
    }

    /// Encodes one outbox item into the write buffer. `Some` ends the connection.
    fn on_outbound(&mut self, item: Outbound) -> Option<Ending> {
        self.reserve_write();
        match item {
            Outbound::Deliver(d) => {
                let props = d.properties();
                let mut view = d.view(&props);
                if let Some(mount) = &self.listener.mount_point {
                    // Only topics under the mount point match this client's filters.
                    view.topic = view.topic.strip_prefix(&**mount).unwrap_or(view.topic);
                }
                let alias = match &mut self.aliases {
                    Some(a) => a.outbound.assign(&d.message.topic),
                    None => None,
                };
                let sent = match alias {
                    None => encode_publish(&view, self.protocol, &mut self.wbuf),
                    Some((alias, new)) => self.encode_aliased(view, alias, new),
                };
                if let Err(e) = sent {
                    warn!(client_id = %Clipped(&self.client_id), error = %e, "cannot encode PUBLISH; dropped");
                    return None;
                }
                self.shared
                    .counters
                    .publish_out(d.qos, d.message.payload.len());
                None
            }
            Outbound::Packet(p) => {
                if matches!(
                    *p,
                    Packet::SubAck(_)
                        | Packet::UnsubAck(_)
                        | Packet::PubAck(_)
                        | Packet::PubRec(_)
                        | Packet::PubComp(_)
                ) {
                    self.pending_replies = self.pending_replies.saturating_sub(1);
                }
                self.queue_or_end(*p)
            }
            Outbound::Close(reason) => Some(Ending::abnormal(Some(reason), reason.description())),
            Outbound::Recheck => self.recheck(),
            Outbound::Pressure(on) => {
                self.pressure = on;
                None
            }
        }
    }

    /// Encodes a PUBLISH with a Topic Alias: the full topic when the alias is `new`, none
    /// otherwise. Falls back to the plain PUBLISH (forgetting a new alias) if the aliased one
    /// would exceed the client's Maximum Packet Size, which the router checked for the plain
    /// form only.
    fn encode_aliased(
        &mut self,
        mut view: culex_proto::PublishView<'_>,
        alias: u16,
        new: bool,
    ) -> Result<(), culex_proto::EncodeError> {
        let plain = view;
        if !new {
            view.topic = "";
        }
        let aliased = AliasedPublish { view, alias };
        let fits = self.client_max_packet == u32::MAX
            || aliased_publish_encoded_len(&aliased)
                .is_ok_and(|n| n <= self.client_max_packet as usize);
        let sent = if fits {
            encode_aliased_publish(&aliased, &mut self.wbuf)
        } else {
            Err(culex_proto::EncodeError::PacketTooLarge { size: 0 })
        };
        if sent.is_err() {
            if new {
                if let Some(a) = &mut self.aliases {
                    a.outbound.forget(alias);
                }
            }
            return encode_publish(&plain, self.protocol, &mut self.wbuf);
        }
        sent
    }

    /// Adds a Reason String to a failure answer (MQTT 5), when allowed: always on CONNACK and
    /// DISCONNECT, on other packets unless the client set Request Problem Information 0
    /// [MQTT-3.1.2-29].
    fn explain(&self, p: &mut Packet, why: Option<&str>) {
        let (props, reason) = match p {
            Packet::ConnAck(c) => (&mut c.properties, c.reason_code),
            Packet::Disconnect(d) => (&mut d.properties, d.reason_code),
            _ if !self.problem_information => return,
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
                (&mut r.properties, r.reason_code)
            }
            Packet::SubAck(a) => match a.reason_codes.iter().find(|c| c.is_error()) {
                Some(&c) => (&mut a.properties, c),
                None => return,
            },
            Packet::UnsubAck(a) => match a.reason_codes.iter().find(|c| c.is_error()) {
                Some(&c) => (&mut a.properties, c),
                None => return,
            },
            _ => return,
        };
        if !reason.is_error() || props.reason_string.is_some() {
            return;
        }
        let text = why.unwrap_or_else(|| reason.description());
        let mut end = text.len().min(REASON_STRING_MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        props.reason_string = text.get(..end).map(str::to_owned);
    }

    /// Checks a packet against the client's Maximum Packet Size [MQTT-3.1.2-24]: drops the
    /// Reason String and User Properties if they make it too large (e.g. [MQTT-3.2.2-19],
    /// [MQTT-3.4.2-2]), then says whether it fits. A CONNACK is always sent (the client
    /// could not go on without it).
    fn fit(&self, p: &mut Packet) -> bool {
        let max = self.client_max_packet as usize;
        if self.client_max_packet == u32::MAX
            || encoded_len(p, self.protocol).is_ok_and(|n| n <= max)
        {
            return true;
        }
        let props = match p {
            Packet::ConnAck(c) => &mut c.properties,
            Packet::Disconnect(d) => &mut d.properties,
            Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
                &mut r.properties
            }
            Packet::SubAck(a) => &mut a.properties,
            Packet::UnsubAck(a) => &mut a.properties,
            _ => return false,
        };
        props.reason_string = None;
        props.user_properties.clear();
        matches!(p, Packet::ConnAck(_)) || encoded_len(p, self.protocol).is_ok_and(|n| n <= max)
    }

    fn queue(&mut self, p: Packet) -> Result<(), culex_proto::EncodeError> {
        self.queue_explained(p, None)
    }

    /// Encodes a packet into the write buffer; for MQTT 5 with a Reason String (`why`, or the
    /// reason code's description) when it reports a failure, and only if it fits the client's
    /// Maximum Packet Size (otherwise it is dropped, counted, as if sent [MQTT-3.1.2-25]).
    fn queue_explained(
        &mut self,
        mut p: Packet,
        why: Option<&str>,
    ) -> Result<(), culex_proto::EncodeError> {
        if self.protocol.is_v5() {
            self.explain(&mut p, why);
            if !self.fit(&mut p) {
                self.shared.counters.dropped_too_large.inc();
                debug!(client_id = %Clipped(&self.client_id), packet = p.name(),
                    "packet above the client's Maximum Packet Size; dropped");
                return Ok(());
            }
        }
        self.reserve_write();
        encode(&p, self.protocol, &mut self.wbuf)?;
        self.shared.counters.packet_out(&p);
        Ok(())
    }

    /// Gives an empty write buffer room for a batch, so that encoding many small packets
    /// does not grow it a few bytes at a time.
    fn reserve_write(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(WRITE_CHUNK);
        }
    }

    /// After a reload: is this client still let in? Its user must still be in the password
    /// file with the same entry (or anonymous access still allowed), and its certificate must
    /// still verify against the CAs and CRLs in force. If not, the connection ends with
    /// DISCONNECT 0x87 (MQTT 5) saying why; as with any server-side close, the will is sent.
    fn recheck(&mut self) -> Option<Ending> {
        let admission = self
            .login
            .as_ref()
            .map_or(Admission::Anonymous, |l| l.admission);
        let login = self
            .listener
            .security
            .recheck(self.username.as_deref(), admission)
            .map_err(str::to_owned);
        let chain = self.login.as_ref().and_then(|l| l.client_cert.as_ref());
        let cert = match (&self.listener.tls, chain) {
            (Some(tls), Some(chain)) => tls
                .recheck_client(chain)
                .map_err(|e| format!("client certificate no longer accepted: {e}")),
            _ => Ok(()),
        };
        let why = login.and(cert).err()?;
        info!(peer = %self.peer, client_id = %Clipped(&self.client_id),
            username = %Clipped(self.username.as_deref().unwrap_or("")),
            "disconnecting client after reload: {why}");
        self.shared.counters.revoked_connections.inc();
        Some(Ending::abnormal(Some(ReasonCode::NotAuthorized), why))
    }

    fn queue_or_end(&mut self, p: Packet) -> Option<Ending> {
        let name = p.name();
        match self.queue(p) {
            Ok(()) => None,
            Err(e) => Some(Ending::abnormal(
                Some(ReasonCode::ImplementationSpecificError),
                format!("cannot encode {name}: {e}"),
            )),
        }
    }

    /// Writes the buffered packets in one go, bounded in time so a client that stopped
    /// reading cannot pin the task forever.
    async fn flush(&mut self) -> Result<(), &'static str> {
        let limit = self.shared.limits.write_timeout;
        // Split: once written and dropped, the allocation is the write buffer's alone again
        // and is reused; `run` releases it when the connection goes quiet.
        let buf = self.wbuf.split();
        match timeout(limit, self.io.write_all(&buf)).await {
            Ok(Ok(())) => {
                self.shared.counters.bytes_sent.add(buf.len() as u64);
                Ok(())
            }
            Ok(Err(_)) => Err("write failed"),
            Err(_) => Err("client stopped reading: no write progress for slow_client_timeout"),
        }
    }

    /// Ends the connection: DISCONNECT (MQTT 5) if there is a reason, shut the write side down,
    /// tell the router, then (unless the socket is gone) read and discard until the client
    /// closes or [`CLOSE_LINGER`] passes, and close.
    async fn finish(&mut self, ending: Ending) {
        if self.shared.limits.connection_messages {
            info!(peer = %self.peer, client_id = %Clipped(&self.client_id), reason = %ending.why, "connection closed");
        }
        if let Some(reason) = ending.send {
            if self.protocol.is_v5() {
                let d = Packet::Disconnect(Disconnect::new(reason));
                let _ = self.queue_explained(d, Some(&ending.why));
            }
        }
        if !self.wbuf.is_empty() {
            let _ = self.flush().await;
        }
        let _ = self.io.shutdown().await;
        self.shared.counters.connected.dec();
        let _ = self
            .shared
            .router
            .send(Command::Disconnect {
                conn: self.conn,
                kind: ending.kind,
                session_expiry: ending.session_expiry,
                inbound_qos2: std::mem::take(&mut self.inbound_qos2),
            })
            .await;
        if ending.linger {
            self.drain_until_closed().await;
        }
    }

    /// Reads and discards until the client closes its side (or an error), for at most
    /// [`CLOSE_LINGER`].
    async fn drain_until_closed(&mut self) {
        let until = Instant::now() + CLOSE_LINGER;
        loop {
            self.rbuf.clear();
            if self.rbuf.capacity() < READ_CHUNK {
                self.rbuf.reserve(READ_CHUNK);
            }
            match tokio::time::timeout_at(until, self.io.read_buf(&mut self.rbuf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        self.rbuf = BytesMut::new();
    }
}

/// `filter` under the listener's mount point: `mount` in front of the topic filter (after the
/// group of a shared subscription, `$share/GROUP/`).
fn mounted_filter(mount: &str, filter: &str) -> String {
    match culex_proto::topic::parse_shared(filter) {
        Ok(Some(shared)) => format!("$share/{}/{mount}{}", shared.group, shared.filter),
        _ => format!("{mount}{filter}"),
    }
}

/// The connection's end when the router is gone (the server is stopping).
fn router_gone() -> Ending {
    Ending::abnormal(Some(ReasonCode::ServerUnavailable), "router gone")
}

/// False when a payload is announced as UTF-8 (Payload Format Indicator 1) but is not.
fn payload_format_valid(properties: &Properties, payload: &[u8]) -> bool {
    properties.payload_format_indicator != Some(1) || std::str::from_utf8(payload).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Size of the future a function of five arguments returns, without calling it.
    fn future_size<A, B, C, D, E, F: Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The same for seven arguments.
    fn future_size7<A, B, C, D, E, G, H, F: Future>(_: fn(A, B, C, D, E, G, H) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connected client holds this future (it is the task of a plain TCP connection)
    /// for as long as it is connected, so what it keeps across awaits is paid per connection.
    /// It was 5.4 KB while packet handling awaited inline and the handshake was not boxed,
    /// 816 B while the connected loop also waited on the shutdown signal (a 120-byte future);
    /// 648 B in a debug build before the reload recheck's `login` slot, 656 B with it.
    #[test]
    fn future_sizes() {
        let serve = future_size(serve::<tokio::net::TcpStream>);
        let accepted = future_size7(crate::transport::serve_accepted);
        eprintln!(
            "connection::serve<TcpStream>: {serve} B; transport::serve_accepted: {accepted} B"
        );
        assert!(serve <= 664, "connection::serve future is {serve} bytes");
        assert!(accepted <= 704, "serve_accepted future is {accepted} bytes");
    }
}
