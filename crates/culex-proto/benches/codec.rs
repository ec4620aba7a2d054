//! Codec cost: PUBLISH decode/encode with 64 B and 4 KiB payloads, CONNECT decode, for MQTT
//! 3.1.1 and 5.0.
//!
//! Run with `cargo bench -p culex-proto --bench codec`.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]
// Benchmark inputs are built by the benchmark itself; a failure is a bug in it, as in a test.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use culex_proto::{
    decode, encode, encode_publish, Connect, LastWill, Packet, Properties, Protocol, Publish,
    PublishView, QoS,
};

const VERSIONS: [(Protocol, &str); 2] = [(Protocol::V311, "v3.1.1"), (Protocol::V5, "v5")];
const SIZES: [(usize, &str); 2] = [(64, "64B"), (4096, "4KiB")];

fn publish(protocol: Protocol, payload: usize) -> Publish {
    let mut properties = Properties::default();
    if protocol.is_v5() {
        properties.message_expiry_interval = Some(60);
        properties.content_type = Some("application/octet-stream".into());
    }
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "site/42/device/1234/telemetry/temp".into(),
        packet_id: Some(7),
        properties,
        payload: Bytes::from(vec![0xA5; payload]),
    }
}

fn connect(protocol: Protocol) -> Packet {
    let mut properties = Properties::default();
    if protocol.is_v5() {
        properties.session_expiry_interval = Some(3600);
        properties.receive_maximum = Some(100);
        properties.topic_alias_maximum = Some(10);
    }
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "sensor-0001-abcdef".into(),
        will: Some(LastWill {
            topic: "site/42/device/1234/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        }),
        username: Some("device-1234".into()),
        password: Some(Bytes::from_static(b"correct horse battery staple")),
        properties,
    }))
}

fn encoded(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out).unwrap();
    out
}

fn bench_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_decode");
    for (protocol, v) in VERSIONS {
        for (size, s) in SIZES {
            let wire = encoded(&Packet::Publish(publish(protocol, size)), protocol).freeze();
            group.throughput(Throughput::Bytes(wire.len() as u64));
            group.bench_with_input(BenchmarkId::new(v, s), &wire, |b, wire| {
                // The frame is copied into a fresh read buffer outside the timed part, as it
                // would already sit in the connection's read buffer.
                b.iter_batched(
                    || BytesMut::from(&wire[..]),
                    |mut buf| black_box(decode(&mut buf, Some(protocol), u32::MAX).unwrap()),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("publish_encode");
    for (protocol, v) in VERSIONS {
        for (size, s) in SIZES {
            let p = publish(protocol, size);
            let view = PublishView {
                dup: p.dup,
                qos: p.qos,
                retain: p.retain,
                topic: &p.topic,
                packet_id: p.packet_id,
                properties: &p.properties,
                payload: &p.payload,
            };
            let mut out = BytesMut::with_capacity(8192);
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_function(BenchmarkId::new(v, s), |b| {
                b.iter(|| {
                    out.clear();
                    encode_publish(black_box(&view), protocol, &mut out).unwrap();
                    black_box(out.len())
                })
            });
        }
    }
    group.finish();
}

fn bench_connect(c: &mut Criterion) {
    let mut group = c.benchmark_group("connect_decode");
    for (protocol, v) in VERSIONS {
        let wire = encoded(&connect(protocol), protocol).freeze();
        group.bench_with_input(BenchmarkId::from_parameter(v), &wire, |b, wire| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| black_box(decode(&mut buf, None, u32::MAX).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_publish, bench_connect);
criterion_main!(benches);
