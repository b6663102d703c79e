//! Connection limits, idle keep-alive connections and file descriptor exhaustion: the server
//! sheds what it cannot take, says so (reply, log line, counter), and keeps serving the rest.

mod support;

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Reads until the server closes the connection; true if it did within `WAIT` (EOF or a
/// reset both mean closed: a shed connection may be reset once its reply is out).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ),
    }
}

/// A connection turned away at the limit: checks the 503 JSON reply and the close.
fn assert_shed(stream: TcpStream) {
    let mut reader = BufReader::new(stream);
    let reply = read_reply(&mut reader).expect("a 503 reply before the close");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        reply
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{reply:?}"
    );
    assert!(reply.json()["error"].is_string(), "{reply:?}");
    assert!(
        closed_by_server(reader.get_mut()),
        "a shed connection must be closed"
    );
}

/// A WebSocket handshake that may be refused: `None` on a 503 (counted in `shed`).
fn try_ws(port: u16, shed: &mut u64) -> Option<Client> {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws");
    match tungstenite::client::client(url.as_str(), stream) {
        Ok((ws, response)) => {
            assert_eq!(response.status(), 101);
            Some(ws)
        }
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), 503, "{response:?}");
            *shed += 1;
            None
        }
        Err(e) => panic!("handshake: {e}"),
    }
}

