//! Overrun, the reactor's side: the hub stopped queuing for this reactor because its inbox
//! reached a cap (`hub.rs` decides when, and records exactly what it dropped). Every dropped
//! event is in the history, so after taking its inbox the reactor reads, for each channel
//! that lost events and has subscribers here, the events after the overrun's start and up to
//! its end, and delivers them as the inbox would have, in each channel's one order; a
//! channel whose history no longer covers the gap gets the reset notice a Redis catch-up
//! sends. Nothing is lost silently: each overrun is counted
//! (`herald_limit_hits_total{limit="inbox_events"|"inbox_bytes"}`) and logged once per
//! interval.
//!
//! Pages are cut as a resume's are (`HISTORY_LEN` events, a quarter of `MAX_QUEUED_BYTES`):
//! the reactor holds one page at a time; what it queues on each subscriber is what the inbox
//! would have queued, under the same per-connection cap. The frames of recovered events are
//! built here, once per reactor rather than once per process: an overrun is the exception.

use std::sync::Arc;

use log::error;

use super::Reactor;
use crate::history::{PageSize, TooOld};
use crate::hub::{Hub, InboxCap, Overrun};
use crate::metrics::limit;

impl Reactor {
    /// Embedded: delivers from the history what the hub dropped for this reactor since its
    /// inbox overran, if it did (taken with the inbox: `Hub::take_inbox`). Called right
    /// after that inbox is delivered.
    pub(super) fn recover_overrun(&mut self, overrun: Option<Overrun>) {
        let (Some(overrun), Some(hub)) = (overrun, self.broker.hub()) else {
            return;
        };
        let hub = Arc::clone(hub);
        let (cap, setting, value) = match overrun.cap {
            InboxCap::Events => (
                limit::INBOX_EVENTS,
                "INBOX_MAX_EVENTS",
                self.config.inbox.max_events,
            ),
            InboxCap::Bytes => (
                limit::INBOX_BYTES,
                "INBOX_MAX_BYTES",
                self.config.inbox.max_bytes,
            ),
        };
        self.metrics.limit_hit(cap);
        // Received all the same, through the history.
        self.metrics.events_received += overrun.dropped;
        self.warnings.warn(
            cap,
            &format!(
                "reactor {}: inbox full ({setting} {value}): {} events published meanwhile are read back from the history (a channel it no longer covers gets a reset)",
                self.index, overrun.dropped
            ),
        );
        let channels: Vec<String> = match &overrun.channels {
            Some(lost) => lost
                .iter()
                .filter(|name| self.fanout.lookup(name).is_some())
                .map(|name| name.to_string())
                .collect(),
            None => self.fanout.names().map(str::to_string).collect(),
        };
        let size = PageSize {
            events: self.config.history_len,
            bytes: self.outbox.replay_page_bytes(),
        };
        for channel in channels {
            self.recover_channel(&hub, &overrun, &channel, size);
        }
    }

    /// Delivers `overrun`'s events of `channel`, page by page, or a reset notice from the
    /// last id delivered if the history has let some go.
    fn recover_channel(&mut self, hub: &Hub, overrun: &Overrun, channel: &str, size: PageSize) {
        let mut since = overrun.after;
        // Each page but the last brings at least one dropped event, and the channel's ring
        // never holds more than HISTORY_LEN (the newer events it gains are past `until`).
        for _ in 0..=self.config.history_len {
            match hub.read_dropped(channel, overrun, since, size) {
                Ok(page) => {
                    for stored in page.events {
                        since = stored.id;
                        self.broadcast(channel, Some(stored.id), &stored.json);
                    }
                    if !page.more {
                        return;
                    }
                }
                Err(TooOld { reason }) => return self.reset_channel(channel, since, reason),
            }
        }
        error!(
            "bug: channel {channel}: recovering an inbox overrun took more pages than HISTORY_LEN"
        );
        self.reset_channel(channel, since, "the history could not be read to the end");
    }
}
