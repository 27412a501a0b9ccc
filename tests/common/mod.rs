//! Harness for minder's integration tests: a daemon in a temp dir, driven only
//! through `minder ctl`, with bounded waits on conditions and a dump of
//! everything useful when a test fails.
//!
//! Config bodies may use two markers, replaced before the file is written:
//! `@TMP@` (the test's temp dir) and `@CHILD@` (the path of minder-testchild).
//! [`child_cmd`] builds a `command = [...]` value around the test child.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod etcd;
pub mod haproxy;
pub mod nginx;
pub mod pki;

/// The minder binary under test.
pub const MINDER: &str = env!("CARGO_BIN_EXE_minder");
/// The helper child program.
pub const CHILD: &str = env!("CARGO_BIN_EXE_minder-testchild");

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(25);
/// Default deadline for a condition (generous: tests run on loaded 2-core machines).
pub const WAIT: Duration = Duration::from_secs(15);
/// Deadline for one `minder` CLI invocation.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Set in the daemon's environment so tests can see what children inherit.
pub const INHERITED_VAR: &str = "MINDER_TEST_INHERITED";

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a &str always serialises")
}

/// A TOML array of strings: `["a", "b"]`.
pub fn toml_array(items: &[&str]) -> String {
    let parts: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// A `command` value running minder-testchild with `args` (markers allowed in args).
pub fn child_cmd(args: &[&str]) -> String {
    let mut all = vec![CHILD];
    all.extend_from_slice(args);
    toml_array(&all)
}

/// A `[program.NAME]` table running the test child with `args`, plus `extra` lines.
///
/// Fast defaults (`start_secs = "100ms"`, `stop_timeout = "2s"`) are added unless
/// `extra` sets those keys itself. `extra` may end with sub-tables.
pub fn program(name: &str, args: &[&str], extra: &str) -> String {
    let mut t = format!("[program.{name}]\ncommand = {}\n", child_cmd(args));
    for (key, value) in [("start_secs", "\"100ms\""), ("stop_timeout", "\"2s\"")] {
        let set = extra
            .lines()
            .any(|l| l.trim_start().starts_with(key) && l.contains('='));
        if !set {
            t.push_str(&format!("{key} = {value}\n"));
        }
    }
    t.push_str(extra);
    t.push('\n');
    t
}

/// Replaces the `@TMP@` and `@CHILD@` markers.
pub fn expand(text: &str, tmp: &Path) -> String {
    text.replace("@TMP@", &tmp.display().to_string())
        .replace("@CHILD@", CHILD)
}

/// What one CLI invocation returned.
#[derive(Debug, Clone)]
pub struct Out {
    /// Exit code (`128 + signal` if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Parses stdout as one JSON document, panicking with the output if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }
}

fn exit_code(st: ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Runs `minder ARGS` with a deadline; kills it (by PID) and panics if it hangs.
pub fn run_minder(args: &[&str]) -> Out {
    run_with_timeout(Command::new(MINDER).args(args), CLI_TIMEOUT)
}

/// Runs a command to completion with a deadline, capturing stdout and stderr.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Out {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut so = child.stdout.take().expect("stdout was piped");
    let mut se = child.stderr.take().expect("stderr was piped");
    let t_out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let t_err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("try_wait on our own child") {
            Some(st) => break st,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} did not finish within {timeout:?}");
            }
            None => thread::sleep(Duration::from_millis(5)),
        }
    };
    Out {
        code: exit_code(status),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// One row of `ctl status --json`.
#[derive(Debug, Clone)]
pub struct Proc {
    pub name: String,
    pub program: String,
    pub instance: u64,
    pub state: String,
    pub pid: Option<i32>,
    pub uptime_secs: Option<f64>,
    pub health: String,
    pub restarts: u64,
    pub last_exit_code: Option<i64>,
    pub last_exit_signal: Option<String>,
    pub description: String,
    /// The whole object, for fields added later.
    pub raw: Value,
}

impl Proc {
    fn from_json(v: &Value) -> Result<Proc, String> {
        let field = |k: &str| {
            v.get(k)
                .ok_or_else(|| format!("missing field {k:?} in {v}"))
        };
        let string = |k: &str| -> Result<String, String> {
            field(k)?
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("field {k:?} is not a string in {v}"))
        };
        let opt_i64 = |k: &str| -> Result<Option<i64>, String> {
            let f = field(k)?;
            if f.is_null() {
                Ok(None)
            } else {
                f.as_i64()
                    .map(Some)
                    .ok_or_else(|| format!("field {k:?} is not an integer or null in {v}"))
            }
        };
        let uptime = field("uptime_secs")?;
        let signal = field("last_exit_signal")?;
        Ok(Proc {
            name: string("name")?,
            program: string("program")?,
            instance: field("instance")?
                .as_u64()
                .ok_or_else(|| format!("instance is not an integer in {v}"))?,
            state: string("state")?,
            pid: opt_i64("pid")?.map(|p| p as i32),
            uptime_secs: if uptime.is_null() {
                None
            } else {
                Some(
                    uptime
                        .as_f64()
                        .ok_or_else(|| format!("uptime_secs is not a number in {v}"))?,
                )
            },
            health: string("health")?,
            restarts: field("restarts")?
                .as_u64()
                .ok_or_else(|| format!("restarts is not an integer in {v}"))?,
            last_exit_code: opt_i64("last_exit_code")?,
            last_exit_signal: if signal.is_null() {
                None
            } else {
                Some(
                    signal
                        .as_str()
                        .ok_or_else(|| format!("last_exit_signal is not a string in {v}"))?
                        .to_owned(),
                )
            },
            description: string("description")?,
            raw: v.clone(),
        })
    }
}

