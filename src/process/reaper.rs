//! The one reaper: woken by SIGCHLD, it collects every ended child with
//! `waitpid(-1, WNOHANG)` and hands the result to whoever spawned it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::unistd::Pid;
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
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ProcessEnd>>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map is still sound.
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes the exit of `pid` (a descendant re-parented to minder, e.g. the
    /// `MAINPID=` of a forking program) to the returned receiver.
    pub fn adopt(&self, pid: Pid) -> ExitReceiver {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(pid.as_raw(), tx);
        rx
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
            self.route(Pid::from_raw(pid), end);
        }
    }

    fn route(&self, pid: Pid, end: ProcessEnd) {
        match self.lock().remove(&pid.as_raw()) {
            Some(owner) => {
                // The owner may be gone (e.g. removed by reload while stopping); nothing to tell.
                let _ = owner.send(end);
            }
            None => tracing::debug!(pid = pid.as_raw(), "reaped orphaned descendant: {end}"),
        }
    }
}
