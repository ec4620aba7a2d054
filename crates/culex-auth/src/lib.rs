//! Mosquitto-compatible `password_file` and `acl_file` support for Culex.
//!
//! * [`PasswordFile`]: `user:hash` lines as written by `mosquitto_passwd` (`$6$` salted
//!   SHA-512, `$7$` PBKDF2-HMAC-SHA512) and Mosquitto 2.1 (`$argon2id$` PHC strings).
//!   Plaintext entries are refused at load time with a [`Warning`]. Verification compares in
//!   constant time and is CPU-heavy by design: call [`PasswordFile::check`] from a blocking
//!   thread (`tokio::task::spawn_blocking`), never on an async worker.
//! * [`AclFile`]: `user`, `topic` and `pattern` lines with Mosquitto 2.0's semantics, checked
//!   without allocation on the delivery hot path.
//! * [`password_hash`]: produces new hash strings for `culex passwd`.
//! * [`CredentialCache`] and [`FailureLimiter`]: keep logins cheap under attack (recently
//!   verified credentials skip the hash; a source that keeps failing is made to wait).
//!
//! Both file types are immutable once loaded (`Send + Sync`); a reload builds a new value and
//! swaps it in, so a file that fails to parse never replaces working rules.

mod acl;
mod error;
mod login;
mod password;

pub use acl::{Access, AclFile};
pub use error::{AuthError, Warning};
pub use login::{
    Blocked, CredentialCache, FailureLimiter, FAILURE_WINDOW, FIRST_BACKOFF, LOG_INTERVAL,
    MAX_BACKOFF,
};
pub use password::{
    password_hash, AuthResult, HashKind, PasswordFile, PasswordHash, ARGON2ID_M_COST_KIB,
    ARGON2ID_PARALLELISM, ARGON2ID_T_COST, DEFAULT_PBKDF2_ITERATIONS, SALT_LEN,
};

/// Splits file contents into numbered lines (1-based), dropping a trailing `\r` from each.
fn numbered_lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes.split(|b| *b == b'\n').enumerate().map(|(i, line)| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        (i + 1, line)
    })
}

/// Reads a whole file, naming it in the error.
fn read_file(path: &std::path::Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })
}
