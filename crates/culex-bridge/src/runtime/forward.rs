//! Forwarding: local messages out to the remote (through the store-and-forward queue, with the
//! latest retained state per topic kept while the link is down), remote messages in to the
//! local broker, acknowledgements back, and the bridge's state notifications.

use super::*;

impl Link {
    pub(super) fn drain_local(&mut self) {
        while let Some(p) = self.local.as_mut().and_then(|c| c.try_recv()) {
            self.forward_out(p);
        }
        self.pump();
    }

    pub(super) fn drain_remote(&mut self) {
        self.drain_remote_acks();
        while let Some(p) = self.remote.as_mut().and_then(|c| c.try_recv()) {
            self.forward_in(p);
        }
        self.pump();
    }

    /// Completed publications to the remote: the remote has the message (or refused it for
    /// good, MQTT 5), so the local broker may forget it.
    pub(super) fn drain_remote_acks(&mut self) {
        let done = self
            .remote
            .as_mut()
            .map(Connection::take_published)
            .unwrap_or_default();
        for (packet_id, _reason) in done {
            if let Some(ack) = self.inflight_acks.remove(&packet_id) {
                self.ack_local(Some(ack));
            }
        }
    }

    /// Acknowledges a local delivery (PUBACK / PUBREC), so the broker forgets it.
    pub(super) fn ack_local(&mut self, ack: Option<LocalAck>) {
        if let (Some(a), Some(local)) = (ack, self.local.as_mut()) {
            local.ack(a.packet_id, a.qos);
        }
    }

