//! Load over time (`--ramp 0s:0,30s:15000,60s:15000,90s:0`): a target number
//! of open connections, linear between points, and the per-second time
//! series every client-holding process records while it follows it.
//!
//! Each process follows its share of the target (see [`Ramp::share`]); the
//! shares add up to the target exactly. Clients are used once: a client
//! closed on a way down is not reopened, so a process holds as many clients
//! as the ramp opens in all ([`Ramp::total_opens`]).

use serde::{Deserialize, Serialize};

use crate::stats::{Latency, LatencySummary, Second};

/// A parsed `--ramp`: (seconds, target connections), times increasing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ramp {
    points: Vec<(f64, u64)>,
}

impl Ramp {
    /// Parses `T:N,T:N,...` with T in seconds (`30`, `30s`, `1.5s`, `2m`),
    /// the first at 0, times strictly increasing.
    pub fn parse(spec: &str) -> Result<Ramp, String> {
        let mut points: Vec<(f64, u64)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (t, n) = part
                .split_once(':')
                .ok_or_else(|| format!("{part}: expected TIME:CONNECTIONS, e.g. 30s:15000"))?;
            let t = t.trim();
            let secs = match t.strip_suffix('m') {
                Some(m) => m.parse::<f64>().map(|v| v * 60.0),
                None => t.trim_end_matches('s').parse::<f64>(),
            }
            .map_err(|e| format!("{part}: time: {e}"))?;
            if !secs.is_finite() || secs < 0.0 {
                return Err(format!("{part}: time must be >= 0"));
            }
            let n: u64 = n
                .trim()
                .parse()
                .map_err(|e| format!("{part}: connections: {e}"))?;
            if let Some(&(prev, _)) = points.last()
                && secs <= prev
            {
                return Err(format!("{part}: times must increase"));
            }
            points.push((secs, n));
        }
        match points.first() {
            None => return Err("empty ramp".into()),
            Some(&(t, _)) if t != 0.0 => {
                return Err("the first point must be at 0s (e.g. 0s:0)".into());
            }
            _ => {}
        }
        if points.len() < 2 {
            return Err("a ramp needs at least two points".into());
        }
        Ok(Ramp { points })
    }

    /// Seconds from the first point to the last.
    pub fn duration_s(&self) -> f64 {
        self.points.last().map_or(0.0, |p| p.0)
    }

    /// Target connections `t` seconds into the ramp (linear between points;
    /// the last point's value after it).
    pub fn target_at(&self, t: f64) -> u64 {
        for w in self.points.windows(2) {
            let ((t0, v0), (t1, v1)) = (w[0], w[1]);
            if t < t1 {
                let f = ((t - t0) / (t1 - t0)).clamp(0.0, 1.0);
                return (v0 as f64 + (v1 as f64 - v0 as f64) * f).floor() as u64;
            }
        }
        self.points.last().map_or(0, |p| p.1)
    }

    /// Clients the ramp opens in all: the first target plus every rise.
    pub fn total_opens(&self) -> u64 {
        let first = self.points[0].1;
        first
            + self
                .points
                .windows(2)
                .map(|w| w[1].1.saturating_sub(w[0].1))
                .sum::<u64>()
    }

    /// A process's share of `target`, for the process whose clients are
    /// `first..first + n` of `total`: the shares of all processes add up to
    /// `target` exactly, each in proportion to its clients.
    pub fn share(target: u64, first: u64, n: u64, total: u64) -> u64 {
        if total == 0 {
            return 0;
        }
        let cut = |k: u64| (u128::from(target) * u128::from(k) / u128::from(total)) as u64;
        cut(first + n) - cut(first)
    }

    /// The phases: consecutive pairs of points.
    pub fn phases(&self) -> impl Iterator<Item = ((f64, u64), (f64, u64))> + '_ {
        self.points.windows(2).map(|w| (w[0], w[1]))
    }
}

/// One line of the reported time series.
#[derive(Debug, Clone, Serialize)]
pub struct SecondReport {
    /// Start of the second, seconds into the ramp.
    pub t: u64,
    pub target: u64,
    pub connections: u64,
    /// Connects completed in this second (= connects per second).
    pub connects: u64,
    pub closes: u64,
    /// Reconnects (churn, storm) completed in this second.
    pub reconnects: u64,
    pub deliveries: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub errors: u64,
}

/// One phase of the ramp, from the seconds it covers.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseReport {
    pub from_s: f64,
    pub to_s: f64,
    pub from_target: u64,
    pub to_target: u64,
    /// Open connections at the end of the phase's last second.
    pub connections_at_end: u64,
    pub connects: u64,
    pub closes: u64,
    pub deliveries_per_sec: f64,
    pub latency_us: Option<LatencySummary>,
    pub errors: u64,
}

