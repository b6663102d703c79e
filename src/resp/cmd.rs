//! Commands out and replies in. Commands are RESP arrays of bulk strings, encoded by
//! `redis-protocol` straight from borrowed slices (no copy of the payload into a frame tree);
//! replies are decoded zero-copy from the link's input buffer, so a pub/sub payload arrives as
//! a slice of the bytes read from the socket.
//!
//! Redis is a peer like any other: a reply is checked against `RespLimits` (nesting depth,
//! bulk length, array length, total size) by an iterative scan before `redis-protocol` sees
//! it. That decoder recurses once per nesting level and re-parses an incomplete reply from its
//! start on every read; the scan keeps its place between reads and hands over only a complete
//! reply within the limits, so the recursion is at most `MAX_DEPTH` deep and a reply is parsed
//! once.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, BytesFrame};
use thiserror::Error;

/// Deepest nesting of arrays Herald accepts. Its deepest reply is a history read, four levels:
/// `{first id, {entry: {id, {field, value}}}}`; twice that leaves room without letting a
/// reply of `*1\r\n` repeated a million times recurse a million frames deep.
pub const MAX_DEPTH: usize = 8;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RespError {
    #[error("malformed reply from Redis: {0}")]
    Protocol(String),
    #[error("reply from Redis nested deeper than {MAX_DEPTH} arrays")]
    TooDeep,
    #[error("bulk string of {0} bytes from Redis (limit {1})")]
    BulkTooLong(u64, usize),
    #[error("array of {0} elements from Redis (limit {1})")]
    ArrayTooLong(u64, usize),
    #[error("reply from Redis over {0} bytes")]
    ReplyTooLarge(usize),
}

impl RespError {
    /// A reply over a limit, rather than one that breaks the protocol.
    pub fn is_over_limit(&self) -> bool {
        !matches!(self, RespError::Protocol(_))
    }
}

/// The largest reply shapes the link accepts; beyond them it resets the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    pub max_bulk_bytes: usize,
    pub max_array_len: usize,
    pub max_reply_bytes: usize,
}

impl RespLimits {
    /// Derived from what Herald asks Redis for:
    /// - a bulk string is one event (a stored one, or a pub/sub payload). No event larger than
    ///   `max_event_bytes` can reach a subscriber; twice that still decodes, so a foreign
    ///   message somewhat over it is dropped and counted rather than costing the whole link a
    ///   reset, and anything larger is not worth buffering to find its end;
    /// - the longest array is a history page of at most `max_page_events` entries;
    /// - the largest reply is a history page: `page_bytes` of events (the script stops adding
    ///   entries there, but always returns at least one, which may be a whole bulk), plus
    ///   about 64 bytes of RESP framing per entry.
    pub fn for_pages(max_event_bytes: usize, max_page_events: usize, page_bytes: usize) -> Self {
        let max_bulk_bytes = max_event_bytes.saturating_mul(2);
        let max_array_len = max_page_events.max(16);
        RespLimits {
            max_bulk_bytes,
            max_array_len,
            max_reply_bytes: page_bytes
                .max(max_bulk_bytes)
                .saturating_add(max_array_len.saturating_mul(64))
                .saturating_add(4096),
        }
    }
}

/// Appends one command (`args[0]` is its name) to `out`.
pub fn encode(out: &mut BytesMut, args: &[&[u8]]) {
    let parts: smallvec::SmallVec<[BorrowedFrame<'_>; 4]> =
        args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    extend_encode_borrowed(out, &BorrowedFrame::Array(&parts), false)
        .expect("bug: encoding into a growable buffer cannot fail");
}

/// What a reply says, in the terms a link acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `+PONG` or another simple status.
    Status(Bytes),
    Integer(i64),
    /// `-ERR ...`, `-WRONGPASS ...`: the text, for logs and for the publisher's 503.
    Error(String),
    /// A pub/sub message: `["message", channel, payload]`, or `["smessage", ...]` on a shard
    /// channel.
    Message {
        channel: Bytes,
        payload: Bytes,
    },
    /// A pattern message: `["pmessage", pattern, channel, payload]`.
    PatternMessage {
        channel: Bytes,
        payload: Bytes,
    },
    /// `["subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe" | "ssubscribe" |
    /// "sunsubscribe", channel, count]`.
    SubscriptionChange {
        kind: Bytes,
        channel: Bytes,
        count: i64,
    },
    /// Anything else (bulk strings, other arrays, null).
    Other(BytesFrame),
}

/// Decodes replies from a link's input buffer, one at a time, within `RespLimits`.
#[derive(Debug)]
pub struct Decoder {
    limits: RespLimits,
    scan: Scan,
}

/// Where the scan of an incomplete reply stopped: the offset of the next element's header,
/// and how many elements each open array still expects (innermost last).
#[derive(Debug, Default, Clone)]
struct Scan {
    offset: usize,
    open: [u64; MAX_DEPTH],
    depth: usize,
}

