//! Byte-level protocol helpers, all allocation-free on the hot path:
//! the WebSocket client handshake and server-frame parser (RFC 6455), the
//! event JSON / message hand-check, the HTTP/1.1 response parser used by the
//! publishers, and the Redis (RESP) reply parser.

use std::fmt::Write as _;

/// Fixed `Sec-WebSocket-Key` (the RFC 6455 example nonce) ...
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// ... and the `Sec-WebSocket-Accept` the server must answer with.
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Builds the raw WebSocket upgrade request.
pub fn ws_handshake_request(host_header: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\nUser-Agent: herald-bench\r\n\r\n"
    )
    .into_bytes()
}

/// Outcome of looking at the bytes received so far during the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Header block not complete yet.
    Partial,
    /// `101` with the right accept key; the header block was this long (any
    /// bytes after it are already WebSocket frames).
    Done(usize),
    /// Anything else (the reason, short).
    Failed(String),
}

/// Checks a server's handshake response.
pub fn check_handshake(buf: &[u8]) -> Handshake {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 16 * 1024 {
            Handshake::Failed("handshake response too large".into())
        } else {
            Handshake::Partial
        };
    };
    let head = &buf[..end];
    let status_line = head.split(|&b| b == b'\n').next().unwrap_or(b"");
    let mut parts = status_line.split(|&b| b == b' ');
    let _version = parts.next();
    let status = parts.next().unwrap_or(b"");
    if status != b"101" {
        return Handshake::Failed(format!("http {}", String::from_utf8_lossy(status)));
    }
    if find(head, WS_ACCEPT.as_bytes()).is_none() {
        return Handshake::Failed("bad Sec-WebSocket-Accept".into());
    }
    Handshake::Done(end + 4)
}

/// A WebSocket frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    /// Header length in bytes.
    pub header_len: usize,
    /// Payload length in bytes.
    pub payload_len: usize,
}

pub const OP_CONT: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// Largest frame accepted from a server.
pub const MAX_FRAME: usize = 16 << 20;

/// Parses a frame header at the start of `buf`. `Ok(None)` = need more bytes.
pub fn parse_frame_head(buf: &[u8]) -> Result<Option<FrameHead>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err("reserved bits set".into());
    }
    let opcode = b0 & 0x0f;
    let masked = b1 & 0x80 != 0;
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10)
        }
        n => (n as u64, 2),
    };
    if len > MAX_FRAME as u64 {
        return Err(format!("frame too large ({len} bytes)"));
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode,
        mask,
        header_len: pos,
        payload_len: len as usize,
    }))
}

/// Builds a masked (client-to-server) control frame, e.g. a pong.
pub fn client_control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = &payload[..payload.len().min(125)];
    let mut f = Vec::with_capacity(6 + payload.len());
    f.push(0x80 | opcode);
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&[0, 0, 0, 0]); // zero mask key: payload unchanged
    f.extend_from_slice(payload);
    f
}

/// Finds `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    // memmem, not `windows().position()` (a memcmp call per byte).
    memchr::memmem::find(hay, needle)
}

/// One pass over a flat JSON object of strings and scalars, returning the raw
/// `type`, `message` and (if present, and only when `want_id`) `id` strings.
/// It stops as soon as it has what it wants; with `want_id` it reads on to
/// the end of the object for an `id` (Herald puts it first, so that costs
/// nothing there). `None` for anything else (escapes, nesting, a non-string
/// `type`/`message`, malformed input): callers then fall back to a full JSON
/// parse. This runs once per delivery, millions of times a second in a
/// burst, so it must not be the generator's bottleneck.
fn scan_event(json: &[u8], want_id: bool) -> Option<EventFields<'_>> {
    let ws = |mut i: usize| {
        while json.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    // A string starting at `i` (the opening quote): its raw contents and the
    // index after the closing quote; `None` if it holds an escape.
    let string = |i: usize| -> Option<(&[u8], usize)> {
        let start = i + 1;
        let len = memchr::memchr2(b'"', b'\\', json.get(start..)?)?;
        (json[start + len] == b'"').then(|| (&json[start..start + len], start + len + 1))
    };
    let (mut kind, mut message, mut id) = (None, None, None);
    let mut i = ws(0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = ws(i);
        if json.get(i) != Some(&b'"') {
            return None;
        }
        let (key, after_key) = string(i)?;
        i = ws(after_key);
        if json.get(i) != Some(&b':') {
            return None;
        }
        i = ws(i + 1);
        let value = match json.get(i)? {
            b'"' => {
                let (value, after) = string(i)?;
                i = after;
                Some(value)
            }
            b'{' | b'[' => return None,
            _ => {
                // A number, true, false or null: up to the next separator.
                i += memchr::memchr2(b',', b'}', &json[i..])?;
                None
            }
        };
        match key {
            b"type" => kind = Some(value?),
            b"message" => message = Some(value?),
            b"id" if want_id => id = value,
            _ => {}
        }
        if kind.is_some() && message.is_some() && (!want_id || id.is_some()) {
            return EventFields::borrowed(kind, message, id);
        }
        i = ws(i);
        match json.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return EventFields::borrowed(kind, message, id),
            _ => return None,
        }
    }
}

