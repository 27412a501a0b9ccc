//! Dependency order: starts wait for their `depends_on` to be running; stops
//! wait for the processes that depend on them to be stopped.

use std::collections::{HashMap, HashSet};

use tokio::sync::watch;

use super::actor::{Command, ProcessHandle};
use super::events::Origin;
use super::state::{Failure, Outcome, State};
use super::Answer;
use crate::config::Config;

/// Per-program result channel: `None` while pending.
type Done = watch::Receiver<Option<Result<(), Failure>>>;

/// The sending half of [`Done`].
type DoneSender = watch::Sender<Option<Result<(), Failure>>>;

/// A snapshot of who depends on whom, with the handles to reach them.
pub struct Topology {
    /// Program -> the programs it depends on.
    depends_on: HashMap<String, Vec<String>>,
    /// Program -> its processes, in instance order.
    processes: HashMap<String, Vec<ProcessHandle>>,
    /// Who asked: the cause the state changes give.
    origin: Origin,
}

impl Topology {
    /// Captures the dependencies of `config` and the current handles.
    pub fn new(config: &Config, handles: &[ProcessHandle], origin: Origin) -> Topology {
        let depends_on = config
            .programs
            .iter()
            .map(|p| (p.name.clone(), p.depends_on.clone()))
            .collect();
        let mut processes: HashMap<String, Vec<ProcessHandle>> = HashMap::new();
        for h in handles {
            processes
                .entry(h.program.clone())
                .or_default()
                .push(h.clone());
        }
        Topology {
            depends_on,
            processes,
            origin,
        }
    }

