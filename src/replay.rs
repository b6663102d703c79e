//! Replay: a subscriber that resumes from an event id (`since=`, `Last-Event-ID`, a
//! `subscribe` with `since`) gets what it missed, then live events, with no gap and no
//! duplicate. This module decides; it touches no socket and reads no history itself: the
//! reactor asks it which page to read next, sends the page, and asks what to do with each
//! live event meanwhile.
//!
//! History is read in pages (cut by count and bytes), and the next page is read only when the
//! subscriber's queue has drained below a page: a replay holds about one page per client,
//! however long the history, and a client that does not read its replay is closed as slow
//! like any other.
//!
//! Live events of a channel being replayed:
//! - while no page read is out, they are skipped: every event is in the history before it
//!   is live (embedded: pushed, then delivered; Redis: one script appends, then publishes), so
//!   a later page brings them, in order;
//! - while a page read is out (Redis: a round trip on another link), they are held: the page
//!   may or may not contain them. When the page comes back and more follow, the held events
//!   are dropped (the next pages bring them); when it was the last page, the held events
//!   newer than its last id are sent, and the channel is live;
//! - after the last page, a late live copy of an event the replay sent can still arrive (the
//!   history and the subscription travel on two Redis connections): ids at or below the last
//!   replayed id are dropped until a newer one shows the live stream has passed the seam.
//!
//! Events without an id (published into Redis by another program) are never in the history:
//! they are sent at once.

use std::collections::VecDeque;

use smallvec::SmallVec;

use crate::channel::ChannelId;
use crate::event::EventId;
use crate::outq::Chunk;

/// One subscriber's replays in progress. Boxed on the connection, and only while a replay
/// runs: an idle subscriber pays one pointer for it.
#[derive(Debug, Default)]
pub struct Replay {
    /// Channels still being read from history, in the order they were asked for.
    cursors: SmallVec<[Cursor; 1]>,
    /// The channel whose page read is out, if any (one at a time per subscriber).
    reading: Option<ChannelId>,
    /// Live events of the `reading` channel that arrived while its page was out.
    held: VecDeque<(Option<EventId>, Chunk)>,
    held_bytes: usize,
    /// Channels whose replay is complete, with the newest id it sent.
    seams: SmallVec<[(ChannelId, EventId); 1]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    channel: ChannelId,
    /// The newest id the subscriber has: the next page starts after it.
    after: EventId,
}

/// A page read to make: the channel, and the id to read after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextRead {
    pub channel: ChannelId,
    pub after: EventId,
}

/// What to do with a live event for a subscriber that is replaying.
#[derive(Debug, PartialEq, Eq)]
pub enum Live {
    /// Queue it now.
    Send,
    /// Kept in the replay until its page read is back (counts toward the subscriber's cap).
    Held,
    /// Not now: a page brings it (or brought it already).
    Skip,
}

impl Replay {
    /// Starts replaying `channel` from after `since`. A channel already being replayed keeps
    /// its cursor.
    pub fn start(&mut self, channel: ChannelId, since: EventId) {
        self.seams.retain(|(c, _)| *c != channel);
        if !self.cursors.iter().any(|c| c.channel == channel) {
            self.cursors.push(Cursor {
                channel,
                after: since,
            });
        }
    }

    /// The page to read next, if none is out; the caller must then report it with
    /// `page_sent` or `abandon`, or give it back with `unread`.
    pub fn next_read(&mut self) -> Option<NextRead> {
        if self.reading.is_some() {
            return None;
        }
        let cursor = self.cursors.first()?;
        self.reading = Some(cursor.channel);
        Some(NextRead {
            channel: cursor.channel,
            after: cursor.after,
        })
    }

    /// The read could not be made yet (its source is not ready): try again later.
    pub fn unread(&mut self, read: NextRead) {
        if self.reading == Some(read.channel) {
            self.reading = None;
            self.release_held_bytes();
        }
    }

    /// Whether a page read is out.
    pub fn is_reading(&self) -> bool {
        self.reading.is_some()
    }

    /// Whether `read` is the read this replay is waiting for (a reply for a channel since
    /// unsubscribed, or re-subscribed from another id, is stale and ignored).
    pub fn expects(&self, read: NextRead) -> bool {
        self.reading == Some(read.channel)
            && self
                .cursors
                .iter()
                .any(|c| c.channel == read.channel && c.after == read.after)
    }

    /// A live event for this subscriber.
    pub fn on_live(&mut self, channel: ChannelId, id: Option<EventId>, bytes: &Chunk) -> Live {
        let Some(id) = id else {
            return Live::Send;
        };
        if self.cursors.iter().any(|c| c.channel == channel) {
            if self.reading != Some(channel) {
                return Live::Skip;
            }
            self.held_bytes += bytes.len();
            self.held.push_back((Some(id), bytes.clone()));
            return Live::Held;
        }
        match self.seams.iter().position(|(c, _)| *c == channel) {
            Some(i) if id <= self.seams[i].1 => Live::Skip,
            Some(i) => {
                self.seams.swap_remove(i);
                Live::Send
            }
            None => Live::Send,
        }
    }

