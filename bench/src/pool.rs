//! The WebSocket client pool: N non-blocking clients on one mio reactor.
//!
//! Connects with a bounded number of handshakes in flight (optionally bound
//! to a rotation of source addresses), writes the upgrade request as raw
//! bytes and checks the `101`, then parses server frames and checks every
//! bench event per client: duplicates, order (by seq), loss (at the end) and
//! latency (from the send time in the message, and from the scheduled send
//! time for paced runs). With channels, each client connects to its own
//! channel and checks it gets exactly that channel's events (see
//! [`crate::channels`]).
//!
//! Under a ramp ([`crate::ramp`]) the pool keeps a target number of clients
//! open instead of opening all: clients become due as the target rises (a
//! connect's latency is also measured from when it became due, so a slow
//! server cannot hide behind the generator's connect queue), the most
//! recently opened are closed as it falls, and every second's connects,
//! closes, deliveries and latency are recorded. Clients that join while
//! events flow cannot know which events to expect, so each checks that the
//! events after its first one arrive without a gap or repeat.
//!
//! With churn or a storm ([`crate::churn`]), open clients that have received
//! an event are dropped while events flow and reconnect with `since=<the
//! last id they saw>`; they must still get every event exactly once and in
//! order. A `{"op":"reset"}` notice (the server cannot replay) makes the
//! client write off the events up to the next one it gets: they are counted
//! as reset gaps, apart from silent loss.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token, event::Event};
use socket2::{Domain, Protocol, Socket, Type};

use crate::channels::{self, Mine};
use crate::churn::{self, Disruption};
use crate::procfs::unix_ns;
use crate::stats::{PoolStats, Second};
use crate::wire::{self, Handshake};

/// What the pool should do.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub addr: SocketAddr,
    /// `Host:` header value.
    pub host_header: String,
    pub path: String,
    pub clients: usize,
    /// Bind sockets to these addresses, round robin (empty: kernel's choice).
    pub source_ips: Vec<IpAddr>,
    pub connect_concurrency: usize,
    pub handshake_timeout: Duration,
    /// Events published in the run (seq 0..n); `None` = just count.
    pub expected_events: Option<u64>,
    pub event_type: String,
    /// Global index of this pool's first client (worker split), for the
    /// channel assignment.
    pub first_index: usize,
    /// Number of channels (0 = off, everyone on the default channel).
    pub channels: u64,
    /// Follow a target set with [`ClientPool::follow`] (starts at 0) instead
    /// of opening every client.
    pub ramp: bool,
    /// Count-only clients check that the events after their first arrive
    /// with consecutive numbers (needs a publisher that keeps order).
    pub check_gaps: bool,
    /// Churn and storm (from [`ClientPool::start_disruption`] on); clients
    /// then keep their last event id to resume from.
    pub disrupt: Option<Disruption>,
    /// Bench messages may sit anywhere in a frame (`--publish-template`):
    /// look for `"<event_type>:<seq>:..."` when the frame is not shaped
    /// like Herald's.
    pub marked_messages: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Connecting,
    Handshake,
    Open,
    Failed,
    /// Was open, then closed by the server or an error.
    Closed,
    /// Was open, then closed by the pool because the ramp's target fell.
    Retired,
    /// Dropped by churn or a storm; reconnects (with resume) when due.
    Away,
}

/// What a client learned from one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time, in order.
    New,
    /// First time, but after a higher seq.
    Late,
    Duplicate,
    /// seq outside 0..expected (not from this run).
    OutOfRange,
}

/// Per-client record of which seqs arrived. Everything below `next` has
/// arrived; arrivals above it (only after a gap) are kept in a bitmap that
/// is allocated on the first gap, so the common in-order case costs nothing.
#[derive(Debug, Default)]
pub struct Tracker {
    next: u64,
    max_seen: Option<u64>,
    pub unique: u64,
    /// Events given up after a reset notice (see [`Tracker::write_off_below`]).
    pub written_off: u64,
    ahead: Option<Box<[u64]>>,
}

impl Tracker {
    /// Records `seq` out of `expected` events.
    pub fn observe(&mut self, seq: u64, expected: u64) -> Seen {
        if seq >= expected {
            return Seen::OutOfRange;
        }
        if seq < self.next {
            return Seen::Duplicate;
        }
        let late = self.max_seen.is_some_and(|m| seq < m);
        if seq == self.next {
            self.next += 1;
            if let Some(bits) = &self.ahead {
                while self.next < expected && bit(bits, self.next) {
                    self.next += 1;
                }
            }
        } else {
            let words = expected.div_ceil(64) as usize;
            let bits = self
                .ahead
                .get_or_insert_with(|| vec![0u64; words].into_boxed_slice());
            if bit(bits, seq) {
                return Seen::Duplicate;
            }
            bits[(seq / 64) as usize] |= 1 << (seq % 64);
        }
        self.unique += 1;
        self.max_seen = Some(self.max_seen.map_or(seq, |m| m.max(seq)));
        if late { Seen::Late } else { Seen::New }
    }

    /// The server announced (a reset) that events before `seq` may never
    /// come: every one of them not received yet is written off. Returns how
    /// many.
    pub fn write_off_below(&mut self, seq: u64, expected: u64) -> u64 {
        let seq = seq.min(expected);
        let mut n = 0;
        // Bounded by `expected`.
        while self.next < seq {
            if !self.ahead.as_ref().is_some_and(|b| bit(b, self.next)) {
                n += 1;
            }
            self.next += 1;
        }
        if let Some(bits) = &self.ahead {
            while self.next < expected && bit(bits, self.next) {
                self.next += 1;
            }
        }
        self.written_off += n;
        n
    }

    /// Events received or written off.
    pub fn accounted(&self) -> u64 {
        self.unique + self.written_off
    }
}