    fn deps(&self, program: &str) -> &[String] {
        self.depends_on
            .get(program)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Starts `targets` and, first, every program they depend on (transitively).
    /// Each result says whether the target reached `running`.
    pub async fn start(self, targets: Vec<ProcessHandle>) -> Vec<Answer> {
        let target_programs: HashSet<&str> = targets.iter().map(|h| h.program.as_str()).collect();
        // Everything the targets need, transitively.
        let mut needed: Vec<String> = target_programs.iter().map(|p| p.to_string()).collect();
        let mut seen: HashSet<String> = needed.iter().cloned().collect();
        let mut i = 0;
        while i < needed.len() {
            for dep in self.deps(&needed[i]).to_vec() {
                if seen.insert(dep.clone()) {
                    needed.push(dep);
                }
            }
            i += 1;
        }
        let (mut senders, receivers) = done_channels(&needed);

        let mut tasks = Vec::new();
        for program in &needed {
            let selected: Vec<ProcessHandle> = if target_programs.contains(program.as_str()) {
                targets
                    .iter()
                    .filter(|h| &h.program == program)
                    .cloned()
                    .collect()
            } else {
                self.processes.get(program).cloned().unwrap_or_default()
            };
            let deps: Vec<(String, Done, Vec<ProcessHandle>)> = self
                .deps(program)
                .iter()
                .map(|d| {
                    (
                        d.clone(),
                        receivers[d].clone(),
                        self.processes.get(d).cloned().unwrap_or_default(),
                    )
                })
                .collect();
            let done = senders
                .remove(program)
                .expect("a sender per needed program");
            tasks.push(tokio::spawn(start_program(
                selected,
                deps,
                done,
                self.origin,
            )));
        }
        let mut by_name = results_by_name(tasks).await;
        targets
            .iter()
            .map(|h| {
                by_name
                    .remove(&h.name)
                    .unwrap_or_else(|| Answer::new(&h.name, Outcome::Failed(Failure::Abandoned)))
            })
            .collect()
    }

    /// Stops `targets`, each program only after the targeted programs that depend on it.
    pub async fn stop(self, targets: Vec<ProcessHandle>) -> Vec<Answer> {
        let programs: Vec<String> = {
            let mut seen = HashSet::new();
            targets
                .iter()
                .filter(|h| seen.insert(h.program.clone()))
                .map(|h| h.program.clone())
                .collect()
        };
        let (mut senders, receivers) = done_channels(&programs);
        let origin = self.origin;
        let mut tasks = Vec::new();
        for program in &programs {
            let dependants: Vec<Done> = programs
                .iter()
                .filter(|other| self.deps(other).contains(program))
                .map(|other| receivers[other].clone())
                .collect();
            let selected: Vec<ProcessHandle> = targets
                .iter()
                .filter(|h| &h.program == program)
                .cloned()
                .collect();
            let done = senders.remove(program).expect("a sender per program");
            tasks.push(tokio::spawn(async move {
                for mut rx in dependants {
                    // Whatever their outcome: they have been dealt with.
                    let _ = rx.wait_for(Option::is_some).await;
                }
                let results =
                    request_all(selected, |_, reply| Command::Stop { origin, reply }).await;
                let _ = done.send(Some(Ok(())));
                results
            }));
        }
        let mut by_name = results_by_name(tasks).await;
        targets
            .iter()
            .filter_map(|h| by_name.remove(&h.name))
            .collect()
    }
}

/// One "done" channel per program: a sender for the task that handles it, a
/// receiver for the tasks that wait for it.
fn done_channels(programs: &[String]) -> (HashMap<String, DoneSender>, HashMap<String, Done>) {
    programs
        .iter()
        .map(|program| {
            let (tx, rx) = watch::channel(None);
            ((program.clone(), tx), (program.clone(), rx))
        })
        .unzip()
}

/// Every per-program task's results, by process name.
async fn results_by_name(
    tasks: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
) -> HashMap<String, Answer> {
    let mut by_name = HashMap::new();
    for task in tasks {
        if let Ok(results) = task.await {
            by_name.extend(results.into_iter().map(|r| (r.name.clone(), r)));
        }
    }
    by_name
}

/// Waits for every dependency, then starts `selected` and reports on `done`.
async fn start_program(
    selected: Vec<ProcessHandle>,
    deps: Vec<(String, Done, Vec<ProcessHandle>)>,
    done: DoneSender,
    origin: Origin,
) -> Vec<Answer> {
    // Taken now, so a `ctl stop` while we wait for dependencies cancels this start.
    let epochs: HashMap<String, u64> = selected
        .iter()
        .map(|h| (h.name.clone(), h.status().stop_epoch))
        .collect();
    for (dep, rx, handles) in deps {
        if let Err(why) = wait_dependency(rx, &handles).await {
            let failure = Failure::Dependency {
                program: dep,
                why: Box::new(why),
            };
            let _ = done.send(Some(Err(failure.clone())));
            return selected
                .iter()
                .map(|h| Answer::new(&h.name, Outcome::Failed(failure.clone())))
                .collect();
        }
    }
    let results = request_all(selected, |h, reply| Command::Start {
        unless_stopped_since: epochs.get(&h.name).copied(),
        origin,
        reply,
    })
    .await;
    let verdict = match results.iter().find_map(|r| match &r.outcome {
        Outcome::Failed(why) => Some(why.clone()),
        _ => None,
    }) {
        Some(why) => Err(why),
        None => Ok(()),
    };
    let _ = done.send(Some(verdict));
    results
}

/// Ready once the dependency's start succeeded; if it failed but is retrying
/// (`backoff`), keep waiting until it runs or gives up.
async fn wait_dependency(mut rx: Done, handles: &[ProcessHandle]) -> Result<(), Failure> {
    let first = match rx.wait_for(Option::is_some).await {
        Ok(result) => result.clone().unwrap_or(Ok(())),
        Err(_) => return Err(Failure::Abandoned),
    };
    if first.is_ok() {
        return Ok(());
    }
    for handle in handles {
        let mut watch = handle.watch();
        loop {
            let status = watch.borrow_and_update().clone();
            match status.state {
                State::Running { .. } => break,
                State::Fatal | State::Exited | State::Stopped | State::Stopping { .. } => {
                    return Err(Failure::DependencyDown {
                        process: status.name,
                        state: status.state.name(),
                        why: status.description,
                    });
                }
                State::Spawning | State::Starting { .. } | State::Backoff { .. } => {}
            }
            if watch.changed().await.is_err() {
                return Err(handle.gone());
            }
        }
    }
    Ok(())
}

/// Sends one command per handle, then waits for every outcome; the processes
/// act concurrently, and no task per handle is needed to wait for them.
pub(crate) async fn request_all(
    handles: Vec<ProcessHandle>,
    make: impl Fn(&ProcessHandle, Option<tokio::sync::oneshot::Sender<Outcome>>) -> Command,
) -> Vec<Answer> {
    let mut pending = Vec::with_capacity(handles.len());
    for h in handles {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = h.send(make(&h, Some(tx)));
        pending.push((h, sent, rx));
    }
    let mut results = Vec::with_capacity(pending.len());
    for (h, sent, rx) in pending {
        let outcome = match sent {
            Err(e) => Outcome::Failed(e),
            Ok(()) => rx.await.unwrap_or_else(|_| Outcome::Failed(h.gone())),
        };
        results.push(Answer::new(&h.name, outcome));
    }
    results
}
