//! The embedded broker's memory of recent events: a ring per channel, so a client that
//! reconnects with the id of the last event it saw gets what it missed. (With Redis, the same
//! job is done by a capped stream per channel; see `broker.rs`.)
//!
//! Everything kept here is capped, because any publisher can name a new channel:
//! - `HISTORY_LEN` events per channel (the oldest leaves as a new one comes: normal rotation);
//! - `MAX_CHANNELS` channels: a new channel over the cap makes the least recently published
//!   channel's history go, whole;
//! - `HISTORY_MAX_BYTES` for everything together, counted as memory really held (see
//!   `Charge`): over it, least recently published channels go first; a channel that alone
//!   exceeds the budget loses its oldest events;
//! - `HISTORY_TTL_SECS` (optional): older events are dropped, lazily on publish and read, and
//!   by `sweep` once a second, which drops channels whose newest event has expired.
//!
//! Recency is an intrusive doubly linked list through the rings (a slab): a publish moves its
//! channel to the newest end in O(1), eviction takes from the oldest end in O(1); no publish
//! scans the channels.
//!
//! Ids come from one counter for every channel, time-based like Redis stream ids, so they also
//! order events across channels. A ring remembers its `floor`: the newest id it may have lost
//! (the last event it dropped, or the moment the server started). A client whose last id is
//! below the floor may have missed events that are gone, and is told to reset instead.
//!
//! A forgotten channel leaves no ring to hold its floor, so the history keeps one floor for
//! all of them: `forgotten_floor`, the newest id ever dropped with a forgotten channel. Resuming
//! an unknown channel from below it may skip events of a channel that was forgotten, so it is
//! refused; from at or above it nothing can be missing, since every forgotten event had an id
//! at or below it (ids are global and increasing). A ring created later starts with that floor
//! too: its channel may be one that was forgotten, and its older events are gone. The price
//! is that an idle channel can be told to reset after another channel was evicted: a reset
//! too many, never a silent gap.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use slab::Slab;

use crate::event::EventId;
use crate::ratelog::RateLog;

/// A stored event: its id and its JSON (with the id inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: EventId,
    pub json: Bytes,
}

/// How much one history read may return: a page is cut by count and by bytes of event JSON
/// (at least one event, whatever its size), so no read copies a whole history at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize {
    pub events: usize,
    pub bytes: usize,
}

impl PageSize {
    /// A page cut by count only.
    pub fn events(events: usize) -> PageSize {
        PageSize {
            events,
            bytes: usize::MAX,
        }
    }
}

/// One read of history: events oldest first, and whether more follow the last of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub events: Vec<StoredEvent>,
    pub more: bool,
}

impl Page {
    /// Takes events from `events` (oldest first) until `size` is reached; `more` when some
    /// were left.
    fn cut<'a>(mut events: impl Iterator<Item = &'a StoredEvent>, size: PageSize) -> Page {
        let mut page = Page::default();
        let mut bytes = 0;
        for stored in events.by_ref() {
            let full = page.events.len() == size.events
                || (!page.events.is_empty() && bytes + stored.json.len() > size.bytes);
            if full {
                page.more = true;
                break;
            }
            bytes += stored.json.len();
            page.events.push(stored.clone());
        }
        page
    }
}

/// Why history cannot be replayed from the id a client gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooOld {
    pub reason: &'static str,
}

/// The caps of the embedded history (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Events kept per channel (`HISTORY_LEN`).
    pub events_per_channel: usize,
    /// Memory held by the history, all channels together, as `Charge` counts it.
    pub max_bytes: usize,
    /// Channels with history kept.
    pub max_channels: usize,
    /// Events older than this (milliseconds) are dropped; `None`: kept until a cap says so.
    pub ttl_ms: Option<u64>,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            events_per_channel: 1000,
            max_bytes: 64 * 1024 * 1024,
            max_channels: 10_000,
            ttl_ms: None,
        }
    }
}

/// Which cap made history go earlier than `HISTORY_LEN` would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// `MAX_CHANNELS`: a new channel took the least recently published one's place.
    Channels,
    /// `HISTORY_MAX_BYTES`.
    Bytes,
    /// `HISTORY_TTL_SECS`.
    Ttl,
}

/// Evictions counted since the last `take_evictions`: channels forgotten plus events dropped
/// from channels that are kept, by cap. The reactor adds them to `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    pub channels: u64,
    pub bytes: u64,
    pub ttl: u64,
}

