//! Prometheus metrics (`[supervisor] metrics`): `/metrics` in the OpenMetrics
//! text format, encoded by the `prometheus-client` crate, and `/healthz`.
//!
//! Process series are made at each scrape from the processes' published
//! status, so a program removed by a reload has no series left to forget.
//! Only what a status cannot tell is kept between scrapes: probe timings and
//! failures per process ([`ProbeStats`](crate::health::ProbeStats)), and minder's own [`Counters`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::logs::Stream;
use crate::supervisor::state::State;
use crate::supervisor::{Input, Phase, ProcessStatus, ReloadGate, StatusView};

/// minder's own counters, kept for the daemon's life.
#[derive(Debug, Default)]
pub struct Counters {
    /// Failed runs per hook, by its position in the config.
    hook_failures: Mutex<Vec<u64>>,
    /// Events dropped per webhook hook because its queue was full.
    webhook_drops: Mutex<Vec<u64>>,
}

impl Counters {
    /// Counts a failed run of hook number `hook`.
    pub fn hook_failed(&self, hook: usize) {
        add(&self.hook_failures, hook);
    }

    /// Failed runs of hook number `hook` so far.
    pub fn hook_failures(&self, hook: usize) -> u64 {
        read(&self.hook_failures, hook)
    }

    /// Counts an event webhook hook number `hook` had no room for.
    pub fn webhook_dropped(&self, hook: usize) {
        add(&self.webhook_drops, hook);
    }

    /// Events dropped by webhook hook number `hook` so far.
    pub fn webhook_drops(&self, hook: usize) -> u64 {
        read(&self.webhook_drops, hook)
    }
}

/// Adds one to counter number `index` of `counters`.
fn add(counters: &Mutex<Vec<u64>>, index: usize) {
    let mut counters = counters.lock().unwrap_or_else(|e| e.into_inner());
    if counters.len() <= index {
        counters.resize(index + 1, 0);
    }
    counters[index] += 1;
}

/// Counter number `index` of `counters` (0 until counted).
fn read(counters: &Mutex<Vec<u64>>, index: usize) -> u64 {
    let counters = counters.lock().unwrap_or_else(|e| e.into_inner());
    counters.get(index).copied().unwrap_or(0)
}

/// What one scrape shows: the processes' status and minder's counters.
#[derive(Debug)]
struct Snapshot {
    processes: Vec<ProcessStatus>,
    /// What each process uses, in the order of `processes`.
    usage: Vec<crate::process::usage::Usage>,
    counters: std::sync::Arc<Counters>,
    /// Number of configured hooks (each gets a failure series, 0 included).
    hooks: usize,
    /// Positions of the webhook hooks (each gets a dropped series, 0 included).
    webhooks: Vec<usize>,
    /// Reloads finished so far, and whether the last one was rejected.
    reloads: (u64, bool),
    /// Registration with load balancers.
    board: Arc<crate::register::Board>,
    now: Instant,
    wall: SystemTime,
}

