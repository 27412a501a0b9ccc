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
use crate::config::{ProgramConfig, RestartPolicy};
use crate::process::ProcessEnd;

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
    /// Stop signal sent, waiting for the exit.
    Stopping {
        /// The child.
        pid: Pid,
        /// When it was spawned (uptime keeps counting while it stops).
        started: Instant,
        /// When the stop signal was sent.
        since: Instant,
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
    /// The spawn decided by [`Effect::Spawn`] failed; the message names the OS error.
    SpawnFailed(String),
    /// The reaper collected the child.
    Exited(ProcessEnd),
    /// The time returned by [`Machine::deadline`] has come.
    Deadline,
}

/// Something the actor must do on the machine's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// Whether a request waiting on this process is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not yet.
    Pending,
    /// Done as asked.
    Done,
    /// Failed, with the reason.
    Failed(String),
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
    /// How the last run ended.
    pub last_end: Option<ProcessEnd>,
    /// Why the process is in its state, in words.
    pub description: String,
    /// When the state last changed (for "2m ago").
    pub changed: Instant,
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

    /// The live child, if any.
    pub fn pid(&self) -> Option<Pid> {
        match *self {
            State::Starting { pid, .. }
            | State::Running { pid, .. }
            | State::Stopping { pid, .. } => Some(pid),
            State::Stopped
            | State::Spawning
            | State::Backoff { .. }
            | State::Exited
            | State::Fatal => None,
        }
    }

    /// When the live child was spawned, if any.
    pub fn started(&self) -> Option<Instant> {
        match *self {
            State::Starting { started, .. }
            | State::Running { started, .. }
            | State::Stopping { started, .. } => Some(started),
            State::Stopped
            | State::Spawning
            | State::Backoff { .. }
            | State::Exited
            | State::Fatal => None,
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
            ProcessEnd::Signaled(_) => true,
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
            last_end: None,
            description: String::new(),
            changed: now,
        }
    }

    /// When [`Event::Deadline`] must be fed next, if the state has a timer.
    pub fn deadline(&self, cfg: &ProgramConfig) -> Option<Instant> {
        match self.state {
            State::Starting { started, .. } => Some(after(started, cfg.start_secs)),
            State::Backoff { until } => Some(until),
            State::Stopping {
                since,
                killed: false,
                ..
            } => Some(after(since, cfg.stop_timeout)),
            State::Stopping { killed: true, .. }
            | State::Stopped
            | State::Spawning
            | State::Running { .. }
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
        let effects = self.transition(cfg, event, now, sample);
        if self.state != before {
            self.changed = now;
        }
        effects
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
                self.description = "stopped by request during backoff".to_string();
                Vec::new()
            }
            (State::Stopped | State::Exited | State::Fatal, Event::Stop) => {
                self.state = State::Stopped;
                Vec::new()
            }
            (
                State::Stopped | State::Exited | State::Fatal | State::Backoff { .. },
                Event::Remove,
            ) => {
                self.state = State::Stopped;
                vec![Effect::Removed]
            }
            // The actor feeds the spawn result right after `Effect::Spawn`, so no
            // request can arrive in `Spawning`; ignoring one is the safe answer.
            (State::Spawning, Event::Stop | Event::Restart | Event::Remove) => Vec::new(),

            // --- spawn results ------------------------------------------------
            (State::Spawning, Event::Spawned(pid)) => {
                if cfg.start_secs.is_zero() {
                    self.ready(pid, now)
                } else {
                    self.state = State::Starting { pid, started: now };
                    Vec::new()
                }
            }
            (State::Spawning, Event::SpawnFailed(message)) => {
                self.failed_start(cfg, format!("spawn failed: {message}"), now, sample)
            }

            // --- exits --------------------------------------------------------
            (State::Starting { .. }, Event::Exited(end)) => {
                self.last_end = Some(end);
                if wants_restart(cfg, end) {
                    let cause = format!("{end} before it was ready");
                    self.failed_start(cfg, cause, now, sample)
                } else {
                    self.state = State::Exited;
                    self.description = end.to_string();
                    Vec::new()
                }
            }
            (State::Running { started, .. }, Event::Exited(end)) => {
                self.last_end = Some(end);
                if now.saturating_duration_since(started) >= cfg.backoff.reset_after {
                    self.backoff_step = 0;
                }
                if wants_restart(cfg, end) {
                    self.retry_after(cfg, end.to_string(), now, sample)
                } else {
                    self.state = State::Exited;
                    self.description = end.to_string();
                    Vec::new()
                }
            }
            (State::Stopping { pid, then, .. }, Event::Exited(end)) => {
                self.last_end = Some(end);
                // Descendants that outlived the main process would escape the stop.
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
                        self.description = format!("{end} (stopped by request)");
                    }
                    AfterStop::Start => {
                        self.failures = 0;
                        self.backoff_step = 0;
                        effects.extend(self.spawn());
                    }
                    AfterStop::Remove => {
                        self.state = State::Stopped;
                        effects.push(Effect::Removed);
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
                Event::Spawned(_) | Event::SpawnFailed(_),
            ) => Vec::new(),

            // --- timers -------------------------------------------------------
            (State::Starting { pid, started }, Event::Deadline) => {
                if now >= after(started, cfg.start_secs) {
                    self.ready(pid, now)
                } else {
                    Vec::new()
                }
            }
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
                    killed: false,
                    ..
                },
                Event::Deadline,
            ) => {
                if now >= after(since, cfg.stop_timeout) {
                    self.kill(cfg, pid)
                } else {
                    Vec::new()
                }
            }
            (
                State::Stopping { killed: true, .. }
                | State::Stopped
                | State::Spawning
                | State::Running { .. }
                | State::Exited
                | State::Fatal,
                Event::Deadline,
            ) => Vec::new(),
        }
    }

    fn spawn(&mut self) -> Vec<Effect> {
        self.state = State::Spawning;
        vec![Effect::Spawn]
    }

    fn ready(&mut self, pid: Pid, now: Instant) -> Vec<Effect> {
        let started = self.state.started().unwrap_or(now);
        self.state = State::Running { pid, started };
        self.failures = 0;
        self.description = match self.last_end {
            Some(end) if self.restarts > 0 => format!("restarted after: {end}"),
            _ => String::new(),
        };
        Vec::new()
    }

    fn begin_stop(
        &mut self,
        cfg: &ProgramConfig,
        pid: Pid,
        started: Instant,
        now: Instant,
        then: AfterStop,
    ) -> Vec<Effect> {
        self.state = State::Stopping {
            pid,
            started,
            since: now,
            killed: false,
            then,
        };
        if cfg.stop_timeout.is_zero() {
            return self.kill(cfg, pid);
        }
        vec![Effect::Signal {
            pid,
            signal: cfg.stop_signal,
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
        cause: String,
        now: Instant,
        sample: f64,
    ) -> Vec<Effect> {
        self.failures += 1;
        let max = cfg.backoff.max_retries;
        if max > 0 && self.failures > max {
            self.state = State::Fatal;
            self.description = format!(
                "fatal: gave up after {} failed starts; last: {cause}",
                self.failures
            );
            return Vec::new();
        }
        self.retry_after(cfg, cause, now, sample)
    }

    /// Waits in `backoff` for the next delay, or respawns at once when it is zero.
    fn retry_after(
        &mut self,
        cfg: &ProgramConfig,
        cause: String,
        now: Instant,
        sample: f64,
    ) -> Vec<Effect> {
        let delay = backoff::delay(&cfg.backoff, self.backoff_step, sample);
        self.backoff_step = self.backoff_step.saturating_add(1);
        if delay.is_zero() {
            self.restarts += 1;
            self.description = format!("restarted after: {cause}");
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
            State::Stopping { .. } => Outcome::Failed("stopped while starting".to_string()),
            State::Backoff { .. } | State::Exited | State::Fatal | State::Stopped => {
                Outcome::Failed(self.failure_reason())
            }
        }
    }

    /// Settles a `stop` request: any state without a live child is done.
    pub fn stop_outcome(&self) -> Outcome {
        match self.state {
            State::Stopped | State::Exited | State::Fatal => Outcome::Done,
            State::Stopping {
                then: AfterStop::Stay | AfterStop::Remove,
                ..
            } => Outcome::Pending,
            State::Stopping {
                then: AfterStop::Start,
                ..
            }
            | State::Spawning
            | State::Starting { .. }
            | State::Running { .. }
            | State::Backoff { .. } => Outcome::Failed("started again while stopping".to_string()),
        }
    }

    fn failure_reason(&self) -> String {
        if self.description.is_empty() {
            format!("not started ({})", self.state.name())
        } else {
            self.description.clone()
        }
    }
}

/// `t + d`, saturating: durations come from users and may be absurdly long.
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(t)
}

