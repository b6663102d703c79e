//! Configuration: every knob Herald has, from environment variables first and flags second
//! (clap reads both), turned into one validated `Config`.
//!
//! Secrets (the Redis password, the publish token) live in `Secret`, whose `Debug` prints `***`,
//! and the JWT key in `Auth`, whose `Debug` names only its algorithms, so logging a `Config`
//! can never leak them. `--help` shows no env values (`hide_env_values`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use thiserror::Error;

use crate::auth::{Auth, AuthConfigError, AuthSettings};
use crate::hub::InboxLimits;
use crate::idempotency::IdempotencyLimits;

/// Herald: a real-time event feed server (HTTP publish, Redis pub/sub, WebSocket fan-out).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, env = "BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// Redis URL (redis://[[user]:password@]host[:port][/db]). Also read from PUBSUB_CACHE_URL
    /// (what kindling injects) or REDIS_URL. Unset: an embedded in-process broker (one node).
    /// Several URLs, comma-separated, name nodes of one Redis Cluster.
    #[arg(long, env = "PUBSUB_CACHE_URL", hide_env_values = true)]
    pub redis: Option<String>,

    /// Redis pub/sub channel that carries events between replicas.
    #[arg(long, env = "CHANNEL", default_value = "events")]
    pub channel: String,

    /// Prefix of the Redis channels of named channels: channel `orders` is `<prefix>:orders`.
    #[arg(long, env = "CHANNEL_PREFIX", default_value = "events")]
    pub channel_prefix: String,

    /// Events kept per channel for clients that reconnect (Redis: stream MAXLEN ~ N).
    #[arg(long, env = "HISTORY_LEN", default_value_t = 1000)]
    pub history_len: usize,

    /// Most memory the embedded history may hold, all channels together, in bytes (event
    /// JSON plus per-event and per-channel overhead). Over it, the least recently published
    /// channel's history goes first.
    #[arg(long, env = "HISTORY_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub history_max_bytes: usize,

    /// Most channels with embedded history kept (over it, the least recently published one's
    /// history goes).
    #[arg(long, env = "MAX_CHANNELS", default_value_t = 10_000)]
    pub max_channels: usize,

    /// Most channels with subscribers on this server (each a fan-out entry and, with Redis, a
    /// subscription). Apart from MAX_CHANNELS: a feed with a channel per signed-in user has
    /// many more channels listened to than channels worth a history.
    #[arg(long, env = "MAX_SUBSCRIBED_CHANNELS", default_value_t = 100_000)]
    pub max_subscribed_channels: usize,

    /// Seconds an event stays in the embedded history (0: no age limit).
    #[arg(long, env = "HISTORY_TTL_SECS", default_value_t = 0)]
    pub history_ttl_secs: u64,

    /// Serve the page and /static/ from this folder instead of the copy built into the binary.
    #[arg(long, env = "STATIC_DIR")]
    pub static_dir: Option<PathBuf>,

    /// Log level: error, warn, info, debug or trace (RUST_LOG, if set, wins).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Expose a WebSocket echo route at this path (for conformance testing), e.g. /echo.
    #[arg(long, env = "ECHO_PATH")]
    pub echo_path: Option<String>,

    /// Require `Authorization: Bearer <token>` on POST /events.
    #[arg(long, env = "PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,

    /// Comma-separated list of Origins allowed to open WebSockets (unset: any origin).
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// Largest HTTP request head, in bytes (beyond it: 431).
    #[arg(long, env = "MAX_HEAD_BYTES", default_value_t = 8 * 1024)]
    pub max_head_bytes: usize,

    /// Largest HTTP request body, in bytes (beyond it: 413).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Largest incoming WebSocket message, in bytes (beyond it: close 1009).
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Most open client connections (beyond it: 503 and close).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Most bytes queued for one client that is not reading (beyond it: close 1008).
    #[arg(long, env = "MAX_QUEUED_BYTES", default_value_t = 1024 * 1024)]
    pub max_queued_bytes: usize,

    /// Most open connections from one IP address (beyond it: 503 and close); 0: no limit.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Largest `GET /events/<channel>` reply body, in bytes: longer histories come in pages
    /// (`"more":true`, `"next"`). Never above MAX_QUEUED_BYTES.
    #[arg(long, env = "HISTORY_PAGE_BYTES", default_value_t = 1024 * 1024)]
    pub history_page_bytes: usize,

    /// Seconds a client may take to send a complete request head.
    #[arg(long, env = "HEAD_TIMEOUT_SECS", default_value_t = 10)]
    pub head_timeout_secs: u32,

    /// Seconds an idle keep-alive HTTP connection is kept open.
    #[arg(long, env = "IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u32,

    /// Seconds of silence after which the server pings a WebSocket.
    #[arg(long, env = "PING_INTERVAL_SECS", default_value_t = 30)]
    pub ping_interval_secs: u32,

    /// Seconds a pinged WebSocket has to answer before it is closed.
    #[arg(long, env = "PONG_TIMEOUT_SECS", default_value_t = 10)]
    pub pong_timeout_secs: u32,

    /// Seconds to finish in-flight work after SIGTERM before exiting.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 5)]
    pub shutdown_grace_secs: u32,

    /// Milliseconds Redis may take to answer a command (or a new connection's handshake)
    /// before the request waiting on it gets a 504 and the link is reset.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 5000)]
    pub redis_timeout_ms: u64,

    /// Seconds an idle channel's history stream lives in Redis after its last event (0: no
    /// expiry).
    #[arg(long, env = "REDIS_HISTORY_TTL_SECS", default_value_t = 86_400)]
    pub redis_history_ttl_secs: u64,

    /// Redis Cluster mode: `auto` asks the first node that answers (`INFO cluster`), `on`
    /// or `off` say so.
    #[arg(long, env = "REDIS_CLUSTER", value_enum, default_value_t = ClusterMode::Auto)]
    pub redis_cluster: ClusterMode,

    /// Most publishes waiting on Redis at once (beyond it: 503).
    #[arg(long, env = "MAX_PENDING_PUBLISHES", default_value_t = 10_000)]
    pub max_pending_publishes: usize,

    /// Most history reads waiting on Redis at once: GET /events/<ch>, resuming subscribers,
    /// channels catching up (beyond it: 503, or a reset notice to the subscriber).
    #[arg(long, env = "MAX_PENDING_READS", default_value_t = 10_000)]
    pub max_pending_reads: usize,

    /// Most bytes of events held waiting on Redis: publishes not yet answered and live events
    /// held while a channel catches up (beyond it: 503, or the catch-up gives up with a reset).
    #[arg(long, env = "MAX_PENDING_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_pending_bytes: usize,

    /// Seconds within which a publish retried with the same Idempotency-Key (to the same
    /// channel) is answered with the first one's id instead of being delivered again (0: off).
    #[arg(long, env = "IDEMPOTENCY_WINDOW_SECS", default_value_t = 300)]
    pub idempotency_window_secs: u64,

    /// Most events in one `POST /events/batch` (beyond it: 413).
    #[arg(long, env = "MAX_BATCH_EVENTS", default_value_t = 1000)]
    pub max_batch_events: usize,

    /// Redis mode: how often each replica writes its subscriber counts to Redis, in ms; they
    /// expire after three times this, so a dead replica's clients drop out by then.
    #[arg(long, env = "OCCUPANCY_REFRESH_MS", default_value_t = 2000)]
    pub occupancy_refresh_ms: u64,

    /// Embedded: most idempotency keys remembered (over it, the oldest are forgotten first).
    #[arg(long, env = "IDEMPOTENCY_MAX_KEYS", default_value_t = 100_000)]
    pub idempotency_max_keys: usize,

    /// Embedded: most memory the remembered idempotency keys may hold, in bytes.
    #[arg(long, env = "IDEMPOTENCY_MAX_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub idempotency_max_bytes: usize,

    /// Embedded, several reactors: most events waiting in one reactor's inbox (published on
    /// any reactor since its last turn). Over it, the reactor gets the rest from the history.
    #[arg(long, env = "INBOX_MAX_EVENTS", default_value_t = 10_000)]
    pub inbox_max_events: usize,

    /// Embedded, several reactors: most bytes of event JSON waiting in one reactor's inbox.
    /// Over it, the reactor gets the rest from the history.
    #[arg(long, env = "INBOX_MAX_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub inbox_max_bytes: usize,

    /// Seconds to keep serving after SIGTERM, with /health at 503 "draining", before the
    /// shutdown grace begins (Kubernetes: time for the ingress to stop routing here).
    #[arg(long, env = "DRAIN_SECS", default_value_t = 0)]
    pub drain_secs: u32,

    /// Reactors (threads) serving clients: a number, or `auto` for the cores this process may
    /// use (affinity and cgroup CPU quota, as in a Kubernetes pod). Each reactor has its own
    /// listener on the port (SO_REUSEPORT) and its own connections.
    #[arg(long, env = "THREADS", default_value = "1", value_parser = parse_threads)]
    pub threads: Threads,

    /// Let other processes of the same user bind the same port (SO_REUSEPORT), so several
    /// Herald processes in Redis mode can share one port. `--threads` above 1 sets it anyway.
    #[arg(long, env = "REUSE_PORT", default_value = "false", num_args = 0..=1,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub reuse_port: bool,

    /// permessage-deflate for WebSockets that offer it (every browser does): `on` or `off`.
    /// Each event is compressed once, whoever receives it.
    #[arg(long, env = "COMPRESSION", value_enum, default_value_t = Switch::On)]
    pub compression: Switch,

    /// Events (and echoes) smaller than this many bytes go uncompressed: below it, DEFLATE
    /// saves too little to pay for itself.
    #[arg(long, env = "COMPRESS_MIN_BYTES", default_value_t = 256)]
    pub compress_min_bytes: usize,

    /// HS256 secret (at least 32 bytes) that signs subscriber and publisher tokens; turns
    /// auth on.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,

    /// Path of a PEM public key (RSA: RS256, EC P-256: ES256) that verifies tokens; turns
    /// auth on.
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY")]
    pub auth_jwt_public_key: Option<PathBuf>,

    /// Required `iss` claim of tokens.
    #[arg(long, env = "AUTH_JWT_ISSUER")]
    pub auth_jwt_issuer: Option<String>,

    /// Required `aud` claim of tokens.
    #[arg(long, env = "AUTH_JWT_AUDIENCE")]
    pub auth_jwt_audience: Option<String>,

    /// Comma-separated channel patterns anyone may subscribe to without a token while auth
    /// is on (`news`, `status.*`, `*`).
    #[arg(long, env = "PUBLIC_CHANNELS", value_delimiter = ',')]
    pub public_channels: Option<Vec<String>>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `herald` does other than serving (with no subcommand, it serves).
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Print an HS256 token for curl and tests, signed with the secret in an environment
    /// variable (never on the command line, where `ps` would show it).
    Token(TokenArgs),
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// Environment variable that holds the secret.
    #[arg(long, default_value = "AUTH_JWT_SECRET")]
    pub secret_env: String,
    /// The identity (`sub` claim).
    #[arg(long)]
    pub sub: Option<String>,
    /// Comma-separated patterns the holder may subscribe to (`orders.*`, `news`, `*`).
    #[arg(long, value_delimiter = ',')]
    pub channels: Vec<String>,
    /// Comma-separated patterns the holder may publish to.
    #[arg(long, value_delimiter = ',')]
    pub publish: Vec<String>,
    /// Lifetime: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// `iss` claim (needed when the server sets AUTH_JWT_ISSUER).
    #[arg(long)]
    pub iss: Option<String>,
    /// `aud` claim (needed when the server sets AUTH_JWT_AUDIENCE).
    #[arg(long)]
    pub aud: Option<String>,
}

