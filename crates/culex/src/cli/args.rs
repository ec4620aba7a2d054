//! The command line, described once: the broker's flags ([`Cli`]) and the options of the
//! Mosquitto-compatible subcommands `passwd`, `pub` and `sub` ([`Tool`] tables).
//!
//! The subcommands parse their own arguments (their `-h` is the host, as in `mosquitto_pub`,
//! and `-x -1` is a value), but only flags listed in their table are accepted, their `--help`
//! text is rendered from the table, and the same table becomes the [`clap::Command`] that
//! `culex --help`, the man pages and the shell completions are made from. `build.rs` compiles
//! this file too (it depends on clap and std only) to render those man pages and completions
//! at build time.

use clap::{Arg, ArgAction, Command, CommandFactory, Parser, ValueHint};
use std::path::PathBuf;

/// Culex, an MQTT broker for MQTT 3.1, 3.1.1 and 5.0.
///
/// The broker's own options, after Mosquitto's: `-c FILE`, `-p PORT`, `-v`.
#[derive(Debug, Parser)]
#[command(name = "culex", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file: `*.toml` is TOML, anything else is mosquitto.conf syntax.
    #[arg(short = 'c', long = "config-file", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    /// Listen on this port (loopback, IPv4 and IPv6) instead of the configured listeners.
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<u16>,
    /// Verbose logging (debug level). `RUST_LOG` overrides.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Keep the persistent store (retained messages, persistent sessions) in DIR; turns
    /// persistence on. Default with no arguments: ./culex-data.
    #[arg(long = "data-dir", value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub data_dir: Option<PathBuf>,
    /// Move a damaged store aside (it is renamed, never deleted) and start with an empty one.
    #[arg(long = "reset-store")]
    pub reset_store: bool,
    /// Check the configuration file, print any problems, and exit (non-zero on errors).
    #[arg(long = "check", requires = "config")]
    pub check: bool,
}

/// The whole command line as clap sees it: the broker's flags and the three subcommands.
///
/// `culex --help`, the man pages and the completions come from this; the subcommands' own
/// arguments are parsed by hand (see the module documentation).
pub fn command() -> Command {
    Cli::command()
        .subcommands(TOOLS.iter().map(|t| t.command()))
        .after_help("Run `culex help SUBCOMMAND` (or `culex SUBCOMMAND --help`) for a subcommand's options.")
}

/// One option of a Mosquitto-compatible subcommand.
#[derive(Debug)]
pub struct Flag {
    /// `-x`.
    pub short: Option<char>,
    /// `--name` (without the dashes).
    pub long: Option<&'static str>,
    /// The name of the value the option takes, if it takes one.
    pub value: Option<&'static str>,
    /// What it does; a `\n` starts a continuation line in `--help`.
    pub help: &'static str,
}

impl Flag {
    /// Whether `arg` (as typed: `-h` or `--host`) names this option.
    pub fn is(&self, arg: &str) -> bool {
        match (arg.strip_prefix("--"), arg.strip_prefix('-')) {
            (Some(long), _) => self.long == Some(long),
            (None, Some(short)) => {
                let mut chars = short.chars();
                chars.next().is_some_and(|c| self.short == Some(c)) && chars.next().is_none()
            }
            (None, None) => false,
        }
    }

    /// `-h, --host` / `-c` / `--cafile`.
    fn names(&self) -> String {
        let short = self.short.map(|c| format!("-{c}"));
        let long = self.long.map(|l| format!("--{l}"));
        match (short, long) {
            (Some(s), Some(l)) => format!("{s}, {l}"),
            (Some(n), None) | (None, Some(n)) => n,
            (None, None) => String::new(),
        }
    }

    /// The clap description (for the man page and the completions).
    fn arg(&self) -> Arg {
        let id = self
            .long
            .map(str::to_owned)
            .or_else(|| self.short.map(String::from))
            .unwrap_or_default();
        let mut arg = Arg::new(id).help(self.help.replace('\n', " "));
        if let Some(c) = self.short {
            arg = arg.short(c);
        }
        if let Some(l) = self.long {
            arg = arg.long(l);
        }
        match self.value {
            Some(v) => arg
                .action(ArgAction::Set)
                .value_name(v)
                .allow_hyphen_values(true)
                .value_hint(match v {
                    "file" => ValueHint::FilePath,
                    "host" => ValueHint::Hostname,
                    "URL" => ValueHint::Url,
                    _ => ValueHint::Other,
                }),
            None => arg.action(ArgAction::SetTrue),
        }
    }
}

