//! The subscriber: follows the supervisor's transitions and phase, works out
//! each registered process's [`Standing`] from the statuses the supervisor
//! publishes, and hands every program's members to its backends' workers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::worker::{drive, Sink};
use super::{
    etcd::Etcd, file::UpstreamFile, haproxy::Haproxy, Backend, Board, Member, Members, Standing,
    StandingChange,
};
use crate::config::{Config, ProgramConfig, RegisterConfig};
use crate::process::Reaper;
use crate::supervisor::state::{AfterStop, Health, State};
use crate::supervisor::{Input, Phase, StatusView, Transition};

/// How many standing changes a slow `ctl events` reader may fall behind
/// (it is then told how many it missed). Its slots are allocated at start,
/// registrations or not: 256 keep that small.
const CHANGES_QUEUE: usize = 256;

/// The registration layer, as the daemon holds it.
pub struct Registrar {
    board: Arc<Board>,
    changes: broadcast::Sender<Arc<StandingChange>>,
    task: JoinHandle<()>,
}

impl Registrar {
    /// What the balancers show of each registered process.
    pub fn board(&self) -> Arc<Board> {
        Arc::clone(&self.board)
    }

    /// Every standing change from now on.
    pub fn changes(&self) -> broadcast::Sender<Arc<StandingChange>> {
        self.changes.clone()
    }

    /// Waits, at most `bound`, for the last registrations to be withdrawn
    /// once the supervisor is gone (etcd leases revoked).
    pub async fn finish(self, bound: Duration) {
        if tokio::time::timeout(bound, self.task).await.is_err() {
            tracing::warn!(
                "load balancer registrations not all withdrawn within {}",
                crate::text::short_duration(bound)
            );
        }
    }
}

/// Starts following; called before the supervisor runs, so nothing it
/// publishes is missed. The transitions are subscribed to only while some
/// program has `[register]`: a subscriber makes the supervisor build every
/// transition and keep it until read, which a minder without registrations
/// should not pay for.
pub fn follow(
    phase: watch::Receiver<Phase>,
    transitions: broadcast::Sender<Arc<Transition>>,
    inputs: mpsc::Sender<Input>,
    reaper: Arc<Reaper>,
) -> Registrar {
    let board = Arc::new(Board::default());
    let changes = broadcast::channel(CHANGES_QUEUE).0;
    let follower = Follower {
        config: Arc::clone(&phase.borrow().config),
        programs: BTreeMap::new(),
        reasons: HashMap::new(),
        withdrawn: Vec::new(),
        board: Arc::clone(&board),
        changes: changes.clone(),
        inputs,
        reaper,
    };
    let task = tokio::spawn(follower.run(phase, transitions));
    Registrar {
        board,
        changes,
        task,
    }
}

/// One registered program and its backends' workers.
struct Program {
    cfg: Arc<ProgramConfig>,
    /// The host its registrations name.
    host: String,
    /// What the workers were last handed.
    members: Members,
    sender: watch::Sender<Members>,
    workers: Vec<JoinHandle<()>>,
    /// Left the config: its processes are being stopped.
    leaving: bool,
}

struct Follower {
    config: Arc<Config>,
    programs: BTreeMap<String, Program>,
    /// The last reason each process changed, for the events.
    reasons: HashMap<String, String>,
    /// Workers of withdrawn programs, finishing their last apply (awaited
    /// at shutdown: an etcd lease is revoked before minder exits).
    withdrawn: Vec<JoinHandle<()>>,
    board: Arc<Board>,
    changes: broadcast::Sender<Arc<StandingChange>>,
    inputs: mpsc::Sender<Input>,
    reaper: Arc<Reaper>,
}

/// What the follower needs of one process's status.
struct Seen {
    state: State,
    health: Health,
}

