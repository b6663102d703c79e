//! Event publishers on the mio reactor.
//!
//! HTTP: `POST <path>?event_type=<t>&message=<seq>:<sent_ns>[:<sched_ns>]`
//! over keep-alive connections, one request in flight per connection.
//! Redis: `PUBLISH <channel> {"type":..,"message":..}` pipelined on one
//! connection. Either paced (`rate`: event `i` is due at `start + i/rate`;
//! the scheduled time goes into the message) or as fast as the in-flight
//! limit allows. The same machinery drives the throughput mode. With
//! channels, event `seq` goes to `<path>/ch<seq % N>` (HTTP) or
//! `<channel>:ch<seq % N>` with a `"channel"` field (Redis).

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token, event::Event};

use crate::channels;
use crate::pool::{open_socket, short_err};
use crate::procfs::unix_ns;
use crate::stats::Latency;
use crate::template::{self, PublishTemplate};
use crate::wire::{self, RespReply};

/// Where and how events are published.
#[derive(Debug, Clone)]
pub enum Protocol {
    Http {
        host_header: String,
        path: String,
        /// `--publish-template` (instead of Herald's query form), its
        /// `--publish-header` lines and `--template-channel`.
        template: Option<(PublishTemplate, Vec<String>, String)>,
    },
    Redis {
        channel: String,
        auth: Option<(Option<String>, String)>,
    },
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Stop after this many events (`None`: until `duration`).
    pub total: Option<u64>,
    /// Stop issuing after this long.
    pub duration: Option<Duration>,
    /// Events per second (`None`: as fast as the in-flight limit allows).
    pub rate: Option<f64>,
    pub event_type: String,
    pub pad: usize,
    /// Spread events over this many channels (0 = default channel).
    pub channels: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Ready,
    Dead,
}

struct Pending {
    at: Instant,
    /// false for AUTH.
    is_event: bool,
}

struct Conn {
    stream: Option<TcpStream>,
    state: ConnState,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    outstanding: VecDeque<Pending>,
    reconnects: u32,
}

/// Reconnect attempts per connection before giving it up.
const MAX_RECONNECTS: u32 = 16;
/// Requests issued per reactor turn at most (keeps the loop responsive).
const MAX_ISSUE_PER_TURN: usize = 4096;

/// A set of publishing connections. Tokens `base..base+conns` belong to it.
pub struct Publisher {
    addr: SocketAddr,
    proto: Protocol,
    plan: Plan,
    conns: Vec<Conn>,
    depth: usize,
    base: usize,
    rr: usize,
    started: Option<(Instant, u64)>,
    stop_at: Option<Instant>,
    msg: String,
    /// Events handed to a connection.
    pub issued: u64,
    pub ok: u64,
    pub errors: u64,
    pub error_reasons: BTreeMap<String, u64>,
    /// Request round-trip time (send to response).
    pub rtt: Latency,
    pub first_send_ns: Option<u64>,
    pub last_send_ns: Option<u64>,
    /// When the last response arrived.
    pub last_reply: Option<Instant>,
}

impl Publisher {
    /// HTTP: `conns` connections with one request each. Redis: one
    /// connection with `in_flight` pipelined commands.
    pub fn new(
        addr: SocketAddr,
        proto: Protocol,
        plan: Plan,
        in_flight: usize,
        base: usize,
    ) -> Self {
        let (n, depth) = match proto {
            Protocol::Http { .. } => (in_flight.max(1), 1),
            Protocol::Redis { .. } => (1, in_flight.max(1)),
        };
        let conns = (0..n)
            .map(|_| Conn {
                stream: None,
                state: ConnState::Dead,
                inbuf: Vec::new(),
                out: Vec::new(),
                outstanding: VecDeque::new(),
                reconnects: 0,
            })
            .collect();
        Publisher {
            addr,
            proto,
            plan,
            conns,
            depth,
            base,
            rr: 0,
            started: None,
            stop_at: None,
            msg: String::new(),
            issued: 0,
            ok: 0,
            errors: 0,
            error_reasons: BTreeMap::new(),
            rtt: Latency::default(),
            first_send_ns: None,
            last_send_ns: None,
            last_reply: None,
        }
    }

