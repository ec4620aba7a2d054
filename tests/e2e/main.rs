//! End-to-end tests of the Culex broker: the real server on 127.0.0.1 port 0, driven by a
//! raw-packet client (exact bytes and replies) and by `rumqttc` (an independent client), for
//! MQTT 3.1.1 and 5.0 (and a smoke test for 3.1).
//!
//! Every test starts its own broker. Tests synchronise on packets (SUBACK before publishing, a
//! marker message after one that must not arrive) instead of sleeping; spec rules checked are
//! named in comments as `[MQTT-x.y.z-n]`.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

mod connect;
mod flow;
mod keepalive;
mod limits;
mod malformed;
mod overload;
mod publish;
mod retain;
mod session;
mod shutdown;
mod topics;
mod v5;
mod v5_rumqttc;
mod will;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use culex_proto::{
    ConnAck, Connect, LastWill, Packet, Properties, Protocol, PubResp, Publish, QoS, ReasonCode,
    Subscribe, SubscribeFilter, SubscriptionOptions, Unsubscribe,
};
use culex_test_support::RawClient;

/// A short quiet period for "nothing more arrives" checks, used only after a positive
/// synchronisation point.
pub(crate) const QUIET: Duration = Duration::from_millis(400);

/// A CONNECT packet with no will, no credentials and keep alive 60.
pub(crate) fn connect_packet(protocol: Protocol, client_id: &str, clean_start: bool) -> Connect {
    Connect {
        protocol,
        clean_start,
        keep_alive: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// A will message with default properties.
pub(crate) fn will(topic: &str, payload: &str, qos: QoS) -> LastWill {
    LastWill {
        topic: topic.to_owned(),
        payload: Bytes::from(payload.to_owned()),
        qos,
        retain: false,
        properties: Properties::default(),
    }
}

/// Opens a socket, sends `connect` and returns the client with the CONNACK it got (whatever
/// its reason code).
pub(crate) async fn connect_with(
    addr: SocketAddr,
    connect: Connect,
) -> Result<(RawClient, ConnAck)> {
    let mut c = RawClient::connect(addr, connect.protocol).await?;
    c.send(&Packet::Connect(Box::new(connect))).await?;
    match c.recv().await? {
        Packet::ConnAck(ack) => Ok((c, ack)),
        other => bail!("expected CONNACK, got {other:?}"),
    }
}

/// Connects with `connect` and insists the CONNACK accepts it.
pub(crate) async fn connect_ok(addr: SocketAddr, connect: Connect) -> Result<(RawClient, ConnAck)> {
    let (c, ack) = connect_with(addr, connect).await?;
    ensure!(
        ack.reason_code.as_u8() == 0,
        "CONNECT refused: {:?}",
        ack.reason_code
    );
    Ok((c, ack))
}

/// A clean-session client of `protocol` after a successful CONNACK.
pub(crate) async fn connect_clean(
    addr: SocketAddr,
    protocol: Protocol,
    client_id: &str,
) -> Result<RawClient> {
    Ok(connect_ok(addr, connect_packet(protocol, client_id, true))
        .await?
        .0)
}

/// A clean MQTT 5.0 client after a successful CONNACK.
pub(crate) async fn connect_v5(addr: SocketAddr, client_id: &str) -> Result<RawClient> {
    connect_clean(addr, Protocol::V5, client_id).await
}

/// A clean MQTT 3.1.1 client after a successful CONNACK.
pub(crate) async fn connect_v311(addr: SocketAddr, client_id: &str) -> Result<RawClient> {
    connect_clean(addr, Protocol::V311, client_id).await
}

/// A persistent-session CONNECT: 3.1.1 clean session 0, 5.0 clean start 0 with a session
/// expiry of one hour.
pub(crate) fn persistent_connect(protocol: Protocol, client_id: &str) -> Connect {
    let mut c = connect_packet(protocol, client_id, false);
    if protocol.is_v5() {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

/// Sends SUBSCRIBE for one filter and waits for its SUBACK; returns the granted reason codes.
/// Any PUBLISH arriving before the SUBACK is an error (use [`subscribe_collect`] when retained
/// messages may arrive).
pub(crate) async fn subscribe(
    c: &mut RawClient,
    packet_id: u16,
    filter: &str,
    qos: QoS,
) -> Result<Vec<ReasonCode>> {
    let (codes, early) = subscribe_collect(c, packet_id, &[(filter, qos)]).await?;
    ensure!(early.is_empty(), "PUBLISH before SUBACK: {early:?}");
    Ok(codes)
}

/// Sends one SUBSCRIBE with several filters and waits for its SUBACK. Returns the reason codes
/// and the PUBLISH packets that arrived before the SUBACK.
pub(crate) async fn subscribe_collect(
    c: &mut RawClient,
    packet_id: u16,
    filters: &[(&str, QoS)],
) -> Result<(Vec<ReasonCode>, Vec<Publish>)> {
    let sub = Subscribe {
        packet_id,
        filters: filters
            .iter()
            .map(|(f, qos)| SubscribeFilter {
                filter: (*f).to_owned(),
                options: SubscriptionOptions {
                    qos: *qos,
                    ..SubscriptionOptions::default()
                },
            })
            .collect(),
        properties: Properties::default(),
    };
    c.send(&Packet::Subscribe(sub)).await?;
    let mut early = Vec::new();
    loop {
        match c.recv().await? {
            Packet::SubAck(ack) => {
                ensure!(
                    ack.packet_id == packet_id,
                    "SUBACK for {} instead of {packet_id}",
                    ack.packet_id
                );
                ensure!(
                    ack.reason_codes.len() == filters.len(),
                    "SUBACK has {} codes for {} filters",
                    ack.reason_codes.len(),
                    filters.len()
                );
                return Ok((ack.reason_codes, early));
            }
            Packet::Publish(p) => early.push(p),
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }
}

/// Sends UNSUBSCRIBE for one filter and waits for the UNSUBACK with the same packet id.
pub(crate) async fn unsubscribe(c: &mut RawClient, packet_id: u16, filter: &str) -> Result<()> {
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id,
        filters: vec![filter.to_owned()],
        properties: Properties::default(),
    }))
    .await?;
    match c.recv().await? {
        // [MQTT-3.10.4-4] UNSUBACK carries the packet id of the UNSUBSCRIBE.
        Packet::UnsubAck(ack) => {
            ensure!(ack.packet_id == packet_id, "UNSUBACK id {}", ack.packet_id);
            if c.protocol.is_v5() {
                ensure!(
                    ack.reason_codes.len() == 1 && ack.reason_codes[0].as_u8() == 0,
                    "UNSUBACK reason codes {:?}",
                    ack.reason_codes
                );
            }
            Ok(())
        }
        other => bail!("expected UNSUBACK, got {other:?}"),
    }
}

/// A PUBLISH packet.
pub(crate) fn publish_packet(
    topic: &str,
    payload: impl Into<Bytes>,
    qos: QoS,
    retain: bool,
    packet_id: u16,
) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: Properties::default(),
        payload: payload.into(),
    }
}

