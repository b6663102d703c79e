//! Catch-up: a channel whose Redis subscription was lost and is back reads what it missed
//! from its stream, with no gap and no duplicate at either end. This module decides; it
//! touches no socket and reads no history itself (as `replay.rs` does for one resuming
//! subscriber, this does for a whole channel after the link's loss).
//!
//! - When the subscription is lost, each channel that had delivered an event begins a
//!   catch-up from the newest id it delivered (`begin`).
//! - Once the subscription is confirmed again the reactor reads the stream after that id
//!   (`reads_due`, `read_sent`; a read lost with the link is sent again: `read_lost`).
//! - Only the answer to the read a catch-up waits for may end it (`expects`). A subscription
//!   lost again while the read is out makes that read worthless: Redis may have run it before
//!   events the lost subscription never brought, and ending the catch-up with it would leave
//!   them in neither the page nor the live stream (a silent gap). So `begin` forgets the read
//!   out, the catch-up reads again once the subscription is back, and the old answer, like an
//!   answer for a catch-up given up since, is ignored.
//! - Live messages meanwhile are held (`on_live` -> `Hold`), in bytes within a budget
//!   (`MAX_PENDING_BYTES`, over every channel) and in time (`holding_since`, answered by the
//!   reactor after `REDIS_TIMEOUT_MS`): past either, the catch-up is given up
//!   (`GiveUp`: subscribers are told to reset) rather than hold without bound.
//! - When the read is back (`finish`), the page goes out, then the held messages through the
//!   seam: the newest id the page delivered. The history and the subscription are two
//!   connections, so a live copy of an event the page already delivered may still arrive;
//!   ids at or below the seam are dropped (`Skip`) until a newer one shows the live stream
//!   has passed it. Messages without an id (another program's) are never in the history:
//!   they always go out.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;

use crate::event::EventId;

/// A live message from the subscription: its id if trusted, its payload, its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMessage {
    pub id: Option<EventId>,
    pub payload: Bytes,
    pub kind: String,
}

/// What to do with a live message.
#[derive(Debug, PartialEq, Eq)]
pub enum Live {
    /// Deliver it now.
    Deliver(LiveMessage),
    /// Kept by the channel's catch-up until its read is back.
    Held,
    /// A late copy of an event the catch-up's history delivered: dropped.
    Skip,
    /// Holding it would pass the byte budget: give the catch-up up (its subscribers reset),
    /// then offer the message again.
    GiveUp(LiveMessage),
}

/// A finished catch-up: where it read from, and what it held meanwhile (oldest first), to
/// offer again (`on_live`) once the page is out and the seam is set.
#[derive(Debug)]
pub struct Finished {
    pub since: EventId,
    pub held: Vec<LiveMessage>,
}

/// One history read sent for a catch-up: a reply is matched to the catch-up it was sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadToken(u64);

#[derive(Debug)]
struct CatchUp {
    since: EventId,
    /// The read out, whose answer ends the catch-up; `None`: a read is due.
    read: Option<ReadToken>,
    held: Vec<LiveMessage>,
    /// When the first live message was held: the reactor gives the catch-up up
    /// `REDIS_TIMEOUT_MS` later at the latest.
    holding_since: Option<Instant>,
}

/// The channels catching up, and the seams finished catch-ups left.
#[derive(Debug, Default)]
pub struct CatchUps {
    active: HashMap<String, CatchUp>,
    /// Per channel, the newest id a catch-up's history delivered.
    seams: HashMap<String, EventId>,
    /// Bytes of live messages held, over every channel (counted in `MAX_PENDING_BYTES`).
    held_bytes: usize,
    /// Reads sent so far: the next `ReadToken`.
    reads_sent: u64,
}

impl CatchUps {
    /// The subscription of `channel` was lost; it had delivered up to `since`. A channel
    /// already catching up keeps its first point (nothing after it was delivered since) but
    /// not its read, if one is out: that read cannot cover what this loss misses.
    pub fn begin(&mut self, channel: String, since: EventId) {
        self.seams.remove(&channel);
        let catch_up = self.active.entry(channel).or_insert(CatchUp {
            since,
            read: None,
            held: Vec::new(),
            holding_since: None,
        });
        catch_up.read = None;
    }

    pub fn is_active(&self, channel: &str) -> bool {
        self.active.contains_key(channel)
    }

