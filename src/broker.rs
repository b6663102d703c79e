//! Broker: where a published event goes before it reaches the sockets.
//!
//! - `Embedded` (no Redis configured): the event is delivered to local clients at once.
//! - `Redis`: the event is PUBLISHed on the shared channel and comes back, to this replica
//!   and every other, through the SUBSCRIBE link. A replica's own events take the same path
//!   as everyone else's: one path to the sockets, one order for every client.
//!
//! The broker knows events and links, not sockets: the reactor keeps the FIFO of HTTP requests
//! waiting for a PUBLISH verdict and does the delivering.

use crate::config::{Config, RedisUrl};
use crate::resp::link::{RedisLink, Role};

/// Tokens of the two Redis links, above any slab key.
pub const REDIS_SUB: mio::Token = mio::Token(usize::MAX - 2);
pub const REDIS_PUB: mio::Token = mio::Token(usize::MAX - 3);

#[derive(Debug)]
pub struct RedisBroker {
    pub subscriber: RedisLink,
    pub publisher: RedisLink,
    pub channel: String,
}

#[derive(Debug)]
pub enum Broker {
    Embedded,
    Redis(Box<RedisBroker>),
}

/// What became of a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Publish {
    /// Embedded: deliver it to local clients now; the publish is done.
    DeliverNow,
    /// Sent to Redis: the verdict arrives later as `LinkEvent::Published`, in order.
    Pending,
    /// Cannot be published now (Redis down): answer 503, never a false success.
    Unavailable(String),
}

impl Broker {
    pub fn from_config(config: &Config) -> Broker {
        match &config.redis {
            None => Broker::Embedded,
            Some(url) => Broker::Redis(Box::new(RedisBroker::new(url, &config.channel))),
        }
    }

    pub fn publish(&mut self, json: &[u8]) -> Publish {
        match self {
            Broker::Embedded => Publish::DeliverNow,
            Broker::Redis(redis) => {
                // Acknowledge only what will also reach this replica's own clients: with the
                // subscription down, a "success" would be a lie to them.
                if !redis.is_ready() {
                    let why = redis
                        .publisher
                        .last_error()
                        .or(redis.subscriber.last_error())
                        .unwrap_or("connecting");
                    return Publish::Unavailable(format!("Redis unavailable: {why}"));
                }
                redis.publisher.publish(redis.channel.as_bytes(), json);
                Publish::Pending
            }
        }
    }

    /// For `/health`: `embedded`, or the Redis link state.
    pub fn state(&self) -> &'static str {
        match self {
            Broker::Embedded => "embedded",
            Broker::Redis(redis) if redis.is_ready() => "connected",
            Broker::Redis(_) => "disconnected",
        }
    }

    pub fn last_error(&self) -> Option<&str> {
        match self {
            Broker::Embedded => None,
            Broker::Redis(redis) => redis
                .publisher
                .last_error()
                .or(redis.subscriber.last_error()),
        }
    }
}

impl RedisBroker {
    fn new(url: &RedisUrl, channel: &str) -> RedisBroker {
        RedisBroker {
            subscriber: RedisLink::new(Role::Subscriber, REDIS_SUB, url.clone(), channel),
            publisher: RedisLink::new(Role::Publisher, REDIS_PUB, url.clone(), channel),
            channel: channel.to_string(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.subscriber.is_ready() && self.publisher.is_ready()
    }

    pub fn link_mut(&mut self, token: mio::Token) -> Option<&mut RedisLink> {
        match token {
            REDIS_SUB => Some(&mut self.subscriber),
            REDIS_PUB => Some(&mut self.publisher),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_refuse_publishes_until_redis_is_up() {
        let mut config = Config::local(0);
        config.redis = Some(RedisUrl::parse("redis://127.0.0.1:1").unwrap());
        let mut broker = Broker::from_config(&config);
        assert_eq!(broker.state(), "disconnected");
        assert!(matches!(broker.publish(b"{}"), Publish::Unavailable(_)));
        assert_eq!(Broker::Embedded.publish(b"{}"), Publish::DeliverNow);
    }
}
