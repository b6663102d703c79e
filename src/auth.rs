//! Who may read and publish what: JSON Web Tokens minted by the application's backend and
//! verified here, with no call to anyone per connection. Socket-free: the router asks
//! `Auth::verify` and gets a `Grant` or a `Refusal`; the reactor keeps each connection's
//! grant in a `GrantTable` and closes it when the grant expires.
//!
//! What a token may say (claims): `exp` (required: no token lives forever), `nbf` and `iat`
//! (honoured when present), `sub` (the identity, for logs: never the token), `channels` (the
//! patterns its holder may subscribe to) and `publish` (the patterns it may publish to). A
//! pattern is an exact channel name, or a prefix ending in `*` (`orders.*` matches
//! `orders.eu`; `*` alone matches every channel).
//!
//! The algorithm is fixed by the configuration, never by the token: `AUTH_JWT_SECRET` allows
//! HS256 with that secret, `AUTH_JWT_PUBLIC_KEY` allows RS256 or ES256 (whichever the key
//! is) with that key. A token's `alg` only chooses among the configured ones, and each is
//! tied to its own key, so `alg: none`, an HS256 token signed with the public key as the
//! secret (algorithm confusion), or any other algorithm is refused before any signature is
//! looked at. Signatures, `exp`, `nbf`, `iss` and `aud` are checked by `jsonwebtoken` (with
//! the pure-Rust RustCrypto backend), not by hand.
//!
//! No clock leeway: a token is refused from its `exp` second on, and until its `nbf`/`iat`.
//! Herald and the backend that mints tokens must keep their clocks in sync (NTP).

use std::collections::HashSet;
use std::path::Path;
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::channel;

/// Most patterns one claim may list: as many channels as one connection may receive.
pub const MAX_PATTERNS: usize = channel::MAX_PER_CONNECTION;

// ---- patterns -----------------------------------------------------------------------------

/// A set of channels: an exact name, a prefix (`orders.*`), or every channel (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    All,
    Prefix(Box<str>),
    Exact(Box<str>),
}

impl Pattern {
    pub fn matches(&self, channel: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Prefix(prefix) => channel.starts_with(&**prefix),
            Pattern::Exact(name) => channel == &**name,
        }
    }
}

impl FromStr for Pattern {
    type Err = String;

    /// `*` and the prefix before a trailing `*` follow the channel name rules (a prefix may
    /// be any start of a valid name); a `*` anywhere else is an error, not a wildcard.
    fn from_str(text: &str) -> Result<Pattern, String> {
        let bad = || {
            format!("invalid channel pattern {text:?}: a channel name, or a prefix ending in '*'")
        };
        match text.strip_suffix('*') {
            Some("") => Ok(Pattern::All),
            Some(prefix) if !prefix.contains('*') => {
                channel::validate(prefix).map_err(|_| bad())?;
                Ok(Pattern::Prefix(prefix.into()))
            }
            Some(_) => Err(bad()),
            None => {
                channel::validate(text).map_err(|_| bad())?;
                Ok(Pattern::Exact(text.into()))
            }
        }
    }
}

/// Channel patterns, from a claim or from `PUBLIC_CHANNELS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Patterns(Box<[Pattern]>);

impl Patterns {
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Patterns, String> {
        if list.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} channel patterns"));
        }
        list.iter()
            .map(|s| s.as_ref().trim().parse())
            .collect::<Result<Vec<Pattern>, String>>()
            .map(|v| Patterns(v.into_boxed_slice()))
    }

    pub fn matches(&self, channel: &str) -> bool {
        self.0.iter().any(|p| p.matches(channel))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// ---- grants and refusals ------------------------------------------------------------------

/// What a verified token allows: who (`sub`), until when (`exp`, Unix seconds), which
/// channels it may receive and which it may publish to. Kept per connection (shared among
/// connections with equal grants, see `GrantTable`), so it holds only what is checked later.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    sub: Option<Box<str>>,
    exp: u64,
    channels: Patterns,
    publish: Patterns,
}

impl Grant {
    pub fn new(sub: Option<&str>, exp: u64, channels: Patterns, publish: Patterns) -> Grant {
        Grant {
            sub: sub.map(Into::into),
            exp,
            channels,
            publish,
        }
    }

