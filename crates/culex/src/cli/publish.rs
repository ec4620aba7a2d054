//! `culex pub`: publish messages, with the flags of `mosquitto_pub`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use culex_client::{Connection, Message};
use culex_proto::ReasonCode;

use crate::cli;
use crate::cli::common::{
    os_bytes, tool_main, Args, Common, Failure, Parsed, UsageError, EXIT_ERROR,
};

/// Where the payload comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Message(Vec<u8>),
    File(PathBuf),
    Null,
    StdinLines,
    StdinWhole,
}

#[derive(Debug)]
struct PubOptions {
    common: Common,
    topic: String,
    source: Source,
    retain: bool,
    repeat: u32,
    repeat_delay: Duration,
    max_inflight: u16,
}

fn parse(args: &[OsString]) -> Result<Parsed<PubOptions>, UsageError> {
    let mut a = Args::new(args, &cli::PUB);
    let mut common = Common::default();
    let mut source = None;
    let mut retain = false;
    let mut repeat = 1u32;
    let mut repeat_delay = Duration::ZERO;
    let mut max_inflight = 20u16;
    let set_source = |s: Source, source: &mut Option<Source>| {
        if source.is_some() {
            return Err(UsageError(
                "Only one type of message can be sent at once.".into(),
            ));
        }
        *source = Some(s);
        Ok(())
    };
    while let Some(flag) = a.next_flag() {
        let flag = flag?;
        if common.parse(flag, &mut a)? {
            continue;
        }
        match flag {
            "--help" => return Ok(Parsed::Help),
            "-m" | "--message" => {
                let m = os_bytes(a.value_os(flag)?);
                set_source(Source::Message(m), &mut source)?;
            }
            "-f" | "--file" => {
                let f = a.value(flag)?;
                set_source(Source::File(f.into()), &mut source)?;
            }
            "-n" | "--null-message" => set_source(Source::Null, &mut source)?,
            "-l" | "--stdin-line" => set_source(Source::StdinLines, &mut source)?,
            "-s" | "--stdin-file" => set_source(Source::StdinWhole, &mut source)?,
            "-r" | "--retain" => retain = true,
            "--repeat" => {
                let v = a.value(flag)?;
                repeat = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| UsageError(format!("Invalid repeat count given: {v}")))?;
            }
            "--repeat-delay" => {
                let v = a.value(flag)?;
                repeat_delay = v
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| UsageError(format!("Invalid repeat delay given: {v}")))?;
            }
            "-M" => {
                let v = a.value(flag)?;
                max_inflight = v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| UsageError(format!("Invalid max inflight given: {v}")))?;
            }
            other => return Err(UsageError(format!("Unknown option '{other}'."))),
        }
    }
    common.validate()?;
    let topic = match (common.topics.as_slice(), &common.url_topic) {
        ([t], None) | ([], Some(t)) => t.clone(),
        ([], None) => {
            return Err(UsageError(
                "Both topic and message must be supplied.".into(),
            ))
        }
        _ => {
            return Err(UsageError(
                "Only one topic can be given (-t or in the -L URL).".into(),
            ))
        }
    };
    culex_proto::topic::validate_topic_name(&topic).map_err(|_| {
        UsageError(format!(
            "Invalid publish topic '{topic}', does it contain '+' or '#'?"
        ))
    })?;
    let source =
        source.ok_or_else(|| UsageError("Both topic and message must be supplied.".into()))?;
    if repeat > 1 && source == Source::StdinLines {
        return Err(UsageError("--repeat cannot be used with -l.".into()));
    }
    Ok(Parsed::Run(PubOptions {
        common,
        topic,
        source,
        retain,
        repeat,
        repeat_delay,
        max_inflight,
    }))
}

/// Runs `culex pub` with the arguments after the subcommand name.
pub fn main(args: &[OsString]) -> ExitCode {
    tool_main(&cli::PUB, parse(args), |o: &PubOptions| &o.common, run)
}

async fn run(opts: PubOptions) -> Result<(), Failure> {
    // Read a file or stdin before connecting, so a bad file costs no connection.
    let payload = match &opts.source {
        Source::Message(m) => Some(Bytes::from(m.clone())),
        Source::Null => Some(Bytes::new()),
        Source::File(path) => Some(Bytes::from(std::fs::read(path).map_err(|e| Failure {
            message: format!("Error: Unable to read file \"{}\": {e}.", path.display()),
            code: EXIT_ERROR,
            refused: false,
        })?)),
        Source::StdinWhole => {
            use std::io::Read;
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .map_err(|e| Failure {
                    message: format!("Error: Unable to read stdin: {e}."),
                    code: EXIT_ERROR,
                    refused: false,
                })?;
            Some(Bytes::from(buf))
        }
        Source::StdinLines => None,
    };
    let mut conn = opts.common.connect("pub").await?;
    let result = match payload {
        Some(payload) => publish_repeated(&mut conn, &opts, payload).await,
        None => publish_lines(&mut conn, &opts).await,
    };
    let failed = match result {
        Ok(failed) => failed,
        Err(e) => return Err(e.into()),
    };
    conn.disconnect().await?;
    match failed {
        None => Ok(()),
        Some((id, rc)) => Err(Failure {
            message: format!(
                "Warning: Publish {id} failed: {}.",
                culex_client::connack_text(rc, culex_proto::Protocol::V5)
            ),
            code: EXIT_ERROR,
            refused: false,
        }),
    }
}

