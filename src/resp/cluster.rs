//! Redis Cluster, the decisions: which slot a key or shard channel hashes to, which node owns
//! that slot, what an error reply (`MOVED`, `ASK`, `CLUSTERDOWN`, `TRYAGAIN`) asks of the
//! client, and when the slot map must be read again. No sockets here: `shards.rs` owns the
//! links and applies what `Topology` decides.
//!
//! Keys and slots (Redis Cluster specification, "Keys distribution model"): a key's slot is
//! `CRC16(key) mod 16384` (CRC-16/XMODEM); if the key holds a `{...}` with at least one byte
//! between the first `{` and the next `}`, only that part is hashed (a hash tag). A shard
//! channel is hashed like a key, so a channel's history stream named with the channel as its
//! tag (`key_beside`) lives in the channel's slot and one script can append to the stream and
//! `SPUBLISH` the channel on one node.
//!
//! The slot map comes from `CLUSTER SHARDS`. Between reads, a `MOVED` answer is believed at
//! once for its slot (kept beside the map until the next read replaces it) and asks for a
//! read; an `ASK` concerns one command only and changes nothing.
//!
//! When to read the map (`Topology`), transitions:
//!
//! ```text
//! Due --a ready link sent CLUSTER SHARDS--> Reading
//! Reading --map parsed--> Settled (next read after REFRESH_EVERY,
//!                                   or FAST_REFRESH while a master is unreachable)
//! Reading --error, link lost, no answer--> Due (after FAST_REFRESH)
//! Settled --MOVED, CLUSTERDOWN, a link lost, a shard channel dropped by its node,
//!           or the time came--> Due
//! ```
//!
//! A failover is counted when a read shows a slot's new master was one of its old master's
//! replicas (the replica was promoted); any other change of owner is a reshard.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use redis_protocol::resp2::types::BytesFrame;
use thiserror::Error;

use crate::channel::hash_tag;

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// How often the slot map is read when nothing asks for it sooner: a reshard done while no
/// command of ours met it is found within this.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How soon to read again while a master is unreachable or a read failed: a failover takes
/// the cluster's `cluster-node-timeout` plus an election, and publishes to those slots get
/// 503 until the new master is known, so it is looked for often (one small command).
pub const FAST_REFRESH: Duration = Duration::from_millis(200);

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes
/// keys with. Bitwise: a key is a few dozen bytes, hashed once per command.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key or shard channel.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS
}

/// A node's address as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl NodeAddr {
    pub fn new(host: &str, port: u16) -> NodeAddr {
        NodeAddr {
            host: host.to_string(),
            port,
        }
    }

    /// `host:port` as in a `MOVED` reply (the port after the last colon, so an IPv6 address
    /// needs no brackets). An empty host means "the node you asked" (Redis 7, when it does
    /// not know its own address): `sender`'s host is used.
    fn parse(text: &str, sender: &NodeAddr) -> Option<NodeAddr> {
        let (host, port) = text.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.is_empty() { &sender.host } else { host };
        Some(NodeAddr::new(host, port.parse().ok()?))
    }
}

/// Slots `start..=end`, their master and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: NodeAddr,
    pub replicas: Vec<NodeAddr>,
}

