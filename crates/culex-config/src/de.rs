//! serde helpers for fields whose file representation differs from the
//! model: `max_inflight_messages = 0` (unlimited, stored as 65535),
//! `max_connections = -1` (unlimited, stored as `None`) and durations given
//! as strings.

use std::time::Duration;

use serde::de::{Deserializer, Error};
use serde::Deserialize;

use crate::duration;

/// `max_inflight_messages`: 0 to 65535, 0 meaning 65535.
pub(crate) fn inflight<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = i64::deserialize(d)?;
    match v {
        0 => Ok(u16::MAX),
        _ => u16::try_from(v).map_err(|_| {
            D::Error::custom(format!(
                "value {v} is out of range; allowed: 0 to 65535 (0 means unlimited)"
            ))
        }),
    }
}

/// `max_connections`: -1 means unlimited (`None`).
pub(crate) fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let v = i64::deserialize(d)?;
    if v == -1 {
        return Ok(None);
    }
    match usize::try_from(v) {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(D::Error::custom(format!(
            "value {v} is out of range; allowed: -1 (unlimited) or a positive number"
        ))),
    }
}

/// `persistent_client_expiration`: a humantime string or `"never"`.
pub(crate) fn expiration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    duration::parse_toml(&s).map_err(D::Error::custom)
}
