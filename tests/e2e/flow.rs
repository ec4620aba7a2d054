//! Outgoing flow control: the in-flight window (`max_inflight_messages`, MQTT 5 Receive
//! Maximum) and the bounded per-session queue (`max_queued_messages`).

use anyhow::Result;
use culex_config::Config;
use culex_proto::{Packet, Protocol, PubResp, QoS};
use culex_test_support::TestBroker;

use crate::*;

async fn window_of_two(protocol: Protocol) -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_inflight_messages = 2;
    let broker = TestBroker::start_with(config).await?;
    let mut sub = connect_clean(broker.addr, protocol, "win-sub").await?;
    subscribe(&mut sub, 1, "win/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "win-pub").await?;
    for i in 1..=3u16 {
        publish(
            &mut publisher,
            "win/t",
            format!("m{i}"),
            QoS::AtLeastOnce,
            false,
            i,
        )
        .await?;
    }
    router_barrier(&mut publisher, 100).await?;

    let a = recv_publish(&mut sub).await?;
    let b = recv_publish(&mut sub).await?;
    assert_eq!((text(&a).as_str(), text(&b).as_str()), ("m1", "m2"));
    // The router has seen all three; the third must wait for an acknowledgement.
    sub.expect_silence(QUIET).await?;
    sub.send(&Packet::PubAck(PubResp::new(a.packet_id.unwrap())))
        .await?;
    let c = recv_publish(&mut sub).await?;
    assert_eq!(text(&c), "m3");
    assert!(!c.dup);
    Ok(())
}

#[tokio::test]
async fn v311_inflight_window_holds_third_message_until_an_ack() -> Result<()> {
    window_of_two(Protocol::V311).await
}

#[tokio::test]
async fn v5_inflight_window_holds_third_message_until_an_ack() -> Result<()> {
    window_of_two(Protocol::V5).await
}

#[tokio::test]
async fn v5_client_receive_maximum_1_is_honoured_below_server_window() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_inflight_messages = 10;
    let broker = TestBroker::start_with(config).await?;
    let mut connect = connect_packet(Protocol::V5, "rm-sub", true);
    connect.properties.receive_maximum = Some(1);
    let (mut sub, _) = connect_ok(broker.addr, connect).await?;
    subscribe(&mut sub, 1, "rm/t", QoS::ExactlyOnce).await?;
    let mut publisher = connect_v5(broker.addr, "rm-pub").await?;
    publish(&mut publisher, "rm/t", "m1", QoS::AtLeastOnce, false, 1).await?;
    publish(&mut publisher, "rm/t", "m2", QoS::ExactlyOnce, false, 2).await?;
    publish(&mut publisher, "rm/t", "m3", QoS::AtLeastOnce, false, 3).await?;
    router_barrier(&mut publisher, 100).await?;

    // [MQTT-3.3.4-9]: never more unacknowledged QoS 1/2 PUBLISHes than Receive Maximum.
    let a = recv_publish(&mut sub).await?;
    assert_eq!(text(&a), "m1");
    sub.expect_silence(QUIET).await?;
    sub.send(&Packet::PubAck(PubResp::new(a.packet_id.unwrap())))
        .await?;
    let b = recv_publish(&mut sub).await?;
    assert_eq!((text(&b).as_str(), b.qos), ("m2", QoS::ExactlyOnce));
    let id = b.packet_id.unwrap();
    sub.send(&Packet::PubRec(PubResp::new(id))).await?;
    match sub.recv().await? {
        Packet::PubRel(r) => assert_eq!(r.packet_id, id),
        other => anyhow::bail!("expected PUBREL, got {other:?}"),
    }
    // A QoS 2 message counts until PUBCOMP.
    sub.expect_silence(QUIET).await?;
    sub.send(&Packet::PubComp(PubResp::new(id))).await?;
    let c = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&c), "m3");
    Ok(())
}

async fn queue_is_bounded(protocol: Protocol) -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_inflight_messages = 2;
    config.limits.max_queued_messages = 3;
    config.limits.queue_full_policy = culex_config::QueueFullPolicy::Drop;
    let broker = TestBroker::start_with(config).await?;
    let mut sub = connect_clean(broker.addr, protocol, "q-sub").await?;
    subscribe(&mut sub, 1, "q/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "q-pub").await?;
    for i in 1..=10u16 {
        publish(
            &mut publisher,
            "q/t",
            format!("m{i}"),
            QoS::AtLeastOnce,
            false,
            i,
        )
        .await?;
    }
    router_barrier(&mut publisher, 100).await?;

    // Window (2) + queue (3) are kept; the rest were dropped. Ack everything as it arrives.
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(text(&recv_publish_ack(&mut sub).await?));
    }
    publish(&mut publisher, "q/t", "marker", QoS::AtLeastOnce, false, 11).await?;
    let next = recv_publish_ack(&mut sub).await?;
    assert_eq!(
        text(&next),
        "marker",
        "more than window + queue limit delivered: {got:?} then {next:?}"
    );
    assert_eq!(&got[..2], ["m1", "m2"]);
    let mut numbers: Vec<u32> = got.iter().map(|s| s[1..].parse().unwrap()).collect();
    let in_order = numbers.windows(2).all(|w| w[0] < w[1]);
    assert!(in_order, "out of order: {got:?}");
    numbers.dedup();
    assert_eq!(numbers.len(), 5, "duplicates: {got:?}");
    Ok(())
}