/// Which node serves each slot: ranges sorted by their first slot, none overlapping. Slots in
/// no range are served by nobody (a cluster being set up, or a master lost with no replica).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMap {
    ranges: Vec<SlotRange>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TopologyError {
    #[error("CLUSTER SHARDS reply of an unexpected shape: {0}")]
    Shape(&'static str),
    #[error("slot range {0}-{1} out of bounds")]
    OutOfBounds(i64, i64),
    #[error("slot ranges overlap at slot {0}")]
    Overlap(u16),
}

impl SlotMap {
    pub fn from_ranges(mut ranges: Vec<SlotRange>) -> Result<SlotMap, TopologyError> {
        ranges.sort_by_key(|r| r.start);
        for pair in ranges.windows(2) {
            if pair[1].start <= pair[0].end {
                return Err(TopologyError::Overlap(pair[1].start));
            }
        }
        Ok(SlotMap { ranges })
    }

    pub fn ranges(&self) -> &[SlotRange] {
        &self.ranges
    }

    pub fn range_of(&self, slot: u16) -> Option<&SlotRange> {
        let index = self.ranges.partition_point(|r| r.end < slot);
        self.ranges.get(index).filter(|r| r.start <= slot)
    }

    pub fn owner(&self, slot: u16) -> Option<&NodeAddr> {
        self.range_of(slot).map(|r| &r.master)
    }

    /// Every master once, in address order.
    pub fn masters(&self) -> Vec<NodeAddr> {
        let set: BTreeSet<&NodeAddr> = self.ranges.iter().map(|r| &r.master).collect();
        set.into_iter().cloned().collect()
    }

    /// Every slot has a master.
    pub fn covers_all(&self) -> bool {
        let served: u32 = self
            .ranges
            .iter()
            .map(|r| u32::from(r.end - r.start) + 1)
            .sum();
        served == u32::from(SLOTS)
    }
}

/// Parses a `CLUSTER SHARDS` reply (Redis 7): per shard, `["slots", [start, end, ...],
/// "nodes", [[field, value, ...], ...]]`. The shard's master is its node with role `master`
/// (one whose health is `online` if there are two: a failed old master is still listed until
/// it is forgotten); replicas are those with role `replica` not `failed` (a replica of a
/// master that has had no write yet says `loading`, its offset being 0). A node with
/// an empty endpoint is the node that answered (`sender`); `?` (unknown) is left out.
///
/// Why not `CLUSTER SLOTS`: Redis 7.0 caches its reply, and the cached reply was seen to
/// lack replicas that had joined minutes before; `CLUSTER SHARDS` is built fresh and says
/// each node's role and health.
pub fn parse_cluster_shards(
    reply: &BytesFrame,
    sender: &NodeAddr,
) -> Result<SlotMap, TopologyError> {
    use BytesFrame as F;
    let F::Array(shards) = reply else {
        return Err(TopologyError::Shape("not an array"));
    };
    fn text(frame: &BytesFrame) -> Option<&str> {
        match frame {
            BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
    let number = |frame: &F| match frame {
        F::Integer(n) => Some(*n),
        other => text(other)?.parse().ok(),
    };
    let field = |pairs: &[F], name: &str| -> Option<usize> {
        pairs
            .chunks_exact(2)
            .position(|pair| text(&pair[0]) == Some(name))
            .map(|i| 2 * i + 1)
    };
    let mut ranges = Vec::new();
    for shard in shards {
        let F::Array(shard) = shard else {
            return Err(TopologyError::Shape("shard is not an array"));
        };
        let (Some(slots), Some(nodes)) = (field(shard, "slots"), field(shard, "nodes")) else {
            return Err(TopologyError::Shape("shard without slots and nodes"));
        };
        let (F::Array(slots), F::Array(nodes)) = (&shard[slots], &shard[nodes]) else {
            return Err(TopologyError::Shape("slots or nodes not an array"));
        };
        let mut master: Option<(NodeAddr, bool)> = None;
        let mut replicas = Vec::new();
        for node in nodes {
            let F::Array(node) = node else {
                return Err(TopologyError::Shape("node is not an array"));
            };
            let get = |name| field(node, name).map(|i| &node[i]);
            let port = get("port")
                .and_then(number)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or(TopologyError::Shape("node without a port"))?;
            let host = get("endpoint").or(get("ip")).and_then(text).unwrap_or("?");
            let addr = match host {
                "?" => continue,
                "" => NodeAddr::new(&sender.host, port),
                host => NodeAddr::new(host, port),
            };
            let health = get("health").and_then(text);
            let online = health == Some("online");
            match get("role").and_then(text) {
                Some("master") if master.as_ref().is_none_or(|(_, was_online)| !was_online) => {
                    master = Some((addr, online));
                }
                Some("replica") if health != Some("failed") => replicas.push(addr),
                _ => {}
            }
        }
        let Some((master, _)) = master else { continue };
        for pair in slots.chunks(2) {
            let [start, end] = pair else {
                return Err(TopologyError::Shape("odd number of slot bounds"));
            };
            let (Some(start), Some(end)) = (number(start), number(end)) else {
                return Err(TopologyError::Shape("slot bound not a number"));
            };
            if !(0..i64::from(SLOTS)).contains(&start) || !(start..i64::from(SLOTS)).contains(&end)
            {
                return Err(TopologyError::OutOfBounds(start, end));
            }
            ranges.push(SlotRange {
                start: start as u16,
                end: end as u16,
                master: master.clone(),
                replicas: replicas.clone(),
            });
        }
    }
    SlotMap::from_ranges(ranges)
}

/// What an error reply to a command asks of a cluster client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterReply {
    /// `MOVED <slot> <host:port>`: the slot lives there now; send it there, read the map.
    Moved { slot: u16, to: NodeAddr },
    /// `ASK <slot> <host:port>`: this one command goes there, after `ASKING` (a slot being
    /// migrated; the map is unchanged).
    Ask { slot: u16, to: NodeAddr },
    /// `CLUSTERDOWN ...`: the cluster cannot serve the slot now (a master lost and not yet
    /// replaced): fail the command, read the map soon.
    Down,
    /// `TRYAGAIN ...`: keys of one command are split by a migration in progress.
    TryAgain,
    /// Any other error: the command's own answer.
    Plain,
}

impl ClusterReply {
    /// Classifies the text of an error reply (without the leading `-`) sent by `sender`.
    pub fn classify(error: &str, sender: &NodeAddr) -> ClusterReply {
        let mut words = error.split_ascii_whitespace();
        let redirect = |words: &mut std::str::SplitAsciiWhitespace<'_>| {
            let slot = words.next()?.parse::<u16>().ok().filter(|&s| s < SLOTS)?;
            let to = NodeAddr::parse(words.next()?, sender)?;
            Some((slot, to))
        };
        match words.next() {
            Some("MOVED") => redirect(&mut words).map_or(ClusterReply::Plain, |(slot, to)| {
                ClusterReply::Moved { slot, to }
            }),
            Some("ASK") => redirect(&mut words).map_or(ClusterReply::Plain, |(slot, to)| {
                ClusterReply::Ask { slot, to }
            }),
            Some("CLUSTERDOWN") => ClusterReply::Down,
            Some("TRYAGAIN") => ClusterReply::TryAgain,
            _ => ClusterReply::Plain,
        }
    }
}

/// Why the slot map is to be read again (counted; the last one is shown in `/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshReason {
    Start,
    Periodic,
    Moved,
    ClusterDown,
    LinkLost,
    ShardChannelMoved,
    ReadFailed,
}

