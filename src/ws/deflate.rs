//! permessage-deflate (RFC 7692) without per-connection state: the offer is accepted only with
//! `server_no_context_takeover` and `client_no_context_takeover`, so every message, either way,
//! is a DEFLATE stream of its own. That is what lets an event be compressed ONCE and the same
//! compressed frame go to every subscriber that negotiated the extension: nothing of one
//! connection's history shapes another's bytes.
//!
//! Owns: reading the client's offer (`negotiate`), the response header, one compressor and one
//! inflater for the whole reactor (each reset per message; they hold about 330 KB and 45 KB,
//! created on first use), and the bounds on inflation. The caller decides which messages to
//! compress (`COMPRESS_MIN_BYTES`) and to whom.
//!
//! `server_max_window_bits=N` (N < 15) is accepted without a compressor per window size: a
//! message of at most 2^N bytes can only refer back inside itself, so any DEFLATE stream of it
//! fits an N-bit window; larger messages go to such a client uncompressed (`WindowBits::fits`).

use std::num::NonZeroU8;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// RFC 7692 7.2.1: the tail a sync flush leaves, removed by the sender and put back by the
/// receiver.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest LZ77 window DEFLATE has (32 KiB), what the compressor always uses.
const MAX_WINDOW_BITS: u8 = 15;

/// The LZ77 window (as a power of two) the client lets the server use for what it sends:
/// `server_max_window_bits`, 15 unless the client asked for less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowBits(NonZeroU8);

impl WindowBits {
    pub const MAX: WindowBits = WindowBits(NonZeroU8::new(MAX_WINDOW_BITS).expect("15 > 0"));

    pub fn get(self) -> u8 {
        self.0.get()
    }

    /// Whether a message of `payload_len` bytes, compressed with any window, decodes with this
    /// one: back-references never reach before the message's start (no context takeover), so
    /// a message no longer than the window is always within it.
    pub fn fits(self, payload_len: usize) -> bool {
        self.get() >= MAX_WINDOW_BITS || payload_len <= 1usize << self.get()
    }
}

/// The extension as agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The `server_max_window_bits` the client asked for, echoed in the response.
    requested_window: Option<WindowBits>,
}

impl Agreement {
    pub fn window_bits(self) -> WindowBits {
        self.requested_window.unwrap_or(WindowBits::MAX)
    }

    /// The value of `Sec-WebSocket-Extensions` in the 101.
    ///
    /// RFC 7692 7.1.1.1 and 7.1.1.2: the server MAY include `server_no_context_takeover` and
    /// `client_no_context_takeover` whether or not the offer had them, and a client that
    /// accepts the response must then start each message with a fresh context. 7.1.2.1: an
    /// offer with `server_max_window_bits` is accepted by answering it with the same value.
    pub fn response(self) -> String {
        let mut value =
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                .to_string();
        if let Some(bits) = self.requested_window {
            value.push_str(&format!("; server_max_window_bits={}", bits.get()));
        }
        value
    }
}

/// Picks the first acceptable `permessage-deflate` offer in a `Sec-WebSocket-Extensions`
/// value (offers are listed in the client's order of preference, RFC 6455 9.1).
///
/// RFC 7692 7.1: an offer is declined if it has an unknown parameter, a parameter twice, or a
/// parameter with an invalid value. `client_max_window_bits` (with or without a value) needs
/// nothing from us: the inflater always has the largest window, which reads any smaller one.
pub fn negotiate(extensions: &str) -> Option<Agreement> {
    extensions.split(',').find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<Agreement> {
    let mut params = offer.split(';').map(str::trim);
    if !params.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut requested_window = None;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param, None),
        };
        let index = [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        ]
        .iter()
        .position(|known| name.eq_ignore_ascii_case(known))?;
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
        match (index, value) {
            (0 | 1, None) | (3, None) => {}
            (2, Some(bits)) => requested_window = Some(window_bits(bits)?),
            (3, Some(bits)) => {
                window_bits(bits)?;
            }
            _ => return None,
        }
    }
    Some(Agreement { requested_window })
}

/// A quoted-string value (RFC 6455 9.1 allows one) without its quotes.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(inner) => inner.strip_suffix('"'),
        None => Some(value),
    }
}

