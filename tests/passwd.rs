//! `culex passwd`, run as the real binary; results are checked with culex-auth and, when the
//! Mosquitto tools are installed (CI installs Debian's `mosquitto`), against `mosquitto_passwd`
//! and the `mosquitto` broker.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use culex_auth::{AuthResult, HashKind, PasswordFile, PasswordHash};

fn culex_passwd(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_culex"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn culex");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).expect("write stdin");
        }
    }
    child.wait_with_output().expect("wait culex")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Fails with exit status 1 and a single, panic-free line on stderr containing `needle`.
fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(needle), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

fn load(path: &Path) -> PasswordFile {
    let (file, warnings) = PasswordFile::load(path).expect("load");
    assert!(warnings.is_empty(), "{warnings:?}");
    file
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        culex_test_support::peer_missing(&format!(
            "`{tool}` is not installed (the Mosquitto interop part)"
        ));
    }
    found
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn create_add_update_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("passwd");
    let f = path_str(&pw);

    ok(&culex_passwd(
        &["-I", "1000", "-c", "-b", f, "alice", "secret"],
        None,
    ));
    assert_eq!(mode(&pw), 0o600);
    assert_eq!(load(&pw).check("alice", b"secret"), AuthResult::Ok);

    // A second user; alice's line is untouched.
    let before = std::fs::read_to_string(&pw).expect("read");
    ok(&culex_passwd(
        &["-H", "sha512", "-b", f, "bob", "p@ss w:rd"],
        None,
    ));
    let after = std::fs::read_to_string(&pw).expect("read");
    assert!(after.starts_with(&before), "{after}");
    let file = load(&pw);
    assert_eq!(file.len(), 2);
    assert_eq!(file.check("alice", b"secret"), AuthResult::Ok);
    assert_eq!(file.check("bob", b"p@ss w:rd"), AuthResult::Ok);
    assert!(after.contains("bob:$6$"), "{after}");

    // Changing a password replaces the line in place.
    ok(&culex_passwd(
        &["-I", "1000", "-b", f, "alice", "new"],
        None,
    ));
    let file = load(&pw);
    assert_eq!(file.check("alice", b"new"), AuthResult::Ok);
    assert_eq!(file.check("alice", b"secret"), AuthResult::BadPassword);
    let text = std::fs::read_to_string(&pw).expect("read");
    assert!(text.starts_with("alice:$7$1000$"), "{text}");

    // Delete.
    ok(&culex_passwd(&["-D", f, "alice"], None));
    let file = load(&pw);
    assert_eq!(file.check("alice", b"new"), AuthResult::UnknownUser);
    assert_eq!(file.check("bob", b"p@ss w:rd"), AuthResult::Ok);
    fails_with(
        &culex_passwd(&["-D", f, "alice"], None),
        "User alice not found in password file",
    );
    assert_eq!(mode(&pw), 0o600);

    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("passwd")]);
}

#[test]
fn default_hash_is_pbkdf2_with_modern_iterations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("passwd");
    ok(&culex_passwd(&["-c", "-b", path_str(&pw), "u", "pw"], None));
    let text = std::fs::read_to_string(&pw).expect("read");
    let hash = text.trim_end().strip_prefix("u:").expect("u: line");
    let parsed = PasswordHash::parse(hash).expect("parse");
    assert_eq!(
        parsed.kind(),
        HashKind::Sha512Pbkdf2 {
            iterations: 210_000
        }
    );
    assert!(parsed.verify(b"pw"));
}

#[test]
fn argon2id_option() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("passwd");
    ok(&culex_passwd(
        &["-H", "argon2id", "-c", "-b", path_str(&pw), "u", "pw"],
        None,
    ));
    let text = std::fs::read_to_string(&pw).expect("read");
    assert!(text.starts_with("u:$argon2id$v=19$"), "{text}");
    assert_eq!(load(&pw).check("u", b"pw"), AuthResult::Ok);
}

#[test]
fn upgrade_hashes_plaintext_and_keeps_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("passwd");
    let hashed = "carol:$6$KOnbtca+tIJ/TjfO$THHl9i2CM0omqZKFHai2vW48nfHRXctk1AgOw9OKI66or2tX5Ur9FF+tjn9jwuOolHlk5UZYrypjGTxE9UYFig==";
    std::fs::write(
        &pw,
        format!("# plain\nalice:secret\n{hashed}\n\nbob:two words\n"),
    )
    .expect("write");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    // Before: plaintext entries are refused by the loader, with warnings.
    let (file, warnings) = PasswordFile::load(&pw).expect("load");
    assert_eq!(file.len(), 1);
    assert_eq!(warnings.len(), 2);

    ok(&culex_passwd(&["-I", "1000", "-U", path_str(&pw)], None));
    let text = std::fs::read_to_string(&pw).expect("read");
    assert!(text.starts_with("# plain\nalice:$7$1000$"), "{text}");
    assert!(text.contains(&format!("\n{hashed}\n\n")), "{text}");
    let file = load(&pw);
    assert_eq!(file.check("alice", b"secret"), AuthResult::Ok);
    assert_eq!(file.check("bob", b"two words"), AuthResult::Ok);
    assert_eq!(file.check("carol", b"hunter2"), AuthResult::Ok);
    assert_eq!(mode(&pw), 0o600);

    // Running it again changes nothing.
    ok(&culex_passwd(&["-U", path_str(&pw)], None));
    assert_eq!(std::fs::read_to_string(&pw).expect("read"), text);
}

