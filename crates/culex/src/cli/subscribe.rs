//! `culex sub`: subscribe and print messages, with the flags of `mosquitto_sub`.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use culex_client::transport;
use culex_client::{Backoff, ClientError, Connection, Message};
use culex_proto::{Properties, Publish, QoS, SubscribeFilter, SubscriptionOptions};

use crate::cli;
use crate::cli::common::{
    tool_main, Args, Common, Failure, Parsed, UsageError, EXIT_ERROR, EXIT_TIMEOUT,
};

#[derive(Debug)]
struct SubOptions {
    common: Common,
    filters: Vec<String>,
    count: Option<u64>,
    timeout: Option<Duration>,
    verbose: bool,
    format: Option<Vec<Token>>,
    no_retain: bool,
    retained_only: bool,
    remove_retained: bool,
    eol: bool,
    filter_out: Vec<String>,
    unsubscribe: Vec<String>,
    exit_after_sub: bool,
    reconnect: bool,
}

fn parse(args: &[OsString]) -> Result<Parsed<SubOptions>, UsageError> {
    let mut a = Args::new(args, &cli::SUB);
    let mut o = SubOptions {
        common: Common::default(),
        filters: Vec::new(),
        count: None,
        timeout: None,
        verbose: false,
        format: None,
        no_retain: false,
        retained_only: false,
        remove_retained: false,
        eol: true,
        filter_out: Vec::new(),
        unsubscribe: Vec::new(),
        exit_after_sub: false,
        reconnect: false,
    };
    while let Some(flag) = a.next_flag() {
        let flag = flag?;
        if o.common.parse(flag, &mut a)? {
            continue;
        }
        match flag {
            "--help" => return Ok(Parsed::Help),
            "-C" => {
                let v = a.value(flag)?;
                o.count = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| UsageError(format!("Invalid message count given: {v}")))?,
                );
            }
            "-W" => {
                let v = a.value(flag)?;
                let secs = v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=3600).contains(n))
                    .ok_or_else(|| {
                        UsageError(format!(
                            "Invalid timeout given: {v} (it must be between 1 and 3600 seconds)"
                        ))
                    })?;
                o.timeout = Some(Duration::from_secs(secs));
            }
            "-v" | "--verbose" => o.verbose = true,
            "-F" => o.format = Some(parse_format(a.value(flag)?)),
            "-R" | "--no-retain" => o.no_retain = true,
            "--retained-only" => o.retained_only = true,
            "--remove-retained" => o.remove_retained = true,
            "-N" => o.eol = false,
            "-T" | "--filter-out" => {
                let f = a.value(flag)?;
                culex_proto::topic::validate_topic_filter(f).map_err(|_| {
                    UsageError(format!(
                        "Invalid filter topic '{f}', are all '+' and '#' wildcards correct?"
                    ))
                })?;
                o.filter_out.push(f.to_string());
            }
            "-U" | "--unsubscribe" => {
                let f = a.value(flag)?;
                culex_proto::topic::validate_topic_filter(f).map_err(|_| {
                    UsageError(format!(
                        "Invalid unsubscribe topic '{f}', are all '+' and '#' wildcards correct?"
                    ))
                })?;
                o.unsubscribe.push(f.to_string());
            }
            "-E" => o.exit_after_sub = true,
            "--reconnect" => o.reconnect = true,
            other => return Err(UsageError(format!("Unknown option '{other}'."))),
        }
    }
    o.common.validate()?;
    o.filters = o.common.topics.clone();
    if let Some(t) = &o.common.url_topic {
        o.filters.push(t.clone());
    }
    if o.filters.is_empty() && o.unsubscribe.is_empty() {
        return Err(UsageError(
            "You must specify a topic to subscribe to (-t or -L).".into(),
        ));
    }
    for f in &o.filters {
        culex_proto::topic::validate_topic_filter(f).map_err(|_| {
            UsageError(format!(
                "Invalid subscription topic '{f}', are all '+' and '#' wildcards correct?"
            ))
        })?;
    }
    Ok(Parsed::Run(o))
}

