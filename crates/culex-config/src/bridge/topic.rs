//! Bridge topic rules and Mosquitto's topic remapping.
//!
//! A rule is Mosquitto's `topic PATTERN [out|in|both] [QOS] [LOCAL-PREFIX REMOTE-PREFIX]`. The
//! prefixes are joined to the pattern as plain strings (no `/` is added): the local filter is
//! `LOCAL-PREFIX + PATTERN`, the remote filter `REMOTE-PREFIX + PATTERN`. A message leaving
//! (out) that matches a rule's local filter has the local prefix stripped and the remote prefix
//! prepended; a message arriving (in) that matches a rule's remote filter has the remote prefix
//! stripped and the local prefix prepended. The first matching rule, in configuration order,
//! decides, as in Mosquitto's `bridge__remap_topic_in`. An empty pattern (`""` in
//! mosquitto.conf) maps one topic to another: the prefixes are then the whole topics.

use culex_proto::topic::{matches, validate_topic_filter, validate_topic_name};
use culex_proto::QoS;

use crate::bridge::InvalidBridge;

/// Which way a rule forwards messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local → remote (Mosquitto's default).
    Out,
    /// Remote → local.
    In,
    /// Both ways.
    Both,
}

impl Direction {
    /// True for `out` and `both`.
    pub fn is_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    /// True for `in` and `both`.
    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One `topic` line of a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    /// The pattern, possibly with wildcards; empty for a one-topic mapping.
    pub pattern: String,
    /// Which way messages go.
    pub direction: Direction,
    /// QoS of the subscriptions the bridge makes for this rule (messages are forwarded at the
    /// lower of this and the QoS they arrived with).
    pub qos: QoS,
    /// Prepended to the pattern on the local broker; empty for none.
    pub local_prefix: String,
    /// Prepended to the pattern on the remote broker; empty for none.
    pub remote_prefix: String,
}

impl TopicRule {
    /// A rule without prefixes.
    pub fn new(pattern: impl Into<String>, direction: Direction, qos: QoS) -> Self {
        TopicRule {
            pattern: pattern.into(),
            direction,
            qos,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }
    }

    /// The same rule with these prefixes.
    pub fn with_prefixes(mut self, local: impl Into<String>, remote: impl Into<String>) -> Self {
        self.local_prefix = local.into();
        self.remote_prefix = remote.into();
        self
    }

    /// Parses the arguments of a mosquitto.conf `topic` line:
    /// `PATTERN [out|in|both] [QOS] [LOCAL-PREFIX REMOTE-PREFIX]`, where `""` stands for an
    /// empty pattern or prefix. The result still needs [`TopicRule::validate`].
    pub fn parse_mosquitto(args: &str) -> Result<TopicRule, String> {
        let words: Vec<&str> = args.split_whitespace().collect();
        let unquote = |w: &str| {
            if w == "\"\"" {
                String::new()
            } else {
                w.to_string()
            }
        };
        let Some(pattern) = words.first() else {
            return Err("`topic` needs a pattern".into());
        };
        let direction = match words.get(1).copied() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => {
                return Err(format!(
                    "direction {other:?} is not one of `out`, `in`, `both`"
                ))
            }
        };
        let qos = match words.get(2).copied() {
            None | Some("0") => QoS::AtMostOnce,
            Some("1") => QoS::AtLeastOnce,
            Some("2") => QoS::ExactlyOnce,
            Some(other) => return Err(format!("QoS {other:?} is not 0, 1 or 2")),
        };
        let (local_prefix, remote_prefix) = match (words.get(3), words.get(4), words.len()) {
            (None, None, _) => (String::new(), String::new()),
            (Some(l), Some(r), 5) => (unquote(l), unquote(r)),
            (Some(_), None, _) => {
                return Err("a local prefix needs a remote prefix too (use \"\" for none)".into())
            }
            _ => return Err("too many words after `topic`".into()),
        };
        Ok(TopicRule {
            pattern: unquote(pattern),
            direction,
            qos,
            local_prefix,
            remote_prefix,
        })
    }

    /// The filter on the local broker: local prefix + pattern.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter on the remote broker: remote prefix + pattern.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// The remote topic for a local topic this rule matches (out), or `None`.
    pub fn map_out(&self, local_topic: &str) -> Option<String> {
        remap(
            local_topic,
            &self.local_filter(),
            &self.local_prefix,
            &self.remote_prefix,
        )
    }

    /// The local topic for a remote topic this rule matches (in), or `None`.
    pub fn map_in(&self, remote_topic: &str) -> Option<String> {
        remap(
            remote_topic,
            &self.remote_filter(),
            &self.remote_prefix,
            &self.local_prefix,
        )
    }

    /// Checks the rule as Mosquitto does: prefixes are valid topic names (no wildcards),
    /// prefix + pattern are valid filters, and an empty pattern has both prefixes.
    pub fn validate(&self, bridge: &str) -> Result<(), InvalidBridge> {
        let bad = |why: String| InvalidBridge::new(bridge, "topic", why);
        for (which, prefix) in [
            ("local", &self.local_prefix),
            ("remote", &self.remote_prefix),
        ] {
            if !prefix.is_empty() {
                validate_topic_name(prefix).map_err(|e| {
                    bad(format!(
                        "invalid {which} prefix {prefix:?} (a prefix is a topic name without wildcards): {e}"
                    ))
                })?;
            }
        }
        if self.pattern.is_empty() {
            if self.local_prefix.is_empty() || self.remote_prefix.is_empty() {
                return Err(bad(
                    "an empty pattern (\"\") maps one topic to another and needs both a local and a remote prefix".into(),
                ));
            }
            return Ok(());
        }
        for (which, filter) in [
            ("local", self.local_filter()),
            ("remote", self.remote_filter()),
        ] {
            validate_topic_filter(&filter).map_err(|e| {
                bad(format!(
                    "invalid {which} prefix and pattern combination {filter:?}: {e}"
                ))
            })?;
        }
        Ok(())
    }
}

