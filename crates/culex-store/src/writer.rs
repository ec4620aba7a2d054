//! The writer thread: group commit of the router's ops.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use culex_broker::persist::{StoreOp, StoreSink};
use redb::Durability;

use crate::codec::Clocks;
use crate::error::StoreError;
use crate::store::{Batch, Store};

/// At most this many ops go into one write transaction.
pub const MAX_BATCH_OPS: usize = 16 * 1024;

/// Under [`SyncPolicy::Never`], a durable commit (one fsync) is made at least this often while
/// there are non-durable commits, so the file stays bounded and a crash loses at most about
/// this much.
const NEVER_CHECKPOINT: Duration = Duration::from_secs(1);

/// While commits fail (disk full, a file size limit, an I/O error), the batch is retried after
/// this long, the delay doubling up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two attempts of a failing commit.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Once every handle is gone (shutdown), a failing commit is retried for at most this long
/// before the writer gives up and reports the error.
const GIVE_UP_AFTER_CLOSE: Duration = Duration::from_secs(10);

/// Upper bounds (inclusive) of the commit-duration histogram's buckets, from an in-memory
/// commit (about 100 µs) to a stalled fsync (10 s). [`StoreStats::commit_buckets`] has one
/// more bucket, for longer commits.
pub const COMMIT_BUCKET_BOUNDS: [Duration; 16] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2500),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// Buckets of the commit-duration histogram: one per bound, and one above the last.
const COMMIT_BUCKETS: usize = COMMIT_BUCKET_BOUNDS.len() + 1;

/// When the writer makes commits durable (calls `fsync`).
///
/// Whatever the policy, a batch is written in one redb write transaction, which is atomic: after
/// a crash the database holds exactly the batches that were made durable, in order, never part
/// of one. redb commits by copy-on-write (new pages, then a new root in the header), and a
/// durable commit is one `fsync` of the file (redb's default one-phase commit, with checksums
/// telling a torn header slot from a good one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Each batch is committed with `Durability::Immediate` (fsync) as soon as the writer has
    /// drained what is in the channel. Ops arriving while an fsync runs form the next batch, so
    /// under load the cost is one fsync per batch, not per op. Reported tickets survive a
    /// process crash and a power cut. Lowest latency per durable op.
    Always,
    /// Like `Always`, but after the first op of a batch the writer keeps collecting for up to
    /// `max_delay` before committing (one fsync). Fewer, larger commits at the cost of up to
    /// `max_delay` extra latency before a ticket is reported. Same guarantee as `Always`.
    Batched {
        /// How long the writer waits for more ops after the first one of a batch.
        max_delay: Duration,
    },
    /// Batches are committed with redb's `Durability::None`: written to redb's memory, no
    /// fsync, and the ticket is reported right away. Such commits are NOT persisted by redb
    /// until a later durable commit: a process crash or `kill -9` (not only a power cut) loses
    /// them. The writer makes a durable commit at least once a second while there are
    /// non-durable ones, and at shutdown (as does redb when the database is closed), so a
    /// crash loses about the last second and a clean stop loses nothing.
    Never,
}

/// Counters shared by the handles and the writer thread.
#[derive(Debug, Default)]
struct Shared {
    submitted: AtomicU64,
    committed_ops: AtomicU64,
    coalesced: AtomicU64,
    skipped: AtomicU64,
    commits: AtomicU64,
    durable_commits: AtomicU64,
    last_latency_ns: AtomicU64,
    total_latency_ns: AtomicU64,
    commit_buckets: [AtomicU64; COMMIT_BUCKETS],
    backlog: AtomicU64,
    last_committed: AtomicU64,
    failed: AtomicBool,
    failing: AtomicBool,
    commit_failures: AtomicU64,
    /// Every handle is gone: the writer drains and exits.
    closing: AtomicBool,
    /// The writer thread has ended (normally at shutdown; otherwise it died).
    exited: AtomicBool,
}

