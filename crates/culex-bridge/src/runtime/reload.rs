//! A reloaded configuration applied to a running link (only what
//! [`BridgeConfig::same_link`] allows: topics, backoff bounds, notifications).

use culex_config::bridge::TopicRule;

use super::*;

/// One side of the link, for re-subscribing after a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// This broker: subscribed to the `out` rules' local filters.
    Local,
    /// The remote broker: subscribed to the `in` rules' remote filters.
    Remote,
}

impl Side {
    /// The filter a rule subscribes on this side, if it subscribes here at all.
    fn filter(self, rule: &TopicRule) -> Option<String> {
        match self {
            Side::Local => rule.direction.is_out().then(|| rule.local_filter()),
            Side::Remote => rule.direction.is_in().then(|| rule.remote_filter()),
        }
    }

    /// The filters `old` subscribed on this side that `new` no longer does.
    fn gone(self, old: &[TopicRule], new: &[TopicRule]) -> Vec<String> {
        let keep: Vec<String> = new.iter().filter_map(|r| self.filter(r)).collect();
        let mut gone: Vec<String> = old
            .iter()
            .filter_map(|r| self.filter(r))
            .filter(|f| !keep.contains(f))
            .collect();
        gone.dedup();
        gone
    }
}

impl Link {
    /// A configuration change that needs no new connection (see [`BridgeHandle::reconfigure`]).
    pub(super) async fn reconfigure(&mut self) {
        let new = Arc::clone(&self.updates.borrow_and_update());
        let old = std::mem::replace(&mut self.config, Arc::clone(&new));
        self.policy.set_bounds(new.backoff_min, new.backoff_max);
        // A wait scheduled under the old bounds never outlasts the new maximum.
        let latest = later(Instant::now(), new.backoff_max.max(new.backoff_min));
        if self.next_attempt.is_some_and(|at| at > latest) {
            let state = self.stats.state();
            self.schedule(new.backoff_max.max(new.backoff_min), state);
        }
        if old.topics != new.topics {
            // The local re-subscribe below sends the current retained states of the new rules.
            self.retained.clear();
            for side in [Side::Local, Side::Remote] {
                let up = match side {
                    Side::Local => self.local_up,
                    Side::Remote => self.remote_up,
                };
                if !up {
                    continue;
                }
                let gone = side.gone(&old.topics, &new.topics);
                match (side, self.resubscribe(side, gone).await) {
                    (Side::Local, Ok(())) => self.drain_local(),
                    (Side::Remote, Ok(())) => self.drain_remote(),
                    (Side::Local, Err(e)) => {
                        tracing::warn!(bridge = %self.name(), error = %e, "re-subscribing locally after a reload failed");
                        self.local_up = false;
                        return;
                    }
                    (Side::Remote, Err(e)) => {
                        self.remote_lost(&e).await;
                        return;
                    }
                }
            }
        }
        if old.notifications != new.notifications
            || old.notification_topic != new.notification_topic
        {
            let up = self.remote_up;
            self.notify(up);
        }
        tracing::info!(bridge = %self.name(), "bridge configuration reloaded; subscriptions in place");
    }

    /// Unsubscribes `gone` on one side, then subscribes that side's filters of the current
    /// rules (SUBSCRIBE of a filter already held replaces it, so kept filters are harmless).
    async fn resubscribe(&mut self, side: Side, gone: Vec<String>) -> Result<(), ClientError> {
        match side {
            Side::Local => {
                unsubscribe(self.local.as_mut(), gone, "waiting for the local UNSUBACK").await?;
                self.subscribe_local().await
            }
            Side::Remote => {
                unsubscribe(
                    self.remote.as_mut(),
                    gone,
                    "waiting for the remote UNSUBACK",
                )
                .await?;
                self.subscribe_remote().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use culex_config::bridge::Direction;

    #[test]
    fn gone_filters_per_side() {
        let rule = |p: &str, d| TopicRule::new(p, d, culex_proto::QoS::AtMostOnce);
        let old = [
            rule("a/#", Direction::Out),
            rule("b/#", Direction::In),
            rule("c/#", Direction::Both),
        ];
        let new = [rule("a/#", Direction::Both), rule("d/#", Direction::In)];
        assert_eq!(Side::Local.gone(&old, &new), vec!["c/#".to_string()]);
        assert_eq!(
            Side::Remote.gone(&old, &new),
            vec!["b/#".to_string(), "c/#".to_string()]
        );
    }
}
