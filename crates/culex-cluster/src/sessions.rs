//! Persistent sessions follow their client from node to node.
//!
//! Each node records in a replicated key-value bucket (`<cluster>-sessions`) which node holds
//! a client's persistent session: key = SHA-256 of the client identifier, value = node name,
//! written when the client connects. A client that connects with Clean Start 0 to a node
//! that does not hold its session makes that node ask the holder, on the core NATS subject
//! `<cluster>.sessions.<holder>`, to give it up. The holder closes its client's connection
//! (if any), waits for its end, and sends the session's image (subscriptions, queued and
//! in-flight QoS 1/2 messages, inbound QoS 2 packet identifiers) in parts no larger than the
//! servers' `max_payload`, then waits for the receiver to confirm the whole image; without the
//! confirmation it takes the session back. The receiver rebuilds the session and answers the
//! client with session present = 1. Before asking, the receiver prepares the session from its
//! record (see `router/migrate.rs` in culex-broker); the request names the receiver
//! ([`FROM_HEADER`]) so that the holder passes on what reaches it too late for the image
//! ([`crate::departures`], served here on [`crate::departures::tail_subject`]).
//!
//! The holder also keeps each persistent session's record (subscriptions) next to its name in
//! the bucket (written before the SUBACK of a SUBSCRIBE, see [`crate::records`], and with its
//! report about once a second), and its node's *floor* under
//! `node.<name>`: a time before which every stream message its persistent sessions may still
//! need had been delivered and acknowledged. When the holder is gone (no NATS responder on
//! its subject), the node where the client connects rebuilds the session from its record and
//! reads the stream again from the holder's floor for it ([`crate::replay`]): at least once,
//! so messages the client had already received may come again. Without a record the client
//! gets a new session (session present = 0) and the loss is counted. See docs/cluster.md.
//!
//! ```text
//! session value: node_len u8 | node | session image (empty until the first report)
//! floor value:   floor u64 (Unix ms)
//! part:          kind u8 (0 no session, 1 part, 2 last part) | index u32 | bytes
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::departures::{Departures, CUTOFF_HEADER, FROM_HEADER};
use crate::link::Settings;
use crate::stats::ClusterStats;

/// How long a transfer may take, part by part, before it is given up.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for reading or writing the holder's record.
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at recording this node as a session's holder when the record changes meanwhile.
const HOLD_ATTEMPTS: usize = 3;
/// Room left in each part for the NATS headers and the part header.
const PART_OVERHEAD: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Asks this node's broker for the image of a client's session (ending it here); `None` when
/// there is none.
pub type ExportFn = Arc<dyn Fn(String) -> BoxFuture<'static, Option<Vec<u8>>> + Send + Sync>;
/// Queues a late copy (an envelope, and its publication when known: see
/// [`crate::envelope::publication_of`]) for a session that moved here (see
/// [`crate::departures`]); whether the session took it.
pub type TailFn =
    Arc<dyn Fn(String, Vec<u8>, Option<u64>) -> BoxFuture<'static, bool> + Send + Sync>;
/// Gives an image back to this node's broker (a transfer the receiver did not confirm).
pub type RestoreFn = Arc<dyn Fn(Vec<u8>) + Send + Sync>;
/// Tells this node's broker that another node holds a client's session: the copy here is
/// stale (it ends unless its client is connected here).
pub type DiscardFn = Arc<dyn Fn(String) + Send + Sync>;
/// Asks this node's broker what changed in its persistent sessions ([`Report`]).
pub type ReportFn = Arc<dyn Fn() -> BoxFuture<'static, Option<Report>> + Send + Sync>;

/// What a node's broker reports about its persistent sessions.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// How long the oldest message waiting for one of its persistent sessions has waited.
    pub oldest_pending: Option<Duration>,
    /// Sessions whose record changed: client identifier and the session's image without
    /// messages (its subscriptions), or `None` once it ended here.
    pub changed: Vec<(String, Option<Vec<u8>>)>,
}

