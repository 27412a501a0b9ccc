//! The life cycle of one process as a pure state machine.
//!
//! [`Machine::step`] takes an event and the current time and returns the
//! effects to carry out; it does no I/O and reads no clock, so every
//! transition is unit-tested with plain values. The actor (`actor.rs`) owns a
//! `Machine`, feeds it events and performs the effects.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::backoff;
use crate::config::{OnUnhealthy, ProgramConfig, RestartPolicy};
use crate::notify::NotifyMessage;
use crate::process::{ProcessEnd, SpawnError};

mod why;
pub use why::{Failure, Why};

/// Where a process is in its life cycle (SPEC §3), with the data each state needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not running, not wanted.
    Stopped,
    /// A spawn was decided and is being carried out (never observed outside `step`'s caller).
    Spawning,
    /// Spawned, not yet ready.
    Starting {
        /// The child.
        pid: Pid,
        /// When it was spawned.
        started: Instant,
    },
    /// Ready.
    Running {
        /// The child.
        pid: Pid,
        /// When it was spawned.
        started: Instant,
    },
    /// Failed to start or died; waiting to retry.
    Backoff {
        /// When the retry happens.
        until: Instant,
    },
    /// Stop signal sent, waiting for the exit; or, while `draining`, taken
    /// out of the load balancers and waiting `register.drain` to send it.
    Stopping {
        /// The child.
        pid: Pid,
        /// When it was spawned (uptime keeps counting while it stops).
        started: Instant,
        /// When the stop signal was sent (while draining: when the drain began).
        since: Instant,
        /// The stop signal is not sent yet: in-flight requests finish first.
        draining: bool,
        /// SIGKILL already sent.
        killed: bool,
        /// What happens once it has exited.
        then: AfterStop,
    },
    /// Ended, and the restart policy keeps it down.
    Exited,
    /// Gave up after `max_retries` consecutive failed starts.
    Fatal,
}

/// What a stopping process turns into once it has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// `stopped`.
    Stay,
    /// Spawn again (a requested restart).
    Start,
    /// The program left the config: the actor ends.
    Remove,
    /// Stopped by minder itself (unhealthy, watchdog, not ready in time): go
    /// through the normal backoff; `failed_start` counts it toward `max_retries`.
    Retry {
        /// It never became ready.
        failed_start: bool,
    },
}

/// The previous generation of a process during a rolling restart: it keeps
/// serving (on the shared `listen` sockets) until its replacement is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retiring {
    /// The old process.
    pub pid: Pid,
    /// When it was spawned.
    pub started: Instant,
    /// When it was sent its stop signal (once the replacement was ready).
    pub stop_sent: Option<Instant>,
    /// SIGKILL sent after `stop_timeout`.
    pub killed: bool,
}

/// Whether restarts of this program are rolling (it has `listen` sockets).
pub fn rolling(cfg: &ProgramConfig) -> bool {
    !cfg.listen.is_empty()
}

/// Whether a restart of this program's processes goes one at a time, each
/// ready before the next is touched: rolling ones, and those registered with
/// load balancers, so that the others keep taking the traffic.
pub fn one_at_a_time(cfg: &ProgramConfig) -> bool {
    rolling(cfg) || cfg.register.is_some()
}

/// Health as `status` shows it (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check configured, or no live process to check.
    None,
    /// Checked, not yet healthy (inside the start period).
    Starting,
    /// The last `success_threshold` probes succeeded.
    Healthy,
    /// `failure_threshold` consecutive probes failed.
    Unhealthy,
}

impl Health {
    /// The name SPEC §3 uses.
    pub fn name(&self) -> &'static str {
        match self {
            Health::None => "none",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// What decides that a process is ready (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The first health probe success; none within `start_period` is a failed start.
    Probe,
    /// `READY=1` on the notify socket within `ready_timeout`.
    Notify,
    /// Alive for `start_secs`.
    Timer,
}

impl Readiness {
    /// The readiness rule of a program.
    pub fn of(cfg: &ProgramConfig) -> Readiness {
        if cfg.health.is_some() {
            Readiness::Probe
        } else if cfg.notify {
            Readiness::Notify
        } else {
            Readiness::Timer
        }
    }
}

/// An input to the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Start requested (ctl, autostart, or a dependant needing it).
    Start,
    /// Stop requested.
    Stop,
    /// Restart requested.
    Restart,
    /// The program was removed from the config: stop, then end.
    Remove,
    /// The spawn decided by [`Effect::Spawn`] succeeded.
    Spawned(Pid),
    /// The spawn decided by [`Effect::Spawn`] failed: where, and the OS error.
    SpawnFailed(SpawnError),
    /// The reaper collected the child.
    Exited(ProcessEnd),
    /// The time returned by [`Machine::deadline`] has come.
    Deadline,
    /// A health probe of process `pid` finished.
    Probe {
        /// The process probed (a result for an earlier process is ignored).
        pid: Pid,
        /// Healthy.
        ok: bool,
        /// What was seen, in words (`GET http://...: 503`).
        message: String,
    },
    /// The retiring process of a rolling restart ended.
    RetiredExited(ProcessEnd),
    /// A message from process `pid` on the notify socket.
    Notify {
        /// The sender (only the main process is listened to).
        pid: Pid,
        /// What it said.
        message: NotifyMessage,
    },
}

/// Something the actor must do on the machine's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Spawn the process, then feed back `Spawned` or `SpawnFailed`.
    Spawn,
    /// Send a signal to the process, or to its process group.
    Signal {
        /// The child (and process group id).
        pid: Pid,
        /// What to send.
        signal: Signal,
        /// Signal the whole group.
        group: bool,
    },
    /// The process is gone and the program was removed: end the actor.
    Removed,
    /// `MAINPID=`: track this process's exit instead of the spawned one's.
    Adopt(Pid),
    /// Rolling restart: the current process keeps serving as the retiring
    /// one; its exit now arrives as [`Event::RetiredExited`].
    Retire,
    /// The replacement never became ready: the retiring process is the
    /// current one again (its exit arrives as [`Event::Exited`] again), and
    /// waiting requests fail with this reason.
    RolloutFailed(Why),
}

/// Whether a request waiting on this process is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not yet.
    Pending,
    /// Done as asked.
    Done,
    /// Failed, and why.
    Failed(Failure),
}

/// One process's state plus the counters that survive across its runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// The current state.
    pub state: State,
    /// Consecutive failed starts (reset once a start succeeds or on a requested start).
    pub failures: u32,
    /// Position in the backoff sequence (reset after a run of `reset_after`).
    pub backoff_step: u32,
    /// Automatic restarts so far.
    pub restarts: u32,
    /// Processes the kernel's OOM killer ended so far (not kept across `reexec`).
    pub oom_kills: u32,
    /// How the last run ended.
    pub last_end: Option<ProcessEnd>,
    /// Why the process is in its state.
    pub description: Why,
    /// When the state last changed (for "2m ago").
    pub changed: Instant,
    /// Health of the live process.
    pub health: Health,
    /// Consecutive failed probes.
    pub probe_failures: u32,
    /// Consecutive successful probes.
    pub probe_successes: u32,
    /// When the next `WATCHDOG=1` is due (running with `watchdog` only).
    pub watchdog_due: Option<Instant>,
    /// The child's last `STATUS=` text.
    pub notify_status: Option<String>,
    /// The old process of a rolling restart in progress.
    pub retiring: Option<Retiring>,
    /// The program left the config while a retiring process was still
    /// draining: [`Effect::Removed`] waits for its exit (and SIGKILL).
    pub removing: bool,
}

impl State {
    /// The state's name as SPEC §3 spells it.
    pub fn name(&self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Spawning | State::Starting { .. } => "starting",
            State::Running { .. } => "running",
            State::Backoff { .. } => "backoff",
            State::Stopping { .. } => "stopping",
            State::Exited => "exited",
            State::Fatal => "fatal",
        }
    }

    /// The live child and when it was spawned, if any.
    fn live(&self) -> Option<(Pid, Instant)> {
        match *self {
            State::Starting { pid, started }
            | State::Running { pid, started }
            | State::Stopping { pid, started, .. } => Some((pid, started)),
            State::Stopped
            | State::Spawning
            | State::Backoff { .. }
            | State::Exited
            | State::Fatal => None,
        }
    }

    /// The live child, if any.
    pub fn pid(&self) -> Option<Pid> {
        self.live().map(|(pid, _)| pid)
    }

    /// When the live child was spawned, if any.
    pub fn started(&self) -> Option<Instant> {
        self.live().map(|(_, started)| started)
    }

    /// In `backoff`: how long from `now` until the next attempt (zero once
    /// it is due but not yet made).
    pub fn next_start_in(&self, now: Instant) -> Option<Duration> {
        match *self {
            State::Backoff { until } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }
}

/// Whether the restart policy brings a process back after `end`.
pub fn wants_restart(cfg: &ProgramConfig, end: ProcessEnd) -> bool {
    match cfg.restart {
        RestartPolicy::Always => true,
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => match end {
            ProcessEnd::Exited(code) => !cfg.exit_codes.contains(&code),
            ProcessEnd::Signaled(_) | ProcessEnd::OomKilled { .. } => true,
        },
    }
}

