//! End-to-end bridge tests: an in-process Culex as the local broker, real `mosquitto`
//! processes as remote brokers.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use culex_bridge::{BridgeProtocol, Direction, LinkState, TopicRule};
use culex_proto::QoS;

fn qos_of(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_out_in_and_both_with_prefix_remapping_at_every_qos() {
    if !have_mosquitto() {
        return;
    }
    let remote = Mosquitto::start("").await;
    let local = local_broker().await;
    let mut cfg = fast_config("fwd", remote.port);
    cfg.topics = vec![
        TopicRule::new("out/#", Direction::Out, QoS::ExactlyOnce)
            .with_prefixes("local/", "remote/"),
        TopicRule::new("in/#", Direction::In, QoS::ExactlyOnce).with_prefixes("local/", "remote/"),
        TopicRule::new("both/#", Direction::Both, QoS::ExactlyOnce).with_prefixes("l/", "r/"),
    ];
    let bridge = Running::spawn(cfg, local.addr);
    bridge.connected().await;

    let mut rsub = client(remote.port, "rsub").await;
    subscribe(&mut rsub, "#", QoS::ExactlyOnce).await;
    let mut lsub = client(local.port(), "lsub").await;
    subscribe(&mut lsub, "local/in/#", QoS::ExactlyOnce).await;
    subscribe(&mut lsub, "l/#", QoS::ExactlyOnce).await;
    let mut lpub = client(local.port(), "lpub").await;
    let mut rpub = client(remote.port, "rpub").await;

    for q in 0..=2u8 {
        // out: local/out/... → remote/out/...
        publish(
            &mut lpub,
            &format!("local/out/q{q}"),
            &format!("o{q}"),
            qos_of(q),
        )
        .await;
        let m = recv(&mut rsub).await;
        assert_eq!(m.topic, format!("remote/out/q{q}"));
        assert_eq!(&m.payload[..], format!("o{q}").as_bytes());
        assert_eq!(m.qos, qos_of(q));
        // in: remote/in/... → local/in/...
        publish(
            &mut rpub,
            &format!("remote/in/q{q}"),
            &format!("i{q}"),
            qos_of(q),
        )
        .await;
        let m = recv(&mut lsub).await;
        assert_eq!(m.topic, format!("local/in/q{q}"));
        assert_eq!(&m.payload[..], format!("i{q}").as_bytes());
        assert_eq!(m.qos, qos_of(q));
        // The remote subscriber sees the remote publication itself too.
        let m = recv(&mut rsub).await;
        assert_eq!(m.topic, format!("remote/in/q{q}"));
    }
    // Not remapped: local topics outside the rules stay local, remote ones stay remote.
    publish(&mut lpub, "local/elsewhere", "x", QoS::AtLeastOnce).await;
    publish(&mut rpub, "remote/out/not-in", "x", QoS::AtLeastOnce).await;
    let seen = recv_all(&mut rsub, Duration::from_millis(500)).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].topic, "remote/out/not-in");
    assert!(recv_all(&mut lsub, Duration::from_millis(300))
        .await
        .is_empty());

    // both, each way.
    publish(&mut lpub, "l/both/x", "from-local", QoS::AtLeastOnce).await;
    publish(&mut rpub, "r/both/y", "from-remote", QoS::AtLeastOnce).await;
    let mut remote_seen: Vec<_> = recv_all(&mut rsub, Duration::from_millis(700))
        .await
        .into_iter()
        .map(|m| m.topic)
        .collect();
    remote_seen.sort();
    assert_eq!(remote_seen, ["r/both/x", "r/both/y"]);
    let mut local_seen: Vec<_> = recv_all(&mut lsub, Duration::from_millis(300))
        .await
        .into_iter()
        .map(|m| m.topic)
        .collect();
    local_seen.sort();
    assert_eq!(local_seen, ["l/both/x", "l/both/y"]);
    let s = bridge.stats();
    assert!(s.forwarded_out.load(Ordering::Relaxed) >= 4);
    assert!(s.forwarded_in.load(Ordering::Relaxed) >= 4);
    assert_eq!(s.connects.load(Ordering::Relaxed), 1);
    assert!(s.last_connect_unix.load(Ordering::Relaxed) > 0);
    bridge.stop().await;
}

