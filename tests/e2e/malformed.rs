//! Malformed input closes only the offending connection (MQTT 5: DISCONNECT 0x81/0x82 first);
//! other clients keep working. Packets above `max_packet_size` are refused from their header.

use anyhow::Result;
use culex_config::Config;
use culex_proto::{Protocol, QoS};
use culex_test_support::TestBroker;

use crate::*;

const MALFORMED_OR_PROTOCOL_ERROR: &[u8] = &[0x81, 0x82];

/// Raw PUBLISH bytes: `first` is the fixed header byte (type and flags).
fn raw_publish(protocol: Protocol, first: u8, topic: &[u8], packet_id: Option<u16>) -> Vec<u8> {
    let mut body = mqtt_str(topic);
    if let Some(id) = packet_id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if protocol.is_v5() {
        body.push(0); // no properties
    }
    body.extend_from_slice(b"payload");
    raw_packet(first, &body)
}

/// Raw SUBSCRIBE bytes for one filter at QoS 0.
fn raw_subscribe(protocol: Protocol, first: u8, filter: &[u8]) -> Vec<u8> {
    let mut body = 1u16.to_be_bytes().to_vec();
    if protocol.is_v5() {
        body.push(0);
    }
    body.extend_from_slice(&mqtt_str(filter));
    body.push(0);
    raw_packet(first, &body)
}

/// Connects a healthy subscriber and publisher, sends `bad` on a third connection, expects
/// that connection closed (MQTT 5: DISCONNECT with one of `v5_reasons` first), and checks the
/// healthy pair still works.
async fn bad_input_closes_only_that_connection(
    config: Config,
    protocol: Protocol,
    bad: &[u8],
    v5_reasons: &[u8],
) -> Result<()> {
    let broker = TestBroker::start_with(config).await?;
    let mut sub = connect_clean(broker.addr, protocol, "healthy-sub").await?;
    subscribe(&mut sub, 1, "ok/t", QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "healthy-pub").await?;

    let mut bad_client = connect_clean(broker.addr, protocol, "bad").await?;
    bad_client.send_bytes(bad).await?;
    expect_closed_with(&mut bad_client, v5_reasons).await?;

    publish(
        &mut publisher,
        "ok/t",
        "still fine",
        QoS::AtLeastOnce,
        false,
        1,
    )
    .await?;
    let p = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&p), "still fine");
    Ok(())
}

async fn bad(protocol: Protocol, bytes: &[u8]) -> Result<()> {
    bad_input_closes_only_that_connection(
        Config::embedded_default(),
        protocol,
        bytes,
        MALFORMED_OR_PROTOCOL_ERROR,
    )
    .await
}

// [MQTT-3.3.2-2]: no wildcards in a topic name.
#[tokio::test]
async fn v311_publish_with_wildcard_topic_closes_connection() -> Result<()> {
    let p = Protocol::V311;
    bad(p, &raw_publish(p, 0x30, b"a/+", None)).await?;
    bad(p, &raw_publish(p, 0x30, b"a/#", None)).await
}

#[tokio::test]
async fn v5_publish_with_wildcard_topic_gets_disconnect_and_close() -> Result<()> {
    let p = Protocol::V5;
    bad(p, &raw_publish(p, 0x30, b"a/+", None)).await?;
    bad(p, &raw_publish(p, 0x30, b"a/#", None)).await
}

// [MQTT-2.2.2-2] (3.1.1) / [MQTT-2.1.3-1] (5.0): reserved flags must be as specified;
// [MQTT-3.8.1-1]: SUBSCRIBE flags are 0010.
#[tokio::test]
async fn v311_wrong_reserved_flags_close_connection() -> Result<()> {
    let p = Protocol::V311;
    bad(p, &raw_subscribe(p, 0x80, b"x/y")).await?;
    bad(p, &[0xC1, 0x00]).await
}

#[tokio::test]
async fn v5_wrong_reserved_flags_get_disconnect_and_close() -> Result<()> {
    let p = Protocol::V5;
    bad(p, &raw_subscribe(p, 0x80, b"x/y")).await?;
    bad(p, &[0xC1, 0x00]).await
}

