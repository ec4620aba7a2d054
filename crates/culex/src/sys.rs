//! The `$SYS/broker/...` tree, after Mosquitto's `sys_tree.c`: retained messages published
//! every `sys_interval`, only when their value changed. Values come from the same metric
//! families ([`all`](crate::metrics::families::all): each names the `$SYS` topics of its total) and the same kind of
//! [`Sample`] as the metrics endpoint.
//!
//! [`SysTree`] is sans-IO: it takes the sample and the time and returns what to publish, so the
//! load averages are tested with a virtual clock. [`run`] is the task around it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use culex_broker::{Command, Message};
use culex_proto::{Properties, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use crate::counters::Counters;
use crate::metrics::families::{all, family};
use crate::metrics::Sample;

/// The load-average windows: name and length in seconds.
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// The rates with moving averages, as `$SYS/broker/load/<name>/<window>`, and the metric
/// family whose total each is the rate of.
const LOADS: [(&str, &str); 9] = [
    ("messages/received", "culex_packets_received_total"),
    ("messages/sent", "culex_packets_sent_total"),
    ("publish/received", "culex_messages_received_total"),
    ("publish/sent", "culex_messages_sent_total"),
    ("publish/dropped", "culex_publish_dropped_total"),
    ("bytes/received", "culex_received_bytes_total"),
    ("bytes/sent", "culex_sent_bytes_total"),
    ("connections", "culex_client_connects_total"),
    ("sockets", "culex_connections_accepted_total"),
];

/// The cumulative totals the loads are rates of, in [`LOADS`] order.
fn load_totals(s: &Sample) -> [u64; 9] {
    LOADS.map(|(_, name)| {
        family(name)
            .and_then(|f| f.total(s))
            .map_or(0, |t| t as u64)
    })
}

/// One exponentially-damped moving average of a per-minute rate, as Mosquitto computes it:
/// with `rate = delta × 60 / elapsed` and `k = exp(−elapsed / window)`,
/// `load' = rate + k × (load − rate)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Load {
    /// The current average, per minute.
    pub(crate) value: f64,
}

impl Load {
    /// Folds in `delta` events over `elapsed`, for a window of `window_secs`.
    pub(crate) fn update(&mut self, delta: u64, elapsed: Duration, window_secs: f64) {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return;
        }
        let rate = delta as f64 * 60.0 / secs;
        let k = (-secs / window_secs).exp();
        self.value = rate + k * (self.value - rate);
    }
}

/// The state of the tree between updates: what was last published and the averages.
#[derive(Debug)]
pub(crate) struct SysTree {
    version: String,
    published: HashMap<String, String>,
    loads: [[Load; 3]; 9],
    last: Option<(Instant, [u64; 9])>,
}

impl SysTree {
    pub(crate) fn new() -> SysTree {
        SysTree {
            version: format!("culex version {}", env!("CARGO_PKG_VERSION")),
            published: HashMap::new(),
            loads: [[Load::default(); 3]; 9],
            last: None,
        }
    }

    /// Every topic and its value at `now`, `uptime` after start.
    pub(crate) fn values(
        &mut self,
        s: &Sample,
        now: Instant,
        uptime: Duration,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(64);
        let mut put =
            |topic: &str, value: String| out.push((format!("$SYS/broker/{topic}"), value));
        put("version", self.version.clone());
        put("uptime", format!("{} seconds", uptime.as_secs()));
        for f in all().filter(|f| !f.sys.is_empty()) {
            let Some(total) = f.total(s) else {
                continue;
            };
            let total = (total as u64).to_string();
            for topic in f.sys {
                put(topic, total.clone());
            }
        }
        put("messages/stored", s.stored_messages().to_string());
        put("store/messages/count", s.stored_messages().to_string());
        put("store/messages/bytes", s.stored_bytes().to_string());

        let totals = load_totals(s);
        if let Some((then, before)) = self.last {
            let elapsed = now.saturating_duration_since(then);
            for (i, loads) in self.loads.iter_mut().enumerate() {
                let delta = totals[i].saturating_sub(before[i]);
                for (load, (_, window)) in loads.iter_mut().zip(WINDOWS) {
                    load.update(delta, elapsed, window);
                }
            }
        }
        self.last = Some((now, totals));
        for ((name, _), loads) in LOADS.iter().zip(&self.loads) {
            for (load, (window, _)) in loads.iter().zip(WINDOWS) {
                put(
                    &format!("load/{name}/{window}"),
                    format!("{:.2}", load.value),
                );
            }
        }
        out
    }

    /// The topics whose value changed since the last call (all of them the first time).
    pub(crate) fn update(
        &mut self,
        s: &Sample,
        now: Instant,
        uptime: Duration,
    ) -> Vec<(String, String)> {
        let all = self.values(s, now, uptime);
        let mut changed = Vec::new();
        for (topic, value) in all {
            if self.published.get(&topic) != Some(&value) {
                self.published.insert(topic.clone(), value.clone());
                changed.push((topic, value));
            }
        }
        changed
    }
}

