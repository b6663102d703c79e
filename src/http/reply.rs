//! Replies: status line, headers and body, encoded into shared bytes for the output queue.
//! Every error is a JSON body `{"error": "..."}`, and each `HttpError` maps to its status here,
//! in one place.

use std::fmt::Write as _;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use super::parse::HttpError;

/// Bodies up to this size are copied in behind the head, so the reply is one buffer and one
/// write; larger ones (static files) go as their own shared buffer, never copied.
const INLINE_BODY_BYTES: usize = 4096;

/// Security headers for every reply; the page gets a Content-Security-Policy on top.
const COMMON_HEADERS: &str = "Server: herald\r\nX-Content-Type-Options: nosniff\r\n";

/// The page runs only its own script and style, and talks only to its own origin.
pub const PAGE_CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// Close the connection once this reply is sent.
    pub close: bool,
    /// Send the head only: the answer to a HEAD request, which announces the length of the
    /// body a GET would get but carries none (RFC 9110 9.3.2).
    omit_body: bool,
    /// The GET reply would be a stream of unknown length (SSE): no `Content-Length` at all, as
    /// RFC 9110 8.6 allows only the length the GET body would have.
    length_unknown: bool,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
            close: false,
            omit_body: false,
            length_unknown: false,
        }
    }

    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        let mut body = serde_json::to_vec(value).expect("bug: replies hold strings and numbers");
        body.push(b'\n');
        Reply::new(status, "application/json", body)
    }

    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(status, &json!({ "error": message }))
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn closing(mut self) -> Reply {
        self.close = true;
        self
    }

    /// The reply to a HEAD request (when `head_only` is true): headers only.
    pub fn for_head(mut self, head_only: bool) -> Reply {
        self.omit_body |= head_only;
        self
    }

    /// The head of a stream whose length is not known (only ever sent for HEAD).
    pub fn stream_head(mut self) -> Reply {
        self.length_unknown = true;
        self.omit_body = true;
        self
    }

    /// The reply as buffers for an output queue: the head, with the body behind it when it is
    /// small, else the body as a second buffer. `head_only` answers a HEAD request.
    pub fn encode(&self, keep_alive: bool, head_only: bool) -> (Bytes, Option<Bytes>) {
        let head_only = head_only || self.omit_body;
        let body = if head_only { &[][..] } else { &self.body[..] };
        let inline = body.len() <= INLINE_BODY_BYTES;
        let mut out = String::with_capacity(256 + if inline { body.len() } else { 0 });
        self.write_head(&mut out, keep_alive);
        if !inline {
            return (Bytes::from(out), Some(self.body.clone()));
        }
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        (Bytes::from(out), None)
    }

    /// The head and body in one buffer.
    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let (head, body) = self.encode(keep_alive, false);
        let mut out = head.to_vec();
        out.extend_from_slice(body.as_deref().unwrap_or_default());
        out
    }

    fn write_head(&self, out: &mut String, keep_alive: bool) {
        let connection = if keep_alive && !self.close {
            "keep-alive"
        } else {
            "close"
        };
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n{COMMON_HEADERS}Content-Type: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
        );
        if !self.length_unknown {
            let _ = write!(out, "Content-Length: {}\r\n", self.body.len());
        }
        let _ = write!(out, "Connection: {connection}\r\n");
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
    }
}

impl HttpError {
    /// The one wire outcome of each request error. All close the connection.
    pub fn reply(&self) -> Reply {
        let status = match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge(_) => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::TransferEncoding => 501,
            HttpError::UpgradeWithBody => 400,
            HttpError::ExpectationFailed => 417,
            HttpError::Version => 505,
        };
        Reply::error(status, &self.to_string()).closing()
    }
}

