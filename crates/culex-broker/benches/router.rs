//! The router's cost per command, without sockets or tasks: what one PUBLISH costs it to route
//! to 1 and to 8 subscribers (QoS 0, and QoS 1 with the subscriber's PUBACK), and what a client
//! connecting and disconnecting costs, among 10,000 connected sessions with a subscription each.
//!
//! Run with `cargo bench -p culex-broker --bench router`.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use culex_broker::{
    outbox, BrokerSettings, Command, ConnectRequest, DisconnectKind, Outbound, OutboxReceiver,
    Router,
};
use culex_proto::{Properties, Protocol, Publish, QoS, Subscribe, SubscribeFilter};
use culex_proto::{SubscriptionOptions, Unsubscribe};
use tokio::sync::oneshot;

/// Sessions connected in every benchmark, each subscribed to a topic of its own.
const SESSIONS: u64 = 10_000;

/// Connects client `conn` as `id` and returns its outbox.
fn connect(r: &mut Router, now: Instant, conn: u64, id: &str) -> OutboxReceiver {
    let (tx, rx) = outbox(r.settings().outbox_capacity(100));
    let (reply, _reply_rx) = oneshot::channel();
    r.handle(
        Command::Connect(Box::new(ConnectRequest {
            conn,
            protocol: Protocol::V311,
            client_id: id.into(),
            clean_start: true,
            session_expiry: 0,
            receive_maximum: u16::MAX,
            maximum_packet_size: u32::MAX,
            will: None,
            username: None,
            access: None,
            queue: None,
            outbox: tx,
            reply,
        })),
        now,
    );
    rx
}

fn subscribe(r: &mut Router, now: Instant, conn: u64, filter: &str, qos: QoS) {
    r.handle(
        Command::Subscribe {
            conn,
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
}

fn publish(topic: &str, qos: QoS, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: Properties::default(),
        payload: Bytes::from_static(&[0u8; 64]),
    }
}

/// Empties an outbox; returns how many deliveries it held and the packet id of the last.
fn drain(rx: &mut OutboxReceiver) -> (usize, Option<u16>) {
    let (mut n, mut last) = (0, None);
    while let Ok(item) = rx.try_recv() {
        if let Outbound::Deliver(d) = item {
            n += 1;
            last = d.packet_id.or(last);
        }
    }
    (n, last)
}

/// A router with [`SESSIONS`] connected sessions (`dev/<i>/cmd` each), a publisher (conn 0),
/// and `subscribers` more sessions on `fan/#` at `qos`. Returns the router, the publisher's
/// outbox and the fan subscribers' outboxes (the others are kept alive in the first vector).
fn setup(
    subscribers: u64,
    qos: QoS,
) -> (
    Router,
    Vec<OutboxReceiver>,
    OutboxReceiver,
    Vec<(u64, OutboxReceiver)>,
) {
    let now = Instant::now();
    let mut r = Router::new(BrokerSettings::default());
    let mut idle = Vec::new();
    for i in 1..=SESSIONS {
        let mut rx = connect(&mut r, now, i, &format!("dev-{i}"));
        subscribe(&mut r, now, i, &format!("dev/{i}/cmd"), QoS::AtLeastOnce);
        drain(&mut rx);
        idle.push(rx);
    }
    let publisher = connect(&mut r, now, 0, "publisher");
    let mut fan = Vec::new();
    for j in 0..subscribers {
        let conn = SESSIONS + 1 + j;
        let mut rx = connect(&mut r, now, conn, &format!("fan-{j}"));
        subscribe(&mut r, now, conn, "fan/#", qos);
        drain(&mut rx);
        fan.push((conn, rx));
    }
    (r, idle, publisher, fan)
}

fn bench_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_publish");
    for (name, subscribers, qos) in [
        ("qos0_to_1", 1, QoS::AtMostOnce),
        ("qos0_to_8", 8, QoS::AtMostOnce),
        ("qos1_to_1_with_puback", 1, QoS::AtLeastOnce),
        ("qos1_to_8_with_pubacks", 8, QoS::AtLeastOnce),
    ] {
        let (mut r, _idle, mut publisher, mut fan) = setup(subscribers, qos);
        let now = Instant::now();
        let mut id = 0u16;
        // One PUBLISH routed, every subscriber's delivery taken and (QoS 1) acknowledged.
        // Returns how many deliveries there were.
        let mut round = move || {
            id = id % 60_000 + 1;
            r.handle(
                Command::Publish {
                    conn: 0,
                    publish: publish(black_box("fan/site/42/temp"), qos, id),
                    ack: false,
                    publication: None,
                },
                now,
            );
            let mut delivered = 0;
            for (conn, rx) in &mut fan {
                let (n, last_id) = drain(rx);
                delivered += n;
                if let Some(packet_id) = last_id {
                    r.handle(
                        Command::PubAck {
                            conn: *conn,
                            packet_id,
                        },
                        now,
                    );
                }
            }
            drain(&mut publisher);
            delivered
        };
        // Far more rounds than the in-flight window and queue hold: if acknowledgements were
        // not reaching the router, deliveries would stop here, and the timing would be of
        // nothing.
        for _ in 0..5_000 {
            assert_eq!(round(), subscribers as usize, "{name}");
        }
        group.bench_function(name, |b| b.iter(&mut round));
    }
    group.finish();
}

fn bench_sessions(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_sessions");
    let (mut r, _idle, _publisher, _fan) = setup(0, QoS::AtMostOnce);
    let now = Instant::now();
    let conn = 2 * SESSIONS;
    group.bench_function("connect_subscribe_unsubscribe_disconnect", |b| {
        b.iter(|| {
            let mut rx = connect(&mut r, now, conn, black_box("visitor"));
            subscribe(&mut r, now, conn, "visitor/+/cmd", QoS::AtLeastOnce);
            r.handle(
                Command::Unsubscribe {
                    conn,
                    unsubscribe: Unsubscribe {
                        packet_id: 2,
                        filters: vec!["visitor/+/cmd".into()],
                        properties: Properties::default(),
                    },
                },
                now,
            );
            r.handle(
                Command::Disconnect {
                    conn,
                    kind: DisconnectKind::Normal,
                    session_expiry: None,
                    inbound_qos2: Vec::new(),
                },
                now,
            );
            drain(&mut rx);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_publish, bench_sessions);
criterion_main!(benches);
