//! Final reports: the structs serialized as the single JSON line on stdout,
//! and the human-readable table printed to stderr.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::churn::ResumeReport;
use crate::load::GeneratorLoad;
use crate::merge::MergedReport;
use crate::ramp::{PhaseReport, SecondReport};
use crate::stats::{Histograms, LatencySummary};
use crate::thresholds::Verdict;

/// Server-side samples (present with `--pid`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerFigures {
    pub server_pid: Option<u32>,
    pub server_rss_before_bytes: Option<u64>,
    /// After all clients connected and idled.
    pub server_rss_connected_bytes: Option<u64>,
    pub server_rss_after_bytes: Option<u64>,
    /// (connected - before) / connected clients.
    pub server_rss_per_connection_bytes: Option<f64>,
    pub server_cpu_connect_s: Option<f64>,
    pub server_cpu_publish_s: Option<f64>,
    /// Server CPU / wall time during the publish phase (1.0 = one core busy).
    pub server_cpu_publish_util: Option<f64>,
}

/// Result of `--mode fanout`.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub mode: &'static str,
    pub target: String,
    pub publish: &'static str,
    pub clients: u64,
    /// `--channels` (0 = everyone on the default channel).
    pub channels: u64,
    /// Processes holding the clients (1: the main process itself).
    pub workers: usize,
    pub connected: u64,
    pub connect_failed: u64,
    pub closed_early: u64,
    pub failures: BTreeMap<String, u64>,
    /// First connect attempt to last handshake.
    pub connect_seconds: f64,
    pub connects_per_sec: f64,
    pub handshake_us: Option<LatencySummary>,
    pub events: u64,
    pub rate: Option<f64>,
    pub in_flight: usize,
    pub published: u64,
    pub publish_ok: u64,
    pub publish_errors: u64,
    pub publish_error_reasons: BTreeMap<String, u64>,
    /// First send to last send.
    pub publish_seconds: f64,
    pub publish_events_per_sec: f64,
    pub publish_rtt_us: Option<LatencySummary>,
    /// Sum over connected clients of their channel's events (connected
    /// clients x events without channels).
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Whether the publisher guarantees order (HTTP with in-flight 1, Redis).
    pub order_guaranteed: bool,
    pub foreign_frames: u64,
    /// Deliveries of another channel's events (routing errors).
    pub wrong_channel: u64,
    pub complete_clients: u64,
    /// First publish to last delivery.
    pub delivery_seconds: f64,
    pub deliveries_per_sec: f64,
    /// Send time to receipt.
    pub latency_us: Option<LatencySummary>,
    /// Scheduled send time to receipt (paced runs).
    pub sched_latency_us: Option<LatencySummary>,
    /// `--churn` / `--storm-at`: drops, reconnects with resume, resets.
    pub resume: Option<ResumeReport>,
    /// CI thresholds given, each with what was measured.
    pub thresholds: Vec<Verdict>,
    /// Unix time of the first and last delivery, nanoseconds (for merging
    /// the runs of several hosts).
    pub first_delivery_ns: Option<u64>,
    pub last_delivery_ns: Option<u64>,
    /// The full latency histograms (for `herald-bench merge`).
    pub histograms: Histograms,
    /// Server CPU time in the publish phase per delivery, microseconds.
    pub server_cpu_per_delivery_us: Option<f64>,
    /// Generator CPU time (all processes) in the publish phase per delivery.
    pub gen_cpu_per_delivery_us: Option<f64>,
    #[serde(flatten)]
    pub server: ServerFigures,
    pub connect_phase_seconds: f64,
    /// Publish start until every delivery arrived (or the settle timeout).
    pub publish_phase_seconds: f64,
    /// Generator CPU seconds (all processes) per phase.
    pub gen_cpu_connect_s: f64,
    pub gen_cpu_publish_s: f64,
    pub gen_cpu_publish_util: f64,
    /// The generator was saturated in the publish phase: the figures show
    /// its limit, not the server's (see `generator.saturation`).
    pub generator_saturated: bool,
    pub generator: Option<GeneratorLoad>,
    pub ok: bool,
    pub problems: Vec<String>,
}

