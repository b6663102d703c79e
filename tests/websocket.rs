//! WebSocket protocol: bad frames close with the RFC code, pings get pongs, the close
//! handshake completes. Raw frames are written by hand where the protocol is the point.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::*;
use tungstenite::Message;

fn raw_ws(port: u16) -> TcpStream {
    ws_upgrade_raw(port)
}

fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    read_ws_frame(stream).expect("a server frame")
}

fn close_code_of(stream: &mut TcpStream) -> u16 {
    loop {
        let (op, payload) = read_frame(stream);
        if op == 0x88 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[test]
fn protocol_violations_close_with_the_rfc_code() {
    let herald = Herald::with(&["--max-message-bytes", "1000"], &[]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("reserved bits", masked_frame(0xC1, b"x"), 1002),
        ("reserved opcode", masked_frame(0x83, b"x"), 1002),
        ("fragmented ping", masked_frame(0x09, b"x"), 1002),
        ("orphan continuation", masked_frame(0x80, b"x"), 1002),
        ("invalid UTF-8", masked_frame(0x81, &[0xff, 0xfe]), 1007),
        ("message too big", masked_frame(0x82, &[0u8; 1001]), 1009),
        ("one-byte close", masked_frame(0x88, &[1]), 1002),
    ];
    for (name, frame, code) in cases {
        let mut ws = raw_ws(herald.port);
        ws.write_all(&frame).unwrap();
        assert_eq!(close_code_of(&mut ws), code, "{name}");
        // After the close frame the server ends the TCP connection.
        let mut rest = Vec::new();
        let _ = ws.read_to_end(&mut rest);
    }
    assert!(
        herald
            .log()
            .contains("closing WebSocket: unmasked client frame")
    );
    assert_eq!(get(herald.port, "/health").status, 200);
}

#[test]
fn pings_get_pongs_with_the_same_payload() {
    let herald = Herald::start();
    let mut ws = raw_ws(herald.port);
    ws.write_all(&masked_frame(0x89, b"are you there")).unwrap();
    assert_eq!(read_frame(&mut ws), (0x8A, b"are you there".to_vec()));
    // A text message that is not a control message gets a JSON error, not a disconnect.
    ws.write_all(&masked_frame(0x81, b"hello")).unwrap();
    let (op, payload) = read_frame(&mut ws);
    assert_eq!(op, 0x81);
    let notice: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(notice["op"], "error", "{notice}");
    publish(herald.port, "after", "text");
    let (op, payload) = read_frame(&mut ws);
    assert_eq!(op, 0x81);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["type"],
        "after"
    );
}

#[test]
fn the_close_handshake_completes() {
    let herald = Herald::start();
    let mut ws = ws_connect(herald.port, "/ws");
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: 4000.into(),
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(close_code(&mut ws), Some(4000));
    wait_until("the socket to be reaped", || {
        get(herald.port, "/health").json()["websockets"] == 0
    });
}

#[test]
fn frames_split_across_writes_are_reassembled() {
    let herald = Herald::with(&["--echo-path", "/echo"], &[]);
    let mut ws = ws_connect(herald.port, "/echo");
    let text = "é".repeat(5000);
    ws.send(Message::text(text.clone())).unwrap();
    match ws.read().unwrap() {
        Message::Text(echoed) => assert_eq!(echoed.as_str(), text),
        other => panic!("{other:?}"),
    }
    // Over MAX_MESSAGE_BYTES (64 KiB by default): the server says 1009 as soon as the frame
    // header announces the length, before the payload is read.
    ws.send(Message::binary(vec![7u8; 70_000])).unwrap();
    assert_eq!(close_code(&mut ws), Some(1009));
}

#[test]
fn origins_outside_the_allow_list_are_refused() {
    let herald = Herald::with(&[], &[("ALLOWED_ORIGINS", "https://feed.example")]);
    let request = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nOrigin: {origin}\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    assert_eq!(
        raw(herald.port, request("https://evil.example").as_bytes()).status,
        403
    );
    let ok = raw(herald.port, request("https://feed.example").as_bytes());
    assert_eq!(ok.status, 101);
}