/// A snapshot of the writer's counters (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Ops submitted through the handles.
    pub submitted: u64,
    /// Ops in committed batches (before coalescing).
    pub ops: u64,
    /// Ops that a later op on the same key in the same batch made redundant.
    pub coalesced: u64,
    /// Ops that could not be encoded (logged and not stored).
    pub skipped: u64,
    /// Write transactions committed.
    pub commits: u64,
    /// Of which durable (fsync).
    pub durable_commits: u64,
    /// Duration of the last commit (encoding, writing and syncing), in nanoseconds.
    pub last_latency_ns: u64,
    /// Sum of all commit durations, in nanoseconds.
    pub total_latency_ns: u64,
    /// Commits by duration: `commit_buckets[i]` counts those longer than
    /// `COMMIT_BUCKET_BOUNDS[i - 1]` and at most [`COMMIT_BUCKET_BOUNDS`]`[i]`; the last
    /// counts those longer than every bound. Not cumulative; they add up to [`Self::commits`].
    pub commit_buckets: [u64; COMMIT_BUCKETS],
    /// Ops submitted and not yet committed (or discarded).
    pub backlog: u64,
    /// Last ticket committed (reported to `on_durable`); 0 before the first.
    pub last_committed: u64,
    /// The writer stopped for good (it could not start, died, or gave up on a failing commit
    /// at shutdown): nothing more is stored and no further tickets are reported.
    pub failed: bool,
    /// Commits are failing right now and are being retried: what waits for the store (QoS
    /// 1/2 acknowledgements) is held until a commit succeeds again.
    pub failing: bool,
    /// Commit attempts that failed since start (each retry counts).
    pub commit_failures: u64,
    /// The writer thread has ended.
    pub exited: bool,
}

impl StoreStats {
    /// Mean commit duration, in nanoseconds (0 before the first commit).
    pub fn avg_latency_ns(&self) -> u64 {
        self.total_latency_ns.checked_div(self.commits).unwrap_or(0)
    }
}

impl Shared {
    /// Records the duration of a commit: the last one, the sum and the histogram bucket.
    fn observe_commit(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.last_latency_ns.store(ns, Ordering::Relaxed);
        self.total_latency_ns.fetch_add(ns, Ordering::Relaxed);
        let bucket = COMMIT_BUCKET_BOUNDS.partition_point(|bound| *bound < elapsed);
        if let Some(c) = self.commit_buckets.get(bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> StoreStats {
        StoreStats {
            submitted: self.submitted.load(Ordering::Relaxed),
            ops: self.committed_ops.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            durable_commits: self.durable_commits.load(Ordering::Relaxed),
            last_latency_ns: self.last_latency_ns.load(Ordering::Relaxed),
            total_latency_ns: self.total_latency_ns.load(Ordering::Relaxed),
            commit_buckets: self
                .commit_buckets
                .each_ref()
                .map(|c| c.load(Ordering::Relaxed)),
            backlog: self.backlog.load(Ordering::Relaxed),
            last_committed: self.last_committed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            failing: self.failing.load(Ordering::Relaxed),
            commit_failures: self.commit_failures.load(Ordering::Relaxed),
            exited: self.exited.load(Ordering::Relaxed),
        }
    }
}

/// The sending side: next ticket and the channel, under one lock so that tickets enter the
/// channel in increasing order even with several handles.
#[derive(Debug)]
struct Submitter {
    next_ticket: u64,
    tx: Sender<(u64, StoreOp)>,
    shared: Arc<Shared>,
}

impl Drop for Submitter {
    /// The last handle is gone: a failing commit is retried only for a while longer.
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
    }
}

/// The router's [`StoreSink`]: queues ops for the writer thread. Cloneable; the writer drains,
/// commits and exits when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    submitter: Arc<Mutex<Submitter>>,
    shared: Arc<Shared>,
}

