//! What `culex pub` and `culex sub` share: Mosquitto-style argument parsing for the connection
//! options, `-L` URLs, building the client options, `-d` debug lines and exit codes.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use culex_client::transport::{TlsOptions, TransportOptions, WebSocketOptions};
use culex_client::{ClientError, ConnectOptions, Connection, Direction, PacketHook};
use culex_proto::{LastWill, Packet, Properties, Protocol, QoS};

use crate::cli::Tool;

/// A command-line mistake: printed as `Error: ...` plus a pointer to `--help`, exit 1.
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

/// What parsing decided.
pub(crate) enum Parsed<T> {
    /// Run with these options.
    Run(T),
    /// `--help` was given.
    Help,
}

/// Exit code for usage errors and for failures without a more specific code (Mosquitto's
/// clients exit 1 for these too).
pub(crate) const EXIT_ERROR: u8 = 1;
/// Exit code when `culex sub -W` times out (Mosquitto's `MOSQ_ERR_TIMEOUT`).
pub(crate) const EXIT_TIMEOUT: u8 = 27;

/// A cursor over the arguments after the subcommand.
pub(crate) struct Args<'a> {
    items: &'a [OsString],
    pos: usize,
    /// The options the subcommand documents: nothing else is accepted.
    tool: &'static Tool,
}

impl<'a> Args<'a> {
    pub(crate) fn new(items: &'a [OsString], tool: &'static Tool) -> Self {
        Args {
            items,
            pos: 0,
            tool,
        }
    }

    /// The next argument: an option of the subcommand's table ([`crate::cli`]), as typed.
    pub(crate) fn next_flag(&mut self) -> Option<Result<&'a str, UsageError>> {
        let item = self.items.get(self.pos)?;
        self.pos += 1;
        let unknown = || UsageError(format!("Unknown option '{}'.", item.to_string_lossy()));
        Some(
            item.to_str()
                .filter(|s| self.tool.flag(s).is_some())
                .ok_or_else(unknown),
        )
    }

    /// The value of `flag`, as raw bytes (payloads may be any bytes).
    pub(crate) fn value_os(&mut self, flag: &str) -> Result<&'a OsStr, UsageError> {
        let item = self.items.get(self.pos).ok_or_else(|| missing(flag))?;
        self.pos += 1;
        Ok(item.as_os_str())
    }

    /// The value of `flag`, as text.
    pub(crate) fn value(&mut self, flag: &str) -> Result<&'a str, UsageError> {
        self.value_os(flag)?
            .to_str()
            .ok_or_else(|| UsageError(format!("The argument of {flag} is not valid UTF-8.")))
    }

    /// The value of `flag`, parsed.
    pub(crate) fn parsed<T: std::str::FromStr>(
        &mut self,
        flag: &str,
        what: &str,
    ) -> Result<T, UsageError> {
        let v = self.value(flag)?;
        v.parse()
            .map_err(|_| UsageError(format!("Invalid {what} given: {v}")))
    }
}

fn missing(flag: &str) -> UsageError {
    UsageError(format!("{flag} argument given but no value specified."))
}

/// The bytes of an OS string (arguments and payloads are bytes on Unix).
pub(crate) fn os_bytes(s: &OsStr) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        s.as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        s.to_string_lossy().into_owned().into_bytes()
    }
}

/// Connection options both commands accept.
#[derive(Debug, Default)]
pub(crate) struct Common {
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) id_prefix: Option<String>,
    pub(crate) keepalive: Option<u16>,
    pub(crate) qos: QoS,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) debug: bool,
    pub(crate) quiet: bool,
    /// `-c`: persistent session (clean session off).
    pub(crate) persistent: bool,
    pub(crate) session_expiry: Option<u32>,
    pub(crate) will_topic: Option<String>,
    pub(crate) will_payload: Option<Vec<u8>>,
    pub(crate) will_qos: Option<QoS>,
    pub(crate) will_retain: bool,
    pub(crate) cafile: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    pub(crate) insecure: bool,
    pub(crate) tls_use_os_certs: bool,
    pub(crate) alpn: Option<String>,
    pub(crate) ws: bool,
    pub(crate) ws_path: Option<String>,
    pub(crate) nodelay: bool,
    /// `-t` values in order (pub takes exactly one).
    pub(crate) topics: Vec<String>,
    /// From `-L`: TLS wanted (mqtts/wss).
    pub(crate) url_tls: bool,
    /// From `-L`: topic in the URL path.
    pub(crate) url_topic: Option<String>,
    pub(crate) connect_timeout: Option<u64>,
}

