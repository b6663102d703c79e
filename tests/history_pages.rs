//! `GET /events/<channel>` in pages bounded by bytes as well as by `limit`: a 1,000-event page
//! of 60 KB events would be 60 MB. The pages chain through `next` without gap or duplicate,
//! in embedded and Redis mode, and clients that ask for large pages and never read cost the
//! server at most a page and their queue cap each.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const KIB: usize = 1024;
const MIB: u64 = 1024 * 1024;

/// The message of the `i`th large event: its number first, then padding.
fn large_message(i: usize, bytes: usize) -> String {
    format!("{i:04}{}", "x".repeat(bytes - 4))
}

/// Publishes a marker, then `count` large events to the default channel; returns the
/// marker's id (where paging starts).
fn publish_large_events(port: u16, count: usize, bytes: usize) -> String {
    let marker = publish(port, "marker", "before the large ones")["id"]
        .as_str()
        .unwrap()
        .to_string();
    publish_many(port, count, 8, |i| large_message(i, bytes));
    marker
}

/// Follows the pages from `since` until `more` is false; checks each against the page cap
/// and returns the messages in the order received.
fn read_all_pages(port: u16, since: &str, page_bytes: usize) -> Vec<String> {
    let mut since = since.to_string();
    let mut messages = Vec::new();
    for _ in 0..1000 {
        let reply = get(port, &format!("/events/events?since={since}&limit=1000"));
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply.body.len() <= page_bytes,
            "a page of {} bytes, over the {page_bytes}-byte cap",
            reply.body.len()
        );
        let page = reply.json();
        let events = page["events"].as_array().unwrap();
        messages.extend(
            events
                .iter()
                .map(|e| e["message"].as_str().unwrap().to_string()),
        );
        if page["more"] != true {
            assert_eq!(reply.header("link"), None);
            return messages;
        }
        let next = page["next"].as_str().expect("a next id when more follow");
        assert_eq!(next, events.last().unwrap()["id"].as_str().unwrap());
        let link = reply
            .header("link")
            .expect("a Link header when more follow");
        assert_eq!(
            link,
            format!("</events/events?since={next}&limit=1000>; rel=\"next\"")
        );
        since = next.to_string();
    }
    panic!("more than 1000 pages");
}

/// `HEAD path` then `GET path` on one keep-alive connection, in one write: the HEAD reply's
/// head, and the GET reply read after it (garbled if the HEAD reply carried a body).
fn head_then_get(port: u16, path: &str) -> (String, HttpReply) {
    use std::io::BufRead;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let both =
        format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\nGET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    stream.write_all(both.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut head).unwrap() > 0, "EOF in {head:?}");
    }
    let get_reply = read_reply(&mut reader).expect("the GET reply after the HEAD one");
    (head, get_reply)
}

/// The story in either broker mode: 120 events of 20 KB, pages of 64 KiB.
fn pages_chain_without_gap_or_duplicate(port: u16, page_bytes: usize) {
    const EVENTS: usize = 120;
    const EVENT_BYTES: usize = 20_000;
    let marker = publish_large_events(port, EVENTS, EVENT_BYTES);
    // Without `since`: the latest events that fit, newest last, and `more` (older ones left).
    let latest = get(port, "/events/events?limit=1000");
    assert!(latest.body.len() <= page_bytes, "{}", latest.body.len());
    let page = latest.json();
    assert_eq!(page["more"], true);
    let events = page["events"].as_array().unwrap();
    assert!(!events.is_empty() && events.len() < EVENTS);
    let newest = events.last().unwrap()["message"].as_str().unwrap();
    assert!(newest.starts_with(&format!("{:04}", EVENTS - 1)));
    // HEAD: the same page's headers, no body; the next reply on the connection is intact.
    let path = format!("/events/events?since={marker}&limit=1000");
    let (head, get_reply) = head_then_get(port, &path);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Link: </events/events?since="), "{head}");
    assert_eq!(get_reply.status, 200);
    let length = format!("Content-Length: {}\r\n", get_reply.body.len());
    assert!(head.contains(&length), "{head} announces the GET's length");
    // From the marker on: every event exactly once, in order.
    let messages = read_all_pages(port, &marker, page_bytes);
    let expected: Vec<String> = (0..EVENTS).map(|i| large_message(i, EVENT_BYTES)).collect();
    assert_eq!(messages.len(), expected.len());
    assert!(messages == expected, "pages left a gap or a duplicate");
}

#[test]
fn history_pages_are_cut_by_bytes_and_chain_in_embedded_mode() {
    let page_bytes = 64 * KIB;
    let herald = Herald::with(&["--history-page-bytes", &page_bytes.to_string()], &[]);
    pages_chain_without_gap_or_duplicate(herald.port, page_bytes);
}

