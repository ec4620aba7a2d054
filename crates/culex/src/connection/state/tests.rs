//! [`ConnState`] without a socket: packets in, encoded packets and router commands out.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use culex_broker::{BrokerSettings, Command, Delivery, DisconnectKind, Message, Outbound};
use culex_config::{Config, ListenerProtocol, Security};
use culex_proto::{
    decode, Disconnect, Packet, Properties, Protocol, PubResp, Publish, QoS, ReasonCode, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use tokio::sync::mpsc;

use super::{ConnState, Ending, Output, Rare};
use crate::connection::aliases::Aliases;
use crate::context::{conn_limits, ConnLimits, ListenerCtx, Shared};
use crate::counters::Counters;
use crate::login_gate::LoginGate;
use crate::security::SecurityHandle;

/// A connected client's state, as after an accepted CONNECT with `protocol`.
struct Setup {
    protocol: Protocol,
    limits: ConnLimits,
    acl: Option<&'static str>,
    /// Password file text; with one, anonymous access is off.
    passwords: Option<String>,
    mount: Option<&'static str>,
    /// The broker's own connection (a bridge, the cluster link), with this client id.
    internal: Option<&'static str>,
}

impl Setup {
    fn new(protocol: Protocol) -> Self {
        Setup {
            protocol,
            limits: conn_limits(&Config::default()),
            acl: None,
            passwords: None,
            mount: None,
            internal: None,
        }
    }

    fn build(self) -> (ConnState, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut security = Security::default();
        if let Some(acl) = self.acl {
            let path = dir.path().join("acl");
            std::fs::write(&path, acl).expect("write acl");
            security.acl_file = Some(path);
        }
        if let Some(passwords) = &self.passwords {
            let path = dir.path().join("passwd");
            std::fs::write(&path, passwords).expect("write password file");
            security.password_file = Some(path);
            security.allow_anonymous = false;
        }
        let gate = Arc::new(LoginGate::with_threads(1, 0));
        let security = Arc::new(match self.internal {
            Some(_) => SecurityHandle::internal(),
            None => SecurityHandle::load(&security, gate).expect("security"),
        });
        let listener = Arc::new(ListenerCtx {
            local: "127.0.0.1:1883".parse().expect("addr"),
            protocol: ListenerProtocol::Mqtt,
            tls: None,
            security,
            queue: None,
            mount_point: self.mount.map(Arc::from),
        });
        // The state never sends on the channel itself: its commands go to `Output`.
        let (router, _) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            router,
            limits: Arc::new(self.limits),
            broker: BrokerSettings::default(),
            counters: Arc::new(Counters::default()),
            cluster: None,
        });
        let peer = "127.0.0.1:50000".parse().expect("addr");
        let mut state = ConnState::new(7, peer, listener, shared, None, None);
        state.protocol = self.protocol;
        state.client_id = Arc::from(self.internal.unwrap_or("c1"));
        state.session_expiry = 0;
        (state, dir)
    }
}

fn v5() -> (ConnState, tempfile::TempDir) {
    Setup::new(Protocol::V5).build()
}

fn publish(topic: &str, qos: QoS, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: Properties::default(),
        payload: Bytes::from_static(b"hello"),
    })
}

/// The packets written to the client, decoded.
fn written(state: &ConnState, out: &mut Output) -> Vec<Packet> {
    let mut packets = Vec::new();
    let mut buf: BytesMut = out.wbuf.split();
    while let Some(p) = decode(&mut buf, Some(state.protocol), u32::MAX).expect("decodes") {
        packets.push(p);
    }
    assert!(buf.is_empty(), "a partial packet was written");
    packets
}

fn reason(end: Option<Ending>) -> Option<ReasonCode> {
    end.expect("the connection ends").send
}

fn ack_of(p: &Packet) -> (&'static str, u16, ReasonCode) {
    match p {
        Packet::PubAck(r) => ("PUBACK", r.packet_id, r.reason_code),
        Packet::PubRec(r) => ("PUBREC", r.packet_id, r.reason_code),
        Packet::PubComp(r) => ("PUBCOMP", r.packet_id, r.reason_code),
        other => panic!("not an acknowledgement: {other:?}"),
    }
}

