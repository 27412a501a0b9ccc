//! Log capture: each process's stdout and stderr through pipes into size-rotated
//! files, the end of a log for `ctl tail`, and `tail -f` streaming.
//!
//! - `rotating`: [`RotatingFile`], an `io::Write` that rotates by renaming;
//! - `capture`: the pipes of a process and one task per pipe;
//! - `stamp`: `timestamps = true`, the only per-line work;
//! - `tail`: the last lines of a log from its files.
//!
//! How output flows: the child writes into a pipe (enlarged to 1 MiB with
//! F_SETPIPE_SZ once it is busy); the pipe's task wakes on readability, reads
//! everything available into one buffer (16 KiB, 512 KiB once busy), and hands
//! the buffer to tokio's blocking pool, which writes it with one `write` per
//! file (more only at a rotation). The runtime thread never waits for the
//! disk, and one task per pipe means one writer per file, in order. A file
//! that cannot be written drops output (counted in `dropped_bytes`, warned
//! about at most every 10 s) and never blocks the child; writing resumes as
//! soon as the file takes bytes again.

mod capture;
mod dormant;
pub mod own;
mod rotating;
mod stamp;
mod tail;

pub use capture::{LogRequest, LogStats, ProcessLogs, Stream, TailEvent, TailReply};
pub use rotating::{numbered, RotatingFile, Rotation};
pub use stamp::Stamper;
pub use tail::{last_lines, MAX_TAIL_BYTES, MAX_TAIL_LINES};
