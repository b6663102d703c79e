//! Routing: (method, path) to what should happen. Handlers here return an `Action`: a reply to
//! queue, an event to publish, or a WebSocket to open. They never touch sockets, and what needs
//! the reactor's live state (health, metrics) is named by the action and filled in there.

use super::access::{self, Refused};
use super::form;
use super::parse::{Method, Request};
use super::publish::{self, Publication};
use super::reply::{PAGE_CSP, Reply};
use crate::auth::{Denial, Grant};
use crate::channel::{self, Wanted};
use crate::config::Config;
use crate::event::EventId;
use crate::occupancy;
use crate::static_files::StaticFiles;
use crate::ws::deflate::Agreement;
use crate::ws::handshake;

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Reply(Reply),
    /// `GET /health`: the reactor answers with its broker state and connection counts.
    Health,
    /// `GET /metrics`: the reactor answers with its counters.
    Metrics,
    /// `POST /events`: hand the event to the broker; the reply waits for its verdict.
    Publish(Publication),
    /// `POST /events/batch`: publish each event in order; one result per event.
    PublishBatch(Vec<publish::BatchItem>),
    /// Switch this connection to WebSocket, answering with this accept key.
    Upgrade {
        accept_key: String,
        echo: bool,
        wanted: Wanted,
        /// What the token allows (auth on and a token sent).
        grant: Option<Grant>,
        /// permessage-deflate, if offered acceptably and `COMPRESSION` is on.
        deflate: Option<Agreement>,
    },
    /// Turn this connection into a Server-Sent Events stream of these channels.
    Sse {
        wanted: Wanted,
        grant: Option<Grant>,
    },
    /// Auth refused the request: the reactor counts and logs the denial, then sends `reply`.
    Refused {
        denial: Denial,
        reply: Reply,
    },
    /// `GET /channels`: channels with subscribers and their counts, a page at a time, those
    /// the asker may read only (`grant`: its token's, when auth is on).
    Channels {
        after: Option<String>,
        limit: usize,
        grant: Option<Grant>,
    },
    /// `GET /channels/<channel>`: its subscriber count (access already checked).
    Occupancy {
        channel: String,
    },
    /// `GET /events/<channel>`: the channel's history as JSON.
    History {
        channel: String,
        since: Option<EventId>,
        limit: usize,
    },
}

/// Most events one history request returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;

pub fn route(req: &Request<'_>, config: &Config, statics: &StaticFiles) -> Action {
    let path = req.path;
    let is_echo = config.echo_path.as_deref() == Some(path);
    match (req.method, path) {
        (Method::Get | Method::Head, "/") => page(statics, "index.html"),
        (Method::Get | Method::Head, _) if path.starts_with("/static/") => {
            page(statics, &path["/static/".len()..])
        }
        (Method::Get | Method::Head, "/herald.js") => client_library(statics),
        (Method::Get | Method::Head, "/health") => Action::Health,
        // Liveness: any answer proves the reactor turns; stays 200 while draining.
        (Method::Get | Method::Head, "/livez") => Action::Reply(
            Reply::json(200, &serde_json::json!({"status": "alive"}))
                .header("Cache-Control", "no-store"),
        ),
        (Method::Get | Method::Head, "/metrics") => Action::Metrics,
        (Method::Post, "/events") => publish(req, config, None),
        // Reserved: a channel named `batch` is published to with `?channel=batch`.
        (Method::Post, "/events/batch") => publish_batch(req, config),
        (Method::Post, _) if path.starts_with("/events/") => {
            publish(req, config, Some(&path["/events/".len()..]))
        }
        (Method::Get | Method::Head, _) if path.starts_with("/events/") => {
            history(req, config, &path["/events/".len()..])
        }
        (Method::Get | Method::Head, "/channels") => channels(req, config),
        (Method::Get | Method::Head, _) if path.starts_with("/channels/") => {
            occupancy(req, config, &path["/channels/".len()..])
        }
        (Method::Get | Method::Head, "/ws") => upgrade(req, config, false),
        (Method::Get | Method::Head, "/sse") => sse(req, config),
        (Method::Get | Method::Head, _) if is_echo => upgrade(req, config, true),
        (_, "/" | "/herald.js" | "/health" | "/livez" | "/metrics") => not_allowed("GET, HEAD"),
        (_, _) if path.starts_with("/static/") => not_allowed("GET, HEAD"),
        (_, "/events") => not_allowed("POST"),
        (_, _) if path.starts_with("/events/") => not_allowed("GET, HEAD, POST"),
        (_, "/ws" | "/sse" | "/channels") => not_allowed("GET, HEAD"),
        (_, _) if path.starts_with("/channels/") => not_allowed("GET, HEAD"),
        (_, _) if is_echo => not_allowed("GET, HEAD"),
        _ => Action::Reply(Reply::error(404, "not found")),
    }
}

