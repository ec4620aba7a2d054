//! Gives memory the allocator holds but no longer uses back to the operating system.
//!
//! glibc's `malloc` keeps freed memory in its arenas for reuse: after thousands of connections
//! close, or a burst of queued messages drains, the broker's RSS stays at its peak although the
//! heap is mostly free. Every [`CHECK_INTERVAL`] this task asks the allocator how much it holds
//! free (`mallinfo2`), and when that is at least [`TRIM_THRESHOLD`] it calls `malloc_trim(0)`
//! (off the async workers: with a large fragmented heap it can take a few milliseconds), which
//! returns the free pages of every arena. A busy broker that reuses its memory stays below the
//! threshold and is never trimmed. On other platforms and allocators this does nothing.

use std::time::Duration;

use tokio::sync::watch;

/// How often the allocator's free memory is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Free bytes held by the allocator above which they are given back.
const TRIM_THRESHOLD: usize = 8 << 20;

/// Runs until shutdown, trimming the allocator's free memory when it is large.
pub(crate) async fn release_freed_memory(mut shutdown: watch::Receiver<bool>) {
    if !SUPPORTED {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
        if free_bytes() >= TRIM_THRESHOLD {
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
const SUPPORTED: bool = true;

/// Free bytes in glibc's arenas (`fordblks`: free chunks, including each arena's top).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_bytes() -> usize {
    // SAFETY: `mallinfo2` only reads the allocator's statistics (under its arena locks); it
    // takes no arguments and returns a plain struct.
    let info = unsafe { libc::mallinfo2() };
    info.fordblks
}

/// Returns the free memory of every glibc arena to the operating system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: `malloc_trim` is thread-safe (it takes each arena's lock) and only releases
    // memory that no allocation uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
const SUPPORTED: bool = false;

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_bytes() -> usize {
    0
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident set size of this process, bytes.
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    /// Memory freed in the middle of an arena (where `free` cannot give it back) is returned
    /// to the operating system by a trim.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_returns_freed_memory() {
        // 40 MB in 2 KiB blocks (below the mmap threshold, so they live in an arena); every
        // 64th is kept, so the freed runs cannot merge into the arena's top.
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|_| vec![1u8; 2048]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        drop(blocks);
        assert!(free_bytes() >= TRIM_THRESHOLD, "free: {}", free_bytes());
        let before = rss();
        trim();
        let after = rss();
        drop(kept);
        assert!(
            after + (16 << 20) <= before,
            "RSS before trim {before}, after {after}"
        );
    }
}
