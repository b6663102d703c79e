//! Command-line interface: the `clap` definition of every option, plus the
//! small parsers used by it (source-IP ranges, seconds, Redis URLs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::churn::{Disruption, Storm};
use crate::ramp::Ramp;
use crate::template::PublishTemplate;
use crate::thresholds::Limits;

/// herald-bench: load generator and checker for WebSocket fan-out servers.
///
/// It opens WebSocket clients, publishes events, and checks every delivery
/// for loss, duplicates and order while it measures latency; it can shape
/// the load over time, churn connections, storm reconnects, and fail CI
/// runs on thresholds. It speaks Herald's API (`GET /ws`, one JSON text
/// frame per event; `POST /events?event_type=..&message=..`) and any
/// server that can be made to look like it (see OTHER SERVERS).
///
/// MODES
///   fan-out (default)  -c clients connect, then -e events are published
///                      (paced with --rate, or as fast as --in-flight
///                      allows); every client must get every event once,
///                      in order. Latency from the send time, and from the
///                      scheduled send time when paced (no coordinated
///                      omission).
///   --ramp T:N,...     target open connections over time, linear between
///                      points, events at --rate throughout; clients that
///                      join mid-stream check for gaps after their first
///                      event. Per-phase figures and a per-second series.
///   --mode throughput  publish requests per second over --connections
///                      keep-alive connections, optionally with idle
///                      subscribers.
///   herald-bench merge A.json B.json ...
///                      one report from runs made at the same time on
///                      several generator hosts (HDR histograms merged);
///                      see `herald-bench merge --help`.
///
/// DISRUPTION (fan-out and ramp, needs --rate)
///   --churn N closes N connections a second and reopens each (after
///   --reconnect-delay) with `since=<last event id>`; --storm-at T drops
///   --storm-fraction of the clients at once and reconnects them all. Every
///   client must still get every event exactly once, in order. A server
///   that cannot replay says so with `{"op":"reset"}`: those events are
///   reported as reset gaps, apart from silent loss. Reconnects are timed
///   from their scheduled time.
///
/// THE GENERATOR'S OWN LIMITS
///   Clients are spread over --procs processes (default: one per core
///   available). Each process measures its CPU and its wait for a CPU; a
///   run in which the generator was saturated is flagged GENERATOR
///   SATURATED (JSON `generator_saturated`), so its figures are never taken
///   for the server's. With --pid, the server's RSS and CPU are sampled and
///   its CPU per delivery is reported beside the generator's.
///
/// OUTPUT
///   Progress on stderr once per --progress-interval, a table on stderr at
///   the end, and one JSON object with every figure on stdout (including
///   the full HDR histograms, for `merge`).
///
/// EXIT STATUS
///   0  every check and threshold passed
///   1  a check failed (failed connect, lost, duplicated or out-of-order
///      event, reset gap, publish error) or a CI threshold failed (named
///      with its measured figure)
///   2  bad options or setup error (server unreachable, --ramp without
///      --rate, ...)
///
/// OTHER SERVERS
///   Paths (--ws-path, --events-path) and the publish request
///   (--publish-template, --publish-header) are options; clients find an
///   event by `type`/`message` fields or by a `<type>:<seq>:...` marker in
///   any JSON string of a frame. Clients send nothing but the upgrade and
///   pongs, so servers that need a client-side protocol after the upgrade
///   (Socket.IO/Engine.IO, Centrifugo's bidirectional protocol, STOMP) are
///   not spoken; resume is Herald's `since=` only. The README section "Load
///   testing with herald-bench" shows a Centrifugo setup.
///
/// Tip: pin the generator and the server to different cores, e.g.
/// `taskset -c 0 herald --port 21080` and `taskset -c 1 herald-bench ...`
/// (worker processes inherit the affinity).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "herald-bench",
    version,
    verbatim_doc_comment,
    after_long_help = "EXAMPLES
  Fan-out, 5,000 clients, 100 events as fast as possible, server sampled:
    herald-bench -p 21080 -c 5000 -e 100 --pid <SERVER_PID>
  Paced, latency from the schedule:
    herald-bench -p 21080 -c 2000 -e 1000 --rate 200
  Ramp up to 15,000 connections, hold, ramp down, 20 events/s throughout:
    herald-bench -p 21080 --ramp 0s:0,30s:15000,60s:15000,90s:0 --rate 20
  Churn 50 connections/s with resume, a reconnect storm at 20 s:
    herald-bench -p 21080 -c 5000 -e 1200 --rate 40 --churn 50 \\
      --reconnect-delay 0.5 --storm-at 20s
  CI gate:
    herald-bench -p 21080 -c 1000 -e 200 --rate 20 --max-p99-ms 50 \\
      --max-loss 0 --min-deliveries-per-sec 15000 --max-connect-failures 0
  Several generator hosts, merged:
    herald-bench --host h -p 8000 --event-type bench-a ... > a.json   (host A)
    herald-bench --host h -p 8000 --event-type bench-b ... > b.json   (host B)
    herald-bench merge a.json b.json --max-p99-ms 50
  More source addresses (about 28k ports each), Redis publishing, channels:
    herald-bench -p 21080 -c 60000 --source-ips 127.0.0.2-127.0.0.20 -e 20
    herald-bench -p 21080 --publish redis --redis redis://127.0.0.1:6379 -c 1000 -e 100
    herald-bench -p 21080 -c 10000 --channels 1000 -e 2000 --in-flight 4
  Publish requests per second:
    herald-bench -p 21080 --mode throughput --connections 64 --duration 10 -c 1000",
    after_help = "Run `herald-bench --help` for modes, exit status, other servers and examples."
)]
pub struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Fanout)]
    pub mode: Mode,

    /// Server host name or address (WebSocket and HTTP).
    #[arg(help_heading = "Target", long, default_value = "127.0.0.1")]
    pub host: String,

    /// Server port.
    #[arg(help_heading = "Target", short, long, default_value_t = 8000)]
    pub port: u16,

    /// WebSocket path.
    #[arg(help_heading = "Target", long, default_value = "/ws")]
    pub ws_path: String,

    /// HTTP publish path.
    #[arg(help_heading = "Target", long, default_value = "/events")]
    pub events_path: String,

    /// Number of WebSocket clients (fan-out: default 1000; throughput: idle
    /// subscribers, default 0).
    #[arg(help_heading = "Clients", short, long)]
    pub clients: Option<usize>,

    /// Fan-out: number of events to publish. Throughput: maximum number of
    /// requests (default: unlimited, bounded by --duration).
    #[arg(help_heading = "Publishing", short, long)]
    pub events: Option<u64>,

    /// Publish at this many events per second (paced; latency from the
    /// scheduled send time is reported too). At least 0.001 (fractions
    /// allowed, e.g. 0.25); 0, negative or NaN is refused. Omit it to publish
    /// unpaced, as fast as --in-flight allows.
    #[arg(help_heading = "Publishing", short, long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Load over time: target open connections at points in time, linear
    /// between them, e.g. `0s:0,30s:15000,60s:15000,90s:0` (times in s or
    /// m, the first at 0). Events are published throughout at --rate (all
    /// of --events, by default rate x duration). Each client checks that
    /// the events after its first arrive without gap or repeat. Reported per
    /// phase and as a time series, one entry per second: connections,
    /// connects/s, closes, deliveries/s, p50/p99, errors.
    #[arg(help_heading = "Load over time", long, value_parser = Ramp::parse)]
    pub ramp: Option<Ramp>,

    /// Churn: while events flow, close this many open connections per second
    /// (round robin over the clients that have received an event) and
    /// reopen each, after --reconnect-delay, with resume: `since=<the id of
    /// the last event it received>` on the WebSocket URL. Every client must
    /// still get every event exactly once, in order. A server that cannot
    /// replay says so with `{"op":"reset"}`: the events it skipped are
    /// reported as reset gaps (`resets`, `reset_gap_events`), apart from
    /// silent loss (`lost`, or `gaps` under --ramp); both fail the run.
    /// Reconnect latency is measured from the scheduled reconnect time.
    /// Needs --rate. Fractions allowed (0.5 = one every 2 s).
    #[arg(help_heading = "Churn and reconnect storms (with resume)", long, value_parser = parse_per_sec)]
    pub churn: Option<f64>,

    /// Reconnect storm: this long after publishing starts (e.g. `20s`), drop
    /// --storm-fraction of the clients that have received an event, all at
    /// once, and reconnect them all with resume (after --reconnect-delay).
    /// Reports the time until all were back, their reconnect latency, and
    /// any loss or reset. Needs --rate; must fall before the last event.
    #[arg(help_heading = "Churn and reconnect storms (with resume)", long, value_parser = parse_secs)]
    pub storm_at: Option<Duration>,

    /// Share of the clients the storm drops (0 < F <= 1).
    #[arg(help_heading = "Churn and reconnect storms (with resume)", long, default_value_t = 1.0, value_parser = parse_fraction)]
    pub storm_fraction: f64,

    /// Churn and storm: time from a drop to its reconnect (a client's
    /// backoff). Events published meanwhile must come with the resume.
    #[arg(help_heading = "Churn and reconnect storms (with resume)", long, default_value = "0", value_parser = parse_secs)]
    pub reconnect_delay: Duration,

    /// CI thresholds (`--max-p99-ms`, `--max-loss`,
    /// `--min-deliveries-per-sec`, `--max-connect-failures`).
    #[command(flatten, next_help_heading = "CI thresholds")]
    pub limits: Limits,

    /// Fan-out: publish requests in flight (HTTP: this many keep-alive
    /// connections with one request each; Redis: pipelined commands on one
    /// connection). Order of events is only guaranteed with 1 for HTTP.
    #[arg(help_heading = "Publishing", long, default_value_t = 1)]
    pub in_flight: usize,

    /// How events are published.
    #[arg(help_heading = "Publishing", long, value_enum, default_value_t = PublishVia::Http)]
    pub publish: PublishVia,

    /// Publish with this HTTP request instead of Herald's
    /// `POST /events?event_type=..&message=..`, to drive a server with
    /// another publish API: `METHOD /PATH[?QUERY] [BODY]`, with the event's
    /// fields in braces: {type}, {message} (`<seq>:<sent_ns>[:<sched_ns>]`),
    /// {marked} (`<type>:<message>`), {seq}, {channel}. Clients then also
    /// find the event as any JSON string starting with `<type>:<digit>`
    /// anywhere in a frame, so put {marked} where the server passes it
    /// through, e.g.
    /// `POST /api/publish {"channel":"{channel}","data":{"m":"{marked}"}}`.
    /// A 2xx answer counts as published.
    #[arg(help_heading = "Other servers", long, value_parser = PublishTemplate::parse)]
    pub publish_template: Option<PublishTemplate>,

    /// Extra header line for every publish request, e.g.
    /// `X-API-Key: secret` (repeatable).
    #[arg(help_heading = "Other servers", long, value_name = "NAME: VALUE")]
    pub publish_header: Vec<String>,

    /// {channel} of --publish-template without --channels.
    #[arg(help_heading = "Other servers", long, default_value = "events")]
    pub template_channel: String,

    /// Redis URL for `--publish redis`: redis://[[user]:password@]host:port[/db].
    #[arg(help_heading = "Publishing", long)]
    pub redis: Option<String>,

    /// Redis channel for `--publish redis` (with --channels: the prefix,
    /// events go to `<prefix>:ch<e % N>`).
    #[arg(help_heading = "Publishing", long, default_value = "events")]
    pub redis_channel: String,

    /// Spread clients and events over N channels (0 = off: everyone on the
    /// default channel). Client i connects to `/ws?channels=ch<i % N>`;
    /// event e goes to `POST /events/ch<e % N>` (Redis: `events:ch<e % N>`).
    /// Each client must get exactly its channel's events, none of another's.
    #[arg(help_heading = "Clients", long, default_value_t = 0)]
    pub channels: u64,

    /// Event type used for published events (clients ignore other types).
    #[arg(help_heading = "Publishing", long, default_value = "bench")]
    pub event_type: String,

    /// Append this many padding bytes to every event message.
    #[arg(help_heading = "Publishing", long, default_value_t = 0)]
    pub pad: usize,

    /// Maximum WebSocket handshakes in flight.
    #[arg(help_heading = "Clients", long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Source addresses to bind client sockets to, round robin: a range
    /// `127.0.0.2-127.0.0.20` or a comma list. Each gives ~28k ports.
    #[arg(help_heading = "Clients", long, value_parser = parse_source_ips)]
    pub source_ips: Option<SourceIps>,

    /// Processes that hold the WebSocket clients, split evenly (default: the
    /// cores available to herald-bench, as `available_parallelism` counts
    /// them: CPU affinity and cgroup CPU quotas honoured). With 1 the clients
    /// share the main process with the publisher; with more, each is a
    /// worker process and the main process only publishes. More are started
    /// when --clients-per-worker requires it.
    #[arg(help_heading = "Clients", long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub procs: Option<u32>,

    /// Clients per process at most; beyond this, more worker processes are
    /// started (default: open-file hard limit minus 256).
    #[arg(help_heading = "Clients", long)]
    pub clients_per_worker: Option<usize>,

    /// Give up on a single connect + handshake after this many seconds.
    #[arg(help_heading = "Clients", long, default_value = "10", value_parser = parse_secs)]
    pub handshake_timeout: Duration,

    /// Give up on the whole connect phase after this many seconds.
    #[arg(help_heading = "Timing", long, default_value = "300", value_parser = parse_secs)]
    pub connect_timeout: Duration,

    /// Idle time after all clients are connected, before sampling the
    /// server's RSS and publishing.
    #[arg(help_heading = "Timing", long, default_value = "1", value_parser = parse_secs)]
    pub idle: Duration,

    /// After the last publish, wait at most this long for deliveries.
    #[arg(help_heading = "Timing", long, default_value = "10", value_parser = parse_secs)]
    pub settle_timeout: Duration,

    /// Hard cap on the whole run.
    #[arg(help_heading = "Timing", long, default_value = "3600", value_parser = parse_secs)]
    pub max_duration: Duration,

    /// Server process id: sample its RSS (VmRSS) and CPU time per phase.
    #[arg(help_heading = "Target", long)]
    pub pid: Option<u32>,

    /// Throughput: number of keep-alive HTTP connections.
    #[arg(help_heading = "Throughput mode", long, default_value_t = 64)]
    pub connections: usize,

    /// Throughput: run for this many seconds (unless --events is reached).
    #[arg(help_heading = "Throughput mode", short, long, default_value = "10", value_parser = parse_secs)]
    pub duration: Duration,

    /// Seconds between progress lines on stderr (0 = none).
    #[arg(help_heading = "Timing", long, default_value = "1", value_parser = parse_secs)]
    pub progress_interval: Duration,

    /// Test only: every client-holding process spins instead of sleeping
    /// during the measured phase, so that the run is flagged as saturated.
    #[arg(long, hide = true)]
    pub test_burn_cpu: bool,

    /// Internal: run as a worker process with this JSON configuration.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

