//! The cluster link of one node: its broker on one side, the NATS backplane on the other.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use culex_client::transport::BoxStream;
use culex_client::{ClientError, Connection};
use culex_client::{ClientSession, ConnectOptions, Message};
use culex_proto::{
    Properties, Protocol, Publish, QoS, RetainHandling, SubscribeFilter, SubscriptionOptions,
};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::departures::{Departures, DEST_HEADER};
use crate::envelope::{
    decode_publish, encode_publish, publication_of, ORIGIN_HEADER, PUBLICATION_HEADER,
    PUBLICATION_PROPERTY,
};
use crate::interest_sync::{LocalInterest, SyncedFn};
use crate::shared::Placement;
use crate::stats::ClusterStats;
use crate::subject::topic_to_subject;

/// QoS 1/2 messages the link holds at once in each direction: handed over by the local broker
/// and waiting for JetStream's acknowledgement, and read from the stream and waiting for the
/// local broker's. The rest wait in the link's local session and in the stream.
pub const WINDOW: u16 = 256;
/// How long a message read from the stream may stay unconfirmed before JetStream sends it
/// again: what a dying NATS server had on its way to this node comes again after this long.
/// The link tells JetStream every [`PROGRESS_EVERY`] that it is still working on the
/// messages its broker has not accepted yet, so a slow broker does not get them twice.
const ACK_WAIT: Duration = Duration::from_secs(10);
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// How long the stream keeps a message (every node has normally confirmed it within
/// milliseconds; this bounds what a node that is gone for good leaves behind).
const STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The stream's size limit; beyond it the oldest messages are discarded.
const STREAM_MAX_BYTES: i64 = 1 << 30;
/// JetStream's deduplication window: a publication retried within it is stored once.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Delay before publications that failed are sent again.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// Delays between attempts to reach the backplane or the local broker.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Messages a NATS subscription holds for the link before NATS drops (QoS 0) or delays them.
const SUBSCRIPTION_CAPACITY: usize = 256 * 1024;
/// How often the servers' max_payload is read again (it may change with the server the client
/// reconnected to).
const MAX_PAYLOAD_REFRESH: Duration = Duration::from_secs(1);
/// Retained messages waiting for the bucket (beyond: the oldest are dropped, counted).
const KV_QUEUE_LIMIT: usize = 10_000;
/// How long one pull request for stream messages lasts, and the heartbeat within it.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How often the link publishes its import floor.
const FLOOR_INTERVAL: Duration = Duration::from_millis(250);
/// Time allowed for local acknowledgements (CONNACK, SUBACK).
const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a fresh byte stream to this node's own broker.
pub type Connector =
    Box<dyn Fn() -> BoxFuture<'static, std::io::Result<BoxStream>> + Send + Sync + 'static>;

/// Asks this node's router to take over its client of an identifier that connected on
/// another node.
pub type TakeOver = Box<dyn Fn(String) + Send + Sync + 'static>;

/// What the link is given by its broker.
pub struct Hooks {
    /// Opens a stream to the broker.
    pub connector: Connector,
    /// Takes over a local client whose identifier another node claimed.
    pub take_over: TakeOver,
    /// Identifiers of clients that connected on this node, to claim.
    pub claims: tokio::sync::mpsc::Receiver<String>,
    /// This node's subscription filters, as its router tells them.
    pub interest: Arc<LocalInterest>,
    /// Which other nodes are alive (they announce themselves every second).
    pub placement: Arc<Placement>,
    /// Tells the router the other nodes know of its new filters (its SUBACKs go out).
    pub synced: SyncedFn,
    /// Sessions that moved away lately: late copies for them are passed on.
    pub departures: Arc<Departures>,
}

/// What the link needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// NATS server URLs.
    pub servers: Vec<String>,
    /// This node's name.
    pub node: String,
    /// The cluster's name: prefix of subjects, stream and consumers.
    pub cluster: String,
    /// A NATS credentials file.
    pub credentials: Option<PathBuf>,
    /// Replicas of the stream.
    pub replicas: usize,
}

impl Settings {
    /// The link's settings, when the configuration asks for a cluster.
    pub fn from_config(config: &culex_config::Cluster) -> Option<Settings> {
        if !config.enabled() {
            return None;
        }
        Some(Settings {
            servers: config.backplane.clone(),
            node: config.node_name.clone()?,
            cluster: config.name.clone(),
            credentials: config.credentials.clone(),
            replicas: usize::from(config.replicas),
        })
    }

    /// Subject prefix of QoS 0 messages for `node` (core NATS).
    pub fn qos0_prefix(&self, node: &str) -> String {
        format!("{}.q0.{node}", self.cluster)
    }

    /// Subject prefix of QoS 1/2 messages for `node` (in the stream).
    pub fn stored_prefix(&self, node: &str) -> String {
        format!("{}.q1.in.{node}", self.cluster)
    }

    /// Subject prefix of QoS 1/2 messages published on `node` that no other node wanted:
    /// kept in the stream all the same, for the node's persistent sessions should it die
    /// (see [`crate::replay`]).
    pub fn kept_prefix(&self, node: &str) -> String {
        format!("{}.q1.kept.{node}", self.cluster)
    }

    /// The stream of QoS 1/2 messages for `node` (subjects [`Settings::stored_prefix`]):
    /// each node's own stream, so that the streams' leaders spread over the NATS servers.
    pub fn inbound_stream(&self, node: &str) -> String {
        format!("{}-in-{node}", self.cluster)
    }

    /// The stream of QoS 1/2 messages `node` keeps for its own persistent sessions
    /// (subjects [`Settings::kept_prefix`]).
    pub fn kept_stream(&self, node: &str) -> String {
        format!("{}-kept-{node}", self.cluster)
    }

    /// This node's durable consumer.
    pub fn consumer_name(&self) -> String {
        format!("{}-in-{}", self.cluster, self.node)
    }

    /// The client id of the link's session in its own broker.
    pub fn local_client_id(&self) -> String {
        format!("{LOCAL_CLIENT_PREFIX}{}", self.node)
    }
}

