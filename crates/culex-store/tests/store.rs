//! Store round trips, locking, corruption, versions, expiry and the group-commit writer.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use culex_broker::persist::{
    MessageRecord, MessageState, SessionRecord, StoreOp, StoreSink, SubscriptionRecord,
};
use culex_broker::Message;
use culex_proto::{Properties, QoS, RetainHandling, SubscriptionOptions};
use culex_store::{spawn_writer, Clocks, Store, StoreError, SyncPolicy, DB_FILE};

fn full_properties() -> Properties {
    Properties::from(culex_proto::PropertyValues {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 255])),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("a".into(), "2".into()),
            ("ü".into(), "".into()),
        ],
        ..Default::default()
    })
}

fn message(topic: &str, payload: &[u8], qos: QoS, expires_at: Option<Instant>) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(topic),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: true,
        properties: full_properties(),
        expires_at,
        origin: Some(42),
        publication: None,
    })
}

/// Equality up to what the store does not keep exactly: `origin` (not stored) and `expires_at`
/// (stored in milliseconds of wall-clock time).
fn assert_same_message(got: &Message, want: &Message) {
    assert_eq!(got.origin, None);
    match (got.expires_at, want.expires_at) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            let diff = a.max(b) - a.min(b);
            assert!(diff <= Duration::from_millis(5), "expiry off by {diff:?}");
        }
        other => panic!("expiry mismatch: {other:?}"),
    }
    let normalised = Message {
        origin: want.origin,
        publication: None,
        expires_at: want.expires_at,
        ..got.clone()
    };
    assert_eq!(&normalised, want);
}

fn session(username: Option<&str>, expires_at: Option<SystemTime>) -> SessionRecord {
    let mut subscriptions = Vec::new();
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        for rh in [
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendIfNew,
            RetainHandling::DoNotSend,
        ] {
            for (nl, rap) in [(false, false), (true, false), (false, true), (true, true)] {
                subscriptions.push(SubscriptionRecord {
                    filter: format!("$share/g/s/{i}/{rh:?}/{nl}/{rap}/#"),
                    options: SubscriptionOptions {
                        qos,
                        no_local: nl,
                        retain_as_published: rap,
                        retain_handling: rh,
                    },
                    id: nl.then_some(268_435_455 - i as u32),
                });
            }
        }
    }
    SessionRecord {
        username: username.map(str::to_owned),
        expiry_interval: u32::MAX,
        expires_at,
        subscriptions,
        inbound_qos2: vec![1, 7, 65535],
    }
}

fn msg_record(m: Arc<Message>, state: MessageState) -> MessageRecord {
    MessageRecord {
        message: m,
        qos: QoS::ExactlyOnce,
        retain: false,
        subscription_ids: vec![1, 2, 268_435_455],
        state,
    }
}

