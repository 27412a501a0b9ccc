//! `minder daemon`: process-wide setup, then the supervisor loop with the
//! layers that plug into it: the control socket, `/metrics`, hooks and
//! systemd subscribe to what the supervisor publishes and send it requests;
//! the supervisor itself knows none of them.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::Config;
use crate::config::OnFatal;
use crate::control::dispatch::Shared;
use crate::control::server;
use crate::health::Prober;
use crate::hooks::{self, HookContext};
use crate::metrics;
use crate::notify::{self, NotifyRoutes};
use crate::process::{cgroup, ledger_path, recover, Ledger, Reaper};
use crate::reexec;
use crate::register;
use crate::supervisor::state::State;
use crate::supervisor::{Change, Context, Input, Phase, Supervisor, Transition, INPUT_QUEUE};
use crate::systemd::{self, Systemd};
use nix::sys::signal::Signal;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Setting up the control socket failed.
    #[error(transparent)]
    Bind(#[from] server::BindError),
    /// The state handed over by `reexec` could not be used.
    #[error("taking over from the previous image: {0}")]
    Handover(String),
    /// Runtime or signal setup failed.
    #[error("{0}: {1}")]
    Setup(&'static str, std::io::Error),
    /// The `metrics` address cannot be bound.
    #[error("metrics {0}: {1}")]
    Metrics(std::net::SocketAddr, std::io::Error),
    /// A process of a program with `on_fatal = "shutdown"` went fatal:
    /// everything was stopped.
    #[error("{0} is fatal (on_fatal = \"shutdown\"); everything is stopped")]
    Fatal(String),
}

/// How `minder daemon` was asked to run, beyond its config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--insecure-config`: as root, accept config files others could change.
    pub insecure_config: bool,
}

/// State changes kept for slow `ctl events` readers and hooks before the
/// oldest are dropped (and counted as skipped).
const EVENT_QUEUE: usize = 1024;

/// Runs the supervisor until shutdown; returns once every child is stopped.
///
/// Call [`tune_allocator`] first, before anything starts a thread (the
/// writer thread of minder's own log file among them).
pub fn run(config: Config, options: Options) -> Result<(), DaemonError> {
    raise_fd_limit(&config);
    // Orphaned grandchildren are re-parented to minder, which reaps them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper ({e}); orphans go to init");
    }
    // One thread: supervision is I/O-bound. (Spawning would not need it:
    // the child of `clone` makes only raw system calls until its exec, so
    // a lock another thread held at the clone is never waited for in it;
    // see `process::spawn`.)
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // The blocking pool writes log files. A few threads keep up with any
        // disk; a thousand programs printing at once must not mean hundreds
        // of threads (each with a stack and a malloc arena) for a moment.
        .max_blocking_threads(4)
        .thread_keep_alive(Duration::from_secs(2))
        .build()
        .map_err(|e| DaemonError::Setup("starting the runtime", e))?;
    runtime.block_on(serve(config, options))
}