/// The prefix of the link's client id in its broker (the node's name follows); a broker in a
/// cluster refuses it to network clients.
pub const LOCAL_CLIENT_PREFIX: &str = "culex-cluster-";

/// Starts the link; it runs until `shutdown` turns true.
pub fn spawn(
    settings: Settings,
    hooks: Hooks,
    stats: Arc<ClusterStats>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    // SUBACKs are answered even while the backplane cannot be reached.
    tokio::spawn(crate::interest_sync::expire_waiters(
        Arc::clone(&hooks.interest),
        Arc::clone(&hooks.synced),
        Arc::clone(&stats),
        shutdown.clone(),
    ));
    tokio::spawn(async move {
        let mut link = Link {
            settings,
            connector: hooks.connector,
            take_over: hooks.take_over,
            claims_rx: hooks.claims,
            interest: hooks.interest,
            placement: hooks.placement,
            synced: hooks.synced,
            departures: hooks.departures,
            routes: None,
            dests: Vec::new(),
            prefixes: HashMap::new(),
            no_stream: HashMap::new(),
            recreate_streams: false,
            stream_checks: FuturesUnordered::new(),
            checking: HashSet::new(),
            unconfirmed: Unconfirmed::default(),
            claims: crate::claims::Claims::default(),
            stats,
            shutdown,
            local: None,
            exports: FuturesUnordered::new(),
            retry: VecDeque::new(),
            imports: HashMap::new(),
            next_id: 0,
            boot: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            warned_too_large: false,
            max_payload: (0, None),
            kv_queue: VecDeque::new(),
            kv_busy: None,
            last_import_ms: unix_ms(),
            last_sent: None,
        };
        link.run().await;
    })
}

/// A QoS 1/2 message on its way to the stream.
struct Export {
    subject: String,
    headers: HeaderMap,
    envelope: Bytes,
    /// The local delivery to acknowledge once JetStream has the message (every copy of it).
    packet_id: u16,
    qos: QoS,
    /// Which publication this copy belongs to (the link's count of publications): a delivery
    /// the broker sent again under the same packet id is a new publication, and the copies
    /// of the earlier one no longer count for it.
    publication: u64,
    /// The node this copy is for (`None`: kept for this node's own persistent sessions).
    dest: Option<Arc<str>>,
    /// The stream it goes to.
    stream: Arc<str>,
}

/// Why a copy did not reach its stream (it is tried again later).
struct ExportError {
    error: String,
    /// Nothing answered: no such stream, or one without a leader for now (the link asks
    /// which, on the side).
    no_responders: bool,
}

/// A check of whether a stream exists: (stream, the node it belongs to or `None` for this
/// node's own, whether it is missing).
type StreamCheck = (Arc<str>, Option<Arc<str>>, bool);

/// Where one copy of a message goes: its subject prefix, the node it is for (`None`: kept
/// for this node), the stream.
type CopyTo = (Arc<str>, Option<Arc<str>>, Arc<str>);

/// How long a check of whether a stream exists may take (beyond: it counts as there).
const STREAM_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

type ExportResult = (Export, Result<(), ExportError>);

/// How long copies for a node whose stream was found missing are dropped without trying.
const NO_STREAM_RECHECK: Duration = Duration::from_secs(10);

/// Where the copies for one node go.
struct Route {
    /// Subject prefix of its QoS 0 messages.
    qos0: Arc<str>,
    /// Subject prefix of its QoS 1/2 messages.
    stored: Arc<str>,
    /// Its stream's name.
    stream: Arc<str>,
}

/// The copies of each local delivery that JetStream has not stored yet: the delivery is
/// acknowledged once every copy is stored. A delivery the broker sends again under the same
/// packet id (after the link's local connection dropped) is a new publication; copies of the
/// earlier one still on their way then confirm nothing (they would otherwise acknowledge it, or
/// a later message that reused the packet id, too early).
#[derive(Debug, Default)]
struct Unconfirmed(HashMap<u16, (u64, usize)>);

impl Unconfirmed {
    /// Publication `publication` of delivery `packet_id` goes out in `copies` copies.
    fn start(&mut self, packet_id: u16, publication: u64, copies: usize) {
        self.0.insert(packet_id, (publication, copies));
    }

    /// One copy of `publication` is stored; true when it was the delivery's last.
    fn stored(&mut self, packet_id: u16, publication: u64) -> bool {
        match self.0.get_mut(&packet_id) {
            Some((current, left)) if *current == publication => {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    self.0.remove(&packet_id);
                    return true;
                }
                false
            }
            _ => false,
        }
    }
}

struct Link {
    settings: Settings,
    connector: Connector,
    take_over: TakeOver,
    claims_rx: tokio::sync::mpsc::Receiver<String>,
    claims: crate::claims::Claims,
    interest: Arc<LocalInterest>,
    placement: Arc<Placement>,
    synced: SyncedFn,
    departures: Arc<Departures>,
    /// Which nodes want which topics (once the interest task runs).
    routes: Option<Arc<crate::interest_sync::Shared>>,
    /// Scratch: the nodes a message goes to.
    dests: Vec<Arc<str>>,
    /// Subject prefixes and stream per destination node, made once per node.
    prefixes: HashMap<Arc<str>, Arc<Route>>,
    /// Nodes whose stream was found missing (removed from the cluster by an operator), until
    /// when their copies are dropped without trying.
    no_stream: HashMap<Arc<str>, Instant>,
    /// This node's own streams must be made again (found missing).
    recreate_streams: bool,
    /// Checks of whether the streams of failed copies exist, and the streams being checked.
    stream_checks: FuturesUnordered<BoxFuture<'static, StreamCheck>>,
    checking: HashSet<Arc<str>>,
    /// The copies JetStream has not stored yet, per local delivery.
    unconfirmed: Unconfirmed,
    stats: Arc<ClusterStats>,
    shutdown: watch::Receiver<bool>,
    local: Option<Connection>,
    exports: FuturesUnordered<BoxFuture<'static, ExportResult>>,
    retry: VecDeque<Export>,
    /// Local publication packet id -> the stream message it came from.
    imports: HashMap<u16, jetstream::Message>,
    next_id: u64,
    boot: u128,
    warned_too_large: bool,
    /// The NATS servers' max_payload and when it was read.
    max_payload: (usize, Option<Instant>),
    /// Retained messages (or clears) waiting to be written to the bucket, in order.
    kv_queue: VecDeque<Publish>,
    /// The bucket write in progress (one at a time, so that a clear never overtakes a set).
    kv_busy: Option<BoxFuture<'static, Result<(), String>>>,
    /// Stream time (Unix ms) of the newest stream message received (when the link started,
    /// before the first).
    last_import_ms: u64,
    /// Told when the latest publication to JetStream has been handed to the NATS client (the
    /// next one waits for it).
    last_sent: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// The NATS side once set up.
struct Backplane {
    client: async_nats::Client,
    js: jetstream::Context,
    retained: jetstream::kv::Store,
    core: async_nats::Subscriber,
    stored: consumer::pull::Stream,
    /// Other nodes' claims of client identifiers.
    claims: async_nats::Subscriber,
}

impl Link {
    fn name(&self) -> &str {
        &self.settings.node
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Waits `delay` or until shutdown; false on shutdown.
    async fn pause(&mut self, delay: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = shutdown.changed() => {}
            () = tokio::time::sleep(delay) => {}
        }
        !self.shutting_down()
    }

