//! The supervisor: owns the registry of processes (one actor each), carries
//! out typed requests, orders starts and stops by `depends_on`, applies
//! reloads (`reload.rs`), hands over to a new image (`handover.rs`) and
//! drives shutdown.
//!
//! It knows nothing of the layers on it. The control socket, systemd,
//! `/metrics` and hooks send it [`Input`]s and subscribe to what it
//! publishes (see [`events`]); `daemon.rs` wires them together.

mod actor;
pub mod backoff;
pub mod events;
mod handover;
mod order;
mod reload;
pub mod state;
mod watch;

pub use actor::{Command, Context, ProcessActor, ProcessHandle, ProcessStatus};
pub use events::{Action, Cause, Change, Origin, Phase, Transition};
pub use handover::{Exec, Handover, Resume};
pub use reload::{ReloadGate, ReloadReport};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::{self, Config};
use crate::logs::{LogRequest, Stream, TailReply};
use crate::sockets::ListenSet;
use order::Topology;
use state::Outcome;

/// A request to the supervisor loop; the queue is bounded, so a flood is
/// answered as busy by whoever sends.
#[derive(Debug)]
pub enum Input {
    /// The status of the named processes or programs (all when empty).
    Status {
        /// Process or program names, or `all`.
        names: Vec<String>,
        /// The processes, in config order.
        reply: oneshot::Sender<Result<Vec<ProcessHandle>, Refusal>>,
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
    fn new(name: &str, outcome: Outcome) -> Answer {
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
    names: Vec<String>,
}

impl Subscription {
    /// Whether the subscriber asked for this transition.
    pub fn wants(&self, transition: &Transition) -> bool {
        self.names.is_empty()
            || self
                .names
                .iter()
                .any(|n| *n == transition.process || *n == transition.program)
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

/// The registry of supervised processes.
pub struct Supervisor {
    config: Arc<Config>,
    /// In config order: programs as listed, instances ascending.
    processes: Vec<ProcessHandle>,
    /// Processes removed by a reload that are still stopping.
    draining: Vec<ProcessHandle>,
    context: Arc<Context>,
    /// Each program's `listen` sockets, kept across restarts and reloads.
    listen: HashMap<String, Arc<ListenSet>>,
    /// Started by `reexec`: the processes are already up; start nothing.
    resumed: bool,
    /// `--insecure-config`: accept config files others than root could change.
    insecure_config: bool,
    /// Reloads read the files on the blocking pool; SIGHUP waits with `None`.
    reloads: config::Reloads<Option<oneshot::Sender<Result<ReloadReport, Refusal>>>>,
    /// Where the supervisor is, for the layers above.
    phase: Arc<tokio::sync::watch::Sender<Phase>>,
    /// What must accept a new config before a reload applies it.
    gate: Option<ReloadGate>,
    /// How to hand over to a new image; `ctl reexec` is refused without it.
    exec: Option<Exec>,
}

impl Supervisor {
    /// Creates an actor per process (all `stopped`, or as `resume` says
    /// after `ctl reexec`); nothing starts yet.
    pub fn new(config: Config, context: Arc<Context>, resume: Option<Resume>) -> Supervisor {
        let config = Arc::new(config);
        let mut supervisor = Supervisor {
            config: Arc::clone(&config),
            processes: Vec::new(),
            draining: Vec::new(),
            context,
            listen: HashMap::new(),
            resumed: resume.is_some(),
            insecure_config: false,
            reloads: config::Reloads::default(),
            phase: Arc::new(tokio::sync::watch::channel(Phase::new(Arc::clone(&config))).0),
            gate: None,
            exec: None,
        };
        let mut machines = HashMap::new();
        if let Some(resume) = resume {
            for (program, fds) in &resume.listen {
                if let Some(cfg) = config.program(program) {
                    if let Some(set) = ListenSet::adopt(cfg, fds) {
                        supervisor.listen.insert(program.clone(), set);
                    }
                }
            }
            machines = resume.machines;
        }
        supervisor.processes = supervisor.spawn_actors(&config, |_| true, &mut machines);
        supervisor
    }

    /// Accepts (on reload too) config files that others than root could change.
    pub fn with_insecure_config(mut self, insecure: bool) -> Supervisor {
        self.insecure_config = insecure;
        self
    }

    /// Asks `gate` before each reload applies a new config (the `/metrics`
    /// server binds its new address there): its error rejects the reload.
    pub fn with_reload_gate(mut self, gate: ReloadGate) -> Supervisor {
        self.gate = Some(gate);
        self
    }

    /// Hands over to a new image with `exec` on `ctl reexec`.
    pub fn with_exec(mut self, exec: Exec) -> Supervisor {
        self.exec = Some(exec);
        self
    }

    /// Where the supervisor is, from now on (see [`Phase`]).
    pub fn phase(&self) -> tokio::sync::watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// The transitions of every process, from now on.
    pub fn transitions(&self) -> broadcast::Sender<Arc<Transition>> {
        self.context.transitions.clone()
    }

    fn spawn_actors(
        &mut self,
        config: &Config,
        include: impl Fn(&str) -> bool,
        machines: &mut HashMap<String, state::Machine>,
    ) -> Vec<ProcessHandle> {
        let mut handles = Vec::new();
        let mut new_listen = Vec::new();
        for program in config.programs.iter().filter(|p| include(&p.name)) {
            let cfg = Arc::clone(program);
            // A program keeps its sockets across a reload that leaves `listen` alone.
            let listen = match self.listen.get(&program.name) {
                Some(set) if set.serves(program) => Some(Arc::clone(set)),
                _ => ListenSet::for_program(program),
            };
            for spec in program.processes_to_run() {
                let handle = match machines.remove(&spec.name) {
                    Some(machine) => ProcessActor::spawn_with(
                        spec,
                        Arc::clone(&cfg),
                        listen.clone(),
                        Arc::clone(&self.context),
                        machine,
                    ),
                    None => ProcessActor::spawn(
                        spec,
                        Arc::clone(&cfg),
                        listen.clone(),
                        Arc::clone(&self.context),
                    ),
                };
                handles.push(handle);
            }
            new_listen.push((program.name.clone(), listen));
        }
        for (program, listen) in new_listen {
            match listen {
                Some(set) => self.listen.insert(program, set),
                None => self.listen.remove(&program),
            };
        }
        handles
    }

    fn topology(&self, origin: Origin) -> Topology {
        Topology::new(&self.config, &self.processes, origin)
    }

    /// Runs until shutdown: starts autostart programs, then serves inputs.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        // After `reexec` every process is where the previous image left it.
        let autostart: Vec<ProcessHandle> = self
            .processes
            .iter()
            .filter(|h| {
                !self.resumed && self.config.program(&h.program).is_some_and(|p| p.autostart)
            })
            .cloned()
            .collect();
        let topology = self.topology(Origin::Autostart);
        let phase = Arc::clone(&self.phase);
        tokio::spawn(async move {
            topology.start(autostart).await;
            phase.send_modify(|p| p.autostarted = true);
            release_free_memory();
        });

        let mut shutdown_reply = None;
        loop {
            let input = tokio::select! {
                input = inputs.recv() => input,
                (loaded, waiters) = self.reloads.finished() => {
                    self.finish_reload(loaded, waiters);
                    continue;
                }
            };
            let Some(input) = input else { break };
            match input {
                Input::Shutdown(reply) => {
                    shutdown_reply = Some(reply);
                    break;
                }
                Input::Terminate => break,
                input => self.handle(input),
            }
        }
        for waiter in self.reloads.abandon().into_iter().flatten() {
            let _ = waiter.send(Err(Refusal::ShuttingDown));
        }
        self.phase.send_modify(|p| p.stopping = true);
        self.shutdown(&mut inputs).await;
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Status { names, reply } => {
                let _ = reply.send(self.select(&names, true));
            }
            Input::Act {
                action,
                names,
                wait,
                reply,
            } => {
                let handles = match self.select(&names, action == Act::ReopenLogs) {
                    Ok(handles) => handles,
                    Err(refusal) => {
                        let _ = reply.send(Err(refusal));
                        return;
                    }
                };
                match action {
                    Act::Start => {
                        answer(reply, wait, self.topology(Origin::Request).start(handles))
                    }
                    Act::Stop => answer(reply, wait, self.topology(Origin::Request).stop(handles)),
                    Act::Restart => {
                        let rolling = self
                            .config
                            .programs
                            .iter()
                            .filter(|p| state::rolling(p))
                            .map(|p| p.name.clone())
                            .collect();
                        answer(reply, wait, restart(handles, rolling));
                    }
                    Act::Signal(signal) => answer(reply, true, send_signals(handles, signal)),
                    Act::ReopenLogs => answer(reply, true, reopen_logs(handles)),
                }
            }
            Input::Reload(reply) => self.reloads.request(&self.config.path, reply),
            Input::Reexec {
                binary,
                checked,
                reply,
            } => self.reexec(binary, &checked, reply),
            Input::Tail {
                name,
                stream,
                lines,
                follow,
                reply,
            } => self.tail(name, stream, lines, follow, reply),
            Input::ReopenLogs => {
                tracing::info!("reopening log files");
                tokio::spawn(reopen_logs(self.processes.clone()));
            }
            Input::Subscribe { names, reply } => {
                let _ = reply.send(self.subscribe(names));
            }
            Input::Snapshot(reply) => {
                let _ = reply.send(self.processes.clone());
            }
            Input::Ping(reply) => {
                let _ = reply.send(());
            }
            // The loop takes these before it gets here.
            Input::Terminate | Input::Shutdown(_) => {}
        }
    }

    /// Starts a `tail`: one process, through its actor to its capture.
    fn tail(
        &self,
        name: String,
        stream: Stream,
        lines: usize,
        follow: bool,
        reply: oneshot::Sender<Result<TailStart, Refusal>>,
    ) {
        let handle = match self.select(std::slice::from_ref(&name), false) {
            Ok(handles) if handles.len() == 1 => handles.into_iter().next(),
            Ok(handles) => {
                let count = handles.len();
                let _ = reply.send(Err(Refusal::NotOne { name, count }));
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let Some(handle) = handle else { return };
        let (tx, rx) = oneshot::channel();
        let request = LogRequest::Tail {
            stream,
            lines: lines.min(crate::logs::MAX_TAIL_LINES),
            follow,
            reply: tx,
        };
        if let Err(e) = handle.send(Command::Logs(request)) {
            let _ = reply.send(Err(Refusal::Failed(e)));
            return;
        }
        tokio::spawn(async move {
            let answer = match rx.await {
                Ok(Ok(tail)) => Ok(TailStart {
                    name: handle.name.clone(),
                    reply: tail,
                }),
                Ok(Err(e)) => Err(Refusal::Failed(e)),
                Err(_) => Err(Refusal::Failed(format!(
                    "{}: no longer supervised",
                    handle.name
                ))),
            };
            let _ = reply.send(answer);
        });
    }

    /// Starts a subscription after checking the names.
    fn subscribe(&self, names: Vec<String>) -> Result<Subscription, Refusal> {
        let selected = self.select(&names, true)?;
        let names = if names.iter().any(|n| n == "all") {
            Vec::new()
        } else {
            names
        };
        Ok(Subscription {
            following: selected.iter().map(|h| h.name.clone()).collect(),
            transitions: self.context.transitions.subscribe(),
            names,
        })
    }

    /// Resolves names (process, program, or `all`) to handles, in config order.
    fn select(
        &self,
        names: &[String],
        empty_means_all: bool,
    ) -> Result<Vec<ProcessHandle>, Refusal> {
        if names.is_empty() {
            return if empty_means_all {
                Ok(self.processes.clone())
            } else {
                Err(Refusal::NoName)
            };
        }
        let mut wanted: HashSet<&str> = HashSet::new();
        let mut unknown = Vec::new();
        for name in names {
            if name == "all" {
                return Ok(self.processes.clone());
            }
            let matches: Vec<&ProcessHandle> = self
                .processes
                .iter()
                .filter(|h| h.name == *name || h.program == *name)
                .collect();
            if matches.is_empty() {
                unknown.push(name.as_str());
            }
            wanted.extend(matches.iter().map(|h| h.name.as_str()));
        }
        if !unknown.is_empty() {
            return Err(Refusal::Unknown(
                unknown.into_iter().map(str::to_string).collect(),
            ));
        }
        Ok(self
            .processes
            .iter()
            .filter(|h| wanted.contains(h.name.as_str()))
            .cloned()
            .collect())
    }

    /// Stops everything in reverse dependency order within `shutdown_timeout`,
    /// then SIGKILLs what is left. A second SIGTERM/SIGINT kills at once.
    async fn shutdown(&mut self, inputs: &mut mpsc::Receiver<Input>) {
        tracing::info!("shutting down: stopping {} processes", self.processes.len());
        let everything: Vec<ProcessHandle> = self
            .processes
            .iter()
            .chain(&self.draining)
            .cloned()
            .collect();
        let stop = self.topology(Origin::Shutdown).stop(self.processes.clone());
        tokio::pin!(stop);
        let deadline = tokio::time::sleep(self.config.supervisor.shutdown_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = &mut deadline => {
                    tracing::warn!("shutdown_timeout reached: killing what is left");
                    break;
                }
                input = inputs.recv() => match input {
                    Some(Input::Terminate) => {
                        tracing::warn!("second termination signal: killing everything");
                        break;
                    }
                    Some(input) => refuse_while_stopping(input, &self.processes, |names| self.select(names, true)),
                    None => {}
                },
            }
        }
        for handle in &everything {
            let _ = handle.send(Command::Kill);
        }
        // SIGKILL cannot be ignored; this bound only covers processes stuck in the kernel.
        let gone = async {
            for handle in &everything {
                let mut watch = handle.watch();
                while watch.borrow().state.pid().is_some() {
                    if watch.changed().await.is_err() {
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .is_err()
        {
            tracing::error!("some processes did not die after SIGKILL");
        }
        // Every child is gone: write out what their pipes still hold.
        let flushed = async {
            for handle in &everything {
                let (tx, rx) = oneshot::channel();
                if handle
                    .send(Command::Logs(LogRequest::Flush { reply: tx }))
                    .is_ok()
                {
                    let _ = rx.await;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), flushed)
            .await
            .is_err()
        {
            tracing::warn!("log files not fully written out within 5s");
        }
        tracing::info!("all processes stopped");
    }
}

/// What shutdown answers: status, snapshots and pings as usual (systemd and
/// `/metrics` keep working), everything else refused.
fn refuse_while_stopping(
    input: Input,
    processes: &[ProcessHandle],
    select: impl Fn(&[String]) -> Result<Vec<ProcessHandle>, Refusal>,
) {
    match input {
        Input::Status { names, reply } => {
            let _ = reply.send(select(&names));
        }
        Input::Snapshot(reply) => {
            let _ = reply.send(processes.to_vec());
        }
        Input::Ping(reply) => {
            let _ = reply.send(());
        }
        Input::Act { reply, .. } => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        Input::Reload(Some(reply)) => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        Input::Reexec { reply, .. } => {
            let _ = reply.send(Refusal::ShuttingDown);
        }
        Input::Tail { reply, .. } => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        Input::Subscribe { reply, .. } => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        // Dropped: the client hears that minder is shutting down.
        Input::Shutdown(_) | Input::Reload(None) | Input::ReopenLogs | Input::Terminate => {}
    }
}

/// Runs `work` in its own task and answers with its results, or at once
/// (with none) when not waiting.
fn answer(
    reply: oneshot::Sender<Result<Vec<Answer>, Refusal>>,
    wait: bool,
    work: impl std::future::Future<Output = Vec<Answer>> + Send + 'static,
) {
    tokio::spawn(async move {
        if wait {
            let _ = reply.send(Ok(work.await));
        } else {
            let _ = reply.send(Ok(Vec::new()));
            work.await;
        }
    });
}

/// Restarts every handle, waiting for each to be running again: programs
/// without `listen` all at once; programs with `listen` (rolling restarts) one
/// instance at a time, stopping at the first failure so the rest keep serving.
async fn restart(handles: Vec<ProcessHandle>, rolling: HashSet<String>) -> Vec<Answer> {
    let (one_by_one, together): (Vec<_>, Vec<_>) = handles
        .into_iter()
        .partition(|h| rolling.contains(&h.program));
    let mut results = order::request_all(together, |_, reply| Command::Restart { reply }).await;
    let mut failed_programs: HashSet<String> = HashSet::new();
    for h in one_by_one {
        if failed_programs.contains(&h.program) {
            results.push(Answer::new(
                &h.name,
                Outcome::Failed("not restarted: an earlier instance failed to".to_string()),
            ));
            continue;
        }
        let result = order::request_all(vec![h.clone()], |_, reply| Command::Restart { reply })
            .await
            .pop()
            .unwrap_or_else(|| Answer::new(&h.name, Outcome::Failed("no reply".into())));
        if matches!(result.outcome, Outcome::Failed(_)) {
            failed_programs.insert(h.program.clone());
        }
        results.push(result);
    }
    results
}

async fn send_signals(
    handles: Vec<ProcessHandle>,
    signal: nix::sys::signal::Signal,
) -> Vec<Answer> {
    let mut results = Vec::new();
    for h in handles {
        let (tx, rx) = oneshot::channel();
        let outcome = match h.send(Command::Signal { signal, reply: tx }) {
            Err(e) => Outcome::Failed(e),
            Ok(()) => match rx.await {
                Ok(Ok(())) => Outcome::Done,
                Ok(Err(e)) => Outcome::Failed(e),
                Err(_) => Outcome::Failed(format!("{}: no longer supervised", h.name)),
            },
        };
        results.push(Answer::new(&h.name, outcome));
    }
    results
}

/// Reopens every process's log files; one result per process.
async fn reopen_logs(handles: Vec<ProcessHandle>) -> Vec<Answer> {
    let mut waits = Vec::new();
    for h in handles {
        let (tx, rx) = oneshot::channel();
        let sent = h.send(Command::Logs(LogRequest::Reopen { reply: tx }));
        waits.push((h.name, sent, rx));
    }
    let mut results = Vec::new();
    for (name, sent, rx) in waits {
        let outcome = match sent {
            Err(e) => Outcome::Failed(e),
            Ok(()) => match rx.await {
                Ok(errors) if errors.is_empty() => Outcome::Done,
                Ok(errors) => {
                    for e in &errors {
                        tracing::warn!("{e}");
                    }
                    Outcome::Failed(errors.join("; "))
                }
                Err(_) => Outcome::Failed(format!("{name}: no longer supervised")),
            },
        };
        results.push(Answer::new(&name, outcome));
    }
    results
}

/// Hands memory freed after a burst (starting a thousand processes) back to the
/// OS; glibc keeps it otherwise, and an idle supervisor should be small.
pub(crate) fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
