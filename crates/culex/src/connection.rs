//! One client connection: decode, enforce limits, talk to the router, encode and write.
//!
//! The task owns the socket. It reads with `read_buf` (cancel-safe, so it can sit in a
//! `select!` beside the outbox and the keepalive timer), decodes every complete packet in the
//! buffer, and writes everything ready in one `write_all` per wake-up. QoS 1/2 acknowledgements
//! of the client's publishes are written here; the inbound QoS 2 state (packet ids awaiting
//! PUBREL) lives here while connected and goes back to the router's session on disconnect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use culex_broker::{
    AccessPolicy, Command, ConnId, ConnectOutcome, ConnectRequest, DisconnectKind, Outbound,
};
use culex_proto::{
    decode, encode, encode_publish, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties,
    Protocol, PubResp, Publish, QoS, ReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use crate::counters::Refusal;
use crate::server::{ListenerCtx, Shared};

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// Remote socket address.
    pub(crate) addr: SocketAddr,
    /// The listener that accepted it.
    pub(crate) listener: Arc<ListenerCtx>,
    /// Identity from a verified TLS client certificate (its subject CN), if any.
    pub(crate) identity: Option<String>,
}

/// Outbox items encoded per wake-up at most, so one busy subscriber cannot starve its reads.
const MAX_BATCH: usize = 256;
/// Flush the write buffer once it holds this many bytes.
const FLUSH_BYTES: usize = 64 * 1024;
/// Packets awaiting an answer from the router (SUBSCRIBE, UNSUBSCRIBE, and with persistence
/// QoS 1/2 PUBLISH and PUBREL) before the task stops reading. Below the outbox's 64 control
/// slots, so every answer fits.
const MAX_PENDING_REPLIES: usize = 48;
/// Topic aliases accepted from a client (MQTT 5 Topic Alias Maximum).
pub(crate) const TOPIC_ALIAS_MAX: u16 = 32;

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
}

impl Ending {
    fn abnormal(send: Option<ReasonCode>, why: impl Into<String>) -> Self {
        Ending {
            kind: DisconnectKind::WithWill,
            send,
            session_expiry: None,
            why: why.into(),
        }
    }
}

/// Serves one accepted connection until it ends.
pub(crate) async fn serve<S>(
    stream: S,
    peer: Peer,
    conn: ConnId,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut c = Conn {
        rd,
        wr,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: BytesMut::with_capacity(4096),
        conn,
        peer: peer.addr,
        listener: peer.listener,
        identity: peer.identity,
        username: None,
        shared,
        protocol: Protocol::V311,
        client_id: Arc::from(""),
        keep_alive: Duration::ZERO,
        session_expiry: 0,
        inbound_qos2: Vec::new(),
        aliases: HashMap::new(),
        pending_replies: 0,
    };
    let Some(mut outbox) = c.handshake(&mut shutdown).await else {
        return;
    };
    let ending = c.run(&mut outbox, &mut shutdown).await;
    c.finish(ending).await;
}

