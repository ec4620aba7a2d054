//! Keepalive: enforced at 1.5 times the client's interval; PINGREQ keeps a connection alive.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use culex_proto::{Packet, Protocol};
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
