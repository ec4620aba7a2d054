//! The client role of an MQTT session as a sans-IO state machine.
//!
//! No sockets and no clock: the caller passes `now` to every method that cares about time, feeds
//! received packets in, and drains packets to send and events out. This keeps keepalive, QoS
//! flows and reconnect resumption testable with a virtual clock (see `session/tests.rs`).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use culex_proto::topic::{validate_topic_filter, validate_topic_name};
use culex_proto::{
    encoded_len, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Protocol, PubResp,
    Publish, QoS, ReasonCode, SubAck, Subscribe, SubscribeFilter, UnsubAck, Unsubscribe,
};

use crate::error::ClientError;

type Result<T> = std::result::Result<T, ClientError>;

mod options;

pub use options::{ConnectOptions, Message};

/// Something the session reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server accepted the connection.
    Connected(ConnAck),
    /// An application message arrived (already acknowledged as its QoS requires; a QoS 2
    /// message is reported once, on its first PUBLISH).
    Message(Publish),
    /// An outgoing QoS 1 or 2 publication completed: PUBACK, PUBCOMP, or a PUBREC carrying an
    /// error (MQTT 5). `reason_code` is the server's verdict.
    Published {
        /// Packet identifier of the publication.
        packet_id: u16,
        /// Reason code from the acknowledgement (`Success` for 3.1/3.1.1).
        reason_code: ReasonCode,
    },
    /// The server answered a SUBSCRIBE.
    SubAck(SubAck),
    /// The server answered an UNSUBSCRIBE.
    UnsubAck(UnsubAck),
    /// The server answered a PINGREQ.
    PingResp,
}

/// Connection state of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No transport (initially and after the connection was lost or closed).
    Disconnected,
    /// CONNECT queued or sent, CONNACK not yet received.
    Connecting,
    /// CONNACK accepted.
    Connected,
    /// The owner is ending the connection ([`ClientSession::disconnect`]): nothing more is
    /// sent, but what the server had already sent is still handled, so no message that reached
    /// us is lost while the transport is closed.
    Closing,
}