impl Evictions {
    fn count(&mut self, why: Eviction) {
        match why {
            Eviction::Channels => self.channels += 1,
            Eviction::Bytes => self.bytes += 1,
            Eviction::Ttl => self.ttl += 1,
        }
    }
}

/// Why a ring's floor is where it is: what a resuming client is told when below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Floor {
    /// Nothing lost since the server started.
    Boot,
    /// Normal rotation: `HISTORY_LEN` events are kept.
    Rotated,
    /// The channel was new, or new again after being forgotten: older events may be gone.
    Forgotten,
    Evicted(Eviction),
}

impl Floor {
    fn reason(self) -> &'static str {
        match self {
            Floor::Boot | Floor::Rotated => "the id is older than the history kept",
            Floor::Forgotten => {
                "history evicted: this server no longer has the channel's older events"
            }
            Floor::Evicted(Eviction::Channels) => {
                "history evicted: too many channels (MAX_CHANNELS)"
            }
            Floor::Evicted(Eviction::Bytes) => "history evicted: history over HISTORY_MAX_BYTES",
            Floor::Evicted(Eviction::Ttl) => "history expired: events older than HISTORY_TTL_SECS",
        }
    }
}

/// Memory held, in bytes, counted as the allocator hands it out, so that `HISTORY_MAX_BYTES`
/// bounds what the process really holds for history. With `block(n)` what malloc takes for a
/// request of `n` bytes (glibc: an 8-byte header, 16-byte granules, 32 at least; from
/// 128 KiB up, whole 4 KiB pages plus one):
///
/// ```text
/// event   = block(json.len())               the JSON, stored exactly (shrunk to fit)
///         + block(24)                       the refcount block of its shared `Bytes`
/// ring    = 2 * block(name.len())           the name, as the map key and in the ring
///         + block(capacity * 48)            the VecDeque of StoredEvent (id + Bytes)
/// tables  = slab slots * (size_of Ring + 8) + hash buckets * (size_of (Box<str>, usize) + 1)
/// total   = tables + sum(ring) + sum(event)  <= HISTORY_MAX_BYTES after every publish
/// ```
///
/// Tables are counted at their capacity, which does not shrink: they are part of what is held.
struct Charge;

impl Charge {
    const MALLOC_HEADER: usize = 8;
    const MALLOC_MIN: usize = 32;
    const MMAP_THRESHOLD: usize = 128 * 1024;
    const PAGE: usize = 4096;
    /// `bytes::Bytes`' shared block (buffer pointer, capacity, refcount), made on the first
    /// clone: the history's own copy of the JSON is always a clone.
    const BYTES_SHARED: usize = 24;

    fn block(len: usize) -> usize {
        if len == 0 {
            0
        } else if len >= Self::MMAP_THRESHOLD {
            len.next_multiple_of(Self::PAGE) + Self::PAGE
        } else {
            (len + Self::MALLOC_HEADER)
                .next_multiple_of(16)
                .max(Self::MALLOC_MIN)
        }
    }

    fn event(json_len: usize) -> usize {
        Self::block(json_len) + Self::block(Self::BYTES_SHARED)
    }

    fn name(name_len: usize) -> usize {
        2 * Self::block(name_len)
    }

    fn ring_buffer(capacity: usize) -> usize {
        Self::block(capacity * std::mem::size_of::<StoredEvent>())
    }

    fn tables(slots: usize, map_capacity: usize) -> usize {
        // hashbrown keeps at most 7/8 of its power-of-two buckets full, plus a control byte
        // per bucket (and one group of 16 more, counted in the rounding up).
        let buckets = if map_capacity == 0 {
            0
        } else {
            (map_capacity * 8).div_ceil(7).next_power_of_two() + 16
        };
        slots * (std::mem::size_of::<Ring>() + 8)
            + buckets * (std::mem::size_of::<(Box<str>, usize)>() + 1)
    }
}

#[derive(Debug)]
struct Ring {
    name: Box<str>,
    events: VecDeque<StoredEvent>,
    floor: EventId,
    floor_cause: Floor,
    /// This ring's share of `History::bytes`: name, buffer and events (`Charge`).
    bytes: usize,
    /// Neighbours in the recency list: toward the most and the least recently published.
    newer: Option<usize>,
    older: Option<usize>,
}

impl Ring {
    fn buffer_bytes(&self) -> usize {
        Charge::ring_buffer(self.events.capacity())
    }

