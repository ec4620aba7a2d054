//! The session with a virtual clock: QoS flows, keepalive, reconnect resumption.

use super::*;
use culex_proto::SubscriptionOptions;

fn connack(session_present: bool) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        reason_code: ReasonCode::Success,
        properties: Properties::default(),
    })
}

fn connected(opts: ConnectOptions, t0: Instant) -> ClientSession {
    let mut s = ClientSession::new(opts);
    s.connect(t0);
    assert!(matches!(s.poll_transmit(t0), Some(Packet::Connect(_))));
    s.handle_packet(connack(false), t0).unwrap();
    assert!(matches!(s.poll_event(), Some(Event::Connected(_))));
    s
}

fn drain(s: &mut ClientSession, now: Instant) -> Vec<Packet> {
    std::iter::from_fn(|| s.poll_transmit(now)).collect()
}

fn msg(qos: QoS) -> Message {
    Message::new("a/b", "x", qos)
}

#[test]
fn connect_packet_reflects_options() {
    let mut o = ConnectOptions::new("c1");
    o.password = Some(Bytes::from_static(b"pw"));
    // 3.1.1 forbids a password without a user name: it is dropped.
    assert_eq!(o.connect_packet().password, None);
    o.username = Some("u".into());
    assert_eq!(o.connect_packet().password.as_deref(), Some(&b"pw"[..]));
    o.properties.session_expiry_interval = Some(10);
    assert!(o.connect_packet().properties.is_empty());
    o.protocol = Protocol::V5;
    assert_eq!(
        o.connect_packet().properties.session_expiry_interval,
        Some(10)
    );
}

#[test]
fn refused_connack_is_an_error_with_the_code() {
    let t0 = Instant::now();
    let mut s = ClientSession::new(ConnectOptions::new("c"));
    s.connect(t0);
    let err = s
        .handle_packet(
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::NotAuthorized,
                properties: Properties::default(),
            }),
            t0,
        )
        .unwrap_err();
    assert_eq!(err.connack_code(), Some(5));
    assert!(!s.is_connected());
}

#[test]
fn packet_ids_cycle_and_skip_ids_in_use() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.max_inflight = u16::MAX;
    let mut s = connected(o, t0);
    assert_eq!(s.publish(msg(QoS::AtLeastOnce)).unwrap(), Some(1));
    assert_eq!(s.publish(msg(QoS::AtMostOnce)).unwrap(), None);
    let sub = SubscribeFilter {
        filter: "x/#".into(),
        options: SubscriptionOptions::default(),
    };
    assert_eq!(s.subscribe(vec![sub], Properties::default()).unwrap(), 2);
    assert_eq!(s.unsubscribe(vec!["x/#".into()]).unwrap(), 3);
    // Jump to the end of the range: the counter wraps to 1, which is still in flight.
    s.next_id = u16::MAX;
    assert_eq!(s.publish(msg(QoS::ExactlyOnce)).unwrap(), Some(u16::MAX));
    assert_eq!(s.publish(msg(QoS::AtLeastOnce)).unwrap(), Some(4));
    // Completing id 1 frees it for reuse.
    s.handle_packet(Packet::PubAck(PubResp::new(1)), t0)
        .unwrap();
    s.next_id = 1;
    assert_eq!(s.publish(msg(QoS::AtLeastOnce)).unwrap(), Some(1));
}

#[test]
fn packet_ids_exhausted() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.max_inflight = u16::MAX;
    let mut s = connected(o, t0);
    for _ in 0..u16::MAX {
        s.publish(msg(QoS::AtLeastOnce)).unwrap();
    }
    assert!(matches!(
        s.publish(msg(QoS::AtLeastOnce)),
        Err(ClientError::NoPacketIdAvailable)
    ));
    // QoS 0 needs no identifier.
    assert!(s.publish(msg(QoS::AtMostOnce)).is_ok());
}

