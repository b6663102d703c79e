//! Subscriptions, the reactor's side: opening WebSocket and SSE subscribers, the JSON control
//! messages that change their channels, Redis subscriptions counted by local interest, and
//! the replay of missed events for a subscriber that resumes from an event id.
//!
//! Replay without a gap or a duplicate at the seam: the subscriber joins the channel first;
//! embedded, its history is read at once (one thread: nothing can slip in between); with Redis,
//! live events are buffered on the connection (`conn::Recovery`) while the history is read
//! (only after Redis confirmed the subscription, so nothing published before it can be missed),
//! then the history is sent, then the buffered events it did not already contain.

use serde::Deserialize;
use serde_json::json;

use super::Reactor;
use super::publishing::Pending;
use crate::broker::{Broker, Read};
use crate::channel::{self, Wanted};
use crate::conn::{Became, Phase, Recovery};
use crate::event::EventId;
use crate::history::{Page, PageSize, TooOld};
use crate::metrics::limit;
use crate::sse;
use crate::ws::{frame, handshake};

/// A subscriber's history read, from request to reply.
#[derive(Debug, Clone)]
pub(super) struct Replay {
    pub key: usize,
    serial: u32,
    pub channel: String,
    pub since: EventId,
}

/// A control message from a WebSocket client: `{"op":"subscribe","channel":"orders"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    op: String,
    channel: Option<String>,
    since: Option<String>,
}

impl Reactor {
    pub(super) fn open_websocket(
        &mut self,
        key: usize,
        accept_key: &str,
        echo: bool,
        wanted: Wanted,
    ) {
        let now = self.clock();
        let conn = &mut self.conns[key];
        conn.queue(
            key,
            handshake::switching_protocols(accept_key),
            &mut self.dirty,
        );
        conn.phase = if echo { Phase::Echo } else { Phase::WebSocket };
        conn.deadline = now + self.config.limits.ping_interval_secs;
        conn.became = Became::WebSocket;
        self.websockets += 1;
        self.metrics.websockets_opened += 1;
        self.metrics.responded(101);
        if !echo {
            self.subscribe_wanted(key, wanted);
        }
    }

    pub(super) fn open_sse(&mut self, key: usize, wanted: Wanted) {
        let now = self.clock();
        let conn = &mut self.conns[key];
        conn.queue(key, sse::head(), &mut self.dirty);
        conn.phase = Phase::Sse;
        conn.became = Became::Sse;
        self.sse_streams += 1;
        conn.deadline = now + self.config.limits.ping_interval_secs;
        self.metrics.responded(200);
        self.subscribe_wanted(key, wanted);
    }

    fn subscribe_wanted(&mut self, key: usize, wanted: Wanted) {
        for (name, since) in wanted {
            if !self.refuse_new_channel(key, &name) {
                self.subscribe_to(key, &name, since);
            }
        }
    }

    /// `MAX_CHANNELS` caps the channels with subscribers here too: each is a fan-out entry
    /// and, with Redis, a subscription (and its catch-up state), so a client must not be able
    /// to make the server hold any number of them. Joining an existing channel is always
    /// fine; a new one over the cap is refused with an error notice (true: refused).
    fn refuse_new_channel(&mut self, key: usize, name: &str) -> bool {
        let max = self.config.max_channels;
        if self.fanout.lookup(name).is_some() || self.fanout.channel_count() < max {
            return false;
        }
        self.metrics.limit_hit(limit::SUBSCRIBED_CHANNELS);
        let warning =
            format!("channel {name:?} refused: {max} channels have subscribers (MAX_CHANNELS)");
        self.warn_peer(key, "subscribed_channels", &warning);
        let error = "server at its channel limit (MAX_CHANNELS)";
        self.send_notice(
            key,
            json!({ "op": "error", "channel": name, "error": error }),
        );
        true
    }

    /// Joins a channel (subscribing in Redis if it is the first local subscriber), then replays
    /// what came after `since`. Returns false if the connection already had the channel.
    fn subscribe_to(&mut self, key: usize, name: &str, since: Option<EventId>) -> bool {
        let Some((_, first)) = self.fanout.subscribe(&mut self.conns, key, name) else {
            return false;
        };
        if let Broker::Redis(redis) = &mut self.broker
            && first
        {
            let redis_channel = redis.names.channel(name);
            redis.subscriber.subscribe(redis_channel.as_bytes());
        }
        if let Some(since) = since {
            self.start_replay(key, name, since);
        }
        true
    }

