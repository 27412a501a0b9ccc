//! `ctl reexec`: minder replaces its own image (an upgraded binary, say) and
//! keeps its PID, every child, every listening socket and its control socket.
//!
//! Before the exec, the running image checks what could make the new one
//! fail: the binary exists and runs (`BINARY --version`), it understands this
//! image's state format (the version it prints), and the config file on disk
//! is the one in force. Then the supervisor's state (states, PIDs, counters,
//! remaining times, fd numbers) is written as JSON into a memfd whose number
//! goes in `MINDER_REEXEC_FD`; the fds to keep lose close-on-exec; everything
//! else is closed by the exec. The new image reads the state back, adopts the
//! children from the reaper and carries on. If the exec itself fails, nothing
//! was torn down and the old image goes on serving.

use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::config::{self, Config, Defaults, ProgramConfig};
use crate::process::{set_cloexec, ProcessEnd, Reaper};
use crate::supervisor::state::{Health, Machine, State, Why};
use crate::supervisor::{Exec, ProcessStatus, Resume};

/// The environment variable holding the state memfd's number (kept from
/// children by the process layer, which names it).
pub const STATE_FD_ENV: &str = crate::process::HANDOVER_STATE_FD_ENV;

/// The environment variable telling the new image the soft RLIMIT_NOFILE
/// the first one was started with (the new one starts with the raised
/// limit, and children must still get the original).
pub const ORIGINAL_NOFILE_ENV: &str = crate::process::HANDOVER_NOFILE_ENV;

/// The state format this build writes and reads; printed by `--version` so an
/// older image can refuse to hand over to a build that would not understand it.
pub const STATE_VERSION: u32 = 1;

/// What `minder --version` prints: the package version and the state format.
pub const VERSION_TEXT: &str = concat!(env!("CARGO_PKG_VERSION"), " (reexec state 1)");

/// Everything the new image needs to carry on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    /// [`STATE_VERSION`] of the writer.
    pub version: u32,
    /// The config file in force.
    pub config_path: PathBuf,
    /// The listening control socket.
    pub control_fd: RawFd,
    /// The children's notify socket.
    pub notify_fd: RawFd,
    /// Each program's `listen` sockets.
    pub listen: Vec<SavedListen>,
    /// Every process, in config order.
    pub processes: Vec<SavedProcess>,
    /// Both ends of every log pipe, by process (absent from older images:
    /// their processes get new pipes).
    #[serde(default)]
    pub logs: Vec<crate::logs::SavedPipes>,
}

/// A program's bound `listen` sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedListen {
    /// The program.
    pub program: String,
    /// The fds, in `listen` order.
    pub fds: Vec<RawFd>,
}

/// One process: its state and counters, times relative to the save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedProcess {
    /// Process name.
    pub name: String,
    /// Where it is.
    pub phase: SavedPhase,
    /// Automatic restarts.
    pub restarts: u32,
    /// Consecutive failed starts.
    pub failures: u32,
    /// Position in the backoff sequence.
    pub backoff_step: u32,
    /// How the last run ended.
    pub last_end: Option<SavedEnd>,
    /// Why it is where it is.
    pub description: String,
    /// Since when (ms before the save).
    pub changed_ago_ms: u64,
    /// Health was unhealthy (running processes with a check).
    pub unhealthy: bool,
}

/// A process's state without `Instant`s, which mean nothing to another image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SavedPhase {
    /// `stopped`.
    Stopped,
    /// `exited`.
    Exited,
    /// `fatal`.
    Fatal,
    /// `starting`, spawned `started_ago_ms` before the save.
    Starting { pid: i32, started_ago_ms: u64 },
    /// `running`, spawned `started_ago_ms` before the save.
    Running { pid: i32, started_ago_ms: u64 },
    /// `backoff`, retrying `in_ms` after the save.
    Backoff { in_ms: u64 },
}

