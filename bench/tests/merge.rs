//! `herald-bench merge`: two generator "hosts" (two herald-bench processes,
//! each with its own event type) against one real Herald at the same time,
//! merged into one report: counts add up, percentiles come from the merged
//! histograms, thresholds are judged on the merged figures.

mod support;

use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::Herald;

fn merge(args: &[&str]) -> (Output, Option<Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .arg("merge")
        .args(args)
        .output()
        .expect("run herald-bench merge");
    let json = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("merged JSON"));
    (out, json)
}

#[test]
fn runs_of_two_hosts_merge_into_one_report() {
    let h = Herald::start();
    let dir = std::env::temp_dir().join(format!("herald-bench-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Both hosts publish 30 events at 30/s to their 15 clients; each
    // client sees the other host's events as foreign frames.
    let hosts: Vec<_> = ["a", "b"]
        .iter()
        .map(|host| {
            let file = dir.join(format!("{host}.json"));
            let child = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
                .args(["-p", &h.port.to_string(), "--progress-interval", "0"])
                .args(["--max-duration", "60", "--procs", "1"])
                .args(["-c", "15", "-e", "30", "--rate", "30"])
                .args(["--event-type", &format!("bench-{host}")])
                .stdout(std::fs::File::create(&file).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .expect("start herald-bench");
            (file, child)
        })
        .collect();
    let mut files = Vec::new();
    for (file, mut child) in hosts {
        assert!(child.wait().unwrap().success(), "{}", file.display());
        files.push(file.display().to_string());
    }
    let file_args: Vec<&str> = files.iter().map(String::as_str).collect();

    let (out, m) = merge(&file_args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let m = m.expect("merged report");
    assert_eq!(m["mode"], "merged");
    assert_eq!(
        (m["clients"].as_u64(), m["connected"].as_u64()),
        (Some(30), Some(30))
    );
    assert_eq!(m["deliveries"], 2 * 15 * 30);
    assert_eq!(m["expected_deliveries"], 2 * 15 * 30);
    assert_eq!(
        (m["lost"].as_u64(), m["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    let p99 = m["sched_latency_us"]["p99"].as_u64().expect("p99");
    let a: Value = serde_json::from_str(
        std::fs::read_to_string(&files[0])
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    // The merged histogram holds both hosts' deliveries; the merged p99 is
    // at most the larger of the two (it is of the union, not an average).
    assert_eq!(
        a["histograms"]["sched_latency"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_u64().unwrap())
            .sum::<u64>(),
        15 * 30
    );
    assert!(m["deliveries_per_sec"].as_f64().unwrap() > 0.0);
    assert!(p99 > 0);

    // Thresholds on the merged figures: a p99 of 0 ms cannot hold.
    let mut args = file_args.clone();
    args.extend(["--max-p99-ms", "0", "--max-loss", "0"]);
    let (out, m) = merge(&args);
    assert_eq!(out.status.code(), Some(1));
    let problems = m.unwrap()["problems"].to_string();
    assert!(
        problems.contains("threshold failed: --max-p99-ms 0"),
        "{problems}"
    );
    assert!(!problems.contains("--max-loss"), "{problems}");

    // A merged report merges again.
    let merged = dir.join("merged.json");
    let (out, m) = merge(&file_args);
    assert!(out.status.success());
    std::fs::write(&merged, m.unwrap().to_string()).unwrap();
    let (out, m) = merge(&[merged.to_str().unwrap(), &files[0]]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(m.unwrap()["deliveries"], 3 * 15 * 30);

    // Unreadable input: exit 2, named.
    std::fs::write(dir.join("junk.json"), "not json").unwrap();
    let junk = dir.join("junk.json");
    let (out, _) = merge(&[junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.json"));
    let _ = std::fs::remove_dir_all(&dir);
}
