//! Occupancy, the reactor's side: tells `Occupancy` each channel's local subscriber count as
//! the fan-out changes, answers `GET /channels` and `GET /channels/<ch>` and the `occupancy`
//! op, queues the updates that come due (each one text, framed once, the same bytes for every
//! watcher), and sends Redis the flushes and reads `Occupancy` asks for, pipelined on the
//! command link, their replies matched through the pending FIFO. The decisions are in
//! `crate::occupancy`; this file only applies them.

use std::time::Instant;

use serde_json::json;

use super::Reactor;
use crate::auth::Grant;
use crate::coordinator::pending::{HttpWaiter, OccupancyWork, Pending};
use crate::http::reply::Reply;
use crate::metrics::limit;
use crate::occupancy::{self, Update, WatchRefused, Watching};
use crate::ratelog::truncate_error;
use crate::resp::cmd;
use crate::resp::link::LinkFailure;
use crate::ws::frame;

impl Reactor {
    /// The fan-out's subscriber count of `name` may have changed (a join or a leave).
    pub(super) fn note_subscribers(&mut self, name: &str, now: Instant) {
        let count = self
            .fanout
            .lookup(name)
            .map_or(0, |channel| self.fanout.subscribers(channel).len());
        self.occupancy.set_local(name, saturate(count), now);
    }

    /// Every turn: updates whose time has come go out; with Redis, a flush or a read that is
    /// due is sent. Cheap when nothing is due (a heap peek and two comparisons).
    pub(super) fn on_occupancy_timers(&mut self, now: Instant) {
        if self
            .occupancy
            .next_deadline()
            .is_none_or(|deadline| deadline > now)
        {
            return;
        }
        self.send_occupancy_work(now);
        for update in self.occupancy.take_due(now) {
            self.send_occupancy_update(&update);
        }
    }

    /// The moment `on_occupancy_timers` has something to do.
    pub(super) fn occupancy_deadline(&self) -> Option<Instant> {
        self.occupancy.next_deadline()
    }

    fn send_occupancy_work(&mut self, now: Instant) {
        let Some(redis) = self.broker.redis_mut() else {
            return;
        };
        let ready = redis.commands_ready();
        let work = self.occupancy.redis_work(now, ready);
        let (Some(keys), Some(ttl)) = (self.occupancy.redis_keys(), self.occupancy.ttl()) else {
            return;
        };
        let mut flushes = 0;
        let flush = Pending::Occupancy(OccupancyWork::Flush);
        if let Some(plan) = work.flush {
            let mut resync = plan.resync;
            let mut batches = plan.counts.chunks(occupancy::FLUSH_BATCH).peekable();
            if batches.peek().is_none() {
                // Nothing changed: the flush still renews this replica's expiry.
                let args = keys.flush_command(ttl, resync, &[]);
                self.redis_work.ask(redis, &args, flush);
                flushes += 1;
            } else {
                for batch in batches {
                    let args = keys.flush_command(ttl, resync, batch);
                    let flush = Pending::Occupancy(OccupancyWork::Flush);
                    self.redis_work.ask(redis, &args, flush);
                    flushes += 1;
                    resync = false;
                }
            }
        }
        let read = (!work.read.is_empty()).then(|| {
            let args = keys.count_command(work.read.iter().map(|c| &**c));
            let channels = work.read;
            let watched = OccupancyWork::Watched {
                channels,
                round: true,
            };
            self.redis_work
                .ask(redis, &args, Pending::Occupancy(watched));
        });
        self.occupancy.flush_sent(flushes);
        if read.is_some() {
            self.occupancy.read_sent();
        }
    }

    /// Shutting down: with Redis, this replica's counts are taken out at once, so its clients
    /// (closed now, reconnecting to other replicas) are not counted twice until they expire.
    /// The process exits once Redis answered (or the grace ran out).
    pub(super) fn leave_occupancy(&mut self) {
        let Some(redis) = self.broker.redis_mut() else {
            return;
        };
        if !self.occupancy.leave() || !redis.commands_ready() {
            return;
        }
        let Some(keys) = self.occupancy.redis_keys() else {
            return;
        };
        let leave = Pending::Occupancy(OccupancyWork::Leave);
        self.redis_work.ask(redis, &keys.leave_command(), leave);
    }

