//! Accepting, socket plumbing only: this reactor's listener (one per reactor on one port,
//! SO_REUSEPORT) and the pause after the process ran out of file descriptors. Whether a new
//! connection is admitted is the reactor's to decide (`Process::admit`).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

/// After EMFILE and the like, accept again this much later instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning about a paused accept per this long.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// What one accept gave.
#[derive(Debug)]
pub(super) enum Accept {
    Connection(TcpStream, SocketAddr),
    /// One would-be connection failed (ECONNABORTED and friends): go on accepting.
    Failed,
    /// Nothing more now: the backlog is empty, accepts are paused, or the listener is closed.
    Done,
    /// Out of file descriptors (or memory): the connection stays in the backlog and accepts
    /// pause for `ACCEPT_BACKOFF` (mio is edge-triggered: no new event would come for it).
    Exhausted,
}

#[derive(Debug)]
pub(super) struct Acceptor {
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    paused_until: Option<Instant>,
    last_warning: Option<Instant>,
}

impl Acceptor {
    /// Takes `listener` (made non-blocking) and registers it with `token`.
    pub(super) fn new(
        listener: std::net::TcpListener,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Acceptor> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let local_addr = listener.local_addr()?;
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Acceptor {
            listener: Some(listener),
            local_addr,
            paused_until: None,
            last_warning: None,
        })
    }

    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next connection, if there is one to take now.
    pub(super) fn accept(&mut self, now: Instant) -> Accept {
        let Some(listener) = self.listener.as_ref() else {
            return Accept::Done;
        };
        if self.paused_until.is_some() {
            return Accept::Done;
        }
        loop {
            return match listener.accept() {
                Ok((stream, peer)) => Accept::Connection(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accept::Done,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    if self
                        .last_warning
                        .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
                    {
                        warn!(
                            "accept failed ({e}); pausing accepts, still serving open connections"
                        );
                        self.last_warning = Some(now);
                    }
                    self.paused_until = Some(now + ACCEPT_BACKOFF);
                    Accept::Exhausted
                }
                Err(e) => {
                    debug!("accept: {e}");
                    Accept::Failed
                }
            };
        }
    }

    /// When accepts paused by `Exhausted` may go on.
    pub(super) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Ends a pause that is over; true if accepting may go on now.
    pub(super) fn resume_if_due(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|at| now >= at) {
            self.paused_until = None;
            return true;
        }
        false
    }

    /// Stops accepting for good: the listener is closed (shutdown).
    pub(super) fn close(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
    }
}

/// Errors that concern the process (descriptors, memory), not one would-be connection.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(errno::EMFILE | errno::ENFILE | errno::ENOBUFS | errno::ENOMEM)
    )
}

/// errno values (Linux), without pulling in the libc crate for four constants.
mod errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}
