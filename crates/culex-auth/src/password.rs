//! Mosquitto password files: `username:hash` lines.
//!
//! Formats (all base64 is the standard alphabet with `=` padding; unpadded input is accepted):
//!
//! * `$6$<salt>$<hash>`: `hash = SHA-512(password ‖ salt)`, where `salt` is the *decoded* salt
//!   bytes (12 bytes from Mosquitto 2.0's `mosquitto_passwd`, 64 from Mosquitto 2.1).
//! * `$7$<iterations>$<salt>$<hash>`: `hash = PBKDF2-HMAC-SHA512(password, salt, iterations)`
//!   with a 64-byte output; same salt rules.
//! * `$argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>`: a PHC string (Mosquitto 2.1's default).
//!
//! Line handling follows Mosquitto 2.x's broker: `#` comment lines and blank lines are skipped;
//! username and hash are trimmed of surrounding blanks; an entry that cannot be used (no `:`,
//! empty username, missing or undecodable hash, plaintext password, duplicate username) is
//! skipped with a [`Warning`] naming the line, and that user cannot log in. Warnings never quote
//! the hash or password. The first entry for a duplicated username wins (as in Mosquitto 2.1).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::{numbered_lines, read_file, AuthError, Warning};

/// Salt length, in bytes, of the `$6$` and `$7$` hashes [`password_hash`] writes. Mosquitto 2.0
/// accepts only 12-byte salts, so 12 keeps files interchangeable with every Mosquitto 2.x.
pub const SALT_LEN: usize = 12;

/// Default PBKDF2 iteration count for new `$7$` hashes: OWASP's 2023 recommendation for
/// PBKDF2-HMAC-SHA512. (Mosquitto 2.0 writes 101, Mosquitto 2.1 writes 1000.)
pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 210_000;

/// Argon2id memory cost (KiB) for new `$argon2id$` hashes: Mosquitto 2.1's and OWASP's
/// minimum recommendation (46 MiB).
pub const ARGON2ID_M_COST_KIB: u32 = 47_104;
/// Argon2id time cost (passes) for new hashes.
pub const ARGON2ID_T_COST: u32 = 1;
/// Argon2id parallelism for new hashes.
pub const ARGON2ID_PARALLELISM: u32 = 1;

/// Length of a SHA-512 digest and of the PBKDF2 output Mosquitto stores.
const HASH_LEN: usize = 64;

/// Longest username or hash field accepted, as in Mosquitto.
const MAX_FIELD_LEN: usize = 65_535;

/// Base64 as Mosquitto writes it (standard alphabet, padded), tolerant of missing padding.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Which hash [`password_hash`] produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// `$6$`: one round of salted SHA-512. Fast to brute-force; only for compatibility/tests.
    Sha512,
    /// `$7$`: PBKDF2-HMAC-SHA512 with this many iterations (at least 1).
    Sha512Pbkdf2 {
        /// Iteration count; see [`DEFAULT_PBKDF2_ITERATIONS`].
        iterations: u32,
    },
    /// `$argon2id$` with [`ARGON2ID_M_COST_KIB`], [`ARGON2ID_T_COST`], [`ARGON2ID_PARALLELISM`].
    Argon2id,
}

/// Result of [`PasswordFile::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// The username exists and the password matches.
    Ok,
    /// No usable entry for this username (absent, or its line was refused at load time).
    UnknownUser,
    /// The username exists but the password does not match.
    BadPassword,
}

/// One decoded password hash. `Debug` does not print the hash.
#[derive(Clone)]
pub struct PasswordHash(Inner);

#[derive(Clone)]
enum Inner {
    Sha512 {
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
    /// The PHC string, validated at parse time; re-parsed (cheaply) on each verification.
    Argon2id {
        encoded: String,
    },
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.0 {
            Inner::Sha512 { .. } => "sha512",
            Inner::Pbkdf2 { .. } => "sha512-pbkdf2",
            Inner::Argon2id { .. } => "argon2id",
        };
        f.debug_struct("PasswordHash")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: impl Into<String>) -> AuthError {
    AuthError::InvalidHash(msg.into())
}

/// Decodes a base64 salt, which must be 12 (Mosquitto 2.0) or 64 (Mosquitto 2.1) bytes long.
fn decode_salt(b64: &str) -> Result<Vec<u8>, AuthError> {
    let salt = B64
        .decode(b64)
        .map_err(|_| invalid("salt is not valid base64"))?;
    if salt.len() != SALT_LEN && salt.len() != HASH_LEN {
        return Err(invalid(format!(
            "salt is {} bytes long (expected {SALT_LEN} or {HASH_LEN})",
            salt.len()
        )));
    }
    Ok(salt)
}

fn decode_hash(b64: &str) -> Result<[u8; HASH_LEN], AuthError> {
    let bytes = B64
        .decode(b64)
        .map_err(|_| invalid("hash is not valid base64"))?;
    <[u8; HASH_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        invalid(format!(
            "hash is {} bytes long (expected {HASH_LEN})",
            bytes.len()
        ))
    })
}

