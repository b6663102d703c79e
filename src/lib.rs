//! Herald: a real-time event feed server. Events come in over HTTP (`POST /events`), go
//! through a broker (in-process, or Redis pub/sub to join replicas), and are pushed to every
//! WebSocket client on `/ws`. One mio reactor per thread
//! (`--threads`, default 1), each over its own sockets.
//!
//! ```text
//! client readable -> scratch buffer -> Conn tail -> http::parse | ws::frame
//!   -> http::route -> Action::Publish(event) -> Broker
//!        Embedded: -> hub -> every reactor's inbox -> Fanout
//!        Redis: PUBLISH, waiter recorded (coordinator's FIFO) -> reply -> Answer -> reactor
//! Redis SUB readable -> resp::cmd::Decoder (limits) -> payload (event shape, size checked) -> Fanout
//! Fanout::deliver -> ws::frame::text once -> Bytes -> OutQueue::push(clone) per subscriber
//! end of turn -> flush each dirty Conn (writev) -> leftovers? ask WRITABLE -> flush again
//! ```
//!
//! Modules, in the order data meets them:
//! - `config`       env + flags -> `Config`, limits, Redis URL; secrets hidden from logs
//! - `reactor`      the mio loop: accept, read, dispatch, flush, reap, timers, shutdown
//! - `conn`         one connection's state machine, tail and output queue
//! - `http`         request parsing (httparse), routing, access checks, publish bodies, replies
//! - `auth`         JWT verification, channel patterns, grants and their expiry (no sockets)
//! - `ws`           the upgrade handshake; frames in (validated) and out (built once)
//! - `broker`       embedded or Redis: where a publish goes
//! - `coordinator`  what waits on Redis (commands in flight, parked publishes, replays waiting
//!   for the link, catch-ups), its caps and timeouts, what each reply means (no sockets)
//! - `resp`         RESP commands and replies (redis-protocol, within limits); the Redis link;
//!   Redis Cluster slots, redirects and the slot map (`resp::cluster`, no sockets)
//! - `channel`      channel names, lists, resume points, Redis names (hash tags: which share a
//!   Redis Cluster slot)
//! - `idempotency`  the embedded broker's recent `Idempotency-Key`s (capped in count, bytes,
//!   age): a retried publish is answered, not delivered again
//! - `hub`          embedded: ids, history and idempotency for every reactor; their inboxes,
//!   capped (what an overrun dropped is read back from the history)
//! - `history`      the embedded broker's recent events per channel (capped in bytes, channels,
//!   age); pages of it
//! - `replay`       a resuming subscriber: which page next, what to do with live events meanwhile
//! - `catch_up`     a channel whose Redis subscription came back: what it missed, live events
//!   held meanwhile, the seam (no sockets)
//! - `fanout`       channel -> subscribers; delivery of one shared frame to each
//! - `occupancy`    subscribers per channel (here and, with Redis, on every replica), who
//!   watches them, when each watcher is due an update (no sockets)
//! - `sse`          Server-Sent Events records
//! - `outq`         per-connection queue of shared buffers, written with writev
//! - `event`        the event and its one JSON encoding
//! - `static_files` the page, built in or from STATIC_DIR (re-read only when changed), safe names
//! - `metrics`      counters and the Prometheus page
//! - `ratelog`      warnings logged once per interval with a count; peer error texts cut short

pub mod auth;
pub mod broker;
pub mod catch_up;
pub mod channel;
pub mod config;
pub mod conn;
pub mod coordinator;
pub mod event;
pub mod fanout;
pub mod history;
pub mod http;
pub mod hub;
pub mod idempotency;
pub mod metrics;
pub mod occupancy;
pub mod outq;
pub mod ratelog;
pub mod reactor;
pub mod replay;
pub mod resp;
pub mod sse;
pub mod static_files;
pub mod ws;
