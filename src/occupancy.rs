//! Occupancy: how many subscribers each channel has, who asked to hear when that changes, and
//! when each channel's watchers are due to hear it. Socket-free: the reactor reports changes
//! (a channel's local subscriber count, counts read from elsewhere) and applies what comes
//! back (updates to queue on watchers, counts to write to Redis, channels to read).
//!
//! A channel's total is its local count (this reactor's subscribers, WebSocket and SSE, kept
//! in step with the fan-out) plus its count elsewhere: other replicas, read from Redis. Local
//! changes show at once; counts from elsewhere are as fresh as the last read. Where the counts
//! come from is kept behind `local_counts` (out) and `set_elsewhere` (in), so another source
//! (other reactors of the same process) can be added without touching the decisions here.
//!
//! Updates are coalesced per channel: a change after a quiet `UPDATE_EVERY` goes out at once,
//! later ones wait until `UPDATE_EVERY` has passed since the last update, and then only the
//! latest total goes (one text, framed once for every watcher of the channel). A change that
//! ends where the last update left off sends nothing. Due times sit in a heap: a turn looks
//! only at channels whose time has come.
//!
//! Redis mode (each reactor a replica, with a random id; keys under `CHANNEL_PREFIX`):
//! - `<prefix>:occupancy:replica:<id>`: hash channel -> count, this replica's counts. Every
//!   `OCCUPANCY_REFRESH_MS` a flush writes the channels whose count changed since the last
//!   one (all of them after a reconnect or a failed flush) and sets the hash to expire after
//!   three refreshes;
//! - `<prefix>:occupancy:replicas`: sorted set id -> expiry (Redis's clock, ms), renewed by
//!   the same flush. Readers add up only replicas whose expiry is ahead, so a dead replica's
//!   clients drop out within three refreshes of its last flush;
//! - `<prefix>:occupancy:channels`: sorted set of channel names with a count somewhere, for
//!   listing in name order (a name left by a dead replica goes when a listing finds it at 0).
//!
//! Every script's work is bounded: a flush by the names it carries (`FLUSH_BATCH`), a read by
//! the names it asks about (`READ_BATCH`) times the live replicas, a listing by its `limit`
//! times the live replicas. None scans the keyspace.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame as F;
use smallvec::SmallVec;

use crate::ratelog::truncate_error;
use crate::resp::cmd::Reply;

/// At most one update per channel per this long.
pub const UPDATE_EVERY: Duration = Duration::from_secs(1);
/// Most channels one `GET /channels` page looks at.
pub const MAX_LIST_LIMIT: usize = 1000;
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Channels per Redis read of counts elsewhere (one script call each; within the RESP
/// limits' longest array).
pub const READ_BATCH: usize = 500;
/// Channels per flush script call (a resync after a reconnect sends several, pipelined).
pub const FLUSH_BATCH: usize = 500;
/// A replica's counts expire after this many refreshes without a flush.
pub const TTL_REFRESHES: u32 = 3;

/// Caps on watching.
#[derive(Debug, Clone, Copy)]
pub struct OccupancyLimits {
    /// Subscriptions and watches one connection may hold together.
    pub per_connection: usize,
    /// Distinct channels watched at once, every connection together.
    pub max_watched_channels: usize,
}

/// Why a watch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchRefused {
    /// The connection holds `per_connection` subscriptions and watches already.
    PerConnection(usize),
    /// `max_watched_channels` channels are watched already, and this one is new.
    WatchedChannels(usize),
}

/// What a new watcher gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watching {
    /// The total now: answer at once.
    Now(u32),
    /// The count elsewhere is not known yet: the first update brings the total. `read`: the
    /// channel is newly watched, so ask for its count elsewhere now.
    Soon { read: bool },
}

/// A total to send to every watcher of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub channel: String,
    pub subscribers: u32,
    pub watchers: Vec<usize>,
}

/// Local counts to write to Redis. `resync`: Redis may have lost what it had (a reconnect,
/// a failed flush); the replica's hash is replaced, not amended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flush {
    pub resync: bool,
    pub counts: Vec<(Box<str>, u32)>,
}

/// Redis work due now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RedisWork {
    /// Counts to write; always `Some` when a flush is due, even with nothing changed: the
    /// flush renews the replica's expiry.
    pub flush: Option<Flush>,
    /// Watched channels whose count elsewhere to read.
    pub read: Vec<Box<str>>,
}

#[derive(Debug)]
struct Watched {
    watchers: Vec<usize>,
    /// Subscribers elsewhere; `None` until first read (only when counts are shared).
    elsewhere: Option<u32>,
    /// The total last sent to the watchers.
    sent: Option<u32>,
    last_sent: Option<Instant>,
    /// In the due heap.
    scheduled: bool,
}

/// Counts per channel, watchers, and the clocks of their updates and of Redis's copy.
#[derive(Debug)]
pub struct Occupancy {
    limits: OccupancyLimits,
    /// Counts are shared with other replicas (Redis): flush ours, read theirs.
    shared: Option<SharedClock>,
    /// This reactor's subscribers per channel, in name order (for paging).
    local: BTreeMap<Box<str>, u32>,
    /// Channels whose local count changed since the last flush (shared only).
    unflushed: BTreeSet<Box<str>>,
    watched: BTreeMap<Box<str>, Watched>,
    /// The channels each connection watches.
    by_watcher: HashMap<usize, SmallVec<[Box<str>; 2]>>,
    due: BinaryHeap<Reverse<(Instant, Box<str>)>>,
}

