//! In-process connections to this broker, for the parts of it that act as clients (bridges,
//! the cluster link): a `tokio::io::duplex` pair whose server end is served by the ordinary
//! connection task on an internal listener context.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use culex_bridge::LocalConnector;
use culex_client::transport::BoxStream;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::connection::{self, Peer};
use crate::context::{ListenerCtx, Shared};

/// Buffer of each direction of the in-process stream.
const DUPLEX_BUFFER: usize = 256 * 1024;

/// A connector that opens an in-process stream to this broker. Holds the server state weakly:
/// once the server is gone, connecting fails instead of keeping the router alive.
pub(crate) fn local_connector(
    shared: Weak<Shared>,
    ctx: Arc<ListenerCtx>,
    server_shutdown: watch::Receiver<bool>,
    next_conn: Arc<AtomicU64>,
    connections: TaskTracker,
) -> LocalConnector {
    Box::new(move || {
        let shared = shared.upgrade();
        let ctx = Arc::clone(&ctx);
        let shutdown = server_shutdown.clone();
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let connections = connections.clone();
        Box::pin(async move {
            let Some(shared) = shared else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the broker is shutting down",
                ));
            };
            if *shutdown.borrow() || connections.is_closed() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the broker is shutting down",
                ));
            }
            let (client, server) = tokio::io::duplex(DUPLEX_BUFFER);
            let peer = Peer {
                addr: ctx.local,
                listener: ctx,
                identity: None,
                client_cert: None,
            };
            connections.spawn(connection::serve(server, peer, conn, shared, shutdown));
            Ok(Box::new(client) as BoxStream)
        })
    })
}