    /// The identity for log lines (`-` when the token names none).
    pub fn sub(&self) -> &str {
        self.sub.as_deref().unwrap_or("-")
    }

    /// Expiry, Unix seconds.
    pub fn exp(&self) -> u64 {
        self.exp
    }

    /// True from the `exp` second on (RFC 7519 4.1.4: "on or after").
    pub fn is_expired(&self, now_unix: u64) -> bool {
        now_unix >= self.exp
    }

    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.channels.matches(channel)
    }

    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.matches(channel)
    }
}

/// Why a token or a request was refused: the `reason` label of
/// `herald_auth_refusals_total` and the word in log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No token, and what was asked for is not public.
    Missing,
    /// Not a JWT (three base64url parts, JSON header and claims).
    Malformed,
    /// An algorithm the configuration does not allow (`none`, HS256 with only a public key..).
    Algorithm,
    /// The signature does not verify with the configured key.
    Signature,
    /// Past its `exp`.
    Expired,
    /// Before its `nbf` or `iat`.
    NotYetValid,
    /// `iss` missing or not `AUTH_JWT_ISSUER`.
    Issuer,
    /// `aud` missing or not `AUTH_JWT_AUDIENCE` (or present when none is configured).
    Audience,
    /// `exp` missing, or a claim of the wrong type or with an invalid pattern.
    Claims,
    /// A valid token that does not cover a channel asked for.
    Channel,
    /// A valid token whose `publish` claim does not cover the event's channel.
    Publish,
    /// A refresh with a token for another `sub`.
    Subject,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm => "algorithm",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Issuer => "issuer",
            Refusal::Audience => "audience",
            Refusal::Claims => "claims",
            Refusal::Channel => "channel",
            Refusal::Publish => "publish",
            Refusal::Subject => "subject",
        }
    }

    /// 401: no usable identity; 403: a valid identity without the right.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Channel | Refusal::Publish => 403,
            _ => 401,
        }
    }

    /// What the client is told (never the token, never which check of the key failed
    /// beyond the reason).
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "a token is required for this channel",
            Refusal::Malformed => "token is not a valid JWT",
            Refusal::Algorithm => "token algorithm not allowed",
            Refusal::Signature => "token signature does not verify",
            Refusal::Expired => "token expired",
            Refusal::NotYetValid => "token not valid yet",
            Refusal::Issuer => "token issuer not accepted",
            Refusal::Audience => "token audience not accepted",
            Refusal::Claims => "token claims invalid",
            Refusal::Channel => "token does not cover these channels",
            Refusal::Publish => "token does not allow publishing to this channel",
            Refusal::Subject => "refresh token is for another subject",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A refused request: why, whose token (if it verified), and which channels were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub refusal: Refusal,
    pub sub: Option<Box<str>>,
    pub channels: Vec<String>,
}

impl Denial {
    pub fn new(refusal: Refusal) -> Denial {
        Denial {
            refusal,
            sub: None,
            channels: Vec::new(),
        }
    }

    /// For a log line: the reason, the subject and the channels, never the token.
    pub fn describe(&self) -> String {
        let sub = self.sub.as_deref().unwrap_or("-");
        let mut text = format!("auth refused ({}) sub {sub:?}", self.refusal);
        // Up to 256 names of 64 bytes could be refused at once: a few make the point.
        const SHOWN: usize = 5;
        if !self.channels.is_empty() {
            let shown = &self.channels[..self.channels.len().min(SHOWN)];
            text.push_str(&format!(" channels {shown:?}"));
            if self.channels.len() > SHOWN {
                text.push_str(&format!(" and {} more", self.channels.len() - SHOWN));
            }
        }
        text
    }
}

// ---- configuration and verification -------------------------------------------------------

