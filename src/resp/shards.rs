//! Redis Cluster, the sockets: a command link per master (pipelined) and a shard-channel
//! subscriber link per node that holds channels, all `RedisLink`s on the reactor's poll.
//! `cluster::Topology` decides where a slot goes and when to read the map; this module
//! applies it: routes commands, follows `MOVED`/`ASK`, moves shard-channel subscriptions to
//! the node that owns their slot, opens links to new masters and closes those of nodes that
//! left.
//!
//! One order for the reactor: its commands are answered to it in the order it sent them,
//! whatever node each went to (the reactor matches replies to requests with one FIFO, as
//! with one Redis). Each command gets a sequence number; an answer from a fast node waits
//! for the older ones. A node that stops answering holds the others' answers back for at
//! most `REDIS_TIMEOUT_MS` (its link then fails what it was sent).
//!
//! What the reactor sees is what one Redis would tell it: `Up`/`Down` of links, `Message`,
//! `Subscribed`, `Reply`; and `SubscriptionsLost` naming the shard channels whose
//! subscription was lost (their node's link went down, their slot moved, a failover): those
//! channels catch up from their streams exactly as after a lost single-Redis subscription;
//! the others, on healthy nodes, never stopped.
//!
//! Nothing here is shared between threads: each reactor has its own `ShardLinks`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use log::{info, warn};
use mio::{Registry, Token, Waker};

use super::cluster::{
    ClusterReply, NodeAddr, RefreshReason, Topology, TopologyCounts, key_slot, parse_cluster_shards,
};
use super::cmd::Reply;
use super::link::{LinkEvent, LinkFailure, LinkSettings, RedisLink, Role};
use crate::config::RedisUrl;
use crate::ratelog::truncate_error;

/// Tokens of cluster links: node `i` has `FIRST_TOKEN + 2i` (commands) and `+ 1`
/// (subscriber). Slab keys of connections stay below `FIRST_TOKEN`.
pub const FIRST_TOKEN: usize = usize::MAX - 4096;
/// Most nodes with links at once (a cluster's masters, plus `MOVED` targets and the seeds
/// before the first map): Redis Cluster's own advice is at most 1000 nodes.
const MAX_NODES: usize = 2000;
/// Redirects one command may follow before it is answered with the last error (a slot
/// bouncing between nodes in a migration gone wrong).
const MAX_REDIRECTS: u8 = 5;

/// What a command sent on a node's command link is for, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// The reactor's command with this sequence number.
    Reactor(u64),
    /// `ASKING` before a command redirected by `ASK`.
    Asking,
    /// `CLUSTER SHARDS`.
    Shards,
}

#[derive(Debug)]
struct Node {
    addr: NodeAddr,
    command: RedisLink,
    /// Made when a shard channel is first placed on the node.
    subscriber: Option<RedisLink>,
    sent: VecDeque<Sent>,
}

/// A reactor command not yet answered to the reactor.
#[derive(Debug)]
struct Outstanding {
    args: Vec<Bytes>,
    redirects: u8,
    answer: Option<Result<Reply, LinkFailure>>,
}

/// One shard for `/health`: its master, slots and link state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardState {
    pub master: String,
    pub slots: Vec<(u16, u16)>,
    pub replicas: Vec<String>,
    /// `connected`, `stalled` or `down` (the command link to the master).
    pub state: &'static str,
}

#[derive(Debug)]
pub struct ShardLinks {
    topology: Topology,
    /// Credentials for nodes the cluster names (those of the first URL).
    template: RedisUrl,
    seeds: Vec<RedisUrl>,
    settings: LinkSettings,
    nodes: Vec<Option<Node>>,
    /// Shard channels wanted, and the node each is subscribed on (`None`: waiting for the
    /// slot map, or for the node that owns its slot to be known).
    channels: HashMap<Bytes, Option<usize>>,
    /// The reactor's commands in the order sent; `first_seq` is the front's number.
    order: VecDeque<Outstanding>,
    first_seq: u64,
    last_error: Option<String>,
}

