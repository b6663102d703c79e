//! RedisLink: one non-blocking connection to Redis, driven by the reactor.
//!
//! Herald keeps two links: a subscriber (SUBSCRIBE to the channels local clients want; every
//! message that arrives is relayed to them) and a command link (publish and history scripts,
//! pipelined; replies come back in order and the reactor matches them to its FIFO of waiting
//! requests). The subscriber remembers what it should be subscribed to and restores it after
//! every reconnect; a channel counts as subscribed only once Redis confirmed it.
//!
//! Transitions:
//!
//! ```text
//! Waiting --retry time reached--> Resolving (host name) | Connecting (IP address)
//! Resolving --address found--> Connecting          Resolving --lookup failed--> Waiting
//! Connecting --socket writable, connected--> Handshaking (AUTH, SELECT, PING or TIME,
//!                                                         SUBSCRIBE sent)
//! Handshaking --every handshake reply OK--> Ready
//! Connecting | Handshaking | Ready --error reply, EOF, socket error, reply beyond the
//!                                   RESP limits--> Waiting (backoff)
//! Handshaking | Ready --oldest command unanswered for `timeout`--> Waiting (backoff, stalled)
//! ```
//!
//! The handshake always ends with a PING (TIME on the command link), so Ready means Redis
//! answered, not merely that a kernel accepted the connection: a stopped Redis process (its
//! kernel still completes TCP handshakes) or a black hole never gets a link to Ready.
//! Replies come in the order commands were sent, so the oldest outstanding command's send
//! time is the whole stall detector: when it is `timeout` old, every command waiting on the
//! link fails (reported as timed out: Redis may still run them later) and the link is reset.
//!
//! Waiting uses capped exponential backoff with jitter, so a dead Redis costs a connection
//! attempt now and then, never a hot loop, and replicas do not reconnect in lockstep. The
//! failure count behind the backoff is forgiven only once a link has stayed Ready for
//! `STABLE_AFTER`: a Redis (or impostor) that accepts, answers the handshake and then drops
//! the connection still sees the attempts slow down. Warnings go through a `RateLog`, so a
//! reconnect loop costs a line per interval, and every error text from Redis is cut short
//! before it reaches a log line or `/health`.
//! A host name is resolved on a short-lived thread (getaddrinfo blocks, and a slow DNS server
//! must not stall every client); the thread wakes the reactor through its `Waker`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use log::{debug, info};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token, Waker};

use super::cmd::{self, Decoder, Reply, RespLimits};
use crate::config::RedisUrl;
use crate::metrics::limit;
use crate::ratelog::{RateLog, truncate_error};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A link that hears nothing for this long is pinged, so a half-open TCP connection (or a
/// stopped Redis) is found by the stall timeout even when Herald has nothing to send.
const IDLE_PING: Duration = Duration::from_secs(15);
/// How long a link must stay Ready before its failure count (and so its backoff) is reset.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// What a link needs to know besides where Redis is.
#[derive(Debug, Clone, Copy)]
pub struct LinkSettings {
    /// The most a reply may nest and weigh.
    pub limits: RespLimits,
    /// How long a command (or a connection attempt and its handshake) may go unanswered.
    pub timeout: Duration,
    /// Subscriber: shard channels (`SSUBSCRIBE`, Redis Cluster) instead of channels. A
    /// channel the node refuses (`MOVED`: another node owns its slot) or drops (its slot
    /// moved away: an unsolicited `sunsubscribe`) is reported, not a reason to reset.
    pub sharded: bool,
    /// Command link: the handshake also asks `INFO cluster`, so `REDIS_CLUSTER=auto` can
    /// tell a cluster node from a single Redis (`cluster_enabled`).
    pub ask_cluster: bool,
}

/// Why a command will get no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkFailure {
    /// Redis did not answer in time: it may still run the command later (outcome unknown).
    pub timed_out: bool,
    /// Short, for a log line or an error body.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Subscriber,
    Publisher,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Subscriber => "subscriber",
            Role::Publisher => "publisher",
        }
    }

    /// The `RateLog` kind of a link's log line: one window per role and news.
    fn kind(self, news: News) -> &'static str {
        match (self, news) {
            (Role::Subscriber, News::Up) => "redis subscriber up",
            (Role::Subscriber, News::Down) => "redis subscriber down",
            (Role::Subscriber, News::Failed) => "redis subscriber failed",
            (Role::Publisher, News::Up) => "redis publisher up",
            (Role::Publisher, News::Down) => "redis publisher down",
            (Role::Publisher, News::Failed) => "redis publisher failed",
        }
    }
}

