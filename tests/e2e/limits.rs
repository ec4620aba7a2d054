//! No option value can kill the broker: every numeric and duration option of mosquitto.conf,
//! at both edges of what it accepts, runs a connect/subscribe/publish/disconnect cycle that
//! exercises the clocks and sizes those options feed (persistent sessions, delayed wills,
//! message and session expiry at their wire maximums, a restart that restores them), and the
//! broker still answers afterwards; a value just beyond an edge is refused at load with an
//! error naming the option. Then random in-range values, as a property test.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use culex_config::{load_file, numeric_option_edges};
use culex_proto::{Packet, Protocol, QoS};
use culex_test_support::{RawClient, TestBroker};
use proptest::prelude::*;

use crate::*;

/// A mosquitto.conf with a store in `dir` and `extra` lines.
fn conf(dir: &Path, extra: &str) -> String {
    format!(
        "listener 0 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}\n{extra}\n",
        dir.display()
    )
}

/// Loads `text` as a mosquitto.conf file in `dir`.
fn load(dir: &Path, text: &str) -> Result<culex_config::Config, String> {
    let path = dir.join("edge.conf");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    load_file(&path)
        .map(|l| l.config)
        .map_err(|e| e.to_string())
}

/// The cycle: persistent 5.0 and 3.1.1 clients with the longest session expiry, keep alive and
/// will delay; a subscription; a retained message that never expires; both connections
/// dropped (wills and session expiry scheduled), resumed, and left. Refusals caused by the
/// option under test (a tiny packet size, one connection) are fine; a dead broker is not.
async fn cycle(addr: SocketAddr) {
    let mut v5 = connect_packet(Protocol::V5, "edge-v5", false);
    v5.keep_alive = u16::MAX;
    v5.properties.session_expiry_interval = Some(u32::MAX - 1);
    let mut w = will("edge/will", "gone", QoS::AtLeastOnce);
    w.properties.will_delay_interval = Some(u32::MAX);
    w.properties.message_expiry_interval = Some(u32::MAX);
    v5.will = Some(w);
    let mut v3 = connect_packet(Protocol::V311, "edge-v3", false);
    v3.keep_alive = u16::MAX;
    v3.will = Some(will("edge/will3", "gone", QoS::AtLeastOnce));
    for connect in [v5.clone(), v3.clone()] {
        let protocol = connect.protocol;
        if let Ok((mut c, ack)) = connect_with(addr, connect).await {
            if ack.reason_code.as_u8() == 0 {
                let _ = subscribe(&mut c, 1, "#", QoS::ExactlyOnce).await;
                let mut p = publish_packet("edge/retained", "r", QoS::AtLeastOnce, true, 2);
                if protocol.is_v5() {
                    p.properties.message_expiry_interval = Some(u32::MAX);
                }
                let _ = c.send(&Packet::Publish(p)).await;
                let _ = c.recv_within(Duration::from_secs(2)).await;
            }
            // Dropped without DISCONNECT: the will is scheduled and the session kept.
        }
    }
    for connect in [v5, v3] {
        if let Ok((c, ack)) = connect_with(addr, connect).await {
            if ack.reason_code.as_u8() == 0 {
                let _ = disconnect(c).await;
            }
        }
    }
}

/// The router answers: a fresh client gets a CONNACK (any reason code) within a generous
/// time. With `max_connections 1` the slot of the last connection may still be closing, so
/// a few tries are allowed.
async fn alive(addr: SocketAddr, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let mut c = RawClient::connect(addr, Protocol::V311).await?;
            c.send(&Packet::Connect(Box::new(connect_packet(
                Protocol::V311,
                "p",
                true,
            ))))
            .await?;
            c.recv_within(Duration::from_secs(5)).await
        };
        if let Ok(Some(Packet::ConnAck(_))) = attempt.await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: the broker no longer answers CONNECT");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `config`, runs the cycle, restarts it from its store (restoring sessions, wills and
