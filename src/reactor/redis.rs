//! The Redis links, the reactor's side: drive their sockets and timers, and turn what they
//! report (messages, confirmed subscriptions, replies, ups and downs) into work for the
//! reactor. (What waits on Redis meanwhile, and what each reply means: `crate::coordinator`.)

use std::time::Instant;

use mio::Token;

use super::Reactor;
use crate::channel::tagged_prefix;
use crate::coordinator::Answer;
use crate::coordinator::outcome::Outcome;
use crate::occupancy::RedisKeys;
use crate::resp::cmd;
use crate::resp::link::LinkFailure;
use crate::resp::link::{LinkEvent, Role};
use log::error;

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

    /// A link came up or a subscription was confirmed: replays and catch-ups that waited for
    /// Redis may read their history now.
    pub(super) fn on_redis_progress(&mut self) {
        self.continue_waiting_replays();
        self.continue_catch_ups();
        self.retry_parked(None);
    }

    /// The reply to the oldest outstanding Redis command.
    pub(super) fn on_redis_reply(&mut self, reply: Result<cmd::Reply, LinkFailure>) {
        let Some(answer) = self.redis_work.on_reply(reply) else {
            error!("bug: a Redis reply with no request waiting for it");
            return;
        };
        if let (Some(id), Some(redis)) = (answer.confirmed_id(), self.broker.redis_mut()) {
            redis.confirmed(id);
        }
        match answer {
            Answer::Publish {
                key,
                serial,
                keep_alive,
                slot,
                event,
                outcome,
                waited,
                warning,
            } => {
                if let Outcome::Published { duplicate, .. } = outcome {
                    if duplicate {
                        self.metrics.publish_duplicates += 1;
                    } else {
                        self.metrics.events_published += 1;
                    }
                    self.metrics.publish_latency.observe(waited);
                }
                if let Some((kind, message)) = warning {
                    self.warn_peer(key, kind, &message);
                }
                self.settle((key, serial, keep_alive), slot, event, outcome);
            }
            Answer::History { request, result } => self.answer_history(request, result),
            Answer::ReplayPage { page_read, result } => {
                let key = page_read.key();
                self.on_replay_page(page_read, result);
                self.continue_replay(key);
            }
            Answer::Occupancy { work, reply } => self.on_occupancy_reply(work, reply),
            Answer::CatchUpRead { channel, result } => self.finish_catch_up(&channel, result),
            Answer::CatchUpLost => self.continue_catch_ups(),
        }
    }
}