#[test]
fn every_op_round_trips_through_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = Instant::now();
    let later = Some(now + Duration::from_secs(3600));
    let r1 = message("r/1", b"retained one", QoS::AtLeastOnce, later);
    let r2 = Arc::new(Message {
        properties: Properties::default(),
        retain: false,
        ..(*message("r/2", b"", QoS::AtMostOnce, None)).clone()
    });
    let gone = message("r/gone", b"x", QoS::ExactlyOnce, None);
    let big = message("big/payload", &vec![0xAB; 300_000], QoS::AtLeastOnce, None);
    let states = [
        MessageState::Queued,
        MessageState::WaitPubAck(1),
        MessageState::WaitPubRec(65535),
        MessageState::Released(300),
    ];
    let offline = SystemTime::now() + Duration::from_secs(86_400);
    {
        let store = Store::open(dir.path()).unwrap();
        let mut ops = vec![
            StoreOp::Retain {
                topic: Arc::from("r/1"),
                message: Some(Arc::clone(&r1)),
            },
            StoreOp::Retain {
                topic: Arc::from("r/2"),
                message: Some(Arc::clone(&r2)),
            },
            StoreOp::Retain {
                topic: Arc::from("r/gone"),
                message: Some(gone),
            },
            StoreOp::Session {
                client_id: Arc::from("alice"),
                record: Some(session(Some("alice-user"), Some(offline))),
            },
            StoreOp::Session {
                client_id: Arc::from("bob"),
                record: Some(session(None, None)),
            },
            StoreOp::Session {
                client_id: Arc::from("carol"),
                record: Some(session(None, None)),
            },
            StoreOp::Message {
                client_id: Arc::from("carol"),
                seq: 1,
                record: Some(msg_record(Arc::clone(&r1), MessageState::Queued)),
            },
        ];
        for (i, state) in states.iter().enumerate() {
            ops.push(StoreOp::Message {
                client_id: Arc::from("alice"),
                seq: 10 - i as u64,
                record: Some(msg_record(Arc::clone(&r1), *state)),
            });
        }
        ops.push(StoreOp::Message {
            client_id: Arc::from("alice"),
            seq: 6,
            record: Some(msg_record(Arc::clone(&r2), MessageState::Queued)),
        });
        ops.push(StoreOp::Message {
            client_id: Arc::from("bob"),
            seq: u64::MAX,
            record: Some(msg_record(Arc::clone(&big), MessageState::Queued)),
        });
        store.write(ops).unwrap();
        // A second transaction: clear a retained topic, delete a message, delete a session.
        store
            .write([
                StoreOp::Retain {
                    topic: Arc::from("r/gone"),
                    message: None,
                },
                StoreOp::Message {
                    client_id: Arc::from("alice"),
                    seq: 6,
                    record: None,
                },
                StoreOp::Session {
                    client_id: Arc::from("carol"),
                    record: None,
                },
            ])
            .unwrap();
    }

    let store = Store::open(dir.path()).unwrap();
    let (rec, report) = store.load(Instant::now()).unwrap();
    assert_eq!(report.retained, 2);
    assert_eq!(report.sessions, 2);
    assert_eq!(report.messages, 5);
    assert_eq!(report.expired(), 0);
    assert_eq!(report.orphaned_messages, 0);

    let mut retained = rec.retained.clone();
    retained.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(retained.len(), 2);
    assert_same_message(&retained[0], &r1);
    assert_same_message(&retained[1], &r2);

    assert_eq!(rec.sessions.len(), 2);
    let alice = &rec.sessions[0];
    assert_eq!(&*alice.client_id, "alice");
    let want = session(Some("alice-user"), Some(offline));
    // Wall-clock times are stored in milliseconds.
    let got_exp = alice.record.expires_at.unwrap();
    let d = got_exp
        .duration_since(offline)
        .unwrap_or_else(|e| e.duration());
    assert!(d < Duration::from_millis(1));
    assert_eq!(
        SessionRecord {
            expires_at: want.expires_at,
            ..alice.record.clone()
        },
        want
    );
    let seqs: Vec<u64> = alice.messages.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![7, 8, 9, 10], "seq order, 6 deleted");
    let got_states: Vec<MessageState> = alice.messages.iter().map(|(_, m)| m.state).collect();
    assert_eq!(got_states, vec![states[3], states[2], states[1], states[0]]);
    for (_, m) in &alice.messages {
        assert_eq!(m.qos, QoS::ExactlyOnce);
        assert!(!m.retain);
        assert_eq!(m.subscription_ids, vec![1, 2, 268_435_455]);
        assert_same_message(&m.message, &r1);
    }
    let bob = &rec.sessions[1];
    assert_eq!(&*bob.client_id, "bob");
    assert_eq!(bob.record, session(None, None));
    assert_eq!(bob.messages.len(), 1);
    assert_eq!(bob.messages[0].0, u64::MAX);
    assert_same_message(&bob.messages[0].1.message, &big);
}

#[test]
fn session_delete_range_deletes_only_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m = message("t", b"p", QoS::AtLeastOnce, None);
    let mut ops = Vec::new();
    // "a" and "a\0" / "ab" sort next to each other; only "a"'s messages may go.
    for cid in ["a", "ab", "a\u{0}", "b"] {
        ops.push(StoreOp::Session {
            client_id: Arc::from(cid),
            record: Some(session(None, None)),
        });
        for seq in [0, 1, u64::MAX] {
            ops.push(StoreOp::Message {
                client_id: Arc::from(cid),
                seq,
                record: Some(msg_record(Arc::clone(&m), MessageState::Queued)),
            });
        }
    }
    store.write(ops).unwrap();
    store
        .write([StoreOp::Session {
            client_id: Arc::from("a"),
            record: None,
        }])
        .unwrap();
    let (rec, report) = store.load(Instant::now()).unwrap();
    assert_eq!(report.sessions, 3);
    assert_eq!(report.messages, 9);
    assert!(rec.sessions.iter().all(|s| &*s.client_id != "a"));
}

