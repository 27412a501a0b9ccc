//! minder as a systemd service: what it tells *its own* service manager.
//!
//! This is minder's side of `Type=notify` (the `NOTIFY_SOCKET` systemd gave
//! minder), not the socket minder gives its children (that is `notify`):
//! `READY=1` once every autostart program has been started, a `STATUS=`
//! summary kept current, `RELOADING=1` + `MONOTONIC_USEC=` then `READY=1`
//! around a reload, `STOPPING=1` on shutdown, and `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` from the supervisor's event loop, so that a wedged minder
//! is restarted by systemd.
//!
//! It is a subscriber, started by `daemon.rs` ([`run`]): it follows the
//! supervisor's transitions and phase, and asks the supervisor's loop for a
//! snapshot when `STATUS=` is due and for a ping before each `WATCHDOG=1`,
//! so a loop that no longer answers stops the watchdog.
//!
//! Nothing here polls. Without `NOTIFY_SOCKET` [`run`] returns at once.
//! With it, `STATUS=` is recomputed only after some process changed state or
//! health (debounced), and a timer exists only when systemd asked for a
//! watchdog.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::time::{sleep, Instant, Sleep};

use crate::config::Config;
use crate::supervisor::state::{Health, State};
use crate::supervisor::{Input, Phase, ProcessHandle, Transition};

/// How long `STATUS=` waits for more changes before summing them up: a burst
/// of a thousand starts becomes a handful of messages, not thousands.
const STATUS_DEBOUNCE: Duration = Duration::from_millis(100);

/// Longest `STATUS=` text; systemd shows one line, and datagrams are small.
const MAX_STATUS: usize = 200;

/// What [`Systemd::next`] says is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// Time for `WATCHDOG=1`.
    Watchdog,
    /// Processes changed: refresh `STATUS=` (and send `READY=1` when started).
    Status,
}

/// Where messages go.
enum Sink {
    /// `$NOTIFY_SOCKET`, through the `sd-notify` crate.
    Socket,
    /// Collected in memory (unit tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Memory(Arc<Mutex<Vec<String>>>),
}

/// The link to the service manager that runs minder.
pub struct Systemd {
    /// `None`: not run by a service manager; everything is a no-op.
    sink: Option<Sink>,
    /// Half of `WATCHDOG_USEC`, and when the next `WATCHDOG=1` is due.
    watchdog: Option<(Duration, Pin<Box<Sleep>>)>,
    /// Woken by [`run`] when a process's state or health changes.
    changes: Arc<Notify>,
    /// Armed by the first change after a summary; fires [`Duty::Status`].
    status_due: Option<Pin<Box<Sleep>>>,
    /// Set once the autostart task has had an answer for every program.
    autostart_done: Arc<AtomicBool>,
    /// `READY=1` has been sent.
    ready: bool,
    /// `STOPPING=1` has been sent.
    stopping: bool,
    /// The last `STATUS=` sent, so an unchanged summary is not repeated.
    last_status: String,
    /// The last send failed (warn once, not at every watchdog tick).
    failing: bool,
}

impl Systemd {
    /// From minder's environment: `NOTIFY_SOCKET`, and `WATCHDOG_USEC` when
    /// `WATCHDOG_PID` is absent or names this process (as `sd_watchdog_enabled`).
    pub fn from_env() -> Systemd {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        let mut link = Systemd::disabled(Arc::new(Notify::new()));
        if socket.is_none() {
            return link;
        }
        link.sink = Some(Sink::Socket);
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        link.watchdog = watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
            .map(|every| (every, Box::pin(sleep(Duration::ZERO))));
        if let Some((every, _)) = &link.watchdog {
            tracing::info!("systemd watchdog: WATCHDOG=1 every {every:?}");
        }
        link
    }

    /// Not run by a service manager: nothing is ever sent.
    pub fn disabled(changes: Arc<Notify>) -> Systemd {
        Systemd {
            sink: None,
            watchdog: None,
            changes,
            status_due: None,
            autostart_done: Arc::new(AtomicBool::new(false)),
            ready: false,
            stopping: false,
            last_status: String::new(),
            failing: false,
        }
    }

