//! The public types of `crate::logs` that the supervisor, control and
//! metrics use, below every other file of log capture: each of them uses
//! these, none of these uses them.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use super::handover::SavedPipes;

/// Counters of one process's capture, read by `status`.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Bytes written to the log files, by stream (stdout, stderr).
    written: [AtomicU64; 2],
    /// Bytes lost because the log file could not be written, by stream.
    dropped: [AtomicU64; 2],
    /// `[read, write]` of the stdout and stderr pipes once made (stable for
    /// the process's life), for handing them over on `reexec`.
    fds: OnceLock<[Option<[RawFd; 2]>; 2]>,
}

impl LogStats {
    /// The pipes to keep across `reexec`, if any were made.
    pub fn saved_pipes(&self, name: &str) -> Option<SavedPipes> {
        let [stdout, stderr] = *self.fds.get()?;
        Some(SavedPipes {
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

    /// Records the `[read, write]` fds of the stdout and stderr pipes, once
    /// made, for handing them over on `reexec`.
    pub(super) fn set_pipe_fds(&self, fds: [Option<[RawFd; 2]>; 2]) {
        let _ = self.fds.set(fds);
    }

    /// Counts bytes of `stream` that reached the file (`minder_log_bytes_total`).
    pub(super) fn add_written(&self, stream: Stream, bytes: u64) {
        self.written[stream as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts bytes of `stream` the file refused.
    pub(super) fn add_dropped(&self, stream: Stream, bytes: u64) {
        self.dropped[stream as usize].fetch_add(bytes, Ordering::Relaxed);
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
