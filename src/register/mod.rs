//! Telling load balancers which processes may take traffic (SPEC §5.2).
//!
//! A layer above the supervisor: it follows the transitions and the phase,
//! and knows nothing the supervisor does not publish. A process is **in**
//! exactly while it is `running` and its health is `healthy` or `none`.
//! Each program with `[register]` has one worker per backend (HAProxy's
//! runtime API, etcd, an upstream file) that is handed the latest
//! [`Members`] of its program on a watch channel (latest state wins: a slow
//! or absent balancer never holds anything up) and brings its balancer to
//! match, retrying with backoff until it does.

pub mod etcd;
pub mod file;
pub mod haproxy;

use std::time::SystemTime;

use crate::config::Registration;

/// Where one process stands with the balancers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Running and healthy (or unchecked): takes traffic.
    In,
    /// Being stopped on request: finishes what it has, gets nothing new
    /// (HAProxy `state drain`; gone from etcd and the file).
    Draining,
    /// Takes no traffic (HAProxy `state maint`; gone from etcd and the file).
    Out,
}

impl Standing {
    /// As `ctl events` and `/metrics` show it.
    pub fn name(self) -> &'static str {
        match self {
            Standing::In => "in",
            Standing::Draining => "draining",
            Standing::Out => "out",
        }
    }
}

/// One process of a program, as its backends are to show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Names and address, from the config.
    pub registration: Registration,
    /// In, draining or out.
    pub standing: Standing,
    /// The main process, while there is one.
    pub pid: Option<u32>,
    /// When the current process was started.
    pub since: Option<SystemTime>,
}

impl Member {
    /// The object etcd stores and the JSON upstream file lists (SPEC §5.2):
    /// `{"name","program","instance","host","address","pid","since"}`,
    /// `since` in RFC 3339 (UTC, seconds).
    pub fn record(&self) -> serde_json::Value {
        let r = &self.registration;
        serde_json::json!({
            "name": r.name,
            "program": r.program,
            "instance": r.instance,
            "host": r.host,
            "address": r.address,
            "pid": self.pid,
            "since": self.since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        })
    }
}

/// Every process of one program in the config, in instance order; a process
/// missing from it has left the config (HAProxy `del server`).
pub type Members = std::sync::Arc<Vec<Member>>;

/// What a backend made of one process: `Ok`, or why not (shown as it is in
/// `status --json`'s `register` field and in the log).
pub type Applied = Vec<(String, Result<(), String>)>;

mod follow;
mod worker;

pub use follow::{follow, Registrar};
pub use worker::Backend;

/// A change of a process's standing, for `ctl events`.
#[derive(Debug, Clone)]
pub struct StandingChange {
    /// When it was decided.
    pub at: SystemTime,
    /// Process name.
    pub process: String,
    /// Program name.
    pub program: String,
    /// Before.
    pub from: Standing,
    /// After.
    pub to: Standing,
    /// The supervisor's reason for the process's change (`ctl stop`,
    /// `unhealthy: ...`, `exited with code 1`).
    pub reason: String,
    /// The main process, if there is one.
    pub pid: Option<u32>,
}

/// What the balancers show of one process, for `status` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessBoard {
    /// Program name.
    pub program: String,
    /// In, draining or out.
    pub standing: Standing,
    /// Per backend, in config order: `Ok` or the last error.
    pub backends: Vec<(Backend, Result<(), String>)>,
}

/// Counts per program and backend, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendCounts {
    /// Operations (applies, keep-alives, reloads) that failed.
    pub errors: u64,
    /// The last one failed.
    pub failing: bool,
}

/// The registration state of every registered process, shared with the
/// layers that show it (`status`, `/metrics`).
#[derive(Debug, Default)]
pub struct Board {
    processes: std::sync::Mutex<std::collections::BTreeMap<String, ProcessBoard>>,
    backends: std::sync::Mutex<std::collections::BTreeMap<(String, Backend), BackendCounts>>,
    /// The last error logged for a process no longer on the board (its
    /// server still being deleted), so each is logged once, not per retry.
    leftovers: std::sync::Mutex<std::collections::HashMap<(String, Backend), String>>,
}

impl Board {
    /// What the balancers show of `process`; `None` when its program is not registered.
    pub fn process(&self, process: &str) -> Option<ProcessBoard> {
        lock(&self.processes).get(process).cloned()
    }

