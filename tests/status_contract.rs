//! The `status` document of SPEC §5.1: one entry per process, with the time
//! to the next attempt of a process in backoff. (Draining predecessors of a
//! rolling restart are covered with the rolling restarts, in listen.rs.)

mod common;

use common::*;

#[test]
fn backoff_reports_next_start_secs() {
    let body = format!(
        "{}{}",
        program(
            "crash",
            &["--exit-after", "0", "--exit-code", "1"],
            "[program.crash.backoff]\ninitial = \"5s\"\njitter = 0.0",
        ),
        program("steady", &[], ""),
    );
    let d = Daemon::start(&body);
    let st = d.wait_for("crash in backoff, steady running", WAIT, |ps| {
        get(ps, "crash").state == "backoff" && get(ps, "steady").state == "running"
    });
    for p in &st {
        assert!(
            p.raw.get("next_start_secs").is_some() && p.raw["draining"] == serde_json::json!([]),
            "every entry has next_start_secs and an empty draining list: {}",
            p.raw
        );
    }
    let crash = get(&st, "crash");
    let next = crash.raw["next_start_secs"]
        .as_f64()
        .unwrap_or_else(|| panic!("a number in backoff: {}", crash.raw));
    assert!(next > 0.0 && next <= 5.0, "within the 5s delay: {next}");
    assert!(
        crash.description.starts_with("exited with code 1 ")
            && crash.description.contains(" ago; next try in "),
        "{crash:?}"
    );
    let steady = get(&st, "steady");
    assert!(steady.raw["next_start_secs"].is_null(), "{}", steady.raw);

    let out = d.ctl(&["status", "crash"]);
    assert_eq!(out.code, 3, "not running: {out:?}");
    assert!(out.stdout.contains("; next try in "), "{out:?}");

    d.ctl_ok(&["stop", "crash"]);
    let crash = d.proc("crash");
    assert_eq!(crash.state, "stopped");
    assert!(crash.raw["next_start_secs"].is_null(), "{}", crash.raw);
    assert!(!crash.description.contains("next try"), "{crash:?}");
}
