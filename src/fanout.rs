//! Fanout: which connections receive which channel, and the delivery loop.
//!
//! A channel keeps a plain list of subscriber keys; each connection remembers its slot in that
//! list, so unsubscribing is a swap-remove, and a delivery touches only the channel's own
//! subscribers (uWebSockets' TopicTree makes the same trade): a client on a thousand channels
//! costs nothing to publishes on other channels. A channel exists while it has subscribers;
//! the caller hears when one gains its first or loses its last (to SUBSCRIBE or UNSUBSCRIBE
//! in Redis).
//!
//! Delivery is the hot path: frames are built once by the caller, one per transport, and each
//! subscriber costs one refcount, one queue push and, if it was idle, one dirty-list entry.
//! Nothing here writes to a socket.

use std::collections::HashMap;

use slab::Slab;

use crate::channel::{ChannelId, Subscription};
use crate::conn::{Conn, Outbox, Phase};
use crate::event::EventId;
use crate::outq::Chunk;
use crate::ws::deflate::WindowBits;

#[derive(Debug)]
struct Channel {
    name: Box<str>,
    subscribers: Vec<usize>,
    /// How many subscribers are Server-Sent Events streams (their bytes are built only if any).
    sse_subscribers: usize,
    /// How many subscribers are WebSockets with permessage-deflate (the compressed frame is
    /// built only if any).
    deflate_subscribers: usize,
    /// The newest event id delivered on this channel: where to catch up from if the
    /// subscription to Redis was lost for a while.
    last_id: Option<EventId>,
}

#[derive(Debug, Default)]
pub struct Fanout {
    by_name: HashMap<Box<str>, ChannelId>,
    channels: Slab<Channel>,
}

/// One event, ready for each transport: built once, shared by every subscriber.
#[derive(Debug)]
pub struct Frames {
    pub id: Option<EventId>,
    /// A WebSocket text frame of the event's JSON.
    pub ws: Chunk,
    /// The Server-Sent Events record, if the channel has SSE subscribers.
    pub sse: Option<Chunk>,
    /// The same text frame compressed (RSV1), if the channel has WebSockets that negotiated
    /// permessage-deflate and the event is large enough and compresses.
    pub ws_deflated: Option<Deflated>,
}

/// An event's frame compressed once (permessage-deflate), for every subscriber that can take
/// it.
#[derive(Debug)]
pub struct Deflated {
    pub frame: Chunk,
    /// The uncompressed payload's length: a client that limited our window to fewer bytes
    /// gets the plain frame (`WindowBits::fits`).
    pub payload_len: usize,
}

impl Frames {
    /// The WebSocket frame for a subscriber: compressed if it negotiated that and can read it.
    fn ws_for(&self, deflate: Option<WindowBits>) -> &Chunk {
        match (&self.ws_deflated, deflate) {
            (Some(deflated), Some(bits)) if bits.fits(deflated.payload_len) => &deflated.frame,
            _ => &self.ws,
        }
    }
}

