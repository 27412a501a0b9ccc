//! Process lifecycle: restart policies, backoff, fatal, start_secs, stopping,
//! spawn errors, instances, environment, reaping.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const MS: u128 = 1_000_000;

#[test]
fn crash_loop_backoff_delays_grow() {
    let d = Daemon::start(&program(
        "crash",
        &[
            "--exit-after",
            "150",
            "--exit-code",
            "1",
            "--record",
            "@TMP@/rec",
        ],
        r#"start_secs = "1s"
backoff.initial = "100ms"
backoff.multiplier = 2.0
backoff.jitter = 0.0
backoff.max = "10s""#,
    ));
    let mut seen = HashSet::new();
    let mut last_restarts = 0;
    d.wait_for(
        "restarts >= 4, with both backoff and starting observed",
        Duration::from_secs(20),
        |ps| {
            let p = get(ps, "crash");
            assert!(
                p.restarts >= last_restarts,
                "restarts went down from {last_restarts}: {p:?}"
            );
            last_restarts = p.restarts;
            seen.insert(p.state.clone());
            p.restarts >= 4 && seen.contains("backoff") && seen.contains("starting")
        },
    );
    for bad in ["running", "exited", "fatal"] {
        assert!(
            !seen.contains(bad),
            "a process dying before start_secs must never be {bad}; saw {seen:?}"
        );
    }
    let p = d.proc("crash");
    assert_eq!(p.last_exit_code, Some(1), "{p:?}");

    let ev = wait_record(&d.path("rec"), "start", 5);
    let starts = events_of(&ev, "start");
    let exits = events_of(&ev, "exit");
    for i in 0..4 {
        let delay = (100 * MS) << i;
        let exit = exits
            .iter()
            .find(|e| e.pid == starts[i].pid)
            .unwrap_or_else(|| panic!("no exit recorded for start {:?}: {ev:?}", starts[i]));
        let gap = starts[i + 1].ns - exit.ns;
        assert!(
            gap >= delay,
            "restart {} came {} ms after the exit, before the backoff delay of {} ms; record: {ev:?}",
            i + 1,
            gap / MS,
            delay / MS
        );
        assert!(
            starts[i + 1].ns - starts[i].ns >= delay + 150 * MS,
            "start-to-start gap {} shorter than run time + delay; record: {ev:?}",
            i + 1
        );
    }
}

#[test]
fn max_retries_leads_to_fatal_and_ctl_start_retries() {
    let d = Daemon::start(&program(
        "fail",
        &[
            "--exit-after",
            "0",
            "--exit-code",
            "1",
            "--record",
            "@TMP@/rec",
        ],
        r#"start_secs = "1s"
backoff.initial = "50ms"
backoff.jitter = 0.0
backoff.max_retries = 2"#,
    ));
    let p = d.wait_state("fail", "fatal");
    let starts = events_of(&read_record(&d.path("rec")), "start");
    assert_eq!(
        starts.len(),
        3,
        "max_retries = 2 means 3 attempts before fatal: {starts:?}"
    );
    assert_eq!(p.restarts, 2, "two automatic restarts: {p:?}");
    assert_eq!(p.pid, None, "{p:?}");
    let desc = p.description.to_lowercase();
    assert!(
        ["retr", "attempt", "gave up", "giving up", "give up"]
            .iter()
            .any(|w| desc.contains(w)),
        "description should say it gave up after retries: {p:?}"
    );
    d.assert_stays("fatal stays fatal", Duration::from_millis(500), |ps| {
        get(ps, "fail").state == "fatal"
    });
    assert_eq!(events_of(&read_record(&d.path("rec")), "start").len(), 3);

    let out = d.ctl(&["start", "fail"]);
    assert_eq!(
        out.code, 1,
        "ctl start of a process that fails to start should exit 1: {out:?}"
    );
    assert!(!out.stderr.trim().is_empty(), "{out:?}");
    let ev = wait_record(&d.path("rec"), "start", 4);
    assert!(events_of(&ev, "start").len() >= 4);
    d.wait_state("fail", "fatal");
}

