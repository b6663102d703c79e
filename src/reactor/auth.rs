//! Auth on live connections, the reactor's side: the grant each subscriber holds (kept in
//! `GrantTable`, not in `Conn`), the subscribe check of control messages, `{"op":"refresh"}`,
//! and the close of connections whose token expired, found by the once-a-second sweep.
//! Every refusal is counted by reason and logged (rate-limited) with the token's `sub`,
//! never the token.

use serde_json::json;

use super::Reactor;
use crate::auth::{Denial, Grant, Refusal, unix_now};
use crate::conn::{CloseReason, Phase};

use crate::ws::frame::{self, close_code};

/// What an expired WebSocket is told in its close frame (1008, policy violation).
pub const EXPIRED_CLOSE_REASON: &str = "token expired";

impl Reactor {
    /// Counts a refusal by reason and logs it, at most one line per reason per interval.
    pub(super) fn record_denial(&mut self, key: usize, denial: &Denial) {
        self.metrics.auth_refused(denial.refusal.label());
        self.warn_peer(key, denial.refusal.label(), &denial.describe());
    }

    /// A new subscriber keeps its grant for later subscriptions and its expiry.
    pub(super) fn hold_grant(&mut self, key: usize, grant: Option<Grant>) {
        if let Some(grant) = grant {
            self.grants.attach(key, grant);
        }
    }

    /// May this connection receive `channel`? Always with auth off.
    pub(super) fn may_subscribe(&self, key: usize, channel: &str) -> bool {
        let Some(auth) = &self.config.auth else {
            return true;
        };
        auth.is_public(channel)
            || self
                .grants
                .get(key)
                .is_some_and(|g| g.may_subscribe(channel))
    }

    /// A `subscribe` for a channel the token does not cover: an error message, and the
    /// connection stays open for the channels it may have.
    pub(super) fn refuse_subscription(&mut self, key: usize, channel: &str) {
        let denial = Denial {
            refusal: match self.grants.get(key) {
                Some(_) => Refusal::Channel,
                None => Refusal::Missing,
            },
            sub: self.grants.get(key).map(|g| g.sub().into()),
            channels: vec![channel.to_string()],
        };
        self.record_denial(key, &denial);
        self.send_notice(
            key,
            json!({ "op": "error", "error": "forbidden", "channel": channel }),
        );
    }

    pub(super) fn refuse_refresh(&mut self, key: usize, denial: &Denial) {
        self.record_denial(key, denial);
        let refusal = denial.refusal;
        self.send_notice(
            key,
            json!({ "op": "error", "error": refusal.message(), "reason": refusal.label() }),
        );
    }

    /// The sweep's look at expiry: each connection whose token expired is closed, a
    /// WebSocket with 1008 `token expired`, an SSE stream by ending it. Walks only the
    /// connections that hold a grant.
    pub(super) fn close_expired_grants(&mut self) {
        if self.grants.is_empty() {
            return;
        }
        let mut expired = Vec::new();
        self.grants.expired(unix_now(), &mut expired);
        for key in expired {
            let sub = self.grants.get(key).map(|g| g.sub().to_string());
            self.grants.detach(key);
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            match conn.phase() {
                Phase::WebSocket => {
                    let close = frame::close(close_code::POLICY_VIOLATION, EXPIRED_CLOSE_REASON);
                    conn.queue(key, close, &mut self.outbox);
                }
                Phase::Sse => {}
                _ => continue,
            }
            self.begin_closing(key);
            self.metrics.closed(CloseReason::TokenExpired);
            let message = format!(
                "token of sub {:?} expired: closed",
                sub.as_deref().unwrap_or("-")
            );
            self.warnings.log(
                log::Level::Info,
                CloseReason::TokenExpired.label(),
                &message,
            );
        }
    }
}