/// A feature turned `on` or `off`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Whether the Redis URLs name a Redis Cluster (`REDIS_CLUSTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterMode {
    /// Ask the first node that answers (`INFO cluster`).
    Auto,
    On,
    Off,
}

/// Where Redis is and how to log in, from `redis://[[user]:password@]host[:port][/db]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub db: u32,
}

impl std::fmt::Display for RedisUrl {
    /// The URL without credentials, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis://{}:{}/{}", self.host, self.port, self.db)
    }
}

impl RedisUrl {
    pub fn parse(text: &str) -> Result<RedisUrl, ConfigError> {
        let bad = |why: &str| ConfigError::RedisUrl(why.to_string());
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        match url.scheme() {
            "redis" => {}
            "rediss" => return Err(bad("TLS (rediss://) is not supported")),
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(bad("no host")),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad("credentials are not UTF-8"))
        };
        let username = match url.username() {
            "" => None,
            name => Some(decode(name)?),
        };
        let password = url.password().map(decode).transpose()?.map(Secret);
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            db => db.parse().map_err(|_| bad("database must be a number"))?,
        };
        Ok(RedisUrl {
            host,
            port: url.port().unwrap_or(6379),
            username,
            password,
            db,
        })
    }
}

/// Limits and timers that protect the server from one bad peer.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub max_queued_bytes: usize,
    /// 0: no per-address limit.
    pub max_connections_per_ip: usize,
    /// At most `max_queued_bytes`.
    pub history_page_bytes: usize,
    pub head_timeout_secs: u32,
    pub idle_timeout_secs: u32,
    pub ping_interval_secs: u32,
    pub pong_timeout_secs: u32,
    /// How long Redis may take to answer before waiting requests are answered without it.
    pub redis_timeout: Duration,
    pub max_pending_publishes: usize,
    pub max_pending_reads: usize,
    pub max_pending_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024,
            max_connections: 100_000,
            max_queued_bytes: 1024 * 1024,
            max_connections_per_ip: 0,
            history_page_bytes: 1024 * 1024,
            head_timeout_secs: 10,
            idle_timeout_secs: 60,
            ping_interval_secs: 30,
            pong_timeout_secs: 10,
            redis_timeout: Duration::from_millis(5000),
            max_pending_publishes: 10_000,
            max_pending_reads: 10_000,
            max_pending_bytes: 16 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    pub redis: Option<RedisUrl>,
    /// Every URL given (the first is `redis`): seed nodes of a Redis Cluster.
    pub redis_seeds: Vec<RedisUrl>,
    pub redis_cluster: ClusterMode,
    pub channel: String,
    pub channel_prefix: String,
    pub history_len: usize,
    /// Caps of the embedded history (`HISTORY_MAX_BYTES`, `MAX_CHANNELS`, `HISTORY_TTL_SECS`).
    pub history_max_bytes: usize,
    pub max_channels: usize,
    /// Channels with subscribers (`MAX_SUBSCRIBED_CHANNELS`).
    pub max_subscribed_channels: usize,
    pub history_ttl: Option<Duration>,
    /// Expiry of a Redis history stream after its last event; `None`: never.
    pub redis_history_ttl: Option<Duration>,
    pub static_dir: Option<PathBuf>,
    pub echo_path: Option<String>,
    pub publish_token: Option<Secret>,
    pub allowed_origins: Option<Vec<String>>,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    /// After SIGTERM, serve on (readiness probe failing) this long before closing.
    pub drain: Duration,
    /// Reactor threads (`THREADS`, `auto` resolved).
    pub threads: usize,
    /// SO_REUSEPORT on the listener (`REUSE_PORT`, or implied by `threads > 1`).
    pub reuse_port: bool,
    /// permessage-deflate is negotiated with clients that offer it (`COMPRESSION`).
    pub compression: bool,
    /// Smaller messages are sent plain (`COMPRESS_MIN_BYTES`).
    pub compress_min_bytes: usize,
    /// Token verification; `None`: auth off, every channel open as before.
    pub auth: Option<Auth>,
    /// `IDEMPOTENCY_WINDOW_SECS` (also Redis mode's key expiry) and the embedded store's caps.
    pub idempotency: IdempotencyLimits,
    /// Most events in one `POST /events/batch`.
    pub max_batch_events: usize,
    /// Embedded: caps of each reactor's inbox (`INBOX_MAX_EVENTS`, `INBOX_MAX_BYTES`).
    pub inbox: InboxLimits,
    /// Redis mode: how often subscriber counts are written to Redis (`OCCUPANCY_REFRESH_MS`).
    pub occupancy_refresh: Duration,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid Redis URL: {0}")]
    RedisUrl(String),
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
    #[error("invalid auth setting: {0}")]
    Auth(#[from] AuthConfigError),
}

