//! Last will: published when a connection ends without DISCONNECT (socket drop, keepalive
//! timeout, protocol error, takeover), not after a normal DISCONNECT; MQTT 5 DISCONNECT 0x04 and
//! Will Delay Interval.

use std::time::{Duration, Instant};

use anyhow::Result;
use culex_proto::{Connect, Disconnect, Packet, Protocol, QoS, ReasonCode};
use culex_test_support::{RawClient, TestBroker, WAIT};

use crate::*;

/// A watcher subscribed to `will/#` at QoS 1.
async fn watcher(broker: &TestBroker, protocol: Protocol) -> Result<RawClient> {
    let mut w = connect_clean(broker.addr, protocol, "will-watcher").await?;
    subscribe(&mut w, 1, "will/#", QoS::AtLeastOnce).await?;
    Ok(w)
}

fn with_will(protocol: Protocol, id: &str, keep_alive: u16) -> Connect {
    let mut c = connect_packet(protocol, id, true);
    c.keep_alive = keep_alive;
    c.will = Some(will(
        &format!("will/{id}"),
        &format!("{id} is gone"),
        QoS::AtLeastOnce,
    ));
    c
}

async fn expect_will(w: &mut RawClient, id: &str) -> Result<()> {
    let p = recv_publish_ack(w).await?;
    assert_eq!(p.topic, format!("will/{id}"));
    assert_eq!(text(&p), format!("{id} is gone"));
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(!p.retain);
    Ok(())
}

/// Proves nothing else arrived at the watcher: a marker published now is the next message.
async fn expect_no_will(broker: &TestBroker, protocol: Protocol, w: &mut RawClient) -> Result<()> {
    w.expect_silence(QUIET).await?;
    let mut m = connect_clean(broker.addr, protocol, "will-marker").await?;
    publish(&mut m, "will/marker", "marker", QoS::AtLeastOnce, false, 1).await?;
    let p = recv_publish_ack(w).await?;
    assert_eq!(
        (p.topic.as_str(), text(&p).as_str()),
        ("will/marker", "marker"),
        "will published unexpectedly: {p:?}"
    );
    Ok(())
}

async fn will_on_socket_drop(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut w = watcher(&broker, protocol).await?;
    let (c, _) = connect_ok(broker.addr, with_will(protocol, "dropper", 60)).await?;
    drop(c);
    // [MQTT-3.1.2-8] (3.1.1) / 3.1.2.5 (5.0)
    expect_will(&mut w, "dropper").await
}

#[tokio::test]
async fn v311_will_published_when_socket_drops() -> Result<()> {
    will_on_socket_drop(Protocol::V311).await
}

#[tokio::test]
async fn v5_will_published_when_socket_drops() -> Result<()> {
    will_on_socket_drop(Protocol::V5).await
}

async fn will_on_keepalive_timeout(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut w = watcher(&broker, protocol).await?;
    let (_c, _) = connect_ok(broker.addr, with_will(protocol, "silent", 1)).await?;
    // The client stays connected but silent: the broker drops it after 1.5 s.
    expect_will(&mut w, "silent").await
}

#[tokio::test]
async fn v311_will_published_on_keepalive_timeout() -> Result<()> {
    will_on_keepalive_timeout(Protocol::V311).await
}

#[tokio::test]
async fn v5_will_published_on_keepalive_timeout() -> Result<()> {
    will_on_keepalive_timeout(Protocol::V5).await
}

async fn will_on_protocol_error(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut w = watcher(&broker, protocol).await?;
    let (mut c, _) = connect_ok(broker.addr, with_will(protocol, "garbage", 60)).await?;
    // Packet type 0 is reserved: a malformed packet.
    c.send_bytes(&[0x00, 0x00, 0xff, 0xff]).await?;
    expect_closed_with(&mut c, &[0x81, 0x82]).await?;
    expect_will(&mut w, "garbage").await
}

#[tokio::test]
async fn v311_will_published_after_protocol_error() -> Result<()> {
    will_on_protocol_error(Protocol::V311).await
}

#[tokio::test]
async fn v5_will_published_after_protocol_error() -> Result<()> {
    will_on_protocol_error(Protocol::V5).await
}

async fn will_on_takeover(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut w = watcher(&broker, protocol).await?;
    let (mut first, _) = connect_ok(broker.addr, with_will(protocol, "taken", 60)).await?;
    let _second = connect_clean(broker.addr, protocol, "taken").await?;
    expect_closed_with(&mut first, &[0x8E]).await?;
    expect_will(&mut w, "taken").await
}

#[tokio::test]
async fn v311_will_published_on_takeover() -> Result<()> {
    will_on_takeover(Protocol::V311).await
}

