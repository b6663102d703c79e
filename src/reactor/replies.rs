//! What every part of the reactor does to one connection, at the bottom of its calls: queue
//! a reply or a notice on it, answer a request that waited for Redis, close it, log against
//! it, read the turn's clock. Nothing here parses or decides; it calls nothing above it (a
//! request answered late has its pipelined requests parsed when its reply is flushed).

use super::CLOSE_TIMEOUT_SECS;
use super::Reactor;
use super::process::Stage;
use crate::conn::{CloseReason, Phase};
use crate::coordinator::pending::HttpWaiter;
use crate::event::EventId;
use crate::http::reply::Reply;
use crate::sse;
use crate::ws::frame;
use serde_json::json;

impl Reactor {
    /// Seconds since start: the coarse clock of connection deadlines, read once per turn (a
    /// clock read per request was a visible share of a publish's CPU).
    pub(super) fn clock(&self) -> u32 {
        self.now_secs
    }

    /// True from the first SIGTERM on: `/health` says draining, replies close. The process's
    /// stage too, not only this reactor's life: a reactor hears of the signal on its next
    /// wake-up, and until then its `/health` must not answer 200 while another's says 503.
    pub(super) fn is_stopping(&self) -> bool {
        self.life.is_stopping() || self.process.stage() != Stage::Serving
    }

    /// A warning a peer caused, logged through `RateLog`: at most one line per `kind` per
    /// interval, however many peers or requests cause it.
    pub(super) fn warn_peer(&mut self, key: usize, kind: &'static str, message: &str) {
        let peer = self
            .conns
            .get(key)
            .and_then(|c| c.stream.peer_addr().ok())
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        self.warnings
            .warn(kind, &format!("conn {key} {peer}: {message}"));
    }

    pub(super) fn log_peer(&self, key: usize, level: log::Level, message: &str) {
        if !log::log_enabled!(level) {
            return;
        }
        let peer = self
            .conns
            .get(key)
            .and_then(|c| c.stream.peer_addr().ok())
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        log::log!(level, "conn {key} {peer}: {message}");
    }

    /// Marks a connection closed; it is freed at the end of the turn.
    pub(super) fn close_now(&mut self, key: usize, why: CloseReason, detail: &str) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.close() {
            return;
        }
        self.later.closed.push(key);
        if why != CloseReason::Done {
            self.metrics.closed(why);
            self.log_peer(
                key,
                log::Level::Debug,
                &format!("closed ({}): {detail}", why.label()),
            );
        }
    }

    pub(super) fn begin_closing(&mut self, key: usize) {
        let deadline = self.clock() + CLOSE_TIMEOUT_SECS;
        self.conns[key].begin_closing(deadline);
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
            conn.begin_closing(now + CLOSE_TIMEOUT_SECS);
        } else {
            conn.set_deadline(now + self.config.limits.idle_timeout_secs);
        }
    }

    pub(super) fn http_waiter(&self, key: usize, keep_alive: bool, head_only: bool) -> HttpWaiter {
        HttpWaiter {
            key,
            serial: self.conns[key].serial(),
            keep_alive,
            head_only,
        }
    }

    /// A message for this subscriber alone (acknowledgement, error, reset).
    pub(super) fn send_notice(&mut self, key: usize, notice: serde_json::Value) {
        let body = notice.to_string();
        let conn = &mut self.conns[key];
        let bytes = match conn.phase() {
            Phase::WebSocket => frame::text(body.as_bytes()),
            Phase::Sse => {
                let op = notice["op"].as_str().unwrap_or("notice");
                sse::record(None, Some(op), body.as_bytes())
            }
            _ => return,
        };
        conn.queue(key, bytes, &mut self.outbox);
    }

    /// Tells every subscriber of a channel that events may be missing (the history could not
    /// cover a gap): like a client's own reset, they should reload.
    pub(super) fn reset_channel(&mut self, name: &str, since: EventId, reason: &str) {
        let Some(channel) = self.fanout.lookup(name) else {
            return;
        };
        let keys = self.fanout.subscribers(channel).to_vec();
        let notice =
            json!({ "op": "reset", "channel": name, "since": since.to_string(), "reason": reason });
        for key in keys {
            self.send_notice(key, notice.clone());
        }
    }

    /// Answers a request that waited for Redis, if its connection is still the same one.
    /// Its pipelined requests go on once this reply is flushed (`flush` resumes reading), as
    /// after any back-pressure: nothing here calls up into parsing.
    pub(super) fn answer_waiting(
        &mut self,
        key: usize,
        serial: u32,
        reply: Reply,
        keep_alive: bool,
    ) {
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.awaits_answer(serial)) else {
            return;
        };
        conn.broker_answered();
        self.send_reply(key, reply, keep_alive, false);
    }
}