/// Where an outgoing QoS 1/2 publication is in its acknowledgement flow.
#[derive(Debug, Clone)]
enum Outgoing {
    /// QoS 1, PUBLISH sent, waiting for PUBACK.
    Qos1Sent(Publish),
    /// QoS 2, PUBLISH sent, waiting for PUBREC.
    Qos2Sent(Publish),
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// The client side of an MQTT session: see the module documentation.
#[derive(Debug)]
pub struct ClientSession {
    options: ConnectOptions,
    state: State,
    /// Keepalive in force (the server's Server Keep Alive overrides ours); `None` when disabled.
    keep_alive: Option<Duration>,
    /// When the last packet was handed to the transport.
    last_sent: Option<Instant>,
    /// When the last packet arrived from the server. Only reads prove the server alive: a
    /// write that succeeds may sit in a socket buffer nobody drains.
    last_received: Option<Instant>,
    /// When the outstanding PINGREQ was sent.
    ping_sent: Option<Instant>,
    /// Next packet identifier to try.
    next_id: u16,
    /// Outgoing QoS 1/2 publications in flight, by packet identifier.
    outgoing: BTreeMap<u16, Outgoing>,
    /// Outgoing QoS 1/2 publications that have an identifier but wait for a free slot.
    queued: VecDeque<Publish>,
    /// SUBSCRIBE / UNSUBSCRIBE identifiers awaiting their acknowledgement.
    pending_acks: HashSet<u16>,
    /// Incoming QoS 2 identifiers between PUBLISH and PUBREL (to suppress duplicates).
    incoming_qos2: HashSet<u16>,
    /// With manual acks: incoming QoS 2 identifiers reported but not yet acknowledged (a
    /// retransmission of one of them is neither reported again nor answered yet).
    held_qos2: HashSet<u16>,
    /// In-flight limit in force: min(our max_inflight, server's Receive Maximum).
    send_quota: u16,
    /// Server limits from an MQTT 5 CONNACK.
    server_max_qos: QoS,
    server_retain_available: bool,
    server_max_packet_size: Option<u32>,
    /// Client identifier in force (the server may assign one).
    client_id: String,
    transmit: VecDeque<Packet>,
    events: VecDeque<Event>,
}

impl ClientSession {
    /// A disconnected session with these options. Call [`ClientSession::connect`] once a
    /// transport is open.
    pub fn new(options: ConnectOptions) -> Self {
        let client_id = options.client_id.clone();
        ClientSession {
            send_quota: options.max_inflight.max(1),
            options,
            state: State::Disconnected,
            keep_alive: None,
            last_sent: None,
            last_received: None,
            ping_sent: None,
            next_id: 1,
            outgoing: BTreeMap::new(),
            queued: VecDeque::new(),
            pending_acks: HashSet::new(),
            incoming_qos2: HashSet::new(),
            held_qos2: HashSet::new(),
            server_max_qos: QoS::ExactlyOnce,
            server_retain_available: true,
            server_max_packet_size: None,
            client_id,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The options the session was created with.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// The protocol version of the session.
    pub fn protocol(&self) -> Protocol {
        self.options.protocol
    }

    /// The client identifier in force: the configured one, or the one the server assigned.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// True between an accepted CONNACK and the end of the connection.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Outgoing QoS 1/2 publications not yet completed (in flight or queued).
    pub fn pending_publishes(&self) -> usize {
        self.outgoing.len() + self.queued.len()
    }

    /// True when nothing awaits an acknowledgement: no publication in flight or queued, no
    /// SUBSCRIBE/UNSUBSCRIBE unanswered.
    pub fn is_idle(&self) -> bool {
        self.outgoing.is_empty() && self.queued.is_empty() && self.pending_acks.is_empty()
    }

    /// Starts a connection on a freshly opened transport: queues CONNECT. State that survives a
    /// reconnect (publications in flight, incoming QoS 2 identifiers) is resumed or dropped when
    /// the CONNACK says whether the server kept the session.
    pub fn connect(&mut self, now: Instant) {
        self.transmit.clear();
        self.pending_acks.clear();
        self.ping_sent = None;
        self.last_sent = Some(now);
        self.last_received = Some(now);
        self.keep_alive = None;
        self.state = State::Connecting;
        self.transmit
            .push_back(Packet::Connect(Box::new(self.options.connect_packet())));
    }

    /// Records that the transport was lost (or closed): nothing more is sent until the next
    /// [`ClientSession::connect`].
    pub fn connection_lost(&mut self) {
        self.state = State::Disconnected;
        self.transmit.clear();
        self.ping_sent = None;
    }

    /// Queues a clean DISCONNECT (when connected) and starts closing: nothing is sent after
    /// it, but packets that still arrive from the server are handled (messages reported,
    /// acknowledgements completed) until [`ClientSession::connection_lost`].
    pub fn disconnect(&mut self, reason: ReasonCode) {
        if self.state == State::Connected {
            self.transmit
                .push_back(Packet::Disconnect(Disconnect::new(reason)));
        }
        self.state = State::Closing;
    }

    /// Starts closing a connection that failed (no DISCONNECT can be sent): like
    /// [`ClientSession::disconnect`], packets still readable from the transport are handled.
    pub fn close_without_disconnect(&mut self) {
        self.transmit.clear();
        self.state = State::Closing;
    }

    /// Queues a publication. Returns its packet identifier for QoS 1/2 (completion is reported
    /// as [`Event::Published`]), `None` for QoS 0. QoS 1/2 messages beyond the in-flight limit
    /// wait in a local queue and go out as acknowledgements free slots.
    pub fn publish(&mut self, message: Message) -> Result<Option<u16>> {
        if self.state != State::Connected {
            return Err(ClientError::NotConnected);
        }
        validate_topic_name(&message.topic).map_err(|e| ClientError::InvalidTopic {
            topic: message.topic.clone(),
            why: e.to_string(),
        })?;
        if message.qos > self.server_max_qos {
            return Err(ClientError::Unsupported(format!(
                "QoS {} (the server's maximum is {})",
                message.qos.as_u8(),
                self.server_max_qos.as_u8()
            )));
        }
        if message.retain && !self.server_retain_available {
            return Err(ClientError::Unsupported("retained messages".into()));
        }
        let packet_id = match message.qos {
            QoS::AtMostOnce => None,
            _ => Some(self.allocate_id()?),
        };
        let publish = Publish {
            dup: false,
            qos: message.qos,
            retain: message.retain,
            topic: message.topic,
            packet_id,
            properties: if self.protocol().is_v5() {
                message.properties
            } else {
                Properties::default()
            },
            payload: message.payload,
        };
        self.check_size(&Packet::Publish(publish.clone()))?;
        match packet_id {
            None => self.transmit.push_back(Packet::Publish(publish)),
            Some(_) => {
                self.queued.push_back(publish);
                self.dispatch_queued();
            }
        }
        Ok(packet_id)
    }

    /// Queues a SUBSCRIBE; returns its packet identifier (the answer is [`Event::SubAck`]).
    pub fn subscribe(
        &mut self,
        filters: Vec<SubscribeFilter>,
        properties: Properties,
    ) -> Result<u16> {
        if self.state != State::Connected {
            return Err(ClientError::NotConnected);
        }
        if filters.is_empty() {
            return Err(ClientError::Config(
                "SUBSCRIBE needs at least one filter".into(),
            ));
        }
        for f in &filters {
            validate_topic_filter(&f.filter).map_err(|e| ClientError::InvalidTopic {
                topic: f.filter.clone(),
                why: e.to_string(),
            })?;
        }
        let packet_id = self.allocate_id()?;
        let packet = Packet::Subscribe(Subscribe {
            packet_id,
            filters,
            properties: if self.protocol().is_v5() {
                properties
            } else {
                Properties::default()
            },
        });
        self.check_size(&packet)?;
        self.pending_acks.insert(packet_id);
        self.transmit.push_back(packet);
        Ok(packet_id)
    }

    /// Queues an UNSUBSCRIBE; returns its packet identifier (the answer is [`Event::UnsubAck`]).
    pub fn unsubscribe(&mut self, filters: Vec<String>) -> Result<u16> {
        if self.state != State::Connected {
            return Err(ClientError::NotConnected);
        }
        if filters.is_empty() {
            return Err(ClientError::Config(
                "UNSUBSCRIBE needs at least one filter".into(),
            ));
        }
        for f in &filters {
            validate_topic_filter(f).map_err(|e| ClientError::InvalidTopic {
                topic: f.clone(),
                why: e.to_string(),
            })?;
        }
        let packet_id = self.allocate_id()?;
        let packet = Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters,
            properties: Properties::default(),
        });
        self.check_size(&packet)?;
        self.pending_acks.insert(packet_id);
        self.transmit.push_back(packet);
        Ok(packet_id)
    }

