//! The server: binds listeners, accepts connections, runs the router task, shuts down cleanly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::{Context, Result};
use culex_broker::{BrokerSettings, Command, Router};
use culex_config::{Config, ListenerProtocol};
use culex_proto::QoS;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::context::{conn_limits, ConnSlot, ListenerCtx, Shared};
use crate::http::{HttpState, Readiness};
use crate::metrics::Exporter;
use crate::security::SecurityHandle;
use crate::tls::{self, TlsListener};
use crate::transport;

/// Commands the router's channel holds before connections wait (backpressure).
const ROUTER_QUEUE: usize = 16 * 1024;
/// Commands the router handles per wake-up.
const ROUTER_BATCH: usize = 512;
/// How long shutdown waits for connections to close before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub use crate::counters::{Counter, Counters, Refusal};

/// Maps the configuration onto the router's settings.
pub fn broker_settings(config: &Config) -> BrokerSettings {
    BrokerSettings {
        max_inflight_messages: config.limits.max_inflight_messages.max(1),
        max_queued_messages: config.limits.max_queued_messages,
        max_queued_bytes: config.limits.max_queued_bytes,
        max_inflight_bytes: config.limits.max_inflight_bytes,
        queue_full_block: config.limits.queue_full_policy == culex_config::QueueFullPolicy::Block,
        slow_client_timeout: config.limits.slow_client_timeout,
        memory_limit: config.limits.memory_limit,
        retain_available: config.mqtt.retain_available,
        max_qos: qos_from(config.mqtt.max_qos),
        upgrade_outgoing_qos: config.mqtt.upgrade_outgoing_qos,
        persistent_client_expiration: config.sessions.persistent_client_expiration,
        auto_id_prefix: auto_id_prefix(config),
        max_outbox_qos0: config.limits.max_queued_messages,
        max_topic_levels: config.limits.max_topic_levels,
        max_topic_length: config.limits.max_topic_length,
        check_retain_source: config.mqtt.check_retain_source,
        cluster: config.cluster.enabled(),
    }
}

/// The prefix of assigned client identifiers: in a cluster it names the node too, so that
/// two nodes never assign the same identifier (each would take the other's client over).
fn auto_id_prefix(config: &Config) -> String {
    let prefix = &config.sessions.auto_id_prefix;
    match (&config.cluster.node_name, config.cluster.enabled()) {
        (Some(node), true) => format!("{prefix}{node}-"),
        _ => prefix.clone(),
    }
}

fn qos_from(v: u8) -> QoS {
    QoS::from_u8(v).unwrap_or(QoS::ExactlyOnce)
}

/// A running server: its bound addresses and the means to stop it.
#[derive(Debug)]
pub struct RunningServer {
    addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
    security: SecurityScopes,
    tls: Vec<Arc<TlsListener>>,
    metrics_addr: Option<SocketAddr>,
    ready: Arc<Readiness>,
    /// The metrics endpoint and the `$SYS` publisher.
    aux: Vec<tokio::task::JoinHandle<()>>,
    /// The configured bridges; stopped before everything else at shutdown.
    bridges: crate::bridges::Bridges,
    /// The cluster link, when configured; stopped with the bridges.
    cluster: Option<crate::cluster::Cluster>,
    /// The cluster settings the server started with (they apply at start only).
    cluster_config: culex_config::Cluster,
    /// The router, told when a reload changed who may read what (weak: the server's tasks
    /// own it; the router ends when they do).
    router: mpsc::WeakSender<Command>,
}

/// The security handles in force: one per listener (shared by all listeners unless
/// `per_listener_settings`), and each distinct handle once, for reload.
#[derive(Debug)]
struct SecurityScopes {
    by_listener: Vec<Arc<SecurityHandle>>,
    unique: Vec<Arc<SecurityHandle>>,
}

impl SecurityScopes {
    fn all(&self) -> impl Iterator<Item = &Arc<SecurityHandle>> {
        self.unique.iter()
    }
}

