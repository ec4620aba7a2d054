//! Starts this node's cluster link (`culex-cluster`) when the configuration names a
//! backplane, connected to this broker through an in-process stream like a bridge: its
//! session here holds what waits for the backplane, bounded, persisted like any session.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use culex_broker::log_clip::Clipped;
use culex_broker::{ClusterReport, Command, QueueObserver, QueuePolicy};
use culex_cluster::departures::Departures;
use culex_cluster::interest_sync::LocalInterest;
use culex_cluster::records::Records;
use culex_cluster::sessions::{Directory, FetchError, Fetched};
use culex_cluster::shared::Placement;
use culex_cluster::{ClusterStats, Settings};
use culex_config::{Config, ListenerProtocol};
use culex_store::Clocks;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::context::{ListenerCtx, Shared};
use crate::security::SecurityHandle;

/// Messages (and bytes) that may wait in the link's session for the backplane; beyond them the
/// oldest are dropped and counted (`culex_cluster_dropped_total{reason="queue_full"}`).
const QUEUE_LIMIT: usize = 100_000;
const QUEUE_BYTES: u64 = 256 * 1024 * 1024;
/// Client connections waiting to be claimed on the other nodes (beyond: not claimed, logged).
const CLAIM_QUEUE: usize = 4096;
/// Messages read back from the stream for one session whose node died, at most (beyond:
/// left out, counted in `culex_cluster_dropped_total{reason="replay_limit"}`).
const REPLAY_LIMIT: usize = 100_000;
/// How long a session rebuilt after its node died waits for this node's link to hand its
/// backlog to the stream before reading it.
const BACKLOG_WAIT: Duration = Duration::from_secs(1);
/// How often a rebuilt session's queue is offered the next messages read back for it.
const REPLAY_PACE: Duration = Duration::from_millis(20);
/// How long a late copy for a connected client's full queue waits for room: less than the
/// sender waits for the answer before it asks again.
const LATE_COPY_WAIT: Duration = Duration::from_millis(1_500);
/// How long shutdown waits for the link to close its local session.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What connection tasks use of the cluster.
#[derive(Debug, Clone)]
pub(crate) struct ClusterConns {
    /// Client identifiers of clients that connected here, for the link to claim them on the
    /// other nodes (which end their own session of that identifier).
    pub(crate) claims: mpsc::Sender<String>,
    /// Where persistent sessions live in the cluster.
    pub(crate) sessions: Directory,
    /// The link's counters (what waits for the backplane).
    pub(crate) stats: Arc<ClusterStats>,
    /// This node's filters, as the other nodes are told them.
    pub(crate) interest: Arc<LocalInterest>,
}

/// The cluster's parts started before the connection tasks' shared state exists (the session
/// directory), and what the link needs when it starts.
pub(crate) struct Prepared {
    settings: Settings,
    stats: Arc<ClusterStats>,
    claims: mpsc::Receiver<String>,
    shutdown: watch::Sender<bool>,
    directory: tokio::task::JoinHandle<()>,
    placement: Arc<Placement>,
    interest: Arc<LocalInterest>,
    departures: Arc<Departures>,
}

/// The running link.
#[derive(Debug)]
pub(crate) struct Cluster {
    stats: Arc<ClusterStats>,
    task: tokio::task::JoinHandle<()>,
    directory: tokio::task::JoinHandle<()>,
    shutdown: watch::Sender<bool>,
    local_conns: TaskTracker,
}

impl Cluster {
    /// The link's counters and state.
    pub(crate) fn stats(&self) -> &Arc<ClusterStats> {
        &self.stats
    }

    /// Stops the link (its local session stays in the broker) and waits, bounded.
    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(STOP_TIMEOUT, self.task).await.is_err() {
            warn!("cluster link did not stop in time");
        }
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.directory).await;
        self.local_conns.close();
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.local_conns.wait()).await;
    }
}