impl Fanout {
    /// Channels with at least one subscriber (capped by `MAX_CHANNELS` by the reactor).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub fn lookup(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name).copied()
    }

    pub fn subscribers(&self, channel: ChannelId) -> &[usize] {
        &self.channels[channel as usize].subscribers
    }

    pub fn has_sse_subscribers(&self, channel: ChannelId) -> bool {
        self.channels[channel as usize].sse_subscribers > 0
    }

    pub fn has_deflate_subscribers(&self, channel: ChannelId) -> bool {
        self.channels[channel as usize].deflate_subscribers > 0
    }

    /// Remembers the newest event id delivered on the channel.
    pub fn delivered(&mut self, channel: ChannelId, id: EventId) {
        let last = &mut self.channels[channel as usize].last_id;
        *last = Some(last.map_or(id, |l| l.max(id)));
    }

    pub fn last_id(&self, channel: ChannelId) -> Option<EventId> {
        self.channels[channel as usize].last_id
    }

    /// Every channel that has delivered an event with an id, with the newest such id.
    pub fn last_ids(&self) -> Vec<(String, EventId)> {
        self.channels
            .iter()
            .filter_map(|(_, c)| c.last_id.map(|id| (c.name.to_string(), id)))
            .collect()
    }

    /// The names of every channel with subscribers.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(|(_, c)| &*c.name)
    }

    /// Adds `key` to the channel `name`. Returns the channel and whether the channel is new
    /// (its first subscriber), or `None` if the connection already had it.
    pub fn subscribe(
        &mut self,
        conns: &mut Slab<Conn>,
        key: usize,
        name: &str,
    ) -> Option<(ChannelId, bool)> {
        let (channel, created) = match self.by_name.get(name) {
            Some(&id) => (id, false),
            None => {
                let id = self.channels.insert(Channel {
                    name: name.into(),
                    subscribers: Vec::new(),
                    sse_subscribers: 0,
                    deflate_subscribers: 0,
                    last_id: None,
                }) as ChannelId;
                self.by_name.insert(name.into(), id);
                (id, true)
            }
        };
        let conn = &mut conns[key];
        if conn.subs.iter().any(|s| s.channel == channel) {
            return None;
        }
        let entry = &mut self.channels[channel as usize];
        let slot = u32::try_from(entry.subscribers.len()).expect("bug: over 4 billion subscribers");
        entry.subscribers.push(key);
        if conn.phase() == Phase::Sse {
            entry.sse_subscribers += 1;
        }
        if conn.deflate().is_some() {
            entry.deflate_subscribers += 1;
        }
        conn.subs.push(Subscription { channel, slot });
        Some((channel, created))
    }

    /// Removes `key` from the channel. Returns `None` if it was not subscribed, else whether
    /// the channel lost its last subscriber (and is gone), with its name.
    pub fn unsubscribe(
        &mut self,
        conns: &mut Slab<Conn>,
        key: usize,
        channel: ChannelId,
    ) -> Option<Option<Box<str>>> {
        let conn = &mut conns[key];
        let index = conn.subs.iter().position(|s| s.channel == channel)?;
        let slot = conn.subs.swap_remove(index).slot as usize;
        let is_sse = conn.phase() == Phase::Sse;
        let is_deflate = conn.deflate().is_some();
        let entry = &mut self.channels[channel as usize];
        entry.subscribers.swap_remove(slot);
        if is_sse {
            entry.sse_subscribers -= 1;
        }
        if is_deflate {
            entry.deflate_subscribers -= 1;
        }
        // The last subscriber moved into the freed slot: tell it where it is now.
        if let Some(&moved) = entry.subscribers.get(slot) {
            let sub = conns[moved]
                .subs
                .iter_mut()
                .find(|s| s.channel == channel)
                .expect("bug: a listed subscriber lacks its subscription");
            sub.slot = slot as u32;
        }
        if !entry.subscribers.is_empty() {
            return Some(None);
        }
        let gone = self.channels.remove(channel as usize);
        self.by_name.remove(&gone.name);
        Some(Some(gone.name))
    }

    /// Removes `key` from all its channels; names of channels left empty go to `emptied`.
    pub fn unsubscribe_all(
        &mut self,
        conns: &mut Slab<Conn>,
        key: usize,
        emptied: &mut Vec<Box<str>>,
    ) {
        while let Some(sub) = conns[key].subs.last().copied() {
            if let Some(Some(name)) = self.unsubscribe(conns, key, sub.channel) {
                emptied.push(name);
            }
        }
    }

    /// Queues the event on every open subscriber of the channel: the WebSocket frame (plain or
    /// compressed) or the SSE record, the same bytes for all that take the same kind. A subscriber replaying history may hold it back or
    /// skip it (`replay.rs`). Subscribers pushed over their cap are flagged in the outbox for
    /// the caller to close. Returns how many got it.
    pub fn deliver(
        &self,
        channel: ChannelId,
        frames: &Frames,
        conns: &mut Slab<Conn>,
        outbox: &mut Outbox,
    ) -> usize {
        let mut queued = 0;
        for &key in &self.channels[channel as usize].subscribers {
            let conn = &mut conns[key];
            let bytes = match conn.phase() {
                Phase::WebSocket => frames.ws_for(conn.deflate()),
                Phase::Sse => match &frames.sse {
                    Some(sse) => sse,
                    None => continue,
                },
                _ => continue,
            };
            if conn.offer_live(key, channel, frames.id, bytes, outbox) {
                queued += 1;
            }
        }
        queued
    }

    /// The channel's name.
    pub fn name(&self, channel: ChannelId) -> &str {
        &self.channels[channel as usize].name
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn conns(n: usize) -> (Slab<Conn>, Vec<std::net::TcpStream>) {
        // Real sockets: a Conn owns a mio TcpStream.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut slab = Slab::new();
        let mut peers = Vec::new();
        for i in 0..n {
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            server.set_nonblocking(true).unwrap();
            let mut conn = Conn::new(mio::net::TcpStream::from_std(server), i as u32, 0);
            conn.open_websocket(false, None, 0);
            slab.insert(conn);
            peers.push(client);
        }
        (slab, peers)
    }

    fn frames(ws: &'static [u8]) -> Frames {
        Frames {
            id: None,
            ws: Bytes::from_static(ws).into(),
            sse: None,
            ws_deflated: None,
        }
    }

    #[test]
    fn should_deliver_the_same_bytes_to_each_subscriber_only() {
        let (mut slab, _peers) = conns(3);
        let mut fanout = Fanout::default();
        let (orders, first) = fanout.subscribe(&mut slab, 0, "orders").unwrap();
        assert!(first);
        assert_eq!(
            fanout.subscribe(&mut slab, 1, "orders"),
            Some((orders, false))
        );
        fanout.subscribe(&mut slab, 2, "deploys").unwrap();
        let mut outbox = Outbox::new(1 << 20);
        let event = frames(b"\x81\x02hi");
        let done = fanout.deliver(orders, &event, &mut slab, &mut outbox);
        assert_eq!(done, 2);
        assert_eq!(outbox.swap_dirty(Vec::new()), vec![0, 1]);
        assert_eq!(slab[0].out.queued_bytes(), 4);
        assert_eq!(slab[2].out.queued_bytes(), 0);
    }

    #[test]
    fn should_keep_slots_consistent_and_drop_empty_channels() {
        let (mut slab, _peers) = conns(5);
        let mut fanout = Fanout::default();
        for key in 0..5 {
            fanout.subscribe(&mut slab, key, "events").unwrap();
        }
        let ch = fanout.lookup("events").unwrap();
        assert_eq!(fanout.subscribe(&mut slab, 3, "events"), None);
        for key in [1, 4, 0] {
            assert_eq!(fanout.unsubscribe(&mut slab, key, ch), Some(None));
        }
        assert_eq!(fanout.unsubscribe(&mut slab, 1, ch), None);
        let list = &fanout.channels[ch as usize].subscribers;
        assert_eq!(list.len(), 2);
        for (slot, &key) in list.iter().enumerate() {
            assert_eq!(slab[key].subs[0].slot as usize, slot);
        }
        let mut emptied = vec![];
        fanout.unsubscribe_all(&mut slab, 2, &mut emptied);
        fanout.unsubscribe_all(&mut slab, 3, &mut emptied);
        assert_eq!(emptied, vec![Box::from("events")]);
        assert_eq!(fanout.lookup("events"), None);
    }

    #[test]
    fn should_report_subscribers_over_the_backlog_cap() {
        let (mut slab, _peers) = conns(2);
        let mut fanout = Fanout::default();
        let (ch, _) = fanout.subscribe(&mut slab, 0, "events").unwrap();
        fanout.subscribe(&mut slab, 1, "events").unwrap();
        // The frame is shared (5 bytes + an 8-byte handle each); key 1 also holds a private
        // 10-byte buffer (10 + 8 + 64 overhead).
        slab[1].out.push(Bytes::from(vec![0u8; 10]));
        let mut outbox = Outbox::new(13 + 82 - 1);
        let frame = frames(b"12345");
        fanout.deliver(ch, &frame, &mut slab, &mut outbox);
        assert_eq!(outbox.take_over_cap(), vec![1]);
        assert_eq!(slab[0].out.queued_bytes(), 5);
        // Until it is closed, a subscriber over its cap gets nothing more queued.
        let held = slab[1].out.queued_bytes();
        assert_eq!(fanout.deliver(ch, &frame, &mut slab, &mut outbox), 1);
        assert_eq!(slab[1].out.queued_bytes(), held);
        assert_eq!(outbox.take_over_cap(), vec![1]);
    }
}
