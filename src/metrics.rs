//! Counters and the `/metrics` page (Prometheus text format 0.0.4).
//!
//! Each reactor owns its counters, so they are plain integers, no atomics; the page sums every
//! reactor's (`Metrics::add`): the serving reactor's live ones and the others' as of their last
//! report, at most a second old. Metric names are
//! constants in `names`, so a dashboard and the code cannot drift apart silently.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use crate::conn::CloseReason;

pub mod names {
    pub const CONNECTIONS: &str = "herald_connections";
    pub const REACTOR_CONNECTIONS: &str = "herald_reactor_connections";
    pub const CONNECTIONS_ACCEPTED: &str = "herald_connections_accepted_total";
    pub const CONNECTIONS_REJECTED: &str = "herald_connections_rejected_total";
    pub const ACCEPT_ERRORS: &str = "herald_accept_errors_total";
    pub const HTTP_RESPONSES: &str = "herald_http_responses_total";
    pub const WEBSOCKETS_OPENED: &str = "herald_websockets_opened_total";
    pub const EVENTS_PUBLISHED: &str = "herald_events_published_total";
    pub const EVENTS_RECEIVED: &str = "herald_events_received_total";
    pub const EVENTS_DELIVERED: &str = "herald_events_delivered_total";
    pub const BYTES_WRITTEN: &str = "herald_bytes_written_total";
    pub const SLOW_CONSUMERS: &str = "herald_slow_consumers_closed_total";
    pub const CLOSES: &str = "herald_connections_closed_total";
    pub const REDIS_UP: &str = "herald_redis_up";
    pub const REDIS_RECONNECTS: &str = "herald_redis_reconnects_total";
    pub const PUBLISH_LATENCY: &str = "herald_publish_latency_seconds";
    pub const LIMIT_HITS: &str = "herald_limit_hits_total";
    pub const HISTORY_BYTES: &str = "herald_history_bytes";
    pub const HISTORY_CHANNELS: &str = "herald_history_channels";
    pub const AUTH_REFUSALS: &str = "herald_auth_refusals_total";
    pub const PUBLISH_DUPLICATES: &str = "herald_publish_duplicates_total";
    pub const IDEMPOTENCY_KEYS: &str = "herald_idempotency_keys";
    pub const IDEMPOTENCY_BYTES: &str = "herald_idempotency_bytes";
    pub const CLUSTER_REDIRECTS: &str = "herald_redis_cluster_redirects_total";
    pub const CLUSTER_REFRESHES: &str = "herald_redis_cluster_refreshes_total";
    pub const CLUSTER_FAILOVERS: &str = "herald_redis_cluster_failovers_total";
}

