//! One task per process: it owns the child and its [`Machine`], and is the only
//! place that changes them. Others talk to it through a [`ProcessHandle`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::sleep_until;

use super::state::{Effect, Event, Machine, Outcome, State};
use crate::config::{ProcessSpec, ProgramConfig};
use crate::process::{self, ExitReceiver, Output, ProcessEnd, Reaper, SpawnRequest};

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
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// Stop, replying once no child is left.
    Stop {
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// Stop (if running) then start.
    Restart {
        reply: Option<oneshot::Sender<Outcome>>,
    },
    /// Stop, then end the actor: the program left the config.
    Remove,
    /// SIGKILL the child's group now (shutdown ran out of time).
    Kill,
    /// Send a signal to the child's process group.
    Signal {
        signal: Signal,
        reply: oneshot::Sender<Result<(), String>>,
    },
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
    /// How the last run ended.
    pub last_end: Option<ProcessEnd>,
    /// Why it is in this state.
    pub description: String,
    /// When the state last changed.
    pub changed: Instant,
    /// Count of stop/remove requests so far (see [`Command::Start`]).
    pub stop_epoch: u64,
}

/// A cheap, cloneable way to reach a process actor.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    /// Process name.
    pub name: String,
    /// Program name.
    pub program: String,
    commands: mpsc::Sender<Command>,
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
    pub fn send(&self, command: Command) -> Result<(), String> {
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => format!("{}: busy, try again", self.name),
            mpsc::error::TrySendError::Closed(_) => format!("{}: no longer supervised", self.name),
        })
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
        rx.await
            .unwrap_or_else(|_| Outcome::Failed(format!("{}: no longer supervised", self.name)))
    }

    /// Resolves once the actor has ended (its status channel closed).
    pub async fn ended(&self) {
        let mut rx = self.status.clone();
        while rx.changed().await.is_ok() {}
    }
}

/// Which kind of request a waiter settles on.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Start,
    Stop,
}

/// The task owning one process.
pub struct ProcessActor {
    spec: ProcessSpec,
    cfg: Arc<ProgramConfig>,
    machine: Machine,
    reaper: Arc<Reaper>,
    exit: Option<ExitReceiver>,
    commands: mpsc::Receiver<Command>,
    status: watch::Sender<ProcessStatus>,
    waiters: Vec<(Wait, oneshot::Sender<Outcome>)>,
    stop_epoch: u64,
    removed: bool,
}

impl ProcessActor {
    /// Starts the actor task for `spec` (in `stopped`) and returns its handle.
    pub fn spawn(spec: ProcessSpec, cfg: Arc<ProgramConfig>, reaper: Arc<Reaper>) -> ProcessHandle {
        let now = tokio::time::Instant::now().into_std();
        let machine = Machine::new(now);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (status_tx, status_rx) = watch::channel(snapshot(&spec, &machine, 0));
        let handle = ProcessHandle {
            name: spec.name.clone(),
            program: spec.program.clone(),
            commands: cmd_tx,
            status: status_rx,
        };
        let actor = ProcessActor {
            spec,
            cfg,
            machine,
            reaper,
            exit: None,
            commands: cmd_rx,
            status: status_tx,
            waiters: Vec::new(),
            stop_epoch: 0,
            removed: false,
        };
        // No tracing span per actor: with thousands of processes their storage
        // would dominate minder's memory; events carry the name instead.
        tokio::spawn(actor.run());
        handle
    }

