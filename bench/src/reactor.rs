//! The single-threaded mio event loop shared by the client pool and the
//! publisher. One `turn` = one `epoll_wait` plus dispatch. Paced publishing
//! wakes up through a timerfd, so schedules hold to microseconds rather than
//! epoll's millisecond timeout.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::pool::ClientPool;
use crate::publisher::Publisher;

/// Publisher tokens start here (client tokens are `0..N`).
pub const PUB_BASE: usize = 1 << 30;
const TIMER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// A monotonic one-shot timerfd.
struct TimerFd {
    fd: OwnedFd,
    armed: Option<Instant>,
}

impl TimerFd {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TimerFd {
            // SAFETY: fd is a fresh, valid descriptor.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: None,
        })
    }

    fn arm(&mut self, at: Instant, now: Instant) {
        if self.armed == Some(at) {
            return;
        }
        let d = at
            .saturating_duration_since(now)
            .max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: valid fd and spec.
        unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        self.armed = Some(at);
    }

    fn fired(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a local buffer.
        unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        self.armed = None;
    }
}

/// Poll + optional client pool + optional publisher.
pub struct Reactor {
    poll: Poll,
    events: Events,
    timer: TimerFd,
    pub pool: Option<ClientPool>,
    pub publisher: Option<Publisher>,
}

impl Reactor {
    pub fn new() -> io::Result<Self> {
        let poll = Poll::new()?;
        let timer = TimerFd::new()?;
        poll.registry().register(
            &mut SourceFd(&timer.fd.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(Reactor {
            poll,
            events: Events::with_capacity(1024),
            timer,
            pool: None,
            publisher: None,
        })
    }

    /// A waker that interrupts `turn` (used by the worker's stdin thread).
    pub fn waker(&self) -> io::Result<Arc<Waker>> {
        Ok(Arc::new(Waker::new(self.poll.registry(), WAKER)?))
    }

    /// Opens the publisher's connections.
    pub fn connect_publisher(&mut self) {
        if let Some(p) = self.publisher.as_mut() {
            p.connect(self.poll.registry());
        }
    }

    /// Ramp: keeps `target` clients of the pool open (see
    /// [`ClientPool::follow`]).
    pub fn follow_ramp(&mut self, target: u64) {
        let registry = self.poll.registry();
        if let Some(p) = self.pool.as_mut() {
            p.follow(registry, target, Instant::now());
        }
    }

    /// Ends the client pool's run (see [`ClientPool::finish`]).
    pub fn finish_pool(&mut self) -> Option<crate::stats::PoolStats> {
        let registry = self.poll.registry();
        self.pool.as_mut().map(|p| p.finish(registry))
    }

    /// One wait (at most `max_wait`) and dispatch of what is ready.
    pub fn turn(&mut self, max_wait: Duration) -> io::Result<()> {
        let now = Instant::now();
        if let Some(p) = self.pool.as_mut() {
            p.tick(self.poll.registry(), now); // start connects before waiting
        }
        let mut timeout = max_wait;
        if self.pool.as_ref().is_some_and(|p| p.has_backlog()) {
            timeout = Duration::ZERO;
        }
        if let Some(d) = self.publisher.as_ref().and_then(|p| p.next_deadline(now)) {
            if d <= now {
                timeout = Duration::ZERO;
            } else if d - now < timeout {
                self.timer.arm(d, now);
            }
        }
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let registry = self.poll.registry();
        for ev in self.events.iter() {
            match ev.token() {
                TIMER => self.timer.fired(),
                WAKER => {}
                Token(t) if t >= PUB_BASE => {
                    if let Some(p) = self.publisher.as_mut() {
                        p.handle(t, ev);
                        // Issue the next request before serving the clients,
                        // so the server is not left waiting for it.
                        p.pump(Instant::now());
                    }
                }
                Token(t) => {
                    if let Some(p) = self.pool.as_mut() {
                        p.handle(registry, t, ev);
                    }
                }
            }
        }
        let now = Instant::now();
        if let Some(p) = self.pool.as_mut() {
            p.tick(registry, now);
        }
        if let Some(p) = self.publisher.as_mut() {
            p.reconnect_dead(registry);
            p.pump(now);
        }
        Ok(())
    }
}