/// What a link logs about itself.
#[derive(Debug, Clone, Copy)]
enum News {
    Up,
    /// A Ready link failed.
    Down,
    /// An attempt to connect failed.
    Failed,
}

/// What a link tells the reactor.
#[derive(Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Up(Role),
    Down(Role),
    /// A message on a subscribed channel: the payload exactly as published.
    Message {
        channel: Bytes,
        payload: Bytes,
    },
    /// Redis confirmed a subscription: messages on this channel now reach us.
    Subscribed(Bytes),
    /// Sharded: the node refused to subscribe to a shard channel (the error text: `MOVED`,
    /// `CLUSTERDOWN`...). The channel is no longer wanted on this link.
    SubscribeRefused {
        channel: Bytes,
        error: String,
    },
    /// Sharded: the node dropped a shard channel on its own (its slot moved to another
    /// node). The channel is no longer wanted on this link.
    Unsubscribed(Bytes),
    /// `REDIS_CLUSTER=auto` found a cluster node: the broker is a cluster client from now on
    /// (keys that must share a slot get their hash tags).
    BecameCluster,
    /// Cluster: these shard channels' subscriptions were lost (their node's link dropped, or
    /// they moved to another node) and are being restored: events may have been missed
    /// meanwhile. The other channels' subscriptions stand.
    SubscriptionsLost(Vec<Bytes>),
    /// The reply to the oldest outstanding command (`command`), or why there will be none.
    Reply(Result<Reply, LinkFailure>),
    /// Redis went past one of Herald's caps (`metrics::limit`): a reply beyond the RESP
    /// limits, or no answer within the timeout. The link has been reset.
    LimitHit(&'static str),
}

#[derive(Debug)]
enum State {
    Waiting {
        retry_at: Instant,
    },
    Resolving {
        result: Receiver<io::Result<SocketAddr>>,
        since: Instant,
    },
    Connecting {
        since: Instant,
    },
    Handshaking {
        since: Instant,
    },
    Ready {
        since: Instant,
    },
}

/// The reply each command sent is waiting for, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Auth,
    Select,
    /// One confirmation per channel; the generation tells a stale confirmation (of a
    /// subscription since dropped and asked for again) from the current one.
    Subscribe(Bytes, u64),
    Unsubscribe(Bytes),
    /// `INFO cluster`, in the handshake of a command link that must find out.
    ClusterInfo,
    Command,
    /// The last step of the handshake: Redis answers, so the link is really up.
    Hello,
    /// The command link's handshake and idle check: Redis's clock, for judging event ids.
    Time,
    Ping,
}

/// A command sent and the moment it was queued (the stall detector's clock).
#[derive(Debug)]
struct Sent {
    expect: Expect,
    at: Instant,
}

#[derive(Debug)]
pub struct RedisLink {
    role: Role,
    token: Token,
    url: RedisUrl,
    /// Channels to be subscribed to: the generation of the latest SUBSCRIBE sent for each,
    /// and whether Redis confirmed that one.
    wanted: HashMap<Bytes, (u64, bool)>,
    generation: u64,
    state: State,
    stream: Option<TcpStream>,
    input: BytesMut,
    decoder: Decoder,
    output: BytesMut,
    expect: VecDeque<Sent>,
    timeout: Duration,
    failures: u32,
    last_heard: Instant,
    last_error: Option<String>,
    /// The last failure was a stall (Redis stopped answering), not a refusal or a close.
    stalled: bool,
    /// Redis's clock minus ours, in ms, from the latest TIME reply (command link only).
    clock_offset_ms: Option<i64>,
    /// The first "link up" is always logged; later ones (a flapping link) through `warnings`.
    ever_ready: bool,
    warnings: RateLog,
    sharded: bool,
    ask_cluster: bool,
    /// What `INFO cluster` said (`ask_cluster` only): `cluster_enabled:1`.
    cluster_enabled: Option<bool>,
}

