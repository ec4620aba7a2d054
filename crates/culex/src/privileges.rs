//! Mosquitto's `user`: a broker started as root switches to an unprivileged user once its
//! listeners are bound and its store and log files are open.
//!
//! The rule is Mosquitto's: the configured user, or by default `culex`, falling back to
//! `nobody` when no `culex` user exists; only `user root` keeps root. Files read later (the
//! password, ACL and certificate files on SIGHUP, a bridge's certificates at each connect) must
//! be readable by that user.

#[cfg(unix)]
use std::ffi::{CStr, CString};

use anyhow::Result;
#[cfg(unix)]
use anyhow::{bail, Context};

/// The user a broker started as root switches to when the configuration names none.
pub const DEFAULT_USER: &str = "culex";
/// Where the default falls back to when [`DEFAULT_USER`] does not exist.
#[cfg(unix)]
const FALLBACK_USER: &str = "nobody";

/// What [`drop_privileges`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// The process was not running as root: nothing to do.
    NotRoot,
    /// `user root`: the process keeps running as root.
    StayedRoot,
    /// The process now runs as `user` (uid, gid); `fallback` when it is `nobody` because the
    /// default user does not exist.
    To {
        /// The user name.
        user: String,
        /// Its user id.
        uid: u32,
        /// Its primary group id.
        gid: u32,
        /// True when the default user was missing and `nobody` was used instead.
        fallback: bool,
    },
}

#[cfg(unix)]
/// A user's ids from the password database.
#[derive(Debug, Clone, Copy)]
struct Ids {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

#[cfg(unix)]
/// Looks `name` up in the password database (`getpwnam_r`: safe with other threads running).
fn lookup(name: &str) -> Result<Option<Ids>> {
    let cname = CString::new(name).context("a user name cannot contain a NUL byte")?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `passwd` is plain data that getpwnam_r fills in; `buf` outlives the call and its
    // length is passed; `result` is set to null or to `&mut pwd`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            bail!(
                "cannot look up user '{name}': {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        if result.is_null() {
            return Ok(None);
        }
        Ok(Some(Ids {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }))
    }
}

#[cfg(unix)]
/// The user a root process becomes.
struct Target {
    name: String,
    ids: Ids,
    fallback: bool,
}

#[cfg(unix)]
/// Decides, without changing anything, whom a root process switches to (`Ok(None)`: not
/// root, or `user root`). Fails when the user does not exist.
fn target(configured: Option<&str>) -> Result<Option<Target>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    match configured {
        Some("root") => Ok(None),
        Some(name) => match lookup(name)? {
            Some(ids) => Ok(Some(Target {
                name: name.to_owned(),
                ids,
                fallback: false,
            })),
            None => bail!(
                "user {name}: no such user, so the broker cannot stop running as root; \
                 create the user, name an existing one, or say `user root` to stay root"
            ),
        },
        None => {
            if let Some(ids) = lookup(DEFAULT_USER)? {
                return Ok(Some(Target {
                    name: DEFAULT_USER.to_owned(),
                    ids,
                    fallback: false,
                }));
            }
            match lookup(FALLBACK_USER)? {
                Some(ids) => Ok(Some(Target {
                    name: FALLBACK_USER.to_owned(),
                    ids,
                    fallback: true,
                })),
                None => bail!(
                    "neither user '{DEFAULT_USER}' nor '{FALLBACK_USER}' exists, so the broker \
                     cannot stop running as root; create one, name a user with `user`, or say \
                     `user root` to stay root"
                ),
            }
        }
    }
}

/// Checks, before anything is bound, that [`drop_privileges`] will find its user (used at
/// start and by `culex --check`). Only a process running as root needs one.
pub fn check_user(configured: Option<&str>) -> Result<()> {
    #[cfg(unix)]
    return target(configured).map(|_| ());
    #[cfg(not(unix))]
    {
        let _ = configured;
        Ok(())
    }
}

/// Without unix users there is nothing to switch to.
#[cfg(not(unix))]
pub fn drop_privileges(configured: Option<&str>) -> Result<Dropped> {
    let _ = configured;
    Ok(Dropped::NotRoot)
}

/// Switches a root process to the configured user (see the module documentation). Call it
/// after every listener is bound and every file that needs root is open.
#[cfg(unix)]
pub fn drop_privileges(configured: Option<&str>) -> Result<Dropped> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Dropped::NotRoot);
    }
    let Some(t) = target(configured)? else {
        return Ok(Dropped::StayedRoot);
    };
    let name = t.name;
    let cname = CString::new(name.as_str()).context("a user name cannot contain a NUL byte")?;
    switch(&cname, t.ids).with_context(|| format!("cannot switch to user '{name}'"))?;
    Ok(Dropped::To {
        user: name,
        uid: t.ids.uid,
        gid: t.ids.gid,
        fallback: t.fallback,
    })
}

#[cfg(unix)]
/// Groups first (they need root), then the user; then proves root cannot be regained. glibc
/// applies each change to every thread of the process.
fn switch(name: &CStr, ids: Ids) -> Result<()> {
    let os = |what: &str| {
        let e = std::io::Error::last_os_error();
        anyhow::anyhow!("{what}: {e}")
    };
    // SAFETY: plain system calls on ids from the password database; `name` is NUL-terminated.
    unsafe {
        if libc::initgroups(name.as_ptr(), ids.gid) != 0 {
            return Err(os("initgroups"));
        }
        if libc::setgid(ids.gid) != 0 {
            return Err(os("setgid"));
        }
        if libc::setuid(ids.uid) != 0 {
            return Err(os("setuid"));
        }
        if ids.uid != 0 && libc::setuid(0) == 0 {
            bail!("root privileges could be regained after setuid");
        }
    }
    Ok(())
}
