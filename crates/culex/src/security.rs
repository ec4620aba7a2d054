//! Authentication and access control from files: the password file and the ACL file of one
//! listener (or of all listeners without `per_listener_settings`), swapped whole on reload.
//!
//! A reload parses every file first and swaps only if all of them parsed; on any error the
//! rules in force stay in force. It never falls back to allowing everyone.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use culex_auth::{Access, AclFile, AuthResult, PasswordFile};
use culex_broker::AccessPolicy;
use culex_config::Security;
use culex_proto::ReasonCode;
use tracing::{info, warn};

use crate::login_gate::LoginGate;

/// The rules in force at one moment.
#[derive(Debug)]
struct Rules {
    allow_anonymous: bool,
    use_username_as_clientid: bool,
    passwords: Option<Arc<PasswordFile>>,
    acl: Option<AclFile>,
}

/// Why a reload or the initial load failed: the message names the file and line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SecurityError(String);

/// How a connection's client was let in, kept so that a reload can tell whether it still
/// would be (see [`SecurityHandle::recheck`]). Never the password itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// No user name: anonymous access.
    Anonymous,
    /// A user name taken as given (no password file, anonymous access allowed).
    Unchecked,
    /// A password verified against the password file entry with this fingerprint.
    Password(u64),
    /// The identity of a verified client certificate (checked again by the TLS listener).
    Certificate,
}

/// The security of one listener scope, shared by its connections and by the router (as the
/// sessions' [`AccessPolicy`]).
#[derive(Debug)]
pub(crate) struct SecurityHandle {
    source: Security,
    rules: ArcSwap<Rules>,
    /// The broker's own in-process connections (bridges): no password or ACL applies, and
    /// they may publish to `$SYS` (bridge notifications). Never used for a network listener.
    internal: bool,
    /// Hashing pool, credential cache and failure limiter, shared by every scope.
    gate: Arc<LoginGate>,
}

impl SecurityHandle {
    /// Loads the files named in `source`; passwords are checked through `gate`. Errors name
    /// the file and line.
    pub(crate) fn load(
        source: &Security,
        gate: Arc<LoginGate>,
    ) -> Result<SecurityHandle, SecurityError> {
        let rules = load_rules(source)?;
        Ok(SecurityHandle {
            source: source.clone(),
            rules: ArcSwap::from_pointee(rules),
            internal: false,
            gate,
        })
    }

    /// The security of the broker's own in-process connections (bridges): everything is
    /// allowed, `$SYS` writes included. Ordinary clients never get this handle.
    pub(crate) fn internal() -> SecurityHandle {
        let source = Security::default();
        SecurityHandle {
            source,
            rules: ArcSwap::from_pointee(Rules {
                allow_anonymous: true,
                use_username_as_clientid: false,
                passwords: None,
                acl: None,
            }),
            internal: true,
            // Never used: no password file applies to the broker's own connections.
            gate: Arc::new(LoginGate::with_threads(1, 0)),
        }
    }

    /// Whether this is the security of the broker's own connections ([`SecurityHandle::internal`]).
    pub(crate) fn is_internal(&self) -> bool {
        self.internal
    }

    /// `use_username_as_clientid`: whether the user name replaces the client identifier.
    pub(crate) fn use_username_as_clientid(&self) -> bool {
        self.rules.load().use_username_as_clientid
    }

    /// Re-reads the files. On error the previous rules stay in force.
    pub(crate) fn reload(&self) -> Result<(), SecurityError> {
        let rules = load_rules(&self.source)?;
        self.rules.store(Arc::new(rules));
        self.gate.clear_cache();
        Ok(())
    }

