//! `culex`: the MQTT broker binary. Command line after Mosquitto's: `-c FILE`, `-p PORT`, `-v`
//! (described in [`culex::cli`]), and the subcommands `passwd`, `pub`, `sub` and `help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::FromArgMatches;
use culex::cli::Cli;
use culex::privileges::Dropped;
use culex_config::Config;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    // Subcommands keep their Mosquitto-tool flags (`culex pub -h HOST` like `mosquitto_pub`), so
    // they parse their own arguments.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let rest = args.get(2..).unwrap_or_default();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("passwd") => return culex::cli::passwd::main(rest),
        Some("pub") => return culex::cli::publish::main(rest),
        Some("sub") => return culex::cli::subscribe::main(rest),
        Some("help") => return help(rest),
        // Hidden: for packagers (README, docs/cli.md).
        Some("generate-assets") => return culex::assets::main(rest),
        _ => {}
    }
    let matches = culex::cli::command().get_matches();
    if let Some(sub) = matches.subcommand_name() {
        // The subcommands are recognised only in first position (they parse their own flags).
        eprintln!("culex: `{sub}` must come first: culex {sub} [OPTIONS] (see `culex help {sub}`)");
        return ExitCode::from(2);
    }
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // A write past a file size limit (RLIMIT_FSIZE, e.g. systemd's LimitFSIZE=) must fail with
    // EFBIG, which the store retries until space returns, instead of killing the broker.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to "ignore" has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }

    // Logging is set up from the configuration, so the file is read first; its warnings are
    // logged once logging is up, its errors go straight to stderr.
    let mut warnings = Vec::new();
    let mut config = match &cli.config {
        None if cli.port.is_some() => Config::embedded_on_port(cli.port.unwrap_or_default()),
        None => Config::embedded_default(),
        Some(path) => match culex_config::load_file(path) {
            Ok(loaded) => {
                warnings = loaded.warnings;
                loaded.config
            }
            Err(e) => {
                eprintln!("{e}");
                if cli.check {
                    eprintln!("culex: configuration has errors");
                } else {
                    eprintln!("culex: configuration has errors; not starting");
                }
                return ExitCode::from(3);
            }
        },
    };
    init_logging(cli.verbose, &config.log);
    for w in &warnings {
        warn!("{w}");
    }
    if cli.check {
        if let Err(e) = culex::check_files(&config) {
            eprintln!("{e}");
            eprintln!("culex: configuration has errors");
            return ExitCode::from(3);
        }
        for note in culex::check_notes(&config) {
            println!("{note}");
        }
        println!("{}: configuration OK", display(&cli.config));
        return ExitCode::SUCCESS;
    }
    if let Some(port) = cli.port {
        config.listeners = Config::embedded_on_port(port).listeners;
    }
    if let Some(dir) = &cli.data_dir {
        config.persistence.enabled = true;
        config.persistence.dir.clone_from(dir);
    }
    if cli.reset_store {
        if !config.persistence.enabled {
            eprintln!("culex: --reset-store needs persistence (a config with `persistence true` or --data-dir)");
            return ExitCode::from(2);
        }
        if let Err(e) = culex::reset_store(&config.persistence.dir, &config.persistence.file) {
            eprintln!("culex: {e:#}");
            return ExitCode::FAILURE;
        }
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("culex")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("culex: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!("culex {} starting", env!("CARGO_PKG_VERSION"));
    match runtime.block_on(serve(&config, cli.config.as_deref())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("culex: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `culex help [SUBCOMMAND]`: the broker's help, or the subcommand's (the text of
/// `culex SUBCOMMAND --help`).
fn help(args: &[std::ffi::OsString]) -> ExitCode {
    let names: Vec<&str> = culex::cli::TOOLS.iter().map(|t| t.name).collect();
    match args {
        [] => top_level_help(),
        [name] if name == "help" => top_level_help(),
        [name] => match name.to_str().and_then(culex::cli::tool) {
            Some(tool) => {
                print!("{}", tool.help());
                ExitCode::SUCCESS
            }
            None => {
                eprintln!(
                    "culex help: no subcommand '{}'; the subcommands are {}",
                    name.to_string_lossy(),
                    names.join(", ")
                );
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!(
                "culex help: expected one subcommand name ({})",
                names.join(", ")
            );
            ExitCode::from(2)
        }
    }
}

fn top_level_help() -> ExitCode {
    match culex::cli::command().print_help() {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Runs the server until SIGINT/SIGTERM; SIGHUP reloads password, ACL and certificate files,
/// and the bridges from the configuration file.
async fn serve(config: &Config, config_path: Option<&std::path::Path>) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while the listeners are being bound must take the
    // clean path, not the default action.
    let mut signals = Signals::new()?;
    // A user that cannot be switched to stops the start before anything is bound.
    culex::privileges::check_user(config.user.as_deref())?;
    let mut server = culex::start(config).await?;
    // Listeners are bound and the store and log files open: root is no longer needed.
    if let Err(e) = switch_user(config) {
        server.shutdown().await;
        return Err(e);
    }
    culex::systemd::notify("READY=1\nSTATUS=serving");
    // WatchdogSec=: ping systemd at half the interval while the router answers.
    let watchdog = culex::systemd::watchdog_interval().map(|w| w / 2);
    let mut ticks = watchdog.map(tokio::time::interval);
    loop {
        let signal = match (&mut ticks, watchdog) {
            (Some(ticks), Some(limit)) => tokio::select! {
                s = signals.next() => s,
                _ = ticks.tick() => {
                    if server.alive(limit).await {
                        culex::systemd::notify("WATCHDOG=1");
                    } else {
                        warn!("the router or the store does not answer: not feeding the systemd watchdog");
                    }
                    continue;
                }
            },
            _ => signals.next().await,
        };
        if let Signal::Stop = signal {
            break;
        }
        info!("SIGHUP: reloading password, ACL and certificate files");
        culex::systemd::notify(&culex::systemd::reloading_message());
        // Failures are logged and counted by reload(); the old rules stay in force.
        let _ = server.reload().await;
        // Bridges come from the configuration file itself: re-read it.
        if let Some(path) = config_path {
            match culex_config::load_file(path) {
                Ok(loaded) => {
                    for change in server.reload_bridges(&loaded.config.bridges).await {
                        info!("{change}");
                    }
                    if *server.cluster_config() != loaded.config.cluster {
                        warn!(
                            "cluster settings changed in {}: they apply at the next restart; the running node keeps its backplane and name",
                            path.display()
                        );
                    }
                }
                Err(e) => warn!("bridges not reloaded, the running ones stay as they are: {e}"),
            }
        }
        culex::systemd::notify("READY=1\nSTATUS=serving");
    }
    culex::systemd::notify("STOPPING=1");
    info!("shutting down");
    server.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Switches a broker started as root to its `user` (see `culex::privileges`), logging what
/// it did.
fn switch_user(config: &Config) -> anyhow::Result<()> {
    match culex::privileges::drop_privileges(config.user.as_deref())? {
        Dropped::NotRoot => {}
        Dropped::StayedRoot => {
            warn!("running as root because the configuration says `user root`");
        }
        Dropped::To {
            user,
            uid,
            gid,
            fallback,
        } => {
            if fallback {
                warn!(
                    "user '{}' does not exist: running as '{user}' instead; create it \
                     (deploy/systemd/culex.sysusers) or name a user with `user`",
                    culex::privileges::DEFAULT_USER
                );
            }
            info!("running as user {user} (uid {uid}, gid {gid})");
        }
    }
    Ok(())
}

enum Signal {
    Reload,
    Stop,
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP.
struct Signals {
    /// SIGINT, registered at once like the others (`tokio::signal::ctrl_c()` registers only
    /// when first polled, and a Ctrl-C before that would kill the process).
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => Signal::Stop,
                _ = self.term.recv() => Signal::Stop,
                _ = self.hup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

fn display(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map_or_else(|| "(embedded default)".into(), |p| p.display().to_string())
}

/// Logs to stderr, as text or JSON lines (`log_format`), at the configured level; `-v` forces
/// debug and `RUST_LOG` overrides both.
fn init_logging(verbose: bool, log: &culex_config::Log) {
    use culex_config::{LogFormat, LogLevel};
    use tracing_subscriber::EnvFilter;
    let level = if verbose {
        LogLevel::Debug.max(log.level)
    } else {
        log.level
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.name()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
