//! MQTT 5.0 server features with the raw client, for exact packets and reason codes: server
//! Topic Aliases, Request/Response Information, Payload Format validation, Reason Strings,
//! Maximum Packet Size toward the client, server-initiated DISCONNECTs, subscription options,
//! Subscription Identifiers, message and session expiry, and the will/session-expiry race.

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use culex_config::Config;
use culex_proto::{
    Auth, Disconnect, Packet, Properties, Protocol, PubResp, QoS, ReasonCode, RetainHandling,
    Subscribe, SubscribeFilter, SubscriptionOptions,
};
use culex_test_support::{RawClient, TestBroker};

use crate::*;

/// A clean MQTT 5 CONNECT for `id` whose properties `f` adjusts.
fn v5_connect(id: &str, f: impl FnOnce(&mut Properties)) -> culex_proto::Connect {
    let mut c = connect_packet(Protocol::V5, id, true);
    f(&mut c.properties);
    c
}

/// SUBSCRIBE with one filter, explicit options and an optional Subscription Identifier;
/// returns the SUBACK's reason code (anything else before the SUBACK is an error).
async fn subscribe_with(
    c: &mut RawClient,
    packet_id: u16,
    filter: &str,
    options: SubscriptionOptions,
    id: Option<u32>,
) -> Result<ReasonCode> {
    let mut properties = Properties::default();
    properties.subscription_identifiers.extend(id);
    c.send(&Packet::Subscribe(Subscribe {
        packet_id,
        filters: vec![SubscribeFilter {
            filter: filter.to_owned(),
            options,
        }],
        properties,
    }))
    .await?;
    match c.recv().await? {
        Packet::SubAck(a) if a.packet_id == packet_id && a.reason_codes.len() == 1 => {
            Ok(a.reason_codes[0])
        }
        other => bail!("expected SUBACK {packet_id}, got {other:?}"),
    }
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// Waits for a DISCONNECT with `reason` then the close; returns its Reason String.
async fn expect_disconnect(c: &mut RawClient, reason: ReasonCode) -> Result<Option<String>> {
    let packets = c.expect_closed().await?;
    match packets.as_slice() {
        [Packet::Disconnect(d)] if d.reason_code == reason => {
            // [MQTT-3.14.2-2]: the server never sends a Session Expiry Interval.
            ensure!(d.properties.session_expiry_interval.is_none(), "{d:?}");
            Ok(d.properties.reason_string.clone())
        }
        _ => bail!("expected DISCONNECT {reason:?} then close, got {packets:?}"),
    }
}

// ------------------------------------------------------------------ server → client aliases

#[tokio::test]
async fn v5_server_topic_aliases_full_topic_first_then_alias_alone_lru_reuse() -> Result<()> {
    let broker = TestBroker::start().await?;
    let connect = v5_connect("ta-sub", |p| p.topic_alias_maximum = Some(2));
    let (mut sub, _) = connect_ok(broker.addr, connect).await?;
    let (codes, _) = subscribe_collect(
        &mut sub,
        1,
        &[("alias/#", QoS::AtMostOnce), ("ab", QoS::AtMostOnce)],
    )
    .await?;
    assert_eq!(codes.len(), 2);
    let mut publisher = connect_v5(broker.addr, "ta-pub").await?;
    // (topic published, topic on the wire, alias) with a client Topic Alias Maximum of 2.
    let steps: [(&str, &str, Option<u16>); 9] = [
        ("alias/one", "alias/one", Some(1)),
        ("alias/one", "", Some(1)),
        ("alias/two", "alias/two", Some(2)),
        ("alias/one", "", Some(1)),
        // Both aliases taken: the least recently used one (two) is reassigned.
        ("alias/three", "alias/three", Some(2)),
        ("alias/two", "alias/two", Some(1)),
        ("alias/three", "", Some(2)),
        ("alias/two", "", Some(1)),
        // Too short to be worth an alias.
        ("ab", "ab", None),
    ];
    for (i, (topic, _, _)) in steps.iter().enumerate() {
        let p = publish_packet(
            topic,
            format!("m{i}"),
            QoS::AtLeastOnce,
            false,
            i as u16 + 1,
        );
        publisher.send(&Packet::Publish(p)).await?;
    }
    for (i, (_, wire, alias)) in steps.iter().enumerate() {
        let p = recv_publish(&mut sub).await?;
        assert_eq!(text(&p), format!("m{i}"));
        // [MQTT-3.3.2-11] / [MQTT-3.1.2-26]: never above the client's maximum (2).
        assert_eq!(
            (p.topic.as_str(), p.properties.topic_alias),
            (*wire, *alias),
            "step {i}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn v5_no_server_topic_alias_without_client_topic_alias_maximum() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut absent, _) = connect_ok(broker.addr, v5_connect("ta-none", |_| {})).await?;
    let (mut zero, _) = connect_ok(
        broker.addr,
        v5_connect("ta-zero", |p| p.topic_alias_maximum = Some(0)),
    )
    .await?;
    subscribe(&mut absent, 1, "noalias/t", QoS::AtMostOnce).await?;
    subscribe(&mut zero, 1, "noalias/t", QoS::AtMostOnce).await?;
    let mut publisher = connect_v5(broker.addr, "ta-pub2").await?;
    for i in 0..3u16 {
        publish(
            &mut publisher,
            "noalias/t",
            "x",
            QoS::AtLeastOnce,
            false,
            i + 1,
        )
        .await?;
    }
    for c in [&mut absent, &mut zero] {
        for _ in 0..3 {
            // [MQTT-3.1.2-27]: no Topic Alias to a client that did not allow them.
            let p = recv_publish(c).await?;
            assert_eq!(
                (p.topic.as_str(), p.properties.topic_alias),
                ("noalias/t", None)
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn v5_server_topic_aliases_start_afresh_on_a_new_connection() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut publisher = connect_v5(broker.addr, "ta-pub3").await?;
    for round in 0..2 {
        let connect = v5_connect("ta-again", |p| p.topic_alias_maximum = Some(4));
        let (mut sub, _) = connect_ok(broker.addr, connect).await?;
        subscribe(&mut sub, 1, "again/t", QoS::AtMostOnce).await?;
        publish(&mut publisher, "again/t", "a", QoS::AtLeastOnce, false, 1).await?;
        publish(&mut publisher, "again/t", "b", QoS::AtLeastOnce, false, 2).await?;
        // [MQTT-3.3.2-7]: the mapping died with the previous connection.
        let first = recv_publish(&mut sub).await?;
        assert_eq!(
            (first.topic.as_str(), first.properties.topic_alias),
            ("again/t", Some(1)),
            "round {round}"
        );
        let second = recv_publish(&mut sub).await?;
        assert_eq!(
            (second.topic.as_str(), second.properties.topic_alias),
            ("", Some(1)),
            "round {round}"
        );
        disconnect(sub).await?;
    }
    Ok(())
}

// ------------------------------------------------------------------ client → server aliases

#[tokio::test]
async fn v5_client_topic_alias_is_resolved_for_subscribers() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_v311(broker.addr, "cta-sub").await?;
    subscribe(&mut sub, 1, "cta/t", QoS::AtMostOnce).await?;
    let (mut publisher, ack) = connect_ok(broker.addr, v5_connect("cta-pub", |_| {})).await?;
    let max = ack.properties.topic_alias_maximum.unwrap_or(0);
    assert!(max > 0, "{ack:?}");
    let mut p = publish_packet("cta/t", "set", QoS::AtMostOnce, false, 0);
    // [MQTT-3.3.2-12]: aliases 1..Topic Alias Maximum are accepted.
    p.properties.topic_alias = Some(max);
    publisher.send(&Packet::Publish(p.clone())).await?;
    p.topic.clear();
    p.payload = Bytes::from_static(b"use");
    publisher.send(&Packet::Publish(p)).await?;
    for expected in ["set", "use"] {
        let got = recv_publish(&mut sub).await?;
        assert_eq!(
            (got.topic.as_str(), text(&got).as_str()),
            ("cta/t", expected)
        );
    }
    Ok(())
}

#[tokio::test]
async fn v5_topic_alias_above_server_maximum_gets_disconnect_0x94() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut c, ack) = connect_ok(broker.addr, v5_connect("cta-big", |_| {})).await?;
    let max = ack.properties.topic_alias_maximum.unwrap_or(0);
    let mut p = publish_packet("cta/t", "x", QoS::AtMostOnce, false, 0);
    p.properties.topic_alias = Some(max + 1);
    c.send(&Packet::Publish(p)).await?;
    // [MQTT-3.2.2-18] / [MQTT-3.3.2-10].
    let why = expect_disconnect(&mut c, ReasonCode::TopicAliasInvalid).await?;
    assert!(why.is_some_and(|w| w.contains("alias")));
    Ok(())
}

#[tokio::test]
async fn v5_unknown_topic_alias_gets_disconnect_0x82() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = connect_v5(broker.addr, "cta-unknown").await?;
    let mut p = publish_packet("", "x", QoS::AtMostOnce, false, 0);
    p.properties.topic_alias = Some(3);
    c.send(&Packet::Publish(p)).await?;
    expect_disconnect(&mut c, ReasonCode::ProtocolError).await?;
    Ok(())
}

// ------------------------------------------------------------------ request / response

#[tokio::test]
async fn v5_response_information_only_when_requested() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_a, ack) = connect_ok(broker.addr, v5_connect("ri-absent", |_| {})).await?;
    assert_eq!(ack.properties.response_information, None);
    // [MQTT-3.1.2-28]: 0 → no Response Information.
    let (_b, ack) = connect_ok(
        broker.addr,
        v5_connect("ri-zero", |p| p.request_response_information = Some(0)),
    )
    .await?;
    assert_eq!(ack.properties.response_information, None);
    let (_c, ack) = connect_ok(
        broker.addr,
        v5_connect("ri-one", |p| p.request_response_information = Some(1)),
    )
    .await?;
    assert_eq!(
        ack.properties.response_information.as_deref(),
        Some("culex/response/ri-one")
    );
    Ok(())
}