impl RefreshReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshReason::Start => "start",
            RefreshReason::Periodic => "periodic",
            RefreshReason::Moved => "MOVED",
            RefreshReason::ClusterDown => "CLUSTERDOWN",
            RefreshReason::LinkLost => "link lost",
            RefreshReason::ShardChannelMoved => "shard channel moved",
            RefreshReason::ReadFailed => "read failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refresh {
    /// A read should be sent at `at` (or as soon as a link is ready after it).
    Due { at: Instant, reason: RefreshReason },
    /// `CLUSTER SHARDS` is out, sent at `since`.
    Reading { since: Instant },
    /// The map is current; read again at `next`.
    Settled { next: Instant },
}

/// What a new map changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapChange {
    /// Old masters whose slots went to one of their replicas.
    pub failovers: Vec<NodeAddr>,
    /// Slots whose master changed otherwise (a reshard, or a node replaced).
    pub slots_moved: u32,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopologyCounts {
    pub refreshes: u64,
    pub redirects: u64,
    pub failovers: u64,
}

/// The slot map and when to read it again; what `MOVED` answers said since the last read.
#[derive(Debug)]
pub struct Topology {
    map: SlotMap,
    /// Slots a `MOVED` answer placed elsewhere since the map was read (at most one entry per
    /// slot, cleared by every read).
    moved: HashMap<u16, NodeAddr>,
    refresh: Refresh,
    last_reason: RefreshReason,
    counts: TopologyCounts,
}

