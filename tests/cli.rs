//! Command-line behaviour of the real `culex` binary: `--help`, `--version`, `--check`, `-p 0`,
//! `-c FILE`, SIGTERM / SIGINT shutdown and a listener whose port is taken.
//!
//! Every test spawns the binary built by Cargo (`CARGO_BIN_EXE_culex`). Nothing uses a fixed
//! port: brokers listen on port 0 and the test reads the port from the `listening on ADDR` log
//! line. Tests synchronise on events (log lines, MQTT acks, process exit) with generous
//! deadlines, and a [`Broker`] guard kills the child process if a test fails half-way.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, ConnectionError, Event, MqttOptions, Packet, QoS};
use tempfile::TempDir;

/// How long anything may take before the test gives up: startup, an MQTT exchange, shutdown.
const TIMEOUT: Duration = Duration::from_secs(20);

fn culex() -> Command {
    let mut cmd = culex_test_support::culex_command(env!("CARGO_BIN_EXE_culex"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `culex ARGS` to completion (for commands that exit by themselves), with a deadline.
fn run(args: &[&str]) -> Output {
    let mut child = culex()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn culex");
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let status = match wait_timeout(&mut child, TIMEOUT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("culex {args:?} did not exit within {TIMEOUT:?}");
        }
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// Waits for `child` to exit, polling, for at most `limit`.
fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case the log is coloured anyway.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running `culex` process whose stderr is read line by line in a thread. Dropping it kills
/// the process (if it is still running), so a failed assertion never leaves a broker behind.
struct Broker {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    exited: Option<ExitStatus>,
}

impl Broker {
    fn spawn(args: &[&str]) -> Broker {
        let mut cmd = culex();
        cmd.args(args);
        Broker::spawn_cmd(cmd)
    }

    fn spawn_cmd(mut cmd: Command) -> Broker {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn culex");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                log2.lock().expect("log lock").push(line.clone());
                // The receiver may be gone; keep draining so the child never blocks on a pipe.
                let _ = tx.send(line);
            }
        });
        Broker {
            child,
            lines,
            log,
            exited: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the broker wrote to stderr so far.
    fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits for a stderr line containing `needle`; returns that line.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no log line containing {needle:?} within {TIMEOUT:?}; log so far:\n{}",
                    self.log()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(TIMEOUT);
                    panic!(
                        "culex closed stderr ({status:?}) before logging {needle:?}; log:\n{}",
                        self.log()
                    )
                }
            }
        }
    }

    /// Waits for the `listening on 127.0.0.1:PORT` line and returns PORT.
    fn ipv4_port(&mut self) -> u16 {
        const NEEDLE: &str = "listening on 127.0.0.1:";
        let line = self.wait_for_line(NEEDLE);
        let rest = &line[line.find(NEEDLE).expect("needle") + NEEDLE.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let port: u16 = digits
            .parse()
            .unwrap_or_else(|e| panic!("bad port in log line {line:?}: {e}"));
        assert_ne!(
            port, 0,
            "the log must show the port actually bound: {line:?}"
        );
        port
    }

    fn signal(&self, sig: &str) {
        // The shell's built-in `kill`: no libc dependency, and no need for procps' kill(1),
        // which minimal Debian images lack.
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$0\" \"$1\"", sig])
            .arg(self.pid().to_string())
            .status()
            .expect("run sh -c kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_timeout(&mut self.child, limit);
        }
        self.exited
    }

    /// Waits for the process to exit on its own and returns its status and its full stderr.
    fn expect_exit(&mut self) -> (ExitStatus, String) {
        let Some(status) = self.wait_exit(TIMEOUT) else {
            panic!(
                "culex still running after {TIMEOUT:?}; log:\n{}",
                self.log()
            )
        };
        // stderr is closed once the process is gone; let the reader thread catch up.
        let deadline = Instant::now() + TIMEOUT;
        while self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
        {}
        (status, self.log())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.exited.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

fn write_file(dir: &TempDir, name: &str, contents: &str) -> PathBuf {
    let path = dir.path().join(name);
    fs::write(&path, contents).expect("write config file");
    path
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Connects a rumqttc (MQTT 3.1.1) client to `127.0.0.1:port`, subscribes, publishes at QoS 1
/// and waits for its own message to come back. Returns the connected client and connection
/// so the caller can keep the connection open (e.g. across a shutdown).
fn round_trip(port: u16, client_id: &str) -> (Client, rumqttc::Connection) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut conn) = Client::new(opts, 16);
    let topic = format!("culex/cli/{client_id}");
    let payload = format!("hello from {client_id}");
    let deadline = Instant::now() + TIMEOUT;
    let mut next = |what: &str| -> Event {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv_timeout(left) {
            Ok(Ok(event)) => event,
            Ok(Err(e)) => panic!("MQTT connection error while waiting for {what}: {e:?}"),
            Err(e) => panic!("no {what} within {TIMEOUT:?}: {e:?}"),
        }
    };
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = next("CONNACK") {
            assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
            break;
        }
    }
    client
        .subscribe(topic.as_str(), QoS::AtLeastOnce)
        .expect("queue SUBSCRIBE");
    loop {
        if let Event::Incoming(Packet::SubAck(ack)) = next("SUBACK") {
            assert_eq!(
                ack.return_codes,
                vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
            );
            break;
        }
    }
    client
        .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
        .expect("queue PUBLISH");
    let (mut got_puback, mut got_message) = (false, false);
    while !(got_puback && got_message) {
        match next("PUBACK and the message") {
            Event::Incoming(Packet::PubAck(_)) => got_puback = true,
            Event::Incoming(Packet::Publish(p)) => {
                assert_eq!(p.topic, topic);
                assert_eq!(p.payload.as_ref(), payload.as_bytes());
                assert_eq!(p.qos, QoS::AtLeastOnce);
                got_message = true;
            }
            _ => {}
        }
    }
    (client, conn)
}

