//! The supervisor: owns the registry of processes (one actor each), carries
//! out typed requests, orders starts and stops by `depends_on`, applies
//! reloads (`reload.rs`), hands over to a new image (`handover.rs`) and
//! drives shutdown (`shutdown.rs`). What it takes and answers is in
//! `input.rs`, what it publishes in `events.rs`.
//!
//! It knows nothing of the layers on it. The control socket, systemd,
//! `/metrics` and hooks send it [`Input`]s and subscribe to what it
//! publishes (see [`events`]); `daemon.rs` wires them together.

mod actor;
pub mod backoff;
pub mod events;
mod handover;
mod input;
mod order;
mod reload;
mod shutdown;
pub mod state;
mod watch;

pub use actor::{Command, Context, ProcessActor, ProcessHandle, ProcessStatus};
pub use events::{Action, Cause, Change, Origin, Phase, Transition};
pub use handover::{Exec, Handover, Resume};
pub use input::{Act, Answer, Input, Refusal, StatusView, Subscription, TailStart, INPUT_QUEUE};
pub use reload::{ReloadGate, ReloadReport};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::{self, Config};
use crate::logs::{LogRequest, Stream};
use crate::sockets::ListenSet;
use order::Topology;
use state::{Failure, Outcome};

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
    gates: Vec<Box<dyn ReloadGate>>,
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
            gates: Vec::new(),
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
    pub fn with_reload_gate(mut self, gate: Box<dyn ReloadGate>) -> Supervisor {
        self.gates.push(gate);
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
            after_burst();
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
            Input::Status { names, view } => view.show(self.statuses(&names)),
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
                        let one_at_a_time = self
                            .config
                            .programs
                            .iter()
                            .filter(|p| state::one_at_a_time(p))
                            .map(|p| p.name.clone())
                            .collect();
                        answer(reply, wait, restart(handles, one_at_a_time));
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
            let _ = reply.send(Err(Refusal::Process(e)));
            return;
        }
        tokio::spawn(async move {
            let answer = match rx.await {
                Ok(Ok(tail)) => Ok(TailStart {
                    name: handle.name.clone(),
                    reply: tail,
                }),
                Ok(Err(e)) => Err(Refusal::Failed(e)),
                Err(_) => Err(Refusal::Process(handle.gone())),
            };
            let _ = reply.send(answer);
        });
    }

    /// The published statuses of the named processes (all when none is named).
    fn statuses(&self, names: &[String]) -> Result<Vec<ProcessStatus>, Refusal> {
        let handles = self.select(names, true)?;
        Ok(handles.iter().map(ProcessHandle::status).collect())
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

/// Restarts every handle, waiting for each to be running again: most
/// programs all at once; those in `one_at_a_time` (rolling restarts, and
/// programs registered with load balancers) one instance at a time, stopping
/// at the first failure so the rest keep serving.
async fn restart(handles: Vec<ProcessHandle>, one_at_a_time: HashSet<String>) -> Vec<Answer> {
    let (one_by_one, together): (Vec<_>, Vec<_>) = handles
        .into_iter()
        .partition(|h| one_at_a_time.contains(&h.program));
    let mut results = order::request_all(together, |_, reply| Command::Restart { reply }).await;
    let mut failed_programs: HashSet<String> = HashSet::new();
    for h in one_by_one {
        if failed_programs.contains(&h.program) {
            results.push(Answer::new(
                &h.name,
                Outcome::Failed(Failure::EarlierInstanceFailed),
            ));
            continue;
        }
        let result = order::request_all(vec![h.clone()], |_, reply| Command::Restart { reply })
            .await
            .pop()
            .unwrap_or_else(|| Answer::new(&h.name, Outcome::Failed(Failure::Abandoned)));
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
                Err(_) => Outcome::Failed(h.gone()),
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
        waits.push((h, sent, rx));
    }
    let mut results = Vec::new();
    for (h, sent, rx) in waits {
        let outcome = match sent {
            Err(e) => Outcome::Failed(e),
            Ok(()) => match rx.await {
                Ok(errors) if errors.is_empty() => Outcome::Done,
                Ok(errors) => {
                    for e in &errors {
                        tracing::warn!("{e}");
                    }
                    Outcome::Failed(Failure::Reopen(errors))
                }
                Err(_) => Outcome::Failed(h.gone()),
            },
        };
        results.push(Answer::new(&h.name, outcome));
    }
    results
}

/// After a burst (starting a thousand processes, a reload): the heap it
/// freed and the mappings of code it ran go back to the OS (see `memory`).
pub(crate) fn after_burst() {
    let released = crate::memory::release();
    tracing::debug!(
        "after the burst: {} KiB of code mappings dropped",
        released / 1024
    );
}
