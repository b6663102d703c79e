//! Fanout: which connections receive which channel, and the delivery loop.
//!
//! A channel keeps a plain list of subscriber keys; each connection remembers its slot in that
//! list, so unsubscribing is a swap-remove and a delivery touches only the channel's own
//! subscribers (uWebSockets' TopicTree makes the same trade). Delivery is the hot path of the
//! server: the frame is built once by the caller and each subscriber costs one refcount, one
//! queue push and, if it was idle, one dirty-list entry. Nothing here writes to a socket.

use std::collections::HashMap;

use bytes::Bytes;
use slab::Slab;

use crate::conn::Conn;

pub type ChannelId = u32;

/// One channel a connection receives, and where the connection sits in its subscriber list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub channel: ChannelId,
    pub slot: u32,
}

#[derive(Debug)]
struct Channel {
    name: Box<str>,
    subscribers: Vec<usize>,
}

#[derive(Debug, Default)]
pub struct Fanout {
    by_name: HashMap<Box<str>, ChannelId>,
    channels: Vec<Channel>,
}

/// What one delivery did: how many queues got the frame, and who is over the backlog cap.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    pub queued: usize,
}

impl Fanout {
    /// The channel's id, creating the channel on first use.
    pub fn channel_id(&mut self, name: &str) -> ChannelId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = ChannelId::try_from(self.channels.len()).expect("bug: over 4 billion channels");
        self.channels.push(Channel {
            name: name.into(),
            subscribers: Vec::new(),
        });
        self.by_name.insert(name.into(), id);
        id
    }

    pub fn lookup(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, channel: ChannelId) -> &str {
        &self.channels[channel as usize].name
    }

    pub fn subscriber_count(&self, channel: ChannelId) -> usize {
        self.channels[channel as usize].subscribers.len()
    }

    /// Adds `key` to the channel unless it is already there. Returns whether it was added.
    pub fn subscribe(&mut self, conns: &mut Slab<Conn>, key: usize, channel: ChannelId) -> bool {
        let conn = &mut conns[key];
        if conn.subs.iter().any(|s| s.channel == channel) {
            return false;
        }
        let list = &mut self.channels[channel as usize].subscribers;
        let slot = u32::try_from(list.len()).expect("bug: over 4 billion subscribers");
        list.push(key);
        conn.subs.push(Subscription { channel, slot });
        true
    }

    /// Removes `key` from the channel. Returns whether it was subscribed.
    pub fn unsubscribe(&mut self, conns: &mut Slab<Conn>, key: usize, channel: ChannelId) -> bool {
        let conn = &mut conns[key];
        let Some(index) = conn.subs.iter().position(|s| s.channel == channel) else {
            return false;
        };
        let slot = conn.subs.swap_remove(index).slot as usize;
        let list = &mut self.channels[channel as usize].subscribers;
        list.swap_remove(slot);
        // The last subscriber moved into the freed slot: tell it where it is now.
        if let Some(&moved) = list.get(slot) {
            let sub = conns[moved]
                .subs
                .iter_mut()
                .find(|s| s.channel == channel)
                .expect("bug: a listed subscriber lacks its subscription");
            sub.slot = slot as u32;
        }
        true
    }

    pub fn unsubscribe_all(&mut self, conns: &mut Slab<Conn>, key: usize) {
        while let Some(sub) = conns[key].subs.last().copied() {
            self.unsubscribe(conns, key, sub.channel);
        }
    }

    /// Queues `frame` (already framed, shared) on every open subscriber of the channel.
    /// Subscribers whose backlog would pass `max_queued_bytes` are not queued and are pushed
    /// onto `over_cap` for the caller to close.
    pub fn deliver(
        &self,
        channel: ChannelId,
        frame: &Bytes,
        conns: &mut Slab<Conn>,
        dirty: &mut Vec<usize>,
        max_queued_bytes: usize,
        over_cap: &mut Vec<usize>,
    ) -> Delivered {
        let mut queued = 0;
        for &key in &self.channels[channel as usize].subscribers {
            let conn = &mut conns[key];
            if !conn.is_websocket() {
                continue;
            }
            if conn.out.queued_bytes() + frame.len() > max_queued_bytes {
                over_cap.push(key);
                continue;
            }
            conn.queue(key, frame.clone(), dirty);
            queued += 1;
        }
        Delivered { queued }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Phase;

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
            conn.phase = Phase::WebSocket;
            slab.insert(conn);
            peers.push(client);
        }
        (slab, peers)
    }

    #[test]
    fn should_deliver_the_same_bytes_to_each_subscriber_only() {
        let (mut slab, _peers) = conns(3);
        let mut fanout = Fanout::default();
        let orders = fanout.channel_id("orders");
        let deploys = fanout.channel_id("deploys");
        fanout.subscribe(&mut slab, 0, orders);
        fanout.subscribe(&mut slab, 1, orders);
        fanout.subscribe(&mut slab, 2, deploys);
        let frame = Bytes::from_static(b"\x81\x02hi");
        let (mut dirty, mut over) = (vec![], vec![]);
        let done = fanout.deliver(orders, &frame, &mut slab, &mut dirty, 1 << 20, &mut over);
        assert_eq!(done.queued, 2);
        assert_eq!(dirty, vec![0, 1]);
        assert_eq!(slab[0].out.queued_bytes(), 4);
        assert_eq!(slab[2].out.queued_bytes(), 0);
    }

    #[test]
    fn should_keep_slots_consistent_through_unsubscribes() {
        let (mut slab, _peers) = conns(5);
        let mut fanout = Fanout::default();
        let ch = fanout.channel_id("events");
        for key in 0..5 {
            assert!(fanout.subscribe(&mut slab, key, ch));
        }
        assert!(!fanout.subscribe(&mut slab, 3, ch));
        for key in [1, 4, 0] {
            assert!(fanout.unsubscribe(&mut slab, key, ch));
        }
        assert!(!fanout.unsubscribe(&mut slab, 1, ch));
        let list = &fanout.channels[ch as usize].subscribers;
        assert_eq!(list.len(), 2);
        for (slot, &key) in list.iter().enumerate() {
            assert_eq!(slab[key].subs[0].slot as usize, slot);
        }
        fanout.unsubscribe_all(&mut slab, 2);
        assert_eq!(fanout.subscriber_count(ch), 1);
    }

    #[test]
    fn should_report_subscribers_over_the_backlog_cap() {
        let (mut slab, _peers) = conns(2);
        let mut fanout = Fanout::default();
        let ch = fanout.channel_id("events");
        fanout.subscribe(&mut slab, 0, ch);
        fanout.subscribe(&mut slab, 1, ch);
        slab[1].out.push(Bytes::from(vec![0u8; 10]));
        let (mut dirty, mut over) = (vec![], vec![]);
        let frame = Bytes::from_static(b"12345");
        fanout.deliver(ch, &frame, &mut slab, &mut dirty, 12, &mut over);
        assert_eq!(over, vec![1]);
        assert_eq!(slab[0].out.queued_bytes(), 5);
    }
}