/// Parses a `status --json` document into its rows.
pub fn parse_status(doc: &Value) -> Result<Vec<Proc>, String> {
    doc.get("processes")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no \"processes\" array in {doc}"))?
        .iter()
        .map(Proc::from_json)
        .collect()
}

/// Finds a row by name.
pub fn find<'a>(procs: &'a [Proc], name: &str) -> Option<&'a Proc> {
    procs.iter().find(|p| p.name == name)
}

/// Finds a row by name, panicking with the whole status if it is absent.
pub fn get<'a>(procs: &'a [Proc], name: &str) -> &'a Proc {
    find(procs, name).unwrap_or_else(|| panic!("no process {name:?} in status: {procs:#?}"))
}

/// A minder daemon running in its own temp dir; stopped (by PID) on drop.
pub struct Daemon {
    /// The temp dir holding config, socket, logs and the test's files.
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub sock: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    /// The daemon's exit status once it has been waited for.
    exited: Option<ExitStatus>,
    /// Extra `[supervisor]` keys, kept for rewrites of the config.
    supervisor_extra: String,
    /// RLIMIT_NOFILE (soft, hard) the daemon is started with, if not the test's.
    nofile: Option<(u64, u64)>,
}

impl Daemon {
    /// Starts a daemon on `body` (the `[program.*]` tables) and waits until it answers.
    pub fn start(body: &str) -> Daemon {
        Daemon::start_with("", body)
    }

    /// Like [`Daemon::start`], with extra `[supervisor]` keys (one `key = value` a line).
    pub fn start_with(supervisor_extra: &str, body: &str) -> Daemon {
        let mut d = Daemon::prepare(supervisor_extra, body);
        d.spawn();
        d.wait_ready();
        d
    }

    /// Creates the temp dir and writes the config, without starting anything.
    pub fn prepare(supervisor_extra: &str, body: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("minder-it.")
            .tempdir()
            .expect("creating a temp dir");
        let d = Daemon {
            config_path: dir.path().join("minder.toml"),
            sock: dir.path().join("minder.sock"),
            log_path: dir.path().join("daemon.log"),
            dir,
            child: None,
            exited: None,
            supervisor_extra: supervisor_extra.to_owned(),
            nofile: None,
        };
        d.write_config(body);
        d
    }

