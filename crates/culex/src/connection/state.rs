//! The protocol side of one connected client, without a socket: what each packet from the
//! client means (inbound QoS rules, topic aliases, ACL, size limits), what each outbox item
//! becomes on the wire, and when the connection must end and with which reason.
//!
//! [`ConnState`] takes a packet (or an outbox item) and an [`Output`], and leaves in the
//! output the packets to write (encoded) and the commands for the router, in order; a returned
//! [`Ending`] closes the connection. The socket loop in `io.rs` moves bytes and commands and
//! nothing else, and the tests below drive the state directly.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use culex_broker::log_clip::Clipped;
use culex_broker::{AccessPolicy, Command, ConnId, DisconnectKind, Outbound};
use culex_proto::{
    aliased_publish_encoded_len, encode, encode_aliased_publish, encode_publish, encoded_len,
    AliasedPublish, Disconnect, Packet, Properties, Protocol, PubResp, Publish, QoS, ReasonCode,
};
use rustls_pki_types::CertificateDer;
use tracing::{debug, info, warn};

use super::aliases::Aliases;
use crate::context::{ListenerCtx, Shared};
use crate::security::Admission;

/// Packets awaiting an answer from the router (SUBSCRIBE, UNSUBSCRIBE, and with persistence
/// QoS 1/2 PUBLISH and PUBREL) before the connection stops reading. Below the outbox's 64
/// control slots, so every answer fits.
const MAX_PENDING_REPLIES: usize = 48;
/// Longest Reason String the server sends (a longer explanation is cut at a character
/// boundary).
const REASON_STRING_MAX: usize = 128;
/// Room reserved in an empty write buffer on first use.
const WRITE_CHUNK: usize = 4096;

/// Why the connection ended, decided where it happened.
#[derive(Debug)]
pub(super) struct Ending {
    /// Will handling.
    pub(super) kind: DisconnectKind,
    /// DISCONNECT reason to send first (MQTT 5), if any.
    pub(super) send: Option<ReasonCode>,
    /// Session expiry from the client's DISCONNECT.
    pub(super) session_expiry: Option<u32>,
    /// Why, for the log (and the DISCONNECT's Reason String).
    pub(super) why: String,
    /// The client may still be sending: read (and discard) until it closes, bounded in time,
    /// before closing the socket. False once the socket failed or the client closed it.
    pub(super) linger: bool,
}

impl Ending {
    /// The server ends the connection (the will is sent), with `send` as the DISCONNECT
    /// reason for an MQTT 5 client.
    pub(super) fn abnormal(send: Option<ReasonCode>, why: impl Into<String>) -> Self {
        Ending {
            kind: DisconnectKind::WithWill,
            send,
            session_expiry: None,
            why: why.into(),
            linger: true,
        }
    }

    /// The socket is closed by the client or failed: nothing to wait for.
    pub(super) fn socket_gone(why: impl Into<String>) -> Self {
        Ending {
            linger: false,
            ..Ending::abnormal(None, why)
        }
    }

    /// The connection's end when the router is gone (the server is stopping).
    pub(super) fn router_gone() -> Self {
        Ending::abnormal(Some(ReasonCode::ServerUnavailable), "router gone")
    }
}

/// What handling a packet or an outbox item produced, for the socket loop to carry out.
#[derive(Debug, Default)]
pub(super) struct Output {
    /// Encoded packets for the client, written in one go.
    pub(super) wbuf: BytesMut,
    /// Commands for the router, in order (sent at once while its channel has room).
    pub(super) commands: VecDeque<Command>,
}

impl Output {
    /// Gives an empty write buffer room for a batch, so that encoding many small packets
    /// does not grow it a few bytes at a time.
    fn reserve_write(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(WRITE_CHUNK);
        }
    }
}

/// What an anonymous client without a certificate, the common case, never needs: boxed
/// together, so that every connection carries one pointer for them. (The connection's task
/// is allocated in steps of 128 bytes: a few bytes more in [`ConnState`] can cost 128 per
/// connection; see `future_sizes` in `connection.rs`.)
#[derive(Debug)]
pub(super) struct Rare {
    /// How the client was let in, kept to check it again after a reload.
    pub(super) admission: Admission,
    /// The client's verified TLS certificate chain (leaf first), if it sent one.
    pub(super) client_cert: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// Rate limit of the log lines about publishes the ACL refused.
    deny_log: culex_broker::log_gate::LogGate,
}

impl Rare {
    pub(super) fn new(admission: Admission) -> Box<Self> {
        Box::new(Rare {
            admission,
            client_cert: None,
            deny_log: Default::default(),
        })
    }
}

