//! A storm of bad input on loopback: thousands of malformed requests, broken WebSocket
//! frames, partial writes, connections dropped mid-request and heads left hanging. Afterwards
//! the same process serves normally and its memory is back near where it started.
//!
//! Reproducible: every byte comes from a seeded PRNG, one seed per thread.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::*;

const THREADS: u64 = 6;
const CONNECTIONS_PER_THREAD: usize = 500;
/// Heads left hanging per thread, held until the whole storm is over (keeps the test under
/// a 1024 file descriptor limit).
const HELD_PER_THREAD: usize = 40;
/// The storm stops early rather than run past this.
const STORM_BUDGET: Duration = Duration::from_secs(60);

/// xorshift64*: small, seeded, good enough to pick bytes and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `min` to `min + spread - 1` random bytes.
    fn bytes(&mut self, min: usize, spread: u64) -> Vec<u8> {
        let len = min + self.below(spread) as usize;
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Bytes that look like HTTP: mostly header characters, with CR, LF, ':' and junk.
    fn http_ish(&mut self, min: usize, spread: u64) -> Vec<u8> {
        const ALPHABET: &[u8] = b"GETPOSaz09 /:;=?&%+-_.\r\n\r\n\t\x00\x7f\xff\xc3";
        let len = min + self.below(spread) as usize;
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len() as u64) as usize])
            .collect()
    }
}

/// Writes `data` in odd-sized pieces; stops quietly when the server has closed.
fn write_in_pieces(stream: &mut TcpStream, data: &[u8], rng: &mut Rng) {
    let mut at = 0;
    while at < data.len() {
        let n = (1 + rng.below(97) as usize).min(data.len() - at);
        if stream.write_all(&data[at..at + n]).is_err() {
            return;
        }
        at += n;
    }
}

