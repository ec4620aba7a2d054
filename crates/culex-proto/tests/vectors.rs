//! Byte-exact vectors, hand-built from the specification: good packets decode to the expected
//! value and encode back to the same bytes; bad packets fail with the expected rule.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use bytes::{Bytes, BytesMut};
use culex_proto::*;

const V31: Protocol = Protocol::V31;
const V311: Protocol = Protocol::V311;
const V5: Protocol = Protocol::V5;

fn dec(bytes: &[u8], p: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let r = decode(&mut buf, p, u32::MAX);
    match &r {
        Ok(Some(_)) => assert!(buf.is_empty(), "bytes left after {bytes:02x?}"),
        _ => assert_eq!(&buf[..], bytes, "buffer changed by a failed decode"),
    }
    r
}

/// Decodes `bytes` as one whole packet and checks it equals `expected`.
fn decodes_to(bytes: &[u8], p: Protocol, expected: &Packet) {
    let ctx = if matches!(expected, Packet::Connect(_)) {
        None
    } else {
        Some(p)
    };
    let got = dec(bytes, ctx).unwrap_or_else(|e| panic!("{bytes:02x?}: {e}"));
    assert_eq!(got.as_ref(), Some(expected), "decoding {bytes:02x?}");
}

/// Decodes and encodes: `bytes` is the canonical encoding of `expected`.
fn good(bytes: &[u8], p: Protocol, expected: Packet) {
    decodes_to(bytes, p, &expected);
    let mut out = BytesMut::new();
    encode(&expected, p, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "encoding {expected:?}");
    assert_eq!(encoded_len(&expected, p).unwrap(), bytes.len());
}

fn malformed(bytes: &[u8], p: Option<Protocol>, rule: &str) {
    match dec(bytes, p) {
        Err(DecodeError::Malformed { rule: r, .. }) if r == rule => {}
        other => panic!("{bytes:02x?}: expected malformed {rule}, got {other:?}"),
    }
}

fn protocol_err(bytes: &[u8], p: Option<Protocol>, rule: &str) {
    match dec(bytes, p) {
        Err(DecodeError::Protocol { rule: r, .. }) if r == rule => {}
        other => panic!("{bytes:02x?}: expected protocol error {rule}, got {other:?}"),
    }
}

/// Builds a packet from a first byte and a body, computing a one-byte remaining length.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![first, body.len() as u8];
    v.extend_from_slice(body);
    v
}

