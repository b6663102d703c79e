//! Redis is a peer too, against the real binary and a real `redis-server`: replies nested or
//! sized beyond the RESP limits (injected by a proxy in front of the real server), a Redis that
//! stops answering (SIGSTOP), an impostor that answers the handshake and hangs up in a loop,
//! work waiting on Redis over its caps, and foreign messages published straight into Redis.
//! Each test fails without the protection it names; each checks the process is alive after.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::*;

const MIB: u64 = 1024 * 1024;

fn herald_on(url: &str, env: &[(&str, &str)]) -> Herald {
    let mut all = vec![("PUBSUB_CACHE_URL", url)];
    all.extend_from_slice(env);
    Herald::with(&[], &all)
}

fn limit_hits(port: u16, limit: &str) -> f64 {
    metric(
        port,
        &format!("herald_limit_hits_total{{limit=\"{limit}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Resumes a stopped process when dropped, so a failing test leaves no frozen Redis behind.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

// ---- a proxy that can inject bytes into what Redis sends --------------------------------------

/// Forwards every connection to a real Redis; `inject` and `stream_bulk` add bytes to what
/// Herald receives, between two chunks Redis sent (a chunk is written whole, under a lock).
struct Proxy {
    port: u16,
    to_herald: Arc<Mutex<Vec<Arc<Mutex<TcpStream>>>>>,
    /// Per connection: drop what Herald sends instead of forwarding it (a black hole).
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// Per connection: keep what Redis sends until released (a slow path back).
    held: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// New connections are closed at once (Redis unreachable) while set.
    refusing: Arc<AtomicBool>,
}

/// Replies held back by `Proxy::hold_current`; released when dropped.
struct HeldReplies(Vec<Arc<AtomicBool>>);

impl Drop for HeldReplies {
    fn drop(&mut self) {
        for hold in &self.0 {
            hold.store(false, Ordering::Relaxed);
        }
    }
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let to_herald = Arc::new(Mutex::new(Vec::new()));
        let links = Arc::clone(&to_herald);
        let frozen = Arc::new(Mutex::new(Vec::new()));
        let freezes = Arc::clone(&frozen);
        let held = Arc::new(Mutex::new(Vec::new()));
        let holds = Arc::clone(&held);
        let refusing = Arc::new(AtomicBool::new(false));
        let refuse = Arc::clone(&refusing);
        std::thread::spawn(move || {
            // Bounded: a test makes a few dozen connections at most.
            for herald in listener.incoming().take(1000) {
                let Ok(herald) = herald else { continue };
                if refuse.load(Ordering::Relaxed) {
                    continue; // dropped: closed at once
                }
                let Ok(redis) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut from_herald, mut to_redis) =
                    (herald.try_clone().unwrap(), redis.try_clone().unwrap());
                let freeze = Arc::new(AtomicBool::new(false));
                freezes.lock().unwrap().push(Arc::clone(&freeze));
                std::thread::spawn(move || {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n) = from_herald.read(&mut buf) {
                        let forwarded =
                            freeze.load(Ordering::Relaxed) || to_redis.write_all(&buf[..n]).is_ok();
                        if n == 0 || !forwarded {
                            break;
                        }
                    }
                    let _ = to_redis.shutdown(Shutdown::Both);
                });
                let herald = Arc::new(Mutex::new(herald));
                links.lock().unwrap().push(Arc::clone(&herald));
                let hold = Arc::new(AtomicBool::new(false));
                holds.lock().unwrap().push(Arc::clone(&hold));
                let mut from_redis = redis;
                std::thread::spawn(move || {
                    let mut buf = vec![0; 64 * 1024];
                    while let Ok(n) = from_redis.read(&mut buf) {
                        // Bounded: a test holds replies for seconds (an end of stream is
                        // passed on at once).
                        for _ in 0..3000 {
                            if n == 0 || !hold.load(Ordering::Relaxed) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        if n == 0 || herald.lock().unwrap().write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = herald.lock().unwrap().shutdown(Shutdown::Both);
                });
            }
        });
        Proxy {
            port,
            to_herald,
            frozen,
            held,
            refusing,
        }
    }

    /// From now on, what Redis sends on the connections open now waits until the returned
    /// guard is dropped.
    fn hold_current(&self) -> HeldReplies {
        let holds = std::mem::take(&mut *self.held.lock().unwrap());
        for hold in &holds {
            hold.store(true, Ordering::Relaxed);
        }
        HeldReplies(holds)
    }

    /// While `on`, new connections are closed at once.
    fn refuse_new(&self, on: bool) {
        self.refusing.store(on, Ordering::Relaxed);
    }

    /// From now on, what Herald sends on the connections open now goes nowhere.
    fn freeze_current(&self) {
        for freeze in std::mem::take(&mut *self.frozen.lock().unwrap()) {
            freeze.store(true, Ordering::Relaxed);
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn current_links(&self) -> Vec<Arc<Mutex<TcpStream>>> {
        std::mem::take(&mut *self.to_herald.lock().unwrap())
    }

    /// Writes `bytes` to Herald on every connection open now.
    fn inject(&self, bytes: &[u8]) {
        for link in self.current_links() {
            let mut stream = link.lock().unwrap();
            stream.set_write_timeout(Some(WAIT)).unwrap();
            let _ = stream.write_all(bytes);
        }
    }

    /// Announces a bulk string of 1 GiB on every connection open now, then streams its bytes
    /// until Herald closes the connection or `most` bytes went out. Returns the bytes sent.
    fn stream_bulk(&self, most: usize) -> usize {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        for link in self.current_links() {
            let mut stream = link.lock().unwrap();
            stream
                .set_write_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            if stream.write_all(b"$1073741824\r\n").is_err() {
                continue;
            }
            let mut this_link = 0;
            while this_link < most && stream.write_all(&chunk).is_ok() {
                this_link += chunk.len();
            }
            sent += this_link;
        }
        sent
    }
}

// ---- a publisher in the background, and what a well-behaved client must then see ---------------

/// Publishes `p<i>` on channel `events` every 20 ms until stopped (at most 30 s), recording
/// each answer: `(i, status, outcome)`.
struct Publisher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<(usize, u16, Option<String>)>>,
}

impl Publisher {
    fn start(port: u16) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let mut answers = Vec::new();
            for i in 0.. {
                if stopping.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(30) {
                    break;
                }
                let reply = post(port, &format!("/events?event_type=p&message={i}"), None, "");
                let outcome = (reply.status != 200 && reply.status != 0)
                    .then(|| reply.json()["outcome"].as_str().map(str::to_string))
                    .flatten();
                answers.push((i, reply.status, outcome));
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        });
        Publisher { stop, handle }
    }

    fn finish(self) -> Vec<(usize, u16, Option<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// The client got every publish answered 200, in order, once; anything else it got was a
/// publish whose outcome was unknown (Redis may have run it); nothing refused outright.
fn assert_got_every_accepted(client: &mut Client, answers: &[(usize, u16, Option<String>)]) {
    let accepted: Vec<usize> = answers
        .iter()
        .filter(|(_, status, _)| *status == 200)
        .map(|(i, _, _)| *i)
        .collect();
    let unknown: Vec<usize> = answers
        .iter()
        .filter(|(_, _, outcome)| outcome.as_deref() == Some("unknown"))
        .map(|(i, _, _)| *i)
        .collect();
    assert!(!accepted.is_empty(), "no publish accepted: {answers:?}");
    let last = *accepted.last().unwrap();
    let mut received: Vec<usize> = Vec::new();
    while received.last() != Some(&last) {
        let event = next_event(client);
        assert!(event.get("op").is_none(), "a notice: {event}");
        let i: usize = event["message"].as_str().unwrap().parse().unwrap();
        assert!(
            accepted.contains(&i) || unknown.contains(&i),
            "event {i} was refused, yet delivered"
        );
        assert!(
            received.last().is_none_or(|&prev| prev < i),
            "out of order or doubled: {i} after {received:?}"
        );
        received.push(i);
    }
    for i in &accepted {
        assert!(received.contains(i), "accepted event {i} never arrived");
    }
    eprintln!(
        "well-behaved client: {} events received ({} accepted, {} unknown outcome, {} refused)",
        received.len(),
        accepted.len(),
        unknown.len(),
        answers.len() - accepted.len() - unknown.len()
    );
}

// ---- the tests ------------------------------------------------------------------------------

/// A million nested arrays would overflow the stack of a recursive decoder (redis-protocol's
/// recurses once per level); a bulk string announced at 1 GiB would be buffered to the end.
/// Both reset the link at once; the client never notices. Memory bound: one reply within the
/// RESP limits (with default caps 2 * MAX_QUEUED_BYTES + 64 * max(HISTORY_LEN, 1000) + 4 KiB,
/// about 2.1 MiB) plus one 64 KiB read; 8 MiB allowed.
#[test]
fn replies_beyond_the_resp_limits_reset_the_link_and_nothing_else() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    let herald = herald_on(&proxy.url(), &[]);
    wait_redis_connected(&herald);
    let mut client = ws_connect(herald.port, "/ws");
    let publisher = Publisher::start(herald.port);
    std::thread::sleep(Duration::from_millis(300));
    let rss_before = herald.rss_bytes();

    proxy.inject(&b"*1\r\n".repeat(1_000_000));
    wait_until("the deep reply to be refused", || {
        limit_hits(herald.port, "redis_reply") >= 1.0
    });
    assert!(herald.log().contains("nested deeper than 8"));
    wait_redis_connected(&herald);

    let sent = proxy.stream_bulk(256 * MIB as usize);
    let rss_during = herald.rss_bytes();
    wait_until("the huge bulk to be refused", || {
        limit_hits(herald.port, "redis_reply") >= 2.0
    });
    wait_redis_connected(&herald);
    std::thread::sleep(Duration::from_millis(300));
    let answers = publisher.finish();
    let rss_after = herald.rss_bytes();
    eprintln!(
        "RSS before {} KiB, during {} KiB, after {} KiB; {} KiB of the bulk sent before Herald hung up",
        rss_before / 1024,
        rss_during / 1024,
        rss_after / 1024,
        sent / 1024
    );
    assert!(
        (sent as u64) < 64 * MIB,
        "Herald read {sent} bytes of a bulk over the limit"
    );
    for rss in [rss_during, rss_after] {
        assert!(rss <= rss_before + 8 * MIB, "RSS {rss} vs {rss_before}");
    }
    assert_got_every_accepted(&mut client, &answers);
    let mut herald = herald;
    assert!(!herald.has_exited());
}

/// A Redis process stopped with SIGSTOP: its kernel still accepts connections and bytes, so
/// only a deadline tells. A publish waiting on it gets its 504 within REDIS_TIMEOUT_MS, /health
/// says "stalled", work that never reached Redis (a resume waiting for the link) is answered by
/// then too, and everything works again once Redis does.
#[test]
fn a_stopped_redis_is_answered_for_within_the_timeout() {
    let redis = Redis::start();
    let herald = herald_on(&redis.url(), &[("REDIS_TIMEOUT_MS", "1000")]);
    wait_redis_connected(&herald);
    let id = publish_id(herald.port, "events", "before", "stop");
    let mut client = ws_connect(herald.port, "/ws");
    // Connected again once the client's channel subscription is confirmed.
    wait_redis_connected(&herald);

    signal(redis.pid(), "STOP");
    let resume = Resume(redis.pid());
    let started = Instant::now();
    let reply = post(
        herald.port,
        "/events?event_type=during&message=stall",
        None,
        "",
    );
    let waited = started.elapsed();
    eprintln!("publish answered after {waited:?}");
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(
        reply.json(),
        serde_json::json!({"error": "redis timeout", "outcome": "unknown"})
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    assert_eq!(get(herald.port, "/health").json()["redis"], "stalled");
    assert!(limit_hits(herald.port, "redis_timeout") >= 1.0);

    // A resume that waits for the (reconnecting, unanswered) link gets a reset in time.
    let started = Instant::now();
    let mut resuming = ws_connect(herald.port, &format!("/ws?since={id}"));
    let notice = next_event(&mut resuming);
    eprintln!("resume answered after {:?}", started.elapsed());
    assert_eq!(notice["op"], "reset", "{notice}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    let history = get(herald.port, "/events/events");
    assert!(matches!(history.status, 503 | 504), "{history:?}");
    // Still stalled: the new connection's handshake goes unanswered too.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get(herald.port, "/health").json()["redis"], "stalled");

    drop(resume);
    wait_redis_connected(&herald);
    publish(herald.port, "after", "cont");
    // The 504'd event may come first: Redis ran it when it woke (outcome unknown).
    let mut event = next_event(&mut client);
    if event["type"] == "during" {
        event = next_event(&mut client);
    }
    assert_eq!(event["type"], "after", "{event}");
    let log = herald.log();
    let stalls = log.matches("did not answer for").count();
    assert!((1..=4).contains(&stalls), "{stalls} lines:\n{log}");
    let mut herald = herald;
    assert!(!herald.has_exited());
}

/// A Herald behind `proxy`, another replica straight on `redis`, and a client of the first
/// that got one event (so its channel has a point to catch up from).
fn behind_the_proxy_with_a_client(
    redis: &Redis,
    proxy: &Proxy,
    env: &[(&str, &str)],
) -> (Herald, Herald, Client) {
    let herald = herald_on(&proxy.url(), env);
    wait_redis_connected(&herald);
    let other_replica = herald_on(&redis.url(), &[]);
    // It publishes later: a replica refuses publishes until both its links are up.
    wait_redis_connected(&other_replica);
    let mut client = ws_connect(herald.port, "/ws");
    wait_redis_connected(&herald);
    publish(herald.port, "first", "0");
    assert_eq!(next_event(&mut client)["type"], "first");
    (herald, other_replica, client)
}

/// A channel catching up after its subscription dropped holds the live events that arrive
/// while it reads what it missed. Here the read can never be answered (the command link is
/// black-holed by the proxy, and looks idle and fine): the held events are released, after a
/// reset notice, as soon as they pass MAX_PENDING_BYTES (first part), and the read is given up
/// by REDIS_TIMEOUT_MS at the latest (second part). Without the cap they pile up until the link's idle check
/// gives up (15 s + the timeout); memory bound: MAX_PENDING_BYTES held (256 KiB), 4 MiB allowed.
#[test]
fn a_catch_up_that_cannot_read_releases_held_events_by_bytes_and_by_time() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    let env = [
        ("REDIS_TIMEOUT_MS", "4000"),
        ("MAX_PENDING_BYTES", "262144"),
    ];
    let (herald, other_replica, mut client) = behind_the_proxy_with_a_client(&redis, &proxy, &env);
    let rss_before = herald.rss_bytes();

    // The command link goes into a black hole; the subscription drops and comes back (through
    // a fresh, working connection): the catch-up's read is sent and never answered.
    proxy.freeze_current();
    assert_eq!(redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]), ":1");
    wait_until("the subscription to come back", || {
        redis.command_array(&["PUBSUB", "NUMSUB", "events"])[1] == "1"
    });
    let started = Instant::now();
    let big = "b".repeat(30_000);
    for i in 0..20 {
        let body = serde_json::json!({"type": "held", "message": format!("{i}:{big}")});
        let reply = post(
            other_replica.port,
            "/events",
            Some("application/json"),
            &body.to_string(),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let notice = next_event(&mut client);
    let released_after = started.elapsed();
    assert_eq!(notice["op"], "reset", "{notice}");
    for i in 0..20 {
        let event = next_event(&mut client);
        assert_eq!(event["type"], "held");
        assert!(
            event["message"]
                .as_str()
                .unwrap()
                .starts_with(&i.to_string())
        );
    }
    let rss_during = herald.rss_bytes();
    eprintln!(
        "by bytes: reset after {released_after:?}; RSS before {} KiB, during {} KiB",
        rss_before / 1024,
        rss_during / 1024
    );
    assert!(
        released_after < Duration::from_millis(3500),
        "{released_after:?}"
    );
    assert!(limit_hits(herald.port, "pending_bytes") >= 1.0);
    assert!(rss_during <= rss_before + 4 * MIB);

    // Again, with one small event: nothing reaches the byte cap. REDIS_TIMEOUT_MS resets the
    // black-holed link; the catch-up reads again on the new one (or, had it held events that
    // long, would release them after a reset notice).
    wait_redis_connected(&herald);
    proxy.freeze_current();
    assert_eq!(redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]), ":1");
    wait_until("the subscription to come back", || {
        redis.command_array(&["PUBSUB", "NUMSUB", "events"])[1] == "1"
    });
    let started = Instant::now();
    publish(other_replica.port, "small", "late");
    let mut event = next_event(&mut client);
    let waited = started.elapsed();
    if event["op"] == "reset" {
        event = next_event(&mut client);
    }
    eprintln!("by time: released after {waited:?}");
    assert_eq!(event["type"], "small", "{event}");
    assert!(waited < Duration::from_millis(4000 + 2500), "{waited:?}");
    let mut herald = herald;
    assert!(!herald.has_exited());
}

/// History reads Redis has run: each runs XRANGE (in the history script), which no publish
/// does.
fn history_reads(redis: &Redis) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let len: usize = line.trim_end().trim_start_matches('$').parse().unwrap();
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_xrange:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// The subscription drops, comes back, and drops again while the catch-up's read of what it
/// missed is out (the proxy holds its answer back). Redis ran that read before the second
/// loss, so the page cannot hold what is published while the subscription is down again: its
/// answer must not end the catch-up, which reads again once the subscription is back. Without
/// that, an event accepted meanwhile never reached the client: a silent gap (seen once, under
/// load, as "accepted event 18 never arrived" in `replies_beyond_the_resp_limits_...`).
#[test]
fn a_subscription_lost_again_while_its_catch_up_reads_is_caught_up_again() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port);
    // Long enough that the held read is not timed out (a timeout would read again too).
    let env = [("REDIS_TIMEOUT_MS", "30000")];
    let (herald, other_replica, mut client) = behind_the_proxy_with_a_client(&redis, &proxy, &env);

    // Replies on the command link are held; the subscription drops and comes back through a
    // fresh connection, and Redis runs the catch-up's read: its answer waits in the proxy.
    let held = proxy.hold_current();
    let reads = history_reads(&redis);
    assert_eq!(redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]), ":1");
    wait_until("the catch-up's read to run", || {
        history_reads(&redis) > reads
    });
    wait_until("herald to see its subscription back", || {
        get(herald.port, "/health").json()["redis"] == "connected"
    });
    // The subscription drops again and stays down (Redis unreachable for new connections)
    // while another replica publishes.
    proxy.refuse_new(true);
    assert_eq!(redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]), ":1");
    wait_until("herald to see its subscription lost again", || {
        get(herald.port, "/health").json()["redis"] != "connected"
    });
    publish(other_replica.port, "missed", "1");
    // The old read's answer arrives, then the subscription comes back.
    drop(held);
    proxy.refuse_new(false);
    wait_redis_connected(&herald);
    publish(other_replica.port, "after", "2");
    assert_eq!(next_event(&mut client)["type"], "missed", "a silent gap");
    assert_eq!(next_event(&mut client)["type"], "after");
    publish(other_replica.port, "probe", "3");
    assert_eq!(next_event(&mut client)["type"], "probe", "nothing twice");
    let mut herald = herald;
    assert!(!herald.has_exited());
}

