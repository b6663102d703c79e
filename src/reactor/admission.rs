//! Whether work may wait on Redis now: the coordinator's caps (`MAX_PENDING_PUBLISHES`,
//! `MAX_PENDING_BYTES`, `MAX_PENDING_READS`) asked, a refusal counted and logged once per
//! interval. Embedded, nothing waits and nothing is refused here.

use super::Reactor;
use crate::event::Event;

impl Reactor {
    /// With Redis: why a publish cannot wait for it now (too many, or too many bytes, already
    /// waiting), counted and logged once per interval; `None` if it may go ahead.
    pub(super) fn refuse_publish(&mut self, key: usize, event: &Event) -> Option<String> {
        if !self.broker.waits() {
            return None;
        }
        let refusal = self.redis_work.admit_publish(event).err()?;
        self.metrics.limit_hit(refusal.limit());
        let warning = format!("publish refused (503): {refusal}");
        self.warn_peer(key, refusal.limit(), &warning);
        Some(refusal.to_string())
    }

    /// With Redis: why a history read cannot wait for it now (`MAX_PENDING_READS` reached),
    /// counted and logged once per interval; `None` if it may go ahead.
    pub(super) fn refuse_read(&mut self) -> Option<String> {
        if !self.broker.waits() {
            return None;
        }
        let refusal = self.redis_work.admit_read().err()?;
        self.metrics.limit_hit(refusal.limit());
        self.warnings
            .warn(refusal.limit(), &format!("history read refused: {refusal}"));
        Some(refusal.to_string())
    }
}
