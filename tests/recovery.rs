//! Recovery: a client that reconnects with the id of the last event it saw gets everything it
//! missed, in order, exactly once, then live events; one whose id is too old is told to reset.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

fn resume_after_a_dropped_connection(herald: &Herald) {
    let mut ws = ws_connect(herald.port, "/ws?channels=orders");
    publish_id(herald.port, "orders", "e", "1");
    publish_id(herald.port, "orders", "e", "2");
    assert_eq!(next_event(&mut ws)["message"], "1");
    let last = next_event(&mut ws);
    assert_eq!(last["message"], "2");
    drop(ws);
    for m in ["3", "4", "5"] {
        publish_id(herald.port, "orders", "e", m);
    }
    let since = last["id"].as_str().unwrap();
    let mut back = ws_connect(herald.port, &format!("/ws?channels=orders&since={since}"));
    publish_id(herald.port, "orders", "e", "6");
    let got: Vec<Value> = (0..4)
        .map(|_| next_event(&mut back)["message"].clone())
        .collect();
    assert_eq!(got, vec!["3", "4", "5", "6"]);
    // And nothing twice: the next event is the next one published.
    publish_id(herald.port, "orders", "e", "7");
    assert_eq!(next_event(&mut back)["message"], "7");
}

#[test]
fn resumes_after_a_dropped_connection_embedded() {
    resume_after_a_dropped_connection(&Herald::start());
}

#[test]
fn resumes_after_a_dropped_connection_through_redis() {
    let redis = Redis::start();
    resume_after_a_dropped_connection(&herald_on_redis(&redis));
}

/// Publishes `total` events on `channel` at a steady pace from another thread.
fn publish_steadily(port: u16, channel: &'static str, total: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for i in 0..total {
            publish_id(port, channel, "e", &i.to_string());
            std::thread::sleep(Duration::from_millis(3));
        }
    })
}

/// Drops and resumes the connection several times while events keep coming; the messages
/// received, joined up, must be exactly 0..total.
fn no_gap_no_duplicate_while_publishing(herald: &Herald) {
    const TOTAL: usize = 300;
    let mut ws = ws_connect(herald.port, "/ws?channels=orders");
    let publisher = publish_steadily(herald.port, "orders", TOTAL);
    let mut received: Vec<usize> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut reconnects = 0;
    while received.len() < TOTAL {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "stuck at {}",
            received.len()
        );
        let event = next_event(&mut ws);
        if event["op"] == "reset" {
            panic!("unexpected reset: {event}");
        }
        received.push(event["message"].as_str().unwrap().parse().unwrap());
        ids.push(event["id"].as_str().unwrap().to_string());
        let last_id = event["id"].as_str().unwrap().to_string();
        if received.len().is_multiple_of(70) {
            drop(ws);
            std::thread::sleep(Duration::from_millis(25));
            ws = ws_connect(herald.port, &format!("/ws?channels=orders&since={last_id}"));
            reconnects += 1;
        }
    }
    publisher.join().unwrap();
    for i in 1..received.len() {
        if received[i] <= received[i - 1] {
            eprintln!(
                "out of sequence at {i}: {} ({}) then {} ({})",
                received[i - 1],
                ids[i - 1],
                received[i],
                ids[i]
            );
        }
    }
    assert_eq!(reconnects, 4);
    assert_eq!(
        received,
        (0..TOTAL).collect::<Vec<_>>(),
        "gaps or duplicates"
    );
}

#[test]
fn no_gap_no_duplicate_at_the_seam_embedded() {
    no_gap_no_duplicate_while_publishing(&Herald::start());
}

#[test]
fn no_gap_no_duplicate_at_the_seam_through_redis() {
    let redis = Redis::start();
    no_gap_no_duplicate_while_publishing(&herald_on_redis(&redis));
}

