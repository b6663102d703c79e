//! Publishing and history, the reactor's side: a request goes to the broker; an event comes
//! back (at once when embedded, through the Redis subscription otherwise) and is framed once
//! per transport and handed to the fan-out; Redis replies are matched, in order, to the
//! requests that wait for them.
//!
//! Everything waiting on Redis is bounded: in count (`MAX_PENDING_PUBLISHES`,
//! `MAX_PENDING_READS`; beyond them a 503, or a reset notice where a subscriber waits), in bytes
//! (`MAX_PENDING_BYTES`: events of publishes not yet answered, live events a catch-up holds)
//! and in time (`REDIS_TIMEOUT_MS`: the link resets a stalled Redis, failing what was sent;
//! the reactor's timers answer what was never sent: parked publishes, replays waiting for the
//! link, catch-ups holding live events).
//!
//! Messages from the subscription are other programs' too: each is checked before it reaches
//! a client (an event's shape, a size some subscriber can take) and its id is believed only
//! if Redis's clock vouches for it (`RedisBroker::trusts_id`). Ids decide nothing about live
//! delivery: Redis delivers a channel in order, so live messages are never dropped for their
//! id. Only the seam after a catch-up drops late live copies of events the history just
//! delivered, by ids Redis's stream returned.

use std::time::Instant;

use bytes::Bytes;
use log::error;

use super::Reactor;
use super::outcome::{Group, Member, Outcome, Shape, single_reply};
use super::pending::{Pending, Slot};
use crate::broker::{self, Broker, Publish, Read};
use crate::catch_up::{Live, LiveMessage};
use crate::conn::Phase;
use crate::event::{Event, EventId};
use crate::fanout::{Deflated, Frames};
use crate::history::{Page, PageSize, StoredEvent, TooOld};
use crate::http::publish::{BatchItem, Publication, largest_frame_bytes};
use crate::http::reply::Reply;
use crate::hub::SharedEvent;
use crate::metrics::limit;
use crate::ratelog::truncate_error;
use crate::resp::cmd;
use crate::resp::link::LinkFailure;
use crate::{event, sse, ws::frame};

/// A publish held until this replica's subscription to its channel is confirmed.
#[derive(Debug)]
pub(super) struct Parked {
    key: usize,
    serial: u32,
    keep_alive: bool,
    event: Event,
    idempotency_key: Option<String>,
    since: Instant,
    slot: Option<Slot>,
}

/// Publishes held for a subscription, oldest first, with the bytes of their events.
#[derive(Debug, Default)]
pub(super) struct ParkedPublishes {
    list: Vec<Parked>,
    bytes: usize,
}

impl ParkedPublishes {
    fn push(&mut self, parked: Parked) {
        self.bytes += event_bytes(&parked.event);
        self.list.push(parked);
    }

    fn take_all(&mut self) -> Vec<Parked> {
        self.bytes = 0;
        std::mem::take(&mut self.list)
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    fn oldest(&self) -> Option<Instant> {
        self.list.first().map(|p| p.since)
    }
}

/// Room for a frame's header (or an SSE record's field names and id) and a queue's handle.
const FRAMING_MARGIN: usize = 64;

/// About what an event weighs while it waits: its JSON is its fields and some punctuation.
fn event_bytes(event: &Event) -> usize {
    event.kind.len() + event.message.len() + event.channel.len() + 64
}

impl Reactor {
    /// Whether local clients of `channel` would get an event only live (so the Redis
    /// subscription must be confirmed first). Clients that are resuming get it from the
    /// history (a replay, or the channel catching up after a lost subscription).
    fn needs_live_subscription(&self, channel: &str) -> bool {
        self.fanout.lookup(channel).is_some()
            && !self.catch_ups.is_active(channel)
            && !self.awaiting_redis.iter().any(|r| &*r.channel == channel)
    }