/// The auth settings as configured (env and flags), before the key is loaded.
#[derive(Clone, Default)]
pub struct AuthSettings {
    pub secret: Option<String>,
    pub public_key: Option<std::path::PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub public_channels: Vec<String>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthConfigError {
    #[error("AUTH_JWT_PUBLIC_KEY {0}: {1}")]
    PublicKey(String, String),
    #[error("AUTH_JWT_SECRET: {0}")]
    Secret(String),
    #[error("PUBLIC_CHANNELS: {0}")]
    PublicChannels(String),
}

/// One allowed algorithm and the key it must verify with.
#[derive(Clone)]
struct Verifier {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// Token verification, built once from the configuration. `None` from `from_settings`
/// means auth is off: everything is open, as before auth existed.
#[derive(Clone)]
pub struct Auth {
    verifiers: Vec<Verifier>,
    public: Patterns,
}

impl std::fmt::Debug for Auth {
    /// Algorithms and public channels only: never a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<Algorithm> = self.verifiers.iter().map(|v| v.algorithm).collect();
        f.debug_struct("Auth")
            .field("algorithms", &algorithms)
            .field("public", &self.public)
            .finish()
    }
}

/// The claims Herald reads; others (`jti`, `iss`, `aud` for `jsonwebtoken`) are allowed.
#[derive(Debug, Deserialize, Serialize)]
pub struct Claims {
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Auth {
    /// Loads the key(s). `Ok(None)`: no key configured, auth is off.
    pub fn from_settings(settings: &AuthSettings) -> Result<Option<Auth>, AuthConfigError> {
        let mut verifiers = Vec::new();
        if let Some(secret) = settings.secret.as_deref().filter(|s| !s.is_empty()) {
            // HS256 with a short secret can be brute-forced offline from any one token.
            if secret.len() < 32 {
                return Err(AuthConfigError::Secret(
                    "use at least 32 bytes (e.g. `openssl rand -base64 32`)".into(),
                ));
            }
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| AuthConfigError::Secret(e.to_string()))?;
            verifiers.push(Verifier::new(Algorithm::HS256, key, settings));
        }
        if let Some(path) = &settings.public_key {
            let (algorithm, key) = load_public_key(path)?;
            verifiers.push(Verifier::new(algorithm, key, settings));
        }
        let public =
            Patterns::parse(&settings.public_channels).map_err(AuthConfigError::PublicChannels)?;
        if verifiers.is_empty() {
            return Ok(None);
        }
        Ok(Some(Auth { verifiers, public }))
    }

    /// Channels anyone may subscribe to without a token.
    pub fn is_public(&self, channel: &str) -> bool {
        self.public.matches(channel)
    }

    /// Checks a token completely: algorithm (chosen among the configured ones only),
    /// signature, `exp`, `nbf`, `iat`, `iss`, `aud`, and the patterns' syntax.
    pub fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        let verifier = self.verifier_for(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|e| refusal_of(e.kind()))?;
        let claims = data.claims;
        if claims.iat.is_some_and(|iat| iat > unix_now()) {
            return Err(Refusal::NotYetValid);
        }
        let channels = Patterns::parse(&claims.channels).map_err(|_| Refusal::Claims)?;
        let publish = Patterns::parse(&claims.publish).map_err(|_| Refusal::Claims)?;
        Ok(Grant::new(
            claims.sub.as_deref(),
            claims.exp,
            channels,
            publish,
        ))
    }

    /// The verifier for the token's `alg`, if that algorithm is configured. The header is
    /// read here only to choose; `jsonwebtoken` parses and checks it again.
    fn verifier_for(&self, token: &str) -> Result<&Verifier, Refusal> {
        let header = token.split('.').next().unwrap_or("");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| Refusal::Malformed)?;
        #[derive(Deserialize)]
        struct AlgOnly {
            alg: String,
        }
        let alg: AlgOnly = serde_json::from_slice(&bytes).map_err(|_| Refusal::Malformed)?;
        self.verifiers
            .iter()
            .find(|v| algorithm_name(v.algorithm) == alg.alg)
            .ok_or(Refusal::Algorithm)
    }
}

impl Verifier {
    fn new(algorithm: Algorithm, key: DecodingKey, settings: &AuthSettings) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &settings.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if let Some(audience) = &settings.audience {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Verifier {
            algorithm,
            key,
            validation,
        }
    }
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "unsupported",
    }
}