    /// The next packet to write to the transport, if any. `now` is when it is sent (it restarts
    /// the keepalive interval).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Packet> {
        let packet = self.transmit.pop_front()?;
        self.last_sent = Some(now);
        Some(packet)
    }

    /// The next event for the owner, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`ClientSession::handle_timeout`] must next be called: the PINGREQ deadline, or the
    /// deadline for the outstanding PINGREQ's answer. `None` when keepalive is off or the session
    /// is not connected.
    ///
    /// A PINGREQ is due one keepalive interval after the last packet sent **or** received,
    /// whichever is older (as Paho and libmosquitto do): a client that only publishes QoS 0 gets
    /// no answers, so without a ping it would never learn whether the server still reads.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Connected {
            return None;
        }
        let keep_alive = self.keep_alive?;
        match self.ping_sent {
            Some(sent) => sent.checked_add(ping_answer_time(keep_alive)),
            None => {
                let idle_since = match (self.last_sent, self.last_received) {
                    (Some(s), Some(r)) => s.min(r),
                    (s, r) => s.or(r)?,
                };
                idle_since.checked_add(keep_alive)
            }
        }
    }

    /// The time by which something must arrive from the server for the link to count as
    /// alive: the outstanding PINGREQ's answer deadline, or (when no ping is outstanding) one
    /// keepalive interval plus the answer time after the last packet received. A driver whose
    /// write blocks (the server stopped reading) gives up at this time. `None` when keepalive
    /// is off or the session is not connected.
    pub fn liveness_deadline(&self) -> Option<Instant> {
        if self.state != State::Connected {
            return None;
        }
        let keep_alive = self.keep_alive?;
        let answer = ping_answer_time(keep_alive);
        match self.ping_sent {
            Some(sent) => sent.checked_add(answer),
            None => self
                .last_received?
                .checked_add(keep_alive)?
                .checked_add(answer),
        }
    }

    /// Advances timers to `now`: queues a PINGREQ when the keepalive interval passed without
    /// anything sent or without anything received, and fails with
    /// [`ClientError::KeepAliveTimeout`] when a PINGREQ went unanswered for half an interval
    /// (so a dead server is detected within 1.5 keepalive intervals of its last packet).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<()> {
        let Some(deadline) = self.poll_timeout() else {
            return Ok(());
        };
        if now < deadline {
            return Ok(());
        }
        if self.ping_sent.is_some() {
            self.state = State::Disconnected;
            return Err(ClientError::KeepAliveTimeout);
        }
        self.ping_sent = Some(now);
        self.transmit.push_back(Packet::PingReq);
        Ok(())
    }

    /// Processes one packet received from the server.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) -> Result<()> {
        // Whatever arrives proves the server alive and answers an outstanding PINGREQ.
        self.last_received = Some(now);
        self.ping_sent = None;
        match (self.state, packet) {
            (State::Connecting, Packet::ConnAck(ack)) => self.on_connack(ack),
            (State::Connecting, other) => Err(ClientError::Protocol(format!(
                "expected CONNACK, received {}",
                other.name()
            ))),
            (State::Disconnected, other) => Err(ClientError::Protocol(format!(
                "{} received while disconnected",
                other.name()
            ))),
            (State::Connected, packet) => self.on_packet(packet),
            (State::Closing, Packet::Disconnect(_)) => Ok(()),
            (State::Closing, packet) => {
                let queued = self.transmit.len();
                let result = self.on_packet(packet);
                // Nothing may follow our DISCONNECT (or a failed transport): drop the answers.
                self.transmit.truncate(queued);
                result
            }
        }
    }

    fn on_connack(&mut self, ack: ConnAck) -> Result<()> {
        if ack.reason_code.is_error() || ack.reason_code != ReasonCode::Success {
            self.state = State::Disconnected;
            return Err(ClientError::Refused {
                reason: ack.reason_code,
                protocol: self.protocol(),
            });
        }
        self.state = State::Connected;
        let props = &ack.properties;
        let keep_alive = props.server_keep_alive.unwrap_or(self.options.keep_alive);
        self.keep_alive = (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive)));
        self.send_quota = self
            .options
            .max_inflight
            .min(props.receive_maximum.unwrap_or(u16::MAX))
            .max(1);
        self.server_max_qos = props
            .maximum_qos
            .and_then(QoS::from_u8)
            .unwrap_or(QoS::ExactlyOnce);
        self.server_retain_available = props.retain_available != Some(0);
        self.server_max_packet_size = props.maximum_packet_size;
        if let Some(id) = &props.assigned_client_identifier {
            self.client_id = id.clone();
        }
        if ack.session_present {
            self.resume_inflight();
        } else {
            self.restart_inflight();
        }
        self.dispatch_queued();
        self.events.push_back(Event::Connected(ack));
        Ok(())
    }

    /// The server kept the session: retransmit unacknowledged PUBLISH (DUP set) and PUBREL in
    /// identifier order [MQTT-4.4.0-1].
    fn resume_inflight(&mut self) {
        for (&id, state) in &mut self.outgoing {
            match state {
                Outgoing::Qos1Sent(p) | Outgoing::Qos2Sent(p) => {
                    p.dup = true;
                    self.transmit.push_back(Packet::Publish(p.clone()));
                }
                Outgoing::Released => {
                    self.transmit.push_back(Packet::PubRel(PubResp::new(id)));
                }
            }
        }
    }

    /// The server has no session: the incoming QoS 2 state is void. Unacknowledged outgoing
    /// publications are sent again (at-least-once still holds), with DUP set since they may
    /// have reached the server before [MQTT-3.3.1-1]; a QoS 2 message already past PUBREC was
    /// received by the server, so it is reported complete.
    fn restart_inflight(&mut self) {
        self.incoming_qos2.clear();
        self.held_qos2.clear();
        let old = std::mem::take(&mut self.outgoing);
        let mut resend = Vec::new();
        for (id, state) in old {
            match state {
                Outgoing::Qos1Sent(p) | Outgoing::Qos2Sent(p) => resend.push(p),
                Outgoing::Released => self.events.push_back(Event::Published {
                    packet_id: id,
                    reason_code: ReasonCode::Success,
                }),
            }
        }
        for mut p in resend.into_iter().rev() {
            p.dup = true;
            self.queued.push_front(p);
        }
    }

    fn on_packet(&mut self, packet: Packet) -> Result<()> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(ack) => {
                if let Some(Outgoing::Qos1Sent(_)) = self.outgoing.get(&ack.packet_id) {
                    self.outgoing.remove(&ack.packet_id);
                    self.events.push_back(Event::Published {
                        packet_id: ack.packet_id,
                        reason_code: ack.reason_code,
                    });
                    self.dispatch_queued();
                    Ok(())
                } else {
                    tracing::debug!(packet_id = ack.packet_id, "PUBACK for an unknown packet id");
                    Ok(())
                }
            }
            Packet::PubRec(rec) => {
                let id = rec.packet_id;
                match self.outgoing.get(&id) {
                    Some(Outgoing::Qos2Sent(_)) if rec.reason_code.is_error() => {
                        // MQTT 5: the server refused the message; the flow ends here.
                        self.outgoing.remove(&id);
                        self.events.push_back(Event::Published {
                            packet_id: id,
                            reason_code: rec.reason_code,
                        });
                        self.dispatch_queued();
                    }
                    Some(Outgoing::Qos2Sent(_)) | Some(Outgoing::Released) => {
                        self.outgoing.insert(id, Outgoing::Released);
                        self.transmit.push_back(Packet::PubRel(PubResp::new(id)));
                    }
                    _ => {
                        let mut rel = PubResp::new(id);
                        if self.protocol().is_v5() {
                            rel.reason_code = ReasonCode::PacketIdentifierNotFound;
                        }
                        self.transmit.push_back(Packet::PubRel(rel));
                    }
                }
                Ok(())
            }
            Packet::PubComp(comp) => {
                if let Some(Outgoing::Released) = self.outgoing.get(&comp.packet_id) {
                    self.outgoing.remove(&comp.packet_id);
                    self.events.push_back(Event::Published {
                        packet_id: comp.packet_id,
                        reason_code: comp.reason_code,
                    });
                    self.dispatch_queued();
                } else {
                    tracing::debug!(
                        packet_id = comp.packet_id,
                        "PUBCOMP for an unknown packet id"
                    );
                }
                Ok(())
            }
            Packet::PubRel(rel) => {
                let known = self.incoming_qos2.remove(&rel.packet_id);
                let mut comp = PubResp::new(rel.packet_id);
                if !known && self.protocol().is_v5() {
                    comp.reason_code = ReasonCode::PacketIdentifierNotFound;
                }
                self.transmit.push_back(Packet::PubComp(comp));
                Ok(())
            }
            Packet::SubAck(ack) => {
                if self.pending_acks.remove(&ack.packet_id) {
                    self.events.push_back(Event::SubAck(ack));
                }
                Ok(())
            }
            Packet::UnsubAck(ack) => {
                if self.pending_acks.remove(&ack.packet_id) {
                    self.events.push_back(Event::UnsubAck(ack));
                }
                Ok(())
            }
            Packet::PingResp => {
                self.events.push_back(Event::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => {
                self.state = State::Disconnected;
                Err(ClientError::ServerDisconnect {
                    reason: d.reason_code,
                    reason_string: d.properties.into_values().reason_string,
                })
            }
            Packet::Auth(_) => Err(ClientError::Protocol(
                "AUTH received but no authentication method was requested".into(),
            )),
            other @ (Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq) => Err(ClientError::Protocol(format!(
                "a server must not send {}",
                other.name()
            ))),
        }
    }

    fn on_publish(&mut self, publish: Publish) -> Result<()> {
        if publish.topic.is_empty() {
            // We never announce a Topic Alias Maximum, so the server may not use aliases.
            return Err(ClientError::Protocol(
                "PUBLISH with an empty topic (topic aliases were not allowed)".into(),
            ));
        }
        let manual = self.options.manual_acks;
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => self.events.push_back(Event::Message(publish)),
            (QoS::AtLeastOnce, Some(id)) => {
                self.events.push_back(Event::Message(publish));
                if !manual {
                    self.transmit.push_back(Packet::PubAck(PubResp::new(id)));
                }
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if self.incoming_qos2.insert(id) {
                    self.events.push_back(Event::Message(publish));
                    if manual {
                        self.held_qos2.insert(id);
                        return Ok(());
                    }
                } else if self.held_qos2.contains(&id) {
                    // A retransmission of a message the application still holds: it answers
                    // with its ack.
                    return Ok(());
                }
                self.transmit.push_back(Packet::PubRec(PubResp::new(id)));
            }
            (_, None) => {
                return Err(ClientError::Protocol(
                    "QoS 1/2 PUBLISH without a packet identifier".into(),
                ))
            }
        }
        Ok(())
    }

    /// With [`ConnectOptions::manual_acks`]: acknowledges the incoming message `packet_id` of
    /// `qos` (PUBACK for QoS 1, PUBREC for QoS 2; the PUBREL that follows is answered by the
    /// session). Does nothing for QoS 0, without manual acks, or while disconnected (the server
    /// sends unacknowledged messages again after a reconnect).
    pub fn ack(&mut self, packet_id: u16, qos: QoS) {
        if !self.options.manual_acks || self.state != State::Connected {
            return;
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self
                .transmit
                .push_back(Packet::PubAck(PubResp::new(packet_id))),
            QoS::ExactlyOnce => {
                if self.held_qos2.remove(&packet_id) {
                    self.transmit
                        .push_back(Packet::PubRec(PubResp::new(packet_id)));
                }
            }
        }
    }

    /// Moves queued publications into flight while the quota allows.
    fn dispatch_queued(&mut self) {
        if self.state != State::Connected {
            return;
        }
        while self.outgoing.len() < usize::from(self.send_quota) {
            let Some(publish) = self.queued.pop_front() else {
                break;
            };
            let Some(id) = publish.packet_id else {
                continue;
            };
            let state = match publish.qos {
                QoS::ExactlyOnce => Outgoing::Qos2Sent(publish.clone()),
                _ => Outgoing::Qos1Sent(publish.clone()),
            };
            self.outgoing.insert(id, state);
            self.transmit.push_back(Packet::Publish(publish));
        }
    }

    /// A packet identifier not used by any publication, SUBSCRIBE or UNSUBSCRIBE in flight
    /// [MQTT-2.2.1-3]; identifiers cycle through 1..=65535.
    fn allocate_id(&mut self) -> Result<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_id;
            self.next_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.id_in_use(id) {
                return Ok(id);
            }
        }
        Err(ClientError::NoPacketIdAvailable)
    }

    fn id_in_use(&self, id: u16) -> bool {
        self.outgoing.contains_key(&id)
            || self.pending_acks.contains(&id)
            || self.queued.iter().any(|p| p.packet_id == Some(id))
    }

    fn check_size(&self, packet: &Packet) -> Result<()> {
        let Some(max) = self.server_max_packet_size else {
            return Ok(());
        };
        let size = encoded_len(packet, self.protocol())?;
        if size > usize::try_from(max).unwrap_or(usize::MAX) {
            return Err(ClientError::PacketTooLarge { size, max });
        }
        Ok(())
    }
}

/// How long a PINGREQ may go unanswered: half the keepalive interval (at least one second), so
/// a dead link is declared within 1.5 intervals of the last packet received.
fn ping_answer_time(keep_alive: Duration) -> Duration {
    (keep_alive / 2).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests;