    async fn run(mut self) {
        while !self.removed {
            let deadline = self.machine.deadline(&self.cfg);
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command).await,
                    // The supervisor is gone (shutdown): nothing left to obey.
                    None => break,
                },
                end = wait_exit(&mut self.exit) => {
                    self.exit = None;
                    self.feed(Event::Exited(end)).await;
                }
                _ = sleep_until(deadline.map(Into::into).unwrap_or_else(far_future)), if deadline.is_some() => {
                    self.feed(Event::Deadline).await;
                }
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::Start {
                unless_stopped_since,
                reply,
            } => {
                if unless_stopped_since.is_some_and(|epoch| epoch != self.stop_epoch) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Outcome::Failed(
                            "stop requested while waiting for dependencies".to_string(),
                        ));
                    }
                    return;
                }
                self.add_waiter(Wait::Start, reply);
                self.feed(Event::Start).await;
            }
            Command::Restart { reply } => {
                self.add_waiter(Wait::Start, reply);
                self.feed(Event::Restart).await;
            }
            Command::Stop { reply } => {
                self.stop_epoch += 1;
                self.add_waiter(Wait::Stop, reply);
                self.feed(Event::Stop).await;
            }
            Command::Remove => {
                self.stop_epoch += 1;
                self.feed(Event::Remove).await;
            }
            Command::Kill => {
                if let Some(pid) = self.machine.state.pid() {
                    tracing::warn!(process = %self.spec.name, "killing pid {pid}: out of time");
                    self.signal(pid, Signal::SIGKILL, true);
                }
            }
            Command::Signal { signal, reply } => {
                let result = match self.machine.state.pid() {
                    Some(pid) => process::send_signal(pid, signal, true).map_err(|e| {
                        format!("{}: {}: {}", self.spec.name, signal.as_str(), e.desc())
                    }),
                    None => Err(format!(
                        "{}: not running ({})",
                        self.spec.name,
                        self.machine.state.name()
                    )),
                };
                let _ = reply.send(result);
            }
        }
    }

    fn add_waiter(&mut self, wait: Wait, reply: Option<oneshot::Sender<Outcome>>) {
        if let Some(reply) = reply {
            self.waiters.push((wait, reply));
        }
    }

    /// Feeds an event and carries out the effects, which may produce more events.
    async fn feed(&mut self, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            let now = tokio::time::Instant::now().into_std();
            let sample = fastrand::f64() * 2.0 - 1.0;
            let from = self.machine.state.name();
            let effects = self.machine.step(&self.cfg, event, now, sample);
            let to = self.machine.state.name();
            if from != to {
                tracing::info!(
                    process = %self.spec.name,
                    "{from} -> {to}{}",
                    describe(&self.machine.description)
                );
            }
            for effect in effects {
                match effect {
                    Effect::Spawn => {
                        // Yield first: with a zero backoff a failing spawn would
                        // otherwise retry without ever letting other tasks run.
                        tokio::task::yield_now().await;
                        events.push_back(self.spawn_child());
                    }
                    Effect::Signal { pid, signal, group } => self.signal(pid, signal, group),
                    Effect::Removed => self.removed = true,
                }
            }
        }
        self.publish();
    }

    fn spawn_child(&mut self) -> Event {
        let request = SpawnRequest {
            argv: self.spec.argv.clone(),
            directory: self.cfg.directory.clone(),
            clear_env: self.cfg.clear_env,
            environment: self.spec.environment.clone(),
            user: self.cfg.user.clone(),
            group: self.cfg.group.clone(),
            stdout: Output::MinderStderr,
            stderr: Output::MinderStderr,
        };
        match process::spawn(&request, &self.reaper) {
            Ok(spawned) => {
                tracing::debug!(process = %self.spec.name, pid = spawned.pid.as_raw(), "spawned");
                self.exit = Some(spawned.exit);
                Event::Spawned(spawned.pid)
            }
            Err(e) => {
                tracing::warn!(process = %self.spec.name, "spawn failed: {e}");
                Event::SpawnFailed(e.message)
            }
        }
    }

    fn signal(&self, pid: nix::unistd::Pid, signal: Signal, group: bool) {
        if let Err(e) = process::send_signal(pid, signal, group) {
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
        self.status
            .send_replace(snapshot(&self.spec, &self.machine, self.stop_epoch));
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
    }
}

fn describe(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(" ({description})")
    }
}

fn snapshot(spec: &ProcessSpec, machine: &Machine, stop_epoch: u64) -> ProcessStatus {
    ProcessStatus {
        name: spec.name.clone(),
        program: spec.program.clone(),
        instance: spec.instance,
        state: machine.state,
        restarts: machine.restarts,
        last_end: machine.last_end,
        description: machine.description.clone(),
        changed: machine.changed,
        stop_epoch,
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