/// When Redis's copy is written and read, and what is out.
#[derive(Debug)]
struct SharedClock {
    keys: RedisKeys,
    refresh: Duration,
    next_flush: Instant,
    next_read: Instant,
    /// Flush calls sent and not answered.
    flushes_out: usize,
    read_out: bool,
    resync: bool,
    /// Redis holds no count of ours (none written yet, or the last flush left none): a
    /// replica without subscribers then sends nothing at all.
    holds_nothing: bool,
    /// Shutting down: this replica's counts were taken out of Redis; nothing more is sent.
    left: bool,
    /// Where the next round-robin read of watched channels starts.
    read_from: Option<Box<str>>,
}

impl Occupancy {
    /// Counts of this reactor alone (embedded).
    pub fn new(limits: OccupancyLimits) -> Occupancy {
        Occupancy {
            limits,
            shared: None,
            local: BTreeMap::new(),
            unflushed: BTreeSet::new(),
            watched: BTreeMap::new(),
            by_watcher: HashMap::new(),
            due: BinaryHeap::new(),
        }
    }

    /// Counts shared with other replicas through Redis, ours written every `refresh`.
    pub fn shared(
        limits: OccupancyLimits,
        refresh: Duration,
        keys: RedisKeys,
        now: Instant,
    ) -> Occupancy {
        Occupancy {
            shared: Some(SharedClock {
                keys,
                refresh,
                next_flush: now,
                next_read: now,
                flushes_out: 0,
                read_out: false,
                resync: true,
                holds_nothing: true,
                left: false,
                read_from: None,
            }),
            ..Occupancy::new(limits)
        }
    }

    /// Where the counts live in Redis (shared only).
    pub fn redis_keys(&self) -> Option<&RedisKeys> {
        self.shared.as_ref().map(|clock| &clock.keys)
    }

    /// The Redis behind turned out to be a cluster (`REDIS_CLUSTER=auto`): the counts live
    /// under `keys` instead (same replica id, a prefix that is a hash tag). Nothing was
    /// written under the old names: no command goes out before the mode is known.
    pub fn rename_redis_keys(&mut self, keys: RedisKeys) {
        if let Some(clock) = self.shared.as_mut() {
            clock.keys = keys;
        }
    }

    // ---- counts --------------------------------------------------------------------------

    /// This reactor's subscribers of `channel`.
    pub fn local(&self, channel: &str) -> u32 {
        self.local.get(channel).copied().unwrap_or(0)
    }

    /// Every channel with local subscribers and its count, in name order: what this reactor
    /// contributes to a total kept elsewhere.
    pub fn local_counts(&self) -> impl Iterator<Item = (&str, u32)> {
        self.local.iter().map(|(name, &n)| (&**name, n))
    }

