//! Properties of the state machine over any physically possible history:
//! requests, spawn results, exits of live processes, health results, notify
//! messages and timers firing at increasing times, in any order.
//!
//! A small model of the actor (`actor.rs`) drives the machine: it carries
//! out the effects as the actor does (a spawn gets a fresh PID or fails,
//! signals reach the processes they name, `Retire`, `RolloutFailed` and
//! `Adopt` move the exit handles) and routes each exit by the handle it
//! arrives on, as the reaper does. Processes are simulated: each obeys its
//! stop signal or ignores it, and dies of SIGKILL.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use proptest::prelude::*;

use super::tests::spawn_error;
use super::*;
use crate::config::{
    BackoffConfig, HealthConfig, ListenAddress, OnUnhealthy, ProbeTarget, ProgramConfig,
    RestartPolicy,
};
use crate::process::ProcessEnd;

/// How a program becomes ready.
#[derive(Debug, Clone, Copy)]
enum ReadyBy {
    Timer(u64),
    Notify,
    Probe(OnUnhealthy),
}

#[derive(Debug, Clone, Copy)]
struct Knobs {
    ready: ReadyBy,
    stop_timeout_ms: u64,
    kill_group: bool,
    restart: RestartPolicy,
    max_retries: u32,
    backoff_ms: u64,
    rolling: bool,
    watchdog_ms: u64,
    drain_ms: u64,
}

fn program(k: Knobs) -> ProgramConfig {
    let ms = Duration::from_millis;
    ProgramConfig {
        restart: k.restart,
        start_secs: match k.ready {
            ReadyBy::Timer(t) => ms(t),
            _ => ms(1000),
        },
        stop_timeout: ms(k.stop_timeout_ms),
        kill_group: k.kill_group,
        backoff: BackoffConfig {
            initial: ms(k.backoff_ms),
            max: ms(k.backoff_ms * 4),
            multiplier: 2.0,
            jitter: 0.5,
            reset_after: ms(10_000),
            max_retries: k.max_retries,
        },
        health: match k.ready {
            ReadyBy::Probe(on_unhealthy) => Some(HealthConfig {
                probe: ProbeTarget::Http(Box::new(crate::config::HttpProbe::get(
                    "http://127.0.0.1:8080/health",
                ))),
                interval: ms(1000),
                timeout: ms(500),
                start_period: ms(3000),
                failure_threshold: 2,
                success_threshold: 1,
                on_unhealthy,
            }),
            _ => None,
        },
        notify: matches!(k.ready, ReadyBy::Notify),
        ready_timeout: ms(3000),
        watchdog: ms(k.watchdog_ms),
        listen: if k.rolling {
            vec![ListenAddress::Tcp(([127, 0, 0, 1], 8080).into())]
        } else {
            Vec::new()
        },
        register: (k.drain_ms > 0).then(|| {
            Box::new(crate::config::RegisterConfig {
                address: "127.0.0.1:8080".into(),
                drain: ms(k.drain_ms),
                haproxy: None,
                etcd: None,
                file: None,
            })
        }),
        ..super::tests::cfg()
    }
}

fn knobs() -> impl Strategy<Value = Knobs> {
    (
        prop_oneof![
            Just(ReadyBy::Timer(0)),
            Just(ReadyBy::Timer(1000)),
            Just(ReadyBy::Notify),
            Just(ReadyBy::Probe(OnUnhealthy::Restart)),
            Just(ReadyBy::Probe(OnUnhealthy::None)),
        ],
        prop::sample::select(vec![0u64, 2000]),
        any::<bool>(),
        prop::sample::select(vec![
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ]),
        0u32..3,
        prop::sample::select(vec![0u64, 500]),
        any::<bool>(),
        prop::sample::select(vec![0u64, 1500]),
        prop::sample::select(vec![0u64, 700]),
    )
        .prop_map(
            |(
                ready,
                stop_timeout_ms,
                kill_group,
                restart,
                max_retries,
                backoff_ms,
                rolling,
                watchdog_ms,
                drain_ms,
            )| Knobs {
                ready,
                stop_timeout_ms,
                kill_group,
                restart,
                max_retries,
                backoff_ms,
                rolling,
                watchdog_ms,
                drain_ms,
            },
        )
}