fn page(statics: &StaticFiles, name: &str) -> Action {
    Action::Reply(match statics.get(name) {
        Ok(file) => {
            let reply = Reply::new(200, file.content_type, file.body)
                // Revalidate every time: a new deploy (or kindling sync) shows at once.
                .header("Cache-Control", "no-cache")
                .header("Referrer-Policy", "no-referrer");
            if file.content_type.starts_with("text/html") {
                reply.header("Content-Security-Policy", PAGE_CSP)
            } else {
                reply
            }
        }
        Err(reply) => reply,
    })
}

/// `GET /herald.js`, the client library: served like the page's assets, and importable from
/// pages of other origins (a module script from elsewhere is fetched with CORS).
fn client_library(statics: &StaticFiles) -> Action {
    match page(statics, "herald.js") {
        Action::Reply(reply) if reply.status == 200 => {
            Action::Reply(reply.header("Access-Control-Allow-Origin", "*"))
        }
        other => other,
    }
}

fn not_allowed(allow: &'static str) -> Action {
    Action::Reply(Reply::error(405, "method not allowed").header("Allow", allow))
}

/// What `HEAD /sse` answers: the head a stream starts with, without the stream (its length
/// is unknown, so no `Content-Length`).
fn sse_head() -> Reply {
    Reply::new(200, "text/event-stream", "")
        .header("Cache-Control", "no-store")
        .header("X-Accel-Buffering", "no")
        .stream_head()
}

/// A WebSocket handshake. HEAD gets what a GET would get, except that it cannot upgrade.
fn upgrade(req: &Request<'_>, config: &Config, echo: bool) -> Action {
    let wanted = match wanted(req, None) {
        Ok(wanted) => wanted,
        Err(reply) => return Action::Reply(reply),
    };
    // The echo route is for conformance tests and carries no channels: no auth.
    let grant = match echo {
        true => None,
        false => match access::subscriber(req, config, wanted.iter().map(|(n, _)| n.as_str())) {
            Ok(grant) => grant,
            Err(denial) => return refused(denial),
        },
    };
    match handshake::accept_key(req, config.allowed_origins.as_deref()) {
        // RFC 6455 4.2.1: the opening handshake is a GET; anything else gets a 400.
        Ok(_) if req.method == Method::Head => {
            Action::Reply(Reply::error(400, "the WebSocket handshake is a GET request").closing())
        }
        Ok(accept_key) => Action::Upgrade {
            accept_key,
            echo,
            wanted,
            grant,
            deflate: handshake::deflate(req, config.compression),
        },
        Err(reply) => Action::Reply(reply),
    }
}

fn sse(req: &Request<'_>, config: &Config) -> Action {
    let wanted = match wanted(req, req.headers.last_event_id) {
        Ok(wanted) => wanted,
        Err(reply) => return Action::Reply(reply),
    };
    match access::subscriber(req, config, wanted.iter().map(|(n, _)| n.as_str())) {
        Ok(_) if req.method == Method::Head => Action::Reply(sse_head()),
        Ok(grant) => Action::Sse { wanted, grant },
        // Readable from any origin: `herald.js` on another site asks /sse why its WebSocket
        // was refused (browsers hide a failed upgrade's status). It tells the asker only what
        // its own token (in its own URL; no cookies) allows.
        Err(denial) => {
            let reply = access::denial_reply(&denial).header("Access-Control-Allow-Origin", "*");
            Action::Refused { denial, reply }
        }
    }
}

