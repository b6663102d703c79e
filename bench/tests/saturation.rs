//! The honest generator, against the real Herald binary: clients spread over
//! worker processes, every process's load measured over the publish phase,
//! and a run where the generator could not keep up flagged as saturated (in
//! the JSON and prominently in the text report), while a light run is not.
//!
//! Herald is the workspace's `target/<profile>/herald`, which
//! `cargo test --workspace` builds before running any test (its own
//! integration tests need it). Both processes are stopped by PID.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A Herald server started for one test; killed (by its PID) on drop.
struct Herald {
    child: Child,
    port: u16,
}

impl Herald {
    fn start() -> Herald {
        // target/<profile>/deps/<this test> -> target/<profile>/herald
        let bin: PathBuf = std::env::current_exe()
            .expect("test path")
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target dir")
            .join("herald");
        assert!(
            bin.exists(),
            "{} is missing: build it first (`cargo build -p herald`; `cargo test --workspace` does)",
            bin.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start herald");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let until = Instant::now() + Duration::from_secs(20);
        // Bounded: 20 s.
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < until, "herald did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Herald { child, port }
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs herald-bench against `h` (bounded by --max-duration); returns the
/// process output and its JSON report.
fn bench(h: &Herald, args: &[&str]) -> (Output, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args([
            "-p",
            &h.port.to_string(),
            "--pid",
            &h.child.id().to_string(),
        ])
        .args(["--progress-interval", "0", "--max-duration", "60"])
        .args(["--connect-timeout", "30", "--settle-timeout", "10"])
        .args(args)
        .output()
        .expect("run herald-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report: {}", String::from_utf8_lossy(&out.stderr)));
    let report: Value = serde_json::from_str(json).expect("JSON report");
    (out, report)
}

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

/// Every client-holding process spins through the publish phase
/// (`--test-burn-cpu`), as one that cannot keep up does: the run is flagged,
/// in the JSON and in a banner on the text report, naming the process.
#[test]
fn burning_generator_is_flagged_saturated() {
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
            "2",
            "--test-burn-cpu",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The deliveries are still checked and complete: saturation is a verdict
    // on the figures, not a failed check.
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(r["deliveries"], 200, "{stderr}");
    assert_eq!(r["generator_saturated"], true, "{stderr}");
    let reasons = r["generator"]["saturation"].as_array().expect("reasons");
    assert!(
        reasons
            .iter()
            .any(|s| s["kind"] == "process" && s["process"] == "worker 0"),
        "{reasons:?}"
    );
    assert!(stderr.contains("!!! GENERATOR SATURATED"), "{stderr}");
}

/// One process holding every client, spinning: flagged as well, with the
/// main process (which holds the clients and publishes) named.
#[test]
fn one_process_burning_is_flagged_saturated() {
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
            "1",
            "--test-burn-cpu",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(r["workers"], 1);
    assert_eq!(processes(&r), ["main"]);
    assert_eq!(r["generator_saturated"], true, "{stderr}");
    assert!(stderr.contains("!!! GENERATOR SATURATED"), "{stderr}");
}
