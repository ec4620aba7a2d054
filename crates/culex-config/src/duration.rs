//! Durations in both syntaxes.
//!
//! * mosquitto.conf: a positive integer followed by one unit letter, as
//!   Mosquitto: `s` second, `h` hour, `d` day, `w` week, `m` **month** (30
//!   days), `y` year (365 days). E.g. `2d`, `1w`, `6m`.
//! * TOML: a [humantime] string such as `"90s"`, `"30m"` (**minutes**),
//!   `"1h 30m"`, `"2d"`, `"1w"`; or `"never"`.
//!
//! Short delays (`persistence_batch_delay`) are whole milliseconds in mosquitto.conf and a
//! humantime string such as `"10ms"` in TOML.

use std::time::Duration;

use humantime_serde::re::humantime;

const DAY: u64 = 86_400;

/// Parses a mosquitto.conf duration (`persistent_client_expiration`).
pub(crate) fn parse_mosquitto(text: &str) -> Result<Duration, String> {
    const ALLOWED: &str = "a positive whole number followed by a unit: \
         s (seconds), h (hours), d (days), w (weeks), m (months of 30 days) or y (years of 365 days), \
         e.g. 2d or 1w";
    let Some(unit) = text.chars().last() else {
        return Err(format!("missing value; expected {ALLOWED}"));
    };
    let seconds_per_unit = match unit {
        's' => 1,
        'h' => 3600,
        'd' => DAY,
        'w' => 7 * DAY,
        'm' => 30 * DAY,
        'y' => 365 * DAY,
        _ => return Err(format!("invalid duration '{text}'; expected {ALLOWED}")),
    };
    let number = &text[..text.len() - unit.len_utf8()];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid duration '{text}'; expected {ALLOWED}"));
    }
    let count: u64 = number
        .parse()
        .map_err(|_| format!("duration '{text}' is too large"))?;
    if count == 0 {
        return Err(format!(
            "duration '{text}' must be greater than zero; to keep sessions forever leave the option out"
        ));
    }
    let seconds = count
        .checked_mul(seconds_per_unit)
        .ok_or_else(|| format!("duration '{text}' is too large"))?;
    check_max(Duration::from_secs(seconds), &format!("'{text}'"))
}

/// Refuses durations above [`MAX_DURATION`](crate::MAX_DURATION); `shown` is the value as
/// written.
pub(crate) fn check_max(d: Duration, shown: &str) -> Result<Duration, String> {
    if d > crate::MAX_DURATION {
        Err(format!(
            "duration {shown} is too long: at most 100 years (100y); leave the option out for no limit"
        ))
    } else {
        Ok(d)
    }
}

/// Parses a TOML (or environment) duration: a humantime string or `never`.
pub(crate) fn parse_toml(text: &str) -> Result<Option<Duration>, String> {
    let trimmed = text.trim();
    if trimmed == "never" {
        return Ok(None);
    }
    match humantime::parse_duration(trimmed) {
        Ok(d) if d.is_zero() => Err(format!(
            "duration \"{text}\" must be greater than zero; use \"never\" (or leave the key out) to keep sessions forever"
        )),
        Ok(d) => check_max(d, &format!("\"{trimmed}\"")).map(Some),
        Err(e) => Err(format!(
            "invalid duration \"{text}\" ({e}); expected a duration such as \"90s\", \"30m\" (minutes), \"12h\", \"2d\", \"1w\", or \"never\""
        )),
    }
}

/// Parses an interval that may be zero (`sys_interval`): whole seconds (`"10"`) or a
/// humantime string (`"10s"`, `"1m"`); `"0"` or `"0s"` is zero.
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<u64>() {
        return check_max(Duration::from_secs(n), &format!("\"{trimmed}\""));
    }
    let d = humantime::parse_duration(trimmed).map_err(|e| {
        format!(
            "invalid interval \"{text}\" ({e}); expected whole seconds such as 10, or a duration such as \"10s\" or \"1m\"; 0 disables"
        )
    })?;
    check_max(d, &format!("\"{trimmed}\""))
}

