//! Commands out and replies in. Commands are RESP arrays of bulk strings, encoded by
//! `redis-protocol` straight from borrowed slices (no copy of the payload into a frame tree);
//! replies are decoded zero-copy from the link's input buffer, so a pub/sub payload arrives as
//! a slice of the bytes read from the socket.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, BytesFrame};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RespError {
    #[error("malformed reply from Redis: {0}")]
    Protocol(String),
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
    /// A pub/sub message: `["message", channel, payload]`.
    Message {
        channel: Bytes,
        payload: Bytes,
    },
    /// A pattern message: `["pmessage", pattern, channel, payload]`.
    PatternMessage {
        channel: Bytes,
        payload: Bytes,
    },
    /// `["subscribe" | "unsubscribe" | "psubscribe" | "punsubscribe", channel, count]`.
    SubscriptionChange {
        kind: Bytes,
        channel: Bytes,
        count: i64,
    },
    /// Anything else (bulk strings, other arrays, null).
    Other(BytesFrame),
}

/// Decodes the next complete reply from the front of `input`, removing its bytes.
pub fn decode(input: &mut BytesMut) -> Result<Option<Reply>, RespError> {
    let frame = match decode_bytes_mut(input) {
        Ok(Some((frame, _, _))) => frame,
        Ok(None) => return Ok(None),
        Err(e) => return Err(RespError::Protocol(e.to_string())),
    };
    Ok(Some(classify(frame)))
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
        (b"message", [_, BulkString(channel), BulkString(payload)]) => Reply::Message {
            channel: channel.clone(),
            payload: payload.clone(),
        },
        (b"pmessage", [_, _, BulkString(channel), BulkString(payload)]) => Reply::PatternMessage {
            channel: channel.clone(),
            payload: payload.clone(),
        },
        (
            b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe",
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
        let mut buf = BytesMut::from(input);
        let mut out = vec![];
        while let Some(reply) = decode(&mut buf).unwrap() {
            out.push(reply);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn should_decode_each_reply_kind() {
        let input = b"+OK\r\n:2\r\n-WRONGPASS invalid username-password pair\r\n\
*3\r\n$9\r\nsubscribe\r\n$6\r\nevents\r\n:1\r\n\
*3\r\n$7\r\nmessage\r\n$6\r\nevents\r\n$5\r\nhello\r\n\
*4\r\n$8\r\npmessage\r\n$3\r\ne:*\r\n$3\r\ne:a\r\n$2\r\nhi\r\n";
        assert_eq!(
            decode_all(input),
            vec![
                Reply::Status(Bytes::from_static(b"OK")),
                Reply::Integer(2),
                Reply::Error("WRONGPASS invalid username-password pair".into()),
                Reply::SubscriptionChange {
                    kind: Bytes::from_static(b"subscribe"),
                    channel: Bytes::from_static(b"events"),
                    count: 1
                },
                Reply::Message {
                    channel: Bytes::from_static(b"events"),
                    payload: Bytes::from_static(b"hello")
                },
                Reply::PatternMessage {
                    channel: Bytes::from_static(b"e:a"),
                    payload: Bytes::from_static(b"hi")
                },
            ]
        );
    }

    #[test]
    fn should_wait_for_replies_split_at_every_byte() {
        let input: &[u8] = b"*3\r\n$7\r\nmessage\r\n$6\r\nevents\r\n$11\r\nhello world\r\n";
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(decode(&mut buf), Ok(None), "cut {cut}");
            assert_eq!(buf.len(), cut, "an incomplete reply is left in place");
            buf.extend_from_slice(&input[cut..]);
            assert!(matches!(decode(&mut buf), Ok(Some(Reply::Message { .. }))));
        }
    }

    #[test]
    fn should_reject_garbage() {
        let mut buf = BytesMut::from(&b"?what\r\n"[..]);
        assert!(decode(&mut buf).is_err());
    }
}