/// Another node's hold on a session ([`Directory::holder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The node that holds it.
    pub node: String,
    /// The session's record: its image without messages (empty until the holder's first
    /// report after the session began).
    pub record: Vec<u8>,
}

/// What [`Directory::fetch`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// No other node holds a session of this client.
    Nothing,
    /// The holder gave it up: the session's image.
    Moved(Vec<u8>),
    /// The holder is gone; what the cluster recorded: the session's image without messages,
    /// and the holder's floor (Unix ms), from which the stream must be read again for it.
    Orphaned {
        /// The node that held it.
        holder: String,
        /// The session's image without messages.
        image: Vec<u8>,
        /// Read the stream again from this time.
        since_ms: u64,
    },
}

/// How often the holder's records and floor are written.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often a node announces it is alive (see [`crate::shared`]).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
/// Margin subtracted from a floor for clock differences between nodes and NATS servers.
const CLOCK_MARGIN_MS: u64 = 2_000;

/// Why a session could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The backplane is not reachable: whether another node holds a session is unknown.
    #[error("the cluster backplane is not reachable: {0}")]
    Unavailable(String),
    /// The holder answered but the transfer failed; the session stays with the holder.
    #[error("the session transfer from node {node} failed: {reason}")]
    Transfer {
        /// The holder.
        node: String,
        /// What went wrong.
        reason: String,
    },
}

/// The bucket's name for `cluster`.
pub fn bucket_name(cluster: &str) -> String {
    format!("{cluster}-sessions")
}

/// The subject on which `node` serves requests for its sessions.
pub fn request_subject(cluster: &str, node: &str) -> String {
    format!("{cluster}.sessions.{node}")
}

/// The key of a client's session record.
fn key(client_id: &str) -> String {
    crate::retained::key(client_id)
}

/// The key of a node's floor.
fn floor_key(node: &str) -> String {
    format!("node.{node}")
}

fn value(node: &str, image: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + node.len() + image.len());
    // Node names are at most 64 bytes (checked with the configuration).
    out.put_u8(u8::try_from(node.len()).unwrap_or(u8::MAX));
    out.put_slice(
        node.as_bytes()
            .get(..usize::from(u8::MAX))
            .unwrap_or(node.as_bytes()),
    );
    out.put_slice(image);
    out.freeze()
}

/// The holder and the image of a session value.
fn parse_value(v: &[u8]) -> Option<(&str, &[u8])> {
    let (&n, rest) = v.split_first()?;
    let (node, image) = rest.split_at_checked(usize::from(n))?;
    Some((std::str::from_utf8(node).ok()?, image))
}

/// A node's floor: the oldest stream time its persistent sessions may still need, less a
/// margin for clocks. `import_floor_ms`: the link's (see `ClusterStats::import_floor_ms`);
/// `oldest_pending`: the age of the oldest message waiting in a persistent session;
/// `lag_ms`: the longest a message waited in the stream before the link got it, since then.
pub fn floor(
    now_ms: u64,
    import_floor_ms: u64,
    oldest_pending: Option<Duration>,
    lag_ms: u64,
) -> u64 {
    let queued = match oldest_pending {
        // Stamped in whole seconds, rounded down: one more second.
        Some(age) => now_ms
            .saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
            .saturating_sub(1_000)
            .saturating_sub(lag_ms),
        None => now_ms,
    };
    let link = if import_floor_ms == 0 {
        now_ms
    } else {
        import_floor_ms
    };
    queued.min(link).saturating_sub(CLOCK_MARGIN_MS)
}

/// The NATS side of the session directory, once set up.
#[derive(Clone)]
struct Ready {
    client: async_nats::Client,
    bucket: kv::Store,
}

