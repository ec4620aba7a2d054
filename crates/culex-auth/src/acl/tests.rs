use super::*;
use proptest::prelude::*;
use std::path::PathBuf;

fn origin() -> PathBuf {
    PathBuf::from("test.acl")
}

fn acl(text: &str) -> AclFile {
    match AclFile::parse(text, &origin()) {
        Ok(a) => a,
        Err(e) => panic!("parse failed: {e}"),
    }
}

fn parse_err(text: &str) -> String {
    match AclFile::parse(text, &origin()) {
        Ok(a) => panic!("expected an error, got {a:?}"),
        Err(e) => e.to_string(),
    }
}

/// The table in testdata/mosquitto_oracle_cases.txt, every row of which was confirmed against
/// a real mosquitto 2.0.11 broker (scripts/acl_oracle.py).
#[test]
fn mosquitto_oracle_table() {
    let acl = acl(include_str!("../../testdata/mosquitto_oracle.acl"));
    let cases = include_str!("../../testdata/mosquitto_oracle_cases.txt");
    let mut n = 0;
    for line in cases
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 5, "{line}");
        let user = (f[0] != "-").then_some(f[0]);
        let access = if f[3] == "W" {
            Access::Write
        } else {
            Access::Read
        };
        let expected = f[4] == "allow";
        assert_eq!(acl.check(user, f[1], f[2], access), expected, "{line}");
        n += 1;
    }
    assert!(n >= 50);
}

#[test]
fn access_defaults_to_readwrite_and_single_word_is_a_topic() {
    // `topic read` alone is the topic named "read" (confirmed with mosquitto 2.0.11: anonymous
    // clients may publish to "read").
    let a = acl("topic read\ntopic a/b\n");
    for access in [Access::Read, Access::Write] {
        assert!(a.check(None, "c", "read", access));
        assert!(a.check(None, "c", "a/b", access));
    }
}

#[test]
fn topics_with_spaces() {
    let a = acl("topic read   my room/ 101 /#  \ntopic readwrite a b\n");
    assert!(a.check(None, "c", "my room/ 101 /x", Access::Read));
    assert!(a.check(None, "c", "a b", Access::Write));
    assert!(!a.check(None, "c", "my room/ 101 /x", Access::Write));
    // Without an access word, the first word must be an access word.
    let e = parse_err("topic my room\n");
    assert!(e.starts_with("test.acl:1: invalid access type 'my'"), "{e}");
}

#[test]
fn comments_blank_lines_and_whitespace() {
    let a = acl(
        "# c\n\n   \n  # indented comment\n\ttopic\tread\ta/b\r\nuser  bob smith  \n  topic x\n",
    );
    assert!(a.check(None, "c", "a/b", Access::Read));
    assert!(a.check(Some("bob smith"), "c", "x", Access::Write));
    assert!(a.has_user("bob smith"));
}

#[test]
fn parse_errors_name_file_and_line() {
    let cases = [
        ("topic a\nbogus x\n", "test.acl:2: unknown keyword 'bogus'"),
        ("user\n", "test.acl:1: missing username"),
        ("user   \n", "test.acl:1: missing username"),
        (
            "\n\ntopic\n",
            "test.acl:3: missing topic filter after 'topic'",
        ),
        (
            "pattern   \n",
            "test.acl:1: missing topic filter after 'pattern'",
        ),
        ("topic rw a/b\n", "test.acl:1: invalid access type 'rw'"),
        (
            "topic read a/#/b\n",
            "test.acl:1: invalid topic filter 'a/#/b'",
        ),
        (
            "topic read a/b+\n",
            "test.acl:1: invalid topic filter 'a/b+'",
        ),
        ("pattern read a/%u#\n", "test.acl:1: invalid topic filter"),
        ("Topic a\n", "test.acl:1: unknown keyword 'Topic'"),
    ];
    for (text, prefix) in cases {
        let e = parse_err(text);
        assert!(e.starts_with(prefix), "{text:?}: {e}");
    }
    let e = match AclFile::parse_bytes(b"topic a\ntopic \xff\n", &origin()) {
        Ok(_) => panic!("accepted invalid UTF-8"),
        Err(e) => e.to_string(),
    };
    assert_eq!(e, "test.acl:2: line is not valid UTF-8");
}