#[test]
fn qos2_outgoing_flow() {
    let t0 = Instant::now();
    let mut s = connected(ConnectOptions::new("c"), t0);
    let id = s.publish(msg(QoS::ExactlyOnce)).unwrap().unwrap();
    let sent = drain(&mut s, t0);
    assert!(
        matches!(&sent[..], [Packet::Publish(p)] if p.packet_id == Some(id) && p.qos == QoS::ExactlyOnce)
    );
    // PUBCOMP before PUBREC is ignored; the flow is still waiting.
    s.handle_packet(Packet::PubComp(PubResp::new(id)), t0)
        .unwrap();
    assert_eq!(s.poll_event(), None);
    s.handle_packet(Packet::PubRec(PubResp::new(id)), t0)
        .unwrap();
    assert_eq!(drain(&mut s, t0), vec![Packet::PubRel(PubResp::new(id))]);
    assert_eq!(s.poll_event(), None);
    // A repeated PUBREC is answered with PUBREL again.
    s.handle_packet(Packet::PubRec(PubResp::new(id)), t0)
        .unwrap();
    assert_eq!(drain(&mut s, t0), vec![Packet::PubRel(PubResp::new(id))]);
    s.handle_packet(Packet::PubComp(PubResp::new(id)), t0)
        .unwrap();
    assert_eq!(
        s.poll_event(),
        Some(Event::Published {
            packet_id: id,
            reason_code: ReasonCode::Success
        })
    );
    assert!(s.is_idle());
}

#[test]
fn qos2_outgoing_refused_by_pubrec_v5() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.protocol = Protocol::V5;
    let mut s = connected(o, t0);
    let id = s.publish(msg(QoS::ExactlyOnce)).unwrap().unwrap();
    drain(&mut s, t0);
    let mut rec = PubResp::new(id);
    rec.reason_code = ReasonCode::NotAuthorized;
    s.handle_packet(Packet::PubRec(rec), t0).unwrap();
    assert!(drain(&mut s, t0).is_empty());
    assert_eq!(
        s.poll_event(),
        Some(Event::Published {
            packet_id: id,
            reason_code: ReasonCode::NotAuthorized
        })
    );
}

#[test]
fn qos2_incoming_delivered_once() {
    let t0 = Instant::now();
    let mut s = connected(ConnectOptions::new("c"), t0);
    let publish = Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "t".into(),
        packet_id: Some(7),
        properties: Properties::default(),
        payload: Bytes::from_static(b"p"),
    };
    s.handle_packet(Packet::Publish(publish.clone()), t0)
        .unwrap();
    assert_eq!(s.poll_event(), Some(Event::Message(publish.clone())));
    assert_eq!(drain(&mut s, t0), vec![Packet::PubRec(PubResp::new(7))]);
    // The server retransmits (DUP) before it saw our PUBREC: no second delivery.
    let dup = Publish {
        dup: true,
        ..publish.clone()
    };
    s.handle_packet(Packet::Publish(dup), t0).unwrap();
    assert_eq!(s.poll_event(), None);
    assert_eq!(drain(&mut s, t0), vec![Packet::PubRec(PubResp::new(7))]);
    s.handle_packet(Packet::PubRel(PubResp::new(7)), t0)
        .unwrap();
    assert_eq!(drain(&mut s, t0), vec![Packet::PubComp(PubResp::new(7))]);
    // After PUBREL the identifier is free: a new message with it is delivered.
    s.handle_packet(Packet::Publish(publish.clone()), t0)
        .unwrap();
    assert_eq!(s.poll_event(), Some(Event::Message(publish)));
}

