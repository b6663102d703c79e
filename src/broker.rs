//! Broker: where a published event goes before it reaches the sockets, and where its history
//! is kept.
//!
//! - `Embedded` (no Redis configured): the process's hub (`hub.rs`) gives the event an id,
//!   keeps it in a bounded ring per channel (`history.rs`) and hands it to every reactor.
//! - `Redis`: one Lua script appends the event to the channel's capped stream (`XADD ...
//!   MAXLEN ~ N`, then `EXPIRE`, so the stream of a channel nobody publishes to any more goes
//!   away) and PUBLISHes it with the stream id inside, atomically, so the id in the live
//!   message is the id in the history. The event comes back, to this replica and every other,
//!   through the subscriber link: one path to the sockets, one order for every client.
//!   History reads are bounded in entries and in bytes by the script itself, so no reply
//!   Herald asks for is larger than the RESP limits it decodes with.
//!
//! Which ids to believe: other programs publish on the same Redis channels (the tutorial's
//! app, `redis-cli PUBLISH`), and their payloads may carry an `"id"` of any value. Herald's
//! own ids are Redis stream ids, stamped by Redis's clock when the script ran, so they are
//! never ahead of Redis's clock when they arrive. The command link reads that clock (TIME, at
//! connect and when idle) and an id is trusted only if it is not ahead of it by more than
//! `ID_CLOCK_SLACK`. A far-future id from `redis-cli` is then relayed as a foreign message
//! (no id): it cannot become a channel's resume point nor hide later events.
//!
//! The broker knows events, channels and links, not sockets: the reactor keeps the FIFO of
//! requests waiting for a reply and does the delivering.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mio::{Registry, Token, Waker};

use crate::channel::{RedisNames, key_beside};
use crate::config::{ClusterMode, Config, RedisUrl};
use crate::event::{self, Event, EventId};
use crate::history::{HistoryLimits, Page, PageSize, StoredEvent, TooOld};
use crate::http::route::MAX_HISTORY_LIMIT;
use crate::hub::{Accepted, Hub};
use crate::ratelog::truncate_error;
use crate::resp::cluster::{TopologyCounts, key_slot};
use crate::resp::cmd::{Reply, RespLimits};
use crate::resp::link::{LinkEvent, LinkSettings, RedisLink, Role};
use crate::resp::shards::{ShardLinks, ShardState};

/// Tokens of the two Redis links, above any slab key.
pub const REDIS_SUB: mio::Token = mio::Token(usize::MAX - 2);
pub const REDIS_PUB: mio::Token = mio::Token(usize::MAX - 3);

