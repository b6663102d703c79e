//! `herald-bench merge a.json b.json ...`: one report from the runs of
//! several generator hosts against the same server at the same time. Counts
//! add up, the HDR histograms each report carries in full (`histograms`)
//! are merged, so the percentiles are those of all deliveries together (not
//! an average of percentiles), and the delivery rate is all deliveries over
//! the span from the first delivery on any host to the last. The CI
//! thresholds can be judged on the merged figures.
//!
//! Each host must check its own events: give each its own `--event-type`
//! (e.g. `bench-a`, `bench-b`), so that a client counts the other hosts'
//! events as foreign frames, not as duplicates. A merged report can itself
//! be merged again.

use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::stats::ResumeCounts;
use crate::stats::{Histograms, LatencySummary};
use crate::thresholds::{self, Limits, Measured, Verdict};

/// Merge the JSON reports of runs made at the same time from several
/// generator hosts into one report: counts added, HDR latency histograms
/// merged (true percentiles of all deliveries), deliveries per second over
/// the whole span. Reads fan-out and ramp reports (the JSON line herald-bench
/// prints on stdout), and merged reports. Prints the merged JSON on stdout
/// and a table on stderr. Exit status: 0 every run and threshold passed, 1
/// a run failed a check or a threshold failed, 2 unreadable input.
#[derive(Parser, Debug)]
#[command(
    name = "herald-bench merge",
    bin_name = "herald-bench merge",
    verbatim_doc_comment
)]
pub struct MergeArgs {
    /// The reports to merge (files holding herald-bench's JSON output).
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,

    /// CI thresholds, judged on all hosts' figures together.
    #[command(flatten)]
    pub limits: Limits,
}

/// The part of a report that merging reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Input {
    mode: String,
    target: String,
    clients: u64,
    connected: u64,
    connect_failed: u64,
    closed_early: u64,
    expected_deliveries: u64,
    deliveries: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    gaps: u64,
    resume: Option<InputResume>,
    first_delivery_ns: Option<u64>,
    last_delivery_ns: Option<u64>,
    histograms: Option<Histograms>,
    generator_saturated: bool,
    ok: bool,
    problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct InputResume {
    #[serde(flatten)]
    counts: ResumeCounts,
}

/// One merged input, as listed in the merged report.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub file: String,
    pub mode: String,
    pub target: String,
    pub clients: u64,
    pub deliveries: u64,
    pub generator_saturated: bool,
    pub ok: bool,
}

/// The merged report (mergeable again: it carries the same fields).
#[derive(Debug, Clone, Serialize)]
pub struct MergedReport {
    pub mode: &'static str,
    pub inputs: Vec<Part>,
    pub clients: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub closed_early: u64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub resume: Option<ResumeCounts>,
    /// First delivery on any host to the last on any host.
    pub delivery_seconds: f64,
    pub deliveries_per_sec: f64,
    pub latency_us: Option<LatencySummary>,
    pub sched_latency_us: Option<LatencySummary>,
    pub handshake_us: Option<LatencySummary>,
    pub connect_from_due_us: Option<LatencySummary>,
    pub reconnect_us: Option<LatencySummary>,
    pub storm_reconnect_us: Option<LatencySummary>,
    pub first_delivery_ns: Option<u64>,
    pub last_delivery_ns: Option<u64>,
    pub histograms: Histograms,
    /// Any run's generator was saturated: its figures are its limit.
    pub generator_saturated: bool,
    pub thresholds: Vec<Verdict>,
    pub ok: bool,
    /// Every run's problems (prefixed with its file), then the thresholds'.
    pub problems: Vec<String>,
}

/// Reads a report: the last line of the file that is a JSON object.
fn read(path: &PathBuf) -> Result<Input, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("{}: no JSON report in it", path.display()))?;
    let input: Input =
        serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
    match input.mode.as_str() {
        "fanout" | "ramp" | "merged" => {}
        other => {
            return Err(format!(
                "{}: a {other:?} report; merge reads fan-out, ramp and merged reports",
                path.display()
            ));
        }
    }
    if input.histograms.is_none() {
        return Err(format!(
            "{}: no histograms (made by an older herald-bench?)",
            path.display()
        ));
    }
    Ok(input)
}

