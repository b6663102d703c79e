//! Worker processes, for more clients than one process may hold open files.
//!
//! The parent re-executes itself with the hidden `--worker <json>` option.
//! Protocol, one JSON object per line:
//! - worker -> parent (stdout): `progress` (about once per interval),
//!   `connected` (every client connected or failed), `final` (the
//!   [`PoolStats`], then the worker exits).
//! - parent -> worker (stdin): `mark <unix_ns>` (the measured phase starts
//!   at that time: the worker measures its own load from here, see
//!   [`crate::load`], and follows its share of the ramp, churn and storm, if
//!   any), `published <unix_ns>` (publishing ended: no more churn, the
//!   settle timeout starts), `stop` (report
//!   now). EOF on stdin also stops.
//!
//! A worker reports `final` on its own once all its clients received every
//! expected event.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant};

use mio::Waker;
use serde::{Deserialize, Serialize};

use crate::churn::Disruption;
use crate::load::{CpuMark, ProcLoad};
use crate::pool::{ClientPool, PoolConfig};
use crate::procfs::{raise_nofile_limit, self_cpu_s, unix_ns};
use crate::ramp::Ramp;
use crate::reactor::Reactor;
use crate::stats::PoolStats;

/// Everything a worker needs (sent as one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub index: usize,
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
    pub clients: usize,
    pub source_ips: Vec<IpAddr>,
    pub connect_concurrency: usize,
    pub handshake_timeout_s: f64,
    pub expected_events: Option<u64>,
    pub event_type: String,
    /// Global index of this worker's first client.
    #[serde(default)]
    pub first_index: usize,
    #[serde(default)]
    pub channels: u64,
    pub settle_timeout_s: f64,
    pub max_duration_s: f64,
    pub progress_interval_s: f64,
    /// Test only (`--test-burn-cpu`): spin instead of sleeping in the measured
    /// phase, to provoke a saturated generator.
    #[serde(default)]
    pub burn_cpu: bool,
    /// Follow this process's share of a ramp from `mark` on.
    #[serde(default)]
    pub ramp: Option<Ramp>,
    /// Clients over all processes (for the ramp's shares).
    #[serde(default)]
    pub total_clients: usize,
    /// Count-only clients check for gaps (the publisher keeps order).
    #[serde(default)]
    pub check_gaps: bool,
    /// This worker's share of churn and the storm, from `mark` on.
    #[serde(default)]
    pub disrupt: Option<Disruption>,
    /// `--publish-template`: bench messages may sit anywhere in a frame.
    #[serde(default)]
    pub marked_messages: bool,
}

impl WorkerConfig {
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            addr: self.addr,
            host_header: self.host_header.clone(),
            path: self.path.clone(),
            clients: self.clients,
            source_ips: self.source_ips.clone(),
            connect_concurrency: self.connect_concurrency,
            handshake_timeout: Duration::from_secs_f64(self.handshake_timeout_s),
            expected_events: self.expected_events,
            event_type: self.event_type.clone(),
            first_index: self.first_index,
            channels: self.channels,
            ramp: self.ramp.is_some(),
            check_gaps: self.check_gaps,
            disrupt: self.disrupt.clone(),
            marked_messages: self.marked_messages,
        }
    }

    /// This worker's share of the ramp's target `t` seconds in.
    pub fn ramp_share(&self, ramp: &Ramp, t: f64) -> u64 {
        Ramp::share(
            ramp.target_at(t),
            self.first_index as u64,
            self.clients as u64,
            self.total_clients as u64,
        )
    }
}

/// Live counters of a pool, as reported in progress lines.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub clients: u64,
    pub connected: u64,
    pub failed: u64,
    pub closed_early: u64,
    pub deliveries: u64,
    pub complete_clients: u64,
    /// Ramp: clients closed because the target fell.
    #[serde(default)]
    pub retired: u64,
    pub connect_done: bool,
    pub all_received: bool,
}

impl Progress {
    pub fn of(pool: &ClientPool) -> Self {
        let s = &pool.stats;
        Progress {
            clients: s.clients,
            connected: s.connected,
            failed: s.failed,
            closed_early: s.closed_early,
            deliveries: s.deliveries,
            complete_clients: s.complete_clients,
            retired: s.retired,
            connect_done: pool.connect_done(),
            all_received: pool.all_received(),
        }
    }

    /// Sums counters; flags hold only if they hold everywhere.
    pub fn add(&mut self, o: &Progress) {
        self.clients += o.clients;
        self.connected += o.connected;
        self.failed += o.failed;
        self.closed_early += o.closed_early;
        self.deliveries += o.deliveries;
        self.complete_clients += o.complete_clients;
        self.retired += o.retired;
        self.connect_done &= o.connect_done;
        self.all_received &= o.all_received;
    }
}

/// A line from a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerMsg {
    Progress {
        progress: Progress,
    },
    Connected {
        progress: Progress,
        connect_seconds: f64,
        cpu_s: f64,
    },
    Final {
        stats: Box<PoolStats>,
        /// The worker's load from `mark` to this report (none without `mark`).
        #[serde(default)]
        load: Option<ProcLoad>,
    },
}

