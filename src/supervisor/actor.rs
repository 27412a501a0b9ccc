//! One task per process: it owns the child and its [`Machine`], and is the only
//! place that changes them. Others talk to it through a [`ProcessHandle`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep_until;

use super::events::{Action, Cause, Change, Origin, Transition};
use super::state::{Effect, Event, Failure, Health, Machine, Outcome, Retiring, State, Why};
use super::watch;
use crate::config::{ProcessSpec, ProgramConfig};
use crate::health::{ProbeResult, ProbeStats, Prober};
use crate::logs::{LogRequest, LogStats, ProcessLogs};
use crate::mailbox::{Mailbox, SendError};
use crate::notify::{NotifyMessage, NotifyRoutes};
use crate::process::cgroup::{self, Cgroup};
use crate::process::Ledger;
use crate::process::{
    self, ExitReceiver, Output, ProcessEnd, Reaper, SpawnError, SpawnRequest, SpawnStage,
};
use crate::sockets::ListenSet;
use nix::unistd::Pid;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Notify messages queued per process before newer ones are dropped.
const NOTIFY_QUEUE: usize = 16;

/// Longest pause between probes while a process is starting, so readiness is
/// noticed soon even with a long `interval`.
const STARTING_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What every actor shares: one reaper, one prober, one notify socket.
pub struct Context {
    /// Collects exits.
    pub reaper: Arc<Reaper>,
    /// Runs health probes.
    pub prober: Prober,
    /// Routes notify datagrams to actors.
    pub notify_routes: NotifyRoutes,
    /// Path given to children as `NOTIFY_SOCKET`.
    pub notify_socket: PathBuf,
    /// Every state and health change (see [`super::events`]). Sending never
    /// waits: a reader that falls behind loses the oldest.
    pub transitions: broadcast::Sender<Arc<Transition>>,
    /// minder's cgroup subtree; `None` when it runs without cgroups.
    pub cgroups: Option<Arc<cgroup::Tree>>,
    /// Without cgroups: the file listing the processes started, for the
    /// next minder if this one is killed.
    pub ledger: Option<Arc<Ledger>>,
}

/// Commands queued per process; a full queue is reported as busy.
const COMMAND_QUEUE: usize = 32;

