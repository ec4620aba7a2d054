//! The mapping against itself and against MQTT's matching rules.

use culex_proto::topic::matches;
use proptest::prelude::*;

use super::*;

const P: &str = "culex.q1";

#[test]
fn plain_topics_read_as_they_are() {
    assert_eq!(topic_to_subject(P, "a/b/c"), "culex.q1.t.a.b.c");
    assert_eq!(topic_to_subject(P, "дом/свет"), "culex.q1.t.дом.свет");
    assert_eq!(
        subject_to_topic(P, "culex.q1.t.a.b.c").as_deref(),
        Ok("a/b/c")
    );
}

#[test]
fn reserved_characters_and_empty_levels_are_escaped() {
    assert_eq!(
        topic_to_subject(P, "a.b/*/>/ x"),
        "culex.q1.t.a%2Eb.%2A.%3E.%20x"
    );
    assert_eq!(topic_to_subject(P, "/a//"), "culex.q1.t.%.a.%.%");
    assert_eq!(topic_to_subject(P, "100%"), "culex.q1.t.100%25");
    assert_eq!(topic_to_subject(P, "tab\there"), "culex.q1.t.tab%09here");
    for topic in [
        "a.b/*/>/ x",
        "/a//",
        "100%",
        "%",
        "%%",
        "/",
        "a\u{7f}b",
        "$SYS/x",
        "$",
        "a/$b",
    ] {
        assert_eq!(
            subject_to_topic(P, &topic_to_subject(P, topic)).as_deref(),
            Ok(topic)
        );
    }
}

#[test]
fn foreign_and_forged_subjects_are_refused() {
    assert_eq!(subject_to_topic(P, "other.a"), Err(SubjectError::Foreign));
    assert_eq!(
        subject_to_topic(P, "culex.q10.t.a"),
        Err(SubjectError::Foreign)
    );
    // Not produced by escaping: lower-case hex, an escaped safe character, a lone '%x'.
    for token in ["%2e", "%41", "%4", "a%"] {
        assert!(
            matches!(
                subject_to_topic(P, &format!("{P}.t.{token}")),
                Err(SubjectError::BadToken(_))
            ),
            "{token}"
        );
    }
    // No class token, an unknown one, or one that does not fit the topic's first level.
    for rest in ["a", "x.a", "t.$SYS", "d.a", "d.%"] {
        assert!(
            matches!(
                subject_to_topic(P, &format!("{P}.{rest}")),
                Err(SubjectError::BadToken(_))
            ),
            "{rest}"
        );
    }
}

#[test]
fn long_topics_share_one_subject() {
    let topic = "x/".repeat(2000);
    let subject = topic_to_subject(P, &topic);
    assert_eq!(subject, long_topics_subject(P));
    assert_eq!(subject_to_topic(P, &subject), Err(SubjectError::Long));
    assert!(topic_to_subject(P, &"y".repeat(3000)).len() <= MAX_SUBJECT);
}

#[test]
fn filters() {
    assert_eq!(filter_to_subjects(P, "#"), ["culex.q1.t.>"]);
    assert_eq!(
        filter_to_subjects(P, "a/#"),
        ["culex.q1.t.a", "culex.q1.t.a.>"]
    );
    assert_eq!(filter_to_subjects(P, "+/b.c/+"), ["culex.q1.t.*.b%2Ec.*"]);
    assert_eq!(filter_to_subjects(P, "a//+"), ["culex.q1.t.a.%.*"]);
    assert_eq!(
        filter_to_subjects(P, "$SYS/#"),
        ["culex.q1.d.$SYS", "culex.q1.d.$SYS.>"]
    );
}

#[test]
fn wildcards_at_the_first_level_miss_dollar_topics_as_in_mqtt() {
    let sys = topic_to_subject(P, "$SYS/broker/load");
    assert_eq!(sys, "culex.q1.d.$SYS.broker.load");
    for filter in ["#", "+/#", "+/broker/load"] {
        assert!(!matches(filter, "$SYS/broker/load"));
        assert!(
            !filter_to_subjects(P, filter)
                .iter()
                .any(|p| nats_matches(p, &sys)),
            "{filter}"
        );
    }
    for filter in ["$SYS/#", "$SYS/+/load", "$SYS/broker/load"] {
        assert!(
            filter_to_subjects(P, filter)
                .iter()
                .any(|p| nats_matches(p, &sys)),
            "{filter}"
        );
    }
    // A `$` that is not the first character is an ordinary character.
    assert_eq!(topic_to_subject(P, "a/$b"), "culex.q1.t.a.$b");
    assert!(nats_matches(
        &filter_to_subjects(P, "#")[0],
        "culex.q1.t.a.$b"
    ));
}

/// NATS's matching: `*` one token, a final `>` one or more.
fn nats_matches(pattern: &str, subject: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, token) in p.iter().enumerate() {
        match *token {
            ">" => return s.len() > i,
            "*" if i < s.len() => {}
            t if s.get(i) == Some(&t) => {}
            _ => return false,
        }
    }
    p.len() == s.len()
}

fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "\\$[A-Z]{0,2}",
        "[a-c]{1,2}",
        "[a.*> %\t/]{1,3}".prop_map(|s| s.replace('/', "")),
        "\\PC{1,3}".prop_map(|s| s.replace(['/', '+', '#'], "")),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5).prop_map(|l| l.join("/"))
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 0..4),
        any::<bool>(),
    )
        .prop_filter_map("a filter has a level", |(mut levels, hash)| {
            if hash {
                levels.push("#".to_owned());
            }
            (!levels.is_empty()).then(|| levels.join("/"))
        })
}

/// A filter and a topic made from it (its wildcards filled in): mostly a match, except where
/// a `$` level filled in for a leading wildcard meets MQTT's `$` rule.
fn filter_and_instance() -> impl Strategy<Value = (String, String)> {
    (filter(), prop::collection::vec(level(), 0..5)).prop_map(|(f, fill)| {
        let mut fill = fill.into_iter();
        let mut levels = Vec::new();
        for level in f.split('/') {
            match level {
                "+" => levels.push(fill.next().unwrap_or_default()),
                "#" => levels.extend(fill.by_ref()),
                l => levels.push(l.to_owned()),
            }
        }
        (f, levels.join("/"))
    })
}

proptest! {
    #[test]
    fn topics_round_trip(t in topic()) {
        let subject = topic_to_subject(P, &t);
        prop_assert!(subject.split('.').all(|tok| !tok.is_empty()
            && !tok.contains(['*', '>', ' ', '\t', '\r', '\n'])));
        prop_assert_eq!(subject_to_topic(P, &subject), Ok(t));
    }

    #[test]
    fn nats_matching_agrees_with_mqtt_matching(f in filter(), t in topic()) {
        let subject = topic_to_subject(P, &t);
        let nats = filter_to_subjects(P, &f).iter().any(|p| nats_matches(p, &subject));
        prop_assert_eq!(nats, matches(&f, &t), "filter {:?} topic {:?}", f, t);
    }

    #[test]
    fn nats_matching_agrees_with_mqtt_matching_on_instances((f, t) in filter_and_instance()) {
        let subject = topic_to_subject(P, &t);
        let nats = filter_to_subjects(P, &f).iter().any(|p| nats_matches(p, &subject));
        prop_assert_eq!(nats, matches(&f, &t), "filter {:?} topic {:?}", f, t);
    }
}
