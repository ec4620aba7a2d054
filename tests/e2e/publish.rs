//! PUBLISH at QoS 0, 1 and 2 in both directions: with rumqttc (an independent client) and with
//! the raw client for exact acknowledgement flows.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Result};
use culex_proto::{
    Packet, Properties, Protocol, PubResp, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use culex_test_support::{RawClient, TestBroker};

use crate::rumq::{drive_v311, drive_v5, wait_for};
use crate::*;

// ---------------------------------------------------------------- rumqttc, MQTT 3.1.1

fn v311_options(id: &str, port: u16) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

type V311Events = tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::Event, String>>;

async fn v311_client(id: &str, port: u16) -> Result<(rumqttc::AsyncClient, V311Events)> {
    let (client, el) = rumqttc::AsyncClient::new(v311_options(id, port), 100);
    let mut rx = drive_v311(el);
    wait_for(&mut rx, "CONNACK", |e| match e {
        rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(a)) => Some(a.code),
        _ => None,
    })
    .await
    .map(|code| assert_eq!(code, rumqttc::ConnectReturnCode::Success))?;
    Ok((client, rx))
}

async fn v311_subscribe(
    client: &rumqttc::AsyncClient,
    rx: &mut V311Events,
    filter: &str,
    qos: rumqttc::QoS,
) -> Result<()> {
    client.subscribe(filter, qos).await?;
    wait_for(rx, "SUBACK", |e| match e {
        rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_)) => Some(()),
        _ => None,
    })
    .await
}

async fn v311_next_publish(rx: &mut V311Events) -> Result<rumqttc::Publish> {
    wait_for(rx, "PUBLISH", |e| match e {
        rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn v311_rumqttc_qos_0_1_2_round_trip_keeps_topic_and_payload() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (sub, mut sub_rx) = v311_client("rq-sub", broker.port()).await?;
    v311_subscribe(&sub, &mut sub_rx, "rq/#", rumqttc::QoS::ExactlyOnce).await?;
    let (publisher, _pub_rx) = v311_client("rq-pub", broker.port()).await?;
    let sent = [
        (
            "rq/zero",
            rumqttc::QoS::AtMostOnce,
            b"payload \x00 zero".to_vec(),
        ),
        ("rq/one", rumqttc::QoS::AtLeastOnce, vec![1u8; 3000]),
        (
            "rq/two/deep",
            rumqttc::QoS::ExactlyOnce,
            "zwei ✓".as_bytes().to_vec(),
        ),
    ];
    for (topic, qos, payload) in &sent {
        publisher
            .publish(*topic, *qos, false, payload.clone())
            .await?;
    }
    let mut got = HashMap::new();
    for _ in 0..sent.len() {
        let p = v311_next_publish(&mut sub_rx).await?;
        got.insert(p.topic.clone(), p);
    }
    for (topic, qos, payload) in &sent {
        let p = got
            .get(*topic)
            .unwrap_or_else(|| panic!("{topic} not delivered"));
        assert_eq!(p.payload.as_ref(), payload.as_slice(), "{topic}");
        assert_eq!(p.qos, *qos, "{topic}");
        assert!(!p.retain);
    }
    Ok(())
}

#[tokio::test]
async fn v311_rumqttc_qos1_messages_from_one_publisher_keep_their_order() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (sub, mut sub_rx) = v311_client("ord-sub", broker.port()).await?;
    v311_subscribe(&sub, &mut sub_rx, "ord/t", rumqttc::QoS::AtLeastOnce).await?;
    let (publisher, _pub_rx) = v311_client("ord-pub", broker.port()).await?;
    for i in 0..50 {
        publisher
            .publish("ord/t", rumqttc::QoS::AtLeastOnce, false, i.to_string())
            .await?;
    }
    // [MQTT-4.6.0-6]: ordered topic delivery.
    for i in 0..50 {
        let p = v311_next_publish(&mut sub_rx).await?;
        assert_eq!(p.payload.as_ref(), i.to_string().as_bytes());
    }
    Ok(())
}

// ---------------------------------------------------------------- rumqttc, MQTT 5

type V5Events = tokio::sync::mpsc::UnboundedReceiver<Result<rumqttc::v5::Event, String>>;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use rumqttc::v5::mqttbytes::QoS as V5QoS;

async fn v5_client(id: &str, port: u16) -> Result<(rumqttc::v5::AsyncClient, V5Events)> {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, el) = rumqttc::v5::AsyncClient::new(o, 100);
    let mut rx = drive_v5(el);
    let code = wait_for(&mut rx, "CONNACK", |e| match e {
        rumqttc::v5::Event::Incoming(V5Packet::ConnAck(a)) => Some(a.code),
        _ => None,
    })
    .await?;
    assert_eq!(code, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success);
    Ok((client, rx))
}