/// What happens when the actor spawns the program.
#[derive(Debug, Clone, Copy)]
enum Spawn {
    /// It runs, and exits on its stop signal or ignores it.
    Runs { obeys_stop: bool },
    /// fork succeeds, exec fails: the child reports it and exits.
    ExecFails,
    /// fork (or the log pipes) fails: no process.
    Fails,
}

fn spawns() -> impl Strategy<Value = Vec<Spawn>> {
    prop::collection::vec(
        prop_oneof![
            6 => any::<bool>().prop_map(|obeys_stop| Spawn::Runs { obeys_stop }),
            1 => Just(Spawn::ExecFails),
            1 => Just(Spawn::Fails),
        ],
        1..8,
    )
}

/// One thing that happens to the process or its actor.
#[derive(Debug, Clone)]
enum Op {
    Start,
    Stop,
    Restart,
    Remove,
    /// A live process (the `which`-th) ends on its own.
    Exit {
        which: usize,
        end: ProcessEnd,
    },
    /// A process signalled to death ends.
    Reap,
    /// The health probe of the live process finishes.
    Probe {
        ok: bool,
    },
    /// The live process says something on the notify socket.
    Notify {
        ready: bool,
        watchdog: bool,
        trigger: bool,
        fork: bool,
    },
    /// Time passes; a deadline that has come fires.
    Wait(u64),
    /// Time jumps to the machine's deadline, which fires.
    Fire,
}

fn end() -> impl Strategy<Value = ProcessEnd> {
    prop_oneof![
        (0i32..3).prop_map(ProcessEnd::Exited),
        prop::sample::select(vec![9i32, 11, 15]).prop_map(ProcessEnd::Signaled),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Start),
        2 => Just(Op::Stop),
        2 => Just(Op::Restart),
        1 => Just(Op::Remove),
        3 => (any::<usize>(), end()).prop_map(|(which, end)| Op::Exit { which, end }),
        3 => Just(Op::Reap),
        3 => any::<bool>().prop_map(|ok| Op::Probe { ok }),
        3 => (any::<bool>(), any::<bool>(), prop::bool::weighted(0.1), prop::bool::weighted(0.2))
            .prop_map(|(ready, watchdog, trigger, fork)| Op::Notify { ready, watchdog, trigger, fork }),
        3 => (0u64..4000).prop_map(Op::Wait),
        3 => Just(Op::Fire),
    ]
}

/// A simulated process.
#[derive(Debug, Clone)]
struct Proc {
    pgid: Pid,
    obeys_stop: bool,
    exec_failed: bool,
    /// How it will end, once something made it end.
    doomed: Option<ProcessEnd>,
}

/// The machine, its actor's handles, and the processes of the world.
struct World {
    m: Machine,
    cfg: ProgramConfig,
    now: Instant,
    sample: f64,
    spawns: Vec<Spawn>,
    spawned: usize,
    next_pid: i32,
    live: BTreeMap<Pid, Proc>,
    /// The actor's exit handle (`exit`): its exit is fed as `Exited`.
    exit: Option<Pid>,
    /// The actor's `retired_exit`: its exit is fed as `RetiredExited`.
    retired: Option<Pid>,
    /// The actor's pending exec-failure report, for the process it spawned last.
    report: Option<Pid>,
    /// Processes whose handle the actor dropped on `MAINPID` (the forking
    /// parent): the reaper's orphan path collects them.
    released: BTreeSet<Pid>,
    /// When each process was first sent the stop signal.
    stop_sent: BTreeMap<Pid, Instant>,
    /// A spawn the actor does at its next turn, before anything else.
    deferred_spawn: bool,
    removed: bool,
    /// Every event fed, for the failure message.
    log: Vec<String>,
}

