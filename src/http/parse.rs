//! Request parsing: one complete request (head and `Content-Length` body) out of a byte
//! buffer, or `Ok(None)` when more bytes are needed. Pipelined requests are parsed one after
//! another from the same buffer; the caller keeps whatever follows the last complete one.
//!
//! Limits are enforced as soon as a length is known: a head that outgrows `max_head_bytes`
//! before it is complete is a 431 right away, a declared body over `max_body_bytes` a 413
//! before any of it arrives.
//!
//! A head whose body has not fully arrived is handed out too (`Parsed::AwaitingBody`), so the
//! reactor can answer `Expect: 100-continue` (RFC 9110 10.1.1) or refuse the request before
//! the client sends a body that would be refused anyway.

use thiserror::Error;

use crate::config::Limits;

/// Headers beyond this many make the head too large (431), like an oversized head.
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// The headers Herald acts on, borrowed from the input buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Headers<'a> {
    pub content_type: Option<&'a str>,
    pub upgrade: Option<&'a str>,
    /// `Connection` lists the `upgrade` token.
    pub connection_upgrade: bool,
    pub ws_key: Option<&'a str>,
    pub ws_version: Option<&'a str>,
    /// The first `Sec-WebSocket-Extensions` line (a client that spreads its offers over
    /// several lines gets what the first allows: declining an extension is always valid).
    pub ws_extensions: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub authorization: Option<&'a str>,
    pub last_event_id: Option<&'a str>,
    /// `Idempotency-Key`: a retried publish with the same key is not delivered twice.
    pub idempotency_key: Option<&'a str>,
    /// `Expect: 100-continue` on HTTP/1.1: the client waits for a `100 Continue` before it
    /// sends the body (RFC 9110 10.1.1: ignored on HTTP/1.0).
    pub expect_continue: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The path as sent (still percent-encoded), without the query.
    pub path: &'a str,
    /// The raw query string after `?`, or empty.
    pub query: &'a str,
    /// The connection stays open after the reply (HTTP/1.1 default, or `keep-alive` on 1.0).
    pub keep_alive: bool,
    pub headers: Headers<'a>,
    pub body: &'a [u8],
}

/// What is wrong with a request; `reply.rs` maps each to its status. All of them close the
/// connection: after a framing error the stream position can no longer be trusted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("Transfer-Encoding is not supported; send Content-Length")]
    TransferEncoding,
    /// RFC 6455 4.1: the opening handshake is a GET with no body; bytes after the head are
    /// frames, so a declared body would make them ambiguous.
    #[error("a WebSocket upgrade request carries no body")]
    UpgradeWithBody,
    /// RFC 9110 10.1.1: `100-continue` is the only expectation defined.
    #[error("unsupported expectation: only Expect: 100-continue is understood")]
    ExpectationFailed,
    #[error("HTTP version not supported")]
    Version,
}

