//! CI thresholds against the real Herald binary: limits that hold pass
//! (exit 0, each verdict reported with its figure); limits that do not fail
//! the run (exit 1) and are named with what was measured; `--max-loss`
//! replaces the default "any loss fails" check.

mod support;

use serde_json::Value;
use support::{Herald, bench};

const PACED: &[&str] = &["-c", "20", "-e", "20", "--rate", "20", "--procs", "1"];

fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(more).copied().collect()
}

fn verdicts(r: &Value) -> Vec<(String, bool)> {
    r["thresholds"]
        .as_array()
        .expect("thresholds")
        .iter()
        .map(|v| {
            (
                v["threshold"].as_str().unwrap().to_string(),
                v["passed"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn thresholds_that_hold_pass() {
    let h = Herald::start();
    let args = with(
        PACED,
        &[
            "--max-p99-ms",
            "5000",
            "--max-loss",
            "0",
            "--min-deliveries-per-sec",
            "1",
            "--max-connect-failures",
            "0",
        ],
    );
    let (out, r) = bench(&h, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v = verdicts(&r);
    assert_eq!(v.len(), 4, "{v:?}");
    assert!(v.iter().all(|(_, passed)| *passed), "{v:?}");
    assert!(stderr.contains("thresholds"), "{stderr}");
}

#[test]
fn thresholds_that_do_not_hold_fail_and_are_named() {
    let h = Herald::start();
    // No delivery takes 0 ms, and loopback does not make 10^9 a second.
    let args = with(
        PACED,
        &[
            "--max-p99-ms",
            "0",
            "--min-deliveries-per-sec",
            "1e9",
            "--max-loss",
            "0",
        ],
    );
    let (out, r) = bench(&h, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        verdicts(&r),
        [
            ("--max-p99-ms".to_string(), false),
            ("--max-loss".to_string(), true),
            ("--min-deliveries-per-sec".to_string(), false),
        ]
    );
    let problems = r["problems"].to_string();
    assert!(
        problems.contains("threshold failed: --max-p99-ms 0: measured p99 "),
        "{problems}"
    );
    assert!(
        problems.contains("threshold failed: --min-deliveries-per-sec 1000000000: measured "),
        "{problems}"
    );
    // Every delivery arrived: the failure is the thresholds' alone.
    assert_eq!(r["lost"], 0);
    assert!(stderr.contains("FAILED"), "{stderr}");
}

#[test]
fn max_loss_judges_what_a_server_skipped() {
    // A history of two events: resumes after 0.2 s away are refused.
    let h = Herald::start_with(&[("HISTORY_LEN", "2")]);
    let churn: Vec<&str> = "-c 20 -e 60 --rate 30 --churn 10 --reconnect-delay 0.2 --procs 1"
        .split(' ')
        .collect();
    let (out, r) = bench(&h, &with(&churn, &["--max-loss", "100%"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        r["resume"]["reset_gap_events"].as_u64().unwrap() > 0,
        "{stderr}"
    );
    assert_eq!(verdicts(&r), [("--max-loss".to_string(), true)]);

    let (out, r) = bench(&h, &with(&churn, &["--max-loss", "0"]));
    assert_eq!(out.status.code(), Some(1));
    let problems = r["problems"].to_string();
    assert!(
        problems.contains("threshold failed: --max-loss 0: measured "),
        "{problems}"
    );
}
