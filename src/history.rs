//! The embedded broker's memory of recent events: a bounded ring per channel, so a client that
//! reconnects with the id of the last event it saw gets what it missed. (With Redis, the same
//! job is done by a capped stream per channel; see `broker.rs`.)
//!
//! Ids come from one counter for every channel, time-based like Redis stream ids, so they also
//! order events across channels. A ring remembers its `floor`: the newest id it may have lost
//! (the last event it evicted, or the moment the server started). A client whose last id is
//! below the floor may have missed events that are gone, and is told to reset instead.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::event::EventId;

/// A stored event: its id and its JSON (with the id inside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: EventId,
    pub json: Bytes,
}

/// Why history cannot be replayed from the id a client gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooOld {
    pub reason: &'static str,
}

#[derive(Debug)]
struct Ring {
    events: VecDeque<StoredEvent>,
    floor: EventId,
}

#[derive(Debug)]
pub struct History {
    rings: HashMap<String, Ring>,
    capacity: usize,
    boot: EventId,
    last_id: EventId,
}

impl History {
    /// `capacity` events per channel; `now_ms` is wall-clock time at start (ids before it
    /// belong to an earlier run whose history is gone).
    pub fn new(capacity: usize, now_ms: u64) -> History {
        let boot = EventId { ms: now_ms, seq: 0 };
        History {
            rings: HashMap::new(),
            capacity: capacity.max(1),
            boot,
            last_id: boot,
        }
    }

    /// The id for a new event.
    pub fn next_id(&mut self, now_ms: u64) -> EventId {
        self.last_id = EventId::next(self.last_id, now_ms);
        self.last_id
    }

    pub fn push(&mut self, channel: &str, id: EventId, json: Bytes) {
        let boot = self.boot;
        // Look up before inserting: `entry` would allocate the channel name on every publish.
        if !self.rings.contains_key(channel) {
            let ring = Ring {
                events: VecDeque::new(),
                floor: boot,
            };
            self.rings.insert(channel.to_string(), ring);
        }
        let ring = self.rings.get_mut(channel).expect("bug: inserted above");
        if ring.events.len() == self.capacity
            && let Some(evicted) = ring.events.pop_front()
        {
            ring.floor = evicted.id;
        }
        ring.events.push_back(StoredEvent { id, json });
    }

    /// Events of `channel` after `since` (oldest first, at most `limit`), or `TooOld` if some
    /// events after `since` may be gone. Without `since`: the latest `limit` events.
    pub fn read(
        &self,
        channel: &str,
        since: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, TooOld> {
        let ring = self.rings.get(channel);
        let Some(since) = since else {
            return Ok(ring.map_or(Vec::new(), |r| {
                let skip = r.events.len().saturating_sub(limit);
                r.events.iter().skip(skip).cloned().collect()
            }));
        };
        let floor = ring.map_or(self.boot, |r| r.floor);
        if since < floor {
            return Err(TooOld {
                reason: if since < self.boot {
                    "history lost: the server restarted"
                } else {
                    "the id is older than the history kept"
                },
            });
        }
        Ok(ring.map_or(Vec::new(), |r| {
            // Ids are increasing: binary-search the first one after `since`.
            let start = r.events.partition_point(|e| e.id <= since);
            r.events.range(start..).take(limit).cloned().collect()
        }))
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

    #[test]
    fn should_replay_after_an_id_in_order() {
        let mut h = History::new(10, 1000);
        let ids = push_n(&mut h, "orders", 5);
        let got: Vec<EventId> = h
            .read("orders", Some(ids[1]), 100)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, ids[2..]);
        assert_eq!(h.read("orders", Some(ids[4]), 100).unwrap(), vec![]);
        assert_eq!(h.read("orders", Some(ids[0]), 2).unwrap().len(), 2);
    }

    #[test]
    fn should_refuse_ids_older_than_what_is_kept() {
        let mut h = History::new(3, 1000);
        let ids = push_n(&mut h, "orders", 5);
        // ids[0] and ids[1] were evicted: resuming from ids[0] would skip ids[1].
        assert!(h.read("orders", Some(ids[0]), 10).is_err());
        // Resuming from the last evicted id is exact.
        assert_eq!(h.read("orders", Some(ids[1]), 10).unwrap().len(), 3);
    }

    #[test]
    fn should_refuse_ids_from_before_a_restart() {
        let h = History::new(3, 5000);
        let old = EventId { ms: 4000, seq: 0 };
        assert_eq!(
            h.read("orders", Some(old), 10).unwrap_err().reason,
            "history lost: the server restarted"
        );
        assert_eq!(
            h.read("orders", Some(EventId { ms: 5000, seq: 0 }), 10),
            Ok(vec![])
        );
    }

    #[test]
    fn should_return_the_latest_without_an_id() {
        let mut h = History::new(10, 1000);
        let ids = push_n(&mut h, "orders", 5);
        let got: Vec<EventId> = h
            .read("orders", None, 2)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(got, ids[3..]);
        assert_eq!(h.read("empty", None, 2).unwrap(), vec![]);
    }
}