/// Splits `s` at `$` into exactly `N` non-empty fields.
fn fields<const N: usize>(s: &str) -> Result<[&str; N], AuthError> {
    let mut out = [""; N];
    let mut parts = s.split('$');
    for slot in &mut out {
        match parts.next() {
            Some(p) if !p.is_empty() => *slot = p,
            _ => return Err(invalid("missing field")),
        }
    }
    if parts.next().is_some() {
        return Err(invalid("too many '$'-separated fields"));
    }
    Ok(out)
}

/// Counts calls to the constant-time comparison, so tests can prove verification uses it.
#[cfg(test)]
pub(crate) static CT_COMPARISONS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Compares two digests without an early exit on the first differing byte.
fn ct_equal(a: &[u8; HASH_LEN], b: &[u8; HASH_LEN]) -> bool {
    #[cfg(test)]
    CT_COMPARISONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    bool::from(a.ct_eq(b))
}

fn sha512_salted(password: &[u8], salt: &[u8]) -> [u8; HASH_LEN] {
    Sha512::new()
        .chain_update(password)
        .chain_update(salt)
        .finalize()
        .into()
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

impl PasswordHash {
    /// Parses the hash field of a password file line.
    ///
    /// Anything not starting with `$` is a plaintext password and is refused, as is an unknown
    /// `$id$`, an iteration count that is not a positive integer, a salt that is not 12 or 64
    /// bytes, or a digest that is not 64 bytes.
    pub fn parse(s: &str) -> Result<PasswordHash, AuthError> {
        if let Some(rest) = s.strip_prefix("$6$") {
            let [salt, hash] = fields::<2>(rest)?;
            return Ok(PasswordHash(Inner::Sha512 {
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            }));
        }
        if let Some(rest) = s.strip_prefix("$7$") {
            let [iterations, salt, hash] = fields::<3>(rest)?;
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1 && iterations.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| invalid("iteration count is not a positive integer"))?;
            return Ok(PasswordHash(Inner::Pbkdf2 {
                iterations,
                salt: decode_salt(salt)?,
                hash: decode_hash(hash)?,
            }));
        }
        if s.starts_with("$argon2id$") {
            let phc = argon2::PasswordHash::new(s)
                .map_err(|e| invalid(format!("malformed argon2id string: {e}")))?;
            // The argon2 crate compares the memory cost with 8 × parallelism before it bounds
            // the parallelism, which overflows (a panic with overflow checks) for p above
            // u32::MAX / 8: bound it first.
            let parallelism = phc.params.get_decimal("p");
            if parallelism.is_some_and(|p| p > argon2::Params::MAX_P_COST) {
                return Err(invalid(format!(
                    "bad argon2id parameters: parallelism above {}",
                    argon2::Params::MAX_P_COST
                )));
            }
            argon2::Params::try_from(&phc)
                .map_err(|e| invalid(format!("bad argon2id parameters: {e}")))?;
            if phc.hash.is_none() {
                return Err(invalid("argon2id string has no hash"));
            }
            return Ok(PasswordHash(Inner::Argon2id {
                encoded: s.to_owned(),
            }));
        }
        if s.starts_with('$') {
            return Err(invalid(
                "unknown hash type (supported: $6$, $7$, $argon2id$)",
            ));
        }
        Err(invalid("plaintext password (not hashed)"))
    }

    /// Does `password` match? The final digest comparison is constant-time. CPU cost is that
    /// of the hash: microseconds for `$6$`, iterations × ~0.5 µs for `$7$`, tens of
    /// milliseconds and ~46 MiB for Culex's `$argon2id$` parameters.
    pub fn verify(&self, password: &[u8]) -> bool {
        match &self.0 {
            Inner::Sha512 { salt, hash } => ct_equal(&sha512_salted(password, salt), hash),
            Inner::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => ct_equal(&pbkdf2_sha512(password, salt, *iterations), hash),
            Inner::Argon2id { encoded } => {
                use argon2::PasswordVerifier as _;
                // Parameters come from the string; the output comparison inside
                // `verify_password` is constant-time.
                match argon2::PasswordHash::new(encoded) {
                    Ok(phc) => argon2::Argon2::default()
                        .verify_password(password, &phc)
                        .is_ok(),
                    Err(_) => false,
                }
            }
        }
    }

    /// The kind of hash (for `$7$`, with its iteration count).
    pub fn kind(&self) -> HashKind {
        match &self.0 {
            Inner::Sha512 { .. } => HashKind::Sha512,
            Inner::Pbkdf2 { iterations, .. } => HashKind::Sha512Pbkdf2 {
                iterations: *iterations,
            },
            Inner::Argon2id { .. } => HashKind::Argon2id,
        }
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut buf = [0u8; N];
    getrandom::getrandom(&mut buf)
        .map_err(|e| AuthError::Hash(format!("no system randomness: {e}")))?;
    Ok(buf)
}

/// Hashes `password` with a fresh random salt and returns the string for the hash field of a
/// password file line (`$6$…`, `$7$…` or `$argon2id$…`).
///
/// `$6$`/`$7$` use a [`SALT_LEN`]-byte salt so that Mosquitto 2.0 can read the result too.
/// Fails only if the system has no randomness, or for `Sha512Pbkdf2 { iterations: 0 }`.
pub fn password_hash(password: &[u8], kind: HashKind) -> Result<String, AuthError> {
    match kind {
        HashKind::Sha512 => {
            let salt = random_bytes::<SALT_LEN>()?;
            let hash = sha512_salted(password, &salt);
            Ok(format!("$6${}${}", B64.encode(salt), B64.encode(hash)))
        }
        HashKind::Sha512Pbkdf2 { iterations } => {
            if iterations == 0 {
                return Err(AuthError::Hash(
                    "the iteration count must be at least 1".into(),
                ));
            }
            let salt = random_bytes::<SALT_LEN>()?;
            let hash = pbkdf2_sha512(password, &salt, iterations);
            Ok(format!(
                "$7${iterations}${}${}",
                B64.encode(salt),
                B64.encode(hash)
            ))
        }
        HashKind::Argon2id => {
            use argon2::password_hash::{PasswordHasher as _, SaltString};
            let salt = random_bytes::<16>()?;
            let salt = SaltString::encode_b64(&salt)
                .map_err(|e| AuthError::Hash(format!("salt encoding: {e}")))?;
            let params = argon2::Params::new(
                ARGON2ID_M_COST_KIB,
                ARGON2ID_T_COST,
                ARGON2ID_PARALLELISM,
                Some(32),
            )
            .map_err(|e| AuthError::Hash(format!("argon2id parameters: {e}")))?;
            let hasher =
                argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let phc = hasher
                .hash_password(password, &salt)
                .map_err(|e| AuthError::Hash(format!("argon2id: {e}")))?;
            Ok(phc.to_string())
        }
    }
}

/// A loaded password file: usernames and their password hashes.
///
/// Immutable after loading, `Send + Sync`; share it behind an `Arc` and swap in a new one on
/// reload. Nothing about successful or failed logins is cached.
#[derive(Debug, Clone, Default)]
pub struct PasswordFile {
    /// Each user's hash, and the fingerprint of its entry (see [`PasswordFile::fingerprint`]).
    users: HashMap<String, (PasswordHash, u64)>,
    /// What an unknown username is checked against, so that it costs what a known one does:
    /// an entry of the file's most common hash kind and cost (see [`PasswordFile::check`]).
    decoy: Option<PasswordHash>,
}

impl PasswordHash {
    /// Hashes of one cost class take the same time to verify: same kind, same parameters.
    fn cost_class(&self) -> (u8, String) {
        match &self.0 {
            Inner::Sha512 { salt, .. } => (0, salt.len().to_string()),
            Inner::Pbkdf2 { iterations, .. } => (1, iterations.to_string()),
            // The PHC string up to its salt: `$argon2id$v=..$m=..,t=..,p=..`.
            Inner::Argon2id { encoded } => {
                let params: Vec<&str> = encoded.split('$').take(4).collect();
                (2, params.join("$"))
            }
        }
    }
}

/// A hash of the most common cost class among `users` (ties: the lowest class), to check
/// unknown usernames against.
fn decoy_for(users: &HashMap<String, (PasswordHash, u64)>) -> Option<PasswordHash> {
    let mut classes: HashMap<(u8, String), (usize, &PasswordHash)> = HashMap::new();
    for (hash, _) in users.values() {
        classes.entry(hash.cost_class()).or_insert((0, hash)).0 += 1;
    }
    classes
        .into_iter()
        .max_by(|(ka, (na, _)), (kb, (nb, _))| na.cmp(nb).then_with(|| kb.cmp(ka)))
        .map(|(_, (_, hash))| hash.clone())
}

/// A 64-bit fingerprint of a password file entry's hash text: equal entries (same salt, same
/// hash) give equal fingerprints, and a rewritten password gives another with overwhelming
/// probability. Not secret-dependent in any way an attacker can observe.
fn entry_fingerprint(field: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable for the life of the process, which is all a reload needs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    field.hash(&mut h);
    h.finish()
}

/// Trims the blanks Mosquitto trims around fields (spaces and tabs, and stray `\r`).
fn trim_blanks(s: &str) -> &str {
    s.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r')
}

impl PasswordFile {
    /// Reads and parses the password file at `path`. Fails only if the file cannot be read;
    /// unusable lines become warnings (see the module documentation).
    pub fn load(path: &Path) -> Result<(PasswordFile, Vec<Warning>), AuthError> {
        let bytes = read_file(path)?;
        Ok(Self::parse_bytes(&bytes, path))
    }

    /// Parses password file text; `origin` names the file in warnings. Never fails: every
    /// problem is a per-line warning. (The `Result` leaves room for stricter modes.)
    pub fn parse(text: &str, origin: &Path) -> Result<(PasswordFile, Vec<Warning>), AuthError> {
        Ok(Self::parse_bytes(text.as_bytes(), origin))
    }

    fn parse_bytes(bytes: &[u8], origin: &Path) -> (PasswordFile, Vec<Warning>) {
        let mut users: HashMap<String, (PasswordHash, u64)> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut warnings = Vec::new();
        for (line_no, raw) in numbered_lines(bytes) {
            let mut warn = |message: String| {
                warnings.push(Warning {
                    path: origin.to_path_buf(),
                    line: line_no,
                    message,
                })
            };
            let Ok(line) = std::str::from_utf8(raw) else {
                warn("line is not valid UTF-8; ignored".into());
                continue;
            };
            let content = trim_blanks(line);
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let Some((user, rest)) = line.split_once(':') else {
                warn("invalid line (expected username:hash); ignored".into());
                continue;
            };
            let user = trim_blanks(user);
            if user.is_empty() {
                warn("empty username; line ignored".into());
                continue;
            }
            if user.len() > MAX_FIELD_LEN {
                warn("username longer than 65535 bytes; line ignored".into());
                continue;
            }
            // Like Mosquitto, the hash is the next non-empty ':'-separated field.
            let field = rest.split(':').find(|f| !f.is_empty()).map(trim_blanks);
            let Some(field) = field.filter(|f| !f.is_empty()) else {
                warn(format!(
                    "no password hash for user '{user}'; the user cannot log in"
                ));
                continue;
            };
            if field.len() > MAX_FIELD_LEN {
                warn(format!(
                    "password hash for user '{user}' is longer than 65535 bytes; \
                     the user cannot log in"
                ));
                continue;
            }
            if let Some(first) = first_line.get(user) {
                warn(format!(
                    "duplicate user '{user}' (first defined at line {first}); this line is ignored"
                ));
                continue;
            }
            if !field.starts_with('$') {
                warn(format!(
                    "plaintext password for user '{user}' refused; the user cannot log in \
                     until the file is hashed with `culex passwd -U {}`",
                    origin.display()
                ));
                continue;
            }
            match PasswordHash::parse(field) {
                Ok(hash) => {
                    first_line.insert(user.to_owned(), line_no);
                    users.insert(user.to_owned(), (hash, entry_fingerprint(field)));
                }
                Err(e) => warn(format!(
                    "cannot use the password hash for user '{user}' ({e}); \
                     the user cannot log in"
                )),
            }
        }
        let decoy = decoy_for(&users);
        (PasswordFile { users, decoy }, warnings)
    }

    /// Checks a username and password. CPU-heavy for `$7$` and `$argon2id$` entries (up to
    /// ~100 ms with Culex's defaults): the broker calls this via `spawn_blocking`.
    ///
    /// The digest comparison is constant-time, and an unknown username costs what a known one
    /// does: its password is checked against an entry of the file's most common hash kind and
    /// cost (whatever the outcome, the answer is [`AuthResult::UnknownUser`]), so timing does
    /// not reveal which usernames exist. (Mosquitto answers unknown users at once.)
    pub fn check(&self, username: &str, password: &[u8]) -> AuthResult {
        match self.users.get(username) {
            None => {
                if let Some(decoy) = &self.decoy {
                    std::hint::black_box(decoy.verify(password));
                }
                AuthResult::UnknownUser
            }
            Some((hash, _)) if hash.verify(password) => AuthResult::Ok,
            Some(_) => AuthResult::BadPassword,
        }
    }

    /// The fingerprint of `username`'s entry, if it has a usable one. A connection keeps the
    /// fingerprint of the entry it logged in with; after a reload, a different fingerprint (or
    /// none) means the password was changed (or the user removed), without keeping or
    /// re-checking the password itself.
    pub fn fingerprint(&self, username: &str) -> Option<u64> {
        self.users.get(username).map(|(_, f)| *f)
    }

    /// Number of usable entries.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True if no entry is usable (nobody can log in with a password).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Is there a usable entry for `username`?
    pub fn contains_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// The usernames with usable entries, in no particular order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests;