#[test]
fn load_missing_file_names_it() {
    let e = match AclFile::load(Path::new("/nonexistent/culex.acl")) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => e.to_string(),
    };
    assert!(e.starts_with("cannot read /nonexistent/culex.acl: "), "{e}");
}

#[test]
fn empty_file_denies_everything() {
    let a = acl("# nothing\n");
    assert!(a.is_empty());
    assert!(!a.check(None, "c", "a", Access::Read));
    assert!(!a.check(Some("u"), "c", "a", Access::Write));
}

#[test]
fn deny_beats_allow_regardless_of_order() {
    let a = acl("user u\ntopic readwrite a/#\ntopic deny a/secret\ntopic deny b/#\ntopic b/ok\n");
    assert!(a.check(Some("u"), "c", "a/x", Access::Read));
    assert!(!a.check(Some("u"), "c", "a/secret", Access::Read));
    assert!(!a.check(Some("u"), "c", "a/secret", Access::Write));
    assert!(!a.check(Some("u"), "c", "b/ok", Access::Read));
}

#[test]
fn user_sections_merge_and_anonymous_rules_are_anonymous_only() {
    let a = acl("topic anon\nuser u\ntopic one\nuser v\ntopic v\nuser u\ntopic two\n");
    assert!(a.check(Some("u"), "c", "one", Access::Read));
    assert!(a.check(Some("u"), "c", "two", Access::Read));
    assert!(!a.check(Some("u"), "c", "anon", Access::Read));
    assert!(!a.check(Some("u"), "c", "v", Access::Read));
    assert!(a.check(None, "c", "anon", Access::Read));
    assert!(!a.check(None, "c", "one", Access::Read));
}

#[test]
fn sys_rules() {
    let a = acl(
        "topic readwrite #\ntopic readwrite $SYS/#\ntopic readwrite $SYSTEM/x\ntopic $other/#\n",
    );
    // `#` does not match `$` topics; `$SYS/#` does, for reading only.
    assert!(a.check(None, "c", "$SYS/broker/uptime", Access::Read));
    assert!(!a.check(None, "c", "$SYS/broker/uptime", Access::Write));
    assert!(!a.check(None, "c", "$SYS", Access::Write));
    // Like Mosquitto, anything starting with "$SYS" is unwritable.
    assert!(!a.check(None, "c", "$SYSTEM/x", Access::Write));
    assert!(a.check(None, "c", "$other/x", Access::Write));
    let b = acl("topic #\ntopic +/x\npattern %c/#\n");
    assert!(!b.check(None, "c", "$SYS/x", Access::Read));
    assert!(!b.check(None, "c", "$a/x", Access::Read));
    // A pattern matches a `$` topic only if the substituted filter starts with `$`.
    assert!(b.check(None, "$c", "$c/x", Access::Read));
}

#[test]
fn patterns_with_anonymous_and_dangerous_names() {
    let a = acl("pattern readwrite u/%u/#\npattern readwrite c/%c/#\npattern deny c/%c/no\n");
    assert!(
        !a.check(None, "c1", "u//x", Access::Read),
        "%u never matches anonymous"
    );
    assert!(a.check(None, "c1", "c/c1/x", Access::Read));
    assert!(!a.check(None, "c1", "c/c1/no", Access::Read));
    assert!(
        a.check(Some(""), "c1", "u//x", Access::Read),
        "empty username substitutes"
    );
    for (user, cid) in [
        (Some("a+"), "c1"),
        (Some("a#"), "c1"),
        (None, "c+"),
        (Some("u"), "#"),
    ] {
        assert!(
            !a.check(user, cid, "c/c1/x", Access::Read),
            "{user:?} {cid}"
        );
    }
    // '/' is allowed and fills several levels (confirmed with mosquitto 2.0.11).
    assert!(a.check(Some("x/y"), "c1", "u/x/y/z", Access::Write));
    assert!(
        !a.check(Some("alice"), "c1", "u/al/z", Access::Write),
        "no prefix match"
    );
    assert!(!a.check(Some("al"), "c1", "u/alice/z", Access::Write));
}

