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

    /// A page of `channel`'s events after `since` (oldest first, cut at `size`), or `TooOld`
    /// if some events after `since` may be gone. Without `since`: the latest events that fit
    /// in `size`.
    pub fn read(
        &self,
        channel: &str,
        since: Option<EventId>,
        size: PageSize,
    ) -> Result<Page, TooOld> {
        let ring = self.rings.get(channel);
        let Some(since) = since else {
            return Ok(ring.map_or(Page::default(), |r| {
                // Newest first, cut, then put back in order.
                let mut page = Page::cut(r.events.iter().rev(), size);
                page.events.reverse();
                page
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
        Ok(ring.map_or(Page::default(), |r| {
            // Ids are increasing: binary-search the first one after `since`.
            let start = r.events.partition_point(|e| e.id <= since);
            Page::cut(r.events.range(start..), size)
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
        let h = History::new(3, 5000);
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
