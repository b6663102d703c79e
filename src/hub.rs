//! The hub: the embedded broker, shared by every reactor of the process. It is where an event
//! gets its id and its place in the history, and how it reaches every reactor.
//!
//! One lock guards the sequencer, the history, the idempotency keys and the subscriber counts;
//! a publish takes it once, and so does a history read. While holding it, the publish hands
//! the event (one `Arc`, its JSON encoded once) to every reactor's inbox, its own included:
//! inboxes therefore receive events in id order, and each reactor delivers in that one order.
//! The frames built from the JSON (WebSocket, compressed, Server-Sent Events) are built once
//! in total, by the first reactor that needs each kind, and shared (`SharedEvent`).
//!
//! Nothing here is on the per-delivery path: a reactor takes its whole inbox at once, and
//! each delivery inside a reactor is the same cheap non-atomic handle as with one reactor.
//!
//! An inbox is capped (`INBOX_MAX_EVENTS`, `INBOX_MAX_BYTES` of event JSON): a reactor stuck
//! in a long turn, or starved of CPU, while the others keep publishing would otherwise make
//! it grow without bound. Past a cap the hub stops queuing for that reactor and only notes
//! the overrun (`Overrun`): the last id it queued, the newest it dropped, and which channels
//! lost events. Every dropped event is in the history, so the reactor, when it next takes
//! its inbox, delivers them from there (`take_inbox`, `read_dropped`), or tells the
//! channel's subscribers to reset where the history no longer covers the gap. Ids are global
//! and increasing, so the two ids say exactly what was dropped: after `after`, up to `until`.
//! The inbox and its overrun are taken together, under one lock (`take_inbox`): taken apart,
//! events queued in between (before an overrun that began in between) would come after the
//! events the overrun recovers, out of order, and a second overrun would start below the
//! first one's end and deliver its events again.
//! The others are woken (their `mio::Waker`) by the publishing reactor once per turn, before
//! it flushes (`wake_others`), not once per event: a reactor woken per event would take its
//! inbox one event at a time and write each subscriber once per event, where one reactor
//! writes a turn's events together (measured: 1.6x the CPU per delivery in a burst).
//!
//! With one reactor this is the same broker as before, behind a lock nobody else takes.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use mio::Waker;

use crate::event::{Event, EventId};
use crate::history::{Evictions, History, HistoryLimits, Page, PageSize, TooOld};
use crate::idempotency::{IdempotencyLimits, IdempotencyStore};

/// An event on its way to every reactor: its JSON (id inside), encoded once, and its frames,
/// each built once by whichever reactor first needs it.
#[derive(Debug)]
pub struct SharedEvent {
    pub channel: Box<str>,
    pub id: EventId,
    pub json: Bytes,
    ws: OnceLock<Bytes>,
    ws_deflated: OnceLock<Option<Bytes>>,
    sse: OnceLock<Bytes>,
}

impl SharedEvent {
    fn new(channel: &str, id: EventId, json: Bytes) -> SharedEvent {
        SharedEvent {
            channel: channel.into(),
            id,
            json,
            ws: OnceLock::new(),
            ws_deflated: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    /// The WebSocket text frame, built by `build` the first time any reactor asks.
    pub fn ws_frame(&self, build: impl FnOnce(&[u8]) -> Bytes) -> Bytes {
        self.ws.get_or_init(|| build(&self.json)).clone()
    }

    /// The compressed frame, if the event compresses (`build` returns `None` otherwise).
    pub fn ws_deflated(&self, build: impl FnOnce(&[u8]) -> Option<Bytes>) -> Option<Bytes> {
        self.ws_deflated.get_or_init(|| build(&self.json)).clone()
    }

    /// The Server-Sent Events record.
    pub fn sse_record(&self, build: impl FnOnce(&[u8]) -> Bytes) -> Bytes {
        self.sse.get_or_init(|| build(&self.json)).clone()
    }
}

/// What became of a publish.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Stored and handed to every reactor: `receivers` clients were subscribed to the channel
    /// in the whole process when it got its id.
    Sequenced { id: EventId, receivers: usize },
    /// The idempotency key was used within the window: the first publish's id; nothing sent.
    Duplicate(EventId),
}

/// How much one reactor's inbox may hold before the hub stops queuing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxLimits {
    /// Events (`INBOX_MAX_EVENTS`).
    pub max_events: usize,
    /// Bytes of event JSON (`INBOX_MAX_BYTES`).
    pub max_bytes: usize,
}