/// A positional argument of a subcommand (for the man page and the completions).
#[derive(Debug)]
pub struct Operand {
    /// Its name in the synopsis.
    pub name: &'static str,
    /// What it is.
    pub help: &'static str,
}

/// A Mosquitto-compatible subcommand: `culex passwd`, `culex pub`, `culex sub`.
#[derive(Debug)]
pub struct Tool {
    /// The subcommand's name.
    pub name: &'static str,
    /// One line: what it does (`culex --help` lists it).
    pub about: &'static str,
    /// The synopsis, after `Usage: `.
    pub usage: &'static str,
    /// Its own options.
    pub own: &'static [Flag],
    /// Options it shares with other subcommands.
    pub shared: &'static [Flag],
    /// Positional arguments.
    pub operands: &'static [Operand],
    /// Printed after the options: exit status, formats, notes.
    pub notes: &'static str,
}

impl Tool {
    /// Every option, in the order `--help` lists them: short options alphabetically
    /// (`-c` before `-C`), then the long-only ones, the subcommand's own first.
    pub fn flags(&self) -> Vec<&'static Flag> {
        let mut all: Vec<&'static Flag> = self.own.iter().chain(self.shared).collect();
        all.sort_by_key(|f| {
            f.short.map_or((true, '\0', false), |c| {
                (false, c.to_ascii_lowercase(), c.is_ascii_uppercase())
            })
        });
        all
    }

    /// The option `arg` (`-h`, `--host`) names, if this subcommand has it.
    pub fn flag(&self, arg: &str) -> Option<&'static Flag> {
        self.own.iter().chain(self.shared).find(|f| f.is(arg))
    }

    /// The `--help` text.
    pub fn help(&self) -> String {
        let mut text = format!(
            "culex {}: {}.\n\nUsage: {}\n\n",
            self.name, self.about, self.usage
        );
        for flag in self.flags() {
            let head = format!(" {} : ", flag.names());
            let indent = " ".repeat(head.len());
            for (i, line) in flag.help.lines().enumerate() {
                text.push_str(if i == 0 { &head } else { &indent });
                text.push_str(line);
                text.push('\n');
            }
        }
        if !self.notes.is_empty() {
            text.push('\n');
            text.push_str(self.notes);
        }
        text
    }

    /// The clap description of the subcommand (for `culex --help`, the man page and the
    /// completions; the subcommand itself does not parse with it).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.name)
            .about(self.about)
            .disable_help_flag(true)
            .disable_version_flag(true)
            .after_help(self.notes)
            .args(self.flags().into_iter().map(Flag::arg));
        for (i, op) in self.operands.iter().enumerate() {
            cmd = cmd.arg(
                Arg::new(op.name)
                    .help(op.help)
                    .value_name(op.name)
                    .index(i + 1)
                    .value_hint(if op.name.ends_with("file") {
                        ValueHint::FilePath
                    } else {
                        ValueHint::Other
                    }),
            );
        }
        cmd
    }
}

/// The subcommands, in the order `culex --help` lists them.
pub const TOOLS: [&Tool; 3] = [&PASSWD, &PUB, &SUB];

/// The [`Tool`] named `name`.
pub fn tool(name: &str) -> Option<&'static Tool> {
    TOOLS.into_iter().find(|t| t.name == name)
}

/// Shorthand for the tables below.
const fn flag(
    short: Option<char>,
    long: Option<&'static str>,
    value: Option<&'static str>,
    help: &'static str,
) -> Flag {
    Flag {
        short,
        long,
        value,
        help,
    }
}

