//! `stdout`/`stderr = "inherit"`: a stream written to minder's own stdout or
//! stderr (for `docker logs`), as whole lines, each prefixed with the
//! process name unless `prefix = false`.
//!
//! - [`Framer`], the file side of an inherited stream (in place of a
//!   rotating file): it cuts the output into whole lines, holding a started
//!   line back until its end comes (at most [`PARTIAL_WAIT`]; a line longer
//!   than [`PIECE`] is cut into pieces, each ended with a newline), prefixes
//!   each, and queues them as one chunk;
//! - one writer thread per minder stream (stdout, stderr), the only writer
//!   of that fd among the processes: it writes each chunk with one write()
//!   (more only when the kernel takes part of it), so lines of different
//!   processes never mix. Its queue is bounded ([`QUEUE_BYTES`]): when
//!   whoever reads minder's stdout stalls, chunks are dropped and counted
//!   (`dropped_bytes`, `minder_log_dropped_bytes`), and no child ever waits;
//! - [`Recent`], the last [`RECENT_BYTES`] of the stream, kept in memory for
//!   `ctl tail` (nothing is on disk).
//!
//! minder's stdout and stderr are left as they are (blocking): they may be
//! shared with other processes (a terminal, the container runtime's pipe),
//! for which O_NONBLOCK on the shared file would be a surprise.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use super::sink::Common;
use super::stamp::{PARTIAL_MAX, PARTIAL_WAIT};
use super::types::{LogStats, Stream};

/// Longest piece of a line written as one line: a longer line is cut into
/// pieces of this many bytes, each ended with a newline (and prefixed), so
/// that no piece waits for the rest of its line and no other process's
/// output gets into it. 16 KiB, as Docker's own log drivers cut lines.
pub(super) const PIECE: usize = PARTIAL_MAX;

/// Most bytes of output kept in memory per inherited stream, for `ctl tail`.
const RECENT_BYTES: usize = 64 * 1024;

/// Most bytes queued for one of minder's streams; beyond, output is dropped.
/// Room for a burst of several busy programs at once while the writer
/// catches up (a reader such as Docker's is fast, but not always scheduled
/// at once), small next to what minder's capture of many programs costs.
const QUEUE_BYTES: usize = 4 << 20;

/// A stalled stdout is reported at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The last [`RECENT_BYTES`] of an inherited stream, from its first output
/// for as long as the process is configured (across restarts and across
/// its capture going idle).
#[derive(Debug, Default)]
pub(super) struct Recent(Mutex<Vec<u8>>);

impl Recent {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // Poisoned only by a panic while copying bytes: the bytes are still bytes.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends output, forgetting the oldest beyond the bound: what is kept
    /// starts at a line (one cut at its front would read as whole).
    fn push(&self, data: &[u8]) {
        let mut kept = self.lock();
        let over = (kept.len() + data.len()).saturating_sub(RECENT_BYTES);
        if over > 0 {
            // The first line that starts at `over` or later, in kept + data.
            let from = over - 1;
            let newline = if from < kept.len() {
                memchr::memchr(b'\n', &kept[from..])
                    .map(|i| from + i)
                    .or_else(|| memchr::memchr(b'\n', data).map(|i| kept.len() + i))
            } else {
                memchr::memchr(b'\n', &data[from - kept.len()..]).map(|i| from + i)
            };
            let start = newline.map_or(kept.len() + data.len(), |i| i + 1);
            if start >= kept.len() {
                let data = &data[start - kept.len()..];
                kept.clear();
                kept.extend_from_slice(data);
                return;
            }
            kept.drain(..start);
        }
        kept.reserve_exact(data.len());
        kept.extend_from_slice(data);
    }

    /// What is kept, followed by `unwritten`.
    pub(super) fn with(&self, unwritten: &[u8]) -> Vec<u8> {
        let kept = self.lock();
        let mut all = Vec::with_capacity(kept.len() + unwritten.len());
        all.extend_from_slice(&kept);
        all.extend_from_slice(unwritten);
        all
    }
}