impl Follower {
    async fn run(
        mut self,
        mut phase: watch::Receiver<Phase>,
        sender: broadcast::Sender<Arc<Transition>>,
    ) {
        let config = Arc::clone(&self.config);
        self.reconfigure(&config);
        let mut transitions = self.listen(&sender, None);
        let mut dirty: BTreeSet<String> = self.programs.keys().cloned().collect();
        loop {
            if !dirty.is_empty() {
                let programs = std::mem::take(&mut dirty);
                self.refresh(programs, &mut transitions, &mut dirty).await;
            }
            tokio::select! {
                biased;
                received = next(&mut transitions), if transitions.is_some() => match received {
                    Ok(t) => {
                        self.note(&t, &mut dirty);
                        // Take every transition already queued, then ask once.
                        self.take_queued(&mut transitions, &mut dirty);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        dirty.extend(self.programs.keys().cloned());
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                changed = phase.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let config = Arc::clone(&phase.borrow_and_update().config);
                    if !Arc::ptr_eq(&config, &self.config) {
                        self.config = Arc::clone(&config);
                        self.reconfigure(&config);
                        transitions = self.listen(&sender, transitions);
                        dirty.extend(self.programs.keys().cloned());
                    }
                }
            }
        }
        // The supervisor is gone, and with it every process minder stops:
        // nothing takes traffic any more.
        self.take_queued(&mut transitions, &mut BTreeSet::new());
        let names: Vec<String> = self.programs.keys().cloned().collect();
        for name in names {
            self.withdraw(&name);
        }
        for worker in std::mem::take(&mut self.withdrawn) {
            let _ = worker.await;
        }
    }

    /// The subscription to keep: one while some program is registered (kept
    /// if there is one already), none otherwise.
    fn listen(
        &self,
        sender: &broadcast::Sender<Arc<Transition>>,
        current: Option<broadcast::Receiver<Arc<Transition>>>,
    ) -> Option<broadcast::Receiver<Arc<Transition>>> {
        if self.programs.is_empty() {
            None
        } else {
            current.or_else(|| Some(sender.subscribe()))
        }
    }

    /// Takes in every transition already queued.
    fn take_queued(
        &mut self,
        transitions: &mut Option<broadcast::Receiver<Arc<Transition>>>,
        dirty: &mut BTreeSet<String>,
    ) {
        let Some(rx) = transitions else {
            return;
        };
        loop {
            match rx.try_recv() {
                Ok(t) => self.note(&t, dirty),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    dirty.extend(self.programs.keys().cloned());
                }
                Err(_) => return,
            }
        }
    }

    /// Takes in one transition: which program to look at again, and the
    /// reason to give. A process of a program that left the config is not
    /// in the supervisor's statuses any more: its transitions say it all.
    fn note(&mut self, t: &Transition, dirty: &mut BTreeSet<String>) {
        let Some(program) = self.programs.get(&t.program) else {
            return;
        };
        // A change without words (`starting -> running` after its check)
        // keeps the reason of the one that led to it (`ctl restart`).
        let reason = t.cause.to_string();
        if !reason.is_empty() {
            self.reasons.insert(t.process.clone(), reason);
        }
        if !program.leaving {
            dirty.insert(t.program.clone());
            return;
        }
        if let crate::supervisor::Change::State { to, .. } = t.change {
            let live = to.pid().is_some();
            let program = t.program.clone();
            self.shrink_leaving(&program, |m| live || m.registration.name != t.process);
        }
    }

    /// A program that left the config keeps the processes `up` says are
    /// still up (draining if they were in) until their stop ends; the
    /// others are gone, and with the last one the program is withdrawn.
    fn shrink_leaving(&mut self, name: &str, up: impl Fn(&Member) -> bool) {
        let Some(program) = self.programs.get(name) else {
            return;
        };
        let (kept, gone): (Vec<&Member>, Vec<&Member>) =
            program.members.iter().partition(|m| up(m));
        let members: Vec<Member> = kept
            .into_iter()
            .map(|m| Member {
                standing: leaving_standing(m.standing),
                ..m.clone()
            })
            .collect();
        let gone: Vec<String> = gone.iter().map(|m| m.registration.name.clone()).collect();
        for process in gone {
            self.board.forget(&process);
        }
        let empty = members.is_empty();
        self.publish(name, members);
        if empty {
            self.withdraw(name);
        }
    }