impl Config {
    /// Validates the command line. `redis_fallback` is `REDIS_URL`, used when neither
    /// `--redis` nor `PUBSUB_CACHE_URL` is set.
    pub fn from_cli(cli: Cli, redis_fallback: Option<String>) -> Result<Config, ConfigError> {
        let redis_text = cli
            .redis
            .or(redis_fallback)
            .filter(|s| !s.trim().is_empty());
        let redis_seeds = redis_text
            .as_deref()
            .map(|text| {
                text.split(',')
                    .map(str::trim)
                    .filter(|url| !url.is_empty())
                    .map(RedisUrl::parse)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let redis = redis_seeds.first().cloned();
        if redis_seeds.len() > 1 && cli.redis_cluster == ClusterMode::Off {
            return Err(ConfigError::Invalid(
                "REDIS_CLUSTER",
                "off, but several Redis URLs were given (nodes of a cluster)".into(),
            ));
        }
        if redis.is_some() && cli.redis_cluster != ClusterMode::Off {
            // In cluster mode a channel's history stream must share its slot.
            for name in [&cli.channel, &cli.channel_prefix] {
                crate::channel::check_shard_channel(name)
                    .map_err(|why| ConfigError::Invalid("CHANNEL or CHANNEL_PREFIX", why))?;
            }
        }
        if cli.channel.is_empty() {
            return Err(ConfigError::Invalid("CHANNEL", "empty".into()));
        }
        if let Some(path) = &cli.echo_path
            && (!path.starts_with('/') || path.contains('?'))
        {
            return Err(ConfigError::Invalid("ECHO_PATH", path.clone()));
        }
        let positive = |name: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid(name, "must be positive".into()))
            } else {
                Ok(v)
            }
        };
        let max_queued_bytes = positive("MAX_QUEUED_BYTES", cli.max_queued_bytes)?;
        let max_body_bytes = deliverable_body_bytes(cli.max_body_bytes, max_queued_bytes);
        let max_message_bytes = positive("MAX_MESSAGE_BYTES", cli.max_message_bytes)?;
        let max_message_bytes = match cli.echo_path {
            Some(_) => echoable_message_bytes(max_message_bytes, max_queued_bytes),
            None => max_message_bytes,
        };
        let history_page_bytes = positive("HISTORY_PAGE_BYTES", cli.history_page_bytes)?;
        Ok(Config {
            bind: cli.bind,
            port: cli.port,
            redis,
            redis_seeds,
            redis_cluster: cli.redis_cluster,
            channel: cli.channel,
            channel_prefix: cli.channel_prefix,
            history_len: cli.history_len.max(1),
            history_max_bytes: positive("HISTORY_MAX_BYTES", cli.history_max_bytes)?,
            max_channels: positive("MAX_CHANNELS", cli.max_channels)?,
            max_subscribed_channels: positive(
                "MAX_SUBSCRIBED_CHANNELS",
                cli.max_subscribed_channels,
            )?,
            history_ttl: (cli.history_ttl_secs > 0)
                .then(|| Duration::from_secs(cli.history_ttl_secs)),
            redis_history_ttl: (cli.redis_history_ttl_secs > 0)
                .then(|| Duration::from_secs(cli.redis_history_ttl_secs)),
            static_dir: cli.static_dir,
            echo_path: cli.echo_path,
            publish_token: cli.publish_token.filter(|t| !t.is_empty()).map(Secret),
            allowed_origins: cli.allowed_origins.map(|list| {
                list.into_iter()
                    .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                    .filter(|o| !o.is_empty())
                    .collect()
            }),
            limits: Limits {
                max_head_bytes: positive("MAX_HEAD_BYTES", cli.max_head_bytes)?,
                max_body_bytes,
                max_message_bytes,
                max_connections: positive("MAX_CONNECTIONS", cli.max_connections)?,
                max_queued_bytes,
                max_connections_per_ip: cli.max_connections_per_ip,
                // A page is queued whole on the asking connection: never more than its cap.
                history_page_bytes: history_page_bytes.min(max_queued_bytes),
                head_timeout_secs: cli.head_timeout_secs.max(1),
                idle_timeout_secs: cli.idle_timeout_secs.max(1),
                ping_interval_secs: cli.ping_interval_secs.max(1),
                pong_timeout_secs: cli.pong_timeout_secs.max(1),
                redis_timeout: Duration::from_millis(positive(
                    "REDIS_TIMEOUT_MS",
                    cli.redis_timeout_ms as usize,
                )? as u64),
                max_pending_publishes: positive(
                    "MAX_PENDING_PUBLISHES",
                    cli.max_pending_publishes,
                )?,
                max_pending_reads: positive("MAX_PENDING_READS", cli.max_pending_reads)?,
                max_pending_bytes: positive("MAX_PENDING_BYTES", cli.max_pending_bytes)?,
            },
            shutdown_grace: Duration::from_secs(cli.shutdown_grace_secs.into()),
            drain: Duration::from_secs(cli.drain_secs.into()),
            threads: cli.threads.resolve(),
            reuse_port: cli.reuse_port || cli.threads.resolve() > 1,
            idempotency: IdempotencyLimits {
                window_ms: (cli.idempotency_window_secs > 0)
                    .then(|| cli.idempotency_window_secs.saturating_mul(1000)),
                max_keys: positive("IDEMPOTENCY_MAX_KEYS", cli.idempotency_max_keys)?,
                max_bytes: positive("IDEMPOTENCY_MAX_BYTES", cli.idempotency_max_bytes)?,
            },
            compression: cli.compression == Switch::On,
            compress_min_bytes: cli.compress_min_bytes,
            max_batch_events: positive("MAX_BATCH_EVENTS", cli.max_batch_events)?,
            inbox: InboxLimits {
                max_events: positive("INBOX_MAX_EVENTS", cli.inbox_max_events)?,
                max_bytes: positive("INBOX_MAX_BYTES", cli.inbox_max_bytes)?,
            },
            // Below 100 ms the flushes would cost Redis more than fresher counts are worth.
            occupancy_refresh: Duration::from_millis(cli.occupancy_refresh_ms.max(100)),
            auth: Auth::from_settings(&AuthSettings {
                secret: cli.auth_jwt_secret,
                public_key: cli.auth_jwt_public_key,
                issuer: cli.auth_jwt_issuer.filter(|s| !s.is_empty()),
                audience: cli.auth_jwt_audience.filter(|s| !s.is_empty()),
                public_channels: cli.public_channels.unwrap_or_default(),
            })?,
        })
    }

    /// A configuration for tests and embedding: embedded broker, default limits.
    pub fn local(port: u16) -> Config {
        Config {
            bind: IpAddr::from([127, 0, 0, 1]),
            port,
            redis: None,
            redis_seeds: Vec::new(),
            redis_cluster: ClusterMode::Auto,
            channel: "events".into(),
            channel_prefix: "events".into(),
            history_len: 1000,
            history_max_bytes: 64 * 1024 * 1024,
            max_channels: 10_000,
            max_subscribed_channels: 100_000,
            history_ttl: None,
            redis_history_ttl: Some(Duration::from_secs(86_400)),
            static_dir: None,
            echo_path: None,
            publish_token: None,
            allowed_origins: None,
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(5),
            drain: Duration::ZERO,
            threads: 1,
            reuse_port: false,
            compression: true,
            compress_min_bytes: 256,
            auth: None,
            idempotency: IdempotencyLimits {
                window_ms: Some(300_000),
                max_keys: 100_000,
                max_bytes: 32 * 1024 * 1024,
            },
            max_batch_events: 1000,
            inbox: InboxLimits::default(),
            occupancy_refresh: Duration::from_secs(2),
        }
    }
}