/// The protocol state of one connection (see the module docs).
pub(super) struct ConnState {
    pub(super) conn: ConnId,
    pub(super) peer: SocketAddr,
    pub(super) listener: Arc<ListenerCtx>,
    pub(super) shared: Arc<Shared>,
    /// The authenticated user name (or certificate identity), for ACL checks. Before CONNECT
    /// is accepted: the identity from the client's TLS certificate, if any.
    pub(super) username: Option<String>,
    /// How the client was let in and the rest of [`Rare`]; `None` for an anonymous client
    /// without a certificate until an ACL refusal is logged.
    pub(super) rare: Option<Box<Rare>>,
    pub(super) protocol: Protocol,
    pub(super) client_id: Arc<str>,
    /// Keep Alive in force, in seconds (0: none).
    pub(super) keep_alive: u16,
    pub(super) session_expiry: u32,
    /// Packet ids of the client's QoS 2 PUBLISHes awaiting PUBREL.
    pub(super) inbound_qos2: Vec<u16>,
    /// Topic Aliases (MQTT 5), allocated when the client uses them or allows the server to.
    pub(super) aliases: Option<Box<Aliases>>,
    /// The client's Maximum Packet Size (MQTT 5; `u32::MAX` when it sent none).
    pub(super) client_max_packet: u32,
    /// The client's Request Problem Information (MQTT 5; true unless it sent 0): Reason
    /// Strings on acknowledgements only when true [MQTT-3.1.2-29].
    pub(super) problem_information: bool,
    /// The client connected with Mosquitto's bridge bit (`try_private`): its subscriptions get
    /// No Local and Retain As Published.
    pub(super) bridge: bool,
    /// Flow control: this client's messages overfill a subscriber's queue
    /// ([`Outbound::Pressure`]).
    pressure: bool,
    /// The router answers this client's QoS 1/2 PUBLISH (see [`ConnState::router_answers`]).
    router_mode: bool,
    pending_replies: usize,
}

