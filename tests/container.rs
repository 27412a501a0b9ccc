//! minder in a container (SPEC §5.7): `logs.stdout`/`stderr = "inherit"`
//! (whole prefixed lines on minder's own stdout and stderr, `ctl tail` from
//! memory, a stalled reader dropping rather than blocking), `on_fatal`, and
//! minder as PID 1 of a PID namespace.

mod common;

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{descendants, proc_children, program, Daemon, WAIT};

/// Starts a daemon on `body` with its stdout into `stdout.txt` of its temp dir.
fn start_to_file(body: &str) -> Daemon {
    let mut d = Daemon::prepare("shutdown_timeout = \"10s\"", body);
    let out = fs::File::create(d.path("stdout.txt")).expect("creating stdout.txt");
    d.spawn_wrapped(&[], Some(out.into()), &[], &[]);
    d.wait_ready();
    d
}

/// The lines of `path` once `pred` holds for them (bounded wait).
fn lines_when(path: &Path, desc: &str, pred: impl Fn(&[&str]) -> bool) -> Vec<String> {
    let text = common::wait_file_until(path, desc, |t| pred(&t.lines().collect::<Vec<_>>()));
    text.lines().map(str::to_owned).collect()
}

#[test]
fn inherited_streams_reach_minders_stdout_and_stderr_as_prefixed_lines() {
    let body = [
        program(
            "web",
            &["--print", "hello", "--eprint", "oops"],
            "instances = 2\n[program.web.logs]\nstdout = \"inherit\"\nstderr = \"inherit\"\n",
        ),
        program(
            "plain",
            &["--print", "as it is"],
            "[program.plain.logs]\nstdout = \"inherit\"\nprefix = false\n",
        ),
    ]
    .concat();
    let d = start_to_file(&body);
    let stdout = lines_when(&d.path("stdout.txt"), "three lines", |l| l.len() >= 3);
    let mut sorted = stdout.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["as it is", "web:0 | hello", "web:1 | hello"],
        "{stdout:?}"
    );
    // stderr holds minder's own log too.
    lines_when(&d.log_path, "both stderr lines", |l| {
        l.contains(&"web:0 | oops") && l.contains(&"web:1 | oops")
    });
    // Nothing was written to log files.
    let files: Vec<_> = fs::read_dir(d.path("logs"))
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "log files made: {files:?}");
}

/// Line `n` of instance `i` of the `long` program: its number, then `i`
/// repeated (the lines are longer than a pipe's atomic write, and awk writes
/// them in blocks that cut them anywhere). 1 MB each, so that the three fit
/// in minder's queue for its stdout even if the test's reader lags.
const AWK_LONG_LINES: &str =
    "BEGIN { s = \"\"; for (k = 0; k < 10000; k++) s = s c; for (n = 0; n < 100; n++) print n \" \" s }";

#[test]
fn lines_of_processes_writing_at_once_never_mix() {
    let body = format!(
        "[program.long]\ncommand = [\"awk\", \"-v\", \"c={{instance}}\", {}]\ninstances = 3\nrestart = \"never\"\nstart_secs = \"0s\"\n\
         [program.long.logs]\nstdout = \"inherit\"\n",
        common::toml_str(AWK_LONG_LINES)
    );
    let d = start_to_file(&body);
    let lines = lines_when(&d.path("stdout.txt"), "300 lines", |l| l.len() >= 300);
    assert_eq!(lines.len(), 300);
    let mut next = [0usize; 3];
    for line in &lines {
        let (name, text) = line
            .split_once(" | ")
            .unwrap_or_else(|| panic!("no prefix: {:.80}", line));
        let i: usize = name
            .strip_prefix("long:")
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("bad name {name:?}"));
        let (n, body) = text.split_once(' ').expect("numbered line");
        assert_eq!(n, next[i].to_string(), "line of long:{i} out of order");
        next[i] += 1;
        assert_eq!(body.len(), 10_000, "line {n} of long:{i} is cut or mixed");
        let c = char::from(b'0' + i as u8);
        assert!(body.chars().all(|x| x == c), "line {n} of long:{i} mixed");
    }
    assert_eq!(next, [100, 100, 100]);
}

