//! Reload: the config file read again (on the blocking pool) and the
//! difference applied. Programs added start, removed ones stop, changed ones
//! are replaced, or replaced in place one process at a time when they keep
//! their `listen` sockets or are registered with load balancers;
//! an invalid file, or a layer above that cannot follow, changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::actor::Command;
use super::state::{self, Outcome, State};
use super::{after_burst, Origin, ProcessHandle, Refusal, Supervisor};
use crate::config::{self, Config};

/// A layer above that must be able to follow a new config before a reload
/// applies it (the `/metrics` server binds its new address). Two steps, so
/// that with several gates one refusing leaves every other as it was.
pub trait ReloadGate: Send {
    /// Readies what `new` needs (binds a new address), changing nothing yet;
    /// an error rejects the reload.
    fn prepare(&mut self, new: &Config) -> Result<(), String>;
    /// The reload applies: switch to what `prepare` readied.
    fn commit(&mut self);
    /// The reload is rejected after all: drop what `prepare` readied.
    fn abort(&mut self);
}

/// Who waits for a reload's outcome (`None`: SIGHUP, which only logs it).
pub(super) type Waiter = oneshot::Sender<Result<ReloadReport, Refusal>>;

/// What a reload did, by program name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Programs new in the file.
    pub added: Vec<String>,
    /// Programs gone from the file.
    pub removed: Vec<String>,
    /// Programs whose settings changed.
    pub changed: Vec<String>,
    /// Programs left as they were.
    pub unchanged: Vec<String>,
    /// Settings that take a restart of minder, in words.
    pub not_applied: Vec<String>,
}

impl Supervisor {
    /// Applies a load that reloads asked for and answers them; SIGHUP's
    /// failures go to the log since nobody else hears of them.
    pub(super) fn finish_reload(
        &mut self,
        loaded: config::LoadResult,
        waiters: Vec<Option<Waiter>>,
    ) {
        let reply = self.reload(loaded);
        if let Err(e) = &reply {
            if waiters.iter().any(Option::is_none) {
                tracing::error!("reload rejected: {e}");
            }
        }
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(reply.clone());
        }
    }

    /// Reloads, with the phase saying so around it (systemd sends
    /// `RELOADING=1` ... `READY=1`, `/metrics` counts it).
    fn reload(&mut self, loaded: config::LoadResult) -> Result<ReloadReport, Refusal> {
        self.phase.send_modify(|p| p.reloads_begun += 1);
        let reply = self.apply_reload(loaded);
        let config = Arc::clone(&self.config);
        let outcome = reply.as_ref().map(|_| ()).map_err(ToString::to_string);
        self.phase.send_modify(|p| {
            p.reloads_finished += 1;
            p.last_reload = Some(outcome);
            p.config = config;
        });
        reply
    }

    /// Re-reads the config file and applies the difference; an invalid file changes nothing.
    fn apply_reload(&mut self, loaded: config::LoadResult) -> Result<ReloadReport, Refusal> {
        let refuse = |why: String| Err(Refusal::Failed(format!("config not reloaded: {why}")));
        let new = match loaded {
            Ok(new) => new,
            Err(diagnostics) => {
                let lines: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
                return refuse(lines.join("; "));
            }
        };
        if !self.insecure_config {
            if let Err(e) = config::check_trusted(&new) {
                return refuse(e.to_string());
            }
        }
        // Before anything else changes: a layer above that cannot follow
        // (a `metrics` address in use) rejects the reload.
        if let Err(e) = pass_gates(&mut self.gates, &new) {
            return refuse(e);
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

        // Changed programs that serve on `listen` sockets and keep them, or
        // that are registered with load balancers (and keep their instances
        // and logs), are reconfigured in place, one process at a time.
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
        let topology = self.topology(Origin::Reload);
        let old: Vec<ProcessHandle> = old_of_changed.into_iter().map(|(h, _)| h).collect();
        tokio::spawn(async move {
            for handle in &old {
                handle.ended().await;
            }
            topology.start(to_start).await;
            after_burst();
        });

        tracing::info!(
            "reloaded: added {:?}, removed {:?}, changed {:?}, {} unchanged",
            diff.added,
            diff.removed,
            diff.changed,
            diff.unchanged.len()
        );
        Ok(ReloadReport {
            added: diff.added,
            removed: diff.removed,
            changed: diff.changed,
            unchanged: diff.unchanged,
            not_applied,
        })
    }

    /// Whether a reload can replace program `name` in place, one process at
    /// a time: it keeps its instances and its logs, has a process up to keep
    /// serving meanwhile, and either has `listen` sockets before and after
    /// and keeps them (each process replaced once its successor is ready),
    /// or is registered with load balancers before and after, without
    /// sockets (each process out, drained, stopped, started, in, then the next).
    fn rolls_in_place(&self, name: &str, new: &Config) -> bool {
        let (Some(old), Some(new)) = (self.config.program(name), new.program(name)) else {
            return false;
        };
        let keeps_sockets = self.listen.get(name).is_some_and(|set| set.serves(new));
        let up = self
            .processes
            .iter()
            .any(|h| h.program == name && matches!(h.status().state, State::Running { .. }));
        let one_at_a_time = if state::rolling(old) || state::rolling(new) {
            state::rolling(old) && state::rolling(new) && keeps_sockets
        } else {
            old.register.is_some() && new.register.is_some()
        };
        one_at_a_time && old.instances == new.instances && old.logs == new.logs && up
    }
}