#[test]
fn manual_acks_wait_for_the_application() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.manual_acks = true;
    let mut s = connected(o, t0);
    let p1 = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: Some(3),
        properties: Properties::default(),
        payload: Bytes::from_static(b"a"),
    };
    let p2 = Publish {
        qos: QoS::ExactlyOnce,
        packet_id: Some(4),
        ..p1.clone()
    };
    s.handle_packet(Packet::Publish(p1.clone()), t0).unwrap();
    s.handle_packet(Packet::Publish(p2.clone()), t0).unwrap();
    assert_eq!(s.poll_event(), Some(Event::Message(p1)));
    assert_eq!(s.poll_event(), Some(Event::Message(p2.clone())));
    assert_eq!(drain(&mut s, t0), vec![]);
    // A retransmission of the held QoS 2 message: neither reported nor answered.
    let dup = Publish {
        dup: true,
        ..p2.clone()
    };
    s.handle_packet(Packet::Publish(dup.clone()), t0).unwrap();
    assert_eq!(s.poll_event(), None);
    assert_eq!(drain(&mut s, t0), vec![]);
    s.ack(4, QoS::ExactlyOnce);
    s.ack(3, QoS::AtLeastOnce);
    assert_eq!(
        drain(&mut s, t0),
        vec![
            Packet::PubRec(PubResp::new(4)),
            Packet::PubAck(PubResp::new(3))
        ]
    );
    // Once acknowledged, a retransmission is answered by the session again.
    s.handle_packet(Packet::Publish(dup), t0).unwrap();
    assert_eq!(drain(&mut s, t0), vec![Packet::PubRec(PubResp::new(4))]);
    s.handle_packet(Packet::PubRel(PubResp::new(4)), t0)
        .unwrap();
    assert_eq!(drain(&mut s, t0), vec![Packet::PubComp(PubResp::new(4))]);
}

#[test]
fn qos1_incoming_is_acked() {
    let t0 = Instant::now();
    let mut s = connected(ConnectOptions::new("c"), t0);
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "t".into(),
        packet_id: Some(3),
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    s.handle_packet(Packet::Publish(publish.clone()), t0)
        .unwrap();
    assert_eq!(s.poll_event(), Some(Event::Message(publish)));
    assert_eq!(drain(&mut s, t0), vec![Packet::PubAck(PubResp::new(3))]);
}

#[test]
fn inflight_limit_queues_and_releases() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.max_inflight = 2;
    let mut s = connected(o, t0);
    for _ in 0..4 {
        s.publish(msg(QoS::AtLeastOnce)).unwrap();
    }
    assert_eq!(drain(&mut s, t0).len(), 2);
    assert_eq!(s.pending_publishes(), 4);
    s.handle_packet(Packet::PubAck(PubResp::new(1)), t0)
        .unwrap();
    let sent = drain(&mut s, t0);
    assert!(matches!(&sent[..], [Packet::Publish(p)] if p.packet_id == Some(3)));
}

#[test]
fn server_receive_maximum_limits_inflight() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.protocol = Protocol::V5;
    let mut s = ClientSession::new(o);
    s.connect(t0);
    drain(&mut s, t0);
    let props = Properties::from(culex_proto::PropertyValues {
        receive_maximum: Some(1),
        maximum_qos: Some(1),
        ..Default::default()
    });
    s.handle_packet(
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: props,
        }),
        t0,
    )
    .unwrap();
    s.publish(msg(QoS::AtLeastOnce)).unwrap();
    s.publish(msg(QoS::AtLeastOnce)).unwrap();
    assert_eq!(drain(&mut s, t0).len(), 1);
    assert!(matches!(
        s.publish(msg(QoS::ExactlyOnce)),
        Err(ClientError::Unsupported(_))
    ));
}

