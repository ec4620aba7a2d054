//! CONNECT / CONNACK: acceptance, client identifiers, protocol versions, ordering rules,
//! advertised limits and anonymous access.

use anyhow::Result;
use culex_config::Config;
use culex_proto::{Packet, Protocol, QoS, ReasonCode};
use culex_test_support::{RawClient, TestBroker};

use crate::*;

async fn accepted_clean_session_not_present(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_c, ack) = connect_with(broker.addr, connect_packet(protocol, "c1", true)).await?;
    assert_eq!(ack.reason_code.as_u8(), 0, "{ack:?}");
    // [MQTT-3.2.2-1] (3.1.1) / [MQTT-3.2.2-2] (5.0): clean start => session present 0.
    assert!(!ack.session_present, "{ack:?}");
    Ok(())
}

#[tokio::test]
async fn v311_connect_is_accepted_without_session_present() -> Result<()> {
    accepted_clean_session_not_present(Protocol::V311).await
}

#[tokio::test]
async fn v5_connect_is_accepted_without_session_present() -> Result<()> {
    accepted_clean_session_not_present(Protocol::V5).await
}

/// MQTT 3.1 has no session-present flag: the first byte of its CONNACK's variable header is
/// reserved (0), even when the server kept the session (3.1.1 sets it to 1 then).
#[tokio::test]
async fn v31_connack_has_no_session_present_flag_even_for_a_kept_session() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut c, _) = connect_ok(broker.addr, persistent_connect(Protocol::V31, "v31-keep")).await?;
    subscribe(&mut c, 1, "v31/keep", QoS::AtLeastOnce).await?;
    disconnect(c).await?;
    let mut c = RawClient::connect(broker.addr, Protocol::V31).await?;
    c.send(&Packet::Connect(Box::new(persistent_connect(
        Protocol::V31,
        "v31-keep",
    ))))
    .await?;
    let mut bytes = Vec::new();
    while bytes.len() < 4 {
        let more = c.read_some().await?;
        assert!(!more.is_empty(), "closed after {bytes:02x?}");
        bytes.extend(more);
    }
    assert_eq!(
        bytes[..4],
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK bytes {bytes:02x?}"
    );
    // The same session with 3.1.1 reports it.
    let (_, ack) =
        connect_with(broker.addr, persistent_connect(Protocol::V311, "v31-keep")).await?;
    assert!(ack.session_present);
    Ok(())
}

#[tokio::test]
async fn v31_connect_subscribe_publish_smoke() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut c, ack) = connect_with(
        broker.addr,
        connect_packet(Protocol::V31, "v31-client", true),
    )
    .await?;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);
    let codes = subscribe(&mut c, 1, "v31/t", QoS::AtLeastOnce).await?;
    assert_eq!(codes[0].as_u8(), 1);
    let mut publisher = connect_clean(broker.addr, Protocol::V31, "v31-pub").await?;
    publish(
        &mut publisher,
        "v31/t",
        "hello 3.1",
        QoS::AtLeastOnce,
        false,
        2,
    )
    .await?;
    publish(
        &mut publisher,
        "v31/t",
        "exactly 3.1",
        QoS::ExactlyOnce,
        false,
        3,
    )
    .await?;
    let p = recv_publish_ack(&mut c).await?;
    assert_eq!(p.topic, "v31/t");
    assert_eq!(text(&p), "hello 3.1");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let p = recv_publish_ack(&mut c).await?;
    assert_eq!(
        (text(&p).as_str(), p.qos),
        ("exactly 3.1", QoS::AtLeastOnce)
    );
    disconnect(c).await
}

#[tokio::test]
async fn v5_zero_length_client_id_is_assigned_an_identifier() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_c, ack) = connect_with(broker.addr, connect_packet(Protocol::V5, "", true)).await?;
    assert_eq!(ack.reason_code.as_u8(), 0, "{ack:?}");
    // [MQTT-3.1.3-7] / [MQTT-3.2.2-16]: the assigned id is returned in CONNACK.
    let id = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("CONNACK without Assigned Client Identifier");
    assert!(!id.is_empty());
    Ok(())
}