/// A port that nobody listens on right now (bound then released). Only for tests that need
/// a port *number* in a config file but never connect to it.
fn unused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

// --- --help / --version ------------------------------------------------------------------

#[test]
fn help_exits_zero_and_lists_the_options() {
    let out = run(&["--help"]);
    assert!(out.status.success(), "--help failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "Usage: culex",
        "-c",
        "--config-file",
        "-p",
        "--port",
        "-v",
        "--check",
    ] {
        assert!(
            text.contains(expected),
            "--help lacks {expected:?}:\n{text}"
        );
    }
}

#[test]
fn version_exits_zero_and_prints_the_version() {
    let out = run(&["--version"]);
    assert!(out.status.success(), "--version failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("culex {}", env!("CARGO_PKG_VERSION")),
        "unexpected --version output"
    );
}

#[test]
fn unknown_argument_is_a_usage_error() {
    let out = run(&["--no-such-option"]);
    assert!(!out.status.success(), "expected failure: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-option"), "stderr: {err}");
}

// --- subcommands: listed, `culex help SUB`, man pages and completions ------------------------

const SUBCOMMANDS: [&str; 3] = ["passwd", "pub", "sub"];

#[test]
fn help_lists_each_subcommand_on_one_line() {
    let out = run(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in SUBCOMMANDS {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{sub} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{sub} in:\n{text}");
        assert!(lines[0].contains(&format!("mosquitto_{sub}")), "{text}");
    }
    assert!(text.contains("culex help SUBCOMMAND"), "{text}");
}

#[test]
fn help_subcommand_prints_the_subcommands_own_help() {
    for sub in SUBCOMMANDS {
        let via_help = run(&["help", sub]);
        let direct = run(&[sub, "--help"]);
        assert_eq!(via_help.status.code(), Some(0), "help {sub}: {via_help:?}");
        assert_eq!(direct.status.code(), Some(0), "{sub} --help: {direct:?}");
        let text = String::from_utf8_lossy(&via_help.stdout);
        assert!(text.starts_with(&format!("culex {sub}: ")), "{text}");
        assert!(text.contains(&format!("Usage: culex {sub} ")), "{text}");
        assert_eq!(via_help.stdout, direct.stdout, "help {sub} vs {sub} --help");
    }
    // `culex help` alone is `culex --help`.
    let alone = run(&["help"]);
    assert!(alone.status.success(), "{alone:?}");
    assert_eq!(alone.stdout, run(&["--help"]).stdout);
    // pub and sub keep Mosquitto's meaning of -h: the host.
    let text = String::from_utf8_lossy(&run(&["help", "pub"]).stdout).into_owned();
    assert!(text.contains(" -h, --host : MQTT host"), "{text}");
}

#[test]
fn help_for_an_unknown_subcommand_fails_naming_the_real_ones() {
    let out = run(&["help", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no subcommand 'nosuch'") && err.contains("passwd, pub, sub"),
        "{err}"
    );
}

#[test]
fn a_subcommand_after_broker_flags_is_refused() {
    let out = run(&["-v", "pub", "-t", "a", "-m", "x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`pub` must come first"), "{err}");
}

#[test]
fn generate_assets_writes_the_man_pages_and_completions() {
    let dir = TempDir::new().expect("temp dir");
    let out = run(&["generate-assets", path_str(dir.path())]);
    assert!(out.status.success(), "{out:?}");
    let read = |name: &str| {
        fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let main_page = read("man/man1/culex.1");
    assert!(main_page.starts_with(".ie"), "roff: {main_page}");
    assert!(main_page.contains("\\-\\-config\\-file"), "{main_page}");
    for sub in SUBCOMMANDS {
        assert!(
            main_page.contains(&format!("culex\\-{sub}(1)")),
            "{main_page}"
        );
        let page = read(&format!("man/man1/culex-{sub}.1"));
        assert!(
            page.contains(&format!(
                ".TH culex-{sub} 1  \"culex {}\"",
                env!("CARGO_PKG_VERSION")
            )),
            "{page}"
        );
    }
    let pub_page = read("man/man1/culex-pub.1");
    for flag in ["\\-\\-host", "\\-\\-will\\-topic", "\\-\\-repeat\\-delay"] {
        assert!(pub_page.contains(flag), "culex-pub.1 lacks {flag}");
    }
    assert!(read("man/man1/culex-sub.1").contains("Output format (\\-F)"));
    assert!(read("man/man1/culex-passwd.1").contains("passwordfile"));

    let bash = read("completions/culex.bash");
    let zsh = read("completions/_culex");
    let fish = read("completions/culex.fish");
    assert!(zsh.starts_with("#compdef culex"), "{zsh}");
    assert!(fish.contains("complete -c culex"), "{fish}");
    // Fish spells long options `-l name`, the others `--name`.
    for (shell, text) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
        for word in [
            "passwd",
            "pub",
            "sub",
            "config-file",
            "will-topic",
            "remove-retained",
        ] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }

    let usage = run(&["generate-assets"]);
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}

// --- what ships beside the binary ----------------------------------------------------------

/// A file at the repository root.
fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn license_is_the_declared_apache_2_0_text() {
    let manifest = repo_file("Cargo.toml");
    assert!(
        manifest.contains("license = \"Apache-2.0\""),
        "the workspace declares Apache-2.0"
    );
    let license = repo_file("LICENSE");
    assert!(
        license.trim_start().starts_with("Apache License"),
        "{license}"
    );
    for part in [
        "Version 2.0, January 2004",
        "http://www.apache.org/licenses/",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
        "APPENDIX: How to apply the Apache License to your work.",
    ] {
        assert!(license.contains(part), "LICENSE lacks {part:?}");
    }
    // The official text (apache.org/licenses/LICENSE-2.0.txt) is 202 lines.
    assert_eq!(license.lines().count(), 202);
}

#[test]
fn changelog_and_manifest_metadata() {
    let changelog = repo_file("CHANGELOG.md");
    assert!(changelog.starts_with("# Changelog"), "{changelog}");
    assert!(changelog.contains("## [Unreleased]"), "{changelog}");
    // A repository URL only if it is real: none of the reserved example domains.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut manifests = vec!["Cargo.toml".to_owned()];
    for entry in fs::read_dir(root.join("crates")).expect("crates/") {
        let name = entry.expect("entry").file_name();
        manifests.push(format!("crates/{}/Cargo.toml", name.to_string_lossy()));
    }
    for manifest in &manifests {
        let text = repo_file(manifest);
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("repository"))
        {
            assert!(
                !line.contains(".invalid") && !line.contains("example."),
                "{manifest}: {line}"
            );
        }
    }
}

#[test]
fn check_requires_a_config_file() {
    let out = run(&["--check"]);
    assert!(
        !out.status.success(),
        "--check without -c must fail: {out:?}"
    );
}

// --- --check -------------------------------------------------------------------------------

fn assert_check_ok(path: &Path) {
    let out = run(&["--check", "-c", path_str(path)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "--check {} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        path.display(),
        out.status
    );
    assert!(
        stdout.contains(&format!("{}: configuration OK", path.display())),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

/// Runs `--check -c path`, asserts failure, returns stderr.
fn check_fails(path: &Path) -> String {
    let out = run(&["--check", "-c", path_str(path)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "--check {} succeeded but should fail:\nstdout: {stdout}\nstderr: {stderr}",
        path.display()
    );
    assert!(
        !stdout.contains("configuration OK"),
        "a failing check must not claim OK: {stdout}"
    );
    stderr
}

#[test]
fn check_accepts_a_good_toml_file() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "culex.toml",
        r#"
[[listeners]]
host = "127.0.0.1"
port = 1883

[[listeners]]
port = 8883

[security]
allow_anonymous = true

[limits]
max_inflight_messages = 50
max_queued_messages = 500
max_packet_size = 65536
max_keepalive = 600

[sessions]
allow_zero_length_clientid = false
auto_id_prefix = "cx-"

[mqtt]
retain_available = true
max_qos = 1
"#,
    );
    assert_check_ok(&path);
}

#[test]
fn check_accepts_a_good_mosquitto_conf() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "mosquitto.conf",
        "# a comment, then a blank line\n\
         \n\
         listener 1883 127.0.0.1\n\
         listener 8883\n\
         allow_anonymous true\n\
         max_inflight_messages 20\n\
         max_queued_messages 1000\n\
         max_queued_bytes 0\n\
         message_size_limit 0\n\
         max_packet_size 1048576\n\
         max_keepalive 300\n\
         max_connections -1\n\
         allow_zero_length_clientid true\n\
         auto_id_prefix auto-\n\
         retain_available true\n\
         max_qos 2\n\
         upgrade_outgoing_qos false\n\
         persistent_client_expiration 1d\n\
         log_dest stderr\n",
    );
    assert_check_ok(&path);
}

#[test]
fn check_rejects_an_unknown_option_naming_file_line_and_option() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "bad-option.conf",
        "listener 1883 127.0.0.1\nallow_anonymous true\nno_such_option 42\n",
    );
    let stderr = check_fails(&path);
    let location = format!("{}:3", path.display());
    assert!(stderr.contains(&location), "no {location:?} in: {stderr}");
    assert!(
        stderr.contains("no_such_option"),
        "option not named: {stderr}"
    );
}

