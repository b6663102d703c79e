//! Signed tokens against the real binary: every refusal (no token, bad signature, `alg:
//! none`, algorithm confusion, expired, not yet valid, wrong issuer and audience, channel
//! not covered, publish not covered) with its status before any upgrade, its counter and
//! its log line (with the `sub`, never the token); subscribe messages refused without a
//! disconnect; the close at `exp` (1008 `token expired`) while a refreshed client keeps
//! receiving; a refresh that narrows the channels; public channels without a token; history
//! and publish rights; RS256 and ES256 with keys made by `openssl` in the test.
//!
//! Tokens are minted here with `jsonwebtoken` (any claims, any header) and once through
//! `herald token`, as a curl user would.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::*;
use tungstenite::Message;

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    herald::auth::unix_now()
}

fn hs256(claims: &Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

/// Claims for `sub` valid for `ttl` seconds.
fn claims(sub: &str, channels: &[&str], publish: &[&str], ttl: u64) -> Value {
    json!({ "sub": sub, "exp": now() + ttl, "iat": now(), "channels": channels, "publish": publish })
}

fn token(sub: &str, channels: &[&str], ttl: u64) -> String {
    hs256(&claims(sub, channels, &[], ttl))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn herald_with_auth(extra: &[(&str, &str)]) -> Herald {
    let mut env = vec![("AUTH_JWT_SECRET", SECRET)];
    env.extend_from_slice(extra);
    Herald::with(&[], &env)
}

/// A WebSocket handshake on `path` with extra header lines, as raw bytes: the reply to it.
fn upgrade(port: u16, path: &str, headers: &str) -> HttpReply {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    raw(port, request.as_bytes())
}

fn get_with(port: u16, path: &str, headers: &str) -> HttpReply {
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n");
    raw(port, request.as_bytes())
}

fn publish_as(port: u16, channel: &str, bearer: Option<&str>) -> HttpReply {
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /events/{channel}?event_type=t&message=m HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    raw(port, request.as_bytes())
}

/// Publishes `message` to `channel` as a publisher whose token covers every channel.
fn publish_signed(port: u16, channel: &str, message: &str) {
    let publisher = hs256(&claims("publisher", &[], &["*"], 60));
    let auth = format!("Authorization: Bearer {publisher}\r\n");
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("event_type", "t")
        .append_pair("message", message)
        .finish();
    let request = format!(
        "POST /events/{channel}?{q} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    let reply = raw(port, request.as_bytes());
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// The next text message as JSON, skipping control frames; `None` on timeout or close.
fn next_json(ws: &mut Client) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn send(ws: &mut Client, message: Value) {
    ws.send(Message::text(message.to_string())).unwrap();
}

/// Reads until the server's close frame: its code and reason.
fn close_frame(ws: &mut Client) -> (u16, String) {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Ok(Message::Close(None)) => panic!("close frame without a code"),
            Ok(_) => {}
            Err(e) => panic!("reading until close: {e}"),
        }
    }
    panic!("no close frame within {WAIT:?}");
}

fn refusals(port: u16, reason: &str) -> f64 {
    metric(
        port,
        &format!("herald_auth_refusals_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn should_refuse_each_bad_token_before_the_upgrade_with_its_reason() {
    let herald = herald_with_auth(&[("AUTH_JWT_ISSUER", "shop"), ("AUTH_JWT_AUDIENCE", "herald")]);
    let port = herald.port;
    let good = json!({"sub": "mallory", "exp": now() + 60, "iss": "shop", "aud": "herald", "channels": ["orders.*"]});
    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        c[key] = value;
        c
    };
    let other_key = EncodingKey::from_secret(b"a-different-secret-also-32-bytes-long").unwrap();
    let bad_signature =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &good, &other_key).unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(good.to_string().as_bytes())
    );
    let cases = [
        (bad_signature, "signature"),
        (alg_none, "algorithm"),
        ("garbage".to_string(), "malformed"),
        (hs256(&with("exp", json!(now() - 5))), "expired"),
        (hs256(&with("nbf", json!(now() + 600))), "not_yet_valid"),
        (hs256(&with("iss", json!("elsewhere"))), "issuer"),
        (hs256(&with("aud", json!("someone-else"))), "audience"),
    ];
    for (token, reason) in &cases {
        let before = refusals(port, reason);
        let reply = upgrade(port, &format!("/ws?channels=orders.eu&token={token}"), "");
        assert_eq!(reply.status, 401, "{reason}: {reply:?}");
        assert_eq!(reply.json()["reason"], *reason, "{reply:?}");
        assert!(reply.header("www-authenticate").is_some(), "{reply:?}");
        assert!(!reply.head.contains("101"), "{reply:?}");
        // The same token as a header, on SSE.
        let sse = get_with(
            port,
            "/sse?channels=orders.eu",
            &format!("Authorization: Bearer {token}\r\n"),
        );
        assert_eq!(sse.status, 401, "{reason}: {sse:?}");
        assert_eq!(refusals(port, reason), before + 2.0, "{reason}");
    }
    // No token at all: 401 JSON, before any upgrade.
    let reply = upgrade(port, "/ws?channels=orders.eu", "");
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.json()["reason"], "missing");
    let sse = get(port, "/sse?channels=orders.eu");
    assert_eq!(sse.status, 401);
    // Readable cross-origin: herald.js on another site asks /sse why it was refused.
    assert_eq!(
        sse.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    // A good token that does not cover every channel: 403 naming the refused ones.
    let good_token = hs256(&good);
    let reply = upgrade(
        port,
        &format!("/ws?channels=orders.eu,billing,orders.us,hr&token={good_token}"),
        "",
    );
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.json()["channels"], json!(["billing", "hr"]));
    assert_eq!(refusals(port, "channel"), 1.0);
    // And it opens what it covers.
    let ws = ws_connect(port, &format!("/ws?channels=orders.eu&token={good_token}"));
    drop(ws);

    let log = herald.log();
    assert!(log.contains("auth refused (signature) sub \"-\""), "{log}");
    assert!(
        log.contains("auth refused (channel) sub \"mallory\""),
        "{log}"
    );
    for (token, _) in &cases {
        assert!(!log.contains(token.as_str()), "a token reached the log");
    }
    assert!(!log.contains(&good_token), "a token reached the log");
    assert!(!log.contains(SECRET), "the secret reached the log");
    let help = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--help")
        .env("AUTH_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("AUTH_JWT_SECRET") && !help.contains(SECRET),
        "{help}"
    );
}

