//! Disruption while events flow: `--churn N` (N connections closed and
//! reopened per second) and `--storm-at T` (a share of the clients dropped at
//! once), every reconnect resuming from the client's last event id
//! (`since=<id>`). This module holds the decisions (which churn is due when,
//! how many a storm drops, what a reconnect's URL is) and the mergeable
//! figures; the sockets are in [`crate::pool`].
//!
//! Reconnect latency is measured from the reconnect's scheduled time (the
//! k-th churn of a process is due `k / rate` seconds into the phase, plus
//! `--reconnect-delay`), not from when the generator got round to it, so a
//! late generator cannot hide a slow server (coordinated omission).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::{LatencySummary, ResumeCounts, ResumeStats};

/// What one client-holding process does to its clients during the phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disruption {
    /// This process's share of `--churn`: drops (each followed by a
    /// reconnect) per second.
    pub churn_per_sec: f64,
    /// From a drop to its reconnect (`--reconnect-delay`).
    pub reconnect_delay_s: f64,
    /// `--storm-at`: seconds into the phase, and the share of this process's
    /// clients dropped then.
    pub storm: Option<Storm>,
}

/// A reconnect storm's plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Storm {
    pub at_s: f64,
    pub fraction: f64,
}

impl Disruption {
    /// The part of the run's disruption that falls to a process holding `n`
    /// of `total` clients: churn in proportion, the storm as it is (a share
    /// of each process's clients).
    pub fn share(&self, n: usize, total: usize) -> Disruption {
        let part = if total == 0 {
            0.0
        } else {
            n as f64 / total as f64
        };
        Disruption {
            churn_per_sec: self.churn_per_sec * part,
            ..self.clone()
        }
    }

    /// Churns due `elapsed` into the phase: one every `1 / churn_per_sec`,
    /// the first at `1 / churn_per_sec`.
    pub fn churns_due(&self, elapsed: Duration) -> u64 {
        if self.churn_per_sec <= 0.0 {
            return 0;
        }
        (elapsed.as_secs_f64() * self.churn_per_sec).floor() as u64
    }

    /// When churn number `k` (1-based) is due, from the start of the phase.
    pub fn churn_time(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.churn_per_sec)
    }

    pub fn reconnect_delay(&self) -> Duration {
        Duration::from_secs_f64(self.reconnect_delay_s)
    }
}

/// Clients a storm drops out of `eligible` (rounded; at least one when the
/// share is above zero and anyone is eligible).
pub fn storm_count(eligible: usize, fraction: f64) -> usize {
    if eligible == 0 || fraction <= 0.0 {
        return 0;
    }
    ((eligible as f64 * fraction).round() as usize).clamp(1, eligible)
}

/// The upgrade path of a reconnecting client: `path` plus `since=<id>` (with
/// `?` or `&`), or `path` unchanged without an id (the server gave none: a
/// reconnect without resume).
pub fn resume_path(path: &str, last_id: Option<&str>) -> String {
    match last_id {
        None => path.to_string(),
        Some(id) => {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}since={}", percent_encode(id))
        }
    }
}

/// Ids are `<ms>-<seq>` in Herald; anything outside the unreserved set is
/// percent-encoded so another server's ids survive the query string.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Longest event id kept as a resume point; a longer one is not stored (the
/// client then reconnects without resume, counted in `resumed_without_id`).
pub const MAX_ID_LEN: usize = 128;

/// The reported churn and storm figures.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeReport {
    pub churn_per_sec: f64,
    pub reconnect_delay_s: f64,
    #[serde(flatten)]
    pub counts: ResumeCounts,
    pub reconnect_us: Option<LatencySummary>,
    /// Replayed deliveries, send time to receipt.
    pub replay_latency_us: Option<LatencySummary>,
    pub storm: Option<StormReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub at_s: f64,
    pub fraction: f64,
    pub dropped: u64,
    pub reconnected: u64,
    pub failed: u64,
    /// From the storm until every dropped client was back (`None`: some
    /// never came back).
    pub all_reconnected_s: Option<f64>,
    pub reconnect_us: Option<LatencySummary>,
}

impl ResumeReport {
    pub fn new(plan: &Disruption, s: &ResumeStats) -> ResumeReport {
        ResumeReport {
            churn_per_sec: plan.churn_per_sec,
            reconnect_delay_s: plan.reconnect_delay_s,
            counts: s.counts,
            reconnect_us: s.reconnect.summary(),
            replay_latency_us: s.replay_latency.summary(),
            storm: plan.storm.map(|st| StormReport {
                at_s: st.at_s,
                fraction: st.fraction,
                dropped: s.storm_dropped,
                reconnected: s.storm_reconnected,
                failed: s.storm_failed,
                all_reconnected_s: s
                    .storm_all_reconnected_s
                    .filter(|_| s.storm_reconnected == s.storm_dropped && s.storm_dropped > 0),
                reconnect_us: s.storm_reconnect.summary(),
            }),
        }
    }

