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
//! Connecting --socket writable, connected--> Handshaking (AUTH, SELECT, SUBSCRIBE sent)
//! Handshaking --every handshake reply OK--> Ready
//! Connecting | Handshaking | Ready --error reply, EOF, socket error--> Waiting (backoff)
//! ```
//!
//! Waiting uses capped exponential backoff with jitter, so a dead Redis costs a connection
//! attempt now and then, never a hot loop, and replicas do not reconnect in lockstep.
//! A host name is resolved on a short-lived thread (getaddrinfo blocks, and a slow DNS server
//! must not stall every client); the thread wakes the reactor through its `Waker`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token, Waker};

use super::cmd::{self, Reply};
use crate::config::RedisUrl;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A link that hears nothing for this long is pinged; one that then stays silent as long
/// again is dropped (a half-open TCP connection would otherwise look alive forever).
const IDLE_PING: Duration = Duration::from_secs(15);
/// A connection attempt or handshake that takes longer than this is abandoned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The reply to the oldest outstanding command (`command`), or why there will be none.
    Reply(Result<Reply, String>),
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
    Ready,
}

/// The reply each command sent is waiting for, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Auth,
    Select,
    /// One confirmation per channel; the generation tells a stale confirmation (of a
    /// subscription since dropped and asked for again) from the current one.
    Subscribe(Bytes, u64),
    Unsubscribe,
    Command,
    Ping,
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
    output: BytesMut,
    expect: VecDeque<Expect>,
    failures: u32,
    last_heard: Instant,
    last_error: Option<String>,
}

impl RedisLink {
    pub fn new(role: Role, token: Token, url: RedisUrl) -> RedisLink {
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
            output: BytesMut::new(),
            expect: VecDeque::new(),
            failures: 0,
            last_heard: now,
            last_error: None,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready)
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// When the reactor must call `on_timer` next, at the latest.
    pub fn next_deadline(&self) -> Instant {
        match &self.state {
            State::Waiting { retry_at } => *retry_at,
            State::Resolving { since, .. }
            | State::Connecting { since }
            | State::Handshaking { since } => *since + CONNECT_TIMEOUT,
            State::Ready => self.last_heard + IDLE_PING,
        }
    }

