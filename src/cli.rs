//! The command line (DESIGN.md section 2): one function per subcommand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Config, LogFormat};
use crate::log::AccessLog;
use crate::server::{self, Drained};
use crate::state::State;

/// causeway: a reverse proxy whose every 502 and 504 is accurate, and whose log says why.
#[derive(Debug, Parser)]
#[command(name = "causeway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "causeway.toml", env = "CAUSEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file like `nginx -t`: exit 0, or 1 with FILE:LINE:COL: message.
    #[command(alias = "t")]
    Check {
        /// Config file.
        #[arg(short, long, default_value = "causeway.toml", env = "CAUSEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Probe every server of every (or one) upstream: resolve, connect, TLS, one request.
    /// Prints a checklist with the cause and a fix hint of the first failing step; exits 1 if
    /// any server fails, 2 if the config is invalid or names no such upstream.
    Diagnose {
        /// Config file.
        #[arg(short, long, default_value = "causeway.toml", env = "CAUSEWAY_CONFIG")]
        config: PathBuf,
        /// Only this upstream's servers.
        upstream: Option<String>,
        /// Print JSON instead of the checklist.
        #[arg(long)]
        json: bool,
    },
    /// Run a deliberately broken upstream that reproduces each failure on its own path.
    Faults {
        /// Plain HTTP listener.
        #[arg(long, default_value = "127.0.0.1:9080")]
        listen: SocketAddr,
        /// TLS listener with broken certificates chosen by SNI.
        #[arg(long, default_value = "127.0.0.1:9443")]
        tls_listen: SocketAddr,
        /// Where to write the CA certificate and unix sockets.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Start faults and a proxy on loopback, send one request per failure, print a table.
    Demo,
}

/// Runs the parsed command line.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run_blocking(&config),
        Command::Diagnose {
            config,
            upstream,
            json,
        } => diagnose(&config, upstream.as_deref(), json),
        Command::Faults {
            listen,
            tls_listen,
            dir,
        } => faults(listen, tls_listen, dir),
        Command::Demo => crate::demo::run(),
    }
}

/// `causeway faults`: serve the broken upstream until SIGINT/SIGTERM.
fn faults(listen: SocketAddr, tls_listen: SocketAddr, dir: Option<PathBuf>) -> ExitCode {
    init_tracing("info", LogFormat::Text);
    let mut options = crate::faults::FaultsOptions::loopback();
    options.listen = listen;
    options.tls_listen = Some(tls_listen);
    if let Some(dir) = dir {
        options.dir = dir;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::faults::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faults: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `causeway diagnose`: the checklist (or JSON) on stdout; exit 1 if any server fails, 2 if
/// nothing could be probed.
fn diagnose(path: &Path, upstream: Option<&str>, json: bool) -> ExitCode {
    use std::io::IsTerminal;
    let config = match config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: configuration is not valid; nothing probed",
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(crate::diagnose::run(config, upstream)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("causeway diagnose: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{:#}", crate::diagnose::render_json(&report));
    } else {
        // Colours only for a person at a terminal, and never with NO_COLOR (no-color.org).
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", crate::diagnose::render_text(&report, color));
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `causeway check`: every error with its location, or a summary.
pub fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(config) => {
            let servers: usize = config.upstreams.iter().map(|u| u.servers.len()).sum();
            println!(
                "{}: ok: {} listener(s), {} route(s), {} upstream(s) with {} server(s)",
                path.display(),
                config.server.listen.len(),
                config.routes.len(),
                config.upstreams.len(),
                servers
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            eprintln!(
                "{}: {} error(s); configuration is not valid",
                path.display(),
                errors.0.len()
            );
            ExitCode::FAILURE
        }
    }
}

/// Installs the error log (tracing) on stderr; `RUST_LOG` overrides the configured level.
///
/// rustls logs what a client did wrong (an IP address as SNI, say) at WARN once per
/// connection; causeway reports TLS failures itself, so rustls is held to errors unless the
/// configured level names it.
pub fn init_tracing(level: &str, format: LogFormat) {
    let level = if level.contains("rustls") || level == "off" {
        level.to_string()
    } else {
        format!("{level},rustls=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn run_blocking(path: &Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(&config.log.level, config.log.format);
    // The control runtime (signals, reloads, admin, health checks); requests are served on
    // `server.workers` threads of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(path.to_path_buf(), config))
}

/// `causeway run`: serve until SIGTERM/SIGINT, reload on SIGHUP, reopen logs on SIGUSR1.
pub async fn run(path: PathBuf, config: Config) -> ExitCode {
    let access = match AccessLog::open(&config.log.access_log, config.log.access_format) {
        Ok(access) => access,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the access log");
            return ExitCode::FAILURE;
        }
    };
    let shutdown_timeout = config.server.shutdown_timeout;
    let state = match State::build(config) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let workers = state.config.server.workers;
    let placement = server::Placement::Workers(workers);
    let running = match server::start_on(state, access.clone(), placement).await {
        Ok(running) => running,
        Err(e) => {
            tracing::error!(error = %e, "cannot bind listeners");
            return ExitCode::FAILURE;
        }
    };
    for bound in &running.bound {
        tracing::info!(listen = ?bound, workers, "causeway listening");
    }
    if let Some(admin) = running.admin {
        tracing::info!(listen = %admin, "admin listening: /metrics /healthz /upstreams");
    }
    let (mut term, mut int, mut hup, mut usr1) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let mut shutdown_timeout = shutdown_timeout;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                match reload(&path) {
                    Ok(state) => {
                        shutdown_timeout = state.config.server.shutdown_timeout;
                        running.swap(state);
                        tracing::info!(config = %path.display(), "configuration reloaded");
                    }
                    Err(e) => tracing::error!(config = %path.display(), "reload rejected, old configuration keeps serving: {e}"),
                }
            }
            _ = usr1.recv() => {
                if let Err(e) = access.reopen() {
                    tracing::error!(error = %e, "cannot reopen the access log");
                }
            }
        }
    }
    tracing::info!(
        "shutting down: no new connections; waiting up to {}s for in-flight requests",
        shutdown_timeout.as_secs()
    );
    let drained = tokio::select! {
        drained = running.shutdown(shutdown_timeout) => drained,
        _ = term.recv() => Drained::TimedOut,
        _ = int.recv() => Drained::TimedOut,
    };
    match drained {
        Drained::Clean => {
            tracing::info!("all in-flight requests finished; bye");
            ExitCode::SUCCESS
        }
        Drained::TimedOut => {
            tracing::warn!(
                "stopped with requests still in flight (shutdown_timeout or a second signal)"
            );
            ExitCode::SUCCESS
        }
    }
}

/// Loads, validates and compiles the config again; any error leaves the old state in place.
fn reload(path: &Path) -> Result<State, String> {
    let config = config::load(path).map_err(|e| e.to_string())?;
    State::build(config).map_err(|e| e.to_string())
}
