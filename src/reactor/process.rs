//! What the reactors of one process share: the connection limits, the shutdown stage, what
//! each reactor last reported for `/metrics` and `/health`, and (embedded) the hub. Touched on
//! accept, close, signal and once a second: never per delivery.
//!
//! With `--threads 1` there is one reactor and all of this is uncontended.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use mio::Waker;

use super::per_ip::ConnectionsPerIp;
use crate::broker;
use crate::config::Config;
use crate::history::HistoryLimits;
use crate::hub::Hub;
use crate::metrics::{Gauges, Metrics};

/// Where the process is in its life; every reactor follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Serving = 0,
    /// SIGTERM came: serve on with `/health` at 503 for `DRAIN_SECS`.
    Draining = 1,
    /// Close every client (1001) and exit within the grace time.
    Closing = 2,
}

/// A reactor's counters and gauges as of its last report (once a second).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub metrics: Metrics,
    pub gauges: Gauges,
}

#[derive(Debug)]
pub struct Process {
    reactors: usize,
    hub: Option<Arc<Hub>>,
    connections: AtomicUsize,
    max_connections: usize,
    /// Channels with subscribers, summed over the reactors (`MAX_SUBSCRIBED_CHANNELS`): each
    /// reactor's fan-out entry for a channel counts once.
    subscribed_channels: AtomicUsize,
    /// `MAX_CONNECTIONS_PER_IP`, over every reactor; `None` when off (nothing counted).
    per_ip: Option<Mutex<ConnectionsPerIp>>,
    stage: AtomicU8,
    wakers: Box<[OnceLock<Arc<Waker>>]>,
    reports: Mutex<Vec<Report>>,
}

impl Process {
    pub fn new(config: &Config) -> Process {
        let reactors = config.threads.max(1);
        let hub = config.redis.is_none().then(|| {
            let history = HistoryLimits {
                events_per_channel: config.history_len,
                max_bytes: config.history_max_bytes,
                max_channels: config.max_channels,
                ttl_ms: config.history_ttl.map(|ttl| ttl.as_millis() as u64),
            };
            Arc::new(Hub::new(
                reactors,
                history,
                config.idempotency,
                config.inbox,
                broker::now_ms(),
            ))
        });
        let per_ip_limit = config.limits.max_connections_per_ip;
        Process {
            reactors,
            hub,
            connections: AtomicUsize::new(0),
            max_connections: config.limits.max_connections,
            subscribed_channels: AtomicUsize::new(0),
            per_ip: (per_ip_limit > 0).then(|| Mutex::new(ConnectionsPerIp::new(per_ip_limit))),
            stage: AtomicU8::new(Stage::Serving as u8),
            wakers: (0..reactors).map(|_| OnceLock::new()).collect(),
            reports: Mutex::new(vec![Report::default(); reactors]),
        }
    }

    pub fn reactors(&self) -> usize {
        self.reactors
    }

    /// The embedded broker; `None` with Redis (each reactor then has its own links).
    pub fn hub(&self) -> Option<Arc<Hub>> {
        self.hub.clone()
    }

    /// Reactor `index` is ready: it is woken through `waker` for the hub and the stage.
    pub fn attach(&self, index: usize, waker: Arc<Waker>) {
        if let Some(hub) = &self.hub {
            hub.attach(index, waker.clone());
        }
        let _ = self.wakers[index].set(waker);
    }

    // ---- connections ------------------------------------------------------------------------

