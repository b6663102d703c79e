//! Publishing and history, the reactor's side: a request goes to the broker; an event comes
//! back (from the hub's inbox when embedded, through the Redis subscription otherwise) and is
//! framed once per transport and handed to the fan-out. What waits on Redis meanwhile, its
//! caps and what each reply means are the coordinator's (`crate::coordinator`, no sockets);
//! this file applies its answers to connections and subscribers.
//!
//! Messages from the subscription are other programs' too: each is checked before it reaches
//! a client (an event's shape, a size some subscriber can take) and its id is believed only
//! if Redis's clock vouches for it (`RedisBroker::trusts_id`). Ids decide nothing about live
//! delivery: Redis delivers a channel in order, so live messages are never dropped for their
//! id. Only the seam after a catch-up drops late live copies of events the history just
//! delivered, by ids Redis's stream returned (`catch_up.rs`).

use std::time::Instant;

use bytes::Bytes;

use super::Reactor;
use crate::broker::{self, Publish};
use crate::catch_up::{Live, LiveMessage};
use crate::coordinator::outcome::{Group, Member, Outcome, Shape, single_reply};
use crate::coordinator::pending::{Parked, Pending, Slot, event_bytes};
use crate::coordinator::{Retry, Unread};
use crate::event;
use crate::event::{Event, EventId};
use crate::history::{Page, TooOld};
use crate::http::publish::{BatchItem, Publication, largest_frame_bytes};
use crate::metrics::limit;
use crate::ratelog::truncate_error;

/// Room for a frame's header (or an SSE record's field names and id) and a queue's handle.
const FRAMING_MARGIN: usize = 64;

