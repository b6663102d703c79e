//! Orchestration of a run: phases (connect, idle, publish, settle), client
//! side in-process or in worker processes, server and generator sampling,
//! progress lines, and assembling the final report.

use std::time::{Duration, Instant};

use crate::channels;
use crate::churn::ResumeReport;
use crate::cli::{self, Args, Mode, PublishVia};
use crate::load::{self, CpuMark, GeneratorLoad, ProcLoad};
use crate::pool::{ClientPool, PoolConfig};
use crate::procfs::unix_ns;
use crate::procfs::{self, ServerProbe, ServerSample};
use crate::publisher::{Plan, Protocol, Publisher};
use crate::ramp::{self, Ramp};
use crate::reactor::{PUB_BASE, Reactor};
use crate::report::{FanoutReport, RampReport, ServerFigures, ThroughputReport};
use crate::stats::{Histograms, PoolStats};
use crate::thresholds::{self, Measured, Verdict};
use crate::worker::{Progress, WorkerConfig, WorkerSet};

/// Where the clients live.
enum Side {
    /// In this process's reactor.
    Local,
    Workers(WorkerSet),
}

/// A run in progress.
struct Bench {
    args: Args,
    reactor: Reactor,
    side: Side,
    workers: usize,
    /// Start of the measured phase in this process (see [`crate::load`]).
    phase_mark: Option<CpuMark>,
    /// When the ramp (if any) started.
    ramp_origin: Option<Instant>,
    t0: Instant,
    deadline: Instant,
    last_progress: Instant,
    last_deliveries: (Instant, u64),
}

type Res<T> = Result<T, String>;

impl Bench {
    /// Sets up the reactor and the clients (connecting starts on the first turn).
    fn new(args: &Args, clients: usize, expected: Option<u64>) -> Res<Self> {
        let addr = cli::resolve(&args.host, args.port)?;
        let host_header = format!("{}:{}", args.host, args.port);
        let source_ips = args.source_ips.clone().map(|s| s.0).unwrap_or_default();
        // Under a ramp, clients that join while events flow check for gaps,
        // which needs a publisher that keeps order.
        let check_gaps =
            args.ramp.is_some() && (args.publish == PublishVia::Redis || args.in_flight <= 1);
        let disruption = args.disruption();
        let per_worker = args
            .clients_per_worker
            .unwrap_or_else(|| procfs::nofile_hard_limit().saturating_sub(256) as usize)
            .max(1);
        let mut reactor = Reactor::new().map_err(|e| format!("poll: {e}"))?;
        // One client-holding process per available core by default, so that
        // the generator's own CPU is not what the run measures; more when the
        // open-file limit requires; never more processes than clients.
        let procs = args
            .procs
            .map_or_else(load::available_cores, |p| p as usize);
        let workers = procs.max(clients.div_ceil(per_worker)).min(clients).max(1);
        let side = if workers == 1 {
            reactor.pool = Some(ClientPool::new(PoolConfig {
                addr,
                host_header,
                path: args.ws_path.clone(),
                clients,
                source_ips,
                connect_concurrency: args.connect_concurrency,
                handshake_timeout: args.handshake_timeout,
                expected_events: expected,
                event_type: args.event_type.clone(),
                first_index: 0,
                channels: args.channels,
                ramp: args.ramp.is_some(),
                check_gaps,
                disrupt: disruption.clone(),
                marked_messages: args.publish_template.is_some(),
            }));
            Side::Local
        } else {
            let configs: Vec<WorkerConfig> = split(clients, workers)
                .into_iter()
                .enumerate()
                .map(|(i, (first, n))| {
                    let mut ips = source_ips.clone();
                    if !ips.is_empty() {
                        let k = i % ips.len();
                        ips.rotate_left(k);
                    }
                    WorkerConfig {
                        index: i,
                        addr,
                        host_header: host_header.clone(),
                        path: args.ws_path.clone(),
                        clients: n,
                        source_ips: ips,
                        connect_concurrency: args.connect_concurrency.div_ceil(workers),
                        handshake_timeout_s: args.handshake_timeout.as_secs_f64(),
                        expected_events: expected,
                        event_type: args.event_type.clone(),
                        first_index: first,
                        channels: args.channels,
                        settle_timeout_s: args.settle_timeout.as_secs_f64(),
                        max_duration_s: args.max_duration.as_secs_f64(),
                        progress_interval_s: args.progress_interval.as_secs_f64(),
                        burn_cpu: args.test_burn_cpu,
                        ramp: args.ramp.clone(),
                        total_clients: clients,
                        check_gaps,
                        disrupt: disruption.as_ref().map(|d| d.share(n, clients)),
                        marked_messages: args.publish_template.is_some(),
                    }
                })
                .collect();
            let waker = reactor.waker().map_err(|e| format!("waker: {e}"))?;
            Side::Workers(WorkerSet::spawn(&configs, waker)?)
        };
        let now = Instant::now();
        Ok(Bench {
            args: args.clone(),
            reactor,
            side,
            workers,
            phase_mark: None,
            ramp_origin: None,
            t0: now,
            deadline: now + args.max_duration,
            last_progress: now,
            last_deliveries: (now, 0),
        })
    }

