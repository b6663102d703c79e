//! Open connections per source address, for `MAX_CONNECTIONS_PER_IP`: one address must not be
//! able to take every slot of `MAX_CONNECTIONS`. Off by default (load tests and proxies come
//! from few addresses); when off, nothing is counted or stored.
//!
//! One table for every reactor of the process (`Process` holds it under a lock, touched on
//! accept and close only). Counted on accept, uncounted when the connection's slot is freed
//! (`reap`). The address is kept per connection (reactor and slab key), not read back from the socket at the end: `getpeername` fails on a
//! connection the peer reset, and a count that is never given back would lock the address out.

use std::collections::HashMap;
use std::net::IpAddr;

/// A connection: its reactor and its slab key there.
pub(super) type ConnRef = (usize, usize);

#[derive(Debug, Default)]
pub(super) struct ConnectionsPerIp {
    /// 0: no limit.
    limit: usize,
    open: HashMap<IpAddr, usize>,
    address_of: HashMap<ConnRef, IpAddr>,
}

impl ConnectionsPerIp {
    pub(super) fn new(limit: usize) -> ConnectionsPerIp {
        ConnectionsPerIp {
            limit,
            ..ConnectionsPerIp::default()
        }
    }

    /// Whether one more connection from `ip` is allowed.
    pub(super) fn admits(&self, ip: IpAddr) -> bool {
        self.limit == 0 || self.open.get(&ip).copied().unwrap_or(0) < self.limit
    }

    /// The connection `conn` came from `ip`.
    pub(super) fn opened(&mut self, conn: ConnRef, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        *self.open.entry(ip).or_default() += 1;
        self.address_of.insert(conn, ip);
    }

    /// The connection `conn` was freed.
    pub(super) fn closed(&mut self, conn: ConnRef) {
        let Some(ip) = self.address_of.remove(&conn) else {
            return;
        };
        if let Some(count) = self.open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.open.remove(&ip);
            }
        }
    }

    pub(super) fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_count_each_address_apart_and_give_slots_back() {
        let a = IpAddr::from([127, 0, 0, 1]);
        let b = IpAddr::from([127, 0, 0, 2]);
        let mut per_ip = ConnectionsPerIp::new(2);
        per_ip.opened((0, 1), a);
        per_ip.opened((1, 1), a);
        assert!(!per_ip.admits(a));
        assert!(per_ip.admits(b));
        per_ip.closed((0, 1));
        assert!(per_ip.admits(a));
        per_ip.closed((1, 1));
        per_ip.closed((1, 1)); // a slot freed twice gives back nothing more
        assert!(per_ip.open.is_empty() && per_ip.address_of.is_empty());
    }

    #[test]
    fn should_keep_nothing_when_off() {
        let mut off = ConnectionsPerIp::new(0);
        for key in 0..100 {
            off.opened((0, key), IpAddr::from([127, 0, 0, 1]));
        }
        assert!(off.admits(IpAddr::from([127, 0, 0, 1])));
        assert!(off.address_of.is_empty());
    }
}