impl World {
    fn new(cfg: ProgramConfig, spawns: Vec<Spawn>, sample: f64) -> World {
        let now = Instant::now();
        World {
            m: Machine::new(now),
            cfg,
            now,
            sample,
            spawns,
            spawned: 0,
            next_pid: 100,
            live: BTreeMap::new(),
            exit: None,
            retired: None,
            report: None,
            released: BTreeSet::new(),
            stop_sent: BTreeMap::new(),
            deferred_spawn: false,
            removed: false,
            log: Vec::new(),
        }
    }

    fn fresh_pid(&mut self) -> Pid {
        self.next_pid += 1;
        Pid::from_raw(self.next_pid)
    }

    /// Feeds `event` and the events its effects bring, as the actor does.
    fn feed(&mut self, event: Event) -> Result<(), TestCaseError> {
        let mut queue = VecDeque::from([event]);
        let mut spawned = false;
        while let Some(event) = queue.pop_front() {
            let restarts = self.m.restarts;
            self.log.push(format!("{:?} in {:?}", event, self.m.state));
            let effects = self.m.step(&self.cfg, event, self.now, self.sample);
            self.log
                .push(format!("  -> {:?} {:?}", effects, self.m.state));
            prop_assert!(
                self.m.restarts >= restarts,
                "restarts went down from {restarts} to {}",
                self.m.restarts
            );
            for effect in effects {
                match effect {
                    // A second spawn in one go (the first failed, the
                    // backoff is zero) waits for the actor's next turn.
                    Effect::Spawn if spawned => self.deferred_spawn = true,
                    Effect::Spawn => {
                        spawned = true;
                        queue.push_back(self.spawn());
                    }
                    Effect::Signal { pid, signal, group } => self.signal(pid, signal, group)?,
                    Effect::Removed => self.removed = true,
                    Effect::Adopt(main) => {
                        if let Some(old) = self.exit.replace(main) {
                            if old != main && self.live.contains_key(&old) {
                                self.released.insert(old);
                            }
                        }
                    }
                    Effect::Retire => {
                        self.retired = self.exit.take();
                        self.report = None;
                    }
                    Effect::RolloutFailed(_) => self.exit = self.retired.take(),
                }
            }
        }
        self.check_owned()
    }

    fn spawn(&mut self) -> Event {
        let mut outcome = self.spawns[self.spawned % self.spawns.len()];
        self.spawned += 1;
        if matches!(outcome, Spawn::Fails) && self.cfg.backoff.initial.is_zero() {
            // The actor retries a spawn that fails at once with no delay
            // before it reads its mailbox again (see the report); keep to
            // failures that come through the child.
            outcome = Spawn::ExecFails;
        }
        let (obeys_stop, exec_failed) = match outcome {
            Spawn::Runs { obeys_stop } => (obeys_stop, false),
            Spawn::ExecFails => (true, true),
            Spawn::Fails => {
                return Event::SpawnFailed(spawn_error("fork: Resource temporarily unavailable"))
            }
        };
        let pid = self.fresh_pid();
        self.live.insert(
            pid,
            Proc {
                pgid: pid,
                obeys_stop,
                exec_failed,
                // A child that could not exec exits at once.
                doomed: exec_failed.then_some(ProcessEnd::Exited(127)),
            },
        );
        self.exit = Some(pid);
        self.report = exec_failed.then_some(pid);
        Event::Spawned(pid)
    }

