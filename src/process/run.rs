//! Running a short command to completion (an exec health probe, a binary's
//! `--version`): one output stream captured, bounded in size and time, and
//! the command's whole process group killed if it overruns or the caller
//! gives up waiting.

use std::os::fd::AsRawFd;

use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{spawn, Output, ProcessEnd, Reaper, SpawnError, SpawnRequest};

/// How much of the captured output is kept; the rest is read and discarded,
/// so a chatty command never blocks on a full pipe.
const CAPTURE_BOUND: usize = 4096;

/// Which stream to capture (the other goes to /dev/null).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
    /// stdout and stderr together, as the command interleaves them.
    Both,
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
/// the first `CAPTURE_BOUND` bytes of the captured output.
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
        Capture::Both => (captured, captured),
    };
    let spawned = spawn(&request, reaper)?;
    drop(write);
    // Whatever happens below (a timeout, or the caller dropping this future),
    // the command's whole group must not outlive it.
    reaper.kill_group_at_exit(spawned.pid);
    let guard = KillOnDrop(spawned.pid, reaper);
    let mut pipe = pipe::Receiver::from_owned_fd(read).ok();
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let exit = spawned.exit;
    tokio::pin!(exit);
    let waited = tokio::time::timeout(timeout, async {
        loop {
            tokio::select! {
                end = &mut exit => return end,
                read = read_some(pipe.as_mut(), &mut chunk) => match read {
                    Some(n) => keep(&mut kept, &chunk[..n]),
                    // EOF or an error: only the exit is left to wait for.
                    None => pipe = None,
                },
            }
        }
    })
    .await;
    let end = match waited {
        Err(_) => return Err(RunError::TimedOut),
        Ok(Err(_)) => return Err(RunError::Lost),
        Ok(Ok(end)) => end,
    };
    drop(guard);
    // What it wrote just before exiting; a grandchild that keeps the pipe
    // open is not waited for.
    while let Some(p) = &pipe {
        match p.try_read(&mut chunk) {
            Ok(n) if n > 0 => keep(&mut kept, &chunk[..n]),
            _ => break,
        }
    }
    Ok((end, String::from_utf8_lossy(&kept).into_owned()))
}

/// Reads a chunk from the pipe; `None` at EOF or on error, pending forever without a pipe.
async fn read_some(pipe: Option<&mut pipe::Receiver>, chunk: &mut [u8]) -> Option<usize> {
    match pipe {
        Some(p) => match p.read(chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

/// Appends to `kept` up to [`CAPTURE_BOUND`] bytes in all.
fn keep(kept: &mut Vec<u8>, data: &[u8]) {
    let room = CAPTURE_BOUND.saturating_sub(kept.len());
    kept.extend_from_slice(&data[..data.len().min(room)]);
}

/// SIGKILLs a process group when dropped, if its leader has not been
/// collected yet.
struct KillOnDrop<'a>(Pid, &'a Reaper);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        // After an exit the reaper has already killed the group as it
        // collected the leader (`kill_group_at_exit`), and no longer signals
        // the PID (another process may have it by now): ESRCH, nothing sent.
        let _ = self.1.signal(self.0, Signal::SIGKILL, true);
    }
}
