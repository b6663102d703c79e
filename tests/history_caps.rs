//! Channels and history: a publisher that spreads large events over many distinct channels
//! must not grow the server's memory beyond `HISTORY_MAX_BYTES` and `MAX_CHANNELS`. The least
//! recently published channels are forgotten; a client resuming on one is told to reset; the
//! evictions show in `/metrics`; a well-behaved subscriber meanwhile gets every event.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const MIB: u64 = 1024 * 1024;
/// The caps under test (small, so the flood is quick).
const HISTORY_MAX_BYTES: u64 = 8 * MIB;
const MAX_CHANNELS: usize = 1000;
/// The flood: one 32 KB event on each of up to 20,000 channels (640 MB if all were kept).
const EVENT_BYTES: usize = 32 * 1024;
const FLOOD_CHANNELS: usize = 20_000;
/// The flood stops after this long, whatever it reached (on a loaded 2-core machine, about
/// 3,000 channels; idle, over 10,000); it must reach `FLOOD_AT_LEAST` channels (48 MB of
/// events, six times the cap) for the test to mean anything.
const FLOOD_TIME: Duration = Duration::from_secs(30);
const FLOOD_AT_LEAST: usize = 1500;
/// Requests in flight on the publishing connection.
const WINDOW: usize = 16;
/// What the process may hold beyond its size before the flood: the history, counted as
/// `HISTORY_MAX_BYTES` bounds it, plus a quarter more for the allocator (freed 32 KB blocks
/// wait in malloc's free lists for reuse), plus the requests in flight (`WINDOW` bodies,
/// read and parsed, each copied a few times), plus 4 MiB for everything else (buffers,
/// metrics, the watcher). Without the caps the check fails by the 1,000th channel (tried:
/// 38 MiB of RSS after 1,000 channels against a bound of 22 MiB).
const RSS_ALLOWANCE: u64 =
    HISTORY_MAX_BYTES + HISTORY_MAX_BYTES / 4 + 4 * (WINDOW * EVENT_BYTES) as u64 + 4 * MIB;

/// A keep-alive connection that pipelines publishes, `WINDOW` at a time.
struct Publisher {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    in_flight: usize,
    replies: Vec<Value>,
}

impl Publisher {
    fn connect(port: u16) -> Publisher {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Publisher {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            in_flight: 0,
            replies: Vec::new(),
        }
    }

