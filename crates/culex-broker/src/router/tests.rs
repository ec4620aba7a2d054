//! Router unit tests with a virtual clock: every `now` is made up, nothing sleeps.

use std::time::{Duration, Instant};

use bytes::Bytes;
use culex_proto::{
    LastWill, Packet, Properties, Protocol, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use tokio::sync::oneshot;

use super::Router;
use crate::api::{Command, ConnectOutcome, ConnectRequest, DisconnectKind, Outbound};
use crate::message::Message;
use crate::outbox::{outbox, OutboxReceiver};
use crate::settings::BrokerSettings;

struct Client {
    conn: u64,
    rx: OutboxReceiver,
    outcome: ConnectOutcome,
}

fn connect(
    r: &mut Router,
    now: Instant,
    conn: u64,
    id: &str,
    clean: bool,
    expiry: u32,
    will: Option<LastWill>,
) -> Client {
    let (rx, mut reply_rx) = send_connect(r, now, conn, id, clean, expiry, will);
    let outcome = reply_rx.try_recv().expect("router answers CONNECT at once");
    Client { conn, rx, outcome }
}

/// Sends CONNECT; the answer may come later (a takeover waits for the old connection's end).
fn send_connect(
    r: &mut Router,
    now: Instant,
    conn: u64,
    id: &str,
    clean: bool,
    expiry: u32,
    will: Option<LastWill>,
) -> (OutboxReceiver, oneshot::Receiver<ConnectOutcome>) {
    let (tx, rx) = outbox(r.settings().outbox_capacity(20));
    let (reply, reply_rx) = oneshot::channel();
    r.handle(
        Command::Connect(Box::new(ConnectRequest {
            conn,
            protocol: Protocol::V5,
            client_id: id.into(),
            clean_start: clean,
            session_expiry: expiry,
            receive_maximum: u16::MAX,
            maximum_packet_size: u32::MAX,
            will,
            username: None,
            access: None,
            queue: None,
            outbox: tx,
            reply,
        })),
        now,
    );
    (rx, reply_rx)
}

fn subscribe(r: &mut Router, now: Instant, c: &mut Client, filter: &str, qos: QoS) {
    r.handle(
        Command::Subscribe {
            conn: c.conn,
            subscribe: Subscribe {
                packet_id: 1,
                filters: vec![SubscribeFilter {
                    filter: filter.into(),
                    options: SubscriptionOptions {
                        qos,
                        ..Default::default()
                    },
                }],
                properties: Properties::default(),
            },
        },
        now,
    );
    match c.rx.try_recv() {
        Ok(Outbound::Packet(p)) => match *p {
            Packet::SubAck(a) => assert_eq!(a.reason_codes, vec![ReasonCode::granted(qos)]),
            other => panic!("expected SUBACK, got {other:?}"),
        },
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn publish(r: &mut Router, now: Instant, conn: u64, topic: &str, qos: QoS, retain: bool) {
    r.handle(
        Command::Publish {
            conn,
            ack: false,
            publish: Publish {
                dup: false,
                qos,
                retain,
                topic: topic.into(),
                packet_id: (qos != QoS::AtMostOnce).then_some(7),
                properties: Properties::default(),
                payload: Bytes::from_static(b"hello"),
            },
            publication: None,
        },
        now,
    );
}

fn disconnect(r: &mut Router, now: Instant, conn: u64, kind: DisconnectKind) {
    r.handle(
        Command::Disconnect {
            conn,
            kind,
            session_expiry: None,
            inbound_qos2: vec![],
        },
        now,
    );
}

fn will(topic: &str, delay: Option<u32>) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::from(culex_proto::PropertyValues {
            will_delay_interval: delay,
            ..Default::default()
        }),
    }
}

fn next_topic(c: &mut Client) -> Option<String> {
    match c.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => Some(d.message.topic.to_string()),
        Ok(other) => panic!("expected a delivery, got {other:?}"),
        Err(_) => None,
    }
}

#[test]
fn routes_to_matching_subscriber_only() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut a = connect(&mut r, t0, 1, "a", true, 0, None);
    let mut b = connect(&mut r, t0, 2, "b", true, 0, None);
    subscribe(&mut r, t0, &mut a, "x/+", QoS::AtLeastOnce);
    subscribe(&mut r, t0, &mut b, "y/#", QoS::AtLeastOnce);
    publish(&mut r, t0, 2, "x/1", QoS::AtLeastOnce, false);
    assert_eq!(next_topic(&mut a).as_deref(), Some("x/1"));
    assert_eq!(next_topic(&mut b), None);
}

#[test]
fn delayed_will_fires_after_its_delay_and_not_before() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut watcher = connect(&mut r, t0, 1, "w", true, 0, None);
    subscribe(&mut r, t0, &mut watcher, "wills/#", QoS::AtLeastOnce);
    let _dying = connect(
        &mut r,
        t0,
        2,
        "d",
        true,
        100,
        Some(will("wills/d", Some(5))),
    );
    disconnect(&mut r, t0, 2, DisconnectKind::WithWill);
    assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(5)));
    r.tick(t0 + Duration::from_secs(4));
    assert_eq!(next_topic(&mut watcher), None);
    r.tick(t0 + Duration::from_secs(5));
    assert_eq!(next_topic(&mut watcher).as_deref(), Some("wills/d"));
}

#[test]
fn reconnect_before_will_delay_cancels_the_will() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut watcher = connect(&mut r, t0, 1, "w", true, 0, None);
    subscribe(&mut r, t0, &mut watcher, "wills/#", QoS::AtLeastOnce);
    let _d = connect(
        &mut r,
        t0,
        2,
        "d",
        false,
        100,
        Some(will("wills/d", Some(5))),
    );
    disconnect(&mut r, t0, 2, DisconnectKind::WithWill);
    let back = connect(
        &mut r,
        t0 + Duration::from_secs(2),
        3,
        "d",
        false,
        100,
        None,
    );
    assert!(back.outcome.session_present);
    r.tick(t0 + Duration::from_secs(10));
    assert_eq!(next_topic(&mut watcher), None);
}

#[test]
fn session_end_publishes_a_will_whose_delay_is_longer() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut watcher = connect(&mut r, t0, 1, "w", true, 0, None);
    subscribe(&mut r, t0, &mut watcher, "wills/#", QoS::AtLeastOnce);
    let _d = connect(
        &mut r,
        t0,
        2,
        "d",
        false,
        10,
        Some(will("wills/d", Some(60))),
    );
    disconnect(&mut r, t0, 2, DisconnectKind::WithWill);
    r.tick(t0 + Duration::from_secs(9));
    assert_eq!(next_topic(&mut watcher), None);
    assert_eq!(r.session_count(), 2);
    r.tick(t0 + Duration::from_secs(10));
    assert_eq!(next_topic(&mut watcher).as_deref(), Some("wills/d"));
    assert_eq!(r.session_count(), 1, "the expired session is gone");
    assert_eq!(r.stats().sessions_expired, 1);
}

#[test]
fn normal_disconnect_discards_the_will() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut watcher = connect(&mut r, t0, 1, "w", true, 0, None);
    subscribe(&mut r, t0, &mut watcher, "wills/#", QoS::AtLeastOnce);
    let _d = connect(&mut r, t0, 2, "d", true, 0, Some(will("wills/d", None)));
    disconnect(&mut r, t0, 2, DisconnectKind::Normal);
    r.tick(t0 + Duration::from_secs(100));
    assert_eq!(next_topic(&mut watcher), None);
    assert_eq!(r.stats().wills_published, 0);
}

#[test]
fn offline_persistent_session_gets_queued_messages_on_return() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut sub = connect(&mut r, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut sub, "t", QoS::AtLeastOnce);
    disconnect(&mut r, t0, 1, DisconnectKind::Normal);
    let _p = connect(&mut r, t0, 2, "p", true, 0, None);
    publish(&mut r, t0, 2, "t", QoS::AtLeastOnce, false);
    publish(&mut r, t0, 2, "t", QoS::AtMostOnce, false);
    assert_eq!(r.stats().dropped_offline_qos0, 1);
    let mut back = connect(&mut r, t0, 3, "s", false, u32::MAX, None);
    assert!(back.outcome.session_present);
    assert_eq!(next_topic(&mut back).as_deref(), Some("t"));
    assert_eq!(next_topic(&mut back), None);
}