    async fn run(&mut self) {
        let Some(mut backplane) = self.connect_backplane().await else {
            return;
        };
        let Some(interest_task) = self.start_interest(&backplane).await else {
            return;
        };
        if !self.connect_local().await {
            return;
        }
        self.load_retained(&backplane).await;
        tracing::info!(node = %self.name(), cluster = %self.settings.cluster, "cluster link up");
        let mut retry_at: Option<Instant> = None;
        let mut floor_tick = tokio::time::interval(FLOOR_INTERVAL);
        let mut last_progress = Instant::now();
        floor_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // First what arrived while the link was busy elsewhere (a resumed session's
            // redeliveries come with the SUBACK, and nothing more comes until they are
            // acknowledged).
            self.drain_local(&backplane).await;
            if self.kv_busy.is_none() {
                if let Some(p) = self.kv_queue.pop_front() {
                    let bucket = backplane.retained.clone();
                    self.kv_busy = Some(Box::pin(async move {
                        crate::retained::store(&bucket, &p).await
                    }));
                }
            }
            let retry_due = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let kv_done = async {
                match self.kv_busy.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            let mut shutdown = self.shutdown.clone();
            let Some(local) = self.local.as_mut() else {
                return;
            };
            tokio::select! {
                r = kv_done => {
                    self.kv_busy = None;
                    if let Err(e) = r {
                        ClusterStats::inc(&self.stats.publish_failures);
                        tracing::warn!(node = %self.name(), error = %e, "storing a retained message in the cluster bucket failed");
                    }
                }
                _ = shutdown.changed() => {}
                r = local.progress() => {
                    if let Err(e) = r {
                        if self.shutting_down() {
                            break;
                        }
                        tracing::warn!(node = %self.name(), error = %e, "cluster link lost its local connection; reconnecting");
                        if !self.connect_local().await {
                            break;
                        }
                    }
                }
                Some(client_id) = self.claims_rx.recv() => {
                    let at = unix_ms();
                    self.claims.local(&client_id, at);
                    let headers = self.origin_headers();
                    let payload = Bytes::from(crate::claims::encode(at, &client_id));
                    ClusterStats::inc(&self.stats.claims_sent);
                    if let Err(e) = backplane
                        .client
                        .publish_with_headers(crate::claims::subject(&self.settings.cluster), headers, payload)
                        .await
                    {
                        tracing::debug!(node = %self.name(), error = %e, "claiming a client identifier failed");
                    }
                }
                m = backplane.claims.next() => {
                    if let Some((at, client_id)) = m.as_ref().and_then(|m| crate::claims::decode(&m.payload)) {
                        if self.claims.must_yield(&client_id, at) {
                            ClusterStats::inc(&self.stats.claims_yielded);
                            (self.take_over)(client_id);
                        }
                    }
                }
                m = backplane.core.next() => match m {
                    Some(m) => self.import_qos0(m).await,
                    None => tracing::warn!(node = %self.name(), "the backplane subscription ended"),
                },
                m = backplane.stored.next() => match m {
                    Some(Ok(m)) => self.import_stored(m).await,
                    Some(Err(e)) => tracing::debug!(node = %self.name(), error = %e, "reading the cluster stream"),
                    None => {
                        tracing::warn!(node = %self.name(), "the cluster stream consumer ended; recreating it");
                        // The stream itself may be gone (deleted by hand): made again.
                        let made = match open_own_streams(&backplane.js, &self.settings).await {
                            Ok(()) => stored_messages(&self.settings, &backplane.js).await,
                            Err(e) => Err(e),
                        };
                        match made {
                            Ok(s) => backplane.stored = s,
                            Err(e) => {
                                tracing::warn!(node = %self.name(), error = %e, "cannot read the cluster stream");
                                if !self.pause(BACKOFF_MIN).await {
                                    break;
                                }
                            }
                        }
                    }
                },
                Some((export, result)) = self.exports.next() => self.exported(export, result, &mut retry_at, &backplane.js),
                Some(check) = self.stream_checks.next() => self.checked(check),
                _ = floor_tick.tick() => {
                    self.update_import_floor();
                    if last_progress.elapsed() >= PROGRESS_EVERY {
                        last_progress = Instant::now();
                        still_working(&backplane.client, self.held_replies()).await;
                    }
                }
                () = retry_due => {
                    retry_at = None;
                    if std::mem::take(&mut self.recreate_streams) {
                        if let Err(e) = open_own_streams(&backplane.js, &self.settings).await {
                            tracing::warn!(node = %self.name(), error = %e, "cannot make this node's streams again");
                            self.recreate_streams = true;
                        }
                    }
                    let pending: Vec<Export> = self.retry.drain(..).collect();
                    for export in pending {
                        if !self.drop_if_no_stream(&export) {
                            self.send_stored(&backplane.js, export);
                        }
                    }
                }
            }
            if self.shutting_down() {
                break;
            }
        }
        self.stats
            .backplane_connected
            .store(false, Ordering::Relaxed);
        if let Some(local) = self.local.as_mut() {
            // The session (and what it holds for the backplane) stays in the broker.
            local
                .close(culex_proto::ReasonCode::Success, Duration::from_millis(200))
                .await;
        }
        interest_task.abort();
        tracing::info!(node = %self.name(), "cluster link stopped");
    }

