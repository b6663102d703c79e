//! Broker: where a published event goes before it reaches the sockets, and where its history
//! is kept.
//!
//! - `Embedded` (no Redis configured): the event gets an id, goes into a bounded ring per
//!   channel (`history.rs`) and is delivered to local clients at once.
//! - `Redis`: one Lua script appends the event to the channel's capped stream (`XADD ...
//!   MAXLEN ~ N`) and PUBLISHes it with the stream id inside, atomically, so the id in the live
//!   message is the id in the history. The event comes back, to this replica and every other,
//!   through the subscriber link: one path to the sockets, one order for every client.
//!
//! The broker knows events, channels and links, not sockets: the reactor keeps the FIFO of
//! requests waiting for a reply and does the delivering.

use bytes::Bytes;

use crate::channel::RedisNames;
use crate::config::{Config, RedisUrl};
use crate::event::{self, Event, EventId};
use crate::history::{History, HistoryLimits, Page, PageSize, StoredEvent, TooOld};
use crate::resp::cmd::Reply;
use crate::resp::link::{RedisLink, Role};

/// Tokens of the two Redis links, above any slab key.
pub const REDIS_SUB: mio::Token = mio::Token(usize::MAX - 2);
pub const REDIS_PUB: mio::Token = mio::Token(usize::MAX - 3);

/// KEYS: stream, channel. ARGV: the event's JSON (no id), the stream's MAXLEN.
/// Returns {id, receivers}. The id is spliced in front exactly as `event::with_id` does.
const PUBLISH_SCRIPT: &str = r#"local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
local msg = '{"id":"' .. id .. '",' .. string.sub(ARGV[1], 2)
return {id, redis.call('PUBLISH', KEYS[2], msg)}"#;

/// KEYS: stream. ARGV: the id to resume after ('' for the latest), the most entries, the
/// most bytes of event JSON (at least one entry is returned, whatever its size).
/// Returns {first id kept or false, entries (oldest first), 1 if more entries follow}: one
/// script, so no trim can slip in between the check and the range. Entries are read 64 at a
/// time and the page is cut by bytes in Redis, so a page of large events never crosses the
/// link in full (nor sits in a client's queue).
const HISTORY_SCRIPT: &str = r#"local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 then return {false, {}, 0} end
local limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local latest = ARGV[1] == ''
local from = latest and '+' or ('(' .. ARGV[1])
local out, bytes, more = {}, 0, 0
while more == 0 do
  local want = math.min(64, limit - #out + 1)
  local batch
  if latest then
    batch = redis.call('XREVRANGE', KEYS[1], from, '-', 'COUNT', want)
  else
    batch = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', want)
  end
  for _, e in ipairs(batch) do
    local size = #e[2][2]
    if #out == limit or (#out > 0 and bytes + size > budget) then more = 1; break end
    out[#out + 1] = e
    bytes = bytes + size
    from = '(' .. e[1]
  end
  if #batch < want then break end
end
if latest then
  local n = #out
  for i = 1, math.floor(n / 2) do out[i], out[n - i + 1] = out[n - i + 1], out[i] end
end
return {first[1][1], out, more}"#;

#[derive(Debug)]
pub struct RedisBroker {
    pub subscriber: RedisLink,
    pub publisher: RedisLink,
    pub names: RedisNames,
    history_len: usize,
}

#[derive(Debug)]
pub enum Broker {
    Embedded(Box<History>),
    Redis(Box<RedisBroker>),
}

/// What became of a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Publish {
    /// Embedded: stored; deliver this JSON (id inside) to local clients now.
    DeliverNow { id: EventId, json: Bytes },
    /// Sent to Redis: the verdict arrives later as a link reply, in order.
    Pending,
    /// Not sent yet: this replica's subscription to the channel is being confirmed (a client
    /// just joined it). Try again once it is, so that its own clients get the event live.
    AwaitSubscription,
    /// Cannot be published now (Redis down): answer 503, never a false success.
    Unavailable(String),
}

/// What became of a history read.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Done(Result<Page, TooOld>),
    Pending,
    Unavailable(String),
}

impl Broker {
    pub fn from_config(config: &Config) -> Broker {
        match &config.redis {
            None => {
                let limits = HistoryLimits {
                    events_per_channel: config.history_len,
                    max_bytes: config.history_max_bytes,
                    max_channels: config.max_channels,
                    ttl_ms: config.history_ttl.map(|ttl| ttl.as_millis() as u64),
                };
                Broker::Embedded(Box::new(History::with_limits(limits, now_ms())))
            }
            Some(url) => Broker::Redis(Box::new(RedisBroker::new(url, config))),
        }
    }