/// The `type`, `message` and `id` of an event frame.
#[derive(Debug, PartialEq, Eq)]
pub struct EventFields<'a> {
    pub kind: std::borrow::Cow<'a, [u8]>,
    pub message: std::borrow::Cow<'a, [u8]>,
    /// The event's id (a resume point), when asked for and present.
    pub id: Option<std::borrow::Cow<'a, [u8]>>,
}

impl<'a> EventFields<'a> {
    /// The fields found in place; `None` without a type or a message.
    fn borrowed(
        kind: Option<&'a [u8]>,
        message: Option<&'a [u8]>,
        id: Option<&'a [u8]>,
    ) -> Option<Self> {
        Some(EventFields {
            kind: kind?.into(),
            message: message?.into(),
            id: id.map(Into::into),
        })
    }
}

/// Extracts `type` and `message` (and with `want_id` the `id`, a resume
/// point) from an event frame: fast hand-check first, full JSON parse as a
/// fallback.
pub fn event_fields(json: &[u8], want_id: bool) -> Option<EventFields<'_>> {
    if let Some(fields) = scan_event(json, want_id) {
        return Some(fields);
    }
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let t = v.get("type")?.as_str()?;
    let m = v.get("message")?.as_str()?;
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .filter(|_| want_id)
        .map(|i| i.as_bytes().to_vec().into());
    Some(EventFields {
        kind: t.as_bytes().to_vec().into(),
        message: m.as_bytes().to_vec().into(),
        id,
    })
}

/// Whether a frame is Herald's notice that a resume could not be served
/// (`{"op":"reset","channel":..,"since":..,"reason":..}`): the events since
/// the client's id may be missing, and the server says so.
pub fn is_reset_notice(json: &[u8]) -> bool {
    if find(json, b"reset").is_none() {
        return false; // the common case: no JSON parse
    }
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .is_some_and(|v| v.get("op").and_then(|o| o.as_str()) == Some("reset"))
}

/// Finds a bench message embedded anywhere in a frame, for servers whose
/// frames are shaped differently from Herald's (`--publish-template`): the
/// first JSON string that starts with `<event_type>:` followed by a digit;
/// returns what follows the prefix (`<seq>:<sent_ns>[:<sched_ns>]...`).
pub fn find_marked_message<'a>(frame: &'a [u8], event_type: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    // Bounded: each iteration moves past one occurrence of the quote.
    while let Some(q) = memchr::memchr(b'"', frame.get(from..)?) {
        let start = from + q + 1;
        let rest = &frame[start..];
        if rest.starts_with(event_type)
            && rest.get(event_type.len()) == Some(&b':')
            && rest
                .get(event_type.len() + 1)
                .is_some_and(u8::is_ascii_digit)
        {
            let body = &rest[event_type.len() + 1..];
            let end = memchr::memchr2(b'"', b'\\', body)?;
            return Some(&body[..end]);
        }
        from = start;
    }
    None
}

/// A bench event message: `<seq>:<sent_unix_ns>[:<scheduled_unix_ns>][:<padding>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchMessage {
    pub seq: u64,
    pub sent_ns: u64,
    pub scheduled_ns: Option<u64>,
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