async fn serve(config: Config, options: Options) -> Result<(), DaemonError> {
    let reaper = Reaper::start().map_err(|e| DaemonError::Setup("SIGCHLD handler", e))?;
    let notify_socket = notify::socket_path(&config.supervisor.socket);
    let notify_routes = NotifyRoutes::default();
    // Started by `ctl reexec`: take over the previous image's sockets.
    let saved = match reexec::take_state() {
        None => None,
        Some(Ok(saved)) => Some(saved),
        Some(Err(e)) => return Err(DaemonError::Handover(e)),
    };
    let (socket, notify_fd) = match &saved {
        Some(saved) => {
            let socket = server::adopt(&config.supervisor, saved.control_fd)?;
            notify::adopt(saved.notify_fd, notify_routes.clone())
                .map_err(|e| DaemonError::Setup("taking over the notify socket", e))?;
            (socket, saved.notify_fd)
        }
        None => {
            let socket = server::bind(&config.supervisor)?;
            let fd = notify::start(&notify_socket, notify_routes.clone())
                .map_err(|e| DaemonError::Setup("creating the notify socket", e))?;
            (socket, fd)
        }
    };
    let cgroups = contain(&config, saved.is_some()).await;
    let context = Arc::new(Context {
        prober: Prober::new(Arc::clone(&reaper)),
        reaper: Arc::clone(&reaper),
        notify_routes,
        notify_socket: notify_socket.clone(),
        transitions: tokio::sync::broadcast::channel(EVENT_QUEUE).0,
        cgroups: cgroups.clone(),
        ledger: match cgroups {
            Some(_) => None,
            None => keep_ledger(&config, saved.is_some()),
        },
    });
    let metrics_listener = match config.supervisor.metrics {
        Some(address) => Some((
            address,
            metrics::bind(address).map_err(|e| DaemonError::Metrics(address, e))?,
        )),
        None => None,
    };
    let socket_path = socket.path.clone();
    let control_fd = socket.listener.as_raw_fd();
    let (inputs_tx, inputs_rx) = mpsc::channel(INPUT_QUEUE);
    spawn_signal_handlers(inputs_tx.clone())?;
    tracing::info!(
        "minder {} supervising {} programs; control socket {}",
        env!("CARGO_PKG_VERSION"),
        config.programs.len(),
        socket_path.display()
    );

    let resume = saved.as_ref().map(|saved| {
        crate::logs::offer_saved_pipes(saved.logs.clone());
        reexec::resume(saved, &config)
    });
    let supervisor = Supervisor::new(config, Arc::clone(&context), resume)
        .with_insecure_config(options.insecure_config)
        .with_exec(reexec::executor(control_fd, notify_fd));
    // Every subscriber is subscribed before the supervisor runs: nothing it
    // publishes is missed.
    let phase = supervisor.phase();
    let transitions = supervisor.transitions();
    let counters = Arc::new(metrics::Counters::default());
    let registrar = register::follow(
        phase.clone(),
        transitions.clone(),
        inputs_tx.clone(),
        Arc::clone(&reaper),
    );
    let mut metrics = metrics::Server::new(
        inputs_tx.clone(),
        phase.clone(),
        Arc::clone(&counters),
        registrar.board(),
    );
    if let Some((address, listener)) = metrics_listener {
        metrics.start(address, listener);
    }
    let supervisor = supervisor.with_reload_gate(Box::new(metrics));
    let _hooks = hooks::follow(
        phase.clone(),
        transitions.clone(),
        HookContext {
            reaper: Arc::clone(&reaper),
            counters,
        },
    );
    let fatal = Arc::new(std::sync::OnceLock::new());
    tokio::spawn(shut_down_on_fatal(
        phase.clone(),
        transitions.subscribe(),
        inputs_tx.clone(),
        Arc::clone(&fatal),
    ));
    let systemd = tokio::spawn(systemd::run(
        Systemd::from_env(),
        phase.clone(),
        transitions.subscribe(),
        inputs_tx.clone(),
    ));
    let shared = Shared {
        inputs: inputs_tx,
        phase,
        reaper,
        // Resolved now: after an upgrade on disk, /proc/self/exe names a deleted file.
        self_exe: std::env::current_exe()
            .map(|p| PathBuf::from(p.to_string_lossy().trim_end_matches(" (deleted)")))
            .unwrap_or_else(|_| PathBuf::from("/usr/bin/minder")),
        board: registrar.board(),
        standing: registrar.changes(),
    };
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let server = tokio::spawn(server::serve(socket, shared, open_tx));

    let cgroups = Arc::clone(&context);
    supervisor.run(inputs_rx).await;
    // Every process is stopped: the subtree goes (unless minder re-execs
    // itself: then `run` does not return).
    if let Some(tree) = &cgroups.cgroups {
        tree.leave(Duration::from_secs(5)).await;
    }
    // The last lines of inherited streams reach minder's stdout and stderr
    // (the pipes were emptied by the shutdown), unless nobody reads them.
    let _ = tokio::task::spawn_blocking(|| crate::logs::flush_inherited(INHERITED_FLUSH)).await;

    // Every process is stopped: the balancers hear it (etcd leases revoked).
    registrar.finish(REGISTER_FINISH).await;

    // systemd hears STOPPING=1 (the supervisor is gone: its phase is final).
    let _ = tokio::time::timeout(Duration::from_secs(1), systemd).await;
    // Accept nothing more, but let replies in flight (the one to `ctl shutdown`
    // among them) reach their clients: each connection holds an `open` sender.
    server.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), open_rx.recv()).await;
    for path in [&socket_path, &notify_socket] {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::debug!("removing {}: {e}", path.display());
        }
    }
    if let Some(process) = fatal.get() {
        return Err(DaemonError::Fatal(process.clone()));
    }
    tracing::info!("minder exits");
    Ok(())
}

/// How long minder waits at exit for its stdout and stderr to take the last
/// lines of inherited streams.
const INHERITED_FLUSH: Duration = Duration::from_secs(2);