/// Result of `--mode throughput`.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    pub mode: &'static str,
    pub target: String,
    pub connections: usize,
    pub subscribers: u64,
    pub subscribers_connected: u64,
    pub connect_failed: u64,
    pub workers: usize,
    /// First request to last response.
    pub duration_s: f64,
    pub requests: u64,
    pub requests_ok: u64,
    pub request_errors: u64,
    pub error_reasons: BTreeMap<String, u64>,
    pub requests_per_sec: f64,
    pub latency_us: Option<LatencySummary>,
    pub subscriber_deliveries: u64,
    pub deliveries_per_sec: f64,
    /// CI thresholds given, each with what was measured.
    pub thresholds: Vec<Verdict>,
    #[serde(flatten)]
    pub server: ServerFigures,
    pub gen_cpu_s: f64,
    pub gen_cpu_util: f64,
    /// As in the fan-out report: the figures show the generator's limit.
    pub generator_saturated: bool,
    pub generator: Option<GeneratorLoad>,
    pub ok: bool,
    pub problems: Vec<String>,
}

/// Result of a `--ramp` run.
#[derive(Debug, Clone, Serialize)]
pub struct RampReport {
    pub mode: &'static str,
    pub target: String,
    pub publish: &'static str,
    pub duration_s: f64,
    /// Clients opened in all (the ramp's rises added up).
    pub clients: u64,
    /// Processes holding the clients.
    pub workers: usize,
    pub connected: u64,
    pub connect_failed: u64,
    /// Closed by the server (or broken) while the ramp wanted them open.
    pub closed_early: u64,
    /// Closed by the generator as the target fell.
    pub retired: u64,
    pub failures: BTreeMap<String, u64>,
    pub handshake_us: Option<LatencySummary>,
    /// Connect + handshake from when the target made the client due (the
    /// generator's connect queue counts: no coordinated omission).
    pub connect_from_due_us: Option<LatencySummary>,
    pub events: u64,
    pub rate: f64,
    pub in_flight: usize,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_error_reasons: BTreeMap<String, u64>,
    pub deliveries: u64,
    /// Events missing between two events a client received.
    pub gaps: u64,
    /// Whether gaps count as loss (the publisher keeps order).
    pub gaps_checked: bool,
    pub duplicates: u64,
    pub foreign_frames: u64,
    pub latency_us: Option<LatencySummary>,
    pub sched_latency_us: Option<LatencySummary>,
    pub phases: Vec<PhaseReport>,
    /// Deliveries over the ramp's duration.
    pub deliveries_per_sec: f64,
    /// `--churn` / `--storm-at`: drops, reconnects with resume, resets.
    pub resume: Option<ResumeReport>,
    /// CI thresholds given, each with what was measured.
    pub thresholds: Vec<Verdict>,
    /// Unix time of the first and last delivery, nanoseconds (for merging
    /// the runs of several hosts).
    pub first_delivery_ns: Option<u64>,
    pub last_delivery_ns: Option<u64>,
    /// The full latency histograms (for `herald-bench merge`).
    pub histograms: Histograms,
    /// One entry per second since the ramp started.
    pub series: Vec<SecondReport>,
    pub server_cpu_per_delivery_us: Option<f64>,
    pub gen_cpu_per_delivery_us: Option<f64>,
    #[serde(flatten)]
    pub server: ServerFigures,
    pub generator_saturated: bool,
    pub generator: Option<GeneratorLoad>,
    pub ok: bool,
    pub problems: Vec<String>,
}