/// Runs one program whose child exits with `code` after it counted as started.
fn policy_daemon(policy_lines: &str, code: &str) -> Daemon {
    Daemon::start(&program(
        "p",
        &[
            "--exit-after",
            "300",
            "--exit-code",
            code,
            "--record",
            "@TMP@/rec",
        ],
        &format!("{policy_lines}\nbackoff.initial = \"100ms\"\nbackoff.jitter = 0.0"),
    ))
}

fn assert_stays_exited(d: &Daemon, code: i64) {
    let p = d.wait_state("p", "exited");
    assert_eq!(p.last_exit_code, Some(code), "{p:?}");
    assert_eq!(p.pid, None, "{p:?}");
    d.assert_stays(
        "the process stays exited (no restart)",
        Duration::from_millis(600),
        |ps| {
            let p = get(ps, "p");
            p.state == "exited" && p.restarts == 0
        },
    );
    assert_eq!(events_of(&read_record(&d.path("rec")), "start").len(), 1);
}

fn assert_restarted(d: &Daemon) {
    d.wait_for("a restart", WAIT, |ps| get(ps, "p").restarts >= 1);
    wait_record(&d.path("rec"), "start", 2);
}

#[test]
fn restart_never_leaves_it_exited() {
    let d = policy_daemon("restart = \"never\"", "1");
    assert_stays_exited(&d, 1);
}

#[test]
fn restart_on_failure_with_exit_0_leaves_it_exited() {
    let d = policy_daemon("restart = \"on-failure\"", "0");
    assert_stays_exited(&d, 0);
}

#[test]
fn restart_on_failure_with_exit_1_restarts() {
    let d = policy_daemon("restart = \"on-failure\"", "1");
    assert_restarted(&d);
}

#[test]
fn restart_on_failure_with_expected_exit_code_3_leaves_it_exited() {
    let d = policy_daemon("restart = \"on-failure\"\nexit_codes = [0, 3]", "3");
    assert_stays_exited(&d, 3);
}

#[test]
fn restart_always_with_exit_0_restarts() {
    let d = policy_daemon("restart = \"always\"", "0");
    assert_restarted(&d);
}

#[test]
fn exit_before_start_secs_is_a_failed_start() {
    let d = Daemon::start(&program(
        "early",
        &["--exit-after", "200", "--exit-code", "0"],
        r#"start_secs = "2s"
backoff.initial = "50ms"
backoff.max_retries = 1"#,
    ));
    let mut seen = HashSet::new();
    d.wait_for("fatal after failed starts", WAIT, |ps| {
        let p = get(ps, "early");
        seen.insert(p.state.clone());
        p.state == "fatal"
    });
    assert!(
        !seen.contains("running") && !seen.contains("exited"),
        "exiting before start_secs is a failed start, never running/exited; saw {seen:?}"
    );
}

#[test]
fn running_only_after_start_secs() {
    let d = Daemon::start(&program(
        "slow",
        &["--record", "@TMP@/rec"],
        r#"start_secs = "1s""#,
    ));
    let mut saw_starting_with_pid = false;
    let st = d.wait_for("running", WAIT, |ps| {
        let p = get(ps, "slow");
        if p.state == "starting" && p.pid.is_some() {
            saw_starting_with_pid = true;
        }
        p.state == "running"
    });
    let running_seen = monotonic_ns();
    let p = get(&st, "slow");
    let start = events_of(&wait_record(&d.path("rec"), "start", 1), "start")[0].clone();
    assert_eq!(p.pid, Some(start.pid), "{p:?}");
    assert!(
        saw_starting_with_pid,
        "expected `starting` with a PID during start_secs"
    );
    assert!(
        running_seen - start.ns >= 1000 * MS,
        "running after {} ms, before start_secs = 1s",
        (running_seen - start.ns) / MS
    );
    assert!(p.uptime_secs.is_some(), "{p:?}");
}