/// `both` rules must not loop, whichever loop protection applies: MQTT 5 No Local, the 3.1.1
/// bridge bit, or origin tracking for a 3.1.1 remote without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_does_not_loop() {
    if !have_mosquitto() {
        return;
    }
    for (label, protocol, try_private) in [
        ("v5-no-local", BridgeProtocol::V5, false),
        ("v311-bridge-bit", BridgeProtocol::V311, true),
        ("v311-origin-tracking", BridgeProtocol::V311, false),
    ] {
        let remote = Mosquitto::start("").await;
        let local = local_broker().await;
        let mut cfg = fast_config(label, remote.port);
        cfg.protocol = protocol;
        cfg.try_private = try_private;
        cfg.topics = vec![TopicRule::new("loop/#", Direction::Both, QoS::AtLeastOnce)];
        let bridge = Running::spawn(cfg, local.addr);
        bridge.connected().await;
        let mut lsub = client(local.port(), "lsub").await;
        subscribe(&mut lsub, "loop/#", QoS::AtLeastOnce).await;
        let mut rsub = client(remote.port, "rsub").await;
        subscribe(&mut rsub, "loop/#", QoS::AtLeastOnce).await;
        let mut lpub = client(local.port(), "lpub").await;
        let mut rpub = client(remote.port, "rpub").await;
        for i in 0..5 {
            publish(&mut lpub, "loop/a", &format!("L{i}"), QoS::AtLeastOnce).await;
            publish(&mut rpub, "loop/b", &format!("R{i}"), QoS::AtLeastOnce).await;
        }
        let l = recv_all(&mut lsub, Duration::from_millis(1500)).await;
        let r = recv_all(&mut rsub, Duration::from_millis(300)).await;
        // Each side sees each message exactly once: no echo, no loop.
        assert_eq!(l.len(), 10, "{label}: local saw {l:?}");
        assert_eq!(r.len(), 10, "{label}: remote saw {r:?}");
        let out = bridge.stats().forwarded_out.load(Ordering::Relaxed);
        let inn = bridge.stats().forwarded_in.load(Ordering::Relaxed);
        assert_eq!((out, inn), (5, 5), "{label}");
        bridge.stop().await;
    }
}

/// The remote goes away: QoS 1 messages published meanwhile are queued and delivered, in order,
/// once it is back on the same port; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_down_store_and_forward_in_order() {
    if !have_mosquitto() {
        return;
    }
    // Persistence, so the remote subscriber's session (and what is queued for it) survives
    // the restart.
    // queue_qos0_messages: the remote keeps the QoS 0 state for the offline subscriber, so the
    // test can see which one the bridge sent.
    let mut remote = Mosquitto::start("persistence true\nqueue_qos0_messages true\n").await;
    let local = local_broker().await;
    let mut cfg = fast_config("sf", remote.port);
    cfg.topics = vec![TopicRule::new("q/#", Direction::Out, QoS::AtLeastOnce)];
    let bridge = Running::spawn(cfg, local.addr);
    bridge.connected().await;

    let mut rsub = client_with(
        culex_client::transport::TransportOptions::tcp("127.0.0.1", remote.port),
        "rsub-sf",
        None,
        false,
    )
    .await;
    subscribe(&mut rsub, "q/#", QoS::AtLeastOnce).await;
    let mut lpub = client(local.port(), "lpub").await;
    for i in 0..50 {
        publish(&mut lpub, "q/n", &i.to_string(), QoS::AtLeastOnce).await;
    }
    let mut got: Vec<u32> = Vec::new();
    while got.len() < 50 {
        got.push(
            String::from_utf8_lossy(&recv(&mut rsub).await.payload)
                .parse()
                .unwrap(),
        );
    }
    // Acknowledge everything before going: mosquitto 2.0.11 skips a queued message when it
    // restores a session with messages still in flight and its packet ids collide.
    rsub.disconnect().await.unwrap();

    remote.stop();
    wait_for("link down", || {
        bridge.stats().state() != LinkState::Connected
    })
    .await;
    for i in 50..250 {
        publish(&mut lpub, "q/n", &i.to_string(), QoS::AtLeastOnce).await;
    }
    // QoS 0 while down: only the latest message per topic is kept; the older one is counted.
    publish(&mut lpub, "q/zero", "1000", QoS::AtMostOnce).await;
    publish(&mut lpub, "q/zero", "1001", QoS::AtMostOnce).await;
    wait_for("qos0 state replaced", || {
        bridge.stats().dropped_qos0_offline.load(Ordering::Relaxed) == 1
    })
    .await;
    // The bridge holds the local broker's in-flight window (20 by default) plus the QoS 0
    // state; every other message waits, unacknowledged, in its local session.
    wait_for("window held", || {
        bridge.stats().queued.load(Ordering::Relaxed) == 21
    })
    .await;

    remote.restart().await;
    bridge.connected().await;
    let mut rsub = client_with(
        culex_client::transport::TransportOptions::tcp("127.0.0.1", remote.port),
        "rsub-sf",
        None,
        false,
    )
    .await;
    let mut zero = Vec::new();
    while got.len() < 250 || zero.is_empty() {
        let m = recv(&mut rsub).await;
        let n: u32 = String::from_utf8_lossy(&m.payload).parse().unwrap();
        if m.topic == "q/zero" {
            zero.push(n);
            continue;
        }
        if got.last().is_some_and(|&last| n <= last) {
            // A redelivery is allowed only as a duplicate marked DUP.
            assert!(
                m.dup || got.contains(&n),
                "out of order: {n} after {:?}",
                got.last()
            );
            continue;
        }
        got.push(n);
    }
    assert_eq!(got, (0..250).collect::<Vec<_>>());
    assert_eq!(zero, [1001], "only the latest QoS 0 state goes out");
    wait_for("nothing held", || {
        bridge.stats().queued.load(Ordering::Relaxed) == 0
    })
    .await;
    assert_eq!(bridge.stats().connects.load(Ordering::Relaxed), 2);
    assert_eq!(bridge.stats().disconnects.load(Ordering::Relaxed), 1);
    bridge.stop().await;
}