/// Publishes and completes the QoS flow (PUBACK, or PUBREC/PUBREL/PUBCOMP) with success codes.
pub(crate) async fn publish(
    c: &mut RawClient,
    topic: &str,
    payload: impl Into<Bytes>,
    qos: QoS,
    retain: bool,
    packet_id: u16,
) -> Result<()> {
    c.send(&Packet::Publish(publish_packet(
        topic, payload, qos, retain, packet_id,
    )))
    .await?;
    match qos {
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce => match c.recv().await? {
            Packet::PubAck(a) if a.packet_id == packet_id && a.reason_code.as_u8() < 0x80 => Ok(()),
            other => bail!("expected PUBACK {packet_id}, got {other:?}"),
        },
        QoS::ExactlyOnce => {
            match c.recv().await? {
                Packet::PubRec(a) if a.packet_id == packet_id && a.reason_code.as_u8() < 0x80 => {}
                other => bail!("expected PUBREC {packet_id}, got {other:?}"),
            }
            c.send(&Packet::PubRel(PubResp::new(packet_id))).await?;
            match c.recv().await? {
                Packet::PubComp(a) if a.packet_id == packet_id && a.reason_code.as_u8() == 0 => {
                    Ok(())
                }
                other => bail!("expected PUBCOMP {packet_id}, got {other:?}"),
            }
        }
    }
}

/// Makes sure the router has handled everything `c` sent before: a SUBSCRIBE is answered by
/// the router, which handles one connection's commands in order.
pub(crate) async fn router_barrier(c: &mut RawClient, packet_id: u16) -> Result<()> {
    subscribe(c, packet_id, "culex-e2e/barrier", QoS::AtMostOnce).await?;
    Ok(())
}

/// Receives the next packet and insists it is a PUBLISH.
pub(crate) async fn recv_publish(c: &mut RawClient) -> Result<Publish> {
    match c.recv().await? {
        Packet::Publish(p) => Ok(p),
        other => bail!("expected PUBLISH, got {other:?}"),
    }
}