/// Parses a QoS argument (0, 1 or 2).
pub(crate) fn parse_qos(v: &str) -> Result<QoS, UsageError> {
    v.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| UsageError(format!("Invalid QoS given: {v}")))
}

impl Common {
    /// Handles `flag` if it is a shared option; `Ok(false)` when it is not.
    pub(crate) fn parse(&mut self, flag: &str, args: &mut Args<'_>) -> Result<bool, UsageError> {
        match flag {
            "-h" | "--host" => self.host = Some(args.value(flag)?.to_string()),
            "-p" | "--port" => {
                let v = args.value(flag)?;
                self.port = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| UsageError(format!("Invalid port given: {v}")))?,
                );
            }
            "-u" | "--username" => self.username = Some(args.value(flag)?.to_string()),
            "-P" | "--pw" => self.password = Some(args.value(flag)?.to_string()),
            "-i" | "--id" => self.client_id = Some(args.value(flag)?.to_string()),
            "-I" | "--id-prefix" => self.id_prefix = Some(args.value(flag)?.to_string()),
            "-k" | "--keepalive" => self.keepalive = Some(args.parsed(flag, "keepalive")?),
            "-q" | "--qos" => self.qos = parse_qos(args.value(flag)?)?,
            "-V" | "--protocol-version" => {
                self.protocol = Some(match args.value(flag)? {
                    "mqttv31" | "31" => Protocol::V31,
                    "mqttv311" | "311" => Protocol::V311,
                    "mqttv5" | "5" => Protocol::V5,
                    other => {
                        return Err(UsageError(format!(
                            "Invalid protocol version argument given: {other}"
                        )))
                    }
                })
            }
            "-d" | "--debug" => self.debug = true,
            "--quiet" => self.quiet = true,
            "-c" | "--disable-clean-session" => self.persistent = true,
            "-x" => {
                let v = args.value(flag)?;
                self.session_expiry = Some(match v {
                    "-1" | "∞" => u32::MAX,
                    _ => v.parse().map_err(|_| {
                        UsageError(format!("Invalid session-expiry-interval given: {v}"))
                    })?,
                });
            }
            "--will-topic" => self.will_topic = Some(args.value(flag)?.to_string()),
            "--will-payload" => self.will_payload = Some(os_bytes(args.value_os(flag)?)),
            "--will-qos" => self.will_qos = Some(parse_qos(args.value(flag)?)?),
            "--will-retain" => self.will_retain = true,
            "--cafile" => self.cafile = Some(args.value(flag)?.into()),
            "--cert" => self.cert = Some(args.value(flag)?.into()),
            "--key" => self.key = Some(args.value(flag)?.into()),
            "--insecure" => self.insecure = true,
            "--tls-use-os-certs" => self.tls_use_os_certs = true,
            "--tls-alpn" => self.alpn = Some(args.value(flag)?.to_string()),
            "--ws" => self.ws = true,
            "--ws-path" => self.ws_path = Some(args.value(flag)?.to_string()),
            "--nodelay" => self.nodelay = true,
            "--connect-timeout" => self.connect_timeout = Some(args.parsed(flag, "timeout")?),
            "-t" | "--topic" => self.topics.push(args.value(flag)?.to_string()),
            "-L" | "--url" => self.parse_url(args.value(flag)?)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `-L mqtt(s)://[user[:password]@]host[:port]/topic` (also `ws://` and `wss://`).
    fn parse_url(&mut self, url: &str) -> Result<(), UsageError> {
        let bad = |why: &str| UsageError(format!("Invalid URL for -L argument specified - {why}."));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (tls, ws) = match scheme {
            "mqtt" => (false, false),
            "mqtts" => (true, false),
            "ws" => (false, true),
            "wss" => (true, true),
            _ => return Err(bad("unsupported scheme")),
        };
        let (authority, topic) = rest.split_once('/').ok_or_else(|| bad("topic missing"))?;
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                match userinfo.split_once(':') {
                    Some((u, p)) => {
                        self.username = Some(u.to_string());
                        self.password = Some(p.to_string());
                    }
                    None => self.username = Some(userinfo.to_string()),
                }
                hostport
            }
            None => authority,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("bad IPv6 address"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("host missing"));
        }
        self.host = Some(host.to_string());
        if let Some(p) = port {
            self.port = Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("invalid port"))?,
            );
        }
        self.url_tls = tls;
        self.ws |= ws;
        if !topic.is_empty() {
            self.url_topic = Some(topic.to_string());
        }
        Ok(())
    }

    /// Cross-option checks shared by both commands.
    pub(crate) fn validate(&self) -> Result<(), UsageError> {
        if self.will_topic.is_none()
            && (self.will_payload.is_some() || self.will_qos.is_some() || self.will_retain)
        {
            return Err(UsageError(
                "Will payload, QoS or retain given, but no will topic given.".into(),
            ));
        }
        if let Some(t) = &self.will_topic {
            culex_proto::topic::validate_topic_name(t).map_err(|_| {
                UsageError(format!(
                    "Invalid will topic '{t}', does it contain '+' or '#'?"
                ))
            })?;
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(UsageError(
                "Both certfile and keyfile must be provided if one of them is set.".into(),
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(UsageError(
                "A password was given without a username (-u).".into(),
            ));
        }
        if self.persistent && self.client_id.is_none() && self.id_prefix.is_none() {
            return Err(UsageError(
                "You must provide a client id if you are using the -c option.".into(),
            ));
        }
        if self.session_expiry.is_some() && self.protocol() != Protocol::V5 {
            return Err(UsageError(
                "-x is only valid with MQTT v5 (-V mqttv5).".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or(Protocol::V311)
    }

    fn tls_enabled(&self) -> bool {
        self.url_tls || self.cafile.is_some() || self.cert.is_some() || self.tls_use_os_certs
    }

    /// Where to connect.
    pub(crate) fn transport(&self) -> TransportOptions {
        let tls = self.tls_enabled();
        let default_port = match (tls, self.ws) {
            (false, false) => 1883,
            (true, false) => 8883,
            (false, true) => 80,
            (true, true) => 443,
        };
        let mut t = TransportOptions::tcp(
            self.host.clone().unwrap_or_else(|| "localhost".into()),
            self.port.unwrap_or(default_port),
        );
        t.nodelay = true;
        if let Some(s) = self.connect_timeout {
            t.connect_timeout = Duration::from_secs(s.max(1));
        }
        if tls {
            t.tls = Some(TlsOptions {
                ca_file: self.cafile.clone(),
                cert_file: self.cert.clone(),
                key_file: self.key.clone(),
                insecure: self.insecure,
                alpn: self.alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
                server_name: None,
            });
        }
        if self.ws {
            t.websocket = Some(WebSocketOptions {
                path: self.ws_path.clone().unwrap_or_else(|| "/mqtt".into()),
            });
        }
        t
    }

    /// The CONNECT options. `tool` names the default client id ("pub" / "sub").
    pub(crate) fn connect_options(&self, tool: &str) -> ConnectOptions {
        let protocol = self.protocol();
        let pid = std::process::id();
        let client_id = match (&self.client_id, &self.id_prefix) {
            (Some(id), _) => id.clone(),
            (None, Some(prefix)) => format!("{prefix}{pid}"),
            // 3.1.1 and 5.0 let the server assign an id; 3.1 needs one (1 to 23 characters).
            (None, None) if protocol == Protocol::V31 => format!("culex_{tool}_{pid}"),
            (None, None) => String::new(),
        };
        let mut o = ConnectOptions::new(client_id);
        o.protocol = protocol;
        o.clean_start = !self.persistent;
        o.keep_alive = self.keepalive.unwrap_or(60);
        o.username = self.username.clone();
        o.password = self.password.clone().map(Bytes::from);
        o.will = self.will_topic.as_ref().map(|topic| LastWill {
            topic: topic.clone(),
            payload: Bytes::from(self.will_payload.clone().unwrap_or_default()),
            qos: self.will_qos.unwrap_or_default(),
            retain: self.will_retain,
            properties: Properties::default(),
        });
        if protocol == Protocol::V5 {
            // Like Mosquitto: -c alone means the session never expires.
            o.properties.session_expiry_interval = self
                .session_expiry
                .or(self.persistent.then_some(u32::MAX))
                .filter(|v| *v > 0);
        }
        o
    }

    /// Prints the `--insecure` warning.
    pub(crate) fn warn_insecure(&self) {
        if self.insecure && self.tls_enabled() {
            eprintln!(
                "Warning: --insecure: the server certificate's host name is NOT checked; \
                 anyone with a certificate from your CA can impersonate the server."
            );
        } else if self.insecure {
            eprintln!(
                "Warning: --insecure has no effect without TLS (--cafile, --cert, mqtts://)."
            );
        }
    }

    /// The `-d` hook printing Mosquitto-style debug lines (to stderr).
    pub(crate) fn debug_hook(&self, client_id: &str) -> Option<PacketHook> {
        if !self.debug {
            return None;
        }
        let mut id = if client_id.is_empty() {
            "(null)".to_string()
        } else {
            client_id.to_string()
        };
        Some(Box::new(move |dir: Direction, packet: &Packet| {
            if let (Direction::Received, Packet::ConnAck(ack)) = (dir, packet) {
                if let Some(assigned) = &ack.properties.assigned_client_identifier {
                    id = assigned.clone();
                }
            }
            for line in describe(dir, packet) {
                eprintln!("Client {id} {line}");
            }
        }))
    }

    /// Connects, reporting failures as a one-line error and an exit code.
    pub(crate) async fn connect(&self, tool: &str) -> Result<Connection, Failure> {
        let options = self.connect_options(tool);
        let hook = self.debug_hook(&options.client_id);
        let transport = self.transport();
        Connection::connect_with_hook(&transport, options, hook)
            .await
            .map_err(|e| Failure::connect(&transport, e))
    }
}

/// A failure with its message and exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) code: u8,
    /// The broker refused the connection in its CONNACK (retrying will not help).
    pub(crate) refused: bool,
}

impl Failure {
    /// A failure to connect: the CONNACK code for refusals, 1 otherwise.
    pub(crate) fn connect(transport: &TransportOptions, e: ClientError) -> Self {
        match &e {
            ClientError::Refused { .. } => Failure {
                message: e.to_string(),
                code: e.connack_code().unwrap_or(EXIT_ERROR),
                refused: true,
            },
            ClientError::Io(io) => Failure {
                message: format!(
                    "Error: Unable to connect to {}:{}: {}",
                    transport.host,
                    transport.port,
                    io_text(io)
                ),
                code: EXIT_ERROR,
                refused: false,
            },
            _ => Failure::from(e),
        }
    }

    /// Prints the message (unless `quiet`) and returns the exit code.
    pub(crate) fn report(self, quiet: bool) -> ExitCode {
        if !quiet {
            eprintln!("{}", self.message);
        }
        ExitCode::from(self.code)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let message = match &e {
            ClientError::Refused { .. } => e.to_string(),
            ClientError::Io(io) => format!("Error: {}", io_text(io)),
            other => format!("Error: {other}"),
        };
        Failure {
            message,
            code: e.connack_code().unwrap_or(EXIT_ERROR),
            refused: e.connack_code().is_some(),
        }
    }
}

impl From<UsageError> for Failure {
    fn from(e: UsageError) -> Self {
        Failure {
            message: format!("Error: {}", e.0),
            code: EXIT_ERROR,
            refused: false,
        }
    }
}

/// An io::Error without the "(os error N)" suffix.
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Prints a usage error the way Mosquitto's clients do and returns exit code 1.
pub(crate) fn usage_error(tool: &str, e: UsageError) -> ExitCode {
    eprintln!("Error: {}", e.0);
    eprintln!("Use 'culex {tool} --help' to see usage.");
    ExitCode::from(EXIT_ERROR)
}

/// Prints `text` to stdout (for `--help`), exit 0.
pub(crate) fn print_help(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// A single-threaded runtime for the client commands.
/// The shared `main` of `culex pub` and `culex sub`: parses, prints help or a usage error,
/// warns about `--insecure`, runs `run` on a single-threaded runtime and reports its failure
/// (unless `--quiet`) as the exit status.
pub(crate) fn tool_main<T, Fut>(
    tool: &'static Tool,
    parsed: Result<Parsed<T>, UsageError>,
    common: impl Fn(&T) -> &Common,
    run: impl FnOnce(T) -> Fut,
) -> ExitCode
where
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let opts = match parsed {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => return print_help(&tool.help()),
        Err(e) => return usage_error(tool.name, e),
    };
    let quiet = common(&opts).quiet;
    common(&opts).warn_insecure();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(f) => return f.report(quiet),
    };
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(quiet),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            message: format!("Error: cannot start the runtime: {e}"),
            code: EXIT_ERROR,
            refused: false,
        })
}