    /// The temp dir.
    pub fn tmp(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts the daemon (at the next [`Daemon::spawn`]) with this RLIMIT_NOFILE.
    /// Raising the hard limit above the test's own needs root.
    pub fn set_nofile(&mut self, soft: u64, hard: u64) {
        self.nofile = Some((soft, hard));
    }

    /// Replaces the extra `[supervisor]` keys used by later [`Daemon::write_config`] calls.
    pub fn set_supervisor_extra(&mut self, extra: &str) {
        extra.clone_into(&mut self.supervisor_extra);
    }

    /// (Re)writes minder.toml: the `[supervisor]` table, then `body` with markers expanded.
    pub fn write_config(&self, body: &str) {
        let text = self.config_text(body);
        fs::write(&self.config_path, text).expect("writing minder.toml");
        // Whatever the umask: as root, minder refuses a config others could change.
        fs::set_permissions(&self.config_path, fs::Permissions::from_mode(0o644))
            .expect("chmod minder.toml");
    }

    /// The full config text for `body`.
    pub fn config_text(&self, body: &str) -> String {
        let mut text = String::from("[supervisor]\n");
        writeln!(
            text,
            "socket = {}",
            toml_str(&self.sock.display().to_string())
        )
        .unwrap();
        writeln!(
            text,
            "log_dir = {}",
            toml_str(&self.path("logs").display().to_string())
        )
        .unwrap();
        text.push_str(&expand(&self.supervisor_extra, self.tmp()));
        text.push('\n');
        text.push_str(&expand(body, self.tmp()));
        text.push('\n');
        text
    }

    /// Starts `minder daemon -c minder.toml` with output to daemon.log.
    pub fn spawn(&mut self) {
        self.spawn_with(&[], &[]);
    }

    /// Like [`Daemon::spawn`], with extra arguments after `daemon -c FILE` and
    /// extra environment variables (set after the harness removes systemd's).
    pub fn spawn_with(&mut self, args: &[&str], env: &[(&str, &str)]) {
        self.spawn_wrapped(&[], None, args, env);
    }

    /// Like [`Daemon::spawn_with`], run through `wrapper` (a command that
    /// runs its arguments, e.g. `unshare --pid --fork`; then [`Daemon::pid`]
    /// is the wrapper's) and with the daemon's stdout to `stdout` (else to
    /// daemon.log, with its stderr).
    pub fn spawn_wrapped(
        &mut self,
        wrapper: &[&str],
        stdout: Option<Stdio>,
        args: &[&str],
        env: &[(&str, &str)],
    ) {
        assert!(self.child.is_none(), "daemon already started");
        let log = fs::File::create(&self.log_path).expect("creating daemon.log");
        let mut cmd = match wrapper.split_first() {
            Some((program, before)) => {
                let mut cmd = Command::new(program);
                cmd.args(before).arg(MINDER);
                cmd
            }
            None => Command::new(MINDER),
        };
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and touches no memory of
            // the parent; `limit` is a plain copy moved into the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd
            .arg("daemon")
            .arg("-c")
            .arg(&self.config_path)
            .current_dir(self.tmp())
            .env(INHERITED_VAR, "yes")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("MINDER_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout.unwrap_or_else(|| log.try_clone().expect("dup of daemon.log").into()))
            .stderr(log)
            .spawn()
            .expect("spawning minder daemon");
        self.child = Some(child);
    }

    /// Starts a new daemon on the same config and socket once this one has
    /// exited (after a SIGKILL, say), and waits until it answers.
    pub fn respawn(&mut self) {
        assert!(self.try_wait().is_some(), "the daemon is still running");
        self.child = None;
        self.exited = None;
        let previous = self.path("daemon.log.previous");
        let _ = fs::rename(&self.log_path, previous);
        self.spawn();
        self.wait_ready();
    }

    /// Waits until `ctl status` answers (exit 0 or 3), panicking if the daemon dies or hangs.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(st) = self.try_wait() {
                panic!("minder daemon exited during startup with {st:?}");
            }
            let out = self.ctl(&["status", "--json"]);
            let parsed = serde_json::from_str::<Value>(out.stdout.trim())
                .map_err(|e| e.to_string())
                .and_then(|v| parse_status(&v));
            if (out.code == 0 || out.code == 3) && parsed.is_ok() {
                return;
            }
            last = Some(out);
            thread::sleep(POLL);
        }
        panic!("minder daemon did not answer `ctl status` within 10s; last: {last:?}");
    }

    /// The daemon's PID.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon was started").id() as i32
    }

    /// The daemon's exit status, if it has exited (non-blocking).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Some(c) = self.child.as_mut() {
                self.exited = c.try_wait().expect("try_wait on the daemon");
            }
        }
        self.exited
    }

    /// Waits (bounded) for the daemon to exit; panics if it does not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return st;
            }
            if Instant::now() >= deadline {
                panic!("minder daemon did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `sig` to the daemon (by PID).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of our own, not yet reaped, child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Runs `minder ctl -s SOCK ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Out {
        let sock = self.sock.display().to_string();
        let mut all = vec!["ctl", "-s", sock.as_str()];
        all.extend_from_slice(args);
        run_minder(&all)
    }

    /// Runs `ctl ARGS` and asserts exit 0.
    pub fn ctl_ok(&self, args: &[&str]) -> Out {
        let out = self.ctl(args);
        assert_eq!(
            out.code,
            0,
            "`minder ctl {}` failed: {out:?}",
            args.join(" ")
        );
        out
    }

    /// `ctl status --json [NAMES]`, parsed; panics unless exit is 0 or 3 and the JSON fits SPEC.
    pub fn status_of(&self, names: &[&str]) -> Vec<Proc> {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(names);
        let out = self.ctl(&args);
        assert!(
            out.code == 0 || out.code == 3,
            "`ctl status --json` exited {}: {out:?}",
            out.code
        );
        parse_status(&out.json()).unwrap_or_else(|e| panic!("bad status JSON: {e}"))
    }

    /// Every process, parsed from `ctl status --json`.
    pub fn status(&self) -> Vec<Proc> {
        self.status_of(&[])
    }

    /// One process by name.
    pub fn proc(&self, name: &str) -> Proc {
        get(&self.status(), name).clone()
    }

    /// Polls status until `pred` holds; returns that status. Panics with the last status at `timeout`.
    pub fn wait_for(
        &self,
        desc: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[Proc]) -> bool,
    ) -> Vec<Proc> {
        let start = Instant::now();
        let max_polls = (timeout.as_millis() / POLL.as_millis()) as usize + 2;
        let mut last = Vec::new();
        for _ in 0..max_polls {
            last = self.status();
            if pred(&last) {
                return last;
            }
            if start.elapsed() >= timeout {
                break;
            }
            thread::sleep(POLL);
        }
        panic!(
            "timed out after {:?} waiting for: {desc}\nlast status: {last:#?}",
            start.elapsed()
        );
    }

    /// Waits until process `name` is in `state`.
    pub fn wait_state(&self, name: &str, state: &str) -> Proc {
        let procs = self.wait_for(&format!("{name} to be {state}"), WAIT, |ps| {
            find(ps, name).is_some_and(|p| p.state == state)
        });
        get(&procs, name).clone()
    }

    /// Checks that `pred` keeps holding for `period` (used only for "nothing happens" checks).
    pub fn assert_stays(
        &self,
        desc: &str,
        period: Duration,
        mut pred: impl FnMut(&[Proc]) -> bool,
    ) {
        let start = Instant::now();
        let max_polls = (period.as_millis() / POLL.as_millis()) as usize + 2;
        for _ in 0..max_polls {
            let st = self.status();
            assert!(
                pred(&st),
                "expected to hold for {period:?}: {desc}\nstatus: {st:#?}"
            );
            if start.elapsed() >= period {
                return;
            }
            thread::sleep(POLL);
        }
    }

    /// Direct children of the daemon that are zombies (state Z).
    pub fn zombie_children(&self) -> Vec<i32> {
        proc_children(self.pid())
            .into_iter()
            .filter(|&(_, state)| state == 'Z')
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Prints config, daemon log, the temp dir listing and small files in it.
    pub fn dump(&self) {
        let mut s = String::new();
        let _ = writeln!(s, "===== minder test dump: {} =====", self.tmp().display());
        if let Some(c) = &self.child {
            let _ = writeln!(s, "daemon pid {}, exit status {:?}", c.id(), self.exited);
        }
        let _ = writeln!(
            s,
            "--- {} ---\n{}",
            self.config_path.display(),
            fs::read_to_string(&self.config_path).unwrap_or_else(|e| format!("<{e}>"))
        );
        let _ = writeln!(
            s,
            "--- daemon.log ---\n{}",
            read_tail(&self.log_path, 64 * 1024)
        );
        let _ = writeln!(s, "--- temp dir ---");
        let mut files = Vec::new();
        list_dir(self.tmp(), &mut files, 0);
        for (path, len) in &files {
            let rel = path.strip_prefix(self.tmp()).unwrap_or(path);
            let _ = writeln!(s, "{:>10}  {}", len, rel.display());
        }
        for (path, len) in &files {
            if path == &self.config_path || path == &self.log_path || *len == 0 || *len > 8192 {
                continue;
            }
            if let Ok(text) = fs::read_to_string(path) {
                let rel = path.strip_prefix(self.tmp()).unwrap_or(path);
                let _ = writeln!(s, "--- {} ---\n{}", rel.display(), text);
            }
        }
        let _ = writeln!(s, "===== end of dump =====");
        eprintln!("{s}");
    }

    /// Stops the daemon: SIGTERM, a bounded wait, then SIGKILL; returns its exit status.
    /// Test children still alive afterwards are killed by PID so nothing lingers.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        let descendants = descendants(self.pid());
        if self.try_wait().is_none() {
            // SAFETY: kill(2) on the PID of our own unreaped child.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.try_wait().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if self.try_wait().is_none() {
                eprintln!(
                    "minder daemon {} ignored SIGTERM for 10s; SIGKILL",
                    self.pid()
                );
                // SAFETY: as above; the child is still unreaped so the PID is ours.
                unsafe { libc::kill(self.pid(), libc::SIGKILL) };
                let _ = self.child.as_mut().map(Child::wait);
                self.exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
            }
        }
        for pid in descendants {
            if pid_alive(pid) && is_test_child(pid) {
                // SAFETY: the PID was a descendant of our daemon running the test child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        self.remove_empty_cgroups();
        self.exited
    }

    /// Removes what is left, empty, of this daemon's cgroup subtree (a
    /// daemon a test killed cannot): the host's cgroup tree stays tidy.
    fn remove_empty_cgroups(&self) {
        let Some(parent) = own_cgroup() else { return };
        let prefix = format!(
            "minder-{}-",
            self.sock
                .display()
                .to_string()
                .trim_start_matches('/')
                .replace('/', "-")
        );
        let Ok(entries) = fs::read_dir(&parent) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove_empty_dirs(&entry.path(), 3);
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump();
        }
        self.stop();
    }
}

