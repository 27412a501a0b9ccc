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

/// Every process of one program in the config, in instance order; a process
/// missing from it has left the config (HAProxy `del server`).
pub type Members = std::sync::Arc<Vec<Member>>;

/// What a backend made of one process: `Ok`, or why not (shown as it is in
/// `status --json`'s `register` field and in the log).
pub type Applied = Vec<(String, Result<(), String>)>;
