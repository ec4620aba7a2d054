//! Topic filters: `+` and `#`, `$`-topics, overlapping subscriptions, unsubscribe and shared
//! subscriptions.

use std::collections::BTreeSet;

use anyhow::Result;
use culex_proto::{Protocol, QoS};
use culex_test_support::{RawClient, TestBroker};

use crate::*;

/// Subscribes `filter`, publishes every topic in `topics` (in order) and then a marker on
/// `marker` (which must match), and returns the topics received before the marker.
async fn delivered_topics(
    protocol: Protocol,
    filter: &str,
    topics: &[&str],
    marker: &str,
) -> Result<Vec<String>> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_clean(broker.addr, protocol, "matcher").await?;
    subscribe(&mut sub, 1, filter, QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "matcher-pub").await?;
    for (i, t) in topics.iter().enumerate() {
        publish(
            &mut publisher,
            t,
            "m",
            QoS::AtLeastOnce,
            false,
            i as u16 + 1,
        )
        .await?;
    }
    publish(
        &mut publisher,
        marker,
        "marker",
        QoS::AtLeastOnce,
        false,
        1000,
    )
    .await?;
    let mut got = Vec::new();
    loop {
        let p = recv_publish_ack(&mut sub).await?;
        if p.topic == marker && text(&p) == "marker" {
            return Ok(got);
        }
        got.push(p.topic);
    }
}

async fn single_level_wildcard(protocol: Protocol) -> Result<()> {
    // Section 4.7.1.3 (3.1.1 [MQTT-4.7.1-3]): "+" matches exactly one level, including an empty one.
    let got = delivered_topics(
        protocol,
        "a/+/c",
        &[
            "a/b/c", "a/b/d", "a/b/c/d", "a/c", "b/b/c", "a//c", "a/xyz/c",
        ],
        "a/m/c",
    )
    .await?;
    assert_eq!(got, ["a/b/c", "a//c", "a/xyz/c"]);
    Ok(())
}

#[tokio::test]
async fn v311_plus_matches_exactly_one_level() -> Result<()> {
    single_level_wildcard(Protocol::V311).await
}

#[tokio::test]
async fn v5_plus_matches_exactly_one_level() -> Result<()> {
    single_level_wildcard(Protocol::V5).await
}

async fn multi_level_wildcard(protocol: Protocol) -> Result<()> {
    // Section 4.7.1.2 (3.1.1 [MQTT-4.7.1-2]): "#" matches the parent and any number of child levels.
    let got = delivered_topics(
        protocol,
        "a/#",
        &["a", "a/b", "a/b/c/d", "b/a", "ab", "a/"],
        "a/marker",
    )
    .await?;
    assert_eq!(got, ["a", "a/b", "a/b/c/d", "a/"]);
    Ok(())
}

#[tokio::test]
async fn v311_hash_matches_parent_and_all_children() -> Result<()> {
    multi_level_wildcard(Protocol::V311).await
}

#[tokio::test]
async fn v5_hash_matches_parent_and_all_children() -> Result<()> {
    multi_level_wildcard(Protocol::V5).await
}

async fn dollar_topics(protocol: Protocol) -> Result<()> {
    // [MQTT-4.7.2-1]: wildcards at the first level do not match topics starting with "$".
    let got = delivered_topics(protocol, "#", &["$bar/x", "$foo", "plain/x"], "marker").await?;
    assert_eq!(got, ["plain/x"]);
    let got = delivered_topics(protocol, "+/x", &["$foo/x", "foo/x"], "m/x").await?;
    assert_eq!(got, ["foo/x"]);
    // An explicit "$" level does match.
    let got = delivered_topics(protocol, "$foo/+", &["$foo/x", "foo/x"], "$foo/m").await?;
    assert_eq!(got, ["$foo/x"]);
    Ok(())
}

#[tokio::test]
async fn v311_leading_wildcards_do_not_match_dollar_topics() -> Result<()> {
    dollar_topics(Protocol::V311).await
}

#[tokio::test]
async fn v5_leading_wildcards_do_not_match_dollar_topics() -> Result<()> {
    dollar_topics(Protocol::V5).await
}

