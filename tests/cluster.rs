//! Redis Cluster, against a real cluster (six `redis-server --cluster-enabled yes`, three
//! masters with a replica each): Herald's slot arithmetic and slot-map reading, and delivery
//! across replicas through sharded pub/sub.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use bytes::BytesMut;
use herald::channel::key_beside;
use herald::resp::cluster::{ClusterReply, NodeAddr, key_slot, parse_cluster_shards};
use herald::resp::cmd::{self, Decoder, Reply, RespLimits};
use support::cluster::RedisCluster;
use support::*;

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

/// One channel name per master: `events:<name>` hashes to a slot each master serves.
fn channels_on_every_master(cluster: &RedisCluster) -> Vec<String> {
    let masters = cluster.masters();
    let lines = cluster.node_lines();
    let mut names: Vec<String> = Vec::new();
    let mut covered: Vec<u16> = Vec::new();
    for i in 0..1000 {
        let name = format!("c{i}");
        let slot = key_slot(format!("events:{name}").as_bytes());
        let owner = lines
            .iter()
            .find(|n| n.master && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .unwrap()
            .port;
        if !covered.contains(&owner) {
            covered.push(owner);
            names.push(name);
        }
        if covered.len() == masters.len() {
            return names;
        }
    }
    panic!("no channel names cover every master");
}

/// Starts Herald on one node's URL (`REDIS_CLUSTER=auto` finds out it is a cluster).
fn herald_on_node(node_url: &str, env: &[(&str, &str)]) -> Herald {
    let mut env = env.to_vec();
    env.push(("PUBSUB_CACHE_URL", node_url));
    let herald = Herald::with(&[], &env);
    wait_redis_connected(&herald);
    herald
}

#[test]
fn events_through_either_replica_reach_every_subscriber_across_three_masters() {
    let cluster = RedisCluster::start();
    // One Herald on a master, the other on a node that is a replica: both find the masters.
    let first = herald_on_node(&cluster.nodes[0].url(), &[]);
    let second = herald_on_node(&cluster.nodes[4].url(), &[]);
    let names = channels_on_every_master(&cluster);
    let path = format!("/ws?channels={}", names.join(","));
    let mut clients: Vec<Client> = (0..2)
        .flat_map(|_| {
            [
                ws_connect(first.port, &path),
                ws_connect(second.port, &path),
            ]
        })
        .collect();
    wait_redis_connected(&first);
    wait_redis_connected(&second);

    let mut published: Vec<(String, String)> = Vec::new();
    for round in 0..10 {
        for (i, name) in names.iter().enumerate() {
            let via = if (round + i) % 2 == 0 {
                &first
            } else {
                &second
            };
            let message = format!("{name}-{round}");
            let ack = publish_to(via.port, name, "tick", &message);
            // SPUBLISH counts the owning shard's subscribers: one link per Herald.
            assert_eq!(ack["receivers"], 2, "{ack}");
            published.push((name.clone(), message));
        }
    }
    for client in &mut clients {
        let mut got: Vec<(String, String)> = Vec::new();
        for _ in 0..published.len() {
            let event = next_event(client);
            got.push((
                event["channel"].as_str().unwrap().to_string(),
                event["message"].as_str().unwrap().to_string(),
            ));
        }
        for name in &names {
            let sent: Vec<&(String, String)> =
                published.iter().filter(|(c, _)| c == name).collect();
            let received: Vec<&(String, String)> = got.iter().filter(|(c, _)| c == name).collect();
            assert_eq!(received, sent, "channel {name}: every event once, in order");
        }
    }

    for name in &names {
        let channel = format!("events:{name}");
        let owner = cluster.owner_of_slot(cluster.keyslot(&channel));
        for master in cluster.masters() {
            let shown =
                cluster
                    .node(master)
                    .command_array(&["PUBSUB", "SHARDCHANNELS", "events:*"]);
            assert_eq!(
                shown.contains(&channel),
                master == owner,
                "{channel} on {master} (owner {owner}): {shown:?}"
            );
        }
        let stream = format!("{{{channel}}}:history");
        assert_eq!(cluster.node(owner).command(&["XLEN", &stream]), ":10");
    }
    let health = get(first.port, "/health").json();
    let shards = health["shards"].as_array().expect("shards in /health");
    assert_eq!(shards.len(), 3, "{health}");
    assert!(shards.iter().all(|s| s["state"] == "connected"), "{health}");
    let page = get(first.port, "/metrics").body;
    assert!(metric_in(&page, "herald_redis_cluster_refreshes_total").unwrap() >= 1.0);
    // Occupancy across both replicas: REDIS_CLUSTER=auto found the cluster after the keys
    // were named, and renamed them into one slot.
    for herald in [&first, &second] {
        wait_until("both replicas' subscribers counted", || {
            let count = get(herald.port, &format!("/channels/{}", names[0]));
            count.status == 200 && count.json()["subscribers"] == 4
        });
    }
}

/// What a publisher saw of one publish.
#[derive(Debug, Clone)]
struct Sent {
    channel: String,
    message: String,
    status: u16,
    at: Instant,
}

/// Reads events until every acknowledged one of `sent` has arrived (bounded by `WAIT` per
/// read); returns (channel, message, id) in arrival order. A notice fails the test.
fn receive_all(client: &mut Client, sent: &[Sent]) -> Vec<(String, String, String)> {
    let mut waiting: std::collections::HashSet<&str> = sent
        .iter()
        .filter(|s| s.status == 200)
        .map(|s| s.message.as_str())
        .collect();
    let mut got = Vec::new();
    let start = Instant::now();
    while !waiting.is_empty() {
        assert!(
            start.elapsed() < 3 * WAIT,
            "still missing {} events, e.g. {:?}",
            waiting.len(),
            waiting.iter().take(5).collect::<Vec<_>>()
        );
        let event = next_event(client);
        assert!(event["op"].is_null(), "a notice: {event}");
        let message = event["message"].as_str().unwrap().to_string();
        waiting.remove(message.as_str());
        got.push((
            event["channel"].as_str().unwrap().to_string(),
            message,
            event["id"].as_str().unwrap_or_default().to_string(),
        ));
    }
    got
}

/// Every acknowledged event exactly once, each channel in publish order; events whose
/// publish failed (503: refused, or lost in flight with its master) at most once.
fn check_delivery(who: &str, got: &[(String, String, String)], sent: &[Sent]) -> usize {
    let mut seen = std::collections::HashSet::new();
    let duplicates = got
        .iter()
        .filter(|(_, m, _)| !seen.insert(m.clone()))
        .count();
    assert_eq!(duplicates, 0, "{who}: duplicates");
    let channels: std::collections::BTreeSet<&str> =
        sent.iter().map(|s| s.channel.as_str()).collect();
    for channel in channels {
        let order: Vec<&str> = sent
            .iter()
            .filter(|s| s.channel == channel)
            .map(|s| s.message.as_str())
            .collect();
        let arrived: Vec<usize> = got
            .iter()
            .filter(|(c, _, _)| c == channel)
            .map(|(_, m, _)| order.iter().position(|o| o == m).expect("an event we sent"))
            .collect();
        assert!(
            arrived.windows(2).all(|w| w[0] < w[1]),
            "{who}: channel {channel} out of order: {arrived:?}"
        );
    }
    duplicates
}

#[test]
fn a_master_killed_mid_stream_loses_no_acknowledged_event() {
    let mut cluster = RedisCluster::start();
    let first = herald_on_node(&cluster.nodes[0].url(), &[]);
    let second = herald_on_node(&cluster.nodes[1].url(), &[]);
    let names = channels_on_every_master(&cluster);
    let path = format!("/ws?channels={}", names.join(","));
    let mut staying = ws_connect(first.port, &path);
    let mut leaving = ws_connect(second.port, &path);
    wait_redis_connected(&first);
    wait_redis_connected(&second);

    let victim_channel = names[0].clone();
    let victim = cluster.owner_of_slot(cluster.keyslot(&format!("events:{victim_channel}")));
    let publish_one = |n: usize| {
        let name = &names[n % names.len()];
        let via = if n.is_multiple_of(2) {
            first.port
        } else {
            second.port
        };
        let message = format!("n{n}");
        let path = format!("/events/{name}?event_type=tick&message={message}");
        let status = post(via, &path, None, "").status;
        Sent {
            channel: name.clone(),
            message,
            status,
            at: Instant::now(),
        }
    };
    let pause = || std::thread::sleep(std::time::Duration::from_millis(10));
    let mut sent: Vec<Sent> = Vec::new();
    for n in 0..30 {
        sent.push(publish_one(n));
        pause();
    }
    assert!(sent.iter().all(|s| s.status == 200));
    // The leaving client's resume point: the last event of each channel it has.
    let before = receive_all(&mut leaving, &sent);
    drop(leaving);
    let since: Vec<String> = names
        .iter()
        .map(|name| {
            let last = before.iter().rev().find(|(c, _, _)| c == name).unwrap();
            format!("{name}:{}", last.2)
        })
        .collect();

    let killed_at = Instant::now();
    cluster.kill(victim);
    // Publishing goes on through the failover, until the killed master's channel has been
    // acknowledged 20 times after its first refusal.
    let mut n = 30;
    let mut after_recovery = 0;
    while after_recovery < 20 {
        assert!(
            n < 30 + 5000,
            "publishes to the killed master's slots never recovered"
        );
        let one = publish_one(n);
        let recovered = sent.iter().any(|s| s.status != 200);
        if recovered && one.status == 200 && one.channel == victim_channel {
            after_recovery += 1;
        }
        sent.push(one);
        n += 1;
        pause();
    }
    cluster.wait_healthy(3, 2);
    for _ in 0..6 {
        sent.push(publish_one(n));
        n += 1;
    }
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.status != 200).collect();
    let acknowledged = sent.iter().filter(|s| s.status == 200).count();
    let first_refusal = refused.first().map(|s| s.at.duration_since(killed_at));
    let last_refusal = refused.last().map(|s| s.at.duration_since(killed_at));

    let got = receive_all(&mut staying, &sent);
    let duplicates = check_delivery("the client that stayed", &got, &sent);
    let resumed_path = format!("{path}&since={}", since.join(","));
    let mut resumed = ws_connect(second.port, &resumed_path);
    let after: Vec<Sent> = sent[30..].to_vec();
    let got_resumed = receive_all(&mut resumed, &after);
    check_delivery("the client that resumed", &got_resumed, &after);
    let metrics = get(first.port, "/metrics").body;
    let failovers = metric_in(&metrics, "herald_redis_cluster_failovers_total").unwrap_or(0.0);
    eprintln!(
        "failover: {} publishes, {acknowledged} acknowledged, {} refused (503) from {:?} to {:?} after the kill; \
         the client that stayed received {} events ({} duplicates), the resumed one {}; failovers seen by the first Herald: {failovers}",
        sent.len(),
        refused.len(),
        first_refusal,
        last_refusal,
        got.len(),
        duplicates,
        got_resumed.len()
    );
    assert!(failovers >= 1.0, "the failover was counted");
    let health = get(first.port, "/health").json();
    assert_eq!(health["redis"], "connected", "{health}");
}

