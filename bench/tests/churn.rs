//! `--churn` and `--storm-at` against the real Herald binary: clients
//! dropped while events flow reconnect with `since=<last id>` and still get
//! every event exactly once, in order; with a history too short to replay
//! from, Herald's `reset` notices are reported (apart from loss) and the run
//! fails.

mod support;

use serde_json::Value;
use support::{Herald, bench};

/// 40 clients, 120 events at 40/s (3 s), 10 churns a second, a storm of
/// every client at 1.5 s; each reconnect waits 0.2 s, so about eight events
/// are published while a client is away and must come from the replay.
const DISRUPTED: &[&str] = &[
    "-c",
    "40",
    "-e",
    "120",
    "--rate",
    "40",
    "--churn",
    "10",
    "--reconnect-delay",
    "0.2",
    "--storm-at",
    "1.5s",
    "--procs",
    "2",
];

fn u(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing: {r}"))
}

#[test]
fn churn_and_a_storm_with_resume_lose_nothing() {
    let h = Herald::start();
    let (out, r) = bench(&h, DISRUPTED);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(u(&r, "connected"), 40);
    assert_eq!(u(&r, "deliveries"), 40 * 120, "{stderr}");
    assert_eq!(
        (u(&r, "lost"), u(&r, "duplicates"), u(&r, "out_of_order")),
        (0, 0, 0)
    );
    let res = &r["resume"];
    // About 10/s over the 3 s of events; the storm's clients are away for
    // 0.2 s, so some churns find fewer candidates but none finds none.
    let churned = u(res, "churned");
    assert!((15..=31).contains(&churned), "churned {churned}: {res}");
    let storm = &res["storm"];
    let dropped = u(storm, "dropped");
    assert!(dropped >= 30, "storm dropped {dropped}: {res}");
    assert_eq!(u(storm, "reconnected"), dropped);
    assert!(storm["all_reconnected_s"].as_f64().is_some(), "{res}");
    assert_eq!(u(res, "resumed"), churned + dropped, "{res}");
    assert_eq!(
        (
            u(res, "resets"),
            u(res, "resume_failed"),
            u(res, "resumed_without_id")
        ),
        (0, 0, 0),
        "{res}"
    );
    assert!(res["reconnect_us"]["p99"].as_u64().is_some());
    // About eight events per reconnect came with the catch-up; they are
    // timed apart from the live deliveries.
    let replayed = u(res, "replayed");
    assert!(replayed >= u(res, "resumed"), "{res}");
    assert!(res["replay_latency_us"]["p50"].as_u64().is_some(), "{res}");
    let live: u64 = r["histograms"]["latency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_u64().unwrap())
        .sum();
    assert_eq!(live + replayed, 40 * 120);
}

#[test]
fn a_history_too_short_to_resume_from_is_reported_and_fails_the_run() {
    // Two events of history: a client away for 0.2 s at 40 events/s misses
    // about eight, so Herald cannot replay them and says so.
    let h = Herald::start_with(&[("HISTORY_LEN", "2")]);
    let (out, r) = bench(&h, DISRUPTED);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let res = &r["resume"];
    let resets = u(res, "resets");
    let gap = u(res, "reset_gap_events");
    assert!(resets > 0 && gap > 0, "{res}");
    // Herald announces every gap: nothing is lost silently, and what it
    // skipped is the difference between expected and received.
    assert_eq!(u(&r, "lost"), 0, "{stderr}");
    assert_eq!(u(&r, "duplicates"), 0);
    assert_eq!(u(&r, "deliveries") + gap, u(&r, "expected_deliveries"));
    let problems = r["problems"].to_string();
    assert!(
        problems.contains("refused by the server (reset)"),
        "{problems}"
    );
    assert!(stderr.contains("resets (server gave up)"), "{stderr}");
}

#[test]
fn churn_under_a_ramp_keeps_every_client_gapless() {
    let h = Herald::start();
    let (out, r) = bench(
        &h,
        &[
            "--ramp",
            "0s:0,1s:30,3s:30,4s:0",
            "--rate",
            "30",
            "--churn",
            "10",
            "--reconnect-delay",
            "0.2",
            "--procs",
            "2",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!((u(&r, "gaps"), u(&r, "duplicates")), (0, 0), "{stderr}");
    let res = &r["resume"];
    assert!(u(res, "churned") >= 15, "{res}");
    assert_eq!(u(res, "resets"), 0);
    assert_eq!(u(res, "resume_failed"), 0, "{res}");
    let reconnects: u64 = r["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| s["reconnects"].as_u64().unwrap())
        .sum();
    assert_eq!(reconnects, u(res, "resumed"));
}

#[test]
fn churn_needs_a_rate_and_a_storm_inside_the_events() {
    let h = Herald::start();
    let out = support::run(&h, &["-c", "5", "-e", "5", "--churn", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("need --rate"));
    let out = support::run(
        &h,
        &["-c", "5", "-e", "5", "--rate", "5", "--storm-at", "3s"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not before the last event"));
}