/// Benchmark mode.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every client must receive every event: loss, duplicates, order, latency.
    Fanout,
    /// Publish requests per second over keep-alive HTTP connections.
    Throughput,
}

/// Publishing channel.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishVia {
    /// `POST /events?event_type=..&message=..` over keep-alive connections.
    Http,
    /// `PUBLISH <channel> <json>` straight into Redis (needs --redis).
    Redis,
}

/// A parsed `--source-ips` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIps(pub Vec<IpAddr>);

/// Parses `a.b.c.d-a.b.c.e` (inclusive IPv4 range) or a comma list of addresses.
pub fn parse_source_ips(s: &str) -> Result<SourceIps, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                return Err(format!("bad range {part}"));
            }
            out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
        } else {
            out.push(part.parse().map_err(|e| format!("{part}: {e}"))?);
        }
    }
    if out.is_empty() {
        return Err("no addresses".into());
    }
    Ok(SourceIps(out))
}

/// Parses a non-negative number of seconds (fractions allowed).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim().trim_end_matches('s');
    let v: f64 = s.parse().map_err(|e| format!("{s}: {e}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s}: must be >= 0"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Slowest accepted `--rate`, events per second. Below it an event's
/// scheduled offset (`seq / rate` seconds) soon overflows a `Duration`.
pub const MIN_RATE: f64 = 0.001;

/// Parses `--rate`: events per second, a finite number of at least
/// [`MIN_RATE`]. A rate of 0 is refused rather than read as "unpaced": an
/// explicit pace that means its opposite would hide a typo, and unpaced is
/// already the default.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{s}: {e}"))?;
    if !v.is_finite() || v < MIN_RATE {
        return Err(format!(
            "{s}: must be a number of events per second of at least {MIN_RATE} \
             (omit --rate to publish unpaced, as fast as --in-flight allows)"
        ));
    }
    Ok(v)
}

/// Parses a number of things per second (`--churn`): finite, at least
/// [`MIN_RATE`].
pub fn parse_per_sec(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{s}: {e}"))?;
    if !v.is_finite() || v < MIN_RATE {
        return Err(format!(
            "{s}: must be a number per second of at least {MIN_RATE}"
        ));
    }
    Ok(v)
}

/// Parses a share: a number above 0 and at most 1.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{s}: {e}"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!("{s}: must be above 0 and at most 1"));
    }
    Ok(v)
}