    /// Opens every connection (call once, before `start`).
    pub fn connect(&mut self, registry: &Registry) {
        for i in 0..self.conns.len() {
            self.open(registry, i);
        }
    }

    fn open(&mut self, registry: &Registry, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        c.inbuf.clear();
        c.out.clear();
        c.outstanding.clear();
        c.state = ConnState::Dead;
        let mut stream = match open_socket(self.addr, None) {
            Ok(s) => s,
            Err(e) => return self.error(format!("connect: {}", short_err(&e)), 0),
        };
        let c = &mut self.conns[i];
        if let Err(e) = registry.register(
            &mut stream,
            Token(self.base + i),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.error(format!("register: {}", short_err(&e)), 0);
        }
        c.stream = Some(stream);
        c.state = ConnState::Connecting;
        if let Protocol::Redis {
            auth: Some((user, pass)),
            ..
        } = &self.proto
        {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = user {
                args.push(u.as_bytes());
            }
            args.push(pass.as_bytes());
            wire::resp_command(&mut c.out, &args);
            c.outstanding.push_back(Pending {
                at: Instant::now(),
                is_event: false,
            });
        }
    }

    /// Records a failure reason; `events` publishes failed with it.
    fn error(&mut self, reason: String, events: u64) {
        self.errors += events;
        *self.error_reasons.entry(reason).or_default() += events.max(1);
    }

    /// All connections are established (and authenticated), or dead.
    pub fn ready(&self) -> bool {
        self.conns.iter().all(|c| {
            c.state == ConnState::Dead || (c.state == ConnState::Ready && c.outstanding.is_empty())
        })
    }

