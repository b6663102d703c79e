//! Mergeable measurements: latency histograms (HDR, microseconds) that
//! serialize compactly for the worker protocol, and the per-process client
//! pool statistics that the parent merges across workers.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency tracked: one hour, in microseconds.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds (3 significant digits).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(into = "Vec<(u64, u64)>", try_from = "Vec<(u64, u64)>")]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"),
        }
    }
}

impl Latency {
    /// Records a latency given in nanoseconds (negative values, from clock
    /// steps, count as the minimum).
    #[inline]
    pub fn record_ns(&mut self, ns: i64) {
        self.record_us((ns.max(0) as u64).div_ceil(1000));
    }

    /// Records a latency given in microseconds.
    #[inline]
    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Value at quantile `q` (0..=1) in microseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(q)
        }
    }

    pub fn max(&self) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.max()
        }
    }

    pub fn mean(&self) -> f64 {
        if self.hist.is_empty() {
            0.0
        } else {
            self.hist.mean()
        }
    }

    /// p50/p90/p99/p99.9/max/mean summary, `None` when empty.
    pub fn summary(&self) -> Option<LatencySummary> {
        (self.count() > 0).then(|| LatencySummary {
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            max: self.max(),
            mean: (self.mean() * 10.0).round() / 10.0,
        })
    }
}

/// A few percentiles of a [`Latency`], microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl From<Latency> for Vec<(u64, u64)> {
    fn from(l: Latency) -> Self {
        l.hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }
}

impl TryFrom<Vec<(u64, u64)>> for Latency {
    type Error = String;
    fn try_from(v: Vec<(u64, u64)>) -> Result<Self, String> {
        let mut l = Latency::default();
        for (value, count) in v {
            l.hist
                .record_n(value.clamp(1, MAX_US), count)
                .map_err(|e| format!("histogram: {e:?}"))?;
        }
        Ok(l)
    }
}

/// The HDR histograms behind a report's percentiles, serialized in full
/// (value, count pairs) so that the runs of several generator hosts can be
/// merged into one report (`herald-bench merge`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Histograms {
    /// Send time to receipt.
    pub latency: Latency,
    /// Scheduled send time to receipt (paced runs).
    pub sched_latency: Latency,
    pub handshake: Latency,
    /// Ramp: connects from their due time.
    pub connect_from_due: Latency,
    /// Churn reconnects from their scheduled time.
    pub reconnect: Latency,
    pub storm_reconnect: Latency,
    /// Replayed deliveries (churn, storm), send time to receipt.
    pub replay: Latency,
}

impl Histograms {
    pub fn of(s: &PoolStats) -> Histograms {
        Histograms {
            latency: s.latency.clone(),
            sched_latency: s.sched_latency.clone(),
            handshake: s.handshake.clone(),
            connect_from_due: s.connect_from_due.clone(),
            reconnect: s.resume.reconnect.clone(),
            storm_reconnect: s.resume.storm_reconnect.clone(),
            replay: s.resume.replay_latency.clone(),
        }
    }

    pub fn merge(&mut self, o: &Histograms) {
        self.latency.merge(&o.latency);
        self.sched_latency.merge(&o.sched_latency);
        self.handshake.merge(&o.handshake);
        self.connect_from_due.merge(&o.connect_from_due);
        self.reconnect.merge(&o.reconnect);
        self.storm_reconnect.merge(&o.storm_reconnect);
        self.replay.merge(&o.replay);
    }
}

