//! The event: what a publisher sends and every subscriber receives, and its id.
//!
//! An event is encoded to JSON exactly once, where it enters the server. The wire shape keeps
//! the tutorial's `{"type": ..., "message": ...}` and adds `"id"` (for recovery after a
//! reconnect) and `"channel"`. The id always comes first, so a relay can read it from the
//! front of the bytes without parsing the rest (`peek_id`), and Redis can prepend it
//! (`with_id`) to the JSON it stores in its stream.
//!
//! Messages other programs publish on Herald's Redis channels are relayed only if they have the
//! shape of an event (`inspect`): a JSON object with `type` and `message` strings and no `op`,
//! the field by which clients tell Herald's own notices (`subscribed`, `reset`...) from events.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// An event id: `<milliseconds>-<sequence>`, the format of Redis stream ids, ordered by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// As its text form, written straight into the JSON (no `String` per event).
impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl FromStr for EventId {
    type Err = ();

    /// `ms-seq`, or a bare `ms` (sequence 0), digits only.
    fn from_str(s: &str) -> Result<EventId, ()> {
        let digits = |p: &str| {
            if p.is_empty() || p.len() > 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
                Err(())
            } else {
                p.parse::<u64>().map_err(|_| ())
            }
        };
        match s.split_once('-') {
            Some((ms, seq)) => Ok(EventId {
                ms: digits(ms)?,
                seq: digits(seq)?,
            }),
            None => Ok(EventId {
                ms: digits(s)?,
                seq: 0,
            }),
        }
    }
}

impl EventId {
    /// The next id after `last` at wall-clock time `now_ms`: time-based, strictly increasing
    /// even if the clock stalls or steps back (what Redis does for `XADD *`).
    pub fn next(last: EventId, now_ms: u64) -> EventId {
        if now_ms > last.ms {
            EventId { ms: now_ms, seq: 0 }
        } else {
            EventId {
                ms: last.ms,
                seq: last.seq + 1,
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub channel: String,
}

#[derive(Serialize)]
struct WithId<'a> {
    id: EventId,
    #[serde(flatten)]
    event: &'a Event,
}

impl Event {
    /// The event as JSON, encoded once and then shared by every delivery.
    pub fn to_json(&self, id: Option<EventId>) -> Vec<u8> {
        let encoded = match id {
            Some(id) => serde_json::to_vec(&WithId { id, event: self }),
            None => serde_json::to_vec(self),
        };
        encoded.expect("bug: an Event of strings always serializes")
    }
}

/// Prepends `"id"` to a JSON object: `{"a":1}` becomes `{"id":"5-0","a":1}`. The same splice
/// runs in Redis's publish script, so both produce identical bytes.
pub fn with_id(json: &[u8], id: &str) -> Vec<u8> {
    let rest = json.strip_prefix(b"{").unwrap_or(json);
    let mut out = Vec::with_capacity(json.len() + id.len() + 8);
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\"");
    if rest != b"}" {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// The id at the front of an event's JSON (`{"id":"..."`), if it has one there. Messages other
/// publishers put on the channel may have none: they are relayed, but cannot be replayed.
pub fn peek_id(json: &[u8]) -> Option<EventId> {
    let rest = json.strip_prefix(b"{\"id\":\"")?;
    let end = rest.iter().take(48).position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Why a payload from Redis is not relayed as an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotAnEvent {
    #[error("not a JSON object with \"type\" and \"message\" strings")]
    Shape,
    #[error("it has an \"op\" field, which clients read as a notice from Herald")]
    ControlField,
}

/// What relaying a payload needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// Its `type`, for the SSE `event:` line.
    pub kind: String,
    /// It has an `"id"` member (trusted or not is for the caller to judge).
    pub has_id: bool,
}

/// Checks a payload has the shape of an event (see the module doc). One parse; strings are
/// borrowed where they have no escapes.
pub fn inspect(payload: &[u8]) -> Result<Inspected, NotAnEvent> {
    use std::borrow::Cow;
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow)]
        #[allow(dead_code)]
        message: Cow<'a, str>,
        #[serde(default)]
        op: Present,
        #[serde(default)]
        id: Present,
    }
    // A derived struct would also take a JSON array, field by field.
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return Err(NotAnEvent::Shape);
    }
    let shape: Shape = serde_json::from_slice(payload).map_err(|_| NotAnEvent::Shape)?;
    if shape.op.0 {
        return Err(NotAnEvent::ControlField);
    }
    Ok(Inspected {
        kind: shape.kind.into_owned(),
        has_id: shape.id.0,
    })
}

