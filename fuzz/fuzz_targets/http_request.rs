//! HTTP requests: `parse_request` over a buffer of pipelined requests, then `route` and
//! `event_from` and `batch_from` on each. Besides "no panic":
//! - a complete request uses at least one byte and no more than the buffer holds;
//! - incomplete is never an error: the input cut at any point parses to `Ok(None)`, to the very
//!   request the whole input gives, or fails only if the whole input fails too;
//! - every reply head is one complete HTTP response (no header breaks out of its line).
#![no_main]

use herald::config::{Config, Limits};
use herald::http::parse::parse_request;
use herald::http::publish::{batch_from, event_from};
use herald::http::route::{Action, route};
use herald::static_files::StaticFiles;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits, so that inputs of a few KiB reach them.
    let limits = Limits {
        max_head_bytes: 1024,
        max_body_bytes: 256,
        ..Limits::default()
    };
    let config = Config::local(0);
    let statics = StaticFiles::new(None).expect("built-in files");

    let whole = parse_request(data, &limits);
    let cut = cut_point(data);
    let prefix = parse_request(&data[..cut], &limits);
    match &prefix {
        Ok(Some(_)) => assert_eq!(prefix, whole, "complete at {cut}, differs in the whole"),
        Ok(None) => {}
        Err(e) => assert!(
            whole.is_err(),
            "cut at {cut} gave {e:?}, whole gave {whole:?}"
        ),
    }
    if let Ok(Some((_, used))) = &whole {
        assert!(
            0 < *used && *used <= data.len(),
            "used {used} of {}",
            data.len()
        );
        assert_eq!(
            parse_request(&data[..used - 1], &limits),
            Ok(None),
            "one byte short"
        );
    }

    // Pipelined: one request after another, as the reactor reads them.
    let mut pos = 0;
    while let Ok(Some((req, used))) = parse_request(&data[pos..], &limits) {
        assert!(0 < used && used <= data.len() - pos);
        pos += used;
        let _ = event_from(&req, None);
        let _ = batch_from(&req, 1000);
        if let Action::Reply(reply) = route(&req, &config, &statics) {
            let (head, _) = reply.for_head(true).encode(req.keep_alive, true);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let parsed = httparse::Response::new(&mut headers).parse(&head);
            assert_eq!(
                parsed,
                Ok(httparse::Status::Complete(head.len())),
                "{head:?}"
            );
        }
    }
});

/// A cut point that moves with every mutation of the input.
fn cut_point(data: &[u8]) -> usize {
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % (data.len() as u64 + 1)) as usize
}
