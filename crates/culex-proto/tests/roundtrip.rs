//! Property tests: every valid packet round-trips through encode and decode for each protocol
//! version, packets split at any byte decode once complete, and arbitrary bytes never panic.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use culex_proto::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

const PROTOCOLS: [Protocol; 3] = [Protocol::V31, Protocol::V311, Protocol::V5];

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9 é€\u{FFFF}😀]{0,6}"
}

fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z$é]{1,3}(/[a-z0-9 ]{0,3}){0,3}"
}

fn topic_filter() -> impl Strategy<Value = String> {
    let level = prop_oneof!["[a-z]{0,3}", Just("+".to_string())];
    (vec(level, 1..4), any::<bool>(), 0..4u8).prop_map(|(levels, hash, share)| {
        let mut f = levels.join("/");
        if f.is_empty() {
            f.push('a');
        }
        if hash {
            f.push_str("/#");
        }
        if share == 0 {
            f = format!("$share/g{share}/{f}");
        }
        f
    })
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0..=1u8)
}

/// Any valid combination of every property; `restrict` keeps those a packet may carry.
fn all_props() -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        of(any::<u32>()),
        of(text()),
        of(topic_name()),
        of(bin()),
        vec(1..=268_435_455u32, 0..3),
        of(any::<u32>()),
        of(text()),
        of(any::<u16>()),
        of(text()),
        of(bin()),
        flag(),
    );
    let b = (
        of(any::<u32>()),
        flag(),
        of(text()),
        of(text()),
        of(text()),
        of(1..=u16::MAX),
        of(any::<u16>()),
        of(1..=u16::MAX),
        flag(),
        flag(),
        vec((text(), text()), 0..3),
        of(1..=u32::MAX),
    );
    (a, b, (flag(), flag(), flag())).prop_map(|(a, b, c)| {
        Properties::from(culex_proto::PropertyValues {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: a.9,
            authentication_data: a.10,
            request_problem_information: a.11,
            will_delay_interval: b.0,
            request_response_information: b.1,
            response_information: b.2,
            server_reference: b.3,
            reason_string: b.4,
            receive_maximum: b.5,
            topic_alias_maximum: b.6,
            topic_alias: b.7,
            maximum_qos: b.8,
            retain_available: b.9,
            user_properties: b.10,
            maximum_packet_size: b.11,
            wildcard_subscription_available: c.0,
            subscription_identifier_available: c.1,
            shared_subscription_available: c.2,
        })
    })
}

/// Clears every property whose identifier is not in `allowed` (MQTT 5 table 2-4).
fn restrict(mut p: Properties, allowed: &[u8]) -> Properties {
    let keep = |id: u8| allowed.contains(&id);
    macro_rules! clear {
        ($($id:literal => $field:ident),* $(,)?) => {
            $( if !keep($id) { p.$field = Default::default(); } )*
        };
    }
    clear!(
        0x01 => payload_format_indicator, 0x02 => message_expiry_interval, 0x03 => content_type,
        0x08 => response_topic, 0x09 => correlation_data, 0x0B => subscription_identifiers,
        0x11 => session_expiry_interval, 0x12 => assigned_client_identifier,
        0x13 => server_keep_alive, 0x15 => authentication_method, 0x16 => authentication_data,
        0x17 => request_problem_information, 0x18 => will_delay_interval,
        0x19 => request_response_information, 0x1A => response_information,
        0x1C => server_reference, 0x1F => reason_string, 0x21 => receive_maximum,
        0x22 => topic_alias_maximum, 0x23 => topic_alias, 0x24 => maximum_qos,
        0x25 => retain_available, 0x26 => user_properties, 0x27 => maximum_packet_size,
        0x28 => wildcard_subscription_available, 0x29 => subscription_identifier_available,
        0x2A => shared_subscription_available,
    );
    p
}