/// Mosquitto-style debug descriptions of a packet (one line per SUBSCRIBE filter).
pub(crate) fn describe(dir: Direction, packet: &Packet) -> Vec<String> {
    let verb = match dir {
        Direction::Sent => "sending",
        Direction::Received => "received",
    };
    let one = |s: String| vec![format!("{verb} {s}")];
    match packet {
        Packet::ConnAck(a) => {
            let code = if a.reason_code == culex_proto::ReasonCode::Success {
                0
            } else {
                a.reason_code.as_u8()
            };
            one(format!("CONNACK ({code})"))
        }
        Packet::Publish(p) => one(format!(
            "PUBLISH (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
            u8::from(p.dup),
            p.qos.as_u8(),
            u8::from(p.retain),
            p.packet_id.unwrap_or(0),
            p.topic,
            p.payload.len()
        )),
        Packet::PubAck(r) | Packet::PubComp(r) if dir == Direction::Received => one(format!(
            "{} (Mid: {}, RC:{})",
            packet.name(),
            r.packet_id,
            r.reason_code.as_u8()
        )),
        Packet::PubRec(r) if dir == Direction::Received => {
            one(format!("PUBREC (Mid: {})", r.packet_id))
        }
        Packet::PubRel(r) if dir == Direction::Received => {
            one(format!("PUBREL (Mid: {})", r.packet_id))
        }
        Packet::PubAck(r) | Packet::PubRec(r) => one(format!(
            "{} (m{}, rc{})",
            packet.name(),
            r.packet_id,
            r.reason_code.as_u8()
        )),
        Packet::PubRel(r) | Packet::PubComp(r) => {
            one(format!("{} (m{})", packet.name(), r.packet_id))
        }
        Packet::Subscribe(s) => s
            .filters
            .iter()
            .map(|f| {
                let o = &f.options;
                let options = u8::from(o.no_local) << 2
                    | u8::from(o.retain_as_published) << 3
                    | (o.retain_handling as u8) << 4;
                format!(
                    "{verb} SUBSCRIBE (Mid: {}, Topic: {}, QoS: {}, Options: 0x{options:02x})",
                    s.packet_id,
                    f.filter,
                    o.qos.as_u8()
                )
            })
            .collect(),
        Packet::Unsubscribe(u) => u
            .filters
            .iter()
            .map(|f| format!("{verb} UNSUBSCRIBE (Mid: {}, Topic: {f})", u.packet_id))
            .collect(),
        other => one(other.name().to_string()),
    }
}

