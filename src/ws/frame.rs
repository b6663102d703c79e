//! WebSocket frames: client frames in (header parsed by tungstenite's `FrameHeader`, payload
//! unmasked in place), assembled into messages; server frames out, built once into shared bytes.
//!
//! Every MUST of RFC 6455 that a server enforces on input is checked here and mapped to its
//! close code in `WsError::close_code`; the caller sends that close and stops reading.

use std::borrow::Cow;
use std::io::Cursor;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Close codes (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WsError {
    /// RFC 6455 5.1: "The server MUST close the connection upon receiving a frame that is not
    /// masked."
    #[error("unmasked client frame")]
    UnmaskedFrame,
    /// RFC 6455 5.2: RSV bits "MUST be 0 unless an extension is negotiated". With
    /// permessage-deflate, RFC 7692 6.1: RSV1 only on the first frame of a data message.
    #[error("reserved bits set without an extension")]
    ReservedBits,
    #[error("reserved opcode {0}")]
    BadOpcode(u8),
    /// RFC 6455 5.5: control frames "MUST have a payload length of 125 bytes or less and MUST
    /// NOT be fragmented".
    #[error("control frame fragmented or over 125 bytes")]
    BadControlFrame,
    #[error("continuation frame with no message to continue")]
    UnexpectedContinuation,
    #[error("new data frame inside a fragmented message")]
    ExpectedContinuation,
    #[error("message larger than {0} bytes")]
    TooBig(usize),
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("close frame with a one-byte payload")]
    BadClosePayload,
    #[error("close code {0} is not allowed on the wire")]
    BadCloseCode(u16),
    /// A compressed message that does not inflate (or refers to an earlier message, which
    /// `client_no_context_takeover` rules out).
    #[error("compressed message is not valid DEFLATE data")]
    BadCompressedData,
}

