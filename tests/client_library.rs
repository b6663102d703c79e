//! `GET /herald.js`, the client library: a JavaScript module, built in and from
//! `STATIC_DIR`, revalidated like the page, importable from other origins. (What it does is
//! tested in Chromium: tests/browser/client.test.js.)

mod support;

use support::*;

/// The library as the repository holds it (what `build.rs` builds in).
const SOURCE: &str = include_str!("../static/herald.js");

fn assert_library(reply: &HttpReply, body: &str) {
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(
        reply.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(
        reply.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(reply.body, body);
}

#[test]
fn herald_js_is_served_built_in_as_a_javascript_module() {
    let herald = Herald::start();
    let p = herald.port;
    let js = get(p, "/herald.js");
    assert_library(&js, SOURCE);
    assert!(js.body.contains("export function connect("));
    // The page's copy under /static/ is the same file (it imports /herald.js).
    assert_eq!(get(p, "/static/herald.js").body, SOURCE);
    let post = post(p, "/herald.js", None, "");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD"));
}

#[test]
fn herald_js_is_served_from_static_dir() {
    let dir = std::env::temp_dir().join(format!("herald-client-lib-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let edited = "export function connect() { return 'edited'; }\n";
    std::fs::write(dir.join("herald.js"), edited).unwrap();
    let herald = Herald::with(&["--static-dir", dir.to_str().unwrap()], &[]);
    assert_library(&get(herald.port, "/herald.js"), edited);
    std::fs::remove_file(dir.join("herald.js")).unwrap();
    assert_eq!(get(herald.port, "/herald.js").status, 404);
    std::fs::remove_dir_all(&dir).unwrap();
}
