//! The `herald` binary: configuration from env and flags, logging, signals, then the reactor.
//! No protocol logic lives here.

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::{Arc, mpsc};

use clap::Parser;
use herald::auth::{self, TokenSpec};
use herald::config::{Cli, Command, Config, TokenArgs};
use herald::reactor::process::Process;
use herald::reactor::{Reactor, bind_listeners};
use log::{error, info};

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(Command::Token(args)) = cli.command.take() {
        return print_token(&args);
    }
    init_logging(&cli.log_level);
    let config = match Config::from_cli(cli, std::env::var("REDIS_URL").ok()) {
        Ok(config) => config,
        Err(e) => {
            error!("configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `config.threads` reactors, each on a thread of its own with its own listener, until a
/// graceful shutdown completes in all of them. A reactor that fails or panics takes the
/// process down with it (the others close their clients with 1001 and exit): a process serving
/// from some of its listeners only would be a silent outage for the clients hashed to the others.
fn serve(config: Config) -> std::io::Result<()> {
    let broker = match &config.redis {
        Some(url) => format!("redis {url} channel {:?}", config.channel),
        None => "embedded (single node; set PUBSUB_CACHE_URL to join replicas)".into(),
    };
    let limits = format!("{:?}", config.limits);
    let listeners = bind_listeners(&config)?;
    let local_addr = listeners[0].local_addr()?;
    let process = Arc::new(Process::new(&config));

    // SIGTERM (Kubernetes, kindling) and SIGINT (Ctrl-C) become a readable socket in reactor
    // 0, which moves the process to its next stage; every reactor follows.
    let (signals_rx, signals_tx) = std::os::unix::net::UnixStream::pair()?;
    signals_rx.set_nonblocking(true)?;
    signals_tx.set_nonblocking(true)?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(signal, signals_tx.try_clone()?)?;
    }
    let mut signals = Some(mio::net::UnixStream::from_std(signals_rx));

    info!(
        "herald {} listening on http://{local_addr} with {} reactor thread(s); broker: {broker}",
        env!("CARGO_PKG_VERSION"),
        listeners.len(),
    );
    info!("limits: {limits}");
    let (done_tx, done_rx) = mpsc::channel();
    let reactors = listeners.len();
    for (index, listener) in listeners.into_iter().enumerate() {
        let config = config.clone();
        let process = process.clone();
        let signals = signals.take();
        let done = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("reactor-{index}"))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let mut reactor = Reactor::new(config, process, index, listener)?;
                    if let Some(signals) = signals {
                        reactor.watch_signals(signals)?;
                        info!("page: {}", reactor.static_source());
                    }
                    reactor.run()
                }));
                let _ = done.send((index, outcome));
            })?;
    }
    let mut first_error = None;
    for _ in 0..reactors {
        let Ok((index, outcome)) = done_rx.recv() else {
            break;
        };
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("reactor {index}: {e}"),
            Err(_) => format!("reactor {index} panicked"),
        };
        error!("{failure}; closing every reactor");
        process.close();
        first_error.get_or_insert(failure);
    }
    match first_error {
        None => Ok(()),
        Some(failure) => Err(std::io::Error::other(failure)),
    }
}

/// `herald token`: prints a token on stdout, or why not on stderr (exit 2).
fn print_token(args: &TokenArgs) -> ExitCode {
    let minted = std::env::var(&args.secret_env)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("set {} to the server's AUTH_JWT_SECRET", args.secret_env))
        .and_then(|secret| {
            let spec = TokenSpec {
                sub: args.sub.clone(),
                channels: args.channels.clone(),
                publish: args.publish.clone(),
                ttl: auth::parse_ttl(&args.ttl)?,
                issuer: args.iss.clone(),
                audience: args.aud.clone(),
            };
            auth::mint_hs256(secret.as_bytes(), &spec)
        });
    match minted {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald token: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    env_logger::Builder::from_env(env)
        .format(|buf, record| {
            writeln!(
                buf,
                "{} {:5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
}