    /// Sends into `messages` instead of a socket; `watchdog` as systemd's interval.
    #[cfg(test)]
    fn recording(
        changes: Arc<Notify>,
        messages: Arc<Mutex<Vec<String>>>,
        watchdog: Option<Duration>,
    ) -> Systemd {
        let mut link = Systemd::disabled(changes);
        link.sink = Some(Sink::Memory(messages));
        link.watchdog = watchdog.map(|w| (w / 2, Box::pin(sleep(Duration::ZERO))));
        link
    }

    /// Whether minder runs under a service manager that listens.
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// A handle for the autostart task to say it has an answer for every program.
    pub fn autostart_tracker(&self) -> AutostartDone {
        AutostartDone {
            done: Arc::clone(&self.autostart_done),
            changes: Arc::clone(&self.changes),
        }
    }

    /// Resolves when something is due. Cancel-safe: what is pending stays
    /// recorded in `self`, so it can sit in a `select!` beside other inputs.
    pub async fn next(&mut self) -> Duty {
        if self.sink.is_none() {
            return std::future::pending().await;
        }
        loop {
            let armed = self.status_due.is_some();
            let Systemd {
                watchdog,
                status_due,
                changes,
                ..
            } = self;
            tokio::select! {
                () = fire(watchdog.as_mut().map(|(_, due)| due.as_mut())) => {
                    // Re-armed here, not by the caller: a fired timer left as
                    // it is would complete again at once.
                    if let Some((every, due)) = watchdog {
                        due.as_mut().reset(Instant::now() + *every);
                    }
                    return Duty::Watchdog;
                }
                () = fire(status_due.as_mut().map(Pin::as_mut)) => {
                    *status_due = None;
                    return Duty::Status;
                }
                () = changes.notified(), if !armed => {
                    *status_due = Some(Box::pin(sleep(STATUS_DEBOUNCE)));
                }
            }
        }
    }

    /// Carries out what [`Systemd::next`] said is due.
    pub fn perform(&mut self, duty: Duty, processes: &[ProcessHandle], config: &Config) {
        match duty {
            Duty::Watchdog => self.send(&[NotifyState::Watchdog]),
            Duty::Status => {
                let states = snapshot(processes);
                let status = self.status_text(&states);
                let started = || {
                    let by_program: Vec<(&str, State)> =
                        states.iter().map(|(p, s, _)| (*p, *s)).collect();
                    autostart_settled(&by_program, config)
                };
                if !self.ready
                    && !self.stopping
                    && (self.autostart_done.load(Ordering::Acquire) || started())
                {
                    self.ready = true;
                    tracing::info!("every autostart program has been started; READY=1 to systemd");
                    self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
                    self.last_status = status;
                } else if status != self.last_status {
                    self.send(&[NotifyState::Status(&status)]);
                    self.last_status = status;
                }
            }
        }
    }

