//! Rate-limited warnings: a peer that misbehaves once per request (a refused publish during an
//! outage, a reconnect loop, a flood of bad frames) must cost one log line per interval, not a
//! line per request. The first occurrence of a kind is logged at once; later ones within the
//! interval are only counted, and the count is reported with the next line that gets through.
//!
//! One thread owns each `RateLog` (the reactor, a Redis link): no locks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often one kind of warning may reach the log.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Longest text of an error taken from a peer (Redis, a client) into a log line or `/health`.
pub const MAX_ERROR_TEXT: usize = 200;

#[derive(Debug, Default)]
pub struct RateLog {
    kinds: HashMap<&'static str, Window>,
}

#[derive(Debug)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

impl RateLog {
    /// Logs `message` at `level` unless a line of the same `kind` was logged less than
    /// `LOG_INTERVAL` ago; then it is only counted. Returns whether a line was written.
    pub fn log(&mut self, level: log::Level, kind: &'static str, message: &str) -> bool {
        self.log_at(Instant::now(), level, kind, message)
    }

    pub fn warn(&mut self, kind: &'static str, message: &str) -> bool {
        self.log(log::Level::Warn, kind, message)
    }

    fn log_at(
        &mut self,
        now: Instant,
        level: log::Level,
        kind: &'static str,
        message: &str,
    ) -> bool {
        match self.kinds.get_mut(kind) {
            Some(w) if now.duration_since(w.logged_at) < LOG_INTERVAL => {
                w.suppressed += 1;
                false
            }
            Some(w) => {
                let suppressed = std::mem::take(&mut w.suppressed);
                w.logged_at = now;
                if suppressed > 0 {
                    log::log!(
                        level,
                        "{message} ({suppressed} more like this in the last {}s)",
                        LOG_INTERVAL.as_secs()
                    );
                } else {
                    log::log!(level, "{message}");
                }
                true
            }
            None => {
                self.kinds.insert(
                    kind,
                    Window {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                log::log!(level, "{message}");
                true
            }
        }
    }
}

/// A peer's error text cut to `MAX_ERROR_TEXT` bytes (on a character boundary), so a peer
/// cannot fill the log or `/health` with one long message.
pub fn truncate_error(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_string();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_log_once_per_interval_per_kind() {
        let mut r = RateLog::default();
        let t0 = Instant::now();
        assert!(r.log_at(t0, log::Level::Warn, "a", "first"));
        assert!(!r.log_at(t0 + Duration::from_secs(1), log::Level::Warn, "a", "again"));
        assert!(r.log_at(t0, log::Level::Warn, "b", "other kind"));
        assert!(r.log_at(t0 + LOG_INTERVAL, log::Level::Warn, "a", "later"));
        assert_eq!(
            r.kinds["a"].suppressed, 0,
            "the count went out with the line"
        );
    }

    #[test]
    fn should_truncate_long_error_texts_on_a_char_boundary() {
        assert_eq!(truncate_error("short"), "short");
        let long = "é".repeat(300);
        let cut = truncate_error(&long);
        assert!(cut.len() < MAX_ERROR_TEXT + 30, "{}", cut.len());
        assert!(cut.ends_with("(600 bytes)"));
    }
}
