//! Idempotent publishing against the real binary: a publish retried with the same
//! `Idempotency-Key` (header or JSON body) is answered with the first one's id and
//! `"duplicate":true` and delivered once, embedded and on a real `redis-server`, also when the
//! retry goes to another replica; the embedded store stays within its caps.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// `POST /events/<channel>` with an `Idempotency-Key` header.
fn publish_keyed(port: u16, channel: &str, key: &str, message: &str) -> HttpReply {
    let request = format!(
        "POST /events/{channel}?event_type=order&message={message} HTTP/1.1\r\nHost: t\r\n\
         Connection: close\r\nIdempotency-Key: {key}\r\nContent-Length: 0\r\n\r\n"
    );
    raw(port, request.as_bytes())
}

fn ok(reply: HttpReply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// The next event the client gets is `message` (so nothing came in between).
fn next_is(client: &mut Client, message: &str) {
    let event = next_event(client);
    assert_eq!(event["message"], message, "{event}");
}

#[test]
fn a_retried_publish_is_answered_with_the_first_id_and_not_delivered() {
    let herald = Herald::start();
    let port = herald.port;
    let mut client = ws_connect(port, "/ws?channels=orders,other");

    let first = ok(publish_keyed(port, "orders", "order-123", "first"));
    assert_eq!(first["receivers"], 1);
    assert!(first.get("duplicate").is_none(), "{first}");
    let retry = ok(publish_keyed(port, "orders", "order-123", "retry"));
    assert_eq!(retry["id"], first["id"]);
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["receivers"], 0);
    // The key in a JSON body counts the same.
    let body = r#"{"type":"order","message":"body retry","channel":"orders","idempotency_key":"order-123"}"#;
    let from_body = ok(post(port, "/events", Some("application/json"), body));
    assert_eq!(from_body["id"], first["id"]);
    assert_eq!(from_body["duplicate"], true);
    // Keys are per channel: the same key elsewhere is a new publish.
    let elsewhere = ok(publish_keyed(port, "other", "order-123", "elsewhere"));
    assert!(elsewhere.get("duplicate").is_none(), "{elsewhere}");

    publish_to(port, "orders", "marker", "marker");
    next_is(&mut client, "first");
    next_is(&mut client, "elsewhere");
    next_is(&mut client, "marker");
    assert_eq!(metric(port, "herald_publish_duplicates_total"), Some(2.0));
    assert_eq!(metric(port, "herald_events_published_total"), Some(3.0));
}

#[test]
fn without_a_window_a_retry_publishes_again() {
    let herald = Herald::with(&[], &[("IDEMPOTENCY_WINDOW_SECS", "0")]);
    let port = herald.port;
    let mut client = ws_connect(port, "/ws?channels=orders");
    let first = ok(publish_keyed(port, "orders", "k", "first"));
    let second = ok(publish_keyed(port, "orders", "k", "second"));
    assert_ne!(first["id"], second["id"]);
    next_is(&mut client, "first");
    next_is(&mut client, "second");
}

#[test]
fn bad_keys_are_refused_with_400() {
    let herald = Herald::start();
    let port = herald.port;
    let long = "k".repeat(129);
    for key in ["", long.as_str()] {
        let reply = publish_keyed(port, "orders", key, "x");
        assert_eq!(reply.status, 400, "{key:?}: {}", reply.body);
        assert!(reply.body.contains("idempotency key"), "{}", reply.body);
    }
    assert_eq!(
        ok(publish_keyed(port, "orders", &"k".repeat(128), "x"))["receivers"],
        0
    );
    let body = "{\"type\":\"a\",\"idempotency_key\":\"caf\u{e9}\"}";
    let reply = post(port, "/events", Some("application/json"), body);
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(metric(port, "herald_events_published_total"), Some(1.0));
}

/// Publishes events `first..first + count` (the number is the message) with keys `key(i)` on
/// one keep-alive connection, pipelining 100 at a time; returns how many were answered as
/// duplicates.
fn publish_keys(port: u16, first: usize, count: usize, key: impl Fn(usize) -> String) -> usize {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut duplicates = 0;
    let mut sent = first;
    while sent < first + count {
        let batch = 100.min(first + count - sent);
        let mut out = String::new();
        for i in sent..sent + batch {
            out.push_str(&format!(
                "POST /events?event_type=k&message={i} HTTP/1.1\r\nHost: t\r\nIdempotency-Key: {}\r\nContent-Length: 0\r\n\r\n",
                key(i)
            ));
        }
        writer.write_all(out.as_bytes()).unwrap();
        for _ in 0..batch {
            let reply = read_reply(&mut reader).expect("publish reply");
            assert_eq!(reply.status, 200, "{}", reply.body);
            duplicates += usize::from(reply.json()["duplicate"] == true);
        }
        sent += batch;
    }
    duplicates
}

#[test]
fn the_oldest_keys_go_first_over_the_cap() {
    let herald = Herald::with(&[], &[("IDEMPOTENCY_MAX_KEYS", "100")]);
    let port = herald.port;
    assert_eq!(publish_keys(port, 0, 150, |i| format!("key-{i}")), 0);
    // The newest 100 are remembered; the 50 oldest were forgotten (and counted).
    assert_eq!(publish_keys(port, 100, 50, |i| format!("key-{i}")), 50);
    assert_eq!(
        metric(port, "herald_limit_hits_total{limit=\"idempotency_keys\"}"),
        Some(50.0)
    );
    assert_eq!(publish_keys(port, 0, 1, |i| format!("key-{i}")), 0);
    assert!(
        herald.log().contains("idempotency keys forgotten"),
        "{}",
        herald.log()
    );
}