    /// The newest id this ring knows of: what is lost if the ring is forgotten.
    fn newest_id(&self) -> EventId {
        self.events.back().map_or(self.floor, |e| e.id)
    }

    /// Drops the oldest event, raising the floor to it; returns the bytes freed.
    fn drop_oldest(&mut self, cause: Floor) -> Option<usize> {
        let evicted = self.events.pop_front()?;
        self.floor = evicted.id;
        self.floor_cause = cause;
        let mut freed = Charge::event(evicted.json.len());
        // A ring trimmed far below its peak gives its buffer back (amortized: only when it
        // is four times too big).
        let capacity = self.events.capacity();
        if capacity > 16 && self.events.len() * 4 < capacity {
            let before = self.buffer_bytes();
            self.events.shrink_to(self.events.len() * 2);
            freed += before.saturating_sub(self.buffer_bytes());
        }
        self.bytes -= freed;
        Some(freed)
    }
}

#[derive(Debug)]
pub struct History {
    limits: HistoryLimits,
    by_name: HashMap<Box<str>, usize>,
    rings: Slab<Ring>,
    /// Ends of the recency list: the least and the most recently published channel.
    oldest: Option<usize>,
    newest: Option<usize>,
    /// Sum of the rings' `bytes` (tables apart: see `bytes()`).
    ring_bytes: usize,
    /// The newest id dropped with a channel that is now forgotten (see the module doc).
    forgotten_floor: EventId,
    boot: EventId,
    last_id: EventId,
    /// Wall-clock time of the latest publish or sweep, for the TTL on reads.
    now_ms: u64,
    evictions: Evictions,
    warnings: RateLog,
}

impl History {
    /// `capacity` events per channel and the default caps; `now_ms` is wall-clock time at
    /// start (ids before it belong to an earlier run whose history is gone).
    pub fn new(capacity: usize, now_ms: u64) -> History {
        let limits = HistoryLimits {
            events_per_channel: capacity,
            ..HistoryLimits::default()
        };
        History::with_limits(limits, now_ms)
    }

    pub fn with_limits(limits: HistoryLimits, now_ms: u64) -> History {
        let boot = EventId { ms: now_ms, seq: 0 };
        History {
            limits: HistoryLimits {
                events_per_channel: limits.events_per_channel.max(1),
                max_channels: limits.max_channels.max(1),
                ttl_ms: limits.ttl_ms.filter(|&ms| ms > 0),
                ..limits
            },
            by_name: HashMap::new(),
            rings: Slab::new(),
            oldest: None,
            newest: None,
            ring_bytes: 0,
            forgotten_floor: boot,
            boot,
            last_id: boot,
            now_ms,
            evictions: Evictions::default(),
            warnings: RateLog::default(),
        }
    }

    /// The id for a new event.
    pub fn next_id(&mut self, now_ms: u64) -> EventId {
        self.last_id = EventId::next(self.last_id, now_ms);
        self.last_id
    }

    /// Memory held by the history (`Charge`): what `HISTORY_MAX_BYTES` caps.
    pub fn bytes(&self) -> usize {
        self.ring_bytes + Charge::tables(self.rings.capacity(), self.by_name.capacity())
    }

    /// Channels with history kept.
    pub fn channels(&self) -> usize {
        self.rings.len()
    }

    /// Evictions since the last call (for `/metrics`).
    pub fn take_evictions(&mut self) -> Evictions {
        std::mem::take(&mut self.evictions)
    }

    /// Stores an event (its id from `next_id`, so `id.ms` is the time of publishing), then
    /// evicts whatever the caps require. Store `json` shrunk to fit: its bytes are counted by
    /// length.
    pub fn push(&mut self, channel: &str, id: EventId, json: Bytes) {
        self.now_ms = self.now_ms.max(id.ms);
        let key = match self.by_name.get(channel) {
            Some(&key) => {
                self.unlink(key);
                self.link_newest(key);
                key
            }
            None => self.insert_ring(channel),
        };
        let ring = &mut self.rings[key];
        if ring.events.len() >= self.limits.events_per_channel
            && let Some(freed) = ring.drop_oldest(Floor::Rotated)
        {
            self.ring_bytes -= freed;
        }
        let buffer_before = ring.buffer_bytes();
        ring.events.push_back(StoredEvent { id, json });
        let added = Charge::event(ring.events.back().map_or(0, |e| e.json.len()))
            + ring.buffer_bytes()
            - buffer_before;
        ring.bytes += added;
        self.ring_bytes += added;
        self.expire_oldest_events(key);
        self.enforce_byte_cap(key);
    }