#[test]
fn a_long_line_without_a_newline_is_cut_into_pieces() {
    // 40000 bytes and no newline, then nothing more for a while.
    let body = "[program.cut]\ncommand = [\"sh\", \"-c\", \"head -c 40000 /dev/zero | tr '\\\\000' x; exec sleep 100\"]\nstart_secs = \"0s\"\n\
         [program.cut.logs]\nstdout = \"inherit\"\n";
    let d = start_to_file(body);
    // Two whole 16 KiB pieces at once, the rest as a line of its own once
    // it has waited for its end long enough.
    let lines = lines_when(&d.path("stdout.txt"), "three pieces", |l| l.len() >= 3);
    let lengths: Vec<usize> = lines
        .iter()
        .map(|l| {
            let text = l.strip_prefix("cut | ").expect("prefixed piece");
            assert!(text.bytes().all(|b| b == b'x'), "{text:.80}");
            text.len()
        })
        .collect();
    assert_eq!(lengths, [16384, 16384, 40000 - 2 * 16384]);
}

#[test]
fn ctl_tail_shows_an_inherited_stream_from_memory_within_64_kib() {
    let body = [
        program(
            "few",
            &["--print", "one", "--print", "two", "--print", "three"],
            "[program.few.logs]\nstdout = \"inherit\"\nstderr = \"stdout\"\n",
        ),
        program(
            "many",
            &["--write-lines", "20000"],
            "[program.many.logs]\nstdout = \"inherit\"\n",
        ),
    ]
    .concat();
    let d = start_to_file(&body);
    lines_when(&d.path("stdout.txt"), "the last line", |l| {
        l.contains(&"many | line 000020000")
    });
    let out = d.ctl_ok(&["tail", "-n", "2", "few"]);
    assert_eq!(out.stdout, "two\nthree\n");
    let out = d.ctl_ok(&["tail", "--stderr", "-n", "1", "few"]);
    assert_eq!(out.stdout, "three\n", "stderr merged into stdout");
    let out = d.ctl_ok(&["tail", "-n", "100000", "many"]);
    assert!(out.stdout.len() <= 64 * 1024, "{} bytes", out.stdout.len());
    assert!(out.stdout.len() > 60 * 1024, "{} bytes", out.stdout.len());
    assert!(
        out.stdout.starts_with("line "),
        "starts with a whole line: {:?}",
        &out.stdout[..40]
    );
    assert!(out.stdout.ends_with("line 000020000\n"));
}

/// A pipe; the read end is kept by the test, never read.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array we own.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn a_stalled_stdout_drops_and_counts_but_never_blocks_a_child() {
    let body = program(
        "loud",
        &["--write-bytes", "16777216", "--exit-after", "0"],
        "restart = \"never\"\nstart_secs = \"0s\"\n[program.loud.logs]\nstdout = \"inherit\"\n",
    );
    let mut d = Daemon::prepare("shutdown_timeout = \"10s\"", &body);
    let (_unread, write) = pipe();
    d.spawn_wrapped(&[], Some(write.into()), &[], &[]);
    d.wait_ready();
    // The child wrote all 16 MiB and exited although nobody reads minder's
    // stdout (a pipe of 64 KiB): what did not fit (beyond minder's 4 MiB
    // queue) was dropped.
    let p = d.wait_state("loud", "exited");
    assert_eq!(p.last_exit_code, Some(0), "{p:?}");
    let dropped = p.raw["dropped_bytes"].as_u64().expect("dropped_bytes");
    assert!(dropped > 10 << 20, "dropped {dropped} bytes");
    // minder itself was never held up.
    let out = d.ctl_ok(&["tail", "-n", "1", "loud"]);
    assert!(!out.stdout.is_empty());
}

/// `gives-up` (exits 3 at once, restarted until it is fatal, with this
/// `on_fatal`) beside `steady` (runs, recording its start and its stop).
fn gives_up_beside_steady(on_fatal: &str) -> String {
    [
        program(
            "gives-up",
            &["--exit-after", "0", "--exit-code", "3"],
            &format!(
                "on_fatal = \"{on_fatal}\"\nrestart = \"always\"\n[program.gives-up.backoff]\ninitial = \"50ms\"\nmax_retries = 1\n"
            ),
        ),
        program(
            "steady",
            &["--record", "@TMP@/steady.rec"],
            "start_secs = \"0s\"\n",
        ),
    ]
    .concat()
}

#[test]
fn on_fatal_shutdown_stops_everything_and_exits_1_naming_the_process() {
    let body = gives_up_beside_steady("shutdown");
    let mut d = Daemon::prepare("shutdown_timeout = \"10s\"", &body);
    d.spawn();
    let status = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = fs::read_to_string(&d.log_path).unwrap_or_default();
    assert!(
        log.contains("minder: gives-up is fatal (on_fatal = \"shutdown\")"),
        "{log}"
    );
    assert!(log.contains("stopping everything"), "{log}");
    // `steady` was stopped (by SIGTERM, in order), not left behind.
    let record = fs::read_to_string(d.path("steady.rec")).unwrap_or_default();
    assert!(record.contains("start"), "{record}");
    assert!(record.contains("stop"), "steady was not stopped: {record}");
}

