//! The supervisor: owns the registry of processes (one actor each), answers
//! control requests, orders starts and stops by `depends_on`, applies reloads
//! and drives shutdown.

mod actor;
pub mod backoff;
mod order;
pub mod state;
mod watch;

pub use actor::{Cause, Command, Context, ProcessActor, ProcessHandle, ProcessStatus};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::{self, Config, Defaults};
use crate::control::protocol::{
    ActionReply, ActionResult, DrainingProcess, ErrorKind, EventsStart, LastProbe, PidReply,
    ProcessInfo, ReloadReply, Reply, Request, StateEvent, StatusReply,
};
use crate::hooks::{HookContext, Hooks};
use crate::logs::{LogRequest, Stream, TailReply};
use crate::metrics::Scrape;
use crate::reexec::{self, SavedListen, SavedState};
use crate::sockets::ListenSet;
use crate::systemd::Systemd;
use order::Topology;
use state::{short_duration, Outcome, State};
use std::path::PathBuf;

/// Inputs of the supervisor loop; bounded, so a flood is answered as busy.
#[derive(Debug)]
pub enum Input {
    /// A control request with where to send the reply.
    Control(Request, oneshot::Sender<Reply>),
    /// SIGHUP.
    Reload,
    /// SIGTERM/SIGINT: the first stops everything in order, the second kills.
    Terminate,
    /// `ctl reexec` passed its checks of the binary: save the state and exec.
    Reexec(PathBuf, oneshot::Sender<Reply>),
    /// A `tail` request: answered with the history and, with `follow`, a
    /// stream of new output that the connection relays.
    Tail(Request, oneshot::Sender<Result<TailStart, Reply>>),
    /// SIGUSR1: reopen every captured log file.
    ReopenLogs,
    /// An `events` request for these names (all when empty).
    Events(
        Vec<String>,
        oneshot::Sender<Result<EventsSubscription, Reply>>,
    ),
    /// A `/metrics` scrape.
    Scrape(oneshot::Sender<Scrape>),
    /// `/healthz`: answered as soon as the loop gets to it.
    Ping(oneshot::Sender<()>),
}

/// An accepted `events` request: the stream and what to pick from it.
#[derive(Debug)]
pub struct EventsSubscription {
    /// The acknowledgement sent first.
    pub start: EventsStart,
    /// Every state change from the moment of the request.
    pub events: broadcast::Receiver<Arc<StateEvent>>,
    /// Process or program names to keep; empty keeps everything.
    names: Vec<String>,
}

impl EventsSubscription {
    /// Whether the reader asked for this event.
    pub fn wants(&self, event: &StateEvent) -> bool {
        self.names.is_empty()
            || self
                .names
                .iter()
                .any(|n| *n == event.name || *n == event.program)
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
    /// Our own inputs, for work that finishes in a task (the `reexec` checks).
    inputs: mpsc::Sender<Input>,
    /// Started by `reexec`: the processes are already up; start nothing.
    resumed: bool,
    /// The service manager that runs minder (READY=1, STATUS=, WATCHDOG=1, ...).
    systemd: Systemd,
    /// `--insecure-config`: accept config files others than root could change.
    insecure_config: bool,
    /// The `/metrics` server and the address it serves, when configured.
    metrics: Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
    /// The config's hooks.
    hooks: Hooks,
    /// Reloads read the files on the blocking pool; SIGHUP waits with `None`.
    reloads: config::Reloads<Option<oneshot::Sender<Reply>>>,
}

impl Supervisor {
    /// Creates an actor per process (all `stopped`); nothing starts yet.
    pub fn new(
        config: Config,
        context: Arc<Context>,
        inputs: mpsc::Sender<Input>,
        saved: Option<SavedState>,
    ) -> Supervisor {
        let config = Arc::new(config);
        let mut supervisor = Supervisor {
            config: Arc::clone(&config),
            processes: Vec::new(),
            draining: Vec::new(),
            systemd: Systemd::disabled(Arc::clone(&context.state_changes)),
            context,
            listen: HashMap::new(),
            inputs,
            resumed: saved.is_some(),
            insecure_config: false,
            metrics: None,
            hooks: Hooks::none(),
            reloads: config::Reloads::default(),
        };
        supervisor.hooks = supervisor.start_hooks(&config);
        let mut machines = HashMap::new();
        if let Some(saved) = saved {
            crate::logs::offer_saved_pipes(saved.logs.clone());
            let now = tokio::time::Instant::now().into_std();
            for listen in &saved.listen {
                if let Some(program) = config.program(&listen.program) {
                    if let Some(set) = ListenSet::adopt(program, &listen.fds) {
                        supervisor.listen.insert(listen.program.clone(), set);
                    }
                }
            }
            for process in &saved.processes {
                let program = process.name.split(':').next().unwrap_or_default();
                if let Some(cfg) = config.program(program) {
                    machines.insert(process.name.clone(), reexec::restore(process, cfg, now));
                }
            }
        }
        supervisor.processes = supervisor.spawn_actors(&config, |_| true, &mut machines);
        supervisor
    }