/// KEYS: stream, channel, and the idempotency key's Redis key if the publish has one. ARGV:
/// the event's JSON (no id), the stream's MAXLEN, its TTL in seconds ('0': none), the
/// idempotency window in seconds. Returns {id, receivers}, or {the first publish's id, 0, 1}
/// when the idempotency key was already used within the window: nothing is appended or
/// published then. The check and the `SET ... NX EX` are in the same script as the append,
/// so two replicas racing with one key cannot both publish (Redis runs scripts one at a
/// time). The id is spliced in front exactly as `event::with_id` does.
///
/// On a Redis Cluster (`SHARDED_PUBLISH_SCRIPT`) the channel is not a key: KEYS are the
/// stream and the idempotency key; the shard channel is ARGV[5] and the script SPUBLISHes.
/// While a slot migrates, a node runs a command only if it holds all its keys (else ASK or
/// TRYAGAIN), and a channel is never a key it holds. A script may append to a key and
/// publish to a shard channel of the same slot (`cluster::key_beside` puts them there).
macro_rules! publish_script {
    ($publish:literal, $channel:literal, $seen:literal) => {
        concat!(
            "if ",
            $seen,
            " then\n  local seen = redis.call('GET', ",
            $seen,
            ")\n",
            r#"  if seen then return {seen, 0, 1} end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
if ARGV[3] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
"#,
            "if ",
            $seen,
            " then redis.call('SET', ",
            $seen,
            ", id, 'NX', 'EX', ARGV[4]) end\n",
            r#"local msg = '{"id":"' .. id .. '",' .. string.sub(ARGV[1], 2)
return {id, redis.call('"#,
            $publish,
            "', ",
            $channel,
            ", msg)}"
        )
    };
}
const PUBLISH_SCRIPT: &str = publish_script!("PUBLISH", "KEYS[2]", "KEYS[3]");
const SHARDED_PUBLISH_SCRIPT: &str = publish_script!("SPUBLISH", "ARGV[5]", "KEYS[2]");

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

/// How far ahead of Redis's clock (as last read) an event id may be and still be trusted:
/// covers the round trip of the TIME that read it and the drift since.
pub const ID_CLOCK_SLACK_MS: i64 = 1000;

#[derive(Debug)]
pub struct RedisBroker {
    links: Links,
    pub names: RedisNames,
    history_len: usize,
    /// Most bytes of events one history read returns (the script's budget).
    page_bytes: usize,
    /// `EXPIRE` of a stream after each event, as text for the script ('0': none).
    ttl_secs: String,
    /// `IDEMPOTENCY_WINDOW_SECS` as text for the script; `None`: keys are ignored.
    idempotency_secs: Option<String>,
    /// Every Redis URL given: a cluster's seed nodes, if the first one turns out to be one.
    seeds: Vec<RedisUrl>,
    settings: LinkSettings,
    /// The newest id Redis's own replies vouched for (publish replies, history reads): ids up
    /// to it are trusted even if Redis's clock was behind its stream.
    newest_confirmed: EventId,
}

/// The embedded broker as one reactor sees it: the process's hub, and whether this reactor
/// handed events to the others this turn (they are woken once, before it flushes).
#[derive(Debug)]
pub struct EmbeddedBroker {
    pub hub: Arc<Hub>,
    reactor: usize,
    handed_over: bool,
}

impl EmbeddedBroker {
    /// Wakes the other reactors if this one published since the last call.
    pub fn wake_others(&mut self) {
        if std::mem::take(&mut self.handed_over) {
            self.hub.wake_others(self.reactor);
        }
    }
}

/// How Herald reaches Redis. (One per reactor, built once: the size difference between
/// the variants costs nothing.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Links {
    /// One Redis: a subscriber link and a command link. `deciding`: `REDIS_CLUSTER=auto`
    /// and the command link's handshake has not yet said whether the node runs in cluster
    /// mode; the subscriber waits unconnected meanwhile (its channels are remembered).
    Single {
        subscriber: RedisLink,
        publisher: RedisLink,
        deciding: bool,
    },
    /// A Redis Cluster: links per node (`resp::shards`).
    Cluster(Box<ShardLinks>),
}

#[derive(Debug)]
pub enum Broker {
    Embedded(EmbeddedBroker),
    Redis(Box<RedisBroker>),
}

/// What became of a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Publish {
    /// Embedded: stored and handed to every reactor's inbox (this one's included);
    /// `receivers`: clients subscribed to the channel in the process.
    Sequenced { id: EventId, receivers: usize },
    /// Embedded: the idempotency key was used within the window: the first publish's id,
    /// nothing delivered. (With Redis the script says so in its reply.)
    Duplicate(EventId),
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
    /// The broker of reactor `reactor`: embedded, through the process's `hub`; with Redis, its
    /// own links (each reactor is a replica of its own).
    pub fn for_reactor(config: &Config, hub: Option<Arc<Hub>>, reactor: usize) -> Broker {
        match (&config.redis, hub) {
            (Some(url), _) => Broker::Redis(Box::new(RedisBroker::new(url, config))),
            (None, hub) => {
                let hub = hub.unwrap_or_else(|| {
                    let limits = HistoryLimits {
                        events_per_channel: config.history_len,
                        max_bytes: config.history_max_bytes,
                        max_channels: config.max_channels,
                        ttl_ms: config.history_ttl.map(|ttl| ttl.as_millis() as u64),
                    };
                    Arc::new(Hub::new(
                        1,
                        limits,
                        config.idempotency,
                        config.inbox,
                        now_ms(),
                    ))
                });
                Broker::Embedded(EmbeddedBroker {
                    hub,
                    reactor,
                    handed_over: false,
                })
            }
        }
    }

    /// A one-reactor broker (embedded: a hub of its own).
    pub fn from_config(config: &Config) -> Broker {
        Broker::for_reactor(config, None, 0)
    }

    /// Publishes an event. `needs_live_subscription`: this replica has clients on the channel
    /// who would only get the event live, so its Redis subscription must be confirmed.
    /// `idempotency_key`: checked and stored by the hub (embedded) or by the publish script.
    pub fn publish(
        &mut self,
        event: &Event,
        needs_live_subscription: bool,
        idempotency_key: Option<&str>,
    ) -> Publish {
        match self {
            Broker::Embedded(embedded) => {
                match embedded.hub.publish(event, idempotency_key, now_ms()) {
                    Accepted::Sequenced { id, receivers } => {
                        embedded.handed_over = true;
                        Publish::Sequenced { id, receivers }
                    }
                    Accepted::Duplicate(id) => Publish::Duplicate(id),
                }
            }
            Broker::Redis(redis) => {
                let channel = redis.names.channel(&event.channel);
                let json = Bytes::from(event.to_json(None));
                redis.publish(&channel, json, needs_live_subscription, idempotency_key)
            }
        }
    }

    /// Reads one page of a channel's history after `since` (or the latest, without it).
    pub fn read_history(&mut self, channel: &str, since: Option<EventId>, size: PageSize) -> Read {
        match self {
            Broker::Embedded(embedded) => {
                Read::Done(embedded.hub.read_history(channel, since, size))
            }
            Broker::Redis(redis) => redis.read_history(channel, since, size),
        }
    }

    /// The Redis side, for what only it has: its links' sockets and timers, commands of
    /// other modules (occupancy), reads that wait for the link (`Coordinator`).
    pub fn redis(&self) -> Option<&RedisBroker> {
        match self {
            Broker::Embedded(_) => None,
            Broker::Redis(redis) => Some(redis),
        }
    }

    pub fn redis_mut(&mut self) -> Option<&mut RedisBroker> {
        match self {
            Broker::Embedded(_) => None,
            Broker::Redis(redis) => Some(redis),
        }
    }

    /// The process's hub, when embedded: its counts over every reactor, its gauges.
    pub fn hub(&self) -> Option<&Arc<Hub>> {
        match self {
            Broker::Embedded(embedded) => Some(&embedded.hub),
            Broker::Redis(_) => None,
        }
    }

    /// Whether work waits on Redis (and its caps apply): false when embedded, where every
    /// publish and read is answered at once.
    pub fn waits(&self) -> bool {
        matches!(self, Broker::Redis(_))
    }

    /// A local client joined `channel`; `first`: the channel's first here. Embedded, the hub
    /// counts every client of the process; with Redis, the channel is subscribed to once.
    pub fn joined(&mut self, channel: &str, first: bool) {
        match self {
            Broker::Embedded(embedded) => embedded.hub.count_subscriber(channel, true),
            Broker::Redis(redis) if first => redis.subscribe(channel),
            Broker::Redis(_) => {}
        }
    }

    /// A local client left `channel`; `last`: no one is left here.
    pub fn left(&mut self, channel: &str, last: bool) {
        match self {
            Broker::Embedded(embedded) => embedded.hub.count_subscriber(channel, false),
            Broker::Redis(redis) if last => redis.unsubscribe(channel),
            Broker::Redis(_) => {}
        }
    }

    /// The end of a reactor's turn, before it flushes: embedded, the other reactors are
    /// woken if this one published (they write meanwhile).
    pub fn end_turn(&mut self) {
        if let Broker::Embedded(embedded) = self {
            embedded.wake_others();
        }
    }

    /// When the Redis links next need the reactor (connects, stalls, idle checks).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.redis().map(RedisBroker::next_deadline)
    }

    /// The reactor is stopping: embedded, nothing more is kept for it in the hub.
    pub fn close(&self, reactor: usize) {
        if let Broker::Embedded(embedded) = self {
            embedded.hub.close_inbox(reactor);
        }
    }

    /// For `/health`: `embedded`, or the Redis link state: `connected`, `stalled` (Redis
    /// stopped answering: a command or a handshake timed out, and no new connection has been
    /// answered since), `disconnected`, or on a cluster `degraded` (some shards reachable,
    /// not all).
    pub fn state(&self) -> &'static str {
        match self {
            Broker::Embedded(_) => "embedded",
            Broker::Redis(redis) => redis.state(),
        }
    }

    pub fn last_error(&self) -> Option<&str> {
        match self {
            Broker::Embedded(_) => None,
            Broker::Redis(redis) => redis.last_error(),
        }
    }
}