impl StoreHandle {
    /// Ops submitted but not yet committed. The channel is unbounded; callers bound it by
    /// checking this (for example, stop reading from publishers while it is high).
    pub fn backlog(&self) -> u64 {
        self.shared.backlog.load(Ordering::Relaxed)
    }

    /// The writer's counters.
    pub fn stats(&self) -> StoreStats {
        self.shared.snapshot()
    }
}

impl StoreSink for StoreHandle {
    fn submit(&mut self, op: StoreOp) -> u64 {
        // A poisoned lock only means another submitter panicked; the data is still consistent.
        let mut s = self
            .submitter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        s.next_ticket += 1;
        let ticket = s.next_ticket;
        self.shared.submitted.fetch_add(1, Ordering::Relaxed);
        self.shared.backlog.fetch_add(1, Ordering::Relaxed);
        if s.tx.send((ticket, op)).is_err() {
            self.shared.backlog.fetch_sub(1, Ordering::Relaxed);
            if !self.shared.failed.swap(true, Ordering::Relaxed) {
                tracing::error!("store writer is gone; ops are no longer stored");
            }
        }
        ticket
    }
}

/// Waits for the writer thread.
#[derive(Debug)]
pub struct WriterJoin {
    thread: Option<JoinHandle<Result<(), StoreError>>>,
    spawn_error: Option<StoreError>,
    shared: Arc<Shared>,
}

/// Reads the writer's counters without keeping the writer alive (for metrics).
#[derive(Debug, Clone)]
pub struct StatsReader {
    shared: Arc<Shared>,
}

impl StatsReader {
    /// The writer's counters now.
    pub fn stats(&self) -> StoreStats {
        self.shared.snapshot()
    }
}

impl WriterJoin {
    /// The writer's counters (like [`StoreHandle::stats`], without keeping the channel open).
    pub fn stats(&self) -> StoreStats {
        self.shared.snapshot()
    }

    /// A reader of the writer's counters that can outlive this join handle.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Waits until the writer has exited (after every handle was dropped and the last batch
    /// committed) and returns its final counters, or the first commit error. The store is
    /// closed and its lock released when this returns.
    pub fn join(mut self) -> Result<StoreStats, StoreError> {
        if let Some(e) = self.spawn_error.take() {
            return Err(e);
        }
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| StoreError::WriterPanicked)??;
        }
        Ok(self.shared.snapshot())
    }
}

/// Moves `store` onto a writer thread applying ops under `policy`. `on_durable(ticket)` is
/// called on that thread after each batch commits, with the last ticket of the batch: every op
/// with that ticket or an earlier one is then stored (durably, except under
/// [`SyncPolicy::Never`]).
///
/// A failed commit is retried (after [`RETRY_MIN`], doubling up to [`RETRY_MAX`], reopening the
/// database, which redb requires after an I/O error) until it succeeds: meanwhile
/// [`StoreStats::failing`] is set, later ops wait in the channel and `on_durable` is not
/// called, so nothing that waits for the store is acknowledged; nothing is dropped. Only at
/// shutdown does the writer give up, after [`GIVE_UP_AFTER_CLOSE`], setting
/// [`StoreStats::failed`].
pub fn spawn_writer(
    store: Store,
    policy: SyncPolicy,
    on_durable: Box<dyn Fn(u64) + Send>,
) -> (StoreHandle, WriterJoin) {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let path = store.path().to_path_buf();
    let handle = StoreHandle {
        submitter: Arc::new(Mutex::new(Submitter {
            next_ticket: 0,
            tx,
            shared: Arc::clone(&shared),
        })),
        shared: Arc::clone(&shared),
    };
    let writer = Writer {
        store,
        policy,
        rx,
        shared: Arc::clone(&shared),
        on_durable,
        last_durable: Instant::now(),
        unsynced: false,
    };
    let spawned = std::thread::Builder::new()
        .name("culex-store-writer".into())
        .spawn(move || {
            let _exit = ExitFlag(Arc::clone(&writer.shared));
            writer.run()
        });
    let join = match spawned {
        Ok(t) => WriterJoin {
            thread: Some(t),
            spawn_error: None,
            shared,
        },
        Err(source) => {
            shared.failed.store(true, Ordering::Relaxed);
            tracing::error!(error = %source, "cannot start the store writer thread");
            WriterJoin {
                thread: None,
                spawn_error: Some(StoreError::Io {
                    action: "cannot start the writer thread for",
                    path,
                    source,
                }),
                shared,
            }
        }
    };
    (handle, join)
}