    /// Publishes an event. `needs_live_subscription`: this replica has clients on the channel
    /// who would only get the event live, so its Redis subscription must be confirmed.
    pub fn publish(&mut self, event: &Event, needs_live_subscription: bool) -> Publish {
        match self {
            Broker::Embedded(history) => {
                let id = history.next_id(now_ms());
                let mut json = event.to_json(Some(id));
                // Exactly its length: the history counts what it holds by length.
                json.shrink_to_fit();
                let json = Bytes::from(json);
                history.push(&event.channel, id, json.clone());
                Publish::DeliverNow { id, json }
            }
            Broker::Redis(redis) => {
                let channel = redis.names.channel(&event.channel);
                // Acknowledge only what will also reach this replica's own clients: with
                // their subscription down, a "success" would be a lie to them.
                if !redis.publisher.is_ready() || !redis.subscriber.is_ready() {
                    return Publish::Unavailable(redis.unavailable());
                }
                if needs_live_subscription && !redis.subscriber.is_subscribed(channel.as_bytes()) {
                    return Publish::AwaitSubscription;
                }
                let stream = redis.names.stream_key(&event.channel);
                let maxlen = redis.history_len.to_string();
                redis.publisher.command(&[
                    b"EVAL",
                    PUBLISH_SCRIPT.as_bytes(),
                    b"2",
                    stream.as_bytes(),
                    channel.as_bytes(),
                    &event.to_json(None),
                    maxlen.as_bytes(),
                ]);
                Publish::Pending
            }
        }
    }

    /// Reads one page of a channel's history after `since` (or the latest, without it).
    pub fn read_history(&mut self, channel: &str, since: Option<EventId>, size: PageSize) -> Read {
        match self {
            Broker::Embedded(history) => Read::Done(history.read(channel, since, size)),
            Broker::Redis(redis) => {
                if !redis.publisher.is_ready() {
                    return Read::Unavailable(redis.unavailable());
                }
                let stream = redis.names.stream_key(channel);
                let since = since.map(|id| id.to_string()).unwrap_or_default();
                let events = size.events.to_string();
                let bytes = size.bytes.to_string();
                redis.publisher.command(&[
                    b"EVAL",
                    HISTORY_SCRIPT.as_bytes(),
                    b"1",
                    stream.as_bytes(),
                    since.as_bytes(),
                    events.as_bytes(),
                    bytes.as_bytes(),
                ]);
                Read::Pending
            }
        }
    }

    /// For `/health`: `embedded`, or the Redis link state.
    pub fn state(&self) -> &'static str {
        match self {
            Broker::Embedded(_) => "embedded",
            Broker::Redis(redis) if redis.is_ready() && redis.subscriber.all_subscribed() => {
                "connected"
            }
            Broker::Redis(_) => "disconnected",
        }
    }

    pub fn last_error(&self) -> Option<&str> {
        match self {
            Broker::Embedded(_) => None,
            Broker::Redis(redis) => redis
                .publisher
                .last_error()
                .or(redis.subscriber.last_error()),
        }
    }
}