impl RedisBroker {
    fn new(url: &RedisUrl, config: &Config) -> RedisBroker {
        // A history read returns at most what one subscriber may have queued: a larger page
        // could not be sent to it at once anyway (it would be closed as a slow consumer).
        let page_bytes = config.limits.max_queued_bytes;
        let settings = LinkSettings {
            limits: RespLimits::for_pages(
                config.limits.max_queued_bytes,
                config.history_len.max(MAX_HISTORY_LIMIT),
                page_bytes,
            ),
            timeout: config.limits.redis_timeout,
            sharded: false,
            ask_cluster: config.redis_cluster == ClusterMode::Auto,
        };
        let seeds = if config.redis_seeds.is_empty() {
            vec![url.clone()]
        } else {
            config.redis_seeds.clone()
        };
        let links = match config.redis_cluster {
            ClusterMode::On => Links::Cluster(Box::new(ShardLinks::new(
                &seeds,
                settings,
                std::iter::empty(),
            ))),
            ClusterMode::Auto | ClusterMode::Off => Links::Single {
                subscriber: RedisLink::new(Role::Subscriber, REDIS_SUB, url.clone(), settings),
                publisher: RedisLink::new(Role::Publisher, REDIS_PUB, url.clone(), settings),
                deciding: config.redis_cluster == ClusterMode::Auto,
            },
        };
        RedisBroker {
            links,
            seeds,
            settings,
            names: RedisNames {
                default_channel: config.channel.clone(),
                prefix: config.channel_prefix.clone(),
            },
            history_len: config.history_len,
            page_bytes,
            ttl_secs: config
                .redis_history_ttl
                .map_or_else(|| "0".to_string(), |ttl| ttl.as_secs().max(1).to_string()),
            newest_confirmed: EventId::default(),
            idempotency_secs: config
                .idempotency
                .window_ms
                .map(|ms| (ms / 1000).max(1).to_string()),
        }
    }

