//! Log paths that others could have tampered with: minder (usually root)
//! never writes through a symbolic link, nor into a file that someone else
//! could have put in a directory they can write (hard links, foreign files),
//! whether the file is opened again after idling, by `reopen-logs`, or is
//! minder's own `log_file` (docs/config.md, `[program.NAME.logs]`).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Instant, SystemTime};

use common::*;

const SECRET: &str = "root only\n";

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A root-only file that a hostile program would like minder to append to.
fn victim(d: &Daemon) -> std::path::PathBuf {
    let path = d.path("victim");
    fs::write(&path, SECRET).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Replaces `path` by a symbolic link to `target` in one step (as an
/// attacker would: the name is never missing).
fn swap_for_symlink(path: &Path, target: &Path) {
    let tmp = path.with_extension("swap");
    symlink(target, &tmp).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Whether the process `pid` has `path` open.
fn has_open(pid: i32, path: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|p| p == path))
}

/// Waits until minder has closed `path` (its idle stream parked).
fn wait_closed(d: &Daemon, path: &Path) {
    let deadline = Instant::now() + WAIT;
    while has_open(d.pid(), path) {
        assert!(
            Instant::now() < deadline,
            "minder kept {} open for {WAIT:?}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn dropped(p: &Proc) -> u64 {
    p.raw["dropped_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no dropped_bytes in {:?}", p.raw))
}

fn wait_dropped(d: &Daemon, name: &str) {
    d.wait_for(
        &format!("output of {name} counted as dropped"),
        WAIT,
        |ps| find(ps, name).is_some_and(|p| dropped(p) > 0),
    );
}

fn daemon_log(d: &Daemon) -> String {
    fs::read_to_string(&d.log_path).unwrap_or_default()
}

#[test]
fn log_file_swapped_for_a_symlink_is_not_written_through() {
    let mut d = Daemon::prepare("", &program("ticker", &["--tick", "100"], ""));
    // Streams close their file after 50 ms without output (10 s normally).
    d.spawn_with(&[], &[("MINDER_TEST_IDLE_PARK_MS", "50")]);
    d.wait_ready();
    let victim = victim(&d);
    let path = d.path("logs/ticker.stdout.log");
    wait_file_until(&path, "a tick", |t| t.contains("tick 1\n"));
    // The program waits for minder to close the idle file, then swaps it.
    wait_closed(&d, &path);
    swap_for_symlink(&path, &victim);
    wait_dropped(&d, "ticker");
    assert_eq!(fs::read_to_string(&victim).unwrap(), SECRET);
    let log = daemon_log(&d);
    let want = format!(
        "refusing to write {}: it is a symbolic link",
        path.display()
    );
    assert!(log.contains(&want), "{want:?} not in the log:\n{log}");
    assert_eq!(d.proc("ticker").state, "running", "the child goes on");
    // Once the link is gone, output goes to a new file of minder's again.
    fs::remove_file(&path).unwrap();
    wait_file_until(&path, "ticks after the link is gone", |t| {
        t.contains("tick ")
    });
    assert!(fs::symlink_metadata(&path).unwrap().is_file());
    assert_eq!(fs::read_to_string(&victim).unwrap(), SECRET);
}

#[test]
fn reopen_logs_refuses_a_symlink_in_place_of_the_log_file() {
    let d = Daemon::start(&program("ticker", &["--tick", "20"], ""));
    let victim = victim(&d);
    let path = d.path("logs/ticker.stdout.log");
    wait_file_until(&path, "ticks", |t| t.contains("tick 2\n"));
    swap_for_symlink(&path, &victim);
    let out = d.ctl(&["reopen-logs"]);
    assert_eq!(out.code, 1, "{out:?}");
    let want = format!(
        "refusing to write {}: it is a symbolic link",
        path.display()
    );
    assert!(out.stderr.contains(&want), "{want:?} not in {out:?}");
    wait_dropped(&d, "ticker");
    assert_eq!(fs::read_to_string(&victim).unwrap(), SECRET);
    assert!(daemon_log(&d).contains(&want));
    // SIGUSR1 takes the same way.
    d.signal(libc::SIGUSR1);
    let before = dropped(&d.proc("ticker"));
    d.wait_for("more output dropped", WAIT, |ps| {
        find(ps, "ticker").is_some_and(|p| dropped(p) > before)
    });
    assert_eq!(fs::read_to_string(&victim).unwrap(), SECRET);
    // Link gone: the next reopen writes a new file.
    fs::remove_file(&path).unwrap();
    d.ctl_ok(&["reopen-logs"]);
    wait_file_until(&path, "ticks after reopen-logs", |t| t.contains("tick "));
    assert!(fs::symlink_metadata(&path).unwrap().is_file());
}

#[test]
fn a_hard_link_or_a_foreign_file_in_a_shared_directory_is_refused() {
    if !is_root() {
        eprintln!("skipping: needs root to give a file to nobody");
        return;
    }
    let logs =
        |name: &str| format!("[program.{name}.logs]\nstdout = \"@TMP@/shared/{name}.stdout.log\"");
    let body = format!(
        "{}{}{}",
        program("linked", &["--tick", "50"], &logs("linked")),
        program("foreign", &["--tick", "50"], &logs("foreign")),
        program("own", &["--print", "mine"], &logs("own")),
    );
    let mut d = Daemon::prepare("", &body);
    let victim = victim(&d);
    // A directory everyone can write (as a program's log directory may be).
    let shared = d.path("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    fs::hard_link(&victim, shared.join("linked.stdout.log")).unwrap();
    let foreign = shared.join("foreign.stdout.log");
    fs::write(&foreign, "theirs\n").unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), None).unwrap();
    d.spawn();
    d.wait_ready();
    wait_dropped(&d, "linked");
    wait_dropped(&d, "foreign");
    // A file minder creates itself there is written.
    wait_file_until(&shared.join("own.stdout.log"), "its line", |t| {
        t == "mine\n"
    });
    assert_eq!(fs::read_to_string(&victim).unwrap(), SECRET);
    assert_eq!(fs::read_to_string(&foreign).unwrap(), "theirs\n");
    let log = daemon_log(&d);
    for (name, why) in [("linked", "hard links"), ("foreign", "owned by uid 65534")] {
        let want = format!(
            "refusing to write {}: it ",
            shared.join(format!("{name}.stdout.log")).display()
        );
        let line = log
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("{want:?} not in the log:\n{log}"));
        assert!(line.contains(why), "{line}");
        assert!(line.contains("writable by everyone"), "{line}");
    }
}