/// Publishes in a thread, round-robin over `names` through `ports`, every 5 ms, until told
/// to stop (at most 4000 publishes).
fn publish_in_background(
    ports: Vec<u16>,
    names: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Sent>> {
    std::thread::spawn(move || {
        let mut sent = Vec::new();
        for n in 0..4000 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let name = &names[n % names.len()];
            let port = ports[n % ports.len()];
            let message = format!("n{n}");
            let path = format!("/events/{name}?event_type=tick&message={message}");
            let status = post(port, &path, None, "").status;
            sent.push(Sent {
                channel: name.clone(),
                message,
                status,
                at: Instant::now(),
            });
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        sent
    })
}

#[test]
fn a_resharded_slot_keeps_delivery_going() {
    let cluster = RedisCluster::start();
    let first = herald_on_node(&cluster.nodes[0].url(), &[]);
    let second = herald_on_node(&cluster.nodes[2].url(), &[]);
    let names = channels_on_every_master(&cluster);
    let path = format!("/ws?channels={}", names.join(","));
    let mut on_first = ws_connect(first.port, &path);
    let mut on_second = ws_connect(second.port, &path);
    wait_redis_connected(&first);
    wait_redis_connected(&second);

    let moving = format!("events:{}", names[0]);
    let slot = cluster.keyslot(&moving);
    let from = cluster.owner_of_slot(slot);
    let to = *cluster.masters().iter().find(|&&m| m != from).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher =
        publish_in_background(vec![first.port, second.port], names.clone(), stop.clone());
    std::thread::sleep(std::time::Duration::from_millis(300));
    cluster.move_slot(slot, to);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = publisher.join().unwrap();

    let refused: Vec<&Sent> = sent.iter().filter(|s| s.status != 200).collect();
    assert!(
        refused.is_empty(),
        "publishes refused during the reshard: {refused:?}"
    );
    for (who, client) in [("first", &mut on_first), ("second", &mut on_second)] {
        let got = receive_all(client, &sent);
        check_delivery(who, &got, &sent);
    }
    assert_eq!(cluster.owner_of_slot(slot), to);
    let shown = cluster
        .node(to)
        .command_array(&["PUBSUB", "SHARDCHANNELS", "events:*"]);
    assert!(
        shown.contains(&moving),
        "{moving} on its new node: {shown:?}"
    );
    let stream = format!("{{{moving}}}:history");
    let kept = cluster.node(to).command(&["XLEN", &stream]);
    let published = sent.iter().filter(|s| s.channel == names[0]).count();
    assert_eq!(
        kept,
        format!(":{published}"),
        "the stream moved with its slot"
    );
    let metrics = get(first.port, "/metrics").body;
    eprintln!(
        "reshard: {} publishes, none refused; redirects {:?}, slot-map reads {:?} (first Herald)",
        sent.len(),
        metric_in(&metrics, "herald_redis_cluster_redirects_total"),
        metric_in(&metrics, "herald_redis_cluster_refreshes_total")
    );
}

#[test]
fn an_unreachable_cluster_at_start_is_explained_then_joined() {
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let urls = format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{}",
        ports[0], ports[1]
    );
    let herald = Herald::with(&[], &[("PUBSUB_CACHE_URL", &urls), ("REDIS_CLUSTER", "on")]);
    let page = get(herald.port, "/");
    assert_eq!(page.status, 200, "the page is served without Redis");
    let refused = post(herald.port, "/events?event_type=a&message=b", None, "");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("Redis Cluster"), "{}", refused.body);
    let health = get(herald.port, "/health").json();
    assert_eq!(health["redis"], "disconnected", "{health}");
    let error = health["redis_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused") || error.contains("connect"),
        "{health}"
    );

    let cluster = RedisCluster::start_on(&ports);
    wait_redis_connected(&herald);
    let mut client = ws_connect(herald.port, "/ws");
    wait_redis_connected(&herald);
    let ack = publish(herald.port, "after", "the cluster came");
    assert_eq!(ack["receivers"], 1, "{ack}");
    assert_eq!(next_event(&mut client)["message"], "the cluster came");
    let health = get(herald.port, "/health").json();
    assert_eq!(
        health["shards"].as_array().map(Vec::len),
        Some(3),
        "{health}"
    );
    // Occupancy's keys share one slot on a cluster (REDIS_CLUSTER=on tags them).
    wait_until("the subscriber's count to reach Redis", || {
        let count = get(herald.port, "/channels/events");
        count.status == 200 && count.json()["subscribers"] == 1
    });
    drop(cluster);
}

