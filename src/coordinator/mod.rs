//! Redis coordination, decided without sockets: what waits on Redis, what each reply means,
//! and what is answered without Redis when it does not come in time.
//!
//! Four kinds of work wait on Redis, and this module owns them all:
//! - commands sent and not yet answered: a FIFO of `Pending` records, since the command
//!   link answers in order (hiredis's callback queue). `ask` sends a command and records
//!   its purpose in one step, so the two cannot drift apart;
//! - publishes parked until their channel's subscription is confirmed (`park`), so that this
//!   replica's own clients get them live;
//! - replays waiting for the link before their first read (`await_link`);
//! - channels catching up after their subscription was lost (`catch_up.rs` decides the
//!   seam; here they are begun, read and finished).
//!
//! Each is capped in count (`MAX_PENDING_PUBLISHES`, `MAX_PENDING_READS`: `admit_publish`,
//! `admit_read`), in bytes (`MAX_PENDING_BYTES`: events of publishes not yet answered or
//! parked, live events held by catch-ups) and in time (`REDIS_TIMEOUT_MS`: the link fails
//! what was sent and not answered; `expire` hands back what was never sent).
//!
//! The reactor owns the sockets and the connections. It asks (`admit_*`), records
//! (`ask`, `sent`, `park`, `await_link`), and applies what comes back: an `Answer` per
//! reply, `Expired` work, a `CaughtUp` channel. Nothing here touches a socket, a connection
//! or a subscriber; the links are handed in only to send a command.

pub mod outcome;
pub mod pending;

use std::fmt;
use std::time::{Duration, Instant};

use crate::broker::{self, Read, RedisBroker};
use crate::catch_up::{CatchUps, Live, LiveMessage};
use crate::config::Limits;
use crate::event::{Event, EventId};
use crate::history::{Page, PageSize, StoredEvent, TooOld};
use crate::metrics::limit;
use crate::resp::cmd;
use crate::resp::link::LinkFailure;
use outcome::Outcome;
use pending::{
    AwaitingRedis, HistoryRequest, OccupancyWork, PageRead, Parked, ParkedPublishes, Pending,
    PendingQueue, Slot, WaitingReplay, event_bytes,
};

/// Why work cannot wait on Redis now: a cap is reached. The client gets a 503 (a reset
/// notice where a subscriber waits) rather than a queue without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `MAX_PENDING_PUBLISHES` publishes wait (sent or parked).
    Publishes(usize),
    /// `MAX_PENDING_BYTES` of events wait (publishes, catch-ups' held events).
    Bytes(usize),
    /// `MAX_PENDING_READS` history reads wait (sent, or waiting for the link).
    Reads(usize),
}

impl Refusal {
    /// The `herald_limit_hits_total` label of the cap.
    pub fn limit(self) -> &'static str {
        match self {
            Refusal::Publishes(_) => limit::PENDING_PUBLISHES,
            Refusal::Bytes(_) => limit::PENDING_BYTES,
            Refusal::Reads(_) => limit::PENDING_READS,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Publishes(max) => write!(
                f,
                "too many publishes waiting on Redis (MAX_PENDING_PUBLISHES {max})"
            ),
            Refusal::Bytes(max) => {
                write!(
                    f,
                    "too many bytes waiting on Redis (MAX_PENDING_BYTES {max})"
                )
            }
            Refusal::Reads(max) => write!(
                f,
                "too many history reads waiting on Redis (MAX_PENDING_READS {max})"
            ),
        }
    }
}

