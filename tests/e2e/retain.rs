//! Retained messages: set, replace, clear, delivery on subscribe (exact and wildcard filters)
//! with the RETAIN flag, and normal deliveries without it.

use anyhow::Result;
use culex_proto::{Packet, Protocol, QoS};
use culex_test_support::TestBroker;

use crate::*;

/// Subscribes `filter` on a fresh client and returns it with the retained messages received
/// (before the marker on `marker_topic`, which must match `filter` and is published by `pub_`).
async fn retained_for(
    broker: &TestBroker,
    protocol: Protocol,
    publisher: &mut RawClient,
    filter: &str,
    marker_topic: &str,
    id: &str,
) -> Result<Vec<culex_proto::Publish>> {
    let mut sub = connect_clean(broker.addr, protocol, id).await?;
    let (_, mut got) = subscribe_collect(&mut sub, 1, &[(filter, QoS::AtLeastOnce)]).await?;
    publish(
        publisher,
        marker_topic,
        "marker",
        QoS::AtLeastOnce,
        false,
        900,
    )
    .await?;
    loop {
        let p = recv_publish_ack(&mut sub).await?;
        if p.topic == marker_topic && text(&p) == "marker" {
            // [MQTT-3.3.1-9] (3.1.1) / [MQTT-3.3.1-12] (5.0): a normal delivery is not retained.
            assert!(!p.retain, "marker delivered with RETAIN set: {p:?}");
            break;
        }
        got.push(p);
    }
    Ok(got)
}

use culex_test_support::RawClient;

async fn set_replace_clear(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut publisher = connect_clean(broker.addr, protocol, "ret-pub").await?;

    // Set. [MQTT-3.3.1-5]
    publish(&mut publisher, "ret/a", "one", QoS::AtLeastOnce, true, 1).await?;
    let got = retained_for(&broker, protocol, &mut publisher, "ret/a", "ret/a", "s1").await?;
    assert_eq!(got.len(), 1, "{got:?}");
    // [MQTT-3.3.1-8] (3.1.1) / [MQTT-3.3.1-9] (5.0): RETAIN set on delivery at subscribe time.
    assert!(got[0].retain);
    assert_eq!(
        (got[0].topic.as_str(), text(&got[0]).as_str()),
        ("ret/a", "one")
    );
    assert_eq!(got[0].qos, QoS::AtLeastOnce);

    // Replace.
    publish(&mut publisher, "ret/a", "two", QoS::AtMostOnce, true, 0).await?;
    let got = retained_for(&broker, protocol, &mut publisher, "ret/a", "ret/a", "s2").await?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].retain);
    assert_eq!(text(&got[0]), "two");
    assert_eq!(got[0].qos, QoS::AtMostOnce);

    // Clear with an empty payload. [MQTT-3.3.1-10] / [MQTT-3.3.1-11] (3.1.1)
    publish(&mut publisher, "ret/a", "", QoS::AtLeastOnce, true, 2).await?;
    let got = retained_for(&broker, protocol, &mut publisher, "ret/a", "ret/a", "s3").await?;
    assert!(got.is_empty(), "retained message not cleared: {got:?}");
    Ok(())
}

#[tokio::test]
async fn v311_retained_message_set_replaced_and_cleared() -> Result<()> {
    set_replace_clear(Protocol::V311).await
}

#[tokio::test]
async fn v5_retained_message_set_replaced_and_cleared() -> Result<()> {
    set_replace_clear(Protocol::V5).await
}