async fn v5_subscribe(
    client: &rumqttc::v5::AsyncClient,
    rx: &mut V5Events,
    filter: &str,
    qos: V5QoS,
) -> Result<()> {
    client.subscribe(filter, qos).await?;
    wait_for(rx, "SUBACK", |e| match e {
        rumqttc::v5::Event::Incoming(V5Packet::SubAck(_)) => Some(()),
        _ => None,
    })
    .await
}

async fn v5_next_publish(rx: &mut V5Events) -> Result<rumqttc::v5::mqttbytes::v5::Publish> {
    wait_for(rx, "PUBLISH", |e| match e {
        rumqttc::v5::Event::Incoming(V5Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn v5_rumqttc_qos_0_1_2_round_trip_keeps_topic_and_payload() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (sub, mut sub_rx) = v5_client("rq5-sub", broker.port()).await?;
    v5_subscribe(&sub, &mut sub_rx, "rq/#", V5QoS::ExactlyOnce).await?;
    let (publisher, _pub_rx) = v5_client("rq5-pub", broker.port()).await?;
    let sent = [
        ("rq/zero", V5QoS::AtMostOnce, b"payload \x00 zero".to_vec()),
        ("rq/one", V5QoS::AtLeastOnce, vec![1u8; 3000]),
        (
            "rq/two/deep",
            V5QoS::ExactlyOnce,
            "zwei ✓".as_bytes().to_vec(),
        ),
    ];
    for (topic, qos, payload) in &sent {
        publisher
            .publish(*topic, *qos, false, payload.clone())
            .await?;
    }
    let mut got = HashMap::new();
    for _ in 0..sent.len() {
        let p = v5_next_publish(&mut sub_rx).await?;
        got.insert(String::from_utf8(p.topic.to_vec())?, p);
    }
    for (topic, qos, payload) in &sent {
        let p = got
            .get(*topic)
            .unwrap_or_else(|| panic!("{topic} not delivered"));
        assert_eq!(p.payload.as_ref(), payload.as_slice(), "{topic}");
        assert_eq!(p.qos, *qos, "{topic}");
        assert!(!p.retain);
    }
    Ok(())
}

#[tokio::test]
async fn v5_rumqttc_qos1_messages_from_one_publisher_keep_their_order() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (sub, mut sub_rx) = v5_client("ord5-sub", broker.port()).await?;
    v5_subscribe(&sub, &mut sub_rx, "ord/t", V5QoS::AtLeastOnce).await?;
    let (publisher, _pub_rx) = v5_client("ord5-pub", broker.port()).await?;
    for i in 0..50 {
        publisher
            .publish("ord/t", V5QoS::AtLeastOnce, false, i.to_string())
            .await?;
    }
    for i in 0..50 {
        let p = v5_next_publish(&mut sub_rx).await?;
        assert_eq!(p.payload.as_ref(), i.to_string().as_bytes());
    }
    Ok(())
}

// ---------------------------------------------------------------- raw flows

async fn qos1_puback_carries_packet_id(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = connect_clean(broker.addr, protocol, "q1").await?;
    c.send(&Packet::Publish(publish_packet(
        "q1/t",
        "m",
        QoS::AtLeastOnce,
        false,
        4242,
    )))
    .await?;
    // [MQTT-4.3.2-4] / [MQTT-2.2.1-5] (3.1.1 [MQTT-4.3.2-2] / [MQTT-2.3.1-6]): PUBACK with the PUBLISH's packet id.
    match c.recv().await? {
        Packet::PubAck(a) => {
            assert_eq!(a.packet_id, 4242);
            // Nobody subscribed: 5.0 may say 0x10 (no matching subscribers); both are success.
            assert!(matches!(a.reason_code.as_u8(), 0x00 | 0x10), "{a:?}");
        }
        other => bail!("expected PUBACK, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn v311_qos1_publish_is_acked_with_same_packet_id() -> Result<()> {
    qos1_puback_carries_packet_id(Protocol::V311).await
}

#[tokio::test]
async fn v5_qos1_publish_is_acked_with_same_packet_id() -> Result<()> {
    qos1_puback_carries_packet_id(Protocol::V5).await
}

async fn qos2_inbound_flow(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_clean(broker.addr, protocol, "q2-sub").await?;
    subscribe(&mut sub, 1, "q2/t", QoS::ExactlyOnce).await?;
    let mut c = connect_clean(broker.addr, protocol, "q2").await?;
    c.send(&Packet::Publish(publish_packet(
        "q2/t",
        "exactly",
        QoS::ExactlyOnce,
        false,
        777,
    )))
    .await?;
    // [MQTT-4.3.3-8]: PUBREC with the same id.
    match c.recv().await? {
        Packet::PubRec(r) => {
            assert_eq!(r.packet_id, 777);
            assert!(r.reason_code.as_u8() < 0x80, "{r:?}");
        }
        other => bail!("expected PUBREC, got {other:?}"),
    }
    c.send(&Packet::PubRel(PubResp::new(777))).await?;
    // [MQTT-4.3.3-11]: PUBCOMP with the same id.
    match c.recv().await? {
        Packet::PubComp(r) => {
            assert_eq!(r.packet_id, 777);
            assert_eq!(r.reason_code.as_u8(), 0, "{r:?}");
        }
        other => bail!("expected PUBCOMP, got {other:?}"),
    }
    let p = recv_publish_ack(&mut sub).await?;
    assert_eq!((p.topic.as_str(), text(&p).as_str()), ("q2/t", "exactly"));
    assert_eq!(p.qos, QoS::ExactlyOnce);
    Ok(())
}

#[tokio::test]
async fn v311_qos2_publish_gets_pubrec_then_pubcomp_after_pubrel() -> Result<()> {
    qos2_inbound_flow(Protocol::V311).await
}

#[tokio::test]
async fn v5_qos2_publish_gets_pubrec_then_pubcomp_after_pubrel() -> Result<()> {
    qos2_inbound_flow(Protocol::V5).await
}

async fn qos2_retransmission_delivered_once(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_clean(broker.addr, protocol, "dup-sub").await?;
    subscribe(&mut sub, 1, "dup/#", QoS::AtLeastOnce).await?;
    let mut c = connect_clean(broker.addr, protocol, "dup-pub").await?;
    let mut p = publish_packet("dup/t", "once", QoS::ExactlyOnce, false, 9);
    c.send(&Packet::Publish(p.clone())).await?;
    match c.recv().await? {
        Packet::PubRec(r) if r.packet_id == 9 => {}
        other => bail!("expected PUBREC 9, got {other:?}"),
    }
    // Retransmission before PUBREL: DUP set, same packet id.
    p.dup = true;
    c.send(&Packet::Publish(p)).await?;
    match c.recv().await? {
        Packet::PubRec(r) if r.packet_id == 9 => {}
        other => bail!("expected second PUBREC 9, got {other:?}"),
    }
    c.send(&Packet::PubRel(PubResp::new(9))).await?;
    match c.recv().await? {
        Packet::PubComp(r) if r.packet_id == 9 => {}
        other => bail!("expected PUBCOMP 9, got {other:?}"),
    }
    publish(&mut c, "dup/marker", "marker", QoS::AtLeastOnce, false, 10).await?;
    // [MQTT-4.3.3-9] / [MQTT-4.3.3-10] (3.1.1 [MQTT-4.3.3-2]): delivered once.
    let first = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&first), "once");
    let next = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&next), "marker", "duplicate delivery: {next:?}");
    Ok(())
}

