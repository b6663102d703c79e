//! HTTP on a connection, the reactor's side: parse each pipelined request, route it, act on
//! it, queue the reply; a request waiting for Redis holds the ones behind it, so replies go
//! out in order.

use serde_json::json;

use super::{CLOSE_TIMEOUT_SECS, Reactor};
use crate::broker::Broker;
use crate::conn::Phase;
use crate::http::parse::{Method, parse_request};
use crate::http::reply::Reply;
use crate::http::route::{Action, route};
use crate::metrics::{Gauges, reason};

impl Reactor {
    pub(super) fn process_http(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let mut used = 0;
        let head_by = self.clock() + self.config.limits.head_timeout_secs;
        loop {
            let conn = &mut self.conns[key];
            if conn.phase != Phase::ReadingRequest {
                return used;
            }
            if conn.out.queued_bytes() > self.config.limits.max_queued_bytes {
                conn.read_pending = true;
                return used;
            }
            let request = match parse_request(&buf[used..], &self.config.limits) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => {
                    if used < buf.len() {
                        // A request has begun: it must complete within the head timeout.
                        conn.deadline = conn.deadline.min(head_by);
                    }
                    return used;
                }
                Err(e) => {
                    let sample = printable_sample(&buf[used..]);
                    self.log_peer(key, log::Level::Info, &format!("{e}; input {sample}"));
                    self.metrics.closed(reason::BAD_REQUEST);
                    self.send_reply(key, e.reply(), false, false);
                    return buf.len();
                }
            };
            let (req, n) = request;
            used += n;
            let keep_alive = req.keep_alive && self.shutdown_deadline.is_none();
            let head_only = req.method == Method::Head;
            match route(&req, &self.config, &self.statics) {
                Action::Reply(reply) => self.send_reply(key, reply, keep_alive, head_only),
                Action::Health => {
                    let reply = self.health();
                    self.send_reply(key, reply, keep_alive, head_only);
                }
                Action::Metrics => {
                    let text = self.metrics.render(&self.gauges());
                    let reply = Reply::new(200, "text/plain; version=0.0.4; charset=utf-8", text);
                    self.send_reply(key, reply, keep_alive, head_only);
                }
                Action::Publish(event) => self.publish(key, event, keep_alive),
                Action::History {
                    channel,
                    since,
                    limit,
                } => self.read_history(key, channel, since, limit, keep_alive),
                Action::Upgrade {
                    accept_key,
                    echo,
                    wanted,
                } => {
                    self.open_websocket(key, &accept_key, echo, wanted);
                    // Frames may follow the handshake in the same packet.
                    return used + self.process_frames(key, &mut buf[used..]);
                }
                Action::Sse { wanted } => {
                    self.open_sse(key, wanted);
                    return buf.len();
                }
            }
        }
    }

    /// Queues a reply; closes after it when asked to or when the request was not keep-alive.
    pub(super) fn send_reply(
        &mut self,
        key: usize,
        reply: Reply,
        keep_alive: bool,
        head_only: bool,
    ) {
        let close = reply.close || !keep_alive;
        self.metrics.responded(reply.status);
        let now = self.clock();
        let conn = &mut self.conns[key];
        let (head, body) = reply.encode(!close, head_only);
        conn.queue(key, head, &mut self.outbox);
        if let Some(body) = body {
            conn.queue(key, body, &mut self.outbox);
        }
        if close {
            conn.phase = Phase::Closing;
            conn.deadline = now + CLOSE_TIMEOUT_SECS;
        } else {
            conn.deadline = now + self.config.limits.idle_timeout_secs;
        }
    }

    pub(super) fn health(&self) -> Reply {
        let redis = match &self.broker {
            Broker::Embedded(_) => serde_json::Value::Null,
            broker => json!(broker.state()),
        };
        let mut body = json!({
            "status": "ok",
            "broker": if matches!(self.broker, Broker::Embedded(_)) { "embedded" } else { "redis" },
            "redis": redis,
            "connections": self.conns.len(),
            "websockets": self.websockets,
            "sse": self.sse_streams,
            "publish_token_required": self.config.publish_token.is_some(),
        });
        if let Some(e) = self.broker.last_error() {
            body["redis_error"] = json!(e);
        }
        Reply::json(200, &body).header("Cache-Control", "no-store")
    }

    pub(super) fn gauges(&self) -> Gauges {
        Gauges {
            http: self.conns.len() - self.websockets - self.sse_streams,
            websockets: self.websockets,
            sse: self.sse_streams,
            redis_up: match &self.broker {
                Broker::Embedded(_) => None,
                Broker::Redis(redis) => Some(redis.is_ready()),
            },
            history: match &self.broker {
                Broker::Embedded(history) => Some((history.bytes(), history.channels())),
                Broker::Redis(_) => None,
            },
        }
    }

    /// Parses what waited in the tail, and reads again if the socket may hold more.
    pub(super) fn resume_reading(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.phase != Phase::ReadingRequest {
            return;
        }
        if !conn.tail.is_empty() {
            let buf = std::mem::take(&mut conn.tail);
            self.process_tail(key, buf);
        }
        if let Some(conn) = self.conns.get_mut(key)
            && conn.read_pending
        {
            conn.read_pending = false;
            self.read_later.push(key);
        }
    }
}

/// The first bytes of bad input for a log line: non-printables masked, and the values of
/// headers that carry credentials replaced, so a token never reaches the logs.
fn printable_sample(bytes: &[u8]) -> String {
    const SHOWN: usize = 48;
    const SECRET_HEADERS: [&[u8]; 3] = [b"authorization", b"proxy-authorization", b"cookie"];
    let mut sample = String::new();
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let secret = SECRET_HEADERS
            .iter()
            .find(|name| line.len() > name.len() && line[..name.len()].eq_ignore_ascii_case(name));
        let shown: &[u8] = match secret {
            Some(name) => &line[..name.len()],
            None => line,
        };
        sample.extend(shown.iter().map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        }));
        if secret.is_some() {
            sample.push_str(": ***..");
        }
        if sample.len() >= SHOWN {
            break;
        }
    }
    sample.truncate(SHOWN);
    format!("{sample:?}")
}

#[cfg(test)]
mod tests {
    use super::printable_sample;

    #[test]
    fn should_mask_credentials_in_log_samples() {
        let input = b"POST /events HTTP/1.1\r\nAuthorization: Bearer tok3n\r\nBroken header\r\n";
        let sample = printable_sample(input);
        assert!(!sample.contains("tok3n"), "{sample}");
        assert!(
            sample.starts_with("\"POST /events HTTP/1.1..Authorization: ***"),
            "{sample}"
        );
        assert_eq!(printable_sample(b"\x00ab"), "\".ab\"");
    }
}