/// Backoff with real sockets: attempts against a closed port are spaced between min and max;
/// after a successful CONNACK the next delay starts again from min.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_spacing_and_reset_after_success() {
    if !have_mosquitto() {
        return;
    }
    let port = free_port();
    let local = local_broker().await;
    let mut cfg = fast_config("backoff", port);
    cfg.backoff_min = Duration::from_millis(200);
    cfg.backoff_max = Duration::from_millis(400);
    cfg.topics = vec![TopicRule::new("x/#", Direction::Out, QoS::AtLeastOnce)];
    let bridge = Running::spawn(cfg, local.addr);
    // What the backoff drew, read at each new attempt (not attempts counted in a wall-clock
    // window, which a busy machine skews): every delay within [200, 400] ms.
    let delays = observe_delays(&bridge, 5).await;
    for delay in &delays {
        assert!((200..=400).contains(delay), "delays {delays:?} ms");
    }
    // And attempts never come faster than the minimum: once `a` attempts have been seen,
    // attempt a + 4 is at least three full delays after attempt a + 1, which came after.
    let attempts = || bridge.stats().reconnect_attempts.load(Ordering::Relaxed);
    let a = attempts();
    let seen = std::time::Instant::now();
    wait_for("four more attempts", || attempts() >= a + 4).await;
    assert!(
        seen.elapsed() >= Duration::from_millis(3 * 200),
        "4 attempts in {:?}",
        seen.elapsed()
    );
    assert_eq!(bridge.stats().state(), LinkState::BackingOff);

    let mut remote = Mosquitto::start_on(port, "").await;
    bridge.connected().await;
    remote.kill();
    let attempts_before_loss = bridge.stats().reconnect_attempts.load(Ordering::Relaxed);
    wait_for("backing off again", || {
        bridge.stats().state() == LinkState::BackingOff
            && bridge.stats().reconnect_attempts.load(Ordering::Relaxed) > attempts_before_loss
    })
    .await;
    // Reset after success: the first delay is drawn from [min, 3 × min] again, capped at max.
    let delay = bridge.stats().last_backoff_ms.load(Ordering::Relaxed);
    assert!(
        (200..=400).contains(&delay),
        "first delay after a loss: {delay} ms"
    );
    bridge.stop().await;
}

