//! Capturing a process's stdout and stderr: one pipe per stream, one task per
//! pipe, the file writes on tokio's blocking pool.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};

use super::dormant;
use super::handover;
use super::rotating::{RotatingFile, Rotation};
use super::stamp::Stamper;
use super::tail;
use crate::config::{LogDest, LogsConfig, ProcessSpec};
use crate::mailbox::{Mailbox, SendError};
use crate::process::Output;

/// First read buffer of a stream: a line or two needs no more, and a small
/// buffer comes from the heap, not a fresh mmap.
const SMALL_READ: usize = 16 * 1024;

/// Read buffer once a stream is busy: one file write per this many bytes. As
/// `cat` does: small enough to stay in the CPU cache between read and write,
/// and under glibc's mmap threshold (128 KiB), so a new one per burst is
/// reused heap memory, not a fresh mapping to fault in.
const BIG_READ: usize = 124 * 1024;

/// Most bytes one splice step moves, and the grid its file writes end on
/// (see [`Job::splice`]). Measured (bench/logs.py, docs/benchmarks.md):
/// 256 KiB steps were 3 % faster at best, but in long spells 3x slower
/// (copying into 256 KiB page-cache folios; 128 KiB ones were not hit).
const SPLICE_CHUNK: usize = 128 * 1024;

/// Pipe size asked for (F_SETPIPE_SZ) once a stream fills the default 64 KiB:
/// room for the next chunk while one is being written, small enough that
/// what the child wrote is still in the CPU cache when minder moves it (with
/// child and minder on one CPU, 1 MiB was 5-10 % slower). The default
/// `/proc/sys/fs/pipe-max-size` allows it without privileges.
const BUSY_PIPE_SIZE: i32 = 2 * SPLICE_CHUNK as i32;

/// Chunks queued per `tail -f` follower; a slower follower skips output
/// (and is told how much) rather than slowing the capture down.
const FOLLOW_QUEUE: usize = 8;

/// Requests queued per stream.
const REQUEST_QUEUE: usize = 4;

/// A failing log file is reported at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counters of one process's capture, read by `status`.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Bytes written to the log files, by stream (stdout, stderr).
    written: [AtomicU64; 2],
    /// Bytes lost because the log file could not be written, by stream.
    dropped: [AtomicU64; 2],
    /// `[read, write]` of the stdout and stderr pipes once made (stable for
    /// the process's life), for handing them over on `reexec`.
    fds: std::sync::OnceLock<[Option<[RawFd; 2]>; 2]>,
}

impl LogStats {
    /// The pipes to keep across `reexec`, if any were made.
    pub fn saved_pipes(&self, name: &str) -> Option<super::SavedPipes> {
        let [stdout, stderr] = *self.fds.get()?;
        Some(super::SavedPipes {
            name: name.to_string(),
            stdout,
            stderr,
        })
    }

    /// Output bytes lost because the log file could not be written.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// Bytes of `stream` written to its log file and bytes dropped.
    pub fn bytes(&self, stream: Stream) -> (u64, u64) {
        let i = stream as usize;
        (
            self.written[i].load(Ordering::Relaxed),
            self.dropped[i].load(Ordering::Relaxed),
        )
    }
}

/// Which of a process's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// fd 1.
    Stdout = 0,
    /// fd 2.
    Stderr = 1,
}

