//! The control socket and minder's fds under abuse: a full fd table, clients
//! that connect and say nothing, refused peers, and the fd budget of many
//! programs.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// Open fds of `pid`.
fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// CPU time (user + system) used by `pid` so far.
fn cpu_time(pid: i32) -> Duration {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &text[text.rfind(')').expect("a stat line has a ')'") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_sec)
}

/// Lines of the daemon's log that report a failed accept.
fn accept_warnings(d: &Daemon) -> usize {
    let Ok(file) = fs::File::open(&d.log_path) else {
        return 0;
    };
    BufReader::new(file)
        .split(b'\n')
        .map_while(Result::ok)
        .filter(|l| {
            let l = String::from_utf8_lossy(l);
            l.contains("WARN") && l.contains("accepting a control connection")
        })
        .count()
}

/// What is waiting to be read on `conn` now, without blocking.
fn pending_text(conn: &UnixStream) -> String {
    conn.set_nonblocking(true).expect("set_nonblocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match (&*conn).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rlimit_nofile_of(pid: i32) -> (u64, u64) {
    let limits =
        fs::read_to_string(format!("/proc/{pid}/limits")).expect("reading /proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (
        numbers.next().expect("soft limit"),
        numbers.next().expect("hard limit"),
    )
}

/// The test's own hard RLIMIT_NOFILE: daemons started with more need root.
fn own_hard_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    // `rlim_t` is 32 bits wide on some targets.
    #[allow(clippy::unnecessary_cast)]
    let hard = limit.rlim_max as u64;
    hard
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True (after saying why) if this test cannot give the daemon a hard fd limit of `hard`.
fn cannot_raise_hard_limit_to(hard: u64) -> bool {
    let cannot = !is_root() && own_hard_fd_limit() < hard;
    if cannot {
        eprintln!("skipping: a hard fd limit of {hard} needs root here");
    }
    cannot
}

#[test]
fn running_out_of_fds_neither_spins_nor_floods_the_log() {
    const LIMIT: u64 = 64;
    let mut d = Daemon::prepare("", "");
    d.set_nofile(LIMIT, LIMIT);
    d.spawn();
    d.wait_ready();
    let pid = d.pid();

    // More connections than the daemon has fds for; they say nothing.
    let mut conns = Vec::new();
    for _ in 0..2 * LIMIT {
        conns.push(UnixStream::connect(&d.sock).expect("connect to the control socket"));
    }
    let deadline = Instant::now() + WAIT;
    while fd_count(pid) < LIMIT as usize {
        assert!(
            Instant::now() < deadline,
            "the daemon never filled its fd table: {} of {LIMIT} open",
            fd_count(pid)
        );
        thread::sleep(POLL);
    }

    // Out of fds with clients still knocking: a window to watch what the
    // daemon does meanwhile (measured, not waited on).
    let warnings_before = accept_warnings(&d);
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    thread::sleep(Duration::from_secs(3));
    let wall = started.elapsed();
    let cpu = cpu_time(pid) - cpu_before;
    let warnings = accept_warnings(&d) - warnings_before;
    assert!(
        cpu < wall / 2,
        "the daemon used {cpu:?} of CPU in {wall:?} while out of fds"
    );
    assert!(
        warnings <= 5,
        "{warnings} accept warnings logged in {wall:?} while out of fds"
    );

    // The clients it had no fd for were told why instead of left hanging.
    let told = conns
        .iter()
        .filter(|c| pending_text(c).contains("out of file descriptors"))
        .count();
    assert!(
        told > 0,
        "no client beyond the fd limit was told that minder is out of fds"
    );

    drop(conns);
    let deadline = Instant::now() + WAIT;
    loop {
        let out = d.ctl(&["status"]);
        if out.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`ctl status` still fails after the connections closed: {out:?}"
        );
        thread::sleep(POLL);
    }
}

