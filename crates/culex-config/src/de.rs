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

/// `[sys] interval`: whole seconds (`10`) or a duration string (`"10s"`, `"1m"`); zero
/// disables.
pub(crate) fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("whole seconds or a duration string such as \"10s\"")
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("value {v} is out of range; allowed: 0 or more")))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Duration, E> {
            duration::parse_seconds(v).map_err(E::custom)
        }
    }
    d.deserialize_any(Visitor)
}

/// `[persistence] batch_delay`: a duration string such as `"10ms"`, at most 1 s. Integers
/// only come from environment overrides (the `config` crate turns `"0"` into `0`) and are
/// read as the same text.
pub(crate) fn delay<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration string such as \"10ms\"")
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Duration, E> {
            duration::parse_delay(&v.to_string()).map_err(E::custom)
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Duration, E> {
            duration::parse_delay(&v.to_string()).map_err(E::custom)
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Duration, E> {
            duration::parse_delay(v).map_err(E::custom)
        }
    }
    d.deserialize_any(Visitor)
}