/// Where the cgroup2 file system is mounted, if it is.
pub fn cgroup_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The cgroup (v2) directory of process `pid`.
pub fn cgroup_dir(pid: i32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let relative = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(cgroup_mount()?.join(relative.trim_start_matches('/')))
}

/// The cgroup (v2) directory of the test process.
fn own_cgroup() -> Option<PathBuf> {
    cgroup_dir(std::process::id() as i32)
}

/// rmdir of `dir` and the directories below it, deepest first; a cgroup
/// that still holds a process (or a file system entry that is not a
/// cgroup) stays.
fn remove_empty_dirs(dir: &Path, depth: usize) {
    if depth > 0 {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_empty_dirs(&entry.path(), depth - 1);
                }
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn read_tail(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let from = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[from..]).into_owned()
        }
        Err(e) => format!("<{e}>"),
    }
}

fn list_dir(dir: &Path, out: &mut Vec<(PathBuf, u64)>, depth: usize) {
    if depth > 4 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.path());
    for e in entries.into_iter().take(500) {
        let path = e.path();
        let meta = fs::symlink_metadata(&path);
        if meta.as_ref().is_ok_and(|m| m.is_dir()) {
            out.push((path.clone(), 0));
            list_dir(&path, out, depth + 1);
        } else {
            out.push((path, meta.map(|m| m.len()).unwrap_or(0)));
        }
    }
}