fn message(opts: &PubOptions, payload: Bytes) -> Message {
    Message::new(opts.topic.clone(), payload, opts.common.qos).retained(opts.retain)
}

/// The first publication the server refused (MQTT 5 reason codes of 0x80 and above).
fn first_failure(done: &[(u16, ReasonCode)]) -> Option<(u16, ReasonCode)> {
    done.iter().copied().find(|(_, rc)| rc.is_error())
}

/// `-m`, `-f`, `-n`, `-s`, with `--repeat` and `--repeat-delay`.
async fn publish_repeated(
    conn: &mut Connection,
    opts: &PubOptions,
    payload: Bytes,
) -> Result<Option<(u16, ReasonCode)>, culex_client::ClientError> {
    for i in 0..opts.repeat {
        if i > 0 && !opts.repeat_delay.is_zero() {
            // Keep the connection serviced (acks, pings) while waiting.
            service_for(conn, opts.repeat_delay).await?;
        }
        while conn.session().pending_publishes() >= usize::from(opts.max_inflight) {
            conn.progress().await?;
        }
        conn.start_publish(message(opts, payload.clone()))?;
        conn.flush().await?;
    }
    let done = conn.wait_idle().await?;
    Ok(first_failure(&done))
}

/// Keeps the connection serviced (acknowledgements, keepalive) for `duration`.
async fn service_for(
    conn: &mut Connection,
    duration: Duration,
) -> Result<(), culex_client::ClientError> {
    // Too far for the clock: as good as forever.
    let Some(deadline) = tokio::time::Instant::now().checked_add(duration) else {
        loop {
            conn.progress().await?;
        }
    };
    loop {
        match tokio::time::timeout_at(deadline, conn.progress()).await {
            Err(_elapsed) => return Ok(()),
            Ok(r) => r?,
        }
    }
}

/// `-l`: one message per line of stdin (without its newline), until end of input.
async fn publish_lines(
    conn: &mut Connection,
    opts: &PubOptions,
) -> Result<Option<(u16, ReasonCode)>, culex_client::ClientError> {
    // Stdin is read by a plain thread (blocking reads) that hands lines over a small channel;
    // the connection is serviced (acks, keepalive) while stdin is quiet.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(16);
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    loop {
        while conn.session().pending_publishes() >= usize::from(opts.max_inflight) {
            conn.progress().await?;
        }
        tokio::select! {
            line = rx.recv() => match line {
                None => break,
                Some(line) => {
                    conn.start_publish(message(opts, Bytes::from(line?)))?;
                    conn.flush().await?;
                }
            },
            r = conn.progress() => r?,
        }
    }
    let done = conn.wait_idle().await?;
    Ok(first_failure(&done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<PubOptions, String> {
        let os: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(&os) {
            Ok(Parsed::Run(o)) => Ok(o),
            Ok(Parsed::Help) => Err("help".into()),
            Err(e) => Err(e.0),
        }
    }

    #[test]
    fn parser_follows_the_table() {
        crate::cli::common::assert_parser_follows_table(
            &cli::PUB,
            |args| match parse(args) {
                Ok(parsed) => Ok(matches!(parsed, Parsed::Help)),
                Err(e) => Err(e.0),
            },
            "Unknown option '{}'.",
        );
    }

    #[test]
    fn sources_and_errors() {
        assert_eq!(
            p(&["-t", "a", "-m", "x"]).unwrap().source,
            Source::Message(b"x".to_vec())
        );
        assert_eq!(p(&["-t", "a", "-n"]).unwrap().source, Source::Null);
        assert_eq!(p(&["-t", "a", "-l"]).unwrap().source, Source::StdinLines);
        assert_eq!(p(&["-t", "a", "-s"]).unwrap().source, Source::StdinWhole);
        assert!(p(&["-t", "a", "-m", "x", "-n"])
            .unwrap_err()
            .contains("Only one type"));
        assert!(p(&["-t", "a"])
            .unwrap_err()
            .contains("Both topic and message"));
        assert!(p(&["-m", "x"])
            .unwrap_err()
            .contains("Both topic and message"));
        assert!(p(&["-t", "a/#", "-m", "x"])
            .unwrap_err()
            .contains("Invalid publish topic"));
        assert!(p(&["-t", "a", "-m", "x", "-z"])
            .unwrap_err()
            .contains("Unknown option"));
        assert!(p(&["-t", "a", "-m", "x", "--repeat", "0"]).is_err());
        assert_eq!(p(&["--help"]).unwrap_err(), "help");
        let o = p(&[
            "-L",
            "mqtt://h:1/x/y",
            "-m",
            "m",
            "--repeat",
            "3",
            "--repeat-delay",
            "0.5",
        ])
        .unwrap();
        assert_eq!(o.topic, "x/y");
        assert_eq!((o.repeat, o.repeat_delay), (3, Duration::from_millis(500)));
    }
}