    /// Up to `limit` channels with local subscribers after `after`, in name order, and the
    /// name to continue after if more may follow.
    pub fn local_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(&str, u32)>, Option<&str>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = after.map_or(Unbounded, Excluded);
        let mut range = self.local.range::<str, _>((lower, Unbounded));
        let page: Vec<(&str, u32)> = range
            .by_ref()
            .take(limit)
            .map(|(name, &n)| (&**name, n))
            .collect();
        let next = match range.next() {
            Some(_) => page.last().map(|(name, _)| *name),
            None => None,
        };
        (page, next)
    }

    /// The channel's local subscriber count is now `count`.
    pub fn set_local(&mut self, channel: &str, count: u32, now: Instant) {
        let changed = match (self.local.get_mut(channel), count) {
            (Some(n), _) if *n == count => false,
            (Some(_), 0) => {
                self.local.remove(channel);
                true
            }
            (Some(n), _) => {
                *n = count;
                true
            }
            (None, 0) => false,
            (None, _) => {
                self.local.insert(channel.into(), count);
                true
            }
        };
        if !changed {
            return;
        }
        // A resync writes every local count anyway: no list of names to keep meanwhile (an
        // outage of Redis must not grow it with every channel that comes and goes).
        let listed = self.shared.as_ref().is_some_and(|clock| !clock.resync);
        if listed && !self.unflushed.contains(channel) {
            self.unflushed.insert(channel.into());
        }
        self.schedule(channel, now);
    }

    /// Subscribers of a watched channel elsewhere (other replicas, or embedded the other
    /// reactors of the process). Ignored for channels no one here watches.
    pub fn set_elsewhere(&mut self, channel: &str, count: u32, now: Instant) {
        let Some(watched) = self.watched.get_mut(channel) else {
            return;
        };
        if watched.elsewhere == Some(count) {
            return;
        }
        watched.elsewhere = Some(count);
        self.schedule(channel, now);
    }

    /// The count elsewhere could not be read: a channel that never had one goes on with 0
    /// (its watchers get the local count rather than nothing); the others keep theirs.
    pub fn elsewhere_unavailable(&mut self, channel: &str, now: Instant) {
        if self
            .watched
            .get(channel)
            .is_some_and(|w| w.elsewhere.is_none())
        {
            self.set_elsewhere(channel, 0, now);
        }
    }

    /// Local plus elsewhere, if known.
    fn total(&self, channel: &str) -> Option<u32> {
        let elsewhere = match (&self.shared, self.watched.get(channel)) {
            // Embedded: the other reactors' subscribers, if there are any (`set_elsewhere`).
            (None, watched) => watched.and_then(|w| w.elsewhere).unwrap_or(0),
            (Some(_), Some(watched)) => watched.elsewhere?,
            (Some(_), None) => return None,
        };
        Some(self.local(channel).saturating_add(elsewhere))
    }

    // ---- watchers ------------------------------------------------------------------------

    /// `key` wants the total of `channel` and its changes. `subscriptions`: the channels the
    /// connection receives (they share its cap with its watches).
    pub fn watch(
        &mut self,
        key: usize,
        channel: &str,
        subscriptions: usize,
        now: Instant,
    ) -> Result<Watching, WatchRefused> {
        self.watch_knowing(key, channel, subscriptions, None, now)
    }

    /// `watch`, with the count elsewhere already known (embedded with several reactors: the
    /// process's hub counts every reactor's subscribers), so the first answer is the total.
    pub fn watch_knowing(
        &mut self,
        key: usize,
        channel: &str,
        subscriptions: usize,
        elsewhere: Option<u32>,
        now: Instant,
    ) -> Result<Watching, WatchRefused> {
        if let Some(count) = elsewhere {
            self.set_elsewhere(channel, count, now);
        }
        let mine = self.by_watcher.get(&key);
        if mine.is_some_and(|list| list.iter().any(|c| &**c == channel)) {
            return Ok(self
                .total(channel)
                .map_or(Watching::Soon { read: false }, Watching::Now));
        }
        let per_connection = self.limits.per_connection;
        if subscriptions + mine.map_or(0, |list| list.len()) >= per_connection {
            return Err(WatchRefused::PerConnection(per_connection));
        }
        let max = self.limits.max_watched_channels;
        let is_new = !self.watched.contains_key(channel);
        if is_new && self.watched.len() >= max {
            return Err(WatchRefused::WatchedChannels(max));
        }
        self.by_watcher.entry(key).or_default().push(channel.into());
        let shared = self.shared.is_some();
        let watched = self
            .watched
            .entry(channel.into())
            .or_insert_with(|| Watched {
                watchers: Vec::new(),
                elsewhere,
                sent: None,
                last_sent: None,
                scheduled: false,
            });
        watched.watchers.push(key);
        if shared && watched.elsewhere.is_none() {
            return Ok(Watching::Soon { read: is_new });
        }
        let total = self.total(channel).expect("bug: known total");
        if is_new {
            // The answer counts as the channel's update: the next one waits its turn.
            let watched = self.watched.get_mut(channel).expect("bug: just inserted");
            watched.sent = Some(total);
            watched.last_sent = Some(now);
        }
        Ok(Watching::Now(total))
    }

    /// `key` no longer watches `channel`. Returns whether it did.
    pub fn unwatch(&mut self, key: usize, channel: &str) -> bool {
        let Some(list) = self.by_watcher.get_mut(&key) else {
            return false;
        };
        let Some(at) = list.iter().position(|c| &**c == channel) else {
            return false;
        };
        list.swap_remove(at);
        if list.is_empty() {
            self.by_watcher.remove(&key);
        }
        self.drop_watcher(key, channel);
        true
    }

    /// The connection is gone: every watch of it ends.
    pub fn forget_watcher(&mut self, key: usize) {
        let Some(list) = self.by_watcher.remove(&key) else {
            return;
        };
        for channel in list {
            self.drop_watcher(key, &channel);
        }
    }

    fn drop_watcher(&mut self, key: usize, channel: &str) {
        let Some(watched) = self.watched.get_mut(channel) else {
            return;
        };
        if let Some(at) = watched.watchers.iter().position(|&k| k == key) {
            watched.watchers.swap_remove(at);
        }
        if watched.watchers.is_empty() {
            // Its heap entry, if any, is skipped when it comes due.
            self.watched.remove(channel);
        }
    }

    /// Channels `key` watches.
    pub fn watches(&self, key: usize) -> usize {
        self.by_watcher.get(&key).map_or(0, |list| list.len())
    }

    pub fn watched_by(&self, key: usize) -> Vec<String> {
        self.by_watcher.get(&key).map_or_else(Vec::new, |list| {
            list.iter().map(|c| c.to_string()).collect()
        })
    }

    /// The channels someone here watches, in name order.
    pub fn watched_names(&self) -> impl Iterator<Item = &str> {
        self.watched.keys().map(|name| &**name)
    }

    /// Distinct channels watched.
    pub fn watched_channels(&self) -> usize {
        self.watched.len()
    }

    // ---- the coalescing clock ------------------------------------------------------------

    /// A watched channel's total may have changed: due at once if its last update is
    /// `UPDATE_EVERY` old (or there was none), else when it will be.
    fn schedule(&mut self, channel: &str, now: Instant) {
        let Some(watched) = self.watched.get_mut(channel) else {
            return;
        };
        if watched.scheduled {
            return;
        }
        watched.scheduled = true;
        let at = watched
            .last_sent
            .map_or(now, |last| (last + UPDATE_EVERY).max(now));
        self.due.push(Reverse((at, channel.into())));
    }

    /// The updates due at `now`: the channels whose time has come and whose total differs
    /// from what their watchers were last told.
    pub fn take_due(&mut self, now: Instant) -> Vec<Update> {
        let mut updates = Vec::new();
        while let Some(Reverse((at, _))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Reverse((_, channel)) = self.due.pop().expect("bug: peeked");
            let Some(total) = self.total(&channel) else {
                // Unknown elsewhere yet: the read's answer schedules it again.
                if let Some(watched) = self.watched.get_mut(&channel) {
                    watched.scheduled = false;
                }
                continue;
            };
            let Some(watched) = self.watched.get_mut(&channel) else {
                continue; // no one watches it any more
            };
            watched.scheduled = false;
            if watched.sent == Some(total) {
                continue;
            }
            watched.sent = Some(total);
            watched.last_sent = Some(now);
            updates.push(Update {
                channel: channel.to_string(),
                subscribers: total,
                watchers: watched.watchers.clone(),
            });
        }
        updates
    }

    /// When the reactor must look again, at the latest: the next update due, or the next
    /// flush or read of Redis's copy.
    pub fn next_deadline(&self) -> Option<Instant> {
        let update = self.due.peek().map(|Reverse((at, _))| *at);
        let redis = self
            .shared
            .as_ref()
            .filter(|clock| !clock.left)
            .map(|clock| {
                if self.watched.is_empty() {
                    clock.next_flush
                } else {
                    clock.next_flush.min(clock.next_read)
                }
            });
        match (update, redis) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- Redis's copy --------------------------------------------------------------------

    /// What to send Redis now (nothing unless shared and due; nothing while the previous
    /// flush or read is still out, so a slow Redis never gets a pile of them). With the link
    /// down nothing is sent and the clocks move on; the reconnect writes everything.
    pub fn redis_work(&mut self, now: Instant, link_ready: bool) -> RedisWork {
        let mut work = RedisWork::default();
        let Some(clock) = self.shared.as_mut().filter(|clock| !clock.left) else {
            return work;
        };
        if !link_ready {
            if now >= clock.next_flush {
                clock.next_flush = now + clock.refresh;
                clock.resync = true;
                self.unflushed.clear();
            }
            if now >= clock.next_read {
                clock.next_read = now + UPDATE_EVERY;
            }
            return work;
        }
        if now >= clock.next_flush && clock.flushes_out == 0 {
            clock.next_flush = now + clock.refresh;
            let counts: Vec<(Box<str>, u32)> = if clock.resync {
                self.unflushed.clear();
                self.local
                    .iter()
                    .map(|(name, &n)| (name.clone(), n))
                    .collect()
            } else {
                std::mem::take(&mut self.unflushed)
                    .into_iter()
                    .map(|name| {
                        let n = self.local.get(&name).copied().unwrap_or(0);
                        (name, n)
                    })
                    .collect()
            };
            let resync = std::mem::take(&mut clock.resync);
            let leaves_nothing = self.local.is_empty();
            if !(counts.is_empty() && leaves_nothing && clock.holds_nothing) {
                clock.holds_nothing = leaves_nothing;
                work.flush = Some(Flush { resync, counts });
            }
        }
        if now >= clock.next_read && !clock.read_out && !self.watched.is_empty() {
            clock.next_read = now + UPDATE_EVERY;
            work.read = next_round(&self.watched, &mut clock.read_from, READ_BATCH);
        }
        work
    }

    /// `calls` flush script calls went out.
    pub fn flush_sent(&mut self, calls: usize) {
        if let Some(clock) = self.shared.as_mut() {
            clock.flushes_out += calls;
        }
    }

    /// A flush call was answered; `ok: false`: Redis may not have our counts, so the next
    /// flush writes all of them.
    pub fn flush_answered(&mut self, ok: bool) {
        if let Some(clock) = self.shared.as_mut() {
            clock.flushes_out = clock.flushes_out.saturating_sub(1);
            clock.resync |= !ok;
            if !ok {
                self.unflushed.clear();
            }
            clock.holds_nothing &= ok;
        }
    }

    /// The link to Redis was (re)established: Redis may have restarted, so write everything,
    /// now.
    pub fn redis_reconnected(&mut self, now: Instant) {
        if let Some(clock) = self.shared.as_mut() {
            clock.resync = true;
            self.unflushed.clear();
            clock.next_flush = now;
            clock.next_read = now;
        }
    }

    pub fn read_sent(&mut self) {
        if let Some(clock) = self.shared.as_mut() {
            clock.read_out = true;
        }
    }

    pub fn read_answered(&mut self) {
        if let Some(clock) = self.shared.as_mut() {
            clock.read_out = false;
        }
    }

    /// Shutting down: from now on nothing is written (the clients about to be closed would
    /// write their leaving). True if Redis may hold counts of ours, to be taken out now,
    /// so that they do not linger until they expire while the clients reconnect elsewhere.
    pub fn leave(&mut self) -> bool {
        match self.shared.as_mut() {
            Some(clock) if !clock.left => {
                clock.left = true;
                !clock.holds_nothing || clock.flushes_out > 0
            }
            _ => false,
        }
    }

    /// The expiry of this replica's counts in Redis.
    pub fn ttl(&self) -> Option<Duration> {
        self.shared
            .as_ref()
            .map(|clock| clock.refresh * TTL_REFRESHES)
    }
}

