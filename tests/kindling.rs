//! Iterating on kindling, as far as this machine allows without Docker: the real binary run
//! with the environment the image sets (read from the Dockerfile), the page edited on disk
//! as `kindling sync` would, and the Dockerfile's build stage run outside Docker.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use support::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The runtime stage of the Dockerfile: the instructions after its last `FROM`, continuation
/// lines joined, comments dropped.
fn runtime_stage() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    lines.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines.split_off(last_from)
}

/// The image's environment: every `KEY=VALUE` of the runtime stage's `ENV` lines.
fn image_env() -> Vec<(String, String)> {
    runtime_stage()
        .iter()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|pairs| pairs.split_whitespace())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn env_value(env: &[(String, String)], key: &str) -> String {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("the image sets no {key}"))
}

/// Where the runtime stage copies `source` to (`COPY [--flags] source dest`).
fn copy_destination(source: &str) -> String {
    runtime_stage()
        .iter()
        .filter_map(|l| l.strip_prefix("COPY "))
        .map(|l| l.split_whitespace().filter(|w| !w.starts_with("--")))
        .find_map(|mut words| {
            let (from, to) = (words.next()?, words.next()?);
            (from == source || from.ends_with(&format!("/{source}"))).then(|| to.to_string())
        })
        .unwrap_or_else(|| panic!("the runtime stage copies no {source}"))
}

/// A copy of `static/` in a fresh folder, standing in for the image's `/app/static`.
fn copy_of_static(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(repo().join("static")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn the_image_serves_the_page_from_disk_where_kindling_syncs_it() {
    let env = image_env();
    assert_eq!(env_value(&env, "STATIC_DIR"), copy_destination("static"));
    assert!(runtime_stage().iter().any(|l| l == "WORKDIR /app"));
    // The binary sits where the ENTRYPOINT runs it, the path `kindling sync` replaces.
    let binary = copy_destination("target/release/herald");
    assert!(
        runtime_stage()
            .iter()
            .any(|l| l == &format!("ENTRYPOINT [\"{binary}\"]")),
        "ENTRYPOINT runs {binary}"
    );
}

/// The page part of the iterate loop: Herald started with the image's environment serves
/// the page from `STATIC_DIR`; a file written there, as `kindling sync` writes it, is what the
/// next `GET /` returns, with no restart.
#[test]
fn a_synced_page_edit_shows_on_the_next_request() {
    let static_dir = copy_of_static("sync-page");
    let mut env = image_env();
    for (key, value) in &mut env {
        if key == "STATIC_DIR" {
            *value = static_dir.display().to_string();
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let herald = Herald::with(&[], &env);
    let port = herald.port;

    let page = get(port, "/");
    assert_eq!(page.status, 200);
    let original = std::fs::read_to_string(repo().join("static/index.html")).unwrap();
    assert_eq!(page.body, original);

    // kubectl cp (tar) writes a new file in place of the old one.
    let edited = original.replace("</body>", "<p id=\"synced\">edited</p></body>");
    assert_ne!(edited, original, "the page has a </body> to edit");
    let tmp = static_dir.join("index.html.partial");
    std::fs::write(&tmp, &edited).unwrap();
    std::fs::rename(&tmp, static_dir.join("index.html")).unwrap();
    assert_eq!(get(port, "/").body, edited, "the edit shows at once");

    // An asset is picked up the same way, edited in place this time.
    let css = static_dir.join("app.css");
    let mut style = std::fs::read_to_string(&css).unwrap();
    style.push_str("\n#synced { color: red; }\n");
    std::fs::write(&css, &style).unwrap();
    assert_eq!(get(port, "/static/app.css").body, style);
    std::fs::remove_dir_all(&static_dir).unwrap();
}

/// The cache, seen from outside: the file's bytes are replaced behind Herald's back while
/// its size, modification time and inode stay the same, so only a re-read could show them.
/// Herald keeps serving what it read: it did not read the file again. Once the
/// modification time moves, as any real write moves it, the new bytes are served.
#[test]
fn an_unchanged_page_is_served_from_memory() {
    let static_dir = copy_of_static("cached-page");
    let path = static_dir.join("index.html");
    std::fs::write(&path, "<p>first version</p>").unwrap();
    let herald = Herald::with(&[], &[("STATIC_DIR", static_dir.to_str().unwrap())]);
    assert_eq!(get(herald.port, "/").body, "<p>first version</p>");

    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, "<p>other version</p>").unwrap(); // same length, same inode
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    for _ in 0..3 {
        assert_eq!(get(herald.port, "/").body, "<p>first version</p>");
    }

    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(1))
        .unwrap();
    drop(file);
    assert_eq!(get(herald.port, "/").body, "<p>other version</p>");
    std::fs::remove_dir_all(&static_dir).unwrap();
}

/// The Dockerfile's build stage, run outside Docker with `cargo check` in place of
/// `cargo build` (one dependency check, not a second release build): the manifests and stub
/// sources load as a workspace and build with `--locked`, and the real sources are then
/// compiled, not mistaken for the stubs. `tests/dockerfile_steps.sh --measure` runs the same
/// steps as written and times them.
#[test]
fn the_dockerfile_build_steps_work_outside_docker() {
    let out = Command::new("bash")
        .arg(repo().join("tests/dockerfile_steps.sh"))
        .arg("--check")
        .output()
        .expect("run tests/dockerfile_steps.sh");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A code sync's restart, as the page lives it: kindling's restart loop sends Herald SIGTERM
/// and starts the new binary once the old one has exited. With the image's environment (its
/// drain) and the Redis dependency: events published during the drain still arrive live; the
/// close is 1001; a page that reconnects after the restart with the last id it saw gets what
/// it missed, then live events, with no gap and no duplicate.
#[test]
fn a_restart_costs_the_page_no_event() {
    let redis = Redis::start();
    let mut env = image_env();
    for (key, value) in &mut env {
        if key == "STATIC_DIR" {
            *value = repo().join("static").display().to_string();
        }
    }
    env.push(("PUBSUB_CACHE_URL".into(), redis.url()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut herald = Herald::with(&[], &env);
    wait_redis_connected(&herald);
    let port = herald.port;

    let mut page = ws_connect(port, "/ws");
    publish(port, "before", "restart");
    let before = next_event(&mut page);
    assert_eq!(before["type"], "before");

    signal(herald.pid(), "TERM"); // what kindling's restart loop sends
    wait_until("the drain", || get(port, "/health").status == 503);
    publish(port, "during", "drain");
    let during = next_event(&mut page);
    assert_eq!(during["type"], "during", "served live while draining");
    assert_eq!(close_code(&mut page), Some(1001));
    assert_eq!(herald.wait_exit(WAIT), Some(0));

    herald.start_again(); // the loop starts the new binary
    wait_redis_connected(&herald);
    // Two pages: one saw everything before the close, one only the first event.
    let since = during["id"].as_str().unwrap();
    let mut current = ws_connect(port, &format!("/ws?since={since}"));
    let since = before["id"].as_str().unwrap();
    let mut behind = ws_connect(port, &format!("/ws?since={since}"));
    publish(port, "after", "restart");
    assert_eq!(next_event(&mut current)["type"], "after", "no duplicate");
    assert_eq!(next_event(&mut behind)["type"], "during", "no gap");
    assert_eq!(next_event(&mut behind)["type"], "after");
}
