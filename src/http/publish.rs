//! Reading an event out of `POST /events`: the tutorial's query form
//! (`?event_type=order&message=...`), a form body, or a JSON body `{"type", "message"}`.
//! Query parameters win over the body, as they do for the tutorial's FastAPI handler.
//! The channel comes from the path (`POST /events/orders`), `?channel=`, or the body, in that
//! order; none means the default channel.
//!
//! An `Idempotency-Key` header (or `"idempotency_key"` in a JSON body; the header wins) marks
//! a publish that may be retried: the broker delivers a key only once per channel within
//! `IDEMPOTENCY_WINDOW_SECS`.
//!
//! A JSON body may name `"channels": [...]` (at most `MAX_CHANNELS_PER_PUBLISH`) instead of
//! one channel: the event goes to each. `POST /events/batch` carries many events, as a JSON
//! array or one JSON object per line (`batch_from`): each is read on its own, so one bad
//! event is one error in the answer, not a refused batch.

use serde::Deserialize;

use super::form;
use super::parse::Request;
use super::reply::Reply;
use crate::channel;
use crate::event::Event;
use crate::idempotency;

#[derive(Deserialize)]
struct JsonEvent {
    #[serde(rename = "type", alias = "event_type")]
    kind: Option<String>,
    message: Option<String>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    idempotency_key: Option<String>,
}

/// Most channels one publish may name in `"channels"`.
pub const MAX_CHANNELS_PER_PUBLISH: usize = 100;

/// What a publish request asks for: an event, and the key that makes a retry of it harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub event: Event,
    /// Validated (`idempotency::validate_key`).
    pub idempotency_key: Option<String>,
    /// The body named `"channels"`: the event goes to each (`event.channel` is the first),
    /// and the answer has one result per channel. Validated, no name twice.
    pub channels: Option<Vec<String>>,
}

/// The event a publish request carries, or the error reply for it. `path_channel` is the
/// channel named in the path, if any.
pub fn event_from(req: &Request<'_>, path_channel: Option<&str>) -> Result<Event, Reply> {
    publication_from(req, path_channel).map(|p| p.event)
}