#[test]
fn should_refuse_subscribe_messages_and_keep_the_connection() {
    let herald = herald_with_auth(&[]);
    let port = herald.port;
    let t = token("alice", &["orders.*"], 60);
    let mut ws = ws_connect(port, &format!("/ws?channels=orders.eu&token={t}"));
    send(&mut ws, json!({"op": "subscribe", "channel": "billing"}));
    assert_eq!(
        next_json(&mut ws).unwrap(),
        json!({"op": "error", "error": "forbidden", "channel": "billing"})
    );
    send(&mut ws, json!({"op": "subscribe", "channel": "orders.us"}));
    assert_eq!(next_json(&mut ws).unwrap()["op"], "subscribed");
    // Still open, still receiving what it may.
    publish_signed(port, "billing", "no");
    publish_signed(port, "orders.us", "yes");
    let event = next_json(&mut ws).unwrap();
    assert_eq!(
        (event["channel"].as_str(), event["message"].as_str()),
        (Some("orders.us"), Some("yes"))
    );
    assert_eq!(refusals(port, "channel"), 1.0);
}

#[test]
fn should_close_at_exp_while_a_refreshed_client_keeps_receiving() {
    let herald = herald_with_auth(&[]);
    let port = herald.port;
    // Long enough for the refresh below to land before exp on a loaded machine.
    let short = token("alice", &["orders"], 4);
    let mut expiring = ws_connect(port, &format!("/ws?channels=orders&token={short}"));
    let mut refreshed = ws_connect(port, &format!("/ws?channels=orders&token={short}"));
    let mut sse = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
    sse.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    write!(
        sse.get_mut(),
        "GET /sse?channels=orders&token={short} HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    sse.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    let long = token("alice", &["orders"], 600);
    send(&mut refreshed, json!({"op": "refresh", "token": long}));
    let ack = next_json(&mut refreshed).unwrap();
    assert_eq!(ack["op"], "refreshed", "{ack}");
    assert!(ack["exp"].as_u64().unwrap() >= now() + 590, "{ack}");
    // Another subject's token is no refresh.
    send(
        &mut refreshed,
        json!({"op": "refresh", "token": token("bob", &["orders"], 600)}),
    );
    assert_eq!(next_json(&mut refreshed).unwrap()["reason"], "subject");

    let started = Instant::now();
    let (code, reason) = close_frame(&mut expiring);
    assert_eq!((code, reason.as_str()), (1008, "token expired"));
    // Cut at exp (at most 4 s from now) by the once-a-second sweep: well within 7 s.
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    // The SSE stream ends too (EOF after whatever was queued).
    let mut ended = false;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let mut line = String::new();
        match sse.read_line(&mut line) {
            Ok(0) => {
                ended = true;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("SSE read: {e}"),
        }
    }
    assert!(ended, "the SSE stream did not end at exp");

    for i in 0..5 {
        publish_signed(port, "orders", &i.to_string());
        let event = next_json(&mut refreshed).unwrap();
        assert_eq!(event["message"], i.to_string(), "{event}");
    }
    assert_eq!(
        metric(
            port,
            "herald_connections_closed_total{reason=\"token_expired\"}"
        ),
        Some(2.0)
    );
}

#[test]
fn should_leave_channels_a_refresh_no_longer_covers() {
    let herald = herald_with_auth(&[]);
    let port = herald.port;
    let both = token("carol", &["a", "b.*"], 60);
    let mut ws = ws_connect(port, &format!("/ws?channels=a,b.x&token={both}"));
    send(
        &mut ws,
        json!({"op": "refresh", "token": token("carol", &["a"], 60)}),
    );
    assert_eq!(next_json(&mut ws).unwrap()["op"], "refreshed");
    assert_eq!(
        next_json(&mut ws).unwrap(),
        json!({"op": "unsubscribed", "channel": "b.x", "reason": "forbidden"})
    );
    publish_signed(port, "b.x", "gone");
    publish_signed(port, "a", "kept");
    let event = next_json(&mut ws).unwrap();
    assert_eq!(
        (event["channel"].as_str(), event["message"].as_str()),
        (Some("a"), Some("kept"))
    );
    // A bad refresh token changes nothing and keeps the connection.
    send(&mut ws, json!({"op": "refresh", "token": "nope"}));
    assert_eq!(next_json(&mut ws).unwrap()["reason"], "malformed");
    publish_signed(port, "a", "still");
    assert_eq!(next_json(&mut ws).unwrap()["message"], "still");
}

#[test]
fn should_serve_public_channels_without_a_token() {
    let herald = herald_with_auth(&[("PUBLIC_CHANNELS", "news,status.*")]);
    let port = herald.port;
    let mut ws = ws_connect(port, "/ws?channels=news,status.db");
    send(&mut ws, json!({"op": "subscribe", "channel": "orders"}));
    assert_eq!(next_json(&mut ws).unwrap()["error"], "forbidden");
    publish_signed(port, "orders", "private");
    publish_signed(port, "status.db", "up");
    let event = next_json(&mut ws).unwrap();
    assert_eq!(event["message"], "up", "{event}");
    assert_eq!(upgrade(port, "/ws?channels=news,orders", "").status, 401);
    // The default channel is not public here.
    assert_eq!(upgrade(port, "/ws", "").status, 401);
    assert_eq!(get(port, "/events/news").status, 200);
    // The subscribe message and the two upgrades.
    assert_eq!(refusals(port, "missing"), 3.0);
}

#[test]
fn should_check_history_and_publish_rights() {
    let herald = herald_with_auth(&[("PUBLISH_TOKEN", "static-publish-token")]);
    let port = herald.port;
    let reader = token("dave", &["orders.*"], 60);
    let writer = hs256(&claims("erin", &[], &["orders.eu"], 60));

    // Publish: a JWT that covers the channel, the static token, nothing else.
    assert_eq!(publish_as(port, "orders.eu", Some(&writer)).status, 200);
    let denied = publish_as(port, "orders.us", Some(&writer));
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["channels"], json!(["orders.us"]));
    assert_eq!(publish_as(port, "orders.us", Some(&reader)).status, 403);
    assert_eq!(
        publish_as(port, "orders.us", Some("static-publish-token")).status,
        200
    );
    assert_eq!(publish_as(port, "orders.us", None).status, 401);
    assert_eq!(publish_as(port, "orders.us", Some("wrong")).status, 401);
    assert_eq!(refusals(port, "publish"), 2.0);

    // History: the subscribe right.
    assert_eq!(get(port, "/events/orders.eu").status, 401);
    let history = get(port, &format!("/events/orders.eu?token={reader}"));
    assert_eq!(history.status, 200, "{history:?}");
    assert_eq!(
        history.json()["events"].as_array().map(Vec::len),
        Some(1),
        "{history:?}"
    );
    let other = get_with(
        port,
        "/events/billing",
        &format!("Authorization: Bearer {reader}\r\n"),
    );
    assert_eq!(other.status, 403);
}