fn s(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(x.as_bytes());
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn props() -> Properties {
    Properties::default()
}

fn connect(protocol: Protocol, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: props(),
    }
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn connect_v311_v31() {
    good(
        b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc",
        V311,
        Packet::Connect(Box::new(connect(V311, "abc"))),
    );
    good(
        b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x03abc",
        V31,
        Packet::Connect(Box::new(connect(V31, "abc"))),
    );
    // 3.1 client identifiers are not length-limited by the codec.
    let long = "x".repeat(40);
    let bytes = pkt(0x10, &cat(&[&s("MQIsdp"), b"\x03\x02\x00\x3c", &s(&long)]));
    good(&bytes, V31, Packet::Connect(Box::new(connect(V31, &long))));
}

#[test]
fn connect_v5_full() {
    let bytes = pkt(
        0x10,
        &cat(&[
            &s("MQTT"),
            b"\x05\xee\x00\x0a",
            b"\x05\x11\x00\x00\x00\x1e", // Session Expiry Interval 30
            &s("c"),
            b"\x02\x01\x01", // will: Payload Format Indicator 1
            &s("a/b"),
            &s("hi"),
            &s("u"),
            b"\x00\x02\x01\x02",
        ]),
    );
    assert_eq!(bytes.len(), 2 + 38);
    let mut c = connect(V5, "c");
    c.keep_alive = 10;
    c.properties.session_expiry_interval = Some(30);
    c.will = Some(LastWill {
        topic: "a/b".into(),
        payload: Bytes::from_static(b"hi"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::from(culex_proto::PropertyValues {
            payload_format_indicator: Some(1),
            ..props().into_values()
        }),
    });
    c.username = Some("u".into());
    c.password = Some(Bytes::from_static(&[1, 2]));
    good(&bytes, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_password_without_username_is_allowed() {
    let bytes = pkt(
        0x10,
        &cat(&[&s("MQTT"), b"\x05\x42\x00\x00\x00", &s(""), &s("pw")]),
    );
    let mut c = connect(V5, "");
    c.keep_alive = 0;
    c.password = Some(Bytes::from_static(b"pw"));
    good(&bytes, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_errors() {
    let with_flags =
        |level: u8, flags: u8| pkt(0x10, &cat(&[&s("MQTT"), &[level, flags, 0, 60], &s("abc")]));
    malformed(&with_flags(4, 0x03), None, "[MQTT-3.1.2-3]");
    malformed(&with_flags(4, 0x0a), None, "[MQTT-3.1.2-11]");
    malformed(&with_flags(4, 0x22), None, "[MQTT-3.1.2-13]");
    malformed(&with_flags(4, 0x1e), None, "[MQTT-3.1.2-12]");
    malformed(&with_flags(4, 0x42), None, "3.1.1 [MQTT-3.1.2-22]");
    // Truncated: the user name announced by the flags is missing.
    malformed(&with_flags(4, 0x82), None, "[2.1.4]");
    // Bad strings.
    let bad = |id: &[u8]| pkt(0x10, &cat(&[&s("MQTT"), b"\x04\x02\x00\x3c", id]));
    malformed(&bad(b"\x00\x02\xc3\x28"), None, "[MQTT-1.5.4-1]");
    malformed(&bad(b"\x00\x03\xed\xa0\x80"), None, "[MQTT-1.5.4-1]"); // a surrogate
    malformed(&bad(b"\x00\x02a\x00"), None, "[MQTT-1.5.4-2]");
    // U+FFFF is allowed.
    assert!(dec(&bad(b"\x00\x03\xef\xbf\xbf"), None).unwrap().is_some());
    // Trailing bytes after the payload.
    malformed(&bad(b"\x00\x01a\x00"), None, "[2.1.4]");
    // Will topic with a wildcard.
    let will = pkt(
        0x10,
        &cat(&[&s("MQTT"), b"\x04\x06\x00\x3c", &s("c"), &s("a/#"), &s("x")]),
    );
    malformed(&will, None, "[MQTT-3.1.3-11]");
    // Unsupported name / level.
    for (name, level) in [("MQTT", 3u8), ("MQTT", 6), ("MQIsdp", 4), ("MQTTX", 4)] {
        let bytes = pkt(0x10, &cat(&[&s(name), &[level, 2, 0, 60], &s("a")]));
        assert_eq!(
            dec(&bytes, None),
            Err(DecodeError::UnsupportedProtocol {
                name: name.into(),
                level
            })
        );
    }
    // Second CONNECT; a first packet that is not CONNECT.
    protocol_err(&with_flags(4, 2), Some(V311), "[MQTT-3.1.0-2]");
    protocol_err(b"\xc0\x00", None, "[MQTT-3.1.0-1]");
    protocol_err(b"\x30", None, "[MQTT-3.1.0-1]");
    // MQTT 5 properties.
    let v5 = |p: &[u8]| pkt(0x10, &cat(&[&s("MQTT"), b"\x05\x02\x00\x3c", p, &s("a")]));
    protocol_err(&v5(b"\x03\x21\x00\x00"), None, "[3.1.2.11.3]");
    protocol_err(&v5(b"\x05\x27\x00\x00\x00\x00"), None, "[3.1.2.11.4]");
    protocol_err(&v5(b"\x02\x17\x02"), None, "[3.1.2.11.7]");
    protocol_err(&v5(b"\x02\x19\x02"), None, "[3.1.2.11.6]");
    protocol_err(&v5(b"\x03\x16\x00\x00"), None, "[3.1.2.11.10]");
    protocol_err(&v5(b"\x04\x21\x00\x01\x21"), None, "[2.2.2.2]"); // duplicate, caught before its value
}

// ---------------------------------------------------------------- CONNACK

#[test]
fn connack() {
    let ack = |sp, rc| ConnAck {
        session_present: sp,
        reason_code: rc,
        properties: props(),
    };
    good(
        b"\x20\x02\x01\x00",
        V311,
        Packet::ConnAck(ack(true, ReasonCode::Success)),
    );
    good(
        b"\x20\x02\x00\x05",
        V31,
        Packet::ConnAck(ack(false, ReasonCode::NotAuthorized)),
    );
    good(
        b"\x20\x03\x00\x00\x00",
        V5,
        Packet::ConnAck(ack(false, ReasonCode::Success)),
    );
    let mut a = ack(false, ReasonCode::Success);
    a.properties.receive_maximum = Some(10);
    a.properties.maximum_qos = Some(1);
    good(
        b"\x20\x08\x00\x00\x05\x21\x00\x0a\x24\x01",
        V5,
        Packet::ConnAck(a),
    );
    // A v5-only reason maps to a 3.1.1 return code on encode.
    let mut out = BytesMut::new();
    encode(
        &Packet::ConnAck(ack(false, ReasonCode::Banned)),
        V311,
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[..], b"\x20\x02\x00\x05");

    malformed(b"\x20\x02\x02\x00", Some(V311), "[MQTT-3.2.2-1]");
    malformed(b"\x20\x02\x00\x06", Some(V311), "[3.2.2.2]");
    malformed(b"\x20\x03\x00\x10\x00", Some(V5), "[3.2.2.2]");
    protocol_err(b"\x20\x02\x01\x05", Some(V311), "[MQTT-3.2.2-6]");
    protocol_err(b"\x20\x05\x00\x00\x02\x24\x02", Some(V5), "[3.2.2.3.4]");
    protocol_err(b"\x20\x05\x00\x00\x02\x25\x07", Some(V5), "[3.2.2.3.5]");
    malformed(b"\x20\x02\x00\x00", Some(V5), "[2.1.4]"); // property length missing
    malformed(b"\x20\x04\x00\x00\x00\x00", Some(V5), "[2.1.4]"); // trailing byte
}

// ---------------------------------------------------------------- PUBLISH

fn publish(qos: QoS, topic: &str, id: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id,
        properties: props(),
        payload: Bytes::from_static(payload),
    }
}

#[test]
fn publish_good() {
    for p in [V31, V311] {
        good(
            b"\x32\x0a\x00\x03a/b\x00\x07hey",
            p,
            Packet::Publish(publish(QoS::AtLeastOnce, "a/b", Some(7), b"hey")),
        );
        good(
            b"\x30\x05\x00\x03a/b",
            p,
            Packet::Publish(publish(QoS::AtMostOnce, "a/b", None, b"")),
        );
    }
    let mut x = publish(QoS::ExactlyOnce, "t", Some(1), b"p");
    x.dup = true;
    x.retain = true;
    good(b"\x3d\x06\x00\x01t\x00\x01p", V311, Packet::Publish(x));
    good(
        b"\x30\x07\x00\x03a/b\x00h",
        V5,
        Packet::Publish(publish(QoS::AtMostOnce, "a/b", None, b"h")),
    );
    // Empty topic with a Topic Alias.
    let mut x = publish(QoS::AtMostOnce, "", None, b"x");
    x.properties.topic_alias = Some(1);
    good(b"\x30\x07\x00\x00\x03\x23\x00\x01x", V5, Packet::Publish(x));
    // Several Subscription Identifiers and User Properties keep their order.
    let mut x = publish(QoS::AtMostOnce, "t", None, b"");
    x.properties.subscription_identifiers = vec![1, 200];
    x.properties.user_properties = vec![("k".into(), "v".into()), ("k".into(), "w".into())];
    good(
        b"\x30\x17\x00\x01t\x13\x0b\x01\x0b\xc8\x01\x26\x00\x01k\x00\x01v\x26\x00\x01k\x00\x01w",
        V5,
        Packet::Publish(x),
    );
}

#[test]
fn publish_errors() {
    malformed(b"\x36\x05\x00\x01t\x00\x01", Some(V311), "[MQTT-3.3.1-4]");
    malformed(b"\x38\x03\x00\x01t", Some(V311), "[MQTT-3.3.1-2]");
    malformed(b"\x30\x05\x00\x03a/+", Some(V311), "[MQTT-3.3.2-2]");
    malformed(b"\x30\x06\x00\x03a/#\x00", Some(V5), "[MQTT-3.3.2-2]");
    protocol_err(b"\x32\x05\x00\x01t\x00\x00", Some(V311), "[MQTT-2.2.1-3]");
    malformed(b"\x30\x02\x00\x00", Some(V311), "[MQTT-4.7.3-1]");
    protocol_err(b"\x30\x03\x00\x00\x00", Some(V5), "[3.3.2.1]");
    protocol_err(
        b"\x30\x07\x00\x01t\x03\x23\x00\x00",
        Some(V5),
        "[MQTT-3.3.2-8]",
    );
    protocol_err(
        b"\x30\x08\x00\x01t\x04\x01\x01\x01\x00",
        Some(V5),
        "[2.2.2.2]",
    ); // duplicate
    protocol_err(b"\x30\x07\x00\x01t\x03\x21\x00\x01", Some(V5), "[2.2.2.2]"); // not allowed
    malformed(b"\x30\x06\x00\x01t\x02\x05\x00", Some(V5), "[2.2.2.2]"); // unknown id
    malformed(b"\x30\x06\x00\x01t\x05\x01\x00", Some(V5), "[2.1.4]"); // length past end
    protocol_err(b"\x30\x06\x00\x01t\x02\x01\x02", Some(V5), "[3.3.2.3.2]");
    protocol_err(b"\x30\x06\x00\x01t\x02\x0b\x00", Some(V5), "[3.8.2.1.2]");
    malformed(
        b"\x30\x08\x00\x01t\x04\x0b\x80\x80\x00",
        Some(V5),
        "[MQTT-1.5.5-1]",
    );
    malformed(
        b"\x30\x0a\x00\x01t\x06\x08\x00\x03a/+",
        Some(V5),
        "[MQTT-3.3.2-14]",
    );
    // PUBLISH before CONNECT.
    protocol_err(b"\x30\x03\x00\x01t", None, "[MQTT-3.1.0-1]");
}

// ---------------------------------------------------------------- acknowledgements

#[test]
fn pub_resp() {
    for p in [V31, V311, V5] {
        good(b"\x40\x02\x00\x07", p, Packet::PubAck(PubResp::new(7)));
        good(b"\x50\x02\x00\x07", p, Packet::PubRec(PubResp::new(7)));
        good(b"\x62\x02\x00\x07", p, Packet::PubRel(PubResp::new(7)));
        good(b"\x70\x02\x00\x07", p, Packet::PubComp(PubResp::new(7)));
        protocol_err(b"\x40\x02\x00\x00", Some(p), "[MQTT-2.2.1-3]");
        malformed(b"\x60\x02\x00\x01", Some(p), "[MQTT-2.1.3-1]");
        malformed(b"\x41\x02\x00\x01", Some(p), "[MQTT-2.1.3-1]");
        malformed(b"\x40\x01\x00", Some(p), "[2.1.4]");
    }
    let mut r = PubResp::new(7);
    r.reason_code = ReasonCode::NoMatchingSubscribers;
    good(b"\x40\x03\x00\x07\x10", V5, Packet::PubAck(r.clone()));
    r.reason_code = ReasonCode::UnspecifiedError;
    r.properties.reason_string = Some("bad".into());
    good(
        b"\x40\x0a\x00\x07\x80\x06\x1f\x00\x03bad",
        V5,
        Packet::PubAck(r),
    );
    let mut r = PubResp::new(1);
    r.reason_code = ReasonCode::PacketIdentifierNotFound;
    good(b"\x62\x03\x00\x01\x92", V5, Packet::PubRel(r));
    // Long forms of a bare success are accepted.
    decodes_to(
        b"\x40\x03\x00\x07\x00",
        V5,
        &Packet::PubAck(PubResp::new(7)),
    );
    decodes_to(
        b"\x40\x04\x00\x07\x00\x00",
        V5,
        &Packet::PubAck(PubResp::new(7)),
    );

    malformed(b"\x40\x03\x00\x07\x00", Some(V311), "[2.1.4]");
    malformed(b"\x40\x03\x00\x07\x05", Some(V5), "[2.4]");
    malformed(b"\x62\x03\x00\x07\x10", Some(V5), "[2.4]");
    protocol_err(
        b"\x40\x07\x00\x07\x00\x03\x02\x00\x00",
        Some(V5),
        "[2.2.2.2]",
    );
}

// ---------------------------------------------------------------- SUBSCRIBE / SUBACK

fn sub(filter: &str, qos: QoS) -> SubscribeFilter {
    SubscribeFilter {
        filter: filter.into(),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    }
}

#[test]
fn subscribe() {
    for p in [V31, V311] {
        good(
            b"\x82\x08\x00\x01\x00\x03a/+\x01",
            p,
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![sub("a/+", QoS::AtLeastOnce)],
                properties: props(),
            }),
        );
    }
    let mut f = sub("a/#", QoS::ExactlyOnce);
    f.options.no_local = true;
    f.options.retain_as_published = true;
    f.options.retain_handling = RetainHandling::SendIfNew;
    let mut x = Subscribe {
        packet_id: 1,
        filters: vec![f],
        properties: props(),
    };
    x.properties.subscription_identifiers = vec![5];
    good(
        b"\x82\x0b\x00\x01\x02\x0b\x05\x00\x03a/#\x1e",
        V5,
        Packet::Subscribe(x),
    );
    // A shared subscription without No Local.
    let shared = pkt(0x82, &cat(&[b"\x00\x01\x00", &s("$share/g/a"), b"\x00"]));
    assert!(dec(&shared, Some(V5)).unwrap().is_some());

    protocol_err(b"\x82\x02\x00\x01", Some(V311), "3.1.1 [MQTT-3.8.3-3]");
    protocol_err(b"\x82\x03\x00\x01\x00", Some(V5), "[MQTT-3.8.3-2]");
    protocol_err(
        b"\x82\x05\x00\x00\x00\x01a\x00",
        Some(V311),
        "[MQTT-2.2.1-3]",
    );
    malformed(
        b"\x80\x06\x00\x01\x00\x01a\x00",
        Some(V311),
        "[MQTT-2.1.3-1]",
    );
    malformed(
        b"\x82\x06\x00\x01\x00\x01a\x03",
        Some(V311),
        "3.1.1 [MQTT-3.8.3-4]",
    );
    malformed(
        b"\x82\x06\x00\x01\x00\x01a\x04",
        Some(V311),
        "3.1.1 [MQTT-3.8.3-4]",
    );
    malformed(
        b"\x82\x07\x00\x01\x00\x00\x01a\x40",
        Some(V5),
        "[MQTT-3.8.3-5]",
    );
    protocol_err(b"\x82\x07\x00\x01\x00\x00\x01a\x03", Some(V5), "[3.8.3.1]");
    protocol_err(b"\x82\x07\x00\x01\x00\x00\x01a\x30", Some(V5), "[3.8.3.1]");
    malformed(
        b"\x82\x09\x00\x01\x00\x03a/#\x00\x00",
        Some(V311),
        "[2.1.4]",
    ); // truncated pair
    malformed(
        b"\x82\x0a\x00\x01\x00\x05a/#/b\x00",
        Some(V311),
        "[MQTT-4.7.1-1]",
    );
    malformed(
        b"\x82\x08\x00\x01\x00\x03a+b\x00",
        Some(V311),
        "[MQTT-4.7.1-2]",
    );
    let empty_group = pkt(0x82, &cat(&[b"\x00\x01\x00", &s("$share//a"), b"\x00"]));
    malformed(&empty_group, Some(V5), "[MQTT-4.8.2-1]");
    let nl_shared = pkt(0x82, &cat(&[b"\x00\x01\x00", &s("$share/g/a"), b"\x04"]));
    protocol_err(&nl_shared, Some(V5), "[MQTT-3.8.3-4]");
    protocol_err(
        b"\x82\x09\x00\x01\x02\x0b\x00\x00\x01a\x00",
        Some(V5),
        "[3.8.2.1.2]",
    );
    protocol_err(
        b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00",
        Some(V5),
        "[2.2.2.2]",
    );
}

#[test]
fn suback() {
    let x = SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::GrantedQoS0, ReasonCode::UnspecifiedError],
        properties: props(),
    };
    good(b"\x90\x04\x00\x01\x00\x80", V311, Packet::SubAck(x));
    let x = SubAck {
        packet_id: 1,
        reason_codes: vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::WildcardSubscriptionsNotSupported,
        ],
        properties: props(),
    };
    good(
        b"\x90\x05\x00\x01\x00\x01\xa2",
        V5,
        Packet::SubAck(x.clone()),
    );
    // Any failure maps to 0x80 for 3.1.1.
    let mut out = BytesMut::new();
    encode(&Packet::SubAck(x), V311, &mut out).unwrap();
    assert_eq!(&out[..], b"\x90\x04\x00\x01\x01\x80");

    malformed(b"\x90\x03\x00\x01\x03", Some(V311), "[MQTT-3.9.3-2]");
    malformed(b"\x90\x03\x00\x01\x81", Some(V311), "[MQTT-3.9.3-2]");
    malformed(b"\x90\x04\x00\x01\x00\x10", Some(V5), "[MQTT-3.9.3-2]");
    protocol_err(b"\x90\x02\x00\x01", Some(V311), "[MQTT-3.9.3-1]");
}

