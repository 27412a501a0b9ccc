//! OS processes: how minder starts them (one fork/exec path), how it learns that
//! they ended (one reaper), and how it signals them.

pub mod cgroup;
mod fd;
pub mod ledger;
mod reaper;
mod run;
mod spawn;
pub mod usage;

pub use fd::set_cloexec;
pub use ledger::{ledger_path, recover, Ledger, Leftover};
pub use reaper::{ExitReceiver, Reaper};
pub use run::{run_captured, Capture, RunError};
pub use spawn::{
    child_fd_limit, set_child_fd_limit, set_clone3, spawn, spawn_unconfirmed, Output,
    PendingReport, SpawnError, SpawnRequest, SpawnStage, Spawned, HANDOVER_NOFILE_ENV,
    HANDOVER_STATE_FD_ENV,
};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    /// Exited by itself with this code.
    Exited(i32),
    /// Killed by this signal (a number: real-time signals have no `Signal` variant).
    Signaled(i32),
    /// Killed (SIGKILL) by the kernel's OOM killer, its cgroup says.
    OomKilled {
        /// The program's `memory_max`, if it has one.
        memory_max: Option<u64>,
    },
}

impl ProcessEnd {
    /// The exit code, if the process exited by itself.
    pub fn code(&self) -> Option<i32> {
        match self {
            ProcessEnd::Exited(code) => Some(*code),
            ProcessEnd::Signaled(_) | ProcessEnd::OomKilled { .. } => None,
        }
    }

    /// The name of the signal that killed the process (`"SIGKILL"`), if any.
    pub fn signal_name(&self) -> Option<String> {
        match self {
            ProcessEnd::Exited(_) => None,
            ProcessEnd::Signaled(sig) => Some(signal_name(*sig)),
            ProcessEnd::OomKilled { .. } => Some(signal_name(libc::SIGKILL)),
        }
    }
}

impl std::fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessEnd::Exited(code) => write!(f, "exited with code {code}"),
            ProcessEnd::Signaled(sig) => write!(f, "killed by {}", signal_name(*sig)),
            ProcessEnd::OomKilled { memory_max: None } => f.write_str("killed by the OOM killer"),
            ProcessEnd::OomKilled {
                memory_max: Some(bytes),
            } => write!(
                f,
                "killed by the OOM killer (memory_max {})",
                crate::text::bytes(*bytes)
            ),
        }
    }
}

