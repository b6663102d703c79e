//! One request, many publishes, against the real binary: `"channels": [...]` publishes one
//! event to each channel (one id per channel, each subscriber gets its channel's copy), and
//! `POST /events/batch` publishes events in order with one result each, embedded and on a
//! real `redis-server` (across two replicas); a failure on one channel is reported for that
//! channel and the request is not a success; every channel must be allowed to the token.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::*;

fn post_json(port: u16, path: &str, body: &Value, headers: &str) -> HttpReply {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(port, request.as_bytes())
}

fn to_channels(port: u16, channels: &[&str], message: &str, headers: &str) -> HttpReply {
    let body = json!({"type": "t", "message": message, "channels": channels});
    post_json(port, "/events", &body, headers)
}

fn assert_got(client: &mut Client, channel: &str, message: &str, id: &Value) {
    let event = next_event(client);
    assert_eq!(
        (&event["channel"], &event["message"], &event["id"]),
        (&json!(channel), &json!(message), id),
        "{event}"
    );
}

#[test]
fn one_event_goes_to_each_named_channel_with_its_own_id() {
    let herald = Herald::start();
    let port = herald.port;
    let mut on_a = ws_connect(port, "/ws?channels=a");
    let mut on_all = ws_connect(port, "/ws?channels=a,b,c");

    let reply = to_channels(port, &["a", "b", "c"], "m", "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["published"], true);
    assert_eq!(body["type"], "t");
    let results = body["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(
        results
            .iter()
            .map(|r| r["receivers"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1, 1]
    );
    assert!(results[0]["id"] != results[1]["id"] && results[1]["id"] != results[2]["id"]);

    assert_got(&mut on_a, "a", "m", &results[0]["id"]);
    for (i, channel) in ["a", "b", "c"].iter().enumerate() {
        assert_got(&mut on_all, channel, "m", &results[i]["id"]);
    }
    assert_eq!(metric(port, "herald_events_published_total"), Some(3.0));
    // Each channel's history has its copy.
    let history = get(port, "/events/c").json();
    assert_eq!(history["events"][0]["id"], results[2]["id"]);
}

#[test]
fn channel_lists_are_checked() {
    let herald = Herald::start();
    let port = herald.port;
    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for (channels, why) in [
        (&many[..], "1 to 100"),
        (&[][..], "1 to 100"),
        (&["a", "a"][..], "named twice"),
        (&["a", "no way"][..], "channel"),
    ] {
        let reply = to_channels(port, channels, "x", "");
        assert_eq!(reply.status, 400, "{channels:?}: {}", reply.body);
        assert!(reply.body.contains(why), "{}", reply.body);
    }
    let both = json!({"type": "t", "channel": "a", "channels": ["b"]});
    assert_eq!(post_json(port, "/events", &both, "").status, 400);
    assert_eq!(to_channels(port, &many[..100], "x", "").status, 200);
    assert_eq!(metric(port, "herald_events_published_total"), Some(100.0));
}

#[test]
fn a_retry_to_many_channels_publishes_only_what_is_new() {
    let herald = Herald::start();
    let port = herald.port;
    let mut client = ws_connect(port, "/ws?channels=a,b,c");
    let key = "Idempotency-Key: many-1\r\n";
    let first = to_channels(port, &["a", "b"], "first", key).json();
    let retry = to_channels(port, &["a", "b", "c"], "retry", key).json();
    assert_eq!(retry["published"], true);
    for i in 0..2 {
        assert_eq!(retry["results"][i]["id"], first["results"][i]["id"]);
        assert_eq!(retry["results"][i]["duplicate"], true);
    }
    assert!(retry["results"][2].get("duplicate").is_none(), "{retry}");
    assert_got(&mut client, "a", "first", &first["results"][0]["id"]);
    assert_got(&mut client, "b", "first", &first["results"][1]["id"]);
    assert_got(&mut client, "c", "retry", &retry["results"][2]["id"]);
}

#[test]
fn redis_mode_reports_each_channel_and_never_a_false_success() {
    let redis = Redis::start();
    let a = herald_on_redis(&redis);
    let b = herald_on_redis(&redis);
    let mut on_b = ws_connect(b.port, "/ws?channels=x,y");
    // A publish through B waits for B's subscriptions: after it, A's events reach B.
    for channel in ["x", "y"] {
        publish_to(b.port, channel, "warm", "up");
        assert_eq!(next_event(&mut on_b)["message"], "up");
    }
    let reply = to_channels(a.port, &["x", "y"], "both", "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results = reply.json()["results"].clone();
    assert_got(&mut on_b, "x", "both", &results[0]["id"]);
    assert_got(&mut on_b, "y", "both", &results[1]["id"]);

    // Channel y's stream key holds a string: the script fails for y alone (WRONGTYPE).
    redis.command(&["DEL", "events:y:history"]);
    redis.command(&["SET", "events:y:history", "not a stream"]);
    let reply = to_channels(a.port, &["x", "y"], "half", "");
    assert_eq!(reply.status, 503, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["published"], false);
    assert_eq!(body["results"][0]["published"], true);
    assert_eq!(body["results"][1]["published"], false);
    assert_eq!(body["results"][1]["status"], 503);
    assert!(
        body["results"][1]["error"]
            .as_str()
            .unwrap()
            .contains("WRONGTYPE"),
        "{body}"
    );
    assert_got(&mut on_b, "x", "half", &body["results"][0]["id"]);
    // Nothing arrived for y: once its stream is fixed, the next event is the marker.
    redis.command(&["DEL", "events:y:history"]);
    publish_to(a.port, "y", "marker", "marker");
    let next = next_event(&mut on_b);
    assert_eq!(
        (&next["channel"], &next["message"]),
        (&json!("y"), &json!("marker")),
        "{next}"
    );
}

/// Sends a batch body with a content type; returns the reply.
fn batch(port: u16, content_type: &str, body: &str, headers: &str) -> HttpReply {
    let request = format!(
        "POST /events/batch HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: {content_type}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw(port, request.as_bytes())
}

#[test]
fn a_batch_is_published_in_order_with_one_result_per_event() {
    let herald = Herald::with(&[], &[("MAX_BATCH_EVENTS", "5")]);
    let port = herald.port;
    let mut client = ws_connect(port, "/ws?channels=a,b");
    let body = json!([
        {"type": "t", "message": "1", "channel": "a"},
        {"message": "no type", "channel": "a"},
        {"type": "t", "message": "2", "channel": "b", "idempotency_key": "k"},
        {"type": "t", "message": "3", "channel": "b", "idempotency_key": "k"},
        {"type": "t", "message": "4", "channel": "a", "channels": ["b"]},
    ])
    .to_string();
    let reply = batch(port, "application/json", &body, "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(
        (answer["ok"].as_u64(), answer["failed"].as_u64()),
        (Some(3), Some(2))
    );
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["published"], true);
    assert_eq!(
        (
            results[1]["published"].as_bool(),
            results[1]["status"].as_u64()
        ),
        (Some(false), Some(422))
    );
    assert_eq!(results[3]["duplicate"], true);
    assert_eq!(results[3]["id"], results[2]["id"]);
    assert_eq!(results[4]["status"], 400);
    assert_got(&mut client, "a", "1", &results[0]["id"]);
    assert_got(&mut client, "b", "2", &results[2]["id"]);

    // Newline-delimited, and the caps.
    let lines = "{\"type\":\"t\",\"message\":\"5\",\"channel\":\"a\"}\n\n{\"type\":\"t\",\"message\":\"6\",\"channel\":\"a\"}\n";
    let reply = batch(port, "application/x-ndjson", lines, "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(next_event(&mut client)["message"], "5");
    assert_eq!(next_event(&mut client)["message"], "6");
    let six = format!("[{}]", [r#"{"type":"t"}"#; 6].join(","));
    let reply = batch(port, "application/json", &six, "");
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(reply.body.contains("MAX_BATCH_EVENTS"), "{}", reply.body);
    assert_eq!(
        batch(port, "application/json", "[{\"type\":", "").status,
        400
    );
    assert_eq!(batch(port, "application/json", "[]", "").status, 422);
    let header_key = batch(
        port,
        "application/json",
        "[{\"type\":\"t\"}]",
        "Idempotency-Key: x\r\n",
    );
    assert_eq!(header_key.status, 400, "{}", header_key.body);
    let big = format!(
        "[{{\"type\":\"t\",\"message\":\"{}\"}}]",
        "x".repeat(70_000)
    );
    assert_eq!(batch(port, "application/json", &big, "").status, 413);
    assert_eq!(metric(port, "herald_events_published_total"), Some(4.0));
}

/// 300 events in one batch through replica A reach a subscriber of replica B in order, each
/// with the id its result gave (the script calls are pipelined on A's command link).
#[test]
fn a_batch_in_redis_mode_is_delivered_in_order_across_replicas() {
    let redis = Redis::start();
    let a = herald_on_redis(&redis);
    let b = herald_on_redis(&redis);
    let mut on_b = ws_connect(b.port, "/ws?channels=bulk");
    publish_to(b.port, "bulk", "warm", "up");
    assert_eq!(next_event(&mut on_b)["message"], "up");
    let events: Vec<Value> = (0..300)
        .map(|i| json!({"type": "t", "message": i.to_string(), "channel": "bulk"}))
        .collect();
    let reply = batch(
        a.port,
        "application/json",
        &Value::from(events).to_string(),
        "",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["ok"], 300);
    for i in 0..300 {
        assert_got(
            &mut on_b,
            "bulk",
            &i.to_string(),
            &answer["results"][i]["id"],
        );
    }
    assert_eq!(redis.command(&["XLEN", "events:bulk:history"]), ":301");
}

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

#[test]
fn every_channel_must_be_allowed_to_the_publisher() {
    let herald = Herald::with(&[], &[("AUTH_JWT_SECRET", SECRET)]);
    let port = herald.port;
    let now = herald::auth::unix_now();
    let claims = json!({"sub": "p", "exp": now + 600, "iat": now, "publish": ["a"]});
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    let auth = format!("Authorization: Bearer {token}\r\n");
    assert_eq!(to_channels(port, &["a"], "ok", &auth).status, 200);
    let refused = to_channels(port, &["a", "b", "c"], "no", &auth);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("\"b\"") && refused.body.contains("\"c\""),
        "{}",
        refused.body
    );
    let body = r#"[{"type":"t","channel":"a"},{"type":"t","channel":"b"}]"#;
    assert_eq!(batch(port, "application/json", body, &auth).status, 403);
    assert_eq!(metric(port, "herald_events_published_total"), Some(1.0));
}

/// Many groups in flight on one connection, pipelined: each answered in order.
#[test]
fn pipelined_groups_are_answered_in_order() {
    let redis = Redis::start();
    let herald = herald_on_redis(&redis);
    let stream = TcpStream::connect(("127.0.0.1", herald.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut out = String::new();
    for i in 0..20 {
        let body =
            json!({"type": "t", "message": i.to_string(), "channels": ["p", "q"]}).to_string();
        out.push_str(&format!(
            "POST /events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    writer.write_all(out.as_bytes()).unwrap();
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    };
    let mut last = (0, 0);
    for _ in 0..20 {
        let reply = read_reply(&mut reader).expect("a reply");
        assert_eq!(reply.status, 200, "{}", reply.body);
        let id = parse(reply.json()["results"][0]["id"].as_str().unwrap());
        assert!(id > last, "{id:?} after {last:?}");
        last = id;
    }
}
