//! The many-channels case (`--channels N`): which channel each client joins,
//! which channel each event goes to, and how many deliveries that implies.
//!
//! With `N > 0`, client `i` (global index, across worker processes) joins
//! `ch<i % N>` and event `e` is published to `ch<e % N>`. A client on
//! channel `c` must receive exactly the events `e ≡ c (mod N)`; within the
//! channel they are numbered `e / N`, which is what its tracker checks for
//! loss, duplicates and order. `N = 0` means off: every client is on the
//! server's default channel and receives every event.

/// Channel of client `index` (`None` when channels are off).
pub fn of_client(index: u64, channels: u64) -> Option<u64> {
    (channels > 0).then(|| index % channels)
}

/// Channel of event `seq` (`None` when channels are off).
pub fn of_event(seq: u64, channels: u64) -> Option<u64> {
    (channels > 0).then(|| seq % channels)
}

/// The channel's name on the server: `ch<c>`.
pub fn name(c: u64) -> String {
    format!("ch{c}")
}

/// WebSocket path for a client on channel `c`: `path?channels=ch<c>` (or
/// `&channels=` when the path already has a query).
pub fn ws_path(path: &str, c: u64) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}channels={}", name(c))
}

/// Events out of `events` that go to channel `c` (all of them when off).
pub fn events_on(c: Option<u64>, channels: u64, events: u64) -> u64 {
    match c {
        Some(c) if channels > 0 => events / channels + u64::from(c < events % channels),
        _ => events,
    }
}

/// Clients out of `clients` that join channel `c` (all of them when off).
pub fn clients_on(c: Option<u64>, channels: u64, clients: u64) -> u64 {
    events_on(c, channels, clients) // the same round robin
}

/// What a client on channel `own` makes of event `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mine {
    /// Its event, numbered `k` within the channel (0, 1, 2, ...).
    Yes(u64),
    /// Another channel's event: the server routed it wrongly.
    OtherChannel,
    /// Not an event of this run (`seq >= events`).
    OutOfRange,
}

/// Classifies event `seq` for a client on channel `own` (`None`: channels off).
pub fn classify(seq: u64, own: Option<u64>, channels: u64, events: u64) -> Mine {
    if seq >= events {
        return Mine::OutOfRange;
    }
    match own {
        Some(c) if channels > 0 => {
            if seq % channels == c {
                Mine::Yes(seq / channels)
            } else {
                Mine::OtherChannel
            }
        }
        _ => Mine::Yes(seq),
    }
}

/// Deliveries expected when all `clients` are connected: the sum over
/// channels of (clients on it) x (events on it); `clients x events` when off.
pub fn expected_deliveries(clients: u64, channels: u64, events: u64) -> u64 {
    if channels == 0 {
        return clients * events;
    }
    // Bounded by the channel count; only channels with both clients and
    // events contribute, i.e. the first min(clients, events, N) ones.
    (0..channels.min(clients).min(events))
        .map(|c| clients_on(Some(c), channels, clients) * events_on(Some(c), channels, events))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment() {
        assert_eq!(of_client(7, 0), None);
        assert_eq!(of_event(7, 0), None);
        assert_eq!(of_client(0, 3), Some(0));
        assert_eq!(of_client(7, 3), Some(1));
        assert_eq!(of_event(1002, 1000), Some(2));
        assert_eq!(name(42), "ch42");
        assert_eq!(ws_path("/ws", 5), "/ws?channels=ch5");
        assert_eq!(ws_path("/ws?x=1", 5), "/ws?x=1&channels=ch5");
    }

    #[test]
    fn counts_per_channel() {
        assert_eq!(events_on(None, 0, 7), 7);
        // 10 events over 4 channels: 3, 3, 2, 2.
        let per: Vec<u64> = (0..4).map(|c| events_on(Some(c), 4, 10)).collect();
        assert_eq!(per, [3, 3, 2, 2]);
        // More channels than events: the tail gets none.
        assert_eq!(events_on(Some(5), 8, 3), 0);
        assert_eq!(clients_on(Some(0), 1000, 10_000), 10);
    }

    #[test]
    fn classification() {
        // 4 channels, 10 events; client on channel 1 owns 1, 5, 9.
        assert_eq!(classify(1, Some(1), 4, 10), Mine::Yes(0));
        assert_eq!(classify(5, Some(1), 4, 10), Mine::Yes(1));
        assert_eq!(classify(9, Some(1), 4, 10), Mine::Yes(2));
        assert_eq!(classify(2, Some(1), 4, 10), Mine::OtherChannel);
        assert_eq!(classify(13, Some(1), 4, 10), Mine::OutOfRange);
        assert_eq!(classify(3, None, 0, 10), Mine::Yes(3));
        assert_eq!(classify(10, None, 0, 10), Mine::OutOfRange);
        // The in-channel numbers of a channel's events are exactly 0..events_on.
        for c in 0..4 {
            let ks: Vec<u64> = (0..10)
                .filter_map(|e| match classify(e, Some(c), 4, 10) {
                    Mine::Yes(k) => Some(k),
                    _ => None,
                })
                .collect();
            let n = events_on(Some(c), 4, 10);
            assert_eq!(ks, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn expected_delivery_arithmetic() {
        assert_eq!(expected_deliveries(10_000, 0, 2), 20_000);
        // The channels.sh comparison: both sides are 20,000 deliveries.
        assert_eq!(expected_deliveries(10_000, 1000, 2000), 20_000);
        assert_eq!(expected_deliveries(10_000, 1, 2), 20_000);
        // Uneven: 10 clients (3,3,2,2) and 10 events (3,3,2,2) over 4 channels.
        assert_eq!(expected_deliveries(10, 4, 10), 9 + 9 + 4 + 4);
        // Channels without clients or without events add nothing.
        assert_eq!(expected_deliveries(2, 8, 100), 13 + 13);
        assert_eq!(expected_deliveries(100, 8, 2), 13 + 13);
        assert_eq!(expected_deliveries(0, 8, 100), 0);
        // Brute force agrees.
        for (cl, n, ev) in [(7u64, 3u64, 11u64), (5, 9, 4), (12, 12, 12), (1, 1, 1)] {
            let brute: u64 = (0..cl)
                .map(|i| {
                    (0..ev)
                        .filter(|&e| of_event(e, n) == of_client(i, n))
                        .count() as u64
                })
                .sum();
            assert_eq!(expected_deliveries(cl, n, ev), brute, "{cl} {n} {ev}");
        }
    }
}
