//! Occupancy against the real binary: `GET /channels` and `GET /channels/<ch>` count
//! WebSocket and SSE subscribers (embedded; across two replicas on one real redis-server);
//! a replica killed with SIGKILL drops out of the others' counts within its counts' expiry;
//! `{"op":"occupancy"}` answers at once and then coalesces changes to at most one update a
//! second; watches share the per-connection cap with subscriptions; with auth on, nobody
//! learns of a channel they may not read.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use herald::auth::{TokenSpec, mint_hs256};
use serde_json::{Value, json};
use support::*;
use tungstenite::Message;

/// `GET /channels/<ch>`'s count.
fn subscribers(port: u16, channel: &str) -> u64 {
    let reply = get(port, &format!("/channels/{channel}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["channel"], channel, "{body}");
    body["subscribers"].as_u64().expect("a count")
}

fn wait_count(port: u16, channel: &str, want: u64) {
    wait_until(&format!("{channel} to have {want} subscribers"), || {
        subscribers(port, channel) == want
    });
}

/// `GET /channels` (with a query) as `[(name, count)]`, and its `next`.
fn listing(port: u16, query: &str, headers: &str) -> (Vec<(String, u64)>, Option<String>) {
    let reply = get_with(port, &format!("/channels{query}"), headers);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    let entries = body["channels"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            let name = e["channel"].as_str().unwrap().to_string();
            (name, e["subscribers"].as_u64().unwrap())
        })
        .collect();
    (entries, body["next"].as_str().map(str::to_string))
}

fn get_with(port: u16, path: &str, headers: &str) -> HttpReply {
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n");
    raw(port, request.as_bytes())
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

fn send(ws: &mut Client, message: Value) {
    ws.send(Message::text(message.to_string())).unwrap();
}

/// The next occupancy message (other notices, e.g. `subscribed`, skipped).
fn next_occupancy(ws: &mut Client) -> Value {
    loop {
        let message = next_event(ws);
        if message["op"] == "occupancy" || message["op"] == "error" {
            return message;
        }
    }
}

/// Starts watching `channel`; returns the first answer's count.
fn watch(ws: &mut Client, channel: &str) -> u64 {
    send(ws, json!({"op": "occupancy", "channel": channel}));
    let answer = next_occupancy(ws);
    assert_eq!(answer["channel"], channel, "{answer}");
    answer["subscribers"]
        .as_u64()
        .unwrap_or_else(|| panic!("{answer}"))
}

/// Occupancy messages until one says `want` (bounded by `WAIT`), with when each came.
fn updates_until(ws: &mut Client, want: u64) -> Vec<(Instant, u64)> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < WAIT {
        let message = next_occupancy(ws);
        let n = message["subscribers"]
            .as_u64()
            .unwrap_or_else(|| panic!("{message}"));
        seen.push((Instant::now(), n));
        if n == want {
            return seen;
        }
    }
    panic!("no update to {want} within {WAIT:?}: {seen:?}");
}

/// An SSE subscriber on `channels`: the stream, once its head arrived.
fn sse(port: u16, channels: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!("GET /sse?channels={channels} HTTP/1.1\r\nHost: t\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    reader
}

#[test]
fn channels_count_websocket_and_sse_subscribers() {
    let herald = Herald::start();
    let port = herald.port;
    let _a1 = ws_connect(port, "/ws?channels=room");
    let _a2 = ws_connect(port, "/ws?channels=room,lobby");
    let a3 = ws_connect(port, "/ws?channels=room");
    let _s = sse(port, "lobby,zoo");
    wait_count(port, "zoo", 1);
    assert_eq!(subscribers(port, "room"), 3);
    assert_eq!(subscribers(port, "lobby"), 2);
    assert_eq!(subscribers(port, "nobody-here"), 0);
    let (all, next) = listing(port, "", "");
    assert_eq!(all, pairs(&[("lobby", 2), ("room", 3), ("zoo", 1)]));
    assert_eq!(next, None);

    // Pages in name order: `next` says where the following page starts.
    let (first, next) = listing(port, "?limit=2", "");
    assert_eq!(first, pairs(&[("lobby", 2), ("room", 3)]));
    assert_eq!(next.as_deref(), Some("room"));
    let (second, next) = listing(port, "?limit=2&after=room", "");
    assert_eq!((second, next), (pairs(&[("zoo", 1)]), None));

    drop(a3);
    wait_count(port, "room", 2);
    for bad in ["?limit=0", "?limit=1001", "?after=a*b"] {
        assert_eq!(get(port, &format!("/channels{bad}")).status, 400, "{bad}");
    }
    assert_eq!(get(port, "/channels/bad%20name").status, 400);
    let mut head = TcpStream::connect(("127.0.0.1", port)).unwrap();
    head.set_read_timeout(Some(WAIT)).unwrap();
    head.write_all(b"HEAD /channels/room HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut head, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "a head only: {answer}");
    let post = raw(
        port,
        b"POST /channels HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
}

#[test]
fn a_watcher_gets_the_count_at_once_then_coalesced_updates() {
    let herald = Herald::start();
    let port = herald.port;
    let mut watcher = ws_connect(port, "/ws?channels=other");
    let _early = ws_connect(port, "/ws?channels=room");
    wait_count(port, "room", 1);
    assert_eq!(watch(&mut watcher, "room"), 1);

    // 20 changes over about 3 s: every one is a new count, yet the watcher hears at most
    // one a second (plus the last), and the last it hears is the count at the end.
    let start = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(ws_connect(port, "/ws?channels=room"));
        std::thread::sleep(Duration::from_millis(150));
    }
    let seen = updates_until(&mut watcher, 21);
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!("20 changes in {elapsed:.1} s: {} updates", seen.len());
    assert!(
        seen.len() as f64 <= elapsed.ceil() + 1.0 && seen.len() < 20,
        "{} updates in {elapsed:.1} s: {seen:?}",
        seen.len()
    );
    // The watcher is a watcher, not a subscriber: it got no event of `room`.
    publish_to(port, "room", "note", "hello");
    publish_to(port, "other", "note", "mine");
    let event = next_event(&mut watcher);
    assert_eq!(
        (event["channel"].as_str(), event["message"].as_str()),
        (Some("other"), Some("mine"))
    );

    // Leaving is counted too; "watch": false stops the updates.
    clients.truncate(10);
    updates_until(&mut watcher, 11);
    send(
        &mut watcher,
        json!({"op": "occupancy", "channel": "room", "watch": false}),
    );
    let stopped = next_occupancy(&mut watcher);
    assert_eq!(stopped["watching"], false, "{stopped}");
    clients.clear();
    wait_count(port, "room", 1);
    publish_to(port, "other", "note", "after");
    let event = next_event(&mut watcher);
    assert_eq!(
        event["message"], "after",
        "no occupancy update came first: {event}"
    );
}

#[test]
fn watches_share_the_per_connection_cap_with_subscriptions() {
    let herald = Herald::start();
    let port = herald.port;
    let names: Vec<String> = (0..255).map(|i| format!("c{i}")).collect();
    let mut ws = ws_connect(port, &format!("/ws?channels={}", names.join(",")));
    assert_eq!(watch(&mut ws, "x"), 0);
    send(&mut ws, json!({"op": "occupancy", "channel": "y"}));
    let refused = next_occupancy(&mut ws);
    assert_eq!(refused["op"], "error", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("256"),
        "{refused}"
    );
    send(&mut ws, json!({"op": "subscribe", "channel": "z"}));
    let refused = next_event(&mut ws);
    assert_eq!(refused["op"], "error", "{refused}");
    let hits = metric(
        port,
        r#"herald_limit_hits_total{limit="occupancy_watches"}"#,
    );
    assert_eq!(hits, Some(1.0));
    // Watching what it already watches is an answer, not one more watch.
    assert_eq!(watch(&mut ws, "x"), 0);
}

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

fn token(channels: &[&str]) -> String {
    let spec = TokenSpec {
        sub: Some("alice".into()),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        ttl: Duration::from_secs(600),
        ..TokenSpec::default()
    };
    mint_hs256(SECRET.as_bytes(), &spec).unwrap()
}

#[test]
fn with_auth_on_nobody_learns_of_channels_they_may_not_read() {
    let herald = Herald::with(
        &[],
        &[("AUTH_JWT_SECRET", SECRET), ("PUBLIC_CHANNELS", "news")],
    );
    let port = herald.port;
    let everything = token(&["*"]);
    let orders = token(&["orders.*"]);
    let _reader = ws_connect(
        port,
        &format!("/ws?channels=news,orders.eu,billing&token={everything}"),
    );
    wait_count_as(port, "billing", &everything, 1);

    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    assert_eq!(listing(port, "", "").0, pairs(&[("news", 1)]));
    assert_eq!(
        listing(port, "", &bearer(&orders)).0,
        pairs(&[("news", 1), ("orders.eu", 1)])
    );
    assert_eq!(
        listing(port, &format!("?token={everything}"), "").0,
        pairs(&[("billing", 1), ("news", 1), ("orders.eu", 1)])
    );
    assert_eq!(
        get_with(port, "/channels", &bearer("not.a.token")).status,
        401
    );
    assert_eq!(get(port, "/channels/billing").status, 401);
    let forbidden = get_with(port, "/channels/billing", &bearer(&orders));
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    assert_eq!(get(port, "/channels/news").json()["subscribers"], 1);

    // Over the WebSocket: the same rule as subscribing.
    let mut ws = ws_connect(port, &format!("/ws?channels=orders.eu&token={orders}"));
    assert_eq!(watch(&mut ws, "orders.eu"), 2);
    assert_eq!(watch(&mut ws, "news"), 1);
    send(&mut ws, json!({"op": "occupancy", "channel": "billing"}));
    let refused = next_occupancy(&mut ws);
    assert_eq!(
        (refused["op"].as_str(), refused["error"].as_str()),
        (Some("error"), Some("forbidden")),
        "{refused}"
    );
}

fn wait_count_as(port: u16, channel: &str, token: &str, want: u64) {
    wait_until(&format!("{channel} to have {want} subscribers"), || {
        let reply = get(port, &format!("/channels/{channel}?token={token}"));
        reply.status == 200 && reply.json()["subscribers"] == want
    });
}

#[test]
fn replicas_on_one_redis_count_every_replica_and_a_killed_one_drops_out() {
    let redis = Redis::start();
    let a = herald_on_redis(&redis);
    let mut b = herald_on_redis(&redis);
    let mut watcher = ws_connect(a.port, "/ws?channels=elsewhere");
    let _on_a = ws_connect(a.port, "/ws?channels=room");
    let _on_b: Vec<Client> = (0..3)
        .map(|_| ws_connect(b.port, "/ws?channels=room,lobby"))
        .collect();
    // B's counts reach Redis with its next flush (OCCUPANCY_REFRESH_MS, 2 s).
    wait_count(a.port, "room", 4);
    assert_eq!(subscribers(b.port, "room"), 4);
    assert_eq!(subscribers(a.port, "lobby"), 3);
    let expected = pairs(&[("elsewhere", 1), ("lobby", 3), ("room", 4)]);
    assert_eq!(listing(a.port, "", "").0, expected);
    assert_eq!(listing(b.port, "", "").0, expected);
    let (page, next) = listing(a.port, "?limit=1&after=elsewhere", "");
    assert_eq!(
        (page, next.as_deref()),
        (pairs(&[("lobby", 3)]), Some("lobby"))
    );

    // A watcher on A hears of a client joining on B.
    assert_eq!(watch(&mut watcher, "room"), 4);
    let _late_on_b = ws_connect(b.port, "/ws?channels=room");
    updates_until(&mut watcher, 5);

    // B dies without a word: its clients drop out once its counts expire, 3 x 2 s after its
    // last flush, so at most 6 s after the kill (1 s more allowed for this test's polling on
    // a busy machine); A's watcher hears of it with its next read and update.
    b.kill();
    let killed = Instant::now();
    wait_count(a.port, "room", 1);
    let gone_after = killed.elapsed();
    eprintln!("a killed replica's clients dropped out {gone_after:?} after the kill");
    assert!(
        gone_after <= Duration::from_secs(7),
        "B's clients dropped out {gone_after:?} after the kill"
    );
    updates_until(&mut watcher, 1);
    assert_eq!(subscribers(a.port, "room"), 1);
    assert_eq!(
        listing(a.port, "", "").0,
        pairs(&[("elsewhere", 1), ("room", 1)])
    );
}

/// With `--threads 2` each reactor is a replica of its own: clients land on either (the
/// kernel spreads connections over the two listeners), and a count asked of either reactor
/// covers both.
#[test]
fn with_two_reactors_on_redis_each_is_a_replica_and_counts_cover_both() {
    let redis = Redis::start();
    let herald = Herald::with(&["--threads", "2"], &[("PUBSUB_CACHE_URL", &redis.url())]);
    wait_redis_connected(&herald);
    let _clients: Vec<Client> = (0..16)
        .map(|_| ws_connect(herald.port, "/ws?channels=room"))
        .collect();
    // Every request below may reach either reactor: all must see all 16 (16 clients all on
    // one reactor would be a 1 in 32,768 chance; the replica count below would say so).
    wait_until("both reactors to count all 16", || {
        (0..6).all(|_| subscribers(herald.port, "room") == 16)
    });
    let replicas = redis.command_array(&["ZRANGE", "events:occupancy:replicas", "0", "-1"]);
    assert_eq!(replicas.len(), 2, "one replica per reactor: {replicas:?}");
}

/// A replica shutting down (SIGTERM) takes its counts out of Redis before it exits: its
/// clients, reconnecting elsewhere, are not counted twice until the counts would expire.
#[test]
fn a_replica_shutting_down_takes_its_counts_out_at_once() {
    let redis = Redis::start();
    let a = herald_on_redis(&redis);
    let mut b = herald_on_redis(&redis);
    let _on_a = ws_connect(a.port, "/ws?channels=room");
    let _on_b: Vec<Client> = (0..3)
        .map(|_| ws_connect(b.port, "/ws?channels=room"))
        .collect();
    wait_count(a.port, "room", 4);
    let replicas = || redis.command_array(&["ZRANGE", "events:occupancy:replicas", "0", "-1"]);
    assert_eq!(replicas().len(), 2);
    assert_eq!(b.terminate(), Some(0));
    // No waiting: B answered its SIGTERM only after Redis confirmed the counts were out.
    assert_eq!(replicas().len(), 1, "B's entry is gone");
    assert_eq!(subscribers(a.port, "room"), 1);
}