#[test]
fn unacked_inflight_is_redelivered_with_dup_on_reconnect() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut sub = connect(&mut r, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut sub, "t", QoS::ExactlyOnce);
    let _p = connect(&mut r, t0, 2, "p", true, 0, None);
    publish(&mut r, t0, 2, "t", QoS::ExactlyOnce, false);
    let first = match sub.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => d,
        other => panic!("{other:?}"),
    };
    assert!(!first.dup);
    disconnect(&mut r, t0, 1, DisconnectKind::WithWill);
    let mut back = connect(&mut r, t0, 3, "s", false, u32::MAX, None);
    match back.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => {
            assert!(d.dup);
            assert_eq!(d.packet_id, first.packet_id);
            assert_eq!(d.qos, QoS::ExactlyOnce);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn qos2_publish_already_sent_does_not_expire_before_pubrec() {
    // [MQTT-4.3.3-7]: once a QoS 2 PUBLISH is sent, its Message Expiry no longer applies: the
    // redelivery after a reconnect still happens, long after the message expired; a queued
    // (never sent) copy of an expired message is dropped [MQTT-3.3.2-5].
    let t0 = Instant::now();
    let settings = BrokerSettings {
        max_inflight_messages: 1,
        ..BrokerSettings::default()
    };
    let mut r = Router::new(settings);
    let mut sub = connect(&mut r, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut sub, "t", QoS::ExactlyOnce);
    let _p = connect(&mut r, t0, 2, "p", true, 0, None);
    for _ in 0..2 {
        r.handle(
            Command::Publish {
                conn: 2,
                ack: false,
                publish: Publish {
                    dup: false,
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    topic: "t".into(),
                    packet_id: Some(7),
                    properties: Properties::from(culex_proto::PropertyValues {
                        message_expiry_interval: Some(5),
                        ..Default::default()
                    }),
                    payload: Bytes::from_static(b"short-lived"),
                },
                publication: None,
            },
            t0,
        );
    }
    let first = match sub.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(first.expiry_interval, Some(5));
    assert!(
        sub.rx.try_recv().is_err(),
        "the second waits behind a window of 1"
    );
    disconnect(&mut r, t0, 1, DisconnectKind::WithWill);
    let later = t0 + Duration::from_secs(60);
    let mut back = connect(&mut r, later, 3, "s", false, u32::MAX, None);
    match back.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => {
            assert!(d.dup);
            assert_eq!(d.packet_id, first.packet_id);
            assert_eq!(d.qos, QoS::ExactlyOnce);
        }
        other => panic!("the sent QoS 2 PUBLISH must be resent: {other:?}"),
    }
    // The queued copy expired before it was sent: gone, and counted, once the window frees.
    r.handle(
        Command::PubRec {
            conn: 3,
            packet_id: first.packet_id.unwrap_or(0),
            reason: ReasonCode::Success,
        },
        later,
    );
    r.handle(
        Command::PubComp {
            conn: 3,
            packet_id: first.packet_id.unwrap_or(0),
        },
        later,
    );
    match back.rx.try_recv() {
        Ok(Outbound::Packet(p)) => assert!(matches!(*p, Packet::PubRel(_)), "{p:?}"),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    assert!(
        back.rx.try_recv().is_err(),
        "the expired queued copy was sent"
    );
    assert_eq!(r.stats().dropped_expired, 1);
}

/// A cluster peer took the client id: the connection here is closed like a takeover, and an
/// unknown or offline id changes nothing.
#[test]
fn taken_over_elsewhere_closes_the_connection_of_that_id_only() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut a = connect(&mut r, t0, 1, "a", false, u32::MAX, None);
    let mut b = connect(&mut r, t0, 2, "b", true, 0, None);
    for id in ["nobody", ""] {
        r.handle(
            Command::TakenOverElsewhere {
                client_id: id.into(),
            },
            t0,
        );
    }
    assert!(a.rx.try_recv().is_err());
    r.handle(
        Command::TakenOverElsewhere {
            client_id: "a".into(),
        },
        t0,
    );
    assert!(matches!(
        a.rx.try_recv(),
        Ok(Outbound::Close(ReasonCode::SessionTakenOver))
    ));
    assert!(b.rx.try_recv().is_err(), "another client untouched");
}

#[test]
fn takeover_closes_the_old_connection_and_keeps_the_session() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut first = connect(&mut r, t0, 1, "c", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut first, "t", QoS::AtLeastOnce);
    let (rx, mut reply) = send_connect(&mut r, t0, 2, "c", false, u32::MAX, None);
    assert!(matches!(
        first.rx.try_recv(),
        Ok(Outbound::Close(ReasonCode::SessionTakenOver))
    ));
    // The new connection is answered once the old one's end is applied.
    assert!(reply.try_recv().is_err());
    disconnect(&mut r, t0, 1, DisconnectKind::WithWill);
    let outcome = reply
        .try_recv()
        .expect("answered after the old connection ended");
    assert!(outcome.session_present);
    let mut second = Client {
        conn: 2,
        rx,
        outcome,
    };
    assert_eq!(r.connected_count(), 1);
    publish(&mut r, t0, 2, "t", QoS::AtLeastOnce, false);
    assert_eq!(next_topic(&mut second).as_deref(), Some("t"));
}

/// A client sends DISCONNECT (session expiry 0) and reconnects at once; the new CONNECT reaches
/// the router before the old connection's end. The router applies the old connection's end
/// first: the session is gone (session present 0, no subscriptions) and no will is published
/// [MQTT-3.1.2-6], [MQTT-3.1.2-10].
#[test]
fn a_connect_that_overtakes_the_previous_disconnect_waits_for_it() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut watcher = connect(&mut r, t0, 9, "watcher", true, 0, None);
    subscribe(&mut r, t0, &mut watcher, "will/#", QoS::AtLeastOnce);
    let mut first = connect(&mut r, t0, 1, "c", true, 0, Some(will("will/c", None)));
    subscribe(&mut r, t0, &mut first, "t", QoS::AtLeastOnce);
    let (mut rx, mut reply) = send_connect(&mut r, t0, 2, "c", false, 3600, None);
    assert!(
        reply.try_recv().is_err(),
        "must wait for the old connection"
    );
    // The old connection had read the client's DISCONNECT: a normal end, expiry 0.
    disconnect(&mut r, t0, 1, DisconnectKind::Normal);
    let outcome = reply.try_recv().expect("answered");
    assert!(!outcome.session_present);
    assert_eq!(
        r.subscription_count(),
        1,
        "only the watcher's subscription is left"
    );
    assert!(
        watcher.rx.try_recv().is_err(),
        "no will after a normal DISCONNECT"
    );
    assert!(rx.try_recv().is_err());
}

/// An old connection that never reports its end does not hold the new one forever: after the
/// takeover wait the session is taken over anyway.
#[test]
fn a_takeover_stops_waiting_for_a_stuck_connection() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let _first = connect(&mut r, t0, 1, "c", false, 3600, None);
    let (_rx, mut reply) = send_connect(&mut r, t0, 2, "c", false, 3600, None);
    assert!(reply.try_recv().is_err());
    let due = r.next_deadline().expect("a deadline for the wait");
    assert!(due > t0 && due <= t0 + Duration::from_secs(10), "{due:?}");
    r.tick(due);
    assert!(reply.try_recv().expect("answered").session_present);
    // The old connection's late end changes nothing.
    disconnect(&mut r, due, 1, DisconnectKind::Normal);
    assert_eq!(r.connected_count(), 1);
}

#[test]
fn slow_qos0_consumer_drops_are_counted_and_bounded() {
    let t0 = Instant::now();
    let settings = BrokerSettings {
        max_outbox_qos0: 5,
        ..Default::default()
    };
    let mut r = Router::new(settings);
    let mut sub = connect(&mut r, t0, 1, "s", true, 0, None);
    subscribe(&mut r, t0, &mut sub, "t", QoS::AtMostOnce);
    for _ in 0..50 {
        publish(&mut r, t0, 1, "t", QoS::AtMostOnce, false);
    }
    let mut got = 0;
    while next_topic(&mut sub).is_some() {
        got += 1;
    }
    assert_eq!(got, 5);
    assert_eq!(r.stats().dropped_outbox_full, 45);
}

#[test]
fn retained_is_sent_after_suback_and_cleared_by_empty_payload() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let _p = connect(&mut r, t0, 1, "p", true, 0, None);
    publish(&mut r, t0, 1, "r/a", QoS::AtLeastOnce, true);
    assert_eq!(r.retained_count().0, 1);
    let mut s = connect(&mut r, t0, 2, "s", true, 0, None);
    subscribe(&mut r, t0, &mut s, "r/+", QoS::AtLeastOnce);
    match s.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => assert!(d.retain),
        other => panic!("{other:?}"),
    }
    r.handle(
        Command::Publish {
            conn: 1,
            ack: false,
            publish: Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: "r/a".into(),
                packet_id: None,
                properties: Properties::default(),
                payload: Bytes::new(),
            },
            publication: None,
        },
        t0,
    );
    assert_eq!(r.retained_count().0, 0);
}

/// A fixed ACL for tests: `secret/...` unreadable, `w/denied` unwritable, `forbidden/#`
/// not subscribable.
#[derive(Debug)]
struct TestAcl;

impl crate::api::AccessPolicy for TestAcl {
    fn can_read(&self, _u: Option<&str>, _c: &str, topic: &str) -> bool {
        !topic.starts_with("secret/")
    }
    fn can_write(&self, _u: Option<&str>, _c: &str, topic: &str) -> bool {
        topic != "w/denied"
    }
    fn can_subscribe(&self, _u: Option<&str>, _c: &str, filter: &str) -> bool {
        filter != "forbidden/#"
    }
}