// ---------------------------------------------------------------- UNSUBSCRIBE / UNSUBACK

#[test]
fn unsubscribe_unsuback() {
    let x = Unsubscribe {
        packet_id: 2,
        filters: vec!["a".into()],
        properties: props(),
    };
    good(
        b"\xa2\x05\x00\x02\x00\x01a",
        V311,
        Packet::Unsubscribe(x.clone()),
    );
    good(b"\xa2\x06\x00\x02\x00\x00\x01a", V5, Packet::Unsubscribe(x));
    protocol_err(b"\xa2\x02\x00\x02", Some(V311), "[MQTT-3.10.3-2]");
    malformed(b"\xa0\x05\x00\x02\x00\x01a", Some(V311), "[MQTT-2.1.3-1]");
    malformed(b"\xa2\x06\x00\x02\x00\x01#\x00", Some(V311), "[2.1.4]");

    let v3 = UnsubAck {
        packet_id: 2,
        reason_codes: vec![],
        properties: props(),
    };
    good(b"\xb0\x02\x00\x02", V311, Packet::UnsubAck(v3));
    let v5 = UnsubAck {
        packet_id: 2,
        reason_codes: vec![ReasonCode::NoSubscriptionExisted],
        properties: props(),
    };
    good(
        b"\xb0\x04\x00\x02\x00\x11",
        V5,
        Packet::UnsubAck(v5.clone()),
    );
    // 3.1.1 UNSUBACK has only the packet identifier.
    let mut out = BytesMut::new();
    encode(&Packet::UnsubAck(v5), V311, &mut out).unwrap();
    assert_eq!(&out[..], b"\xb0\x02\x00\x02");
    malformed(b"\xb0\x03\x00\x02\x00", Some(V311), "[2.1.4]");
    malformed(b"\xb0\x04\x00\x02\x00\x01", Some(V5), "[2.4]");
    protocol_err(b"\xb0\x03\x00\x02\x00", Some(V5), "[MQTT-3.11.3-1]");
}

