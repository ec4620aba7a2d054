//! Mosquitto ACL files: `user`, `topic` and `pattern` lines.
//!
//! # Syntax (Mosquitto 2.0)
//!
//! ```text
//! # comment
//! topic [read|write|readwrite|deny] FILTER     # before any `user` line: anonymous clients
//! user NAME                                    # NAME is the rest of the line (may hold spaces)
//! topic [read|write|readwrite|deny] FILTER     # for NAME
//! pattern [read|write|readwrite|deny] FILTER   # for everyone; %u = username, %c = client id
//! ```
//!
//! * The access word is optional and defaults to `readwrite`. If it is given, FILTER is the
//!   rest of the line with surrounding blanks trimmed, so it may contain spaces
//!   (`topic read room 101/#`). Without it, FILTER is a single word: `topic read` alone means
//!   the topic named `read` with readwrite access, and `topic room 101` is an error (`room` is
//!   not an access word), exactly as in Mosquitto.
//! * FILTER must be a valid MQTT topic filter (`+` and `#` only as whole levels, `#` last).
//! * Blank lines and lines whose first non-blank character is `#` are comments. Mosquitto
//!   only treats `#` in column 1 as a comment and splits words on spaces only; Culex also
//!   accepts leading blanks and tabs between words. Anything else (an unknown keyword, a
//!   missing username or filter, an unknown access word, an invalid filter, a non-UTF-8 line)
//!   rejects the whole file with an error naming the file and line.
//! * Several `user` sections with the same name are merged.
//!
//! # Semantics (Mosquitto 2.0's `security_default.c`, confirmed against mosquitto 2.0.11)
//!
//! For a check of `topic` with access READ or WRITE:
//!
//! 1. WRITE to a topic starting with `$SYS` is always denied.
//! 2. The client's own list is chosen: an anonymous client (no username) gets the `topic`
//!    lines that precede any `user` line; a client with a username gets that user's section
//!    (none if there is no section; the anonymous rules never apply to it).
//! 3. In that list, `deny` entries are checked first: a matching one denies. Then the other
//!    entries in file order: the first one that matches *and* grants the access allows.
//! 4. If any `pattern` lines exist: a client whose username or client id contains `+` or `#`
//!    is denied (Mosquitto's protection against wildcard injection through `%u`/`%c`; `/` is
//!    allowed and substitutes as a level separator). Then `deny` patterns, then the others, as
//!    in step 3. A pattern containing `%u` never matches an anonymous client.
//! 5. Nothing matched: denied. (An ACL file with no rules denies everything.)
//!
//! Matching is MQTT topic matching plus Mosquitto's `$` rule: a topic starting with `$`
//! is only matched by a filter that starts with `$` (so `#` and `+/…` never match
//! `$SYS/…`). `%u`/`%c` substitution is textual, like Mosquitto 2.0 (`foo%u` works and a
//! username `a/b` fills two levels).
//!
//! # Subscribe (beyond Mosquitto)
//!
//! Mosquitto 2.0 does not check SUBSCRIBE against the ACL file at all; it only filters each
//! delivered message. [`Access::Subscribe`] checks the subscription filter *as if it were a
//! topic name* for READ access: `+` and `#` in it are ordinary characters that fill a level.
//! So with `topic read a/#`, subscribing to `a/+/x` or `a/#` is allowed (`a/#` matches the
//! "topic" `a/+/x`); with `topic read a/b`, subscribing to `a/+` is refused (`b` ≠ `+`); with
//! `topic read a/+`, subscribing to `a/#` *is* allowed (the ACL's `+` matches the level `#`),
//! and the per-message READ check then filters what is delivered. A shared subscription
//! `$share/GROUP/FILTER` is checked as FILTER. The broker must still READ-check every message
//! it delivers.
//!
//! # Cost
//!
//! Loading precompiles everything: rules are grouped per user in a hash map, `deny` rules are
//! separated, and patterns are split into literal pieces and `%u`/`%c` slots. A check does one
//! hash-map lookup of the username, then walks the user's rules and the patterns, matching
//! level by level against the topic; substitution is streamed, so a check never allocates.
//! Cost is O(number of applicable rules × topic length).

use std::collections::HashMap;
use std::path::Path;

use culex_proto::topic::{matches, parse_shared};

use crate::{numbered_lines, read_file, AuthError, Warning};

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive a message published to this topic name (checked on every delivery, including
    /// retained messages).
    Read,
    /// Publish to this topic name (PUBLISH, and the will when it is sent).
    Write,
    /// Subscribe to this topic filter: the filter is checked as a topic name for READ access
    /// (see the module documentation). Not a Mosquitto check.
    Subscribe,
}

/// The permission an ACL line grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    read: bool,
    write: bool,
}

impl Grant {
    fn allows(self, want_write: bool) -> bool {
        if want_write {
            self.write
        } else {
            self.read
        }
    }
}

/// The `topic` rules of one user (or of anonymous clients).
#[derive(Debug, Clone, Default)]
struct RuleList {
    deny: Vec<String>,
    allow: Vec<(String, Grant)>,
}