    /// Reports to `systemd` (the default reports to nobody).
    pub fn with_systemd(mut self, systemd: Systemd) -> Supervisor {
        self.systemd = systemd;
        self
    }

    /// Serves `/metrics` on `listener`, bound to the configured `metrics` address.
    pub fn with_metrics(mut self, listener: Option<tokio::net::TcpListener>) -> Supervisor {
        if let (Some(listener), Some(address)) = (listener, self.config.supervisor.metrics) {
            let task = tokio::spawn(crate::metrics::serve(listener, self.inputs.clone()));
            self.metrics = Some((address, task));
        }
        self
    }

    /// Serves `/metrics` on `address` from now on (nowhere when `None`). The
    /// new address is bound first: if that fails, nothing changes.
    fn move_metrics(&mut self, address: Option<std::net::SocketAddr>) -> Result<(), String> {
        if self.metrics.as_ref().map(|(a, _)| *a) == address {
            return Ok(());
        }
        let listener = match address {
            Some(a) => Some(crate::metrics::bind(a).map_err(|e| format!("metrics {a}: {e}"))?),
            None => None,
        };
        if let Some((_, old)) = self.metrics.take() {
            old.abort();
        }
        self.metrics = listener.zip(address).map(|(listener, address)| {
            let task = tokio::spawn(crate::metrics::serve(listener, self.inputs.clone()));
            (address, task)
        });
        Ok(())
    }

    fn start_hooks(&self, config: &Config) -> Hooks {
        Hooks::start(
            &config.supervisor.hooks,
            &self.context.events,
            HookContext {
                reaper: Arc::clone(&self.context.reaper),
                counters: Arc::clone(&self.context.counters),
            },
        )
    }

