//! Sockets held by minder (`listen`) and rolling restarts: zero failed
//! requests while programs restart. Loopback and unix sockets only; every
//! client loop is bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// One GET; the body is the serving PID.
fn get(port: u16) -> Result<i32, String> {
    match http_get(port, "/")? {
        (200, body) => body
            .trim()
            .parse()
            .map_err(|_| format!("no pid in {body:?}")),
        (status, body) => Err(format!("status {status}: {body:?}")),
    }
}

fn get_unix(path: &std::path::Path) -> Result<i32, String> {
    let mut conn =
        std::os::unix::net::UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    parse_response(&response)
}

fn parse_response(response: &str) -> Result<i32, String> {
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("bad response {response:?}"));
    }
    response
        .rsplit("\r\n\r\n")
        .next()
        .and_then(|b| b.trim().parse().ok())
        .ok_or_else(|| format!("no pid in {response:?}"))
}

/// Clients requesting back to back until stopped (bounded by count and time).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failures) =
                    (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
                thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(120);
                    for _ in 0..200_000 {
                        if stop.load(Ordering::SeqCst) || Instant::now() > until {
                            break;
                        }
                        match get(port) {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    /// Stops the clients; returns (requests served, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("a client thread panicked");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

fn web(port: u16, extra_args: &[&str], extra: &str) -> String {
    let mut args = vec![
        "--serve-inherited",
        "--notify-ready-after",
        "50",
        "--pidfile",
        "@TMP@/web.pid",
    ];
    args.extend_from_slice(extra_args);
    program(
        "web",
        &args,
        &format!(
            "listen = [\"tcp://127.0.0.1:{port}\"]\nnotify = true\nstop_timeout = \"5s\"\n{extra}"
        ),
    )
}

#[test]
fn children_get_the_sockets_with_the_socket_activation_variables() {
    let port = free_port();
    let d = Daemon::start(&program(
        "web",
        &["--serve-inherited", "--write-env", "@TMP@/env", "--pidfile", "@TMP@/web.pid"],
        &format!(
            "listen = [\"tcp://127.0.0.1:{port}\", \"unix://@TMP@/web.sock\"]\nlisten_names = [\"http\", \"local\"]\nlisten_mode = \"0600\""
        ),
    ));
    let pid = read_pid(&d.path("web.pid"));
    let env = parse_env(&std::fs::read_to_string(d.path("env")).expect("env file"));
    assert_eq!(env_get(&env, "LISTEN_FDS"), Some("2"));
    assert_eq!(env_get(&env, "LISTEN_PID"), Some(pid.to_string().as_str()));
    assert_eq!(env_get(&env, "LISTEN_FDNAMES"), Some("http:local"));
    assert_eq!(get(port), Ok(pid), "served over TCP by the child");
    assert_eq!(
        get_unix(&d.path("web.sock")),
        Ok(pid),
        "served over the unix socket"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.path("web.sock"))
            .expect("socket file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn twenty_rolling_restarts_under_load_fail_no_request() {
    let port = free_port();
    let d = Daemon::start(&web(port, &["--request-ms", "5"], ""));
    d.wait_state("web", "running");
    let load = Load::start(port, 4);
    let mut pids = vec![read_pid(&d.path("web.pid"))];
    for round in 0..20 {
        let out = d.ctl(&["restart", "web"]);
        assert_eq!(out.code, 0, "restart {round}: {out:?}");
        let pid = d.proc("web").pid.expect("running after restart");
        assert!(!pids.contains(&pid), "restart {round} gave a new PID");
        pids.push(pid);
    }
    let (served, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        served + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served > 100, "the load ran: {served} requests");
    assert_eq!(
        d.proc("web").restarts,
        0,
        "requested restarts are not counted"
    );
}

#[test]
fn connections_during_a_crash_wait_for_the_next_process() {
    let port = free_port();
    let d = Daemon::start(&web(
        port,
        &[],
        "[program.web.backoff]\ninitial = \"500ms\"\njitter = 0.0",
    ));
    d.wait_state("web", "running");
    let old = read_pid(&d.path("web.pid"));
    d.ctl_ok(&["signal", "KILL", "web"]);
    assert!(wait_pid_gone(old, WAIT), "the killed process is gone");
    // While it is down (backoff), new connections queue on minder's socket.
    let clients: Vec<_> = (0..8).map(|_| thread::spawn(move || get(port))).collect();
    let results: Vec<Result<i32, String>> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    for r in &results {
        let pid = r
            .as_ref()
            .unwrap_or_else(|e| panic!("a request failed: {e}; all: {results:?}"));
        assert_ne!(*pid, old, "served by the next process");
    }
    assert_eq!(d.proc("web").restarts, 1);
}

#[test]
fn a_replacement_that_never_gets_ready_leaves_the_old_process_serving() {
    let port = free_port();
    let d = Daemon::start(&web(
        port,
        &["--unready-if", "@TMP@/unready"],
        "ready_timeout = \"500ms\"\n[program.web.backoff]\ninitial = \"100ms\"",
    ));
    d.wait_state("web", "running");
    let old = read_pid(&d.path("web.pid"));
    std::fs::write(d.path("unready"), "").expect("flag file");
    let out = d.ctl(&["restart", "web"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("still serving from pid {old}")),
        "{out:?}"
    );
    let p = d.proc("web");
    assert_eq!((p.state.as_str(), p.pid), ("running", Some(old)));
    assert_eq!(get(port), Ok(old), "the old process still serves");
}

/// The one `web` entry of a status, checking there is exactly one.
fn only_web(ps: &[Proc]) -> &Proc {
    let rows: Vec<&Proc> = ps.iter().filter(|p| p.name == "web").collect();
    assert_eq!(rows.len(), 1, "one entry per name: {ps:#?}");
    rows[0]
}

/// The `draining` list of an entry: (pid, uptime_secs, description) each.
fn draining(p: &Proc) -> Vec<(i32, f64, String)> {
    let list = p.raw["draining"]
        .as_array()
        .unwrap_or_else(|| panic!("no draining list in {}", p.raw));
    list.iter()
        .map(|d| {
            (
                d["pid"].as_i64().expect("draining pid") as i32,
                d["uptime_secs"].as_f64().expect("draining uptime_secs"),
                d["description"]
                    .as_str()
                    .expect("draining description")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn rolling_restart_lists_each_name_once() {
    let port = free_port();
    // The successor takes a while to become ready (the overlap shows), and
    // every process ignores SIGTERM with a long stop_timeout: the predecessor
    // drains until this test kills it (and shutdown kills the successor).
    let d = Daemon::start_with(
        "shutdown_timeout = \"1s\"",
        &program(
            "web",
            &[
                "--serve-inherited",
                "--notify-ready-after",
                "1500",
                "--ignore-term",
                "--pidfile",
                "@TMP@/web.pid",
            ],
            &format!(
                "listen = [\"tcp://127.0.0.1:{port}\"]\nnotify = true\nstop_timeout = \"60s\""
            ),
        ),
    );
    let first = d.wait_state("web", "running");
    assert_eq!(draining(&first), vec![], "no predecessor yet");
    let old = read_pid(&d.path("web.pid"));
    d.ctl_ok(&["restart", "--no-wait", "web"]);

    // Overlap: the successor starts, the old process serves, inside its entry.
    let overlap = d.wait_for("the successor to be starting", WAIT, |ps| {
        only_web(ps).state == "starting"
    });
    let web = only_web(&overlap);
    assert_ne!(web.pid, Some(old), "the entry is the successor's: {web:?}");
    let listed = draining(web);
    assert_eq!(listed.len(), 1, "{web:?}");
    assert_eq!(listed[0].0, old, "{web:?}");
    assert!(listed[0].1 > 0.0, "{web:?}");
    assert_eq!(
        listed[0].2, "serving until its replacement is ready",
        "{web:?}"
    );
    assert_eq!(
        get(port),
        Ok(old),
        "the old one serves until the new one is ready"
    );

    // Drain: the successor is ready, the old process ignores its stop signal.
    let drain = d.wait_for("the successor to be ready", WAIT, |ps| {
        only_web(ps).state == "running"
    });
    let web = only_web(&drain);
    let new = web.pid.expect("the successor runs");
    assert_ne!(new, old);
    assert_eq!(read_pid(&d.path("web.pid")), new);
    let listed = draining(web);
    assert_eq!(listed.len(), 1, "the old one is still draining: {web:?}");
    assert_eq!(listed[0].0, old, "{web:?}");
    assert!(
        listed[0].1 >= web.uptime_secs.expect("uptime"),
        "the old one has run longer: {web:?}"
    );
    assert!(
        listed[0].2.starts_with("stop signal sent ")
            && listed[0].2.ends_with("; its replacement is ready"),
        "{web:?}"
    );
    assert!(pid_alive(old), "the old one ignores SIGTERM");
    // A draining predecessor is no process of its own: `status` exits 0.
    let out = d.ctl(&["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let row = lines
        .iter()
        .position(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no web row: {out:?}"));
    assert!(
        lines[row].contains(&new.to_string()),
        "the row is the successor's: {out:?}"
    );
    assert!(
        lines
            .get(row + 1)
            .is_some_and(|l| l.starts_with(&format!("  draining: pid {old}, up "))
                && l.contains("stop signal sent")),
        "an indented line under the successor's row: {out:?}"
    );
    assert_eq!(lines.len(), 3, "header, row, draining line: {out:?}");
    assert_eq!(d.ctl(&["status", "--json", "web"]).code, 0);

    // SAFETY: old is the predecessor the daemon spawned, alive as checked above.
    unsafe { libc::kill(old, libc::SIGKILL) };
    let after = d.wait_for("the predecessor to be gone", WAIT, |ps| {
        draining(only_web(ps)).is_empty()
    });
    let web = only_web(&after);
    assert_eq!((web.state.as_str(), web.pid), ("running", Some(new)));
    assert!(wait_pid_gone(old, WAIT));
    let out = d.ctl(&["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("draining"), "{out:?}");
}

#[test]
fn a_reload_that_changes_a_listening_program_rolls_without_failing_a_request() {
    let port = free_port();
    let body = |tag: &str| {
        program(
            "web",
            &[
                "--serve-inherited",
                "--notify-ready-after",
                "50",
                "--tag",
                tag,
                "--record",
                "@TMP@/web.rec",
            ],
            &format!("listen = [\"tcp://127.0.0.1:{port}\"]\nnotify = true\nstop_timeout = \"5s\""),
        )
    };
    let d = Daemon::start(&body("v1"));
    d.wait_state("web", "running");
    let old = d.proc("web").pid;
    let load = Load::start(port, 4);
    d.write_config(&body("v2"));
    let out = d.ctl(&["reload"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("changed: web"), "{out:?}");
    let after = d.wait_for("the v2 process to take over", WAIT, |ps| {
        let rows: Vec<_> = ps.iter().filter(|p| p.name == "web").collect();
        rows.len() == 1 && rows[0].state == "running" && rows[0].pid != old
    });
    let (served, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served > 10, "the load ran: {served}");
    let new = get_row(&after, "web").pid.expect("running");
    let cmdline = std::fs::read_to_string(format!("/proc/{new}/cmdline")).expect("cmdline");
    assert!(cmdline.contains("v2"), "runs the new settings: {cmdline:?}");
    assert!(
        wait_pid_gone(old.expect("old pid"), WAIT),
        "the old process is gone"
    );
    // Rolling: the new process started before the old one was told to stop.
    let record = wait_record(&d.path("web.rec"), "stop", 1);
    let starts = events_of(&record, "start");
    let stop = &events_of(&record, "stop")[0];
    assert_eq!(stop.pid, old.expect("old pid"));
    assert!(
        starts.iter().any(|s| s.pid == new && s.ns < stop.ns),
        "the v2 process started before the v1 process was stopped: {record:?}"
    );
}

fn get_row<'a>(ps: &'a [Proc], name: &str) -> &'a Proc {
    common::get(ps, name)
}

#[test]
fn instances_share_the_sockets_and_roll_one_at_a_time() {
    let port = free_port();
    let d = Daemon::start(&program(
        "web",
        &[
            "--serve-inherited",
            "--notify-ready-after",
            "100",
            "--request-ms",
            "100",
            "--record",
            "@TMP@/{name}.rec",
        ],
        &format!("listen = [\"tcp://127.0.0.1:{port}\"]\nnotify = true\ninstances = 2"),
    ));
    d.wait_for("both instances running", WAIT, |ps| {
        ps.iter()
            .filter(|p| p.program == "web" && p.state == "running")
            .count()
            == 2
    });
    let before: Vec<i32> = d.status().iter().filter_map(|p| p.pid).collect();
    // Both serve the one socket: while one is busy with a request, the other
    // takes the next connection.
    let clients: Vec<_> = (0..4).map(|_| thread::spawn(move || get(port))).collect();
    let served_by: std::collections::HashSet<i32> = clients
        .into_iter()
        .map(|c| c.join().expect("client").expect("a request"))
        .collect();
    assert_eq!(
        served_by.len(),
        2,
        "both instances accept on the shared socket"
    );
    d.ctl_ok(&["restart", "web"]);
    let rec0 = wait_record(&d.path("web:0.rec"), "stop", 1);
    let rec1 = wait_record(&d.path("web:1.rec"), "stop", 1);
    let old0_stop = events_of(&rec0, "stop")[0].ns;
    let new1_start = events_of(&rec1, "start")[1].ns;
    assert!(
        new1_start > old0_stop,
        "web:1 is replaced only after web:0's rollout finished: {rec0:?} {rec1:?}"
    );
    // ctl restart returns once the new processes are ready; the old ones drain.
    d.wait_for("only new processes left", WAIT, |ps| {
        ps.len() == 2
            && ps
                .iter()
                .all(|p| p.pid.is_some_and(|pid| !before.contains(&pid)) && draining(p).is_empty())
    });
}
