//! Topic names and topic filters (MQTT 5.0 section 4.7, shared subscriptions 4.8.2).
//!
//! A *topic name* is what a PUBLISH is sent to; it never contains wildcards. A *topic filter* is
//! what a SUBSCRIBE asks for; it may contain the single-level wildcard `+` and the multi-level
//! wildcard `#`, and may take the shared form `$share/{ShareName}/{filter}`.
//!
//! Rule identifiers are those of MQTT 5.0; MQTT 3.1.1 has the same rules (numbered 4.7.1-1 for
//! wildcards in names, 4.7.1-2 for `#`, 4.7.1-3 for `+`).
//!
//! Validation works on `&str`, so UTF-8 well-formedness is already guaranteed by the decoder;
//! what remains is emptiness, length, U+0000 and wildcard placement.

/// Largest length in bytes of an encoded topic name or filter (a two-byte length prefix).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix that marks a shared subscription filter.
pub const SHARED_PREFIX: &str = "$share/";

/// Why a topic name or topic filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name or filter is the empty string.
    #[error("[MQTT-4.7.3-1] topic names and topic filters must be at least one character long")]
    Empty,
    /// The name or filter is longer than 65535 bytes.
    #[error(
        "[MQTT-4.7.3-3] topic names and topic filters must not encode to more than 65535 bytes"
    )]
    TooLong,
    /// The name or filter contains U+0000.
    #[error(
        "[MQTT-4.7.3-2] topic names and topic filters must not include the null character U+0000"
    )]
    NullCharacter,
    /// A topic name contains `+` or `#`.
    #[error("[MQTT-4.7.0-1] [MQTT-3.3.2-2] a topic name must not contain wildcard characters")]
    WildcardInName,
    /// `#` is not alone in the last level of a filter.
    #[error("[MQTT-4.7.1-1] '#' must be the last character and occupy a whole level")]
    MultiLevelWildcard,
    /// `+` does not occupy a whole level of a filter.
    #[error("[MQTT-4.7.1-2] '+' must occupy a whole level")]
    SingleLevelWildcard,
    /// The ShareName of a `$share/` filter is empty.
    #[error(
        "[MQTT-4.8.2-1] the ShareName of a shared subscription must be at least one character long"
    )]
    EmptyShareName,
    /// The ShareName of a `$share/` filter contains `+` or `#`, or is not followed by `/`.
    #[error("[MQTT-4.8.2-2] the ShareName must not contain '/', '+' or '#' and must be followed by '/' and a topic filter")]
    InvalidShareName,
    /// The filter after `$share/{ShareName}/` is empty.
    #[error("[MQTT-4.8.2-2] a shared subscription's ShareName must be followed by a non-empty topic filter")]
    EmptySharedFilter,
}

/// Checks the rules common to names and filters: non-empty, at most 65535 bytes, no U+0000.
fn validate_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Validates a topic name (as carried by PUBLISH or a will): non-empty, at most 65535 bytes,
/// no U+0000, and no wildcard characters.
///
/// An MQTT 5 PUBLISH may carry an empty topic name together with a Topic Alias; resolve the
/// alias before calling this.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    validate_common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Validates the wildcard placement of a plain (non-shared) filter, already known to be
/// non-empty.
fn validate_levels(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => return Err(TopicError::MultiLevelWildcard),
            "#" | "+" => {}
            _ if level.contains('#') => return Err(TopicError::MultiLevelWildcard),
            _ if level.contains('+') => return Err(TopicError::SingleLevelWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// Validates a topic filter (as carried by SUBSCRIBE or UNSUBSCRIBE): non-empty, at most 65535
/// bytes, no U+0000, `#` only alone in the last level, `+` only alone in its level.
///
/// A filter beginning with `$share/` must be a well-formed shared subscription filter (see
/// [`parse_shared`]). Whether shared subscriptions are allowed at all (MQTT 5 only, and only when
/// the server supports them) is for the caller to decide.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    validate_common(filter)?;
    match parse_shared(filter)? {
        Some(shared) => validate_levels(shared.filter),
        None => validate_levels(filter),
    }
}

/// The parts of a shared subscription filter `$share/{ShareName}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The ShareName: the group the subscription belongs to.
    pub group: &'a str,
    /// The topic filter the group subscribes to; it may itself contain wildcards.
    pub filter: &'a str,
}