impl WsError {
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooBig(_) => close_code::MESSAGE_TOO_BIG,
            WsError::InvalidUtf8 | WsError::BadCompressedData => close_code::INVALID_PAYLOAD,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

/// A data message split over several frames, kept until its final frame arrives.
#[derive(Debug)]
pub struct PartialMessage {
    text: bool,
    /// RSV1 was set on its first frame: `data` is DEFLATE data, inflated once it is whole.
    compressed: bool,
    data: Vec<u8>,
    /// Bytes of `data` already checked to be UTF-8 (text only): invalid text fails on the
    /// fragment that breaks it, not at the end.
    utf8_checked: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Text(Cow<'a, str>),
    Binary(Cow<'a, [u8]>),
    Ping(&'a [u8]),
    Pong,
    /// The peer's close: its code (if any) and reason.
    Close(Option<u16>, &'a str),
    /// A whole data message sent with permessage-deflate (RSV1): still to be inflated (within
    /// the size limit) and, if text, checked to be UTF-8 (`Message::inflated`).
    Compressed {
        text: bool,
        data: Cow<'a, [u8]>,
    },
}

impl Message<'_> {
    /// The message a compressed one inflates to.
    pub fn inflated(text: bool, data: Vec<u8>) -> Result<Message<'static>, WsError> {
        Ok(if text {
            let text = String::from_utf8(data).map_err(|_| WsError::InvalidUtf8)?;
            Message::Text(Cow::Owned(text))
        } else {
            Message::Binary(Cow::Owned(data))
        })
    }
}

/// One complete frame at the front of `buf`: its header, the range of its payload (unmasked in
/// place) and the bytes it used. `Ok(None)` when the frame is not complete yet. `deflate`:
/// permessage-deflate was negotiated, so RSV1 may mark a data message as compressed.
pub fn decode_frame(
    buf: &mut [u8],
    max_message_bytes: usize,
    deflate: bool,
) -> Result<Option<(FrameHeader, Range<usize>, usize)>, WsError> {
    let mut cursor = Cursor::new(&*buf);
    let (header, length) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(WsError::BadOpcode(buf[0] & 0x0f)),
    };
    let header_len = cursor.position() as usize;
    let Some(mask) = header.mask else {
        return Err(WsError::UnmaskedFrame);
    };
    // RFC 7692 6.1: RSV1 marks a compressed message on its first frame; an endpoint "MUST
    // NOT set the 'Per-Message Compressed' bit of control frames and non-first fragments".
    let first_data_frame = matches!(header.opcode, OpCode::Data(d) if d != Data::Continue);
    if header.rsv2 || header.rsv3 || (header.rsv1 && !(deflate && first_data_frame)) {
        return Err(WsError::ReservedBits);
    }
    if let OpCode::Control(_) = header.opcode
        && (length > 125 || !header.is_final)
    {
        return Err(WsError::BadControlFrame);
    }
    if length > max_message_bytes as u64 {
        return Err(WsError::TooBig(max_message_bytes));
    }
    let length = length as usize; // fits: bounded by max_message_bytes just above
    let Some(end) = header_len
        .checked_add(length)
        .filter(|&end| end <= buf.len())
    else {
        return Ok(None);
    };
    apply_mask(&mut buf[header_len..end], mask);
    Ok(Some((header, header_len..end, end)))
}

/// RFC 6455 5.3: payload octet i is XORed with mask octet i mod 4.
fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Folds one frame into the message being assembled. Returns a message once it is complete.
pub fn assemble<'a>(
    header: &FrameHeader,
    payload: &'a [u8],
    partial: &mut Option<Box<PartialMessage>>,
    max_message_bytes: usize,
) -> Result<Option<Message<'a>>, WsError> {
    match header.opcode {
        OpCode::Control(Control::Ping) => Ok(Some(Message::Ping(payload))),
        OpCode::Control(Control::Pong) => Ok(Some(Message::Pong)),
        OpCode::Control(Control::Close) => close_message(payload).map(Some),
        OpCode::Control(Control::Reserved(op)) | OpCode::Data(Data::Reserved(op)) => {
            Err(WsError::BadOpcode(op))
        }
        OpCode::Data(Data::Continue) => {
            let Some(message) = partial.as_mut() else {
                return Err(WsError::UnexpectedContinuation);
            };
            if message.data.len() + payload.len() > max_message_bytes {
                return Err(WsError::TooBig(max_message_bytes));
            }
            message.data.extend_from_slice(payload);
            if message.text && !message.compressed {
                check_utf8_prefix(message, header.is_final)?;
            }
            if !header.is_final {
                return Ok(None);
            }
            let done = partial.take().expect("bug: checked above");
            if done.compressed {
                return Ok(Some(Message::Compressed {
                    text: done.text,
                    data: Cow::Owned(done.data),
                }));
            }
            Ok(Some(if done.text {
                let text = String::from_utf8(done.data).map_err(|_| WsError::InvalidUtf8)?;
                Message::Text(Cow::Owned(text))
            } else {
                Message::Binary(Cow::Owned(done.data))
            }))
        }
        OpCode::Data(data) => {
            if partial.is_some() {
                return Err(WsError::ExpectedContinuation);
            }
            let text = data == Data::Text;
            let compressed = header.rsv1;
            if header.is_final && compressed {
                return Ok(Some(Message::Compressed {
                    text,
                    data: Cow::Borrowed(payload),
                }));
            }
            if header.is_final {
                return Ok(Some(if text {
                    let s = std::str::from_utf8(payload).map_err(|_| WsError::InvalidUtf8)?;
                    Message::Text(Cow::Borrowed(s))
                } else {
                    Message::Binary(Cow::Borrowed(payload))
                }));
            }
            let mut message = Box::new(PartialMessage {
                text,
                compressed,
                data: payload.to_vec(),
                utf8_checked: 0,
            });
            if text && !compressed {
                check_utf8_prefix(&mut message, false)?;
            }
            *partial = Some(message);
            Ok(None)
        }
    }
}

/// Checks the text received so far. An incomplete sequence at the very end is fine unless this
/// was the final fragment.
fn check_utf8_prefix(message: &mut PartialMessage, is_final: bool) -> Result<(), WsError> {
    match std::str::from_utf8(&message.data[message.utf8_checked..]) {
        Ok(_) => {
            message.utf8_checked = message.data.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !is_final => {
            message.utf8_checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(WsError::InvalidUtf8),
    }
}

fn close_message(payload: &[u8]) -> Result<Message<'_>, WsError> {
    match payload {
        [] => Ok(Message::Close(None, "")),
        [_] => Err(WsError::BadClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::BadCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Message::Close(Some(code), reason))
        }
    }
}

/// RFC 6455 7.4: codes a peer may send. 1005, 1006 and 1015 are for APIs, never the wire;
/// 1016-2999 are reserved for future protocol use.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A server frame (unmasked, final) holding `payload`, built once into shared bytes.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    encode_frame(
        FrameHeader {
            opcode,
            ..FrameHeader::default()
        },
        payload,
    )
}

