//! Redis mode, against a real `redis-server`: delivery through pub/sub, replicas sharing one
//! Redis, the tutorial's wire format, and a Redis that dies and comes back.

mod support;

use support::*;

#[test]
fn clients_get_every_event_through_redis() {
    let redis = Redis::start();
    let herald = herald_on_redis(&redis);
    let alice = ws_connect(herald.port, "/ws");
    let bob = ws_connect(herald.port, "/ws");
    // Redis counts its subscribers: this replica's one subscription.
    every_client_gets_every_event_in_order(herald.port, &mut [alice, bob], 1);
}

#[test]
fn two_replicas_on_one_redis_deliver_each_others_events() {
    let redis = Redis::start();
    let first = herald_on_redis(&redis);
    let second = herald_on_redis(&redis);
    let mut on_first = ws_connect(first.port, "/ws");
    let mut on_second = ws_connect(second.port, "/ws");
    let reply = publish(first.port, "from", "first");
    assert_eq!(reply["receivers"], 2, "both replicas subscribe");
    publish(second.port, "from", "second");
    for client in [&mut on_first, &mut on_second] {
        assert_eq!(next_event(client)["message"], "first");
        assert_eq!(next_event(client)["message"], "second");
    }
}

#[test]
fn relays_what_another_app_publishes_in_the_tutorials_format() {
    let redis = Redis::start();
    let herald = herald_on_redis(&redis);
    let mut client = ws_connect(herald.port, "/ws");
    // Exactly what the tutorial's FastAPI app puts on the channel (Python's json.dumps).
    let tutorial = r#"{"type": "order", "message": "from python"}"#;
    assert_eq!(redis.command(&["PUBLISH", "events", tutorial]), ":1");
    match client.read().unwrap() {
        tungstenite::Message::Text(text) => assert_eq!(text.as_str(), tutorial),
        other => panic!("{other:?}"),
    }
}

#[test]
fn publishes_fail_while_redis_is_down_and_work_again_after() {
    let mut redis = Redis::start();
    let herald = herald_on_redis(&redis);
    let mut client = ws_connect(herald.port, "/ws");
    publish(herald.port, "before", "outage");
    assert_eq!(next_event(&mut client)["type"], "before");

    redis.stop();
    wait_until("health to say disconnected", || {
        get(herald.port, "/health").json()["redis"] == "disconnected"
    });
    let refused = post(herald.port, "/events?event_type=during&message=x", None, "");
    assert_eq!(refused.status, 503);
    assert!(refused.json()["error"].as_str().unwrap().contains("Redis"));
    // The page and existing sockets keep working.
    assert_eq!(get(herald.port, "/").status, 200);

    redis.restart();
    wait_until("herald to reconnect", || {
        get(herald.port, "/health").json()["redis"] == "connected"
    });
    // Redis came back empty (no persistence): the channel's history is gone, so Herald cannot
    // prove nothing was missed and tells its clients to reset.
    let reset = next_event(&mut client);
    assert_eq!(reset["op"], "reset", "{reset}");
    assert!(
        reset["reason"].as_str().unwrap().contains("lost"),
        "{reset}"
    );
    publish(herald.port, "after", "outage");
    assert_eq!(next_event(&mut client)["type"], "after");
    assert!(herald.log().contains("link up again"));
}

#[test]
fn starts_without_redis_and_connects_when_it_appears() {
    let port = free_port();
    let herald = Herald::with(&[], &[("REDIS_URL", &format!("redis://127.0.0.1:{port}"))]);
    assert_eq!(get(herald.port, "/health").json()["redis"], "disconnected");
    assert_eq!(
        post(herald.port, "/events?event_type=x", None, "").status,
        503
    );
    let _redis = Redis::on_port(port);
    wait_until("herald to connect", || {
        get(herald.port, "/health").json()["redis"] == "connected"
    });
    assert_eq!(
        post(herald.port, "/events?event_type=x", None, "").status,
        200
    );
}

#[test]
fn authenticates_and_selects_the_database_from_the_url() {
    let redis = Redis::with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/2", redis.port);
    let herald = Herald::with(&[], &[("PUBSUB_CACHE_URL", &url)]);
    wait_until("herald to log in", || {
        get(herald.port, "/health").json()["redis"] == "connected"
    });
    let mut client = ws_connect(herald.port, "/ws");
    publish(herald.port, "auth", "ok");
    assert_eq!(next_event(&mut client)["type"], "auth");
    assert!(
        !herald.log().contains("s3cret"),
        "the password must not be logged"
    );
}

#[test]
fn a_wrong_password_is_reported_without_a_hot_loop() {
    let redis = Redis::with(&["--requirepass", "right"]);
    let url = format!("redis://:n0tTheRightOne@127.0.0.1:{}", redis.port);
    let herald = Herald::with(&[], &[("PUBSUB_CACHE_URL", &url)]);
    wait_until("the AUTH failure to show in health", || {
        let health = get(herald.port, "/health").json();
        health["redis_error"]
            .as_str()
            .is_some_and(|e| e.contains("AUTH failed"))
    });
    assert_eq!(
        post(herald.port, "/events?event_type=x", None, "").status,
        503
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let attempts = herald.log().matches("AUTH failed").count();
    // Backoff: a handful of logged attempts in two seconds, not thousands.
    assert!((1..=12).contains(&attempts), "{attempts} attempts logged");
    assert!(!herald.log().contains("n0tTheRightOne"));
}
