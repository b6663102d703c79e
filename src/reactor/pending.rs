//! What each outstanding Redis command is for. Commands on the command link are answered in
//! the order they were sent, so a FIFO of `Pending` records matches each reply to the request
//! that waits for it (hiredis's callback queue). Plain data: the modules that send a command
//! build its record, `publishing.rs` dispatches the reply back to them.

use std::time::Instant;

use crate::event::EventId;
use crate::replay::NextRead;

/// What an outstanding Redis command is for. Replies arrive in the order commands were
/// sent, so a FIFO of these matches each reply to its purpose.
#[derive(Debug)]
pub(super) enum Pending {
    Publish {
        key: usize,
        serial: u32,
        keep_alive: bool,
        kind: String,
        channel: String,
        since: Instant,
        /// The event's size, counted against `MAX_PENDING_BYTES` until Redis answers.
        bytes: usize,
        /// Part of a group answered together (`"channels"`, a batch); `None`: answered alone.
        slot: Option<Slot>,
    },
    HttpHistory(HistoryRequest),
    Replay(PageRead),
    /// The events a channel missed while this replica's Redis subscription was down.
    CatchUp {
        channel: String,
        since: EventId,
    },
    /// Subscriber counts written to or read from Redis (`reactor/occupancy.rs`).
    Occupancy(OccupancyWork),
}

/// What an occupancy script call is for.
#[derive(Debug)]
pub(super) enum OccupancyWork {
    /// This replica's counts written (and its expiry renewed).
    Flush,
    /// This replica's counts taken out of Redis (shutting down).
    Leave,
    /// Counts elsewhere of channels watched here: a round of the reactor's clock, or the
    /// first read of a newly watched channel (asked for by a client).
    Watched {
        channels: Vec<Box<str>>,
        round: bool,
    },
    /// `GET /channels/<channel>`.
    Count(HttpWaiter, String),
    /// `GET /channels`: the page, for a reader who may see `grant`'s channels.
    List(HttpWaiter, Option<crate::auth::Grant>),
}

impl OccupancyWork {
    /// Asked for by a client (counted against `MAX_PENDING_READS`), not by the reactor's
    /// own clock (bounded by it: one flush round and one read out at a time).
    pub(super) fn is_request(&self) -> bool {
        matches!(
            self,
            OccupancyWork::Count(..)
                | OccupancyWork::List(..)
                | OccupancyWork::Watched { round: false, .. }
        )
    }
}

/// An HTTP request waiting for Redis, to answer when it replies.
#[derive(Debug, Clone, Copy)]
pub(super) struct HttpWaiter {
    pub(super) key: usize,
    pub(super) serial: u32,
    pub(super) keep_alive: bool,
    pub(super) head_only: bool,
}

/// Which member of which group (a slab key of the reactor's publish groups) a publish is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) group: usize,
    pub(super) index: usize,
}

/// A `GET /events/<channel>` being answered: at once (embedded), or when Redis replies.
#[derive(Debug)]
pub(super) struct HistoryRequest {
    pub(super) key: usize,
    pub(super) serial: u32,
    pub(super) keep_alive: bool,
    pub(super) head_only: bool,
    pub(super) channel: String,
    pub(super) since: Option<EventId>,
    pub(super) limit: usize,
}

/// A page read that is out at Redis, for one subscriber.
#[derive(Debug, Clone)]
pub(super) struct PageRead {
    pub(super) key: usize,
    pub(super) serial: u32,
    pub(super) read: NextRead,
}

impl PageRead {
    pub fn after(&self) -> EventId {
        self.read.after
    }

    pub fn key(&self) -> usize {
        self.key
    }
}