    /// Every registered process, by name.
    pub fn processes(&self) -> Vec<(String, ProcessBoard)> {
        lock(&self.processes)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Counts per (program, backend).
    pub fn backends(&self) -> Vec<((String, Backend), BackendCounts)> {
        lock(&self.backends)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn set_standing(&self, process: &str, program: &str, standing: Standing, backends: &[Backend]) {
        let mut processes = lock(&self.processes);
        let entry = processes
            .entry(process.to_string())
            .or_insert_with(|| ProcessBoard {
                program: program.to_string(),
                standing,
                backends: backends.iter().map(|b| (*b, Ok(()))).collect(),
            });
        entry.standing = standing;
        if entry.program != program
            || entry
                .backends
                .iter()
                .map(|(b, _)| *b)
                .ne(backends.iter().copied())
        {
            entry.program = program.to_string();
            entry.backends = backends.iter().map(|b| (*b, Ok(()))).collect();
        }
    }

    fn forget(&self, process: &str) {
        lock(&self.processes).remove(process);
    }

    fn forget_program(&self, program: &str) {
        lock(&self.processes).retain(|_, p| p.program != program);
        lock(&self.backends).retain(|(p, _), _| p != program);
    }

    /// Records what `backend` made of each process; returns whether
    /// anything failed. Logs a result only when it differs from the last.
    fn record(&self, program: &str, backend: Backend, applied: &Applied) -> bool {
        let mut failed = false;
        let mut processes = lock(&self.processes);
        for (name, result) in applied {
            failed |= result.is_err();
            let Some(entry) = processes.get_mut(name) else {
                let mut leftovers = lock(&self.leftovers);
                let key = (name.clone(), backend);
                match result {
                    Err(e) if leftovers.get(&key) != Some(e) => {
                        tracing::warn!(process = %name, "{} registration: {e}", backend.name());
                        leftovers.insert(key, e.clone());
                    }
                    Err(_) => {}
                    Ok(()) => {
                        leftovers.remove(&key);
                    }
                }
                continue;
            };
            if let Some((_, last)) = entry.backends.iter_mut().find(|(b, _)| *b == backend) {
                if last != result {
                    match result {
                        Ok(()) => {
                            tracing::info!(process = %name, "{} registration: ok", backend.name())
                        }
                        Err(e) => {
                            tracing::warn!(process = %name, "{} registration: {e}", backend.name())
                        }
                    }
                    *last = result.clone();
                }
            }
        }
        drop(processes);
        let mut backends = lock(&self.backends);
        let counts = backends.entry((program.to_string(), backend)).or_default();
        if failed {
            counts.errors += 1;
        }
        if !applied.is_empty() {
            counts.failing = failed;
        }
        failed
    }
}

/// A poisoned lock only means a panic elsewhere; the map is still whole.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_board_keeps_the_last_result_per_backend_and_counts_failures() {
        let board = Board::default();
        board.set_standing(
            "web:0",
            "web",
            Standing::In,
            &[Backend::Haproxy, Backend::Etcd],
        );
        let failed = vec![(
            "web:0".to_string(),
            Err("etcd http://e:2379: connection refused".to_string()),
        )];
        assert!(board.record("web", Backend::Etcd, &failed));
        assert!(board.record("web", Backend::Etcd, &failed));
        let p = board.process("web:0").unwrap();
        assert_eq!(p.standing, Standing::In);
        assert_eq!(
            p.backends,
            vec![
                (Backend::Haproxy, Ok(())),
                (
                    Backend::Etcd,
                    Err("etcd http://e:2379: connection refused".to_string())
                ),
            ]
        );
        let counts = board.backends();
        assert_eq!(counts[0].0, ("web".to_string(), Backend::Etcd));
        assert_eq!(
            counts[0].1,
            BackendCounts {
                errors: 2,
                failing: true
            }
        );

        // Back: ok again; an empty result (a keep-alive with nothing to say) changes nothing.
        assert!(!board.record("web", Backend::Etcd, &vec![("web:0".to_string(), Ok(()))]));
        assert!(!board.record("web", Backend::Etcd, &Vec::new()));
        assert_eq!(
            board.process("web:0").unwrap().backends[1],
            (Backend::Etcd, Ok(()))
        );
        assert_eq!(
            board.backends()[0].1,
            BackendCounts {
                errors: 2,
                failing: false
            }
        );

        board.forget_program("web");
        assert!(board.process("web:0").is_none() && board.backends().is_empty());
    }
}
