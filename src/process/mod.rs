//! OS processes: how minder starts them (one fork/exec path), how it learns that
//! they ended (one reaper), and how it signals them.

mod reaper;
mod run;
mod spawn;

pub use reaper::{ExitReceiver, Reaper};
pub use run::{run_captured, Capture, RunError};
pub use spawn::{
    child_fd_limit, set_child_fd_limit, spawn, spawn_unconfirmed, Output, PendingReport,
    SpawnError, SpawnRequest, SpawnStage, Spawned,
};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessEnd {
    /// Exited by itself with this code.
    Exited(i32),
    /// Killed by this signal (a number: real-time signals have no `Signal` variant).
    Signaled(i32),
}

impl ProcessEnd {
    /// The exit code, if the process exited by itself.
    pub fn code(&self) -> Option<i32> {
        match self {
            ProcessEnd::Exited(code) => Some(*code),
            ProcessEnd::Signaled(_) => None,
        }
    }

    /// The name of the signal that killed the process (`"SIGKILL"`), if any.
    pub fn signal_name(&self) -> Option<String> {
        match self {
            ProcessEnd::Exited(_) => None,
            ProcessEnd::Signaled(sig) => Some(signal_name(*sig)),
        }
    }
}

impl std::fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessEnd::Exited(code) => write!(f, "exited with code {code}"),
            ProcessEnd::Signaled(sig) => write!(f, "killed by {}", signal_name(*sig)),
        }
    }
}

/// Sends `sig` to the process, or to its whole process group when `group`
/// (every child is a session leader, so its group id is its PID).
///
/// A process that is already gone (ESRCH) is not an error: it raced us to the
/// exit. A main process adopted through `MAINPID=` may lead no group of its
/// own; then the process itself gets the signal.
pub fn send_signal(pid: Pid, sig: Signal, group: bool) -> nix::Result<()> {
    let result = if group {
        match signal::killpg(pid, sig) {
            Err(nix::errno::Errno::ESRCH) => signal::kill(pid, sig),
            other => other,
        }
    } else {
        signal::kill(pid, sig)
    };
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