impl ShardLinks {
    /// Links to the seed nodes (`PUBSUB_CACHE_URL`'s); the rest is learnt from the first
    /// `CLUSTER SHARDS`. `channels`: shard channels already wanted.
    pub fn new(
        seeds: &[RedisUrl],
        settings: LinkSettings,
        channels: impl Iterator<Item = Bytes>,
    ) -> ShardLinks {
        let settings = LinkSettings {
            sharded: false,
            ask_cluster: false,
            ..settings
        };
        let mut links = ShardLinks {
            topology: Topology::new(Instant::now()),
            template: seeds.first().expect("bug: no Redis URL").clone(),
            seeds: seeds.to_vec(),
            settings,
            nodes: Vec::new(),
            channels: channels.map(|c| (c, None)).collect(),
            order: VecDeque::new(),
            first_seq: 0,
            last_error: None,
        };
        for seed in seeds {
            links.add_node(NodeAddr::new(&seed.host, seed.port), Some(seed.clone()));
        }
        links
    }

    pub fn owns(&self, token: Token) -> bool {
        (FIRST_TOKEN..FIRST_TOKEN + 2 * MAX_NODES).contains(&token.0)
    }

    pub fn counts(&self) -> TopologyCounts {
        self.topology.counts()
    }

    // ---- what the broker asks -------------------------------------------------------------

    /// Whether a command on `slot` can be sent now; why not, for a 503, if it cannot.
    pub fn can_send(&self, slot: u16) -> Result<(), String> {
        let Some(owner) = self.topology.route(slot) else {
            return Err(if self.topology.is_known() {
                format!("Redis Cluster: no master serves slot {slot}")
            } else {
                format!("Redis Cluster: slot map not read yet ({})", self.why_down())
            });
        };
        match self.node_of(owner) {
            Some(index) if self.node(index).command.is_ready() => Ok(()),
            Some(index) => Err(format!(
                "Redis Cluster: the master of slot {slot} ({owner}) is unreachable: {}",
                self.node(index)
                    .command
                    .last_error()
                    .unwrap_or("connecting")
            )),
            None => Err(format!(
                "Redis Cluster: the master of slot {slot} ({owner}) is not connected yet"
            )),
        }
    }

    /// Sends a command whose keys are in `slot` to the node that serves it. Its answer comes
    /// back as `LinkEvent::Reply`, in the order commands were sent. If that node cannot take
    /// it (`can_send` says why), the answer is that failure, handed over at the next `flush`.
    pub fn command(&mut self, slot: u16, args: Vec<Bytes>) {
        let seq = self.first_seq + self.order.len() as u64;
        let mut outstanding = Outstanding {
            args,
            redirects: 0,
            answer: None,
        };
        match self.can_send(slot) {
            Ok(()) => {
                let index = self
                    .topology
                    .route(slot)
                    .and_then(|owner| self.node_of(owner))
                    .expect("bug: can_send found the node");
                let node = self.node_mut(index);
                let refs: Vec<&[u8]> = outstanding.args.iter().map(|a| &a[..]).collect();
                node.command.command(&refs);
                node.sent.push_back(Sent::Reactor(seq));
            }
            Err(reason) => {
                outstanding.answer = Some(Err(LinkFailure {
                    timed_out: false,
                    reason,
                }));
            }
        }
        self.order.push_back(outstanding);
    }

    /// Wants `channel` (a shard channel): subscribed on the node that owns its slot, now or
    /// once that node is known.
    pub fn subscribe(&mut self, channel: &[u8]) {
        if self.channels.contains_key(channel) {
            return;
        }
        let channel = Bytes::copy_from_slice(channel);
        self.channels.insert(channel.clone(), None);
        self.place(&channel);
    }

    pub fn unsubscribe(&mut self, channel: &[u8]) {
        if let Some(Some(index)) = self.channels.remove(channel)
            && let Some(Some(node)) = self.nodes.get_mut(index)
            && let Some(subscriber) = node.subscriber.as_mut()
        {
            subscriber.unsubscribe(channel);
        }
    }

    pub fn is_subscribed(&self, channel: &[u8]) -> bool {
        let Some(Some(index)) = self.channels.get(channel) else {
            return false;
        };
        self.nodes[*index]
            .as_ref()
            .and_then(|n| n.subscriber.as_ref())
            .is_some_and(|s| s.is_subscribed(channel))
    }

    pub fn all_subscribed(&self) -> bool {
        self.channels.keys().all(|c| self.is_subscribed(c))
    }

    /// The map is known, every slot has a master and every master's command link is up.
    pub fn is_ready(&self) -> bool {
        let map = self.topology.map();
        map.covers_all()
            && map.masters().iter().all(|master| {
                self.node_of(master)
                    .is_some_and(|i| self.node(i).command.is_ready())
            })
    }

