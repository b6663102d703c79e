//! Command-line checks of the real `herald-bench` binary that need no server.

use std::process::Command;

/// `--rate 0` (or negative, NaN, or so slow that an event's schedule
/// overflows) is refused with a clear error and exit status 2 before any
/// socket is opened. It used to reach the publish phase and panic with
/// "cannot convert float seconds to Duration".
#[test]
fn rate_zero_is_refused_clearly() {
    for bad in ["0", "-5", "NaN", "1e-30"] {
        // Port 9 (discard) on loopback: nothing listens, and nothing is
        // reached anyway because the value is refused first.
        let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
            .args(["-p", "9", "-c", "1", "-e", "1", &format!("--rate={bad}")])
            .args(["--connect-timeout", "2", "--max-duration", "5"])
            .output()
            .expect("run herald-bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--rate {bad}: {stderr}");
        assert!(
            stderr.contains("--rate") && stderr.contains("omit --rate to publish unpaced"),
            "--rate {bad}: no clear error: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "--rate {bad}: {stderr}");
    }
}
