//! A supervised program is not trusted: what it says on the notify socket
//! (`MAINPID=`, `STATUS=`) or prints where minder quotes it must neither
//! point minder's root signals at other processes nor reach a terminal as
//! control characters.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use common::*;
use serde_json::Value;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether every directory above `path` (and the file) lets others in.
fn reachable_by_others(path: &str) -> bool {
    Path::new(path).ancestors().all(|p| {
        fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

/// A daemon whose program `hostile` runs the test child with `args` and
/// `notify = true`, as the unprivileged user `nobody` when the tests run as
/// root (the case that matters: minder signals as root on its behalf).
/// `out/` in the temp dir is writable by that user.
fn hostile_daemon(args: &[&str], extra: &str) -> Daemon {
    let as_nobody = is_root() && reachable_by_others(CHILD);
    if !as_nobody {
        eprintln!(
            "running the hostile program as the test's own user: {}",
            if is_root() {
                "the test child is not reachable by other users"
            } else {
                "`user` needs root (CI runs as root)"
            }
        );
    }
    let user = if as_nobody { "user = \"nobody\"\n" } else { "" };
    let mut d = Daemon::prepare(
        "",
        &program("hostile", args, &format!("notify = true\n{user}{extra}")),
    );
    // nobody must reach the notify socket and its files: a traversable temp dir, a writable out/.
    fs::set_permissions(d.tmp(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::create_dir(d.path("out")).unwrap();
    fs::set_permissions(d.path("out"), fs::Permissions::from_mode(0o777)).unwrap();
    d.spawn();
    d.wait_ready();
    d
}

/// A process the test starts itself, outside minder's tree; killed and reaped on drop.
struct Stranger(Child);

impl Stranger {
    fn start() -> Stranger {
        Stranger(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawning sleep"),
        )
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) until the daemon's log has a line containing `needle`.
fn wait_log(d: &Daemon, needle: &str) -> String {
    let text = wait_file_until(&d.log_path, needle, |t| t.contains(needle));
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn mainpid_of_a_stranger_is_refused() {
    let stranger = Stranger::start();
    let message = format!("MAINPID={}\nREADY=1", stranger.pid());
    let d = hostile_daemon(&["--notify", &message, "--pidfile", "@TMP@/out/pid"], "");
    let child = read_pid(&d.path("out/pid"));
    // READY=1 in the same message still counts; the main process is unchanged.
    let p = d.wait_state("hostile", "running");
    assert_eq!(p.pid, Some(child), "{p:#?}");
    let warning = wait_log(
        &d,
        &format!("MAINPID={} from pid {child} refused", stranger.pid()),
    );
    assert!(
        warning.contains("WARN")
            && warning.contains("hostile")
            && warning.contains("not a descendant"),
        "{warning}"
    );

    d.ctl_ok(&["stop", "hostile"]);
    assert_eq!(d.proc("hostile").state, "stopped");
    assert!(
        pid_alive(stranger.pid()),
        "the stranger {} was signalled: {:?}",
        stranger.pid(),
        proc_stat(stranger.pid())
    );
    assert_pid_gone(child, "the real child");
}

#[test]
fn mainpid_of_minder_itself_is_refused() {
    // The test child's parent is minder.
    let mut d = hostile_daemon(
        &[
            "--notify",
            "MAINPID=%parent%\nREADY=1",
            "--pidfile",
            "@TMP@/out/pid",
        ],
        "",
    );
    let child = read_pid(&d.path("out/pid"));
    let p = d.wait_state("hostile", "running");
    assert_eq!(p.pid, Some(child), "{p:#?}");
    let warning = wait_log(&d, &format!("MAINPID={} from pid {child} refused", d.pid()));
    assert!(warning.contains("minder itself"), "{warning}");

    d.ctl_ok(&["stop", "hostile"]);
    assert_eq!(d.proc("hostile").state, "stopped");
    assert_pid_gone(child, "the real child");
    assert!(d.try_wait().is_none(), "minder signalled itself");
}

#[test]
fn mainpid_of_a_forked_descendant_is_followed() {
    let mut d = hostile_daemon(
        &[
            "--grandchild",
            "@TMP@/out/forked",
            "--notify",
            "MAINPID=%grandchild%\nREADY=1",
            "--pidfile",
            "@TMP@/out/pid",
        ],
        "",
    );
    let first = read_pid(&d.path("out/pid"));
    let forked = read_pid(&d.path("out/forked"));
    d.wait_for("the forked process to be the main one", WAIT, |ps| {
        find(ps, "hostile").is_some_and(|p| p.state == "running" && p.pid == Some(forked))
    });
    // Like a forking daemon, the first process leaves; minder inherits the
    // forked one (child subreaper) and so learns of its exit.
    // SAFETY: kill(2) on the test child this test's daemon started, not yet reaped by minder.
    unsafe { libc::kill(first, libc::SIGKILL) };
    assert_pid_gone(first, "the first process");
    let minder = d.pid();
    let start = Instant::now();
    while proc_stat(forked).map(|(ppid, _)| ppid) != Some(minder) && start.elapsed() < WAIT {
        thread::sleep(POLL);
    }
    assert_eq!(proc_stat(forked).map(|(ppid, _)| ppid), Some(minder));

    d.ctl_ok(&["stop", "hostile"]);
    assert_eq!(d.proc("hostile").state, "stopped");
    assert_pid_gone(forked, "the forked main process");
    assert!(d.try_wait().is_none());
}

#[test]
fn stop_finishes_when_the_adopted_process_is_not_minders_child() {
    // The forked process stays the child of the first one, which lives on
    // and never collects it: minder cannot wait for it.
    let d = hostile_daemon(
        &[
            "--grandchild",
            "@TMP@/out/forked",
            "--notify",
            "MAINPID=%grandchild%\nREADY=1",
        ],
        "",
    );
    let forked = read_pid(&d.path("out/forked"));
    d.wait_for("the forked process to be the main one", WAIT, |ps| {
        find(ps, "hostile").is_some_and(|p| p.state == "running" && p.pid == Some(forked))
    });
    assert_ne!(proc_stat(forked).map(|(ppid, _)| ppid), Some(d.pid()));

    d.ctl_ok(&["stop", "hostile"]);
    let p = d.proc("hostile");
    assert_eq!(p.state, "stopped", "{p:#?}");
    assert_pid_gone(forked, "the forked main process");
}

/// What a program sends: ESC sequences (clear screen, set the window title),
/// a carriage return to overwrite the line, BEL, a tab and a backslash.
const HOSTILE: &str = "ok\x1b[2J\x1b]0;owned\x07\roverwritten\tx\\y";
/// How a terminal must show it.
const SHOWN: &str = "ok\\x1b[2J\\x1b]0;owned\\x07\\roverwritten\\tx\\\\y";

fn assert_no_controls(text: &str, what: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{what} has control characters: {text:?}"
    );
}

#[test]
fn status_text_is_sanitized_for_terminals_and_exact_in_json() {
    let message = format!("STATUS={HOSTILE}\nREADY=1");
    let d = hostile_daemon(&["--notify", &message], "");
    // `--json` (which `wait_for` reads) keeps the exact text.
    d.wait_for("the STATUS= text as description", WAIT, |ps| {
        find(ps, "hostile").is_some_and(|p| p.state == "running" && p.description == HOSTILE)
    });
    let human = d.ctl_ok(&["status"]).stdout;
    assert_no_controls(&human, "`ctl status`");
    let row = human
        .lines()
        .find(|l| l.starts_with("hostile"))
        .unwrap_or_else(|| panic!("no row for hostile: {human}"));
    assert!(row.contains(SHOWN), "{row:?}");
}

/// Lines printed by `minder ctl events ARGS`, collected on a thread.
struct EventsReader {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl EventsReader {
    fn start(d: &Daemon, json: bool) -> EventsReader {
        let sock = d.sock.display().to_string();
        let mut args = vec!["ctl", "-s", sock.as_str(), "events"];
        if json {
            args.push("--json");
        }
        let mut child = Command::new(MINDER)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning ctl events");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        EventsReader { child, lines }
    }

    /// The first line (within [`WAIT`]) for which `pred` holds.
    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no {what} within {WAIT:?}; lines: {seen:#?}"),
            }
        }
    }
}

impl Drop for EventsReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn probe_output_is_sanitized_in_events_and_minders_log() {
    // The probe quotes a file the program writes: text the program controls.
    let probe = "cat @TMP@/out/health >&2; test ! -s @TMP@/out/health";
    let health = format!(
        "[program.hostile.health]\nexec = {}\ninterval = \"100ms\"\nfailure_threshold = 1\n",
        toml_array(&["sh", "-c", probe])
    );
    let d = hostile_daemon(&[], &format!("autostart = false\n{health}"));
    let human = EventsReader::start(&d, false);
    let json = EventsReader::start(&d, true);
    // Both readers are subscribed once they print the start's first change.
    d.ctl_ok(&["start", "hostile"]);
    human.wait_line("start event", |l| l.contains("-> running"));
    json.wait_line("start event", |l| l.contains("\"running\""));

    fs::write(d.path("out/health"), format!("{HOSTILE}\n")).unwrap();
    let line = human.wait_line("event quoting the probe", |l| l.contains("exit 1: ok"));
    assert_no_controls(&line, "`ctl events`");
    assert!(line.contains(&format!("exit 1: {SHOWN}")), "{line:?}");
    let line = json.wait_line("event quoting the probe", |l| l.contains("exit 1: ok"));
    let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
    let reason = event["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("exit 1: {HOSTILE}")), "{reason:?}");

    // minder's own log quotes it on the change it caused (running -> stopping).
    let logged = wait_log(&d, &format!("exit 1: {SHOWN}"));
    assert!(logged.contains("hostile"), "{logged:?}");
    let log = fs::read_to_string(&d.log_path).unwrap();
    assert_no_controls(&log, "minder's log");
}