// ---------------------------------------------------------------- PING, DISCONNECT, AUTH

#[test]
fn ping_disconnect_auth() {
    for p in [V31, V311, V5] {
        good(b"\xc0\x00", p, Packet::PingReq);
        good(b"\xd0\x00", p, Packet::PingResp);
        good(
            b"\xe0\x00",
            p,
            Packet::Disconnect(Disconnect::new(ReasonCode::NormalDisconnection)),
        );
        malformed(b"\xc0\x01\x00", Some(p), "[2.1.4]");
        malformed(b"\xd2\x00", Some(p), "[MQTT-2.1.3-1]");
        malformed(b"\x00\x00", Some(p), "[2.1.2]");
    }
    malformed(b"\xe0\x01\x00", Some(V311), "[2.1.4]");
    malformed(b"\xf0\x00", Some(V311), "[2.1.2]");
    let d = Disconnect::new(ReasonCode::DisconnectWithWillMessage);
    good(b"\xe0\x01\x04", V5, Packet::Disconnect(d));
    let mut d = Disconnect::new(ReasonCode::SessionTakenOver);
    d.properties.session_expiry_interval = Some(0);
    good(
        b"\xe0\x07\x8e\x05\x11\x00\x00\x00\x00",
        V5,
        Packet::Disconnect(d),
    );
    // Disconnect without will is never in 3.1.1 on the wire.
    let mut out = BytesMut::new();
    encode(
        &Packet::Disconnect(Disconnect::new(ReasonCode::ServerBusy)),
        V311,
        &mut out,
    )
    .unwrap();
    assert_eq!(&out[..], b"\xe0\x00");
    malformed(b"\xe0\x01\x01", Some(V5), "[2.4]");
    protocol_err(b"\xe0\x04\x00\x02\x27\x01", Some(V5), "[2.2.2.2]");

    good(
        b"\xf0\x00",
        V5,
        Packet::Auth(Auth {
            reason_code: ReasonCode::Success,
            properties: props(),
        }),
    );
    let mut a = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: props(),
    };
    a.properties.authentication_method = Some("gs".into());
    good(b"\xf0\x07\x18\x05\x15\x00\x02gs", V5, Packet::Auth(a));
    protocol_err(b"\xf0\x02\x18\x00", Some(V5), "[3.15.2.2.2]");
    malformed(b"\xf0\x01\x18", Some(V5), "[2.1.4]");
    malformed(b"\xf1\x00", Some(V5), "[MQTT-2.1.3-1]");
    assert!(encode(&Packet::PingReq, V5, &mut BytesMut::new()).is_ok());
    assert!(matches!(
        encode(
            &Packet::Auth(Auth {
                reason_code: ReasonCode::Success,
                properties: props()
            }),
            V311,
            &mut BytesMut::new()
        ),
        Err(EncodeError::Invalid { .. })
    ));
}