/// What the front of a buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole request, and the bytes it used.
    Complete(Request<'a>, usize),
    /// The head is complete (and checked), its declared body is not there yet; `body` is
    /// empty. The reactor may answer `Expect: 100-continue` or refuse now.
    AwaitingBody(Request<'a>),
    /// The head is not complete yet.
    Partial,
}

/// Parses one request from the front of `buf`. Returns the request and the bytes it used, or
/// `None` until the whole request (head and body) is there.
pub fn parse_request<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<(Request<'a>, usize)>, HttpError> {
    Ok(match parse(buf, limits)? {
        Parsed::Complete(request, used) => Some((request, used)),
        Parsed::AwaitingBody(_) | Parsed::Partial => None,
    })
}

/// Parses the front of `buf`: a whole request, a head still waiting for its body, or not
/// even a whole head.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Result<Parsed<'a>, HttpError> {
    let mut header_slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut header_slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(HttpError::HeadTooLarge(limits.max_head_bytes));
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::HeadTooLarge(limits.max_head_bytes));
        }
        Err(httparse::Error::Version) => return Err(HttpError::Version),
        Err(e) => return Err(HttpError::Malformed(parse_error_name(e))),
    };
    if head_len > limits.max_head_bytes {
        return Err(HttpError::HeadTooLarge(limits.max_head_bytes));
    }

    let http10 = match req.version {
        Some(1) => false,
        Some(0) => true,
        _ => return Err(HttpError::Version),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let target = req.path.ok_or(HttpError::Malformed("no request target"))?;
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    let mut headers = Headers::default();
    let mut content_length: Option<usize> = None;
    let mut close = false;
    let mut keep_alive = false;
    let mut transfer_encoding = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::Malformed("header value is not UTF-8"))?
            .trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(HttpError::ExpectationFailed);
            }
            headers.expect_continue = !http10;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                headers.connection_upgrade |= token.eq_ignore_ascii_case("upgrade");
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            headers.content_type = Some(value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            headers.upgrade = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            headers.ws_key = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            headers.ws_extensions.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            headers.ws_version = Some(value);
        } else if name.eq_ignore_ascii_case("origin") {
            headers.origin = Some(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            headers.authorization = Some(value);
        } else if name.eq_ignore_ascii_case("last-event-id") {
            headers.last_event_id = Some(value);
        } else if name.eq_ignore_ascii_case("idempotency-key") {
            headers.idempotency_key = Some(value);
        }
    }

    let body_len = content_length.unwrap_or(0);
    let is_upgrade = headers.upgrade.is_some_and(|u| {
        u.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
    });
    if is_upgrade && (body_len > 0 || transfer_encoding) {
        return Err(HttpError::UpgradeWithBody);
    }
    if transfer_encoding {
        return Err(HttpError::TransferEncoding);
    }
    if body_len > limits.max_body_bytes {
        return Err(HttpError::BodyTooLarge(limits.max_body_bytes));
    }
    let total = head_len + body_len;
    let complete = buf.len() >= total;
    let request = Request {
        method,
        path,
        query,
        keep_alive: if http10 { keep_alive && !close } else { !close },
        headers,
        body: if complete { &buf[head_len..total] } else { &[] },
    };
    Ok(if complete {
        Parsed::Complete(request, total)
    } else {
        Parsed::AwaitingBody(request)
    })
}

fn parse_content_length(value: &str) -> Result<usize, HttpError> {
    // RFC 9110 8.6: Content-Length = 1*DIGIT. `usize::from_str` would also take a `+` sign.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::Malformed("invalid Content-Length"));
    }
    value
        .parse()
        .map_err(|_| HttpError::Malformed("invalid Content-Length"))
}