    /// Some link to a master stopped answering (rather than refusing or closing).
    pub fn is_stalled(&self) -> bool {
        self.nodes.iter().flatten().any(|n| n.command.is_stalled())
    }

    /// Redis's clock as the most advanced command link read it (the nodes' clocks may
    /// differ: ids are stamped by the node of their channel).
    pub fn clock_offset_ms(&self) -> Option<i64> {
        self.nodes
            .iter()
            .flatten()
            .filter_map(|n| n.command.clock_offset_ms())
            .max()
    }

    pub fn last_error(&self) -> Option<&str> {
        if self.is_ready() && self.all_subscribed() {
            return None;
        }
        self.last_error.as_deref().or_else(|| {
            self.nodes
                .iter()
                .flatten()
                .find_map(|n| n.command.last_error())
        })
    }

    fn why_down(&self) -> String {
        let tried: Vec<String> = self.seeds.iter().map(|s| s.to_string()).collect();
        let error = self
            .nodes
            .iter()
            .flatten()
            .find_map(|n| n.command.last_error())
            .unwrap_or("connecting");
        format!("no node answered yet (seeds {}): {error}", tried.join(", "))
    }

    /// Each shard's master, slots and state, for `/health`.
    pub fn shards(&self) -> Vec<ShardState> {
        let mut shards: Vec<ShardState> = Vec::new();
        for range in self.topology.map().ranges() {
            let master = range.master.to_string();
            if let Some(shard) = shards.iter_mut().find(|s| s.master == master) {
                shard.slots.push((range.start, range.end));
                continue;
            }
            let state = match self.node_of(&range.master).map(|i| &self.node(i).command) {
                Some(link) if link.is_ready() => "connected",
                Some(link) if link.is_stalled() => "stalled",
                _ => "down",
            };
            shards.push(ShardState {
                master,
                slots: vec![(range.start, range.end)],
                replicas: range.replicas.iter().map(|r| r.to_string()).collect(),
                state,
            });
        }
        shards
    }

    // ---- the reactor's calls ----------------------------------------------------------------

    pub fn next_deadline(&self) -> Instant {
        let mut deadline = self
            .links()
            .map(RedisLink::next_deadline)
            .min()
            .unwrap_or_else(|| Instant::now() + super::cluster::REFRESH_EVERY);
        // A read that is due but has no link to go on waits for a link to come up (an
        // event), not for a timer that would fire at once, again and again.
        if self.nodes.iter().flatten().any(|n| n.command.is_ready()) {
            deadline = deadline.min(self.topology.next_deadline(self.settings.timeout));
        }
        deadline
    }

    pub fn on_ready(
        &mut self,
        token: Token,
        registry: &Registry,
        scratch: &mut [u8],
        events: &mut Vec<LinkEvent>,
    ) {
        let index = (token.0 - FIRST_TOKEN) / 2;
        let subscriber = (token.0 - FIRST_TOKEN) % 2 == 1;
        let mut reported = Vec::new();
        let Some(link) = self.link_mut(index, subscriber) else {
            return;
        };
        link.on_ready(registry, scratch, &mut reported);
        self.absorb(index, subscriber, reported, registry, events);
        self.maybe_refresh(Instant::now());
    }

    pub fn on_wake(&mut self, registry: &Registry, events: &mut Vec<LinkEvent>) {
        self.each_link(registry, events, |link, registry, reported| {
            link.on_wake(registry, reported)
        });
    }

    pub fn flush(&mut self, registry: &Registry, events: &mut Vec<LinkEvent>) {
        self.each_link(registry, events, |link, registry, reported| {
            if link.has_output() {
                link.flush(registry, reported);
            }
        });
        self.hand_over_answers(events);
    }

    pub fn on_timer(
        &mut self,
        now: Instant,
        registry: &Registry,
        waker: &Arc<Waker>,
        events: &mut Vec<LinkEvent>,
    ) {
        self.each_link(registry, events, |link, registry, reported| {
            link.on_timer(now, registry, waker, reported)
        });
        self.topology.expire_read(now, self.settings.timeout);
        let map = self.topology.map();
        let unreachable = map.masters().iter().any(|master| {
            self.node_of(master)
                .is_none_or(|i| !self.node(i).command.is_ready())
        });
        if unreachable {
            self.topology.master_unreachable(now);
        }
        self.maybe_refresh(now);
    }

    // ---- inside ---------------------------------------------------------------------------