/// [`ProcessEnd`] in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavedEnd {
    /// Exit code.
    Exited(i32),
    /// Signal number.
    Signaled(i32),
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The saved form of a process, or why it cannot be saved right now (a
/// process between two states is not handed over half-way).
pub fn save(status: &ProcessStatus, now: Instant) -> Result<SavedProcess, String> {
    let ago = |t: Instant| ms(now.saturating_duration_since(t));
    let busy = || {
        format!(
            "{} is {}: try again once it has settled",
            status.name,
            status.state.name()
        )
    };
    if status.retiring.is_some() {
        return Err(format!(
            "{} is in a rolling restart: try again once it is done",
            status.name
        ));
    }
    let phase = match status.state {
        State::Stopped => SavedPhase::Stopped,
        State::Exited => SavedPhase::Exited,
        State::Fatal => SavedPhase::Fatal,
        State::Starting { pid, started } => SavedPhase::Starting {
            pid: pid.as_raw(),
            started_ago_ms: ago(started),
        },
        State::Running { pid, started } => SavedPhase::Running {
            pid: pid.as_raw(),
            started_ago_ms: ago(started),
        },
        State::Backoff { until } => SavedPhase::Backoff {
            in_ms: ms(until.saturating_duration_since(now)),
        },
        State::Spawning | State::Stopping { .. } => return Err(busy()),
    };
    Ok(SavedProcess {
        name: status.name.clone(),
        phase,
        restarts: status.restarts,
        failures: status.failures,
        backoff_step: status.backoff_step,
        last_end: status.last_end.map(|e| match e {
            ProcessEnd::Exited(code) => SavedEnd::Exited(code),
            ProcessEnd::Signaled(sig) => SavedEnd::Signaled(sig),
            // Its description, saved as text, still says it was the OOM killer.
            ProcessEnd::OomKilled { .. } => SavedEnd::Signaled(libc::SIGKILL),
        }),
        description: status.description.to_string(),
        changed_ago_ms: ago(status.changed),
        unhealthy: status.health == Health::Unhealthy,
    })
}

/// The machine of a saved process, times made relative to `now` again.
pub fn restore(saved: &SavedProcess, cfg: &ProgramConfig, now: Instant) -> Machine {
    let before = |ago_ms: u64| {
        now.checked_sub(Duration::from_millis(ago_ms))
            .unwrap_or(now)
    };
    let mut m = Machine::new(before(saved.changed_ago_ms));
    m.state = match saved.phase {
        SavedPhase::Stopped => State::Stopped,
        SavedPhase::Exited => State::Exited,
        SavedPhase::Fatal => State::Fatal,
        SavedPhase::Starting {
            pid,
            started_ago_ms,
        } => State::Starting {
            pid: Pid::from_raw(pid),
            started: before(started_ago_ms),
        },
        SavedPhase::Running {
            pid,
            started_ago_ms,
        } => State::Running {
            pid: Pid::from_raw(pid),
            started: before(started_ago_ms),
        },
        SavedPhase::Backoff { in_ms } => State::Backoff {
            until: now + Duration::from_millis(in_ms),
        },
    };
    m.restarts = saved.restarts;
    m.failures = saved.failures;
    m.backoff_step = saved.backoff_step;
    m.last_end = saved.last_end.map(|e| match e {
        SavedEnd::Exited(code) => ProcessEnd::Exited(code),
        SavedEnd::Signaled(sig) => ProcessEnd::Signaled(sig),
    });
    // Only shown: the new image decides nothing on an old image's words.
    m.description = if saved.description.is_empty() {
        Why::None
    } else {
        Why::Handed(saved.description.clone())
    };
    let running = matches!(m.state, State::Running { .. });
    if cfg.health.is_some() && m.state.pid().is_some() {
        m.health = match (running, saved.unhealthy) {
            (false, _) => Health::Starting,
            (true, true) => Health::Unhealthy,
            (true, false) => Health::Healthy,
        };
    }
    if running && !cfg.watchdog.is_zero() {
        // A fresh interval: the exec may have eaten into the old one.
        m.watchdog_due = Some(now + cfg.watchdog);
    }
    m
}

/// What the supervisor takes back from `saved`, for the programs `config`
/// still has.
pub fn resume(saved: &SavedState, config: &Config) -> Resume {
    let now = tokio::time::Instant::now().into_std();
    let mut machines = std::collections::HashMap::new();
    for process in &saved.processes {
        let program = process.name.split(':').next().unwrap_or_default();
        if let Some(cfg) = config.program(program) {
            machines.insert(process.name.clone(), restore(process, cfg, now));
        }
    }
    Resume {
        machines,
        listen: saved
            .listen
            .iter()
            .map(|l| (l.program.clone(), l.fds.clone()))
            .collect(),
    }
}

/// The supervisor's way to hand over (see [`Exec`]): saves what it gives
/// with the control and notify sockets, tells systemd a reload begins (the
/// new image sends `READY=1` once it runs), and execs.
pub fn executor(control_fd: RawFd, notify_fd: RawFd) -> Exec {
    Box::new(move |binary, handover| {
        let now = tokio::time::Instant::now().into_std();
        let mut processes = Vec::with_capacity(handover.processes.len());
        for status in &handover.processes {
            match save(status, now) {
                Ok(saved) => processes.push(saved),
                Err(why) => return why,
            }
        }
        let listen: Vec<SavedListen> = handover
            .listen
            .into_iter()
            .map(|(program, fds)| SavedListen { program, fds })
            .collect();
        let mut keep = vec![control_fd, notify_fd];
        keep.extend(listen.iter().flat_map(|l| l.fds.iter().copied()));
        keep.extend(handover.logs.iter().flat_map(|p| p.fds()));
        let state = SavedState {
            version: STATE_VERSION,
            config_path: handover.config.path.clone(),
            control_fd,
            notify_fd,
            listen,
            processes,
            logs: handover.logs,
        };
        crate::systemd::reexec_begins();
        let error = exec(binary, &state, &keep);
        let why = format!("exec {}: {error}", binary.display());
        crate::systemd::reexec_failed(&why);
        why
    })
}

/// What `ctl reexec` checks before it asks the supervisor to hand over, off
/// the supervisor's loop: `binary` runs and reads this state format, and the
/// config file is still `current` (the new image reads it as it starts, and
/// must start with what is in force).
pub async fn check(binary: &Path, reaper: &Reaper, current: &Config) -> Result<(), String> {
    check_binary(binary, reaper).await?;
    let path = current.path.clone();
    let on_disk =
        tokio::task::spawn_blocking(move || config::load(&path, &Defaults::for_current_user()))
            .await
            .map_err(|e| format!("reading the config file: {e}"))?;
    match on_disk {
        Ok(on_disk) if on_disk == *current => Ok(()),
        Ok(_) => Err("the config file changed since it was loaded: `ctl reload` first".into()),
        Err(d) => {
            let lines: Vec<String> = d.iter().map(|d| d.to_string()).collect();
            Err(format!("the config file is invalid: {}", lines.join("; ")))
        }
    }
}

/// Checks that `binary` runs and reads this image's state format: it prints
/// its version, which names the state format it speaks.
pub fn check_binary_version(output: &str) -> Result<(), String> {
    let wanted = format!("(reexec state {STATE_VERSION})");
    if output.contains(&wanted) {
        Ok(())
    } else {
        Err(format!(
            "the new binary does not read this version's state {wanted}: its --version says {:?}",
            output.trim()
        ))
    }
}

/// Checks that `binary` is there, runs, and reads this image's state format,
/// by running `binary --version` (minder's own spawn: the reaper collects it).
pub async fn check_binary(binary: &Path, reaper: &crate::process::Reaper) -> Result<(), String> {
    use crate::process::{run_captured, Capture, RunError, SpawnRequest};
    if !binary.is_absolute() {
        return Err(format!("{}: give an absolute path", binary.display()));
    }
    nix::unistd::access(binary, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("{}: {}", binary.display(), e.desc()))?;
    let request =
        SpawnRequest::command(vec![binary.display().to_string(), "--version".to_string()]);
    let timeout = Duration::from_secs(10);
    let (end, stdout) = run_captured(request, Capture::Stdout, timeout, reaper)
        .await
        .map_err(|e| match e {
            RunError::TimedOut => {
                format!("{} --version did not finish within 10s", binary.display())
            }
            e => format!("{} --version: {e}", binary.display()),
        })?;
    if end != ProcessEnd::Exited(0) {
        return Err(format!("{} --version {end}", binary.display()));
    }
    check_binary_version(&stdout)
}

/// Replaces this image with `binary`, keeping `keep` open. Returns only on
/// failure, with everything as it was.
pub fn exec(binary: &Path, state: &SavedState, keep: &[RawFd]) -> io::Error {
    match try_exec(binary, state, keep) {
        Ok(never) => match never {},
        Err(e) => {
            for fd in keep {
                set_cloexec(*fd, true);
            }
            e
        }
    }
}

fn try_exec(
    binary: &Path,
    state: &SavedState,
    keep: &[RawFd],
) -> io::Result<std::convert::Infallible> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    // No close-on-exec: this one is meant to reach the new image.
    let memfd = nix::sys::memfd::memfd_create(STATE_MEMFD_NAME, nix::sys::memfd::MFdFlags::empty())
        .map_err(io::Error::from)?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(&serde_json::to_vec(state).map_err(io::Error::other)?)?;
    file.rewind()?;
    for fd in keep {
        set_cloexec(*fd, false);
    }
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("NUL byte in an argument"));
    let path = cstr(binary.as_os_str().as_bytes())?;
    let mut argv = vec![path.clone()];
    for arg in std::env::args_os().skip(1) {
        argv.push(cstr(arg.as_bytes())?);
    }
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k != STATE_FD_ENV && k != ORIGINAL_NOFILE_ENV {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstr(&kv)?);
        }
    }
    envp.push(cstr(
        format!("{STATE_FD_ENV}={}", file.as_raw_fd()).as_bytes(),
    )?);
    if let Some(soft) = crate::process::child_fd_limit() {
        envp.push(cstr(format!("{ORIGINAL_NOFILE_ENV}={soft}").as_bytes())?);
    }
    let result = nix::unistd::execve(&path, &argv, &envp);
    // Still here: the exec failed. The memfd closes with `file`.
    drop(file);
    Err(io::Error::from(
        result.err().unwrap_or(nix::errno::Errno::EINVAL),
    ))
}

