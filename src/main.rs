//! The `herald` binary: configuration from env and flags, logging, signals, then the reactor.
//! No protocol logic lives here.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use herald::config::{Cli, Config};
use herald::reactor::Reactor;
use log::{error, info};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