impl RedisBroker {
    fn new(url: &RedisUrl, config: &Config) -> RedisBroker {
        RedisBroker {
            subscriber: RedisLink::new(Role::Subscriber, REDIS_SUB, url.clone()),
            publisher: RedisLink::new(Role::Publisher, REDIS_PUB, url.clone()),
            names: RedisNames {
                default_channel: config.channel.clone(),
                prefix: config.channel_prefix.clone(),
            },
            history_len: config.history_len,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.subscriber.is_ready() && self.publisher.is_ready()
    }

    /// A channel's history can be read and joined to its live events without a gap: the
    /// command link is up and Redis confirmed the channel's subscription.
    pub fn can_replay(&self, channel: &str) -> bool {
        self.publisher.is_ready()
            && self
                .subscriber
                .is_subscribed(self.names.channel(channel).as_bytes())
    }

    fn unavailable(&self) -> String {
        let why = self
            .publisher
            .last_error()
            .or(self.subscriber.last_error())
            .unwrap_or("connecting");
        format!("Redis unavailable: {why}")
    }

    pub fn link_mut(&mut self, token: mio::Token) -> Option<&mut RedisLink> {
        match token {
            REDIS_SUB => Some(&mut self.subscriber),
            REDIS_PUB => Some(&mut self.publisher),
            _ => None,
        }
    }
}

/// The publish script's reply: `{id, receivers}`.
pub fn parse_published(reply: Reply) -> Result<(EventId, i64), String> {
    use redis_protocol::resp2::types::BytesFrame as F;
    match reply {
        Reply::Other(F::Array(parts)) => match &parts[..] {
            [F::BulkString(id), F::Integer(n)] => std::str::from_utf8(id)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(|id| (id, *n))
                .ok_or_else(|| "bad id in publish reply".to_string()),
            _ => Err(format!("unexpected publish reply {parts:?}")),
        },
        Reply::Error(e) => Err(format!("Redis: {e}")),
        other => Err(format!("unexpected publish reply {other:?}")),
    }
}

/// The history script's reply, checked against `since`: a page of the events after it, or
/// `TooOld` if the stream is gone (Redis lost it) or no longer reaches back to `since`.
pub fn parse_history(reply: Reply, since: Option<EventId>) -> Result<Result<Page, TooOld>, String> {
    use redis_protocol::resp2::types::BytesFrame as F;
    let parts = match reply {
        Reply::Other(F::Array(parts)) => parts,
        Reply::Error(e) => return Err(format!("Redis: {e}")),
        other => return Err(format!("unexpected history reply {other:?}")),
    };
    let (first, entries, more) = match &parts[..] {
        [first, F::Array(entries)] => (first, entries, false),
        [first, F::Array(entries), F::Integer(more)] => (first, entries, *more == 1),
        _ => return Err(format!("unexpected history reply {parts:?}")),
    };
    let parse_id = |b: &Bytes| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<EventId>().ok())
    };
    let first = match first {
        F::BulkString(id) => Some(parse_id(id).ok_or("bad stream id")?),
        _ => None,
    };
    if let Some(since) = since {
        match first {
            None => {
                return Ok(Err(TooOld {
                    reason: "history lost: Redis has no history for this channel",
                }));
            }
            // Conservative: resuming is exact only if `since` is still in the stream (or
            // newer); events between it and the oldest kept one may have been trimmed.
            Some(first) if since < first => {
                return Ok(Err(TooOld {
                    reason: "the id is older than the history kept",
                }));
            }
            Some(_) => {}
        }
    }
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let F::Array(pair) = entry else { continue };
        let [F::BulkString(id_bytes), F::Array(fields)] = &pair[..] else {
            continue;
        };
        let (Some(id), Some(F::BulkString(json))) = (parse_id(id_bytes), fields.get(1)) else {
            continue;
        };
        let id_text = std::str::from_utf8(id_bytes).unwrap_or_default();
        events.push(StoredEvent {
            id,
            json: Bytes::from(event::with_id(json, id_text)),
        });
    }
    Ok(Ok(Page { events, more }))
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp2::types::BytesFrame as F;

    fn event() -> Event {
        Event {
            kind: "a".into(),
            message: "b".into(),
            channel: "events".into(),
        }
    }

    #[test]
    fn should_refuse_publishes_until_redis_is_up() {
        let mut config = Config::local(0);
        config.redis = Some(RedisUrl::parse("redis://127.0.0.1:1").unwrap());
        let mut broker = Broker::from_config(&config);
        assert_eq!(broker.state(), "disconnected");
        assert!(matches!(
            broker.publish(&event(), true),
            Publish::Unavailable(_)
        ));
        assert!(matches!(
            broker.read_history("events", None, PageSize::events(5)),
            Read::Unavailable(_)
        ));
    }

    #[test]
    fn should_store_and_number_embedded_events() {
        let mut broker = Broker::from_config(&Config::local(0));
        let Publish::DeliverNow { id, json } = broker.publish(&event(), false) else {
            panic!()
        };
        assert_eq!(event::peek_id(&json), Some(id));
        let Read::Done(Ok(page)) = broker.read_history("events", None, PageSize::events(10)) else {
            panic!()
        };
        assert_eq!(page.events[0].json, json);
    }

    fn bulk(s: &str) -> F {
        F::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn should_parse_script_replies() {
        let published = Reply::Other(F::Array(vec![bulk("5-1"), F::Integer(3)]));
        assert_eq!(
            parse_published(published),
            Ok((EventId { ms: 5, seq: 1 }, 3))
        );
        let entry = |id: &str| {
            F::Array(vec![
                bulk(id),
                F::Array(vec![bulk("e"), bulk("{\"type\":\"x\"}")]),
            ])
        };
        let history = || {
            Reply::Other(F::Array(vec![
                bulk("5-0"),
                F::Array(vec![entry("6-0"), entry("7-0")]),
            ]))
        };
        let page = parse_history(history(), Some(EventId { ms: 5, seq: 0 }))
            .unwrap()
            .unwrap();
        assert_eq!(page.events.len(), 2);
        assert!(!page.more);
        assert_eq!(&page.events[1].json[..], br#"{"id":"7-0","type":"x"}"#);
        assert!(
            parse_history(history(), Some(EventId { ms: 4, seq: 0 }))
                .unwrap()
                .is_err()
        );
        let lost = Reply::Other(F::Array(vec![F::Null, F::Array(vec![])]));
        assert!(
            parse_history(lost, Some(EventId { ms: 4, seq: 0 }))
                .unwrap()
                .is_err()
        );
        let lost = Reply::Other(F::Array(vec![F::Null, F::Array(vec![])]));
        assert_eq!(parse_history(lost, None), Ok(Ok(Page::default())));
    }
}
