//! The bridge crate's error type.

/// A bridge configuration that cannot work, or a failure setting up a link.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// An option has a value that cannot work. Names the bridge and the option
    /// (mosquitto.conf spelling) and says why.
    #[error("bridge {bridge:?}: option `{option}`: {why}")]
    Invalid {
        /// The bridge's `connection` name.
        bridge: String,
        /// The option, spelled as in mosquitto.conf (`topic`, `address`, `restart_timeout`, ...).
        option: &'static str,
        /// What is wrong and, where possible, how to fix it.
        why: String,
    },
    /// The TLS settings could not be turned into a client configuration (unreadable CA file,
    /// key without certificate, ...).
    #[error("bridge {bridge:?}: TLS: {why}")]
    Tls {
        /// The bridge's `connection` name.
        bridge: String,
        /// What went wrong.
        why: String,
    },
}

impl BridgeError {
    pub(crate) fn invalid(bridge: &str, option: &'static str, why: impl Into<String>) -> Self {
        BridgeError::Invalid {
            bridge: bridge.to_string(),
            option,
            why: why.into(),
        }
    }
}