/// Sets [`Shared::exited`] when the writer thread ends, however it ends (a panic included).
struct ExitFlag(Arc<Shared>);

impl Drop for ExitFlag {
    fn drop(&mut self) {
        self.0.exited.store(true, Ordering::Relaxed);
    }
}

struct Writer {
    store: Store,
    policy: SyncPolicy,
    rx: Receiver<(u64, StoreOp)>,
    shared: Arc<Shared>,
    on_durable: Box<dyn Fn(u64) + Send>,
    /// When the last durable commit ended.
    last_durable: Instant,
    /// There are non-durable commits since then.
    unsynced: bool,
}

impl fmt::Debug for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("store", &self.store)
            .field("policy", &self.policy)
            .finish()
    }
}

impl Writer {
    fn run(mut self) -> Result<(), StoreError> {
        let mut first_error = None;
        loop {
            let first = if self.unsynced {
                let left = NEVER_CHECKPOINT.saturating_sub(self.last_durable.elapsed());
                match self.rx.recv_timeout(left) {
                    Ok(x) => x,
                    Err(RecvTimeoutError::Timeout) => {
                        self.checkpoint();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(x) => x,
                    Err(_) => break,
                }
            };
            let mut batch = Batch::default();
            let (mut last_ticket, op) = first;
            batch.push(op);
            let disconnected = self.fill(&mut batch, &mut last_ticket);
            self.commit(&batch, last_ticket, &mut first_error);
            if disconnected {
                break;
            }
        }
        if self.unsynced {
            self.checkpoint();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Adds whatever else the policy lets into `batch`. Returns true if every handle is gone.
    fn fill(&self, batch: &mut Batch, last_ticket: &mut u64) -> bool {
        let deadline = match self.policy {
            SyncPolicy::Batched { max_delay } => Some(Instant::now() + max_delay),
            SyncPolicy::Always | SyncPolicy::Never => None,
        };
        while batch.ops < MAX_BATCH_OPS as u64 {
            let next = match self.rx.try_recv() {
                Ok(x) => Ok(x),
                Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) => {
                    let Some(deadline) = deadline else {
                        return false;
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return false;
                    }
                    match self.rx.recv_timeout(left) {
                        Ok(x) => Ok(x),
                        Err(RecvTimeoutError::Timeout) => return false,
                        Err(RecvTimeoutError::Disconnected) => Err(()),
                    }
                }
            };
            match next {
                Ok((ticket, op)) => {
                    *last_ticket = ticket;
                    batch.push(op);
                }
                Err(()) => return true,
            }
        }
        false
    }

    fn commit(&mut self, batch: &Batch, last_ticket: u64, first_error: &mut Option<StoreError>) {
        let shared = Arc::clone(&self.shared);
        if shared.failed.load(Ordering::Relaxed) {
            shared.backlog.fetch_sub(batch.ops, Ordering::Relaxed);
            return;
        }
        let mut delay = RETRY_MIN;
        let mut closing_since: Option<Instant> = None;
        loop {
            // Under `Never`, still sync once in a while so that redb can reuse freed pages and
            // a crash loses a bounded amount.
            let durable =
                self.policy != SyncPolicy::Never || self.last_durable.elapsed() >= NEVER_CHECKPOINT;
            let durability = if durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            let start = Instant::now();
            let result = self.store.commit(batch, durability, &Clocks::now());
            let elapsed = start.elapsed();
            match result {
                Ok(skipped) => {
                    shared.backlog.fetch_sub(batch.ops, Ordering::Relaxed);
                    if shared.failing.swap(false, Ordering::Relaxed) {
                        tracing::warn!("store commits succeed again; held acknowledgements go out");
                    }
                    shared.commits.fetch_add(1, Ordering::Relaxed);
                    shared.committed_ops.fetch_add(batch.ops, Ordering::Relaxed);
                    shared
                        .coalesced
                        .fetch_add(batch.coalesced, Ordering::Relaxed);
                    shared.skipped.fetch_add(skipped, Ordering::Relaxed);
                    shared.observe_commit(elapsed);
                    if durable {
                        shared.durable_commits.fetch_add(1, Ordering::Relaxed);
                        self.last_durable = Instant::now();
                        self.unsynced = false;
                    } else {
                        self.unsynced = true;
                    }
                    shared.last_committed.store(last_ticket, Ordering::Relaxed);
                    (self.on_durable)(last_ticket);
                    return;
                }
                Err(e) => {
                    shared.commit_failures.fetch_add(1, Ordering::Relaxed);
                    if !shared.failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %e, ops = batch.ops,
                            "store commit failed; retrying until it succeeds (acknowledgements that wait for the store are held)");
                    } else {
                        tracing::debug!(error = %e, "store commit failed again");
                    }
                    if shared.closing.load(Ordering::Relaxed)
                        && closing_since.get_or_insert_with(Instant::now).elapsed()
                            >= GIVE_UP_AFTER_CLOSE
                    {
                        shared.backlog.fetch_sub(batch.ops, Ordering::Relaxed);
                        self.fail(e, first_error);
                        return;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(RETRY_MAX);
                    // redb refuses every transaction after an I/O error until the database
                    // is opened again.
                    if let Err(e) = self.store.reopen() {
                        tracing::debug!(error = %e, "store could not be reopened yet");
                    }
                }
            }
        }
    }

    fn checkpoint(&mut self) {
        if self.shared.failed.load(Ordering::Relaxed) {
            self.unsynced = false;
            return;
        }
        let start = Instant::now();
        let result = self.store.checkpoint();
        match result {
            Ok(()) => {
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                self.shared.observe_commit(start.elapsed());
                self.shared.durable_commits.fetch_add(1, Ordering::Relaxed);
                self.last_durable = Instant::now();
                self.unsynced = false;
            }
            Err(e) => {
                // Retried at the next checkpoint time; the next batch's commit retries too.
                self.shared.commit_failures.fetch_add(1, Ordering::Relaxed);
                if !self.shared.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "store checkpoint failed; retrying");
                }
                self.last_durable = Instant::now();
                let _ = self.store.reopen();
            }
        }
    }

    fn fail(&mut self, e: StoreError, first_error: &mut Option<StoreError>) {
        tracing::error!(error = %e, "store commit failed at shutdown; these changes are not stored");
        self.shared.failed.store(true, Ordering::Relaxed);
        self.unsynced = false;
        if first_error.is_none() {
            *first_error = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_durations_land_in_the_bucket_whose_bound_is_not_below_them() {
        let shared = Shared::default();
        for d in [
            Duration::ZERO,
            Duration::from_micros(100),
            Duration::from_micros(101),
            Duration::from_secs(10),
            Duration::from_secs(11),
            Duration::MAX,
        ] {
            shared.observe_commit(d);
        }
        let st = shared.snapshot();
        let last = COMMIT_BUCKETS - 1;
        assert_eq!(st.commit_buckets[0], 2, "0 and 100 µs are <= 100 µs");
        assert_eq!(st.commit_buckets[1], 1, "101 µs is <= 250 µs");
        assert_eq!(st.commit_buckets[last - 1], 1, "10 s is <= 10 s");
        assert_eq!(st.commit_buckets[last], 2, "above every bound");
        assert_eq!(st.commit_buckets.iter().sum::<u64>(), 6);
        assert_eq!(st.last_latency_ns, u64::MAX);
    }
}
