//! Health-aware supervision: HTTP/TCP/exec probes, readiness, NOTIFY_SOCKET
//! and watchdog heartbeats, driven through `minder ctl` only.

mod common;

use std::fs;

use common::*;

fn http_program(name: &str, port: u16, on_unhealthy: &str) -> String {
    program(
        name,
        &[
            "--http",
            &port.to_string(),
            "--unhealthy-if",
            "@TMP@/sick",
            "--pidfile",
            &format!("@TMP@/{name}.pid"),
        ],
        &format!(
            r#"
[program.{name}.backoff]
initial = "100ms"
jitter = 0.0
[program.{name}.health]
http = "http://127.0.0.1:{port}/health"
interval = "100ms"
timeout = "2s"
start_period = "10s"
failure_threshold = 2
on_unhealthy = "{on_unhealthy}"
"#
        ),
    )
}

#[test]
fn unhealthy_http_server_is_restarted_and_counted() {
    let port = free_port();
    let d = Daemon::start(&http_program("web", port, "restart"));
    let first = d.wait_for("web running and healthy", WAIT, |ps| {
        let p = get(ps, "web");
        p.state == "running" && p.health == "healthy"
    });
    let old_pid = get(&first, "web").pid.expect("running has a pid");
    assert_eq!(get(&first, "web").restarts, 0);

    fs::write(d.path("sick"), "").expect("creating the flag file");
    let seen = d.wait_for("web to be stopped for being unhealthy", WAIT, |ps| {
        let p = get(ps, "web");
        p.restarts >= 1 || p.pid.is_some_and(|pid| pid != old_pid)
    });
    assert_pid_gone(old_pid, "the unhealthy process");
    let p = get(&seen, "web");
    assert!(
        p.description.contains("500") || p.health == "starting",
        "the reason is shown: {p:?}"
    );
    fs::remove_file(d.path("sick")).expect("removing the flag file");
    let after = d.wait_for("web healthy again after the restart", WAIT, |ps| {
        let p = get(ps, "web");
        p.state == "running" && p.health == "healthy" && p.restarts >= 1
    });
    assert_ne!(get(&after, "web").pid, Some(old_pid));
}

#[test]
fn on_unhealthy_none_reports_and_recovers_without_restarting() {
    let port = free_port();
    let d = Daemon::start(&http_program("api", port, "none"));
    let healthy = d.wait_for("api healthy", WAIT, |ps| get(ps, "api").health == "healthy");
    let pid = get(&healthy, "api").pid;
    assert_eq!(d.ctl(&["status"]).code, 0);

    fs::write(d.path("sick"), "").expect("creating the flag file");
    let sick = d.wait_for("api unhealthy", WAIT, |ps| {
        get(ps, "api").health == "unhealthy"
    });
    let p = get(&sick, "api");
    assert_eq!(p.state, "running");
    assert_eq!(p.pid, pid, "no restart with on_unhealthy = none");
    assert!(
        p.description
            .contains(&format!("GET http://127.0.0.1:{port}/health: 500")),
        "{p:?}"
    );
    let out = d.ctl(&["status", "api"]);
    assert_eq!(out.code, 3, "status exits 3 while unhealthy: {out:?}");

    fs::remove_file(d.path("sick")).expect("removing the flag file");
    let back = d.wait_for("api healthy again", WAIT, |ps| {
        get(ps, "api").health == "healthy"
    });
    assert_eq!(get(&back, "api").pid, pid);
    assert_eq!(get(&back, "api").restarts, 0);
    assert_eq!(d.ctl(&["status"]).code, 0);

    let last = &get(&back, "api").raw["last_probe"];
    assert_eq!(last["ok"], true, "{last}");
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.ends_with(": 200")),
        "{last}"
    );
    assert!(last["duration_ms"].as_f64().is_some(), "{last}");
    assert!(
        last["time"].as_str().is_some_and(|t| t.contains('T')),
        "{last}"
    );
}

#[test]
fn tcp_check_passes_when_listening_and_never_ready_goes_fatal() {
    let open = free_port();
    let closed = free_port();
    let d = Daemon::start(&format!(
        "{}{}",
        program(
            "db",
            &["--tcp", &open.to_string()],
            &format!("[program.db.health]\ntcp = \"127.0.0.1:{open}\"\ninterval = \"100ms\"\n"),
        ),
        program(
            "ghost",
            &[],
            &format!(
                r#"
[program.ghost.backoff]
initial = "50ms"
max_retries = 1
[program.ghost.health]
tcp = "127.0.0.1:{closed}"
interval = "100ms"
start_period = "500ms"
"#
            ),
        )
    ));
    d.wait_for("db healthy", WAIT, |ps| {
        let p = get(ps, "db");
        p.state == "running" && p.health == "healthy"
    });
    let fatal = d.wait_state("ghost", "fatal");
    assert!(
        fatal.description.contains("not ready within 500ms")
            && fatal
                .description
                .contains(&format!("connect 127.0.0.1:{closed}: connection refused")),
        "{fatal:?}"
    );
}

