//! Subscriptions, the reactor's side: opening WebSocket and SSE subscribers, the JSON control
//! messages that change their channels (and ask for occupancy), and Redis subscriptions
//! counted by local interest. Each join and leave tells occupancy the channel's new count. A
//! subscriber that resumes from an event id joins the channel first, then its replay starts
//! (`resume.rs`).

use std::time::Instant;

use serde::Deserialize;
use serde_json::json;

use super::Reactor;
use crate::auth::{Denial, Refusal};
use crate::channel::{self, Wanted};
use crate::event::EventId;
use crate::metrics::limit;
use crate::sse;
use crate::ws::deflate::Agreement;
use crate::ws::handshake;

/// A control message from a WebSocket client: `{"op":"subscribe","channel":"orders"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    op: String,
    channel: Option<String>,
    since: Option<String>,
    /// `refresh`: the new token.
    token: Option<String>,
    /// `occupancy`: false stops the updates (default true).
    watch: Option<bool>,
}

impl Reactor {
    pub(super) fn open_websocket(
        &mut self,
        key: usize,
        accept_key: &str,
        echo: bool,
        wanted: Wanted,
        deflate: Option<Agreement>,
    ) {
        let now = self.clock();
        let conn = &mut self.conns[key];
        conn.queue(
            key,
            handshake::switching_protocols(accept_key, deflate),
            &mut self.outbox,
        );
        let deadline = now + self.config.limits.ping_interval_secs;
        conn.open_websocket(echo, deflate.map(Agreement::window_bits), deadline);
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
        conn.queue(key, sse::head(), &mut self.outbox);
        conn.open_sse(now + self.config.limits.ping_interval_secs);
        self.sse_streams += 1;
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

    /// `MAX_SUBSCRIBED_CHANNELS` caps the channels with subscribers: each is a fan-out entry
    /// and, with Redis, a subscription (and its catch-up state), so a client must not be able
    /// to make the server hold any number of them. Joining an existing channel is always
    /// fine; a new one over the cap is refused with an error notice (true: refused).
    fn refuse_new_channel(&mut self, key: usize, name: &str) -> bool {
        let max = self.config.max_subscribed_channels;
        if self.fanout.lookup(name).is_some() || self.process.subscribed_channels() < max {
            return false;
        }
        self.metrics.limit_hit(limit::SUBSCRIBED_CHANNELS);
        let warning = format!(
            "channel {name:?} refused: {max} channels have subscribers (MAX_SUBSCRIBED_CHANNELS)"
        );
        self.warn_peer(key, "subscribed_channels", &warning);
        let error = "server at its channel limit (MAX_SUBSCRIBED_CHANNELS)";
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
        if first {
            self.process.count_channel(true);
        }
        self.note_subscribers(name, Instant::now());
        self.broker.joined(name, first);
        if let Some(since) = since {
            self.start_replay(key, name, since);
        }
        true
    }

    pub(super) fn unsubscribe_from(&mut self, key: usize, name: &str) -> bool {
        let Some(channel) = self.fanout.lookup(name) else {
            return false;
        };
        if let Some(replay) = self.conns[key].replay.as_mut() {
            replay.forget(channel);
        }
        match self.fanout.unsubscribe(&mut self.conns, key, channel) {
            None => false,
            Some(emptied) => {
                self.broker.left(name, emptied.is_some());
                if let Some(name) = emptied {
                    self.forget_channel(&name);
                }
                self.note_subscribers(name, Instant::now());
                true
            }
        }
    }

    /// Leaves every channel and ends every occupancy watch (the connection is going away).
    pub(super) fn unsubscribe_all(&mut self, key: usize) {
        self.occupancy.forget_watcher(key);
        let now = Instant::now();
        while let Some(sub) = self.conns[key].subs.last().copied() {
            match self.fanout.unsubscribe(&mut self.conns, key, sub.channel) {
                Some(Some(name)) => {
                    self.broker.left(&name, true);
                    self.forget_channel(&name);
                    self.occupancy.set_local(&name, 0, now);
                }
                Some(None) => {
                    let left = self.fanout.subscribers(sub.channel).len();
                    let name = self.fanout.name(sub.channel);
                    self.broker.left(name, false);
                    let left = u32::try_from(left).unwrap_or(u32::MAX);
                    self.occupancy.set_local(name, left, now);
                }
                None => break,
            }
        }
    }

    /// No local client wants the channel any more (the broker was told: `Broker::left`):
    /// it no longer counts against `MAX_SUBSCRIBED_CHANNELS`, and no seam is kept for it.
    fn forget_channel(&mut self, name: &str) {
        self.process.count_channel(false);
        self.redis_work.forget_channel(name);
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
        if control.op == "refresh" {
            return self.refresh_grant(key, control.token.as_deref());
        }
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
                // Occupancy watches count against the same cap.
                let held = self.conns[key].subs.len() + self.occupancy.watches(key);
                if held >= channel::MAX_PER_CONNECTION {
                    let error = format!(
                        "at most {} channels and occupancy watches per connection",
                        channel::MAX_PER_CONNECTION
                    );
                    return self.send_notice(key, json!({ "op": "error", "error": error }));
                }
                if !self.may_subscribe(key, &name) {
                    return self.refuse_subscription(key, &name);
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
            "occupancy" => self.on_occupancy_op(key, &name, control.watch.unwrap_or(true)),
            other => {
                let error = format!(
                    "unknown op {other:?}: use subscribe, unsubscribe, occupancy or refresh"
                );
                self.send_notice(key, json!({ "op": "error", "error": error }));
            }
        }
    }

    /// `{"op":"refresh","token":...}`: a new token for the same subject before the old one
    /// expires. Channels the new token no longer covers are left, each with a notice; a
    /// refused refresh leaves the connection as it was (its old grant still runs out).
    pub(super) fn refresh_grant(&mut self, key: usize, token: Option<&str>) {
        let Some(auth) = &self.config.auth else {
            let error = "auth is off: nothing to refresh";
            return self.send_notice(key, json!({ "op": "error", "error": error }));
        };
        let verified = auth.verify(token.unwrap_or(""));
        let old_sub = self.grants.get(key).map(|g| g.sub().to_string());
        let grant = match verified {
            Ok(grant) if old_sub.as_deref().is_none_or(|old| old == grant.sub()) => grant,
            Ok(grant) => {
                let denial = Denial {
                    sub: Some(grant.sub().into()),
                    ..Denial::new(Refusal::Subject)
                };
                return self.refuse_refresh(key, &denial);
            }
            Err(refusal) => {
                let denial = Denial {
                    sub: old_sub.map(Into::into),
                    ..Denial::new(refusal)
                };
                return self.refuse_refresh(key, &denial);
            }
        };
        let exp = grant.exp();
        self.grants.attach(key, grant);
        self.send_notice(key, json!({ "op": "refreshed", "exp": exp }));
        let names: Vec<String> = self.conns[key]
            .subs
            .iter()
            .map(|sub| self.fanout.name(sub.channel).to_string())
            .collect();
        for name in names {
            if !self.may_subscribe(key, &name) {
                self.unsubscribe_from(key, &name);
                self.send_notice(
                    key,
                    json!({ "op": "unsubscribed", "channel": name, "reason": "forbidden" }),
                );
            }
        }
        // Occupancy of a channel it may no longer read is no longer its business either.
        for name in self.occupancy.watched_by(key) {
            if !self.may_subscribe(key, &name) {
                self.occupancy.unwatch(key, &name);
                self.send_notice(
                    key,
                    json!({ "op": "occupancy", "channel": name, "watching": false, "reason": "forbidden" }),
                );
            }
        }
    }
}