/// The state handed over by the previous image, if this image was started by
/// `reexec`.
///
/// The variable stays in minder's environment (removing it is unsound once
/// a thread may read the environment, and the log file's writer thread may
/// already run): no child sees it, `process::spawn` keeps it from every
/// child, and a later `reexec` replaces it.
pub fn take_state() -> Option<Result<SavedState, String>> {
    let value = std::env::var(STATE_FD_ENV).ok()?;
    Some(read_state(&value))
}

/// The name `try_exec` gives the state memfd; `read_state` takes over only
/// an fd that is such a memfd.
const STATE_MEMFD_NAME: &str = "minder-reexec-state";

fn read_state(fd_text: &str) -> Result<SavedState, String> {
    let fd: RawFd = fd_text
        .parse()
        .map_err(|_| format!("{STATE_FD_ENV}={fd_text:?} is not an fd number"))?;
    // Owned only if it is the state memfd (`/memfd:NAME (deleted)`): a
    // variable set by hand must not make minder take (and close) an fd it
    // uses otherwise.
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("{STATE_FD_ENV}={fd}: {e}"))?;
    if !target
        .to_string_lossy()
        .starts_with(&format!("/memfd:{STATE_MEMFD_NAME}"))
    {
        return Err(format!(
            "{STATE_FD_ENV}={fd} is not the state of a previous image ({})",
            target.display()
        ));
    }
    // SAFETY: the fd is a state memfd, which only `try_exec` makes, just
    // before replacing the image: this one is the previous image's, left
    // open for this image alone, and nothing here owns it. (Once this file
    // closes it, the check above refuses the number.)
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| format!("reading the handed-over state: {e}"))?;
    decode_state(&text)
}

