//! Authentication and access control from files: the password file and the ACL file of one
//! listener (or of all listeners without `per_listener_settings`), swapped whole on reload.
//!
//! A reload parses every file first and swaps only if all of them parsed; on any error the
//! rules in force stay in force. It never falls back to allowing everyone.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use culex_auth::{Access, AclFile, AuthResult, PasswordFile};
use culex_broker::AccessPolicy;
use culex_config::Security;
use culex_proto::ReasonCode;
use tracing::{info, warn};

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
}

impl SecurityHandle {
    /// Loads the files named in `source`. Errors name the file and line.
    pub(crate) fn load(source: &Security) -> Result<SecurityHandle, SecurityError> {
        let rules = load_rules(source)?;
        Ok(SecurityHandle {
            source: source.clone(),
            rules: ArcSwap::from_pointee(rules),
            internal: false,
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
        }
    }

    /// `use_username_as_clientid`: whether the user name replaces the client identifier.
    pub(crate) fn use_username_as_clientid(&self) -> bool {
        self.rules.load().use_username_as_clientid
    }

    /// Re-reads the files. On error the previous rules stay in force.
    pub(crate) fn reload(&self) -> Result<(), SecurityError> {
        let rules = load_rules(&self.source)?;
        self.rules.store(Arc::new(rules));
        Ok(())
    }

    /// Decides whether a CONNECT may proceed, and under which user name.
    ///
    /// `identity` (a verified client certificate's CN on a `use_identity_as_username` listener)
    /// takes the place of the user name and password. Otherwise a user name is checked against
    /// the password file; without a password file a user name authenticates nothing, as in
    /// Mosquitto 2. An empty password is always refused. Failures answer 5 (3.1.1) / 0x87
    /// (5.0), as Mosquitto does.
    pub(crate) async fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        identity: Option<&str>,
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
        let user_owned = user.to_string();
        let password = password.to_vec();
        let fingerprint = passwords.fingerprint(user);
        // Hash checks cost tens of milliseconds by design; keep them off the IO threads.
        let result =
            tokio::task::spawn_blocking(move || passwords.check(&user_owned, &password)).await;
        match (result, fingerprint) {
            (Ok(AuthResult::Ok), Some(f)) => Ok((Some(user.to_string()), Admission::Password(f))),
            (Ok(AuthResult::Ok), None) => Err(ReasonCode::NotAuthorized),
            (Ok(AuthResult::UnknownUser), _) => {
                info!(user, "authentication failed: unknown user");
                Err(ReasonCode::NotAuthorized)
            }
            (Ok(AuthResult::BadPassword), _) => {
                info!(user, "authentication failed: wrong password");
                Err(ReasonCode::NotAuthorized)
            }
            (Err(e), _) => {
                warn!(error = %e, "password check did not complete");
                Err(ReasonCode::ServerUnavailable)
            }
        }
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