/// Whether a member is there, whatever its value (`null` included: `Option` would read a
/// present `"op": null` as absent).
#[derive(Default)]
struct Present(bool);

impl<'de> serde::Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Present, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Event {
        Event {
            kind: "order".into(),
            message: "Order #123 \"placed\"".into(),
            channel: "events".into(),
        }
    }

    #[test]
    fn should_encode_the_tutorials_fields_with_id_first() {
        assert_eq!(
            String::from_utf8(order().to_json(None)).unwrap(),
            r#"{"type":"order","message":"Order #123 \"placed\"","channel":"events"}"#
        );
        let id = EventId { ms: 17, seq: 2 };
        let with = order().to_json(Some(id));
        assert!(with.starts_with(br#"{"id":"17-2","type":"order""#));
        assert_eq!(with, with_id(&order().to_json(None), "17-2"));
        assert_eq!(peek_id(&with), Some(id));
    }

    #[test]
    fn should_parse_order_and_advance_ids() {
        let a: EventId = "1700000000000-0".parse().unwrap();
        let b: EventId = "1700000000000-11".parse().unwrap();
        assert!(a < b);
        assert_eq!("42".parse::<EventId>(), Ok(EventId { ms: 42, seq: 0 }));
        for bad in [
            "",
            "-",
            "1-",
            "x-1",
            "1-2-3",
            "+1-0",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad}");
        }
        assert_eq!(EventId::next(b, 5), EventId { ms: b.ms, seq: 12 });
        assert_eq!(
            EventId::next(b, b.ms + 1),
            EventId {
                ms: b.ms + 1,
                seq: 0
            }
        );
    }

    #[test]
    fn should_only_peek_an_id_at_the_front() {
        assert_eq!(peek_id(br#"{"type":"x","id":"1-0"}"#), None);
        assert_eq!(peek_id(br#"{"id":"nope"}"#), None);
        assert_eq!(with_id(b"{}", "1-0"), br#"{"id":"1-0"}"#);
    }

    #[test]
    fn should_relay_only_payloads_shaped_like_events() {
        let ok = inspect(br#"{"type":"x","message":"y","extra":[1,{"a":null}]}"#).unwrap();
        assert_eq!(ok.kind, "x");
        assert!(!ok.has_id);
        let with_id = inspect(br#"{"id":"9999999999999-0","type":"x\n","message":""}"#).unwrap();
        assert!(with_id.has_id);
        assert_eq!(with_id.kind, "x\n");
        for (bad, why) in [
            (&br#"hello"#[..], NotAnEvent::Shape),
            (br#"["type","message"]"#, NotAnEvent::Shape),
            (br#"{"type":"x"}"#, NotAnEvent::Shape),
            (br#"{"type":1,"message":"y"}"#, NotAnEvent::Shape),
            (br#"{"type":"x","message":{"nested":1}}"#, NotAnEvent::Shape),
            (br#"{"type":"x","message":"y"} trailing"#, NotAnEvent::Shape),
            (
                br#"{"op":"reset","type":"x","message":"y"}"#,
                NotAnEvent::ControlField,
            ),
            (
                br#"{"type":"x","message":"y","op":null}"#,
                NotAnEvent::ControlField,
            ),
        ] {
            assert_eq!(inspect(bad), Err(why), "{}", String::from_utf8_lossy(bad));
        }
    }
}
