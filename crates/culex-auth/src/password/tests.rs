use super::*;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// Lines written by the real `mosquitto_passwd` 2.0.11 (Debian), with the passwords in the
/// comments. Test data, not secrets.
const MOSQUITTO_FILE: &str = "\
# alice / secret: mosquitto_passwd -c -b (default: $7$, 101 iterations)
alice:$7$101$UrV/sX092AKXOewD$DC0IlpmDFECkk5OFyJUeIi0hL7PL+a7z15bsrUuKk6gWQtknPIoDCTpxFySN2rQ/hpGGkiLPHH9D0nqvBwYjRg==
# bob / 'p@ss w:rd'
bob:$7$101$MDSi2z1bbC0Nk3b1$5001xQ5/dzDpmSev4xVFJHcfbbKO0x0Aif2ww7pSQ9ngxs/kB+pcI0X2RzFrvdBuNp+c+cxm9JRGr0VXuic3lQ==
# carol / hunter2: -H sha512
carol:$6$KOnbtca+tIJ/TjfO$THHl9i2CM0omqZKFHai2vW48nfHRXctk1AgOw9OKI66or2tX5Ur9FF+tjn9jwuOolHlk5UZYrypjGTxE9UYFig==
# dave / 'ünïcödé-пароль'
dave:$7$101$XfuOsUIw4HZadyrs$WSidXtumxOwRj+//tUGIve7l5kn+IxLBC9f5tc5r1jpdGBHNRkXsCiooxiz0DBAPt+KIrOQxM1FzkXls2nQ6aA==
# erin / secret: -I 1000
erin:$7$1000$NZFVpu2582U7desX$bOYvsqQ7X+qSaE2QdsFeBkU880iUT7qeabvS7+9V5fcVW/by3/aQOG35waO7RbLUGlXTHYK4VUnvKzPl51aeqg==
# frank / (empty password): -H sha512
frank:$6$y3GiVFyq35Lv0Q5O$12Xf0/RQIWGFYRjjhJAOtHwJGjpYkZ8B+A9BAL20ryUn3QGf4gTjGu3JvYjioEvRHhfWnef2hoV1hj0cWfpkqQ==
";

/// Made by the reference `argon2` CLI (Debian package `argon2`):
/// `echo -n 'correct horse' | argon2 saltsaltsaltsalt -id -t 1 -m 15 -p 1 -l 32 -e`.
const ARGON2_REFERENCE: &str =
    "$argon2id$v=19$m=32768,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$+gg1hRHinLuAQtgOR5hn7+mpOgk64Uk+4DqAh8QKBxo";

fn origin() -> PathBuf {
    PathBuf::from("/etc/culex/passwd")
}

fn parse(text: &str) -> (PasswordFile, Vec<Warning>) {
    match PasswordFile::parse(text, &origin()) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn mosquitto_passwd_vectors_verify() {
    let (file, warnings) = parse(MOSQUITTO_FILE);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(file.len(), 6);
    let good: &[(&str, &[u8])] = &[
        ("alice", b"secret"),
        ("bob", b"p@ss w:rd"),
        ("carol", b"hunter2"),
        ("dave", "ünïcödé-пароль".as_bytes()),
        ("erin", b"secret"),
        ("frank", b""),
    ];
    for (user, pw) in good {
        assert_eq!(file.check(user, pw), AuthResult::Ok, "{user}");
        assert_eq!(
            file.check(user, b"wrong"),
            AuthResult::BadPassword,
            "{user}"
        );
    }
    // A trailing NUL changes a $6$ digest. (For $7$ it does not: HMAC zero-pads short keys,
    // so PBKDF2-HMAC treats "secret" and "secret\0" alike, as OpenSSL and Mosquitto do.)
    assert_eq!(file.check("carol", b"hunter2\0"), AuthResult::BadPassword);
    assert_eq!(file.check("alice", b"Secret"), AuthResult::BadPassword);
    assert_eq!(file.check("mallory", b"secret"), AuthResult::UnknownUser);
    assert_eq!(file.check("Alice", b"secret"), AuthResult::UnknownUser);
    assert!(matches!(
        PasswordHash::parse(MOSQUITTO_FILE.lines().nth(9).map(|l| &l[5..]).unwrap_or(""))
            .map(|h| h.kind()),
        Ok(HashKind::Sha512Pbkdf2 { iterations: 1000 })
    ));
}

#[test]
fn argon2id_reference_vector() {
    let h = match PasswordHash::parse(ARGON2_REFERENCE) {
        Ok(h) => h,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(h.kind(), HashKind::Argon2id);
    assert!(h.verify(b"correct horse"));
    assert!(!h.verify(b"correct horse "));
    let (file, w) = parse(&format!("u:{ARGON2_REFERENCE}\n"));
    assert!(w.is_empty());
    assert_eq!(file.check("u", b"correct horse"), AuthResult::Ok);
}

#[test]
fn round_trip_every_kind() {
    for kind in [
        HashKind::Sha512,
        HashKind::Sha512Pbkdf2 { iterations: 1000 },
        HashKind::Argon2id,
    ] {
        let s = match password_hash(b"pw", kind) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let h = match PasswordHash::parse(&s) {
            Ok(h) => h,
            Err(e) => panic!("{s}: {e}"),
        };
        assert_eq!(h.kind(), kind);
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"pW"));
        // Fresh salt every time.
        assert_ne!(password_hash(b"pw", kind).ok(), Some(s));
    }
    let s = password_hash(b"x", HashKind::Sha512Pbkdf2 { iterations: 7 }).unwrap_or_default();
    assert!(s.starts_with("$7$7$"), "{s}");
    // 12-byte salt, as Mosquitto 2.0 requires: 16 base64 characters.
    assert_eq!(s.split('$').nth(3).map(str::len), Some(16));
    assert!(password_hash(b"x", HashKind::Sha512Pbkdf2 { iterations: 0 }).is_err());
    assert!(s.len() < 200);
    let a = password_hash(b"x", HashKind::Argon2id).unwrap_or_default();
    assert!(a.starts_with("$argon2id$v=19$m=47104,t=1,p=1$"), "{a}");
}