#[tokio::test]
async fn v311_retransmitted_qos2_publish_is_delivered_once() -> Result<()> {
    qos2_retransmission_delivered_once(Protocol::V311).await
}

#[tokio::test]
async fn v5_retransmitted_qos2_publish_is_delivered_once() -> Result<()> {
    qos2_retransmission_delivered_once(Protocol::V5).await
}

async fn qos2_outbound_flow(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_clean(broker.addr, protocol, "out2-sub").await?;
    subscribe(&mut sub, 1, "out2/t", QoS::ExactlyOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "out2-pub").await?;
    publish(
        &mut publisher,
        "out2/t",
        "first",
        QoS::ExactlyOnce,
        false,
        1,
    )
    .await?;

    let p = recv_publish(&mut sub).await?;
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert_eq!(text(&p), "first");
    let id = p.packet_id.expect("QoS 2 PUBLISH without packet id");
    assert_ne!(id, 0);
    sub.send(&Packet::PubRec(PubResp::new(id))).await?;
    // [MQTT-4.3.3-4]: the broker answers PUBREC with PUBREL (same id).
    match sub.recv().await? {
        Packet::PubRel(r) => assert_eq!(r.packet_id, id),
        other => bail!("expected PUBREL, got {other:?}"),
    }
    sub.send(&Packet::PubComp(PubResp::new(id))).await?;

    // The flow is complete: the next message arrives normally.
    publish(
        &mut publisher,
        "out2/t",
        "second",
        QoS::ExactlyOnce,
        false,
        2,
    )
    .await?;
    let p2 = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&p2), "second");
    assert!(!p2.dup);
    Ok(())
}