/// Parses a bench event message.
pub fn parse_message(msg: &[u8]) -> Option<BenchMessage> {
    let mut it = msg.split(|&b| b == b':');
    let seq = parse_u64(it.next()?)?;
    let sent_ns = parse_u64(it.next()?)?;
    let scheduled_ns = it.next().and_then(parse_u64);
    Some(BenchMessage {
        seq,
        sent_ns,
        scheduled_ns,
    })
}

/// Formats a bench event message (see [`parse_message`]).
pub fn format_message(out: &mut String, seq: u64, sent_ns: u64, sched_ns: Option<u64>, pad: usize) {
    let _ = write!(out, "{seq}:{sent_ns}");
    if let Some(s) = sched_ns {
        let _ = write!(out, ":{s}");
    }
    if pad > 0 {
        out.push(':');
        out.extend(std::iter::repeat_n('x', pad));
    }
}

/// A complete HTTP response seen by a publisher.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Bytes of `buf` this response occupied.
    pub len: usize,
    /// The server asked to close the connection.
    pub close: bool,
}

/// Parses one HTTP/1.1 response at the start of `buf` (Content-Length or
/// chunked body). `Ok(None)` = incomplete.
pub fn parse_http_response(buf: &[u8]) -> Result<Option<HttpResponse>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad http response: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut content_len: Option<usize> = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            content_len = Some(v.parse().map_err(|_| "bad content-length".to_string())?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = find(&h.value.to_ascii_lowercase(), b"chunked").is_some();
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value.to_ascii_lowercase();
            if find(&v, b"close").is_some() {
                close = true;
            } else if find(&v, b"keep-alive").is_some() {
                close = false;
            }
        }
    }
    let body = &buf[head_len..];
    let body_len = if chunked {
        match chunked_len(body)? {
            Some(n) => n,
            None => return Ok(None),
        }
    } else if let Some(n) = content_len {
        if body.len() < n {
            return Ok(None);
        }
        n
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        0
    } else {
        return Err("response without length (close-delimited) not supported".into());
    };
    Ok(Some(HttpResponse {
        status,
        len: head_len + body_len,
        close,
    }))
}