    /// One update, framed once and queued on each watcher still open.
    fn send_occupancy_update(&mut self, update: &Update) {
        let text = json!({
            "op": "occupancy",
            "channel": update.channel,
            "subscribers": update.subscribers,
        })
        .to_string();
        let frame: crate::outq::Chunk = frame::text(text.as_bytes()).into();
        for &key in &update.watchers {
            if let Some(conn) = self.conns.get_mut(key)
                && conn.phase() == crate::conn::Phase::WebSocket
            {
                conn.queue(key, frame.clone(), &mut self.outbox);
            }
        }
    }

    /// `{"op":"occupancy","channel":...}`: the total now (or, with Redis, as soon as the other
    /// replicas' count is read), then its changes, at most one a second. `"watch":false`
    /// stops them.
    pub(super) fn on_occupancy_op(&mut self, key: usize, name: &str, watch: bool) {
        if !watch {
            self.occupancy.unwatch(key, name);
            let notice = json!({ "op": "occupancy", "channel": name, "watching": false });
            return self.send_notice(key, notice);
        }
        // A client must not learn of channels it may not read.
        if !self.may_subscribe(key, name) {
            return self.refuse_subscription(key, name);
        }
        let now = Instant::now();
        let subscriptions = self.conns[key].subs.len();
        let elsewhere = self.other_reactors(name);
        match self
            .occupancy
            .watch_knowing(key, name, subscriptions, elsewhere, now)
        {
            Ok(Watching::Now(subscribers)) => {
                let notice =
                    json!({ "op": "occupancy", "channel": name, "subscribers": subscribers });
                self.send_notice(key, notice);
            }
            Ok(Watching::Soon { read: false }) => {}
            Ok(Watching::Soon { read: true }) => self.read_elsewhere(name, now),
            Err(refused) => {
                let (error, warning) = match refused {
                    WatchRefused::PerConnection(max) => (
                        format!("at most {max} channels and occupancy watches per connection"),
                        format!(
                            "occupancy watch of {name:?} refused: {max} subscriptions and watches on one connection"
                        ),
                    ),
                    WatchRefused::WatchedChannels(max) => (
                        "server at its limit of watched channels (MAX_SUBSCRIBED_CHANNELS)".into(),
                        format!(
                            "occupancy watch of {name:?} refused: {max} channels watched (MAX_SUBSCRIBED_CHANNELS)"
                        ),
                    ),
                };
                self.metrics.limit_hit(limit::OCCUPANCY_WATCHES);
                self.warn_peer(key, limit::OCCUPANCY_WATCHES, &warning);
                self.send_notice(
                    key,
                    json!({ "op": "error", "channel": name, "error": error }),
                );
            }
        }
    }

    /// Embedded: subscribers of `name` on every reactor (the hub's count).
    fn embedded_total(&self, name: &str) -> u32 {
        match self.broker.hub() {
            Some(hub) => saturate(hub.subscribers(name)),
            None => self.occupancy.local(name),
        }
    }

    /// Embedded with several reactors: subscribers of `name` on the other reactors. `None`
    /// with one reactor (nothing elsewhere) and with Redis (read from Redis instead).
    fn other_reactors(&self, name: &str) -> Option<u32> {
        if self.process.reactors() == 1 || self.broker.waits() {
            return None;
        }
        let total = self.embedded_total(name);
        Some(total.saturating_sub(self.occupancy.local(name)))
    }

    /// Embedded with several reactors, once a second: every watched channel's count on the
    /// other reactors, from the hub, so watchers here hear of joins and leaves there (at most
    /// a second late; coalesced like every update).
    pub(super) fn refresh_other_reactors(&mut self, now: Instant) {
        let Some(hub) = self.broker.hub() else {
            return;
        };
        if self.process.reactors() == 1 || self.occupancy.watched_channels() == 0 {
            return;
        }
        let names: Vec<String> = self.occupancy.watched_names().map(str::to_string).collect();
        let totals = hub.subscribers_of(names.iter().map(String::as_str));
        for (name, total) in names.iter().zip(totals) {
            let others = saturate(total).saturating_sub(self.occupancy.local(name));
            self.occupancy.set_elsewhere(name, others, now);
        }
    }