/// What one process's client pool observed. Counters add up across workers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PoolStats {
    /// Clients this pool was asked to open.
    pub clients: u64,
    /// Clients whose handshake succeeded.
    pub connected: u64,
    /// Clients that never got a successful handshake.
    pub failed: u64,
    /// Failure / early-close reasons with counts.
    pub failures: BTreeMap<String, u64>,
    /// Open clients that the server closed (or that broke) before the end.
    pub closed_early: u64,
    /// Bench event frames received (duplicates included).
    pub deliveries: u64,
    /// Distinct (client, seq) pairs received.
    pub unique: u64,
    pub duplicates: u64,
    /// New events that arrived after an event with a higher seq.
    pub out_of_order: u64,
    /// Frames that were not bench events of this run (other types, unparsable).
    pub foreign: u64,
    /// Bench events of another channel than the client's (`--channels`).
    pub wrong_channel: u64,
    /// Deliveries the connected clients should get (sum of their channels'
    /// event counts).
    pub expected_deliveries: u64,
    /// Expected (client, seq) pairs never received (connected clients only).
    pub lost: u64,
    /// Connected clients that received every expected event.
    pub complete_clients: u64,
    /// Unix time of the first / last bench delivery, nanoseconds.
    pub first_delivery_ns: Option<u64>,
    pub last_delivery_ns: Option<u64>,
    /// Seconds from first connect attempt until all attempts finished.
    pub connect_seconds: f64,
    /// Latency from the publisher's send time to receipt.
    pub latency: Latency,
    /// Latency from the scheduled send time (paced runs only).
    pub sched_latency: Latency,
    /// Connect + handshake time per client.
    pub handshake: Latency,
    /// CPU seconds (user+system) spent by the process during the connect
    /// phase, and in total.
    pub cpu_connect_s: f64,
    pub cpu_total_s: f64,
    /// Ramp: clients closed because the target fell.
    #[serde(default)]
    pub retired: u64,
    /// Ramp: events missing between two a client received.
    #[serde(default)]
    pub gaps: u64,
    /// Ramp: connect + handshake time from when the target made the client
    /// due (so waiting in the generator's connect queue counts).
    #[serde(default)]
    pub connect_from_due: Latency,
    /// Ramp: one entry per second since the ramp started.
    #[serde(default)]
    pub series: Vec<Second>,
    /// Churn and storm: drops, reconnects, resets.
    #[serde(default)]
    pub resume: ResumeStats,
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl PoolStats {
    /// Adds another pool's results into this one.
    pub fn merge(&mut self, o: &PoolStats) {
        self.clients += o.clients;
        self.connected += o.connected;
        self.failed += o.failed;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.closed_early += o.closed_early;
        self.deliveries += o.deliveries;
        self.unique += o.unique;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.foreign += o.foreign;
        self.wrong_channel += o.wrong_channel;
        self.expected_deliveries += o.expected_deliveries;
        self.lost += o.lost;
        self.complete_clients += o.complete_clients;
        self.first_delivery_ns = min_opt(self.first_delivery_ns, o.first_delivery_ns);
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
        // Workers connect concurrently: the phase lasts as long as the slowest.
        self.connect_seconds = self.connect_seconds.max(o.connect_seconds);
        self.latency.merge(&o.latency);
        self.sched_latency.merge(&o.sched_latency);
        self.handshake.merge(&o.handshake);
        self.cpu_connect_s += o.cpu_connect_s;
        self.cpu_total_s += o.cpu_total_s;
        self.retired += o.retired;
        self.gaps += o.gaps;
        self.connect_from_due.merge(&o.connect_from_due);
        merge_series(&mut self.series, &o.series);
        self.resume.merge(&o.resume);
    }
}

/// What one process saw in one second of a ramp. Counters add up across
/// processes; `connections` is each process's open count at its last look
/// in that second, so the sum is the total then.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Second {
    pub connections: u64,
    pub connects: u64,
    pub closes: u64,
    pub deliveries: u64,
    /// Failed connects and connections the server closed.
    pub errors: u64,
    /// Reconnects (churn, storm) completed.
    #[serde(default)]
    pub reconnects: u64,
    pub latency: Latency,
}

impl Second {
    pub fn merge(&mut self, o: &Second) {
        self.connections += o.connections;
        self.connects += o.connects;
        self.closes += o.closes;
        self.deliveries += o.deliveries;
        self.errors += o.errors;
        self.reconnects += o.reconnects;
        self.latency.merge(&o.latency);
    }
}

/// Adds `other`'s seconds into `into`, second by second.
pub fn merge_series(into: &mut Vec<Second>, other: &[Second]) {
    if into.len() < other.len() {
        into.resize_with(other.len(), Second::default);
    }
    for (a, b) in into.iter_mut().zip(other) {
        a.merge(b);
    }
}

/// Counts of drops, reconnects and resets; they add up across processes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ResumeCounts {
    /// Clients dropped by the churn.
    pub churned: u64,
    /// Churns that were due but found no open client that had received an
    /// event yet (nothing to resume from).
    pub churn_missed: u64,
    /// Reconnects whose handshake succeeded (churn and storm).
    pub resumed: u64,
    /// Reconnects made without `since=` because the server's events carry
    /// no id (the server cannot resume them; events meanwhile are lost).
    pub resumed_without_id: u64,
    /// Reconnects that failed (the client then counts as closed early).
    pub resume_failed: u64,
    /// `{"op":"reset"}` notices: the server could not replay from the id.
    pub resets: u64,
    /// Events written off after a reset (the server said they may be
    /// missing): not counted as loss, reported apart.
    pub reset_gap_events: u64,
    /// Deliveries of events sent before the client's reconnect completed
    /// (the catch-up): timed apart from live deliveries.
    #[serde(default)]
    pub replayed: u64,
}

