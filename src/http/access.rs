//! Who may do what over HTTP, once auth is on (`Config::auth`): the token of a request
//! (`?token=` for browsers, which cannot set headers on a WebSocket or EventSource;
//! `Authorization: Bearer` for everyone else), the subscribe check of `/ws`, `/sse` and
//! `GET /events/<ch>`, the publish check of `POST /events`, and the reply of each refusal.
//! Auth off: every check passes, and publishing keeps its one static `PUBLISH_TOKEN`.
//!
//! Socket-free: the router calls these and turns a `Denial` into `Action::Refused`; the
//! reactor counts and logs it.

use std::borrow::Cow;

use serde_json::json;
use subtle::ConstantTimeEq;

use super::form;
use super::parse::Request;
use super::reply::Reply;
use crate::auth::{Denial, Grant, Refusal};
use crate::config::Config;

/// The token a request carries: `?token=` first, else `Authorization: Bearer`.
pub fn token_of<'a>(req: &Request<'a>) -> Option<Cow<'a, str>> {
    let from_query = form::get(req.query.as_bytes(), "token").ok().flatten();
    from_query
        .or_else(|| bearer(req).map(Cow::Borrowed))
        .filter(|t| !t.trim().is_empty())
}

fn bearer<'a>(req: &Request<'a>) -> Option<&'a str> {
    req.headers
        .authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// May this request receive every one of `channels`? `Ok(None)`: yes, without a grant
/// (auth off, or all of them public and no token sent). `Ok(Some(grant))`: yes, and this
/// grant decides later subscriptions and the connection's expiry.
pub fn subscriber<'c>(
    req: &Request<'_>,
    config: &Config,
    channels: impl IntoIterator<Item = &'c str>,
) -> Result<Option<Grant>, Denial> {
    let Some(auth) = &config.auth else {
        return Ok(None);
    };
    let grant = match token_of(req) {
        Some(token) => Some(auth.verify(&token).map_err(Denial::new)?),
        None => None,
    };
    let refused: Vec<String> = channels
        .into_iter()
        .filter(|ch| !auth.is_public(ch) && !grant.as_ref().is_some_and(|g| g.may_subscribe(ch)))
        .map(str::to_string)
        .collect();
    if refused.is_empty() {
        return Ok(grant);
    }
    Err(match grant {
        // No token: who is asking is unknown (401), not forbidden.
        None => Denial {
            channels: refused,
            ..Denial::new(Refusal::Missing)
        },
        Some(grant) => Denial {
            refusal: Refusal::Channel,
            sub: Some(grant.sub().into()),
            channels: refused,
        },
    })
}

/// Who is publishing: checked before the body is read into an event, so an unknown
/// publisher learns nothing about its event.
#[derive(Debug)]
pub enum Publisher {
    /// Auth off and no `PUBLISH_TOKEN`, or the static `PUBLISH_TOKEN`: any channel.
    Anyone,
    /// A JWT: the channels its `publish` claim covers.
    Holder(Grant),
}

impl Publisher {
    pub fn may_publish(&self, channel: &str) -> Result<(), Denial> {
        match self {
            Publisher::Anyone => Ok(()),
            Publisher::Holder(grant) if grant.may_publish(channel) => Ok(()),
            Publisher::Holder(grant) => Err(Denial {
                refusal: Refusal::Publish,
                sub: Some(grant.sub().into()),
                channels: vec![channel.to_string()],
            }),
        }
    }
}

/// The publish check. Auth off: exactly the `PUBLISH_TOKEN` rule of old (`Err(Reply)` is
/// its 401). Auth on: the static token, or a JWT with a `publish` claim; anonymous is 401
/// whether or not `PUBLISH_TOKEN` is set.
pub fn publisher(req: &Request<'_>, config: &Config) -> Result<Publisher, Refused> {
    let offered = bearer(req).unwrap_or("");
    let is_static = config
        .publish_token
        .as_ref()
        .is_some_and(|t| bool::from(offered.as_bytes().ct_eq(t.0.as_bytes())));
    let Some(auth) = &config.auth else {
        if config.publish_token.is_none() || is_static {
            return Ok(Publisher::Anyone);
        }
        return Err(Refused::Plain(
            Reply::error(401, "missing or wrong publish token")
                .header("WWW-Authenticate", "Bearer"),
        ));
    };
    if is_static {
        return Ok(Publisher::Anyone);
    }
    if offered.is_empty() {
        return Err(Refused::Denied(Denial::new(Refusal::Missing)));
    }
    auth.verify(offered)
        .map(Publisher::Holder)
        .map_err(|r| Refused::Denied(Denial::new(r)))
}

/// A refused publish: with auth off, the plain 401 of old (not counted as an auth
/// refusal, as before); with auth on, a `Denial`.
#[derive(Debug)]
pub enum Refused {
    Plain(Reply),
    Denied(Denial),
}

