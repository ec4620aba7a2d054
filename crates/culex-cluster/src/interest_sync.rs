//! Keeps the cluster's interest bucket and every node's [`InterestTable`] in step (see
//! [`crate::interest`]).
//!
//! * The router tells [`LocalInterest`] when a filter gains its first subscription on this
//!   node or loses its last; the task writes (or deletes) this node's key for it.
//! * Every node watches the whole bucket into its table, so it knows which nodes want which
//!   topics; the link routes each message only to those.
//! * A SUBSCRIBE that added a filter gets its SUBACK once every other live node has read the
//!   bucket at least up to that filter's revision: this node asks on `<cluster>.interest.sync`
//!   with the revision, each node answers once its watch got there. So a message published on
//!   any node after the SUBACK reaches the new subscription. A node that does not answer
//!   within [`SYNC_TIMEOUT`] (dying, or the backplane is down) does not hold the SUBACK
//!   longer (counted). A sync round starts once this node's writes so far are in the
//!   bucket; a SUBACK no round took within [`WAIT_LIMIT`] (the backplane is not reachable,
//!   or refuses the writes) goes out then (counted).
//! * One write per filter at a time: a filter that changes while its key is being written is
//!   written again, as it is then, once that is done (so a quick unsubscribe and subscribe
//!   never leaves the bucket without a key the node needs).
//! * At start the task reads the whole bucket, then makes this node's keys match its
//!   subscriptions (a node that restarts removes what it no longer has). A node that dies keeps
//!   its keys: the others go on storing its messages in the stream, where another node reads
//!   them back for its persistent sessions (see [`crate::replay`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{watch, Notify};

use crate::interest::{bucket_name, key, node_of_key, InterestTable};
use crate::shared::Placement;
use crate::stats::ClusterStats;
use crate::Settings;

/// How long a SUBACK waits at most for the other nodes to know of its filter.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the start may take reading the bucket.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Sync requests of other nodes waiting for this node's watch (beyond: the oldest go
/// unanswered; their SUBACK goes out after its timeout).
const WAITING_LIMIT: usize = 10_000;
/// How long a waiter no sync round took is kept at most (see [`expire_waiters`]).
pub const WAIT_LIMIT: Duration = Duration::from_secs(2);
/// Delay before bucket writes that failed are tried again.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long the marker of a removed filter stays in the bucket before it is purged (every
/// watching node has read it by then, short of a long backplane outage; a node that missed
/// it sends the removed filter's messages on, which its owner filters out, until it
/// restarts). Without the purge the bucket would keep one marker for every filter ever used.
pub const PURGE_AFTER: Duration = Duration::from_secs(10);
/// Markers waiting for their purge, at most (beyond: left in the bucket).
const PURGE_LIMIT: usize = 100_000;

/// Tells the router the other nodes know of the filters behind these tokens.
pub type SyncedFn = Arc<dyn Fn(Vec<u64>) + Send + Sync>;

/// The subject of sync requests.
fn sync_subject(cluster: &str) -> String {
    format!("{cluster}.interest.sync")
}

/// This node's filters as the router tells them, waiting for the task; and the filters of
/// its persistent sessions, which decide whether a message no other node wants is kept in
/// the stream all the same.
#[derive(Debug, Default)]
pub struct LocalInterest {
    state: Mutex<Local>,
    notify: Notify,
    persistent: RwLock<InterestTable>,
}

#[derive(Debug, Default)]
struct Local {
    present: HashSet<String>,
    dirty: HashSet<String>,
    /// Waiters not yet handed to a sync round, with when each came.
    tokens: Vec<(Waiter, Instant)>,
}

/// Someone waiting until the other nodes know of this node's filters.
#[derive(Debug)]
enum Waiter {
    /// A SUBACK the router holds.
    Router(u64),
    /// A task of this node (a session moved here: its filters must be known before its
    /// client is answered).
    Local(tokio::sync::oneshot::Sender<()>),
}

impl LocalInterest {
    /// `filter` gained its first subscription here (`present`) or lost its last.
    pub fn changed(&self, filter: &str, present: bool) {
        if let Ok(mut s) = self.state.lock() {
            if present {
                s.present.insert(filter.to_owned());
            } else {
                s.present.remove(filter);
            }
            s.dirty.insert(filter.to_owned());
        }
        self.notify.notify_one();
    }