    fn unsubscribe_from(&mut self, key: usize, name: &str) -> bool {
        let Some(channel) = self.fanout.lookup(name) else {
            return false;
        };
        match self.fanout.unsubscribe(&mut self.conns, key, channel) {
            None => false,
            Some(emptied) => {
                if let Some(name) = emptied {
                    self.forget_channel(&name);
                }
                true
            }
        }
    }

    /// Leaves every channel (the connection is going away).
    pub(super) fn unsubscribe_all(&mut self, key: usize) {
        let mut emptied = Vec::new();
        self.fanout
            .unsubscribe_all(&mut self.conns, key, &mut emptied);
        for name in emptied {
            self.forget_channel(&name);
        }
    }

    /// No local client wants the channel any more: stop receiving it from Redis.
    fn forget_channel(&mut self, name: &str) {
        if let Broker::Redis(redis) = &mut self.broker {
            let redis_channel = redis.names.channel(name);
            redis.subscriber.unsubscribe(redis_channel.as_bytes());
        }
    }

    /// `{"op":"subscribe"|"unsubscribe","channel":...,"since":...}`, each acknowledged; anything
    /// else gets a JSON error message, not a disconnect.
    pub(super) fn on_control_message(&mut self, key: usize, text: &str) {
        let control: Control = match serde_json::from_str(text) {
            Ok(control) => control,
            Err(e) => {
                let error = format!("invalid control message: {e}");
                return self.send_notice(key, json!({ "op": "error", "error": error }));
            }
        };
        let name = match control
            .channel
            .as_deref()
            .map(|n| (n, channel::validate(n)))
        {
            Some((name, Ok(()))) => name.to_string(),
            Some((_, Err(e))) => {
                return self.send_notice(key, json!({ "op": "error", "error": e }));
            }
            None => {
                let error = "a control message needs a \"channel\"";
                return self.send_notice(key, json!({ "op": "error", "error": error }));
            }
        };
        match control.op.as_str() {
            "subscribe" => {
                let since = match control.since.as_deref().map(str::parse::<EventId>) {
                    None => None,
                    Some(Ok(id)) => Some(id),
                    Some(Err(())) => {
                        let error = "invalid since: an event id";
                        return self.send_notice(key, json!({ "op": "error", "error": error }));
                    }
                };
                if self.conns[key].subs.len() >= channel::MAX_PER_CONNECTION {
                    let error = format!(
                        "at most {} channels per connection",
                        channel::MAX_PER_CONNECTION
                    );
                    return self.send_notice(key, json!({ "op": "error", "error": error }));
                }
                if self.refuse_new_channel(key, &name) {
                    return;
                }
                self.send_notice(key, json!({ "op": "subscribed", "channel": name }));
                self.subscribe_to(key, &name, since);
            }
            "unsubscribe" => {
                self.unsubscribe_from(key, &name);
                self.send_notice(key, json!({ "op": "unsubscribed", "channel": name }));
            }
            other => {
                let error = format!("unknown op {other:?}: use subscribe or unsubscribe");
                self.send_notice(key, json!({ "op": "error", "error": error }));
            }
        }
    }

    // ---- replay -----------------------------------------------------------------------------

    fn start_replay(&mut self, key: usize, name: &str, since: EventId) {
        let replay = Replay {
            key,
            serial: self.conns[key].serial,
            channel: name.to_string(),
            since,
        };
        let limit = self.config.history_len;
        let ready = match &mut self.broker {
            Broker::Embedded(history) => {
                // One thread: the history and the live stream cannot interleave here.
                let result = history.read(name, Some(since), PageSize::events(limit));
                return self.send_replay(&replay, result);
            }
            Broker::Redis(redis) => redis.can_replay(name),
        };
        let channel = self
            .fanout
            .lookup(name)
            .expect("bug: replay of a channel not joined");
        let conn = &mut self.conns[key];
        let recovery = conn.recovery.get_or_insert_with(Box::<Recovery>::default);
        recovery.pending += 1;
        // The client has seen `since`: a late live copy of it or anything older is dropped.
        recovery.replayed(channel, since);
        if ready {
            self.read_replay(replay);
        } else {
            self.awaiting_redis.push(replay);
        }
    }

