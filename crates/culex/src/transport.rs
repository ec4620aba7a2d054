//! Listener transports: TLS (rustls, set up in [`crate::tls`]) and MQTT over WebSocket, in
//! front of the connection task.
//!
//! The accept loop only accepts sockets; everything that waits on the client (the TLS handshake,
//! the WebSocket upgrade) happens in the connection's own task, bounded by [`HANDSHAKE_TIMEOUT`],
//! so a slow or silent client never holds up accepting others. [`serve_accepted`] then hands the
//! resulting stream to `connection::serve`, which is generic over the stream type: plain TCP,
//! TLS, WebSocket, and WebSocket over TLS are four monomorphised calls.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use culex_broker::ConnId;
use culex_client::ws::WsByteStream;
use culex_config::ListenerProtocol;
use futures_util::future::Either;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::{debug, info};

use crate::connection::{self, Peer};
use crate::context::{ConnSlot, ListenerCtx, Shared};

/// How long a client has to finish the TLS handshake and the WebSocket upgrade (together).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// WebSocket subprotocols accepted, in order of preference: `mqtt` (MQTT 3.1.1 and 5.0, what
/// MQTT.js and Paho send) and `mqttv3.1` (MQTT 3.1 clients).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Room beyond `max_packet_size` in one WebSocket message, for small packets sent in the same
/// message as a maximum-size one.
const WS_MESSAGE_SLACK: usize = 64 * 1024;

/// How a handshake step ended.
enum Step<T> {
    Done(T),
    Failed(String),
    TimedOut,
    Shutdown,
}

/// Runs a handshake step until `deadline`, or until the server shuts down.
async fn step<T, E: fmt::Display>(
    fut: impl Future<Output = Result<T, E>>,
    deadline: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> Step<T> {
    if *shutdown.borrow() {
        return Step::Shutdown;
    }
    tokio::select! {
        r = tokio::time::timeout_at(deadline, fut) => match r {
            Ok(Ok(v)) => Step::Done(v),
            Ok(Err(e)) => Step::Failed(e.to_string()),
            Err(_) => Step::TimedOut,
        },
        _ = shutdown.changed() => Step::Shutdown,
    }
}

/// Serves one accepted socket: TLS handshake and/or WebSocket upgrade as the listener says (in
/// this task, bounded by [`HANDSHAKE_TIMEOUT`]), then the MQTT connection.
///
/// The future is the connection task itself (built before it is spawned, not an `async fn`, so
/// that it holds no copy of its arguments): `slot` is held until the connection ends.
pub(crate) fn serve_accepted(
    stream: TcpStream,
    addr: SocketAddr,
    ctx: Arc<ListenerCtx>,
    conn: ConnId,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    slot: ConnSlot,
) -> impl Future<Output = ()> + Send {
    if ctx.tls.is_none() && matches!(ctx.protocol, ListenerProtocol::Mqtt) {
        // Plain MQTT over TCP, the common case: served inline, so the connection's future is
        // part of the task's allocation instead of a second one.
        let peer = Peer {
            addr,
            listener: ctx,
            identity: None,
            client_cert: None,
        };
        return Either::Left(connection::serve_in_slot(
            stream,
            peer,
            conn,
            shared,
            shutdown,
            Some(slot),
        ));
    }
    // TLS and WebSocket state is larger: boxed, it does not widen every plain connection's task.
    Either::Right(Box::pin(serve_wrapped(
        stream, addr, ctx, conn, shared, shutdown, slot,
    )))
}

/// [`serve_accepted`] for TLS and/or WebSocket listeners.
async fn serve_wrapped(
    stream: TcpStream,
    addr: SocketAddr,
    ctx: Arc<ListenerCtx>,
    conn: ConnId,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    slot: ConnSlot,
) {
    let _slot = slot;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let peer = Peer {
        addr,
        listener: Arc::clone(&ctx),
        identity: None,
        client_cert: None,
    };
    let Some(tls) = ctx.tls.as_ref() else {
        match ctx.protocol {
            ListenerProtocol::Mqtt => {
                Box::pin(connection::serve(stream, peer, conn, shared, shutdown)).await;
            }
            ListenerProtocol::Websockets => {
                // Handshake futures are large (a WebSocket upgrade over TLS is ~18 KB) and
                // live only briefly: boxing them keeps every idle connection's task small.
                let upgraded =
                    Box::pin(upgrade(stream, &peer, &shared, deadline, &mut shutdown)).await;
                if let Some(ws) = upgraded {
                    Box::pin(connection::serve(ws, peer, conn, shared, shutdown)).await;
                }
            }
        }
        return;
    };
    // A TLS session is several KB; boxed, it does not widen every connection's future (and the
    // handshake's result is scoped so that it is not held beside it).
    let stream = match Box::pin(step(tls.acceptor().accept(stream), deadline, &mut shutdown)).await
    {
        Step::Done(s) => Box::new(s),
        Step::Shutdown => return,
        Step::TimedOut => {
            shared.counters.tls_handshake_failures.inc();
            debug!(peer = %addr, listener = tls.label(), "TLS handshake timed out");
            return;
        }
        Step::Failed(e) => {
            shared.counters.tls_handshake_failures.inc();
            let why = crate::tls_identity::explain_handshake_error(&e.to_string());
            info!(peer = %addr, listener = tls.label(), "TLS handshake failed: {why}");
            return;
        }
    };
    let mut peer = peer;
    // Kept to check the certificate again when the CAs or CRLs are reloaded.
    peer.client_cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect()));
    if let Some(option) = tls.identity_option() {
        match certificate_identity(&stream, option == "use_subject_as_username") {
            Ok(name) => peer.identity = Some(name),
            Err(why) => {
                shared.counters.auth_failures.inc();
                info!(
                    peer = %addr,
                    listener = tls.label(),
                    "connection refused: {option} is set and {why}"
                );
                return;
            }
        }
    }
    match ctx.protocol {
        ListenerProtocol::Mqtt => {
            Box::pin(connection::serve(stream, peer, conn, shared, shutdown)).await;
        }
        ListenerProtocol::Websockets => {
            let upgraded = Box::pin(upgrade(stream, &peer, &shared, deadline, &mut shutdown)).await;
            if let Some(ws) = upgraded {
                Box::pin(connection::serve(ws, peer, conn, shared, shutdown)).await;
            }
        }
    }
}