    /// A reload begins: `RELOADING=1` with `MONOTONIC_USEC=` (systemd 253+ wants both).
    /// Before `READY=1` there is nothing to announce: systemd is still waiting for the start.
    pub fn reloading(&mut self) {
        if !self.ready || self.stopping {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => {
                tracing::warn!("reading CLOCK_MONOTONIC: {e}");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    /// The reload has been applied (or rejected, with `error`): `READY=1` again,
    /// with a `STATUS=` that says how it went.
    pub fn reloaded(&mut self, processes: &[ProcessHandle], error: Option<&str>) {
        if !self.ready || self.stopping {
            return;
        }
        let status = match error {
            None => self.status_text(&snapshot(processes)),
            Some(e) => clip(&format!("reload failed: {e}")),
        };
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.last_status = status;
    }

    /// Shutdown begins: `STOPPING=1`.
    pub fn stopping(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        let status = "shutting down".to_string();
        self.send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
        self.last_status = status;
    }

    fn status_text(&self, states: &[(&str, State, Health)]) -> String {
        let counts = summary(states.iter().map(|(_, state, health)| (*state, *health)));
        if self.stopping {
            format!("shutting down: {counts}")
        } else {
            counts
        }
    }

    fn send(&mut self, states: &[NotifyState]) {
        let result = match &self.sink {
            None => return,
            Some(Sink::Socket) => sd_notify::notify(states),
            Some(Sink::Memory(messages)) => {
                let text: Vec<String> = states.iter().map(|s| s.to_string()).collect();
                messages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(text.join("\n"));
                Ok(())
            }
        };
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::warn!("notifying systemd (NOTIFY_SOCKET): {e}");
            }
            Err(e) => tracing::debug!("notifying systemd (NOTIFY_SOCKET): {e}"),
        }
    }
}

/// Lets the autostart task say it is finished (see [`Systemd::autostart_tracker`]).
pub struct AutostartDone {
    done: Arc<AtomicBool>,
    changes: Arc<Notify>,
}

impl AutostartDone {
    /// Every autostart program has reached `running` or failed its start.
    pub fn finished(self) {
        self.done.store(true, Ordering::Release);
        self.changes.notify_one();
    }
}

/// (program, state, health) of every process, without copying their statuses.
fn snapshot(processes: &[ProcessHandle]) -> Vec<(&str, State, Health)> {
    processes
        .iter()
        .map(|h| {
            let watch = h.watch();
            let status = watch.borrow();
            (h.program.as_str(), status.state, status.health)
        })
        .collect()
}

/// Keeps systemd informed until the supervisor is gone: `STATUS=` after
/// transitions, `READY=1` once autostart is done, `RELOADING=1`/`READY=1`
/// around reloads, `STOPPING=1`, and `WATCHDOG=1` while the supervisor's
/// loop answers. Subscribed before the supervisor runs, so nothing is missed.
pub async fn run(
    mut link: Systemd,
    mut phase: watch::Receiver<Phase>,
    mut transitions: broadcast::Receiver<Arc<Transition>>,
    inputs: mpsc::Sender<Input>,
) {
    if !link.enabled() {
        return;
    }
    let mut seen = phase.borrow_and_update().clone();
    let mut autostart = Some(link.autostart_tracker());
    loop {
        tokio::select! {
            transition = transitions.recv() => match transition {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => link.changes.notify_one(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = phase.borrow_and_update().clone();
                if now.autostarted {
                    if let Some(done) = autostart.take() {
                        done.finished();
                    }
                }
                if now.reloads_begun > seen.reloads_begun {
                    link.reloading();
                }
                if now.reloads_finished > seen.reloads_finished {
                    let error = match &now.last_reload {
                        Some(Err(e)) => Some(e.as_str()),
                        _ => None,
                    };
                    let processes = ask(&inputs, Input::Snapshot).await.unwrap_or_default();
                    link.reloaded(&processes, error);
                }
                if now.stopping {
                    link.stopping();
                }
                seen = now;
            }
            duty = link.next() => match duty {
                // Sent only once the loop has answered: a wedged minder is restarted.
                Duty::Watchdog => {
                    if ask(&inputs, Input::Ping).await.is_none() {
                        return;
                    }
                    link.perform(duty, &[], &seen.config);
                }
                Duty::Status => {
                    let processes = ask(&inputs, Input::Snapshot).await.unwrap_or_default();
                    link.perform(duty, &processes, &seen.config);
                }
            },
        }
    }
}

/// Asks the supervisor's loop; `None` once it is gone.
async fn ask<T>(
    inputs: &mpsc::Sender<Input>,
    make: impl FnOnce(oneshot::Sender<T>) -> Input,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    inputs.send(make(tx)).await.ok()?;
    rx.await.ok()
}

/// `ctl reexec` is about to exec: `RELOADING=1` now, since this image will
/// not get to say anything else (the new one sends `READY=1`).
pub fn reexec_begins() {
    if std::env::var_os("NOTIFY_SOCKET").is_none_or(|s| s.is_empty()) {
        return;
    }
    let sent = match NotifyState::monotonic_usec_now() {
        Ok(now) => sd_notify::notify(&[NotifyState::Reloading, now]),
        Err(_) => sd_notify::notify(&[NotifyState::Reloading]),
    };
    if let Err(e) = sent {
        tracing::warn!("notifying systemd (NOTIFY_SOCKET): {e}");
    }
}

/// The exec of `ctl reexec` failed: this image carries on, `READY=1` again.
pub fn reexec_failed(why: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none_or(|s| s.is_empty()) {
        return;
    }
    let status = clip(&format!("reload failed: {why}"));
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        tracing::warn!("notifying systemd (NOTIFY_SOCKET): {e}");
    }
}

/// Resolves when `due` fires; never when there is no timer.
async fn fire(due: Option<Pin<&mut Sleep>>) {
    match due {
        Some(due) => due.await,
        None => std::future::pending().await,
    }
}

/// Half of `WATCHDOG_USEC` (what `sd_watchdog_enabled` callers are told to
/// use), if it is set, positive, and meant for `own_pid`.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

/// `12 running, 1 backoff, 0 unhealthy`: `running` and `unhealthy` always,
/// the other states (in SPEC order) when some process is in them.
pub fn summary(processes: impl Iterator<Item = (State, Health)>) -> String {
    const ORDER: [&str; 7] = [
        "running", "starting", "backoff", "stopping", "exited", "fatal", "stopped",
    ];
    let mut counts = [0usize; ORDER.len()];
    let mut unhealthy = 0;
    for (state, health) in processes {
        // `Spawning` is never published; count it as the `starting` it becomes.
        let name = match state {
            State::Spawning => "starting",
            other => other.name(),
        };
        if let Some(i) = ORDER.iter().position(|n| *n == name) {
            counts[i] += 1;
        }
        if health == Health::Unhealthy {
            unhealthy += 1;
        }
    }
    let mut parts = Vec::new();
    for (i, name) in ORDER.iter().enumerate() {
        if i == 0 || counts[i] > 0 {
            parts.push(format!("{} {name}", counts[i]));
        }
    }
    parts.push(format!("{unhealthy} unhealthy"));
    parts.join(", ")
}

/// Whether every autostart process has been started: it reached `running`,
/// `backoff`, `fatal` or `exited`, or it is still `stopped` only because a
/// program it depends on (transitively) is in one of the failed states.
/// A program that can never start therefore never holds back `READY=1`.
/// `processes` holds (program, state) of every process.
pub fn autostart_settled(processes: &[(&str, State)], config: &Config) -> bool {
    let mut by_program: HashMap<&str, Vec<State>> = HashMap::new();
    for (program, state) in processes {
        by_program.entry(program).or_default().push(*state);
    }
    let depends_on: HashMap<&str, &[String]> = config
        .programs
        .iter()
        .map(|p| (p.name.as_str(), p.depends_on.as_slice()))
        .collect();
    let mut blocked_memo = HashMap::new();
    for program in config.programs.iter().filter(|p| p.autostart) {
        for state in by_program.get(program.name.as_str()).into_iter().flatten() {
            let settled = match state {
                State::Running { .. } | State::Backoff { .. } | State::Fatal | State::Exited => {
                    true
                }
                State::Stopped => blocked(
                    &program.name,
                    &by_program,
                    &depends_on,
                    &mut blocked_memo,
                    0,
                ),
                State::Spawning | State::Starting { .. } | State::Stopping { .. } => false,
            };
            if !settled {
                return false;
            }
        }
    }
    true
}

/// Whether some program `program` depends on, directly or not, failed its start.
fn blocked(
    program: &str,
    by_program: &HashMap<&str, Vec<State>>,
    depends_on: &HashMap<&str, &[String]>,
    memo: &mut HashMap<String, bool>,
    depth: usize,
) -> bool {
    if let Some(&known) = memo.get(program) {
        return known;
    }
    // `depends_on` has no cycles (the config refuses them); the bound is a guard.
    if depth > by_program.len() + 1 {
        return false;
    }
    let failed = |states: &Vec<State>| {
        states
            .iter()
            .any(|s| matches!(s, State::Backoff { .. } | State::Fatal | State::Exited))
    };
    let deps = depends_on.get(program).copied().unwrap_or(&[]);
    let result = deps.iter().any(|dep| {
        by_program.get(dep.as_str()).is_some_and(failed)
            || blocked(dep, by_program, depends_on, memo, depth + 1)
    });
    memo.insert(program.to_string(), result);
    result
}

/// Cuts a status text to [`MAX_STATUS`] bytes on a character boundary, on one line.
fn clip(text: &str) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.len() <= MAX_STATUS {
        return one_line;
    }
    let mut end = MAX_STATUS;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &one_line[..end])
}

#[cfg(test)]
mod tests;