/// What a reply means, for the reactor to apply.
#[derive(Debug)]
pub enum Answer {
    /// A publish's verdict: published (or a duplicate), refused by Redis, or unknown (the link
    /// failed after it was sent). `warning`: what to log against its client, if anything.
    Publish {
        key: usize,
        serial: u32,
        keep_alive: bool,
        slot: Option<Slot>,
        event: Event,
        outcome: Outcome,
        waited: Duration,
        warning: Option<(&'static str, String)>,
    },
    /// `GET /events/<channel>` read: the page, or why not (`timed_out`: a 504).
    History {
        request: HistoryRequest,
        result: Result<Result<Page, TooOld>, ReadFailure>,
    },
    /// A resuming subscriber's page.
    ReplayPage {
        page_read: PageRead,
        result: Result<Result<Page, TooOld>, String>,
    },
    /// Occupancy's own commands (`occupancy.rs` decides what the counts mean).
    Occupancy {
        work: OccupancyWork,
        reply: Result<cmd::Reply, LinkFailure>,
    },
    /// A catch-up's read came back: finish it (`finish_catch_up`).
    CatchUpRead {
        channel: String,
        result: Result<Result<Page, TooOld>, String>,
    },
    /// A catch-up's read was lost with the link (not refused by Redis), or is stale (sent
    /// before the subscription was lost again, or for a catch-up given up since): nothing
    /// to finish; what is due goes out once the links are back (`read_catch_ups`).
    CatchUpLost,
}

impl Answer {
    /// The newest id Redis itself returned in this reply (a publish's, a page's last): ids up
    /// to it can be trusted when they arrive live (`RedisBroker::confirmed`).
    pub fn confirmed_id(&self) -> Option<EventId> {
        let page_last = |page: &Page| page.events.last().map(|e| e.id);
        match self {
            Answer::Publish {
                outcome: Outcome::Published { id, .. },
                ..
            } => Some(*id),
            Answer::History {
                result: Ok(Ok(page)),
                ..
            }
            | Answer::ReplayPage {
                result: Ok(Ok(page)),
                ..
            }
            | Answer::CatchUpRead {
                result: Ok(Ok(page)),
                ..
            } => page_last(page),
            _ => None,
        }
    }
}

/// A history read that Redis did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFailure {
    pub timed_out: bool,
    pub reason: String,
}

/// Work that waited on Redis for `REDIS_TIMEOUT_MS` without being sent.
#[derive(Debug, Default)]
pub struct Expired {
    /// Parked publishes are due a retry (the too old among them a 503: `take_parked`).
    pub parked: bool,
    /// Replays that never got to read: their subscribers are told to reset.
    pub replays: Vec<WaitingReplay>,
    /// Catch-ups that held live events too long: given up (their subscribers reset).
    pub catch_ups: Vec<String>,
}

/// A finished catch-up, for the reactor to deliver: the missed events (their seam is set),
/// then whether subscribers must reset (and from where), then the live messages held
/// meanwhile, each to be offered again through `on_live` (the seam drops the late copies).
#[derive(Debug)]
pub struct CaughtUp {
    pub since: EventId,
    pub missed: Vec<StoredEvent>,
    pub reset: Option<&'static str>,
    /// Why the read failed, if it did (logged once per interval).
    pub failure: Option<String>,
    pub held: Vec<LiveMessage>,
}

/// Why a catch-up's read did not go out.
#[derive(Debug)]
pub enum Unread {
    /// `MAX_PENDING_READS` reached.
    Refused(Refusal),
    /// The link went down meanwhile.
    Unavailable(String),
}

impl fmt::Display for Unread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unread::Refused(refusal) => refusal.fmt(f),
            Unread::Unavailable(why) => f.write_str(why),
        }
    }
}

/// What one retried parked publish becomes.
#[derive(Debug)]
pub enum Retry {
    /// Publish it again (its subscription may be confirmed now).
    Again(Parked),
    /// Answer it 503 without Redis: `why`; `timed_out` counts against `REDIS_TIMEOUT_MS`.
    GiveUp {
        parked: Parked,
        why: String,
        timed_out: bool,
    },
}

/// The caps of what waits on Redis (from `Limits`).
#[derive(Debug, Clone, Copy)]
struct Caps {
    publishes: usize,
    bytes: usize,
    reads: usize,
    timeout: Duration,
}

/// What waits on Redis in one reactor (each reactor is a replica with its own links).
#[derive(Debug)]
pub struct Coordinator {
    pending: PendingQueue,
    parked: ParkedPublishes,
    awaiting: AwaitingRedis,
    catch_ups: CatchUps,
    caps: Caps,
}

