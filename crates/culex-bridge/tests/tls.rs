//! TLS bridges, failover between addresses, and the Sber preset against a local TLS
//! `mosquitto` configured like the Sber cloud (no network to Sber here).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use culex_bridge::{BridgeConfig, BridgeTls, Direction, LinkState, TopicRule};
use culex_proto::QoS;
use culex_test_support::pki::Pki;

fn tls_listener(pki: &Pki) -> String {
    format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n",
        pki.path(Pki::CA).display(),
        pki.path(Pki::SERVER_CERT).display(),
        pki.path(Pki::SERVER_KEY).display()
    )
}

/// TLS with an extra CA file, and failover: the first address is down, the second serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_bridge_with_failover_to_the_second_address() {
    if !have_mosquitto() {
        return;
    }
    let pki = Pki::new().unwrap();
    let remote = Mosquitto::start(&tls_listener(&pki)).await;
    let local = local_broker().await;
    let dead = free_port();
    let mut cfg = fast_config("tls", remote.port);
    cfg.addresses = vec![
        ("127.0.0.1".into(), dead),
        ("127.0.0.1".into(), remote.port),
    ];
    cfg.tls = Some(BridgeTls {
        cafile: Some(pki.path(Pki::CA)),
        ..BridgeTls::default()
    });
    cfg.topics =
        vec![TopicRule::new("t/#", Direction::Both, QoS::AtLeastOnce).with_prefixes("", "site1/")];
    let bridge = Running::spawn(cfg, local.addr);
    bridge.connected().await;
    assert!(bridge.stats().reconnect_attempts.load(Ordering::Relaxed) >= 1);

    let ca = pki.path(Pki::CA);
    let mut rsub = client_with(tls_transport(remote.port, &ca), "rsub", None, true).await;
    subscribe(&mut rsub, "site1/#", QoS::AtLeastOnce).await;
    let mut lsub = client(local.port(), "lsub").await;
    subscribe(&mut lsub, "t/#", QoS::AtLeastOnce).await;
    let mut lpub = client(local.port(), "lpub").await;
    publish(&mut lpub, "t/up", "u", QoS::AtLeastOnce).await;
    assert_eq!(recv(&mut rsub).await.topic, "site1/t/up");
    assert_eq!(recv(&mut lsub).await.topic, "t/up"); // lsub's own copy of lpub's message
    let mut rpub = client_with(tls_transport(remote.port, &ca), "rpub", None, true).await;
    publish(&mut rpub, "site1/t/down", "d", QoS::AtLeastOnce).await;
    assert_eq!(recv(&mut lsub).await.topic, "t/down");
    bridge.stop().await;
}

/// A remote whose certificate chains to a CA the bridge does not trust is refused, and the
/// error says why; `bridge_insecure` does not help there (it only skips the host name check).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_refused() {
    if !have_mosquitto() {
        return;
    }
    let pki = Pki::new().unwrap();
    let remote = Mosquitto::start(&tls_listener(&pki)).await;
    let local = local_broker().await;
    let mut cfg = fast_config("untrusted", remote.port);
    cfg.tls = Some(BridgeTls {
        cafile: Some(pki.path(Pki::OTHER_CA)),
        insecure: true,
        ..BridgeTls::default()
    });
    cfg.topics = vec![TopicRule::new("t/#", Direction::Out, QoS::AtLeastOnce)];
    let bridge = Running::spawn(cfg, local.addr);
    wait_for("a failed attempt", || bridge.stats().last_error().is_some()).await;
    let err = bridge.stats().last_error().unwrap();
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    assert_ne!(bridge.stats().state(), LinkState::Connected);
    bridge.stop().await;
}