// ---------------------------------------------------------------- fixed header

#[test]
fn fixed_header() {
    // Remaining length: shortest form, at most 4 bytes.
    malformed(b"\xc0\x80\x80\x80\x80\x01", Some(V311), "[1.5.5]");
    malformed(b"\xc0\x80\x00", Some(V311), "[MQTT-1.5.5-1]");
    assert_eq!(
        peek_header(b"\x30\xff\xff\xff\x7f", u32::MAX),
        Ok(Some(FixedHeader {
            packet_type: 3,
            flags: 0,
            remaining_length: 268_435_455,
            header_len: 5
        }))
    );
    assert_eq!(peek_header(b"\x30\xff\xff", u32::MAX), Ok(None));
    assert_eq!(peek_header(b"", u32::MAX), Ok(None));
    assert_eq!(
        peek_header(b"\x30\xc1\x02", 1024),
        Ok(Some(FixedHeader {
            packet_type: 3,
            flags: 0,
            remaining_length: 321,
            header_len: 3
        }))
    );
}

#[test]
fn packet_too_large_from_the_header_alone() {
    // Only the fixed header of a CONNECT announcing 268435455 bytes.
    let mut buf = BytesMut::from(&b"\x10\xff\xff\xff\x7f"[..]);
    assert_eq!(
        decode(&mut buf, None, 1000),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1000
        })
    );
    assert_eq!(
        decode(&mut buf, None, 1000).unwrap_err().reason_code(),
        ReasonCode::PacketTooLarge
    );
    // The limit counts the fixed header: a 10-byte packet fits in 10, not in 9.
    let pkt = b"\x30\x08\x00\x01t\x00\x00\x00\x00\x00";
    assert!(decode(&mut BytesMut::from(&pkt[..]), Some(V311), 10)
        .unwrap()
        .is_some());
    assert!(matches!(
        decode(&mut BytesMut::from(&pkt[..2]), Some(V311), 9),
        Err(DecodeError::PacketTooLarge { size: 10, max: 9 })
    ));
}