#[test]
fn coalescing_within_a_batch_keeps_submission_order_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let m = message("t", b"p", QoS::AtLeastOnce, None);
    let rec = |state| Some(msg_record(Arc::clone(&m), state));
    store
        .write([
            StoreOp::Session {
                client_id: Arc::from("c"),
                record: Some(session(None, None)),
            },
            StoreOp::Message {
                client_id: Arc::from("c"),
                seq: 1,
                record: rec(MessageState::Queued),
            },
        ])
        .unwrap();
    store
        .write([
            StoreOp::Message {
                client_id: Arc::from("c"),
                seq: 2,
                record: rec(MessageState::Queued),
            },
            StoreOp::Message {
                client_id: Arc::from("c"),
                seq: 2,
                record: rec(MessageState::WaitPubAck(3)),
            },
            // Deleting the session deletes 1 (on disk) and 2 (earlier in this batch) ...
            StoreOp::Session {
                client_id: Arc::from("c"),
                record: None,
            },
            // ... but not what comes after it.
            StoreOp::Session {
                client_id: Arc::from("c"),
                record: Some(session(Some("new"), None)),
            },
            StoreOp::Message {
                client_id: Arc::from("c"),
                seq: 3,
                record: rec(MessageState::Queued),
            },
            StoreOp::Retain {
                topic: Arc::from("t"),
                message: Some(Arc::clone(&m)),
            },
            StoreOp::Retain {
                topic: Arc::from("t"),
                message: None,
            },
        ])
        .unwrap();
    let (rec, report) = store.load(Instant::now()).unwrap();
    assert_eq!(report.retained, 0);
    assert_eq!(rec.sessions.len(), 1);
    assert_eq!(rec.sessions[0].record.username.as_deref(), Some("new"));
    let seqs: Vec<u64> = rec.sessions[0].messages.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![3]);
}

#[test]
fn second_open_is_refused_with_the_directory_named() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Locked { dir: d, .. } if d == dir.path()),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(matches!(
        Store::reset(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(first);
    Store::open(dir.path()).unwrap();
}

/// `persistence_file`: stores with different file names in one directory are separate and
/// lock separately; the same name is still refused.
#[test]
fn different_files_in_one_directory_do_not_share_or_lock_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open_file(dir.path(), "a.redb").unwrap();
    let b = Store::open_file(dir.path(), "b.redb").unwrap();
    assert_ne!(a.path(), b.path());
    let err = Store::open_file(dir.path(), "a.redb").unwrap_err();
    assert!(
        matches!(&err, StoreError::Locked { lock, .. } if lock.ends_with("a.redb.lock")),
        "{err:?}"
    );
    assert!(err.to_string().contains("a.redb.lock"), "{err}");
    // The default file has its own lock too.
    let default = Store::open(dir.path()).unwrap();
    drop((a, b, default));
    assert!(Store::reset_file(dir.path(), "a.redb").unwrap().is_some());
    assert!(dir.path().join("b.redb").exists());
}

fn assert_corrupt(dir: &std::path::Path) {
    let err = Store::open(dir).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("--reset-store"), "{text}");
    assert!(text.contains(DB_FILE), "{text}");
}

/// Writes a store with one retained message and returns its file size.
fn populated(dir: &std::path::Path) -> u64 {
    let store = Store::open(dir).unwrap();
    store
        .write([StoreOp::Retain {
            topic: Arc::from("keep"),
            message: Some(message("keep", b"v", QoS::AtLeastOnce, None)),
        }])
        .unwrap();
    drop(store);
    std::fs::metadata(dir.join(DB_FILE)).unwrap().len()
}

#[test]
fn garbage_file_is_corrupt_and_reset_moves_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let len = populated(dir.path());
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(dir.path().join(DB_FILE), &garbage).unwrap();
    assert_corrupt(dir.path());

    let aside = Store::reset(dir.path()).unwrap().unwrap();
    assert!(aside
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("culex.redb.bad-"));
    assert_eq!(std::fs::read(&aside).unwrap(), garbage, "kept, not deleted");
    let store = Store::open(dir.path()).unwrap();
    let (rec, report) = store.load(Instant::now()).unwrap();
    assert_eq!(report.retained + report.sessions, 0);
    assert!(rec.retained.is_empty() && rec.sessions.is_empty());
    drop(store);
    // A second reset in the same second does not overwrite the first file.
    let again = Store::reset(dir.path()).unwrap().unwrap();
    assert_ne!(again, aside);
    assert!(aside.exists() && again.exists());
    assert_eq!(Store::reset(dir.path()).unwrap(), None);
}