impl RedisLink {
    pub fn new(role: Role, token: Token, url: RedisUrl, settings: LinkSettings) -> RedisLink {
        let now = Instant::now();
        RedisLink {
            role,
            token,
            url,
            wanted: HashMap::new(),
            generation: 0,
            state: State::Waiting { retry_at: now },
            stream: None,
            input: BytesMut::new(),
            decoder: Decoder::new(settings.limits),
            output: BytesMut::new(),
            expect: VecDeque::new(),
            timeout: settings.timeout,
            failures: 0,
            last_heard: now,
            last_error: None,
            stalled: false,
            clock_offset_ms: None,
            ever_ready: false,
            warnings: RateLog::default(),
            sharded: settings.sharded,
            ask_cluster: settings.ask_cluster,
            cluster_enabled: None,
        }
    }

    /// Whether the node said it runs in cluster mode (`LinkSettings::ask_cluster`); `None`
    /// until a handshake got that far.
    pub fn cluster_enabled(&self) -> Option<bool> {
        self.cluster_enabled
    }

    pub fn url(&self) -> &RedisUrl {
        &self.url
    }

    pub fn token(&self) -> Token {
        self.token
    }

    /// Closes the connection for good (the node left the cluster, or the link is no longer
    /// needed): every command still waiting fails, as when the link is lost.
    pub fn close(&mut self, registry: &Registry, reason: &str, events: &mut Vec<LinkEvent>) {
        debug!(
            "redis {} link to {} closed: {reason}",
            self.role.name(),
            self.url
        );
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        let lost = LinkFailure {
            timed_out: false,
            reason: format!("Redis connection closed: {reason}"),
        };
        for sent in self.expect.drain(..) {
            if sent.expect == Expect::Command {
                events.push(LinkEvent::Reply(Err(lost.clone())));
            }
        }
        self.output.clear();
        self.state = State::Waiting {
            retry_at: Instant::now() + BACKOFF_CAP,
        };
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Redis stopped answering (a command or a handshake timed out) and has not answered a
    /// new connection's handshake since.
    pub fn is_stalled(&self) -> bool {
        self.stalled && !self.is_ready()
    }

    /// Redis's clock minus ours (ms), as of the last TIME reply; `None` before the first.
    pub fn clock_offset_ms(&self) -> Option<i64> {
        self.clock_offset_ms
    }

    /// Bytes of commands not yet written to the socket (they grow while Redis is not reading).
    pub fn output_bytes(&self) -> usize {
        self.output.len()
    }

    /// When the reactor must call `on_timer` next, at the latest.
    pub fn next_deadline(&self) -> Instant {
        let stall = self.expect.front().map(|sent| sent.at + self.timeout);
        let due = match &self.state {
            State::Waiting { retry_at } => return *retry_at,
            State::Resolving { since, .. }
            | State::Connecting { since }
            | State::Handshaking { since } => *since + self.timeout,
            State::Ready { .. } => self.last_heard + IDLE_PING,
        };
        stall.map_or(due, |stall| stall.min(due))
    }

    /// Appends a command; its reply arrives later as `LinkEvent::Reply`, in order.
    pub fn command(&mut self, args: &[&[u8]]) {
        debug_assert!(self.is_ready(), "bug: command on a link that is not ready");
        cmd::encode(&mut self.output, args);
        self.expect_reply(Expect::Command);
    }

    fn expect_reply(&mut self, expect: Expect) {
        self.expect.push_back(Sent {
            expect,
            at: Instant::now(),
        });
    }

    /// Wants `channel`; subscribes now if connected, else on the next connection.
    pub fn subscribe(&mut self, channel: &[u8]) {
        if self.wanted.contains_key(channel) {
            return;
        }
        self.generation += 1;
        let channel = Bytes::copy_from_slice(channel);
        self.wanted
            .insert(channel.clone(), (self.generation, false));
        if self.is_connected() {
            let command = self.subscribe_command();
            cmd::encode(&mut self.output, &[command, &channel]);
            self.expect_reply(Expect::Subscribe(channel, self.generation));
        }
    }

    pub fn unsubscribe(&mut self, channel: &[u8]) {
        if self.wanted.remove(channel).is_some() && self.is_connected() {
            let command: &[u8] = if self.sharded {
                b"SUNSUBSCRIBE"
            } else {
                b"UNSUBSCRIBE"
            };
            cmd::encode(&mut self.output, &[command, channel]);
            self.expect_reply(Expect::Unsubscribe(Bytes::copy_from_slice(channel)));
        }
    }

    fn subscribe_command(&self) -> &'static [u8] {
        if self.sharded {
            b"SSUBSCRIBE"
        } else {
            b"SUBSCRIBE"
        }
    }

