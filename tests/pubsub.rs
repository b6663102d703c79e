//! Embedded mode: every WebSocket client gets every event, in order, whichever way it was
//! published (the tutorial's curl form, a form body, a JSON body).

mod support;

use support::*;

#[test]
fn two_clients_get_every_event_in_order() {
    let herald = Herald::start();
    let alice = ws_connect(herald.port, "/ws");
    let bob = ws_connect(herald.port, "/ws");
    wait_until("both clients counted", || {
        get(herald.port, "/health").json()["websockets"] == 2
    });

    every_client_gets_every_event_in_order(herald.port, &mut [alice, bob], 2);
}

#[test]
fn health_reports_the_broker_and_connection_counts() {
    let herald = Herald::start();
    let _client = ws_connect(herald.port, "/ws");
    let health = get(herald.port, "/health");
    assert_eq!(health.status, 200);
    let body = health.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["broker"], "embedded");
    assert_eq!(body["websockets"], 1);
    assert!(body["connections"].as_u64().unwrap() >= 2);
}

#[test]
fn a_client_that_left_no_longer_counts() {
    let herald = Herald::start();
    let mut gone = ws_connect(herald.port, "/ws");
    let mut stays = ws_connect(herald.port, "/ws");
    gone.close(None).unwrap();
    let _ = close_code(&mut gone);
    drop(gone);
    wait_until("the closed client to be reaped", || {
        get(herald.port, "/health").json()["websockets"] == 1
    });
    let reply = publish(herald.port, "x", "y");
    assert_eq!(reply["receivers"], 1);
    assert_eq!(next_event(&mut stays)["type"], "x");
}

#[test]
fn serves_the_page_and_its_assets() {
    let herald = Herald::start();
    let page = get(herald.port, "/");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert!(page.body.contains("id=\"status\""));
    let js = get(herald.port, "/static/app.js");
    assert_eq!(js.status, 200);
    assert!(
        js.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
}