    /// A newly watched channel: read its count on the other replicas now rather than at the
    /// next round. Without Redis to ask (down, or too many reads waiting), its watchers get
    /// the local count, corrected by a later round.
    fn read_elsewhere(&mut self, name: &str, now: Instant) {
        let busy = self.refuse_read().is_some();
        let ready = self
            .broker
            .redis()
            .is_some_and(|redis| redis.commands_ready());
        if busy || !ready {
            return self.occupancy.elsewhere_unavailable(name, now);
        }
        let (Some(redis), Some(keys)) = (self.broker.redis_mut(), self.occupancy.redis_keys())
        else {
            return;
        };
        let watched = OccupancyWork::Watched {
            channels: vec![name.into()],
            round: false,
        };
        let args = keys.count_command([name]);
        self.redis_work
            .ask(redis, &args, Pending::Occupancy(watched));
    }

    /// `GET /channels/<channel>`: local subscribers, plus the other replicas' with Redis.
    pub(super) fn answer_occupancy(&mut self, waiter: HttpWaiter, channel: String) {
        let Some(redis) = self.broker.redis_mut() else {
            let count = self.embedded_total(&channel);
            let reply = count_reply(&channel, count);
            return self.send_http(waiter, reply);
        };
        let ready = redis.commands_ready();
        let command = self
            .occupancy
            .redis_keys()
            .expect("bug: Redis without keys")
            .count_command([channel.as_str()]);
        self.ask_redis(ready, waiter, &command, |waiter| {
            OccupancyWork::Count(waiter, channel)
        });
    }

    /// `GET /channels?after=&limit=`: a page of channels in name order, those the asker may
    /// read.
    pub(super) fn answer_channels(
        &mut self,
        waiter: HttpWaiter,
        after: Option<String>,
        limit: usize,
        grant: Option<Grant>,
    ) {
        let Some(redis) = self.broker.redis_mut() else {
            // Embedded: the hub counts every reactor's subscribers.
            let Some(hub) = self.broker.hub() else {
                return;
            };
            let (page, next) = hub.subscriber_page(after.as_deref(), limit);
            let entries = page.into_iter().map(|(name, n)| (name, saturate(n)));
            let reply = self.list_reply(entries, next, grant.as_ref());
            return self.send_http(waiter, reply);
        };
        let ready = redis.commands_ready();
        let command = self
            .occupancy
            .redis_keys()
            .expect("bug: Redis without keys")
            .list_command(after.as_deref(), limit);
        self.ask_redis(ready, waiter, &command, |waiter| {
            OccupancyWork::List(waiter, grant)
        });
    }

    /// An HTTP request answered from Redis: 503 if the command link is down (`ready` false)
    /// or too many reads wait (`MAX_PENDING_READS`); else `command` goes out and the
    /// connection waits for its reply, matched through the pending FIFO as `work`.
    fn ask_redis(
        &mut self,
        ready: bool,
        waiter: HttpWaiter,
        command: &[Vec<u8>],
        work: impl FnOnce(HttpWaiter) -> OccupancyWork,
    ) {
        if !ready {
            let reply = Reply::error(503, "Redis unavailable: counts of other replicas unknown");
            return self.send_http(waiter, reply);
        }
        if let Some(busy) = self.refuse_read() {
            return self.send_http(waiter, Reply::error(503, &busy));
        }
        let Some(redis) = self.broker.redis_mut() else {
            return;
        };
        self.conns[waiter.key].await_broker();
        self.redis_work
            .ask(redis, command, Pending::Occupancy(work(waiter)));
    }

    /// `{"channels":[{"channel":..,"subscribers":N}..],"next":..}` with this replica's live
    /// counts added, channels at 0 and those the reader may not see left out.
    fn list_reply(
        &self,
        entries: impl Iterator<Item = (String, u32)>,
        next: Option<String>,
        grant: Option<&Grant>,
    ) -> Reply {
        let listed: Vec<serde_json::Value> = entries
            .filter(|(name, _)| self.may_read(grant, name))
            .map(|(name, elsewhere)| {
                let total = elsewhere.saturating_add(self.local_unless_embedded(&name));
                (name, total)
            })
            .filter(|(_, total)| *total > 0)
            .map(|(name, total)| json!({ "channel": name, "subscribers": total }))
            .collect();
        let mut body = json!({ "channels": listed });
        if let Some(next) = next {
            body["next"] = json!(next);
        }
        Reply::json(200, &body).header("Cache-Control", "no-store")
    }

