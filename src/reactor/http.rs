//! HTTP on a connection, the reactor's side: parse each pipelined request, route it, act on
//! it, queue the reply; a request waiting for Redis holds the ones behind it, so replies go
//! out in order.
//!
//! Output is bounded per connection: once a connection's queue passes `MAX_QUEUED_BYTES`,
//! parsing stops (its further requests wait in the tail, its socket in the kernel) and
//! resumes when the queue has drained (`resume_reading`, from `flush`). Every reply is
//! bounded too: history replies come in pages of at most `HISTORY_PAGE_BYTES`.

use bytes::Bytes;
use serde_json::json;

use super::Reactor;
use super::process::Report;
use crate::broker::{Read, RedisBroker};
use crate::conn::{CloseReason, Phase};
use crate::coordinator::ReadFailure;
use crate::coordinator::pending::{HistoryRequest, Pending};
use crate::history::{Page, PageSize, TooOld};
use crate::http::parse::{Method, Parsed, Request, parse};
use crate::http::publish::largest_frame_bytes;
use crate::http::reply::Reply;
use crate::http::route::{self, Action, route};
use crate::metrics::{ClusterCounts, Gauges, Metrics, limit};

/// The interim answer to `Expect: 100-continue` (RFC 9110 15.2.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Reactor {
    pub(super) fn process_http(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let mut used = 0;
        let head_by = self.clock() + self.config.limits.head_timeout_secs;
        loop {
            let conn = &mut self.conns[key];
            if conn.phase() != Phase::ReadingRequest {
                return used;
            }
            if conn.out.queued_bytes() > self.config.limits.max_queued_bytes {
                conn.leave_input();
                return used;
            }
            let request = match parse(&buf[used..], &self.config.limits) {
                Ok(Parsed::Complete(req, n)) => (req, n),
                Ok(Parsed::AwaitingBody(head)) => {
                    conn.shorten_deadline(head_by);
                    if self.refused_before_body(key, &head) {
                        return buf.len();
                    }
                    return used;
                }
                Ok(Parsed::Partial) => {
                    if used < buf.len() {
                        // A request has begun: it must complete within the head timeout.
                        conn.shorten_deadline(head_by);
                    }
                    return used;
                }
                Err(e) => {
                    let sample = printable_sample(&buf[used..]);
                    self.log_peer(key, log::Level::Info, &format!("{e}; input {sample}"));
                    self.metrics.closed(CloseReason::BadRequest);
                    self.send_reply(key, e.reply(), false, false);
                    return buf.len();
                }
            };
            let (req, n) = request;
            used += n;
            self.conns[key].request_started();
            let keep_alive = req.keep_alive && !self.is_stopping();
            let head_only = req.method == Method::Head;
            match route(&req, &self.config, &self.statics) {
                Action::Reply(reply) => self.send_reply(key, reply, keep_alive, head_only),
                Action::Health => {
                    let reply = self.health();
                    self.send_reply(key, reply, keep_alive, head_only);
                }
                Action::Metrics => {
                    let text = self.metrics_page();
                    let reply = Reply::new(200, "text/plain; version=0.0.4; charset=utf-8", text);
                    self.send_reply(key, reply, keep_alive, head_only);
                }
                Action::Publish(publication) => {
                    let framed = largest_frame_bytes(&publication.event);
                    if framed > self.config.limits.max_queued_bytes {
                        self.refuse_oversized_event(key, framed, keep_alive);
                    } else {
                        self.publish(key, publication, keep_alive);
                    }
                }
                Action::PublishBatch(items) => {
                    use crate::coordinator::outcome::Shape;
                    self.publish_group(key, keep_alive, Shape::Batch, None, items);
                }
                Action::History {
                    channel,
                    since,
                    limit,
                } => {
                    let request = HistoryRequest {
                        key,
                        serial: self.conns[key].serial(),
                        keep_alive,
                        head_only,
                        channel,
                        since,
                        limit,
                    };
                    self.read_history(request);
                }
                Action::Channels {
                    after,
                    limit,
                    grant,
                } => {
                    let waiter = self.http_waiter(key, keep_alive, head_only);
                    self.answer_channels(waiter, after, limit, grant);
                }
                Action::Occupancy { channel } => {
                    let waiter = self.http_waiter(key, keep_alive, head_only);
                    self.answer_occupancy(waiter, channel);
                }
                Action::Refused { denial, reply } => {
                    self.record_denial(key, &denial);
                    self.send_reply(key, reply, keep_alive, head_only);
                }
                Action::Upgrade {
                    accept_key,
                    echo,
                    wanted,
                    grant,
                    deflate,
                } => {
                    self.hold_grant(key, grant);
                    self.open_websocket(key, &accept_key, echo, wanted, deflate);
                    // Frames may follow the handshake in the same packet.
                    return used + self.process_frames(key, &mut buf[used..]);
                }
                Action::Sse { wanted, grant } => {
                    self.hold_grant(key, grant);
                    self.open_sse(key, wanted);
                    return buf.len();
                }
            }
        }
    }

    /// A head whose body is still on its way. With `Expect: 100-continue` the client waits for
    /// our word before sending it (RFC 9110 10.1.1): a refusal now if the body would be
    /// refused anyway (401 without the publish token; a 413 by Content-Length never gets
    /// here), else one `100 Continue`. The refusal closes the connection: the client may send
    /// the body regardless, and it must not be read as the next request. Returns true when
    /// refused.
    fn refused_before_body(&mut self, key: usize, head: &Request<'_>) -> bool {
        let conn = &mut self.conns[key];
        if !head.headers.expect_continue || conn.has_sent_continue() {
            return false;
        }
        match route::refusal_before_body(head, &self.config) {
            Some(Action::Reply(reply)) => {
                self.send_reply(key, reply.closing(), false, false);
                return true;
            }
            Some(Action::Refused { denial, reply }) => {
                self.record_denial(key, &denial);
                self.send_reply(key, reply.closing(), false, false);
                return true;
            }
            _ => {}
        }
        conn.continue_sent();
        conn.queue(key, Bytes::from_static(CONTINUE), &mut self.outbox);
        self.metrics.responded(100);
        false
    }

    /// An event bigger than what a subscriber may have queued would close every subscriber it
    /// reached (as a slow consumer): refused, to the publisher only.
    fn refuse_oversized_event(&mut self, key: usize, framed: usize, keep_alive: bool) {
        let cap = self.config.limits.max_queued_bytes;
        self.metrics.limit_hit(limit::EVENT_BYTES);
        let why = format!(
            "event too large: {framed} bytes framed, subscribers receive at most {cap} (MAX_QUEUED_BYTES)"
        );
        self.warn_peer(key, "event too large", &why);
        self.send_reply(key, Reply::error(413, &why), keep_alive, false);
    }

    /// `GET /events/<channel>`: a page of history as JSON, for scripts. The page is cut by
    /// `limit` and by bytes where it is read: the embedded ring, or Redis's history script,
    /// which reads 64 entries at a time and stops at the byte budget. What a large read still
    /// costs Redis is the page plus one batch of 64 entries (up to 64 x MAX_BODY_BYTES, 4 MiB
    /// with the defaults) in the script's memory while it runs; the reply on the link and in
    /// this process is the page.
    pub(super) fn read_history(&mut self, request: HistoryRequest) {
        if let Some(busy) = self.refuse_read() {
            let reply = Reply::error(503, &busy);
            return self.send_reply(request.key, reply, request.keep_alive, request.head_only);
        }
        let size = page_size(request.limit, self.config.limits.history_page_bytes);
        match self
            .broker
            .read_history(&request.channel, request.since, size)
        {
            Read::Done(result) => {
                let reply = history_reply(&request, result);
                let HistoryRequest {
                    key,
                    keep_alive,
                    head_only,
                    ..
                } = request;
                self.send_reply(key, reply, keep_alive, head_only);
            }
            Read::Unavailable(why) => {
                let reply = Reply::error(503, &why);
                self.send_reply(request.key, reply, request.keep_alive, request.head_only);
            }
            Read::Pending => {
                self.conns[request.key].await_broker();
                self.redis_work.sent(Pending::HttpHistory(request));
            }
        }
    }

    /// Readiness: 200 "ok" while serving; 503 "draining" from SIGTERM on, so a readiness
    /// probe takes this replica out of the load balancer (liveness is `/livez`). Counts are
    /// the whole process's: the other reactors' as of their last report (a second at most).
    pub(super) fn health(&self) -> Reply {
        let (status, state) = if self.is_stopping() {
            (503, "draining")
        } else {
            (200, "ok")
        };
        let (_, gauges) = self.process_metrics();
        let state_of_links = self.broker.state();
        let redis = match gauges.redis_up {
            None => serde_json::Value::Null,
            // Each reactor has its own links: say so if some other reactor's are down.
            Some(false) if state_of_links == "connected" => json!("partial"),
            Some(_) => json!(state_of_links),
        };
        let mut body = json!({
            "status": state,
            "broker": if self.broker.waits() { "redis" } else { "embedded" },
            "redis": redis,
            "connections": self.process.connections(),
            "websockets": gauges.websockets,
            "sse": gauges.sse,
            "reactors": self.process.reactors(),
            "publish_token_required": self.config.publish_token.is_some(),
            "auth": self.config.auth.is_some(),
        });
        if let Some(e) = self.broker.last_error() {
            body["redis_error"] = json!(e);
        }
        if let Some(shards) = self.broker.redis().and_then(RedisBroker::shards) {
            body["shards"] = shards
                .iter()
                .map(|shard| {
                    let slots: Vec<String> = shard
                        .slots
                        .iter()
                        .map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                        .collect();
                    json!({ "master": shard.master, "slots": slots, "replicas": shard.replicas, "state": shard.state })
                })
                .collect();
        }
        Reply::json(status, &body).header("Cache-Control", "no-store")
    }

    /// `/metrics`: every reactor's counters summed, and the process's gauges.
    pub(super) fn metrics_page(&self) -> String {
        let (metrics, gauges) = self.process_metrics();
        metrics.render(&gauges)
    }

    /// The process's counters and gauges: this reactor's live, the others' last reports.
    fn process_metrics(&self) -> (std::borrow::Cow<'_, Metrics>, Gauges) {
        let (metrics, mut gauges) = if self.process.reactors() == 1 {
            (
                std::borrow::Cow::Borrowed(&self.metrics),
                self.local_gauges(),
            )
        } else {
            let mut metrics = Metrics::default();
            let mut gauges = Gauges::default();
            for report in self.process.reports_with(self.index, self.own_report()) {
                metrics.add(&report.metrics);
                gauges.add(&report.gauges);
                let g = &report.gauges;
                gauges.per_reactor.push(g.http + g.websockets + g.sse);
            }
            (std::borrow::Cow::Owned(metrics), gauges)
        };
        if let Some(hub) = self.broker.hub() {
            let (history, idempotency) = hub.gauges();
            gauges.history = Some(history);
            gauges.idempotency = Some(idempotency);
        }
        (metrics, gauges)
    }

    /// What this reactor reports to the others.
    pub(super) fn own_report(&self) -> Report {
        Report {
            metrics: self.metrics.clone(),
            gauges: self.local_gauges(),
        }
    }

    /// This reactor's connections and Redis links.
    fn local_gauges(&self) -> Gauges {
        Gauges {
            http: self.conns.len() - self.websockets - self.sse_streams,
            websockets: self.websockets,
            sse: self.sse_streams,
            redis_up: self.broker.redis().map(RedisBroker::is_ready),
            cluster: self
                .broker
                .redis()
                .and_then(RedisBroker::cluster_counts)
                .map(|c| ClusterCounts {
                    redirects: c.redirects,
                    refreshes: c.refreshes,
                    failovers: c.failovers,
                }),
            ..Gauges::default()
        }
    }

    /// Redis answered a history read (or did not, in time).
    pub(super) fn answer_history(
        &mut self,
        request: HistoryRequest,
        result: Result<Result<Page, TooOld>, ReadFailure>,
    ) {
        let reply = match result {
            Ok(result) => history_reply(&request, result),
            Err(failure) if failure.timed_out => {
                Reply::json(504, &json!({ "error": "redis timeout" }))
            }
            Err(failure) => Reply::error(503, &failure.reason),
        };
        let reply = reply.for_head(request.head_only);
        self.answer_waiting(request.key, request.serial, reply, request.keep_alive);
    }
}

