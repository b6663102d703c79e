//! The records of what waits on Redis, plain data counted for the caps. Commands on the
//! command link are answered in the order they were sent, so a FIFO of `Pending` records
//! (`PendingQueue`, counted by kind) matches each reply to the request that waits for it
//! (hiredis's callback queue). Publishes parked until their channel's subscription is
//! confirmed wait in `ParkedPublishes`, replays that cannot read yet in `AwaitingRedis`. The
//! counts are what `MAX_PENDING_PUBLISHES`, `MAX_PENDING_READS` and `MAX_PENDING_BYTES` cap;
//! `REDIS_TIMEOUT_MS` bounds how long each waits (`Coordinator::expire`).

use std::collections::VecDeque;
use std::time::Instant;

use crate::catch_up::ReadToken;
use crate::event::{Event, EventId};
use crate::replay::NextRead;

/// What an outstanding Redis command is for. Replies arrive in the order commands were
/// sent, so a FIFO of these matches each reply to its purpose.
#[derive(Debug)]
pub enum Pending {
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
        /// Which read it is: only the one its catch-up waits for may end it.
        read: ReadToken,
    },
    /// Subscriber counts written to or read from Redis (`reactor/occupancy.rs`).
    Occupancy(OccupancyWork),
}

/// What an occupancy script call is for.
#[derive(Debug)]
pub enum OccupancyWork {
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
    pub fn is_request(&self) -> bool {
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
pub struct HttpWaiter {
    pub key: usize,
    pub serial: u32,
    pub keep_alive: bool,
    pub head_only: bool,
}

/// Which member of which group (a slab key of the reactor's publish groups) a publish is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub group: usize,
    pub index: usize,
}

/// A `GET /events/<channel>` being answered: at once (embedded), or when Redis replies.
#[derive(Debug)]
pub struct HistoryRequest {
    pub key: usize,
    pub serial: u32,
    pub keep_alive: bool,
    pub head_only: bool,
    pub channel: String,
    pub since: Option<EventId>,
    pub limit: usize,
}

/// A page read that is out at Redis, for one subscriber.
#[derive(Debug, Clone)]
pub struct PageRead {
    pub key: usize,
    pub serial: u32,
    pub read: NextRead,
}

impl PageRead {
    pub fn after(&self) -> EventId {
        self.read.after
    }

    pub fn key(&self) -> usize {
        self.key
    }
}

/// Commands sent to Redis and not yet answered, oldest first, counted by kind.
#[derive(Debug, Default)]
pub struct PendingQueue {
    queue: VecDeque<Pending>,
    publishes: usize,
    /// Bytes of the events of `publishes` (their commands sit in the link's output buffer,
    /// the kernel's, or Redis's).
    publish_bytes: usize,
    reads: usize,
}

impl PendingQueue {
    pub fn push_back(&mut self, pending: Pending) {
        match &pending {
            Pending::Publish { bytes, .. } => {
                self.publishes += 1;
                self.publish_bytes += bytes;
            }
            Pending::HttpHistory { .. } | Pending::Replay(_) | Pending::CatchUp { .. } => {
                self.reads += 1
            }
            Pending::Occupancy(work) => self.reads += usize::from(work.is_request()),
        }
        self.queue.push_back(pending);
    }

    pub fn pop_front(&mut self) -> Option<Pending> {
        let pending = self.queue.pop_front()?;
        match &pending {
            Pending::Publish { bytes, .. } => {
                self.publishes -= 1;
                self.publish_bytes -= bytes;
            }
            Pending::HttpHistory { .. } | Pending::Replay(_) | Pending::CatchUp { .. } => {
                self.reads -= 1
            }
            Pending::Occupancy(work) => self.reads -= usize::from(work.is_request()),
        }
        Some(pending)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn publishes(&self) -> usize {
        self.publishes
    }

    pub fn publish_bytes(&self) -> usize {
        self.publish_bytes
    }

    pub fn reads(&self) -> usize {
        self.reads
    }
}

/// A subscriber whose next page waits for Redis (link up, subscription confirmed).
#[derive(Debug)]
pub struct WaitingReplay {
    pub key: usize,
    pub serial: u32,
    pub channel: Box<str>,
}

/// Replays waiting for Redis before they can read their history, oldest first.
#[derive(Debug, Default)]
pub struct AwaitingRedis {
    entries: VecDeque<(Instant, WaitingReplay)>,
}

impl AwaitingRedis {
    pub fn push(&mut self, waiting: WaitingReplay) {
        self.entries.push_back((Instant::now(), waiting));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &WaitingReplay> {
        self.entries.iter().map(|(_, replay)| replay)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&WaitingReplay) -> bool) {
        self.entries.retain(|(_, replay)| keep(replay));
    }

    /// Takes out those `ready` says can go on, keeping the others in order.
    pub fn take_ready(
        &mut self,
        mut ready: impl FnMut(&WaitingReplay) -> bool,
    ) -> Vec<WaitingReplay> {
        let (taken, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(_, waiting)| ready(waiting));
        self.entries = kept;
        taken.into_iter().map(|(_, waiting)| waiting).collect()
    }

    /// When the oldest began to wait.
    pub fn oldest(&self) -> Option<Instant> {
        self.entries.front().map(|(since, _)| *since)
    }

    /// Takes out those that began to wait at or before `cutoff`.
    pub fn take_waiting_since(&mut self, cutoff: Instant) -> Vec<WaitingReplay> {
        let mut taken = Vec::new();
        while let Some((since, _)) = self.entries.front()
            && *since <= cutoff
        {
            let (_, replay) = self.entries.pop_front().expect("bug: front was just seen");
            taken.push(replay);
        }
        taken
    }
}

/// A publish held until this replica's subscription to its channel is confirmed.
#[derive(Debug)]
pub struct Parked {
    pub key: usize,
    pub serial: u32,
    pub keep_alive: bool,
    pub event: Event,
    pub idempotency_key: Option<String>,
    pub since: Instant,
    pub slot: Option<Slot>,
}

impl Parked {
    /// Its record once sent to Redis (it keeps its age: the wait began when it was parked).
    pub fn sent(self) -> Pending {
        Pending::Publish {
            key: self.key,
            serial: self.serial,
            keep_alive: self.keep_alive,
            bytes: event_bytes(&self.event),
            kind: self.event.kind,
            channel: self.event.channel,
            since: self.since,
            slot: self.slot,
        }
    }
}

/// Publishes held for a subscription, oldest first, with the bytes of their events.
#[derive(Debug, Default)]
pub struct ParkedPublishes {
    list: Vec<Parked>,
    bytes: usize,
}

impl ParkedPublishes {
    pub fn push(&mut self, parked: Parked) {
        self.bytes += event_bytes(&parked.event);
        self.list.push(parked);
    }

    pub fn take_all(&mut self) -> Vec<Parked> {
        self.bytes = 0;
        std::mem::take(&mut self.list)
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn oldest(&self) -> Option<Instant> {
        self.list.first().map(|p| p.since)
    }
}

/// About what an event weighs while it waits: its JSON is its fields and some punctuation.
pub fn event_bytes(event: &Event) -> usize {
    event.kind.len() + event.message.len() + event.channel.len() + 64
}
