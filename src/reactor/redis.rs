//! The Redis links, the reactor's side: drive their sockets and timers, and turn what they
//! report (messages, confirmed subscriptions, replies, ups and downs) into work for the
//! reactor.

use mio::Token;

use super::Reactor;
use crate::broker::Broker;
use crate::resp::link::{LinkEvent, Role};

impl Reactor {
    pub(super) fn on_link_ready(&mut self, token: Token) {
        let Broker::Redis(redis) = &mut self.broker else {
            return;
        };
        if let Some(link) = redis.link_mut(token) {
            link.on_ready(
                self.poll.registry(),
                &mut self.scratch,
                &mut self.link_events,
            );
        }
        self.drain_link_events();
    }

    pub(super) fn on_wake(&mut self) {
        if let Broker::Redis(redis) = &mut self.broker {
            let registry = self.poll.registry();
            redis.subscriber.on_wake(registry, &mut self.link_events);
            redis.publisher.on_wake(registry, &mut self.link_events);
        }
        self.drain_link_events();
    }

    pub(super) fn flush_links(&mut self) {
        if let Broker::Redis(redis) = &mut self.broker {
            let registry = self.poll.registry();
            if redis.publisher.has_output() {
                redis.publisher.flush(registry, &mut self.link_events);
            }
            if redis.subscriber.has_output() {
                redis.subscriber.flush(registry, &mut self.link_events);
            }
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
                LinkEvent::Up(_) => {
                    self.metrics.redis_reconnects += 1;
                    self.on_redis_progress();
                }
                LinkEvent::Down(Role::Subscriber) => {
                    self.begin_catch_up();
                    self.retry_parked(Some("Redis unavailable: the subscription was lost"));
                }
                LinkEvent::Down(Role::Publisher) => {}
            }
        }
        self.link_events = events;
    }
}