impl Reactor {
    /// Whether local clients of `channel` would get an event only live (so the Redis
    /// subscription must be confirmed first). Clients that are resuming get it from the
    /// history (a replay, or the channel catching up after a lost subscription).
    fn needs_live_subscription(&self, channel: &str) -> bool {
        let joined_here = self.fanout.lookup(channel).is_some();
        self.redis_work
            .needs_live_subscription(channel, joined_here)
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
                self.redis_work.sent(Pending::Publish {
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
                self.redis_work.park(Parked {
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
    pub(super) fn settle(
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
        let Some(hub) = self.broker.hub() else {
            return;
        };
        let (history, keys) = hub.take_evictions();
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

    /// Sends the publishes held for a subscription that is now confirmed; answers 503 to
    /// those held too long or whose Redis link went down (`give_up`).
    pub(super) fn retry_parked(&mut self, give_up: Option<&str>) {
        let conns = &self.conns;
        let alive = |parked: &Parked| awaits(conns, parked);
        let retries = self.redis_work.take_parked(give_up, alive, Instant::now());
        for retry in retries {
            let (parked, why) = match retry {
                Retry::Again(parked) => {
                    let needs_live = self.needs_live_subscription(&parked.event.channel);
                    let idempotency_key = parked.idempotency_key.as_deref();
                    match self
                        .broker
                        .publish(&parked.event, needs_live, idempotency_key)
                    {
                        Publish::AwaitSubscription => {
                            self.redis_work.park(parked);
                            continue;
                        }
                        Publish::Pending => {
                            self.redis_work.sent(parked.sent());
                            continue;
                        }
                        Publish::Unavailable(why) => (parked, why),
                        Publish::Sequenced { .. } | Publish::Duplicate(_) => {
                            unreachable!("bug: an embedded publish was parked")
                        }
                    }
                }
                Retry::GiveUp {
                    parked,
                    why,
                    timed_out,
                } => {
                    if timed_out {
                        self.metrics.limit_hit(limit::REDIS_TIMEOUT);
                    }
                    (parked, why)
                }
            };
            if awaits(&self.conns, &parked) {
                self.warn_peer(
                    parked.key,
                    "publish refused",
                    &format!("publish refused: {why}"),
                );
            }
            let waiter = (parked.key, parked.serial, parked.keep_alive);
            self.settle(waiter, parked.slot, parked.event, Outcome::failed(503, why));
        }
    }

    /// Answers what waited on Redis for `REDIS_TIMEOUT_MS` without being sent: parked
    /// publishes (503), replays (a reset notice), catch-ups (held events released after a
    /// reset notice).
    pub(super) fn expire_redis_work(&mut self, now: Instant) {
        let expired = self.redis_work.expire(now);
        if expired.parked {
            self.retry_parked(None);
        }
        for waiting in expired.replays {
            self.metrics.limit_hit(limit::REDIS_TIMEOUT);
            let why = "Redis unavailable: the history could not be read in time";
            self.give_up_waiting_replay(waiting, why);
        }
        for channel in expired.catch_ups {
            self.metrics.limit_hit(limit::REDIS_TIMEOUT);
            let why = "Redis did not answer in time".to_string();
            self.finish_catch_up(&channel, Err(why));
        }
    }

    /// Embedded: delivers what the hub handed this reactor since the last call, in the hub's
    /// one order (its own publishes included).
    pub(super) fn deliver_inbox(&mut self) {
        let Some(hub) = self.broker.hub() else {
            return;
        };
        let spare = std::mem::take(&mut self.inbox);
        let (mut events, overrun) = hub.take_inbox(self.index, spare);
        self.metrics.events_received += events.len() as u64;
        for event in events.drain(..) {
            self.deliver_shared(&event);
        }
        self.inbox = events;
        self.recover_overrun(overrun);
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
        let clock_known = self.broker.redis().is_some_and(|redis| redis.knows_clock());
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
        let redis = self.broker.redis()?;
        event::peek_id(payload).filter(|&id| redis.trusts_id(id, broker::now_ms()))
    }

    /// Hands a checked message to a catch-up in progress, or past the seam to the clients
    /// (`catch_up.rs` decides which).
    fn relay(&mut self, channel: &str, message: LiveMessage) {
        match self.redis_work.on_live(channel, message) {
            Live::Held | Live::Skip => {}
            Live::Deliver(message) => {
                self.fan_out(channel, message.id, &message.payload, Some(&message.kind));
            }
            Live::GiveUp(message) => {
                // Holding more would grow without bound if Redis never answers the read:
                // give the catch-up up (subscribers get a reset) and go live.
                let budget = self.config.limits.max_pending_bytes;
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
        let redis = self.broker.redis()?;
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
        let channels = self.fanout.last_ids().into_iter();
        self.redis_work
            .begin_catch_ups(channels.filter(|(channel, _)| lost(channel)));
    }

    /// Channels whose subscription is confirmed again, with the command link up: read what
    /// they missed.
    pub(super) fn continue_catch_ups(&mut self) {
        let Some(redis) = self.broker.redis_mut() else {
            return;
        };
        let unread = self
            .redis_work
            .read_catch_ups(redis, self.config.history_len);
        for (channel, why) in unread {
            if let Unread::Refused(refusal) = why {
                self.metrics.limit_hit(refusal.limit());
                let warning = format!("channel {channel}: catch-up read refused: {refusal}");
                self.warnings.warn(refusal.limit(), &warning);
            }
            self.finish_catch_up(&channel, Err(why.to_string()));
        }
    }

    /// Delivers the missed events, then the live ones held meanwhile (minus those the history
    /// already had). If the history cannot cover the gap, subscribers are told to reset.
    pub(super) fn finish_catch_up(
        &mut self,
        channel: &str,
        result: Result<Result<Page, TooOld>, String>,
    ) {
        let still_joined = self.fanout.lookup(channel).is_some();
        let Some(caught_up) = self
            .redis_work
            .finish_catch_up(channel, result, still_joined)
        else {
            return;
        };
        if let Some(why) = &caught_up.failure {
            self.warnings.warn(
                "catch-up failed",
                &format!("channel {channel}: cannot read what was missed: {why}"),
            );
        }
        if !caught_up.missed.is_empty() {
            log::info!(
                "channel {channel}: delivering {} events missed while the Redis subscription was down",
                caught_up.missed.len()
            );
        }
        for stored in &caught_up.missed {
            self.broadcast(channel, Some(stored.id), &stored.json);
        }
        if let Some(reason) = caught_up.reset {
            self.reset_channel(channel, caught_up.since, reason);
        }
        // Through the seam: those the history already delivered are dropped.
        for message in caught_up.held {
            self.relay(channel, message);
        }
    }
}

/// Whether a parked publish's connection is still there, waiting for its answer.
fn awaits(conns: &slab::Slab<crate::conn::Conn>, parked: &Parked) -> bool {
    conns
        .get(parked.key)
        .is_some_and(|c| c.awaits_answer(parked.serial))
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