#[test]
fn stop_escalates_to_sigkill_after_stop_timeout() {
    let d = Daemon::start(&program(
        "stubborn",
        &["--ignore-term", "--pidfile", "@TMP@/pid"],
        r#"stop_timeout = "500ms""#,
    ));
    let pid = read_pid(&d.path("pid"));
    let p = d.wait_state("stubborn", "running");
    assert_eq!(p.pid, Some(pid));

    let t0 = Instant::now();
    d.ctl_ok(&["stop", "stubborn"]);
    let took = t0.elapsed();
    let p = d.proc("stubborn");
    assert_eq!(p.state, "stopped", "ctl stop returns once stopped: {p:?}");
    assert_eq!(p.pid, None, "{p:?}");
    assert_eq!(p.last_exit_signal.as_deref(), Some("SIGKILL"), "{p:?}");
    assert!(
        !pid_alive(pid),
        "pid {pid} alive after stop: {:?}",
        proc_stat(pid)
    );
    assert!(
        took >= Duration::from_millis(500),
        "stop returned after {took:?}, before stop_timeout"
    );
}

#[test]
fn stop_kills_the_grandchild() {
    let d = Daemon::start(&program(
        "family",
        &["--grandchild", "@TMP@/gc", "--pidfile", "@TMP@/pid"],
        "",
    ));
    let gc = read_pid(&d.path("gc"));
    let pid = read_pid(&d.path("pid"));
    d.wait_state("family", "running");
    assert!(pid_alive(gc));
    d.ctl_ok(&["stop", "family"]);
    assert_eq!(d.proc("family").state, "stopped");
    assert!(!pid_alive(pid), "child {pid} alive after stop");
    assert_pid_gone(gc, "grandchild of a stopped program (kill_group = true)");
}

/// The main process exits on SIGTERM at once, its grandchild ignores it:
/// the group's SIGKILL comes as the main process is collected, not after
/// `stop_timeout` (30 s here) and not never.
#[test]
fn stop_kills_a_grandchild_that_outlives_the_main_process() {
    let d = Daemon::start(&program(
        "family",
        &[
            "--grandchild",
            "@TMP@/gc",
            "--grandchild-ignores-term",
            "--pidfile",
            "@TMP@/pid",
        ],
        "stop_timeout = \"30s\"",
    ));
    let gc = read_pid(&d.path("gc"));
    let pid = read_pid(&d.path("pid"));
    d.wait_state("family", "running");
    d.ctl_ok(&["stop", "family"]);
    assert_eq!(d.proc("family").state, "stopped");
    assert!(!pid_alive(pid), "child {pid} alive after stop");
    assert_pid_gone(gc, "grandchild ignoring SIGTERM after its parent exited");
}

#[test]
fn missing_binary_reports_os_error() {
    let d = Daemon::start(
        r#"[program.ghost]
command = ["/nonexistent/minder-no-such-binary", "--flag"]
start_secs = "100ms"
backoff.initial = "300ms""#,
    );
    let st = d.wait_for(
        "backoff/fatal with \"No such file or directory\" in description",
        WAIT,
        |ps| {
            let p = get(ps, "ghost");
            (p.state == "backoff" || p.state == "fatal")
                && p.description.contains("No such file or directory")
        },
    );
    assert_eq!(get(&st, "ghost").pid, None);
}

#[test]
fn missing_binary_with_max_retries_becomes_fatal() {
    let d = Daemon::start(
        r#"[program.ghost]
command = ["/nonexistent/minder-no-such-binary"]
backoff.initial = "50ms"
backoff.max_retries = 1"#,
    );
    d.wait_state("ghost", "fatal");
}

#[test]
fn instances_expand_placeholders_and_get_minder_variables() {
    let d = Daemon::start(&program(
        "web",
        &[
            "--write-env",
            "@TMP@/env-{instance}-{port}",
            "--tag",
            "{name}",
        ],
        r#"instances = 3
port = 7100
environment = { MY_PORT = "{port}", MY_INSTANCE = "{instance}", MY_NAME = "{name}", MY_PROGRAM = "{program}" }"#,
    ));
    let st = d.wait_for("web:0..2 running", WAIT, |ps| {
        (0..3).all(|i| find(ps, &format!("web:{i}")).is_some_and(|p| p.state == "running"))
    });
    assert_eq!(st.len(), 3, "exactly three processes: {st:#?}");
    for i in 0..3u64 {
        let name = format!("web:{i}");
        let p = get(&st, &name);
        assert_eq!(p.program, "web");
        assert_eq!(p.instance, i);
        let port = 7100 + i;
        let env = parse_env(&wait_file(&d.path(&format!("env-{i}-{port}")), WAIT));
        let expect = [
            ("MY_PORT", port.to_string()),
            ("MY_INSTANCE", i.to_string()),
            ("MY_NAME", name.clone()),
            ("MY_PROGRAM", "web".to_owned()),
            ("MINDER_PROCESS", name.clone()),
            ("MINDER_PROGRAM", "web".to_owned()),
            ("MINDER_INSTANCE", i.to_string()),
        ];
        for (k, v) in expect {
            assert_eq!(env_get(&env, k), Some(v.as_str()), "{k} of {name}: {env:?}");
        }
    }
    let sel = d.status_of(&["web"]);
    let mut names: Vec<_> = sel.iter().map(|p| p.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["web:0", "web:1", "web:2"]);
    let one = d.status_of(&["web:1"]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].name, "web:1");
}

