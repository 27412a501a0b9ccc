//! Log capture: each process's stdout and stderr through pipes into size-rotated
//! files, the end of a log for `ctl tail`, and `tail -f` streaming.
//!
//! - `rotating`: [`RotatingFile`], an `io::Write` that rotates by renaming;
//! - `capture`: the pipes of a process and one task per pipe;
//! - `dormant`: pipes that have had no output yet, waiting without a task;
//! - `own`: minder's own log (stderr, JSON, daily file);
//! - `safe`: opening log files so that nobody else can redirect the writes;
//! - `stamp`: `timestamps = true`, the only per-line work;
//! - `tail`: the last lines of a log from its files.
//!
//! How output flows: the child writes into a pipe that minder keeps for the
//! process's whole life (both ends, across restarts; plain fds, so `reexec`
//! can hand them over). Until the stream first has output, its read end waits
//! in one epoll set shared by all such streams (`dormant`): an idle program
//! costs no task. Then the stream gets its own task: on readability it lends
//! the read end (unregistered from the runtime) and its `RotatingFile` to
//! tokio's blocking pool, which moves output until the pipe is empty (waiting
//! 2 ms for more first) or 50 ms / 64 MiB have passed, so the runtime thread
//! never waits for the disk and is not woken by each write of a busy child.
//! Into a regular file without timestamps and `tail -f` followers it splices
//! (splice(2), through a relay pipe of the thread, 128 KiB steps); near the
//! rotation bound, and otherwise, it alternates `read` and `write` of up to
//! 124 KiB like `cat`. The pipe is enlarged to 256 KiB (F_SETPIPE_SZ) the
//! first time the child fills it. One task per pipe means
//! one writer per file, in order. A file that cannot be written drops output
//! (counted in `dropped_bytes`, warned about at most every 10 s) and never
//! blocks the child; writing resumes as soon as the file takes bytes again.

mod capture;
mod dormant;
mod handover;
pub mod own;
mod rotating;
mod safe;
mod stamp;
mod tail;

pub use capture::{LogRequest, LogStats, ProcessLogs, Stream, TailEvent, TailReply};
pub use handover::{offer as offer_saved_pipes, quiesce, SavedPipes};
pub use rotating::{numbered, RotatingFile, Rotation};
pub use safe::refusal;
pub use stamp::Stamper;
pub use tail::{last_lines, MAX_TAIL_BYTES, MAX_TAIL_LINES};
