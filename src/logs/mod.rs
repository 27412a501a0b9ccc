//! Log capture: each process's stdout and stderr through pipes into size-rotated
//! files, the end of a log for `ctl tail`, and `tail -f` streaming.
//!
//! - `pipes`: [`ProcessLogs`], a process's pipes (made at its first spawn,
//!   kept across restarts) and the way its requests reach each stream;
//! - `types`: the public request, reply and counter types, which every other
//!   file uses (the files above run one way: pipes, capture, burst, sink);
//! - `capture`: the task of one stream, waiting on the runtime and serving
//!   requests between bursts;
//! - `dormant`: streams without recent output, waiting without a task;
//! - `burst`: moving what a pipe holds into the file on the blocking pool
//!   (splice, or read and write);
//! - `sink`: the file side of a stream: writing, counting, warning about a
//!   failing file, feeding `tail -f`;
//! - `rotating`: [`RotatingFile`], an `io::Write` that rotates by renaming;
//! - `inherit`: `"inherit"` streams, in place of a file: whole prefixed
//!   lines to minder's own stdout or stderr through one writer thread each,
//!   and the last 64 KiB in memory for `tail`;
//! - `handover`: the pipes across `reexec`;
//! - `own`: minder's own log (stderr, JSON, daily file);
//! - `safe`: opening log files so that nobody else can redirect the writes;
//! - `stamp`: `timestamps = true`, the only per-line work;
//! - `tail`: the last lines of a log from its files.
//!
//! How output flows: the child writes into a pipe that minder keeps for the
//! process's whole life (both ends, across restarts; plain fds, so `reexec`
//! can hand them over). While the stream has no output, its read end waits
//! in one epoll set shared by all such streams (`dormant`): an idle program
//! costs no task. Output starts the stream's own task (`capture`), which
//! goes back to the dormant set after 10 s without output. On readability
//! the task lends the read end (unregistered from the runtime) and the file
//! side to tokio's blocking pool for one burst (`burst`), which splices or
//! copies until the pipe is empty or its budget is used, so the runtime
//! thread never waits for the disk and is not woken by each write of a busy
//! child. One task per pipe means one writer per file, in order. A file that
//! cannot be written drops output (`sink`: counted in `dropped_bytes`, warned
//! about at most every 10 s) and never blocks the child; writing resumes as
//! soon as the file takes bytes again.

mod burst;
mod capture;
mod dormant;
mod handover;
mod inherit;
pub mod own;
mod pipes;
mod rotating;
mod safe;
mod sink;
mod stamp;
mod tail;
mod types;

pub use handover::{offer as offer_saved_pipes, quiesce, SavedPipes};
pub use inherit::flush_inherited;
pub use pipes::ProcessLogs;
pub use rotating::{numbered, RotatingFile, Rotation};
pub use safe::refusal;
pub use stamp::Stamper;
pub use tail::{last_lines, MAX_TAIL_BYTES, MAX_TAIL_LINES};
pub use types::{LogRequest, LogStats, Stream, TailEvent, TailReply};
