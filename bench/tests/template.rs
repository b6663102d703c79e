//! `--publish-template` against the real Herald binary, used as if its
//! publish API were another server's: a JSON body to `/events/<channel>`
//! with the bench message wrapped in a field of another event type. The
//! clients find it by its marker, and every delivery is checked as usual.

mod support;

use support::{Herald, bench};

#[test]
fn a_templated_publish_is_delivered_and_checked() {
    let h = Herald::start();
    let template = r#"POST /events/{channel} {"type":"envelope","message":"{marked}"}"#;
    let (out, r) = bench(
        &h,
        &[
            "-c",
            "10",
            "-e",
            "20",
            "--rate",
            "40",
            "--procs",
            "1",
            "--publish-template",
            template,
            "--publish-header",
            "X-Trace: herald-bench",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(r["publish_ok"], 20);
    assert_eq!(r["deliveries"], 200, "{stderr}");
    assert_eq!(
        (r["lost"].as_u64(), r["foreign_frames"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(r["sched_latency_us"]["p99"].as_u64().is_some());
}

#[test]
fn a_template_without_the_message_is_refused() {
    let h = Herald::start();
    let out = support::run(&h, &["--publish-template", r#"POST /events {"type":"x"}"#]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("{message} or {marked}"));
}