/// The state from the text the previous image wrote (public for the fuzz target).
#[doc(hidden)]
pub fn decode_state(text: &str) -> Result<SavedState, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("the handed-over state is not JSON: {e}"))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(STATE_VERSION) => {}
        other => {
            return Err(format!(
                "handed-over state version {other:?}; this build reads version {STATE_VERSION}"
            ))
        }
    }
    let state: SavedState = serde_json::from_value(value)
        .map_err(|e| format!("the handed-over state is invalid: {e}"))?;
    // Waited for and signalled later: 0 or a negative number would reach a
    // whole process group, or every process.
    for p in &state.processes {
        if let SavedPhase::Starting { pid, .. } | SavedPhase::Running { pid, .. } = p.phase {
            if pid <= 0 {
                return Err(format!(
                    "the handed-over state is invalid: {} has pid {pid}",
                    p.name
                ));
            }
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check_reads_the_state_format() {
        assert!(check_binary_version(&format!("minder {VERSION_TEXT}\n")).is_ok());
        assert!(check_binary_version("minder 0.0.9\n").is_err());
        assert!(check_binary_version("minder 2.0 (reexec state 2)").is_err());
    }

    fn state_in_a_memfd(text: &str) -> String {
        let fd =
            nix::sys::memfd::memfd_create(STATE_MEMFD_NAME, nix::sys::memfd::MFdFlags::empty())
                .expect("memfd");
        let mut file = std::fs::File::from(fd);
        file.write_all(text.as_bytes()).expect("write");
        file.rewind().expect("rewind");
        let raw = file.as_raw_fd();
        std::mem::forget(file); // read_state takes ownership of the fd
        raw.to_string()
    }

    #[test]
    fn unknown_state_versions_are_refused_with_a_clear_error() {
        let err = read_state(&state_in_a_memfd(r#"{"version": 2}"#)).unwrap_err();
        assert!(
            err.contains("version Some(2)") && err.contains("reads version 1"),
            "{err}"
        );
        let err = read_state(&state_in_a_memfd("garbage")).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
        assert!(read_state("nope").is_err());
    }

    #[test]
    fn a_state_fd_that_is_not_the_state_memfd_is_refused_and_left_open() {
        let other = std::fs::File::open("/dev/null").expect("opening /dev/null");
        let err = read_state(&other.as_raw_fd().to_string()).unwrap_err();
        assert!(err.contains("not the state of a previous image"), "{err}");
        // Still open, still ours: not taken over and closed.
        assert!(nix::fcntl::fcntl(&other, nix::fcntl::FcntlArg::F_GETFD).is_ok());
    }

    #[test]
    fn a_handed_over_state_with_a_pid_of_zero_or_less_is_refused() {
        let running = |pid: i32| {
            format!(
                r#"{{"version":1,"config_path":"/etc/minder/minder.toml","control_fd":5,"notify_fd":6,"listen":[],"processes":[{{"name":"web","phase":{{"state":"running","pid":{pid},"started_ago_ms":1500}},"restarts":0,"failures":0,"backoff_step":0,"last_end":null,"description":"","changed_ago_ms":1500,"unhealthy":false}}]}}"#
            )
        };
        assert!(decode_state(&running(42)).is_ok());
        for pid in [0, -1] {
            let err = decode_state(&running(pid)).unwrap_err();
            assert!(err.contains(&format!("web has pid {pid}")), "{err}");
        }
    }

    #[test]
    fn state_round_trips_through_json() {
        let state = SavedState {
            version: STATE_VERSION,
            config_path: "/etc/minder/minder.toml".into(),
            control_fd: 5,
            notify_fd: 6,
            listen: vec![SavedListen {
                program: "web".into(),
                fds: vec![7, 8],
            }],
            processes: vec![SavedProcess {
                name: "web".into(),
                phase: SavedPhase::Running {
                    pid: 42,
                    started_ago_ms: 1500,
                },
                restarts: 3,
                failures: 0,
                backoff_step: 2,
                last_end: Some(SavedEnd::Signaled(9)),
                description: "restarted after: killed by SIGKILL".into(),
                changed_ago_ms: 1500,
                unhealthy: false,
            }],
            logs: vec![crate::logs::SavedPipes {
                name: "web".into(),
                stdout: Some([9, 10]),
                stderr: None,
            }],
        };
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<SavedState>(&text).unwrap(), state);
    }
}