fn bit(bits: &[u64], i: u64) -> bool {
    bits[(i / 64) as usize] & (1 << (i % 64)) != 0
}

struct Client {
    stream: Option<TcpStream>,
    state: State,
    started: Option<Instant>,
    /// Handshake response so far, or an incomplete frame.
    inbuf: Vec<u8>,
    /// Payload of a fragmented message in progress.
    frag: Vec<u8>,
    fragmented: bool,
    /// Bytes waiting to be written (handshake, pongs).
    out: Vec<u8>,
    track: Tracker,
    /// Channel this client joined (`None`: the default channel).
    channel: Option<u64>,
    /// Events this client must receive (`None`: just count).
    expected: Option<u64>,
    /// Count-only: the highest event number received so far.
    last_seq: Option<u64>,
    /// Under a ramp: when the target made this client due.
    due: Option<Instant>,
    /// The id of the newest event received in order: the resume point.
    last_id: Option<Box<str>>,
    /// A reset notice arrived: the gap before the next event is announced.
    reset_pending: bool,
    /// Reconnecting after churn or a storm: when it was scheduled.
    resuming: Option<Resuming>,
    /// Listed in the pool's `open_order` (the ramp's retirement order).
    in_open_order: bool,
    /// Unix time its last reconnect completed (0: never reconnected).
    resumed_at_ns: u64,
}

/// A reconnect in progress.
#[derive(Debug, Clone, Copy)]
struct Resuming {
    /// Its scheduled time (the drop's, plus the reconnect delay).
    at: Instant,
    storm: bool,
}

impl Client {
    fn new(channel: Option<u64>, expected: Option<u64>) -> Self {
        Client {
            stream: None,
            state: State::Pending,
            started: None,
            inbuf: Vec::new(),
            frag: Vec::new(),
            fragmented: false,
            out: Vec::new(),
            track: Tracker::default(),
            channel,
            expected,
            last_seq: None,
            due: None,
            last_id: None,
            reset_pending: false,
            resuming: None,
            in_open_order: false,
            resumed_at_ns: 0,
        }
    }

    /// Has received an event, so a reconnect has something to resume from
    /// (a client dropped before its first event would miss events through
    /// the generator's fault, not the server's).
    fn has_position(&self) -> bool {
        self.track.unique > 0 || self.last_seq.is_some()
    }
}

/// Reads per readiness event before yielding to other clients.
const MAX_READS: usize = 64;
const RBUF: usize = 64 * 1024;

/// N WebSocket clients. Tokens `0..N` belong to the pool.
pub struct ClientPool {
    cfg: PoolConfig,
    clients: Vec<Client>,
    handshake_req: Vec<u8>,
    next_to_start: usize,
    in_flight: usize,
    /// (client, start) in start order, for handshake timeouts.
    started_q: VecDeque<(usize, Instant)>,
    connect_started: Option<Instant>,
    connect_finished: bool,
    /// Open clients that still miss events.
    open_incomplete: u64,
    /// Clients whose socket may still hold data (read cap reached).
    backlog: Vec<usize>,
    rbuf: Box<[u8]>,
    /// Ramp: clients to keep open or opening (`None`: all of them).
    target: Option<u64>,
    /// Ramp: when each client that is due but not started became due.
    due: VecDeque<Instant>,
    /// Clients in the order they opened (some may have closed since).
    open_order: Vec<usize>,
    /// Clients open now.
    open_now: u64,
    /// Ramp: Unix time of second 0 of the time series.
    series_origin_ns: Option<u64>,
    /// Dropped clients waiting to reconnect, with their scheduled time (in
    /// time order).
    resume_q: VecDeque<(usize, Instant)>,
    /// Start of the churn / storm schedule.
    disrupt_origin: Option<Instant>,
    churns_done: u64,
    churn_stopped: bool,
    /// Where the search for the next client to churn starts (round robin).
    churn_cursor: usize,
    storm_fired: bool,
    /// Storm reconnects still out, and when the storm was due.
    storm_pending: u64,
    storm_at: Option<Instant>,
    pub stats: PoolStats,
}

/// Mutable context for frame processing (split from the client borrow).
struct Ctx<'a> {
    stats: &'a mut PoolStats,
    open_incomplete: &'a mut u64,
    /// Events published in the run.
    expected: Option<u64>,
    channels: u64,
    event_type: &'a [u8],
    now_ns: u64,
    check_gaps: bool,
    series_origin_ns: Option<u64>,
    /// Keep event ids and watch for reset notices (churn, storm).
    resume: bool,
    marked_messages: bool,
}

/// The time-series bucket of `now_ns`, when a series is being recorded.
fn second_at(stats: &mut PoolStats, origin_ns: Option<u64>, now_ns: u64) -> Option<&mut Second> {
    let t = (now_ns.checked_sub(origin_ns?)? / 1_000_000_000) as usize;
    if stats.series.len() <= t {
        stats.series.resize_with(t + 1, Second::default);
    }
    stats.series.get_mut(t)
}

impl ClientPool {
    pub fn new(cfg: PoolConfig) -> Self {
        let handshake_req = wire::ws_handshake_request(&cfg.host_header, &cfg.path);
        let clients = (0..cfg.clients)
            .map(|i| {
                let ch = channels::of_client((cfg.first_index + i) as u64, cfg.channels);
                let exp = cfg
                    .expected_events
                    .map(|e| channels::events_on(ch, cfg.channels, e));
                Client::new(ch, exp)
            })
            .collect();
        let stats = PoolStats {
            clients: cfg.clients as u64,
            ..Default::default()
        };
        ClientPool {
            clients,
            handshake_req,
            next_to_start: 0,
            in_flight: 0,
            started_q: VecDeque::new(),
            connect_started: None,
            connect_finished: false,
            open_incomplete: 0,
            backlog: Vec::new(),
            rbuf: vec![0u8; RBUF].into_boxed_slice(),
            target: cfg.ramp.then_some(0),
            due: VecDeque::new(),
            open_order: Vec::new(),
            open_now: 0,
            series_origin_ns: None,
            resume_q: VecDeque::new(),
            disrupt_origin: None,
            churns_done: 0,
            churn_stopped: false,
            churn_cursor: 0,
            storm_fired: false,
            storm_pending: 0,
            storm_at: None,
            stats,
            cfg,
        }
    }

