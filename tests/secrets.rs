//! Secrets (the Redis password, the publish token) never appear in `--help`, in logs, in
//! `/health`, `/metrics` or error replies.

mod support;

use std::process::{Command, Stdio};

use support::*;

const PASSWORD: &str = "topsecret";
const TOKEN: &str = "tok3n";

/// Redis on port 1: nothing listens there, so the link fails and says why.
fn redis_url() -> String {
    format!("redis://:{PASSWORD}@127.0.0.1:1")
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [PASSWORD, TOKEN] {
        assert!(
            !text.contains(secret),
            "{what} shows the secret {secret:?}:\n{text}"
        );
    }
}

/// Runs the binary to completion with the secrets in its environment.
fn run_herald(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("PUBSUB_CACHE_URL", redis_url())
        .env("REDIS_URL", redis_url())
        .env("PUBLISH_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run herald");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn help_and_version_do_not_show_secrets_from_the_environment() {
    let (code, help) = run_herald(&["--help"]);
    assert_eq!(code, Some(0), "{help}");
    assert!(
        help.contains("PUBSUB_CACHE_URL") && help.contains("PUBLISH_TOKEN"),
        "{help}"
    );
    assert_no_secret("--help", &help);
    let (code, short_help) = run_herald(&["-h"]);
    assert_eq!(code, Some(0));
    assert_no_secret("-h", &short_help);
    let (code, version) = run_herald(&["--version"]);
    assert_eq!(code, Some(0));
    assert_no_secret("--version", &version);
}

#[test]
fn a_bad_redis_url_is_reported_without_its_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .env(
            "PUBSUB_CACHE_URL",
            format!("redis://:{PASSWORD}@127.0.0.1:notaport"),
        )
        .env_remove("RUST_LOG")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run herald");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid Redis URL"), "{stderr}");
    assert_no_secret("the configuration error", &stderr);
}

#[test]
fn startup_log_health_metrics_and_replies_do_not_show_secrets() {
    let herald = Herald::with(
        &[],
        &[("PUBSUB_CACHE_URL", &redis_url()), ("PUBLISH_TOKEN", TOKEN)],
    );
    wait_until("the Redis failure to show in /health", || {
        get(herald.port, "/health").json()["redis_error"].is_string()
    });
    let health = get(herald.port, "/health");
    assert_eq!(health.json()["publish_token_required"], true);
    assert_no_secret("/health", &health.body);
    assert_no_secret("/metrics", &get(herald.port, "/metrics").body);

    // Refused publishes: without the token (401), with it while Redis is down (503).
    let unauthorized = post(herald.port, "/events?event_type=x", None, "");
    assert_eq!(unauthorized.status, 401);
    assert_no_secret("the 401 reply", &format!("{unauthorized:?}"));
    let request = format!(
        "POST /events?event_type=x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
Authorization: Bearer {TOKEN}\r\n\r\n"
    );
    let unavailable = raw(herald.port, request.as_bytes());
    assert_eq!(unavailable.status, 503, "{unavailable:?}");
    assert_no_secret("the 503 reply", &format!("{unavailable:?}"));

    let log = herald.log();
    assert!(log.contains("listening on"), "{log}");
    assert!(log.contains("redis://127.0.0.1:1/0"), "{log}");
    assert_no_secret("the log", &log);
}

#[test]
fn a_malformed_request_carrying_the_token_does_not_log_it() {
    let herald = Herald::with(&[], &[("PUBLISH_TOKEN", TOKEN)]);
    // A request with the real token and a broken header line: the server logs a sample of
    // the bad input (its first bytes), which must not carry the credential. Any request may
    // carry the header; a short request line puts the whole token inside the sample.
    let request =
        format!("GET / HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nBroken header\r\n\r\n");
    let reply = raw(herald.port, request.as_bytes());
    assert_eq!(reply.status, 400, "{reply:?}");
    wait_until("the bad request to be logged", || {
        herald.log().contains("malformed request")
    });
    assert_no_secret("the log", &herald.log());
}