#[tokio::test]
async fn v5_zero_length_client_ids_get_distinct_identifiers() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_a, ack_a) = connect_with(broker.addr, connect_packet(Protocol::V5, "", true)).await?;
    let (_b, ack_b) = connect_with(broker.addr, connect_packet(Protocol::V5, "", true)).await?;
    let a = ack_a.properties.assigned_client_identifier.clone().unwrap();
    let b = ack_b.properties.assigned_client_identifier.clone().unwrap();
    assert_ne!(a, b, "two clients were assigned the same identifier");
    Ok(())
}

#[tokio::test]
async fn v311_zero_length_client_id_is_accepted_with_clean_session() -> Result<()> {
    let broker = TestBroker::start().await?;
    // [MQTT-3.1.3-6]
    let (mut c, ack) = connect_with(broker.addr, connect_packet(Protocol::V311, "", true)).await?;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);
    // It is a working connection.
    subscribe(&mut c, 1, "zero/t", QoS::AtMostOnce).await?;
    publish(&mut c, "zero/t", "x", QoS::AtMostOnce, false, 0).await?;
    assert_eq!(text(&recv_publish(&mut c).await?), "x");
    Ok(())
}

#[tokio::test]
async fn v311_zero_length_client_id_with_persistent_session_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (mut c, ack) = connect_with(broker.addr, connect_packet(Protocol::V311, "", false)).await?;
    // [MQTT-3.1.3-8]: CONNACK return code 0x02 (Identifier rejected), then close.
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(!ack.session_present);
    // [MQTT-3.2.2-5]
    let rest = c.expect_closed().await?;
    assert!(rest.is_empty(), "{rest:?}");
    Ok(())
}

fn raw_connect(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = mqtt_str(name);
    body.push(level);
    body.push(0x02); // clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    body.extend_from_slice(&mqtt_str(b"proto-client"));
    raw_packet(0x10, &body)
}

async fn unsupported_protocol_gets_connack_1_then_close(name: &[u8], level: u8) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = RawClient::connect(broker.addr, Protocol::V311).await?;
    c.send_bytes(&raw_connect(name, level)).await?;
    // [MQTT-3.1.2-2]: CONNACK with return code 0x01 (unacceptable protocol level), then close.
    let bytes = c.read_until_closed().await?;
    assert_eq!(bytes, [0x20, 0x02, 0x00, 0x01], "got {bytes:02x?}");
    Ok(())
}

#[tokio::test]
async fn protocol_level_6_is_refused_with_connack_1_then_closed() -> Result<()> {
    unsupported_protocol_gets_connack_1_then_close(b"MQTT", 6).await
}

#[tokio::test]
async fn protocol_name_mqisdp_with_level_4_is_refused_with_connack_1_then_closed() -> Result<()> {
    unsupported_protocol_gets_connack_1_then_close(b"MQIsdp", 4).await
}

async fn second_connect_closes(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = connect_clean(broker.addr, protocol, "twice").await?;
    c.send(&Packet::Connect(Box::new(connect_packet(
        protocol, "twice", true,
    ))))
    .await?;
    // [MQTT-3.1.0-2]: a second CONNECT is a protocol violation (5.0: DISCONNECT 0x82).
    expect_closed_with(&mut c, &[0x82]).await
}

#[tokio::test]
async fn v311_second_connect_on_a_connection_closes_it() -> Result<()> {
    second_connect_closes(Protocol::V311).await
}

#[tokio::test]
async fn v5_second_connect_on_a_connection_gets_disconnect_0x82() -> Result<()> {
    second_connect_closes(Protocol::V5).await
}

async fn first_packet_not_connect_closes(protocol: Protocol) -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = RawClient::connect(broker.addr, protocol).await?;
    // [MQTT-3.1.0-1]: PINGREQ before CONNECT.
    c.send(&Packet::PingReq).await?;
    let bytes = c.read_until_closed().await?;
    assert!(bytes.is_empty(), "got {bytes:02x?}");
    Ok(())
}

#[tokio::test]
async fn v311_first_packet_other_than_connect_closes_connection() -> Result<()> {
    first_packet_not_connect_closes(Protocol::V311).await
}