    /// Accepts (on reload too) config files that others than root could change.
    pub fn with_insecure_config(mut self, insecure: bool) -> Supervisor {
        self.insecure_config = insecure;
        self
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

    fn topology(&self, cause: Cause) -> Topology {
        Topology::new(&self.config, &self.processes, cause)
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
        let topology = self.topology(Cause::Autostart);
        let autostart_done = self.systemd.autostart_tracker();
        tokio::spawn(async move {
            topology.start(autostart).await;
            autostart_done.finished();
            release_free_memory();
        });

        let mut shutdown_reply = None;
        loop {
            let input = tokio::select! {
                input = inputs.recv() => input,
                duty = self.systemd.next() => {
                    self.systemd.perform(duty, &self.processes, &self.config);
                    continue;
                }
                (loaded, waiters) = self.reloads.finished() => {
                    self.finish_reload(loaded, waiters);
                    continue;
                }
            };
            let Some(input) = input else { break };
            match input {
                Input::Control(Request::Shutdown, reply) => {
                    shutdown_reply = Some(reply);
                    break;
                }
                Input::Control(request, reply) => self.handle(request, reply),
                Input::Reload => self.reloads.request(&self.config.path, None),
                Input::Terminate => break,
                Input::Tail(request, reply) => self.tail(request, reply),
                Input::ReopenLogs => {
                    tracing::info!("reopening log files");
                    tokio::spawn(reopen_logs(self.processes.clone()));
                }
                Input::Reexec(binary, reply) => self.reexec(binary, reply),
                Input::Events(names, reply) => {
                    let _ = reply.send(self.subscribe(names));
                }
                Input::Scrape(reply) => {
                    let _ = reply.send(self.scrape());
                }
                Input::Ping(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        for waiter in self.reloads.abandon().into_iter().flatten() {
            let _ = waiter.send(Reply::error(
                ErrorKind::ShuttingDown,
                "minder is shutting down",
            ));
        }
        self.systemd.stopping();
        self.shutdown(&mut inputs).await;
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(Reply::ok(serde_json::json!({})));
        }
    }

    fn handle(&mut self, request: Request, reply: oneshot::Sender<Reply>) {
        let immediate = match request {
            Request::Status { names } => self
                .select(&names, true)
                .map(|handles| Reply::ok(status_reply(&handles))),
            Request::Start { names, wait } => match self.select(&names, false) {
                Ok(handles) => {
                    let topology = self.topology(Cause::Request);
                    return spawn_reply(reply, wait, topology.start(handles));
                }
                Err(e) => Err(e),
            },
            Request::Stop { names, wait } => match self.select(&names, false) {
                Ok(handles) => {
                    let topology = self.topology(Cause::Request);
                    return spawn_reply(reply, wait, topology.stop(handles));
                }
                Err(e) => Err(e),
            },
            Request::Restart { names, wait } => match self.select(&names, false) {
                Ok(handles) => {
                    let rolling = self
                        .config
                        .programs
                        .iter()
                        .filter(|p| state::rolling(p))
                        .map(|p| p.name.clone())
                        .collect();
                    return spawn_reply(reply, wait, restart(handles, rolling));
                }
                Err(e) => Err(e),
            },
            Request::Signal { signal, names } => {
                match config::parse_signal(&signal)
                    .map_err(|e| Reply::error(ErrorKind::BadRequest, e))
                    .and_then(|sig| Ok((sig, self.select(&names, false)?)))
                {
                    Ok((sig, handles)) => {
                        return spawn_reply(reply, true, send_signals(handles, sig))
                    }
                    Err(e) => Err(e),
                }
            }
            Request::Pid { name: None } => Ok(Reply::ok(PidReply {
                pid: Some(std::process::id() as i32),
            })),
            Request::Pid { name: Some(name) } => self
                .select(std::slice::from_ref(&name), false)
                .and_then(|handles| match handles.as_slice() {
                    [one] => Ok(Reply::ok(PidReply {
                        pid: one.status().state.pid().map(|p| p.as_raw()),
                    })),
                    _ => Err(Reply::error(
                        ErrorKind::BadRequest,
                        format!(
                            "{name:?} names {} processes; give one process name",
                            handles.len()
                        ),
                    )),
                }),
            Request::Reload => {
                self.reloads.request(&self.config.path, Some(reply));
                return;
            }
            Request::ReopenLogs => {
                return spawn_reply(reply, true, reopen_logs(self.processes.clone()));
            }
            Request::Tail { .. } | Request::Events { .. } => Err(Reply::error(
                ErrorKind::BadRequest,
                "tail and events are answered on their own path",
            )),
            // The loop takes `Shutdown` before it gets here.
            Request::Reexec { binary } => {
                let binary = binary
                    .map(PathBuf::from)
                    .unwrap_or_else(|| self.context.self_exe.clone());
                let reaper = Arc::clone(&self.context.reaper);
                let inputs = self.inputs.clone();
                tokio::spawn(async move {
                    match crate::reexec::check_binary(&binary, &reaper).await {
                        Ok(()) => {
                            if let Err(e) = inputs.send(Input::Reexec(binary, reply)).await {
                                if let Input::Reexec(_, reply) = e.0 {
                                    let _ = reply.send(Reply::error(
                                        ErrorKind::ShuttingDown,
                                        "minder is shutting down",
                                    ));
                                }
                            }
                        }
                        Err(why) => {
                            let _ = reply.send(Reply::error(
                                ErrorKind::Failed,
                                format!("not re-executing: {why}"),
                            ));
                        }
                    }
                });
                return;
            }
            Request::Shutdown => Err(Reply::error(
                ErrorKind::ShuttingDown,
                "minder is shutting down",
            )),
        };
        let _ = reply.send(immediate.unwrap_or_else(|e| e));
    }

    /// Starts a `tail`: one process, through its actor to its capture.
    fn tail(&self, request: Request, reply: oneshot::Sender<Result<TailStart, Reply>>) {
        let Request::Tail {
            name,
            lines,
            stderr,
            follow,
        } = request
        else {
            return;
        };
        let handle = match self.select(std::slice::from_ref(&name), false) {
            Ok(handles) if handles.len() == 1 => handles.into_iter().next(),
            Ok(handles) => {
                let _ = reply.send(Err(Reply::error(
                    ErrorKind::BadRequest,
                    format!(
                        "{name:?} names {} processes; give one process name",
                        handles.len()
                    ),
                )));
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
            stream: if stderr {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            lines: lines.min(crate::logs::MAX_TAIL_LINES),
            follow,
            reply: tx,
        };
        if let Err(e) = handle.send(Command::Logs(request)) {
            let _ = reply.send(Err(Reply::error(ErrorKind::Failed, e)));
            return;
        }
        tokio::spawn(async move {
            let answer = match rx.await {
                Ok(Ok(tail)) => Ok(TailStart {
                    name: handle.name.clone(),
                    reply: tail,
                }),
                Ok(Err(e)) => Err(Reply::error(ErrorKind::Failed, e)),
                Err(_) => Err(Reply::error(
                    ErrorKind::Failed,
                    format!("{}: no longer supervised", handle.name),
                )),
            };
            let _ = reply.send(answer);
        });
    }

    /// What `/metrics` shows now.
    fn scrape(&self) -> Scrape {
        Scrape {
            processes: self.processes.iter().map(ProcessHandle::status).collect(),
            counters: Arc::clone(&self.context.counters),
            hooks: self.config.supervisor.hooks.len(),
        }
    }

    /// Starts an `events` stream after checking the names.
    fn subscribe(&self, names: Vec<String>) -> Result<EventsSubscription, Reply> {
        let selected = self.select(&names, true)?;
        let names = if names.iter().any(|n| n == "all") {
            Vec::new()
        } else {
            names
        };
        Ok(EventsSubscription {
            start: EventsStart {
                following: selected.iter().map(|h| h.name.clone()).collect(),
            },
            events: self.context.events.subscribe(),
            names,
        })
    }

    /// Resolves names (process, program, or `all`) to handles, in config order.
    fn select(&self, names: &[String], empty_means_all: bool) -> Result<Vec<ProcessHandle>, Reply> {
        if names.is_empty() {
            return if empty_means_all {
                Ok(self.processes.clone())
            } else {
                Err(Reply::error(ErrorKind::BadRequest, "no process named"))
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
            return Err(Reply::error(
                ErrorKind::UnknownName,
                format!("no such process or program: {}", unknown.join(", ")),
            ));
        }
        Ok(self
            .processes
            .iter()
            .filter(|h| wanted.contains(h.name.as_str()))
            .cloned()
            .collect())
    }

    /// Hands everything over to `binary` (SPEC `ctl reexec`). Returns only if
    /// that could not happen, after replying why; nothing has changed then.
    fn reexec(&mut self, binary: PathBuf, reply: oneshot::Sender<Reply>) {
        let refuse = |reply: oneshot::Sender<Reply>, why: String| {
            tracing::warn!("not re-executing: {why}");
            let _ = reply.send(Reply::error(
                ErrorKind::Failed,
                format!("not re-executing: {why}"),
            ));
        };
        match config::load(&self.config.path, &Defaults::for_current_user()) {
            Ok(on_disk) if on_disk == *self.config => {}
            Ok(_) => {
                return refuse(
                    reply,
                    "the config file changed since it was loaded: `ctl reload` first".into(),
                )
            }
            Err(d) => {
                let lines: Vec<String> = d.iter().map(|d| d.to_string()).collect();
                return refuse(
                    reply,
                    format!("the config file is invalid: {}", lines.join("; ")),
                );
            }
        }
        // The new image checks the files again as it starts; refuse now rather
        // than have it exit and leave every child without its supervisor.
        if !self.insecure_config {
            if let Err(e) = config::check_trusted(&self.config) {
                return refuse(reply, e.to_string());
            }
        }
        if self
            .draining
            .iter()
            .any(|h| h.watch().has_changed().is_ok())
        {
            return refuse(
                reply,
                "programs removed by a reload are still stopping: try again".into(),
            );
        }
        let now = tokio::time::Instant::now().into_std();
        let mut processes = Vec::with_capacity(self.processes.len());
        for handle in &self.processes {
            match reexec::save(&handle.status(), now) {
                Ok(saved) => processes.push(saved),
                Err(why) => return refuse(reply, why),
            }
        }
        let (control_fd, notify_fd) = self.context.handover_fds;
        let listen: Vec<SavedListen> = self
            .listen
            .iter()
            .map(|(program, set)| SavedListen {
                program: program.clone(),
                fds: set.bound_fds(),
            })
            .filter(|l| !l.fds.is_empty())
            .collect();
        let logs: Vec<crate::logs::SavedPipes> = self
            .processes
            .iter()
            .filter_map(|h| h.status().logs.saved_pipes(&h.name))
            .collect();
        let mut keep = vec![control_fd, notify_fd];
        keep.extend(listen.iter().flat_map(|l| l.fds.iter().copied()));
        keep.extend(logs.iter().flat_map(|p| p.fds()));
        let state = SavedState {
            version: reexec::STATE_VERSION,
            config_path: self.config.path.clone(),
            control_fd,
            notify_fd,
            listen,
            processes,
            logs,
        };
        tracing::info!(
            "re-executing {} with {} processes",
            binary.display(),
            state.processes.len()
        );
        // No task runs while this one does, so no new burst starts: wait for
        // those on the blocking pool to have written what they read. What is
        // still in the pipes is read by the new image.
        if !crate::logs::quiesce(Duration::from_secs(2)) {
            return refuse(
                reply,
                "log files are not being written fast enough: try again".into(),
            );
        }
        // systemd sees a reload: the new image sends READY=1 once it runs.
        self.systemd.reloading();
        let error = reexec::exec(&binary, &state, &keep);
        let why = format!("exec {}: {error}", binary.display());
        self.systemd.reloaded(&self.processes, Some(&why));
        refuse(reply, why);
    }

    /// Applies a load that reloads asked for and answers them; SIGHUP's
    /// failures go to the log since nobody else hears of them.
    fn finish_reload(
        &mut self,
        loaded: config::LoadResult,
        waiters: Vec<Option<oneshot::Sender<Reply>>>,
    ) {
        let reply = self.reload(loaded);
        if let Reply::Error(e) = &reply {
            if waiters.iter().any(Option::is_none) {
                tracing::error!("reload rejected: {}", e.message);
            }
        }
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(reply.clone());
        }
    }

    /// Reloads, telling systemd (RELOADING=1 ... READY=1) around it.
    fn reload(&mut self, loaded: config::LoadResult) -> Reply {
        self.systemd.reloading();
        let reply = self.apply_reload(loaded);
        let error = match &reply {
            Reply::Error(e) => Some(e.message.as_str()),
            Reply::Ok(_) => None,
        };
        self.context.counters.reloaded(error.is_none());
        self.systemd.reloaded(&self.processes, error);
        reply
    }

    /// Re-reads the config file and applies the difference; an invalid file changes nothing.
    fn apply_reload(&mut self, loaded: config::LoadResult) -> Reply {
        let new = match loaded {
            Ok(new) => new,
            Err(diagnostics) => {
                let lines: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
                return Reply::error(
                    ErrorKind::Failed,
                    format!("config not reloaded: {}", lines.join("; ")),
                );
            }
        };
        if !self.insecure_config {
            if let Err(e) = config::check_trusted(&new) {
                return Reply::error(ErrorKind::Failed, format!("config not reloaded: {e}"));
            }
        }
        // Before anything else changes: an address in use rejects the reload.
        if let Err(e) = self.move_metrics(new.supervisor.metrics) {
            return Reply::error(ErrorKind::Failed, format!("config not reloaded: {e}"));
        }
        if new.supervisor.hooks != self.config.supervisor.hooks {
            self.hooks = self.start_hooks(&new);
        }
        let diff = config::diff(&self.config, &new);
        let mut not_applied = Vec::new();
        if new.supervisor.socket != self.config.supervisor.socket
            || new.supervisor.socket_mode != self.config.supervisor.socket_mode
            || new.supervisor.socket_group != self.config.supervisor.socket_group
        {
            not_applied.push("socket settings (restart minder to apply)".to_string());
        }
        if new.supervisor.log_level != self.config.supervisor.log_level {
            not_applied.push("log_level (restart minder to apply)".to_string());
        }
        if new.supervisor.log_format != self.config.supervisor.log_format
            || new.supervisor.log_file != self.config.supervisor.log_file
            || new.supervisor.log_files != self.config.supervisor.log_files
        {
            not_applied
                .push("log_format, log_file, log_files (restart minder to apply)".to_string());
        }

        // Changed programs that serve on `listen` sockets and keep them (and
        // their instances and logs) are reconfigured in place, rolling: each
        // process is replaced only once its successor is ready.
        let rolled: HashSet<&str> = diff
            .changed
            .iter()
            .filter(|name| self.rolls_in_place(name, &new))
            .map(String::as_str)
            .collect();
        let replaced: HashSet<&str> = diff
            .removed
            .iter()
            .chain(&diff.changed)
            .map(String::as_str)
            .filter(|name| !rolled.contains(name))
            .collect();
        let mut old_of_changed = Vec::new();
        let mut kept = Vec::new();
        for handle in std::mem::take(&mut self.processes) {
            if replaced.contains(handle.program.as_str()) {
                let was_up = !matches!(
                    handle.status().state,
                    State::Stopped | State::Exited | State::Fatal
                );
                if let Err(e) = handle.send(Command::Remove) {
                    tracing::warn!("{e}");
                }
                if diff.changed.contains(&handle.program) {
                    old_of_changed.push((handle.clone(), was_up));
                }
                self.draining.push(handle);
            } else {
                kept.push(handle);
            }
        }
        // Forget removed processes whose actor has ended.
        self.draining.retain(|h| h.watch().has_changed().is_ok());

        for name in &diff.removed {
            self.listen.remove(name);
        }
        let fresh: HashSet<&str> = diff
            .added
            .iter()
            .chain(&diff.changed)
            .map(String::as_str)
            .filter(|name| !rolled.contains(name))
            .collect();
        // The new settings of each rolled process, in config order.
        let mut reconfigure = Vec::new();
        for cfg in new
            .programs
            .iter()
            .filter(|p| rolled.contains(p.name.as_str()))
        {
            for spec in cfg.processes_to_run() {
                if let Some(handle) = kept.iter().find(|h| h.name == spec.name) {
                    reconfigure.push((handle.clone(), spec, Arc::clone(cfg)));
                }
            }
        }
        if !reconfigure.is_empty() {
            tokio::spawn(async move {
                // One process at a time, like a rolling `ctl restart`.
                for (handle, spec, cfg) in reconfigure {
                    let name = handle.name.clone();
                    let outcome = handle
                        .request(|reply| Command::Reconfigure { spec, cfg, reply }, true)
                        .await;
                    if let Outcome::Failed(why) = outcome {
                        tracing::warn!(process = %name, "reload not applied: {why}");
                        break;
                    }
                }
            });
        }
        let new_handles = self.spawn_actors(&new, |name| fresh.contains(name), &mut HashMap::new());
        // Keep config order: programs as listed in the new file.
        let mut processes = Vec::new();
        for program in &new.programs {
            let source = if fresh.contains(program.name.as_str()) {
                &new_handles
            } else {
                &kept
            };
            processes.extend(source.iter().filter(|h| h.program == program.name).cloned());
        }
        self.processes = processes;
        self.config = Arc::new(new);

        // Added programs start if autostart; changed ones if autostart or they were up,
        // once the old processes are gone (they may hold ports or files).
        let mut to_start = Vec::new();
        for handle in &self.processes {
            let Some(program) = self.config.program(&handle.program) else {
                continue;
            };
            let was_up = old_of_changed
                .iter()
                .any(|(old, up)| *up && old.program == handle.program);
            if fresh.contains(handle.program.as_str()) && (program.autostart || was_up) {
                to_start.push(handle.clone());
            }
        }
        let topology = self.topology(Cause::Reload);
        let old: Vec<ProcessHandle> = old_of_changed.into_iter().map(|(h, _)| h).collect();
        tokio::spawn(async move {
            for handle in &old {
                handle.ended().await;
            }
            topology.start(to_start).await;
            release_free_memory();
        });

        tracing::info!(
            "reloaded: added {:?}, removed {:?}, changed {:?}, {} unchanged",
            diff.added,
            diff.removed,
            diff.changed,
            diff.unchanged.len()
        );
        Reply::ok(ReloadReply {
            added: diff.added,
            removed: diff.removed,
            changed: diff.changed,
            unchanged: diff.unchanged,
            not_applied,
        })
    }

    /// Whether a reload can replace program `name` in place, rolling: it has
    /// `listen` sockets before and after, keeps them, its instances and its
    /// logs, and has a process up to keep serving meanwhile.
    fn rolls_in_place(&self, name: &str, new: &Config) -> bool {
        let (Some(old), Some(new)) = (self.config.program(name), new.program(name)) else {
            return false;
        };
        let keeps_sockets = self.listen.get(name).is_some_and(|set| set.serves(new));
        let up = self
            .processes
            .iter()
            .any(|h| h.program == name && matches!(h.status().state, State::Running { .. }));
        state::rolling(old)
            && state::rolling(new)
            && keeps_sockets
            && old.instances == new.instances
            && old.logs == new.logs
            && up
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
        let stop = self.topology(Cause::Shutdown).stop(self.processes.clone());
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
                duty = self.systemd.next() => self.systemd.perform(duty, &self.processes, &self.config),
                input = inputs.recv() => match input {
                    Some(Input::Terminate) => {
                        tracing::warn!("second termination signal: killing everything");
                        break;
                    }
                    Some(Input::Control(Request::Status { names }, reply)) => {
                        let answer = self.select(&names, true)
                            .map(|h| Reply::ok(status_reply(&h)))
                            .unwrap_or_else(|e| e);
                        let _ = reply.send(answer);
                    }
                    Some(Input::Control(_, reply)) => {
                        let _ = reply.send(Reply::error(ErrorKind::ShuttingDown, "minder is shutting down"));
                    }
                    Some(Input::Tail(_, reply)) => {
                        let _ = reply.send(Err(Reply::error(ErrorKind::ShuttingDown, "minder is shutting down")));
                    }
                    Some(Input::Reexec(_, reply)) => {
                        let _ = reply.send(Reply::error(ErrorKind::ShuttingDown, "minder is shutting down"));
                    }
                    Some(Input::Events(_, reply)) => {
                        let _ = reply.send(Err(Reply::error(ErrorKind::ShuttingDown, "minder is shutting down")));
                    }
                    Some(Input::Scrape(reply)) => {
                        let _ = reply.send(self.scrape());
                    }
                    Some(Input::Ping(reply)) => {
                        let _ = reply.send(());
                    }
                    Some(Input::Reload | Input::ReopenLogs) | None => {}
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

/// Runs `work` in its own task and replies with its results, or at once when not waiting.
fn spawn_reply(
    reply: oneshot::Sender<Reply>,
    wait: bool,
    work: impl std::future::Future<Output = Vec<ActionResult>> + Send + 'static,
) {
    tokio::spawn(async move {
        if wait {
            let results = work.await;
            let _ = reply.send(Reply::ok(ActionReply { results }));
        } else {
            let _ = reply.send(Reply::ok(ActionReply {
                results: Vec::new(),
            }));
            work.await;
        }
    });
}

/// Restarts every handle, waiting for each to be running again: programs
/// without `listen` all at once; programs with `listen` (rolling restarts) one
/// instance at a time, stopping at the first failure so the rest keep serving.
async fn restart(handles: Vec<ProcessHandle>, rolling: HashSet<String>) -> Vec<ActionResult> {
    let (one_by_one, together): (Vec<_>, Vec<_>) = handles
        .into_iter()
        .partition(|h| rolling.contains(&h.program));
    let mut results = order::request_all(together, |_, reply| Command::Restart { reply }).await;
    let mut failed_programs: HashSet<String> = HashSet::new();
    for h in one_by_one {
        if failed_programs.contains(&h.program) {
            results.push(action_result(
                &h.name,
                Outcome::Failed("not restarted: an earlier instance failed to".to_string()),
            ));
            continue;
        }
        let result = order::request_all(vec![h.clone()], |_, reply| Command::Restart { reply })
            .await
            .pop()
            .unwrap_or_else(|| action_result(&h.name, Outcome::Failed("no reply".into())));
        if !result.ok {
            failed_programs.insert(h.program.clone());
        }
        results.push(result);
    }
    results
}

async fn send_signals(
    handles: Vec<ProcessHandle>,
    signal: nix::sys::signal::Signal,
) -> Vec<ActionResult> {
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
        results.push(action_result(&h.name, outcome));
    }
    results
}

/// Reopens every process's log files; one result per process.
async fn reopen_logs(handles: Vec<ProcessHandle>) -> Vec<ActionResult> {
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
        results.push(action_result(&name, outcome));
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

/// Turns an outcome into the wire form.
pub(crate) fn action_result(name: &str, outcome: Outcome) -> ActionResult {
    match outcome {
        Outcome::Done | Outcome::Pending => ActionResult {
            name: name.to_string(),
            ok: true,
            message: String::new(),
        },
        Outcome::Failed(message) => ActionResult {
            name: name.to_string(),
            ok: false,
            message,
        },
    }
}

fn status_reply(handles: &[ProcessHandle]) -> StatusReply {
    let now = tokio::time::Instant::now().into_std();
    StatusReply {
        processes: handles
            .iter()
            .map(|h| process_info(&h.status(), now))
            .collect(),
    }
}

/// The old process of a rolling restart, as its successor's entry lists it.
fn draining_info(old: &state::Retiring, now: Instant) -> DrainingProcess {
    let description = match old.stop_sent {
        None => "serving until its replacement is ready".to_string(),
        Some(_) if old.killed => "SIGKILL sent; its replacement is ready".to_string(),
        Some(sent) => format!(
            "stop signal sent {} ago; its replacement is ready",
            short_duration(now.saturating_duration_since(sent))
        ),
    };
    DrainingProcess {
        pid: old.pid.as_raw(),
        uptime_secs: now.saturating_duration_since(old.started).as_secs_f64(),
        description,
    }
}

/// The `status` entry of one process (with its draining predecessor, if any).
pub fn process_info(status: &ProcessStatus, now: Instant) -> ProcessInfo {
    let next_start = status.state.next_start_in(now);
    let description = match status.state {
        State::Backoff { .. } => {
            let mut text = status.description.clone();
            if !text.is_empty() {
                text.push_str(&format!(
                    " {} ago; ",
                    short_duration(now.saturating_duration_since(status.changed))
                ));
            }
            text.push_str("next try in ");
            text.push_str(&short_duration(next_start.unwrap_or_default()));
            text
        }
        State::Exited | State::Fatal | State::Stopped if !status.description.is_empty() => format!(
            "{} {} ago",
            status.description,
            short_duration(now.saturating_duration_since(status.changed))
        ),
        State::Starting { .. } | State::Running { .. } if status.description.is_empty() => {
            status.notify_status.clone().unwrap_or_default()
        }
        _ => status.description.clone(),
    };
    ProcessInfo {
        name: status.name.clone(),
        program: status.program.clone(),
        instance: status.instance,
        state: status.state.name().to_string(),
        pid: status.state.pid().map(|p| p.as_raw()),
        uptime_secs: status
            .state
            .started()
            .map(|s| now.saturating_duration_since(s).as_secs_f64()),
        health: status.health.name().to_string(),
        restarts: status.restarts,
        last_exit_code: status.last_end.and_then(|e| e.code()),
        last_exit_signal: status.last_end.and_then(|e| e.signal_name()),
        description,
        next_start_secs: next_start.map(|d| d.as_secs_f64()),
        draining: status
            .retiring
            .iter()
            .map(|old| draining_info(old, now))
            .collect(),
        dropped_bytes: status.logs.dropped_bytes(),
        last_probe: status.last_probe.as_ref().map(|p| LastProbe {
            time: humantime::format_rfc3339_millis(p.at).to_string(),
            ok: p.ok,
            message: p.message.clone(),
            duration_ms: p.duration.as_secs_f64() * 1000.0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogStats;
    use crate::process::ProcessEnd;
    use nix::unistd::Pid;
    use state::{Health, Retiring};

    fn status(state: State, t0: Instant) -> ProcessStatus {
        ProcessStatus {
            name: "web".into(),
            program: "web".into(),
            instance: 0,
            state,
            restarts: 0,
            last_end: None,
            description: String::new(),
            changed: t0,
            stop_epoch: 0,
            logs: Arc::new(LogStats::default()),
            health: Health::None,
            last_probe: None,
            notify_status: None,
            retiring: None,
            probes: None,
            failures: 0,
            backoff_step: 0,
        }
    }

    #[test]
    fn backoff_shows_the_time_to_the_next_attempt() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(2);
        let mut s = status(
            State::Backoff {
                until: t0 + Duration::from_millis(5200),
            },
            t0,
        );
        s.description = "exited with code 1".into();
        s.last_end = Some(ProcessEnd::Exited(1));
        let info = process_info(&s, now);
        assert_eq!(info.next_start_secs, Some(3.2));
        assert_eq!(
            info.description,
            "exited with code 1 2s ago; next try in 3.2s"
        );
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["next_start_secs"], serde_json::json!(3.2));
        assert_eq!(json["draining"], serde_json::json!([]));

        // Due but not yet made: zero, never negative.
        let late = process_info(&s, t0 + Duration::from_secs(9));
        assert_eq!(late.next_start_secs, Some(0.0));

        let running = State::Running {
            pid: Pid::from_raw(4242),
            started: t0,
        };
        let info = process_info(&status(running, t0), now);
        assert_eq!(info.next_start_secs, None);
        let json = serde_json::to_value(&info).unwrap();
        assert!(json["next_start_secs"].is_null(), "present, null: {json}");
    }

    #[test]
    fn a_retiring_process_is_listed_inside_its_successor() {
        let t0 = Instant::now();
        let mut s = status(
            State::Running {
                pid: Pid::from_raw(4242),
                started: t0 + Duration::from_secs(88),
            },
            t0,
        );
        s.retiring = Some(Retiring {
            pid: Pid::from_raw(4241),
            started: t0,
            stop_sent: None,
            killed: false,
        });
        let now = t0 + Duration::from_millis(90_100);
        let serving = process_info(&s, now);
        assert_eq!(serving.pid, Some(4242));
        assert_eq!(
            serving.draining,
            vec![DrainingProcess {
                pid: 4241,
                uptime_secs: 90.1,
                description: "serving until its replacement is ready".into(),
            }]
        );
        s.retiring = Some(Retiring {
            stop_sent: Some(t0 + Duration::from_millis(87_100)),
            ..s.retiring.unwrap()
        });
        assert_eq!(
            process_info(&s, now).draining[0].description,
            "stop signal sent 3s ago; its replacement is ready"
        );
        s.retiring = Some(Retiring {
            killed: true,
            ..s.retiring.unwrap()
        });
        assert_eq!(
            process_info(&s, now).draining[0].description,
            "SIGKILL sent; its replacement is ready"
        );
    }
}