/// The backoff delays drawn before the next `count` connect attempts (milliseconds), each read
/// when its attempt is seen to start.
async fn observe_delays(bridge: &Running, count: usize) -> Vec<u64> {
    let stats = bridge.stats();
    let mut delays = Vec::new();
    let mut attempts = stats.reconnect_attempts.load(Ordering::Relaxed);
    while delays.len() < count {
        wait_for("another connect attempt", || {
            stats.reconnect_attempts.load(Ordering::Relaxed) > attempts
        })
        .await;
        attempts = stats.reconnect_attempts.load(Ordering::Relaxed);
        match stats.last_backoff_ms.load(Ordering::Relaxed) {
            0 => {} // the first attempt: no delay drawn yet
            delay => delays.push(delay),
        }
    }
    delays
}

/// Wrong password: retried at the maximum delay, logged once, local clients unaffected.
#[tokio::test(flavor = "current_thread")]
async fn bad_credentials_retry_at_max_and_log_once() {
    if !have_mosquitto() {
        return;
    }
    let (logs, _guard) = capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    password_file(&pw, &[("bridge", "right")]);
    let remote = Mosquitto::start(&format!(
        "allow_anonymous false\npassword_file {}\n",
        pw.display()
    ))
    .await;
    let local = local_broker().await;
    let mut cfg = fast_config("creds", remote.port);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(600);
    cfg.remote_username = Some("bridge".into());
    cfg.remote_password = Some("wrong".into());
    cfg.topics = vec![TopicRule::new("c/#", Direction::Both, QoS::AtLeastOnce)];
    let bridge = Running::spawn(cfg, local.addr);
    // About the maximum (600 ms, jittered down to 80 %) every time, never the 50 ms minimum.
    let delays = observe_delays(&bridge, 4).await;
    for delay in &delays {
        assert!((480..=600).contains(delay), "delays {delays:?} ms");
    }
    let err = bridge.stats().last_error().unwrap();
    assert!(
        err.contains("not authorised") || err.contains("bad user name"),
        "{err}"
    );
    let text = logs.text();
    let loud = text
        .lines()
        .filter(|l| l.contains("refused the bridge's credentials"))
        .count();
    assert_eq!(loud, 1, "logged {loud} times:\n{text}");
    // The local broker keeps serving.
    let mut c = client(local.port(), "still-here").await;
    publish(&mut c, "c/x", "y", QoS::AtLeastOnce).await;
    bridge.stop().await;
}

/// A remote that hangs (SIGSTOP) is detected by keepalive; the bridge reconnects after
/// SIGCONT and the QoS 1 messages sent meanwhile all arrive (at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_remote_is_detected_by_keepalive() {
    if !have_mosquitto() {
        return;
    }
    let remote = Mosquitto::start("").await;
    let local = local_broker().await;
    let mut cfg = fast_config("frozen", remote.port);
    cfg.keepalive = Duration::from_secs(5);
    cfg.topics = vec![TopicRule::new("f/#", Direction::Out, QoS::AtLeastOnce)];
    let bridge = Running::spawn(cfg, local.addr);
    bridge.connected().await;
    let mut rsub = client_with(
        culex_client::transport::TransportOptions::tcp("127.0.0.1", remote.port),
        "rsub-frozen",
        None,
        false,
    )
    .await;
    subscribe(&mut rsub, "f/#", QoS::AtLeastOnce).await;
    drop(rsub);
    remote.signal("STOP");
    let mut lpub = client(local.port(), "lpub").await;
    for i in 0..20 {
        publish(&mut lpub, "f/n", &i.to_string(), QoS::AtLeastOnce).await;
    }
    let t0 = tokio::time::Instant::now();
    wait_for("keepalive to notice", || {
        bridge.stats().disconnects.load(Ordering::Relaxed) == 1
    })
    .await;
    // Ping after 5 s of silence, give up 5 s later (+ scheduling slack).
    assert!(
        t0.elapsed() <= Duration::from_secs(14),
        "{:?}",
        t0.elapsed()
    );
    remote.signal("CONT");
    bridge.connected().await;
    let mut rsub = client_with(
        culex_client::transport::TransportOptions::tcp("127.0.0.1", remote.port),
        "rsub-frozen",
        None,
        false,
    )
    .await;
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 20 && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), rsub.recv()).await {
            seen.insert(String::from_utf8_lossy(&m.payload).parse::<u32>().unwrap());
        }
    }
    assert_eq!(seen, (0..20).collect());
    bridge.stop().await;
}