/// Writes one POST of a `size`-byte message on a new connection; the reader for its answer.
fn post_on_new_connection(port: u16, size: usize) -> BufReader<TcpStream> {
    let body = serde_json::json!({"type": "big", "message": "m".repeat(size)}).to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST /events HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    BufReader::new(stream)
}

/// Each reader's answer if it came within `within` (status and error), `None` if it still waits.
fn answered_within(
    readers: &mut [BufReader<TcpStream>],
    within: Duration,
) -> Vec<Option<(u16, String)>> {
    let deadline = Instant::now() + within;
    readers
        .iter_mut()
        .map(|reader| {
            let left = deadline.saturating_duration_since(Instant::now());
            reader
                .get_mut()
                .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                .unwrap();
            read_reply(reader).map(|reply| {
                let error = reply.json()["error"].as_str().unwrap_or("").to_string();
                (reply.status, error)
            })
        })
        .collect()
}

/// The answers that came, and the readers still waiting.
fn split_answers(
    readers: Vec<BufReader<TcpStream>>,
    answers: Vec<Option<(u16, String)>>,
) -> (Vec<(u16, String)>, Vec<BufReader<TcpStream>>) {
    let mut answered = Vec::new();
    let mut waiting = Vec::new();
    for (reader, answer) in readers.into_iter().zip(answers) {
        match answer {
            Some(answer) => answered.push(answer),
            None => waiting.push(reader),
        }
    }
    (answered, waiting)
}