/// Length of a complete chunked body (including the final CRLF), if complete.
fn chunked_len(body: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    // Bounded: each iteration consumes at least the chunk-size line.
    for _ in 0..body.len() + 1 {
        let Some(eol) = find(&body[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = &body[pos..pos + eol];
        let hex = line.split(|&b| b == b';').next().unwrap_or(b"");
        let hex = std::str::from_utf8(hex)
            .map_err(|_| "bad chunk size")?
            .trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| "bad chunk size")?;
        pos += eol + 2;
        if size == 0 {
            // Optional trailers, then an empty line.
            for _ in 0..64 {
                let Some(e) = find(&body[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += e + 2;
                if e == 0 {
                    return Ok(Some(pos));
                }
            }
            return Err("too many trailers".into());
        }
        if body.len() < pos + size + 2 {
            return Ok(None);
        }
        pos += size + 2;
    }
    Err("bad chunked body".into())
}

/// One Redis reply seen by the publisher.
#[derive(Debug, PartialEq, Eq)]
pub enum RespReply {
    /// `+OK`, `:N`, or a bulk string: success.
    Ok,
    /// `-ERR ...`.
    Error(String),
}

/// Parses one RESP reply at the start of `buf`: `Ok(Some((reply, len)))`.
pub fn parse_resp_reply(buf: &[u8]) -> Result<Option<(RespReply, usize)>, String> {
    let Some(eol) = find(buf, b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[1..eol];
    match buf[0] {
        b'+' | b':' => Ok(Some((RespReply::Ok, eol + 2))),
        b'-' => Ok(Some((
            RespReply::Error(String::from_utf8_lossy(line).into_owned()),
            eol + 2,
        ))),
        b'$' => {
            let n: i64 = std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bad bulk length")?;
            if n < 0 {
                return Ok(Some((RespReply::Ok, eol + 2)));
            }
            let total = eol + 2 + n as usize + 2;
            Ok((buf.len() >= total).then_some((RespReply::Ok, total)))
        }
        other => Err(format!("unexpected RESP reply type {:?}", other as char)),
    }
}

/// Appends a RESP command (array of bulk strings).
pub fn resp_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes as much of `out` as a non-blocking socket takes, and drops what was written.
pub fn write_pending(stream: &mut impl std::io::Write, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::ErrorKind;
    let mut written = 0;
    // Bounded: each iteration writes at least one byte or returns.
    while written < out.len() {
        match stream.write(&out[written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    out.drain(..written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_ok_and_failures() {
        let mut ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
        )
        .into_bytes();
        ok.extend_from_slice(b"\x81\x02hi");
        let b = &ok[..];
        assert_eq!(check_handshake(b), Handshake::Done(b.len() - 4));
        assert_eq!(check_handshake(&b[..20]), Handshake::Partial);
        assert_eq!(
            check_handshake(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            Handshake::Failed("http 404".into())
        );
        assert_eq!(
            check_handshake(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: x\r\n\r\n"),
            Handshake::Failed("bad Sec-WebSocket-Accept".into())
        );
    }

    #[test]
    fn frame_heads() {
        let h = parse_frame_head(b"\x81\x05hello").unwrap().unwrap();
        assert!(h.fin);
        assert_eq!((h.opcode, h.header_len, h.payload_len), (OP_TEXT, 2, 5));
        assert_eq!(h.mask, None);
        assert_eq!(parse_frame_head(b"\x81").unwrap(), None);
        let h = parse_frame_head(b"\x01\x7e\x01\x00").unwrap().unwrap();
        assert!(!h.fin);
        assert_eq!((h.header_len, h.payload_len), (4, 256));
        assert_eq!(parse_frame_head(b"\x81\x7e\x01").unwrap(), None);
        let mut b = vec![0x82, 127];
        b.extend_from_slice(&70_000u64.to_be_bytes());
        let h = parse_frame_head(&b).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.header_len, h.payload_len),
            (OP_BINARY, 10, 70_000)
        );
        let h = parse_frame_head(b"\x89\x81\x01\x02\x03\x04x")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.opcode, h.header_len, h.mask),
            (OP_PING, 6, Some([1, 2, 3, 4]))
        );
        assert!(parse_frame_head(b"\xc1\x00").is_err());
        let mut b = vec![0x81, 127];
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(parse_frame_head(&b).is_err());
        assert_eq!(client_control_frame(OP_PONG, b"ab"), b"\x8a\x82\0\0\0\0ab");
    }

    #[test]
    fn event_json_fields() {
        let j = br#"{"type":"bench","message":"12:1700000000000000000","id":3}"#;
        let f = event_fields(j, false).unwrap();
        assert_eq!(&*f.kind, b"bench");
        assert_eq!(&*f.message, b"12:1700000000000000000");
        // whitespace, other order, a value that equals a key name
        let j = br#"{ "message" : "1:2", "channel":"message", "type": "bench" }"#;
        let f = event_fields(j, false).unwrap();
        assert_eq!((&*f.kind, &*f.message), (&b"bench"[..], &b"1:2"[..]));
        let j = br#"{"type":"message","message":"5:6"}"#;
        assert_eq!(&*event_fields(j, false).unwrap().message, b"5:6");
        // escapes fall back to a real JSON parse
        let j = br#"{"type":"b\u0065nch","message":"7:8"}"#;
        assert_eq!(&*event_fields(j, false).unwrap().kind, b"bench");
        assert!(event_fields(br#"{"type":"x"}"#, false).is_none());
        assert!(event_fields(b"not json", false).is_none());
        assert!(event_fields(br#"{"type":"x","message":5}"#, false).is_none());
        // scalars and nesting before the fields
        let j = br#"{"ts":17,"ok":true,"type":"bench","message":"1:2"}"#;
        assert_eq!(&*event_fields(j, false).unwrap().message, b"1:2");
        let j = br#"{"meta":{"type":"no"},"type":"bench","message":"3:4"}"#;
        assert_eq!(&*event_fields(j, false).unwrap().kind, b"bench");
        assert_eq!(scan_event(j, false), None);
        assert_eq!(scan_event(br#"{"type":"a","#, false), None);
        assert_eq!(scan_event(br#"{"type":"a""#, false), None);
    }

    #[test]
    fn event_ids_resets_and_marked_messages() {
        // Herald's frames carry the id first; another server's may put it last.
        let j = br#"{"id":"1764-3","type":"bench","message":"1:2","channel":"events"}"#;
        let f = event_fields(j, true).unwrap();
        assert_eq!(f.id.as_deref(), Some(&b"1764-3"[..]));
        assert_eq!(event_fields(j, false).unwrap().id, None);
        let j = br#"{"type":"bench","message":"1:2","id":"9-0"}"#;
        assert_eq!(
            event_fields(j, true).unwrap().id.as_deref(),
            Some(&b"9-0"[..])
        );
        let j = br#"{"type":"bench","message":"1:2"}"#;
        let f = event_fields(j, true).unwrap();
        assert_eq!((f.id, &*f.message), (None, &b"1:2"[..]));
        let j = br#"{"type":"bench","message":"1:2","id":7}"#;
        assert_eq!(event_fields(j, true).unwrap().id, None);

        assert!(is_reset_notice(
            br#"{"channel":"events","op":"reset","reason":"too old","since":"1-0"}"#
        ));
        assert!(!is_reset_notice(
            br#"{"op":"subscribed","channel":"reset"}"#
        ));
        assert!(!is_reset_notice(br#"{"type":"bench","message":"1:2"}"#));

        let centrifugo = br#"{"push":{"channel":"c","pub":{"data":{"m":"bench:12:1700:1600"}}}}"#;
        assert_eq!(
            find_marked_message(centrifugo, b"bench"),
            Some(&b"12:1700:1600"[..])
        );
        let socket_io = br#"42["bench",{"message":"bench:3:99"}]"#;
        assert_eq!(find_marked_message(socket_io, b"bench"), Some(&b"3:99"[..]));
        assert_eq!(find_marked_message(br#"{"a":"bench:x"}"#, b"bench"), None);
        assert_eq!(
            find_marked_message(br#"{"a":"benchmark:1"}"#, b"bench"),
            None
        );
        assert_eq!(find_marked_message(b"", b"bench"), None);
    }

    #[test]
    fn messages_roundtrip() {
        let mut s = String::new();
        format_message(&mut s, 42, 1_700_000_000_123_456_789, None, 0);
        assert_eq!(s, "42:1700000000123456789");
        assert_eq!(
            parse_message(s.as_bytes()),
            Some(BenchMessage {
                seq: 42,
                sent_ns: 1_700_000_000_123_456_789,
                scheduled_ns: None
            })
        );
        s.clear();
        format_message(&mut s, 7, 100, Some(90), 3);
        assert_eq!(s, "7:100:90:xxx");
        assert_eq!(parse_message(s.as_bytes()).unwrap().scheduled_ns, Some(90));
        s.clear();
        format_message(&mut s, 7, 100, None, 2);
        assert_eq!(parse_message(s.as_bytes()).unwrap().scheduled_ns, None);
        assert_eq!(parse_message(b"Order #123 placed"), None);
        assert_eq!(parse_message(b"1"), None);
        assert_eq!(parse_message(b"1:99999999999999999999999"), None);
    }

    #[test]
    fn http_responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1";
        assert_eq!(
            parse_http_response(r).unwrap(),
            Some(HttpResponse {
                status: 200,
                len: r.len() - 8,
                close: false
            })
        );
        assert_eq!(parse_http_response(&r[..30]).unwrap(), None);
        let r = b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let p = parse_http_response(r).unwrap().unwrap();
        assert_eq!((p.status, p.close, p.len), (503, true, r.len()));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(r).unwrap().unwrap().len, r.len());
        assert_eq!(parse_http_response(&r[..r.len() - 2]).unwrap(), None);
        assert!(parse_http_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn resp_replies() {
        assert_eq!(
            parse_resp_reply(b":3\r\n").unwrap(),
            Some((RespReply::Ok, 4))
        );
        assert_eq!(parse_resp_reply(b":3\r").unwrap(), None);
        assert_eq!(
            parse_resp_reply(b"-ERR no\r\n").unwrap(),
            Some((RespReply::Error("ERR no".into()), 9))
        );
        assert_eq!(
            parse_resp_reply(b"$2\r\nok\r\n").unwrap(),
            Some((RespReply::Ok, 8))
        );
        assert_eq!(parse_resp_reply(b"$2\r\nok").unwrap(), None);
        let mut v = Vec::new();
        resp_command(&mut v, &[b"PUBLISH", b"events", b"{}"]);
        assert_eq!(v, b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nevents\r\n$2\r\n{}\r\n");
    }
}