    /// Connections usable for publishing.
    pub fn live_conns(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.state != ConnState::Dead)
            .count()
    }

    /// Starts issuing events.
    pub fn start(&mut self, now: Instant) {
        self.started = Some((now, unix_ns()));
        self.stop_at = self.plan.duration.map(|d| now + d);
    }

    pub fn started_at(&self) -> Option<Instant> {
        self.started.map(|s| s.0)
    }

    /// Requests outstanding.
    pub fn outstanding(&self) -> usize {
        self.conns.iter().map(|c| c.outstanding.len()).sum()
    }

    /// No more events will be issued.
    pub fn issuing_done(&self, now: Instant) -> bool {
        self.plan.total.is_some_and(|t| self.issued >= t)
            || self.stop_at.is_some_and(|s| now >= s)
            || self.live_conns() == 0
    }

    /// Everything issued has been answered (or failed).
    pub fn done(&self, now: Instant) -> bool {
        self.started.is_some() && self.issuing_done(now) && self.outstanding() == 0
    }

    /// When the reactor must wake up next for this publisher.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let (start, _) = self.started?;
        if self.issuing_done(now) {
            return None;
        }
        let next = self.plan.rate.map(|r| start + sched_offset(self.issued, r));
        match (next, self.stop_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn free_conn(&mut self) -> Option<usize> {
        let n = self.conns.len();
        (0..n).map(|k| (self.rr + k) % n).find(|&i| {
            let c = &self.conns[i];
            c.state == ConnState::Ready && c.outstanding.len() < self.depth
        })
    }

    /// Issues every event that is due and has a free slot.
    pub fn pump(&mut self, now: Instant) {
        let Some((start, start_ns)) = self.started else {
            return;
        };
        for _ in 0..MAX_ISSUE_PER_TURN {
            if self.issuing_done(now) {
                break;
            }
            let seq = self.issued;
            let sched = match self.plan.rate {
                Some(r) => {
                    let off = sched_offset(seq, r);
                    if start + off > Instant::now() {
                        break;
                    }
                    Some(start_ns + off.as_nanos() as u64)
                }
                None => None,
            };
            let Some(i) = self.free_conn() else {
                break;
            };
            self.rr = (i + 1) % self.conns.len();
            self.send(i, seq, sched);
        }
    }

    fn send(&mut self, i: usize, seq: u64, sched_ns: Option<u64>) {
        let sent_ns = unix_ns();
        self.msg.clear();
        wire::format_message(&mut self.msg, seq, sent_ns, sched_ns, self.plan.pad);
        let ch = channels::of_event(seq, self.plan.channels).map(channels::name);
        let c = &mut self.conns[i];
        match &self.proto {
            Protocol::Http {
                host_header,
                template: Some((t, headers, default_channel)),
                ..
            } => t.render(
                &mut c.out,
                host_header,
                headers,
                &template::EventFields {
                    kind: &self.plan.event_type,
                    message: &self.msg,
                    seq,
                    channel: ch.as_deref().unwrap_or(default_channel),
                },
            ),
            Protocol::Http {
                host_header, path, ..
            } => {
                let path = http_path(path, ch.as_deref());
                let req = format!(
                    "POST {path}?event_type={}&message={} HTTP/1.1\r\nHost: {host_header}\r\n\
                     Content-Length: 0\r\n\r\n",
                    url_encode(&self.plan.event_type),
                    self.msg
                );
                c.out.extend_from_slice(req.as_bytes());
            }
            Protocol::Redis { channel, .. } => {
                let (redis_channel, json) =
                    redis_message(channel, ch.as_deref(), &self.plan.event_type, &self.msg);
                wire::resp_command(
                    &mut c.out,
                    &[b"PUBLISH", redis_channel.as_bytes(), json.as_bytes()],
                );
            }
        }
        c.outstanding.push_back(Pending {
            at: Instant::now(),
            is_event: true,
        });
        self.issued += 1;
        self.first_send_ns.get_or_insert(sent_ns);
        self.last_send_ns = Some(sent_ns);
        if let Err(e) = flush(c) {
            self.broken(i, format!("write: {}", short_err(&e)));
        }
    }

    /// A connection broke: its outstanding events count as errors and it
    /// is reopened on the next `reconnect_dead` call.
    fn broken(&mut self, i: usize, reason: String) {
        let c = &mut self.conns[i];
        let lost = c.outstanding.iter().filter(|p| p.is_event).count() as u64;
        c.outstanding.clear();
        c.state = ConnState::Dead;
        c.stream = None; // closes; mio deregisters on drop of the fd
        self.error(reason, lost);
    }

    /// Reopens broken connections (bounded by MAX_RECONNECTS each).
    pub fn reconnect_dead(&mut self, registry: &Registry) {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.state == ConnState::Dead && c.stream.is_none() && c.reconnects < MAX_RECONNECTS {
                c.reconnects += 1;
                self.open(registry, i);
            }
        }
    }

    /// Handles a readiness event for token `token` (absolute).
    pub fn handle(&mut self, token: usize, ev: &Event) {
        let i = token - self.base;
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        if c.state == ConnState::Connecting {
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            match stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    return self.broken(i, format!("connect: {}", short_err(&e)));
                }
                Ok(None) => {}
            }
            match stream.peer_addr() {
                Ok(_) => c.state = ConnState::Ready,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if ev.is_error() || ev.is_write_closed() {
                        return self.broken(i, "connect: refused".into());
                    }
                    return;
                }
                Err(e) => return self.broken(i, format!("connect: {}", short_err(&e))),
            }
        }
        if let Err(e) = flush(c) {
            return self.broken(i, format!("write: {}", short_err(&e)));
        }
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let mut eof = false;
        // Bounded: at most 64 reads per event; the socket re-arms on new data.
        for _ in 0..64 {
            match stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    c.inbuf.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.broken(i, format!("read: {}", short_err(&e))),
            }
        }
        if let Err(reason) = self.parse_replies(i) {
            return self.broken(i, reason);
        }
        if eof {
            self.broken(i, "closed by server".into());
        }
    }

    fn parse_replies(&mut self, i: usize) -> Result<(), String> {
        let now = Instant::now();
        let mut pos = 0;
        let mut close = false;
        let c = &mut self.conns[i];
        // Bounded: each iteration consumes a complete reply.
        while pos < c.inbuf.len() {
            let (ok, len, reason) = match &self.proto {
                Protocol::Http { .. } => match wire::parse_http_response(&c.inbuf[pos..])? {
                    None => break,
                    Some(r) => {
                        close |= r.close;
                        let ok = (200..300).contains(&r.status);
                        (ok, r.len, format!("http {}", r.status))
                    }
                },
                Protocol::Redis { .. } => match wire::parse_resp_reply(&c.inbuf[pos..])? {
                    None => break,
                    Some((RespReply::Ok, len)) => (true, len, String::new()),
                    Some((RespReply::Error(e), len)) => (false, len, format!("redis: {e}")),
                },
            };
            pos += len;
            let Some(p) = c.outstanding.pop_front() else {
                return Err("unsolicited reply".into());
            };
            self.last_reply = Some(now);
            if p.is_event {
                self.rtt
                    .record_ns(now.duration_since(p.at).as_nanos() as i64);
                if ok {
                    self.ok += 1;
                } else {
                    self.errors += 1;
                    *self.error_reasons.entry(reason).or_default() += 1;
                }
            } else if !ok {
                c.inbuf.drain(..pos);
                return Err(format!("auth failed ({reason})"));
            }
        }
        c.inbuf.drain(..pos);
        if close {
            return Err("server closed keep-alive connection".into());
        }
        Ok(())
    }
}