/// RFC 7692 7.1.2: "a decimal integer value without leading zeroes between 8 to 15".
fn window_bits(value: &str) -> Option<WindowBits> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (8..=MAX_WINDOW_BITS)
        .contains(&bits)
        .then(|| WindowBits(NonZeroU8::new(bits).expect("bug: at least 8")))
}

/// What went wrong inflating a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// The message inflates past the limit (inflation stopped there).
    TooBig,
    /// Not a valid DEFLATE stream (or one that refers to a previous message, which
    /// `client_no_context_takeover` forbids).
    Corrupt,
}

/// The reactor's one compressor: events and echoes are compressed one at a time, each from a
/// fresh context.
#[derive(Default)]
pub struct Deflater {
    compress: Option<Box<Compress>>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish_non_exhaustive()
    }
}

impl Deflater {
    /// The message compressed for a frame with RSV1 set (RFC 7692 7.2.1: DEFLATE, sync flush,
    /// the trailing 00 00 ff ff removed), or `None` if that is not smaller than the message
    /// (random or already compressed data): then it goes plain. The slice is valid until the
    /// next call.
    pub fn compress(&mut self, payload: &[u8]) -> Option<&[u8]> {
        // Level 1: the ratio on JSON is within a few percent of level 6 at a fraction of
        // the time, and the time is spent on the reactor's one thread.
        let compress = self
            .compress
            .get_or_insert_with(|| Box::new(Compress::new(Compression::fast(), false)));
        compress.reset();
        self.out.clear();
        // Output beyond the message's own size (plus the tail to strip) is not worth
        // sending: stop there rather than compress all of an incompressible message.
        let limit = payload.len() + SYNC_TAIL.len();
        self.out.reserve(limit);
        // Each round either finishes, gives up, or grows the buffer toward `limit`.
        for _ in 0..64 {
            let consumed = compress.total_in() as usize;
            compress
                .compress_vec(&payload[consumed..], &mut self.out, FlushCompress::Sync)
                .ok()?;
            if self.out.len() >= limit {
                return None;
            }
            // A sync flush is complete once a call returns with room left in the buffer.
            let all_in = compress.total_in() as usize == payload.len();
            if all_in && self.out.len() < self.out.capacity() {
                return self.out.strip_suffix(&SYNC_TAIL);
            }
            self.out.reserve(limit - self.out.len());
        }
        None
    }
}

/// The reactor's one inflater: a compressed message is inflated whole when its last frame
/// arrives, from a fresh context (`client_no_context_takeover`).
#[derive(Default)]
pub struct Inflater {
    decompress: Option<Box<Decompress>>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").finish_non_exhaustive()
    }
}

/// First output buffer for an inflation: grown by doubling, up to the limit.
const FIRST_OUTPUT_BYTES: usize = 4096;

