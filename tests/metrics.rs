//! `GET /metrics` is read by a real Prometheus text-format parser (Python's
//! `prometheus_client`, `text_string_to_metric_families`), and its counters move with the
//! traffic they count.
//!
//! The parser must be importable: by `$HERALD_PYTHON` if set, else by `python3` or
//! `/usr/bin/python3` (`apt-get install python3-prometheus-client`, or
//! `pip install prometheus_client`). Without it the test fails; it never skips.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::*;

/// Parses a metrics page with `prometheus_client`; prints families as JSON for us to read.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "help": family.documentation,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(families, allow_nan=False))
"#;

/// A Python interpreter that can import `prometheus_client`.
fn python() -> String {
    let mut candidates: Vec<String> = std::env::var("HERALD_PYTHON").into_iter().collect();
    candidates.extend(["python3".to_string(), "/usr/bin/python3".to_string()]);
    for python in &candidates {
        let ok = Command::new(python)
            .args(["-c", "import prometheus_client.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return python.clone();
        }
    }
    panic!(
        "no Python with prometheus_client among {candidates:?}: install it \
(apt-get install python3-prometheus-client, or pip install prometheus_client) \
or point HERALD_PYTHON at an interpreter that has it"
    );
}

/// One metric family as the parser saw it.
#[derive(Debug)]
struct Family {
    kind: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

/// Fetches `/metrics` and parses it with the real parser; fails on anything it rejects.
fn scrape(port: u16) -> BTreeMap<String, Family> {
    let reply = get(port, "/metrics");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let mut child = Command::new(python())
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(reply.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the page:\n{}\n---- page ----\n{}",
        String::from_utf8_lossy(&out.stderr),
        reply.body
    );
    let parsed: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|(name, family)| {
            let samples = family["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let labels = s[1]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect();
                    (
                        s[0].as_str().unwrap().to_string(),
                        labels,
                        s[2].as_f64().unwrap(),
                    )
                })
                .collect();
            let kind = family["type"].as_str().unwrap().to_string();
            (name, Family { kind, samples })
        })
        .collect()
}

/// The value of one sample, found by its name and labels across every family.
fn value(families: &BTreeMap<String, Family>, name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .values()
        .flat_map(|f| &f.samples)
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {families:#?}"))
}

/// The family's type, whatever name the parser files it under (recent versions drop a
/// counter's `_total` from the family name; older ones keep it).
fn kind_of<'a>(families: &'a BTreeMap<String, Family>, sample: &str) -> &'a str {
    families
        .values()
        .find(|f| f.samples.iter().any(|(n, _, _)| n == sample))
        .map(|f| f.kind.as_str())
        .unwrap_or_else(|| panic!("no family holds {sample}: {families:#?}"))
}

fn assert_valid_histogram(families: &BTreeMap<String, Family>, name: &str) {
    assert_eq!(kind_of(families, &format!("{name}_count")), "histogram");
    let buckets: Vec<(f64, f64)> = families
        .values()
        .flat_map(|f| &f.samples)
        .filter(|(n, _, _)| n == &format!("{name}_bucket"))
        .map(|(_, l, v)| (l["le"].parse::<f64>().unwrap(), *v))
        .collect();
    assert!(buckets.len() >= 2, "{buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "buckets sorted by bound, cumulative: {buckets:?}"
    );
    let (last_bound, last_count) = *buckets.last().unwrap();
    assert!(last_bound.is_infinite(), "the last bucket is +Inf");
    assert_eq!(last_count, value(families, &format!("{name}_count"), &[]));
}

const COUNTERS: [&str; 10] = [
    "herald_connections_accepted_total",
    "herald_connections_rejected_total",
    "herald_accept_errors_total",
    "herald_websockets_opened_total",
    "herald_events_published_total",
    "herald_events_received_total",
    "herald_events_delivered_total",
    "herald_bytes_written_total",
    "herald_slow_consumers_closed_total",
    "herald_redis_reconnects_total",
];

#[test]
fn the_metrics_page_parses_and_its_counters_follow_the_traffic() {
    let herald = Herald::start();
    let port = herald.port;
    let mut client = ws_connect(port, "/ws");
    wait_until("the WebSocket counted", || {
        get(port, "/health").json()["websockets"] == 1
    });

    let before = scrape(port);
    for counter in COUNTERS {
        assert_eq!(kind_of(&before, counter), "counter", "{counter}");
    }
    assert_eq!(kind_of(&before, "herald_connections"), "gauge");
    assert_eq!(
        value(&before, "herald_connections", &[("kind", "websocket")]),
        1.0
    );
    assert_eq!(value(&before, "herald_websockets_opened_total", &[]), 1.0);
    assert_valid_histogram(&before, "herald_publish_latency_seconds");
    // Embedded mode: no Redis gauge.
    assert!(
        !before
            .values()
            .any(|f| f.samples.iter().any(|(n, _, _)| n == "herald_redis_up")),
        "{before:#?}"
    );

    publish(port, "metrics", "counted");
    assert_eq!(next_event(&mut client)["type"], "metrics");
    client.close(None).unwrap();
    let _ = close_code(&mut client);
    wait_until("the WebSocket gone", || {
        get(port, "/health").json()["websockets"] == 0
    });

    let after = scrape(port);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(moved("herald_events_published_total", &[]), 1.0);
    assert_eq!(moved("herald_events_received_total", &[]), 1.0);
    assert_eq!(moved("herald_events_delivered_total", &[]), 1.0);
    assert!(moved("herald_bytes_written_total", &[]) > 0.0);
    assert!(moved("herald_connections_accepted_total", &[]) >= 2.0);
    assert!(moved("herald_http_responses_total", &[("status", "200")]) >= 1.0);
    assert_eq!(kind_of(&after, "herald_http_responses_total"), "counter");
    assert_eq!(
        value(
            &after,
            "herald_connections_closed_total",
            &[("reason", "peer_closed")]
        ),
        1.0,
        "the WebSocket's close counted"
    );
    assert_eq!(
        kind_of(&after, "herald_connections_closed_total"),
        "counter"
    );
    assert_eq!(
        value(&after, "herald_connections", &[("kind", "websocket")]),
        0.0
    );
}

#[test]
fn with_redis_the_page_parses_and_publish_latency_is_observed() {
    let redis = Redis::start();
    let herald = Herald::with(&[], &[("PUBSUB_CACHE_URL", &redis.url())]);
    let port = herald.port;
    wait_until("redis connected", || {
        get(port, "/health").json()["redis"] == "connected"
    });
    let mut client = ws_connect(port, "/ws");

    let before = scrape(port);
    assert_eq!(kind_of(&before, "herald_redis_up"), "gauge");
    assert_eq!(value(&before, "herald_redis_up", &[]), 1.0);

    for i in 0..3 {
        publish(port, "latency", &i.to_string());
    }
    for _ in 0..3 {
        assert_eq!(next_event(&mut client)["type"], "latency");
    }

    let after = scrape(port);
    assert_valid_histogram(&after, "herald_publish_latency_seconds");
    let moved = |name: &str| value(&after, name, &[]) - value(&before, name, &[]);
    assert_eq!(moved("herald_publish_latency_seconds_count"), 3.0);
    assert!(moved("herald_publish_latency_seconds_sum") > 0.0);
    assert_eq!(moved("herald_events_published_total"), 3.0);
    assert_eq!(moved("herald_events_received_total"), 3.0);
    assert_eq!(moved("herald_events_delivered_total"), 3.0);
}
