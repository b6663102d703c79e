//! Channels: isolation, subscribing and unsubscribing on the fly, Redis subscriptions counted
//! by local interest, the history endpoint.

mod support;

use serde_json::{Value, json};
use support::*;
use tungstenite::Message;

fn send_json(ws: &mut Client, value: Value) {
    ws.send(Message::text(value.to_string())).unwrap();
}

fn isolation(herald: &Herald) {
    let mut orders = ws_connect(herald.port, "/ws?channels=orders");
    let mut deploys = ws_connect(herald.port, "/ws?channels=deploys");
    let mut both = ws_connect(herald.port, "/ws?channels=orders,deploys");
    let mut default = ws_connect(herald.port, "/ws");
    // Every way of naming the channel: path, query, JSON body.
    publish_to(herald.port, "orders", "o", "1");
    let reply = post(
        herald.port,
        "/events?channel=deploys&event_type=d&message=2",
        None,
        "",
    );
    assert_eq!(reply.status, 200);
    let body = json!({"type": "o", "message": "3", "channel": "orders"}).to_string();
    assert_eq!(
        post(herald.port, "/events", Some("application/json"), &body).status,
        200
    );
    publish(herald.port, "default", "4");

    assert_eq!(next_event(&mut orders)["message"], "1");
    assert_eq!(next_event(&mut orders)["message"], "3");
    assert_eq!(next_event(&mut deploys)["message"], "2");
    let seen: Vec<Value> = (0..3)
        .map(|_| next_event(&mut both)["message"].clone())
        .collect();
    assert_eq!(seen, vec!["1", "2", "3"]);
    let first_default = next_event(&mut default);
    assert_eq!(
        first_default["message"], "4",
        "the default channel saw only its own event"
    );
    assert_eq!(first_default["channel"], "events");
    // Nothing else arrives for the single-channel clients: a marker on each channel comes next.
    publish_to(herald.port, "orders", "marker", "m");
    publish_to(herald.port, "deploys", "marker", "m");
    assert_eq!(next_event(&mut orders)["type"], "marker");
    assert_eq!(next_event(&mut deploys)["type"], "marker");
}

#[test]
fn channels_are_isolated_embedded() {
    isolation(&Herald::start());
}

#[test]
fn channels_are_isolated_through_redis() {
    let redis = Redis::start();
    let herald = herald_on_redis(&redis);
    isolation(&herald);
}

#[test]
fn clients_subscribe_and_unsubscribe_while_connected() {
    let herald = Herald::start();
    let mut ws = ws_connect(herald.port, "/ws?channels=orders");
    send_json(&mut ws, json!({"op": "subscribe", "channel": "deploys"}));
    assert_eq!(
        next_event(&mut ws),
        json!({"op": "subscribed", "channel": "deploys"})
    );
    publish_to(herald.port, "deploys", "d", "1");
    assert_eq!(next_event(&mut ws)["message"], "1");

    send_json(&mut ws, json!({"op": "unsubscribe", "channel": "orders"}));
    assert_eq!(
        next_event(&mut ws),
        json!({"op": "unsubscribed", "channel": "orders"})
    );
    publish_to(herald.port, "orders", "o", "gone");
    publish_to(herald.port, "deploys", "d", "2");
    assert_eq!(
        next_event(&mut ws)["message"],
        "2",
        "no orders after unsubscribing"
    );

    for bad in [
        json!({"op": "dance", "channel": "x"}),
        json!({"op": "subscribe"}),
        json!({"op": "subscribe", "channel": "bad name"}),
        json!({"op": "subscribe", "channel": "x", "since": "yesterday"}),
    ] {
        send_json(&mut ws, bad.clone());
        let reply = next_event(&mut ws);
        assert_eq!(reply["op"], "error", "{bad} gave {reply}");
        assert!(reply["error"].is_string());
    }
    ws.send(Message::text("not json")).unwrap();
    assert_eq!(next_event(&mut ws)["op"], "error");
    // Still connected and served.
    publish_to(herald.port, "deploys", "d", "3");
    assert_eq!(next_event(&mut ws)["message"], "3");
}

#[test]
fn invalid_channel_names_are_refused() {
    let herald = Herald::start();
    assert_eq!(
        post(herald.port, "/events/bad*name?event_type=x", None, "").status,
        400
    );
    let long = "a".repeat(65);
    assert_eq!(
        post(
            herald.port,
            &format!("/events?channel={long}&event_type=x"),
            None,
            ""
        )
        .status,
        400
    );
    assert_eq!(get(herald.port, "/ws?channels=a%20b").status, 400);
}

/// `PUBSUB NUMSUB` for a Redis channel: how many connections subscribe to it.
fn numsub(redis: &Redis, channel: &str) -> i64 {
    let reply = redis.command_array(&["PUBSUB", "NUMSUB", channel]);
    reply[1].parse().unwrap()
}

#[test]
fn redis_subscriptions_follow_local_interest() {
    let redis = Redis::start();
    let herald = herald_on_redis(&redis);
    assert_eq!(numsub(&redis, "events:orders"), 0);
    let mut first = ws_connect(herald.port, "/ws?channels=orders");
    wait_until("SUBSCRIBE events:orders", || {
        numsub(&redis, "events:orders") == 1
    });
    let mut second = ws_connect(herald.port, "/ws?channels=orders,deploys");
    wait_until("SUBSCRIBE events:deploys", || {
        numsub(&redis, "events:deploys") == 1
    });
    // Reference-counted: one Redis subscription however many local clients.
    assert_eq!(numsub(&redis, "events:orders"), 1);
    assert_eq!(
        numsub(&redis, "events"),
        0,
        "nobody wants the default channel"
    );

    second.close(None).unwrap();
    let _ = close_code(&mut second);
    wait_until("UNSUBSCRIBE events:deploys", || {
        numsub(&redis, "events:deploys") == 0
    });
    assert_eq!(
        numsub(&redis, "events:orders"),
        1,
        "the first client still wants orders"
    );

    send_json(
        &mut first,
        json!({"op": "unsubscribe", "channel": "orders"}),
    );
    assert_eq!(next_event(&mut first)["op"], "unsubscribed");
    wait_until("UNSUBSCRIBE events:orders", || {
        numsub(&redis, "events:orders") == 0
    });
    send_json(&mut first, json!({"op": "subscribe", "channel": "orders"}));
    assert_eq!(next_event(&mut first)["op"], "subscribed");
    wait_until("SUBSCRIBE again", || numsub(&redis, "events:orders") == 1);
    publish_to(herald.port, "orders", "o", "back");
    assert_eq!(next_event(&mut first)["message"], "back");
}

#[test]
fn history_is_served_as_json() {
    let herald = Herald::with(&["--history-len", "5"], &[]);
    let ids: Vec<String> = (0..7)
        .map(|i| {
            publish_to(herald.port, "orders", "o", &i.to_string())["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let latest = get(herald.port, "/events/orders?limit=3").json();
    let messages: Vec<&str> = latest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, vec!["4", "5", "6"]);
    let after = get(herald.port, &format!("/events/orders?since={}", ids[4])).json();
    assert_eq!(after["events"].as_array().unwrap().len(), 2);
    assert_eq!(after["events"][0]["id"], ids[5].as_str());
    let too_old = get(herald.port, &format!("/events/orders?since={}", ids[0]));
    assert_eq!(too_old.status, 410);
    assert_eq!(too_old.json()["reset"], true);
    assert_eq!(
        get(herald.port, "/events/nobody").json()["events"],
        json!([])
    );
}
