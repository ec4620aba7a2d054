//! MQTT over WebSocket end to end, plain (`ws://`) and over TLS (`wss://`): `rumqttc`'s
//! WebSocket transport, and a raw tokio-tungstenite client that controls exactly how MQTT
//! packets fall into WebSocket messages.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::{Bytes, BytesMut};
use culex_config::{Config, Listener, ListenerProtocol, Tls};
use culex_proto::{
    decode, encode, Connect, Packet, Properties, Protocol, Publish, QoS as ProtoQoS, Subscribe,
    SubscribeFilter, SubscriptionOptions,
};
use culex_test_support::pki::Pki;
use culex_test_support::{TestBroker, WAIT};
use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, MqttOptions, QoS, TlsConfiguration, Transport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// A broker with one WebSocket listener on 127.0.0.1:0, with TLS if given.
async fn ws_broker(tls: Option<Tls>) -> Result<TestBroker> {
    let mut listener = Listener::new("127.0.0.1", 0).with_protocol(ListenerProtocol::Websockets);
    listener.tls = tls;
    let config = Config {
        listeners: vec![listener],
        ..Config::default()
    };
    TestBroker::start_exact(config).await
}

/// Subscribes, publishes and receives one message with `rumqttc`.
async fn rumqttc_round_trip(opts: MqttOptions, topic: &str) -> Result<()> {
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    client.subscribe(topic, QoS::AtLeastOnce).await?;
    let mut published = false;
    loop {
        let event = tokio::time::timeout(WAIT, eventloop.poll())
            .await
            .context("rumqttc timed out")??;
        match event {
            Event::Incoming(rumqttc::Packet::SubAck(_)) if !published => {
                client
                    .publish(topic, QoS::AtLeastOnce, false, "over websocket")
                    .await?;
                published = true;
            }
            Event::Incoming(rumqttc::Packet::Publish(p)) => {
                ensure!(
                    &p.payload[..] == b"over websocket",
                    "payload {:?}",
                    p.payload
                );
                return Ok(());
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn rumqttc_over_ws_and_wss() -> Result<()> {
    let broker = ws_broker(None).await?;
    let port = broker.port();
    let mut opts = MqttOptions::new("ws-rt", format!("ws://127.0.0.1:{port}/mqtt"), port);
    opts.set_transport(Transport::Ws);
    rumqttc_round_trip(opts, "ws/round/trip").await?;
    broker.stop().await;

    let pki = Pki::new()?;
    let broker = ws_broker(Some(pki.server_tls())).await?;
    let port = broker.port();
    let mut opts = MqttOptions::new("wss-rt", format!("wss://localhost:{port}/mqtt"), port);
    opts.set_transport(Transport::wss_with_config(TlsConfiguration::Simple {
        ca: pki.read(Pki::CA)?,
        alpn: None,
        client_auth: None,
    }));
    rumqttc_round_trip(opts, "wss/round/trip").await?;
    broker.stop().await;
    Ok(())
}

/// Opens a WebSocket on `stream` offering `protocols` (none: no header).
async fn ws_handshake<S>(
    stream: S,
    addr: SocketAddr,
    scheme: &str,
    protocols: Option<&str>,
) -> Result<(WebSocketStream<S>, Option<String>), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request =
        format!("{scheme}://localhost:{}/any/path", addr.port()).into_client_request()?;
    if let Some(p) = protocols {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).map_err(|e| WsError::HttpFormat(e.into()))?,
        );
    }
    let (ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((ws, chosen))
}

/// Reads messages until one whole packet is decoded.
async fn recv_packet<S>(ws: &mut WebSocketStream<S>, buf: &mut BytesMut) -> Result<Packet>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        if let Some(p) = decode(buf, Some(Protocol::V5), u32::MAX)? {
            return Ok(p);
        }
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("timed out waiting for a message")?
            .context("connection ended")??;
        match msg {
            Message::Binary(data) => buf.extend_from_slice(&data),
            Message::Ping(_) | Message::Pong(_) => {}
            other => bail!("unexpected message {other:?}"),
        }
    }
}

fn bytes_of(packet: &Packet) -> Result<Vec<u8>> {
    let mut out = BytesMut::new();
    encode(packet, Protocol::V5, &mut out)?;
    Ok(out.to_vec())
}

