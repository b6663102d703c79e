//! Idempotent publishing, embedded: which `Idempotency-Key`s were published to which channel
//! in the last `IDEMPOTENCY_WINDOW_SECS`, and the id each got. A retried publish (a script
//! that timed out waiting for its 200) finds its key here and is answered with the original
//! id instead of being delivered twice. (With Redis the same job is done inside the publish
//! script, `SET ... NX EX`, so it holds across replicas: see `broker.rs`.)
//!
//! Bounded, because any publisher can send new keys: at most `IDEMPOTENCY_MAX_KEYS` entries
//! and `IDEMPOTENCY_MAX_BYTES` of memory as counted by `entry_bytes`. The window is the same
//! for every key, so insertion order is expiry order: one FIFO serves both expiry (from the
//! front, lazily and by `sweep` with a bounded amount of work) and eviction over a cap (oldest
//! first, counted, since an evicted key no longer protects its retry).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::event::EventId;

/// Longest key accepted (bytes): enough for a UUID with a prefix, or a hash in hex.
pub const MAX_KEY_BYTES: usize = 128;

/// Entries `sweep` expires per call at most: the once-a-second sweep must not stall the
/// reactor however many keys expire at once (the rest go on the next sweeps, or lazily).
const SWEEP_BUDGET: usize = 10_000;

/// Why a key is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadKey {
    #[error("idempotency key must be 1 to 128 bytes")]
    Length,
    #[error("idempotency key must be printable ASCII")]
    NotPrintable,
}

/// Checks a key: 1-128 bytes of printable ASCII (space included), so it can go into a log
/// line and a Redis key name as it is.
pub fn validate_key(key: &str) -> Result<(), BadKey> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(BadKey::Length);
    }
    if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(BadKey::NotPrintable);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyLimits {
    /// `None`: idempotency off (`IDEMPOTENCY_WINDOW_SECS=0`), keys are ignored.
    pub window_ms: Option<u64>,
    pub max_keys: usize,
    pub max_bytes: usize,
}

#[derive(Debug)]
struct Seen {
    id: EventId,
    expires_ms: u64,
}

/// Keys seen recently, per channel, with the id each publish got.
#[derive(Debug)]
pub struct IdempotencyStore {
    limits: IdempotencyLimits,
    /// `<channel> <key>` (a channel name has no space) -> the original publish.
    seen: HashMap<Arc<str>, Seen>,
    /// The same names, oldest first: expiry and eviction order.
    order: VecDeque<Arc<str>>,
    bytes: usize,
    /// Entries evicted over a cap before their window ended, not yet counted in `/metrics`.
    evicted: u64,
}

/// What one entry costs, about: the shared name (an `Arc` allocation: two counts and the
/// text, rounded up by the allocator), its slot in the map (hash table slot of pointer,
/// id and expiry, plus control byte and spare capacity) and in the FIFO.
pub fn entry_bytes(name_len: usize) -> usize {
    const ARC_HEADER: usize = 16;
    const MAP_SLOT: usize = 16 + 16 + 8 + 1;
    const FIFO_SLOT: usize = 16;
    let name = (ARC_HEADER + name_len).next_multiple_of(16);
    // Tables run between half and seven eighths full: count a slot and a half per entry.
    name + MAP_SLOT * 3 / 2 + FIFO_SLOT * 3 / 2
}

impl IdempotencyStore {
    pub fn new(limits: IdempotencyLimits) -> IdempotencyStore {
        IdempotencyStore {
            limits,
            seen: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            evicted: 0,
        }
    }

