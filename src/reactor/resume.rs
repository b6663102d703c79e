//! Resume, the reactor's side: drives each resuming subscriber's `Replay` (`replay.rs`
//! decides): reads the next page of history when the subscriber's queue has room for it,
//! frames and queues the page, tells the subscriber to reset when the history cannot cover
//! its gap. Embedded, a page is read at once; with Redis it takes a round trip, and the first
//! read waits until Redis has confirmed the channel's subscription (so nothing published
//! before it can be missed).

use serde_json::json;

use super::Reactor;
use crate::broker::Read;
use crate::conn::Phase;
use crate::coordinator::pending::{PageRead, Pending, WaitingReplay};
use crate::event::EventId;
use crate::history::{Page, PageSize, TooOld};
use crate::replay::Replay;
use crate::sse;
use crate::ws::frame;

impl Reactor {
    /// Replays `name` to `key` from after `since`, then live.
    pub(super) fn start_replay(&mut self, key: usize, name: &str, since: EventId) {
        let channel = self
            .fanout
            .lookup(name)
            .expect("bug: replay of a channel not joined");
        let conn = &mut self.conns[key];
        conn.replay
            .get_or_insert_with(Box::<Replay>::default)
            .start(channel, since);
        self.continue_replay(key);
    }

    /// Reads and queues pages while the subscriber's queue has room for one: embedded, until
    /// the replay is done or the queue is full enough; with Redis, one read at a time.
    pub(super) fn continue_replay(&mut self, key: usize) {
        let page_bytes = self.outbox.replay_page_bytes();
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if !conn.is_subscriber() || conn.backlog_bytes() > page_bytes {
                return; // the next flush that drains the queue calls again
            }
            let Some(replay) = conn.replay.as_mut() else {
                return;
            };
            let Some(read) = replay.next_read() else {
                if replay.is_done() {
                    conn.replay = None;
                }
                return;
            };
            let serial = conn.serial();
            let name = self.fanout.name(read.channel).to_string();
            if self.refuse_read().is_some() {
                // MAX_PENDING_READS: the client reloads rather than queueing without bound.
                let busy = TooOld {
                    reason: "server busy: too many history reads waiting on Redis",
                };
                self.on_replay_page(PageRead { key, serial, read }, Ok(Err(busy)));
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let Some(replay) = conn.replay.as_mut() else {
                return;
            };
            if let Some(redis) = self.broker.redis()
                && !redis.can_replay(&name)
            {
                replay.unread(read);
                self.redis_work.await_link(WaitingReplay {
                    key,
                    serial,
                    channel: name.into(),
                });
                return;
            }
            let size = PageSize {
                events: self.config.history_len,
                bytes: page_bytes,
            };
            let page_read = PageRead { key, serial, read };
            match self.broker.read_history(&name, Some(read.after), size) {
                Read::Pending => {
                    self.redis_work.sent(Pending::Replay(page_read));
                    return;
                }
                Read::Unavailable(why) => self.on_replay_page(page_read, Err(why)),
                Read::Done(result) => self.on_replay_page(page_read, Ok(result)),
            }
        }
    }

    /// Replays that waited for Redis and may read now.
    pub(super) fn continue_waiting_replays(&mut self) {
        let Some(redis) = self.broker.redis() else {
            return;
        };
        let ready = self
            .redis_work
            .replays_ready(|channel| redis.can_replay(channel));
        for waiting in ready {
            if self
                .conns
                .get(waiting.key)
                .is_some_and(|c| c.serial() == waiting.serial)
            {
                self.continue_replay(waiting.key);
            }
        }
    }

    /// A replay waited for Redis longer than `REDIS_TIMEOUT_MS`: its subscriber is told to
    /// reset on each channel still to be replayed, at once rather than one timeout each.
    pub(super) fn give_up_waiting_replay(&mut self, waiting: WaitingReplay, why: &str) {
        // Bounded by the channels a connection may have.
        for _ in 0..=crate::channel::MAX_PER_CONNECTION {
            let Some(conn) = self.conns.get_mut(waiting.key) else {
                return;
            };
            if conn.serial() != waiting.serial {
                return;
            }
            let Some(read) = conn.replay.as_mut().and_then(|r| r.next_read()) else {
                return;
            };
            let page_read = PageRead {
                key: waiting.key,
                serial: waiting.serial,
                read,
            };
            self.on_replay_page(page_read, Err(why.to_string()));
        }
    }

    /// A page of history came back (or could not be read): queue it, or tell the subscriber
    /// to reset; then the live events its replay held, if the replay of the channel is over.
    pub(super) fn on_replay_page(
        &mut self,
        page_read: PageRead,
        result: Result<Result<Page, TooOld>, String>,
    ) {
        let PageRead { key, serial, read } = page_read;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let expected = conn.serial() == serial
            && conn.is_subscriber()
            && conn.replay.as_ref().is_some_and(|r| r.expects(read));
        if !expected {
            return; // the subscriber left, or left the channel, meanwhile
        }
        let result = result.unwrap_or_else(|why| {
            self.warnings.warn(
                "replay read failed",
                &format!("history read for a resuming subscriber failed: {why}"),
            );
            Err(TooOld {
                reason: "history unavailable",
            })
        });
        let released = match result {
            Ok(page) => {
                let sse = conn.phase() == Phase::Sse;
                for stored in &page.events {
                    let bytes = if sse {
                        sse::event_record(&stored.json)
                    } else {
                        frame::text(&stored.json)
                    };
                    conn.queue(key, bytes, &mut self.outbox);
                }
                let last = page.events.last().map(|e| e.id);
                let replay = conn.replay.as_mut().expect("bug: checked above");
                replay.page_sent(read, last, page.more)
            }
            Err(too_old) => {
                let replay = conn.replay.as_mut().expect("bug: checked above");
                let released = replay.abandon(read.channel);
                let notice = json!({
                    "op": "reset",
                    "channel": self.fanout.name(read.channel),
                    "since": read.after.to_string(),
                    "reason": too_old.reason,
                });
                self.send_notice(key, notice);
                released
            }
        };
        let conn = &mut self.conns[key];
        for bytes in released {
            conn.queue(key, bytes, &mut self.outbox);
        }
        if conn.replay.as_ref().is_some_and(|r| r.is_done()) {
            conn.replay = None;
        }
    }
}
