//! Containment (SPEC §5.3): every process in a cgroup of its own, so that a
//! stop or a shutdown leaves no descendant behind, not even one that called
//! `setsid`; a minder killed with SIGKILL leaves nothing the next one does
//! not stop; and cgroups go when their processes do.
//!
//! These run where minder can make cgroups (root, a cgroup2 mount with
//! `cgroup.kill`); elsewhere each test says so and checks only that minder
//! said why cgroups are off.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_pid_gone, pid_alive, toml_array, wait_file, Daemon};

/// A program running `sh -c SCRIPT`, with fast timings.
fn shell(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[program.{name}]\ncommand = {}\nstart_secs = \"100ms\"\nstop_timeout = \"2s\"\n{extra}\n",
        toml_array(&["sh", "-c", script])
    )
}

/// A main process that double-forks a `setsid` grandchild (written to
/// `FILE`), which is re-parented away and outside the main process's
/// process group and session.
fn escaping(file: &str) -> String {
    format!("(setsid sleep 300 & echo $! > {file}) ; exec sleep 300")
}

/// The cgroup directory of `pid`, if it is in one of minder's.
fn cgroup_of(pid: i32) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4))?
    })?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let relative = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let path = Path::new(mount).join(relative.trim_start_matches('/'));
    // A process without a cgroup of its own is in minder's leaf.
    (path.to_string_lossy().contains("/minder-") && !path.ends_with("supervisor")).then_some(path)
}

/// Whether the daemon runs with cgroups; prints which path this test takes.
fn contained(d: &Daemon, name: &str) -> bool {
    let pid = d.proc(name).pid.expect("a running process has a pid");
    match cgroup_of(pid) {
        Some(path) => {
            eprintln!("cgroups on: {name} in {}", path.display());
            true
        }
        None => {
            let log = std::fs::read_to_string(&d.log_path).unwrap_or_default();
            assert!(
                log.contains("cgroups are off ("),
                "no cgroup and no word why:\n{log}"
            );
            eprintln!("cgroups off here: only the line saying why is checked");
            false
        }
    }
}

#[test]
fn a_setsid_grandchild_does_not_survive_a_stop() {
    let d = Daemon::start(&shell("web", &escaping("@TMP@/gc.pid"), ""));
    d.wait_state("web", "running");
    if !contained(&d, "web") {
        return;
    }
    let main = d.proc("web").pid.unwrap();
    let cgroup = cgroup_of(main).unwrap();
    let grandchild = common::read_pid(&d.path("gc.pid"));
    assert!(pid_alive(grandchild));
    assert_ne!(
        common::proc_stat(grandchild).unwrap().0,
        main,
        "re-parented away"
    );
    d.ctl_ok(&["stop", "web"]);
    // `ctl stop` returns once the process is stopped: its cgroup is empty
    // then, so the grandchild is already gone.
    assert_eq!(d.proc("web").state, "stopped");
    assert!(
        !pid_alive(grandchild),
        "the setsid grandchild survived the stop"
    );
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
}

#[test]
fn without_a_cgroup_the_setsid_grandchild_escapes_the_process_group() {
    // What the cgroup is for: with `cgroup = false` the stop reaches the
    // process group only, and the grandchild left it.
    let d = Daemon::start(&shell("web", &escaping("@TMP@/gc.pid"), "cgroup = false"));
    d.wait_state("web", "running");
    let main = d.proc("web").pid.unwrap();
    assert_eq!(cgroup_of(main), None);
    let grandchild = common::read_pid(&d.path("gc.pid"));
    d.ctl_ok(&["stop", "web"]);
    let survived = pid_alive(grandchild);
    if survived {
        // SAFETY: kill(2) on the grandchild this test's program started.
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
    }
    assert!(survived, "process groups alone were expected to miss it");
}

#[test]
fn a_grandchild_ignoring_the_stop_signal_is_killed_with_its_cgroup_at_shutdown() {
    let script = "(setsid sh -c 'trap \"\" TERM; echo $$ > @TMP@/gc.pid; while :; do sleep 1; done' &) ; exec sleep 300";
    let mut d = Daemon::start(&shell("web", script, ""));
    d.wait_state("web", "running");
    if !contained(&d, "web") {
        return;
    }
    let main = d.proc("web").pid.unwrap();
    let cgroup = cgroup_of(main).unwrap();
    let base = cgroup.parent().unwrap().parent().unwrap().to_path_buf();
    wait_file(&d.path("gc.pid"), Duration::from_secs(10));
    let grandchild = common::read_pid(&d.path("gc.pid"));
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(!pid_alive(grandchild), "the grandchild outlived minder");
    assert!(!pid_alive(main));
    assert!(!base.exists(), "{} left behind at shutdown", base.display());
}