/// The file side of an inherited stream (see the module doc); runs where
/// the sink runs, on the blocking pool.
pub(super) struct Framer {
    /// `NAME | `, or nothing with `prefix = false`.
    prefix: Box<[u8]>,
    /// A started line, without its newline yet (shorter than [`PIECE`]).
    partial: Vec<u8>,
    /// When `partial` got its first byte.
    partial_since: Option<Instant>,
    recent: Arc<Recent>,
    /// Which of minder's streams, and whose counters.
    to: Stream,
    stats: Arc<LogStats>,
}

impl Framer {
    /// The framer of a process's stream `to` (its stdout pipe goes to
    /// minder's stdout, its stderr pipe to minder's stderr).
    pub(super) fn new(common: &Common, to: Stream, recent: Arc<Recent>) -> Framer {
        let prefix = if common.prefix {
            format!("{} | ", common.name)
                .into_bytes()
                .into_boxed_slice()
        } else {
            Box::default()
        };
        Framer {
            prefix,
            partial: Vec::new(),
            partial_since: None,
            recent,
            to,
            stats: Arc::clone(&common.stats),
        }
    }

    /// Takes output: kept for `tail`, its whole lines queued for minder's stream.
    pub(super) fn write(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.recent.push(data);
        let out = self.frame(data);
        self.queue(out);
    }

    /// The whole lines of what came so far, framed; a started line is held back.
    fn frame(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + self.partial.len() + 2 * self.prefix.len());
        let mut rest = data;
        if !self.partial.is_empty() {
            let Some(i) = memchr::memchr(b'\n', rest) else {
                self.hold(rest, &mut out);
                return out;
            };
            self.partial.extend_from_slice(&rest[..i]);
            self.line(&self.partial, &mut out);
            self.partial.clear();
            self.partial_since = None;
            rest = &rest[i + 1..];
        }
        let whole = memchr::memrchr(b'\n', rest).map_or(0, |i| i + 1);
        for line in rest[..whole].split_inclusive(|b| *b == b'\n') {
            self.line(&line[..line.len() - 1], &mut out);
        }
        self.hold(&rest[whole..], &mut out);
        // A big line-less burst leaves a buffer not needed again soon.
        if self.partial.is_empty() && self.partial.capacity() > PIECE {
            self.partial = Vec::new();
        }
        out
    }

    /// Holds `rest` (no newline in it) back after the started line, framing
    /// the whole pieces of that line.
    fn hold(&mut self, rest: &[u8], out: &mut Vec<u8>) {
        if rest.is_empty() {
            return;
        }
        if self.partial.is_empty() {
            self.partial_since = Some(Instant::now());
        }
        self.partial.extend_from_slice(rest);
        let whole = self.partial.len() / PIECE * PIECE;
        if whole > 0 {
            self.line(&self.partial[..whole], out);
            self.partial.drain(..whole);
            if self.partial.is_empty() {
                self.partial_since = None;
            }
        }
    }

    /// Appends `line` (without its newline) to `out`, in pieces of at most
    /// [`PIECE`] bytes, each prefixed and ended with a newline.
    fn line(&self, line: &[u8], out: &mut Vec<u8>) {
        let mut pieces = line.chunks(PIECE);
        let first = pieces.next().unwrap_or_default();
        for piece in std::iter::once(first).chain(pieces) {
            out.extend_from_slice(&self.prefix);
            out.extend_from_slice(piece);
            out.push(b'\n');
        }
    }

    /// When the held-back line must go out without its end, if one is held.
    pub(super) fn partial_deadline(&self) -> Option<Instant> {
        self.partial_since.map(|t| t + PARTIAL_WAIT)
    }

    /// Writes out the held-back line as a line of its own (a prompt without
    /// a newline shows up, ended with one).
    pub(super) fn flush_partial(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.partial.len() + self.prefix.len() + 1);
        let line = std::mem::take(&mut self.partial);
        self.line(&line, &mut out);
        self.partial_since = None;
        self.queue(out);
    }

    fn queue(&self, chunk: Vec<u8>) {
        if !chunk.is_empty() {
            writer(self.to).send(chunk, &self.stats, self.to);
        }
    }
}