/// The publication a message from the cluster link names, in the property the link adds.
fn routed_publication(setup: Setup, client_id: Option<&'static str>) -> (Option<u64>, usize) {
    let (mut s, _dir) = Setup {
        internal: client_id,
        ..setup
    }
    .build();
    let mut out = Output::default();
    let mut p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: Some(5),
        properties: Properties::default(),
        payload: Bytes::from_static(b"hello"),
    };
    p.properties.user_properties = vec![
        ("k".into(), "v".into()),
        (
            culex_cluster::envelope::PUBLICATION_PROPERTY.into(),
            "42".into(),
        ),
    ];
    assert!(s.on_packet(Packet::Publish(p), &mut out).is_none());
    match out.commands.pop_front() {
        Some(Command::Publish {
            publish,
            publication,
            ..
        }) => (publication, publish.properties.user_properties.len()),
        other => panic!("not routed: {other:?}"),
    }
}

#[test]
fn only_the_cluster_link_names_the_publication_of_its_messages() {
    let mut cluster = conn_limits(&Config::default());
    cluster.reserved_client_prefix = Some(culex_cluster::link::LOCAL_CLIENT_PREFIX.into());
    let with = |limits: &ConnLimits| Setup {
        limits: limits.clone(),
        ..Setup::new(Protocol::V5)
    };
    // The link's own connection: the property is taken off and names the publication.
    assert_eq!(
        routed_publication(with(&cluster), Some("culex-cluster-node1")),
        (Some(42), 1)
    );
    // A network client, a bridge (internal, another id), a broker outside a cluster: the
    // property is the client's own and goes on to subscribers as it is.
    assert_eq!(routed_publication(with(&cluster), None), (None, 2));
    assert_eq!(
        routed_publication(with(&cluster), Some("bridge-local")),
        (None, 2)
    );
    let single = conn_limits(&Config::default());
    assert_eq!(
        routed_publication(with(&single), Some("culex-cluster-node1")),
        (None, 2)
    );
}

#[test]
fn qos1_is_routed_and_acknowledged_by_the_connection() {
    let (mut s, _dir) = v5();
    let mut out = Output::default();
    assert!(s
        .on_packet(publish("a/b", QoS::AtLeastOnce, 5), &mut out)
        .is_none());
    match out.commands.pop_front() {
        Some(Command::Publish { publish, ack, .. }) => {
            assert_eq!(publish.topic, "a/b");
            assert!(!ack, "without flow control the connection answers");
        }
        other => panic!("expected a Publish command, got {other:?}"),
    }
    let acks = written(&s, &mut out);
    assert_eq!(acks.len(), 1);
    assert_eq!(ack_of(&acks[0]), ("PUBACK", 5, ReasonCode::Success));
}

#[test]
fn acl_denied_publishes_are_acknowledged_not_routed() {
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut setup = Setup::new(protocol);
        setup.acl = Some("topic readwrite allowed/#\n");
        let (mut s, _dir) = setup.build();
        let mut out = Output::default();
        for (qos, id) in [
            (QoS::AtMostOnce, 0),
            (QoS::AtLeastOnce, 1),
            (QoS::ExactlyOnce, 2),
        ] {
            assert!(s
                .on_packet(publish("denied/x", qos, id), &mut out)
                .is_none());
        }
        assert!(
            out.commands.is_empty(),
            "{protocol:?}: nothing reaches the router"
        );
        let expected = if protocol.is_v5() {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        };
        let acks: Vec<_> = written(&s, &mut out).iter().map(ack_of).collect();
        assert_eq!(
            acks,
            [("PUBACK", 1, expected), ("PUBREC", 2, expected)],
            "{protocol:?}"
        );
        assert_eq!(s.shared.counters.acl_denied_publish.get(), 3);
        // 3.1.1 has no failure PUBREC: the client sends PUBREL, and gets PUBCOMP for it.
        let rel = Packet::PubRel(PubResp::new(2));
        assert!(s.on_packet(rel, &mut out).is_none());
        let comp: Vec<_> = written(&s, &mut out).iter().map(ack_of).collect();
        let comp_reason = if protocol.is_v5() {
            ReasonCode::PacketIdentifierNotFound
        } else {
            ReasonCode::Success
        };
        assert_eq!(comp, [("PUBCOMP", 2, comp_reason)], "{protocol:?}");
        // An allowed topic is routed.
        assert!(s
            .on_packet(publish("allowed/x", QoS::AtMostOnce, 0), &mut out)
            .is_none());
        assert!(matches!(
            out.commands.pop_front(),
            Some(Command::Publish { .. })
        ));
    }
}