#[test]
fn on_fatal_stay_leaves_the_rest_running() {
    let body = gives_up_beside_steady("stay");
    let mut d = Daemon::start_with("shutdown_timeout = \"10s\"", &body);
    d.wait_state("gives-up", "fatal");
    assert_eq!(d.proc("steady").state, "running");
    assert!(d.try_wait().is_none(), "minder exited");
    let status = d.stop().expect("exit status");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

// ------------------------------------------------------------ PID 1

const UNSHARE: [&str; 5] = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

/// Whether this test may make PID namespaces; says why not when it may not.
fn can_unshare() -> bool {
    let out = Command::new(UNSHARE[0])
        .args(&UNSHARE[1..])
        .arg("true")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "skipped: `unshare --pid --fork --mount-proc` is not permitted here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("skipped: cannot run unshare: {e}");
            false
        }
    }
}

/// `Key:` of /proc/PID/status.
fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
}

/// Starts minder as PID 1 of a new PID namespace; returns the daemon (whose
/// PID is unshare's) and minder's PID outside the namespace.
fn start_as_pid1(body: &str) -> (Daemon, i32) {
    let mut d = Daemon::prepare("shutdown_timeout = \"10s\"", body);
    d.spawn_wrapped(&UNSHARE, None, &[], &[]);
    d.wait_ready();
    let minder = match proc_children(d.pid()).as_slice() {
        [(pid, _)] => *pid,
        other => panic!("unshare has children {other:?}"),
    };
    let nspid = status_field(minder, "NSpid:").unwrap_or_default();
    assert!(
        nspid.ends_with("\t1"),
        "minder is not PID 1: NSpid {nspid:?}"
    );
    (d, minder)
}

/// Zombies among minder's descendants (the processes of its namespace).
fn zombies(minder: i32) -> Vec<i32> {
    descendants(minder)
        .into_iter()
        .filter(|pid| status_field(*pid, "State:").is_some_and(|s| s.starts_with('Z')))
        .collect()
}

#[test]
fn as_pid_1_minder_reaps_orphans_and_stops_on_sigterm() {
    if !can_unshare() {
        return;
    }
    // Each round leaves a grandchild that outlives its parent: an orphan,
    // re-parented to PID 1, which touches a file and exits.
    let script =
        "for i in 1 2 3 4 5 6 7 8; do (sh -c \"touch @TMP@/orphan.$i\" &); done; exec sleep 100";
    let body = format!(
        "[program.forker]\ncommand = [\"sh\", \"-c\", {}]\nstart_secs = \"0s\"\n{}",
        common::toml_str(script),
        program("steady", &[], "start_secs = \"0s\"\n")
    );
    let (mut d, minder) = start_as_pid1(&body);
    for i in 1..=8 {
        common::wait_file(&d.path(&format!("orphan.{i}")), WAIT);
    }
    d.wait_state("forker", "running");
    d.wait_state("steady", "running");
    // Every orphan is collected: no zombie is left (bounded wait: each is
    // a zombie for the moment between its exit and minder's waitid).
    let deadline = std::time::Instant::now() + WAIT;
    while !zombies(minder).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "zombies left: {:?}",
            zombies(minder)
        );
        std::thread::sleep(common::POLL);
    }
    // The orphans did not confuse the supervision of minder's own children.
    assert_eq!(d.proc("forker").restarts, 0);
    assert_eq!(d.proc("steady").restarts, 0);
    // SIGTERM from outside reaches PID 1 (which has a handler), and stops
    // everything in order: exit 0.
    // SAFETY: kill(2) on minder, the child of our unshare child.
    unsafe { libc::kill(minder, libc::SIGTERM) };
    let status = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{status:?}");
    let log = fs::read_to_string(&d.log_path).unwrap_or_default();
    assert!(log.contains("all processes stopped"), "{log}");
}

#[test]
fn as_pid_1_on_fatal_shutdown_exits_1() {
    if !can_unshare() {
        return;
    }
    let body = gives_up_beside_steady("shutdown");
    let mut d = Daemon::prepare("shutdown_timeout = \"10s\"", &body);
    d.spawn_wrapped(&UNSHARE, None, &[], &[]);
    let status = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = fs::read_to_string(&d.log_path).unwrap_or_default();
    assert!(
        log.contains("minder: gives-up is fatal (on_fatal = \"shutdown\")"),
        "{log}"
    );
}