/// A GET that may be refused while a slot is still being freed: retries (bounded) until it
/// is served, counting the 503s in `shed`.
fn get_when_served(port: u16, path: &str, shed: &mut u64) -> HttpReply {
    let start = Instant::now();
    loop {
        let reply = get(port, path);
        if reply.status != 503 {
            return reply;
        }
        *shed += 1;
        assert!(
            start.elapsed() < WAIT,
            "{path} still refused after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn over_the_connection_limit_clients_get_503_and_the_listener_keeps_shedding() {
    const LIMIT: usize = 3;
    let herald = Herald::with(&["--max-connections", &LIMIT.to_string()], &[]);
    let port = herald.port;
    let mut shed = 0u64;

    // Fill every slot with a WebSocket; each completed handshake proves its slot is taken.
    let mut clients: Vec<Client> = (0..LIMIT)
        .map(|_| try_ws(port, &mut shed).expect("a free slot"))
        .collect();
    assert_eq!(shed, 0);

    // Over the limit: a client that sends nothing yet, and clients with a request, each get a
    // 503 and a close, one after the other: the listener does not stall after the first.
    for attempt in 0..6 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        if attempt % 2 == 1 {
            let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        assert_shed(stream);
        shed += 1;
    }
    assert!(
        try_ws(port, &mut shed).is_none(),
        "a WebSocket over the limit"
    );

    // One client leaves: a new one gets its slot (once the server has reaped the old one).
    let leaving = clients.pop().unwrap();
    drop(leaving);
    let start = Instant::now();
    let newcomer = loop {
        if let Some(ws) = try_ws(port, &mut shed) {
            break ws;
        }
        assert!(start.elapsed() < WAIT, "no slot freed after a client left");
        std::thread::sleep(Duration::from_millis(50));
    };
    clients.push(newcomer);

    // Full again, so shedding again; then make room for the checks below.
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_shed(stream);
    shed += 1;
    drop(clients.remove(0));

    let metrics = get_when_served(port, "/metrics", &mut shed).body;
    assert_eq!(
        metric_in(&metrics, "herald_connections_rejected_total"),
        Some(shed as f64),
        "every refused connection counted\n{metrics}"
    );
    let logged = herald
        .log()
        .matches("refused, at the connection limit")
        .count();
    assert_eq!(logged as u64, shed, "one log line per refused connection");

    // The clients that got in are served normally.
    let start = Instant::now();
    loop {
        let q = "/events?event_type=limits&message=still+here";
        let reply = post(port, q, None, "");
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(start.elapsed() < WAIT, "publish still refused");
        std::thread::sleep(Duration::from_millis(50));
    }
    for client in &mut clients {
        assert_eq!(next_event(client)["type"], "limits");
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let herald = Herald::with(&["--idle-timeout-secs", "1"], &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let reply = read_reply(&mut reader).expect("health reply");
    assert_eq!(reply.status, 200);
    assert_ne!(
        reply.header("connection").as_deref(),
        Some("close"),
        "a keep-alive connection"
    );

    // Now idle: the server must close it (EOF) within a few sweeps of its 1 s timeout.
    let start = Instant::now();
    let mut rest = Vec::new();
    let read = reader.read_to_end(&mut rest);
    assert!(
        read.is_ok(),
        "expected EOF from an idle timeout, got {read:?} after {:?}",
        start.elapsed()
    );
    assert!(rest.is_empty(), "no bytes after the reply: {rest:?}");
    eprintln!("idle connection closed after {:?}", start.elapsed());

    wait_until("the idle close to be logged", || {
        herald.log().contains("closed (idle_timeout)")
    });
    assert_eq!(
        metric(
            herald.port,
            "herald_connections_closed_total{reason=\"idle_timeout\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn running_out_of_file_descriptors_pauses_accepts_without_spinning() {
    assert!(
        std::process::Command::new("prlimit")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs prlimit (util-linux)"
    );
    const FDS: &str = "64";
    const CLIENTS: usize = 120;
    let mut herald = Herald::with_prefix(
        &["prlimit", &format!("--nofile={FDS}:{FDS}"), "--"],
        // Long head/idle timeouts: the flood must stay open for the whole measurement.
        &["--head-timeout-secs", "60", "--idle-timeout-secs", "60"],
        &[],
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", herald.pid())).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some(FDS)),
        "herald runs with {FDS} file descriptors:\n{limits}"
    );

    // A keep-alive client already in: it must keep being served at the limit.
    let mut early = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
    early.set_read_timeout(Some(WAIT)).unwrap();
    let mut early_reader = BufReader::new(early.try_clone().unwrap());
    let health = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    early.write_all(health).unwrap();
    assert_eq!(read_reply(&mut early_reader).unwrap().status, 200);

    // More connections than herald has descriptors: the rest wait in the listen backlog.
    let flood: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| TcpStream::connect(("127.0.0.1", herald.port)).unwrap())
        .collect();
    wait_until("the accept failure to be logged", || {
        herald.log().contains("accept failed")
    });

    // At the limit, with connections pending: no busy loop.
    let cpu_before = herald.cpu_time();
    let wall = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = herald.cpu_time() - cpu_before;
    eprintln!("CPU used at the fd limit: {cpu:?} in {:?}", wall.elapsed());
    assert!(
        cpu < Duration::from_secs(1),
        "herald used {cpu:?} of CPU in 2 s at the fd limit: spinning"
    );
    assert!(!herald.has_exited(), "herald died at the fd limit");

    // Open connections are still served meanwhile.
    early.write_all(health).unwrap();
    let reply = read_reply(&mut early_reader).expect("served at the fd limit");
    assert_eq!(reply.status, 200);
    drop(early_reader);
    drop(early);

    // Released: new clients are served again.
    drop(flood);
    wait_until("/health to answer after the flood", || {
        get(herald.port, "/health").status == 200
    });
    assert!(!herald.has_exited());
    let log = herald.log();
    assert!(
        log.contains("pausing accepts, still serving open connections"),
        "{log}"
    );
    assert!(
        log.matches("accept failed").count() <= 3,
        "accept failures are logged at most once per 5 s"
    );
    let errors = metric(herald.port, "herald_accept_errors_total").unwrap();
    assert!(errors >= 1.0, "accept errors counted: {errors}");
}

/// A connection to the server from a chosen source address in 127.0.0.0/8 (bound before
/// connecting, which Linux allows on the loopback without configuration).
fn connect_from(source: [u8; 4], port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from = std::net::SocketAddr::from((source, 0));
    socket.bind(&from.into()).unwrap();
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// One request from a chosen source address; the reply, or `None` if the connection was
/// refused before any request (a 503 arrives unasked, then the close).
fn get_from(source: [u8; 4], port: u16, path: &str) -> HttpReply {
    let mut stream = connect_from(source, port);
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    read_reply(&mut BufReader::new(stream)).expect("a reply")
}

#[test]
fn one_address_cannot_take_more_than_max_connections_per_ip() {
    const PER_IP: usize = 3;
    let herald = Herald::with(&[], &[("MAX_CONNECTIONS_PER_IP", &PER_IP.to_string())]);
    let p = herald.port;
    let a = [127, 0, 0, 1];
    let b = [127, 0, 0, 2];
    let observer = [127, 0, 0, 3];
    // The harness's own startup requests (from 127.0.0.1) are gone first.
    wait_until("only the observer to be connected", || {
        get_from(observer, p, "/health").json()["connections"] == 1
    });
    let mut held: Vec<TcpStream> = (0..PER_IP).map(|_| connect_from(a, p)).collect();
    wait_until("the held connections to be accepted", || {
        get_from(observer, p, "/health").json()["connections"] == PER_IP + 1
    });
    // Over the limit from the same address: 503 and close, several times over.
    for _ in 0..5 {
        assert_shed(connect_from(a, p));
    }
    // Another address is served meanwhile.
    let mut other = ws_client_from(b, p);
    assert_eq!(get_from(b, p, "/health").status, 200);
    // A slot given back (the connection freed) is available again.
    drop(held.pop());
    wait_until("the freed slot to be given back", || {
        get_from(observer, p, "/health").json()["connections"] == PER_IP + 1
    });
    held.push(connect_from(a, p));
    let mut extra = connect_from(a, p);
    extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let shed = read_reply(&mut BufReader::new(extra)).expect("a 503");
    assert_eq!(shed.status, 503, "{shed:?}");
    let page = get_from(observer, p, "/metrics").body;
    assert_eq!(
        metric_in(
            &page,
            "herald_limit_hits_total{limit=\"connections_per_ip\"}"
        ),
        Some(6.0)
    );
    // One warning line for all six (rate-limited), naming the setting.
    assert_eq!(herald.log().matches("MAX_CONNECTIONS_PER_IP").count(), 1);
    // The client on the other address still gets events.
    publish_from_b(p, b);
    assert_eq!(next_event(&mut other)["type"], "per-ip");
}

fn ws_client_from(source: [u8; 4], port: u16) -> Client {
    let stream = connect_from(source, port);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (ws, response) = tungstenite::client::client(url.as_str(), stream).expect("handshake");
    assert_eq!(response.status(), 101);
    ws
}

fn publish_from_b(port: u16, source: [u8; 4]) {
    let mut stream = connect_from(source, port);
    stream
        .write_all(
            b"POST /events?event_type=per-ip HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let reply = read_reply(&mut BufReader::new(stream)).unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
}