#[test]
fn keepalive_pings_and_times_out() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.keep_alive = 10;
    let mut s = connected(o, t0);
    let secs = |n| t0 + Duration::from_secs(n);
    assert_eq!(s.poll_timeout(), Some(secs(10)));
    s.handle_timeout(secs(9)).unwrap();
    assert!(drain(&mut s, secs(9)).is_empty());
    // Traffic both ways restarts the interval.
    s.publish(msg(QoS::AtMostOnce)).unwrap();
    drain(&mut s, secs(5));
    s.handle_packet(Packet::PingResp, secs(5)).unwrap();
    assert_eq!(s.poll_event(), Some(Event::PingResp));
    assert_eq!(s.poll_timeout(), Some(secs(15)));
    s.handle_timeout(secs(15)).unwrap();
    assert_eq!(drain(&mut s, secs(15)), vec![Packet::PingReq]);
    // The answer is due within half an interval.
    assert_eq!(s.poll_timeout(), Some(secs(20)));
    assert_eq!(s.liveness_deadline(), Some(secs(20)));
    s.handle_packet(Packet::PingResp, secs(16)).unwrap();
    assert_eq!(s.poll_timeout(), Some(secs(25)));
    s.handle_timeout(secs(25)).unwrap();
    assert_eq!(drain(&mut s, secs(25)), vec![Packet::PingReq]);
    s.handle_timeout(secs(29)).unwrap();
    assert!(matches!(
        s.handle_timeout(secs(30)),
        Err(ClientError::KeepAliveTimeout)
    ));
    assert!(!s.is_connected());
}

/// A client that only sends QoS 0 never hears from the server unless it pings: the PINGREQ
/// is due one interval after the last packet *received*, however recently it sent.
#[test]
fn one_way_traffic_still_pings_and_detects_a_dead_server() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.keep_alive = 10;
    let mut s = connected(o, t0);
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut pings = Vec::new();
    // A QoS 0 publish every 200 ms for 60 s; the server answers every PINGREQ at once.
    for tick in 1..=300u64 {
        let now = at(tick * 200);
        s.handle_timeout(now).unwrap();
        s.publish(msg(QoS::AtMostOnce)).unwrap();
        for p in drain(&mut s, now) {
            if p == Packet::PingReq {
                pings.push(now);
                s.handle_packet(Packet::PingResp, now).unwrap();
            }
        }
    }
    assert_eq!(pings.len(), 6, "one PINGREQ per interval: {pings:?}");
    assert_eq!(pings[0], at(10_000));
    // Now the server goes silent: the next PINGREQ goes unanswered and the link is
    // declared dead within 1.5 intervals of the last packet received (t = 60 s).
    let mut dead_at = None;
    for tick in 301..=500u64 {
        let now = at(tick * 200);
        if s.handle_timeout(now).is_err() {
            dead_at = Some(now);
            break;
        }
        s.publish(msg(QoS::AtMostOnce)).unwrap();
        drain(&mut s, now);
    }
    assert_eq!(dead_at, Some(at(75_000)));
}

/// Any packet from the server proves it alive, PINGRESP or not.
#[test]
fn any_packet_answers_a_ping() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.keep_alive = 4;
    let mut s = connected(o, t0);
    let secs = |n| t0 + Duration::from_secs(n);
    s.handle_timeout(secs(4)).unwrap();
    assert_eq!(drain(&mut s, secs(4)), vec![Packet::PingReq]);
    let publish = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    };
    s.handle_packet(Packet::Publish(publish), secs(5)).unwrap();
    assert_eq!(s.poll_timeout(), Some(secs(8)));
    assert_eq!(s.liveness_deadline(), Some(secs(11)));
    s.handle_timeout(secs(7)).unwrap();
    assert!(s.is_connected());
}

/// After DISCONNECT the session sends nothing more, but a message the server had already
/// sent is still reported (not lost while the transport closes).
#[test]
fn closing_session_still_takes_what_arrives() {
    let t0 = Instant::now();
    let mut s = connected(ConnectOptions::new("c"), t0);
    s.disconnect(ReasonCode::NormalDisconnection);
    assert!(!s.is_connected());
    assert_eq!(s.poll_timeout(), None);
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: Some(5),
        properties: Properties::default(),
        payload: Bytes::from_static(b"late"),
    };
    s.handle_packet(Packet::Publish(publish.clone()), t0)
        .unwrap();
    assert_eq!(s.poll_event(), Some(Event::Message(publish)));
    // Only the DISCONNECT goes out: no PUBACK after it.
    assert_eq!(
        drain(&mut s, t0),
        vec![Packet::Disconnect(Disconnect::new(
            ReasonCode::NormalDisconnection
        ))]
    );
    assert!(s.publish(msg(QoS::AtMostOnce)).is_err());
}

