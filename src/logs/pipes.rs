//! A process's side of log capture: [`ProcessLogs`], owned by the process's
//! actor, makes the stdout and stderr pipes (or adopts them after `reexec`),
//! gives their write ends to each child, and routes [`LogRequest`]s to the
//! capture task of each stream.
//!
//! It is separate from the rest because it runs on the actor and never reads
//! a pipe or writes a file: it holds only write ends and each stream's request
//! mailbox. Reading is the capture task's (`capture`), moving bytes the
//! burst's (`burst`), writing them the sink's (`sink`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::sync::oneshot;

use super::capture::{Capture, StreamRequest, Target};
use super::dormant;
use super::handover;
use super::rotating::Rotation;
use super::sink::Common;
use super::types::{LogRequest, LogStats, Stream};
use crate::config::{LogDest, LogsConfig, ProcessSpec};
use crate::mailbox::{Mailbox, SendError};
use crate::process::Output;

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
    /// The name, rotation, timestamps and counters all its streams share.
    common: Arc<Common>,
    stdout: LogDest,
    stderr: LogDest,
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

impl ProcessLogs {
    /// The capture of `spec`'s output, configured by `cfg`; nothing is opened yet.
    pub fn new(spec: &ProcessSpec, cfg: &LogsConfig) -> ProcessLogs {
        ProcessLogs {
            common: Arc::new(Common {
                name: Arc::from(spec.name.as_str()),
                rotation: Rotation {
                    max_size: cfg.max_size,
                    backups: cfg.backups,
                },
                timestamps: cfg.timestamps,
                prefix: cfg.prefix,
                stats: Arc::default(),
            }),
            stdout: spec.stdout_log.clone(),
            stderr: spec.stderr_log.clone(),
            pipes: None,
        }
    }

    /// The counters `status` shows.
    pub fn stats(&self) -> Arc<LogStats> {
        Arc::clone(&self.common.stats)
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
            let common = &self.common;
            let [old_out, old_err] = handover::take(&common.name).unwrap_or([None, None]);
            let stdout = start_pipe(Stream::Stdout, &self.stdout, common, old_out)?;
            let stderr = start_pipe(Stream::Stderr, &self.stderr, common, old_err)?;
            let raw = |p: &Option<Pipe>| p.as_ref().map(|p| [p.read_fd, p.write.as_raw_fd()]);
            common.stats.set_pipe_fds([raw(&stdout), raw(&stderr)]);
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
                let name = Arc::clone(&self.common.name);
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
                let waits = self.broadcast(|reply| StreamRequest::Reopen { reply });
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
                let waits = self.broadcast(|reply| StreamRequest::Flush { reply });
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
        let name = Arc::clone(&self.common.name);
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
        make: impl Fn(oneshot::Sender<T>) -> StreamRequest,
    ) -> Vec<oneshot::Receiver<T>> {
        let Some(pipes) = &self.pipes else {
            return Vec::new();
        };
        let mut waits = Vec::new();
        for pipe in [&pipes.stdout, &pipes.stderr].into_iter().flatten() {
            let (tx, rx) = oneshot::channel();
            // A full queue means a request of the same kind is pending anyway.
            if pipe.send(make(tx)).is_ok() {
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
    let target = match dest {
        LogDest::File(path) => Target::File(Arc::clone(path)),
        LogDest::Inherit => Target::Inherit(Arc::default()),
        LogDest::Discard | LogDest::Stdout => return Ok(None),
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
    let capture = Capture::new(stream, target, Arc::clone(common), id);
    let requests = capture.requests();
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