#[test]
fn environment_directory_and_clear_env() {
    let mut body = program(
        "plain",
        &["--write-env", "@TMP@/env-plain"],
        r#"environment = { FOO = "bar", SPACED = "a b  c" }"#,
    );
    body += &program(
        "rooted",
        &["--write-env", "@TMP@/env-rooted"],
        r#"directory = "/""#,
    );
    body += &program(
        "clean",
        &["--write-env", "@TMP@/env-clean"],
        r#"clear_env = true
environment = { ONLY = "1" }"#,
    );
    let d = Daemon::start(&body);
    let tmp = d.tmp().canonicalize().expect("canonical temp dir");

    let plain = parse_env(&wait_file(&d.path("env-plain"), WAIT));
    let cwd = env_get(&plain, "cwd").expect("cwd line");
    assert_eq!(
        Path::new(cwd).canonicalize().ok(),
        Some(tmp.clone()),
        "default directory is the config file's directory"
    );
    assert_eq!(env_get(&plain, "FOO"), Some("bar"));
    assert_eq!(env_get(&plain, "SPACED"), Some("a b  c"));
    assert_eq!(
        env_get(&plain, INHERITED_VAR),
        Some("yes"),
        "environment is added to minder's own"
    );
    assert_eq!(env_get(&plain, "MINDER_PROCESS"), Some("plain"));
    assert_eq!(env_get(&plain, "MINDER_PROGRAM"), Some("plain"));
    assert_eq!(env_get(&plain, "MINDER_INSTANCE"), Some("0"));

    let rooted = parse_env(&wait_file(&d.path("env-rooted"), WAIT));
    assert_eq!(env_get(&rooted, "cwd"), Some("/"));

    let clean = parse_env(&wait_file(&d.path("env-clean"), WAIT));
    assert_eq!(env_get(&clean, "ONLY"), Some("1"));
    assert_eq!(
        env_get(&clean, INHERITED_VAR),
        None,
        "clear_env starts from an empty environment: {clean:?}"
    );
    assert_eq!(env_get(&clean, "MINDER_PROCESS"), Some("clean"));
}

#[test]
fn child_inherits_only_stdio_fds() {
    let d = Daemon::start(&program("fds", &["--write-fds", "@TMP@/fds"], ""));
    let fds = wait_file(&d.path("fds"), WAIT);
    let fds: Vec<&str> = fds.lines().collect();
    assert_eq!(fds, ["0", "1", "2"], "a child inherits only 0, 1, 2");
}

