//! MQTT 5.0 features seen by an independent client, `rumqttc::v5`: server Topic Aliases,
//! request/response with Response Information, property pass-through, subscription options
//! and identifiers, session expiry.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use culex_test_support::TestBroker;
use rumqttc::v5::mqttbytes::v5::{
    ConnAckProperties, Filter, Packet as V5Packet, Publish as V5Publish, PublishProperties,
    RetainForwardRule, SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

use crate::rumq::{drive_v5, wait_for};

type Events = tokio::sync::mpsc::UnboundedReceiver<Result<Event, String>>;

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Connects and returns the client, its events and the CONNACK (session present, properties).
async fn connect(o: MqttOptions) -> Result<(AsyncClient, Events, bool, Option<ConnAckProperties>)> {
    let (client, el) = AsyncClient::new(o, 100);
    let mut rx = drive_v5(el);
    let (code, present, props) = wait_for(&mut rx, "CONNACK", |e| match e {
        Event::Incoming(V5Packet::ConnAck(a)) => {
            Some((a.code, a.session_present, a.properties.clone()))
        }
        _ => None,
    })
    .await?;
    assert_eq!(code, rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success);
    Ok((client, rx, present, props))
}

async fn suback(rx: &mut Events) -> Result<Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode>> {
    wait_for(rx, "SUBACK", |e| match e {
        Event::Incoming(V5Packet::SubAck(a)) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await
}

async fn next_publish(rx: &mut Events) -> Result<V5Publish> {
    wait_for(rx, "PUBLISH", |e| match e {
        Event::Incoming(V5Packet::Publish(p)) => Some(p.clone()),
        _ => None,
    })
    .await
}

fn topic(p: &V5Publish) -> String {
    String::from_utf8_lossy(&p.topic).into_owned()
}

#[tokio::test]
async fn v5_rumqttc_receives_server_topic_aliases_with_correct_topics() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut o = options("rta-sub", broker.port());
    o.set_topic_alias_max(Some(2));
    let (sub, mut sub_rx, _, _) = connect(o).await?;
    sub.subscribe("rta/#", V5QoS::AtLeastOnce).await?;
    suback(&mut sub_rx).await?;
    let (publisher, _pub_rx, _, _) = connect(options("rta-pub", broker.port())).await?;
    // Three topics over two aliases: the server reassigns aliases as it goes.
    let topics = ["rta/alpha", "rta/beta", "rta/gamma"];
    let mut sent = Vec::new();
    for round in 0..4 {
        for t in topics {
            let payload = format!("{t}#{round}");
            publisher
                .publish(t, V5QoS::AtLeastOnce, false, payload.clone())
                .await?;
            sent.push((t.to_owned(), payload));
        }
    }
    let mut aliased = 0;
    for (t, payload) in &sent {
        let p = next_publish(&mut sub_rx).await?;
        // rumqttc resolves the alias: the topic must be the one published.
        assert_eq!(
            (topic(&p), String::from_utf8_lossy(&p.payload).into_owned()),
            (t.clone(), payload.clone())
        );
        let alias = p.properties.as_ref().and_then(|x| x.topic_alias);
        assert!(
            alias.is_none_or(|a| (1..=2).contains(&a)),
            "alias {alias:?}"
        );
        aliased += usize::from(alias.is_some());
    }
    assert_eq!(
        aliased,
        sent.len(),
        "every topic here is long enough to be aliased"
    );
    Ok(())
}

#[tokio::test]
async fn v5_rumqttc_request_response_with_response_topic_and_correlation_data() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (responder, mut resp_rx, _, _) = connect(options("rr-service", broker.port())).await?;
    responder
        .subscribe("rr/service", V5QoS::AtLeastOnce)
        .await?;
    suback(&mut resp_rx).await?;

    let mut o = options("rr-requester", broker.port());
    o.set_request_response_info(Some(1));
    let (requester, mut req_rx, _, props) = connect(o).await?;
    // Response Information: a topic prefix the requester may use for its replies.
    let base = props
        .and_then(|p| p.response_information)
        .expect("Response Information requested");
    assert_eq!(base, "culex/response/rr-requester");
    let reply_topic = format!("{base}/reply");
    requester
        .subscribe(reply_topic.clone(), V5QoS::AtLeastOnce)
        .await?;
    suback(&mut req_rx).await?;

    let correlation = Bytes::from_static(b"\x00\x01req-42\xff");
    let request = PublishProperties {
        response_topic: Some(reply_topic.clone()),
        correlation_data: Some(correlation.clone()),
        ..PublishProperties::default()
    };
    requester
        .publish_with_properties("rr/service", V5QoS::AtLeastOnce, false, "ping", request)
        .await?;

    // The service gets Response Topic and Correlation Data unchanged [MQTT-3.3.2-15]/[-16].
    let got = next_publish(&mut resp_rx).await?;
    let got_props = got.properties.clone().unwrap_or_default();
    assert_eq!(
        got_props.response_topic.as_deref(),
        Some(reply_topic.as_str())
    );
    assert_eq!(got_props.correlation_data.as_ref(), Some(&correlation));
    let reply = PublishProperties {
        correlation_data: got_props.correlation_data.clone(),
        ..PublishProperties::default()
    };
    responder
        .publish_with_properties(
            got_props.response_topic.unwrap_or_default(),
            V5QoS::AtLeastOnce,
            false,
            "pong",
            reply,
        )
        .await?;

    let answer = next_publish(&mut req_rx).await?;
    assert_eq!(topic(&answer), reply_topic);
    assert_eq!(answer.payload.as_ref(), b"pong");
    assert_eq!(
        answer.properties.and_then(|p| p.correlation_data),
        Some(correlation)
    );
    Ok(())
}

#[tokio::test]
async fn v5_rumqttc_publish_properties_pass_through_unchanged() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (sub, mut sub_rx, _, _) = connect(options("pp-sub", broker.port())).await?;
    sub.subscribe("pp/t", V5QoS::ExactlyOnce).await?;
    suback(&mut sub_rx).await?;
    let (publisher, _pub_rx, _, _) = connect(options("pp-pub", broker.port())).await?;
    let user = vec![
        ("b".to_owned(), "1".to_owned()),
        ("a".to_owned(), "2".to_owned()),
        ("b".to_owned(), "3".to_owned()),
    ];
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("application/json; charset=utf-8".to_owned()),
        response_topic: Some("pp/reply".to_owned()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: user.clone(),
        ..PublishProperties::default()
    };
    for qos in [V5QoS::AtMostOnce, V5QoS::AtLeastOnce, V5QoS::ExactlyOnce] {
        publisher
            .publish_with_properties("pp/t", qos, false, r#"{"ok":true}"#, sent.clone())
            .await?;
        let p = next_publish(&mut sub_rx).await?;
        assert_eq!(p.qos, qos);
        assert_eq!(p.payload.as_ref(), br#"{"ok":true}"#);
        let got = p.properties.expect("properties forwarded");
        // [MQTT-3.3.2-4], [MQTT-3.3.2-20], [MQTT-3.3.2-15], [MQTT-3.3.2-16],
        // [MQTT-3.3.2-17], [MQTT-3.3.2-18] (User Property order kept).
        assert_eq!(got.payload_format_indicator, Some(1));
        assert_eq!(got.content_type, sent.content_type);
        assert_eq!(got.response_topic, sent.response_topic);
        assert_eq!(got.correlation_data, sent.correlation_data);
        assert_eq!(got.user_properties, user);
        // [MQTT-3.3.2-6]: the remaining lifetime, never more than was sent.
        let left = got.message_expiry_interval.unwrap_or(0);
        assert!((3590..=3600).contains(&left), "{left}");
        assert_eq!(
            got.topic_alias, None,
            "no alias without a Topic Alias Maximum"
        );
    }
    Ok(())
}

#[tokio::test]
async fn v5_rumqttc_subscription_options_and_identifiers() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (me, mut rx, _, _) = connect(options("so-me", broker.port())).await?;
    let (other, _other_rx, _, _) = connect(options("so-other", broker.port())).await?;
    other
        .publish("so/retained", V5QoS::AtLeastOnce, true, "r")
        .await?;
    let mut no_local = Filter::new("so/chat", V5QoS::AtLeastOnce);
    no_local.nolocal = true;
    let mut rap = Filter::new("so/retained", V5QoS::AtLeastOnce);
    rap.preserve_retain = true;
    rap.retain_forward_rule = RetainForwardRule::Never;
    me.subscribe_many_with_properties(
        [no_local, rap],
        SubscribeProperties {
            id: Some(42),
            user_properties: vec![],
        },
    )
    .await?;
    suback(&mut rx).await?;
    // Retain Handling 2: the stored "r" is not sent; own chat is not echoed (No Local).
    me.publish("so/chat", V5QoS::AtLeastOnce, false, "mine")
        .await?;
    other
        .publish("so/chat", V5QoS::AtLeastOnce, false, "yours")
        .await?;
    other
        .publish("so/retained", V5QoS::AtLeastOnce, true, "live")
        .await?;
    let p = next_publish(&mut rx).await?;
    assert_eq!(
        (topic(&p).as_str(), p.payload.as_ref()),
        ("so/chat", &b"yours"[..])
    );
    assert_eq!(
        p.properties.map(|x| x.subscription_identifiers),
        Some(vec![42])
    );
    // Retain As Published: the live retained message keeps RETAIN 1.
    let p = next_publish(&mut rx).await?;
    assert_eq!(
        (topic(&p).as_str(), p.payload.as_ref()),
        ("so/retained", &b"live"[..])
    );
    assert!(p.retain);
    Ok(())
}

#[tokio::test]
async fn v5_rumqttc_session_expiry_and_session_present() -> Result<()> {
    let broker = TestBroker::start().await?;
    let session = || {
        let mut o = options("se-rumq", broker.port());
        o.set_clean_start(false);
        o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
            session_expiry_interval: Some(60),
            ..rumqttc::v5::mqttbytes::v5::ConnectProperties::new()
        });
        o
    };
    let (c, mut rx, present, _) = connect(session()).await?;
    assert!(!present, "no session yet");
    c.subscribe("se/rumq", V5QoS::AtLeastOnce).await?;
    suback(&mut rx).await?;
    c.disconnect().await?;
    wait_for(&mut rx, "DISCONNECT sent", |e| match e {
        Event::Outgoing(rumqttc::Outgoing::Disconnect) => Some(()),
        _ => None,
    })
    .await?;
    let (publisher, _prx, _, _) = connect(options("se-pub", broker.port())).await?;
    publisher
        .publish("se/rumq", V5QoS::AtLeastOnce, false, "kept")
        .await?;
    // Session present 1 and the subscription still there [MQTT-3.2.2-3].
    let (_c, mut rx, present, _) = connect(session()).await?;
    assert!(present);
    let p = next_publish(&mut rx).await?;
    assert_eq!(p.payload.as_ref(), b"kept");
    Ok(())
}