impl Stream {
    /// `"stdout"` or `"stderr"`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A request about a process's logs, sent through its actor.
#[derive(Debug)]
pub enum LogRequest {
    /// The last `lines` lines of a stream and, with `follow`, what comes next.
    Tail {
        /// Which stream.
        stream: Stream,
        /// How many lines of history.
        lines: usize,
        /// Keep streaming new output.
        follow: bool,
        /// The answer, or why there is none.
        reply: oneshot::Sender<Result<TailReply, String>>,
    },
    /// Reopen the log files (after an external logrotate moved them).
    Reopen {
        /// Each file that could not be reopened, with the reason.
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Write out everything the pipes hold now (before minder exits).
    Flush {
        /// Answered once done.
        reply: oneshot::Sender<()>,
    },
}

/// What `tail` gets back from a capture.
#[derive(Debug)]
pub struct TailReply {
    /// The stream actually read (`stdout` when stderr is merged into it).
    pub stream: Stream,
    /// The last lines, from the file and what is not written yet.
    pub text: Vec<u8>,
    /// New output as it comes (with `follow`); ends when the process is removed.
    pub follow: Option<mpsc::Receiver<TailEvent>>,
}

/// One message to a `tail -f` follower.
#[derive(Debug, Clone)]
pub enum TailEvent {
    /// Output, as written to the file.
    Data(Arc<[u8]>),
    /// This many bytes were skipped because the follower was too slow.
    Skipped(u64),
}

/// A process's output capture: created with its actor, the pipes and their
/// tasks at the first spawn.
///
/// The pipes are kept for the process's whole life in minder (both ends),
/// across restarts of its child: a grandchild that outlives its parent keeps
/// logging into the same file, there is never a second reader racing the
/// first over one file, and each stream is a plain pair of fds that
/// `reexec` can hand over. minder holding the write end means the reader
/// never sees EOF while the process is supervised; when the process leaves
/// the config the capture drains what is left and closes the pipe.
pub struct ProcessLogs {
    name: Arc<str>,
    stdout: LogDest,
    stderr: LogDest,
    rotation: Rotation,
    timestamps: bool,
    stats: Arc<LogStats>,
    pipes: Option<Pipes>,
}

/// The pipes of a process once created; `None` for a discarded stream.
struct Pipes {
    stdout: Option<Pipe>,
    stderr: Option<Pipe>,
}

/// minder's side of one pipe: the write end handed to each child, and the
/// way to its capture task (which owns the read end).
struct Pipe {
    write: OwnedFd,
    /// The read end's number (the end itself is with the capture).
    read_fd: RawFd,
    requests: Arc<Mailbox<StreamRequest>>,
    /// Its id in the dormant set until its task starts.
    id: u64,
}

impl Pipe {
    /// Queues a request and makes sure the capture task runs to see it.
    fn send(&self, request: StreamRequest) -> Result<(), StreamRequest> {
        self.requests.send(request).map_err(|e| match e {
            SendError::Full(r) | SendError::Closed(r) => r,
        })?;
        dormant::wake(self.id);
        Ok(())
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // The process is gone: its capture drains the pipe and ends.
        self.requests.close();
        dormant::wake(self.id);
    }
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

impl ProcessLogs {
    /// The capture of `spec`'s output, configured by `cfg`; nothing is opened yet.
    pub fn new(spec: &ProcessSpec, cfg: &LogsConfig) -> ProcessLogs {
        ProcessLogs {
            name: Arc::from(spec.name.as_str()),
            stdout: spec.stdout_log.clone(),
            stderr: spec.stderr_log.clone(),
            rotation: Rotation {
                max_size: cfg.max_size,
                backups: cfg.backups,
            },
            timestamps: cfg.timestamps,
            stats: Arc::default(),
            pipes: None,
        }
    }

    /// The counters `status` shows.
    pub fn stats(&self) -> Arc<LogStats> {
        Arc::clone(&self.stats)
    }

    /// Where the child's stdout and stderr go; creates the pipes on first use.
    pub fn outputs(&mut self) -> io::Result<(Output, Output)> {
        let pipes = self.pipes()?;
        let fd = |p: &Option<Pipe>| p.as_ref().map(|p| Output::Fd(p.write.as_raw_fd()));
        let stdout = fd(&pipes.stdout).unwrap_or(Output::Null);
        let stderr = match fd(&pipes.stderr) {
            Some(out) => out,
            None if self.stderr == LogDest::Stdout => stdout,
            None => Output::Null,
        };
        Ok((stdout, stderr))
    }

    fn pipes(&mut self) -> io::Result<&Pipes> {
        if self.pipes.is_none() {
            let common = Arc::new(Common {
                name: Arc::clone(&self.name),
                rotation: self.rotation,
                timestamps: self.timestamps,
                stats: Arc::clone(&self.stats),
            });
            let [old_out, old_err] = handover::take(&self.name).unwrap_or([None, None]);
            let stdout = start_pipe(Stream::Stdout, &self.stdout, &common, old_out)?;
            let stderr = start_pipe(Stream::Stderr, &self.stderr, &common, old_err)?;
            let raw = |p: &Option<Pipe>| p.as_ref().map(|p| [p.read_fd, p.write.as_raw_fd()]);
            let _ = self.stats.fds.set([raw(&stdout), raw(&stderr)]);
            self.pipes = Some(Pipes { stdout, stderr });
        }
        self.pipes
            .as_ref()
            .ok_or_else(|| io::Error::other("pipes were just created"))
    }