/// Splits a shared subscription filter `$share/{ShareName}/{filter}` into its parts.
///
/// Returns `Ok(None)` when `filter` does not begin with `$share/` (an ordinary filter; note that
/// `$share` alone is an ordinary filter too). When it does, the ShareName must be non-empty
/// [MQTT-4.8.2-1] and contain no `+` or `#`, and must be followed by `/` and a non-empty, valid
/// topic filter [MQTT-4.8.2-2].
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARED_PREFIX) else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(if rest.is_empty() {
            TopicError::EmptyShareName
        } else {
            TopicError::InvalidShareName
        });
    };
    if group.is_empty() {
        return Err(TopicError::EmptyShareName);
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::InvalidShareName);
    }
    if inner.is_empty() {
        return Err(TopicError::EmptySharedFilter);
    }
    validate_common(filter)?;
    validate_levels(inner)?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// Does the topic filter `filter` match the topic name `name`?
///
/// `+` matches exactly one level, which may be empty (`+/+` matches `/finance`); `#` matches
/// the parent level and any number of levels below it (`sport/#` matches `sport`). A wildcard in
/// the first level never matches a name beginning with `$` [MQTT-4.7.2-1], so `#` does not match
/// `$SYS/x` but `$SYS/#` does.
///
/// `filter` must be an ordinary filter: for a shared subscription pass the `filter` part of
/// [`parse_shared`]. Neither argument is validated; on invalid input the result is unspecified
/// (but never a panic).
pub fn matches(filter: &str, name: &str) -> bool {
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    if name.starts_with('$') {
        // The first level of `filter` must match literally.
        match (filter_levels.next(), name_levels.next()) {
            (Some("+" | "#"), _) => return false,
            (Some(f), Some(n)) if f == n => {}
            _ => return false,
        }
    }
    loop {
        match (filter_levels.next(), name_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if `filter` contains a wildcard character (`+` or `#`).
pub fn has_wildcards(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// True when `topic` (a name or a filter) has more than `max_levels` levels or more than
/// `max_length` bytes: the broker's configured limits (`max_topic_levels`,
/// `max_topic_length`), stricter than the protocol's own.
pub fn exceeds_limits(topic: &str, max_levels: u16, max_length: u16) -> bool {
    topic.len() > usize::from(max_length)
        || topic.bytes().filter(|b| *b == b'/').count() >= usize::from(max_levels)
}

#[cfg(test)]
mod tests {

    #[test]
    fn configured_limits_on_levels_and_length() {
        assert!(!exceeds_limits("a/b/c", 3, 5));
        assert!(exceeds_limits("a/b/c/d", 3, 100), "four levels");
        assert!(exceeds_limits("a/b/c", 3, 4), "five bytes");
        assert!(!exceeds_limits("", 1, 1));
        assert!(exceeds_limits("/", 1, 10), "two empty levels");
        assert!(!exceeds_limits(&"a/".repeat(199), 200, u16::MAX));
        assert!(exceeds_limits(&"a/".repeat(200), 200, u16::MAX));
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_names() {
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("a", Ok(())),
            ("/", Ok(())),
            ("//", Ok(())),
            ("/finance", Ok(())),
            ("sport/tennis/player1", Ok(())),
            ("$SYS/broker/load", Ok(())),
            (" ", Ok(())),
            ("ACCOUNTS/accounts", Ok(())),
            ("äöü/ü", Ok(())),
            ("", Err(TopicError::Empty)),
            ("a\0b", Err(TopicError::NullCharacter)),
            ("sport/+", Err(TopicError::WildcardInName)),
            ("sport/#", Err(TopicError::WildcardInName)),
            ("#", Err(TopicError::WildcardInName)),
            ("a+b", Err(TopicError::WildcardInName)),
            ("a#", Err(TopicError::WildcardInName)),
        ];
        for (name, expected) in cases {
            assert_eq!(validate_topic_name(name), *expected, "{name:?}");
        }
    }

    #[test]
    fn name_length_limit() {
        let max = "a".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&max), Ok(()));
        assert_eq!(validate_topic_filter(&max), Ok(()));
        let over = "a".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(validate_topic_name(&over), Err(TopicError::TooLong));
        assert_eq!(validate_topic_filter(&over), Err(TopicError::TooLong));
        // Length is counted in bytes, not characters.
        let multibyte = "é".repeat(MAX_TOPIC_LEN / 2 + 1);
        assert_eq!(validate_topic_name(&multibyte), Err(TopicError::TooLong));
        let shared = format!("$share/g/{}", "a".repeat(MAX_TOPIC_LEN));
        assert_eq!(validate_topic_filter(&shared), Err(TopicError::TooLong));
    }

    #[test]
    fn topic_filters() {
        use TopicError::*;
        let cases: &[(&str, Result<(), TopicError>)] = &[
            // 4.7.1.2 multi-level wildcard
            ("sport/tennis/player1/#", Ok(())),
            ("sport/#", Ok(())),
            ("#", Ok(())),
            ("sport/tennis#", Err(MultiLevelWildcard)),
            ("sport/tennis/#/ranking", Err(MultiLevelWildcard)),
            ("#/", Err(MultiLevelWildcard)),
            ("##", Err(MultiLevelWildcard)),
            ("a/#b", Err(MultiLevelWildcard)),
            // 4.7.1.3 single-level wildcard
            ("+", Ok(())),
            ("+/tennis/#", Ok(())),
            ("sport/+/player1", Ok(())),
            ("sport+", Err(SingleLevelWildcard)),
            ("+a", Err(SingleLevelWildcard)),
            ("++", Err(SingleLevelWildcard)),
            ("a/b+/c", Err(SingleLevelWildcard)),
            ("+/+", Ok(())),
            ("/+", Ok(())),
            ("+/", Ok(())),
            ("+/#", Ok(())),
            // plain
            ("/", Ok(())),
            ("//", Ok(())),
            ("$SYS/#", Ok(())),
            ("$share", Ok(())),
            ("$sharex/a", Ok(())),
            ("", Err(Empty)),
            ("a/\0", Err(NullCharacter)),
            // 4.8.2 shared
            ("$share/g/a/b", Ok(())),
            ("$share/g/#", Ok(())),
            ("$share/g/+/x", Ok(())),
            ("$share/g//", Ok(())),
            ("$share/g/$SYS/#", Ok(())),
            ("$share//a", Err(EmptyShareName)),
            ("$share/", Err(EmptyShareName)),
            ("$share/g", Err(InvalidShareName)),
            ("$share/g+/a", Err(InvalidShareName)),
            ("$share/#/a", Err(InvalidShareName)),
            ("$share/g/", Err(EmptySharedFilter)),
            ("$share/g/a#", Err(MultiLevelWildcard)),
            ("$share/g/a+/b", Err(SingleLevelWildcard)),
            ("$share/g/\0", Err(NullCharacter)),
        ];
        for (filter, expected) in cases {
            assert_eq!(validate_topic_filter(filter), *expected, "{filter:?}");
        }
    }

    #[test]
    fn shared_parsing() {
        assert_eq!(parse_shared("a/b"), Ok(None));
        assert_eq!(parse_shared("$share"), Ok(None));
        assert_eq!(parse_shared("$SHARE/g/a"), Ok(None));
        assert_eq!(
            parse_shared("$share/consumers/sport/+/player1"),
            Ok(Some(SharedFilter {
                group: "consumers",
                filter: "sport/+/player1"
            }))
        );
        assert_eq!(
            parse_shared("$share/g//"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "/"
            }))
        );
        assert_eq!(parse_shared("$share//x"), Err(TopicError::EmptyShareName));
        assert_eq!(
            parse_shared("$share/g/"),
            Err(TopicError::EmptySharedFilter)
        );
    }

    #[test]
    fn has_wildcards_detects_both() {
        assert!(has_wildcards("#"));
        assert!(has_wildcards("a/+/b"));
        assert!(has_wildcards("$share/g/a/#"));
        assert!(!has_wildcards("a/b"));
        assert!(!has_wildcards("$share/g/a"));
    }

    #[test]
    fn matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            // 4.7.1.2
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sports", false),
            ("#", "sport", true),
            ("#", "/", true),
            ("#", "a/b/c", true),
            // 4.7.1.3
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+", "sport", true),
            ("+", "/", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+/tennis/#", "sport/tennis", true),
            ("+/tennis/#", "sport/tennis/x/y", true),
            ("+/tennis/#", "sport/golf", false),
            // 4.7.2 topics beginning with $
            ("#", "$SYS", false),
            ("#", "$SYS/x", false),
            ("+", "$SYS", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("$SYS/+/Clients", "$SYS/monitor/Clients", true),
            ("$SYS", "$SYS", true),
            ("$SYS/x", "$SYS/y", false),
            ("+/x", "a$/x", true),
            ("a/#", "a/$x", true),
            ("a/+", "a/$x", true),
            // plain and empty levels
            ("a/b", "a/b", true),
            ("a/b", "a/b/", false),
            ("a/b/", "a/b/", true),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
            ("a/b", "A/b", false),
            ("/", "/", true),
            ("+/+", "/", true),
            ("/#", "/", true),
            ("/#", "a", false),
            ("a/b/c", "a/b", false),
            ("a/b", "a/b/c", false),
        ];
        for (filter, name, expected) in cases {
            assert_eq!(
                matches(filter, name),
                *expected,
                "matches({filter:?}, {name:?})"
            );
        }
    }

    /// Reference implementation: the definition, level by level, with explicit indexing.
    fn reference(filter: &str, name: &str) -> bool {
        let f: Vec<&str> = filter.split('/').collect();
        let n: Vec<&str> = name.split('/').collect();
        if name.starts_with('$') && matches!(f[0], "+" | "#") {
            return false;
        }
        for (i, level) in f.iter().enumerate() {
            if *level == "#" {
                return true;
            }
            match n.get(i) {
                None => return false,
                Some(nl) if *level != "+" && level != nl => return false,
                Some(_) => {}
            }
        }
        f.len() == n.len()
    }

    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "$x", ""])
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5)
            .prop_map(|v| v.join("/"))
            .prop_filter("names are non-empty", |s| !s.is_empty())
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop::sample::select(vec!["a", "b", "$x", "", "+"]), 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut v, hash)| {
                if hash {
                    let last = v.len() - 1;
                    v[last] = "#";
                }
                v.join("/")
            })
            .prop_filter("filters are non-empty", |s| !s.is_empty())
    }

    proptest! {
        #[test]
        fn matches_agrees_with_reference(f in filter(), n in name()) {
            prop_assert_eq!(validate_topic_filter(&f), Ok(()));
            prop_assert!(validate_topic_name(&n).is_ok());
            prop_assert_eq!(matches(&f, &n), reference(&f, &n));
        }

        #[test]
        fn a_name_matches_itself(n in name()) {
            prop_assert!(matches(&n, &n));
        }

        #[test]
        fn validation_never_panics(s in "[a$+#/\\x00é]{0,12}") {
            let _ = validate_topic_filter(&s);
            let _ = validate_topic_name(&s);
            let _ = parse_shared(&s);
            let _ = matches(&s, &s);
        }
    }
}
