//! `ctl reexec`: the daemon replaces its image and keeps its PID, every child,
//! every listening socket, the control socket and every counter.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// One GET answered 200.
fn get_ok(port: u16) -> Result<(), String> {
    match http_get(port, "/")? {
        (200, _) => Ok(()),
        (status, body) => Err(format!("status {status}: {body:?}")),
    }
}

fn pids(d: &Daemon) -> Vec<(String, Option<i32>)> {
    d.status().into_iter().map(|p| (p.name, p.pid)).collect()
}

#[test]
fn reexec_three_times_keeps_pids_sockets_and_counters_under_load() {
    let port = free_port();
    let d = Daemon::start(&format!(
        "{}{}{}",
        program(
            "web",
            &["--serve-inherited"],
            &format!("listen = [\"tcp://127.0.0.1:{port}\"]\nstart_secs = \"0s\""),
        ),
        program("idle", &[], "instances = 2"),
        program(
            "flappy",
            &["--exit-after", "300", "--exit-code", "1"],
            "start_secs = \"0s\"\n[program.flappy.backoff]\ninitial = \"100ms\"\nmax = \"100ms\"",
        ),
    ));
    d.wait_for("web and idle running, flappy restarted", WAIT, |ps| {
        get_row(ps, "web").state == "running"
            && get_row(ps, "idle:1").state == "running"
            && get_row(ps, "flappy").restarts >= 2
    });
    let daemon_pid = d.ctl_ok(&["pid"]).stdout.trim().to_string();
    let before = pids(&d);
    let restarts_before = d.proc("flappy").restarts;

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, served, failures) = (
                Arc::clone(&stop),
                Arc::clone(&served),
                Arc::clone(&failures),
            );
            thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(60);
                for _ in 0..100_000 {
                    if stop.load(Ordering::SeqCst) || Instant::now() > until {
                        break;
                    }
                    match get_ok(port) {
                        Ok(()) => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    for round in 0..3 {
        let out = d.ctl(&["reexec"]);
        assert_eq!(out.code, 0, "reexec {round}: {out:?}");
        assert_eq!(
            d.ctl_ok(&["pid"]).stdout.trim(),
            daemon_pid,
            "same daemon PID"
        );
        let now = pids(&d);
        for (name, pid) in &before {
            if name != "flappy" {
                assert!(
                    now.contains(&(name.clone(), *pid)),
                    "{name} kept pid {pid:?}: {now:?}"
                );
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served.load(Ordering::SeqCst) > 50, "the load ran");
    // The crash loop goes on under the new image: its exits are still seen,
    // and the counter carried over.
    d.wait_for("flappy restarted by the new image", WAIT, |ps| {
        get_row(ps, "flappy").restarts >= restarts_before + 2
    });
}

fn get_row<'a>(ps: &'a [Proc], name: &str) -> &'a Proc {
    common::get(ps, name)
}

#[test]
fn a_binary_that_fails_the_checks_leaves_the_old_image_in_charge() {
    let d = Daemon::start(&program("idle", &[], ""));
    d.wait_state("idle", "running");
    let pid = d.proc("idle").pid;
    let daemon_pid = d.ctl_ok(&["pid"]).stdout;
    for (binary, expected) in [
        ("/nonexistent/minder", "No such file or directory"),
        ("/bin/true", "does not read this version's state"),
        ("/bin/false", "--version exited with code 1"),
    ] {
        let out = d.ctl(&["reexec", "--binary", binary]);
        assert_eq!(out.code, 1, "{binary}: {out:?}");
        assert!(out.stderr.contains(expected), "{binary}: {out:?}");
    }
    assert_eq!(d.ctl_ok(&["pid"]).stdout, daemon_pid);
    assert_eq!(d.proc("idle").pid, pid);
}

#[test]
fn reexec_into_another_binary_and_refuse_a_changed_config() {
    let d = Daemon::start(&program("idle", &[], ""));
    d.wait_state("idle", "running");
    let pid = d.proc("idle").pid;
    let copy = d.path("minder-upgraded");
    std::fs::copy(MINDER, &copy).expect("copying the binary");
    let out = d.ctl(&["reexec", "--binary", copy.to_str().expect("utf-8 path")]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(d.proc("idle").pid, pid);
    let exe = std::fs::read_link(format!("/proc/{}/exe", d.pid())).expect("daemon exe");
    assert_eq!(exe, copy, "the daemon now runs the new binary");

    d.write_config(&format!(
        "{}{}",
        program("idle", &[], ""),
        program("extra", &[], "")
    ));
    let out = d.ctl(&["reexec"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("ctl reload"), "{out:?}");
}

#[test]
fn no_output_line_is_lost_or_doubled_across_reexec() {
    let d = Daemon::start(&program("ticker", &["--tick", "2"], "start_secs = \"0s\""));
    d.wait_state("ticker", "running");
    let pid = d.proc("ticker").pid;
    let log = d.path("logs/ticker.stdout.log");
    wait_file_until(&log, "the first ticks", |t| t.lines().count() >= 20);
    for round in 0..3 {
        let out = d.ctl(&["reexec"]);
        assert_eq!(out.code, 0, "reexec {round}: {out:?}");
        // Output keeps flowing into the same file between re-executions.
        let before = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count();
        wait_file_until(&log, "ticks after the reexec", |t| {
            t.lines().count() >= before + 20
        });
    }
    assert_eq!(d.proc("ticker").pid, pid, "the same child throughout");
    d.ctl_ok(&["stop", "ticker"]);
    let text = std::fs::read_to_string(&log).expect("the log file");
    let ticks: Vec<u64> = text
        .lines()
        .map(|l| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l:?}"))
        })
        .collect();
    let expected: Vec<u64> = (1..=ticks.len() as u64).collect();
    assert_eq!(ticks, expected, "every tick exactly once, in order");
    assert!(ticks.len() > 100, "{} ticks", ticks.len());
}
