//! Sessions: persistent sessions keep subscriptions and messages for an offline client, clean
//! sessions discard them, unacknowledged messages are redelivered with DUP, and a second
//! connection with the same client id takes over.

use anyhow::{bail, Result};
use culex_proto::{Packet, Protocol, QoS};
use culex_test_support::TestBroker;

use crate::*;

async fn persistent_session_keeps_subscriptions_and_messages(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut c, ack) = connect_ok(broker.addr, persistent_connect(protocol, "keeper")).await?;
    assert!(!ack.session_present, "new session reported present");
    subscribe(&mut c, 1, "keep/#", QoS::ExactlyOnce).await?;
    disconnect(c).await?;

    let mut publisher = connect_clean(broker.addr, protocol, "keep-pub").await?;
    publish(
        &mut publisher,
        "keep/one",
        "q1 while away",
        QoS::AtLeastOnce,
        false,
        1,
    )
    .await?;
    publish(
        &mut publisher,
        "keep/two",
        "q2 while away",
        QoS::ExactlyOnce,
        false,
        2,
    )
    .await?;
    publish(
        &mut publisher,
        "keep/zero",
        "q0 while away",
        QoS::AtMostOnce,
        false,
        0,
    )
    .await?;
    router_barrier(&mut publisher, 3).await?;

    // [MQTT-3.2.2-2] (3.1.1) / [MQTT-3.2.2-3] (5.0): session present = 1.
    let (mut c, ack) = connect_ok(broker.addr, persistent_connect(protocol, "keeper")).await?;
    assert!(ack.session_present, "persistent session not present");
    // [MQTT-3.1.2-5] (3.1.1): QoS 1 and 2 messages stored while offline are delivered, without
    // a new SUBSCRIBE.
    let a = recv_publish_ack(&mut c).await?;
    assert_eq!(
        (a.topic.as_str(), text(&a).as_str(), a.qos),
        ("keep/one", "q1 while away", QoS::AtLeastOnce)
    );
    let b = recv_publish_ack(&mut c).await?;
    assert_eq!(
        (b.topic.as_str(), text(&b).as_str(), b.qos),
        ("keep/two", "q2 while away", QoS::ExactlyOnce)
    );
    // QoS 0 messages may or may not be kept; the subscription itself is still live:
    publish(
        &mut publisher,
        "keep/live",
        "live",
        QoS::AtLeastOnce,
        false,
        4,
    )
    .await?;
    loop {
        let p = recv_publish_ack(&mut c).await?;
        match text(&p).as_str() {
            "live" => break,
            "q0 while away" => continue,
            other => bail!("unexpected message {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn v311_persistent_session_keeps_subscriptions_and_offline_messages() -> Result<()> {
    persistent_session_keeps_subscriptions_and_messages(Protocol::V311).await
}

#[tokio::test]
async fn v5_persistent_session_keeps_subscriptions_and_offline_messages() -> Result<()> {
    persistent_session_keeps_subscriptions_and_messages(Protocol::V5).await
}

async fn clean_session_discards(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut c, _) = connect_ok(broker.addr, persistent_connect(protocol, "forgetful")).await?;
    subscribe(&mut c, 1, "gone/t", QoS::AtLeastOnce).await?;
    disconnect(c).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "gone-pub").await?;
    publish(
        &mut publisher,
        "gone/t",
        "queued",
        QoS::AtLeastOnce,
        false,
        1,
    )
    .await?;
    router_barrier(&mut publisher, 2).await?;

    // [MQTT-3.1.2-6] (3.1.1) / [MQTT-3.1.2-4] (5.0): clean start discards the session.
    let (mut c, ack) = connect_ok(broker.addr, connect_packet(protocol, "forgetful", true)).await?;
    assert!(!ack.session_present, "{ack:?}");
    subscribe(&mut c, 1, "gone/marker", QoS::AtLeastOnce).await?;
    publish(
        &mut publisher,
        "gone/t",
        "after",
        QoS::AtLeastOnce,
        false,
        3,
    )
    .await?;
    publish(
        &mut publisher,
        "gone/marker",
        "marker",
        QoS::AtLeastOnce,
        false,
        4,
    )
    .await?;
    let p = recv_publish_ack(&mut c).await?;
    assert_eq!(
        (p.topic.as_str(), text(&p).as_str()),
        ("gone/marker", "marker"),
        "old session leaked: {p:?}"
    );
    Ok(())
}