impl Coordinator {
    pub fn new(limits: &Limits) -> Coordinator {
        Coordinator {
            pending: PendingQueue::default(),
            parked: ParkedPublishes::default(),
            awaiting: AwaitingRedis::default(),
            catch_ups: CatchUps::default(),
            caps: Caps {
                publishes: limits.max_pending_publishes,
                bytes: limits.max_pending_bytes,
                reads: limits.max_pending_reads,
                timeout: limits.redis_timeout,
            },
        }
    }

    // ---- admission ---------------------------------------------------------------------

    /// Whether `event` may wait on Redis: under `MAX_PENDING_PUBLISHES` (sent and parked)
    /// and `MAX_PENDING_BYTES` (with what catch-ups hold).
    pub fn admit_publish(&self, event: &Event) -> Result<(), Refusal> {
        let waiting = self.pending.publishes() + self.parked.len();
        let waiting_bytes =
            self.pending.publish_bytes() + self.parked.bytes() + self.catch_ups.held_bytes();
        if waiting >= self.caps.publishes {
            Err(Refusal::Publishes(self.caps.publishes))
        } else if waiting_bytes + event_bytes(event) > self.caps.bytes {
            Err(Refusal::Bytes(self.caps.bytes))
        } else {
            Ok(())
        }
    }

    /// Whether one more history read may wait on Redis (`MAX_PENDING_READS`, sent or
    /// waiting for the link).
    pub fn admit_read(&self) -> Result<(), Refusal> {
        if self.pending.reads() + self.awaiting.len() < self.caps.reads {
            Ok(())
        } else {
            Err(Refusal::Reads(self.caps.reads))
        }
    }

    /// Whether local clients of `channel` (`joined_here`: it has some) would get a publish
    /// only live, so the channel's subscription must be confirmed before it goes out. Those
    /// resuming get it from the history (a replay, or the channel's catch-up).
    pub fn needs_live_subscription(&self, channel: &str, joined_here: bool) -> bool {
        joined_here
            && !self.catch_ups.is_active(channel)
            && !self.awaiting.iter().any(|r| &*r.channel == channel)
    }

    // ---- recording ---------------------------------------------------------------------

    /// A command already sent (by `Broker::publish` or `read_history`) waits for its reply.
    pub fn sent(&mut self, pending: Pending) {
        self.pending.push_back(pending);
    }

    /// Sends `command` and records what its reply is for, in one step.
    pub fn ask(&mut self, redis: &mut RedisBroker, command: &[Vec<u8>], purpose: Pending) {
        redis.command(command);
        self.pending.push_back(purpose);
    }

    /// A publish waits for its channel's subscription.
    pub fn park(&mut self, parked: Parked) {
        self.parked.push(parked);
    }

    /// The parked publishes, each to publish again, or to give up: all of them with
    /// `give_up` (the subscriber link went down), those whose connection is gone (`alive`
    /// says no; a group still needs their outcome), those parked `REDIS_TIMEOUT_MS`.
    pub fn take_parked(
        &mut self,
        give_up: Option<&str>,
        alive: impl Fn(&Parked) -> bool,
        now: Instant,
    ) -> Vec<Retry> {
        let timeout = self.caps.timeout;
        self.parked
            .take_all()
            .into_iter()
            .map(|parked| {
                let (why, timed_out) = if let Some(why) = give_up {
                    (why.to_string(), false)
                } else if !alive(&parked) {
                    ("the connection is gone".to_string(), false)
                } else if now.saturating_duration_since(parked.since) >= timeout {
                    let why =
                        "Redis unavailable: the channel's subscription was not confirmed in time";
                    (why.to_string(), true)
                } else {
                    return Retry::Again(parked);
                };
                Retry::GiveUp {
                    parked,
                    why,
                    timed_out,
                }
            })
            .collect()
    }

    /// A replay waits for the link (up, the channel's subscription confirmed) to read.
    pub fn await_link(&mut self, waiting: WaitingReplay) {
        self.awaiting.push(waiting);
    }

