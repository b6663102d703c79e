//! The event: what a publisher sends and every subscriber receives.
//!
//! An event is encoded to JSON exactly once, where it enters the server. The wire shape is the
//! tutorial's, `{"type": ..., "message": ...}`, so Herald and the tutorial's app can share one
//! Redis channel during a migration.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

impl Event {
    /// The event as JSON bytes, encoded once and then shared by every delivery.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("bug: an Event of two strings always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_encode_the_tutorials_shape() {
        let event = Event {
            kind: "order".into(),
            message: "Order #123 \"placed\"".into(),
        };
        assert_eq!(
            String::from_utf8(event.to_json()).unwrap(),
            r#"{"type":"order","message":"Order #123 \"placed\""}"#
        );
    }
}