    /// Catch-ups whose read is not out and that `can_read` says may read now, with the id to
    /// read after.
    pub fn reads_due(&self, can_read: impl Fn(&str) -> bool) -> Vec<(String, EventId)> {
        self.active
            .iter()
            .filter(|(channel, c)| c.read.is_none() && can_read(channel))
            .map(|(channel, c)| (channel.clone(), c.since))
            .collect()
    }

    /// A read of `channel`'s missed events is sent: the token its answer must show.
    pub fn read_sent(&mut self, channel: &str) -> ReadToken {
        self.reads_sent += 1;
        let read = ReadToken(self.reads_sent);
        if let Some(catch_up) = self.active.get_mut(channel) {
            catch_up.read = Some(read);
        }
        read
    }

    /// Whether the answer to `read` is the one the catch-up of `channel` waits for; any
    /// other is stale (sent before the subscription was lost again, or for a catch-up given
    /// up since) and must be ignored.
    pub fn expects(&self, channel: &str, read: ReadToken) -> bool {
        self.active
            .get(channel)
            .is_some_and(|c| c.read == Some(read))
    }

    /// The read was lost with the link (not refused by Redis): it is due again.
    pub fn read_lost(&mut self, channel: &str, read: ReadToken) {
        if let Some(catch_up) = self.active.get_mut(channel)
            && catch_up.read == Some(read)
        {
            catch_up.read = None;
        }
    }

    /// A live message on `channel`. `budget`: the most bytes held over every channel.
    pub fn on_live(&mut self, channel: &str, message: LiveMessage, budget: usize) -> Live {
        if let Some(catch_up) = self.active.get_mut(channel) {
            if self.held_bytes + message.payload.len() > budget {
                return Live::GiveUp(message);
            }
            self.held_bytes += message.payload.len();
            catch_up.holding_since.get_or_insert_with(Instant::now);
            catch_up.held.push(message);
            return Live::Held;
        }
        if let Some(id) = message.id
            && let Some(&seam) = self.seams.get(channel)
        {
            if id <= seam {
                return Live::Skip;
            }
            self.seams.remove(channel);
        }
        Live::Deliver(message)
    }

    /// Ends the catch-up of `channel` (its read is back, failed, or given up), releasing what
    /// it held. `None` if it was not catching up.
    pub fn finish(&mut self, channel: &str) -> Option<Finished> {
        let catch_up = self.active.remove(channel)?;
        let held: usize = catch_up.held.iter().map(|m| m.payload.len()).sum();
        self.held_bytes -= held;
        Some(Finished {
            since: catch_up.since,
            held: catch_up.held,
        })
    }

    /// The page of a finished catch-up delivered up to `seam`: late live copies at or below
    /// it are dropped from now on.
    pub fn set_seam(&mut self, channel: &str, seam: EventId) {
        self.seams.insert(channel.to_string(), seam);
    }

    /// The channel lost its last local subscriber: no one is left for its seam to protect
    /// (a later subscriber never got the history's copies), and keeping it would leave one
    /// entry per channel name ever caught up, across Redis reconnects.
    pub fn forget_seam(&mut self, channel: &str) {
        self.seams.remove(channel);
    }

    /// When the longest-holding catch-up began to hold.
    pub fn oldest_holding(&self) -> Option<Instant> {
        self.active.values().filter_map(|c| c.holding_since).min()
    }

    /// Channels that have held live messages since `cutoff` or earlier.
    pub fn holding_since(&self, cutoff: Instant) -> Vec<String> {
        self.active
            .iter()
            .filter(|(_, c)| c.holding_since.is_some_and(|t| t <= cutoff))
            .map(|(channel, _)| channel.clone())
            .collect()
    }