// ------------------------------------------------------------------ payload format

#[tokio::test]
async fn v5_payload_not_utf8_despite_format_indicator_gets_0x99() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_v5(broker.addr, "pf-sub").await?;
    subscribe(&mut sub, 1, "pf/t", QoS::AtLeastOnce).await?;
    let mut c = connect_v5(broker.addr, "pf-pub").await?;
    let bad = |qos: QoS, id: u16| {
        let mut p = publish_packet("pf/t", &b"\xff\xfe not utf-8"[..], qos, false, id);
        p.properties.payload_format_indicator = Some(1);
        Packet::Publish(p)
    };
    // QoS 1 and 2: refused with 0x99 in the acknowledgement, the connection stays.
    c.send(&bad(QoS::AtLeastOnce, 1)).await?;
    match c.recv().await? {
        Packet::PubAck(a) => {
            assert_eq!(
                (a.packet_id, a.reason_code),
                (1, ReasonCode::PayloadFormatInvalid)
            );
            assert!(a.properties.reason_string.is_some(), "{a:?}");
        }
        other => bail!("expected PUBACK, got {other:?}"),
    }
    c.send(&bad(QoS::ExactlyOnce, 2)).await?;
    match c.recv().await? {
        Packet::PubRec(a) => {
            assert_eq!(
                (a.packet_id, a.reason_code),
                (2, ReasonCode::PayloadFormatInvalid)
            )
        }
        other => bail!("expected PUBREC, got {other:?}"),
    }
    // The same packet id is a new message after a failed PUBREC [MQTT-4.3.3-9]; valid UTF-8
    // with the indicator passes, indicator unaltered [MQTT-3.3.2-4].
    let mut good = publish_packet("pf/t", "grüße", QoS::ExactlyOnce, false, 2);
    good.properties.payload_format_indicator = Some(1);
    c.send(&Packet::Publish(good)).await?;
    match c.recv().await? {
        Packet::PubRec(a) => assert_eq!((a.packet_id, a.reason_code), (2, ReasonCode::Success)),
        other => bail!("expected PUBREC, got {other:?}"),
    }
    let p = recv_publish_ack(&mut sub).await?;
    assert_eq!(
        (text(&p).as_str(), p.properties.payload_format_indicator),
        ("grüße", Some(1))
    );
    // QoS 0 has no acknowledgement: DISCONNECT 0x99.
    c.send(&bad(QoS::AtMostOnce, 0)).await?;
    expect_disconnect(&mut c, ReasonCode::PayloadFormatInvalid).await?;
    sub.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn v5_will_payload_not_utf8_despite_format_indicator_is_refused_with_0x99() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut connect = v5_connect("pf-will", |_| {});
    let mut w = will("pf/will", "", QoS::AtMostOnce);
    w.payload = Bytes::from_static(b"\xc3\x28");
    w.properties.payload_format_indicator = Some(1);
    connect.will = Some(w);
    let (mut c, ack) = connect_with(broker.addr, connect).await?;
    assert_eq!(ack.reason_code, ReasonCode::PayloadFormatInvalid);
    assert!(c.expect_closed().await?.is_empty());
    Ok(())
}