/// One chunk of whole lines for minder's stream, and whose they are.
struct Chunk {
    data: Vec<u8>,
    stats: Arc<LogStats>,
    stream: Stream,
}

/// The writer of one of minder's streams: a bounded queue and the thread
/// that empties it.
struct Writer {
    to: Stream,
    queue: Mutex<Queue>,
    /// Signalled when a chunk is queued.
    ready: Condvar,
    /// Signalled when a chunk has been written.
    written: Condvar,
    started: Once,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Bytes in `chunks` and in the write under way.
    bytes: usize,
    /// Bytes dropped since the last warning, and when that was.
    dropped: u64,
    warned: Option<Instant>,
}

static WRITERS: [OnceLock<Writer>; 2] = [OnceLock::new(), OnceLock::new()];

/// The writer of minder's stream `to`, its thread started at first use.
fn writer(to: Stream) -> &'static Writer {
    let writer = WRITERS[to as usize].get_or_init(|| Writer {
        to,
        queue: Mutex::default(),
        ready: Condvar::new(),
        written: Condvar::new(),
        started: Once::new(),
    });
    writer.started.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name(format!("minder-{}", to.name()))
            .spawn(move || writer.run());
        if let Err(e) = spawned {
            // The queue fills, and what comes is dropped and counted.
            tracing::warn!("starting the writer of minder's {}: {e}", to.name());
        }
    });
    writer
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Poisoned only by a panic in this file's few lines: the queue is sound.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `data`, or drops and counts it (to `stream` of `stats`) when
    /// the queue is full: never waits.
    fn send(&self, data: Vec<u8>, stats: &Arc<LogStats>, stream: Stream) {
        let mut queue = self.lock();
        if queue.bytes + data.len() > QUEUE_BYTES {
            stats.add_dropped(stream, data.len() as u64);
            self.dropped(&mut queue, data.len(), "it is not read fast enough");
            return;
        }
        queue.bytes += data.len();
        queue.chunks.push_back(Chunk {
            data,
            stats: Arc::clone(stats),
            stream,
        });
        self.ready.notify_one();
    }

    /// Counts a drop for the warning, and warns at most every [`WARN_EVERY`].
    fn dropped(&self, queue: &mut Queue, bytes: usize, why: &str) {
        queue.dropped += bytes as u64;
        let now = Instant::now();
        if queue
            .warned
            .is_some_and(|w| now.duration_since(w) < WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            "dropped {} bytes of output bound for minder's {}: {why}",
            queue.dropped,
            self.to.name()
        );
        queue.dropped = 0;
        queue.warned = Some(now);
    }

    /// The thread: writes each chunk in turn, as it comes.
    fn run(&self) {
        loop {
            let chunk = {
                let mut queue = self.lock();
                loop {
                    match queue.chunks.pop_front() {
                        Some(chunk) => break chunk,
                        None => queue = self.ready.wait(queue).unwrap_or_else(|e| e.into_inner()),
                    }
                }
            };
            let result = self.write_all(&chunk.data);
            let mut queue = self.lock();
            queue.bytes -= chunk.data.len();
            let len = chunk.data.len() as u64;
            match result {
                Ok(()) => chunk.stats.add_written(chunk.stream, len),
                Err(e) => {
                    chunk.stats.add_dropped(chunk.stream, len);
                    self.dropped(&mut queue, chunk.data.len(), &e.to_string());
                }
            }
            self.written.notify_all();
        }
    }

    /// Writes `data` to minder's stream: one write() unless the kernel takes
    /// only part of it (this thread is the fd's only writer among the
    /// processes, so the rest still follows at once).
    fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        use nix::errno::Errno;
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        while !data.is_empty() {
            match self.with_fd(|fd| nix::unistd::write(fd, data)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(Errno::EINTR) => {}
                // Someone made the shared fd non-blocking: wait until it takes more.
                Err(Errno::EAGAIN) => {
                    let _ = self.with_fd(|fd| {
                        poll(
                            &mut [PollFd::new(fd, PollFlags::POLLOUT)],
                            PollTimeout::from(1000u16),
                        )
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Calls `f` with minder's stream.
    fn with_fd<R>(&self, f: impl FnOnce(BorrowedFd<'_>) -> R) -> R {
        match self.to {
            Stream::Stdout => f(io::stdout().as_fd()),
            Stream::Stderr => f(io::stderr().as_fd()),
        }
    }

    /// Waits until everything queued is written, or until `deadline`.
    fn flush(&self, deadline: Instant) {
        let mut queue = self.lock();
        while queue.bytes > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "{} bytes of output bound for minder's {} not written: it is not read",
                    queue.bytes,
                    self.to.name()
                );
                return;
            }
            queue = match self.written.wait_timeout(queue, left) {
                Ok((q, _)) => q,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// Writes out what is queued for minder's stdout and stderr, waiting at most
/// `within` (a reader that stalls must not keep minder from exiting).
pub fn flush_inherited(within: Duration) {
    let deadline = Instant::now() + within;
    for writer in WRITERS.iter().filter_map(OnceLock::get) {
        writer.flush(deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer(prefix: bool) -> Framer {
        let common = Common {
            name: Arc::from("web:0"),
            rotation: super::super::rotating::Rotation {
                max_size: 0,
                backups: 0,
            },
            timestamps: false,
            prefix,
            stats: Arc::default(),
        };
        Framer::new(&common, Stream::Stdout, Arc::default())
    }

    #[test]
    fn lines_are_prefixed_and_a_started_line_waits_for_its_end() {
        let mut f = framer(true);
        assert_eq!(f.frame(b"a\n\nb"), b"web:0 | a\nweb:0 | \n");
        assert!(f.partial_deadline().is_some());
        assert_eq!(f.frame(b"c\nd"), b"web:0 | bc\n");
        let mut raw = framer(false);
        assert_eq!(raw.frame(b"x\ny\n"), b"x\ny\n");
        assert!(raw.partial_deadline().is_none());
    }

    #[test]
    fn a_long_line_is_cut_into_pieces_each_a_line() {
        let mut f = framer(true);
        let long = vec![b'x'; 2 * PIECE + 10];
        let out = f.frame(&long);
        let lines: Vec<&[u8]> = out.split(|b| *b == b'\n').collect();
        assert_eq!(
            lines.len(),
            3,
            "two whole pieces and the end after the last newline"
        );
        assert_eq!(lines[0].len(), "web:0 | ".len() + PIECE);
        assert_eq!(f.partial.len(), 10);
        let out = f.frame(b"yy\n");
        assert_eq!(out, [b"web:0 | ".as_slice(), &[b'x'; 10], b"yy\n"].concat());
    }

    #[test]
    fn recent_keeps_the_last_whole_lines_within_its_bound() {
        let recent = Recent::default();
        let line = [vec![b'a'; 1000], vec![b'\n']].concat();
        for _ in 0..200 {
            recent.push(&line);
        }
        let kept = recent.with(b"");
        assert!(kept.len() <= RECENT_BYTES, "{}", kept.len());
        assert!(kept.len() > RECENT_BYTES - 1001, "{}", kept.len());
        assert!(kept.starts_with(b"aaa"));
        assert_eq!(kept.len() % 1001, 0, "whole lines only");
        // One write of more than the bound: from its first whole line.
        let mut big = vec![b'b'; 3 * RECENT_BYTES];
        big[2 * RECENT_BYTES + 99] = b'\n';
        recent.push(&big);
        assert_eq!(recent.with(b"").len(), RECENT_BYTES - 100);
        // A line that ends exactly where the bound cuts is dropped whole.
        let recent = Recent::default();
        recent.push(&[vec![b'c'; RECENT_BYTES - 1], vec![b'\n']].concat());
        recent.push(b"d\n");
        assert_eq!(recent.with(b""), b"d\n");
    }
}