#[test]
fn plaintext_is_refused_with_a_warning_naming_the_line() {
    let (file, warnings) = parse("# comment\nalice:secret\nbob:$6$\n");
    assert_eq!(file.check("alice", b"secret"), AuthResult::UnknownUser);
    assert!(file.is_empty());
    assert_eq!(warnings.len(), 2);
    let w = warnings[0].to_string();
    assert!(
        w.starts_with("/etc/culex/passwd:2: plaintext password for user 'alice' refused"),
        "{w}"
    );
    assert!(w.contains("culex passwd -U /etc/culex/passwd"), "{w}");
    assert!(!w.contains("secret"), "warnings never quote passwords: {w}");
    assert_eq!(warnings[1].line, 3);
}

#[test]
fn malformed_lines_are_warnings_not_errors() {
    let good = MOSQUITTO_FILE.lines().nth(1).unwrap_or_default();
    let hash = &good["alice:".len()..];
    let text = format!(
        "\n   \n#x\nno colon here\n:{hash}\n  alice  :  {hash}  \nalice:{hash}\nnohash:\n\
         nohash2:   \nbadb64:$6$!!!!$abc\nshortsalt:$6$YWJj${}\nbadhash:$7$101$UrV/sX092AKXOewD$AAAA\n\
         iter0:$7$0$UrV/sX092AKXOewD$AAAA\niterx:$7$1x$UrV/sX092AKXOewD$AAAA\n\
         unknown:$5$abc$def\nargon:$argon2id$garbage\nextra:$6$a$b$c\ncrlf:{hash}\r\n",
        "A".repeat(88)
    );
    let (file, warnings) = parse(&text);
    assert_eq!(file.len(), 2, "alice (trimmed) and crlf");
    assert_eq!(file.check("alice", b"secret"), AuthResult::Ok);
    assert_eq!(file.check("crlf", b"secret"), AuthResult::Ok);
    let lines: Vec<usize> = warnings.iter().map(|w| w.line).collect();
    assert_eq!(lines, vec![4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]);
    assert!(warnings[2]
        .message
        .contains("duplicate user 'alice' (first defined at line 6)"));
    for w in &warnings {
        assert!(!w.message.contains(hash), "{w}");
    }
}

#[test]
fn hash_field_ends_at_the_next_colon_like_mosquitto() {
    let good = MOSQUITTO_FILE.lines().nth(1).unwrap_or_default();
    let (file, warnings) = parse(&format!("{good}:trailing junk\n"));
    assert!(warnings.is_empty());
    assert_eq!(file.check("alice", b"secret"), AuthResult::Ok);
}

#[test]
fn invalid_utf8_line_is_a_warning() {
    let (file, warnings) = PasswordFile::parse_bytes(b"\xff\xfe:x\n", &origin());
    assert!(file.is_empty());
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].line, 1);
}

#[test]
fn verification_uses_the_constant_time_comparison() {
    let (file, _) = parse(MOSQUITTO_FILE);
    for (user, pw) in [("carol", &b"hunter2"[..]), ("alice", b"nope")] {
        let before = CT_COMPARISONS.load(Ordering::Relaxed);
        file.check(user, pw);
        assert!(CT_COMPARISONS.load(Ordering::Relaxed) > before, "{user}");
    }
}

