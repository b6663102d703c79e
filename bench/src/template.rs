//! `--publish-template`: the publish request for servers whose publish API
//! is not Herald's, e.g.
//! `POST /api/publish {"channel":"{channel}","data":{"m":"{marked}"}}`.
//! The method, the path (query allowed) and an optional body, with the
//! event's fields in braces:
//!
//! - `{type}`: `--event-type`;
//! - `{message}`: the bench message `<seq>:<sent_ns>[:<scheduled_ns>]`;
//! - `{marked}`: `<type>:<message>`, which the clients find in whatever
//!   envelope the server wraps around it (any JSON string starting with it),
//!   so put it where the server passes it through;
//! - `{seq}`: the event's number; `{channel}`: its channel (`ch<seq % N>`
//!   with `--channels N`, else `--template-channel`).
//!
//! Other braces (a JSON body's own) are left as they are. This module only
//! renders requests; the publisher sends them.

use std::fmt::Write as _;

/// A parsed `--publish-template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTemplate {
    method: String,
    path: String,
    body: Option<String>,
}

/// One event's fields, for rendering.
pub struct EventFields<'a> {
    pub kind: &'a str,
    pub message: &'a str,
    pub seq: u64,
    pub channel: &'a str,
}

const PLACEHOLDERS: [&str; 5] = ["{type}", "{message}", "{marked}", "{seq}", "{channel}"];

impl PublishTemplate {
    /// Parses `METHOD /path[?query] [body]`.
    pub fn parse(s: &str) -> Result<PublishTemplate, String> {
        let s = s.trim();
        let (method, rest) = s
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{s}: expected METHOD /PATH [BODY]"))?;
        let rest = rest.trim_start();
        let (path, body) = match rest.split_once(char::is_whitespace) {
            Some((p, b)) => (p, Some(b.trim().to_string()).filter(|b| !b.is_empty())),
            None => (rest, None),
        };
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "{method}: the method must be an upper-case word, e.g. POST"
            ));
        }
        if !path.starts_with('/') {
            return Err(format!("{path}: the path must start with /"));
        }
        let t = PublishTemplate {
            method: method.to_string(),
            path: path.to_string(),
            body,
        };
        let all = format!("{} {}", t.path, t.body.as_deref().unwrap_or(""));
        if !all.contains("{message}") && !all.contains("{marked}") {
            return Err(
                "the template must carry {message} or {marked}: it is how clients recognise \
                 and time each event"
                    .into(),
            );
        }
        Ok(t)
    }

    /// Appends the HTTP/1.1 request for one event to `out`. `headers` are
    /// extra `Name: value` lines (`--publish-header`).
    pub fn render(&self, out: &mut Vec<u8>, host: &str, headers: &[String], f: &EventFields) {
        let path = fill(&self.path, f);
        let body = self.body.as_deref().map(|b| fill(b, f));
        let mut head = format!("{} {path} HTTP/1.1\r\nHost: {host}\r\n", self.method);
        let has_content_type = headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-type:"));
        for h in headers {
            let _ = write!(head, "{h}\r\n");
        }
        match &body {
            Some(b) => {
                if !has_content_type {
                    let kind = if b.starts_with('{') || b.starts_with('[') {
                        "application/json"
                    } else {
                        "application/x-www-form-urlencoded"
                    };
                    let _ = write!(head, "Content-Type: {kind}\r\n");
                }
                let _ = write!(head, "Content-Length: {}\r\n\r\n", b.len());
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(b.as_bytes());
            }
            None => {
                head.push_str("Content-Length: 0\r\n\r\n");
                out.extend_from_slice(head.as_bytes());
            }
        }
    }
}

/// `s` with every placeholder replaced by the event's field.
fn fill(s: &str, f: &EventFields) -> String {
    let mut out = String::with_capacity(s.len() + 64);
    let mut rest = s;
    // Bounded: each iteration consumes at least one byte of `rest`.
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        match PLACEHOLDERS.iter().find(|p| tail.starts_with(**p)) {
            Some(p) => {
                match *p {
                    "{type}" => out.push_str(f.kind),
                    "{message}" => out.push_str(f.message),
                    "{marked}" => {
                        let _ = write!(out, "{}:{}", f.kind, f.message);
                    }
                    "{seq}" => {
                        let _ = write!(out, "{}", f.seq);
                    }
                    _ => out.push_str(f.channel),
                }
                rest = &tail[p.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: EventFields = EventFields {
        kind: "bench",
        message: "7:1700:1600",
        seq: 7,
        channel: "news",
    };

    #[test]
    fn renders_a_json_body_with_the_fields() {
        let t = PublishTemplate::parse(
            r#"POST /api/publish {"channel":"{channel}","data":{"m":"{marked}","seq":{seq}}}"#,
        )
        .unwrap();
        let mut out = Vec::new();
        t.render(&mut out, "h:1", &["X-API-Key: k".into()], &EVENT);
        let body = r#"{"channel":"news","data":{"m":"bench:7:1700:1600","seq":7}}"#;
        let want = format!(
            "POST /api/publish HTTP/1.1\r\nHost: h:1\r\nX-API-Key: k\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn renders_a_query_only_request() {
        let t = PublishTemplate::parse("PUT /pub/{channel}?t={type}&m={message}").unwrap();
        let mut out = Vec::new();
        t.render(&mut out, "h", &[], &EVENT);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PUT /pub/news?t=bench&m=7:1700:1600 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn refuses_what_cannot_work() {
        for bad in [
            "",
            "POST",
            "post /x {message}",
            "POST x {message}",
            r#"POST /x {"a":"{seq}"}"#,
        ] {
            assert!(PublishTemplate::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(fill("{a}{", &EVENT), "{a}{");
    }
}