impl Machine {
    /// A machine in `stopped`.
    pub fn new(now: Instant) -> Machine {
        Machine {
            state: State::Stopped,
            failures: 0,
            backoff_step: 0,
            restarts: 0,
            oom_kills: 0,
            last_end: None,
            description: Why::None,
            changed: now,
            health: Health::None,
            probe_failures: 0,
            probe_successes: 0,
            watchdog_due: None,
            notify_status: None,
            retiring: None,
            removing: false,
        }
    }

    /// When [`Event::Deadline`] must be fed next, if a timer is running.
    pub fn deadline(&self, cfg: &ProgramConfig) -> Option<Instant> {
        let retiring = self.retiring.and_then(|r| match r {
            Retiring {
                stop_sent: Some(since),
                killed: false,
                ..
            } => Some(kill_at(since, cfg)),
            _ => None,
        });
        match (self.state_deadline(cfg), retiring) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn state_deadline(&self, cfg: &ProgramConfig) -> Option<Instant> {
        match self.state {
            State::Starting { started, .. } => Some(after(started, ready_within(cfg))),
            State::Running { .. } => self.watchdog_due,
            State::Backoff { until } => Some(until),
            State::Stopping {
                since,
                draining: true,
                ..
            } => Some(after(since, drain(cfg))),
            State::Stopping {
                since,
                killed: false,
                ..
            } => Some(kill_at(since, cfg)),
            State::Stopping { killed: true, .. }
            | State::Stopped
            | State::Spawning
            | State::Exited
            | State::Fatal => None,
        }
    }

    /// Applies one event. `sample` is a uniform random number in `[-1, 1]` for backoff jitter.
    pub fn step(
        &mut self,
        cfg: &ProgramConfig,
        event: Event,
        now: Instant,
        sample: f64,
    ) -> Vec<Effect> {
        let before = self.state;
        let mut effects = Vec::new();
        if let Event::Exited(ProcessEnd::OomKilled { .. })
        | Event::RetiredExited(ProcessEnd::OomKilled { .. }) = event
        {
            self.oom_kills += 1;
        }
        let event = match event {
            Event::Deadline => {
                effects.extend(self.retiring_deadline(cfg, now));
                Event::Deadline
            }
            Event::Stop | Event::Remove => {
                effects.extend(self.stop_retiring(cfg, now));
                event
            }
            // Removal wins over anything asked later (see `set_after_stop`).
            Event::Start | Event::Restart if self.removing => return effects,
            other => other,
        };
        effects.extend(self.transition(cfg, event, now, sample));
        if self.state != before {
            self.changed = now;
        }
        if self.state.pid().is_none() {
            self.health = Health::None;
            self.watchdog_due = None;
            self.notify_status = None;
        }
        effects
    }

    /// SIGKILL for a retiring process that outlived `stop_timeout`.
    fn retiring_deadline(&mut self, cfg: &ProgramConfig, now: Instant) -> Vec<Effect> {
        match &mut self.retiring {
            Some(old) if !old.killed && old.stop_sent.is_some_and(|s| now >= kill_at(s, cfg)) => {
                old.killed = true;
                vec![Effect::Signal {
                    pid: old.pid,
                    signal: Signal::SIGKILL,
                    group: cfg.kill_group,
                }]
            }
            _ => Vec::new(),
        }
    }

    /// Sends the retiring process its stop signal (once), if there is one.
    fn stop_retiring(&mut self, cfg: &ProgramConfig, now: Instant) -> Vec<Effect> {
        match &mut self.retiring {
            Some(old) if old.stop_sent.is_none() => {
                let (signal, killed) = first_stop_signal(cfg);
                old.stop_sent = Some(now);
                old.killed = killed;
                vec![Effect::Signal {
                    pid: old.pid,
                    signal,
                    group: cfg.kill_group,
                }]
            }
            _ => Vec::new(),
        }
    }

    /// Starts a replacement while the running process keeps serving.
    fn begin_rollout(&mut self, pid: Pid, started: Instant) -> Vec<Effect> {
        self.retiring = Some(Retiring {
            pid,
            started,
            stop_sent: None,
            killed: false,
        });
        let mut effects = vec![Effect::Retire];
        effects.extend(self.spawn());
        effects
    }

    /// The replacement failed before it was ready: the retiring process,
    /// still serving, becomes the current one again. `None` when there is no
    /// rollout to undo (then the failure takes its normal course).
    fn undo_rollout(&mut self, cfg: &ProgramConfig, cause: &Why) -> Option<Vec<Effect>> {
        let old = self.retiring.filter(|r| r.stop_sent.is_none())?;
        self.retiring = None;
        self.state = State::Running {
            pid: old.pid,
            started: old.started,
        };
        // Count failures afresh: the next unhealthy verdict needs a full
        // failure_threshold again, which also spaces out repeated attempts.
        self.probe_failures = 0;
        self.probe_successes = 0;
        if cfg.health.is_some() {
            self.health = Health::Healthy;
        }
        self.description = Why::RolloutFailed {
            cause: Box::new(cause.clone()),
            serving: old.pid,
        };
        Some(vec![Effect::RolloutFailed(self.description.clone())])
    }

    fn transition(
        &mut self,
        cfg: &ProgramConfig,
        event: Event,
        now: Instant,
        sample: f64,
    ) -> Vec<Effect> {
        match (self.state, event) {
            // --- requests ---------------------------------------------------
            (
                State::Stopped | State::Exited | State::Fatal | State::Backoff { .. },
                Event::Start,
            )
            | (
                State::Stopped | State::Exited | State::Fatal | State::Backoff { .. },
                Event::Restart,
            ) => {
                self.failures = 0;
                self.backoff_step = 0;
                self.spawn()
            }
            (State::Spawning | State::Starting { .. } | State::Running { .. }, Event::Start) => {
                Vec::new()
            }
            (State::Stopping { .. }, Event::Start | Event::Restart) => {
                self.set_after_stop(AfterStop::Start);
                Vec::new()
            }
            (State::Starting { pid, started } | State::Running { pid, started }, Event::Stop) => {
                self.begin_stop(cfg, pid, started, now, AfterStop::Stay)
            }
            (State::Running { pid, started }, Event::Restart)
                if rolling(cfg) && self.retiring.is_none() =>
            {
                self.failures = 0;
                self.backoff_step = 0;
                self.begin_rollout(pid, started)
            }
            (
                State::Starting { pid, started } | State::Running { pid, started },
                Event::Restart,
            ) => self.begin_stop(cfg, pid, started, now, AfterStop::Start),
            (State::Starting { pid, started } | State::Running { pid, started }, Event::Remove) => {
                self.begin_stop(cfg, pid, started, now, AfterStop::Remove)
            }
            (State::Stopping { .. }, Event::Stop) => {
                self.set_after_stop(AfterStop::Stay);
                Vec::new()
            }
            (State::Stopping { .. }, Event::Remove) => {
                self.set_after_stop(AfterStop::Remove);
                Vec::new()
            }
            (State::Backoff { .. }, Event::Stop) => {
                self.state = State::Stopped;
                self.description = Why::StoppedInBackoff;
                Vec::new()
            }
            (State::Stopped | State::Exited | State::Fatal, Event::Stop) => {
                self.state = State::Stopped;
                Vec::new()
            }
            (
                State::Stopped | State::Exited | State::Fatal | State::Backoff { .. },
                Event::Remove,
            ) => self.removed(),
            // The actor feeds the spawn result right after `Effect::Spawn`, so no
            // request can arrive in `Spawning`; ignoring one is the safe answer.
            (State::Spawning, Event::Stop | Event::Restart | Event::Remove) => Vec::new(),

            // --- spawn results ------------------------------------------------
            (State::Spawning, Event::Spawned(pid)) => {
                self.probe_failures = 0;
                self.probe_successes = 0;
                if cfg.health.is_some() {
                    self.health = Health::Starting;
                }
                if Readiness::of(cfg) == Readiness::Timer && cfg.start_secs.is_zero() {
                    self.ready(cfg, pid, now)
                } else {
                    self.state = State::Starting { pid, started: now };
                    Vec::new()
                }
            }
            // Exec failures are also reported after the fact, with the exit
            // of a child that never ran the program (see `PendingReport`).
            (
                State::Spawning | State::Starting { .. } | State::Running { .. },
                Event::SpawnFailed(error),
            ) => self.failed_start(cfg, Why::SpawnFailed(error), now, sample),

            // --- exits --------------------------------------------------------
            (State::Starting { .. }, Event::Exited(end)) => {
                self.last_end = Some(end);
                if wants_restart(cfg, end) {
                    self.failed_start(cfg, Why::EndedBeforeReady(end), now, sample)
                } else if let Some(effects) = self.undo_rollout(cfg, &Why::Ended(end)) {
                    effects
                } else {
                    self.state = State::Exited;
                    self.description = Why::Ended(end);
                    Vec::new()
                }
            }
            (State::Running { started, .. }, Event::Exited(end)) => {
                self.last_end = Some(end);
                if now.saturating_duration_since(started) >= cfg.backoff.reset_after {
                    self.backoff_step = 0;
                }
                if wants_restart(cfg, end) {
                    self.retry_after(cfg, Why::Ended(end), now, sample)
                } else {
                    self.state = State::Exited;
                    self.description = Why::Ended(end);
                    Vec::new()
                }
            }
            (State::Stopping { pid, then, .. }, Event::Exited(end)) => {
                self.last_end = Some(end);
                // Descendants that outlived the main process would escape the
                // stop. The actor has this done by the reaper as it collects
                // the exit (`Reaper::kill_group_at_exit`), while the group id
                // is certainly theirs; the effect says so to the machine's
                // model, and finds nothing left to signal by then.
                let mut effects = if cfg.kill_group {
                    vec![Effect::Signal {
                        pid,
                        signal: Signal::SIGKILL,
                        group: true,
                    }]
                } else {
                    Vec::new()
                };
                match then {
                    AfterStop::Stay => {
                        self.state = State::Stopped;
                        self.description = Why::Stopped(end);
                    }
                    AfterStop::Start => {
                        self.failures = 0;
                        self.backoff_step = 0;
                        effects.extend(self.spawn());
                    }
                    AfterStop::Remove => effects.extend(self.removed()),
                    AfterStop::Retry { failed_start } => {
                        // The description already says why minder stopped it.
                        let cause = std::mem::take(&mut self.description);
                        effects.extend(if failed_start {
                            self.failed_start(cfg, cause, now, sample)
                        } else {
                            self.retry_after(cfg, cause, now, sample)
                        });
                    }
                }
                effects
            }
            // No live child: an exit cannot belong to this machine.
            (
                State::Stopped
                | State::Spawning
                | State::Backoff { .. }
                | State::Exited
                | State::Fatal,
                Event::Exited(_),
            ) => Vec::new(),
            (
                State::Stopped
                | State::Starting { .. }
                | State::Running { .. }
                | State::Backoff { .. }
                | State::Stopping { .. }
                | State::Exited
                | State::Fatal,
                Event::Spawned(_),
            ) => Vec::new(),
            // A child being stopped that turns out never to have run the
            // program (its exec failed) has exited, with code 127: that is
            // the exit the stop waits for.
            (State::Stopping { .. }, Event::SpawnFailed(_)) => {
                self.transition(cfg, Event::Exited(ProcessEnd::Exited(127)), now, sample)
            }
            (
                State::Stopped | State::Backoff { .. } | State::Exited | State::Fatal,
                Event::SpawnFailed(_),
            ) => Vec::new(),

            // --- timers -------------------------------------------------------
            (State::Starting { pid, started }, Event::Deadline) => {
                if now < after(started, ready_within(cfg)) {
                    return Vec::new();
                }
                match Readiness::of(cfg) {
                    Readiness::Timer => self.ready(cfg, pid, now),
                    readiness => {
                        self.description = Why::NotReady {
                            within: ready_within(cfg),
                            notify: readiness == Readiness::Notify,
                            probe: self.description.probe().map(str::to_string),
                        };
                        self.begin_stop(
                            cfg,
                            pid,
                            started,
                            now,
                            AfterStop::Retry { failed_start: true },
                        )
                    }
                }
            }
            (State::Running { pid, started }, Event::Deadline) => match self.watchdog_due {
                Some(due) if now >= due => {
                    self.description = Why::WatchdogTimeout {
                        after: cfg.watchdog,
                    };
                    self.stop_to_restart(cfg, pid, started, now)
                }
                _ => Vec::new(),
            },
            (State::Backoff { until }, Event::Deadline) => {
                if now >= until {
                    self.restarts += 1;
                    self.spawn()
                } else {
                    Vec::new()
                }
            }
            (
                State::Stopping {
                    pid,
                    since,
                    draining: true,
                    ..
                },
                Event::Deadline,
            ) => {
                if now >= after(since, drain(cfg)) {
                    self.signal_stop(cfg, pid, now)
                } else {
                    Vec::new()
                }
            }
            (
                State::Stopping {
                    pid,
                    since,
                    killed: false,
                    ..
                },
                Event::Deadline,
            ) => {
                if now >= kill_at(since, cfg) {
                    self.kill(cfg, pid)
                } else {
                    Vec::new()
                }
            }
            (
                State::Stopping { killed: true, .. }
                | State::Stopped
                | State::Spawning
                | State::Exited
                | State::Fatal,
                Event::Deadline,
            ) => Vec::new(),

            // --- health probes and notify messages ------------------------------
            (
                State::Starting { pid, started } | State::Running { pid, started },
                Event::Probe {
                    pid: probed,
                    ok,
                    message,
                },
            ) if probed == pid => self.on_probe(cfg, pid, started, ok, message, now),
            // Stopping, or a result about a process that is gone: nothing to decide.
            (_, Event::Probe { .. }) => Vec::new(),
            (
                State::Starting { pid, started }
                | State::Running { pid, started }
                | State::Stopping { pid, started, .. },
                Event::Notify {
                    pid: sender,
                    message,
                },
            ) if sender == pid => self.on_notify(cfg, pid, started, message, now),
            (_, Event::Notify { .. }) => Vec::new(),

            // --- the retiring process of a rolling restart ----------------------
            (_, Event::RetiredExited(_)) => {
                let mut effects = match self.retiring.take() {
                    // Descendants of the old process must not outlive it (done
                    // by the reaper as it collects the exit, as above).
                    Some(old) if cfg.kill_group => vec![Effect::Signal {
                        pid: old.pid,
                        signal: Signal::SIGKILL,
                        group: true,
                    }],
                    _ => Vec::new(),
                };
                if self.removing {
                    effects.push(Effect::Removed);
                }
                effects
            }
        }
    }

    fn on_probe(
        &mut self,
        cfg: &ProgramConfig,
        pid: Pid,
        started: Instant,
        ok: bool,
        message: String,
        now: Instant,
    ) -> Vec<Effect> {
        let Some(health) = &cfg.health else {
            return Vec::new();
        };
        if ok {
            self.probe_failures = 0;
            self.probe_successes = self.probe_successes.saturating_add(1);
        } else {
            self.probe_successes = 0;
            self.probe_failures = self.probe_failures.saturating_add(1);
        }
        match self.state {
            State::Starting { .. } if ok => self.ready(cfg, pid, now),
            // Inside the start period failures do not count; keep the reason.
            State::Starting { .. } => {
                self.description = Why::ProbeFailedWhileStarting { probe: message };
                Vec::new()
            }
            State::Running { .. } if ok => {
                if self.health == Health::Unhealthy
                    && self.probe_successes >= health.success_threshold
                {
                    self.health = Health::Healthy;
                    self.description = Why::None;
                }
                Vec::new()
            }
            State::Running { .. } => {
                if self.probe_failures < health.failure_threshold {
                    self.description = Why::ProbeFailing {
                        failures: self.probe_failures,
                        threshold: health.failure_threshold,
                        probe: message,
                    };
                    return Vec::new();
                }
                self.health = Health::Unhealthy;
                self.description = Why::Unhealthy { probe: message };
                match health.on_unhealthy {
                    OnUnhealthy::None => Vec::new(),
                    // With listen sockets the unhealthy process serves on
                    // until its replacement is ready.
                    OnUnhealthy::Restart if rolling(cfg) && self.retiring.is_none() => {
                        self.restarts += 1;
                        self.begin_rollout(pid, started)
                    }
                    OnUnhealthy::Restart => self.stop_to_restart(cfg, pid, started, now),
                }
            }
            _ => Vec::new(),
        }
    }

    fn on_notify(
        &mut self,
        cfg: &ProgramConfig,
        pid: Pid,
        started: Instant,
        message: NotifyMessage,
        now: Instant,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(status) = message.status {
            self.notify_status = Some(status);
        }
        let mut pid = pid;
        if let Some(main) = message.main_pid.filter(|m| *m != pid) {
            pid = main;
            match &mut self.state {
                State::Starting { pid: p, .. }
                | State::Running { pid: p, .. }
                | State::Stopping { pid: p, .. } => *p = main,
                _ => {}
            }
            effects.push(Effect::Adopt(main));
        }
        let running = matches!(self.state, State::Running { .. });
        if message.watchdog && !cfg.watchdog.is_zero() && running {
            self.watchdog_due = Some(after(now, cfg.watchdog));
        }
        if message.watchdog_trigger && running {
            self.description = Why::WatchdogTriggered;
            effects.extend(self.stop_to_restart(cfg, pid, started, now));
        } else if message.ready
            && matches!(self.state, State::Starting { .. })
            && Readiness::of(cfg) == Readiness::Notify
        {
            effects.extend(self.ready(cfg, pid, now));
        }
        effects
    }

    /// Stopped for good: the actor ends, unless a retiring process still
    /// drains (its stop timeout and SIGKILL are this machine's to run).
    fn removed(&mut self) -> Vec<Effect> {
        self.state = State::Stopped;
        if self.retiring.is_some() {
            self.removing = true;
            return Vec::new();
        }
        vec![Effect::Removed]
    }

    fn spawn(&mut self) -> Vec<Effect> {
        self.state = State::Spawning;
        vec![Effect::Spawn]
    }

    fn ready(&mut self, cfg: &ProgramConfig, pid: Pid, now: Instant) -> Vec<Effect> {
        let started = self.state.started().unwrap_or(now);
        self.state = State::Running { pid, started };
        self.failures = 0;
        if cfg.health.is_some() {
            self.health = Health::Healthy;
        }
        if !cfg.watchdog.is_zero() {
            self.watchdog_due = Some(after(now, cfg.watchdog));
        }
        // The replacement serves now: the retiring process may go.
        let effects = self.stop_retiring(cfg, now);
        self.description = match self.last_end {
            Some(end) if self.restarts > 0 => Why::RestartedAfter(Box::new(Why::Ended(end))),
            _ => Why::None,
        };
        effects
    }

    /// Stops a live process that is to be started again (unhealthy, watchdog):
    /// an automatic restart, not a failed start.
    fn stop_to_restart(
        &mut self,
        cfg: &ProgramConfig,
        pid: Pid,
        started: Instant,
        now: Instant,
    ) -> Vec<Effect> {
        self.begin_stop(
            cfg,
            pid,
            started,
            now,
            AfterStop::Retry {
                failed_start: false,
            },
        )
    }

    fn begin_stop(
        &mut self,
        cfg: &ProgramConfig,
        pid: Pid,
        started: Instant,
        now: Instant,
        then: AfterStop,
    ) -> Vec<Effect> {
        // Only a process that takes traffic has any to finish, and only a
        // requested stop waits: one minder decided on (unhealthy, watchdog,
        // not ready) is out of the balancers already and stops at once.
        let in_balancers = matches!(self.state, State::Running { .. })
            && matches!(self.health, Health::Healthy | Health::None);
        let requested = !matches!(then, AfterStop::Retry { .. });
        self.state = State::Stopping {
            pid,
            started,
            since: now,
            draining: false,
            killed: false,
            then,
        };
        if in_balancers && requested && !drain(cfg).is_zero() {
            if let State::Stopping { draining, .. } = &mut self.state {
                *draining = true;
            }
            return Vec::new();
        }
        self.signal_stop(cfg, pid, now)
    }

    /// Sends the first stop signal of a stopping process (its drain, if
    /// any, is over): the SIGKILL timer runs from now.
    fn signal_stop(&mut self, cfg: &ProgramConfig, pid: Pid, now: Instant) -> Vec<Effect> {
        let (signal, killed_at_once) = first_stop_signal(cfg);
        if let State::Stopping {
            since,
            draining,
            killed,
            ..
        } = &mut self.state
        {
            *since = now;
            *draining = false;
            *killed = killed_at_once;
        }
        vec![Effect::Signal {
            pid,
            signal,
            group: cfg.kill_group,
        }]
    }

    fn kill(&mut self, cfg: &ProgramConfig, pid: Pid) -> Vec<Effect> {
        if let State::Stopping { killed, .. } = &mut self.state {
            *killed = true;
        }
        vec![Effect::Signal {
            pid,
            signal: Signal::SIGKILL,
            group: cfg.kill_group,
        }]
    }

    fn set_after_stop(&mut self, after: AfterStop) {
        if let State::Stopping { then, .. } = &mut self.state {
            // Removal wins over anything asked later: the program is gone from the config.
            if *then != AfterStop::Remove {
                *then = after;
            }
        }
    }

    /// A start that did not reach `running`: counts toward `max_retries`.
    fn failed_start(
        &mut self,
        cfg: &ProgramConfig,
        cause: Why,
        now: Instant,
        sample: f64,
    ) -> Vec<Effect> {
        if let Some(effects) = self.undo_rollout(cfg, &cause) {
            return effects;
        }
        self.failures += 1;
        let max = cfg.backoff.max_retries;
        if max > 0 && self.failures > max {
            self.state = State::Fatal;
            self.description = Why::GaveUp {
                failures: self.failures,
                last: Box::new(cause),
            };
            return Vec::new();
        }
        self.retry_after(cfg, cause, now, sample)
    }

    /// Waits in `backoff` for the next delay, or respawns at once when it is zero.
    fn retry_after(
        &mut self,
        cfg: &ProgramConfig,
        cause: Why,
        now: Instant,
        sample: f64,
    ) -> Vec<Effect> {
        let mut delay = backoff::delay(&cfg.backoff, self.backoff_step, sample);
        if matches!(self.state, State::Spawning) {
            delay = delay.max(MIN_DELAY_AFTER_FAILED_SPAWN);
        }
        self.backoff_step = self.backoff_step.saturating_add(1);
        if delay.is_zero() {
            self.restarts += 1;
            self.description = Why::RestartedAfter(Box::new(cause));
            return self.spawn();
        }
        self.state = State::Backoff {
            until: after(now, delay),
        };
        // The time left is added when the status is shown; it changes every second.
        self.description = cause;
        Vec::new()
    }

    /// Settles a `start`/`restart` request: running is done, any way down is a failure.
    pub fn start_outcome(&self) -> Outcome {
        match self.state {
            State::Running { .. } => Outcome::Done,
            State::Spawning | State::Starting { .. } => Outcome::Pending,
            State::Stopping {
                then: AfterStop::Start,
                ..
            } => Outcome::Pending,
            // A failed replacement of a rolling restart: settled when the
            // rollback is done (`Effect::RolloutFailed`), so the requester
            // sees the old process current again.
            State::Stopping {
                then: AfterStop::Retry { .. },
                ..
            } if self.retiring.is_some_and(|r| r.stop_sent.is_none()) => Outcome::Pending,
            State::Stopping {
                then: AfterStop::Retry { .. },
                ..
            } => Outcome::Failed(self.failure_reason()),
            State::Stopping { .. } => Outcome::Failed(Failure::StoppedWhileStarting),
            State::Backoff { .. } | State::Exited | State::Fatal | State::Stopped => {
                Outcome::Failed(self.failure_reason())
            }
        }
    }

    /// Settles a `stop` request: any state without a live child is done.
    pub fn stop_outcome(&self) -> Outcome {
        if self.retiring.is_some() && self.state.pid().is_none() {
            return Outcome::Pending;
        }
        match self.state {
            State::Stopped | State::Exited | State::Fatal => Outcome::Done,
            State::Stopping {
                then: AfterStop::Stay | AfterStop::Remove,
                ..
            } => Outcome::Pending,
            State::Stopping {
                then: AfterStop::Start | AfterStop::Retry { .. },
                ..
            }
            | State::Spawning
            | State::Starting { .. }
            | State::Running { .. }
            | State::Backoff { .. } => Outcome::Failed(Failure::StartedWhileStopping),
        }
    }

    fn failure_reason(&self) -> Failure {
        Failure::Down {
            state: self.state.name(),
            why: self.description.clone(),
            serving: self
                .retiring
                .filter(|old| old.stop_sent.is_none())
                .map(|old| old.pid),
        }
    }
}

/// How long a starting process has to become ready.
fn ready_within(cfg: &ProgramConfig) -> Duration {
    match (Readiness::of(cfg), &cfg.health) {
        (Readiness::Probe, Some(health)) => health.start_period,
        (Readiness::Notify, _) => cfg.ready_timeout,
        _ => cfg.start_secs,
    }
}

/// `t + d`, saturating: durations come from users and may be absurdly long.
/// A spawn that failed before any process existed (out of file descriptors or
/// memory, log pipes that could not be made) waits at least this long before
/// the next try, even with a zero backoff (systemd's default `RestartSec=`):
/// such a cause takes time to clear, and a retry at once would keep the actor
/// spinning without ever reading its mailbox, so not even a stop got in.
/// A failed exec is reported by the child after the fact, with its exit, and
/// follows the backoff as it is.
const MIN_DELAY_AFTER_FAILED_SPAWN: Duration = Duration::from_millis(100);

/// The first signal of a stop, and whether it is already the final SIGKILL:
/// `stop_signal`, or SIGKILL at once when `stop_timeout` is zero. The same
/// rules stop the current process and the retiring one of a rolling restart.
fn first_stop_signal(cfg: &ProgramConfig) -> (Signal, bool) {
    if cfg.stop_timeout.is_zero() {
        (Signal::SIGKILL, true)
    } else {
        (cfg.stop_signal, false)
    }
}

/// How long a requested stop keeps a process that takes traffic out of the
/// balancers before its stop signal (`register.drain`; zero without `[register]`).
fn drain(cfg: &ProgramConfig) -> Duration {
    cfg.register.as_ref().map_or(Duration::ZERO, |r| r.drain)
}

/// When a process sent its stop signal at `since` is sent SIGKILL.
fn kill_at(since: Instant, cfg: &ProgramConfig) -> Instant {
    after(since, cfg.stop_timeout)
}

fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(t)
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackoffConfig;
    use std::path::PathBuf;