/// The outcome of scanning one element.
enum Element {
    /// A whole element ends at this offset.
    Ends(usize),
    /// An array of this many elements begins; its header ends at this offset.
    Opens(u64, usize),
    Incomplete,
}

impl Decoder {
    pub fn new(limits: RespLimits) -> Decoder {
        Decoder {
            limits,
            scan: Scan::default(),
        }
    }

    /// Forgets a partly scanned reply (the connection it came on is gone).
    pub fn reset(&mut self) {
        self.scan = Scan::default();
    }

    /// Decodes the next complete reply from the front of `input`, removing its bytes.
    /// `Ok(None)`: incomplete, `input` untouched (the scan remembers how far it got).
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Reply>, RespError> {
        let Some(len) = self.scan_reply(input)? else {
            return Ok(None);
        };
        self.scan = Scan::default();
        match decode_bytes_mut(input) {
            Ok(Some((frame, used, _))) if used == len => Ok(Some(classify(frame))),
            Ok(other) => Err(RespError::Protocol(format!(
                "scanned {len} bytes, decoder took {:?}",
                other.map(|(_, used, _)| used)
            ))),
            Err(e) => Err(RespError::Protocol(e.to_string())),
        }
    }

    /// Scans on from where the last call stopped; the length of the first reply once it is
    /// complete. Iterative: depth lives in `Scan::open`, not on the stack.
    fn scan_reply(&mut self, input: &[u8]) -> Result<Option<usize>, RespError> {
        let limits = self.limits;
        let scan = &mut self.scan;
        loop {
            let end = match scan_element(input, scan.offset, &limits)? {
                Element::Incomplete => return Ok(None),
                Element::Opens(count, end) => {
                    if scan.depth == MAX_DEPTH {
                        return Err(RespError::TooDeep);
                    }
                    scan.open[scan.depth] = count;
                    scan.depth += 1;
                    scan.offset = end;
                    continue;
                }
                Element::Ends(end) => end,
            };
            scan.offset = end;
            // The element completes its array, which may complete the one around it...
            loop {
                if scan.depth == 0 {
                    return Ok(Some(end));
                }
                let remaining = &mut scan.open[scan.depth - 1];
                *remaining -= 1;
                if *remaining > 0 {
                    break;
                }
                scan.depth -= 1;
            }
        }
    }
}

/// Scans the element whose header starts at `at`, checking each length against the limits the
/// moment it is known (before waiting for the bytes it announces).
fn scan_element(input: &[u8], at: usize, limits: &RespLimits) -> Result<Element, RespError> {
    let too_large = || RespError::ReplyTooLarge(limits.max_reply_bytes);
    let Some(rest) = input.get(at..).filter(|r| !r.is_empty()) else {
        return Ok(Element::Incomplete);
    };
    let Some(line_len) = find_crlf(rest) else {
        return if input.len() > limits.max_reply_bytes {
            Err(too_large())
        } else {
            Ok(Element::Incomplete)
        };
    };
    let line_end = at + line_len + 2;
    if line_end > limits.max_reply_bytes {
        return Err(too_large());
    }
    // Empty when the line is bare CRLF: its "type byte" is then '\r', refused below.
    let line = rest.get(1..line_len).unwrap_or_default();
    match rest[0] {
        b'+' | b'-' => Ok(Element::Ends(line_end)),
        b':' => {
            parse_signed(line)?;
            Ok(Element::Ends(line_end))
        }
        b'$' => match parse_signed(line)? {
            -1 => Ok(Element::Ends(line_end)),
            len if len < 0 => Err(RespError::Protocol(format!("bulk length {len}"))),
            len => {
                let len = len as u64;
                if len > limits.max_bulk_bytes as u64 {
                    return Err(RespError::BulkTooLong(len, limits.max_bulk_bytes));
                }
                let end = line_end + len as usize + 2;
                if end > limits.max_reply_bytes {
                    return Err(too_large());
                }
                if input.len() < end {
                    return Ok(Element::Incomplete);
                }
                if &input[end - 2..end] != b"\r\n" {
                    return Err(RespError::Protocol(
                        "bulk string not followed by CRLF".into(),
                    ));
                }
                Ok(Element::Ends(end))
            }
        },
        b'*' => match parse_signed(line)? {
            -1 | 0 => Ok(Element::Ends(line_end)),
            len if len < 0 => Err(RespError::Protocol(format!("array length {len}"))),
            len => {
                let len = len as u64;
                if len > limits.max_array_len as u64 {
                    return Err(RespError::ArrayTooLong(len, limits.max_array_len));
                }
                Ok(Element::Opens(len, line_end))
            }
        },
        other => Err(RespError::Protocol(format!(
            "unknown reply type byte 0x{other:02x}"
        ))),
    }
}