    /// The channels this link is to be subscribed to.
    pub fn wanted(&self) -> impl Iterator<Item = &Bytes> {
        self.wanted.keys()
    }

    /// Redis confirmed the current subscription to `channel`.
    pub fn is_subscribed(&self, channel: &[u8]) -> bool {
        self.is_ready()
            && self
                .wanted
                .get(channel)
                .is_some_and(|&(_, confirmed)| confirmed)
    }

    /// Every wanted subscription is confirmed.
    pub fn all_subscribed(&self) -> bool {
        self.is_ready() && self.wanted.values().all(|&(_, confirmed)| confirmed)
    }

    fn is_connected(&self) -> bool {
        matches!(self.state, State::Handshaking { .. } | State::Ready { .. })
    }

    /// Time-driven work: start a connection when the backoff is over, give up on a stuck
    /// attempt or a command Redis has not answered in time, ping an idle link.
    pub fn on_timer(
        &mut self,
        now: Instant,
        registry: &Registry,
        waker: &Arc<Waker>,
        events: &mut Vec<LinkEvent>,
    ) {
        if self.is_connected()
            && let Some(oldest) = self.expect.front()
            && now >= oldest.at + self.timeout
        {
            let waited = now.duration_since(oldest.at).as_millis();
            let reason = format!("Redis did not answer for {waited} ms (stalled)");
            events.push(LinkEvent::LimitHit(limit::REDIS_TIMEOUT));
            return self.fail_with(registry, reason, true, events);
        }
        match &self.state {
            State::Waiting { retry_at } if now >= *retry_at => self.start(registry, waker, events),
            State::Resolving { since, .. }
            | State::Connecting { since }
            | State::Handshaking { since }
                if now >= *since + self.timeout =>
            {
                // No answer to a SYN (a black hole) or to a handshake (a stopped process) is a
                // stall; a host name that does not resolve in time is not Redis's doing.
                let stalled = matches!(
                    self.state,
                    State::Connecting { .. } | State::Handshaking { .. }
                );
                self.fail_with(registry, "timed out connecting".into(), stalled, events);
            }
            State::Ready { .. } if now >= self.last_heard + IDLE_PING && self.expect.is_empty() => {
                self.send_check();
                self.flush(registry, events);
            }
            _ => {}
        }
    }

    /// The liveness check of the handshake and of an idle link: TIME on the command link (it
    /// also refreshes Redis's clock), PING on the subscriber (in subscribed mode Redis allows
    /// only (UN)SUBSCRIBE, PING and a few others).
    fn send_check(&mut self) {
        match self.role {
            Role::Publisher => {
                cmd::encode(&mut self.output, &[b"TIME"]);
                self.expect_reply(Expect::Time);
            }
            Role::Subscriber => {
                cmd::encode(&mut self.output, &[b"PING"]);
                self.expect_reply(Expect::Ping);
            }
        }
    }

    fn start(&mut self, registry: &Registry, waker: &Arc<Waker>, events: &mut Vec<LinkEvent>) {
        let now = Instant::now();
        if let Ok(ip) = self.url.host.parse::<IpAddr>() {
            self.connect(SocketAddr::new(ip, self.url.port), registry, events);
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (host, port) = (self.url.host.clone(), self.url.port);
        let waker = Arc::clone(waker);
        let spawned = std::thread::Builder::new()
            .name("herald-dns".into())
            .spawn(move || {
                let found = (host.as_str(), port)
                    .to_socket_addrs()
                    .and_then(|mut addrs| {
                        addrs
                            .next()
                            .ok_or_else(|| io::Error::other("no address for host"))
                    });
                let _ = tx.send(found);
                let _ = waker.wake();
            });
        match spawned {
            Ok(_) => {
                self.state = State::Resolving {
                    result: rx,
                    since: now,
                }
            }
            Err(e) => self.fail(registry, format!("cannot start resolver: {e}"), events),
        }
    }

    /// The reactor was woken: a host name lookup may have finished.
    pub fn on_wake(&mut self, registry: &Registry, events: &mut Vec<LinkEvent>) {
        let State::Resolving { result, .. } = &self.state else {
            return;
        };
        match result.try_recv() {
            Ok(Ok(addr)) => self.connect(addr, registry, events),
            Ok(Err(e)) => self.fail(
                registry,
                format!("cannot resolve {}: {e}", self.url.host),
                events,
            ),
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                self.fail(registry, "resolver thread died".into(), events)
            }
        }
    }