    /// A plain program; the property tests start from it too.
    pub(super) fn cfg() -> ProgramConfig {
        ProgramConfig {
            name: "web".into(),
            file: PathBuf::from("/etc/minder/minder.toml"),
            command: vec!["/bin/web".into()],
            directory: PathBuf::from("/"),
            environment: Vec::new(),
            clear_env: false,
            user: None,
            group: None,
            autostart: true,
            restart: RestartPolicy::Always,
            exit_codes: vec![0],
            start_secs: Duration::from_secs(1),
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            kill_group: true,
            instances: 1,
            port: None,
            depends_on: Vec::new(),
            backoff: BackoffConfig {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(8),
                multiplier: 2.0,
                jitter: 0.0,
                reset_after: Duration::from_secs(60),
                max_retries: 0,
            },
            on_fatal: crate::config::OnFatal::Stay,
            logs: crate::config::LogsConfig::default(),
            health: None,
            notify: false,
            ready_timeout: Duration::from_secs(60),
            watchdog: Duration::ZERO,
            listen: Vec::new(),
            listen_names: Vec::new(),
            listen_mode: 0o660,
            register: None,
            cgroup: true,
            resources: None,
        }
    }

    const PID: Pid = Pid::from_raw(4242);

    fn with_listen(c: ProgramConfig) -> ProgramConfig {
        ProgramConfig {
            listen: vec![crate::config::ListenAddress::Tcp(
                "127.0.0.1:8080".parse().unwrap(),
            )],
            listen_names: vec!["web".into()],
            ..c
        }
    }