    /// A page of `channel`'s events after `since` (oldest first, cut at `size`), or `TooOld`
    /// if some events after `since` may be gone. Without `since`: the latest events that fit
    /// in `size`. Expired events (`HISTORY_TTL_SECS`, as of the last publish or sweep) are
    /// dropped first.
    pub fn read(
        &mut self,
        channel: &str,
        since: Option<EventId>,
        size: PageSize,
    ) -> Result<Page, TooOld> {
        let key = self.by_name.get(channel).copied();
        if let Some(key) = key {
            self.expire_oldest_events(key);
        }
        let ring = key.map(|key| &self.rings[key]);
        let Some(since) = since else {
            return Ok(ring.map_or(Page::default(), |r| {
                // Newest first, cut, then put back in order.
                let mut page = Page::cut(r.events.iter().rev(), size);
                page.events.reverse();
                page
            }));
        };
        let (floor, cause) = ring.map_or((self.forgotten_floor, Floor::Forgotten), |r| {
            (r.floor, r.floor_cause)
        });
        if since < floor {
            return Err(TooOld {
                reason: if since < self.boot {
                    "history lost: the server restarted"
                } else {
                    cause.reason()
                },
            });
        }
        Ok(ring.map_or(Page::default(), |r| {
            // Ids are increasing: binary-search the first one after `since`.
            let start = r.events.partition_point(|e| e.id <= since);
            Page::cut(r.events.range(start..), size)
        }))
    }

    /// The once-a-second pass for `HISTORY_TTL_SECS`: forgets channels whose newest event has
    /// expired, least recently published first. The recency list is in order of each
    /// channel's newest event, so stopping at the first channel with a live event (trimming
    /// that one) misses no channel that has wholly expired. Bounded work: at most
    /// `SWEEP_BUDGET` channels a pass, the rest next second. Channels with some expired
    /// events behind a live one are trimmed when next published to or read (their bytes
    /// count against the caps meanwhile).
    pub fn sweep(&mut self, now_ms: u64) {
        const SWEEP_BUDGET: usize = 1000;
        self.now_ms = self.now_ms.max(now_ms);
        if self.limits.ttl_ms.is_none() {
            return;
        }
        for _ in 0..SWEEP_BUDGET {
            let Some(key) = self.oldest else { return };
            if !self.is_expired(self.rings[key].newest_id()) {
                self.expire_oldest_events(key);
                return;
            }
            self.forget(key, Eviction::Ttl);
        }
    }

    fn is_expired(&self, id: EventId) -> bool {
        self.limits
            .ttl_ms
            .is_some_and(|ttl| self.now_ms.saturating_sub(id.ms) >= ttl)
    }

    /// Drops a ring's events older than the TTL (events are in time order: from the front).
    fn expire_oldest_events(&mut self, key: usize) {
        if self.limits.ttl_ms.is_none() {
            return;
        }
        while let Some(oldest) = self.rings[key].events.front()
            && self.is_expired(oldest.id)
        {
            self.drop_oldest_event(key, Eviction::Ttl);
        }
    }

    /// Over `HISTORY_MAX_BYTES`: forget the least recently published channels; when only
    /// `current` (the one just published to) is left, drop its oldest events, even the new
    /// one if it alone is over the budget (it was delivered live; it is just not kept).
    fn enforce_byte_cap(&mut self, current: usize) {
        while self.bytes() > self.limits.max_bytes {
            match self.oldest {
                Some(key) if key != current => self.forget(key, Eviction::Bytes),
                Some(key) => {
                    if self.drop_oldest_event(key, Eviction::Bytes).is_none() {
                        // Even the empty ring is over (a budget of a few hundred bytes).
                        self.forget(key, Eviction::Bytes);
                        return;
                    }
                    let name = &self.rings[key].name;
                    let message = format!(
                        "history: channel {name:?} alone exceeds HISTORY_MAX_BYTES ({} bytes); \
                         dropping its oldest events",
                        self.limits.max_bytes
                    );
                    self.warnings.warn("history_bytes_one_channel", &message);
                }
                None => return,
            }
        }
    }

    fn drop_oldest_event(&mut self, key: usize, why: Eviction) -> Option<usize> {
        let freed = self.rings[key].drop_oldest(Floor::Evicted(why))?;
        self.ring_bytes -= freed;
        self.evictions.count(why);
        Some(freed)
    }

