//! Fuzzes the password file parser: arbitrary text must never panic, and every warning must
//! name a line that exists. Verification is not fuzzed (an input could ask for billions of
//! PBKDF2 iterations); only lookups of absent users, which hash nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count();
    if let Ok((file, warnings)) = culex_auth::PasswordFile::parse(text, Path::new("fuzz")) {
        for w in &warnings {
            assert!(w.line >= 1 && w.line <= lines);
        }
        assert!(file.len() <= lines);
        let absent = "no:user"; // a username can never contain ':'
        assert!(!file.contains_user(absent));
        assert_eq!(file.check(absent, b""), culex_auth::AuthResult::UnknownUser);
    }
    for line in text.lines() {
        let _ = culex_auth::PasswordHash::parse(line);
    }
});