/// Most reactors a process may run: beyond the cores of any machine Herald runs on, and a
/// typo (`THREADS=1000`) should not start a thousand threads.
pub const MAX_THREADS: usize = 256;

/// `THREADS`: a count, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    Count(usize),
    /// The cores available to this process (`std::thread::available_parallelism`, which
    /// honours the affinity mask and the cgroup CPU quota).
    Auto,
}

impl Threads {
    pub fn resolve(self) -> usize {
        match self {
            Threads::Count(n) => n,
            Threads::Auto => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_THREADS),
        }
    }
}

fn parse_threads(text: &str) -> Result<Threads, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(Threads::Auto);
    }
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(Threads::Count(n)),
        _ => Err(format!(
            "must be `auto` or a number of threads from 1 to {MAX_THREADS}"
        )),
    }
}

/// What an event adds to its body on the way to a subscriber: the id, the channel name, the
/// JSON keys and the frame header (`http::publish::largest_frame_bytes` has the exact count).
pub const EVENT_OVERHEAD_BYTES: usize = 256;

/// `MAX_BODY_BYTES` must leave room for the event it carries in a subscriber's queue: an event
/// bigger than `MAX_QUEUED_BYTES` would close every subscriber that receives it. A body limit
/// above that is lowered, with a warning at start, rather than refused: a small
/// `MAX_QUEUED_BYTES` (set to shed slow clients early) should not stop the server from
/// starting because `MAX_BODY_BYTES` kept its default. Events whose JSON escaping still takes
/// them over the cap are refused at publish (413).
fn deliverable_body_bytes(max_body: usize, max_queued: usize) -> usize {
    let deliverable = max_queued.saturating_sub(EVENT_OVERHEAD_BYTES);
    if max_body > deliverable {
        log::warn!(
            "MAX_BODY_BYTES lowered from {max_body} to {deliverable}: an event carries up to \
             {EVENT_OVERHEAD_BYTES} bytes more than its body, and a subscriber receives at \
             most MAX_QUEUED_BYTES ({max_queued})"
        );
    }
    max_body.min(deliverable)
}

