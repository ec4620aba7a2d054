//! Broker resource usage from `/proc`: CPU time (`/proc/PID/stat`) and resident memory
//! (`/proc/PID/status`).

use anyhow::{anyhow, Context, Result};
use serde::Serialize;

/// Clock ticks per second used by `/proc/PID/stat` (`USER_HZ`, 100 on Linux everywhere).
const USER_HZ: f64 = 100.0;

/// A snapshot of a process's resource usage.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ProcSample {
    /// User + system CPU time of all its threads, in seconds.
    pub(crate) cpu_seconds: f64,
    /// Resident set size, in KiB (`VmRSS`).
    pub(crate) rss_kib: u64,
}

/// Reads CPU time and RSS of `pid`.
pub(crate) fn sample(pid: u32) -> Result<ProcSample> {
    Ok(ProcSample {
        cpu_seconds: cpu_seconds(pid)?,
        rss_kib: rss_kib(pid)?,
    })
}

/// utime + stime of the process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("{path}: unexpected format"))?;
    // After ')' come fields 3.. ; utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<f64> {
        fields
            .get(n - 3)
            .ok_or_else(|| anyhow!("{path}: missing field {n}"))?
            .parse::<f64>()
            .with_context(|| format!("{path}: field {n}"))
    };
    Ok((field(14)? + field(15)?) / USER_HZ)
}

/// `VmRSS` of the process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow!("{path}: no VmRSS line"))?
        .parse()
        .with_context(|| format!("{path}: VmRSS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        let s = sample(pid).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.cpu_seconds >= 0.0);
    }
}