#[test]
fn check_rejects_max_qos_3_naming_file_line_and_option() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "bad-value.conf",
        "listener 1883 127.0.0.1\n\nmax_qos 3\n",
    );
    let stderr = check_fails(&path);
    let location = format!("{}:3", path.display());
    assert!(stderr.contains(&location), "no {location:?} in: {stderr}");
    assert!(stderr.contains("max_qos"), "option not named: {stderr}");
    assert!(stderr.contains('3'), "bad value not shown: {stderr}");
}

#[test]
fn check_reports_every_problem_not_just_the_first() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "two-problems.conf",
        "listener 1883 127.0.0.1\nbogus_one 1\nmax_qos 7\n",
    );
    let stderr = check_fails(&path);
    for expected in [
        format!("{}:2", path.display()),
        format!("{}:3", path.display()),
    ] {
        assert!(stderr.contains(&expected), "no {expected:?} in: {stderr}");
    }
}

#[test]
fn check_rejects_bad_toml_naming_file_line_and_key() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "bad.toml",
        "[[listeners]]\nhost = \"127.0.0.1\"\nport = 1883\n\n[mqtt]\nmax_qos = 3\nno_such_key = true\n",
    );
    let stderr = check_fails(&path);
    assert!(
        stderr.contains(&path.display().to_string()),
        "file not named: {stderr}"
    );
    assert!(stderr.contains("max_qos"), "bad key not named: {stderr}");
    assert!(
        stderr.contains("no_such_key"),
        "unknown key not named: {stderr}"
    );
    let location = format!("{}:6", path.display());
    assert!(stderr.contains(&location), "no {location:?} in: {stderr}");
}

