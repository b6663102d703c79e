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

/// Reads a reply's head only (up to the blank line): what a HEAD request gets.
fn read_head_only(reader: &mut impl std::io::BufRead) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "EOF in a head: {head:?}"
        );
        if line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().unwrap())
    })
}

#[test]
fn head_on_every_get_route_sends_headers_only_on_a_keep_alive_connection() {
    let herald = Herald::with(&["--echo-path", "/echo"], &[]);
    for i in 0..3 {
        publish_to(herald.port, "orders", "order", &format!("n{i}"));
    }
    let connect = || {
        let stream = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        (stream.try_clone().unwrap(), BufReader::new(stream))
    };
    let (mut writer, mut reader) = connect();
    // (path, status of GET and HEAD, whether the GET body is the same twice in a row)
    let routes = [
        ("/", 200, true),
        ("/static/app.js", 200, true),
        ("/health", 200, false),
        ("/metrics", 200, false),
        ("/events/orders", 200, true),
        ("/events/orders?since=1-0", 410, true),
    ];
    for (path, status, stable) in routes {
        // Both requests in one write: a HEAD reply that carried a body would be read as the
        // start of the GET reply.
        let both = format!(
            "HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\nGET {path} HTTP/1.1\r\nHost: t\r\n\r\n"
        );
        writer.write_all(both.as_bytes()).unwrap();
        let head = read_head_only(&mut reader);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "HEAD {path}: {head}"
        );
        let get = read_reply(&mut reader)
            .unwrap_or_else(|| panic!("no GET {path} reply after the HEAD one"));
        assert_eq!(get.status, status, "GET {path} after HEAD: {get:?}");
        if stable {
            assert_eq!(content_length(&head), Some(get.body.len()), "{path}");
        }
    }
    // SSE: the stream's head, no Content-Length (a stream has none), no stream.
    writer
        .write_all(b"HEAD /sse?channels=orders HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let head = read_head_only(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/event-stream"), "{head}");
    assert_eq!(content_length(&head), None, "{head}");
    assert_eq!(read_reply(&mut reader).unwrap().json()["sse"], 0);
    // The WebSocket routes refuse a request that is no upgrade (426) and close: the head,
    // then nothing.
    for path in ["/ws", "/echo"] {
        let (mut writer, mut reader) = connect();
        let head = format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        writer.write_all(head.as_bytes()).unwrap();
        let head = read_head_only(&mut reader);
        assert!(
            head.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{head}"
        );
        assert!(content_length(&head).is_some_and(|n| n > 0), "{head}");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "HEAD {path} sent a body: {rest:?}");
    }
}

#[test]
fn status_lines_carry_the_standard_reason_phrase() {
    let herald = Herald::start();
    let p = herald.port;
    let gone = get(p, "/events/orders?since=1-0");
    assert!(
        gone.head.starts_with("HTTP/1.1 410 Gone\r\n"),
        "{}",
        gone.head
    );
    let expectation = raw(
        p,
        b"POST /events HTTP/1.1\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx",
    );
    assert!(
        expectation
            .head
            .starts_with("HTTP/1.1 417 Expectation Failed\r\n"),
        "{}",
        expectation.head
    );
    let large = raw(
        p,
        b"POST /events HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    );
    assert!(
        large.head.starts_with("HTTP/1.1 413 Content Too Large\r\n"),
        "{}",
        large.head
    );
}

/// Sends a publish head with `Expect: 100-continue` and returns the connection.
fn expect_continue(port: u16, extra_headers: &str, body_len: usize) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // curl waits one second for the 100 before sending anyway: wait no longer than that.
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .unwrap();
    let head = format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
Expect: 100-continue\r\n{extra_headers}Content-Length: {body_len}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    BufReader::new(stream)
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let herald = Herald::with(&[], &[("PUBLISH_TOKEN", "s3cret")]);
    let body = serde_json::json!({"type": "big", "message": "x".repeat(20_000)}).to_string();
    let auth = "Authorization: Bearer s3cret\r\n";
    let mut conn = expect_continue(herald.port, auth, body.len());
    let interim = read_head_only(&mut conn);
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n");
    conn.get_mut().write_all(body.as_bytes()).unwrap();
    let reply = read_reply(&mut conn).expect("the final reply");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["type"], "big");

    // Twice on one connection: each request gets its own 100.
    let again = format!(
        "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
Expect: 100-continue\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    conn.get_mut().write_all(again.as_bytes()).unwrap();
    assert_eq!(read_head_only(&mut conn), "HTTP/1.1 100 Continue\r\n");
    conn.get_mut().write_all(body.as_bytes()).unwrap();
    assert_eq!(read_reply(&mut conn).unwrap().status, 200);
}

