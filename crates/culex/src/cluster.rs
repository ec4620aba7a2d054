//! Starts this node's cluster link (`culex-cluster`) when the configuration names a
//! backplane, connected to this broker through an in-process stream like a bridge: its
//! session here holds what waits for the backplane, bounded, persisted like any session.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use culex_broker::log_clip::Clipped;
use culex_broker::{Command, QueueObserver, QueuePolicy};
use culex_cluster::sessions::{Directory, FetchError};
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
}

/// The cluster's parts started before the connection tasks' shared state exists (the session
/// directory), and what the link needs when it starts.
pub(crate) struct Prepared {
    settings: Settings,
    stats: Arc<ClusterStats>,
    claims: mpsc::Receiver<String>,
    shutdown: watch::Sender<bool>,
    directory: tokio::task::JoinHandle<()>,
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
) -> Option<(ClusterConns, Prepared)> {
    let settings = Settings::from_config(&config.cluster)?;
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
    let restore: culex_cluster::sessions::RestoreFn = Arc::new(move |bytes| {
        adopt(&router, &bytes);
    });
    let (directory, directory_task) = culex_cluster::sessions::spawn(
        settings.clone(),
        export,
        restore,
        Arc::clone(&stats),
        shutdown_rx,
    );
    let (claims_tx, claims_rx) = mpsc::channel(CLAIM_QUEUE);
    Some((
        ClusterConns {
            claims: claims_tx,
            sessions: directory,
        },
        Prepared {
            settings,
            stats,
            claims: claims_rx,
            shutdown,
            directory: directory_task,
        },
    ))
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

/// The session of `client_id` if another node holds it: moved into this node's router (its
/// CONNECT follows). `Err` when it exists elsewhere but could not be moved: the client must
/// be refused (it retries) rather than given an empty session.
pub(crate) async fn resume_from_cluster(
    conns: &ClusterConns,
    router: &mpsc::Sender<Command>,
    client_id: &str,
) -> Result<(), FetchError> {
    let bytes = match conns.sessions.fetch(client_id).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(()),
        Err(FetchError::Unavailable(e)) => {
            // Whether another node holds a session is unknown; this node's own (if any) is
            // used, as a single broker would.
            warn!(client_id = %Clipped(client_id), error = %e, "cluster session directory unavailable; resuming from this node only");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let session = match culex_store::decode_session_image(&bytes, &Clocks::now()) {
        Ok(s) => s,
        Err(e) => {
            // The other node has let it go: the client starts a new session.
            warn!(client_id = %Clipped(client_id), error = %e, "a session moved from another node could not be read");
            return Ok(());
        }
    };
    router
        .send(Command::AdoptSession {
            session: Box::new(session),
        })
        .await
        .map_err(|_| FetchError::Unavailable("the router stopped".to_owned()))
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
    let task = culex_cluster::spawn(
        settings,
        culex_cluster::link::Hooks {
            connector,
            take_over,
            claims,
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