#[test]
fn should_refuse_anonymous_publish_with_auth_on_and_no_publish_token() {
    let herald = herald_with_auth(&[]);
    let reply = publish_as(herald.port, "events", None);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.json()["reason"], "missing");
    assert_eq!(get(herald.port, "/health").json()["auth"], true);
}

#[test]
fn should_accept_a_token_minted_by_herald_token() {
    let herald = herald_with_auth(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "token",
            "--sub",
            "alice",
            "--channels",
            "orders.*",
            "--publish",
            "orders.eu",
            "--ttl",
            "1h",
        ])
        .env("AUTH_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut ws = ws_connect(
        herald.port,
        &format!("/ws?channels=orders.eu&token={minted}"),
    );
    assert_eq!(
        publish_as(herald.port, "orders.eu", Some(&minted)).status,
        200
    );
    assert_eq!(next_json(&mut ws).unwrap()["channel"], "orders.eu");
    // Without the secret it refuses, and says why.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", "alice"])
        .env_remove("AUTH_JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_JWT_SECRET"));
}

/// A key pair made by `openssl` in a temporary directory: (private PKCS#8 PEM, public path).
fn openssl_key(kind: &str) -> (Vec<u8>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("herald-auth-{}-{kind}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let gen_args: &[&str] = match kind.starts_with("rsa") {
        true => &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        false => &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    };
    let ok = Command::new("openssl")
        .args(gen_args)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(ok.success());
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(ok.success());
    (std::fs::read(&private).unwrap(), public)
}

