//! Client-supplied strings (client ids, user names, topics) as they go into log lines: cut to
//! [`LOG_CLIP`] characters, with the full length noted, so a client with a 65 KB client id
//! cannot make every line about it 65 KB (log amplification, a blocked log pipe).

use std::borrow::Cow;
use std::fmt;

/// Characters of a client-supplied string kept in a log line.
pub const LOG_CLIP: usize = 64;

/// `s` for a log line: as is when short, else its first [`LOG_CLIP`] characters and
/// `…(N bytes)`.
pub fn clip(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(LOG_CLIP) {
        None => Cow::Borrowed(s),
        Some((end, _)) => Cow::Owned(format!("{}…({} bytes)", &s[..end], s.len())),
    }
}

/// A displayable [`clip`], for `tracing` fields: `client_id = %Clipped(&id)`.
#[derive(Debug, Clone, Copy)]
pub struct Clipped<'a>(pub &'a str);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&clip(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_short_ones_kept() {
        assert_eq!(clip("sensor-1"), "sensor-1");
        let long = "é".repeat(30_000);
        let c = clip(&long);
        assert!(c.starts_with(&"é".repeat(LOG_CLIP)), "{c}");
        assert!(c.ends_with("…(60000 bytes)"), "{c}");
        assert!(c.len() < 200);
        assert_eq!(
            Clipped(&"x".repeat(65)).to_string().len(),
            64 + "…(65 bytes)".len()
        );
    }
}