#[test]
fn acl_withholds_reads_refuses_subscriptions_and_checks_wills_when_sent() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let (tx, mut rx) = outbox(r.settings().outbox_capacity(20));
    let (reply, mut reply_rx) = oneshot::channel();
    r.handle(
        Command::Connect(Box::new(ConnectRequest {
            conn: 1,
            protocol: Protocol::V5,
            client_id: "watched".into(),
            clean_start: true,
            session_expiry: 0,
            receive_maximum: u16::MAX,
            maximum_packet_size: u32::MAX,
            will: None,
            username: Some("u".into()),
            access: Some(std::sync::Arc::new(TestAcl)),
            queue: None,
            outbox: tx,
            reply,
        })),
        t0,
    );
    reply_rx.try_recv().unwrap();
    r.handle(
        Command::Subscribe {
            conn: 1,
            subscribe: Subscribe {
                packet_id: 1,
                filters: vec![
                    SubscribeFilter {
                        filter: "#".into(),
                        options: SubscriptionOptions::default(),
                    },
                    SubscribeFilter {
                        filter: "forbidden/#".into(),
                        options: SubscriptionOptions::default(),
                    },
                ],
                properties: Properties::default(),
            },
        },
        t0,
    );
    match rx.try_recv() {
        Ok(Outbound::Packet(p)) => match *p {
            Packet::SubAck(a) => assert_eq!(
                a.reason_codes,
                vec![ReasonCode::GrantedQoS0, ReasonCode::NotAuthorized]
            ),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let mut c = Client {
        conn: 1,
        rx,
        outcome: ConnectOutcome {
            session_present: false,
            client_id: "watched".into(),
            assigned: false,
            inbound_qos2: vec![],
        },
    };
    // A publisher whose will topic the ACL denies, and one whose will is allowed.
    let (tx2, _rx2) = outbox(r.settings().outbox_capacity(20));
    let (reply2, _r2) = oneshot::channel();
    r.handle(
        Command::Connect(Box::new(ConnectRequest {
            conn: 2,
            protocol: Protocol::V311,
            client_id: "p".into(),
            clean_start: true,
            session_expiry: 0,
            receive_maximum: u16::MAX,
            maximum_packet_size: u32::MAX,
            will: Some(will("w/denied", None)),
            username: None,
            access: Some(std::sync::Arc::new(TestAcl)),
            queue: None,
            outbox: tx2,
            reply: reply2,
        })),
        t0,
    );
    publish(&mut r, t0, 2, "secret/x", QoS::AtMostOnce, false);
    publish(&mut r, t0, 2, "open/x", QoS::AtMostOnce, false);
    assert_eq!(next_topic(&mut c).as_deref(), Some("open/x"));
    assert_eq!(r.stats().dropped_acl_read, 1);
    disconnect(&mut r, t0, 2, DisconnectKind::WithWill);
    assert_eq!(next_topic(&mut c), None);
    assert_eq!(r.stats().dropped_acl_will, 1);
    assert_eq!(r.stats().subscriptions_denied, 1);
}

#[test]
fn snapshot_counts_sessions_subscriptions_retained_and_queues() {
    let now = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut sub = connect(&mut r, now, 1, "sub", false, u32::MAX, None);
    subscribe(&mut r, now, &mut sub, "a/#", QoS::AtLeastOnce);
    subscribe(&mut r, now, &mut sub, "$share/g/b", QoS::AtMostOnce);
    let _pubr = connect(&mut r, now, 2, "pub", true, 0, None);
    publish(&mut r, now, 2, "a/1", QoS::AtLeastOnce, true);
    let s = r.snapshot();
    assert_eq!((s.sessions, s.connected, s.offline_sessions), (2, 2, 0));
    assert_eq!((s.subscriptions, s.shared_subscriptions), (2, 1));
    assert_eq!((s.retained_count, s.retained_bytes), (1, 5));
    assert_eq!((s.inflight, s.queued), (1, 0));
    assert_eq!(s.stats.messages_received, 1);
    disconnect(&mut r, now, 1, DisconnectKind::Normal);
    publish(&mut r, now, 2, "a/2", QoS::AtLeastOnce, false);
    let s = r.snapshot();
    assert_eq!((s.sessions, s.connected, s.offline_sessions), (2, 1, 1));
    assert_eq!((s.inflight, s.queued), (1, 1));
    assert_eq!(s.queued_bytes, 8, "topic a/2 + payload hello");

    // Stats over the channel: the same snapshot.
    let (reply, mut rx) = oneshot::channel();
    r.handle(Command::Stats { reply }, now);
    assert_eq!(rx.try_recv().expect("answered at once"), s);
}

#[test]
fn internal_publish_is_routed_and_retained_but_not_counted_as_received() {
    let now = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut c = connect(&mut r, now, 1, "c", true, 0, None);
    subscribe(&mut r, now, &mut c, "$SYS/#", QoS::AtMostOnce);
    r.handle(
        Command::PublishInternal {
            message: crate::Message {
                topic: "$SYS/broker/uptime".into(),
                payload: Bytes::from_static(b"1 seconds"),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Properties::default(),
                expires_at: None,
                origin: None,
                publication: None,
            },
        },
        now,
    );
    assert_eq!(next_topic(&mut c).as_deref(), Some("$SYS/broker/uptime"));
    let s = r.snapshot();
    assert_eq!(s.stats.messages_received, 0);
    assert_eq!(s.stats.internal_published, 1);
    assert_eq!(s.retained_count, 1);
}

/// A store double that records what the router asked it to keep.
#[derive(Debug, Default, Clone)]
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<crate::persist::StoreOp>>>);

impl crate::persist::StoreSink for Recorder {
    fn submit(&mut self, op: crate::persist::StoreOp) -> u64 {
        let mut ops = self.0.lock().unwrap();
        ops.push(op);
        ops.len() as u64
    }
}

impl Recorder {
    fn take(&self) -> Vec<crate::persist::StoreOp> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn stored_router(t0: Instant) -> (Router, Recorder) {
    let rec = Recorder::default();
    let r = Router::with_store(
        BrokerSettings::default(),
        Box::new(rec.clone()),
        t0,
        std::time::SystemTime::now(),
    );
    (r, rec)
}

#[test]
fn persistent_session_messages_are_journaled_through_their_life() {
    use crate::persist::{MessageState, StoreOp};
    let t0 = Instant::now();
    let (mut r, rec) = stored_router(t0);
    let mut sub = connect(&mut r, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut sub, "t", QoS::AtLeastOnce);
    disconnect(&mut r, t0, 1, DisconnectKind::Normal);
    let _p = connect(&mut r, t0, 2, "p", true, 0, None);
    rec.take();
    publish(&mut r, t0, 2, "t", QoS::AtLeastOnce, false);
    let ops = rec.take();
    assert!(
        matches!(&ops[..], [StoreOp::Message { seq: 1, record: Some(m), .. }] if m.state == MessageState::Queued),
        "{ops:?}"
    );
    let mut back = connect(&mut r, t0, 3, "s", false, u32::MAX, None);
    let d = match back.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => d,
        other => panic!("{other:?}"),
    };
    let id = d.packet_id.unwrap();
    let ops = rec.take();
    assert!(
        ops.iter().any(|op| matches!(op, StoreOp::Message { seq: 1, record: Some(m), .. } if m.state == MessageState::WaitPubAck(id))),
        "{ops:?}"
    );
    r.handle(
        Command::PubAck {
            conn: 3,
            packet_id: id,
        },
        t0,
    );
    let ops = rec.take();
    assert!(
        matches!(
            &ops[..],
            [StoreOp::Message {
                seq: 1,
                record: None,
                ..
            }]
        ),
        "{ops:?}"
    );
    // A clean session is never written.
    let _c = connect(&mut r, t0, 4, "clean", true, 0, None);
    assert!(rec.take().is_empty());
}

#[test]
fn acknowledgements_wait_for_the_store_and_keep_their_order() {
    let t0 = Instant::now();
    let (mut r, _rec) = stored_router(t0);
    let mut c = connect(&mut r, t0, 1, "c", true, 0, None);
    let publish_acked = |r: &mut Router, id: u16, retain: bool| {
        r.handle(
            Command::Publish {
                conn: 1,
                ack: true,
                publish: Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain,
                    topic: "r".into(),
                    packet_id: Some(id),
                    properties: Properties::default(),
                    payload: Bytes::from_static(b"x"),
                },
                publication: None,
            },
            t0,
        )
    };
    // The retained publish writes to the store (ticket 1); the second one writes nothing
    // but must not overtake the first's PUBACK.
    publish_acked(&mut r, 10, true);
    publish_acked(&mut r, 11, false);
    assert!(
        c.rx.try_recv().is_err(),
        "no PUBACK before the store commits"
    );
    assert_eq!(r.acks_waiting(), 2);
    r.handle(Command::Durable { ticket: 1 }, t0);
    for want in [10, 11] {
        match c.rx.try_recv() {
            Ok(Outbound::Packet(p)) => match *p {
                Packet::PubAck(a) => assert_eq!(a.packet_id, want),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}

/// Exactly once across a crash: a QoS 2 message the router acknowledges reaches online
/// subscribers only once it (and its packet id) is durable, and the PUBREL after a
/// subscriber's PUBREC waits for the Released state to be durable.
#[test]
fn qos2_deliveries_and_pubrel_wait_for_the_store() {
    let t0 = Instant::now();
    let (mut r, rec) = stored_router(t0);
    let mut sub = connect(&mut r, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut sub, "t", QoS::ExactlyOnce);
    let mut p = connect(&mut r, t0, 2, "p", true, 0, None);
    r.handle(
        Command::Publish {
            conn: 2,
            ack: true,
            publish: Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: "t".into(),
                packet_id: Some(5),
                properties: Properties::default(),
                payload: Bytes::from_static(b"x"),
            },
            publication: None,
        },
        t0,
    );
    assert!(sub.rx.try_recv().is_err(), "delivered before it is durable");
    assert!(p.rx.try_recv().is_err(), "PUBREC before it is durable");
    // What the publish changed went to the store as one group (one transaction).
    assert!(
        matches!(rec.0.lock().unwrap().last(), Some(crate::persist::StoreOp::Group(g)) if !g.is_empty()),
        "not grouped"
    );
    // The recorder's tickets count its ops.
    let ticket = rec.0.lock().unwrap().len() as u64;
    r.handle(Command::Durable { ticket }, t0);
    let id = match sub.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => d.packet_id.unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(matches!(p.rx.try_recv(), Ok(Outbound::Packet(b)) if matches!(*b, Packet::PubRec(_))));

    r.handle(
        Command::PubRec {
            conn: 1,
            packet_id: id,
            reason: ReasonCode::Success,
        },
        t0,
    );
    assert!(
        sub.rx.try_recv().is_err(),
        "PUBREL before Released is durable"
    );
    let ticket = rec.0.lock().unwrap().len() as u64;
    r.handle(Command::Durable { ticket }, t0);
    assert!(
        matches!(sub.rx.try_recv(), Ok(Outbound::Packet(b)) if matches!(*b, Packet::PubRel(_)))
    );
}

#[test]
fn restored_session_resumes_with_its_queue_and_subscriptions() {
    use crate::persist::{
        MessageRecord, MessageState, Recovered, RecoveredSession, SessionRecord, SubscriptionRecord,
    };
    let t0 = Instant::now();
    let (mut r, _rec) = stored_router(t0);
    let message = std::sync::Arc::new(crate::Message {
        topic: "t".into(),
        payload: Bytes::from_static(b"kept"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
        origin: None,
        publication: None,
    });
    let record = |state| MessageRecord {
        message: message.clone(),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        state,
    };
    r.restore(
        Recovered {
            retained: vec![],
            sessions: vec![RecoveredSession {
                client_id: "s".into(),
                record: SessionRecord {
                    username: None,
                    expiry_interval: u32::MAX,
                    expires_at: None,
                    subscriptions: vec![SubscriptionRecord {
                        filter: "t".into(),
                        options: SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                        id: None,
                    }],
                    inbound_qos2: vec![7],
                },
                messages: vec![
                    (4, record(MessageState::WaitPubAck(3))),
                    (5, record(MessageState::Queued)),
                ],
            }],
        },
        t0,
        None,
    );
    let mut back = connect(&mut r, t0, 1, "s", false, u32::MAX, None);
    assert!(back.outcome.session_present);
    assert_eq!(back.outcome.inbound_qos2, vec![7]);
    match back.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => {
            assert!(d.dup, "the in-flight one is a redelivery");
            assert_eq!(d.packet_id, Some(3));
        }
        other => panic!("{other:?}"),
    }
    match back.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => assert!(!d.dup),
        other => panic!("{other:?}"),
    }
    // The restored subscription routes new messages.
    let _p = connect(&mut r, t0, 2, "p", true, 0, None);
    publish(&mut r, t0, 2, "t", QoS::AtLeastOnce, false);
    assert!(matches!(back.rx.try_recv(), Ok(Outbound::Deliver(_))));
}

