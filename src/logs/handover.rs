//! Log pipes across `ctl reexec`: both ends of every pipe survive the exec
//! (they are plain fds), and the new image adopts them instead of making new
//! ones, so a child never notices and no byte in a pipe is lost.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One process's pipes in the reexec state: `[read, write]` per stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPipes {
    /// The process.
    pub name: String,
    /// The stdout pipe (stderr too when merged), if captured.
    pub stdout: Option<[RawFd; 2]>,
    /// The stderr pipe, if captured separately.
    pub stderr: Option<[RawFd; 2]>,
}

impl SavedPipes {
    /// Every fd, for clearing close-on-exec.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.stdout
            .iter()
            .chain(self.stderr.iter())
            .flatten()
            .copied()
    }
}

/// Pipes handed over by the previous image, by process, until adopted.
static ADOPTABLE: Mutex<Option<HashMap<String, SavedPipes>>> = Mutex::new(None);

/// Bursts running on the blocking pool: the exec must not cut one short
/// between its read and its write.
static BURSTS: AtomicUsize = AtomicUsize::new(0);

/// Makes the previous image's pipes available to the processes of the same name.
pub fn offer(saved: Vec<SavedPipes>) {
    let map = saved.into_iter().map(|p| (p.name.clone(), p)).collect();
    *ADOPTABLE.lock().unwrap_or_else(|e| e.into_inner()) = Some(map);
}

/// The pipes of `name` from the previous image, owned from now on.
pub(super) fn take(name: &str) -> Option<[Option<[OwnedFd; 2]>; 2]> {
    let saved = ADOPTABLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()?
        .remove(name)?;
    let own = |pair: Option<[RawFd; 2]>| {
        pair.map(|fds| {
            fds.map(|fd| {
                crate::process::set_cloexec(fd, true);
                // SAFETY: the previous image left this fd open for us alone.
                unsafe { OwnedFd::from_raw_fd(fd) }
            })
        })
    };
    Some([own(saved.stdout), own(saved.stderr)])
}

/// Counts a burst in; the guard counts it out when dropped.
pub(super) fn burst_started() -> BurstGuard {
    BURSTS.fetch_add(1, Ordering::AcqRel);
    BurstGuard
}

/// Held while a burst runs.
pub(super) struct BurstGuard;

impl Drop for BurstGuard {
    fn drop(&mut self) {
        BURSTS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits (at most `timeout`) until no burst is moving bytes, then for what
/// inherited streams queued to be written (in what time is left); called on
/// the runtime thread right before the exec, when no new burst can start.
pub fn quiesce(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while BURSTS.load(Ordering::Acquire) > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // The writer threads of inherited streams end with the exec: what they
    // hold goes out first, unless minder's stdout or stderr is not read (a
    // stalled reader must not keep minder from upgrading).
    super::inherit::flush_inherited(deadline.saturating_duration_since(Instant::now()));
    true
}
