//! permessage-deflate (RFC 7692) against the real binary: what is negotiated, that each event is
//! compressed once (every deflate subscriber reads the same bytes off the wire), that small
//! events and other clients get plain frames, that `COMPRESSION=off` negotiates nothing, that
//! a decompression bomb is closed 1009 while others are served, and a real client library
//! (Python `websockets`, tests/python/) that supports the extension.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use flate2::{Decompress, FlushDecompress};
use support::*;

const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A raw WebSocket on `path` offering `extensions`; returns the stream and the 101's
/// `Sec-WebSocket-Extensions` (if any).
fn upgrade_offering(
    port: u16,
    path: &str,
    extensions: Option<&str>,
) -> (TcpStream, Option<String>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let offer = extensions.map_or_else(String::new, |e| {
        format!("Sec-WebSocket-Extensions: {e}\r\n")
    });
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let agreed = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Extensions: "))
        .map(str::to_string);
    (stream, agreed)
}

/// Inflates a server message as a client does (RFC 7692 7.2.2), with flate2 directly: the
/// test does not trust Herald's own inflater.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    Decompress::new(false)
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid DEFLATE");
    out
}

/// Compresses as a client does (fresh context, sync flush, tail removed).
fn deflate(message: &[u8]) -> Vec<u8> {
    let mut compress = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::with_capacity(message.len() + 1024);
    compress
        .compress_vec(message, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A masked client frame with any payload length.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    if payload.len() < 65536 {
        return masked_frame(first, payload);
    }
    let mask = [1u8, 2, 3, 4];
    let mut out = vec![first, 0x80 | 127];
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The next data frame (pings skipped).
fn next_data_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    for _ in 0..100 {
        let (first, payload) = read_ws_frame(stream).expect("a frame");
        if first & 0x0f != 0x9 {
            return (first, payload);
        }
    }
    panic!("only pings");
}

fn publish_json(port: u16, channel: &str, message: &str) {
    let body = serde_json::json!({"type": "order", "channel": channel, "message": message});
    let reply = post(port, "/events", Some("application/json"), &body.to_string());
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// A JSON-ish message of about `len` bytes that compresses like real events do.
fn order_text(len: usize) -> String {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < len {
        text.push_str(&format!("order {i} for alice@example.com shipped; "));
        i += 1;
    }
    text.truncate(len);
    text
}

#[test]
fn every_deflate_subscriber_reads_the_same_compressed_bytes_and_others_plain() {
    let herald = Herald::start();
    let port = herald.port;
    let offers = [
        "permessage-deflate; client_max_window_bits", // Chromium, websockets
        "permessage-deflate",                         // Firefox
    ];
    let mut deflaters: Vec<TcpStream> = offers
        .iter()
        .map(|offer| {
            let (stream, agreed) = upgrade_offering(port, "/ws?channels=orders", Some(offer));
            assert_eq!(agreed.as_deref(), Some(BOTH), "{offer}");
            stream
        })
        .collect();
    let (mut plain, agreed) = upgrade_offering(port, "/ws?channels=orders", None);
    assert_eq!(agreed, None);
    let mut library = ws_connect(port, "/ws?channels=orders"); // tungstenite: no extension
    wait_until("4 subscribers", || {
        metric(port, r#"herald_connections{kind="websocket"}"#).is_some_and(|n| n >= 4.0)
    });

    let big = order_text(1000);
    publish_json(port, "orders", &big);
    let frames: Vec<(u8, Vec<u8>)> = deflaters.iter_mut().map(next_data_frame).collect();
    // FIN + RSV1 + text, and byte for byte the same frame: compressed once.
    assert_eq!(frames[0].0, 0xC1);
    assert_eq!(frames[0], frames[1]);
    let json = inflate(&frames[0].1);
    let event: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_event(&event, "order", &big);
    assert!(
        frames[0].1.len() * 3 < json.len(),
        "{} compressed of {}",
        frames[0].1.len(),
        json.len()
    );
    let (first, plain_json) = next_data_frame(&mut plain);
    assert_eq!(first, 0x81);
    assert_eq!(
        plain_json, json,
        "plain and compressed carry the same event"
    );
    assert_event(&next_event(&mut library), "order", &big);

    // Under COMPRESS_MIN_BYTES (256): plain to everyone.
    publish_json(port, "orders", "small");
    for stream in deflaters.iter_mut().chain([&mut plain]) {
        let (first, payload) = next_data_frame(stream);
        assert_eq!(first, 0x81, "small events go uncompressed");
        let event: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_event(&event, "order", "small");
    }
}

#[test]
fn offers_it_cannot_honour_are_declined_and_a_small_window_gets_small_events_only() {
    let herald = Herald::start();
    let port = herald.port;
    for bad in [
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; unknown_parameter",
        "x-webkit-deflate-frame",
    ] {
        let (_, agreed) = upgrade_offering(port, "/ws", Some(bad));
        assert_eq!(agreed, None, "{bad}");
    }
    // A 512-byte window: events up to 512 bytes compressed, larger ones plain (a stream of
    // them could refer back further than the client keeps).
    let (mut small_window, agreed) = upgrade_offering(
        port,
        "/ws?channels=orders",
        Some("permessage-deflate; server_max_window_bits=9"),
    );
    assert_eq!(
        agreed.as_deref(),
        Some(&*format!("{BOTH}; server_max_window_bits=9"))
    );
    wait_until("subscriber", || {
        metric(port, r#"herald_connections{kind="websocket"}"#).is_some_and(|n| n >= 1.0)
    });
    publish_json(port, "orders", &order_text(400));
    let (first, payload) = next_data_frame(&mut small_window);
    assert_eq!(first, 0xC1);
    assert!(inflate(&payload).len() <= 512);
    publish_json(port, "orders", &order_text(1000));
    let (first, payload) = next_data_frame(&mut small_window);
    assert_eq!(first, 0x81, "over the window: plain");
    assert!(payload.len() > 1000);
}

#[test]
fn compression_off_negotiates_nothing_and_rsv1_stays_a_protocol_error() {
    let herald = Herald::with(&[], &[("COMPRESSION", "off")]);
    let port = herald.port;
    let (mut stream, agreed) = upgrade_offering(
        port,
        "/ws?channels=orders",
        Some("permessage-deflate; client_max_window_bits"),
    );
    assert_eq!(agreed, None);
    wait_until("subscriber", || {
        metric(port, r#"herald_connections{kind="websocket"}"#).is_some_and(|n| n >= 1.0)
    });
    let big = order_text(1000);
    publish_json(port, "orders", &big);
    let (first, payload) = next_data_frame(&mut stream);
    assert_eq!(first, 0x81);
    let event: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_event(&event, "order", &big);
    // A compressed message on a connection that did not negotiate the extension.
    let hello = deflate(b"{\"op\":\"subscribe\",\"channel\":\"x\"}");
    stream.write_all(&client_frame(0xC1, &hello)).unwrap();
    let (first, payload) = next_data_frame(&mut stream);
    assert_eq!(first, 0x88);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
}

#[test]
fn compressed_client_messages_are_read_and_a_decompression_bomb_is_closed_1009() {
    let herald = Herald::with(&[], &[("MAX_MESSAGE_BYTES", "65536")]);
    let port = herald.port;
    let offer = Some("permessage-deflate; client_max_window_bits");
    let mut bystander = ws_connect(port, "/ws?channels=orders");

    // A compressed control message works like a plain one.
    let (mut client, agreed) = upgrade_offering(port, "/ws", offer);
    assert_eq!(agreed.as_deref(), Some(BOTH));
    let subscribe = deflate(br#"{"op":"subscribe","channel":"orders"}"#);
    client.write_all(&client_frame(0xC1, &subscribe)).unwrap();
    let (first, notice) = next_data_frame(&mut client);
    assert_eq!(first, 0x81, "notices are small: plain");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&notice).unwrap()["op"],
        "subscribed"
    );

    // The bomb: 64 MiB of zeros in about 64 KB of DEFLATE, well under MAX_MESSAGE_BYTES on
    // the wire; it must be cut at 64 KiB inflated.
    let rss_before = herald.rss_bytes();
    let zeros = vec![0u8; 64 << 20];
    let bomb = deflate(&zeros);
    drop(zeros);
    assert!(bomb.len() < 65536, "bomb is {} bytes", bomb.len());
    let (mut attacker, agreed) = upgrade_offering(port, "/ws", offer);
    assert_eq!(agreed.as_deref(), Some(BOTH));
    attacker.write_all(&client_frame(0xC2, &bomb)).unwrap();
    let (first, payload) = next_data_frame(&mut attacker);
    assert_eq!(first, 0x88);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
    assert_eq!(
        metric(port, r#"herald_limit_hits_total{limit="inflated_bytes"}"#),
        Some(1.0)
    );
    // Held at most: the bomb's frame (64 KB) and the inflation cut at 64 KiB + 1, plus the
    // compressor and inflater created on first use (~400 KB), with allocator slack: 4 MiB.
    let grown = herald.rss_bytes().saturating_sub(rss_before);
    assert!(grown < 4 << 20, "RSS grew {grown} bytes");

    // Everyone else is served: the bystander and the well-behaved compressed client.
    publish_json(port, "orders", &order_text(600));
    assert_event(&next_event(&mut bystander), "order", &order_text(600));
    let (first, payload) = next_data_frame(&mut client);
    assert_eq!(first, 0xC1);
    let event: serde_json::Value = serde_json::from_slice(&inflate(&payload)).unwrap();
    assert_event(&event, "order", &order_text(600));
    assert!(herald.log().contains("inflates past MAX_MESSAGE_BYTES"));

    // Garbage that is not DEFLATE: 1007.
    let (mut garbage, _) = upgrade_offering(port, "/ws", offer);
    garbage
        .write_all(&client_frame(0xC1, &[0xff, 0xff, 0xff, 0xff]))
        .unwrap();
    let (first, payload) = next_data_frame(&mut garbage);
    assert_eq!(first, 0x88);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1007);
}

/// tests/python/.venv with the pinned `websockets`, made by tests/python/setup.sh once per
/// test run. Without it the test fails under CI and is skipped loudly elsewhere.
fn python() -> Option<&'static Path> {
    static PYTHON: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let setup = Command::new("bash")
                .arg(root.join("tests/python/setup.sh"))
                .status();
            let python = root.join("tests/python/.venv/bin/python");
            match setup {
                Ok(status) if status.success() && python.exists() => Some(python),
                other => {
                    let why = format!("tests/python/setup.sh failed: {other:?}");
                    assert!(std::env::var_os("CI").is_none(), "{why}");
                    eprintln!("SKIPPED (not under CI): {why}");
                    None
                }
            }
        })
        .as_deref()
}

#[test]
fn python_websockets_negotiates_deflate_and_reads_compressed_events() {
    let Some(python) = python() else {
        return;
    };
    let herald = Herald::with(&["--echo-path", "/echo"], &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/deflate_client.py");
    let output = Command::new(python)
        .arg(script)
        .arg(herald.port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "deflate_client.py failed:\n{stdout}\n{}\nherald log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        herald.log()
    );
    assert!(stdout.contains("ok"), "{stdout}");
}