/// Reads the answer of each reader still waiting; all must be 200s. Returns how many.
fn all_answered_200(waiting: &mut [BufReader<TcpStream>]) -> usize {
    for reader in waiting.iter_mut() {
        reader.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        let reply = read_reply(reader).expect("an answer once Redis is back");
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    waiting.len()
}

/// 300 publishers with 30 KB events each while Redis is stopped: only MAX_PENDING_BYTES of
/// them (1 MiB: 34 events) wait, the others get a 503 at once. Memory bound: the waiting
/// events twice (the event, its EVAL in the link's output) = 2 * MAX_PENDING_BYTES, plus
/// 300 connections' slots and replies (well under 1 MiB); 6 MiB allowed. Without the cap, all
/// 300 wait (9 MB of events held twice, and no 503).
#[test]
fn publishes_waiting_on_a_stalled_redis_are_bounded_in_bytes() {
    let redis = Redis::start();
    let herald = herald_on(
        &redis.url(),
        &[
            ("REDIS_TIMEOUT_MS", "20000"),
            ("MAX_PENDING_BYTES", "1048576"),
        ],
    );
    wait_redis_connected(&herald);
    let mut client = ws_connect(herald.port, "/ws");
    let rss_before = herald.rss_bytes();

    signal(redis.pid(), "STOP");
    let resume = Resume(redis.pid());
    let mut readers: Vec<_> = (0..300)
        .map(|_| post_on_new_connection(herald.port, 30_000))
        .collect();
    let answers = answered_within(&mut readers, Duration::from_secs(3));
    let rss_during = herald.rss_bytes();
    let (refused, mut waiting) = split_answers(readers, answers);
    eprintln!("{} refused, {} waiting", refused.len(), waiting.len());
    assert!((20..=35).contains(&waiting.len()), "{} wait", waiting.len());
    for (status, error) in &refused {
        assert_eq!(*status, 503, "{error}");
        assert!(error.contains("MAX_PENDING_BYTES"), "{error}");
    }
    assert_eq!(
        limit_hits(herald.port, "pending_bytes"),
        refused.len() as f64
    );

    drop(resume);
    let accepted = all_answered_200(&mut waiting);
    for _ in 0..accepted {
        assert_eq!(next_event(&mut client)["type"], "big");
    }
    let rss_after = herald.rss_bytes();
    eprintln!(
        "RSS before {} KiB, during {} KiB, after {} KiB; client got {accepted} events",
        rss_before / 1024,
        rss_during / 1024,
        rss_after / 1024
    );
    assert!(
        rss_during <= rss_before + 6 * MIB,
        "{rss_during} vs {rss_before}"
    );
    let log = herald.log();
    let lines = log.matches("publish refused (503)").count();
    assert!(lines <= 2, "{lines} lines for {} refusals", refused.len());
    let mut herald = herald;
    assert!(!herald.has_exited());
}

/// Counts: MAX_PENDING_PUBLISHES small publishes wait, the rest get a 503; MAX_PENDING_READS
/// history reads wait, the next GET gets a 503 and the next resume a reset notice.
#[test]
fn work_waiting_on_a_stalled_redis_is_bounded_in_count() {
    let redis = Redis::start();
    let herald = herald_on(
        &redis.url(),
        &[
            ("REDIS_TIMEOUT_MS", "20000"),
            ("MAX_PENDING_PUBLISHES", "10"),
            ("MAX_PENDING_READS", "3"),
        ],
    );
    wait_redis_connected(&herald);
    let id = publish_id(herald.port, "events", "before", "stop");
    let _client = ws_connect(herald.port, "/ws");

    signal(redis.pid(), "STOP");
    let resume = Resume(redis.pid());
    let mut publishes: Vec<_> = (0..40)
        .map(|_| post_on_new_connection(herald.port, 10))
        .collect();
    let answers = answered_within(&mut publishes, Duration::from_secs(2));
    let (refused, mut waiting_publishes) = split_answers(publishes, answers);
    assert_eq!(waiting_publishes.len(), 10, "{refused:?}");
    for (status, error) in &refused {
        assert_eq!(*status, 503, "{error}");
        assert!(error.contains("MAX_PENDING_PUBLISHES"), "{error}");
    }
    assert_eq!(limit_hits(herald.port, "pending_publishes"), 30.0);

    let mut reads: Vec<_> = (0..5)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
            stream
                .write_all(b"GET /events/events HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            BufReader::new(stream)
        })
        .collect();
    let answers = answered_within(&mut reads, Duration::from_secs(2));
    let (refused, mut waiting_reads) = split_answers(reads, answers);
    assert_eq!(waiting_reads.len(), 3, "{refused:?}");
    for (status, error) in &refused {
        assert_eq!(*status, 503, "{error}");
        assert!(error.contains("MAX_PENDING_READS"), "{error}");
    }
    let mut resuming = ws_connect(herald.port, &format!("/ws?since={id}"));
    let notice = next_event(&mut resuming);
    assert_eq!(notice["op"], "reset", "{notice}");
    assert!(
        notice["reason"].as_str().unwrap().contains("busy"),
        "{notice}"
    );
    assert_eq!(limit_hits(herald.port, "pending_reads"), 3.0);

    drop(resume);
    assert_eq!(all_answered_200(&mut waiting_publishes), 10);
    assert_eq!(all_answered_200(&mut waiting_reads), 3);
    let mut herald = herald;
    assert!(!herald.has_exited());
}