    /// Carries out a request; answers it (possibly later, from another task).
    pub fn handle(&mut self, request: LogRequest) {
        match request {
            LogRequest::Tail {
                stream,
                lines,
                follow,
                reply,
            } => {
                let name = Arc::clone(&self.name);
                let pipe = match self.pipe_of(stream) {
                    Ok(pipe) => pipe,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                let sent = pipe.send(StreamRequest::Tail {
                    lines,
                    follow,
                    reply,
                });
                if let Err(StreamRequest::Tail { reply, .. }) = sent {
                    let _ = reply.send(Err(format!("{name}: busy, try again")));
                }
            }
            LogRequest::Reopen { reply } => {
                let waits = self.broadcast(|| {
                    let (tx, rx) = oneshot::channel();
                    (StreamRequest::Reopen { reply: tx }, rx)
                });
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    for rx in waits {
                        if let Ok(Err(e)) = rx.await {
                            errors.push(e);
                        }
                    }
                    let _ = reply.send(errors);
                });
            }
            LogRequest::Flush { reply } => {
                let waits = self.broadcast(|| {
                    let (tx, rx) = oneshot::channel();
                    (StreamRequest::Flush { reply: tx }, rx)
                });
                tokio::spawn(async move {
                    for rx in waits {
                        let _ = rx.await;
                    }
                    let _ = reply.send(());
                });
            }
        }
    }

    /// The pipe carrying `stream` (stderr merged into stdout is the stdout pipe).
    fn pipe_of(&mut self, stream: Stream) -> Result<&Pipe, String> {
        let name = Arc::clone(&self.name);
        let merged = stream == Stream::Stderr && self.stderr == LogDest::Stdout;
        let pipes = self
            .pipes()
            .map_err(|e| format!("{name}: creating the log pipes: {e}"))?;
        let pipe = match (stream, merged) {
            (Stream::Stdout, _) | (Stream::Stderr, true) => pipes.stdout.as_ref(),
            (Stream::Stderr, false) => pipes.stderr.as_ref(),
        };
        pipe.ok_or_else(|| {
            format!(
                "{name}: {} is not captured (logs.{} = \"none\")",
                stream.name(),
                stream.name()
            )
        })
    }

