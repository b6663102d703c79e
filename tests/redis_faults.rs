//! Redis faults, against a real `redis-server`: a publish is never answered with silence or a
//! false success. Pending publishes get a 503 when the link dies; a bad database is reported
//! and retried with backoff; after an outage the first 200 is an event this replica's own
//! clients receive.

mod support;

use std::io::{BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn herald_on(url: &str) -> Herald {
    Herald::with(&[], &[("PUBSUB_CACHE_URL", url)])
}

fn publish_request(message: &str) -> String {
    format!("POST /events?event_type=fault&message={message} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// Publishes `fault` events numbered from 0, every 20 ms, until one gets a 200 (bounded);
/// each other answer must be a 503 JSON error. Returns the number that got the 200.
fn publish_until_accepted(port: u16) -> usize {
    let start = Instant::now();
    for i in 0.. {
        let reply = post(
            port,
            &format!("/events?event_type=fault&message={i}"),
            None,
            "",
        );
        match reply.status {
            200 => return i,
            503 => assert!(reply.json()["error"].is_string(), "{reply:?}"),
            _ => panic!("publish {i}: {reply:?}"),
        }
        assert!(
            start.elapsed() < WAIT,
            "no publish accepted within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

/// Checks the first event a client receives is the one whose publish got the 200: nothing
/// refused was delivered, and the accepted one was not lost.
fn assert_first_event_is(client: &mut Client, accepted: usize) {
    let event = next_event(client);
    assert_eq!(event["type"], "fault", "{event}");
    assert_eq!(
        event["message"],
        accepted.to_string(),
        "the first event delivered must be the first publish answered 200"
    );
}

#[test]
fn publishes_in_flight_when_the_redis_link_dies_get_503() {
    let mut redis = Redis::start();
    let herald = herald_on(&redis.url());
    wait_redis_connected(&herald);
    let mut client = ws_connect(herald.port, "/ws");

    // Redis holds every PUBLISH (a write command for CLIENT PAUSE) unanswered.
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "20000", "WRITE"]), "+OK");
    let mut pending: Vec<BufReader<TcpStream>> = (0..5)
        .map(|i| {
            let mut stream = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
            stream
                .write_all(publish_request(&format!("pending{i}")).as_bytes())
                .unwrap();
            BufReader::new(stream)
        })
        .collect();
    // And two pipelined on one connection: the second waits behind the first.
    let mut pipelined = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
    let two = publish_request("piped0") + &publish_request("piped1");
    pipelined.write_all(two.as_bytes()).unwrap();
    let mut pipelined = BufReader::new(pipelined);

    // None is answered while Redis is paused.
    std::thread::sleep(Duration::from_millis(500));
    for reader in pending.iter_mut().chain([&mut pipelined]) {
        let stream = reader.get_mut();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut byte = [0u8; 1];
        let early = std::io::Read::read(stream, &mut byte);
        assert!(
            matches!(&early, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "a publish was answered while Redis was paused: {early:?}"
        );
        stream.set_read_timeout(Some(WAIT)).unwrap();
    }

    // The link dies with the PUBLISHes in flight: each gets a 503, none hangs.
    redis.stop();
    for reader in pending.iter_mut() {
        let reply = read_reply(reader).expect("an answer, not silence");
        assert_eq!(reply.status, 503, "{reply:?}");
        let error = reply.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains("Redis"), "{error}");
        // Sent before the link died: Redis may have run it.
        assert_eq!(reply.json()["outcome"], "unknown", "{reply:?}");
    }
    for _ in 0..2 {
        let reply = read_reply(&mut pipelined).expect("an answer, not silence");
        assert_eq!(reply.status, 503, "pipelined: {reply:?}");
    }
    // One line per interval for the six failures, not one per request.
    let log = herald.log();
    let lines = log
        .matches("publish failed, outcome unknown: Redis connection lost")
        .count();
    assert_eq!(lines, 1, "{log}");
    // Seven 503s: six lost in flight, the pipelined one refused at once.
    assert_eq!(
        metric(herald.port, "herald_http_responses_total{status=\"503\"}"),
        Some(7.0)
    );
    assert_eq!(get(herald.port, "/health").json()["redis"], "disconnected");

    // Back: none of the failed events is delivered late; the first accepted one arrives.
    redis.restart();
    let accepted = publish_until_accepted(herald.port);
    assert_first_event_is(&mut client, accepted);
}

#[test]
fn a_database_out_of_range_is_reported_and_retried_with_backoff() {
    let mut redis = Redis::start(); // 16 databases: 0 to 15
    let url = format!("{}/99", redis.url());
    let herald = herald_on(&url);
    let mut client = ws_connect(herald.port, "/ws");
    wait_until("the SELECT failure to show in /health", || {
        let health = get(herald.port, "/health").json();
        health["redis_error"]
            .as_str()
            .is_some_and(|e| e.contains("SELECT 99 failed") && e.contains("out of range"))
    });
    let health = get(herald.port, "/health").json();
    assert_eq!(health["redis"], "disconnected", "{health}");
    let refused = post(herald.port, "/events?event_type=x&message=y", None, "");
    assert_eq!(refused.status, 503, "{refused:?}");
    let error = refused.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("SELECT 99"), "{error}");
    assert!(herald.log().contains("SELECT 99 failed"));

    // Backoff: over two seconds, a handful of attempts (two links), not a hot loop.
    let connections = || redis.info_field("total_connections_received").unwrap();
    let (attempts_before, logged_before) = (
        connections(),
        herald.log().matches("SELECT 99 failed").count(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let attempts = connections() - attempts_before - 1; // minus our own INFO connection
    let logged = herald.log().matches("SELECT 99 failed").count() - logged_before;
    eprintln!("in 2 s: {attempts} connection attempts, {logged} log lines");
    assert!(attempts <= 20, "{attempts} attempts in 2 s: no backoff");
    assert!(logged <= 6, "{logged} log lines in 2 s");

    // A Redis with enough databases takes the place of the first: the first 200 is an event
    // this replica's own client receives.
    redis.restart_with(&["--databases", "100"]);
    let accepted = publish_until_accepted(herald.port);
    assert_first_event_is(&mut client, accepted);
    assert!(herald.log().contains("link up again"));
}

#[test]
fn after_a_restart_the_first_accepted_publish_reaches_local_clients() {
    let mut redis = Redis::start();
    let herald = herald_on(&redis.url());
    wait_redis_connected(&herald);
    let mut client = ws_connect(herald.port, "/ws");

    redis.stop();
    wait_until("health to say disconnected", || {
        get(herald.port, "/health").json()["redis"] == "disconnected"
    });
    redis.restart();
    // Publishing throughout the reconnection: refused until both links are back.
    let accepted = publish_until_accepted(herald.port);
    assert_first_event_is(&mut client, accepted);
}

#[test]
fn when_only_the_subscription_drops_publishes_wait_for_it() {
    let redis = Redis::start();
    let herald = herald_on(&redis.url());
    wait_redis_connected(&herald);
    let mut client = ws_connect(herald.port, "/ws");

    // Redis closes the subscriber link only; the publisher link stays up.
    assert_eq!(redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]), ":1");
    let accepted = publish_until_accepted(herald.port);
    assert_first_event_is(&mut client, accepted);
    assert!(
        herald.log().contains("redis subscriber link down"),
        "{}",
        herald.log()
    );
}