/// Takes a router snapshot; `None` when the router is gone.
pub(crate) async fn snapshot(
    router: &mpsc::WeakSender<Command>,
    counters: &Arc<Counters>,
) -> Option<Sample> {
    let tx = router.upgrade()?;
    let (reply, rx) = oneshot::channel();
    tx.send(Command::Stats { reply }).await.ok()?;
    drop(tx);
    let snap = rx.await.ok()?;
    Some(Sample::new(Arc::clone(counters), snap))
}

/// Whether the router answers a ping within `limit` (its loop turns); false when it is gone,
/// stuck, or its queue stays full.
pub(crate) async fn ping_router(router: &mpsc::WeakSender<Command>, limit: Duration) -> bool {
    let Some(tx) = router.upgrade() else {
        return false;
    };
    let probe = async move {
        let (reply, rx) = oneshot::channel();
        tx.send(Command::Ping { reply }).await.ok()?;
        drop(tx);
        rx.await.ok()
    };
    matches!(tokio::time::timeout(limit, probe).await, Ok(Some(())))
}

/// Publishes the tree every `interval` until shutdown. Holds only a weak handle on the router,
/// so it never keeps the router alive.
pub(crate) async fn run(
    interval: Duration,
    router: mpsc::WeakSender<Command>,
    counters: Arc<Counters>,
    started: Instant,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tree = SysTree::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
            _ = tick.tick() => {}
        }
        let Some(sample) = snapshot(&router, &counters).await else {
            return;
        };
        let now = Instant::now();
        let changed = tree.update(&sample, now, now.saturating_duration_since(started));
        debug!(count = changed.len(), "$SYS update");
        for (topic, value) in changed {
            let message = Message {
                topic: topic.into(),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Properties::default(),
                expires_at: None,
                origin: None,
                publication: None,
            };
            let Some(tx) = router.upgrade() else { return };
            if tx.send(Command::PublishInternal { message }).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_converges_to_the_rate_with_a_virtual_clock() {
        // 10 events every 10 s is 60 per minute.
        let mut one = Load::default();
        let mut fifteen = Load::default();
        for _ in 0..6 {
            one.update(10, Duration::from_secs(10), 60.0);
            fifteen.update(10, Duration::from_secs(10), 900.0);
        }
        // After one minute the 1-minute average has covered 1 - e^-1 of the way.
        let expected = 60.0 * (1.0 - (-1.0f64).exp());
        assert!((one.value - expected).abs() < 1e-9, "{}", one.value);
        assert!(fifteen.value < one.value);
        for _ in 0..600 {
            one.update(10, Duration::from_secs(10), 60.0);
        }
        assert!((one.value - 60.0).abs() < 1e-6);
        // Silence decays it by e^-(t/window).
        one.update(0, Duration::from_secs(60), 60.0);
        assert!((one.value - 60.0 * (-1.0f64).exp()).abs() < 1e-6);
        // No time elapsed: unchanged.
        let before = one.value;
        one.update(5, Duration::ZERO, 60.0);
        assert_eq!(one.value, before);
    }

    #[test]
    fn first_update_publishes_everything_then_only_changes() {
        let t0 = Instant::now();
        let mut tree = SysTree::new();
        let counters = Arc::new(Counters::default());
        let s = Sample::new(Arc::clone(&counters), Default::default());
        let first = tree.update(&s, t0, Duration::from_secs(0));
        let topics: Vec<&str> = first.iter().map(|(t, _)| t.as_str()).collect();
        assert!(topics.contains(&"$SYS/broker/version"));
        assert!(topics.contains(&"$SYS/broker/retained messages/count"));
        assert!(topics.contains(&"$SYS/broker/load/sockets/15min"));
        assert_eq!(first.len(), 24 + 27);
        // Ten seconds later, 6 PUBLISH received: uptime, the counters and their loads change.
        counters.publish_in(QoS::AtMostOnce, 0);
        for _ in 0..5 {
            counters.publish_in(QoS::AtLeastOnce, 0);
        }
        let next = tree.update(&s, t0 + Duration::from_secs(10), Duration::from_secs(10));
        let map: HashMap<_, _> = next.into_iter().collect();
        assert_eq!(
            map.get("$SYS/broker/uptime").map(String::as_str),
            Some("10 seconds")
        );
        assert_eq!(
            map.get("$SYS/broker/publish/messages/received")
                .map(String::as_str),
            Some("6")
        );
        // rate 36/min; 1-minute load = 36 × (1 − e^(−10/60)) = 5.53
        assert_eq!(
            map.get("$SYS/broker/load/publish/received/1min")
                .map(String::as_str),
            Some("5.53")
        );
        assert!(!map.contains_key("$SYS/broker/version"));
        assert!(!map.contains_key("$SYS/broker/clients/total"));
        assert!(!map.contains_key("$SYS/broker/load/bytes/sent/1min"));
    }
}
