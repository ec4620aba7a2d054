//! What the router does when the password, ACL or certificate files are reloaded: messages a
//! session may no longer read stop (queued and in flight), and every live connection rechecks
//! that its client is still let in.

use std::time::Instant;

use super::Router;
use crate::api::Outbound;

impl Router {
    /// [`Command::AccessChanged`](crate::Command::AccessChanged).
    pub(crate) fn access_changed(&mut self, now: Instant) {
        let ids: Vec<_> = self.sessions.keys().copied().collect();
        for sid in ids {
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            if let Some(acl) = s.access.clone() {
                let user = s.username.clone();
                let client_id = std::sync::Arc::clone(&s.client_id);
                let dropped = s
                    .outgoing
                    .revoke(|topic| acl.can_read(user.as_deref(), &client_id, topic));
                if dropped > 0 {
                    self.stats.dropped_acl_read += dropped;
                    s.observe_queue(0);
                    self.flush_changes(sid);
                    // Abandoned in-flight messages free room in the window.
                    self.pump(sid, now);
                }
            }
            self.send_outbound(sid, Outbound::Recheck);
        }
    }
}