    /// Adds a ring for a new channel at the newest end, first making room under
    /// `MAX_CHANNELS` (so the tables never grow past it).
    fn insert_ring(&mut self, channel: &str) -> usize {
        // Taken before making room: the channels forgotten for this one lose none of its
        // events, so they need not raise its floor.
        let floor = self.forgotten_floor;
        while self.rings.len() >= self.limits.max_channels
            && let Some(oldest) = self.oldest
        {
            self.forget(oldest, Eviction::Channels);
        }
        let ring = Ring {
            name: channel.into(),
            events: VecDeque::new(),
            floor,
            floor_cause: if floor > self.boot {
                Floor::Forgotten
            } else {
                Floor::Boot
            },
            bytes: Charge::name(channel.len()),
            newer: None,
            older: None,
        };
        self.ring_bytes += ring.bytes;
        let key = self.rings.insert(ring);
        self.by_name.insert(channel.into(), key);
        self.link_newest(key);
        key
    }

    /// Drops a channel's history whole; its newest id joins the forgotten floor.
    fn forget(&mut self, key: usize, why: Eviction) {
        self.unlink(key);
        let ring = self.rings.remove(key);
        self.by_name.remove(&ring.name);
        self.ring_bytes -= ring.bytes;
        self.forgotten_floor = self.forgotten_floor.max(ring.newest_id());
        self.evictions.count(why);
        let message = match why {
            Eviction::Channels => format!(
                "history at MAX_CHANNELS ({}): forgetting channel {:?}, the least recently published",
                self.limits.max_channels, ring.name
            ),
            Eviction::Bytes => format!(
                "history over HISTORY_MAX_BYTES ({} bytes): forgetting channel {:?} ({} events, {} bytes), the least recently published",
                self.limits.max_bytes,
                ring.name,
                ring.events.len(),
                ring.bytes
            ),
            // Expiry is the TTL doing its job, not a sign of pressure.
            Eviction::Ttl => return,
        };
        let kind = match why {
            Eviction::Channels => "history_channels",
            _ => "history_bytes",
        };
        self.warnings.warn(kind, &message);
    }

    fn unlink(&mut self, key: usize) {
        let (newer, older) = {
            let ring = &mut self.rings[key];
            (ring.newer.take(), ring.older.take())
        };
        match newer {
            Some(n) => self.rings[n].older = older,
            None => self.newest = older,
        }
        match older {
            Some(o) => self.rings[o].newer = newer,
            None => self.oldest = newer,
        }
    }