fn lat(l: &Option<LatencySummary>) -> String {
    match l {
        Some(l) => format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (us)",
            l.p50, l.p90, l.p99, l.p999, l.max
        ),
        None => "-".into(),
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn mib(v: Option<u64>) -> String {
    v.map_or("-".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{s:.3} s"))
}

fn map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Table(String);

impl Table {
    fn section(&mut self, name: &str) {
        let _ = writeln!(self.0, "{name}");
    }
    fn row(&mut self, k: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "  {k:<30} {v}");
    }
}

/// The churn / storm section.
fn resume_rows(t: &mut Table, r: &Option<ResumeReport>) {
    let Some(r) = r else { return };
    t.section("churn and reconnects (with resume)");
    if r.churn_per_sec > 0.0 {
        t.row(
            "churn",
            format!(
                "{}/s: {} dropped and reopened ({} due with no client to drop)",
                r.churn_per_sec, r.counts.churned, r.counts.churn_missed
            ),
        );
        t.row("reconnect from schedule", lat(&r.reconnect_us));
    }
    if let Some(s) = &r.storm {
        t.row(
            "storm",
            format!(
                "at {} s, {:.0}%: {} dropped, {} back, {} failed; all back after {}",
                s.at_s,
                s.fraction * 100.0,
                s.dropped,
                s.reconnected,
                s.failed,
                s.all_reconnected_s
                    .map_or("- (not all came back)".into(), |v| format!("{v:.3} s"))
            ),
        );
        t.row("storm reconnect from schedule", lat(&s.reconnect_us));
    }
    t.row(
        "reconnects",
        format!(
            "{} ok ({} without an id to resume from), {} failed, delay {} s",
            r.counts.resumed,
            r.counts.resumed_without_id,
            r.counts.resume_failed,
            r.reconnect_delay_s
        ),
    );
    t.row(
        "replayed deliveries",
        format!(
            "{} (sent while away; not in the latency above) {}",
            r.counts.replayed,
            lat(&r.replay_latency_us)
        ),
    );
    t.row(
        "resets (server gave up)",
        format!(
            "{} notices, {} deliveries not replayed (reported apart from loss)",
            r.counts.resets, r.counts.reset_gap_events
        ),
    );
}

fn server_rows(t: &mut Table, s: &ServerFigures) {
    if s.server_pid.is_none() {
        return;
    }
    t.section(&format!("server (pid {})", opt(s.server_pid)));
    t.row(
        "rss before/connected/after",
        format!(
            "{} / {} / {}",
            mib(s.server_rss_before_bytes),
            mib(s.server_rss_connected_bytes),
            mib(s.server_rss_after_bytes)
        ),
    );
    t.row(
        "rss per connection",
        s.server_rss_per_connection_bytes
            .map_or("-".into(), |b| format!("{b:.0} bytes")),
    );
    t.row(
        "cpu connect / publish",
        format!(
            "{} / {}",
            secs(s.server_cpu_connect_s),
            secs(s.server_cpu_publish_s)
        ),
    );
    t.row(
        "cpu util during publish",
        s.server_cpu_publish_util
            .map_or("-".into(), |u| format!("{:.0}% of a core", u * 100.0)),
    );
}

/// The generator's load, one row per process, and the saturation verdict.
fn generator_rows(t: &mut Table, g: &Option<GeneratorLoad>) {
    let Some(g) = g else {
        return;
    };
    t.row(
        "cpu in measured phase",
        format!(
            "{:.3} s = {:.2} of {} available cores over {:.3} s",
            g.cpu_s, g.used_cores, g.available_cores, g.phase_s
        ),
    );
    for p in &g.processes {
        t.row(
            &format!("  {} (pid {})", p.process, p.pid),
            format!(
                "{:.0}% of a core; reactor thread on a CPU or waiting for one {:.0}% of the \
                 phase ({:.0}% waiting)",
                p.cores() * 100.0,
                p.busy() * 100.0,
                if p.wall_s > 0.0 {
                    p.reactor_waiting_s / p.wall_s * 100.0
                } else {
                    0.0
                }
            ),
        );
    }
    t.row(
        "saturated",
        if g.saturated {
            "YES: the figures above are the generator's, not the server's"
        } else {
            "no"
        },
    );
}

/// The banner of a saturated run, as a line of its own.
fn banner(t: &mut Table, g: &Option<GeneratorLoad>) {
    if let Some(b) = g.as_ref().and_then(GeneratorLoad::banner) {
        t.section(&b);
    }
}

impl FanoutReport {
    pub fn table(&self) -> String {
        let mut t = Table(String::new());
        banner(&mut t, &self.generator);
        t.section(&format!(
            "herald-bench fanout -> {} (publish via {})",
            self.target, self.publish
        ));
        t.section("connect");
        t.row(
            "clients",
            format!(
                "{} connected / {} ({} failed, {} closed early, {} workers)",
                self.connected, self.clients, self.connect_failed, self.closed_early, self.workers
            ),
        );
        t.row(
            "connect time",
            format!(
                "{:.3} s ({:.0}/s)",
                self.connect_seconds, self.connects_per_sec
            ),
        );
        t.row("handshake", lat(&self.handshake_us));
        t.row(
            "channels",
            if self.channels == 0 {
                "1 (default; every client gets every event)".to_string()
            } else {
                format!(
                    "{} (ch<i % {0}>; ~{:.1} clients per channel)",
                    self.channels,
                    self.clients as f64 / self.channels as f64
                )
            },
        );
        if !self.failures.is_empty() {
            t.row("failures", map(&self.failures));
        }
        t.section("publish");
        t.row(
            "events",
            format!(
                "{} sent / {} ({} ok, {} errors), rate {}, in flight {}",
                self.published,
                self.events,
                self.publish_ok,
                self.publish_errors,
                self.rate.map_or("max".into(), |r| format!("{r}/s")),
                self.in_flight
            ),
        );
        t.row(
            "publish time",
            format!(
                "{:.3} s ({:.0} events/s)",
                self.publish_seconds, self.publish_events_per_sec
            ),
        );
        t.row("request rtt", lat(&self.publish_rtt_us));
        if !self.publish_error_reasons.is_empty() {
            t.row("errors", map(&self.publish_error_reasons));
        }
        t.section("delivery");
        t.row(
            "deliveries",
            format!(
                "{} / {} expected",
                self.deliveries, self.expected_deliveries
            ),
        );
        t.row(
            "lost / dup / out of order",
            format!(
                "{} / {} / {}{}",
                self.lost,
                self.duplicates,
                self.out_of_order,
                if self.order_guaranteed {
                    ""
                } else {
                    " (order not guaranteed by publisher)"
                }
            ),
        );
        t.row(
            "complete clients",
            format!("{} / {}", self.complete_clients, self.connected),
        );
        t.row(
            "deliveries/s",
            format!(
                "{:.0} ({} in {:.3} s)",
                self.deliveries_per_sec, self.deliveries, self.delivery_seconds
            ),
        );
        t.row("latency from send", lat(&self.latency_us));
        if self.sched_latency_us.is_some() {
            t.row("latency from schedule", lat(&self.sched_latency_us));
        }
        if self.channels > 0 {
            t.row("other channel's events", self.wrong_channel);
        }
        if self.foreign_frames > 0 {
            t.row("foreign frames", self.foreign_frames);
        }
        resume_rows(&mut t, &self.resume);
        server_rows(&mut t, &self.server);
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2} us"));
        if self.server.server_pid.is_some() {
            t.row("cpu per delivery", us(self.server_cpu_per_delivery_us));
        }
        t.section(&format!("generator ({} client processes)", self.workers));
        t.row(
            "cpu connect / publish",
            format!(
                "{:.3} s / {:.3} s ({:.0}% of a core during {:.3} s publish phase)",
                self.gen_cpu_connect_s,
                self.gen_cpu_publish_s,
                self.gen_cpu_publish_util * 100.0,
                self.publish_phase_seconds
            ),
        );
        t.row("cpu per delivery", us(self.gen_cpu_per_delivery_us));
        generator_rows(&mut t, &self.generator);
        threshold_rows(&mut t, &self.thresholds);
        result_rows(&mut t, self.ok, &self.problems);
        banner(&mut t, &self.generator);
        t.0
    }
}