impl ResumeCounts {
    pub fn add(&mut self, o: &ResumeCounts) {
        self.churned += o.churned;
        self.churn_missed += o.churn_missed;
        self.resumed += o.resumed;
        self.resumed_without_id += o.resumed_without_id;
        self.resume_failed += o.resume_failed;
        self.resets += o.resets;
        self.reset_gap_events += o.reset_gap_events;
        self.replayed += o.replayed;
    }
}

/// What one process saw of churn and storms. Counters add up across
/// processes; the storm's time to all-reconnected is the slowest process's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResumeStats {
    #[serde(flatten)]
    pub counts: ResumeCounts,
    /// Churn reconnects, from the scheduled reconnect time to the 101.
    pub reconnect: Latency,
    pub storm_dropped: u64,
    pub storm_reconnected: u64,
    pub storm_failed: u64,
    /// From the storm to this process's last storm reconnect (`None` while
    /// some are still out, or without a storm).
    pub storm_all_reconnected_s: Option<f64>,
    pub storm_reconnect: Latency,
    /// Send time to receipt of the replayed deliveries (late by design: by
    /// about the time the client was away).
    #[serde(default)]
    pub replay_latency: Latency,
}

impl ResumeStats {
    pub fn merge(&mut self, o: &ResumeStats) {
        self.counts.add(&o.counts);
        self.reconnect.merge(&o.reconnect);
        self.storm_dropped += o.storm_dropped;
        self.storm_reconnected += o.storm_reconnected;
        self.storm_failed += o.storm_failed;
        // The storm is over when the slowest process is; a process with
        // nothing dropped has nothing to wait for.
        self.storm_all_reconnected_s =
            match (self.storm_all_reconnected_s, o.storm_all_reconnected_s) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        self.storm_reconnect.merge(&o.storm_reconnect);
        self.replay_latency.merge(&o.replay_latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_roundtrip_through_json() {
        let mut l = Latency::default();
        for us in 1..=1000u64 {
            l.record_us(us);
        }
        l.record_ns(5_000_000_000); // 5 s
        l.record_ns(-3);
        let json = serde_json::to_string(&l).unwrap();
        let back: Latency = serde_json::from_str(&json).unwrap();
        assert_eq!(back.count(), l.count());
        assert_eq!(back.quantile(0.5), l.quantile(0.5));
        assert_eq!(back.quantile(0.99), l.quantile(0.99));
        assert_eq!(back.max(), l.max());
        assert_eq!(Latency::default().summary(), None);
    }

    #[test]
    fn pool_stats_merge() {
        let mut a = PoolStats {
            clients: 10,
            connected: 9,
            failed: 1,
            deliveries: 90,
            unique: 90,
            lost: 0,
            expected_deliveries: 90,
            complete_clients: 9,
            first_delivery_ns: Some(200),
            last_delivery_ns: Some(900),
            connect_seconds: 1.5,
            cpu_total_s: 0.5,
            ..Default::default()
        };
        a.failures.insert("http 503".into(), 1);
        for us in [100, 200, 300] {
            a.latency.record_us(us);
        }
        let mut b = PoolStats {
            clients: 10,
            connected: 10,
            deliveries: 101,
            unique: 98,
            duplicates: 3,
            out_of_order: 2,
            lost: 2,
            wrong_channel: 4,
            expected_deliveries: 100,
            complete_clients: 8,
            first_delivery_ns: Some(150),
            last_delivery_ns: Some(800),
            connect_seconds: 2.5,
            cpu_total_s: 0.25,
            ..Default::default()
        };
        b.failures.insert("http 503".into(), 2);
        b.failures.insert("handshake timeout".into(), 1);
        b.latency.record_us(10_000);
        b.sched_latency.record_us(7);

        // Merge through the wire format, as the parent does.
        let b: PoolStats = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let mut total = PoolStats::default();
        total.merge(&a);
        total.merge(&b);
        a.merge(&b);
        for m in [&a, &total] {
            assert_eq!((m.clients, m.connected, m.failed), (20, 19, 1));
            assert_eq!((m.deliveries, m.unique, m.duplicates), (191, 188, 3));
            assert_eq!((m.out_of_order, m.lost, m.complete_clients), (2, 2, 17));
            assert_eq!((m.wrong_channel, m.expected_deliveries), (4, 190));
            assert_eq!(m.failures["http 503"], 3);
            assert_eq!(m.failures["handshake timeout"], 1);
            assert_eq!(m.first_delivery_ns, Some(150));
            assert_eq!(m.last_delivery_ns, Some(900));
            assert_eq!(m.connect_seconds, 2.5);
            assert_eq!(m.cpu_total_s, 0.75);
            assert_eq!(m.latency.count(), 4);
            assert!(m.latency.max() >= 10_000 && m.latency.max() < 10_010);
            assert_eq!(m.sched_latency.count(), 1);
        }
    }
}