    fn link_newest(&mut self, key: usize) {
        let previous = self.newest.replace(key);
        self.rings[key].older = previous;
        match previous {
            Some(p) => self.rings[p].newer = Some(key),
            None => self.oldest = Some(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_n(h: &mut History, channel: &str, n: u64) -> Vec<EventId> {
        (0..n)
            .map(|i| {
                let id = h.next_id(1000 + i);
                h.push(channel, id, Bytes::from(id.to_string()));
                id
            })
            .collect()
    }

    /// Publishes one event of `len` bytes at `now_ms`.
    fn publish(h: &mut History, channel: &str, now_ms: u64, len: usize) -> EventId {
        let id = h.next_id(now_ms);
        h.push(channel, id, Bytes::from(vec![b'x'; len]));
        id
    }

    fn limits(max_channels: usize, max_bytes: usize) -> HistoryLimits {
        HistoryLimits {
            events_per_channel: 100,
            max_bytes,
            max_channels,
            ttl_ms: None,
        }
    }

    /// The channels from least to most recently published, walking the list both ways.
    fn recency(h: &History) -> Vec<String> {
        let mut forward = Vec::new();
        let mut at = h.oldest;
        while let Some(key) = at {
            forward.push(h.rings[key].name.to_string());
            at = h.rings[key].newer;
        }
        let mut backward = Vec::new();
        let mut at = h.newest;
        while let Some(key) = at {
            backward.push(h.rings[key].name.to_string());
            at = h.rings[key].older;
        }
        backward.reverse();
        assert_eq!(forward, backward, "the list is linked the same both ways");
        forward
    }

    /// Recounts every ring's charge from scratch and checks the running totals against it.
    fn assert_accounting(h: &History) {
        let mut total = 0;
        for (_, ring) in &h.rings {
            let events: usize = ring
                .events
                .iter()
                .map(|e| Charge::event(e.json.len()))
                .sum();
            let expected = Charge::name(ring.name.len()) + ring.buffer_bytes() + events;
            assert_eq!(ring.bytes, expected, "charge of {:?}", ring.name);
            total += expected;
        }
        assert_eq!(h.ring_bytes, total);
        assert_eq!(h.by_name.len(), h.rings.len());
        assert_eq!(recency(h).len(), h.rings.len());
    }

    impl History {
        /// `read` cut by count only, as a list of events.
        fn read_events(
            &mut self,
            channel: &str,
            since: Option<EventId>,
            limit: usize,
        ) -> Result<Vec<StoredEvent>, TooOld> {
            self.read(channel, since, PageSize::events(limit))
                .map(|page| page.events)
        }
    }

    #[test]
    fn should_replay_after_an_id_in_order() {
        let mut h = History::new(10, 1000);
        let ids = push_n(&mut h, "orders", 5);
        let got: Vec<EventId> = h
            .read("orders", Some(ids[1]), PageSize::events(100))
            .unwrap()
            .events
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, ids[2..]);
        assert_eq!(
            h.read("orders", Some(ids[4]), PageSize::events(100))
                .unwrap(),
            Page::default()
        );
        assert_eq!(
            h.read("orders", Some(ids[0]), PageSize::events(2))
                .unwrap()
                .events
                .len(),
            2
        );
    }

    #[test]
    fn should_refuse_ids_older_than_what_is_kept() {
        let mut h = History::new(3, 1000);
        let ids = push_n(&mut h, "orders", 5);
        // ids[0] and ids[1] were evicted: resuming from ids[0] would skip ids[1].
        assert!(
            h.read("orders", Some(ids[0]), PageSize::events(10))
                .is_err()
        );
        // Resuming from the last evicted id is exact.
        assert_eq!(
            h.read("orders", Some(ids[1]), PageSize::events(10))
                .unwrap()
                .events
                .len(),
            3
        );
    }

    #[test]
    fn should_refuse_ids_from_before_a_restart() {
        let mut h = History::new(3, 5000);
        let old = EventId { ms: 4000, seq: 0 };
        assert_eq!(
            h.read("orders", Some(old), PageSize::events(10))
                .unwrap_err()
                .reason,
            "history lost: the server restarted"
        );
        assert_eq!(
            h.read(
                "orders",
                Some(EventId { ms: 5000, seq: 0 }),
                PageSize::events(10)
            ),
            Ok(Page::default())
        );
    }

    #[test]
    fn should_return_the_latest_without_an_id() {
        let mut h = History::new(10, 1000);
        let ids = push_n(&mut h, "orders", 5);
        let got: Vec<EventId> = h
            .read("orders", None, PageSize::events(2))
            .unwrap()
            .events
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, ids[3..]);
        assert_eq!(
            h.read("empty", None, PageSize::events(2)).unwrap(),
            Page::default()
        );
    }

    #[test]
    fn should_forget_the_least_recently_published_channel_over_max_channels() {
        let mut h = History::with_limits(limits(3, usize::MAX), 1000);
        let a = publish(&mut h, "a", 1001, 10);
        publish(&mut h, "b", 1002, 10);
        publish(&mut h, "c", 1003, 10);
        // "a" published again: now "b" is the least recently published.
        publish(&mut h, "a", 1004, 10);
        assert_eq!(recency(&h), ["b", "c", "a"]);
        publish(&mut h, "d", 1005, 10);
        assert_eq!(recency(&h), ["c", "a", "d"]);
        assert_eq!(h.channels(), 3);
        assert_eq!(
            h.take_evictions(),
            Evictions {
                channels: 1,
                ..Evictions::default()
            }
        );
        assert_eq!(h.take_evictions(), Evictions::default(), "taken once");
        assert_eq!(
            h.read_events("a", Some(a), 10).unwrap().len(),
            1,
            "a is kept"
        );
        assert_accounting(&h);
    }

    #[test]
    fn should_count_bytes_as_memory_held_and_stay_under_the_cap() {
        let max_bytes = 64 * 1024;
        let mut h = History::with_limits(limits(1000, max_bytes), 1000);
        let empty = h.bytes();
        publish(&mut h, "a", 1001, 1000);
        // At least the JSON, the name twice and one ring slot; at most a few blocks more.
        assert_eq!(empty, 0, "nothing held, nothing counted");
        // The ring: at least the JSON, the name twice and one slot; a few blocks more at most.
        assert!(h.ring_bytes >= 1000 + 2 + size_of::<StoredEvent>());
        assert!(h.ring_bytes < 1000 + 400, "{}", h.ring_bytes);
        // The tables, counted at capacity: a slot and a bucket at least.
        let tables = h.bytes() - h.ring_bytes;
        assert!(tables >= size_of::<Ring>() + size_of::<(Box<str>, usize)>());
        for i in 0..500u64 {
            publish(&mut h, &format!("ch-{}", i % 200), 1002 + i, 1000);
            assert!(h.bytes() <= max_bytes, "{} > {max_bytes}", h.bytes());
            assert_accounting(&h);
        }
        let evictions = h.take_evictions();
        assert!(evictions.bytes > 0, "{evictions:?}");
        assert_eq!(evictions.channels, 0);
        // 64 KiB holds fewer than 64 events of 1000 bytes with their overhead.
        assert!(h.channels() < 64, "{}", h.channels());
        // The newest are kept, the oldest went.
        assert_eq!(h.read_events("ch-98", None, 10).unwrap().len(), 1);
        assert!(h.read_events("ch-0", None, 10).unwrap().is_empty());
        assert_eq!(recency(&h).last().map(String::as_str), Some("ch-99"));
    }

    #[test]
    fn should_trim_one_channel_that_alone_exceeds_the_byte_cap() {
        let mut h = History::with_limits(limits(10, 16 * 1024), 1000);
        let ids: Vec<EventId> = (0..50)
            .map(|i| publish(&mut h, "big", 1000 + i, 1000))
            .collect();
        assert!(h.bytes() <= 16 * 1024);
        let kept = h.read_events("big", None, 100).unwrap();
        assert!(kept.len() > 5 && kept.len() < 16, "{}", kept.len());
        assert_eq!(kept.last().map(|e| e.id), ids.last().copied());
        let first_kept = kept[0].id;
        let last_dropped = *ids.iter().rev().find(|&&id| id < first_kept).unwrap();
        assert_eq!(
            h.read_events("big", Some(ids[0]), 100).unwrap_err().reason,
            "history evicted: history over HISTORY_MAX_BYTES"
        );
        // From the last dropped id, nothing is missing.
        assert_eq!(h.read_events("big", Some(last_dropped), 100).unwrap(), kept);
        assert_accounting(&h);
        // One event bigger than the whole budget is delivered but not kept.
        let huge = publish(&mut h, "big", 2000, 32 * 1024);
        assert!(h.read_events("big", None, 100).unwrap().is_empty());
        assert!(h.read_events("big", Some(huge), 10).is_ok());
        assert!(h.read_events("big", Some(first_kept), 10).is_err());
        assert_accounting(&h);
        // A budget too small for anything: nothing is kept, not even the channel.
        let mut h = History::with_limits(limits(10, 100), 1000);
        let before = publish(&mut h, "x", 1001, 10);
        let last = publish(&mut h, "x", 1002, 10);
        // (The empty tables stay, at their capacity: a few hundred bytes.)
        assert_eq!((h.channels(), h.ring_bytes), (0, 0));
        assert!(h.read_events("x", Some(before), 10).is_err());
        assert_eq!(h.read_events("x", Some(last), 10), Ok(vec![]));
    }

    #[test]
    fn should_refuse_resuming_below_the_floor_of_forgotten_channels() {
        let mut h = History::with_limits(limits(2, usize::MAX), 1000);
        let a1 = publish(&mut h, "a", 1001, 10);
        let a2 = publish(&mut h, "a", 1002, 10);
        let b1 = publish(&mut h, "b", 1003, 10);
        publish(&mut h, "c", 1004, 10); // forgets "a": the floor is a2
        // An unknown channel (forgotten or never seen): below the floor is refused...
        let refused = h.read_events("a", Some(a1), 10).unwrap_err();
        assert!(refused.reason.starts_with("history evicted"), "{refused:?}");
        assert!(h.read_events("never-seen", Some(a1), 10).is_err());
        // ...at or above it nothing forgotten can be missing.
        assert_eq!(h.read_events("a", Some(a2), 10), Ok(vec![]));
        assert_eq!(h.read_events("never-seen", Some(b1), 10), Ok(vec![]));
        // "a" comes back: its new ring must not pretend to hold what came before a2.
        let a3 = publish(&mut h, "a", 1005, 10);
        assert!(h.read_events("a", Some(a1), 10).is_err(), "a1..a2 are gone");
        let replay = h.read_events("a", Some(a2), 10).unwrap();
        assert_eq!(replay.iter().map(|e| e.id).collect::<Vec<_>>(), [a3]);
    }

    #[test]
    fn should_expire_events_older_than_the_ttl() {
        let mut h = History::with_limits(
            HistoryLimits {
                ttl_ms: Some(1000),
                ..limits(100, usize::MAX)
            },
            1000,
        );
        let old = publish(&mut h, "quiet", 1000, 10);
        let mixed_old = publish(&mut h, "mixed", 1100, 10);
        let mixed_new = publish(&mut h, "mixed", 1900, 10);
        // At 2150 "quiet" and the first of "mixed" are over a second old.
        h.sweep(2150);
        assert_eq!(h.channels(), 1, "the expired channel is forgotten");
        let start = EventId { ms: 1000, seq: 0 };
        assert!(
            h.read_events("quiet", Some(start), 10)
                .unwrap_err()
                .reason
                .starts_with("history evicted")
        );
        // A client that saw the last expired event missed nothing.
        assert_eq!(h.read_events("quiet", Some(old), 10), Ok(vec![]));
        // The oldest channel left has a live event: the sweep trimmed its expired one.
        let kept = h.read_events("mixed", None, 10).unwrap();
        assert_eq!(kept.iter().map(|e| e.id).collect::<Vec<_>>(), [mixed_new]);
        assert_eq!(
            h.read_events("mixed", Some(EventId { ms: 1000, seq: 0 }), 10)
                .unwrap_err()
                .reason,
            "history expired: events older than HISTORY_TTL_SECS"
        );
        assert!(h.read_events("mixed", Some(mixed_old), 10).is_ok());
        assert_eq!(h.take_evictions().ttl, 2);
        // A publish trims its own channel lazily too.
        publish(&mut h, "mixed", 3000, 10);
        assert_eq!(h.read_events("mixed", None, 10).unwrap().len(), 1);
        assert_accounting(&h);
    }

    #[test]
    fn should_keep_the_recency_list_and_the_accounting_exact_under_random_load() {
        let mut rng = fastrand::Rng::with_seed(10);
        let mut h = History::with_limits(
            HistoryLimits {
                events_per_channel: 8,
                max_bytes: 32 * 1024,
                max_channels: 12,
                ttl_ms: Some(400),
            },
            1000,
        );
        let mut last_published: HashMap<String, u64> = HashMap::new();
        for step in 0..5000u64 {
            let now = 1000 + step;
            let channel = format!("c{}", rng.usize(0..30));
            publish(&mut h, &channel, now, rng.usize(1..3000));
            last_published.insert(channel, step);
            if step % 97 == 0 {
                h.sweep(now);
            }
            assert!(h.bytes() <= 32 * 1024);
            assert!(h.channels() <= 12);
            assert_accounting(&h);
            let order = recency(&h);
            let steps: Vec<u64> = order.iter().map(|c| last_published[c]).collect();
            assert!(steps.is_sorted(), "least recent first: {order:?} {steps:?}");
        }
        let evictions = h.take_evictions();
        assert!(
            evictions.channels > 0 && evictions.bytes > 0,
            "{evictions:?}"
        );
    }
}

#[cfg(test)]
mod page_tests {
    use super::*;