    /// Delivers a signal as `Reaper::signal` does: to the group when it
    /// exists, else to the process.
    fn signal(&mut self, pid: Pid, signal: Signal, group: bool) -> Result<(), TestCaseError> {
        let targets: Vec<Pid> = if group && self.live.values().any(|p| p.pgid == pid) {
            self.live
                .iter()
                .filter(|(_, p)| p.pgid == pid)
                .map(|(q, _)| *q)
                .collect()
        } else if self.live.contains_key(&pid) {
            vec![pid]
        } else {
            Vec::new()
        };
        if signal == Signal::SIGKILL && self.live.contains_key(&pid) {
            // SIGKILL for a live process only once its stop timeout is over.
            if let Some(sent) = self.stop_sent.get(&pid) {
                prop_assert!(
                    self.now >= *sent + self.cfg.stop_timeout,
                    "SIGKILL to {pid} {:?} after its stop signal, before stop_timeout {:?}",
                    self.now - *sent,
                    self.cfg.stop_timeout
                );
            }
        }
        for target in targets {
            let Some(p) = self.live.get_mut(&target) else {
                continue;
            };
            if signal == Signal::SIGKILL {
                p.doomed = Some(ProcessEnd::Signaled(Signal::SIGKILL as i32));
            } else if signal == self.cfg.stop_signal {
                self.stop_sent.entry(target).or_insert(self.now);
                if p.obeys_stop && p.doomed.is_none() {
                    p.doomed = Some(ProcessEnd::Signaled(signal as i32));
                }
            }
        }
        Ok(())
    }

    /// Process `pid` ends; the reaper hands its status to whoever holds its handle.
    fn exited(&mut self, pid: Pid, end: ProcessEnd) -> Result<(), TestCaseError> {
        let Some(p) = self.live.remove(&pid) else {
            return Ok(());
        };
        let end = p.doomed.unwrap_or(end);
        self.stop_sent.remove(&pid);
        self.released.remove(&pid);
        if self.exit == Some(pid) {
            self.exit = None;
            let event = if self.report.take() == Some(pid) {
                Event::SpawnFailed(spawn_error("exec \"/bin/web\": No such file or directory"))
            } else {
                Event::Exited(end)
            };
            self.feed(event)
        } else if self.retired == Some(pid) {
            self.retired = None;
            self.feed(Event::RetiredExited(end))
        } else {
            Ok(())
        }
    }