fn refused(denial: Denial) -> Action {
    let reply = access::denial_reply(&denial);
    Action::Refused { denial, reply }
}

fn publish(req: &Request<'_>, config: &Config, path_channel: Option<&str>) -> Action {
    let publisher = match access::publisher(req, config) {
        Ok(publisher) => publisher,
        Err(Refused::Plain(reply)) => return Action::Reply(reply),
        Err(Refused::Denied(denial)) => return refused(denial),
    };
    let publication = match publish::publication_from(req, path_channel) {
        Ok(publication) => publication,
        Err(reply) => return Action::Reply(reply),
    };
    let channels = match &publication.channels {
        Some(list) => list.as_slice(),
        None => std::slice::from_ref(&publication.event.channel),
    };
    match may_publish_all(&publisher, channels.iter()) {
        Ok(()) => Action::Publish(publication),
        Err(denial) => refused(denial),
    }
}

/// Every channel must be allowed: a publish to several is refused whole, naming each channel
/// the publisher may not publish to.
fn may_publish_all<'a>(
    publisher: &access::Publisher,
    channels: impl Iterator<Item = &'a String>,
) -> Result<(), Denial> {
    let mut denied: Option<Denial> = None;
    for channel in channels {
        if let Err(denial) = publisher.may_publish(channel) {
            match &mut denied {
                Some(first) if !first.channels.contains(channel) => {
                    first.channels.extend(denial.channels)
                }
                Some(_) => {}
                None => denied = Some(denial),
            }
        }
    }
    denied.map_or(Ok(()), Err)
}

fn publish_batch(req: &Request<'_>, config: &Config) -> Action {
    let publisher = match access::publisher(req, config) {
        Ok(publisher) => publisher,
        Err(Refused::Plain(reply)) => return Action::Reply(reply),
        Err(Refused::Denied(denial)) => return refused(denial),
    };
    if req.headers.idempotency_key.is_some() {
        let why = "a batch takes an \"idempotency_key\" per event, not the header";
        return Action::Reply(Reply::error(400, why));
    }
    let items = match publish::batch_from(req, config.max_batch_events) {
        Ok(items) => items,
        Err(reply) => return Action::Reply(reply),
    };
    let channels = items.iter().flatten().map(|p| &p.event.channel);
    match may_publish_all(&publisher, channels) {
        Ok(()) => Action::PublishBatch(items),
        Err(denial) => refused(denial),
    }
}

/// What a request whose body has not arrived yet gets before it is sent: a refusal if the body
/// would be refused whatever it holds (a publish without the token), so the client need not
/// send it (`Expect: 100-continue`). An `Action::Reply` or, with auth on, `Action::Refused`.
pub fn refusal_before_body(head: &Request<'_>, config: &Config) -> Option<Action> {
    let is_publish = head.method == Method::Post
        && (head.path == "/events" || head.path.starts_with("/events/"));
    if !is_publish {
        return None;
    }
    match access::publisher(head, config) {
        Ok(_) => None,
        Err(Refused::Plain(reply)) => Some(Action::Reply(reply)),
        Err(Refused::Denied(denial)) => Some(refused(denial)),
    }
}

/// The channels and resume points of a subscription: `?channels=` and `?since=`, or for SSE
/// the `Last-Event-ID` a reconnecting browser sends.
fn wanted(req: &Request<'_>, last_event_id: Option<&str>) -> Result<Wanted, Reply> {
    let query = req.query.as_bytes();
    let bad = |e: String| Reply::error(400, &e).closing();
    let not_utf8 = |_| bad("query is not valid UTF-8".into());
    let [channels, since] = form::get_all(query, ["channels", "since"]).map_err(not_utf8)?;
    let since = since.as_deref().or(last_event_id);
    channel::parse_wanted(channels.as_deref(), since).map_err(bad)
}