/// Every state name, for `minder_process_state`.
const STATES: [&str; 7] = [
    "stopped", "starting", "running", "backoff", "stopping", "exited", "fatal",
];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let labels = |s: &ProcessStatus| [("name", s.name.clone()), ("program", s.program.clone())];
        let gauge = |v: i64| ConstGauge::new(v);

        let mut family = encoder.encode_descriptor(
            "minder_process_up",
            "1 when the process is running, 0 otherwise.",
            None,
            MetricType::Gauge,
        )?;
        for s in &self.processes {
            let up = matches!(s.state, State::Running { .. });
            gauge(i64::from(up)).encode(family.encode_family(&labels(s))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "minder_process_state",
            "1 for the state the process is in, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for s in &self.processes {
            let [name, program] = labels(s);
            for state in STATES {
                let set = [name.clone(), program.clone(), ("state", state.to_string())];
                gauge(i64::from(s.state.name() == state)).encode(family.encode_family(&set)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "minder_process_restarts",
            "Automatic restarts of the process.",
            None,
            MetricType::Counter,
        )?;
        for s in &self.processes {
            ConstCounter::new(u64::from(s.restarts)).encode(family.encode_family(&labels(s))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "minder_process_oom_kills",
            "Processes of this name the kernel's OOM killer ended (since minder started).",
            None,
            MetricType::Counter,
        )?;
        for s in &self.processes {
            ConstCounter::new(u64::from(s.oom_kills)).encode(family.encode_family(&labels(s))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "minder_process_start_time_seconds",
            "Start time of the live process, seconds since the Unix epoch.",
            None,
            MetricType::Gauge,
        )?;
        for s in &self.processes {
            if let Some(started) = s.state.started() {
                let age = self.now.saturating_duration_since(started);
                let at = self.wall.checked_sub(age).unwrap_or(self.wall);
                let secs = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
                ConstGauge::new(secs.as_secs_f64()).encode(family.encode_family(&labels(s))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "minder_process_cpu_seconds",
            "User and system CPU time of the process and all its descendants; 0 without a live process.",
            None,
            MetricType::Counter,
        )?;
        for (s, usage) in self.processes.iter().zip(&self.usage) {
            ConstCounter::new(usage.cpu_secs).encode(family.encode_family(&labels(s))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "minder_process_memory_bytes",
            "Resident memory of the process and all its descendants; absent when unknown or without a live process.",
            None,
            MetricType::Gauge,
        )?;
        for (s, usage) in self.processes.iter().zip(&self.usage) {
            if let Some(bytes) = usage.memory_bytes {
                // A gauge is an i64 or an f64: bytes beyond i64 do not exist.
                let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                gauge(bytes).encode(family.encode_family(&labels(s))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "minder_process_last_exit_code",
            "Exit code of the last run; 128 + the signal number when a signal ended it.",
            None,
            MetricType::Gauge,
        )?;
        for s in &self.processes {
            if let Some(end) = s.last_end {
                let code = match end {
                    crate::process::ProcessEnd::Exited(code) => i64::from(code),
                    crate::process::ProcessEnd::Signaled(sig) => 128 + i64::from(sig),
                    crate::process::ProcessEnd::OomKilled { .. } => 128 + i64::from(libc::SIGKILL),
                };
                gauge(code).encode(family.encode_family(&labels(s))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "minder_process_health",
            "1 when the health check passes, 0 otherwise (programs with a health check).",
            None,
            MetricType::Gauge,
        )?;
        for s in self.processes.iter().filter(|s| s.probes.is_some()) {
            let healthy = s.health == crate::supervisor::state::Health::Healthy;
            gauge(i64::from(healthy)).encode(family.encode_family(&labels(s))?)?;
        }

        let mut family = encoder.encode_descriptor(
            "minder_health_probe_duration_seconds",
            "How long health probes took.",
            None,
            MetricType::Histogram,
        )?;
        for s in &self.processes {
            if let Some(probes) = &s.probes {
                probes.duration.encode(family.encode_family(&labels(s))?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "minder_health_probe_failures",
            "Failed health probes.",
            None,
            MetricType::Counter,
        )?;
        for s in &self.processes {
            if let Some(probes) = &s.probes {
                probes.failures.encode(family.encode_family(&labels(s))?)?;
            }
        }

        for (metric, help, pick) in [
            (
                "minder_log_bytes",
                "Captured output written to the log files (inherited streams: to minder's stdout or stderr, prefixes included).",
                0,
            ),
            (
                "minder_log_dropped_bytes",
                "Captured output lost because the log file (inherited streams: minder's stdout or stderr) could not take it.",
                1,
            ),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for s in &self.processes {
                let [name, program] = labels(s);
                for stream in [Stream::Stdout, Stream::Stderr] {
                    let (written, dropped) = s.logs.bytes(stream);
                    let value = if pick == 0 { written } else { dropped };
                    let set = [
                        name.clone(),
                        program.clone(),
                        ("stream", stream.name().to_string()),
                    ];
                    ConstCounter::new(value).encode(family.encode_family(&set)?)?;
                }
            }
        }

        let mut family = encoder.encode_descriptor(
            "minder_hook_failures",
            "Hook runs that failed (non-zero exit, timeout, webhook error), by the hook's position in the config.",
            None,
            MetricType::Counter,
        )?;
        for hook in 0..self.hooks {
            let set = [("hook", hook.to_string())];
            ConstCounter::new(self.counters.hook_failures(hook))
                .encode(family.encode_family(&set)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "minder_hook_webhook_dropped",
            "Events a webhook hook dropped because its queue (64 events) was full, by the hook's position in the config.",
            None,
            MetricType::Counter,
        )?;
        for &hook in &self.webhooks {
            let set = [("hook", hook.to_string())];
            ConstCounter::new(self.counters.webhook_drops(hook))
                .encode(family.encode_family(&set)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "minder_register_in",
            "1 while the process is in its load balancers (running and healthy or unchecked), 0 otherwise (programs with [register]).",
            None,
            MetricType::Gauge,
        )?;
        for (name, process) in self.board.processes() {
            let set = [("name", name), ("program", process.program)];
            let is_in = process.standing == crate::register::Standing::In;
            gauge(i64::from(is_in)).encode(family.encode_family(&set)?)?;
        }

        let backends = self.board.backends();
        let mut family = encoder.encode_descriptor(
            "minder_register_backend_up",
            "1 when the last operation on the backend (haproxy, etcd, file) succeeded, by program.",
            None,
            MetricType::Gauge,
        )?;
        for ((program, backend), counts) in &backends {
            let set = [
                ("program", program.clone()),
                ("backend", backend.name().to_string()),
            ];
            gauge(i64::from(!counts.failing)).encode(family.encode_family(&set)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "minder_register_errors",
            "Operations on a load balancer backend that failed (each retry counts), by program.",
            None,
            MetricType::Counter,
        )?;
        for ((program, backend), counts) in &backends {
            let set = [
                ("program", program.clone()),
                ("backend", backend.name().to_string()),
            ];
            ConstCounter::new(counts.errors).encode(family.encode_family(&set)?)?;
        }

        let family = encoder.encode_descriptor(
            "minder_reloads",
            "Config reloads, applied or rejected.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.reloads.0).encode(family)?;

        let family = encoder.encode_descriptor(
            "minder_config_last_reload_successful",
            "0 when the last reload was rejected, 1 otherwise.",
            None,
            MetricType::Gauge,
        )?;
        let failed = self.reloads.1;
        gauge(i64::from(!failed)).encode(family)?;

        let mut family = encoder.encode_descriptor(
            "minder_build_info",
            "minder's version, as a label; always 1.",
            None,
            MetricType::Gauge,
        )?;
        let set = [("version", env!("CARGO_PKG_VERSION"))];
        gauge(1).encode(family.encode_family(&set)?)?;
        Ok(())
    }
}

/// The `/metrics` document for these processes.
fn encode(
    processes: Vec<ProcessStatus>,
    counters: std::sync::Arc<Counters>,
    phase: &Phase,
    board: Arc<crate::register::Board>,
) -> String {
    // About 1 KiB a process (more with a probe histogram): one allocation
    // rather than a dozen doublings and copies of a megabyte.
    let mut text = String::with_capacity(processes.len() * 1024 + 4096);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        usage: ProcessStatus::usage(&processes),
        processes,
        counters,
        hooks: phase.config.supervisor.hooks.len(),
        webhooks: (phase.config.supervisor.hooks.iter().enumerate())
            .filter(|(_, hook)| matches!(hook.action, crate::config::HookAction::Webhook(_)))
            .map(|(index, _)| index)
            .collect(),
        reloads: (
            phase.reloads_finished,
            matches!(phase.last_reload, Some(Err(_))),
        ),
        board,
        now: Instant::now(),
        wall: SystemTime::now(),
    }));
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// The content type of [`encode`]'s output.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long `/healthz` waits for the supervisor loop to answer.
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the metrics address (before the daemon commits to it).
pub fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// The `/metrics` server: where it serves, and what it asks for answers.
pub struct Server {
    serving: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// Bound by a reload's `prepare`, served from its `commit`: `Some(None)`
    /// to stop serving.
    pending: Option<Option<(SocketAddr, tokio::net::TcpListener)>>,
    source: Source,
}

/// Where a scrape's figures come from.
#[derive(Clone)]
struct Source {
    /// The supervisor's loop (statuses, and whether it answers).
    inputs: mpsc::Sender<Input>,
    /// Reloads and the hooks in force.
    phase: watch::Receiver<Phase>,
    /// Hook failures.
    counters: Arc<Counters>,
    /// Registration with load balancers.
    board: Arc<crate::register::Board>,
}

impl Server {
    /// A server that serves nowhere yet.
    pub fn new(
        inputs: mpsc::Sender<Input>,
        phase: watch::Receiver<Phase>,
        counters: Arc<Counters>,
        board: Arc<crate::register::Board>,
    ) -> Server {
        Server {
            serving: None,
            pending: None,
            source: Source {
                inputs,
                phase,
                counters,
                board,
            },
        }
    }

    /// Serves on `listener`, bound to `address` (bound before the daemon
    /// commits to starting, so a port in use stops it at once).
    pub fn start(&mut self, address: SocketAddr, listener: tokio::net::TcpListener) {
        if let Some((_, old)) = self.serving.take() {
            old.abort();
        }
        let task = tokio::spawn(serve(listener, self.source.clone()));
        self.serving = Some((address, task));
    }
}

/// A reload that changes `metrics` binds the new address first (`prepare`):
/// an address in use rejects the reload and the old one keeps serving.
impl ReloadGate for Server {
    fn prepare(&mut self, new: &Config) -> Result<(), String> {
        let address = new.supervisor.metrics;
        self.pending = None;
        if self.serving.as_ref().map(|(a, _)| *a) == address {
            return Ok(());
        }
        let listener = match address {
            Some(a) => Some((a, bind(a).map_err(|e| format!("metrics {a}: {e}"))?)),
            None => None,
        };
        self.pending = Some(listener);
        Ok(())
    }

    fn commit(&mut self) {
        match self.pending.take() {
            // Unchanged.
            None => {}
            Some(None) => {
                if let Some((_, old)) = self.serving.take() {
                    old.abort();
                }
            }
            Some(Some((address, listener))) => self.start(address, listener),
        }
    }

    fn abort(&mut self) {
        self.pending = None;
    }
}

/// Serves `/metrics` and `/healthz` on `listener`.
async fn serve(listener: tokio::net::TcpListener, source: Source) {
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let source = source.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(&mut stream, &source).await {
                        tracing::debug!("metrics connection: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accepting a metrics connection: {e}");
                // EMFILE and friends: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(stream: &mut tokio::net::TcpStream, source: &Source) -> std::io::Result<()> {
    use crate::http::{read_request_head, respond};
    let (method, path) = tokio::time::timeout(REQUEST_TIMEOUT, read_request_head(stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "request not sent in time")
        })??;
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET or HEAD only\n",
            false,
        )
        .await;
    }
    match path.as_str() {
        "/metrics" => {
            let (tx, rx) = oneshot::channel();
            let counters = Arc::clone(&source.counters);
            let phase = source.phase.clone();
            let board = Arc::clone(&source.board);
            // Encoded in the supervisor's step (see `StatusView`).
            let view = StatusView::new(move |statuses| {
                let text = statuses.map(|s| encode(s, counters, &phase.borrow(), board));
                let _ = tx.send(text);
            });
            let scrape = match source.inputs.try_send(Input::Status {
                names: Vec::new(),
                view,
            }) {
                Ok(()) => tokio::time::timeout(LOOP_TIMEOUT, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .and_then(Result::ok),
                Err(_) => None,
            };
            match scrape {
                Some(text) => {
                    let sent =
                        respond(stream, "200 OK", CONTENT_TYPE, text.as_bytes(), head_only).await;
                    drop(text);
                    // The scrape left many short-lived strings behind, and ran
                    // code an idle daemon does not: it should keep neither's pages.
                    crate::memory::release();
                    sent
                }
                None => {
                    respond(
                        stream,
                        "503 Service Unavailable",
                        "text/plain",
                        b"minder is busy or shutting down\n",
                        head_only,
                    )
                    .await
                }
            }
        }
        "/healthz" => {
            let (tx, rx) = oneshot::channel();
            let alive = match source.inputs.try_send(Input::Ping(tx)) {
                Ok(()) => matches!(tokio::time::timeout(LOOP_TIMEOUT, rx).await, Ok(Ok(()))),
                Err(_) => false,
            };
            if alive {
                respond(stream, "200 OK", "text/plain", b"ok\n", head_only).await
            } else {
                respond(
                    stream,
                    "503 Service Unavailable",
                    "text/plain",
                    b"the supervisor loop does not answer\n",
                    head_only,
                )
                .await
            }
        }
        _ => {
            respond(
                stream,
                "404 Not Found",
                "text/plain",
                b"try /metrics or /healthz\n",
                head_only,
            )
            .await
        }
    }
}