#[test]
fn check_rejects_a_missing_file_naming_it() {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("does-not-exist.conf");
    let stderr = check_fails(&path);
    assert!(
        stderr.contains(&path.display().to_string()),
        "missing file not named: {stderr}"
    );
}

#[test]
fn starting_with_a_bad_config_fails_without_listening() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "bad-start.conf",
        &format!("listener {} 127.0.0.1\nmax_qos 3\n", unused_port()),
    );
    let mut broker = Broker::spawn(&["-c", path_str(&path)]);
    let (status, log) = broker.expect_exit();
    assert!(!status.success(), "culex started on a bad config: {log}");
    assert!(!log.contains("listening on"), "listened anyway: {log}");
    assert!(
        log.contains(&format!("{}:2", path.display())),
        "error does not name file:line: {log}"
    );
}

// --- running: -p 0, -c FILE, signals --------------------------------------------------------

#[test]
fn port_zero_serves_mqtt_and_sigterm_exits_zero() {
    let mut broker = Broker::spawn(&["-p", "0"]);
    let port = broker.ipv4_port();
    // Keep the client connected through the shutdown: closing connections is part of it.
    let (_client, _conn) = round_trip(port, "cli-sigterm");
    broker.signal("TERM");
    let (status, log) = broker.expect_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must shut down cleanly with exit 0, got {status}; log:\n{log}"
    );
}

