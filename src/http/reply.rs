//! Replies: status line, headers and body, encoded into shared bytes for the output queue.
//! Every error is a JSON body `{"error": "..."}`, and each `HttpError` maps to its status here,
//! in one place.

use bytes::Bytes;
use serde_json::json;

use super::parse::HttpError;

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
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
            close: false,
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec(value).expect("bug: a Value always serializes");
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

    /// The head as bytes; the body is sent as its own shared buffer (no copy of static files).
    pub fn encode_head(&self, keep_alive: bool) -> Bytes {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n{COMMON_HEADERS}Content-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            if keep_alive && !self.close {
                "keep-alive"
            } else {
                "close"
            },
        );
        for (name, value) in &self.headers {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        Bytes::from(head)
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
            HttpError::Version => 505,
        };
        Reply::error(status, &self.to_string()).closing()
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
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
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_encode_a_json_error_with_its_length() {
        let reply = Reply::error(404, "not found");
        let head = String::from_utf8(reply.encode_head(true).to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.contains("Content-Type: application/json\r\n"));
        assert!(head.contains(&format!("Content-Length: {}\r\n", reply.body.len())));
        assert!(head.contains("Connection: keep-alive\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
        assert_eq!(&reply.body[..], b"{\"error\":\"not found\"}\n");
    }

    #[test]
    fn should_close_after_request_errors() {
        let reply = HttpError::HeadTooLarge(8192).reply();
        assert_eq!(reply.status, 431);
        let head = String::from_utf8(reply.encode_head(true).to_vec()).unwrap();
        assert!(head.contains("Connection: close\r\n"));
    }
}