#[test]
fn no_zombies_after_crash_loop() {
    let d = Daemon::start(&program(
        "crash",
        &["--exit-after", "0", "--exit-code", "1"],
        r#"start_secs = "0s"
backoff.initial = "10ms"
backoff.max = "20ms"
backoff.jitter = 0.0"#,
    ));
    d.wait_for("restarts >= 15", Duration::from_secs(20), |ps| {
        get(ps, "crash").restarts >= 15
    });
    // Transient zombies exist between exit and reaping; each must go away promptly.
    let seen = d.zombie_children();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: HashSet<i32> = d.zombie_children().into_iter().collect();
        let lingering: Vec<i32> = seen.iter().copied().filter(|p| now.contains(p)).collect();
        if lingering.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "zombie children of the daemon not reaped within 5s: {lingering:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ctl_ok(&["stop", "crash"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let z = d.zombie_children();
        if z.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "zombies remain after stop: {z:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn orphaned_grandchild_is_reaped_by_the_daemon() {
    let d = Daemon::start(&program(
        "parent",
        &["--grandchild", "@TMP@/gc", "--exit-after", "300"],
        r#"restart = "never""#,
    ));
    let gc = read_pid(&d.path("gc"));
    d.wait_state("parent", "exited");
    // Either minder cleaned up the group, or the orphan was re-parented to minder (subreaper).
    let deadline = Instant::now() + WAIT;
    loop {
        match proc_stat(gc) {
            None => return,
            Some((_, 'Z')) => break,
            Some((ppid, _)) if ppid == d.pid() => break,
            Some(st) => assert!(
                Instant::now() < deadline,
                "orphaned grandchild {gc} not re-parented to minder {}: {st:?}",
                d.pid()
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: gc is the test child's grandchild, still alive (or a zombie) as checked above.
    unsafe { libc::kill(gc, libc::SIGKILL) };
    let deadline = Instant::now() + WAIT;
    while proc_stat(gc).is_some() {
        assert!(
            Instant::now() < deadline,
            "grandchild {gc} not reaped by minder: {:?}",
            proc_stat(gc)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn autostart_false_stays_stopped_until_started() {
    let d = Daemon::start(&program(
        "lazy",
        &["--pidfile", "@TMP@/pid"],
        "autostart = false",
    ));
    d.assert_stays("lazy stays stopped", Duration::from_millis(400), |ps| {
        let p = get(ps, "lazy");
        p.state == "stopped" && p.pid.is_none()
    });
    assert!(!d.path("pid").exists());
    d.ctl_ok(&["start", "lazy"]);
    let p = d.proc("lazy");
    assert_eq!(p.state, "running", "{p:?}");
    assert_eq!(p.pid, Some(read_pid(&d.path("pid"))));
}

#[test]
fn signal_exit_is_a_failure_for_on_failure() {
    let d = Daemon::start(&program(
        "p",
        &[
            "--exit-after",
            "300",
            "--exit-signal",
            "KILL",
            "--record",
            "@TMP@/rec",
        ],
        r#"restart = "on-failure"
exit_codes = [0]
backoff.initial = "100ms""#,
    ));
    let st = d.wait_for("a restart after death by SIGKILL", WAIT, |ps| {
        get(ps, "p").restarts >= 1
    });
    let p = get(&st, "p");
    assert_eq!(p.last_exit_signal.as_deref(), Some("SIGKILL"), "{p:?}");
    assert_eq!(p.last_exit_code, None, "{p:?}");
    wait_record(&d.path("rec"), "start", 2);
}

#[test]
fn stop_signal_is_configurable() {
    let d = Daemon::start(&program(
        "p",
        &["--record", "@TMP@/rec"],
        r#"stop_signal = "INT""#,
    ));
    d.wait_state("p", "running");
    d.ctl_ok(&["stop", "p"]);
    let p = d.proc("p");
    assert_eq!(p.state, "stopped", "{p:?}");
    assert_eq!(p.last_exit_signal.as_deref(), Some("SIGINT"), "{p:?}");
    assert_eq!(events_of(&read_record(&d.path("rec")), "stop").len(), 1);
}

#[test]
fn kill_group_false_signals_only_the_process() {
    let d = Daemon::start(&program(
        "family",
        &["--grandchild", "@TMP@/gc", "--pidfile", "@TMP@/pid"],
        // With a cgroup, what the main process leaves is killed once it has
        // exited (tests/containment.rs); the signal itself is what this is about.
        "kill_group = false\ncgroup = false",
    ));
    let gc = read_pid(&d.path("gc"));
    let pid = read_pid(&d.path("pid"));
    d.wait_state("family", "running");
    d.ctl_ok(&["stop", "family"]);
    assert!(!pid_alive(pid), "child {pid} alive after stop");
    let alive = pid_alive(gc);
    // SAFETY: gc is the test child's grandchild; we clean it up either way.
    unsafe { libc::kill(gc, libc::SIGKILL) };
    assert!(
        alive,
        "with kill_group = false the grandchild should not get the stop signal"
    );
}