    /// Sends one request made by `make` to each stream's capture; returns the
    /// receivers of the answers.
    fn broadcast<T>(
        &self,
        make: impl Fn() -> (StreamRequest, oneshot::Receiver<T>),
    ) -> Vec<oneshot::Receiver<T>> {
        let Some(pipes) = &self.pipes else {
            return Vec::new();
        };
        let mut waits = Vec::new();
        for pipe in [&pipes.stdout, &pipes.stderr].into_iter().flatten() {
            let (request, rx) = make();
            // A full queue means a request of the same kind is pending anyway.
            if pipe.send(request).is_ok() {
                waits.push(rx);
            }
        }
        waits
    }
}

/// Creates the pipe of one stream and parks its capture until it is needed.
fn start_pipe(
    stream: Stream,
    dest: &LogDest,
    common: &Arc<Common>,
    adopted: Option<[OwnedFd; 2]>,
) -> io::Result<Option<Pipe>> {
    let LogDest::File(path) = dest else {
        return Ok(None);
    };
    // After `reexec`, the very pipe the child still writes into.
    let (read, write) = match adopted {
        Some([read, write]) => (read, write),
        None => nix::unistd::pipe2(OFlag::O_CLOEXEC)?,
    };
    let read_fd = read.as_raw_fd();
    let id = dormant::new_id()?;
    // Only minder's end is non-blocking: the child's writes block as usual.
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let requests = Arc::new(Mailbox::new(REQUEST_QUEUE));
    let capture = Capture {
        pipe: None,
        path: Arc::clone(path),
        common: Arc::clone(common),
        sink: None,
        requests: Arc::clone(&requests),
        followers: Vec::new(),
        buf: Vec::new(),
        stream,
        enlarged: false,
        id,
    };
    // Its task starts with its first output (or first request).
    if let Err((e, _, _)) = dormant::park(id, read, Box::new(capture)) {
        return Err(e);
    }
    Ok(Some(Pipe {
        write,
        read_fd,
        requests,
        id,
    }))
}

/// A request to one stream's capture task.
enum StreamRequest {
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

/// One `tail -f` client.
struct Follower {
    tx: mpsc::Sender<TailEvent>,
    /// Bytes not delivered because its queue was full.
    skipped: u64,
}

/// The task reading one pipe.
struct Capture {
    /// The read end, registered with the runtime while the task waits for
    /// it; lent to the blocking pool (unregistered) during a burst.
    pipe: Option<AsyncFd<OwnedFd>>,
    /// The log file's path.
    path: Arc<std::path::Path>,
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

/// How a burst of reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BurstEnd {
    /// The pipe is empty: wait for it to become readable.
    Empty,
    /// The burst used its budget with data still waiting: go on after
    /// serving requests, without waiting for readiness.
    More,
    /// Every write end is closed.
    Eof,
}

/// How long a burst that has moved much waits for more before it ends.
const BUSY_WAIT: Duration = Duration::from_millis(2);

/// A stream without output for this long gives its task up (see `dormant`).
const IDLE_PARK: Duration = Duration::from_secs(10);

/// [`IDLE_PARK`], or `MINDER_TEST_IDLE_PARK_MS` so tests need not wait 10 s.
fn idle_park() -> Duration {
    static PARK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *PARK.get_or_init(|| {
        std::env::var("MINDER_TEST_IDLE_PARK_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(IDLE_PARK, Duration::from_millis)
    })
}

/// Most bytes one burst moves before the task looks at its requests again.
const BURST_BYTES: usize = 64 << 20;

/// Most time one burst takes before the task looks at its requests again.
const BURST_TIME: Duration = Duration::from_millis(50);

impl Capture {
    async fn run(mut self) {
        let mut more = false;
        let mut active = Instant::now();
        loop {
            let partial = self
                .sink
                .as_ref()
                .and_then(|s| s.stamper.as_ref())
                .and_then(Stamper::partial_deadline);
            // Idle without followers or a held-back line: back to the dormant set.
            self.followers.retain(|f| !f.tx.is_closed());
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
            let common = &self.common;
            Box::new(Sink {
                name: Arc::clone(&common.name),
                stream: self.stream,
                file: RotatingFile::new(self.path.to_path_buf(), common.rotation),
                stamper: common.timestamps.then(Stamper::default),
                stats: Arc::clone(&common.stats),
                failing: None,
                scratch: Vec::new(),
            })
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
        let fd = pipe.into_inner();
        let mut job = Job {
            fd,
            sink: self.take_sink(),
            buf: std::mem::take(&mut self.buf),
            followers: std::mem::take(&mut self.followers),
            enlarged: self.enlarged,
            stream: self.stream,
            moved: 0,
            spliced: 0,
        };
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
            sink.scratch = Vec::new();
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
                let path = self.path.to_path_buf();
                let pending = self
                    .sink
                    .as_ref()
                    .map(|s| s.unwritten())
                    .unwrap_or_default();
                let text =
                    tokio::task::spawn_blocking(move || tail::last_lines(&path, lines, &pending))
                        .await
                        .unwrap_or_default();
                // Subscribed between bursts: nothing missed, nothing twice.
                let follow = follow.then(|| {
                    let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
                    self.followers.push(Follower { tx, skipped: 0 });
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
                    let r = sink.file.reopen().map_err(|e| {
                        let path = sink.file.path().display();
                        match super::safe::refusal(&e) {
                            Some(reason) => {
                                format!("{}: refusing to write {path}: {reason}", sink.name)
                            }
                            None => format!("{}: reopening {path}: {e}", sink.name),
                        }
                    });
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

/// How one splice step of a burst went.
enum Spliced {
    /// This many bytes are in the file.
    Moved(usize),
    /// The burst ends: the pipe is empty or closed.
    End(BurstEnd),
    /// The file cannot take output by splicing now (see
    /// [`RotatingFile::splice_room`]): read and write this chunk.
    NotNow,
    /// Splicing failed (the read path takes over for the burst); this many
    /// bytes were moved anyway, through `write`.
    Failed(usize),
}

/// A private pipe of a blocking-pool thread, between a child's pipe and a
/// log file when splicing. Empty between splice steps, so any capture that
/// runs on the thread can use it; closed when the thread ends.
struct Relay {
    read: OwnedFd,
    write: OwnedFd,
}

impl Relay {
    fn new() -> io::Result<Relay> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // Room for a whole chunk (the default 64 KiB holds half of one);
        // best effort, like the capture pipes.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(SPLICE_CHUNK as i32));
        Ok(Relay { read, write })
    }
}

thread_local! {
    static RELAY: std::cell::RefCell<Option<Relay>> = const { std::cell::RefCell::new(None) };
}

/// How the relay was emptied into the file.
enum Emptied {
    /// All spliced into the file.
    Spliced,
    /// Splicing failed; the rest went through `write`.
    Written,
    /// Bytes could not be read back out of it (never seen).
    Stuck,
}

/// What a burst on the blocking pool works with, lent by the capture task.
struct Job {
    fd: OwnedFd,
    sink: Box<Sink>,
    buf: Vec<u8>,
    followers: Vec<Follower>,
    enlarged: bool,
    stream: Stream,
    /// Bytes moved in this burst.
    moved: usize,
    /// Of which spliced (the rest read and written).
    spliced: usize,
}

impl Job {
    /// Moves output into the file until the pipe is empty, closed, or the
    /// budget is used: spliced when nothing needs to see the bytes, else (and
    /// near the rotation bound) read and written.
    fn run(&mut self) -> BurstEnd {
        let started = Instant::now();
        // Timestamps and `tail -f` followers need the bytes in userspace.
        let mut splicing = self.sink.stamper.is_none() && self.followers.is_empty();
        loop {
            let step = if splicing {
                self.splice()
            } else {
                Spliced::NotNow
            };
            let (n, end) = match step {
                Spliced::Moved(n) => {
                    self.spliced += n;
                    (n, None)
                }
                Spliced::End(end) => (0, Some(end)),
                Spliced::Failed(n) => {
                    // The read path takes over for this burst (and drops and
                    // counts what the file refuses).
                    splicing = false;
                    (n, None)
                }
                Spliced::NotNow => {
                    let (n, end) = self.read();
                    if n > 0 {
                        self.sink.write(&self.buf[..n], &mut self.followers);
                    }
                    (n, end)
                }
            };
            self.moved += n;
            if let Some(end) = end {
                return end;
            }
            if self.moved >= BURST_BYTES || started.elapsed() >= BURST_TIME {
                return BurstEnd::More;
            }
        }
    }

    /// Moves up to [`SPLICE_CHUNK`] bytes from the pipe into the file without
    /// copying them through userspace: spliced into this thread's relay pipe
    /// (page references move, the child's pipe is locked only for that), then
    /// from the relay into the file. Splicing straight from the child's pipe
    /// would hold the pipe's lock during the file write, so the child could
    /// not write meanwhile.
    fn splice(&mut self) -> Spliced {
        let room = match self.sink.file.splice_room() {
            Ok(Some(room)) => room,
            Ok(None) => return Spliced::NotNow,
            Err(_) => return Spliced::Failed(0),
        };
        // Up to the next multiple of SPLICE_CHUNK in the file: the page
        // cache then gets whole, aligned folios of that size (splicing off
        // that grid, e.g. after a rotation, cost a tenth more CPU).
        let to_grid = SPLICE_CHUNK - (self.sink.file.size() % SPLICE_CHUNK as u64) as usize;
        let len = usize::try_from(room).map_or(to_grid, |room| room.min(to_grid));
        RELAY.with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Relay::new()
                    .inspect_err(|e| tracing::debug!("creating a relay pipe: {e}"))
                    .ok();
            }
            let Some(relay) = slot.as_ref() else {
                return Spliced::Failed(0);
            };
            let n = match self.fill_relay(relay, len) {
                Ok(n) => n,
                Err(end) => return end,
            };
            if n >= SMALL_READ && !self.enlarged {
                self.enlarged = true;
                enlarge_pipe(&self.fd);
            }
            match self.empty_relay(relay, n) {
                Emptied::Spliced => Spliced::Moved(n),
                Emptied::Written => Spliced::Failed(n),
                Emptied::Stuck => {
                    // Never reused: its leftovers must not reach another log.
                    *slot = None;
                    Spliced::Failed(n)
                }
            }
        })
    }

    /// Moves up to `len` bytes from the pipe into the (empty) relay.
    fn fill_relay(&mut self, relay: &Relay, len: usize) -> Result<usize, Spliced> {
        use nix::errno::Errno;
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            match splice(&self.fd, None, &relay.write, None, len, flags) {
                Ok(0) => return Err(Spliced::End(BurstEnd::Eof)),
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => {}
                // As in `read`: a busy stream usually has more on its way.
                Err(Errno::EAGAIN) if self.moved >= BIG_READ => {
                    if !self.wait_briefly() {
                        return Err(Spliced::End(BurstEnd::Empty));
                    }
                }
                Err(Errno::EAGAIN) => return Err(Spliced::End(BurstEnd::Empty)),
                Err(e) => {
                    tracing::debug!(stream = self.stream.name(), "splicing a log pipe: {e}");
                    return Err(Spliced::Failed(0));
                }
            }
        }
    }

    /// Splices the `n` bytes in the relay into the file. If the file fails,
    /// what is left goes through `write` (which drops and counts what the
    /// file refuses), so the relay is empty again in any case.
    fn empty_relay(&mut self, relay: &Relay, n: usize) -> Emptied {
        let mut left = n;
        let mut failed = false;
        while left > 0 {
            match self.sink.file.splice_from(relay.read.as_fd(), left) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(k) => {
                    self.sink.count_written(k);
                    left -= k;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(stream = self.stream.name(), "splicing into the log: {e}");
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            self.sink.wrote();
            return Emptied::Spliced;
        }
        if self.buf.len() < BIG_READ {
            self.buf.resize(BIG_READ, 0);
        }
        while left > 0 {
            let want = left.min(self.buf.len());
            match nix::unistd::read(&relay.read, &mut self.buf[..want]) {
                Ok(k) if k > 0 => {
                    self.sink.write(&self.buf[..k], &mut self.followers);
                    left -= k;
                }
                Err(nix::errno::Errno::EINTR) => {}
                _ => {
                    // Cannot happen with a pipe holding `left` bytes; if it
                    // does, those bytes are lost.
                    self.sink.lost(left);
                    return Emptied::Stuck;
                }
            }
        }
        Emptied::Written
    }

    /// Fills the buffer from the pipe; the end, if reading stopped for a
    /// reason other than a full buffer.
    fn read(&mut self) -> (usize, Option<BurstEnd>) {
        if self.buf.is_empty() {
            self.buf = vec![0; SMALL_READ];
        }
        let mut filled = 0;
        loop {
            match nix::unistd::read(&self.fd, &mut self.buf[filled..]) {
                Ok(0) => return (filled, Some(BurstEnd::Eof)),
                Ok(n) => {
                    filled += n;
                    if filled < self.buf.len() {
                        continue;
                    }
                    if self.buf.len() >= BIG_READ {
                        return (filled, None);
                    }
                    // Busy: a bigger buffer, and a bigger pipe so the child
                    // can go on writing while we write the file.
                    self.buf.resize(BIG_READ, 0);
                    if !self.enlarged {
                        self.enlarged = true;
                        enlarge_pipe(&self.fd);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                // A busy stream usually has more on its way: a short wait here
                // is far cheaper than a round trip through the runtime.
                Err(nix::errno::Errno::EAGAIN) if filled == 0 && self.moved >= BIG_READ => {
                    if !self.wait_briefly() {
                        return (0, Some(BurstEnd::Empty));
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => return (filled, Some(BurstEnd::Empty)),
                Err(e) => {
                    tracing::warn!(stream = self.stream.name(), "reading a log pipe: {e}");
                    return (filled, Some(BurstEnd::Empty));
                }
            }
        }
    }
}

impl Job {
    /// Waits up to [`BUSY_WAIT`] for the pipe to become readable.
    fn wait_briefly(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(BUSY_WAIT).unwrap_or(PollTimeout::ZERO);
        matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
    }
}

fn enlarge_pipe(pipe: &OwnedFd) {
    // Best effort: over the per-user pipe quota the kernel refuses, and the
    // default size still works, only with more wake-ups.
    if let Err(e) = fcntl(pipe, FcntlArg::F_SETPIPE_SZ(BUSY_PIPE_SIZE)) {
        tracing::debug!("F_SETPIPE_SZ: {e}");
    }
}

/// Hands output to `tail -f` followers without ever waiting for one.
fn broadcast(followers: &mut Vec<Follower>, data: &[u8]) {
    if followers.is_empty() || data.is_empty() {
        return;
    }
    let data: Arc<[u8]> = Arc::from(data);
    let len = data.len() as u64;
    followers.retain_mut(|f| {
        if f.skipped > 0 {
            match f.tx.try_send(TailEvent::Skipped(f.skipped)) {
                Ok(()) => f.skipped = 0,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    f.skipped += len;
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        match f.tx.try_send(TailEvent::Data(Arc::clone(&data))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                f.skipped += len;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    });
}

/// What a process's streams share.
struct Common {
    name: Arc<str>,
    rotation: Rotation,
    timestamps: bool,
    stats: Arc<LogStats>,
}

/// The file side of one stream; runs on the blocking pool.
struct Sink {
    name: Arc<str>,
    stream: Stream,
    file: RotatingFile,
    stamper: Option<Stamper>,
    stats: Arc<LogStats>,
    /// Since when writes fail, bytes dropped since the last warning, last warning.
    failing: Option<Failing>,
    /// Reused buffer for stamped output.
    scratch: Vec<u8>,
}

/// A log file that cannot be written at the moment.
struct Failing {
    since_warning: u64,
    total: u64,
    warned: Instant,
}

impl Sink {
    /// Writes `data` (stamped if asked), dropping and counting what the file
    /// refuses, and hands what was written to the followers.
    fn write(&mut self, data: &[u8], followers: &mut Vec<Follower>) {
        let Some(stamper) = &mut self.stamper else {
            self.write_out(data);
            broadcast(followers, data);
            return;
        };
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        stamper.stamp(data, SystemTime::now(), &mut out);
        self.write_out(&out);
        broadcast(followers, &out);
        self.keep_scratch(out);
    }

    /// Writes out a held-back partial line (timestamps).
    fn flush_partial(&mut self, followers: &mut Vec<Follower>) {
        let Some(stamper) = &mut self.stamper else {
            return;
        };
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        stamper.flush_partial(&mut out);
        self.write_out(&out);
        broadcast(followers, &out);
        self.keep_scratch(out);
    }

    fn keep_scratch(&mut self, out: Vec<u8>) {
        // A huge burst should not pin a huge scratch buffer.
        if out.capacity() <= 2 * BIG_READ {
            self.scratch = out;
        }
    }

    /// The output not in the file yet (a held-back partial line).
    fn unwritten(&self) -> Vec<u8> {
        self.stamper
            .as_ref()
            .map(|s| s.pending().to_vec())
            .unwrap_or_default()
    }

    fn write_out(&mut self, mut rest: &[u8]) {
        let mut complete = !rest.is_empty();
        while !rest.is_empty() {
            match self.file.write(rest) {
                Ok(0) => {
                    self.dropped(rest.len(), &io::Error::from(io::ErrorKind::WriteZero));
                    complete = false;
                    break;
                }
                Ok(n) => {
                    self.count_written(n);
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.dropped(rest.len(), &e);
                    complete = false;
                    rest = &[];
                }
            }
        }
        if complete {
            self.wrote();
        }
        if let Some(e) = self.file.take_rotation_error() {
            tracing::warn!(
                process = %self.name,
                "cannot rotate {}: {e}; it grows past max_size until a rotation succeeds",
                self.file.path().display()
            );
        }
    }

    /// Output lost on its way to the file.
    fn lost(&mut self, bytes: usize) {
        self.dropped(bytes, &io::Error::other("lost in the relay pipe"));
    }

    /// Counts bytes that reached the file (`minder_log_bytes_total`).
    fn count_written(&self, bytes: usize) {
        self.stats.written[self.stream as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Output reached the file: ends a failing spell.
    fn wrote(&mut self) {
        if let Some(f) = self.failing.take() {
            tracing::info!(
                process = %self.name,
                "writing {} again, after dropping {} bytes",
                self.file.path().display(),
                f.total
            );
        }
    }

    fn dropped(&mut self, bytes: usize, error: &io::Error) {
        let bytes = bytes as u64;
        self.stats.dropped[self.stream as usize].fetch_add(bytes, Ordering::Relaxed);
        let now = Instant::now();
        match &mut self.failing {
            None => {
                match super::safe::refusal(error) {
                    Some(reason) => tracing::warn!(
                        process = %self.name,
                        "refusing to write {}: {reason}; dropping {} output",
                        self.file.path().display(),
                        self.stream.name()
                    ),
                    None => tracing::warn!(
                        process = %self.name,
                        "dropping {} output: cannot write {}: {error}",
                        self.stream.name(),
                        self.file.path().display()
                    ),
                }
                self.failing = Some(Failing {
                    since_warning: 0,
                    total: bytes,
                    warned: now,
                });
            }
            Some(f) => {
                f.total += bytes;
                f.since_warning += bytes;
                if now.duration_since(f.warned) >= WARN_EVERY {
                    tracing::warn!(
                        process = %self.name,
                        "dropped {} more bytes of {} output: {}: {error}",
                        f.since_warning,
                        self.stream.name(),
                        self.file.path().display()
                    );
                    f.since_warning = 0;
                    f.warned = now;
                }
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(f) = &self.failing {
            tracing::info!(process = %self.name, "{} bytes of {} output were dropped in all", f.total, self.stream.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rotating::{numbered, SPLICE_MARGIN};
    use super::*;
    use std::fs;

    /// A burst job on `fd` writing to `path`, as the capture task lends it.
    fn job(fd: OwnedFd, path: &std::path::Path, rotation: Rotation, timestamps: bool) -> Job {
        Job {
            fd,
            sink: Box::new(Sink {
                name: Arc::from("x"),
                stream: Stream::Stdout,
                file: RotatingFile::new(path, rotation),
                stamper: timestamps.then(Stamper::default),
                stats: Arc::default(),
                failing: None,
                scratch: Vec::new(),
            }),
            buf: Vec::new(),
            followers: Vec::new(),
            enlarged: false,
            stream: Stream::Stdout,
            moved: 0,
            spliced: 0,
        }
    }

    /// Runs bursts until the pipe's end, waiting for data in between.
    fn run_to_end(job: &mut Job) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            job.moved = 0;
            match job.run() {
                BurstEnd::Eof => return,
                BurstEnd::More => {}
                BurstEnd::Empty => {
                    let mut fds = [PollFd::new(job.fd.as_fd(), PollFlags::POLLIN)];
                    poll(&mut fds, PollTimeout::NONE).unwrap();
                }
            }
        }
    }

    /// Both paths of a burst around each rotation: splice up to short of the
    /// bound, read and write to the newline where the file is cut; lines of
    /// uneven length, so the pipe's pages and the file's chunks never line up.
    #[test]
    fn a_burst_splices_and_writes_every_byte_in_order_across_rotations() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        let data: Vec<u8> = (0..170_000)
            .flat_map(|i: usize| format!("{i:06} {}\n", "x".repeat(i * 7919 % 53)).into_bytes())
            .collect();
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                let mut out = std::fs::File::from(write);
                for piece in data.chunks(SPLICE_CHUNK) {
                    out.write_all(piece).unwrap();
                }
            })
        };
        let max = 4 * SPLICE_MARGIN + 4000;
        let rotation = Rotation {
            max_size: max,
            backups: 50,
        };
        let mut job = job(read, &path, rotation, false);
        run_to_end(&mut job);
        writer.join().unwrap();
        let mut all = Vec::new();
        let mut files = Vec::new();
        for i in (1..=50).rev() {
            if let Ok(b) = fs::read(numbered(&path, i)) {
                files.push(b);
            }
        }
        files.push(fs::read(&path).unwrap());
        for f in &files {
            all.extend_from_slice(f);
        }
        assert!(all == data, "every byte once, in order");
        assert!(files.len() >= 5, "{} files", files.len());
        for f in &files[..files.len() - 1] {
            assert!(f.len() as u64 <= max, "over max_size: {}", f.len());
            assert_eq!(f.last(), Some(&b'\n'), "a line was split");
            assert!(f.len() as u64 > max - 100, "rotated early: {}", f.len());
        }
        assert_eq!(job.sink.stats.dropped_bytes(), 0);
        // Each file's last SPLICE_MARGIN bytes or so are written, the rest spliced.
        let written = data.len() - job.spliced;
        assert!(job.spliced > data.len() / 2, "spliced {}", job.spliced);
        assert!(
            written >= (files.len() - 1) * SPLICE_MARGIN as usize,
            "written {written}"
        );
    }

    /// Regression guard for idle memory: thousands of idle capture tasks must
    /// stay small (1000 programs are 2000 of them).
    #[tokio::test]
    async fn an_idle_capture_task_is_small() {
        let (read, _write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let capture = Capture {
            pipe: Some(register(read).unwrap()),
            path: Arc::from(std::path::Path::new("/dev/null")),
            common: Arc::new(Common {
                name: Arc::from("x"),
                rotation: Rotation {
                    max_size: 0,
                    backups: 0,
                },
                timestamps: false,
                stats: Arc::default(),
            }),
            sink: None,
            requests: Arc::new(Mailbox::new(REQUEST_QUEUE)),
            followers: Vec::new(),
            buf: Vec::new(),
            stream: Stream::Stdout,
            enlarged: false,
            id: 0,
        };
        let size = std::mem::size_of_val(&capture.run());
        assert!(size <= 768, "capture future is {size} bytes");
    }
}
