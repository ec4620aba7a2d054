//! systemd's notification protocol (`sd_notify`), for `Type=notify` units: `READY=1` once the
//! listeners are bound, `RELOADING=1`/`READY=1` around a SIGHUP reload, `STOPPING=1` at
//! shutdown, and `WATCHDOG=1` while the router answers (`WatchdogSec=`).
//!
//! Without `NOTIFY_SOCKET` in the environment (not started by systemd) every call does nothing.
//! The protocol is one datagram per message to the socket systemd names: a path, or an
//! abstract socket name written with a leading `@`.

use std::time::Duration;

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to systemd. Returns false when
/// there is no notification socket or the datagram could not be sent (which is logged at
/// debug level: the broker runs on either way).
pub fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    match send(&socket, state) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, state, "cannot notify systemd");
            false
        }
    }
}

#[cfg(target_os = "linux")]
fn send(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(socket))?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn send(_socket: &std::ffi::OsStr, _state: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "systemd notifications need Linux",
    ))
}

/// `RELOADING=1` with the monotonic time systemd asks for (`MONOTONIC_USEC`, microseconds of
/// `CLOCK_MONOTONIC`), as sent before a reload.
pub fn reloading_message() -> String {
    let usec = monotonic_usec();
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

#[cfg(unix)]
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local struct it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1000)
}

#[cfg(not(unix))]
fn monotonic_usec() -> u64 {
    0
}

/// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), if it is meant for
/// this process (`WATCHDOG_PID` absent or equal to our pid).
pub fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str()?.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_and_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), "READY=1").expect("send to a path");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("culex-test-{}", std::process::id());
        let abs = UnixDatagram::bind_addr(
            &SocketAddr::from_abstract_name(name.as_bytes()).expect("name"),
        )
        .expect("bind abstract");
        send(std::ffi::OsStr::new(&format!("@{name}")), "WATCHDOG=1").expect("send abstract");
        let n = abs.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let m = reloading_message();
        assert!(m.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{m}");
        let usec: u64 = m
            .rsplit('=')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("number");
        assert!(usec > 0);
    }
}