#[tokio::test]
async fn v5_first_packet_other_than_connect_closes_connection() -> Result<()> {
    first_packet_not_connect_closes(Protocol::V5).await
}

#[tokio::test]
async fn v5_first_packet_publish_closes_connection() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut c = RawClient::connect(broker.addr, Protocol::V5).await?;
    c.send(&Packet::Publish(publish_packet(
        "t",
        "x",
        QoS::AtMostOnce,
        false,
        0,
    )))
    .await?;
    let bytes = c.read_until_closed().await?;
    assert!(bytes.is_empty(), "got {bytes:02x?}");
    Ok(())
}

#[tokio::test]
async fn v5_connack_advertises_server_limits() -> Result<()> {
    let broker = TestBroker::start().await?;
    let (_c, ack) = connect_ok(broker.addr, connect_packet(Protocol::V5, "limits", true)).await?;
    let p = &ack.properties;
    let defaults = Config::embedded_default();
    assert_eq!(
        p.receive_maximum,
        Some(defaults.limits.max_inflight_messages),
        "{p:?}"
    );
    assert_eq!(
        p.maximum_packet_size,
        Some(defaults.limits.max_packet_size),
        "{p:?}"
    );
    assert!(p.topic_alias_maximum.is_some(), "{p:?}");
    assert_eq!(p.retain_available, Some(1), "{p:?}");
    assert_eq!(p.shared_subscription_available, Some(1), "{p:?}");
    assert_eq!(p.wildcard_subscription_available, Some(1), "{p:?}");
    Ok(())
}

#[tokio::test]
async fn v5_connack_reflects_configured_limits() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_inflight_messages = 7;
    config.limits.max_packet_size = 4096;
    config.mqtt.retain_available = false;
    let broker = TestBroker::start_with(config).await?;
    let (_c, ack) = connect_ok(broker.addr, connect_packet(Protocol::V5, "limits", true)).await?;
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(7), "{p:?}");
    assert_eq!(p.maximum_packet_size, Some(4096), "{p:?}");
    assert_eq!(p.retain_available, Some(0), "{p:?}");
    Ok(())
}

async fn anonymous_refused(protocol: Protocol) -> Result<()> {
    let mut config = Config::embedded_default();
    config.security.allow_anonymous = false;
    let broker = TestBroker::start_with(config).await?;
    let (mut c, ack) = connect_with(broker.addr, connect_packet(protocol, "anon", true)).await?;
    // 3.1.1: return code 5 (not authorized); 5.0: 0x87.
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized, "{ack:?}");
    assert!(!ack.session_present);
    let rest = c.expect_closed().await?;
    assert!(rest.is_empty(), "{rest:?}");
    Ok(())
}

#[tokio::test]
async fn v311_anonymous_client_refused_with_code_5_when_not_allowed() -> Result<()> {
    anonymous_refused(Protocol::V311).await
}

#[tokio::test]
async fn v5_anonymous_client_refused_with_0x87_when_not_allowed() -> Result<()> {
    anonymous_refused(Protocol::V5).await
}

/// At the `max_connections` limit, a client that closes its connection and connects again at
/// once gets in: the slot of a socket its client closed is free even if the server has not yet
/// noticed the close when the new socket arrives (it waits briefly for it).
#[tokio::test]
async fn max_connections_connect_close_connect_at_the_limit() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_connections = Some(1);
    let broker = TestBroker::start_with(config).await?;
    for i in 0..200 {
        let (c, ack) = connect_with(
            broker.addr,
            connect_packet(Protocol::V311, &format!("cc-{i}"), true),
        )
        .await
        .map_err(|e| e.context(format!("connect {i} at the limit")))?;
        assert_eq!(ack.reason_code, ReasonCode::Success);
        if i % 2 == 0 {
            drop(c);
        } else {
            // DISCONNECT, and the next connect without waiting for the server's close.
            let mut c = c;
            c.send(&Packet::Disconnect(culex_proto::Disconnect::new(
                ReasonCode::Success,
            )))
            .await?;
        }
    }
    broker.stop().await;
    Ok(())
}