// ---- an impostor that answers the handshake, then hangs up -------------------------------------

/// Reads one RESP command (an array of bulk strings) from `reader`.
fn read_command(reader: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    use std::io::BufRead;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let count: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut args = Vec::new();
    for _ in 0..count {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0; len + 2];
        reader.read_exact(&mut arg).ok()?;
        arg.truncate(len);
        args.push(String::from_utf8(arg).ok()?);
    }
    Some(args)
}

/// Accepts connections, answers the handshake's liveness check like Redis (so the link goes
/// Ready), then sends a 10 KB error line and hangs up. Counts connections.
fn flapping_impostor() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10_000) {
            let Ok(stream) = stream else { continue };
            counter.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(WAIT)).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let Some(command) = read_command(&mut reader) else {
                    return;
                };
                let answer: &[u8] = match command[0].to_ascii_uppercase().as_str() {
                    "TIME" => b"*2\r\n$10\r\n1764000000\r\n$1\r\n0\r\n",
                    _ => b"+PONG\r\n",
                };
                let _ = writer.write_all(answer);
                std::thread::sleep(Duration::from_millis(30));
                let long = format!("-ERR {}\r\n", "z".repeat(10_000));
                let _ = writer.write_all(long.as_bytes());
                let _ = writer.shutdown(Shutdown::Both);
            });
        }
    });
    (port, connections)
}

