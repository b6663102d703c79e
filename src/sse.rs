//! Server-Sent Events: the response head and the records of a `text/event-stream`.
//! A record for a live event is built once and shared by every SSE subscriber, like a
//! WebSocket frame.

use bytes::Bytes;

/// The head of a stream that stays open. `X-Accel-Buffering: no` keeps proxies (nginx,
/// ingress controllers) from holding events back.
pub fn head() -> Bytes {
    Bytes::from_static(
        b"HTTP/1.1 200 OK\r\nServer: herald\r\nContent-Type: text/event-stream\r\n\
Cache-Control: no-store\r\nConnection: keep-alive\r\nX-Accel-Buffering: no\r\n\
X-Content-Type-Options: nosniff\r\n\r\nretry: 1000\n\n",
    )
}

/// A comment line: keeps idle proxies from closing the stream.
pub const HEARTBEAT: &[u8] = b": ping\n\n";

/// One record: `id:` and `event:` if given, then the data, one `data:` line per line.
/// Field values cannot hold line breaks, so any in `event` become spaces.
pub fn record(id: Option<&str>, event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 64);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend(
            event
                .bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.push(b'\n');
    }
    for line in data.split(|&b| b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// The record of an event's JSON: `id:` its id, `event:` its type.
pub fn event_record(json: &[u8]) -> Bytes {
    #[derive(serde::Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        id: Option<std::borrow::Cow<'a, str>>,
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    let peek: Option<Peek> = serde_json::from_slice(json).ok();
    let (id, kind) = peek.map_or((None, None), |p| (p.id, p.kind));
    record(id.as_deref(), kind.as_deref(), json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_format_an_event_record() {
        let json = br#"{"id":"5-0","type":"order","message":"hi"}"#;
        assert_eq!(
            &event_record(json)[..],
            b"id: 5-0\nevent: order\ndata: {\"id\":\"5-0\",\"type\":\"order\",\"message\":\"hi\"}\n\n"
        );
    }

    #[test]
    fn should_split_multiline_data_and_clean_event_names() {
        assert_eq!(
            &record(None, Some("a\nb"), b"{\n\"x\": 1\r\n}")[..],
            b"event: a b\ndata: {\ndata: \"x\": 1\ndata: }\n\n"
        );
    }
}