/// Reads whatever the server says until it closes, for at most `limit`.
fn drain(stream: &mut TcpStream, limit: Duration) {
    let _ = stream.set_read_timeout(Some(limit));
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A WebSocket frame that is wrong in one of many ways (or, now and then, fine).
fn broken_frame(rng: &mut Rng) -> Vec<u8> {
    let payload = rng.bytes(0, 300);
    match rng.below(9) {
        // Unmasked.
        0 => {
            let mut f = vec![0x81, payload.len().min(125) as u8];
            f.extend_from_slice(&payload[..payload.len().min(125)]);
            f
        }
        // Reserved bits, reserved opcodes, random first byte.
        1 => masked_frame(0xC1 | (rng.below(16) as u8), &payload),
        2 => masked_frame(rng.next() as u8, &payload),
        // A 64-bit length far beyond any limit.
        3 => {
            let mut f = vec![0x82, 0xFF];
            f.extend_from_slice(&(u64::MAX >> rng.below(8)).to_be_bytes());
            f.extend_from_slice(&[1, 2, 3, 4]);
            f
        }
        // Invalid UTF-8 in a text frame.
        4 => masked_frame(0x81, &[0xff, 0xfe, 0xfd]),
        // Control frame too long, fragmented control frame, orphan continuation.
        5 => masked_frame(0x89, &rng.bytes(126, 50)),
        6 => masked_frame(0x09, b"x"),
        7 => masked_frame(0x00, &payload),
        // Pure noise.
        _ => rng.bytes(1, 200),
    }
}

/// One connection's worth of trouble. Returns the stream if it is to be held open.
fn one_bad_client(port: u16, rng: &mut Rng, may_hold: bool) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    match rng.below(8) {
        // Random bytes, then half-close and read the verdict.
        0 => {
            let junk = rng.bytes(1, 3000);
            write_in_pieces(&mut stream, &junk, rng);
            let _ = stream.shutdown(Shutdown::Write);
            drain(&mut stream, Duration::from_secs(2));
        }
        // HTTP-looking noise, dropped without reading (the server may get a reset).
        1 => {
            let junk = rng.http_ish(1, 2000);
            write_in_pieces(&mut stream, &junk, rng);
        }
        // A request cut off mid-head or mid-body, then dropped.
        2 => {
            let body = rng.bytes(0, 500);
            let claimed = body.len() + 1 + rng.below(1000) as usize;
            let mut req = format!(
                "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {claimed}\r\n\r\n"
            )
            .into_bytes();
            req.extend_from_slice(&body);
            let cut = rng.below(req.len() as u64) as usize;
            write_in_pieces(&mut stream, &req[..cut], rng);
        }
        // Upgraded, then broken frames.
        3 => {
            write_in_pieces(&mut stream, UPGRADE, rng);
            let mut frames = Vec::new();
            for _ in 0..1 + rng.below(3) {
                frames.extend(broken_frame(rng));
            }
            write_in_pieces(&mut stream, &frames, rng);
            if rng.below(2) == 0 {
                let _ = stream.shutdown(Shutdown::Write);
                drain(&mut stream, Duration::from_secs(2));
            }
        }
        // A request left hanging, held open: part of a head, or a head and part of a large
        // body (which the server must buffer until the request times out).
        4 if may_hold => {
            if rng.below(2) == 0 {
                let head = b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ";
                let cut = 1 + rng.below(head.len() as u64) as usize;
                write_in_pieces(&mut stream, &head[..cut], rng);
            } else {
                let head = "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n";
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&rng.http_ish(20_000, 30_000));
            }
            return Some(stream);
        }
        // Heads too large, too many headers, bad methods and versions, bad lengths, odd
        // expectations, an upgrade that carries a body.
        4 | 5 => {
            let req = match rng.below(8) {
                0 => format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000)),
                1 => {
                    (0..200)
                        .map(|i| format!("X-{i}: v\r\n"))
                        .collect::<String>()
                        + "\r\n"
                }
                2 => "BREW /pot HTCPCP/1.0\r\n\r\n".to_string(),
                3 => "POST /events HTTP/1.1\r\nContent-Length: -5\r\n\r\n".to_string(),
                4 => "POST /events HTTP/1.1\r\nExpect: 42-maybe\r\nContent-Length: 3\r\n\r\nabc"
                    .to_string(),
                // A 100 Continue comes back; the body never does.
                5 => {
                    "POST /events HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 50000\r\n\r\n"
                        .to_string()
                }
                6 => format!(
                    "{}Content-Length: 5\r\n\r\nhello",
                    std::str::from_utf8(&UPGRADE[..UPGRADE.len() - 2]).unwrap()
                ),
                _ => "POST /events HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"
                    .to_string(),
            };
            write_in_pieces(&mut stream, req.as_bytes(), rng);
            let _ = stream.shutdown(Shutdown::Write);
            drain(&mut stream, Duration::from_secs(2));
        }
        // A valid request followed by garbage on the same connection (pipelined).
        6 => {
            let mut req = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
            req.extend(rng.http_ish(1, 500));
            write_in_pieces(&mut stream, &req, rng);
            let _ = stream.shutdown(Shutdown::Write);
            drain(&mut stream, Duration::from_secs(2));
        }
        // Connect and hang up at once, or after one byte.
        _ => {
            if rng.below(2) == 0 {
                let _ = stream.write_all(b"G");
            }
        }
    }
    None
}

