//! The capture task of one stream: it waits on the runtime for the pipe to
//! become readable, lends the read end and the file side to a burst on the
//! blocking pool (`burst`), serves requests between bursts (`tail`,
//! `reopen-logs`, flush), and after [`IDLE_PARK`] without output hands the
//! stream back to the dormant set (`dormant`) and ends.
//!
//! It is separate because it is the only async part of capture, and its
//! future is paid for by every stream that has output: it holds no buffer and
//! no file while idle, and boxes what is rarely needed, so that it stays
//! small (`an_idle_capture_task_is_small`). The actor's side (`pipes`) only
//! queues requests for it; what moves and writes bytes (`burst`, `sink`)
//! never runs on the runtime.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::oneshot;

use super::burst::{BurstEnd, Job};
use super::dormant;
use super::handover;
use super::inherit::{Framer, Recent};
use super::rotating::RotatingFile;
use super::sink::{Common, Follower, Out, Sink};
use super::tail;
use super::types::{Stream, TailReply};
use crate::mailbox::Mailbox;

/// Requests queued per stream.
const REQUEST_QUEUE: usize = 4;

/// A stream without output for this long gives its task up (see `dormant`).
const IDLE_PARK: Duration = Duration::from_secs(10);

/// [`IDLE_PARK`], or in debug builds `MINDER_TEST_IDLE_PARK_MS`, so that the
/// integration tests (which run the debug binary) need not wait 10 s for a
/// stream to park. Only debug builds read the variable: a release build always
/// parks after [`IDLE_PARK`], whatever its environment.
#[cfg(debug_assertions)]
fn idle_park() -> Duration {
    static PARK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *PARK.get_or_init(|| {
        std::env::var("MINDER_TEST_IDLE_PARK_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(IDLE_PARK, Duration::from_millis)
    })
}

/// [`IDLE_PARK`]: release builds have no test knob.
#[cfg(not(debug_assertions))]
fn idle_park() -> Duration {
    IDLE_PARK
}

/// A request to one stream's capture task.
pub(super) enum StreamRequest {
    Tail {
        lines: usize,
        follow: bool,
        reply: oneshot::Sender<Result<TailReply, String>>,
    },
    Reopen {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
}

/// Where a captured stream goes.
pub(super) enum Target {
    /// Its log file (at this path).
    File(Arc<Path>),
    /// minder's own stream of the same name; what `tail` shows is kept here.
    Inherit(Arc<Recent>),
}

/// The task reading one pipe.
pub(super) struct Capture {
    /// The read end, registered with the runtime while the task waits for
    /// it; lent to the blocking pool (unregistered) during a burst.
    pipe: Option<AsyncFd<OwnedFd>>,
    /// The log file, or minder's own stream.
    target: Target,
    /// Settings shared by the process's streams.
    common: Arc<Common>,
    /// The file side, made at the first write (idle streams hold none); lent
    /// to the blocking pool during a write.
    sink: Option<Box<Sink>>,
    requests: Arc<Mailbox<StreamRequest>>,
    followers: Vec<Follower>,
    /// Kept only while the stream is busy; idle streams hold no buffer.
    buf: Vec<u8>,
    stream: Stream,
    /// F_SETPIPE_SZ was tried.
    enlarged: bool,
    /// Its id in the dormant set, where it waits while idle.
    id: u64,
}

impl dormant::Sleeper for Capture {
    fn start(mut self: Box<Self>, fd: OwnedFd) {
        match register(fd) {
            Ok(pipe) => {
                self.pipe = Some(pipe);
                tokio::spawn(self.run());
            }
            Err(e) => tracing::warn!(process = %self.common.name, "watching a log pipe: {e}"),
        }
    }
}

impl Capture {
    /// The capture of `stream` into `target`, known as `id` in the dormant
    /// set; it gets its read end when started.
    pub(super) fn new(stream: Stream, target: Target, common: Arc<Common>, id: u64) -> Capture {
        Capture {
            pipe: None,
            target,
            common,
            sink: None,
            requests: Arc::new(Mailbox::new(REQUEST_QUEUE)),
            followers: Vec::new(),
            buf: Vec::new(),
            stream,
            enlarged: false,
            id,
        }
    }

    /// Its mailbox, for the process's side to send requests to.
    pub(super) fn requests(&self) -> Arc<Mailbox<StreamRequest>> {
        Arc::clone(&self.requests)
    }

    async fn run(mut self) {
        let mut more = false;
        let mut active = Instant::now();
        loop {
            let partial = self.sink.as_ref().and_then(|s| s.partial_deadline());
            // Idle without followers or a held-back line: back to the dormant set.
            self.followers.retain(|f| !f.is_gone());
            let idle = (partial.is_none() && self.followers.is_empty() && !more)
                .then_some(active + idle_park());
            let mut park = false;
            tokio::select! {
                biased;
                request = self.requests.recv() => match request {
                    // Boxed: the rare big futures would otherwise make every
                    // idle capture task as large as its busiest moment.
                    Some(request) => Box::pin(self.on_request(request)).await,
                    // The process left the config: write what is left, close the pipe.
                    None => {
                        Box::pin(self.drain()).await;
                        return;
                    }
                },
                ready = readable(self.pipe.as_ref(), more) => {
                    if ready.is_err() {
                        return;
                    }
                    match Box::pin(self.burst(false)).await {
                        BurstEnd::Empty => more = false,
                        BurstEnd::More => more = true,
                        BurstEnd::Eof => {
                            Box::pin(self.burst(true)).await;
                            return;
                        }
                    }
                }
                _ = timer(partial.or(idle)) => {
                    if partial.is_some() {
                        Box::pin(self.burst(true)).await;
                    } else {
                        park = true;
                    }
                }
            }
            if park {
                return self.park();
            }
            active = Instant::now();
        }
    }

    /// Hands the stream back to the dormant set, freeing the task, its
    /// runtime registration and the file side (reopened at the next output).
    fn park(mut self) {
        let Some(pipe) = self.pipe.take() else { return };
        let fd = pipe.into_inner();
        self.sink = None;
        self.buf = Vec::new();
        let (id, requests) = (self.id, Arc::clone(&self.requests));
        if let Err((e, fd, sleeper)) = dormant::park(id, fd, Box::new(self)) {
            tracing::debug!("parking a log pipe: {e}");
            sleeper.start(fd);
            return;
        }
        // A request that came in meanwhile must not wait for output.
        if requests.pending() {
            dormant::wake(id);
        }
        // Many streams falling idle together (a thousand programs done with
        // their start-up messages) free many small blocks: hand them back.
        static PARKED: AtomicU64 = AtomicU64::new(0);
        if PARKED.fetch_add(1, Ordering::Relaxed) % 64 == 63 {
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only walks the allocator's own free lists.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    /// The sink, made now if this is the first use.
    fn take_sink(&mut self) -> Box<Sink> {
        self.sink.take().unwrap_or_else(|| {
            let out = match &self.target {
                Target::File(path) => {
                    Out::File(RotatingFile::new(path.to_path_buf(), self.common.rotation))
                }
                Target::Inherit(recent) => {
                    Out::Inherit(Framer::new(&self.common, self.stream, Arc::clone(recent)))
                }
            };
            Box::new(Sink::new(&self.common, self.stream, out))
        })
    }

    /// Moves what the pipe holds into the file, on the blocking pool: read
    /// and write alternate there like `cat`, with no hop back to the runtime
    /// per chunk, until the pipe is empty or the burst's budget is used.
    /// With `flush_only`, writes out a held-back partial line and nothing else.
    async fn burst(&mut self, flush_only: bool) -> BurstEnd {
        if flush_only && self.sink.is_none() {
            return BurstEnd::Empty;
        }
        // Unregistered while the blocking pool reads it: otherwise every write
        // of a busy child would wake the runtime thread for nothing.
        let Some(pipe) = self.pipe.take() else {
            return BurstEnd::Eof;
        };
        let mut job = Job::new(
            pipe.into_inner(),
            self.take_sink(),
            std::mem::take(&mut self.buf),
            std::mem::take(&mut self.followers),
            self.enlarged,
        );
        let guard = handover::burst_started();
        let result = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let end = if flush_only {
                job.sink.flush_partial(&mut job.followers);
                BurstEnd::Empty
            } else {
                job.run()
            };
            (job, end)
        })
        .await;
        let Ok((job, end)) = result else {
            // The blocking pool is gone: the runtime is shutting down.
            return BurstEnd::Eof;
        };
        tracing::trace!(
            stream = self.stream.name(),
            moved = job.moved,
            spliced = job.spliced,
            "burst"
        );
        // Registering again reports data that came meanwhile (epoll checks
        // readiness on registration), so no wake-up is lost.
        match register(job.fd) {
            Ok(pipe) => self.pipe = Some(pipe),
            Err(e) => {
                tracing::warn!(stream = self.stream.name(), "watching a log pipe: {e}");
                return BurstEnd::Eof;
            }
        }
        self.sink = Some(job.sink);
        self.followers = job.followers;
        self.enlarged = job.enlarged;
        // Buffers are kept only while the stream goes on: a thousand programs
        // that each wrote a burst once must not pin a buffer each.
        if end == BurstEnd::More {
            self.buf = job.buf;
        } else if let Some(sink) = &mut self.sink {
            sink.release_scratch();
        }
        end
    }

    async fn on_request(&mut self, request: StreamRequest) {
        match request {
            StreamRequest::Tail {
                lines,
                follow,
                reply,
            } => {
                let pending = self
                    .sink
                    .as_ref()
                    .map(|s| s.unwritten())
                    .unwrap_or_default();
                let text = match &self.target {
                    Target::File(path) => {
                        let path = path.to_path_buf();
                        tokio::task::spawn_blocking(move || {
                            tail::last_lines(&path, lines, &pending)
                        })
                        .await
                        .unwrap_or_default()
                    }
                    Target::Inherit(recent) => tail::last_lines_of(recent.with(&pending), lines),
                };
                // Subscribed between bursts: nothing missed, nothing twice.
                let follow = follow.then(|| {
                    let (follower, rx) = Follower::new();
                    self.followers.push(follower);
                    rx
                });
                let _ = reply.send(Ok(TailReply {
                    stream: self.stream,
                    text,
                    follow,
                }));
            }
            StreamRequest::Reopen { reply } => {
                let mut sink = self.take_sink();
                let result = tokio::task::spawn_blocking(move || {
                    let r = sink.reopen();
                    (sink, r)
                })
                .await;
                if let Ok((sink, r)) = result {
                    self.sink = Some(sink);
                    let _ = reply.send(r);
                }
            }
            StreamRequest::Flush { reply } => {
                self.drain().await;
                let _ = reply.send(());
            }
        }
    }

    /// Writes everything the pipe holds now, and a held-back partial line.
    /// Reads without waiting for readiness: the reactor may not have seen the
    /// last writes of a child that just died. Bounded, so a grandchild still
    /// writing cannot keep minder from exiting.
    async fn drain(&mut self) {
        for _ in 0..16 {
            if Box::pin(self.burst(false)).await != BurstEnd::More {
                break;
            }
        }
        Box::pin(self.burst(true)).await;
    }
}

/// Resolves once the pipe may be readable (at once when `more`), clearing
/// tokio's readiness: the burst that follows reads until EAGAIN, and new data
/// after that raises a new edge.
async fn readable(pipe: Option<&AsyncFd<OwnedFd>>, more: bool) -> io::Result<()> {
    let pipe = pipe.ok_or_else(|| io::Error::other("the pipe is gone"))?;
    if more {
        return Ok(());
    }
    pipe.readable().await?.clear_ready();
    Ok(())
}

/// Watches `fd` for readability on the runtime.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open and names the same pipe until the AsyncFd
    // owning it is dropped or gives it back with `into_inner`.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Resolves at `deadline`; never without one. The timer is boxed: it would
/// make every idle task bigger.
async fn timer(deadline: Option<Instant>) {
    match deadline {
        Some(d) => Box::pin(tokio::time::sleep_until(d.into())).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::super::rotating::Rotation;
    use super::*;
    use nix::fcntl::OFlag;

    /// Regression guard for idle memory: thousands of idle capture tasks must
    /// stay small (1000 programs are 2000 of them).
    #[tokio::test]
    async fn an_idle_capture_task_is_small() {
        let (read, _write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let common = Arc::new(Common {
            name: Arc::from("x"),
            rotation: Rotation {
                max_size: 0,
                backups: 0,
            },
            timestamps: false,
            prefix: false,
            stats: Arc::default(),
        });
        let path = Target::File(Arc::from(Path::new("/dev/null")));
        let mut capture = Capture::new(Stream::Stdout, path, common, 0);
        capture.pipe = Some(register(read).unwrap());
        let size = std::mem::size_of_val(&capture.run());
        assert!(size <= 768, "capture future is {size} bytes");
    }
}