/// `max_connections`: a socket past the limit is closed without an answer, and a slot is free
/// again once a connection ends (it is held by the connection's task until then).
#[tokio::test]
async fn max_connections_refuses_the_extra_socket_and_frees_slots() -> Result<()> {
    let mut config = Config::embedded_default();
    config.limits.max_connections = Some(2);
    let broker = TestBroker::start_with(config).await?;
    let a = connect_v311(broker.addr, "mc-a").await?;
    let _b = connect_v311(broker.addr, "mc-b").await?;
    let mut extra = RawClient::connect(broker.addr, Protocol::V311).await?;
    extra
        .send(&Packet::Connect(Box::new(connect_packet(
            Protocol::V311,
            "mc-c",
            true,
        ))))
        .await
        .ok();
    // Closed without a CONNACK (a reset, if the CONNECT arrived after the close, is closed too;
    // a timeout means the server kept the socket).
    match extra.read_until_closed().await {
        Ok(answered) => assert!(answered.is_empty(), "{answered:?}"),
        Err(e) => {
            let reset = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
            assert!(reset, "the extra socket was not closed: {e:#}");
        }
    }
    drop(a);
    // The slot comes back when the first connection's task ends.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (mut c, ack) =
            match connect_with(broker.addr, connect_packet(Protocol::V311, "mc-d", true)).await {
                Ok(x) => x,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
        assert_eq!(ack.reason_code, ReasonCode::Success);
        c.send(&Packet::Disconnect(culex_proto::Disconnect::new(
            ReasonCode::Success,
        )))
        .await?;
        break;
    }
    broker.stop().await;
    Ok(())
}

/// `clientid_prefixes` (Mosquitto): only client identifiers with the prefix may connect; the
/// others are refused as not authorised, as Mosquitto refuses them.
#[tokio::test]
async fn clientid_prefixes_refuses_other_client_ids() -> Result<()> {
    let mut config = Config::embedded_default();
    config.sessions.clientid_prefixes = Some("secure-".into());
    let broker = TestBroker::start_with(config).await?;
    for protocol in [Protocol::V311, Protocol::V5] {
        connect_ok(broker.addr, connect_packet(protocol, "secure-1", true)).await?;
        let (_, ack) = connect_with(broker.addr, connect_packet(protocol, "mqtt-1", true)).await?;
        assert_eq!(ack.reason_code, ReasonCode::NotAuthorized, "{protocol:?}");
    }
    Ok(())
}

/// `socket_domain ipv4` listens on IPv4 only; `bind_interface` restricts a listener to one
/// interface (here the loopback `lo`), and a missing interface fails startup naming the option.
#[tokio::test]
async fn socket_domain_and_bind_interface() -> Result<()> {
    use culex_config::{Listener, SocketDomain};
    let config = Config {
        listeners: vec![Listener {
            socket_domain: Some(SocketDomain::Ipv4),
            ..Listener::all_interfaces(0)
        }],
        ..Config::default()
    };
    let broker = TestBroker::start_exact(config).await?;
    let addrs = broker.local_addrs().to_vec();
    assert!(
        !addrs.is_empty() && addrs.iter().all(|a| a.is_ipv4()),
        "{addrs:?}"
    );
    broker.stop().await;

    let config = Config {
        listeners: vec![Listener {
            bind_interface: Some("lo".into()),
            ..Listener::new("127.0.0.1", 0)
        }],
        ..Config::default()
    };
    let broker = match TestBroker::start_exact(config).await {
        Ok(b) => b,
        // SO_BINDTODEVICE needs root or CAP_NET_RAW (CI runs as root).
        Err(e) if format!("{e:#}").contains("not permitted") => {
            eprintln!("SKIPPED: bind_interface needs CAP_NET_RAW here: {e:#}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    connect_ok(broker.addr, connect_packet(Protocol::V311, "on-lo", true)).await?;
    broker.stop().await;

    let config = Config {
        listeners: vec![Listener {
            bind_interface: Some("nonexistent0".into()),
            ..Listener::new("127.0.0.1", 0)
        }],
        ..Config::default()
    };
    let e = match TestBroker::start_exact(config).await {
        Ok(_) => anyhow::bail!("a listener on a missing interface started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("bind_interface nonexistent0"), "{e}");
    Ok(())
}