/// The publication a request carries (event and idempotency key), or the error reply for it.
pub fn publication_from(
    req: &Request<'_>,
    path_channel: Option<&str>,
) -> Result<Publication, Reply> {
    let not_utf8 = |_| Reply::error(400, "form data is not valid UTF-8");
    let fields = |input: &[u8]| -> Result<[Option<String>; 3], Reply> {
        let found = form::get_all(input, ["event_type", "message", "channel"]).map_err(not_utf8)?;
        Ok(found.map(|value| value.map(String::from)))
    };
    let [mut kind, mut message, query_channel] = fields(req.query.as_bytes())?;
    let mut channel_name = match path_channel {
        Some(name) => Some(name.to_string()),
        None => query_channel,
    };
    let mut idempotency_key = req.headers.idempotency_key.map(str::to_string);
    let mut channels = None;

    if !req.body.is_empty() {
        let media = req
            .headers
            .content_type
            .and_then(|ct| ct.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        let [body_kind, body_message, body_channel] = match media.as_deref() {
            Some("application/json") => {
                let parsed: JsonEvent = serde_json::from_slice(req.body).map_err(|e| {
                    let status = if e.is_data() { 422 } else { 400 };
                    Reply::error(status, &format!("invalid JSON body: {e}"))
                })?;
                idempotency_key = idempotency_key.or(parsed.idempotency_key);
                channels = parsed.channels;
                [parsed.kind, parsed.message, parsed.channel]
            }
            Some("application/x-www-form-urlencoded") | None => fields(req.body)?,
            Some(other) => {
                return Err(Reply::error(
                    415,
                    &format!("unsupported Content-Type {other:?}: send application/json or a form"),
                ));
            }
        };
        kind = kind.or(body_kind);
        message = message.or(body_message);
        channel_name = channel_name.or(body_channel);
    }

    let Some(kind) = kind else {
        return Err(Reply::error(422, "missing event_type"));
    };
    let channel_name = match (&channels, channel_name) {
        (Some(_), Some(_)) => {
            return Err(Reply::error(400, "name either \"channel\" or \"channels\""));
        }
        (Some(list), None) => validate_channels(list)?,
        (None, name) => name.unwrap_or_else(|| channel::DEFAULT.to_string()),
    };
    channel::validate(&channel_name).map_err(|e| Reply::error(400, &e))?;
    if let Some(key) = &idempotency_key {
        idempotency::validate_key(key).map_err(|e| Reply::error(400, &e.to_string()))?;
    }
    Ok(Publication {
        event: Event {
            kind,
            message: message.unwrap_or_default(),
            channel: channel_name,
        },
        idempotency_key,
        channels,
    })
}

/// Checks a `"channels"` list (1 to `MAX_CHANNELS_PER_PUBLISH` valid names, none twice);
/// returns the first.
fn validate_channels(list: &[String]) -> Result<String, Reply> {
    if list.is_empty() || list.len() > MAX_CHANNELS_PER_PUBLISH {
        let why = format!("\"channels\" must name 1 to {MAX_CHANNELS_PER_PUBLISH} channels");
        return Err(Reply::error(400, &why));
    }
    for (i, name) in list.iter().enumerate() {
        channel::validate(name).map_err(|e| Reply::error(400, &e))?;
        if list[..i].contains(name) {
            return Err(Reply::error(400, &format!("channel {name:?} named twice")));
        }
    }
    Ok(list[0].clone())
}

/// One event of a batch: its publication, or the error it gets in the answer.
pub type BatchItem = Result<Publication, Reply>;

/// The events of `POST /events/batch`: a JSON array of event objects, or newline-delimited
/// JSON (one object per line, blank lines skipped). At most `max_events`, else the whole
/// batch is refused (413). An item that is not a valid event is an error in its place; an
/// item may not name `"channels"` (one channel per event keeps one result per event).
pub fn batch_from(req: &Request<'_>, max_events: usize) -> Result<Vec<BatchItem>, Reply> {
    let media = req
        .headers
        .content_type
        .and_then(|ct| ct.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    if !matches!(
        media.as_deref(),
        Some("application/json" | "application/x-ndjson" | "application/jsonl") | None
    ) {
        return Err(Reply::error(
            415,
            "a batch is a JSON array, or one JSON object per line (application/x-ndjson)",
        ));
    }
    let text = std::str::from_utf8(req.body)
        .map_err(|_| Reply::error(400, "batch body is not valid UTF-8"))?;
    let too_many = || {
        Reply::error(
            413,
            &format!("too many events in one batch (MAX_BATCH_EVENTS {max_events})"),
        )
    };
    let items: Vec<Result<JsonEvent, Reply>> = if text.trim_start().starts_with('[') {
        let values: Vec<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| Reply::error(400, &format!("invalid JSON array: {e}")))?;
        if values.len() > max_events {
            return Err(too_many());
        }
        values
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(invalid_item))
            .collect()
    } else {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() > max_events {
            return Err(too_many());
        }
        lines
            .into_iter()
            .map(|line| serde_json::from_str(line).map_err(invalid_item))
            .collect()
    };
    if items.is_empty() {
        return Err(Reply::error(422, "empty batch"));
    }
    Ok(items
        .into_iter()
        .map(|item| item.and_then(batch_item))
        .collect())
}

fn invalid_item(e: serde_json::Error) -> Reply {
    let status = if e.is_data() { 422 } else { 400 };
    Reply::error(status, &format!("invalid event: {e}"))
}

fn batch_item(parsed: JsonEvent) -> Result<Publication, Reply> {
    if parsed.channels.is_some() {
        return Err(Reply::error(
            400,
            "a batch event names one \"channel\" (\"channels\" is for POST /events)",
        ));
    }
    let Some(kind) = parsed.kind else {
        return Err(Reply::error(422, "missing type"));
    };
    let channel_name = parsed
        .channel
        .unwrap_or_else(|| channel::DEFAULT.to_string());
    channel::validate(&channel_name).map_err(|e| Reply::error(400, &e))?;
    if let Some(key) = &parsed.idempotency_key {
        idempotency::validate_key(key).map_err(|e| Reply::error(400, &e.to_string()))?;
    }
    Ok(Publication {
        event: Event {
            kind,
            message: parsed.message.unwrap_or_default(),
            channel: channel_name,
        },
        idempotency_key: parsed.idempotency_key,
        channels: None,
    })
}