    /// The replays that may read now (`can_replay`), in the order they began to wait.
    pub fn replays_ready(&mut self, can_replay: impl Fn(&str) -> bool) -> Vec<WaitingReplay> {
        self.awaiting.take_ready(|w| can_replay(&w.channel))
    }

    /// Connection `key` is gone: its waiting replays with it. (Its commands in flight stay:
    /// their replies must still be matched, then find the connection gone.)
    pub fn forget_connection(&mut self, key: usize) {
        self.awaiting.retain(|waiting| waiting.key != key);
    }

    // ---- replies -------------------------------------------------------------------------

    /// What the reply to the oldest outstanding command means. `None`: no command was
    /// waiting for it (a bug; logged by the caller).
    pub fn on_reply(&mut self, reply: Result<cmd::Reply, LinkFailure>) -> Option<Answer> {
        let answer = match self.pending.pop_front()? {
            Pending::Publish {
                key,
                serial,
                keep_alive,
                kind,
                channel,
                since,
                slot,
                bytes: _,
            } => {
                let (outcome, warning) = publish_verdict(reply);
                Answer::Publish {
                    key,
                    serial,
                    keep_alive,
                    slot,
                    event: Event {
                        kind,
                        message: String::new(),
                        channel,
                    },
                    outcome,
                    waited: since.elapsed(),
                    warning,
                }
            }
            Pending::HttpHistory(request) => {
                let result = match reply {
                    Err(failure) => Err(ReadFailure {
                        timed_out: failure.timed_out,
                        reason: failure.reason,
                    }),
                    Ok(reply) => {
                        broker::parse_history(reply, request.since).map_err(|reason| ReadFailure {
                            timed_out: false,
                            reason,
                        })
                    }
                };
                Answer::History { request, result }
            }
            Pending::Replay(page_read) => {
                let since = Some(page_read.after());
                let result = reply
                    .map_err(|failure| failure.reason)
                    .and_then(|r| broker::parse_history(r, since));
                Answer::ReplayPage { page_read, result }
            }
            Pending::Occupancy(work) => Answer::Occupancy { work, reply },
            // Stale: its page may miss what a lost subscription never brought, so it must not
            // end the catch-up (`catch_up.rs`); the read that may is due or out already.
            Pending::CatchUp { channel, read, .. } if !self.catch_ups.expects(&channel, read) => {
                Answer::CatchUpLost
            }
            Pending::CatchUp { channel, read, .. } if reply.is_err() => {
                // The read was lost with the link, not refused by Redis: read again once the
                // link is back. What the catch-up holds meanwhile is still bounded by
                // MAX_PENDING_BYTES and REDIS_TIMEOUT_MS (`on_live`, `expire`).
                self.catch_ups.read_lost(&channel, read);
                Answer::CatchUpLost
            }
            Pending::CatchUp { channel, since, .. } => {
                let result = reply
                    .map_err(|failure| failure.reason)
                    .and_then(|r| broker::parse_history(r, Some(since)));
                Answer::CatchUpRead { channel, result }
            }
        };
        Some(answer)
    }

    // ---- catch-ups ---------------------------------------------------------------------

    /// The subscription of these channels was lost; each had delivered up to its id.
    pub fn begin_catch_ups(&mut self, lost: impl IntoIterator<Item = (String, EventId)>) {
        for (channel, since) in lost {
            self.catch_ups.begin(channel, since);
        }
    }

    /// Sends the reads of the catch-ups that may read now (`redis.can_replay`), a page of
    /// `events` each. Returns those that could not go out, to end with `finish_catch_up`.
    pub fn read_catch_ups(
        &mut self,
        redis: &mut RedisBroker,
        events: usize,
    ) -> Vec<(String, Unread)> {
        let due = self
            .catch_ups
            .reads_due(|channel| redis.can_replay(channel));
        let mut unread = Vec::new();
        for (channel, since) in due {
            if let Err(refusal) = self.admit_read() {
                unread.push((channel, Unread::Refused(refusal)));
                continue;
            }
            let read = self.catch_ups.read_sent(&channel);
            match redis.read_history(&channel, Some(since), PageSize::events(events)) {
                Read::Pending => self.pending.push_back(Pending::CatchUp {
                    channel,
                    since,
                    read,
                }),
                Read::Unavailable(why) => unread.push((channel, Unread::Unavailable(why))),
                Read::Done(_) => unreachable!("bug: Redis answered a read before it was sent"),
            }
        }
        unread
    }

