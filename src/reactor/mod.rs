//! The reactor: one thread, one mio `Poll`, every socket it accepted. It owns its connections
//! (a slab keyed by token), its fan-out table, its broker (Redis: its own links, and the
//! coordinator of what waits on them) and the one scratch buffer every socket is read into. A process runs one reactor per `--threads`, each
//! of this same shape, with its own listener on the port (SO_REUSEPORT); they share only the
//! `Process` (connection limits, shutdown, reports) and, embedded, the hub (ids, history, and
//! each reactor's inbox of events to deliver).
//!
//! One turn (redis's `aeProcessEvents` in spirit):
//! 1. poll, with the nearest deadline as timeout (0 when work was left over);
//! 2. dispatch: accept until `WouldBlock`; Redis links; connections read until `WouldBlock`
//!    (mio is edge-triggered) into the scratch buffer, parse, act; queuing output never writes;
//! 3. flush each dirty connection once, one vectored write; WRITABLE interest only while bytes
//!    remain;
//! 4. reap closed connections (only now, so a freed slot cannot be handed to a newcomer while
//!    events for the old one are still being dispatched), then sweep timers once a second.
//!
//! Data flows one way: socket readable -> scratch -> Conn tail -> http::parse | ws::frame ->
//! route -> broker -> fanout (frame once) -> OutQueues -> dirty list -> flush.

mod acceptor;
mod admission;
mod auth;
mod delivery;
mod http;
mod occupancy;
mod overrun;
mod per_ip;
pub mod process;
mod publishing;
mod redis;
mod replies;
mod resume;
mod subscriptions;
mod websocket;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, info, warn};
use mio::net::{TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::auth::GrantTable;
use crate::broker::Broker;
use crate::config::Config;
use crate::conn::{Became, CloseReason, Conn, Outbox, Phase};
use crate::coordinator::Coordinator;
use crate::coordinator::outcome::Group;
use crate::fanout::Fanout;
use crate::http::reply::Reply;
use crate::hub::SharedEvent;
use crate::metrics::Metrics;
use crate::ratelog::RateLog;
use crate::resp::link::LinkEvent;
use crate::sse;
use crate::static_files::StaticFiles;
use crate::ws::deflate::{Deflater, Inflater};
use crate::ws::frame::{self, close_code};
use acceptor::{Accept, Acceptor};
use process::{Process, Refusal, Stage};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNAL: Token = Token(usize::MAX - 4);
const WAKER: Token = Token(usize::MAX - 5);
/// Slab keys stay below the fixed tokens and the Redis Cluster links' tokens.
const MAX_KEY: usize = crate::resp::shards::FIRST_TOKEN;

/// Size of the one read buffer shared by every socket.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Reads per connection per turn before others get their go.
const READ_BUDGET: usize = 16;
/// Bytes written to one connection per turn before others get their go (redis:
/// NET_MAX_WRITES_PER_EVENT).
const WRITE_BUDGET: usize = 1024 * 1024;
/// Time spent writing subscriber sockets per turn before the reactor looks for new input
/// again. A time budget, not a socket count: a socket's write costs 5 us with one frame and
/// several times that with a burst queued, and what matters is how long a publish waits.
const FANOUT_FLUSH_BUDGET: Duration = Duration::from_micros(500);
/// Subscriber flushes between two looks at the clock.
const FLUSHES_PER_CLOCK_READ: usize = 16;
/// How long a closing connection may take to drain its last bytes and see the peer close.
pub(super) const CLOSE_TIMEOUT_SECS: u32 = 5;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How far to read a readable socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Until `WouldBlock` or EOF.
    ToEnd,
    /// Stop after a read that did not fill the buffer: the socket was empty then, and data
    /// arriving later raises a new edge, so the `WouldBlock` read would be a wasted syscall.
    /// Not when the peer has closed (`ToEnd` then), as its EOF would raise no further edge.
    UntilShortRead,
}

/// Work found during a turn and done by the loop later in it (or at the start of the next,
/// without waiting in `poll`): what finds it (reading, flushing, Redis answers, timers)
/// never calls up into what does it, and nothing is freed while the turn may still use it.
#[derive(Debug, Default)]
struct Later {
    /// Connections with input left to read (budget ran out, or reading resumed).
    read: Vec<usize>,
    /// Subscribers replaying history whose queue drained: read their next page.
    refill: Vec<usize>,
    /// Connections marked `Closed`, freed at the end of the turn.
    closed: Vec<usize>,
}