/// Which cap was hit: the `limit` label of `herald_limit_hits_total`. Every cap a peer can
/// run into counts here, so one query shows what is being refused, dropped or evicted.
pub mod limit {
    /// A subscriber's backlog (of any output) passed `MAX_QUEUED_BYTES`.
    pub const QUEUED_BYTES: &str = "queued_bytes";
    /// Embedded history: a channel's history forgotten for a new one over `MAX_CHANNELS`.
    pub const HISTORY_CHANNELS: &str = "history_channels";
    /// Embedded history over `HISTORY_MAX_BYTES`: a channel forgotten or an event dropped.
    pub const HISTORY_BYTES: &str = "history_bytes";
    /// Embedded history: a channel forgotten or an event dropped for `HISTORY_TTL_SECS`.
    pub const HISTORY_TTL: &str = "history_ttl";
    /// A subscription to one more channel refused: `MAX_SUBSCRIBED_CHANNELS` channels have
    /// subscribers.
    pub const SUBSCRIBED_CHANNELS: &str = "subscribed_channels";
    /// A WebSocket's input was paused: its backlog passed a quarter of the cap.
    pub const READ_PAUSED: &str = "read_paused";
    /// Publishes waiting on Redis reached `MAX_PENDING_PUBLISHES` (503).
    pub const PENDING_PUBLISHES: &str = "pending_publishes";
    /// History reads waiting on Redis reached `MAX_PENDING_READS` (503 or a reset notice).
    pub const PENDING_READS: &str = "pending_reads";
    /// Bytes of events waiting on Redis reached `MAX_PENDING_BYTES` (503, or a catch-up
    /// given up with a reset notice).
    pub const PENDING_BYTES: &str = "pending_bytes";
    /// Work waiting on Redis reached `REDIS_TIMEOUT_MS` (504, reset notice; link reset).
    pub const REDIS_TIMEOUT: &str = "redis_timeout";
    /// A reply from Redis beyond the RESP limits (nesting, bulk, array, total): link reset.
    pub const REDIS_REPLY: &str = "redis_reply";
    /// A message on the subscription too large for any subscriber: dropped.
    pub const REDIS_MESSAGE_BYTES: &str = "redis_message_bytes";
    /// A message on the subscription not shaped like an event (or with an `op`): dropped.
    pub const REDIS_MESSAGE_SHAPE: &str = "redis_message_shape";
    /// A message on the subscription whose id is ahead of Redis's clock: relayed without
    /// trusting the id.
    pub const REDIS_MESSAGE_ID: &str = "redis_message_id";
    /// A publish whose framed event would not fit a subscriber's `MAX_QUEUED_BYTES` (413).
    pub const EVENT_BYTES: &str = "event_bytes";
    /// A compressed WebSocket message that inflates past `MAX_MESSAGE_BYTES` (1009).
    pub const INFLATED_BYTES: &str = "inflated_bytes";
    /// A connection from an address already at `MAX_CONNECTIONS_PER_IP` (503).
    pub const CONNECTIONS_PER_IP: &str = "connections_per_ip";
    /// Embedded: an idempotency key forgotten before its window ended, over
    /// `IDEMPOTENCY_MAX_KEYS` or `IDEMPOTENCY_MAX_BYTES` (a retry with it would publish again).
    pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
    /// An occupancy watch refused: the connection's cap (subscriptions and watches
    /// together), or `MAX_SUBSCRIBED_CHANNELS` channels watched.
    pub const OCCUPANCY_WATCHES: &str = "occupancy_watches";
    /// Embedded, several reactors: a reactor's inbox reached `INBOX_MAX_EVENTS`; what did not
    /// fit was delivered from the history (or its channels' subscribers told to reset).
    pub const INBOX_EVENTS: &str = "inbox_events";
    /// The same for `INBOX_MAX_BYTES`.
    pub const INBOX_BYTES: &str = "inbox_bytes";
}

fn add_all<K: Ord + Copy>(mine: &mut BTreeMap<K, u64>, theirs: &BTreeMap<K, u64>) {
    for (&key, n) in theirs {
        *mine.entry(key).or_default() += n;
    }
}

/// Upper bounds (seconds) of the publish latency buckets.
const LATENCY_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    buckets: [u64; LATENCY_BOUNDS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = LATENCY_BOUNDS.iter().position(|&b| secs <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub accepted: u64,
    pub rejected: u64,
    pub accept_errors: u64,
    pub responses: BTreeMap<u16, u64>,
    pub websockets_opened: u64,
    pub events_published: u64,
    /// Publishes answered with an earlier publish's id (same idempotency key): not delivered.
    pub publish_duplicates: u64,
    pub events_received: u64,
    pub events_delivered: u64,
    pub bytes_written: u64,
    pub slow_consumers: u64,
    pub closes: BTreeMap<&'static str, u64>,
    pub redis_reconnects: u64,
    pub publish_latency: Histogram,
    /// Times each cap was hit, by `limit` name.
    pub limit_hits: BTreeMap<&'static str, u64>,
    /// Requests, subscriptions and refreshes refused by auth, by reason (`auth::Refusal`).
    pub auth_refusals: BTreeMap<&'static str, u64>,
}

/// Values that are state, not counts: read from the reactors when the page is built.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub http: usize,
    pub websockets: usize,
    pub sse: usize,
    /// `None` in embedded mode.
    pub redis_up: Option<bool>,
    /// Embedded history: memory held (as counted against `HISTORY_MAX_BYTES`) and channels
    /// kept. `None` with Redis.
    pub history: Option<(usize, usize)>,
    /// Embedded idempotency store: keys remembered and memory held (as counted against
    /// `IDEMPOTENCY_MAX_BYTES`). `None` with Redis (the keys live in Redis).
    pub idempotency: Option<(usize, usize)>,
    /// Open connections per reactor, when there are several (to see an imbalance).
    pub per_reactor: Vec<usize>,
    /// On a Redis Cluster: what the topologies counted (each reactor has its own links).
    /// `None` otherwise.
    pub cluster: Option<ClusterCounts>,
}