#[test]
fn port_zero_serves_mqtt_and_sigint_exits_zero() {
    let mut broker = Broker::spawn(&["-p", "0"]);
    let port = broker.ipv4_port();
    let (client, mut conn) = round_trip(port, "cli-sigint");
    client.disconnect().expect("queue DISCONNECT");
    // Drive the event loop until the DISCONNECT is written and the connection closes.
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match conn.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
    }
    broker.signal("INT");
    let (status, log) = broker.expect_exit();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGINT must shut down cleanly with exit 0, got {status}; log:\n{log}"
    );
}

/// A service manager may stop the broker at any moment once it is up; SIGTERM sent right after
/// the `listening on` line (no MQTT traffic in between) must still be a clean exit 0, so the
/// signal handlers must be in place before the listeners are announced.
#[test]
fn sigterm_right_after_listening_exits_zero() {
    let mut broker = Broker::spawn(&["-p", "0"]);
    let port = broker.ipv4_port();
    // A plain TCP connect proves the logged port is the bound one.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the logged port");
    broker.signal("TERM");
    let (status, log) = broker.expect_exit();
    assert!(status.success(), "exit {status}; log:\n{log}");
}

#[test]
fn mosquitto_conf_listener_port_zero_starts_and_serves() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "listen.conf",
        "listener 0 127.0.0.1\nallow_anonymous true\n",
    );
    let mut broker = Broker::spawn(&["-c", path_str(&path)]);
    let port = broker.ipv4_port();
    let _ = round_trip(port, "cli-conf");
    broker.signal("TERM");
    let (status, log) = broker.expect_exit();
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{log}");
    // Only the configured listener: no IPv6 loopback, no port 1883.
    assert!(
        !log.contains("listening on [::1]"),
        "unexpected listener: {log}"
    );
}

#[test]
fn toml_listener_port_zero_starts_and_serves() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "listen.toml",
        "[[listeners]]\nhost = \"127.0.0.1\"\nport = 0\n\n[security]\nallow_anonymous = true\n",
    );
    let mut broker = Broker::spawn(&["-c", path_str(&path)]);
    let port = broker.ipv4_port();
    let _ = round_trip(port, "cli-toml");
    broker.signal("TERM");
    let (status, log) = broker.expect_exit();
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{log}");
}

#[test]
fn config_file_listener_without_allow_anonymous_refuses_anonymous_clients() {
    // Mosquitto 2 behaviour: a config file with its own listener and no `allow_anonymous`
    // does not let anonymous clients in.
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(&dir, "closed.conf", "listener 0 127.0.0.1\n");
    let mut broker = Broker::spawn(&["-c", path_str(&path)]);
    let port = broker.ipv4_port();
    let (_client, mut conn) = Client::new(MqttOptions::new("cli-anon", "127.0.0.1", port), 4);
    let deadline = Instant::now() + TIMEOUT;
    let refused = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                panic!("anonymous client accepted: {ack:?}")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => break e,
            Err(e) => panic!("no CONNACK within {TIMEOUT:?}: {e:?}"),
        }
    };
    assert!(
        matches!(
            refused,
            ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized)
                | ConnectionError::ConnectionRefused(
                    rumqttc::ConnectReturnCode::BadUserNamePassword
                )
        ),
        "expected CONNACK 'not authorized', got {refused:?}"
    );
    broker.signal("TERM");
    let (status, log) = broker.expect_exit();
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{log}");
}