/// `GET /channels?after=<name>&limit=N`. Who may list: anyone, but with auth on only the
/// channels the asker could subscribe to are listed (public ones without a token), so the
/// list reveals no channel it may not read; a bad token is refused as for subscribing.
fn channels(req: &Request<'_>, config: &Config) -> Action {
    let grant = match access::subscriber(req, config, []) {
        Ok(grant) => grant,
        Err(denial) => return refused(denial),
    };
    let query = req.query.as_bytes();
    let param = |key| form::get(query, key).ok().flatten();
    let after = match param("after") {
        None => None,
        Some(name) => match channel::validate(&name) {
            Ok(()) => Some(name.into_owned()),
            Err(e) => return Action::Reply(Reply::error(400, &format!("invalid after: {e}"))),
        },
    };
    let limit = match param("limit") {
        None => occupancy::DEFAULT_LIST_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=occupancy::MAX_LIST_LIMIT).contains(&n) => n,
            _ => {
                let why = format!("invalid limit: 1 to {}", occupancy::MAX_LIST_LIMIT);
                return Action::Reply(Reply::error(400, &why));
            }
        },
    };
    Action::Channels {
        after,
        limit,
        grant,
    }
}

/// `GET /channels/<channel>`: the same right as subscribing to it.
fn occupancy(req: &Request<'_>, config: &Config, name: &str) -> Action {
    if let Err(e) = channel::validate(name) {
        return Action::Reply(Reply::error(400, &e));
    }
    match access::subscriber(req, config, [name]) {
        Ok(_) => Action::Occupancy {
            channel: name.to_string(),
        },
        Err(denial) => refused(denial),
    }
}