#[test]
fn history_pages_are_cut_by_bytes_and_chain_in_redis_mode() {
    let redis = Redis::start();
    let page_bytes = 64 * KIB;
    let herald = Herald::with(
        &["--history-page-bytes", &page_bytes.to_string()],
        &[("PUBSUB_CACHE_URL", &redis.url())],
    );
    wait_redis_connected(&herald);
    pages_chain_without_gap_or_duplicate(herald.port, page_bytes);
}

/// A connection whose receive buffer is small, so the server's socket cannot take the
/// replies off its hands (set before connecting: the window scale is fixed by the handshake).
fn small_window_connect(port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect(&to.into()).unwrap();
    socket.into()
}

#[test]
fn clients_that_ask_for_large_pages_and_never_read_cost_a_bounded_amount() {
    const HISTORY_PAGE_BYTES: usize = 128 * KIB;
    const MAX_QUEUED_BYTES: usize = 512 * KIB;
    const EVENTS: usize = 100;
    const EVENT_BYTES: usize = 60_000;
    const CLIENTS: usize = 20;
    const REQUESTS_EACH: usize = 40;
    let mut herald = Herald::with(
        &[
            "--history-page-bytes",
            &HISTORY_PAGE_BYTES.to_string(),
            "--max-queued-bytes",
            &MAX_QUEUED_BYTES.to_string(),
            "--log-level",
            "info",
        ],
        &[],
    );
    let p = herald.port;
    // 6 MB of history: one reply of all of it would be 6 MB per request.
    publish_large_events(p, EVENTS, EVENT_BYTES);
    let mut subscriber = ws_connect(p, "/ws?channels=watch");
    let ok = "herald_http_responses_total{status=\"200\"}";
    let answered_before = metric(p, ok).unwrap();
    let rss_before = herald.rss_bytes();

    // Each client pipelines ten requests for 1,000 events and never reads a byte.
    let request = "GET /events/events?limit=1000 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(REQUESTS_EACH);
    let mut clients: Vec<TcpStream> = (0..CLIENTS).map(|_| small_window_connect(p)).collect();
    for client in &mut clients {
        client.write_all(request.as_bytes()).unwrap();
    }
    // Wait until the server has answered what it will (each client at least once) and
    // stopped: the count holds still for a second. Each look at /metrics is a 200 itself,
    // counted after the page is rendered: `polls` of them are taken off.
    let started = Instant::now();
    let mut polls = 0.0;
    let mut last = (0.0, Instant::now());
    let pages = loop {
        assert!(
            started.elapsed() < 3 * WAIT,
            "replies never settled: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        polls += 1.0;
        let pages = metric(p, ok).unwrap() - answered_before - polls;
        if pages != last.0 {
            last = (pages, Instant::now());
        } else if pages >= CLIENTS as f64 && last.1.elapsed() > Duration::from_secs(1) {
            break pages;
        }
    };
    let rss_during = herald.rss_bytes();
    // Each stalled client holds at most its queue up to the cap plus the one page that
    // passed it (parsing stops there), and its unparsed requests (under 1 KB here):
    // CLIENTS x (MAX_QUEUED_BYTES + HISTORY_PAGE_BYTES), plus 8 MiB for the allocator and
    // the rest. Without paging by bytes, one reply is the whole 6 MB history: 120 MB.
    let bound = (CLIENTS * (MAX_QUEUED_BYTES + HISTORY_PAGE_BYTES)) as u64 + 8 * MIB;
    assert!(
        rss_during.saturating_sub(rss_before) <= bound,
        "RSS grew by {} KB, bound {} KB",
        (rss_during - rss_before) / 1024,
        bound / 1024
    );
    // Parsing stopped at the cap: not every request was answered.
    assert!(
        pages < (CLIENTS * REQUESTS_EACH) as f64,
        "{pages} pages answered"
    );
    // Meanwhile a well-behaved subscriber gets every event, and a well-behaved reader its page.
    for i in 0..10 {
        publish_to(p, "watch", "during", &i.to_string());
        assert_eq!(next_event(&mut subscriber)["message"], i.to_string());
    }
    let page = get(p, "/events/events?limit=1000");
    assert_eq!(page.status, 200);
    assert!(page.body.len() <= HISTORY_PAGE_BYTES);

    drop(clients);
    wait_until("the stalled clients to be gone", || {
        get(p, "/health").json()["connections"] == 2
    });
    let rss_after = herald.rss_bytes();
    eprintln!(
        "{CLIENTS} clients x {REQUESTS_EACH} pipelined GET /events?limit=1000 never read \
         ({EVENTS} events of {EVENT_BYTES} B, HISTORY_PAGE_BYTES {HISTORY_PAGE_BYTES}, \
         MAX_QUEUED_BYTES {MAX_QUEUED_BYTES}): RSS before {} KB, during {} KB, after {} KB; \
         {pages} pages answered; subscriber got 10/10",
        rss_before / 1024,
        rss_during / 1024,
        rss_after / 1024
    );
    assert!(!herald.has_exited());
}