/// `on_fatal = "shutdown"`: when a process of such a program goes `fatal`,
/// stops everything as SIGTERM does (unless shutdown has begun already) and
/// records its name in `fatal`, so that minder exits 1.
async fn shut_down_on_fatal(
    phase: watch::Receiver<Phase>,
    mut transitions: broadcast::Receiver<Arc<Transition>>,
    inputs: mpsc::Sender<Input>,
    fatal: Arc<std::sync::OnceLock<String>>,
) {
    let shuts_down = |program: &str| {
        let phase = phase.borrow();
        !phase.stopping
            && phase
                .config
                .program(program)
                .is_some_and(|p| p.on_fatal == OnFatal::Shutdown)
    };
    let process = loop {
        match transitions.recv().await {
            Ok(t) => {
                let to_fatal = matches!(
                    t.change,
                    Change::State {
                        to: State::Fatal,
                        ..
                    }
                );
                if to_fatal && shuts_down(&t.program) {
                    break t.process.clone();
                }
            }
            // Some transitions were missed: look at every process instead.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if inputs.send(Input::Snapshot(tx)).await.is_err() {
                    return;
                }
                let Ok(handles) = rx.await else { return };
                let found = handles
                    .iter()
                    .find(|h| h.status().state == State::Fatal && shuts_down(&h.program));
                if let Some(handle) = found {
                    break handle.name.clone();
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    };
    tracing::error!("{process} is fatal (on_fatal = \"shutdown\"); stopping everything");
    let _ = fatal.set(process);
    let _ = inputs.send(Input::Terminate).await;
}

/// minder's cgroup subtree, entered, with what a predecessor that died left
/// in it stopped first (not after `reexec`: those are minder's own
/// processes, kept). `None`, said once, where cgroups cannot be had.
async fn contain(config: &Config, handed_over: bool) -> Option<Arc<cgroup::Tree>> {
    if config.programs.iter().all(|p| !p.cgroup) {
        // Decided at start: a program a reload adds with `cgroup = true`
        // then runs without one (and fails to start if it has limits).
        tracing::info!("cgroups are off ({})", cgroup::Off::NotWanted);
        return None;
    }
    let tree = match cgroup::Tree::open(&config.supervisor.socket) {
        Ok(tree) => tree,
        Err(off) => {
            tracing::warn!("cgroups are off ({off}): processes are stopped by process group");
            return None;
        }
    };
    if !handed_over {
        stop_leftovers(config, tree.leftovers()).await;
        tree.prune();
    }
    if let Err(off) = tree.enter() {
        tracing::warn!("cgroups are off ({off}): processes are stopped by process group");
        return None;
    }
    tracing::debug!("cgroups under {}", tree.base().display());
    Some(Arc::new(tree))
}

/// Without cgroups: the state file that lets the next minder stop what this
/// one leaves if it is killed, with what a predecessor left stopped first
/// (not after `reexec`: then the file lists this minder's own processes).
fn keep_ledger(config: &Config, handed_over: bool) -> Option<Arc<Ledger>> {
    let path = ledger_path(&config.supervisor.socket);
    if !handed_over {
        let grace = config
            .programs
            .iter()
            .map(|p| p.stop_timeout)
            .max()
            .unwrap_or(Duration::from_secs(10));
        match recover(&path, grace) {
            Ok(stopped) => {
                for leftover in stopped {
                    tracing::warn!("left by a minder that ended without stopping it: {leftover}");
                }
            }
            Err(e) => tracing::warn!("{}: {e}", path.display()),
        }
    }
    match Ledger::open(&path) {
        Ok(ledger) => Some(Arc::new(ledger)),
        Err(e) => {
            tracing::warn!(
                "{}: {e}; processes left by a killed minder will not be found",
                path.display()
            );
            None
        }
    }
}

/// Stops what a predecessor left in its cgroups, all at once, each with its
/// program's `stop_signal` and `stop_timeout` (SIGTERM and 10 s for a
/// program no longer configured), and logs every process.
async fn stop_leftovers(config: &Config, leftovers: Vec<cgroup::Leftover>) {
    let mut stopping = tokio::task::JoinSet::new();
    for leftover in leftovers {
        let program = leftover
            .program
            .as_deref()
            .and_then(|name| config.programs.iter().find(|p| p.name == name));
        let (signal, grace) = program.map_or((Signal::SIGTERM, Duration::from_secs(10)), |p| {
            (p.stop_signal, p.stop_timeout)
        });
        for pid in &leftover.pids {
            tracing::warn!(
                "stopping process {pid} ({}) left in cgroup {} by a minder that ended without stopping it",
                command_of(*pid),
                leftover.cgroup.path().display()
            );
        }
        stopping.spawn(leftover.stop(signal, grace));
    }
    while let Some(killed) = stopping.join_next().await {
        if let Ok(true) = killed {
            tracing::warn!("a leftover process outlived its stop_timeout: killed");
        }
    }
}

/// The command line of `pid`, for the log (bounded, control characters shown escaped).
fn command_of(pid: nix::unistd::Pid) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text: String = String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .trim()
        .chars()
        .take(200)
        .collect();
    crate::text::sanitize(&text).into_owned()
}