#[tokio::test]
async fn v311_drop_policy_queue_beyond_max_queued_messages_drops_messages() -> Result<()> {
    queue_is_bounded(Protocol::V311).await
}

#[tokio::test]
async fn v5_drop_policy_queue_beyond_max_queued_messages_drops_messages() -> Result<()> {
    queue_is_bounded(Protocol::V5).await
}

/// `max_inflight_bytes` (Mosquitto's rule): a message starts while fewer bytes than the limit
/// are in flight, so with 100 bytes two 64-byte messages go and the third waits for an ack.
async fn byte_window(protocol: Protocol) -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_inflight_messages = 20;
    config.limits.max_inflight_bytes = 100;
    let broker = TestBroker::start_with(config).await?;
    let mut sub = connect_clean(broker.addr, protocol, "bytes-sub").await?;
    subscribe(&mut sub, 1, "wb/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "bytes-pub").await?;
    // Topic (4 bytes) + payload (60 bytes) = 64 bytes each.
    let payload = |i: u16| format!("{i:0>60}");
    for i in 1..=4u16 {
        publish(
            &mut publisher,
            "wb/t",
            payload(i),
            QoS::AtLeastOnce,
            false,
            i,
        )
        .await?;
    }
    router_barrier(&mut publisher, 100).await?;

    let a = recv_publish(&mut sub).await?;
    let b = recv_publish(&mut sub).await?;
    assert_eq!((text(&a), text(&b)), (payload(1), payload(2)));
    // 128 bytes in flight, over the limit: the third waits although 18 more fit by count.
    sub.expect_silence(QUIET).await?;
    sub.send(&Packet::PubAck(PubResp::new(a.packet_id.unwrap())))
        .await?;
    let c = recv_publish(&mut sub).await?;
    assert_eq!(text(&c), payload(3));
    sub.expect_silence(QUIET).await?;
    sub.send(&Packet::PubAck(PubResp::new(b.packet_id.unwrap())))
        .await?;
    let d = recv_publish(&mut sub).await?;
    assert_eq!(text(&d), payload(4));
    Ok(())
}

#[tokio::test]
async fn v311_max_inflight_bytes_holds_messages_until_acked() -> Result<()> {
    byte_window(Protocol::V311).await
}

#[tokio::test]
async fn v5_max_inflight_bytes_holds_messages_until_acked() -> Result<()> {
    byte_window(Protocol::V5).await
}

/// `queue_full_policy block` (the default): a publisher that overfills an online subscriber's
/// queue gets its PUBACKs held until the subscriber catches up, and nothing is dropped. What
/// the publisher sent before the broker noticed (here the first burst, read in one go) is
/// acknowledged and queued beyond the limit; from the second burst on, PUBACKs wait. The
/// subscriber gets all twenty messages in order and the publisher all twenty PUBACKs in order.
async fn full_queue_blocks(protocol: Protocol) -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_inflight_messages = 2;
    config.limits.max_queued_messages = 3;
    let broker = TestBroker::start_with(config).await?;
    let mut sub = connect_clean(broker.addr, protocol, "b-sub").await?;
    subscribe(&mut sub, 1, "b/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "b-pub").await?;
    let mut acked = Vec::new();
    for burst in [1..=10u16, 11..=20] {
        for i in burst {
            let p = publish_packet("b/t", format!("m{i}"), QoS::AtLeastOnce, false, i);
            publisher.send(&Packet::Publish(p)).await?;
        }
        // The subscriber reads nothing yet.
        while let Some(p) = publisher.recv_within(QUIET).await? {
            match p {
                Packet::PubAck(a) => acked.push(a.packet_id),
                other => anyhow::bail!("expected PUBACK, got {other:?}"),
            }
        }
    }
    assert!(
        acked.len() < 20,
        "every PUBACK arrived while the queue was full: {acked:?}"
    );
    // The subscriber catches up: everything arrives, in order, nothing dropped.
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(text(&recv_publish_ack(&mut sub).await?));
    }
    let want: Vec<String> = (1..=20).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    while acked.len() < 20 {
        match publisher.recv().await? {
            Packet::PubAck(a) => acked.push(a.packet_id),
            other => anyhow::bail!("expected PUBACK, got {other:?}"),
        }
    }
    assert_eq!(
        acked,
        (1..=20).collect::<Vec<u16>>(),
        "PUBACKs in PUBLISH order"
    );
    Ok(())
}

#[tokio::test]
async fn v311_full_queue_holds_pubacks_and_drops_nothing() -> Result<()> {
    full_queue_blocks(Protocol::V311).await
}

#[tokio::test]
async fn v5_full_queue_holds_pubacks_and_drops_nothing() -> Result<()> {
    full_queue_blocks(Protocol::V5).await
}
