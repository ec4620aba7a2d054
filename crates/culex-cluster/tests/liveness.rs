//! Which nodes are alive: every node announces itself once a second through its session
//! directory, whatever else the directory is busy with, and the others count it in (a real
//! `nats-server`, the `testkit`). Skipped with a note when nats-server is missing, unless
//! `CULEX_REQUIRE_NATS=1` (CI).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::sync::Arc;
use std::time::{Duration, Instant};

use culex_cluster::sessions::{self, Hooks};
use culex_cluster::shared::{Placement, EXPIRY};
use culex_cluster::testkit::NatsCluster;
use culex_cluster::{ClusterStats, Settings};
use futures_util::future::BoxFuture;
use tokio::sync::watch;

fn settings(nats: &NatsCluster, node: &str) -> Settings {
    Settings {
        servers: nats.urls(),
        node: node.to_owned(),
        cluster: "live".to_owned(),
        credentials: None,
        replicas: 1,
    }
}

/// Starts `node`'s session directory; its broker answers reports with `report`.
fn directory(
    nats: &NatsCluster,
    node: &str,
    report: sessions::ReportFn,
    shutdown: watch::Receiver<bool>,
) -> Arc<Placement> {
    let placement = Arc::new(Placement::new(node));
    let hooks = Hooks {
        export: Arc::new(|_| -> BoxFuture<'static, Option<Vec<u8>>> { Box::pin(async { None }) }),
        restore: Arc::new(|_| {}),
        report,
        placement: Arc::clone(&placement),
        discard: Arc::new(|_| {}),
        tail: Arc::new(|_, _, _| -> BoxFuture<'static, bool> { Box::pin(async { false }) }),
        departures: Arc::default(),
    };
    let _ = sessions::spawn(
        settings(nats, node),
        hooks,
        Arc::new(ClusterStats::default()),
        shutdown,
    );
    placement
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_broker_is_slow_to_report_still_counts_as_alive() {
    let nats = match NatsCluster::start_or_skip(1).await {
        Ok(Some(n)) => n,
        Ok(None) => return,
        Err(e) => panic!("{e}"),
    };
    let (_stop, shutdown) = watch::channel(false);
    // a's broker never answers the report (busy, or a report stuck behind a slow write).
    let _a = directory(
        &nats,
        "a",
        Arc::new(|| -> BoxFuture<'static, Option<sessions::Report>> {
            Box::pin(std::future::pending())
        }),
        shutdown.clone(),
    );
    let b = directory(
        &nats,
        "b",
        Arc::new(|| -> BoxFuture<'static, Option<sessions::Report>> {
            Box::pin(async { Some(sessions::Report::default()) })
        }),
        shutdown,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.live_nodes(Instant::now()).contains(&"a".to_owned()) {
        assert!(Instant::now() < deadline, "b never heard of a");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Alive for b all along, over several expiry periods.
    let until = Instant::now() + EXPIRY * 2;
    while Instant::now() < until {
        b.expire(Instant::now());
        assert_eq!(
            b.live_nodes(Instant::now()),
            ["a"],
            "a, alive, taken for dead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
