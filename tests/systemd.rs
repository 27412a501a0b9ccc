//! minder run by systemd: the messages it sends to *its* NOTIFY_SOCKET (a
//! datagram socket the test binds), the watchdog, the default control socket,
//! the config permission check and privilege drop. Root-only tests say so and
//! pass without checking anything when not run as root.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// One datagram minder sent, and when it arrived.
#[derive(Debug, Clone)]
struct Message {
    at: Instant,
    text: String,
}

impl Message {
    /// Whether the datagram holds the assignment `line` (e.g. `READY=1`).
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }

    /// The value of `KEY=` in the datagram.
    fn get(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// What a service manager would be: a datagram socket that records every
/// message. A reader thread runs until the value is dropped.
struct FakeSystemd {
    path: PathBuf,
    messages: Arc<Mutex<Vec<Message>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<thread::JoinHandle<()>>,
}

impl FakeSystemd {
    fn bind(path: PathBuf) -> FakeSystemd {
        let socket = UnixDatagram::bind(&path).expect("binding the fake NOTIFY_SOCKET");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s) = (Arc::clone(&messages), Arc::clone(&stop));
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            // Bounded: the test drops us, or the fake gives up after 5 minutes.
            let deadline = Instant::now() + Duration::from_secs(300);
            while !s.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    m.lock().unwrap().push(Message {
                        at: Instant::now(),
                        text,
                    });
                }
            }
        });
        FakeSystemd {
            path,
            messages,
            stop,
            reader: Some(reader),
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("temp paths are UTF-8")
    }

    fn all(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until a message after index `from` satisfies `pred`; returns its index.
    fn wait_for(&self, from: usize, desc: &str, pred: impl Fn(&Message) -> bool) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let all = self.all();
            if let Some(i) = (from..all.len()).find(|&i| pred(&all[i])) {
                return i;
            }
            if Instant::now() >= deadline {
                panic!("no message {desc} after #{from} within {WAIT:?}; got {all:#?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if thread::panicking() {
            eprintln!("--- messages to NOTIFY_SOCKET ---\n{:#?}", self.all());
        }
    }
}

/// Microseconds of CLOCK_MONOTONIC, as systemd's MONOTONIC_USEC.
fn monotonic_usec() -> u128 {
    monotonic_ns() / 1000
}