#[test]
fn exec_check_reports_the_first_line_of_stderr() {
    let d = Daemon::start(&program(
        "job",
        &[],
        r#"
[program.job.health]
exec = ["sh", "-c", "test ! -e @TMP@/flag || { echo broken today >&2; exit 1; }"]
interval = "100ms"
failure_threshold = 1
on_unhealthy = "none"
"#,
    ));
    d.wait_for("job healthy", WAIT, |ps| get(ps, "job").health == "healthy");
    fs::write(d.path("flag"), "").expect("creating the flag file");
    let sick = d.wait_for("job unhealthy", WAIT, |ps| {
        get(ps, "job").health == "unhealthy"
    });
    assert!(
        get(&sick, "job")
            .description
            .contains("exit 1: broken today"),
        "{:?}",
        get(&sick, "job")
    );
}

#[test]
fn hung_exec_probe_is_killed_at_its_timeout() {
    let d = Daemon::start(&program(
        "slow",
        &[],
        &format!(
            r#"
[program.slow.health]
exec = [{}, "--pidfile", "@TMP@/probe.pid"]
interval = "100ms"
timeout = "300ms"
start_period = "60s"
"#,
            toml_str(CHILD)
        ),
    ));
    let probe = read_pid(&d.path("probe.pid"));
    assert!(
        wait_pid_gone(probe, WAIT),
        "the hung probe {probe} is still alive"
    );
    let p = d.wait_for("the timeout to be reported", WAIT, |ps| {
        get(ps, "slow")
            .description
            .contains("timed out after 300ms")
    });
    assert_eq!(get(&p, "slow").state, "starting");
}

#[test]
fn notify_ready_gates_running_and_status_text_is_shown() {
    let d = Daemon::start(&program(
        "svc",
        &["--notify-ready-after", "700", "--write-env", "@TMP@/env"],
        "notify = true\nautostart = false\nstart_secs = \"0s\"",
    ));
    let out = d.ctl(&["start", "svc"]);
    assert_eq!(out.code, 0, "{out:?}");
    let p = d.proc("svc");
    assert_eq!(p.state, "running", "ctl start waits for READY=1");
    assert!(
        p.uptime_secs.is_some_and(|u| u >= 0.6),
        "running only after READY=1 (sent after 700ms): {p:?}"
    );
    assert_eq!(p.description, "ready", "STATUS= text is the description");
    let env = parse_env(&fs::read_to_string(d.path("env")).expect("env file"));
    let socket = env_get(&env, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET is set");
    assert!(
        socket.starts_with(d.tmp().to_str().unwrap_or_default()),
        "{socket}"
    );
}

#[test]
fn no_ready_within_ready_timeout_is_a_failed_start() {
    let d = Daemon::start(&program(
        "mute",
        &[],
        r#"notify = true
ready_timeout = "300ms"
[program.mute.backoff]
initial = "50ms"
max_retries = 1
"#,
    ));
    let p = d.wait_state("mute", "fatal");
    assert!(p.description.contains("no READY=1 within 300ms"), "{p:?}");
}

#[test]
fn missed_watchdog_restarts_the_process() {
    let d = Daemon::start(&program(
        "dog",
        &[
            "--watchdog-for",
            "1000",
            "--write-env",
            "@TMP@/env",
            "--pidfile",
            "@TMP@/dog.pid",
        ],
        "watchdog = \"400ms\"\nstart_secs = \"0s\"\n[program.dog.backoff]\ninitial = \"100ms\"",
    ));
    let pid = read_pid(&d.path("dog.pid"));
    let env = parse_env(&fs::read_to_string(d.path("env")).expect("env file"));
    assert_eq!(env_get(&env, "WATCHDOG_USEC"), Some("400000"));
    assert_eq!(
        env_get(&env, "WATCHDOG_PID"),
        Some(pid.to_string().as_str())
    );
    assert!(env_get(&env, "NOTIFY_SOCKET").is_some());
    // Pings keep it alive for a second, then the missed deadline restarts it.
    let p = d.wait_for("the watchdog to restart dog", WAIT, |ps| {
        get(ps, "dog").restarts >= 1
    });
    assert_ne!(get(&p, "dog").pid, Some(pid));
    assert_pid_gone(pid, "the process that stopped pinging");
}

#[test]
fn depends_on_waits_for_readiness() {
    let d = Daemon::start(&format!(
        "{}{}",
        program(
            "base",
            &["--notify-ready-after", "800", "--record", "@TMP@/base.rec"],
            "notify = true",
        ),
        program(
            "top",
            &["--record", "@TMP@/top.rec"],
            "depends_on = [\"base\"]",
        ),
    ));
    let base = wait_record(&d.path("base.rec"), "start", 1);
    let top = wait_record(&d.path("top.rec"), "start", 1);
    let gap_ms = (events_of(&top, "start")[0].ns - events_of(&base, "start")[0].ns) / 1_000_000;
    assert!(
        gap_ms >= 800,
        "top started {gap_ms}ms after base, before base was ready"
    );
    d.wait_state("top", "running");
}