    /// A live message for `channel`: deliver, hold (its catch-up reads), drop (a late copy),
    /// or give the catch-up up (holding it would pass `MAX_PENDING_BYTES`).
    pub fn on_live(&mut self, channel: &str, message: LiveMessage) -> Live {
        self.catch_ups.on_live(channel, message, self.caps.bytes)
    }

    /// Whether `channel` is catching up.
    pub fn is_catching_up(&self, channel: &str) -> bool {
        self.catch_ups.is_active(channel)
    }

    /// Ends `channel`'s catch-up with its read's `result` (or the reason it has none):
    /// what to deliver, whether to reset, what was held. `still_joined`: the channel has
    /// local subscribers (only then is a seam kept). `None` if it was not catching up.
    pub fn finish_catch_up(
        &mut self,
        channel: &str,
        result: Result<Result<Page, TooOld>, String>,
        still_joined: bool,
    ) -> Option<CaughtUp> {
        let finished = self.catch_ups.finish(channel)?;
        let since = finished.since;
        let (missed, reset, failure) = match result {
            Ok(Ok(page)) => {
                let reset = page
                    .more
                    .then_some("more was missed than one history read holds");
                (page.events, reset, None)
            }
            Ok(Err(TooOld { reason })) => (Vec::new(), Some(reason), None),
            Err(why) => (Vec::new(), Some("history unavailable"), Some(why)),
        };
        let seam = missed.iter().map(|e| e.id).fold(since, EventId::max);
        if seam > since && still_joined {
            self.catch_ups.set_seam(channel, seam);
        }
        Some(CaughtUp {
            since,
            missed,
            reset,
            failure,
            held: finished.held,
        })
    }

    /// `channel` lost its last local subscriber: its seam protects no one any more.
    pub fn forget_channel(&mut self, channel: &str) {
        self.catch_ups.forget_seam(channel);
    }

    // ---- time ------------------------------------------------------------------------------

    /// The earliest moment some work waiting on Redis, but not sent to it, must be answered
    /// without it (what was sent is the link's to time out).
    pub fn deadline(&self) -> Option<Instant> {
        let oldest = [
            self.parked.oldest(),
            self.awaiting.oldest(),
            self.catch_ups.oldest_holding(),
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(oldest + self.caps.timeout)
    }

    /// What has waited `REDIS_TIMEOUT_MS` by `now` without being sent.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let Some(cutoff) = now.checked_sub(self.caps.timeout) else {
            return Expired::default();
        };
        Expired {
            parked: self.parked.oldest().is_some_and(|t| t <= cutoff),
            replays: self.awaiting.take_waiting_since(cutoff),
            catch_ups: self.catch_ups.holding_since(cutoff),
        }
    }

    /// Commands sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }
}