async fn wildcard_delivery(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut publisher = connect_clean(broker.addr, protocol, "retw-pub").await?;
    publish(&mut publisher, "rw/x/1", "x1", QoS::AtLeastOnce, true, 1).await?;
    publish(&mut publisher, "rw/y/2", "y2", QoS::AtLeastOnce, true, 2).await?;
    publish(
        &mut publisher,
        "rw/x/1/deep",
        "deep",
        QoS::AtLeastOnce,
        true,
        3,
    )
    .await?;
    publish(
        &mut publisher,
        "other/x/1",
        "other",
        QoS::AtLeastOnce,
        true,
        4,
    )
    .await?;

    let sorted = |mut v: Vec<culex_proto::Publish>| {
        assert!(v.iter().all(|p| p.retain), "RETAIN flag missing: {v:?}");
        v.sort_by(|a, b| a.topic.cmp(&b.topic));
        v.iter()
            .map(|p| format!("{}={}", p.topic, text(p)))
            .collect::<Vec<_>>()
    };

    let got = retained_for(&broker, protocol, &mut publisher, "rw/+/1", "rw/m/1", "s1").await?;
    assert_eq!(sorted(got), ["rw/x/1=x1"]);

    let got = retained_for(&broker, protocol, &mut publisher, "rw/#", "rw/m", "s2").await?;
    assert_eq!(sorted(got), ["rw/x/1=x1", "rw/x/1/deep=deep", "rw/y/2=y2"]);

    let got = retained_for(&broker, protocol, &mut publisher, "+/x/#", "m/x", "s3").await?;
    assert_eq!(
        sorted(got),
        ["other/x/1=other", "rw/x/1=x1", "rw/x/1/deep=deep"].map(String::from)
    );

    // "#" matches the parent level too (section 4.7.1.2; 3.1.1 [MQTT-4.7.1-2]).
    let got = retained_for(
        &broker,
        protocol,
        &mut publisher,
        "rw/y/2/#",
        "rw/y/2/m",
        "s4",
    )
    .await?;
    assert_eq!(sorted(got), ["rw/y/2=y2"]);
    Ok(())
}

#[tokio::test]
async fn v311_retained_messages_delivered_for_exact_and_wildcard_filters() -> Result<()> {
    wildcard_delivery(Protocol::V311).await
}

#[tokio::test]
async fn v5_retained_messages_delivered_for_exact_and_wildcard_filters() -> Result<()> {
    wildcard_delivery(Protocol::V5).await
}

async fn live_delivery_not_retained(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_clean(broker.addr, protocol, "live-sub").await?;
    subscribe(&mut sub, 1, "live/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "live-pub").await?;
    publish(
        &mut publisher,
        "live/t",
        "retained",
        QoS::AtLeastOnce,
        true,
        1,
    )
    .await?;
    // [MQTT-3.3.1-9] (3.1.1); 5.0 without Retain As Published [MQTT-3.3.1-12].
    let p = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&p), "retained");
    assert!(!p.retain, "existing subscriber got RETAIN=1: {p:?}");
    // It was stored nevertheless.
    let got = retained_for(&broker, protocol, &mut publisher, "live/t", "live/t", "s2").await?;
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    Ok(())
}

#[tokio::test]
async fn v311_delivery_to_existing_subscriber_has_retain_flag_clear() -> Result<()> {
    live_delivery_not_retained(Protocol::V311).await
}

#[tokio::test]
async fn v5_delivery_to_existing_subscriber_has_retain_flag_clear() -> Result<()> {
    live_delivery_not_retained(Protocol::V5).await
}

/// Receives `count` PUBLISH packets (acknowledging QoS 1 ones) and returns their topics,
/// checking each carries the RETAIN flag.
async fn receive_retained(c: &mut RawClient, count: usize) -> Result<Vec<String>> {
    let mut topics = Vec::with_capacity(count);
    while topics.len() < count {
        match c.recv_within(std::time::Duration::from_secs(60)).await? {
            Some(Packet::Publish(p)) => {
                anyhow::ensure!(p.retain, "{} arrived without RETAIN", p.topic);
                if let Some(id) = p.packet_id {
                    c.send(&Packet::PubAck(culex_proto::PubResp::new(id)))
                        .await?;
                }
                topics.push(p.topic);
            }
            other => anyhow::bail!("after {} retained: {other:?}", topics.len()),
        }
    }
    Ok(topics)
}

