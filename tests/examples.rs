//! The examples under etc/examples run as they are: each is copied to a temp
//! dir with only its port numbers changed (to free ones, so the test does not
//! depend on 8080 being free), started with `minder daemon -c`, and checked
//! from the outside.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::haproxy::eventually;
use common::*;
use serde_json::Value;

/// The balancers' start, four instances' health and the registrations, on a
/// loaded 2-core machine.
const UP: Duration = Duration::from_secs(60);

/// Copies `from` to `to` (files and directories; run-time state under `run/`
/// is left behind), replacing each `(old, new)` in every file's text.
fn copy_rewritten(from: &Path, to: &Path, replace: &[(String, String)]) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "run" {
                copy_rewritten(&path, &target, replace);
            }
            continue;
        }
        let mut text = fs::read_to_string(&path).unwrap();
        for (old, new) in replace {
            text = text.replace(old.as_str(), new.as_str());
        }
        fs::write(&target, text).unwrap();
    }
}

/// Fails (rather than skips) when a program the example runs is missing.
fn require(program: &str, arg: &str) {
    let out = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("`{program} {arg}`: {e}: the example needs {program}"));
    assert!(out.status.success(), "`{program} {arg}`: {out:?}");
}

/// A minder daemon on an example's config; shut down (or, failing that,
/// signalled) by PID on drop.
struct ExampleDaemon {
    child: Child,
    config: PathBuf,
    log: PathBuf,
}

impl ExampleDaemon {
    fn start(dir: &Path) -> ExampleDaemon {
        let config = dir.join("minder.toml");
        let log = dir.join("daemon.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(MINDER)
            .arg("daemon")
            .arg("-c")
            .arg(&config)
            .current_dir(dir)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("MINDER_SOCKET")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning minder daemon");
        ExampleDaemon { child, config, log }
    }

    fn ctl(&self, args: &[&str]) -> Out {
        let config = self.config.display().to_string();
        let mut all = vec!["ctl", "-c", config.as_str()];
        all.extend_from_slice(args);
        run_minder(&all)
    }

    /// `status --json` processes, or `None` while the daemon does not answer.
    fn processes(&self) -> Option<Vec<Value>> {
        let out = self.ctl(&["status", "--json"]);
        let doc: Value = serde_json::from_str(out.stdout.trim()).ok()?;
        doc["processes"].as_array().cloned()
    }

    /// Waits (bounded) for the daemon to exit after `ctl shutdown`.
    fn shutdown(&mut self) {
        let out = self.ctl(&["shutdown"]);
        assert_eq!(out.code, 0, "ctl shutdown: {out:?}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "minder exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "minder still up 30 s after shutdown"
            );
            thread::sleep(POLL);
        }
    }
}

impl Drop for ExampleDaemon {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- daemon.log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM: minder stops nginx, HAProxy and the instances it started.
            let pid = self.child.id() as i32;
            // SAFETY: kill(2) on the PID of our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(POLL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn web_behind_balancers_serves_through_nginx_and_haproxy() {
    require("python3", "--version");
    require("nginx", "-v");
    require("haproxy", "-v");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/examples/web-behind-balancers");
    let tmp = tempfile::Builder::new()
        .prefix("minder-example.")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("web-behind-balancers");
    let (nginx_port, haproxy_port, base) = (free_port(), free_port(), free_ports(4));
    let mut replace = vec![
        ("8080".to_string(), nginx_port.to_string()),
        ("8081".to_string(), haproxy_port.to_string()),
    ];
    for i in 0..4 {
        replace.push(((9001 + i).to_string(), (base + i).to_string()));
    }
    copy_rewritten(&example, &dir, &replace);
    let config = fs::read_to_string(dir.join("minder.toml")).unwrap();
    assert!(config.contains(&format!("port = {base}")), "{config}");

    let check = run_minder(&[
        "check",
        "-c",
        &dir.join("minder.toml").display().to_string(),
    ]);
    assert_eq!(check.code, 0, "minder check: {check:?}");

    let mut d = ExampleDaemon::start(&dir);
    eventually(
        "4 instances in both balancers, nginx and haproxy running",
        UP,
        || {
            let Some(ps) = d.processes() else {
                return false;
            };
            let running = |name: &str| {
                ps.iter()
                    .any(|p| p["name"] == name && p["state"] == "running")
            };
            let web_in = ps
                .iter()
                .filter(|p| p["program"] == "web")
                .filter(|p| p["state"] == "running" && p["health"] == "healthy")
                .filter(|p| p["register"] == serde_json::json!({"haproxy": "ok", "file": "ok"}))
                .count();
            web_in == 4 && running("nginx") && running("haproxy")
        },
    );
    let upstream = fs::read_to_string(dir.join("run/upstream-web.conf")).unwrap();
    for i in 0..4 {
        assert!(
            upstream.contains(&format!("server 127.0.0.1:{};", base + i)),
            "{upstream}"
        );
    }
    // nginx may still be reading the file of a reload a moment ago; requests
    // through both balancers succeed once it serves.
    for (what, port) in [("nginx", nginx_port), ("HAProxy", haproxy_port)] {
        eventually(&format!("{what} answers 200"), UP, || {
            matches!(http_get(port, "/"), Ok((200, _)))
        });
        for _ in 0..20 {
            let (status, body) = http_get(port, "/").unwrap();
            assert_eq!(status, 200, "through {what}: {body}");
            assert!(body.contains("minder example"), "through {what}: {body}");
        }
    }
    d.shutdown();
}

#[test]
fn container_example_runs_with_every_line_on_minders_stdout_and_stderr() {
    require("python3", "--version");
    require("nginx", "-v");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/examples/container");
    // The image is not built here; what it runs is this directory, as it is.
    let dockerfile = fs::read_to_string(example.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("COPY etc/examples/container/ /srv/app/")
            && dockerfile.contains("\"daemon\", \"-c\", \"/srv/app/minder.toml\"]"),
        "{dockerfile}"
    );
    let tmp = tempfile::Builder::new()
        .prefix("minder-example.")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("container");
    let (port, base) = (free_port(), free_ports(2));
    let replace = [
        // Loopback only in tests (the image listens on every address).
        ("0.0.0.0:8080".to_string(), format!("127.0.0.1:{port}")),
        ("9001".to_string(), base.to_string()),
        ("9002".to_string(), (base + 1).to_string()),
    ];
    copy_rewritten(&example, &dir, &replace);
    let config = dir.join("minder.toml");
    let check = run_minder(&["check", "-c", &config.display().to_string()]);
    assert_eq!(check.code, 0, "minder check: {check:?}");

    let mut d = ExampleDaemon::start(&dir);
    eventually("nginx and both workers running", UP, || {
        d.processes()
            .is_some_and(|ps| ps.len() == 3 && ps.iter().all(|p| p["state"] == "running"))
    });
    eventually(
        "nginx answers 200",
        UP,
        || matches!(http_get(port, "/"), Ok((200, body)) if body.contains("minder container example")),
    );
    // Both sides of the request, on minder's own output, prefixed.
    eventually("the access log and a worker's request log", UP, || {
        let log = fs::read_to_string(&d.log).unwrap_or_default();
        log.lines()
            .any(|l| l.starts_with("nginx | ") && l.contains("\"GET / HTTP/1.1\" 200"))
            && log
                .lines()
                .any(|l| l.starts_with("worker:") && l.contains("\"GET / HTTP/1.0\" 200"))
    });
    assert!(
        !dir.join("run/logs").exists(),
        "log files were written: every stream is inherited"
    );
    d.shutdown();
}