    /// Starts churn and the storm's clock (if configured) at `origin`.
    pub fn start_disruption(&mut self, origin: Instant) {
        if self.cfg.disrupt.is_some() {
            self.disrupt_origin.get_or_insert(origin);
        }
    }

    /// Events stopped flowing: no more churn or storm (reconnects already
    /// scheduled still happen).
    pub fn stop_disruption(&mut self) {
        self.churn_stopped = true;
        self.storm_fired = true;
    }

    /// Drops an open client to reconnect it at `at` with resume.
    fn drop_for_resume(&mut self, registry: &Registry, idx: usize, at: Instant, storm: bool) {
        let c = &mut self.clients[idx];
        if let Some(mut s) = c.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        c.state = State::Away;
        c.inbuf = Vec::new();
        c.out = Vec::new();
        c.frag = Vec::new();
        c.fragmented = false;
        c.resuming = Some(Resuming { at, storm });
        self.open_now -= 1;
        self.resume_q.push_back((idx, at));
    }

    /// The next open client with a resume position, round robin.
    fn next_churn_victim(&mut self) -> Option<usize> {
        let n = self.clients.len();
        // Bounded: one pass over the clients.
        for _ in 0..n {
            let idx = self.churn_cursor % n;
            self.churn_cursor = (idx + 1) % n;
            let c = &self.clients[idx];
            if c.state == State::Open && c.has_position() {
                return Some(idx);
            }
        }
        None
    }

    /// Drops the clients that churn and the storm make due by `now`.
    fn disrupt(&mut self, registry: &Registry, now: Instant) {
        let (Some(plan), Some(origin)) = (self.cfg.disrupt.clone(), self.disrupt_origin) else {
            return;
        };
        let elapsed = now.saturating_duration_since(origin);
        let delay = plan.reconnect_delay();
        if !self.churn_stopped {
            let due = plan.churns_due(elapsed);
            // Bounded by the churns due (a late turn catches up).
            while self.churns_done < due {
                self.churns_done += 1;
                let at = origin + plan.churn_time(self.churns_done) + delay;
                match self.next_churn_victim() {
                    Some(idx) => {
                        self.drop_for_resume(registry, idx, at, false);
                        self.stats.resume.counts.churned += 1;
                    }
                    None => self.stats.resume.counts.churn_missed += 1,
                }
            }
        }
        if let Some(storm) = plan.storm
            && !self.storm_fired
            && elapsed.as_secs_f64() >= storm.at_s
        {
            self.storm_fired = true;
            let storm_time = origin + Duration::from_secs_f64(storm.at_s);
            let eligible: Vec<usize> = (0..self.clients.len())
                .filter(|&i| self.clients[i].state == State::Open && self.clients[i].has_position())
                .collect();
            let n = churn::storm_count(eligible.len(), storm.fraction);
            for &idx in &eligible[..n] {
                self.drop_for_resume(registry, idx, storm_time + delay, true);
            }
            self.stats.resume.storm_dropped += n as u64;
            self.storm_pending = n as u64;
            self.storm_at = Some(storm_time);
        }
    }

    /// Starts the reconnects that are due, within the connect concurrency.
    fn start_resumes(&mut self, registry: &Registry, now: Instant) {
        // Bounded by the queue and the concurrency.
        while self.in_flight < self.cfg.connect_concurrency.max(1)
            && let Some(&(idx, at)) = self.resume_q.front()
            && at <= now
        {
            self.resume_q.pop_front();
            if self.clients[idx].state == State::Away {
                self.start(registry, idx, now);
            }
        }
    }

    /// A storm reconnect finished (either way): the storm may be over.
    fn storm_reconnect_done(&mut self) {
        self.storm_pending = self.storm_pending.saturating_sub(1);
        if self.storm_pending == 0
            && let Some(at) = self.storm_at
        {
            self.stats.resume.storm_all_reconnected_s =
                Some(Instant::now().saturating_duration_since(at).as_secs_f64());
        }
    }

    /// Starts the per-second time series at `origin_ns` (Unix time).
    pub fn start_series(&mut self, origin_ns: u64) {
        self.series_origin_ns.get_or_insert(origin_ns);
    }

    /// Ramp: keeps `target` clients open or opening from now on. A rise
    /// makes clients due (they start as the connect concurrency allows); a
    /// fall first cancels clients not started yet, then closes the most
    /// recently opened.
    pub fn follow(&mut self, registry: &Registry, target: u64, now: Instant) {
        self.target = Some(target);
        let unstarted = (self.clients.len() - self.next_to_start) as u64;
        // Dropped clients waiting to reconnect come back: they count.
        let active = self.open_now + self.in_flight as u64 + self.resume_q.len() as u64;
        // Bounded by the clients not started yet.
        while active + (self.due.len() as u64) < target && (self.due.len() as u64) < unstarted {
            self.due.push_back(now);
        }
        // Bounded by the due queue, then by the open clients.
        while active + self.due.len() as u64 > target && self.due.pop_back().is_some() {}
        while self.open_now + self.in_flight as u64 > target {
            let Some(idx) = self.open_order.pop() else {
                break; // only handshakes in flight: they are retired once open
            };
            self.clients[idx].in_open_order = false;
            if self.clients[idx].state == State::Open {
                self.retire(registry, idx);
            }
        }
    }