/// A value each option of the [`crate::cli`] tables accepts, by the table's value name (for
/// [`assert_parser_follows_table`]).
#[cfg(test)]
pub(crate) fn sample_value(name: &str) -> &'static str {
    match name {
        "host" => "localhost",
        "port" => "1883",
        "qos" => "1",
        "protocol-version" => "5",
        "keepalive" => "60",
        "session-expiry" => "-1",
        "secs" | "N" | "msg_count" | "timeout_secs" | "max_inflight" => "2",
        "URL" => "mqtt://h/t",
        "file" => "f.pem",
        "id" | "id_prefix" | "username" | "password" | "payload" | "message" => "x",
        "topic" | "filter_out" => "a/b",
        "protocol" => "mqtt",
        "path" => "/mqtt",
        "format" => "%t %p",
        "hash" => "sha512-pbkdf2",
        "iterations" => "1000",
        other => panic!("no sample value for <{other}>: add one here"),
    }
}

/// Checks that `parse` handles every option of `tool`'s table, by its short and its long
/// name, and takes a value exactly when the table says so: each option (with a sample value
/// if it takes one) is followed by an unknown option, whose error (`unknown`, with `{}` for
/// the option) must come out. So `--help`, the man page and the completions, all made from
/// the table, describe what the parser does. `parse` returns whether help was asked for, or
/// the error's text.
#[cfg(test)]
pub(crate) fn assert_parser_follows_table(
    tool: &'static Tool,
    parse: impl Fn(&[OsString]) -> Result<bool, String>,
    unknown: &str,
) {
    const SENTINEL: &str = "--not-an-option";
    for flag in tool.flags() {
        let names = [
            flag.short.map(|c| format!("-{c}")),
            flag.long.map(|l| format!("--{l}")),
        ];
        for name in names.into_iter().flatten() {
            let mut args = vec![OsString::from(&name)];
            args.extend(flag.value.map(|v| OsString::from(sample_value(v))));
            args.push(SENTINEL.into());
            match parse(&args) {
                Ok(help) => assert!(
                    help && flag.long == Some("help"),
                    "culex {} {args:?} was accepted",
                    tool.name
                ),
                Err(e) => assert_eq!(
                    e,
                    unknown.replace("{}", SENTINEL),
                    "culex {} {args:?}: the parser and the table in cli.rs disagree about {name}",
                    tool.name
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Common, UsageError> {
        let os: Vec<OsString> = args.iter().map(OsString::from).collect();
        let mut a = Args::new(&os, &crate::cli::PUB);
        let mut c = Common::default();
        while let Some(flag) = a.next_flag() {
            let flag = flag?;
            if !c.parse(flag, &mut a)? {
                return Err(UsageError(format!("Unknown option '{flag}'.")));
            }
        }
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn urls() {
        let c = parse(&["-L", "mqtts://u:p@example.com/a/b"]).unwrap();
        assert_eq!(c.host.as_deref(), Some("example.com"));
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("p"));
        assert_eq!(c.url_topic.as_deref(), Some("a/b"));
        let t = c.transport();
        assert_eq!(t.port, 8883);
        assert!(t.tls.is_some());
        let c = parse(&["-L", "mqtt://[::1]:1999/t"]).unwrap();
        assert_eq!((c.host.as_deref(), c.port), (Some("::1"), Some(1999)));
        assert_eq!(c.transport().port, 1999);
        let c = parse(&["-L", "ws://h:9001/x"]).unwrap();
        let t = c.transport();
        assert!(t.websocket.is_some() && t.tls.is_none());
        assert!(parse(&["-L", "http://h/x"]).is_err());
        assert!(parse(&["-L", "mqtt://h"]).is_err());
        assert!(parse(&["-L", "mqtt://h:0/x"]).is_err());
    }

    #[test]
    fn protocol_spellings_and_errors() {
        for (v, p) in [
            ("31", Protocol::V31),
            ("mqttv31", Protocol::V31),
            ("311", Protocol::V311),
            ("mqttv311", Protocol::V311),
            ("5", Protocol::V5),
            ("mqttv5", Protocol::V5),
        ] {
            assert_eq!(parse(&["-V", v]).unwrap().protocol(), p);
        }
        assert!(parse(&["-V", "4"]).is_err());
        assert!(parse(&["-q", "3"]).is_err());
        assert!(parse(&["-p", "x"]).is_err());
        assert!(parse(&["-p"]).is_err());
        assert!(parse(&["--will-qos", "1"]).is_err());
        assert!(parse(&["--cert", "c.pem"]).is_err());
        assert!(parse(&["-c"]).is_err());
        assert!(parse(&["-x", "10"]).is_err());
        assert!(parse(&["-V", "5", "-x", "-1"]).is_ok());
    }

    #[test]
    fn connect_options_defaults() {
        let c = parse(&["-V", "mqttv31"]).unwrap();
        let o = c.connect_options("pub");
        assert!(o.client_id.starts_with("culex_pub_"));
        assert!(o.client_id.len() <= 23);
        let c = parse(&["-c", "-i", "me", "-V", "5", "-k", "5"]).unwrap();
        let o = c.connect_options("sub");
        assert!(!o.clean_start);
        assert_eq!(o.keep_alive, 5);
        assert_eq!(o.properties.session_expiry_interval, Some(u32::MAX));
        let c = parse(&[
            "--will-topic",
            "w",
            "--will-payload",
            "bye",
            "--will-qos",
            "2",
            "--will-retain",
        ])
        .unwrap();
        let w = c.connect_options("pub").will.unwrap();
        assert_eq!(
            (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
            ("w", &b"bye"[..], QoS::ExactlyOnce, true)
        );
    }
}