#[test]
fn own_log_file_that_is_a_symlink_is_refused() {
    let mut d = Daemon::prepare(
        "log_file = \"@TMP@/own/minder.log\"",
        &program("a", &[], ""),
    );
    let victim = victim(&d);
    fs::create_dir(d.path("own")).unwrap();
    // Today's file (UTC), and tomorrow's should the date change meanwhile.
    let now = SystemTime::now();
    for t in [now, now + std::time::Duration::from_secs(60)] {
        let date = humantime::format_rfc3339_seconds(t).to_string()[..10].to_string();
        let link = d.path(&format!("own/minder.{date}.log"));
        if fs::symlink_metadata(&link).is_err() {
            symlink(&victim, link).unwrap();
        }
    }
    d.spawn();
    let status = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "minder refuses to start");
    let log = daemon_log(&d);
    assert!(
        log.contains("refusing to write") && log.contains("it is a symbolic link"),
        "{log}"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), SECRET);
}

#[test]
fn a_log_directory_swapped_for_a_symlink_is_not_followed() {
    let body = program(
        "web",
        &["--print", "hello"],
        "[program.web.logs]\nstdout = \"@TMP@/shared/web/web.stdout.log\"",
    );
    let mut d = Daemon::prepare("", &body);
    // The program's log directory sits in a directory everyone can write,
    // and was replaced by a link to a directory of root's.
    let shared = d.path("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    let root_only = d.path("root-only");
    fs::create_dir(&root_only).unwrap();
    let victim = root_only.join("web.stdout.log");
    fs::write(&victim, SECRET).unwrap();
    symlink(&root_only, shared.join("web")).unwrap();
    d.spawn();
    d.wait_ready();
    wait_dropped(&d, "web");
    assert_eq!(fs::read_to_string(&victim).unwrap(), SECRET);
    let log = daemon_log(&d);
    let want = format!(
        "{} is a symbolic link, and {} is writable by everyone",
        shared.join("web").display(),
        shared.display()
    );
    assert!(log.contains(&want), "{want:?} not in the log:\n{log}");
}
