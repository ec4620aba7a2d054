//! The database: opening, locking, version check, reset, load and batched writes.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use culex_broker::persist::{MessageRecord, Recovered, RecoveredSession, SessionRecord, StoreOp};
use culex_broker::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::codec::{self, Clocks, Decoded};
use crate::error::StoreError;

/// Name of the database file inside the data directory.
pub const DB_FILE: &str = "culex.redb";
/// Name of the lock file inside the data directory (holds the owner's process id).
pub const LOCK_FILE: &str = "culex.lock";
/// Format version written to the metadata table; a database with another version is refused.
pub const FORMAT_VERSION: u64 = 1;
/// Bytes of memory redb may use for its page cache and write buffer. Small on purpose: the
/// router holds the live data in memory, the database is read once at start-up.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

const VERSION_KEY: &str = "format_version";
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("session_messages");

/// An open store: the lock on its data directory and the redb database in it.
///
/// Dropping it closes the database (making any non-durable commit durable) and releases the
/// lock.
pub struct Store {
    // Field order matters: the database closes before the lock is released.
    /// `None` only between closing and reopening after an I/O error ([`Store::reopen`]).
    db: Option<Database>,
    /// The database file as opened at start, kept to open it again after an I/O error without
    /// a new `open` (which the broker, no longer root, might not be allowed).
    file: File,
    path: PathBuf,
    dir: PathBuf,
    _lock: File,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// What [`Store::load`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Retained messages loaded.
    pub retained: u64,
    /// Sessions loaded.
    pub sessions: u64,
    /// Session messages (queued and in flight) loaded.
    pub messages: u64,
    /// Retained messages dropped because they had expired.
    pub expired_retained: u64,
    /// Queued session messages dropped because they had expired.
    pub expired_messages: u64,
    /// Sessions dropped (with their messages) because they had expired.
    pub expired_sessions: u64,
    /// Messages dropped because their session no longer exists.
    pub orphaned_messages: u64,
}

impl LoadReport {
    /// Everything dropped because it had expired.
    pub fn expired(&self) -> u64 {
        self.expired_retained + self.expired_messages + self.expired_sessions
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} retained messages, {} sessions, {} session messages; dropped {} expired \
             retained, {} expired messages, {} expired sessions, {} orphaned messages",
            self.retained,
            self.sessions,
            self.messages,
            self.expired_retained,
            self.expired_messages,
            self.expired_sessions,
            self.orphaned_messages
        )
    }
}

/// The lock file of the database file `name`: `culex.lock` for the default `culex.redb` (as
/// before `persistence_file` existed), `<name>.lock` otherwise.
fn lock_name(name: &str) -> String {
    if name == DB_FILE {
        LOCK_FILE.to_owned()
    } else {
        format!("{name}.lock")
    }
}

/// Takes the exclusive lock of `dir` (creating the directory and lock file as needed).
///
/// The lock is a `flock` on an open file description, so it also refuses a second `Store` in
/// the same process, and the kernel releases it when the process dies.
fn lock_dir(dir: &Path, lock_name: &str) -> Result<File, StoreError> {
    fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        action: "cannot create data directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let lock_path = dir.join(lock_name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| StoreError::Io {
            action: "cannot open lock file",
            path: lock_path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                lock: lock_path,
            })
        }
        Err(TryLockError::Error(source)) => {
            return Err(StoreError::Io {
                action: "cannot lock",
                path: lock_path,
                source,
            })
        }
    }
    // The process id is only informative (for an operator looking at the directory).
    let pid = format!("{}\n", std::process::id());
    if let Err(e) = file
        .set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
    {
        tracing::debug!(path = %lock_path.display(), error = %e, "cannot write pid to lock file");
    }
    Ok(file)
}