// ------------------------------------------------------------------ reason strings, sizes

#[tokio::test]
async fn v5_error_acks_carry_a_reason_string_unless_problem_information_is_0() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.message_size_limit = 10;
    let broker = TestBroker::start_with(config).await?;
    for problem_info in [None, Some(1), Some(0)] {
        let id = format!("rs-{problem_info:?}");
        let connect = v5_connect(&id, |p| p.request_problem_information = problem_info);
        let (mut c, _) = connect_ok(broker.addr, connect).await?;
        let expect_string = problem_info != Some(0);
        // Above message_size_limit: PUBACK / PUBREC 0x97 Quota exceeded.
        let big = vec![b'x'; 20];
        c.send(&Packet::Publish(publish_packet(
            "rs/t",
            big.clone(),
            QoS::AtLeastOnce,
            false,
            1,
        )))
        .await?;
        match c.recv().await? {
            Packet::PubAck(a) => {
                assert_eq!(a.reason_code, ReasonCode::QuotaExceeded);
                // [MQTT-3.1.2-29]: no Reason String on acks after Request Problem Information 0.
                assert_eq!(a.properties.reason_string.is_some(), expect_string, "{a:?}");
            }
            other => bail!("expected PUBACK, got {other:?}"),
        }
        c.send(&Packet::Publish(publish_packet(
            "rs/t",
            big,
            QoS::ExactlyOnce,
            false,
            2,
        )))
        .await?;
        match c.recv().await? {
            Packet::PubRec(a) => {
                assert_eq!(a.reason_code, ReasonCode::QuotaExceeded);
                assert_eq!(a.properties.reason_string.is_some(), expect_string, "{a:?}");
            }
            other => bail!("expected PUBREC, got {other:?}"),
        }
        // PUBREL for an unknown packet id: PUBCOMP 0x92 [MQTT-3.7.2-1].
        c.send(&Packet::PubRel(PubResp::new(77))).await?;
        match c.recv().await? {
            Packet::PubComp(a) => {
                assert_eq!(
                    (a.packet_id, a.reason_code),
                    (77, ReasonCode::PacketIdentifierNotFound)
                );
                assert_eq!(a.properties.reason_string.is_some(), expect_string, "{a:?}");
            }
            other => bail!("expected PUBCOMP, got {other:?}"),
        }
        // DISCONNECT always may carry one.
        let mut p = publish_packet("rs/t", "x", QoS::AtMostOnce, false, 0);
        p.properties.topic_alias = Some(u16::MAX);
        c.send(&Packet::Publish(p)).await?;
        let why = expect_disconnect(&mut c, ReasonCode::TopicAliasInvalid).await?;
        assert!(why.is_some(), "{problem_info:?}");
    }
    Ok(())
}