#[test]
fn notify_sequence_ready_status_reload_stopping_and_watchdog() {
    let mut d = Daemon::prepare("", &program("web", &[], ""));
    let sd = FakeSystemd::bind(d.path("systemd-notify.sock"));
    d.spawn_with(
        &[],
        &[("NOTIFY_SOCKET", sd.path()), ("WATCHDOG_USEC", "400000")],
    );
    d.wait_ready();

    // READY=1 once `web` is running, with a summary that says so.
    let ready = sd.wait_for(0, "READY=1", |m| m.has("READY=1"));
    let first = &sd.all()[ready];
    assert_eq!(
        first.get("STATUS"),
        Some("1 running, 0 unhealthy"),
        "READY=1 must come with the summary once web runs: {first:?}"
    );
    assert_eq!(d.proc("web").state, "running");

    // A reload by SIGHUP: RELOADING=1 with MONOTONIC_USEC (now), then READY=1.
    let before = monotonic_usec();
    d.signal(libc::SIGHUP);
    let reloading = sd.wait_for(ready + 1, "RELOADING=1", |m| m.has("RELOADING=1"));
    let after = monotonic_usec();
    let msg = &sd.all()[reloading];
    let usec: u128 = msg
        .get("MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {msg:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC {usec} not between {before} and {after}"
    );
    let ready2 = sd.wait_for(reloading + 1, "READY=1 after the reload", |m| {
        m.has("READY=1")
    });

    // The same through `ctl reload`.
    d.ctl_ok(&["reload"]);
    let reloading2 = sd.wait_for(ready2 + 1, "RELOADING=1 (ctl reload)", |m| {
        m.has("RELOADING=1") && m.get("MONOTONIC_USEC").is_some()
    });
    let ready3 = sd.wait_for(reloading2 + 1, "READY=1 after ctl reload", |m| {
        m.has("READY=1")
    });

    // STATUS= follows state changes.
    d.ctl_ok(&["stop", "web"]);
    let stopped = sd.wait_for(ready3 + 1, "STATUS= with web stopped", |m| {
        m.get("STATUS") == Some("0 running, 1 stopped, 0 unhealthy")
    });

    // The watchdog: WATCHDOG_USEC=400000 means WATCHDOG=1 about every 200ms.
    let dogs_at = |all: &[Message]| -> Vec<Instant> {
        all.iter()
            .filter(|m| m.has("WATCHDOG=1"))
            .map(|m| m.at)
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while dogs_at(&sd.all()).len() < 10 {
        assert!(
            Instant::now() < deadline,
            "fewer than 10 WATCHDOG=1 within {WAIT:?}: {:#?}",
            sd.all()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let dogs = dogs_at(&sd.all());
    let span = *dogs.last().unwrap() - dogs[0];
    let mean = span / (dogs.len() as u32 - 1);
    assert!(
        mean >= Duration::from_millis(120) && mean <= Duration::from_millis(320),
        "WATCHDOG=1 should come every ~200ms (half of WATCHDOG_USEC); mean gap {mean:?} over {} messages",
        dogs.len()
    );

    d.ctl_ok(&["shutdown"]);
    let status = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "daemon exit status");
    let stopping = sd.wait_for(stopped + 1, "STOPPING=1", |m| m.has("STOPPING=1"));
    let all = sd.all();
    assert!(
        all[stopping + 1..].iter().all(|m| !m.has("READY=1")),
        "READY=1 after STOPPING=1: {all:#?}"
    );
    // Every message is made of KEY=VALUE lines.
    for m in &all {
        assert!(
            m.text.lines().all(|l| l.contains('=')),
            "malformed message {m:?}"
        );
    }
}

#[test]
fn ready_even_when_an_autostart_program_can_never_start() {
    let mut body = String::from(
        "[program.broken]\ncommand = [\"/nonexistent/minder-test-no-such-binary\"]\n\n",
    );
    // Waits for `broken` forever: must not hold back READY=1 either.
    body.push_str(&program("dependant", &[], "depends_on = [\"broken\"]"));
    body.push_str(&program("good", &[], ""));
    let mut d = Daemon::prepare("", &body);
    let sd = FakeSystemd::bind(d.path("systemd-notify.sock"));
    d.spawn_with(&[], &[("NOTIFY_SOCKET", sd.path())]);
    d.wait_ready();

    let ready = sd.wait_for(0, "READY=1", |m| m.has("READY=1"));
    let msg = &sd.all()[ready];
    let status = msg.get("STATUS").unwrap_or_default();
    assert!(
        status.starts_with("1 running,") && status.contains("1 backoff"),
        "READY=1 once good runs and broken is in backoff: {msg:?}"
    );
    let procs = d.status();
    assert_eq!(get(&procs, "good").state, "running");
    assert_eq!(get(&procs, "dependant").state, "stopped");
    assert!(
        sd.all().iter().all(|m| !m.has("WATCHDOG=1")),
        "WATCHDOG=1 without WATCHDOG_USEC: {:#?}",
        sd.all()
    );
}

#[test]
fn no_watchdog_when_watchdog_pid_is_another_process() {
    let mut d = Daemon::prepare("", "");
    let sd = FakeSystemd::bind(d.path("systemd-notify.sock"));
    d.spawn_with(
        &[],
        &[
            ("NOTIFY_SOCKET", sd.path()),
            ("WATCHDOG_USEC", "100000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    d.wait_ready();
    let ready = sd.wait_for(0, "READY=1", |m| m.has("READY=1"));
    // Ten watchdog periods without one WATCHDOG=1.
    let until = sd.all()[ready].at + Duration::from_secs(1);
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        sd.all().iter().all(|m| !m.has("WATCHDOG=1")),
        "WATCHDOG_PID names another process, yet: {:#?}",
        sd.all()
    );
}

#[test]
fn children_never_see_minders_own_notify_socket() {
    let mut d = Daemon::prepare(
        "",
        &program(
            "env",
            &["--write-env", "@TMP@/env", "--pidfile", "@TMP@/pid"],
            "",
        ),
    );
    let sd = FakeSystemd::bind(d.path("systemd-notify.sock"));
    d.spawn_with(
        &[],
        &[
            ("NOTIFY_SOCKET", sd.path()),
            ("WATCHDOG_USEC", "400000"),
            ("WATCHDOG_PID", &std::process::id().to_string()),
        ],
    );
    d.wait_ready();
    read_pid(&d.path("pid"));
    let env = parse_env(&wait_file(&d.path("env"), WAIT));
    for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert_eq!(env_get(&env, key), None, "{key} leaked to the child");
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Says why a root-only test checks nothing, and whether to go on.
fn root_only(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (CI runs as root)");
    }
    is_root()
}

#[test]
fn refuses_a_config_others_can_write_as_root() {
    if !root_only("refuses_a_config_others_can_write_as_root") {
        return;
    }
    let mut d = Daemon::prepare("", &program("web", &[], ""));
    fs::set_permissions(&d.config_path, fs::Permissions::from_mode(0o664)).unwrap();
    let out = run_minder(&["daemon", "-c", d.config_path.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("writable by group")
            && out.stderr.contains("chmod go-w")
            && out.stderr.contains("--insecure-config"),
        "the refusal should say what is wrong and how to fix it: {out:?}"
    );

    // `check` accepts the file (it is valid) but warns what the daemon will do.
    let check = run_minder(&["check", "-c", d.config_path.to_str().unwrap()]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check.stderr.contains("warning") && check.stderr.contains("writable by group"),
        "{check:?}"
    );

    // --insecure-config overrides, on reload too.
    d.spawn_with(&["--insecure-config"], &[]);
    d.wait_ready();
    d.wait_state("web", "running");
    let reload = d.ctl(&["reload"]);
    assert_eq!(reload.code, 0, "{reload:?}");
}

#[test]
fn reload_refuses_an_included_file_others_can_write_as_root() {
    if !root_only("reload_refuses_an_included_file_others_can_write_as_root") {
        return;
    }
    let mut d = Daemon::prepare("include = [\"conf.d/*.toml\"]", &program("web", &[], ""));
    fs::create_dir(d.path("conf.d")).unwrap();
    fs::set_permissions(d.path("conf.d"), fs::Permissions::from_mode(0o755)).unwrap();
    d.spawn();
    d.wait_ready();
    let web = d.wait_state("web", "running");

    let extra = d.path("conf.d/extra.toml");
    fs::write(&extra, expand(&program("extra", &[], ""), d.tmp())).unwrap();
    fs::set_permissions(&extra, fs::Permissions::from_mode(0o666)).unwrap();
    let out = d.ctl(&["reload"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("extra.toml") && out.stderr.contains("writable by group and others"),
        "{out:?}"
    );
    let procs = d.status();
    assert!(find(&procs, "extra").is_none(), "{procs:#?}");
    assert_eq!(get(&procs, "web").pid, web.pid, "web must be untouched");

    fs::set_permissions(&extra, fs::Permissions::from_mode(0o644)).unwrap();
    d.ctl_ok(&["reload"]);
    d.wait_state("extra", "running");
}

/// A daemon started by hand (not through the harness), killed on drop.
struct RawDaemon(std::process::Child);

impl Drop for RawDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ROOT_SOCKET: &str = "/run/minder/minder.sock";

#[test]
fn ctl_finds_the_default_root_socket_without_flags() {
    if !root_only("ctl_finds_the_default_root_socket_without_flags") {
        return;
    }
    if Path::new("/etc/minder/minder.toml").exists() {
        eprintln!("skipping: /etc/minder/minder.toml exists and would name the socket");
        return;
    }
    if std::os::unix::net::UnixStream::connect(ROOT_SOCKET).is_ok() {
        eprintln!("skipping: a minder already listens on {ROOT_SOCKET}");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("minder-it.")
        .tempdir()
        .unwrap();
    let config = dir.path().join("daemon.toml");
    let text = format!(
        "[supervisor]\nlog_dir = {}\n\n{}",
        toml_str(&dir.path().join("logs").display().to_string()),
        program("web", &[], "")
    );
    fs::write(&config, text).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    let log = fs::File::create(dir.path().join("daemon.log")).unwrap();
    let daemon = RawDaemon(
        Command::new(MINDER)
            .args(["daemon", "-c", config.to_str().unwrap()])
            .current_dir(dir.path())
            .env_remove("MINDER_SOCKET")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    // `ctl` with no flag, no $MINDER_SOCKET and no config file to read: the default.
    let ctl = |args: &[&str]| {
        run_with_timeout(
            Command::new(MINDER)
                .arg("ctl")
                .args(args)
                .current_dir(dir.path())
                .env_remove("MINDER_SOCKET"),
            Duration::from_secs(30),
        )
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let out = ctl(&["status", "web"]);
        if out.code == 0 && out.stdout.contains("running") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ctl without flags never saw web running: {out:?}\ndaemon log:\n{}",
            fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        thread::sleep(POLL);
    }
    let pid = ctl(&["pid"]);
    assert_eq!(pid.stdout.trim(), daemon.0.id().to_string(), "{pid:?}");
    assert_eq!(ctl(&["shutdown"]).code, 0);
    assert!(
        wait_pid_gone(daemon.0.id() as i32, WAIT),
        "daemon did not exit"
    );
    assert!(!Path::new(ROOT_SOCKET).exists(), "socket left behind");
}

/// The uid, gid and supplementary groups of `pid`, from /proc.
fn credentials(pid: i32) -> (String, String, Vec<u32>) {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mut groups: Vec<u32> = field("Groups:")
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    groups.sort();
    (field("Uid:"), field("Gid:"), groups)
}

/// Output of `id ARGS` for the `nobody` user (the system's view of its groups).
fn id_of(args: &[&str]) -> Option<String> {
    let out = Command::new("id").args(args).arg("nobody").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn user_drops_to_that_user_with_its_groups_and_home() {
    if !root_only("user_drops_to_that_user_with_its_groups_and_home") {
        return;
    }
    let (Some(uid), Some(gid), Some(groups)) = (id_of(&["-u"]), id_of(&["-g"]), id_of(&["-G"]))
    else {
        eprintln!("skipping: no user `nobody` on this machine");
        return;
    };
    let mut expected_groups: Vec<u32> = groups
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    expected_groups.sort();
    let mut d = Daemon::prepare(
        "",
        &program(
            "dropped",
            &["--write-env", "@TMP@/out/env", "--pidfile", "@TMP@/out/pid"],
            "user = \"nobody\"",
        ),
    );
    // nobody must reach its files: a traversable temp dir, a writable out/.
    fs::set_permissions(d.tmp(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::create_dir(d.path("out")).unwrap();
    fs::set_permissions(d.path("out"), fs::Permissions::from_mode(0o777)).unwrap();
    if !child_reachable_by_others() {
        eprintln!("skipping: {CHILD} is not reachable by other users");
        return;
    }
    d.spawn();
    d.wait_ready();
    let pid = read_pid(&d.path("out/pid"));
    let (uids, gids, child_groups) = credentials(pid);
    assert!(
        uids.split_whitespace().all(|u| u == uid),
        "real/effective/saved/fs uid should all be nobody's {uid}: {uids}"
    );
    assert!(
        gids.split_whitespace().all(|g| g == gid),
        "gids should all be nobody's {gid}: {gids}"
    );
    assert_eq!(
        child_groups, expected_groups,
        "supplementary groups must be nobody's (as initgroups sets them), not root's"
    );
    let env = parse_env(&wait_file(&d.path("out/env"), WAIT));
    assert_eq!(env_get(&env, "USER"), Some("nobody"));
    assert_eq!(env_get(&env, "LOGNAME"), Some("nobody"));
    let home = env_get(&env, "HOME").unwrap_or_default();
    assert!(
        !home.is_empty() && home != "/root",
        "HOME should be nobody's: {home:?}"
    );
}

/// Whether every directory above the test child (and the file) lets others in.
fn child_reachable_by_others() -> bool {
    reachable_by_others(CHILD)
}

/// Whether every directory above `path` (and the file) lets others in.
fn reachable_by_others(path: &str) -> bool {
    Path::new(path).ancestors().all(|p| {
        fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

#[test]
fn user_is_refused_clearly_when_minder_is_not_root() {
    if !root_only("user_is_refused_clearly_when_minder_is_not_root") {
        return;
    }
    let (Some(uid), Some(gid)) = (id_of(&["-u"]), id_of(&["-g"])) else {
        eprintln!("skipping: no user `nobody` on this machine");
        return;
    };
    if !reachable_by_others(MINDER) {
        eprintln!("skipping: {MINDER} is not reachable by other users");
        return;
    }
    let (uid, gid): (u32, u32) = (uid.parse().unwrap(), gid.parse().unwrap());
    // The daemon runs as nobody, in a directory nobody owns.
    let dir = tempfile::Builder::new()
        .prefix("minder-it.")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    let sock = dir.path().join("minder.sock");
    let config = dir.path().join("minder.toml");
    let text = format!(
        "[supervisor]\nsocket = {}\nlog_dir = {}\n\n{}",
        toml_str(sock.to_str().unwrap()),
        toml_str(dir.path().join("logs").to_str().unwrap()),
        program("as_root", &[], "user = \"root\"")
    );
    fs::write(&config, text).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    let log_path = dir.path().join("daemon.log");
    let log = fs::File::create(&log_path).unwrap();
    std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).unwrap();
    let _daemon = RawDaemon(
        std::os::unix::process::CommandExt::gid(
            std::os::unix::process::CommandExt::uid(&mut Command::new(MINDER), uid),
            gid,
        )
        .args(["daemon", "-c", config.to_str().unwrap()])
        .current_dir(dir.path())
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap(),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run_minder(&["ctl", "-s", sock.to_str().unwrap(), "status", "--json"]);
        let row = serde_json::from_str::<serde_json::Value>(out.stdout.trim())
            .ok()
            .and_then(|v| parse_status(&v).ok())
            .and_then(|ps| find(&ps, "as_root").cloned());
        if let Some(p) = &row {
            if p.description
                .contains("user/group need minder to run as root")
            {
                assert!(p.pid.is_none(), "nothing may run: {p:?}");
                assert!(
                    p.state == "backoff" || p.state == "fatal",
                    "a refused start is a failed start: {p:?}"
                );
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no clear refusal within {WAIT:?}: {row:?} {out:?}\ndaemon log:\n{}",
            fs::read_to_string(&log_path).unwrap_or_default()
        );
        thread::sleep(POLL);
    }
}

#[test]
fn reexec_keeps_talking_to_systemd() {
    let mut d = Daemon::prepare("", &program("web", &[], ""));
    let sd = FakeSystemd::bind(d.path("systemd-notify.sock"));
    d.spawn_with(
        &[],
        &[("NOTIFY_SOCKET", sd.path()), ("WATCHDOG_USEC", "400000")],
    );
    d.wait_ready();
    let web = d.wait_state("web", "running");
    let ready = sd.wait_for(0, "READY=1", |m| m.has("READY=1"));

    let out = d.ctl(&["reexec"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(d.ctl_ok(&["pid"]).stdout.trim(), d.pid().to_string());
    assert_eq!(d.proc("web").pid, web.pid, "web kept across reexec");
    // Around the exec systemd sees a reload: RELOADING=1 from the old image,
    // READY=1 with its summary from the new one; the watchdog keeps going.
    let reloading = sd.wait_for(ready + 1, "RELOADING=1 before the exec", |m| {
        m.has("RELOADING=1")
    });
    let again = sd.wait_for(reloading + 1, "READY=1 from the new image", |m| {
        m.has("READY=1") && m.get("STATUS") == Some("1 running, 0 unhealthy")
    });
    let after = sd.wait_for(again + 1, "WATCHDOG=1 from the new image", |m| {
        m.has("WATCHDOG=1")
    });
    sd.wait_for(after + 1, "a second WATCHDOG=1", |m| m.has("WATCHDOG=1"));
}

#[test]
fn reexec_refuses_a_config_others_can_write_as_root() {
    if !root_only("reexec_refuses_a_config_others_can_write_as_root") {
        return;
    }
    let mut d = Daemon::start(&program("web", &[], ""));
    let web = d.wait_state("web", "running");
    fs::set_permissions(&d.config_path, fs::Permissions::from_mode(0o664)).unwrap();
    let out = d.ctl(&["reexec"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("writable by group"), "{out:?}");
    // Nothing changed: the same daemon still supervises the same process.
    assert!(d.try_wait().is_none(), "daemon exited");
    assert_eq!(d.ctl_ok(&["pid"]).stdout.trim(), d.pid().to_string());
    assert_eq!(d.proc("web").pid, web.pid);
}