/// A publish's reply: its outcome, and what to log against its client.
fn publish_verdict(
    reply: Result<cmd::Reply, LinkFailure>,
) -> (Outcome, Option<(&'static str, String)>) {
    match reply {
        Ok(reply) => match broker::parse_published(reply) {
            Ok(published) => (
                Outcome::Published {
                    id: published.id,
                    receivers: published.receivers,
                    duplicate: published.duplicate,
                },
                None,
            ),
            Err(why) => {
                let warning = ("publish failed", format!("publish failed: {why}"));
                (Outcome::failed(503, why), Some(warning))
            }
        },
        // The link failed after the publish was sent: Redis may or may not have run it. A
        // retry may deliver the event twice, unless it carries an idempotency key (README:
        // "Publishing when Redis stalls").
        Err(failure) => {
            let (status, what) = if failure.timed_out {
                (504, "publish timed out")
            } else {
                (503, "publish failed")
            };
            let warning = (what, format!("{what}, outcome unknown: {}", failure.reason));
            let error = if failure.timed_out {
                "redis timeout".to_string()
            } else {
                failure.reason
            };
            let outcome = Outcome::Failed {
                status,
                error,
                unknown: true,
            };
            (outcome, Some(warning))
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use redis_protocol::resp2::types::BytesFrame as F;

    use super::*;
    use crate::replay::NextRead;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    fn coordinator(publishes: usize, bytes: usize, reads: usize) -> Coordinator {
        Coordinator::new(&Limits {
            max_pending_publishes: publishes,
            max_pending_bytes: bytes,
            max_pending_reads: reads,
            redis_timeout: Duration::from_secs(5),
            ..Limits::default()
        })
    }

    fn event(channel: &str, message: &str) -> Event {
        Event {
            kind: "t".into(),
            message: message.into(),
            channel: channel.into(),
        }
    }

    fn publish(key: usize, event: &Event) -> Pending {
        Pending::Publish {
            key,
            serial: 1,
            keep_alive: true,
            kind: event.kind.clone(),
            channel: event.channel.clone(),
            since: Instant::now(),
            bytes: event_bytes(event),
            slot: None,
        }
    }

    fn parked(key: usize, since: Instant) -> Parked {
        Parked {
            key,
            serial: 1,
            keep_alive: true,
            event: event("news", "x"),
            idempotency_key: None,
            since,
            slot: None,
        }
    }

    fn published_reply(id: &str, receivers: i64) -> cmd::Reply {
        cmd::Reply::Other(F::Array(vec![
            F::BulkString(Bytes::copy_from_slice(id.as_bytes())),
            F::Integer(receivers),
        ]))
    }

    fn history_reply(first: &str, entries: &[(&str, &str)], more: bool) -> cmd::Reply {
        let entry = |(id, json): &(&str, &str)| {
            F::Array(vec![
                F::BulkString(Bytes::copy_from_slice(id.as_bytes())),
                F::Array(vec![
                    F::BulkString(Bytes::from_static(b"e")),
                    F::BulkString(Bytes::copy_from_slice(json.as_bytes())),
                ]),
            ])
        };
        cmd::Reply::Other(F::Array(vec![
            F::BulkString(Bytes::copy_from_slice(first.as_bytes())),
            F::Array(entries.iter().map(entry).collect()),
            F::Integer(i64::from(more)),
        ]))
    }

    fn lost(timed_out: bool) -> LinkFailure {
        LinkFailure {
            timed_out,
            reason: "link reset".into(),
        }
    }

    #[test]
    fn should_refuse_publishes_past_the_count_and_the_bytes_sent_or_parked() {
        let small = event("news", "x");
        let mut c = coordinator(2, 10_000, 10);
        c.sent(publish(1, &small));
        assert_eq!(c.admit_publish(&small), Ok(()));
        c.park(parked(2, Instant::now()));
        assert_eq!(c.admit_publish(&small), Err(Refusal::Publishes(2)));

        let mut c = coordinator(100, 3 * event_bytes(&small), 10);
        c.sent(publish(1, &small));
        c.park(parked(2, Instant::now()));
        assert_eq!(c.admit_publish(&small), Ok(()));
        let large = event("news", &"x".repeat(2));
        assert_eq!(
            c.admit_publish(&large),
            Err(Refusal::Bytes(3 * event_bytes(&small)))
        );
        assert_eq!(Refusal::Bytes(1).limit(), limit::PENDING_BYTES);
    }

    #[test]
    fn should_count_reads_sent_and_replays_waiting_for_the_link() {
        let mut c = coordinator(10, 10_000, 2);
        let read = c.catch_ups.read_sent("a");
        c.sent(Pending::CatchUp {
            channel: "a".into(),
            since: id(1),
            read,
        });
        assert_eq!(c.admit_read(), Ok(()));
        c.await_link(WaitingReplay {
            key: 3,
            serial: 1,
            channel: "b".into(),
        });
        assert_eq!(c.admit_read(), Err(Refusal::Reads(2)));
        c.forget_connection(3);
        assert_eq!(c.admit_read(), Ok(()));
    }

    #[test]
    fn should_match_replies_to_commands_in_the_order_they_were_sent() {
        let mut c = coordinator(10, 10_000, 10);
        c.sent(publish(7, &event("news", "hello")));
        let read = NextRead {
            channel: 0,
            after: id(5),
        };
        c.sent(Pending::Replay(PageRead {
            key: 8,
            serial: 2,
            read,
        }));
        let first = c
            .on_reply(Ok(published_reply("9-0", 3)))
            .expect("a publish waits");
        assert_eq!(first.confirmed_id(), Some(id(9)));
        let Answer::Publish {
            key,
            outcome,
            event,
            warning,
            ..
        } = first
        else {
            panic!("the first reply is the publish's: {first:?}");
        };
        assert_eq!((key, event.channel.as_str(), warning), (7, "news", None));
        assert_eq!(
            outcome,
            Outcome::Published {
                id: id(9),
                receivers: 3,
                duplicate: false
            }
        );
        let second = c.on_reply(Ok(history_reply("5-0", &[("6-0", "{}")], false)));
        let Some(Answer::ReplayPage { page_read, result }) = second else {
            panic!("the second reply is the replay's: {second:?}");
        };
        assert_eq!(page_read.key(), 8);
        let page = result.expect("read").expect("not too old");
        assert_eq!(
            page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
            [id(6)]
        );
        assert!(c.on_reply(Ok(published_reply("10-0", 1))).is_none());
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn should_never_call_a_publish_lost_with_the_link_a_success() {
        let mut c = coordinator(10, 10_000, 10);
        c.sent(publish(1, &event("news", "a")));
        c.sent(publish(2, &event("news", "b")));
        for (timed_out, status) in [(true, 504), (false, 503)] {
            let Some(Answer::Publish {
                outcome, warning, ..
            }) = c.on_reply(Err(lost(timed_out)))
            else {
                panic!("a publish waits");
            };
            let Outcome::Failed {
                status: got,
                unknown,
                ..
            } = outcome
            else {
                panic!("a lost publish is not published: {outcome:?}");
            };
            assert_eq!((got, unknown), (status, true));
            assert!(warning.is_some_and(|(_, text)| text.contains("outcome unknown")));
        }
    }

    #[test]
    fn should_retry_parked_publishes_unless_given_up_gone_or_too_old() {
        let now = Instant::now();
        let old = now - Duration::from_secs(6);
        let mut c = coordinator(10, 10_000, 10);
        for (key, since) in [(1, now), (2, now), (3, old)] {
            c.park(parked(key, since));
        }
        let retries = c.take_parked(None, |p| p.key != 2, now);
        let kinds: Vec<_> = retries
            .iter()
            .map(|r| match r {
                Retry::Again(p) => (p.key, "again", false),
                Retry::GiveUp {
                    parked, timed_out, ..
                } => (parked.key, "give up", *timed_out),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (1, "again", false),
                (2, "give up", false),
                (3, "give up", true)
            ]
        );
        c.park(parked(4, now));
        let retries = c.take_parked(Some("link down"), |_| true, now);
        assert!(matches!(&retries[..], [Retry::GiveUp { why, .. }] if why == "link down"));
        assert_eq!(c.admit_publish(&event("news", "x")), Ok(()));
    }

    #[test]
    fn should_hand_back_what_waited_too_long_without_being_sent() {
        let mut c = coordinator(10, 10_000, 10);
        let start = Instant::now();
        c.await_link(WaitingReplay {
            key: 1,
            serial: 1,
            channel: "news".into(),
        });
        c.park(parked(2, start));
        let deadline = c.deadline().expect("work waits");
        assert!(deadline >= start + Duration::from_secs(5));
        let early = c.expire(start);
        assert!(!early.parked && early.replays.is_empty());
        let late = c.expire(deadline + Duration::from_millis(1));
        assert!(late.parked);
        assert_eq!(late.replays.len(), 1);
        assert_eq!(c.admit_read(), Ok(()));
    }

    #[test]
    fn should_finish_a_catch_up_with_its_page_its_seam_and_what_it_held() {
        let mut c = coordinator(10, 10_000, 10);
        c.begin_catch_ups([("news".to_string(), id(5))]);
        assert!(c.is_catching_up("news"));
        assert!(!c.needs_live_subscription("news", true));
        let live = |ms| LiveMessage {
            id: Some(id(ms)),
            payload: Bytes::from_static(b"{}"),
            kind: "t".into(),
        };
        assert_eq!(c.on_live("news", live(7)), Live::Held);
        let page = Page {
            events: vec![
                StoredEvent {
                    id: id(6),
                    json: Bytes::new(),
                },
                StoredEvent {
                    id: id(7),
                    json: Bytes::new(),
                },
            ],
            more: false,
        };
        let caught_up = c
            .finish_catch_up("news", Ok(Ok(page)), true)
            .expect("it was catching up");
        assert_eq!((caught_up.since, caught_up.reset), (id(5), None));
        assert_eq!(caught_up.missed.len(), 2);
        assert_eq!(caught_up.held, [live(7)]);
        // The held copy of 7 is at the seam: dropped; 8 is new.
        assert_eq!(c.on_live("news", live(7)), Live::Skip);
        assert_eq!(c.on_live("news", live(8)), Live::Deliver(live(8)));
        assert!(c.needs_live_subscription("news", true));
    }

    #[test]
    fn should_reset_subscribers_when_a_catch_up_cannot_cover_the_gap() {
        let mut c = coordinator(10, 10_000, 10);
        c.begin_catch_ups([("a".to_string(), id(5)), ("b".to_string(), id(5))]);
        let more = Page {
            events: Vec::new(),
            more: true,
        };
        let a = c
            .finish_catch_up("a", Ok(Ok(more)), true)
            .expect("catching up");
        assert!(a.reset.is_some() && a.failure.is_none());
        let b = c
            .finish_catch_up("b", Err("link down".into()), false)
            .expect("catching up");
        assert_eq!(b.reset, Some("history unavailable"));
        assert_eq!(b.failure.as_deref(), Some("link down"));
        assert!(c.finish_catch_up("b", Err("again".into()), true).is_none());
    }

    #[test]
    fn should_read_a_catch_up_again_when_its_read_was_lost_with_the_link() {
        let mut c = coordinator(10, 10_000, 10);
        c.begin_catch_ups([("news".to_string(), id(5))]);
        let read = c.catch_ups.read_sent("news");
        c.sent(Pending::CatchUp {
            channel: "news".into(),
            since: id(5),
            read,
        });
        assert!(matches!(
            c.on_reply(Err(lost(false))),
            Some(Answer::CatchUpLost)
        ));
        assert!(c.is_catching_up("news"));
    }

    #[test]
    fn should_not_end_a_catch_up_with_a_read_sent_before_the_subscription_was_lost_again() {
        let mut c = coordinator(10, 10_000, 10);
        c.begin_catch_ups([("news".to_string(), id(5))]);
        let old = c.catch_ups.read_sent("news");
        c.sent(Pending::CatchUp {
            channel: "news".into(),
            since: id(5),
            read: old,
        });
        // Lost again while the read is out; back, and read again.
        c.begin_catch_ups([("news".to_string(), id(5))]);
        let new = c.catch_ups.read_sent("news");
        c.sent(Pending::CatchUp {
            channel: "news".into(),
            since: id(5),
            read: new,
        });
        // The old read's answer: nothing after 5 then, which is no longer the whole story.
        let page = history_reply("5-0", &[], false);
        assert!(matches!(c.on_reply(Ok(page)), Some(Answer::CatchUpLost)));
        assert!(c.is_catching_up("news"));
        let page = history_reply("5-0", &[("6-0", "{}")], false);
        let Some(Answer::CatchUpRead { result, .. }) = c.on_reply(Ok(page)) else {
            panic!("the new read's answer ends the catch-up");
        };
        assert_eq!(result.unwrap().unwrap().events[0].id, id(6));
    }
}
