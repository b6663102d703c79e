//! Reference peer for the Herald benchmark: axum + tokio + redis-rs.
//!
//! Usage: herald-peer-axum PORT REDIS_URL   (or env PORT / REDIS_URL, BIND)
//!
//! * SUBSCRIBE `events` on Redis; every message is relayed as one WebSocket text
//!   frame to every client on `/ws` (fan-out via `tokio::sync::broadcast`).
//! * `POST /events?event_type=..&message=..` (or JSON body `{"type","message"}`, or
//!   an urlencoded form) PUBLISHes `{"type":..,"message":..}` on a multiplexed connection
//!   (redis-rs `ConnectionManager`, i.e. a `MultiplexedConnection` that reconnects).
//! * `GET /health` -> `{"status":"ok"}`.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Query, State,
        ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt,
};
use futures_util::{SinkExt, StreamExt};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::{
    net::TcpSocket,
    sync::broadcast::{self, error::RecvError, error::TryRecvError},
};

const CHANNEL: &str = "events";
/// Events buffered per subscriber before a slow client starts lagging (missing events).
const BROADCAST_CAPACITY: usize = 4096;
/// Upper bound of events coalesced into one socket write, so one busy client can't
/// hog a worker thread indefinitely.
const MAX_BATCH: usize = 256;
const LISTEN_BACKLOG: u32 = 1024;
/// tungstenite's default read buffer is 128 KiB per connection; clients only send
/// pings/close here, so 4 KiB is plenty and saves memory at high connection counts.
const WS_READ_BUFFER: usize = 4 * 1024;

#[derive(Clone)]
struct AppState {
    tx: broadcast::Sender<Utf8Bytes>,
    /// Multiplexed connection (all requests pipelined on one socket) that reconnects
    /// by itself if Redis goes away; cloned per request.
    redis: ConnectionManager,
}

#[derive(Deserialize, Default)]
struct PublishParams {
    event_type: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct JsonEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .or_else(|| std::env::var("PORT").ok())
        .unwrap_or_else(|| "8000".into())
        .parse()
        .expect("PORT must be a number");
    let redis_url = args
        .next()
        .or_else(|| std::env::var("REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".into());
    let addr: SocketAddr = format!("{bind}:{port}").parse().expect("bad BIND/PORT");

    // The multi-thread runtime (one worker per core) is the axum/tokio idiom.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run(addr, redis_url));
}

async fn run(addr: SocketAddr, redis_url: String) {
    let client = redis::Client::open(redis_url.as_str()).expect("invalid REDIS_URL");
    // redis-rs defaults to a 500 ms response timeout; under a saturating benchmark on a
    // small machine that turns queueing delay into spurious 503s, so allow 5 s.
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)));
    let redis = ConnectionManager::new_with_config(client.clone(), cfg)
        .await
        .expect("connect to Redis for PUBLISH");

    let (tx, _) = broadcast::channel::<Utf8Bytes>(BROADCAST_CAPACITY);

    // Subscribe before accepting connections, so /health answering means events flow.
    let pubsub = subscribe(&client).await.expect("SUBSCRIBE events");
    tokio::spawn(relay(client, pubsub, tx.clone()));

    let state = AppState { tx, redis };
    let app = Router::new()
        .route("/health", get(health))
        .route("/events", post(publish))
        .route("/ws", get(ws_upgrade))
        .with_state(state);

    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind");
    let listener = socket
        .listen(LISTEN_BACKLOG)
        .expect("listen")
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                eprintln!("set TCP_NODELAY: {e}");
            }
        });
    eprintln!("axum peer listening on {addr}");
    axum::serve(listener, app).await.expect("server");
}

async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    Ok(pubsub)
}

/// Redis -> broadcast channel. Each payload is converted to a `Utf8Bytes` once; every
/// client then sends a refcounted clone of the same buffer. Resubscribes on connection loss.
async fn relay(client: redis::Client, mut pubsub: redis::aio::PubSub, tx: broadcast::Sender<Utf8Bytes>) {
    loop {
        {
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                match Utf8Bytes::try_from(msg.get_payload_bytes().to_vec()) {
                    // Err only means "no WebSocket clients right now".
                    Ok(text) => {
                        let _ = tx.send(text);
                    }
                    Err(_) => eprintln!("dropping non-UTF-8 message from Redis"),
                }
            }
        }
        eprintln!("Redis pub/sub connection lost; resubscribing");
        let mut backoff = Duration::from_millis(100);
        pubsub = loop {
            tokio::time::sleep(backoff).await;
            match subscribe(&client).await {
                Ok(p) => break p,
                Err(e) => {
                    eprintln!("resubscribe failed: {e}");
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
    }
}

async fn health() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#)
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn publish(
    State(mut st): State<AppState>,
    Query(q): Query<PublishParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (kind, message) = if let Some(kind) = q.event_type {
        (kind, q.message.unwrap_or_default())
    } else {
        let ctype = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let parsed = if ctype.starts_with("application/x-www-form-urlencoded") {
            serde_urlencoded::from_bytes::<PublishParams>(&body)
                .ok()
                .and_then(|p| Some((p.event_type?, p.message.unwrap_or_default())))
        } else if !body.is_empty() {
            serde_json::from_slice::<JsonEvent>(&body)
                .ok()
                .and_then(|e| Some((e.kind?, e.message.unwrap_or_default())))
        } else {
            None
        };
        match parsed {
            Some(p) => p,
            None => return error(StatusCode::UNPROCESSABLE_ENTITY, "event_type is required"),
        }
    };

    let payload = serde_json::to_string(&Event { kind: &kind, message: &message }).expect("json");
    let res: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(payload)
        .query_async(&mut st.redis)
        .await;
    match res {
        Ok(_) => Json(serde_json::json!({ "published": true, "type": kind })).into_response(),
        Err(e) => {
            eprintln!("PUBLISH failed: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, "redis unavailable")
        }
    }
}

async fn ws_upgrade(State(st): State<AppState>, ws: WebSocketUpgrade) -> Response {
    // Subscribe to the fan-out before the handshake completes, so a client never misses
    // an event published after its 101 response.
    let rx = st.tx.subscribe();
    ws.read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| client_loop(socket, rx))
}

async fn client_loop(socket: WebSocket, mut rx: broadcast::Receiver<Utf8Bytes>) {
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            r = rx.recv() => {
                let first = match r {
                    Ok(text) => text,
                    // Slow client: the channel overwrote events it had not taken yet.
                    // Skip them and carry on with the oldest retained one.
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                };
                // Drain whatever else is already queued into the write buffer, then
                // flush once: one write(2) per burst instead of one per event.
                if sink.feed(Message::Text(first)).await.is_err() {
                    break;
                }
                for _ in 1..MAX_BATCH {
                    match rx.try_recv() {
                        Ok(text) => {
                            if sink.feed(Message::Text(text)).await.is_err() {
                                return;
                            }
                        }
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            m = stream.next() => match m {
                // Text/binary from clients is ignored; tungstenite answers pings itself
                // (the pong goes out with the next read or flush).
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    }
    // Completes the closing handshake if the client started it.
    let _ = sink.close().await;
}