/// expiries), and checks it still answers.
async fn survive(config: culex_config::Config, what: &str) -> Result<()> {
    let broker = TestBroker::start_with(config.clone())
        .await
        .with_context(|| format!("{what}: start"))?;
    cycle(broker.addr).await;
    alive(broker.addr, what).await?;
    broker.stop().await;
    let again = TestBroker::start_with(config)
        .await
        .with_context(|| format!("{what}: restart from the store"))?;
    alive(again.addr, &format!("{what} (restarted)")).await?;
    again.stop().await;
    Ok(())
}

#[tokio::test]
async fn every_numeric_option_at_its_edges_keeps_the_broker_running() -> Result<()> {
    let edges = numeric_option_edges();
    assert!(
        edges
            .iter()
            .any(|e| e.name == "persistent_client_expiration"),
        "the table lists the durations too"
    );
    for e in &edges {
        for value in &e.refused {
            let dir = tempfile::tempdir()?;
            match load(
                dir.path(),
                &conf(dir.path(), &format!("{} {value}", e.name)),
            ) {
                Ok(_) => bail!(
                    "{} {value}: accepted, but it is beyond the option's range",
                    e.name
                ),
                Err(msg) => anyhow::ensure!(
                    msg.contains(e.name),
                    "{} {value}: the error does not name the option: {msg}",
                    e.name
                ),
            }
        }
        for value in &e.accepted {
            let dir = tempfile::tempdir()?;
            let what = format!("{} {value}", e.name);
            let config = load(dir.path(), &conf(dir.path(), &what))
                .map_err(|m| anyhow::anyhow!("{what}: refused: {m}"))?;
            survive(config, &what).await?;
        }
    }
    Ok(())
}

/// The bridge's durations (`restart_timeout`, `idle_timeout`, `keepalive_interval`) at their
/// edges, on a bridge whose remote refuses connections (so it schedules retries).
#[tokio::test]
async fn bridge_durations_at_their_edges_keep_the_broker_running() -> Result<()> {
    let max = culex_config::MAX_DURATION.as_secs();
    let port = culex_test_support::free_port()?;
    for (lines, ok) in [
        (format!("restart_timeout {max}"), true),
        (format!("restart_timeout 1 {max}"), true),
        (format!("restart_timeout 1 {}", max + 1), false),
        (format!("restart_timeout {}", u64::MAX), false),
        (format!("start_type lazy\nidle_timeout {max}"), true),
        (format!("start_type lazy\nidle_timeout {}", max + 1), false),
        ("keepalive_interval 65535".to_owned(), true),
        ("keepalive_interval 65536".to_owned(), false),
    ] {
        let dir = tempfile::tempdir()?;
        let text = conf(
            dir.path(),
            &format!("connection edge\naddress 127.0.0.1:{port}\ntopic # out 1\n{lines}"),
        );
        let what = lines.replace('\n', "; ");
        match (load(dir.path(), &text), ok) {
            (Ok(config), true) => survive(config, &what).await?,
            (Err(m), true) => bail!("{what}: refused: {m}"),
            (Ok(_), false) => bail!("{what}: accepted, but it is beyond the range"),
            (Err(_), false) => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Random values inside each option's range, one option per case.
    #[test]
    fn random_in_range_values_keep_the_broker_running(pick in any::<prop::sample::Index>(), frac in 0.0f64..=1.0) {
        let edges: Vec<_> = numeric_option_edges()
            .into_iter()
            .filter(|e| e.accepted.iter().all(|v| v.parse::<i128>().is_ok()))
            .collect();
        let e = pick.get(&edges);
        let lo: i128 = e.accepted[0].parse().unwrap();
        let hi: i128 = e.accepted[1].parse().unwrap();
        // i128 → f64 loses precision only at the far end; clamp back into the range.
        let value = (lo + ((hi - lo) as f64 * frac) as i128).clamp(lo, hi);
        let what = format!("{} {value}", e.name);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let outcome: Result<()> = runtime.block_on(async {
            let dir = tempfile::tempdir()?;
            let config = load(dir.path(), &conf(dir.path(), &what))
                .map_err(|m| anyhow::anyhow!("{what}: refused: {m}"))?;
            survive(config, &what).await
        });
        prop_assert!(outcome.is_ok(), "{:?}", outcome);
    }
}