    /// A link came up or a subscription was confirmed: replays and catch-ups that waited for
    /// Redis may read their history now.
    pub(super) fn on_redis_progress(&mut self) {
        let Broker::Redis(redis) = &self.broker else {
            return;
        };
        let (ready, waiting): (Vec<Replay>, Vec<Replay>) = std::mem::take(&mut self.awaiting_redis)
            .into_iter()
            .partition(|r| redis.can_replay(&r.channel));
        self.awaiting_redis = waiting;
        for replay in ready {
            self.read_replay(replay);
        }
        self.continue_catch_ups();
        self.retry_parked(None);
    }

    fn read_replay(&mut self, replay: Replay) {
        match self.broker.read_history(
            &replay.channel,
            Some(replay.since),
            PageSize::events(self.config.history_len),
        ) {
            Read::Pending => self.pending.push_back(Pending::Replay(replay)),
            Read::Unavailable(why) => self.on_replay_read(replay, Err(why)),
            Read::Done(result) => self.on_replay_read(replay, Ok(result)),
        }
    }

    /// A history read for a replay came back: send it, then the live events held meanwhile.
    pub(super) fn on_replay_read(
        &mut self,
        replay: Replay,
        result: Result<Result<Page, TooOld>, String>,
    ) {
        let alive = self
            .conns
            .get(replay.key)
            .is_some_and(|c| c.serial == replay.serial && c.is_subscriber());
        if !alive {
            return;
        }
        let result = result.unwrap_or_else(|why| {
            log::warn!("history read for a resuming subscriber failed: {why}");
            Err(TooOld {
                reason: "history unavailable",
            })
        });
        self.send_replay(&replay, result);
        let conn = &mut self.conns[replay.key];
        let Some(recovery) = conn.recovery.as_mut() else {
            return;
        };
        recovery.pending -= 1;
        if recovery.pending > 0 {
            return;
        }
        for bytes in recovery.take_live() {
            conn.queue(replay.key, bytes, &mut self.dirty);
        }
        if conn.recovery.as_ref().is_some_and(|r| r.is_done()) {
            conn.recovery = None;
        }
    }

    /// Queues replayed events (or the reset notice) straight onto the connection, ahead of
    /// any live events held in its recovery buffer.
    fn send_replay(&mut self, replay: &Replay, result: Result<Page, TooOld>) {
        match result {
            Ok(Page { events, .. }) => {
                let channel = self.fanout.lookup(&replay.channel);
                let sse = self.conns[replay.key].phase == Phase::Sse;
                let conn = &mut self.conns[replay.key];
                for stored in &events {
                    let bytes = if sse {
                        sse::event_record(&stored.json)
                    } else {
                        frame::text(&stored.json)
                    };
                    conn.queue(replay.key, bytes, &mut self.dirty);
                }
                if let (Some(channel), Some(last), Some(recovery)) =
                    (channel, events.last(), conn.recovery.as_mut())
                {
                    recovery.replayed(channel, last.id);
                }
            }
            Err(too_old) => {
                let notice = json!({
                    "op": "reset",
                    "channel": replay.channel,
                    "since": replay.since.to_string(),
                    "reason": too_old.reason,
                });
                self.send_notice(replay.key, notice);
            }
        }
    }

    /// Tells every subscriber of a channel that events may be missing (the history could not
    /// cover a gap): like a client's own reset, they should reload.
    pub(super) fn reset_channel(&mut self, name: &str, since: EventId, reason: &str) {
        let Some(channel) = self.fanout.lookup(name) else {
            return;
        };
        let keys = self.fanout.subscribers(channel).to_vec();
        let notice =
            json!({ "op": "reset", "channel": name, "since": since.to_string(), "reason": reason });
        for key in keys {
            self.send_notice(key, notice.clone());
        }
    }

    /// A message for this subscriber alone (acknowledgement, error, reset).
    fn send_notice(&mut self, key: usize, notice: serde_json::Value) {
        let body = notice.to_string();
        let conn = &mut self.conns[key];
        let bytes = match conn.phase {
            Phase::WebSocket => frame::text(body.as_bytes()),
            Phase::Sse => {
                let op = notice["op"].as_str().unwrap_or("notice");
                sse::record(None, Some(op), body.as_bytes())
            }
            _ => return,
        };
        conn.queue(key, bytes, &mut self.dirty);
    }
}