/// `Ok` for a signal that found its process gone ([`Reaper::signal`]'s
/// ESRCH): it raced us to the exit, which its owner learns from the reaper.
pub fn already_gone(result: nix::Result<()>) -> nix::Result<()> {
    match result {
        Err(nix::errno::Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// `SIGTERM` for 15, `SIGRTMIN+2` style names for real-time signals.
pub fn signal_name(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(known) => known.as_str().to_string(),
        Err(_) if (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&sig) => {
            format!("SIGRTMIN+{}", sig - libc::SIGRTMIN())
        }
        Err(_) => format!("signal {sig}"),
    }
}

/// How many parents up a `MAINPID=` candidate is followed looking for the
/// main process. Real forking programs are a level or two deep; the bound
/// keeps a hostile tree from making minder read /proc without end.
const MAX_MAIN_PID_DEPTH: usize = 64;

/// Whether `candidate` may become the main process of a program whose
/// current main process is `main` (a `MAINPID=` it sent): only a live
/// process of the program's own tree, i.e. `main` or a descendant of it by
/// the parent links in `/proc/PID/status`. minder itself and PID 1 are
/// always refused. `Err` says why, for the log.
///
/// systemd asks the same question of the unit's cgroup, so it also accepts an
/// orphan of the service (re-parented, but still in the cgroup). minder has
/// no cgroup per program: an orphan re-parented to minder (the child
/// subreaper) has lost its link to the tree it came from, and could as well
/// be another program's, so it is refused. A program that forks twice must
/// send `MAINPID=` while the intermediate process still lives. systemd also
/// takes any PID from a sender running as root; minder does not, the program
/// being as untrusted as its `user` allows.
///
/// The answer holds when it is given: the candidate could exit and its PID
/// be reused by an unrelated process. The caller adopts at once after
/// asking, in the same step, and the reaper then holds a pidfd on it, so its
/// exit is noticed even when it is not minder's child, and signals go
/// through that pidfd, never by PID. What remains: the instant between this
/// check and the pidfd being opened; a PID is reused only once the PID
/// space has wrapped around, so it is far shorter than reuse needs, yet not
/// zero.
pub fn check_main_pid(candidate: Pid, main: Pid) -> Result<(), String> {
    let me = nix::unistd::getpid();
    if candidate == me {
        return Err("it is minder itself".to_string());
    }
    if candidate.as_raw() == 1 {
        return Err("it is PID 1 (init)".to_string());
    }
    if candidate == main {
        return Ok(());
    }
    let first = proc_status(candidate).map_err(|e| format!("no such process ({e})"))?;
    if first.tgid != candidate.as_raw() {
        return Err(format!(
            "it is a thread of process {}, not a process",
            first.tgid
        ));
    }
    if first.zombie {
        return Err("it has already exited".to_string());
    }
    let mut status = first;
    for _ in 0..MAX_MAIN_PID_DEPTH {
        let parent = status.ppid;
        if parent == main.as_raw() {
            return Ok(());
        }
        if parent == me.as_raw() {
            return Err(format!(
                "it is not a descendant of the main process {main} (it is minder's \
                 child: another program's, or an orphan of this one)"
            ));
        }
        if parent <= 1 {
            return Err(format!("it is not a descendant of the main process {main}"));
        }
        status = proc_status(Pid::from_raw(parent))
            .map_err(|e| format!("its ancestor {parent} could not be read ({e})"))?;
    }
    Err(format!(
        "the main process {main} is not among its {MAX_MAIN_PID_DEPTH} nearest ancestors"
    ))
}

/// The fields of `/proc/PID/status` that [`check_main_pid`] needs.
struct ProcStatus {
    tgid: i32,
    ppid: i32,
    zombie: bool,
}

fn proc_status(pid: Pid) -> std::io::Result<ProcStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    let number = |name: &str| -> std::io::Result<i32> {
        field(name).and_then(|v| v.parse().ok()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no {name} in /proc/{pid}/status"),
            )
        })
    };
    Ok(ProcStatus {
        tgid: number("Tgid:")?,
        ppid: number("PPid:")?,
        zombie: field("State:").is_some_and(|s| s.starts_with('Z')),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Pid {
        nix::unistd::getpid()
    }

    #[test]
    fn minder_itself_and_init_are_never_a_main_process() {
        let err = check_main_pid(me(), me()).unwrap_err();
        assert!(err.contains("minder itself"), "{err}");
        let err = check_main_pid(Pid::from_raw(1), me()).unwrap_err();
        assert!(err.contains("PID 1"), "{err}");
    }

    #[test]
    fn only_a_descendant_of_the_main_process_is_accepted() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawning sleep");
        let pid = Pid::from_raw(child.id() as i32);
        let grandparent = nix::unistd::getppid();
        // The test process stands for minder here, `sleep` for its child.
        let of_itself = check_main_pid(pid, pid);
        let of_minder_child = check_main_pid(pid, grandparent);
        let upwards = check_main_pid(grandparent, pid);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(of_itself, Ok(()));
        // Its chain reaches minder before the would-be main process: a child
        // (or orphan) of minder belongs to no program by its parent links.
        let err = of_minder_child.unwrap_err();
        assert!(err.contains("minder's child"), "{err}");
        let err = upwards.unwrap_err();
        assert!(err.contains("not a descendant"), "{err}");
    }

    #[test]
    fn a_grandchild_of_the_main_process_is_accepted() {
        use std::io::BufRead;
        // outer sh (the main process) -> inner sh -> sleep, whose PID is printed.
        let mut outer = std::process::Command::new("sh")
            .args(["-c", "sh -c 'sleep 30 & echo $!; wait'"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawning sh");
        let mut line = String::new();
        std::io::BufReader::new(outer.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("reading the PID of sleep");
        let sleep = Pid::from_raw(line.trim().parse().expect("a PID"));
        let main = Pid::from_raw(outer.id() as i32);
        let verdict = check_main_pid(sleep, main);
        // SAFETY: kill(2) on the sleep this test started, still unreaped by its parent.
        unsafe { libc::kill(sleep.as_raw(), libc::SIGKILL) };
        let _ = outer.wait();
        assert_eq!(verdict, Ok(()));
    }

    #[test]
    fn a_process_that_is_gone_is_refused() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawning true");
        let pid = Pid::from_raw(child.id() as i32);
        child.wait().expect("waiting for true");
        let err = check_main_pid(pid, me()).unwrap_err();
        assert!(err.contains("no such process"), "{err}");
    }

    #[test]
    fn a_thread_is_not_a_process() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = done_rx.recv();
        });
        let tid = Pid::from_raw(rx.recv().unwrap());
        let verdict = check_main_pid(tid, nix::unistd::getppid());
        drop(done_tx);
        thread.join().unwrap();
        let err = verdict.unwrap_err();
        assert!(err.contains("thread"), "{err}");
    }
}
