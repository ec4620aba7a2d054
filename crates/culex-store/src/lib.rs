//! Persistence for Culex: retained messages and persistent sessions (with their queued and
//! in-flight QoS 1/2 messages) in an embedded [redb] database.
//!
//! * [`Store::open`] takes the data directory's lock (a second process gets
//!   [`StoreError::Locked`]), opens or creates `culex.redb` and checks its format version.
//!   [`Store::reset`] moves a bad database aside (never deletes it).
//! * [`Store::load`] reads everything back once at start-up as a
//!   [`Recovered`](culex_broker::persist::Recovered), dropping (and deleting) what has expired.
//! * [`spawn_writer`] moves the store onto a writer thread and returns a [`StoreHandle`], the
//!   router's [`StoreSink`](culex_broker::persist::StoreSink). The writer applies whatever ops
//!   have arrived in one write transaction (group commit), coalescing ops on the same key,
//!   and reports the last ticket of each committed batch through a callback.
//!
//! The store is write-mostly: the router keeps retained messages and session queues in memory
//! and the database is only the durable copy, read once at start-up. redb's page cache is
//! therefore kept small ([`CACHE_BYTES`]) so that the data is not held in memory twice.
//!
//! Record format: see the `codec` module documentation (a version byte and a small binary
//! header in front of an MQTT 5 PUBLISH packet).

mod codec;
mod error;
mod image;
mod store;
mod writer;

pub use codec::Clocks;
pub use error::StoreError;
pub use image::{decode_session_image, encode_session_image};
pub use store::{LoadReport, Store, CACHE_BYTES, DB_FILE, FORMAT_VERSION, LOCK_FILE};
pub use writer::{
    spawn_writer, StatsReader, StoreHandle, StoreStats, SyncPolicy, WriterJoin,
    COMMIT_BUCKET_BOUNDS, MAX_BATCH_OPS,
};