    /// A message from the local broker, for the remote.
    pub(super) fn forward_out(&mut self, p: Publish) {
        let local_ack = match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, _) | (_, None) => None,
            (qos, Some(packet_id)) => Some(LocalAck { packet_id, qos }),
        };
        let Some((topic, rule)) = remap_out(&self.config.topics, &p.topic) else {
            StatsExt::inc(&self.stats.dropped_other);
            self.ack_local(local_ack);
            return;
        };
        // Retained as published (the local subscription keeps the flag): the topic's state.
        let is_state = p.retain;
        let mut message = QueuedMessage {
            topic,
            qos: p.qos.min(rule.qos),
            retain: p.retain && self.config.outgoing_retain,
            payload: p.payload,
            local_ack,
        };
        if let Some(max) = self.config.max_packet_size {
            // Fixed header (≤ 5) + topic length (2) + packet id (2) + properties (≤ 5).
            let size = message.size() + 14;
            if size > usize::try_from(max).unwrap_or(usize::MAX) {
                StatsExt::inc(&self.stats.dropped_other);
                tracing::debug!(bridge = %self.name(), topic = %message.topic, size, "message larger than bridge_max_packet_size dropped");
                self.ack_local(local_ack);
                return;
            }
        }
        self.last_activity = Instant::now();
        if let Some(echo) = self.echo.as_mut() {
            if remap_in(&self.config.topics, &message.topic).is_some() {
                echo.record(&message.topic, &message.payload, std::time::Instant::now());
            }
        }
        self.keep_state(&message, is_state);
        if message.qos == QoS::AtMostOnce {
            // Sent at QoS 0 (the rule's QoS): nothing to wait for. While the link is down,
            // `keep_state` kept it for the reconnect.
            self.ack_local(message.local_ack.take());
            if self.remote_up {
                self.send_remote(message);
            }
            self.update_queued();
            return;
        }
        if let Some(evicted) = self.queue.push(message) {
            StatsExt::inc(&self.stats.dropped_queue_full);
            self.ack_local(evicted.local_ack);
        }
        self.update_queued();
    }

    /// Keeps a copy of an `out` message for the replay after the next (re)connect: a retained
    /// state as its topic's state (a cleared one forgotten); a QoS 0 message while the link is
    /// down as its topic's latest (only the latest per topic goes out: the remote needs current
    /// state, not a flood of stale ones; the replaced ones are counted as `offline_qos0`
    /// drops); with `republish_on_connect`, every non-retained message as its topic's latest.
    /// At most `queue_limit` topics each.
    pub(super) fn keep_state(&mut self, message: &QueuedMessage, is_state: bool) {
        // A copy of its own: the payload as received is a slice of the connection's read
        // buffer, and a state kept for days would pin the whole buffer.
        let copy = || QueuedMessage {
            topic: message.topic.clone(),
            payload: bytes::Bytes::copy_from_slice(&message.payload),
            qos: message.qos,
            retain: message.retain,
            local_ack: None,
        };
        let unsent = !self.remote_up && message.qos == QoS::AtMostOnce;
        let put = if is_state && !message.payload.is_empty() {
            let put = self.retained.put(copy(), unsent);
            if put == Put::Full && !self.states_full_warned {
                self.states_full_warned = true;
                tracing::warn!(bridge = %self.name(), limit = self.config.queue_limit, topic = %message.topic, "more retained out topics than queue_limit: the newer ones are not replayed after a reconnect");
            }
            put
        } else {
            if is_state {
                self.retained.remove(&message.topic);
            }
            if !(unsent || (self.config.republish_on_connect && !is_state)) {
                return;
            }
            self.latest.put(copy(), unsent)
        };
        match put {
            Put::Replaced { unsent: true } => StatsExt::inc(&self.stats.dropped_qos0_offline),
            Put::Full if unsent => StatsExt::inc(&self.stats.dropped_qos0_offline),
            _ => {}
        }
    }

    pub(super) fn update_queued(&self) {
        let held = self.queue.len()
            + self.latest.unsent()
            + self.retained.unsent()
            + self.inflight_acks.len();
        self.stats.queued.store(held as u64, Ordering::Relaxed);
    }

    /// Moves queued QoS 1/2 messages into the remote session while the in-flight window has
    /// room.
    pub(super) fn pump(&mut self) {
        if self.remote_up {
            while self
                .remote
                .as_ref()
                .is_some_and(|c| c.session().pending_publishes() < usize::from(WINDOW))
            {
                let Some(m) = self.queue.pop() else { break };
                if !self.send_remote(m) {
                    break;
                }
            }
        }
        self.update_queued();
    }

    /// Hands a message to the remote session. Returns false (message requeued) if the link is
    /// not connected.
    pub(super) fn send_remote(&mut self, m: QueuedMessage) -> bool {
        let Some(remote) = self.remote.as_mut() else {
            self.requeue(m);
            return false;
        };
        let mut msg = Message::new(m.topic.clone(), m.payload.clone(), m.qos).retained(m.retain);
        let mut result = remote.start_publish(msg.clone());
        // An MQTT 5 remote may support less than we send: lower QoS, no retain.
        while let Err(ClientError::Unsupported(_)) = result {
            if msg.retain {
                msg.retain = false;
            } else if msg.qos > QoS::AtMostOnce {
                msg.qos = if msg.qos == QoS::ExactlyOnce {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
            } else {
                break;
            }
            result = remote.start_publish(msg.clone());
        }
        match result {
            Ok(id) => {
                StatsExt::inc(&self.stats.forwarded_out);
                StatsExt::add(&self.stats.bytes_out, m.payload.len() as u64);
                match (id, m.local_ack) {
                    (Some(id), Some(ack)) => {
                        self.inflight_acks.insert(id, ack);
                    }
                    // Sent at QoS 0 after all: the local broker may forget it now.
                    (None, ack) => self.ack_local(ack),
                    (Some(_), None) => {}
                }
                true
            }
            Err(ClientError::NotConnected) => {
                self.requeue(m);
                false
            }
            Err(e) => {
                StatsExt::inc(&self.stats.dropped_other);
                tracing::warn!(bridge = %self.name(), topic = %m.topic, error = %e, "message not forwarded to the remote");
                self.ack_local(m.local_ack);
                true
            }
        }
    }

    pub(super) fn requeue(&mut self, m: QueuedMessage) {
        if m.qos == QoS::AtMostOnce {
            // Kept as its topic's latest already (see `keep_state`) unless it was a replay.
            let _ = self.latest.put(m, true);
        } else {
            self.queue.push_front(m);
        }
    }

    /// A message from the remote broker, for the local one.
    pub(super) fn forward_in(&mut self, p: Publish) {
        if let Some(echo) = self.echo.as_mut() {
            if echo.take(&p.topic, &p.payload, std::time::Instant::now()) {
                StatsExt::inc(&self.stats.dropped_other);
                return;
            }
        }
        let Some((topic, rule)) = remap_in(&self.config.topics, &p.topic) else {
            StatsExt::inc(&self.stats.dropped_other);
            tracing::debug!(bridge = %self.name(), topic = %p.topic, "message from the remote matches no `in` rule; dropped");
            return;
        };
        self.last_activity = Instant::now();
        let mut msg =
            Message::new(topic, p.payload.clone(), p.qos.min(rule.qos)).retained(p.retain);
        msg.properties = forwarded_properties(&p.properties);
        let Some(local) = self.local.as_mut() else {
            StatsExt::inc(&self.stats.dropped_other);
            return;
        };
        match local.start_publish(msg) {
            Ok(_) => {
                StatsExt::inc(&self.stats.forwarded_in);
                StatsExt::add(&self.stats.bytes_in, p.payload.len() as u64);
            }
            Err(e) => {
                StatsExt::inc(&self.stats.dropped_other);
                tracing::warn!(bridge = %self.name(), error = %e, "message from the remote not published locally");
            }
        }
    }

    /// Publishes the link state locally (retained `1`/`0`) when notifications are on.
    pub(super) fn notify(&mut self, up: bool) {
        if !self.config.notifications || !self.local_up {
            return;
        }
        let topic = self.config.notification_topic();
        let payload = if up { "1" } else { "0" };
        if let Some(local) = self.local.as_mut() {
            let msg = Message::new(topic, payload, QoS::AtLeastOnce).retained(true);
            if let Err(e) = local.start_publish(msg) {
                tracing::debug!(bridge = %self.name(), error = %e, "notification not published");
            }
        }
    }

    /// With `notifications_local_only false`: the link state on the remote too, retained.
    pub(super) fn notify_remote(&mut self, up: bool) {
        if !self.config.notifications || self.config.notifications_local_only {
            return;
        }
        let topic = self.config.notification_topic();
        if let Some(remote) = self.remote.as_mut() {
            let msg =
                Message::new(topic, if up { "1" } else { "0" }, QoS::AtLeastOnce).retained(true);
            if let Err(e) = remote.start_publish(msg) {
                tracing::debug!(bridge = %self.config.name, error = %e, "remote notification not published");
            }
        }
    }
}

/// The MQTT 5 PUBLISH properties worth carrying across the bridge (not topic aliases or
/// subscription identifiers, which belong to one connection).
pub(super) fn forwarded_properties(p: &Properties) -> Properties {
    Properties::from(culex_proto::PropertyValues {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.clone(),
        user_properties: p.user_properties.clone(),
        ..Default::default()
    })
}