    /// Closes an open client because the ramp's target fell.
    fn retire(&mut self, registry: &Registry, idx: usize) {
        let c = &mut self.clients[idx];
        if let Some(mut s) = c.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        c.state = State::Retired;
        c.inbuf = Vec::new();
        c.out = Vec::new();
        self.open_now -= 1;
        self.stats.retired += 1;
        if let Some(s) = second_at(&mut self.stats, self.series_origin_ns, unix_ns()) {
            s.closes += 1;
        }
    }

    /// Every client has either connected or failed.
    pub fn connect_done(&self) -> bool {
        self.next_to_start == self.clients.len() && self.in_flight == 0 && self.resume_q.is_empty()
    }

    /// Every open client has all expected events (false in count-only mode).
    pub fn all_received(&self) -> bool {
        self.cfg.expected_events.is_some() && self.connect_done() && self.open_incomplete == 0
    }

    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Starts connects, enforces handshake timeouts, drains backlogged
    /// sockets. Called once per reactor turn.
    pub fn tick(&mut self, registry: &Registry, now: Instant) {
        self.connect_started.get_or_insert(now);
        self.disrupt(registry, now);
        self.start_resumes(registry, now);
        while self.in_flight < self.cfg.connect_concurrency.max(1)
            && self.next_to_start < self.clients.len()
        {
            // Under a ramp, only clients the target made due.
            let due = match self.target {
                None => None,
                Some(_) => match self.due.pop_front() {
                    Some(at) => Some(at),
                    None => break,
                },
            };
            let idx = self.next_to_start;
            self.next_to_start += 1;
            self.clients[idx].due = due;
            self.start(registry, idx, now);
        }
        // Handshake timeouts (queue is in start order).
        while let Some(&(idx, at)) = self.started_q.front() {
            let st = self.clients[idx].state;
            if st != State::Connecting && st != State::Handshake {
                self.started_q.pop_front();
            } else if now.duration_since(at) >= self.cfg.handshake_timeout {
                self.started_q.pop_front();
                self.fail(registry, idx, "handshake timeout".into());
            } else {
                break;
            }
        }
        for idx in std::mem::take(&mut self.backlog) {
            if self.clients[idx].state == State::Open {
                self.read_open(registry, idx);
            }
        }
        if !self.connect_finished && self.connect_done() {
            self.connect_finished = true;
            let started = self.connect_started.unwrap_or(now);
            self.stats.connect_seconds = Instant::now().duration_since(started).as_secs_f64();
        }
        // A handshake that completed after the target fell is retired now.
        if let Some(target) = self.target
            && self.open_now > target
        {
            self.follow(registry, target, now);
        }
        let open = self.open_now;
        if let Some(s) = second_at(&mut self.stats, self.series_origin_ns, unix_ns()) {
            s.connections = open;
        }
    }

    fn start(&mut self, registry: &Registry, idx: usize, now: Instant) {
        let src = if self.cfg.source_ips.is_empty() {
            None
        } else {
            Some(self.cfg.source_ips[idx % self.cfg.source_ips.len()])
        };
        match open_socket(self.cfg.addr, src) {
            Ok(mut stream) => {
                if let Err(e) = registry.register(
                    &mut stream,
                    Token(idx),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.record_failure(idx, format!("register: {}", short_err(&e)));
                    return;
                }
                let c = &mut self.clients[idx];
                c.stream = Some(stream);
                c.state = State::Connecting;
                c.started = Some(now);
                self.in_flight += 1;
                self.started_q.push_back((idx, now));
            }
            Err(e) => self.record_failure(idx, format!("connect: {}", short_err(&e))),
        }
    }

    /// Marks a never-opened client failed (no socket registered), or a
    /// reconnect failed.
    fn record_failure(&mut self, idx: usize, reason: String) {
        if let Some(r) = self.clients[idx].resuming.take() {
            return self.resume_failure(idx, r, reason);
        }
        self.clients[idx].state = State::Failed;
        self.stats.failed += 1;
        *self.stats.failures.entry(reason).or_default() += 1;
        if let Some(s) = second_at(&mut self.stats, self.series_origin_ns, unix_ns()) {
            s.errors += 1;
        }
    }

    /// A reconnect failed: the client is gone for good (closed), and its
    /// missing events count as lost at the end.
    fn resume_failure(&mut self, idx: usize, r: Resuming, reason: String) {
        let c = &mut self.clients[idx];
        c.state = State::Closed;
        if c.expected.is_some_and(|e| c.track.accounted() < e) {
            self.open_incomplete -= 1;
        }
        self.stats.resume.counts.resume_failed += 1;
        *self
            .stats
            .failures
            .entry(format!("reconnect: {reason}"))
            .or_default() += 1;
        if let Some(s) = second_at(&mut self.stats, self.series_origin_ns, unix_ns()) {
            s.errors += 1;
        }
        if r.storm {
            self.stats.resume.storm_failed += 1;
            self.storm_reconnect_done();
        }
    }

    /// Fails a connecting / handshaking client.
    fn fail(&mut self, registry: &Registry, idx: usize, reason: String) {
        let c = &mut self.clients[idx];
        if let Some(mut s) = c.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        c.inbuf = Vec::new();
        c.out = Vec::new();
        self.in_flight -= 1;
        self.record_failure(idx, reason);
    }

