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
use std::sync::{Arc, Weak};
use std::time::Duration;

use culex_bridge::{Bridge, BridgeConfig, BridgeHandle, BridgeStats};
use culex_broker::{Command, QueueObserver, QueuePolicy};
use culex_config::ListenerProtocol;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::context::{ListenerCtx, Shared};
use crate::counters::BridgeRegistry;
use crate::security::SecurityHandle;

/// In-flight window of a bridge's local session (the bridge announces the same Receive
/// Maximum): messages it may hold while they wait for the remote's acknowledgement.
const BRIDGE_WINDOW: u16 = 64;
/// How long shutdown waits for the bridges to say goodbye (notification `0`, DISCONNECT).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One running bridge and its own stop switch.
#[derive(Debug)]
struct Running {
    handle: BridgeHandle,
    shutdown: watch::Sender<bool>,
}

impl Running {
    /// Stops the bridge (notification `0`, DISCONNECT on both sides) and waits, bounded.
    async fn stop(self) {
        let _ = self.shutdown.send(true);
        let name = self.handle.name().to_string();
        if tokio::time::timeout(STOP_TIMEOUT, self.handle.join())
            .await
            .is_err()
        {
            warn!(bridge = %name, "bridge did not stop in time");
        }
    }
}

/// What starting a bridge needs from the server.
#[derive(Debug)]
struct SpawnCtx {
    shared: Weak<Shared>,
    server_shutdown: watch::Receiver<bool>,
    next_conn: Arc<AtomicU64>,
    security: Arc<SecurityHandle>,
    /// The broker-side tasks of the bridges' in-process connections.
    local_conns: TaskTracker,
}

/// The running bridges (stopped before the server, so they can still publish their `0`
/// notification and disconnect cleanly), and what it takes to start more on a reload.
#[derive(Debug)]
pub(crate) struct Bridges {
    running: Vec<Running>,
    ctx: SpawnCtx,
}

impl Bridges {
    /// Stops every bridge and waits (bounded) for them to finish.
    pub(crate) async fn stop(self) {
        let any = !self.running.is_empty();
        for r in self.running {
            r.stop().await;
        }
        let local_conns = self.ctx.local_conns;
        // Let the broker side read what the bridges sent last (the `0` notification, then
        // DISCONNECT) before the server's own shutdown closes every connection.
        local_conns.close();
        if tokio::time::timeout(STOP_TIMEOUT, local_conns.wait())
            .await
            .is_err()
        {
            warn!("bridge connections did not close in time");
        }
        if any {
            // Barrier: once the router answers, it has routed the bridges' last messages (the
            // `0` notifications) into the subscribers' outboxes; give the connection tasks a
            // moment to write them before the server's shutdown closes every connection.
            if let Some(shared) = self.ctx.shared.upgrade() {
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

    /// Applies the bridges of a reloaded configuration (SIGHUP): new ones start, removed ones
    /// stop, changed ones take the change in place when they can (topics, backoff,
    /// notifications) and are restarted when their connection settings changed. What waits
    /// for a bridge stays queued in its local session across the restart. Returns one line per
    /// change, for the log; a bridge that cannot start keeps the old one running.
    pub(crate) async fn reload(
        &mut self,
        configs: &[BridgeConfig],
        registry: &BridgeRegistry,
    ) -> Vec<String> {
        let mut changes = Vec::new();
        let mut old = std::mem::take(&mut self.running);
        for config in configs {
            let existing = old
                .iter()
                .position(|r| r.handle.name() == config.name)
                .map(|i| old.remove(i));
            let Some(running) = existing else {
                match self.spawn_one(config) {
                    Ok(r) => {
                        changes.push(format!("bridge {} added", config.name));
                        self.running.push(r);
                    }
                    Err(e) => changes.push(format!("bridge {} not started: {e}", config.name)),
                }
                continue;
            };
            if *running.handle.config() == *config {
                self.running.push(running);
                continue;
            }
            match running.handle.reconfigure(config.clone()) {
                Ok(true) => {
                    changes.push(format!("bridge {} updated in place", config.name));
                    self.running.push(running);
                }
                Ok(false) => {
                    running.stop().await;
                    match self.spawn_one(config) {
                        Ok(r) => {
                            changes.push(format!(
                                "bridge {} restarted: its connection settings changed",
                                config.name
                            ));
                            self.running.push(r);
                        }
                        Err(e) => {
                            changes.push(format!("bridge {} not restarted: {e}", config.name))
                        }
                    }
                }
                Err(e) => {
                    changes.push(format!(
                        "bridge {} keeps its old configuration: {e}",
                        config.name
                    ));
                    self.running.push(running);
                }
            }
        }
        for gone in old {
            changes.push(format!("bridge {} removed", gone.handle.name()));
            gone.stop().await;
        }
        registry.set(self.stats());
        changes
    }

    fn stats(&self) -> Vec<(String, Arc<BridgeStats>)> {
        self.running
            .iter()
            .map(|r| (r.handle.name().to_string(), Arc::clone(r.handle.stats())))
            .collect()
    }

    /// Starts one bridge on its own in-process listener context (its queue limits) and stop
    /// switch.
    fn spawn_one(&self, config: &BridgeConfig) -> anyhow::Result<Running> {
        let stats = Arc::new(BridgeStats::default());
        let ctx = Arc::new(ListenerCtx {
            local: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            protocol: ListenerProtocol::Mqtt,
            tls: None,
            security: Arc::clone(&self.ctx.security),
            queue: Some(QueuePolicy {
                max_messages: config.queue_limit,
                max_bytes: config.queue_bytes,
                drop_oldest: true,
                max_inflight: Some(BRIDGE_WINDOW),
                observer: Some(Arc::new(StatsObserver(Arc::clone(&stats)))),
                confirms_publishers: false,
            }),
            mount_point: None,
        });
        let connector = crate::local_link::local_connector(
            self.ctx.shared.clone(),
            ctx,
            self.ctx.server_shutdown.clone(),
            Arc::clone(&self.ctx.next_conn),
            self.ctx.local_conns.clone(),
        );
        let (shutdown, shutdown_rx) = watch::channel(false);
        let remotes: Vec<String> = config
            .addresses
            .iter()
            .map(|(h, p)| format!("{h}:{p}"))
            .collect();
        let handle = Bridge::spawn_with_stats(config.clone(), connector, stats, shutdown_rx)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        info!(bridge = %config.name, remote = %remotes.join(","), "bridge started");
        Ok(Running { handle, shutdown })
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
    let mut bridges = Bridges {
        running: Vec::with_capacity(configs.len()),
        ctx: SpawnCtx {
            shared: Arc::downgrade(shared),
            server_shutdown: server_shutdown.clone(),
            next_conn: Arc::clone(next_conn),
            security: Arc::new(SecurityHandle::internal()),
            local_conns: TaskTracker::new(),
        },
    };
    for config in configs {
        let running = bridges.spawn_one(config)?;
        bridges.running.push(running);
    }
    registry.set(bridges.stats());
    Ok(bridges)
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
