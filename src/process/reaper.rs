//! The one reaper: woken by SIGCHLD, it collects every ended child with
//! `waitpid(-1, WNOHANG)` and hands the result to whoever spawned it.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::signal::unix::{signal, Signal as SignalStream, SignalKind};
use tokio::sync::oneshot;

use super::ProcessEnd;

/// Receives the end of one spawned process, exactly once.
pub type ExitReceiver = oneshot::Receiver<ProcessEnd>;

/// Routes the exit of every child to its owner. Shared by everything that spawns.
pub struct Reaper {
    /// Owners by PID. A spawner holds this lock across fork + insert, so the
    /// reaper can never collect a PID before its owner is known.
    owners: Mutex<HashMap<i32, oneshot::Sender<ProcessEnd>>>,
}

impl Reaper {
    /// Creates the reaper and starts listening for SIGCHLD.
    ///
    /// Must be called inside the runtime and before the first spawn: the SIGCHLD
    /// handler has to be installed before any child can exit.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper {
            owners: Mutex::new(HashMap::new()),
        });
        tokio::spawn(Arc::clone(&reaper).run(sigchld));
        Ok(reaper)
    }

    /// Locks the owner table; `spawn` holds this across fork so the new PID is
    /// registered before the reaper can see it.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Owners> {
        // A poisoned lock only means a panic elsewhere while holding it; the map is still sound.
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes the exit of `pid` (a child minder already has, after `reexec`,
    /// or the `MAINPID=` of a forking program) to the returned receiver.
    ///
    /// A process that is not minder's child (a descendant whose own parent
    /// still lives) is never collected here: its parent reaps it. Its exit is
    /// then seen through a pidfd and reported as `exited with code 0`, the
    /// status being its parent's to know. Without that, a stop would wait
    /// for it forever and keep signalling its PID, which the system may give
    /// to another process.
    pub fn adopt(self: &Arc<Self>, pid: Pid) -> ExitReceiver {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(pid.as_raw(), tx);
        if !is_child_of_minder(pid) {
            match open_pidfd(pid) {
                Ok(fd) => match watch_readable(fd) {
                    Ok(fd) => {
                        tokio::spawn(Arc::clone(self).watch(pid, fd));
                    }
                    Err(e) => tracing::warn!(
                        pid = pid.as_raw(),
                        "cannot watch the adopted process for its exit: {e}"
                    ),
                },
                // Gone already: the caller notices (it checks after adopting).
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => tracing::warn!(
                    pid = pid.as_raw(),
                    "cannot watch the adopted process for its exit: {e}"
                ),
            }
        }
        rx
    }

    /// Waits until the pidfd of `pid` says it has ended, then reports that
    /// to its owner unless minder itself will collect it.
    async fn watch(self: Arc<Self>, pid: Pid, fd: AsyncFd<OwnedFd>) {
        // A pidfd becomes readable, for good, once its process has exited.
        if let Err(e) = fd.readable().await {
            tracing::warn!(pid = pid.as_raw(), "watching an adopted process: {e}");
            return;
        }
        // Under the lock the reaper holds from waitpid to routing: if the
        // owner is still there, minder has not collected the process.
        let mut owners = self.lock();
        if is_child_of_minder(pid) {
            // A zombie re-parented to minder: the reaper gets its real status.
            return;
        }
        if let Some(owner) = owners.remove(&pid.as_raw()) {
            tracing::debug!(
                pid = pid.as_raw(),
                "adopted process ended; its parent collects its status"
            );
            let _ = owner.send(ProcessEnd::Exited(0));
        }
    }

    async fn run(self: Arc<Self>, mut sigchld: SignalStream) {
        // Children may have ended before the handler existed (e.g. across reexec).
        self.reap_all();
        while sigchld.recv().await.is_some() {
            self.reap_all();
        }
    }

    /// Collects every child that has ended; SIGCHLDs coalesce, so loop until none is left.
    fn reap_all(&self) {
        // Held from each waitpid to the routing of its result, so a pidfd
        // watcher never reports a process this loop has collected but not
        // yet routed (WNOHANG: it never blocks).
        let mut owners = self.lock();
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid only writes the status integer we own.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid == 0 {
                return;
            }
            if pid < 0 {
                match Errno::last() {
                    Errno::EINTR => continue,
                    Errno::ECHILD => return,
                    errno => {
                        tracing::warn!("waitpid failed: {errno}");
                        return;
                    }
                }
            }
            let end = if libc::WIFEXITED(status) {
                ProcessEnd::Exited(libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                ProcessEnd::Signaled(libc::WTERMSIG(status))
            } else {
                // Stopped/continued are not reported without WUNTRACED/WCONTINUED.
                continue;
            };
            route(&mut owners, Pid::from_raw(pid), end);
        }
    }
}

fn route(owners: &mut Owners, pid: Pid, end: ProcessEnd) {
    match owners.remove(&pid.as_raw()) {
        Some(owner) => {
            // The owner may be gone (e.g. removed by reload while stopping); nothing to tell.
            let _ = owner.send(end);
        }
        None => tracing::debug!(pid = pid.as_raw(), "reaped orphaned descendant: {end}"),
    }
}

type Owners = HashMap<i32, oneshot::Sender<ProcessEnd>>;

/// Whether `pid` is minder's child (then `waitpid` reports its end).
fn is_child_of_minder(pid: Pid) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let me = std::process::id().to_string();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .is_some_and(|ppid| ppid.trim() == me)
}

/// `pidfd_open(2)`: a handle on the process itself, not on its number.
fn open_pidfd(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created for us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn watch_readable(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open and names the same pidfd until the
    // AsyncFd owning it is dropped or gives it back with `into_inner`.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))
}