impl ConnState {
    /// The state of a connection not yet past CONNECT.
    pub(super) fn new(
        conn: ConnId,
        peer: SocketAddr,
        listener: Arc<ListenerCtx>,
        shared: Arc<Shared>,
        identity: Option<String>,
        client_cert: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> Self {
        ConnState {
            conn,
            peer,
            listener,
            shared,
            username: identity,
            rare: client_cert.map(|c| {
                let mut rare = Rare::new(Admission::Anonymous);
                rare.client_cert = Some(c);
                rare
            }),
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
        }
    }

    /// False while so many answers are owed by the router that the connection should stop
    /// reading until some are written.
    pub(super) fn reading(&self) -> bool {
        self.pending_replies < MAX_PENDING_REPLIES
    }

    /// Handles one packet from the client. `Some` ends the connection.
    pub(super) fn on_packet(&mut self, packet: Packet, out: &mut Output) -> Option<Ending> {
        let v5 = self.protocol.is_v5();
        self.shared.counters.packet_in(&packet);
        match packet {
            Packet::Publish(p) => self.on_publish(p, out),
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
                    out.commands.push_back(Command::PubRel {
                        conn: self.conn,
                        packet_id: r.packet_id,
                    });
                    return None;
                }
                if !known && v5 {
                    comp.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                // Through the router while it answers this client (flow control), so the
                // PUBCOMP keeps its place behind answers it still owes.
                self.ack(Packet::PubComp(comp), out)
            }
            Packet::PubAck(r) => {
                out.commands.push_back(Command::PubAck {
                    conn: self.conn,
                    packet_id: r.packet_id,
                });
                None
            }
            Packet::PubRec(r) => {
                out.commands.push_back(Command::PubRec {
                    conn: self.conn,
                    packet_id: r.packet_id,
                    reason: r.reason_code,
                });
                None
            }
            Packet::PubComp(r) => {
                out.commands.push_back(Command::PubComp {
                    conn: self.conn,
                    packet_id: r.packet_id,
                });
                None
            }
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
                out.commands.push_back(Command::Subscribe {
                    conn: self.conn,
                    subscribe: s,
                });
                None
            }
            Packet::Unsubscribe(mut u) => {
                if let Some(mount) = &self.listener.mount_point {
                    for f in &mut u.filters {
                        *f = mounted_filter(mount, f);
                    }
                }
                self.pending_replies += 1;
                out.commands.push_back(Command::Unsubscribe {
                    conn: self.conn,
                    unsubscribe: u,
                });
                None
            }
            Packet::PingReq => self.queue_or_end(Packet::PingResp, out),
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

    fn on_publish(&mut self, mut p: Publish, out: &mut Output) -> Option<Ending> {
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
                QoS::AtLeastOnce => self.ack(Packet::PubAck(ack), out),
                QoS::ExactlyOnce => self.ack(Packet::PubRec(ack), out),
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
            return self.refuse_publish(&p, packet_id, ReasonCode::TopicNameInvalid, out);
        }
        let allowed =
            self.listener
                .security
                .can_write(self.username.as_deref(), &self.client_id, &p.topic);
        if !allowed {
            // Denied publishes are acknowledged (MQTT 5: 0x87) and dropped, as Mosquitto does.
            self.shared.counters.acl_denied_publish.inc();
            // No `rare` yet means an anonymous client without a certificate.
            let rare = self
                .rare
                .get_or_insert_with(|| Rare::new(Admission::Anonymous));
            if let Some(skipped) = rare.deny_log.allow(std::time::Instant::now()) {
                info!(client_id = %Clipped(&self.client_id),
                    user = self.username.as_deref().unwrap_or(""), topic = %Clipped(&p.topic),
                    not_logged_since = skipped, "publish refused by the ACL");
            }
            return self.refuse_publish(&p, packet_id, ReasonCode::NotAuthorized, out);
        }
        match p.qos {
            QoS::AtMostOnce => {
                if too_large {
                    self.shared.counters.dropped_too_large.inc();
                    return None;
                }
                self.route(p, out);
                None
            }
            QoS::AtLeastOnce => {
                let mut ack = PubResp::new(packet_id);
                if too_large {
                    self.shared.counters.dropped_too_large.inc();
                    if v5 {
                        ack.reason_code = ReasonCode::QuotaExceeded;
                    }
                    return self.ack(Packet::PubAck(ack), out);
                }
                if self.route(p, out) {
                    None
                } else {
                    self.queue_or_end(Packet::PubAck(ack), out)
                }
            }
            QoS::ExactlyOnce => {
                let mut rec = PubResp::new(packet_id);
                if self.inbound_qos2.contains(&packet_id) {
                    // A retransmission: already routed once [MQTT-4.3.3-10].
                    self.ack(Packet::PubRec(rec), out)
                } else if too_large {
                    self.shared.counters.dropped_too_large.inc();
                    if v5 {
                        rec.reason_code = ReasonCode::QuotaExceeded;
                    }
                    self.ack(Packet::PubRec(rec), out)
                } else {
                    let receive_max = limits.max_inflight_messages.max(1);
                    if v5 && self.inbound_qos2.len() >= usize::from(receive_max) {
                        return Some(Ending::abnormal(
                            Some(ReasonCode::ReceiveMaximumExceeded),
                            "client exceeded the server's Receive Maximum",
                        ));
                    }
                    self.inbound_qos2.push(packet_id);
                    if self.route(p, out) {
                        None
                    } else {
                        self.queue_or_end(Packet::PubRec(rec), out)
                    }
                }
            }
        }
    }

