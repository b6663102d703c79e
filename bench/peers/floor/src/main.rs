//! The floor reference server: the least any WebSocket fan-out server can do
//! on this machine, to measure the others against (bench/peers/README.md).
//!
//! One thread, one `mio` poll, no runtime. It accepts connections, completes
//! the WebSocket handshake on `GET /ws...`, and for each published event
//! (`POST /events?event_type=..&message=..`) builds one text frame
//! `{"type":..,"message":..}` once and writes it to every WebSocket, one
//! `write` per socket. Nothing else: no channels, no history, no pings, no
//! limits, no Redis. A socket that does not take the whole frame keeps the
//! rest for when it becomes writable (so the benchmark's loss check holds);
//! while it has a rest, later frames are queued behind it without a write.
//! `GET /health` answers 200. Everything a client sends on a WebSocket is
//! read and dropped.
//!
//! Usage: `herald-peer-floor PORT` (listens on `$BIND`, default 127.0.0.1).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
/// A request head larger than this is refused (431) and the connection closed.
const MAX_HEAD: usize = 16 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    WebSocket,
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    /// Unparsed request bytes (HTTP only).
    inbuf: Vec<u8>,
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
}

/// What one parsed request asks for.
enum Request<'a> {
    Upgrade { key: &'a str },
    Publish { query: &'a str },
    Health,
    NotFound,
    BadUpgrade,
}

fn main() {
    let port: u16 = match std::env::args().nth(1).map(|p| p.parse()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!("usage: herald-peer-floor PORT");
            std::process::exit(2);
        }
    };
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".into());
    let addr: SocketAddr = match format!("{bind}:{port}").parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("herald-peer-floor: bad address {bind}:{port}: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = serve(addr) {
        eprintln!("herald-peer-floor: {e}");
        std::process::exit(1);
    }
}

/// The connections, indexed by token, with a free list.
#[derive(Default)]
struct Conns {
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
}

impl Conns {
    fn insert(&mut self, c: Conn) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(c);
                i
            }
            None => {
                self.slots.push(Some(c));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, poll: &Poll, i: usize) {
        if let Some(mut c) = self.slots.get_mut(i).and_then(Option::take) {
            let _ = poll.registry().deregister(&mut c.stream);
            self.free.push(i);
        }
    }
}

fn serve(addr: SocketAddr) -> io::Result<()> {
    let mut listener = TcpListener::bind(addr)?;
    // mio listens with a backlog of 128: 256 handshakes in flight overflow it and
    // the dropped SYNs come back a second later. Listen again with the other
    // peers' 1024 (Linux takes the new backlog on a listening socket).
    // SAFETY: listen(2) on the listener's own, valid descriptor.
    if unsafe { libc::listen(listener.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut conns = Conns::default();
    let mut rbuf = vec![0u8; READ_CHUNK];
    eprintln!("herald-peer-floor listening on {addr}");
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept_all(&listener, &poll, &mut conns);
                continue;
            }
            let i = ev.token().0;
            if ev.is_writable() && !flush_rest(&mut conns, i) {
                conns.remove(&poll, i);
                continue;
            }
            if ev.is_readable() {
                on_readable(&poll, &mut conns, i, &mut rbuf);
            }
        }
    }
}

/// Accepts until the queue is empty (the listener is edge-triggered).
fn accept_all(listener: &TcpListener, poll: &Poll, conns: &mut Conns) {
    // Bounded by the kernel's accept queue.
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let i = conns.insert(Conn {
                    stream,
                    kind: Kind::Http,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                });
                let c = conns.slots[i].as_mut().expect("just inserted");
                if poll
                    .registry()
                    .register(
                        &mut c.stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_err()
                {
                    conns.remove(poll, i);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Out of descriptors or similar: try again on the next event.
            Err(_) => return,
        }
    }
}

