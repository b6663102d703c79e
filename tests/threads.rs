//! `--threads N`: several reactors in one process, each with its own listener (SO_REUSEPORT)
//! and connections. Clients land on every reactor; every one of them must get every event in
//! the one order the process gave them, resume from any reactor with no gap and no duplicate,
//! be closed with 1001 at shutdown, and count against limits that hold for the whole process.

mod support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use support::*;

const THREADS: &str = "4";

/// A connection to Herald from `source` (any 127.0.0.0/8 address), with a read timeout.
fn connect_from(port: u16, source: [u8; 4]) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(IpAddr::from(source), 0).into())
        .unwrap();
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect(&server.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// A WebSocket client whose connection comes from `source`.
fn ws_connect_from(port: u16, path: &str, source: [u8; 4]) -> Client {
    let stream = connect_from(port, source);
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, response) = tungstenite::client::client(url.as_str(), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// Connections per reactor, from `/metrics` (the other reactors' as of their last report).
fn per_reactor(port: u16, reactors: usize) -> Vec<f64> {
    let page = get(port, "/metrics").body;
    (0..reactors)
        .map(|r| {
            metric_in(
                &page,
                &format!("herald_reactor_connections{{reactor=\"{r}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .collect()
}

/// Opens `n` clients on `path` until at least two reactors hold some (SO_REUSEPORT hashes
/// each connection's addresses: a handful of clients lands on several reactors).
fn clients_on_several_reactors(herald: &Herald, path: &str, n: usize) -> Vec<Client> {
    let clients: Vec<Client> = (0..n)
        .map(|i| ws_connect_from(herald.port, path, [127, 0, 0, 1 + (i % 8) as u8]))
        .collect();
    wait_until("every client counted in /health", || {
        get(herald.port, "/health").json()["websockets"] == n as u64
    });
    // The page holds the serving reactor's live counts and the others' last reports (a
    // second old at most): wait for them rather than read one stale page.
    wait_until("clients on two reactors or more", || {
        per_reactor(herald.port, 4)
            .iter()
            .filter(|&&c| c >= 1.0)
            .count()
            >= 2
    });
    clients
}

fn message_ids(client: &mut Client, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|_| {
            let event = next_event(client);
            (
                event["id"].as_str().unwrap().to_string(),
                event["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn clients_on_every_reactor_get_every_event_in_one_order() {
    let herald = Herald::with(&["--threads", THREADS], &[]);
    let mut clients = clients_on_several_reactors(&herald, "/ws?channels=orders", 24);
    // Three publishers at once, each on connections of its own (so on several reactors).
    const PER_PUBLISHER: usize = 40;
    let publishers: Vec<_> = (0..3)
        .map(|p| {
            let port = herald.port;
            std::thread::spawn(move || {
                for i in 0..PER_PUBLISHER {
                    let reply = publish_to(port, "orders", "o", &format!("p{p}-{i}"));
                    assert_eq!(reply["receivers"], 24, "{reply}");
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let total = 3 * PER_PUBLISHER;
    let first = message_ids(&mut clients[0], total);
    let ids: Vec<&String> = first.iter().map(|(id, _)| id).collect();
    assert!(
        ids.windows(2).all(|w| id_key(w[0]) < id_key(w[1])),
        "ids increase"
    );
    let distinct: BTreeSet<&String> = first.iter().map(|(_, m)| m).collect();
    assert_eq!(distinct.len(), total, "every event once");
    for (p, publisher_order) in (0..3).map(|p| (p, format!("p{p}-"))) {
        let seq: Vec<usize> = first
            .iter()
            .filter_map(|(_, m)| m.strip_prefix(&publisher_order))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(seq, (0..PER_PUBLISHER).collect::<Vec<_>>(), "publisher {p}");
    }
    for client in &mut clients[1..] {
        assert_eq!(message_ids(client, total), first, "one order everywhere");
    }
    // The process's counters: every delivery of every reactor, summed (reports are at most
    // a second old).
    let deliveries = (24 * total) as f64;
    wait_until("/metrics to sum every reactor's deliveries", || {
        metric(herald.port, "herald_events_delivered_total") == Some(deliveries)
    });
}

fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

#[test]
fn a_client_resumes_on_whatever_reactor_it_lands_with_no_gap_and_no_duplicate() {
    let herald = Herald::with(&["--threads", THREADS], &[]);
    let mut watcher = ws_connect_from(herald.port, "/ws?channels=feed", [127, 0, 0, 9]);
    let mut last = publish_id(herald.port, "feed", "e", "0");
    assert_eq!(next_event(&mut watcher)["message"], "0");
    let mut next = 1;
    // Reconnect from eight addresses in turn: the hash puts them on several reactors.
    for round in 0..8u8 {
        let missed: Vec<String> = (0..5)
            .map(|_| {
                let m = next.to_string();
                next += 1;
                publish_to(herald.port, "feed", "e", &m);
                m
            })
            .collect();
        let path = format!("/ws?channels=feed&since={last}");
        let mut client = ws_connect_from(herald.port, &path, [127, 0, 0, 20 + round]);
        // Live events published while the replay runs must come once, after it.
        let live: Vec<String> = (0..3)
            .map(|_| {
                let m = next.to_string();
                next += 1;
                publish_to(herald.port, "feed", "e", &m);
                m
            })
            .collect();
        let got: Vec<Value> = (0..missed.len() + live.len())
            .map(|_| next_event(&mut client))
            .collect();
        let messages: Vec<String> = got
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = missed.iter().chain(&live).cloned().collect();
        assert_eq!(messages, expected, "round {round}");
        // Nothing more: a duplicate would arrive now, before this probe.
        publish_to(herald.port, "feed", "probe", &format!("probe-{round}"));
        assert_eq!(next_event(&mut client)["message"], format!("probe-{round}"));
        for expected in expected.iter() {
            assert_eq!(next_event(&mut watcher)["message"], *expected);
        }
        assert_eq!(
            next_event(&mut watcher)["message"],
            format!("probe-{round}")
        );
        last = client_last_id(&herald, &last);
    }
}

/// The newest id on "feed" (the probe's), from the history.
fn client_last_id(herald: &Herald, fallback: &str) -> String {
    let page = get(herald.port, "/events/feed?limit=1").json();
    page["events"][0]["id"]
        .as_str()
        .unwrap_or(fallback)
        .to_string()
}

#[test]
fn sigterm_closes_every_reactors_clients_with_1001_and_exits_0() {
    let mut herald = Herald::with(&["--threads", THREADS], &[]);
    let mut clients = clients_on_several_reactors(&herald, "/ws", 16);
    let exit = herald.terminate();
    for client in &mut clients {
        assert_eq!(close_code(client), Some(1001));
    }
    assert_eq!(exit, Some(0));
}

#[test]
fn the_connection_limits_hold_for_the_whole_process() {
    let herald = Herald::with(
        &["--threads", THREADS],
        &[("MAX_CONNECTIONS", "12"), ("MAX_CONNECTIONS_PER_IP", "3")],
    );
    // Per address: three from 127.0.0.5, on whatever reactors, then the fourth is refused.
    let same_address: Vec<Client> = (0..3)
        .map(|_| ws_connect_from(herald.port, "/ws", [127, 0, 0, 5]))
        .collect();
    for _ in 0..4 {
        let refused = refused_from(herald.port, [127, 0, 0, 5]);
        assert!(refused.contains("503"), "{refused}");
    }
    // The process: twelve in all, on several reactors, then refused.
    let others: Vec<Client> = (0..9u8)
        .map(|i| ws_connect_from(herald.port, "/ws", [127, 0, 1, 1 + i / 3]))
        .collect();
    let refused = refused_from(herald.port, [127, 0, 2, 1]);
    assert!(refused.contains("503"), "{refused}");
    drop(same_address);
    drop(others);
}

/// What the server answers `GET /health` from `source` (a refused connection: a 503, then
/// close).
fn refused_from(port: u16, source: [u8; 4]) -> String {
    use std::io::{Read, Write};
    let mut stream = connect_from(port, source);
    let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn with_redis_each_reactor_is_a_replica_and_every_client_gets_every_event() {
    let redis = Redis::start();
    let herald = Herald::with(
        &["--threads", THREADS],
        &[("PUBSUB_CACHE_URL", &redis.url())],
    );
    wait_redis_connected(&herald);
    let mut clients = clients_on_several_reactors(&herald, "/ws?channels=orders", 16);
    // Every reactor with clients subscribes on its own link: two or more Redis subscribers
    // (the clients are on two reactors or more), one per reactor at most. (Which reactors
    // hold clients is not exact enough to count: `/metrics` counts its own HTTP connection
    // and the others' reports may be a second old.)
    let subscribers = || {
        let numsub = redis.command_array(&["PUBSUB", "NUMSUB", "events:orders"]);
        numsub
            .get(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_until("a Redis subscriber per busy reactor", || subscribers() >= 2);
    let linked = subscribers();
    assert!(linked <= 4, "{linked} Redis subscribers for 4 reactors");
    for i in 0..30 {
        let reply = publish_to(herald.port, "orders", "o", &i.to_string());
        // Redis's count: more only if another reactor's subscription was still on its way.
        let receivers = reply["receivers"].as_u64().unwrap();
        assert!(
            (linked..=4).contains(&receivers),
            "publish {i}: {receivers}"
        );
    }
    let first = message_ids(&mut clients[0], 30);
    for client in &mut clients[1..] {
        assert_eq!(message_ids(client, 30), first);
    }
}

#[test]
fn threads_auto_runs_one_reactor_per_available_core_and_nonsense_is_refused() {
    let herald = Herald::with(&[], &[("THREADS", "auto")]);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(get(herald.port, "/health").json()["reactors"], cores);
    for bad in ["0", "257", "many"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--threads", bad, "--port", "0"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--threads {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("auto"), "{stderr}");
    }
}

/// The next occupancy message (other notices skipped).
fn next_occupancy(ws: &mut Client) -> Value {
    loop {
        let message = next_event(ws);
        if message["op"] == "occupancy" {
            return message;
        }
    }
}

#[test]
fn occupancy_counts_every_reactors_subscribers() {
    let herald = Herald::with(&["--threads", THREADS], &[]);
    let mut room = clients_on_several_reactors(&herald, "/ws?channels=room", 12);
    let count = get(herald.port, "/channels/room").json();
    assert_eq!(count["subscribers"], 12, "{count}");
    let listing = get(herald.port, "/channels").json();
    assert_eq!(
        listing["channels"],
        serde_json::json!([{"channel": "room", "subscribers": 12}])
    );
    // A watcher on some reactor hears the total at once, then joins and leaves on any
    // reactor (at most a second later, coalesced).
    let mut watcher = ws_connect_from(herald.port, "/ws", [127, 0, 0, 30]);
    watcher
        .send(tungstenite::Message::text(
            r#"{"op":"occupancy","channel":"room"}"#,
        ))
        .unwrap();
    assert_eq!(next_occupancy(&mut watcher)["subscribers"], 12);
    let more: Vec<Client> = (0..8u8)
        .map(|i| ws_connect_from(herald.port, "/ws?channels=room", [127, 0, 0, 40 + i]))
        .collect();
    let mut last = 0;
    for _ in 0..20 {
        last = next_occupancy(&mut watcher)["subscribers"]
            .as_u64()
            .unwrap();
        if last == 20 {
            break;
        }
    }
    assert_eq!(last, 20, "the watcher heard of every join");
    drop(more);
    for client in &mut room[..4] {
        let _ = client.close(None);
    }
    for _ in 0..20 {
        last = next_occupancy(&mut watcher)["subscribers"]
            .as_u64()
            .unwrap();
        if last == 8 {
            break;
        }
    }
    assert_eq!(last, 8, "and of every leave");
}

#[test]
fn sigterm_drains_every_reactor_then_closes_them_all() {
    const DRAIN: Duration = Duration::from_secs(3);
    let mut herald = Herald::with(&["--threads", THREADS], &[("DRAIN_SECS", "3")]);
    let mut clients = clients_on_several_reactors(&herald, "/ws", 12);
    let terminated = std::time::Instant::now();
    signal(herald.pid(), "TERM");
    // Every reactor answers 503 "draining": /health from sixteen source addresses (so on
    // several reactors) all say so, and the clients are still served.
    wait_until("/health to say draining", || {
        get(herald.port, "/health").status == 503
    });
    for i in 0..16u8 {
        let answer = refused_from(herald.port, [127, 0, 3, 1 + i]);
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("draining"),
            "{answer}"
        );
    }
    publish(herald.port, "during", "drain");
    for client in &mut clients {
        assert_eq!(next_event(client)["type"], "during");
    }
    assert!(
        terminated.elapsed() < DRAIN,
        "the checks above ran after the drain: the machine is too slow for this test"
    );
    for client in &mut clients {
        assert_eq!(close_code(client), Some(1001));
    }
    assert!(
        terminated.elapsed() >= DRAIN,
        "closed before the drain was over"
    );
    assert_eq!(herald.wait_exit(Duration::from_secs(10)), Some(0));
}

/// A second Herald process on `port` (Redis mode), or its exit code if it could not start.
fn second_process(port: u16, redis: &Redis, reuse_port: &str) -> Result<std::process::Child, i32> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .env("PUBSUB_CACHE_URL", redis.url())
        .env("REUSE_PORT", reuse_port)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

#[test]
fn reuse_port_lets_two_processes_on_one_redis_share_a_port() {
    let redis = Redis::start();
    let first = Herald::with(
        &[],
        &[("PUBSUB_CACHE_URL", &redis.url()), ("REUSE_PORT", "1")],
    );
    wait_redis_connected(&first);
    // Without REUSE_PORT on both, the port is taken.
    assert!(second_process(first.port, &redis, "0").is_err());
    let mut second = second_process(first.port, &redis, "1").expect("second process started");
    // Clients spread over both processes (the kernel hashes each connection), and an event
    // published through either reaches them all.
    let mut clients: Vec<Client> = (0..16u8)
        .map(|i| ws_connect_from(first.port, "/ws?channels=shared", [127, 0, 0, 50 + i]))
        .collect();
    wait_until("both processes subscribed", || {
        let numsub = redis.command_array(&["PUBSUB", "NUMSUB", "events:shared"]);
        numsub.get(1).map(String::as_str) == Some("2")
    });
    for i in 0..10 {
        publish_to(first.port, "shared", "e", &i.to_string());
    }
    for client in &mut clients {
        for i in 0..10 {
            assert_eq!(next_event(client)["message"], i.to_string());
        }
    }
    let _ = second.kill();
    let _ = second.wait();
}

#[test]
fn max_subscribed_channels_counts_every_reactors_channels() {
    let herald = Herald::with(&["--threads", THREADS], &[("MAX_SUBSCRIBED_CHANNELS", "3")]);
    // Six clients, each on a channel of its own, from six addresses (so several reactors).
    let mut clients: Vec<Client> = (0..6u8)
        .map(|i| {
            ws_connect_from(
                herald.port,
                &format!("/ws?channels=c{i}"),
                [127, 0, 0, 60 + i],
            )
        })
        .collect();
    wait_until("every client counted", || {
        get(herald.port, "/health").json()["websockets"] == 6
    });
    let live: Vec<u8> = (0..6u8)
        .filter(|i| publish_to(herald.port, &format!("c{i}"), "e", "x")["receivers"] == 1)
        .collect();
    assert_eq!(live.len(), 3, "channels with a subscriber: {live:?}");
    for (i, client) in clients.iter_mut().enumerate() {
        let first = next_event(client);
        if live.contains(&(i as u8)) {
            assert_eq!(first["message"], "x", "{first}");
        } else {
            assert_eq!(first["op"], "error", "{first}");
        }
    }
    wait_until("every refusal counted", || {
        metric(
            herald.port,
            "herald_limit_hits_total{limit=\"subscribed_channels\"}",
        ) == Some(3.0)
    });
}

/// Publishes `count` events in one `POST /events/batch`, alternating over `channels`, each
/// numbered in its message: one request, so one turn of the reactor it lands on, while the
/// other reactors' inboxes fill (they are woken once that turn ends).
fn publish_batch(port: u16, channels: &[&str], count: usize) -> Vec<(String, String)> {
    let events: Vec<Value> = (0..count)
        .map(|i| {
            let channel = channels[i % channels.len()];
            serde_json::json!({"type": "b", "message": format!("{channel}-{i}"), "channel": channel})
        })
        .collect();
    let body = Value::Array(events.clone()).to_string();
    let reply = post(port, "/events/batch", Some("application/json"), &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["ok"], count, "{}", reply.body);
    events
        .iter()
        .map(|e| {
            let channel = e["channel"].as_str().unwrap().to_string();
            (channel, e["message"].as_str().unwrap().to_string())
        })
        .collect()
}

/// `INBOX_MAX_EVENTS` 2: a batch of 40 overruns the inbox of every reactor but the one that
/// publishes. Those reactors get the rest from the history: every client on every reactor
/// gets every event, each channel in its one order, and the overrun is counted.
#[test]
fn a_reactor_whose_inbox_overran_delivers_the_rest_from_the_history() {
    overran_and_recovered("INBOX_MAX_EVENTS", "2", "inbox_events");
}

/// The same past `INBOX_MAX_BYTES` (300 bytes: about three of these events).
#[test]
fn a_reactor_whose_inbox_overran_its_bytes_delivers_the_rest_from_the_history() {
    overran_and_recovered("INBOX_MAX_BYTES", "300", "inbox_bytes");
}

fn overran_and_recovered(setting: &str, value: &str, limit: &str) {
    let herald = Herald::with(&["--threads", "2"], &[(setting, value)]);
    let mut clients = clients_on_several_reactors(&herald, "/ws?channels=orders,deploys", 16);
    let published = publish_batch(herald.port, &["orders", "deploys"], 40);
    let mut first_ids: Option<Vec<String>> = None;
    for client in &mut clients {
        let mut got: Vec<(String, String, String)> = (0..published.len())
            .map(|_| {
                let event = next_event(client);
                assert_eq!(event["type"], "b", "a notice instead of an event: {event}");
                let field = |name: &str| event[name].as_str().unwrap().to_string();
                (field("channel"), field("message"), field("id"))
            })
            .collect();
        for channel in ["orders", "deploys"] {
            let expected: Vec<&String> = published
                .iter()
                .filter(|(c, _)| c == channel)
                .map(|(_, m)| m)
                .collect();
            let mine: Vec<&(String, String, String)> =
                got.iter().filter(|(c, _, _)| c == channel).collect();
            let messages: Vec<&String> = mine.iter().map(|(_, m, _)| m).collect();
            assert_eq!(messages, expected, "{channel}: every event, in order");
            assert!(
                mine.windows(2).all(|w| id_key(&w[0].2) < id_key(&w[1].2)),
                "{channel}: ids increase"
            );
        }
        // Every reactor delivered the same ids (each channel's one order).
        got.sort_by_key(|(_, _, id)| id_key(id));
        let ids: Vec<String> = got.into_iter().map(|(_, _, id)| id).collect();
        assert_eq!(ids, *first_ids.get_or_insert_with(|| ids.clone()));
    }
    wait_until("the overrun counted", || {
        metric(
            herald.port,
            &format!("herald_limit_hits_total{{limit=\"{limit}\"}}"),
        )
        .is_some_and(|n| n >= 1.0)
    });
    // Queuing goes on afterwards, for everyone.
    publish_to(herald.port, "orders", "after", "1");
    for client in &mut clients {
        assert_eq!(next_event(client)["type"], "after");
    }
    assert!(herald.log().contains(setting), "{}", herald.log());
}

/// With `HISTORY_LEN` 4 the history no longer holds what an overrun dropped: the clients of
/// the reactor that overran get a reset notice from the last event they got, never a silent
/// gap, then live events again.
#[test]
fn an_overrun_the_history_cannot_cover_sends_a_reset_notice() {
    let herald = Herald::with(
        &["--threads", "2"],
        &[("INBOX_MAX_EVENTS", "2"), ("HISTORY_LEN", "4")],
    );
    let mut clients = clients_on_several_reactors(&herald, "/ws?channels=orders", 16);
    let published = publish_batch(herald.port, &["orders"], 40);
    publish_to(herald.port, "orders", "probe", "probe");
    let mut resets = 0;
    for client in &mut clients {
        let mut got = Vec::new();
        let mut last_id = None;
        loop {
            let event = next_event(client);
            if event["op"] == "reset" {
                assert_eq!(event["channel"], "orders", "{event}");
                assert_eq!(event["since"].as_str(), last_id.as_deref(), "{event}");
                resets += 1;
                let probe = next_event(client);
                assert_eq!(probe["type"], "probe", "{probe}");
                break;
            }
            assert_eq!(event["channel"], "orders", "{event}");
            if event["type"] == "probe" {
                assert_eq!(got.len(), published.len(), "every event before the probe");
                break;
            }
            got.push(event["message"].as_str().unwrap().to_string());
            last_id = event["id"].as_str().map(str::to_string);
        }
        let expected: Vec<&String> = published.iter().map(|(_, m)| m).collect();
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            expected[..got.len()],
            "in order, no gap"
        );
    }
    assert!(resets > 0, "no client was on a reactor that overran");
}

/// Overruns while a reactor is busy: eight publishers at once on connections of their own
/// (so on both reactors), each sending batches of four, `INBOX_MAX_EVENTS` 2, and enough
/// subscribers that each turn's delivery takes a while. An overrun that begins while a
/// reactor delivers its inbox must come after what was queued before it began, and the next
/// inbox after the overrun: every client gets every event once, all in the same order.
#[test]
fn overruns_while_a_reactor_delivers_lose_nothing_and_repeat_nothing() {
    let herald = Herald::with(&["--threads", "2"], &[("INBOX_MAX_EVENTS", "2")]);
    let mut clients = clients_on_several_reactors(&herald, "/ws?channels=orders", 400);
    const PUBLISHERS: usize = 8;
    const BATCHES: usize = 10;
    const PER_BATCH: usize = 4;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let port = herald.port;
            std::thread::spawn(move || {
                for b in 0..BATCHES {
                    let events: Vec<Value> = (0..PER_BATCH)
                        .map(|i| {
                            let message = format!("p{p}-{}", b * PER_BATCH + i);
                            serde_json::json!({"type": "o", "message": message, "channel": "orders"})
                        })
                        .collect();
                    let body = Value::Array(events).to_string();
                    let reply = post(port, "/events/batch", Some("application/json"), &body);
                    assert_eq!(reply.status, 200, "{}", reply.body);
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let total = PUBLISHERS * BATCHES * PER_BATCH;
    let first = message_ids(&mut clients[0], total);
    let ids: Vec<&String> = first.iter().map(|(id, _)| id).collect();
    assert!(
        ids.windows(2).all(|w| id_key(w[0]) < id_key(w[1])),
        "ids increase, none twice"
    );
    let distinct: BTreeSet<&String> = first.iter().map(|(_, m)| m).collect();
    assert_eq!(distinct.len(), total, "every event once");
    for client in &mut clients[1..] {
        assert_eq!(message_ids(client, total), first, "one order everywhere");
    }
    // Nothing more: a late duplicate would arrive before the probe.
    publish_to(herald.port, "orders", "probe", "probe");
    for client in &mut clients {
        assert_eq!(next_event(client)["type"], "probe");
    }
    wait_until("the overruns counted", || {
        metric(
            herald.port,
            "herald_limit_hits_total{limit=\"inbox_events\"}",
        )
        .is_some_and(|n| n >= 1.0)
    });
}