impl RampReport {
    pub fn table(&self) -> String {
        let mut t = Table(String::new());
        banner(&mut t, &self.generator);
        t.section(&format!(
            "herald-bench ramp -> {} ({:.1} s, publish via {})",
            self.target, self.duration_s, self.publish
        ));
        t.section("connections");
        t.row(
            "clients",
            format!(
                "{} opened / {} ({} failed, {} closed by the server, {} retired by the ramp, \
                 {} processes)",
                self.connected,
                self.clients,
                self.connect_failed,
                self.closed_early,
                self.retired,
                self.workers
            ),
        );
        t.row("handshake", lat(&self.handshake_us));
        t.row("connect from due time", lat(&self.connect_from_due_us));
        if !self.failures.is_empty() {
            t.row("failures", map(&self.failures));
        }
        t.section("publish");
        t.row(
            "events",
            format!(
                "{} sent / {} ({} errors), rate {}/s, in flight {}",
                self.published, self.events, self.publish_errors, self.rate, self.in_flight
            ),
        );
        t.section("delivery");
        t.row(
            "deliveries",
            format!(
                "{} ({} missing between received events{}, {} duplicates)",
                self.deliveries,
                self.gaps,
                if self.gaps_checked {
                    ""
                } else {
                    ": not checked, order not guaranteed by publisher"
                },
                self.duplicates
            ),
        );
        t.row("latency from send", lat(&self.latency_us));
        t.row("latency from schedule", lat(&self.sched_latency_us));
        resume_rows(&mut t, &self.resume);
        t.section("phases");
        for p in &self.phases {
            t.row(
                &format!("{:.0}-{:.0} s", p.from_s, p.to_s),
                format!(
                    "target {} -> {}: {} open at end, {} connects, {} closes, {:.0} deliveries/s, \
                     p50 {} p99 {} us, {} errors",
                    p.from_target,
                    p.to_target,
                    p.connections_at_end,
                    p.connects,
                    p.closes,
                    p.deliveries_per_sec,
                    opt(p.latency_us.map(|l| l.p50)),
                    opt(p.latency_us.map(|l| l.p99)),
                    p.errors
                ),
            );
        }
        t.section("time series (per second)");
        for s in &self.series {
            t.row(
                &format!("{:>4} s", s.t),
                format!(
                    "target {:>6} open {:>6} connects {:>5} closes {:>5} reconnects {:>5} \
                     deliveries {:>8} p50 {:>7} p99 {:>7} us errors {}",
                    s.target,
                    s.connections,
                    s.connects,
                    s.closes,
                    s.reconnects,
                    s.deliveries,
                    opt(s.p50_us),
                    opt(s.p99_us),
                    s.errors
                ),
            );
        }
        server_rows(&mut t, &self.server);
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2} us"));
        if self.server.server_pid.is_some() {
            t.row("cpu per delivery", us(self.server_cpu_per_delivery_us));
        }
        t.section(&format!("generator ({} client processes)", self.workers));
        t.row("cpu per delivery", us(self.gen_cpu_per_delivery_us));
        generator_rows(&mut t, &self.generator);
        threshold_rows(&mut t, &self.thresholds);
        result_rows(&mut t, self.ok, &self.problems);
        banner(&mut t, &self.generator);
        t.0
    }
}