#[test]
fn listener_on_a_port_in_use_fails_with_a_clear_message() {
    // Hold a listening socket for the whole test so the port is certainly taken.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = taken.local_addr().expect("local_addr").port();
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "in-use.conf",
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
    );
    let mut broker = Broker::spawn(&["-c", path_str(&path)]);
    let (status, log) = broker.expect_exit();
    assert!(
        !status.success(),
        "culex must fail when its port is taken; log:\n{log}"
    );
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "message does not name the address: {log}"
    );
    assert!(
        log.to_lowercase().contains("in use"),
        "message does not say the address is in use: {log}"
    );
    drop(taken);
}

/// A client-supplied client id goes into log lines cut short (a 4,000-byte id does not make
/// a 4 KB line, twice per connection), and `connection_messages false` (Mosquitto's option)
/// silences the per-connection lines.
#[test]
fn client_ids_are_clipped_in_logs_and_connection_messages_can_be_silenced() {
    let dir = TempDir::new().expect("tempdir");
    let path = write_file(
        &dir,
        "long.conf",
        "listener 0 127.0.0.1\nallow_anonymous true\n",
    );
    let mut broker = Broker::spawn(&["-c", path_str(&path)]);
    let port = broker.ipv4_port();
    let id = "x".repeat(4_000);
    drop(round_trip(port, &id));
    let line = broker.wait_for_line("client connected");
    assert!(
        line.len() < 400 && line.contains("…(4000 bytes)"),
        "{} bytes: {}",
        line.len(),
        &line[..line.len().min(300)]
    );
    broker.signal("TERM");
    let (_, log) = broker.expect_exit();
    assert!(
        log.lines().all(|l| l.len() < 1000),
        "a log line carries the whole client id"
    );

    let path = write_file(
        &dir,
        "quiet.conf",
        "listener 0 127.0.0.1\nallow_anonymous true\nconnection_messages false\n",
    );
    let mut broker = Broker::spawn(&["-c", path_str(&path)]);
    let port = broker.ipv4_port();
    drop(round_trip(port, "quiet-client"));
    broker.signal("TERM");
    let (status, log) = broker.expect_exit();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        !log.contains("client connected") && !log.contains("connection closed"),
        "{log}"
    );
}

// --- user: dropping root privileges -------------------------------------------------------

/// True when this test runs as root; otherwise prints why the calling test does not run.
fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    let root = String::from_utf8_lossy(&out.stdout).trim() == "0";
    if !root {
        eprintln!("NOTE: not running as root; the broker keeps its user, nothing to test");
    }
    root
}

/// The uid of `name` on this system, if the user exists.
fn uid_of(name: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", name]).output().ok()?;
    out.status.success().then_some(())?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The real, effective, saved and file-system uids of process `pid`.
fn process_uids(pid: u32) -> Vec<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("a Uid: line");
    line["Uid:".len()..]
        .split_whitespace()
        .map(|n| n.parse().expect("numeric uid"))
        .collect()
}

/// Publishes a retained QoS 1 message and waits for its PUBACK.
fn publish_retained(port: u16, topic: &str, payload: &str) {
    let (client, mut conn) = Client::new(MqttOptions::new("cli-retain-pub", "127.0.0.1", port), 4);
    client
        .publish(topic, QoS::AtLeastOnce, true, payload.as_bytes().to_vec())
        .expect("queue PUBLISH");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return,
            Ok(Ok(_)) => {}
            other => panic!("no PUBACK for the retained message: {other:?}"),
        }
    }
}

/// Subscribes to `topic` and returns the retained payload that arrives.
fn read_retained(port: u16, topic: &str) -> Vec<u8> {
    let (client, mut conn) = Client::new(MqttOptions::new("cli-retain-sub", "127.0.0.1", port), 4);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .expect("queue SUBSCRIBE");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return p.payload.to_vec(),
            Ok(Ok(_)) => {}
            other => panic!("no retained message on {topic}: {other:?}"),
        }
    }
}

