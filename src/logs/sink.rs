//! The file side of one stream: [`Sink`] writes output into the stream's
//! [`RotatingFile`], or for an inherited stream hands it to its [`Framer`]
//! (stamped with `timestamps = true` either way), counts what was
//! written and what the file refused, warns about a failing file at most
//! every 10 s, and hands what was written to the `tail -f` followers.
//!
//! It is separate because it is the one place that decides what becomes of
//! bytes once they are out of the pipe, whichever way they came: the burst's
//! read path and its splice fallback (`burst`), and the task's flushes and
//! reopens (`capture`) all go through it. Its writes run on tokio's blocking
//! pool, never on the runtime thread: a slow disk must not stall the daemon.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::inherit::Framer;
use super::rotating::{RotatingFile, Rotation};
use super::safe::refusal;
use super::stamp::Stamper;
use super::types::{LogStats, Stream, TailEvent};

/// Read buffer once a stream is busy: one file write per this many bytes. As
/// `cat` does: small enough to stay in the CPU cache between read and write,
/// and under glibc's mmap threshold (128 KiB), so a new one per burst is
/// reused heap memory, not a fresh mapping to fault in.
pub(super) const BIG_READ: usize = 124 * 1024;

/// Chunks queued per `tail -f` follower; a slower follower skips output
/// (and is told how much) rather than slowing the capture down.
const FOLLOW_QUEUE: usize = 8;

/// A failing log file is reported at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a process's streams share.
pub(super) struct Common {
    pub(super) name: Arc<str>,
    pub(super) rotation: Rotation,
    pub(super) timestamps: bool,
    /// Inherited streams: lines get `NAME | ` in front.
    pub(super) prefix: bool,
    pub(super) stats: Arc<LogStats>,
}

/// One `tail -f` client.
pub(super) struct Follower {
    tx: mpsc::Sender<TailEvent>,
    /// Bytes not delivered because its queue was full.
    skipped: u64,
}

impl Follower {
    /// A new follower and the receiver its client reads.
    pub(super) fn new() -> (Follower, mpsc::Receiver<TailEvent>) {
        let (tx, rx) = mpsc::channel(FOLLOW_QUEUE);
        (Follower { tx, skipped: 0 }, rx)
    }