/// Loads the password and ACL files of every security scope; errors name the file and line.
fn load_security(config: &Config) -> Result<SecurityScopes> {
    let gate = Arc::new(crate::login_gate::LoginGate::new(
        config.limits.auth_failure_limit,
    ));
    if config.per_listener_settings {
        let mut by_listener = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let h = SecurityHandle::load(config.security_for(l), Arc::clone(&gate))
                .with_context(|| format!("listener {}", l.port))?;
            by_listener.push(Arc::new(h));
        }
        Ok(SecurityScopes {
            unique: by_listener.clone(),
            by_listener,
        })
    } else {
        let global = Arc::new(SecurityHandle::load(&config.security, gate)?);
        Ok(SecurityScopes {
            by_listener: vec![Arc::clone(&global); config.listeners.len()],
            unique: vec![global],
        })
    }
}

impl RunningServer {
    /// The addresses the listeners are bound to (ports resolved when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Server-wide counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere (port resolved when
    /// 0 was asked for).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Liveness, as `/healthz` and the systemd watchdog see it: the router answers a ping
    /// within `limit` and the store writer (with persistence) has not stopped.
    pub async fn alive(&self, limit: Duration) -> bool {
        let store_ok = self
            .counters
            .store
            .get()
            .map(|r| r.stats())
            .is_none_or(|s| !(s.exited || s.failed));
        store_ok && crate::sys::ping_router(&self.router, limit).await
    }

    /// Whether `/readyz` says ready.
    pub fn is_ready(&self) -> bool {
        self.ready.is_ready()
    }

    /// Re-reads password files, ACL files and TLS certificates (SIGHUP). Each file that fails
    /// to load keeps its previous rules in force; the errors are returned, one per file.
    pub async fn reload(&self) -> Result<(), Vec<String>> {
        let mut errors: Vec<String> = Vec::new();
        for h in self.security.all() {
            if let Err(e) = h.reload() {
                errors.push(e.to_string());
            }
        }
        if let Err(tls) = tls::reload_all(&self.tls) {
            errors.extend(tls.into_iter().map(|e| e.to_string()));
        }
        // Whatever is in force now (a file that failed keeps its previous rules): messages a
        // session may no longer read stop, and every connection checks that its client is
        // still let in (user, password entry, certificate).
        if let Some(router) = self.router.upgrade() {
            let _ = router.send(Command::AccessChanged).await;
        }
        if errors.is_empty() {
            self.counters.reloads_ok.inc();
            info!("reloaded password, ACL and certificate files");
            Ok(())
        } else {
            self.counters.reloads_failed.inc();
            for e in &errors {
                warn!("reload failed, previous rules stay in force: {e}");
            }
            Err(errors)
        }
    }

    /// Applies the bridges of a reloaded configuration (SIGHUP); returns one line per change.
    /// See [`crate::bridges`]: unchanged bridges keep running untouched, topic and backoff
    /// changes apply in place, changed connection settings restart the bridge.
    pub async fn reload_bridges(&mut self, configs: &[culex_bridge::BridgeConfig]) -> Vec<String> {
        self.bridges.reload(configs, &self.counters.bridges).await
    }

    /// The `[cluster]` settings the server started with: a reload does not change them.
    pub fn cluster_config(&self) -> &culex_config::Cluster {
        &self.cluster_config
    }

    /// Stops accepting, closes every connection (MQTT 5 clients get DISCONNECT 0x8B), waits
    /// for the connection tasks and the router to finish.
    pub async fn shutdown(self) {
        // Bridges first, while the router and their local connections still run: each
        // publishes its `0` notification and disconnects from both sides.
        self.bridges.stop().await;
        if let Some(cluster) = self.cluster {
            cluster.stop().await;
        }
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        for t in self.aux {
            let _ = t.await;
        }
    }
}