impl Topology {
    pub fn new(now: Instant) -> Topology {
        Topology {
            map: SlotMap::default(),
            moved: HashMap::new(),
            refresh: Refresh::Due {
                at: now,
                reason: RefreshReason::Start,
            },
            last_reason: RefreshReason::Start,
            counts: TopologyCounts::default(),
        }
    }

    pub fn map(&self) -> &SlotMap {
        &self.map
    }

    pub fn counts(&self) -> TopologyCounts {
        self.counts
    }

    /// Whether a map has been read at all.
    pub fn is_known(&self) -> bool {
        !self.map.ranges.is_empty()
    }

    pub fn last_reason(&self) -> RefreshReason {
        self.last_reason
    }

    /// The node a command on `slot` goes to: what the latest `MOVED` said, else the map.
    pub fn route(&self, slot: u16) -> Option<&NodeAddr> {
        self.moved.get(&slot).or_else(|| self.map.owner(slot))
    }

    /// Every node commands may go to: the map's masters and the targets of `MOVED` answers.
    pub fn masters(&self) -> Vec<NodeAddr> {
        let mut masters = self.map.masters();
        for to in self.moved.values() {
            if !masters.contains(to) {
                masters.push(to.clone());
            }
        }
        masters
    }

    /// Something suggests the map is stale: read it as soon as a link can.
    pub fn want_refresh(&mut self, now: Instant, reason: RefreshReason) {
        match self.refresh {
            Refresh::Reading { .. } => {}
            Refresh::Due { at, .. } if at <= now => {}
            _ => {
                self.refresh = Refresh::Due { at: now, reason };
            }
        }
    }

    /// A master cannot be reached: while that lasts, the next read comes within
    /// `FAST_REFRESH` (the cluster may promote its replica any moment).
    pub fn master_unreachable(&mut self, now: Instant) {
        if let Refresh::Settled { next } = self.refresh
            && next > now + FAST_REFRESH
        {
            self.refresh = Refresh::Settled {
                next: now + FAST_REFRESH,
            };
        }
    }

    /// A read should be sent now.
    pub fn refresh_due(&self, now: Instant) -> bool {
        match self.refresh {
            Refresh::Due { at, .. } => now >= at,
            Refresh::Settled { next } => now >= next,
            Refresh::Reading { .. } => false,
        }
    }

    /// `CLUSTER SHARDS` was sent.
    pub fn refresh_sent(&mut self, now: Instant) {
        self.last_reason = match self.refresh {
            Refresh::Due { reason, .. } => reason,
            _ => RefreshReason::Periodic,
        };
        self.refresh = Refresh::Reading { since: now };
        self.counts.refreshes += 1;
    }

    /// A read came back unusable or was lost: try again shortly.
    pub fn refresh_failed(&mut self, now: Instant) {
        self.refresh = Refresh::Due {
            at: now + FAST_REFRESH,
            reason: RefreshReason::ReadFailed,
        };
    }

    /// A read came back: the new map replaces the old one and every `MOVED` note.
    pub fn refreshed(&mut self, now: Instant, map: SlotMap) -> MapChange {
        let change = compare(&self.map, &map);
        self.counts.failovers += change.failovers.len() as u64;
        self.map = map;
        self.moved.clear();
        self.refresh = Refresh::Settled {
            next: now
                + if self.map.covers_all() {
                    REFRESH_EVERY
                } else {
                    FAST_REFRESH
                },
        };
        change
    }

    /// An error reply to a command on `sender`: what to do with the command. `MOVED` is
    /// believed at once for its slot and asks for a read; `CLUSTERDOWN` asks for a read.
    pub fn on_error(&mut self, now: Instant, error: &str, sender: &NodeAddr) -> ClusterReply {
        let verdict = ClusterReply::classify(error, sender);
        match &verdict {
            ClusterReply::Moved { slot, to } => {
                self.counts.redirects += 1;
                self.moved.insert(*slot, to.clone());
                self.want_refresh(now, RefreshReason::Moved);
            }
            ClusterReply::Ask { .. } => self.counts.redirects += 1,
            ClusterReply::Down => self.want_refresh(now, RefreshReason::ClusterDown),
            ClusterReply::TryAgain | ClusterReply::Plain => {}
        }
        verdict
    }