/// Up to `max` watched channels from where the last round stopped, wrapping around to the
/// first ones (never past where it started).
fn next_round(
    watched: &BTreeMap<Box<str>, Watched>,
    from: &mut Option<Box<str>>,
    max: usize,
) -> Vec<Box<str>> {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let start = from.take();
    let lower = start.as_deref().map_or(Unbounded, Excluded);
    let mut names: Vec<Box<str>> = watched
        .range::<str, _>((lower, Unbounded))
        .take(max)
        .map(|(name, _)| name.clone())
        .collect();
    if let Some(start) = start
        && names.len() < max
    {
        let wrapped = watched
            .range::<str, _>((Unbounded, Included(&*start)))
            .take(max - names.len())
            .map(|(name, _)| name.clone());
        names.extend(wrapped);
    }
    *from = names.last().cloned();
    names
}

// ---- Redis: keys, scripts, replies -------------------------------------------------------

/// Where occupancy lives in Redis, for one replica.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    pub replica_id: String,
    replicas: String,
    channels: String,
    /// Prefix of every replica's hash (`<prefix>:occupancy:replica:`).
    hash_prefix: String,
    mine: String,
}

impl RedisKeys {
    pub fn new(prefix: &str, replica_id: String) -> RedisKeys {
        let hash_prefix = format!("{prefix}:occupancy:replica:");
        RedisKeys {
            replicas: format!("{prefix}:occupancy:replicas"),
            channels: format!("{prefix}:occupancy:channels"),
            mine: format!("{hash_prefix}{replica_id}"),
            hash_prefix,
            replica_id,
        }
    }