    /// Whether an id found in a message on the subscription can be Herald's own: not ahead
    /// of Redis's clock (plus `ID_CLOCK_SLACK_MS`) nor of the newest id Redis confirmed.
    /// Before the clock is known, no id is trusted.
    pub fn trusts_id(&self, id: EventId, now_ms: u64) -> bool {
        if id <= self.newest_confirmed {
            return true;
        }
        let Some(offset) = self.clock_offset_ms() else {
            return false;
        };
        let redis_now = (now_ms as i64).saturating_add(offset);
        (id.ms as i64) <= redis_now.saturating_add(ID_CLOCK_SLACK_MS)
    }

    /// Whether Redis's clock has been read, so that `trusts_id` can judge an id.
    pub fn knows_clock(&self) -> bool {
        self.clock_offset_ms().is_some()
    }

    fn clock_offset_ms(&self) -> Option<i64> {
        match &self.links {
            Links::Single { publisher, .. } => publisher.clock_offset_ms(),
            Links::Cluster(cluster) => cluster.clock_offset_ms(),
        }
    }

    /// An id Redis itself returned (a publish reply, a stream entry).
    pub fn confirmed(&mut self, id: EventId) {
        self.newest_confirmed = self.newest_confirmed.max(id);
    }

    /// Every link up (single Redis), or every shard's master reachable (cluster).
    pub fn is_ready(&self) -> bool {
        match &self.links {
            Links::Single {
                subscriber,
                publisher,
                deciding,
            } => !deciding && subscriber.is_ready() && publisher.is_ready(),
            Links::Cluster(cluster) => cluster.is_ready(),
        }
    }

    /// A channel's history can be read and joined to its live events without a gap: the
    /// command link (to the channel's shard) is up and Redis confirmed the channel's
    /// subscription.
    pub fn can_replay(&self, channel: &str) -> bool {
        let channel = self.names.channel(channel);
        match &self.links {
            Links::Single {
                subscriber,
                publisher,
                ..
            } => publisher.is_ready() && subscriber.is_subscribed(channel.as_bytes()),
            Links::Cluster(cluster) => {
                cluster.can_send(key_slot(channel.as_bytes())).is_ok()
                    && cluster.is_subscribed(channel.as_bytes())
            }
        }
    }