/// Strips `from_prefix` and prepends `to_prefix` if `topic` matches `filter`.
fn remap(topic: &str, filter: &str, from_prefix: &str, to_prefix: &str) -> Option<String> {
    if !matches(filter, topic) {
        return None;
    }
    // As in Mosquitto: the prefix is removed only if the topic starts with it (a wildcard
    // pattern can never make the match succeed without it, but be as lenient as the original).
    let rest = topic.strip_prefix(from_prefix).unwrap_or(topic);
    Some(format!("{to_prefix}{rest}"))
}

/// The remote topic for a message published locally on `local_topic`: the first `out`/`both`
/// rule whose local filter matches decides. `None` if no rule matches.
pub fn remap_out<'a>(rules: &'a [TopicRule], local_topic: &str) -> Option<(String, &'a TopicRule)> {
    rules
        .iter()
        .filter(|r| r.direction.is_out())
        .find_map(|r| r.map_out(local_topic).map(|t| (t, r)))
}

/// The local topic for a message received from the remote on `remote_topic`: the first
/// `in`/`both` rule whose remote filter matches decides. `None` if no rule matches.
pub fn remap_in<'a>(rules: &'a [TopicRule], remote_topic: &str) -> Option<(String, &'a TopicRule)> {
    rules
        .iter()
        .filter(|r| r.direction.is_in())
        .find_map(|r| r.map_in(remote_topic).map(|t| (t, r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(line: &str) -> TopicRule {
        TopicRule::parse_mosquitto(line).unwrap()
    }

    #[test]
    fn parse_mosquitto_topic_lines() {
        let r = rule("sensors/#");
        assert_eq!(
            r,
            TopicRule::new("sensors/#", Direction::Out, QoS::AtMostOnce)
        );
        let r = rule("# both 2 local/ remote/");
        assert_eq!(
            r,
            TopicRule::new("#", Direction::Both, QoS::ExactlyOnce)
                .with_prefixes("local/", "remote/")
        );
        let r = rule("\"\" in 1 here/x there/y");
        assert_eq!(r.pattern, "");
        let r = rule("a/# in 0 \"\" remote/");
        assert_eq!(
            (r.local_prefix.as_str(), r.remote_prefix.as_str()),
            ("", "remote/")
        );
        for bad in [
            "",
            "a sideways",
            "a out 3",
            "a out 1 onlylocal",
            "a out 1 l r extra",
        ] {
            assert!(TopicRule::parse_mosquitto(bad).is_err(), "{bad:?}");
        }
    }

    /// (rule line, direction of travel, topic, expected result).
    const TABLE: &[(&str, &str, &str, Option<&str>)] = &[
        // No prefixes: topics pass unchanged, only matching ones.
        (
            "sensors/# out",
            "out",
            "sensors/a/temp",
            Some("sensors/a/temp"),
        ),
        ("sensors/# out", "out", "other/a", None),
        ("sensors/# out", "in", "sensors/a", None), // out rules never map in
        // Prefixes are joined as plain strings: no `/` is inserted.
        (
            "# both 0 local/ remote/",
            "out",
            "local/x/y",
            Some("remote/x/y"),
        ),
        (
            "# both 0 local/ remote/",
            "in",
            "remote/x/y",
            Some("local/x/y"),
        ),
        ("# both 0 local/ remote/", "out", "remote/x", None),
        ("t in 0 pre post", "in", "postt", Some("pret")),
        ("t in 0 pre post", "in", "post/t", None),
        // Empty local prefix: only the remote one is added/removed.
        ("a/# in 0 \"\" remote/", "in", "remote/a/b", Some("a/b")),
        ("a/# out 0 \"\" remote/", "out", "a/b", Some("remote/a/b")),
        // Empty remote prefix.
        (
            "up/# out 0 sber/ \"\"",
            "out",
            "sber/up/config",
            Some("up/config"),
        ),
        // The Sber layout.
        (
            "up/# out 0 sber/ sberdevices/v1/L/",
            "out",
            "sber/up/status",
            Some("sberdevices/v1/L/up/status"),
        ),
        (
            "down/# in 0 sber/ sberdevices/v1/L/",
            "in",
            "sberdevices/v1/L/down/commands",
            Some("sber/down/commands"),
        ),
        (
            "down/# in 0 sber/ sberdevices/v1/L/",
            "in",
            "sberdevices/v1/M/down/commands",
            None,
        ),
        (
            "__config in 0 sber/ sberdevices/v1/",
            "in",
            "sberdevices/v1/__config",
            Some("sber/__config"),
        ),
        // A one-topic mapping with an empty pattern.
        (
            "\"\" in 0 local/status remote/state",
            "in",
            "remote/state",
            Some("local/status"),
        ),
        (
            "\"\" in 0 local/status remote/state",
            "in",
            "remote/state/x",
            None,
        ),
        (
            "\"\" out 0 local/status remote/state",
            "out",
            "local/status",
            Some("remote/state"),
        ),
        // `+` in the pattern.
        (
            "+/temp both 1 l/ r/",
            "in",
            "r/kitchen/temp",
            Some("l/kitchen/temp"),
        ),
        (
            "+/temp both 1 l/ r/",
            "out",
            "l/kitchen/temp",
            Some("r/kitchen/temp"),
        ),
        // `#` at the top does not match `$` topics.
        ("# out", "out", "$SYS/broker/uptime", None),
    ];

    #[test]
    fn remapping_table() {
        for &(line, way, topic, expected) in TABLE {
            let r = rule(line);
            r.validate("t").unwrap();
            let got = match way {
                "out" => remap_out(std::slice::from_ref(&r), topic).map(|(t, _)| t),
                _ => remap_in(std::slice::from_ref(&r), topic).map(|(t, _)| t),
            };
            assert_eq!(got.as_deref(), expected, "{line:?} {way} {topic:?}");
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            rule("a/# in 0 first/ r/"),
            rule("a/b in 0 second/ r/"),
            rule("# out 0 x/ y/"),
        ];
        let (t, r) = remap_in(&rules, "r/a/b").unwrap();
        assert_eq!(t, "first/a/b");
        assert_eq!(r.local_prefix, "first/");
        assert_eq!(remap_out(&rules, "x/q").unwrap().0, "y/q");
    }

    #[test]
    fn filters() {
        let r = rule("up/# out 0 sber/ sberdevices/v1/L/");
        assert_eq!(r.local_filter(), "sber/up/#");
        assert_eq!(r.remote_filter(), "sberdevices/v1/L/up/#");
    }

    #[test]
    fn validation() {
        let bad = [
            rule("a/# out 0 l/+/ r/"),   // wildcard in a prefix
            rule("a/# out 0 l/ r/#/"),   // wildcard in a prefix
            rule("\"\" out 0 \"\" r/x"), // empty pattern needs both prefixes
            rule("\"\""),                // empty pattern, no prefixes
            rule("#/a out"),             // invalid filter
            rule("a out 0 l/# r/"),      // l/#a is not a valid filter either
        ];
        for r in bad {
            let e = r.validate("b1").unwrap_err().to_string();
            assert!(e.contains("bridge \"b1\"") && e.contains("`topic`"), "{e}");
        }
        rule("#").validate("b").unwrap();
        rule("\"\" both 1 l/x r/y").validate("b").unwrap();
    }
}