/// The memory bound of the store, measured: 100,000 keys of 128 bytes (the default
/// `IDEMPOTENCY_MAX_KEYS`, the longest keys), then 20,000 more that evict the oldest. The
/// store's own estimate is `entry_bytes` per key (245 B here, 24.5 MB in all); RSS may grow by
/// that plus the allocator's slack and the hash table's doubling: the bound asserted is
/// 1.5 x 100,000 x 245 B + 8 MB for everything else a publish touches. A subscriber reading
/// meanwhile gets every event, in order.
#[test]
fn a_full_store_stays_within_its_bound() {
    // One event of history, so the history does not hide or add to the figure.
    let mut herald = Herald::with(&[], &[("HISTORY_LEN", "1")]);
    let port = herald.port;
    let client = ws_connect(port, "/ws");
    const TOTAL: usize = 120_000;
    let reader = std::thread::spawn(move || {
        let mut client = client;
        let started = Instant::now();
        for i in 0..TOTAL {
            assert!(started.elapsed() < Duration::from_secs(120));
            let event = next_event(&mut client);
            assert_eq!(event["message"], i.to_string());
        }
        TOTAL
    });
    let before = herald.rss_bytes();
    let key = |i: usize| format!("{i:0>128}");
    assert_eq!(publish_keys(port, 0, 100_000, key), 0);
    let full = herald.rss_bytes();
    assert_eq!(publish_keys(port, 100_000, TOTAL - 100_000, key), 0);
    let after = herald.rss_bytes();
    assert_eq!(reader.join().unwrap(), TOTAL);
    let grown = after.saturating_sub(before);
    let bound = 100_000 * 245 * 3 / 2 + 8_000_000;
    println!(
        "RSS before {before} B, 100,000 keys {full} B, 120,000 keys {after} B: grown {grown} B (bound {bound} B)"
    );
    assert!(grown <= bound, "grown {grown} B > {bound} B");
    assert_eq!(
        metric(port, "herald_limit_hits_total{limit=\"idempotency_keys\"}"),
        Some(20_000.0)
    );
    assert_eq!(metric(port, "herald_idempotency_keys"), Some(100_000.0));
    assert_eq!(
        metric(port, "herald_idempotency_bytes"),
        Some(100_000.0 * 245.0)
    );
    // The newest keys are still remembered, the oldest are not.
    assert_eq!(publish_keys(port, TOTAL - 1, 1, key), 1);
    assert!(!herald.has_exited());
}

#[test]
fn redis_mode_answers_a_retry_from_the_script() {
    let redis = Redis::start();
    let herald = herald_on_redis(&redis);
    let port = herald.port;
    let mut client = ws_connect(port, "/ws?channels=orders");
    let first = ok(publish_keyed(port, "orders", "r-1", "first"));
    let retry = ok(publish_keyed(port, "orders", "r-1", "retry"));
    assert_eq!(retry["id"], first["id"]);
    assert_eq!(retry["duplicate"], true);
    publish_to(port, "orders", "marker", "marker");
    next_is(&mut client, "first");
    next_is(&mut client, "marker");
    // Stored next to the channel's stream, expiring with the window (300 s by default).
    let ttl: i64 = redis
        .command(&["TTL", "events:orders:idempotency:r-1"])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!((1..=300).contains(&ttl), "TTL {ttl}");
    assert_eq!(metric(port, "herald_publish_duplicates_total"), Some(1.0));
    // The stream holds the event once.
    assert_eq!(redis.command(&["XLEN", "events:orders:history"]), ":2");
}

#[test]
fn a_retry_through_another_replica_is_not_delivered_twice() {
    let redis = Redis::start();
    let a = herald_on_redis(&redis);
    let b = herald_on_redis(&redis);
    let mut on_a = ws_connect(a.port, "/ws?channels=orders");
    let mut on_b = ws_connect(b.port, "/ws?channels=orders");
    // A publish through a replica waits for its own subscription to the channel: after b1
    // and a1 both replicas are subscribed, so b2 reaches both (a's client may miss b1).
    for (port, message) in [(b.port, "b1"), (a.port, "a1"), (b.port, "b2")] {
        publish_to(port, "orders", "warm", message);
    }
    for message in ["b1", "a1", "b2"] {
        next_is(&mut on_b, message);
    }
    for _ in 0..3 {
        if next_event(&mut on_a)["message"] == "b2" {
            break;
        }
    }
    let first = ok(publish_keyed(a.port, "orders", "cross-1", "first"));
    assert_eq!(first["receivers"], 2);
    let retry = ok(publish_keyed(b.port, "orders", "cross-1", "retry"));
    assert_eq!(retry["id"], first["id"]);
    assert_eq!(retry["duplicate"], true);
    publish_to(b.port, "orders", "marker", "marker");
    for client in [&mut on_a, &mut on_b] {
        next_is(client, "first");
        next_is(client, "marker");
    }
    assert_eq!(metric(b.port, "herald_publish_duplicates_total"), Some(1.0));
}