/// Where the first CRLF starts (header lines are short; bulk data is never searched).
fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
}

/// A RESP integer or length: an optional `-`, then 1-19 digits.
fn parse_signed(text: &[u8]) -> Result<i64, RespError> {
    let bad = || {
        let shown = String::from_utf8_lossy(&text[..text.len().min(24)]).into_owned();
        RespError::Protocol(format!("bad number {shown:?}"))
    };
    let (negative, digits) = match text.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let value = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<i64>().ok())
        .ok_or_else(bad)?;
    Ok(if negative { -value } else { value })
}

fn classify(frame: BytesFrame) -> Reply {
    match frame {
        BytesFrame::SimpleString(s) => Reply::Status(s),
        BytesFrame::Integer(i) => Reply::Integer(i),
        BytesFrame::Error(e) => Reply::Error(e.to_string()),
        BytesFrame::Array(parts) => classify_array(parts),
        other => Reply::Other(other),
    }
}

fn classify_array(parts: Vec<BytesFrame>) -> Reply {
    use BytesFrame::{Array, BulkString, Integer};
    let kind = match parts.first() {
        Some(BulkString(kind)) => kind.clone(),
        _ => return Reply::Other(Array(parts)),
    };
    match (&kind[..], &parts[..]) {
        // `smessage`: a shard channel's message (Redis Cluster, SSUBSCRIBE).
        (b"message" | b"smessage", [_, BulkString(channel), BulkString(payload)]) => {
            Reply::Message {
                channel: channel.clone(),
                payload: payload.clone(),
            }
        }
        (b"pmessage", [_, _, BulkString(channel), BulkString(payload)]) => Reply::PatternMessage {
            channel: channel.clone(),
            payload: payload.clone(),
        },
        (
            b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe" | b"ssubscribe"
            | b"sunsubscribe",
            [_, BulkString(channel), Integer(count)],
        ) => Reply::SubscriptionChange {
            kind,
            channel: channel.clone(),
            count: *count,
        },
        _ => Reply::Other(Array(parts)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RespLimits = RespLimits {
        max_bulk_bytes: 64,
        max_array_len: 8,
        max_reply_bytes: 256,
    };

    #[test]
    fn should_encode_a_publish_command() {
        let mut out = BytesMut::new();
        encode(&mut out, &[b"PUBLISH", b"events", b"{\"type\":\"a\"}"]);
        assert_eq!(
            &out[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$6\r\nevents\r\n$12\r\n{\"type\":\"a\"}\r\n"
        );
    }

    fn decode_all(input: &[u8]) -> Vec<Reply> {
        let mut decoder = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        while let Some(reply) = decoder.decode(&mut buf).unwrap() {
            out.push(reply);
        }
        assert!(buf.is_empty());
        out
    }

    /// Decodes `input` fed one byte at a time: the first error, or the replies.
    fn decode_bytewise(input: &[u8], limits: RespLimits) -> Result<Vec<Reply>, RespError> {
        let mut decoder = Decoder::new(limits);
        let mut buf = BytesMut::new();
        let mut out = vec![];
        for &b in input {
            buf.extend_from_slice(&[b]);
            while let Some(reply) = decoder.decode(&mut buf)? {
                out.push(reply);
            }
        }
        Ok(out)
    }

    #[test]
    fn should_decode_each_reply_kind() {
        let input = b"+OK\r\n:2\r\n-WRONGPASS invalid username-password pair\r\n\
*3\r\n$9\r\nsubscribe\r\n$6\r\nevents\r\n:1\r\n\
*3\r\n$7\r\nmessage\r\n$6\r\nevents\r\n$5\r\nhello\r\n\
*4\r\n$8\r\npmessage\r\n$3\r\ne:*\r\n$3\r\ne:a\r\n$2\r\nhi\r\n";
        let expected = vec![
            Reply::Status(Bytes::from_static(b"OK")),
            Reply::Integer(2),
            Reply::Error("WRONGPASS invalid username-password pair".into()),
            Reply::SubscriptionChange {
                kind: Bytes::from_static(b"subscribe"),
                channel: Bytes::from_static(b"events"),
                count: 1,
            },
            Reply::Message {
                channel: Bytes::from_static(b"events"),
                payload: Bytes::from_static(b"hello"),
            },
            Reply::PatternMessage {
                channel: Bytes::from_static(b"e:a"),
                payload: Bytes::from_static(b"hi"),
            },
        ];
        assert_eq!(decode_all(input), expected);
        assert_eq!(decode_bytewise(input, LIMITS), Ok(expected));
    }

    #[test]
    fn should_decode_shard_channel_replies() {
        let input = b"*3\r\n$10\r\nssubscribe\r\n$3\r\n{a}\r\n:1\r\n\
*3\r\n$8\r\nsmessage\r\n$3\r\n{a}\r\n$2\r\nhi\r\n\
*3\r\n$12\r\nsunsubscribe\r\n$3\r\n{a}\r\n:0\r\n";
        let change = |kind: &'static [u8], count| Reply::SubscriptionChange {
            kind: Bytes::from_static(kind),
            channel: Bytes::from_static(b"{a}"),
            count,
        };
        let expected = vec![
            change(b"ssubscribe", 1),
            Reply::Message {
                channel: Bytes::from_static(b"{a}"),
                payload: Bytes::from_static(b"hi"),
            },
            change(b"sunsubscribe", 0),
        ];
        assert_eq!(decode_all(input), expected);
    }

    #[test]
    fn should_wait_for_replies_split_at_every_byte() {
        let input: &[u8] = b"*3\r\n$7\r\nmessage\r\n$6\r\nevents\r\n$11\r\nhello world\r\n";
        for cut in 0..input.len() {
            let mut decoder = Decoder::new(LIMITS);
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(decoder.decode(&mut buf), Ok(None), "cut {cut}");
            assert_eq!(buf.len(), cut, "an incomplete reply is left in place");
            buf.extend_from_slice(&input[cut..]);
            assert!(matches!(
                decoder.decode(&mut buf),
                Ok(Some(Reply::Message { .. }))
            ));
        }
    }

    #[test]
    fn should_reject_garbage() {
        for garbage in [
            &b"?what\r\n"[..],
            b"\r\n",
            b":12x\r\n",
            b"$3\r\nabcde\r\n",
            b"$-2\r\n",
        ] {
            let mut buf = BytesMut::from(garbage);
            assert!(
                Decoder::new(LIMITS).decode(&mut buf).is_err(),
                "{garbage:?}"
            );
        }
    }

    macro_rules! refused {
        ($($name:ident: $input:expr => $error:pat,)*) => {$(
            #[test]
            fn $name() {
                let input: Vec<u8> = $input;
                let mut buf = BytesMut::from(&input[..]);
                let whole = Decoder::new(LIMITS).decode(&mut buf);
                assert!(matches!(whole, Err($error)), "{whole:?}");
                let bytewise = decode_bytewise(&input, LIMITS);
                assert!(matches!(bytewise, Err($error)), "byte by byte: {bytewise:?}");
            }
        )*};
    }

    refused! {
        should_refuse_nesting_deeper_than_the_limit:
            b"*1\r\n".repeat(MAX_DEPTH + 1) => RespError::TooDeep,
        should_refuse_a_million_levels_without_recursing:
            b"*1\r\n".repeat(1_000_000) => RespError::TooDeep,
        should_refuse_a_bulk_longer_than_the_limit_before_its_bytes_arrive:
            b"$65\r\n".to_vec() => RespError::BulkTooLong(65, 64),
        should_refuse_a_huge_announced_bulk:
            b"$9223372036854775807\r\n".to_vec() => RespError::BulkTooLong(..),
        should_refuse_an_array_longer_than_the_limit:
            b"*9\r\n".to_vec() => RespError::ArrayTooLong(9, 8),
        should_refuse_a_reply_larger_than_the_limit:
            [b"*8\r\n".to_vec(), [&b"$60\r\n"[..], &[b'x'; 60], b"\r\n"].concat().repeat(4)].concat()
                => RespError::ReplyTooLarge(256),
        should_refuse_an_endless_status_line:
            [&b"+"[..], &[b'a'; 300]].concat() => RespError::ReplyTooLarge(256),
    }

    #[test]
    fn should_accept_replies_at_the_limits() {
        let deepest = [b"*1\r\n".repeat(MAX_DEPTH), b":1\r\n".to_vec()].concat();
        assert_eq!(decode_all(&deepest).len(), 1);
        let bulk = [&b"$64\r\n"[..], &[b'x'; 64], b"\r\n"].concat();
        assert_eq!(decode_all(&bulk).len(), 1);
        let array = [&b"*8\r\n"[..], &b":1\r\n".repeat(8)].concat();
        assert_eq!(decode_all(&array).len(), 1);
        // Empty and null arrays open nothing; they complete the array around them.
        assert_eq!(decode_all(b"*2\r\n*0\r\n*-1\r\n$-1\r\n").len(), 2);
    }

    #[test]
    fn should_derive_limits_from_the_page_and_event_caps() {
        let limits = RespLimits::for_pages(1 << 20, 1000, 1 << 20);
        assert_eq!(limits.max_bulk_bytes, 2 << 20);
        assert_eq!(limits.max_array_len, 1000);
        assert!(limits.max_reply_bytes >= (2 << 20) + 64 * 1000);
        assert!(limits.max_reply_bytes < 3 << 20, "a few MB: {limits:?}");
    }
}