    fn send(&mut self, channel: &str, message: &str) {
        let body = serde_json::json!({"type": "load", "message": message}).to_string();
        let request = format!(
            "POST /events/{channel} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.writer.write_all(request.as_bytes()).unwrap();
        self.in_flight += 1;
        if self.in_flight == WINDOW {
            self.read_replies();
        }
    }

    /// Reads every outstanding reply (each must be a 200) into `replies`.
    fn read_replies(&mut self) {
        for _ in 0..self.in_flight {
            let reply = read_reply(&mut self.reader).expect("publish reply");
            assert_eq!(reply.status, 200, "{}", reply.body);
            self.replies.push(reply.json());
        }
        self.in_flight = 0;
    }

    /// The id the server gave the event published to `channel` (the last one there).
    fn id_on(&self, channel: &str) -> String {
        self.replies
            .iter()
            .rev()
            .find(|r| r["channel"] == channel)
            .and_then(|r| r["id"].as_str())
            .unwrap_or_else(|| panic!("no publish to {channel}"))
            .to_string()
    }
}

/// The first message on a WebSocket that resumes `channel` from `since`.
fn resume(port: u16, channel: &str, since: &str) -> Value {
    let mut ws = ws_connect(port, &format!("/ws?channels={channel}&since={since}"));
    next_event(&mut ws)
}

#[test]
fn a_flood_of_large_events_over_many_channels_stays_within_the_history_caps() {
    let herald = Herald::with(
        &[],
        &[
            ("HISTORY_MAX_BYTES", &HISTORY_MAX_BYTES.to_string()),
            ("MAX_CHANNELS", &MAX_CHANNELS.to_string()),
        ],
    );
    let port = herald.port;

    // The well-behaved subscriber, on a channel of its own, reads everything as it comes.
    let mut watcher = ws_connect(port, "/ws?channels=watched");
    let watching = std::thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            let event = next_event(&mut watcher);
            if event["type"] == "done" {
                return got;
            }
            got.push(event["message"].as_str().unwrap().to_string());
        }
    });

    let rss_before = herald.rss_bytes();
    let bound = rss_before + RSS_ALLOWANCE;
    let big = "x".repeat(EVENT_BYTES);
    let mut publisher = Publisher::connect(port);
    let mut rss_peak = rss_before;
    let mut watched_sent = 0;
    let started = Instant::now();
    let mut flooded = 0;
    while flooded < FLOOD_CHANNELS && started.elapsed() < FLOOD_TIME {
        publisher.send(&format!("flood-{flooded}"), &big);
        flooded += 1;
        if flooded % 50 == 0 {
            publisher.send("watched", &watched_sent.to_string());
            watched_sent += 1;
        }
        if flooded % 500 == 0 {
            let rss = herald.rss_bytes();
            rss_peak = rss_peak.max(rss);
            assert!(
                rss <= bound,
                "RSS {} MiB after {flooded} channels, over the bound {} MiB",
                rss / MIB,
                bound / MIB
            );
        }
    }
    publisher.read_replies();
    let flood_secs = started.elapsed().as_secs_f64();
    assert!(
        flooded >= FLOOD_AT_LEAST,
        "only {flooded} channels flooded in {FLOOD_TIME:?}"
    );
    let rss_during = herald.rss_bytes();
    rss_peak = rss_peak.max(rss_during);
    assert!(rss_during <= bound, "RSS {rss_during} over {bound}");

    // What the server says it holds: within both caps.
    let page = get(port, "/metrics").body;
    let history_bytes = metric_in(&page, "herald_history_bytes").unwrap();
    let history_channels = metric_in(&page, "herald_history_channels").unwrap();
    assert!(history_bytes <= HISTORY_MAX_BYTES as f64, "{history_bytes}");
    assert!(
        history_bytes >= (HISTORY_MAX_BYTES / 2) as f64,
        "{history_bytes}"
    );
    assert!(history_channels <= MAX_CHANNELS as f64);
    // 8 MiB holds at most 256 events of 32 KB: every channel beyond went, counted.
    let bytes_evictions =
        metric_in(&page, "herald_limit_hits_total{limit=\"history_bytes\"}").unwrap();
    assert!(
        bytes_evictions >= (flooded - 256) as f64,
        "{bytes_evictions} evictions for {flooded} channels"
    );

    // A client resuming on the first channel, long forgotten, is told to reset; one resuming
    // on the last is replayed what it missed.
    let first = publisher.id_on("flood-0");
    let reset = resume(port, "flood-0", &first);
    assert_eq!(reset["op"], "reset", "{reset}");
    assert!(
        reset["reason"].as_str().unwrap().contains("evicted"),
        "{reset}"
    );
    let last = format!("flood-{}", flooded - 1);
    let before_last = publisher.id_on(&format!("flood-{}", flooded - 2));
    let replayed = resume(port, &last, &before_last);
    assert_eq!(replayed["channel"], last, "{replayed}");
    assert_eq!(replayed["id"], publisher.id_on(&last));
    assert_eq!(
        replayed["message"].as_str().map(str::len),
        Some(EVENT_BYTES)
    );

    // Many small channels: now MAX_CHANNELS is the cap that bites.
    const SMALL_CHANNELS: usize = 3000;
    for i in 0..SMALL_CHANNELS {
        publisher.send(&format!("small-{i}"), "s");
    }
    publisher.read_replies();
    let page = get(port, "/metrics").body;
    let channel_evictions =
        metric_in(&page, "herald_limit_hits_total{limit=\"history_channels\"}").unwrap();
    assert!(
        channel_evictions >= (SMALL_CHANNELS - MAX_CHANNELS) as f64,
        "{channel_evictions}"
    );
    assert_eq!(
        metric_in(&page, "herald_history_channels"),
        Some(MAX_CHANNELS as f64)
    );

    // The watcher got every event on its channel, in order, while all this went on.
    publisher.send("watched", "end");
    publisher.read_replies();
    publish_to(port, "watched", "done", ".");
    let got = watching.join().expect("the watcher thread");
    let mut expected: Vec<String> = (0..watched_sent).map(|i| i.to_string()).collect();
    expected.push("end".into());
    assert_eq!(got, expected, "the watcher missed or reordered events");

    let rss_after = herald.rss_bytes();
    let mut herald = herald;
    assert!(!herald.has_exited(), "herald died");
    assert_eq!(get(port, "/health").status, 200);
    assert!(
        herald.log().contains("history over HISTORY_MAX_BYTES"),
        "one rate-limited warning"
    );
    assert!(
        herald
            .log()
            .matches("history over HISTORY_MAX_BYTES")
            .count()
            <= 1 + (flood_secs as usize / 10),
        "warnings are rate-limited"
    );
    eprintln!(
        "history flood: {flooded} channels x {EVENT_BYTES} B in {flood_secs:.1}s; RSS before {} KiB, \
         peak {} KiB, during {} KiB, after {} KiB (bound {} KiB); history {history_bytes} B in \
         {history_channels} channels; evictions bytes {bytes_evictions}, channels \
         {channel_evictions}; watcher got {} of {} events",
        rss_before / 1024,
        rss_peak / 1024,
        rss_during / 1024,
        rss_after / 1024,
        bound / 1024,
        got.len(),
        watched_sent + 1
    );
}