/// What the echo route adds to a message on its way back: a frame header (at most 14 bytes)
/// and the queue's handle and overhead for a buffer one connection holds alone.
const ECHO_OVERHEAD_BYTES: usize = 14 + 8 + 64;

/// With an echo route, a message comes back whole on the same connection: `MAX_MESSAGE_BYTES`
/// above what its queue may hold would close the client as slow for its own echo. Lowered,
/// with a warning at start, like the body limit.
fn echoable_message_bytes(max_message: usize, max_queued: usize) -> usize {
    let echoable = max_queued.saturating_sub(ECHO_OVERHEAD_BYTES).max(1);
    if max_message > echoable {
        log::warn!(
            "MAX_MESSAGE_BYTES lowered from {max_message} to {echoable}: the echo route sends a \
             message back whole, and a connection's queue holds at most MAX_QUEUED_BYTES \
             ({max_queued})"
        );
    }
    max_message.min(echoable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_lower_a_message_limit_the_echo_route_could_not_send_back() {
        let message_limit = |args: &[&str]| {
            let config = Config::from_cli(cli(args), None).unwrap();
            config.limits.max_message_bytes
        };
        let echo = ["--echo-path", "/echo", "--max-message-bytes", "1048576"];
        assert_eq!(message_limit(&echo), 1024 * 1024 - ECHO_OVERHEAD_BYTES);
        let roomy = [&echo[..], &["--max-queued-bytes", "4194304"]].concat();
        assert_eq!(message_limit(&roomy), 1024 * 1024);
        // The feed route echoes nothing: its limit stays.
        assert_eq!(
            message_limit(&["--max-message-bytes", "1048576"]),
            1024 * 1024
        );
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn should_lower_a_body_limit_no_subscriber_could_receive() {
        let body_limit = |args: &[&str]| {
            let config = Config::from_cli(cli(args), None).unwrap();
            config.limits.max_body_bytes
        };
        assert_eq!(body_limit(&["--max-queued-bytes", "65536"]), 65536 - 256);
        let small = ["--max-queued-bytes", "65536", "--max-body-bytes", "1000"];
        assert_eq!(body_limit(&small), 1000);
        assert_eq!(body_limit(&[]), 64 * 1024);
    }

    #[test]
    fn should_keep_history_pages_within_the_queue_cap() {
        let config = Config::from_cli(
            cli(&[
                "--max-queued-bytes",
                "300000",
                "--history-page-bytes",
                "5000000",
            ]),
            None,
        )
        .unwrap();
        assert_eq!(config.limits.history_page_bytes, 300_000);
        assert_eq!(
            Config::from_cli(cli(&[]), None)
                .unwrap()
                .limits
                .history_page_bytes,
            1 << 20
        );
    }

    #[test]
    fn should_parse_full_redis_url() {
        let url = RedisUrl::parse("redis://bob:p%40ss@cache.local:6380/3").unwrap();
        assert_eq!(url.host, "cache.local");
        assert_eq!(url.port, 6380);
        assert_eq!(url.username.as_deref(), Some("bob"));
        assert_eq!(url.password, Some(Secret("p@ss".into())));
        assert_eq!(url.db, 3);
    }

    #[test]
    fn should_parse_password_only_and_defaults() {
        let url = RedisUrl::parse("redis://:secret@pubsub-cache").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.db),
            ("pubsub-cache", 6379, 0)
        );
        assert_eq!(url.username, None);
        assert_eq!(url.password, Some(Secret("secret".into())));
        let plain = RedisUrl::parse("redis://127.0.0.1:7000").unwrap();
        assert_eq!(plain.password, None);
    }

    #[test]
    fn should_reject_bad_redis_urls() {
        for bad in ["rediss://h", "http://h", "redis://h/x", "not a url"] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn should_hide_secrets_in_debug_and_display() {
        let url = RedisUrl::parse("redis://u:hunter2@h:1/0").unwrap();
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(!url.to_string().contains("hunter2"));
    }
}