    /// The page read for `read` was sent to the subscriber: `last` is its newest event id
    /// (`None` for an empty page), `more` whether events follow it. Returns the held live
    /// events to send now (only once the replay of the channel is complete).
    pub fn page_sent(&mut self, read: NextRead, last: Option<EventId>, more: bool) -> Vec<Chunk> {
        self.reading = None;
        let after = last.unwrap_or(read.after).max(read.after);
        let held = self.take_held();
        let Some(index) = self.cursors.iter().position(|c| c.channel == read.channel) else {
            return Vec::new();
        };
        if more && last.is_some() {
            // The next pages bring the held events: the history has every live event.
            self.cursors[index].after = after;
            return Vec::new();
        }
        self.cursors.remove(index);
        self.seams.push((read.channel, after));
        held.into_iter()
            .filter_map(|(id, bytes)| (id > Some(after)).then_some(bytes))
            .collect()
    }

    /// The channel's history cannot be replayed (too old, lost, unavailable): the caller
    /// tells the subscriber to reset. Live events held meanwhile are still news: they are
    /// returned, to be sent after the notice.
    pub fn abandon(&mut self, channel: ChannelId) -> Vec<Chunk> {
        let held = if self.reading == Some(channel) {
            self.reading = None;
            self.take_held()
        } else {
            VecDeque::new()
        };
        self.cursors.retain(|c| c.channel != channel);
        held.into_iter().map(|(_, bytes)| bytes).collect()
    }

    /// The subscriber left the channel: forget its replay.
    pub fn forget(&mut self, channel: ChannelId) {
        if self.reading == Some(channel) {
            self.reading = None;
            self.release_held_bytes();
        }
        self.cursors.retain(|c| c.channel != channel);
        self.seams.retain(|(c, _)| *c != channel);
    }

    /// Bytes of live events held here (they count toward the subscriber's cap).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Whether pages remain to be read.
    pub fn has_pages_to_read(&self) -> bool {
        !self.cursors.is_empty()
    }

    /// Nothing left to read, hold or filter: the subscriber is plainly live.
    pub fn is_done(&self) -> bool {
        self.cursors.is_empty() && self.held.is_empty() && self.seams.is_empty()
    }

    fn take_held(&mut self) -> VecDeque<(Option<EventId>, Chunk)> {
        self.held_bytes = 0;
        std::mem::take(&mut self.held)
    }

    fn release_held_bytes(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use bytes::Bytes;

    use super::*;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn chunk(text: &'static str) -> Chunk {
        Rc::new(Bytes::from_static(text.as_bytes()))
    }

    #[test]
    fn should_skip_live_events_between_pages_and_hold_them_during_a_read() {
        let mut r = Replay::default();
        r.start(1, id(5));
        // Between pages: the history brings it.
        assert_eq!(r.on_live(1, Some(id(6)), &chunk("6")), Live::Skip);
        let read = r.next_read().unwrap();
        assert_eq!(
            read,
            NextRead {
                channel: 1,
                after: id(5)
            }
        );
        assert!(r.next_read().is_none(), "one read at a time");
        // During the read: held, it may be newer than the page.
        assert_eq!(r.on_live(1, Some(id(9)), &chunk("9")), Live::Held);
        assert_eq!(r.held_bytes(), 1);
        // Other channels, and events without an id, go through.
        assert_eq!(r.on_live(2, Some(id(7)), &chunk("x")), Live::Send);
        assert_eq!(r.on_live(1, None, &chunk("foreign")), Live::Send);
        // A page with more to come: held events are dropped, the next page brings them.
        assert_eq!(r.page_sent(read, Some(id(7)), true), Vec::<Chunk>::new());
        assert_eq!(r.held_bytes(), 0);
        let read = r.next_read().unwrap();
        assert_eq!(read.after, id(7));
        assert_eq!(r.on_live(1, Some(id(8)), &chunk("8")), Live::Held);
        assert_eq!(r.on_live(1, Some(id(10)), &chunk("10")), Live::Held);
        // The last page ends at 9: held 8 was in it, 10 is news.
        assert_eq!(r.page_sent(read, Some(id(9)), false), vec![chunk("10")]);
        assert!(!r.has_pages_to_read());
        // A late live copy of a replayed event is dropped; a newer one passes the seam.
        assert_eq!(r.on_live(1, Some(id(9)), &chunk("9")), Live::Skip);
        assert_eq!(r.on_live(1, Some(id(11)), &chunk("11")), Live::Send);
        assert!(r.is_done());
    }

    #[test]
    fn should_release_held_events_after_a_reset() {
        let mut r = Replay::default();
        r.start(1, id(5));
        let read = r.next_read().unwrap();
        r.on_live(1, Some(id(9)), &chunk("9"));
        assert_eq!(r.abandon(read.channel), vec![chunk("9")]);
        assert!(r.is_done());
    }

    #[test]
    fn should_ignore_a_stale_page_after_the_channel_was_left() {
        let mut r = Replay::default();
        r.start(1, id(5));
        let stale = r.next_read().unwrap();
        r.forget(1);
        assert!(!r.expects(stale));
        r.start(1, id(8));
        let fresh = r.next_read().unwrap();
        assert!(!r.expects(stale), "same channel, another starting point");
        assert!(r.expects(fresh));
    }

    #[test]
    fn should_read_channels_one_after_another() {
        let mut r = Replay::default();
        r.start(1, id(5));
        r.start(2, id(3));
        let first = r.next_read().unwrap();
        assert_eq!(first.channel, 1);
        assert_eq!(r.on_live(2, Some(id(4)), &chunk("4")), Live::Skip);
        r.page_sent(first, None, false);
        let second = r.next_read().unwrap();
        assert_eq!(
            second,
            NextRead {
                channel: 2,
                after: id(3)
            }
        );
        r.unread(second);
        assert_eq!(r.next_read(), Some(second), "given back, read again later");
    }
}