/// CONNECT split over three messages; SUBSCRIBE, PUBLISH and PINGREQ in one message.
async fn packets_across_and_within_messages<S>(mut ws: WebSocketStream<S>) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect = bytes_of(&Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "raw-ws".to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    })))?;
    ensure!(connect.len() > 4);
    for part in [&connect[..1], &connect[1..4], &connect[4..]] {
        ws.send(Message::Binary(Bytes::copy_from_slice(part)))
            .await?;
    }
    let mut buf = BytesMut::new();
    match recv_packet(&mut ws, &mut buf).await? {
        Packet::ConnAck(ack) => ensure!(ack.reason_code.as_u8() == 0, "{ack:?}"),
        other => bail!("expected CONNACK, got {other:?}"),
    }

    let mut several = bytes_of(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "ws/raw".to_owned(),
            options: SubscriptionOptions {
                qos: ProtoQoS::AtMostOnce,
                ..SubscriptionOptions::default()
            },
        }],
        properties: Properties::default(),
    }))?;
    several.extend(bytes_of(&Packet::PingReq)?);
    ws.send(Message::Binary(several.into())).await?;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv_packet(&mut ws, &mut buf).await?);
    }
    ensure!(
        got.iter().any(|p| matches!(p, Packet::SubAck(_)))
            && got.iter().any(|p| matches!(p, Packet::PingResp)),
        "{got:?}"
    );

    // A PUBLISH to our own subscription and a PINGREQ in one message, the PUBLISH's last
    // bytes in the next message together with another PINGREQ.
    let publish = bytes_of(&Packet::Publish(Publish {
        dup: false,
        qos: ProtoQoS::AtMostOnce,
        retain: false,
        topic: "ws/raw".to_owned(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from_static(b"split payload"),
    }))?;
    let ping = bytes_of(&Packet::PingReq)?;
    let cut = publish.len() - 3;
    let mut first = ping.clone();
    first.extend_from_slice(&publish[..cut]);
    let mut second = publish[cut..].to_vec();
    second.extend_from_slice(&ping);
    ws.send(Message::Binary(first.into())).await?;
    ws.send(Message::Binary(second.into())).await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(recv_packet(&mut ws, &mut buf).await?);
    }
    ensure!(
        got.iter().filter(|p| matches!(p, Packet::PingResp)).count() == 2,
        "{got:?}"
    );
    ensure!(
        got.iter().any(
            |p| matches!(p, Packet::Publish(p) if p.topic == "ws/raw" && &p.payload[..] == b"split payload")
        ),
        "{got:?}"
    );

    // A WebSocket ping is answered with a pong.
    ws.send(Message::Ping(Bytes::from_static(b"hi"))).await?;
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no pong")?
            .context("closed")??;
        if let Message::Pong(data) = msg {
            ensure!(&data[..] == b"hi");
            break;
        }
    }
    ws.close(None).await?;
    Ok(())
}

#[tokio::test]
async fn raw_packets_across_and_within_messages_plain() -> Result<()> {
    let broker = ws_broker(None).await?;
    let tcp = TcpStream::connect(broker.addr).await?;
    let (ws, chosen) = ws_handshake(tcp, broker.addr, "ws", Some("mqtt")).await?;
    ensure!(chosen.as_deref() == Some("mqtt"), "{chosen:?}");
    packets_across_and_within_messages(ws).await?;
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn raw_packets_across_and_within_messages_tls() -> Result<()> {
    let pki = Pki::new()?;
    let broker = ws_broker(Some(pki.server_tls())).await?;
    let tcp = TcpStream::connect(broker.addr).await?;
    let tls = TlsConnector::from(pki.client_config(None, &[])?)
        .connect(Pki::server_name()?, tcp)
        .await?;
    let (ws, chosen) = ws_handshake(tls, broker.addr, "wss", Some("mqtt")).await?;
    ensure!(chosen.as_deref() == Some("mqtt"), "{chosen:?}");
    packets_across_and_within_messages(ws).await?;
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn subprotocol_is_checked_and_echoed() -> Result<()> {
    let broker = ws_broker(None).await?;
    let addr = broker.addr;

    // MQTT 3.1 clients offer mqttv3.1.
    let (mut ws, chosen) = ws_handshake(
        TcpStream::connect(addr).await?,
        addr,
        "ws",
        Some("mqttv3.1"),
    )
    .await?;
    ensure!(chosen.as_deref() == Some("mqttv3.1"), "{chosen:?}");
    ws.close(None).await?;

    // A list: mqtt is picked.
    let (mut ws, chosen) = ws_handshake(
        TcpStream::connect(addr).await?,
        addr,
        "ws",
        Some("chat, mqtt"),
    )
    .await?;
    ensure!(chosen.as_deref() == Some("mqtt"), "{chosen:?}");
    ws.close(None).await?;

    // No MQTT subprotocol, or none at all: refused with 400 ([MQTT-6.0.0-3]).
    for offered in [Some("chat"), None] {
        match ws_handshake(TcpStream::connect(addr).await?, addr, "ws", offered).await {
            Err(WsError::Http(response)) => {
                ensure!(
                    response.status() == 400,
                    "{offered:?}: {}",
                    response.status()
                )
            }
            Ok(_) => bail!("{offered:?}: upgrade accepted"),
            Err(e) => bail!("{offered:?}: {e}"),
        }
    }
    ensure!(
        broker
            .server()
            .counters()
            .websocket_handshake_failures
            .get()
            >= 2
    );

    // Not a WebSocket request at all: closed without an upgrade.
    let mut raw = culex_test_support::RawClient::connect(addr, Protocol::V311).await?;
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let reply = raw.read_until_closed().await?;
    ensure!(
        !String::from_utf8_lossy(&reply).contains(" 101 "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn text_message_is_a_protocol_error() -> Result<()> {
    let broker = ws_broker(None).await?;
    let tcp = TcpStream::connect(broker.addr).await?;
    let (mut ws, _) = ws_handshake(tcp, broker.addr, "ws", Some("mqtt")).await?;
    ws.send(Message::text("CONNECT")).await?;
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no close")?
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("error instead of close: {e}"),
            None => bail!("closed without a close frame"),
        }
    };
    let frame = close.context("close without a code")?;
    ensure!(frame.code == CloseCode::Protocol, "{frame:?}");
    broker.stop().await;
    Ok(())
}

#[tokio::test]
async fn slow_websocket_clients_do_not_block_accepting() -> Result<()> {
    let broker = ws_broker(None).await?;
    // A client that never sends its upgrade request.
    let _silent = TcpStream::connect(broker.addr).await?;
    let port = broker.port();
    let mut opts = MqttOptions::new("ws-after-silent", format!("ws://127.0.0.1:{port}/"), port);
    opts.set_transport(Transport::Ws);
    tokio::time::timeout(
        Duration::from_secs(5),
        rumqttc_round_trip(opts, "ws/after/silent"),
    )
    .await
    .context("blocked")??;
    broker.stop().await;
    Ok(())
}