impl Later {
    /// Whether the next turn has work before it may wait in `poll`.
    fn has_work(&self) -> bool {
        !(self.read.is_empty() && self.refill.is_empty())
    }
}

/// Where a reactor is in its life. SIGTERM: `Draining` (`DRAIN_SECS`: `/health` answers 503,
/// everything else is served as before), then `Closing` (listener closed, 1001 sent, exit
/// by `deadline` at the latest). Each reactor follows the process's `Stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Serving,
    Draining { until: Instant },
    Closing { deadline: Instant },
}

impl Life {
    /// Draining or closing: readiness says 503, HTTP replies close their connection.
    fn is_stopping(self) -> bool {
        self != Life::Serving
    }

    /// Closing: no new connection, idle ones closed.
    fn is_closing(self) -> bool {
        matches!(self, Life::Closing { .. })
    }

    /// When the reactor must move on (drain over) or exit (grace over).
    fn deadline(self) -> Option<Instant> {
        match self {
            Life::Serving => None,
            Life::Draining { until } => Some(until),
            Life::Closing { deadline } => Some(deadline),
        }
    }
}

pub struct Reactor {
    /// Which reactor of the process this is (0 when there is one).
    index: usize,
    process: Arc<Process>,
    poll: Poll,
    /// This reactor's listener, and the pause after running out of descriptors.
    acceptor: Acceptor,
    signals: Option<UnixStream>,
    waker: Arc<Waker>,
    config: Config,
    statics: StaticFiles,
    conns: Slab<Conn>,
    /// What each authenticated subscriber's token allows, and until when.
    grants: GrantTable,
    fanout: Fanout,
    broker: Broker,
    /// With Redis: what waits on it (commands in flight, parked publishes, replays waiting
    /// for the link, catch-ups) and what each reply means; the reactor applies its answers.
    redis_work: Coordinator,
    /// Embedded: the events the hub handed this reactor, taken at once; kept for its
    /// allocation between turns.
    inbox: Vec<Arc<SharedEvent>>,
    /// Publishes answered together (`"channels"`, batches) with members still waiting: at
    /// most one per connection (it waits for the answer), each member pending or parked.
    groups: Slab<Group>,
    /// Subscribers per channel (here and, with Redis, elsewhere), and who watches them.
    occupancy: crate::occupancy::Occupancy,
    metrics: Metrics,
    /// Warnings a peer can cause repeatedly, logged once per interval with a count.
    warnings: RateLog,
    scratch: Vec<u8>,
    /// permessage-deflate: one compressor and one inflater for every connection, reset per
    /// message (no per-connection context: `ws::deflate`).
    deflater: Deflater,
    inflater: Inflater,
    /// Connections with output to flush this turn, and those over their backlog cap.
    outbox: Outbox,
    /// The previous turn's dirty list, emptied, kept for its allocation.
    spare_dirty: Vec<usize>,
    /// Work found during the turn, done by the loop later in it (or in the next).
    later: Later,
    link_events: Vec<LinkEvent>,
    started: Instant,
    /// Seconds since `started`, read once per turn (`clock`).
    now_secs: u32,
    next_serial: u32,
    websockets: usize,
    sse_streams: usize,
    /// Serving, draining (SIGTERM came) or closing (1001 sent; exit by its deadline).
    life: Life,
}

