//! Publishing and history, the reactor's side: a request goes to the broker; an event comes
//! back (at once when embedded, through the Redis subscription otherwise) and is framed once
//! per transport and handed to the fan-out; Redis replies are matched, in order, to the
//! requests that wait for them.

use std::time::Instant;

use bytes::Bytes;
use log::{error, warn};
use serde::Serialize;
use serde_json::json;

use super::Reactor;
use super::resume::PageRead;
use crate::broker::{self, Publish, Read};
use crate::conn::Phase;
use crate::event::{Event, EventId};
use crate::fanout::Frames;
use crate::history::{Page, PageSize, TooOld};
use crate::http::reply::Reply;
use crate::resp::cmd;
use crate::{event, sse, ws::frame};

/// What an outstanding Redis command is for. Replies arrive in the order commands were
/// sent, so a FIFO of these matches each reply to its purpose.
#[derive(Debug)]
pub(super) enum Pending {
    Publish {
        key: usize,
        serial: u32,
        keep_alive: bool,
        kind: String,
        channel: String,
        since: Instant,
    },
    HttpHistory {
        key: usize,
        serial: u32,
        keep_alive: bool,
        channel: String,
        since: Option<EventId>,
    },
    Replay(PageRead),
    /// The events a channel missed while this replica's Redis subscription was down.
    CatchUp {
        channel: String,
        since: EventId,
    },
}

/// A channel whose Redis subscription was lost and restored: its history since the last event
/// delivered is being read; live events wait here meanwhile, so nothing is lost or doubled.
#[derive(Debug)]
pub(super) struct CatchUp {
    since: EventId,
    read_sent: bool,
    live: Vec<(Option<EventId>, Bytes)>,
}

/// A publish held until this replica's subscription to its channel is confirmed.
#[derive(Debug)]
pub(super) struct Parked {
    key: usize,
    serial: u32,
    keep_alive: bool,
    event: Event,
    since: Instant,
}

