//! What became of each publish, and the answers built from it: one publish's reply, or one
//! reply for a group of them (the channels of `"channels"`, the events of a batch) once every
//! member has its outcome. Plain data and pure functions: `publishing.rs` records outcomes as
//! they come (at once when embedded, as Redis replies arrive otherwise) and sends the reply.
//!
//! Honest by construction: a group's answer says `published: true` only if every channel
//! went out; otherwise its status is the worst failure's (a `504` with `"outcome":"unknown"`
//! if any publish may or may not have run), and each result says what became of its channel,
//! so a retry with the same idempotency key publishes only what is missing.

use serde::Serialize;
use serde_json::json;

use crate::event::EventId;
use crate::http::reply::Reply;

/// What became of one publish to one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Published {
        id: EventId,
        receivers: i64,
        /// An earlier publish with the same idempotency key got `id`; nothing went out now.
        duplicate: bool,
    },
    Failed {
        status: u16,
        error: String,
        /// The publish was sent and the link failed: Redis may or may not have run it.
        unknown: bool,
    },
}

impl Outcome {
    pub fn failed(status: u16, error: impl Into<String>) -> Outcome {
        Outcome::Failed {
            status,
            error: error.into(),
            unknown: false,
        }
    }

    /// A refusal reply (`{"error":...}`) as the outcome of one member of a group.
    pub fn from_reply(reply: &Reply) -> Outcome {
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        let error = body["error"].as_str().unwrap_or("refused");
        Outcome::failed(reply.status, error)
    }

    fn status(&self) -> u16 {
        match self {
            Outcome::Published { .. } => 200,
            Outcome::Failed { status, .. } => *status,
        }
    }
}

/// One member of a group: what it was (absent for a batch item that was not an event) and
/// what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        match self {
            Outcome::Published {
                id,
                receivers,
                duplicate,
            } => {
                map.serialize_entry("published", &true)?;
                map.serialize_entry("id", id)?;
                map.serialize_entry("receivers", receivers)?;
                if *duplicate {
                    map.serialize_entry("duplicate", &true)?;
                }
            }
            Outcome::Failed {
                status,
                error,
                unknown,
            } => {
                map.serialize_entry("published", &false)?;
                map.serialize_entry("status", status)?;
                map.serialize_entry("error", error)?;
                if *unknown {
                    map.serialize_entry("outcome", "unknown")?;
                }
            }
        }
        map.end()
    }
}

/// The reply to a single publish: `{"published":true,"type","channel","id","receivers"}` (with
/// `"duplicate":true` for a duplicate), or the failure's status and error.
pub fn single_reply(kind: &str, channel: &str, outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Published {
            id,
            receivers,
            duplicate,
        } => {
            let mut body = json!({
                "published": true, "type": kind, "channel": channel, "id": id,
                "receivers": receivers,
            });
            if duplicate {
                body["duplicate"] = json!(true);
            }
            Reply::json(200, &body)
        }
        Outcome::Failed {
            status,
            error,
            unknown: true,
        } => Reply::json(status, &json!({ "error": error, "outcome": "unknown" })),
        Outcome::Failed { status, error, .. } => Reply::error(status, &error),
    }
}

/// What kind of request a group answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One event to the channels a publish named: `200` only if all went out.
    Channels,
    /// `POST /events/batch`: `200` with one result per event, each its own verdict.
    Batch,
}

/// Publishes answered together, for one request. Members are filled in as their outcomes
/// arrive; the reply goes once none is missing.
#[derive(Debug)]
pub struct Group {
    pub key: usize,
    pub serial: u32,
    pub keep_alive: bool,
    shape: Shape,
    /// The event's type, for `Shape::Channels` (the same for every member).
    kind: Option<String>,
    members: Vec<Option<Member>>,
    missing: usize,
}

impl Group {
    pub fn new(
        (key, serial, keep_alive): (usize, u32, bool),
        shape: Shape,
        kind: Option<String>,
        len: usize,
    ) -> Group {
        Group {
            key,
            serial,
            keep_alive,
            shape,
            kind,
            members: vec![None; len],
            missing: len,
        }
    }

    /// Records a member's outcome; true once every member has one.
    pub fn record(&mut self, index: usize, member: Member) -> bool {
        if let Some(slot) = self.members.get_mut(index)
            && slot.is_none()
        {
            *slot = Some(member);
            self.missing -= 1;
        }
        self.missing == 0
    }

    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    /// The reply, once complete. Channels: `{"published":bool,"type":..,"results":[..]}`,
    /// 200 only if every channel went out, else the worst failure's status. Batch:
    /// `{"ok":n,"failed":n,"results":[..]}`, 200.
    pub fn reply(self) -> Reply {
        let kind = self.kind;
        let members: Vec<Member> = self.members.into_iter().flatten().collect();
        let failed = members
            .iter()
            .filter(|m| matches!(m.outcome, Outcome::Failed { .. }))
            .count();
        match self.shape {
            Shape::Channels => {
                let status = members
                    .iter()
                    .map(|m| m.outcome.status())
                    .max()
                    .unwrap_or(200);
                let results: Vec<serde_json::Value> = members
                    .iter()
                    .map(|m| {
                        let mut item = json!({ "channel": m.channel });
                        merge(&mut item, json!(m.outcome));
                        item
                    })
                    .collect();
                Reply::json(
                    status,
                    &json!({ "published": failed == 0, "type": kind, "results": results }),
                )
            }
            Shape::Batch => Reply::json(
                200,
                &json!({ "ok": members.len() - failed, "failed": failed, "results": members }),
            ),
        }
    }
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(into), serde_json::Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(ms: u64) -> Outcome {
        Outcome::Published {
            id: EventId { ms, seq: 0 },
            receivers: 1,
            duplicate: false,
        }
    }

    fn member(channel: &str, outcome: Outcome) -> Member {
        Member {
            kind: Some("t".into()),
            channel: Some(channel.into()),
            outcome,
        }
    }

    fn body(reply: &Reply) -> serde_json::Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    #[test]
    fn should_answer_a_group_only_when_complete_and_never_falsely_succeed() {
        let mut group = Group::new((0, 0, true), Shape::Channels, Some("t".into()), 2);
        assert!(!group.record(1, member("b", published(2))));
        let unknown = Outcome::Failed {
            status: 504,
            error: "redis timeout".into(),
            unknown: true,
        };
        assert!(group.record(0, member("a", unknown)));
        let reply = group.reply();
        assert_eq!(reply.status, 504);
        let body = body(&reply);
        assert_eq!(body["published"], false);
        assert_eq!(body["results"][0]["channel"], "a");
        assert_eq!(body["results"][0]["outcome"], "unknown");
        assert_eq!(body["results"][1]["id"], "2-0");

        let mut all = Group::new((0, 0, true), Shape::Channels, Some("t".into()), 1);
        all.record(0, member("a", published(1)));
        assert_eq!(all.reply().status, 200);
    }

    #[test]
    fn should_answer_a_batch_with_one_result_per_event() {
        let mut group = Group::new((0, 0, true), Shape::Batch, None, 2);
        group.record(0, member("a", published(1)));
        let bad = Member {
            kind: None,
            channel: None,
            outcome: Outcome::failed(422, "missing type"),
        };
        group.record(1, bad);
        let reply = group.reply();
        assert_eq!(reply.status, 200);
        let body = body(&reply);
        assert_eq!(
            (body["ok"].as_u64(), body["failed"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(body["results"][0]["type"], "t");
        assert_eq!(body["results"][0]["published"], true);
        assert_eq!(body["results"][1]["status"], 422);
        assert!(body["results"][1].get("channel").is_none());
    }
}