// [MQTT-1.5.3-1] / [MQTT-1.5.3-2] (3.1.1), [MQTT-1.5.4-1] / [MQTT-1.5.4-2] (5.0): ill-formed
// UTF-8 and U+0000 in strings.
#[tokio::test]
async fn v311_publish_with_invalid_utf8_topic_closes_connection() -> Result<()> {
    let p = Protocol::V311;
    bad(p, &raw_publish(p, 0x30, b"a/\xC3\x28", None)).await?;
    bad(p, &raw_publish(p, 0x30, b"a/\xED\xA0\x80", None)).await?;
    bad(p, &raw_publish(p, 0x30, b"a/\x00b", None)).await
}

#[tokio::test]
async fn v5_publish_with_invalid_utf8_topic_gets_disconnect_and_close() -> Result<()> {
    let p = Protocol::V5;
    bad(p, &raw_publish(p, 0x30, b"a/\xC3\x28", None)).await?;
    bad(p, &raw_publish(p, 0x30, b"a/\xED\xA0\x80", None)).await?;
    bad(p, &raw_publish(p, 0x30, b"a/\x00b", None)).await
}

// [MQTT-3.3.1-4]: QoS 3; [MQTT-2.3.1-1] (3.1.1) / [MQTT-2.2.1-3] (5.0): packet id 0.
#[tokio::test]
async fn v311_publish_with_qos_3_or_packet_id_0_closes_connection() -> Result<()> {
    let p = Protocol::V311;
    bad(p, &raw_publish(p, 0x36, b"a/b", Some(1))).await?;
    bad(p, &raw_publish(p, 0x32, b"a/b", Some(0))).await
}

#[tokio::test]
async fn v5_publish_with_qos_3_or_packet_id_0_gets_disconnect_and_close() -> Result<()> {
    let p = Protocol::V5;
    bad(p, &raw_publish(p, 0x36, b"a/b", Some(1))).await?;
    bad(p, &raw_publish(p, 0x32, b"a/b", Some(0))).await
}

// [MQTT-4.7.1-1] (3.1.1 [MQTT-4.7.1-2]): "#" must be last; "+" must occupy a whole level.
#[tokio::test]
async fn v311_subscribe_with_invalid_filter_closes_connection() -> Result<()> {
    let p = Protocol::V311;
    bad(p, &raw_subscribe(p, 0x82, b"a/#/b")).await?;
    bad(p, &raw_subscribe(p, 0x82, b"a/b+")).await
}

#[tokio::test]
async fn v5_subscribe_with_invalid_filter_gets_disconnect_and_close() -> Result<()> {
    let p = Protocol::V5;
    bad(p, &raw_subscribe(p, 0x82, b"a/#/b")).await?;
    bad(p, &raw_subscribe(p, 0x82, b"a/b+")).await
}

/// A PUBLISH header announcing 2000 bytes, followed by only a few of them.
fn oversized_header() -> Vec<u8> {
    let mut bytes = vec![0x30, 0xD0, 0x0F]; // remaining length 2000
    bytes.extend_from_slice(&mqtt_str(b"big"));
    bytes
}

fn small_packets() -> Config {
    let mut config = Config::embedded_default();
    config.limits.max_packet_size = 1024;
    config
}

#[tokio::test]
async fn v311_packet_above_max_packet_size_refused_from_its_header() -> Result<()> {
    bad_input_closes_only_that_connection(small_packets(), Protocol::V311, &oversized_header(), &[])
        .await
}

// 5.0 3.1.2.11.4 / [MQTT-3.2.2-15]: the server's Maximum Packet Size; DISCONNECT 0x95.
#[tokio::test]
async fn v5_packet_above_max_packet_size_gets_disconnect_0x95_from_its_header() -> Result<()> {
    bad_input_closes_only_that_connection(
        small_packets(),
        Protocol::V5,
        &oversized_header(),
        &[0x95],
    )
    .await
}

#[tokio::test]
async fn packet_just_below_max_packet_size_is_accepted() -> Result<()> {
    let broker = TestBroker::start_with(small_packets()).await?;
    for protocol in VERSIONS {
        let mut c = connect_clean(broker.addr, protocol, "fits").await?;
        subscribe(&mut c, 1, "fit/t", QoS::AtMostOnce).await?;
        // 2 (header) + 2 + 5 (topic) + 1 (v5 properties) + payload <= 1024.
        let payload = vec![b'x'; 1000];
        publish(&mut c, "fit/t", payload.clone(), QoS::AtMostOnce, false, 0).await?;
        let p = recv_publish(&mut c).await?;
        assert_eq!(p.payload.as_ref(), payload.as_slice());
        disconnect(c).await?;
    }
    Ok(())
}