impl ThroughputReport {
    pub fn table(&self) -> String {
        let mut t = Table(String::new());
        banner(&mut t, &self.generator);
        t.section(&format!("herald-bench throughput -> {}", self.target));
        t.row(
            "connections",
            format!(
                "{} publishing, {} idle subscribers ({} connected, {} failed)",
                self.connections, self.subscribers, self.subscribers_connected, self.connect_failed
            ),
        );
        t.row(
            "requests",
            format!(
                "{} ({} ok, {} errors) in {:.3} s",
                self.requests, self.requests_ok, self.request_errors, self.duration_s
            ),
        );
        t.row("requests/s", format!("{:.0}", self.requests_per_sec));
        t.row("latency", lat(&self.latency_us));
        if !self.error_reasons.is_empty() {
            t.row("errors", map(&self.error_reasons));
        }
        if self.subscribers > 0 {
            t.row(
                "subscriber deliveries",
                format!(
                    "{} ({:.0}/s)",
                    self.subscriber_deliveries, self.deliveries_per_sec
                ),
            );
        }
        server_rows(&mut t, &self.server);
        t.section("generator");
        t.row(
            "cpu",
            format!(
                "{:.3} s ({:.0}% of a core)",
                self.gen_cpu_s,
                self.gen_cpu_util * 100.0
            ),
        );
        generator_rows(&mut t, &self.generator);
        threshold_rows(&mut t, &self.thresholds);
        result_rows(&mut t, self.ok, &self.problems);
        banner(&mut t, &self.generator);
        t.0
    }
}