fn emit(msg: &WorkerMsg) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, msg);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Entry point of `herald-bench --worker <json>`. Returns the exit code.
pub fn worker_main(json: &str) -> i32 {
    let cfg: WorkerConfig = match serde_json::from_str(json) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald-bench worker: bad config: {e}");
            return 2;
        }
    };
    raise_nofile_limit();
    match run_worker(&cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("herald-bench worker {}: {e}", cfg.index);
            2
        }
    }
}

enum Cmd {
    /// The measured phase (and the ramp) started at this Unix time.
    Mark(u64),
    Published,
    Stop,
}

fn run_worker(cfg: &WorkerConfig) -> std::io::Result<()> {
    let mut reactor = Reactor::new()?;
    reactor.pool = Some(ClientPool::new(cfg.pool_config()));
    let waker = reactor.waker()?;
    let (tx, rx) = mpsc::channel();
    // Reads parent commands; ends at EOF (parent gone) or "stop".
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let cmd = if let Some(ns) = line.strip_prefix("mark") {
                Cmd::Mark(ns.trim().parse().unwrap_or_else(|_| unix_ns()))
            } else if line.starts_with("published") {
                Cmd::Published
            } else if line.trim() == "stop" {
                Cmd::Stop
            } else {
                continue;
            };
            let stop = matches!(cmd, Cmd::Stop);
            if tx.send(cmd).is_err() || stop {
                return;
            }
            let _ = waker.wake();
        }
        let _ = tx.send(Cmd::Stop);
        let _ = waker.wake();
    });

    let started = Instant::now();
    let hard_deadline = started + Duration::from_secs_f64(cfg.max_duration_s);
    let interval = Duration::from_secs_f64(cfg.progress_interval_s.max(0.2));
    let settle = Duration::from_secs_f64(cfg.settle_timeout_s);
    let mut last_progress = started;
    let mut connected_sent = false;
    let mut cpu_at_connect: Option<f64> = None;
    let mut published_at: Option<Instant> = None;
    let mut mark: Option<CpuMark> = None;
    let mut ramp_origin: Option<Instant> = None;
    let mut stop = false;

    // Bounded by the hard deadline (and by the parent: stop / EOF).
    while Instant::now() < hard_deadline && !stop {
        let wait = if cfg.burn_cpu && mark.is_some() {
            Duration::ZERO
        } else if cfg.ramp.is_some() || cfg.disrupt.is_some() {
            // The target moves continuously, churn is due every 1/N s:
            // follow closely.
            Duration::from_millis(10)
        } else {
            Duration::from_millis(100)
        };
        reactor.turn(wait)?;
        let now = Instant::now();
        loop {
            match rx.try_recv() {
                Ok(Cmd::Mark(origin_ns)) => {
                    mark.get_or_insert_with(CpuMark::now);
                    if let Some(p) = reactor.pool.as_mut() {
                        let ago = Duration::from_nanos(unix_ns().saturating_sub(origin_ns));
                        p.start_disruption(now.checked_sub(ago).unwrap_or(now));
                    }
                    if cfg.ramp.is_some() && ramp_origin.is_none() {
                        let ago = Duration::from_nanos(unix_ns().saturating_sub(origin_ns));
                        ramp_origin = Some(now.checked_sub(ago).unwrap_or(now));
                        if let Some(p) = reactor.pool.as_mut() {
                            p.start_series(origin_ns);
                        }
                    }
                }
                Ok(Cmd::Published) => {
                    published_at.get_or_insert(now);
                    if let Some(p) = reactor.pool.as_mut() {
                        p.stop_disruption();
                    }
                }
                Ok(Cmd::Stop) | Err(TryRecvError::Disconnected) => {
                    stop = true;
                    break;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if let (Some(ramp), Some(origin)) = (&cfg.ramp, ramp_origin) {
            let t = now.duration_since(origin).as_secs_f64();
            reactor.follow_ramp(cfg.ramp_share(ramp, t));
        }
        let pool = reactor.pool.as_ref().expect("worker has a pool");
        let progress = Progress::of(pool);
        if !connected_sent && progress.connect_done {
            connected_sent = true;
            let cpu = self_cpu_s();
            cpu_at_connect = Some(cpu);
            emit(&WorkerMsg::Connected {
                progress,
                connect_seconds: pool.stats.connect_seconds,
                cpu_s: cpu,
            });
        } else if now.duration_since(last_progress) >= interval {
            last_progress = now;
            emit(&WorkerMsg::Progress { progress });
        }
        if progress.all_received || published_at.is_some_and(|p| now.duration_since(p) >= settle) {
            break;
        }
    }
    // Measured before closing the clients: the phase ends with the last delivery.
    let load = mark.map(|m| m.since(format!("worker {}", cfg.index)));
    let mut stats = reactor.finish_pool().expect("worker has a pool");
    stats.cpu_total_s = self_cpu_s();
    stats.cpu_connect_s = cpu_at_connect.unwrap_or(stats.cpu_total_s);
    emit(&WorkerMsg::Final {
        stats: Box::new(stats),
        load,
    });
    Ok(())
}

/// State of one worker, as seen by the parent.
#[derive(Debug, Default)]
pub struct WorkerState {
    /// Clients assigned to this worker.
    pub clients: u64,
    pub progress: Progress,
    pub connected: bool,
    pub connect_seconds: f64,
    pub cpu_connect_s: f64,
    pub final_stats: Option<PoolStats>,
    /// Its load over the measured phase (from its final report).
    pub load: Option<ProcLoad>,
    /// Stdout closed (worker exited or crashed).
    pub gone: bool,
}

/// The parent's handle on its workers.
pub struct WorkerSet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: Receiver<(usize, Option<WorkerMsg>)>,
    pub states: Vec<WorkerState>,
}

impl WorkerSet {
    /// Spawns one worker per config. Each message from a worker wakes the
    /// parent's reactor through `waker`, so the parent need not poll often
    /// (its wake-ups would count against it in [`crate::load`]).
    pub fn spawn(configs: &[WorkerConfig], waker: Arc<Waker>) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let mut set = WorkerSet {
            children: Vec::new(),
            stdins: Vec::new(),
            rx,
            states: Vec::new(),
        };
        for cfg in configs {
            let json = serde_json::to_string(cfg).map_err(|e| e.to_string())?;
            let mut child = Command::new(&exe)
                .arg("--worker")
                .arg(json)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawn worker: {e}"))?;
            let stdout = child.stdout.take().expect("piped stdout");
            set.stdins.push(child.stdin.take());
            set.children.push(child);
            set.states.push(WorkerState {
                clients: cfg.clients as u64,
                ..Default::default()
            });
            let tx = tx.clone();
            let waker = Arc::clone(&waker);
            let idx = cfg.index;
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<WorkerMsg>(&line) {
                        Ok(m) => {
                            if tx.send((idx, Some(m))).is_err() {
                                return;
                            }
                            let _ = waker.wake();
                        }
                        Err(e) => eprintln!("herald-bench: worker {idx}: bad line ({e}): {line}"),
                    }
                }
                let _ = tx.send((idx, None));
                let _ = waker.wake();
            });
        }
        Ok(set)
    }

    /// Applies every message received so far.
    pub fn pump(&mut self) {
        // Bounded by what the reader threads have queued.
        while let Ok((idx, msg)) = self.rx.try_recv() {
            let st = &mut self.states[idx];
            match msg {
                None => st.gone = true,
                Some(WorkerMsg::Progress { progress }) => st.progress = progress,
                Some(WorkerMsg::Connected {
                    progress,
                    connect_seconds,
                    cpu_s,
                }) => {
                    st.progress = progress;
                    st.connected = true;
                    st.connect_seconds = connect_seconds;
                    st.cpu_connect_s = cpu_s;
                }
                Some(WorkerMsg::Final { stats, load }) => {
                    st.load = load;
                    st.progress.connected = stats.connected;
                    st.progress.deliveries = stats.deliveries;
                    st.progress.complete_clients = stats.complete_clients;
                    st.progress.connect_done = true;
                    st.final_stats = Some(*stats);
                }
            }
        }
    }

    /// Summed progress of all workers.
    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            connect_done: true,
            all_received: true,
            ..Default::default()
        };
        for s in &self.states {
            let mut q = s.progress;
            q.connect_done |= s.connected || s.gone;
            q.all_received |= s.final_stats.is_some() || s.gone;
            p.add(&q);
        }
        p
    }

    /// The workers' loads over the measured phase, from their final reports.
    pub fn loads(&self) -> Vec<ProcLoad> {
        self.states.iter().filter_map(|s| s.load.clone()).collect()
    }

    /// Worker indexes that exited without a final report.
    pub fn crashed(&self) -> Vec<usize> {
        (0..self.states.len())
            .filter(|&i| self.states[i].gone && self.states[i].final_stats.is_none())
            .collect()
    }

    /// Sends a command line to every worker still listening.
    pub fn broadcast(&mut self, line: &str) {
        for stdin in self.stdins.iter_mut().flatten() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Waits (bounded) for every final report, then reaps the processes.
    /// Returns the merged statistics.
    pub fn finish(&mut self, wait: Duration) -> PoolStats {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline
            && self
                .states
                .iter()
                .any(|s| s.final_stats.is_none() && !s.gone)
        {
            std::thread::sleep(Duration::from_millis(10));
            self.pump();
        }
        self.stdins.iter_mut().for_each(|s| *s = None); // EOF: stop
        let reap_deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.children {
            // Bounded: polls until the reap deadline, then kills this child.
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < reap_deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.pump();
        let mut total = PoolStats::default();
        for (i, s) in self.states.iter().enumerate() {
            match &s.final_stats {
                Some(st) => total.merge(st),
                None => {
                    total.clients += s.clients;
                    total.failed += s.clients;
                    *total
                        .failures
                        .entry(format!("worker {i} gave no report"))
                        .or_default() += s.clients;
                }
            }
        }
        total
    }
}