#[test]
fn qos2_beyond_the_receive_maximum_ends_the_connection() {
    let mut setup = Setup::new(Protocol::V5);
    setup.limits.max_inflight_messages = 2;
    let (mut s, _dir) = setup.build();
    let mut out = Output::default();
    assert!(s
        .on_packet(publish("t", QoS::ExactlyOnce, 1), &mut out)
        .is_none());
    assert!(s
        .on_packet(publish("t", QoS::ExactlyOnce, 2), &mut out)
        .is_none());
    // A retransmission of an id already held is answered again, not counted twice.
    assert!(s
        .on_packet(publish("t", QoS::ExactlyOnce, 2), &mut out)
        .is_none());
    assert_eq!(
        out.commands.len(),
        2,
        "the retransmission is not routed again"
    );
    let end = s.on_packet(publish("t", QoS::ExactlyOnce, 3), &mut out);
    assert_eq!(reason(end), Some(ReasonCode::ReceiveMaximumExceeded));
    // PUBREL frees a slot.
    let mut out = Output::default();
    assert!(s
        .on_packet(Packet::PubRel(PubResp::new(1)), &mut out)
        .is_none());
    assert!(s
        .on_packet(publish("t", QoS::ExactlyOnce, 3), &mut out)
        .is_none());
}

