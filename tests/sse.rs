//! Server-Sent Events over raw HTTP: the stream head, records with id/event/data, resuming with
//! Last-Event-ID, heartbeats.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use support::*;

/// Opens `GET /sse...` with extra header lines; returns the reader after checking the head.
fn open(port: u16, path: &str, headers: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n{headers}\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/event-stream\r\n"),
        "{head}"
    );
    reader
}

/// The next record (lines up to a blank line), comments included.
fn next_record(reader: &mut BufReader<TcpStream>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        let line = line.trim_end_matches('\n').to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            return lines;
        }
        lines.push(line);
    }
}

fn next_event_record(reader: &mut BufReader<TcpStream>) -> Vec<String> {
    loop {
        let record = next_record(reader);
        if !record[0].starts_with(':') && !record[0].starts_with("retry:") {
            return record;
        }
    }
}

#[test]
fn streams_events_as_records() {
    let herald = Herald::start();
    let mut sse = open(herald.port, "/sse?channels=orders", "");
    let mut ws = ws_connect(herald.port, "/ws?channels=orders");
    wait_until("the stream counted", || {
        get(herald.port, "/health").json()["sse"] == 1
    });
    assert_eq!(
        metric(herald.port, "herald_connections{kind=\"sse\"}"),
        Some(1.0)
    );
    let id = publish_id(herald.port, "orders", "order", "first");
    let record = next_event_record(&mut sse);
    assert_eq!(record[0], format!("id: {id}"));
    assert_eq!(record[1], "event: order");
    let data: serde_json::Value =
        serde_json::from_str(record[2].strip_prefix("data: ").unwrap()).unwrap();
    // The same event the WebSocket client got.
    assert_eq!(data, next_event(&mut ws));
    assert_eq!(data["message"], "first");
    publish_id(herald.port, "deploys", "deploy", "elsewhere");
    publish_id(herald.port, "orders", "order", "second");
    // The deploys event never shows on an orders stream: the next record is "second".
    let record = next_event_record(&mut sse);
    assert!(record[2].contains("\"message\":\"second\""), "{record:?}");
}

#[test]
fn last_event_id_replays_what_was_missed() {
    let herald = Herald::start();
    let first = publish_id(herald.port, "orders", "o", "1");
    publish_id(herald.port, "orders", "o", "2");
    publish_id(herald.port, "orders", "o", "3");
    let mut sse = open(
        herald.port,
        "/sse?channels=orders",
        &format!("Last-Event-ID: {first}\r\n"),
    );
    for expected in ["2", "3"] {
        let record = next_event_record(&mut sse);
        assert!(
            record[2].contains(&format!("\"message\":\"{expected}\"")),
            "{record:?}"
        );
    }
    publish_id(herald.port, "orders", "o", "4");
    assert!(next_event_record(&mut sse)[2].contains("\"message\":\"4\""));
    // Without the header: live events only.
    let mut fresh = open(herald.port, "/sse?channels=orders", "");
    publish_id(herald.port, "orders", "o", "5");
    assert!(next_event_record(&mut fresh)[2].contains("\"message\":\"5\""));
}

#[test]
fn idle_streams_get_heartbeats() {
    let herald = Herald::with(&["--ping-interval-secs", "1"], &[]);
    let mut sse = open(herald.port, "/sse", "");
    let mut saw_ping = false;
    for _ in 0..3 {
        if next_record(&mut sse) == vec![": ping".to_string()] {
            saw_ping = true;
            break;
        }
    }
    assert!(saw_ping, "no heartbeat comment");
}
