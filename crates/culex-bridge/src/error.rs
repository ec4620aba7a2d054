//! The bridge crate's error type.

/// A bridge configuration that cannot work, or a failure setting up a link.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// An option has a value that cannot work
    /// ([`BridgeConfig::validate`](crate::BridgeConfig::validate)).
    #[error(transparent)]
    Invalid(#[from] crate::InvalidBridge),
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