impl Inflater {
    /// Inflates a compressed message (RFC 7692 7.2.2: the payload with 00 00 ff ff appended).
    /// The output never grows past `max_bytes + 1`: a message that would inflate further is
    /// `TooBig` as soon as the limit is passed, whatever its compressed size (no bomb).
    pub fn inflate(&mut self, payload: &[u8], max_bytes: usize) -> Result<Vec<u8>, InflateError> {
        let decompress = self
            .decompress
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        decompress.reset(false);
        let cap = max_bytes.saturating_add(1);
        let mut out = Vec::with_capacity(FIRST_OUTPUT_BYTES.min(cap));
        for input in [payload, &SYNC_TAIL[..]] {
            let mut used = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.capacity() >= cap {
                        return Err(InflateError::TooBig);
                    }
                    let more = out.capacity().max(FIRST_OUTPUT_BYTES).min(cap - out.len());
                    out.reserve_exact(more);
                }
                let (in_before, out_before) = (decompress.total_in(), out.len());
                let status = decompress
                    .decompress_vec(&input[used..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                used += (decompress.total_in() - in_before) as usize;
                if out.len() > max_bytes {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A block with BFINAL set ends the message (RFC 7692 7.2.3.4).
                    return Ok(out);
                }
                let progressed = decompress.total_in() > in_before || out.len() > out_before;
                let room_left = out.len() < out.capacity();
                // Done with this input, or stuck with room to spare (the rest is not DEFLATE).
                if room_left && (used == input.len() || !progressed) {
                    break;
                }
            }
            if used < input.len() {
                return Err(InflateError::Corrupt);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(offer: &str) -> Option<String> {
        negotiate(offer).map(Agreement::response)
    }

    const BOTH: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn should_accept_what_browsers_and_libraries_offer() {
        // Chromium, websockets (Python): `client_max_window_bits` without a value.
        assert_eq!(
            agreed("permessage-deflate; client_max_window_bits").as_deref(),
            Some(BOTH)
        );
        // Firefox, Safari.
        assert_eq!(agreed("permessage-deflate").as_deref(), Some(BOTH));
        assert_eq!(
            agreed("PERMESSAGE-DEFLATE; Client_No_Context_Takeover; client_max_window_bits=10")
                .as_deref(),
            Some(BOTH)
        );
    }

    #[test]
    fn should_echo_a_smaller_server_window() {
        let agreement = negotiate("permessage-deflate; server_max_window_bits=\"9\"").unwrap();
        assert_eq!(agreement.window_bits().get(), 9);
        assert_eq!(
            agreement.response(),
            format!("{BOTH}; server_max_window_bits=9")
        );
        assert!(agreement.window_bits().fits(512));
        assert!(!agreement.window_bits().fits(513));
        assert!(WindowBits::MAX.fits(10 << 20));
    }

    #[test]
    fn should_decline_offers_it_cannot_read_and_take_the_next() {
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
            "permessage-deflate;",
        ] {
            assert_eq!(agreed(bad), None, "{bad}");
        }
        assert_eq!(
            agreed("permessage-deflate; mystery, permessage-deflate; server_max_window_bits=12")
                .as_deref(),
            Some(&*format!("{BOTH}; server_max_window_bits=12"))
        );
    }

    fn json(len: usize) -> Vec<u8> {
        let mut s = String::from(r#"{"type":"order","message":""#);
        let mut i = 0;
        while s.len() < len {
            s.push_str(&format!("order {i} shipped; "));
            i += 1;
        }
        s.push_str("\"}");
        s.into_bytes()
    }

    #[test]
    fn should_round_trip_through_a_fresh_context_each_time() {
        let mut deflater = Deflater::default();
        let mut inflater = Inflater::default();
        for len in [300, 1000, 5000, 70_000] {
            let message = json(len);
            let compressed = deflater.compress(&message).unwrap().to_vec();
            assert!(compressed.len() < message.len() / 2, "{len}");
            assert!(!compressed.ends_with(&SYNC_TAIL));
            assert_eq!(inflater.inflate(&compressed, 1 << 20).unwrap(), message);
            // Compressing the same message again gives the same bytes: no context carried.
            assert_eq!(deflater.compress(&message).unwrap(), &compressed[..]);
        }
    }

    #[test]
    fn should_leave_incompressible_messages_plain() {
        let mut noise = vec![0u8; 4000];
        let mut x = 0x2545_f491_u32;
        for b in &mut noise {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        assert_eq!(Deflater::default().compress(&noise), None);
    }

    #[test]
    fn should_stop_inflating_a_bomb_at_the_limit() {
        let bomb = vec![b'a'; 10 << 20];
        let compressed = Deflater::default().compress(&bomb).unwrap().to_vec();
        // Under the default MAX_MESSAGE_BYTES on the wire, 10 MiB inflated.
        assert!(compressed.len() < 64 * 1024, "{}", compressed.len());
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(&compressed, 64 * 1024),
            Err(InflateError::TooBig)
        );
        // Exactly at the limit is fine.
        let exact = vec![b'b'; 64 * 1024];
        let compressed = Deflater::default().compress(&exact).unwrap().to_vec();
        assert_eq!(inflater.inflate(&compressed, 64 * 1024).unwrap(), exact);
    }

    #[test]
    fn should_refuse_garbage_and_read_the_rfc_example() {
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(&[0xff, 0xff, 0xff], 1000),
            Err(InflateError::Corrupt)
        );
        // RFC 7692 7.2.3.1: "Hello" compressed, and 7.2.3.4: with BFINAL set.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflater.inflate(&hello, 1000).unwrap(), b"Hello");
        let final_block = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflater.inflate(&final_block, 1000).unwrap(), b"Hello");
        // 7.2.3.3: a stored block.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflater.inflate(&stored, 1000).unwrap(), b"Hello");
        assert_eq!(inflater.inflate(&hello, 4), Err(InflateError::TooBig));
    }
}