/// `culex passwd`, as `mosquitto_passwd`.
#[rustfmt::skip] // One line per option reads as a table.
pub const PASSWD: Tool = Tool {
    name: "passwd",
    about: "manage password files for culex (and mosquitto), like mosquitto_passwd",
    usage: "\
culex passwd [-H sha512-pbkdf2 | -H sha512 | -H argon2id] [-I iterations] [-c | -D] passwordfile username
       culex passwd [-H sha512-pbkdf2 | -H sha512 | -H argon2id] [-I iterations] [-c] -b passwordfile username password
       culex passwd [-H ...] [-I iterations] -U passwordfile
       culex passwd --help",
    own: &[
        flag(Some('b'), None, None, "run in batch mode to allow passing passwords on the command line."),
        flag(Some('c'), None, None, "create a new password file. This will overwrite existing files."),
        flag(Some('D'), None, None, "delete the username rather than adding/updating its password."),
        flag(Some('h'), Some("help"), None, "display this message."),
        flag(Some('H'), None, Some("hash"), "specify the hashing algorithm. Defaults to sha512-pbkdf2 with 210000 iterations.\nsha512 is accepted for compatibility only; argon2id needs mosquitto 2.1 or culex."),
        flag(Some('I'), None, Some("iterations"), "PBKDF2 iteration count for sha512-pbkdf2 (default 210000)."),
        flag(Some('U'), None, None, "hash the plain text passwords in a password file (existing hashes are kept)."),
    ],
    shared: &[],
    operands: &[
        Operand { name: "passwordfile", help: "the password file to create or change" },
        Operand { name: "username", help: "the user to add, update or delete (not with -U)" },
        Operand { name: "password", help: "the password, with -b only" },
    ],
    notes: "\
Without -b the password is read twice from the terminal without echo, or, when standard
input is not a terminal, from its first line (a second line, if present, must match).

Exit status: 0 on success, 1 on any error (including an unknown user for -D).
",
};

/// `culex pub`, as `mosquitto_pub`.
#[rustfmt::skip] // One line per option reads as a table.
pub const PUB: Tool = Tool {
    name: "pub",
    about: "publish one message, a file, or stdin to an MQTT broker, like mosquitto_pub",
    usage: "\
culex pub {[-h host] [-p port] [-u username [-P password]] -t topic | -L URL}
                 {-f file | -l | -n | -m message | -s}
                 [-c] [-k keepalive] [-q qos] [-r] [--repeat N] [--repeat-delay time]
                 [-x session-expiry] [-i id] [-I id_prefix] [-d] [--quiet] [-M max_inflight]
                 [-V protocol-version] [--nodelay]
                 [--will-topic topic [--will-payload payload] [--will-qos qos] [--will-retain]]
                 [{--cafile file | --tls-use-os-certs} [--cert file --key file] [--insecure]
                  [--tls-alpn protocol]]
                 [--ws [--ws-path path]] [--connect-timeout secs]
       culex pub --help",
    own: &[
        flag(Some('f'), Some("file"), Some("file"), "send the contents of a file as the message."),
        flag(Some('i'), Some("id"), Some("id"), "client id. Defaults to an id assigned by the broker (3.1.1 and 5.0) or\nculex_pub_<pid> (3.1)."),
        flag(Some('l'), Some("stdin-line"), None, "read stdin, sending a separate message for each line."),
        flag(Some('m'), Some("message"), Some("message"), "message payload to send."),
        flag(Some('M'), None, Some("max_inflight"), "maximum QoS 1/2 messages in flight. Defaults to 20."),
        flag(Some('n'), Some("null-message"), None, "send a null (zero length) message."),
        flag(Some('q'), Some("qos"), Some("qos"), "quality of service level: 0, 1 or 2. Defaults to 0."),
        flag(Some('r'), Some("retain"), None, "message should be retained."),
        flag(Some('s'), Some("stdin-file"), None, "read stdin, sending all of it as one message."),
        flag(Some('t'), Some("topic"), Some("topic"), "topic to publish to."),
        flag(None, Some("repeat"), Some("N"), "with -f, -m, -n or -s, publish the message N times."),
        flag(None, Some("repeat-delay"), Some("secs"), "with --repeat, wait this many seconds (may be fractional) between publishes."),
    ],
    shared: CLIENT_FLAGS,
    operands: &[],
    notes: "\
Exit status: 0 on success; the CONNACK code when the broker refuses the connection
(e.g. 5 not authorised with 3.1.1, 135 with MQTT 5); 1 for other errors.
",
};