#[test]
fn resumes_after_a_herald_restart_with_events_from_another_replica() {
    let redis = Redis::start();
    let mut first = herald_on_redis(&redis);
    let second = herald_on_redis(&redis);
    let mut ws = ws_connect(first.port, "/ws?channels=orders");
    publish_id(second.port, "orders", "e", "before");
    let last = next_event(&mut ws);
    assert_eq!(last["message"], "before");

    // The replica goes down for a while; the other keeps publishing.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let port = second.port;
    let outage = std::thread::spawn(move || {
        let mut sent = 0;
        while !flag.load(Ordering::Relaxed) || sent < 10 {
            publish_id(port, "orders", "e", &format!("outage-{sent}"));
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    first.kill();
    std::thread::sleep(Duration::from_millis(500));
    first.start_again();
    stop.store(true, Ordering::Relaxed);
    let sent = outage.join().unwrap();
    wait_until("the restarted replica to reconnect to redis", || {
        get(first.port, "/health").json()["redis"] == "connected"
    });
    drop(ws);

    let since = last["id"].as_str().unwrap();
    let mut back = ws_connect(first.port, &format!("/ws?channels=orders&since={since}"));
    publish_id(second.port, "orders", "e", "after");
    let mut got = Vec::new();
    for _ in 0..=sent {
        got.push(
            next_event(&mut back)["message"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut expected: Vec<String> = (0..sent).map(|i| format!("outage-{i}")).collect();
    expected.push("after".into());
    assert_eq!(got, expected);
    eprintln!(
        "recovery after restart: {sent} events published during the outage, {} received, 0 duplicates",
        got.len() - 1
    );
}

#[test]
fn an_id_older_than_the_history_gets_a_reset() {
    let herald = Herald::with(&["--history-len", "3"], &[]);
    let first = publish_id(herald.port, "orders", "e", "0");
    for i in 1..6 {
        publish_id(herald.port, "orders", "e", &i.to_string());
    }
    let mut ws = ws_connect(herald.port, &format!("/ws?channels=orders&since={first}"));
    let reset = next_event(&mut ws);
    assert_eq!(reset["op"], "reset", "{reset}");
    assert_eq!(reset["channel"], "orders");
    publish_id(herald.port, "orders", "e", "live");
    assert_eq!(next_event(&mut ws)["message"], "live");
}

#[test]
fn history_lost_with_redis_gets_a_reset() {
    let mut redis = Redis::start();
    let herald = herald_on_redis(&redis);
    let id = publish_id(herald.port, "orders", "e", "gone");
    redis.restart(); // started empty: no persistence
    wait_until("reconnected", || {
        get(herald.port, "/health").json()["redis"] == "connected"
    });
    let mut ws = ws_connect(herald.port, &format!("/ws?channels=orders&since={id}"));
    let reset = next_event(&mut ws);
    assert_eq!(reset["op"], "reset", "{reset}");
    assert!(
        reset["reason"].as_str().unwrap().contains("lost"),
        "{reset}"
    );
}

#[test]
fn a_lost_redis_subscription_catches_up_without_the_client_noticing() {
    let redis = Redis::start();
    let ours = herald_on_redis(&redis);
    let other = herald_on_redis(&redis);
    let mut ws = ws_connect(ours.port, "/ws?channels=orders");
    wait_until("our subscription", || {
        redis.command_array(&["PUBSUB", "NUMSUB", "events:orders"])[1] == "1"
    });
    publish_id(other.port, "orders", "e", "0");
    assert_eq!(next_event(&mut ws)["message"], "0");

    const TOTAL: usize = 200;
    let port = other.port;
    let publisher = std::thread::spawn(move || {
        for i in 1..TOTAL {
            publish_id(port, "orders", "e", &i.to_string());
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // Drop our replica's subscriber connection mid-stream; it reconnects with backoff.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        redis
            .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
            .starts_with(':')
    );
    publisher.join().unwrap();

    let got: Vec<String> = (1..TOTAL)
        .map(|_| next_event(&mut ws)["message"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (1..TOTAL).map(|i| i.to_string()).collect();
    assert_eq!(
        got, expected,
        "every event once, in order, across the lost subscription"
    );
    assert!(
        ours.log().contains("redis subscriber link down"),
        "the link did drop"
    );
}