fn parse_error_name(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_head_bytes: 256,
            max_body_bytes: 16,
            ..Limits::default()
        }
    }

    fn parse(input: &str) -> Result<Option<(Request<'_>, usize)>, HttpError> {
        parse_request(input.as_bytes(), &limits())
    }

    fn parse_request_or_head(input: &str) -> Result<Parsed<'_>, HttpError> {
        super::parse(input.as_bytes(), &limits())
    }

    /// Table of (input, expectation) pairs, like httparse's `req!` tests.
    macro_rules! req {
        ($name:ident, $input:expr, |$req:ident| $body:block) => {
            #[test]
            fn $name() {
                let input: &str = $input;
                let ($req, used) = parse(input).expect("error").expect("incomplete");
                assert_eq!(used, input.len());
                $body
                // Every strict prefix is incomplete, never an error: input split at every byte.
                for cut in 0..input.len() {
                    assert_eq!(parse(&input[..cut]), Ok(None), "prefix of {cut} bytes");
                }
            }
        };
    }

    req!(
        should_parse_the_tutorials_curl_publish,
        "POST /events?event_type=order&message=Order+%23123+placed HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        |r| {
            assert_eq!(r.method, Method::Post);
            assert_eq!(r.path, "/events");
            assert_eq!(r.query, "event_type=order&message=Order+%23123+placed");
            assert!(r.keep_alive);
        }
    );

    req!(
        should_read_a_json_body,
        "POST /events HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"type\":\"a\"}",
        |r| {
            assert_eq!(r.headers.content_type, Some("application/json"));
            assert_eq!(r.body, b"{\"type\":\"a\"}");
        }
    );

    req!(
        should_collect_websocket_headers,
        "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://a\r\n\r\n",
        |r| {
            assert_eq!(r.headers.upgrade, Some("websocket"));
            assert!(r.headers.connection_upgrade);
            assert_eq!(r.headers.ws_key, Some("dGhlIHNhbXBsZSBub25jZQ=="));
            assert_eq!(r.headers.ws_version, Some("13"));
            assert_eq!(r.headers.origin, Some("http://a"));
        }
    );

    req!(
        should_close_http10_unless_keep_alive,
        "GET /health HTTP/1.0\r\n\r\n",
        |r| {
            assert!(!r.keep_alive);
        }
    );

    req!(
        should_honour_connection_close,
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        |r| {
            assert!(!r.keep_alive);
        }
    );

    #[test]
    fn should_parse_pipelined_requests_one_at_a_time() {
        let input = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c";
        let (first, used) = parse(input).unwrap().unwrap();
        assert_eq!(first.path, "/a");
        let (second, used2) = parse(&input[used..]).unwrap().unwrap();
        assert_eq!(second.path, "/b");
        assert_eq!(parse(&input[used + used2..]), Ok(None));
    }

    #[test]
    fn should_reject_oversized_heads_before_they_complete() {
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(300));
        assert_eq!(parse(&long), Err(HttpError::HeadTooLarge(256)));
        let many: String = (0..70).map(|i| format!("X-{i}: 1\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let big = Limits {
            max_head_bytes: 8192,
            ..limits()
        };
        assert_eq!(
            parse_request(req.as_bytes(), &big),
            Err(HttpError::HeadTooLarge(8192))
        );
    }

    #[test]
    fn should_hand_out_a_head_awaiting_its_body_with_its_expectation() {
        let head = "POST /events HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n";
        let Ok(Parsed::AwaitingBody(req)) = parse_request_or_head(head) else {
            panic!("{:?}", parse_request_or_head(head));
        };
        assert!(req.headers.expect_continue);
        assert_eq!(req.body, b"");
        let whole = format!("{head}hello");
        let Ok(Parsed::Complete(req, used)) = parse_request_or_head(&whole) else {
            panic!("incomplete");
        };
        assert_eq!((req.body, used), (&b"hello"[..], whole.len()));
        // HTTP/1.0 clients do not wait for a 100 (RFC 9110 10.1.1).
        let old = "POST /events HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        let Ok(Parsed::AwaitingBody(req)) = parse_request_or_head(old) else {
            panic!("{:?}", parse_request_or_head(old));
        };
        assert!(!req.headers.expect_continue);
        assert_eq!(
            parse("POST / HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n"),
            Err(HttpError::ExpectationFailed)
        );
    }

    #[test]
    fn should_refuse_an_upgrade_that_carries_a_body() {
        let upgrade = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        for framing in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"] {
            // Refused as soon as the head is in, without waiting for the body.
            let req = format!("{upgrade}{framing}\r\n");
            assert_eq!(parse(&req), Err(HttpError::UpgradeWithBody), "{framing}");
        }
        let empty = format!("{upgrade}Content-Length: 0\r\n\r\n");
        assert!(matches!(parse(&empty), Ok(Some(_))));
    }

    #[test]
    fn should_reject_oversized_bodies_as_soon_as_declared() {
        let req = "POST /events HTTP/1.1\r\nContent-Length: 17\r\n\r\n";
        assert_eq!(parse(req), Err(HttpError::BodyTooLarge(16)));
    }

    #[test]
    fn should_reject_malformed_requests() {
        for bad in [
            "GET /\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "G\0T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(HttpError::Malformed(_))),
                "{bad:?} gave {:?}",
                parse(bad)
            );
        }
        assert_eq!(
            parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HttpError::TransferEncoding)
        );
        assert_eq!(
            parse("GET / HTTP/2.0\r\n\r\n").map(|_| ()),
            Err(HttpError::Version)
        );
    }
}