/// Writes what a socket did not take before. False when the socket failed.
fn flush_rest(conns: &mut Conns, i: usize) -> bool {
    let Some(c) = conns.slots.get_mut(i).and_then(Option::as_mut) else {
        return true;
    };
    // Bounded: each pass writes bytes or stops.
    while !c.out.is_empty() {
        match c.stream.write(&c.out) {
            Ok(0) => return false,
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    true
}

fn on_readable(poll: &Poll, conns: &mut Conns, i: usize, rbuf: &mut [u8]) {
    let mut closed = false;
    {
        let Some(c) = conns.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        // Bounded: reads until the socket is empty (edge-triggered) or closed.
        loop {
            match c.stream.read(rbuf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    if c.kind == Kind::Http {
                        c.inbuf.extend_from_slice(&rbuf[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
    }
    if !closed {
        closed = !handle_requests(conns, i);
    }
    if closed {
        conns.remove(poll, i);
    }
}

/// Answers every complete request in the connection's buffer. False when the
/// connection must close.
fn handle_requests(conns: &mut Conns, i: usize) -> bool {
    // Bounded: each pass consumes one request or stops.
    loop {
        let Some(c) = conns.slots.get_mut(i).and_then(Option::as_mut) else {
            return true;
        };
        if c.kind != Kind::Http {
            return true;
        }
        let Some(head_end) = find(&c.inbuf, b"\r\n\r\n").map(|p| p + 4) else {
            if c.inbuf.len() > MAX_HEAD {
                reply(
                    c,
                    "431 Request Header Fields Too Large",
                    r#"{"detail":"head too large"}"#,
                );
                return false;
            }
            return true;
        };
        let Ok(head) = std::str::from_utf8(&c.inbuf[..head_end]) else {
            reply(c, "400 Bad Request", r#"{"detail":"bad request"}"#);
            return false;
        };
        let body_len: usize = header(head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if c.inbuf.len() < head_end + body_len {
            return true; // the body is still on its way
        }
        let head = head.to_string();
        c.inbuf.drain(..head_end + body_len);
        match route(&head) {
            Request::Upgrade { key } => {
                let accept = accept_key(key);
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                send(c, resp.as_bytes());
                c.kind = Kind::WebSocket;
                c.inbuf = Vec::new();
                return true;
            }
            Request::Publish { query } => {
                let (kind, message) = event_fields(query);
                let Some(kind) = kind else {
                    reply(
                        c,
                        "422 Unprocessable Entity",
                        r#"{"detail":"event_type is required"}"#,
                    );
                    continue;
                };
                let message = message.unwrap_or_default();
                // The reply first, so the publisher is not kept waiting for the fan-out.
                reply(
                    c,
                    "200 OK",
                    &format!(r#"{{"published":true,"type":{}}}"#, json_str(&kind)),
                );
                let payload = format!(
                    r#"{{"type":{},"message":{}}}"#,
                    json_str(&kind),
                    json_str(&message)
                );
                fan_out(conns, &text_frame(payload.as_bytes()));
            }
            Request::Health => reply(c, "200 OK", r#"{"status":"ok"}"#),
            Request::BadUpgrade => {
                reply(
                    c,
                    "400 Bad Request",
                    r#"{"detail":"missing Sec-WebSocket-Key"}"#,
                );
                return false;
            }
            Request::NotFound => reply(c, "404 Not Found", r#"{"detail":"Not Found"}"#),
        }
    }
}

/// The one thing the floor does per event: the same frame to every
/// WebSocket, one write each (behind any rest it still holds, in order).
fn fan_out(conns: &mut Conns, frame: &[u8]) {
    for c in conns.slots.iter_mut().flatten() {
        if c.kind == Kind::WebSocket {
            send(c, frame);
        }
    }
}

/// One write of `bytes`; what the socket does not take waits in `out`.
fn send(c: &mut Conn, bytes: &[u8]) {
    if !c.out.is_empty() {
        c.out.extend_from_slice(bytes);
        return;
    }
    let n = match c.stream.write(bytes) {
        Ok(n) => n,
        // A failed socket is closed when its read side reports it.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => bytes.len(),
    };
    c.out.extend_from_slice(&bytes[n..]);
}

fn reply(c: &mut Conn, status: &str, body: &str) {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    send(c, resp.as_bytes());
}

fn route(head: &str) -> Request<'_> {
    let mut parts = head.split(' ');
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match (method, path) {
        ("GET", "/ws") => match header(head, "sec-websocket-key") {
            Some(key) => Request::Upgrade { key },
            None => Request::BadUpgrade,
        },
        ("POST", "/events") => Request::Publish { query },
        ("GET", "/health") => Request::Health,
        _ => Request::NotFound,
    }
}

/// The value of header `name` (lower case) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `event_type` and `message` from a query string, percent-decoded.
fn event_fields(query: &str) -> (Option<String>, Option<String>) {
    let (mut kind, mut message) = (None, None);
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "event_type" => kind = Some(percent_decode(v)),
            "message" => message = Some(percent_decode(v)),
            _ => {}
        }
    }
    (kind, message)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An unmasked, final text frame.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 4.2.2).
fn accept_key(key: &str) -> String {
    base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ))
}

/// SHA-1 (FIPS 180-4), for `Sec-WebSocket-Accept` only.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (t, word) in block.chunks_exact(4).enumerate() {
            w[t] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for t in 16..80 {
            w[t] = (w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (t, &wt) in w.iter().enumerate() {
            let (f, k) = match t {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let temp = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wt);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = temp;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_accept_of_rfc6455() {
        // RFC 6455, section 1.3.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = accept_key(key);
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn sha1_and_base64_vectors() {
        let hexed: String = sha1(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hexed, "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn query_and_frame() {
        let (k, m) = event_fields("event_type=bench&message=1%3A2+x%zz");
        assert_eq!(k.as_deref(), Some("bench"));
        assert_eq!(m.as_deref(), Some("1:2 x%zz"));
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(json_str("a\"b\\\u{1}"), r#""a\"b\\\u0001""#);
        assert_eq!(text_frame(b"hi"), b"\x81\x02hi");
        assert_eq!(&text_frame(&[b'x'; 300])[..4], &[0x81, 126, 1, 44]);
    }
}