/// Runs `culex sub` with the arguments after the subcommand name.
pub fn main(args: &[OsString]) -> ExitCode {
    tool_main(&cli::SUB, parse(args), |o: &SubOptions| &o.common, run)
}

async fn run(opts: SubOptions) -> Result<(), Failure> {
    let mut stop = std::pin::pin!(stop_signal());
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let transport = opts.common.transport();
    let mut deadline: Option<tokio::time::Instant> = None;

    // First connection: with --reconnect, an unreachable broker is retried.
    let mut conn = loop {
        match opts.common.connect("sub").await {
            Ok(c) => break c,
            Err(f) if opts.reconnect && !f.refused => {
                let delay = backoff.next_random();
                if !opts.common.quiet {
                    eprintln!("{}; retrying in {:.1} s", f.message, delay.as_secs_f64());
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut stop => return Ok(()),
                }
            }
            Err(f) => return Err(f),
        }
    };
    backoff.reset();
    if let Some(t) = opts.timeout {
        // Too far for the clock: no deadline (never a panic on a large -W).
        deadline = tokio::time::Instant::now().checked_add(t);
    }
    setup(&mut conn, &opts).await?;
    if opts.exit_after_sub {
        conn.disconnect().await?;
        return Ok(());
    }

    let mut state = PrintState { received: 0 };
    loop {
        let next = tokio::select! {
            r = conn.recv() => r,
            () = sleep_until(deadline) => {
                let _ = conn.disconnect().await;
                return Err(Failure { message: "Timed out".into(), code: EXIT_TIMEOUT, refused: false });
            }
            () = &mut stop => {
                let _ = conn.disconnect().await;
                return Ok(());
            }
        };
        let err = match next {
            Ok(msg) => match handle_message(&mut conn, &opts, &mut state, &msg) {
                Ok(Action::Continue) => continue,
                Ok(Action::Exit) => {
                    conn.wait_idle().await?;
                    conn.disconnect().await?;
                    return Ok(());
                }
                Err(f) => return Err(f),
            },
            Err(e) => e,
        };
        if !opts.reconnect || matches!(err, ClientError::Refused { .. }) {
            return Err(err.into());
        }
        // Reconnect with backoff until it works, the deadline passes or we are stopped.
        loop {
            let delay = backoff.next_random();
            if !opts.common.quiet {
                eprintln!(
                    "Connection lost ({err}); reconnecting in {:.1} s",
                    delay.as_secs_f64()
                );
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = sleep_until(deadline) => {
                    return Err(Failure { message: "Timed out".into(), code: EXIT_TIMEOUT, refused: false });
                }
                () = &mut stop => return Ok(()),
            }
            match reconnect(&mut conn, &transport).await {
                Ok(()) => break,
                Err(ClientError::Refused { reason, protocol }) => {
                    return Err(ClientError::Refused { reason, protocol }.into())
                }
                Err(e) => {
                    if !opts.common.quiet {
                        eprintln!("Error: {e}");
                    }
                }
            }
        }
        backoff.reset();
        if !opts.common.quiet {
            eprintln!("Reconnected.");
        }
        let session_present = conn.connack().is_some_and(|a| a.session_present);
        if !session_present {
            setup(&mut conn, &opts).await?;
        }
    }
}

async fn reconnect(
    conn: &mut Connection,
    transport: &transport::TransportOptions,
) -> Result<(), ClientError> {
    let io = transport::open(transport).await?;
    conn.reconnect(io, transport.connect_timeout).await
}