/// Starts the session directory if `config` asks for a cluster: it answers other nodes'
/// requests for this node's sessions through `router`.
pub(crate) fn prepare(
    config: &Config,
    router: mpsc::WeakSender<Command>,
    placement: Option<Arc<Placement>>,
    interest: Option<Arc<LocalInterest>>,
    departures: Option<Arc<Departures>>,
    records: Option<Arc<Records>>,
) -> Option<(ClusterConns, Prepared)> {
    let settings = Settings::from_config(&config.cluster)?;
    let (placement, interest, departures, records) = (placement?, interest?, departures?, records?);
    let stats = Arc::new(ClusterStats::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let export_router = router.clone();
    let export: culex_cluster::sessions::ExportFn = Arc::new(move |client_id| {
        let router = export_router.clone();
        Box::pin(async move {
            let router = router.upgrade()?;
            let (reply, rx) = oneshot::channel();
            router
                .send(Command::ExportSession { client_id, reply })
                .await
                .ok()?;
            let image = rx.await.ok()??;
            match culex_store::encode_session_image(
                &image.client_id,
                &image.record,
                &image.messages,
                &Clocks::now(),
            ) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    // Not sendable: keep it here rather than lose it.
                    warn!(error = %e, "a session could not be encoded for another node; it stays here");
                    let _ = router.try_send(Command::AdoptSession {
                        session: Box::new(image),
                    });
                    None
                }
            }
        })
    });
    let restore_router = router.clone();
    let restore: culex_cluster::sessions::RestoreFn = Arc::new(move |bytes| {
        adopt(&restore_router, &bytes);
    });
    let discard_router = router.clone();
    let discard: culex_cluster::sessions::DiscardFn = Arc::new(move |client_id| {
        if let Some(router) = discard_router.upgrade() {
            let _ = router.try_send(Command::DiscardIfOffline { client_id });
        }
    });
    let tail_router = router.clone();
    let written_router = router.clone();
    let report: culex_cluster::sessions::ReportFn = Arc::new(move || {
        let router = router.clone();
        Box::pin(async move {
            let router = router.upgrade()?;
            let (reply, rx) = oneshot::channel();
            router.send(Command::ClusterReport { reply }).await.ok()?;
            Some(sessions_report(rx.await.ok()?))
        })
    });
    let tail: culex_cluster::sessions::TailFn =
        Arc::new(move |client_id, envelope, publication| {
            let router = tail_router.clone();
            Box::pin(
                async move { queue_late_copy(router, client_id, &envelope, publication).await },
            )
        });
    let (directory, directory_task) = culex_cluster::sessions::spawn(
        settings.clone(),
        culex_cluster::sessions::Hooks {
            export,
            restore,
            report,
            placement: Arc::clone(&placement),
            discard,
            tail,
            departures: Arc::clone(&departures),
        },
        Arc::clone(&stats),
        shutdown_rx,
    );
    let written: culex_cluster::records::WrittenFn = Arc::new(move |token| {
        let router = written_router.clone();
        Box::pin(async move {
            if let Some(router) = router.upgrade() {
                let _ = router.send(Command::RecordWritten { token }).await;
            }
        })
    });
    records.attach(directory.clone(), written);
    let (claims_tx, claims_rx) = mpsc::channel(CLAIM_QUEUE);
    Some((
        ClusterConns {
            claims: claims_tx,
            sessions: directory,
            stats: Arc::clone(&stats),
            interest: Arc::clone(&interest),
        },
        Prepared {
            settings,
            stats,
            claims: claims_rx,
            shutdown,
            directory: directory_task,
            placement,
            interest,
            departures,
        },
    ))
}

/// Queues a late copy that another node passed on for the session of `client_id`, which has
/// just moved here (see `culex_cluster::departures`); whether the session took it.
async fn queue_late_copy(
    router: mpsc::WeakSender<Command>,
    client_id: String,
    envelope: &[u8],
    publication: Option<u64>,
) -> bool {
    let Some(router) = router.upgrade() else {
        return false;
    };
    let Some(message) = culex_cluster::envelope::decode_publish(envelope)
        .ok()
        .and_then(|p| message_of(p, 0))
    else {
        return false;
    };
    let mut messages = vec![culex_broker::Message {
        publication,
        ..message
    }];
    // A full queue of a connected client makes room as the client reads: the copy waits
    // (within the sender's time for an answer), as a publisher's messages would.
    let deadline = tokio::time::Instant::now() + LATE_COPY_WAIT;
    loop {
        let (reply, rx) = oneshot::channel();
        let command = Command::Replay {
            client_id: client_id.clone(),
            messages,
            reply,
        };
        if router.send(command).await.is_err() {
            return false;
        }
        match rx.await {
            Ok(Ok(rest)) if rest.is_empty() => return true,
            Ok(Ok(rest)) if tokio::time::Instant::now() < deadline => {
                messages = rest;
                tokio::time::sleep(REPLAY_PACE).await;
            }
            _ => return false,
        }
    }
}

