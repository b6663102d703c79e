//! Every HTTP error has its status and a JSON body; keep-alive and pipelining answer in order.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use support::*;

fn assert_error(reply: &HttpReply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert!(reply.json()["error"].is_string(), "{reply:?}");
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
}

#[test]
fn each_bad_request_gets_its_status() {
    let herald = Herald::with(&["--max-body-bytes", "1024"], &[]);
    let p = herald.port;
    assert_error(&get(p, "/nope"), 404);
    assert_error(&post(p, "/events?message=no+type", None, ""), 422);
    let wrong_method = get(p, "/events");
    assert_error(&wrong_method, 405);
    assert_eq!(wrong_method.header("allow").as_deref(), Some("POST"));
    assert_error(&post(p, "/health", None, ""), 405);
    let huge_head = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    assert_error(&raw(p, huge_head.as_bytes()), 431);
    let big_body = format!(
        "POST /events HTTP/1.1\r\nContent-Length: 2000\r\n\r\n{}",
        "a".repeat(2000)
    );
    assert_error(&raw(p, big_body.as_bytes()), 413);
    assert_error(&raw(p, b"GARBAGE\r\n\r\n"), 400);
    assert_error(&raw(p, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), 400);
    assert_error(&post(p, "/events?event_type=%FF", None, ""), 400);
    assert_error(
        &post(p, "/events", Some("application/json"), "{not json"),
        400,
    );
    assert_error(&post(p, "/events", Some("text/plain"), "hi"), 415);
    assert_error(&get(p, "/ws"), 426);
    let bad_version = raw(
        p,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    );
    assert_error(&bad_version, 426);
    assert_eq!(
        bad_version.header("sec-websocket-version").as_deref(),
        Some("13")
    );
    let no_key = raw(
        p,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_error(&no_key, 400);
    assert_error(&get(p, "/static/..%2fCargo.toml"), 400);
    assert_error(&get(p, "/static/%2e%2e/Cargo.toml"), 400);
    // The server is still fine after all that.
    assert_eq!(get(p, "/health").status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let herald = Herald::start();
    let mut stream = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut batch = String::new();
    for i in 0..10 {
        batch.push_str(&format!(
            "POST /events?event_type=p&message={i} HTTP/1.1\r\nHost: t\r\n\r\n"
        ));
        batch.push_str("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    batch.push_str("GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    // Dribble it in odd-sized pieces so requests straddle reads.
    for piece in batch.as_bytes().chunks(37) {
        stream.write_all(piece).unwrap();
        stream.flush().unwrap();
    }
    let mut reader = BufReader::new(stream);
    for _ in 0..10 {
        assert_eq!(read_reply(&mut reader).unwrap().status, 200);
        assert_eq!(read_reply(&mut reader).unwrap().status, 404);
    }
    let last = read_reply(&mut reader).unwrap();
    assert_eq!(last.json()["status"], "ok");
    assert_eq!(last.header("connection").as_deref(), Some("close"));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "server closed after Connection: close");
}

#[test]
fn a_slow_head_gets_408_and_is_closed() {
    let herald = Herald::with(&["--head-timeout-secs", "1"], &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
    let reply = read_reply(&mut BufReader::new(stream)).expect("a 408 before the close");
    assert_eq!(reply.status, 408);
    assert!(herald.log().contains("not completed in time"));
}

#[test]
fn head_requests_get_headers_only() {
    let herald = Herald::start();
    let mut stream = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(
            b"HEAD /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    // The HEAD reply announces a length but carries no body: the next reply follows at once.
    let second = all
        .find("HTTP/1.1 200")
        .and_then(|first| all[first + 1..].find("HTTP/1.1 200"));
    let (head_reply, _) = all.split_at(second.unwrap() + 1);
    assert!(
        head_reply.trim_end().ends_with("Cache-Control: no-store"),
        "{head_reply}"
    );
}