/// Binds every configured listener and starts serving. Returns once the listeners are bound.
/// TLS certificates and keys are loaded first: any problem is an error naming the listener,
/// the option and the file, and nothing is bound.
pub async fn start(config: &Config) -> Result<RunningServer> {
    let mut tls = Vec::new();
    let mut tls_errors = Vec::new();
    for l in &config.listeners {
        match l.tls.as_ref().map(|t| TlsListener::new(l, t)).transpose() {
            Ok(t) => tls.push(t.map(Arc::new)),
            Err(e) => tls_errors.push(e.to_string()),
        }
    }
    if !tls_errors.is_empty() {
        anyhow::bail!("{}", tls_errors.join("\n"));
    }
    let security = load_security(config)?;
    let tls_all: Vec<Arc<TlsListener>> = tls.iter().flatten().cloned().collect();
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let ready = Arc::new(Readiness::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The store is opened (and recovered) before anything listens: a locked or damaged store
    // stops the start with a clear error.
    let opened = crate::persistence::open(config)?;
    let settings = broker_settings(config);
    let (router_tx, router_rx) = mpsc::channel(ROUTER_QUEUE);
    let mut aux = Vec::new();
    // The metrics endpoint comes up first, so that /readyz answers 503 until the listeners
    // are bound. If anything below fails, dropping `shutdown_tx` stops it.
    let mut metrics_addr = None;
    if let Some(addr) = config.metrics.listen {
        let listener =
            bind(addr, None).with_context(|| format!("cannot serve metrics on {addr}"))?;
        let local = listener.local_addr()?;
        let state = Arc::new(HttpState {
            exporter: Exporter::new(),
            counters: Arc::clone(&counters),
            router: router_tx.downgrade(),
            router_capacity: ROUTER_QUEUE,
            ready: Arc::clone(&ready),
            started,
        });
        aux.push(tokio::spawn(crate::http::serve(
            listener,
            state,
            shutdown_rx.clone(),
        )));
        info!("metrics on {local}");
        metrics_addr = Some(local);
    }
    let mut listeners = Vec::new();
    for ((index, l), tls) in config.listeners.iter().enumerate().zip(tls) {
        let addrs: Vec<SocketAddr> = resolve(l.host.as_deref(), l.port)
            .await?
            .into_iter()
            .filter(|a| match l.socket_domain {
                Some(culex_config::SocketDomain::Ipv4) => a.is_ipv4(),
                Some(culex_config::SocketDomain::Ipv6) => a.is_ipv6(),
                None => true,
            })
            .collect();
        if addrs.is_empty() {
            anyhow::bail!(
                "listener port {}: socket_domain {:?} leaves no address of '{}' to listen on",
                l.port,
                l.socket_domain,
                l.host.as_deref().unwrap_or("")
            );
        }
        for addr in addrs {
            let listener = match bind(addr, l.bind_interface.as_deref()) {
                Ok(listener) => listener,
                Err(e) if addr.is_ipv6() && ipv6_unavailable(&e) => {
                    // A host without IPv6 (common in containers) still serves IPv4.
                    warn!("not listening on {addr}: IPv6 is not available here ({e})");
                    continue;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot listen on {addr} (listener port {})", l.port)
                    })
                }
            };
            let ctx = Arc::new(ListenerCtx {
                local: listener.local_addr()?,
                protocol: l.protocol,
                tls: tls.clone(),
                security: Arc::clone(
                    security
                        .by_listener
                        .get(index)
                        .context("no security scope for a listener")?,
                ),
                queue: None,
                mount_point: l.mount_point.as_deref().map(Arc::from),
            });
            listeners.push((listener, ctx));
        }
    }
    if listeners.is_empty() {
        anyhow::bail!("no listener could be bound");
    }
    let addrs: Vec<SocketAddr> = listeners.iter().map(|(_, ctx)| ctx.local).collect();
    for (_, ctx) in &listeners {
        let kind = match (ctx.protocol, ctx.tls.is_some()) {
            (ListenerProtocol::Mqtt, false) => "mqtt",
            (ListenerProtocol::Mqtt, true) => "mqtt+tls",
            (ListenerProtocol::Websockets, false) => "websockets",
            (ListenerProtocol::Websockets, true) => "websockets+tls",
        };
        info!("listening on {} ({kind})", ctx.local);
    }

    let mut store_writer = None;
    let router = match opened {
        Some(opened) => {
            let access = security
                .unique
                .first()
                .map(|h| Arc::clone(h) as Arc<dyn culex_broker::AccessPolicy>);
            let (router, join) =
                crate::persistence::router(opened, config, settings.clone(), &router_tx, access);
            let _ = counters.store.set(join.stats_reader());
            store_writer = Some(join);
            router
        }
        None => Router::new(settings.clone()),
    };
    let placement = crate::cluster::placement(config);
    let mut router = router;
    if let Some(p) = &placement {
        router.set_shared_placement(Arc::new(crate::cluster::SharedGroups(Arc::clone(p))));
    }
    let interest = crate::cluster::local_interest(config);
    let departures = crate::cluster::departures(config);
    let records = crate::cluster::records(config);
    if let (Some(i), Some(p), Some(d), Some(r), Some(link)) = (
        &interest,
        &placement,
        &departures,
        &records,
        crate::cluster::link_client_id(config),
    ) {
        let glue = crate::cluster::InterestGlue(
            Arc::clone(i),
            Arc::clone(p),
            Arc::clone(d),
            Arc::clone(r),
        );
        router.set_interest_sink(Arc::new(glue), &link);
    }
    let router_task = tokio::spawn(run_router(router, router_rx));
    aux.push(tokio::spawn(crate::memory::release_freed_memory(
        shutdown_rx.clone(),
    )));
    if !config.sys.interval.is_zero() {
        aux.push(tokio::spawn(crate::sys::run(
            config.sys.interval,
            router_tx.downgrade(),
            Arc::clone(&counters),
            started,
            shutdown_rx.clone(),
        )));
    }
    let router_weak = router_tx.downgrade();
    let (cluster_conns, cluster_prepared) = match crate::cluster::prepare(
        config,
        router_tx.downgrade(),
        placement,
        interest,
        departures,
        records,
    ) {
        Some((conns, prepared)) => (Some(conns), Some(prepared)),
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        router: router_tx,
        limits: Arc::new(conn_limits(config)),
        broker: settings,
        counters: Arc::clone(&counters),
        cluster: cluster_conns,
    });
    counters.set_max_connections(config.limits.max_connections);
    let max_conn = config
        .limits
        .max_connections
        .unwrap_or(Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max_conn.min(Semaphore::MAX_PERMITS)));
    let next_conn = Arc::new(AtomicU64::new(1));
    let connections = TaskTracker::new();
    let bridges = crate::bridges::spawn(
        &config.bridges,
        &shared,
        &shutdown_rx,
        &next_conn,
        &counters.bridges,
    )?;
    let cluster = cluster_prepared
        .map(|prepared| crate::cluster::spawn(prepared, &shared, &shutdown_rx, &next_conn));
    if let Some(c) = &cluster {
        let _ = counters.cluster.set(Arc::clone(c.stats()));
    }
    let task = tokio::spawn(serve(
        listeners,
        Conns {
            shared,
            permits,
            next_conn,
            connections,
        },
        shutdown_rx,
        router_task,
        store_writer,
    ));
    ready.set_ready();
    Ok(RunningServer {
        addrs,
        shutdown: shutdown_tx,
        task,
        counters,
        security,
        tls: tls_all,
        metrics_addr,
        ready,
        aux,
        bridges,
        cluster,
        cluster_config: config.cluster.clone(),
        router: router_weak,
    })
}