/// Checks a delay against [`MAX_BATCH_DELAY`](crate::MAX_BATCH_DELAY); `shown` is the
/// value as written.
pub(crate) fn check_delay(delay: Duration, shown: &str) -> Result<Duration, String> {
    if delay > crate::MAX_BATCH_DELAY {
        Err(format!(
            "batch delay {shown} is too long: it may be at most 1 s; allowed: 0 to 1s (e.g. \"10ms\")"
        ))
    } else {
        Ok(delay)
    }
}

/// Parses a TOML (or environment) delay (`[persistence] batch_delay`): a humantime string
/// such as `"10ms"`, `"0ms"` or `"1s"`, at most 1 s.
pub(crate) fn parse_delay(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let delay = humantime::parse_duration(trimmed).map_err(|e| {
        format!(
            "invalid duration \"{text}\" ({e}); expected a duration such as \"10ms\", \"0ms\" or \"1s\" (at most 1 s)"
        )
    })?;
    check_delay(delay, &format!("\"{trimmed}\""))
}

/// Parses a mosquitto.conf delay (`persistence_batch_delay`): whole milliseconds, 0 to 1000.
pub(crate) fn parse_delay_millis(text: &str) -> Result<Duration, String> {
    const ALLOWED: &str = "whole milliseconds, 0 to 1000 (at most 1 s), e.g. 10";
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid value '{text}'; allowed: {ALLOWED}"));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(format!(
            "value '{text}' has a leading zero (mosquitto would read it as octal); write it without, allowed: {ALLOWED}"
        ));
    }
    match text.parse::<u64>() {
        Ok(ms) if ms <= 1000 => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "batch delay {text} ms is too long: it may be at most 1 s; allowed: {ALLOWED}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mosquitto_units() {
        let s = |n| Ok(Duration::from_secs(n));
        assert_eq!(parse_mosquitto("30s"), s(30));
        assert_eq!(parse_mosquitto("1h"), s(3600));
        assert_eq!(parse_mosquitto("2d"), s(2 * DAY));
        assert_eq!(parse_mosquitto("1w"), s(7 * DAY));
        assert_eq!(parse_mosquitto("1m"), s(30 * DAY));
        assert_eq!(parse_mosquitto("1y"), s(365 * DAY));
    }

    #[test]
    fn mosquitto_rejects_garbage() {
        for bad in [
            "", "d", "10", "1.5d", "-1d", "0d", "1x", "1 d", "+1d", "1dd", "é",
        ] {
            assert!(parse_mosquitto(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_mosquitto("99999999999999999999y").is_err());
        assert!(parse_mosquitto("999999999999999999y").is_err());
    }

    #[test]
    fn seconds_intervals() {
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn delays() {
        let ms = |n| Ok(Duration::from_millis(n));
        assert_eq!(parse_delay("10ms"), ms(10));
        assert_eq!(parse_delay("0ms"), ms(0));
        assert_eq!(parse_delay("1s"), ms(1000));
        assert_eq!(parse_delay(" 250ms "), ms(250));
        assert!(parse_delay("1001ms")
            .expect_err("too long")
            .contains("at most 1 s"));
        assert!(parse_delay("2s")
            .expect_err("too long")
            .contains("at most 1 s"));
        assert!(parse_delay("soon").is_err());
        assert!(parse_delay("never").is_err());
        assert!(parse_delay("-1ms").is_err());

        assert_eq!(parse_delay_millis("10"), ms(10));
        assert_eq!(parse_delay_millis("0"), ms(0));
        assert_eq!(parse_delay_millis("1000"), ms(1000));
        assert!(parse_delay_millis("1001")
            .expect_err("too long")
            .contains("at most 1 s"));
        assert!(parse_delay_millis("99999999999999999999999")
            .expect_err("too long")
            .contains("at most 1 s"));
        for bad in ["", "10ms", "-1", "1.5", "+1", "010"] {
            assert!(parse_delay_millis(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn toml_durations() {
        assert_eq!(parse_toml("30m"), Ok(Some(Duration::from_secs(1800))));
        assert_eq!(parse_toml("2d"), Ok(Some(Duration::from_secs(2 * DAY))));
        assert_eq!(parse_toml("1h 30m"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(parse_toml("never"), Ok(None));
        assert!(parse_toml("0s").is_err());
        assert!(parse_toml("3600").is_err());
        assert!(parse_toml("soon").is_err());
    }
}