/// The Sber preset against a mosquitto set up like the Sber cloud: TLS, user name/password,
/// an ACL that lets the login write only `sberdevices/v1/<login>/up/#` and read only its
/// `down/#` and the global `__config`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sber_preset_against_a_sber_like_remote() {
    if !have_mosquitto() {
        return;
    }
    let login = "dev123";
    let pki = Pki::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    password_file(&passwd, &[(login, "s3cret"), ("cloud", "cloudpw")]);
    let acl = dir.path().join("acl");
    write_file(
        &acl,
        &format!(
            "user {login}\n\
             topic write sberdevices/v1/{login}/up/#\n\
             topic read sberdevices/v1/{login}/down/#\n\
             topic read sberdevices/v1/__config\n\
             user cloud\n\
             topic readwrite sberdevices/#\n"
        ),
    );
    let remote = Mosquitto::start(&format!(
        "{}allow_anonymous false\npassword_file {}\nacl_file {}\n",
        tls_listener(&pki),
        passwd.display(),
        acl.display()
    ))
    .await;
    let ca = pki.path(Pki::CA);
    let cloud_creds = Some(("cloud", "cloudpw"));
    let mut cloud = client_with(tls_transport(remote.port, &ca), "cloud", cloud_creds, true).await;
    subscribe(&mut cloud, "sberdevices/#", QoS::AtMostOnce).await;

    let local = local_broker().await;
    // The device list exists (retained) before the bridge connects: it must reach Sber first.
    let mut dev = client(local.port(), "device-agent").await;
    dev.publish(
        culex_client::Message::new("sber/up/config", "{\"devices\":[1,2]}", QoS::AtMostOnce)
            .retained(true),
    )
    .await
    .unwrap();
    let mut lsub = client(local.port(), "lsub").await;
    subscribe(&mut lsub, "sber/down/#", QoS::AtMostOnce).await;
    subscribe(&mut lsub, "sber/__config", QoS::AtMostOnce).await;
    subscribe(&mut lsub, "bridges/+/state", QoS::AtLeastOnce).await;

    let mut cfg = BridgeConfig::sber(login, "s3cret");
    cfg.validate().unwrap();
    // Point the preset at the test remote; everything else stays as the preset sets it.
    cfg.addresses = vec![("127.0.0.1".into(), remote.port)];
    cfg.tls.as_mut().unwrap().cafile = Some(ca.clone());
    // The preset's default is `$SYS/broker/connection/sber/state` (the connection name, never
    // the login); a broker refuses `$SYS` publications from ordinary clients, and here the
    // bridge dials the local broker over TCP like one (in the broker its connection is
    // internal).
    assert_eq!(
        cfg.notification_topic(),
        "$SYS/broker/connection/sber/state"
    );
    assert!(!cfg.outgoing_retain && cfg.republish_on_connect);
    cfg.notification_topic = Some("bridges/sber/state".into());
    let bridge = Running::spawn(cfg, local.addr);
    bridge.connected().await;

    let m = recv(&mut cloud).await;
    assert_eq!(m.topic, format!("sberdevices/v1/{login}/up/config"));
    assert_eq!(&m.payload[..], b"{\"devices\":[1,2]}");

    publish(&mut dev, "sber/up/status", "{\"on\":true}", QoS::AtMostOnce).await;
    let m = recv(&mut cloud).await;
    assert_eq!(m.topic, format!("sberdevices/v1/{login}/up/status"));

    publish(
        &mut cloud,
        &format!("sberdevices/v1/{login}/down/commands"),
        "cmd",
        QoS::AtMostOnce,
    )
    .await;
    publish(
        &mut cloud,
        "sberdevices/v1/__config",
        "cfg",
        QoS::AtMostOnce,
    )
    .await;
    // Another login's commands are not ours (the remote ACL would not deliver them anyway).
    publish(
        &mut cloud,
        "sberdevices/v1/other/down/commands",
        "no",
        QoS::AtMostOnce,
    )
    .await;
    let mut got = Vec::new();
    for m in recv_all(&mut lsub, Duration::from_millis(1500)).await {
        got.push((m.topic, String::from_utf8_lossy(&m.payload).into_owned()));
    }
    let state = |v: &str| ("bridges/sber/state".to_string(), v.to_string());
    assert!(got.contains(&state("1")), "{got:?}");
    got.retain(|t| !t.0.starts_with("bridges/"));
    assert_eq!(
        got,
        vec![
            ("sber/down/commands".to_string(), "cmd".to_string()),
            ("sber/__config".to_string(), "cfg".to_string()),
        ]
    );
    // The remote goes away: the notification says so.
    drop(cloud);
    let mut remote = remote;
    remote.kill();
    let m = recv(&mut lsub).await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("bridges/sber/state", &b"0"[..])
    );
    bridge.stop().await;
}
