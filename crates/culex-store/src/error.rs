//! The crate's one error type.

use std::path::PathBuf;

/// Why the store could not be opened, read or written.
///
/// Every message names the file or directory concerned and, where the operator can do
/// something about it, what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (or another `Store` in this process) holds the store's lock.
    #[error(
        "the store in {} is in use by another Culex process (lock file {}); stop that process or \
         use a different data directory or persistence_file",
        dir.display(),
        lock.display()
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The database was written by an unknown version of the store format.
    #[error(
        "the store {} has format version {found}, this Culex understands version {expected}; \
         run the Culex version that wrote it, or start with --reset-store to move it aside and \
         start empty",
        path.display()
    )]
    UnknownVersion {
        /// Format version found in the file.
        found: u64,
        /// Format version this build writes.
        expected: u64,
        /// The database file.
        path: PathBuf,
    },
    /// The database file or one of its records cannot be read.
    #[error(
        "the store {} is corrupt: {detail}; start with --reset-store to move it aside and start \
         empty",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong (for a bad record: its table and key).
        detail: String,
    },
    /// A message could not be encoded for storage (it is larger than MQTT allows).
    #[error("cannot store a message on topic {topic:?}: {detail}")]
    Encode {
        /// Topic of the message.
        topic: String,
        /// Why encoding failed.
        detail: String,
    },
    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "cannot create data directory".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The database engine failed while reading or writing (disk full, I/O error, ...).
    #[error("store {} failed while {action}: {detail}", path.display())]
    Database {
        /// What was being done, e.g. "committing".
        action: &'static str,
        /// The database file.
        path: PathBuf,
        /// The engine's error.
        detail: String,
    },
    /// The writer thread stopped abnormally.
    #[error("the store writer thread panicked")]
    WriterPanicked,
}