#[test]
fn a_program_removed_by_reload_leaves_no_cgroup() {
    let d =
        Daemon::start(&(shell("web", "exec sleep 300", "") + &shell("db", "exec sleep 300", "")));
    d.wait_state("db", "running");
    if !contained(&d, "db") {
        return;
    }
    let cgroup = cgroup_of(d.proc("db").pid.unwrap()).unwrap();
    let program_dir = cgroup.parent().unwrap().to_path_buf();
    d.write_config(&shell("web", "exec sleep 300", ""));
    d.ctl_ok(&["reload"]);
    d.wait_for("db is gone", Duration::from_secs(10), |procs| {
        common::find(procs, "db").is_none()
    });
    assert!(
        !cgroup.exists() && !program_dir.exists(),
        "{} left",
        program_dir.display()
    );
}

#[test]
fn after_minder_is_killed_the_next_one_stops_what_it_left_and_starts_clean() {
    let port = common::free_port();
    let body = shell("web", &escaping("@TMP@/gc.pid"), "")
        + &shell("worker", "exec sleep 300", "instances = 2")
        + &common::program(
            "api",
            &["--serve-inherited"],
            &format!("listen = [\"tcp://127.0.0.1:{port}\"]"),
        );
    let mut d = Daemon::start(&body);
    for name in ["web", "worker:0", "worker:1", "api"] {
        d.wait_state(name, "running");
    }
    if !contained(&d, "web") {
        return;
    }
    let old: Vec<i32> = ["web", "worker:0", "worker:1", "api"]
        .iter()
        .map(|n| d.proc(n).pid.unwrap())
        .collect();
    let grandchild = common::read_pid(&d.path("gc.pid"));
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    // The orphans live on, the listener among them, until a minder stops them.
    assert!(old.iter().all(|pid| pid_alive(*pid)));
    d.respawn();
    for name in ["web", "worker:0", "worker:1", "api"] {
        d.wait_state(name, "running");
    }
    for pid in old.iter().chain([&grandchild]) {
        assert_pid_gone(*pid, "a process of the killed minder");
    }
    let new: Vec<i32> = ["web", "worker:0", "worker:1", "api"]
        .iter()
        .map(|n| d.proc(n).pid.unwrap())
        .collect();
    assert!(new.iter().all(|pid| !old.contains(pid)));
    // The port the orphan held serves the new generation.
    let (code, _) = common::http_get(port, "/").expect("the new api serves on the port");
    assert!(code < 500, "{code}");
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    for pid in &old {
        assert!(
            log.contains(&format!("stopping process {pid} (")),
            "no line for {pid}:\n{log}"
        );
    }
}

#[test]
fn without_cgroups_the_next_minder_stops_what_a_killed_one_left_from_its_state_file() {
    let port = common::free_port();
    let body = shell("web", "sleep 300 & exec sleep 300", "cgroup = false")
        + &common::program(
            "api",
            &["--serve-inherited"],
            &format!("listen = [\"tcp://127.0.0.1:{port}\"]\ncgroup = false"),
        );
    let mut d = Daemon::start(&body);
    for name in ["web", "api"] {
        d.wait_state(name, "running");
    }
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    assert!(
        log.contains("cgroups are off (every program has cgroup = false)"),
        "{log}"
    );
    let old: Vec<i32> = ["web", "api"]
        .iter()
        .map(|n| d.proc(n).pid.unwrap())
        .collect();
    // The background sleep of web: in its session, not its main process.
    let member = common::descendants(old[0])[0];
    let ledger = std::fs::read_to_string(d.path("minder.sock.pids")).unwrap();
    for pid in &old {
        assert!(
            ledger.contains(&format!("+ {pid} ")),
            "{pid} not in\n{ledger}"
        );
    }
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    assert!(old.iter().all(|pid| pid_alive(*pid)));
    d.respawn();
    for name in ["web", "api"] {
        d.wait_state(name, "running");
    }
    for pid in old.iter().chain([&member]) {
        assert_pid_gone(*pid, "a process of the killed minder");
    }
    let (code, body) = common::http_get(port, "/").expect("the new api serves on the port");
    assert!(code < 500, "{code}");
    assert_eq!(body.trim(), d.proc("api").pid.unwrap().to_string());
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    for pid in &old {
        assert!(
            log.contains(&format!("process {pid} (")),
            "no line for {pid}:\n{log}"
        );
    }
}
