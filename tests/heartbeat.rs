//! Heartbeats: a silent WebSocket is pinged; a client that answers stays connected, one that
//! never answers is closed, logged and counted. Frames are raw bytes, so nothing answers pings
//! behind the test's back.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const PING: u8 = 0x89;
const PONG: u8 = 0x8A;
const TEXT: u8 = 0x81;

fn herald() -> Herald {
    Herald::with(
        &["--ping-interval-secs", "1", "--pong-timeout-secs", "1"],
        &[],
    )
}

/// Reads frames for `window`, answering every ping with a masked pong carrying its payload;
/// returns the pings seen and the text frames received.
fn answer_pings_for(ws: &mut TcpStream, window: Duration) -> (usize, Vec<Vec<u8>>) {
    let start = Instant::now();
    let (mut pings, mut texts) = (0, Vec::new());
    while start.elapsed() < window {
        ws.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match read_ws_frame(ws) {
            Ok((PING, payload)) => {
                pings += 1;
                ws.write_all(&masked_frame(PONG, &payload)).unwrap();
            }
            Ok((TEXT, payload)) => texts.push(payload),
            Ok((op, payload)) => panic!("unexpected frame {op:#x} {payload:?}"),
            // A frame cut by the read timeout would desynchronise us; the server writes each
            // frame in one go on loopback, so a timeout here means "nothing sent".
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!(
                "connection lost after {:?} and {pings} pings: {e}",
                start.elapsed()
            ),
        }
    }
    (pings, texts)
}

#[test]
fn a_client_that_answers_pings_stays_connected() {
    let herald = herald();
    let mut ws = ws_upgrade_raw(herald.port);

    // Five ping intervals, each answered.
    let (pings, texts) = answer_pings_for(&mut ws, Duration::from_secs(5));
    assert!(pings >= 2, "only {pings} pings in 5 s at a 1 s interval");
    assert!(texts.is_empty());

    // Still subscribed: an event published now arrives.
    publish(herald.port, "alive", "after pongs");
    let (_, texts) = answer_pings_for(&mut ws, Duration::from_secs(2));
    let events: Vec<serde_json::Value> = texts
        .iter()
        .map(|t| serde_json::from_slice(t).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "alive");

    assert!(!herald.log().contains("no pong"));
    assert_eq!(
        metric(
            herald.port,
            "herald_connections_closed_total{reason=\"ping_timeout\"}"
        ),
        None
    );
    assert_eq!(get(herald.port, "/health").json()["websockets"], 1);
}

#[test]
fn a_client_that_never_answers_is_closed() {
    let herald = herald();
    let mut ws = ws_upgrade_raw(herald.port);
    let start = Instant::now();
    let mut pings = 0;
    // Read (never write) until the server ends the connection; bounded by the read timeout.
    ws.set_read_timeout(Some(WAIT)).unwrap();
    let end = loop {
        match read_ws_frame(&mut ws) {
            Ok((PING, _)) => pings += 1,
            Ok((op, payload)) => panic!("unexpected frame {op:#x} {payload:?}"),
            Err(e) => break e,
        }
    };
    let elapsed = start.elapsed();
    eprintln!("closed after {elapsed:?} and {pings} pings: {end}");
    assert_eq!(
        end.kind(),
        ErrorKind::UnexpectedEof,
        "a clean close (EOF), not {end:?}"
    );
    assert!(pings >= 1, "pinged before being closed");
    // 1 s of silence, 1 s for the pong, each seen by a once-a-second sweep: about 2-4 s.
    assert!(
        elapsed < Duration::from_secs(8),
        "closed only after {elapsed:?}"
    );
    let mut rest = Vec::new();
    assert_eq!(ws.read_to_end(&mut rest).unwrap(), 0);

    wait_until("the close to be logged", || {
        herald.log().contains("no pong within the timeout; closing")
    });
    assert_eq!(
        metric(
            herald.port,
            "herald_connections_closed_total{reason=\"ping_timeout\"}"
        ),
        Some(1.0)
    );
    assert_eq!(get(herald.port, "/health").json()["websockets"], 0);
}