/// The placement of shared groups for this node, if it is part of a cluster: the router
/// asks it (see [`culex_broker::SharedPlacement`]), the session directory updates it.
pub(crate) fn placement(config: &Config) -> Option<Arc<Placement>> {
    let settings = Settings::from_config(&config.cluster)?;
    Some(Arc::new(Placement::new(&settings.node)))
}

/// The session records written at once for the SUBACKs that wait for them, if this node is
/// part of a cluster (see [`culex_cluster::records`]).
pub(crate) fn records(config: &Config) -> Option<Arc<Records>> {
    Settings::from_config(&config.cluster)?;
    Some(Arc::new(Records::default()))
}

/// The sessions moving away from this node, if it is part of a cluster: the router tells
/// when it hands one over (see [`culex_broker::InterestSink::session_exported`]), the link
/// passes late copies on to them.
pub(crate) fn departures(config: &Config) -> Option<Arc<Departures>> {
    Settings::from_config(&config.cluster)?;
    Some(Arc::new(Departures::default()))
}

/// This node's subscription filters for the cluster, if it is part of one: the router tells
/// them (see [`culex_broker::InterestSink`]), the link writes them for the other nodes.
pub(crate) fn local_interest(config: &Config) -> Option<Arc<LocalInterest>> {
    Settings::from_config(&config.cluster)?;
    Some(Arc::new(LocalInterest::default()))
}

/// The client identifier of this node's cluster link in its own broker.
pub(crate) fn link_client_id(config: &Config) -> Option<String> {
    Some(Settings::from_config(&config.cluster)?.local_client_id())
}

/// The router's view of a [`LocalInterest`] (and of the [`Placement`] of shared groups,
/// which learns at once that a group has members here, or no longer).
#[derive(Debug)]
pub(crate) struct InterestGlue(
    pub(crate) Arc<LocalInterest>,
    pub(crate) Arc<Placement>,
    pub(crate) Arc<Departures>,
    pub(crate) Arc<Records>,
);

impl culex_broker::InterestSink for InterestGlue {
    fn changed(&self, filter: &str, present: bool) {
        if matches!(culex_proto::topic::parse_shared(filter), Ok(Some(_))) {
            self.1.set_local(filter, present);
        }
        self.0.changed(filter, present);
    }

    fn sync(&self, token: u64) {
        self.0.sync(token);
    }

    fn persistent_changed(&self, filter: &str, present: bool) {
        self.0.persistent_changed(filter, present);
    }

    fn session_exported(&self, client_id: &str, filters: &[&str]) {
        self.2.exported(client_id, filters);
    }

    fn record(
        &self,
        token: u64,
        client_id: &str,
        record: culex_broker::persist::SessionRecord,
    ) -> bool {
        match culex_store::encode_session_image(client_id, &record, &[], &Clocks::now()) {
            Ok(image) => self.3.write(token, client_id, image),
            Err(_) => false,
        }
    }
}

/// The router's view of a [`Placement`].
#[derive(Debug)]
pub(crate) struct SharedGroups(pub(crate) Arc<Placement>);

impl culex_broker::SharedPlacement for SharedGroups {
    fn takes(&self, group: &str, hash: u64) -> bool {
        self.0.takes(group, hash)
    }
}

/// Gives a session image back to this node's router (a transfer another node did not
/// confirm).
fn adopt(router: &mpsc::WeakSender<Command>, bytes: &[u8]) {
    match culex_store::decode_session_image(bytes, &Clocks::now()) {
        Ok(session) => {
            if let Some(router) = router.upgrade() {
                let _ = router.try_send(Command::AdoptSession {
                    session: Box::new(session),
                });
            }
        }
        Err(e) => warn!(error = %e, "a session image could not be read back"),
    }
}

/// The router's report as the cluster records it: session records as images without
/// messages.
fn sessions_report(report: ClusterReport) -> culex_cluster::sessions::Report {
    let clocks = Clocks::now();
    let changed = report
        .changed
        .into_iter()
        .map(|(client_id, record)| {
            let image = record.and_then(|r| {
                culex_store::encode_session_image(&client_id, &r, &[], &clocks)
                    .map_err(|e| warn!(client_id = %Clipped(&client_id), error = %e, "session record not encodable"))
                    .ok()
            });
            (client_id.to_string(), image)
        })
        .collect();
    culex_cluster::sessions::Report {
        oldest_pending: report.oldest_pending,
        changed,
    }
}