#[tokio::test]
async fn v5_reason_string_left_out_when_it_would_exceed_client_maximum_packet_size() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.message_size_limit = 10;
    let broker = TestBroker::start_with(config).await?;
    let connect = v5_connect("rs-small", |p| p.maximum_packet_size = Some(8));
    let (mut c, _) = connect_ok(broker.addr, connect).await?;
    c.send(&Packet::Publish(publish_packet(
        "rs/t",
        vec![0u8; 20],
        QoS::AtLeastOnce,
        false,
        1,
    )))
    .await?;
    // [MQTT-3.4.2-2]: the PUBACK goes out, without the Reason String that would not fit.
    match c.recv().await? {
        Packet::PubAck(a) => {
            assert_eq!(a.reason_code, ReasonCode::QuotaExceeded);
            assert_eq!(a.properties.reason_string, None);
        }
        other => bail!("expected PUBACK, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn v5_packets_above_client_maximum_packet_size_are_not_sent() -> Result<()> {
    let broker = TestBroker::start().await?;
    let connect = v5_connect("mps-sub", |p| p.maximum_packet_size = Some(40));
    let (mut sub, _) = connect_ok(broker.addr, connect).await?;
    subscribe(&mut sub, 1, "mps/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_v5(broker.addr, "mps-pub").await?;
    // [MQTT-3.1.2-24] / [MQTT-3.1.2-25]: a PUBLISH above 40 bytes is dropped as if sent.
    publish(
        &mut publisher,
        "mps/t",
        vec![b'x'; 100],
        QoS::AtLeastOnce,
        false,
        1,
    )
    .await?;
    publish(&mut publisher, "mps/t", "small", QoS::AtLeastOnce, false, 2).await?;
    let p = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&p), "small");
    // A SUBACK for 40 filters (47 bytes) is dropped too; the connection carries on.
    let filters: Vec<String> = (0..40).map(|i| format!("mps/{i}")).collect();
    let refs: Vec<(&str, QoS)> = filters
        .iter()
        .map(|f| (f.as_str(), QoS::AtMostOnce))
        .collect();
    let sub_packet = Subscribe {
        packet_id: 9,
        filters: refs
            .iter()
            .map(|(f, q)| SubscribeFilter {
                filter: (*f).to_owned(),
                options: opts(*q),
            })
            .collect(),
        properties: Properties::default(),
    };
    sub.send(&Packet::Subscribe(sub_packet)).await?;
    sub.send(&Packet::PingReq).await?;
    match sub.recv().await? {
        Packet::PingResp => {}
        other => bail!("expected PINGRESP (SUBACK too large), got {other:?}"),
    }
    Ok(())
}

// ------------------------------------------------------------------ server DISCONNECTs, limits

