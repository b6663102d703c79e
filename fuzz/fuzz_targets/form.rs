//! Form data (query strings and form bodies): `pairs` and `get`. Besides "no panic", checked
//! against a plain reference: split at `&` (empty pieces skipped) and the first `=`, `+` to space,
//! percent-decode, strict UTF-8. `pairs` fails exactly when some name or value is not UTF-8, and
//! otherwise yields those names and values, never a U+FFFD stand-in; `get` finds the first.
#![no_main]

use herald::http::form::{NotUtf8, get, pairs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let got: Result<Vec<(String, String)>, NotUtf8> =
        pairs(data).map(|p| p.map(|(k, v)| (k.into_owned(), v.into_owned())).collect());
    let expected: Result<Vec<(String, String)>, NotUtf8> = data
        .split(|&b| b == b'&')
        .filter(|piece| !piece.is_empty())
        .map(|piece| {
            let mut kv = piece.splitn(2, |&b| b == b'=');
            let name = kv.next().unwrap_or_default();
            Ok((strict(name)?, strict(kv.next().unwrap_or_default())?))
        })
        .collect();
    assert_eq!(got, expected);
    if let Ok(all) = &got {
        for (name, _) in all.iter().take(16) {
            let first = all.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            assert_eq!(get(data, name).expect("UTF-8").as_deref(), first);
        }
    }
});

fn strict(raw: &[u8]) -> Result<String, NotUtf8> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    String::from_utf8(percent_encoding::percent_decode(&spaced).collect()).map_err(|_| NotUtf8)
}
