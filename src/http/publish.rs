//! Reading an event out of `POST /events`: the tutorial's query form
//! (`?event_type=order&message=...`), a form body, or a JSON body `{"type", "message"}`.
//! Query parameters win over the body, as they do for the tutorial's FastAPI handler.

use serde::Deserialize;

use super::form;
use super::parse::Request;
use super::reply::Reply;
use crate::event::Event;

#[derive(Deserialize)]
struct JsonEvent {
    #[serde(rename = "type", alias = "event_type")]
    kind: Option<String>,
    message: Option<String>,
}

/// The event a publish request carries, or the error reply for it.
pub fn event_from(req: &Request<'_>) -> Result<Event, Reply> {
    let not_utf8 = |_| Reply::error(400, "form data is not valid UTF-8");
    let query = req.query.as_bytes();
    let mut kind = form::get(query, "event_type")
        .map_err(not_utf8)?
        .map(String::from);
    let mut message = form::get(query, "message")
        .map_err(not_utf8)?
        .map(String::from);

    if !req.body.is_empty() {
        let media = req
            .headers
            .content_type
            .and_then(|ct| ct.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        let from_body = match media.as_deref() {
            Some("application/json") => {
                let parsed: JsonEvent = serde_json::from_slice(req.body).map_err(|e| {
                    let status = if e.is_data() { 422 } else { 400 };
                    Reply::error(status, &format!("invalid JSON body: {e}"))
                })?;
                (parsed.kind, parsed.message)
            }
            Some("application/x-www-form-urlencoded") | None => (
                form::get(req.body, "event_type")
                    .map_err(not_utf8)?
                    .map(String::from),
                form::get(req.body, "message")
                    .map_err(not_utf8)?
                    .map(String::from),
            ),
            Some(other) => {
                return Err(Reply::error(
                    415,
                    &format!("unsupported Content-Type {other:?}: send application/json or a form"),
                ));
            }
        };
        kind = kind.or(from_body.0);
        message = message.or(from_body.1);
    }

    let Some(kind) = kind else {
        return Err(Reply::error(422, "missing event_type"));
    };
    Ok(Event {
        kind,
        message: message.unwrap_or_default(),
    })
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
        }
    }

    #[test]
    fn should_accept_all_three_forms() {
        let q = post("event_type=order&message=Order+%23123+placed", None, b"");
        assert_eq!(event_from(&q), Ok(event("order", "Order #123 placed")));
        let form = post(
            "",
            Some("application/x-www-form-urlencoded"),
            b"event_type=deploy&message=v2.1",
        );
        assert_eq!(event_from(&form), Ok(event("deploy", "v2.1")));
        let json = post(
            "",
            Some("application/json; charset=utf-8"),
            br#"{"type":"x","message":"<b>"}"#,
        );
        assert_eq!(event_from(&json), Ok(event("x", "<b>")));
        let no_message = post("event_type=ping", None, b"");
        assert_eq!(event_from(&no_message), Ok(event("ping", "")));
    }

    #[test]
    fn should_answer_errors_with_their_status() {
        let status = |r: Request| event_from(&r).unwrap_err().status;
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
    }
}