#[tokio::test]
async fn v5_inbound_qos2_beyond_receive_maximum_gets_disconnect_0x93() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_inflight_messages = 2;
    let broker = TestBroker::start_with(config).await?;
    let (mut c, ack) = connect_ok(broker.addr, v5_connect("rm-in", |_| {})).await?;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in 1..=2u16 {
        c.send(&Packet::Publish(publish_packet(
            "rm/t",
            "x",
            QoS::ExactlyOnce,
            false,
            id,
        )))
        .await?;
        match c.recv().await? {
            Packet::PubRec(r) => assert_eq!(r.packet_id, id),
            other => bail!("expected PUBREC, got {other:?}"),
        }
    }
    // [MQTT-3.3.4-8]: a third unacknowledged QoS 2 PUBLISH exceeds the Receive Maximum.
    c.send(&Packet::Publish(publish_packet(
        "rm/t",
        "x",
        QoS::ExactlyOnce,
        false,
        3,
    )))
    .await?;
    expect_disconnect(&mut c, ReasonCode::ReceiveMaximumExceeded).await?;
    Ok(())
}

/// A client that floods past the Receive Maximum still reads the DISCONNECT 0x93: the server
/// shuts its write side down and reads (discarding) what the client keeps sending until the
/// client closes, instead of closing a socket with unread data (which makes the kernel send
/// RST: the client's write fails with BrokenPipe and the DISCONNECT is lost, as Paho's
/// `test_flow_control2` saw).
#[tokio::test]
async fn v5_disconnect_reaches_a_client_that_keeps_sending() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_inflight_messages = 2;
    let broker = TestBroker::start_with(config).await?;
    let (mut c, _) = connect_ok(broker.addr, v5_connect("rm-flood", |_| {})).await?;
    // 4,000 QoS 2 PUBLISHes of 4 KiB in one write (16 MB, more than the socket buffers hold):
    // the third already exceeds the Receive Maximum of 2.
    let payload = Bytes::from(vec![b'x'; 4096]);
    let mut burst = bytes::BytesMut::new();
    for id in 1..=4000u16 {
        let p = Packet::Publish(publish_packet(
            "rm/t",
            payload.clone(),
            QoS::ExactlyOnce,
            false,
            id,
        ));
        culex_proto::encode(&p, Protocol::V5, &mut burst)?;
    }
    c.send_bytes(&burst).await?;
    let packets = c.expect_closed().await?;
    ensure!(
        packets.iter().any(|p| matches!(p, Packet::Disconnect(d)
            if d.reason_code == ReasonCode::ReceiveMaximumExceeded)),
        "no DISCONNECT 0x93 before the close: {packets:?}"
    );
    Ok(())
}

