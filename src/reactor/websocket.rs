//! WebSocket frames on a connection, the reactor's side: decode and act (pings, closes, echo,
//! control messages), close with the RFC code on a violation, and cut off subscribers that
//! stopped reading.

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::Reactor;
use crate::conn::{CloseReason, Phase};
use crate::metrics::limit;
use crate::ws::deflate::InflateError;
use crate::ws::frame::{self, Message, close_code};

impl Reactor {
    pub(super) fn process_frames(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let max = self.config.limits.max_message_bytes;
        let deflate = self.conns[key].deflate().is_some();
        let mut used = 0;
        if !buf.is_empty() {
            let now = self.clock();
            let conn = &mut self.conns[key];
            // Any traffic proves the peer alive: the next ping is due a full interval later.
            conn.heard_from_peer(now + self.config.limits.ping_interval_secs);
        }
        while self.conns[key].is_websocket() {
            if self.conns[key].backlog_bytes() > self.outbox.read_pause_bytes() {
                self.pause_input(key);
                break;
            }
            let (header, range, n) = match frame::decode_frame(&mut buf[used..], max, deflate) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(e) => {
                    self.close_websocket_for(key, &e);
                    return buf.len();
                }
            };
            let payload = &buf[used + range.start..used + range.end];
            let mut partial = self.conns[key].partial.take();
            let message = frame::assemble(&header, payload, &mut partial, max);
            self.conns[key].partial = partial;
            let message = match message {
                Ok(Some(Message::Compressed { text, data })) => self.inflate(key, text, &data),
                other => other,
            };
            match message {
                Ok(Some(message)) => self.on_message(key, message),
                Ok(None) => {}
                Err(e) => {
                    self.close_websocket_for(key, &e);
                    return buf.len();
                }
            }
            used += n;
        }
        used
    }

    /// A compressed message inflated, within `MAX_MESSAGE_BYTES` (the limit counts what it
    /// inflates to, and inflation stops the moment it is passed: no decompression bomb).
    fn inflate(
        &mut self,
        key: usize,
        text: bool,
        data: &[u8],
    ) -> Result<Option<Message<'static>>, frame::WsError> {
        let max = self.config.limits.max_message_bytes;
        match self.inflater.inflate(data, max) {
            Ok(inflated) => Message::inflated(text, inflated).map(Some),
            Err(InflateError::Corrupt) => Err(frame::WsError::BadCompressedData),
            Err(InflateError::TooBig) => {
                self.metrics.limit_hit(limit::INFLATED_BYTES);
                let warning = format!(
                    "compressed message of {} bytes inflates past MAX_MESSAGE_BYTES ({max}): closing 1009",
                    data.len()
                );
                self.warn_peer(key, limit::INFLATED_BYTES, &warning);
                Err(frame::WsError::TooBig(max))
            }
        }
    }

    /// The client is not reading what its messages produce: leave the rest of its input
    /// unparsed (it waits in `tail`, then in the kernel) until the backlog drains. If it
    /// makes no progress for a pong timeout, the sweep closes it as a slow consumer.
    fn pause_input(&mut self, key: usize) {
        let give_up_at = self.clock() + self.config.limits.pong_timeout_secs;
        if self.conns[key].pause_reading(give_up_at) {
            self.metrics.limit_hit(limit::READ_PAUSED);
        }
    }

    /// In Closing after our close frame: drop data frames, end at the peer's close frame.
    pub(super) fn await_close_frame(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let max = self.config.limits.max_message_bytes;
        let mut used = 0;
        loop {
            match frame::decode_frame(&mut buf[used..], max, true) {
                Ok(Some((header, _, n))) => {
                    used += n;
                    if header.opcode == OpCode::Control(Control::Close) {
                        self.peer_closed(key);
                        return buf.len();
                    }
                }
                Ok(None) => return used,
                // Garbage after our close: nothing more worth reading.
                Err(_) => {
                    self.peer_closed(key);
                    return buf.len();
                }
            }
        }
    }

    /// The peer sent its last word; close as soon as ours is flushed.
    pub(super) fn peer_closed(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.peer_said_goodbye();
        if conn.out.is_empty() {
            self.close_now(key, CloseReason::Done, "closed");
        }
    }

    pub(super) fn on_message(&mut self, key: usize, message: Message<'_>) {
        let conn = &mut self.conns[key];
        let echo = conn.phase() == Phase::Echo;
        match message {
            Message::Ping(data) => conn.queue(key, frame::pong(data), &mut self.outbox),
            Message::Pong => {}
            Message::Close(code, _) => {
                // RFC 6455 5.5.1: answer a close with a close, echoing its status code.
                let reply = frame::close(code.unwrap_or(close_code::NORMAL), "");
                conn.queue(key, reply, &mut self.outbox);
                // RFC 6455 7.1.1: the server closes the TCP connection first, right after.
                conn.peer_said_goodbye();
                self.begin_closing(key);
                self.metrics.closed(CloseReason::PeerClosed);
            }
            Message::Text(text) if echo => {
                self.echo(key, OpCode::Data(Data::Text), text.as_bytes())
            }
            Message::Binary(data) if echo => self.echo(key, OpCode::Data(Data::Binary), &data),
            Message::Text(text) => {
                let text = text.into_owned();
                self.on_control_message(key, &text);
            }
            // The feed speaks JSON text; binary messages are read and ignored.
            Message::Binary(_) => {}
            Message::Compressed { .. } => unreachable!("bug: inflated in process_frames"),
        }
    }

    /// The echo route sends a message back, compressed on the same terms as events when the
    /// connection negotiated permessage-deflate.
    fn echo(&mut self, key: usize, opcode: OpCode, payload: &[u8]) {
        let conn = &mut self.conns[key];
        let compressed = conn
            .deflate()
            .filter(|bits| {
                payload.len() >= self.config.compress_min_bytes && bits.fits(payload.len())
            })
            .and_then(|_| self.deflater.compress(payload));
        let frame = match compressed {
            Some(compressed) => frame::encode_compressed(opcode, compressed),
            None => frame::encode(opcode, payload),
        };
        conn.queue(key, frame, &mut self.outbox);
    }

    pub(super) fn close_websocket_for(&mut self, key: usize, error: &frame::WsError) {
        self.log_peer(
            key,
            log::Level::Info,
            &format!("closing WebSocket: {error}"),
        );
        self.metrics.closed(CloseReason::ProtocolError);
        let conn = &mut self.conns[key];
        conn.queue(
            key,
            frame::close(error.close_code(), &error.to_string()),
            &mut self.outbox,
        );
        self.begin_closing(key);
    }

    /// A subscriber whose backlog passed its cap: it stopped reading. Drop what it has not
    /// started receiving, tell it why, and let everyone else go on.
    pub(super) fn close_slow_consumer(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.is_subscriber() && conn.phase() != Phase::Echo {
            return;
        }
        let queued = conn.backlog_bytes();
        conn.out.discard_unstarted();
        conn.replay = None;
        conn.stop_pausing();
        if conn.is_websocket() {
            let close = frame::close(close_code::POLICY_VIOLATION, "too slow: backlog over limit");
            conn.queue(key, close, &mut self.outbox);
        }
        // An SSE stream just ends: EventSource reconnects with Last-Event-ID and catches up.
        self.begin_closing(key);
        self.metrics.slow_consumers += 1;
        self.metrics.limit_hit(crate::metrics::limit::QUEUED_BYTES);
        self.metrics.closed(CloseReason::SlowConsumer);
        self.warn_peer(
            key,
            "slow consumer",
            &format!(
                "slow consumer closed (1008 for WebSockets): {queued} bytes queued, limit {}",
                self.config.limits.max_queued_bytes
            ),
        );
    }
}
