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
//! Its phase and what it became are private: each arrow above is a method (`open_websocket`,
//! `await_broker`, `begin_closing`, `close`, ...), so the diagram is the whole story, and a
//! transition from the wrong phase trips a debug assertion in tests. So are the states within
//! a phase: the heartbeat (`heard_from_peer`, `ping_sent`), read back-pressure
//! (`pause_reading`, `resume_reading`), the end (`peer_said_goodbye`, `shut_write`) and
//! `100 Continue`. The buffers (`out`, `tail`, `replay`, `subs`) stay fields: the reactor and
//! the fan-out work on them directly, on the hot path.
//!
//! A Conn owns no read buffer: the reactor reads into one scratch buffer and a Conn keeps only
//! `tail`, the bytes of an incomplete request or frame. Its output queue allocates only while
//! there is output. Timers are one `deadline` field, swept once a second by the reactor.
//!
//! A subscriber that asked to resume from an event id holds a `Replay` (see `replay.rs`) while
//! its history is sent page by page; it decides what becomes of live events meanwhile.
//!
//! Every byte queued for a connection goes through `queue`, which checks the backlog cap in
//! the `Outbox`: the one place, whatever produced the bytes.

use mio::net::TcpStream;
use smallvec::SmallVec;

use crate::channel::{ChannelId, Subscription};
use crate::event::EventId;
use crate::outq::{Chunk, OutQueue};
use crate::replay::{Live, Replay};
use crate::ws::deflate::WindowBits;
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

/// Why a connection ended: the `reason` label of `herald_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// EOF or the peer's close frame, with nothing of ours pending.
    PeerClosed,
    IoError,
    /// A malformed HTTP request (4xx, then close).
    BadRequest,
    /// A WebSocket protocol violation (close 1002/1007/1009).
    ProtocolError,
    /// Its backlog passed `MAX_QUEUED_BYTES`, or it stopped reading (close 1008).
    SlowConsumer,
    HeadTimeout,
    IdleTimeout,
    PingTimeout,
    Shutdown,
    /// The subscriber's token reached its `exp` (WebSocket: 1008).
    TokenExpired,
    /// A close that went as planned (our last bytes out, the peer answered our close): it
    /// was counted under its cause when it began, not again.
    Done,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::IoError => "io_error",
            CloseReason::BadRequest => "bad_request",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::HeadTimeout => "head_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Done => "done",
        }
    }
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
    pub replay: Option<Box<Replay>>,
    /// The channels this WebSocket receives, with its slot in each channel's subscriber list.
    pub subs: SmallVec<[Subscription; 1]>,
    /// Tells this connection apart from a later one that reuses its slab slot.
    serial: u32,
    /// Reactor clock (seconds) at which the current phase times out.
    deadline: u32,
    /// Changed only by the transitions below (`phase()` reads it).
    phase: Phase,
    /// In the reactor's dirty list: has output to flush this turn.
    dirty: bool,
    /// Registered for WRITABLE because the socket refused part of the output.
    wants_writable: bool,
    /// The socket may hold unread input (reading paused while a publish is in flight, or the
    /// per-turn read budget ran out).
    read_pending: bool,
    /// A `100 Continue` went out for the request whose body is arriving.
    continue_sent: bool,
    /// A heartbeat ping is out and unanswered.
    awaiting_pong: bool,
    /// Input is not read because the backlog is over `Outbox::read_pause_bytes`; the
    /// deadline is then the time the backlog has to make progress.
    read_paused: bool,
    /// Our write half is shut (Closing, after the last bytes left).
    write_shut: bool,
    /// The peer will send nothing more that matters: EOF read, or its WebSocket close frame
    /// arrived. A closing connection then ends as soon as its output is flushed.
    peer_done: bool,
    /// What the connection became, if anything: it stays counted as that until it is freed.
    became: Became,
    /// permessage-deflate was negotiated (a WebSocket), with the window the client lets us
    /// use. Set at the upgrade, never changed after (fan-out counts it per channel). One
    /// byte: no compression state lives in a connection.
    deflate: Option<WindowBits>,
}

