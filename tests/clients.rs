//! `culex pub` and `culex sub` end to end: the real `culex` binary as broker and as clients,
//! interop with Mosquitto's `mosquitto_pub` / `mosquitto_sub`, refused connections against a
//! Mosquitto broker that requires a password, and TLS and WebSocket transports.
//!
//! Nothing uses a fixed port: Culex listens on port 0 and the test reads the `listening on`
//! line; Mosquitto configurations get a port picked by binding 127.0.0.1:0. Tests synchronise on
//! events: `culex sub -d` prints `Subscribed (mid: N): ...` on stderr once its SUBACK arrived,
//! and a subscriber's output is polled until the expected text appears. Every child process is
//! killed when its guard drops, so a failing test leaves nothing behind. Tests that need
//! Mosquitto's programs print a note and pass when they are not installed.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)] // test code: failing loudly is the point

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Deadline for anything that should happen promptly on a busy 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Process helpers

/// A child process whose stdout and stderr are collected in the background; killed on drop.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    name: String,
    /// Held open (never written) for children that must not see end of input.
    _stdin: Option<std::process::ChildStdin>,
}

fn collect(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    })
}

impl Proc {
    fn spawn(cmd: Command, stdin: Option<Vec<u8>>) -> Proc {
        Self::spawn_inner(cmd, stdin, false)
    }

    /// Spawns with a stdin pipe that stays open until the process is dropped.
    fn spawn_open_stdin(cmd: Command) -> Proc {
        Self::spawn_inner(cmd, None, true)
    }