/// Asks every gate to prepare for `new`, then commits them all; if one
/// refuses, those already prepared are aborted and nothing has changed.
fn pass_gates(gates: &mut [Box<dyn ReloadGate>], new: &Config) -> Result<(), String> {
    for i in 0..gates.len() {
        if let Err(e) = gates[i].prepare(new) {
            for prepared in &mut gates[..i] {
                prepared.abort();
            }
            return Err(e);
        }
    }
    for gate in gates {
        gate.commit();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What the gates were asked, in order.
    type Calls = Arc<Mutex<Vec<String>>>;

    /// A gate that records what it was asked, and refuses when told to.
    struct Recorder {
        name: &'static str,
        refuse: bool,
        calls: Calls,
    }

    impl ReloadGate for Recorder {
        fn prepare(&mut self, _new: &Config) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} prepare", self.name));
            if self.refuse {
                Err(format!("{} cannot follow", self.name))
            } else {
                Ok(())
            }
        }
        fn commit(&mut self) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} commit", self.name));
        }
        fn abort(&mut self) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{} abort", self.name));
        }
    }

    fn gates(refusing: Option<&'static str>) -> (Vec<Box<dyn ReloadGate>>, Calls) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let gates = ["metrics", "balancer", "third"]
            .into_iter()
            .map(|name| {
                Box::new(Recorder {
                    name,
                    refuse: Some(name) == refusing,
                    calls: Arc::clone(&calls),
                }) as Box<dyn ReloadGate>
            })
            .collect();
        (gates, calls)
    }

    fn config() -> Config {
        crate::config::parse_str(
            "[program.web]\ncommand = [\"/bin/true\"]\n",
            std::path::Path::new("/etc/minder/minder.toml"),
            &crate::config::Defaults::for_current_user(),
        )
        .expect("a valid config")
    }

    #[test]
    fn every_gate_commits_once_all_have_prepared() {
        let (mut gates, calls) = gates(None);
        assert_eq!(pass_gates(&mut gates, &config()), Ok(()));
        assert_eq!(
            *calls.lock().unwrap(),
            [
                "metrics prepare",
                "balancer prepare",
                "third prepare",
                "metrics commit",
                "balancer commit",
                "third commit"
            ]
        );
    }

    #[test]
    fn a_refusing_gate_aborts_those_prepared_and_commits_none() {
        let (mut gates, calls) = gates(Some("balancer"));
        assert_eq!(
            pass_gates(&mut gates, &config()),
            Err("balancer cannot follow".to_string())
        );
        assert_eq!(
            *calls.lock().unwrap(),
            ["metrics prepare", "balancer prepare", "metrics abort"]
        );
    }
}