#[tokio::test]
async fn v311_overlapping_subscriptions_deliver_one_copy_at_highest_qos() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_v311(broker.addr, "overlap").await?;
    let (codes, _) = subscribe_collect(
        &mut sub,
        1,
        &[("ov/#", QoS::AtMostOnce), ("ov/b", QoS::AtLeastOnce)],
    )
    .await?;
    assert_eq!(codes.iter().map(|c| c.as_u8()).collect::<Vec<_>>(), [0, 1]);
    let mut publisher = connect_v311(broker.addr, "overlap-pub").await?;
    publish(&mut publisher, "ov/b", "both", QoS::AtLeastOnce, false, 1).await?;
    publish(
        &mut publisher,
        "ov/marker",
        "marker",
        QoS::AtMostOnce,
        false,
        0,
    )
    .await?;
    // [MQTT-3.3.5-1] (3.1.1): one copy, at the maximum QoS of the matching subscriptions.
    let p = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&p), "both");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let next = recv_publish_ack(&mut sub).await?;
    assert_eq!(text(&next), "marker", "second copy delivered: {next:?}");
    Ok(())
}

async fn unsubscribe_stops_delivery(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut sub = connect_clean(broker.addr, protocol, "unsub").await?;
    subscribe(&mut sub, 1, "un/t", QoS::AtLeastOnce).await?;
    subscribe(&mut sub, 2, "un/marker", QoS::AtLeastOnce).await?;
    let mut publisher = connect_clean(broker.addr, protocol, "unsub-pub").await?;
    publish(&mut publisher, "un/t", "before", QoS::AtLeastOnce, false, 1).await?;
    assert_eq!(text(&recv_publish_ack(&mut sub).await?), "before");

    // [MQTT-3.10.4-4] / [MQTT-3.10.4-5]: UNSUBACK with the same id.
    unsubscribe(&mut sub, 3, "un/t").await?;
    publish(&mut publisher, "un/t", "after", QoS::AtLeastOnce, false, 2).await?;
    publish(
        &mut publisher,
        "un/marker",
        "marker",
        QoS::AtLeastOnce,
        false,
        3,
    )
    .await?;
    // [MQTT-3.10.4-2]: no new messages for the removed filter.
    let p = recv_publish_ack(&mut sub).await?;
    assert_eq!(
        (p.topic.as_str(), text(&p).as_str()),
        ("un/marker", "marker"),
        "delivered after UNSUBACK: {p:?}"
    );
    Ok(())
}

#[tokio::test]
async fn v311_unsubscribe_stops_delivery() -> Result<()> {
    unsubscribe_stops_delivery(Protocol::V311).await
}

#[tokio::test]
async fn v5_unsubscribe_stops_delivery() -> Result<()> {
    unsubscribe_stops_delivery(Protocol::V5).await
}

/// Reads QoS 1 messages (acking them) until the "end" marker; returns the payloads before it.
async fn collect_until_end(mut c: RawClient) -> Result<Vec<String>> {
    let mut got = Vec::new();
    loop {
        let p = recv_publish_ack(&mut c).await?;
        if p.topic == "sh/end" {
            return Ok(got);
        }
        got.push(text(&p));
    }
}

async fn shared_subscription(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut members = Vec::new();
    for name in ["member-1", "member-2"] {
        let mut m = connect_clean(broker.addr, protocol, name).await?;
        subscribe(&mut m, 1, "$share/g/sh/t", QoS::AtLeastOnce).await?;
        subscribe(&mut m, 2, "sh/end", QoS::AtLeastOnce).await?;
        members.push(m);
    }
    let mut publisher = connect_clean(broker.addr, protocol, "sh-pub").await?;
    for i in 0..20u16 {
        publish(
            &mut publisher,
            "sh/t",
            i.to_string(),
            QoS::AtLeastOnce,
            false,
            i + 1,
        )
        .await?;
    }
    publish(
        &mut publisher,
        "sh/end",
        "end",
        QoS::AtLeastOnce,
        false,
        100,
    )
    .await?;

    let tasks: Vec<_> = members
        .into_iter()
        .map(|m| tokio::spawn(collect_until_end(m)))
        .collect();
    let mut per_member = Vec::new();
    for t in tasks {
        per_member.push(t.await??);
    }
    let total: usize = per_member.iter().map(Vec::len).sum();
    let distinct: BTreeSet<u16> = per_member
        .iter()
        .flatten()
        .map(|s| s.parse().unwrap())
        .collect();
    // Each message to exactly one member.
    assert_eq!(total, 20, "{per_member:?}");
    assert_eq!(distinct, (0..20).collect(), "{per_member:?}");
    // Both members take part.
    assert!(
        per_member.iter().all(|m| !m.is_empty()),
        "one member got everything: {per_member:?}"
    );
    Ok(())
}

#[tokio::test]
async fn v311_shared_subscription_delivers_each_message_to_one_member() -> Result<()> {
    shared_subscription(Protocol::V311).await
}

