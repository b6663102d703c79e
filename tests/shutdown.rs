//! SIGTERM: drain if asked to (serve on, `/health` at 503 so the ingress stops routing
//! here), then stop accepting, close every WebSocket with 1001 so pages reconnect elsewhere,
//! finish what is in flight, exit 0.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn sigterm_sends_going_away_and_exits_cleanly() {
    let mut herald = Herald::start();
    let mut clients: Vec<Client> = (0..3).map(|_| ws_connect(herald.port, "/ws")).collect();
    publish(herald.port, "last", "before shutdown");
    let port = herald.port;
    let code = herald.terminate();
    assert_eq!(code, Some(0), "exit status after SIGTERM");
    for client in &mut clients {
        assert_eq!(next_event(client)["type"], "last");
        assert_eq!(close_code(client), Some(1001));
    }
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "listener closed"
    );
}

#[test]
fn sigterm_finishes_pending_publishes_through_redis() {
    let redis = Redis::start();
    let mut herald = Herald::with(&[], &[("PUBSUB_CACHE_URL", &redis.url())]);
    wait_until("redis connected", || {
        get(herald.port, "/health").json()["redis"] == "connected"
    });
    let mut client = ws_connect(herald.port, "/ws");
    publish(herald.port, "one", "1");
    assert_eq!(next_event(&mut client)["type"], "one");
    assert_eq!(herald.terminate(), Some(0));
    assert_eq!(close_code(&mut client), Some(1001));
}

/// With `DRAIN_SECS`, SIGTERM first changes only what the probes see: `/health` answers 503
/// "draining" (readiness fails, the replica leaves the load balancer) while `/livez` stays 200,
/// and everything else is served as before: publishes, subscribers old and new. The 1001
/// closes come after the drain, and the exit within drain + grace even with a peer that
/// never finishes its request.
#[test]
fn sigterm_drains_before_closing() {
    const DRAIN: Duration = Duration::from_secs(5);
    const GRACE: Duration = Duration::from_secs(2);
    let mut herald = Herald::with(
        &[],
        &[
            ("DRAIN_SECS", &DRAIN.as_secs().to_string()),
            ("SHUTDOWN_GRACE_SECS", &GRACE.as_secs().to_string()),
        ],
    );
    let port = herald.port;
    let mut subscriber = ws_connect(port, "/ws");
    // Half a request: not idle, so it is left to finish and holds the exit until the grace
    // runs out (its head timeout, 10 s, comes later).
    let mut stubborn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stubborn
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    assert_eq!(get(port, "/health").json()["status"], "ok");

    let terminated = Instant::now();
    signal(herald.pid(), "TERM");
    wait_until("/health to say draining", || {
        get(port, "/health").status == 503
    });
    let health = get(port, "/health");
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["status"], "draining", "{}", health.body);
    assert_eq!(
        get(port, "/livez").status,
        200,
        "liveness holds while draining"
    );

    publish(port, "during", "drain");
    assert_eq!(next_event(&mut subscriber)["type"], "during");
    let mut latecomer = ws_connect(port, "/ws");
    publish(port, "still", "serving");
    assert_eq!(next_event(&mut subscriber)["type"], "still");
    assert_eq!(next_event(&mut latecomer)["type"], "still");
    // Keep-alive is declined: the client's next request goes through the ingress again.
    let reply = raw(port, b"GET /livez HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(reply.header("connection").as_deref(), Some("close"));
    assert!(
        terminated.elapsed() < DRAIN,
        "the checks above ran after the drain: the machine is too slow for this test"
    );

    assert_eq!(close_code(&mut subscriber), Some(1001));
    assert!(
        terminated.elapsed() >= DRAIN,
        "1001 came {:?} after SIGTERM, before the drain was over",
        terminated.elapsed()
    );
    assert_eq!(close_code(&mut latecomer), Some(1001));
    let bound = DRAIN + GRACE + Duration::from_secs(2); // 2 s: scheduling slack
    let code = herald.wait_exit(bound.saturating_sub(terminated.elapsed()));
    assert_eq!(code, Some(0), "exit status after SIGTERM");
    assert!(
        terminated.elapsed() >= DRAIN + GRACE,
        "the stubborn peer was given the whole grace"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "listener closed"
    );
}
