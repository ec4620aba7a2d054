//! The local side: the bridge's own connection to this broker, its subscriptions to the
//! `out` rules, and what a lost local connection means for deliveries in flight.

use super::*;

impl Link {
    /// The local connection was lost. With a persistent local session the broker delivers the
    /// unacknowledged messages again after the reconnect, so the copies not yet handed to the
    /// remote are dropped here (they would go out twice). Those already with the remote are
    /// kept: their acknowledgement goes to the new connection, under the same packet
    /// identifier the broker uses for the redelivery.
    pub(super) fn forget_local_deliveries(&mut self) {
        if self.config.local_cleansession {
            return;
        }
        let mut keep = Vec::new();
        while let Some(m) = self.queue.pop() {
            if m.local_ack.is_none() {
                keep.push(m);
            }
        }
        for m in keep {
            self.queue.push(m);
        }
    }

    /// Connects (or reconnects) the local connection and subscribes the `out` topics. Returns
    /// false if shutdown came first.
    pub(super) async fn connect_local(&mut self) -> bool {
        let mut delay = LOCAL_RETRY_MIN;
        loop {
            if self.shutting_down() {
                return false;
            }
            match self.try_connect_local().await {
                Ok(()) => {
                    self.local_up = true;
                    tracing::info!(bridge = %self.name(), client_id = %self.config.local_clientid, "bridge connected to the local broker");
                    // Mosquitto publishes the initial state before the first connect.
                    let up = self.remote_up;
                    self.notify(up);
                    return true;
                }
                Err(e) => {
                    let text = format!("local connection failed: {e}");
                    if self.log.changed(&text) {
                        tracing::warn!(bridge = %self.name(), "{text}; retrying");
                    }
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = shutdown.changed() => {}
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(LOCAL_RETRY_MAX);
                }
            }
        }
    }

    pub(super) async fn try_connect_local(&mut self) -> Result<(), ClientError> {
        let io = tokio::time::timeout(ACK_TIMEOUT, (self.connector)())
            .await
            .map_err(|_| ClientError::Timeout("opening the local stream"))??;
        match self.local.as_mut() {
            Some(conn) => conn.reconnect(io, ACK_TIMEOUT).await?,
            None => {
                let session = ClientSession::new(local_options(&self.config));
                self.local = Some(Connection::handshake(io, session, None, ACK_TIMEOUT).await?);
            }
        }
        self.subscribe_local().await
    }

    /// Subscribes (again) to the local filters of the `out` rules; a repeated subscription
    /// re-sends the retained messages, i.e. the current local state.
    pub(super) async fn subscribe_local(&mut self) -> Result<(), ClientError> {
        let filters: Vec<SubscribeFilter> = self
            .config
            .topics
            .iter()
            .filter(|r| r.direction.is_out())
            .map(|r| SubscribeFilter {
                filter: r.local_filter(),
                options: SubscriptionOptions {
                    qos: r.qos,
                    // Messages the bridge publishes locally (from the remote) must not come back.
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendAtSubscribe,
                },
            })
            .collect();
        if filters.is_empty() {
            return Ok(());
        }
        let Some(local) = self.local.as_mut() else {
            return Err(ClientError::NotConnected);
        };
        let ack =
            tokio::time::timeout(ACK_TIMEOUT, local.subscribe(filters, Properties::default()))
                .await
                .map_err(|_| ClientError::Timeout("waiting for the local SUBACK"))??;
        for (code, rule) in ack
            .reason_codes
            .iter()
            .zip(self.config.topics.iter().filter(|r| r.direction.is_out()))
        {
            if code.as_u8() >= 0x80 {
                tracing::error!(bridge = %self.name(), filter = %rule.local_filter(), reason = ?code, "the local broker refused the bridge's subscription");
            }
        }
        Ok(())
    }
}