/// Every connection succeeds and goes Ready, then fails at once: the backoff must still grow
/// (without the fix the failure count restarts at every Ready: a connection every ~75 ms per
/// link, 150 in 6 s), the 10 KB error text is cut short in /health, and the loop costs a few
/// log lines, not one per attempt.
#[test]
fn a_redis_that_hangs_up_after_each_handshake_gets_a_growing_backoff() {
    let (port, connections) = flapping_impostor();
    let herald = herald_on(&format!("redis://127.0.0.1:{port}"), &[]);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let count = connections.load(Ordering::Relaxed);
    let log = herald.log();
    // Debug lines (one per connection) are off in production; warnings and info count.
    let lines = log
        .lines()
        .filter(|l| l.contains("redis ") && !l.contains("DEBUG"))
        .count();
    eprintln!(
        "in {:?}: {count} connections, {lines} log lines about the links",
        started.elapsed()
    );
    // Per link: 0, then 50-100 ms, 100-200, 200-400, 400-800, 800-1600, 1600-3200 ms...: at
    // most 8 attempts in 6 s.
    assert!(count <= 20, "{count} connections in 6 s: no backoff");
    assert!(lines <= 12, "{lines} log lines:\n{log}");
    let health = get(herald.port, "/health").json();
    let error = health["redis_error"].as_str().unwrap_or_default();
    assert!(error.contains("zzzz"), "{health}");
    assert!(error.len() < 300, "{} bytes of error text", error.len());
    assert!(log.lines().all(|l| l.len() < 600), "a long log line");
    let mut herald = herald;
    assert!(!herald.has_exited());
}

