//! Delivery: an event's frames, built once per transport (WebSocket, compressed WebSocket,
//! Server-Sent Events), handed to the fan-out, which queues the same bytes on every
//! subscriber of the channel. Events come from the hub's inbox (embedded: frames built once
//! in the process, `SharedEvent`), from the Redis subscription, from a catch-up's or an
//! overrun's history read.

use super::Reactor;
use crate::channel::ChannelId;
use crate::event::EventId;
use crate::fanout::{Deflated, Frames};
use crate::hub::SharedEvent;
use crate::sse;
use crate::ws::frame;

impl Reactor {
    /// Frames an event read from Redis's history (its id inside) once per transport and
    /// queues the same bytes on every subscriber of the channel. Returns how many got it.
    pub(super) fn broadcast(&mut self, channel: &str, id: Option<EventId>, json: &[u8]) -> usize {
        self.fan_out(channel, id, json, None)
    }

    /// `broadcast` for a message from the subscription: `id` only if trusted, and the SSE
    /// record built with that id (not whatever `"id"` the payload carries) and `kind`.
    pub(super) fn fan_out(
        &mut self,
        channel: &str,
        id: Option<EventId>,
        json: &[u8],
        relayed_kind: Option<&str>,
    ) -> usize {
        let Some(channel) = self.fanout.lookup(channel) else {
            return 0;
        };
        if let Some(id) = id {
            // The newest id delivered: where a catch-up resumes if the subscription drops.
            self.fanout.delivered(channel, id);
        }
        let sse = self
            .fanout
            .has_sse_subscribers(channel)
            .then(|| match relayed_kind {
                None => sse::event_record(json),
                Some(kind) => sse::record(id.map(|id| id.to_string()).as_deref(), Some(kind), json),
            });
        let ws_deflated = self.deflated_event(channel, json);
        let frames = Frames {
            id,
            ws: frame::text(json).into(),
            sse: sse.map(Into::into),
            ws_deflated,
        };
        self.deliver_frames(channel, &frames)
    }

    /// Queues `frames` on every subscriber of `channel` (each its transport's); how many.
    fn deliver_frames(&mut self, channel: ChannelId, frames: &Frames) -> usize {
        let queued = self
            .fanout
            .deliver(channel, frames, &mut self.conns, &mut self.outbox);
        self.metrics.events_delivered += queued as u64;
        queued
    }

    /// One event from the hub to this reactor's subscribers of its channel. Its frames are
    /// built once in the process (the first reactor that needs one builds it); here each is
    /// wrapped once into this reactor's non-atomic handle, and every subscriber gets a clone.
    pub(super) fn deliver_shared(&mut self, event: &SharedEvent) {
        let Some(channel) = self.fanout.lookup(&event.channel) else {
            return;
        };
        self.fanout.delivered(channel, event.id);
        let sse = self
            .fanout
            .has_sse_subscribers(channel)
            .then(|| event.sse_record(sse::event_record));
        let deflater = &mut self.deflater;
        let ws_deflated = (event.json.len() >= self.config.compress_min_bytes
            && self.fanout.has_deflate_subscribers(channel))
        .then(|| {
            event.ws_deflated(|json| {
                let compressed = deflater.compress(json)?;
                Some(frame::compressed_text(compressed))
            })
        })
        .flatten()
        .map(|bytes| Deflated {
            frame: bytes.into(),
            payload_len: event.json.len(),
        });
        let frames = Frames {
            id: Some(event.id),
            ws: event.ws_frame(frame::text).into(),
            sse: sse.map(Into::into),
            ws_deflated,
        };
        self.deliver_frames(channel, &frames);
    }

    /// An event's text frame compressed once for the channel's permessage-deflate
    /// subscribers: only if it has some, and the event is at least `COMPRESS_MIN_BYTES` and
    /// compresses (RFC 7692: any message may go plain, RSV1 unset).
    pub(super) fn deflated_event(&mut self, channel: ChannelId, json: &[u8]) -> Option<Deflated> {
        if json.len() < self.config.compress_min_bytes
            || !self.fanout.has_deflate_subscribers(channel)
        {
            return None;
        }
        let compressed = self.deflater.compress(json)?;
        Some(Deflated {
            frame: frame::compressed_text(compressed).into(),
            payload_len: json.len(),
        })
    }
}