/// The session of `client_id` if another node holds it, moved into this node's router (its
/// CONNECT follows); or, when that node is gone, rebuilt from the cluster's record with the
/// stream's messages since that node's floor. `Err` when it exists elsewhere but could not be
/// moved: the client must be refused (it retries) rather than given an empty session.
pub(crate) async fn resume_from_cluster(
    conns: &ClusterConns,
    router: &mpsc::Sender<Command>,
    client_id: &str,
) -> Result<Resumed, FetchError> {
    let unknown = |e: String| {
        // Whether another node holds a session is unknown; this node's own (if any) is
        // used, as a single broker would.
        warn!(client_id = %Clipped(client_id), error = %e, "cluster session directory unavailable; resuming from this node only");
        Ok(Resumed::default())
    };
    let held = match conns.sessions.holder(client_id).await {
        Ok(Some(held)) => held,
        Ok(None) => return Ok(Resumed::default()),
        Err(FetchError::Unavailable(e)) => return unknown(e),
        Err(e) => return Err(e),
    };
    // Dropped (the move did not happen, or the client went away meanwhile): the prepared
    // session ends.
    // What this node had read of the stream before the session was prepared here: copies
    // read later reach the prepared session; the holder passes the others on.
    let cutoffs = conns.sessions.cutoffs();
    let prepared = prepare_move(conns, router, client_id, &held.record).await?;
    let (bytes, orphaned) = match conns.sessions.fetch_from(client_id, held, &cutoffs).await {
        Ok(Fetched::Nothing) => return Ok(Resumed::default()),
        Ok(Fetched::Moved(bytes)) => (bytes, None),
        Ok(Fetched::Orphaned {
            holder,
            image,
            since_ms,
        }) => (image, Some((holder, since_ms))),
        Err(FetchError::Unavailable(e)) => return unknown(e),
        Err(e) => return Err(e),
    };
    let session = match culex_store::decode_session_image(&bytes, &Clocks::now()) {
        Ok(s) => s,
        Err(e) => {
            // The other node has let it go: the client starts a new session.
            warn!(client_id = %Clipped(client_id), error = %e, "a session moved from another node could not be read");
            return Ok(Resumed::default());
        }
    };
    let record =
        culex_store::encode_session_image(&session.client_id, &session.record, &[], &Clocks::now())
            .ok();
    let filters: Vec<String> = session
        .record
        .subscriptions
        .iter()
        .map(|s| s.filter.clone())
        .collect();
    router
        .send(Command::AdoptSession {
            session: Box::new(session),
        })
        .await
        .map_err(router_stopped)?;
    if let Some(mut prepared) = prepared {
        prepared.adopted = true;
    }
    // The session's subscriptions are in force here, and the other nodes know it, before
    // its client is answered (what they publish after the CONNACK comes here) and before
    // the stream's end is read (what is stored after it arrives the ordinary way).
    settle(conns, router).await?;
    let Some((holder, since_ms)) = orphaned else {
        return Ok(Resumed {
            replay: None,
            record,
        });
    };
    // What local clients published before then is in the stream once the link's backlog is.
    let deadline = tokio::time::Instant::now() + BACKLOG_WAIT;
    while conns.stats.queued.load(Ordering::Relaxed)
        + conns.stats.pending_out.load(Ordering::Relaxed)
        > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match conns
        .sessions
        .read_back(&holder, &filters, since_ms, REPLAY_LIMIT)
        .await
    {
        Ok(back) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let count = back.messages.len();
            let messages: Vec<culex_broker::Message> = back
                .messages
                .into_iter()
                .filter_map(|(p, stored_ms)| message_of(p, now.saturating_sub(stored_ms)))
                .collect();
            conns
                .stats
                .sessions_recovered
                .fetch_add(1, Ordering::Relaxed);
            if back.left_out > 0 {
                conns
                    .stats
                    .dropped_replay
                    .fetch_add(back.left_out, Ordering::Relaxed);
            }
            tracing::info!(client_id = %Clipped(client_id), holder = %holder, read_back = count, left_out = back.left_out,
                "session rebuilt after its node was lost");
            Ok(Resumed {
                replay: Some(Replay {
                    client_id: client_id.to_owned(),
                    messages,
                    stats: Arc::clone(&conns.stats),
                }),
                record,
            })
        }
        Err(e) => {
            conns.stats.sessions_lost.fetch_add(1, Ordering::Relaxed);
            warn!(client_id = %Clipped(client_id), holder = %holder, error = %e,
                "session rebuilt without its messages: reading the cluster stream failed");
            Ok(Resumed {
                replay: None,
                record,
            })
        }
    }
}

