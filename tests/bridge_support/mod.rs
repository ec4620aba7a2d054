//! The harness shared by the bridge tests that run real processes: `culex` from
//! `CARGO_BIN_EXE_culex` (mosquitto.conf or TOML written to a temp dir, port 0, the port read
//! from the log), Debian's `mosquitto` as a remote (plain or TLS, with its full packet log), an
//! independent MQTT client (rumqttc) and the metrics endpoint.
#![allow(dead_code)] // each test file uses a part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use tempfile::TempDir;

/// Generous: a busy 2-core machine.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) fn free_port() -> u16 {
    culex_test_support::free_port().expect("bind")
}

pub(crate) fn culex() -> Command {
    let mut cmd = culex_test_support::culex_command(env!("CARGO_BIN_EXE_culex"));
    cmd.stdin(Stdio::null());
    cmd
}

/// A `mosquitto` process on 127.0.0.1 with persistence (so sessions survive a restart).
pub(crate) struct Mosquitto {
    pub(crate) port: u16,
    pub(crate) dir: TempDir,
    pub(crate) child: Option<Child>,
}

impl Mosquitto {
    pub(crate) fn start() -> Mosquitto {
        Mosquitto::start_with("allow_anonymous true\n", "")
    }

    /// A mosquitto whose listener has the `listener_options` (e.g. TLS files) and whose
    /// general section adds `general` (e.g. `allow_anonymous false`, a password file). Its log
    /// has every packet (`log_type all`), with timestamps.
    pub(crate) fn start_with(general: &str, listener_options: &str) -> Mosquitto {
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let conf = format!(
            "user root\npersistence true\n\
             persistence_location {}/\nlog_dest file {}/mosquitto.log\nlog_type all\n\
             {general}listener {port} 127.0.0.1\n{listener_options}",
            dir.path().display(),
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.restart();
        m
    }

    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` (e.g. `STOP`, `CONT`) to the process.
    pub(crate) fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `culex` process whose stderr is collected; killed on drop.
pub(crate) struct Culex {
    pub(crate) child: Child,
    pub(crate) lines: Receiver<String>,
    pub(crate) log: Arc<Mutex<Vec<String>>>,
    pub(crate) path: PathBuf,
    pub(crate) _dir: TempDir,
}

impl Culex {
    /// Starts `culex -c FILE` with `conf` (mosquitto.conf syntax) written to FILE.
    pub(crate) fn start(conf: &str) -> Culex {
        Culex::start_file("culex.conf", conf)
    }

    /// Starts `culex -c NAME` with `conf` written to NAME (`.toml`: TOML syntax).
    pub(crate) fn start_file(name: &str, conf: &str) -> Culex {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, conf).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (child, lines) = Culex::spawn(&path, &log);
        Culex {
            child,
            lines,
            log,
            path,
            _dir: dir,
        }
    }

    pub(crate) fn spawn(path: &Path, log: &Arc<Mutex<Vec<String>>>) -> (Child, Receiver<String>) {
        let mut child = culex()
            .arg("-c")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn culex");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let log2 = Arc::clone(log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        (child, lines)
    }

    /// SIGKILL (a crash: nothing is flushed or said goodbye), then the same command again;
    /// waits until the new process listens.
    pub(crate) fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log
            .lock()
            .unwrap()
            .push("---- killed, restarting ----".into());
        let (child, lines) = Culex::spawn(&self.path, &self.log);
        self.child = child;
        self.lines = lines;
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub(crate) fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("no log line containing {needle:?}; log:\n{}", self.log())
                }
            }
        }
    }

    /// Waits until any line logged so far contains `needle` (regardless of what
    /// `wait_for_line` consumed).
    pub(crate) fn wait_in_log(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?}; log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port in the first `NEEDLE127.0.0.1:PORT` line.
    pub(crate) fn port_after(&self, needle: &str) -> u16 {
        let line = self.wait_for_line(needle);
        let rest = &line[line.find(needle).unwrap() + needle.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Culex {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An MQTT client (rumqttc) whose event loop runs in a thread; publications and acks arrive
/// on channels. The loop reconnects by itself after errors.
pub(crate) struct Mqtt {
    pub(crate) client: Client,
    pub(crate) messages: Receiver<rumqttc::Publish>,
    pub(crate) subacks: Receiver<()>,
    pub(crate) connacks: Receiver<bool>,
    /// The first CONNACK's session present flag.
    pub(crate) session_present: bool,
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Mqtt {
    pub(crate) fn connect(port: u16, id: &str, clean: bool) -> Mqtt {
        Mqtt::connect_as(port, id, clean, None)
    }

    /// [`Mqtt::connect`] with a user name and password.
    pub(crate) fn connect_as(
        port: u16,
        id: &str,
        clean: bool,
        login: Option<(&str, &str)>,
    ) -> Mqtt {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(clean);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        let (client, mut connection) = Client::new(opts, 100);
        let (mtx, messages) = mpsc::channel();
        let (stx, subacks) = mpsc::channel();
        let (ctx, connacks) = mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        thread::spawn(move || {
            for event in connection.iter() {
                // Once dropped, the client must not reconnect (it would take its session over
                // from a newer client with the same id).
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if mtx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = stx.send(());
                    }
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        let _ = ctx.send(a.session_present);
                    }
                    // Asked to disconnect: done (what came before it was passed on).
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => return,
                    Err(_) => thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        let session_present = connacks.recv_timeout(TIMEOUT).expect("CONNACK");
        Mqtt {
            client,
            messages,
            subacks,
            connacks,
            session_present,
            stop,
        }
    }

    pub(crate) fn subscribe(&self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).unwrap();
        self.subacks.recv_timeout(TIMEOUT).expect("SUBACK");
    }

    pub(crate) fn publish(&self, topic: &str, payload: &str, qos: QoS) {
        self.client
            .publish(topic, qos, false, payload.as_bytes().to_vec())
            .unwrap();
    }

    /// Disconnects, and returns every message received before (the client acknowledged
    /// them: dropped with it, they would be lost to the test, not by the broker).
    pub(crate) fn close(&self) -> Vec<rumqttc::Publish> {
        let _ = self.client.disconnect();
        let mut out = Vec::new();
        loop {
            match self.messages.recv_timeout(TIMEOUT) {
                Ok(p) => out.push(p),
                Err(RecvTimeoutError::Disconnected) => return out,
                Err(RecvTimeoutError::Timeout) => panic!("the client did not disconnect"),
            }
        }
    }

    pub(crate) fn recv(&self) -> rumqttc::Publish {
        self.messages
            .recv_timeout(TIMEOUT)
            .expect("no message within the timeout")
    }

    /// Waits for a message on `topic` with `payload` (skipping others, e.g. older retained
    /// notification states).
    pub(crate) fn recv_matching(&self, topic: &str, payload: &str) -> rumqttc::Publish {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(p) if p.topic == topic && p.payload[..] == *payload.as_bytes() => return p,
                Ok(_) => {}
                Err(_) => panic!("no message {payload:?} on {topic:?}"),
            }
        }
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.client.disconnect();
    }
}

pub(crate) fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of the sample line starting with `series` (name and labels, exactly).
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}