    /// Asks the supervisor for the statuses of `programs` (those still in
    /// the config) and hands each its members. The statuses may be newer
    /// than the transitions taken in so far: those that came meanwhile are
    /// taken in first, so each change is given its own reason.
    async fn refresh(
        &mut self,
        programs: BTreeSet<String>,
        transitions: &mut Option<broadcast::Receiver<Arc<Transition>>>,
        dirty: &mut BTreeSet<String>,
    ) {
        let names: Vec<String> = programs
            .into_iter()
            .filter(|p| self.programs.get(p).is_some_and(|p| !p.leaving))
            .collect();
        if names.is_empty() {
            return;
        }
        let (reply, answer) = oneshot::channel();
        // Refused only when a program just left the config: the phase that
        // says so is next, and a refresh of everything follows it.
        let view = StatusView::new(move |statuses| {
            let seen: Option<HashMap<String, Seen>> = statuses.ok().map(|statuses| {
                statuses
                    .into_iter()
                    .map(|s| {
                        (
                            s.name,
                            Seen {
                                state: s.state,
                                health: s.health,
                            },
                        )
                    })
                    .collect()
            });
            let _ = reply.send(seen);
        });
        let input = Input::Status {
            names: names.clone(),
            view,
        };
        if self.inputs.send(input).await.is_err() {
            return;
        }
        let Ok(Some(seen)) = answer.await else {
            return;
        };
        self.take_queued(transitions, dirty);
        for name in names {
            let Some(program) = self.programs.get(&name) else {
                continue;
            };
            let members = members_of(program, &seen);
            self.publish(&name, members);
        }
    }

    /// Hands `members` to the program's workers if they changed, and tells
    /// the board and `ctl events` of every standing that did.
    fn publish(&mut self, name: &str, members: Vec<Member>) {
        let Some(program) = self.programs.get_mut(name) else {
            return;
        };
        if *program.members == members {
            return;
        }
        let backends = backends_of(program.cfg.register.as_deref());
        for member in &members {
            let process = &member.registration.name;
            let before = program
                .members
                .iter()
                .find(|m| m.registration.name == *process)
                .map_or(Standing::Out, |m| m.standing);
            self.board
                .set_standing(process, name, member.standing, &backends);
            if before != member.standing {
                let change = StandingChange {
                    at: SystemTime::now(),
                    process: process.clone(),
                    program: name.to_string(),
                    from: before,
                    to: member.standing,
                    reason: self.reasons.get(process).cloned().unwrap_or_default(),
                    pid: member.pid,
                };
                tracing::info!(
                    process = %process,
                    "{} -> {} of the load balancers",
                    before.name(),
                    member.standing.name()
                );
                let _ = self.changes.send(Arc::new(change));
            }
        }
        program.members = Arc::new(members);
        program.sender.send_replace(Arc::clone(&program.members));
    }

    /// Follows a new config: starts workers for newly registered programs,
    /// replaces those whose backends or host changed (the old ones withdraw
    /// what they registered), and marks programs that left as leaving.
    fn reconfigure(&mut self, config: &Config) {
        let host = &config.supervisor.host;
        let names: Vec<String> = self.programs.keys().cloned().collect();
        for name in names {
            let Some(program) = self.programs.get_mut(&name) else {
                continue;
            };
            match config.programs.iter().find(|p| p.name == name) {
                Some(cfg) if cfg.register.is_some() => {
                    let same_backends = backends_config(cfg.register.as_deref())
                        == backends_config(program.cfg.register.as_deref())
                        && program.host == *host;
                    if same_backends && !program.leaving {
                        program.cfg = Arc::clone(cfg);
                    } else {
                        self.withdraw(&name);
                    }
                }
                // No longer registered, but still running: out of every balancer.
                Some(_) => self.withdraw(&name),
                None => {
                    // Its processes are being stopped; those already down
                    // are gone at once, the others when their stop ends.
                    program.leaving = true;
                    self.shrink_leaving(&name, |m| m.pid.is_some());
                }
            }
        }
        for cfg in &config.programs {
            if cfg.register.is_some() && !self.programs.contains_key(&cfg.name) {
                let program = self.start_program(Arc::clone(cfg), host);
                self.programs.insert(cfg.name.clone(), program);
            }
        }
    }