impl Default for InboxLimits {
    /// As many events, and bytes, as a Redis-mode reactor may hold waiting on Redis
    /// (`MAX_PENDING_PUBLISHES`, `MAX_PENDING_BYTES`).
    fn default() -> Self {
        InboxLimits {
            max_events: 10_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Which cap an inbox reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxCap {
    Events,
    Bytes,
}

/// Events the hub did not queue for a reactor whose inbox was full. They are all in the
/// history (unless it has let them go since): ids after `after`, up to `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overrun {
    /// The newest id queued before the overrun: the reactor had, or has, everything up to it.
    pub after: EventId,
    /// The newest id dropped: everything after it is queued again.
    pub until: EventId,
    /// How many events were dropped.
    pub dropped: u64,
    pub cap: InboxCap,
    /// The channels that lost events; `None` when they were more than an inbox may hold
    /// events (then every channel the reactor has subscribers on must be read).
    pub channels: Option<HashSet<Box<str>>>,
}

impl Overrun {
    /// Notes one more dropped event. The channel set is bounded by `max_channels`: past it,
    /// the set is let go for "every channel", so an overrun holds no more names than an inbox
    /// holds events.
    fn dropped(&mut self, event: &SharedEvent, max_channels: usize) {
        self.until = event.id;
        self.dropped += 1;
        if let Some(channels) = &mut self.channels
            && !channels.contains(&event.channel)
        {
            if channels.len() >= max_channels {
                self.channels = None;
            } else {
                channels.insert(event.channel.clone());
            }
        }
    }
}

/// One reactor's mailbox.
#[derive(Debug, Default)]
struct Inbox {
    mail: Mutex<Mail>,
    waker: OnceLock<Arc<Waker>>,
}

#[derive(Debug, Default)]
struct Mail {
    events: Vec<Arc<SharedEvent>>,
    /// JSON bytes of `events` (`INBOX_MAX_BYTES`).
    bytes: usize,
    /// Set when an event did not fit: from then on nothing is queued until the reactor takes
    /// its inbox, so what it gets from the history and what it finds in its inbox afterwards
    /// meet exactly at `until`.
    overrun: Option<Overrun>,
    /// A wake-up is on its way and the events are not taken yet: no need for another.
    woken: bool,
    /// The reactor has stopped: nothing is kept for it any more (it would never be taken).
    closed: bool,
}

impl Mail {
    /// Queues `event`, unless the inbox is over a cap or already overrun: then the event is
    /// only noted as dropped. One event always fits an empty inbox (whatever its size: a
    /// publish is bounded by `MAX_BODY_BYTES`), so an overrun always starts after an id the
    /// reactor was given.
    fn offer(&mut self, event: &Arc<SharedEvent>, limits: InboxLimits) {
        if self.closed {
            return;
        }
        if let Some(overrun) = &mut self.overrun {
            return overrun.dropped(event, limits.max_events);
        }
        let cap = match self.events.last() {
            None => None,
            Some(_) if self.events.len() >= limits.max_events => Some(InboxCap::Events),
            Some(_) if self.bytes + event.json.len() > limits.max_bytes => Some(InboxCap::Bytes),
            Some(_) => None,
        };
        match (cap, self.events.last()) {
            (Some(cap), Some(last)) => {
                let mut overrun = Overrun {
                    after: last.id,
                    until: event.id,
                    dropped: 0,
                    cap,
                    channels: Some(HashSet::new()),
                };
                overrun.dropped(event, limits.max_events);
                self.overrun = Some(overrun);
            }
            _ => {
                self.bytes += event.json.len();
                self.events.push(event.clone());
            }
        }
    }
}

#[derive(Debug)]
struct State {
    history: History,
    idempotency: IdempotencyStore,
    /// Clients subscribed per channel, over every reactor (a channel leaves at zero); in
    /// name order, for `GET /channels` pages.
    subscribers: BTreeMap<Box<str>, usize>,
}

#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    inboxes: Box<[Inbox]>,
    inbox_limits: InboxLimits,
}

impl Inbox {
    fn mail(&self) -> MutexGuard<'_, Mail> {
        self.mail.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Hub {
    pub fn new(
        reactors: usize,
        history: HistoryLimits,
        idempotency: IdempotencyLimits,
        inbox_limits: InboxLimits,
        now_ms: u64,
    ) -> Hub {
        Hub {
            state: Mutex::new(State {
                history: History::with_limits(history, now_ms),
                idempotency: IdempotencyStore::new(idempotency),
                subscribers: BTreeMap::new(),
            }),
            inboxes: (0..reactors.max(1)).map(|_| Inbox::default()).collect(),
            inbox_limits,
        }
    }

    /// Reactor `index` is woken through `waker` when its inbox gets events.
    pub fn attach(&self, index: usize, waker: Arc<Waker>) {
        let _ = self.inboxes[index].waker.set(waker);
    }

    /// Publishes `event`: the id, the history, the idempotency key, and every reactor's
    /// inbox, all under one lock, so that ids and inboxes agree on one order. The publishing
    /// reactor takes its own inbox at once and wakes the others with `wake_others`.
    pub fn publish(&self, event: &Event, idempotency_key: Option<&str>, now_ms: u64) -> Accepted {
        let mut state = self.lock();
        if let Some(key) = idempotency_key
            && let Some(id) = state.idempotency.lookup(&event.channel, key, now_ms)
        {
            return Accepted::Duplicate(id);
        }
        let id = state.history.next_id(now_ms);
        let mut json = event.to_json(Some(id));
        // Exactly its length: the history counts what it holds by length.
        json.shrink_to_fit();
        let json = Bytes::from(json);
        state.history.push(&event.channel, id, json.clone());
        if let Some(key) = idempotency_key {
            state.idempotency.remember(&event.channel, key, id, now_ms);
        }
        let receivers = state
            .subscribers
            .get(event.channel.as_str())
            .copied()
            .unwrap_or(0);
        let shared = Arc::new(SharedEvent::new(&event.channel, id, json));
        for inbox in self.inboxes.iter() {
            inbox.mail().offer(&shared, self.inbox_limits);
        }
        Accepted::Sequenced { id, receivers }
    }

    /// Wakes every reactor but `from` that has events waiting and no wake-up on its way.
    pub fn wake_others(&self, from: usize) {
        for (index, inbox) in self.inboxes.iter().enumerate() {
            if index == from {
                continue;
            }
            let mut mail = inbox.mail();
            if mail.events.is_empty() || mail.woken {
                continue;
            }
            mail.woken = true;
            drop(mail);
            if let Some(waker) = inbox.waker.get() {
                let _ = waker.wake();
            }
        }
    }

    /// Everything published since the last call, for reactor `index`, oldest first, and, if
    /// the inbox overran meanwhile, what the hub dropped after the last of those events (to
    /// deliver next, from the history); queuing starts again with the next event. `spare`
    /// (emptied) becomes the new inbox, so neither side reallocates turn after turn.
    pub fn take_inbox(
        &self,
        index: usize,
        spare: Vec<Arc<SharedEvent>>,
    ) -> (Vec<Arc<SharedEvent>>, Option<Overrun>) {
        let mut mail = self.inboxes[index].mail();
        mail.woken = false;
        mail.bytes = 0;
        let events = std::mem::replace(&mut mail.events, spare);
        (events, mail.overrun.take())
    }

    /// A page of the events `overrun` dropped on `channel`, after `since` (`overrun.after`
    /// first, then the last id of the previous page): none newer than `overrun.until`,
    /// which the inbox brings. `TooOld` if the history has let some of them go.
    pub fn read_dropped(
        &self,
        channel: &str,
        overrun: &Overrun,
        since: EventId,
        size: PageSize,
    ) -> Result<Page, TooOld> {
        let mut page = self.read_history(channel, Some(since), size)?;
        if let Some(newer) = page.events.iter().position(|e| e.id > overrun.until) {
            page.events.truncate(newer);
            page.more = false;
        }
        Ok(page)
    }

    /// Reactor `index` has stopped (shutdown done, or it failed): its inbox is dropped and
    /// stays empty, so the others serving on through their grace time hold nothing for it.
    pub fn close_inbox(&self, index: usize) {
        let mut mail = self.inboxes[index].mail();
        mail.closed = true;
        mail.events = Vec::new();
        mail.bytes = 0;
        mail.overrun = None;
    }

    /// A page of `channel`'s history after `since` (see `History::read`).
    pub fn read_history(
        &self,
        channel: &str,
        since: Option<EventId>,
        size: PageSize,
    ) -> Result<Page, TooOld> {
        self.lock().history.read(channel, since, size)
    }

    /// A client joined (`true`) or left (`false`) `channel` on some reactor.
    pub fn count_subscriber(&self, channel: &str, joined: bool) {
        let mut state = self.lock();
        if joined {
            *state.subscribers.entry(channel.into()).or_default() += 1;
        } else if let Some(count) = state.subscribers.get_mut(channel) {
            *count -= 1;
            if *count == 0 {
                state.subscribers.remove(channel);
            }
        }
    }

    /// Clients subscribed to `channel`, over every reactor.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.lock().subscribers.get(channel).copied().unwrap_or(0)
    }