/// The subject CN (or, with `whole_subject`, the RFC 2253 subject) of the client's verified
/// certificate.
fn certificate_identity(
    stream: &TlsStream<TcpStream>,
    whole_subject: bool,
) -> Result<String, &'static str> {
    let (_, session) = stream.get_ref();
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the client sent no certificate")?;
    if whole_subject {
        crate::tls_identity::subject(cert.as_ref()).ok_or("the client certificate has no subject")
    } else {
        crate::tls_identity::common_name(cert.as_ref())
            .ok_or("the client certificate has no subject CN")
    }
}

/// The WebSocket upgrade: checks the subprotocol and answers with the one chosen.
async fn upgrade<S>(
    stream: S,
    peer: &Peer,
    shared: &Shared,
    deadline: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<WsByteStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max = usize::try_from(shared.limits.max_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_add(WS_MESSAGE_SLACK);
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let accept =
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose_subprotocol, Some(config));
    match step(accept, deadline, shutdown).await {
        Step::Done(ws) => Some(WsByteStream::new(ws)),
        Step::Shutdown => None,
        Step::TimedOut => {
            shared.counters.websocket_handshake_failures.inc();
            debug!(peer = %peer.addr, listener = %peer.listener.local, "WebSocket upgrade timed out");
            None
        }
        Step::Failed(e) => {
            shared.counters.websocket_handshake_failures.inc();
            info!(peer = %peer.addr, listener = %peer.listener.local, "WebSocket upgrade failed: {e}");
            None
        }
    }
}

/// The upgrade callback: picks `mqtt` or `mqttv3.1` from `Sec-WebSocket-Protocol` and echoes it
/// (MQTT 5.0 [MQTT-6.0.0-3], [MQTT-6.0.0-4]); refuses the upgrade (400) when neither is offered.
#[allow(clippy::result_large_err)] // The signature is tungstenite's.
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    match SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
        Some(chosen) => {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(chosen),
            );
            Ok(response)
        }
        None => {
            let mut refusal = ErrorResponse::new(Some(
                "MQTT over WebSocket needs the subprotocol 'mqtt' (or 'mqttv3.1') in Sec-WebSocket-Protocol\n"
                    .to_owned(),
            ));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            Err(refusal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(protocols: &[&str]) -> Request {
        let mut b = Request::builder().uri("/mqtt");
        for p in protocols {
            b = b.header(header::SEC_WEBSOCKET_PROTOCOL, *p);
        }
        b.body(()).expect("request")
    }

    fn chosen(protocols: &[&str]) -> Option<String> {
        choose_subprotocol(&request(protocols), Response::new(()))
            .ok()
            .and_then(|r| {
                r.headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
    }

    /// The connection task of a TCP listener is this future (see `connection::future_sizes`,
    /// which bounds the connection's own part): allocated in 128-byte steps, so no slack.
    #[test]
    fn serve_accepted_future_size() {
        fn size<A, B, C, D, E, G, H, F: Future>(_: fn(A, B, C, D, E, G, H) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let accepted = size(serve_accepted);
        eprintln!("transport::serve_accepted: {accepted} B");
        assert!(accepted <= 664, "serve_accepted future is {accepted} bytes");
    }

    #[test]
    fn subprotocols() {
        assert_eq!(chosen(&["mqtt"]).as_deref(), Some("mqtt"));
        assert_eq!(chosen(&["mqttv3.1"]).as_deref(), Some("mqttv3.1"));
        assert_eq!(chosen(&["chat, mqtt"]).as_deref(), Some("mqtt"));
        assert_eq!(chosen(&["mqttv3.1", "mqtt"]).as_deref(), Some("mqtt"));
        assert_eq!(chosen(&["chat"]), None);
        assert_eq!(chosen(&[]), None);
        let refused = choose_subprotocol(&request(&["chat"]), Response::new(()));
        assert_eq!(
            refused.map(|_| ()).map_err(|e| e.status()),
            Err(StatusCode::BAD_REQUEST)
        );
    }
}