    fn progress(&self) -> Progress {
        match &self.side {
            Side::Local => self
                .reactor
                .pool
                .as_ref()
                .map(Progress::of)
                .unwrap_or_default(),
            Side::Workers(w) => w.progress(),
        }
    }

    fn out_of_time(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// One reactor turn plus worker messages.
    fn turn(&mut self) -> Res<()> {
        let wait = match self.side {
            Side::Local if self.args.test_burn_cpu && self.phase_mark.is_some() => Duration::ZERO,
            // The ramp's target moves continuously, churn is due every
            // 1/N s: follow closely.
            Side::Local if self.ramp_origin.is_some() || self.args.disruption().is_some() => {
                Duration::from_millis(10)
            }
            // Worker messages wake the reactor (see `WorkerSet::spawn`).
            Side::Local | Side::Workers(_) => Duration::from_millis(50),
        };
        self.reactor.turn(wait).map_err(|e| format!("poll: {e}"))?;
        if let (Side::Local, Some(ramp), Some(origin)) =
            (&self.side, &self.args.ramp, self.ramp_origin)
        {
            // One process holds every client: its share is the whole target.
            let t = origin.elapsed().as_secs_f64();
            self.reactor.follow_ramp(ramp.target_at(t));
        }
        if let Side::Workers(w) = &mut self.side {
            w.pump();
            let crashed = w.crashed();
            if !crashed.is_empty() && !w.states.iter().all(|s| s.final_stats.is_some() || s.gone) {
                return Err(format!("worker(s) {crashed:?} exited early"));
            }
        }
        Ok(())
    }

    /// Prints a progress line to stderr, at most once per interval.
    fn report_progress(&mut self, phase: &str) {
        let every = self.args.progress_interval;
        let now = Instant::now();
        if every.is_zero() || now.duration_since(self.last_progress) < every {
            return;
        }
        self.last_progress = now;
        let p = self.progress();
        let t = now.duration_since(self.t0).as_secs_f64();
        let mut line = format!(
            "[{t:7.1}s] {phase:<8} clients {}/{} connected, {} failed",
            p.connected - p.closed_early - p.retired,
            p.clients,
            p.failed
        );
        if p.closed_early > 0 {
            line += &format!(", {} closed", p.closed_early);
        }
        if let (Some(ramp), Some(origin)) = (&self.args.ramp, self.ramp_origin) {
            line += &format!(
                ", {} retired, target {}",
                p.retired,
                ramp.target_at(origin.elapsed().as_secs_f64())
            );
        }
        if let Some(pb) = &self.reactor.publisher
            && pb.started_at().is_some()
        {
            line += &format!(" | sent {} ({} ok, {} err)", pb.issued, pb.ok, pb.errors);
        }
        if p.deliveries > 0 {
            let (t_prev, d_prev) = self.last_deliveries;
            let dt = now.duration_since(t_prev).as_secs_f64().max(1e-3);
            line += &format!(
                " | deliveries {} ({:.0}/s), complete clients {}",
                p.deliveries,
                (p.deliveries - d_prev.min(p.deliveries)) as f64 / dt,
                p.complete_clients
            );
        }
        self.last_deliveries = (now, p.deliveries);
        eprintln!("{line}");
    }

    /// Connect phase: until every client connected or failed.
    fn connect_all(&mut self) -> Res<()> {
        let limit = Instant::now() + self.args.connect_timeout;
        // Bounded by the connect timeout and the run deadline.
        while !self.progress().connect_done {
            if Instant::now() >= limit || self.out_of_time() {
                return Err(format!(
                    "connect phase timed out after {:.0} s",
                    self.args.connect_timeout.as_secs_f64()
                ));
            }
            self.turn()?;
            self.report_progress("connect");
        }
        Ok(())
    }

    /// Keeps serving sockets for `d`.
    fn idle(&mut self, d: Duration) -> Res<()> {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.out_of_time() {
            self.turn()?;
            self.report_progress("idle");
        }
        Ok(())
    }

    /// Creates and connects the publisher; waits (bounded) until it is ready.
    fn open_publisher(
        &mut self,
        proto: Protocol,
        addr: std::net::SocketAddr,
        plan: Plan,
        in_flight: usize,
    ) -> Res<()> {
        self.reactor.publisher = Some(Publisher::new(addr, proto, plan, in_flight, PUB_BASE));
        self.reactor.connect_publisher();
        let limit = Instant::now() + Duration::from_secs(10);
        // Bounded: 10 s.
        loop {
            let p = self.reactor.publisher.as_ref().expect("publisher set");
            if p.ready() {
                return if p.live_conns() == 0 {
                    Err(format!(
                        "publisher could not connect to {addr}: {:?}",
                        p.error_reasons
                    ))
                } else {
                    Ok(())
                };
            }
            if Instant::now() >= limit {
                return Err(format!("publisher connect to {addr} timed out"));
            }
            self.turn()?;
        }
    }

    /// Runs the publisher until everything is issued and answered.
    fn publish(&mut self) -> Res<()> {
        self.publish_until(Instant::now(), "publish")
    }

    /// Starts the publisher, then serves everything until it has issued
    /// and been answered for every event, and `not_before` has passed.
    fn publish_until(&mut self, not_before: Instant, phase: &str) -> Res<()> {
        self.reactor
            .publisher
            .as_mut()
            .expect("publisher set")
            .start(Instant::now());
        // Bounded by `not_before`, then by the run deadline.
        while Instant::now() < not_before
            || !self
                .reactor
                .publisher
                .as_ref()
                .expect("publisher set")
                .done(Instant::now())
        {
            if self.out_of_time() {
                return Err(format!("run deadline reached during the {phase} phase"));
            }
            self.turn()?;
            self.report_progress(phase);
        }
        Ok(())
    }

    /// Starts the measured phase: every generator process measures its own
    /// load from here.
    fn start_phase(&mut self) {
        let origin_ns = unix_ns();
        match &mut self.side {
            Side::Workers(w) => w.broadcast(&format!("mark {origin_ns}")),
            Side::Local => {
                if let Some(p) = self
                    .reactor
                    .pool
                    .as_mut()
                    .filter(|_| self.args.ramp.is_some())
                {
                    p.start_series(origin_ns);
                }
            }
        }
        self.phase_mark = Some(CpuMark::now());
        let now = Instant::now();
        if self.args.ramp.is_some() {
            self.ramp_origin = Some(now);
        }
        if let Some(p) = self.reactor.pool.as_mut() {
            p.start_disruption(now);
        }
    }

    /// Publishing is over: no more churn or storm; workers start their
    /// settle timeout.
    fn events_done(&mut self) {
        match &mut self.side {
            Side::Workers(w) => w.broadcast(&format!("published {}", procfs::unix_ns())),
            Side::Local => {
                if let Some(p) = self.reactor.pool.as_mut() {
                    p.stop_disruption();
                }
            }
        }
    }

    /// Ends the measured phase in this process: its load since the start.
    fn end_phase(&mut self) -> Option<ProcLoad> {
        self.phase_mark.take().map(|m| m.since("main".into()))
    }

    /// The generator's load over the phase: this process's plus the workers'
    /// (call after [`Bench::finish_clients`], which collects their reports).
    fn generator_load(&self, main: Option<ProcLoad>) -> Option<GeneratorLoad> {
        let main = main?;
        let phase_s = main.wall_s;
        let mut procs = vec![main];
        if let Side::Workers(w) = &self.side {
            procs.extend(w.loads());
        }
        Some(GeneratorLoad::assess(
            load::available_cores(),
            phase_s,
            procs,
        ))
    }

    /// Waits until every client has every event, or the settle timeout.
    fn settle(&mut self) -> Res<()> {
        self.events_done();
        let until = Instant::now() + self.args.settle_timeout;
        // Bounded by the settle timeout.
        while !self.progress().all_received && Instant::now() < until && !self.out_of_time() {
            self.turn()?;
            self.report_progress("settle");
        }
        Ok(())
    }

    /// Stops the clients and returns their merged statistics.
    fn finish_clients(&mut self) -> PoolStats {
        match &mut self.side {
            Side::Local => self.reactor.finish_pool().unwrap_or_default(),
            Side::Workers(w) => {
                w.broadcast("stop");
                w.finish(Duration::from_secs(10))
            }
        }
    }
}

/// CPU seconds of workers at the end of their connect phase.
fn workers_connect_cpu(side: &Side) -> f64 {
    match side {
        Side::Local => 0.0,
        Side::Workers(w) => w.states.iter().map(|s| s.cpu_connect_s).sum(),
    }
}

/// Splits `clients` over `workers` processes: (global index of the first
/// client, client count) per worker, contiguous and in order, so client `i`
/// keeps its global index (and channel) whatever the split.
fn split(clients: usize, workers: usize) -> Vec<(usize, usize)> {
    let mut first = 0;
    (0..workers)
        .map(|i| {
            let n = clients / workers + usize::from(i < clients % workers);
            first += n;
            (first - n, n)
        })
        .collect()
}

fn rate_per_sec(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

fn publish_protocol(args: &Args) -> Res<(Protocol, std::net::SocketAddr)> {
    match args.publish {
        PublishVia::Http => Ok((
            Protocol::Http {
                host_header: format!("{}:{}", args.host, args.port),
                path: args.events_path.clone(),
                template: args.publish_template.clone().map(|t| {
                    (
                        t,
                        args.publish_header.clone(),
                        args.template_channel.clone(),
                    )
                }),
            },
            cli::resolve(&args.host, args.port)?,
        )),
        PublishVia::Redis if args.publish_template.is_some() => {
            Err("--publish-template is an HTTP request: not with --publish redis".into())
        }
        PublishVia::Redis => {
            let url = args
                .redis
                .as_deref()
                .ok_or("--publish redis needs --redis URL")?;
            let u = cli::parse_redis_url(url)?;
            Ok((
                Protocol::Redis {
                    channel: args.redis_channel.clone(),
                    auth: u.password.clone().map(|p| (u.user.clone(), p)),
                },
                cli::resolve(&u.host, u.port)?,
            ))
        }
    }
}

/// Checks `--churn` / `--storm-at` against a phase of `phase_s` seconds of
/// events (`None`: unpaced, no time for them).
fn check_disruption(args: &Args, phase_s: Option<f64>) -> Res<()> {
    let Some(d) = args.disruption() else {
        return Ok(());
    };
    let Some(phase_s) = phase_s else {
        return Err("--churn and --storm-at act while events flow: they need --rate".into());
    };
    if let Some(s) = d.storm
        && s.at_s >= phase_s
    {
        return Err(format!(
            "--storm-at {} s is not before the last event ({phase_s:.1} s into publishing)",
            s.at_s
        ));
    }
    Ok(())
}

/// The churn / storm figures and the problems they show.
fn resume_report(
    args: &Args,
    stats: &PoolStats,
    problems: &mut Vec<String>,
) -> Option<ResumeReport> {
    let r = ResumeReport::new(&args.disruption()?, &stats.resume);
    problems.extend(r.problems(
        args.limits.max_loss.is_some(),
        args.limits.max_connect_failures.is_some(),
    ));
    Some(r)
}

/// Judges the CI thresholds; each failed one becomes a problem naming the
/// limit and the figure.
fn judge_thresholds(args: &Args, m: &Measured, problems: &mut Vec<String>) -> Vec<Verdict> {
    let verdicts = thresholds::judge(&args.limits, m);
    for v in verdicts.iter().filter(|v| !v.passed) {
        problems.push(format!("threshold failed: {}", v.describe()));
    }
    verdicts
}

/// Runs `--mode fanout`.
pub fn fanout(args: &Args) -> Res<FanoutReport> {
    let clients = args.clients.unwrap_or(1000);
    let events = args.events.unwrap_or(100);
    check_disruption(args, args.rate.map(|r| events as f64 / r))?;
    let probe = ServerProbe { pid: args.pid };
    let (proto, pub_addr) = publish_protocol(args)?;
    let mut problems: Vec<String> = Vec::new();

    let s_before = probe.sample();
    let cpu_before = procfs::self_cpu_s();
    let mut b = Bench::new(args, clients, Some(events))?;
    eprintln!(
        "herald-bench: {clients} clients ({} process{}), {events} events{} via {:?} -> {}:{}",
        b.workers,
        if b.workers > 1 { "es" } else { "" },
        if args.channels > 0 {
            format!(" over {} channels", args.channels)
        } else {
            String::new()
        },
        args.publish,
        args.host,
        args.port
    );

    // Connect.
    let t_connect = Instant::now();
    let mut s_connected = ServerSample::default();
    let mut publish_phase = Duration::ZERO;
    let mut s_pub_start = ServerSample::default();
    let mut main_load: Option<ProcLoad> = None;
    let connect_phase = match b.connect_all() {
        Ok(()) => t_connect.elapsed(),
        Err(e) => {
            problems.push(e);
            t_connect.elapsed()
        }
    };
    let s_connect_done = probe.sample();
    let cpu_connect_done = procfs::self_cpu_s();
    let p = b.progress();
    let (plan_rate, in_flight) = (args.rate, args.in_flight.max(1));
    if problems.is_empty() && p.connected - p.closed_early > 0 {
        let run: Res<()> = (|| {
            b.idle(args.idle)?;
            s_connected = probe.sample();
            let plan = Plan {
                total: Some(events),
                duration: None,
                rate: plan_rate,
                event_type: args.event_type.clone(),
                pad: args.pad,
                channels: args.channels,
            };
            b.open_publisher(proto, pub_addr, plan, in_flight)?;
            s_pub_start = probe.sample();
            b.start_phase();
            let t_pub = Instant::now();
            let r = b.publish().and_then(|()| b.settle());
            publish_phase = t_pub.elapsed();
            main_load = b.end_phase();
            r
        })();
        if let Err(e) = run {
            problems.push(e);
        }
    } else if problems.is_empty() {
        problems.push("no client connected".into());
    }
    let s_after = probe.sample();
    let workers_cpu_connect = workers_connect_cpu(&b.side);
    let stats = b.finish_clients();
    let generator = b.generator_load(main_load);

    let pb = b.reactor.publisher.as_ref();
    let issued = pb.map_or(0, |p| p.issued);
    let publish_ok = pb.map_or(0, |p| p.ok);
    let publish_errors = pb.map_or(0, |p| p.errors);
    let first_send = pb.and_then(|p| p.first_send_ns);
    let last_send = pb.and_then(|p| p.last_send_ns);
    let publish_seconds = match (first_send, last_send) {
        (Some(a), Some(z)) => (z.saturating_sub(a)) as f64 / 1e9,
        _ => 0.0,
    };
    let delivery_seconds = match (first_send, stats.last_delivery_ns) {
        (Some(a), Some(z)) => z.saturating_sub(a) as f64 / 1e9,
        _ => 0.0,
    };
    let order_guaranteed = args.publish == PublishVia::Redis || in_flight == 1;
    // Per connected client, its channel's event count (all events when off).
    let expected_deliveries = stats.expected_deliveries;

    if stats.failed > 0 && args.limits.max_connect_failures.is_none() {
        problems.push(format!("{} client(s) failed to connect", stats.failed));
    }
    if stats.closed_early > 0 {
        problems.push(format!("{} client(s) closed early", stats.closed_early));
    }
    if stats.lost > 0 && args.limits.max_loss.is_none() {
        problems.push(format!(
            "{} deliveries missing ({} of {} clients incomplete)",
            stats.lost,
            stats.connected - stats.complete_clients,
            stats.connected
        ));
    }
    if stats.duplicates > 0 {
        problems.push(format!("{} duplicate deliveries", stats.duplicates));
    }
    if stats.connected == clients as u64
        && expected_deliveries
            != channels::expected_deliveries(clients as u64, args.channels, events)
    {
        problems.push(format!(
            "internal: clients expect {expected_deliveries} deliveries, the channel arithmetic {}",
            channels::expected_deliveries(clients as u64, args.channels, events)
        ));
    }
    if stats.wrong_channel > 0 {
        problems.push(format!(
            "{} deliveries of another channel's events",
            stats.wrong_channel
        ));
    }
    if order_guaranteed && stats.out_of_order > 0 {
        problems.push(format!("{} out-of-order deliveries", stats.out_of_order));
    }
    if publish_errors > 0 {
        problems.push(format!("{publish_errors} publish errors"));
    }
    if issued < events && b.reactor.publisher.is_some() {
        problems.push(format!("only {issued} of {events} events published"));
    }
    let resume = resume_report(args, &stats, &mut problems);
    let deliveries_per_sec = rate_per_sec(stats.deliveries, delivery_seconds);
    let thresholds = judge_thresholds(
        args,
        &Measured {
            p99_us: if args.rate.is_some() {
                &stats.sched_latency
            } else {
                &stats.latency
            }
            .summary()
            .map(|l| l.p99),
            loss: Some(stats.lost + stats.resume.counts.reset_gap_events),
            expected: expected_deliveries,
            deliveries_per_sec: Some(deliveries_per_sec),
            connect_failures: stats.failed + stats.resume.counts.resume_failed,
        },
        &mut problems,
    );

    let server = ServerFigures {
        server_pid: args.pid,
        server_rss_before_bytes: s_before.rss_bytes,
        server_rss_connected_bytes: s_connected.rss_bytes,
        server_rss_after_bytes: s_after.rss_bytes,
        server_rss_per_connection_bytes: match (s_before.rss_bytes, s_connected.rss_bytes) {
            (Some(a), Some(z)) if stats.connected > 0 => {
                Some(((z as f64 - a as f64) / stats.connected as f64).round())
            }
            _ => None,
        },
        server_cpu_connect_s: delta(s_before.cpu_s, s_connect_done.cpu_s),
        server_cpu_publish_s: delta(s_pub_start.cpu_s, s_after.cpu_s),
        server_cpu_publish_util: delta(s_pub_start.cpu_s, s_after.cpu_s)
            .filter(|_| !publish_phase.is_zero())
            .map(|c| c / publish_phase.as_secs_f64()),
    };
    let gen_cpu_connect = cpu_connect_done - cpu_before + workers_cpu_connect;
    let gen_cpu_publish = generator.as_ref().map_or(0.0, |g| g.cpu_s);
    let per_delivery_us =
        |cpu_s: f64| (stats.deliveries > 0).then(|| cpu_s / stats.deliveries as f64 * 1e6);
    let pub_rtt = pb.and_then(|p| p.rtt.summary());
    let error_reasons = pb.map(|p| p.error_reasons.clone()).unwrap_or_default();
    Ok(FanoutReport {
        mode: "fanout",
        target: format!("{}:{}", args.host, args.port),
        publish: match args.publish {
            PublishVia::Http => "http",
            PublishVia::Redis => "redis",
        },
        clients: clients as u64,
        channels: args.channels,
        workers: b.workers,
        connected: stats.connected,
        connect_failed: stats.failed,
        closed_early: stats.closed_early,
        failures: stats.failures.clone(),
        connect_seconds: stats.connect_seconds,
        connects_per_sec: rate_per_sec(stats.connected, stats.connect_seconds),
        handshake_us: stats.handshake.summary(),
        events,
        rate: args.rate,
        in_flight,
        published: issued,
        publish_ok,
        publish_errors,
        publish_error_reasons: error_reasons,
        publish_seconds,
        publish_events_per_sec: rate_per_sec(issued, publish_seconds),
        publish_rtt_us: pub_rtt,
        expected_deliveries,
        deliveries: stats.deliveries,
        lost: stats.lost,
        duplicates: stats.duplicates,
        out_of_order: stats.out_of_order,
        order_guaranteed,
        foreign_frames: stats.foreign,
        wrong_channel: stats.wrong_channel,
        complete_clients: stats.complete_clients,
        delivery_seconds,
        deliveries_per_sec,
        latency_us: stats.latency.summary(),
        sched_latency_us: stats.sched_latency.summary(),
        resume,
        thresholds,
        first_delivery_ns: stats.first_delivery_ns,
        last_delivery_ns: stats.last_delivery_ns,
        histograms: Histograms::of(&stats),
        server_cpu_per_delivery_us: server.server_cpu_publish_s.and_then(per_delivery_us),
        gen_cpu_per_delivery_us: generator.as_ref().and_then(|g| per_delivery_us(g.cpu_s)),
        server,
        connect_phase_seconds: connect_phase.as_secs_f64(),
        publish_phase_seconds: publish_phase.as_secs_f64(),
        gen_cpu_connect_s: gen_cpu_connect,
        gen_cpu_publish_s: gen_cpu_publish,
        gen_cpu_publish_util: if publish_phase.is_zero() {
            0.0
        } else {
            gen_cpu_publish / publish_phase.as_secs_f64()
        },
        generator_saturated: generator.as_ref().is_some_and(|g| g.saturated),
        generator,
        ok: problems.is_empty(),
        problems,
    })
}

/// Runs `--ramp`: clients follow the target over time while events are
/// published at `--rate` throughout.
pub fn ramp(args: &Args, ramp: &Ramp) -> Res<RampReport> {
    let rate = args
        .rate
        .ok_or("--ramp publishes throughout the ramp: it needs --rate EVENTS_PER_SEC")?;
    if args.channels > 0 {
        return Err("--ramp does not support --channels".into());
    }
    let duration_s = ramp.duration_s();
    let events = args
        .events
        .unwrap_or_else(|| ((rate * duration_s).floor() as u64).max(1));
    let clients = ramp.total_opens() as usize;
    check_disruption(args, Some(duration_s.min(events as f64 / rate)))?;
    let probe = ServerProbe { pid: args.pid };
    let (proto, pub_addr) = publish_protocol(args)?;
    let in_flight = args.in_flight.max(1);
    let order_guaranteed = args.publish == PublishVia::Redis || in_flight == 1;
    let mut problems: Vec<String> = Vec::new();
    let s_before = probe.sample();
    let mut b = Bench::new(args, clients, None)?;
    eprintln!(
        "herald-bench: ramp over {duration_s:.1} s ({clients} clients opened in all, {} process{}), \
         {events} events at {rate}/s via {:?} -> {}:{}",
        b.workers,
        if b.workers > 1 { "es" } else { "" },
        args.publish,
        args.host,
        args.port
    );
    let mut s_start = s_before;
    let mut s_end = s_before;
    let mut main_load: Option<ProcLoad> = None;
    let mut phase = Duration::ZERO;
    let run: Res<()> = (|| {
        let plan = Plan {
            total: Some(events),
            duration: Some(Duration::from_secs_f64(duration_s)),
            rate: Some(rate),
            event_type: args.event_type.clone(),
            pad: args.pad,
            channels: 0,
        };
        b.open_publisher(proto, pub_addr, plan, in_flight)?;
        s_start = probe.sample();
        b.start_phase();
        let t0 = Instant::now();
        b.publish_until(t0 + Duration::from_secs_f64(duration_s), "ramp")?;
        b.events_done();
        // Deliveries of the last events are still on their way, and
        // clients dropped by the last churns come back after the reconnect
        // delay (ending before would count the generator's cut as theirs).
        b.idle(Duration::from_millis(500) + args.reconnect_delay)?;
        phase = t0.elapsed();
        s_end = probe.sample();
        main_load = b.end_phase();
        Ok(())
    })();
    if let Err(e) = run {
        problems.push(e);
    }
    let stats = b.finish_clients();
    let generator = b.generator_load(main_load);
    let pb = b.reactor.publisher.as_ref();
    let issued = pb.map_or(0, |p| p.issued);
    let publish_errors = pb.map_or(0, |p| p.errors);
    if stats.failed > 0 && args.limits.max_connect_failures.is_none() {
        problems.push(format!("{} client(s) failed to connect", stats.failed));
    }
    if stats.closed_early > 0 {
        problems.push(format!(
            "{} client(s) closed by the server",
            stats.closed_early
        ));
    }
    if order_guaranteed && stats.gaps > 0 && args.limits.max_loss.is_none() {
        problems.push(format!(
            "{} events missing between events clients received",
            stats.gaps
        ));
    }
    if stats.duplicates > 0 {
        problems.push(format!("{} duplicate deliveries", stats.duplicates));
    }
    if publish_errors > 0 {
        problems.push(format!("{publish_errors} publish errors"));
    }
    if issued < events && b.reactor.publisher.is_some() {
        problems.push(format!("only {issued} of {events} events published"));
    }
    if stats.deliveries == 0 {
        problems.push("no event was delivered".into());
    }
    let resume = resume_report(args, &stats, &mut problems);
    let deliveries_per_sec = rate_per_sec(stats.deliveries, duration_s);
    let loss = stats.gaps + stats.resume.counts.reset_gap_events;
    let thresholds = judge_thresholds(
        args,
        &Measured {
            p99_us: stats.sched_latency.summary().map(|l| l.p99),
            loss: order_guaranteed.then_some(loss),
            expected: stats.deliveries + loss,
            deliveries_per_sec: Some(deliveries_per_sec),
            connect_failures: stats.failed + stats.resume.counts.resume_failed,
        },
        &mut problems,
    );
    let server_cpu_s = delta(s_start.cpu_s, s_end.cpu_s);
    let per_delivery_us =
        |cpu_s: f64| (stats.deliveries > 0).then(|| cpu_s / stats.deliveries as f64 * 1e6);
    Ok(RampReport {
        mode: "ramp",
        target: format!("{}:{}", args.host, args.port),
        publish: match args.publish {
            PublishVia::Http => "http",
            PublishVia::Redis => "redis",
        },
        duration_s,
        clients: clients as u64,
        workers: b.workers,
        connected: stats.connected,
        connect_failed: stats.failed,
        closed_early: stats.closed_early,
        retired: stats.retired,
        failures: stats.failures.clone(),
        handshake_us: stats.handshake.summary(),
        connect_from_due_us: stats.connect_from_due.summary(),
        events,
        rate,
        in_flight,
        published: issued,
        publish_errors,
        publish_error_reasons: pb.map(|p| p.error_reasons.clone()).unwrap_or_default(),
        deliveries: stats.deliveries,
        gaps: stats.gaps,
        gaps_checked: order_guaranteed,
        duplicates: stats.duplicates,
        foreign_frames: stats.foreign,
        latency_us: stats.latency.summary(),
        sched_latency_us: stats.sched_latency.summary(),
        phases: ramp::phase_reports(ramp, &stats.series),
        series: ramp::series_report(ramp, &stats.series),
        resume,
        deliveries_per_sec,
        thresholds,
        first_delivery_ns: stats.first_delivery_ns,
        last_delivery_ns: stats.last_delivery_ns,
        histograms: Histograms::of(&stats),
        server_cpu_per_delivery_us: server_cpu_s.and_then(per_delivery_us),
        gen_cpu_per_delivery_us: generator.as_ref().and_then(|g| per_delivery_us(g.cpu_s)),
        server: ServerFigures {
            server_pid: args.pid,
            server_rss_before_bytes: s_before.rss_bytes,
            server_rss_connected_bytes: None,
            server_rss_after_bytes: s_end.rss_bytes,
            server_rss_per_connection_bytes: None,
            server_cpu_connect_s: None,
            server_cpu_publish_s: server_cpu_s,
            server_cpu_publish_util: server_cpu_s
                .filter(|_| !phase.is_zero())
                .map(|c| c / phase.as_secs_f64()),
        },
        generator_saturated: generator.as_ref().is_some_and(|g| g.saturated),
        generator,
        ok: problems.is_empty(),
        problems,
    })
}

/// Runs `--mode throughput`.
pub fn throughput(args: &Args) -> Res<ThroughputReport> {
    if args.publish != PublishVia::Http {
        return Err("--mode throughput measures HTTP publishing (--publish http)".into());
    }
    let subscribers = args.clients.unwrap_or(0);
    let probe = ServerProbe { pid: args.pid };
    let (proto, addr) = publish_protocol(args)?;
    let mut problems = Vec::new();
    let s_before = probe.sample();
    let mut b = Bench::new(args, subscribers, None)?;
    eprintln!(
        "herald-bench: throughput, {} connections for {:.1} s{}, {subscribers} idle subscribers -> {}:{}",
        args.connections,
        args.duration.as_secs_f64(),
        args.events
            .map_or(String::new(), |m| format!(" or {m} requests")),
        args.host,
        args.port
    );
    let mut s_connected = s_before;
    let mut s_start = s_before;
    let mut s_end = s_before;
    let mut main_load: Option<ProcLoad> = None;
    let mut phase = Duration::ZERO;
    let run: Res<()> = (|| {
        if subscribers > 0 {
            b.connect_all()?;
            b.idle(args.idle)?;
        }
        s_connected = probe.sample();
        let plan = Plan {
            total: args.events,
            duration: Some(args.duration),
            rate: args.rate,
            event_type: args.event_type.clone(),
            pad: args.pad,
            channels: args.channels,
        };
        b.open_publisher(proto, addr, plan, args.connections.max(1))?;
        s_start = probe.sample();
        b.start_phase();
        let t = Instant::now();
        let r = b.publish();
        phase = t.elapsed();
        s_end = probe.sample();
        main_load = b.end_phase();
        r?;
        // Let subscribers drain what is still in flight.
        if subscribers > 0 {
            b.idle(Duration::from_millis(500))?;
        }
        Ok(())
    })();
    if let Err(e) = run {
        problems.push(e);
    }
    let stats = b.finish_clients();
    let generator = b.generator_load(main_load);
    let pb = b.reactor.publisher.as_ref();
    let start = pb.and_then(|p| p.started_at());
    let duration_s = match (start, pb.and_then(|p| p.last_reply)) {
        (Some(a), Some(z)) => z.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let ok_n = pb.map_or(0, |p| p.ok);
    let errors = pb.map_or(0, |p| p.errors);
    if errors > 0 {
        problems.push(format!("{errors} request errors"));
    }
    if stats.failed > 0 && args.limits.max_connect_failures.is_none() {
        problems.push(format!("{} subscriber(s) failed to connect", stats.failed));
    }
    if stats.closed_early > 0 {
        problems.push(format!("{} subscriber(s) closed early", stats.closed_early));
    }
    let delivery_s = match (pb.and_then(|p| p.first_send_ns), stats.last_delivery_ns) {
        (Some(a), Some(z)) => z.saturating_sub(a) as f64 / 1e9,
        _ => 0.0,
    };
    let gen_cpu = generator.as_ref().map_or(0.0, |g| g.cpu_s);
    let deliveries_per_sec = rate_per_sec(stats.deliveries, delivery_s);
    let thresholds = judge_thresholds(
        args,
        &Measured {
            p99_us: pb.and_then(|p| p.rtt.summary()).map(|l| l.p99),
            loss: None,
            expected: 0,
            deliveries_per_sec: (subscribers > 0).then_some(deliveries_per_sec),
            connect_failures: stats.failed,
        },
        &mut problems,
    );
    Ok(ThroughputReport {
        mode: "throughput",
        target: format!("{}:{}", args.host, args.port),
        connections: args.connections.max(1),
        subscribers: subscribers as u64,
        subscribers_connected: stats.connected,
        connect_failed: stats.failed,
        workers: if subscribers > 0 { b.workers } else { 0 },
        duration_s,
        requests: pb.map_or(0, |p| p.issued),
        requests_ok: ok_n,
        request_errors: errors,
        error_reasons: pb.map(|p| p.error_reasons.clone()).unwrap_or_default(),
        requests_per_sec: rate_per_sec(ok_n, duration_s),
        latency_us: pb.and_then(|p| p.rtt.summary()),
        subscriber_deliveries: stats.deliveries,
        deliveries_per_sec,
        thresholds,
        server: ServerFigures {
            server_pid: args.pid,
            server_rss_before_bytes: s_before.rss_bytes,
            server_rss_connected_bytes: s_connected.rss_bytes,
            server_rss_after_bytes: s_end.rss_bytes,
            server_rss_per_connection_bytes: match (s_before.rss_bytes, s_connected.rss_bytes) {
                (Some(a), Some(z)) if stats.connected > 0 => {
                    Some(((z as f64 - a as f64) / stats.connected as f64).round())
                }
                _ => None,
            },
            server_cpu_connect_s: delta(s_before.cpu_s, s_connected.cpu_s),
            server_cpu_publish_s: delta(s_start.cpu_s, s_end.cpu_s),
            server_cpu_publish_util: delta(s_start.cpu_s, s_end.cpu_s)
                .filter(|_| !phase.is_zero())
                .map(|c| c / phase.as_secs_f64()),
        },
        gen_cpu_s: gen_cpu,
        gen_cpu_util: if phase.is_zero() {
            0.0
        } else {
            gen_cpu / phase.as_secs_f64()
        },
        generator_saturated: generator.as_ref().is_some_and(|g| g.saturated),
        generator,
        ok: problems.is_empty(),
        problems,
    })
}

/// Runs the mode selected on the command line; returns the exit code.
pub fn main_with(args: &Args) -> i32 {
    procfs::raise_nofile_limit();
    let probe = ServerProbe { pid: args.pid };
    if !probe.alive() {
        eprintln!(
            "herald-bench: no process with pid {}",
            args.pid.unwrap_or(0)
        );
        return 2;
    }
    let (json, table, ok) = match (args.mode, &args.ramp) {
        (Mode::Fanout, Some(r)) => match ramp(args, r) {
            Ok(r) => (serde_json::to_string(&r), r.table(), r.ok),
            Err(e) => {
                eprintln!("herald-bench: {e}");
                return 2;
            }
        },
        (Mode::Throughput, Some(_)) => {
            eprintln!("herald-bench: --ramp is a fan-out run (not --mode throughput)");
            return 2;
        }
        (Mode::Fanout, None) => match fanout(args) {
            Ok(r) => (serde_json::to_string(&r), r.table(), r.ok),
            Err(e) => {
                eprintln!("herald-bench: {e}");
                return 2;
            }
        },
        (Mode::Throughput, None) => match throughput(args) {
            Ok(r) => (serde_json::to_string(&r), r.table(), r.ok),
            Err(e) => {
                eprintln!("herald-bench: {e}");
                return 2;
            }
        },
    };
    eprint!("{table}");
    match json {
        Ok(j) => println!("{j}"),
        Err(e) => eprintln!("herald-bench: json: {e}"),
    }
    if ok { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_split_keeps_global_indexes() {
        assert_eq!(split(10, 3), [(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split(2, 3), [(0, 1), (1, 1), (2, 0)]);
        // Channel of every client, worker by worker, equals the one-process
        // assignment, and the per-client expectations add up.
        let (clients, n, events) = (10_007usize, 1000u64, 2003u64);
        let mut chans = Vec::new();
        let mut expected = 0;
        for (first, k) in split(clients, 7) {
            for i in first..first + k {
                let ch = channels::of_client(i as u64, n);
                chans.push(ch);
                expected += channels::events_on(ch, n, events);
            }
        }
        let single: Vec<_> = (0..clients as u64)
            .map(|i| channels::of_client(i, n))
            .collect();
        assert_eq!(chans, single);
        assert_eq!(
            expected,
            channels::expected_deliveries(clients as u64, n, events)
        );
    }
}