    /// Closes an open client that the server closed or that broke.
    fn close_open(&mut self, registry: &Registry, idx: usize, reason: String) {
        let c = &mut self.clients[idx];
        let expected = c.expected;
        if let Some(mut s) = c.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        c.state = State::Closed;
        c.inbuf = Vec::new();
        c.out = Vec::new();
        if expected.is_some_and(|e| c.track.accounted() < e) {
            self.open_incomplete -= 1;
        }
        self.open_now -= 1;
        self.stats.closed_early += 1;
        if let Some(s) = second_at(&mut self.stats, self.series_origin_ns, unix_ns()) {
            s.errors += 1;
        }
        *self
            .stats
            .failures
            .entry(format!("closed after open: {reason}"))
            .or_default() += 1;
    }

    /// Handles a readiness event for client `idx`.
    pub fn handle(&mut self, registry: &Registry, idx: usize, ev: &Event) {
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        if c.state == State::Connecting {
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            match stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    return self.fail(registry, idx, format!("connect: {}", short_err(&e)));
                }
                Ok(None) => {}
            }
            match stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if ev.is_error() || ev.is_write_closed() {
                        return self.fail(registry, idx, "connect: refused".into());
                    }
                    return; // not yet
                }
                Err(e) => return self.fail(registry, idx, format!("connect: {}", short_err(&e))),
            }
            c.state = State::Handshake;
            let path = match c.channel {
                Some(ch) => Cow::Owned(channels::ws_path(&self.cfg.path, ch)),
                None => Cow::Borrowed(self.cfg.path.as_str()),
            };
            if c.resuming.is_some() {
                let resume = churn::resume_path(&path, c.last_id.as_deref());
                c.out
                    .extend_from_slice(&wire::ws_handshake_request(&self.cfg.host_header, &resume));
            } else if c.channel.is_some() {
                c.out
                    .extend_from_slice(&wire::ws_handshake_request(&self.cfg.host_header, &path));
            } else {
                c.out.extend_from_slice(&self.handshake_req);
            }
        }
        if !self.clients[idx].out.is_empty()
            && let Err(e) = flush(&mut self.clients[idx])
        {
            let reason = format!("write: {}", short_err(&e));
            return match self.clients[idx].state {
                State::Open => self.close_open(registry, idx, reason),
                _ => self.fail(registry, idx, reason),
            };
        }
        match self.clients[idx].state {
            State::Handshake => self.read_handshake(registry, idx),
            State::Open => self.read_open(registry, idx),
            _ => {}
        }
    }

    fn read_handshake(&mut self, registry: &Registry, idx: usize) {
        let c = &mut self.clients[idx];
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        // Bounded: the response is capped at 16 KiB by check_handshake.
        for _ in 0..64 {
            match stream.read(&mut self.rbuf[..4096]) {
                Ok(0) => {
                    return self.fail(registry, idx, "closed during handshake".into());
                }
                Ok(n) => {
                    c.inbuf.extend_from_slice(&self.rbuf[..n]);
                    match wire::check_handshake(&c.inbuf) {
                        Handshake::Partial => continue,
                        Handshake::Failed(why) => return self.fail(registry, idx, why),
                        Handshake::Done(len) => {
                            c.inbuf.drain(..len);
                            c.state = State::Open;
                            self.in_flight -= 1;
                            self.open_now += 1;
                            if !c.in_open_order {
                                c.in_open_order = true;
                                self.open_order.push(idx);
                            }
                            if let Some(r) = c.resuming.take() {
                                return self.resumed(registry, idx, r);
                            }
                            self.stats.connected += 1;
                            if let Some(at) = c.started {
                                self.stats
                                    .handshake
                                    .record_ns(at.elapsed().as_nanos() as i64);
                            }
                            if let Some(at) = c.due {
                                self.stats
                                    .connect_from_due
                                    .record_ns(at.elapsed().as_nanos() as i64);
                            }
                            if let Some(s) =
                                second_at(&mut self.stats, self.series_origin_ns, unix_ns())
                            {
                                s.connects += 1;
                            }
                            self.stats.expected_deliveries += c.expected.unwrap_or(0);
                            match c.expected {
                                Some(0) => self.stats.complete_clients += 1,
                                Some(_) => self.open_incomplete += 1,
                                None => {}
                            }
                            return self.read_open(registry, idx);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(registry, idx, format!("read: {}", short_err(&e))),
            }
        }
        self.fail(registry, idx, "handshake response too long".into());
    }

    /// A reconnect's handshake succeeded: the client reads on from where it
    /// was (its expectations were counted when it first opened).
    fn resumed(&mut self, registry: &Registry, idx: usize, r: Resuming) {
        self.clients[idx].resumed_at_ns = unix_ns();
        let s = &mut self.stats.resume;
        s.counts.resumed += 1;
        if self.clients[idx].last_id.is_none() {
            s.counts.resumed_without_id += 1;
        }
        let late_ns = r.at.elapsed().as_nanos() as i64;
        if r.storm {
            s.storm_reconnected += 1;
            s.storm_reconnect.record_ns(late_ns);
            self.storm_reconnect_done();
        } else {
            s.reconnect.record_ns(late_ns);
        }
        if let Some(sec) = second_at(&mut self.stats, self.series_origin_ns, unix_ns()) {
            sec.reconnects += 1;
        }
        self.read_open(registry, idx);
    }

    /// Reads and processes everything available on an open client.
    fn read_open(&mut self, registry: &Registry, idx: usize) {
        let Self {
            cfg,
            clients,
            rbuf,
            stats,
            open_incomplete,
            backlog,
            series_origin_ns,
            ..
        } = self;
        let c = &mut clients[idx];
        let mut err: Option<String> = None;
        // First frames already buffered (bytes that followed the handshake).
        if !c.inbuf.is_empty() {
            let mut ctx = Ctx {
                stats,
                open_incomplete,
                expected: cfg.expected_events,
                channels: cfg.channels,
                event_type: cfg.event_type.as_bytes(),
                now_ns: unix_ns(),
                check_gaps: cfg.check_gaps,
                series_origin_ns: *series_origin_ns,
                resume: cfg.disrupt.is_some(),
                marked_messages: cfg.marked_messages,
            };
            let buf = std::mem::take(&mut c.inbuf);
            match process_frames(&buf, c, &mut ctx) {
                Ok(used) => c.inbuf.extend_from_slice(&buf[used..]),
                Err(e) => err = Some(e),
            }
        }
        let mut drained = false;
        if err.is_none() {
            for _ in 0..MAX_READS {
                let Some(stream) = c.stream.as_mut() else {
                    drained = true;
                    break;
                };
                let n = match stream.read(rbuf) {
                    Ok(0) => {
                        err = Some("eof".into());
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        err = Some(format!("read: {}", short_err(&e)));
                        break;
                    }
                };
                let mut ctx = Ctx {
                    stats,
                    open_incomplete,
                    expected: cfg.expected_events,
                    channels: cfg.channels,
                    event_type: cfg.event_type.as_bytes(),
                    now_ns: unix_ns(),
                    check_gaps: cfg.check_gaps,
                    series_origin_ns: *series_origin_ns,
                    resume: cfg.disrupt.is_some(),
                    marked_messages: cfg.marked_messages,
                };
                let res = if c.inbuf.is_empty() {
                    process_frames(&rbuf[..n], c, &mut ctx).map(|used| {
                        c.inbuf.extend_from_slice(&rbuf[used..n]);
                    })
                } else {
                    c.inbuf.extend_from_slice(&rbuf[..n]);
                    let mut buf = std::mem::take(&mut c.inbuf);
                    process_frames(&buf, c, &mut ctx).map(|used| {
                        buf.drain(..used);
                        c.inbuf = buf;
                    })
                };
                if let Err(e) = res {
                    err = Some(e);
                    break;
                }
                // A short read means the socket is empty; with edge-triggered
                // epoll, new data raises a new event.
                if n < rbuf.len() {
                    drained = true;
                    break;
                }
            }
        }
        if err.is_none()
            && !c.out.is_empty()
            && let Err(e) = flush(c)
        {
            err = Some(format!("write: {}", short_err(&e)));
        }
        if let Some(reason) = err {
            return self.close_open(registry, idx, reason);
        }
        if !drained {
            backlog.push(idx);
        }
    }

    /// Ends the run: counts lost events and closes every socket.
    pub fn finish(&mut self, registry: &Registry) -> PoolStats {
        for c in &mut self.clients {
            // Still away (or reconnecting) at the end: the reconnect failed.
            if matches!(c.state, State::Away)
                || (c.resuming.is_some() && matches!(c.state, State::Connecting | State::Handshake))
            {
                c.state = State::Closed;
                c.resuming = None;
                self.stats.resume.counts.resume_failed += 1;
                *self
                    .stats
                    .failures
                    .entry("reconnect unfinished at end of run".into())
                    .or_default() += 1;
            }
            if let Some(exp) = c.expected
                && matches!(c.state, State::Open | State::Closed)
            {
                let missing = exp.saturating_sub(c.track.accounted());
                if c.reset_pending {
                    // The server announced the gap, and no event followed.
                    c.track.written_off += missing;
                    self.stats.resume.counts.reset_gap_events += missing;
                } else {
                    self.stats.lost += missing;
                }
            }
        }
        for c in &mut self.clients {
            if let Some(mut s) = c.stream.take() {
                let _ = registry.deregister(&mut s);
            }
            if matches!(c.state, State::Connecting | State::Handshake) {
                c.state = State::Failed;
                self.stats.failed += 1;
                *self
                    .stats
                    .failures
                    .entry("unfinished at end of run".into())
                    .or_default() += 1;
            }
        }
        self.in_flight = 0;
        self.next_to_start = self.clients.len();
        self.clients = Vec::new();
        self.stats.clone()
    }
}

/// Processes complete frames in `buf`; returns the bytes consumed.
fn process_frames(buf: &[u8], c: &mut Client, ctx: &mut Ctx) -> Result<usize, String> {
    let mut pos = 0;
    // Bounded: each iteration consumes at least a 2-byte header.
    while pos < buf.len() {
        let Some(h) = wire::parse_frame_head(&buf[pos..])? else {
            break;
        };
        let end = pos + h.header_len + h.payload_len;
        if end > buf.len() {
            break;
        }
        let raw = &buf[pos + h.header_len..end];
        let unmasked;
        let payload = match h.mask {
            None => raw,
            Some(m) => {
                unmasked = raw
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ m[i % 4])
                    .collect::<Vec<u8>>();
                &unmasked[..]
            }
        };
        pos = end;
        match h.opcode {
            wire::OP_TEXT | wire::OP_BINARY => {
                if c.fragmented {
                    return Err("new message inside a fragmented one".into());
                }
                if h.fin {
                    on_message(payload, c, ctx);
                } else {
                    c.fragmented = true;
                    c.frag.clear();
                    c.frag.extend_from_slice(payload);
                }
            }
            wire::OP_CONT => {
                if !c.fragmented {
                    return Err("unexpected continuation frame".into());
                }
                if c.frag.len() + payload.len() > wire::MAX_FRAME {
                    return Err("message too large".into());
                }
                c.frag.extend_from_slice(payload);
                if h.fin {
                    c.fragmented = false;
                    let msg = std::mem::take(&mut c.frag);
                    on_message(&msg, c, ctx);
                    c.frag = msg;
                    c.frag.clear();
                }
            }
            wire::OP_PING => c
                .out
                .extend_from_slice(&wire::client_control_frame(wire::OP_PONG, payload)),
            wire::OP_PONG => {}
            wire::OP_CLOSE => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return Err(match code {
                    Some(code) => format!("close frame {code}"),
                    None => "close frame".into(),
                });
            }
            op => return Err(format!("unknown opcode {op}")),
        }
    }
    Ok(pos)
}