    /// A publish request: one event to one channel, answered alone; or one event to the
    /// channels the body named, answered together once each has its outcome.
    pub(super) fn publish(&mut self, key: usize, publication: Publication, keep_alive: bool) {
        let Publication {
            event,
            idempotency_key,
            channels,
        } = publication;
        let Some(channels) = channels else {
            match self.publish_one(key, keep_alive, event, idempotency_key, None) {
                Some((outcome, event)) => {
                    let reply = single_reply(&event.kind, &event.channel, outcome);
                    self.send_reply(key, reply, keep_alive, false);
                }
                None => self.conns[key].await_broker(),
            }
            return;
        };
        // One event per channel: each gets its own id, and its JSON (id and channel inside)
        // is encoded once for that channel.
        let members = channels
            .into_iter()
            .map(|channel| {
                Ok(Publication {
                    event: Event {
                        channel,
                        ..event.clone()
                    },
                    idempotency_key: idempotency_key.clone(),
                    channels: None,
                })
            })
            .collect();
        self.publish_group(key, keep_alive, Shape::Channels, Some(event.kind), members);
    }

    /// Publishes the members of a group in order (a batch, or one event's channels). What is
    /// decided at once (embedded, refusals, duplicates) is recorded now; the rest as Redis
    /// answers. The reply goes when the last member is in.
    pub(super) fn publish_group(
        &mut self,
        key: usize,
        keep_alive: bool,
        shape: Shape,
        kind: Option<String>,
        members: Vec<BatchItem>,
    ) {
        let serial = self.conns[key].serial();
        let waiter = (key, serial, keep_alive);
        let group = self
            .groups
            .insert(Group::new(waiter, shape, kind, members.len()));
        let max_queued = self.config.limits.max_queued_bytes;
        for (index, item) in members.into_iter().enumerate() {
            let decided = match item {
                Err(refusal) => Some(Member {
                    kind: None,
                    channel: None,
                    outcome: Outcome::from_reply(&refusal),
                }),
                Ok(Publication { event, .. }) if largest_frame_bytes(&event) > max_queued => {
                    self.metrics.limit_hit(limit::EVENT_BYTES);
                    let why = format!(
                        "event too large: subscribers receive at most {max_queued} bytes (MAX_QUEUED_BYTES)"
                    );
                    Some(member(event, Outcome::failed(413, why)))
                }
                Ok(publication) => {
                    let slot = Some(Slot { group, index });
                    let Publication {
                        event,
                        idempotency_key,
                        ..
                    } = publication;
                    self.publish_one(key, keep_alive, event, idempotency_key, slot)
                        .map(|(outcome, event)| member(event, outcome))
                }
            };
            if let Some(decided) = decided {
                self.groups[group].record(index, decided);
            }
        }
        if self.groups[group].is_complete() {
            let reply = self.groups.remove(group).reply();
            self.send_reply(key, reply, keep_alive, false);
        } else {
            self.conns[key].await_broker();
        }
    }

    /// Publishes one event to its channel. Returns its outcome (and the event) if decided at
    /// once; `None` if it waits for Redis (its answer goes to `slot`, or to the connection).
    fn publish_one(
        &mut self,
        key: usize,
        keep_alive: bool,
        event: Event,
        idempotency_key: Option<String>,
        slot: Option<Slot>,
    ) -> Option<(Outcome, Event)> {
        if let Some(why) = self.refuse_publish(key, &event) {
            return Some((Outcome::failed(503, why), event));
        }
        let needs_live = self.needs_live_subscription(&event.channel);
        match self
            .broker
            .publish(&event, needs_live, idempotency_key.as_deref())
        {
            Publish::Sequenced { id, receivers } => {
                self.metrics.events_published += 1;
                self.count_hub_evictions();
                // Delivered here before the answer is queued, as with one reactor; the other
                // reactors were woken by the hub.
                self.deliver_inbox();
                let outcome = Outcome::Published {
                    id,
                    receivers: receivers as i64,
                    duplicate: false,
                };
                Some((outcome, event))
            }
            Publish::Duplicate(id) => {
                self.metrics.publish_duplicates += 1;
                let outcome = Outcome::Published {
                    id,
                    receivers: 0,
                    duplicate: true,
                };
                Some((outcome, event))
            }
            Publish::Unavailable(why) => {
                self.warn_peer(key, "publish refused", &format!("publish refused: {why}"));
                Some((Outcome::failed(503, why), event))
            }
            Publish::Pending => {
                self.pending.push_back(Pending::Publish {
                    key,
                    serial: self.conns[key].serial(),
                    keep_alive,
                    bytes: event_bytes(&event),
                    kind: event.kind,
                    channel: event.channel,
                    since: Instant::now(),
                    slot,
                });
                None
            }
            Publish::AwaitSubscription => {
                self.parked.push(Parked {
                    key,
                    serial: self.conns[key].serial(),
                    keep_alive,
                    event,
                    idempotency_key,
                    since: Instant::now(),
                    slot,
                });
                None
            }
        }
    }