/// `GET path` on 127.0.0.1:`port` on a fresh connection (`Connection:
/// close`): the status code and the body, or what went wrong.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    use std::io::Write;
    let mut conn =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line in {response:?}"))?;
    Ok((status, body.to_string()))
}

/// The first of `n` consecutive loopback ports that were free a moment ago
/// (for a program with `instances` and `port`).
pub fn free_ports(n: u16) -> u16 {
    for _ in 0..100 {
        let base = free_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let held: Vec<_> = (base..base + n)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(n) {
            return base;
        }
    }
    panic!("no {n} consecutive free loopback ports in 100 tries");
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// (ppid, state) of `pid`, from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(i32, char)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && proc_stat(pid).is_some_and(|(_, state)| state != 'Z')
}

/// Waits (bounded) until `pid` is gone or a zombie; false if it is still alive at the deadline.
pub fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pid_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that `pid` goes away within [`WAIT`].
pub fn assert_pid_gone(pid: i32, what: &str) {
    assert!(
        wait_pid_gone(pid, WAIT),
        "{what} (pid {pid}) still alive after {WAIT:?}: {:?}",
        proc_stat(pid)
    );
}

/// (pid, state) of every process whose parent is `ppid`.
pub fn proc_children(ppid: i32) -> Vec<(i32, char)> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (pp, state) = proc_stat(pid)?;
            (pp == ppid).then_some((pid, state))
        })
        .collect()
}