#[test]
fn a_body_that_would_be_refused_anyway_gets_no_100() {
    let herald = Herald::with(
        &["--max-body-bytes", "1024"],
        &[("PUBLISH_TOKEN", "s3cret")],
    );
    // No token: 401 at once, and the connection closes (the body may still come).
    let mut conn = expect_continue(herald.port, "", 500);
    let reply = read_reply(&mut conn).expect("a 401 without waiting for the body");
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.header("connection").as_deref(), Some("close"));
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "nothing after the 401, no 100: {rest:?}");
    // Over MAX_BODY_BYTES by its Content-Length: 413 at once.
    let mut conn = expect_continue(herald.port, "Authorization: Bearer s3cret\r\n", 5000);
    let reply = read_reply(&mut conn).expect("a 413 without waiting for the body");
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(
        metric(herald.port, "herald_http_responses_total{status=\"100\"}"),
        None
    );
}

#[test]
fn an_upgrade_request_with_a_body_is_refused() {
    let herald = Herald::start();
    let upgrade = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    // The "body" is a masked, empty text frame: it must not be read as one.
    let framings: [&[u8]; 3] = [
        b"Content-Length: 6\r\n\r\n\x81\x80abcd",
        b"Transfer-Encoding: chunked\r\n\r\n6\r\n\x81\x80abcd\r\n0\r\n\r\n",
        // Announced but never sent: refused on the head, not waited for.
        b"Content-Length: 100000\r\n\r\n",
    ];
    for framing in framings {
        let request = [upgrade.as_bytes(), framing].concat();
        let reply = raw(herald.port, &request);
        assert_error(&reply, 400);
        assert!(reply.body.contains("carries no body"), "{reply:?}");
        assert_eq!(reply.header("connection").as_deref(), Some("close"));
    }
    assert_eq!(get(herald.port, "/health").json()["websockets"], 0);
}

#[test]
fn an_event_no_subscriber_could_receive_is_refused_with_413() {
    // Subscribers may have 60,000 bytes queued; MAX_BODY_BYTES (64 KiB by default) is lowered
    // to fit, with a warning at start.
    let herald = Herald::with(&["--max-queued-bytes", "60000"], &[]);
    assert!(
        herald
            .log()
            .contains("MAX_BODY_BYTES lowered from 65536 to 59744")
    );
    let mut subscriber = ws_connect(herald.port, "/ws");
    // 19,000 control characters: 57,000 bytes of form body, 114,000 of JSON (`\u0001` each).
    let body = format!("event_type=big&message={}", "%01".repeat(19_000));
    let reply = post(herald.port, "/events", None, &body);
    assert_error(&reply, 413);
    assert!(reply.body.contains("MAX_QUEUED_BYTES"), "{reply:?}");
    // Just under the cap is fine, and the subscriber is still there for it.
    let fits = format!("event_type=fits&message={}", "y".repeat(59_000));
    assert_eq!(post(herald.port, "/events", None, &fits).status, 200);
    let event = next_event(&mut subscriber);
    assert_eq!(event["type"], "fits");
    publish(herald.port, "after", "small");
    assert_eq!(next_event(&mut subscriber)["type"], "after");
    assert_eq!(
        metric(
            herald.port,
            "herald_limit_hits_total{limit=\"event_bytes\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(herald.port, "herald_slow_consumers_closed_total"),
        Some(0.0)
    );
    assert_eq!(herald.log().matches("event too large").count(), 1);
}