    /// A publish that waited is decided: answer its connection, or record it in its group
    /// and answer the group's connection once the group is complete. Groups are completed
    /// even when their connection is gone, so none is left behind.
    fn settle(
        &mut self,
        waiter: (usize, u32, bool),
        slot: Option<Slot>,
        event: Event,
        outcome: Outcome,
    ) {
        let (key, serial, keep_alive) = waiter;
        let Some(Slot { group, index }) = slot else {
            let reply = single_reply(&event.kind, &event.channel, outcome);
            return self.answer_waiting(key, serial, reply, keep_alive);
        };
        let complete = self
            .groups
            .get_mut(group)
            .is_some_and(|g| g.record(index, member(event, outcome)));
        if complete {
            let group = self.groups.remove(group);
            let (key, serial, keep_alive) = (group.key, group.serial, group.keep_alive);
            self.answer_waiting(key, serial, group.reply(), keep_alive);
        }
    }

    /// Moves the hub's evictions (history by cap or age, idempotency keys forgotten before
    /// their window ended) into `/metrics`, with one log line per interval for the keys: those
    /// no longer stop a retry. Called after a publish and by the once-a-second sweep.
    pub(super) fn count_hub_evictions(&mut self) {
        let broker::Broker::Embedded(embedded) = &self.broker else {
            return;
        };
        let (history, keys) = embedded.hub.take_evictions();
        self.metrics
            .limit_hits(limit::HISTORY_CHANNELS, history.channels);
        self.metrics.limit_hits(limit::HISTORY_BYTES, history.bytes);
        self.metrics.limit_hits(limit::HISTORY_TTL, history.ttl);
        if keys > 0 {
            self.metrics.limit_hits(limit::IDEMPOTENCY_KEYS, keys);
            self.warnings.warn(
                limit::IDEMPOTENCY_KEYS,
                &format!(
                    "{keys} idempotency keys forgotten before their window ended (IDEMPOTENCY_MAX_KEYS / IDEMPOTENCY_MAX_BYTES): retries with them would publish again"
                ),
            );
        }
    }

    /// With Redis: why a publish cannot wait for it now (too many, or too many bytes, already
    /// waiting), counted and logged once per interval; `None` if it may go ahead.
    fn refuse_publish(&mut self, key: usize, event: &Event) -> Option<String> {
        if !matches!(self.broker, Broker::Redis(_)) {
            return None;
        }
        let limits = &self.config.limits;
        let waiting = self.pending.publishes() + self.parked.len();
        let waiting_bytes =
            self.pending.publish_bytes() + self.parked.bytes + self.catch_ups.held_bytes();
        let (cap, why) = if waiting >= limits.max_pending_publishes {
            let why = format!(
                "too many publishes waiting on Redis (MAX_PENDING_PUBLISHES {})",
                limits.max_pending_publishes
            );
            (limit::PENDING_PUBLISHES, why)
        } else if waiting_bytes + event_bytes(event) > limits.max_pending_bytes {
            let why = format!(
                "too many bytes waiting on Redis (MAX_PENDING_BYTES {})",
                limits.max_pending_bytes
            );
            (limit::PENDING_BYTES, why)
        } else {
            return None;
        };
        self.metrics.limit_hit(cap);
        self.warn_peer(key, cap, &format!("publish refused (503): {why}"));
        Some(why)
    }

