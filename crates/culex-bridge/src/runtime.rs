//! The bridge task: one local and one remote client connection, forwarding with remapping.
//!
//! One task per bridge owns both connections and waits, in one `select!`, on the local
//! connection, the remote one, a connect attempt in progress, the next-attempt timer and the
//! idle timer. Liveness of the remote link is the client session's keepalive: a PINGREQ when
//! nothing was sent or nothing was received for an interval, the link dead when it goes
//! unanswered (or a write blocks) for half an interval more. Whatever ends a link, its socket
//! is closed, after reading what the remote had already sent. The `culex-client` connections are cancel-safe, so losing a race in the
//! `select!` loses no data. The remote [`Connection`] is kept across link failures: its session
//! holds the QoS 1/2 publications in flight, which are resent (with DUP when the remote kept the
//! session) after the reconnect.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use culex_client::transport::BoxStream;
use culex_client::{ClientError, ClientSession, ConnectOptions, Connection, Message};
use culex_proto::{
    Properties, Protocol, Publish, QoS, ReasonCode, RetainHandling, SubscribeFilter,
    SubscriptionOptions,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::{ChangeLog, FailureKind, ReconnectPolicy, STABLE_LINK};
use crate::echo::EchoFilter;
use crate::error::BridgeError;
use crate::queue::{LocalAck, MemoryQueue, QueuedMessage};
use crate::remote;
use crate::state::{Put, TopicStates};
use crate::stats::{unix_now, unix_now_ms, BridgeStats, LinkState};
use culex_config::bridge::topic::{remap_in, remap_out};
use culex_config::bridge::{BridgeConfig, BridgeProtocol, StartType};

mod connect;
mod forward;
mod local;
mod reload;

use connect::{connect_round, local_options, unsubscribe, waiting_state};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Opens a fresh byte stream to the LOCAL broker. In the broker this is an in-process duplex
/// stream served by the broker's own connection task; in tests, a TCP connection.
pub type LocalConnector = Box<dyn Fn() -> BoxFuture<io::Result<BoxStream>> + Send + Sync>;

/// QoS 1/2 publications in flight to the remote at once; the rest wait in the queue. Also the
/// bridge's Receive Maximum toward the local broker: it holds at most this many unacknowledged
/// local messages, the rest wait (durably) in its local session.
const WINDOW: u16 = 64;
/// How often a lazy bridge that is not connected looks at its queue (the local broker queues
/// for it without waking it).
const LAZY_POLL: Duration = Duration::from_secs(1);
/// Time for the TCP connect, the TLS handshake and the CONNACK, each attempt and address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for a SUBACK or a local round trip.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing the remote link may take: DISCONNECT, shutdown, and reading what the remote
/// had sent until it closes its side.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Local reconnect delays (the local broker is in-process; it is only gone while restarting).
const LOCAL_RETRY_MIN: Duration = Duration::from_millis(100);
const LOCAL_RETRY_MAX: Duration = Duration::from_secs(5);

/// Starts bridges.
#[derive(Debug)]
pub struct Bridge;

impl Bridge {
    /// Validates `config` and spawns the bridge task on the current tokio runtime, with an
    /// in-memory store-and-forward queue of `config.queue_limit` messages. The task runs until
    /// `shutdown` becomes true (or its sender is dropped).
    pub fn spawn(
        config: BridgeConfig,
        local: LocalConnector,
        shutdown: watch::Receiver<bool>,
    ) -> Result<BridgeHandle, BridgeError> {
        Self::spawn_with_stats(config, local, Arc::new(BridgeStats::default()), shutdown)
    }

    /// [`Bridge::spawn`] reporting into `stats`, which the caller may already have shared (the
    /// broker lets the bridge's local session update [`BridgeStats::local_queued`]).
    pub fn spawn_with_stats(
        config: BridgeConfig,
        local: LocalConnector,
        stats: Arc<BridgeStats>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<BridgeHandle, BridgeError> {
        config.validate()?;
        for w in config.warnings() {
            tracing::warn!(bridge = %config.name, "{w}");
        }
        let queue = MemoryQueue::new(config.queue_limit.max(usize::from(WINDOW)));
        let name = config.name.clone();
        let (updates, updates_rx) = watch::channel(Arc::new(config.clone()));
        let link = Link::new(
            config,
            local,
            queue,
            shutdown,
            Arc::clone(&stats),
            updates_rx,
        );
        let task = tokio::spawn(link.run());
        Ok(BridgeHandle {
            name,
            stats,
            task,
            updates,
        })
    }
}

/// A running bridge.
#[derive(Debug)]
pub struct BridgeHandle {
    name: String,
    stats: Arc<BridgeStats>,
    task: JoinHandle<()>,
    updates: watch::Sender<Arc<BridgeConfig>>,
}

impl BridgeHandle {
    /// The bridge's `connection` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Live statistics (shared with the task).
    pub fn stats(&self) -> &Arc<BridgeStats> {
        &self.stats
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<BridgeConfig> {
        Arc::clone(&self.updates.borrow())
    }

    /// Applies a changed configuration (SIGHUP) to the running bridge if it can without a new
    /// connection ([`BridgeConfig::same_link`]): topics are re-subscribed on both sides, the
    /// backoff bounds and notification settings take effect. Returns `Ok(false)`, changing
    /// nothing, when the connection settings differ: the caller restarts the bridge then.
    pub fn reconfigure(&self, config: BridgeConfig) -> Result<bool, BridgeError> {
        config.validate()?;
        let current = self.config();
        if *current == config {
            return Ok(true);
        }
        if !current.same_link(&config) {
            return Ok(false);
        }
        self.updates.send_replace(Arc::new(config));
        Ok(true)
    }

    /// True once the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the task to end (after shutdown).
    pub async fn join(self) {
        // A panicking task has already been reported by tokio; nothing to add.
        let _ = self.task.await;
    }
}

/// What woke the bridge task.
enum Wake {
    Shutdown,
    /// Nothing to do but look around again (a timer fired, the watch changed to `false`).
    Noop,
    Local(Result<(), ClientError>),
    Remote(Result<(), ClientError>),
    Attempt(Box<Attempt>),
    AttemptDue,
    Idle,
    LazyPoll,
    Reconfigure,
}

/// The result of a connect round over the addresses.
struct Attempt {
    conn: Option<Connection>,
    result: Result<usize, ClientError>,
}

struct Link {
    config: Arc<BridgeConfig>,
    stats: Arc<BridgeStats>,
    queue: MemoryQueue,
    /// The retained state of each `out` topic (the latest message published with RETAIN),
    /// sent first after every (re)connect.
    retained: TopicStates,
    /// The latest non-retained message per `out` topic: QoS 0 messages kept while the link is
    /// down, and with `republish_on_connect` every topic's last message. Sent after the
    /// retained states.
    latest: TopicStates,
    /// A retained state could not be kept (`queue_limit` topics): warned once.
    states_full_warned: bool,
    /// Local acknowledgements owed once the remote completes these publications, by remote
    /// packet identifier.
    inflight_acks: HashMap<u16, LocalAck>,
    connector: LocalConnector,
    shutdown: watch::Receiver<bool>,
    updates: watch::Receiver<Arc<BridgeConfig>>,
    local: Option<Connection>,
    local_up: bool,
    remote: Option<Connection>,
    remote_up: bool,
    attempt: Option<BoxFuture<Attempt>>,
    next_attempt: Option<Instant>,
    policy: ReconnectPolicy,
    rng: StdRng,
    log: ChangeLog,
    echo: Option<EchoFilter>,
    /// A `once` bridge that has had its one connection (or failed it).
    finished: bool,
    last_activity: Instant,
    /// When the remote link came up (for the quick retry after a healthy link drops).
    connected_at: Instant,
    /// The address index of the last successful connect (`round_robin` starts after it).
    last_address: Option<usize>,
}

impl Link {
    fn new(
        config: BridgeConfig,
        connector: LocalConnector,
        queue: MemoryQueue,
        shutdown: watch::Receiver<bool>,
        stats: Arc<BridgeStats>,
        updates: watch::Receiver<Arc<BridgeConfig>>,
    ) -> Self {
        let echo = (config.protocol == BridgeProtocol::V311 && !config.try_private)
            .then(|| EchoFilter::new(Duration::from_secs(60), 100_000));
        let policy = ReconnectPolicy::new(config.backoff_min, config.backoff_max);
        let states_limit = config.queue_limit;
        let now = Instant::now();
        Link {
            config: Arc::new(config),
            stats,
            queue,
            retained: TopicStates::new(states_limit),
            latest: TopicStates::new(states_limit),
            states_full_warned: false,
            inflight_acks: HashMap::new(),
            connector,
            shutdown,
            updates,
            local: None,
            local_up: false,
            remote: None,
            remote_up: false,
            attempt: None,
            // Automatic and once bridges connect at once.
            next_attempt: Some(now),
            policy,
            rng: StdRng::from_entropy(),
            log: ChangeLog::default(),
            echo,
            finished: false,
            last_activity: now,
            connected_at: now,
            last_address: None,
        }
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn run(mut self) {
        tracing::info!(bridge = %self.name(), addresses = ?self.config.addresses, "bridge starting");
        self.stats.set_state(match self.config.start_type {
            StartType::Lazy => LinkState::Idle,
            _ => LinkState::BackingOff,
        });
        while !self.shutting_down() {
            if !self.local_up {
                if !self.connect_local().await {
                    break;
                }
                continue;
            }
            self.maybe_start_attempt();
            let wake = self.wait().await;
            self.handle(wake).await;
        }
        self.close().await;
        self.set_state(LinkState::Stopped);
        tracing::info!(bridge = %self.name(), "bridge stopped");
    }

    /// Whether a connect attempt may start now, given the start type.
    fn attempt_allowed(&self) -> bool {
        if self.remote_up || self.attempt.is_some() || self.finished {
            return false;
        }
        match self.config.start_type {
            StartType::Automatic | StartType::Once => true,
            StartType::Lazy => self.waiting() >= u64::from(self.config.threshold),
        }
    }

    /// `out` messages waiting for the remote: held here or queued in the local session.
    fn waiting(&self) -> u64 {
        (self.queue.len() + self.latest.unsent() + self.retained.unsent()) as u64
            + self.stats.local_queued.load(Ordering::Relaxed)
    }

    fn maybe_start_attempt(&mut self) {
        if !self.attempt_allowed() {
            return;
        }
        let due = match (self.config.start_type, self.next_attempt) {
            (_, Some(at)) => at <= Instant::now(),
            // Lazy bridges have no timer once idle: the threshold decides.
            (StartType::Lazy, None) => true,
            (_, None) => false,
        };
        if !due {
            return;
        }
        self.next_attempt = None;
        self.stats.next_attempt_unix_ms.store(0, Ordering::Relaxed);
        self.set_state(LinkState::Connecting);
        let config = Arc::clone(&self.config);
        let conn = self.remote.take();
        let stats = Arc::clone(&self.stats);
        let start = match (self.config.round_robin, self.last_address) {
            (true, Some(last)) => (last + 1) % self.config.addresses.len().max(1),
            _ => 0,
        };
        self.attempt = Some(Box::pin(connect_round(config, conn, stats, start)));
    }

    async fn wait(&mut self) -> Wake {
        let Link {
            shutdown,
            updates,
            local,
            remote,
            remote_up,
            attempt,
            next_attempt,
            config,
            last_activity,
            ..
        } = self;
        let Some(local) = local.as_mut() else {
            return Wake::Local(Err(ClientError::NotConnected));
        };
        let idle_at = (*remote_up && config.start_type == StartType::Lazy)
            .then(|| later(*last_activity, config.idle_timeout));
        let lazy_poll_at = (!*remote_up
            && attempt.is_none()
            && next_attempt.is_none()
            && config.start_type == StartType::Lazy)
            .then(|| Instant::now() + LAZY_POLL);
        let attempt_at = if *remote_up || attempt.is_some() {
            None
        } else {
            *next_attempt
        };
        tokio::select! {
            r = shutdown.changed() => {
                // A dropped sender also means shutdown.
                if r.is_err() || *shutdown.borrow() { Wake::Shutdown } else { Wake::Noop }
            }
            r = updates.changed() => if r.is_ok() { Wake::Reconfigure } else { Wake::Noop },
            r = local.progress() => Wake::Local(r),
            r = async {
                match remote.as_mut() {
                    Some(c) => c.progress().await,
                    None => std::future::pending().await,
                }
            }, if *remote_up => Wake::Remote(r),
            a = async {
                match attempt.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            }, if attempt.is_some() => Wake::Attempt(Box::new(a)),
            () = sleep_until(attempt_at) => Wake::AttemptDue,
            () = sleep_until(idle_at) => Wake::Idle,
            () = sleep_until(lazy_poll_at) => Wake::LazyPoll,
        }
    }

    async fn handle(&mut self, wake: Wake) {
        match wake {
            Wake::Shutdown | Wake::Noop | Wake::AttemptDue | Wake::LazyPoll => {}
            Wake::Local(Ok(())) => self.drain_local(),
            Wake::Local(Err(e)) => {
                self.drain_local();
                self.local_up = false;
                self.forget_local_deliveries();
                tracing::warn!(bridge = %self.name(), error = %e, "bridge lost its local connection; reconnecting");
            }
            Wake::Remote(r) => {
                self.drain_remote();
                if let Err(e) = r {
                    self.remote_lost(&e).await;
                }
            }
            Wake::Attempt(a) => {
                self.attempt = None;
                self.remote = a.conn;
                match a.result {
                    Ok(index) => self.remote_connected(index).await,
                    Err(e) => self.attempt_failed(&e),
                }
            }
            Wake::Idle => self.idle_check().await,
            Wake::Reconfigure => self.reconfigure().await,
        }
    }

    /// After a CONNACK, in this order: the retained state of each `out` topic (for Sber the
    /// device list, `up/config`), then the latest kept message of each other `out` topic
    /// (`up/status`), then the QoS 1/2 queue, then the `in` subscriptions, so the remote knows
    /// the current state before it can send commands. The link counts as connected only then.
    async fn remote_connected(&mut self, index: usize) {
        let (host, port) = self
            .config
            .addresses
            .get(index)
            .cloned()
            .unwrap_or_default();
        let session_present = self
            .remote
            .as_ref()
            .and_then(|c| c.connack())
            .is_some_and(|a| a.session_present);
        tracing::info!(bridge = %self.name(), remote = %format!("{host}:{port}"), session_present, queued = self.queue.len(), "bridge connected to the remote broker");
        self.remote_up = true;
        self.log.clear();
        self.last_address = Some(index);
        let now = Instant::now();
        self.connected_at = now;
        self.last_activity = now;
        StatsExt::inc(&self.stats.connects);
        self.stats
            .last_connect_unix
            .store(unix_now(), Ordering::Relaxed);
        if self.config.start_type == StartType::Once {
            self.finished = true;
        }
        self.replay_state();
        self.pump();
        if let Err(e) = self.unsubscribe_out_only().await {
            self.remote_lost(&e).await;
            return;
        }
        if let Err(e) = self.subscribe_remote().await {
            self.remote_lost(&e).await;
            return;
        }
        self.drain_remote();
        // Connected only now: state sent, subscriptions in place.
        self.set_state(LinkState::Connected);
        self.notify(true);
        self.notify_remote(true);
    }

    /// Sends the kept state to a freshly connected remote: every retained state (unless a
    /// newer message of its topic waits in the QoS 1/2 queue), then the latest non-retained
    /// messages: all of them with `republish_on_connect`, else those kept while the link was
    /// down. These are copies; the local broker has already been answered for them.
    fn replay_state(&mut self) {
        let queued: HashSet<String> = self.queue.iter().map(|m| m.topic.clone()).collect();
        for m in self.retained.take_for_send(true) {
            if !queued.contains(&m.topic) {
                self.send_remote(m);
            }
        }
        let republish = self.config.republish_on_connect;
        for m in self.latest.take_for_send(republish) {
            self.send_remote(m);
        }
        if !republish {
            self.latest.clear();
        }
        self.update_queued();
    }

    /// `bridge_attempt_unsubscribe`: UNSUBSCRIBE on the remote from the filters of the rules
    /// that only go `out`, so a persistent remote session subscribed under an earlier
    /// configuration stops sending them (as Mosquitto does on every bridge connect).
    async fn unsubscribe_out_only(&mut self) -> Result<(), ClientError> {
        if !self.config.attempt_unsubscribe {
            return Ok(());
        }
        let mut filters: Vec<String> = self
            .config
            .topics
            .iter()
            .filter(|r| r.direction.is_out() && !r.direction.is_in())
            .map(|r| r.remote_filter())
            .collect();
        filters.dedup();
        unsubscribe(
            self.remote.as_mut(),
            filters,
            "waiting for the remote UNSUBACK",
        )
        .await
    }

    async fn subscribe_remote(&mut self) -> Result<(), ClientError> {
        let v5 = self.config.protocol == BridgeProtocol::V5;
        let rules: Vec<_> = self
            .config
            .topics
            .iter()
            .filter(|r| r.direction.is_in())
            .cloned()
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let filters = rules
            .iter()
            .map(|r| SubscribeFilter {
                filter: r.remote_filter(),
                options: SubscriptionOptions {
                    qos: r.qos,
                    no_local: v5,
                    retain_as_published: v5,
                    retain_handling: RetainHandling::SendAtSubscribe,
                },
            })
            .collect();
        let Some(remote) = self.remote.as_mut() else {
            return Err(ClientError::NotConnected);
        };
        let ack = tokio::time::timeout(
            ACK_TIMEOUT,
            remote.subscribe(filters, Properties::default()),
        )
        .await
        .map_err(|_| ClientError::Timeout("waiting for the remote SUBACK"))??;
        for (code, rule) in ack.reason_codes.iter().zip(&rules) {
            if code.as_u8() >= 0x80 {
                tracing::error!(bridge = %self.name(), filter = %rule.remote_filter(), reason = ?code, "the remote broker refused the bridge's subscription (check its ACL)");
            }
        }
        Ok(())
    }

    fn attempt_failed(&mut self, e: &ClientError) {
        let kind = FailureKind::of(e);
        let text = e.to_string();
        self.stats.set_last_error(text.clone());
        if self.config.start_type == StartType::Once {
            self.finished = true;
            self.set_state(LinkState::Stopped);
            tracing::error!(bridge = %self.name(), error = %text, "bridge connection failed; start_type once: not retrying");
            return;
        }
        let delay = self.policy.next_delay(kind, &mut self.rng);
        self.schedule(delay, waiting_state(e));
        if self.log.changed(&text) {
            match kind {
                FailureKind::BadCredentials => tracing::warn!(
                    bridge = %self.name(), error = %text, retry_in = ?delay,
                    "the remote broker refused the bridge's credentials; retrying at the maximum delay, or at once after a reload (check remote_username / remote_password)"
                ),
                FailureKind::Transient => tracing::warn!(
                    bridge = %self.name(), error = %text, retry_in = ?delay,
                    "bridge cannot connect to the remote broker; retrying with backoff"
                ),
            }
        } else {
            tracing::debug!(bridge = %self.name(), error = %text, retry_in = ?delay, "bridge connect attempt failed again");
        }
    }

    fn schedule(&mut self, delay: Duration, state: LinkState) {
        // (Configured delays are at most 100 years; `later` also guards the arithmetic.)
        self.next_attempt = Some(later(Instant::now(), delay));
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.stats
            .next_attempt_unix_ms
            .store(unix_now_ms().saturating_add(ms), Ordering::Relaxed);
        self.stats.last_backoff_ms.store(ms, Ordering::Relaxed);
        self.set_state(state);
    }

    /// Records the link state (metrics) and, when it changed and notifications are on,
    /// publishes it locally, retained, on `$SYS/broker/connection/<name>/link_state` with the
    /// last error and the next attempt beside it (`.../last_error`, `.../next_attempt`).
    fn set_state(&mut self, state: LinkState) {
        let changed = self.stats.state() != state;
        self.stats.set_state(state);
        if !changed || !self.config.notifications || !self.local_up {
            return;
        }
        let base = format!("$SYS/broker/connection/{}", self.config.name);
        let next_ms = self.stats.next_attempt_unix_ms.load(Ordering::Relaxed);
        let next = if next_ms == 0 {
            String::new()
        } else {
            (next_ms / 1000).to_string()
        };
        let error = self.stats.last_error().unwrap_or_default();
        let Some(local) = self.local.as_mut() else {
            return;
        };
        for (leaf, value) in [
            ("link_state", state.as_str().to_string()),
            ("last_error", error),
            ("next_attempt", next),
        ] {
            let msg = Message::new(format!("{base}/{leaf}"), value, QoS::AtMostOnce).retained(true);
            if let Err(e) = local.start_publish(msg) {
                tracing::debug!(bridge = %self.config.name, error = %e, "link state not published");
            }
        }
    }

    /// The remote link ended (error, keepalive timeout, refused subscription). Its socket is
    /// closed in every case, so a remote that still thinks the link is up stops sending into
    /// it; what the remote had sent before is read and forwarded first.
    async fn remote_lost(&mut self, e: &ClientError) {
        if !self.remote_up {
            return;
        }
        self.remote_up = false;
        if let Some(conn) = self.remote.as_mut() {
            conn.close(ReasonCode::NormalDisconnection, CLOSE_LINGER)
                .await;
        }
        self.drain_remote();
        StatsExt::inc(&self.stats.disconnects);
        let text = e.to_string();
        self.stats.set_last_error(text.clone());
        let up_for = Instant::now().saturating_duration_since(self.connected_at);
        tracing::warn!(bridge = %self.name(), error = %text, up_for = ?up_for, "bridge lost the remote link");
        self.log.changed(&text);
        self.notify(false);
        match self.config.start_type {
            StartType::Once => {
                self.finished = true;
                self.set_state(LinkState::Stopped);
            }
            _ => {
                let kind = FailureKind::of(e);
                let delay = if kind == FailureKind::Transient && up_for >= STABLE_LINK {
                    self.policy.after_stable_link(&mut self.rng)
                } else {
                    self.policy.next_delay(kind, &mut self.rng)
                };
                self.schedule(delay, waiting_state(e));
            }
        }
    }

    async fn idle_check(&mut self) {
        let idle_for = Instant::now().saturating_duration_since(self.last_activity);
        if !self.remote_up || idle_for < self.config.idle_timeout {
            return;
        }
        let pending = self.remote.as_ref().is_some_and(|c| !c.session().is_idle());
        if pending || !self.queue.is_empty() {
            self.last_activity = Instant::now();
            return;
        }
        tracing::info!(bridge = %self.name(), "lazy bridge idle; disconnecting");
        self.remote_up = false;
        if let Some(conn) = self.remote.as_mut() {
            conn.close(ReasonCode::NormalDisconnection, CLOSE_LINGER)
                .await;
        }
        self.drain_remote();
        self.notify(false);
        self.next_attempt = None;
        self.set_state(LinkState::Idle);
    }

    async fn close(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            drop(attempt);
        }
        if self.remote_up {
            // A clean stop sends no will: say `0` on the remote ourselves (settled below).
            self.notify_remote(false);
            // Settle what is in flight first (bounded): a successor with a fresh session
            // (restart after a reload) would otherwise reuse packet identifiers the remote
            // still holds for QoS 2, and the local broker gets its acknowledgements now
            // rather than redelivering later.
            let drain = async {
                while self
                    .remote
                    .as_ref()
                    .is_some_and(|c| c.session().pending_publishes() > 0)
                {
                    let Some(remote) = self.remote.as_mut() else {
                        break;
                    };
                    if remote.progress().await.is_err() {
                        break;
                    }
                    self.drain_remote_acks();
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
            self.drain_remote_acks();
            self.remote_up = false;
            if let Some(conn) = self.remote.as_mut() {
                conn.close(ReasonCode::NormalDisconnection, CLOSE_LINGER)
                    .await;
            }
            // What the remote sent until it closed its side: pass it on.
            self.drain_remote();
        }
        if self.local_up {
            self.notify(false);
            if let Some(mut conn) = self.local.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.flush()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.disconnect()).await;
            }
        }
    }
}

/// Small helpers over the stats atomics.
struct StatsExt;

impl StatsExt {
    fn inc(counter: &std::sync::atomic::AtomicU64) {
        BridgeStats::add(counter, 1);
    }
    fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        BridgeStats::add(counter, n);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `at + d` for a configured delay, saturating at a century ahead instead of overflowing the
/// clock (configuration caps delays at 100 years, so this only guards the arithmetic).
fn later(at: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(d.min(CENTURY)).unwrap_or(at)
}