    /// `filter` gained its first subscription of a persistent session here, or lost its last.
    pub fn persistent_changed(&self, filter: &str, present: bool) {
        if let Ok(mut table) = self.persistent.write() {
            let key = key("local", filter);
            if present {
                table.put(&key, "local", filter);
            } else {
                table.delete(&key);
            }
        }
    }

    /// Whether a persistent session here subscribes to `topic`.
    pub fn persistent_wants(&self, topic: &str) -> bool {
        self.persistent.read().is_ok_and(|table| table.any(topic))
    }

    /// The router holds a SUBACK until the other nodes know of every change so far.
    pub fn sync(&self, token: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.tokens.push((Waiter::Router(token), Instant::now()));
        }
        self.notify.notify_one();
    }

    /// Resolves once the other nodes know of every change told so far (or after
    /// [`SYNC_TIMEOUT`] without their answer; or [`WAIT_LIMIT`] when no round took it; or
    /// never, when no [`expire_waiters`] runs: bound the wait).
    pub fn barrier(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut s) = self.state.lock() {
            s.tokens.push((Waiter::Local(tx), Instant::now()));
        }
        self.notify.notify_one();
        rx
    }

    /// The filters changed since the last call.
    fn take_changes(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|mut s| s.dirty.drain().collect())
            .unwrap_or_default()
    }

    /// Whether `filter` has subscriptions here now.
    fn is_present(&self, filter: &str) -> bool {
        self.state.lock().is_ok_and(|s| s.present.contains(filter))
    }

    /// Every waiter so far (for a sync round), unless a change came since the last
    /// [`LocalInterest::take_changes`] (`None`: it must be written first).
    fn take_waiters_if_unchanged(&self) -> Option<Vec<Waiter>> {
        let Ok(mut s) = self.state.lock() else {
            return Some(Vec::new());
        };
        if !s.dirty.is_empty() {
            return None;
        }
        Some(s.tokens.drain(..).map(|(w, _)| w).collect())
    }

    /// The waiters that came before `deadline`: the cluster did not take their filters in
    /// time (the backplane is down or refuses the writes).
    fn take_expired(&self, deadline: Instant) -> Vec<Waiter> {
        let Ok(mut s) = self.state.lock() else {
            return Vec::new();
        };
        let (expired, rest): (Vec<_>, Vec<_>) =
            s.tokens.drain(..).partition(|(_, at)| *at <= deadline);
        s.tokens = rest;
        expired.into_iter().map(|(w, _)| w).collect()
    }

    /// Every filter present now.
    fn all(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.present.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// What the task shares with the link.
#[derive(Debug, Default)]
pub struct Shared {
    /// The other nodes' filters.
    pub table: RwLock<InterestTable>,
}

/// Hands waiters back after [`WAIT_LIMIT`] when no sync round took them (the link is not
/// running yet, or the bucket refuses this node's writes): a SUBACK is late then, never
/// lost. Runs until `shutdown`, from the node's start (before the backplane is reached).
pub async fn expire_waiters(
    local: Arc<LocalInterest>,
    synced: SyncedFn,
    stats: Arc<ClusterStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(WAIT_LIMIT / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
            _ = tick.tick() => {
                let Some(deadline) = Instant::now().checked_sub(WAIT_LIMIT) else {
                    continue;
                };
                let expired = local.take_expired(deadline);
                if !expired.is_empty() {
                    ClusterStats::inc(&stats.interest_sync_timeouts);
                    release(&synced, expired);
                }
            }
        }
    }
}

/// Tells the waiters the other nodes know (or were waited for long enough).
fn release(synced: &SyncedFn, waiters: Vec<Waiter>) {
    let mut tokens = Vec::new();
    for w in waiters {
        match w {
            Waiter::Router(t) => tokens.push(t),
            Waiter::Local(tx) => {
                let _ = tx.send(());
            }
        }
    }
    if !tokens.is_empty() {
        synced(tokens);
    }
}