/// This node's view of where sessions live; cheap to clone.
#[derive(Clone)]
pub struct Directory {
    node: Arc<str>,
    cluster: Arc<str>,
    departures: Arc<Departures>,
    ready: watch::Receiver<Option<Ready>>,
    stats: Arc<ClusterStats>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("node", &self.node)
            .finish()
    }
}

impl Directory {
    /// The NATS client, once connected.
    pub(crate) fn client(&self) -> Result<async_nats::Client, FetchError> {
        Ok(self.ready()?.client)
    }

    /// The cluster's name.
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The NATS side, when connected now (a client must not wait for a backplane that is
    /// away).
    fn ready(&self) -> Result<Ready, FetchError> {
        let ready = self
            .ready
            .borrow()
            .clone()
            .ok_or_else(|| FetchError::Unavailable("not connected yet".to_owned()))?;
        if ready.client.connection_state() != async_nats::connection::State::Connected {
            return Err(FetchError::Unavailable(
                "the NATS connection is down".to_owned(),
            ));
        }
        Ok(ready)
    }

    /// The session of `client_id` if another node holds it (that node gives it up), or what
    /// the cluster recorded of it when that node is gone.
    pub async fn fetch(&self, client_id: &str) -> Result<Fetched, FetchError> {
        match self.holder(client_id).await? {
            Some(held) => {
                let cutoffs = self.cutoffs();
                self.fetch_from(client_id, held, &cutoffs).await
            }
            None => Ok(Fetched::Nothing),
        }
    }

    /// Which other node holds `client_id`'s session, and its record there (the session's
    /// image without messages; empty until the holder's first report after the session
    /// began); `None` when no other node does.
    pub async fn holder(&self, client_id: &str) -> Result<Option<Held>, FetchError> {
        let ready = self.ready()?;
        let entry = tokio::time::timeout(RECORD_TIMEOUT, ready.bucket.get(key(client_id)))
            .await
            .map_err(|_| FetchError::Unavailable("reading the session bucket timed out".into()))?
            .map_err(|e| FetchError::Unavailable(e.to_string()))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let Some((holder, record)) = parse_value(&entry) else {
            return Ok(None);
        };
        if *holder == *self.node {
            return Ok(None);
        }
        Ok(Some(Held {
            node: holder.to_owned(),
            record: record.to_vec(),
        }))
    }

    /// What this node's link has read from its stream so far, to tell the holder when asking
    /// for a session prepared here just after ([`crate::departures::CUTOFF_HEADER`]).
    pub fn cutoffs(&self) -> String {
        self.departures.cutoffs()
    }

    /// [`Directory::fetch`] from the holder [`Directory::holder`] found; `cutoffs`: from
    /// [`Directory::cutoffs`] before the session was prepared here.
    pub async fn fetch_from(
        &self,
        client_id: &str,
        held: Held,
        cutoffs: &str,
    ) -> Result<Fetched, FetchError> {
        let ready = self.ready()?;
        let Held {
            node: holder,
            record,
        } = held;
        let transfer = |reason: String| FetchError::Transfer {
            node: holder.clone(),
            reason,
        };
        let inbox = ready.client.new_inbox();
        let mut parts = ready
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| transfer(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(FROM_HEADER, &*self.node);
        headers.insert(CUTOFF_HEADER, cutoffs);
        ready
            .client
            .publish_with_reply_and_headers(
                request_subject(&self.cluster, &holder),
                inbox,
                headers,
                Bytes::from(client_id.to_owned()),
            )
            .await
            .map_err(|e| transfer(e.to_string()))?;
        // The session is here again (if it was here lately): nothing more is passed on.
        self.departures.returned(client_id);
        let mut image = Vec::new();
        let mut expect = 0u32;
        loop {
            let part = tokio::time::timeout(TRANSFER_TIMEOUT, parts.next())
                .await
                .map_err(|_| transfer("timed out".to_owned()))?
                .ok_or_else(|| transfer("the connection closed".to_owned()))?;
            if part.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return self.orphaned(&ready, client_id, holder, record).await;
            }
            let (kind, index, bytes) =
                parse_part(&part.payload).ok_or_else(|| transfer("a malformed part".to_owned()))?;
            if kind == PartKind::None {
                return Ok(Fetched::Nothing);
            }
            if index != expect {
                return Err(transfer(format!("part {index} arrived, {expect} expected")));
            }
            expect += 1;
            image.extend_from_slice(bytes);
            if kind == PartKind::Last {
                let Some(confirm) = part.reply else {
                    return Err(transfer("no confirmation subject".to_owned()));
                };
                ready
                    .client
                    .publish(confirm, Bytes::from_static(b"ok"))
                    .await
                    .map_err(|e| transfer(e.to_string()))?;
                let _ = ready.client.flush().await;
                ClusterStats::inc(&self.stats.sessions_in);
                return Ok(Fetched::Moved(image));
            }
        }
    }

    /// The holder of a session is gone: what the cluster recorded of it.
    async fn orphaned(
        &self,
        ready: &Ready,
        client_id: &str,
        holder: String,
        image: Vec<u8>,
    ) -> Result<Fetched, FetchError> {
        if image.is_empty() {
            ClusterStats::inc(&self.stats.sessions_lost);
            tracing::warn!(node = %self.node, holder = %holder, client_id = %clip(client_id),
                "the node that held this client's session is gone and left no record of it: the client starts a new session");
            return Ok(Fetched::Nothing);
        }
        let floor = tokio::time::timeout(RECORD_TIMEOUT, ready.bucket.get(floor_key(&holder)))
            .await
            .map_err(|_| FetchError::Unavailable("reading the session bucket timed out".into()))?
            .map_err(|e| FetchError::Unavailable(e.to_string()))?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_be_bytes);
        // No floor written (the node died within its first second): from the beginning of
        // what the stream keeps.
        let since_ms = floor.unwrap_or(0);
        tracing::warn!(node = %self.node, holder = %holder, client_id = %clip(client_id), since_ms,
            "the node that held this client's session is gone: rebuilding it from the cluster's record");
        Ok(Fetched::Orphaned {
            holder,
            image,
            since_ms,
        })
    }