    /// Starts keeping the cluster's interest (retrying with backoff); `None` on shutdown.
    async fn start_interest(
        &mut self,
        backplane: &Backplane,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut delay = BACKOFF_MIN;
        loop {
            if self.shutting_down() {
                return None;
            }
            match crate::interest_sync::start(
                &self.settings,
                backplane.client.clone(),
                Arc::clone(&self.interest),
                Arc::clone(&self.placement),
                Arc::clone(&self.synced),
                Arc::clone(&self.stats),
                self.shutdown.clone(),
            )
            .await
            {
                Ok((routes, task)) => {
                    self.routes = Some(routes);
                    return Some(task);
                }
                Err(e) => {
                    tracing::warn!(node = %self.name(), error = %e, retry_in = ?delay, "cannot read the cluster's interest");
                    if !self.pause(delay).await {
                        return None;
                    }
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Connects to NATS and sets up the stream, the consumer and the QoS 0 subscription,
    /// retrying with backoff. `None` on shutdown.
    async fn connect_backplane(&mut self) -> Option<Backplane> {
        let mut delay = BACKOFF_MIN;
        loop {
            if self.shutting_down() {
                return None;
            }
            match try_backplane(&self.settings, &self.stats).await {
                Ok(b) => {
                    self.stats
                        .backplane_connected
                        .store(true, Ordering::Relaxed);
                    ClusterStats::inc(&self.stats.connects);
                    return Some(b);
                }
                Err(e) => {
                    tracing::warn!(node = %self.name(), servers = %self.settings.servers.join(","), error = %e, retry_in = ?delay, "cannot set up the cluster backplane");
                    if !self.pause(delay).await {
                        return None;
                    }
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Connects (or reconnects) to the local broker and subscribes to every topic. False on
    /// shutdown.
    async fn connect_local(&mut self) -> bool {
        let mut delay = BACKOFF_MIN;
        loop {
            if self.shutting_down() {
                return false;
            }
            match self.try_local().await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(node = %self.name(), error = %e, "cluster link cannot connect to its broker; retrying");
                    if !self.pause(delay).await {
                        return false;
                    }
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn try_local(&mut self) -> Result<(), ClientError> {
        let io = tokio::time::timeout(LOCAL_TIMEOUT, (self.connector)())
            .await
            .map_err(|_| ClientError::Timeout("opening the local stream"))??;
        match self.local.as_mut() {
            Some(conn) => conn.reconnect(io, LOCAL_TIMEOUT).await?,
            None => {
                let session = ClientSession::new(local_options(&self.settings));
                self.local = Some(Connection::handshake(io, session, None, LOCAL_TIMEOUT).await?);
            }
        }
        let Some(local) = self.local.as_mut() else {
            return Err(ClientError::NotConnected);
        };
        let filter = SubscribeFilter {
            filter: "#".to_owned(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                // What the link publishes (from other nodes) must not go back out.
                no_local: true,
                retain_as_published: true,
                // Retained messages were handed over when they were published.
                retain_handling: RetainHandling::DoNotSend,
            },
        };
        tokio::time::timeout(
            LOCAL_TIMEOUT,
            local.subscribe(vec![filter], Properties::default()),
        )
        .await
        .map_err(|_| ClientError::Timeout("waiting for the local SUBACK"))??;
        Ok(())
    }

    /// Publishes the cluster's retained messages into this broker (a node that joins, or
    /// restarts without its own store, gets them all).
    async fn load_retained(&mut self, backplane: &Backplane) {
        let loaded = tokio::time::timeout(
            crate::retained::LOAD_TIMEOUT,
            crate::retained::load(&backplane.retained),
        )
        .await;
        match loaded {
            Ok(Ok(messages)) => {
                let n = messages.len();
                for p in messages {
                    let _ = self.publish_local(p, None);
                }
                tracing::info!(node = %self.name(), retained = n, "retained messages of the cluster loaded");
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %self.name(), error = %e, "cannot load the cluster's retained messages")
            }
            Err(_) => {
                tracing::warn!(node = %self.name(), "loading the cluster's retained messages timed out")
            }
        }
    }

    /// Hands what the local broker delivered to the backplane, and confirms to the stream
    /// what the local broker has accepted.
    async fn drain_local(&mut self, backplane: &Backplane) {
        let Some(local) = self.local.as_mut() else {
            return;
        };
        let mut delivered = Vec::new();
        while let Some(p) = local.try_recv() {
            delivered.push(p);
        }
        let done = local.take_published();
        for p in delivered {
            self.export(backplane, p).await;
        }
        for (packet_id, _reason) in done {
            if let Some(m) = self.imports.remove(&packet_id) {
                ClusterStats::inc(&self.stats.messages_in);
                // A late copy is confirmed once passed on.
                let Some(m) = self.pass_on_if_late(&backplane.client, m) else {
                    continue;
                };
                if let Err(e) = m.ack().await {
                    tracing::debug!(node = %self.name(), error = %e, "confirming a cluster message");
                }
            }
        }
    }

    /// The reply subjects of the messages the broker has not accepted yet.
    fn held_replies(&self) -> Vec<async_nats::Subject> {
        self.imports
            .values()
            .filter_map(|m| m.reply.clone())
            .collect()
    }

    /// Publishes the stream time before which every stream message has been confirmed here
    /// (see [`ClusterStats::import_floor_ms`]).
    fn update_import_floor(&self) {
        let oldest_held = self
            .imports
            .values()
            .filter_map(|m| m.info().ok())
            .map(|i| u64::try_from(i.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
            .min();
        let floor = oldest_held.unwrap_or(self.last_import_ms);
        self.stats.import_floor_ms.store(floor, Ordering::Relaxed);
    }

    /// Headers naming this node as the origin.
    fn origin_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ORIGIN_HEADER, self.settings.node.as_str());
        headers
    }

    /// Headers of the copies of one publication to the stream: the origin, the nodes it goes
    /// to (`dests`, see [`crate::departures`]) and a message id (unique per node and boot, so
    /// that JetStream stores a retried publication once), the copy for a node carrying that
    /// node's name after a `.` (see [`crate::replay`]).
    fn stored_headers(&mut self, dest: Option<&str>, dests: &str) -> HeaderMap {
        let mut headers = self.origin_headers();
        headers.insert(DEST_HEADER, dests);
        let id = match dest {
            Some(node) => format!(
                "{}-{}-{}.{node}",
                self.settings.node, self.boot, self.next_id
            ),
            None => format!("{}-{}-{}", self.settings.node, self.boot, self.next_id),
        };
        headers.insert("Nats-Msg-Id", id.as_str());
        headers
    }

    /// One message from a local client, for the other nodes.
    async fn export(&mut self, backplane: &Backplane, p: Publish) {
        let local_ack = p.packet_id.filter(|_| p.qos != QoS::AtMostOnce);
        let envelope = match encode_publish(&p) {
            Ok(e) => e,
            Err(e) => {
                ClusterStats::inc(&self.stats.bad_messages);
                tracing::warn!(node = %self.name(), topic = %p.topic, error = %e, "message not handed to the cluster");
                if let (Some(id), Some(local)) = (local_ack, self.local.as_mut()) {
                    local.ack(id, p.qos);
                }
                return;
            }
        };
        // Room for the subject and headers within the servers' max_payload (the client's copy
        // of the server information is cloned to read it: done at most once a second).
        if self
            .max_payload
            .1
            .is_none_or(|at| at.elapsed() > MAX_PAYLOAD_REFRESH)
        {
            self.max_payload = (
                backplane.client.server_info().max_payload,
                Some(Instant::now()),
            );
        }
        let max = self.max_payload.0;
        if envelope.len() + 512 > max {
            ClusterStats::inc(&self.stats.dropped_too_large);
            if !self.warned_too_large {
                self.warned_too_large = true;
                tracing::warn!(node = %self.name(), topic = %p.topic, size = envelope.len(), max_payload = max, "message larger than the NATS servers' max_payload is not handed to the other nodes (raise max_payload in nats-server.conf; counted in culex_cluster_dropped_total{{reason=\"too_large\"}}; logged once)");
            }
            if let (Some(id), Some(local)) = (local_ack, self.local.as_mut()) {
                local.ack(id, p.qos);
            }
            return;
        }
        if p.retain {
            if self.kv_queue.len() >= KV_QUEUE_LIMIT {
                self.kv_queue.pop_front();
                ClusterStats::inc(&self.stats.dropped_queue_full);
            }
            self.kv_queue.push_back(p.clone());
        }
        let mut dests = std::mem::take(&mut self.dests);
        if let Some(table) = self.routes.as_ref().and_then(|r| r.table.read().ok()) {
            table.nodes_for(&p.topic, &self.settings.node, &mut dests);
        }
        if dests.is_empty() {
            ClusterStats::inc(&self.stats.unrouted);
        }
        if !self.no_stream.is_empty() {
            let now = Instant::now();
            self.no_stream.retain(|_, until| *until > now);
            let before = dests.len();
            dests.retain(|n| !self.no_stream.contains_key(n));
            if local_ack.is_some() {
                self.stats
                    .dropped_no_stream
                    .fetch_add((before - dests.len()) as u64, Ordering::Relaxed);
            }
        }
        let routes: Vec<(Arc<str>, Arc<Route>)> = dests
            .iter()
            .map(|n| {
                let route = self.prefixes.entry(Arc::clone(n)).or_insert_with(|| {
                    Arc::new(Route {
                        qos0: self.settings.qos0_prefix(n).into(),
                        stored: self.settings.stored_prefix(n).into(),
                        stream: self.settings.inbound_stream(n).into(),
                    })
                });
                (Arc::clone(n), Arc::clone(route))
            })
            .collect();
        // Asked once: the router may change it meanwhile.
        let keep = local_ack.is_some() && self.interest.persistent_wants(&p.topic);
        match local_ack {
            None => {
                for (_, route) in &routes {
                    if !self.stats.connected() {
                        ClusterStats::inc(&self.stats.dropped_qos0);
                        continue;
                    }
                    let subject = topic_to_subject(&route.qos0, &p.topic);
                    match backplane
                        .client
                        .publish_with_headers(subject, self.origin_headers(), envelope.clone())
                        .await
                    {
                        Ok(()) => ClusterStats::inc(&self.stats.messages_out),
                        Err(_) => ClusterStats::inc(&self.stats.dropped_qos0),
                    }
                }
            }
            Some(packet_id) if routes.is_empty() && !keep => {
                // Nobody elsewhere wants it, and nothing here would survive this node: the
                // backplane has nothing to keep.
                if let Some(local) = self.local.as_mut() {
                    local.ack(packet_id, p.qos);
                }
            }
            Some(packet_id) => {
                self.next_id += 1;
                // One copy per node that wants it, and one kept for this node's persistent
                // sessions that want it (read back should this node die).
                let mut copies: Vec<CopyTo> = routes
                    .iter()
                    .map(|(n, route)| {
                        (
                            Arc::clone(&route.stored),
                            Some(Arc::clone(n)),
                            Arc::clone(&route.stream),
                        )
                    })
                    .collect();
                if keep {
                    let me = &self.settings.node;
                    copies.push((
                        self.settings.kept_prefix(me).into(),
                        None,
                        self.settings.kept_stream(me).into(),
                    ));
                }
                let publication = self.next_id;
                self.unconfirmed.start(packet_id, publication, copies.len());
                let names: Vec<&str> = routes.iter().map(|(n, _)| &**n).collect();
                let names = names.join(",");
                for (prefix, dest, stream) in copies {
                    let export = Export {
                        subject: topic_to_subject(&prefix, &p.topic),
                        headers: self.stored_headers(dest.as_deref(), &names),
                        envelope: envelope.clone(),
                        packet_id,
                        qos: p.qos,
                        publication,
                        dest,
                        stream,
                    };
                    self.stats.pending_out.fetch_add(1, Ordering::Relaxed);
                    self.send_stored(&backplane.js, export);
                }
            }
        }
        dests.clear();
        self.dests = dests;
    }

    /// Publishes to the stream; the result comes back through `self.exports`.
    /// Hands a message to JetStream. Publications leave in the order they are made here (each
    /// waits until the one before it has been handed to the NATS client; that keeps each
    /// publisher's order in the stream) without holding up the link while NATS is away;
    /// their acknowledgements are awaited side by side.
    fn send_stored(&mut self, js: &jetstream::Context, export: Export) {
        let js = js.clone();
        let before = self.last_sent.take();
        let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
        self.last_sent = Some(sent_rx);
        self.exports.push(Box::pin(async move {
            if let Some(before) = before {
                // An error only means the one before is gone: nothing left to wait for.
                let _ = before.await;
            }
            let sent = js
                .publish_with_headers(
                    export.subject.clone(),
                    export.headers.clone(),
                    export.envelope.clone(),
                )
                .await;
            let _ = sent_tx.send(());
            let result = match sent {
                Ok(ack) => ack.await.map(|_| ()),
                Err(e) => Err(e),
            };
            let result = result.map_err(|e| ExportError {
                no_responders: e.kind() == jetstream::context::PublishErrorKind::StreamNotFound,
                error: e.to_string(),
            });
            (export, result)
        }));
    }

    /// JetStream answered a publication: acknowledge the local delivery, or retry (a copy
    /// for a node whose stream is missing is dropped, counted).
    fn exported(
        &mut self,
        export: Export,
        result: Result<(), ExportError>,
        retry_at: &mut Option<Instant>,
        js: &jetstream::Context,
    ) {
        let e = match result {
            Ok(()) => {
                ClusterStats::inc(&self.stats.messages_out);
                self.copy_done(&export);
                return;
            }
            Err(e) => e,
        };
        if self.drop_if_no_stream(&export) {
            return;
        }
        ClusterStats::inc(&self.stats.publish_failures);
        tracing::debug!(node = %self.name(), error = %e.error, "storing a message in the cluster stream failed; retrying");
        if e.no_responders && self.checking.insert(Arc::clone(&export.stream)) {
            // Asked on the side: retries go on meanwhile at their pace.
            let js = js.clone();
            let (stream, dest) = (Arc::clone(&export.stream), export.dest.clone());
            self.stream_checks.push(Box::pin(async move {
                let missing =
                    tokio::time::timeout(STREAM_CHECK_TIMEOUT, stream_missing(&js, &stream))
                        .await
                        .unwrap_or(false);
                (stream, dest, missing)
            }));
        }
        self.retry.push_back(export);
        retry_at.get_or_insert_with(|| Instant::now() + RETRY_DELAY);
    }

    /// A check of whether a stream exists came back.
    fn checked(&mut self, (stream, dest, missing): StreamCheck) {
        self.checking.remove(&stream);
        if !missing {
            return;
        }
        match dest {
            Some(node) => {
                // Removed from the cluster: what it wanted has nowhere to go.
                tracing::warn!(node = %self.name(), gone = %node, stream = %stream,
                    "the stream of another node is missing: the messages its subscriptions want are dropped (culex_cluster_dropped_total{{reason=\"no_stream\"}}); a node that starts makes its stream again");
                self.no_stream
                    .insert(node, Instant::now() + NO_STREAM_RECHECK);
            }
            None => {
                tracing::warn!(node = %self.name(), stream = %stream, "this node's stream is missing; making it again");
                self.recreate_streams = true;
            }
        }
    }

    /// Drops `export` (counted) when its node's stream is known to be missing.
    fn drop_if_no_stream(&mut self, export: &Export) -> bool {
        let gone = export
            .dest
            .as_ref()
            .and_then(|n| self.no_stream.get(n))
            .is_some_and(|until| *until > Instant::now());
        if gone {
            ClusterStats::inc(&self.stats.dropped_no_stream);
            self.copy_done(export);
        }
        gone
    }

    /// One copy of a delivery is done with: the delivery is acknowledged after its last.
    fn copy_done(&mut self, export: &Export) {
        self.stats.pending_out.fetch_sub(1, Ordering::Relaxed);
        if self
            .unconfirmed
            .stored(export.packet_id, export.publication)
        {
            if let Some(local) = self.local.as_mut() {
                local.ack(export.packet_id, export.qos);
            }
        }
    }

    fn is_own(&self, headers: Option<&HeaderMap>) -> bool {
        headers
            .and_then(|h| h.get(ORIGIN_HEADER))
            .is_some_and(|v| v.as_str() == self.settings.node)
    }

    /// A QoS 0 message from another node.
    async fn import_qos0(&mut self, m: async_nats::Message) {
        if self.is_own(m.headers.as_ref()) {
            return;
        }
        match decode_publish(&m.payload) {
            Ok(p) => {
                if self.publish_local(p, None).is_ok() {
                    ClusterStats::inc(&self.stats.messages_in);
                }
            }
            Err(e) => {
                ClusterStats::inc(&self.stats.bad_messages);
                tracing::debug!(node = %self.name(), subject = %m.subject, error = %e, "unreadable cluster message skipped");
            }
        }
    }

    /// A QoS 1/2 message from the stream: confirmed once the local broker has it.
    async fn import_stored(&mut self, m: jetstream::Message) {
        if let Ok(info) = m.info() {
            let stored =
                u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let now = unix_ms();
            self.last_import_ms = stored;
            if let Ok(mut lag) = self.stats.import_lag.lock() {
                lag.record(now, now.saturating_sub(stored));
            }
        }
        if self.is_own(m.headers.as_ref()) {
            let _ = m.ack().await;
            return;
        }
        let p = match decode_publish(&m.payload) {
            Ok(p) => p,
            Err(e) => {
                ClusterStats::inc(&self.stats.bad_messages);
                tracing::debug!(node = %self.name(), subject = %m.subject, error = %e, "unreadable cluster message skipped");
                let _ = m.ack().await;
                return;
            }
        };
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID));
        if let Some(id) = id {
            self.departures.imported(id.as_str());
        }
        let publication = id.map(|id| publication_of(id.as_str()));
        match self.publish_local(p, publication) {
            Ok(Some(packet_id)) => {
                self.imports.insert(packet_id, m);
            }
            Ok(None) => {
                let _ = m.ack().await;
                ClusterStats::inc(&self.stats.messages_in);
            }
            // Not handed over: the stream sends it again a little later.
            Err(()) => {
                let _ = m.ack_with(jetstream::AckKind::Nak(Some(RETRY_DELAY))).await;
            }
        }
    }

    /// A stream message the local broker has just accepted (routed): if a session handed
    /// over lately wants it, and its new node did not get a copy, it is passed on to that node
    /// (see [`crate::departures`]) and confirmed to the stream after that, in the background
    /// (`None`); otherwise it is given back to be confirmed now.
    fn pass_on_if_late(
        &self,
        client: &async_nats::Client,
        m: jetstream::Message,
    ) -> Option<jetstream::Message> {
        if self.departures.is_empty() {
            return Some(m);
        }
        let Ok(p) = decode_publish(&m.payload) else {
            return Some(m);
        };
        let headers = m.headers.as_ref();
        let late = self.departures.late_for(
            &p.topic,
            headers.and_then(|h| h.get(DEST_HEADER)).map(|v| v.as_str()),
            headers
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str()),
        );
        if late.is_empty() {
            return Some(m);
        }
        let copies: Vec<(String, Bytes)> = late
            .iter()
            .filter_map(|(client_id, node)| {
                tracing::debug!(node = %self.name(), to = %node, client_id = %client_id.get(..128).unwrap_or(client_id),
                    "a late copy for a session handed to another node is passed on");
                let subject = crate::departures::tail_subject(&self.settings.cluster, node);
                Some((subject, crate::departures::encode_tail(client_id, &m.payload)?))
            })
            .collect();
        let mut headers = HeaderMap::new();
        if let Some(id) = m
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        {
            headers.insert(
                PUBLICATION_HEADER,
                publication_of(id.as_str()).to_string().as_str(),
            );
        }
        let (client, stats) = (client.clone(), Arc::clone(&self.stats));
        tokio::spawn(async move {
            for (subject, payload) in copies {
                let passed = pass_on(&client, subject, headers.clone(), payload).await;
                ClusterStats::inc(if passed {
                    &stats.late_passed_on
                } else {
                    &stats.dropped_late
                });
            }
            let _ = m.ack().await;
        });
        None
    }

    /// Publishes a message from another node into this broker, naming the `publication` it
    /// is a copy of: its local packet id (QoS 1/2), `Ok(None)` for QoS 0, an error when it
    /// could not be handed to the broker.
    fn publish_local(
        &mut self,
        mut p: Publish,
        publication: Option<u64>,
    ) -> Result<Option<u16>, ()> {
        let Some(local) = self.local.as_mut() else {
            return Err(());
        };
        mark_publication(&mut p, publication);
        let message = Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
        };
        local.start_publish(message).map_err(|e| {
            tracing::warn!(node = %self.name(), error = %e, "cannot publish a cluster message locally");
        })
    }
}

/// Names the publication `p` is a copy of, for the broker, in the last user property (see
/// [`crate::envelope::take_publication`]). Without one, a property of that name the
/// publishing client set itself is followed by an empty one, so that it is not taken for
/// the link's.
fn mark_publication(p: &mut Publish, publication: Option<u64>) {
    let value = match publication {
        Some(id) => id.to_string(),
        None if !p.properties.is_empty()
            && p.properties
                .user_properties
                .iter()
                .any(|(k, _)| k == PUBLICATION_PROPERTY) =>
        {
            String::new()
        }
        None => return,
    };
    p.properties
        .user_properties
        .push((PUBLICATION_PROPERTY.to_owned(), value));
}

/// Hands a late copy to another node ([`crate::departures::tail_subject`]): whether its
/// session took it. A node that does not answer in time is asked again.
async fn pass_on(
    client: &async_nats::Client,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> bool {
    for _ in 0..crate::departures::TAIL_ATTEMPTS {
        let answer = tokio::time::timeout(
            crate::departures::TAIL_TIMEOUT,
            client.request_with_headers(subject.clone(), headers.clone(), payload.clone()),
        )
        .await;
        match answer {
            Ok(Ok(reply)) => return &reply.payload[..] == b"ok",
            // No answer (in time), or no responder (the node is restarting): again.
            _ => tokio::time::sleep(RETRY_DELAY).await,
        }
    }
    false
}

async fn try_backplane(
    settings: &Settings,
    stats: &Arc<ClusterStats>,
) -> Result<Backplane, String> {
    let events = Arc::clone(stats);
    let options = nats_options(settings, "node")
        .await?
        // Our own QoS 0 messages must not come back to us.
        .no_echo()
        // Room for bursts of QoS 0 from other nodes before NATS drops any (slow consumer).
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .event_callback(move |event| {
            let stats = Arc::clone(&events);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        stats.backplane_connected.store(true, Ordering::Relaxed);
                        tracing::info!("cluster backplane connected");
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        // The client dropped QoS 0 messages from other nodes: this node could not
                        // keep up (counted per event, not per message).
                        ClusterStats::inc(&stats.slow_consumer);
                        tracing::warn!("cluster link too slow for the QoS 0 traffic of the other nodes: NATS dropped some");
                    }
                    async_nats::Event::Disconnected => {
                        stats.backplane_connected.store(false, Ordering::Relaxed);
                        tracing::warn!("cluster backplane lost; reconnecting");
                    }
                    other => tracing::debug!(event = %other, "cluster backplane"),
                }
            }
        });
    let client = options
        .connect(settings.servers.clone())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client.clone());
    open_own_streams(&js, settings).await?;
    let stored = stored_messages(settings, &js).await?;
    let core = client
        .subscribe(format!("{}.>", settings.qos0_prefix(&settings.node)))
        .await
        .map_err(|e| e.to_string())?;
    let retained = crate::retained::open(&js, &settings.cluster, settings.replicas).await?;
    let claims = client
        .subscribe(crate::claims::subject(&settings.cluster))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Backplane {
        client,
        js,
        retained,
        claims,
        core,
        stored,
    })
}

/// Creates (or finds) this node's streams: what the others send it, and what it keeps for its
/// own persistent sessions.
async fn open_own_streams(js: &jetstream::Context, settings: &Settings) -> Result<(), String> {
    let me = &settings.node;
    open_stream(
        js,
        settings,
        settings.inbound_stream(me),
        settings.stored_prefix(me),
    )
    .await?;
    open_stream(
        js,
        settings,
        settings.kept_stream(me),
        settings.kept_prefix(me),
    )
    .await
}

/// Whether the NATS servers say stream `name` does not exist (not: cannot tell now).
async fn stream_missing(js: &jetstream::Context, name: &str) -> bool {
    match js.get_stream(name).await {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        ),
    }
}

/// Creates (or finds) the stream `name` of the subjects under `prefix`.
async fn open_stream(
    js: &jetstream::Context,
    settings: &Settings,
    name: String,
    prefix: String,
) -> Result<(), String> {
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        num_replicas: settings.replicas,
        max_age: STREAM_MAX_AGE,
        max_bytes: STREAM_MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| {
        format!(
            "cannot create the JetStream stream {name} with {} replicas: {e} (is JetStream enabled, and are there as many NATS servers as cluster_replicas?)",
            settings.replicas
        )
    })
}