    /// When `refresh_due` turns true, or a read out too long (`timeout`) should be given up.
    pub fn next_deadline(&self, timeout: Duration) -> Instant {
        match self.refresh {
            Refresh::Due { at, .. } => at,
            Refresh::Settled { next } => next,
            Refresh::Reading { since } => since + timeout,
        }
    }

    /// A read out for longer than `timeout` is given up (its link's own timeout normally
    /// fails it first; this covers a reply lost to a bug).
    pub fn expire_read(&mut self, now: Instant, timeout: Duration) {
        if let Refresh::Reading { since } = self.refresh
            && now >= since + timeout
        {
            self.refresh_failed(now);
        }
    }
}

/// Failovers and moved slots between two maps, slot by slot (ranges, so at most a few dozen
/// steps for a healthy cluster).
fn compare(old: &SlotMap, new: &SlotMap) -> MapChange {
    let mut change = MapChange::default();
    let mut failed: BTreeSet<NodeAddr> = BTreeSet::new();
    for range in &new.ranges {
        let mut slot = range.start;
        loop {
            let before = old.range_of(slot);
            // The stretch of slots that stays within one range of each map.
            let stretch_end = match before {
                Some(before) => before.end.min(range.end),
                None => old
                    .ranges
                    .iter()
                    .find(|r| r.start > slot)
                    .map_or(range.end, |r| (r.start - 1).min(range.end)),
            };
            if let Some(before) = before
                && before.master != range.master
            {
                if before.replicas.contains(&range.master) {
                    failed.insert(before.master.clone());
                } else {
                    change.slots_moved += u32::from(stretch_end - slot) + 1;
                }
            }
            if stretch_end >= range.end {
                break;
            }
            slot = stretch_end + 1;
        }
    }
    change.failovers = failed.into_iter().collect();
    change
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{check_shard_channel, key_beside, tagged_prefix};
    use bytes::Bytes;

    /// Slots Redis computes (`CLUSTER KEYSLOT`), from the specification and redis-cli.
    macro_rules! slots {
        ($($name:ident: $key:expr => $slot:expr,)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(key_slot($key), $slot);
            }
        )*};
    }

    slots! {
        should_hash_the_specifications_check_value: b"123456789" => 0x31c3 % SLOTS,
        should_hash_foo: b"foo" => 12182,
        should_hash_bar: b"bar" => 5061,
        should_hash_an_empty_key: b"" => 0,
        should_hash_only_the_tag: b"{user1000}.following" => key_slot(b"user1000"),
        should_hash_the_first_tag_only: b"foo{bar}{zap}" => key_slot(b"bar"),
        should_hash_a_whole_key_with_an_empty_tag: b"foo{}{bar}" => crc16(b"foo{}{bar}") % SLOTS,
        should_hash_a_tag_that_opens_twice: b"foo{{bar}}zap" => key_slot(b"{bar"),
        should_hash_an_unclosed_brace_whole: b"foo{bar" => crc16(b"foo{bar") % SLOTS,
    }

    #[test]
    fn should_tag_a_prefix_once() {
        assert_eq!(tagged_prefix("events"), "{events}");
        assert_eq!(tagged_prefix("a{b}"), "a{b}");
        let keys = ["replicas", "channels", "replica:1f"]
            .map(|k| format!("{}:occupancy:{k}", tagged_prefix("events")));
        assert!(
            keys.iter()
                .all(|k| key_slot(k.as_bytes()) == key_slot(b"events"))
        );
    }

    #[test]
    fn should_compute_the_xmodem_check_value() {
        assert_eq!(crc16(b"123456789"), 0x31c3);
    }

    #[test]
    fn should_place_keys_beside_their_channel() {
        for channel in ["events", "events:orders", "a{b}c", "{x}", "{x}{}", "a{b}}"] {
            let key = key_beside(channel, "history").unwrap();
            assert_eq!(
                key_slot(key.as_bytes()),
                key_slot(channel.as_bytes()),
                "{channel} / {key}"
            );
            assert!(check_shard_channel(channel).is_ok());
        }
        assert_eq!(
            key_beside("events:orders", "history").as_deref(),
            Some("{events:orders}:history")
        );
        assert_eq!(
            key_beside("a{b}c", "history").as_deref(),
            Some("a{b}c:history")
        );
        for impossible in ["x{}y", "{", "}{", "a}b", "{}"] {
            assert_eq!(key_beside(impossible, "history"), None, "{impossible}");
            assert!(check_shard_channel(impossible).is_err());
        }
    }

    fn bulk(s: &str) -> BytesFrame {
        BytesFrame::BulkString(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn node(host: &str, port: i64, role: &str, health: &str) -> BytesFrame {
        BytesFrame::Array(vec![
            bulk("id"),
            bulk("0123456789abcdef"),
            bulk("port"),
            BytesFrame::Integer(port),
            bulk("ip"),
            bulk("10.9.9.9"),
            bulk("endpoint"),
            bulk(host),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            BytesFrame::Integer(14),
            bulk("health"),
            bulk(health),
        ])
    }

    fn shard(slots: &[i64], nodes: Vec<BytesFrame>) -> BytesFrame {
        BytesFrame::Array(vec![
            bulk("slots"),
            BytesFrame::Array(slots.iter().map(|&s| BytesFrame::Integer(s)).collect()),
            bulk("nodes"),
            BytesFrame::Array(nodes),
        ])
    }

    fn sender() -> NodeAddr {
        NodeAddr::new("10.0.0.9", 7000)
    }

    fn three_shards() -> BytesFrame {
        BytesFrame::Array(vec![
            shard(
                &[10923, 16383],
                vec![
                    node("10.0.0.3", 7002, "master", "online"),
                    node("10.0.0.4", 7003, "replica", "online"),
                ],
            ),
            shard(
                &[0, 99, 100, 5460],
                vec![
                    node("10.0.0.5", 7004, "replica", "loading"),
                    node("10.0.0.1", 7000, "master", "online"),
                ],
            ),
            shard(
                &[5461, 10922],
                vec![
                    node("10.0.0.2", 7001, "master", "failed"),
                    node("", 7005, "master", "online"),
                    node("?", 7006, "replica", "online"),
                    node("10.0.0.8", 7008, "replica", "failed"),
                ],
            ),
            // A master with no slots (just added to the cluster).
            shard(&[], vec![node("10.0.0.7", 7007, "master", "online")]),
        ])
    }

    #[test]
    fn should_parse_cluster_shards() {
        let map = parse_cluster_shards(&three_shards(), &sender()).unwrap();
        assert!(map.covers_all());
        assert_eq!(map.ranges().len(), 4);
        assert_eq!(map.owner(0), Some(&NodeAddr::new("10.0.0.1", 7000)));
        assert_eq!(map.owner(5460), Some(&NodeAddr::new("10.0.0.1", 7000)));
        // The online master, not the failed one; an empty endpoint is the node that answered.
        assert_eq!(map.owner(5461), Some(&NodeAddr::new("10.0.0.9", 7005)));
        assert_eq!(map.owner(16383), Some(&NodeAddr::new("10.0.0.3", 7002)));
        assert_eq!(
            map.range_of(6000).unwrap().replicas,
            vec![],
            "'?' and failed are left out"
        );
        assert_eq!(
            map.range_of(0).unwrap().replicas,
            vec![NodeAddr::new("10.0.0.5", 7004)],
            "a loading replica is a replica"
        );
        assert_eq!(
            map.range_of(16000).unwrap().replicas,
            vec![NodeAddr::new("10.0.0.4", 7003)]
        );
        assert_eq!(map.masters().len(), 3);
    }

    #[test]
    fn should_refuse_malformed_shard_lists() {
        let master = || vec![node("h", 1, "master", "online")];
        let bad = [
            bulk("x"),
            BytesFrame::Array(vec![bulk("x")]),
            BytesFrame::Array(vec![shard(&[0, 16384], master())]),
            BytesFrame::Array(vec![shard(&[5, 4], master())]),
            BytesFrame::Array(vec![shard(&[0, 10, 10, 20], master())]),
            BytesFrame::Array(vec![shard(&[0], master())]),
            BytesFrame::Array(vec![shard(
                &[0, 10],
                vec![node("h", 70000, "master", "online")],
            )]),
            BytesFrame::Array(vec![BytesFrame::Array(vec![bulk("slots")])]),
            BytesFrame::Array(vec![shard(&[0, 10], vec![bulk("node")])]),
        ];
        for reply in bad {
            assert!(
                parse_cluster_shards(&reply, &sender()).is_err(),
                "{reply:?}"
            );
        }
        let partial = BytesFrame::Array(vec![shard(&[0, 10], master())]);
        let map = parse_cluster_shards(&partial, &sender()).unwrap();
        assert!(!map.covers_all());
        assert_eq!(map.owner(11), None);
    }

    #[test]
    fn should_classify_error_replies() {
        let to = NodeAddr::new("127.0.0.1", 6381);
        for (error, expected) in [
            (
                "MOVED 3999 127.0.0.1:6381",
                ClusterReply::Moved {
                    slot: 3999,
                    to: to.clone(),
                },
            ),
            (
                "ASK 3999 127.0.0.1:6381",
                ClusterReply::Ask {
                    slot: 3999,
                    to: to.clone(),
                },
            ),
            (
                "MOVED 1 :6381",
                ClusterReply::Moved {
                    slot: 1,
                    to: NodeAddr::new("10.0.0.9", 6381),
                },
            ),
            (
                "MOVED 2 ::1:6381",
                ClusterReply::Moved {
                    slot: 2,
                    to: NodeAddr::new("::1", 6381),
                },
            ),
            ("CLUSTERDOWN The cluster is down", ClusterReply::Down),
            (
                "TRYAGAIN Multiple keys request during rehashing of slot",
                ClusterReply::TryAgain,
            ),
            ("MOVED 16384 h:1", ClusterReply::Plain),
            ("MOVED x h:1", ClusterReply::Plain),
            ("MOVED 1", ClusterReply::Plain),
            ("MOVED 1 h:port", ClusterReply::Plain),
            ("ERR unknown command", ClusterReply::Plain),
            ("", ClusterReply::Plain),
        ] {
            assert_eq!(
                ClusterReply::classify(error, &sender()),
                expected,
                "{error}"
            );
        }
    }

    fn map(ranges: &[(u16, u16, &str, &[&str])]) -> SlotMap {
        let addr = |s: &str| NodeAddr::new("h", s.parse().unwrap());
        SlotMap::from_ranges(
            ranges
                .iter()
                .map(|(start, end, master, replicas)| SlotRange {
                    start: *start,
                    end: *end,
                    master: addr(master),
                    replicas: replicas.iter().map(|r| addr(r)).collect(),
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn should_tell_a_failover_from_a_reshard() {
        let before = map(&[
            (0, 5460, "1", &["4"]),
            (5461, 10922, "2", &["5"]),
            (10923, 16383, "3", &["6"]),
        ]);
        let failover = map(&[
            (0, 5460, "1", &[]),
            (5461, 10922, "5", &[]),
            (10923, 16383, "3", &["6"]),
        ]);
        let change = compare(&before, &failover);
        assert_eq!(change.failovers, vec![NodeAddr::new("h", 2)]);
        assert_eq!(change.slots_moved, 0);
        let reshard = map(&[
            (0, 99, "2", &["5"]),
            (100, 5460, "1", &["4"]),
            (5461, 10922, "2", &["5"]),
            (10923, 16383, "3", &["6"]),
        ]);
        let change = compare(&before, &reshard);
        assert!(change.failovers.is_empty());
        assert_eq!(change.slots_moved, 100);
        assert_eq!(compare(&before, &before), MapChange::default());
        // From nothing (the first read): nothing moved.
        assert_eq!(compare(&SlotMap::default(), &before), MapChange::default());
    }

    #[test]
    fn should_read_the_map_at_start_then_periodically() {
        let t0 = Instant::now();
        let mut topology = Topology::new(t0);
        assert!(topology.refresh_due(t0));
        assert_eq!(topology.route(0), None);
        topology.refresh_sent(t0);
        assert!(
            !topology.refresh_due(t0 + Duration::from_secs(60)),
            "one read at a time"
        );
        let full = map(&[(0, 16383, "1", &["2"])]);
        topology.refreshed(t0, full);
        assert!(topology.is_known());
        assert_eq!(topology.route(77), Some(&NodeAddr::new("h", 1)));
        assert!(!topology.refresh_due(t0 + REFRESH_EVERY / 2));
        assert!(topology.refresh_due(t0 + REFRESH_EVERY));
        assert_eq!(
            topology.next_deadline(Duration::from_secs(5)),
            t0 + REFRESH_EVERY
        );
        assert_eq!(topology.counts().refreshes, 1);
    }

    #[test]
    fn should_follow_moved_at_once_and_read_the_map_again() {
        let t0 = Instant::now();
        let mut topology = Topology::new(t0);
        topology.refresh_sent(t0);
        topology.refreshed(t0, map(&[(0, 16383, "1", &[])]));
        let verdict = topology.on_error(t0, "MOVED 42 h:2", &NodeAddr::new("h", 1));
        assert_eq!(
            verdict,
            ClusterReply::Moved {
                slot: 42,
                to: NodeAddr::new("h", 2)
            }
        );
        assert_eq!(topology.route(42), Some(&NodeAddr::new("h", 2)));
        assert_eq!(topology.route(43), Some(&NodeAddr::new("h", 1)));
        assert_eq!(topology.masters().len(), 2);
        assert!(topology.refresh_due(t0));
        assert_eq!(topology.last_reason(), RefreshReason::Start);
        topology.refresh_sent(t0);
        assert_eq!(topology.last_reason(), RefreshReason::Moved);
        // The read replaces the note, whatever it says.
        topology.refreshed(t0, map(&[(0, 16383, "1", &[])]));
        assert_eq!(topology.route(42), Some(&NodeAddr::new("h", 1)));
        // ASK changes nothing but the count.
        let ask = topology.on_error(t0, "ASK 42 h:3", &NodeAddr::new("h", 1));
        assert!(matches!(ask, ClusterReply::Ask { .. }));
        assert_eq!(topology.route(42), Some(&NodeAddr::new("h", 1)));
        assert!(!topology.refresh_due(t0));
        assert_eq!(topology.counts().redirects, 2);
        assert!(matches!(
            topology.on_error(t0, "CLUSTERDOWN x", &NodeAddr::new("h", 1)),
            ClusterReply::Down
        ));
        assert!(topology.refresh_due(t0));
    }

    #[test]
    fn should_read_often_while_a_master_is_unreachable_or_reads_fail() {
        let t0 = Instant::now();
        let mut topology = Topology::new(t0);
        topology.refresh_sent(t0);
        topology.refresh_failed(t0);
        assert!(!topology.refresh_due(t0));
        assert!(topology.refresh_due(t0 + FAST_REFRESH));
        topology.refresh_sent(t0);
        topology.refreshed(t0, map(&[(0, 16383, "1", &["2"])]));
        topology.master_unreachable(t0);
        assert!(topology.refresh_due(t0 + FAST_REFRESH));
        topology.refresh_sent(t0);
        let change = topology.refreshed(t0, map(&[(0, 16383, "2", &[])]));
        assert_eq!(change.failovers, vec![NodeAddr::new("h", 1)]);
        assert_eq!(topology.counts().failovers, 1);
        // A map with unserved slots is read again soon.
        topology.refresh_sent(t0);
        topology.refreshed(t0, map(&[(0, 100, "2", &[])]));
        assert!(topology.refresh_due(t0 + FAST_REFRESH));
        // A read that never comes back is given up.
        topology.refresh_sent(t0);
        topology.expire_read(t0 + Duration::from_secs(5), Duration::from_secs(5));
        assert!(topology.refresh_due(t0 + Duration::from_secs(5) + FAST_REFRESH));
    }
}