/// `culex sub`, as `mosquitto_sub`.
#[rustfmt::skip] // One line per option reads as a table.
pub const SUB: Tool = Tool {
    name: "sub",
    about: "subscribe to topics on an MQTT broker and print the messages, like mosquitto_sub",
    usage: "\
culex sub {[-h host] [-p port] [-u username [-P password]] -t topic ... | -L URL [-t topic]}
                 [-c] [-k keepalive] [-q qos] [-x session-expiry-interval]
                 [-C msg_count] [-E] [-R] [--retained-only] [--remove-retained]
                 [-T filter_out ...] [-U topic ...] [-F format] [-W timeout_secs]
                 [-i id] [-I id_prefix] [-d] [-N] [--quiet] [-v] [--reconnect]
                 [-V protocol-version] [--nodelay]
                 [--will-topic topic [--will-payload payload] [--will-qos qos] [--will-retain]]
                 [{--cafile file | --tls-use-os-certs} [--cert file --key file] [--insecure]
                  [--tls-alpn protocol]]
                 [--ws [--ws-path path]] [--connect-timeout secs]
       culex sub --help",
    own: &[
        flag(Some('C'), None, Some("msg_count"), "disconnect and exit after receiving msg_count messages."),
        flag(Some('E'), None, None, "exit once all subscriptions have been acknowledged by the broker."),
        flag(Some('F'), None, Some("format"), "output format (see below)."),
        flag(Some('i'), Some("id"), Some("id"), "client id. Defaults to an id assigned by the broker (3.1.1 and 5.0) or\nculex_sub_<pid> (3.1)."),
        flag(Some('N'), None, None, "do not add an end of line character after each message."),
        flag(Some('q'), Some("qos"), Some("qos"), "quality of service level for the subscriptions: 0, 1 or 2. Defaults to 0."),
        flag(Some('R'), Some("no-retain"), None, "do not print stale messages (those with retain set)."),
        flag(Some('t'), Some("topic"), Some("topic"), "topic filter to subscribe to. May be repeated."),
        flag(Some('T'), Some("filter-out"), Some("filter_out"), "topic filter to filter out of results. May be repeated."),
        flag(Some('U'), Some("unsubscribe"), Some("topic"), "unsubscribe from a topic filter after connecting. May be repeated."),
        flag(Some('v'), Some("verbose"), None, "print topic and payload separated by a space."),
        flag(Some('W'), None, Some("timeout_secs"), "exit with status 27 after this many seconds (counted from the connection)."),
        flag(None, Some("reconnect"), None, "when the connection is lost (or cannot be made), retry with exponential\nbackoff and jitter (0.5 s to 30 s) and subscribe again."),
        flag(None, Some("retained-only"), None, "only print retained messages; exit at the first non-retained one."),
        flag(None, Some("remove-retained"), None, "clear each retained message received (publish an empty retained\nmessage to its topic). Use -T to keep some."),
    ],
    shared: CLIENT_FLAGS,
    operands: &[],
    notes: "\
Output format (-F), as mosquitto_sub:
 %% literal %          %t topic              %p payload            %l payload length
 %q QoS                %r retained flag      %m message id         %x / %X payload in hex
 %j JSON line          %I ISO 8601 time      %U Unix time.ns       %C content type (v5)
 %E message expiry     %F payload format     %R response topic     %D correlation data
 %P user properties    %S subscription id    %A topic alias
 Flags, width and precision as in printf: %-10t, %05l, %10.10t.
 @@ literal @, @N nanoseconds, and @Y @m @d @H @M @S @F @T @s @z @Z @j @y (strftime, UTC).
 \\\\ \\0 \\a \\e \\n \\r \\t \\v escapes.
 Times are in UTC.

Exit status: 0 on success; 27 when -W expired; the CONNACK code when the broker refuses
the connection (e.g. 5 not authorised with 3.1.1, 135 with MQTT 5); 1 for other errors.
",
};