    /// Decides whether a CONNECT may proceed, and under which user name.
    ///
    /// `identity` (a verified client certificate's CN on a `use_identity_as_username` listener)
    /// takes the place of the user name and password. Otherwise a user name is checked against
    /// the password file; without a password file a user name authenticates nothing, as in
    /// Mosquitto 2. An empty password is always refused. Failures answer 5 (3.1.1) / 0x87
    /// (5.0), as Mosquitto does.
    ///
    /// Password checks go through the [`LoginGate`]: a `source` refused for its failures gets
    /// Connection rate exceeded without a check, and a full hashing queue Server busy (both
    /// server unavailable in 3.1.1).
    pub(crate) async fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        identity: Option<&str>,
        source: IpAddr,
    ) -> Result<(Option<String>, Admission), ReasonCode> {
        if let Some(id) = identity {
            return Ok((Some(id.to_string()), Admission::Certificate));
        }
        let rules = self.rules.load_full();
        let Some(user) = username else {
            return if rules.allow_anonymous {
                Ok((None, Admission::Anonymous))
            } else {
                Err(ReasonCode::NotAuthorized)
            };
        };
        let Some(passwords) = rules.passwords.clone() else {
            return if rules.allow_anonymous {
                // Nothing to check the name against; it is taken as given (Mosquitto does the
                // same when anonymous access is allowed).
                Ok((Some(user.to_string()), Admission::Unchecked))
            } else {
                Err(ReasonCode::NotAuthorized)
            };
        };
        // An empty or missing password never authenticates, even if the file holds the hash
        // of an empty one (Mosquitto refuses it too).
        let Some(password) = password.filter(|p| !p.is_empty()) else {
            info!(user, "authentication failed: empty password");
            return Err(ReasonCode::NotAuthorized);
        };
        let now = Instant::now();
        if let Err(wait) = self.gate.check_source(source, now) {
            tracing::debug!(user, %source, ?wait, "login refused: source backing off after failures");
            return Err(ReasonCode::ConnectionRateExceeded);
        }
        let fingerprint = passwords.fingerprint(user);
        if let Some(f) = fingerprint {
            if self.gate.cached(user, password, f, now) {
                self.gate.succeeded(source, user, password, f, now);
                return Ok((Some(user.to_string()), Admission::Password(f)));
            }
        }
        // Hash checks cost tens of milliseconds by design: on the gate's bounded pool, off
        // the IO threads. An unknown user costs the same (see `PasswordFile::check`).
        let result = self
            .gate
            .verify(passwords, user.to_string(), password.to_vec())
            .await;
        let now = Instant::now();
        let failure = match (result, fingerprint) {
            (Ok(AuthResult::Ok), Some(f)) => {
                self.gate.succeeded(source, user, password, f, now);
                return Ok((Some(user.to_string()), Admission::Password(f)));
            }
            (Ok(AuthResult::Ok), None) => "password entry changed during the check",
            (Ok(AuthResult::UnknownUser), _) => "unknown user",
            (Ok(AuthResult::BadPassword), _) => "wrong password",
            (Err(reason), _) => {
                warn!(user, %source, "password check not done: {}", reason.description());
                return Err(reason);
            }
        };
        info!(user, %source, "authentication failed: {failure}");
        if let Some(b) = self.gate.failed(source, now) {
            if b.log {
                warn!(%source, failures = b.failures, backoff = ?b.backoff,
                    "repeated login failures: this source is refused without a check for a while \
                     (auth_failure_limit)");
            }
        }
        Err(ReasonCode::NotAuthorized)
    }

    /// Whether a client let in as `admission` under `username` still would be under the rules
    /// in force (after a reload); `Err` says why not, for the log and the DISCONNECT's reason
    /// string. A password is not checked again: its entry must be the same one.
    pub(crate) fn recheck(
        &self,
        username: Option<&str>,
        admission: Admission,
    ) -> Result<(), &'static str> {
        let rules = self.rules.load();
        match (admission, username, &rules.passwords) {
            (Admission::Certificate, ..) => Ok(()),
            (Admission::Anonymous, ..) | (_, None, _) => {
                if rules.allow_anonymous {
                    Ok(())
                } else {
                    Err("anonymous access is no longer allowed")
                }
            }
            (Admission::Unchecked, Some(_), Some(_)) => {
                Err("a password file now applies and this client gave no checked password")
            }
            (Admission::Unchecked | Admission::Password(_), Some(_), None) => {
                if rules.allow_anonymous {
                    Ok(())
                } else {
                    Err("no password file applies any more and anonymous access is not allowed")
                }
            }
            (Admission::Password(was), Some(user), Some(passwords)) => {
                match passwords.fingerprint(user) {
                    None => Err("user removed from the password file"),
                    Some(now) if now != was => Err("password changed in the password file"),
                    Some(_) => Ok(()),
                }
            }
        }
    }

    fn acl_allows(&self, username: Option<&str>, client_id: &str, topic: &str, a: Access) -> bool {
        match &self.rules.load().acl {
            Some(acl) => acl.check(username, client_id, topic, a),
            None => true,
        }
    }
}

impl AccessPolicy for SecurityHandle {
    fn can_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.acl_allows(username, client_id, topic, Access::Read)
    }

    fn can_write(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        // Clients never write the broker's own tree, whatever the ACL says; the broker's own
        // bridges do (their connection notifications live there).
        if topic.starts_with("$SYS") {
            return self.internal;
        }
        self.acl_allows(username, client_id, topic, Access::Write)
    }

    fn can_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        self.acl_allows(username, client_id, filter, Access::Subscribe)
    }
}

fn load_rules(source: &Security) -> Result<Rules, SecurityError> {
    let passwords = match &source.password_file {
        Some(path) => Some(Arc::new(load_passwords(path)?)),
        None => None,
    };
    let acl = match &source.acl_file {
        Some(path) => {
            let acl = AclFile::load(path).map_err(|e| SecurityError(format!("acl_file: {e}")))?;
            for w in acl.warnings() {
                warn!("{w}");
            }
            Some(acl)
        }
        None => None,
    };
    Ok(Rules {
        allow_anonymous: source.allow_anonymous,
        use_username_as_clientid: source.use_username_as_clientid,
        passwords,
        acl,
    })
}

fn load_passwords(path: &Path) -> Result<PasswordFile, SecurityError> {
    let (file, warnings) =
        PasswordFile::load(path).map_err(|e| SecurityError(format!("password_file: {e}")))?;
    for w in warnings {
        warn!("{w}");
    }
    Ok(file)
}
