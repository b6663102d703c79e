//! Redis Cluster: Herald's slot arithmetic and slot-map reading checked against a real
//! cluster (six `redis-server --cluster-enabled yes`, three masters with a replica each).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use bytes::BytesMut;
use herald::resp::cluster::{ClusterReply, NodeAddr, key_beside, key_slot, parse_cluster_shards};
use herald::resp::cmd::{self, Decoder, Reply, RespLimits};
use support::WAIT;
use support::cluster::RedisCluster;

/// Sends one command to `port` and decodes its reply with Herald's own decoder.
fn ask(port: u16, args: &[&str]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = BytesMut::new();
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    cmd::encode(&mut out, &args);
    stream.write_all(&out).unwrap();
    let mut decoder = Decoder::new(RespLimits::for_pages(1 << 20, 1000, 1 << 20));
    let mut input = BytesMut::new();
    let mut buf = [0u8; 16 * 1024];
    let start = Instant::now();
    loop {
        if let Some(reply) = decoder.decode(&mut input).unwrap() {
            return reply;
        }
        assert!(start.elapsed() < WAIT, "no reply to {args:?}");
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        input.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn slots_slot_map_and_redirects_agree_with_a_real_cluster() {
    let cluster = RedisCluster::start();
    // Herald's Redis names: the shard channel and its stream, the stream beside it.
    let names = [
        "events",
        "events:orders",
        "events:a",
        "events:zz-9",
        "p{t}:x",
        "{events}",
    ];
    for channel in names {
        let slot = cluster.keyslot(channel);
        assert_eq!(key_slot(channel.as_bytes()), slot, "{channel}");
        let stream = key_beside(channel, "history").unwrap();
        assert_eq!(cluster.keyslot(&stream), slot, "{stream}");
    }
    for i in 0..200 {
        let key = format!("events:channel-{i}");
        assert_eq!(key_slot(key.as_bytes()), cluster.keyslot(&key), "{key}");
    }

    let first = cluster.nodes[0].port;
    let sender = NodeAddr::new("127.0.0.1", first);
    let Reply::Other(slots) = ask(first, &["CLUSTER", "SHARDS"]) else {
        panic!("CLUSTER SLOTS is an array")
    };
    let map = parse_cluster_shards(&slots, &sender).unwrap();
    assert!(map.covers_all());
    let mut masters: Vec<u16> = map.masters().iter().map(|m| m.port).collect();
    let mut expected = cluster.masters();
    masters.sort();
    expected.sort();
    assert_eq!(masters, expected);
    let lines = cluster.node_lines();
    for slot in (0..16384)
        .step_by(61)
        .chain([0, 5460, 5461, 10922, 10923, 16383])
    {
        let owner = map.owner(slot).expect("every slot served").port;
        let serving = lines
            .iter()
            .find(|n| n.master && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .unwrap();
        assert_eq!(owner, serving.port, "slot {slot}");
        let replicas = &map.range_of(slot).unwrap().replicas;
        assert_eq!(replicas.len(), 1, "one replica per master: {replicas:?}");
    }

    // A key asked of a node that does not serve its slot: MOVED to the one that does.
    let key = "events:orders";
    let slot = key_slot(key.as_bytes());
    let owner = map.owner(slot).unwrap().clone();
    let wrong = *masters.iter().find(|&&p| p != owner.port).unwrap();
    let Reply::Error(error) = ask(wrong, &["GET", key]) else {
        panic!("a redirect")
    };
    let sender = NodeAddr::new("127.0.0.1", wrong);
    assert_eq!(
        ClusterReply::classify(&error, &sender),
        ClusterReply::Moved { slot, to: owner }
    );
}
