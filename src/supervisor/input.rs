//! What the supervisor takes ([`Input`]) and what it answers: an
//! [`Answer`] per process, or a [`Refusal`] of the whole request. Made by
//! the layers above (`control/dispatch.rs` maps the wire to these).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::{broadcast, oneshot};

use super::state::{Failure, Outcome};
use super::{ProcessHandle, ProcessStatus, ReloadReport, Transition};
use crate::config::Config;
use crate::logs::{Stream, TailReply};

/// A request to the supervisor loop; the queue is bounded, so a flood is
/// answered as busy by whoever sends.
#[derive(Debug)]
pub enum Input {
    /// The status of the named processes or programs (all when empty).
    Status {
        /// Process or program names, or `all`.
        names: Vec<String>,
        /// Called with their statuses as published, in config order.
        view: StatusView,
    },
    /// Do something to the named processes or programs.
    Act {
        /// What.
        action: Act,
        /// Process or program names, or `all`.
        names: Vec<String>,
        /// Reply once every process has settled (else at once, with no results).
        wait: bool,
        /// One answer per process.
        reply: oneshot::Sender<Result<Vec<Answer>, Refusal>>,
    },
    /// Re-read the config file and apply it; SIGHUP sends `None`.
    Reload(Option<oneshot::Sender<Result<ReloadReport, Refusal>>>),
    /// Hand everything over to this binary, which passed its checks with the
    /// config in force then (`ctl reexec`). Replies only if that failed.
    Reexec {
        /// The new image.
        binary: PathBuf,
        /// The config it was checked against; a reload since refuses.
        checked: Arc<Config>,
        /// Why not.
        reply: oneshot::Sender<Refusal>,
    },
    /// The captured output of one process, and with `follow` what comes.
    Tail {
        /// One process name.
        name: String,
        /// Which stream.
        stream: Stream,
        /// Lines of history.
        lines: usize,
        /// Keep sending new output.
        follow: bool,
        /// The history and the stream.
        reply: oneshot::Sender<Result<TailStart, Refusal>>,
    },
    /// SIGUSR1: reopen every captured log file.
    ReopenLogs,
    /// Follow the transitions of the named processes (all when empty).
    Subscribe {
        /// Process or program names, or `all`.
        names: Vec<String>,
        /// The subscription.
        reply: oneshot::Sender<Result<Subscription, Refusal>>,
    },
    /// Every process, in config order (`/metrics`, systemd's `STATUS=`).
    Snapshot(oneshot::Sender<Vec<ProcessHandle>>),
    /// Answered as soon as the loop gets to it (`/healthz`, systemd's watchdog).
    Ping(oneshot::Sender<()>),
    /// SIGTERM/SIGINT: the first stops everything in order, the second kills.
    Terminate,
    /// `ctl shutdown`: like `Terminate`, answered once everything is stopped.
    Shutdown(oneshot::Sender<()>),
}

/// What a layer above makes of statuses ([`Input::Status`]): called by the
/// supervisor's loop in the same step the statuses are taken, so whatever
/// it makes for one request (a `status` reply is thousands of small
/// strings) is made and freed at once. Made and freed later, after other
/// tasks ran (a thousand processes starting), it would sit among their
/// long-lived allocations and keep memory from going back to the system.
pub struct StatusView(Box<dyn FnOnce(Result<Vec<ProcessStatus>, Refusal>) + Send>);

impl StatusView {
    /// A view that calls `show`.
    pub fn new(
        show: impl FnOnce(Result<Vec<ProcessStatus>, Refusal>) + Send + 'static,
    ) -> StatusView {
        StatusView(Box::new(show))
    }

    /// Shows these statuses (or the refusal), now.
    pub(super) fn show(self, statuses: Result<Vec<ProcessStatus>, Refusal>) {
        (self.0)(statuses)
    }
}

impl fmt::Debug for StatusView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusView")
    }
}

/// What [`Input::Act`] does to each process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Start, after what it depends on.
    Start,
    /// Stop, after what depends on it.
    Stop,
    /// Stop and start; rolling for programs with `listen` sockets.
    Restart,
    /// Send a signal to the process group.
    Signal(Signal),
    /// Reopen the log files.
    ReopenLogs,
}

/// What became of a request for one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The process.
    pub name: String,
    /// Done, or failed and why.
    pub outcome: Outcome,
}

impl Answer {
    pub(super) fn new(name: &str, outcome: Outcome) -> Answer {
        Answer {
            name: name.to_string(),
            outcome,
        }
    }
}

/// Why a request was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A request that needs names had none.
    NoName,
    /// These names match no process or program.
    Unknown(Vec<String>),
    /// A request for one process named a program with several.
    NotOne {
        /// The name given.
        name: String,
        /// How many processes it names.
        count: usize,
    },
    /// Shutdown has begun.
    ShuttingDown,
    /// The one process named cannot take the request.
    Process(Failure),
    /// It could not be done, and why.
    Failed(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoName => f.write_str("no process named"),
            Refusal::Unknown(names) => {
                write!(f, "no such process or program: {}", names.join(", "))
            }
            Refusal::NotOne { name, count } => {
                write!(f, "{name:?} names {count} processes; give one process name")
            }
            Refusal::ShuttingDown => f.write_str("minder is shutting down"),
            Refusal::Process(failure) => write!(f, "{failure}"),
            Refusal::Failed(why) => f.write_str(why),
        }
    }
}

/// An accepted [`Input::Subscribe`]: the stream and what to pick from it.
#[derive(Debug)]
pub struct Subscription {
    /// The processes followed, in config order.
    pub following: Vec<String>,
    /// Every transition from the moment of the request.
    pub transitions: broadcast::Receiver<Arc<Transition>>,
    /// Process or program names to keep; empty keeps everything.
    pub(super) names: Vec<String>,
}

impl Subscription {
    /// Whether the subscriber asked for this transition.
    pub fn wants(&self, transition: &Transition) -> bool {
        self.follows(&transition.process, &transition.program)
    }

    /// Whether the subscriber follows this process (of this program).
    pub fn follows(&self, process: &str, program: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|n| n == process || n == program)
    }
}

/// The answer to a `tail` request.
#[derive(Debug)]
pub struct TailStart {
    /// The process.
    pub name: String,
    /// History and, with `follow`, the stream.
    pub reply: TailReply,
}

/// Capacity of the supervisor's input queue.
pub const INPUT_QUEUE: usize = 256;
