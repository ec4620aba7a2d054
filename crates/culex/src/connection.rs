//! One client connection: decode, enforce limits, talk to the router, encode and write.
//!
//! Split in three: `handshake` (CONNECT to CONNACK, its rules as plain functions), `state`
//! ([`ConnState`](state::ConnState): what each packet and outbox item means, without a
//! socket) and `io` (the socket loop: read, decode, hand over, send commands, write, time
//! out, close). QoS 1/2 acknowledgements of the client's publishes are decided in the state;
//! the inbound QoS 2 state (packet ids awaiting PUBREL) lives there while connected and goes
//! back to the router's session on disconnect.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use culex_broker::ConnId;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use rustls_pki_types::CertificateDer;

use crate::context::{ConnSlot, ListenerCtx, Shared};

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// Remote socket address.
    pub(crate) addr: SocketAddr,
    /// The listener that accepted it.
    pub(crate) listener: Arc<ListenerCtx>,
    /// Identity from a verified TLS client certificate (its subject CN), if any.
    pub(crate) identity: Option<String>,
    /// The verified TLS client certificate chain (leaf first), if the client sent one.
    pub(crate) client_cert: Option<Arc<Vec<CertificateDer<'static>>>>,
}

mod aliases;
mod handshake;
mod io;
mod state;

use io::Conn;
use state::{ConnState, Output};

/// Prefix of the Response Information returned to a client that asks for it (MQTT 5 Request
/// Response Information 1): `culex/response/<client id>`.
pub(crate) const RESPONSE_INFORMATION_PREFIX: &str = "culex/response/";

/// Serves one accepted connection until it ends.
pub(crate) fn serve<S>(
    stream: S,
    peer: Peer,
    conn: ConnId,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    serve_in_slot(stream, peer, conn, shared, shutdown, None)
}

/// [`serve`], holding `slot` (the accepted socket's place under `max_connections`) until the
/// connection ends.
///
/// Not an `async fn`: an async fn keeps its arguments beside the locals they are moved into,
/// for the whole life of the future. Here the connection state is built first and the async
/// block works on it in place.
pub(crate) fn serve_in_slot<S>(
    stream: S,
    peer: Peer,
    conn: ConnId,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    slot: Option<ConnSlot>,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    // The buffers are allocated when there is something to read or write, and released once
    // the connection has been quiet for a while (see `run`): an idle connection holds none.
    let mut c = Conn {
        io: stream,
        rbuf: BytesMut::new(),
        out: Output::default(),
        state: ConnState::new(
            conn,
            peer.addr,
            peer.listener,
            shared,
            peer.identity,
            peer.client_cert,
        ),
    };
    // This future lives as long as the connection, and is as large as the largest state held
    // across any of its awaits. The handshake and the ending run once and hold packet-sized
    // values: boxed, they cost an allocation while they run instead of every idle connection
    // carrying their state (`future_sizes` in the tests keeps an eye on it).
    async move {
        // Held (not used) until the connection ends.
        let _ = &slot;
        let Some(mut outbox) = Box::pin(c.handshake(&mut shutdown)).await else {
            return;
        };
        // Most clients are quiet after CONNACK: give the handshake's buffers back now.
        c.release_buffers();
        // From here the router tells the connection when the server stops (a `Close` in the
        // outbox), so the connected loop does not wait on `shutdown` itself.
        drop(shutdown);
        let ending = c.run(&mut outbox).await;
        let ending = Box::pin(c.last_input(ending)).await;
        Box::pin(c.finish(ending)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Size of the future a function of five arguments returns, without calling it.
    fn future_size<A, B, C, D, E, F: Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connected client holds this future (it is the task of a plain TCP connection)
    /// for as long as it is connected, so what it keeps across awaits is paid per connection.
    /// It was 5.4 KB while packet handling awaited inline and the handshake was not boxed,
    /// 816 B while the connected loop also waited on the shutdown signal (a 120-byte future);
    /// 648 B in a debug build before the reload recheck's `login` slot, 656 B with it. The
    /// task that holds it is allocated in steps of 128 bytes (tokio aligns it to a cache
    /// line), so a few bytes can cost 128 per connection: 664 B here (a log-rate slot of its
    /// own) took the idle connection from 1.89 to 2.10 KB. Hence bounds with no slack.
    #[test]
    fn future_sizes() {
        let serve = future_size(serve::<tokio::net::TcpStream>);
        eprintln!("connection::serve<TcpStream>: {serve} B");
        assert!(serve <= 656, "connection::serve future is {serve} bytes");
    }
}
