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
