//! Containment (SPEC §5.3): every process in a cgroup of its own, so that a
//! stop or a shutdown leaves no descendant behind, not even one that called
//! `setsid`; a minder killed with SIGKILL leaves nothing the next one does
//! not stop; and cgroups go when their processes do.
//!
//! These run where minder can make cgroups (root, a cgroup2 mount with
//! `cgroup.kill`); elsewhere each test says so and checks only that minder
//! said why cgroups are off.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_pid_gone, pid_alive, toml_array, wait_file, Daemon};

/// A program running `sh -c SCRIPT`, with fast timings.
fn shell(name: &str, script: &str, extra: &str) -> String {
    format!(
        "[program.{name}]\ncommand = {}\nstart_secs = \"100ms\"\nstop_timeout = \"2s\"\n{extra}\n",
        toml_array(&["sh", "-c", script])
    )
}

/// A main process that double-forks a `setsid` grandchild (written to
/// `FILE`), which is re-parented away and outside the main process's
/// process group and session.
fn escaping(file: &str) -> String {
    format!("(setsid sleep 300 & echo $! > {file}) ; exec sleep 300")
}

/// The cgroup directory of `pid`, if it is in one of minder's.
fn cgroup_of(pid: i32) -> Option<PathBuf> {
    let path = common::cgroup_dir(pid)?;
    // A process without a cgroup of its own is in minder's leaf.
    (path.to_string_lossy().contains("/minder-") && !path.ends_with(":supervisor")).then_some(path)
}

/// Whether the daemon runs with cgroups; prints which path this test takes.
fn contained(d: &Daemon, name: &str) -> bool {
    let pid = d.proc(name).pid.expect("a running process has a pid");
    match cgroup_of(pid) {
        Some(path) => {
            eprintln!("cgroups on: {name} in {}", path.display());
            true
        }
        None => {
            let log = std::fs::read_to_string(&d.log_path).unwrap_or_default();
            assert!(
                log.contains("cgroups are off ("),
                "no cgroup and no word why:\n{log}"
            );
            eprintln!("cgroups off here: only the line saying why is checked");
            false
        }
    }
}

#[test]
fn a_setsid_grandchild_does_not_survive_a_stop() {
    let d = Daemon::start(&shell("web", &escaping("@TMP@/gc.pid"), ""));
    d.wait_state("web", "running");
    if !contained(&d, "web") {
        return;
    }
    let main = d.proc("web").pid.unwrap();
    let cgroup = cgroup_of(main).unwrap();
    let grandchild = common::read_pid(&d.path("gc.pid"));
    assert!(pid_alive(grandchild));
    assert_ne!(
        common::proc_stat(grandchild).unwrap().0,
        main,
        "re-parented away"
    );
    d.ctl_ok(&["stop", "web"]);
    // `ctl stop` returns once the process is stopped: its cgroup is empty
    // then, so the grandchild is already gone.
    assert_eq!(d.proc("web").state, "stopped");
    assert!(
        !pid_alive(grandchild),
        "the setsid grandchild survived the stop"
    );
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
}

#[test]
fn without_a_cgroup_the_setsid_grandchild_escapes_the_process_group() {
    // What the cgroup is for: with `cgroup = false` the stop reaches the
    // process group only, and the grandchild left it.
    let d = Daemon::start(&shell("web", &escaping("@TMP@/gc.pid"), "cgroup = false"));
    d.wait_state("web", "running");
    let main = d.proc("web").pid.unwrap();
    assert_eq!(cgroup_of(main), None);
    let grandchild = common::read_pid(&d.path("gc.pid"));
    d.ctl_ok(&["stop", "web"]);
    let survived = pid_alive(grandchild);
    if survived {
        // SAFETY: kill(2) on the grandchild this test's program started.
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
    }
    assert!(survived, "process groups alone were expected to miss it");
}

