//! The one reaper: woken by SIGCHLD, it finds each ended child with
//! `waitid(WNOHANG | WNOWAIT)`, kills what is left of its process group if
//! asked to, collects it with `waitpid` and hands the result to whoever
//! spawned it.
//!
//! It is also the only way minder signals a process: it holds a pidfd on
//! every process it watches, from the spawn (or adoption) until the exit has
//! been delivered, and signals through it, so a signal never reaches a
//! process that merely got a recycled PID.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::Signal;
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
    /// Owners by PID. A spawner holds this lock across clone + insert, so the
    /// reaper can never collect a PID before its owner is known; the reaper
    /// holds it from each `waitpid` to the removal of the PID's entry, so
    /// while it is held a child in the table is unreaped and its PID (and
    /// process group id) cannot have been given to another process.
    owners: Mutex<Owners>,
}

/// A process the reaper watches, until its exit has been delivered.
pub(crate) struct Watched {
    /// Told the process's end, once.
    owner: oneshot::Sender<ProcessEnd>,
    /// A handle on the process itself, not on its number: signals go through
    /// it. `None` only where the kernel has no pidfds (before Linux 5.3).
    pidfd: Option<OwnedFd>,
    /// minder's own child: only this reaper collects it, so it stays
    /// unreaped while the owner table is locked. An adopted `MAINPID=` whose
    /// parent lives is not: its parent may collect it at any time.
    child: bool,
    /// SIGKILL the group it leads when it has exited, before collecting it
    /// (see [`Reaper::kill_group_at_exit`]).
    kill_group_at_exit: bool,
}

impl Watched {
    /// A child minder has just made, with the pidfd `CLONE_PIDFD` gave.
    pub(crate) fn child(owner: oneshot::Sender<ProcessEnd>, pidfd: Option<OwnedFd>) -> Watched {
        Watched {
            owner,
            pidfd,
            child: true,
            kill_group_at_exit: false,
        }
    }

    /// Sends `sig` to the process alone.
    fn signal_process(&self, pid: Pid, sig: Signal) -> nix::Result<()> {
        match &self.pidfd {
            Some(pidfd) => pidfd_send_signal(pidfd, sig, 0),
            // Without a pidfd the PID is used only where it is known to be
            // the process's: a child, unreaped while the table is locked.
            None if self.child => nix::sys::signal::kill(pid, sig),
            None => Err(Errno::ESRCH),
        }
    }

    /// Sends `sig` to the process group the process leads; ESRCH if it
    /// leads none (an adopted `MAINPID=`, or a child before its `setsid`).
    fn signal_group(&self, pid: Pid, sig: Signal) -> nix::Result<()> {
        if self.child {
            // The leader is unreaped while the table is locked, so its
            // group id is still its own: no other process can lead a group
            // of that number.
            return nix::sys::signal::killpg(pid, sig);
        }
        // A process another parent may collect any time: its group only
        // through its pidfd (Linux 6.9), never by number.
        match &self.pidfd {
            Some(pidfd) => match pidfd_send_signal(pidfd, sig, PIDFD_SIGNAL_PROCESS_GROUP) {
                // A kernel without the flag: the process alone.
                Err(Errno::EINVAL) => Err(Errno::ESRCH),
                other => other,
            },
            None => Err(Errno::ESRCH),
        }
    }
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

