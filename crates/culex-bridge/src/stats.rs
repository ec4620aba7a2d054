//! Per-bridge counters and state, shared with the metrics exporter as atomics.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the remote link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    /// Not running (before start, after shutdown, or a `once` bridge whose link ended).
    Stopped = 0,
    /// A connect attempt is under way.
    Connecting = 1,
    /// Connected: CONNACK accepted.
    Connected = 2,
    /// Waiting before the next attempt (see [`BridgeStats::next_attempt_unix_ms`]).
    BackingOff = 3,
    /// A lazy bridge waiting for enough queued messages.
    Idle = 4,
    /// Waiting before the next attempt because the remote refused the credentials (CONNACK 4
    /// or 5, MQTT 5 `0x86`/`0x87`): retried at the maximum delay, at once after a reload.
    CredentialsRefused = 5,
    /// Waiting before the next attempt because the TLS handshake failed (untrusted or
    /// mismatched certificate, no common version or cipher).
    TlsFailed = 6,
}

impl LinkState {
    fn from_u8(v: u8) -> LinkState {
        match v {
            1 => LinkState::Connecting,
            2 => LinkState::Connected,
            3 => LinkState::BackingOff,
            4 => LinkState::Idle,
            5 => LinkState::CredentialsRefused,
            6 => LinkState::TlsFailed,
            _ => LinkState::Stopped,
        }
    }

    /// Lower-case name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Stopped => "stopped",
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::BackingOff => "backing_off",
            LinkState::Idle => "idle",
            LinkState::CredentialsRefused => "credentials_refused",
            LinkState::TlsFailed => "tls_failed",
        }
    }

    /// Every state, for metric labels (one gauge series per state).
    pub const ALL: [LinkState; 7] = [
        LinkState::Stopped,
        LinkState::Connecting,
        LinkState::Connected,
        LinkState::BackingOff,
        LinkState::Idle,
        LinkState::CredentialsRefused,
        LinkState::TlsFailed,
    ];
}

/// Counters and gauges of one bridge. All fields are updated by the bridge task and may be read
/// at any time from any thread.
#[derive(Debug, Default)]
pub struct BridgeStats {
    state: AtomicU8,
    /// Successful connections to the remote (CONNACK accepted).
    pub connects: AtomicU64,
    /// Connect attempts to the remote that failed (each address tried counts).
    pub reconnect_attempts: AtomicU64,
    /// Remote links lost after they were up.
    pub disconnects: AtomicU64,
    /// Messages forwarded remote → local.
    pub forwarded_in: AtomicU64,
    /// Messages forwarded local → remote (handed to the remote session).
    pub forwarded_out: AtomicU64,
    /// Payload bytes forwarded remote → local.
    pub bytes_in: AtomicU64,
    /// Payload bytes forwarded local → remote.
    pub bytes_out: AtomicU64,
    /// `out` messages the bridge task holds: received from the local broker, not yet
    /// acknowledged by the remote (gauge; at most the bridge's Receive Maximum plus the QoS 0
    /// states kept while the link is down).
    pub queued: AtomicU64,
    /// `out` QoS 1/2 messages waiting in the bridge's session in the local broker, behind
    /// those the bridge holds: the durable part of store-and-forward (gauge; kept up to date by
    /// the broker).
    pub local_queued: AtomicU64,
    /// `out` messages dropped because the queue was full (the oldest goes).
    pub dropped_queue_full: AtomicU64,
    /// `out` QoS 0 messages dropped while the remote was down: replaced by a newer message on
    /// the same topic (only the latest state per topic is kept), or beyond `queue_limit`
    /// topics.
    pub dropped_qos0_offline: AtomicU64,
    /// Messages dropped for another reason: larger than `bridge_max_packet_size`, refused by
    /// the remote, no matching topic rule, or an echo of our own message.
    pub dropped_other: AtomicU64,
    /// Unix time (seconds) of the last successful connect; 0 if never.
    pub last_connect_unix: AtomicU64,
    /// When the next connect attempt is due (Unix milliseconds) while backing off; 0 otherwise.
    pub next_attempt_unix_ms: AtomicU64,
    /// The delay (milliseconds) drawn before the latest scheduled connect attempt: what the
    /// backoff chose, whatever the clock did since. 0 before the first failure.
    pub last_backoff_ms: AtomicU64,
    /// Unix time (seconds) of the last connect failure or link loss; 0 if none.
    pub last_error_unix: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl BridgeStats {
    /// The link state.
    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_state(&self, state: LinkState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    /// Messages waiting for the remote: those the bridge holds plus those queued for it in the
    /// local broker.
    pub fn queued_total(&self) -> u64 {
        self.queued.load(Ordering::Relaxed) + self.local_queued.load(Ordering::Relaxed)
    }

    /// Total messages dropped, for every reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full.load(Ordering::Relaxed)
            + self.dropped_qos0_offline.load(Ordering::Relaxed)
            + self.dropped_other.load(Ordering::Relaxed)
    }

    /// The last connect or link error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }

    pub(crate) fn set_last_error(&self, error: String) {
        self.last_error_unix.store(unix_now(), Ordering::Relaxed);
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some(error);
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