fn props(p: Protocol, allowed: &'static [u8]) -> BoxedStrategy<Properties> {
    if p.is_v5() {
        all_props().prop_map(move |x| restrict(x, allowed)).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

const CONNECT: &[u8] = &[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27];
const WILL: &[u8] = &[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26];
const CONNACK: &[u8] = &[
    0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29,
    0x2A,
];
const PUBLISH: &[u8] = &[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26];
const ACK: &[u8] = &[0x1F, 0x26];
const SUBSCRIBE: &[u8] = &[0x0B, 0x26];
const UNSUBSCRIBE: &[u8] = &[0x26];
const DISCONNECT: &[u8] = &[0x11, 0x1C, 0x1F, 0x26];
const AUTH: &[u8] = &[0x15, 0x16, 0x1F, 0x26];

/// A reason code valid in packet type `t` for protocol `p`.
fn reason(t: u8, p: Protocol) -> BoxedStrategy<ReasonCode> {
    if p.is_v5() {
        let valid: Vec<ReasonCode> = (0..=255u8)
            .filter_map(|b| ReasonCode::from_byte(t, b))
            .collect();
        proptest::sample::select(valid).boxed()
    } else {
        let v3: &'static [ReasonCode] = match t {
            2 => &[
                ReasonCode::Success,
                ReasonCode::UnsupportedProtocolVersion,
                ReasonCode::ClientIdentifierNotValid,
                ReasonCode::ServerUnavailable,
                ReasonCode::BadUserNameOrPassword,
                ReasonCode::NotAuthorized,
            ],
            9 => &[
                ReasonCode::GrantedQoS0,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ],
            14 => &[ReasonCode::NormalDisconnection],
            _ => &[ReasonCode::Success],
        };
        proptest::sample::select(v3).boxed()
    }
}

fn connect(p: Protocol) -> impl Strategy<Value = Packet> {
    let will = of((topic_name(), bin(), qos(), any::<bool>(), props(p, WILL))).prop_map(|w| {
        w.map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
    });
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        will,
        of(text()),
        of(bin()),
        props(p, CONNECT),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                mut properties,
            )| {
                if !p.is_v5() && password.is_some() && username.is_none() {
                    username = Some(String::new());
                }
                if properties.authentication_data.is_some() {
                    properties
                        .authentication_method
                        .get_or_insert_with(|| "m".into());
                }
                Packet::Connect(Box::new(Connect {
                    protocol: p,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn publish(p: Protocol) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic_name(),
        1..=u16::MAX,
        props(p, PUBLISH),
        bin(),
    )
        .prop_map(
            move |(dup, qos, retain, mut topic, id, properties, payload)| {
                if p.is_v5() && properties.topic_alias.is_some() && id % 2 == 0 {
                    topic.clear();
                }
                Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic,
                    packet_id: (qos != QoS::AtMostOnce).then_some(id),
                    properties,
                    payload,
                })
            },
        )
}

fn pub_resp(t: u8, p: Protocol) -> impl Strategy<Value = Packet> {
    (1..=u16::MAX, reason(t, p), props(p, ACK)).prop_map(
        move |(packet_id, reason_code, properties)| {
            let r = PubResp {
                packet_id,
                reason_code,
                properties,
            };
            match t {
                4 => Packet::PubAck(r),
                5 => Packet::PubRec(r),
                6 => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }
        },
    )
}

fn subscribe(p: Protocol) -> impl Strategy<Value = Packet> {
    let options =
        (qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(move |(qos, nl, rap, rh)| {
            if !p.is_v5() {
                return SubscriptionOptions {
                    qos,
                    ..Default::default()
                };
            }
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: match rh {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    _ => RetainHandling::DoNotSend,
                },
            }
        });
    let filter = (topic_filter(), options).prop_map(|(filter, mut options)| {
        if filter.starts_with("$share/") {
            options.no_local = false;
        }
        SubscribeFilter { filter, options }
    });
    (1..=u16::MAX, vec(filter, 1..4), props(p, SUBSCRIBE)).prop_map(
        |(packet_id, filters, mut properties)| {
            properties.subscription_identifiers.truncate(1);
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        },
    )
}

fn suback(p: Protocol) -> impl Strategy<Value = Packet> {
    (1..=u16::MAX, vec(reason(9, p), 1..4), props(p, ACK)).prop_map(
        |(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        },
    )
}

fn unsubscribe(p: Protocol) -> impl Strategy<Value = Packet> {
    (
        1..=u16::MAX,
        vec(topic_filter(), 1..4),
        props(p, UNSUBSCRIBE),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn unsuback(p: Protocol) -> impl Strategy<Value = Packet> {
    let codes = if p.is_v5() {
        vec(reason(11, p), 1..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (1..=u16::MAX, codes, props(p, ACK)).prop_map(|(packet_id, reason_codes, properties)| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            reason_codes,
            properties,
        })
    })
}

fn packet(p: Protocol) -> BoxedStrategy<Packet> {
    let connack = (any::<bool>(), reason(2, p), props(p, CONNACK)).prop_map(
        move |(sp, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                // MQTT 3.1 has no session-present flag (always encoded as 0).
                session_present: sp && reason_code == ReasonCode::Success && p != Protocol::V31,
                reason_code,
                properties,
            })
        },
    );
    let disconnect = (reason(14, p), props(p, DISCONNECT)).prop_map(|(reason_code, properties)| {
        Packet::Disconnect(Disconnect {
            reason_code,
            properties,
        })
    });
    let common = prop_oneof![
        connect(p),
        connack,
        publish(p),
        pub_resp(4, p),
        pub_resp(5, p),
        pub_resp(6, p),
        pub_resp(7, p),
        subscribe(p),
        suback(p),
        unsubscribe(p),
        unsuback(p),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect,
    ];
    if p.is_v5() {
        let auth =
            (reason(15, p), props(p, AUTH), text()).prop_map(|(reason_code, mut properties, m)| {
                if reason_code != ReasonCode::Success || !properties.is_empty() {
                    properties.authentication_method.get_or_insert(m);
                }
                Packet::Auth(Auth {
                    reason_code,
                    properties,
                })
            });
        prop_oneof![14 => common, 1 => auth].boxed()
    } else {
        common.boxed()
    }
}

