//! `culex-bench`: a load generator for MQTT brokers.
//!
//! Speaks MQTT through the workspace codec (`culex-proto`) over plain tokio TCP, with no client
//! library in between, so that the generator costs as little CPU as possible. Scenarios:
//!
//! * `pubsub`: N publishers → one topic → M subscribers (point-to-point, fan-in, fan-out,
//!   shared subscription), QoS 0/1/2, any payload size; closed-loop saturation (bounded
//!   in-flight per publisher) or open-loop fixed rate (`--rate`), with an HDR histogram of
//!   publish → deliver latency and loss / duplicate / order checks.
//! * `connections`: open N connections as fast as possible (connection rate), hold them idle and
//!   read the broker's RSS per connection from `/proc`.
//! * `logins`: valid logins and a connected client's round trips during a wrong-password storm,
//!   then known vs unknown user timing.
//!
//! Every run is bounded (`--duration`, `--count`) and prints one JSON object. With
//! `--broker-pid` the broker's CPU time (`/proc/PID/stat`) and RSS (`/proc/PID/status`) are
//! sampled at the edges of the measured window.

mod conns;
mod load;
mod logins;
mod procfs;
mod report;
mod wire;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use culex_proto::{Protocol, QoS};

/// Load generator for MQTT brokers (loopback benchmarks). Prints one JSON report.
#[derive(Debug, Parser)]
#[command(name = "culex-bench", version, about)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Args)]
struct Common {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1", global = true)]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883, global = true)]
    port: u16,
    /// MQTT version of every client.
    #[arg(long = "mqtt", value_enum, default_value_t = Version::V311, global = true)]
    version: Version,
    /// PID of the broker: sample its CPU time and RSS from /proc.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Worker threads of the generator (default: the CPUs it may run on).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Free-form label copied into the report (e.g. the broker's name).
    #[arg(long, global = true)]
    label: Option<String>,
    /// Write the JSON report to this file instead of stdout.
    #[arg(long, short = 'o', global = true)]
    output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Version {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1")]
    V311,
    /// MQTT 5.0.
    #[value(name = "5")]
    V5,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Publishers → one topic → subscribers: throughput, latency, loss/duplicate/order checks.
    Pubsub(PubsubArgs),
    /// Connection rate and broker memory per idle connection.
    Connections(ConnArgs),
    /// Valid logins and a connected client during a wrong-password storm; known vs unknown
    /// user timing afterwards.
    Logins(LoginArgs),
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// A user in the broker's password file.
    #[arg(long)]
    user: String,
    /// Its password.
    #[arg(long)]
    password: String,
    /// A user name that is not in the file.
    #[arg(long, default_value = "no-such-user")]
    unknown_user: String,
    /// Clients sending wrong passwords as fast as they are answered.
    #[arg(long, default_value_t = 40)]
    storm: u32,
    /// Where the storm comes from (another loopback address).
    #[arg(long, default_value = "127.0.0.2")]
    storm_source: std::net::IpAddr,
    /// Where the timing probes come from (this address and the ones after it).
    #[arg(long, default_value = "127.0.1.1")]
    probe_source: std::net::IpAddr,
    /// Length of the storm, seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Pause between valid logins, milliseconds.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Wait after the storm before the timing probes, seconds.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Known/unknown pairs timed after the storm.
    #[arg(long, default_value_t = 150)]
    probes: u32,
}

#[derive(Debug, Args)]
struct PubsubArgs {
    /// Publishers (fan-in: N publishers, 1 subscriber).
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    /// Subscribers (fan-out: 1 publisher, N subscribers).
    #[arg(long, default_value_t = 1)]
    subscribers: u32,
    /// QoS of the PUBLISHes (0, 1 or 2).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// QoS of the subscriptions (default: the publish QoS).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    sub_qos: Option<u8>,
    /// Payload size in bytes (at least 20: sequence, timestamp, publisher index).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Subscribers share one subscription (`$share/bench/TOPIC`): each message goes to one.
    #[arg(long)]
    shared: bool,
    /// Open loop: total publish rate in messages/s over all publishers. Without it: closed-loop
    /// saturation.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop: messages each publisher keeps in flight end to end (and unacknowledged).
    #[arg(long, default_value_t = 200)]
    window: u32,
    /// Warm-up before the measured window, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop each publisher after this many messages (the window ends early when all stopped).
    #[arg(long)]
    count: Option<u64>,
    /// Longest wait for outstanding deliveries after publishing stopped, seconds.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Closed loop: when no subscriber has received anything for this long (ms), the messages
    /// in flight are presumed lost and the windows reset.
    #[arg(long, default_value_t = 250)]
    stall_ms: u64,
    /// Topic to publish to (default: a fresh one per run).
    #[arg(long)]
    topic: Option<String>,
    /// Subscribers connect to this port instead of `--port`: another broker that gets the
    /// messages over a bridge or a cluster (which must keep the topic). Repeat it, or give a
    /// comma-separated list, to spread the subscribers over several brokers in turn.
    #[arg(long, value_delimiter = ',')]
    sub_port: Vec<u16>,
}

#[derive(Debug, Args)]
struct ConnArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Keep alive in CONNECT, seconds.
    #[arg(long, default_value_t = 300)]
    keep_alive: u16,
    /// Idle time before the broker's RSS is read, seconds.
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("culex-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let c = &cli.common;
    let addr = resolve(&c.host, c.port)?;
    let protocol = match c.version {
        Version::V311 => Protocol::V311,
        Version::V5 => Protocol::V5,
    };
    let threads = c.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or_default();
    let prefix = format!("cb{run_id}");

    let (scenario, report) = match &cli.scenario {
        Scenario::Pubsub(a) => {
            let qos = qos(a.qos)?;
            let sub_addrs = if a.sub_port.is_empty() {
                vec![addr]
            } else {
                a.sub_port
                    .iter()
                    .map(|p| resolve(&c.host, *p))
                    .collect::<Result<Vec<_>>>()?
            };
            let opts = load::LoadOpts {
                addr,
                sub_addrs,
                protocol,
                publishers: a.publishers,
                subscribers: a.subscribers,
                qos,
                sub_qos: a.sub_qos.map(self::qos).transpose()?.unwrap_or(qos),
                payload: a.payload,
                shared: a.shared,
                rate: a.rate,
                window: a.window,
                warmup: secs(a.warmup)?,
                duration: secs(a.duration)?,
                count: a.count,
                drain: secs(a.drain)?,
                stall: Duration::from_millis(a.stall_ms),
                broker_pid: c.broker_pid,
                topic: a
                    .topic
                    .clone()
                    .unwrap_or_else(|| format!("culex-bench/{run_id}")),
                client_prefix: prefix,
            };
            if let Some(r) = opts.rate {
                if !(r.is_finite() && r > 0.0) {
                    bail!("--rate must be a positive number");
                }
            }
            let report = runtime.block_on(load::run(opts))?;
            ("pubsub", serde_json::to_value(report)?)
        }
        Scenario::Connections(a) => {
            let opts = conns::ConnOpts {
                addr,
                protocol,
                count: a.count,
                concurrency: a.concurrency,
                keep_alive: a.keep_alive,
                hold: secs(a.hold)?,
                broker_pid: c.broker_pid,
                client_prefix: prefix,
            };
            let report = runtime.block_on(conns::run(opts))?;
            ("connections", serde_json::to_value(report)?)
        }
        Scenario::Logins(a) => {
            let opts = logins::LoginOpts {
                addr,
                protocol,
                user: a.user.clone(),
                password: a.password.clone(),
                unknown_user: a.unknown_user.clone(),
                storm: a.storm,
                storm_source: SocketAddr::new(a.storm_source, 0),
                probe_source: SocketAddr::new(a.probe_source, 0),
                duration: secs(a.duration)?,
                interval: Duration::from_millis(a.interval_ms),
                settle: secs(a.settle)?,
                probes: a.probes,
                client_prefix: prefix,
            };
            let report = runtime.block_on(logins::run(opts))?;
            ("logins", serde_json::to_value(report)?)
        }
    };
    let out = serde_json::json!({
        "tool": "culex-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "scenario": scenario,
        "label": c.label,
        "broker": addr.to_string(),
        "mqtt": match protocol { Protocol::V5 => "5", _ => "3.1.1" },
        "generator_threads": threads,
        "result": report,
    });
    let text = serde_json::to_string_pretty(&out)?;
    match &c.output {
        Some(path) => std::fs::write(path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    // Sockets are closed; do not wait for blocked tasks.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

fn qos(v: u8) -> Result<QoS> {
    QoS::from_u8(v).ok_or_else(|| anyhow!("QoS must be 0, 1 or 2"))
}

fn secs(v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| anyhow!("invalid duration {v}"))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host}: no address"))
}