    /// Ends one process that was signalled to death; false if there is none.
    fn reap_one(&mut self) -> Result<bool, TestCaseError> {
        let doomed = self
            .live
            .iter()
            .find(|(_, p)| p.doomed.is_some())
            .map(|(pid, _)| *pid);
        match doomed {
            Some(pid) => {
                self.exited(pid, ProcessEnd::Exited(0))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Fires the deadline if it has come, as the actor's timer does.
    fn timers(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..16 {
            match self.m.deadline(&self.cfg) {
                Some(due) if due <= self.now => self.feed(Event::Deadline)?,
                _ => break,
            }
        }
        Ok(())
    }

    /// The actor's turn begins with a deferred spawn.
    fn deferred(&mut self) -> Result<(), TestCaseError> {
        if std::mem::take(&mut self.deferred_spawn) {
            let event = self.spawn();
            self.feed(event)?;
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.deferred()?;
        match *op {
            Op::Start => self.feed(Event::Start),
            Op::Stop => self.feed(Event::Stop),
            Op::Restart => self.feed(Event::Restart),
            Op::Remove => self.feed(Event::Remove),
            Op::Exit { which, end } => {
                let Some(pid) = self
                    .live
                    .keys()
                    .nth(which % self.live.len().max(1))
                    .copied()
                else {
                    return Ok(());
                };
                self.exited(pid, end)
            }
            Op::Reap => self.reap_one().map(|_| ()),
            Op::Probe { ok } => {
                // Probes run while a process is starting or running (`sync_probing`).
                let (State::Starting { pid, .. } | State::Running { pid, .. }) = self.m.state
                else {
                    return Ok(());
                };
                if self.cfg.health.is_none() {
                    return Ok(());
                }
                let ok = ok && !self.live.get(&pid).is_some_and(|p| p.exec_failed);
                self.feed(Event::Probe {
                    pid,
                    ok,
                    message: if ok { "200" } else { "503" }.into(),
                })
            }
            Op::Notify {
                ready,
                watchdog,
                trigger,
                fork,
            } => {
                // Only the live main process is listened to, and only a
                // program that ran can speak.
                let Some(sender) = self.m.state.pid() else {
                    return Ok(());
                };
                let Some(p) = self.live.get(&sender).cloned() else {
                    return Ok(());
                };
                if p.exec_failed || p.doomed.is_some() {
                    return Ok(());
                }
                let main_pid = if fork {
                    let main = self.fresh_pid();
                    self.live.insert(
                        main,
                        Proc {
                            pgid: p.pgid,
                            doomed: None,
                            ..p
                        },
                    );
                    Some(main)
                } else {
                    None
                };
                self.feed(Event::Notify {
                    pid: sender,
                    message: NotifyMessage {
                        ready,
                        status: None,
                        main_pid,
                        watchdog,
                        watchdog_trigger: trigger,
                    },
                })
            }
            Op::Wait(ms) => {
                self.now += Duration::from_millis(ms);
                self.timers()
            }
            Op::Fire => match self.m.deadline(&self.cfg) {
                Some(due) => {
                    self.now = self.now.max(due);
                    self.feed(Event::Deadline)
                }
                None => Ok(()),
            },
        }
    }

    /// Property (a): every live process is the machine's current one or its
    /// retiring one (or was handed to the reaper on `MAINPID`), and the
    /// actor's handles agree with the machine; once the program is removed
    /// (the actor ends), every process left is on its way out.
    fn check_owned(&self) -> Result<(), TestCaseError> {
        let current = self.m.state.pid();
        let retiring = self.m.retiring.map(|r| r.pid);
        for (pid, p) in &self.live {
            if self.released.contains(pid) {
                continue;
            }
            if self.removed {
                prop_assert!(
                    p.doomed.is_some(),
                    "the program was removed while pid {pid} lives on, never to be killed: {p:?}\n{}",
                    self.log.join("\n")
                );
            } else {
                prop_assert!(
                    Some(*pid) == current || Some(*pid) == retiring,
                    "pid {pid} is alive but the machine forgot it ({:?}, retiring {:?})\n{}",
                    self.m.state,
                    self.m.retiring,
                    self.log.join("\n")
                );
            }
        }
        if !self.removed {
            prop_assert_eq!(
                self.exit,
                current,
                "exit handle vs state\n{}",
                self.log.join("\n")
            );
            prop_assert_eq!(
                self.retired,
                retiring,
                "retired handle vs retiring\n{}",
                self.log.join("\n")
            );
        }
        Ok(())
    }

    /// Property (c): after a stop request, the timers the machine asks for
    /// and the exits of the processes it signalled lead to `stopped`.
    fn stop_to_the_end(&mut self) -> Result<(), TestCaseError> {
        self.deferred()?;
        self.feed(Event::Stop)?;
        for _ in 0..64 {
            if self.reap_one()? {
                continue;
            }
            if let State::Stopping {
                since,
                draining,
                killed: false,
                ..
            } = self.m.state
            {
                // Draining, the timer is for the stop signal; then for SIGKILL.
                let wait = if draining {
                    self.cfg
                        .register
                        .as_ref()
                        .map_or(Duration::ZERO, |r| r.drain)
                } else {
                    self.cfg.stop_timeout
                };
                let due = self.m.deadline(&self.cfg);
                prop_assert!(
                    due.is_some_and(|d| d <= since + wait),
                    "stopping since {since:?} (draining: {draining}) without a timer for what is next: {due:?}"
                );
            }
            match self.m.deadline(&self.cfg) {
                Some(due) => {
                    self.now = self.now.max(due);
                    self.feed(Event::Deadline)?;
                }
                None => break,
            }
        }
        let owned: Vec<&Pid> = self
            .live
            .keys()
            .filter(|pid| !self.released.contains(pid))
            .collect();
        prop_assert!(
            self.m.state == State::Stopped && self.m.retiring.is_none() && owned.is_empty(),
            "a stop did not end in stopped: {:?}, retiring {:?}, alive {:?}\n{}",
            self.m.state,
            self.m.retiring,
            owned,
            self.log.join("\n")
        );
        prop_assert_eq!(self.m.stop_outcome(), Outcome::Done);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_process_is_forgotten_restarts_only_grow_and_a_stop_always_ends_stopped(
        knobs in knobs(),
        spawns in spawns(),
        sample in -1.0f64..=1.0,
        ops in prop::collection::vec(op(), 0..80),
    ) {
        let mut world = World::new(program(knobs), spawns, sample);
        for op in &ops {
            world.log.push(format!("# {op:?}"));
            world.apply(op)?;
            if world.removed {
                return Ok(());
            }
        }
        world.stop_to_the_end()?;
    }
}

/// A child whose exec failed, while it was being stopped: its exit (fed as
/// `SpawnFailed`, with the reason) ends the stop instead of being ignored,
/// which left the process `stopping` forever.
#[test]
fn an_exec_failure_while_stopping_ends_the_stop() {
    let cfg = program(Knobs {
        ready: ReadyBy::Timer(1000),
        stop_timeout_ms: 2000,
        kill_group: false,
        restart: RestartPolicy::Always,
        max_retries: 0,
        backoff_ms: 500,
        rolling: false,
        watchdog_ms: 0,
        drain_ms: 0,
    });
    let now = Instant::now();
    let pid = Pid::from_raw(4242);
    let mut m = Machine::new(now);
    m.step(&cfg, Event::Start, now, 0.0);
    m.step(&cfg, Event::Spawned(pid), now, 0.0);
    m.step(&cfg, Event::Stop, now, 0.0);
    assert_eq!(m.state.name(), "stopping");
    m.step(
        &cfg,
        Event::SpawnFailed(spawn_error("exec \"/bin/web\": No such file or directory")),
        now,
        0.0,
    );
    assert_eq!(m.state, State::Stopped);
    assert_eq!(m.stop_outcome(), Outcome::Done);
    assert_eq!(m.deadline(&cfg), None);
}

/// A program removed while the old process of a rolling restart drains: the
/// machine waits for that process (and sends its SIGKILL after
/// `stop_timeout`) before it reports `Removed`, which ends the actor and with
/// it every timer.
#[test]
fn removal_waits_for_the_draining_process_of_a_rolling_restart() {
    let cfg = program(Knobs {
        ready: ReadyBy::Timer(0),
        stop_timeout_ms: 2000,
        kill_group: false,
        restart: RestartPolicy::Always,
        max_retries: 0,
        backoff_ms: 500,
        rolling: true,
        watchdog_ms: 0,
        drain_ms: 0,
    });
    let now = Instant::now();
    let (old, new) = (Pid::from_raw(41), Pid::from_raw(42));
    let mut m = Machine::new(now);
    m.step(&cfg, Event::Start, now, 0.0);
    m.step(&cfg, Event::Spawned(old), now, 0.0);
    assert_eq!(
        m.step(&cfg, Event::Restart, now, 0.0),
        vec![Effect::Retire, Effect::Spawn]
    );
    m.step(&cfg, Event::Spawned(new), now, 0.0);
    assert!(
        m.retiring.is_some_and(|r| r.stop_sent.is_some()),
        "{:?}",
        m.retiring
    );
    m.step(&cfg, Event::Remove, now, 0.0);
    let effects = m.step(&cfg, Event::Exited(ProcessEnd::Exited(0)), now, 0.0);
    assert!(!effects.contains(&Effect::Removed), "{effects:?}");
    let due = m
        .deadline(&cfg)
        .expect("the draining process's SIGKILL is still due");
    assert_eq!(due, now + cfg.stop_timeout);
    assert_eq!(
        m.step(&cfg, Event::Deadline, due, 0.0),
        vec![Effect::Signal {
            pid: old,
            signal: Signal::SIGKILL,
            group: false
        }]
    );
    assert_eq!(
        m.step(
            &cfg,
            Event::RetiredExited(ProcessEnd::Signaled(9)),
            due,
            0.0
        ),
        vec![Effect::Removed]
    );
}