/// The standard reason phrase (RFC 9110 section 15) of every status Herald sends. A status
/// missing here would still get its class's generic phrase, never a made-up one; a unit test
/// checks every status written in the source is listed.
pub fn reason(status: u16) -> &'static str {
    standard_reason(status).unwrap_or(match status / 100 {
        1 => "Informational",
        2 => "Success",
        3 => "Redirection",
        4 => "Client Error",
        _ => "Server Error",
    })
}

fn standard_reason(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_encode_a_json_error_with_its_length_in_one_buffer() {
        let reply = Reply::error(404, "not found");
        let (wire, rest) = reply.encode(true, false);
        assert_eq!(rest, None);
        let wire = String::from_utf8(wire.to_vec()).unwrap();
        let (head, body) = wire.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains("Content-Type: application/json\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", reply.body.len())));
        assert!(wire.contains("Connection: keep-alive\r\n\r\n"));
        assert_eq!(body, "{\"error\":\"not found\"}\n");
    }

    #[test]
    fn should_send_a_large_body_as_its_own_buffer_and_none_for_head() {
        let file = Bytes::from(vec![b'x'; INLINE_BODY_BYTES + 1]);
        let reply = Reply::new(200, "text/plain", file.clone());
        let (head, body) = reply.encode(true, false);
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(body, Some(file.clone()));
        let (head_only, body) = reply.encode(true, true);
        assert_eq!((head_only, body), (head.clone(), None));
        assert_eq!(reply.to_bytes(true).len(), head.len() + file.len());
    }

    #[test]
    fn should_close_after_request_errors() {
        let reply = HttpError::HeadTooLarge(8192).reply();
        assert_eq!(reply.status, 431);
        let wire = String::from_utf8(reply.to_bytes(true)).unwrap();
        assert!(wire.contains("Connection: close\r\n"));
    }

    /// Every status the source can send: the literal after a reply constructor, a
    /// `responded(..)` count or a hand-written status line, and every number in a
    /// `status = ...;` statement (the `HttpError` table, `if .. { 422 } else { 400 }`).
    /// A status added anywhere later without its phrase fails here.
    fn statuses_in_source() -> std::collections::BTreeSet<u16> {
        const MARKERS: [&str; 6] = [
            "Reply::error(",
            "Reply::json(",
            "Reply::new(",
            "responded(",
            "HTTP/1.1 ",
            "status = ",
        ];
        let mut found = std::collections::BTreeSet::new();
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for marker in MARKERS {
                    for (at, _) in text.match_indices(marker) {
                        let rest = text[at + marker.len()..].trim_start();
                        let scope = if marker == "status = " {
                            &rest[..rest.find(';').unwrap_or(rest.len())]
                        } else {
                            &rest[..rest.len().min(3)]
                        };
                        found.extend(numbers(scope).filter(|n| (100..600).contains(n)));
                    }
                }
            }
        }
        found
    }

    /// The 3-digit numbers standing alone in `text`.
    fn numbers(text: &str) -> impl Iterator<Item = u16> + '_ {
        text.split(|c: char| !c.is_ascii_digit())
            .filter(|word| word.len() == 3)
            .filter_map(|word| word.parse().ok())
    }

    #[test]
    fn should_give_every_status_the_code_sends_its_standard_reason() {
        let statuses = statuses_in_source();
        // The scan itself must see the statuses it exists for.
        for expected in [101, 200, 401, 410, 413, 417, 431, 503] {
            assert!(
                statuses.contains(&expected),
                "{expected} not found in {statuses:?}"
            );
        }
        for status in statuses {
            let phrase = standard_reason(status)
                .unwrap_or_else(|| panic!("status {status} has no standard reason phrase"));
            let line = String::from_utf8(Reply::error(status, "x").to_bytes(false)).unwrap();
            assert!(
                line.starts_with(&format!("HTTP/1.1 {status} {phrase}\r\n")),
                "{line}"
            );
        }
        assert_eq!(reason(410), "Gone");
        assert_eq!(reason(599), "Server Error");
    }
}