    /// A random id, so that reactors (and restarts) never share a hash.
    pub fn random_id() -> String {
        format!("{:016x}", fastrand::u64(..))
    }

    /// The flush script's arguments for one batch of counts (`resync`: empty the hash first).
    pub fn flush_command(
        &self,
        ttl: Duration,
        resync: bool,
        counts: &[(Box<str>, u32)],
    ) -> Vec<Vec<u8>> {
        let mut args: Vec<Vec<u8>> = vec![
            b"EVAL".to_vec(),
            FLUSH_SCRIPT.as_bytes().to_vec(),
            b"3".to_vec(),
            self.replicas.as_bytes().to_vec(),
            self.channels.as_bytes().to_vec(),
            self.mine.as_bytes().to_vec(),
            self.replica_id.as_bytes().to_vec(),
            (ttl.as_millis().max(1) as u64).to_string().into_bytes(),
            if resync { b"1".to_vec() } else { b"0".to_vec() },
        ];
        for (name, count) in counts {
            args.push(name.as_bytes().to_vec());
            args.push(count.to_string().into_bytes());
        }
        args
    }

    /// The read script's arguments: counts elsewhere (every live replica but this one) of
    /// each channel, in order.
    pub fn count_command<'a>(&self, channels: impl IntoIterator<Item = &'a str>) -> Vec<Vec<u8>> {
        let mut args: Vec<Vec<u8>> = vec![
            b"EVAL".to_vec(),
            COUNT_SCRIPT.as_bytes().to_vec(),
            b"1".to_vec(),
            self.replicas.as_bytes().to_vec(),
            self.hash_prefix.as_bytes().to_vec(),
            self.replica_id.as_bytes().to_vec(),
        ];
        args.extend(channels.into_iter().map(|c| c.as_bytes().to_vec()));
        args
    }

    /// The leaving script's arguments: this replica's hash and its entry in the replicas set
    /// removed (a clean shutdown).
    pub fn leave_command(&self) -> Vec<Vec<u8>> {
        vec![
            b"EVAL".to_vec(),
            LEAVE_SCRIPT.as_bytes().to_vec(),
            b"2".to_vec(),
            self.replicas.as_bytes().to_vec(),
            self.mine.as_bytes().to_vec(),
            self.replica_id.as_bytes().to_vec(),
        ]
    }

    /// The listing script's arguments: up to `limit` channel names after `after`.
    pub fn list_command(&self, after: Option<&str>, limit: usize) -> Vec<Vec<u8>> {
        vec![
            b"EVAL".to_vec(),
            LIST_SCRIPT.as_bytes().to_vec(),
            b"2".to_vec(),
            self.replicas.as_bytes().to_vec(),
            self.channels.as_bytes().to_vec(),
            self.hash_prefix.as_bytes().to_vec(),
            self.replica_id.as_bytes().to_vec(),
            after.unwrap_or("").as_bytes().to_vec(),
            limit.to_string().into_bytes(),
        ]
    }
}

// Each script reads Redis's clock (expiry is judged by it, not by the replicas' clocks);
// before Redis 7 a script must ask for effects replication to write after `TIME`.