#[test]
fn password_from_stdin_when_not_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("passwd");
    let f = path_str(&pw);
    ok(&culex_passwd(
        &["-I", "1000", "-c", f, "u"],
        Some("s3cret\ns3cret\n"),
    ));
    assert_eq!(load(&pw).check("u", b"s3cret"), AuthResult::Ok);
    ok(&culex_passwd(&["-I", "1000", f, "v"], Some("only-once\n")));
    assert_eq!(load(&pw).check("v", b"only-once"), AuthResult::Ok);
    let before = std::fs::read(&pw).expect("read");
    fails_with(
        &culex_passwd(&[f, "w"], Some("one\ntwo\n")),
        "Passwords do not match",
    );
    fails_with(&culex_passwd(&[f, "w"], Some("")), "no password");
    fails_with(&culex_passwd(&[f, "w"], Some("\n")), "Empty password");
    assert_eq!(
        std::fs::read(&pw).expect("read"),
        before,
        "file untouched on error"
    );
}

#[test]
fn errors_are_one_line_with_status_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    fails_with(
        &culex_passwd(&["-b", path_str(&missing), "u", "p"], None),
        "use -c to create it",
    );
    assert!(!missing.exists());
    let out = culex_passwd(&[], None);
    fails_with(&out, "wrong number of arguments");
    fails_with(
        &culex_passwd(&["-c", "-D", "f", "u"], None),
        "cannot be used together",
    );
    fails_with(&culex_passwd(&["-b", "f", "a:b", "p"], None), "':'");
    let corrupt = dir.path().join("corrupt");
    std::fs::write(&corrupt, "a:$6$x$y\nnonsense\n").expect("write");
    fails_with(
        &culex_passwd(&["-b", path_str(&corrupt), "u", "p"], None),
        "Corrupt password file at line 2",
    );
    let help = culex_passwd(&["--help"], None);
    ok(&help);
    assert!(String::from_utf8_lossy(&help.stdout).contains("-U : hash the plain text"));
}

#[test]
fn symlinked_file_is_replaced_at_its_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    let link = dir.path().join("link");
    ok(&culex_passwd(
        &["-I", "10", "-c", "-b", path_str(&real), "a", "1"],
        None,
    ));
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    ok(&culex_passwd(
        &["-I", "10", "-b", path_str(&link), "b", "2"],
        None,
    ));
    assert!(std::fs::symlink_metadata(&link)
        .expect("meta")
        .file_type()
        .is_symlink());
    assert_eq!(load(&real).check("b", b"2"), AuthResult::Ok);
}

#[test]
fn mosquitto_passwd_files_verify() {
    if !have("mosquitto_passwd") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("passwd");
    let f = path_str(&pw);
    let run = |args: &[&str]| {
        let out = Command::new("mosquitto_passwd")
            .args(args)
            .output()
            .expect("run");
        ok(&out);
    };
    run(&["-c", "-b", f, "alice", "secret"]);
    run(&["-H", "sha512", "-b", f, "bob", "hunter2"]);
    run(&["-b", f, "dave", "ünïcödé"]);
    let file = load(&pw);
    assert_eq!(file.check("alice", b"secret"), AuthResult::Ok);
    assert_eq!(file.check("bob", b"hunter2"), AuthResult::Ok);
    assert_eq!(file.check("dave", "ünïcödé".as_bytes()), AuthResult::Ok);
    assert_eq!(file.check("alice", b"hunter2"), AuthResult::BadPassword);

    // culex passwd edits a mosquitto_passwd file without disturbing the other entries.
    let before = std::fs::read_to_string(&pw).expect("read");
    ok(&culex_passwd(&["-I", "1000", "-b", f, "erin", "x"], None));
    assert!(std::fs::read_to_string(&pw)
        .expect("read")
        .starts_with(&before));
}

/// Picks a loopback port that is free right now.
fn free_port() -> u16 {
    culex_test_support::free_port().expect("bind")
}

#[test]
fn culex_files_authenticate_on_a_real_mosquitto_broker() {
    if !have("mosquitto") || !have("mosquitto_pub") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("passwd");
    let f = path_str(&pw);
    ok(&culex_passwd(
        &["-I", "1000", "-c", "-b", f, "alice", "secret"],
        None,
    ));
    ok(&culex_passwd(
        &["-H", "sha512", "-b", f, "bob", "hunter2"],
        None,
    ));
    let port = free_port();
    let conf: PathBuf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        // `user root`: when run as root, mosquitto would otherwise switch to the `mosquitto`
        // user, which cannot read the 0600 file. (Ignored when not run as root.)
        format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {f}\n"),
    )
    .expect("write conf");
    let mut broker = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let publish = |user: &str, password: &str| {
        Command::new("mosquitto_pub")
            .args([
                "-p",
                &port.to_string(),
                "-t",
                "t",
                "-m",
                "x",
                "-u",
                user,
                "-P",
                password,
            ])
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_pub")
            .success()
    };
    let results = [
        publish("alice", "secret"),
        publish("bob", "hunter2"),
        publish("alice", "wrong"),
    ];
    let _ = broker.kill();
    let _ = broker.wait();
    assert_eq!(results, [true, true, false]);
}