/// Classifies a redb error: damage to the file is `Corrupt`, anything else (I/O, disk full)
/// is `Database`.
fn db_error(path: &Path, action: &'static str, e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match e {
        redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        other => StoreError::Database {
            action,
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

fn corrupt_record(path: &Path, table: &str, key: &str, e: &codec::CodecError) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("table {table}, key {key}: {}", e.0),
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`: creates the directory, takes its lock,
    /// opens or creates `culex.redb` and checks its format version.
    ///
    /// Errors: [`StoreError::Locked`] if another process (or another `Store` in this process)
    /// has it open; [`StoreError::Corrupt`] if the file is damaged or empty;
    /// [`StoreError::UnknownVersion`] if it was written by an incompatible version.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_file(dir, DB_FILE)
    }

    /// [`Store::open`] with the database file `name` in `dir` (`persistence_file`). Each
    /// database file has its own lock (`culex.lock` for `culex.redb`, else `<name>.lock`), so
    /// two brokers with different files in one directory neither share nor block each other.
    pub fn open_file(dir: &Path, name: &str) -> Result<Store, StoreError> {
        let lock = lock_dir(dir, &lock_name(name))?;
        let path = dir.join(name);
        if let Ok(meta) = fs::metadata(&path) {
            if meta.len() == 0 {
                return Err(StoreError::Corrupt {
                    path,
                    detail: "the file is empty".into(),
                });
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StoreError::Io {
                action: "cannot open database",
                path: path.clone(),
                source,
            })?;
        let db = Self::database_on(&file, &path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                dir: dir.to_path_buf(),
                lock: dir.join(lock_name(name)),
            },
            redb::DatabaseError::Storage(redb::StorageError::Io(source)) => {
                // A file too short for its header, or cut in the middle of a page, reads
                // as an early EOF; a wrong magic number is invalid data: that is damage,
                // not an I/O failure.
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) {
                    StoreError::Corrupt {
                        path: path.clone(),
                        detail: source.to_string(),
                    }
                } else {
                    StoreError::Io {
                        action: "cannot open database",
                        path: path.clone(),
                        source,
                    }
                }
            }
            other => db_error(&path, "opening", other),
        })?;
        let store = Store {
            db: Some(db),
            file,
            path,
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        store.init()?;
        Ok(store)
    }

    /// A redb database on (a clone of the handle of) `file`.
    fn database_on(file: &File, path: &Path) -> Result<Database, redb::DatabaseError> {
        let handle = file.try_clone().map_err(|e| {
            redb::DatabaseError::Storage(redb::StorageError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot duplicate the handle of {}: {e}", path.display()),
            )))
        })?;
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::FileBackend::new(handle)?)
    }

    /// Closes the database and opens it again on the same file handle: after an I/O error
    /// (disk full) redb refuses every transaction until then. What the failed commit wrote is
    /// not part of the database (commits are atomic). Until this succeeds the store is closed
    /// and every operation fails.
    pub(crate) fn reopen(&mut self) -> Result<(), StoreError> {
        // The old database releases its file locks before the new one takes them.
        drop(self.db.take());
        let db = Self::database_on(&self.file, &self.path)
            .map_err(|e| db_error(&self.path, "reopening", e))?;
        self.db = Some(db);
        Ok(())
    }

    /// The open database.
    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or_else(|| StoreError::Database {
            action: "writing",
            path: self.path.clone(),
            detail: "the database is closed after an I/O error and could not be reopened yet"
                .into(),
        })
    }

    /// Checks the format version, or writes it and creates the tables in a new database.
    fn init(&self) -> Result<(), StoreError> {
        let path = &self.path;
        let txn = self
            .db()?
            .begin_write()
            .map_err(|e| db_error(path, "opening", e))?;
        {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| db_error(path, "opening", e))?;
            let found = meta
                .get(VERSION_KEY)
                .map_err(|e| db_error(path, "opening", e))?
                .map(|v| v.value());
            match found {
                Some(FORMAT_VERSION) => {}
                Some(found) => {
                    return Err(StoreError::UnknownVersion {
                        found,
                        expected: FORMAT_VERSION,
                        path: path.clone(),
                    })
                }
                None => {
                    let tables = txn
                        .list_tables()
                        .map_err(|e| db_error(path, "opening", e))?
                        .filter(|t| t.name() != "meta")
                        .count();
                    if tables > 0 {
                        return Err(StoreError::Corrupt {
                            path: path.clone(),
                            detail: "the format version is missing".into(),
                        });
                    }
                    meta.insert(VERSION_KEY, FORMAT_VERSION)
                        .map_err(|e| db_error(path, "opening", e))?;
                }
            }
            txn.open_table(RETAINED)
                .map_err(|e| db_error(path, "opening", e))?;
            txn.open_table(SESSIONS)
                .map_err(|e| db_error(path, "opening", e))?;
            txn.open_table(MESSAGES)
                .map_err(|e| db_error(path, "opening", e))?;
        }
        txn.commit().map_err(|e| db_error(path, "opening", e))
    }

    /// Moves the database file of `dir` aside to `culex.redb.bad-<unix time>` (never deletes
    /// it) so that the next [`Store::open`] starts empty. Returns the new path, or `None` if
    /// there was no database. Takes the directory's lock while doing so, so it fails with
    /// [`StoreError::Locked`] while a broker is using the store.
    pub fn reset(dir: &Path) -> Result<Option<PathBuf>, StoreError> {
        Store::reset_file(dir, DB_FILE)
    }

    /// [`Store::reset`] of the database file `name` in `dir`.
    pub fn reset_file(dir: &Path, name: &str) -> Result<Option<PathBuf>, StoreError> {
        let _lock = lock_dir(dir, &lock_name(name))?;
        let path = dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        let secs = codec::system_time_to_ms(SystemTime::now()) / 1000;
        let mut target = dir.join(format!("{name}.bad-{secs}"));
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{name}.bad-{secs}-{n}"));
            n += 1;
        }
        fs::rename(&path, &target).map_err(|source| StoreError::Io {
            action: "cannot move the database aside",
            path: path.clone(),
            source,
        })?;
        // Make the rename itself durable (best effort: not every platform can sync a directory).
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        tracing::warn!(from = %path.display(), to = %target.display(), "store moved aside");
        Ok(Some(target))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads everything back for the router at start-up; `now` is the router's clock.
    /// Expired retained messages, expired queued messages and expired sessions are dropped,
    /// counted in the report and deleted from the database.
    pub fn load(&self, now: Instant) -> Result<(Recovered, LoadReport), StoreError> {
        self.load_at(Clocks {
            now,
            wall: SystemTime::now(),
        })
    }

    /// [`Store::load`] with an explicit wall-clock reading (for tests with a virtual clock).
    pub fn load_at(&self, clocks: Clocks) -> Result<(Recovered, LoadReport), StoreError> {
        let path = &self.path;
        let err = |e: redb::Error| db_error(path, "loading", e);
        let mut report = LoadReport::default();
        let mut recovered = Recovered::default();
        let mut dead_retained = Vec::new();
        let mut dead_sessions = Vec::new();
        let mut dead_messages = Vec::new();
        {
            let txn = self.db()?.begin_read().map_err(|e| err(e.into()))?;
            let retained = txn.open_table(RETAINED).map_err(|e| err(e.into()))?;
            for entry in retained.iter().map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                let topic = k.value();
                match codec::decode_retained(v.value(), &clocks) {
                    Ok(Decoded::Live(m)) => recovered.retained.push(Arc::new(m)),
                    Ok(Decoded::Expired) => dead_retained.push(topic.to_owned()),
                    Err(e) => {
                        return Err(corrupt_record(path, "retained", &format!("{topic:?}"), &e))
                    }
                }
            }
            let sessions = txn.open_table(SESSIONS).map_err(|e| err(e.into()))?;
            let mut live: BTreeMap<String, RecoveredSession> = BTreeMap::new();
            let mut expired: HashSet<String> = HashSet::new();
            for entry in sessions.iter().map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                let client_id = k.value();
                let record = codec::decode_session(v.value())
                    .map_err(|e| corrupt_record(path, "sessions", &format!("{client_id:?}"), &e))?;
                if record.expires_at.is_some_and(|t| t <= clocks.wall) {
                    expired.insert(client_id.to_owned());
                    dead_sessions.push(client_id.to_owned());
                } else {
                    live.insert(
                        client_id.to_owned(),
                        RecoveredSession {
                            client_id: Arc::from(client_id),
                            record,
                            messages: Vec::new(),
                        },
                    );
                }
            }
            let messages = txn.open_table(MESSAGES).map_err(|e| err(e.into()))?;
            for entry in messages.iter().map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                let (client_id, seq) = k.value();
                let Some(session) = live.get_mut(client_id) else {
                    if !expired.contains(client_id) {
                        report.orphaned_messages += 1;
                        dead_messages.push((client_id.to_owned(), seq));
                    }
                    continue;
                };
                match codec::decode_message(v.value(), &clocks) {
                    Ok(Decoded::Live(m)) => session.messages.push((seq, m)),
                    Ok(Decoded::Expired) => {
                        report.expired_messages += 1;
                        dead_messages.push((client_id.to_owned(), seq));
                    }
                    Err(e) => {
                        return Err(corrupt_record(
                            path,
                            "session_messages",
                            &format!("({client_id:?}, {seq})"),
                            &e,
                        ))
                    }
                }
            }
            recovered.sessions = live.into_values().collect();
        }
        report.retained = recovered.retained.len() as u64;
        report.sessions = recovered.sessions.len() as u64;
        report.messages = recovered
            .sessions
            .iter()
            .map(|s| s.messages.len() as u64)
            .sum();
        report.expired_retained = dead_retained.len() as u64;
        report.expired_sessions = dead_sessions.len() as u64;
        if !(dead_retained.is_empty() && dead_sessions.is_empty() && dead_messages.is_empty()) {
            let mut batch = Batch::default();
            for topic in dead_retained {
                batch.push(StoreOp::Retain {
                    topic: Arc::from(topic),
                    message: None,
                });
            }
            for client_id in dead_sessions {
                batch.push(StoreOp::Session {
                    client_id: Arc::from(client_id),
                    record: None,
                });
            }
            for (client_id, seq) in dead_messages {
                batch.push(StoreOp::Message {
                    client_id: Arc::from(client_id),
                    seq,
                    record: None,
                });
            }
            self.commit(&batch, Durability::Immediate, &clocks)?;
        }
        Ok((recovered, report))
    }

    /// Applies `ops` in one durable write transaction (coalescing ops on the same key), using
    /// the current clocks to convert message expiry to wall-clock time. The writer thread
    /// ([`spawn_writer`](crate::spawn_writer)) is the normal path; this is for tools and tests.
    pub fn write(&self, ops: impl IntoIterator<Item = StoreOp>) -> Result<(), StoreError> {
        self.write_at(ops, Clocks::now())
    }

    /// [`Store::write`] with explicit clock readings (for tests with a virtual clock).
    pub fn write_at(
        &self,
        ops: impl IntoIterator<Item = StoreOp>,
        clocks: Clocks,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        for op in ops {
            batch.push(op);
        }
        self.commit(&batch, Durability::Immediate, &clocks)
            .map(|_| ())
    }

    /// A write transaction with nothing in it but the given durability: with
    /// `Durability::Immediate` it makes every earlier non-durable commit durable.
    pub(crate) fn checkpoint(&self) -> Result<(), StoreError> {
        self.commit(&Batch::default(), Durability::Immediate, &Clocks::now())
            .map(|_| ())
    }

    /// Writes `batch` in one transaction. Ops that cannot be encoded are skipped and logged;
    /// returns how many were skipped.
    pub(crate) fn commit(
        &self,
        batch: &Batch,
        durability: Durability,
        clocks: &Clocks,
    ) -> Result<u64, StoreError> {
        let path = &self.path;
        let err = |e: redb::Error| db_error(path, "committing", e);
        let mut txn = self.db()?.begin_write().map_err(|e| err(e.into()))?;
        txn.set_durability(durability).map_err(|e| err(e.into()))?;
        let mut skipped = 0;
        {
            let mut retained = txn.open_table(RETAINED).map_err(|e| err(e.into()))?;
            for (topic, message) in &batch.retained {
                match message {
                    Some(m) => match codec::encode_retained(m, clocks) {
                        Ok(v) => {
                            retained
                                .insert(&**topic, v.as_slice())
                                .map_err(|e| err(e.into()))?;
                        }
                        Err(e) => {
                            skipped += 1;
                            skip(&m.topic, &e);
                        }
                    },
                    None => {
                        retained.remove(&**topic).map_err(|e| err(e.into()))?;
                    }
                }
            }
            let mut sessions = txn.open_table(SESSIONS).map_err(|e| err(e.into()))?;
            let mut messages = txn.open_table(MESSAGES).map_err(|e| err(e.into()))?;
            for (client_id, change) in &batch.sessions {
                let cid: &str = client_id;
                if change.clear_messages {
                    messages
                        .retain_in((cid, 0u64)..=(cid, u64::MAX), |_, _| false)
                        .map_err(|e| err(e.into()))?;
                }
                match &change.record {
                    Some(Some(r)) => match codec::encode_session(r) {
                        Ok(v) => {
                            sessions
                                .insert(cid, v.as_slice())
                                .map_err(|e| err(e.into()))?;
                        }
                        Err(e) => {
                            skipped += 1;
                            tracing::error!(client_id = cid, error = %e.0, "cannot store session");
                        }
                    },
                    Some(None) => {
                        sessions.remove(cid).map_err(|e| err(e.into()))?;
                    }
                    None => {}
                }
                for (seq, record) in &change.messages {
                    match record {
                        Some(r) => match codec::encode_message(r, clocks) {
                            Ok(v) => {
                                messages
                                    .insert((cid, *seq), v.as_slice())
                                    .map_err(|e| err(e.into()))?;
                            }
                            Err(e) => {
                                skipped += 1;
                                skip(&r.message.topic, &e);
                            }
                        },
                        None => {
                            messages.remove((cid, *seq)).map_err(|e| err(e.into()))?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(skipped)
    }
}

fn skip(topic: &str, e: &codec::CodecError) {
    let e = StoreError::Encode {
        topic: topic.to_owned(),
        detail: e.0.clone(),
    };
    tracing::error!(error = %e, "message not stored");
}

/// Pending changes to one session within a batch.
#[derive(Debug, Default)]
pub(crate) struct SessionChange {
    /// Delete all the session's stored messages first (a `Session { record: None }` was seen).
    clear_messages: bool,
    /// `Some(Some)`: put; `Some(None)`: delete; `None`: unchanged.
    record: Option<Option<SessionRecord>>,
    /// Messages to put (`Some`) or delete (`None`) after the optional clear.
    messages: BTreeMap<u64, Option<MessageRecord>>,
}

/// A batch of ops coalesced per key: applying it has the same effect as applying the ops in
/// order, with one write per key.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    retained: BTreeMap<Arc<str>, Option<Arc<Message>>>,
    sessions: BTreeMap<Arc<str>, SessionChange>,
    /// Ops pushed.
    pub(crate) ops: u64,
    /// Ops made redundant by a later op on the same key.
    pub(crate) coalesced: u64,
}

impl Batch {
    /// Adds `op` after those already in the batch.
    pub(crate) fn push(&mut self, op: StoreOp) {
        self.ops += 1;
        self.apply(op);
    }

    fn apply(&mut self, op: StoreOp) {
        match op {
            StoreOp::Group(ops) => {
                // One batch is one transaction: the group is all in or all out.
                for op in ops {
                    self.apply(op);
                }
            }
            StoreOp::Retain { topic, message } => {
                if self.retained.insert(topic, message).is_some() {
                    self.coalesced += 1;
                }
            }
            StoreOp::Session { client_id, record } => {
                let change = self.sessions.entry(client_id).or_default();
                if change.record.is_some() {
                    self.coalesced += 1;
                }
                if record.is_none() {
                    change.clear_messages = true;
                    self.coalesced += change.messages.len() as u64;
                    change.messages.clear();
                }
                change.record = Some(record);
            }
            StoreOp::Message {
                client_id,
                seq,
                record,
            } => {
                let change = self.sessions.entry(client_id).or_default();
                if change.messages.insert(seq, record).is_some() {
                    self.coalesced += 1;
                }
            }
        }
    }
}