fn any_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    proptest::sample::select(&PROTOCOLS[..]).prop_flat_map(|p| (Just(p), packet(p)))
}

fn context(p: Protocol, packet: &Packet) -> Option<Protocol> {
    (!matches!(packet, Packet::Connect(_))).then_some(p)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn round_trip((p, packet) in any_packet()) {
        let mut buf = BytesMut::new();
        encode(&packet, p, &mut buf).unwrap();
        prop_assert_eq!(encoded_len(&packet, p).unwrap(), buf.len());
        let decoded = decode(&mut buf, context(p, &packet), u32::MAX);
        prop_assert_eq!(decoded, Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn split_buffer((p, packet) in any_packet()) {
        let mut full = BytesMut::new();
        encode(&packet, p, &mut full).unwrap();
        let mut buf = BytesMut::new();
        let ctx = context(p, &packet);
        for (i, &b) in full.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            let r = decode(&mut buf, ctx, u32::MAX);
            if i + 1 < full.len() {
                prop_assert_eq!(r, Ok(None));
                prop_assert_eq!(buf.len(), i + 1);
            } else {
                prop_assert_eq!(r, Ok(Some(packet.clone())));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..64)) {
        for ctx in [None, Some(Protocol::V31), Some(Protocol::V311), Some(Protocol::V5)] {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf, ctx, 1 << 20) {}
        }
    }

    /// Mutating one byte of a valid packet never panics; whatever decodes re-encodes.
    #[test]
    fn mutated_packets_never_panic((p, packet) in any_packet(), at in any::<usize>(), byte in any::<u8>()) {
        let mut buf = BytesMut::new();
        encode(&packet, p, &mut buf).unwrap();
        let i = at % buf.len();
        buf[i] = byte;
        let ctx = context(p, &packet);
        while let Ok(Some(decoded)) = decode(&mut buf, ctx, u32::MAX) {
            let p = match &decoded { Packet::Connect(c) => c.protocol, _ => p };
            prop_assert!(encoded_len(&decoded, p).is_ok());
        }
    }
}
