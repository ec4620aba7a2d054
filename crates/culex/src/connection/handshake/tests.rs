//! The CONNECT rules without a socket.

use bytes::Bytes;
use culex_config::Config;
use culex_proto::{Connect, LastWill, Properties, Protocol, QoS, ReasonCode};

use super::{
    check_after_auth, check_before_auth, connack_properties, negotiate_keep_alive, session_expiry,
};
use crate::context::{conn_limits, ConnLimits};

fn limits() -> ConnLimits {
    conn_limits(&Config::default())
}

fn connect(protocol: Protocol, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn will(payload: &'static [u8]) -> LastWill {
    LastWill {
        topic: "w".into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    }
}

fn refused(connect: &Connect, limits: &ConnLimits) -> Option<ReasonCode> {
    check_before_auth(connect, limits, false)
        .err()
        .map(|r| r.reason)
}

#[test]
fn empty_client_ids() {
    let mut l = limits();
    l.allow_zero_length_clientid = true;
    // 3.1 never allows one; 3.1.1 only with a clean session [MQTT-3.1.3-8]; 5 always (the
    // server assigns one).
    assert_eq!(
        refused(&connect(Protocol::V31, ""), &l),
        Some(ReasonCode::ClientIdentifierNotValid)
    );
    assert_eq!(refused(&connect(Protocol::V311, ""), &l), None);
    let mut persistent = connect(Protocol::V311, "");
    persistent.clean_start = false;
    assert_eq!(
        refused(&persistent, &l),
        Some(ReasonCode::ClientIdentifierNotValid)
    );
    assert_eq!(refused(&connect(Protocol::V5, ""), &l), None);
    l.allow_zero_length_clientid = false;
    for p in [Protocol::V311, Protocol::V5] {
        assert_eq!(
            refused(&connect(p, ""), &l),
            Some(ReasonCode::ClientIdentifierNotValid),
            "{p:?}"
        );
    }
}

#[test]
fn clientid_prefixes_and_will_size() {
    let mut l = limits();
    l.clientid_prefixes = Some("dev-".into());
    assert_eq!(refused(&connect(Protocol::V5, "dev-1"), &l), None);
    let r = check_before_auth(&connect(Protocol::V5, "other"), &l, false).unwrap_err();
    assert_eq!(r.reason, ReasonCode::NotAuthorized);
    assert!(r.log.is_some(), "an operator sees why");
    l.clientid_prefixes = None;
    l.message_size_limit = 4;
    for (protocol, want) in [
        (Protocol::V5, ReasonCode::PacketTooLarge),
        (Protocol::V311, ReasonCode::NotAuthorized),
    ] {
        let mut c = connect(protocol, "c");
        c.will = Some(will(b"12345"));
        assert_eq!(refused(&c, &l), Some(want), "{protocol:?}");
        c.will = Some(will(b"1234"));
        assert_eq!(refused(&c, &l), None, "{protocol:?}");
    }
}

/// The broker's own connections' identifiers (each bridge's local session, the cluster
/// link's) are refused to network clients, which would take those sessions over (and, for
/// the link's, every message of the cluster); its own connections use them, and need not
/// carry `clientid_prefixes`.
#[test]
fn the_broker_s_own_client_ids_are_reserved() {
    let mut config = Config::default();
    config.cluster.backplane = vec!["nats://127.0.0.1:4222".to_owned()];
    config.cluster.node_name = Some("n1".to_owned());
    config.bridges.push(culex_config::bridge::BridgeConfig::new(
        "sber",
        "127.0.0.1",
        1883,
    ));
    let mut l = conn_limits(&config);
    l.clientid_prefixes = Some("dev-".into());
    let bridge = config.bridges[0].local_clientid.clone();
    for id in [bridge.as_str(), "culex-cluster-n1", "culex-cluster-n2"] {
        let r = check_before_auth(&connect(Protocol::V5, id), &l, false).unwrap_err();
        assert_eq!(r.reason, ReasonCode::ClientIdentifierNotValid, "{id}");
        assert!(r.log.is_some(), "an operator sees why");
        assert_eq!(
            check_before_auth(&connect(Protocol::V5, id), &l, true),
            Ok(()),
            "{id}: the broker's own"
        );
    }
    assert_eq!(
        refused(&connect(Protocol::V5, "dev-culex-cluster-n1"), &l),
        None
    );
    // Without a cluster, the link's prefix is an ordinary client id.
    let plain = conn_limits(&Config::default());
    assert_eq!(
        refused(&connect(Protocol::V5, "culex-cluster-n1"), &plain),
        None
    );
}

#[test]
fn keep_alive_negotiation() {
    // Within the limit: kept.
    assert_eq!(negotiate_keep_alive(60, Protocol::V5, 600), Ok((60, None)));
    // Above it, or 0 under a limit: MQTT 5 is told the server's value; 3.1.1 above it is
    // refused (it cannot be told), and 0 is let through as Mosquitto does.
    assert_eq!(
        negotiate_keep_alive(900, Protocol::V5, 600),
        Ok((600, Some(600)))
    );
    assert_eq!(
        negotiate_keep_alive(0, Protocol::V5, 600),
        Ok((600, Some(600)))
    );
    assert_eq!(
        negotiate_keep_alive(900, Protocol::V311, 600),
        Err(ReasonCode::ClientIdentifierNotValid)
    );
    assert_eq!(negotiate_keep_alive(0, Protocol::V311, 600), Ok((0, None)));
    // No limit (the default 65535): 0 means none.
    assert_eq!(
        negotiate_keep_alive(0, Protocol::V5, u16::MAX),
        Ok((0, None))
    );
}

#[test]
fn after_authentication() {
    let mut l = limits();
    let mut c = connect(Protocol::V5, "c");
    assert_eq!(check_after_auth(&c, &l), Ok((60, None)));
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    assert_eq!(
        check_after_auth(&c, &l),
        Err(ReasonCode::BadAuthenticationMethod)
    );
    c.properties.authentication_method = None;
    let mut w = will(&[0xff]);
    w.properties.payload_format_indicator = Some(1);
    c.will = Some(w);
    assert_eq!(
        check_after_auth(&c, &l),
        Err(ReasonCode::PayloadFormatInvalid)
    );
    let mut w = will(b"ok");
    w.qos = QoS::ExactlyOnce;
    w.retain = true;
    c.will = Some(w);
    assert_eq!(check_after_auth(&c, &l), Ok((60, None)));
    l.retain_available = false;
    assert_eq!(
        check_after_auth(&c, &l),
        Err(ReasonCode::RetainNotSupported)
    );
    l.max_qos = QoS::AtLeastOnce;
    assert_eq!(check_after_auth(&c, &l), Err(ReasonCode::QoSNotSupported));
}

#[test]
fn session_expiry_by_version() {
    let mut c = connect(Protocol::V311, "c");
    assert_eq!(session_expiry(&c), 0);
    c.clean_start = false;
    assert_eq!(session_expiry(&c), u32::MAX);
    let mut c = connect(Protocol::V5, "c");
    assert_eq!(session_expiry(&c), 0);
    c.properties.session_expiry_interval = Some(120);
    assert_eq!(session_expiry(&c), 120);
}

#[test]
fn connack_tells_the_limits() {
    let mut l = limits();
    l.max_inflight_messages = 20;
    l.max_qos = QoS::AtLeastOnce;
    let p = connack_properties(&l, Some(30), Some("auto-1"), true, "auto-1");
    assert_eq!(p.receive_maximum, Some(20));
    assert_eq!(p.maximum_packet_size, Some(l.max_packet_size));
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.server_keep_alive, Some(30));
    assert_eq!(p.assigned_client_identifier.as_deref(), Some("auto-1"));
    assert_eq!(
        p.response_information.as_deref(),
        Some("culex/response/auto-1")
    );
    l.max_qos = QoS::ExactlyOnce;
    let p = connack_properties(&l, None, None, false, "c");
    assert_eq!(p.maximum_qos, None, "QoS 2 is the default");
    assert_eq!(p.assigned_client_identifier, None);
    assert_eq!(
        p.response_information, None,
        "only when asked [MQTT-3.1.2-28]"
    );
}