    /// Counts a new connection from `ip` on reactor `reactor` (slot `key`), unless the process
    /// is at `MAX_CONNECTIONS` or the address at `MAX_CONNECTIONS_PER_IP`.
    pub fn admit(&self, reactor: usize, key: usize, ip: IpAddr) -> Result<(), Refusal> {
        let admitted = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(Refusal::AtConnectionLimit);
        }
        if let Some(per_ip) = &self.per_ip {
            let mut per_ip = lock(per_ip);
            if !per_ip.admits(ip) {
                drop(per_ip);
                self.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIpLimit);
            }
            per_ip.opened((reactor, key), ip);
        }
        Ok(())
    }

    /// The connection in slot `key` of reactor `reactor` is gone.
    pub fn release(&self, reactor: usize, key: usize) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
        if let Some(per_ip) = &self.per_ip {
            lock(per_ip).closed((reactor, key));
        }
    }

    /// Open connections over every reactor.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// A reactor's fan-out gained (`true`) or lost a channel.
    pub fn count_channel(&self, opened: bool) {
        if opened {
            self.subscribed_channels.fetch_add(1, Ordering::AcqRel);
        } else {
            self.subscribed_channels.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Fan-out channels over every reactor. Checked before a reactor opens one: reactors
    /// racing at the cap can pass it together, by at most one channel each.
    pub fn subscribed_channels(&self) -> usize {
        self.subscribed_channels.load(Ordering::Acquire)
    }

    pub fn per_ip_limit(&self) -> usize {
        self.per_ip.as_ref().map_or(0, |p| lock(p).limit())
    }

    // ---- shutdown ---------------------------------------------------------------------------

    /// SIGTERM or SIGINT: one stage further (serving -> draining -> closing), every reactor
    /// woken to follow. A second signal thus skips the rest of the drain.
    pub fn signal(&self, drain: bool) {
        let _ = self
            .stage
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |stage| {
                let next = if stage == Stage::Serving as u8 && drain {
                    Stage::Draining
                } else {
                    Stage::Closing
                };
                Some(next as u8)
            });
        self.wake_all();
    }

    /// A reactor's drain time is over: every reactor closes.
    pub fn close(&self) {
        if self.stage.swap(Stage::Closing as u8, Ordering::AcqRel) != Stage::Closing as u8 {
            self.wake_all();
        }
    }

    pub fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Acquire) {
            0 => Stage::Serving,
            1 => Stage::Draining,
            _ => Stage::Closing,
        }
    }

    fn wake_all(&self) {
        for waker in self.wakers.iter().filter_map(OnceLock::get) {
            let _ = waker.wake();
        }
    }

    // ---- reports ----------------------------------------------------------------------------

    /// Reactor `index`'s counters and gauges, for the others' `/metrics` and `/health`.
    pub fn report(&self, index: usize, report: Report) {
        lock(&self.reports)[index] = report;
    }

    /// Every reactor's last report, with `index`'s replaced by its live `own`.
    pub fn reports_with(&self, index: usize, own: Report) -> Vec<Report> {
        let mut reports = lock(&self.reports).clone();
        reports[index] = own;
        reports
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AtConnectionLimit,
    PerIpLimit,
}

/// A reactor that panicked holding a lock left a complete state behind (each update is a few
/// plain assignments): serve on with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(threads: usize, max_connections: usize, per_ip: usize) -> Process {
        let mut config = Config::local(0);
        config.threads = threads;
        config.limits.max_connections = max_connections;
        config.limits.max_connections_per_ip = per_ip;
        Process::new(&config)
    }

    #[test]
    fn should_hold_the_connection_limit_over_every_reactor() {
        let process = process(2, 2, 0);
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(process.admit(0, 0, ip), Ok(()));
        assert_eq!(process.admit(1, 0, ip), Ok(()));
        assert_eq!(process.admit(1, 1, ip), Err(Refusal::AtConnectionLimit));
        process.release(0, 0);
        assert_eq!(process.admit(1, 1, ip), Ok(()));
        assert_eq!(process.connections(), 2);
    }

    #[test]
    fn should_count_an_address_over_every_reactor_and_give_back_a_refused_slot() {
        let process = process(2, 10, 1);
        let ip = IpAddr::from([127, 0, 0, 2]);
        assert_eq!(process.admit(0, 5, ip), Ok(()));
        assert_eq!(process.admit(1, 5, ip), Err(Refusal::PerIpLimit));
        assert_eq!(process.connections(), 1);
        process.release(0, 5);
        assert_eq!(process.admit(1, 5, ip), Ok(()));
    }

    #[test]
    fn should_go_from_draining_to_closing_on_a_second_signal() {
        let process = process(1, 10, 0);
        process.signal(true);
        assert_eq!(process.stage(), Stage::Draining);
        process.signal(true);
        assert_eq!(process.stage(), Stage::Closing);
        let undrained = self::process(1, 10, 0);
        undrained.signal(false);
        assert_eq!(undrained.stage(), Stage::Closing);
    }
}