#[test]
fn a_grandchild_ignoring_the_stop_signal_is_killed_with_its_cgroup_at_shutdown() {
    let script = "(setsid sh -c 'trap \"\" TERM; echo $$ > @TMP@/gc.pid; while :; do sleep 1; done' &) ; exec sleep 300";
    let mut d = Daemon::start(&shell("web", script, ""));
    d.wait_state("web", "running");
    if !contained(&d, "web") {
        return;
    }
    let main = d.proc("web").pid.unwrap();
    let cgroup = cgroup_of(main).unwrap();
    let base = cgroup.parent().unwrap().parent().unwrap().to_path_buf();
    wait_file(&d.path("gc.pid"), Duration::from_secs(10));
    let grandchild = common::read_pid(&d.path("gc.pid"));
    d.signal(libc::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(!pid_alive(grandchild), "the grandchild outlived minder");
    assert!(!pid_alive(main));
    assert!(!base.exists(), "{} left behind at shutdown", base.display());
}

#[test]
fn a_program_removed_by_reload_leaves_no_cgroup() {
    let d =
        Daemon::start(&(shell("web", "exec sleep 300", "") + &shell("db", "exec sleep 300", "")));
    d.wait_state("db", "running");
    if !contained(&d, "db") {
        return;
    }
    let cgroup = cgroup_of(d.proc("db").pid.unwrap()).unwrap();
    let program_dir = cgroup.parent().unwrap().to_path_buf();
    d.write_config(&shell("web", "exec sleep 300", ""));
    d.ctl_ok(&["reload"]);
    d.wait_for("db is gone", Duration::from_secs(10), |procs| {
        common::find(procs, "db").is_none()
    });
    assert!(
        !cgroup.exists() && !program_dir.exists(),
        "{} left",
        program_dir.display()
    );
}

#[test]
fn after_minder_is_killed_the_next_one_stops_what_it_left_and_starts_clean() {
    let port = common::free_port();
    let body = shell("web", &escaping("@TMP@/gc.pid"), "")
        + &shell("worker", "exec sleep 300", "instances = 2")
        + &common::program(
            "api",
            &["--serve-inherited"],
            &format!("listen = [\"tcp://127.0.0.1:{port}\"]"),
        );
    let mut d = Daemon::start(&body);
    for name in ["web", "worker:0", "worker:1", "api"] {
        d.wait_state(name, "running");
    }
    if !contained(&d, "web") {
        return;
    }
    let old: Vec<i32> = ["web", "worker:0", "worker:1", "api"]
        .iter()
        .map(|n| d.proc(n).pid.unwrap())
        .collect();
    let grandchild = common::read_pid(&d.path("gc.pid"));
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    // The orphans live on, the listener among them, until a minder stops them.
    assert!(old.iter().all(|pid| pid_alive(*pid)));
    d.respawn();
    for name in ["web", "worker:0", "worker:1", "api"] {
        d.wait_state(name, "running");
    }
    for pid in old.iter().chain([&grandchild]) {
        assert_pid_gone(*pid, "a process of the killed minder");
    }
    let new: Vec<i32> = ["web", "worker:0", "worker:1", "api"]
        .iter()
        .map(|n| d.proc(n).pid.unwrap())
        .collect();
    assert!(new.iter().all(|pid| !old.contains(pid)));
    // The port the orphan held serves the new generation.
    let (code, _) = common::http_get(port, "/").expect("the new api serves on the port");
    assert!(code < 500, "{code}");
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    for pid in &old {
        assert!(
            log.contains(&format!("stopping process {pid} (")),
            "no line for {pid}:\n{log}"
        );
    }
}

#[test]
fn without_cgroups_the_next_minder_stops_what_a_killed_one_left_from_its_state_file() {
    let port = common::free_port();
    let body = shell("web", "sleep 300 & exec sleep 300", "cgroup = false")
        + &common::program(
            "api",
            &["--serve-inherited"],
            &format!("listen = [\"tcp://127.0.0.1:{port}\"]\ncgroup = false"),
        );
    let mut d = Daemon::start(&body);
    for name in ["web", "api"] {
        d.wait_state(name, "running");
    }
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    assert!(
        log.contains("cgroups are off (every program has cgroup = false)"),
        "{log}"
    );
    let old: Vec<i32> = ["web", "api"]
        .iter()
        .map(|n| d.proc(n).pid.unwrap())
        .collect();
    // The background sleep of web: in its session, not its main process.
    let member = common::descendants(old[0])[0];
    let ledger = std::fs::read_to_string(d.path("minder.sock.pids")).unwrap();
    for pid in &old {
        assert!(
            ledger.contains(&format!("+ {pid} ")),
            "{pid} not in\n{ledger}"
        );
    }
    d.signal(libc::SIGKILL);
    d.wait_exit(Duration::from_secs(10));
    assert!(old.iter().all(|pid| pid_alive(*pid)));
    d.respawn();
    for name in ["web", "api"] {
        d.wait_state(name, "running");
    }
    for pid in old.iter().chain([&member]) {
        assert_pid_gone(*pid, "a process of the killed minder");
    }
    let (code, body) = common::http_get(port, "/").expect("the new api serves on the port");
    assert!(code < 500, "{code}");
    assert_eq!(body.trim(), d.proc("api").pid.unwrap().to_string());
    let log = std::fs::read_to_string(&d.log_path).unwrap();
    for pid in &old {
        assert!(
            log.contains(&format!("process {pid} (")),
            "no line for {pid}:\n{log}"
        );
    }
}

/// The value of `name` in `/proc/PID/limits` text: (soft, hard).
fn limit<'a>(limits: &'a str, name: &str) -> (&'a str, &'a str) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in\n{limits}"));
    let mut fields = line[name.len()..].split_whitespace();
    (fields.next().unwrap(), fields.next().unwrap())
}