struct Conn<R, W> {
    rd: R,
    wr: W,
    rbuf: BytesMut,
    wbuf: BytesMut,
    conn: ConnId,
    peer: SocketAddr,
    listener: Arc<ListenerCtx>,
    identity: Option<String>,
    /// The authenticated user name (or certificate identity), for ACL checks.
    username: Option<String>,
    shared: Arc<Shared>,
    protocol: Protocol,
    client_id: Arc<str>,
    keep_alive: Duration,
    session_expiry: u32,
    inbound_qos2: Vec<u16>,
    aliases: HashMap<u16, String>,
    pending_replies: usize,
}

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    /// Reads CONNECT, checks it, registers with the router and writes CONNACK. Returns the
    /// outbox on success; on failure the connection is already answered and closed.
    async fn handshake(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<mpsc::Receiver<Outbound>> {
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

    async fn accept(&mut self, connect: Connect) -> Option<mpsc::Receiver<Outbound>> {
        let limits = Arc::clone(&self.shared.limits);
        let v5 = self.protocol.is_v5();

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
        let security = Arc::clone(&self.listener.security);
        let username = match security
            .authenticate(
                connect.username.as_deref(),
                connect.password.as_deref(),
                self.identity.as_deref(),
            )
            .await
        {
            Ok(u) => u,
            Err(reason) => {
                // The password is never logged.
                info!(peer = %self.peer, client_id = %connect.client_id,
                    username = connect.username.as_deref().unwrap_or(""), "client refused: not authorised");
                self.shared.counters.auth_failures.inc();
                self.refuse(reason).await;
                return None;
            }
        };
        self.username.clone_from(&username);
        if connect.properties.authentication_method.is_some() {
            self.refuse(ReasonCode::BadAuthenticationMethod).await;
            return None;
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
        self.keep_alive = Duration::from_secs(u64::from(keep_alive));
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
        let (tx, rx) = mpsc::channel(self.shared.broker.outbox_capacity(window));
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
        }
        let connack = Packet::ConnAck(ConnAck {
            session_present,
            reason_code: ReasonCode::Success,
            properties,
        });
        let now_connected = self.shared.counters.connected.inc_get();
        self.shared.counters.connected_max.max(now_connected);
        self.shared.counters.connects.inc();
        info!(peer = %self.peer, listener = %self.listener.local, client_id = %client_id, protocol = ?self.protocol,
            session_present, "client connected");
        if self.queue(&connack).is_err() || self.flush().await.is_err() {
            self.finish(Ending::abnormal(None, "write failed")).await;
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
        if self.queue(&connack).is_ok() {
            let _ = self.flush().await;
        }
        let _ = self.wr.shutdown().await;
    }

    /// Reads until one packet is decoded, the peer closes (`Ok(None)`) or the input is bad.
    async fn read_packet(
        &mut self,
        protocol: Option<Protocol>,
    ) -> Result<Option<Packet>, DecodeError> {
        let max = self.shared.limits.max_packet_size;
        loop {
            if let Some(p) = decode(&mut self.rbuf, protocol, max)? {
                return Ok(Some(p));
            }
            self.rbuf.reserve(4096);
            match self.rd.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.shared.counters.bytes_received.add(n as u64),
            }
        }
    }

    /// The connected loop. Returns how the connection ended.
    async fn run(
        &mut self,
        outbox: &mut mpsc::Receiver<Outbound>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ending {
        let max = self.shared.limits.max_packet_size;
        let keepalive = self.keep_alive.mul_f32(1.5);
        let mut deadline = Instant::now() + keepalive;
        loop {
            // Handle every complete packet already buffered.
            loop {
                match decode(&mut self.rbuf, Some(self.protocol), max) {
                    Ok(Some(packet)) => {
                        deadline = Instant::now() + keepalive;
                        if let Some(end) = self.on_packet(packet).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.shared.counters.protocol_errors.inc();
                        return Ending::abnormal(Some(e.reason_code()), e.to_string());
                    }
                }
            }
            if !self.wbuf.is_empty() && self.flush().await.is_err() {
                return Ending::abnormal(None, "write failed");
            }
            let reading = self.pending_replies < MAX_PENDING_REPLIES;
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(8192);
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    return Ending::abnormal(Some(ReasonCode::ServerShuttingDown), "server shutting down");
                }
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
                }
                r = self.rd.read_buf(&mut self.rbuf), if reading => {
                    match r {
                        Ok(0) => return Ending::abnormal(None, "connection closed by client"),
                        Err(e) => return Ending::abnormal(None, format!("read error: {e}")),
                        Ok(n) => self.shared.counters.bytes_received.add(n as u64),
                    }
                }
                _ = sleep_until(deadline), if !keepalive.is_zero() => {
                    return Ending::abnormal(Some(ReasonCode::KeepAliveTimeout), "keepalive timeout");
                }
            }
        }
    }

    /// Handles one packet from the client. `Some` ends the connection.
    async fn on_packet(&mut self, packet: Packet) -> Option<Ending> {
        let v5 = self.protocol.is_v5();
        self.shared.counters.packet_in(&packet);
        match packet {
            Packet::Publish(p) => self.on_publish(p).await,
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
                    // The stored session forgets the id first; the router sends PUBCOMP.
                    self.pending_replies += 1;
                    return self
                        .command(Command::PubRel {
                            conn: self.conn,
                            packet_id: r.packet_id,
                        })
                        .await
                        .err();
                }
                if !known && v5 {
                    comp.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                self.queue_or_end(&Packet::PubComp(comp))
            }
            Packet::PubAck(r) => self
                .command(Command::PubAck {
                    conn: self.conn,
                    packet_id: r.packet_id,
                })
                .await
                .err(),
            Packet::PubRec(r) => self
                .command(Command::PubRec {
                    conn: self.conn,
                    packet_id: r.packet_id,
                    reason: r.reason_code,
                })
                .await
                .err(),
            Packet::PubComp(r) => self
                .command(Command::PubComp {
                    conn: self.conn,
                    packet_id: r.packet_id,
                })
                .await
                .err(),
            Packet::Subscribe(s) => {
                self.pending_replies += 1;
                self.command(Command::Subscribe {
                    conn: self.conn,
                    subscribe: s,
                })
                .await
                .err()
            }
            Packet::Unsubscribe(u) => {
                self.pending_replies += 1;
                self.command(Command::Unsubscribe {
                    conn: self.conn,
                    unsubscribe: u,
                })
                .await
                .err()
            }
            Packet::PingReq => self.queue_or_end(&Packet::PingResp),
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
            // [MQTT-3.14.2-2]
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
        }
    }

    async fn on_publish(&mut self, mut p: Publish) -> Option<Ending> {
        let limits = Arc::clone(&self.shared.limits);
        let v5 = self.protocol.is_v5();
        self.shared.counters.publish_in(p.qos, p.payload.len());
        if v5 {
            if let Some(alias) = p.properties.topic_alias {
                if alias == 0 || alias > TOPIC_ALIAS_MAX {
                    return Some(Ending::abnormal(
                        Some(ReasonCode::TopicAliasInvalid),
                        "topic alias out of range",
                    ));
                }
                if p.topic.is_empty() {
                    match self.aliases.get(&alias) {
                        Some(t) => p.topic.clone_from(t),
                        None => {
                            return Some(Ending::abnormal(
                                Some(ReasonCode::ProtocolError),
                                "unknown topic alias",
                            ))
                        }
                    }
                } else {
                    self.aliases.insert(alias, p.topic.clone());
                }
                p.properties.topic_alias = None;
            }
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
        let allowed =
            self.listener
                .security
                .can_write(self.username.as_deref(), &self.client_id, &p.topic);
        if !allowed {
            // Denied publishes are acknowledged (MQTT 5: 0x87) and dropped, as Mosquitto does.
            self.shared.counters.acl_denied_publish.inc();
            debug!(client_id = %self.client_id, topic = %p.topic, "publish denied by the ACL");
            let mut ack = PubResp::new(packet_id);
            if v5 {
                ack.reason_code = ReasonCode::NotAuthorized;
            }
            return match p.qos {
                QoS::AtMostOnce => None,
                QoS::AtLeastOnce => self.ack(Packet::PubAck(ack)).await,
                QoS::ExactlyOnce => {
                    if !v5 && !self.inbound_qos2.contains(&packet_id) {
                        // 3.1.1 has no failure PUBREC: the client goes on to PUBREL.
                        self.inbound_qos2.push(packet_id);
                    }
                    self.ack(Packet::PubRec(ack)).await
                }
            };
        }
        match p.qos {
            QoS::AtMostOnce => {
                if too_large {
                    self.shared.counters.dropped_too_large.inc();
                    return None;
                }
                self.route(p).await.err()
            }
            QoS::AtLeastOnce => {
                let mut ack = PubResp::new(packet_id);
                if too_large {
                    self.shared.counters.dropped_too_large.inc();
                    if v5 {
                        ack.reason_code = ReasonCode::QuotaExceeded;
                    }
                    return self.ack(Packet::PubAck(ack)).await;
                }
                match self.route(p).await {
                    Ok(true) => None,
                    Ok(false) => self.queue_or_end(&Packet::PubAck(ack)),
                    Err(end) => Some(end),
                }
            }
            QoS::ExactlyOnce => {
                let mut rec = PubResp::new(packet_id);
                if self.inbound_qos2.contains(&packet_id) {
                    // A retransmission: already routed once [MQTT-4.3.3-10].
                    return self.ack(Packet::PubRec(rec)).await;
                } else if too_large {
                    self.shared.counters.dropped_too_large.inc();
                    if v5 {
                        rec.reason_code = ReasonCode::QuotaExceeded;
                    }
                    return self.ack(Packet::PubRec(rec)).await;
                } else {
                    let receive_max = limits.max_inflight_messages.max(1);
                    if v5 && self.inbound_qos2.len() >= usize::from(receive_max) {
                        return Some(Ending::abnormal(
                            Some(ReasonCode::ReceiveMaximumExceeded),
                            "client exceeded the server's Receive Maximum",
                        ));
                    }
                    self.inbound_qos2.push(packet_id);
                    match self.route(p).await {
                        Ok(true) => None,
                        Ok(false) => self.queue_or_end(&Packet::PubRec(rec)),
                        Err(end) => Some(end),
                    }
                }
            }
        }
    }

    /// Hands a PUBLISH to the router. Returns true when the router will acknowledge it (after
    /// what it caused is durable); false when the connection acknowledges it now.
    async fn route(&mut self, p: Publish) -> Result<bool, Ending> {
        let ack = self.shared.limits.router_acks && p.qos != QoS::AtMostOnce;
        if ack {
            self.pending_replies += 1;
        }
        self.command(Command::Publish {
            conn: self.conn,
            publish: p,
            ack,
        })
        .await?;
        Ok(ack)
    }

    /// Sends an acknowledgement the connection decided on. With persistence it goes through
    /// the router, so it cannot overtake acknowledgements still waiting for the store.
    async fn ack(&mut self, packet: Packet) -> Option<Ending> {
        if !self.shared.limits.router_acks {
            return self.queue_or_end(&packet);
        }
        self.pending_replies += 1;
        self.command(Command::Ack {
            conn: self.conn,
            packet: Box::new(packet),
        })
        .await
        .err()
    }

    /// Sends a command to the router, waiting for room (backpressure on a busy router).
    async fn command(&mut self, cmd: Command) -> Result<(), Ending> {
        self.shared
            .router
            .send(cmd)
            .await
            .map_err(|_| Ending::abnormal(Some(ReasonCode::ServerUnavailable), "router gone"))
    }

    /// Encodes one outbox item into the write buffer. `Some` ends the connection.
    fn on_outbound(&mut self, item: Outbound) -> Option<Ending> {
        match item {
            Outbound::Deliver(d) => {
                let props = d.properties();
                let view = d.view(&props);
                if let Err(e) = encode_publish(&view, self.protocol, &mut self.wbuf) {
                    warn!(client_id = %self.client_id, error = %e, "cannot encode PUBLISH; dropped");
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
                self.queue_or_end(&p)
            }
            Outbound::Close(reason) => Some(Ending::abnormal(
                Some(reason),
                format!("closed by server: {reason:?}"),
            )),
        }
    }

    fn queue(&mut self, p: &Packet) -> Result<(), culex_proto::EncodeError> {
        encode(p, self.protocol, &mut self.wbuf)?;
        self.shared.counters.packet_out(p);
        Ok(())
    }

    fn queue_or_end(&mut self, p: &Packet) -> Option<Ending> {
        match self.queue(p) {
            Ok(()) => None,
            Err(e) => Some(Ending::abnormal(
                Some(ReasonCode::ImplementationSpecificError),
                format!("cannot encode {}: {e}", p.name()),
            )),
        }
    }

    /// Writes the buffered packets in one go, bounded in time so a client that stopped
    /// reading cannot pin the task forever.
    async fn flush(&mut self) -> Result<(), ()> {
        let limit = self.shared.limits.write_timeout;
        let buf = self.wbuf.split();
        match timeout(limit, self.wr.write_all(&buf)).await {
            Ok(Ok(())) => {
                self.shared.counters.bytes_sent.add(buf.len() as u64);
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// Ends the connection: DISCONNECT (MQTT 5) if there is a reason, close, tell the router.
    async fn finish(&mut self, ending: Ending) {
        info!(peer = %self.peer, client_id = %self.client_id, reason = %ending.why, "connection closed");
        if let Some(reason) = ending.send {
            if self.protocol.is_v5() {
                let _ = self.queue(&Packet::Disconnect(Disconnect::new(reason)));
            }
        }
        if !self.wbuf.is_empty() {
            let _ = self.flush().await;
        }
        let _ = self.wr.shutdown().await;
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
    }
}
