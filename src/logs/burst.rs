//! One burst: what a stream's pipe holds, moved into its log file on tokio's
//! blocking pool. The capture task lends a [`Job`] (the read end, the sink,
//! the buffer, the followers) and gets it back when the pipe is empty or
//! closed, or after 50 ms / 64 MiB so requests are not kept waiting.
//!
//! Into a regular file, with neither timestamps nor `tail -f` followers, the
//! bytes are spliced (splice(2) through a relay pipe of the thread, in steps
//! of 128 KiB that end on a 128 KiB grid of the file); near the rotation
//! bound, and otherwise, read and written like `cat` (up to 124 KiB at a time,
//! through the sink). The pipe is enlarged to 256 KiB the first time the
//! child fills it.
//!
//! It is separate because it is the only code that loops on syscalls off the
//! runtime and the only code that tunes for throughput: the numbers here were
//! measured (bench/logs.py, docs/benchmarks.md), and the task (`capture`) and
//! the file side (`sink`) do not depend on them.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};

use super::sink::{Follower, Sink, BIG_READ};

/// First read buffer of a stream: a line or two needs no more, and a small
/// buffer comes from the heap, not a fresh mmap.
const SMALL_READ: usize = 16 * 1024;

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

/// How long a burst that has moved much waits for more before it ends.
const BUSY_WAIT: Duration = Duration::from_millis(2);

/// Most bytes one burst moves before the task looks at its requests again.
const BURST_BYTES: usize = 64 << 20;

/// Most time one burst takes before the task looks at its requests again.
const BURST_TIME: Duration = Duration::from_millis(50);

/// How a burst of reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BurstEnd {
    /// The pipe is empty: wait for it to become readable.
    Empty,
    /// The burst used its budget with data still waiting: go on after
    /// serving requests, without waiting for readiness.
    More,
    /// Every write end is closed.
    Eof,
}

/// How one splice step of a burst went.
enum Spliced {
    /// This many bytes are in the file.
    Moved(usize),
    /// The burst ends: the pipe is empty or closed.
    End(BurstEnd),
    /// The file cannot take output by splicing now (see
    /// [`RotatingFile::splice_room`](super::rotating::RotatingFile::splice_room)):
    /// read and write this chunk.
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
pub(super) struct Job {
    /// The pipe's read end (non-blocking, not registered with the runtime).
    pub(super) fd: OwnedFd,
    pub(super) sink: Box<Sink>,
    /// The read buffer; empty until the stream has output.
    pub(super) buf: Vec<u8>,
    pub(super) followers: Vec<Follower>,
    /// F_SETPIPE_SZ was tried.
    pub(super) enlarged: bool,
    /// Bytes moved in this burst.
    pub(super) moved: usize,
    /// Of which spliced (the rest read and written).
    pub(super) spliced: usize,
}

impl Job {
    /// A job on the read end `fd`, with what the capture task lends.
    pub(super) fn new(
        fd: OwnedFd,
        sink: Box<Sink>,
        buf: Vec<u8>,
        followers: Vec<Follower>,
        enlarged: bool,
    ) -> Job {
        Job {
            fd,
            sink,
            buf,
            followers,
            enlarged,
            moved: 0,
            spliced: 0,
        }
    }

    /// Moves output into the file until the pipe is empty, closed, or the
    /// budget is used: spliced when nothing needs to see the bytes, else (and
    /// near the rotation bound) read and written.
    pub(super) fn run(&mut self) -> BurstEnd {
        let started = Instant::now();
        // Timestamps, inherited streams and `tail -f` followers need the
        // bytes in userspace.
        let mut splicing = self.sink.splices() && self.followers.is_empty();
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
        let Some(file) = self.sink.file() else {
            return Spliced::NotNow;
        };
        let room = match file.splice_room() {
            Ok(Some(room)) => room,
            Ok(None) => return Spliced::NotNow,
            Err(_) => return Spliced::Failed(0),
        };
        // Up to the next multiple of SPLICE_CHUNK in the file: the page
        // cache then gets whole, aligned folios of that size (splicing off
        // that grid, e.g. after a rotation, cost a tenth more CPU).
        let to_grid = SPLICE_CHUNK - (file.size() % SPLICE_CHUNK as u64) as usize;
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
                    tracing::debug!(
                        stream = self.sink.stream().name(),
                        "splicing a log pipe: {e}"
                    );
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
            let spliced = match self.sink.file() {
                Some(file) => file.splice_from(relay.read.as_fd(), left),
                None => Ok(0),
            };
            match spliced {
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
                    tracing::debug!(
                        stream = self.sink.stream().name(),
                        "splicing into the log: {e}"
                    );
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
                    tracing::warn!(
                        stream = self.sink.stream().name(),
                        "reading a log pipe: {e}"
                    );
                    return (filled, Some(BurstEnd::Empty));
                }
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::super::rotating::{numbered, RotatingFile, Rotation, SPLICE_MARGIN};
    use super::super::sink::{Common, Out};
    use super::super::types::Stream;
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::sync::Arc;

    /// A burst job on `fd` writing to `path`, as the capture task lends it.
    fn job(fd: OwnedFd, path: &std::path::Path, rotation: Rotation, timestamps: bool) -> Job {
        let common = Common {
            name: Arc::from("x"),
            rotation,
            timestamps,
            prefix: false,
            stats: Arc::default(),
        };
        let file = RotatingFile::new(path, rotation);
        let sink = Box::new(Sink::new(&common, Stream::Stdout, Out::File(file)));
        Job::new(fd, sink, Vec::new(), Vec::new(), false)
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
        assert_eq!(job.sink.stats().dropped_bytes(), 0);
        // Each file's last SPLICE_MARGIN bytes or so are written, the rest spliced.
        let written = data.len() - job.spliced;
        assert!(job.spliced > data.len() / 2, "spliced {}", job.spliced);
        assert!(
            written >= (files.len() - 1) * SPLICE_MARGIN as usize,
            "written {written}"
        );
    }
}