    fn links(&self) -> impl Iterator<Item = &RedisLink> {
        self.nodes
            .iter()
            .flatten()
            .flat_map(|n| std::iter::once(&n.command).chain(n.subscriber.as_ref()))
    }

    /// Runs `step` on every link, then handles what each reported.
    fn each_link(
        &mut self,
        registry: &Registry,
        events: &mut Vec<LinkEvent>,
        mut step: impl FnMut(&mut RedisLink, &Registry, &mut Vec<LinkEvent>),
    ) {
        for index in 0..self.nodes.len() {
            for subscriber in [false, true] {
                let mut reported = Vec::new();
                let Some(link) = self.link_mut(index, subscriber) else {
                    continue;
                };
                step(link, registry, &mut reported);
                if !reported.is_empty() {
                    self.absorb(index, subscriber, reported, registry, events);
                }
            }
        }
    }

    /// Node `index`'s subscriber link (`subscriber`) or command link, if it has one.
    fn link_mut(&mut self, index: usize, subscriber: bool) -> Option<&mut RedisLink> {
        let node = self.nodes.get_mut(index)?.as_mut()?;
        if subscriber {
            node.subscriber.as_mut()
        } else {
            Some(&mut node.command)
        }
    }

    fn node(&self, index: usize) -> &Node {
        self.nodes[index].as_ref().expect("bug: no node at index")
    }

    fn node_mut(&mut self, index: usize) -> &mut Node {
        self.nodes[index].as_mut().expect("bug: no node at index")
    }