#[tokio::test]
async fn v5_shared_subscription_delivers_each_message_to_one_member() -> Result<()> {
    shared_subscription(Protocol::V5).await
}

/// `max_topic_levels` / `max_topic_length`: a PUBLISH beyond them is acknowledged with 0x90
/// Topic Name invalid (MQTT 5) and not routed; a filter beyond them gets SUBACK 0x8F (3.1.1:
/// 0x80). Mosquitto refuses topics deeper than 200 levels the same way.
#[tokio::test]
async fn topics_beyond_the_configured_depth_and_length_are_refused() -> Result<()> {
    let mut config = culex_config::Config::embedded_default();
    config.limits.max_topic_levels = 3;
    config.limits.max_topic_length = 20;
    let broker = TestBroker::start_with(config).await?;
    let mut c = connect_v5(broker.addr, "deep").await?;
    let (codes, _) = subscribe_collect(
        &mut c,
        1,
        &[
            ("a/b/#", QoS::AtLeastOnce),
            ("a/b/c/#", QoS::AtLeastOnce),
            ("long/filter/xxxxxxxxxxxx", QoS::AtLeastOnce),
        ],
    )
    .await?;
    assert_eq!(
        codes,
        vec![
            culex_proto::ReasonCode::GrantedQoS1,
            culex_proto::ReasonCode::TopicFilterInvalid,
            culex_proto::ReasonCode::TopicFilterInvalid
        ]
    );
    c.send(&culex_proto::Packet::Publish(publish_packet(
        "a/b/c/d",
        "deep",
        QoS::AtLeastOnce,
        false,
        7,
    )))
    .await?;
    match c.recv().await? {
        culex_proto::Packet::PubAck(a) => {
            assert_eq!(a.reason_code, culex_proto::ReasonCode::TopicNameInvalid)
        }
        other => anyhow::bail!("expected PUBACK, got {other:?}"),
    }
    // Within the limits: routed to the subscription above.
    publish(&mut c, "a/b/c", "ok", QoS::AtLeastOnce, false, 8).await?;
    let p = recv_publish_ack(&mut c).await?;
    assert_eq!(p.topic, "a/b/c");
    let mut v3 = connect_clean(broker.addr, Protocol::V311, "deep-v3").await?;
    let (codes, _) = subscribe_collect(&mut v3, 1, &[("a/b/c/#", QoS::AtMostOnce)]).await?;
    assert_eq!(codes[0].as_u8(), 0x80, "{codes:?}");
    Ok(())
}

/// `mount_point`: a listener's clients live under a prefix: what they publish (and their will)
/// gets it in front, their filters too, and what they receive has it taken off; clients of
/// other listeners see the full topics.
#[tokio::test]
async fn mount_point_isolates_a_listeners_clients_under_a_prefix() -> Result<()> {
    use culex_config::{Config, Listener};
    let config = Config {
        listeners: vec![
            Listener {
                mount_point: Some("site1/".into()),
                ..Listener::new("127.0.0.1", 0)
            },
            Listener::new("127.0.0.1", 0),
        ],
        ..Config::default()
    };
    let broker = TestBroker::start_exact(config).await?;
    let (mounted, plain) = (broker.local_addrs()[0], broker.local_addrs()[1]);
    let mut watcher = connect_clean(plain, Protocol::V311, "mp-watcher").await?;
    subscribe(&mut watcher, 1, "#", QoS::AtMostOnce).await?;
    let mut inside = connect_clean(mounted, Protocol::V5, "mp-inside").await?;
    subscribe(&mut inside, 1, "t/#", QoS::AtMostOnce).await?;

    publish(
        &mut inside,
        "t/a",
        "from inside",
        QoS::AtLeastOnce,
        false,
        1,
    )
    .await?;
    let p = recv_publish(&mut watcher).await?;
    assert_eq!(
        (p.topic.as_str(), text(&p).as_str()),
        ("site1/t/a", "from inside")
    );
    let p = recv_publish(&mut inside).await?;
    assert_eq!(p.topic, "t/a", "the mount point is taken off");

    let mut outside = connect_clean(plain, Protocol::V311, "mp-outside").await?;
    publish(&mut outside, "t/c", "outside", QoS::AtLeastOnce, false, 2).await?;
    publish(
        &mut outside,
        "site1/t/b",
        "for site1",
        QoS::AtLeastOnce,
        false,
        3,
    )
    .await?;
    let p = recv_publish(&mut inside).await?;
    assert_eq!((p.topic.as_str(), text(&p).as_str()), ("t/b", "for site1"));
    Ok(())
}