#[test]
fn shutdown_closes_connected_clients_and_later_connects() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut a = connect(&mut r, t0, 1, "a", true, 0, None);
    let mut b = connect(&mut r, t0, 2, "b", true, 0, None);
    subscribe(&mut r, t0, &mut b, "t", QoS::AtMostOnce);
    r.handle(
        Command::PublishInternal {
            message: crate::Message {
                topic: "t".into(),
                payload: Bytes::from_static(b"x"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties::default(),
                expires_at: None,
                origin: None,
                publication: None,
            },
        },
        t0,
    );
    assert!(a.rx.try_recv().is_err());
    r.handle(Command::Shutdown, t0);
    let closed = |c: &mut Client| {
        matches!(
            c.rx.try_recv(),
            Ok(Outbound::Close(ReasonCode::ServerShuttingDown))
        )
    };
    assert!(closed(&mut a));
    // At once, before what was still queued for it (a QoS 0 message here).
    assert!(closed(&mut b));
    // A CONNECT the router handles after the shutdown is answered, then closed at once.
    let mut late = connect(&mut r, t0, 3, "late", true, 0, None);
    assert!(closed(&mut late));
}

#[test]
fn small_retained_payloads_do_not_keep_their_read_buffer_alive() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let publisher = connect(&mut r, t0, 1, "p", true, 0, None);
    // Payloads as the connection decodes them: slices of the 8 KiB buffer they were read into.
    let chunk = Bytes::from(vec![7u8; 8192]);
    let inside = |b: &Bytes| {
        let (start, p) = (chunk.as_ptr() as usize, b.as_ptr() as usize);
        p >= start && p < start + chunk.len()
    };
    for (topic, range) in [("small", 100..110), ("large", 1000..3048)] {
        r.handle(
            Command::Publish {
                conn: publisher.conn,
                ack: false,
                publish: Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: true,
                    topic: topic.into(),
                    packet_id: None,
                    properties: Properties::default(),
                    payload: chunk.slice(range),
                },
                publication: None,
            },
            t0,
        );
    }
    let mut sub = connect(&mut r, t0, 2, "s", true, 0, None);
    subscribe(&mut r, t0, &mut sub, "#", QoS::AtMostOnce);
    let mut got = Vec::new();
    while let Ok(Outbound::Deliver(d)) = sub.rx.try_recv() {
        got.push((d.message.topic.to_string(), d.message.payload.clone()));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let [(large_topic, large), (small_topic, small)] = &got[..] else {
        panic!("expected two retained messages, got {got:?}");
    };
    assert_eq!(
        (large_topic.as_str(), small_topic.as_str()),
        ("large", "small")
    );
    assert_eq!(&small[..], &chunk[100..110]);
    assert!(
        !inside(small),
        "a 10-byte retained payload still points into its read buffer"
    );
    // Large payloads stay shared (copying them would cost more than the buffer they pin).
    assert_eq!(&large[..], &chunk[1000..3048]);
    assert!(inside(large));
}

/// An ACL that stops allowing reads of `news/...` once `deny` is set (a reloaded file).
#[derive(Debug, Default)]
struct ReloadedAcl {
    deny: std::sync::atomic::AtomicBool,
}

impl crate::api::AccessPolicy for ReloadedAcl {
    fn can_read(&self, _u: Option<&str>, _c: &str, topic: &str) -> bool {
        !(topic.starts_with("news/") && self.deny.load(std::sync::atomic::Ordering::Relaxed))
    }
    fn can_write(&self, _u: Option<&str>, _c: &str, _topic: &str) -> bool {
        true
    }
    fn can_subscribe(&self, _u: Option<&str>, _c: &str, _filter: &str) -> bool {
        true
    }
}

/// A reload that takes read access away stops what is queued and in flight for that topic
/// (nothing of it is sent or resent), counts it, lets the next allowed message through, and
/// asks the connection to recheck its client.
#[test]
fn a_reload_that_revokes_reads_stops_queued_and_inflight_messages() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings {
        max_inflight_messages: 1,
        ..Default::default()
    });
    let acl = std::sync::Arc::new(ReloadedAcl::default());
    let (tx, rx) = outbox(r.settings().outbox_capacity(1));
    let (reply, mut reply_rx) = oneshot::channel();
    r.handle(
        Command::Connect(Box::new(ConnectRequest {
            conn: 1,
            protocol: Protocol::V5,
            client_id: "reader".into(),
            clean_start: false,
            session_expiry: u32::MAX,
            receive_maximum: u16::MAX,
            maximum_packet_size: u32::MAX,
            will: None,
            username: Some("u".into()),
            access: Some(acl.clone()),
            queue: None,
            outbox: tx,
            reply,
        })),
        t0,
    );
    let outcome = reply_rx.try_recv().expect("CONNACK outcome");
    let mut sub = Client {
        conn: 1,
        rx,
        outcome,
    };
    subscribe(&mut r, t0, &mut sub, "#", QoS::AtLeastOnce);
    let _publisher = connect(&mut r, t0, 2, "writer", true, 0, None);
    for topic in ["news/a", "news/b", "ok/c"] {
        publish(&mut r, t0, 2, topic, QoS::AtLeastOnce, false);
    }
    assert_eq!(next_topic(&mut sub).as_deref(), Some("news/a"), "in flight");
    assert_eq!(
        next_topic(&mut sub),
        None,
        "the rest is queued behind a window of 1"
    );

    acl.deny.store(true, std::sync::atomic::Ordering::Relaxed);
    r.handle(Command::AccessChanged, t0);
    // news/a (in flight) and news/b (queued) are dropped; ok/c takes the freed window.
    assert_eq!(r.stats().dropped_acl_read, 2);
    assert_eq!(next_topic(&mut sub).as_deref(), Some("ok/c"));
    assert!(matches!(sub.rx.try_recv(), Ok(Outbound::Recheck)));
    // The dropped in-flight message is not resent when the session comes back.
    disconnect(&mut r, t0, 1, DisconnectKind::WithWill);
    let mut back = connect(&mut r, t0, 3, "reader", false, u32::MAX, None);
    assert!(back.outcome.session_present);
    let mut resent = Vec::new();
    while let Some(t) = next_topic(&mut back) {
        resent.push(t);
    }
    assert_eq!(
        resent,
        ["ok/c"],
        "only the allowed unacknowledged message comes back"
    );
}

/// A QoS 1 PUBLISH the router acknowledges (as under `queue_full_policy block`).
fn publish_acked(r: &mut Router, now: Instant, conn: u64, topic: &str, packet_id: u16) {
    r.handle(
        Command::Publish {
            conn,
            ack: true,
            publish: Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: topic.into(),
                packet_id: Some(packet_id),
                properties: Properties::default(),
                payload: Bytes::from_static(b"m"),
            },
            publication: None,
        },
        now,
    );
}

/// The PUBACK packet ids in `c`'s outbox now.
fn pubacks(c: &mut Client) -> Vec<u16> {
    let mut ids = Vec::new();
    while let Ok(out) = c.rx.try_recv() {
        match out {
            Outbound::Packet(p) => match *p {
                Packet::PubAck(a) => ids.push(a.packet_id),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    ids
}

/// Acknowledges the next delivery in `c`'s outbox; returns its topic.
fn ack_next(r: &mut Router, now: Instant, c: &mut Client) -> String {
    match c.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => {
            let id = d.packet_id.expect("QoS 1");
            r.handle(
                Command::PubAck {
                    conn: c.conn,
                    packet_id: id,
                },
                now,
            );
            d.message.topic.to_string()
        }
        other => panic!("expected a delivery, got {other:?}"),
    }
}

fn flow_settings() -> BrokerSettings {
    BrokerSettings {
        max_inflight_messages: 1,
        max_queued_messages: 2,
        ..Default::default()
    }
}

/// `queue_full_policy block`: messages beyond an online subscriber's queue limit are kept,
/// their PUBACKs held (in order) until the queue drains to half its limit; nothing is dropped.
#[test]
fn a_full_queue_holds_the_publishers_acks_instead_of_dropping() {
    let t0 = Instant::now();
    let mut r = Router::new(flow_settings());
    let mut sub = connect(&mut r, t0, 1, "sub", true, 0, None);
    subscribe(&mut r, t0, &mut sub, "t/#", QoS::AtLeastOnce);
    let mut publisher = connect(&mut r, t0, 2, "pub", true, 0, None);
    for id in 1..=5 {
        publish_acked(&mut r, t0, 2, &format!("t/{id}"), id);
    }
    // t/1 in flight, t/2 and t/3 queued (the limit), t/4 and t/5 beyond it: held.
    assert_eq!(pubacks(&mut publisher), [1, 2, 3]);
    assert_eq!(r.stats().flow_blocked, 1);
    assert_eq!(ack_next(&mut r, t0, &mut sub), "t/1");
    assert_eq!(ack_next(&mut r, t0, &mut sub), "t/2");
    assert_eq!(
        pubacks(&mut publisher),
        Vec::<u16>::new(),
        "queue still above half"
    );
    assert_eq!(ack_next(&mut r, t0, &mut sub), "t/3");
    // One queued: at the low-water mark, the held PUBACKs go out in order.
    assert_eq!(pubacks(&mut publisher), [4, 5]);
    assert_eq!(ack_next(&mut r, t0, &mut sub), "t/4");
    assert_eq!(ack_next(&mut r, t0, &mut sub), "t/5");
    assert_eq!(
        r.stats().dropped_queue_full,
        0,
        "nothing acknowledged was dropped"
    );
}

/// `queue_full_policy drop`: the overflowing message is dropped and counted; the PUBACK is
/// not held.
#[test]
fn with_the_drop_policy_a_full_queue_drops() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings {
        queue_full_block: false,
        ..flow_settings()
    });
    let mut sub = connect(&mut r, t0, 1, "sub", true, 0, None);
    subscribe(&mut r, t0, &mut sub, "t/#", QoS::AtLeastOnce);
    let mut publisher = connect(&mut r, t0, 2, "pub", true, 0, None);
    for id in 1..=5 {
        publish_acked(&mut r, t0, 2, &format!("t/{id}"), id);
    }
    assert_eq!(pubacks(&mut publisher), [1, 2, 3, 4, 5]);
    assert_eq!(r.stats().dropped_queue_full, 2);
}

