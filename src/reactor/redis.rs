//! The Redis links, the reactor's side: drive their sockets and timers, and turn what they
//! report (messages, confirmed subscriptions, replies, ups and downs) into work for the
//! reactor. Also the bookkeeping of work waiting on Redis, each kind with its count for the
//! caps (`MAX_PENDING_PUBLISHES`, `MAX_PENDING_READS`, `MAX_PENDING_BYTES`):
//! - `PendingQueue`: commands sent, oldest first (replies come in that order);
//! - `AwaitingRedis`: replays that wait for the link or the subscription before reading, with
//!   when they began to wait (answered by `REDIS_TIMEOUT_MS` at the latest).

use std::collections::VecDeque;
use std::time::Instant;

use mio::Token;

use super::Reactor;
use super::pending::Pending;
use super::resume::WaitingReplay;
use crate::broker::Broker;
use crate::occupancy::RedisKeys;
use crate::resp::cluster::tagged_prefix;
use crate::resp::link::{LinkEvent, Role};

impl Reactor {
    pub(super) fn on_link_ready(&mut self, token: Token) {
        let Broker::Redis(redis) = &mut self.broker else {
            return;
        };
        redis.on_ready(
            token,
            self.poll.registry(),
            &mut self.scratch,
            &mut self.link_events,
        );
        self.drain_link_events();
    }

    /// Whether a poll token belongs to a Redis link.
    pub(super) fn is_link_token(&self, token: Token) -> bool {
        matches!(&self.broker, Broker::Redis(redis) if redis.owns(token))
    }

    pub(super) fn on_link_wake(&mut self) {
        if let Broker::Redis(redis) = &mut self.broker {
            redis.on_wake(self.poll.registry(), &mut self.link_events);
        }
        self.drain_link_events();
    }

    pub(super) fn flush_links(&mut self) {
        if let Broker::Redis(redis) = &mut self.broker {
            redis.flush(self.poll.registry(), &mut self.link_events);
        }
        self.drain_link_events();
    }

    /// The Redis links' timers: connection attempts, stalls, idle checks, slot-map reads.
    pub(super) fn on_link_timers(&mut self, now: Instant) {
        if let Broker::Redis(redis) = &mut self.broker {
            redis.on_timer(
                now,
                self.poll.registry(),
                &self.waker,
                &mut self.link_events,
            );
        }
        self.drain_link_events();
    }

    pub(super) fn drain_link_events(&mut self) {
        let mut events = std::mem::take(&mut self.link_events);
        for event in events.drain(..) {
            match event {
                LinkEvent::Message { channel, payload } => {
                    self.on_redis_message(&channel, &payload)
                }
                LinkEvent::Subscribed(_) => self.on_redis_progress(),
                LinkEvent::Reply(reply) => self.on_redis_reply(reply),
                LinkEvent::Up(role) => {
                    self.metrics.redis_reconnects += 1;
                    if role == Role::Publisher {
                        // Redis may have restarted empty: our counts are written again.
                        self.occupancy.redis_reconnected(Instant::now());
                    }
                    self.on_redis_progress();
                }
                LinkEvent::Down(Role::Subscriber) => {
                    self.begin_catch_up();
                    self.retry_parked(Some("Redis unavailable: the subscription was lost"));
                }
                LinkEvent::Down(Role::Publisher) => {}
                LinkEvent::LimitHit(limit) => self.metrics.limit_hit(limit),
                LinkEvent::SubscriptionsLost(channels) => {
                    let lost: Vec<String> = channels
                        .iter()
                        .filter_map(|c| self.local_channel(c))
                        .collect();
                    self.begin_catch_up_of(|channel| lost.iter().any(|l| l == channel));
                }
                LinkEvent::BecameCluster => {
                    if let Some(keys) = self.occupancy.redis_keys() {
                        let prefix = tagged_prefix(&self.config.channel_prefix);
                        let keys = RedisKeys::new(&prefix, keys.replica_id.clone());
                        self.occupancy.rename_redis_keys(keys);
                    }
                }
                // Shard-channel news is handled by the cluster links themselves.
                LinkEvent::SubscribeRefused { .. } | LinkEvent::Unsubscribed(_) => {}
            }
        }
        self.link_events = events;
    }
}

/// Commands sent to Redis and not yet answered, oldest first, counted by kind.
#[derive(Debug, Default)]
pub(super) struct PendingQueue {
    queue: VecDeque<Pending>,
    publishes: usize,
    /// Bytes of the events of `publishes` (their commands sit in the link's output buffer,
    /// the kernel's, or Redis's).
    publish_bytes: usize,
    reads: usize,
}

impl PendingQueue {
    pub fn push_back(&mut self, pending: Pending) {
        match &pending {
            Pending::Publish { bytes, .. } => {
                self.publishes += 1;
                self.publish_bytes += bytes;
            }
            Pending::HttpHistory { .. } | Pending::Replay(_) | Pending::CatchUp { .. } => {
                self.reads += 1
            }
            Pending::Occupancy(work) => self.reads += usize::from(work.is_request()),
        }
        self.queue.push_back(pending);
    }

    pub fn pop_front(&mut self) -> Option<Pending> {
        let pending = self.queue.pop_front()?;
        match &pending {
            Pending::Publish { bytes, .. } => {
                self.publishes -= 1;
                self.publish_bytes -= bytes;
            }
            Pending::HttpHistory { .. } | Pending::Replay(_) | Pending::CatchUp { .. } => {
                self.reads -= 1
            }
            Pending::Occupancy(work) => self.reads -= usize::from(work.is_request()),
        }
        Some(pending)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn publishes(&self) -> usize {
        self.publishes
    }

    pub fn publish_bytes(&self) -> usize {
        self.publish_bytes
    }

    pub fn reads(&self) -> usize {
        self.reads
    }
}

/// Replays waiting for Redis before they can read their history, oldest first.
#[derive(Debug, Default)]
pub(super) struct AwaitingRedis {
    entries: VecDeque<(Instant, WaitingReplay)>,
}

impl AwaitingRedis {
    pub fn push(&mut self, waiting: WaitingReplay) {
        self.entries.push_back((Instant::now(), waiting));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &WaitingReplay> {
        self.entries.iter().map(|(_, replay)| replay)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&WaitingReplay) -> bool) {
        self.entries.retain(|(_, replay)| keep(replay));
    }

    /// Takes out those `ready` says can go on, keeping the others in order.
    pub fn take_ready(
        &mut self,
        mut ready: impl FnMut(&WaitingReplay) -> bool,
    ) -> Vec<WaitingReplay> {
        let (taken, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(_, waiting)| ready(waiting));
        self.entries = kept;
        taken.into_iter().map(|(_, waiting)| waiting).collect()
    }

    /// When the oldest began to wait.
    pub fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|(since, _)| *since)
    }

    /// Takes out those that began to wait at or before `cutoff`.
    pub fn take_waiting_since(&mut self, cutoff: Instant) -> Vec<WaitingReplay> {
        let mut taken = Vec::new();
        while let Some((since, _)) = self.entries.front()
            && *since <= cutoff
        {
            let (_, replay) = self.entries.pop_front().expect("bug: front was just seen");
            taken.push(replay);
        }
        taken
    }
}