/// The most bytes the event can take in a subscriber's queue, whatever its id: its JSON as
/// `Event::to_json` writes it (escapes counted), as a WebSocket frame or as an SSE record
/// (which repeats the type in its `event:` line). An event over `MAX_QUEUED_BYTES` by this
/// measure would close every subscriber it reached, so it is refused at publish.
pub fn largest_frame_bytes(event: &Event) -> usize {
    /// The longest id, `<20 digits>-<20 digits>`.
    const ID: usize = 41;
    /// `{"id":"<id>","type":,"message":,"channel":}`
    const JSON_FIXED: usize = 39 + ID;
    /// A WebSocket frame header for 64 KiB and more.
    const WS_HEADER: usize = 10;
    /// `id: <id>\nevent: \ndata: \n\n`
    const SSE_FIXED: usize = 21 + ID;
    let json = JSON_FIXED
        + json_string_bytes(&event.kind)
        + json_string_bytes(&event.message)
        + json_string_bytes(&event.channel);
    json + WS_HEADER.max(SSE_FIXED + event.kind.len())
}

/// The length of `text` as a JSON string with serde_json's escapes: quotes, `"` and `\` as
/// two bytes, control characters as two (`\n`) or six (`\u0001`).
fn json_string_bytes(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{Headers, Method};

    fn post<'a>(query: &'a str, content_type: Option<&'a str>, body: &'a [u8]) -> Request<'a> {
        Request {
            method: Method::Post,
            path: "/events",
            query,
            keep_alive: true,
            headers: Headers {
                content_type,
                ..Headers::default()
            },
            body,
        }
    }

    fn event(kind: &str, message: &str) -> Event {
        Event {
            kind: kind.into(),
            message: message.into(),
            channel: "events".into(),
        }
    }

    #[test]
    fn should_accept_all_three_forms() {
        let q = post("event_type=order&message=Order+%23123+placed", None, b"");
        assert_eq!(
            event_from(&q, None),
            Ok(event("order", "Order #123 placed"))
        );
        let form = post(
            "",
            Some("application/x-www-form-urlencoded"),
            b"event_type=deploy&message=v2.1",
        );
        assert_eq!(event_from(&form, None), Ok(event("deploy", "v2.1")));
        let json = post(
            "",
            Some("application/json; charset=utf-8"),
            br#"{"type":"x","message":"<b>"}"#,
        );
        assert_eq!(event_from(&json, None), Ok(event("x", "<b>")));
        let no_message = post("event_type=ping", None, b"");
        assert_eq!(event_from(&no_message, None), Ok(event("ping", "")));
    }

    #[test]
    fn should_answer_errors_with_their_status() {
        let status = |r: Request| event_from(&r, None).unwrap_err().status;
        assert_eq!(status(post("message=hi", None, b"")), 422);
        assert_eq!(
            status(post("", Some("application/json"), b"{\"message\":\"x\"}")),
            422
        );
        assert_eq!(
            status(post("", Some("application/json"), b"{\"type\":5}")),
            422
        );
        assert_eq!(status(post("", Some("application/json"), b"{nope")), 400);
        assert_eq!(status(post("event_type=%FF", None, b"")), 400);
        assert_eq!(status(post("", Some("text/plain"), b"hello")), 415);
        assert_eq!(
            status(post("event_type=a&channel=bad+name", None, b"")),
            400
        );
    }

    #[test]
    fn should_take_the_channel_from_path_query_or_body() {
        let channel = |r: Request, path| event_from(&r, path).unwrap().channel;
        assert_eq!(
            channel(post("event_type=a", None, b""), Some("orders")),
            "orders"
        );
        assert_eq!(
            channel(post("event_type=a&channel=q", None, b""), None),
            "q"
        );
        let json = post(
            "",
            Some("application/json"),
            br#"{"type":"a","channel":"j"}"#,
        );
        assert_eq!(channel(json, None), "j");
        assert_eq!(channel(post("event_type=a", None, b""), None), "events");
    }

    #[test]
    fn should_bound_the_framed_size_of_an_event_exactly_enough() {
        let texts = [
            "",
            "plain",
            "quote \" and \\ back",
            "\u{1}\u{1f}\n\t\x08\x0c\r",
            "caf\u{e9} \u{7f}",
        ];
        for kind in texts {
            for message in texts {
                let event = Event {
                    kind: kind.into(),
                    message: message.repeat(50),
                    channel: "a.b-c_d".into(),
                };
                let id = crate::event::EventId {
                    ms: u64::MAX,
                    seq: u64::MAX,
                };
                let json = event.to_json(Some(id));
                let ws = crate::ws::frame::text(&json).len();
                let sse = crate::sse::event_record(&json).len();
                let bound = largest_frame_bytes(&event);
                let largest = ws.max(sse);
                assert!(
                    bound >= largest,
                    "{kind:?}/{message:?}: {bound} < {largest}"
                );
                assert!(
                    bound <= largest + 16,
                    "{kind:?}/{message:?}: {bound} >> {largest}"
                );
            }
        }
    }
}
