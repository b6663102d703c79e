//! `herald-bench`: load generator for WebSocket fan-out servers with
//! Herald's API (`POST /events` publishes, every `/ws` client receives every
//! event as one JSON text frame). See `herald-bench --help`.
//!
//! Modules: [`cli`] options, [`channels`] the many-channels case, [`churn`]
//! churn and reconnect storms with resume, [`pool`] WebSocket clients, [`publisher`] HTTP /
//! Redis publishing, [`template`] other servers' publish requests, [`reactor`] the mio loop, [`run`] phase orchestration,
//! [`ramp`] load over time, [`worker`] multi-process split, [`load`] the
//! generator's own load and
//! saturation verdict, [`stats`] mergeable results, [`thresholds`] pass/fail limits for CI,
//! [`report`] output, [`merge`] reports of several hosts into one,
//! [`procfs`] process sampling, [`wire`] protocol parsing.

mod channels;
mod churn;
mod cli;
mod load;
mod merge;
mod pool;
mod procfs;
mod publisher;
mod ramp;
mod reactor;
mod report;
mod run;
mod stats;
mod template;
mod thresholds;
mod wire;
mod worker;

use clap::Parser;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("merge") {
        std::process::exit(merge::main_with(&argv[1..]));
    }
    let args = cli::Args::parse();
    let code = match &args.worker {
        Some(json) => worker::worker_main(json),
        None => run::main_with(&args),
    };
    std::process::exit(code);
}