    fn connect(&mut self, addr: SocketAddr, registry: &Registry, events: &mut Vec<LinkEvent>) {
        let mut stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(e) => return self.fail(registry, format!("connect to {addr}: {e}"), events),
        };
        if let Err(e) = registry.register(
            &mut stream,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.fail(registry, format!("register: {e}"), events);
        }
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
        self.state = State::Connecting {
            since: Instant::now(),
        };
    }

    /// The socket is readable and/or writable.
    pub fn on_ready(
        &mut self,
        registry: &Registry,
        scratch: &mut [u8],
        events: &mut Vec<LinkEvent>,
    ) {
        if let State::Connecting { since } = self.state {
            let Some(stream) = &self.stream else { return };
            match stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    return self.fail(registry, format!("connect: {e}"), events);
                }
                Ok(None) => {}
            }
            match stream.peer_addr() {
                Ok(_) => self.on_connected(since, events),
                // Not connected yet: a spurious wake-up; wait for the next one.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail(registry, format!("connect: {e}"), events),
            }
        }
        self.read(registry, scratch, events);
        self.flush(registry, events);
    }

    fn on_connected(&mut self, since: Instant, events: &mut Vec<LinkEvent>) {
        debug!("redis {} link connected to {}", self.role.name(), self.url);
        self.input.clear();
        self.decoder.reset();
        self.output.clear();
        self.expect.clear();
        if let Some(password) = &self.url.password {
            let password = password.0.as_bytes();
            match &self.url.username {
                Some(user) => cmd::encode(&mut self.output, &[b"AUTH", user.as_bytes(), password]),
                None => cmd::encode(&mut self.output, &[b"AUTH", password]),
            }
            self.expect_reply(Expect::Auth);
        }
        if self.url.db != 0 {
            let db = self.url.db.to_string();
            cmd::encode(&mut self.output, &[b"SELECT", db.as_bytes()]);
            self.expect_reply(Expect::Select);
        }
        if self.ask_cluster {
            // Before the liveness check, so the handshake still ends with Redis answering it.
            cmd::encode(&mut self.output, &[b"INFO", b"cluster"]);
            self.expect_reply(Expect::ClusterInfo);
        }
        // Before SUBSCRIBE, so the subscriber's PING gets a plain +PONG.
        self.send_check();
        let hello = self
            .expect
            .back_mut()
            .expect("bug: a check was just queued");
        hello.expect = Expect::Hello;
        if !self.wanted.is_empty() {
            // Restore every subscription; Redis confirms each channel. One command for all,
            // except shard channels: one SSUBSCRIBE may name only channels of one slot.
            let channels: Vec<Bytes> = self.wanted.keys().cloned().collect();
            if self.sharded {
                for channel in &channels {
                    cmd::encode(&mut self.output, &[b"SSUBSCRIBE", channel]);
                }
            } else {
                let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
                args.extend(channels.iter().map(|c| &c[..]));
                cmd::encode(&mut self.output, &args);
            }
            for channel in channels {
                self.generation += 1;
                self.wanted
                    .insert(channel.clone(), (self.generation, false));
                self.expect_reply(Expect::Subscribe(channel, self.generation));
            }
        }
        self.last_heard = Instant::now();
        self.state = State::Handshaking { since };
        self.maybe_ready(events);
    }

    fn maybe_ready(&mut self, events: &mut Vec<LinkEvent>) {
        let handshaking = self.expect.iter().any(|sent| {
            matches!(
                sent.expect,
                Expect::Auth | Expect::Select | Expect::Hello | Expect::ClusterInfo
            )
        });
        if matches!(self.state, State::Handshaking { .. }) && !handshaking {
            let message = if self.failures > 0 {
                format!(
                    "redis {} link up again at {} after {} failed attempts",
                    self.role.name(),
                    self.url,
                    self.failures
                )
            } else {
                format!("redis {} link up at {}", self.role.name(), self.url)
            };
            if self.ever_ready {
                self.warnings
                    .log(log::Level::Info, self.role.kind(News::Up), &message);
            } else {
                info!("{message}");
                self.ever_ready = true;
            }
            // `failures` stays until the link has proven stable (see `fail`).
            self.state = State::Ready {
                since: Instant::now(),
            };
            self.stalled = false;
            self.last_error = None;
            events.push(LinkEvent::Up(self.role));
        }
    }

    fn read(&mut self, registry: &Registry, scratch: &mut [u8], events: &mut Vec<LinkEvent>) {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            match stream.read(scratch) {
                Ok(0) => return self.fail(registry, "connection closed by Redis".into(), events),
                Ok(n) => self.input.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(registry, format!("read: {e}"), events),
            }
            // Decode as we go so the input buffer holds at most one read's worth of replies.
            if !self.decode_replies(registry, events) {
                return;
            }
        }
    }

    /// Returns false if the link failed.
    fn decode_replies(&mut self, registry: &Registry, events: &mut Vec<LinkEvent>) -> bool {
        loop {
            let reply = match self.decoder.decode(&mut self.input) {
                Ok(Some(reply)) => reply,
                Ok(None) => return true,
                Err(e) => {
                    if e.is_over_limit() {
                        events.push(LinkEvent::LimitHit(limit::REDIS_REPLY));
                    }
                    self.fail(registry, e.to_string(), events);
                    return false;
                }
            };
            self.last_heard = Instant::now();
            if let Err(reason) = self.on_reply(reply, events) {
                self.fail(registry, reason, events);
                return false;
            }
        }
    }

    fn on_reply(&mut self, reply: Reply, events: &mut Vec<LinkEvent>) -> Result<(), String> {
        // Pushed messages are not answers to a command.
        if let Reply::Message { channel, payload } | Reply::PatternMessage { channel, payload } =
            reply
        {
            events.push(LinkEvent::Message { channel, payload });
            return Ok(());
        }
        // A node drops shard channels of a slot that moved away, unasked: a `sunsubscribe`
        // that is not the answer to our own (SUN)SUBSCRIBE of that channel.
        if let Reply::SubscriptionChange { kind, channel, .. } = &reply
            && self.sharded
            && &kind[..] == b"sunsubscribe"
            && !matches!(self.expect.front(), Some(Sent { expect: Expect::Unsubscribe(c), .. }) if c == channel)
        {
            self.wanted.remove(channel);
            events.push(LinkEvent::Unsubscribed(channel.clone()));
            return Ok(());
        }
        let Some(Sent { expect, .. }) = self.expect.pop_front() else {
            return Err(format!("unexpected reply {}", brief(&reply)));
        };
        match (expect, reply) {
            (Expect::Auth, Reply::Error(e)) => return Err(format!("AUTH failed: {e}")),
            (Expect::Select, Reply::Error(e)) => {
                return Err(format!("SELECT {} failed: {e}", self.url.db));
            }
            (Expect::Subscribe(channel, generation), Reply::Error(e)) if self.sharded => {
                if self
                    .wanted
                    .get(&channel)
                    .is_some_and(|entry| entry.0 == generation)
                {
                    self.wanted.remove(&channel);
                    events.push(LinkEvent::SubscribeRefused { channel, error: e });
                }
            }
            (Expect::Subscribe(..), Reply::Error(e)) => {
                return Err(format!("SUBSCRIBE failed: {e}"));
            }
            (Expect::ClusterInfo, reply) => {
                // An error (INFO forbidden by an ACL, say) counts as "not a cluster":
                // `REDIS_CLUSTER=on` says otherwise.
                self.cluster_enabled = Some(matches!(
                    &reply,
                    Reply::Other(redis_protocol::resp2::types::BytesFrame::BulkString(text))
                        if text.windows(17).any(|w| w == b"cluster_enabled:1")
                ));
            }
            (Expect::Hello | Expect::Time | Expect::Ping, Reply::Error(e)) => {
                return Err(format!("liveness check failed: {e}"));
            }
            (Expect::Auth | Expect::Select, Reply::Status(_)) => {}
            (Expect::Subscribe(channel, generation), Reply::SubscriptionChange { .. }) => {
                if let Some(entry) = self.wanted.get_mut(&channel)
                    && entry.0 == generation
                {
                    entry.1 = true;
                    events.push(LinkEvent::Subscribed(channel));
                }
            }
            (Expect::Unsubscribe(_), Reply::SubscriptionChange { .. }) => {}
            (Expect::Command, reply) => events.push(LinkEvent::Reply(Ok(reply))),
            (Expect::Hello | Expect::Time, Reply::Other(time)) if self.role == Role::Publisher => {
                self.clock_offset_ms = redis_clock_offset_ms(&time);
            }
            // A PING answers +PONG, or ["pong", ""] in subscribed mode.
            (Expect::Hello | Expect::Ping, _) if self.role == Role::Subscriber => {}
            (expected, reply) => {
                return Err(format!("reply {} to {expected:?}", brief(&reply)));
            }
        }
        self.maybe_ready(events);
        Ok(())
    }

    /// Writes what is queued, until the socket refuses more.
    pub fn flush(&mut self, registry: &Registry, events: &mut Vec<LinkEvent>) {
        if matches!(self.state, State::Connecting { .. }) {
            return;
        }
        while !self.output.is_empty() {
            let Some(stream) = self.stream.as_mut() else {
                return;
            };
            match stream.write(&self.output) {
                Ok(0) => return self.fail(registry, "write returned 0".into(), events),
                Ok(n) => {
                    let _ = self.output.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(registry, format!("write: {e}"), events),
            }
        }
    }

    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Drops the connection: fails every outstanding command (never a silent loss), reports
    /// the link down and schedules the next attempt.
    fn fail(&mut self, registry: &Registry, reason: String, events: &mut Vec<LinkEvent>) {
        self.fail_with(registry, reason, false, events);
    }

    /// `stalled`: Redis stopped answering (rather than refusing or closing); the commands in
    /// flight may still run.
    fn fail_with(
        &mut self,
        registry: &Registry,
        reason: String,
        stalled: bool,
        events: &mut Vec<LinkEvent>,
    ) {
        let reason = truncate_error(&reason);
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        let lost = LinkFailure {
            timed_out: stalled,
            reason: if stalled {
                reason.clone()
            } else {
                format!("Redis connection lost: {reason}")
            },
        };
        for sent in self.expect.drain(..) {
            if sent.expect == Expect::Command {
                events.push(LinkEvent::Reply(Err(lost.clone())));
            }
        }
        for (_, confirmed) in self.wanted.values_mut() {
            *confirmed = false;
        }
        let now = Instant::now();
        if let State::Ready { since } = self.state {
            if now.duration_since(since) >= STABLE_AFTER {
                self.failures = 0;
            }
            self.warnings.warn(
                self.role.kind(News::Down),
                &format!(
                    "redis {} link down ({}): {reason}",
                    self.role.name(),
                    self.url
                ),
            );
            events.push(LinkEvent::Down(self.role));
        } else {
            self.warnings.warn(
                self.role.kind(News::Failed),
                &format!(
                    "redis {} link to {} failed (attempt {}): {reason}",
                    self.role.name(),
                    self.url,
                    self.failures + 1
                ),
            );
        }
        self.failures = self.failures.saturating_add(1);
        self.input.clear();
        self.decoder.reset();
        self.output.clear();
        self.last_error = Some(reason);
        self.stalled = stalled;
        self.state = State::Waiting {
            retry_at: now + backoff(self.failures),
        };
    }
}