#[tokio::test]
async fn v5_will_published_on_takeover() -> Result<()> {
    will_on_takeover(Protocol::V5).await
}

async fn no_will_after_disconnect(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut w = watcher(&broker, protocol).await?;
    let (c, _) = connect_ok(broker.addr, with_will(protocol, "polite", 60)).await?;
    // [MQTT-3.1.2-10] (3.1.1) / [MQTT-3.1.2-10] (5.0): DISCONNECT deletes the will.
    disconnect(c).await?;
    expect_no_will(&broker, protocol, &mut w).await
}

#[tokio::test]
async fn v311_no_will_after_normal_disconnect() -> Result<()> {
    no_will_after_disconnect(Protocol::V311).await
}

#[tokio::test]
async fn v5_no_will_after_normal_disconnect() -> Result<()> {
    no_will_after_disconnect(Protocol::V5).await
}

#[tokio::test]
async fn v5_disconnect_with_reason_0x04_publishes_will() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut w = watcher(&broker, Protocol::V5).await?;
    let (mut c, _) = connect_ok(broker.addr, with_will(Protocol::V5, "with-will", 60)).await?;
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )))
    .await?;
    let rest = c.expect_closed().await?;
    assert!(rest.is_empty(), "{rest:?}");
    expect_will(&mut w, "with-will").await
}

fn delayed_will(id: &str, delay: u32, session_expiry: u32) -> Connect {
    let mut c = with_will(Protocol::V5, id, 60);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(session_expiry);
    c.will.as_mut().unwrap().properties.will_delay_interval = Some(delay);
    c
}

#[tokio::test]
async fn v5_will_delay_interval_delays_the_will() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut w = watcher(&broker, Protocol::V5).await?;
    let (c, _) = connect_ok(broker.addr, delayed_will("delayed", 2, 60)).await?;
    let dropped = Instant::now();
    drop(c);
    // [MQTT-3.1.3-9]: not published before the delay has passed.
    expect_will(&mut w, "delayed").await?;
    let elapsed = dropped.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900),
        "will published after {elapsed:?}, delay is 2 s"
    );
    assert!(elapsed < WAIT);
    Ok(())
}

#[tokio::test]
async fn v5_will_not_published_when_client_reconnects_within_delay() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut w = watcher(&broker, Protocol::V5).await?;
    let (c, _) = connect_ok(broker.addr, delayed_will("returns", 3, 60)).await?;
    let dropped = Instant::now();
    drop(c);
    let mut back = connect_packet(Protocol::V5, "returns", false);
    back.properties.session_expiry_interval = Some(60);
    let (_back, ack) = connect_ok(broker.addr, back).await?;
    assert!(ack.session_present);
    assert!(
        dropped.elapsed() < Duration::from_millis(2500),
        "reconnect took {:?}, too slow to test a 3 s will delay",
        dropped.elapsed()
    );
    // [MQTT-3.1.3-9]: wait past the delay (with margin); the will must not come.
    let quiet = Duration::from_millis(4000).saturating_sub(dropped.elapsed());
    w.expect_silence(quiet).await?;
    expect_no_will(&broker, Protocol::V5, &mut w).await
}

/// `message_size_limit` applies to the will payload too: a CONNECT whose will is larger is
/// refused (MQTT 5: 0x95 Packet too large; 3.1.1: 5 not authorised), as Mosquitto does, so the
/// broker never holds a will it would refuse as a message.
async fn oversized_will_is_refused(protocol: Protocol, expected: ReasonCode) -> Result<()> {
    let mut config = culex_config::Config::embedded_default();
    config.limits.message_size_limit = 100;
    let broker = TestBroker::start_with(config).await?;
    let mut connect = connect_packet(protocol, "big-will", true);
    connect.will = Some(will("will/big", &"x".repeat(101), QoS::AtMostOnce));
    let (_, ack) = connect_with(broker.addr, connect).await?;
    assert_eq!(ack.reason_code, expected, "{ack:?}");
    // At the limit it is fine.
    let mut connect = connect_packet(protocol, "ok-will", true);
    connect.will = Some(will("will/ok", &"x".repeat(100), QoS::AtMostOnce));
    connect_ok(broker.addr, connect).await?;
    Ok(())
}

#[tokio::test]
async fn v311_oversized_will_is_refused_with_5() -> Result<()> {
    // Return code 5 on the wire, decoded as its MQTT 5 equivalent.
    oversized_will_is_refused(Protocol::V311, ReasonCode::NotAuthorized).await
}

#[tokio::test]
async fn v5_oversized_will_is_refused_with_0x95() -> Result<()> {
    oversized_will_is_refused(Protocol::V5, ReasonCode::PacketTooLarge).await
}
