//! Log capture: files and their names, merging, discarding, rotation without
//! loss, `ctl tail` (with `-f` across rotations), timestamps, a full disk and
//! reopening on SIGUSR1 (SPEC `[program.*.logs]`, §4).

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use common::*;

/// Reads `FILE.backups` .. `FILE.1`, `FILE`, concatenated, and each file's size.
fn read_chain(path: &Path, backups: u32) -> (Vec<u8>, Vec<(String, usize)>) {
    let mut all = Vec::new();
    let mut files = Vec::new();
    for i in (1..=backups).rev() {
        let p = format!("{}.{i}", path.display());
        if let Ok(b) = fs::read(&p) {
            files.push((p, b.len()));
            all.extend_from_slice(&b);
        }
    }
    if let Ok(b) = fs::read(path) {
        files.push((path.display().to_string(), b.len()));
        all.extend_from_slice(&b);
    }
    (all, files)
}

fn dropped_bytes(d: &Daemon, name: &str) -> u64 {
    d.proc(name).raw["dropped_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no dropped_bytes in {:?}", d.proc(name).raw))
}

#[test]
fn default_names_merge_and_none() {
    let d = Daemon::start(&format!(
        "{}{}{}",
        program(
            "multi",
            &["--print", "out of {name}", "--eprint", "err of {name}"],
            "instances = 2\nstart_secs = \"0s\"",
        ),
        program(
            "merged",
            &["--interleave", "200"],
            "[program.merged.logs]\nstderr = \"stdout\"",
        ),
        program(
            "quiet",
            &[
                "--print",
                "nobody reads this",
                "--pidfile",
                "@TMP@/quiet.pid"
            ],
            "[program.quiet.logs]\nstdout = \"none\"\nstderr = \"none\"",
        ),
    ));
    for i in 0..2 {
        wait_file_until(
            &d.path(&format!("logs/multi.{i}.stdout.log")),
            "stdout line",
            |t| t == format!("out of multi:{i}\n"),
        );
        wait_file_until(
            &d.path(&format!("logs/multi.{i}.stderr.log")),
            "stderr line",
            |t| t == format!("err of multi:{i}\n"),
        );
    }
    let expected: String = (1..=200).map(|i| format!("out {i}\nerr {i}\n")).collect();
    wait_file_until(&d.path("logs/merged.stdout.log"), "all 400 lines", |t| {
        t.len() >= expected.len()
    });
    assert_eq!(
        fs::read_to_string(d.path("logs/merged.stdout.log")).unwrap(),
        expected,
        "both streams in one file, in the order written"
    );
    assert!(!d.path("logs/merged.stderr.log").exists());
    read_pid(&d.path("quiet.pid"));
    d.wait_state("quiet", "running");
    assert!(!d.path("logs/quiet.stdout.log").exists());
    assert!(!d.path("logs/quiet.stderr.log").exists());
    let mode = fs::metadata(d.path("logs/multi.0.stdout.log"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o640
    );
    // A discarded stream cannot be tailed; the message says why.
    let out = d.ctl(&["tail", "quiet"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not captured"), "{out:?}");
    // Merged stderr is served from the stdout log.
    let out = d.ctl_ok(&["tail", "--stderr", "-n", "2", "merged"]);
    assert_eq!(out.stdout, "out 200\nerr 200\n");
}

/// Both capture paths, at every rotation: each 1 MB file is filled by
/// splice(2) up to 256 KiB short of max_size, then by read and write, which
/// cut at a newline; the lines (64 KiB writes of 15-byte lines) sit at every
/// offset in the pipe's pages.
#[test]
fn rotation_keeps_every_line_once_and_in_order() {
    const LINES: u64 = 350_000; // 15 bytes each: 5.25 MB
    let d = Daemon::start(&program(
        "chatty",
        &["--write-lines", &LINES.to_string(), "--exit-after", "0"],
        "restart = \"never\"\nstart_secs = \"0s\"\n[program.chatty.logs]\nmax_size = \"1MB\"\nbackups = 20",
    ));
    d.wait_state("chatty", "exited");
    let path = d.path("logs/chatty.stdout.log");
    let total = (LINES * 15) as usize;
    let deadline = Instant::now() + WAIT;
    let (all, files) = loop {
        let (all, files) = read_chain(&path, 20);
        if all.len() >= total || Instant::now() >= deadline {
            break (all, files);
        }
        std::thread::sleep(POLL);
    };
    assert_eq!(all.len(), total, "bytes in all files: {files:?}");
    assert!(files.len() >= 6, "5.25 MB in 1 MB files: {files:?}");
    for (name, size) in &files {
        assert!(*size <= 1_000_000, "{name} exceeds max_size: {size}");
    }
    for (i, line) in all.split(|&b| b == b'\n').take(LINES as usize).enumerate() {
        let want = format!("line {:09}", i + 1);
        assert_eq!(line, want.as_bytes(), "line {} of the concatenation", i + 1);
    }
    for (name, _) in &files[..files.len() - 1] {
        let bytes = fs::read(name).unwrap();
        assert_eq!(bytes.last(), Some(&b'\n'), "{name} is cut at a line end");
    }
    assert_eq!(dropped_bytes(&d, "chatty"), 0);
}

/// Without max_size the file is spliced whole, after the first chunk.
#[test]
fn an_unbounded_file_keeps_every_line_once_and_in_order() {
    const LINES: u64 = 350_000;
    let d = Daemon::start(&program(
        "chatty",
        &["--write-lines", &LINES.to_string(), "--exit-after", "0"],
        "restart = \"never\"\nstart_secs = \"0s\"\n[program.chatty.logs]\nmax_size = \"0\"",
    ));
    d.wait_state("chatty", "exited");
    let path = d.path("logs/chatty.stdout.log");
    let total = (LINES * 15) as usize;
    let deadline = Instant::now() + WAIT;
    let bytes = loop {
        let bytes = fs::read(&path).unwrap_or_default();
        if bytes.len() >= total || Instant::now() >= deadline {
            break bytes;
        }
        std::thread::sleep(POLL);
    };
    assert_eq!(bytes.len(), total, "bytes in the file");
    for (i, line) in bytes
        .split(|&b| b == b'\n')
        .take(LINES as usize)
        .enumerate()
    {
        let want = format!("line {:09}", i + 1);
        assert_eq!(line, want.as_bytes(), "line {}", i + 1);
    }
    assert!(!Path::new(&format!("{}.1", path.display())).exists());
    assert_eq!(dropped_bytes(&d, "chatty"), 0);
}

/// Runs `minder ctl tail ARGS` in the background; its stdout lines arrive on the channel.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(d: &Daemon, args: &[&str]) -> Follower {
        let mut child = Command::new(MINDER)
            .arg("ctl")
            .arg("-s")
            .arg(&d.sock)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning ctl tail -f");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no line from ctl tail -f within {WAIT:?}: {e}"))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tail_lines_and_follow_across_rotations() {
    let d = Daemon::start(&program(
        "ticker",
        &["--write-lines", "50", "--tick", "5"],
        "[program.ticker.logs]\nmax_size = \"400B\"\nbackups = 3",
    ));
    let path = d.path("logs/ticker.stdout.log");
    // The file rotates every ~45 ticks: look for ticks, not for one tick.
    wait_file_until(&path, "three ticks", |t| {
        t.lines().rev().take(3).all(|l| l.starts_with("tick ")) && t.lines().count() >= 3
    });
    let out = d.ctl_ok(&["tail", "-n", "3", "ticker"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out:?}");
    assert!(lines.iter().all(|l| l.starts_with("tick ")), "{out:?}");

    let f = Follower::start(&d, &["tail", "-f", "-n", "1", "ticker"]);
    let first = f.next();
    let n0: u64 = first
        .strip_prefix("tick ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    // 300 ticks of ~9 bytes: several 400-byte rotations while following.
    for k in 1..=300 {
        assert_eq!(
            f.next(),
            format!("tick {}", n0 + k),
            "consecutive, nothing lost or doubled"
        );
    }
    assert!(
        Path::new(&format!("{}.3", path.display())).exists(),
        "it rotated meanwhile"
    );

    let json = d.ctl_ok(&["--json", "tail", "-n", "2", "ticker"]);
    let rows: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 2, "{json:?}");
    for row in rows {
        assert_eq!(row["name"], "ticker");
        assert_eq!(row["stream"], "stdout");
        assert!(row["line"].as_str().is_some_and(|l| l.starts_with("tick ")));
    }
}

#[test]
fn timestamps_prefix_every_line() {
    let d = Daemon::start(&program(
        "stamped",
        &["--print", "first", "--print", "second"],
        "[program.stamped.logs]\ntimestamps = true",
    ));
    let text = wait_file_until(&d.path("logs/stamped.stdout.log"), "two lines", |t| {
        t.lines().count() == 2
    });
    for (line, want) in text.lines().zip(["first", "second"]) {
        let (time, rest) = line.split_once(' ').expect("a prefix");
        assert_eq!(rest, want);
        // 2024-05-06T07:08:09.123456Z
        assert_eq!(time.len(), 27, "{time:?}");
        assert!(
            time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{time:?}"
        );
    }
}

#[test]
fn a_full_disk_drops_output_and_never_the_child() {
    let d = Daemon::start(&program(
        "full",
        &["--write-lines", "20000", "--exit-after", "300"],
        "restart = \"never\"\nstart_secs = \"0s\"\n[program.full.logs]\nstdout = \"/dev/full\"",
    ));
    let p = d.wait_state("full", "exited");
    assert_eq!(p.last_exit_code, Some(0), "{p:?}");
    d.wait_for("all 300000 bytes counted as dropped", WAIT, |ps| {
        find(ps, "full").is_some_and(|p| p.raw["dropped_bytes"] == 300_000)
    });
    let log = fs::read_to_string(&d.log_path).unwrap_or_default();
    assert!(log.contains("dropping stdout output"), "warned: {log}");
}

#[test]
fn reopen_after_the_file_was_moved() {
    let d = Daemon::start(&program("ticker", &["--tick", "20"], ""));
    let path = d.path("logs/ticker.stdout.log");
    wait_file_until(&path, "ticks", |t| t.contains("tick 2\n"));
    let moved = d.path("logs/ticker.stdout.log.old");
    fs::rename(&path, &moved).unwrap();
    d.signal(libc::SIGUSR1);
    let fresh = wait_file_until(&path, "new ticks in a new file", |t| t.contains("tick "));
    let old = fs::read_to_string(&moved).unwrap();
    let last_old: u64 = old.lines().last().unwrap()[5..].parse().unwrap();
    let first_new: u64 = fresh.lines().next().unwrap()[5..].parse().unwrap();
    assert_eq!(first_new, last_old + 1, "the stream goes on, nothing lost");

    // `ctl reopen-logs` does the same.
    fs::rename(&path, &moved).unwrap();
    d.ctl_ok(&["reopen-logs"]);
    wait_file_until(&path, "ticks after reopen-logs", |t| t.contains("tick "));
}

#[test]
fn own_log_as_json_to_stderr_and_a_daily_file() {
    let d = Daemon::start_with(
        "log_format = \"json\"\nlog_file = \"@TMP@/own/minder.log\"\nlog_files = 2",
        &program("a", &[], ""),
    );
    d.wait_state("a", "running");
    let stderr = fs::read_to_string(&d.log_path).unwrap();
    let first = stderr.lines().next().expect("a line on stderr");
    let doc: serde_json::Value = serde_json::from_str(first).expect("JSON lines on stderr");
    assert!(doc["timestamp"].is_string(), "{doc}");
    // The file gets the same events; written by a background thread, so wait.
    let deadline = Instant::now() + WAIT;
    loop {
        let files: Vec<_> = fs::read_dir(d.path("own"))
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        let found = files.iter().any(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("minder.")
                && name.ends_with(".log")
                && fs::read_to_string(p).is_ok_and(|t| t.contains("starting -> running"))
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dated log file in own/: {files:?}"
        );
        std::thread::sleep(POLL);
    }
}

#[test]
fn no_timestamps_under_journald() {
    let mut d = Daemon::prepare("", &program("a", &[], ""));
    d.spawn_with(&[], &[("JOURNAL_STREAM", "8:12345")]);
    d.wait_ready();
    d.wait_state("a", "running");
    let stderr = fs::read_to_string(&d.log_path).unwrap();
    let first = stderr.lines().next().expect("a line on stderr");
    assert!(
        first.trim_start().starts_with("INFO"),
        "no time first: {first:?}"
    );
}

#[test]
fn reexec_keeps_the_log_pipes_and_loses_no_line() {
    let d = Daemon::start(&format!(
        "{}{}",
        program("ticker", &["--tick", "2"], ""),
        program(
            "merged",
            &["--tick", "3"],
            "[program.merged.logs]\nstderr = \"stdout\"\ntimestamps = true",
        ),
    ));
    let path = d.path("logs/ticker.stdout.log");
    wait_file_until(&path, "ticks", |t| t.contains("tick 10\n"));
    let pid = d.wait_state("ticker", "running").pid;
    for round in 1..=2 {
        let out = d.ctl(&["reexec"]);
        assert_eq!(out.code, 0, "reexec {round}: {out:?}");
        let before = fs::read_to_string(&path).unwrap().lines().count();
        wait_file_until(&path, "ticks after reexec", |t| {
            t.lines().count() > before + 50
        });
    }
    assert_eq!(
        d.wait_state("ticker", "running").pid,
        pid,
        "same child, not killed by SIGPIPE"
    );
    let text = fs::read_to_string(&path).unwrap();
    for (i, line) in text.lines().enumerate() {
        assert_eq!(line, format!("tick {}", i + 1), "every tick once, in order");
    }
    let merged = fs::read_to_string(d.path("logs/merged.stdout.log")).unwrap();
    for (i, line) in merged.lines().enumerate() {
        let (_, rest) = line.split_once(' ').expect("a time prefix");
        assert_eq!(rest, format!("tick {}", i + 1));
    }
}

#[test]
fn an_idle_stream_parks_and_wakes_again() {
    let mut d = Daemon::prepare(
        "",
        &program("slow", &["--print", "hello", "--tick", "400"], ""),
    );
    // Streams give their task up after 100 ms without output (10 s normally).
    d.spawn_with(&[], &[("MINDER_TEST_IDLE_PARK_MS", "100")]);
    d.wait_ready();
    let path = d.path("logs/slow.stdout.log");
    let text = wait_file_until(&path, "four ticks, each after a park", |t| {
        t.contains("tick 4\n")
    });
    assert_eq!(text, "hello\ntick 1\ntick 2\ntick 3\ntick 4\n");
    // A parked stream still answers tail at once, and follows.
    let out = d.ctl_ok(&["tail", "-n", "1", "slow"]);
    assert!(out.stdout.starts_with("tick "), "{out:?}");
    let f = Follower::start(&d, &["tail", "-f", "-n", "0", "slow"]);
    let line = f.next();
    assert!(line.starts_with("tick "), "{line:?}");
}