/// A reply, short enough for a log line.
fn brief(reply: &Reply) -> String {
    truncate_error(&format!("{reply:?}"))
}

/// Redis's clock minus ours, from a TIME reply (`[seconds, microseconds]`, as bulk strings).
fn redis_clock_offset_ms(time: &redis_protocol::resp2::types::BytesFrame) -> Option<i64> {
    use redis_protocol::resp2::types::BytesFrame as F;
    let F::Array(parts) = time else { return None };
    let number = |frame: &F| match frame {
        F::BulkString(text) => std::str::from_utf8(text).ok()?.parse::<i64>().ok(),
        _ => None,
    };
    let [secs, micros] = &parts[..] else {
        return None;
    };
    let redis_ms = number(secs)?.checked_mul(1000)? + number(micros)? / 1000;
    let ours = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as i64;
    Some(redis_ms - ours)
}

/// Capped exponential backoff with "equal jitter": half fixed, half random, so a flock of
/// replicas spreads out instead of reconnecting together.
fn backoff(failures: u32) -> Duration {
    let exp = BACKOFF_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = exp.min(BACKOFF_CAP);
    let half = capped / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_back_off_exponentially_with_a_cap_and_jitter() {
        for failures in 1..40 {
            let d = backoff(failures);
            let ceiling = BACKOFF_FIRST
                .saturating_mul(1 << (failures - 1).min(16))
                .min(BACKOFF_CAP);
            assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
        }
        assert!(backoff(1) <= Duration::from_millis(100));
        assert!(backoff(30) >= Duration::from_millis(2500));
    }
}
