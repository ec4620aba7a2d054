//! Starts the configured bridges (`culex-bridge`) and connects each to this broker through an
//! in-process stream: a `tokio::io::duplex` pair whose server end is served by the ordinary
//! connection task, on an internal listener context whose security allows everything, `$SYS`
//! writes included (bridge notifications). Ordinary clients never get that context.
//!
//! Each bridge's context also carries its store-and-forward limits: the bridge acknowledges a
//! local message only once the remote has it, so what waits for the remote waits in the
//! bridge's session here, persisted like any session, bounded by `queue_limit` /
//! `queue_bytes` with the oldest dropped, and reported into the bridge's statistics.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use culex_bridge::{Bridge, BridgeConfig, BridgeHandle, BridgeStats, LocalConnector};
use culex_broker::{Command, QueueObserver, QueuePolicy};
use culex_client::transport::BoxStream;
use culex_config::ListenerProtocol;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::connection::{self, Peer};
use crate::security::SecurityHandle;
use crate::server::{ListenerCtx, Shared};

/// In-flight window of a bridge's local session (the bridge announces the same Receive
/// Maximum): messages it may hold while they wait for the remote's acknowledgement.
const BRIDGE_WINDOW: u16 = 64;
/// Buffer of each direction of the in-process stream.
const DUPLEX_BUFFER: usize = 256 * 1024;
/// How long shutdown waits for the bridges to say goodbye (notification `0`, DISCONNECT).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The statistics of the running bridges, by name, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct BridgeRegistry {
    stats: Mutex<Vec<(String, Arc<BridgeStats>)>>,
}

impl BridgeRegistry {
    /// The bridges' names and statistics, in configuration order.
    pub fn snapshot(&self) -> Vec<(String, Arc<BridgeStats>)> {
        self.stats.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn set(&self, stats: Vec<(String, Arc<BridgeStats>)>) {
        if let Ok(mut g) = self.stats.lock() {
            *g = stats;
        }
    }
}

/// The running bridges and their own shutdown switch (flipped before the server's, so the
/// bridges can still publish their `0` notification and disconnect cleanly).
#[derive(Debug)]
pub(crate) struct Bridges {
    handles: Vec<BridgeHandle>,
    shutdown: watch::Sender<bool>,
    /// The broker-side tasks of the bridges' in-process connections.
    local_conns: TaskTracker,
    /// For the shutdown barrier.
    router: Weak<Shared>,
}

impl Bridges {
    /// Stops every bridge and waits (bounded) for them to finish.
    pub(crate) async fn stop(self) {
        let any = !self.handles.is_empty();
        let _ = self.shutdown.send(true);
        for h in self.handles {
            let name = h.name().to_string();
            if tokio::time::timeout(STOP_TIMEOUT, h.join()).await.is_err() {
                warn!(bridge = %name, "bridge did not stop in time");
            }
        }
        // Let the broker side read what the bridges sent last (the `0` notification, then
        // DISCONNECT) before the server's own shutdown closes every connection.
        self.local_conns.close();
        if tokio::time::timeout(STOP_TIMEOUT, self.local_conns.wait())
            .await
            .is_err()
        {
            warn!("bridge connections did not close in time");
        }
        if any {
            // Barrier: once the router answers, it has routed the bridges' last messages (the
            // `0` notifications) into the subscribers' outboxes; give the connection tasks a
            // moment to write them before the server's shutdown closes every connection.
            if let Some(shared) = self.router.upgrade() {
                let (reply, rx) = tokio::sync::oneshot::channel();
                let router = shared.router.clone();
                drop(shared);
                if router.send(Command::Stats { reply }).await.is_ok() {
                    drop(router);
                    let _ = tokio::time::timeout(STOP_TIMEOUT, rx).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Spawns one bridge per configuration. Local connections are served with the server's
/// `server_shutdown`; their ids come from `next_conn`.
pub(crate) fn spawn(
    configs: &[BridgeConfig],
    shared: &Arc<Shared>,
    server_shutdown: &watch::Receiver<bool>,
    next_conn: &Arc<AtomicU64>,
    registry: &BridgeRegistry,
) -> anyhow::Result<Bridges> {
    let local_conns = TaskTracker::new();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let security = Arc::new(SecurityHandle::internal());
    let mut handles = Vec::with_capacity(configs.len());
    for config in configs {
        let stats = Arc::new(BridgeStats::default());
        let ctx = Arc::new(ListenerCtx {
            local: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            protocol: ListenerProtocol::Mqtt,
            tls: None,
            security: Arc::clone(&security),
            queue: Some(QueuePolicy {
                max_messages: config.queue_limit,
                max_bytes: config.queue_bytes,
                drop_oldest: true,
                max_inflight: Some(BRIDGE_WINDOW),
                observer: Some(Arc::new(StatsObserver(Arc::clone(&stats)))),
            }),
        });
        let connector = local_connector(
            Arc::downgrade(shared),
            ctx,
            server_shutdown.clone(),
            Arc::clone(next_conn),
            local_conns.clone(),
        );
        let name = config.name.clone();
        let remotes: Vec<String> = config
            .addresses
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        let handle =
            Bridge::spawn_with_stats(config.clone(), connector, stats, shutdown_rx.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        info!(bridge = %name, remote = %remotes.join(","), "bridge started");
        handles.push(handle);
    }
    registry.set(
        handles
            .iter()
            .map(|h| (h.name().to_string(), Arc::clone(h.stats())))
            .collect(),
    );
    Ok(Bridges {
        handles,
        shutdown,
        local_conns,
        router: Arc::downgrade(shared),
    })
}

/// Feeds a bridge's statistics from its local session's queue.
#[derive(Debug)]
struct StatsObserver(Arc<BridgeStats>);

impl QueueObserver for StatsObserver {
    fn queue_changed(&self, queued: usize) {
        self.0.local_queued.store(queued as u64, Ordering::Relaxed);
    }

    fn dropped(&self, n: u64) {
        self.0.dropped_queue_full.fetch_add(n, Ordering::Relaxed);
    }
}

/// A connector that opens an in-process stream to this broker. Holds the server state weakly:
/// once the server is gone, connecting fails instead of keeping the router alive.
fn local_connector(
    shared: Weak<Shared>,
    ctx: Arc<ListenerCtx>,
    server_shutdown: watch::Receiver<bool>,
    next_conn: Arc<AtomicU64>,
    connections: TaskTracker,
) -> LocalConnector {
    Box::new(move || {
        let shared = shared.upgrade();
        let ctx = Arc::clone(&ctx);
        let shutdown = server_shutdown.clone();
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let connections = connections.clone();
        Box::pin(async move {
            let Some(shared) = shared else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the broker is shutting down",
                ));
            };
            if *shutdown.borrow() || connections.is_closed() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the broker is shutting down",
                ));
            }
            let (client, server) = tokio::io::duplex(DUPLEX_BUFFER);
            let peer = Peer {
                addr: ctx.local,
                listener: ctx,
                identity: None,
            };
            connections.spawn(connection::serve(server, peer, conn, shared, shutdown));
            Ok(Box::new(client) as BoxStream)
        })
    })
}
