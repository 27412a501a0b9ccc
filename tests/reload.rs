//! `ctl reload` and SIGHUP: apply the config difference, or change nothing on error.

mod common;

use std::time::Duration;

use common::*;

fn base_config() -> String {
    let mut body = program("keep", &["--tag", "v1"], "");
    body += &program("change", &["--tag", "v1"], "");
    body += &program("remove", &["--tag", "v1"], "");
    body
}

fn new_config() -> String {
    let mut body = program("keep", &["--tag", "v1"], "");
    body += &program("change", &["--tag", "v2"], "");
    body += &program("add", &["--tag", "v1"], "");
    body
}

fn all_running(d: &Daemon, names: &[&str]) -> Vec<Proc> {
    d.wait_for(&format!("{names:?} running"), WAIT, |ps| {
        names
            .iter()
            .all(|n| find(ps, n).is_some_and(|p| p.state == "running"))
    })
}

fn pid_of(ps: &[Proc], name: &str) -> i32 {
    get(ps, name)
        .pid
        .unwrap_or_else(|| panic!("{name} has no pid: {ps:#?}"))
}

/// Applies `new_config` by `trigger` and checks the difference was applied exactly.
fn reload_applies_difference(trigger: impl FnOnce(&Daemon)) {
    let d = Daemon::start(&base_config());
    let before = all_running(&d, &["keep", "change", "remove"]);
    let (keep, change, remove) = (
        pid_of(&before, "keep"),
        pid_of(&before, "change"),
        pid_of(&before, "remove"),
    );

    d.write_config(&new_config());
    trigger(&d);

    let after = d.wait_for(
        "keep untouched, change restarted, add running, remove gone",
        WAIT,
        |ps| {
            find(ps, "remove").is_none()
                && find(ps, "add").is_some_and(|p| p.state == "running")
                && find(ps, "change").is_some_and(|p| p.state == "running" && p.pid != Some(change))
        },
    );
    let k = get(&after, "keep");
    assert_eq!(k.pid, Some(keep), "unchanged program keeps its PID: {k:?}");
    assert_eq!(k.state, "running");
    assert_eq!(k.restarts, 0, "{k:?}");
    assert!(pid_alive(keep));
    assert_pid_gone(change, "old process of the changed program");
    assert_pid_gone(remove, "process of the removed program");
    assert_eq!(after.len(), 3, "{after:#?}");
    let out = d.ctl(&["status", "remove"]);
    assert_eq!(out.code, 1, "removed program is unknown now: {out:?}");
}

#[test]
fn ctl_reload_applies_the_difference() {
    reload_applies_difference(|d| {
        let out = d.ctl(&["reload"]);
        assert_eq!(out.code, 0, "{out:?}");
    });
}

#[test]
fn sighup_reloads_like_ctl_reload() {
    reload_applies_difference(|d| d.signal(libc::SIGHUP));
}

#[test]
fn invalid_reload_changes_nothing() {
    let d = Daemon::start(&base_config());
    let before = all_running(&d, &["keep", "change", "remove"]);

    let mut broken = new_config();
    broken += "bogus_key = 1\n";
    d.write_config(&broken);
    let out = d.ctl(&["reload"]);
    assert_eq!(out.code, 1, "invalid config must be rejected: {out:?}");
    let reason = out.stderr.trim();
    assert!(!reason.is_empty(), "reload error on stderr: {out:?}");
    assert!(
        reason.contains("bogus_key") || reason.contains("minder.toml"),
        "the reason should point at the error: {out:?}"
    );

    let same = |ps: &[Proc]| {
        ps.len() == before.len()
            && before
                .iter()
                .all(|b| find(ps, &b.name).is_some_and(|p| p.pid == b.pid && p.state == "running"))
    };
    d.assert_stays(
        "nothing changes after a rejected reload",
        Duration::from_millis(600),
        same,
    );

    // SIGHUP with the broken file changes nothing either, and the daemon survives.
    d.signal(libc::SIGHUP);
    d.assert_stays(
        "nothing changes after SIGHUP with a broken config",
        Duration::from_millis(600),
        same,
    );

    // Fixing the file makes the next reload work.
    d.write_config(&new_config());
    d.ctl_ok(&["reload"]);
    all_running(&d, &["keep", "change", "add"]);
}

#[test]
fn reload_with_same_config_changes_nothing() {
    let d = Daemon::start(&base_config());
    let before = all_running(&d, &["keep", "change", "remove"]);
    d.ctl_ok(&["reload"]);
    d.assert_stays(
        "identical config: same PIDs",
        Duration::from_millis(500),
        |ps| {
            before
                .iter()
                .all(|b| find(ps, &b.name).is_some_and(|p| p.pid == b.pid))
        },
    );
}

#[test]
fn reload_changes_instance_count() {
    let d = Daemon::start(&program("web", &[], "instances = 2"));
    all_running(&d, &["web:0", "web:1"]);
    d.write_config(&program("web", &[], "instances = 3"));
    d.ctl_ok(&["reload"]);
    let after = all_running(&d, &["web:0", "web:1", "web:2"]);
    assert_eq!(after.len(), 3, "{after:#?}");
}