/// How long a publish may wait for a subscription to be confirmed before it gets a 503.
const PARKED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Reactor {
    /// Whether local clients of `channel` would get an event only live (so the Redis
    /// subscription must be confirmed first). Clients that are resuming get it from the
    /// history (a replay, or the channel catching up after a lost subscription).
    fn needs_live_subscription(&self, channel: &str) -> bool {
        self.fanout.lookup(channel).is_some()
            && !self.catch_ups.contains_key(channel)
            && !self.awaiting_redis.iter().any(|r| &*r.channel == channel)
    }

    pub(super) fn publish(&mut self, key: usize, event: Event, keep_alive: bool) {
        let needs_live = self.needs_live_subscription(&event.channel);
        match self.broker.publish(&event, needs_live) {
            Publish::DeliverNow { id, json } => {
                self.metrics.events_published += 1;
                self.metrics.events_received += 1;
                self.count_history_evictions();
                let receivers = self.broadcast(&event.channel, Some(id), &json);
                let reply = published_reply(&event, id, receivers as i64);
                self.send_reply(key, reply, keep_alive, false);
            }
            Publish::Unavailable(why) => {
                self.log_peer(key, log::Level::Warn, &format!("publish refused: {why}"));
                self.send_reply(key, Reply::error(503, &why), keep_alive, false);
            }
            Publish::Pending => {
                let conn = &mut self.conns[key];
                conn.phase = Phase::AwaitingBroker;
                self.pending.push_back(Pending::Publish {
                    key,
                    serial: conn.serial,
                    keep_alive,
                    kind: event.kind,
                    channel: event.channel,
                    since: Instant::now(),
                });
            }
            Publish::AwaitSubscription => {
                let conn = &mut self.conns[key];
                conn.phase = Phase::AwaitingBroker;
                self.parked.push(Parked {
                    key,
                    serial: conn.serial,
                    keep_alive,
                    event,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Moves the embedded history's evictions (by cap) into `/metrics`; also called by the
    /// once-a-second sweep, which expires history (`HISTORY_TTL_SECS`).
    pub(super) fn count_history_evictions(&mut self) {
        use crate::metrics::limit;
        let broker::Broker::Embedded(history) = &mut self.broker else {
            return;
        };
        let evicted = history.take_evictions();
        self.metrics
            .limit_hits(limit::HISTORY_CHANNELS, evicted.channels);
        self.metrics.limit_hits(limit::HISTORY_BYTES, evicted.bytes);
        self.metrics.limit_hits(limit::HISTORY_TTL, evicted.ttl);
    }

    /// Sends the publishes held for a subscription that is now confirmed; answers 503 to
    /// those held too long or whose Redis link went down (`give_up`).
    pub(super) fn retry_parked(&mut self, give_up: Option<&str>) {
        for parked in std::mem::take(&mut self.parked) {
            let alive = self
                .conns
                .get(parked.key)
                .is_some_and(|c| c.serial == parked.serial && c.phase == Phase::AwaitingBroker);
            if !alive {
                continue;
            }
            let expired = parked.since.elapsed() >= PARKED_TIMEOUT;
            let outcome = match give_up {
                Some(why) => Publish::Unavailable(why.to_string()),
                None if expired => Publish::Unavailable(
                    "Redis unavailable: the channel's subscription was not confirmed in time"
                        .into(),
                ),
                None => {
                    let needs_live = self.needs_live_subscription(&parked.event.channel);
                    self.broker.publish(&parked.event, needs_live)
                }
            };
            match outcome {
                Publish::AwaitSubscription => self.parked.push(parked),
                Publish::Pending => self.pending.push_back(Pending::Publish {
                    key: parked.key,
                    serial: parked.serial,
                    keep_alive: parked.keep_alive,
                    kind: parked.event.kind,
                    channel: parked.event.channel,
                    since: parked.since,
                }),
                Publish::Unavailable(why) => {
                    let reply = Reply::error(503, &why);
                    self.answer_waiting(parked.key, parked.serial, reply, parked.keep_alive);
                }
                Publish::DeliverNow { id, json } => {
                    let receivers = self.broadcast(&parked.event.channel, Some(id), &json);
                    let reply = published_reply(&parked.event, id, receivers as i64);
                    self.answer_waiting(parked.key, parked.serial, reply, parked.keep_alive);
                }
            }
        }
    }

    /// Frames the event once per transport and queues the same bytes on every subscriber of
    /// the channel. Returns how many subscribers got it.
    pub(super) fn broadcast(&mut self, channel: &str, id: Option<EventId>, json: &[u8]) -> usize {
        let Some(channel) = self.fanout.lookup(channel) else {
            return 0;
        };
        if let Some(id) = id {
            // Ids grow along a channel, and Redis delivers in that order: one at or below the
            // last delivered is a late copy of an event already sent (by a catch-up).
            if self.fanout.last_id(channel).is_some_and(|last| id <= last) {
                return 0;
            }
            self.fanout.delivered(channel, id);
        }
        let frames = Frames {
            id,
            ws: frame::text(json).into(),
            sse: self
                .fanout
                .has_sse_subscribers(channel)
                .then(|| sse::event_record(json).into()),
        };
        let queued = self
            .fanout
            .deliver(channel, &frames, &mut self.conns, &mut self.outbox);
        self.metrics.events_delivered += queued as u64;
        queued
    }

    /// A message on one of our Redis channels: relay it as published.
    pub(super) fn on_redis_message(&mut self, redis_channel: &[u8], payload: &Bytes) {
        // A text frame must hold UTF-8 (RFC 6455 8.1).
        if std::str::from_utf8(payload).is_err() {
            warn!(
                "dropping a non-UTF-8 message from Redis ({} bytes)",
                payload.len()
            );
            return;
        }
        let Some(name) = self.local_channel(redis_channel) else {
            return;
        };
        self.metrics.events_received += 1;
        let id = event::peek_id(payload);
        if let Some(catch_up) = self.catch_ups.get_mut(&name) {
            catch_up.live.push((id, payload.clone()));
            return;
        }
        self.broadcast(&name, id, payload);
    }

    /// The local channel a Redis channel carries, if it is one of ours.
    pub(super) fn local_channel(&self, redis_channel: &[u8]) -> Option<String> {
        let broker::Broker::Redis(redis) = &self.broker else {
            return None;
        };
        let redis_channel = std::str::from_utf8(redis_channel).ok()?;
        redis.names.local(redis_channel).map(str::to_string)
    }

    /// The subscriber link went down: every channel that had events will need what it misses
    /// meanwhile, read from its stream once the subscription is back.
    pub(super) fn begin_catch_up(&mut self) {
        for (channel, since) in self.fanout.last_ids() {
            self.catch_ups.entry(channel).or_insert(CatchUp {
                since,
                read_sent: false,
                live: Vec::new(),
            });
        }
    }

    /// Channels whose subscription is confirmed again, with the command link up: read what
    /// they missed.
    pub(super) fn continue_catch_ups(&mut self) {
        let broker::Broker::Redis(redis) = &self.broker else {
            return;
        };
        let ready: Vec<(String, EventId)> = self
            .catch_ups
            .iter()
            .filter(|(channel, c)| !c.read_sent && redis.can_replay(channel))
            .map(|(channel, c)| (channel.clone(), c.since))
            .collect();
        for (channel, since) in ready {
            if let Some(catch_up) = self.catch_ups.get_mut(&channel) {
                catch_up.read_sent = true;
            }
            match self.broker.read_history(
                &channel,
                Some(since),
                PageSize::events(self.config.history_len),
            ) {
                Read::Pending => self.pending.push_back(Pending::CatchUp { channel, since }),
                Read::Unavailable(why) => self.finish_catch_up(&channel, Err(why)),
                Read::Done(result) => self.finish_catch_up(&channel, Ok(result)),
            }
        }
    }

    /// Delivers the missed events, then the live ones held meanwhile (minus those the history
    /// already had). If the history cannot cover the gap, subscribers are told to reset.
    fn finish_catch_up(&mut self, channel: &str, result: Result<Result<Page, TooOld>, String>) {
        let Some(catch_up) = self.catch_ups.remove(channel) else {
            return;
        };
        match result {
            Ok(Ok(Page { events, .. })) => {
                if !events.is_empty() {
                    log::info!(
                        "channel {channel}: delivering {} events missed while the Redis subscription was down",
                        events.len()
                    );
                }
                for stored in events {
                    self.broadcast(channel, Some(stored.id), &stored.json);
                }
            }
            Ok(Err(TooOld { reason })) => self.reset_channel(channel, catch_up.since, reason),
            Err(why) => {
                warn!("channel {channel}: cannot read what was missed: {why}");
                self.reset_channel(channel, catch_up.since, "history unavailable");
            }
        }
        // `broadcast` drops those the history already delivered (ids at or below the last).
        for (id, payload) in catch_up.live {
            self.broadcast(channel, id, &payload);
        }
    }

    /// The reply to the oldest outstanding Redis command.
    pub(super) fn on_redis_reply(&mut self, reply: Result<cmd::Reply, String>) {
        let Some(pending) = self.pending.pop_front() else {
            error!("bug: a Redis reply with no request waiting for it");
            return;
        };
        match pending {
            Pending::Publish {
                key,
                serial,
                keep_alive,
                kind,
                channel,
                since,
            } => {
                let reply = match reply.and_then(broker::parse_published) {
                    Ok((id, receivers)) => {
                        self.metrics.events_published += 1;
                        self.metrics.publish_latency.observe(since.elapsed());
                        let event = Event {
                            kind,
                            message: String::new(),
                            channel,
                        };
                        published_reply(&event, id, receivers)
                    }
                    Err(why) => {
                        self.log_peer(key, log::Level::Warn, &format!("publish failed: {why}"));
                        Reply::error(503, &why)
                    }
                };
                self.answer_waiting(key, serial, reply, keep_alive);
            }
            Pending::HttpHistory {
                key,
                serial,
                keep_alive,
                channel,
                since,
            } => {
                let reply = match reply.and_then(|r| broker::parse_history(r, since)) {
                    Ok(result) => history_reply(&channel, result),
                    Err(why) => Reply::error(503, &why),
                };
                self.answer_waiting(key, serial, reply, keep_alive);
            }
            Pending::Replay(page_read) => {
                let since = Some(page_read.after());
                let result = reply.and_then(|r| broker::parse_history(r, since));
                let key = page_read.key();
                self.on_replay_page(page_read, result);
                self.continue_replay(key);
            }
            Pending::CatchUp { channel, since } => {
                let result = reply.and_then(|r| broker::parse_history(r, Some(since)));
                self.finish_catch_up(&channel, result);
            }
        }
    }

    /// `GET /events/<channel>`: history as JSON, for scripts.
    pub(super) fn read_history(
        &mut self,
        key: usize,
        channel: String,
        since: Option<EventId>,
        limit: usize,
        keep_alive: bool,
    ) {
        match self
            .broker
            .read_history(&channel, since, PageSize::events(limit))
        {
            Read::Done(result) => {
                let reply = history_reply(&channel, result);
                self.send_reply(key, reply, keep_alive, false);
            }
            Read::Unavailable(why) => {
                self.send_reply(key, Reply::error(503, &why), keep_alive, false)
            }
            Read::Pending => {
                let conn = &mut self.conns[key];
                conn.phase = Phase::AwaitingBroker;
                self.pending.push_back(Pending::HttpHistory {
                    key,
                    serial: conn.serial,
                    keep_alive,
                    channel,
                    since,
                });
            }
        }
    }

    /// Answers a request that waited for Redis, if its connection is still the same one,
    /// then lets that connection's pipelined requests go on.
    fn answer_waiting(&mut self, key: usize, serial: u32, reply: Reply, keep_alive: bool) {
        let alive = self
            .conns
            .get(key)
            .is_some_and(|c| c.serial == serial && c.phase == Phase::AwaitingBroker);
        if !alive {
            return;
        }
        self.conns[key].phase = Phase::ReadingRequest;
        self.send_reply(key, reply, keep_alive, false);
        self.resume_reading(key);
    }
}

/// The 200 of a publish: `{"published":true,"type":...,"channel":...,"id":...,"receivers":n}`.
fn published_reply(event: &Event, id: EventId, receivers: i64) -> Reply {
    #[derive(Serialize)]
    struct Published<'a> {
        published: bool,
        #[serde(rename = "type")]
        kind: &'a str,
        channel: &'a str,
        id: EventId,
        receivers: i64,
    }
    Reply::json(
        200,
        &Published {
            published: true,
            kind: &event.kind,
            channel: &event.channel,
            id,
            receivers,
        },
    )
}

/// `{"channel": ..., "events": [...]}` with each event's JSON as stored, or 410 when the
/// history no longer reaches back to `since`.
fn history_reply(channel: &str, result: Result<Page, TooOld>) -> Reply {
    match result {
        Ok(Page { events, .. }) => {
            let mut body = format!("{{\"channel\":{},\"events\":[", json!(channel)).into_bytes();
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&e.json);
            }
            body.extend_from_slice(b"]}\n");
            Reply::new(200, "application/json", body)
        }
        Err(too_old) => Reply::json(
            410,
            &json!({ "error": too_old.reason, "reset": true, "channel": channel }),
        ),
    }
}
