//! Fuzzes the ACL file parser and checker: arbitrary input must never panic; the first line
//! of the input is used as username, client id and topic for a few checks.
#![no_main]

use culex_auth::{Access, AclFile};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(acl) = AclFile::parse(text, Path::new("fuzz")) else {
        return;
    };
    let probe = text.lines().next().unwrap_or("a/b");
    let mut parts = probe.splitn(3, ' ');
    let user = parts.next().filter(|u| !u.is_empty());
    let client_id = parts.next().unwrap_or("c");
    let topic = parts.next().unwrap_or("a/b");
    for access in [Access::Read, Access::Write, Access::Subscribe] {
        let _ = acl.check(user, client_id, topic, access);
        let _ = acl.check(None, client_id, topic, access);
    }
});
