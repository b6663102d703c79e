//! Conn: one client connection, one slab slot (its key is its mio token).
//!
//! A Conn is a small state machine. Its transitions:
//!
//! ```text
//! ReadingRequest --request answered, keep-alive--> ReadingRequest
//! ReadingRequest --POST /events with Redis--> AwaitingBroker --Redis replied--> ReadingRequest
//! ReadingRequest --GET /ws upgrade--> WebSocket
//! ReadingRequest --GET /sse--> Sse
//! ReadingRequest | AwaitingBroker | WebSocket | Sse --error, close, shutdown--> Closing
//! Closing --queue flushed, peer closed or linger deadline--> Closed --reap--> (slot freed)
//! any --socket error or EOF--> Closed
//! ```
//!
//! A Conn owns no read buffer: the reactor reads into one scratch buffer and a Conn keeps only
//! `tail`, the bytes of an incomplete request or frame. Its output queue allocates only while
//! there is output. Timers are one `deadline` field, swept once a second by the reactor.
//!
//! A subscriber that asked to resume from an event id holds a `Recovery` while its history is
//! read (from Redis, which takes a round trip): live events for it are buffered there, then
//! released after the history, minus any the history already contained.

use std::collections::VecDeque;

use mio::net::TcpStream;
use smallvec::SmallVec;

use crate::event::EventId;
use crate::fanout::{ChannelId, Subscription};
use crate::outq::{Chunk, OutQueue};
use crate::ws::frame::PartialMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for (more of) an HTTP request; also idle keep-alive.
    ReadingRequest,
    /// A publish is out at Redis; later pipelined requests wait in `tail`, answered in order.
    AwaitingBroker,
    /// An open WebSocket on the feed route.
    WebSocket,
    /// An open WebSocket on the echo route (conformance testing).
    Echo,
    /// A Server-Sent Events stream.
    Sse,
    /// Sending the last bytes (an error reply, a close frame), then waiting for the peer to
    /// close so the last bytes are not lost to a reset.
    Closing,
    /// Done: the reactor frees the slot at the end of the turn.
    Closed,
}

/// What a connection was upgraded to (it keeps this through `Closing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Became {
    Http,
    WebSocket,
    Sse,
}

#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub out: OutQueue,
    /// Received bytes that do not yet form a whole request or frame.
    pub tail: Vec<u8>,
    /// A fragmented WebSocket message being assembled (rare: almost always `None`).
    pub partial: Option<Box<PartialMessage>>,
    /// History being replayed before live events (rare: almost always `None`).
    pub recovery: Option<Box<Recovery>>,
    /// The channels this WebSocket receives, with its slot in each channel's subscriber list.
    pub subs: SmallVec<[Subscription; 1]>,
    /// Tells this connection apart from a later one that reuses its slab slot.
    pub serial: u32,
    /// Reactor clock (seconds) at which the current phase times out.
    pub deadline: u32,
    pub phase: Phase,
    /// In the reactor's dirty list: has output to flush this turn.
    pub dirty: bool,
    /// Registered for WRITABLE because the socket refused part of the output.
    pub wants_writable: bool,
    /// The socket may hold unread input (reading paused while a publish is in flight, or the
    /// per-turn read budget ran out).
    pub read_pending: bool,
    /// A heartbeat ping is out and unanswered.
    pub awaiting_pong: bool,
    /// Our write half is shut (Closing, after the last bytes left).
    pub write_shut: bool,
    /// The peer will send nothing more that matters: EOF read, or its WebSocket close frame
    /// arrived. A closing connection then ends as soon as its output is flushed.
    pub peer_done: bool,
    /// What the connection became, if anything: it stays counted as that until it is freed.
    pub became: Became,
}