    /// Its client has gone.
    pub(super) fn is_gone(&self) -> bool {
        self.tx.is_closed()
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

/// Where a stream's output goes.
pub(super) enum Out {
    /// Its log file.
    File(RotatingFile),
    /// minder's own stdout or stderr.
    Inherit(Framer),
}

/// The file side of one stream; runs on the blocking pool.
pub(super) struct Sink {
    name: Arc<str>,
    stream: Stream,
    out: Out,
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
    /// The sink of `stream` of a process, writing to `out`; opens nothing yet.
    pub(super) fn new(common: &Common, stream: Stream, out: Out) -> Sink {
        Sink {
            name: Arc::clone(&common.name),
            stream,
            out,
            stamper: common.timestamps.then(Stamper::default),
            stats: Arc::clone(&common.stats),
            failing: None,
            scratch: Vec::new(),
        }
    }

    /// Which stream it writes.
    pub(super) fn stream(&self) -> Stream {
        self.stream
    }

    /// The counters it adds to (tests look at them; `status` reads them
    /// through [`LogStats`]).
    #[cfg(test)]
    pub(super) fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// The log file, unless the stream is inherited.
    pub(super) fn file(&mut self) -> Option<&mut RotatingFile> {
        match &mut self.out {
            Out::File(file) => Some(file),
            Out::Inherit(_) => None,
        }
    }

    /// Output may go from the pipe to the file by splice(2): the stream is
    /// written to a file, and its lines get no timestamp (which needs the
    /// bytes in userspace).
    pub(super) fn splices(&self) -> bool {
        self.stamper.is_none() && matches!(self.out, Out::File(_))
    }

    /// When a held-back partial line is due to be written anyway.
    pub(super) fn partial_deadline(&self) -> Option<Instant> {
        let stamped = self.stamper.as_ref().and_then(Stamper::partial_deadline);
        let framed = match &self.out {
            Out::Inherit(framer) => framer.partial_deadline(),
            Out::File(_) => None,
        };
        stamped.into_iter().chain(framed).min()
    }

    /// Writes `data` (stamped if asked), dropping and counting what the file
    /// refuses, and hands what was written to the followers.
    pub(super) fn write(&mut self, data: &[u8], followers: &mut Vec<Follower>) {
        if self.stamper.is_none() {
            self.write_out(data);
            broadcast(followers, data);
            return;
        }
        self.write_stamped(followers, |stamper, out| {
            stamper.stamp(data, SystemTime::now(), out)
        });
    }

    /// Writes out a held-back partial line (timestamps, inherited streams).
    pub(super) fn flush_partial(&mut self, followers: &mut Vec<Follower>) {
        self.write_stamped(followers, Stamper::flush_partial);
        if let Out::Inherit(framer) = &mut self.out {
            framer.flush_partial();
        }
    }

    /// Writes what `stamp` puts into the scratch buffer and hands it to the
    /// followers; nothing without timestamps.
    fn write_stamped(
        &mut self,
        followers: &mut Vec<Follower>,
        stamp: impl FnOnce(&mut Stamper, &mut Vec<u8>),
    ) {
        let Some(stamper) = &mut self.stamper else {
            return;
        };
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        stamp(stamper, &mut out);
        self.write_out(&out);
        broadcast(followers, &out);
        // A huge burst should not pin a huge scratch buffer.
        if out.capacity() <= 2 * BIG_READ {
            self.scratch = out;
        }
    }

    /// Frees the scratch buffer: the stream has gone quiet.
    pub(super) fn release_scratch(&mut self) {
        self.scratch = Vec::new();
    }

    /// The output not in the file yet (a held-back partial line).
    pub(super) fn unwritten(&self) -> Vec<u8> {
        self.stamper
            .as_ref()
            .map(|s| s.pending().to_vec())
            .unwrap_or_default()
    }

    /// Reopens the file (after an external logrotate moved it); the error
    /// says which process and file, and why.
    pub(super) fn reopen(&mut self) -> Result<(), String> {
        let Out::File(file) = &mut self.out else {
            return Ok(());
        };
        file.reopen().map_err(|e| {
            let path = file.path().display();
            match refusal(&e) {
                Some(reason) => format!("{}: refusing to write {path}: {reason}", self.name),
                None => format!("{}: reopening {path}: {e}", self.name),
            }
        })
    }

    fn write_out(&mut self, mut rest: &[u8]) {
        if let Out::Inherit(framer) = &mut self.out {
            // Counted by the writer of minder's stream, which alone knows
            // whether the bytes got out.
            return framer.write(rest);
        }
        let mut complete = !rest.is_empty();
        while !rest.is_empty() {
            let Out::File(file) = &mut self.out else {
                return;
            };
            match file.write(rest) {
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
        if let Out::File(file) = &mut self.out {
            if let Some(e) = file.take_rotation_error() {
                tracing::warn!(
                    process = %self.name,
                    "cannot rotate {}: {e}; it grows past max_size until a rotation succeeds",
                    file.path().display()
                );
            }
        }
    }

    /// Output lost on its way to the file.
    pub(super) fn lost(&mut self, bytes: usize) {
        self.dropped(bytes, &io::Error::other("lost in the relay pipe"));
    }

    /// Counts bytes that reached the file (`minder_log_bytes_total`).
    pub(super) fn count_written(&self, bytes: usize) {
        self.stats.add_written(self.stream, bytes as u64);
    }

    /// Output reached the file: ends a failing spell.
    pub(super) fn wrote(&mut self) {
        if let Some(f) = self.failing.take() {
            tracing::info!(
                process = %self.name,
                "writing {} again, after dropping {} bytes",
                path_of(&self.out).display(),
                f.total
            );
        }
    }

    fn dropped(&mut self, bytes: usize, error: &io::Error) {
        let bytes = bytes as u64;
        self.stats.add_dropped(self.stream, bytes);
        let now = Instant::now();
        match &mut self.failing {
            None => {
                match refusal(error) {
                    Some(reason) => tracing::warn!(
                        process = %self.name,
                        "refusing to write {}: {reason}; dropping {} output",
                        path_of(&self.out).display(),
                        self.stream.name()
                    ),
                    None => tracing::warn!(
                        process = %self.name,
                        "dropping {} output: cannot write {}: {error}",
                        self.stream.name(),
                        path_of(&self.out).display()
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
                        path_of(&self.out).display()
                    );
                    f.since_warning = 0;
                    f.warned = now;
                }
            }
        }
    }
}

/// The log file's path, for messages (only files fail or recover).
fn path_of(out: &Out) -> &Path {
    match out {
        Out::File(file) => file.path(),
        Out::Inherit(_) => Path::new("-"),
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(f) = &self.failing {
            tracing::info!(process = %self.name, "{} bytes of {} output were dropped in all", f.total, self.stream.name());
        }
    }
}
