//! WebSocket client frames: `decode_frame` then `assemble`, in a loop over the buffer as the
//! reactor does. Besides "no panic":
//! - a decoded frame uses at least one byte, no more than the buffer holds, and its payload lies
//!   inside it; every strict prefix of that frame is `Ok(None)`;
//! - the input cut at any point decodes to a prefix of the whole input's messages, and fails
//!   only where the whole input fails, with the same error;
//! - a decoded frame, encoded again as a server frame (`encode`) and masked like a client's,
//!   decodes back to the same opcode and payload;
//! - with permessage-deflate negotiated (every input is decoded both ways): a compressed
//!   message inflates to at most `MAX` bytes or fails cleanly, and a payload compressed by the
//!   server's `Deflater` inflates back to itself.
#![no_main]

use herald::ws::deflate::{Deflater, InflateError, Inflater};
use herald::ws::frame::{Message, WsError, assemble, decode_frame, encode};
use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::frame::FrameHeader;

const MAX: usize = 1024;

fuzz_target!(|data: &[u8]| {
    for deflate in [false, true] {
        check_prefixes(data, deflate);
    }
});

fn check_prefixes(data: &[u8], deflate: bool) {
    let (messages, end) = decode_all(data, deflate);
    let cut = cut_point(data);
    let (prefix_messages, prefix_end) = decode_all(&data[..cut], deflate);
    assert!(
        messages.starts_with(&prefix_messages),
        "cut at {cut}: {prefix_messages:?} vs {messages:?}"
    );
    match (prefix_end, end) {
        (Ok(used), _) => assert!(used <= cut),
        (Err(e), whole) => {
            assert_eq!(Err(e), whole, "cut at {cut}");
            assert_eq!(prefix_messages, messages, "cut at {cut}");
        }
    }
}

/// The messages in `input` and the bytes used, or the error that stopped decoding.
fn decode_all(input: &[u8], deflate: bool) -> (Vec<String>, Result<usize, WsError>) {
    let mut buf = input.to_vec();
    let mut partial = None;
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        let (header, range, used) = match decode_frame(&mut buf[pos..], MAX, deflate) {
            Ok(Some(frame)) => frame,
            Ok(None) => return (out, Ok(pos)),
            Err(e) => return (out, Err(e)),
        };
        assert!(0 < used && used <= input.len() - pos, "used {used}");
        assert!(
            range.start <= range.end && range.end <= used,
            "{range:?} of {used}"
        );
        let mut frame = input[pos..pos + used].to_vec();
        for cut in 0..used {
            assert_eq!(
                decode_frame(&mut frame[..cut], MAX, deflate),
                Ok(None),
                "frame cut at {cut}"
            );
        }
        let payload = &buf[pos + range.start..pos + range.end];
        if !header.rsv1 {
            round_trip(&header, payload);
        }
        match assemble(&header, payload, &mut partial, MAX) {
            Ok(Some(Message::Compressed { text, data })) => {
                assert!(deflate, "RSV1 accepted without permessage-deflate");
                out.push(inflate(text, &data));
            }
            Ok(Some(message)) => out.push(format!("{message:?}")),
            Ok(None) => {}
            Err(e) => return (out, Err(e)),
        }
        pos += used;
    }
}

/// A compressed message inflated within `MAX`; what inflates is compressed again by the
/// server's deflater and must come back the same.
fn inflate(text: bool, data: &[u8]) -> String {
    match Inflater::default().inflate(data, MAX) {
        Ok(inflated) => {
            assert!(inflated.len() <= MAX, "inflated {} > {MAX}", inflated.len());
            if let Some(again) = Deflater::default().compress(&inflated) {
                let back = Inflater::default()
                    .inflate(again, MAX)
                    .expect("the server's own compression inflates");
                assert_eq!(back, inflated);
            }
            format!("{:?}", Message::inflated(text, inflated))
        }
        Err(InflateError::TooBig) => "too big".into(),
        Err(InflateError::Corrupt) => "corrupt".into(),
    }
}

fn round_trip(header: &FrameHeader, payload: &[u8]) {
    let server = encode(header.opcode, payload);
    let head_len = server.len() - payload.len();
    assert_eq!(&server[head_len..], payload);
    assert_eq!(server[1] & 0x80, 0, "server frames are not masked");
    let mask = [0xa5, 0x5a, 0x0f, 0xf0];
    let mut client = server[..head_len].to_vec();
    client[1] |= 0x80;
    client.extend_from_slice(&mask);
    client.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let (again, range, used) = decode_frame(&mut client, MAX, false)
        .expect("re-encoded frame is valid")
        .expect("re-encoded frame is complete");
    assert_eq!(
        (again.opcode, again.is_final, used),
        (header.opcode, true, client.len())
    );
    assert_eq!(&client[range], payload);
}

/// A cut point that moves with every mutation of the input.
fn cut_point(data: &[u8]) -> usize {
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % (data.len() as u64 + 1)) as usize
}
