//! Why a process is in its state, as a value: the machine records a [`Why`],
//! and words are made from it only where they are shown (`ctl status`,
//! `ctl events`, minder's log, hook variables), by its `Display`.

use std::fmt;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::process::{ProcessEnd, SpawnError};
use crate::text::short_duration;

/// Why a process is in its state; [`Why::None`] when there is nothing to say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Why {
    /// Nothing to say (a process started on request and running).
    #[default]
    None,
    /// `ctl stop` (or a reload) while it waited in backoff.
    StoppedInBackoff,
    /// It ended by itself, and the restart policy keeps it down or restarts it.
    Ended(ProcessEnd),
    /// It ended after minder asked it to stop.
    Stopped(ProcessEnd),
    /// It ended before it was ready.
    EndedBeforeReady(ProcessEnd),
    /// The spawn failed: where, and the OS error.
    SpawnFailed(SpawnError),
    /// It did not get ready in time.
    NotReady {
        /// The time it had (`start_period`, `ready_timeout`).
        within: Duration,
        /// Readiness is `READY=1` on the notify socket (else a probe).
        notify: bool,
        /// The last failed probe of the start period, if any.
        probe: Option<String>,
    },
    /// A probe failed during the start period, where failures do not count.
    ProbeFailedWhileStarting {
        /// What the probe saw.
        probe: String,
    },
    /// Probes fail, not yet `failure_threshold` times in a row.
    ProbeFailing {
        /// Consecutive failures so far.
        failures: u32,
        /// `failure_threshold`.
        threshold: u32,
        /// What the last probe saw.
        probe: String,
    },
    /// `failure_threshold` probes failed in a row.
    Unhealthy {
        /// What the last probe saw.
        probe: String,
    },
    /// No `WATCHDOG=1` within `watchdog`.
    WatchdogTimeout {
        /// The configured `watchdog` interval.
        after: Duration,
    },
    /// The program sent `WATCHDOG=trigger`.
    WatchdogTriggered,
    /// Running again after an automatic restart this caused.
    RestartedAfter(Box<Why>),
    /// `max_retries` consecutive failed starts: minder gave up.
    GaveUp {
        /// Failed starts counted.
        failures: u32,
        /// Why the last one failed.
        last: Box<Why>,
    },
    /// The replacement of a rolling restart failed; the old process serves on.
    RolloutFailed {
        /// Why the replacement failed.
        cause: Box<Why>,
        /// The old process, current again.
        serving: Pid,
    },
    /// Text saved by the image before a `ctl reexec` (only shown, never decided on).
    Handed(String),
}

impl Why {
    /// Whether there is nothing to say.
    pub fn is_none(&self) -> bool {
        *self == Why::None
    }

    /// The probe message inside, if this is about a failed probe.
    pub fn probe(&self) -> Option<&str> {
        match self {
            Why::ProbeFailedWhileStarting { probe }
            | Why::ProbeFailing { probe, .. }
            | Why::Unhealthy { probe } => Some(probe),
            _ => None,
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::None => Ok(()),
            Why::StoppedInBackoff => f.write_str("stopped by request during backoff"),
            Why::Ended(end) => write!(f, "{end}"),
            Why::Stopped(end) => write!(f, "{end} (stopped by request)"),
            Why::EndedBeforeReady(end) => write!(f, "{end} before it was ready"),
            Why::SpawnFailed(e) => write!(f, "spawn failed: {e}"),
            Why::NotReady {
                within,
                notify: true,
                ..
            } => write!(f, "no READY=1 within {}", short_duration(*within)),
            Why::NotReady {
                within,
                notify: false,
                probe,
            } => {
                write!(f, "not ready within {}", short_duration(*within))?;
                match probe {
                    Some(probe) => write!(f, ": {probe}"),
                    None => Ok(()),
                }
            }
            Why::ProbeFailedWhileStarting { probe } => f.write_str(probe),
            Why::ProbeFailing {
                failures,
                threshold,
                probe,
            } => write!(f, "probe failed ({failures}/{threshold}): {probe}"),
            Why::Unhealthy { probe } => write!(f, "unhealthy: {probe}"),
            Why::WatchdogTimeout { after } => write!(
                f,
                "watchdog timeout: no WATCHDOG=1 within {}",
                short_duration(*after)
            ),
            Why::WatchdogTriggered => {
                f.write_str("watchdog triggered by the program (WATCHDOG=trigger)")
            }
            Why::RestartedAfter(cause) => write!(f, "restarted after: {cause}"),
            Why::GaveUp { failures, last } => {
                write!(
                    f,
                    "fatal: gave up after {failures} failed starts; last: {last}"
                )
            }
            Why::RolloutFailed { cause, serving } => write!(
                f,
                "rolling restart failed: {cause}; still serving from pid {serving}"
            ),
            Why::Handed(text) => f.write_str(text),
        }
    }
}