/// The reply to a refusal: 401 (with `WWW-Authenticate`, RFC 6750 3) when there is no valid
/// token, 403 naming the channels when the token is valid but does not cover them.
pub fn denial_reply(denial: &Denial) -> Reply {
    let refusal = denial.refusal;
    let mut body = json!({ "error": refusal.message(), "reason": refusal.label() });
    if !denial.channels.is_empty() {
        body["channels"] = json!(denial.channels);
    }
    let reply = Reply::json(refusal.status(), &body);
    match refusal.status() {
        401 if refusal == Refusal::Missing => reply.header("WWW-Authenticate", "Bearer"),
        401 => reply.header("WWW-Authenticate", "Bearer error=\"invalid_token\""),
        _ => reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Auth, AuthSettings, TokenSpec, mint_hs256};
    use crate::config::Secret;
    use crate::http::parse::parse_request;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config(public: &[&str]) -> Config {
        let mut c = Config::local(0);
        c.auth = Auth::from_settings(&AuthSettings {
            secret: Some(SECRET.into()),
            public_channels: public.iter().map(|s| s.to_string()).collect(),
            ..AuthSettings::default()
        })
        .unwrap();
        c
    }

    fn token(channels: &[&str], publish: &[&str]) -> String {
        let spec = TokenSpec {
            sub: Some("alice".into()),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            publish: publish.iter().map(|s| s.to_string()).collect(),
            ttl: std::time::Duration::from_secs(60),
            ..TokenSpec::default()
        };
        mint_hs256(SECRET.as_bytes(), &spec).unwrap()
    }

    fn with_request<T>(raw: &str, f: impl FnOnce(&Request<'_>) -> T) -> T {
        let limits = crate::config::Limits::default();
        let (req, _) = parse_request(raw.as_bytes(), &limits).unwrap().unwrap();
        f(&req)
    }

    #[test]
    fn should_let_everything_through_with_auth_off() {
        let c = Config::local(0);
        let got = with_request("GET /ws HTTP/1.1\r\n\r\n", |r| subscriber(r, &c, ["x"]));
        assert_eq!(got, Ok(None));
    }

    #[test]
    fn should_check_every_channel_asked_for() {
        let c = config(&["news"]);
        let anon = with_request("GET /ws HTTP/1.1\r\n\r\n", |r| {
            (
                subscriber(r, &c, ["news"]),
                subscriber(r, &c, ["news", "orders.eu"]),
            )
        });
        assert_eq!(anon.0, Ok(None));
        let denial = anon.1.unwrap_err();
        assert_eq!(
            (denial.refusal, denial.channels),
            (Refusal::Missing, vec!["orders.eu".into()])
        );

        let t = token(&["orders.*"], &[]);
        let raw = format!("GET /ws?token={t} HTTP/1.1\r\n\r\n");
        let ok = with_request(&raw, |r| subscriber(r, &c, ["orders.eu", "news"]));
        assert_eq!(ok.unwrap().unwrap().sub(), "alice");
        let denied = with_request(&raw, |r| subscriber(r, &c, ["orders.eu", "billing"]));
        let denied = denied.unwrap_err();
        assert_eq!(denied.refusal, Refusal::Channel);
        assert_eq!(denied.channels, vec!["billing".to_string()]);
        assert_eq!(denial_reply(&denied).status, 403);

        let header = format!("GET /sse HTTP/1.1\r\nAuthorization: Bearer {t}\r\n\r\n");
        assert!(with_request(&header, |r| subscriber(r, &c, ["orders.x"])).is_ok());
        let bad = "GET /ws?token=abc.def.ghi HTTP/1.1\r\n\r\n";
        let denied = with_request(bad, |r| subscriber(r, &c, ["news"])).unwrap_err();
        assert_eq!(
            denied.refusal,
            Refusal::Malformed,
            "a bad token is refused even for public channels"
        );
        assert_eq!(denial_reply(&denied).status, 401);
    }

    #[test]
    fn should_check_publishers() {
        let mut c = config(&[]);
        let anon = with_request("POST /events HTTP/1.1\r\n\r\n", |r| publisher(r, &c));
        assert!(matches!(
            anon,
            Err(Refused::Denied(Denial {
                refusal: Refusal::Missing,
                ..
            }))
        ));
        let t = token(&[], &["orders.eu"]);
        let raw = format!("POST /events HTTP/1.1\r\nAuthorization: Bearer {t}\r\n\r\n");
        let holder = with_request(&raw, |r| publisher(r, &c)).unwrap();
        assert!(holder.may_publish("orders.eu").is_ok());
        assert_eq!(
            holder.may_publish("orders.us").unwrap_err().refusal,
            Refusal::Publish
        );

        c.publish_token = Some(Secret("static-token".into()));
        let raw = "POST /events HTTP/1.1\r\nAuthorization: Bearer static-token\r\n\r\n";
        assert!(matches!(
            with_request(raw, |r| publisher(r, &c)),
            Ok(Publisher::Anyone)
        ));
        c.auth = None;
        assert!(matches!(
            with_request(raw, |r| publisher(r, &c)),
            Ok(Publisher::Anyone)
        ));
        let wrong = "POST /events HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n";
        assert!(matches!(
            with_request(wrong, |r| publisher(r, &c)),
            Err(Refused::Plain(_))
        ));
    }
}