#[tokio::test]
async fn v311_clean_session_discards_previous_session() -> Result<()> {
    clean_session_discards(Protocol::V311).await
}

#[tokio::test]
async fn v5_clean_start_discards_previous_session() -> Result<()> {
    clean_session_discards(Protocol::V5).await
}

#[tokio::test]
async fn v5_session_with_zero_expiry_is_not_kept() -> Result<()> {
    let broker = TestBroker::start().await?;
    // Clean start 0 but no Session Expiry Interval: the session ends with the connection.
    let (mut c, _) = connect_ok(broker.addr, connect_packet(Protocol::V5, "short", false)).await?;
    subscribe(&mut c, 1, "short/t", QoS::AtLeastOnce).await?;
    disconnect(c).await?;
    let (_c, ack) = connect_ok(broker.addr, connect_packet(Protocol::V5, "short", false)).await?;
    assert!(!ack.session_present, "{ack:?}");
    Ok(())
}

async fn unacked_redelivered_with_dup(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut c, _) = connect_ok(broker.addr, persistent_connect(protocol, "slow")).await?;
    subscribe(&mut c, 1, "redo/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "redo-pub").await?;
    publish(
        &mut publisher,
        "redo/t",
        "again",
        QoS::AtLeastOnce,
        false,
        1,
    )
    .await?;

    let first = recv_publish(&mut c).await?;
    assert_eq!(text(&first), "again");
    assert!(!first.dup);
    // No PUBACK; the connection just dies.
    drop(c);

    let (mut c, ack) = connect_ok(broker.addr, persistent_connect(protocol, "slow")).await?;
    assert!(ack.session_present);
    // [MQTT-4.4.0-1]: resend unacknowledged PUBLISH packets with DUP=1 [MQTT-3.3.1-1] and the
    // original packet identifier.
    let again = recv_publish(&mut c).await?;
    assert_eq!(
        (again.topic.as_str(), text(&again).as_str()),
        ("redo/t", "again")
    );
    assert!(again.dup, "redelivery without DUP: {again:?}");
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(again.qos, QoS::AtLeastOnce);
    ack_publish(&mut c, &again).await?;

    // Acknowledged now: it does not come a third time.
    publish(
        &mut publisher,
        "redo/t",
        "marker",
        QoS::AtLeastOnce,
        false,
        2,
    )
    .await?;
    let next = recv_publish_ack(&mut c).await?;
    assert_eq!(text(&next), "marker", "{next:?}");
    Ok(())
}

#[tokio::test]
async fn v311_unacknowledged_qos1_redelivered_with_dup_on_reconnect() -> Result<()> {
    unacked_redelivered_with_dup(Protocol::V311).await
}

#[tokio::test]
async fn v5_unacknowledged_qos1_redelivered_with_dup_on_reconnect() -> Result<()> {
    unacked_redelivered_with_dup(Protocol::V5).await
}

async fn pubrel_resent_after_reconnect(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut c, _) = connect_ok(broker.addr, persistent_connect(protocol, "half")).await?;
    subscribe(&mut c, 1, "half/t", QoS::ExactlyOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "half-pub").await?;
    publish(&mut publisher, "half/t", "q2", QoS::ExactlyOnce, false, 1).await?;
    let p = recv_publish(&mut c).await?;
    let id = p.packet_id.unwrap();
    c.send(&Packet::PubRec(culex_proto::PubResp::new(id)))
        .await?;
    match c.recv().await? {
        Packet::PubRel(r) => assert_eq!(r.packet_id, id),
        other => bail!("expected PUBREL, got {other:?}"),
    }
    drop(c);
    // [MQTT-4.4.0-1]: after PUBREC the broker resends PUBREL, not the PUBLISH.
    let (mut c, ack) = connect_ok(broker.addr, persistent_connect(protocol, "half")).await?;
    assert!(ack.session_present);
    match c.recv().await? {
        Packet::PubRel(r) => assert_eq!(r.packet_id, id),
        other => bail!("expected PUBREL resent, got {other:?}"),
    }
    c.send(&Packet::PubComp(culex_proto::PubResp::new(id)))
        .await?;
    publish(
        &mut publisher,
        "half/t",
        "marker",
        QoS::AtLeastOnce,
        false,
        2,
    )
    .await?;
    let next = recv_publish_ack(&mut c).await?;
    assert_eq!(text(&next), "marker", "{next:?}");
    Ok(())
}