#[test]
fn idle_control_connection_is_closed() {
    let mut d = Daemon::prepare("", &program("a", &[], ""));
    d.spawn_with(&[], &[("MINDER_TEST_REQUEST_TIMEOUT_MS", "300")]);
    d.wait_ready();
    d.wait_state("a", "running");

    let read_all = |mut conn: UnixStream| {
        conn.set_read_timeout(Some(WAIT)).expect("set_read_timeout");
        let mut text = String::new();
        conn.read_to_string(&mut text)
            .expect("the daemon closes the connection (read timed out)");
        text
    };
    // Says nothing at all.
    let silent = UnixStream::connect(&d.sock).expect("connect");
    // Starts a request and never finishes it.
    let mut partial = UnixStream::connect(&d.sock).expect("connect");
    partial
        .write_all(br#"{"cmd":"sta"#)
        .expect("write a partial request");
    // A stream is exempt once it has started.
    let mut events = UnixStream::connect(&d.sock).expect("connect");
    events
        .write_all(b"{\"cmd\":\"events\",\"names\":[\"a\"]}\n")
        .expect("write the events request");
    let mut events = BufReader::new(events);
    let mut ack = String::new();
    events.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    events.read_line(&mut ack).expect("events acknowledgement");
    assert!(ack.contains("following"), "{ack}");

    for (what, text) in [("silent", read_all(silent)), ("partial", read_all(partial))] {
        let reply: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{what}: not one JSON reply ({e}): {text:?}"));
        assert_eq!(
            reply.pointer("/error/kind").and_then(Value::as_str),
            Some("bad_request"),
            "{what}: {reply}"
        );
        let message = reply.pointer("/error/message").and_then(Value::as_str);
        assert!(
            message.is_some_and(|m| m.contains("no complete request")),
            "{what}: {reply}"
        );
    }

    // Well past the bound, the events stream still delivers.
    d.ctl_ok(&["restart", "a"]);
    let mut event = String::new();
    events
        .read_line(&mut event)
        .expect("an event after the bound");
    let event: Value = serde_json::from_str(event.trim()).expect("an event line");
    assert_eq!(
        event.pointer("/ok/name").and_then(Value::as_str),
        Some("a"),
        "{event}"
    );
}

#[test]
fn children_get_the_original_soft_fd_limit() {
    if cannot_raise_hard_limit_to(4096) {
        return;
    }
    let mut d = Daemon::prepare("", &program("a", &[], ""));
    d.set_nofile(1024, 4096);
    d.spawn();
    d.wait_ready();
    let first = d.wait_state("a", "running").pid.expect("a running pid");
    assert_eq!(
        rlimit_nofile_of(d.pid()),
        (4096, 4096),
        "minder raises its own soft limit"
    );
    assert_eq!(
        rlimit_nofile_of(first),
        (1024, 4096),
        "a child of the first image"
    );

    // The new image starts with the raised limit; its children must not.
    let out = d.ctl(&["reexec"]);
    assert_eq!(out.code, 0, "{out:?}");
    d.ctl_ok(&["restart", "a"]);
    let second = d.wait_state("a", "running").pid.expect("a running pid");
    assert_ne!(first, second, "restarted");
    assert_eq!(
        rlimit_nofile_of(second),
        (1024, 4096),
        "a child of the image after reexec"
    );
}

#[test]
fn two_hundred_programs_start_under_a_soft_limit_of_1024() {
    if cannot_raise_hard_limit_to(4096) {
        return;
    }
    // Output on both streams: each process holds its two pipes and its two
    // log files open.
    let body: String = (0..200)
        .map(|i| program(&format!("p{i}"), &["--print", "up", "--eprint", "up"], ""))
        .collect();
    let mut d = Daemon::prepare("", &body);
    d.set_nofile(1024, 4096);
    d.spawn();
    d.wait_ready();
    let procs = d.wait_for("all 200 programs running", Duration::from_secs(120), |ps| {
        ps.len() == 200 && ps.iter().all(|p| p.state == "running")
    });
    // Running is not enough: each one's output must reach its log files.
    for i in 0..200 {
        for stream in ["stdout", "stderr"] {
            let path = d.path(&format!("logs/p{i}.{stream}.log"));
            wait_file_until(&path, "the line printed at start", |t| t.contains("up"));
        }
    }
    let lost: Vec<_> = procs
        .iter()
        .filter(|p| p.raw["dropped_bytes"].as_u64() != Some(0))
        .map(|p| &p.name)
        .collect();
    assert!(lost.is_empty(), "output lost for {lost:?}");
    let log = fs::read_to_string(&d.log_path).expect("reading daemon.log");
    assert!(
        !log.contains("LimitNOFILE="),
        "no fd budget warning expected with a hard limit of 4096:\n{log}"
    );
}

#[test]
fn too_small_an_fd_limit_is_reported_at_start() {
    let body: String = (0..200)
        .map(|i| program(&format!("p{i}"), &[], "autostart = false"))
        .collect();
    let mut d = Daemon::prepare("", &body);
    d.set_nofile(256, 256);
    // Not `wait_ready`: with so few fds the daemon may have none left for `ctl`.
    d.spawn();
    let log = wait_file_until(&d.log_path, "the fd budget warning", |log| {
        log.contains("LimitNOFILE=")
    });
    let line = log
        .lines()
        .find(|l| l.contains("LimitNOFILE="))
        .expect("the warning line");
    // 200 × 7 fds (pipes, log files, pidfd) + 64 for minder itself.
    for part in ["WARN", "200 processes", "1464", "256", "ulimit -n"] {
        assert!(line.contains(part), "{part:?} missing in: {line}");
    }
    assert_eq!(
        log.lines().filter(|l| l.contains("LimitNOFILE=")).count(),
        1,
        "one warning line:\n{log}"
    );
}

/// uid and gid of `nobody`, if the system has that user.
fn nobody() -> Option<(libc::uid_t, libc::gid_t)> {
    let name = std::ffi::CString::new("nobody").expect("no NUL");
    // SAFETY: a valid C string; the returned record is read at once, before
    // any other getpw* call on this thread could overwrite it.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    }
}

#[test]
fn refused_peer_always_gets_permission_denied() {
    if !is_root() {
        eprintln!("skipping: running `ctl` as another user needs root");
        return;
    }
    let Some((uid, gid)) = nobody() else {
        eprintln!("skipping: no user `nobody` on this machine");
        return;
    };
    // Anyone may connect; only root (minder's user) is served.
    let d = Daemon::start_with("socket_mode = \"0666\"", "");
    fs::set_permissions(d.tmp(), fs::Permissions::from_mode(0o755)).expect("chmod the temp dir");
    let sock = d.sock.display().to_string();
    // The refusal races the client's write: try often enough to lose it.
    for attempt in 0..20 {
        let mut cmd = std::process::Command::new(MINDER);
        cmd.args(["ctl", "-s", &sock, "status"]);
        // SAFETY: setgroups/setgid/setuid are async-signal-safe and use only
        // the copied ids.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
        assert_eq!(out.code, 4, "attempt {attempt}: {out:?}");
        assert!(
            out.stderr
                .contains("only root, minder's user and socket_group"),
            "attempt {attempt}: the daemon's message expected: {out:?}"
        );
    }
}