    #[test]
    fn should_cut_pages_by_bytes_and_say_more_follow() {
        let mut h = History::new(100, 1000);
        let ids: Vec<EventId> = (0..10)
            .map(|i| {
                let id = h.next_id(1000 + i);
                h.push("big", id, Bytes::from(vec![b'x'; 100]));
                id
            })
            .collect();
        let size = PageSize {
            events: 100,
            bytes: 250,
        };
        let page = h.read("big", Some(ids[0]), size).unwrap();
        assert_eq!(page.events.len(), 2, "two 100-byte events fit in 250 bytes");
        assert!(page.more);
        let last = h.read("big", Some(ids[7]), size).unwrap();
        assert_eq!(last.events.len(), 2);
        assert!(!last.more, "nothing after the last event");
        // One event bigger than the budget still comes, alone: a page always progresses.
        let tiny = PageSize {
            events: 100,
            bytes: 10,
        };
        assert_eq!(h.read("big", Some(ids[0]), tiny).unwrap().events.len(), 1);
        // Without an id: the newest that fit, in order.
        let latest = h.read("big", None, size).unwrap();
        let got: Vec<EventId> = latest.events.iter().map(|e| e.id).collect();
        assert_eq!(got, ids[8..]);
        assert!(latest.more);
    }
}