    /// A program's workers, one per backend, with nothing registered yet.
    fn start_program(&self, cfg: Arc<ProgramConfig>, host: &str) -> Program {
        let members: Members = Arc::new(Vec::new());
        let (sender, _) = watch::channel(Arc::clone(&members));
        let mut workers = Vec::new();
        if let Some(register) = &cfg.register {
            let mut sinks = Vec::new();
            if let Some(h) = &register.haproxy {
                sinks.push(Sink::Haproxy(Haproxy::new(h.clone())));
            }
            if let Some(e) = &register.etcd {
                sinks.push(Sink::Etcd(Box::new(Etcd::new(e.clone()))));
            }
            if let (Some(f), Some(path)) = (&register.file, cfg.upstream_file(host)) {
                sinks.push(Sink::File(UpstreamFile::new(
                    f.clone(),
                    path,
                    cfg.name.clone(),
                    Arc::clone(&self.reaper),
                )));
            }
            for sink in sinks {
                workers.push(tokio::spawn(drive(
                    sink,
                    cfg.name.clone(),
                    sender.subscribe(),
                    Arc::clone(&self.board),
                )));
            }
        }
        Program {
            cfg,
            host: host.to_string(),
            members,
            sender,
            workers,
            leaving: false,
        }
    }

    /// Takes every process of `name` out of its balancers for good, and
    /// lets its workers finish (the last members they get are none).
    fn withdraw(&mut self, name: &str) {
        let Some(program) = self.programs.get(name) else {
            return;
        };
        let out: Vec<Member> = program
            .members
            .iter()
            .map(|m| Member {
                standing: Standing::Out,
                ..m.clone()
            })
            .collect();
        self.publish(name, out);
        let Some(program) = self.programs.remove(name) else {
            return;
        };
        program.sender.send_replace(Arc::new(Vec::new()));
        self.board.forget_program(name);
        let of_program = |process: &str| {
            process == name
                || process
                    .strip_prefix(name)
                    .is_some_and(|i| i.starts_with(':'))
        };
        self.reasons.retain(|process, _| !of_program(process));
        // Dropping the sender ends the workers once they applied that.
        drop(program.sender);
        self.withdrawn.retain(|w| !w.is_finished());
        self.withdrawn.extend(program.workers);
    }
}