impl Conn {
    pub fn new(stream: TcpStream, serial: u32, deadline: u32) -> Conn {
        Conn {
            stream,
            out: OutQueue::default(),
            tail: Vec::new(),
            partial: None,
            recovery: None,
            subs: SmallVec::new(),
            serial,
            deadline,
            phase: Phase::ReadingRequest,
            dirty: false,
            wants_writable: false,
            read_pending: false,
            awaiting_pong: false,
            write_shut: false,
            peer_done: false,
            became: Became::Http,
        }
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self.phase, Phase::WebSocket | Phase::Echo)
    }

    /// A WebSocket or SSE stream that receives events.
    pub fn is_subscriber(&self) -> bool {
        matches!(self.phase, Phase::WebSocket | Phase::Sse)
    }

    /// Queues bytes and puts the connection on the dirty list; never writes.
    pub fn queue(&mut self, key: usize, bytes: impl Into<Chunk>, dirty: &mut Vec<usize>) {
        self.out.push(bytes);
        self.mark_dirty(key, dirty);
    }

    pub fn mark_dirty(&mut self, key: usize, dirty: &mut Vec<usize>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }

    /// Frees what an idle connection no longer needs.
    pub fn release_memory(&mut self) {
        self.out.release_memory();
        if self.tail.is_empty() && self.tail.capacity() > 0 {
            self.tail = Vec::new();
        }
    }
}

/// Live events held back while a subscriber's history is being read.
#[derive(Debug, Default)]
pub struct Recovery {
    /// History reads still outstanding.
    pub pending: u32,
    /// Per channel, the newest id the history replay sent.
    replayed: SmallVec<[(ChannelId, EventId); 2]>,
    buffered: VecDeque<(ChannelId, Option<EventId>, Chunk)>,
    pub buffered_bytes: usize,
}

impl Recovery {
    pub fn buffer(&mut self, channel: ChannelId, id: Option<EventId>, bytes: Chunk) {
        self.buffered_bytes += bytes.len();
        self.buffered.push_back((channel, id, bytes));
    }

    pub fn replayed(&mut self, channel: ChannelId, id: EventId) {
        match self.replayed.iter_mut().find(|(c, _)| *c == channel) {
            Some(entry) => entry.1 = entry.1.max(id),
            None => self.replayed.push((channel, id)),
        }
    }

    /// Whether a live event is new to this subscriber. The history and the subscription
    /// travel on two Redis connections, so a live event the history already held can still be
    /// on its way after the history arrived: anything at or below the replayed id is dropped
    /// until a newer event shows the channel's live stream has passed the seam.
    pub fn admit(&mut self, channel: ChannelId, id: Option<EventId>) -> bool {
        let Some(id) = id else {
            return true; // published by another tool, without an id: never replayed
        };
        match self.replayed.iter().position(|(c, _)| *c == channel) {
            Some(i) if id <= self.replayed[i].1 => false,
            Some(i) => {
                self.replayed.swap_remove(i);
                true
            }
            None => true,
        }
    }

    /// The buffered live events that the replay did not already send, in arrival order.
    pub fn take_live(&mut self) -> Vec<Chunk> {
        self.buffered_bytes = 0;
        let buffered = std::mem::take(&mut self.buffered);
        buffered
            .into_iter()
            .filter_map(|(channel, id, bytes)| self.admit(channel, id).then_some(bytes))
            .collect()
    }

    /// Nothing left to read, hold back or filter: the subscriber is plainly live.
    pub fn is_done(&self) -> bool {
        self.pending == 0 && self.buffered.is_empty() && self.replayed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn should_keep_the_connection_struct_small() {
        let size = std::mem::size_of::<Conn>();
        // A slab slot is an enum of a Conn or a free-list index: about an Option<Conn>.
        let slot = std::mem::size_of::<Option<Conn>>();
        println!("size_of::<Conn>() = {size} bytes, slab slot = {slot} bytes");
        // Idle memory per WebSocket is budgeted at 400 bytes of RSS in all; the struct is
        // most of it.
        assert!(slot <= 160, "Conn grew to {size} bytes (slot {slot})");
    }

    #[test]
    fn should_drop_live_events_the_replay_already_sent() {
        let id = |ms| Some(EventId { ms, seq: 0 });
        let mut r = Recovery::default();
        let chunk = |text: &'static str| Chunk::new(Bytes::from_static(text.as_bytes()));
        r.buffer(1, id(5), chunk("5"));
        r.buffer(2, id(5), chunk("other"));
        r.buffer(1, None, chunk("no id"));
        r.replayed(1, EventId { ms: 6, seq: 0 });
        assert_eq!(r.take_live(), vec![chunk("other"), chunk("no id")]);
        // A late live copy of a replayed event is still dropped; a newer one passes the seam.
        assert!(!r.admit(1, id(6)));
        assert!(!r.is_done());
        assert!(r.admit(1, id(7)));
        assert!(
            r.admit(1, id(6)),
            "past the seam, ids are not filtered any more"
        );
        assert!(r.is_done());
    }
}