/// The wrapper of a history reply around its events: `{"channel":"<64 bytes>","events":[`,
/// `],"more":false,"next":"<20 digits>-<20 digits>"}` and a newline, rounded up.
const HISTORY_REPLY_OVERHEAD: usize = 192;

/// What one `GET /events/<channel>` may read: `limit` events, and event bytes such that the
/// whole reply (events, the commas between them, the wrapper) stays within `page_bytes`.
fn page_size(limit: usize, page_bytes: usize) -> PageSize {
    PageSize {
        events: limit,
        bytes: page_bytes.saturating_sub(HISTORY_REPLY_OVERHEAD + limit),
    }
}

/// `{"channel":..,"events":[..],"more":..,"next":..}`: a page of events as stored, oldest
/// first, or 410 when the history no longer reaches back to `since`. A page holds at least
/// one event, whatever its size, so paging always moves on.
///
/// `next` is the last event's id: what to pass as `since` to go on from this page. `more`
/// says events were left out by `limit` or `HISTORY_PAGE_BYTES`: with `since`, they follow
/// `next` (and a `Link: <...>; rel="next"` header gives that page's URL); without it, the page
/// holds the latest events and those left out are older ones.
fn history_reply(request: &HistoryRequest, result: Result<Page, TooOld>) -> Reply {
    let channel = &request.channel;
    let Page { events, more } = match result {
        Ok(page) => page,
        Err(too_old) => {
            return Reply::json(
                410,
                &json!({ "error": too_old.reason, "reset": true, "channel": channel }),
            );
        }
    };
    let event_bytes: usize = events.iter().map(|e| e.json.len() + 1).sum();
    let mut body = Vec::with_capacity(event_bytes + HISTORY_REPLY_OVERHEAD);
    body.extend_from_slice(format!("{{\"channel\":{},\"events\":[", json!(channel)).as_bytes());
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&event.json);
    }
    let next = events.last().map(|e| e.id);
    body.extend_from_slice(format!("],\"more\":{more}").as_bytes());
    if let Some(next) = next {
        body.extend_from_slice(format!(",\"next\":\"{next}\"").as_bytes());
    }
    body.extend_from_slice(b"}\n");
    let reply = Reply::new(200, "application/json", body);
    match (next, request.since) {
        // Channel names are URL-safe (`channel::validate`).
        (Some(next), Some(_)) if more => reply.header(
            "Link",
            format!(
                "</events/{channel}?since={next}&limit={}>; rel=\"next\"",
                request.limit
            ),
        ),
        _ => reply,
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
    mask_query_token(&mut sample);
    sample.truncate(SHOWN);
    format!("{sample:?}")
}

