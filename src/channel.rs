//! Channel names: what a client may ask for, and where each channel lives in Redis.
//!
//! The default channel is `events`, the tutorial's: its Redis channel is `CHANNEL` (default
//! `events`). Channel `orders` travels on `<prefix>:orders` (prefix default `events`, so
//! `events:orders`, as the tutorial's tips suggest). Each channel's history is a capped Redis
//! stream at `<redis channel>:history`. On a Redis Cluster it is `{<redis channel>}:history`
//! instead (a hash tag), so that it shares the shard channel's slot and one script can
//! append and publish (`key_beside`).

use crate::event::EventId;

pub const DEFAULT: &str = "events";
/// Longest channel name.
pub const MAX_NAME_BYTES: usize = 64;
/// Most channels one connection may receive.
pub const MAX_PER_CONNECTION: usize = 256;

/// A channel with subscribers on this server: its slot in the fan-out table. Ids are reused
/// once a channel has no subscribers left.
pub type ChannelId = u32;

/// One channel a connection receives, and where the connection sits in its subscriber list
/// (so leaving the channel is a swap-remove, not a search).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub channel: ChannelId,
    pub slot: u32,
}

/// Names are 1-64 characters of letters, digits, `_`, `-` and `.`, not starting with `.`:
/// safe in a Redis key, a URL and a log line.
pub fn validate(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid channel name {:?}: use 1-{MAX_NAME_BYTES} letters, digits, '_', '-' or '.'",
            name.chars().take(80).collect::<String>()
        ))
    }
}

/// A comma-separated list of channels (`orders,deploys`); empty means the default channel.
pub fn parse_list(list: &str) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        validate(name)?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        if names.len() > MAX_PER_CONNECTION {
            return Err(format!(
                "at most {MAX_PER_CONNECTION} channels per connection"
            ));
        }
    }
    if names.is_empty() {
        names.push(DEFAULT.to_string());
    }
    Ok(names)
}

/// Channels a subscriber asks for, each with the id to resume after, if any.
pub type Wanted = Vec<(String, Option<EventId>)>;

/// `channels=orders,deploys` and `since=<id>` (every channel) or
/// `since=orders:<id>,deploys:<id>` (per channel; ids are per channel).
pub fn parse_wanted(channels: Option<&str>, since: Option<&str>) -> Result<Wanted, String> {
    let names = parse_list(channels.unwrap_or(""))?;
    let mut wanted: Wanted = names.into_iter().map(|n| (n, None)).collect();
    let Some(since) = since.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(wanted);
    };
    let bad = || format!("invalid since {since:?}: an event id, or channel:id pairs");
    if !since.contains(':') {
        let id: EventId = since.parse().map_err(|_| bad())?;
        for entry in &mut wanted {
            entry.1 = Some(id);
        }
        return Ok(wanted);
    }
    for pair in since.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, id) = pair.split_once(':').ok_or_else(bad)?;
        let id: EventId = id.parse().map_err(|_| bad())?;
        if let Some(entry) = wanted.iter_mut().find(|(n, _)| n == name) {
            entry.1 = Some(id);
        }
    }
    Ok(wanted)
}

/// Maps local channel names to Redis channel names and stream keys, and back.
#[derive(Debug, Clone)]
pub struct RedisNames {
    /// Redis channel of the default channel (`CHANNEL`).
    pub default_channel: String,
    /// Prefix of every other channel (`CHANNEL_PREFIX`).
    pub prefix: String,
}

impl RedisNames {
    pub fn channel(&self, name: &str) -> String {
        if name == DEFAULT {
            self.default_channel.clone()
        } else {
            format!("{}:{name}", self.prefix)
        }
    }

    pub fn stream_key(&self, name: &str) -> String {
        format!("{}:history", self.channel(name))
    }

    /// The local channel a Redis channel carries, if it is one of ours.
    pub fn local<'a>(&self, redis_channel: &'a str) -> Option<&'a str> {
        if redis_channel == self.default_channel {
            return Some(DEFAULT);
        }
        let name = redis_channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(':')?;
        validate(name).ok().map(|_| name)
    }
}