    /// With Redis: why a history read cannot wait for it now (`MAX_PENDING_READS` reached),
    /// counted and logged once per interval; `None` if it may go ahead.
    pub(super) fn refuse_read(&mut self) -> Option<String> {
        if !matches!(self.broker, Broker::Redis(_)) {
            return None;
        }
        let max = self.config.limits.max_pending_reads;
        if self.pending.reads() + self.awaiting_redis.len() < max {
            return None;
        }
        let why = format!("too many history reads waiting on Redis (MAX_PENDING_READS {max})");
        self.metrics.limit_hit(limit::PENDING_READS);
        self.warnings.warn(
            limit::PENDING_READS,
            &format!("history read refused: {why}"),
        );
        Some(why)
    }

    /// Sends the publishes held for a subscription that is now confirmed; answers 503 to
    /// those held too long or whose Redis link went down (`give_up`).
    pub(super) fn retry_parked(&mut self, give_up: Option<&str>) {
        let timeout = self.config.limits.redis_timeout;
        for parked in self.parked.take_all() {
            let alive = self
                .conns
                .get(parked.key)
                .is_some_and(|c| c.serial() == parked.serial && c.phase() == Phase::AwaitingBroker);
            if !alive && parked.slot.is_none() {
                continue;
            }
            let expired = parked.since.elapsed() >= timeout;
            let outcome = match give_up {
                Some(why) => Publish::Unavailable(why.to_string()),
                // Its group still needs an outcome to be complete (and freed).
                None if !alive => Publish::Unavailable("the connection is gone".into()),
                None if expired => {
                    self.metrics.limit_hit(limit::REDIS_TIMEOUT);
                    Publish::Unavailable(
                        "Redis unavailable: the channel's subscription was not confirmed in time"
                            .into(),
                    )
                }
                None => {
                    let needs_live = self.needs_live_subscription(&parked.event.channel);
                    let idempotency_key = parked.idempotency_key.as_deref();
                    self.broker
                        .publish(&parked.event, needs_live, idempotency_key)
                }
            };
            match outcome {
                Publish::AwaitSubscription => self.parked.push(parked),
                Publish::Pending => self.pending.push_back(Pending::Publish {
                    key: parked.key,
                    serial: parked.serial,
                    keep_alive: parked.keep_alive,
                    bytes: event_bytes(&parked.event),
                    kind: parked.event.kind,
                    channel: parked.event.channel,
                    since: parked.since,
                    slot: parked.slot,
                }),
                Publish::Unavailable(why) => {
                    if alive {
                        let warning = format!("publish refused: {why}");
                        self.warn_peer(parked.key, "publish refused", &warning);
                    }
                    let waiter = (parked.key, parked.serial, parked.keep_alive);
                    let outcome = Outcome::failed(503, why);
                    self.settle(waiter, parked.slot, parked.event, outcome);
                }
                Publish::Sequenced { .. } | Publish::Duplicate(_) => {
                    unreachable!("bug: an embedded publish was parked")
                }
            }
        }
    }