    const NEW: Pid = Pid::from_raw(5000);

    /// A spawn that failed with this message.
    pub(super) fn spawn_error(message: &str) -> SpawnError {
        SpawnError::plain(crate::process::SpawnStage::Exec, message.to_string())
    }

    /// A test bench: a machine, its config and a clock that only moves when told.
    struct Bench {
        m: Machine,
        cfg: ProgramConfig,
        t0: Instant,
        now: Instant,
    }

    impl Bench {
        fn new(cfg: ProgramConfig) -> Bench {
            let t0 = Instant::now();
            Bench {
                m: Machine::new(t0),
                cfg,
                t0,
                now: t0,
            }
        }
        fn at(&mut self, ms: u64) -> &mut Self {
            self.now = self.t0 + Duration::from_millis(ms);
            self
        }
        fn feed(&mut self, event: Event) -> Vec<Effect> {
            self.m.step(&self.cfg, event, self.now, 0.0)
        }
        /// Start, spawn succeeds with PID.
        fn started(&mut self) {
            assert_eq!(self.feed(Event::Start), vec![Effect::Spawn]);
            assert_eq!(self.feed(Event::Spawned(PID)), vec![]);
        }
        fn state(&self) -> &'static str {
            self.m.state.name()
        }
        fn backoff_ms(&self) -> u128 {
            match self.m.state {
                State::Backoff { until } => (until - self.now).as_millis(),
                other => panic!("not in backoff: {other:?}"),
            }
        }
    }

    fn term(pid: Pid, group: bool) -> Effect {
        Effect::Signal {
            pid,
            signal: Signal::SIGTERM,
            group,
        }
    }

    fn kill(pid: Pid, group: bool) -> Effect {
        Effect::Signal {
            pid,
            signal: Signal::SIGKILL,
            group,
        }
    }

    #[test]
    fn start_is_starting_until_start_secs_then_running() {
        let mut b = Bench::new(cfg());
        b.started();
        assert_eq!(b.state(), "starting");
        assert_eq!(b.m.deadline(&b.cfg), Some(b.t0 + Duration::from_secs(1)));
        b.at(999).feed(Event::Deadline);
        assert_eq!(
            b.state(),
            "starting",
            "a deadline fed early changes nothing"
        );
        b.at(1000).feed(Event::Deadline);
        assert_eq!(
            b.m.state,
            State::Running {
                pid: PID,
                started: b.t0
            }
        );
        assert_eq!(b.m.deadline(&b.cfg), None, "running has no timer");
    }

    #[test]
    fn zero_start_secs_is_running_at_once() {
        let mut b = Bench::new(ProgramConfig {
            start_secs: Duration::ZERO,
            ..cfg()
        });
        b.started();
        assert_eq!(b.state(), "running");
    }

    #[test]
    fn crash_loop_backoff_grows_and_caps() {
        let mut b = Bench::new(cfg());
        b.started();
        let mut delays = Vec::new();
        let mut t = 0;
        for _ in 0..6 {
            b.at(t).feed(Event::Exited(ProcessEnd::Exited(1)));
            assert_eq!(b.state(), "backoff");
            let d = b.backoff_ms();
            delays.push(d);
            t += d as u64;
            assert_eq!(b.at(t).feed(Event::Deadline), vec![Effect::Spawn]);
            b.feed(Event::Spawned(PID));
        }
        assert_eq!(delays, vec![1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(b.m.restarts, 6);
        assert_eq!(
            b.m.failures, 6,
            "each exit before start_secs is a failed start"
        );
    }

    #[test]
    fn jitter_spreads_the_delay_within_bounds() {
        let c = ProgramConfig {
            backoff: BackoffConfig {
                jitter: 0.5,
                ..cfg().backoff
            },
            ..cfg()
        };
        for (sample, expect) in [(-1.0, 500), (0.0, 1000), (1.0, 1500)] {
            let mut m = Machine::new(Instant::now());
            let now = m.changed;
            m.step(&c, Event::Start, now, 0.0);
            m.step(&c, Event::Spawned(PID), now, 0.0);
            m.step(&c, Event::Exited(ProcessEnd::Exited(1)), now, sample);
            let State::Backoff { until } = m.state else {
                panic!("{:?}", m.state)
            };
            assert_eq!((until - now).as_millis(), expect);
        }
    }

    #[test]
    fn max_retries_leads_to_fatal_after_that_many_retries() {
        let mut b = Bench::new(ProgramConfig {
            backoff: BackoffConfig {
                max_retries: 3,
                ..cfg().backoff
            },
            ..cfg()
        });
        b.started();
        let mut attempts = 1;
        let mut t = 0;
        loop {
            b.at(t).feed(Event::Exited(ProcessEnd::Exited(2)));
            if b.state() == "fatal" {
                break;
            }
            t += b.backoff_ms() as u64;
            b.at(t).feed(Event::Deadline);
            b.feed(Event::Spawned(PID));
            attempts += 1;
            assert!(attempts < 10, "never went fatal");
        }
        assert_eq!(attempts, 4, "max_retries = 3 means at most 4 attempts");
        assert!(
            b.m.description
                .to_string()
                .contains("gave up after 4 failed starts"),
            "{}",
            b.m.description
        );
        assert!(
            b.m.description.to_string().contains("exited with code 2"),
            "{}",
            b.m.description
        );
        // ctl start of a fatal process tries again, with a fresh count.
        assert_eq!(b.feed(Event::Start), vec![Effect::Spawn]);
        assert_eq!(b.m.failures, 0);
    }

    #[test]
    fn spawn_failure_is_a_failed_start_with_the_os_error() {
        let mut b = Bench::new(ProgramConfig {
            backoff: BackoffConfig {
                max_retries: 1,
                ..cfg().backoff
            },
            ..cfg()
        });
        b.feed(Event::Start);
        b.feed(Event::SpawnFailed(spawn_error(
            "exec \"/x\": No such file or directory",
        )));
        assert_eq!(b.state(), "backoff");
        assert!(b
            .m
            .description
            .to_string()
            .contains("No such file or directory"));
        b.at(1000).feed(Event::Deadline);
        b.feed(Event::SpawnFailed(spawn_error(
            "exec \"/x\": No such file or directory",
        )));
        assert_eq!(b.state(), "fatal");
    }

    #[test]
    fn a_spawn_that_fails_at_once_waits_even_with_a_zero_backoff() {
        let zero = BackoffConfig {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            ..cfg().backoff
        };
        let mut b = Bench::new(ProgramConfig {
            backoff: zero,
            ..cfg()
        });
        b.feed(Event::Start);
        let effects = b.feed(Event::SpawnFailed(spawn_error(
            "creating log pipes: Too many open files",
        )));
        assert!(effects.is_empty(), "{effects:?}");
        assert_eq!(b.state(), "backoff");
        // The actor reads its mailbox while waiting: a stop gets in.
        b.feed(Event::Stop);
        assert_eq!(b.state(), "stopped");

        // After the wait, it tries again.
        b.feed(Event::Start);
        b.feed(Event::SpawnFailed(spawn_error("out of memory")));
        assert_eq!(b.at(100).feed(Event::Deadline), vec![Effect::Spawn]);
    }

    #[test]
    fn a_successful_start_resets_failures_and_a_long_run_resets_the_delay() {
        let mut b = Bench::new(cfg());
        b.started();
        b.at(0).feed(Event::Exited(ProcessEnd::Exited(1)));
        b.at(1000).feed(Event::Deadline);
        b.feed(Event::Spawned(PID));
        b.at(2000).feed(Event::Deadline);
        assert_eq!(b.state(), "running");
        assert_eq!(b.m.failures, 0);
        // A short run keeps growing the delay...
        b.at(3000).feed(Event::Exited(ProcessEnd::Exited(1)));
        assert_eq!(b.backoff_ms(), 2000);
        b.at(5000).feed(Event::Deadline);
        b.feed(Event::Spawned(PID));
        b.at(6000).feed(Event::Deadline);
        // ...a run of reset_after (60 s) starts it over at `initial`.
        b.at(65_000).feed(Event::Exited(ProcessEnd::Exited(1)));
        assert_eq!(b.backoff_ms(), 1000);
    }

    #[test]
    fn restart_policies() {
        let cases = [
            (RestartPolicy::Never, ProcessEnd::Exited(1), "exited"),
            (RestartPolicy::Always, ProcessEnd::Exited(0), "backoff"),
            (RestartPolicy::OnFailure, ProcessEnd::Exited(0), "exited"),
            (RestartPolicy::OnFailure, ProcessEnd::Exited(3), "exited"),
            (RestartPolicy::OnFailure, ProcessEnd::Exited(1), "backoff"),
            (
                RestartPolicy::OnFailure,
                ProcessEnd::Signaled(libc::SIGSEGV),
                "backoff",
            ),
        ];
        for (restart, end, expect) in cases {
            let mut b = Bench::new(ProgramConfig {
                restart,
                exit_codes: vec![0, 3],
                ..cfg()
            });
            b.started();
            b.at(5000).feed(Event::Deadline);
            b.feed(Event::Exited(end));
            assert_eq!(b.state(), expect, "{restart:?} after {end}");
            assert_eq!(b.m.last_end, Some(end));
        }
    }

    #[test]
    fn stop_sends_the_stop_signal_then_sigkill_after_stop_timeout() {
        let mut b = Bench::new(ProgramConfig {
            stop_signal: Signal::SIGINT,
            ..cfg()
        });
        b.started();
        let effects = b.at(100).feed(Event::Stop);
        assert_eq!(
            effects,
            vec![Effect::Signal {
                pid: PID,
                signal: Signal::SIGINT,
                group: true
            }]
        );
        assert_eq!(b.state(), "stopping");
        assert_eq!(b.m.stop_outcome(), Outcome::Pending);
        assert_eq!(b.at(10_099).feed(Event::Deadline), vec![]);
        assert_eq!(b.at(10_100).feed(Event::Deadline), vec![kill(PID, true)]);
        assert_eq!(b.m.deadline(&b.cfg), None, "no second SIGKILL timer");
        let effects = b.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGKILL)));
        assert_eq!(
            effects,
            vec![kill(PID, true)],
            "leftovers of the group are killed"
        );
        assert_eq!(b.state(), "stopped");
        assert_eq!(b.m.stop_outcome(), Outcome::Done);
        assert_eq!(b.m.restarts, 0, "a requested stop is not a restart");
    }

    #[test]
    fn without_kill_group_only_the_process_is_signalled() {
        let mut b = Bench::new(ProgramConfig {
            kill_group: false,
            ..cfg()
        });
        b.started();
        assert_eq!(b.feed(Event::Stop), vec![term(PID, false)]);
        assert_eq!(b.feed(Event::Exited(ProcessEnd::Exited(0))), vec![]);
    }

    /// A program registered with load balancers, draining `drain_ms` before a stop.
    fn registered(drain_ms: u64, c: ProgramConfig) -> ProgramConfig {
        ProgramConfig {
            register: Some(Box::new(crate::config::RegisterConfig {
                address: "127.0.0.1:{port}".into(),
                drain: Duration::from_millis(drain_ms),
                haproxy: None,
                etcd: None,
                file: None,
            })),
            ..c
        }
    }

    #[test]
    fn a_requested_stop_drains_before_the_stop_signal() {
        let mut b = Bench::new(registered(5000, cfg()));
        b.started();
        b.at(1000).feed(Event::Deadline);
        assert_eq!(b.state(), "running");
        assert_eq!(b.at(2000).feed(Event::Stop), vec![], "no signal yet");
        assert_eq!(b.state(), "stopping");
        assert_eq!(
            b.m.deadline(&b.cfg),
            Some(b.t0 + Duration::from_millis(7000))
        );
        assert_eq!(b.at(6999).feed(Event::Deadline), vec![]);
        assert_eq!(b.at(7000).feed(Event::Deadline), vec![term(PID, true)]);
        // stop_timeout (10 s) runs from the signal, not from the request.
        assert_eq!(
            b.m.deadline(&b.cfg),
            Some(b.t0 + Duration::from_millis(17_000))
        );
        assert_eq!(b.at(17_000).feed(Event::Deadline), vec![kill(PID, true)]);
        b.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGKILL)));
        assert_eq!(b.state(), "stopped");
    }

    #[test]
    fn an_exit_while_draining_ends_the_stop() {
        let mut b = Bench::new(registered(5000, cfg()));
        b.started();
        b.at(1000).feed(Event::Deadline);
        b.at(2000).feed(Event::Stop);
        b.at(3000).feed(Event::Exited(ProcessEnd::Exited(0)));
        assert_eq!(b.state(), "stopped");
        assert_eq!(b.m.deadline(&b.cfg), None);
    }

    #[test]
    fn a_restart_drains_then_starts_again() {
        let mut b = Bench::new(registered(500, cfg()));
        b.started();
        b.at(1000).feed(Event::Deadline);
        assert_eq!(b.at(2000).feed(Event::Restart), vec![]);
        assert_eq!(b.at(2500).feed(Event::Deadline), vec![term(PID, true)]);
        assert_eq!(
            b.feed(Event::Exited(ProcessEnd::Exited(0)))[1..],
            [Effect::Spawn]
        );
    }

    #[test]
    fn only_a_requested_stop_of_a_process_taking_traffic_drains() {
        // Not ready yet: it never took traffic.
        let mut b = Bench::new(registered(5000, cfg()));
        b.started();
        assert_eq!(b.at(100).feed(Event::Stop), vec![term(PID, true)]);

        // Unhealthy: out already, and minder's own restart does not wait.
        let mut b = Bench::new(registered(5000, with_health(OnUnhealthy::Restart)));
        b.started();
        b.feed(probe(true));
        b.feed(probe(true));
        assert_eq!(b.state(), "running");
        b.feed(probe(false));
        b.feed(probe(false));
        assert_eq!(b.feed(probe(false)), vec![term(PID, true)]);

        // Reported unhealthy but kept running (on_unhealthy = "none"): out, so no drain.
        let mut b = Bench::new(registered(5000, with_health(OnUnhealthy::None)));
        b.started();
        b.feed(probe(true));
        b.feed(probe(true));
        for _ in 0..3 {
            b.feed(probe(false));
        }
        assert_eq!(b.m.health, Health::Unhealthy);
        assert_eq!(b.feed(Event::Stop), vec![term(PID, true)]);

        // A zero drain signals at once.
        let mut b = Bench::new(registered(0, cfg()));
        b.started();
        b.at(1000).feed(Event::Deadline);
        assert_eq!(b.at(2000).feed(Event::Stop), vec![term(PID, true)]);
    }

    #[test]
    fn stop_during_backoff_cancels_the_retry() {
        let mut b = Bench::new(cfg());
        b.started();
        b.feed(Event::Exited(ProcessEnd::Exited(1)));
        assert_eq!(b.state(), "backoff");
        assert_eq!(b.feed(Event::Stop), vec![]);
        assert_eq!(b.state(), "stopped");
        assert_eq!(b.m.deadline(&b.cfg), None);
        assert_eq!(
            b.at(5000).feed(Event::Deadline),
            vec![],
            "the old timer is gone"
        );
    }

    #[test]
    fn restart_during_stopping_starts_again_after_the_exit() {
        let mut b = Bench::new(cfg());
        b.started();
        b.feed(Event::Stop);
        assert_eq!(b.feed(Event::Restart), vec![]);
        assert_eq!(b.m.start_outcome(), Outcome::Pending);
        let effects = b.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGTERM)));
        assert_eq!(effects, vec![kill(PID, true), Effect::Spawn]);
        b.feed(Event::Spawned(Pid::from_raw(5000)));
        assert_eq!(b.state(), "starting");
        assert_eq!(b.m.restarts, 0, "requested restarts are not counted");
    }

    #[test]
    fn restart_of_a_running_process_stops_it_first() {
        let mut b = Bench::new(cfg());
        b.started();
        assert_eq!(b.feed(Event::Restart), vec![term(PID, true)]);
        let effects = b.feed(Event::Exited(ProcessEnd::Exited(0)));
        assert!(effects.contains(&Effect::Spawn));
    }

    #[test]
    fn start_and_stop_are_idempotent() {
        let mut b = Bench::new(cfg());
        assert_eq!(b.feed(Event::Stop), vec![]);
        assert_eq!(b.m.stop_outcome(), Outcome::Done);
        b.started();
        assert_eq!(b.feed(Event::Start), vec![], "already starting");
        b.at(1000).feed(Event::Deadline);
        assert_eq!(b.feed(Event::Start), vec![], "already running");
        assert_eq!(b.m.start_outcome(), Outcome::Done);
    }

    #[test]
    fn remove_stops_then_reports_removed() {
        let mut b = Bench::new(cfg());
        b.started();
        assert_eq!(b.feed(Event::Remove), vec![term(PID, true)]);
        // A later start does not resurrect a removed program.
        b.feed(Event::Start);
        let effects = b.feed(Event::Exited(ProcessEnd::Exited(0)));
        assert_eq!(effects, vec![kill(PID, true), Effect::Removed]);

        let mut idle = Bench::new(cfg());
        assert_eq!(idle.feed(Event::Remove), vec![Effect::Removed]);
    }

    #[test]
    fn exit_before_ready_with_a_keep_down_policy_is_exited() {
        let mut b = Bench::new(ProgramConfig {
            restart: RestartPolicy::Never,
            ..cfg()
        });
        b.started();
        b.feed(Event::Exited(ProcessEnd::Exited(1)));
        assert_eq!(b.state(), "exited");
        assert_eq!(b.m.failures, 0);
        match b.m.start_outcome() {
            Outcome::Failed(failure) => assert_eq!(failure.to_string(), "exited with code 1"),
            other => panic!("not a failure: {other:?}"),
        }
    }

    #[test]
    fn zero_backoff_respawns_without_waiting() {
        let mut b = Bench::new(ProgramConfig {
            start_secs: Duration::ZERO,
            backoff: BackoffConfig {
                initial: Duration::ZERO,
                ..cfg().backoff
            },
            ..cfg()
        });
        b.started();
        assert_eq!(
            b.feed(Event::Exited(ProcessEnd::Exited(1))),
            vec![Effect::Spawn]
        );
        assert_eq!(b.m.restarts, 1);
    }

    #[test]
    fn stray_events_change_nothing() {
        let mut b = Bench::new(cfg());
        let before = b.m.clone();
        assert_eq!(b.feed(Event::Exited(ProcessEnd::Exited(0))), vec![]);
        assert_eq!(b.feed(Event::Deadline), vec![]);
        assert_eq!(b.feed(Event::Spawned(PID)), vec![]);
        assert_eq!(b.m, before);
    }

    #[test]
    fn stop_timeout_zero_kills_at_once() {
        let mut b = Bench::new(ProgramConfig {
            stop_timeout: Duration::ZERO,
            ..cfg()
        });
        b.started();
        assert_eq!(b.feed(Event::Stop), vec![kill(PID, true)]);
    }

    fn with_health(on_unhealthy: OnUnhealthy) -> ProgramConfig {
        ProgramConfig {
            health: Some(crate::config::HealthConfig {
                probe: crate::config::ProbeTarget::Tcp("127.0.0.1:1".into()),
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                start_period: Duration::from_secs(10),
                failure_threshold: 3,
                success_threshold: 2,
                on_unhealthy,
            }),
            ..cfg()
        }
    }

    fn probe(ok: bool) -> Event {
        Event::Probe {
            pid: PID,
            ok,
            message: if ok { "GET /: 200" } else { "GET /: 503" }.into(),
        }
    }

    #[test]
    fn health_decides_readiness_and_failures_in_the_start_period_do_not_count() {
        let mut b = Bench::new(with_health(OnUnhealthy::Restart));
        b.started();
        assert_eq!(b.m.health, Health::Starting);
        assert_eq!(b.m.deadline(&b.cfg), Some(b.t0 + Duration::from_secs(10)));
        for _ in 0..5 {
            assert_eq!(b.at(100).feed(probe(false)), vec![]);
        }
        assert_eq!(
            b.state(),
            "starting",
            "start_secs does not apply with health"
        );
        assert!(
            b.m.description.to_string().contains("503"),
            "{}",
            b.m.description
        );
        b.at(2000).feed(probe(true));
        assert_eq!(b.state(), "running");
        assert_eq!(b.m.health, Health::Healthy);
        assert_eq!(b.m.start_outcome(), Outcome::Done);
    }

    #[test]
    fn no_success_within_start_period_is_a_failed_start() {
        let mut b = Bench::new(ProgramConfig {
            backoff: BackoffConfig {
                max_retries: 1,
                ..cfg().backoff
            },
            ..with_health(OnUnhealthy::Restart)
        });
        b.started();
        b.at(500).feed(probe(false));
        assert_eq!(b.at(10_000).feed(Event::Deadline), vec![term(PID, true)]);
        assert_eq!(b.state(), "stopping");
        assert!(matches!(b.m.start_outcome(), Outcome::Failed(_)));
        b.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGTERM)));
        assert_eq!(b.state(), "backoff");
        assert_eq!(b.m.failures, 1);
        assert!(
            b.m.description
                .to_string()
                .starts_with("not ready within 10s: GET /: 503"),
            "{}",
            b.m.description
        );
        // The second attempt fails too: max_retries = 1 -> fatal.
        b.at(11_000).feed(Event::Deadline);
        b.feed(Event::Spawned(PID));
        b.at(21_000).feed(Event::Deadline);
        b.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGTERM)));
        assert_eq!(b.state(), "fatal");
    }

    #[test]
    fn failure_threshold_makes_unhealthy_and_restarts_through_backoff() {
        let mut b = Bench::new(with_health(OnUnhealthy::Restart));
        b.started();
        b.feed(probe(true));
        assert_eq!(b.feed(probe(false)), vec![]);
        assert_eq!(b.feed(probe(false)), vec![]);
        assert_eq!(b.m.health, Health::Healthy, "2 of 3 failures");
        assert!(
            b.m.description.to_string().contains("(2/3)"),
            "{}",
            b.m.description
        );
        assert_eq!(b.feed(probe(false)), vec![term(PID, true)]);
        assert_eq!(b.m.health, Health::Unhealthy);
        assert_eq!(b.state(), "stopping");
        // Results arriving while stopping change nothing.
        assert_eq!(b.feed(probe(true)), vec![]);
        assert_eq!(b.m.health, Health::Unhealthy);
        b.at(200)
            .feed(Event::Exited(ProcessEnd::Signaled(libc::SIGTERM)));
        assert_eq!(b.state(), "backoff");
        assert_eq!(b.m.failures, 0, "it had been ready: not a failed start");
        assert!(
            b.m.description
                .to_string()
                .starts_with("unhealthy: GET /: 503"),
            "{}",
            b.m.description
        );
        b.at(1200).feed(Event::Deadline);
        assert_eq!(b.m.restarts, 1);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut b = Bench::new(with_health(OnUnhealthy::Restart));
        b.started();
        b.feed(probe(true));
        for _ in 0..10 {
            b.feed(probe(false));
            b.feed(probe(false));
            b.feed(probe(true));
        }
        assert_eq!(b.state(), "running");
        assert_eq!(b.m.health, Health::Healthy);
    }

    #[test]
    fn on_unhealthy_none_reports_and_recovers_after_success_threshold() {
        let mut b = Bench::new(with_health(OnUnhealthy::None));
        b.started();
        b.feed(probe(true));
        for _ in 0..3 {
            assert_eq!(b.feed(probe(false)), vec![]);
        }
        assert_eq!(b.state(), "running");
        assert_eq!(b.m.health, Health::Unhealthy);
        b.feed(probe(true));
        assert_eq!(b.m.health, Health::Unhealthy, "success_threshold is 2");
        b.feed(probe(true));
        assert_eq!(b.m.health, Health::Healthy);
        assert_eq!(b.m.description.to_string(), "");
    }

    #[test]
    fn probe_results_for_another_process_are_ignored() {
        let mut b = Bench::new(with_health(OnUnhealthy::Restart));
        b.started();
        let stale = Event::Probe {
            pid: Pid::from_raw(1),
            ok: true,
            message: "old".into(),
        };
        assert_eq!(b.feed(stale.clone()), vec![]);
        assert_eq!(b.state(), "starting");
        b.feed(Event::Exited(ProcessEnd::Exited(1)));
        let before = b.m.clone();
        assert_eq!(b.feed(probe(false)), vec![], "after the exit");
        assert_eq!(b.m, before);
        assert_eq!(b.m.health, Health::None, "no process, no health");
    }

    fn notify(message: &str) -> Event {
        Event::Notify {
            pid: PID,
            message: NotifyMessage::parse(message),
        }
    }

    #[test]
    fn notify_ready_decides_readiness_within_ready_timeout() {
        let c = ProgramConfig {
            notify: true,
            ready_timeout: Duration::from_secs(5),
            ..cfg()
        };
        let mut b = Bench::new(c.clone());
        b.started();
        b.at(3000).feed(Event::Deadline);
        assert_eq!(
            b.state(),
            "starting",
            "start_secs does not apply with notify"
        );
        b.feed(notify("STATUS=warming up\n"));
        assert_eq!(b.m.notify_status.as_deref(), Some("warming up"));
        b.feed(notify("READY=1\nSTATUS=serving"));
        assert_eq!(b.state(), "running");
        assert_eq!(b.m.notify_status.as_deref(), Some("serving"));

        let mut late = Bench::new(c);
        late.started();
        assert_eq!(late.at(5000).feed(Event::Deadline), vec![term(PID, true)]);
        late.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGTERM)));
        assert_eq!(late.state(), "backoff");
        assert!(
            late.m
                .description
                .to_string()
                .starts_with("no READY=1 within 5s"),
            "{}",
            late.m.description
        );
        assert_eq!(late.m.failures, 1);
    }

    #[test]
    fn notify_from_another_pid_is_ignored() {
        let mut b = Bench::new(ProgramConfig {
            notify: true,
            ..cfg()
        });
        b.started();
        b.feed(Event::Notify {
            pid: Pid::from_raw(99),
            message: NotifyMessage::parse("READY=1"),
        });
        assert_eq!(b.state(), "starting");
    }

    #[test]
    fn with_health_ready_1_does_not_decide() {
        let mut b = Bench::new(ProgramConfig {
            notify: true,
            ..with_health(OnUnhealthy::Restart)
        });
        b.started();
        b.feed(notify("READY=1"));
        assert_eq!(b.state(), "starting");
        b.feed(probe(true));
        assert_eq!(b.state(), "running");
    }

    #[test]
    fn watchdog_miss_restarts_and_pings_keep_it_alive() {
        let mut b = Bench::new(ProgramConfig {
            watchdog: Duration::from_secs(2),
            start_secs: Duration::ZERO,
            ..cfg()
        });
        b.started();
        assert_eq!(b.m.deadline(&b.cfg), Some(b.t0 + Duration::from_secs(2)));
        b.at(1500).feed(notify("WATCHDOG=1"));
        assert_eq!(
            b.m.deadline(&b.cfg),
            Some(b.t0 + Duration::from_millis(3500))
        );
        assert_eq!(b.at(2500).feed(Event::Deadline), vec![], "not due any more");
        assert_eq!(b.at(3500).feed(Event::Deadline), vec![term(PID, true)]);
        assert!(
            b.m.description.to_string().starts_with("watchdog timeout"),
            "{}",
            b.m.description
        );
        b.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGTERM)));
        assert_eq!(b.state(), "backoff");
    }

    #[test]
    fn watchdog_trigger_restarts_at_once() {
        let mut b = Bench::new(ProgramConfig {
            watchdog: Duration::from_secs(2),
            start_secs: Duration::ZERO,
            ..cfg()
        });
        b.started();
        assert_eq!(b.feed(notify("WATCHDOG=trigger")), vec![term(PID, true)]);
    }

    #[test]
    fn mainpid_moves_the_main_process() {
        let mut b = Bench::new(ProgramConfig {
            notify: true,
            ..cfg()
        });
        b.started();
        let child = Pid::from_raw(5151);
        assert_eq!(
            b.feed(notify("MAINPID=5151\nREADY=1")),
            vec![Effect::Adopt(child)]
        );
        assert_eq!(b.m.state.pid(), Some(child));
        assert_eq!(b.state(), "running");
        assert_eq!(b.feed(Event::Stop), vec![term(child, true)]);
    }

    #[test]
    fn rolling_restart_stops_the_old_process_only_once_the_new_one_is_ready() {
        let mut b = Bench::new(with_listen(cfg()));
        b.started();
        b.at(1000).feed(Event::Deadline);
        assert_eq!(b.feed(Event::Restart), vec![Effect::Retire, Effect::Spawn]);
        assert_eq!(
            b.m.retiring.map(|r| r.pid),
            Some(PID),
            "the old one keeps serving"
        );
        b.feed(Event::Spawned(NEW));
        assert_eq!(b.state(), "starting");
        assert_eq!(b.m.start_outcome(), Outcome::Pending);
        // Ready: now, and only now, the old process gets its stop signal.
        assert_eq!(b.at(2000).feed(Event::Deadline), vec![term(PID, true)]);
        assert_eq!(
            b.m.state,
            State::Running {
                pid: NEW,
                started: b.t0 + Duration::from_secs(1)
            }
        );
        assert_eq!(b.m.start_outcome(), Outcome::Done);
        // It ignores SIGTERM: SIGKILL after stop_timeout.
        assert_eq!(b.at(12_000).feed(Event::Deadline), vec![kill(PID, true)]);
        let effects = b.feed(Event::RetiredExited(ProcessEnd::Signaled(libc::SIGKILL)));
        assert_eq!(effects, vec![kill(PID, true)], "its group goes with it");
        assert_eq!(b.m.retiring, None);
        assert_eq!(b.m.restarts, 0, "a requested restart is not counted");
    }

    #[test]
    fn a_replacement_that_never_gets_ready_leaves_the_old_one_serving() {
        let mut b = Bench::new(with_listen(with_health(OnUnhealthy::Restart)));
        b.started();
        b.feed(probe(true));
        b.feed(Event::Restart);
        b.at(100).feed(Event::Spawned(NEW));
        // Never healthy within start_period (10 s): the replacement is stopped...
        assert_eq!(b.at(10_100).feed(Event::Deadline), vec![term(NEW, true)]);
        assert_eq!(
            b.m.start_outcome(),
            Outcome::Pending,
            "settled once rolled back"
        );
        // ...and once it is gone, the old process is the current one again.
        let effects = b.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGTERM)));
        assert!(
            matches!(effects.as_slice(), [_, Effect::RolloutFailed(why)] if why.to_string().contains("not ready within 10s")),
            "{effects:?}"
        );
        assert_eq!(
            effects[0],
            kill(NEW, true),
            "the replacement's group is cleaned up"
        );
        assert_eq!(b.m.state.pid(), Some(PID));
        assert_eq!(b.state(), "running");
        assert_eq!(b.m.retiring, None);
        assert!(
            b.m.description
                .to_string()
                .contains("still serving from pid 4242"),
            "{}",
            b.m.description
        );
        assert_eq!(b.m.failures, 0);
    }

    #[test]
    fn a_replacement_that_cannot_spawn_leaves_the_old_one_serving() {
        let mut b = Bench::new(with_listen(cfg()));
        b.started();
        b.at(1000).feed(Event::Deadline);
        b.feed(Event::Restart);
        let effects = b.feed(Event::SpawnFailed(spawn_error(
            "exec \"/x\": No such file or directory",
        )));
        assert!(
            matches!(effects.as_slice(), [Effect::RolloutFailed(_)]),
            "{effects:?}"
        );
        assert_eq!(b.m.state.pid(), Some(PID));
    }

    #[test]
    fn unhealthy_with_listen_rolls_instead_of_stopping_first() {
        let mut b = Bench::new(with_listen(with_health(OnUnhealthy::Restart)));
        b.started();
        b.feed(probe(true));
        b.feed(probe(false));
        b.feed(probe(false));
        assert_eq!(b.feed(probe(false)), vec![Effect::Retire, Effect::Spawn]);
        assert_eq!(b.m.restarts, 1, "a health-triggered restart is counted");
        b.feed(Event::Spawned(NEW));
        assert_eq!(
            b.feed(Event::Probe {
                pid: NEW,
                ok: true,
                message: "ok".into()
            }),
            vec![term(PID, true)]
        );
    }

    #[test]
    fn stop_during_a_rollout_stops_both_and_waits_for_both() {
        let mut b = Bench::new(with_listen(cfg()));
        b.started();
        b.at(1000).feed(Event::Deadline);
        b.feed(Event::Restart);
        b.feed(Event::Spawned(NEW));
        let effects = b.feed(Event::Stop);
        assert!(
            effects.contains(&term(PID, true)) && effects.contains(&term(NEW, true)),
            "{effects:?}"
        );
        b.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGTERM)));
        assert_eq!(b.state(), "stopped");
        assert_eq!(
            b.m.stop_outcome(),
            Outcome::Pending,
            "the old one is still stopping"
        );
        b.feed(Event::RetiredExited(ProcessEnd::Signaled(libc::SIGTERM)));
        assert_eq!(b.m.stop_outcome(), Outcome::Done);
    }

    #[test]
    fn the_old_process_dying_during_the_overlap_is_just_forgotten() {
        let mut b = Bench::new(with_listen(cfg()));
        b.started();
        b.at(1000).feed(Event::Deadline);
        b.feed(Event::Restart);
        b.feed(Event::Spawned(NEW));
        b.feed(Event::RetiredExited(ProcessEnd::Exited(1)));
        assert_eq!(b.m.retiring, None);
        assert_eq!(b.state(), "starting");
        // The replacement failing now takes the normal path: backoff.
        b.feed(Event::Exited(ProcessEnd::Exited(1)));
        assert_eq!(b.state(), "backoff");
    }

    #[test]
    fn an_oom_kill_is_counted_described_and_restarted_like_a_crash() {
        let mut b = Bench::new(ProgramConfig {
            restart: RestartPolicy::OnFailure,
            ..cfg()
        });
        b.started();
        b.at(2000).feed(Event::Deadline);
        b.feed(Event::Exited(ProcessEnd::OomKilled {
            memory_max: Some(512 << 20),
        }));
        assert_eq!(b.m.oom_kills, 1);
        assert_eq!(b.state(), "backoff", "on-failure restarts it");
        assert_eq!(
            b.m.description.to_string(),
            "killed by the OOM killer (memory_max 512MiB)"
        );
        // Plain SIGKILLs are not OOM kills.
        b.at(10_000).feed(Event::Deadline);
        b.feed(Event::Spawned(PID));
        b.feed(Event::Exited(ProcessEnd::Signaled(libc::SIGKILL)));
        assert_eq!(b.m.oom_kills, 1);
    }
}