    fn state(&self) -> &'static str {
        match &self.links {
            Links::Single {
                subscriber,
                publisher,
                ..
            } => {
                if self.is_ready() && subscriber.all_subscribed() {
                    "connected"
                } else if publisher.is_stalled() || subscriber.is_stalled() {
                    "stalled"
                } else {
                    "disconnected"
                }
            }
            Links::Cluster(cluster) => {
                if cluster.is_ready() && cluster.all_subscribed() {
                    "connected"
                } else if cluster.is_stalled() {
                    "stalled"
                } else if cluster.shards().iter().any(|s| s.state == "connected") {
                    "degraded"
                } else {
                    "disconnected"
                }
            }
        }
    }

    fn last_error(&self) -> Option<&str> {
        match &self.links {
            Links::Single {
                subscriber,
                publisher,
                ..
            } => publisher.last_error().or(subscriber.last_error()),
            Links::Cluster(cluster) => cluster.last_error(),
        }
    }

    fn unavailable(&self) -> String {
        let why = self.last_error().unwrap_or("connecting");
        format!("Redis unavailable: {why}")
    }

    /// On a cluster: each shard's master, slots and state (`/health`).
    pub fn shards(&self) -> Option<Vec<ShardState>> {
        match &self.links {
            Links::Single { .. } => None,
            Links::Cluster(cluster) => Some(cluster.shards()),
        }
    }

    /// On a cluster: redirects followed, slot-map reads, failovers seen (`/metrics`).
    pub fn cluster_counts(&self) -> Option<TopologyCounts> {
        match &self.links {
            Links::Single { .. } => None,
            Links::Cluster(cluster) => Some(cluster.counts()),
        }
    }

    fn publish(
        &mut self,
        channel: &str,
        json: Bytes,
        needs_live_subscription: bool,
        idempotency_key: Option<&str>,
    ) -> Publish {
        let cluster = matches!(self.links, Links::Cluster(_));
        // Single Redis: acknowledge only what will also reach this replica's own clients;
        // with their subscription down, a "success" would be a lie to them. (A cluster: the
        // channel's own subscription decides, below.)
        if !cluster && !self.is_ready() {
            return Publish::Unavailable(self.unavailable());
        }
        let slot = key_slot(channel.as_bytes());
        if let Links::Cluster(links) = &self.links
            && let Err(why) = links.can_send(slot)
        {
            return Publish::Unavailable(why);
        }
        if needs_live_subscription && !self.is_subscribed(channel) {
            return Publish::AwaitSubscription;
        }
        let (script, stream) = if cluster {
            let Some(stream) = key_beside(channel, "history") else {
                return Publish::Unavailable(format!("channel {channel} cannot live in a cluster"));
            };
            (SHARDED_PUBLISH_SCRIPT, stream)
        } else {
            (PUBLISH_SCRIPT, format!("{channel}:history"))
        };
        let maxlen = self.history_len.to_string();
        let text = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let mut args = vec![
            Bytes::from_static(b"EVAL"),
            Bytes::from_static(script.as_bytes()),
        ];
        let window = match (idempotency_key, &self.idempotency_secs) {
            (Some(key), Some(window)) => {
                // Next to the channel's stream, with the same prefix (and slot).
                let seen = if cluster {
                    key_beside(channel, &format!("idempotency:{key}"))
                        .expect("bug: the stream's key was placed")
                } else {
                    format!("{channel}:idempotency:{key}")
                };
                Some((seen, window.clone()))
            }
            _ => None,
        };
        let keys: Vec<&str> = match (&window, cluster) {
            (Some((seen, _)), false) => vec![&stream, channel, seen],
            (None, false) => vec![&stream, channel],
            (Some((seen, _)), true) => vec![&stream, seen],
            (None, true) => vec![&stream],
        };
        args.push(text(&keys.len().to_string()));
        args.extend(keys.iter().map(|key| text(key)));
        args.extend([
            json,
            text(&maxlen),
            text(&self.ttl_secs),
            window.map_or(Bytes::from_static(b"0"), |(_, w)| text(&w)),
        ]);
        if cluster {
            args.push(text(channel));
        }
        self.send(slot, args);
        Publish::Pending
    }

    pub fn read_history(&mut self, channel: &str, since: Option<EventId>, size: PageSize) -> Read {
        let redis_channel = self.names.channel(channel);
        let slot = key_slot(redis_channel.as_bytes());
        let stream = match &self.links {
            Links::Single { publisher, .. } => {
                if !publisher.is_ready() {
                    return Read::Unavailable(self.unavailable());
                }
                self.names.stream_key(channel)
            }
            Links::Cluster(cluster) => {
                if let Err(why) = cluster.can_send(slot) {
                    return Read::Unavailable(why);
                }
                match key_beside(&redis_channel, "history") {
                    Some(stream) => stream,
                    None => return Read::Unavailable("no history in a cluster".into()),
                }
            }
        };
        let since = since.map(|id| id.to_string()).unwrap_or_default();
        let events = size.events.to_string();
        // Never more than the RESP limits were sized for (`RespLimits::for_pages`).
        let bytes = size.bytes.min(self.page_bytes).to_string();
        let text = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let args = vec![
            Bytes::from_static(b"EVAL"),
            Bytes::from_static(HISTORY_SCRIPT.as_bytes()),
            Bytes::from_static(b"1"),
            text(&stream),
            text(&since),
            text(&events),
            text(&bytes),
        ];
        self.send(slot, args);
        Read::Pending
    }

    /// Sends a command whose keys are in `slot` (a cluster routes by it).
    fn send(&mut self, slot: u16, args: Vec<Bytes>) {
        match &mut self.links {
            Links::Single { publisher, .. } => {
                let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
                publisher.command(&refs);
            }
            Links::Cluster(cluster) => cluster.command(slot, args),
        }
    }

    /// Whether commands can be sent (the command link is up; on a cluster, every master's).
    pub fn commands_ready(&self) -> bool {
        match &self.links {
            Links::Single { publisher, .. } => publisher.is_ready(),
            Links::Cluster(cluster) => cluster.is_ready(),
        }
    }

    /// Sends a command of another module (occupancy). On a cluster it goes to the node that
    /// serves its first key (an EVAL's first KEYS entry); its answer comes back in order
    /// with every other command's, as a failure if that node cannot take it.
    pub fn command(&mut self, args: &[Vec<u8>]) {
        let first_key = match args {
            [eval, _, numkeys, key, ..]
                if eval.eq_ignore_ascii_case(b"EVAL") && numkeys.as_slice() != b"0" =>
            {
                key.as_slice()
            }
            [_, key, ..] => key.as_slice(),
            _ => b"",
        };
        let slot = key_slot(first_key);
        self.send(
            slot,
            args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
        );
    }

    /// Whether Redis confirmed this replica's subscription to a (local) channel.
    fn is_subscribed(&self, redis_channel: &str) -> bool {
        match &self.links {
            Links::Single { subscriber, .. } => subscriber.is_subscribed(redis_channel.as_bytes()),
            Links::Cluster(cluster) => cluster.is_subscribed(redis_channel.as_bytes()),
        }
    }

    /// A local channel got its first subscriber: receive it from Redis.
    pub fn subscribe(&mut self, channel: &str) {
        let redis_channel = self.names.channel(channel);
        match &mut self.links {
            Links::Single { subscriber, .. } => subscriber.subscribe(redis_channel.as_bytes()),
            Links::Cluster(cluster) => cluster.subscribe(redis_channel.as_bytes()),
        }
    }

    /// A local channel lost its last subscriber.
    pub fn unsubscribe(&mut self, channel: &str) {
        let redis_channel = self.names.channel(channel);
        match &mut self.links {
            Links::Single { subscriber, .. } => subscriber.unsubscribe(redis_channel.as_bytes()),
            Links::Cluster(cluster) => cluster.unsubscribe(redis_channel.as_bytes()),
        }
    }

    // ---- driving the links (the reactor's calls) ------------------------------------------

    /// Whether a poll token is one of the Redis links'.
    pub fn owns(&self, token: Token) -> bool {
        match &self.links {
            Links::Single { .. } => token == REDIS_SUB || token == REDIS_PUB,
            Links::Cluster(cluster) => cluster.owns(token),
        }
    }

    pub fn next_deadline(&self) -> Instant {
        match &self.links {
            Links::Single {
                subscriber,
                publisher,
                deciding,
            } if !deciding => subscriber.next_deadline().min(publisher.next_deadline()),
            Links::Single { publisher, .. } => publisher.next_deadline(),
            Links::Cluster(cluster) => cluster.next_deadline(),
        }
    }

    pub fn on_ready(
        &mut self,
        token: Token,
        registry: &Registry,
        scratch: &mut [u8],
        events: &mut Vec<LinkEvent>,
    ) {
        let from = events.len();
        match &mut self.links {
            Links::Single {
                subscriber,
                publisher,
                ..
            } => match token {
                REDIS_SUB => subscriber.on_ready(registry, scratch, events),
                REDIS_PUB => publisher.on_ready(registry, scratch, events),
                _ => {}
            },
            Links::Cluster(cluster) => cluster.on_ready(token, registry, scratch, events),
        }
        self.settle_mode(registry, events, from);
    }

    pub fn on_wake(&mut self, registry: &Registry, events: &mut Vec<LinkEvent>) {
        let from = events.len();
        match &mut self.links {
            Links::Single {
                subscriber,
                publisher,
                ..
            } => {
                subscriber.on_wake(registry, events);
                publisher.on_wake(registry, events);
            }
            Links::Cluster(cluster) => cluster.on_wake(registry, events),
        }
        self.settle_mode(registry, events, from);
    }

    pub fn on_timer(
        &mut self,
        now: Instant,
        registry: &Registry,
        waker: &Arc<Waker>,
        events: &mut Vec<LinkEvent>,
    ) {
        let from = events.len();
        match &mut self.links {
            Links::Single {
                subscriber,
                publisher,
                deciding,
            } => {
                if !*deciding {
                    subscriber.on_timer(now, registry, waker, events);
                }
                publisher.on_timer(now, registry, waker, events);
            }
            Links::Cluster(cluster) => cluster.on_timer(now, registry, waker, events),
        }
        self.settle_mode(registry, events, from);
    }

    /// Writes what the links have queued.
    pub fn flush(&mut self, registry: &Registry, events: &mut Vec<LinkEvent>) {
        let from = events.len();
        match &mut self.links {
            Links::Single {
                subscriber,
                publisher,
                ..
            } => {
                if publisher.has_output() {
                    publisher.flush(registry, events);
                }
                if subscriber.has_output() {
                    subscriber.flush(registry, events);
                }
            }
            Links::Cluster(cluster) => cluster.flush(registry, events),
        }
        self.settle_mode(registry, events, from);
    }

    /// `REDIS_CLUSTER=auto`: once the command link's handshake has said what the node is,
    /// stay on one Redis (the subscriber connects now), or become a cluster client seeded
    /// with every URL given (the single links are closed; the channels wanted move over).
    /// The link's `Up` is held back until then: nothing may be sent before the mode is known.
    fn settle_mode(&mut self, registry: &Registry, events: &mut [LinkEvent], from: usize) {
        let Links::Single {
            subscriber,
            publisher,
            deciding: deciding @ true,
        } = &mut self.links
        else {
            return;
        };
        let Some(position) = events[from..]
            .iter()
            .position(|e| *e == LinkEvent::Up(Role::Publisher))
        else {
            return;
        };
        match publisher.cluster_enabled() {
            Some(true) => {
                events[from + position] = LinkEvent::BecameCluster;
                log::info!(
                    "{} runs in cluster mode (REDIS_CLUSTER=auto): Redis Cluster client, seeds {}",
                    publisher.url(),
                    self.seeds
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let wanted: Vec<Bytes> = subscriber.wanted().cloned().collect();
                let mut dropped = Vec::new();
                publisher.close(registry, "switching to cluster mode", &mut dropped);
                let settings = LinkSettings {
                    ask_cluster: false,
                    ..self.settings
                };
                self.links = Links::Cluster(Box::new(ShardLinks::new(
                    &self.seeds,
                    settings,
                    wanted.into_iter(),
                )));
            }
            Some(false) | None => *deciding = false,
        }
    }
}

