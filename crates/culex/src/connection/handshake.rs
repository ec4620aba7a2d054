//! CONNECT to CONNACK: read the first packet, decide whether the client is let in (the rules
//! are plain functions, tested below without a socket), register with the router and answer.

use std::sync::Arc;

use culex_broker::log_clip::Clipped;
use culex_broker::{Command, ConnectOutcome, ConnectRequest, OutboxReceiver};
use culex_proto::{ConnAck, Connect, DecodeError, Packet, Properties, Protocol, QoS, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;
use tracing::{debug, info};

use super::aliases::{Aliases, TOPIC_ALIAS_MAX};
use super::io::Conn;
use super::state::{payload_format_valid, Ending, Rare};
use super::RESPONSE_INFORMATION_PREFIX;
use crate::context::ConnLimits;
use crate::counters::Refusal;
use crate::security::Admission;

/// A CONNECT refused before authentication: the CONNACK reason, and the log line if the
/// refusal is worth one.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refused {
    pub(super) reason: ReasonCode,
    pub(super) log: Option<&'static str>,
}

impl Refused {
    fn quiet(reason: ReasonCode) -> Self {
        Refused { reason, log: None }
    }
}

/// The checks made before the client's credentials are: its client identifier and the size
/// of its will. `internal`: a connection of the broker's own (a bridge, the cluster link),
/// which may use the identifiers reserved for it and need not carry `clientid_prefixes`.
pub(super) fn check_before_auth(
    connect: &Connect,
    limits: &ConnLimits,
    internal: bool,
) -> Result<(), Refused> {
    let v5 = connect.protocol.is_v5();
    if !internal && limits.is_reserved(&connect.client_id) {
        return Err(Refused {
            reason: ReasonCode::ClientIdentifierNotValid,
            log: Some("client refused: its client id is reserved for the broker's own connections (a bridge's local session, or the cluster link)"),
        });
    }
    if connect.client_id.is_empty() {
        let refuse = match connect.protocol {
            Protocol::V31 => true,
            // [MQTT-3.1.3-8]
            Protocol::V311 => !connect.clean_start || !limits.allow_zero_length_clientid,
            Protocol::V5 => !limits.allow_zero_length_clientid,
        };
        if refuse {
            return Err(Refused::quiet(ReasonCode::ClientIdentifierNotValid));
        }
    }
    if let Some(prefix) = limits.clientid_prefixes.as_deref().filter(|_| !internal) {
        if !connect.client_id.is_empty() && !connect.client_id.starts_with(prefix) {
            // Mosquitto answers "not authorised" here too.
            return Err(Refused {
                reason: ReasonCode::NotAuthorized,
                log: Some("client refused: client id does not start with clientid_prefixes"),
            });
        }
    }
    // `message_size_limit` applies to the will too (as in Mosquitto): a will the broker
    // would refuse as a message is refused at CONNECT.
    let will_too_large = connect.will.as_ref().is_some_and(|w| {
        limits.message_size_limit > 0 && w.payload.len() > limits.message_size_limit as usize
    });
    if will_too_large {
        return Err(Refused {
            reason: if v5 {
                ReasonCode::PacketTooLarge
            } else {
                ReasonCode::NotAuthorized
            },
            log: Some("client refused: will payload larger than message_size_limit"),
        });
    }
    Ok(())
}

/// The Keep Alive in force and, when the server changed the client's, the Server Keep Alive
/// to tell it (MQTT 5); a 3.x client asking for more than `max_keepalive` is refused.
pub(super) fn negotiate_keep_alive(
    asked: u16,
    protocol: Protocol,
    max_keepalive: u16,
) -> Result<(u16, Option<u16>), ReasonCode> {
    if asked > max_keepalive || (asked == 0 && max_keepalive < u16::MAX) {
        if protocol.is_v5() {
            return Ok((max_keepalive, Some(max_keepalive)));
        }
        if asked > max_keepalive {
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
    }
    Ok((asked, None))
}

/// The checks made once the client is authenticated: authentication method (none is
/// supported), the will against the server's QoS, retain and payload format rules, and the
/// Keep Alive (see [`negotiate_keep_alive`]).
pub(super) fn check_after_auth(
    connect: &Connect,
    limits: &ConnLimits,
) -> Result<(u16, Option<u16>), ReasonCode> {
    if connect.properties.authentication_method.is_some() {
        return Err(ReasonCode::BadAuthenticationMethod);
    }
    if let Some(will) = &connect.will {
        if will.qos > limits.max_qos {
            return Err(ReasonCode::QoSNotSupported);
        }
        if will.retain && !limits.retain_available {
            return Err(ReasonCode::RetainNotSupported);
        }
        // The will's payload is checked like a PUBLISH's (section 3.1.3.2.3).
        if connect.protocol.is_v5() && !payload_format_valid(&will.properties, &will.payload) {
            return Err(ReasonCode::PayloadFormatInvalid);
        }
    }
    negotiate_keep_alive(connect.keep_alive, connect.protocol, limits.max_keepalive)
}

/// The session expiry a CONNECT asks for: MQTT 5 says so (0 when absent); 3.x sessions end
/// with the connection when clean, never otherwise.
pub(super) fn session_expiry(connect: &Connect) -> u32 {
    if connect.protocol.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    }
}

