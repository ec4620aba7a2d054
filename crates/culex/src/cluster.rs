//! Starts this node's cluster link (`culex-cluster`) when the configuration names a
//! backplane, connected to this broker through an in-process stream like a bridge: its
//! session here holds what waits for the backplane, bounded, persisted like any session.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use culex_broker::{QueueObserver, QueuePolicy};
use culex_cluster::{ClusterStats, Settings};
use culex_config::{Config, ListenerProtocol};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::context::{ListenerCtx, Shared};
use crate::security::SecurityHandle;

/// Messages (and bytes) that may wait in the link's session for the backplane; beyond them the
/// oldest are dropped and counted (`culex_cluster_dropped_total{reason="queue_full"}`).
const QUEUE_LIMIT: usize = 100_000;
const QUEUE_BYTES: u64 = 256 * 1024 * 1024;
/// Client connections waiting to be claimed on the other nodes (beyond: not claimed, logged).
pub(crate) const CLAIM_QUEUE: usize = 4096;
/// How long shutdown waits for the link to close its local session.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The running link.
#[derive(Debug)]
pub(crate) struct Cluster {
    stats: Arc<ClusterStats>,
    task: tokio::task::JoinHandle<()>,
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
        self.local_conns.close();
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.local_conns.wait()).await;
    }
}

/// Starts the link if `config` asks for a cluster.
pub(crate) fn spawn(
    config: &Config,
    shared: &Arc<Shared>,
    server_shutdown: &watch::Receiver<bool>,
    next_conn: &Arc<AtomicU64>,
    claims: tokio::sync::mpsc::Receiver<String>,
) -> Option<Cluster> {
    let settings = Settings::from_config(&config.cluster)?;
    let stats = Arc::new(ClusterStats::default());
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
    let (shutdown, shutdown_rx) = watch::channel(false);
    tracing::info!(node = %settings.node, backplane = %settings.servers.join(","), "cluster link starting");
    // A client of this id connected on another node: the router takes ours over. Weak, so
    // that the link never keeps the router alive at shutdown.
    let router = shared.router.downgrade();
    let take_over: culex_cluster::link::TakeOver = Box::new(move |client_id| {
        if let Some(router) = router.upgrade() {
            let _ = router.try_send(culex_broker::Command::TakenOverElsewhere { client_id });
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
    Some(Cluster {
        stats,
        task,
        shutdown,
        local_conns,
    })
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
