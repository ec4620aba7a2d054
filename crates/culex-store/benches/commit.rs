//! Write throughput of the group-commit writer under each sync policy, with 100-byte QoS 1
//! messages queued for an offline persistent session (the broker's hot persistence path).
//!
//! * `burst_1000`: submit 1,000 ops at once, wait until the last ticket is reported.
//! * `single_op`: submit one op, wait until it is reported (the latency of one durable op
//!   when the broker is otherwise idle).
//!
//! Run: `cargo bench -p culex-store --bench commit`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use culex_broker::persist::{MessageRecord, MessageState, SessionRecord, StoreOp, StoreSink};
use culex_broker::Message;
use culex_proto::{Properties, QoS};
use culex_store::{spawn_writer, Store, StoreHandle, SyncPolicy, WriterJoin};

/// Distinct keys cycled through, so the database stays the same size during a run.
const KEYS: u64 = 10_000;

struct Bench {
    handle: StoreHandle,
    join: WriterJoin,
    durable: Receiver<u64>,
    message: Arc<Message>,
    next: u64,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn new(policy: SyncPolicy) -> Bench {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (tx, durable) = mpsc::channel();
        let (mut handle, join) = spawn_writer(
            store,
            policy,
            Box::new(move |t| {
                let _ = tx.send(t);
            }),
        );
        let t = handle.submit(StoreOp::Session {
            client_id: Arc::from("offline"),
            record: Some(SessionRecord {
                username: None,
                expiry_interval: u32::MAX,
                expires_at: None,
                subscriptions: Vec::new(),
                inbound_qos2: Vec::new(),
            }),
        });
        let message = Arc::new(Message {
            topic: Arc::from("sensors/line-1/temperature"),
            payload: Bytes::from(vec![b'x'; 100]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            origin: None,
            publication: None,
        });
        let mut b = Bench {
            handle,
            join,
            durable,
            message,
            next: 0,
            _dir: dir,
        };
        b.wait(t);
        b
    }

    fn submit(&mut self) -> u64 {
        self.next += 1;
        self.handle.submit(StoreOp::Message {
            client_id: Arc::from("offline"),
            seq: self.next % KEYS,
            record: Some(MessageRecord {
                message: Arc::clone(&self.message),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
                state: MessageState::Queued,
            }),
        })
    }

    fn wait(&mut self, ticket: u64) {
        while self.durable.recv().unwrap() < ticket {}
    }

    fn finish(self) {
        drop(self.handle);
        let stats = self.join.join().unwrap();
        eprintln!(
            "    writer: {} ops in {} commits ({} durable), mean commit {:.2} ms",
            stats.ops,
            stats.commits,
            stats.durable_commits,
            stats.avg_latency_ns() as f64 / 1e6
        );
    }
}

fn policies() -> [(&'static str, SyncPolicy); 3] {
    [
        ("always", SyncPolicy::Always),
        (
            "batched_10ms",
            SyncPolicy::Batched {
                max_delay: Duration::from_millis(10),
            },
        ),
        ("never", SyncPolicy::Never),
    ]
}

fn commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("burst_1000");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1000));
    for (name, policy) in policies() {
        let mut b = Bench::new(policy);
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let mut last = 0;
                for _ in 0..1000 {
                    last = b.submit();
                }
                b.wait(last);
            })
        });
        b.finish();
    }
    group.finish();

    let mut group = c.benchmark_group("single_op");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(1));
    for (name, policy) in policies() {
        let mut b = Bench::new(policy);
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let t = b.submit();
                b.wait(t);
            })
        });
        b.finish();
    }
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