/// `HISTORY_TTL_SECS`: events older than that are dropped (the sweep runs once a second) and
/// a client resuming from before them is told so.
#[test]
fn expired_history_is_dropped_and_resuming_from_it_resets() {
    let herald = Herald::with(&[], &[("HISTORY_TTL_SECS", "1")]);
    let port = herald.port;
    let before = publish_id(port, "old", "a", "1");
    let last_expired = publish_id(port, "old", "a", "2");
    assert_eq!(metric(port, "herald_history_channels"), Some(1.0));
    wait_until("the history to expire", || {
        metric(port, "herald_history_channels") == Some(0.0)
    });
    // One eviction for the channel, or two if a sweep fell between the events' expiries
    // (the first event dropped alone, then the channel).
    let expired = metric(port, "herald_limit_hits_total{limit=\"history_ttl\"}");
    assert!(matches!(expired, Some(1.0 | 2.0)), "{expired:?}");
    let reset = resume(port, "old", &before);
    assert_eq!(reset["op"], "reset", "{reset}");
    assert!(
        reset["reason"].as_str().unwrap().contains("evicted"),
        "{reset}"
    );
    // A client that saw the last expired event missed nothing: it gets the next one.
    let fresh = publish_id(port, "old", "a", "3");
    let replayed = resume(port, "old", &last_expired);
    assert_eq!(replayed["id"], fresh, "{replayed}");
}

/// Opens a WebSocket on `channels`, every one of them over the cap: returns the client and
/// the channels named by the error notices that follow the handshake.
fn join_refused(port: u16, channels: &[String]) -> (Client, Vec<String>) {
    let mut ws = ws_connect(port, &format!("/ws?channels={}", channels.join(",")));
    let mut refused = Vec::new();
    for _ in channels {
        let notice = next_event(&mut ws);
        assert_eq!(notice["op"], "error", "{notice}");
        assert_eq!(
            notice["error"], "server at its channel limit (MAX_SUBSCRIBED_CHANNELS)",
            "{notice}"
        );
        refused.push(notice["channel"].as_str().unwrap().to_string());
    }
    (ws, refused)
}

/// `MAX_SUBSCRIBED_CHANNELS` caps the channels with subscribers (fan-out entries and, with
/// Redis, subscriptions): a client naming ever more channels gets an error notice for each one over
/// the cap, and a counter; channels that exist stay open to everyone.
fn subscribed_channels_are_capped(herald: &Herald, redis: Option<&Redis>) {
    const CAP: usize = 3;
    let port = herald.port;
    let names = |from: usize, to: usize| -> Vec<String> {
        (from..to).map(|i| format!("live-{i}")).collect()
    };
    let mut first = ws_connect(port, &format!("/ws?channels={}", names(0, CAP).join(",")));
    // Each channel is open: a publish to it reaches the first client.
    for name in names(0, CAP) {
        publish_to(port, &name, "probe", "1");
        assert_eq!(next_event(&mut first)["channel"], name);
    }
    // Beyond the cap: every new channel is refused, with a notice per channel.
    let (_second, refused) = join_refused(port, &names(CAP, CAP + 5));
    assert_eq!(refused, names(CAP, CAP + 5));
    assert_eq!(
        metric(
            port,
            "herald_limit_hits_total{limit=\"subscribed_channels\"}"
        ),
        Some(5.0)
    );
    // ...and by control message too; joining an existing channel is fine.
    let mut third = ws_connect(port, "/ws?channels=live-0");
    third
        .send(tungstenite::Message::text(
            r#"{"op":"subscribe","channel":"live-99"}"#,
        ))
        .unwrap();
    let refused = next_event(&mut third);
    assert_eq!(refused["op"], "error", "{refused}");
    assert_eq!(refused["channel"], "live-99", "{refused}");
    publish_to(port, "live-0", "probe", "2");
    assert_eq!(next_event(&mut third)["message"], "2");
    assert_eq!(next_event(&mut first)["message"], "2");
    if let Some(redis) = redis {
        // What Redis holds for this replica: the capped channels, nothing more.
        let subscribed = redis.command_array(&["PUBSUB", "CHANNELS", "events:live-*"]);
        assert_eq!(subscribed.len(), CAP, "{subscribed:?}");
    }
    // A channel freed (its last subscriber left) makes room for a new one.
    drop(first);
    let start = Instant::now();
    let mut fourth = loop {
        let mut ws = ws_connect(port, "/ws");
        ws.send(tungstenite::Message::text(
            r#"{"op":"subscribe","channel":"live-50"}"#,
        ))
        .unwrap();
        if next_event(&mut ws)["op"] == "subscribed" {
            break ws;
        }
        assert!(
            start.elapsed() < WAIT,
            "no room after the first client left"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    if redis.is_some() {
        wait_until("the new subscription to be confirmed", || {
            publish_to(port, "live-50", "probe", "3")["receivers"] == 1
        });
    } else {
        publish_to(port, "live-50", "probe", "3");
    }
    assert_eq!(next_event(&mut fourth)["channel"], "live-50");
}

#[test]
fn subscribed_channels_are_capped_in_embedded_mode() {
    let herald = Herald::with(&[], &[("MAX_SUBSCRIBED_CHANNELS", "3")]);
    subscribed_channels_are_capped(&herald, None);
}

#[test]
fn subscribed_channels_are_capped_in_redis_mode() {
    let redis = Redis::start();
    let herald = Herald::with(
        &[],
        &[
            ("PUBSUB_CACHE_URL", &redis.url()),
            ("MAX_SUBSCRIBED_CHANNELS", "3"),
        ],
    );
    wait_redis_connected(&herald);
    subscribed_channels_are_capped(&herald, Some(&redis));
}