/// VmRSS of a process, in bytes.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// One storm: `THREADS` threads of bad clients, then waits for the server to time out the
/// requests left hanging (each must get its 408). Returns the peak RSS seen meanwhile.
fn storm(herald: &Herald, round: u64) -> u64 {
    let (port, pid) = (herald.port, herald.pid());
    let peak = Arc::new(AtomicU64::new(rss_of(pid).unwrap_or(0)));
    let storm_over = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, storm_over) = (Arc::clone(&peak), Arc::clone(&storm_over));
        std::thread::spawn(move || {
            while !storm_over.load(Ordering::Relaxed) {
                if let Some(rss) = rss_of(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let start = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let seed = 0x9E37_79B9_7F4A_7C15
                    ^ (round * THREADS + t + 1).wrapping_mul(0x1234_5678_9abc);
                let mut rng = Rng(seed);
                let mut held = Vec::new();
                let mut done = 0;
                for _ in 0..CONNECTIONS_PER_THREAD {
                    if start.elapsed() > STORM_BUDGET {
                        break;
                    }
                    let may_hold = held.len() < HELD_PER_THREAD;
                    if let Some(stream) = one_bad_client(port, &mut rng, may_hold) {
                        held.push(stream);
                    }
                    done += 1;
                }
                (done, held)
            })
        })
        .collect();
    let mut held = Vec::new();
    let mut connections = 0;
    for worker in workers {
        let (done, streams) = worker.join().expect("storm thread");
        connections += done;
        held.extend(streams);
    }
    let storm_time = start.elapsed();
    let health = get(port, "/health");
    eprintln!(
        "storm {round}: {connections} connections ({} left hanging) in {storm_time:?}; health {}",
        held.len(),
        health.body
    );
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(
        connections,
        THREADS as usize * CONNECTIONS_PER_THREAD,
        "storm cut short by its time budget"
    );

    // The requests left hanging time out: each gets its 408 and is closed by the server.
    let mut timed_out = 0;
    for stream in &mut held {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        if reply.starts_with(b"HTTP/1.1 408 ") {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, held.len(), "every hanging request gets a 408");
    drop(held);
    storm_over.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    // Everything the storm opened is closed, then memory settles.
    wait_until("the storm's connections to be closed", || {
        let health = get(port, "/health");
        health.status == 200 && health.json()["connections"].as_u64() <= Some(2)
    });
    std::thread::sleep(Duration::from_secs(3));
    peak.load(Ordering::Relaxed)
}

#[test]
fn a_storm_of_bad_input_leaves_the_server_serving_and_its_memory_back_near_baseline() {
    const MIB: u64 = 1024 * 1024;
    let mut herald = Herald::with(
        // Short timeouts so that what the storm leaves hanging is closed soon after; info
        // level so the log holds the verdicts without a debug line per connection.
        &["--head-timeout-secs", "2", "--idle-timeout-secs", "2"],
        &[("LOG_LEVEL", "info")],
    );
    let port = herald.port;
    let pid = herald.pid();
    let mut client = ws_connect(port, "/ws");
    publish(port, "before", "storm");
    assert_eq!(next_event(&mut client)["type"], "before");
    let rss_before = herald.rss_bytes();

    let peak_first = storm(&herald, 0);
    let rss_after_first = herald.rss_bytes();
    // A second storm: memory freed after the first is reused, not added to.
    let peak_second = storm(&herald, 1);
    let rss_after = herald.rss_bytes();
    eprintln!(
        "RSS before {rss_before}, peak {peak_first}, after {rss_after_first}; \
second storm peak {peak_second}, after {rss_after} (growth {} bytes)",
        rss_after as i64 - rss_before as i64
    );

    // Same process, still serving.
    assert!(!herald.has_exited(), "herald died in the storm");
    assert_eq!(herald.pid(), pid);
    let health = get(port, "/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["websockets"], 1, "{}", health.body);
    publish(port, "after", "storm");
    assert_eq!(next_event(&mut client)["type"], "after");
    let log = herald.log();
    assert!(!log.contains("panicked"), "{log}");
    let metrics = get(port, "/metrics").body;
    let closed = |why: &str| {
        metric_in(
            &metrics,
            &format!("herald_connections_closed_total{{reason=\"{why}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(closed("bad_request") > 0.0, "{metrics}");
    assert!(closed("protocol_error") > 0.0, "{metrics}");
    assert!(closed("head_timeout") > 0.0, "{metrics}");

    assert!(
        rss_after.saturating_sub(rss_before) < 8 * MIB,
        "RSS grew from {rss_before} to {rss_after} bytes"
    );
    assert!(
        rss_after.saturating_sub(rss_after_first) < 2 * MIB,
        "RSS grew by {} bytes in a second, similar storm: memory is not reused",
        rss_after - rss_after_first
    );
}