    /// Whether the NATS connection is up now.
    pub fn connected(&self) -> bool {
        self.ready().is_ok()
    }

    /// Writes `record` (the session's image without messages) as the record of `client_id`'s
    /// session held here: over this node's own entry or where there is none, never over
    /// another node's (the session has moved on). A write that finds the entry changed since
    /// it read it gives way (the report's, as new, or another holder's).
    pub async fn record(&self, client_id: &str, record: &[u8]) -> Result<(), String> {
        let ready = self.ready().map_err(|e| e.to_string())?;
        let key = key(client_id);
        let entry = ready.bucket.entry(&key).await.map_err(|e| e.to_string())?;
        let value = value(&self.node, record);
        match entry {
            Some(e) if parse_value(&e.value).is_some_and(|(h, _)| *h == *self.node) => ready
                .bucket
                .update(&key, value, e.revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())?,
            Some(_) => return Ok(()),
            None => ready
                .bucket
                .create(&key, value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())?,
        }
        ClusterStats::inc(&self.stats.session_records);
        Ok(())
    }

    /// Records that this node holds `client_id`'s session, with its `record` when known (a
    /// session that moved here: so that a move on within the report's second can prepare the
    /// session from it); otherwise the record follows with the next report. One this node
    /// already wrote is kept.
    pub async fn hold(&self, client_id: &str, record: Option<&[u8]>) -> Result<(), String> {
        let ready = self.ready().map_err(|e| e.to_string())?;
        tokio::time::timeout(RECORD_TIMEOUT, async {
            let key = key(client_id);
            // Written over the revision read: when the entry changed in between (the node the
            // session came from removed its record in its report), read again.
            let mut result = Ok(());
            for _ in 0..HOLD_ATTEMPTS {
                let entry = ready.bucket.entry(&key).await.map_err(|e| e.to_string())?;
                let ours = entry
                    .as_ref()
                    .and_then(|e| parse_value(&e.value))
                    .is_some_and(|(holder, _)| *holder == *self.node);
                if ours {
                    return Ok(());
                }
                let value = value(&self.node, record.unwrap_or_default());
                result = match entry {
                    Some(e) => ready
                        .bucket
                        .update(&key, value, e.revision)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => ready
                        .bucket
                        .create(&key, value)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                if result.is_ok() {
                    break;
                }
            }
            result
        })
        .await
        .map_err(|_| "writing the session bucket timed out".to_owned())?
    }
}

/// Writes what the broker reported: the records of sessions held here (never over another
/// node's claim: a session that has just moved on is left to its new holder), removals of
/// those that ended here, and the node's floor. Returns the sessions another node holds: the
/// copies here are stale.
async fn write_report(
    ready: &Ready,
    node: &str,
    stats: &ClusterStats,
    report: Report,
) -> Result<Vec<String>, String> {
    let mut stale = Vec::new();
    for (client_id, image) in report.changed {
        let key = key(&client_id);
        let entry = ready.bucket.entry(&key).await.map_err(|e| e.to_string())?;
        let ours = entry
            .as_ref()
            .and_then(|e| parse_value(&e.value))
            .is_some_and(|(h, _)| h == node);
        if image.is_some() && entry.is_some() && !ours {
            stale.push(client_id.clone());
        }
        let result = match (image, entry) {
            (Some(image), Some(e)) if ours => ready
                .bucket
                .update(&key, value(node, &image), e.revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (Some(image), None) => ready
                .bucket
                .create(&key, value(node, &image))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (None, Some(e)) if ours => ready
                .bucket
                .delete_expect_revision(&key, Some(e.revision))
                .await
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        };
        if result.is_ok() {
            ClusterStats::inc(&stats.session_records);
        }
        if let Err(e) = result {
            // Someone else wrote it in between: theirs stands.
            tracing::debug!(node, client_id = %clip(&client_id), error = %e, "session record not written");
        }
    }
    let lag = stats.import_lag.lock().map_or(0, |w| {
        let since = now_ms().saturating_sub(
            report
                .oldest_pending
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        );
        w.max_since(since)
    });
    let f = floor(
        now_ms(),
        stats
            .import_floor_ms
            .load(std::sync::atomic::Ordering::Relaxed),
        report.oldest_pending,
        lag,
    );
    ready
        .bucket
        .put(floor_key(node), Bytes::copy_from_slice(&f.to_be_bytes()))
        .await
        .map(|_| stale)
        .map_err(|e| e.to_string())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartKind {
    None,
    More,
    Last,
}

fn part(kind: PartKind, index: u32, bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + bytes.len());
    out.put_u8(match kind {
        PartKind::None => 0,
        PartKind::More => 1,
        PartKind::Last => 2,
    });
    out.put_u32(index);
    out.put_slice(bytes);
    out.freeze()
}

fn parse_part(payload: &[u8]) -> Option<(PartKind, u32, &[u8])> {
    let (&kind, rest) = payload.split_first()?;
    let (index, bytes) = rest.split_at_checked(4)?;
    let index = u32::from_be_bytes(index.try_into().ok()?);
    let kind = match kind {
        0 => PartKind::None,
        1 => PartKind::More,
        2 => PartKind::Last,
        _ => return None,
    };
    Some((kind, index, bytes))
}

fn clip(s: &str) -> &str {
    s.get(..s.len().min(128)).unwrap_or(s)
}

/// What the directory is given by its broker.
pub struct Hooks {
    /// Exports a session that another node asks for.
    pub export: ExportFn,
    /// Takes back a session whose transfer was not confirmed.
    pub restore: RestoreFn,
    /// Reports changed session records and the age of the oldest pending message.
    pub report: ReportFn,
    /// Which node serves each shared group: told here which nodes are alive (their
    /// announcements).
    pub placement: Arc<crate::shared::Placement>,
    /// Ends a stale copy of a session another node holds.
    pub discard: DiscardFn,
    /// Queues a late copy for a session that moved here.
    pub tail: TailFn,
    /// Sessions moving away or moved lately: a move asked for is recorded here, the
    /// broker's hand-over activates it (see [`crate::departures`]).
    pub departures: Arc<Departures>,
}

/// Starts the directory: connects to NATS (retrying), opens the bucket and serves other
/// nodes' requests for this node's sessions until `shutdown`.
pub fn spawn(
    settings: Settings,
    hooks: Hooks,
    stats: Arc<ClusterStats>,
    shutdown: watch::Receiver<bool>,
) -> (Directory, tokio::task::JoinHandle<()>) {
    let (ready_tx, ready_rx) = watch::channel(None);
    let directory = Directory {
        node: Arc::from(settings.node.as_str()),
        cluster: Arc::from(settings.cluster.as_str()),
        departures: Arc::clone(&hooks.departures),
        ready: ready_rx,
        stats: Arc::clone(&stats),
    };
    let task = tokio::spawn(serve(settings, hooks, stats, ready_tx, shutdown));
    (directory, task)
}

/// The directory's NATS side, and its subscriptions: session requests, announcements, late
/// copies.
type Setup = (
    Ready,
    async_nats::Subscriber,
    async_nats::Subscriber,
    async_nats::Subscriber,
);

async fn setup(settings: &Settings) -> Result<Setup, String> {
    let client = crate::link::nats_options(settings, "sessions")
        .await?
        .connect(settings.servers.clone())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client.clone());
    let bucket = crate::bucket::open(
        &js,
        &bucket_name(&settings.cluster),
        "Culex: which node holds each persistent session",
        settings.replicas,
    )
    .await?;
    let requests = client
        .subscribe(request_subject(&settings.cluster, &settings.node))
        .await
        .map_err(|e| e.to_string())?;
    let groups = client
        .subscribe(crate::shared::subject(&settings.cluster, "*"))
        .await
        .map_err(|e| e.to_string())?;
    let tails = client
        .subscribe(crate::departures::tail_subject(
            &settings.cluster,
            &settings.node,
        ))
        .await
        .map_err(|e| e.to_string())?;
    Ok((Ready { client, bucket }, requests, groups, tails))
}

async fn serve(
    settings: Settings,
    hooks: Hooks,
    stats: Arc<ClusterStats>,
    ready_tx: watch::Sender<Option<Ready>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = BACKOFF_MIN;
    let (ready, mut requests, mut groups, mut tails) = loop {
        if *shutdown.borrow() {
            return;
        }
        match setup(&settings).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(node = %settings.node, error = %e, retry_in = ?delay, "cannot set up the cluster session directory");
                tokio::select! {
                    _ = shutdown.changed() => {}
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
    };
    let _ = ready_tx.send(Some(ready.clone()));
    let Hooks {
        export,
        restore,
        report,
        placement,
        discard,
        tail,
        departures,
    } = hooks;
    let reporter = tokio::spawn(run_reports(
        ready.clone(),
        settings.clone(),
        report,
        discard,
        Arc::clone(&stats),
        shutdown.clone(),
    ));
    let groups_prefix = crate::shared::subject(&settings.cluster, "");
    // Announced on a tick of its own: a report that waits for a busy broker or a slow write
    // must not make this node look dead to the others.
    let announce = crate::shared::subject(&settings.cluster, &settings.node);
    let mut announce_tick = tokio::time::interval(ANNOUNCE_INTERVAL);
    announce_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = announce_tick.tick() => {
                let _ = ready.client.publish(announce.clone(), bytes::Bytes::new()).await;
                placement.expire(std::time::Instant::now());
                stats.shared_memberships.store(placement.remote_memberships() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    break;
                }
            }
            Some(m) = groups.next() => {
                let node = m.subject.as_str().strip_prefix(&groups_prefix).unwrap_or_default();
                placement.heard(node, std::time::Instant::now());
            }
            m = requests.next() => {
                let Some(m) = m else { break };
                let header = |name| m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.to_string());
                let (from, cutoffs) = (header(FROM_HEADER), header(CUTOFF_HEADER));
                let (Some(reply), Ok(client_id)) = (m.reply, String::from_utf8(m.payload.to_vec())) else {
                    continue;
                };
                let (export, restore, stats) = (Arc::clone(&export), Arc::clone(&restore), Arc::clone(&stats));
                let departures = Arc::clone(&departures);
                let client = ready.client.clone();
                tokio::spawn(async move {
                    let to = Receiver { reply: reply.to_string(), node: from, cutoffs };
                    hand_over(client, to, client_id, export, restore, stats, departures).await;
                });
            }
            Some(m) = tails.next() => {
                let Some(reply) = m.reply else { continue };
                let Some((client_id, envelope)) = crate::departures::decode_tail(&m.payload) else {
                    continue;
                };
                let headers = m.headers.clone().unwrap_or_default();
                let publication = headers
                    .get(crate::envelope::PUBLICATION_HEADER)
                    .and_then(|v| v.as_str().parse().ok());
                let took = tail(client_id.to_owned(), envelope.to_vec(), publication);
                // The session may have moved on from here meanwhile: then the copy follows it.
                let next = departures
                    .moved_to(client_id)
                    .filter(|n| **n != *settings.node)
                    .map(|n| crate::departures::tail_subject(&settings.cluster, &n));
                let client = ready.client.clone();
                tokio::spawn(async move {
                    let mut answer: Bytes = Bytes::from_static(if took.await { b"ok" } else { b"gone" });
                    if &answer[..] != b"ok" {
                        if let Some(next) = next {
                            if let Ok(Ok(r)) = tokio::time::timeout(crate::departures::TAIL_TIMEOUT, client.request_with_headers(next, headers, m.payload)).await {
                                answer = r.payload;
                            }
                        }
                    }
                    let _ = client.publish(reply, answer).await;
                });
            }
        }
    }
    let _ = ready_tx.send(None);
    let _ = reporter.await;
}