/// Starts the task on an established backplane connection. Returns once the bucket has been
/// read and this node's keys are being made to match its subscriptions (or `LOAD_TIMEOUT`
/// passed): from then on the table can route.
pub async fn start(
    settings: &Settings,
    client: async_nats::Client,
    local: Arc<LocalInterest>,
    placement: Arc<Placement>,
    synced: SyncedFn,
    stats: Arc<ClusterStats>,
    shutdown: watch::Receiver<bool>,
) -> Result<(Arc<Shared>, tokio::task::JoinHandle<()>), String> {
    let js = jetstream::new(client.clone());
    let bucket = crate::bucket::open(
        &js,
        &bucket_name(&settings.cluster),
        "Culex cluster: the subscription filters of each node",
        settings.replicas,
    )
    .await?;
    let requests = client
        .subscribe(sync_subject(&settings.cluster))
        .await
        .map_err(|e| e.to_string())?;
    // This node's presence, before it reads the bucket: a node whose filter is written after
    // this reads it before its next sync, so it waits for this node too (see `start_sync`).
    bucket
        .put(presence_key(&settings.node), Bytes::new())
        .await
        .map_err(|e| format!("announcing this node in the interest bucket: {e}"))?;
    let mut stream = js
        .get_stream(format!("KV_{}", bucket_name(&settings.cluster)))
        .await
        .map_err(|e| e.to_string())?;
    let end = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    // The current value of every key, then every change.
    let mut watch = bucket
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let mut task = Task {
        node: settings.node.clone(),
        cluster: settings.cluster.clone(),
        client,
        bucket,
        stream,
        purges: std::collections::VecDeque::new(),
        shared: Arc::new(Shared::default()),
        local,
        placement,
        synced,
        stats,
        mine: HashMap::new(),
        loaded: false,
        applied: 0,
        applied_tx: watch::channel(0).0,
        waiting: Vec::new(),
        writes: FuturesUnordered::new(),
        writing: HashSet::new(),
        again: HashSet::new(),
        failed: HashSet::new(),
        syncs: FuturesUnordered::new(),
        retry_at: None,
    };
    let loaded = tokio::time::timeout(LOAD_TIMEOUT, async {
        while task.applied < end {
            match watch.next().await {
                Some(Ok(entry)) => task.apply(entry),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the bucket's watch ended".to_owned()),
            }
        }
        Ok(())
    })
    .await;
    match loaded {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            tracing::warn!(node = %task.node, "reading the cluster's interest timed out; routing with what was read")
        }
    }
    task.loaded = true;
    task.reconcile();
    let shared = Arc::clone(&task.shared);
    let entries = watch_entries(
        watch,
        task.bucket.clone(),
        task.applied + 1,
        task.node.clone(),
    );
    let handle = tokio::spawn(task.run(entries, requests, shutdown));
    Ok((shared, handle))
}

type WriteResult = (String, bool, Result<u64, String>);

struct Task {
    node: String,
    cluster: String,
    client: async_nats::Client,
    bucket: kv::Store,
    /// The bucket's stream (for purging markers).
    stream: jetstream::stream::Stream,
    /// Markers of this node's removed filters: (when to purge, key, the marker's revision).
    purges: std::collections::VecDeque<(tokio::time::Instant, String, u64)>,
    shared: Arc<Shared>,
    local: Arc<LocalInterest>,
    placement: Arc<Placement>,
    synced: SyncedFn,
    stats: Arc<ClusterStats>,
    /// This node's keys in the bucket: key -> (filter, revision). Read from the bucket at
    /// start, then kept by this node's own writes (never from the watch, which may be
    /// behind them).
    mine: HashMap<String, (String, u64)>,
    /// The bucket has been read at start.
    loaded: bool,
    /// Revision of the newest bucket entry read.
    applied: u64,
    /// The same, for sync rounds waiting for it.
    applied_tx: watch::Sender<u64>,
    /// Other nodes' sync requests waiting for the watch: (revision, reply subject).
    waiting: Vec<(u64, async_nats::Subject)>,
    /// Bucket writes in flight: (filter, present, revision or error).
    writes: FuturesUnordered<BoxFuture<'static, WriteResult>>,
    /// The filters being written (one write per filter at a time, so that they land in the
    /// order they were made).
    writing: HashSet<String>,
    /// Filters that changed again while being written: written again once that is done.
    again: HashSet<String>,
    /// Filters whose write failed, tried again at `retry_at`.
    failed: HashSet<String>,
    /// Sync rounds in flight, each giving its tokens back when done.
    syncs: FuturesUnordered<BoxFuture<'static, (Vec<Waiter>, bool)>>,
    retry_at: Option<tokio::time::Instant>,
}