    /// Clients subscribed to each of `channels`, over every reactor, under one lock.
    pub fn subscribers_of<'a>(&self, channels: impl Iterator<Item = &'a str>) -> Vec<usize> {
        let state = self.lock();
        channels
            .map(|c| state.subscribers.get(c).copied().unwrap_or(0))
            .collect()
    }

    /// Up to `limit` channels with subscribers after `after`, in name order, with their
    /// counts over every reactor, and the name to continue after if more may follow.
    pub fn subscriber_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<(String, usize)>, Option<String>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let state = self.lock();
        let lower = after.map_or(Unbounded, Excluded);
        let mut range = state.subscribers.range::<str, _>((lower, Unbounded));
        let page: Vec<(String, usize)> = range
            .by_ref()
            .take(limit)
            .map(|(name, &n)| (name.to_string(), n))
            .collect();
        let next = range
            .next()
            .and_then(|_| page.last().map(|(name, _)| name.clone()));
        (page, next)
    }

    /// The once-a-second expiry of history and idempotency keys (one reactor does it).
    pub fn sweep(&self, now_ms: u64) {
        let mut state = self.lock();
        state.history.sweep(now_ms);
        state.idempotency.sweep(now_ms);
    }

    /// Caps hit since the last call: history evictions and idempotency keys forgotten early.
    pub fn take_evictions(&self) -> (Evictions, u64) {
        let mut state = self.lock();
        let history = state.history.take_evictions();
        (history, state.idempotency.take_evictions())
    }

    /// For `/metrics`: history (bytes, channels) and idempotency (keys, bytes).
    pub fn gauges(&self) -> ((usize, usize), (usize, usize)) {
        let state = self.lock();
        (
            (state.history.bytes(), state.history.channels()),
            (state.idempotency.len(), state.idempotency.bytes()),
        )
    }

    /// Whether idempotency keys are remembered (`IDEMPOTENCY_WINDOW_SECS` > 0).
    pub fn remembers_keys(&self) -> bool {
        self.lock().idempotency.is_on()
    }

    /// Whether reactor `index` has events waiting (it is told by a wake-up; this is for tests).
    #[cfg(test)]
    fn has_mail(&self, index: usize) -> bool {
        !self.inboxes[index].mail().events.is_empty()
    }

    /// A reactor that panicked while holding the lock left the state as its last complete
    /// step made it (every step is a few plain assignments): serve on with it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(reactors: usize) -> Hub {
        hub_with(reactors, InboxLimits::default())
    }

    fn hub_with(reactors: usize, inbox: InboxLimits) -> Hub {
        let history = HistoryLimits {
            events_per_channel: 10,
            max_bytes: 1 << 20,
            max_channels: 100,
            ttl_ms: None,
        };
        let idempotency = IdempotencyLimits {
            window_ms: Some(60_000),
            max_keys: 100,
            max_bytes: 1 << 20,
        };
        Hub::new(reactors, history, idempotency, inbox, 1_000)
    }

    fn event(channel: &str, message: &str) -> Event {
        Event {
            channel: channel.into(),
            kind: "t".into(),
            message: message.into(),
        }
    }

    fn ids(events: &[Arc<SharedEvent>]) -> Vec<EventId> {
        events.iter().map(|e| e.id).collect()
    }

    /// Reactor `index`'s inbox, as ids, and its overrun.
    fn take(hub: &Hub, index: usize) -> (Vec<EventId>, Option<Overrun>) {
        let (events, overrun) = hub.take_inbox(index, Vec::new());
        (ids(&events), overrun)
    }

    #[test]
    fn should_hand_every_reactor_every_event_in_one_order() {
        let hub = hub(3);
        let mut published = Vec::new();
        for n in 0..4 {
            match hub.publish(&event(["a", "b"][n % 2], "m"), None, 2_000) {
                Accepted::Sequenced { id, .. } => published.push(id),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(published.windows(2).all(|w| w[0] < w[1]));
        hub.wake_others(0); // no wakers attached: marks, wakes nothing
        assert!(hub.has_mail(1) && hub.has_mail(2));
        for reactor in 0..3 {
            assert_eq!(take(&hub, reactor), (published.clone(), None));
            assert_eq!(take(&hub, reactor), (vec![], None));
        }
        let page = hub.read_history("a", None, PageSize::events(10)).unwrap();
        assert_eq!(page.events.len(), 2);
        assert_eq!(page.events[0].id, published[0]);
    }

    #[test]
    fn should_answer_a_retried_key_with_the_first_id_and_send_nothing() {
        let hub = hub(2);
        let Accepted::Sequenced { id, .. } = hub.publish(&event("a", "x"), Some("k"), 2_000) else {
            panic!("first publish");
        };
        assert_eq!(
            hub.publish(&event("a", "x"), Some("k"), 2_001),
            Accepted::Duplicate(id)
        );
        assert_eq!(take(&hub, 1).0.len(), 1);
    }

    #[test]
    fn should_keep_nothing_for_a_reactor_that_stopped() {
        let hub = hub(2);
        hub.publish(&event("a", "x"), None, 2_000);
        hub.close_inbox(1);
        hub.publish(&event("a", "y"), None, 2_001);
        assert!(!hub.has_mail(1));
        assert_eq!(take(&hub, 0).0.len(), 2);
    }

    #[test]
    fn should_count_subscribers_over_every_reactor() {
        let hub = hub(2);
        hub.count_subscriber("a", true);
        hub.count_subscriber("a", true);
        let Accepted::Sequenced { receivers, .. } = hub.publish(&event("a", "x"), None, 2_000)
        else {
            panic!("publish");
        };
        assert_eq!(receivers, 2);
        hub.count_subscriber("b", true);
        hub.count_subscriber("c", true);
        let (page, next) = hub.subscriber_page(None, 2);
        assert_eq!(page, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
        assert_eq!(next.as_deref(), Some("b"));
        let (page, next) = hub.subscriber_page(next.as_deref(), 2);
        assert_eq!((page, next), (vec![("c".to_string(), 1)], None));
        assert_eq!(hub.subscribers_of(["a", "x"].into_iter()), vec![2, 0]);
        for channel in ["a", "a", "b", "c"] {
            hub.count_subscriber(channel, false);
        }
        assert_eq!(hub.subscribers("a"), 0);
        assert!(hub.lock().subscribers.is_empty());
    }

    fn published(hub: &Hub, channel: &str, message: &str) -> EventId {
        match hub.publish(&event(channel, message), None, 2_000) {
            Accepted::Sequenced { id, .. } => id,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn page_ids(page: &Page) -> Vec<EventId> {
        page.events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn should_stop_queuing_past_the_count_cap_and_say_exactly_what_was_dropped() {
        let hub = hub_with(
            2,
            InboxLimits {
                max_events: 3,
                max_bytes: 1 << 20,
            },
        );
        let sent: Vec<EventId> = ["a", "b", "c", "a", "a", "b"]
            .iter()
            .map(|c| published(&hub, c, "m"))
            .collect();
        let (queued, overrun) = take(&hub, 1);
        assert_eq!(queued, sent[..3]);
        let overrun = overrun.expect("overrun");
        assert_eq!((overrun.after, overrun.until), (sent[2], sent[5]));
        assert_eq!((overrun.dropped, overrun.cap), (3, InboxCap::Events));
        let mut channels: Vec<&str> = overrun.channels.iter().flatten().map(|c| &**c).collect();
        channels.sort();
        assert_eq!(channels, ["a", "b"]);
        // Queuing again, right after `until`.
        let next = published(&hub, "a", "m");
        assert_eq!(take(&hub, 1), (vec![next], None));
        // The history has the gap, and the read stops at `until` though `next` is newer.
        let size = PageSize::events(10);
        let page = hub
            .read_dropped("a", &overrun, overrun.after, size)
            .unwrap();
        assert_eq!(
            (page_ids(&page), page.more),
            (vec![sent[3], sent[4]], false)
        );
        let page = hub
            .read_dropped("a", &overrun, overrun.after, PageSize::events(1))
            .unwrap();
        assert_eq!((page_ids(&page), page.more), (vec![sent[3]], true));
        let page = hub.read_dropped("a", &overrun, sent[3], size).unwrap();
        assert_eq!(page_ids(&page), [sent[4]]);
        let page = hub
            .read_dropped("b", &overrun, overrun.after, size)
            .unwrap();
        assert_eq!(page_ids(&page), [sent[5]]);
    }

    #[test]
    fn should_take_an_overrun_with_the_inbox_it_follows_so_no_event_comes_twice() {
        // A reactor delivering its inbox (a long turn) while the others publish: an overrun
        // that begins meanwhile follows the events queued meanwhile, and the next inbox
        // follows the overrun. Each event is in exactly one of them, in id order.
        let hub = hub_with(
            2,
            InboxLimits {
                max_events: 2,
                max_bytes: 1 << 20,
            },
        );
        let mut delivered = Vec::new();
        let recovered = |hub: &Hub, overrun: &Overrun| {
            let page = hub
                .read_dropped("a", overrun, overrun.after, PageSize::events(100))
                .unwrap();
            page_ids(&page)
        };
        for round in 0..4 {
            for _ in 0..=round {
                published(&hub, "a", "m");
            }
            let (queued, overrun) = take(&hub, 1);
            delivered.extend(queued);
            if let Some(overrun) = overrun {
                assert_eq!(Some(&overrun.after), delivered.last());
                delivered.extend(recovered(&hub, &overrun));
            }
        }
        let page = hub.read_history("a", None, PageSize::events(100)).unwrap();
        assert_eq!(delivered, page_ids(&page), "each once, in order");
    }

    #[test]
    fn should_take_one_event_of_any_size_then_stop_at_the_byte_cap() {
        let hub = hub_with(
            2,
            InboxLimits {
                max_events: 100,
                max_bytes: 10,
            },
        );
        let first = published(&hub, "a", "larger than ten bytes");
        let second = published(&hub, "a", "x");
        let (queued, overrun) = take(&hub, 1);
        assert_eq!(queued, [first]);
        let overrun = overrun.expect("overrun");
        assert_eq!(
            (overrun.after, overrun.until, overrun.cap),
            (first, second, InboxCap::Bytes)
        );
        // The byte count starts again with the inbox.
        let third = published(&hub, "a", "x");
        assert_eq!(take(&hub, 1), (vec![third], None));
    }

    #[test]
    fn should_forget_which_channels_when_more_than_an_inbox_holds() {
        let hub = hub_with(
            2,
            InboxLimits {
                max_events: 2,
                max_bytes: 1 << 20,
            },
        );
        for channel in ["a", "b", "c", "d"] {
            published(&hub, channel, "m");
        }
        let overrun = take(&hub, 1).1.expect("overrun");
        assert_eq!(overrun.channels.map(|c| c.len()), Some(2));
        for channel in ["a", "b", "c", "d", "e"] {
            published(&hub, channel, "m");
        }
        let overrun = take(&hub, 1).1.expect("overrun");
        assert_eq!((overrun.dropped, overrun.channels), (3, None));
    }

    #[test]
    fn should_refuse_to_read_a_gap_the_history_no_longer_covers() {
        // HISTORY_LEN is 10 here: 12 events on "a" rotate the first two out.
        let hub = hub_with(
            2,
            InboxLimits {
                max_events: 1,
                max_bytes: 1 << 20,
            },
        );
        for n in 0..12 {
            published(&hub, "a", &n.to_string());
        }
        let overrun = take(&hub, 1).1.expect("overrun");
        assert_eq!(overrun.dropped, 11);
        assert!(
            hub.read_dropped("a", &overrun, overrun.after, PageSize::events(100))
                .is_err()
        );
    }

    #[test]
    fn should_keep_nothing_once_a_reactor_that_overran_stopped() {
        let hub = hub_with(
            2,
            InboxLimits {
                max_events: 1,
                max_bytes: 1 << 20,
            },
        );
        published(&hub, "a", "m");
        published(&hub, "a", "m");
        hub.close_inbox(1);
        published(&hub, "a", "m");
        assert_eq!(take(&hub, 1), (vec![], None));
    }

    #[test]
    fn should_build_each_frame_once_whoever_asks() {
        let shared = SharedEvent::new("a", EventId::default(), Bytes::from_static(b"{}"));
        let mut builds = 0;
        for _ in 0..3 {
            shared.ws_frame(|json| {
                builds += 1;
                Bytes::copy_from_slice(json)
            });
        }
        assert_eq!(builds, 1);
    }
}