/// A request to a process actor.
#[derive(Debug)]
pub enum Command {
    /// Start; `unless_stopped_since` cancels the start if a stop was requested
    /// after that epoch (a start that waited for dependencies must not undo a
    /// later `ctl stop`).
    Start {
        unless_stopped_since: Option<u64>,
        origin: Origin,
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// Stop, replying once no child is left.
    Stop {
        origin: Origin,
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// Stop (if running) then start (`ctl restart`).
    Restart {
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// Stop, then end the actor: the program left the config.
    Remove,
    /// SIGKILL the child's group now (shutdown ran out of time).
    Kill,
    /// A reload changed the program: run with these settings from now on,
    /// replacing a running process rolling (the old one keeps serving until
    /// the new one is ready; if it never is, the old settings stay).
    Reconfigure {
        spec: ProcessSpec,
        cfg: Arc<ProgramConfig>,
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// Send a signal to the child's process group.
    Signal {
        signal: Signal,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    /// Tail, reopen or flush the captured output.
    Logs(LogRequest),
}

/// What `status` shows of a process; published by its actor on every change.
#[derive(Debug, Clone)]
pub struct ProcessStatus {
    /// Process name (`web` or `web:0`).
    pub name: String,
    /// Program name.
    pub program: String,
    /// Instance number.
    pub instance: u32,
    /// The machine's state.
    pub state: State,
    /// Automatic restarts so far.
    pub restarts: u32,
    /// Processes the OOM killer ended so far.
    pub oom_kills: u32,
    /// How the last run ended.
    pub last_end: Option<ProcessEnd>,
    /// Why it is in this state.
    pub description: Why,
    /// When the state last changed.
    pub changed: Instant,
    /// Count of stop/remove requests so far (see [`Command::Start`]).
    pub stop_epoch: u64,
    /// Counters of the output capture (live, not a snapshot).
    pub logs: Arc<LogStats>,
    /// Health of the live process.
    pub health: Health,
    /// The latest health probe result.
    pub last_probe: Option<ProbeResult>,
    /// The child's last `STATUS=` text (notify protocol).
    pub notify_status: Option<String>,
    /// The old process of a rolling restart, shown beside the new one.
    pub retiring: Option<Retiring>,
    /// Probe counters for metrics (programs with a health check only).
    pub probes: Option<Arc<ProbeStats>>,
    /// Consecutive failed starts (kept across `reexec`).
    pub failures: u32,
    /// Position in the backoff sequence (kept across `reexec`).
    pub backoff_step: u32,
    /// The cgroup of the live process, when it has one: where its CPU and
    /// memory are read.
    pub cgroup: Option<Cgroup>,
}

impl ProcessStatus {
    /// What each of these processes (with its descendants) uses now, in one
    /// measurement: nothing known without a live process.
    pub fn usage(statuses: &[ProcessStatus]) -> Vec<process::usage::Usage> {
        let paths: Vec<_> = statuses
            .iter()
            .map(|s| s.cgroup.as_ref().map(Cgroup::path))
            .collect();
        let items: Vec<_> = statuses
            .iter()
            .zip(&paths)
            .map(|(s, path)| {
                let pid = s.state.pid();
                (pid, pid.and(path.as_deref()))
            })
            .collect();
        process::usage::measure_all(&items)
    }
}

/// A cheap, cloneable way to reach a process actor.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    /// Process name.
    pub name: String,
    /// Program name.
    pub program: String,
    commands: Arc<Mailbox<Command>>,
    status: watch::Receiver<ProcessStatus>,
}

impl ProcessHandle {
    /// The latest published status.
    pub fn status(&self) -> ProcessStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every published status; closed once the actor has ended.
    pub fn watch(&self) -> watch::Receiver<ProcessStatus> {
        self.status.clone()
    }

    /// Queues a command; fails when the actor is gone or its queue is full.
    pub fn send(&self, command: Command) -> Result<(), Failure> {
        self.commands
            .send(command)
            .map_err(|e| Failure::Unreachable {
                process: self.name.clone(),
                busy: matches!(e, SendError::Full(_)),
            })
    }

    /// Why a request sent to this process got no answer: its actor ended.
    pub fn gone(&self) -> Failure {
        Failure::Unreachable {
            process: self.name.clone(),
            busy: false,
        }
    }

    /// Sends a command carrying a reply channel and waits for the outcome.
    pub async fn request(
        &self,
        make: impl FnOnce(Option<oneshot::Sender<Outcome>>) -> Command,
        wait: bool,
    ) -> Outcome {
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.send(make(Some(tx))) {
            return Outcome::Failed(e);
        }
        if !wait {
            return Outcome::Done;
        }
        rx.await.unwrap_or_else(|_| Outcome::Failed(self.gone()))
    }

    /// Resolves once the actor has ended (its status channel closed).
    pub async fn ended(&self) {
        let mut rx = self.status.clone();
        while rx.changed().await.is_ok() {}
    }
}

/// Which kind of request a waiter settles on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Start,
    Stop,
}

/// The task owning one process.
pub struct ProcessActor {
    spec: ProcessSpec,
    cfg: Arc<ProgramConfig>,
    machine: Machine,
    context: Arc<Context>,
    /// When the next probe is due (probing programs with a live process only).
    next_probe: Option<tokio::time::Instant>,
    /// The probe in flight and the process it probes; never more than one.
    probe: Option<(Pid, tokio::task::JoinHandle<ProbeResult>)>,
    last_probe: Option<ProbeResult>,
    /// The client of an `https://` check, kept between probes (and so its
    /// connection).
    https: crate::health::KeptClient,
    /// Notify messages from our main process (programs with notify/watchdog only).
    notify: Option<mpsc::Receiver<(Pid, NotifyMessage)>>,
    notify_tx: Option<mpsc::Sender<(Pid, NotifyMessage)>>,
    /// The PID the notify route currently points at.
    routed: Option<Pid>,
    /// A spawn decided but postponed until other tasks have run.
    spawn_deferred: bool,
    /// The program's `listen` sockets, shared by its processes.
    listen: Option<Arc<ListenSet>>,
    /// The exit of the retiring process of a rolling restart.
    retired_exit: Option<ExitReceiver>,
    exit: Option<ExitReceiver>,
    /// The cgroup of the current process, and of the retiring one.
    cgroup: Option<Cgroup>,
    /// Where this process's cgroups go ([`cgroup::Tree::home`]); made with
    /// the actor whenever minder has cgroups (`cgroup` may be changed by a
    /// reload).
    cgroup_home: Option<Cgroup>,
    retired_cgroup: Option<Cgroup>,
    /// Settings before a reconfiguration whose rollout is still in progress
    /// (boxed: rarely there, and large for every process's actor).
    previous: Option<Box<(ProcessSpec, Arc<ProgramConfig>)>>,
    /// The current child's exec report, read once it has exited.
    report: Option<process::PendingReport>,
    commands: Arc<Mailbox<Command>>,
    status: watch::Sender<ProcessStatus>,
    waiters: Vec<(Wait, oneshot::Sender<Outcome>)>,
    stop_epoch: u64,
    removed: bool,
    logs: ProcessLogs,
    /// Probe counters for metrics (programs with a health check only).
    probes: Option<Arc<ProbeStats>>,
    /// Who asked for the command being handled, and what: the cause the
    /// changes it makes give.
    cause: Option<(Origin, Action)>,
}

impl ProcessActor {
    /// Starts the actor task for `spec` (in `stopped`) and returns its handle.
    pub fn spawn(
        spec: ProcessSpec,
        cfg: Arc<ProgramConfig>,
        listen: Option<Arc<ListenSet>>,
        context: Arc<Context>,
    ) -> ProcessHandle {
        let now = tokio::time::Instant::now().into_std();
        ProcessActor::spawn_with(spec, cfg, listen, context, Machine::new(now))
    }

    /// Starts the actor of a process that already runs (after `reexec`): its
    /// machine as saved, its live child adopted from the reaper.
    pub fn spawn_with(
        spec: ProcessSpec,
        cfg: Arc<ProgramConfig>,
        listen: Option<Arc<ListenSet>>,
        context: Arc<Context>,
        machine: Machine,
    ) -> ProcessHandle {
        let mailbox = Arc::new(Mailbox::new(COMMAND_QUEUE));
        let mut logs = ProcessLogs::new(&spec, &cfg.logs);
        // Made now, among the other long-lived allocations of the process,
        // rather than amid a spawn's temporaries where they would pin memory
        // the allocator could otherwise give back. A failure is retried at spawn.
        let _ = logs.outputs();
        let probes = spec.probe.as_ref().map(|_| Arc::new(ProbeStats::default()));
        let (status_tx, status_rx) = watch::channel(snapshot(
            &spec,
            None,
            &machine,
            0,
            None,
            logs.stats(),
            probes.clone(),
        ));
        // Only programs that use the notify socket pay for a channel.
        let (notify_tx, notify) = if uses_notify(&cfg) {
            let (tx, rx) = mpsc::channel(NOTIFY_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let handle = ProcessHandle {
            name: spec.name.clone(),
            program: spec.program.clone(),
            commands: Arc::clone(&mailbox),
            status: status_rx,
        };
        let actor = ProcessActor {
            spec,
            cfg,
            machine,
            context,
            next_probe: None,
            probe: None,
            last_probe: None,
            https: Default::default(),
            notify,
            notify_tx,
            routed: None,
            spawn_deferred: false,
            listen,
            retired_exit: None,
            exit: None,
            cgroup: None,
            cgroup_home: None,
            retired_cgroup: None,
            previous: None,
            report: None,
            commands: mailbox,
            status: status_tx,
            waiters: Vec::new(),
            stop_epoch: 0,
            removed: false,
            logs,
            probes,
            cause: None,
        };
        let mut actor = actor;
        let tree = actor.context.cgroups.clone();
        actor.cgroup_home = tree
            .as_ref()
            .map(|t| t.home(&actor.spec.program, actor.spec.instance));
        if let Some(pid) = actor.machine.state.pid() {
            // Registered before the runtime polls the reaper, so an exit that
            // happened during the exec is routed here, not lost as an orphan.
            actor.exit = Some(actor.context.reaper.adopt(pid));
            actor.cgroup = tree.as_ref().and_then(|t| t.of_process(pid));
        }
        if let Some(old) = actor.machine.retiring {
            actor.retired_exit = Some(actor.context.reaper.adopt(old.pid));
            actor.retired_cgroup = tree.as_ref().and_then(|t| t.of_process(old.pid));
        }
        actor.sync_probing();
        actor.sync_notify_route();
        actor.sync_group_kill();
        // No tracing span per actor: with thousands of processes their storage
        // would dominate minder's memory; events carry the name instead.
        // Boxed: an async fn stores its by-value arguments twice (as given and
        // as moved into its body), which for this struct doubled every
        // process's task. A Box is stored twice at 8 bytes.
        tokio::spawn(Box::new(actor).run());
        handle
    }

    async fn run(mut self: Box<Self>) {
        while !self.removed {
            if self.spawn_deferred {
                // A spawn that failed at once and is retried with no delay:
                // let every other task run before trying again.
                self.spawn_deferred = false;
                tokio::task::yield_now().await;
                let event = self.spawn_child();
                self.feed(event);
                continue;
            }
            let deadline = self
                .machine
                .deadline(&self.cfg)
                .map(tokio::time::Instant::from_std);
            let probe_due = self.next_probe.filter(|_| self.probe.is_none());
            // One timer for both: the earlier of the state's deadline and the next probe.
            let wake = match (deadline, probe_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    // Only this actor closes its mailbox, after this loop.
                    None => break,
                },
                end = wait_exit(&mut self.exit) => {
                    self.exit = None;
                    let Some(end) = self.settle(end, false) else { continue };
                    // A child that could not exec reported why before exiting.
                    let program = self.spec.argv.first().map(String::as_str).unwrap_or_default();
                    let failure = self
                        .report
                        .take()
                        .and_then(|r| r.failure(program, &self.cfg.directory));
                    let event = match failure {
                        Some(e) => {
                            tracing::warn!(process = %self.spec.name, "spawn failed: {e}");
                            Event::SpawnFailed(e)
                        }
                        None => Event::Exited(end),
                    };
                    self.feed(event);
                }
                end = wait_exit(&mut self.retired_exit) => {
                    self.retired_exit = None;
                    let Some(end) = self.settle(end, true) else { continue };
                    self.feed(Event::RetiredExited(end));
                }
                _ = sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                    let now = tokio::time::Instant::now();
                    if deadline.is_some_and(|d| d <= now) {
                        self.feed(Event::Deadline);
                    }
                    if probe_due.is_some_and(|d| d <= now) {
                        self.start_probe();
                    }
                }
                result = wait_probe(&mut self.probe), if self.probe.is_some() => {
                    if let Some((pid, _)) = self.probe.take() {
                        self.on_probe_result(pid, result);
                    }
                }
                message = recv_notify(&mut self.notify), if self.notify.is_some() => {
                    if let Some((pid, mut message)) = message {
                        self.vet_main_pid(pid, &mut message);
                        self.feed(Event::Notify { pid, message });
                    }
                }
            }
        }
        if let Some(tree) = &self.context.cgroups {
            tree.remove_program(&self.spec.program);
        }
        // Queued requests are dropped: their requesters hear "no longer supervised".
        self.commands.close();
        self.commands.clear();
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Start {
                unless_stopped_since,
                origin,
                reply,
            } => {
                if unless_stopped_since.is_some_and(|epoch| epoch != self.stop_epoch) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Outcome::Failed(Failure::StoppedWhileWaiting));
                    }
                    return;
                }
                self.add_waiter(Wait::Start, reply);
                self.feed_because((origin, Action::Start), Event::Start);
            }
            Command::Reconfigure { spec, cfg, reply } => {
                let old_spec = std::mem::replace(&mut self.spec, spec);
                let old_cfg = std::mem::replace(&mut self.cfg, cfg);
                if matches!(self.machine.state, State::Running { .. }) {
                    self.previous = Some(Box::new((old_spec, old_cfg)));
                    self.add_waiter(Wait::Start, reply);
                    self.feed_because((Origin::Reload, Action::Restart), Event::Restart);
                } else if let Some(reply) = reply {
                    // Not running: the new settings apply at its next start.
                    let _ = reply.send(Outcome::Done);
                }
            }
            Command::Restart { reply } => {
                self.add_waiter(Wait::Start, reply);
                self.feed_because((Origin::Request, Action::Restart), Event::Restart);
            }
            Command::Stop { origin, reply } => {
                self.stop_epoch += 1;
                self.add_waiter(Wait::Stop, reply);
                self.feed_because((origin, Action::Stop), Event::Stop);
            }
            Command::Remove => {
                self.stop_epoch += 1;
                self.feed_because((Origin::Reload, Action::Remove), Event::Remove);
            }
            Command::Kill => {
                let retiring = self.machine.retiring.map(|r| r.pid);
                for pid in self.machine.state.pid().into_iter().chain(retiring) {
                    tracing::warn!(process = %self.spec.name, "killing pid {pid}: out of time");
                    self.signal(pid, Signal::SIGKILL, true);
                }
            }
            Command::Signal { signal, reply } => {
                let result = match self.machine.state.pid() {
                    Some(pid) => {
                        process::already_gone(self.context.reaper.signal(pid, signal, true))
                            .map_err(|errno| Failure::Signal {
                                process: self.spec.name.clone(),
                                signal,
                                errno,
                            })
                    }
                    None => Err(Failure::NotRunning {
                        process: self.spec.name.clone(),
                        state: self.machine.state.name(),
                    }),
                };
                let _ = reply.send(result);
            }
            Command::Logs(request) => self.logs.handle(request),
        }
    }

    /// Fails every waiting request of one kind.
    fn fail_waiters(&mut self, kind: Wait, reason: &Failure) {
        let (settled, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|(wait, _)| *wait == kind);
        self.waiters = kept;
        for (_, reply) in settled {
            let _ = reply.send(Outcome::Failed(reason.clone()));
        }
    }

    fn add_waiter(&mut self, wait: Wait, reply: Option<oneshot::Sender<Outcome>>) {
        if let Some(reply) = reply {
            self.waiters.push((wait, reply));
        }
    }

    /// Feeds an event caused by a request: the changes it makes give it as their reason.
    fn feed_because(&mut self, cause: (Origin, Action), event: Event) {
        self.cause = Some(cause);
        self.feed(event);
        self.cause = None;
    }

    /// Feeds an event and carries out the effects, which may produce more events.
    fn feed(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        let mut spawned = false;
        while let Some(event) = events.pop_front() {
            let now = tokio::time::Instant::now().into_std();
            let sample = fastrand::f64() * 2.0 - 1.0;
            let from = self.machine.state;
            let health = self.machine.health;
            let effects = self.machine.step(&self.cfg, event, now, sample);
            let to = self.machine.state;
            let mut changes = Vec::new();
            if from.name() != to.name() {
                tracing::info!(
                    process = %self.spec.name,
                    "{} -> {}{}",
                    from.name(),
                    to.name(),
                    describe(&self.machine.description)
                );
                changes.push(Change::State { from, to });
            }
            if health != self.machine.health
                && matches!(self.machine.health, Health::Healthy | Health::Unhealthy)
            {
                changes.push(Change::Health {
                    from: health,
                    to: self.machine.health,
                });
            }
            // A start is announced with the PID its spawn effect gives.
            let mut new_pid = None;
            for effect in effects {
                match effect {
                    // A second spawn in one go would mean the first failed at
                    // once and was retried without a wait; the machine waits
                    // after such a failure (see MIN_DELAY_AFTER_FAILED_SPAWN),
                    // so this is a safeguard: defer it rather than lose track
                    // of a process or keep this task busy.
                    Effect::Spawn if spawned => self.spawn_deferred = true,
                    Effect::Spawn => {
                        spawned = true;
                        let event = self.spawn_child();
                        if let Event::Spawned(pid) = event {
                            new_pid = Some(pid);
                        }
                        events.push_back(event);
                    }
                    Effect::Signal { pid, signal, group } => self.signal(pid, signal, group),
                    Effect::Removed => self.removed = true,
                    Effect::Adopt(pid) => {
                        if let Some(event) = self.adopt(pid) {
                            events.push_back(event);
                        }
                    }
                    Effect::Retire => {
                        self.retired_exit = self.exit.take();
                        self.retired_cgroup = self.cgroup.take();
                        self.report = None;
                    }
                    Effect::RolloutFailed(reason) => {
                        tracing::warn!(
                            process = %self.spec.name,
                            "{}",
                            crate::text::sanitize(&reason.to_string())
                        );
                        // A reconfiguration that never got ready: the old
                        // process runs on, with the settings it was started with.
                        if let Some((spec, cfg)) = self.previous.take().map(|p| *p) {
                            self.spec = spec;
                            self.cfg = cfg;
                        }
                        self.exit = self.retired_exit.take();
                        self.cgroup = self.retired_cgroup.take();
                        self.fail_waiters(Wait::Start, &Failure::Rollout(reason));
                    }
                }
            }
            let pid = self.machine.state.pid().or(new_pid);
            for change in changes {
                self.announce(change, pid);
            }
        }
        // The replacement is ready (or the rollout is over): the previous
        // settings are no longer needed for a rollback.
        if self.previous.is_some() && self.machine.retiring.is_none_or(|r| r.stop_sent.is_some()) {
            self.previous = None;
        }
        self.sync_probing();
        self.sync_notify_route();
        self.sync_group_kill();
        self.publish();
    }

    /// With `kill_group`, a process being stopped, and the retiring one of a
    /// rolling restart, take their process group with them: the reaper
    /// SIGKILLs what is left of it as it collects the exit (the machine's
    /// own SIGKILL to the group after the exit could only be sent by PID,
    /// which minder never does once the process is collected).
    fn sync_group_kill(&self) {
        if !self.cfg.kill_group {
            return;
        }
        if let State::Stopping { pid, .. } = self.machine.state {
            self.context.reaper.kill_group_at_exit(pid);
        }
        if let Some(old) = self.machine.retiring {
            self.context.reaper.kill_group_at_exit(old.pid);
        }
    }

    /// Tells the subscribers (`ctl events`, hooks, systemd, ...) about a
    /// change that just happened.
    fn announce(&self, change: Change, pid: Option<Pid>) {
        // Nobody listening: skip building it.
        if self.context.transitions.receiver_count() == 0 {
            return;
        }
        let cause = match self.cause {
            Some((by, action)) => Cause::Requested { by, action },
            None => Cause::Process(self.machine.description.clone()),
        };
        let transition = Transition {
            at: std::time::SystemTime::now(),
            process: self.spec.name.clone(),
            program: self.spec.program.clone(),
            pid,
            change,
            cause,
        };
        let _ = self.context.transitions.send(Arc::new(transition));
    }

    /// Drops the `MAINPID=` of `message` unless it names a process of this
    /// program's own tree (see [`process::check_main_pid`]): minder signals
    /// its main process as root, so a program must not be able to point it
    /// at a stranger, or at minder itself. The rest of the message counts
    /// as if the line had not been there.
    fn vet_main_pid(&self, sender: Pid, message: &mut NotifyMessage) {
        let Some(candidate) = message.main_pid.filter(|c| *c != sender) else {
            return;
        };
        // Checked right before the adoption it allows, in the same step.
        let verdict = match self.machine.state.pid() {
            Some(main) => process::check_main_pid(candidate, main),
            None => Err(format!("no main process ({})", self.machine.state.name())),
        };
        if let Err(why) = verdict {
            tracing::warn!(
                process = %self.spec.name,
                "MAINPID={candidate} from pid {sender} refused: {why}"
            );
            message.main_pid = None;
        }
    }

    /// `MAINPID=`: the program forked; follow the new main process. Returns an
    /// exit event if it is already gone.
    fn adopt(&mut self, pid: Pid) -> Option<Event> {
        tracing::info!(process = %self.spec.name, "main process is now pid {pid} (MAINPID)");
        self.exit = Some(self.context.reaper.adopt(pid));
        if self.cgroup.is_none() {
            if let Some(ledger) = &self.context.ledger {
                ledger.record(pid);
            }
        }
        if nix::sys::signal::kill(pid, None) == Err(nix::errno::Errno::ESRCH) {
            // It ended before it was adopted; its status went to the orphan path.
            self.exit = None;
            return Some(Event::Exited(ProcessEnd::Exited(0)));
        }
        None
    }

    /// Starts or stops probing to match the state: probes run only while a
    /// process is starting or running, and a probe of a process that is gone
    /// is cancelled (an exec probe's group is killed with it).
    fn sync_probing(&mut self) {
        if self.spec.probe.is_none() {
            return;
        }
        let live = match self.machine.state {
            State::Starting { pid, .. } | State::Running { pid, .. } => Some(pid),
            _ => None,
        };
        if let Some((probed, task)) = &self.probe {
            if Some(*probed) != live {
                task.abort();
                self.probe = None;
            }
        }
        match live {
            None => self.next_probe = None,
            Some(_) if self.next_probe.is_none() && self.probe.is_none() => {
                self.next_probe = Some(tokio::time::Instant::now() + self.probe_interval());
            }
            Some(_) => {}
        }
    }

    fn probe_interval(&self) -> std::time::Duration {
        let interval = self
            .cfg
            .health
            .as_ref()
            .map(|h| h.interval)
            .unwrap_or_default();
        match self.machine.state {
            State::Starting { .. } => interval.min(STARTING_PROBE_INTERVAL),
            _ => interval,
        }
    }

    fn start_probe(&mut self) {
        self.next_probe = None;
        let (Some(target), Some(health), Some(pid)) = (
            self.spec.probe.clone(),
            self.cfg.health.as_ref(),
            self.machine.state.pid(),
        ) else {
            return;
        };
        let prober = self.context.prober.clone();
        let timeout = health.timeout;
        let https = self.https.for_target(&target);
        let request = self.spawn_request();
        let task = tokio::spawn(async move {
            prober
                .probe(&target, timeout, &request, https.as_deref())
                .await
        });
        self.probe = Some((pid, task));
    }

    fn on_probe_result(&mut self, pid: Pid, result: ProbeResult) {
        tracing::debug!(
            process = %self.spec.name,
            ok = result.ok,
            "probe: {}",
            crate::text::sanitize(&result.message)
        );
        if let Some(probes) = &self.probes {
            probes.record(&result);
        }
        let event = Event::Probe {
            pid,
            ok: result.ok,
            message: result.message.clone(),
        };
        self.last_probe = Some(result);
        self.feed(event);
        // Never overlapping: the next probe is timed from this one's end.
        if self.next_probe.is_none() && self.machine.state.pid() == Some(pid) {
            self.next_probe = Some(tokio::time::Instant::now() + self.probe_interval());
        }
    }

    /// Keeps the notify route pointing at the current main process.
    fn sync_notify_route(&mut self) {
        let Some(tx) = &self.notify_tx else {
            return;
        };
        let live = self.machine.state.pid();
        if self.routed != live {
            if let Some(old) = self.routed {
                self.context.notify_routes.unregister(old);
            }
            if let Some(new) = live {
                self.context.notify_routes.register(new, tx.clone());
            }
            self.routed = live;
        }
    }

    /// How this process is spawned (exec probes run the same way, with their own argv).
    fn spawn_request(&self) -> SpawnRequest {
        let mut environment = self.spec.full_environment();
        let mut pid_variables = Vec::new();
        if uses_notify(&self.cfg) {
            environment.push((
                "NOTIFY_SOCKET".to_string(),
                self.context.notify_socket.display().to_string(),
            ));
        }
        if !self.cfg.watchdog.is_zero() {
            environment.push((
                "WATCHDOG_USEC".to_string(),
                self.cfg.watchdog.as_micros().to_string(),
            ));
            pid_variables.push("WATCHDOG_PID");
        }
        SpawnRequest {
            argv: self.spec.argv.clone(),
            directory: self.cfg.directory.clone(),
            clear_env: self.cfg.clear_env,
            environment,
            user: self.cfg.user.clone(),
            group: self.cfg.group.clone(),
            stdin: None,
            stdout: Output::MinderStderr,
            stderr: Output::MinderStderr,
            pid_variables,
            listen_fds: Vec::new(),
            cgroup: None,
            limits: self
                .cfg
                .resources
                .as_ref()
                .map(|r| r.limits.iter().map(|l| (l.resource, l.value)).collect())
                .unwrap_or_default(),
        }
    }

    fn spawn_child(&mut self) -> Event {
        let (stdout, stderr) = match self.logs.outputs() {
            Ok(outputs) => outputs,
            Err(e) => {
                tracing::warn!(process = %self.spec.name, "creating log pipes: {e}");
                return Event::SpawnFailed(SpawnError::setup("creating log pipes", &e));
            }
        };
        let mut request = SpawnRequest {
            stdout,
            stderr,
            ..self.spawn_request()
        };
        // Held until spawn returns: the child gets its own copies as fds 3..
        let sockets = match &self.listen {
            None => None,
            Some(set) => match set.sockets() {
                Ok(fds) => {
                    request.listen_fds = ListenSet::raw(&fds);
                    request.environment.extend([
                        ("LISTEN_FDS".to_string(), fds.len().to_string()),
                        ("LISTEN_FDNAMES".to_string(), set.fd_names()),
                    ]);
                    request.pid_variables.push("LISTEN_PID");
                    Some(fds)
                }
                Err(e) => {
                    tracing::warn!(process = %self.spec.name, "{e}");
                    return Event::SpawnFailed(SpawnError::plain(SpawnStage::Prepare, e));
                }
            },
        };
        let cgroup = match self.make_cgroup() {
            Ok(cgroup) => cgroup,
            Err(e) => {
                tracing::warn!(process = %self.spec.name, "spawn failed: {e}");
                return Event::SpawnFailed(e);
            }
        };
        // Held until spawn returns, like the sockets.
        let directory = match cgroup.as_ref().map(Cgroup::open).transpose() {
            Ok(directory) => directory,
            Err(e) => {
                cgroup.iter().for_each(Cgroup::remove);
                let e = SpawnError::setup("opening the cgroup", &e);
                tracing::warn!(process = %self.spec.name, "spawn failed: {e}");
                return Event::SpawnFailed(e);
            }
        };
        request.cgroup = directory.as_ref().map(|d| d.as_raw_fd());
        let spawned = process::spawn_unconfirmed(&request, &self.context.reaper);
        drop(sockets);
        drop(directory);
        match spawned {
            Ok((spawned, report)) => {
                tracing::debug!(process = %self.spec.name, pid = spawned.pid.as_raw(), "spawned");
                self.exit = Some(spawned.exit);
                self.report = Some(report);
                if cgroup.is_none() {
                    if let Some(ledger) = &self.context.ledger {
                        ledger.record(spawned.pid);
                    }
                }
                self.cgroup = cgroup;
                Event::Spawned(spawned.pid)
            }
            Err(e) => {
                cgroup.iter().for_each(Cgroup::remove);
                tracing::warn!(process = %self.spec.name, "spawn failed: {e}");
                Event::SpawnFailed(e)
            }
        }
    }

    /// The end of a process (the current one, or the `retired` one) whose
    /// main process has ended: `None` while what is left of its cgroup is
    /// being killed (the end comes again once it is empty), else the end to
    /// feed, `killed by the OOM killer` where the kernel says so.
    fn settle(&mut self, end: ProcessEnd, retired: bool) -> Option<ProcessEnd> {
        let slot = if retired {
            &mut self.retired_cgroup
        } else {
            &mut self.cgroup
        };
        let Some(cgroup) = slot.as_ref() else {
            let pid = if retired {
                self.machine.retiring.map(|r| r.pid)
            } else {
                self.machine.state.pid()
            };
            if let (Some(ledger), Some(pid)) = (&self.context.ledger, pid) {
                ledger.forget(pid);
            }
            return Some(end);
        };
        // Read before the cgroup goes: its `memory.events` goes with it.
        let oom = cgroup.oom_kills() > 0;
        if let Some(later) = cgroup.after_exit(end) {
            tracing::debug!(process = %self.spec.name, "{end}; killing what is left of its cgroup");
            if retired {
                self.retired_exit = Some(later);
            } else {
                self.exit = Some(later);
            }
            return None;
        }
        *slot = None;
        Some(match end {
            ProcessEnd::Signaled(libc::SIGKILL) if oom => ProcessEnd::OomKilled {
                memory_max: self.cfg.resources.as_ref().and_then(|r| r.memory_max),
            },
            end => end,
        })
    }

    /// The cgroup for a new process, if it gets one; an error (the spawn
    /// fails with it) when it needs one minder cannot make.
    fn make_cgroup(&self) -> Result<Option<Cgroup>, SpawnError> {
        let resources = self.cfg.resources.as_deref();
        let failed = |e: cgroup::CgroupError| SpawnError::plain(SpawnStage::Cgroup, e.to_string());
        match (&self.context.cgroups, &self.cgroup_home) {
            (Some(tree), Some(home)) if self.cfg.cgroup => {
                tree.create(home, resources).map(Some).map_err(failed)
            }
            _ => match resources.and_then(cgroup::needs_controller) {
                Some(e) => Err(SpawnError::plain(
                    SpawnStage::Cgroup,
                    format!("{e} (minder runs without cgroups)"),
                )),
                None => Ok(None),
            },
        }
    }

    fn signal(&self, pid: nix::unistd::Pid, signal: Signal, group: bool) {
        // The final SIGKILL of a stop reaches every process of the cgroup.
        // Only a live process's own: the machine's SIGKILL to the group of
        // a process that has just exited (see `sync_group_kill`) must not
        // reach the cgroup of its successor.
        let cgroup = if self.machine.retiring.is_some_and(|r| r.pid == pid) {
            self.retired_cgroup.as_ref()
        } else if self.machine.state.pid() == Some(pid) {
            self.cgroup.as_ref()
        } else {
            None
        };
        if let (Signal::SIGKILL, Some(cgroup)) = (signal, cgroup) {
            cgroup.kill();
            return;
        }
        if let Err(e) = process::already_gone(self.context.reaper.signal(pid, signal, group)) {
            tracing::warn!(
                process = %self.spec.name,
                "sending {} to pid {pid}: {}",
                signal.as_str(),
                e.desc()
            );
        }
    }

    /// Publishes the status and settles the requests it answers.
    fn publish(&mut self) {
        self.status.send_replace(snapshot(
            &self.spec,
            self.cgroup.as_ref(),
            &self.machine,
            self.stop_epoch,
            self.last_probe.clone(),
            self.logs.stats(),
            self.probes.clone(),
        ));
        let mut i = 0;
        while i < self.waiters.len() {
            let outcome = match self.waiters[i].0 {
                Wait::Start => self.machine.start_outcome(),
                Wait::Stop => self.machine.stop_outcome(),
            };
            if outcome == Outcome::Pending {
                i += 1;
            } else {
                let (_, reply) = self.waiters.swap_remove(i);
                // The requester may have stopped waiting (`--no-wait`, Ctrl-C).
                let _ = reply.send(outcome);
            }
        }
        if self.waiters.is_empty() {
            // Requests are rare: no buffer kept per process in between.
            self.waiters = Vec::new();
        }
    }
}