#[test]
fn started_as_root_the_broker_switches_user_after_opening_its_files() {
    if !running_as_root() {
        return;
    }
    // Mosquitto's rule: without `user`, the default user (culex), or nobody when it is missing.
    let (expected_user, expected_uid) = match uid_of("culex") {
        Some(uid) => ("culex", uid),
        None => ("nobody", uid_of("nobody").expect("a nobody user")),
    };
    // Everything in a root-only directory: the broker must open it all before switching.
    let dir = TempDir::new().expect("tempdir");
    let data = dir.path().join("data");
    let conf = write_file(
        &dir,
        "drop.conf",
        &format!(
            "listener 0 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}\n",
            path_str(&data)
        ),
    );
    let mut broker = Broker::spawn(&["-c", path_str(&conf)]);
    let port = broker.ipv4_port();
    let line = broker.wait_for_line("running as user");
    assert!(line.contains(expected_user), "{line}");
    assert_eq!(
        process_uids(broker.pid()),
        vec![expected_uid; 4],
        "every uid of the process is {expected_user}'s; log:\n{}",
        broker.log()
    );
    // It serves, and its store (opened as root, in a root-only directory) still takes writes.
    let _ = round_trip(port, "cli-dropped");
    publish_retained(port, "culex/cli/dropped", "kept");
    broker.signal("TERM");
    let (status, log) = broker.expect_exit();
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{log}");
    let mut again = Broker::spawn(&["-c", path_str(&conf)]);
    let port = again.ipv4_port();
    assert_eq!(read_retained(port, "culex/cli/dropped"), b"kept");
    again.signal("TERM");
    let (status, log) = again.expect_exit();
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{log}");
}

#[test]
fn user_root_keeps_root_and_says_so() {
    if !running_as_root() {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let conf = write_file(
        &dir,
        "root.conf",
        "listener 0 127.0.0.1\nallow_anonymous true\nuser root\n",
    );
    let mut broker = Broker::spawn(&["-c", path_str(&conf)]);
    let _ = broker.ipv4_port();
    broker.wait_for_line("running as root because the configuration says `user root`");
    assert_eq!(process_uids(broker.pid()), vec![0; 4]);
    broker.signal("TERM");
    let (status, log) = broker.expect_exit();
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{log}");
}

#[test]
fn a_user_that_does_not_exist_stops_the_start_before_listening() {
    if !running_as_root() {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let conf = write_file(
        &dir,
        "nouser.conf",
        "listener 0 127.0.0.1\nallow_anonymous true\nuser culex-no-such-user\n",
    );
    let mut broker = Broker::spawn(&["-c", path_str(&conf)]);
    let (status, log) = broker.expect_exit();
    assert_ne!(status.code(), Some(0), "log:\n{log}");
    assert!(
        log.contains("user culex-no-such-user: no such user") && !log.contains("listening on"),
        "log:\n{log}"
    );
    let out = check_fails(&conf);
    assert!(
        out.contains("user culex-no-such-user: no such user"),
        "{out}"
    );
}

// --- systemd notifications ----------------------------------------------------------------

/// Under systemd (`Type=notify`, `WatchdogSec=`): READY=1 once listening, WATCHDOG=1 while
/// the router answers, RELOADING=1 (with MONOTONIC_USEC) and READY=1 around SIGHUP, and
/// STOPPING=1 at SIGTERM, each a datagram on the socket systemd names.
#[test]
fn systemd_is_told_ready_reloading_stopping_and_fed_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new().expect("tempdir");
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    let conf = write_file(
        &dir,
        "notify.conf",
        "listener 0 127.0.0.1\nallow_anonymous true\nuser root\n",
    );
    let mut cmd = culex();
    cmd.args(["-c", path_str(&conf)])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let mut broker = Broker::spawn_cmd(cmd);
    let next = |what: &str| -> String {
        let mut buf = [0u8; 256];
        match socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("no {what} notification: {e}"),
        }
    };
    let first = next("READY");
    assert!(first.starts_with("READY=1"), "{first}");
    let port = broker.ipv4_port();
    let _ = round_trip(port, "cli-notify");
    // The watchdog is fed at half the interval.
    let mut pings = 0;
    while pings < 3 {
        let m = next("WATCHDOG");
        assert_eq!(m, "WATCHDOG=1");
        pings += 1;
    }
    broker.signal("HUP");
    let mut seen = Vec::new();
    loop {
        let m = next("RELOADING/READY");
        if m.starts_with("READY=1") {
            break;
        }
        seen.push(m);
    }
    assert!(
        seen.iter()
            .any(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
        "{seen:?}"
    );
    broker.signal("TERM");
    loop {
        let m = next("STOPPING");
        if m == "STOPPING=1" {
            break;
        }
        assert_eq!(m, "WATCHDOG=1", "unexpected notification");
    }
    let (status, log) = broker.expect_exit();
    assert_eq!(status.code(), Some(0), "exit {status}; log:\n{log}");
}