/// `250ms`, `1.5s`, `2m`: short enough for a status line.
pub fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        if (s - s.round()).abs() < 0.05 {
            format!("{}s", s.round())
        } else {
            format!("{s:.1}s")
        }
    } else if ms < 3_600_000 {
        format!("{}m", d.as_secs() / 60)
    } else if ms < 86_400_000 {
        format!("{}h", d.as_secs() / 3600)
    } else {
        format!("{}d", d.as_secs() / 86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackoffConfig;
    use std::path::PathBuf;

    fn cfg() -> ProgramConfig {
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
        }
    }

    const PID: Pid = Pid::from_raw(4242);

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
            b.m.description.contains("gave up after 4 failed starts"),
            "{}",
            b.m.description
        );
        assert!(
            b.m.description.contains("exited with code 2"),
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
        b.feed(Event::SpawnFailed(
            "exec \"/x\": No such file or directory".into(),
        ));
        assert_eq!(b.state(), "backoff");
        assert!(b.m.description.contains("No such file or directory"));
        b.at(1000).feed(Event::Deadline);
        b.feed(Event::SpawnFailed(
            "exec \"/x\": No such file or directory".into(),
        ));
        assert_eq!(b.state(), "fatal");
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
        assert_eq!(
            b.m.start_outcome(),
            Outcome::Failed("exited with code 1".into())
        );
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

    #[test]
    fn short_durations_read_well() {
        assert_eq!(short_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(short_duration(Duration::from_secs(5)), "5s");
        assert_eq!(short_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(short_duration(Duration::from_secs(150)), "2m");
    }
}