impl Task {
    async fn run(
        mut self,
        mut entries: Entries,
        mut requests: async_nats::Subscriber,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let local = Arc::clone(&self.local);
        let mut purge_tick = tokio::time::interval(PURGE_AFTER / 4);
        purge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry = async {
                match self.retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
                entry = entries.rx.recv() => {
                    let Some(entry) = entry else { break };
                    self.apply(entry);
                    self.answer_waiting().await;
                }
                Some(m) = requests.next() => self.sync_request(m).await,
                () = local.notify.notified() => self.round(),
                _ = purge_tick.tick() => self.purge_due(),
                () = retry => {
                    self.retry_at = None;
                    for filter in std::mem::take(&mut self.failed) {
                        self.write_current(filter);
                    }
                    self.sync_if_settled();
                }
                Some((filter, present, result)) = self.writes.next() => self.written(filter, present, result),
                Some((tokens, complete)) = self.syncs.next() => {
                    if !complete {
                        ClusterStats::inc(&self.stats.interest_sync_timeouts);
                    }
                    release(&self.synced, tokens);
                }
            }
        }
        entries.task.abort();
    }

    /// One entry of the bucket.
    fn apply(&mut self, entry: kv::Entry) {
        self.applied = self.applied.max(entry.revision);
        self.applied_tx.send_replace(self.applied);
        let Some(node) = node_of_key(&entry.key) else {
            return;
        };
        if entry.key == presence_key(node) {
            self.placement.heard_of(node, std::time::Instant::now());
            return;
        }
        let put = entry.operation == kv::Operation::Put;
        if node == self.node {
            if !put && self.purges.len() < PURGE_LIMIT {
                let at = tokio::time::Instant::now() + PURGE_AFTER;
                self.purges
                    .push_back((at, entry.key.clone(), entry.revision));
            }
            if !self.loaded {
                if put {
                    let filter = String::from_utf8_lossy(&entry.value).into_owned();
                    self.mine.insert(entry.key, (filter, entry.revision));
                } else {
                    self.mine.remove(&entry.key);
                }
            }
            return;
        }
        self.placement.heard_of(node, std::time::Instant::now());
        let mut group = None;
        if let Ok(mut table) = self.shared.table.write() {
            if put {
                match std::str::from_utf8(&entry.value) {
                    Ok(filter) => {
                        if table.put(&entry.key, node, filter) && is_shared(filter) {
                            group = Some((filter.to_owned(), true));
                        }
                    }
                    Err(_) => {
                        ClusterStats::inc(&self.stats.bad_messages);
                        return;
                    }
                }
            } else if let Some((_, filter)) = table.delete(&entry.key) {
                if is_shared(&filter) {
                    group = Some((filter, false));
                }
            }
            self.stats
                .remote_filters
                .store(table.len() as u64, Ordering::Relaxed);
        }
        // Which nodes serve a shared group (outside the table's lock).
        if let Some((filter, present)) = group {
            self.placement.set_remote(node, &filter, present);
        }
    }

    /// Purges the markers of removed filters that are old enough (up to the marker only: a
    /// filter added again since keeps its new value).
    fn purge_due(&mut self) {
        let now = tokio::time::Instant::now();
        while self.purges.front().is_some_and(|(at, _, _)| *at <= now) {
            let Some((_, key, revision)) = self.purges.pop_front() else {
                break;
            };
            let stream = self.stream.clone();
            let subject = format!("$KV.{}.{key}", bucket_name(&self.cluster));
            tokio::spawn(async move {
                if let Err(e) = stream.purge().filter(subject).sequence(revision + 1).await {
                    tracing::debug!(error = %e, "purging a removed filter's marker");
                }
            });
        }
    }

    /// Makes this node's keys match its filters (at start); the waiters so far are answered
    /// once that is written and known.
    fn reconcile(&mut self) {
        let _ = self.local.take_changes();
        let want: HashSet<String> = self.local.all().into_iter().collect();
        let stale: Vec<String> = self
            .mine
            .values()
            .map(|(f, _)| f.clone())
            .filter(|f| !want.contains(f))
            .collect();
        for filter in want.into_iter().chain(stale) {
            self.write_current(filter);
        }
        self.sync_if_settled();
    }

    /// Writes what changed since the last round; once every write is done, the waiters so
    /// far are handed to a sync round.
    fn round(&mut self) {
        self.sync_if_settled();
    }

    /// Writes the changes told so far; when no write is then in flight or failed, hands
    /// every waiter to a sync round: the bucket holds this node's filters as the router told
    /// them before those waiters came.
    fn sync_if_settled(&mut self) {
        loop {
            for filter in self.local.take_changes() {
                self.write_current(filter);
            }
            if !self.writing.is_empty() || !self.failed.is_empty() {
                return;
            }
            match self.local.take_waiters_if_unchanged() {
                // Changes came meanwhile: written first.
                None => continue,
                Some(waiters) if waiters.is_empty() => return,
                Some(waiters) => {
                    self.start_sync(self.newest_mine(), waiters);
                    return;
                }
            }
        }
    }

    fn newest_mine(&self) -> u64 {
        self.mine.values().map(|(_, r)| *r).max().unwrap_or(0)
    }

    /// Makes `filter`'s key say what the router says now: starts the write unless the
    /// bucket says so already. A filter being written is written again once that is done.
    fn write_current(&mut self, filter: String) {
        if self.writing.contains(&filter) {
            self.again.insert(filter);
            return;
        }
        if self.failed.contains(&filter) {
            // Written at the retry, as it is then.
            return;
        }
        let present = self.local.is_present(&filter);
        let key = key(&self.node, &filter);
        match (present, self.mine.get(&key)) {
            (true, Some((f, _))) if *f == filter => return,
            (false, None) => return,
            _ => {}
        }
        self.writing.insert(filter.clone());
        let bucket = self.bucket.clone();
        self.writes.push(Box::pin(async move {
            let result = if present {
                bucket
                    .put(&key, Bytes::from(filter.clone().into_bytes()))
                    .await
                    .map_err(|e| e.to_string())
            } else {
                bucket
                    .delete(&key)
                    .await
                    .map(|()| 0)
                    .map_err(|e| e.to_string())
            };
            (filter, present, result)
        }));
    }

    /// A bucket write finished.
    fn written(&mut self, filter: String, present: bool, result: Result<u64, String>) {
        ClusterStats::inc(&self.stats.interest_updates);
        self.writing.remove(&filter);
        match result {
            Ok(rev) => {
                let key = key(&self.node, &filter);
                if present {
                    self.mine.insert(key, (filter.clone(), rev));
                } else {
                    self.mine.remove(&key);
                }
                if self.again.remove(&filter) {
                    self.write_current(filter);
                }
            }
            Err(e) => {
                tracing::debug!(node = %self.node, error = %e, "writing this node's interest failed; retrying");
                self.again.remove(&filter);
                self.failed.insert(filter);
                self.retry_at
                    .get_or_insert_with(|| tokio::time::Instant::now() + RETRY_DELAY);
            }
        }
        self.sync_if_settled();
    }

    /// Asks every other live node to confirm it has read the bucket up to `revision`, then
    /// hands `tokens` back (after [`SYNC_TIMEOUT`] at most).
    ///
    /// The nodes asked are those alive once this node's own watch has read `revision`: every
    /// node that wrote its presence before the filter is among them (a node that wrote it
    /// after read the filter when it started).
    fn start_sync(&mut self, revision: u64, tokens: Vec<Waiter>) {
        if revision == 0 {
            release(&self.synced, tokens);
            return;
        }
        let client = self.client.clone();
        let subject = sync_subject(&self.cluster);
        let placement = Arc::clone(&self.placement);
        let mut applied = self.applied_tx.subscribe();
        self.syncs.push(Box::pin(async move {
            let read = tokio::time::timeout(SYNC_TIMEOUT, applied.wait_for(|a| *a >= revision));
            if !matches!(read.await, Ok(Ok(_))) {
                return (tokens, false);
            }
            let mut expected: HashSet<String> = placement
                .live_nodes(std::time::Instant::now())
                .into_iter()
                .collect();
            if expected.is_empty() {
                return (tokens, true);
            }
            let inbox = client.new_inbox();
            let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
                return (tokens, false);
            };
            let payload = Bytes::copy_from_slice(&revision.to_be_bytes());
            if client
                .publish_with_reply(subject, inbox, payload)
                .await
                .is_err()
            {
                return (tokens, false);
            }
            let complete = tokio::time::timeout(SYNC_TIMEOUT, async {
                while let Some(m) = replies.next().await {
                    if let Ok(node) = std::str::from_utf8(&m.payload) {
                        expected.remove(node);
                    }
                    if expected.is_empty() {
                        break;
                    }
                }
            })
            .await
            .is_ok()
                && expected.is_empty();
            (tokens, complete)
        }));
    }

    /// Another node asks whether this node has read the bucket up to a revision.
    async fn sync_request(&mut self, m: async_nats::Message) {
        let (Some(reply), Ok(bytes)) = (m.reply, <[u8; 8]>::try_from(&m.payload[..])) else {
            return;
        };
        let revision = u64::from_be_bytes(bytes);
        if revision <= self.applied {
            confirm(self.client.clone(), reply, self.node.clone()).await;
        } else {
            if self.waiting.len() >= WAITING_LIMIT {
                self.waiting.remove(0);
            }
            self.waiting.push((revision, reply));
        }
    }

    async fn answer_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let applied = self.applied;
        let (due, rest): (Vec<_>, Vec<_>) =
            self.waiting.drain(..).partition(|(r, _)| *r <= applied);
        self.waiting = rest;
        for (_, reply) in due {
            confirm(self.client.clone(), reply, self.node.clone()).await;
        }
    }
}

