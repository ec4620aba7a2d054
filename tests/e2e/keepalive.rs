//! Keepalive: enforced at 1.5 times the client's interval; PINGREQ keeps a connection alive.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use culex_proto::{Packet, Protocol, QoS};
use culex_test_support::{TestBroker, WAIT};

use crate::*;

async fn silent_client_disconnected(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut connect = connect_packet(protocol, "sleepy", true);
    connect.keep_alive = 1;
    let (mut c, ack) = connect_ok(broker.addr, connect).await?;
    assert_eq!(ack.properties.server_keep_alive, None);
    let start = Instant::now();
    // [MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5.0): closed after 1.5 x keep alive; 5.0 with
    // DISCONNECT 0x8D (Keep Alive timeout).
    expect_closed_with(&mut c, &[0x8D]).await?;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "disconnected after only {elapsed:?} with keep alive 1 s"
    );
    assert!(elapsed < WAIT, "{elapsed:?}");
    Ok(())
}

#[tokio::test]
async fn v311_silent_client_disconnected_after_one_and_a_half_keepalives() -> Result<()> {
    silent_client_disconnected(Protocol::V311).await
}

#[tokio::test]
async fn v5_silent_client_gets_disconnect_0x8d_after_one_and_a_half_keepalives() -> Result<()> {
    silent_client_disconnected(Protocol::V5).await
}

async fn pings_keep_alive(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut connect = connect_packet(protocol, "pinger", true);
    connect.keep_alive = 1;
    let (mut c, _) = connect_ok(broker.addr, connect).await?;
    let start = Instant::now();
    // One PINGREQ every 0.5 s for 3 s: twice the 1.5 s limit.
    let mut next = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        next += Duration::from_millis(500);
        tokio::time::sleep_until(next).await;
        c.send(&Packet::PingReq).await?;
        // [MQTT-3.12.4-1]
        match c.recv().await? {
            Packet::PingResp => {}
            other => bail!("expected PINGRESP, got {other:?}"),
        }
    }
    assert!(start.elapsed() > Duration::from_millis(1500));
    disconnect(c).await
}

#[tokio::test]
async fn v311_pingreq_keeps_connection_alive_past_keepalive_limit() -> Result<()> {
    pings_keep_alive(Protocol::V311).await
}

#[tokio::test]
async fn v5_pingreq_keeps_connection_alive_past_keepalive_limit() -> Result<()> {
    pings_keep_alive(Protocol::V5).await
}

/// A publisher whose PUBACKs the broker holds back (`queue_full_policy block`: its subscriber's
/// queue is full) is not timed out for keepalive: the broker stops reading it while so many
/// answers are owed, so its PINGREQs wait unread in the socket. The keepalive counts from
/// when the broker reads again. Before, the broker closed it 1.5 keepalives after its last
/// read, and a clean-session publisher lost what it had in flight (found in the cluster
/// tests: a publisher held while a NATS server was killed lost 99 messages).
async fn held_publisher_not_timed_out(protocol: Protocol) -> Result<()> {
    let mut config = culex_config::Config::embedded_default();
    // A window wide enough (it is also the broker's MQTT 5 Receive Maximum) for the publisher
    // to be owed more answers than the broker lets a connection be owed.
    config.limits.max_inflight_messages = 100;
    config.limits.max_queued_messages = 3;
    let broker = TestBroker::start_with(config).await?;
    let mut sub = connect_clean(broker.addr, protocol, "held-sub").await?;
    subscribe(&mut sub, 1, "held/t", QoS::AtLeastOnce).await?;
    let mut connect = connect_packet(protocol, "held-pub", true);
    connect.keep_alive = 1;
    let (mut publisher, ack) = connect_ok(broker.addr, connect).await?;
    // As many unacknowledged as the client may send (MQTT 5: the broker's Receive Maximum;
    // 3.1.1: more than the broker lets a connection be owed), until no PUBACK comes: the
    // broker then holds them all and reads no more. The subscriber reads nothing yet.
    let window = ack.properties.receive_maximum.unwrap_or(100);
    let (mut sent, mut acked) = (0u16, 0u16);
    loop {
        while sent - acked < window {
            sent += 1;
            let p = publish_packet("held/t", format!("m{sent}"), QoS::AtLeastOnce, false, sent);
            publisher.send(&Packet::Publish(p)).await?;
        }
        let before = acked;
        while let Some(p) = publisher.recv_within(Duration::from_millis(300)).await? {
            match p {
                Packet::PubAck(_) => acked += 1,
                other => bail!("expected PUBACK, got {other:?}"),
            }
        }
        if acked == before {
            break;
        }
        ensure!(sent < 10_000, "the broker never held the publisher back");
    }
    // Three keepalive limits of PINGREQs, which the broker does not read yet.
    let (mut pings, mut pongs) = (0, 0);
    let start = Instant::now();
    let mut next = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        next += Duration::from_millis(500);
        tokio::time::sleep_until(next).await;
        publisher.send(&Packet::PingReq).await?;
        pings += 1;
        while let Some(p) = publisher.recv_within(Duration::ZERO).await? {
            match p {
                Packet::PubAck(_) => acked += 1,
                Packet::PingResp => pongs += 1,
                other => bail!("expected PUBACK or PINGRESP, got {other:?}"),
            }
        }
    }
    // The subscriber catches up: the broker reads the publisher again and answers it all.
    for _ in 0..sent {
        recv_publish_ack(&mut sub).await?;
    }
    while acked < sent || pongs < pings {
        match publisher.recv().await? {
            Packet::PubAck(_) => acked += 1,
            Packet::PingResp => pongs += 1,
            other => bail!("expected PUBACK or PINGRESP, got {other:?}"),
        }
    }
    publisher.send(&Packet::PingReq).await?;
    match publisher.recv().await? {
        Packet::PingResp => {}
        other => bail!("expected PINGRESP, got {other:?}"),
    }
    disconnect(publisher).await
}

#[tokio::test]
async fn v311_a_publisher_held_back_by_a_full_queue_is_not_timed_out() -> Result<()> {
    held_publisher_not_timed_out(Protocol::V311).await
}

#[tokio::test]
async fn v5_a_publisher_held_back_by_a_full_queue_is_not_timed_out() -> Result<()> {
    held_publisher_not_timed_out(Protocol::V5).await
}