#[test]
fn pattern_edge_cases() {
    let a = acl("pattern %u%c/x\npattern a/%%u\npattern lit/%x/%c\n");
    assert!(a.check(Some("u"), "c", "uc/x", Access::Read));
    assert!(a.check(Some("u"), "c", "a/%u", Access::Read));
    assert!(a.check(Some("u"), "c", "lit/%x/c", Access::Read));
    assert_eq!(a.warnings().len(), 0);
    let b = acl("pattern read plain/topic\n");
    assert_eq!(b.warnings().len(), 1);
    assert_eq!(b.warnings()[0].line, 1);
    assert!(b.check(None, "c", "plain/topic", Access::Read));
}

#[test]
fn subscribe_checks_the_filter_as_a_topic() {
    let a = acl("user u\ntopic read a/#\ntopic read b/c\ntopic read d/+\ntopic write w/#\ntopic read $SYS/#\n");
    let sub = |f: &str| a.check(Some("u"), "c", f, Access::Subscribe);
    assert!(sub("a/+/x"));
    assert!(sub("a/#"));
    assert!(sub("a"));
    assert!(sub("b/c"));
    assert!(!sub("b/+"), "b/c does not match the literal level '+'");
    assert!(!sub("b/#"));
    assert!(sub("d/+"));
    assert!(sub("d/#"), "documented: d/+ matches the literal level '#'");
    assert!(!sub("d/x/y"));
    assert!(!sub("w/x"), "write-only does not allow subscribing");
    assert!(!sub("#"));
    assert!(!sub("+/c"));
    assert!(sub("$SYS/#"));
    assert!(
        sub("$share/group/a/+"),
        "shared subscriptions are checked on their filter"
    );
    assert!(!sub("$share/group/b/+"));
    let p = acl("pattern read u/%u/#\n");
    assert!(p.check(Some("x"), "c", "u/x/+", Access::Subscribe));
    assert!(!p.check(Some("x"), "c", "u/+/a", Access::Subscribe));
    let anyone = acl("topic read #\n");
    assert!(anyone.check(None, "c", "#", Access::Subscribe));
    assert!(!anyone.check(None, "c", "$SYS/#", Access::Subscribe));
}

#[test]
fn acl_file_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<AclFile>();
}

fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "$x", "", "ab"])
}

proptest! {
    /// The streaming matcher agrees with culex-proto's matcher (plus the `$` rule) on
    /// literal patterns.
    #[test]
    fn stream_matcher_agrees_with_proto(
        f in prop::collection::vec(prop::sample::select(vec!["a", "b", "$x", "", "+", "ab"]), 1..5),
        hash in any::<bool>(),
        n in prop::collection::vec(level(), 1..5),
    ) {
        let mut f = f;
        if hash {
            let last = f.len() - 1;
            f[last] = "#";
        }
        let filter = f.join("/");
        let name = n.join("/");
        let compiled = Pattern::compile(&filter);
        prop_assert_eq!(compiled.matches("", "", &name), rule_matches(&filter, &name));
    }

    /// Substitution behaves like building the string first.
    #[test]
    fn substitution_equals_string_building(
        pattern in "[ab/%uc]{1,10}",
        user in "[ab/]{0,4}",
        cid in "[ab/]{0,4}",
        topic in "[ab/]{1,8}",
    ) {
        prop_assume!(check_filter(&pattern).is_ok());
        let compiled = Pattern::compile(&pattern);
        let mut built = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('%', Some('u')) => { chars.next(); built.push_str(&user); }
                ('%', Some('c')) => { chars.next(); built.push_str(&cid); }
                _ => built.push(c),
            }
        }
        prop_assert_eq!(compiled.matches(&user, &cid, &topic), rule_matches(&built, &topic));
    }

    #[test]
    fn parse_never_panics(text in "[a-z%+#/ \n\t$]{0,80}") {
        let _ = AclFile::parse(&text, &origin());
    }
}
