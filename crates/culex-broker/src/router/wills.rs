//! Wills: scheduled when a connection ends without DISCONNECT (after the Will Delay Interval,
//! or with the session's end), cancelled when the client comes back, published as the client.

use super::*;

impl Router {
    /// Publishes a will now, or schedules it after its Will Delay Interval.
    pub(super) fn schedule_will(&mut self, sid: SessionId, will: PendingWill, now: Instant) {
        let delay = will.will.properties.will_delay_interval.unwrap_or(0);
        if delay == 0 {
            self.publish_will(will, now);
        } else {
            self.cancel_delayed_will(sid);
            match later(now, Duration::from_secs(u64::from(delay))) {
                Some(due) => {
                    self.will_due.insert((due, sid));
                    self.delayed.insert(sid, (due, will));
                }
                // Beyond the clock's range: only the session's end sends it (the time stored
                // with it is never looked up in `will_due`).
                None => {
                    self.delayed.insert(sid, (now, will));
                }
            }
        }
    }

    pub(super) fn cancel_delayed_will(&mut self, sid: SessionId) {
        if let Some((due, _)) = self.delayed.remove(&sid) {
            self.will_due.remove(&(due, sid));
        }
    }

    /// Publishes a will, if its client may still write its topic (checked now, as the ACL in
    /// force may have changed since the client connected).
    pub(super) fn publish_will(&mut self, pending: PendingWill, now: Instant) {
        if !pending.allowed() {
            self.stats.dropped_acl_will += 1;
            debug!(client_id = %Clipped(&pending.client_id), "will denied by the ACL");
            return;
        }
        let will = pending.will;
        let mut properties = will.properties;
        properties.will_delay_interval = None;
        let expires_at = properties
            .message_expiry_interval
            .and_then(|s| later(now, Duration::from_secs(u64::from(s))));
        let message = Message {
            topic: will.topic.into(),
            payload: will.payload,
            qos: will.qos.min(self.settings.max_qos),
            retain: will.retain && self.settings.retain_available,
            properties,
            expires_at,
            origin: None,
            publication: None,
        };
        self.stats.wills_published += 1;
        self.stats.messages_received += 1;
        self.route(Arc::new(message), now);
    }
}
