//! The `herald` binary: configuration from env and flags, logging, signals, then the reactor.
//! No protocol logic lives here.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use herald::auth::{self, TokenSpec};
use herald::config::{Cli, Command, Config, TokenArgs};
use herald::reactor::Reactor;
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

fn serve(config: Config) -> std::io::Result<()> {
    let broker = match &config.redis {
        Some(url) => format!("redis {url} channel {:?}", config.channel),
        None => "embedded (single node; set PUBSUB_CACHE_URL to join replicas)".into(),
    };
    let limits = format!("{:?}", config.limits);
    let mut reactor = Reactor::bind(config)?;

    // SIGTERM (Kubernetes, kindling) and SIGINT (Ctrl-C) become a readable socket in the
    // reactor, which then shuts down gracefully.
    let (signals_rx, signals_tx) = std::os::unix::net::UnixStream::pair()?;
    signals_rx.set_nonblocking(true)?;
    signals_tx.set_nonblocking(true)?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(signal, signals_tx.try_clone()?)?;
    }
    reactor.watch_signals(mio::net::UnixStream::from_std(signals_rx))?;

    info!(
        "herald {} listening on http://{} ; broker: {broker}; page: {}",
        env!("CARGO_PKG_VERSION"),
        reactor.local_addr(),
        reactor.static_source()
    );
    info!("limits: {limits}");
    reactor.run()
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