#[tokio::test]
async fn v5_maximum_qos_is_advertised_and_enforced_with_0x9b() -> Result<()> {
    let mut config = Config::embedded_default();
    config.mqtt.max_qos = 1;
    let broker = TestBroker::start_with(config).await?;
    let (mut c, ack) = connect_ok(broker.addr, v5_connect("mq", |_| {})).await?;
    // [MQTT-3.2.2-9]
    assert_eq!(ack.properties.maximum_qos, Some(1));
    // [MQTT-3.2.2-10]: a QoS 2 subscription is accepted, granted QoS 1.
    let codes = subscribe(&mut c, 1, "mq/t", QoS::ExactlyOnce).await?;
    assert_eq!(codes, vec![ReasonCode::GrantedQoS1]);
    // [MQTT-3.2.2-11]
    c.send(&Packet::Publish(publish_packet(
        "mq/t",
        "x",
        QoS::ExactlyOnce,
        false,
        1,
    )))
    .await?;
    expect_disconnect(&mut c, ReasonCode::QoSNotSupported).await?;
    // [MQTT-3.2.2-12]: a QoS 2 will is refused.
    let mut connect = v5_connect("mq-will", |_| {});
    connect.will = Some(will("mq/will", "w", QoS::ExactlyOnce));
    let (mut c, ack) = connect_with(broker.addr, connect).await?;
    assert_eq!(ack.reason_code, ReasonCode::QoSNotSupported);
    assert!(ack.properties.reason_string.is_some(), "{ack:?}");
    assert!(c.expect_closed().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn v5_retain_unavailable_is_advertised_and_enforced_with_0x9a() -> Result<()> {
    let mut config = Config::embedded_default();
    config.mqtt.retain_available = false;
    let broker = TestBroker::start_with(config).await?;
    let (mut c, ack) = connect_ok(broker.addr, v5_connect("ra", |_| {})).await?;
    assert_eq!(ack.properties.retain_available, Some(0));
    // [MQTT-3.2.2-14]
    c.send(&Packet::Publish(publish_packet(
        "ra/t",
        "x",
        QoS::AtMostOnce,
        true,
        0,
    )))
    .await?;
    expect_disconnect(&mut c, ReasonCode::RetainNotSupported).await?;
    // [MQTT-3.2.2-13]
    let mut connect = v5_connect("ra-will", |_| {});
    let mut w = will("ra/will", "w", QoS::AtMostOnce);
    w.retain = true;
    connect.will = Some(w);
    let (mut c, ack) = connect_with(broker.addr, connect).await?;
    assert_eq!(ack.reason_code, ReasonCode::RetainNotSupported);
    assert!(c.expect_closed().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn v5_authentication_method_is_refused_with_0x8c_and_a_reason_string() -> Result<()> {
    let broker = TestBroker::start().await?;
    let connect = v5_connect("auth", |p| {
        p.authentication_method = Some("SCRAM-SHA-256".into());
        p.authentication_data = Some(Bytes::from_static(b"client-first"));
    });
    let (mut c, ack) = connect_with(broker.addr, connect).await?;
    // [MQTT-4.12.0-1]
    assert_eq!(ack.reason_code, ReasonCode::BadAuthenticationMethod);
    assert!(!ack.session_present);
    assert_eq!(
        ack.properties.reason_string.as_deref(),
        Some("bad authentication method")
    );
    assert_eq!(ack.properties.authentication_method, None);
    assert!(c.expect_closed().await?.is_empty());

    // [MQTT-4.12.0-7]: AUTH without a method in CONNECT ends the connection.
    let mut c = connect_v5(broker.addr, "auth-later").await?;
    c.send(&Packet::Auth(Auth {
        reason_code: ReasonCode::ReAuthenticate,
        properties: Properties::from(culex_proto::PropertyValues {
            authentication_method: Some("SCRAM-SHA-256".into()),
            ..Default::default()
        }),
    }))
    .await?;
    let why = expect_disconnect(&mut c, ReasonCode::BadAuthenticationMethod).await?;
    assert!(why.is_some());
    Ok(())
}

#[tokio::test]
async fn v5_session_takeover_disconnect_0x8e_has_a_reason_string() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut first = connect_v5(broker.addr, "takeover").await?;
    let _second = connect_v5(broker.addr, "takeover").await?;
    // [MQTT-3.1.4-3]
    let why = expect_disconnect(&mut first, ReasonCode::SessionTakenOver).await?;
    assert_eq!(why.as_deref(), Some("session taken over"));
    Ok(())
}

#[tokio::test]
async fn v5_server_keep_alive_from_max_keepalive_is_advertised_and_enforced_0x8d() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_keepalive = 1;
    let broker = TestBroker::start_with(config).await?;
    let (mut c, ack) = connect_ok(broker.addr, v5_connect("ska", |_| {})).await?;
    // The client asked for 60 s; the server says 1 s and holds it to that.
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    let mut zero = v5_connect("ska-zero", |_| {});
    zero.keep_alive = 0;
    let (_z, ack) = connect_ok(broker.addr, zero).await?;
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    let why = expect_disconnect(&mut c, ReasonCode::KeepAliveTimeout).await?;
    assert!(why.is_some());
    Ok(())
}

#[tokio::test]
async fn v5_packet_above_server_maximum_packet_size_disconnect_0x95_has_reason() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_packet_size = 64;
    let broker = TestBroker::start_with(config).await?;
    let mut c = connect_v5(broker.addr, "big").await?;
    c.send(&Packet::Publish(publish_packet(
        "big/t",
        vec![0u8; 100],
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await?;
    let why = expect_disconnect(&mut c, ReasonCode::PacketTooLarge).await?;
    assert!(why.is_some());
    Ok(())
}

// ------------------------------------------------------------------ subscription options

#[tokio::test]
async fn v5_no_local_subscription_does_not_get_own_messages() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut me = connect_v5(broker.addr, "nl-me").await?;
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtLeastOnce)
    };
    subscribe_with(&mut me, 1, "nl/t", no_local, None).await?;
    let mut other = connect_v5(broker.addr, "nl-other").await?;
    subscribe(&mut other, 1, "nl/t", QoS::AtLeastOnce).await?;
    let mut third = connect_v5(broker.addr, "nl-third").await?;
    publish(&mut me, "nl/t", "own", QoS::AtLeastOnce, false, 1).await?;
    publish(&mut third, "nl/t", "theirs", QoS::AtLeastOnce, false, 1).await?;
    // [MQTT-3.8.3-3]: "own" is not sent back; the router handled it before "theirs".
    assert_eq!(text(&recv_publish_ack(&mut me).await?), "theirs");
    assert_eq!(text(&recv_publish_ack(&mut other).await?), "own");
    assert_eq!(text(&recv_publish_ack(&mut other).await?), "theirs");
    me.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn v5_retain_as_published_keeps_the_retain_flag_on_forward() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut rap = connect_v5(broker.addr, "rap-1").await?;
    let keep = SubscriptionOptions {
        retain_as_published: true,
        ..opts(QoS::AtLeastOnce)
    };
    subscribe_with(&mut rap, 1, "rap/t", keep, None).await?;
    let mut plain = connect_v5(broker.addr, "rap-0").await?;
    subscribe(&mut plain, 1, "rap/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_v5(broker.addr, "rap-pub").await?;
    publish(&mut publisher, "rap/t", "kept", QoS::AtLeastOnce, true, 1).await?;
    // [MQTT-3.3.1-13] and [MQTT-3.3.1-12].
    let p = recv_publish_ack(&mut rap).await?;
    assert!(p.retain, "{p:?}");
    let p = recv_publish_ack(&mut plain).await?;
    assert!(!p.retain, "{p:?}");
    Ok(())
}

#[tokio::test]
async fn v5_retain_handling_1_and_2() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut publisher = connect_v5(broker.addr, "rh-pub").await?;
    publish(&mut publisher, "rh/t", "stored", QoS::AtLeastOnce, true, 1).await?;
    let with = |rh| SubscriptionOptions {
        retain_handling: rh,
        ..opts(QoS::AtLeastOnce)
    };
    let mut c = connect_v5(broker.addr, "rh-sub").await?;
    // [MQTT-3.3.1-10]: Retain Handling 1 sends retained messages for a new subscription...
    subscribe_with(&mut c, 1, "rh/t", with(RetainHandling::SendIfNew), None).await?;
    let p = recv_publish_ack(&mut c).await?;
    assert!(p.retain && text(&p) == "stored", "{p:?}");
    // ...but not when it already existed.
    subscribe_with(&mut c, 2, "rh/t", with(RetainHandling::SendIfNew), None).await?;
    // [MQTT-3.3.1-11]: Retain Handling 2 never sends them.
    subscribe_with(&mut c, 3, "rh/#", with(RetainHandling::DoNotSend), None).await?;
    // Retain Handling 0 on an existing subscription sends them again [MQTT-3.8.4-4].
    subscribe_with(
        &mut c,
        4,
        "rh/t",
        with(RetainHandling::SendAtSubscribe),
        None,
    )
    .await?;
    let p = recv_publish_ack(&mut c).await?;
    assert!(p.retain && text(&p) == "stored", "{p:?}");
    c.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn v5_subscription_identifiers_all_on_one_copy() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = connect_v5(broker.addr, "sid").await?;
    subscribe_with(&mut c, 1, "sid/+", opts(QoS::AtLeastOnce), Some(5)).await?;
    subscribe_with(&mut c, 2, "sid/#", opts(QoS::AtMostOnce), Some(700)).await?;
    subscribe_with(&mut c, 3, "sid/x/y", opts(QoS::AtMostOnce), None).await?;
    let mut publisher = connect_v5(broker.addr, "sid-pub").await?;
    publish(&mut publisher, "sid/a", "both", QoS::AtLeastOnce, false, 1).await?;
    publish(&mut publisher, "sid/x/y", "one", QoS::AtLeastOnce, false, 2).await?;
    // [MQTT-3.3.4-3] / [MQTT-3.3.4-4]: one copy, at the highest QoS, with every identifier.
    let p = recv_publish_ack(&mut c).await?;
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(
        (text(&p).as_str(), p.qos, ids),
        ("both", QoS::AtLeastOnce, vec![5, 700])
    );
    // A matching subscription without an identifier adds none.
    let p = recv_publish_ack(&mut c).await?;
    assert_eq!(
        (
            text(&p).as_str(),
            p.properties.subscription_identifiers.clone()
        ),
        ("one", vec![700])
    );
    c.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn v5_shared_subscription_members_keep_their_granted_qos() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut a = connect_v5(broker.addr, "sh-a").await?;
    let mut b = connect_v5(broker.addr, "sh-b").await?;
    subscribe(&mut a, 1, "$share/g/sh/t", QoS::AtMostOnce).await?;
    subscribe(&mut b, 1, "$share/g/sh/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_v5(broker.addr, "sh-pub").await?;
    for i in 0..6u16 {
        publish(
            &mut publisher,
            "sh/t",
            format!("m{i}"),
            QoS::AtLeastOnce,
            false,
            i + 1,
        )
        .await?;
    }
    router_barrier(&mut publisher, 100).await?;
    let mut total = 0;
    // [MQTT-4.8.2-3]: each member gets its own granted QoS.
    for (c, qos) in [(&mut a, QoS::AtMostOnce), (&mut b, QoS::AtLeastOnce)] {
        loop {
            match tokio::time::timeout(QUIET, c.recv()).await {
                Err(_) => break,
                Ok(p) => match p? {
                    Packet::Publish(p) => {
                        assert_eq!(p.qos, qos, "{p:?}");
                        ack_publish(c, &p).await?;
                        total += 1;
                    }
                    other => bail!("unexpected {other:?}"),
                },
            }
        }
    }
    assert_eq!(total, 6, "each message to exactly one member");
    Ok(())
}

// ------------------------------------------------------------------ expiry

#[tokio::test]
async fn v5_message_expiry_counts_down_and_expired_messages_are_dropped() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (sub, _) = connect_ok(broker.addr, persistent_connect(Protocol::V5, "me-sub")).await?;
    let mut sub = sub;
    subscribe(&mut sub, 1, "me/t", QoS::AtLeastOnce).await?;
    disconnect(sub).await?;
    let mut publisher = connect_v5(broker.addr, "me-pub").await?;
    let with_expiry = |payload: &str, secs: u32, retain: bool, id: u16| {
        let mut p = publish_packet("me/t", payload.to_owned(), QoS::AtLeastOnce, retain, id);
        p.properties.message_expiry_interval = Some(secs);
        Packet::Publish(p)
    };
    for (i, (payload, secs)) in [("short", 1), ("long", 100)].into_iter().enumerate() {
        publisher
            .send(&with_expiry(payload, secs, false, i as u16 + 1))
            .await?;
        assert!(matches!(publisher.recv().await?, Packet::PubAck(_)));
    }
    publisher.send(&with_expiry("retained", 1, true, 3)).await?;
    assert!(matches!(publisher.recv().await?, Packet::PubAck(_)));
    // Let the clock pass the 1 s expiry (this wait is the point of the test, not a sync).
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (mut sub, ack) =
        connect_ok(broker.addr, persistent_connect(Protocol::V5, "me-sub")).await?;
    assert!(ack.session_present);
    // [MQTT-3.3.2-5]: "short" expired in the queue; [MQTT-3.3.2-6]: "long" waited ≥ 2 s.
    let p = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&p), "long");
    let left = p.properties.message_expiry_interval.unwrap_or(0);
    assert!((1..=98).contains(&left), "expiry {left}");
    // The expired retained message is not sent to a new subscriber.
    let (codes, early) = subscribe_collect(&mut sub, 2, &[("me/t", QoS::AtLeastOnce)]).await?;
    assert_eq!(codes.len(), 1);
    assert!(early.is_empty(), "{early:?}");
    sub.expect_silence(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn v5_session_expiry_set_on_disconnect_replaces_the_connect_value() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut c, _) = connect_ok(broker.addr, persistent_connect(Protocol::V5, "se")).await?;
    subscribe(&mut c, 1, "se/t", QoS::AtLeastOnce).await?;
    let mut d = Disconnect::new(ReasonCode::NormalDisconnection);
    d.properties.session_expiry_interval = Some(0);
    c.send(&Packet::Disconnect(d)).await?;
    assert!(c.expect_closed().await?.is_empty());
    let (_c, ack) = connect_ok(broker.addr, persistent_connect(Protocol::V5, "se")).await?;
    assert!(
        !ack.session_present,
        "session kept despite expiry 0 on DISCONNECT"
    );
    Ok(())
}

