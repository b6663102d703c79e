//! RESP replies from Redis: `Decoder::decode` in a loop over the buffer, as the link does,
//! with small limits so that inputs of a few KB reach every one of them (depth, bulk, array,
//! total). Besides "no panic" and "no stack overflow on deep nesting":
//! - a decoded reply removes at least one byte and no more than the reply limit; an
//!   incomplete one leaves the buffer untouched;
//! - incomplete is never an error, and the scan resumes correctly: the input fed in two
//!   pieces to one decoder, cut at any point (decode the first piece, append the rest, decode
//!   again), gives the same replies as the whole input at once, and fails exactly when, and
//!   as, the whole input fails.
//!
//! Each decoded reply then goes where a cluster client sends it: arrays through
//! `parse_cluster_shards` (a slot map, if accepted, has sorted, disjoint ranges within the
//! 16384 slots), error texts through `ClusterReply::classify` (a redirect names a slot below
//! 16384).
#![no_main]

use bytes::BytesMut;
use herald::resp::cluster::{ClusterReply, NodeAddr, SLOTS, parse_cluster_shards};
use herald::resp::cmd::{Decoder, Reply, RespError, RespLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: RespLimits = RespLimits {
    max_bulk_bytes: 256,
    max_array_len: 32,
    max_reply_bytes: 2048,
};

fuzz_target!(|data: &[u8]| {
    let mut whole = Vec::new();
    let whole_end = decode_all(&mut Decoder::new(LIMITS), &mut BytesMut::from(data), &mut whole);

    let cut = cut_point(data);
    let mut split = Vec::new();
    let mut decoder = Decoder::new(LIMITS);
    let mut buf = BytesMut::from(&data[..cut]);
    let split_end = decode_all(&mut decoder, &mut buf, &mut split).and_then(|()| {
        buf.extend_from_slice(&data[cut..]);
        decode_all(&mut decoder, &mut buf, &mut split)
    });
    assert_eq!(split, whole, "cut at {cut}");
    assert_eq!(split_end, whole_end, "cut at {cut}");
    for reply in &whole {
        as_cluster_reply(reply);
    }
});

/// What a cluster client makes of a reply: a slot map, or a redirect.
fn as_cluster_reply(reply: &Reply) {
    let sender = NodeAddr::new("10.0.0.1", 7000);
    match reply {
        Reply::Other(frame) => {
            if let Ok(map) = parse_cluster_shards(frame, &sender) {
                let ranges = map.ranges();
                for range in ranges {
                    assert!(range.start <= range.end && range.end < SLOTS, "{range:?}");
                }
                for pair in ranges.windows(2) {
                    assert!(pair[0].end < pair[1].start, "sorted and disjoint: {pair:?}");
                }
            }
        }
        Reply::Error(text) => match ClusterReply::classify(text, &sender) {
            ClusterReply::Moved { slot, .. } | ClusterReply::Ask { slot, .. } => {
                assert!(slot < SLOTS)
            }
            _ => {}
        },
        _ => {}
    }
}

/// Decodes replies into `out` until the buffer holds only an incomplete one, or an error.
fn decode_all(
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    out: &mut Vec<Reply>,
) -> Result<(), RespError> {
    loop {
        let before = buf.clone();
        match decoder.decode(buf)? {
            Some(reply) => {
                assert!(buf.len() < before.len(), "a reply uses bytes");
                assert!(
                    before.len() - buf.len() <= LIMITS.max_reply_bytes,
                    "a reply within the limit"
                );
                assert!(before.ends_with(buf), "a reply is taken from the front");
                out.push(reply);
            }
            None => {
                assert_eq!(*buf, before, "an incomplete reply is left in place");
                assert!(before.len() <= LIMITS.max_reply_bytes, "incomplete, yet over the limit");
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