impl Args {
    /// The churn and storm asked for, if any (the whole run's; each process
    /// takes its share, see [`Disruption::share`]).
    pub fn disruption(&self) -> Option<Disruption> {
        if self.churn.is_none() && self.storm_at.is_none() {
            return None;
        }
        Some(Disruption {
            churn_per_sec: self.churn.unwrap_or(0.0),
            reconnect_delay_s: self.reconnect_delay.as_secs_f64(),
            storm: self.storm_at.map(|at| Storm {
                at_s: at.as_secs_f64(),
                fraction: self.storm_fraction,
            }),
        })
    }
}

/// Resolves `host:port` to the first socket address (IPv4 preferred).
pub fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("resolve {host}: no address"))
}

/// A parsed `redis://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Parses `redis://[[user]:password@]host[:port][/db]` (db is ignored: pub/sub
/// channels are global).
pub fn parse_redis_url(url: &str) -> Result<RedisUrl, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{url}: expected redis://"))?;
    let rest = rest.split('/').next().unwrap_or("");
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (user, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
            None => (None, Some(a.to_string())),
        },
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|e| format!("{url}: port: {e}"))?),
        None => (hostport, 6379),
    };
    if host.is_empty() {
        return Err(format!("{url}: missing host"));
    }
    Ok(RedisUrl {
        host: host.to_string(),
        port,
        user,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_range_and_list() {
        let r = parse_source_ips("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(r.0.len(), 3);
        assert_eq!(r.0[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        let r = parse_source_ips("127.0.0.9, 127.0.0.2-127.0.0.3").unwrap();
        assert_eq!(r.0.len(), 3);
        assert!(parse_source_ips("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source_ips("").is_err());
    }

    #[test]
    fn redis_urls() {
        let u = parse_redis_url("redis://127.0.0.1:21379").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 21379));
        assert_eq!((u.user, u.password), (None, None));
        let u = parse_redis_url("redis://:secret@localhost/2").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("localhost", 6379));
        assert_eq!(u.password.as_deref(), Some("secret"));
        let u = parse_redis_url("redis://bob:pw@h:1").unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert!(parse_redis_url("http://x").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20").unwrap(), 20.0);
        assert_eq!(parse_rate("0.25").unwrap(), 0.25);
        for bad in ["0", "-1", "NaN", "inf", "-0", "1e-20", "x", ""] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn churn_and_storm_options() {
        assert_eq!(parse_per_sec("2.5").unwrap(), 2.5);
        assert!(parse_per_sec("0").is_err());
        assert_eq!(parse_fraction("1").unwrap(), 1.0);
        for bad in ["0", "1.5", "-0.1", "NaN"] {
            assert!(parse_fraction(bad).is_err(), "{bad:?} accepted");
        }
        let a = Args::parse_from(["herald-bench", "--churn", "5", "--storm-at", "2s"]);
        let d = a.disruption().unwrap();
        assert_eq!(d.churn_per_sec, 5.0);
        assert_eq!(d.storm.unwrap().at_s, 2.0);
        assert_eq!(d.storm.unwrap().fraction, 1.0);
        assert!(Args::parse_from(["herald-bench"]).disruption().is_none());
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_secs("10s").unwrap(), Duration::from_secs(10));
        assert!(parse_secs("-1").is_err());
    }
}