/// The connection options `culex pub` and `culex sub` share (as `mosquitto_pub` and
/// `mosquitto_sub` do).
#[rustfmt::skip] // One line per option reads as a table.
const CLIENT_FLAGS: &[Flag] = &[
    flag(Some('c'), Some("disable-clean-session"), None, "disable clean session/enable persistent client mode (needs -i)."),
    flag(Some('d'), Some("debug"), None, "print debug messages (to stderr): one line per packet sent or received."),
    flag(Some('h'), Some("host"), Some("host"), "MQTT host to connect to. Defaults to localhost."),
    flag(Some('I'), Some("id-prefix"), Some("id_prefix"), "client id prefix: the id is the prefix followed by the process id."),
    flag(Some('k'), Some("keepalive"), Some("keepalive"), "keep alive in seconds. Defaults to 60; 0 disables."),
    flag(Some('L'), Some("url"), Some("URL"), "user, password, host, port and topic as a URL:\nmqtt(s)://[username[:password]@]host[:port]/topic (also ws:// and wss://)."),
    flag(Some('p'), Some("port"), Some("port"), "network port. Defaults to 1883 (8883 with TLS, 80 for ws, 443 for wss)."),
    flag(Some('P'), Some("pw"), Some("password"), "password."),
    flag(Some('u'), Some("username"), Some("username"), "username."),
    flag(Some('V'), Some("protocol-version"), Some("protocol-version"), "MQTT protocol version: mqttv31 (31), mqttv311 (311) or mqttv5 (5). Default mqttv311."),
    flag(Some('x'), None, Some("session-expiry"), "session expiry interval in seconds (MQTT v5); -1 never expires."),
    flag(None, Some("connect-timeout"), Some("secs"), "seconds allowed for connecting (TCP, TLS, WebSocket and CONNACK). Default 30."),
    flag(None, Some("help"), None, "display this message."),
    flag(None, Some("nodelay"), None, "accepted for compatibility; Nagle's algorithm is always disabled."),
    flag(None, Some("quiet"), None, "don't print error messages."),
    flag(None, Some("will-payload"), Some("payload"), "payload of the client's will. Defaults to zero length."),
    flag(None, Some("will-qos"), Some("qos"), "QoS of the will."),
    flag(None, Some("will-retain"), None, "make the will retained."),
    flag(None, Some("will-topic"), Some("topic"), "topic of the will."),
    flag(None, Some("cafile"), Some("file"), "PEM file of trusted CA certificates; enables TLS."),
    flag(None, Some("tls-use-os-certs"), None, "enable TLS, trusting the system's CA certificates."),
    flag(None, Some("cert"), Some("file"), "PEM client certificate (enables TLS); needs --key."),
    flag(None, Some("key"), Some("file"), "PEM private key of the client certificate."),
    flag(None, Some("insecure"), None, "do not check that the server certificate's name matches the host."),
    flag(None, Some("tls-alpn"), Some("protocol"), "TLS ALPN protocol to offer."),
    flag(None, Some("ws"), None, "connect over WebSocket (subprotocol mqtt); wss with TLS."),
    flag(None, Some("ws-path"), Some("path"), "WebSocket request path. Defaults to /mqtt."),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clap_description_is_consistent() {
        // clap's own checks: no duplicate short or long names, ids, positions.
        command().debug_assert();
    }

    #[test]
    fn flags_are_found_by_either_name() {
        let host = PUB.flag("-h").map(Flag::names);
        assert_eq!(host.as_deref(), Some("-h, --host"));
        assert_eq!(PUB.flag("--host").map(Flag::names), host);
        assert!(PUB.flag("-C").is_none(), "-C is sub's");
        assert!(SUB.flag("-C").is_some());
        assert!(PUB.flag("-hx").is_none());
        assert!(PUB.flag("host").is_none());
        assert!(PUB.flag("--").is_none());
        assert!(PASSWD.flag("-h").is_some_and(|f| f.long == Some("help")));
    }

    #[test]
    fn help_lists_each_option_once_in_order() {
        let help = SUB.help();
        assert!(help.starts_with("culex sub: subscribe to topics"), "{help}");
        let c = help.find("\n -c, --disable-clean-session : ");
        let big_c = help.find("\n -C : ");
        let d = help.find("\n -d, --debug : ");
        assert!(c < big_c && big_c < d && c.is_some(), "{help}");
        // Continuation lines are indented under the text.
        assert!(help.contains(
            " --reconnect : when the connection is lost (or cannot be made), retry with exponential\n               backoff"
        ), "{help}");
        for flag in SUB.flags() {
            assert_eq!(
                help.matches(&format!("\n {} : ", flag.names())).count(),
                1,
                "{}",
                flag.names()
            );
        }
    }

    #[test]
    fn synopses_name_only_real_options() {
        for tool in TOOLS {
            let words = tool
                .usage
                .split(|c: char| c.is_whitespace() || "[]{}|".contains(c))
                .filter(|w| w.starts_with('-') && *w != "-");
            for word in words {
                assert!(
                    tool.flag(word).is_some(),
                    "culex {} usage: {word}",
                    tool.name
                );
            }
        }
    }

    #[test]
    fn tools_are_looked_up_by_name() {
        assert_eq!(tool("pub").map(|t| t.name), Some("pub"));
        assert!(tool("help").is_none());
    }
}