    fn node_of(&self, addr: &NodeAddr) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| &n.addr == addr))
    }

    /// The node at `addr`, with links made if it had none (`None`: `MAX_NODES` reached).
    fn node_at(&mut self, addr: &NodeAddr) -> Option<usize> {
        self.node_of(addr)
            .or_else(|| self.add_node(addr.clone(), None))
    }

    fn add_node(&mut self, addr: NodeAddr, url: Option<RedisUrl>) -> Option<usize> {
        let index = match self.nodes.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.nodes.len() < MAX_NODES => {
                self.nodes.push(None);
                self.nodes.len() - 1
            }
            None => {
                warn!("Redis Cluster: more than {MAX_NODES} nodes; {addr} left out");
                return None;
            }
        };
        let url = url.unwrap_or_else(|| RedisUrl {
            host: addr.host.clone(),
            port: addr.port,
            db: 0,
            ..self.template.clone()
        });
        let token = Token(FIRST_TOKEN + 2 * index);
        self.nodes[index] = Some(Node {
            addr,
            command: RedisLink::new(Role::Publisher, token, url, self.settings),
            subscriber: None,
            sent: VecDeque::new(),
        });
        Some(index)
    }

    /// Subscribes `channel` on the node its slot is routed to, if known.
    fn place(&mut self, channel: &Bytes) -> bool {
        let slot = key_slot(channel);
        let Some(owner) = self.topology.route(slot).cloned() else {
            return false;
        };
        let Some(index) = self.node_at(&owner) else {
            return false;
        };
        let settings = LinkSettings {
            sharded: true,
            ..self.settings
        };
        let node = self.node_mut(index);
        let subscriber = node.subscriber.get_or_insert_with(|| {
            let url = node.command.url().clone();
            RedisLink::new(
                Role::Subscriber,
                Token(FIRST_TOKEN + 2 * index + 1),
                url,
                settings,
            )
        });
        subscriber.subscribe(channel);
        self.channels.insert(channel.clone(), Some(index));
        true
    }

    /// Handles what one link reported.
    fn absorb(
        &mut self,
        index: usize,
        subscriber: bool,
        reported: Vec<LinkEvent>,
        registry: &Registry,
        events: &mut Vec<LinkEvent>,
    ) {
        let now = Instant::now();
        for event in reported {
            match event {
                LinkEvent::Reply(reply) if !subscriber => {
                    self.on_reply(index, reply, now, registry, events)
                }
                LinkEvent::Down(Role::Subscriber) => {
                    self.topology.want_refresh(now, RefreshReason::LinkLost);
                    // The link restores its channels when it reconnects (or they move with
                    // the next map): what they miss meanwhile comes from their streams.
                    let lost: Vec<Bytes> = self
                        .channels
                        .iter()
                        .filter(|&(_, &placed)| placed == Some(index))
                        .map(|(channel, _)| channel.clone())
                        .collect();
                    if !lost.is_empty() {
                        events.push(LinkEvent::SubscriptionsLost(lost));
                    }
                }
                LinkEvent::Down(role) => {
                    self.topology.want_refresh(now, RefreshReason::LinkLost);
                    events.push(LinkEvent::Down(role));
                }
                LinkEvent::SubscribeRefused { channel, error } => {
                    let addr = self.node(index).addr.clone();
                    self.last_error = Some(truncate_error(&format!(
                        "{addr} refused shard channel {}: {error}",
                        String::from_utf8_lossy(&channel)
                    )));
                    self.topology.on_error(now, &error, &addr);
                    if self.channels.contains_key(&channel) {
                        self.channels.insert(channel.clone(), None);
                        // Placed again at once if a MOVED named another node, else after
                        // the next read of the map.
                        if self.topology.route(key_slot(&channel)) != Some(&addr) {
                            self.place(&channel);
                        }
                    }
                }
                LinkEvent::Unsubscribed(channel) => {
                    self.topology
                        .want_refresh(now, RefreshReason::ShardChannelMoved);
                    if let Some(placed) = self.channels.get_mut(&channel) {
                        *placed = None;
                        // Events may be missed until it is subscribed on its new node.
                        events.push(LinkEvent::SubscriptionsLost(vec![channel]));
                    }
                }
                other => events.push(other),
            }
        }
    }

    fn on_reply(
        &mut self,
        index: usize,
        reply: Result<Reply, LinkFailure>,
        now: Instant,
        registry: &Registry,
        events: &mut Vec<LinkEvent>,
    ) {
        let Some(sent) = self.node_mut(index).sent.pop_front() else {
            warn!("bug: a Redis Cluster reply with no command waiting for it");
            return;
        };
        match sent {
            Sent::Asking => {}
            Sent::Shards => self.on_shards(index, reply, now, registry, events),
            Sent::Reactor(seq) => {
                if let Ok(Reply::Error(error)) = &reply {
                    let addr = self.node(index).addr.clone();
                    let verdict = self.topology.on_error(now, error, &addr);
                    if let ClusterReply::Moved { to, .. } | ClusterReply::Ask { to, .. } = &verdict
                    {
                        let asking = matches!(verdict, ClusterReply::Ask { .. });
                        if self.redirect(seq, to, asking) {
                            return;
                        }
                    }
                    if verdict == ClusterReply::Down {
                        self.last_error = Some(truncate_error(&format!("{addr}: {error}")));
                    }
                }
                self.answer(seq, reply, events);
            }
        }
    }

    /// Sends command `seq` again, to `to`; false if it cannot go there (too many
    /// redirects, or no ready link to that node yet).
    fn redirect(&mut self, seq: u64, to: &NodeAddr, asking: bool) -> bool {
        let Some(position) = seq.checked_sub(self.first_seq).map(|p| p as usize) else {
            return false;
        };
        if self
            .order
            .get(position)
            .is_none_or(|o| o.redirects >= MAX_REDIRECTS)
        {
            return false;
        }
        let Some(index) = self.node_at(to) else {
            return false;
        };
        if !self.node(index).command.is_ready() {
            return false;
        }
        let outstanding = &mut self.order[position];
        outstanding.redirects += 1;
        let refs: Vec<&[u8]> = outstanding.args.iter().map(|a| &a[..]).collect();
        let node = self.nodes[index].as_mut().expect("bug: node just found");
        if asking {
            node.command.command(&[b"ASKING"]);
            node.sent.push_back(Sent::Asking);
        }
        node.command.command(&refs);
        node.sent.push_back(Sent::Reactor(seq));
        true
    }

    /// Records the answer to command `seq` and hands the reactor every answer now in order.
    fn answer(&mut self, seq: u64, reply: Result<Reply, LinkFailure>, events: &mut Vec<LinkEvent>) {
        let Some(position) = seq.checked_sub(self.first_seq).map(|p| p as usize) else {
            return;
        };
        if let Some(outstanding) = self.order.get_mut(position) {
            outstanding.answer = Some(reply);
        }
        self.hand_over_answers(events);
    }

    /// Hands the reactor every answer that is next in order.
    fn hand_over_answers(&mut self, events: &mut Vec<LinkEvent>) {
        while self.order.front().is_some_and(|o| o.answer.is_some()) {
            let outstanding = self.order.pop_front().expect("bug: front was just seen");
            self.first_seq += 1;
            events.push(LinkEvent::Reply(
                outstanding.answer.expect("bug: answer was just seen"),
            ));
        }
    }

    fn on_shards(
        &mut self,
        index: usize,
        reply: Result<Reply, LinkFailure>,
        now: Instant,
        registry: &Registry,
        events: &mut Vec<LinkEvent>,
    ) {
        let sender = self.node(index).addr.clone();
        let map = match reply {
            Ok(Reply::Other(frame)) => {
                parse_cluster_shards(&frame, &sender).map_err(|e| e.to_string())
            }
            Ok(Reply::Error(e)) => Err(format!("CLUSTER SHARDS: {e}")),
            Ok(other) => Err(format!("CLUSTER SHARDS: unexpected reply {other:?}")),
            Err(failure) => Err(failure.reason),
        };
        let map = match map {
            Ok(map) if !map.ranges().is_empty() => map,
            Ok(_) => {
                let error = "CLUSTER SHARDS: no slot is served".to_string();
                return self.refresh_failed(now, &sender, error);
            }
            Err(e) => return self.refresh_failed(now, &sender, e),
        };
        let first = !self.topology.is_known();
        let change = self.topology.refreshed(now, map);
        for failed in &change.failovers {
            info!("Redis Cluster: failover: {failed}'s slots now served by its replica");
        }
        if first {
            info!(
                "Redis Cluster: {} masters: {}",
                self.topology.map().masters().len(),
                self.topology
                    .map()
                    .masters()
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        self.last_error = None;
        self.reconcile(registry, events);
    }

    fn refresh_failed(&mut self, now: Instant, sender: &NodeAddr, error: String) {
        let error = truncate_error(&format!("reading the slot map from {sender}: {error}"));
        warn!("Redis Cluster: {error}");
        self.last_error = Some(error);
        self.topology.refresh_failed(now);
    }

    /// After a new map: links to every master, none to nodes that are no longer one (once
    /// they owe no answer), and each shard channel on the node that owns its slot.
    fn reconcile(&mut self, registry: &Registry, events: &mut Vec<LinkEvent>) {
        let masters = self.topology.masters();
        for master in &masters {
            self.node_at(master);
        }
        let mut moved = Vec::new();
        let channels: Vec<(Bytes, Option<usize>)> =
            self.channels.iter().map(|(c, i)| (c.clone(), *i)).collect();
        for (channel, placed) in channels {
            let owner = self.topology.route(key_slot(&channel)).cloned();
            let target = owner.as_ref().and_then(|o| self.node_of(o));
            if placed.is_some() && placed == target {
                continue;
            }
            if let Some(old) = placed {
                moved.push(channel.clone());
                if let Some(subscriber) =
                    self.nodes[old].as_mut().and_then(|n| n.subscriber.as_mut())
                {
                    subscriber.unsubscribe(&channel);
                }
            }
            self.channels.insert(channel.clone(), None);
            self.place(&channel);
        }
        for index in 0..self.nodes.len() {
            let Some(node) = &self.nodes[index] else {
                continue;
            };
            let holds_channels = self.channels.values().any(|&i| i == Some(index));
            if masters.contains(&node.addr) || !node.sent.is_empty() || holds_channels {
                continue;
            }
            let mut node = self.nodes[index].take().expect("bug: node just seen");
            let mut dropped = Vec::new();
            node.command
                .close(registry, "no longer a master", &mut dropped);
            if let Some(subscriber) = node.subscriber.as_mut() {
                subscriber.close(registry, "no longer a master", &mut dropped);
            }
        }
        if !moved.is_empty() {
            // Channels moved to another node may have missed events in between.
            events.push(LinkEvent::SubscriptionsLost(moved));
        }
    }

    /// Sends `CLUSTER SHARDS` if a read is due and some command link is ready (a master's
    /// first, else any).
    fn maybe_refresh(&mut self, now: Instant) {
        if !self.topology.refresh_due(now) {
            return;
        }
        let masters = self.topology.map().masters();
        let ready = |n: &Option<Node>| n.as_ref().is_some_and(|n| n.command.is_ready());
        let chosen = self
            .nodes
            .iter()
            .position(|n| ready(n) && n.as_ref().is_some_and(|n| masters.contains(&n.addr)))
            .or_else(|| self.nodes.iter().position(ready));
        let Some(index) = chosen else { return };
        let node = self.node_mut(index);
        node.command.command(&[b"CLUSTER", b"SHARDS"]);
        node.sent.push_back(Sent::Shards);
        self.topology.refresh_sent(now);
    }
}