#[test]
fn limits_are_set_in_the_child_soft_and_hard() {
    let d = Daemon::start(&shell(
        "web",
        "cat /proc/self/limits > @TMP@/limits; exec sleep 300",
        "limits = { nofile = 1234, core = 0, nproc = 777, stack = \"16MiB\", memlock = \"4MiB\" }",
    ));
    d.wait_state("web", "running");
    let limits = wait_file(&d.path("limits"), Duration::from_secs(10));
    assert_eq!(limit(&limits, "Max open files"), ("1234", "1234"));
    assert_eq!(limit(&limits, "Max core file size"), ("0", "0"));
    assert_eq!(limit(&limits, "Max processes"), ("777", "777"));
    let stack = (16u64 << 20).to_string();
    assert_eq!(
        limit(&limits, "Max stack size"),
        (stack.as_str(), stack.as_str())
    );
    let memlock = (4u64 << 20).to_string();
    assert_eq!(
        limit(&limits, "Max locked memory"),
        (memlock.as_str(), memlock.as_str())
    );
}

#[test]
fn a_limit_the_kernel_refuses_fails_the_start_with_the_reason() {
    // Above fs.nr_open (1048576 by default): even root may not.
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let d = Daemon::start(&shell(
        "web",
        "exec sleep 300",
        &format!("limits = {{ nofile = {} }}", nr_open + 1),
    ));
    let p = d.wait_for("the start fails", Duration::from_secs(10), |procs| {
        common::find(procs, "web").is_some_and(|p| p.description.contains("spawn failed"))
    });
    let web = common::get(&p, "web");
    assert!(
        web.description
            .contains("spawn failed: setting limits.nofile: Operation not permitted"),
        "{}",
        web.description
    );
}