    pub fn is_on(&self) -> bool {
        self.limits.window_ms.is_some()
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Memory held, as counted against `IDEMPOTENCY_MAX_BYTES`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The id of an earlier publish of `key` to `channel` within the window, if any.
    pub fn lookup(&mut self, channel: &str, key: &str, now_ms: u64) -> Option<EventId> {
        self.expire(now_ms, SWEEP_BUDGET);
        let name = name(channel, key);
        self.seen
            .get(name.as_str())
            .filter(|seen| seen.expires_ms > now_ms)
            .map(|seen| seen.id)
    }

    /// Remembers that `key` published to `channel` got `id`, for the window. Over a cap,
    /// the oldest entries go first.
    pub fn remember(&mut self, channel: &str, key: &str, id: EventId, now_ms: u64) {
        let Some(window_ms) = self.limits.window_ms else {
            return;
        };
        let name: Arc<str> = Arc::from(name(channel, key));
        let cost = entry_bytes(name.len());
        if self.seen.contains_key(&name) {
            return; // a duplicate is answered, never remembered again
        }
        while !self.order.is_empty()
            && (self.seen.len() >= self.limits.max_keys
                || self.bytes + cost > self.limits.max_bytes)
        {
            self.pop_oldest();
            self.evicted += 1;
        }
        let expires_ms = now_ms.saturating_add(window_ms);
        self.seen.insert(name.clone(), Seen { id, expires_ms });
        self.order.push_back(name);
        self.bytes += cost;
    }

    /// Drops expired entries, at most `SWEEP_BUDGET` of them (once a second).
    pub fn sweep(&mut self, now_ms: u64) {
        self.expire(now_ms, SWEEP_BUDGET);
        // A burst of keys leaves a large table behind: give the memory back once mostly empty.
        if self.seen.capacity() > 1024 && self.seen.len() < self.seen.capacity() / 4 {
            self.seen.shrink_to_fit();
            self.order.shrink_to_fit();
        }
    }

    /// Entries evicted over a cap since the last call (for `/metrics`).
    pub fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    fn expire(&mut self, now_ms: u64, budget: usize) {
        for _ in 0..budget {
            let expired = self
                .order
                .front()
                .and_then(|name| self.seen.get(name))
                .is_some_and(|seen| seen.expires_ms <= now_ms);
            if !expired {
                return;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(name) = self.order.pop_front() {
            self.seen.remove(&name);
            self.bytes -= entry_bytes(name.len());
        }
    }
}

fn name(channel: &str, key: &str) -> String {
    format!("{channel} {key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn store(max_keys: usize, max_bytes: usize) -> IdempotencyStore {
        IdempotencyStore::new(IdempotencyLimits {
            window_ms: Some(1000),
            max_keys,
            max_bytes,
        })
    }

    #[test]
    fn should_answer_a_key_per_channel_within_the_window() {
        let mut s = store(10, 1 << 20);
        assert_eq!(s.lookup("a", "k", 0), None);
        s.remember("a", "k", id(5), 0);
        assert_eq!(s.lookup("a", "k", 999), Some(id(5)));
        assert_eq!(s.lookup("b", "k", 10), None, "keys are per channel");
        assert_eq!(s.lookup("a", "k", 1000), None, "expired with its window");
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn should_evict_the_oldest_over_either_cap() {
        let mut s = store(3, 1 << 20);
        for n in 0..5 {
            s.remember("a", &format!("k{n}"), id(n), n);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.take_evictions(), 2);
        assert_eq!(s.lookup("a", "k1", 10), None);
        assert_eq!(s.lookup("a", "k4", 10), Some(id(4)));
        let one = entry_bytes("a k0".len());
        let mut s = store(100, one * 2);
        for n in 0..5 {
            s.remember("a", &format!("k{n}"), id(n), n);
        }
        assert_eq!((s.len(), s.bytes()), (2, one * 2));
    }

    #[test]
    fn should_sweep_expired_entries_in_bounded_steps() {
        let mut s = store(100_000, usize::MAX);
        for n in 0..(SWEEP_BUDGET as u64 + 5) {
            s.remember("a", &n.to_string(), id(n), 0);
        }
        s.sweep(5000);
        assert_eq!(s.len(), 5);
        s.sweep(5000);
        assert!(s.is_empty());
    }

    #[test]
    fn should_validate_keys() {
        assert_eq!(validate_key("order-123 retry"), Ok(()));
        assert_eq!(validate_key(""), Err(BadKey::Length));
        assert_eq!(validate_key(&"x".repeat(129)), Err(BadKey::Length));
        assert_eq!(validate_key(&"x".repeat(128)), Ok(()));
        assert_eq!(validate_key("caf\u{e9}"), Err(BadKey::NotPrintable));
        assert_eq!(validate_key("a\tb"), Err(BadKey::NotPrintable));
    }
}