/// Every retained message reaches a new subscriber, however many match (issue 19: of 50,000,
/// a QoS 0 `#` subscriber got 1,000 and a QoS 1 one 1,000; the rest were dropped as the
/// outbox or the session queue filled). Delivery is paced by the subscriber, at QoS 0 and 1.
#[tokio::test]
async fn fifty_thousand_retained_messages_all_arrive_at_qos0_and_qos1() -> Result<()> {
    const N: usize = 50_000;
    let broker = TestBroker::start().await?;
    let mut sync = connect_clean(broker.addr, Protocol::V311, "sync").await?;
    subscribe(&mut sync, 1, "loaded", QoS::AtMostOnce).await?;
    let mut loader = connect_clean(broker.addr, Protocol::V311, "loader").await?;
    for i in 0..N {
        let p = publish_packet(&format!("many/{i}"), "x", QoS::AtMostOnce, true, 0);
        loader.send(&Packet::Publish(p)).await?;
    }
    // The router handles one connection's packets in order: once "loaded" arrives, every
    // retained message before it is stored.
    let done = publish_packet("loaded", "", QoS::AtMostOnce, false, 0);
    loader.send(&Packet::Publish(done)).await?;
    match sync.recv().await? {
        Packet::Publish(p) if p.topic == "loaded" => {}
        other => anyhow::bail!("expected the marker, got {other:?}"),
    }
    for (qos, id) in [(QoS::AtMostOnce, "all-q0"), (QoS::AtLeastOnce, "all-q1")] {
        let mut sub = connect_clean(broker.addr, Protocol::V311, id).await?;
        subscribe(&mut sub, 1, "many/#", qos).await?;
        let topics = receive_retained(&mut sub, N).await?;
        let distinct: std::collections::HashSet<&String> = topics.iter().collect();
        assert_eq!(distinct.len(), N, "{id}: duplicates among {N} retained");
        // Nothing more: no duplicate beyond the count either.
        sub.expect_silence(std::time::Duration::from_millis(300))
            .await?;
    }
    Ok(())
}

/// A live QoS 0 message published while retained ones are still waiting for the subscriber's
/// outbox arrives after them, so a subscriber never sees an old retained value overtake a
/// newer one on the same topic. (10 MB of retained messages: more than the socket buffers
/// hold, so most wait while the subscriber does not read.)
#[tokio::test]
async fn a_live_message_does_not_overtake_retained_ones_still_being_sent() -> Result<()> {
    const N: usize = 5_000;
    let broker = TestBroker::start().await?;
    let mut sync = connect_clean(broker.addr, Protocol::V311, "order-sync").await?;
    subscribe(&mut sync, 1, "loaded", QoS::AtMostOnce).await?;
    let mut loader = connect_clean(broker.addr, Protocol::V311, "order-loader").await?;
    let old = vec![b'o'; 2048];
    for i in 0..N {
        let p = publish_packet(&format!("order/{i}"), old.clone(), QoS::AtMostOnce, true, 0);
        loader.send(&Packet::Publish(p)).await?;
    }
    let done = publish_packet("loaded", "", QoS::AtMostOnce, false, 0);
    loader.send(&Packet::Publish(done)).await?;
    match sync.recv().await? {
        Packet::Publish(p) if p.topic == "loaded" => {}
        other => anyhow::bail!("expected the marker, got {other:?}"),
    }
    let mut sub = connect_clean(broker.addr, Protocol::V311, "order-sub").await?;
    let sub_packet = Packet::Subscribe(culex_proto::Subscribe {
        packet_id: 1,
        filters: vec![culex_proto::SubscribeFilter {
            filter: "order/#".into(),
            options: culex_proto::SubscriptionOptions::default(),
        }],
        properties: Default::default(),
    });
    sub.send(&sub_packet).await?;
    // The SUBACK comes before the retained messages: once it is read, the router has queued
    // them all, and the live message comes after.
    match sub.recv().await? {
        Packet::SubAck(_) => {}
        other => anyhow::bail!("expected SUBACK, got {other:?}"),
    }
    let live = publish_packet("order/0", "new", QoS::AtMostOnce, false, 0);
    loader.send(&Packet::Publish(live)).await?;
    let mut n = 0;
    loop {
        match sub.recv_within(std::time::Duration::from_secs(60)).await? {
            Some(Packet::Publish(p)) => {
                n += 1;
                if p.topic == "order/0" && text(&p) == "new" {
                    break;
                }
            }
            other => anyhow::bail!("after {n}: {other:?}"),
        }
    }
    assert_eq!(n, N + 1, "the live message overtook retained ones");
    Ok(())
}
