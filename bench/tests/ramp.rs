//! `--ramp` against the real Herald binary: the per-second time series
//! follows the phases (up, hold, down), clients that join while events flow
//! get every event after their first without a gap, and the run passes.

mod support;

use support::{Herald, bench};

#[test]
fn ramp_time_series_follows_the_phases() {
    let h = Herald::start();
    // Up to 40 connections in 2 s, hold 2 s, down to 0 in 1 s; 20 events/s.
    let (out, r) = bench(
        &h,
        &[
            "--ramp",
            "0s:0,2s:40,4s:40,5s:0",
            "--rate",
            "20",
            "--procs",
            "2",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(r["mode"], "ramp");
    assert_eq!(r["clients"], 40, "clients opened in all");
    assert_eq!(r["connected"], 40, "{stderr}");
    assert_eq!(r["retired"], 40, "every client closed on the way down");
    assert_eq!(
        (r["connect_failed"].as_u64(), r["closed_early"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["published"], 100);
    assert_eq!(r["gaps_checked"], true);
    assert_eq!(
        (r["gaps"].as_u64(), r["duplicates"].as_u64()),
        (Some(0), Some(0)),
        "{stderr}"
    );
    assert!(r["deliveries"].as_u64().unwrap() > 0);

    let series = r["series"].as_array().expect("series");
    assert!(series.len() >= 5, "{series:?}");
    let open = |t: usize| series[t]["connections"].as_u64().unwrap();
    // End of second 0: the target is near 20 (half way up); seconds 2 and 3
    // hold 40; after the way down, none. Margins for a busy machine: the
    // target is followed every 10 ms and connects take milliseconds.
    assert!((12..=28).contains(&open(0)), "second 0: {}", open(0));
    assert_eq!((open(2), open(3)), (40, 40), "{series:?}");
    assert!(open(series.len() - 1) <= 8, "{series:?}");
    let connects: u64 = series.iter().map(|s| s["connects"].as_u64().unwrap()).sum();
    let closes: u64 = series.iter().map(|s| s["closes"].as_u64().unwrap()).sum();
    assert_eq!((connects, closes), (40, 40));
    // Seconds with every client open receive 20 events x 40 clients.
    let held = series[3]["deliveries"].as_u64().unwrap();
    assert!((700..=900).contains(&held), "second 3 deliveries: {held}");
    assert!(series[3]["p99_us"].as_u64().is_some());

    let phases = r["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 3);
    assert_eq!(phases[1]["connections_at_end"], 40);
    assert!(phases[1]["latency_us"]["p99"].as_u64().is_some());
}

/// A ramp without a rate has nothing to publish throughout: refused.
#[test]
fn ramp_needs_a_rate() {
    let h = Herald::start();
    let out = support::run(&h, &["--ramp", "0s:0,1s:5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ramp publishes throughout"));
}