/// RS256 for an RSA public key, ES256 for an EC (P-256) one: the key decides, once.
fn load_public_key(path: &Path) -> Result<(Algorithm, DecodingKey), AuthConfigError> {
    let bad = |why: String| AuthConfigError::PublicKey(path.display().to_string(), why);
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((Algorithm::ES256, key));
    }
    Err(bad("not a PEM RSA or EC (P-256) public key".into()))
}

fn refusal_of(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => Refusal::Signature,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidIssuer => Refusal::Issuer,
        ErrorKind::InvalidAudience => Refusal::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Refusal::Issuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Refusal::Audience,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject
        | ErrorKind::Json(_) => Refusal::Claims,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::MissingAlgorithm => Refusal::Algorithm,
        _ => Refusal::Malformed,
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---- minting (herald token, tests) --------------------------------------------------------

/// What `herald token` puts in a token.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub sub: Option<String>,
    pub channels: Vec<String>,
    pub publish: Vec<String>,
    pub ttl: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// An HS256 token for `spec`, valid from now for `spec.ttl`. Patterns are checked first, so
/// a typo is an error here rather than a token Herald refuses later.
pub fn mint_hs256(secret: &[u8], spec: &TokenSpec) -> Result<String, String> {
    Patterns::parse(&spec.channels)?;
    Patterns::parse(&spec.publish)?;
    let now = unix_now();
    let claims = Claims {
        exp: now + spec.ttl.as_secs().max(1),
        nbf: None,
        iat: Some(now),
        sub: spec.sub.clone(),
        channels: spec.channels.clone(),
        publish: spec.publish.clone(),
        iss: spec.issuer.clone(),
        aud: spec.audience.clone(),
    };
    let key = EncodingKey::from_secret(secret).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|e| e.to_string())
}

/// `90`, `90s`, `15m`, `1h`, `7d`: a lifetime for `--ttl`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid ttl {text:?}: e.g. 90s, 15m, 1h, 7d"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid ttl unit {unit:?}: s, m, h or d")),
    };
    match n.checked_mul(unit_secs) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!("invalid ttl {text:?}: must be positive")),
    }
}

// ---- grants held by connections ------------------------------------------------------------

/// The grant of each authenticated connection, by slab key, kept beside the connections
/// rather than in `Conn`: with auth off nothing is allocated and `Conn` keeps its size. Equal
/// grants (one token on many tabs, a backend that mints one token per user) are shared, so an
/// authenticated idle connection costs one slot here (8 bytes: an `Rc`), not a copy of its
/// patterns. The slots are a vector indexed by slab key (slab keys stay below the most
/// connections ever open at once), which costs less than a map keyed by connection.
///
/// Expiry lives in the grant (`exp`) and is checked by the reactor's once-a-second sweep
/// through `expired`: no timer per connection.
#[derive(Debug, Default)]
pub struct GrantTable {
    by_conn: Vec<Option<Rc<Grant>>>,
    holders: usize,
    shared: HashSet<Rc<Grant>>,
}

impl GrantTable {
    /// Gives `key` this grant (replacing any it had, as a refresh does).
    pub fn attach(&mut self, key: usize, grant: Grant) {
        let shared = match self.shared.get(&grant) {
            Some(existing) => Rc::clone(existing),
            None => {
                let fresh = Rc::new(grant);
                self.shared.insert(Rc::clone(&fresh));
                fresh
            }
        };
        if key >= self.by_conn.len() {
            self.by_conn.resize(key + 1, None);
        }
        match self.by_conn[key].replace(shared) {
            Some(old) => self.release(old),
            None => self.holders += 1,
        }
    }

    pub fn get(&self, key: usize) -> Option<&Grant> {
        self.by_conn.get(key)?.as_deref()
    }

    /// The connection is gone (or lost its grant): forget it.
    pub fn detach(&mut self, key: usize) {
        if let Some(old) = self.by_conn.get_mut(key).and_then(Option::take) {
            self.holders -= 1;
            self.release(old);
        }
    }

    /// A grant no connection holds any more leaves the shared set.
    fn release(&mut self, grant: Rc<Grant>) {
        // Held by `grant` and by the shared set: nobody else.
        if Rc::strong_count(&grant) == 2 {
            self.shared.remove(&*grant);
        }
    }

