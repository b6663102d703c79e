//! Shared by herald-bench's integration tests: a real Herald server on a
//! free loopback port (the workspace's `target/<profile>/herald`, which
//! `cargo test --workspace` builds before running any test), stopped by its
//! PID, and runs of the real `herald-bench` binary against it.

#![allow(dead_code)] // each test file uses a part

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A Herald server started for one test; killed (by its PID) on drop.
pub struct Herald {
    pub child: Child,
    pub port: u16,
}

impl Herald {
    pub fn start() -> Herald {
        Herald::start_with(&[])
    }

    /// A Herald with these environment settings (e.g. a tiny `HISTORY_LEN`).
    pub fn start_with(env: &[(&str, &str)]) -> Herald {
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
            .envs(env.iter().copied())
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

/// Runs herald-bench against `h` (bounded by --max-duration).
pub fn run(h: &Herald, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(["-p", &h.port.to_string()])
        .args(["--pid", &h.child.id().to_string()])
        .args(["--progress-interval", "0", "--max-duration", "60"])
        .args(["--connect-timeout", "30", "--settle-timeout", "10"])
        .args(args)
        .output()
        .expect("run herald-bench")
}

/// Runs herald-bench against `h`; returns the process output and its JSON
/// report.
pub fn bench(h: &Herald, args: &[&str]) -> (Output, Value) {
    let out = run(h, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report: {}", String::from_utf8_lossy(&out.stderr)));
    let report: Value = serde_json::from_str(json).expect("JSON report");
    (out, report)
}