/// Binds the process's listeners: one per reactor, all on one port (the first picks it when
/// the port is 0). Backlog 1024: bursts of handshakes must not overflow the accept queue and
/// cost clients a 1 s SYN retry. With SO_REUSEPORT (several reactors, or `REUSE_PORT`) the
/// kernel spreads new connections over the listeners by a hash of their addresses.
pub fn bind_listeners(config: &Config) -> io::Result<Vec<std::net::TcpListener>> {
    let mut addr = SocketAddr::new(config.bind, config.port);
    let mut listeners = Vec::with_capacity(config.threads);
    for _ in 0..config.threads.max(1) {
        let listener = bind_listener(addr, config.reuse_port)?;
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

impl Reactor {
    /// Reactor `index` of `process`, serving `listener`; prepares everything, serves nothing
    /// yet. Made on the thread that runs it (a reactor holds `Rc`s: it never moves).
    pub fn new(
        config: Config,
        process: Arc<Process>,
        index: usize,
        listener: std::net::TcpListener,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let acceptor = Acceptor::new(listener, poll.registry(), LISTENER)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        process.attach(index, waker.clone());
        let statics = StaticFiles::new(config.static_dir.as_deref())?;
        let broker = Broker::for_reactor(&config, process.hub(), index);
        let outbox = Outbox::new(config.limits.max_queued_bytes);
        let occupancy = new_occupancy(&config);
        let redis_work = Coordinator::new(&config.limits);
        Ok(Reactor {
            index,
            process,
            poll,
            acceptor,
            signals: None,
            waker,
            config,
            statics,
            conns: Slab::with_capacity(1024),
            grants: GrantTable::default(),
            fanout: Fanout::default(),
            broker,
            redis_work,
            inbox: Vec::new(),
            occupancy,
            groups: Slab::new(),
            metrics: Metrics::default(),
            warnings: RateLog::default(),
            scratch: vec![0; SCRATCH_BYTES],
            deflater: Deflater::default(),
            inflater: Inflater::default(),
            outbox,
            spare_dirty: Vec::new(),
            later: Later::default(),
            link_events: Vec::new(),
            started: Instant::now(),
            now_secs: 0,
            next_serial: 0,
            websockets: 0,
            sse_streams: 0,
            life: Life::Serving,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.acceptor.local_addr()
    }

    pub fn static_source(&self) -> String {
        self.statics.source()
    }

    /// A socket that becomes readable when the process gets SIGTERM or SIGINT (the write end
    /// is registered with signal-hook by `main`); reading it starts a graceful shutdown.
    pub fn watch_signals(&mut self, mut signals: UnixStream) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut signals, SIGNAL, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Serves until a graceful shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        loop {
            let timeout = self.poll_timeout(next_sweep);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now_secs = self.started.elapsed().as_secs() as u32;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    SIGNAL => self.on_signal(),
                    WAKER => self.on_wake(),
                    token if self.is_link_token(token) => self.on_link_ready(token),
                    Token(key) => {
                        if event.is_read_closed() || event.is_error() {
                            self.on_readable(key, Drain::ToEnd);
                        } else if event.is_readable() {
                            self.on_readable(key, Drain::UntilShortRead);
                        }
                        if event.is_writable()
                            && let Some(conn) = self.conns.get_mut(key)
                        {
                            conn.mark_dirty(key, &mut self.outbox);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.later.read) {
                self.on_readable(key, Drain::ToEnd);
            }
            for key in std::mem::take(&mut self.later.refill) {
                self.continue_replay(key);
            }
            let now = Instant::now();
            self.on_timers(now);
            self.on_occupancy_timers(now);
            if matches!(self.life, Life::Draining { until } if now >= until) {
                self.process.close();
                self.start_closing();
            }
            self.flush_links();
            // Before this reactor's own flush, so the others write meanwhile.
            self.broker.end_turn();
            self.close_over_cap();
            self.flush_dirty();
            self.reap();
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + SWEEP_EVERY;
            }
            if self.shutdown_complete(now) {
                info!("shutdown complete");
                return Ok(());
            }
        }
    }

    fn poll_timeout(&self, next_sweep: Instant) -> Duration {
        if self.outbox.has_dirty() || self.later.has_work() {
            return Duration::ZERO;
        }
        let mut deadline = next_sweep;
        if let Some(at) = self.acceptor.paused_until() {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.broker.next_deadline() {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.redis_work.deadline() {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.occupancy_deadline() {
            deadline = deadline.min(at);
        }
        if let Some(at) = self.life.deadline() {
            deadline = deadline.min(at);
        }
        deadline.saturating_duration_since(Instant::now())
    }

    // ---- accepting --------------------------------------------------------------------

    fn accept_all(&mut self) {
        loop {
            match self.acceptor.accept(Instant::now()) {
                Accept::Connection(stream, peer) => self.on_accepted(stream, peer),
                Accept::Failed => self.metrics.accept_errors += 1,
                Accept::Exhausted => {
                    self.metrics.accept_errors += 1;
                    return;
                }
                Accept::Done => return,
            }
        }
    }

    fn on_accepted(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let key = self.conns.vacant_key();
        let admitted = if self.life.is_closing() || key >= MAX_KEY {
            Err(Refusal::AtConnectionLimit)
        } else {
            self.process.admit(self.index, key, peer.ip())
        };
        match admitted {
            Ok(()) => {}
            Err(Refusal::AtConnectionLimit) => {
                self.metrics.rejected += 1;
                refuse_connection(&mut stream, "server at its connection limit");
                self.metrics.responded(503);
                debug!("{peer}: refused, at the connection limit");
                return;
            }
            Err(Refusal::PerIpLimit) => {
                refuse_connection(&mut stream, "too many connections from this address");
                self.metrics.responded(503);
                self.metrics
                    .limit_hit(crate::metrics::limit::CONNECTIONS_PER_IP);
                let limit = self.process.per_ip_limit();
                self.warnings.warn(
                    "connections per ip",
                    &format!("{peer}: refused, {limit} connections already open from this address (MAX_CONNECTIONS_PER_IP)"),
                );
                return;
            }
        }
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            warn!("{peer}: cannot register socket: {e}");
            self.process.release(self.index, key);
            return;
        }
        let deadline = self.clock() + self.config.limits.head_timeout_secs;
        self.next_serial = self.next_serial.wrapping_add(1);
        self.conns
            .insert(Conn::new(stream, self.next_serial, deadline));
        self.metrics.accepted += 1;
    }

    // ---- reading and parsing --------------------------------------------------------------

    fn on_readable(&mut self, key: usize, drain: Drain) {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut reads = 0;
        while let Some(conn) = self.conns.get_mut(key) {
            match conn.phase() {
                Phase::Closed => break,
                // Input waits in the kernel until the publish verdict is in (back-pressure).
                Phase::AwaitingBroker => {
                    conn.leave_input();
                    break;
                }
                Phase::ReadingRequest
                    if conn.out.queued_bytes() > self.config.limits.max_queued_bytes =>
                {
                    // A pipelining client not reading its replies: stop parsing until it does.
                    conn.leave_input();
                    break;
                }
                // A WebSocket not reading what it asked for (pongs, acks, echoes): what it
                // sends waits in the kernel until its backlog drains.
                _ if conn.is_read_paused() => {
                    conn.leave_input();
                    break;
                }
                _ => {}
            }
            if reads == READ_BUDGET {
                conn.leave_input();
                self.later.read.push(key);
                break;
            }
            match conn.stream.read(&mut scratch) {
                Ok(0) => {
                    self.on_peer_done(key);
                    break;
                }
                Ok(n) => {
                    reads += 1;
                    conn.take_input_left();
                    self.on_input(key, &mut scratch[..n]);
                    if n < scratch.len() && drain == Drain::UntilShortRead {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close_now(key, CloseReason::IoError, &format!("read: {e}"));
                    break;
                }
            }
        }
        self.scratch = scratch;
    }

    fn on_peer_done(&mut self, key: usize) {
        let close_by = self.clock() + CLOSE_TIMEOUT_SECS;
        let conn = &mut self.conns[key];
        match conn.phase() {
            Phase::Closing => self.close_now(key, CloseReason::Done, "peer closed"),
            // The peer is done sending; let it have what is queued for it.
            _ if !conn.out.is_empty() => conn.peer_finished(close_by),
            _ => self.close_now(key, CloseReason::PeerClosed, "peer closed"),
        }
    }

    /// New bytes for a connection: parse them together with its tail, keep what is left.
    fn on_input(&mut self, key: usize, data: &mut [u8]) {
        let conn = &mut self.conns[key];
        if conn.tail.is_empty() {
            let used = self.process(key, data);
            if let Some(conn) = self.conns.get_mut(key)
                && used < data.len()
                && !matches!(conn.phase(), Phase::Closing | Phase::Closed)
            {
                conn.tail.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut conn.tail);
            buf.extend_from_slice(data);
            self.process_tail(key, buf);
        }
    }

    /// Parses a connection's own buffered bytes, and keeps the unused rest as its tail.
    fn process_tail(&mut self, key: usize, mut buf: Vec<u8>) {
        let used = self.process(key, &mut buf);
        if let Some(conn) = self.conns.get_mut(key)
            && !matches!(conn.phase(), Phase::Closing | Phase::Closed)
        {
            buf.drain(..used);
            conn.tail = buf;
        }
    }

    /// Consumes what it can of `buf` for the connection's phase; returns the bytes used.
    fn process(&mut self, key: usize, buf: &mut [u8]) -> usize {
        match self.conns[key].phase() {
            Phase::ReadingRequest => self.process_http(key, buf),
            Phase::WebSocket | Phase::Echo => self.process_frames(key, buf),
            // A stream only sends; whatever the client says is read and dropped.
            Phase::Sse => buf.len(),
            Phase::AwaitingBroker => 0,
            // We sent a close frame: wait for the peer's, so the handshake completes.
            Phase::Closing if self.conns[key].became() == Became::WebSocket => {
                self.await_close_frame(key, buf)
            }
            // Lingering: input after our last word is read and dropped.
            Phase::Closing | Phase::Closed => buf.len(),
        }
    }

    fn on_timers(&mut self, now: Instant) {
        if self.acceptor.resume_if_due(now) {
            self.accept_all();
        }
        self.on_link_timers(now);
        self.expire_redis_work(now);
    }

    // ---- writing ----------------------------------------------------------------------------

    /// Flushes every connection with queued output, HTTP replies first: a publisher waiting
    /// for its 200 should not wait behind the fan-out its event caused (its next publish is
    /// held back meanwhile).
    ///
    /// Subscribers are flushed for at most `FANOUT_FLUSH_BUDGET` a turn; the rest wait at the
    /// head of the next turn's list. A fan-out to many thousands of sockets thus does not keep
    /// the reactor from reading new publishes, and a subscriber still waiting when the next
    /// event arrives gets both in one write: under load, writes carry several frames each
    /// instead of one syscall per delivery.
    fn flush_dirty(&mut self) {
        // Swap in the spare list, so neither list reallocates turn after turn.
        let spare = std::mem::take(&mut self.spare_dirty);
        let mut dirty = self.outbox.swap_dirty(spare);
        let mut carried_from = dirty.len();
        let started = Instant::now();
        for subscribers in [false, true] {
            let mut flushed = 0;
            for (i, &key) in dirty.iter().enumerate() {
                let Some(conn) = self.conns.get_mut(key) else {
                    continue;
                };
                if !conn.is_dirty() || conn.is_subscriber() != subscribers {
                    continue;
                }
                if subscribers
                    && flushed > 0
                    && flushed % FLUSHES_PER_CLOCK_READ == 0
                    && started.elapsed() >= FANOUT_FLUSH_BUDGET
                {
                    carried_from = i;
                    break;
                }
                flushed += 1;
                conn.clear_dirty();
                if conn.phase() != Phase::Closed {
                    self.flush(key);
                }
            }
        }
        if carried_from < dirty.len() {
            // Those not reached go first next turn; then whatever got dirty meanwhile.
            self.outbox.carry_over(dirty.split_off(carried_from));
        }
        dirty.clear();
        self.spare_dirty = dirty;
    }

    /// Writes a connection's queue: vectored writes up to the per-turn budget. Leftovers ask
    /// for WRITABLE; an empty queue gives it up and moves a closing connection along.
    fn flush(&mut self, key: usize) {
        let registry = self.poll.registry();
        let conn = &mut self.conns[key];
        let mut written = 0;
        while !conn.out.is_empty() {
            if written >= WRITE_BUDGET {
                conn.mark_dirty(key, &mut self.outbox);
                break;
            }
            match conn.out.write_to(&mut conn.stream) {
                Ok(n) => {
                    written += n;
                    self.metrics.bytes_written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if conn.ask_writable() {
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        if let Err(e) = registry.reregister(&mut conn.stream, Token(key), interest)
                        {
                            return self.close_now(
                                key,
                                CloseReason::IoError,
                                &format!("reregister: {e}"),
                            );
                        }
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close_now(key, CloseReason::IoError, &format!("write: {e}")),
            }
        }
        if written > 0 {
            self.on_backlog_drained(key);
        }
        let conn = &mut self.conns[key];
        if !conn.out.is_empty() {
            return;
        }
        if conn.drop_writable() {
            let registry = self.poll.registry();
            let _ = registry.reregister(&mut conn.stream, Token(key), Interest::READABLE);
        }
        match conn.phase() {
            // The peer finished sending and has everything we had to say: done.
            Phase::Closing if conn.is_peer_done() => {
                self.close_now(key, CloseReason::Done, "closed")
            }
            Phase::Closing if !conn.is_write_shut() => {
                // Our last bytes are out. Half-close and linger briefly, reading and dropping,
                // so that closing with unread input does not reset the connection and destroy
                // the reply in flight (nginx's lingering close).
                conn.shut_write();
                conn.shorten_deadline(self.now_secs + CLOSE_TIMEOUT_SECS);
                if self.life.is_closing() {
                    // Shutting down: the kernel delivers what is queued after we close; do
                    // not hold the exit for peers slow to answer our close.
                    self.close_now(key, CloseReason::Done, "closed at shutdown");
                }
            }
            // Parsing stopped at the cap (or a request waits half-read): the requests already
            // buffered go on now, not when the client happens to send more bytes.
            Phase::ReadingRequest if conn.has_input_left() || !conn.tail.is_empty() => {
                self.resume_reading(key);
            }
            _ => {}
        }
    }

    /// Some of a connection's backlog went out: input paused for it may be read again, and
    /// a replay may queue its next page.
    fn on_backlog_drained(&mut self, key: usize) {
        let now = self.clock();
        let conn = &mut self.conns[key];
        let backlog = conn.backlog_bytes();
        if conn.is_read_paused() {
            if backlog <= self.outbox.read_pause_bytes() / 2 {
                conn.resume_reading(now + self.config.limits.ping_interval_secs);
                self.resume_input(key);
            } else {
                // Progress: the client reads, slowly. It has another timeout's worth.
                conn.set_deadline(now + self.config.limits.pong_timeout_secs);
            }
        }
        let conn = &mut self.conns[key];
        if conn
            .replay
            .as_ref()
            .is_some_and(|r| r.has_pages_to_read() && !r.is_reading())
            && backlog <= self.outbox.replay_page_bytes()
        {
            self.later.refill.push(key);
        }
    }

    /// Input left unparsed (paused by back-pressure) is parsed now, then the socket is read
    /// again: a client whose bytes all arrived must not wait for it to send more.
    fn resume_input(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.tail.is_empty() {
            let buf = std::mem::take(&mut conn.tail);
            self.process_tail(key, buf);
        }
        if let Some(conn) = self.conns.get_mut(key)
            && conn.has_input_left()
            && !conn.is_read_paused()
        {
            conn.take_input_left();
            self.later.read.push(key);
        }
    }

    /// Connections whose backlog passed the cap since the last look: subscribers and echo
    /// clients are closed as slow consumers. (An HTTP connection over the cap stops being
    /// parsed instead, until it reads its replies.)
    fn close_over_cap(&mut self) {
        for key in self.outbox.take_over_cap() {
            self.close_slow_consumer(key);
        }
    }

    // ---- closing and timers -----------------------------------------------------------------

    fn reap(&mut self) {
        for key in std::mem::take(&mut self.later.closed) {
            if self
                .conns
                .get(key)
                .is_none_or(|c| c.phase() != Phase::Closed)
            {
                continue;
            }
            self.unsubscribe_all(key);
            self.grants.detach(key);
            self.redis_work.forget_connection(key);
            let mut conn = self.conns.remove(key);
            self.process.release(self.index, key);
            match conn.became() {
                Became::WebSocket => self.websockets -= 1,
                Became::Sse => self.sse_streams -= 1,
                Became::Http => {}
            }
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// The once-a-second pass over every connection: head and idle timeouts, heartbeats,
    /// lingering closes, and memory an idle connection no longer needs.
    fn sweep(&mut self, at: Instant) {
        if let Some(hub) = self.broker.hub()
            && self.index == 0
        {
            // The hub is the process's: one reactor expires it.
            hub.sweep(crate::broker::now_ms());
            self.count_hub_evictions();
        }
        self.report();
        self.refresh_other_reactors(at);
        self.close_expired_grants();
        let now = self.clock();
        let limits = &self.config.limits;
        let mut expired: Vec<(usize, CloseReason)> = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            if conn.out.is_empty() && !conn.is_dirty() {
                conn.release_memory();
            }
            if conn.deadline() > now {
                continue;
            }
            match conn.phase() {
                Phase::ReadingRequest if conn.tail.is_empty() => {
                    expired.push((key, CloseReason::IdleTimeout))
                }
                // Input paused for a backlog that made no progress for a pong timeout: the
                // client floods and does not read.
                Phase::WebSocket | Phase::Echo if conn.is_read_paused() => {
                    expired.push((key, CloseReason::SlowConsumer))
                }
                Phase::ReadingRequest => expired.push((key, CloseReason::HeadTimeout)),
                // The ping may still sit behind a backlog the client has not read yet: the
                // backlog cap deals with that client; the pong clock starts once it is out.
                Phase::WebSocket | Phase::Echo
                    if conn.is_awaiting_pong() && !conn.out.is_empty() =>
                {
                    conn.set_deadline(now + limits.pong_timeout_secs);
                }
                Phase::WebSocket | Phase::Echo if conn.is_awaiting_pong() => {
                    expired.push((key, CloseReason::PingTimeout))
                }
                Phase::WebSocket | Phase::Echo => {
                    conn.queue(key, frame::ping(b""), &mut self.outbox);
                    conn.ping_sent(now + limits.pong_timeout_secs);
                }
                Phase::Sse => {
                    conn.queue(key, Bytes::from_static(sse::HEARTBEAT), &mut self.outbox);
                    conn.set_deadline(now + limits.ping_interval_secs);
                }
                Phase::Closing => expired.push((key, CloseReason::Done)),
                Phase::AwaitingBroker | Phase::Closed => {}
            }
        }
        for (key, why) in expired {
            match why {
                CloseReason::HeadTimeout => {
                    self.log_peer(
                        key,
                        log::Level::Info,
                        "request head not completed in time (408)",
                    );
                    self.metrics.closed(why);
                    let reply = Reply::error(408, "request not completed in time").closing();
                    self.send_reply(key, reply, false, false);
                }
                CloseReason::PingTimeout => {
                    self.log_peer(key, log::Level::Info, "no pong within the timeout; closing");
                    self.close_now(key, why, "ping timeout");
                }
                CloseReason::SlowConsumer => self.close_slow_consumer(key),
                _ => self.close_now(key, why, "timeout"),
            }
        }
    }

    /// The waker fired: a Redis link's timer, the hub's inbox, or the process's stage.
    fn on_wake(&mut self) {
        self.on_link_wake();
        self.deliver_inbox();
        self.follow_stage();
    }

    /// This reactor's counters and gauges, for the other reactors' `/metrics` and `/health`.
    fn report(&self) {
        if self.process.reactors() > 1 {
            self.process.report(self.index, self.own_report());
        }
    }

    // ---- shutdown ---------------------------------------------------------------------------

    /// SIGTERM or SIGINT (read by reactor 0): the process goes one stage further, and every
    /// reactor follows (`follow_stage`, on its wake-up).
    fn on_signal(&mut self) {
        if let Some(signals) = self.signals.as_mut() {
            let mut buf = [0u8; 64];
            while matches!(signals.read(&mut buf), Ok(n) if n > 0) {}
        }
        self.process.signal(!self.config.drain.is_zero());
    }

    /// Does what the process's stage asks: drain, or close.
    fn follow_stage(&mut self) {
        match self.process.stage() {
            Stage::Serving => {}
            Stage::Draining => self.begin_shutdown(),
            Stage::Closing => self.start_closing(),
        }
    }

    /// SIGTERM: first drain, then close. Draining (`DRAIN_SECS`) changes nothing but the
    /// answers: `/health` says 503 "draining" so a readiness probe takes this replica out
    /// of the load balancer, and HTTP replies close their connection so clients come back
    /// through it; meanwhile every request, publish and subscriber is served as before,
    /// because the ingress keeps routing here for a moment after the pod starts to
    /// terminate (endpoint updates propagate in seconds). A second signal skips the rest of
    /// the drain. Exit comes within drain + grace.
    fn begin_shutdown(&mut self) {
        if self.life != Life::Serving {
            return;
        }
        self.life = Life::Draining {
            until: Instant::now() + self.config.drain,
        };
        info!(
            "reactor {}: draining for {:?}: /health answers 503, still serving {} connections ({} WebSockets); then closing",
            self.index,
            self.config.drain,
            self.conns.len(),
            self.websockets
        );
    }

    /// Stop accepting, tell every WebSocket we are going away (1001) so pages reconnect
    /// elsewhere, let in-flight requests and publishes finish, flush, then exit.
    fn start_closing(&mut self) {
        if self.life.is_closing() {
            return;
        }
        self.life = Life::Closing {
            deadline: Instant::now() + self.config.shutdown_grace,
        };
        self.acceptor.close(self.poll.registry());
        self.leave_occupancy();
        info!(
            "reactor {}: shutting down: {} connections ({} WebSockets), {} publishes in flight; grace {:?}",
            self.index,
            self.conns.len(),
            self.websockets,
            self.redis_work.outstanding(),
            self.config.shutdown_grace
        );
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            match conn.phase() {
                Phase::WebSocket | Phase::Echo => {
                    conn.queue(
                        key,
                        frame::close(close_code::GOING_AWAY, "server shutting down"),
                        &mut self.outbox,
                    );
                    self.begin_closing(key);
                    self.metrics.closed(CloseReason::Shutdown);
                }
                Phase::Sse => {
                    // EventSource reconnects by itself, with Last-Event-ID.
                    self.begin_closing(key);
                    self.metrics.closed(CloseReason::Shutdown);
                }
                Phase::ReadingRequest if conn.tail.is_empty() && conn.out.is_empty() => {
                    self.close_now(key, CloseReason::Shutdown, "idle at shutdown");
                }
                _ => {}
            }
        }
    }

    fn shutdown_complete(&self, now: Instant) -> bool {
        match self.life {
            Life::Serving | Life::Draining { .. } => false,
            Life::Closing { deadline } if now >= deadline => {
                if !self.conns.is_empty() {
                    warn!(
                        "shutdown grace over with {} connections left; exiting",
                        self.conns.len()
                    );
                }
                true
            }
            Life::Closing { .. } => self.conns.is_empty() && self.redis_work.outstanding() == 0,
        }
    }

    // ---- helpers ----------------------------------------------------------------------------

    /// Parses what waited in the tail, and reads again if the socket may hold more. Called when
    /// a connection may go on: its Redis answer came, or its queue drained after parsing had
    /// stopped at the cap (the requests already buffered must not wait for new bytes).
    pub(super) fn resume_reading(&mut self, key: usize) {
        if self.conns[key].phase() == Phase::ReadingRequest {
            self.resume_input(key);
        }
    }
}

/// Occupancy of this reactor: alone (embedded), or a replica of its own in Redis (a random
/// id per reactor, so several reactors of one process count as several replicas).
fn new_occupancy(config: &Config) -> crate::occupancy::Occupancy {
    use crate::occupancy::{Occupancy, OccupancyLimits, RedisKeys};
    let limits = OccupancyLimits {
        per_connection: crate::channel::MAX_PER_CONNECTION,
        max_watched_channels: config.max_subscribed_channels,
    };
    match &config.redis {
        None => Occupancy::new(limits),
        Some(_) => {
            // On a Redis Cluster the occupancy scripts read every replica's keys, so they
            // must share one slot: the prefix becomes their hash tag. (`REDIS_CLUSTER=auto`
            // finds out later: `LinkEvent::BecameCluster` renames them then.)
            let cluster = config.redis_cluster == crate::config::ClusterMode::On
                || config.redis_seeds.len() > 1;
            let prefix = if cluster {
                crate::channel::tagged_prefix(&config.channel_prefix)
            } else {
                config.channel_prefix.clone()
            };
            let keys = RedisKeys::new(&prefix, RedisKeys::random_id());
            Occupancy::shared(limits, config.occupancy_refresh, keys, Instant::now())
        }
    }
}

/// A reactor that stops (its shutdown done, an error, a panic unwinding) takes its inbox out of
/// the hub: the reactors still serving through their grace time keep nothing for it.
impl Drop for Reactor {
    fn drop(&mut self) {
        self.broker.close(self.index);
    }
}

/// Sheds a connection rather than stall: a best-effort 503 straight into the fresh socket's
/// empty send buffer, then close (the stream is dropped by the caller).
fn refuse_connection(stream: &mut TcpStream, why: &str) {
    let reply = Reply::error(503, why).closing();
    let _ = stream.write(&reply.to_bytes(false));
}

fn bind_listener(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