#[tokio::test]
async fn v311_pubrel_resent_after_reconnect_when_pubcomp_missing() -> Result<()> {
    pubrel_resent_after_reconnect(Protocol::V311).await
}

#[tokio::test]
async fn v5_pubrel_resent_after_reconnect_when_pubcomp_missing() -> Result<()> {
    pubrel_resent_after_reconnect(Protocol::V5).await
}

async fn takeover_closes_first(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut first = connect_clean(broker.addr, protocol, "twin").await?;
    let mut second = connect_clean(broker.addr, protocol, "twin").await?;
    // [MQTT-3.1.4-3] (3.1.1 [MQTT-3.1.4-2]); 5.0: DISCONNECT 0x8E first.
    expect_closed_with(&mut first, &[0x8E]).await?;
    // The second connection works.
    subscribe(&mut second, 1, "twin/t", QoS::AtMostOnce).await?;
    publish(&mut second, "twin/t", "alive", QoS::AtMostOnce, false, 0).await?;
    assert_eq!(text(&recv_publish(&mut second).await?), "alive");
    Ok(())
}

#[tokio::test]
async fn v311_second_connection_with_same_client_id_closes_first() -> Result<()> {
    takeover_closes_first(Protocol::V311).await
}

#[tokio::test]
async fn v5_second_connection_with_same_client_id_gets_first_disconnect_0x8e() -> Result<()> {
    takeover_closes_first(Protocol::V5).await
}

#[tokio::test]
async fn v311_takeover_of_persistent_session_keeps_subscriptions() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut first, _) =
        connect_ok(broker.addr, persistent_connect(Protocol::V311, "heir")).await?;
    subscribe(&mut first, 1, "heir/t", QoS::AtLeastOnce).await?;
    let (mut second, ack) =
        connect_ok(broker.addr, persistent_connect(Protocol::V311, "heir")).await?;
    assert!(ack.session_present);
    expect_closed_with(&mut first, &[]).await?;
    let mut publisher = connect_v311(broker.addr, "heir-pub").await?;
    publish(
        &mut publisher,
        "heir/t",
        "inherited",
        QoS::AtLeastOnce,
        false,
        1,
    )
    .await?;
    assert_eq!(text(&recv_publish_ack(&mut second).await?), "inherited");
    Ok(())
}

/// A client ends its session (clean session / Session Expiry 0) with DISCONNECT and reconnects
/// at once, asking to resume: 1,000 times. The new CONNECT must never see the old session
/// (session present 0) [MQTT-3.1.2-6], and the old connection's will is never published after
/// its normal DISCONNECT [MQTT-3.1.2-10]. Before the router ordered a client id's connection
/// events, the new CONNECT was sometimes handled before the old connection had read the
/// DISCONNECT: a takeover of a session the client had just ended.
async fn disconnect_then_reconnect_never_resumes_the_ended_session(
    protocol: Protocol,
) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut watcher = connect_clean(broker.addr, protocol, "flap-watcher").await?;
    subscribe(&mut watcher, 1, "flap/will", QoS::AtMostOnce).await?;
    let mut wrong = 0;
    for _ in 0..1000 {
        let mut first = connect_packet(protocol, "flapper", true);
        first.will = Some(will("flap/will", "stray", QoS::AtMostOnce));
        let (mut c, _) = connect_ok(broker.addr, first).await?;
        subscribe(&mut c, 1, "flap/t", QoS::AtLeastOnce).await?;
        c.send(&Packet::Disconnect(culex_proto::Disconnect::new(
            culex_proto::ReasonCode::NormalDisconnection,
        )))
        .await?;
        // At once, without waiting for the server to close the first connection.
        let (again, ack) = connect_ok(broker.addr, persistent_connect(protocol, "flapper")).await?;
        if ack.session_present {
            wrong += 1;
        }
        drop(c);
        drop(again);
    }
    assert_eq!(
        wrong, 0,
        "{wrong} of 1,000 reconnects got the ended session back"
    );
    watcher.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn v311_disconnect_then_reconnect_never_resumes_the_ended_session() -> Result<()> {
    disconnect_then_reconnect_never_resumes_the_ended_session(Protocol::V311).await
}

#[tokio::test]
async fn v5_disconnect_then_reconnect_never_resumes_the_ended_session() -> Result<()> {
    disconnect_then_reconnect_never_resumes_the_ended_session(Protocol::V5).await
}