fn threshold_rows(t: &mut Table, verdicts: &[Verdict]) {
    if verdicts.is_empty() {
        return;
    }
    t.section("thresholds");
    for v in verdicts {
        t.row(
            v.threshold,
            format!(
                "{}: measured {}: {}",
                v.limit,
                v.measured,
                if v.passed { "ok" } else { "FAILED" }
            ),
        );
    }
}

fn result_rows(t: &mut Table, ok: bool, problems: &[String]) {
    t.section(if ok { "result: OK" } else { "result: FAILED" });
    for p in problems {
        t.row("-", p);
    }
}

impl MergedReport {
    pub fn table(&self) -> String {
        let mut t = Table(String::new());
        t.section(&format!(
            "herald-bench merge ({} reports)",
            self.inputs.len()
        ));
        for p in &self.inputs {
            t.row(
                &p.file,
                format!(
                    "{} -> {}: {} clients, {} deliveries, {}{}",
                    p.mode,
                    p.target,
                    p.clients,
                    p.deliveries,
                    if p.ok { "ok" } else { "FAILED" },
                    if p.generator_saturated {
                        ", GENERATOR SATURATED"
                    } else {
                        ""
                    }
                ),
            );
        }
        t.section("all hosts together");
        t.row(
            "clients",
            format!(
                "{} connected / {} ({} failed, {} closed early)",
                self.connected, self.clients, self.connect_failed, self.closed_early
            ),
        );
        t.row(
            "deliveries",
            format!(
                "{} / {} expected; {:.0}/s over {:.3} s",
                self.deliveries,
                self.expected_deliveries,
                self.deliveries_per_sec,
                self.delivery_seconds
            ),
        );
        t.row(
            "lost / gaps / dup / late",
            format!(
                "{} / {} / {} / {}",
                self.lost, self.gaps, self.duplicates, self.out_of_order
            ),
        );
        if let Some(r) = &self.resume {
            t.row(
                "churn / reconnects",
                format!(
                    "{} churned, {} reconnected ({} failed), {} resets skipping {} deliveries",
                    r.churned, r.resumed, r.resume_failed, r.resets, r.reset_gap_events
                ),
            );
        }
        t.row("latency from send", lat(&self.latency_us));
        if self.sched_latency_us.is_some() {
            t.row("latency from schedule", lat(&self.sched_latency_us));
        }
        t.row("handshake", lat(&self.handshake_us));
        if self.generator_saturated {
            t.row("generator", "SATURATED on at least one host");
        }
        threshold_rows(&mut t, &self.thresholds);
        result_rows(&mut t, self.ok, &self.problems);
        t.0
    }
}