/// What the publish script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: EventId,
    /// Redis's subscriber count (replicas listening); 0 for a duplicate.
    pub receivers: i64,
    /// The idempotency key was used within the window: `id` is the first publish's, and
    /// nothing was published now.
    pub duplicate: bool,
}

/// The publish script's reply: `{id, receivers}`, or `{id, 0, 1}` for a duplicate.
pub fn parse_published(reply: Reply) -> Result<Published, String> {
    use redis_protocol::resp2::types::BytesFrame as F;
    let parse_id = |id: &Bytes| {
        std::str::from_utf8(id)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "bad id in publish reply".to_string())
    };
    match reply {
        Reply::Other(F::Array(parts)) => match &parts[..] {
            [F::BulkString(id), F::Integer(n)] => Ok(Published {
                id: parse_id(id)?,
                receivers: *n,
                duplicate: false,
            }),
            [F::BulkString(id), F::Integer(0), F::Integer(1)] => Ok(Published {
                id: parse_id(id)?,
                receivers: 0,
                duplicate: true,
            }),
            _ => Err(unexpected("publish", &parts)),
        },
        Reply::Error(e) => Err(truncate_error(&format!("Redis: {e}"))),
        other => Err(unexpected("publish", &other)),
    }
}

/// A reply of the wrong shape, described briefly for a log line or an error body.
fn unexpected(what: &str, reply: &impl std::fmt::Debug) -> String {
    truncate_error(&format!("unexpected {what} reply {reply:?}"))
}