/// `?token=<jwt>` (how browsers send a token) is a credential too: its value becomes `***`.
fn mask_query_token(sample: &mut String) {
    const KEY: &str = "token=";
    let mut from = 0;
    while let Some(at) = sample[from..].find(KEY) {
        let start = from + at + KEY.len();
        let end = sample[start..]
            .find(['&', ' ', '#'])
            .map_or(sample.len(), |n| start + n);
        sample.replace_range(start..end, "***");
        from = start + 3;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;
    use crate::history::StoredEvent;

    fn request(since: Option<EventId>, limit: usize) -> HistoryRequest {
        HistoryRequest {
            key: 0,
            serial: 0,
            keep_alive: true,
            head_only: false,
            channel: "c".into(),
            since,
            limit,
        }
    }

    fn stored(ms: u64, bytes: usize) -> StoredEvent {
        let id = EventId { ms, seq: 0 };
        let pad = "x".repeat(bytes);
        StoredEvent {
            id,
            json: Bytes::from(format!("{{\"id\":\"{id}\",\"message\":\"{pad}\"}}")),
        }
    }

    #[test]
    fn should_keep_a_full_page_within_its_bytes() {
        for (limit, page_bytes, pad) in [(1000, 1 << 20, 0), (3, 4096, 1000), (50, 65536, 900)] {
            let size = page_size(limit, page_bytes);
            // The largest page a read may return for this size (what `Page::cut` admits):
            // events of the longest ids while their JSON fits in `size.bytes`.
            let mut events = Vec::new();
            let mut bytes = 0;
            while events.len() < size.events {
                let ms = u64::MAX - events.len() as u64;
                let mut event = stored(ms, pad);
                event.id.seq = u64::MAX;
                if bytes + event.json.len() > size.bytes {
                    break;
                }
                bytes += event.json.len();
                events.push(event);
            }
            let mut request = request(Some(EventId { ms: 1, seq: 0 }), limit);
            request.channel = "c".repeat(64);
            let reply = history_reply(&request, Ok(Page { events, more: true }));
            let body = reply.body.len();
            assert!(body <= page_bytes, "{limit} {page_bytes}: {body}");
        }
    }

    #[test]
    fn should_say_where_the_next_page_starts() {
        let events: Vec<StoredEvent> = (1..=3).map(|ms| stored(ms, 10)).collect();
        let since = Some(EventId { ms: 0, seq: 0 });
        let page = Page {
            events: events.clone(),
            more: true,
        };
        let reply = history_reply(&request(since, 3), Ok(page));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["events"].as_array().unwrap().len(), 3);
        assert_eq!(
            (body["more"].as_bool(), body["next"].as_str()),
            (Some(true), Some("3-0"))
        );
        let link = &reply.headers.iter().find(|(n, _)| *n == "Link").unwrap().1;
        assert_eq!(link, "</events/c?since=3-0&limit=3>; rel=\"next\"");
        // Without `since` the page is the latest events: nothing follows it to link to.
        let latest = history_reply(&request(None, 3), Ok(Page { events, more: true }));
        assert!(latest.headers.is_empty());
        let last = history_reply(&request(since, 3), Ok(Page::default()));
        assert_eq!(
            &last.body[..],
            b"{\"channel\":\"c\",\"events\":[],\"more\":false}\n"
        );
        assert!(last.headers.is_empty());
    }

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
        let query = printable_sample(b"GET /ws?channels=a&token=eyJh.eyJ.sig&x=1 HTTP/1.1\r\n");
        assert_eq!(query, "\"GET /ws?channels=a&token=***&x=1 HTTP/1.1..\"");
    }
}