    /// Locks the owner table; `spawn` holds this across clone so the new PID is
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
        // Under the lock: a child of minder's cannot be collected (and its
        // PID reused) between the check, the pidfd and the insert.
        let mut owners = self.lock();
        let child = is_child_of_minder(pid);
        let pidfd = match open_pidfd(pid) {
            Ok(fd) => Some(fd),
            // Gone already: the caller notices (it checks after adopting).
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
            Err(e) => {
                tracing::warn!(
                    pid = pid.as_raw(),
                    "cannot open a pidfd on the adopted process: {e}"
                );
                None
            }
        };
        if !child {
            let watcher = pidfd
                .as_ref()
                .map(|fd| fd.try_clone().and_then(watch_readable));
            match watcher {
                Some(Ok(fd)) => {
                    tokio::spawn(Arc::clone(self).watch(pid, fd));
                }
                Some(Err(e)) => tracing::warn!(
                    pid = pid.as_raw(),
                    "cannot watch the adopted process for its exit: {e}"
                ),
                None => {}
            }
        }
        owners.insert(
            pid.as_raw(),
            Watched {
                owner: tx,
                pidfd,
                child,
                kill_group_at_exit: false,
            },
        );
        rx
    }

    /// Sends `sig` to `pid`, or to the process group it leads when `group`
    /// (every child is a session leader, so its group id is its PID); a
    /// process that leads no group (an adopted `MAINPID=`) gets the signal
    /// itself.
    ///
    /// Only a process this reaper watches is signalled, through its pidfd,
    /// or by group id only while the leader is known to be unreaped: a PID
    /// whose exit has been delivered (or that was never minder's) is not
    /// signalled at all, since the system may have given it to another
    /// process. `Err(ESRCH)` then: to the caller, the process is gone (see
    /// [`already_gone`](super::already_gone)).
    pub fn signal(&self, pid: Pid, sig: Signal, group: bool) -> nix::Result<()> {
        // Held across the system calls: the reaper cannot collect a child
        // meanwhile, so its PID stays its own.
        let owners = self.lock();
        let Some(watched) = owners.get(&pid.as_raw()) else {
            return Err(Errno::ESRCH);
        };
        if group {
            match watched.signal_group(pid, sig) {
                Err(Errno::ESRCH) => {}
                other => return other,
            }
        }
        watched.signal_process(pid, sig)
    }

    /// When child `pid` has exited, SIGKILL what is left of the process
    /// group it leads, before collecting it: a stopped program's
    /// descendants must not outlive it. Done here because it is the one
    /// moment that is safe: the exited leader, not yet collected, still
    /// holds its PID, so the group id cannot have been given to another
    /// group; once it is collected, nothing may be sent to that number.
    /// Only for minder's own children (an adopted process is collected by
    /// its parent); a PID not watched is ignored.
    pub fn kill_group_at_exit(&self, pid: Pid) {
        if let Some(watched) = self.lock().get_mut(&pid.as_raw()) {
            watched.kill_group_at_exit = watched.child;
        }
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
        if let Some(watched) = owners.remove(&pid.as_raw()) {
            tracing::debug!(
                pid = pid.as_raw(),
                "adopted process ended; its parent collects its status"
            );
            let _ = watched.owner.send(ProcessEnd::Exited(0));
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
            // Which child has ended, without collecting it yet (WNOWAIT).
            // SAFETY: siginfo_t is plain data for which all zeroes is a valid
            // value; waitid writes only into it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid reads its scalar arguments and writes the
            // siginfo we own, nothing else.
            let found = unsafe {
                libc::waitid(
                    libc::P_ALL,
                    0,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            if found < 0 {
                match Errno::last() {
                    Errno::EINTR => continue,
                    Errno::ECHILD => return,
                    errno => {
                        tracing::warn!("waitid failed: {errno}");
                        return;
                    }
                }
            }
            // SAFETY: waitid succeeded, so si_pid is the field it filled in
            // (0 when no child has ended, with WNOHANG).
            let ended = unsafe { info.si_pid() };
            if ended == 0 {
                return;
            }
            if owners.get(&ended).is_some_and(|w| w.kill_group_at_exit) {
                // The leader is a zombie, not collected: its group id is
                // still its own (see `kill_group_at_exit`).
                match nix::sys::signal::killpg(Pid::from_raw(ended), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => {
                        tracing::warn!(pid = ended, "killing the group of an exited process: {e}")
                    }
                }
            }
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid only writes the status integer we own.
            let pid = unsafe { libc::waitpid(ended, &mut status, libc::WNOHANG) };
            if pid < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            if pid <= 0 {
                // waitid said it has ended: only collecting it elsewhere
                // (nothing does) gets here. The next SIGCHLD looks again.
                tracing::warn!(pid = ended, "collecting an exited child: {}", Errno::last());
                return;
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
    // Removing the entry closes its pidfd: from now on the PID is not
    // signalled.
    match owners.remove(&pid.as_raw()) {
        Some(watched) => {
            // The owner may be gone (e.g. removed by reload while stopping); nothing to tell.
            let _ = watched.owner.send(end);
        }
        None => tracing::debug!(pid = pid.as_raw(), "reaped orphaned descendant: {end}"),
    }
}

pub(crate) type Owners = HashMap<i32, Watched>;

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

/// `pidfd_send_signal(2)` flag: to the process group the pidfd's process
/// leads (Linux 6.9).
pub(super) const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// `pidfd_send_signal(2)`: to the process the pidfd was opened on, even if
/// its PID has since been given to another.
pub(super) fn pidfd_send_signal(
    pidfd: &OwnedFd,
    sig: Signal,
    flags: libc::c_uint,
) -> nix::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the system call reads its four arguments only: an open pidfd
    // borrowed for the call, a signal number, a null siginfo (the kernel
    // fills in one as for kill(2)) and flags; it touches no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `pidfd_open(2)`: a handle on the process itself, not on its number.
pub(crate) fn open_pidfd(pid: Pid) -> std::io::Result<OwnedFd> {
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