/// Receives the next PUBLISH and completes its QoS flow towards the broker (PUBACK, or
/// PUBREC/PUBREL/PUBCOMP).
pub(crate) async fn recv_publish_ack(c: &mut RawClient) -> Result<Publish> {
    let p = recv_publish(c).await?;
    ack_publish(c, &p).await?;
    Ok(p)
}

/// Acknowledges a received PUBLISH (for QoS 2: PUBREC, wait PUBREL, PUBCOMP).
pub(crate) async fn ack_publish(c: &mut RawClient, p: &Publish) -> Result<()> {
    match (p.qos, p.packet_id) {
        (QoS::AtMostOnce, _) => Ok(()),
        (QoS::AtLeastOnce, Some(id)) => c.send(&Packet::PubAck(PubResp::new(id))).await,
        (QoS::ExactlyOnce, Some(id)) => {
            c.send(&Packet::PubRec(PubResp::new(id))).await?;
            match c.recv().await? {
                Packet::PubRel(r) if r.packet_id == id => {}
                other => bail!("expected PUBREL {id}, got {other:?}"),
            }
            c.send(&Packet::PubComp(PubResp::new(id))).await
        }
        (_, None) => bail!("QoS > 0 PUBLISH without packet id: {p:?}"),
    }
}

/// The payload as a string (lossy).
pub(crate) fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Sends a normal DISCONNECT and waits for the server to close the socket.
pub(crate) async fn disconnect(mut c: RawClient) -> Result<()> {
    c.send(&Packet::Disconnect(culex_proto::Disconnect::new(
        ReasonCode::NormalDisconnection,
    )))
    .await?;
    let rest = c.expect_closed().await?;
    ensure!(rest.is_empty(), "packets after DISCONNECT: {rest:?}");
    Ok(())
}

/// Waits for the server to close the connection. For MQTT 5 the only packet before the close
/// must be a DISCONNECT whose reason is one of `v5_reasons`; for older versions nothing may
/// arrive before the close.
pub(crate) async fn expect_closed_with(c: &mut RawClient, v5_reasons: &[u8]) -> Result<()> {
    let packets = c.expect_closed().await?;
    if c.protocol.is_v5() {
        match packets.as_slice() {
            [Packet::Disconnect(d)] if v5_reasons.contains(&d.reason_code.as_u8()) => Ok(()),
            _ => bail!(
                "expected DISCONNECT with one of {:02x?} then close, got {packets:?}",
                v5_reasons
            ),
        }
    } else {
        ensure!(packets.is_empty(), "expected close, got {packets:?}");
        Ok(())
    }
}

/// Encodes a packet from its first byte and body, computing the remaining length.
pub(crate) fn raw_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed MQTT string (any bytes).
pub(crate) fn mqtt_str(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// Both protocol versions with full feature coverage.
pub(crate) const VERSIONS: [Protocol; 2] = [Protocol::V311, Protocol::V5];

/// Helpers for driving `rumqttc`'s event loops from tests.
pub(crate) mod rumq {
    use anyhow::{anyhow, Result};
    use culex_test_support::WAIT;
    use tokio::sync::mpsc;

    /// Spawns a task that polls a 3.1.1 event loop and forwards every event (or the first
    /// error, after which it stops) into a channel.
    pub(crate) fn drive_v311(
        mut el: rumqttc::EventLoop,
    ) -> mpsc::UnboundedReceiver<Result<rumqttc::Event, String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let ev = el.poll().await.map_err(|e| e.to_string());
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    break;
                }
            }
        });
        rx
    }

    /// Same as [`drive_v311`] for the MQTT 5 event loop.
    pub(crate) fn drive_v5(
        mut el: rumqttc::v5::EventLoop,
    ) -> mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let ev = el.poll().await.map_err(|e| e.to_string());
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    break;
                }
            }
        });
        rx
    }

    /// Waits (at most [`WAIT`]) for an event `pick` maps to `Some`, skipping the others.
    pub(crate) async fn wait_for<E, T>(
        rx: &mut mpsc::UnboundedReceiver<Result<E, String>>,
        what: &str,
        mut pick: impl FnMut(&E) -> Option<T>,
    ) -> Result<T> {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(ev) = rx.recv().await {
                let ev =
                    ev.map_err(|e| anyhow!("event loop error while waiting for {what}: {e}"))?;
                if let Some(t) = pick(&ev) {
                    return Ok(t);
                }
            }
            Err(anyhow!("event loop ended while waiting for {what}"))
        })
        .await
        .map_err(|_| anyhow!("timed out waiting for {what}"))?;
        found
    }
}
