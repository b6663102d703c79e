//! HTTP pipelining under back-pressure: a client that sends many requests at once and reads
//! its replies slowly. Parsing stops while its replies are over MAX_QUEUED_BYTES and resumes
//! as soon as they drain, with the requests already buffered: every reply arrives, in order,
//! without the client sending another byte, and the server's memory stays bounded.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Reads slowly: a few KB at a time with pauses, so the server's queue keeps hitting its cap.
struct SlowReader {
    stream: TcpStream,
    started: Instant,
}

impl Read for SlowReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(self.started.elapsed() < 4 * WAIT, "replies stalled");
        std::thread::sleep(Duration::from_micros(500));
        let n = buf.len().min(1024);
        self.stream.read(&mut buf[..n])
    }
}

/// A connection whose receive buffer is small, so the server's socket cannot absorb the
/// replies and they stay in the server's queue (set before connecting: the window scale is
/// fixed by the handshake).
fn small_window_connect(port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

#[test]
fn pipelined_requests_past_the_cap_are_all_answered_in_order_without_more_input() {
    const REQUESTS: usize = 2000;
    // MAX_QUEUED_BYTES: 16 KiB; each reply is ~250 bytes, so 2,000 of them (~500 KB) pass
    // the cap again and again.
    const MAX_QUEUED: usize = 16 * 1024;
    let herald = Herald::with(
        &[
            "--max-queued-bytes",
            &MAX_QUEUED.to_string(),
            "--log-level",
            "info",
        ],
        &[],
    );
    let mut subscriber = ws_connect(herald.port, "/ws");
    let rss_before = herald.rss_bytes();

    let stream = small_window_connect(herald.port);
    // Each request names its own channel, and its reply names it back: order is checkable.
    let batch: String = (0..REQUESTS)
        .map(|i| format!("GET /events/p{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    let mut writer = stream.try_clone().unwrap();
    // One write of all of them (from a thread: the kernel may hold it until the server reads),
    // and nothing else afterwards.
    let sender = std::thread::spawn(move || writer.write_all(batch.as_bytes()).unwrap());
    let mut reader = BufReader::new(SlowReader {
        stream,
        started: Instant::now(),
    });
    let mut rss_during = 0;
    for i in 0..REQUESTS {
        let reply = read_reply(&mut reader).unwrap_or_else(|| panic!("reply {i} missing"));
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(
            reply.json()["channel"],
            format!("p{i}"),
            "reply {i} out of order"
        );
        if i % 500 == 250 {
            rss_during = rss_during.max(herald.rss_bytes());
            // A well-behaved subscriber keeps getting events meanwhile.
            publish(herald.port, "during", &i.to_string());
            assert_eq!(next_event(&mut subscriber)["message"], i.to_string());
        }
    }
    sender.join().unwrap();
    let rss_after = herald.rss_bytes();
    eprintln!(
        "pipelining {REQUESTS} requests, MAX_QUEUED_BYTES {MAX_QUEUED}: RSS before {} KB, during {} KB (max), after {} KB",
        rss_before / 1024,
        rss_during / 1024,
        rss_after / 1024
    );
    // What the connection may hold: its queue up to the cap plus one reply (parsing stops
    // only once the cap is passed), and its unparsed input (at most one 64 KiB read beyond a
    // request). 4 MB of slack for the allocator; without the bound, nothing here is large
    // either: the point is the stall, checked above by every reply arriving.
    let bound = (MAX_QUEUED + 1024 + 64 * 1024 + 4 * 1024 * 1024) as u64;
    assert!(
        rss_during.saturating_sub(rss_before) < bound,
        "RSS grew from {rss_before} to {rss_during}"
    );
    assert_eq!(get(herald.port, "/health").status, 200);
}