/// Checks one complete message.
fn on_message(payload: &[u8], c: &mut Client, ctx: &mut Ctx) {
    let fields = wire::event_fields(payload, ctx.resume)
        .filter(|f| &*f.kind == ctx.event_type)
        .and_then(|f| Some((wire::parse_message(&f.message)?, f.id)));
    let parsed = fields.or_else(|| {
        let marked =
            wire::find_marked_message(payload, ctx.event_type).filter(|_| ctx.marked_messages)?;
        Some((wire::parse_message(marked)?, None))
    });
    let Some((m, id)) = parsed else {
        if ctx.resume && wire::is_reset_notice(payload) {
            ctx.stats.resume.counts.resets += 1;
            c.reset_pending = true;
        } else {
            ctx.stats.foreign += 1;
        }
        return;
    };
    // The newest event received in order becomes the resume point.
    let keep_id = |c: &mut Client| {
        if let Some(id) = id.as_deref().filter(|id| id.len() <= churn::MAX_ID_LEN) {
            c.last_id = std::str::from_utf8(id).ok().map(Into::into);
        }
    };
    let s = &mut *ctx.stats;
    if let (Some(events), Some(expected)) = (ctx.expected, c.expected) {
        let k = match channels::classify(m.seq, c.channel, ctx.channels, events) {
            Mine::Yes(k) => k,
            Mine::OtherChannel => {
                s.wrong_channel += 1;
                return;
            }
            Mine::OutOfRange => {
                s.foreign += 1;
                return;
            }
        };
        if std::mem::take(&mut c.reset_pending) {
            s.resume.counts.reset_gap_events += c.track.write_off_below(k, expected);
        }
        match c.track.observe(k, expected) {
            Seen::OutOfRange => {
                s.foreign += 1;
                return;
            }
            Seen::Duplicate => {
                s.deliveries += 1;
                s.duplicates += 1;
                return;
            }
            Seen::Late => s.out_of_order += 1,
            Seen::New => keep_id(c),
        }
        s.unique += 1;
        if c.track.accounted() == expected {
            s.complete_clients += 1;
            *ctx.open_incomplete -= 1;
        }
    } else if ctx.check_gaps {
        // Count-only (a ramp): consecutive numbers after the first event.
        match c.last_seq {
            Some(last) if m.seq <= last => {
                s.deliveries += 1;
                s.duplicates += 1;
                return;
            }
            Some(last) if std::mem::take(&mut c.reset_pending) => {
                s.resume.counts.reset_gap_events += m.seq - last - 1;
            }
            Some(last) => s.gaps += m.seq - last - 1,
            None => {}
        }
        c.last_seq = Some(m.seq);
        keep_id(c);
    }
    s.deliveries += 1;
    s.first_delivery_ns.get_or_insert(ctx.now_ns);
    s.last_delivery_ns = Some(ctx.now_ns);
    let latency_ns = ctx.now_ns as i64 - m.sent_ns as i64;
    if m.sent_ns < c.resumed_at_ns {
        // Sent before this client's reconnect completed: it came with the
        // catch-up, late by the time the client was away. Timed apart, so
        // the live latency stays the live latency.
        s.resume.counts.replayed += 1;
        s.resume.replay_latency.record_ns(latency_ns);
        if let Some(sec) = second_at(s, ctx.series_origin_ns, ctx.now_ns) {
            sec.deliveries += 1;
        }
        return;
    }
    s.latency.record_ns(latency_ns);
    if let Some(sched) = m.scheduled_ns {
        s.sched_latency.record_ns(ctx.now_ns as i64 - sched as i64);
    }
    if let Some(sec) = second_at(s, ctx.series_origin_ns, ctx.now_ns) {
        sec.deliveries += 1;
        sec.latency.record_ns(latency_ns);
    }
}