/// A Redis Cluster client's counts, kept by its topology (`resp::cluster`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterCounts {
    /// `MOVED` and `ASK` answers followed.
    pub redirects: u64,
    /// Reads of the slot map (`CLUSTER SHARDS`).
    pub refreshes: u64,
    /// Masters whose slots went to their replica.
    pub failovers: u64,
}

impl Gauges {
    /// Adds another reactor's connection gauges (and Redis state: up only if every
    /// reactor's links are).
    pub fn add(&mut self, other: &Gauges) {
        self.http += other.http;
        self.websockets += other.websockets;
        self.sse += other.sse;
        self.redis_up = match (self.redis_up, other.redis_up) {
            (Some(a), Some(b)) => Some(a && b),
            (a, b) => a.or(b),
        };
        if let Some(theirs) = other.cluster {
            let mine = self.cluster.get_or_insert_with(ClusterCounts::default);
            mine.redirects += theirs.redirects;
            mine.refreshes += theirs.refreshes;
            mine.failovers += theirs.failovers;
        }
    }
}

impl Histogram {
    fn add(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

impl Metrics {
    /// Adds another reactor's counters to these.
    pub fn add(&mut self, other: &Metrics) {
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.accept_errors += other.accept_errors;
        self.websockets_opened += other.websockets_opened;
        self.events_published += other.events_published;
        self.publish_duplicates += other.publish_duplicates;
        self.events_received += other.events_received;
        self.events_delivered += other.events_delivered;
        self.bytes_written += other.bytes_written;
        self.slow_consumers += other.slow_consumers;
        self.redis_reconnects += other.redis_reconnects;
        self.publish_latency.add(&other.publish_latency);
        add_all(&mut self.responses, &other.responses);
        add_all(&mut self.closes, &other.closes);
        add_all(&mut self.limit_hits, &other.limit_hits);
        add_all(&mut self.auth_refusals, &other.auth_refusals);
    }

    pub fn closed(&mut self, reason: CloseReason) {
        *self.closes.entry(reason.label()).or_default() += 1;
    }

    /// A cap was hit (a refusal, a drop, an eviction): see `limit`.
    pub fn limit_hit(&mut self, limit: &'static str) {
        *self.limit_hits.entry(limit).or_default() += 1;
    }

    /// A cap was hit `count` times at once (history evictions are counted in batches).
    pub fn limit_hits(&mut self, limit: &'static str, count: u64) {
        if count > 0 {
            *self.limit_hits.entry(limit).or_default() += count;
        }
    }

    pub fn auth_refused(&mut self, reason: &'static str) {
        *self.auth_refusals.entry(reason).or_default() += 1;
    }

    pub fn responded(&mut self, status: u16) {
        *self.responses.entry(status).or_default() += 1;
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        use names::*;
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP {CONNECTIONS} Open client connections by kind.\n# TYPE {CONNECTIONS} gauge"
        );
        let _ = writeln!(out, "{CONNECTIONS}{{kind=\"http\"}} {}", gauges.http);
        let _ = writeln!(
            out,
            "{CONNECTIONS}{{kind=\"websocket\"}} {}",
            gauges.websockets
        );
        let _ = writeln!(out, "{CONNECTIONS}{{kind=\"sse\"}} {}", gauges.sse);
        if gauges.per_reactor.len() > 1 {
            let _ = writeln!(
                out,
                "# HELP {REACTOR_CONNECTIONS} Open client connections per reactor thread (--threads).\n# TYPE {REACTOR_CONNECTIONS} gauge"
            );
            for (reactor, n) in gauges.per_reactor.iter().enumerate() {
                let _ = writeln!(out, "{REACTOR_CONNECTIONS}{{reactor=\"{reactor}\"}} {n}");
            }
        }
        let counters: [(&str, &str, u64); 11] = [
            (CONNECTIONS_ACCEPTED, "Connections accepted.", self.accepted),
            (
                CONNECTIONS_REJECTED,
                "Connections refused over the connection limit.",
                self.rejected,
            ),
            (
                ACCEPT_ERRORS,
                "accept() failures such as EMFILE.",
                self.accept_errors,
            ),
            (
                WEBSOCKETS_OPENED,
                "WebSocket upgrades completed.",
                self.websockets_opened,
            ),
            (
                EVENTS_PUBLISHED,
                "Events accepted on POST /events.",
                self.events_published,
            ),
            (
                PUBLISH_DUPLICATES,
                "Publishes with an idempotency key already used within IDEMPOTENCY_WINDOW_SECS: answered with the first id, not delivered.",
                self.publish_duplicates,
            ),
            (
                EVENTS_RECEIVED,
                "Events received from the broker for local delivery.",
                self.events_received,
            ),
            (
                EVENTS_DELIVERED,
                "Event frames queued to subscribers.",
                self.events_delivered,
            ),
            (
                BYTES_WRITTEN,
                "Bytes written to client sockets.",
                self.bytes_written,
            ),
            (
                SLOW_CONSUMERS,
                "Clients closed for not reading (backlog over the cap).",
                self.slow_consumers,
            ),
            (
                REDIS_RECONNECTS,
                "Redis links re-established after a failure.",
                self.redis_reconnects,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP {HTTP_RESPONSES} HTTP responses by status.\n# TYPE {HTTP_RESPONSES} counter"
        );
        for (status, n) in &self.responses {
            let _ = writeln!(out, "{HTTP_RESPONSES}{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP {CLOSES} Connections closed, by reason.\n# TYPE {CLOSES} counter"
        );
        for (reason, n) in &self.closes {
            let _ = writeln!(out, "{CLOSES}{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP {LIMIT_HITS} Caps hit (refusals, drops, evictions), by limit.\n# TYPE {LIMIT_HITS} counter"
        );
        for (limit, n) in &self.limit_hits {
            let _ = writeln!(out, "{LIMIT_HITS}{{limit=\"{limit}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP {AUTH_REFUSALS} Requests, subscriptions and refreshes refused by auth, by reason.\n# TYPE {AUTH_REFUSALS} counter"
        );
        for (reason, n) in &self.auth_refusals {
            let _ = writeln!(out, "{AUTH_REFUSALS}{{reason=\"{reason}\"}} {n}");
        }
        if let Some(up) = gauges.redis_up {
            let _ = writeln!(
                out,
                "# HELP {REDIS_UP} 1 when both Redis links are up.\n# TYPE {REDIS_UP} gauge\n{REDIS_UP} {}",
                u8::from(up)
            );
        }
        if let Some(cluster) = gauges.cluster {
            for (name, help, value) in [
                (
                    CLUSTER_REDIRECTS,
                    "MOVED and ASK redirects followed.",
                    cluster.redirects,
                ),
                (
                    CLUSTER_REFRESHES,
                    "Reads of the Redis Cluster slot map.",
                    cluster.refreshes,
                ),
                (
                    CLUSTER_FAILOVERS,
                    "Masters seen replaced by their replica.",
                    cluster.failovers,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
                );
            }
        }
        if let Some((bytes, channels)) = gauges.history {
            let _ = writeln!(
                out,
                "# HELP {HISTORY_BYTES} Memory held by the embedded history (capped by HISTORY_MAX_BYTES).\n# TYPE {HISTORY_BYTES} gauge\n{HISTORY_BYTES} {bytes}"
            );
            let _ = writeln!(
                out,
                "# HELP {HISTORY_CHANNELS} Channels with embedded history kept (capped by MAX_CHANNELS).\n# TYPE {HISTORY_CHANNELS} gauge\n{HISTORY_CHANNELS} {channels}"
            );
        }
        if let Some((keys, bytes)) = gauges.idempotency {
            let _ = writeln!(
                out,
                "# HELP {IDEMPOTENCY_KEYS} Idempotency keys remembered (capped by IDEMPOTENCY_MAX_KEYS).\n# TYPE {IDEMPOTENCY_KEYS} gauge\n{IDEMPOTENCY_KEYS} {keys}"
            );
            let _ = writeln!(
                out,
                "# HELP {IDEMPOTENCY_BYTES} Memory held by idempotency keys (capped by IDEMPOTENCY_MAX_BYTES).\n# TYPE {IDEMPOTENCY_BYTES} gauge\n{IDEMPOTENCY_BYTES} {bytes}"
            );
        }
        let h = &self.publish_latency;
        let _ = writeln!(
            out,
            "# HELP {PUBLISH_LATENCY} Time from a publish request to its verdict.\n# TYPE {PUBLISH_LATENCY} histogram"
        );
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BOUNDS.iter().zip(h.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{PUBLISH_LATENCY}_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{PUBLISH_LATENCY}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{PUBLISH_LATENCY}_sum {}", h.sum);
        let _ = writeln!(out, "{PUBLISH_LATENCY}_count {}", h.count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_sum_the_reactors_counters() {
        let mut a = Metrics::default();
        a.responded(200);
        a.events_delivered = 5;
        a.publish_latency.observe(Duration::from_millis(1));
        let mut b = Metrics::default();
        b.responded(200);
        b.responded(503);
        b.limit_hit(limit::QUEUED_BYTES);
        b.events_delivered = 7;
        b.publish_latency.observe(Duration::from_millis(1));
        a.add(&b);
        assert_eq!(a.events_delivered, 12);
        assert_eq!(a.responses[&200], 2);
        assert_eq!(a.responses[&503], 1);
        assert_eq!(a.limit_hits[limit::QUEUED_BYTES], 1);
        assert_eq!(a.publish_latency.count, 2);
        let mut up = Gauges {
            redis_up: Some(true),
            websockets: 1,
            ..Gauges::default()
        };
        up.add(&Gauges {
            redis_up: Some(false),
            websockets: 2,
            ..Gauges::default()
        });
        assert_eq!((up.redis_up, up.websockets), (Some(false), 3));
    }

    #[test]
    fn should_render_counters_and_a_cumulative_histogram() {
        let mut m = Metrics::default();
        m.responded(200);
        m.closed(CloseReason::SlowConsumer);
        m.limit_hit(limit::QUEUED_BYTES);
        m.auth_refused("signature");
        m.publish_latency.observe(Duration::from_micros(300));
        m.publish_latency.observe(Duration::from_millis(30));
        let text = m.render(&Gauges {
            http: 1,
            websockets: 2,
            sse: 3,
            redis_up: Some(true),
            history: Some((4096, 2)),
            idempotency: Some((3, 735)),
            per_reactor: vec![4, 2],
            cluster: Some(ClusterCounts {
                redirects: 4,
                refreshes: 5,
                failovers: 1,
            }),
        });
        assert!(text.contains("herald_redis_cluster_redirects_total 4\n"));
        assert!(text.contains("herald_redis_cluster_failovers_total 1\n"));
        assert!(text.contains("herald_connections{kind=\"websocket\"} 2\n"));
        assert!(text.contains("herald_reactor_connections{reactor=\"1\"} 2\n"));
        assert!(text.contains("herald_connections{kind=\"sse\"} 3\n"));
        assert!(text.contains("herald_http_responses_total{status=\"200\"} 1\n"));
        assert!(text.contains("herald_connections_closed_total{reason=\"slow_consumer\"} 1\n"));
        assert!(text.contains("herald_publish_latency_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("herald_publish_latency_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("herald_publish_latency_seconds_count 2\n"));
        assert!(text.contains("herald_redis_up 1\n"));
        assert!(text.contains("herald_limit_hits_total{limit=\"queued_bytes\"} 1\n"));
        assert!(text.contains("herald_history_bytes 4096\n"));
        assert!(text.contains("herald_auth_refusals_total{reason=\"signature\"} 1\n"));
        assert!(text.contains("herald_history_channels 2\n"));
        assert!(text.contains("herald_idempotency_keys 3\n"));
        assert!(text.contains("herald_idempotency_bytes 735\n"));
    }
}