#[tokio::test]
async fn v311_broker_delivers_qos2_with_pubrec_pubrel_pubcomp() -> Result<()> {
    qos2_outbound_flow(Protocol::V311).await
}

#[tokio::test]
async fn v5_broker_delivers_qos2_with_pubrec_pubrel_pubcomp() -> Result<()> {
    qos2_outbound_flow(Protocol::V5).await
}

async fn delivered_qos_is_minimum(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_clean(broker.addr, protocol, "min-sub").await?;
    subscribe(&mut sub, 1, "min/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "min-pub").await?;
    publish(&mut publisher, "min/t", "q2", QoS::ExactlyOnce, false, 1).await?;
    publish(&mut publisher, "min/t", "q0", QoS::AtMostOnce, false, 0).await?;
    // [MQTT-3.8.4-6] (3.1.1) / 4.3: delivered at min(published, granted).
    let a = recv_publish_ack(&mut sub).await?;
    assert_eq!((text(&a).as_str(), a.qos), ("q2", QoS::AtLeastOnce));
    let b = recv_publish_ack(&mut sub).await?;
    assert_eq!((text(&b).as_str(), b.qos), ("q0", QoS::AtMostOnce));
    Ok(())
}

#[tokio::test]
async fn v311_delivery_qos_is_minimum_of_publish_and_subscription() -> Result<()> {
    delivered_qos_is_minimum(Protocol::V311).await
}

#[tokio::test]
async fn v5_delivery_qos_is_minimum_of_publish_and_subscription() -> Result<()> {
    delivered_qos_is_minimum(Protocol::V5).await
}

/// Client B sends SUBSCRIBE and, without waiting for its SUBACK, client A publishes: B gets the
/// message (Mosquitto practically always delivers it; Paho's `test_request_response` relies on
/// it). 1,000 tries, each on a fresh topic.
async fn subscribe_then_publish_from_another_client_is_delivered(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut a = connect_clean(broker.addr, protocol, "race-pub").await?;
    let mut misses = 0;
    for i in 0..1000u16 {
        // CONNECT and SUBSCRIBE in one go, as clients that pipeline do.
        let mut b = RawClient::connect(broker.addr, protocol).await?;
        b.send(&Packet::Connect(Box::new(connect_packet(
            protocol,
            &format!("race-sub-{i}"),
            true,
        ))))
        .await?;
        let topic = format!("race/{i}");
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: topic.clone(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            }],
            properties: Properties::default(),
        };
        b.send(&Packet::Subscribe(sub)).await?;
        a.send(&Packet::Publish(publish_packet(
            &topic,
            "r",
            QoS::AtMostOnce,
            false,
            1,
        )))
        .await?;
        let mut got = false;
        loop {
            match b.recv_within(std::time::Duration::from_millis(300)).await? {
                Some(Packet::ConnAck(_) | Packet::SubAck(_)) => {}
                Some(Packet::Publish(_)) => {
                    got = true;
                    break;
                }
                Some(other) => bail!("unexpected {other:?}"),
                None => break,
            }
        }
        if !got {
            misses += 1;
        }
    }
    assert_eq!(
        misses, 0,
        "{misses} of 1,000 publications missed the subscriber"
    );
    Ok(())
}

#[tokio::test]
async fn v311_subscribe_then_publish_from_another_client_is_delivered() -> Result<()> {
    subscribe_then_publish_from_another_client_is_delivered(Protocol::V311).await
}

#[tokio::test]
async fn v5_subscribe_then_publish_from_another_client_is_delivered() -> Result<()> {
    subscribe_then_publish_from_another_client_is_delivered(Protocol::V5).await
}