/// Writes the broker's reports every [`REPORT_INTERVAL`] until shutdown.
async fn run_reports(
    ready: Ready,
    settings: Settings,
    report: ReportFn,
    discard: DiscardFn,
    stats: Arc<ClusterStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let node = settings.node.clone();
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
            _ = tick.tick() => {
                let Some(r) = report().await else { continue };
                match tokio::time::timeout(REPORT_INTERVAL * 5, write_report(&ready, &node, &stats, r)).await {
                    Ok(Ok(stale)) => {
                        for client_id in stale {
                            tracing::info!(node = %node, client_id = %clip(&client_id),
                                "another node holds this client's session now: the copy here ends");
                            discard(client_id);
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(node = %node, error = %e, "cluster session records not written"),
                    Err(_) => tracing::debug!(node = %node, "writing cluster session records timed out"),
                }
            }
        }
    }
}

/// Sends the session of `client_id` to the node that asked for it, and takes it back when
/// that node does not confirm it.
/// Where a session goes: the reply subject of the request and the node that asked.
struct Receiver {
    reply: String,
    node: Option<String>,
    /// What the node had read from its stream when it asked
    /// ([`crate::departures::CUTOFF_HEADER`]).
    cutoffs: Option<String>,
}

/// Another node asks for `client_id`'s session: the broker gives its image, sent in parts;
/// without the receiver's confirmation the session is restored here.
async fn hand_over(
    client: async_nats::Client,
    to: Receiver,
    client_id: String,
    export: ExportFn,
    restore: RestoreFn,
    stats: Arc<ClusterStats>,
    departures: Arc<Departures>,
) {
    if let Some(node) = &to.node {
        // Before the broker hands the session over (it activates the record then: what it
        // routes from then on may miss the image, and is passed on).
        departures.departing(&client_id, node, to.cutoffs.as_deref());
    }
    let abandon = || {
        if let Some(node) = &to.node {
            departures.abandoned(&client_id, node);
        }
    };
    let Some(image) = export(client_id.clone()).await else {
        abandon();
        let _ = client
            .publish(to.reply.clone(), part(PartKind::None, 0, &[]))
            .await;
        return;
    };
    let result = send_parts(&client, to.reply.clone(), &image).await;
    match result {
        Ok(()) => ClusterStats::inc(&stats.sessions_out),
        Err(e) => {
            ClusterStats::inc(&stats.session_transfer_failures);
            abandon();
            tracing::warn!(client_id = %clip(&client_id), error = %e, "a session transfer to another node was not confirmed; the session stays here");
            restore(image);
        }
    }
}