#[test]
fn truncated_files_are_corrupt() {
    for keep in [0u64, 100, 600, 5000, 20_000, 40_000, 70_000] {
        let dir = tempfile::tempdir().unwrap();
        let len = populated(dir.path());
        assert!(len > keep, "{len}");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(DB_FILE))
            .unwrap();
        f.set_len(keep).unwrap();
        drop(f);
        assert_corrupt(dir.path());
    }
}

#[test]
fn corrupt_record_is_reported_with_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("sessions"))
                .unwrap();
            t.insert("mallory", &[1u8, 0, 0][..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let err = store.load(Instant::now()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{text}");
    assert!(
        text.contains("sessions") && text.contains("mallory"),
        "{text}"
    );
}

#[test]
fn unknown_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populated(dir.path());
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            t.insert("format_version", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            &err,
            StoreError::UnknownVersion {
                found: 99,
                expected: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("--reset-store"));
}

#[test]
fn expired_data_is_dropped_on_load_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Clocks::now();
    let soon = Some(t0.now + Duration::from_secs(1));
    let store = Store::open(dir.path()).unwrap();
    let m = message("e", b"x", QoS::AtLeastOnce, soon);
    let keep = message(
        "k",
        b"x",
        QoS::AtLeastOnce,
        Some(t0.now + Duration::from_secs(60)),
    );
    store
        .write_at(
            [
                StoreOp::Retain {
                    topic: Arc::from("e"),
                    message: Some(Arc::clone(&m)),
                },
                StoreOp::Retain {
                    topic: Arc::from("k"),
                    message: Some(Arc::clone(&keep)),
                },
                StoreOp::Session {
                    client_id: Arc::from("live"),
                    record: Some(session(None, Some(t0.wall + Duration::from_secs(60)))),
                },
                StoreOp::Session {
                    client_id: Arc::from("stale"),
                    record: Some(session(None, Some(t0.wall + Duration::from_secs(1)))),
                },
                StoreOp::Message {
                    client_id: Arc::from("stale"),
                    seq: 1,
                    record: Some(msg_record(Arc::clone(&keep), MessageState::Queued)),
                },
                StoreOp::Message {
                    client_id: Arc::from("live"),
                    seq: 1,
                    record: Some(msg_record(Arc::clone(&m), MessageState::Queued)),
                },
                StoreOp::Message {
                    client_id: Arc::from("live"),
                    seq: 2,
                    record: Some(msg_record(Arc::clone(&m), MessageState::WaitPubAck(4))),
                },
                StoreOp::Message {
                    client_id: Arc::from("live"),
                    seq: 3,
                    record: Some(msg_record(Arc::clone(&keep), MessageState::Queued)),
                },
                // A message of a session that was never stored.
                StoreOp::Message {
                    client_id: Arc::from("ghost"),
                    seq: 1,
                    record: Some(msg_record(Arc::clone(&keep), MessageState::Queued)),
                },
            ],
            t0,
        )
        .unwrap();
    // A different process start: another Instant base, two seconds later on the wall clock.
    let t1 = Clocks {
        now: Instant::now() + Duration::from_secs(1000),
        wall: t0.wall + Duration::from_secs(2),
    };
    let (rec, report) = store.load_at(t1).unwrap();
    assert_eq!(report.retained, 1);
    assert_eq!(report.expired_retained, 1);
    assert_eq!(report.expired_sessions, 1);
    assert_eq!(report.expired_messages, 1, "queued expired; in-flight kept");
    assert_eq!(report.orphaned_messages, 1);
    assert_eq!(report.expired(), 3);
    assert_eq!(&*rec.retained[0].topic, "k");
    let left = rec.retained[0].expires_at.unwrap() - t1.now;
    assert!(
        left > Duration::from_secs(57) && left <= Duration::from_secs(58),
        "{left:?}"
    );
    assert_eq!(rec.sessions.len(), 1);
    let seqs: Vec<(u64, MessageState)> = rec.sessions[0]
        .messages
        .iter()
        .map(|(s, m)| (*s, m.state))
        .collect();
    assert_eq!(
        seqs,
        vec![(2, MessageState::WaitPubAck(4)), (3, MessageState::Queued)]
    );
    // The in-flight message past its expiry is resent with an expiry of 0.
    assert!(rec.sessions[0].messages[0].1.message.is_expired(t1.now));

    // What was dropped was also deleted.
    let (_, again) = store.load_at(t1).unwrap();
    assert_eq!(again.expired() + again.orphaned_messages, 0);
    assert_eq!((again.retained, again.sessions, again.messages), (1, 1, 2));
}

fn retain_op(i: u64) -> StoreOp {
    StoreOp::Retain {
        topic: Arc::from(format!("t/{i}")),
        message: Some(message(
            &format!("t/{i}"),
            &[i as u8; 100],
            QoS::AtLeastOnce,
            None,
        )),
    }
}

/// A callback for `spawn_writer`, the last ticket it saw, and every ticket it saw.
type Probe = (Box<dyn Fn(u64) + Send>, Arc<AtomicU64>, mpsc::Receiver<u64>);

fn durable_probe() -> Probe {
    let last = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let l = Arc::clone(&last);
    let cb = Box::new(move |t: u64| {
        let prev = l.swap(t, Ordering::SeqCst);
        assert!(t > prev, "tickets reported out of order: {prev} then {t}");
        let _ = tx.send(t);
    });
    (cb, last, rx)
}

#[test]
fn group_commit_uses_far_fewer_commits_than_ops() {
    for policy in [
        SyncPolicy::Always,
        SyncPolicy::Batched {
            max_delay: Duration::from_millis(20),
        },
        SyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (cb, last, _rx) = durable_probe();
        let (mut handle, join) = spawn_writer(store, policy, cb);
        let mut ticket = 0;
        for i in 0..1000 {
            let t = handle.submit(retain_op(i));
            assert_eq!(t, ticket + 1, "tickets increase by one");
            ticket = t;
        }
        drop(handle);
        let stats = join.join().unwrap();
        assert_eq!(last.load(Ordering::SeqCst), 1000, "{policy:?}");
        assert_eq!(stats.last_committed, 1000);
        assert_eq!(stats.submitted, 1000);
        assert_eq!(stats.ops, 1000);
        assert_eq!(stats.backlog, 0);
        assert!(!stats.failed);
        assert!(stats.commits >= 1);
        assert!(
            stats.commits < 100,
            "{policy:?}: {} commits for 1000 ops",
            stats.commits
        );
        assert!(stats.avg_latency_ns() > 0);
        // Every commit, checkpoints included, is in the duration histogram.
        assert_eq!(stats.commit_buckets.iter().sum::<u64>(), stats.commits);
        assert!(stats.durable_commits >= 1, "{policy:?}: {stats:?}");

        let store = Store::open(dir.path()).unwrap();
        let (rec, _) = store.load(Instant::now()).unwrap();
        assert_eq!(rec.retained.len(), 1000, "{policy:?}");
    }
}

#[test]
fn on_durable_reports_each_batch_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (cb, _, rx) = durable_probe();
    let (mut handle, join) = spawn_writer(store, SyncPolicy::Always, cb);
    for round in 0..5u64 {
        let t = handle.submit(retain_op(round));
        // Wait for this ticket without shutting down: it must be reported on its own.
        loop {
            let got = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            if got >= t {
                break;
            }
        }
        assert_eq!(handle.backlog(), 0);
    }
    // Coalescing: many updates of one key in a burst.
    for _ in 0..200 {
        handle.submit(retain_op(7));
    }
    drop(handle);
    let stats = join.join().unwrap();
    assert_eq!(stats.ops, 205);
    assert!(stats.coalesced > 0, "{stats:?}");
}

#[test]
fn never_policy_survives_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (cb, last, _) = durable_probe();
    let (mut handle, join) = spawn_writer(store, SyncPolicy::Never, cb);
    for i in 0..50 {
        handle.submit(retain_op(i));
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(handle);
    join.join().unwrap();
    assert_eq!(last.load(Ordering::SeqCst), 50);
    let store = Store::open(dir.path()).unwrap();
    let (rec, _) = store.load(Instant::now()).unwrap();
    assert_eq!(rec.retained.len(), 50);
}