    /// What went wrong, for the run's problem list. Resets count as loss
    /// and failed reconnects as failed connects, unless a CI threshold
    /// judges those instead (`loss_judged`, `connects_judged`).
    pub fn problems(&self, loss_judged: bool, connects_judged: bool) -> Vec<String> {
        let mut p = Vec::new();
        if self.counts.resets > 0 && !loss_judged {
            p.push(format!(
                "{} resume(s) refused by the server (reset): {} event deliveries not replayed",
                self.counts.resets, self.counts.reset_gap_events
            ));
        }
        if self.counts.resume_failed > 0 && !connects_judged {
            p.push(format!("{} reconnect(s) failed", self.counts.resume_failed));
        }
        if self.churn_per_sec > 0.0 && self.counts.churned == 0 {
            p.push("no client was churned (none had received an event)".into());
        }
        if let Some(s) = &self.storm {
            if s.dropped == 0 {
                p.push(format!(
                    "the storm at {} s dropped no client (the phase ended first, or none had received an event)",
                    s.at_s
                ));
            } else if s.all_reconnected_s.is_none() {
                p.push(format!(
                    "storm: only {} of {} dropped clients reconnected",
                    s.reconnected, s.dropped
                ));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_schedule_and_shares() {
        let d = Disruption {
            churn_per_sec: 10.0,
            reconnect_delay_s: 0.0,
            storm: None,
        };
        assert_eq!(d.churns_due(Duration::from_millis(99)), 0);
        assert_eq!(d.churns_due(Duration::from_millis(100)), 1);
        assert_eq!(d.churns_due(Duration::from_millis(2050)), 20);
        assert_eq!(d.churn_time(3), Duration::from_millis(300));
        // Shares add up to the whole rate.
        let parts: f64 = [(34, 100), (33, 100), (33, 100)]
            .iter()
            .map(|&(n, t)| d.share(n, t).churn_per_sec)
            .sum();
        assert!((parts - 10.0).abs() < 1e-9);
        assert_eq!(d.share(5, 0).churn_per_sec, 0.0);
        let off = Disruption {
            churn_per_sec: 0.0,
            ..d
        };
        assert_eq!(off.churns_due(Duration::from_secs(100)), 0);
    }

    #[test]
    fn storm_counts() {
        assert_eq!(storm_count(100, 1.0), 100);
        assert_eq!(storm_count(100, 0.25), 25);
        assert_eq!(storm_count(3, 0.1), 1);
        assert_eq!(storm_count(0, 1.0), 0);
        assert_eq!(storm_count(10, 0.0), 0);
    }

    #[test]
    fn resume_paths() {
        assert_eq!(resume_path("/ws", Some("17-3")), "/ws?since=17-3");
        assert_eq!(
            resume_path("/ws?channels=ch1", Some("17-3")),
            "/ws?channels=ch1&since=17-3"
        );
        assert_eq!(resume_path("/ws", None), "/ws");
        assert_eq!(resume_path("/ws", Some("a b&c")), "/ws?since=a%20b%26c");
    }

    #[test]
    fn storm_time_is_the_slowest_process() {
        let mut a = ResumeStats {
            storm_dropped: 3,
            storm_reconnected: 3,
            storm_all_reconnected_s: Some(0.2),
            ..Default::default()
        };
        a.counts.resets = 1;
        let b = ResumeStats {
            storm_dropped: 2,
            storm_reconnected: 2,
            storm_all_reconnected_s: Some(0.5),
            ..Default::default()
        };
        a.merge(&b);
        assert_eq!(a.storm_all_reconnected_s, Some(0.5));
        assert_eq!((a.storm_dropped, a.counts.resets), (5, 1));
        let plan = Disruption {
            churn_per_sec: 0.0,
            reconnect_delay_s: 0.0,
            storm: Some(Storm {
                at_s: 1.0,
                fraction: 1.0,
            }),
        };
        let r = ResumeReport::new(&plan, &a);
        assert_eq!(r.storm.as_ref().unwrap().all_reconnected_s, Some(0.5));
        assert_eq!(
            r.problems(false, false).len(),
            1,
            "{:?}",
            r.problems(false, false)
        );
        a.storm_failed = 1;
        a.storm_dropped += 1;
        let r = ResumeReport::new(&plan, &a);
        assert_eq!(r.storm.as_ref().unwrap().all_reconnected_s, None);
        assert_eq!(r.problems(false, false).len(), 2);
    }
}
