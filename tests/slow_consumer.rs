//! A client that stops reading must not grow the server's memory past its backlog cap nor
//! delay anyone else: it is closed with 1008 and the others get everything.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};

use socket2::{Domain, Socket, Type};
use support::*;

/// A raw WebSocket whose receive buffer is tiny and which never reads.
fn stalled_client(port: u16) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    use std::io::Write;
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    stream
}

#[test]
fn a_stalled_client_is_cut_off_and_the_others_get_everything() {
    const EVENTS: usize = 10_000;
    let herald = Herald::with(
        &["--max-queued-bytes", "1048576", "--log-level", "info"],
        &[],
    );
    let mut readers: Vec<Client> = (0..2).map(|_| ws_connect(herald.port, "/ws")).collect();
    let stalled = stalled_client(herald.port);
    wait_until("three websockets", || {
        get(herald.port, "/health").json()["websockets"] == 3
    });
    let rss_before = herald.rss_bytes();

    let payload = "x".repeat(1000);
    // Readers drain on their own threads while the publisher runs.
    let handles: Vec<_> = readers
        .drain(..)
        .map(|mut ws| {
            std::thread::spawn(move || {
                for i in 0..EVENTS {
                    let event = next_event(&mut ws);
                    assert_eq!(event["message"].as_str().unwrap()[..8], format!("{i:08}"));
                }
            })
        })
        .collect();
    // The stalled client starts reading once it has been cut off, while the others are still
    // being served: a closing connection lingers only CLOSE_TIMEOUT_SECS for its peer to take
    // the last bytes, and on a loaded machine the 10,000 events take longer than that.
    let port = herald.port;
    let mut stalled_reader = stalled.try_clone().unwrap();
    let stalled_reads = std::thread::spawn(move || {
        wait_until("the stalled client to be cut off", || {
            get(port, "/metrics")
                .body
                .contains("herald_slow_consumers_closed_total 1\n")
        });
        stalled_reader.set_read_timeout(Some(WAIT)).unwrap();
        let mut received = Vec::new();
        let _ = stalled_reader.read_to_end(&mut received);
        received
    });
    publish_many(herald.port, EVENTS, 100, |i| {
        format!("{i:08}{}", &payload[8..])
    });
    for handle in handles {
        handle
            .join()
            .expect("a reading client missed or reordered events");
    }
    let rss_after = herald.rss_bytes();

    // About 10 MB went out to each reader; the stalled one may hold at most its cap.
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!("RSS before {rss_before} after {rss_after} growth {growth}");
    assert!(growth < 8 * 1024 * 1024, "RSS grew by {growth} bytes");
    assert!(
        herald
            .log()
            .contains("slow consumer closed (1008 for WebSockets)")
    );
    let metrics = get(herald.port, "/metrics").body;
    assert!(
        metrics.contains("herald_slow_consumers_closed_total 1\n"),
        "{metrics}"
    );

    // The stalled client, reading at last, finds its backlog cut short by a 1008 close.
    let received = stalled_reads.join().expect("reading the stalled client");
    drop(stalled);
    // The last frame is the close: 0x88, its length, then the code 1008 (0x03f0).
    let tail = &received[received.len().saturating_sub(64)..];
    let close_at = tail
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2..] == [0x03, 0xf0]);
    assert!(
        close_at.is_some(),
        "no 1008 close frame at the end of {} bytes",
        received.len()
    );
}

#[test]
fn a_stalled_sse_stream_is_cut_off_too() {
    let herald = Herald::with(&["--max-queued-bytes", "262144"], &[]);
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], herald.port).into();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    use std::io::Write;
    stream
        .write_all(b"GET /sse HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = ws_connect(herald.port, "/ws");
    let payload = "y".repeat(1000);
    publish_many(herald.port, 3000, 100, |i| {
        format!("{i:08}{}", &payload[8..])
    });
    for i in 0..3000 {
        let event = next_event(&mut reader);
        assert_eq!(event["message"].as_str().unwrap()[..8], format!("{i:08}"));
    }
    wait_until("the stalled stream to be closed", || {
        get(herald.port, "/metrics")
            .body
            .contains("herald_slow_consumers_closed_total 1\n")
    });
    // Reading at last, the client finds its stream ended (EOF), not an endless backlog.
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut received = Vec::new();
    let _ = stream.read_to_end(&mut received);
    assert!(received.starts_with(b"HTTP/1.1 200 OK"));
}
