//! Streams that have produced no output yet wait in one shared epoll set
//! instead of each in a task of its own.
//!
//! A capture task with its runtime registration costs about 2 KiB; a thousand
//! programs that never write would spend megabytes waiting. Here a stream
//! waits as an entry in one map and one epoll set (`EPOLLONESHOT`, keyed by an
//! id) watched by a single task; its output, a request for it (`tail`,
//! `reopen-logs`, flush) or its removal starts its own capture task, which
//! parks the stream here again after a while without output.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Something that can be started once its stream is wanted.
pub(super) trait Sleeper: Send + 'static {
    /// Starts its task with the read end.
    fn start(self: Box<Self>, fd: OwnedFd);
}

/// Parked streams by id: the read end and what starts it.
type Waiting = HashMap<u64, (OwnedFd, Box<dyn Sleeper>)>;

/// The shared set of waiting streams.
struct Dormant {
    epoll: Epoll,
    waiting: Mutex<Waiting>,
    next_id: AtomicU64,
}

/// Set up on first use, from within the daemon's runtime.
static DORMANT: OnceLock<Arc<Dormant>> = OnceLock::new();

fn dormant() -> io::Result<&'static Arc<Dormant>> {
    if let Some(d) = DORMANT.get() {
        return Ok(d);
    }
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    // The watcher needs its own handle on the epoll set to register it with
    // the runtime; both name the same set.
    let watch_fd = epoll.0.try_clone()?;
    let d = Arc::new(Dormant {
        epoll,
        waiting: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    if DORMANT.set(Arc::clone(&d)).is_ok() {
        // SAFETY: the OwnedFd stays open while the AsyncFd owns it.
        let watched = unsafe { AsyncFd::register_with_interest(watch_fd, Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        tokio::spawn(watch(d, watched));
    }
    DORMANT
        .get()
        .ok_or_else(|| io::Error::other("the dormant set was just made"))
}

impl Dormant {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A new id for a stream, kept for its whole life (it may park again).
pub(super) fn new_id() -> io::Result<u64> {
    Ok(dormant()?.next_id.fetch_add(1, Ordering::Relaxed))
}

/// Parks `sleeper` as `id` until `fd` is readable or [`wake`] is called;
/// gives both back if the epoll set refuses the fd.
pub(super) fn park(
    id: u64,
    fd: OwnedFd,
    sleeper: Box<dyn Sleeper>,
) -> Result<(), (io::Error, OwnedFd, Box<dyn Sleeper>)> {
    let d = match dormant() {
        Ok(d) => d,
        Err(e) => return Err((e, fd, sleeper)),
    };
    let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLONESHOT, id);
    if let Err(e) = d.epoll.add(&fd, event) {
        return Err((e.into(), fd, sleeper));
    }
    d.lock().insert(id, (fd, sleeper));
    Ok(())
}

/// Starts the stream `id` now if it is still parked.
pub(super) fn wake(id: u64) {
    let Some(d) = DORMANT.get() else { return };
    let entry = d.lock().remove(&id);
    if let Some((fd, sleeper)) = entry {
        // It moves to the runtime's own epoll set.
        let _ = d.epoll.delete(&fd);
        sleeper.start(fd);
    }
}

/// Wakes the streams whose pipes became readable.
async fn watch(d: Arc<Dormant>, watched: AsyncFd<OwnedFd>) {
    let mut events = vec![EpollEvent::empty(); 64];
    loop {
        let Ok(mut guard) = watched.readable().await else {
            return;
        };
        let n = match d.epoll.wait(&mut events, EpollTimeout::ZERO) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("waiting for log pipes: {e}");
                return;
            }
        };
        if n < events.len() {
            guard.clear_ready();
        }
        drop(guard);
        for event in &events[..n] {
            wake(event.data());
        }
    }
}