/// The ` (description)` of a log line. A description may quote a program
/// (its probe's output), so it is sanitized: one log line per change, and no
/// terminal controls in the text log (the JSON log shows the same message).
fn describe(description: &Why) -> String {
    if description.is_none() {
        String::new()
    } else {
        format!(" ({})", crate::text::sanitize(&description.to_string()))
    }
}

fn snapshot(
    spec: &ProcessSpec,
    cgroup: Option<&Cgroup>,
    machine: &Machine,
    stop_epoch: u64,
    last_probe: Option<ProbeResult>,
    logs: Arc<LogStats>,
    probes: Option<Arc<ProbeStats>>,
) -> ProcessStatus {
    ProcessStatus {
        name: spec.name.clone(),
        program: spec.program.clone(),
        instance: spec.instance,
        state: machine.state,
        restarts: machine.restarts,
        oom_kills: machine.oom_kills,
        last_end: machine.last_end,
        description: machine.description.clone(),
        changed: machine.changed,
        stop_epoch,
        logs,
        health: machine.health,
        last_probe,
        notify_status: machine.notify_status.clone(),
        retiring: machine.retiring,
        probes,
        failures: machine.failures,
        backoff_step: machine.backoff_step,
        cgroup: cgroup.cloned(),
    }
}

/// Whether children of this program get `NOTIFY_SOCKET`.
fn uses_notify(cfg: &ProgramConfig) -> bool {
    cfg.notify || !cfg.watchdog.is_zero()
}

/// The result of the probe in flight; pending forever when there is none.
async fn wait_probe(
    probe: &mut Option<(Pid, tokio::task::JoinHandle<ProbeResult>)>,
) -> ProbeResult {
    match probe {
        Some((_, task)) => match task.await {
            Ok(result) => result,
            Err(e) => ProbeResult {
                ok: false,
                message: format!("probe failed: {e}"),
                at: std::time::SystemTime::now(),
                duration: std::time::Duration::ZERO,
            },
        },
        None => std::future::pending().await,
    }
}

async fn recv_notify(
    rx: &mut Option<mpsc::Receiver<(Pid, NotifyMessage)>>,
) -> Option<(Pid, NotifyMessage)> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits for the current child's exit; pending forever when there is none.
async fn wait_exit(exit: &mut Option<ExitReceiver>) -> ProcessEnd {
    match exit {
        Some(rx) => match rx.await {
            Ok(end) => end,
            // The reaper never drops a registered sender; if it did, the
            // child's fate is unknown and waiting forever is the honest answer.
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}