/// Why a request about one process (start, stop, restart, signal, reopen)
/// did not succeed; words by its `Display`, made where they are shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It is not where it was asked to be: its state, and why it is there.
    Down {
        /// The state's name (`backoff`, `fatal`, ...).
        state: &'static str,
        /// Why it is there.
        why: Why,
        /// After a failed rolling restart: the old process, still serving.
        serving: Option<Pid>,
    },
    /// A stop came while it was starting.
    StoppedWhileStarting,
    /// A start came while it was stopping.
    StartedWhileStopping,
    /// A stop came while its start waited for dependencies.
    StoppedWhileWaiting,
    /// A program it depends on did not start.
    Dependency {
        /// The program depended on.
        program: String,
        /// Why it did not start.
        why: Box<Failure>,
    },
    /// A process of a program depended on went down instead of starting.
    DependencyDown {
        /// The process.
        process: String,
        /// Its state's name.
        state: &'static str,
        /// Why it is there.
        why: Why,
    },
    /// The start was given up before it had an outcome.
    Abandoned,
    /// An earlier instance of a rolling restart failed: this one was left serving.
    EarlierInstanceFailed,
    /// The process's actor cannot take the request.
    Unreachable {
        /// The process.
        process: String,
        /// Its queue is full (else it is gone: removed by a reload).
        busy: bool,
    },
    /// A signal could not be sent.
    Signal {
        /// The process.
        process: String,
        /// The signal.
        signal: Signal,
        /// Why.
        errno: Errno,
    },
    /// A signal for a process that has none running.
    NotRunning {
        /// The process.
        process: String,
        /// Its state's name.
        state: &'static str,
    },
    /// Log files that could not be reopened, each with why.
    Reopen(Vec<String>),
    /// The replacement of a rolling restart failed; the old process serves on.
    Rollout(Why),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Down {
                state,
                why,
                serving,
            } => {
                if why.is_none() {
                    write!(f, "not started ({state})")?;
                } else {
                    write!(f, "{why}")?;
                }
                match serving {
                    Some(pid) => write!(f, "; the previous process (pid {pid}) keeps serving"),
                    None => Ok(()),
                }
            }
            Failure::StoppedWhileStarting => f.write_str("stopped while starting"),
            Failure::StartedWhileStopping => f.write_str("started again while stopping"),
            Failure::StoppedWhileWaiting => {
                f.write_str("stop requested while waiting for dependencies")
            }
            Failure::Dependency { program, why } => {
                write!(f, "dependency {program:?} did not start: {why}")
            }
            Failure::DependencyDown {
                process,
                state,
                why,
            } => {
                write!(f, "{process} is {state}: {why}")
            }
            Failure::Abandoned => f.write_str("start was abandoned"),
            Failure::EarlierInstanceFailed => {
                f.write_str("not restarted: an earlier instance failed to")
            }
            Failure::Unreachable {
                process,
                busy: true,
            } => write!(f, "{process}: busy, try again"),
            Failure::Unreachable {
                process,
                busy: false,
            } => {
                write!(f, "{process}: no longer supervised")
            }
            Failure::Signal {
                process,
                signal,
                errno,
            } => write!(f, "{process}: {}: {}", signal.as_str(), errno.desc()),
            Failure::NotRunning { process, state } => write!(f, "{process}: not running ({state})"),
            Failure::Reopen(errors) => f.write_str(&errors.join("; ")),
            Failure::Rollout(why) => write!(f, "{why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::SpawnStage;

    /// The words are what `ctl status`, `ctl events` and hooks have always
    /// shown: scripts match on them.
    #[test]
    fn each_reason_reads_as_before() {
        let exited = || Box::new(Why::Ended(ProcessEnd::Exited(1)));
        let cases: Vec<(Why, &str)> = vec![
            (Why::None, ""),
            (Why::StoppedInBackoff, "stopped by request during backoff"),
            (Why::Ended(ProcessEnd::Signaled(9)), "killed by SIGKILL"),
            (
                Why::Stopped(ProcessEnd::Signaled(15)),
                "killed by SIGTERM (stopped by request)",
            ),
            (
                Why::EndedBeforeReady(ProcessEnd::Exited(2)),
                "exited with code 2 before it was ready",
            ),
            (
                Why::SpawnFailed(SpawnError::plain(
                    SpawnStage::Exec,
                    "exec \"/x\": No such file or directory".into(),
                )),
                "spawn failed: exec \"/x\": No such file or directory",
            ),
            (
                Why::NotReady {
                    within: Duration::from_secs(5),
                    notify: true,
                    probe: None,
                },
                "no READY=1 within 5s",
            ),
            (
                Why::NotReady {
                    within: Duration::from_secs(10),
                    notify: false,
                    probe: Some("GET /: 503".into()),
                },
                "not ready within 10s: GET /: 503",
            ),
            (
                Why::ProbeFailing {
                    failures: 2,
                    threshold: 3,
                    probe: "GET /: 503".into(),
                },
                "probe failed (2/3): GET /: 503",
            ),
            (
                Why::Unhealthy {
                    probe: "GET /: 503".into(),
                },
                "unhealthy: GET /: 503",
            ),
            (
                Why::WatchdogTimeout {
                    after: Duration::from_secs(2),
                },
                "watchdog timeout: no WATCHDOG=1 within 2s",
            ),
            (
                Why::RestartedAfter(exited()),
                "restarted after: exited with code 1",
            ),
            (
                Why::GaveUp {
                    failures: 4,
                    last: exited(),
                },
                "fatal: gave up after 4 failed starts; last: exited with code 1",
            ),
            (
                Why::RolloutFailed {
                    cause: exited(),
                    serving: Pid::from_raw(4242),
                },
                "rolling restart failed: exited with code 1; still serving from pid 4242",
            ),
        ];
        for (why, words) in cases {
            assert_eq!(why.to_string(), words, "{why:?}");
        }
    }

    #[test]
    fn only_probe_reasons_carry_a_probe_message() {
        let probe = "GET /: 503".to_string();
        assert_eq!(
            Why::Unhealthy {
                probe: probe.clone()
            }
            .probe(),
            Some("GET /: 503")
        );
        assert_eq!(
            Why::ProbeFailedWhileStarting { probe }.probe(),
            Some("GET /: 503")
        );
        assert_eq!(Why::Ended(ProcessEnd::Exited(1)).probe(), None);
    }

    /// What `ctl start`/`stop`/`restart` print for a process that failed
    /// reads as it always has.
    #[test]
    fn each_failure_reads_as_before() {
        let exited = || Why::Ended(ProcessEnd::Exited(1));
        let cases: Vec<(Failure, &str)> = vec![
            (
                Failure::Down {
                    state: "backoff",
                    why: exited(),
                    serving: None,
                },
                "exited with code 1",
            ),
            (
                Failure::Down {
                    state: "stopped",
                    why: Why::None,
                    serving: Some(Pid::from_raw(4241)),
                },
                "not started (stopped); the previous process (pid 4241) keeps serving",
            ),
            (Failure::StoppedWhileStarting, "stopped while starting"),
            (
                Failure::StartedWhileStopping,
                "started again while stopping",
            ),
            (
                Failure::StoppedWhileWaiting,
                "stop requested while waiting for dependencies",
            ),
            (
                Failure::Dependency {
                    program: "db".into(),
                    why: Box::new(Failure::DependencyDown {
                        process: "db".into(),
                        state: "fatal",
                        why: exited(),
                    }),
                },
                "dependency \"db\" did not start: db is fatal: exited with code 1",
            ),
            (Failure::Abandoned, "start was abandoned"),
            (
                Failure::EarlierInstanceFailed,
                "not restarted: an earlier instance failed to",
            ),
            (
                Failure::Unreachable {
                    process: "web:1".into(),
                    busy: true,
                },
                "web:1: busy, try again",
            ),
            (
                Failure::Unreachable {
                    process: "web:1".into(),
                    busy: false,
                },
                "web:1: no longer supervised",
            ),
            (
                Failure::Signal {
                    process: "web".into(),
                    signal: Signal::SIGHUP,
                    errno: Errno::EPERM,
                },
                "web: SIGHUP: Operation not permitted",
            ),
            (
                Failure::NotRunning {
                    process: "web".into(),
                    state: "stopped",
                },
                "web: not running (stopped)",
            ),
            (
                Failure::Reopen(vec!["a: denied".into(), "b: gone".into()]),
                "a: denied; b: gone",
            ),
        ];
        for (failure, words) in cases {
            assert_eq!(failure.to_string(), words, "{failure:?}");
        }
    }
}