fn history(req: &Request<'_>, config: &Config, name: &str) -> Action {
    if let Err(e) = channel::validate(name) {
        return Action::Reply(Reply::error(400, &e));
    }
    // The history of a channel is what a subscriber of it would have received.
    if let Err(denial) = access::subscriber(req, config, [name]) {
        return refused(denial);
    }
    let query = req.query.as_bytes();
    let param = |key| form::get(query, key).ok().flatten();
    let since = match param("since") {
        None => None,
        Some(text) => match text.parse::<EventId>() {
            Ok(id) => Some(id),
            Err(()) => return Action::Reply(Reply::error(400, "invalid since: an event id")),
        },
    };
    let limit = match param("limit") {
        None => 100,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY_LIMIT).contains(&n) => n,
            _ => {
                let why = format!("invalid limit: 1 to {MAX_HISTORY_LIMIT}");
                return Action::Reply(Reply::error(400, &why));
            }
        },
    };
    Action::History {
        channel: name.to_string(),
        since,
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::http::parse::parse_request;

    fn act(raw: &str, config: &Config) -> Action {
        let (req, _) = parse_request(raw.as_bytes(), &config.limits)
            .unwrap()
            .unwrap();
        route(&req, config, &StaticFiles::new(None).unwrap())
    }

    fn status(action: Action) -> u16 {
        match action {
            Action::Reply(r) => r.status,
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn should_route_each_path_and_method() {
        let c = Config::local(0);
        assert_eq!(status(act("GET / HTTP/1.1\r\n\r\n", &c)), 200);
        assert_eq!(status(act("GET /static/app.js HTTP/1.1\r\n\r\n", &c)), 200);
        assert_eq!(status(act("GET /static/../x HTTP/1.1\r\n\r\n", &c)), 400);
        assert_eq!(act("GET /health HTTP/1.1\r\n\r\n", &c), Action::Health);
        assert_eq!(status(act("GET /nope HTTP/1.1\r\n\r\n", &c)), 404);
        assert_eq!(status(act("POST /events HTTP/1.1\r\n\r\n", &c)), 422);
        assert!(matches!(
            act("POST /events?event_type=a HTTP/1.1\r\n\r\n", &c),
            Action::Publish(_)
        ));
        assert_eq!(status(act("GET /ws HTTP/1.1\r\n\r\n", &c)), 426);
        assert!(matches!(
            act("POST /events/orders?event_type=a HTTP/1.1\r\n\r\n", &c),
            Action::Publish(Publication { ref event, .. }) if event.channel == "orders"
        ));
        assert_eq!(
            act("GET /events/orders?since=5-1&limit=7 HTTP/1.1\r\n\r\n", &c),
            Action::History {
                channel: "orders".into(),
                since: Some(EventId { ms: 5, seq: 1 }),
                limit: 7
            }
        );
        assert_eq!(
            status(act("GET /events/bad%20name HTTP/1.1\r\n\r\n", &c)),
            400
        );
        assert_eq!(
            status(act("GET /events/a?limit=0 HTTP/1.1\r\n\r\n", &c)),
            400
        );
        assert_eq!(
            act(
                "GET /sse?channels=a HTTP/1.1\r\nLast-Event-ID: 3-0\r\n\r\n",
                &c
            ),
            Action::Sse {
                wanted: vec![("a".into(), Some(EventId { ms: 3, seq: 0 }))],
                grant: None,
            }
        );
        assert_eq!(
            status(act("GET /sse?channels=a*b HTTP/1.1\r\n\r\n", &c)),
            400
        );
        assert_eq!(
            act("GET /channels?after=b&limit=5 HTTP/1.1\r\n\r\n", &c),
            Action::Channels {
                after: Some("b".into()),
                limit: 5,
                grant: None
            }
        );
        assert_eq!(
            act("GET /channels HTTP/1.1\r\n\r\n", &c),
            Action::Channels {
                after: None,
                limit: occupancy::DEFAULT_LIST_LIMIT,
                grant: None
            }
        );
        for bad in ["limit=0", "limit=1001", "limit=x", "after=a*b"] {
            let raw = format!("GET /channels?{bad} HTTP/1.1\r\n\r\n");
            assert_eq!(status(act(&raw, &c)), 400, "{bad}");
        }
        assert_eq!(
            act("GET /channels/orders HTTP/1.1\r\n\r\n", &c),
            Action::Occupancy {
                channel: "orders".into()
            }
        );
        assert_eq!(status(act("GET /channels/a%20b HTTP/1.1\r\n\r\n", &c)), 400);
        assert_eq!(status(act("POST /channels HTTP/1.1\r\n\r\n", &c)), 405);
        assert_eq!(status(act("DELETE /channels/a HTTP/1.1\r\n\r\n", &c)), 405);
    }

    #[test]
    fn should_answer_405_with_allow() {
        let c = Config::local(0);
        match act("GET /events HTTP/1.1\r\n\r\n", &c) {
            Action::Reply(r) => {
                assert_eq!(r.status, 405);
                assert!(r.headers.contains(&("Allow", "POST".to_string())));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(status(act("DELETE / HTTP/1.1\r\n\r\n", &c)), 405);
    }

    #[test]
    fn should_require_the_publish_token_when_configured() {
        let mut c = Config::local(0);
        c.publish_token = Some(Secret("s3cret".into()));
        let req = |auth: &str| format!("POST /events?event_type=a HTTP/1.1\r\n{auth}\r\n");
        assert_eq!(status(act(&req(""), &c)), 401);
        assert_eq!(status(act(&req("Authorization: Bearer nope\r\n"), &c)), 401);
        assert!(matches!(
            act(&req("Authorization: Bearer s3cret\r\n"), &c),
            Action::Publish(_)
        ));
    }

    #[test]
    fn should_serve_the_page_with_a_strict_csp() {
        match act("GET / HTTP/1.1\r\n\r\n", &Config::local(0)) {
            Action::Reply(r) => {
                assert!(r.headers.iter().any(
                    |(n, v)| *n == "Content-Security-Policy" && v.contains("script-src 'self'")
                ))
            }
            other => panic!("{other:?}"),
        }
    }
}