    /// The earliest moment some work waiting on Redis, but not sent to it, must be answered
    /// without it (what was sent is the link's to time out).
    pub(super) fn redis_work_deadline(&self) -> Option<Instant> {
        let oldest = [
            self.parked.oldest(),
            self.awaiting_redis.oldest(),
            self.catch_ups.oldest_holding(),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(oldest + self.config.limits.redis_timeout)
    }

    /// Answers what waited on Redis for `REDIS_TIMEOUT_MS` without being sent: parked
    /// publishes (503), replays (a reset notice), catch-ups (held events released after a
    /// reset notice).
    pub(super) fn expire_redis_work(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(self.config.limits.redis_timeout) else {
            return;
        };
        if self.parked.oldest().is_some_and(|t| t <= cutoff) {
            self.retry_parked(None);
        }
        for waiting in self.awaiting_redis.take_waiting_since(cutoff) {
            self.metrics.limit_hit(limit::REDIS_TIMEOUT);
            let why = "Redis unavailable: the history could not be read in time";
            self.give_up_waiting_replay(waiting, why);
        }
        for channel in self.catch_ups.holding_since(cutoff) {
            self.metrics.limit_hit(limit::REDIS_TIMEOUT);
            let why = "Redis did not answer in time".to_string();
            self.finish_catch_up(&channel, Err(why));
        }
    }

    /// Frames an event read from Redis's history (its id inside) once per transport and
    /// queues the same bytes on every subscriber of the channel. Returns how many got it.
    pub(super) fn broadcast(&mut self, channel: &str, id: Option<EventId>, json: &[u8]) -> usize {
        self.fan_out(channel, id, json, None)
    }

    /// Embedded: delivers what the hub handed this reactor since the last call, in the hub's
    /// one order (its own publishes included).
    pub(super) fn deliver_inbox(&mut self) {
        let Broker::Embedded(embedded) = &self.broker else {
            return;
        };
        let spare = std::mem::take(&mut self.inbox);
        let mut events = embedded.hub.take_inbox(self.index, spare);
        self.metrics.events_received += events.len() as u64;
        for event in events.drain(..) {
            self.deliver_shared(&event);
        }
        self.inbox = events;
        self.recover_overrun();
    }

    /// One event from the hub to this reactor's subscribers of its channel. Its frames are
    /// built once in the process (the first reactor that needs one builds it); here each is
    /// wrapped once into this reactor's non-atomic handle, and every subscriber gets a clone.
    fn deliver_shared(&mut self, event: &SharedEvent) {
        let Some(channel) = self.fanout.lookup(&event.channel) else {
            return;
        };
        self.fanout.delivered(channel, event.id);
        let sse = self
            .fanout
            .has_sse_subscribers(channel)
            .then(|| event.sse_record(sse::event_record));
        let deflater = &mut self.deflater;
        let ws_deflated = (event.json.len() >= self.config.compress_min_bytes
            && self.fanout.has_deflate_subscribers(channel))
        .then(|| {
            event.ws_deflated(|json| {
                let compressed = deflater.compress(json)?;
                Some(frame::compressed_text(compressed))
            })
        })
        .flatten()
        .map(|bytes| Deflated {
            frame: bytes.into(),
            payload_len: event.json.len(),
        });
        let frames = Frames {
            id: Some(event.id),
            ws: event.ws_frame(frame::text).into(),
            sse: sse.map(Into::into),
            ws_deflated,
        };
        let queued = self
            .fanout
            .deliver(channel, &frames, &mut self.conns, &mut self.outbox);
        self.metrics.events_delivered += queued as u64;
    }

    /// `broadcast` for a message from the subscription: `id` only if trusted, and the SSE
    /// record built with that id (not whatever `"id"` the payload carries) and `kind`.
    fn fan_out(
        &mut self,
        channel: &str,
        id: Option<EventId>,
        json: &[u8],
        relayed_kind: Option<&str>,
    ) -> usize {
        let Some(channel) = self.fanout.lookup(channel) else {
            return 0;
        };
        if let Some(id) = id {
            // The newest id delivered: where a catch-up resumes if the subscription drops.
            self.fanout.delivered(channel, id);
        }
        let sse = self
            .fanout
            .has_sse_subscribers(channel)
            .then(|| match relayed_kind {
                None => sse::event_record(json),
                Some(kind) => sse::record(id.map(|id| id.to_string()).as_deref(), Some(kind), json),
            });
        let ws_deflated = self.deflated_event(channel, json);
        let frames = Frames {
            id,
            ws: frame::text(json).into(),
            sse: sse.map(Into::into),
            ws_deflated,
        };
        let queued = self
            .fanout
            .deliver(channel, &frames, &mut self.conns, &mut self.outbox);
        self.metrics.events_delivered += queued as u64;
        queued
    }

    /// A message on one of our Redis channels: relayed as published if it is shaped like an
    /// event and small enough for a subscriber; its id trusted only if Redis vouches for it.
    pub(super) fn on_redis_message(&mut self, redis_channel: &[u8], payload: &Bytes) {
        let Some(name) = self.local_channel(redis_channel) else {
            return;
        };
        let max = self.config.limits.max_queued_bytes;
        // The larger of its two framings: a WebSocket frame (header up to 10 bytes) or an SSE
        // record (`id:`, `event:` with the type, `data:`), which is checked once the type is
        // known, each with the queue's handle on it. Larger would close every subscriber as a
        // slow consumer, even one with an empty queue.
        if payload.len() + FRAMING_MARGIN > max {
            return self.drop_redis_message(
                &name,
                payload,
                limit::REDIS_MESSAGE_BYTES,
                &format!("larger than a subscriber may have queued (MAX_QUEUED_BYTES {max})"),
            );
        }
        let inspected = match std::str::from_utf8(payload) {
            // A text frame must hold UTF-8 (RFC 6455 8.1).
            Err(_) => Err("not UTF-8".to_string()),
            Ok(_) => event::inspect(payload).map_err(|e| e.to_string()),
        };
        let inspected = match inspected {
            Ok(inspected) => inspected,
            Err(why) => {
                return self.drop_redis_message(&name, payload, limit::REDIS_MESSAGE_SHAPE, &why);
            }
        };
        if payload.len() + inspected.kind.len() + 2 * FRAMING_MARGIN > max {
            return self.drop_redis_message(&name, payload, limit::REDIS_MESSAGE_BYTES, &format!(
                "its SSE record would be larger than a subscriber may have queued (MAX_QUEUED_BYTES {max})"
            ));
        }
        self.metrics.events_received += 1;
        let id = self.trusted_id(payload);
        // Until the command link has read Redis's clock no id can be judged: not the payload's
        // fault, so not counted against it.
        let clock_known = matches!(&self.broker, Broker::Redis(redis) if redis.knows_clock());
        if inspected.has_id && id.is_none() && clock_known {
            self.metrics.limit_hit(limit::REDIS_MESSAGE_ID);
            self.warnings.warn(
                limit::REDIS_MESSAGE_ID,
                &format!(
                    "channel {name}: relaying a message from Redis without trusting its id (ahead of Redis's clock, or not where Herald puts it): {}",
                    sample(payload)
                ),
            );
        }
        let message = LiveMessage {
            id,
            payload: payload.clone(),
            kind: inspected.kind,
        };
        self.relay(&name, message);
    }

    fn drop_redis_message(&mut self, channel: &str, payload: &[u8], cap: &'static str, why: &str) {
        self.metrics.limit_hit(cap);
        self.warnings.warn(
            cap,
            &format!(
                "channel {channel}: dropping a {} byte message from Redis: {why}; starts {}",
                payload.len(),
                sample(payload)
            ),
        );
    }

    /// The id at the front of a payload, if Redis's clock says it can be Herald's own.
    fn trusted_id(&self, payload: &[u8]) -> Option<EventId> {
        let Broker::Redis(redis) = &self.broker else {
            return None;
        };
        event::peek_id(payload).filter(|&id| redis.trusts_id(id, broker::now_ms()))
    }

    /// Hands a checked message to a catch-up in progress, or past the seam to the clients
    /// (`catch_up.rs` decides which).
    fn relay(&mut self, channel: &str, message: LiveMessage) {
        let budget = self.config.limits.max_pending_bytes;
        match self.catch_ups.on_live(channel, message, budget) {
            Live::Held | Live::Skip => {}
            Live::Deliver(message) => {
                self.fan_out(channel, message.id, &message.payload, Some(&message.kind));
            }
            Live::GiveUp(message) => {
                // Holding more would grow without bound if Redis never answers the read:
                // give the catch-up up (subscribers get a reset) and go live.
                self.metrics.limit_hit(limit::PENDING_BYTES);
                self.warnings.warn(
                    limit::PENDING_BYTES,
                    &format!("channel {channel}: catch-up gave up: live events held over MAX_PENDING_BYTES {budget}"),
                );
                self.finish_catch_up(channel, Err("too many live events held".into()));
                self.relay(channel, message);
            }
        }
    }

    /// The local channel a Redis channel carries, if it is one of ours.
    pub(super) fn local_channel(&self, redis_channel: &[u8]) -> Option<String> {
        let Broker::Redis(redis) = &self.broker else {
            return None;
        };
        let redis_channel = std::str::from_utf8(redis_channel).ok()?;
        redis.names.local(redis_channel).map(str::to_string)
    }

    /// The subscriber link went down: every channel that had events will need what it misses
    /// meanwhile, read from its stream once the subscription is back.
    pub(super) fn begin_catch_up(&mut self) {
        self.begin_catch_up_of(|_| true);
    }

    /// `begin_catch_up` for the channels `lost` picks (on a Redis Cluster, those whose
    /// shard subscription was lost; the others never stopped receiving).
    pub(super) fn begin_catch_up_of(&mut self, lost: impl Fn(&str) -> bool) {
        for (channel, since) in self.fanout.last_ids() {
            if !lost(&channel) {
                continue;
            }
            self.catch_ups.begin(channel, since);
        }
    }

    /// Channels whose subscription is confirmed again, with the command link up: read what
    /// they missed.
    pub(super) fn continue_catch_ups(&mut self) {
        let Broker::Redis(redis) = &self.broker else {
            return;
        };
        let ready = self
            .catch_ups
            .reads_due(|channel| redis.can_replay(channel));
        for (channel, since) in ready {
            if let Some(why) = self.refuse_read() {
                self.finish_catch_up(&channel, Err(why));
                continue;
            }
            self.catch_ups.read_sent(&channel);
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
        let Some(catch_up) = self.catch_ups.finish(channel) else {
            return;
        };
        let mut seam = catch_up.since;
        match result {
            Ok(Ok(page)) => {
                if !page.events.is_empty() {
                    log::info!(
                        "channel {channel}: delivering {} events missed while the Redis subscription was down",
                        page.events.len()
                    );
                }
                for stored in page.events {
                    seam = seam.max(stored.id);
                    self.broadcast(channel, Some(stored.id), &stored.json);
                }
                if page.more {
                    let reason = "more was missed than one history read holds";
                    self.reset_channel(channel, catch_up.since, reason);
                }
            }
            Ok(Err(TooOld { reason })) => self.reset_channel(channel, catch_up.since, reason),
            Err(why) => {
                self.warnings.warn(
                    "catch-up failed",
                    &format!("channel {channel}: cannot read what was missed: {why}"),
                );
                self.reset_channel(channel, catch_up.since, "history unavailable");
            }
        }
        if seam > catch_up.since && self.fanout.lookup(channel).is_some() {
            self.catch_ups.set_seam(channel, seam);
        }
        // Through the seam: those the history already delivered are dropped.
        for message in catch_up.held {
            self.relay(channel, message);
        }
    }

    /// The reply to the oldest outstanding Redis command.
    pub(super) fn on_redis_reply(&mut self, reply: Result<cmd::Reply, LinkFailure>) {
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
                slot,
                bytes: _,
            } => {
                let outcome = match reply {
                    Ok(reply) => match broker::parse_published(reply) {
                        Ok(published) => {
                            if published.duplicate {
                                self.metrics.publish_duplicates += 1;
                            } else {
                                self.metrics.events_published += 1;
                            }
                            self.metrics.publish_latency.observe(since.elapsed());
                            if let Broker::Redis(redis) = &mut self.broker {
                                redis.confirmed(published.id);
                            }
                            Outcome::Published {
                                id: published.id,
                                receivers: published.receivers,
                                duplicate: published.duplicate,
                            }
                        }
                        Err(why) => {
                            self.warn_peer(
                                key,
                                "publish failed",
                                &format!("publish failed: {why}"),
                            );
                            Outcome::failed(503, why)
                        }
                    },
                    Err(failure) => {
                        let (status, what) = if failure.timed_out {
                            (504, "publish timed out")
                        } else {
                            (503, "publish failed")
                        };
                        self.warn_peer(
                            key,
                            what,
                            &format!("{what}, outcome unknown: {}", failure.reason),
                        );
                        unknown_outcome(status, &failure)
                    }
                };
                let event = Event {
                    kind,
                    message: String::new(),
                    channel,
                };
                self.settle((key, serial, keep_alive), slot, event, outcome);
            }
            Pending::HttpHistory(request) => self.answer_history(request, reply),
            Pending::Replay(page_read) => {
                let since = Some(page_read.after());
                let result = reply
                    .map_err(|failure| failure.reason)
                    .and_then(|r| broker::parse_history(r, since));
                if let Ok(Ok(page)) = &result {
                    self.confirm_ids(&page.events);
                }
                let key = page_read.key();
                self.on_replay_page(page_read, result);
                self.continue_replay(key);
            }
            Pending::Occupancy(work) => self.on_occupancy_reply(work, reply),
            Pending::CatchUp { channel, since } => {
                if reply.is_err() || self.catch_ups.read_overtaken(&channel) {
                    // The read was lost with the link, not refused by Redis, or the
                    // subscription was lost again meanwhile: read again once both are back.
                    // What the catch-up holds meanwhile is still bounded by
                    // MAX_PENDING_BYTES and REDIS_TIMEOUT_MS (`relay`, `expire_redis_work`).
                    self.catch_ups.read_lost(&channel);
                    return self.continue_catch_ups();
                }
                let result = reply
                    .map_err(|failure| failure.reason)
                    .and_then(|r| broker::parse_history(r, Some(since)));
                if let Ok(Ok(page)) = &result {
                    self.confirm_ids(&page.events);
                }
                self.finish_catch_up(&channel, result);
            }
        }
    }