/// Subscribes to the filters (one SUBSCRIBE) and unsubscribes the `-U` ones.
async fn setup(conn: &mut Connection, opts: &SubOptions) -> Result<(), Failure> {
    if !opts.filters.is_empty() {
        let filters = opts
            .filters
            .iter()
            .map(|f| SubscribeFilter {
                filter: f.clone(),
                options: SubscriptionOptions {
                    qos: opts.common.qos,
                    ..Default::default()
                },
            })
            .collect();
        let ack = conn.subscribe(filters, Properties::default()).await?;
        if opts.common.debug {
            let codes: Vec<String> = ack
                .reason_codes
                .iter()
                .map(|c| c.as_u8().to_string())
                .collect();
            eprintln!("Subscribed (mid: {}): {}", ack.packet_id, codes.join(", "));
        }
        if ack.reason_codes.iter().all(|c| c.is_error()) {
            return Err(Failure {
                message: "All subscription requests were denied.".into(),
                code: EXIT_ERROR,
                refused: false,
            });
        }
        for (f, c) in opts.filters.iter().zip(&ack.reason_codes) {
            if c.is_error() && !opts.common.quiet {
                eprintln!("Warning: subscription to '{f}' was denied.");
            }
        }
    }
    if !opts.unsubscribe.is_empty() {
        let ack = conn.unsubscribe(opts.unsubscribe.clone()).await?;
        if opts.common.debug {
            eprintln!("Unsubscribed (mid: {})", ack.packet_id);
        }
    }
    Ok(())
}

struct PrintState {
    received: u64,
}

enum Action {
    Continue,
    Exit,
}

fn handle_message(
    conn: &mut Connection,
    opts: &SubOptions,
    state: &mut PrintState,
    msg: &Publish,
) -> Result<Action, Failure> {
    if opts
        .filter_out
        .iter()
        .any(|f| culex_proto::topic::matches(f, &msg.topic))
    {
        return Ok(Action::Continue);
    }
    if opts.remove_retained && msg.retain {
        conn.start_publish(
            Message::new(msg.topic.clone(), bytes::Bytes::new(), QoS::AtLeastOnce).retained(true),
        )?;
    }
    if opts.retained_only && !msg.retain {
        return Ok(Action::Exit);
    }
    if opts.no_retain && msg.retain {
        return Ok(Action::Continue);
    }
    let now = SystemTime::now();
    let mut out = Vec::with_capacity(msg.payload.len() + msg.topic.len() + 2);
    match &opts.format {
        Some(tokens) => render(tokens, msg, now, &mut out),
        None if opts.verbose => {
            out.extend_from_slice(msg.topic.as_bytes());
            if msg.payload.is_empty() {
                out.extend_from_slice(b" (null)");
            } else {
                out.push(b' ');
                out.extend_from_slice(&msg.payload);
            }
        }
        None => out.extend_from_slice(&msg.payload),
    }
    if opts.eol {
        out.push(b'\n');
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure {
            message: format!("Error: cannot write to stdout: {e}"),
            code: EXIT_ERROR,
            refused: false,
        })?;
    state.received += 1;
    if opts.count.is_some_and(|c| state.received >= c) {
        return Ok(Action::Exit);
    }
    Ok(Action::Continue)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

// ---- -F output format ----

/// One piece of a parsed `-F` format string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Bytes printed as they are (escapes already resolved).
    Literal(Vec<u8>),
    /// A `%` conversion with its flags.
    Field(Spec),
    /// An `@` time conversion (strftime character).
    Time(char),
}

/// `%[-0][width][.precision]conv`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    left: bool,
    zero: bool,
    width: usize,
    precision: Option<usize>,
    conv: char,
}