#[test]
fn debug_does_not_leak_hashes() {
    let (file, _) = parse(MOSQUITTO_FILE);
    let dbg = format!("{file:?}");
    assert!(!dbg.contains("DC0IlpmDFECkk5"), "{dbg}");
}

#[test]
fn load_reads_files_and_names_missing_ones() {
    let e = match PasswordFile::load(Path::new("/nonexistent/passwd")) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => e.to_string(),
    };
    assert!(e.starts_with("cannot read /nonexistent/passwd: "), "{e}");
}

#[test]
fn password_file_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PasswordFile>();
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(text in "[a-z:$67#/=+ \n\t]{0,120}") {
        let _ = PasswordFile::parse(&text, &origin());
    }
}

/// A connection keeps the fingerprint of the entry it logged in with: the same entry in a
/// reloaded file matches, a rewritten password or a removed user does not.
#[test]
fn fingerprints_tell_a_changed_entry_from_the_same_one() {
    let (a, _) = PasswordFile::parse(MOSQUITTO_FILE, &origin()).expect("parse");
    let (again, _) = PasswordFile::parse(MOSQUITTO_FILE, &origin()).expect("parse");
    let alice = a.fingerprint("alice").expect("alice has an entry");
    assert_eq!(again.fingerprint("alice"), Some(alice));
    assert_ne!(a.fingerprint("bob"), Some(alice));
    // alice's password rewritten (erin's hash is another salt and password); bob removed.
    let erin_hash = MOSQUITTO_FILE
        .lines()
        .find_map(|l| l.strip_prefix("erin:"))
        .expect("erin line");
    let changed = format!("alice:{erin_hash}\ncarol:$6$KOnbtca+tIJ/TjfO$THHl9i2CM0omqZKFHai2vW48nfHRXctk1AgOw9OKI66or2tX5Ur9FF+tjn9jwuOolHlk5UZYrypjGTxE9UYFig==\n");
    let (b, _) = PasswordFile::parse(&changed, &origin()).expect("parse");
    assert!(b.fingerprint("alice").is_some());
    assert_ne!(b.fingerprint("alice"), Some(alice));
    assert_eq!(b.fingerprint("bob"), None);
    assert_eq!(b.fingerprint("carol"), a.fingerprint("carol"));
}

/// An unknown username is checked against an entry of the file's most common hash kind and
/// cost (here `$7$` with 101 iterations: alice, bob, dave), so it costs what a known user does.
#[test]
fn unknown_users_are_checked_against_the_most_common_cost_class() {
    let (file, _) = PasswordFile::parse(MOSQUITTO_FILE, &origin()).unwrap();
    let decoy = file.decoy.as_ref().expect("a decoy");
    assert_eq!(decoy.cost_class(), (1, "101".to_string()));
    assert_eq!(file.check("nobody", b"secret"), AuthResult::UnknownUser);
    // Even the password of the entry the decoy copies does not let an unknown name in.
    assert_eq!(file.check("zed", b"secret"), AuthResult::UnknownUser);
    let (empty, _) = PasswordFile::parse("", &origin()).unwrap();
    assert!(empty.decoy.is_none());
    assert_eq!(empty.check("nobody", b"x"), AuthResult::UnknownUser);
}

/// Found by `scripts/fuzz.sh` (passwd_file): an argon2id parallelism above what fits once
/// multiplied by 8 made the argon2 crate's parameter check overflow (a panic in debug builds)
/// instead of refusing the line. Every out-of-range cost is a clear error.
#[test]
fn argon2id_costs_out_of_range_are_refused_not_a_panic() {
    let tail = "$c2FsdHNhbHRzYWx0c2FsdA$+gg1hRHinLuAQtgOR5hn7+mpOgk64Uk+4DqAh8QKBxo";
    for params in [
        "m=65536,t=2,p=774444444",
        "m=65536,t=2,p=16777216",
        "m=4294967295,t=1,p=4294967295",
        "m=65536,t=0,p=1",
        "m=7,t=1,p=1",
        "m=64,t=1,p=9",
    ] {
        let line = format!("$argon2id$v=19${params}{tail}");
        let err = PasswordHash::parse(&line).expect_err(&line);
        assert!(err.to_string().contains("argon2id"), "{line}: {err}");
    }
    let ok = format!("$argon2id$v=19$m=65536,t=2,p=4{tail}");
    assert!(PasswordHash::parse(&ok).is_ok());
}