#[tokio::test]
async fn v5_disconnect_setting_expiry_after_zero_is_a_protocol_error() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = connect_v5(broker.addr, "se-zero").await?;
    let mut d = Disconnect::new(ReasonCode::NormalDisconnection);
    d.properties.session_expiry_interval = Some(30);
    c.send(&Packet::Disconnect(d)).await?;
    expect_disconnect(&mut c, ReasonCode::ProtocolError).await?;
    Ok(())
}

#[tokio::test]
async fn v5_session_ends_after_its_expiry_interval() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut connect = persistent_connect(Protocol::V5, "se-short");
    connect.properties.session_expiry_interval = Some(1);
    let (mut c, ack) = connect_ok(broker.addr, connect.clone()).await?;
    assert!(!ack.session_present);
    subscribe(&mut c, 1, "se/t", QoS::AtLeastOnce).await?;
    disconnect(c).await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // [MQTT-4.1.0-2]
    let (_c, ack) = connect_ok(broker.addr, connect).await?;
    assert!(!ack.session_present);
    Ok(())
}

#[tokio::test]
async fn v5_will_sent_at_session_end_when_that_comes_before_the_will_delay() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut watcher = connect_v5(broker.addr, "wd-watch").await?;
    subscribe(&mut watcher, 1, "wd/will", QoS::AtLeastOnce).await?;
    let mut connect = persistent_connect(Protocol::V5, "wd-client");
    connect.properties.session_expiry_interval = Some(1);
    let mut w = will("wd/will", "gone", QoS::AtLeastOnce);
    w.properties.will_delay_interval = Some(3600);
    connect.will = Some(w);
    let (c, _) = connect_ok(broker.addr, connect).await?;
    drop(c);
    // Will Delay 3600 s, session expiry 1 s: the will goes at the session's end [MQTT-3.1.2-8].
    let started = std::time::Instant::now();
    let p = recv_publish_ack(&mut watcher).await?;
    assert_eq!(text(&p), "gone");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "will before the session ended"
    );
    Ok(())
}