/// The next transition, from a subscription the caller knows exists.
async fn next(
    transitions: &mut Option<broadcast::Receiver<Arc<Transition>>>,
) -> Result<Arc<Transition>, broadcast::error::RecvError> {
    match transitions {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What a leaving process shows while it is stopped: draining if it was
/// taking traffic, out otherwise.
fn leaving_standing(before: Standing) -> Standing {
    match before {
        Standing::In | Standing::Draining => Standing::Draining,
        Standing::Out => Standing::Out,
    }
}

/// A process's standing, from its state and health (SPEC §5.2): in while
/// running and healthy or unchecked; draining while a requested stop takes
/// it down after it was in; out otherwise.
pub(super) fn standing(state: &State, health: Health, before: Standing) -> Standing {
    match state {
        State::Running { .. } if matches!(health, Health::Healthy | Health::None) => Standing::In,
        State::Stopping {
            then: AfterStop::Stay | AfterStop::Start | AfterStop::Remove,
            ..
        } => leaving_standing(before),
        _ => Standing::Out,
    }
}

/// The members of `program` given its processes' statuses.
fn members_of(program: &Program, seen: &HashMap<String, Seen>) -> Vec<Member> {
    let cfg = &program.cfg;
    (0..cfg.instances.max(1))
        .filter_map(|instance| cfg.registration(instance, &program.host))
        .map(|registration| {
            let before = program
                .members
                .iter()
                .find(|m| m.registration.name == registration.name);
            let (standing_now, pid, started) = match seen.get(&registration.name) {
                Some(s) => (
                    standing(
                        &s.state,
                        s.health,
                        before.map_or(Standing::Out, |m| m.standing),
                    ),
                    s.state.pid().map(|p| p.as_raw() as u32),
                    s.state.started(),
                ),
                None => (Standing::Out, None, None),
            };
            // The same process keeps the start time it was first given: a
            // value recomputed from the clocks would differ by microseconds
            // each time, and etcd would be written for nothing.
            let since = match before {
                Some(m) if m.pid == pid && m.since.is_some() => m.since,
                _ => started.map(wall_clock),
            };
            Member {
                registration,
                standing: standing_now,
                pid,
                since,
            }
        })
        .collect()
}

/// The wall-clock time of a monotonic instant in the past.
fn wall_clock(at: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(at.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The backends of a `[register]` table, in the order `status` lists them.
fn backends_of(register: Option<&RegisterConfig>) -> Vec<Backend> {
    let Some(r) = register else {
        return Vec::new();
    };
    let mut backends = Vec::new();
    if r.haproxy.is_some() {
        backends.push(Backend::Haproxy);
    }
    if r.etcd.is_some() {
        backends.push(Backend::Etcd);
    }
    if r.file.is_some() {
        backends.push(Backend::File);
    }
    backends
}

/// The parts of `[register]` that decide which workers run.
fn backends_config(
    register: Option<&RegisterConfig>,
) -> Option<(
    &Option<crate::config::HaproxyConfig>,
    &Option<crate::config::EtcdConfig>,
    &Option<crate::config::UpstreamFileConfig>,
)> {
    register.map(|r| (&r.haproxy, &r.etcd, &r.file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;

    #[test]
    fn in_exactly_while_running_and_healthy_or_unchecked() {
        let t = Instant::now();
        let pid = Pid::from_raw(7);
        let running = State::Running { pid, started: t };
        assert_eq!(
            standing(&running, Health::None, Standing::Out),
            Standing::In
        );
        assert_eq!(
            standing(&running, Health::Healthy, Standing::Out),
            Standing::In
        );
        assert_eq!(
            standing(&running, Health::Unhealthy, Standing::In),
            Standing::Out
        );
        assert_eq!(
            standing(&running, Health::Starting, Standing::Out),
            Standing::Out
        );
        let starting = State::Starting { pid, started: t };
        assert_eq!(
            standing(&starting, Health::None, Standing::Out),
            Standing::Out
        );
        for state in [
            State::Stopped,
            State::Exited,
            State::Fatal,
            State::Backoff { until: t },
        ] {
            assert_eq!(standing(&state, Health::None, Standing::In), Standing::Out);
        }
    }

    #[test]
    fn a_requested_stop_drains_what_was_in_and_minder_s_own_does_not() {
        let stopping = |then| State::Stopping {
            pid: Pid::from_raw(7),
            started: Instant::now(),
            since: Instant::now(),
            draining: true,
            killed: false,
            then,
        };
        for then in [AfterStop::Stay, AfterStop::Start, AfterStop::Remove] {
            assert_eq!(
                standing(&stopping(then), Health::None, Standing::In),
                Standing::Draining
            );
            assert_eq!(
                standing(&stopping(then), Health::None, Standing::Draining),
                Standing::Draining
            );
            assert_eq!(
                standing(&stopping(then), Health::None, Standing::Out),
                Standing::Out
            );
        }
        let retry = stopping(AfterStop::Retry {
            failed_start: false,
        });
        assert_eq!(
            standing(&retry, Health::Unhealthy, Standing::In),
            Standing::Out
        );
    }
}