#[test]
fn keepalive_zero_and_server_keep_alive() {
    let t0 = Instant::now();
    let mut o = ConnectOptions::new("c");
    o.keep_alive = 0;
    let s = connected(o.clone(), t0);
    assert_eq!(s.poll_timeout(), None);
    o.protocol = Protocol::V5;
    let mut s = ClientSession::new(o);
    s.connect(t0);
    drain(&mut s, t0);
    let props = Properties::from(culex_proto::PropertyValues {
        server_keep_alive: Some(5),
        assigned_client_identifier: Some("auto-1".into()),
        ..Default::default()
    });
    s.handle_packet(
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: props,
        }),
        t0,
    )
    .unwrap();
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    assert_eq!(s.client_id(), "auto-1");
}

#[test]
fn reconnect_with_session_resends_with_dup() {
    let t0 = Instant::now();
    let mut s = connected(ConnectOptions::new("c"), t0);
    let a = s.publish(msg(QoS::AtLeastOnce)).unwrap().unwrap();
    let b = s.publish(msg(QoS::ExactlyOnce)).unwrap().unwrap();
    drain(&mut s, t0);
    s.handle_packet(Packet::PubRec(PubResp::new(b)), t0)
        .unwrap();
    drain(&mut s, t0);
    s.connection_lost();
    assert!(s.publish(msg(QoS::AtMostOnce)).is_err());
    s.connect(t0);
    drain(&mut s, t0);
    s.handle_packet(connack(true), t0).unwrap();
    let sent = drain(&mut s, t0);
    assert!(matches!(&sent[0], Packet::Publish(p) if p.dup && p.packet_id == Some(a)));
    assert_eq!(sent[1], Packet::PubRel(PubResp::new(b)));
}

#[test]
fn reconnect_without_session_restarts_flows() {
    let t0 = Instant::now();
    let mut s = connected(ConnectOptions::new("c"), t0);
    let a = s.publish(msg(QoS::AtLeastOnce)).unwrap().unwrap();
    let b = s.publish(msg(QoS::ExactlyOnce)).unwrap().unwrap();
    drain(&mut s, t0);
    s.handle_packet(Packet::PubRec(PubResp::new(b)), t0)
        .unwrap();
    drain(&mut s, t0);
    s.connection_lost();
    s.connect(t0);
    drain(&mut s, t0);
    s.handle_packet(connack(false), t0).unwrap();
    let sent = drain(&mut s, t0);
    assert!(matches!(&sent[..], [Packet::Publish(p)] if p.dup && p.packet_id == Some(a)));
    assert_eq!(
        s.poll_event(),
        Some(Event::Published {
            packet_id: b,
            reason_code: ReasonCode::Success
        })
    );
}

#[test]
fn server_packets_a_client_must_not_receive() {
    let t0 = Instant::now();
    let mut s = connected(ConnectOptions::new("c"), t0);
    assert!(matches!(
        s.handle_packet(Packet::PingReq, t0),
        Err(ClientError::Protocol(_))
    ));
    let mut s = ClientSession::new(ConnectOptions::new("c"));
    s.connect(t0);
    assert!(matches!(
        s.handle_packet(Packet::PingResp, t0),
        Err(ClientError::Protocol(_))
    ));
}

#[test]
fn invalid_topics_are_rejected() {
    let t0 = Instant::now();
    let mut s = connected(ConnectOptions::new("c"), t0);
    assert!(matches!(
        s.publish(Message::new("a/#", "", QoS::AtMostOnce)),
        Err(ClientError::InvalidTopic { .. })
    ));
    assert!(matches!(
        s.unsubscribe(vec!["a/#/b".into()]),
        Err(ClientError::InvalidTopic { .. })
    ));
}
