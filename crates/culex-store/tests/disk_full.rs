//! A store whose file cannot grow (a file size limit, as a full disk behaves): commits fail,
//! nothing submitted since is reported durable, the writer says it is failing, and once the
//! limit is lifted the same batch commits and everything is there. Its own test binary: the
//! limit applies to the whole process.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point
#![cfg(target_os = "linux")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use culex_broker::persist::{StoreOp, StoreSink};
use culex_broker::Message;
use culex_proto::{Properties, QoS};
use culex_store::{spawn_writer, Store, SyncPolicy, DB_FILE};

fn retain(i: usize, size: usize) -> StoreOp {
    let topic = format!("big/{i}");
    StoreOp::Retain {
        topic: Arc::from(topic.as_str()),
        message: Some(Arc::new(Message {
            topic: Arc::from(topic.as_str()),
            payload: Bytes::from(vec![b'x'; size]),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
            expires_at: None,
            origin: None,
            publication: None,
        })),
    }
}

/// Sets this process's soft file size limit (the hard limit stays).
fn set_fsize(bytes: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
        lim.rlim_cur = bytes.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_disk_holds_acknowledgements_and_loses_nothing() {
    // As the broker does: a write past the limit fails with EFBIG instead of killing us.
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let durable = Arc::new(AtomicU64::new(0));
    let d = Arc::clone(&durable);
    let (mut handle, join) = spawn_writer(
        store,
        SyncPolicy::Always,
        Box::new(move |t| d.store(t, Ordering::SeqCst)),
    );
    let first = handle.submit(retain(0, 1000));
    wait_until("the first commit", || {
        durable.load(Ordering::SeqCst) >= first
    });

    // The disk is "full": the file may not grow past its size now.
    let size = std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len();
    set_fsize(size);
    let mut last = first;
    for i in 1..=20 {
        last = handle.submit(retain(i, 256 * 1024));
    }
    wait_until("the writer to report failing commits", || {
        handle.stats().failing
    });
    let held = durable.load(Ordering::SeqCst);
    assert!(
        held < last,
        "nothing written past the limit is reported durable"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        durable.load(Ordering::SeqCst),
        held,
        "still held while failing"
    );
    assert!(handle.stats().commit_failures >= 1);

    // Space returns: the batch commits, everything is reported, nothing was dropped.
    set_fsize(u64::MAX);
    wait_until("recovery", || durable.load(Ordering::SeqCst) >= last);
    let stats = handle.stats();
    assert!(!stats.failing && !stats.failed, "{stats:?}");
    drop(handle);
    join.join().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (rec, _) = store.load(Instant::now()).unwrap();
    assert_eq!(rec.retained.len(), 21, "every retained message was stored");
}
