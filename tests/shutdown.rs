//! SIGTERM: stop accepting, close every WebSocket with 1001 so pages reconnect elsewhere,
//! finish what is in flight, exit 0.

mod support;

use std::net::TcpStream;

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