// ---- foreign messages -----------------------------------------------------------------------------

/// Publishes `payload` on a Redis channel as `redis-cli PUBLISH` would.
fn redis_publish(redis: &Redis, channel: &str, payload: &str) {
    let answer = redis.command(&["PUBLISH", channel, payload]);
    assert!(answer.starts_with(':'), "{answer}");
}

/// Another program's payload decides nothing: a far-future id is relayed but trusted for
/// nothing (the channel keeps delivering, and a catch-up after a lost subscription resumes
/// from the last real id), an `op` never reaches clients, and what is not an event is dropped
/// and counted.
#[test]
fn foreign_messages_cannot_silence_a_channel_or_pose_as_notices() {
    let redis = Redis::start();
    let herald = herald_on(&redis.url(), &[]);
    wait_redis_connected(&herald);
    let other_replica = herald_on(&redis.url(), &[]);
    wait_redis_connected(&other_replica);
    let mut client = ws_connect(herald.port, "/ws");
    let mut sse = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
    sse.set_read_timeout(Some(WAIT)).unwrap();
    sse.write_all(b"GET /sse HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    publish(herald.port, "real", "0");
    assert_eq!(next_event(&mut client)["message"], "0");

    let forged = r#"{"id":"9999999999999-0","type":"forged","message":"far future"}"#;
    redis_publish(&redis, "events", forged);
    let got = next_event(&mut client);
    assert_eq!(got["type"], "forged", "relayed as the README promises");
    publish(herald.port, "real", "1");
    assert_eq!(
        next_event(&mut client)["message"],
        "1",
        "a later event is not hidden"
    );
    assert!(limit_hits(herald.port, "redis_message_id") >= 1.0);

    // Not events: dropped, counted, one log line.
    for bad in [
        "hello",
        "[1,2]",
        r#"{"type":"x"}"#,
        r#"{"op":"reset","channel":"events","type":"x","message":"y"}"#,
        r#"{"type":"x","message":"y","op":"subscribed"}"#,
    ] {
        redis_publish(&redis, "events", bad);
    }
    publish(herald.port, "real", "2");
    assert_eq!(
        next_event(&mut client)["message"],
        "2",
        "nothing else came first"
    );
    assert_eq!(limit_hits(herald.port, "redis_message_shape"), 5.0);
    let log = herald.log();
    assert_eq!(log.matches("dropping a").count(), 1, "{log}");

    // The subscription drops; another replica publishes meanwhile. The catch-up resumes from
    // the last real id, not the forged one: all three arrive.
    assert_eq!(redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]), ":1");
    for i in 3..6 {
        publish(other_replica.port, "real", &i.to_string());
    }
    for i in 3..6 {
        assert_eq!(next_event(&mut client)["message"], i.to_string());
    }

    // The SSE stream got the forged message without an id: a browser does not resume from it.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while !String::from_utf8_lossy(&seen).contains("\"message\":\"5\"") {
        assert!(Instant::now() < deadline, "SSE stream stalled");
        let n = sse.read(&mut buf).unwrap();
        assert!(n > 0, "SSE stream closed");
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(!text.contains("id: 9999999999999-0"), "{text}");
    assert!(
        text.contains("event: forged\ndata: {\"id\":\"9999999999999-0\""),
        "{text}"
    );
    let mut herald = herald;
    assert!(!herald.has_exited());
}