/// Checks what the configuration refers to without starting anything: TLS certificates and
/// keys, password files and ACL files. Errors name the listener, option, file and line.
pub fn check_files(config: &Config) -> Result<()> {
    let mut errors = Vec::new();
    if let Err(e) = tls::check_tls(config) {
        errors.push(e.to_string());
    }
    if let Err(e) = load_security(config) {
        errors.push(format!("{e:#}"));
    }
    if let Err(e) = crate::privileges::check_user(config.user.as_deref()) {
        errors.push(format!("{e:#}"));
    }
    // Bridge TLS files (CA file and directory, client certificate and key) must load; the
    // bridge rebuilds this at every connect, so a broken file would only show there.
    for b in &config.bridges {
        if let Some(tls) = &b.tls {
            if let Err(e) = culex_bridge::tls_client_config(tls) {
                errors.push(format!("bridge \"{}\": TLS: {e}", b.name));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", errors.join("\n"))
    }
}

/// Runs the server until `stop` completes, then shuts down cleanly.
pub async fn run(config: &Config, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let server = start(config).await?;
    stop.await;
    info!("shutting down");
    server.shutdown().await;
    info!("stopped");
    Ok(())
}

async fn resolve(host: Option<&str>, port: u16) -> Result<Vec<SocketAddr>> {
    match host {
        None => Ok(vec![
            SocketAddr::from(([0, 0, 0, 0], port)),
            SocketAddr::from(([0u16; 8], port)),
        ]),
        Some(h) => {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = h.parse::<std::net::IpAddr>() {
                return Ok(vec![SocketAddr::new(ip, port)]);
            }
            let found: Vec<SocketAddr> = tokio::net::lookup_host((h, port))
                .await
                .with_context(|| format!("cannot resolve listener address '{h}'"))?
                .collect();
            if found.is_empty() {
                anyhow::bail!("listener address '{h}' resolves to nothing");
            }
            Ok(found)
        }
    }
}

/// True for the errors a host without IPv6 gives when asked to bind an IPv6 address.
fn ipv6_unavailable(e: &std::io::Error) -> bool {
    // EAFNOSUPPORT (97) is not mapped to an ErrorKind on stable Rust.
    e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(97)
}

/// Binds a listening socket on `addr`, restricted to the network `interface` if one is given
/// (`bind_interface`, `SO_BINDTODEVICE`).
fn bind(addr: SocketAddr, interface: Option<&str>) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(name) = interface {
        socket
            .bind_device(Some(name.as_bytes()))
            .map_err(|e| std::io::Error::new(e.kind(), format!("bind_interface {name}: {e}")))?;
    }
    if addr.is_ipv6() {
        // Bind v6 and v4 separately, as Mosquitto does, so `::` and `0.0.0.0` coexist.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// What the accept loops share: server state, connection permits, connection ids (shared with
/// the bridges' in-process connections, so ids stay unique) and the connection task tracker.
struct Conns {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    next_conn: Arc<AtomicU64>,
    connections: TaskTracker,
}

async fn serve(
    listeners: Vec<(TcpListener, Arc<ListenerCtx>)>,
    conns: Conns,
    shutdown: watch::Receiver<bool>,
    router_task: tokio::task::JoinHandle<()>,
    store_writer: Option<culex_store::WriterJoin>,
) {
    let Conns {
        shared,
        permits,
        next_conn,
        connections,
    } = conns;
    let mut accept_loops = JoinSet::new();
    for (listener, ctx) in listeners {
        accept_loops.spawn(accept_loop(
            listener,
            ctx,
            Arc::clone(&shared),
            Arc::clone(&permits),
            shutdown.clone(),
            Arc::clone(&next_conn),
            connections.clone(),
        ));
    }
    while accept_loops.join_next().await.is_some() {}
    // Every accept loop has stopped (shutdown). Let connections say goodbye: connected clients
    // learn of it from the router (a close in their outbox), as does any client whose CONNECT
    // the router handles after this; clients still in their handshake watch `shutdown`.
    let _ = shared.router.send(Command::Shutdown).await;
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close in time");
    }
    drop(shared);
    let _ = router_task.await;
    // The router is gone, and with it the store's last handle: the writer commits what is
    // left and stops.
    if let Some(writer) = store_writer {
        match tokio::task::spawn_blocking(move || writer.join()).await {
            Ok(Ok(stats)) => info!("store closed after {} commits", stats.commits),
            Ok(Err(e)) => warn!("store writer failed: {e}"),
            Err(e) => warn!("store writer did not finish: {e}"),
        }
    }
}

/// Accepts connections on one socket. The TLS handshake and WebSocket upgrade happen in each
/// connection's task (`transport::serve_accepted`), never here.
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
    next_conn: Arc<AtomicU64>,
    connections: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.counters.accepted.inc();
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            shared.counters.refuse_max_connections();
            warn!(%peer, "max_connections reached; connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let slot = ConnSlot::new(Arc::clone(&shared.counters), permit);
        let (ctx, shared, shutdown) = (Arc::clone(&ctx), Arc::clone(&shared), shutdown.clone());
        // The connection's future is the task (no wrapper holding a second copy of its
        // arguments), and the large parts of it are boxed in `serve_accepted`: an idle
        // connection costs a few KB, not tens.
        connections.spawn(transport::serve_accepted(
            stream, peer, ctx, conn, shared, shutdown, slot,
        ));
    }
}

/// The router task: drains commands in batches and wakes for timers (wills, expiry).
async fn run_router(mut router: Router, mut rx: mpsc::Receiver<Command>) {
    let mut batch = Vec::with_capacity(ROUTER_BATCH);
    loop {
        let deadline = router.next_deadline();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = rx.recv_many(&mut batch, ROUTER_BATCH) => {
                if n == 0 {
                    break;
                }
                let now = tokio::time::Instant::now().into_std();
                for cmd in batch.drain(..) {
                    router.handle(cmd, now);
                }
            }
            _ = sleep => {}
        }
        let now = tokio::time::Instant::now().into_std();
        if router.next_deadline().is_some_and(|d| d <= now) {
            router.tick(now);
        }
    }
}

#[cfg(test)]
mod tests;