impl Conn {
    pub fn new(stream: TcpStream, serial: u32, deadline: u32) -> Conn {
        Conn {
            stream,
            out: OutQueue::default(),
            tail: Vec::new(),
            partial: None,
            replay: None,
            subs: SmallVec::new(),
            serial,
            deadline,
            phase: Phase::ReadingRequest,
            dirty: false,
            wants_writable: false,
            read_pending: false,
            continue_sent: false,
            awaiting_pong: false,
            read_paused: false,
            write_shut: false,
            peer_done: false,
            became: Became::Http,
            deflate: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn became(&self) -> Became {
        self.became
    }

    // ---- transitions (the diagram above) ----------------------------------------------------

    /// ReadingRequest -> WebSocket (or Echo): the upgrade was answered. `deflate` is set
    /// before any subscription (fan-out counts a channel's deflate subscribers).
    pub fn open_websocket(&mut self, echo: bool, deflate: Option<WindowBits>, deadline: u32) {
        debug_assert_eq!(self.phase, Phase::ReadingRequest);
        self.deflate = deflate;
        self.phase = if echo { Phase::Echo } else { Phase::WebSocket };
        self.became = Became::WebSocket;
        self.deadline = deadline;
    }

    /// ReadingRequest -> Sse: the stream's head was queued.
    pub fn open_sse(&mut self, deadline: u32) {
        debug_assert_eq!(self.phase, Phase::ReadingRequest);
        self.phase = Phase::Sse;
        self.became = Became::Sse;
        self.deadline = deadline;
    }

    /// ReadingRequest -> AwaitingBroker: the request's answer waits for Redis; input waits in
    /// the kernel meanwhile.
    pub fn await_broker(&mut self) {
        debug_assert_eq!(self.phase, Phase::ReadingRequest);
        self.phase = Phase::AwaitingBroker;
    }

    /// Whether this is connection `serial` (not a later one in its slab slot) and it still
    /// waits for the broker's answer.
    pub fn awaits_answer(&self, serial: u32) -> bool {
        self.serial == serial && self.phase == Phase::AwaitingBroker
    }

    /// AwaitingBroker -> ReadingRequest: the answer came and is being queued.
    pub fn broker_answered(&mut self) {
        debug_assert_eq!(self.phase, Phase::AwaitingBroker);
        self.phase = Phase::ReadingRequest;
    }

    /// -> Closing: the last bytes are queued; wait for them to go and for the peer to close,
    /// until `deadline`. A half-assembled message is dropped.
    pub fn begin_closing(&mut self, deadline: u32) {
        self.phase = Phase::Closing;
        self.deadline = deadline;
        self.partial = None;
    }

    /// The peer sent EOF (or its close frame) with output still queued for it: Closing, and
    /// done as soon as the queue is flushed.
    pub fn peer_finished(&mut self, deadline: u32) {
        self.begin_closing(deadline);
        self.peer_said_goodbye();
    }

    /// -> Closed (the reactor frees the slot at the end of the turn). False if it already was.
    pub fn close(&mut self) -> bool {
        let was_open = self.phase != Phase::Closed;
        self.phase = Phase::Closed;
        was_open
    }

    /// Tells this connection apart from a later one in the same slot.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The permessage-deflate window the client lets us use, if it negotiated compression.
    pub fn deflate(&self) -> Option<WindowBits> {
        self.deflate
    }

    // ---- heartbeat: any traffic proves the peer alive ---------------------------------------

    /// Bytes came from the peer: no pong is awaited, and the next ping is due at `deadline`.
    pub fn heard_from_peer(&mut self, deadline: u32) {
        self.awaiting_pong = false;
        self.deadline = deadline;
    }

    /// A heartbeat ping was queued: the peer must answer (or send anything) by `deadline`.
    pub fn ping_sent(&mut self, deadline: u32) {
        self.awaiting_pong = true;
        self.deadline = deadline;
    }

    pub fn is_awaiting_pong(&self) -> bool {
        self.awaiting_pong
    }

    // ---- read back-pressure -----------------------------------------------------------------

    /// The backlog is over the read-pause mark: stop reading, and give the backlog until
    /// `give_up_at` to make progress. False if reading was already paused.
    pub fn pause_reading(&mut self, give_up_at: u32) -> bool {
        if self.read_paused {
            return false;
        }
        self.read_paused = true;
        self.read_pending = true;
        self.deadline = self.deadline.min(give_up_at);
        true
    }

    /// The backlog drained enough: read again; the next ping is due at `deadline`.
    pub fn resume_reading(&mut self, deadline: u32) {
        self.read_paused = false;
        self.deadline = deadline;
    }

    /// Closing as a slow consumer: nothing more will be read anyway.
    pub fn stop_pausing(&mut self) {
        self.read_paused = false;
    }

    pub fn is_read_paused(&self) -> bool {
        self.read_paused
    }

    // ---- the end ----------------------------------------------------------------------------

    /// The peer will send nothing more that matters (EOF, or its close frame).
    pub fn peer_said_goodbye(&mut self) {
        self.peer_done = true;
    }

    pub fn is_peer_done(&self) -> bool {
        self.peer_done
    }

    /// Our last bytes are out: half-close, so the peer sees EOF while we linger reading.
    pub fn shut_write(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.write_shut = true;
    }

    pub fn is_write_shut(&self) -> bool {
        self.write_shut
    }

    // ---- HTTP -------------------------------------------------------------------------------

    /// A new request head was parsed: no `100 Continue` went out for it yet.
    pub fn request_started(&mut self) {
        self.continue_sent = false;
    }

    /// A `100 Continue` went out for the request whose body is arriving.
    pub fn continue_sent(&mut self) {
        self.continue_sent = true;
    }

    pub fn has_sent_continue(&self) -> bool {
        self.continue_sent
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self.phase, Phase::WebSocket | Phase::Echo)
    }

    /// A WebSocket or SSE stream that receives events.
    pub fn is_subscriber(&self) -> bool {
        matches!(self.phase, Phase::WebSocket | Phase::Sse)
    }

    /// Queues bytes and puts the connection on the dirty list; never writes. The one place
    /// output is queued, so the one place the backlog cap is checked.
    pub fn queue(&mut self, key: usize, bytes: impl Into<Chunk>, outbox: &mut Outbox) {
        self.out.push(bytes);
        self.mark_dirty(key, outbox);
        outbox.check(key, self.backlog_bytes());
    }

    /// A live event for this subscriber: queued, unless a replay in progress holds it back
    /// (held events count toward the cap too) or a page of history brings it.
    pub fn offer_live(
        &mut self,
        key: usize,
        channel: ChannelId,
        id: Option<EventId>,
        bytes: &Chunk,
        outbox: &mut Outbox,
    ) -> bool {
        // Already over its cap: it is closed at the end of this turn, and a burst of events in
        // the same turn must not go on growing its queue meanwhile.
        let backlog = self.backlog_bytes();
        if backlog > outbox.max_queued_bytes {
            outbox.check(key, backlog);
            return false;
        }
        if let Some(replay) = self.replay.as_mut() {
            match replay.on_live(channel, id, bytes) {
                Live::Send => {
                    if replay.is_done() {
                        self.replay = None;
                    }
                }
                Live::Held => {
                    outbox.check(key, self.backlog_bytes());
                    return true;
                }
                Live::Skip => return false,
            }
        }
        self.queue(key, bytes.clone(), outbox);
        true
    }

    /// Every byte held for this connection's output: its queue (each buffer with its
    /// overhead) and the live events a replay holds back.
    pub fn backlog_bytes(&self) -> usize {
        self.out.memory_bytes() + self.replay.as_ref().map_or(0, |r| r.held_bytes())
    }

    /// Reactor clock (seconds) at which the current phase times out.
    pub fn deadline(&self) -> u32 {
        self.deadline
    }

    /// The current phase times out at `at` (idle, heartbeat, lingering close).
    pub fn set_deadline(&mut self, at: u32) {
        self.deadline = at;
    }

    /// Times out at `at` if that is sooner (a head that must arrive, a close that lingers).
    pub fn shorten_deadline(&mut self, at: u32) {
        self.deadline = self.deadline.min(at);
    }

    /// Whether it is in this turn's dirty list (output to flush).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Taken off the dirty list: it is being flushed now.
    pub fn clear_dirty(&mut self) {
        self.dirty = false;
    }

    /// The socket refused part of the output: returns true if WRITABLE interest must be
    /// asked for now (it was not already).
    pub fn ask_writable(&mut self) -> bool {
        !std::mem::replace(&mut self.wants_writable, true)
    }

    /// The output is all written: returns true if WRITABLE interest must be given up now.
    pub fn drop_writable(&mut self) -> bool {
        std::mem::replace(&mut self.wants_writable, false)
    }

    /// Input may be waiting in the socket, unread (back-pressure, the read budget).
    pub fn leave_input(&mut self) {
        self.read_pending = true;
    }

    /// Whether input may be waiting in the socket, unread.
    pub fn has_input_left(&self) -> bool {
        self.read_pending
    }

    /// Reading goes on: returns whether input was left waiting.
    pub fn take_input_left(&mut self) -> bool {
        std::mem::replace(&mut self.read_pending, false)
    }

    pub fn mark_dirty(&mut self, key: usize, outbox: &mut Outbox) {
        if !self.dirty {
            self.dirty = true;
            outbox.dirty.push(key);
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

/// The connections with output to flush this turn, and those whose backlog passed the cap.
///
/// Every byte queued for a connection goes through `Conn::queue`, which checks the cap here:
/// one place, so no kind of output (events, replays, pongs, notices, echoes, replies, close
/// frames) can bypass it, whoever produced it.
#[derive(Debug)]
pub struct Outbox {
    dirty: Vec<usize>,
    over_cap: Vec<usize>,
    max_queued_bytes: usize,
}

impl Outbox {
    pub fn new(max_queued_bytes: usize) -> Outbox {
        Outbox {
            dirty: Vec::new(),
            over_cap: Vec::new(),
            max_queued_bytes,
        }
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The dirty list, swapped for `spare` (an emptied list kept for its allocation).
    pub fn swap_dirty(&mut self, spare: Vec<usize>) -> Vec<usize> {
        std::mem::replace(&mut self.dirty, spare)
    }

    /// Puts `first` (connections not reached this turn) ahead of those made dirty since.
    pub fn carry_over(&mut self, mut first: Vec<usize>) {
        first.append(&mut self.dirty);
        self.dirty = first;
    }

    /// Connections found over their cap since the last call.
    pub fn take_over_cap(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.over_cap)
    }

    /// Backlog above which a WebSocket's input is not read: what it sends (pings, control
    /// messages, echoes) would only add to output it is not taking.
    pub fn read_pause_bytes(&self) -> usize {
        self.max_queued_bytes / 4
    }

    /// Bytes of history a replay queues at a time; the next page is read once the backlog
    /// is below this again.
    pub fn replay_page_bytes(&self) -> usize {
        (self.max_queued_bytes / 4).max(1)
    }

    fn check(&mut self, key: usize, backlog_bytes: usize) {
        // A flood from one connection hits this once per push: flag it once.
        if backlog_bytes > self.max_queued_bytes && self.over_cap.last() != Some(&key) {
            self.over_cap.push(key);
        }
    }
}

#[cfg(test)]
mod tests {
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
}
