//! RESP replies from Redis: `decode` in a loop over the buffer, as the link does. Besides "no
//! panic":
//! - a decoded reply removes at least one byte; an incomplete one leaves the buffer untouched;
//! - incomplete is never an error: the input fed in two pieces, cut at any point (decode the
//!   first piece, append the rest, decode again), gives the same replies as the whole input at
//!   once, and fails exactly when the whole input fails.
#![no_main]

use bytes::BytesMut;
use herald::resp::cmd::{Reply, RespError, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut whole = Vec::new();
    let whole_end = decode_all(&mut BytesMut::from(data), &mut whole);

    let cut = cut_point(data);
    let mut split = Vec::new();
    let mut buf = BytesMut::from(&data[..cut]);
    let split_end = decode_all(&mut buf, &mut split).and_then(|()| {
        buf.extend_from_slice(&data[cut..]);
        decode_all(&mut buf, &mut split)
    });
    assert_eq!(split, whole, "cut at {cut}");
    assert_eq!(
        split_end.is_err(),
        whole_end.is_err(),
        "cut at {cut}: {split_end:?} vs {whole_end:?}"
    );
});

/// Decodes replies into `out` until the buffer holds only an incomplete one, or an error.
fn decode_all(buf: &mut BytesMut, out: &mut Vec<Reply>) -> Result<(), RespError> {
    loop {
        let before = buf.clone();
        match decode(buf)? {
            Some(reply) => {
                assert!(buf.len() < before.len(), "a reply uses bytes");
                assert!(before.ends_with(buf), "a reply is taken from the front");
                out.push(reply);
            }
            None => {
                assert_eq!(*buf, before, "an incomplete reply is left in place");
                return Ok(());
            }
        }
    }
}

/// A cut point that moves with every mutation of the input.
fn cut_point(data: &[u8]) -> usize {
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % (data.len() as u64 + 1)) as usize
}