    /// Connections whose grant has expired at `now_unix`, appended to `out`.
    pub fn expired(&self, now_unix: u64, out: &mut Vec<usize>) {
        if self.holders == 0 {
            return;
        }
        out.extend(self.by_conn.iter().enumerate().filter_map(|(key, slot)| {
            slot.as_ref()
                .is_some_and(|g| g.is_expired(now_unix))
                .then_some(key)
        }));
    }

    /// Connections holding a grant.
    pub fn len(&self) -> usize {
        self.holders
    }

    pub fn is_empty(&self) -> bool {
        self.holders == 0
    }

    /// Distinct grants held (for tests and the memory figures).
    pub fn distinct(&self) -> usize {
        self.shared.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn settings() -> AuthSettings {
        AuthSettings {
            secret: Some(SECRET.into()),
            ..AuthSettings::default()
        }
    }

    fn auth(settings: &AuthSettings) -> Auth {
        Auth::from_settings(settings).unwrap().unwrap()
    }

    fn sign(header: &Header, claims: &serde_json::Value, secret: &str) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        jsonwebtoken::encode(header, claims, &key).unwrap()
    }

    fn hs256(claims: serde_json::Value) -> String {
        sign(&Header::new(Algorithm::HS256), &claims, SECRET)
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn should_match_exact_prefix_and_all_patterns() {
        let p = Patterns::parse(&["orders.*", "news", "*x"]);
        assert!(p.is_err(), "a star in the middle is no pattern");
        let p = Patterns::parse(&["orders.*", "news"]).unwrap();
        assert!(p.matches("orders.eu"));
        assert!(p.matches("orders."));
        assert!(!p.matches("orders"));
        assert!(p.matches("news"));
        assert!(!p.matches("newsroom"));
        assert!(Patterns::parse(&["*"]).unwrap().matches("anything"));
        assert!(!Patterns::default().matches("events"));
        for bad in ["", "a b", "**", "a*b*", ".x"] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn should_be_off_without_a_key() {
        assert!(
            Auth::from_settings(&AuthSettings::default())
                .unwrap()
                .is_none()
        );
        let short = AuthSettings {
            secret: Some("short".into()),
            ..AuthSettings::default()
        };
        assert!(matches!(
            Auth::from_settings(&short),
            Err(AuthConfigError::Secret(_))
        ));
    }

    #[test]
    fn should_grant_what_a_valid_token_says() {
        let a = auth(&settings());
        let exp = unix_now() + 60;
        let token = hs256(serde_json::json!({
            "exp": exp, "sub": "alice", "channels": ["orders.*"], "publish": ["orders.eu"]
        }));
        let grant = a.verify(&token).unwrap();
        assert_eq!(grant.sub(), "alice");
        assert_eq!(grant.exp(), exp);
        assert!(grant.may_subscribe("orders.us"));
        assert!(!grant.may_subscribe("billing"));
        assert!(grant.may_publish("orders.eu"));
        assert!(!grant.may_publish("orders.us"));
        assert!(!grant.is_expired(exp - 1));
        assert!(grant.is_expired(exp));
    }

    #[test]
    fn should_refuse_every_bad_token_with_its_reason() {
        let a = auth(&AuthSettings {
            issuer: Some("shop".into()),
            audience: Some("herald".into()),
            ..settings()
        });
        let now = unix_now();
        let good = serde_json::json!({"exp": now + 60, "iss": "shop", "aud": "herald"});
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            c
        };
        let without = |k: &str| {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove(k);
            c
        };
        assert!(a.verify(&hs256(good.clone())).is_ok());
        let none_token = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(good.to_string().as_bytes())
        );
        let cases: Vec<(String, Refusal)> = vec![
            ("".into(), Refusal::Missing),
            ("not a token".into(), Refusal::Malformed),
            (none_token, Refusal::Algorithm),
            (
                sign(&Header::new(Algorithm::HS384), &good, SECRET),
                Refusal::Algorithm,
            ),
            (
                sign(
                    &Header::new(Algorithm::HS256),
                    &good,
                    "another secret, 32 bytes long!!",
                ),
                Refusal::Signature,
            ),
            (hs256(with("exp", (now - 1).into())), Refusal::Expired),
            (hs256(with("nbf", (now + 60).into())), Refusal::NotYetValid),
            (hs256(with("iat", (now + 60).into())), Refusal::NotYetValid),
            (hs256(with("iss", "other".into())), Refusal::Issuer),
            (hs256(without("iss")), Refusal::Issuer),
            (hs256(with("aud", "other".into())), Refusal::Audience),
            (hs256(without("aud")), Refusal::Audience),
            (hs256(without("exp")), Refusal::Claims),
            (hs256(with("channels", "orders".into())), Refusal::Claims),
            (
                hs256(with("channels", serde_json::json!(["a*b"]))),
                Refusal::Claims,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(a.verify(&token), Err(want), "{token}");
        }
    }

    #[test]
    fn should_refuse_hs256_when_only_a_public_key_is_configured() {
        // Algorithm confusion: the attacker signs HS256 with the (public) key file as secret.
        let dir = std::env::temp_dir().join(format!("herald-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ec.pem");
        // A P-256 public key (SPKI PEM), generated once with openssl.
        let pem = "-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8HF3/vUySRFc482t4WRUrzs6Tkk2\n\
I4I+dMOsCmMK2udZaCsxvcgxMZ2H4JNjGb8aVpQDftkzkBVwX7S8G0437w==\n\
-----END PUBLIC KEY-----\n";
        std::fs::write(&path, pem).unwrap();
        let a = auth(&AuthSettings {
            public_key: Some(path.clone()),
            ..AuthSettings::default()
        });
        assert!(format!("{a:?}").contains("ES256"), "{a:?}");
        let forged = sign(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": unix_now() + 60}),
            pem,
        );
        assert_eq!(a.verify(&forged), Err(Refusal::Algorithm));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn should_mint_tokens_that_verify() {
        let spec = TokenSpec {
            sub: Some("bob".into()),
            channels: vec!["orders.*".into()],
            publish: vec!["orders.eu".into()],
            ttl: Duration::from_secs(3600),
            ..TokenSpec::default()
        };
        let token = mint_hs256(SECRET.as_bytes(), &spec).unwrap();
        let grant = auth(&settings()).verify(&token).unwrap();
        assert_eq!(grant.sub(), "bob");
        assert!(grant.may_subscribe("orders.x") && grant.may_publish("orders.eu"));
        let bad = TokenSpec {
            channels: vec!["a b".into()],
            ..spec
        };
        assert!(mint_hs256(SECRET.as_bytes(), &bad).is_err());
    }

    #[test]
    fn should_describe_a_denial_briefly_without_the_token() {
        let denial = Denial {
            refusal: Refusal::Channel,
            sub: Some("alice".into()),
            channels: (0..9).map(|i| format!("ch{i}")).collect(),
        };
        assert_eq!(
            denial.describe(),
            "auth refused (channel) sub \"alice\" channels [\"ch0\", \"ch1\", \"ch2\", \"ch3\", \"ch4\"] and 4 more"
        );
    }

    #[test]
    fn should_parse_ttls() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "0", "1w", "h", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn should_share_equal_grants_and_free_them_with_the_last_holder() {
        let grant = |exp| Grant::new(Some("a"), exp, Patterns::default(), Patterns::default());
        let mut table = GrantTable::default();
        table.attach(1, grant(100));
        table.attach(2, grant(100));
        table.attach(3, grant(200));
        assert_eq!((table.len(), table.distinct()), (3, 2));
        let mut expired = Vec::new();
        table.expired(150, &mut expired);
        expired.sort();
        assert_eq!(expired, [1, 2]);
        table.detach(1);
        assert_eq!(table.distinct(), 2, "key 2 still holds it");
        table.attach(2, grant(300)); // a refresh
        assert_eq!((table.len(), table.distinct()), (2, 2));
        table.detach(2);
        table.detach(3);
        table.detach(3);
        assert!(table.is_empty());
        assert_eq!(table.distinct(), 0);
    }
}