#[test]
fn inbound_topic_aliases_resolve_and_bad_ones_end_the_connection() {
    let (mut s, _dir) = v5();
    let mut out = Output::default();
    let aliased = |topic: &str, alias: u16| {
        let mut p = publish(topic, QoS::AtMostOnce, 0);
        if let Packet::Publish(p) = &mut p {
            p.properties.topic_alias = Some(alias);
        }
        p
    };
    assert!(s.on_packet(aliased("long/topic", 3), &mut out).is_none());
    assert!(s.on_packet(aliased("", 3), &mut out).is_none());
    let topics: Vec<_> = out
        .commands
        .drain(..)
        .map(|c| match c {
            Command::Publish { publish, .. } => {
                assert_eq!(publish.properties.topic_alias, None, "not forwarded");
                publish.topic
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, ["long/topic", "long/topic"]);
    let end = s.on_packet(aliased("", 9), &mut out);
    assert_eq!(reason(end), Some(ReasonCode::ProtocolError));
    let (mut s, _dir) = v5();
    let end = s.on_packet(aliased("x", 0), &mut out);
    assert_eq!(reason(end), Some(ReasonCode::TopicAliasInvalid));
    let (mut s, _dir) = v5();
    let end = s.on_packet(aliased("x", 1000), &mut out);
    assert_eq!(reason(end), Some(ReasonCode::TopicAliasInvalid));
}

#[test]
fn outbound_topic_aliases_are_assigned_then_reused() {
    let (mut s, _dir) = v5();
    s.aliases = Aliases::toward(4);
    let mut out = Output::default();
    let message = Arc::new(Message {
        topic: Arc::from("sensors/kitchen/temp"),
        payload: Bytes::from_static(b"21"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
        origin: None,
        publication: None,
    });
    let deliver = || {
        Outbound::Deliver(Delivery {
            message: Arc::clone(&message),
            qos: QoS::AtMostOnce,
            packet_id: None,
            dup: false,
            retain: false,
            subscription_ids: Default::default(),
            expiry_interval: None,
        })
    };
    assert!(s.on_outbound(deliver(), &mut out).is_none());
    assert!(s.on_outbound(deliver(), &mut out).is_none());
    let sent: Vec<_> = written(&s, &mut out)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (p.topic, p.properties.topic_alias),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("sensors/kitchen/temp".to_string(), Some(1)),
            (String::new(), Some(1))
        ]
    );
}

#[test]
fn server_disconnect_reasons() {
    // Each way the state ends a connection, with the reason an MQTT 5 client is sent.
    type Tweak = fn(&mut Setup);
    let cases: Vec<(&str, Tweak, Packet, ReasonCode)> = vec![
        (
            "QoS above maximum_qos",
            |s| s.limits.max_qos = QoS::AtLeastOnce,
            publish("t", QoS::ExactlyOnce, 1),
            ReasonCode::QoSNotSupported,
        ),
        (
            "retain not available",
            |s| s.limits.retain_available = false,
            {
                let mut p = publish("t", QoS::AtMostOnce, 0);
                if let Packet::Publish(p) = &mut p {
                    p.retain = true;
                }
                p
            },
            ReasonCode::RetainNotSupported,
        ),
        (
            "QoS 0 payload not UTF-8 as announced",
            |_| {},
            {
                let mut p = publish("t", QoS::AtMostOnce, 0);
                if let Packet::Publish(p) = &mut p {
                    p.properties.payload_format_indicator = Some(1);
                    p.payload = Bytes::from_static(&[0xff, 0xfe]);
                }
                p
            },
            ReasonCode::PayloadFormatInvalid,
        ),
        (
            "AUTH without a method",
            |_| {},
            Packet::Auth(culex_proto::Auth {
                reason_code: ReasonCode::ContinueAuthentication,
                properties: Properties::default(),
            }),
            ReasonCode::BadAuthenticationMethod,
        ),
        (
            "a packet only servers send",
            |_| {},
            Packet::PingResp,
            ReasonCode::ProtocolError,
        ),
        (
            "DISCONNECT sets an expiry after CONNECT set 0",
            |_| {},
            {
                let mut d = Disconnect::new(ReasonCode::Success);
                d.properties.session_expiry_interval = Some(60);
                Packet::Disconnect(d)
            },
            ReasonCode::ProtocolError,
        ),
    ];
    for (name, tweak, packet, want) in cases {
        let mut setup = Setup::new(Protocol::V5);
        tweak(&mut setup);
        let (mut s, _dir) = setup.build();
        let mut out = Output::default();
        let end = s.on_packet(packet, &mut out).expect(name);
        assert_eq!(end.send, Some(want), "{name}");
        assert_eq!(
            end.kind,
            DisconnectKind::WithWill,
            "{name}: the will is sent"
        );
        // The DISCONNECT written says why, in its Reason String.
        s.farewell(&end, &mut out);
        match written(&s, &mut out).as_slice() {
            [Packet::Disconnect(d)] => {
                assert_eq!(d.reason_code, want, "{name}");
                assert_eq!(
                    d.properties.reason_string.as_deref(),
                    Some(end.why.as_str()),
                    "{name}"
                );
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // Closes the router asks for (session taken over, server shutting down, slow client).
    for code in [
        ReasonCode::SessionTakenOver,
        ReasonCode::ServerShuttingDown,
        ReasonCode::QuotaExceeded,
    ] {
        let (mut s, _dir) = v5();
        let end = s.on_outbound(Outbound::Close(code), &mut Output::default());
        assert_eq!(reason(end), Some(code));
    }
    // A 3.1.1 client is sent no DISCONNECT.
    let (mut s, _dir) = Setup::new(Protocol::V311).build();
    let mut out = Output::default();
    let end = s.on_packet(Packet::PingResp, &mut out).expect("ends");
    s.farewell(&end, &mut out);
    assert!(out.wbuf.is_empty());
}

#[test]
fn client_disconnect_decides_will_and_expiry() {
    let (mut s, _dir) = v5();
    s.session_expiry = 30;
    let mut d = Disconnect::new(ReasonCode::DisconnectWithWillMessage);
    d.properties.session_expiry_interval = Some(0);
    let end = s
        .on_packet(Packet::Disconnect(d), &mut Output::default())
        .expect("ends");
    assert_eq!(end.kind, DisconnectKind::WithWill);
    assert_eq!(end.session_expiry, Some(0));
    assert_eq!(end.send, None, "nothing is sent back");
    assert!(!end.linger);
    let end = s
        .on_packet(
            Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            &mut Output::default(),
        )
        .expect("ends");
    assert_eq!(end.kind, DisconnectKind::Normal);
}

#[test]
fn maximum_packet_size_drops_the_reason_string_then_the_packet() {
    let (mut s, _dir) = v5();
    let mut out = Output::default();
    // Room for a PUBACK with a reason code (4 bytes + header) but not for its Reason String.
    s.client_max_packet = 8;
    let mut ack = PubResp::new(1);
    ack.reason_code = ReasonCode::NotAuthorized;
    s.queue_explained(Packet::PubAck(ack), Some("a long explanation"), &mut out)
        .expect("encodes");
    match written(&s, &mut out).as_slice() {
        [Packet::PubAck(a)] => {
            assert_eq!(a.reason_code, ReasonCode::NotAuthorized);
            assert_eq!(a.properties.reason_string, None, "dropped to fit");
        }
        other => panic!("{other:?}"),
    }
    // A SUBACK with more reason codes than fit is not sent at all, and counted.
    s.client_max_packet = 6;
    let suback = Packet::SubAck(culex_proto::SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::GrantedQoS0; 8],
        properties: Properties::default(),
    });
    s.queue(suback, &mut out).expect("encodes");
    assert!(out.wbuf.is_empty());
    assert_eq!(s.shared.counters.dropped_too_large.get(), 1);
    // Request Problem Information 0: no Reason String on acknowledgements, but on DISCONNECT.
    let (mut s, _dir) = v5();
    s.problem_information = false;
    let mut ack = PubResp::new(1);
    ack.reason_code = ReasonCode::NotAuthorized;
    s.queue_explained(Packet::PubAck(ack), Some("why"), &mut out)
        .expect("encodes");
    s.farewell(
        &Ending::abnormal(Some(ReasonCode::ProtocolError), "why"),
        &mut out,
    );
    let reasons: Vec<_> = written(&s, &mut out)
        .into_iter()
        .map(|p| match p {
            Packet::PubAck(a) => a.properties.reason_string.clone(),
            Packet::Disconnect(d) => d.properties.reason_string.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(reasons, [None, Some("why".to_string())]);
}

#[test]
fn message_size_limit_refuses_with_quota_exceeded() {
    let mut setup = Setup::new(Protocol::V5);
    setup.limits.message_size_limit = 3;
    let (mut s, _dir) = setup.build();
    let mut out = Output::default();
    assert!(s
        .on_packet(publish("t", QoS::AtMostOnce, 0), &mut out)
        .is_none());
    assert!(s
        .on_packet(publish("t", QoS::AtLeastOnce, 1), &mut out)
        .is_none());
    assert!(s
        .on_packet(publish("t", QoS::ExactlyOnce, 2), &mut out)
        .is_none());
    assert!(out.commands.is_empty(), "nothing is routed");
    let acks: Vec<_> = written(&s, &mut out).iter().map(ack_of).collect();
    assert_eq!(
        acks,
        [
            ("PUBACK", 1, ReasonCode::QuotaExceeded),
            ("PUBREC", 2, ReasonCode::QuotaExceeded)
        ]
    );
    assert_eq!(s.shared.counters.dropped_too_large.get(), 3);
}

#[test]
fn under_pressure_the_router_answers_and_direct_answers_wait_their_turn() {
    let (mut s, _dir) = v5();
    let mut out = Output::default();
    assert!(s.on_outbound(Outbound::Pressure(true), &mut out).is_none());
    assert!(s
        .on_packet(publish("t", QoS::AtLeastOnce, 1), &mut out)
        .is_none());
    assert!(matches!(
        out.commands.pop_front(),
        Some(Command::Publish { ack: true, .. })
    ));
    assert!(out.wbuf.is_empty(), "no PUBACK of its own");
    assert!(s.on_outbound(Outbound::Pressure(false), &mut out).is_none());
    // The router still owes that PUBACK: a PINGRESP is direct, but a PUBCOMP goes through
    // the router so it cannot overtake it.
    assert!(s
        .on_packet(Packet::PubRel(PubResp::new(9)), &mut out)
        .is_none());
    assert!(matches!(
        out.commands.pop_front(),
        Some(Command::Ack { .. })
    ));
    // Once the router's answers are written, the connection answers directly again.
    for ack in [
        Packet::PubAck(PubResp::new(1)),
        Packet::PubComp(PubResp::new(9)),
    ] {
        assert!(s
            .on_outbound(Outbound::Packet(Box::new(ack)), &mut out)
            .is_none());
    }
    let _ = written(&s, &mut out);
    assert!(s
        .on_packet(publish("t", QoS::AtLeastOnce, 2), &mut out)
        .is_none());
    assert!(matches!(
        out.commands.pop_front(),
        Some(Command::Publish { ack: false, .. })
    ));
    let acks: Vec<_> = written(&s, &mut out).iter().map(ack_of).collect();
    assert_eq!(acks, [("PUBACK", 2, ReasonCode::Success)]);
}

#[test]
fn mount_point_and_bridge_bit_shape_subscriptions() {
    let mut setup = Setup::new(Protocol::V311);
    setup.mount = Some("site1/");
    let (mut s, _dir) = setup.build();
    s.bridge = true;
    let mut out = Output::default();
    let filter = |f: &str| SubscribeFilter {
        filter: f.into(),
        options: SubscriptionOptions::default(),
    };
    let sub = Subscribe {
        packet_id: 1,
        filters: vec![filter("a/#"), filter("$share/g/b")],
        properties: Properties::default(),
    };
    assert!(s.on_packet(Packet::Subscribe(sub), &mut out).is_none());
    match out.commands.pop_front() {
        Some(Command::Subscribe { subscribe, .. }) => {
            let filters: Vec<_> = subscribe
                .filters
                .iter()
                .map(|f| f.filter.as_str())
                .collect();
            assert_eq!(filters, ["site1/a/#", "$share/g/site1/b"]);
            assert!(subscribe
                .filters
                .iter()
                .all(|f| f.options.no_local && f.options.retain_as_published));
        }
        other => panic!("{other:?}"),
    }
    assert!(s
        .on_packet(publish("x", QoS::AtMostOnce, 0), &mut out)
        .is_none());
    match out.commands.pop_front() {
        Some(Command::Publish { publish, .. }) => assert_eq!(publish.topic, "site1/x"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn too_many_pending_answers_stop_reading() {
    let (mut s, _dir) = v5();
    let mut out = Output::default();
    let mut n = 0;
    while s.reading() {
        n += 1;
        let sub = Subscribe {
            packet_id: n,
            filters: vec![SubscribeFilter {
                filter: "t".into(),
                options: SubscriptionOptions::default(),
            }],
            properties: Properties::default(),
        };
        assert!(s.on_packet(Packet::Subscribe(sub), &mut out).is_none());
        assert!(n < 1000, "never stops reading");
    }
    assert_eq!(usize::from(n), super::MAX_PENDING_REPLIES);
    let suback = Packet::SubAck(culex_proto::SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::GrantedQoS0],
        properties: Properties::default(),
    });
    assert!(s
        .on_outbound(Outbound::Packet(Box::new(suback)), &mut out)
        .is_none());
    assert!(s.reading(), "an answer written makes room");
}

#[tokio::test]
async fn a_reload_that_removes_the_user_ends_the_connection() {
    let hash =
        |pw: &[u8]| culex_auth::password_hash(pw, culex_auth::HashKind::Sha512).expect("hash");
    let mut setup = Setup::new(Protocol::V5);
    setup.passwords = Some(format!("bob:{}\nann:{}\n", hash(b"pw"), hash(b"pw2")));
    let (mut s, dir) = setup.build();
    let security = std::sync::Arc::clone(&s.listener.security);
    let (user, admission) = security
        .authenticate(
            Some("bob"),
            Some(b"pw"),
            None,
            "127.0.0.1".parse().expect("ip"),
        )
        .await
        .expect("bob logs in");
    s.username = user;
    s.rare = Some(Rare::new(admission));
    let mut out = Output::default();
    // A reload that keeps bob's entry changes nothing.
    security.reload().expect("reload");
    assert!(s.on_outbound(Outbound::Recheck, &mut out).is_none());
    std::fs::write(dir.path().join("passwd"), format!("ann:{}\n", hash(b"pw2"))).expect("rewrite");
    security.reload().expect("reload");
    let end = s
        .on_outbound(Outbound::Recheck, &mut out)
        .expect("bob is disconnected");
    assert_eq!(end.send, Some(ReasonCode::NotAuthorized));
    assert_eq!(end.kind, DisconnectKind::WithWill);
    assert_eq!(s.shared.counters.revoked_connections.get(), 1);
    // An anonymous client goes too, since the password file turned anonymous access off.
    let mut anonymous = Setup::new(Protocol::V5);
    anonymous.passwords = Some(format!("ann:{}\n", hash(b"pw2")));
    let (mut s, _dir) = anonymous.build();
    let end = s.on_outbound(Outbound::Recheck, &mut out);
    assert_eq!(reason(end), Some(ReasonCode::NotAuthorized));
}