/// A server frame of a message compressed with permessage-deflate: RSV1 set (RFC 7692 6.1).
pub fn encode_compressed(opcode: OpCode, compressed: &[u8]) -> Bytes {
    encode_frame(
        FrameHeader {
            opcode,
            rsv1: true,
            ..FrameHeader::default()
        },
        compressed,
    )
}

fn encode_frame(header: FrameHeader, payload: &[u8]) -> Bytes {
    let len = payload.len() as u64;
    let mut out = BytesMut::with_capacity(header.len(len) + payload.len()).writer();
    header
        .format(len, &mut out)
        .expect("bug: writing to memory cannot fail");
    let mut out = out.into_inner();
    out.put_slice(payload);
    out.freeze()
}

/// The frame every subscriber of a broadcast receives: one text frame of the event's JSON.
pub fn text(payload: &[u8]) -> Bytes {
    encode(OpCode::Data(Data::Text), payload)
}

/// A text frame whose payload was compressed with permessage-deflate (RSV1 set).
pub fn compressed_text(compressed: &[u8]) -> Bytes {
    encode_compressed(OpCode::Data(Data::Text), compressed)
}

pub fn pong(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Pong), payload)
}

pub fn ping(payload: &[u8]) -> Bytes {
    encode(OpCode::Control(Control::Ping), payload)
}