    /// Appends a command; its reply arrives later as `LinkEvent::Reply`, in order.
    pub fn command(&mut self, args: &[&[u8]]) {
        debug_assert!(self.is_ready(), "bug: command on a link that is not ready");
        cmd::encode(&mut self.output, args);
        self.expect.push_back(Expect::Command);
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
            cmd::encode(&mut self.output, &[b"SUBSCRIBE", &channel]);
            self.expect
                .push_back(Expect::Subscribe(channel, self.generation));
        }
    }

    pub fn unsubscribe(&mut self, channel: &[u8]) {
        if self.wanted.remove(channel).is_some() && self.is_connected() {
            cmd::encode(&mut self.output, &[b"UNSUBSCRIBE", channel]);
            self.expect.push_back(Expect::Unsubscribe);
        }
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
        matches!(self.state, State::Handshaking { .. } | State::Ready)
    }

    /// Time-driven work: start a connection when the backoff is over, give up on a stuck
    /// attempt, ping an idle link and drop one that stopped answering.
    pub fn on_timer(
        &mut self,
        now: Instant,
        registry: &Registry,
        waker: &Arc<Waker>,
        events: &mut Vec<LinkEvent>,
    ) {
        match &self.state {
            State::Waiting { retry_at } if now >= *retry_at => self.start(registry, waker, events),
            State::Resolving { since, .. }
            | State::Connecting { since }
            | State::Handshaking { since }
                if now >= *since + CONNECT_TIMEOUT =>
            {
                self.fail(registry, "timed out connecting".into(), events);
            }
            State::Ready if now >= self.last_heard + IDLE_PING => {
                if self.expect.contains(&Expect::Ping) {
                    if now >= self.last_heard + 2 * IDLE_PING {
                        self.fail(registry, "no reply to PING".into(), events);
                    }
                } else {
                    cmd::encode(&mut self.output, &[b"PING"]);
                    self.expect.push_back(Expect::Ping);
                    self.flush(registry, events);
                }
            }
            _ => {}
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
        self.output.clear();
        self.expect.clear();
        if let Some(password) = &self.url.password {
            let password = password.0.as_bytes();
            match &self.url.username {
                Some(user) => cmd::encode(&mut self.output, &[b"AUTH", user.as_bytes(), password]),
                None => cmd::encode(&mut self.output, &[b"AUTH", password]),
            }
            self.expect.push_back(Expect::Auth);
        }
        if self.url.db != 0 {
            let db = self.url.db.to_string();
            cmd::encode(&mut self.output, &[b"SELECT", db.as_bytes()]);
            self.expect.push_back(Expect::Select);
        }
        if !self.wanted.is_empty() {
            // Restore every subscription in one command; Redis confirms each channel.
            let channels: Vec<Bytes> = self.wanted.keys().cloned().collect();
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(channels.iter().map(|c| &c[..]));
            cmd::encode(&mut self.output, &args);
            for channel in channels {
                self.generation += 1;
                self.wanted
                    .insert(channel.clone(), (self.generation, false));
                self.expect
                    .push_back(Expect::Subscribe(channel, self.generation));
            }
        }
        self.last_heard = Instant::now();
        self.state = State::Handshaking { since };
        self.maybe_ready(events);
    }

    fn maybe_ready(&mut self, events: &mut Vec<LinkEvent>) {
        let handshaking = self
            .expect
            .iter()
            .any(|e| matches!(e, Expect::Auth | Expect::Select));
        if matches!(self.state, State::Handshaking { .. }) && !handshaking {
            if self.failures > 0 {
                info!(
                    "redis {} link up again at {} after {} failed attempts",
                    self.role.name(),
                    self.url,
                    self.failures
                );
            } else {
                info!("redis {} link up at {}", self.role.name(), self.url);
            }
            self.state = State::Ready;
            self.failures = 0;
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
            let reply = match cmd::decode(&mut self.input) {
                Ok(Some(reply)) => reply,
                Ok(None) => return true,
                Err(e) => {
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
        let Some(expected) = self.expect.pop_front() else {
            return Err(format!("unexpected reply {reply:?}"));
        };
        match (expected, reply) {
            (Expect::Auth, Reply::Error(e)) => return Err(format!("AUTH failed: {e}")),
            (Expect::Select, Reply::Error(e)) => {
                return Err(format!("SELECT {} failed: {e}", self.url.db));
            }
            (Expect::Subscribe(..), Reply::Error(e)) => {
                return Err(format!("SUBSCRIBE failed: {e}"));
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
            (Expect::Unsubscribe, Reply::SubscriptionChange { .. }) => {}
            (Expect::Command, reply) => events.push(LinkEvent::Reply(Ok(reply))),
            // A PING answers +PONG, or ["pong", ""] in subscribed mode.
            (Expect::Ping, _) => {}
            (expected, reply) => return Err(format!("reply {reply:?} to {expected:?}")),
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

    /// Drops the connection: fails every outstanding PUBLISH (never a silent loss), reports
    /// the link down and schedules the next attempt.
    fn fail(&mut self, registry: &Registry, reason: String, events: &mut Vec<LinkEvent>) {
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        for expected in self.expect.drain(..) {
            if expected == Expect::Command {
                events.push(LinkEvent::Reply(Err(format!(
                    "Redis connection lost: {reason}"
                ))));
            }
        }
        for (_, confirmed) in self.wanted.values_mut() {
            *confirmed = false;
        }
        if matches!(self.state, State::Ready) {
            warn!(
                "redis {} link down ({}): {reason}",
                self.role.name(),
                self.url
            );
            events.push(LinkEvent::Down(self.role));
        } else if self.failures < 3 || self.failures.is_multiple_of(10) {
            warn!(
                "redis {} link to {} failed (attempt {}): {reason}",
                self.role.name(),
                self.url,
                self.failures + 1
            );
        }
        self.failures = self.failures.saturating_add(1);
        self.input.clear();
        self.output.clear();
        self.last_error = Some(reason);
        self.state = State::Waiting {
            retry_at: Instant::now() + backoff(self.failures),
        };
    }
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