    fn spawn_inner(mut cmd: Command, stdin: Option<Vec<u8>>, hold_stdin: bool) -> Proc {
        let name = format!("{cmd:?}");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() || hold_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let held = if hold_stdin { child.stdin.take() } else { None };
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Proc {
            child,
            stdout,
            stderr,
            readers,
            name,
            _stdin: held,
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until `pred(stdout, stderr)` holds; panics with both outputs on timeout.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if pred(&self.stdout(), &self.stderr()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // One last look: output may have arrived just before the exit.
                thread::sleep(Duration::from_millis(50));
                if pred(&self.stdout(), &self.stderr()) {
                    return;
                }
                panic!(
                    "{} exited ({status}) before {what}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} from {}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_stderr(&mut self, needle: &str) {
        self.wait_for(needle, |_, e| e.contains(needle));
    }

    /// Waits for the process to exit (killing it after the deadline) and returns its output.
    fn finish(mut self) -> Out {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = Out {
            code: status.and_then(|s| s.code()),
            stdout: self.stdout(),
            stderr: self.stderr(),
        };
        assert!(
            status.is_some(),
            "{} did not exit within {TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
            self.name,
            out.stdout,
            out.stderr
        );
        out
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a finished process ended.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn culex() -> Command {
    culex_test_support::culex_command(env!("CARGO_BIN_EXE_culex"))
}

/// `culex pub ARGS` (or `sub`) run to completion.
fn run(tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Out {
    let mut cmd = culex();
    cmd.arg(tool).args(args);
    Proc::spawn(cmd, stdin.map(<[u8]>::to_vec)).finish()
}

/// `culex pub ARGS`, which must succeed.
fn publish(args: &[&str]) -> Out {
    let out = run("pub", args, None);
    assert_eq!(out.code, Some(0), "culex pub {args:?}: {out:?}");
    out
}

/// Starts `culex sub -d ARGS` and waits until its subscriptions are acknowledged.
fn subscriber(args: &[&str]) -> Proc {
    let mut cmd = culex();
    cmd.arg("sub").arg("-d").args(args);
    let mut p = Proc::spawn(cmd, None);
    p.wait_stderr("Subscribed (mid:");
    p
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// True (with a printed note) when `program` is not installed.
fn missing(program: &str) -> bool {
    if which(program).is_some() {
        return false;
    }
    culex_test_support::peer_missing(&format!(
        "`{program}` is not installed (apt install mosquitto mosquitto-clients)"
    ));
    true
}

fn free_port() -> u16 {
    culex_test_support::free_port().expect("bind")
}

fn wait_port(port: u16, proc: &mut Proc) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = proc.child.try_wait() {
            return false;
        }
        thread::sleep(Duration::from_millis(25));
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Brokers

/// `culex -p 0` (or with a config file); the port is read from the log.
struct Culex {
    _proc: Proc,
    port: u16,
}

impl Culex {
    fn start() -> Culex {
        Self::start_args(&["-p", "0"])
    }

    fn start_args(args: &[&str]) -> Culex {
        let mut cmd = culex();
        cmd.args(args);
        let mut proc = Proc::spawn(cmd, None);
        const NEEDLE: &str = "listening on 127.0.0.1:";
        proc.wait_stderr(NEEDLE);
        let log = proc.stderr();
        let rest = &log[log.find(NEEDLE).unwrap() + NEEDLE.len()..];
        let port = rest
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        Culex { _proc: proc, port }
    }

    fn port(&self) -> String {
        self.port.to_string()
    }
}

/// A Mosquitto broker with a generated configuration.
struct Mosquitto {
    _proc: Proc,
    _dir: TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto -c` with `config` (listeners on `ports`); `None` if it did not come
    /// up (for example a build without WebSocket support).
    fn start(dir: TempDir, config: &str, ports: &[u16]) -> Option<Mosquitto> {
        let conf = dir.path().join("mosquitto.conf");
        // Running as root, Mosquitto would drop to the `mosquitto` user, which cannot read the
        // temporary directory.
        std::fs::write(&conf, format!("user root\n{config}")).unwrap();
        let mut cmd = Command::new(which("mosquitto")?);
        cmd.arg("-c").arg(&conf);
        let mut proc = Proc::spawn(cmd, None);
        for &p in ports {
            if !wait_port(p, &mut proc) {
                eprintln!("note: mosquitto did not start:\n{}", proc.stderr());
                return None;
            }
        }
        Some(Mosquitto {
            _proc: proc,
            _dir: dir,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Basic publish / subscribe, every protocol version and QoS

#[test]
fn help_and_usage_errors() {
    for tool in ["pub", "sub"] {
        let out = run(tool, &["--help"], None);
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(out.stdout.contains(&format!("culex {tool}")), "{out:?}");
        assert!(out.stdout.contains("-h host"), "{out:?}");
    }
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "pub",
            &["-t", "a"],
            "Both topic and message must be supplied.",
        ),
        (
            "pub",
            &["-t", "a", "-m", "x", "-q", "3"],
            "Invalid QoS given: 3",
        ),
        ("pub", &["-t", "a/#", "-m", "x"], "Invalid publish topic"),
        (
            "pub",
            &["-t", "a", "-m", "x", "-f", "y"],
            "Only one type of message",
        ),
        (
            "pub",
            &["-t", "a", "-m", "x", "--bogus"],
            "Unknown option '--bogus'.",
        ),
        (
            "pub",
            &["-t", "a", "-m", "x", "-V", "4"],
            "Invalid protocol version",
        ),
        (
            "pub",
            &["-t", "a", "-m", "x", "-p"],
            "-p argument given but no value",
        ),
        (
            "pub",
            &["-t", "a", "-m", "x", "-p", "70000"],
            "Invalid port given",
        ),
        (
            "pub",
            &["-t", "a", "-m", "x", "-L", "http://h/t"],
            "Invalid URL",
        ),
        (
            "pub",
            &["-t", "a", "-m", "x", "--will-qos", "1"],
            "no will topic",
        ),
        (
            "pub",
            &["-t", "a", "-m", "x", "--cert", "c.pem"],
            "Both certfile and keyfile",
        ),
        ("sub", &[], "You must specify a topic"),
        ("sub", &["-t", "a/#/b"], "Invalid subscription topic"),
        ("sub", &["-t", "a", "-c"], "client id"),
        ("sub", &["-t", "a", "-W", "x"], "Invalid timeout"),
        ("sub", &["-t", "a", "-C", "0"], "Invalid message count"),
    ];
    for (tool, args, msg) in cases {
        let out = run(tool, args, None);
        assert_eq!(out.code, Some(1), "culex {tool} {args:?}: {out:?}");
        let first = out.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("Error: ") && first.contains(msg),
            "{args:?}: {out:?}"
        );
        assert!(
            out.stderr.contains(&format!("culex {tool} --help")),
            "{out:?}"
        );
        assert!(!out.stderr.contains("panicked"), "{out:?}");
    }
}

#[test]
fn pub_sub_every_protocol_version() {
    let broker = Culex::start();
    let port = broker.port();
    for v in ["31", "mqttv31", "311", "mqttv311", "5", "mqttv5"] {
        let topic = format!("versions/{v}");
        let sub = subscriber(&["-p", &port, "-V", v, "-t", &topic, "-C", "1", "-v"]);
        publish(&["-p", &port, "-V", v, "-t", &topic, "-m", "hello"]);
        let out = sub.finish();
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(out.stdout, format!("{topic} hello\n"), "-V {v}");
    }
}

#[test]
fn qos_levels_and_message_ids() {
    let broker = Culex::start();
    let port = broker.port();
    let sub = subscriber(&[
        "-p", &port, "-t", "qos/#", "-q", "2", "-C", "3", "-F", "%t %q %p",
    ]);
    for q in ["0", "1", "2"] {
        let out = publish(&[
            "-p",
            &port,
            "-t",
            &format!("qos/{q}"),
            "-q",
            q,
            "-m",
            "m",
            "-d",
        ]);
        match q {
            "1" => assert!(out.stderr.contains("received PUBACK"), "{out:?}"),
            "2" => {
                assert!(out.stderr.contains("received PUBREC"), "{out:?}");
                assert!(out.stderr.contains("sending PUBREL"), "{out:?}");
                assert!(out.stderr.contains("received PUBCOMP"), "{out:?}");
            }
            _ => {}
        }
    }
    let out = sub.finish();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "qos/0 0 m\nqos/1 1 m\nqos/2 2 m\n");
    // The subscription QoS caps delivery.
    let sub = subscriber(&["-p", &port, "-t", "cap", "-q", "1", "-C", "1", "-F", "%q"]);
    publish(&["-p", &port, "-t", "cap", "-q", "2", "-m", "x"]);
    assert_eq!(sub.finish().stdout, "1\n");
}

#[test]
fn payload_sources() {
    let broker = Culex::start();
    let port = broker.port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, b"from a file\nwith two lines").unwrap();

    // -f, -n, -s, -m with --repeat and --repeat-delay.
    let sub = subscriber(&[
        "-p", &port, "-t", "src/#", "-C", "7", "-F", "%t:%l:%p", "-N",
    ]);
    publish(&["-p", &port, "-t", "src/f", "-f", file.to_str().unwrap()]);
    publish(&["-p", &port, "-t", "src/n", "-n"]);
    let out = run(
        "pub",
        &["-p", &port, "-t", "src/s", "-s"],
        Some(b"all\nof stdin"),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let started = Instant::now();
    publish(&[
        "-p",
        &port,
        "-t",
        "src/r",
        "-m",
        "x",
        "--repeat",
        "4",
        "--repeat-delay",
        "0.2",
    ]);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "--repeat-delay not honoured"
    );
    let out = sub.finish();
    assert_eq!(
        out.stdout,
        "src/f:26:from a file\nwith two linessrc/n:0:src/s:12:all\nof stdinsrc/r:1:xsrc/r:1:xsrc/r:1:xsrc/r:1:x"
    );

    // -l: one message per line, an empty line is an empty message, no trailing newline needed.
    let sub = subscriber(&["-p", &port, "-t", "lines", "-C", "4", "-F", "[%p]"]);
    let out = run(
        "pub",
        &["-p", &port, "-t", "lines", "-l", "-q", "1"],
        Some(b"one\n\ntwo\nthree"),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(sub.finish().stdout, "[one]\n[]\n[two]\n[three]\n");

    let out = run(
        "pub",
        &["-p", &port, "-t", "x", "-f", "/nonexistent/file"],
        None,
    );
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.starts_with("Error: Unable to read file"),
        "{out:?}"
    );
}

#[test]
fn retained_messages_and_filters() {
    let broker = Culex::start();
    let port = broker.port();
    publish(&["-p", &port, "-t", "ret/a", "-m", "old-a", "-r"]);
    publish(&["-p", &port, "-t", "ret/b", "-m", "old-b", "-r", "-q", "1"]);

    // Retained messages arrive with the retain flag (%r).
    let out = run(
        "sub",
        &["-p", &port, "-t", "ret/#", "-C", "2", "-F", "%r %t %p"],
        None,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut lines: Vec<&str> = out.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["1 ret/a old-a", "1 ret/b old-b"]);

    // -R skips them (and does not count them); a live message is printed.
    let sub = subscriber(&["-p", &port, "-t", "ret/#", "-R", "-C", "1", "-v"]);
    publish(&["-p", &port, "-t", "ret/c", "-m", "live"]);
    assert_eq!(sub.finish().stdout, "ret/c live\n");

    // --retained-only prints retained ones and exits at the first live message.
    let sub = subscriber(&["-p", &port, "-t", "ret/a", "--retained-only", "-v"]);
    publish(&["-p", &port, "-t", "ret/a", "-m", "new-a"]);
    let out = sub.finish();
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "ret/a old-a\n"));

    // -T filters topics out; --remove-retained clears what it receives (except filtered).
    let out = run(
        "sub",
        &[
            "-p",
            &port,
            "-t",
            "ret/#",
            "-T",
            "ret/b",
            "--remove-retained",
            "-W",
            "2",
            "-v",
        ],
        None,
    );
    assert_eq!(out.code, Some(27), "{out:?}");
    assert!(!out.stdout.contains("ret/b"), "{out:?}");
    assert!(out.stdout.contains("ret/a old-a"), "{out:?}");
    let out = run("sub", &["-p", &port, "-t", "ret/#", "-W", "2", "-v"], None);
    assert_eq!(
        out.stdout, "ret/b old-b\n",
        "only the filtered-out message is still retained"
    );
}

#[test]
fn output_options() {
    let broker = Culex::start();
    let port = broker.port();
    // -v with an empty payload prints "(null)"; -N drops the newline.
    let sub = subscriber(&["-p", &port, "-t", "out/#", "-C", "2", "-v", "-N"]);
    publish(&["-p", &port, "-t", "out/a", "-n"]);
    publish(&["-p", &port, "-t", "out/b", "-m", "b"]);
    assert_eq!(sub.finish().stdout, "out/a (null)out/b b");

    // -F with JSON, times, hex, width and escapes.
    let sub = subscriber(&[
        "-p",
        &port,
        "-t",
        "fmt",
        "-q",
        "1",
        "-C",
        "1",
        "-F",
        "%j\\t%x|%5l|%-4q|%.2t|%I|%U|@Y",
    ]);
    publish(&["-p", &port, "-t", "fmt", "-m", "hi\"", "-q", "1"]);
    let out = sub.finish();
    let line = out.stdout.trim_end_matches('\n');
    let (json, rest) = line.split_once('\t').unwrap();
    assert!(json.starts_with("{\"tst\":\""), "{json}");
    assert!(
        json.ends_with(
            r#"Z+0000","topic":"fmt","qos":1,"retain":0,"payloadlen":3,"payload":"hi\""}"#
        ),
        "{json}"
    );
    let fields: Vec<&str> = rest.split('|').collect();
    assert_eq!(&fields[..4], ["686922", "    3", "1", "fm"]);
    assert!(
        fields[4].ends_with("+0000") && fields[4].len() == 24,
        "{fields:?}"
    );
    assert!(
        fields[5]
            .split_once('.')
            .is_some_and(|(_, ns)| ns.len() == 9),
        "{fields:?}"
    );
    assert_eq!(fields[6].len(), 4);
}

#[test]
fn count_timeout_unsubscribe_and_exit_after_subscribe() {
    let broker = Culex::start();
    let port = broker.port();
    // -W: exit status 27 and "Timed out".
    let started = Instant::now();
    let out = run("sub", &["-p", &port, "-t", "quiet", "-W", "1"], None);
    assert_eq!(out.code, Some(27), "{out:?}");
    assert!(out.stderr.contains("Timed out"), "{out:?}");
    assert!(started.elapsed() >= Duration::from_secs(1));

    // -E: exit as soon as the subscription is acknowledged.
    let out = run("sub", &["-p", &port, "-t", "e", "-E", "-d"], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Subscribed (mid: 1): 0"), "{out:?}");

    // -c -i: a persistent session keeps the subscription; -U removes it.
    let out = run(
        "sub",
        &[
            "-p", &port, "-t", "persist", "-q", "1", "-c", "-i", "keeper", "-E",
        ],
        None,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    publish(&["-p", &port, "-t", "persist", "-q", "1", "-m", "while away"]);
    let out = run(
        "sub",
        &[
            "-p", &port, "-t", "persist", "-q", "1", "-c", "-i", "keeper", "-C", "1",
        ],
        None,
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "while away\n"),
        "{out:?}"
    );
    let out = run(
        "sub",
        &[
            "-p", &port, "-U", "persist", "-c", "-i", "keeper", "-E", "-d",
        ],
        None,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("sending UNSUBSCRIBE (Mid: 1, Topic: persist)"),
        "{out:?}"
    );
    publish(&[
        "-p",
        &port,
        "-t",
        "persist",
        "-q",
        "1",
        "-m",
        "nobody listens",
    ]);
    let out = run(
        "sub",
        &["-p", &port, "-t", "other", "-c", "-i", "keeper", "-W", "1"],
        None,
    );
    assert_eq!((out.code, out.stdout.as_str()), (Some(27), ""), "{out:?}");
}

#[test]
fn client_id_keepalive_session_expiry_and_url() {
    let broker = Culex::start();
    let port = broker.port();
    // -i appears in the debug lines; -I builds an id from a prefix and the pid.
    let out = publish(&["-p", &port, "-t", "id", "-m", "x", "-i", "my-client", "-d"]);
    assert!(
        out.stderr.contains("Client my-client sending CONNECT"),
        "{out:?}"
    );
    let out = publish(&["-p", &port, "-t", "id", "-m", "x", "-I", "pfx-", "-d"]);
    assert!(out.stderr.contains("Client pfx-"), "{out:?}");
    // -V 5 -x: session expiry accepted; the server-assigned id is shown once known.
    let out = publish(&[
        "-p", &port, "-t", "id", "-m", "x", "-V", "mqttv5", "-x", "60", "-d",
    ]);
    assert!(
        out.stderr.contains("Client (null) sending CONNECT"),
        "{out:?}"
    );

    // -k: pings after the keepalive interval.
    let mut sub = subscriber(&["-p", &port, "-t", "ka", "-k", "1"]);
    sub.wait_stderr("sending PINGREQ");
    sub.wait_stderr("received PINGRESP");
    drop(sub);

    // -L for both tools, with user and password in the URL.
    let url_sub = format!("mqtt://someone:secret@127.0.0.1:{port}/url/+");
    let sub = subscriber(&["-L", &url_sub, "-C", "1", "-v"]);
    publish(&[
        "-L",
        &format!("mqtt://127.0.0.1:{port}/url/topic"),
        "-m",
        "via url",
    ]);
    assert_eq!(sub.finish().stdout, "url/topic via url\n");
}

#[test]
fn wills() {
    let broker = Culex::start();
    let port = broker.port();
    let watcher = subscriber(&[
        "-p",
        &port,
        "-t",
        "will/#",
        "-C",
        "2",
        "-F",
        "%t %q %r %p",
        "-q",
        "2",
    ]);
    // A pub waiting on stdin (-l) and a sub, each killed without DISCONNECT.
    let mut cmd = culex();
    cmd.args([
        "pub",
        "-p",
        &port,
        "-t",
        "unused",
        "-l",
        "-d",
        "--will-topic",
        "will/pub",
        "--will-payload",
        "pub gone",
        "--will-qos",
        "1",
    ]);
    // Keep stdin open: the child reads from a pipe we never close.
    let mut publisher = Proc::spawn_open_stdin(cmd);
    publisher.wait_stderr("received CONNACK");
    publisher.kill();
    let mut sub = subscriber(&[
        "-p",
        &port,
        "-t",
        "ignored",
        "--will-topic",
        "will/sub",
        "--will-payload",
        "sub gone",
        "--will-qos",
        "2",
        "--will-retain",
    ]);
    sub.kill();
    let out = watcher.finish();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "will/pub 1 0 pub gone\nwill/sub 2 0 sub gone\n");
    // The retained will is kept.
    let out = run(
        "sub",
        &["-p", &port, "-t", "will/sub", "-C", "1", "-F", "%r %p"],
        None,
    );
    assert_eq!(out.stdout, "1 sub gone\n");
}

#[test]
fn reconnect_with_backoff() {
    let broker = Culex::start();
    let port = broker.port();
    let mut sub = subscriber(&["-p", &port, "-t", "rc", "--reconnect", "-C", "1", "-v"]);
    drop(broker);
    sub.wait_stderr("reconnecting in");
    // Same port again (it was just released; nothing else should have taken it).
    let broker = Culex::start_args(&["-p", &port]);
    sub.wait_stderr("Reconnected.");
    sub.wait_for("second SUBACK", |_, e| {
        e.matches("Subscribed (mid:").count() >= 2
    });
    publish(&["-p", &broker.port(), "-t", "rc", "-m", "after restart"]);
    let out = sub.finish();
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "rc after restart\n"),
        "{out:?}"
    );
}

#[test]
fn unreachable_host() {
    // A port that was free a moment ago: nothing listens there.
    let port = free_port().to_string();
    for (tool, extra) in [("pub", &["-m", "y"][..]), ("sub", &[][..])] {
        let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-t", "x"];
        args.extend_from_slice(extra);
        let out = run(tool, &args, None);
        assert_eq!(out.code, Some(1), "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(
            out.stderr
                .starts_with("Error: Unable to connect to 127.0.0.1:"),
            "{out:?}"
        );
        assert!(out.stderr.contains("refused"), "{out:?}");
    }
    let out = run(
        "pub",
        &["-h", "nonexistent.invalid", "-t", "x", "-m", "y"],
        None,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .starts_with("Error: Unable to connect to nonexistent.invalid:1883"),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Interop with Mosquitto's clients, and refused connections from a Mosquitto broker

#[test]
fn interop_with_mosquitto_clients() {
    if missing("mosquitto_pub") || missing("mosquitto_sub") {
        return;
    }
    let broker = Culex::start();
    let port = broker.port();
    for v in ["mqttv311", "mqttv5"] {
        // mosquitto_pub -> culex sub
        let sub = subscriber(&[
            "-p",
            &port,
            "-t",
            "interop/m2c",
            "-q",
            "2",
            "-V",
            v,
            "-C",
            "1",
            "-F",
            "%t %q %p",
        ]);
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "interop/m2c",
                "-q",
                "2",
                "-m",
                "from mosquitto",
                "-V",
                v,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(sub.finish().stdout, "interop/m2c 2 from mosquitto\n");

        // culex pub -> mosquitto_sub. Its output is block-buffered on a pipe, so there is no
        // "subscribed" line to wait for: publish until mosquitto_sub has its one message (-C 1).
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "interop/c2m",
            "-q",
            "1",
            "-C",
            "1",
            "-v",
            "-V",
            v,
        ]);
        let mut msub = Proc::spawn(cmd, None);
        let deadline = Instant::now() + TIMEOUT;
        while msub.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub never got a message"
            );
            publish(&[
                "-p",
                &port,
                "-t",
                "interop/c2m",
                "-q",
                "1",
                "-m",
                "from culex",
                "-V",
                v,
            ]);
            thread::sleep(Duration::from_millis(200));
        }
        let out = msub.finish();
        assert_eq!(out.code, Some(0), "{out:?}");
        assert!(out.stdout.contains("interop/c2m from culex\n"), "{out:?}");
    }
}

#[test]
fn refused_connections_and_credentials() {
    if missing("mosquitto") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let passwd = dir.path().join("passwd");
    let have_passwd = which("mosquitto_passwd").is_some_and(|p| {
        Command::new(p)
            .args(["-c", "-b"])
            .arg(&passwd)
            .args(["alice", "wonderland"])
            .status()
            .is_ok_and(|s| s.success())
    });
    let mut config = format!("listener {port} 127.0.0.1\nallow_anonymous false\n");
    if have_passwd {
        config.push_str(&format!("password_file {}\n", passwd.display()));
    }
    let Some(_mosquitto) = Mosquitto::start(dir, &config, &[port]) else {
        panic!("mosquitto did not start with a plain listener");
    };
    let port = port.to_string();
    for (tool, extra) in [("pub", &["-m", "y"][..]), ("sub", &[][..])] {
        let args = |more: &[&'static str]| {
            let mut a = vec!["-p", port.as_str(), "-t", "x"];
            a.extend_from_slice(extra);
            a.extend_from_slice(more);
            a
        };
        let out = run(tool, &args(&[]), None);
        assert_eq!(out.code, Some(5), "{out:?}");
        assert_eq!(
            out.stderr,
            "Connection error: Connection Refused: not authorised.\n"
        );
        let out = run(tool, &args(&["-V", "5"]), None);
        assert_eq!(out.code, Some(135), "{out:?}");
        assert_eq!(out.stderr, "Connection error: Not authorized\n");
        let out = run(tool, &args(&["-V", "5", "--quiet"]), None);
        assert_eq!((out.code, out.stderr.as_str()), (Some(135), ""));
    }
    if !have_passwd {
        culex_test_support::peer_missing("mosquitto_passwd is not installed (the -u/-P part)");
        return;
    }
    let out = run(
        "pub",
        &[
            "-p", &port, "-t", "x", "-m", "y", "-u", "alice", "-P", "wrong",
        ],
        None,
    );
    assert_eq!(out.code, Some(5), "{out:?}");
    let out = run(
        "pub",
        &[
            "-p", &port, "-t", "x", "-m", "y", "-u", "alice", "-P", "wrong", "-V", "5",
        ],
        None,
    );
    // Mosquitto 2.0 answers a wrong password with 135 (Not authorized); others use 134.
    match out.code {
        Some(134) => assert_eq!(out.stderr, "Connection error: Bad User Name or Password\n"),
        Some(135) => assert_eq!(out.stderr, "Connection error: Not authorized\n"),
        _ => panic!("{out:?}"),
    }
    let sub = subscriber(&[
        "-p",
        &port,
        "-u",
        "alice",
        "-P",
        "wonderland",
        "-t",
        "auth",
        "-C",
        "1",
    ]);
    publish(&[
        "-L",
        &format!("mqtt://alice:wonderland@127.0.0.1:{port}/auth"),
        "-m",
        "let in",
    ]);
    assert_eq!(sub.finish().stdout, "let in\n");
}

// ---------------------------------------------------------------------------------------------
// TLS and WebSocket against Mosquitto (Culex's own listeners are tested in tls.rs/websocket.rs)

/// A CA, a server certificate for `localhost` only, and a client certificate, as PEM files.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn new() -> Certs {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |cn: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate().unwrap();
            let pem = params.self_signed(&key).unwrap().pem();
            (pem, Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("clients test CA");
        write("ca.pem", &ca_pem);
        write("other-ca.pem", &ca("unrelated CA").0);
        // Only the name `localhost`: connecting to 127.0.0.1 is a name mismatch.
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        write(
            "server.pem",
            &server.signed_by(&key, &issuer).unwrap().pem(),
        );
        write("server.key", &key.serialize_pem());
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        write(
            "client.pem",
            &client.signed_by(&key, &issuer).unwrap().pem(),
        );
        write("client.key", &key.serialize_pem());
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[test]
fn tls_against_mosquitto() {
    if missing("mosquitto") {
        return;
    }
    let certs = Certs::new();
    let (tls, mtls) = (free_port(), free_port());
    let config = format!(
        "allow_anonymous true\n\
         listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
         listener {mtls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate true\n",
        ca = certs.path("ca.pem"),
        cert = certs.path("server.pem"),
        key = certs.path("server.key"),
    );
    let Some(_mosquitto) = Mosquitto::start(tempfile::tempdir().unwrap(), &config, &[tls, mtls])
    else {
        panic!("mosquitto did not start with TLS listeners");
    };
    let (tls, mtls) = (tls.to_string(), mtls.to_string());
    let ca = certs.path("ca.pem");

    // --cafile: TLS round trip (host name `localhost` matches the certificate).
    let sub = subscriber(&[
        "-h",
        "localhost",
        "-p",
        &tls,
        "--cafile",
        &ca,
        "-t",
        "tls",
        "-C",
        "1",
        "-v",
    ]);
    publish(&[
        "-h",
        "localhost",
        "-p",
        &tls,
        "--cafile",
        &ca,
        "-t",
        "tls",
        "-m",
        "secret",
        "-q",
        "1",
    ]);
    assert_eq!(sub.finish().stdout, "tls secret\n");

    // mqtts:// URL with --cafile.
    let sub = subscriber(&[
        "-L",
        &format!("mqtts://localhost:{tls}/tls-url"),
        "--cafile",
        &ca,
        "-C",
        "1",
    ]);
    publish(&[
        "-L",
        &format!("mqtts://localhost:{tls}/tls-url"),
        "--cafile",
        &ca,
        "-m",
        "url",
    ]);
    assert_eq!(sub.finish().stdout, "url\n");

    // Name mismatch (127.0.0.1 is not in the certificate): refused, unless --insecure.
    let out = run(
        "pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &tls,
            "--cafile",
            &ca,
            "-t",
            "x",
            "-m",
            "y",
        ],
        None,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.starts_with("Error: TLS error: handshake failed"),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    let out = run(
        "pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &tls,
            "--cafile",
            &ca,
            "--insecure",
            "-t",
            "x",
            "-m",
            "y",
        ],
        None,
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("Warning: --insecure"), "{out:?}");

    // A CA that did not sign the server certificate: refused even with --insecure.
    let other = certs.path("other-ca.pem");
    let out = run(
        "pub",
        &[
            "-h",
            "localhost",
            "-p",
            &tls,
            "--cafile",
            &other,
            "--insecure",
            "-t",
            "x",
            "-m",
            "y",
        ],
        None,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("TLS error"), "{out:?}");
    // A missing CA file is a one-line error too.
    let out = run(
        "pub",
        &[
            "-p",
            &tls,
            "--cafile",
            "/nonexistent/ca.pem",
            "-t",
            "x",
            "-m",
            "y",
        ],
        None,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("/nonexistent/ca.pem"), "{out:?}");

    // Client certificates: required by the second listener.
    let (cert, key) = (certs.path("client.pem"), certs.path("client.key"));
    publish(&[
        "-h",
        "localhost",
        "-p",
        &mtls,
        "--cafile",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "-t",
        "m",
        "-m",
        "y",
    ]);
    let out = run(
        "pub",
        &[
            "-h",
            "localhost",
            "-p",
            &mtls,
            "--cafile",
            &ca,
            "-t",
            "m",
            "-m",
            "y",
            "-q",
            "1",
        ],
        None,
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

/// A broker with a plain WebSocket listener and a WebSocket-over-TLS listener: Mosquitto when it
/// was built with WebSocket support, otherwise Culex with the same mosquitto.conf.
/// Culex with a plain and a TLS WebSocket listener on ports it picks itself (read from its
/// log, so no other test can take them in between). Debian's mosquitto 2.0.11 is built
/// without WebSocket support, so Culex is the broker here.
struct WsBroker {
    _proc: Proc,
    _dir: TempDir,
    ws: u16,
    wss: u16,
}

fn ws_broker(certs: &Certs) -> WsBroker {
    let config = format!(
        "allow_anonymous true\n\
         listener 0 127.0.0.1\nprotocol websockets\n\
         listener 0 127.0.0.1\nprotocol websockets\ncertfile {cert}\nkeyfile {key}\n",
        cert = certs.path("server.pem"),
        key = certs.path("server.key"),
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("culex.conf");
    std::fs::write(&conf, &config).unwrap();
    let mut cmd = culex();
    cmd.arg("-c").arg(&conf);
    let mut proc = Proc::spawn(cmd, None);
    let port_of = |log: &str, kind: &str| -> Option<u16> {
        log.lines()
            .find(|l| l.contains("listening on 127.0.0.1:") && l.contains(&format!("({kind})")))
            .and_then(|l| l.split("listening on 127.0.0.1:").nth(1))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|p| p.parse().ok())
    };
    proc.wait_for("WebSocket listeners", |_, err| {
        port_of(err, "websockets").is_some() && port_of(err, "websockets+tls").is_some()
    });
    let err = proc.stderr();
    let (Some(ws), Some(wss)) = (port_of(&err, "websockets"), port_of(&err, "websockets+tls"))
    else {
        panic!("no WebSocket ports in the log:\n{err}");
    };
    WsBroker {
        _proc: proc,
        _dir: dir,
        ws,
        wss,
    }
}

#[test]
fn websocket_transport() {
    let certs = Certs::new();
    let broker = ws_broker(&certs);
    let (ws, wss) = (broker.ws, broker.wss);
    let (ws, wss) = (ws.to_string(), wss.to_string());
    let ca = certs.path("ca.pem");

    // --ws, plain.
    let sub = subscriber(&[
        "-h",
        "127.0.0.1",
        "-p",
        &ws,
        "--ws",
        "-t",
        "ws/#",
        "-C",
        "2",
        "-v",
        "-q",
        "1",
    ]);
    publish(&[
        "-h",
        "127.0.0.1",
        "-p",
        &ws,
        "--ws",
        "-t",
        "ws/plain",
        "-m",
        "over websocket",
        "-q",
        "1",
    ]);
    // ws:// URL, MQTT 5, with an explicit --ws-path.
    publish(&[
        "-L",
        &format!("ws://127.0.0.1:{ws}/ws/url"),
        "-V",
        "5",
        "--ws-path",
        "/mqtt",
        "-m",
        "by url",
    ]);
    assert_eq!(
        sub.finish().stdout,
        "ws/plain over websocket\nws/url by url\n"
    );

    // wss: --ws with TLS, and a wss:// URL.
    let sub = subscriber(&[
        "-h",
        "localhost",
        "-p",
        &wss,
        "--ws",
        "--cafile",
        &ca,
        "-t",
        "wss",
        "-C",
        "2",
    ]);
    publish(&[
        "-h",
        "localhost",
        "-p",
        &wss,
        "--ws",
        "--cafile",
        &ca,
        "-t",
        "wss",
        "-m",
        "one",
        "-q",
        "2",
    ]);
    publish(&[
        "-L",
        &format!("wss://localhost:{wss}/wss"),
        "--cafile",
        &ca,
        "-m",
        "two",
    ]);
    assert_eq!(sub.finish().stdout, "one\ntwo\n");

    // Talking WebSocket to a plain MQTT port fails cleanly.
    let plain = Culex::start();
    let out = run(
        "pub",
        &["-p", &plain.port(), "--ws", "-t", "x", "-m", "y"],
        None,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.starts_with("Error: WebSocket error"), "{out:?}");
    drop(plain);
}

#[test]
fn signals_end_sub_cleanly() {
    let broker = Culex::start();
    let port = broker.port();
    let sub = subscriber(&["-p", &port, "-t", "sig"]);
    let status = Command::new("kill")
        .args(["-TERM", &sub.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = sub.finish();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("sending DISCONNECT"), "{out:?}");
    drop(broker);
}