    /// Acknowledges a PUBLISH that is not routed (MQTT 5 with `reason`; 3.1.1 cannot say
    /// why), as Mosquitto does for denied publishes; QoS 0 is dropped silently.
    fn refuse_publish(
        &mut self,
        p: &Publish,
        packet_id: u16,
        reason: ReasonCode,
        out: &mut Output,
    ) -> Option<Ending> {
        let v5 = self.protocol.is_v5();
        let mut ack = PubResp::new(packet_id);
        if v5 {
            ack.reason_code = reason;
        }
        match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => self.ack(Packet::PubAck(ack), out),
            QoS::ExactlyOnce => {
                if !v5 && !self.inbound_qos2.contains(&packet_id) {
                    // 3.1.1 has no failure PUBREC: the client goes on to PUBREL.
                    self.inbound_qos2.push(packet_id);
                }
                self.ack(Packet::PubRec(ack), out)
            }
        }
    }

    /// Hands a PUBLISH to the router. Returns true when the router will acknowledge it (after
    /// what it caused is durable); false when the connection acknowledges it now.
    fn route(&mut self, mut p: Publish, out: &mut Output) -> bool {
        let ack = p.qos != QoS::AtMostOnce && self.router_answers();
        if ack {
            self.pending_replies += 1;
        }
        let publication = if self.is_cluster_link() {
            culex_cluster::envelope::take_publication(&mut p.properties)
        } else {
            None
        };
        out.commands.push_back(Command::Publish {
            conn: self.conn,
            publish: p,
            ack,
            publication,
        });
        ack
    }

    /// Whether this is the cluster link's connection (an internal one with the link's
    /// reserved client id), whose messages name their publication.
    fn is_cluster_link(&self) -> bool {
        self.shared
            .limits
            .reserved_client_prefix
            .as_deref()
            .is_some_and(|prefix| self.client_id.starts_with(prefix))
            && self.listener.security.is_internal()
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

    /// Sends an acknowledgement the connection decided on; through the router while it
    /// answers this client, so it cannot overtake acknowledgements the router still owes.
    fn ack(&mut self, packet: Packet, out: &mut Output) -> Option<Ending> {
        if !self.router_answers() {
            return self.queue_or_end(packet, out);
        }
        self.pending_replies += 1;
        out.commands.push_back(Command::Ack {
            conn: self.conn,
            packet: Box::new(packet),
        });
        None
    }

    /// Encodes one outbox item into the write buffer. `Some` ends the connection.
    pub(super) fn on_outbound(&mut self, item: Outbound, out: &mut Output) -> Option<Ending> {
        out.reserve_write();
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
                    None => encode_publish(&view, self.protocol, &mut out.wbuf),
                    Some((alias, new)) => self.encode_aliased(view, alias, new, &mut out.wbuf),
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
                self.queue_or_end(*p, out)
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
        wbuf: &mut BytesMut,
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
            encode_aliased_publish(&aliased, wbuf)
        } else {
            Err(culex_proto::EncodeError::PacketTooLarge { size: 0 })
        };
        if sent.is_err() {
            if new {
                if let Some(a) = &mut self.aliases {
                    a.outbound.forget(alias);
                }
            }
            return encode_publish(&plain, self.protocol, wbuf);
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
    /// could not go on without it). Outgoing PUBLISHes are checked by the router (which
    /// knows the client's limit from CONNECT) and, for an aliased form, by `encode_aliased`.
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

    /// Encodes a packet into the write buffer; for MQTT 5 with a Reason String (`why`, or the
    /// reason code's description) when it reports a failure, and only if it fits the client's
    /// Maximum Packet Size (otherwise it is dropped, counted, as if sent [MQTT-3.1.2-25]).
    pub(super) fn queue_explained(
        &self,
        mut p: Packet,
        why: Option<&str>,
        out: &mut Output,
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
        out.reserve_write();
        encode(&p, self.protocol, &mut out.wbuf)?;
        self.shared.counters.packet_out(&p);
        Ok(())
    }

    /// [`ConnState::queue_explained`] without an explanation of its own.
    pub(super) fn queue(
        &self,
        p: Packet,
        out: &mut Output,
    ) -> Result<(), culex_proto::EncodeError> {
        self.queue_explained(p, None, out)
    }

    /// Queues `p`, or ends the connection if it cannot be encoded.
    fn queue_or_end(&self, p: Packet, out: &mut Output) -> Option<Ending> {
        let name = p.name();
        match self.queue(p, out) {
            Ok(()) => None,
            Err(e) => Some(Ending::abnormal(
                Some(ReasonCode::ImplementationSpecificError),
                format!("cannot encode {name}: {e}"),
            )),
        }
    }

    /// The DISCONNECT (MQTT 5) that tells the client why the server ends the connection, if
    /// `ending` has a reason to send.
    pub(super) fn farewell(&self, ending: &Ending, out: &mut Output) {
        if let (Some(reason), true) = (ending.send, self.protocol.is_v5()) {
            let d = Packet::Disconnect(Disconnect::new(reason));
            let _ = self.queue_explained(d, Some(&ending.why), out);
        }
    }

    /// After a reload: is this client still let in? Its user must still be in the password
    /// file with the same entry (or anonymous access still allowed), and its certificate must
    /// still verify against the CAs and CRLs in force. If not, the connection ends with
    /// DISCONNECT 0x87 (MQTT 5) saying why; as with any server-side close, the will is sent.
    fn recheck(&mut self) -> Option<Ending> {
        let admission = self
            .rare
            .as_ref()
            .map_or(Admission::Anonymous, |l| l.admission);
        let login = self
            .listener
            .security
            .recheck(self.username.as_deref(), admission)
            .map_err(str::to_owned);
        let chain = self.rare.as_ref().and_then(|l| l.client_cert.as_ref());
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
}

/// `filter` under the listener's mount point: `mount` in front of the topic filter (after the
/// group of a shared subscription, `$share/GROUP/`).
fn mounted_filter(mount: &str, filter: &str) -> String {
    match culex_proto::topic::parse_shared(filter) {
        Ok(Some(shared)) => format!("$share/{}/{mount}{}", shared.group, shared.filter),
        _ => format!("{mount}{filter}"),
    }
}

/// False when a payload is announced as UTF-8 (Payload Format Indicator 1) but is not.
pub(super) fn payload_format_valid(properties: &Properties, payload: &[u8]) -> bool {
    properties.payload_format_indicator != Some(1) || std::str::from_utf8(payload).is_ok()
}

#[cfg(test)]
mod tests;
