//! Connecting: one round over the remote addresses, the connect options of both sides, and
//! the state a failed attempt leaves the link in.

use super::*;

/// One connect round: every address in order, starting at `start` (`round_robin`), until one
/// accepts. Keeps (and returns) the remote
/// connection so its session's in-flight publications survive a failed round.
pub(super) async fn connect_round(
    config: Arc<BridgeConfig>,
    mut conn: Option<Connection>,
    stats: Arc<BridgeStats>,
    start: usize,
) -> Attempt {
    let mut last_error = ClientError::NotConnected;
    let n = config.addresses.len();
    for index in (0..n).map(|i| (start + i) % n) {
        let Some((host, port)) = config.addresses.get(index) else {
            continue;
        };
        let result = async {
            let io = remote::open(&config, host, *port, CONNECT_TIMEOUT).await?;
            match conn.as_mut() {
                Some(c) => c.reconnect(io, CONNECT_TIMEOUT).await,
                None => {
                    let session = ClientSession::new(remote_options(&config));
                    conn = Some(Connection::handshake(io, session, None, CONNECT_TIMEOUT).await?);
                    Ok(())
                }
            }
        }
        .await;
        match result {
            Ok(()) => {
                return Attempt {
                    conn,
                    result: Ok(index),
                }
            }
            Err(e) => {
                StatsExt::inc(&stats.reconnect_attempts);
                tracing::debug!(bridge = %config.name, remote = %format!("{host}:{port}"), error = %e, "connect attempt failed");
                last_error = e;
            }
        }
    }
    Attempt {
        conn,
        result: Err(last_error),
    }
}

pub(super) fn remote_options(config: &BridgeConfig) -> ConnectOptions {
    let mut o = ConnectOptions::new(config.remote_clientid.clone());
    o.protocol = match config.protocol {
        BridgeProtocol::V311 => Protocol::V311,
        BridgeProtocol::V5 => Protocol::V5,
    };
    o.clean_start = config.cleansession;
    o.keep_alive = u16::try_from(config.keepalive.as_secs()).unwrap_or(u16::MAX);
    o.username = config.remote_username.clone();
    if config.notifications && !config.notifications_local_only {
        // The remote learns that the link is gone even when it drops uncleanly.
        o.will = Some(culex_proto::LastWill {
            topic: config.notification_topic(),
            payload: bytes::Bytes::from_static(b"0"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default(),
        });
    }
    o.password = config
        .remote_password
        .as_ref()
        .map(|p| bytes::Bytes::from(p.clone().into_bytes()));
    if config.protocol == BridgeProtocol::V5 {
        o.properties.receive_maximum = config.receive_maximum;
    }
    if config.protocol == BridgeProtocol::V5 && !config.cleansession {
        // A persistent session in MQTT 5 needs a session expiry; 3.1.1 sessions never expire.
        o.properties.session_expiry_interval = Some(u32::MAX);
    }
    o.max_inflight = WINDOW;
    if let Some(max) = config.max_packet_size {
        o.max_packet_size = max;
    }
    o
}

pub(super) fn local_options(config: &BridgeConfig) -> ConnectOptions {
    let mut o = ConnectOptions::new(config.local_clientid.clone());
    // MQTT 5 locally for No Local (no echo of what the bridge publishes) and Retain As
    // Published.
    o.protocol = Protocol::V5;
    o.clean_start = config.local_cleansession;
    o.keep_alive = 60;
    if !config.local_cleansession {
        o.properties.session_expiry_interval = Some(u32::MAX);
    }
    o.max_inflight = WINDOW;
    // Store-and-forward: a message is acknowledged locally only once the remote has it, and
    // the broker hands over at most WINDOW at a time; the rest wait in the local session.
    o.manual_acks = true;
    o.properties.receive_maximum = Some(WINDOW);
    o
}

/// Unsubscribes `filters` (none: nothing to do) and waits for the UNSUBACK (`what`).
pub(super) async fn unsubscribe(
    conn: Option<&mut Connection>,
    filters: Vec<String>,
    what: &'static str,
) -> Result<(), ClientError> {
    let Some(conn) = conn.filter(|_| !filters.is_empty()) else {
        return Ok(());
    };
    tokio::time::timeout(ACK_TIMEOUT, conn.unsubscribe(filters))
        .await
        .map_err(|_| ClientError::Timeout(what))??;
    Ok(())
}

/// The state to show while waiting after a failure: refused credentials and TLS failures have
/// their own, since they need the operator rather than time.
pub(super) fn waiting_state(e: &ClientError) -> LinkState {
    match (FailureKind::of(e), e) {
        (FailureKind::BadCredentials, _) => LinkState::CredentialsRefused,
        (_, ClientError::Tls(_)) => LinkState::TlsFailed,
        _ => LinkState::BackingOff,
    }
}