    /// With Redis, a listing's counts are the other replicas'; ours are added live. Embedded,
    /// the listing's counts are already ours.
    fn local_unless_embedded(&self, name: &str) -> u32 {
        if self.broker.waits() {
            self.occupancy.local(name)
        } else {
            0
        }
    }

    /// Auth off: everything. On: public channels, and those `grant` may subscribe to.
    fn may_read(&self, grant: Option<&Grant>, channel: &str) -> bool {
        match &self.config.auth {
            None => true,
            Some(auth) => {
                auth.is_public(channel) || grant.is_some_and(|g| g.may_subscribe(channel))
            }
        }
    }

    fn send_http(&mut self, waiter: HttpWaiter, reply: Reply) {
        self.send_reply(waiter.key, reply, waiter.keep_alive, waiter.head_only);
    }

    /// Redis answered an occupancy script (or will not).
    pub(super) fn on_occupancy_reply(
        &mut self,
        work: OccupancyWork,
        reply: Result<cmd::Reply, LinkFailure>,
    ) {
        let now = Instant::now();
        match work {
            OccupancyWork::Flush => {
                let failed = match &reply {
                    Ok(cmd::Reply::Error(e)) => Some(e.clone()),
                    Ok(_) => None,
                    Err(failure) => Some(failure.reason.clone()),
                };
                if let Some(why) = &failed {
                    self.warnings.warn(
                        "occupancy flush failed",
                        &format!(
                            "subscriber counts not written to Redis (written again later): {why}"
                        ),
                    );
                }
                self.occupancy.flush_answered(failed.is_none());
            }
            OccupancyWork::Leave => {
                let failed = match &reply {
                    Ok(cmd::Reply::Error(e)) => Some(e.as_str()),
                    Ok(_) => None,
                    Err(failure) => Some(failure.reason.as_str()),
                };
                if let Some(why) = failed {
                    let why = truncate_error(why);
                    self.warnings.warn(
                        "occupancy leave failed",
                        &format!("subscriber counts left in Redis until they expire: {why}"),
                    );
                }
            }
            OccupancyWork::Watched { channels, round } => {
                if round {
                    self.occupancy.read_answered();
                }
                let counts = reply
                    .map_err(|failure| failure.reason)
                    .and_then(|r| occupancy::parse_counts(r, channels.len()));
                match counts {
                    Ok(counts) => {
                        for (channel, count) in channels.iter().zip(counts) {
                            self.occupancy.set_elsewhere(channel, count, now);
                        }
                    }
                    Err(why) => {
                        let why = truncate_error(&why);
                        self.warnings.warn(
                            "occupancy read failed",
                            &format!("subscriber counts of other replicas not read: {why}"),
                        );
                        for channel in &channels {
                            self.occupancy.elsewhere_unavailable(channel, now);
                        }
                    }
                }
            }
            OccupancyWork::Count(waiter, channel) => {
                let reply = match reply {
                    Err(failure) if failure.timed_out => Reply::error(504, "redis timeout"),
                    reply => match reply
                        .map_err(|failure| failure.reason)
                        .and_then(|r| occupancy::parse_counts(r, 1))
                    {
                        Ok(counts) => {
                            let total = counts[0].saturating_add(self.occupancy.local(&channel));
                            count_reply(&channel, total)
                        }
                        Err(why) => Reply::error(503, &why),
                    },
                };
                self.answer_http(waiter, reply);
            }
            OccupancyWork::List(waiter, grant) => {
                let reply = match reply {
                    Err(failure) if failure.timed_out => Reply::error(504, "redis timeout"),
                    reply => match reply
                        .map_err(|failure| failure.reason)
                        .and_then(occupancy::parse_list)
                    {
                        Ok(page) => {
                            self.list_reply(page.entries.into_iter(), page.next, grant.as_ref())
                        }
                        Err(why) => Reply::error(503, &why),
                    },
                };
                self.answer_http(waiter, reply);
            }
        }
    }

    fn answer_http(&mut self, waiter: HttpWaiter, reply: Reply) {
        let reply = reply.for_head(waiter.head_only);
        self.answer_waiting(waiter.key, waiter.serial, reply, waiter.keep_alive);
    }
}

fn count_reply(channel: &str, subscribers: u32) -> Reply {
    Reply::json(
        200,
        &json!({ "channel": channel, "subscribers": subscribers }),
    )
    .header("Cache-Control", "no-store")
}

fn saturate(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}