/// The per-second lines of a merged series.
pub fn series_report(ramp: &Ramp, series: &[Second]) -> Vec<SecondReport> {
    series
        .iter()
        .enumerate()
        .map(|(t, s)| {
            let l = s.latency.summary();
            SecondReport {
                t: t as u64,
                target: ramp.target_at((t + 1) as f64),
                connections: s.connections,
                connects: s.connects,
                closes: s.closes,
                reconnects: s.reconnects,
                deliveries: s.deliveries,
                p50_us: l.map(|l| l.p50),
                p99_us: l.map(|l| l.p99),
                errors: s.errors,
            }
        })
        .collect()
}

/// Per phase: the seconds that start inside it.
pub fn phase_reports(ramp: &Ramp, series: &[Second]) -> Vec<PhaseReport> {
    ramp.phases()
        .map(|((t0, v0), (t1, v1))| {
            let secs: Vec<&Second> = series
                .iter()
                .enumerate()
                .filter(|&(t, _)| (t as f64) >= t0 && (t as f64) < t1)
                .map(|(_, s)| s)
                .collect();
            let mut latency = Latency::default();
            for s in &secs {
                latency.merge(&s.latency);
            }
            let deliveries: u64 = secs.iter().map(|s| s.deliveries).sum();
            PhaseReport {
                from_s: t0,
                to_s: t1,
                from_target: v0,
                to_target: v1,
                connections_at_end: secs.last().map_or(0, |s| s.connections),
                connects: secs.iter().map(|s| s.connects).sum(),
                closes: secs.iter().map(|s| s.closes).sum(),
                deliveries_per_sec: if secs.is_empty() {
                    0.0
                } else {
                    deliveries as f64 / secs.len() as f64
                },
                latency_us: latency.summary(),
                errors: secs.iter().map(|s| s.errors).sum(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::merge_series;

    #[test]
    fn parses_and_interpolates() {
        let r = Ramp::parse("0s:0,30s:15000,60s:15000,90s:0").unwrap();
        assert_eq!(r.duration_s(), 90.0);
        assert_eq!(r.target_at(0.0), 0);
        assert_eq!(r.target_at(15.0), 7500);
        assert_eq!(r.target_at(45.0), 15000);
        assert_eq!(r.target_at(75.0), 7500);
        assert_eq!(r.target_at(90.0), 0);
        assert_eq!(r.target_at(120.0), 0);
        assert_eq!(r.total_opens(), 15000);
        let up_down_up = Ramp::parse("0:10,1m:20,90:5,100s:30").unwrap();
        assert_eq!(up_down_up.total_opens(), 10 + 10 + 25);
        assert_eq!(up_down_up.duration_s(), 100.0);
        for bad in [
            "",
            "5s:10,10s:0",
            "0s:0",
            "0s:0,0s:5",
            "0s:0,x:5",
            "0s:0,5s:-1",
            "0s:0,5",
        ] {
            assert!(Ramp::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn shares_add_up() {
        let split = [(0, 34), (34, 33), (67, 33)];
        for target in [0, 1, 2, 50, 99, 100] {
            let sum: u64 = split
                .iter()
                .map(|&(f, n)| Ramp::share(target, f, n, 100))
                .sum();
            assert_eq!(sum, target);
        }
        assert_eq!(Ramp::share(100, 34, 33, 100), 33);
        assert_eq!(Ramp::share(5, 0, 0, 0), 0);
    }

    #[test]
    fn series_and_phases() {
        let r = Ramp::parse("0:0,2:20,3:20").unwrap();
        let mut a = vec![Second::default(); 2];
        a[0].connections = 5;
        a[0].connects = 5;
        a[1].deliveries = 10;
        a[1].latency.record_us(100);
        let mut b = vec![Second::default(); 3];
        b[0].connections = 4;
        b[2].connections = 20;
        b[2].deliveries = 30;
        b[2].latency.record_us(300);
        let mut all = Vec::new();
        merge_series(&mut all, &a);
        merge_series(&mut all, &b);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].connections, 9);
        let lines = series_report(&r, &all);
        assert_eq!((lines[0].target, lines[1].target), (10, 20));
        let phases = phase_reports(&r, &all);
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0].connects, 5);
        assert_eq!(phases[0].deliveries_per_sec, 5.0);
        assert_eq!(phases[1].connections_at_end, 20);
        assert_eq!(phases[1].latency_us.unwrap().p99, 300);
    }
}
