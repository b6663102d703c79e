//! Pass/fail limits for CI (`--max-p99-ms`, `--max-loss`,
//! `--min-deliveries-per-sec`, `--max-connect-failures`): what was
//! measured, judged against each limit given. A failed limit makes the run
//! exit 1 and is named, with the figure, in the report and on stderr.
//!
//! `--max-loss` and `--max-connect-failures` replace the built-in checks
//! they cover (any loss, any failed connect fails a run by default): with
//! them, up to the limit passes.

use std::fmt;

use serde::Serialize;

/// `--max-loss`: deliveries, or a percentage of the expected deliveries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossLimit {
    Deliveries(u64),
    Percent(f64),
}

impl LossLimit {
    /// Parses `N` (deliveries) or `P%` (of the deliveries expected).
    pub fn parse(s: &str) -> Result<LossLimit, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|e| format!("{s}: {e}"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{s}: a percentage from 0 to 100"));
            }
            return Ok(LossLimit::Percent(v));
        }
        s.parse()
            .map(LossLimit::Deliveries)
            .map_err(|e| format!("{s}: a number of deliveries or a percentage like 0.1%: {e}"))
    }

    fn allows(&self, lost: u64, expected: u64) -> bool {
        match *self {
            LossLimit::Deliveries(n) => lost <= n,
            LossLimit::Percent(p) => lost as f64 <= expected as f64 * p / 100.0,
        }
    }
}

impl fmt::Display for LossLimit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            LossLimit::Deliveries(n) => write!(f, "{n}"),
            LossLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The limits given on the command line (a run's, or `merge`'s for all
/// hosts together).
#[derive(clap::Args, Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// CI threshold: fail (exit 1) if the p99 delivery latency is above this
    /// many milliseconds: from the scheduled send time in paced runs (so a
    /// stalled server cannot hide behind a stalled publisher), from the send
    /// time otherwise; in --mode throughput, the p99 request round trip.
    #[arg(long, value_name = "MS", value_parser = parse_non_negative)]
    pub max_p99_ms: Option<f64>,

    /// CI threshold: deliveries that may be missing (lost silently, gaps,
    /// or skipped by a server's reset), as a count `N` or a share of the
    /// expected deliveries `P%`. Replaces the default check (any loss
    /// fails the run).
    #[arg(long, value_name = "N|P%", value_parser = LossLimit::parse)]
    pub max_loss: Option<LossLimit>,

    /// CI threshold: fail if fewer deliveries per second than this were
    /// measured (fan-out: first publish to last delivery; ramp: over the
    /// ramp; throughput: the idle subscribers' deliveries).
    #[arg(long, value_name = "N", value_parser = parse_non_negative)]
    pub min_deliveries_per_sec: Option<f64>,

    /// CI threshold: connects and reconnects that may fail. Replaces the
    /// default check (any failed connect fails the run).
    #[arg(long, value_name = "N")]
    pub max_connect_failures: Option<u64>,
}

/// Parses a finite number of at least 0.
pub fn parse_non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{s}: {e}"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s}: must be a number of at least 0"));
    }
    Ok(v)
}

/// What a run measured, for the limits (`None`: not measured in this mode).
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    /// p99 delivery latency in microseconds: from the scheduled send time
    /// in paced runs (coordinated omission), from the send time otherwise.
    pub p99_us: Option<u64>,
    /// Deliveries missing: lost silently, gaps, and events a server's reset
    /// skipped.
    pub loss: Option<u64>,
    pub expected: u64,
    pub deliveries_per_sec: Option<f64>,
    /// Connects and reconnects that failed.
    pub connect_failures: u64,
}

/// One limit's verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// The option, e.g. `--max-p99-ms`.
    pub threshold: &'static str,
    pub limit: String,
    pub measured: String,
    pub passed: bool,
}

impl Verdict {
    /// `--max-p99-ms 50: measured 73.20 ms`.
    pub fn describe(&self) -> String {
        format!(
            "{} {}: measured {}",
            self.threshold, self.limit, self.measured
        )
    }
}

/// Judges every limit given.
pub fn judge(limits: &Limits, m: &Measured) -> Vec<Verdict> {
    let mut out = Vec::new();
    let mut add = |threshold, limit: String, measured: Option<String>, passed: bool| {
        out.push(Verdict {
            threshold,
            limit,
            passed: passed && measured.is_some(),
            measured: measured.unwrap_or_else(|| "nothing (not measured in this mode)".into()),
        });
    };
    if let Some(max) = limits.max_p99_ms {
        let ms = m.p99_us.map(|us| us as f64 / 1000.0);
        add(
            "--max-p99-ms",
            max.to_string(),
            ms.map(|v| format!("p99 {v:.2} ms")),
            ms.is_some_and(|v| v <= max),
        );
    }
    if let Some(max) = limits.max_loss {
        add(
            "--max-loss",
            max.to_string(),
            m.loss.map(|l| {
                let pct = if m.expected > 0 {
                    l as f64 * 100.0 / m.expected as f64
                } else {
                    0.0
                };
                format!("{l} of {} deliveries ({pct:.3}%)", m.expected)
            }),
            m.loss.is_some_and(|l| max.allows(l, m.expected)),
        );
    }
    if let Some(min) = limits.min_deliveries_per_sec {
        add(
            "--min-deliveries-per-sec",
            min.to_string(),
            m.deliveries_per_sec.map(|v| format!("{v:.0} deliveries/s")),
            m.deliveries_per_sec.is_some_and(|v| v >= min),
        );
    }
    if let Some(max) = limits.max_connect_failures {
        add(
            "--max-connect-failures",
            max.to_string(),
            Some(format!("{} failed", m.connect_failures)),
            m.connect_failures <= max,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_limits_parse() {
        assert_eq!(LossLimit::parse("0").unwrap(), LossLimit::Deliveries(0));
        assert_eq!(LossLimit::parse("0.5%").unwrap(), LossLimit::Percent(0.5));
        for bad in ["-1", "x", "101%", "%"] {
            assert!(LossLimit::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(LossLimit::Percent(1.0).allows(10, 1000));
        assert!(!LossLimit::Percent(1.0).allows(11, 1000));
        assert!(LossLimit::Deliveries(3).allows(3, 0));
    }

    #[test]
    fn verdicts_name_the_limit_and_the_figure() {
        let limits = Limits {
            max_p99_ms: Some(5.0),
            max_loss: Some(LossLimit::Deliveries(0)),
            min_deliveries_per_sec: Some(1000.0),
            max_connect_failures: Some(2),
        };
        let m = Measured {
            p99_us: Some(7_250),
            loss: Some(0),
            expected: 500,
            deliveries_per_sec: Some(1500.0),
            connect_failures: 3,
        };
        let v = judge(&limits, &m);
        let failed: Vec<_> = v
            .iter()
            .filter(|v| !v.passed)
            .map(Verdict::describe)
            .collect();
        assert_eq!(
            failed,
            [
                "--max-p99-ms 5: measured p99 7.25 ms",
                "--max-connect-failures 2: measured 3 failed"
            ]
        );
        assert_eq!(v.len(), 4);
        // Not measured in this mode: failed, and said so.
        let v = judge(
            &Limits {
                max_loss: Some(LossLimit::Percent(1.0)),
                ..Default::default()
            },
            &Measured::default(),
        );
        assert!(!v[0].passed);
        assert!(v[0].measured.contains("not measured"));
        assert!(judge(&Limits::default(), &m).is_empty());
    }
}
