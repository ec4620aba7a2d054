//! What a session is configured with: the CONNECT options and local limits, and the messages it
//! publishes.

use super::*;

/// What the client puts in its CONNECT, plus local limits.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Protocol version: 3.1, 3.1.1 or 5.0.
    pub protocol: Protocol,
    /// Client identifier; empty asks the server to assign one (3.1.1 with clean session, 5.0).
    pub client_id: String,
    /// Clean session (3.1/3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 disables keepalive pings.
    pub keep_alive: u16,
    /// User name.
    pub username: Option<String>,
    /// Password (sent only with a user name for 3.1/3.1.1, as the specification requires).
    pub password: Option<Bytes>,
    /// Will message.
    pub will: Option<LastWill>,
    /// MQTT 5 CONNECT properties (Session Expiry Interval, Receive Maximum, ...). Ignored for
    /// older versions.
    pub properties: Properties,
    /// At most this many outgoing QoS 1/2 publications in flight at once (further ones queue
    /// locally). The server's Receive Maximum lowers it further. Never below 1.
    pub max_inflight: u16,
    /// Largest packet accepted from the server (checked on the fixed header).
    pub max_packet_size: u32,
    /// The application acknowledges incoming QoS 1/2 messages itself, with
    /// [`ClientSession::ack`], once it has taken responsibility for them (e.g. a bridge, once
    /// the next hop has them). Off: they are acknowledged on arrival.
    pub manual_acks: bool,
}

impl ConnectOptions {
    /// MQTT 3.1.1, clean session, keepalive 60 s, no credentials, no will.
    pub fn new(client_id: impl Into<String>) -> Self {
        ConnectOptions {
            protocol: Protocol::V311,
            client_id: client_id.into(),
            clean_start: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            properties: Properties::default(),
            max_inflight: 20,
            max_packet_size: 268_435_460,
            manual_acks: false,
        }
    }

    /// The CONNECT packet for these options.
    pub fn connect_packet(&self) -> Connect {
        let v5 = self.protocol.is_v5();
        Connect {
            protocol: self.protocol,
            clean_start: self.clean_start,
            keep_alive: self.keep_alive,
            client_id: self.client_id.clone(),
            will: self.will.clone().map(|mut w| {
                if !v5 {
                    w.properties = Properties::default();
                }
                w
            }),
            username: self.username.clone(),
            password: if v5 || self.username.is_some() {
                self.password.clone()
            } else {
                None
            },
            properties: if v5 {
                self.properties.clone()
            } else {
                Properties::default()
            },
        }
    }
}

/// An application message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name (no wildcards).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// MQTT 5 PUBLISH properties; ignored for older versions.
    pub properties: Properties,
}

impl Message {
    /// A non-retained message without properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) -> Self {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain: false,
            properties: Properties::default(),
        }
    }

    /// The same message with the RETAIN flag set to `retain`.
    pub fn retained(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }
}