/// KEYS: replicas, channels, this replica's hash. ARGV: replica id, ttl ms, resync ('1':
/// empty the hash first), then name, count pairs (0: remove). Renews this replica's expiry
/// and drops expired replicas from the set. Returns the pairs written.
const FLUSH_SCRIPT: &str = concat!(
    r#"if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#,
    r#"local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then redis.call('DEL', KEYS[3]) end
for i = 4, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  if n > 0 then
    redis.call('HSET', KEYS[3], ARGV[i], n)
    redis.call('ZADD', KEYS[2], 0, ARGV[i])
  else
    redis.call('HDEL', KEYS[3], ARGV[i])
  end
end
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return (#ARGV - 3) / 2"#
);

/// KEYS: replicas, this replica's hash. ARGV: this replica's id. (Names in the channels set
/// that only this replica had are left for listings to remove.)
const LEAVE_SCRIPT: &str = r#"redis.call('DEL', KEYS[2])
return redis.call('ZREM', KEYS[1], ARGV[1])"#;

/// KEYS: replicas. ARGV: hash prefix, this replica's id, then channel names. Returns each
/// channel's count over the live replicas other than this one, in order.
const COUNT_SCRIPT: &str = concat!(
    r#"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#,
    r#"local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local out = {}
for i = 3, #ARGV do out[i - 2] = 0 end
if #ARGV < 3 then return out end
for _, id in ipairs(live) do
  if id ~= ARGV[2] then
    local counts = redis.call('HMGET', ARGV[1] .. id, unpack(ARGV, 3))
    for j, c in ipairs(counts) do
      if c then out[j] = out[j] + tonumber(c) end
    end
  end
end
return out"#
);

/// KEYS: replicas, channels. ARGV: hash prefix, this replica's id, the name to list after
/// ('' from the start), the most names to look at. Returns {{name, count elsewhere}...,
/// next} where next is the last name looked at if the limit was reached (else ''). Names no
/// live replica counts any more are removed from the set on the way.
const LIST_SCRIPT: &str = concat!(
    r#"if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#,
    r#"local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local from = ARGV[3] == '' and '-' or ('(' .. ARGV[3])
local limit = tonumber(ARGV[4])
local names = redis.call('ZRANGEBYLEX', KEYS[2], from, '+', 'LIMIT', 0, limit)
local out = {}
for _, name in ipairs(names) do
  local others, mine = 0, 0
  for _, id in ipairs(live) do
    local c = redis.call('HGET', ARGV[1] .. id, name)
    if c then
      if id == ARGV[2] then mine = tonumber(c) else others = others + tonumber(c) end
    end
  end
  if others + mine == 0 then
    redis.call('ZREM', KEYS[2], name)
  else
    out[#out + 1] = {name, others}
  end
end
local next = ''
if #names == limit then next = names[#names] end
return {out, next}"#
);

/// The read script's reply: one count per channel asked about.
pub fn parse_counts(reply: Reply, expected: usize) -> Result<Vec<u32>, String> {
    let parts = match reply {
        Reply::Other(F::Array(parts)) => parts,
        Reply::Error(e) => return Err(truncate_error(&format!("Redis: {e}"))),
        other => {
            return Err(truncate_error(&format!(
                "unexpected occupancy reply {other:?}"
            )));
        }
    };
    if parts.len() != expected {
        return Err(format!(
            "occupancy reply of {} counts for {expected} channels",
            parts.len()
        ));
    }
    parts.iter().map(count_of).collect()
}

/// A page of the channel listing as Redis answered it.
#[derive(Debug, PartialEq, Eq)]
pub struct ListPage {
    /// Channel names in order, each with its count on the other live replicas.
    pub entries: Vec<(String, u32)>,
    /// The name to continue after, if more may follow.
    pub next: Option<String>,
}

/// The listing script's reply.
pub fn parse_list(reply: Reply) -> Result<ListPage, String> {
    let parts = match reply {
        Reply::Other(F::Array(parts)) => parts,
        Reply::Error(e) => return Err(truncate_error(&format!("Redis: {e}"))),
        other => {
            return Err(truncate_error(&format!(
                "unexpected channel list reply {other:?}"
            )));
        }
    };
    let [F::Array(pairs), next] = &parts[..] else {
        return Err("unexpected channel list reply".into());
    };
    let mut entries = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let F::Array(pair) = pair else {
            return Err("unexpected channel list entry".into());
        };
        let [F::BulkString(name), count] = &pair[..] else {
            return Err("unexpected channel list entry".into());
        };
        entries.push((text(name)?, count_of(count)?));
    }
    let next = match next {
        F::BulkString(name) if !name.is_empty() => Some(text(name)?),
        _ => None,
    };
    Ok(ListPage { entries, next })
}

fn count_of(frame: &F) -> Result<u32, String> {
    match frame {
        F::Integer(n) => u32::try_from(*n).map_err(|_| format!("bad occupancy count {n}")),
        other => Err(format!("bad occupancy count {other:?}")),
    }
}

fn text(bytes: &Bytes) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "channel name not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OccupancyLimits = OccupancyLimits {
        per_connection: 4,
        max_watched_channels: 3,
    };

    fn alone(_now: Instant) -> Occupancy {
        Occupancy::new(LIMITS)
    }

    fn shared(now: Instant) -> Occupancy {
        let keys = RedisKeys::new("events", "r1".into());
        Occupancy::shared(LIMITS, Duration::from_secs(2), keys, now)
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn totals(updates: &[Update]) -> Vec<(&str, u32)> {
        updates
            .iter()
            .map(|u| (u.channel.as_str(), u.subscribers))
            .collect()
    }

    #[test]
    fn should_count_local_subscribers_and_page_them_in_name_order() {
        let t0 = Instant::now();
        let mut o = alone(t0);
        for (name, n) in [("b", 2), ("a", 1), ("c", 3), ("d", 1)] {
            o.set_local(name, n, t0);
        }
        o.set_local("d", 0, t0);
        assert_eq!(o.local("c"), 3);
        assert_eq!(o.local("d"), 0);
        assert_eq!(
            o.local_counts().collect::<Vec<_>>(),
            vec![("a", 1), ("b", 2), ("c", 3)]
        );
        assert_eq!(o.local_page(None, 2), (vec![("a", 1), ("b", 2)], Some("b")));
        assert_eq!(o.local_page(Some("b"), 2), (vec![("c", 3)], None));
        assert_eq!(o.local_page(Some("a"), 2), (vec![("b", 2), ("c", 3)], None));
        assert_eq!(o.local_page(Some("zzz"), 2), (vec![], None));
    }

    #[test]
    fn should_answer_a_watcher_at_once_and_coalesce_later_changes() {
        let t0 = Instant::now();
        let mut o = alone(t0);
        o.set_local("a", 1, t0);
        assert_eq!(o.watch(7, "a", 0, t0), Ok(Watching::Now(1)));
        // The answer was the update of t0: changes within the next second wait.
        for n in 2..=5 {
            o.set_local("a", n, t0 + secs(0.1 * n as f64));
            assert_eq!(o.take_due(t0 + secs(0.1 * n as f64)), vec![]);
        }
        assert_eq!(o.next_deadline(), Some(t0 + UPDATE_EVERY));
        let due = o.take_due(t0 + UPDATE_EVERY);
        assert_eq!(
            due,
            vec![Update {
                channel: "a".into(),
                subscribers: 5,
                watchers: vec![7]
            }]
        );
        // A quiet second later, a change goes out at once.
        let t3 = t0 + secs(3.0);
        o.set_local("a", 4, t3);
        assert_eq!(totals(&o.take_due(t3)), vec![("a", 4)]);
        // Up and back down within the second: nothing to say.
        o.set_local("a", 5, t3 + secs(0.2));
        o.set_local("a", 4, t3 + secs(0.4));
        assert_eq!(o.take_due(t3 + secs(2.0)), vec![]);
        assert_eq!(o.next_deadline(), None);
    }

    #[test]
    fn should_send_each_channel_to_its_own_watchers() {
        let t0 = Instant::now();
        let mut o = alone(t0);
        assert_eq!(o.watch(1, "a", 0, t0), Ok(Watching::Now(0)));
        assert_eq!(o.watch(2, "a", 0, t0), Ok(Watching::Now(0)));
        assert_eq!(o.watch(2, "b", 0, t0), Ok(Watching::Now(0)));
        let t2 = t0 + secs(2.0);
        o.set_local("a", 1, t2);
        o.set_local("b", 3, t2);
        o.set_local("c", 9, t2); // not watched
        let mut due = o.take_due(t2);
        due.sort_by(|x, y| x.channel.cmp(&y.channel));
        assert_eq!(due[0].watchers, vec![1, 2]);
        assert_eq!(totals(&due), vec![("a", 1), ("b", 3)]);
        assert_eq!(due[1].watchers, vec![2]);
    }

    #[test]
    fn should_forget_watchers_and_channels_no_one_watches() {
        let t0 = Instant::now();
        let mut o = alone(t0);
        o.watch(1, "a", 0, t0).unwrap();
        o.watch(1, "b", 0, t0).unwrap();
        o.watch(2, "b", 0, t0).unwrap();
        assert_eq!(o.watches(1), 2);
        assert!(o.unwatch(1, "a"));
        assert!(!o.unwatch(1, "a"));
        assert_eq!(o.watched_channels(), 1);
        o.set_local("b", 1, t0 + secs(0.5));
        o.forget_watcher(1);
        assert_eq!(o.watches(1), 0);
        let due = o.take_due(t0 + secs(5.0));
        assert_eq!(due[0].watchers, vec![2]);
        o.forget_watcher(2);
        assert_eq!(o.watched_channels(), 0);
        o.set_local("b", 2, t0 + secs(9.0));
        assert_eq!(o.take_due(t0 + secs(10.0)), vec![]);
    }

    #[test]
    fn should_cap_watches_with_subscriptions_and_watched_channels() {
        let t0 = Instant::now();
        let mut o = alone(t0);
        // Three subscriptions and one watch fill a cap of four.
        assert!(o.watch(1, "a", 3, t0).is_ok());
        assert_eq!(o.watch(1, "b", 3, t0), Err(WatchRefused::PerConnection(4)));
        // Watching again what it already watches is an answer, not a new watch.
        assert_eq!(o.watch(1, "a", 3, t0), Ok(Watching::Now(0)));
        o.watch(2, "b", 0, t0).unwrap();
        o.watch(2, "c", 0, t0).unwrap();
        assert_eq!(
            o.watch(2, "d", 0, t0),
            Err(WatchRefused::WatchedChannels(3))
        );
        // An already watched channel is always open.
        assert!(o.watch(3, "c", 0, t0).is_ok());
    }

    #[test]
    fn should_wait_for_counts_elsewhere_when_shared() {
        let t0 = Instant::now();
        let mut o = shared(t0);
        o.set_local("a", 2, t0);
        assert_eq!(o.watch(1, "a", 0, t0), Ok(Watching::Soon { read: true }));
        assert_eq!(o.watch(2, "a", 0, t0), Ok(Watching::Soon { read: false }));
        assert_eq!(o.take_due(t0), vec![]);
        o.set_elsewhere("a", 5, t0 + secs(0.1));
        let due = o.take_due(t0 + secs(0.1));
        assert_eq!(totals(&due), vec![("a", 7)]);
        assert_eq!(due[0].watchers, vec![1, 2]);
        assert_eq!(o.watch(3, "a", 0, t0), Ok(Watching::Now(7)));
        // Elsewhere changes are coalesced like local ones.
        o.set_elsewhere("a", 6, t0 + secs(0.5));
        assert_eq!(o.take_due(t0 + secs(0.5)), vec![]);
        assert_eq!(totals(&o.take_due(t0 + secs(1.1))), vec![("a", 8)]);
        // A failed read of a known channel keeps its count; of an unknown one, 0.
        o.elsewhere_unavailable("a", t0 + secs(5.0));
        assert_eq!(o.take_due(t0 + secs(5.0)), vec![]);
        assert_eq!(o.watch(4, "b", 0, t0), Ok(Watching::Soon { read: true }));
        o.elsewhere_unavailable("b", t0 + secs(5.0));
        assert_eq!(totals(&o.take_due(t0 + secs(5.0))), vec![("b", 0)]);
        // Counts of channels no one watches are not kept.
        o.set_elsewhere("zzz", 3, t0);
        assert_eq!(o.watched_channels(), 2);
    }

    #[test]
    fn should_flush_only_changed_counts_and_everything_after_a_reconnect() {
        let t0 = Instant::now();
        let mut o = shared(t0);
        o.set_local("a", 1, t0);
        o.set_local("b", 2, t0);
        // The first flush is a resync: everything.
        let work = o.redis_work(t0, true);
        let flush = work.flush.unwrap();
        assert!(flush.resync);
        assert_eq!(flush.counts.len(), 2);
        o.flush_sent(1);
        // Not due again before the refresh, nor while one is out.
        let t3 = t0 + secs(3.0);
        assert_eq!(o.redis_work(t0 + secs(1.0), true).flush, None);
        assert_eq!(o.redis_work(t3, true).flush, None);
        o.flush_answered(true);
        o.set_local("b", 0, t3);
        o.set_local("c", 1, t3);
        o.set_local("c", 0, t3);
        let flush = o.redis_work(t3, true).flush.unwrap();
        assert!(!flush.resync);
        assert_eq!(flush.counts, vec![("b".into(), 0), ("c".into(), 0)]);
        o.flush_sent(1);
        // Nothing changed: still a flush (it renews the expiry), empty.
        o.flush_answered(true);
        let t6 = t3 + secs(2.0);
        assert_eq!(o.redis_work(t6, true).flush, Some(Flush::default()));
        o.flush_sent(1);
        // A failed flush makes the next one a resync.
        o.flush_answered(false);
        let flush = o.redis_work(t6 + secs(2.0), true).flush.unwrap();
        assert!(flush.resync);
        assert_eq!(flush.counts, vec![("a".into(), 1)]);
        o.redis_reconnected(t6 + secs(2.5));
        assert!(o.redis_work(t6 + secs(2.5), true).flush.unwrap().resync);
        assert_eq!(o.ttl(), Some(secs(6.0)));
        // A replica without subscribers, whose last flush left Redis nothing, sends nothing.
        let mut idle = shared(t0);
        assert_eq!(idle.redis_work(t0, true).flush, None);
        idle.set_local("a", 1, t0);
        idle.set_local("a", 0, t0);
        let flush = idle.redis_work(t0 + secs(2.0), true).flush.unwrap();
        assert_eq!(flush.counts, vec![("a".into(), 0)]);
        idle.flush_sent(1);
        idle.flush_answered(true);
        assert_eq!(idle.redis_work(t0 + secs(4.0), true).flush, None);
        // Redis down: no list of changed names grows meanwhile; the reconnect writes all.
        let mut outage = shared(t0);
        outage.set_local("kept", 1, t0);
        assert!(outage.redis_work(t0, true).flush.is_some());
        outage.flush_sent(1);
        outage.flush_answered(true);
        assert_eq!(
            outage.redis_work(t0 + secs(2.0), false),
            RedisWork::default()
        );
        for i in 0..100 {
            outage.set_local(&format!("brief{i}"), 1, t0 + secs(3.0));
            outage.set_local(&format!("brief{i}"), 0, t0 + secs(3.0));
        }
        assert!(outage.unflushed.is_empty());
        outage.redis_reconnected(t0 + secs(4.0));
        let flush = outage.redis_work(t0 + secs(4.0), true).flush.unwrap();
        assert_eq!(
            (flush.resync, flush.counts),
            (true, vec![("kept".into(), 1)])
        );
        // Leaving: Redis may hold ours (the last flush wrote some), then nothing more is sent.
        let mut leaving = shared(t0);
        leaving.set_local("a", 1, t0);
        assert!(leaving.redis_work(t0, true).flush.is_some());
        assert!(leaving.leave());
        assert!(!leaving.leave(), "once");
        leaving.set_local("a", 0, t0 + secs(1.0));
        assert_eq!(
            leaving.redis_work(t0 + secs(9.0), true),
            RedisWork::default()
        );
        assert_eq!(leaving.next_deadline(), None);
        assert!(!idle.leave(), "nothing of an idle replica's to take out");
        // Embedded: nothing to flush, ever.
        let mut embedded = alone(t0);
        embedded.set_local("a", 1, t0);
        assert_eq!(embedded.redis_work(t6, true), RedisWork::default());
    }

    #[test]
    fn should_read_watched_channels_round_robin_in_bounded_batches() {
        let t0 = Instant::now();
        let limits = OccupancyLimits {
            per_connection: 10_000,
            max_watched_channels: 10_000,
        };
        let keys = RedisKeys::new("events", "r1".into());
        let mut o = Occupancy::shared(limits, Duration::from_secs(2), keys, t0);
        assert!(o.redis_work(t0, true).read.is_empty(), "nothing watched");
        let total = READ_BATCH + READ_BATCH / 2;
        for i in 0..total {
            o.watch(1, &format!("ch{i:05}"), 0, t0).unwrap();
        }
        let mut seen = BTreeSet::new();
        let mut t = t0;
        for _ in 0..2 {
            let read = o.redis_work(t, true).read;
            assert!(!read.is_empty() && read.len() <= READ_BATCH);
            o.read_sent();
            assert!(
                o.redis_work(t + secs(5.0), true).read.is_empty(),
                "one read out"
            );
            o.read_answered();
            seen.extend(read);
            t += UPDATE_EVERY;
        }
        assert_eq!(seen.len(), total, "two rounds cover every channel");
    }

    #[test]
    fn should_build_commands_and_parse_replies() {
        let keys = RedisKeys::new("events", "r1".into());
        let flush = keys.flush_command(secs(6.0), true, &[("a".into(), 2)]);
        let text: Vec<String> = flush
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(
            text[2..],
            [
                "3",
                "events:occupancy:replicas",
                "events:occupancy:channels",
                "events:occupancy:replica:r1",
                "r1",
                "6000",
                "1",
                "a",
                "2"
            ]
        );
        let count = keys.count_command(["a", "b"]);
        assert_eq!(count.len(), 8);
        assert_ne!(RedisKeys::random_id(), RedisKeys::random_id());

        let ints = Reply::Other(F::Array(vec![F::Integer(3), F::Integer(0)]));
        assert_eq!(parse_counts(ints.clone(), 2), Ok(vec![3, 0]));
        assert!(parse_counts(ints, 3).is_err());
        assert!(parse_counts(Reply::Error("ERR x".into()), 1).is_err());
        let bulk = |s: &str| F::BulkString(Bytes::copy_from_slice(s.as_bytes()));
        let list = Reply::Other(F::Array(vec![
            F::Array(vec![F::Array(vec![bulk("a"), F::Integer(4)])]),
            bulk("a"),
        ]));
        assert_eq!(
            parse_list(list),
            Ok(ListPage {
                entries: vec![("a".to_string(), 4)],
                next: Some("a".to_string())
            })
        );
        let last = Reply::Other(F::Array(vec![F::Array(vec![]), bulk("")]));
        let empty = ListPage {
            entries: vec![],
            next: None,
        };
        assert_eq!(parse_list(last), Ok(empty));
    }
}