/// For each cgroup limit: where the host has its controller, the value is
/// in the process's cgroup; where not, the start fails naming it.
#[test]
fn cgroup_limits_reach_the_cgroup_or_fail_the_start_naming_the_controller() {
    let cases = [
        (
            "memory_max = \"64MiB\"",
            "memory.max",
            "67108864",
            "memory_max",
            "memory",
        ),
        (
            "cpu_max = \"150%\"",
            "cpu.max",
            "150000 100000",
            "cpu_max",
            "cpu",
        ),
        ("pids_max = 64", "pids.max", "64", "pids_max", "pids"),
    ];
    for (key, file, value, name, controller) in cases {
        let d = Daemon::start(&shell("web", "exec sleep 300", key));
        let p = d.wait_for("started or failed", Duration::from_secs(10), |procs| {
            common::find(procs, "web")
                .is_some_and(|p| p.state == "running" || p.description.contains("spawn failed"))
        });
        let web = common::get(&p, "web");
        if web.state == "running" {
            let cgroup =
                cgroup_of(web.pid.unwrap()).expect("a running process with a limit has a cgroup");
            let written = std::fs::read_to_string(cgroup.join(file)).unwrap();
            eprintln!("{controller} controller here: {file} = {}", written.trim());
            assert_eq!(written.trim(), value);
        } else {
            eprintln!("no {controller} controller here: the start fails");
            let expected =
                format!("spawn failed: {name} needs the cgroup v2 {controller} controller");
            assert!(web.description.contains(&expected), "{}", web.description);
        }
    }
}

/// Whether the host has swap: a cgroup with `memory.max` then swaps before
/// the OOM killer acts (minder sets no `memory.swap.max`).
fn swap_in_use() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
}

#[test]
fn a_process_the_oom_killer_kills_says_so() {
    if swap_in_use() {
        // memory.max is checked by the test of the limits.
        eprintln!("swap here: a process over memory_max swaps before the OOM killer acts; skipped");
        return;
    }
    // Allocates and touches (writes) 256 MiB in a 32 MiB cgroup.
    let hog = "exec python3 -c 'b = b\"x\" * (256 << 20); import time; time.sleep(300)'";
    let d = Daemon::start(&shell(
        "hog",
        hog,
        "memory_max = \"32MiB\"\nrestart = \"never\"",
    ));
    let p = d.wait_for(
        "the hog ends or cannot start",
        Duration::from_secs(20),
        |procs| {
            common::find(procs, "hog")
                .is_some_and(|p| p.state == "exited" || p.description.contains("spawn failed"))
        },
    );
    let hog = common::get(&p, "hog");
    if hog.description.contains("spawn failed") {
        eprintln!("no memory controller here: {}", hog.description);
        assert!(hog
            .description
            .contains("memory_max needs the cgroup v2 memory controller"));
        return;
    }
    eprintln!("memory controller here: {}", hog.description);
    assert!(
        hog.description
            .contains("killed by the OOM killer (memory_max 32MiB)"),
        "{}",
        hog.description
    );
}

