//! The metrics HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the process
//! runs) and `/readyz` (listeners bound). HTTP/1.1 only, bounded: at most
//! [`MAX_CONNECTIONS`] connections, request heads up to [`MAX_HEAD`] bytes read within
//! [`HEAD_TIMEOUT`], one request per connection, and a connection never lives longer than
//! [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use culex_broker::Command;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::debug;

use crate::counters::Counters;
use crate::metrics::{Exporter, Extra};

/// Simultaneous HTTP connections; more are closed at once.
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// Largest request head (request line and headers) read.
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Time allowed for the request head to arrive.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one connection, response included.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a scrape waits for the router's snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// The Prometheus text exposition content type.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the broker is ready to serve: set once the listeners are bound (and, with
/// persistence, once the store is open).
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the broker ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }
    /// True once ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What the endpoint serves from.
#[derive(Debug)]
pub(crate) struct HttpState {
    pub(crate) exporter: Exporter,
    pub(crate) counters: Arc<Counters>,
    /// Weak, so a scrape in progress never keeps the router alive at shutdown.
    pub(crate) router: mpsc::WeakSender<Command>,
    pub(crate) router_capacity: usize,
    pub(crate) ready: Arc<Readiness>,
    pub(crate) started: Instant,
}

/// Serves HTTP on `listener` until shutdown (or until the shutdown sender is dropped).
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { break }
                continue;
            }
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            debug!(%peer, "too many metrics connections; closed");
            continue;
        };
        let state = Arc::clone(&state);
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(handle(&state, req.method(), req.uri().path()).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                debug!(%peer, error = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
    tasks.shutdown().await;
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// How long `/healthz` waits for the router to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// What `/healthz` and `/readyz` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Ok,
    /// Store commits fail and are retried (not ready, still alive).
    StoreFailing,
    /// The store writer thread has ended or given up (unhealthy).
    StoreDead,
    /// The router does not answer within [`PING_TIMEOUT`] (unhealthy).
    RouterDead,
}

/// The store's state, from its writer's counters (`Ok` without persistence).
fn store_state(state: &HttpState) -> Health {
    match state.counters.store.get().map(|r| r.stats()) {
        Some(s) if s.exited || s.failed => Health::StoreDead,
        Some(s) if s.failing => Health::StoreFailing,
        _ => Health::Ok,
    }
}

/// Liveness: the router answers a ping and the store writer runs.
async fn health(state: &HttpState) -> Health {
    if !crate::sys::ping_router(&state.router, PING_TIMEOUT).await {
        return Health::RouterDead;
    }
    store_state(state)
}

/// Answers one request.
pub(crate) async fn handle(
    state: &HttpState,
    method: &Method,
    path: &str,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/healthz" => match health(state).await {
            Health::Ok | Health::StoreFailing => text(StatusCode::OK, "ok\n"),
            Health::RouterDead => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy: the router does not answer\n",
            ),
            Health::StoreDead => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy: the store writer has stopped; nothing more is stored (see the log)\n",
            ),
        },
        "/readyz" => {
            if !state.ready.is_ready() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n");
            }
            match store_state(state) {
                Health::StoreFailing => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: store commits are failing (disk full or I/O errors) and are \
                     being retried; acknowledgements that wait for the store are held\n",
                ),
                Health::StoreDead => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the store writer has stopped (see the log)\n",
                ),
                _ if state.counters.cluster.get().is_some_and(|c| !c.connected()) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the cluster backplane (NATS) is not reachable; messages for \
                         other nodes wait in this node's cluster session\n",
                ),
                _ => text(StatusCode::OK, "ready\n"),
            }
        }
        "/metrics" => {
            let sample = tokio::time::timeout(
                SNAPSHOT_TIMEOUT,
                crate::sys::snapshot(&state.router, &state.counters),
            )
            .await;
            let Ok(Some(mut sample)) = sample else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "router unavailable\n");
            };
            let depth = state.router.upgrade().map_or(0, |tx| {
                tx.max_capacity().saturating_sub(tx.capacity()) as u64
            });
            sample.extra = Extra {
                router_queue_depth: depth,
                router_queue_capacity: state.router_capacity as u64,
                uptime_seconds: state.started.elapsed().as_secs_f64(),
            };
            let body = state.exporter.render(&sample);
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            r
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn state(router: mpsc::WeakSender<Command>) -> HttpState {
        HttpState {
            exporter: Exporter::new(),
            counters: Arc::new(Counters::default()),
            router,
            router_capacity: 8,
            ready: Arc::new(Readiness::default()),
            started: Instant::now(),
        }
    }

    async fn body(r: Response<Full<Bytes>>) -> String {
        let bytes = r
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A router that answers pings, as the real one does.
    fn answering_router(mut rx: mpsc::Receiver<Command>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                if let Command::Ping { reply } = c {
                    let _ = reply.send(());
                }
            }
        })
    }

    #[tokio::test]
    async fn healthz_is_503_when_the_router_is_gone() {
        let (tx, rx) = mpsc::channel::<Command>(8);
        let s = state(tx.downgrade());
        let router = answering_router(rx);
        assert_eq!(
            handle(&s, &Method::GET, "/healthz").await.status(),
            StatusCode::OK
        );
        router.abort();
        let _ = router.await;
        let r = handle(&s, &Method::GET, "/healthz").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r).await.contains("router"));
        drop(tx);
    }

    #[tokio::test]
    async fn readyz_is_503_until_ready_and_healthz_200_while_the_router_answers() {
        let (tx, rx) = mpsc::channel::<Command>(8);
        let _router = answering_router(rx);
        let s = state(tx.downgrade());
        let get = Method::GET;
        assert_eq!(
            handle(&s, &get, "/readyz").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(handle(&s, &get, "/healthz").await.status(), StatusCode::OK);
        s.ready.set_ready();
        let r = handle(&s, &get, "/readyz").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "ready\n");
        assert_eq!(
            handle(&s, &get, "/nope").await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            handle(&s, &Method::POST, "/metrics").await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn metrics_without_a_router_is_503() {
        let (tx, rx) = mpsc::channel::<Command>(8);
        let weak = tx.downgrade();
        drop((tx, rx));
        let s = state(weak);
        assert_eq!(
            handle(&s, &Method::GET, "/metrics").await.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn metrics_renders_every_described_metric() {
        let (tx, mut rx) = mpsc::channel::<Command>(8);
        let s = state(tx.downgrade());
        let router = tokio::spawn(async move {
            if let Some(Command::Stats { reply }) = rx.recv().await {
                let _ = reply.send(culex_broker::RouterSnapshot::default());
            }
        });
        let r = handle(&s, &Method::GET, "/metrics").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some(PROMETHEUS_TEXT)
        );
        let text = body(r).await;
        // Every family of the table that applies here (no bridges, no store, no limit on
        // connections) is described and has a series.
        use crate::metrics::families::{all, Group, Kind};
        let here = all().filter(|f| {
            f.group == Group::Broker
                && f.kind != Kind::Histogram
                && f.name != "culex_max_connections"
        });
        for f in here {
            let name = f.name;
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} in\n{text}"
            );
            assert!(
                text.lines()
                    .any(|l| l.starts_with(name) && !l.starts_with('#')),
                "a series of {name} in\n{text}"
            );
        }
        router.await.ok();
    }
}