async fn send_parts(
    client: &async_nats::Client,
    reply: String,
    image: &[u8],
) -> Result<(), String> {
    let size = client
        .server_info()
        .max_payload
        .saturating_sub(PART_OVERHEAD)
        .max(4096);
    let confirm = client.new_inbox();
    let mut confirmed = client
        .subscribe(confirm.clone())
        .await
        .map_err(|e| e.to_string())?;
    let chunks: Vec<&[u8]> = image.chunks(size).collect();
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.into_iter().enumerate() {
        let index = u32::try_from(i).map_err(|_| "session image too large".to_owned())?;
        let r = if i == last {
            client
                .publish_with_reply(
                    reply.clone(),
                    confirm.clone(),
                    part(PartKind::Last, index, chunk),
                )
                .await
        } else {
            client
                .publish(reply.clone(), part(PartKind::More, index, chunk))
                .await
        };
        r.map_err(|e| e.to_string())?;
    }
    client.flush().await.map_err(|e| e.to_string())?;
    tokio::time::timeout(TRANSFER_TIMEOUT, confirmed.next())
        .await
        .map_err(|_| "no confirmation in time".to_owned())?
        .ok_or_else(|| "the connection closed".to_owned())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let v = value("node-1", b"image");
        assert_eq!(parse_value(&v), Some(("node-1", &b"image"[..])));
        assert_eq!(parse_value(&value("n", &[])), Some(("n", &[][..])));
        assert_eq!(parse_value(b""), None);
        assert_eq!(parse_value(b"\x05ab"), None);
    }

    #[test]
    fn the_floor_covers_pending_messages_the_link_and_clocks() {
        let now = 1_000_000;
        assert_eq!(
            floor(now, 0, None, 0),
            now - CLOCK_MARGIN_MS,
            "nothing pending"
        );
        assert_eq!(
            floor(now, now - 500, None, 0),
            now - 500 - CLOCK_MARGIN_MS,
            "the link holds an older one"
        );
        let age = Duration::from_secs(10);
        assert_eq!(
            floor(now, now, Some(age), 300),
            now - 10_000 - 1_000 - 300 - CLOCK_MARGIN_MS,
            "queued 10 s ago, after waiting up to 300 ms in the stream"
        );
        assert_eq!(
            floor(100, 0, Some(Duration::from_secs(3600)), 0),
            0,
            "never below zero"
        );
    }

    #[test]
    fn parts_round_trip_and_garbage_is_refused() {
        let p = part(PartKind::Last, 7, b"abc");
        assert_eq!(parse_part(&p), Some((PartKind::Last, 7, &b"abc"[..])));
        let p = part(PartKind::None, 0, &[]);
        assert_eq!(parse_part(&p), Some((PartKind::None, 0, &[][..])));
        for bad in [&b""[..], b"\x01\x00\x00", b"\x03\x00\x00\x00\x00"] {
            assert_eq!(parse_part(bad), None);
        }
    }
}