#[test]
fn after_a_reexec_the_same_cgroups_contain_the_same_processes() {
    let d = Daemon::start(&shell("web", &escaping("@TMP@/gc.pid"), ""));
    d.wait_state("web", "running");
    if !contained(&d, "web") {
        return;
    }
    let main = d.proc("web").pid.unwrap();
    let cgroup = cgroup_of(main).unwrap();
    let leaf = cgroup_of(d.pid());
    assert_eq!(leaf, None, "minder is in its own leaf, not a program's");
    let grandchild = common::read_pid(&d.path("gc.pid"));
    let out = d.ctl(&["reexec"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(d.proc("web").pid, Some(main));
    // The new image found its leaf: no second subtree inside the first.
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", d.pid())).unwrap();
    assert_eq!(own.matches("/minder-").count(), 1, "{own}");
    assert!(own.trim_end().ends_with("/:supervisor"), "{own}");
    d.ctl_ok(&["stop", "web"]);
    assert!(
        !pid_alive(grandchild),
        "the grandchild survived a stop after reexec"
    );
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
}

#[test]
fn a_cgroup_that_cannot_be_made_fails_only_that_start_with_the_reason() {
    let d =
        Daemon::start(&(shell("web", "exec sleep 300", "") + &shell("db", "exec sleep 300", "")));
    d.wait_state("web", "running");
    d.wait_state("db", "running");
    if !contained(&d, "web") {
        return;
    }
    let db = d.proc("db").pid.unwrap();
    let base = cgroup_of(db)
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    // supervisor, db, db/0 and web stay; web/0 goes with the stop.
    d.ctl_ok(&["stop", "web"]);
    std::fs::write(base.join("cgroup.max.descendants"), "4").unwrap();
    let out = d.ctl(&["start", "web"]);
    std::fs::write(base.join("cgroup.max.descendants"), "max").unwrap();
    assert_ne!(out.code, 0, "{out:?}");
    let web = d.proc("web");
    assert!(
        web.description.contains("spawn failed: creating cgroup")
            && web
                .description
                .contains("/web/0: Resource temporarily unavailable (a cgroup.max.descendants"),
        "{}",
        web.description
    );
    assert_eq!(d.proc("db").pid, Some(db), "the other program is untouched");
    // With room again, the next attempt starts it.
    d.wait_state("web", "running");
}

#[test]
fn a_second_daemon_on_the_socket_of_a_live_one_is_refused() {
    let d = Daemon::start(&shell("web", "exec sleep 300", ""));
    let out = common::run_with_timeout(
        std::process::Command::new(common::MINDER)
            .args(["daemon", "-c"])
            .arg(&d.config_path),
        Duration::from_secs(20),
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("another minder is already listening on"),
        "{out:?}"
    );
    d.wait_state("web", "running");
}

#[test]
fn a_socket_that_takes_connections_but_never_answers_is_not_a_live_minder() {
    // What a killed minder leaves for a moment: a child cloned but not yet
    // exec'd holds the listening socket, and nobody accepts on it.
    let mut d = Daemon::prepare("", &shell("web", "exec sleep 300", ""));
    let holder = std::os::unix::net::UnixListener::bind(&d.sock).unwrap();
    let released = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(holder);
    });
    d.spawn();
    d.wait_ready();
    released.join().unwrap();
    d.wait_state("web", "running");
}

#[test]
fn a_program_may_be_called_supervisor() {
    // minder's own leaf is `:supervisor`, a name no program can have.
    let d = Daemon::start(&shell("supervisor", "exec sleep 300", ""));
    d.wait_state("supervisor", "running");
    if !contained(&d, "supervisor") {
        return;
    }
    let cgroup = cgroup_of(d.proc("supervisor").pid.unwrap()).unwrap();
    assert!(cgroup.ends_with("supervisor/0"), "{}", cgroup.display());
    let own = common::cgroup_dir(d.pid()).unwrap();
    assert!(own.ends_with(":supervisor"), "{}", own.display());
    d.ctl_ok(&["stop", "supervisor"]);
    assert!(!cgroup.exists());
}

#[test]
fn without_permission_for_cgroups_minder_says_why_once_and_keeps_a_state_file() {
    // As `nobody`, minder may not make its subtree.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipped: needs root and setpriv to run minder as nobody");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("minder-it.")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let config = dir.path().join("minder.toml");
    let socket = dir.path().join("minder.sock");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\nsocket = {:?}\nlog_dir = {:?}\n{}",
            socket,
            dir.path().join("logs"),
            shell("web", "exec sleep 300", "")
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let daemon = std::process::Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::MINDER,
            "daemon",
            "-c",
        ])
        .arg(&config)
        .current_dir(dir.path())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    // Stopped by PID whatever happens below.
    struct Stopping(std::process::Child);
    impl Drop for Stopping {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                // SAFETY: kill(2) on the daemon this test started, not yet reaped.
                unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
                let _ = self.0.wait();
            }
        }
    }
    let mut daemon = Stopping(daemon);
    let text = common::wait_file_until(&log, "web running", |t| {
        t.contains("-> running process=web")
    });
    let ledger = std::fs::read_to_string(dir.path().join("minder.sock.pids")).unwrap_or_default();
    // SAFETY: kill(2) on the daemon this test started, not yet waited for.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let off: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("cgroups are off ("))
        .collect();
    assert_eq!(off.len(), 1, "{text}");
    assert!(
        off[0].contains("Permission denied") && !off[0].contains("os error"),
        "{}",
        off[0]
    );
    assert!(ledger.lines().any(|l| l.starts_with("+ ")), "{ledger}");
}