/// How long shutdown waits for the load balancers to be told the last
/// changes: each backend bounds an operation by 1 s.
const REGISTER_FINISH: Duration = Duration::from_secs(3);

/// Turns signals into supervisor inputs: TERM/INT terminate, HUP reloads,
/// USR1 reopens the log files.
fn spawn_signal_handlers(inputs: mpsc::Sender<Input>) -> Result<(), DaemonError> {
    let setup =
        |kind| signal(kind).map_err(|e| DaemonError::Setup("installing signal handlers", e));
    let mut term = setup(SignalKind::terminate())?;
    let mut int = setup(SignalKind::interrupt())?;
    let mut hup = setup(SignalKind::hangup())?;
    let mut usr1 = setup(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        loop {
            let input = tokio::select! {
                _ = term.recv() => Input::Terminate,
                _ = int.recv() => Input::Terminate,
                _ = hup.recv() => Input::Reload(None),
                _ = usr1.recv() => Input::ReopenLogs,
            };
            if inputs.send(input).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Keeps a long-running, mostly idle daemon small: large buffers (a status
/// reply for 1000 processes) are mmapped and returned on free, instead of
/// glibc's adaptive threshold moving them onto a heap it never shrinks; and
/// the few helper threads (log writes on the blocking pool) share two arenas
/// instead of keeping one each; and no fastbins: a freed small chunk (the
/// strings and channel nodes of a burst of starts, interleaved with what
/// each process keeps) is merged with its free neighbours at once instead
/// of being held apart, so the heap is not left riddled with holes (0.4 MiB
/// less with 1000 programs; docs/benchmarks.md). Small allocations are
/// still served by the per-thread cache first.
///
/// # Safety
/// No other thread may exist yet: glibc's `mallopt` changes parameters that
/// `malloc` in other threads reads without a lock (it is MT-Unsafe).
pub unsafe fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters, and the caller
    // vouches that no other thread is running malloc meanwhile.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

/// What one process costs minder in fds at most: both ends of its stdout
/// and stderr pipes, its two log files, and the pidfd the reaper signals it
/// through.
const FDS_PER_PROCESS: u64 = 7;

/// minder's own fds besides its processes': sockets, the event loop, its log,
/// control connections and health probes.
const FD_MARGIN: u64 = 64;

/// 1000 programs hold thousands of fds: take all the kernel allows (as
/// systemd does for its services), give children the limit minder was
/// started with, and say at once when even the raised limit is too small.
fn raise_fd_limit(config: &Config) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("reading RLIMIT_NOFILE: {e}");
            return;
        }
    };
    // After `reexec` this image starts with the limit the first one raised;
    // children still get the one it was started with.
    let original = original_soft_fd_limit(hard).unwrap_or(soft);
    if original < hard {
        crate::process::set_child_fd_limit(original, hard);
    }
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => limit = hard,
            Err(e) => tracing::warn!("raising RLIMIT_NOFILE to {hard}: {e}"),
        }
    }
    let processes: u64 = config
        .programs
        .iter()
        .map(|p| u64::from(p.instances.max(1)))
        .sum();
    let needed = processes * FDS_PER_PROCESS + FD_MARGIN;
    if needed > limit {
        tracing::warn!(
            "{processes} processes need about {needed} file descriptors \
             ({FDS_PER_PROCESS} each and {FD_MARGIN} for minder itself), but RLIMIT_NOFILE \
             lets minder open only {limit}: programs would fail to start with EMFILE; \
             raise the hard limit (LimitNOFILE= in the systemd unit, or ulimit -n \
             before starting minder)"
        );
    }
}

/// The soft fd limit the first image was started with, as handed over by
/// `reexec` (only together with its state).
fn original_soft_fd_limit(hard: u64) -> Option<u64> {
    std::env::var_os(reexec::STATE_FD_ENV)?;
    let text = std::env::var(reexec::ORIGINAL_NOFILE_ENV).ok()?;
    match text.parse::<u64>() {
        Ok(soft) if soft <= hard => Some(soft),
        _ => {
            tracing::warn!(
                "{}={text:?} is not a soft limit under the hard limit {hard}; ignored",
                reexec::ORIGINAL_NOFILE_ENV
            );
            None
        }
    }
}