/// A payload larger than any subscriber may have queued would close every subscriber as a
/// slow consumer: it is dropped and counted instead, and everyone keeps receiving.
#[test]
fn a_foreign_message_too_large_for_subscribers_is_dropped() {
    let redis = Redis::start();
    let herald = herald_on(
        &redis.url(),
        &[("MAX_QUEUED_BYTES", "65536"), ("MAX_BODY_BYTES", "16384")],
    );
    wait_redis_connected(&herald);
    let mut clients: Vec<Client> = (0..3).map(|_| ws_connect(herald.port, "/ws")).collect();
    let big = serde_json::json!({"type": "big", "message": "b".repeat(100_000)}).to_string();
    redis_publish(&redis, "events", &big);
    publish(herald.port, "after", "big");
    for client in &mut clients {
        assert_eq!(next_event(client)["type"], "after");
    }
    assert_eq!(limit_hits(herald.port, "redis_message_bytes"), 1.0);
    assert_eq!(
        metric(herald.port, "herald_slow_consumers_closed_total"),
        Some(0.0)
    );
    assert!(
        herald
            .log()
            .contains("larger than a subscriber may have queued")
    );
}

/// Streams expire once their channel goes quiet (REDIS_HISTORY_TTL_SECS, default a day);
/// 0 keeps them.
#[test]
fn history_streams_expire_in_redis() {
    let redis = Redis::start();
    let herald = herald_on(&redis.url(), &[]);
    wait_redis_connected(&herald);
    publish_id(herald.port, "orders", "a", "b");
    let ttl: i64 = redis.command(&["TTL", "events:orders:history"])[1..]
        .parse()
        .unwrap();
    assert!((86_300..=86_400).contains(&ttl), "{ttl}");

    let kept = herald_on(&redis.url(), &[("REDIS_HISTORY_TTL_SECS", "0")]);
    wait_redis_connected(&kept);
    publish_id(kept.port, "kept", "a", "b");
    assert_eq!(redis.command(&["TTL", "events:kept:history"]), ":-1");
}
