//! The opening handshake (RFC 6455 section 4.2): validate the upgrade request, derive the
//! accept key with tungstenite's `derive_accept_key`, build the 101 reply.

use base64::Engine;
use bytes::Bytes;

use super::deflate::{self, Agreement};
use crate::http::parse::Request;
use crate::http::reply::Reply;

/// Checks an upgrade request. Returns the `Sec-WebSocket-Accept` value, or the reply that
/// refuses it: 426 for a request that is not an upgrade or asks for another version,
/// 400 for a missing or malformed key, 403 for an Origin outside `allowed_origins`.
pub fn accept_key(req: &Request<'_>, allowed_origins: Option<&[String]>) -> Result<String, Reply> {
    let h = &req.headers;
    let is_websocket = h.upgrade.is_some_and(|u| {
        u.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
    });
    if !is_websocket {
        return Err(
            Reply::error(426, "this route speaks WebSocket: send Upgrade: websocket")
                .header("Upgrade", "websocket")
                .closing(),
        );
    }
    if !h.connection_upgrade {
        return Err(Reply::error(400, "Connection header must include Upgrade").closing());
    }
    if h.ws_version != Some("13") {
        // RFC 6455 4.4: answer with the versions this server supports.
        return Err(
            Reply::error(426, "unsupported Sec-WebSocket-Version (only 13)")
                .header("Sec-WebSocket-Version", "13")
                .closing(),
        );
    }
    // RFC 6455 4.1: the key is a base64-encoded 16-byte nonce.
    let key = h.ws_key.unwrap_or("");
    let nonce_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|nonce| nonce.len() == 16);
    if !nonce_ok {
        return Err(Reply::error(400, "missing or malformed Sec-WebSocket-Key").closing());
    }
    if let (Some(allowed), Some(origin)) = (allowed_origins, h.origin) {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if !allowed.contains(&origin) {
            return Err(Reply::error(403, "origin not allowed").closing());
        }
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The permessage-deflate agreement for this upgrade: `COMPRESSION` is on and the client
/// offered the extension on terms that need no per-connection state (`deflate::negotiate`).
pub fn deflate(req: &Request<'_>, compression: bool) -> Option<Agreement> {
    if !compression {
        return None;
    }
    deflate::negotiate(req.headers.ws_extensions?)
}

pub fn switching_protocols(accept: &str, deflate: Option<Agreement>) -> Bytes {
    let extensions = deflate.map_or_else(String::new, |agreement| {
        format!("Sec-WebSocket-Extensions: {}\r\n", agreement.response())
    });
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nServer: herald\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{Headers, Method};

    fn upgrade(headers: Headers<'static>) -> Request<'static> {
        Request {
            method: Method::Get,
            path: "/ws",
            query: "",
            keep_alive: true,
            headers,
            body: b"",
        }
    }

    fn good() -> Headers<'static> {
        Headers {
            upgrade: Some("websocket"),
            connection_upgrade: true,
            ws_key: Some("dGhlIHNhbXBsZSBub25jZQ=="),
            ws_version: Some("13"),
            ..Headers::default()
        }
    }

    #[test]
    fn should_derive_the_rfc_example_accept_key() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key(&upgrade(good()), None).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn should_refuse_bad_upgrades_with_their_status() {
        let status = |h: Headers<'static>| accept_key(&upgrade(h), None).unwrap_err().status;
        assert_eq!(
            status(Headers {
                upgrade: None,
                ..good()
            }),
            426
        );
        assert_eq!(
            status(Headers {
                ws_version: Some("8"),
                ..good()
            }),
            426
        );
        assert_eq!(
            status(Headers {
                connection_upgrade: false,
                ..good()
            }),
            400
        );
        assert_eq!(
            status(Headers {
                ws_key: None,
                ..good()
            }),
            400
        );
        assert_eq!(
            status(Headers {
                ws_key: Some("c2hvcnQ="),
                ..good()
            }),
            400
        );
    }

    #[test]
    fn should_check_origin_only_when_configured() {
        let allowed = vec!["https://app.example".to_string()];
        let from = |origin| {
            upgrade(Headers {
                origin: Some(origin),
                ..good()
            })
        };
        assert!(accept_key(&from("https://app.example"), Some(&allowed)).is_ok());
        assert!(accept_key(&from("https://APP.example/"), Some(&allowed)).is_ok());
        assert_eq!(
            accept_key(&from("https://evil.example"), Some(&allowed))
                .unwrap_err()
                .status,
            403
        );
        assert!(accept_key(&from("https://evil.example"), None).is_ok());
        assert!(accept_key(&upgrade(good()), Some(&allowed)).is_ok());
    }
}