/// Parses a format string. Unknown sequences are printed literally.
fn parse_format(fmt: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut lit = Vec::new();
    let mut chars = fmt.chars().peekable();
    let flush = |lit: &mut Vec<u8>, tokens: &mut Vec<Token>| {
        if !lit.is_empty() {
            tokens.push(Token::Literal(std::mem::take(lit)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let esc = match chars.next() {
                    Some('\\') => Some(b'\\'),
                    Some('0') => Some(0),
                    Some('a') => Some(7),
                    Some('e') => Some(0x1b),
                    Some('n') => Some(b'\n'),
                    Some('r') => Some(b'\r'),
                    Some('t') => Some(b'\t'),
                    Some('v') => Some(0x0b),
                    Some(other) => {
                        lit.push(b'\\');
                        let mut b = [0u8; 4];
                        lit.extend_from_slice(other.encode_utf8(&mut b).as_bytes());
                        None
                    }
                    None => {
                        lit.push(b'\\');
                        None
                    }
                };
                if let Some(e) = esc {
                    lit.push(e);
                }
            }
            '@' => match chars.next() {
                Some('@') => lit.push(b'@'),
                Some(t) => {
                    flush(&mut lit, &mut tokens);
                    tokens.push(Token::Time(t));
                }
                None => lit.push(b'@'),
            },
            '%' => {
                let mut spec = Spec {
                    left: false,
                    zero: false,
                    width: 0,
                    precision: None,
                    conv: '%',
                };
                let mut raw = String::from("%");
                while let Some(&f) = chars.peek() {
                    match f {
                        '-' => spec.left = true,
                        '0' => spec.zero = true,
                        _ => break,
                    }
                    raw.push(f);
                    chars.next();
                }
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    spec.width = spec.width.saturating_mul(10).saturating_add(d as usize);
                    raw.push(chars.next().unwrap_or('0'));
                }
                if chars.peek() == Some(&'.') {
                    raw.push('.');
                    chars.next();
                    let mut p = 0usize;
                    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                        p = p.saturating_mul(10).saturating_add(d as usize);
                        raw.push(chars.next().unwrap_or('0'));
                    }
                    spec.precision = Some(p);
                }
                match chars.next() {
                    Some('%') if raw == "%" => lit.push(b'%'),
                    Some(conv) if "ACDEFIjlmpPqrRStUxX".contains(conv) => {
                        spec.conv = conv;
                        flush(&mut lit, &mut tokens);
                        tokens.push(Token::Field(spec));
                    }
                    Some(other) => {
                        raw.push(other);
                        lit.extend_from_slice(raw.as_bytes());
                    }
                    None => lit.extend_from_slice(raw.as_bytes()),
                }
            }
            other => {
                let mut b = [0u8; 4];
                lit.extend_from_slice(other.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    flush(&mut lit, &mut tokens);
    tokens
}

/// Appends the formatted message to `out`.
fn render(tokens: &[Token], msg: &Publish, now: SystemTime, out: &mut Vec<u8>) {
    let t = Utc::from(now);
    for token in tokens {
        match token {
            Token::Literal(b) => out.extend_from_slice(b),
            Token::Time(c) => t.strftime(*c, out),
            Token::Field(spec) => {
                let value = field(spec.conv, msg, &t);
                pad(spec, value, out);
            }
        }
    }
}

/// The unpadded value of conversion `conv`.
fn field(conv: char, msg: &Publish, t: &Utc) -> Vec<u8> {
    let p = &msg.properties;
    let opt = |v: Option<String>| v.unwrap_or_default().into_bytes();
    match conv {
        't' => msg.topic.as_bytes().to_vec(),
        'p' => msg.payload.to_vec(),
        'l' => msg.payload.len().to_string().into_bytes(),
        'q' => msg.qos.as_u8().to_string().into_bytes(),
        'r' => u8::from(msg.retain).to_string().into_bytes(),
        'm' => msg.packet_id.unwrap_or(0).to_string().into_bytes(),
        'x' => msg
            .payload
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect(),
        'X' => msg
            .payload
            .iter()
            .flat_map(|b| format!("{b:02X}").into_bytes())
            .collect(),
        'I' => t.iso(false).into_bytes(),
        'U' => format!("{}.{:09}", t.secs, t.nanos).into_bytes(),
        'j' => json(msg, t).into_bytes(),
        'A' => opt(p.topic_alias.map(|v| v.to_string())),
        'C' => opt(p.content_type.clone()),
        'D' => p
            .correlation_data
            .as_ref()
            .map(|d| d.to_vec())
            .unwrap_or_default(),
        'E' => opt(p.message_expiry_interval.map(|v| v.to_string())),
        'F' => opt(p.payload_format_indicator.map(|v| v.to_string())),
        'R' => opt(p.response_topic.clone()),
        'S' => opt(p.subscription_identifiers.first().map(|v| v.to_string())),
        'P' => p
            .user_properties
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ")
            .into_bytes(),
        _ => Vec::new(),
    }
}

/// Applies width, precision and flags where mosquitto_sub applies them.
fn pad(spec: &Spec, mut value: Vec<u8>, out: &mut Vec<u8>) {
    if let Some(max) = spec.precision {
        if "CIRt".contains(spec.conv) {
            value.truncate(max);
        }
    }
    let width_applies = "ACEFIlmpRStxX".contains(spec.conv);
    let len = String::from_utf8_lossy(&value).chars().count();
    if !width_applies || len >= spec.width {
        out.extend_from_slice(&value);
        return;
    }
    let fill = spec.width - len;
    if spec.left {
        out.extend_from_slice(&value);
        out.extend(std::iter::repeat_n(b' ', fill));
    } else {
        let zero = spec.zero && "AEFlmSXx".contains(spec.conv);
        out.extend(std::iter::repeat_n(if zero { b'0' } else { b' ' }, fill));
        out.extend_from_slice(&value);
    }
}

/// mosquitto_sub's `%j` JSON object.
fn json(msg: &Publish, t: &Utc) -> String {
    format!(
        "{{\"tst\":\"{}\",\"topic\":{},\"qos\":{},\"retain\":{},\"payloadlen\":{},\"payload\":{}}}",
        t.iso(true),
        json_string(&msg.topic),
        msg.qos.as_u8(),
        u8::from(msg.retain),
        msg.payload.len(),
        json_string(&String::from_utf8_lossy(&msg.payload)),
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A UTC timestamp broken into calendar fields.
struct Utc {
    secs: u64,
    nanos: u32,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    yday: u32,
}

impl Utc {
    fn from(t: SystemTime) -> Utc {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = CUM[(month - 1) as usize] + day + u32::from(leap && month > 2);
        Utc {
            secs,
            nanos: d.subsec_nanos(),
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            yday,
        }
    }

    /// `2016-08-10T09:47:38+0000` (`%I`), or with microseconds `...38.123456Z+0000` (`%j`'s
    /// `tst`, as mosquitto_sub prints it).
    fn iso(&self, micros: bool) -> String {
        let date = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        if micros {
            format!("{date}.{:06}Z+0000", self.nanos / 1000)
        } else {
            format!("{date}+0000")
        }
    }

    fn strftime(&self, c: char, out: &mut Vec<u8>) {
        let s = match c {
            'Y' => format!("{:04}", self.year),
            'y' => format!("{:02}", self.year.rem_euclid(100)),
            'm' => format!("{:02}", self.month),
            'd' => format!("{:02}", self.day),
            'H' => format!("{:02}", self.hour),
            'M' => format!("{:02}", self.minute),
            'S' => format!("{:02}", self.second),
            'j' => format!("{:03}", self.yday),
            'F' => format!("{:04}-{:02}-{:02}", self.year, self.month, self.day),
            'T' => format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second),
            's' => self.secs.to_string(),
            'N' => format!("{:09}", self.nanos),
            'z' => "+0000".into(),
            'Z' => "UTC".into(),
            other => format!("@{other}"),
        };
        out.extend_from_slice(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg() -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: Some(42),
            properties: Properties::from(culex_proto::PropertyValues {
                content_type: Some("text/plain".into()),
                user_properties: vec![("k".into(), "v".into())],
                ..Default::default()
            }),
            payload: Bytes::from_static(b"he\"llo"),
        }
    }

    fn fmt(f: &str) -> String {
        // 2016-08-10T09:47:38.123456789Z
        let t = UNIX_EPOCH + Duration::new(1_470_822_458, 123_456_789);
        let mut out = Vec::new();
        render(&parse_format(f), &msg(), t, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields() {
        assert_eq!(fmt("%t|%p|%q|%r|%l|%m|%%"), "a/b|he\"llo|1|1|6|42|%");
        assert_eq!(
            fmt("%x %X"),
            "686522006c6c6f 686522006C6C6F".replace("2200", "22")
        );
        assert_eq!(fmt("%C %P"), "text/plain k:v");
        assert_eq!(fmt("%I"), "2016-08-10T09:47:38+0000");
        assert_eq!(fmt("%U"), "1470822458.123456789");
        assert_eq!(
            fmt("%j"),
            r#"{"tst":"2016-08-10T09:47:38.123456Z+0000","topic":"a/b","qos":1,"retain":1,"payloadlen":6,"payload":"he\"llo"}"#
        );
        assert_eq!(
            fmt("@Y-@m-@d @H:@M:@S.@N @@ @j @z"),
            "2016-08-10 09:47:38.123456789 @ 223 +0000"
        );
    }

    #[test]
    fn widths_and_escapes() {
        assert_eq!(
            fmt("%5t|%-5t|%05l|%-5q|%.1t|%5.1t"),
            "  a/b|a/b  |00006|1|a|    a"
        );
        assert_eq!(fmt("%05t"), "  a/b");
        assert_eq!(fmt("\\t\\n\\0\\\\\\e"), "\t\n\0\\\x1b");
        assert_eq!(fmt("%Z \\q"), "%Z \\q");
        assert_eq!(fmt("trailing %"), "trailing %");
    }

    #[test]
    fn civil_dates() {
        let at = |s| {
            let u = Utc::from(UNIX_EPOCH + Duration::from_secs(s));
            (u.year, u.month, u.day, u.yday)
        };
        assert_eq!(at(0), (1970, 1, 1, 1));
        assert_eq!(at(951_782_400), (2000, 2, 29, 60));
        assert_eq!(at(978_220_800), (2000, 12, 31, 366));
        assert_eq!(at(4_102_444_800), (2100, 1, 1, 1));
    }

    fn p(args: &[&str]) -> Result<SubOptions, String> {
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
            &cli::SUB,
            |args| match parse(args) {
                Ok(parsed) => Ok(matches!(parsed, Parsed::Help)),
                Err(e) => Err(e.0),
            },
            "Unknown option '{}'.",
        );
    }

    #[test]
    fn parsing() {
        let o = p(&[
            "-t", "a/#", "-t", "b", "-C", "2", "-W", "5", "-v", "-R", "-N", "-T", "a/x",
        ])
        .unwrap();
        assert_eq!(o.filters, vec!["a/#", "b"]);
        assert_eq!(
            (o.count, o.timeout),
            (Some(2), Some(Duration::from_secs(5)))
        );
        assert!(o.verbose && o.no_retain && !o.eol);
        assert!(p(&[]).unwrap_err().contains("specify a topic"));
        assert!(p(&["-t", "a/#/b"])
            .unwrap_err()
            .contains("Invalid subscription topic"));
        assert!(p(&["-t", "a", "-W", "0"]).is_err());
        assert!(p(&["-t", "a", "-C", "x"]).is_err());
        assert!(p(&["-t", "a", "-c"]).unwrap_err().contains("client id"));
        let o = p(&["-L", "mqtt://u:p@h:1234/x/+"]).unwrap();
        assert_eq!(o.filters, vec!["x/+"]);
    }
}