/// A piece of a compiled `pattern` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    ClientId,
    Username,
}

/// A compiled `pattern` filter.
#[derive(Debug, Clone)]
struct Pattern {
    pieces: Vec<Piece>,
    uses_username: bool,
}

/// A loaded ACL file. Immutable after loading and `Send + Sync`: share it behind an `Arc`, and
/// on reload build a new one and swap it in only if it loaded without error.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    anonymous: Option<RuleList>,
    users: HashMap<String, RuleList>,
    pattern_deny: Vec<Pattern>,
    pattern_allow: Vec<(Pattern, Grant)>,
    warnings: Vec<Warning>,
}

/// Splits off the first word (separated by spaces or tabs); returns it and the rest.
fn next_word(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        return None;
    }
    Some(match s.find([' ', '\t']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    })
}

/// Validates an ACL filter the way Mosquitto's `mosquitto_sub_topic_check` does: at most 65535
/// bytes, no U+0000, `+` alone in its level, `#` alone in the last level. (`$share/…` gets no
/// special treatment, unlike a SUBSCRIBE filter.)
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.len() > 65_535 {
        return Err("topic filter longer than 65535 bytes".into());
    }
    if filter.contains('\0') {
        return Err("topic filter contains U+0000".into());
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => {
                return Err(format!(
                    "invalid topic filter '{filter}': '#' must be the last level"
                ))
            }
            "#" | "+" => {}
            _ if level.contains(['+', '#']) => {
                return Err(format!(
                    "invalid topic filter '{filter}': '+' and '#' must occupy a whole level"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

impl Pattern {
    /// Compiles a pattern filter: `%c` and `%u` become slots, everything else is literal
    /// (scanning left to right, as Mosquitto's substitution does).
    fn compile(filter: &str) -> Pattern {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut uses_username = false;
        let mut chars = filter.chars().peekable();
        while let Some(c) = chars.next() {
            let slot = match (c, chars.peek()) {
                ('%', Some('c')) => Some(Piece::ClientId),
                ('%', Some('u')) => Some(Piece::Username),
                _ => None,
            };
            match slot {
                Some(piece) => {
                    chars.next();
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    uses_username |= piece == Piece::Username;
                    pieces.push(piece);
                }
                None => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Pattern {
            pieces,
            uses_username,
        }
    }

    fn has_slots(&self) -> bool {
        self.pieces.iter().any(|p| !matches!(p, Piece::Literal(_)))
    }

    /// Does the filter, with `%u`/`%c` substituted, match `topic`? Streams the substituted
    /// filter byte by byte; never allocates.
    fn matches(&self, username: &str, client_id: &str, topic: &str) -> bool {
        let filter = self.pieces.iter().flat_map(|p| {
            match p {
                Piece::Literal(s) => s.as_str(),
                Piece::ClientId => client_id,
                Piece::Username => username,
            }
            .bytes()
        });
        stream_matches(filter, topic.as_bytes())
    }
}

/// MQTT topic matching of a filter given as a byte stream against a topic, with Mosquitto's `$`
/// rule (a filter matches a `$` topic only if it starts with `$` too). The filter's `+`/`#`
/// bytes are wildcards (filters are validated and substituted values contain neither); the
/// topic's bytes are all literal.
fn stream_matches(filter: impl Iterator<Item = u8>, topic: &[u8]) -> bool {
    let mut f = filter.peekable();
    if (f.peek() == Some(&b'$')) != (topic.first() == Some(&b'$')) {
        return false;
    }
    let mut i = 0;
    loop {
        // At the start of a level in both.
        match f.peek() {
            Some(b'#') => return true,
            Some(b'+') => {
                f.next();
                while i < topic.len() && topic[i] != b'/' {
                    i += 1;
                }
            }
            _ => {
                while let Some(&c) = f.peek() {
                    if c == b'/' {
                        break;
                    }
                    if topic.get(i) != Some(&c) {
                        return false;
                    }
                    f.next();
                    i += 1;
                }
                if i < topic.len() && topic[i] != b'/' {
                    return false;
                }
            }
        }
        // At the end of a level in both.
        match (f.next(), i < topic.len()) {
            (None, false) => return true,
            (Some(b'/'), true) => i += 1,
            // The topic ended: `x/#` matches `x`.
            (Some(b'/'), false) => return f.next() == Some(b'#') && f.next().is_none(),
            _ => return false,
        }
    }
}

/// Does a `topic` rule's filter match? Mosquitto's `$` rule is explicit here; `matches` also
/// refuses wildcards in the first level against `$` topics.
fn rule_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !filter.starts_with('$') {
        return false;
    }
    matches(filter, topic)
}

impl AclFile {
    /// Reads and parses the ACL file at `path`. Any invalid line rejects the whole file, with
    /// an error naming the file and line.
    pub fn load(path: &Path) -> Result<AclFile, AuthError> {
        let bytes = read_file(path)?;
        Self::parse_bytes(&bytes, path)
    }

    /// Parses ACL file text; `origin` names the file in errors and warnings.
    pub fn parse(text: &str, origin: &Path) -> Result<AclFile, AuthError> {
        Self::parse_bytes(text.as_bytes(), origin)
    }

    fn parse_bytes(bytes: &[u8], origin: &Path) -> Result<AclFile, AuthError> {
        let mut acl = AclFile::default();
        let mut current_user: Option<String> = None;
        for (line_no, raw) in numbered_lines(bytes) {
            let err = |message: String| AuthError::Syntax {
                path: origin.to_path_buf(),
                line: line_no,
                message,
            };
            let line = std::str::from_utf8(raw)
                .map_err(|_| err("line is not valid UTF-8".into()))?
                .trim_end();
            let Some((keyword, rest)) = next_word(line) else {
                continue;
            };
            if keyword.starts_with('#') {
                continue;
            }
            match keyword {
                "user" => {
                    let name = rest.trim_matches([' ', '\t']);
                    if name.is_empty() {
                        return Err(err("missing username after 'user'".into()));
                    }
                    current_user = Some(name.to_owned());
                }
                "topic" | "pattern" => {
                    let Some((first, after)) = next_word(rest) else {
                        return Err(err(format!("missing topic filter after '{keyword}'")));
                    };
                    let after = after.trim_matches([' ', '\t']);
                    let (access, filter) = if after.is_empty() {
                        (None, first)
                    } else {
                        (Some(first), after)
                    };
                    let grant = match access {
                        None | Some("readwrite") => Some(Grant {
                            read: true,
                            write: true,
                        }),
                        Some("read") => Some(Grant {
                            read: true,
                            write: false,
                        }),
                        Some("write") => Some(Grant {
                            read: false,
                            write: true,
                        }),
                        Some("deny") => None,
                        Some(other) => {
                            return Err(err(format!(
                                "invalid access type '{other}' (expected read, write, readwrite \
                                 or deny; a topic filter containing spaces needs an explicit \
                                 access type)"
                            )))
                        }
                    };
                    check_filter(filter).map_err(err)?;
                    if keyword == "topic" {
                        let list = match &current_user {
                            Some(user) => acl.users.entry(user.clone()).or_default(),
                            None => acl.anonymous.get_or_insert_with(RuleList::default),
                        };
                        match grant {
                            Some(g) => list.allow.push((filter.to_owned(), g)),
                            None => list.deny.push(filter.to_owned()),
                        }
                    } else {
                        let pattern = Pattern::compile(filter);
                        if !pattern.has_slots() {
                            acl.warnings.push(Warning {
                                path: origin.to_path_buf(),
                                line: line_no,
                                message: format!(
                                    "pattern '{filter}' contains neither %c nor %u \
                                     (it applies to every client)"
                                ),
                            });
                        }
                        match grant {
                            Some(g) => acl.pattern_allow.push((pattern, g)),
                            None => acl.pattern_deny.push(pattern),
                        }
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword '{other}' (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// May this client read / write / subscribe to `topic`? `username` is `None` for an
    /// anonymous client. For [`Access::Subscribe`], `topic` is the subscription filter. See
    /// the module documentation for the exact rules and their cost (no allocation).
    pub fn check(
        &self,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        access: Access,
    ) -> bool {
        let (topic, want_write) = match access {
            Access::Read => (topic, false),
            Access::Write => {
                if topic.starts_with("$SYS") {
                    return false;
                }
                (topic, true)
            }
            Access::Subscribe => match parse_shared(topic) {
                Ok(Some(shared)) => (shared.filter, false),
                _ => (topic, false),
            },
        };

        let list = match username {
            Some(name) => self.users.get(name),
            None => self.anonymous.as_ref(),
        };
        if let Some(list) = list {
            if list.deny.iter().any(|f| rule_matches(f, topic)) {
                return false;
            }
            if list
                .allow
                .iter()
                .any(|(f, grant)| grant.allows(want_write) && rule_matches(f, topic))
            {
                return true;
            }
        }

        if self.pattern_deny.is_empty() && self.pattern_allow.is_empty() {
            return false;
        }
        let dangerous = |s: &str| s.contains(['+', '#']);
        if username.is_some_and(dangerous) || dangerous(client_id) {
            return false;
        }
        let applies = |p: &Pattern| !p.uses_username || username.is_some();
        let user = username.unwrap_or("");
        if self
            .pattern_deny
            .iter()
            .any(|p| applies(p) && p.matches(user, client_id, topic))
        {
            return false;
        }
        self.pattern_allow.iter().any(|(p, grant)| {
            grant.allows(want_write) && applies(p) && p.matches(user, client_id, topic)
        })
    }

    /// Non-fatal remarks from loading (a `pattern` without `%c` or `%u`, as Mosquitto warns).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// True if the file has no rules at all (then every check is denied).
    pub fn is_empty(&self) -> bool {
        self.anonymous.is_none()
            && self.users.is_empty()
            && self.pattern_deny.is_empty()
            && self.pattern_allow.is_empty()
    }

    /// Does the file have a `user` section for `username`?
    pub fn has_user(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }
}

#[cfg(test)]
mod tests;
