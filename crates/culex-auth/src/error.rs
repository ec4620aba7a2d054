//! The crate's error type and load-time warnings.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of an ACL file is not valid; the whole file is rejected.
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong, and how to fix it.
        message: String,
    },
    /// A password hash string is not one of the supported forms.
    #[error("invalid password hash: {0}")]
    InvalidHash(String),
    /// A new password hash could not be produced (no system randomness, bad parameters).
    #[error("cannot hash password: {0}")]
    Hash(String),
}

/// A problem in a file that does not stop it from loading (for example a password file entry
/// that is ignored). The broker logs these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file.
    pub path: PathBuf,
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong and what happens because of it. Never contains a password or hash.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}