/// `--threads`: each reactor is a cluster client of its own (its own command and shard
/// subscriber links), so the owning node counts one shard subscription per reactor with
/// clients on the channel, and `receivers` says the same.
#[test]
fn every_reactor_of_a_threaded_herald_has_its_own_cluster_links() {
    let cluster = RedisCluster::start();
    let herald = Herald::with(
        &["--threads", "2"],
        &[
            ("PUBSUB_CACHE_URL", &cluster.nodes[0].url()),
            ("REDIS_CLUSTER", "on"),
        ],
    );
    wait_redis_connected(&herald);
    let names = channels_on_every_master(&cluster);
    let name = &names[1];
    let channel = format!("events:{name}");
    let owner = cluster.owner_of_slot(cluster.keyslot(&channel));
    // Connections are spread over the reactors by the kernel (SO_REUSEPORT): enough of them
    // that both reactors very likely hold some; the check below holds either way.
    let mut clients: Vec<Client> = (0..12)
        .map(|_| ws_connect(herald.port, &format!("/ws?channels={name}")))
        .collect();
    wait_redis_connected(&herald);
    let subscribed = || {
        let numsub = cluster
            .node(owner)
            .command_array(&["PUBSUB", "SHARDNUMSUB", &channel]);
        numsub
            .get(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Each reactor subscribed when its first client arrived; the count settles within ms.
    wait_until("the reactors' shard subscriptions to settle", || {
        let before = subscribed();
        std::thread::sleep(std::time::Duration::from_millis(300));
        before >= 1 && subscribed() == before
    });
    let reactors = subscribed();
    assert!(
        (1..=2).contains(&reactors),
        "{reactors} shard subscriptions"
    );
    for i in 0..10 {
        let ack = publish_to(herald.port, name, "tick", &i.to_string());
        assert_eq!(ack["receivers"], reactors, "{ack}");
    }
    for client in &mut clients {
        for i in 0..10 {
            assert_eq!(next_event(client)["message"], i.to_string());
        }
    }
    let health = get(herald.port, "/health").json();
    eprintln!(
        "threads: 2 reactors, {reactors} hold shard subscriptions to {channel}; health {}",
        health["redis"]
    );
}