fn router_stopped<T>(_: T) -> FetchError {
    FetchError::Unavailable("the router stopped".to_owned())
}

/// Waits until the router has applied what it was sent and the other nodes know of the
/// filters that changed (at most the sync limits).
async fn settle(conns: &ClusterConns, router: &mpsc::Sender<Command>) -> Result<(), FetchError> {
    let (reply, rx) = oneshot::channel();
    router
        .send(Command::Ping { reply })
        .await
        .map_err(router_stopped)?;
    let _ = rx.await;
    let _ = tokio::time::timeout(
        culex_cluster::interest_sync::SYNC_TIMEOUT + Duration::from_secs(1),
        conns.interest.barrier(),
    )
    .await;
    Ok(())
}

/// A session prepared here for a move under way (see `Command::PrepareSession`): abandoned
/// when dropped before the image was adopted.
struct PreparedMove {
    router: mpsc::Sender<Command>,
    client_id: String,
    adopted: bool,
}

impl Drop for PreparedMove {
    fn drop(&mut self) {
        if self.adopted {
            return;
        }
        let command = Command::AbandonPrepared {
            client_id: std::mem::take(&mut self.client_id),
        };
        // Awaited (a full command queue must not leave the prepared session behind), where a
        // runtime is there to await it.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let router = self.router.clone();
                runtime.spawn(async move {
                    let _ = router.send(command).await;
                });
            }
            Err(_) => {
                let _ = self.router.try_send(command);
            }
        }
    }
}

/// Before the holder is asked to give the session up: the session rebuilt here from its
/// `record` (its subscriptions), and the other nodes told that this node wants its topics,
/// so that what is published during the move is queued here if the holder no longer gets it.
/// `None` when there is no record yet (the holder has not reported the session).
async fn prepare_move(
    conns: &ClusterConns,
    router: &mpsc::Sender<Command>,
    client_id: &str,
    record: &[u8],
) -> Result<Option<PreparedMove>, FetchError> {
    if record.is_empty() {
        return Ok(None);
    }
    let record = match culex_store::decode_session_image(record, &Clocks::now()) {
        Ok(r) if r.messages.is_empty() => r,
        Ok(_) => return Ok(None),
        Err(e) => {
            warn!(client_id = %Clipped(client_id), error = %e, "a session record of the cluster could not be read");
            return Ok(None);
        }
    };
    router
        .send(Command::PrepareSession {
            record: Box::new(record),
        })
        .await
        .map_err(router_stopped)?;
    let prepared = PreparedMove {
        router: router.clone(),
        client_id: client_id.to_owned(),
        adopted: false,
    };
    settle(conns, router).await?;
    Ok(Some(prepared))
}

/// A session [`resume_from_cluster`] brought here from another node (nothing when none did).
#[derive(Debug, Default)]
pub(crate) struct Resumed {
    /// Messages read back for it from the cluster's streams (its node was gone).
    pub(crate) replay: Option<Replay>,
    /// Its record (the session's image without messages), for the cluster's session
    /// directory.
    pub(crate) record: Option<Vec<u8>>,
}

/// Messages read back from the stream for a rebuilt session, handed to the router after its
/// client's CONNECT as fast as the client takes them.
#[derive(Debug)]
pub(crate) struct Replay {
    client_id: String,
    messages: Vec<culex_broker::Message>,
    stats: Arc<ClusterStats>,
}

impl Replay {
    /// Feeds the messages to the router in the background: as many as the session's queue
    /// has room for, then the rest as it drains; what is left when the client goes away is
    /// counted as dropped.
    pub(crate) fn feed(self, router: mpsc::Sender<Command>) {
        tokio::spawn(async move {
            let Replay {
                client_id,
                mut messages,
                stats,
            } = self;
            while !messages.is_empty() {
                let (reply, rx) = oneshot::channel();
                let offered = messages.len();
                let sent = router
                    .send(Command::Replay {
                        client_id: client_id.clone(),
                        messages: std::mem::take(&mut messages),
                        reply,
                    })
                    .await;
                let dropped = match (sent, rx.await) {
                    (Ok(()), Ok(Ok(rest))) => {
                        messages = rest;
                        0
                    }
                    (Ok(()), Ok(Err(n))) => n,
                    _ => offered,
                };
                if dropped > 0 {
                    warn!(client_id = %Clipped(&client_id), dropped, "the client left before every message read back for it was queued");
                    stats
                        .dropped_replay
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    return;
                }
                if !messages.is_empty() {
                    tokio::time::sleep(REPLAY_PACE).await;
                }
            }
        });
    }
}