/// Merges reports that have been read; `names` label their problems.
fn merge(names: &[String], inputs: &[Input], limits: &Limits) -> MergedReport {
    let sum = |f: fn(&Input) -> u64| inputs.iter().map(f).sum::<u64>();
    let mut histograms = Histograms::default();
    let mut resume: Option<ResumeCounts> = None;
    let mut problems = Vec::new();
    for (name, i) in names.iter().zip(inputs) {
        if let Some(h) = &i.histograms {
            histograms.merge(h);
        }
        if let Some(r) = &i.resume {
            resume
                .get_or_insert_with(ResumeCounts::default)
                .add(&r.counts);
        }
        problems.extend(i.problems.iter().map(|p| format!("{name}: {p}")));
    }
    let first = inputs.iter().filter_map(|i| i.first_delivery_ns).min();
    let last = inputs.iter().filter_map(|i| i.last_delivery_ns).max();
    let delivery_seconds = match (first, last) {
        (Some(a), Some(z)) => z.saturating_sub(a) as f64 / 1e9,
        _ => 0.0,
    };
    let deliveries = sum(|i| i.deliveries);
    let deliveries_per_sec = if delivery_seconds > 0.0 {
        deliveries as f64 / delivery_seconds
    } else {
        0.0
    };
    let counts = resume.unwrap_or_default();
    let lost = sum(|i| i.lost);
    let gaps = sum(|i| i.gaps);
    let loss = lost + gaps + counts.reset_gap_events;
    // Paced runs are judged from the schedule; a mix falls back to send times.
    let all_paced = histograms.sched_latency.count() > 0
        && inputs.iter().all(|i| {
            i.histograms
                .as_ref()
                .is_some_and(|h| h.sched_latency.count() > 0)
        });
    let p99 = if all_paced {
        &histograms.sched_latency
    } else {
        &histograms.latency
    }
    .summary()
    .map(|l| l.p99);
    let expected = sum(|i| i.expected_deliveries);
    let thresholds = thresholds::judge(
        limits,
        &Measured {
            p99_us: p99,
            loss: Some(loss),
            expected: if expected > 0 {
                expected
            } else {
                deliveries + loss
            },
            deliveries_per_sec: Some(deliveries_per_sec),
            connect_failures: sum(|i| i.connect_failed) + counts.resume_failed,
        },
    );
    for v in thresholds.iter().filter(|v| !v.passed) {
        problems.push(format!("threshold failed: {}", v.describe()));
    }
    MergedReport {
        mode: "merged",
        inputs: names
            .iter()
            .zip(inputs)
            .map(|(n, i)| Part {
                file: n.clone(),
                mode: i.mode.clone(),
                target: i.target.clone(),
                clients: i.clients,
                deliveries: i.deliveries,
                generator_saturated: i.generator_saturated,
                ok: i.ok,
            })
            .collect(),
        clients: sum(|i| i.clients),
        connected: sum(|i| i.connected),
        connect_failed: sum(|i| i.connect_failed),
        closed_early: sum(|i| i.closed_early),
        expected_deliveries: expected,
        deliveries,
        lost,
        duplicates: sum(|i| i.duplicates),
        out_of_order: sum(|i| i.out_of_order),
        gaps,
        resume,
        delivery_seconds,
        deliveries_per_sec,
        latency_us: histograms.latency.summary(),
        sched_latency_us: histograms.sched_latency.summary(),
        handshake_us: histograms.handshake.summary(),
        connect_from_due_us: histograms.connect_from_due.summary(),
        reconnect_us: histograms.reconnect.summary(),
        storm_reconnect_us: histograms.storm_reconnect.summary(),
        first_delivery_ns: first,
        last_delivery_ns: last,
        generator_saturated: inputs.iter().any(|i| i.generator_saturated),
        ok: inputs.iter().all(|i| i.ok) && thresholds.iter().all(|v| v.passed),
        thresholds,
        problems,
        histograms,
    }
}

/// `herald-bench merge ...`; `argv` starts with the program name. Returns
/// the exit code.
pub fn main_with(argv: &[String]) -> i32 {
    let args = match MergeArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let mut inputs = Vec::new();
    for f in &args.files {
        match read(f) {
            Ok(i) => inputs.push(i),
            Err(e) => {
                eprintln!("herald-bench merge: {e}");
                return 2;
            }
        }
    }
    let names: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
    let report = merge(&names, &inputs, &args.limits);
    eprint!("{}", report.table());
    match serde_json::to_string(&report) {
        Ok(j) => println!("{j}"),
        Err(e) => eprintln!("herald-bench merge: json: {e}"),
    }
    if report.ok { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(deliveries: u64, first: u64, last: u64, lat_us: &[u64]) -> Input {
        let mut h = Histograms::default();
        for &us in lat_us {
            h.latency.record_us(us);
            h.sched_latency.record_us(us + 1);
        }
        Input {
            mode: "fanout".into(),
            clients: 10,
            connected: 10,
            expected_deliveries: deliveries,
            deliveries,
            first_delivery_ns: Some(first),
            last_delivery_ns: Some(last),
            histograms: Some(h),
            ok: true,
            ..Default::default()
        }
    }

    #[test]
    fn counts_add_and_percentiles_come_from_the_merged_histograms() {
        // Host a: 99 fast deliveries; host b: one slow one. Averaging the
        // two p99s would say ~5 ms; all deliveries together say 100 us.
        let a = input(99, 1_000_000_000, 2_000_000_000, &[100; 99]);
        let mut b = input(1, 1_500_000_000, 3_000_000_000, &[10_000]);
        b.lost = 2;
        b.ok = false;
        b.problems = vec!["2 deliveries missing".into()];
        let names = ["a.json".to_string(), "b.json".to_string()];
        let limits = Limits {
            max_p99_ms: Some(1.0),
            ..Default::default()
        };
        let m = merge(&names, &[a, b], &limits);
        assert_eq!((m.clients, m.deliveries, m.lost), (20, 100, 2));
        assert_eq!(m.latency_us.unwrap().p99, 100);
        assert_eq!(m.latency_us.unwrap().max / 10, 1000); // 3 significant digits
        assert_eq!(m.sched_latency_us.unwrap().p99, 101);
        assert_eq!(m.delivery_seconds, 2.0);
        assert_eq!(m.deliveries_per_sec, 50.0);
        assert_eq!(m.problems, ["b.json: 2 deliveries missing"]);
        assert!(!m.ok, "a failed run fails the merge");
        assert!(m.thresholds[0].passed);

        // A merged report reads back as an input and merges again.
        let json = serde_json::to_string(&m).unwrap();
        let again: Input = serde_json::from_str(&json).unwrap();
        assert_eq!(again.histograms.as_ref().unwrap().latency.count(), 100);
        let twice = merge(&names, &[again.clone(), again], &Limits::default());
        assert_eq!((twice.deliveries, twice.lost), (200, 4));
        assert_eq!(twice.latency_us.unwrap().p99, 100);
    }
}