/// Writes as much of `c.out` as the socket takes.
fn flush(c: &mut Client) -> io::Result<()> {
    let Some(stream) = c.stream.as_mut() else {
        return Ok(());
    };
    wire::write_pending(stream, &mut c.out)
}

/// Opens a non-blocking TCP socket, optionally bound to `src`, and starts
/// connecting it.
pub fn open_socket(addr: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    if let Some(ip) = src {
        if ip.is_ipv4() {
            // Let connect() pick the port, so ports are shared across 4-tuples.
            let one: libc::c_int = 1;
            // SAFETY: valid fd and option buffer; failure is harmless.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(sock)))
}

/// An error without the "(os error N)" suffix, for grouping reasons.
pub fn short_err(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_in_order() {
        let mut t = Tracker::default();
        for s in 0..5 {
            assert_eq!(t.observe(s, 5), Seen::New);
        }
        assert_eq!(t.unique, 5);
        assert!(t.ahead.is_none());
        assert_eq!(t.observe(3, 5), Seen::Duplicate);
        assert_eq!(t.observe(5, 5), Seen::OutOfRange);
    }

    #[test]
    fn tracker_gaps_reorder_duplicates() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(0, 200), Seen::New);
        assert_eq!(t.observe(2, 200), Seen::New); // gap at 1
        assert_eq!(t.observe(150, 200), Seen::New);
        assert_eq!(t.observe(2, 200), Seen::Duplicate);
        assert_eq!(t.observe(1, 200), Seen::Late); // fills the gap
        assert_eq!(t.next, 3);
        assert_eq!(t.observe(1, 200), Seen::Duplicate);
        assert_eq!(t.observe(150, 200), Seen::Duplicate);
        assert_eq!(t.observe(3, 200), Seen::Late); // 150 already seen
        assert_eq!(t.unique, 5);
    }

    #[test]
    fn frames_are_checked() {
        let mut stats = PoolStats::default();
        let mut open = 1u64;
        let mut ctx = Ctx {
            stats: &mut stats,
            open_incomplete: &mut open,
            expected: Some(3),
            channels: 0,
            event_type: b"bench",
            now_ns: 2_000_000,
            check_gaps: false,
            series_origin_ns: None,
            resume: false,
            marked_messages: false,
        };
        let mut c = Client::new(None, Some(3));
        let text = |s: &str| {
            let mut f = vec![0x81, s.len() as u8];
            f.extend_from_slice(s.as_bytes());
            f
        };
        let mut buf = Vec::new();
        buf.extend(text(r#"{"type":"bench","message":"0:1000000"}"#));
        buf.extend(text(r#"{"type":"other","message":"1:1000000"}"#));
        buf.extend(text(r#"{"type":"bench","message":"2:1500000:1000000"}"#));
        buf.extend(text(r#"{"type":"bench","message":"2:1500000"}"#));
        buf.extend_from_slice(b"\x89\x01p"); // ping
        // fragmented: "1" arrives late, split in two frames
        let msg = r#"{"type":"bench","message":"1:1000000"}"#;
        let (a, b) = msg.split_at(10);
        buf.extend([0x01, a.len() as u8]);
        buf.extend_from_slice(a.as_bytes());
        buf.extend([0x80, b.len() as u8]);
        buf.extend_from_slice(b.as_bytes());
        let whole = buf.len();
        buf.extend_from_slice(b"\x81\x05he"); // incomplete tail
        let used = process_frames(&buf, &mut c, &mut ctx).unwrap();
        assert_eq!(used, whole);
        assert_eq!(c.out, b"\x8a\x81\0\0\0\0p");
        assert_eq!(open, 0);
        assert_eq!(
            (stats.deliveries, stats.unique, stats.duplicates),
            (4, 3, 1)
        );
        assert_eq!(
            (stats.out_of_order, stats.foreign, stats.complete_clients),
            (1, 1, 1)
        );
        assert_eq!(stats.latency.count(), 3);
        assert_eq!(stats.latency.max(), 1000);
        assert_eq!(stats.sched_latency.count(), 1);

        let mut ctx = Ctx {
            stats: &mut stats,
            open_incomplete: &mut open,
            expected: Some(3),
            channels: 0,
            event_type: b"bench",
            now_ns: 0,
            check_gaps: false,
            series_origin_ns: None,
            resume: false,
            marked_messages: false,
        };
        let err = process_frames(b"\x88\x02\x03\xe9", &mut c, &mut ctx).unwrap_err();
        assert_eq!(err, "close frame 1001");
    }

    #[test]
    fn count_only_clients_check_gaps() {
        let mut stats = PoolStats::default();
        let mut open = 0u64;
        let mut ctx = Ctx {
            stats: &mut stats,
            open_incomplete: &mut open,
            expected: None,
            channels: 0,
            event_type: b"bench",
            now_ns: 3_000_000_000,
            check_gaps: true,
            series_origin_ns: Some(1_000_000_000),
            resume: false,
            marked_messages: false,
        };
        let mut c = Client::new(None, None);
        let mut buf = Vec::new();
        // Joined at event 5 (nothing before it is owed); 7 is missing; 8 twice.
        for seq in [5, 6, 8, 8, 9] {
            let m = format!(r#"{{"type":"bench","message":"{seq}:2000000000"}}"#);
            buf.extend([0x81, m.len() as u8]);
            buf.extend_from_slice(m.as_bytes());
        }
        process_frames(&buf, &mut c, &mut ctx).unwrap();
        assert_eq!((stats.deliveries, stats.gaps, stats.duplicates), (5, 1, 1));
        // Second 2 of the series (3 s - 1 s origin) got the four new ones.
        assert_eq!(stats.series.len(), 3);
        assert_eq!(stats.series[2].deliveries, 4);
        assert_eq!(stats.series[2].latency.count(), 4);
    }

    #[test]
    fn channel_frames_are_checked() {
        // 2 channels, 5 events: the client on channel 1 owns events 1 and 3.
        let mut stats = PoolStats::default();
        let mut open = 1u64;
        let mut ctx = Ctx {
            stats: &mut stats,
            open_incomplete: &mut open,
            expected: Some(5),
            channels: 2,
            event_type: b"bench",
            now_ns: 2_000_000,
            check_gaps: false,
            series_origin_ns: None,
            resume: false,
            marked_messages: false,
        };
        let mut c = Client::new(Some(1), Some(channels::events_on(Some(1), 2, 5)));
        assert_eq!(c.expected, Some(2));
        let text = |s: &str| {
            let mut f = vec![0x81, s.len() as u8];
            f.extend_from_slice(s.as_bytes());
            f
        };
        let mut buf = Vec::new();
        for m in ["3", "2", "1", "3", "7"] {
            buf.extend(text(&format!(
                r#"{{"type":"bench","message":"{m}:1000000","channel":"ch1"}}"#
            )));
        }
        process_frames(&buf, &mut c, &mut ctx).unwrap();
        // 3 then 1: in-channel numbers 1 then 0, so 1 is late; 2 belongs to
        // channel 0; 3 again is a duplicate; 7 is beyond the run.
        assert_eq!((stats.unique, stats.deliveries), (2, 3));
        assert_eq!((stats.wrong_channel, stats.duplicates), (1, 1));
        assert_eq!((stats.out_of_order, stats.foreign), (1, 1));
        assert_eq!((stats.complete_clients, open), (1, 0));
    }
}
