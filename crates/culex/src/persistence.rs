//! Wiring the store into the server: open and recover it before anything listens, run its
//! writer thread, and tell the router when changes are durable.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use culex_broker::persist::Recovered;
use culex_broker::{AccessPolicy, BrokerSettings, Command, Router};
use culex_config::Config;
use culex_store::{spawn_writer, Store, SyncPolicy, WriterJoin};
use tokio::sync::mpsc;
use tracing::info;

/// A store opened and read at start-up, not yet handed to a router.
pub(crate) struct Opened {
    store: Store,
    recovered: Recovered,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("dir", &self.store.dir())
            .finish_non_exhaustive()
    }
}

/// Opens and loads the store when the configuration enables persistence. Errors (locked by
/// another process, corrupt, unknown version) name the directory and what to do.
pub(crate) fn open(config: &Config) -> Result<Option<Opened>> {
    if !config.persistence.enabled {
        return Ok(None);
    }
    let dir = &config.persistence.dir;
    let store = Store::open_file(dir, &config.persistence.file)
        .with_context(|| format!("persistence_location {}", dir.display()))?;
    let now = tokio::time::Instant::now().into_std();
    let (recovered, report) = store
        .load(now)
        .with_context(|| format!("persistence_location {}", dir.display()))?;
    info!("store {}: {report}", store.path().display());
    Ok(Some(Opened { store, recovered }))
}

/// Moves a damaged store (the database `file` in `dir`) aside, never deleting it, so the broker
/// can start empty.
pub fn reset_store(dir: &std::path::Path, file: &str) -> Result<()> {
    match Store::reset_file(dir, file)
        .with_context(|| format!("cannot reset the store in {}", dir.display()))?
    {
        Some(moved) => info!("store moved aside to {}", moved.display()),
        None => info!("no store to reset in {}", dir.display()),
    }
    Ok(())
}

/// Builds the router on an opened store: the writer thread commits in groups and reports
/// durable tickets to the router, which then releases the acknowledgements waiting for them.
pub(crate) fn router(
    opened: Opened,
    config: &Config,
    settings: BrokerSettings,
    router_tx: &mpsc::Sender<Command>,
    access: Option<Arc<dyn AccessPolicy>>,
) -> (Router, WriterJoin) {
    let policy = match config.persistence.sync {
        culex_config::SyncPolicy::Always => SyncPolicy::Always,
        culex_config::SyncPolicy::Batched => SyncPolicy::Batched {
            max_delay: config.persistence.batch_delay,
        },
        culex_config::SyncPolicy::Never => SyncPolicy::Never,
    };
    // A weak sender: the writer must not keep the router alive at shutdown.
    let weak = router_tx.downgrade();
    let on_durable = Box::new(move |ticket: u64| {
        if let Some(tx) = weak.upgrade() {
            // The writer is a plain thread, so blocking here is allowed; the router never
            // waits for the writer, so this cannot deadlock.
            let _ = tx.blocking_send(Command::Durable { ticket });
        }
    });
    let (handle, join) = spawn_writer(opened.store, policy, on_durable);
    let now = tokio::time::Instant::now().into_std();
    let mut router = Router::with_store(settings, Box::new(handle), now, SystemTime::now());
    router.restore(opened.recovered, now, access);
    (router, join)
}
