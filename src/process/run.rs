//! Running a short command to completion (an exec health probe, a binary's
//! `--version`): one output stream captured, bounded in size and time, and
//! the command's whole process group killed if it overruns or the caller
//! gives up waiting.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{send_signal, spawn, Output, ProcessEnd, Reaper, SpawnError, SpawnRequest};

/// How much of the captured stream is kept.
const CAPTURE_BOUND: usize = 4096;

/// Which stream to capture (the other goes to /dev/null).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// Why a command did not run to completion.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// It ran longer than allowed and was killed.
    #[error("timed out")]
    TimedOut,
    /// The reaper dropped it (cannot happen while minder runs).
    #[error("lost track of the process")]
    Lost,
}

/// Runs `request` (its stdout/stderr replaced) and returns how it ended and
/// the first [`CAPTURE_BOUND`] bytes of the captured stream.
pub async fn run_captured(
    mut request: SpawnRequest,
    capture: Capture,
    timeout: Duration,
    reaper: &Reaper,
) -> Result<(ProcessEnd, String), RunError> {
    let (read, write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| SpawnError {
            stage: super::SpawnStage::Stdio,
            errno: Some(e),
            message: format!("pipe: {}", e.desc()),
        })?;
    let (captured, discarded) = (Output::Fd(write.as_raw_fd()), Output::Null);
    (request.stdout, request.stderr) = match capture {
        Capture::Stdout => (captured, discarded),
        Capture::Stderr => (discarded, captured),
    };
    let spawned = spawn(&request, reaper)?;
    drop(write);
    // Whatever happens below (a timeout, or the caller dropping this future),
    // the command's whole group must not outlive it.
    let guard = KillOnDrop(spawned.pid);
    let end = match tokio::time::timeout(timeout, spawned.exit).await {
        Err(_) => return Err(RunError::TimedOut),
        Ok(Err(_)) => return Err(RunError::Lost),
        Ok(Ok(end)) => end,
    };
    drop(guard);
    Ok((end, read_available(read)))
}

/// SIGKILLs a process group when dropped.
struct KillOnDrop(Pid);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // After a normal exit the group is usually empty: ESRCH is fine.
        let _ = send_signal(self.0, Signal::SIGKILL, true);
    }
}

/// Reads what the (non-blocking) pipe holds, up to [`CAPTURE_BOUND`].
fn read_available(fd: OwnedFd) -> String {
    let mut buf = vec![0u8; CAPTURE_BOUND];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&fd, &mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    String::from_utf8_lossy(&buf[..got]).into_owned()
}
