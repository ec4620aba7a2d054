//! MQTT topics as NATS subjects.
//!
//! A NATS subject is a list of `.`-separated tokens; a token is never empty and never holds
//! `.`, `*`, `>` or white space, and the server refuses control lines (subject included)
//! beyond 4 KB. An MQTT topic level may be empty and may hold any of those. So each level is
//! escaped into one token, injectively:
//!
//! * `%`, `.`, `*`, `>`, ASCII white space and control characters become `%XX` (upper-case
//!   hex of the byte); every other character, UTF-8 included, stays as it is;
//! * an empty level becomes the token `%` alone, which escaping never produces;
//! * a topic whose subject would be longer than [`MAX_SUBJECT`] goes to the reserved subject
//!   `PREFIX.%%` (escaping never produces `%%` either). Receivers read the topic from the
//!   message itself, never from the subject, so only interest routing is coarser for them.
//!
//! Before the levels comes one token for the topic's class: `t` for an ordinary topic, `d` for
//! one that starts with `$` (`PREFIX.t.a.b`, `PREFIX.d.$SYS.x`). MQTT's `#` and `+` never match
//! a `$` topic at the first level [MQTT-4.7.2-1], but NATS's `>` and `*` match any token; with
//! the class token a filter that starts with a wildcard becomes `PREFIX.t.…` and cannot reach
//! `$` topics, while a filter that starts with `$…` becomes `PREFIX.d.…`. So NATS matching
//! agrees with MQTT matching for every topic, and a subscriber never has to re-check.
//!
//! Filters map to subject patterns: `+` is `*` (one token, the empty one included, as `+`
//! matches an empty level) and a trailing `#` is `>`; because MQTT's `a/#` also matches `a`
//! itself, such a filter becomes two patterns, `a` and `a.>`.

use std::fmt::Write as _;

/// Longest subject produced (bytes): well inside NATS's 4 KB control-line limit, with room
/// for the `PUB`/`HPUB` verb, a reply subject and sizes.
pub const MAX_SUBJECT: usize = 3072;

/// The token that stands for every topic too long for a subject of its own.
const LONG: &str = "%%";
/// The class token of topics that do not start with `$`.
const ORDINARY: &str = "t";
/// The class token of topics that start with `$`.
const DOLLAR: &str = "d";

fn class_of(first_level: &str) -> &'static str {
    if first_level.starts_with('$') {
        DOLLAR
    } else {
        ORDINARY
    }
}

/// Why a subject is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// It does not start with the expected prefix.
    #[error("subject outside the prefix")]
    Foreign,
    /// A token is not a valid escape.
    #[error("bad escape in token '{0}'")]
    BadToken(String),
    /// The reserved subject of long topics: the topic is in the message, not the subject.
    #[error("topic too long for a subject")]
    Long,
}

fn needs_escape(c: char) -> bool {
    matches!(c, '%' | '.' | '*' | '>') || c.is_ascii_whitespace() || c.is_control()
}

/// One topic level as one subject token.
fn push_token(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for c in level.chars() {
        if needs_escape(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// The subject of `topic` under `prefix` (e.g. `culex.q1`).
pub fn topic_to_subject(prefix: &str, topic: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + topic.len() + 8);
    out.push_str(prefix);
    out.push('.');
    out.push_str(class_of(topic));
    for level in topic.split('/') {
        out.push('.');
        push_token(&mut out, level);
    }
    if out.len() > MAX_SUBJECT {
        return format!("{prefix}.{LONG}");
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The topic level of one token.
fn level_of(token: &str) -> Result<String, SubjectError> {
    let bad = || SubjectError::BadToken(token.to_owned());
    if token == "%" {
        return Ok(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(bad());
            };
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let level = String::from_utf8(out).map_err(|_| bad())?;
    // Only the escaped form is accepted, so that the mapping stays one-to-one.
    let mut again = String::new();
    push_token(&mut again, &level);
    if again == token {
        Ok(level)
    } else {
        Err(bad())
    }
}

/// The topic of a subject made by [`topic_to_subject`] with the same `prefix`.
pub fn subject_to_topic(prefix: &str, subject: &str) -> Result<String, SubjectError> {
    let rest = subject
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(SubjectError::Foreign)?;
    if rest == LONG {
        return Err(SubjectError::Long);
    }
    let (class, levels) = rest
        .split_once('.')
        .ok_or_else(|| SubjectError::BadToken(rest.to_owned()))?;
    let topic = levels
        .split('.')
        .map(level_of)
        .collect::<Result<Vec<_>, _>>()?
        .join("/");
    // Only the class the topic's first level calls for, so that the mapping stays one-to-one.
    if class == class_of(&topic) {
        Ok(topic)
    } else {
        Err(SubjectError::BadToken(class.to_owned()))
    }
}

/// The subject patterns that together match exactly the subjects of the topics `filter`
/// matches, `$` rule included (plus the reserved subject of long topics, which every receiver
/// takes and checks itself). `filter` must be a valid MQTT filter without a `$share/` prefix.
pub fn filter_to_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let mut pattern = String::from(prefix);
    pattern.push('.');
    // A wildcard first level is never `$`-prefixed, so it lands in the ordinary class.
    pattern.push_str(class_of(filter));
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" if i == 0 => {
                pattern.push_str(".>");
                return vec![pattern];
            }
            "#" => {
                let parent = pattern.clone();
                pattern.push_str(".>");
                return vec![parent, pattern];
            }
            "+" => pattern.push_str(".*"),
            level => {
                pattern.push('.');
                push_token(&mut pattern, level);
            }
        }
    }
    vec![pattern]
}

/// The subject long topics share under `prefix` (see [`topic_to_subject`]).
pub fn long_topics_subject(prefix: &str) -> String {
    format!("{prefix}.{LONG}")
}

#[cfg(test)]
mod tests;
