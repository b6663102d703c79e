//! `application/x-www-form-urlencoded` decoding (query strings and form bodies), with `+` as
//! space and strict UTF-8: the `form_urlencoded` crate decodes, but replaces invalid UTF-8 with
//! U+FFFD; a publisher that sent broken bytes should hear about it instead.

use std::borrow::Cow;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("form data is not valid UTF-8 once percent-decoded")]
pub struct NotUtf8;

/// The name/value pairs of `input`, decoded. Fails if any decoded name or value would not be
/// UTF-8. Checking the whole input decoded at once is enough: pairs are split at literal ASCII
/// `&` and `=`, so every piece of valid UTF-8 is valid UTF-8 too.
pub fn pairs(input: &[u8]) -> Result<form_urlencoded::Parse<'_>, NotUtf8> {
    let decoded: Cow<[u8]> = percent_encoding::percent_decode(input).into();
    if std::str::from_utf8(&decoded).is_err() {
        return Err(NotUtf8);
    }
    Ok(form_urlencoded::parse(input))
}

/// The first value of `name`, if present.
pub fn get<'a>(input: &'a [u8], name: &str) -> Result<Option<Cow<'a, str>>, NotUtf8> {
    let [value] = get_all(input, [name])?;
    Ok(value)
}

/// The first value of each of `names`, in one pass over the input (a publish reads three
/// fields; decoding the query once per field was a measurable share of a publish's CPU).
pub fn get_all<'a, const N: usize>(
    input: &'a [u8],
    names: [&str; N],
) -> Result<[Option<Cow<'a, str>>; N], NotUtf8> {
    let mut found = [const { None }; N];
    let mut missing = N;
    for (name, value) in pairs(input)? {
        if missing == 0 {
            break;
        }
        if let Some(i) = names.iter().position(|&n| n == name)
            && found[i].is_none()
        {
            found[i] = Some(value);
            missing -= 1;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_decode_the_tutorials_curl_form() {
        let q = b"event_type=order&message=Order+%23123+placed";
        assert_eq!(get(q, "event_type").unwrap().as_deref(), Some("order"));
        assert_eq!(
            get(q, "message").unwrap().as_deref(),
            Some("Order #123 placed")
        );
        assert_eq!(get(q, "missing").unwrap(), None);
    }

    #[test]
    fn should_find_several_fields_in_one_pass_first_value_winning() {
        let q = b"message=a&event_type=t&message=b&x=%FF";
        assert_eq!(get_all(q, ["event_type", "message"]), Err(NotUtf8));
        let q = b"message=a&event_type=t&message=b";
        let [kind, message, channel] = get_all(q, ["event_type", "message", "channel"]).unwrap();
        assert_eq!(kind.as_deref(), Some("t"));
        assert_eq!(message.as_deref(), Some("a"));
        assert_eq!(channel, None);
    }

    #[test]
    fn should_decode_utf8_and_reject_broken_bytes() {
        assert_eq!(get(b"m=caf%C3%A9", "m").unwrap().as_deref(), Some("café"));
        assert_eq!(get(b"m=%FF", "m").map(|_| ()), Err(NotUtf8));
        assert_eq!(get(b"m=%C3", "m").map(|_| ()), Err(NotUtf8));
    }
}