/// Publish path: `<path>/<channel>`, or `<path>` for the default channel.
fn http_path<'a>(path: &'a str, channel: Option<&str>) -> std::borrow::Cow<'a, str> {
    match channel {
        Some(ch) => format!("{}/{ch}", path.trim_end_matches('/')).into(),
        None => path.into(),
    }
}

/// Redis channel and payload: `<prefix>:<channel>` with a `"channel"` field,
/// or `<prefix>` and `{"type","message"}` for the default channel.
fn redis_message(prefix: &str, channel: Option<&str>, kind: &str, msg: &str) -> (String, String) {
    match channel {
        Some(ch) => (
            format!("{prefix}:{ch}"),
            serde_json::json!({"type": kind, "message": msg, "channel": ch}).to_string(),
        ),
        None => (
            prefix.to_string(),
            serde_json::json!({"type": kind, "message": msg}).to_string(),
        ),
    }
}

/// Offset of event `seq` from the start of a paced run.
fn sched_offset(seq: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(seq as f64 / rate)
}

fn flush(c: &mut Conn) -> io::Result<()> {
    let Some(stream) = c.stream.as_mut() else {
        return Ok(());
    };
    if c.state != ConnState::Ready {
        return Ok(());
    }
    wire::write_pending(stream, &mut c.out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_schedules() {
        assert_eq!(url_encode("bench"), "bench");
        assert_eq!(url_encode("a b&c"), "a%20b%26c");
        assert_eq!(sched_offset(500, 1000.0), Duration::from_millis(500));
    }

    #[test]
    fn channel_targets() {
        assert_eq!(http_path("/events", None), "/events");
        assert_eq!(http_path("/events", Some("ch3")), "/events/ch3");
        assert_eq!(http_path("/events/", Some("ch3")), "/events/ch3");
        let (ch, json) = redis_message("events", Some("ch7"), "bench", "7:1");
        assert_eq!(ch, "events:ch7");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["channel"], "ch7");
        assert_eq!(
            (v["type"].as_str(), v["message"].as_str()),
            (Some("bench"), Some("7:1"))
        );
        let (ch, json) = redis_message("events", None, "bench", "0:1");
        assert_eq!(ch, "events");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v, serde_json::json!({"type": "bench", "message": "0:1"}));
    }
}