#[test]
fn decodes_packets_one_after_another() {
    let mut buf = BytesMut::from(&b"\xc0\x00\x40\x02\x00\x07\xd0"[..]);
    assert_eq!(
        decode(&mut buf, Some(V311), u32::MAX),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(
        decode(&mut buf, Some(V311), u32::MAX),
        Ok(Some(Packet::PubAck(PubResp::new(7))))
    );
    assert_eq!(decode(&mut buf, Some(V311), u32::MAX), Ok(None));
    assert_eq!(&buf[..], b"\xd0");
}

#[test]
fn error_reason_codes() {
    let e = dec(b"\x00\x00", Some(V5)).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    let e = dec(b"\x30\x03\x00\x00\x00", Some(V5)).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
}

// ---------------------------------------------------------------- encoder checks

#[test]
fn encode_errors() {
    let mut out = BytesMut::new();
    let bad = |p: Packet, proto| encode(&p, proto, &mut BytesMut::new()).unwrap_err();
    let mut x = publish(QoS::AtLeastOnce, "t", None, b"");
    assert!(matches!(
        bad(Packet::Publish(x.clone()), V311),
        EncodeError::Invalid { .. }
    ));
    x.packet_id = Some(0);
    assert!(matches!(
        bad(Packet::Publish(x.clone()), V311),
        EncodeError::Invalid { .. }
    ));
    x.packet_id = Some(1);
    x.properties.receive_maximum = Some(1);
    assert!(matches!(
        bad(Packet::Publish(x.clone()), V5),
        EncodeError::Invalid { .. }
    ));
    // Properties are dropped for older versions.
    encode(&Packet::Publish(x), V311, &mut out).unwrap();
    assert_eq!(&out[..], b"\x32\x05\x00\x01t\x00\x01");
    let long = "x".repeat(70_000);
    assert!(matches!(
        bad(
            Packet::Publish(publish(QoS::AtMostOnce, &long, None, b"")),
            V311
        ),
        EncodeError::TooLong { len: 70_000, .. }
    ));
    let mut r = PubResp::new(1);
    r.reason_code = ReasonCode::GrantedQoS1;
    assert!(matches!(
        bad(Packet::PubAck(r), V5),
        EncodeError::Invalid { .. }
    ));
    let mut s = Subscribe {
        packet_id: 1,
        filters: vec![sub("a", QoS::AtMostOnce)],
        properties: props(),
    };
    s.properties.subscription_identifiers = vec![268_435_456];
    assert!(matches!(
        bad(Packet::Subscribe(s.clone()), V5),
        EncodeError::VarIntOutOfRange { .. }
    ));
    s.properties.subscription_identifiers = vec![1, 2];
    assert!(matches!(
        bad(Packet::Subscribe(s), V5),
        EncodeError::Invalid { .. }
    ));
    assert!(matches!(
        bad(Packet::Connect(Box::new(connect(V5, "a"))), V311),
        EncodeError::Invalid { .. }
    ));
    // Too large for the remaining length.
    let huge = vec![0u8; 268_435_456];
    let view = PublishView {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t",
        packet_id: None,
        properties: &props(),
        payload: &huge,
    };
    assert!(matches!(
        publish_encoded_len(&view, V311),
        Err(EncodeError::PacketTooLarge { .. })
    ));
    let before = out.len();
    assert!(encode_publish(&view, V311, &mut out).is_err());
    assert_eq!(out.len(), before, "a failed encode appends nothing");
}

#[test]
fn publish_view_matches_publish() {
    let mut x = publish(QoS::AtLeastOnce, "a/b", Some(9), b"payload");
    x.properties.message_expiry_interval = Some(10);
    x.retain = true;
    for p in [V31, V311, V5] {
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        encode(&Packet::Publish(x.clone()), p, &mut a).unwrap();
        encode_publish(&PublishView::from(&x), p, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            publish_encoded_len(&PublishView::from(&x), p).unwrap(),
            a.len()
        );
    }
}

#[test]
fn aliased_publish_matches_a_publish_with_the_alias_property() {
    let mut x = publish(QoS::AtLeastOnce, "a/b", Some(9), b"payload");
    x.properties.content_type = Some("text/plain".into());
    x.properties.user_properties = vec![("k".into(), "v".into())];
    for topic in ["a/b", ""] {
        let mut view = PublishView::from(&x);
        view.topic = topic;
        let aliased = AliasedPublish { view, alias: 7 };
        let mut out = BytesMut::new();
        encode_aliased_publish(&aliased, &mut out).unwrap();
        assert_eq!(aliased_publish_encoded_len(&aliased).unwrap(), out.len());
        let mut expected = x.clone();
        expected.topic = topic.into();
        expected.properties.topic_alias = Some(7);
        match dec(&out, Some(V5)).unwrap().unwrap() {
            Packet::Publish(p) => assert_eq!(p, expected),
            other => panic!("{other:?}"),
        }
    }
    let mut bad = AliasedPublish {
        view: PublishView::from(&x),
        alias: 0,
    };
    assert!(encode_aliased_publish(&bad, &mut BytesMut::new()).is_err());
    bad.alias = 1;
    let mut with_alias = x.clone();
    with_alias.properties.topic_alias = Some(2);
    bad.view = PublishView::from(&with_alias);
    assert!(encode_aliased_publish(&bad, &mut BytesMut::new()).is_err());
}

#[test]
fn bridge_bit_is_taken_from_a_3_1_1_or_3_1_connect_only() {
    // CONNECT, MQTT level 0x84, clean session, keepalive 60, client id "b".
    let bridged = [
        0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 0x84, 0x02, 0, 60, 0, 1, b'b',
    ];
    let mut buf = BytesMut::from(&bridged[..]);
    assert!(take_bridge_bit(&mut buf));
    assert_eq!(buf[8], 4);
    let Some(Packet::Connect(c)) = decode(&mut buf, None, u32::MAX).unwrap() else {
        panic!("not a CONNECT");
    };
    assert_eq!((c.protocol, c.client_id.as_str()), (V311, "b"));

    let mut v31 = BytesMut::from(
        &[
            0x10, 0x0f, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 0x83, 0x02, 0, 60, 0, 1, b'b',
        ][..],
    );
    assert!(take_bridge_bit(&mut v31));
    assert_eq!(v31[10], 3);

    // Plain 3.1.1, MQTT 5 with the bit (not a thing), and a truncated header: untouched.
    for bytes in [
        &[
            0x10, 0x0d, 0, 4, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0, 60, 0, 1, b'b',
        ][..],
        &[
            0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 0x85, 0x02, 0, 60, 0, 0, 1, b'b',
        ][..],
        &[0x10, 0x0d, 0, 4, b'M', b'Q'][..],
    ] {
        let mut buf = BytesMut::from(bytes);
        assert!(!take_bridge_bit(&mut buf));
        assert_eq!(&buf[..], bytes);
    }
}