#[test]
fn should_verify_rs256_and_es256_with_keys_made_in_the_test() {
    for (kind, algorithm) in [("ec", Algorithm::ES256), ("rsa", Algorithm::RS256)] {
        let (private, public) = openssl_key(kind);
        let public_path = public.to_str().unwrap();
        let herald = Herald::with(&[], &[("AUTH_JWT_PUBLIC_KEY", public_path)]);
        let port = herald.port;
        let key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&private).unwrap(),
            _ => EncodingKey::from_rsa_pem(&private).unwrap(),
        };
        let claims = claims("frank", &["orders"], &[], 60);
        let signed = jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).unwrap();
        let mut ws = ws_connect(port, &format!("/ws?channels=orders&token={signed}"));
        // The reader may not publish; a writer's token of the same key may.
        assert_eq!(publish_as(port, "orders", Some(&signed)).status, 403);
        let writer = self::claims("grace", &[], &["orders"], 60);
        let writer = jsonwebtoken::encode(&Header::new(algorithm), &writer, &key).unwrap();
        assert_eq!(publish_as(port, "orders", Some(&writer)).status, 200);
        assert_eq!(next_json(&mut ws).unwrap()["channel"], "orders", "{kind}");

        // Algorithm confusion: HS256 "signed" with the public key file as the secret.
        let pem = std::fs::read(&public).unwrap();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&pem).unwrap(),
        )
        .unwrap();
        let reply = upgrade(port, &format!("/ws?channels=orders&token={forged}"), "");
        assert_eq!(reply.status, 401, "{kind}: {reply:?}");
        assert_eq!(reply.json()["reason"], "algorithm");
        // A token of this algorithm signed by another key.
        let (other_private, _) = openssl_key(&format!("{kind}-other"));
        let other_key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&other_private).unwrap(),
            _ => EncodingKey::from_rsa_pem(&other_private).unwrap(),
        };
        let wrong = jsonwebtoken::encode(&Header::new(algorithm), &claims, &other_key).unwrap();
        let reply = upgrade(port, &format!("/ws?channels=orders&token={wrong}"), "");
        assert_eq!(reply.json()["reason"], "signature", "{kind}: {reply:?}");
        let _ = std::fs::remove_dir_all(public.parent().unwrap());
    }
}