/// Options of a NATS connection of this node (`role` names it in the servers' connection
/// lists): reconnecting for ever, with the cluster's credentials.
pub(crate) async fn nats_options(
    settings: &Settings,
    role: &str,
) -> Result<async_nats::ConnectOptions, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("culex {role} {}", settings.node))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5));
    if let Some(path) = &settings.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("cluster_credentials {}: {e}", path.display()))?;
    }
    Ok(options)
}

/// This node's durable consumer of the stream, and its message stream.
async fn stored_messages(
    settings: &Settings,
    js: &jetstream::Context,
) -> Result<consumer::pull::Stream, String> {
    let stream = js
        .get_stream(settings.inbound_stream(&settings.node))
        .await
        .map_err(|e| e.to_string())?;
    let name = settings.consumer_name();
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("{}.>", settings.stored_prefix(&settings.node)),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::New,
                ack_wait: ACK_WAIT,
                max_ack_pending: i64::from(WINDOW),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    // Short pull requests with frequent heartbeats: when the consumer's leader dies with its
    // NATS server, a missing heartbeat says so within seconds (the defaults, 30 s pulls and
    // 15 s heartbeats, left a node without cluster messages for up to half a minute).
    consumer
        .stream()
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Tells JetStream the messages behind `replies` are still being worked on (a progress
/// acknowledgement, `+WPI`, to each).
async fn still_working(client: &async_nats::Client, replies: Vec<async_nats::Subject>) {
    for reply in replies {
        let _ = client.publish(reply, Bytes::from_static(b"+WPI")).await;
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The link's session in its own broker: MQTT 5 (No Local, Retain As Published), persistent
/// (what waits for the backplane survives a restart of the link), acknowledged by hand once
/// the backplane has each message.
fn local_options(settings: &Settings) -> ConnectOptions {
    let mut o = ConnectOptions::new(settings.local_client_id());
    o.protocol = Protocol::V5;
    o.clean_start = false;
    o.keep_alive = 60;
    o.properties.session_expiry_interval = Some(u32::MAX);
    o.properties.receive_maximum = Some(WINDOW);
    o.max_inflight = WINDOW;
    o.manual_acks = true;
    o
}

#[cfg(test)]
mod tests {
    use super::{mark_publication, Unconfirmed};
    use crate::envelope::{take_publication, PUBLICATION_PROPERTY};
    use culex_proto::{Properties, Publish, QoS};

    fn publish(own: &[(&str, &str)]) -> Publish {
        let mut properties = Properties::default();
        for (k, v) in own {
            properties
                .user_properties
                .push(((*k).to_owned(), (*v).to_owned()));
        }
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t".into(),
            packet_id: Some(1),
            properties,
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_clients_own_publication_property_is_never_taken_for_the_links() {
        let own = [(PUBLICATION_PROPERTY, "42")];
        // Marked: the broker takes the link's, the client's stays.
        let mut p = publish(&own);
        mark_publication(&mut p, Some(7));
        assert_eq!(take_publication(&mut p.properties), Some(7));
        assert_eq!(p.properties.user_properties.len(), 1);
        // Not marked (no stream identity, QoS 0, retained): still not the client's.
        let mut p = publish(&own);
        mark_publication(&mut p, None);
        assert_eq!(take_publication(&mut p.properties), None);
        assert_eq!(p.properties.user_properties.len(), 1);
        // Nothing to mark: no property added.
        let mut p = publish(&[]);
        mark_publication(&mut p, None);
        assert!(p.properties.is_empty());
    }

    #[test]
    fn a_delivery_is_confirmed_by_its_last_copy_and_never_by_an_earlier_publication() {
        let mut u = Unconfirmed::default();
        u.start(7, 1, 2);
        assert!(!u.stored(7, 1));
        // The broker sent delivery 7 again (new publication 2, three copies) before the
        // first publication's second copy was stored.
        u.start(7, 2, 3);
        assert!(!u.stored(7, 1), "a copy of the earlier publication");
        assert!(!u.stored(7, 2) && !u.stored(7, 2));
        assert!(u.stored(7, 2));
        // Packet id 7 reused for another message: stale copies still confirm nothing.
        u.start(7, 3, 1);
        assert!(!u.stored(7, 2));
        assert!(u.stored(7, 3));
        assert!(!u.stored(7, 3), "nothing left");
    }
}