/// The history script's reply, checked against `since`: a page of the events after it, or
/// `TooOld` if the stream is gone (Redis lost it) or no longer reaches back to `since`.
pub fn parse_history(reply: Reply, since: Option<EventId>) -> Result<Result<Page, TooOld>, String> {
    use redis_protocol::resp2::types::BytesFrame as F;
    let parts = match reply {
        Reply::Other(F::Array(parts)) => parts,
        Reply::Error(e) => return Err(truncate_error(&format!("Redis: {e}"))),
        other => return Err(unexpected("history", &other)),
    };
    let (first, entries, more) = match &parts[..] {
        [first, F::Array(entries)] => (first, entries, false),
        [first, F::Array(entries), F::Integer(more)] => (first, entries, *more == 1),
        _ => return Err(unexpected("history", &parts)),
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
            broker.publish(&event(), true, None),
            Publish::Unavailable(_)
        ));
        assert!(matches!(
            broker.read_history("events", None, PageSize::events(5)),
            Read::Unavailable(_)
        ));
    }

    #[test]
    fn should_publish_to_a_shard_channel_that_is_not_a_key_on_a_cluster() {
        assert!(
            PUBLISH_SCRIPT
                .starts_with("if KEYS[3] then\n  local seen = redis.call('GET', KEYS[3])\n")
        );
        assert!(PUBLISH_SCRIPT.ends_with("return {id, redis.call('PUBLISH', KEYS[2], msg)}"));
        assert!(
            SHARDED_PUBLISH_SCRIPT.contains("redis.call('SET', KEYS[2], id, 'NX', 'EX', ARGV[4])")
        );
        assert!(
            SHARDED_PUBLISH_SCRIPT.ends_with("return {id, redis.call('SPUBLISH', ARGV[5], msg)}")
        );
        assert!(!SHARDED_PUBLISH_SCRIPT.contains("KEYS[3]"));
    }

    #[test]
    fn should_store_and_number_embedded_events() {
        let mut broker = Broker::from_config(&Config::local(0));
        let Publish::Sequenced { id, receivers: 0 } = broker.publish(&event(), false, None) else {
            panic!()
        };
        let Read::Done(Ok(page)) = broker.read_history("events", None, PageSize::events(10)) else {
            panic!()
        };
        assert_eq!(page.events[0].id, id);
        assert_eq!(event::peek_id(&page.events[0].json), Some(id));
    }

    fn bulk(s: &str) -> F {
        F::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn should_parse_script_replies() {
        let published = Reply::Other(F::Array(vec![bulk("5-1"), F::Integer(3)]));
        let id = EventId { ms: 5, seq: 1 };
        assert_eq!(
            parse_published(published),
            Ok(Published {
                id,
                receivers: 3,
                duplicate: false
            })
        );
        let seen = Reply::Other(F::Array(vec![bulk("5-1"), F::Integer(0), F::Integer(1)]));
        assert_eq!(
            parse_published(seen),
            Ok(Published {
                id,
                receivers: 0,
                duplicate: true
            })
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