/// Tells a node waiting for a sync that this node has read the bucket far enough.
async fn confirm(client: async_nats::Client, reply: async_nats::Subject, node: String) {
    let _ = client.publish(reply, Bytes::from(node.into_bytes())).await;
}

/// The bucket's entries as read by [`watch_entries`]'s task.
struct Entries {
    rx: tokio::sync::mpsc::Receiver<kv::Entry>,
    task: tokio::task::JoinHandle<()>,
}

/// Entries of the bucket read by a task of their own, from `watch` on: a watch that fails or
/// ends is made again from the revision after the last entry read (the client's ordered
/// consumer cannot be polled again), [`RETRY_DELAY`] later. Its own task, so that the delay
/// runs out however busy the node's interest task is.
fn watch_entries(watch: kv::Watch, bucket: kv::Store, from: u64, node: String) -> Entries {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let task = tokio::spawn(async move {
        let mut watch = Some(watch);
        let mut from = from;
        loop {
            match watch.as_mut() {
                Some(w) => match w.next().await {
                    Some(Ok(entry)) => {
                        from = from.max(entry.revision + 1);
                        if tx.send(entry).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(node = %node, error = %e, "the watch of the cluster's interest failed; watching again");
                        watch = None;
                    }
                    None => {
                        tracing::debug!(node = %node, "the watch of the cluster's interest ended; watching again");
                        watch = None;
                    }
                },
                None => {
                    tokio::time::sleep(RETRY_DELAY).await;
                    if tx.is_closed() {
                        return;
                    }
                    match bucket.watch_all_from_revision(from).await {
                        Ok(w) => watch = Some(w),
                        Err(e) => {
                            tracing::warn!(node = %node, error = %e, "cannot watch the cluster's interest")
                        }
                    }
                }
            }
        }
    });
    Entries { rx, task }
}

/// Whether `filter` is a shared subscription's (`$share/{group}/{filter}`).
fn is_shared(filter: &str) -> bool {
    matches!(culex_proto::topic::parse_shared(filter), Ok(Some(_)))
}

/// The key that says `node` takes part in the cluster (written when its interest task
/// starts).
fn presence_key(node: &str) -> String {
    format!("{node}.node")
}