/// A message read back from the stream, as the router routes it: its Message Expiry Interval
/// less the time it has been stored (`None` once expired).
fn message_of(p: culex_proto::Publish, age_ms: u64) -> Option<culex_broker::Message> {
    let now = std::time::Instant::now();
    let mut properties = p.properties;
    let expires_at = match properties.message_expiry_interval {
        Some(secs) => {
            let left = u64::from(secs)
                .checked_sub(age_ms / 1000)
                .filter(|l| *l > 0)?;
            properties.message_expiry_interval = u32::try_from(left).ok();
            now.checked_add(Duration::from_secs(left))
        }
        None => None,
    };
    Some(culex_broker::Message {
        topic: Arc::from(p.topic),
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties,
        expires_at,
        origin: None,
        publication: None,
    })
}

/// Starts the link of a prepared cluster.
pub(crate) fn spawn(
    prepared: Prepared,
    shared: &Arc<Shared>,
    server_shutdown: &watch::Receiver<bool>,
    next_conn: &Arc<AtomicU64>,
) -> Cluster {
    let Prepared {
        settings,
        stats,
        claims,
        shutdown,
        directory,
        placement,
        interest,
        departures,
    } = prepared;
    let ctx = Arc::new(ListenerCtx {
        local: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        protocol: ListenerProtocol::Mqtt,
        tls: None,
        security: Arc::new(SecurityHandle::internal()),
        queue: Some(QueuePolicy {
            max_messages: QUEUE_LIMIT,
            max_bytes: QUEUE_BYTES,
            drop_oldest: true,
            max_inflight: Some(culex_cluster::link::WINDOW),
            observer: Some(Arc::new(StatsObserver(Arc::clone(&stats)))),
            // A publisher's PUBACK / PUBREC waits until the backplane has its message.
            confirms_publishers: true,
        }),
        mount_point: None,
    });
    let local_conns = TaskTracker::new();
    let connector = crate::local_link::local_connector(
        Arc::downgrade(shared),
        ctx,
        server_shutdown.clone(),
        Arc::clone(next_conn),
        local_conns.clone(),
    );
    let shutdown_rx = shutdown.subscribe();
    tracing::info!(node = %settings.node, backplane = %settings.servers.join(","), "cluster link starting");
    // A client of this id connected on another node: the router ends ours. Weak, so that the
    // link never keeps the router alive at shutdown.
    let router = shared.router.downgrade();
    let take_over: culex_cluster::link::TakeOver = Box::new(move |client_id| {
        if let Some(router) = router.upgrade() {
            let _ = router.try_send(Command::TakenOverElsewhere { client_id });
        }
    });
    let router = shared.router.downgrade();
    let synced: culex_cluster::interest_sync::SyncedFn = Arc::new(move |tokens| {
        if let Some(router) = router.upgrade() {
            // Awaited: a SUBACK must not be lost to a full command queue.
            tokio::spawn(async move {
                let _ = router.send(Command::InterestSynced { tokens }).await;
            });
        }
    });
    let task = culex_cluster::spawn(
        settings,
        culex_cluster::link::Hooks {
            connector,
            take_over,
            claims,
            interest,
            placement,
            synced,
            departures,
        },
        Arc::clone(&stats),
        shutdown_rx,
    );
    Cluster {
        stats,
        task,
        directory,
        shutdown,
        local_conns,
    }
}

/// Counts what the link's local session drops.
#[derive(Debug)]
struct StatsObserver(Arc<ClusterStats>);

impl QueueObserver for StatsObserver {
    fn queue_changed(&self, queued: usize) {
        self.0.queued.store(queued as u64, Ordering::Relaxed);
    }

    fn dropped(&self, n: u64) {
        self.0.dropped_queue_full.fetch_add(n, Ordering::Relaxed);
    }
}