    /// Ids read from a stream are Redis's own: they may be trusted when they arrive live.
    pub(super) fn confirm_ids(&mut self, events: &[StoredEvent]) {
        if let (Some(last), Broker::Redis(redis)) = (events.last(), &mut self.broker) {
            redis.confirmed(last.id);
        }
    }

    /// Answers a request that waited for Redis, if its connection is still the same one,
    /// then lets that connection's pipelined requests go on.
    pub(super) fn answer_waiting(
        &mut self,
        key: usize,
        serial: u32,
        reply: Reply,
        keep_alive: bool,
    ) {
        let alive = self
            .conns
            .get(key)
            .is_some_and(|c| c.serial() == serial && c.is_awaiting_broker());
        if !alive {
            return;
        }
        self.conns[key].broker_answered();
        self.send_reply(key, reply, keep_alive, false);
        self.resume_reading(key);
    }
}

/// The outcome of a publish Redis may or may not have run: the link failed after it was
/// sent. A retry may deliver the event twice, unless it carries an idempotency key (README:
/// "Publishing when Redis stalls").
fn unknown_outcome(status: u16, failure: &LinkFailure) -> Outcome {
    let error = if failure.timed_out {
        "redis timeout".to_string()
    } else {
        failure.reason.clone()
    };
    Outcome::Failed {
        status,
        error,
        unknown: true,
    }
}

/// A group member: the event's type and channel, and what became of it.
fn member(event: Event, outcome: Outcome) -> Member {
    Member {
        kind: Some(event.kind),
        channel: Some(event.channel),
        outcome,
    }
}

/// The first bytes of a payload for a log line, non-printables masked.
fn sample(payload: &[u8]) -> String {
    let shown: String = payload
        .iter()
        .take(48)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    truncate_error(&format!("{shown:?}"))
}
