//! Test harness: the real `herald` binary and a real `redis-server`, each on a free port,
//! started per test and stopped by PID when dropped. A failing test prints the server's log.
//! Every wait is a bounded loop.
#![allow(dead_code)]

pub mod cluster;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

pub const WAIT: Duration = Duration::from_secs(10);

/// A port that was free a moment ago (the OS picks it); callers retry if it got taken.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_path(name: &str, port: u16) -> PathBuf {
    std::env::temp_dir().join(format!(
        "herald-test-{}-{name}-{port}.log",
        std::process::id()
    ))
}

/// Polls `ready` every 20 ms until it holds or `WAIT` passes.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until a freshly spawned server answers `ready`. `None` if it exited first
/// (its port was taken, most likely) or never got ready; then it is killed and reaped.
fn wait_ready(mut child: Child, ready: impl Fn() -> bool) -> Option<Child> {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if ready() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

pub struct Herald {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A command that runs herald (`prlimit ... --`), empty to run it directly.
    prefix: Vec<String>,
}

impl Herald {
    /// Starts herald in embedded mode.
    pub fn start() -> Herald {
        Herald::with(&[], &[])
    }

    /// Starts herald with extra flags and environment variables.
    pub fn with(args: &[&str], env: &[(&str, &str)]) -> Herald {
        Herald::with_prefix(&[], args, env)
    }

    /// Starts herald through a wrapper command that ends by exec'ing it, so the PID is
    /// herald's own: `&["prlimit", "--nofile=64:64", "--"]` runs it with 64 file
    /// descriptors (util-linux's `prlimit` sets the limit, then execs the command).
    pub fn with_prefix(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Herald {
        let prefix: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for _ in 0..5 {
            let port = free_port();
            let mut herald = Herald {
                port,
                child: None,
                log: log_path("herald", port),
                args: args.clone(),
                env: env.clone(),
                prefix: prefix.clone(),
            };
            if herald.spawn() {
                return herald;
            }
        }
        panic!("herald did not start on any of 5 ports");
    }

    /// Starts the process on `self.port`; true once /health answers.
    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(&self.log).unwrap();
        let herald_bin = env!("CARGO_BIN_EXE_herald");
        let mut cmd = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(herald_bin);
                cmd
            }
            None => Command::new(herald_bin),
        };
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(&self.args)
            .env_remove("PUBSUB_CACHE_URL")
            .env_remove("REDIS_URL")
            .env_remove("RUST_LOG")
            .env("LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn herald");
        let port = self.port;
        self.child = wait_ready(child, || get(port, "/health").status == 200);
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// True once the process has exited (crashed, or was stopped).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// CPU time the process has used so far (user + system, from /proc/PID/stat).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name, which is in parentheses and may contain spaces:
        // state is field 3, utime 14, stime 15 (proc(5)).
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > WAIT {
                let _ = child.kill();
                panic!("herald did not exit within {WAIT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to `within`) for the process to exit by itself; returns the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > within {
                let _ = child.kill();
                panic!("herald did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Kills the process (SIGKILL); `start_again` brings it back on the same port.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn start_again(&mut self) {
        wait_until("herald to restart on its port", || self.spawn());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- herald log (port {}) ----\n{}", self.port, self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The kernel's clock tick (`getconf CLK_TCK`, almost always 100), for /proc CPU times.
fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::with(&[])
    }

    /// Starts `redis-server` with extra arguments (e.g. `--requirepass x`).
    pub fn with(args: &[&str]) -> Redis {
        for _ in 0..5 {
            let mut redis = Redis {
                port: free_port(),
                child: None,
                args: args.iter().map(|s| s.to_string()).collect(),
            };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 ports");
    }

    /// Starts `redis-server` on a given port (a test that started Herald first).
    pub fn on_port(port: u16) -> Redis {
        let mut redis = Redis {
            port,
            child: None,
            args: vec![],
        };
        assert!(redis.spawn(), "redis-server did not start on port {port}");
        redis
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed? .ci/run installs it)");
        let port = self.port;
        self.child = wait_ready(child, || TcpStream::connect(("127.0.0.1", port)).is_ok());
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's PID, to stop it (SIGSTOP) and resume it (SIGCONT) with `signal`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Started and not stopped (a cluster test kills some nodes).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        wait_until("redis-server to restart on its port", || self.spawn());
    }

    /// Starts it again on the same port with other extra arguments.
    pub fn restart_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// One numeric field of `INFO` (e.g. `total_connections_received`).
    pub fn info_field(&self, field: &str) -> Option<u64> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(b"*1\r\n$4\r\nINFO\r\n").ok()?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut body = vec![0; len];
        std::io::Read::read_exact(&mut reader, &mut body).ok()?;
        let body = String::from_utf8(body).ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Sends one command (RESP, as redis-cli would) on a new connection; returns the reader
    /// for its reply.
    fn send(&self, args: &[&str]) -> BufReader<TcpStream> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(out.as_bytes()).unwrap();
        BufReader::new(stream)
    }

    /// Runs one command; returns the first line of its reply.
    pub fn command(&self, args: &[&str]) -> String {
        let mut line = String::new();
        self.send(args).read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }
}

impl Redis {
    /// Runs a command whose reply is an array of bulk strings and integers (`PUBSUB NUMSUB`,
    /// `XRANGE` ids...); returns its elements as text.
    pub fn command_array(&self, args: &[&str]) -> Vec<String> {
        let mut reader = self.send(args);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let count: usize = line.trim_end().trim_start_matches('*').parse().unwrap();
        let mut items = Vec::new();
        for _ in 0..count {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if let Some(n) = line.trim_end().strip_prefix(':') {
                items.push(n.to_string());
            } else {
                line.clear();
                reader.read_line(&mut line).unwrap();
                items.push(line.trim_end().to_string());
            }
        }
        items
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A parsed HTTP reply.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Reads one reply (head plus Content-Length body) from a stream.
pub fn read_reply(reader: &mut impl BufRead) -> Option<HttpReply> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return if head.is_empty() {
                None
            } else {
                Some(parse_head(head, String::new()))
            };
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let reply = parse_head(head, String::new());
    let len: usize = reply
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(HttpReply {
        body: String::from_utf8(body).unwrap(),
        ..reply
    })
}

fn parse_head(head: String, body: String) -> HttpReply {
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    HttpReply { status, head, body }
}

/// Sends raw bytes on a new connection and reads one reply. Status 0: no reply.
pub fn raw(port: u16, request: &[u8]) -> HttpReply {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return parse_head(String::new(), String::new());
    };
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let _ = stream.write_all(request);
    read_reply(&mut BufReader::new(stream))
        .unwrap_or_else(|| parse_head(String::new(), String::new()))
}

pub fn get(port: u16, path: &str) -> HttpReply {
    raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn post(port: u16, path_and_query: &str, content_type: Option<&str>, body: &str) -> HttpReply {
    let ct = content_type.map_or(String::new(), |c| format!("Content-Type: {c}\r\n"));
    let req = format!(
        "POST {path_and_query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(port, req.as_bytes())
}

pub type Client = WebSocket<TcpStream>;

/// A real WebSocket client on `/ws` (or another path), with a read timeout.
pub fn ws_connect(port: u16, path: &str) -> Client {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, response) = tungstenite::client::client(url.as_str(), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// The next text message, parsed as JSON; control frames are skipped (pings answered).
pub fn next_event(ws: &mut Client) -> Value {
    loop {
        match ws.read().expect("read event") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Reads until the server's close frame; returns its code.
pub fn close_code(ws: &mut Client) -> Option<u16> {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f: CloseFrame| u16::from(f.code)),
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                return None;
            }
            Err(e) => panic!("reading until close: {e}"),
        }
    }
    panic!("no close frame within {WAIT:?}");
}

/// Publishes with the tutorial's curl form and checks the 200.
pub fn publish(port: u16, kind: &str, message: &str) -> Value {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("event_type", kind)
        .append_pair("message", message)
        .finish();
    let reply = post(port, &format!("/events?{q}"), None, "");
    assert_eq!(reply.status, 200, "publish: {}", reply.body);
    reply.json()
}

/// Publishes `count` events on one keep-alive connection, pipelining `window` requests at a
/// time; every reply must be a 200.
pub fn publish_many(port: u16, count: usize, window: usize, message: impl Fn(usize) -> String) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut sent = 0;
    while sent < count {
        let batch = window.min(count - sent);
        let mut out = String::new();
        for i in sent..sent + batch {
            let body = serde_json::json!({"type": "load", "message": message(i)}).to_string();
            out.push_str(&format!(
                "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        writer.write_all(out.as_bytes()).unwrap();
        for _ in 0..batch {
            let reply = read_reply(&mut reader).expect("publish reply");
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        sent += batch;
    }
}

/// One sample of `GET /metrics`, by its exact name and labels as printed
/// (`herald_connections_closed_total{reason="ping_timeout"}`); `None` if absent.
pub fn metric(port: u16, sample: &str) -> Option<f64> {
    let reply = get(port, "/metrics");
    assert_eq!(reply.status, 200, "GET /metrics: {reply:?}");
    metric_in(&reply.body, sample)
}

/// One sample in a `/metrics` page already fetched.
pub fn metric_in(page: &str, sample: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// A raw upgraded WebSocket on `/ws` (no client library in the way), read timeout `WAIT`.
pub fn ws_upgrade_raw(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut stream, &mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // RFC 6455 1.3's example key and its accept value.
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    stream
}

/// A client frame: first byte (FIN, RSV, opcode) as given, payload masked as RFC 6455
/// requires of clients.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one server frame: (first byte, payload). `Err` on EOF, reset or read timeout.
pub fn read_ws_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext)?;
            u16::from_be_bytes(ext) as usize
        }
        127 => panic!("unexpected huge frame"),
        n => n as usize,
    };
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

/// Checks an event's type and message, and that it carries an id and its channel.
pub fn assert_event(event: &Value, kind: &str, message: &str) {
    assert_eq!(event["type"], kind, "{event}");
    assert_eq!(event["message"], message, "{event}");
    assert!(event["id"].is_string(), "no id in {event}");
    assert!(event["channel"].is_string(), "no channel in {event}");
}

/// The same story in every broker mode: events posted with the tutorial's curl form, a form
/// body and a JSON body, then 20 numbered ones, reach every client in order. `receivers` is
/// what the first publish must report (local clients embedded, replicas with Redis).
pub fn every_client_gets_every_event_in_order(port: u16, clients: &mut [Client], receivers: u64) {
    let reply = post(
        port,
        "/events?event_type=order&message=Order+%23123+placed",
        None,
        "",
    );
    assert_eq!(reply.status, 200);
    let ack = reply.json();
    assert_eq!(ack["published"], true);
    assert_eq!(ack["type"], "order");
    assert_eq!(ack["channel"], "events");
    assert_eq!(ack["receivers"], receivers);
    assert!(
        ack["id"].as_str().unwrap().contains('-'),
        "an event id: {ack}"
    );
    let form = post(
        port,
        "/events",
        Some("application/x-www-form-urlencoded"),
        "event_type=deploy&message=v2.1+deployed+to+staging",
    );
    assert_eq!(form.status, 200);
    let body = serde_json::json!({"type": "alert", "message": "caf\u{e9} <b>&"}).to_string();
    assert_eq!(
        post(port, "/events", Some("application/json"), &body).status,
        200
    );
    for i in 0..20 {
        publish(port, "seq", &i.to_string());
    }
    for client in clients {
        assert_event(&next_event(client), "order", "Order #123 placed");
        assert_event(&next_event(client), "deploy", "v2.1 deployed to staging");
        assert_event(&next_event(client), "alert", "caf\u{e9} <b>&");
        for i in 0..20 {
            assert_eq!(next_event(client)["message"], i.to_string());
        }
    }
}

/// Starts herald on `redis` and waits until both links are up and subscriptions confirmed.
pub fn herald_on_redis(redis: &Redis) -> Herald {
    let herald = Herald::with(&[], &[("PUBSUB_CACHE_URL", &redis.url())]);
    wait_redis_connected(&herald);
    herald
}

pub fn wait_redis_connected(herald: &Herald) {
    wait_until("herald to connect to redis", || {
        get(herald.port, "/health").json()["redis"] == "connected"
    });
}

/// Publishes to a channel (`POST /events/<channel>`), checks the 200, returns the reply.
pub fn publish_to(port: u16, channel: &str, kind: &str, message: &str) -> Value {
    let path = format!("/events/{channel}?event_type={kind}&message={message}");
    let reply = post(port, &path, None, "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()
}

/// Like `publish_to`, returning the new event's id.
pub fn publish_id(port: u16, channel: &str, kind: &str, message: &str) -> String {
    publish_to(port, channel, kind, message)["id"]
        .as_str()
        .expect("an event id")
        .to_string()
}
