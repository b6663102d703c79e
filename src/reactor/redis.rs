//! The Redis links, the reactor's side: drive their sockets and timers, and turn what they
//! report (messages, confirmed subscriptions, replies, ups and downs) into work for the
//! reactor. (What waits on Redis meanwhile, and what each reply means: `crate::coordinator`.)

use std::time::Instant;

use mio::Token;

use super::Reactor;
use crate::occupancy::RedisKeys;
use crate::resp::cluster::tagged_prefix;
use crate::resp::link::{LinkEvent, Role};

impl Reactor {
    pub(super) fn on_link_ready(&mut self, token: Token) {
        let Some(redis) = self.broker.redis_mut() else {
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
        self.broker.redis().is_some_and(|redis| redis.owns(token))
    }

    pub(super) fn on_link_wake(&mut self) {
        if let Some(redis) = self.broker.redis_mut() {
            redis.on_wake(self.poll.registry(), &mut self.link_events);
        }
        self.drain_link_events();
    }

    pub(super) fn flush_links(&mut self) {
        if let Some(redis) = self.broker.redis_mut() {
            redis.flush(self.poll.registry(), &mut self.link_events);
        }
        self.drain_link_events();
    }

    /// The Redis links' timers: connection attempts, stalls, idle checks, slot-map reads.
    pub(super) fn on_link_timers(&mut self, now: Instant) {
        if let Some(redis) = self.broker.redis_mut() {
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
