//! Session records written at once for a SUBACK that waits for them (see `InterestSink::record`
//! in culex-broker).
//!
//! The session directory writes each persistent session's record (its subscriptions) with its
//! report, about once a second ([`crate::sessions`]). A node that died within that second left
//! the cluster without its newest subscriptions: a session created just before had no record
//! at all (its client got a new session elsewhere and lost what was published to it), and a
//! session that moved on at once was not prepared on its new node. So the SUBACK of a
//! persistent session's SUBSCRIBE waits until its record is written here (or the write failed
//! or timed out: the report writes it again).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::sessions::Directory;

/// How long a SUBACK waits for its session's record at most.
pub const RECORD_WAIT: Duration = Duration::from_secs(2);

/// Tells the broker that the record behind a token is written (or could not be).
pub type WrittenFn = Arc<dyn Fn(u64) -> BoxFuture<'static, ()> + Send + Sync>;

struct Attached {
    directory: Directory,
    written: WrittenFn,
}

/// Writes session records on demand; usable once [`Records::attach`]ed to the directory.
#[derive(Default)]
pub struct Records {
    attached: OnceLock<Attached>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("attached", &self.attached.get().is_some())
            .finish()
    }
}

impl Records {
    /// Writes through `directory` from now on and tells `written` of each write.
    pub fn attach(&self, directory: Directory, written: WrittenFn) {
        let _ = self.attached.set(Attached { directory, written });
    }

    /// Writes `image` (a session's image without messages) as the record of `client_id`'s
    /// session, then calls the written hook with `token`. `false` when nothing is written (the
    /// directory is not attached yet, or the backplane is not connected): nobody should wait.
    pub fn write(&self, token: u64, client_id: &str, image: Vec<u8>) -> bool {
        let Some(attached) = self.attached.get() else {
            return false;
        };
        if !attached.directory.connected() {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let (directory, written) = (attached.directory.clone(), Arc::clone(&attached.written));
        let client_id = client_id.to_owned();
        runtime.spawn(async move {
            match tokio::time::timeout(RECORD_WAIT, directory.record(&client_id, &image)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "a session's record was not written before its SUBACK; the next report writes it");
                }
                Err(_) => {
                    tracing::debug!("writing a session's record before its SUBACK timed out; the next report writes it");
                }
            }
            written(token).await;
        });
        true
    }
}