/// Every descendant of `root` (children, grandchildren, ...), bounded in depth.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut frontier = vec![root];
    for _ in 0..8 {
        let mut next = Vec::new();
        for p in frontier {
            for (c, _) in proc_children(p) {
                out.push(c);
                next.push(c);
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    out
}

/// True if `pid` runs minder-testchild (guards against killing a recycled PID).
fn is_test_child(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("minder-testchild"))
        .unwrap_or(false)
}

/// Waits (bounded) until `path` exists, then returns its content.
/// The test child writes files by rename, so an existing file is complete.
pub fn wait_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            return text;
        }
        if Instant::now() >= deadline {
            panic!("{} did not appear within {timeout:?}", path.display());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (bounded) until `path` exists and `pred` holds for its content.
pub fn wait_file_until(path: &Path, desc: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            if pred(&text) {
                return text;
            }
            last = Some(text);
        }
        if Instant::now() >= deadline {
            match last {
                Some(text) => panic!(
                    "{}: {desc} not seen within {WAIT:?}; content: {text:?}",
                    path.display()
                ),
                None => panic!("{}: file never appeared within {WAIT:?}", path.display()),
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a PID file written by the test child.
pub fn read_pid(path: &Path) -> i32 {
    let text = wait_file(path, WAIT);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{} holds {text:?}, not a PID: {e}", path.display()))
}

/// Deletes a file the test child will write again, so the next wait sees the new one.
pub fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

/// One line of a `--record` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    pub ns: u128,
    pub pid: i32,
}

/// Parses a `--record` file (missing file: no events).
pub fn read_record(path: &Path) -> Vec<Event> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(Event {
                kind: it.next()?.to_owned(),
                ns: it.next()?.parse().ok()?,
                pid: it.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The events of one kind.
pub fn events_of(events: &[Event], kind: &str) -> Vec<Event> {
    events.iter().filter(|e| e.kind == kind).cloned().collect()
}

/// Waits until the record holds at least `n` events of `kind`.
pub fn wait_record(path: &Path, kind: &str, n: usize) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = read_record(path);
        if events_of(&ev, kind).len() >= n {
            return ev;
        }
        if Instant::now() >= deadline {
            panic!(
                "{}: wanted {n} {kind:?} events within {WAIT:?}, have {ev:?}",
                path.display()
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// CLOCK_MONOTONIC in ns, comparable with the test child's `--record` times.
pub fn monotonic_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer and clock id.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// `KEY=VALUE` lines (as written by `--write-env`) into pairs.
pub fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The value of `key` in a `--write-env` file.
pub fn env_get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Reads JSON lines from a Unix socket connection until `pred` holds for one.
pub fn read_until(
    reader: &mut BufReader<UnixStream>,
    mut pred: impl FnMut(&Value) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    // Kept across read timeouts: a line may arrive in pieces.
    let mut line = String::new();
    while Instant::now() < deadline {
        match reader.read_line(&mut line) {
            Ok(0) => panic!("stream closed; seen {seen:#?}"),
            Ok(_) if line.ends_with('\n') => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("reading the stream: {e}; seen {seen:#?}"),
        }
        let reply: Value = serde_json::from_str(&std::mem::take(&mut line)).expect("a JSON line");
        let event = reply["ok"].clone();
        seen.push(event.clone());
        if pred(&event) {
            return seen;
        }
    }
    panic!("not seen within {WAIT:?}; seen {seen:#?}");
}

/// An `events` stream of `names`, acknowledged.
pub fn subscribe(d: &Daemon, names: &[&str]) -> BufReader<UnixStream> {
    let stream = UnixStream::connect(&d.sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let request = serde_json::json!({"v": 1, "cmd": "events", "names": names});
    writeln!(writer, "{request}").unwrap();
    let mut reader = BufReader::new(stream);
    let ack = read_until(&mut reader, |_| true);
    // The acknowledgement lists the processes followed: each name given,
    // or the instances of a program given by name.
    let following = ack[0]["following"].as_array().expect("an acknowledgement");
    for name in names {
        assert!(
            following
                .iter()
                .filter_map(Value::as_str)
                .any(|f| f == *name || f.strip_prefix(name).is_some_and(|i| i.starts_with(':'))),
            "{name} not followed: {ack:?}"
        );
    }
    reader
}

/// One backend's results (`minder::register::Applied`): every one `Ok`,
/// for exactly `names`, in order.
pub fn assert_all_ok(applied: &[(String, Result<(), String>)], names: &[&str]) {
    let got: Vec<&str> = applied.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(got, names, "{applied:?}");
    for (name, result) in applied {
        assert!(result.is_ok(), "{name}: {result:?}");
    }
}

/// The error of every result, all the same one.
pub fn the_error(applied: &[(String, Result<(), String>)]) -> String {
    assert!(!applied.is_empty());
    let errors: Vec<String> = applied
        .iter()
        .map(|(n, r)| r.clone().expect_err(n))
        .collect();
    assert!(errors.iter().all(|e| e == &errors[0]), "{errors:?}");
    errors[0].clone()
}

/// One reaper at a time in a test binary: each collects every child of the
/// process (`waitpid(-1)`), so two at once could take each other's.
static ONE_REAPER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `test` on a runtime of its own with a reaper of its own, no other
/// test's running (for tests that call minder's library directly).
pub fn with_reaper<F: std::future::Future<Output = ()>>(
    test: impl FnOnce(std::sync::Arc<minder::process::Reaper>) -> F,
) {
    let _one = ONE_REAPER.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let reaper = minder::process::Reaper::start().expect("reaper");
        test(reaper).await;
    });
}
