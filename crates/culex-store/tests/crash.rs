//! Crash safety smoke test: a child process (this test binary re-invoked) writes with
//! `SyncPolicy::Always` and prints every ticket reported durable; it is killed with SIGKILL in
//! the middle of writing; every ticket it printed must be in the reopened store.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use culex_broker::persist::{MessageRecord, MessageState, SessionRecord, StoreOp, StoreSink};
use culex_broker::Message;
use culex_proto::{Properties, QoS};
use culex_store::{spawn_writer, Store, SyncPolicy};

const CHILD_ENV: &str = "CULEX_STORE_CRASH_CHILD_DIR";
/// Ops the child would write if nobody stopped it.
const CHILD_OPS: u64 = 1_000_000;
/// The parent kills the child once this ticket has been reported durable.
const KILL_AFTER: u64 = 3_000;

fn message(i: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: Arc::from(format!("crash/{i}")),
        payload: Bytes::from(vec![(i % 251) as u8; 100]),
        qos: QoS::AtLeastOnce,
        retain: i.is_multiple_of(2),
        properties: Properties::default(),
        expires_at: None,
        origin: None,
        publication: None,
    })
}

/// Ticket 1 creates session "c"; after that even tickets set a retained message and odd ones
/// queue a message for "c" with `seq` = the ticket.
fn op(ticket: u64) -> StoreOp {
    if ticket == 1 {
        StoreOp::Session {
            client_id: Arc::from("c"),
            record: Some(SessionRecord {
                username: None,
                expiry_interval: u32::MAX,
                expires_at: None,
                subscriptions: Vec::new(),
                inbound_qos2: Vec::new(),
            }),
        }
    } else if ticket.is_multiple_of(2) {
        StoreOp::Retain {
            topic: Arc::from(format!("crash/{ticket}")),
            message: Some(message(ticket)),
        }
    } else {
        StoreOp::Message {
            client_id: Arc::from("c"),
            seq: ticket,
            record: Some(MessageRecord {
                message: message(ticket),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![1],
                state: MessageState::Queued,
            }),
        }
    }
}

/// The child's side: only does something when started by the test below.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&dir)).unwrap();
    let on_durable = Box::new(|ticket: u64| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "DURABLE {ticket}").unwrap();
        out.flush().unwrap();
    });
    // `never` is for trying by hand what SyncPolicy::Never loses (the test below uses Always).
    let policy = match std::env::var("CULEX_STORE_CRASH_POLICY").as_deref() {
        Ok("never") => SyncPolicy::Never,
        _ => SyncPolicy::Always,
    };
    let (mut handle, _join) = spawn_writer(store, policy, on_durable);
    let started = Instant::now();
    for ticket in 1..=CHILD_OPS {
        assert_eq!(handle.submit(op(ticket)), ticket);
        if ticket % 16 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Never outlive a parent that failed to kill us.
        if started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    std::process::exit(3);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_loses_nothing_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut durable = 0;
    let mut killed = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some(t) = line.strip_prefix("DURABLE ") else {
            continue;
        };
        let t: u64 = t.parse().unwrap();
        assert!(t > durable, "tickets reported in order");
        durable = t;
        if t >= KILL_AFTER && !killed {
            // Child::kill sends SIGKILL on Unix.
            child.0.kill().unwrap();
            killed = true;
        }
    }
    let status = child.0.wait().unwrap();
    assert!(killed, "child ended on its own: {status:?}");
    assert!(durable >= KILL_AFTER);
    assert!(durable < CHILD_OPS, "killed mid-way");

    // Everything reported durable (and maybe a little more) is there after the crash.
    let store = Store::open(dir.path()).unwrap();
    let (rec, report) = store.load(Instant::now()).unwrap();
    let retained: std::collections::HashSet<String> =
        rec.retained.iter().map(|m| m.topic.to_string()).collect();
    assert_eq!(rec.sessions.len(), 1);
    let seqs: std::collections::HashSet<u64> =
        rec.sessions[0].messages.iter().map(|(s, _)| *s).collect();
    for t in 2..=durable {
        if t % 2 == 0 {
            assert!(
                retained.contains(&format!("crash/{t}")),
                "retained {t} lost"
            );
        } else {
            assert!(seqs.contains(&t), "message {t} lost");
        }
    }
    for m in &rec.retained {
        assert_eq!(m.payload.len(), 100);
    }
    eprintln!("durable up to ticket {durable}; store after the crash: {report}");
}