/// A close frame; the reason is cut to fit the 125-byte control payload, on a char boundary.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OpCode::Control(Control::Close), &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame as a browser sends it: masked.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    /// Decodes every frame in `input` into messages, as the reactor does.
    fn decode_all(input: &[u8]) -> Result<Vec<String>, WsError> {
        decode_with(input, false)
    }

    /// `decode_all` on a connection that negotiated permessage-deflate (or not).
    fn decode_with(input: &[u8], deflate: bool) -> Result<Vec<String>, WsError> {
        let mut buf = input.to_vec();
        let mut partial = None;
        let mut pos = 0;
        let mut out = Vec::new();
        while let Some((header, range, used)) = decode_frame(&mut buf[pos..], 1000, deflate)? {
            let payload = &buf[pos + range.start..pos + range.end];
            if let Some(m) = assemble(&header, payload, &mut partial, 1000)? {
                out.push(format!("{m:?}"));
            }
            pos += used;
        }
        assert_eq!(pos, buf.len(), "left over bytes");
        Ok(out)
    }

    #[test]
    fn should_decode_the_rfc_masked_hello() {
        // RFC 6455 5.7: a single-frame masked text message containing "Hello".
        let input = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(decode_all(&input).unwrap(), vec![r#"Text("Hello")"#]);
    }

    #[test]
    fn should_wait_for_a_frame_split_at_every_byte() {
        let frame = client_frame(0x81, &[b'x'; 300]);
        for cut in 0..frame.len() {
            let mut prefix = frame[..cut].to_vec();
            assert_eq!(
                decode_frame(&mut prefix, 1000, false),
                Ok(None),
                "cut {cut}"
            );
        }
        let mut whole = frame.clone();
        assert!(decode_frame(&mut whole, 1000, false).unwrap().is_some());
    }

    #[test]
    fn should_assemble_fragments_around_control_frames() {
        let mut input = client_frame(0x01, "caf".as_bytes());
        input.extend(client_frame(0x89, b"p"));
        input.extend(client_frame(0x80, "é!".as_bytes()));
        assert_eq!(
            decode_all(&input).unwrap(),
            vec![r#"Ping([112])"#.to_string(), r#"Text("café!")"#.to_string()]
        );
    }

    #[test]
    fn should_accept_utf8_split_across_fragments() {
        let bytes = "é".as_bytes();
        let mut input = client_frame(0x01, &bytes[..1]);
        input.extend(client_frame(0x80, &bytes[1..]));
        assert_eq!(decode_all(&input).unwrap(), vec![r#"Text("é")"#]);
    }

    #[test]
    fn should_map_violations_to_close_codes() {
        let cases: Vec<(Vec<u8>, WsError, u16)> = vec![
            (vec![0x81, 0x01, b'x'], WsError::UnmaskedFrame, 1002),
            (client_frame(0xC1, b"x"), WsError::ReservedBits, 1002),
            (client_frame(0x83, b"x"), WsError::BadOpcode(3), 1002),
            (client_frame(0x09, b"x"), WsError::BadControlFrame, 1002),
            (
                client_frame(0x89, &[0; 126]),
                WsError::BadControlFrame,
                1002,
            ),
            (
                client_frame(0x80, b"x"),
                WsError::UnexpectedContinuation,
                1002,
            ),
            (client_frame(0x81, &[0; 1001]), WsError::TooBig(1000), 1009),
            (client_frame(0x81, &[0xff]), WsError::InvalidUtf8, 1007),
            (client_frame(0x88, &[3]), WsError::BadClosePayload, 1002),
            (
                client_frame(0x88, &1005u16.to_be_bytes()),
                WsError::BadCloseCode(1005),
                1002,
            ),
            (
                client_frame(0x88, &[0x03, 0xe8, 0xff]),
                WsError::InvalidUtf8,
                1007,
            ),
        ];
        for (input, error, code) in cases {
            assert_eq!(decode_all(&input), Err(error.clone()), "{input:?}");
            assert_eq!(error.close_code(), code);
        }
        let mut nested = client_frame(0x01, b"a");
        nested.extend(client_frame(0x81, b"b"));
        assert_eq!(decode_all(&nested), Err(WsError::ExpectedContinuation));
        let mut bad_fragment = client_frame(0x01, b"a");
        bad_fragment.extend(client_frame(0x00, &[0xff]));
        assert_eq!(decode_all(&bad_fragment), Err(WsError::InvalidUtf8));
        let mut too_big = client_frame(0x01, &[b'a'; 600]);
        too_big.extend(client_frame(0x80, &[b'a'; 600]));
        assert_eq!(decode_all(&too_big), Err(WsError::TooBig(1000)));
    }

    #[test]
    fn should_take_rsv1_only_on_the_first_frame_of_a_deflate_message() {
        // RFC 7692 7.2.3.1: "Hello" compressed, in one frame, then in two fragments.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(
            decode_with(&client_frame(0xC1, &hello), true).unwrap(),
            vec![format!(
                "Compressed {{ text: true, data: {:?} }}",
                &hello[..]
            )]
        );
        let mut fragments = client_frame(0x41, &hello[..3]);
        fragments.extend(client_frame(0x89, b"p"));
        fragments.extend(client_frame(0x80, &hello[3..]));
        assert_eq!(
            decode_with(&fragments, true).unwrap(),
            vec![
                "Ping([112])".to_string(),
                format!("Compressed {{ text: true, data: {:?} }}", &hello[..])
            ]
        );
        // Not negotiated; on a continuation frame; on a control frame; RSV2.
        assert_eq!(
            decode_with(&client_frame(0xC1, &hello), false),
            Err(WsError::ReservedBits)
        );
        let mut rsv1_continuation = client_frame(0x41, &hello[..3]);
        rsv1_continuation.extend(client_frame(0xC0, &hello[3..]));
        assert_eq!(
            decode_with(&rsv1_continuation, true),
            Err(WsError::ReservedBits)
        );
        assert_eq!(
            decode_with(&client_frame(0xC9, b""), true),
            Err(WsError::ReservedBits)
        );
        assert_eq!(
            decode_with(&client_frame(0xA1, b"x"), true),
            Err(WsError::ReservedBits)
        );
        // Compressed fragments are not checked as UTF-8 before inflation.
        let mut binary_looking = client_frame(0x41, &[0xff]);
        binary_looking.extend(client_frame(0x80, &[0xfe]));
        assert!(decode_with(&binary_looking, true).is_ok());
    }

    #[test]
    fn should_set_rsv1_on_compressed_server_frames() {
        let frame = encode_compressed(OpCode::Data(Data::Text), b"abc");
        assert_eq!(&frame[..], b"\xc1\x03abc");
    }

    #[test]
    fn should_read_close_codes_and_reasons() {
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        assert_eq!(
            decode_all(&client_frame(0x88, &payload)).unwrap(),
            vec![r#"Close(Some(1001), "bye")"#]
        );
        assert_eq!(
            decode_all(&client_frame(0x88, b"")).unwrap(),
            vec![r#"Close(None, "")"#]
        );
    }

    #[test]
    fn should_frame_server_messages_unmasked() {
        assert_eq!(&text(b"Hello")[..], b"\x81\x05Hello");
        let big = text(&[b'a'; 300]);
        assert_eq!(&big[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(big.len(), 304);
        assert_eq!(&close(1001, "going away")[..4], &[0x88, 12, 0x03, 0xe9]);
        let long_reason = "é".repeat(100);
        assert!(close(1000, &long_reason).len() <= 127);
    }
}
