//! The honest generator, against the real Herald binary: clients spread over
//! worker processes, every process's load measured over the publish phase,
//! and a run where the generator could not keep up flagged as saturated (in
//! the JSON and prominently in the text report), while a light run is not.

mod support;

use serde_json::Value;
use support::{Herald, bench};

fn processes(report: &Value) -> Vec<String> {
    report["generator"]["processes"]
        .as_array()
        .expect("generator.processes")
        .iter()
        .map(|p| p["process"].as_str().expect("process name").to_string())
        .collect()
}

/// A few clients and a slow pace: the generator sleeps most of the phase,
/// so the run is not flagged; and the clients sit in two worker processes
/// whose merged counts and loads are all reported.
#[test]
fn light_run_is_not_saturated() {
    let h = Herald::start();
    let (out, r) = bench(
        &h,
        &["-c", "20", "-e", "10", "--rate", "10", "--procs", "2"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(r["workers"], 2, "{stderr}");
    assert_eq!(r["deliveries"], 200, "{stderr}");
    assert_eq!(r["lost"], 0);
    assert_eq!(r["latency_us"].as_object().map(|_| ()), Some(()));
    assert_eq!(processes(&r), ["main", "worker 0", "worker 1"]);
    assert_eq!(r["generator_saturated"], false, "{stderr}");
    assert_eq!(r["generator"]["saturated"], false);
    assert!(!stderr.contains("SATURATED"), "{stderr}");
    // Server and generator CPU per delivery are both measured.
    assert!(r["server_cpu_per_delivery_us"].as_f64().unwrap() > 0.0);
    assert!(r["gen_cpu_per_delivery_us"].as_f64().unwrap() > 0.0);
}

/// A run in which every client-holding process spins through the publish
/// phase (`--test-burn-cpu`), as one that cannot keep up does, with the
/// clients in `procs` processes: returns its report after checking that the
/// deliveries are still complete (saturation is a verdict on the figures,
/// not a failed check) and that the run is flagged, in the JSON and in a
/// banner on the text report.
fn burning_run(procs: &str) -> Value {
    let h = Herald::start();
    let (out, r) = bench(
        &h,
        &[
            "-c",
            "20",
            "-e",
            "10",
            "--rate",
            "10",
            "--procs",
            procs,
            "--test-burn-cpu",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(r["deliveries"], 200, "{stderr}");
    assert_eq!(r["generator_saturated"], true, "{stderr}");
    assert!(stderr.contains("!!! GENERATOR SATURATED"), "{stderr}");
    r
}

/// Two worker processes spinning: each is named as saturated.
#[test]
fn burning_workers_are_flagged_saturated() {
    let r = burning_run("2");
    let reasons = r["generator"]["saturation"].as_array().expect("reasons");
    for worker in ["worker 0", "worker 1"] {
        assert!(
            reasons
                .iter()
                .any(|s| s["kind"] == "process" && s["process"] == worker),
            "{worker}: {reasons:?}"
        );
    }
}

/// One process holding every client (and publishing), spinning: flagged.
#[test]
fn one_burning_process_is_flagged_saturated() {
    let r = burning_run("1");
    assert_eq!(r["workers"], 1);
    assert_eq!(processes(&r), ["main"]);
}