/// The properties of an accepting MQTT 5 CONNACK: the server's limits and capabilities, the
/// Server Keep Alive if it changed the client's, the client id the server assigned, and
/// Response Information only when asked for [MQTT-3.1.2-28].
pub(super) fn connack_properties(
    limits: &ConnLimits,
    server_keep_alive: Option<u16>,
    assigned: Option<&str>,
    request_response_information: bool,
    client_id: &str,
) -> Properties {
    let mut properties = Properties::default();
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
    properties.assigned_client_identifier = assigned.map(str::to_owned);
    if request_response_information {
        properties.response_information = Some(format!("{RESPONSE_INFORMATION_PREFIX}{client_id}"));
    }
    properties
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads CONNECT, checks it, registers with the router and writes CONNACK. Returns the
    /// outbox on success; on failure the connection is already answered and closed.
    pub(super) async fn handshake(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<OutboxReceiver> {
        let connect_timeout = self.state.shared.limits.connect_timeout;
        let first = tokio::select! {
            r = timeout(connect_timeout, self.read_packet()) => r,
            _ = shutdown.changed() => return None,
        };
        let counters = Arc::clone(&self.state.shared.counters);
        let peer = self.state.peer;
        let connect = match first {
            Err(_) => {
                debug!(peer = %peer, "no CONNECT in time; closing");
                return None;
            }
            Ok(Ok(Some(Packet::Connect(c)))) => {
                counters.packets_received[1].inc();
                c
            }
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(other))) => {
                debug!(peer = %peer, packet = other.name(), "first packet is not CONNECT; closing");
                counters.packet_in(&other);
                counters.protocol_errors.inc();
                counters.refuse(Refusal::ProtocolError);
                return None;
            }
            Ok(Err(DecodeError::UnsupportedProtocol { name, level })) => {
                debug!(peer = %peer, %name, level, "unsupported protocol version");
                // [MQTT-3.1.2-2] answer in the newest form the client can read, then close.
                self.state.protocol = if level == 5 {
                    Protocol::V5
                } else {
                    Protocol::V311
                };
                self.refuse(ReasonCode::UnsupportedProtocolVersion).await;
                return None;
            }
            Ok(Err(e)) => {
                info!(peer = %peer, error = %e, "bad CONNECT; closing");
                counters.protocol_errors.inc();
                counters.refuse(Refusal::ProtocolError);
                return None;
            }
        };
        self.state.protocol = connect.protocol;
        self.accept(*connect).await
    }

    async fn accept(&mut self, mut connect: Connect) -> Option<OutboxReceiver> {
        let identity = self.state.username.take();
        let limits = Arc::clone(&self.state.shared.limits);
        let v5 = self.state.protocol.is_v5();
        let peer = self.state.peer;
        if v5 {
            // Known before any answer: even a refusing CONNACK must fit [MQTT-3.2.2-19].
            self.state.client_max_packet =
                connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
            self.state.problem_information =
                connect.properties.request_problem_information != Some(0);
        }
        let internal = self.state.listener.security.is_internal();
        if let Err(refused) = check_before_auth(&connect, &limits, internal) {
            if let Some(line) = refused.log {
                info!(peer = %peer, client_id = %Clipped(&connect.client_id), "{line}");
            }
            self.refuse(refused.reason).await;
            return None;
        }
        let security = Arc::clone(&self.state.listener.security);
        let (username, admission) = match security
            .authenticate(
                connect.username.as_deref(),
                connect.password.as_deref(),
                identity.as_deref(),
                peer.ip(),
            )
            .await
        {
            Ok(u) => u,
            Err(reason) => {
                // The password is never logged.
                info!(peer = %peer, client_id = %Clipped(&connect.client_id),
                    username = %Clipped(connect.username.as_deref().unwrap_or("")), "client refused: not authorised");
                let counters = &self.state.shared.counters;
                counters.auth_failures.inc();
                if matches!(
                    reason,
                    ReasonCode::ConnectionRateExceeded | ReasonCode::ServerBusy
                ) {
                    counters.auth_throttled.inc();
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
                    info!(peer = %peer, client_id = %Clipped(&connect.client_id),
                        "client refused: use_username_as_clientid is set and the client has no user name");
                    self.refuse(ReasonCode::NotAuthorized).await;
                    return None;
                }
            }
        }
        self.state.username.clone_from(&username);
        match (&mut self.state.rare, admission) {
            (None, Admission::Anonymous) => {}
            (Some(rare), _) => rare.admission = admission,
            (None, _) => self.state.rare = Some(Rare::new(admission)),
        }
        let (keep_alive, server_keep_alive) = match check_after_auth(&connect, &limits) {
            Ok(k) => k,
            Err(reason) => {
                self.refuse(reason).await;
                return None;
            }
        };
        if let (Some(mount), Some(will)) = (&self.state.listener.mount_point, connect.will.as_mut())
        {
            will.topic = format!("{mount}{}", will.topic);
        }
        self.state.keep_alive = keep_alive;
        self.state.session_expiry = session_expiry(&connect);
        let receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let listener = Arc::clone(&self.state.listener);
        let ours = listener
            .queue
            .as_ref()
            .and_then(|q| q.max_inflight)
            .unwrap_or(limits.max_inflight_messages);
        let window = ours.min(receive_maximum).max(1);
        let shared = Arc::clone(&self.state.shared);
        let (tx, rx) = culex_broker::outbox(shared.broker.outbox_capacity(window));
        let (reply_tx, reply_rx) = oneshot::channel();
        let req = ConnectRequest {
            conn: self.state.conn,
            protocol: self.state.protocol,
            client_id: connect.client_id,
            clean_start: connect.clean_start,
            session_expiry: self.state.session_expiry,
            receive_maximum,
            maximum_packet_size: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
            will: connect.will,
            username,
            access: Some(security),
            queue: listener.queue.clone(),
            outbox: tx,
            reply: reply_tx,
        };
        let mut resumed = crate::cluster::Resumed::default();
        if let Some(cluster) = shared.cluster.as_ref().filter(|_| {
            !req.clean_start && !req.client_id.is_empty() && !listener.security.is_internal()
        }) {
            // Its session may be on another node: moved here before the CONNECT.
            match crate::cluster::resume_from_cluster(cluster, &shared.router, &req.client_id).await
            {
                Ok(r) => resumed = r,
                Err(e) => {
                    tracing::warn!(peer = %peer, client_id = %Clipped(&req.client_id), error = %e,
                    "client refused: its session could not be moved from another node; it may retry");
                    self.refuse(ReasonCode::ServerUnavailable).await;
                    return None;
                }
            }
        }
        if shared
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
        self.state.client_id = Arc::clone(&client_id);
        self.state.inbound_qos2 = inbound_qos2;
        let properties = if v5 {
            self.state.aliases =
                Aliases::toward(connect.properties.topic_alias_maximum.unwrap_or(0));
            connack_properties(
                &limits,
                server_keep_alive,
                assigned.then_some(&*client_id),
                connect.properties.request_response_information == Some(1),
                &client_id,
            )
        } else {
            Properties::default()
        };
        let connack = Packet::ConnAck(ConnAck {
            session_present,
            reason_code: ReasonCode::Success,
            properties,
        });
        let counters = &shared.counters;
        let now_connected = counters.connected.inc_get();
        counters.connected_max.max(now_connected);
        counters.connects.inc();
        if let Some(cluster) = shared
            .cluster
            .as_ref()
            .filter(|_| !listener.security.is_internal())
        {
            // The broker's own connections (bridges, the cluster link) are per node.
            if cluster.claims.try_send(client_id.to_string()).is_err() {
                tracing::debug!(client_id = %Clipped(&client_id), "cluster claim not sent: the link is busy");
            }
            if self.state.session_expiry > 0 {
                // Recorded before CONNACK: a client that moves on at once finds it here.
                if let Err(e) = cluster
                    .sessions
                    .hold(&client_id, resumed.record.as_deref())
                    .await
                {
                    tracing::warn!(client_id = %Clipped(&client_id), error = %e,
                        "cannot record this session in the cluster: resuming it on another node will not find it");
                }
            }
        }
        if limits.connection_messages {
            info!(peer = %peer, listener = %listener.local, client_id = %Clipped(&client_id), protocol = ?self.state.protocol,
                session_present, "client connected");
        }
        if self.state.queue(connack, &mut self.out).is_err() || self.flush().await.is_err() {
            self.finish(Ending::socket_gone("write failed")).await;
            return None;
        }
        if let Some(replay) = resumed.replay {
            replay.feed(shared.router.clone());
        }
        Some(rx)
    }

    /// Sends a refusing CONNACK and closes.
    async fn refuse(&mut self, reason: ReasonCode) {
        self.state
            .shared
            .counters
            .refuse(Refusal::from_reason_code(reason));
        let connack = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: reason,
            properties: Properties::default(),
        });
        if self.state.queue(connack, &mut self.out).is_ok() {
            let _ = self.flush().await;
        }
        let _ = self.io.shutdown().await;
    }

    /// Reads until the first packet is decoded, the peer closes (`Ok(None)`) or the input is
    /// bad. Before CONNECT the protocol is not known and Mosquitto's bridge bit may be set.
    async fn read_packet(&mut self) -> Result<Option<Packet>, DecodeError> {
        let max = self.state.shared.limits.max_packet_size;
        loop {
            if culex_proto::take_bridge_bit(&mut self.rbuf) {
                self.state.bridge = true;
            }
            if let Some(p) = culex_proto::decode(&mut self.rbuf, None, max)? {
                return Ok(Some(p));
            }
            self.rbuf.reserve(4096);
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => self.state.shared.counters.bytes_received.add(n as u64),
            }
        }
    }
}

#[cfg(test)]
mod tests;