// ---- Redis Cluster: which names share a slot ---------------------------------------------

/// The part of a key that is hashed: the bytes between the first `{` and the first `}` after
/// it, if there is at least one; else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = &key[open + 1..];
    match rest.iter().position(|&b| b == b'}') {
        Some(close) if close > 0 => &rest[..close],
        _ => key,
    }
}

/// A key that lives in the same slot as `channel`: `{channel}:suffix`, or `channel:suffix`
/// when the channel already carries a hash tag (wrapping it again would hash `{` and miss).
/// `None` for a channel with braces but no tag (`a{}b`, `a}b`): no key can share its slot,
/// as a tag never holds a `}` (`check_shard_channel` refuses such names at start).
pub fn key_beside(channel: &str, suffix: &str) -> Option<String> {
    let tag = hash_tag(channel.as_bytes());
    if tag.len() < channel.len() {
        Some(format!("{channel}:{suffix}"))
    } else if channel.contains(['{', '}']) {
        None
    } else {
        Some(format!("{{{channel}}}:{suffix}"))
    }
}

/// A prefix for keys that must all live in one slot (occupancy's, whose scripts read every
/// replica's keys): the prefix as a hash tag, `{events}`, unless it already holds one.
pub fn tagged_prefix(prefix: &str) -> String {
    if hash_tag(prefix.as_bytes()).len() < prefix.len() {
        prefix.to_string()
    } else {
        format!("{{{prefix}}}")
    }
}

/// A Redis channel name (`CHANNEL`, or `CHANNEL_PREFIX` and a channel) usable in cluster
/// mode: its history stream must be able to share its slot (`key_beside`).
pub fn check_shard_channel(channel: &str) -> Result<(), String> {
    match key_beside(channel, "history") {
        Some(_) => Ok(()),
        None => Err(format!(
            "{channel:?} has braces but no hash tag ({{...}} with something inside): in cluster mode its history could not share its slot"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_validate_names() {
        for good in ["orders", "a", "orders.eu-1", "X_9", &"a".repeat(64)] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "a b",
            "a:b",
            "a*",
            "ü",
            &"a".repeat(65),
            "a\n",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn should_parse_lists_with_the_default_when_empty() {
        assert_eq!(parse_list("").unwrap(), vec!["events"]);
        assert_eq!(
            parse_list("orders, deploys,orders").unwrap(),
            vec!["orders", "deploys"]
        );
        assert!(parse_list("orders,bad name").is_err());
    }

    #[test]
    fn should_parse_resume_points() {
        let id = |ms| Some(EventId { ms, seq: 0 });
        assert_eq!(
            parse_wanted(None, None).unwrap(),
            vec![("events".into(), None)]
        );
        assert_eq!(
            parse_wanted(Some("a,b"), Some("7-0")).unwrap(),
            vec![("a".into(), id(7)), ("b".into(), id(7))]
        );
        assert_eq!(
            parse_wanted(Some("a,b"), Some("b:9-0,zzz:1")).unwrap(),
            vec![("a".into(), None), ("b".into(), id(9))]
        );
        assert!(parse_wanted(Some("a"), Some("nope")).is_err());
        assert!(parse_wanted(Some("a"), Some("a:x")).is_err());
    }

    #[test]
    fn should_map_names_to_redis_and_back() {
        let names = RedisNames {
            default_channel: "events".into(),
            prefix: "events".into(),
        };
        assert_eq!(names.channel("events"), "events");
        assert_eq!(names.channel("orders"), "events:orders");
        assert_eq!(names.stream_key("orders"), "events:orders:history");
        assert_eq!(names.local("events"), Some("events"));
        assert_eq!(names.local("events:orders"), Some("orders"));
        assert_eq!(names.local("other"), None);
        assert_eq!(names.local("events:a:b"), None);
    }
}