    /// Bytes of live messages held, over every channel.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn message(ms: Option<u64>, text: &'static str) -> LiveMessage {
        LiveMessage {
            id: ms.map(id),
            payload: Bytes::from_static(text.as_bytes()),
            kind: "t".into(),
        }
    }

    #[test]
    fn should_hold_live_messages_until_the_read_is_back_then_drop_late_copies() {
        let mut c = CatchUps::default();
        c.begin("a".into(), id(10));
        assert_eq!(c.reads_due(|_| true), vec![("a".to_string(), id(10))]);
        let read = c.read_sent("a");
        assert!(c.reads_due(|_| true).is_empty());
        assert!(c.expects("a", read));
        // Live 12 and 13 arrive while the read is out.
        assert_eq!(c.on_live("a", message(Some(12), "12"), 100), Live::Held);
        assert_eq!(c.on_live("a", message(Some(13), "13"), 100), Live::Held);
        assert_eq!(c.held_bytes(), 4);
        // Other channels are not held.
        assert!(matches!(
            c.on_live("b", message(Some(12), "b"), 100),
            Live::Deliver(_)
        ));
        // The page delivered 11 and 12: the seam is 12.
        let finished = c.finish("a").unwrap();
        assert_eq!((finished.since, c.held_bytes()), (id(10), 0));
        c.set_seam("a", id(12));
        let verdicts: Vec<Live> = finished
            .held
            .into_iter()
            .map(|m| c.on_live("a", m, 100))
            .collect();
        assert_eq!(verdicts[0], Live::Skip);
        assert_eq!(verdicts[1], Live::Deliver(message(Some(13), "13")));
        // Past the seam: a late copy of 12 now is an old id, and goes out as live does
        // (Redis delivers in order, so it cannot come after 13).
        assert!(matches!(
            c.on_live("a", message(Some(14), "14"), 100),
            Live::Deliver(_)
        ));
    }

    #[test]
    fn should_give_up_rather_than_hold_past_the_budget() {
        let mut c = CatchUps::default();
        c.begin("a".into(), id(1));
        assert_eq!(c.on_live("a", message(Some(2), "12345"), 8), Live::Held);
        assert_eq!(
            c.on_live("a", message(Some(3), "6789"), 8),
            Live::GiveUp(message(Some(3), "6789"))
        );
        let finished = c.finish("a").unwrap();
        assert_eq!(finished.held.len(), 1);
        assert_eq!(c.held_bytes(), 0);
        assert!(!c.is_active("a"));
    }

    #[test]
    fn should_send_messages_without_an_id_past_any_seam() {
        let mut c = CatchUps::default();
        c.set_seam("a", id(50));
        assert!(matches!(
            c.on_live("a", message(None, "x"), 100),
            Live::Deliver(_)
        ));
        assert_eq!(c.on_live("a", message(Some(49), "y"), 100), Live::Skip);
    }

    #[test]
    fn should_read_again_when_the_subscription_is_lost_while_the_read_is_out() {
        let mut c = CatchUps::default();
        c.begin("a".into(), id(10));
        let first = c.read_sent("a");
        assert_eq!(c.on_live("a", message(Some(11), "11"), 100), Live::Held);
        // Lost again while the read is out: Redis may have run it before events the lost
        // subscription never brought. Its answer must not end the catch-up; a new read is
        // due from the same point once the subscription is back.
        c.begin("a".into(), id(11));
        assert!(!c.expects("a", first));
        assert_eq!(c.reads_due(|_| true), vec![("a".to_string(), id(10))]);
        let second = c.read_sent("a");
        assert!(c.expects("a", second) && !c.expects("a", first));
        // The old read's loss changes nothing for the new one.
        c.read_lost("a", first);
        assert!(c.expects("a", second));
        // What it held meanwhile is kept for the seam.
        assert_eq!(c.finish("a").unwrap().held, vec![message(Some(11), "11")]);
    }

    #[test]
    fn should_ignore_an_answer_for_a_catch_up_given_up_since() {
        let mut c = CatchUps::default();
        c.begin("a".into(), id(10));
        let old = c.read_sent("a");
        // Given up (held too long: a reset notice), then lost again: a new catch-up.
        c.finish("a");
        assert!(!c.expects("a", old));
        c.begin("a".into(), id(20));
        assert!(!c.expects("a", old));
        let new = c.read_sent("a");
        assert!(c.expects("a", new));
    }

    #[test]
    fn should_read_again_a_read_lost_with_the_link_and_time_out_holders() {
        let mut c = CatchUps::default();
        c.begin("a".into(), id(1));
        c.begin("b".into(), id(1));
        let read = c.read_sent("a");
        c.read_lost("a", read);
        let mut due = c.reads_due(|channel| channel == "a");
        due.sort();
        assert_eq!(due, vec![("a".to_string(), id(1))]);
        assert!(c.oldest_holding().is_none());
        c.on_live("b", message(Some(2), "x"), 100);
        let held_at = c.oldest_holding().unwrap();
        assert_eq!(c.holding_since(held_at), vec!["b".to_string()]);
        assert!(
            c.holding_since(held_at - std::time::Duration::from_secs(1))
                .is_empty()
        );
        // A second loss keeps the first point.
        c.begin("b".into(), id(7));
        assert_eq!(c.finish("b").unwrap().since, id(1));
    }
}
