//! A real Redis Cluster for tests: six `redis-server --cluster-enabled yes` on free loopback
//! ports (client and cluster-bus port both picked free), joined by `redis-cli --cluster
//! create ... --cluster-replicas 1`: three masters, one replica each, a short
//! `cluster-node-timeout` so a killed master's replica takes over within seconds. Every
//! process is stopped by PID when the cluster is dropped; every wait is bounded.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Redis, free_port, signal, wait_until};

/// Milliseconds a node may be silent before the others call it failed (then its replica is
/// promoted). Short for quick failovers, long enough that a busy 2-core machine does not
/// fail a healthy node.
pub const NODE_TIMEOUT_MS: u64 = 2000;
/// How long the cluster may take to form, or to recover from a failover.
pub const CLUSTER_WAIT: Duration = Duration::from_secs(40);

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

pub struct RedisCluster {
    /// Six nodes; which are masters changes with failovers (`masters()`).
    pub nodes: Vec<Redis>,
    dir: PathBuf,
}

/// One node's line in `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// The master's id, for a replica.
    pub replica_of: Option<String>,
    /// Slot ranges served (`0-5460`, `7`), migrations (`[..]`) left out.
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts six nodes and joins them: three masters with one replica each. Tries again
    /// on fresh ports if a port was taken meanwhile (tests run in parallel, each picking
    /// free ports that another may take before its server binds them).
    pub fn start() -> RedisCluster {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
            match RedisCluster::try_start_on(&ports) {
                Ok(cluster) => return cluster,
                Err(why) => failures.push(why),
            }
        }
        panic!("no cluster in 3 attempts: {failures:#?}");
    }

    /// Starts six nodes on these ports (a test that pointed Herald at them first).
    pub fn start_on(ports: &[u16]) -> RedisCluster {
        RedisCluster::try_start_on(ports).unwrap_or_else(|why| panic!("{why}"))
    }

    fn try_start_on(ports: &[u16]) -> Result<RedisCluster, String> {
        let dir = std::env::temp_dir().join(format!(
            "herald-cluster-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let nodes: Vec<Redis> = ports
            .iter()
            .enumerate()
            .map(|(index, &port)| {
                let config = dir.join(format!("nodes-{index}.conf"));
                let bus = free_port().to_string();
                let timeout = NODE_TIMEOUT_MS.to_string();
                let args = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    config.to_str().unwrap(),
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    &timeout,
                    // A replica takes over whatever its lag: the tests kill masters on purpose.
                    "--cluster-replica-validity-factor",
                    "0",
                    "--dir",
                    dir.to_str().unwrap(),
                ];
                let mut node = Redis {
                    port,
                    child: None,
                    args: args.iter().map(|a| a.to_string()).collect(),
                };
                node.spawn();
                node
            })
            .collect();
        let cluster = RedisCluster { nodes, dir };
        for node in &cluster.nodes {
            // The server answering on the port must be ours, not another test's.
            let ours = node.child.as_ref().map(|c| c.id());
            let info = match ours {
                Some(_) => node.command_bulk(&["INFO", "server"]),
                None => String::new(),
            };
            let pid = ours.map(|p| format!("process_id:{p}\r\n"));
            if !pid.is_some_and(|p| info.contains(&p)) {
                return Err(format!("redis-server did not start on port {}", node.port));
            }
        }
        let create_log = cluster.dir.join("create.log");
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let log = std::fs::File::create(&create_log).unwrap();
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = create
            .spawn()
            .expect("spawn redis-cli (is redis-tools installed? .ci/run installs it)");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > CLUSTER_WAIT {
                let _ = child.kill();
                let _ = child.wait();
                return Err("redis-cli --cluster create did not finish".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            let output = std::fs::read_to_string(&create_log).unwrap_or_default();
            return Err(format!("redis-cli --cluster create failed:\n{output}"));
        }
        cluster.wait_healthy(3, 3);
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>` of each node, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, port: u16) -> &Redis {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// A node still running, to ask about the cluster.
    fn any_live(&self) -> &Redis {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a live node")
    }

    /// `CLUSTER NODES` as one live node sees it.
    pub fn node_lines(&self) -> Vec<NodeLine> {
        parse_nodes(&self.any_live().command_bulk(&["CLUSTER", "NODES"]))
    }

    /// Ports of the masters serving slots, as one live node sees it.
    pub fn masters(&self) -> Vec<u16> {
        self.node_lines()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// The port of the master serving `slot`.
    pub fn owner_of_slot(&self, slot: u16) -> u16 {
        self.node_lines()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// `CLUSTER KEYSLOT` of a key or shard channel, as Redis computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.any_live()
            .command(&["CLUSTER", "KEYSLOT", key])
            .trim_start_matches(':')
            .parse()
            .unwrap()
    }

    /// Waits until every live node says the cluster is ok and agrees on `masters` masters
    /// serving all 16384 slots (after a failover: the promoted replica included), and sees
    /// `replicas` replicas, each with its replication link up.
    pub fn wait_healthy(&self, masters: usize, replicas: usize) {
        let start = Instant::now();
        loop {
            let healthy = self.nodes.iter().filter(|n| n.is_running()).all(|node| {
                let info = node.command_bulk(&["CLUSTER", "INFO"]);
                let lines = parse_nodes(&node.command_bulk(&["CLUSTER", "NODES"]));
                let serving: Vec<&NodeLine> = lines
                    .iter()
                    .filter(|n| n.master && !n.failed && !n.slots.is_empty())
                    .collect();
                let slots: u32 = serving
                    .iter()
                    .flat_map(|n| n.slots.iter())
                    .map(|&(a, b)| u32::from(b - a) + 1)
                    .sum();
                let replica_count = lines
                    .iter()
                    .filter(|n| !n.master && !n.failed && n.replica_of.is_some())
                    .count();
                let synced = !lines.iter().any(|n| n.port == node.port && !n.master)
                    || node
                        .command_bulk(&["INFO", "replication"])
                        .contains("master_link_status:up");
                info.contains("cluster_state:ok")
                    && serving.len() == masters
                    && slots == 16384
                    && replica_count == replicas
                    && synced
            });
            if healthy {
                return;
            }
            assert!(
                start.elapsed() < CLUSTER_WAIT,
                "cluster not healthy in time: {:?}",
                self.node_lines()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the node on `port` with SIGKILL (no goodbye to anyone).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        signal(node.pid(), "KILL");
        node.stop();
    }

    /// Moves `slot` from its master to the master on `to`, keys included, the way
    /// `redis-cli --cluster reshard` does it (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT
    /// NODE on both).
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self.owner_of_slot(slot);
        let lines = self.node_lines();
        let id = |port: u16| lines.iter().find(|n| n.port == port).unwrap().id.clone();
        let (from_id, to_id) = (id(from), id(to));
        let slot_text = slot.to_string();
        let (source, target) = (self.node(from), self.node(to));
        assert_eq!(
            target.command(&["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id]),
            "+OK"
        );
        assert_eq!(
            source.command(&["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id]),
            "+OK"
        );
        for _ in 0..1000 {
            let keys = source.command_array(&["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"]);
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            assert_eq!(source.command(&args), "+OK");
        }
        for node in [target, source] {
            assert_eq!(
                node.command(&["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]),
                "+OK"
            );
        }
        wait_until("every node to learn the slot's new owner", || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                parse_nodes(&n.command_bulk(&["CLUSTER", "NODES"]))
                    .iter()
                    .any(|l| l.port == to && l.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            })
        });
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Redis {
    /// Runs a command whose reply is a bulk string (`CLUSTER NODES`, `INFO`); its text.
    pub fn command_bulk(&self, args: &[&str]) -> String {
        let mut reader = self.send(args);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        let Some(len) = line.trim_end().strip_prefix('$') else {
            return line.trim_end().to_string();
        };
        let len: usize = len.parse().unwrap();
        let mut body = vec![0; len];
        std::io::Read::read_exact(&mut reader, &mut body).unwrap();
        String::from_utf8(body).unwrap()
    }
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch>
/// <link> <slot>...`.
pub fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next()?;
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeLine {
                id: fields[0].to_string(),
                port,
                master: flags.contains(&"master"),
                failed: flags.iter().any(|f| f.starts_with("fail")),
                replica_of: (fields[3] != "-").then(|| fields[3].to_string()),
                slots,
            })
        })
        .collect()
}
