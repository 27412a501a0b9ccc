//! Shutdown (SIGTERM, SIGINT, `ctl shutdown`) and dependency order.

mod common;

use std::time::Duration;

use common::*;

const MS: u128 = 1_000_000;

fn family_config() -> String {
    let mut body = program(
        "a",
        &["--grandchild", "@TMP@/gc-a", "--pidfile", "@TMP@/pid-a"],
        "",
    );
    body += &program("b", &["--ignore-term"], r#"stop_timeout = "300ms""#);
    body += &program("c", &[], "instances = 2");
    body
}

/// Starts the family, stops the daemon with `trigger`, checks exit 0 and that nothing is left.
fn shutdown_stops_everything(trigger: impl FnOnce(&Daemon)) {
    let mut d = Daemon::start(&family_config());
    let st = d.wait_for("all running", WAIT, |ps| {
        ps.len() == 4 && ps.iter().all(|p| p.state == "running")
    });
    let gc = read_pid(&d.path("gc-a"));
    let pids: Vec<(String, i32)> = st
        .iter()
        .map(|p| (p.name.clone(), p.pid.expect("running has a pid")))
        .collect();

    trigger(&d);
    let status = d.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "daemon exit status: {status:?}");
    for (name, pid) in pids {
        assert!(
            !pid_alive(pid),
            "{name} (pid {pid}) still alive after the daemon exited: {:?}",
            proc_stat(pid)
        );
    }
    assert_pid_gone(gc, "grandchild of a after shutdown");
}

#[test]
fn sigterm_stops_everything_and_exits_0() {
    shutdown_stops_everything(|d| d.signal(libc::SIGTERM));
}

#[test]
fn sigint_stops_everything_and_exits_0() {
    shutdown_stops_everything(|d| d.signal(libc::SIGINT));
}

#[test]
fn ctl_shutdown_stops_everything_and_exits_0() {
    shutdown_stops_everything(|d| {
        let out = d.ctl(&["shutdown"]);
        assert_eq!(out.code, 0, "{out:?}");
    });
}

#[test]
fn depends_on_orders_start_and_stop() {
    let mut body = program("a", &["--record", "@TMP@/rec-a"], r#"start_secs = "1s""#);
    body += &program("b", &["--record", "@TMP@/rec-b"], r#"depends_on = ["a"]"#);
    let mut d = Daemon::start(&body);
    d.wait_for("a and b running", WAIT, |ps| {
        ps.iter().all(|p| p.state == "running")
    });
    let a_start = events_of(&read_record(&d.path("rec-a")), "start");
    let b_start = events_of(&read_record(&d.path("rec-b")), "start");
    assert_eq!(a_start.len(), 1, "{a_start:?}");
    assert_eq!(b_start.len(), 1, "{b_start:?}");
    // a records its start after its exec, some time after minder started a's
    // 1 s `start_secs` clock, so b may follow a's record by a little less than
    // 1 s on a loaded machine; without the ordering it would follow within a
    // few ms. Half the bound tells the two apart without that race.
    assert!(
        b_start[0].ns >= a_start[0].ns + 500 * MS,
        "b started {} ms after a, before a was running (start_secs = 1s)",
        (b_start[0].ns.saturating_sub(a_start[0].ns)) / MS
    );

    d.ctl_ok(&["shutdown"]);
    let status = d.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status:?}");
    let a_stop = events_of(&read_record(&d.path("rec-a")), "stop");
    let b_stop = events_of(&read_record(&d.path("rec-b")), "stop");
    assert_eq!(a_stop.len(), 1, "a got one stop signal: {a_stop:?}");
    assert_eq!(b_stop.len(), 1, "b got one stop signal: {b_stop:?}");
    assert!(
        b_stop[0].ns < a_stop[0].ns,
        "b (depends on a) must stop before a: b stop {} a stop {}",
        b_stop[0].ns,
        a_stop[0].ns
    );
}

#[test]
fn dependent_never_runs_without_its_dependency() {
    let mut body = program("a", &[], "autostart = false");
    body += &program("b", &["--record", "@TMP@/rec-b"], r#"depends_on = ["a"]"#);
    let d = Daemon::start(&body);
    // Whether minder keeps b waiting or pulls a in, b never runs while a does not.
    d.assert_stays(
        "b not running while a is not running",
        Duration::from_millis(500),
        |ps| get(ps, "b").state != "running" || get(ps, "a").state == "running",
    );
    d.ctl_ok(&["start", "a"]);
    d.wait_for("a and b running", WAIT, |ps| {
        ps.iter().all(|p| p.state == "running")
    });
}