/// A subscriber that holds publishers back without progress for `slow_client_timeout` is
/// disconnected (0x97); its queue is trimmed to the limit (drops counted) and the held
/// acknowledgements go out.
#[test]
fn a_subscriber_stuck_past_the_slow_client_timeout_is_disconnected() {
    let t0 = Instant::now();
    let mut r = Router::new(flow_settings());
    let mut sub = connect(&mut r, t0, 1, "sub", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut sub, "t/#", QoS::AtLeastOnce);
    let mut publisher = connect(&mut r, t0, 2, "pub", true, 0, None);
    for id in 1..=5 {
        publish_acked(&mut r, t0, 2, &format!("t/{id}"), id);
    }
    assert_eq!(pubacks(&mut publisher), [1, 2, 3]);
    let due = r.next_deadline().expect("a slow-client deadline");
    assert_eq!(due, t0 + Duration::from_secs(30));
    r.tick(t0 + Duration::from_secs(29));
    assert_eq!(pubacks(&mut publisher), Vec::<u16>::new(), "not yet");
    r.tick(due);
    assert_eq!(pubacks(&mut publisher), [4, 5]);
    assert_eq!(r.stats().slow_client_disconnects, 1);
    assert_eq!(
        r.stats().dropped_queue_full,
        2,
        "trimmed to the queue limit"
    );
    // The subscriber's connection is told to close with Quota exceeded.
    let mut closed = false;
    while let Ok(out) = sub.rx.try_recv() {
        if let Outbound::Close(reason) = out {
            assert_eq!(reason, ReasonCode::QuotaExceeded);
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow subscriber is disconnected");
}

/// A PUBLISH its connection already acknowledged that overfills an online queue is queued
/// all the same (nothing acknowledged is dropped) and its publisher is told to let the router
/// answer (`Pressure(true)`); once the queue has drained, `Pressure(false)`.
#[test]
fn an_already_acknowledged_overflow_is_queued_and_pressures_the_publisher() {
    let t0 = Instant::now();
    let mut r = Router::new(flow_settings());
    let mut sub = connect(&mut r, t0, 1, "sub", true, 0, None);
    subscribe(&mut r, t0, &mut sub, "t/#", QoS::AtLeastOnce);
    let mut publisher = connect(&mut r, t0, 2, "pub", true, 0, None);
    for i in 1..=5 {
        publish(&mut r, t0, 2, &format!("t/{i}"), QoS::AtLeastOnce, false);
    }
    assert_eq!(r.stats().dropped_queue_full, 0);
    assert!(matches!(
        publisher.rx.try_recv(),
        Ok(Outbound::Pressure(true))
    ));
    assert!(publisher.rx.try_recv().is_err(), "told once");
    for i in 1..=5 {
        assert_eq!(ack_next(&mut r, t0, &mut sub), format!("t/{i}"));
    }
    assert!(matches!(
        publisher.rx.try_recv(),
        Ok(Outbound::Pressure(false))
    ));
}

/// `memory_limit`: beyond the bytes queued across all sessions, a message for an online
/// subscriber is held like one for a full queue (nothing dropped) and one for an offline
/// session is dropped (counted); the broker-wide figure follows every queue down to zero.
#[test]
fn memory_limit_holds_online_and_drops_offline_beyond_the_global_cap() {
    let t0 = Instant::now();
    // Each message is 4 bytes ("t/1" + "m"... topic 3 + payload 1): the cap allows two queued.
    let mut r = Router::new(BrokerSettings {
        max_inflight_messages: 1,
        max_queued_messages: 100,
        memory_limit: 8,
        ..Default::default()
    });
    let mut off = connect(&mut r, t0, 3, "off", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut off, "o/#", QoS::AtLeastOnce);
    disconnect(&mut r, t0, 3, DisconnectKind::Normal);
    let mut sub = connect(&mut r, t0, 1, "sub", true, 0, None);
    subscribe(&mut r, t0, &mut sub, "t/#", QoS::AtLeastOnce);
    let mut publisher = connect(&mut r, t0, 2, "pub", true, 0, None);
    for id in 1..=4 {
        publish_acked(&mut r, t0, 2, &format!("t/{id}"), id);
    }
    // t/1 in flight; t/2 and t/3 fill the 8 bytes; t/4 is beyond the cap: held, not dropped.
    assert_eq!(pubacks(&mut publisher), [1, 2, 3]);
    // The offline session gets nothing queued beyond the cap.
    publish_acked(&mut r, t0, 2, "o/1", 9);
    assert_eq!(
        r.stats().dropped_queue_full,
        1,
        "the offline one is dropped"
    );
    for i in 1..=4 {
        assert_eq!(ack_next(&mut r, t0, &mut sub), format!("t/{i}"));
    }
    assert_eq!(pubacks(&mut publisher), [4, 9]);
    assert_eq!(r.queued_total.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// Asks `r` for the session of `id`, as another node of a cluster does.
fn export(
    r: &mut Router,
    now: Instant,
    id: &str,
) -> oneshot::Receiver<Option<crate::persist::RecoveredSession>> {
    let (reply, rx) = oneshot::channel();
    r.handle(
        Command::ExportSession {
            client_id: id.into(),
            reply,
        },
        now,
    );
    rx
}

#[test]
fn a_session_moves_to_another_router_with_its_queue_inflight_and_subscriptions() {
    let t0 = Instant::now();
    let (mut a, mut b) = (
        Router::new(BrokerSettings::default()),
        Router::new(BrokerSettings::default()),
    );
    let mut sub = connect(&mut a, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut a, t0, &mut sub, "t/#", QoS::AtLeastOnce);
    let _p = connect(&mut a, t0, 2, "p", true, 0, None);
    publish(&mut a, t0, 2, "t/1", QoS::AtLeastOnce, false);
    let first = match sub.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => d,
        other => panic!("{other:?}"),
    };
    disconnect(&mut a, t0, 1, DisconnectKind::Normal);
    publish(&mut a, t0, 2, "t/2", QoS::AtLeastOnce, false);
    publish(&mut a, t0, 2, "t/3", QoS::AtMostOnce, false);

    let image = export(&mut a, t0, "s")
        .try_recv()
        .expect("answered at once: the client is offline")
        .expect("a session");
    assert_eq!(image.record.subscriptions.len(), 1);
    assert_eq!(
        image.messages.len(),
        2,
        "in flight t/1 and queued t/2 (QoS 0 not kept)"
    );
    assert_eq!(a.session_count(), 1, "gone from the old router (p stays)");
    assert_eq!(a.subscription_count(), 0);
    assert_eq!(a.stats().sessions_moved_out, 1);
    publish(&mut a, t0, 2, "t/4", QoS::AtLeastOnce, false);
    assert_eq!(
        a.queued_count(),
        (0, 0),
        "nothing queued for it there any more"
    );
    assert!(
        export(&mut a, t0, "s").try_recv().unwrap().is_none(),
        "asked again: none"
    );

    b.handle(
        Command::AdoptSession {
            session: Box::new(image),
        },
        t0,
    );
    let mut back = connect(&mut b, t0, 7, "s", false, u32::MAX, None);
    assert!(back.outcome.session_present);
    match back.rx.try_recv() {
        Ok(Outbound::Deliver(d)) => {
            assert!(d.dup, "the in-flight message is resent as a duplicate");
            assert_eq!((d.packet_id, &*d.message.topic), (first.packet_id, "t/1"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next_topic(&mut back).as_deref(), Some("t/2"));
    let _q = connect(&mut b, t0, 8, "q", true, 0, None);
    publish(&mut b, t0, 8, "t/5", QoS::AtLeastOnce, false);
    assert_eq!(
        next_topic(&mut back).as_deref(),
        Some("t/5"),
        "its subscription works here"
    );
    assert_eq!(b.stats().sessions_moved_in, 1);
}

/// The record of a session (its subscriptions, no messages) as the cluster keeps it.
fn record_only(image: &crate::persist::RecoveredSession) -> crate::persist::RecoveredSession {
    crate::persist::RecoveredSession {
        client_id: std::sync::Arc::clone(&image.client_id),
        record: image.record.clone(),
        messages: Vec::new(),
    }
}

#[test]
fn a_session_prepared_for_a_move_keeps_what_arrives_meanwhile_after_the_image() {
    let t0 = Instant::now();
    let (mut a, mut b) = (
        Router::new(BrokerSettings::default()),
        Router::new(BrokerSettings::default()),
    );
    let mut sub = connect(&mut a, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut a, t0, &mut sub, "t/#", QoS::AtLeastOnce);
    disconnect(&mut a, t0, 1, DisconnectKind::Normal);
    let _pa = connect(&mut a, t0, 2, "p", true, 0, None);
    publish(&mut a, t0, 2, "t/1", QoS::AtLeastOnce, false);
    let full = export(&mut a, t0, "s").try_recv().unwrap().unwrap();
    let record = record_only(&full);

    // The new node prepares the session from the record: it queues what arrives there.
    b.handle(
        Command::PrepareSession {
            record: Box::new(record.clone()),
        },
        t0,
    );
    assert_eq!(b.session_count(), 1);
    let _pb = connect(&mut b, t0, 8, "q", true, 0, None);
    publish(&mut b, t0, 8, "t/2", QoS::AtLeastOnce, false);
    publish(&mut b, t0, 8, "t/3", QoS::ExactlyOnce, false);

    // The image (here with t/1, queued on the old node) takes its place.
    let image = full;
    assert_eq!(image.messages.len(), 1);
    b.handle(
        Command::AdoptSession {
            session: Box::new(image),
        },
        t0,
    );
    let mut back = connect(&mut b, t0, 7, "s", false, u32::MAX, None);
    assert!(back.outcome.session_present);
    let topics: Vec<String> = std::iter::from_fn(|| next_topic(&mut back)).collect();
    assert_eq!(
        topics,
        ["t/1", "t/2", "t/3"],
        "the image's first, then the rest"
    );

    // A move that does not happen: the prepared session ends, unless its client came.
    let other = crate::persist::RecoveredSession {
        client_id: std::sync::Arc::from("o"),
        ..record
    };
    b.handle(
        Command::PrepareSession {
            record: Box::new(other),
        },
        t0,
    );
    assert_eq!(b.session_count(), 3, "q, s and the prepared o");
    b.handle(
        Command::AbandonPrepared {
            client_id: "o".into(),
        },
        t0,
    );
    assert_eq!(b.session_count(), 2, "q and s");
}

/// A copy of publication `publication` from the cluster link (`conn`) on `topic`.
fn publish_copy(r: &mut Router, now: Instant, conn: u64, topic: &str, publication: u64) {
    r.handle(
        Command::Publish {
            conn,
            ack: false,
            publish: Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: topic.into(),
                packet_id: Some(7),
                properties: Properties::default(),
                payload: Bytes::from_static(b"copy"),
            },
            publication: Some(publication),
        },
        now,
    );
}

#[test]
fn a_moving_session_keeps_one_copy_of_what_reached_both_nodes() {
    let t0 = Instant::now();
    let (mut a, mut b) = (
        Router::new(cluster_settings()),
        Router::new(cluster_settings()),
    );
    let mut sub = connect(&mut a, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut a, t0, &mut sub, "t/#", QoS::AtLeastOnce);
    disconnect(&mut a, t0, 1, DisconnectKind::Normal);
    let _link_a = connect(&mut a, t0, 2, "link", true, 0, None);
    let _link_b = connect(&mut b, t0, 2, "link", true, 0, None);
    let record = record_only(&export(&mut a, t0, "s").try_recv().unwrap().unwrap());
    let mut sub = connect(&mut a, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut a, t0, &mut sub, "t/#", QoS::AtLeastOnce);
    disconnect(&mut a, t0, 1, DisconnectKind::Normal);
    // The new node prepares the session; t/2 and t/3 reach both nodes, t/1 the old one only,
    // t/4 the new one only.
    b.handle(
        Command::PrepareSession {
            record: Box::new(record),
        },
        t0,
    );
    publish_copy(&mut a, t0, 2, "t/1", 1);
    for (topic, publication) in [("t/2", 2), ("t/3", 3)] {
        publish_copy(&mut a, t0, 2, topic, publication);
        publish_copy(&mut b, t0, 2, topic, publication);
    }
    publish_copy(&mut b, t0, 2, "t/4", 4);
    let image = export(&mut a, t0, "s").try_recv().unwrap().unwrap();
    assert_eq!(image.messages.len(), 3);
    b.handle(
        Command::AdoptSession {
            session: Box::new(image),
        },
        t0,
    );
    assert_eq!(b.stats().move_duplicates, 2);
    // Late copies the old node passes on: of one the image had and one queued here (skipped),
    // of a new one (kept).
    let late = |r: &mut Router, now: Instant, topic: &str, publication: u64| {
        let (reply, mut rx) = oneshot::channel();
        let message = Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"late"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            origin: None,
            publication: Some(publication),
        };
        r.handle(
            Command::Replay {
                client_id: "s".into(),
                messages: vec![message],
                reply,
            },
            now,
        );
        assert_eq!(rx.try_recv().expect("answered").map(|m| m.len()), Ok(0));
    };
    late(&mut b, t0, "t/1", 1);
    late(&mut b, t0, "t/4", 4);
    late(&mut b, t0, "t/5", 5);
    assert_eq!(b.stats().move_duplicates, 4);
    // This node's own copy of what came late (its link lagging): skipped too.
    publish_copy(&mut b, t0, 2, "t/5", 5);
    assert_eq!(b.stats().move_duplicates, 5);
    let mut back = connect(&mut b, t0, 7, "s", false, u32::MAX, None);
    let topics: Vec<String> = std::iter::from_fn(|| next_topic(&mut back)).collect();
    assert_eq!(topics, ["t/1", "t/2", "t/3", "t/4", "t/5"], "each once");
    // Long after the move, the image's publications are forgotten.
    let later = t0 + super::migrate::RECENT;
    late(&mut b, later, "t/1", 1);
    assert_eq!(next_topic(&mut back).as_deref(), Some("t/1"));
}

#[test]
fn a_session_here_is_never_replaced_by_one_prepared_for_a_move_that_may_not_happen() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut s = connect(&mut r, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut s, "mine", QoS::AtLeastOnce);
    disconnect(&mut r, t0, 1, DisconnectKind::Normal);
    let _p = connect(&mut r, t0, 2, "p", true, 0, None);
    publish(&mut r, t0, 2, "mine", QoS::AtLeastOnce, false);
    // The cluster's directory still names another node (this node's claim was not written):
    // the move is prepared, finds nothing there, and is abandoned.
    let mut other = Router::new(BrokerSettings::default());
    let mut old = connect(&mut other, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut other, t0, &mut old, "theirs", QoS::AtLeastOnce);
    disconnect(&mut other, t0, 1, DisconnectKind::Normal);
    let elsewhere = record_only(&export(&mut other, t0, "s").try_recv().unwrap().unwrap());
    r.handle(
        Command::PrepareSession {
            record: Box::new(elsewhere),
        },
        t0,
    );
    r.handle(
        Command::AbandonPrepared {
            client_id: "s".into(),
        },
        t0,
    );
    let mut back = connect(&mut r, t0, 3, "s", false, u32::MAX, None);
    assert!(back.outcome.session_present, "the session here is kept");
    assert_eq!(
        next_topic(&mut back).as_deref(),
        Some("mine"),
        "with its queue"
    );
}

#[test]
fn exporting_a_connected_session_closes_its_connection_and_waits_for_its_end() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut sub = connect(&mut r, t0, 1, "s", false, 60, Some(will("w", Some(30))));
    subscribe(&mut r, t0, &mut sub, "t", QoS::ExactlyOnce);
    let mut watcher = connect(&mut r, t0, 2, "w8", true, 0, None);
    subscribe(&mut r, t0, &mut watcher, "w", QoS::AtLeastOnce);
    let mut rx = export(&mut r, t0, "s");
    assert!(matches!(
        sub.rx.try_recv(),
        Ok(Outbound::Close(ReasonCode::SessionTakenOver))
    ));
    assert!(rx.try_recv().is_err(), "waits for the connection's end");
    disconnect(&mut r, t0, 1, DisconnectKind::WithWill);
    let image = rx.try_recv().expect("answered").expect("a session");
    assert_eq!(image.record.expiry_interval, 60);
    assert_eq!(r.session_count(), 1);
    r.tick(t0 + Duration::from_secs(120));
    assert_eq!(
        next_topic(&mut watcher),
        None,
        "the delayed will goes with the session, not out"
    );

    // A connection that never ends is detached after the takeover wait.
    let _stuck = connect(&mut r, t0, 3, "x", false, 60, None);
    let mut rx = export(&mut r, t0, "x");
    assert!(rx.try_recv().is_err());
    let later = t0 + super::takeover::TAKEOVER_WAIT;
    assert_eq!(r.next_deadline(), Some(later));
    r.tick(later);
    assert!(rx.try_recv().unwrap().is_some());
}

#[test]
fn a_session_that_ends_with_its_connection_is_not_exported() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let _c = connect(&mut r, t0, 1, "s", false, 0, None);
    let mut rx = export(&mut r, t0, "s");
    disconnect(&mut r, t0, 1, DisconnectKind::Normal);
    assert!(rx.try_recv().unwrap().is_none());
    assert_eq!(r.session_count(), 0);
}

#[test]
fn a_client_that_connected_elsewhere_ends_the_session_here() {
    let t0 = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut a = connect(&mut r, t0, 1, "a", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut a, "t", QoS::AtLeastOnce);
    let _offline = connect(&mut r, t0, 2, "b", false, u32::MAX, None);
    disconnect(&mut r, t0, 2, DisconnectKind::Normal);
    for id in ["a", "b"] {
        r.handle(
            Command::TakenOverElsewhere {
                client_id: id.into(),
            },
            t0,
        );
    }
    assert_eq!(r.session_count(), 1, "the offline one ends at once");
    assert!(matches!(
        a.rx.try_recv(),
        Ok(Outbound::Close(ReasonCode::SessionTakenOver))
    ));
    disconnect(&mut r, t0, 1, DisconnectKind::WithWill);
    assert_eq!(
        r.session_count(),
        0,
        "the connected one once its connection ended"
    );
    assert_eq!(r.subscription_count(), 0);
}

#[test]
fn an_adopted_session_replaces_an_older_one_here() {
    let t0 = Instant::now();
    let (mut a, mut b) = (
        Router::new(BrokerSettings::default()),
        Router::new(BrokerSettings::default()),
    );
    let mut sa = connect(&mut a, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut a, t0, &mut sa, "new", QoS::AtLeastOnce);
    disconnect(&mut a, t0, 1, DisconnectKind::Normal);
    let mut sb = connect(&mut b, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut b, t0, &mut sb, "old", QoS::AtLeastOnce);
    disconnect(&mut b, t0, 1, DisconnectKind::Normal);
    let image = export(&mut a, t0, "s").try_recv().unwrap().unwrap();
    b.handle(
        Command::AdoptSession {
            session: Box::new(image),
        },
        t0,
    );
    assert_eq!((b.session_count(), b.subscription_count()), (1, 1));
    let _p = connect(&mut b, t0, 2, "p", true, 0, None);
    publish(&mut b, t0, 2, "old", QoS::AtLeastOnce, false);
    publish(&mut b, t0, 2, "new", QoS::AtLeastOnce, false);
    let mut back = connect(&mut b, t0, 3, "s", false, u32::MAX, None);
    assert_eq!(next_topic(&mut back).as_deref(), Some("new"));
    assert_eq!(next_topic(&mut back), None);
}

fn cluster_settings() -> BrokerSettings {
    BrokerSettings {
        cluster: true,
        ..BrokerSettings::default()
    }
}

fn report(r: &mut Router, now: Instant) -> crate::ClusterReport {
    let (reply, mut rx) = oneshot::channel();
    r.handle(Command::ClusterReport { reply }, now);
    rx.try_recv().expect("answered at once")
}

#[test]
fn the_cluster_report_has_changed_sessions_and_the_oldest_pending_age() {
    let t0 = Instant::now();
    let mut r = Router::new(cluster_settings());
    let mut s = connect(&mut r, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut s, "t/#", QoS::AtLeastOnce);
    let _clean = connect(&mut r, t0, 2, "p", true, 0, None);
    let first = report(&mut r, t0);
    assert_eq!(
        first.changed.len(),
        1,
        "p never was persistent: {:?}",
        first.changed
    );
    assert_eq!(&*first.changed[0].0, "s");
    let record = first.changed[0].1.as_ref().expect("persistent: its record");
    assert_eq!(record.subscriptions[0].filter, "t/#");
    assert_eq!(first.oldest_pending, None);
    assert!(report(&mut r, t0).changed.is_empty(), "reported once");

    disconnect(&mut r, t0, 1, DisconnectKind::Normal);
    publish(
        &mut r,
        t0 + Duration::from_secs(2),
        2,
        "t/1",
        QoS::AtLeastOnce,
        false,
    );
    publish(
        &mut r,
        t0 + Duration::from_secs(4),
        2,
        "t/2",
        QoS::AtLeastOnce,
        false,
    );
    let later = report(&mut r, t0 + Duration::from_secs(7));
    assert_eq!(later.oldest_pending, Some(Duration::from_secs(5)));

    let _s = connect(&mut r, t0, 3, "s", true, 0, None);
    let ended = report(&mut r, t0);
    assert!(ended
        .changed
        .iter()
        .any(|(id, rec)| &**id == "s" && rec.is_none()));

    let mut single = Router::new(BrokerSettings::default());
    let _c = connect(&mut single, t0, 1, "s", false, u32::MAX, None);
    assert!(
        report(&mut single, t0).changed.is_empty(),
        "a single node tracks nothing"
    );
}

#[test]
fn replayed_messages_go_to_that_session_only_as_its_own_subscriptions_match() {
    let t0 = Instant::now();
    let mut r = Router::new(cluster_settings());
    let mut s = connect(&mut r, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut r, t0, &mut s, "r/#", QoS::AtLeastOnce);
    subscribe(&mut r, t0, &mut s, "$share/g/x/#", QoS::AtLeastOnce);
    let mut other = connect(&mut r, t0, 2, "o", true, 0, None);
    subscribe(&mut r, t0, &mut other, "#", QoS::AtLeastOnce);
    disconnect(&mut r, t0, 1, DisconnectKind::Normal);
    let message = |topic: &str| Message {
        topic: topic.into(),
        payload: Bytes::from_static(b"again"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
        origin: None,
        publication: None,
    };
    let replay = |r: &mut Router, messages: Vec<Message>| {
        let (reply, mut rx) = oneshot::channel();
        r.handle(
            Command::Replay {
                client_id: "s".into(),
                messages,
                reply,
            },
            t0,
        );
        rx.try_recv().expect("answered at once")
    };
    let rest = replay(&mut r, vec![message("r/1"), message("x/1"), message("r/2")]);
    assert_eq!(rest.map(|m| m.len()), Ok(0), "all taken");
    assert_eq!(next_topic(&mut other), None, "nobody else gets them");
    assert_eq!(r.stats().replayed, 2);
    let mut back = connect(&mut r, t0, 3, "s", false, u32::MAX, None);
    assert_eq!(next_topic(&mut back).as_deref(), Some("r/1"));
    assert_eq!(next_topic(&mut back).as_deref(), Some("r/2"));
    assert_eq!(next_topic(&mut back), None);

    // Only what the queue has room for (the window of 20 in flight, then 1,000 queued).
    let many: Vec<Message> = (0..1100).map(|i| message(&format!("r/{i}"))).collect();
    let rest = replay(&mut r, many).expect("online: the rest comes back");
    assert_eq!(
        rest.len(),
        1100 - 18 - 1000,
        "two of the window were in flight already"
    );
    assert_eq!(&*rest[0].topic, "r/1018");
    disconnect(&mut r, t0, 3, DisconnectKind::Normal);
    assert_eq!(
        replay(&mut r, rest).err(),
        Some(82),
        "offline and full: nobody makes room"
    );
}

/// Connects a session that confirms publications (the cluster link), with a window of
/// `window` and a queue of `queue` that drops its oldest.
fn connect_confirming(
    r: &mut Router,
    now: Instant,
    conn: u64,
    window: u16,
    queue: usize,
) -> Client {
    let (tx, rx) = outbox(r.settings().outbox_capacity(window));
    let (reply, mut reply_rx) = oneshot::channel();
    r.handle(
        Command::Connect(Box::new(ConnectRequest {
            conn,
            protocol: Protocol::V5,
            client_id: "link".into(),
            clean_start: false,
            session_expiry: u32::MAX,
            receive_maximum: window,
            maximum_packet_size: u32::MAX,
            will: None,
            username: None,
            access: None,
            queue: Some(crate::api::QueuePolicy {
                max_messages: queue,
                max_bytes: 0,
                drop_oldest: true,
                max_inflight: Some(window),
                observer: None,
                confirms_publishers: true,
            }),
            outbox: tx,
            reply,
        })),
        now,
    );
    let outcome = reply_rx.try_recv().expect("answered");
    Client { conn, rx, outcome }
}

#[test]
fn a_publishers_ack_waits_until_a_confirming_session_has_the_message() {
    let t0 = Instant::now();
    let mut r = Router::new(cluster_settings());
    let mut link = connect_confirming(&mut r, t0, 1, 2, 1);
    subscribe(&mut r, t0, &mut link, "#", QoS::ExactlyOnce);
    let mut p = connect(&mut r, t0, 2, "p", true, 0, None);
    let mut plain = connect(&mut r, t0, 3, "plain", true, 0, None);
    subscribe(&mut r, t0, &mut plain, "#", QoS::AtLeastOnce);

    publish_acked(&mut r, t0, 2, "a", 11);
    assert_eq!(
        next_topic(&mut plain).as_deref(),
        Some("a"),
        "delivered at once"
    );
    assert_eq!(
        pubacks(&mut p),
        Vec::<u16>::new(),
        "not before the link confirms"
    );
    publish_acked(&mut r, t0, 2, "b", 12);
    assert_eq!(pubacks(&mut p), Vec::<u16>::new());
    // The link confirms b first (the backplane answered out of order): a still holds both.
    let (da, db) = match (link.rx.try_recv(), link.rx.try_recv()) {
        (Ok(Outbound::Deliver(a)), Ok(Outbound::Deliver(b))) => (a, b),
        other => panic!("{other:?}"),
    };
    r.handle(
        Command::PubAck {
            conn: 1,
            packet_id: db.packet_id.unwrap(),
        },
        t0,
    );
    assert_eq!(
        pubacks(&mut p),
        Vec::<u16>::new(),
        "answers keep their order"
    );
    r.handle(
        Command::PubAck {
            conn: 1,
            packet_id: da.packet_id.unwrap(),
        },
        t0,
    );
    assert_eq!(pubacks(&mut p), vec![11, 12]);

    // A message the link's full queue drops is no longer waited for (nothing would confirm
    // it); nor is what a link that ends held.
    publish_acked(&mut r, t0, 2, "c", 13); // in flight
    publish_acked(&mut r, t0, 2, "d", 14); // in flight
    publish_acked(&mut r, t0, 2, "e", 15); // queued
    publish_acked(&mut r, t0, 2, "f", 16); // queued, e dropped
    assert_eq!(pubacks(&mut p), Vec::<u16>::new());
    let _ = ack_next(&mut r, t0, &mut link);
    assert_eq!(pubacks(&mut p), vec![13], "d still in flight");
    r.handle(
        Command::TakenOverElsewhere {
            client_id: "link".into(),
        },
        t0,
    );
    disconnect(&mut r, t0, 1, DisconnectKind::Normal);
    assert_eq!(
        pubacks(&mut p),
        vec![14, 15, 16],
        "the link's session ended"
    );

    // Without a confirming session the answer is immediate.
    publish_acked(&mut r, t0, 2, "g", 17);
    assert_eq!(pubacks(&mut p), vec![17]);
}

#[test]
fn a_recovered_copy_another_node_holds_ends_unless_a_client_used_it() {
    use crate::persist::{Recovered, RecoveredSession, SessionRecord};
    let t0 = Instant::now();
    let mut r = Router::new(cluster_settings());
    let session = |id: &str| RecoveredSession {
        client_id: id.into(),
        record: SessionRecord {
            username: None,
            expiry_interval: u32::MAX,
            expires_at: None,
            subscriptions: vec![],
            inbound_qos2: vec![],
        },
        messages: vec![],
    };
    r.restore(
        Recovered {
            retained: vec![],
            sessions: vec![session("moved"), session("back")],
        },
        t0,
        None,
    );
    let reported = report(&mut r, t0);
    assert_eq!(reported.changed.len(), 2, "recovered sessions are reported");
    let _back = connect(&mut r, t0, 1, "back", false, u32::MAX, None);
    disconnect(&mut r, t0, 1, DisconnectKind::Normal);
    for id in ["moved", "back", "unknown"] {
        r.handle(
            Command::DiscardIfOffline {
                client_id: id.into(),
            },
            t0,
        );
    }
    assert_eq!(r.session_count(), 1, "only the untouched copy ends");
    assert_eq!(r.stats().sessions_stale_dropped, 1);
}

/// Records what the router tells the cluster about its filters.
#[derive(Debug, Default)]
struct InterestLog(std::sync::Mutex<Vec<String>>);

impl crate::api::InterestSink for InterestLog {
    fn changed(&self, filter: &str, present: bool) {
        let sign = if present { '+' } else { '-' };
        self.0.lock().unwrap().push(format!("{sign}{filter}"));
    }
    fn sync(&self, token: u64) {
        self.0.lock().unwrap().push(format!("sync {token}"));
    }
    fn persistent_changed(&self, filter: &str, present: bool) {
        let sign = if present { '+' } else { '-' };
        self.0.lock().unwrap().push(format!("{sign}p {filter}"));
    }
}

impl InterestLog {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn send_subscribe(r: &mut Router, now: Instant, c: &Client, filter: &str) {
    r.handle(
        Command::Subscribe {
            conn: c.conn,
            subscribe: Subscribe {
                packet_id: 9,
                filters: vec![SubscribeFilter {
                    filter: filter.into(),
                    options: SubscriptionOptions::default(),
                }],
                properties: Properties::default(),
            },
        },
        now,
    );
}

fn has_suback(c: &mut Client) -> bool {
    matches!(c.rx.try_recv(), Ok(Outbound::Packet(p)) if matches!(*p, Packet::SubAck(_)))
}

/// The image of a moving session replaces the session prepared for it in one step: the
/// cluster is told only what differs, never that a filter both have went away for a moment
/// (a node that read that in between would route the filter's messages to no node).
#[test]
fn a_prepared_session_hands_its_filters_to_the_image_without_a_gap() {
    let t0 = Instant::now();
    let mut other = Router::new(BrokerSettings::default());
    let mut s = connect(&mut other, t0, 1, "s", false, u32::MAX, None);
    subscribe(&mut other, t0, &mut s, "kept", QoS::AtLeastOnce);
    subscribe(&mut other, t0, &mut s, "dropped", QoS::AtLeastOnce);
    disconnect(&mut other, t0, 1, DisconnectKind::Normal);
    let record = record_only(&export(&mut other, t0, "s").try_recv().unwrap().unwrap());
    // Meanwhile the session dropped a filter and took another: the image says so.
    let mut s = connect(&mut other, t0, 2, "s2", false, u32::MAX, None);
    subscribe(&mut other, t0, &mut s, "kept", QoS::AtLeastOnce);
    subscribe(&mut other, t0, &mut s, "new", QoS::AtLeastOnce);
    disconnect(&mut other, t0, 2, DisconnectKind::Normal);
    let mut image = export(&mut other, t0, "s2").try_recv().unwrap().unwrap();
    image.client_id = std::sync::Arc::from("s");

    let mut r = Router::new(cluster_settings());
    let log = std::sync::Arc::new(InterestLog::default());
    let _link = connect(&mut r, t0, 1, "link", true, 0, None);
    r.set_interest_sink(log.clone(), "link");
    r.handle(
        Command::PrepareSession {
            record: Box::new(record),
        },
        t0,
    );
    let mut told = log.take();
    told.sort();
    assert_eq!(told, ["+dropped", "+kept", "+p dropped", "+p kept"]);
    r.handle(
        Command::AdoptSession {
            session: Box::new(image),
        },
        t0,
    );
    let mut told = log.take();
    told.sort();
    assert_eq!(told, ["+new", "+p new", "-dropped", "-p dropped"]);
}

#[test]
fn a_new_filter_is_told_to_the_cluster_and_its_suback_waits_for_it() {
    let t0 = Instant::now();
    let mut r = Router::new(cluster_settings());
    let log = std::sync::Arc::new(InterestLog::default());
    let mut link = connect(&mut r, t0, 1, "link", true, 0, None);
    subscribe(&mut r, t0, &mut link, "#", QoS::AtLeastOnce);
    r.set_interest_sink(log.clone(), "link");
    assert_eq!(
        log.take(),
        Vec::<String>::new(),
        "the link's # asks for nothing"
    );

    let mut a = connect(&mut r, t0, 2, "a", true, 0, None);
    send_subscribe(&mut r, t0, &a, "x/+");
    assert_eq!(log.take(), ["+x/+", "sync 1"]);
    assert!(!has_suback(&mut a), "not before the cluster knows");
    r.handle(Command::InterestSynced { tokens: vec![1] }, t0);
    assert!(has_suback(&mut a));

    // Known already: answered at once; b is persistent, so its filter counts as a persistent
    // session's too. A shared subscription is a filter of its own (the group has members
    // here now), held like a new one.
    let mut b = connect(&mut r, t0, 3, "b", false, 60, None);
    send_subscribe(&mut r, t0, &b, "x/+");
    assert!(has_suback(&mut b));
    assert_eq!(log.take(), ["+p x/+"]);
    send_subscribe(&mut r, t0, &b, "$share/g/x/+");
    assert_eq!(log.take(), ["+$share/g/x/+", "+p $share/g/x/+", "sync 2"]);
    r.handle(Command::InterestSynced { tokens: vec![2] }, t0);
    assert!(has_suback(&mut b));

    // The filter goes when its last subscription does, the offline session's included.
    disconnect(&mut r, t0, 2, DisconnectKind::Normal);
    disconnect(&mut r, t0, 3, DisconnectKind::Normal);
    assert_eq!(log.take(), Vec::<String>::new(), "b's session keeps it");
    let _b = connect(&mut r, t0, 4, "b", true, 0, None);
    let mut gone = log.take();
    gone.sort();
    assert_eq!(gone, ["-$share/g/x/+", "-p $share/g/x/+", "-p x/+", "-x/+"]);

    // A SUBACK whose connection ended meanwhile is not sent to the next one.
    let c = connect(&mut r, t0, 5, "c", false, 60, None);
    send_subscribe(&mut r, t0, &c, "y");
    assert_eq!(log.take(), ["+y", "+p y", "sync 3"]);
    disconnect(&mut r, t0, 5, DisconnectKind::Normal);
    let mut c2 = connect(&mut r, t0, 6, "c", false, 60, None);
    r.handle(Command::InterestSynced { tokens: vec![3] }, t0);
    assert!(!has_suback(&mut c2));

    // A session that stops being persistent (MQTT 5 DISCONNECT with expiry 0) no longer
    // counts as one, though its subscriptions stay until it ends.
    r.handle(
        Command::Disconnect {
            conn: 6,
            kind: DisconnectKind::Normal,
            session_expiry: Some(0),
            inbound_qos2: Vec::new(),
        },
        t0,
    );
    assert_eq!(log.take(), ["-p y", "-y"]);
}

/// What the client got next, in short: `suback`, a delivery's topic, or `-` for nothing.
fn next_out(c: &mut Client) -> String {
    match c.rx.try_recv() {
        Ok(Outbound::Packet(p)) if matches!(*p, Packet::SubAck(_)) => "suback".to_owned(),
        Ok(Outbound::Deliver(d)) => d.message.topic.to_string(),
        Ok(other) => format!("{other:?}"),
        Err(_) => "-".to_owned(),
    }
}

#[test]
fn a_subscription_to_a_filter_the_cluster_does_not_know_yet_waits_too_and_retained_follow_the_suback(
) {
    let t0 = Instant::now();
    let mut r = Router::new(cluster_settings());
    let log = std::sync::Arc::new(InterestLog::default());
    r.set_interest_sink(log.clone(), "link");
    let _p = connect(&mut r, t0, 1, "p", true, 0, None);
    publish(&mut r, t0, 1, "x/1", QoS::AtLeastOnce, true);

    // a adds x/+: held. b subscribes to x/+ before the cluster knows it: held as well (its
    // SUBACK would promise what a's cannot yet), and its retained message comes after it.
    let mut a = connect(&mut r, t0, 2, "a", true, 0, None);
    send_subscribe(&mut r, t0, &a, "x/+");
    let mut b = connect(&mut r, t0, 3, "b", true, 0, None);
    send_subscribe(&mut r, t0, &b, "x/+");
    assert_eq!(log.take(), ["+x/+", "sync 1", "sync 2"]);
    assert_eq!(next_out(&mut a), "-", "a: nothing before its SUBACK");
    assert_eq!(next_out(&mut b), "-", "b: nothing before its SUBACK");
    r.handle(Command::InterestSynced { tokens: vec![1] }, t0);
    assert_eq!([next_out(&mut a), next_out(&mut a)], ["suback", "x/1"]);
    assert_eq!(next_out(&mut b), "-");
    r.handle(Command::InterestSynced { tokens: vec![2] }, t0);
    assert_eq!([next_out(&mut b), next_out(&mut b)], ["suback", "x/1"]);

    // Known now: the next one is answered at once.
    let mut c = connect(&mut r, t0, 4, "c", true, 0, None);
    send_subscribe(&mut r, t0, &c, "x/+");
    assert_eq!(log.take(), Vec::<String>::new());
    assert_eq!([next_out(&mut c), next_out(&mut c)], ["suback", "x/1"]);
}

/// [`InterestLog`] that also writes session records (and logs them).
#[derive(Debug, Default)]
struct RecordingLog(InterestLog);

impl crate::api::InterestSink for RecordingLog {
    fn changed(&self, filter: &str, present: bool) {
        self.0.changed(filter, present);
    }
    fn sync(&self, token: u64) {
        self.0.sync(token);
    }
    fn persistent_changed(&self, filter: &str, present: bool) {
        self.0.persistent_changed(filter, present);
    }
    fn record(&self, token: u64, client_id: &str, record: crate::persist::SessionRecord) -> bool {
        let filters: Vec<&str> = record.subscriptions.iter().map(|s| &*s.filter).collect();
        self.0
             .0
            .lock()
            .unwrap()
            .push(format!("record {token} {client_id} {}", filters.join(",")));
        true
    }
}

#[test]
fn a_persistent_sessions_suback_waits_for_its_record_in_the_cluster() {
    let t0 = Instant::now();
    let mut r = Router::new(cluster_settings());
    let log = std::sync::Arc::new(RecordingLog::default());
    let _link = connect(&mut r, t0, 1, "link", true, 0, None);
    r.set_interest_sink(log.clone(), "link");
    let mut p = connect(&mut r, t0, 2, "p", false, 60, None);
    // A new filter: the SUBACK waits for the other nodes and for the record.
    send_subscribe(&mut r, t0, &p, "a/#");
    assert_eq!(log.0.take(), ["+a/#", "+p a/#", "record 1 p a/#", "sync 1"]);
    r.handle(Command::InterestSynced { tokens: vec![1] }, t0);
    assert!(!has_suback(&mut p), "not before the record is written");
    r.handle(Command::RecordWritten { token: 1 }, t0);
    assert!(has_suback(&mut p));
    // A filter the cluster knows already: only the record.
    send_subscribe(&mut r, t0, &p, "a/#");
    assert_eq!(log.0.take(), ["record 2 p a/#"]);
    assert!(!has_suback(&mut p));
    r.handle(Command::RecordWritten { token: 2 }, t0);
    assert!(has_suback(&mut p));
    // A session without expiry needs no record.
    let mut c = connect(&mut r, t0, 3, "c", true, 0, None);
    send_subscribe(&mut r, t0, &c, "a/#");
    assert_eq!(log.0.take(), Vec::<String>::new());
    assert!(has_suback(&mut c));
}
