//! What the supervisor tells the layers above it, as values.
//!
//! The supervisor knows nothing of who listens: `ctl events`, hooks, systemd
//! and `/metrics` subscribe to these from `daemon.rs`, and each makes its
//! own text (a JSON event, a hook's variables, `STATUS=`, a metric label).
//! Two channels, because they are used differently:
//!
//! - [`Transition`]s, one per state or health change of a process, on a
//!   broadcast channel: sending never waits, a reader that falls behind
//!   loses the oldest and is told how many.
//! - The [`Phase`] of the supervisor itself (the config in force, autostart
//!   done, reloads, shutdown) on a watch channel: a reader always sees the
//!   latest, and counters let it tell that something happened in between.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use nix::unistd::Pid;

use super::state::{Health, State, Why};
use crate::config::Config;

/// One change of one process.
#[derive(Debug, Clone)]
pub struct Transition {
    /// When it happened.
    pub at: SystemTime,
    /// Process name (`web` or `web:0`).
    pub process: String,
    /// Program name.
    pub program: String,
    /// The main process after the change (or the one that just ended).
    pub pid: Option<Pid>,
    /// What changed.
    pub change: Change,
    /// Why.
    pub cause: Cause,
}

/// A change of state or of health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The life-cycle state changed.
    State {
        /// Before.
        from: State,
        /// After.
        to: State,
    },
    /// The live process became healthy or unhealthy.
    Health {
        /// Before.
        from: Health,
        /// After.
        to: Health,
    },
}

impl Change {
    /// The names SPEC §3 gives the two sides (`running`, `unhealthy`, ...).
    pub fn names(&self) -> (&'static str, &'static str) {
        match self {
            Change::State { from, to } => (from.name(), to.name()),
            Change::Health { from, to } => (from.name(), to.name()),
        }
    }
}

/// Why a process changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Someone asked for it.
    Requested {
        /// Who.
        by: Origin,
        /// What.
        action: Action,
    },
    /// The process did it, or minder's verdict on it (an exit, a probe, the
    /// watchdog, a failed spawn).
    Process(Why),
}

/// Who asks a process to start or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `autostart` when the daemon starts.
    Autostart,
    /// A `minder ctl` request.
    Request,
    /// A config reload.
    Reload,
    /// The daemon shutting down.
    Shutdown,
}

/// What was asked of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start it.
    Start,
    /// Stop it.
    Stop,
    /// Stop it, then start it (rolling when it has `listen` sockets).
    Restart,
    /// Stop it for good: its program left the config.
    Remove,
}

impl fmt::Display for Cause {
    /// As `ctl events` gives the reason: `ctl restart`, `reload`, `exited with code 1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Requested { by, action } => match by {
                Origin::Autostart => f.write_str("autostart"),
                Origin::Request => write!(f, "ctl {}", action.name()),
                Origin::Reload => f.write_str("reload"),
                Origin::Shutdown => f.write_str("shutdown"),
            },
            Cause::Process(why) => write!(f, "{why}"),
        }
    }
}

impl Action {
    /// The `ctl` command that asks for it.
    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Remove => "remove",
        }
    }
}

/// Where the supervisor itself is; published on a watch channel.
#[derive(Debug, Clone)]
pub struct Phase {
    /// The config in force.
    pub config: Arc<Config>,
    /// Every autostart program has had its start answered (running, or failed).
    pub autostarted: bool,
    /// Reloads begun so far; equal to `reloads_finished` when none is in progress.
    pub reloads_begun: u64,
    /// Reloads finished (applied or rejected) so far.
    pub reloads_finished: u64,
    /// How the last finished reload went: `Err` with why it was rejected.
    pub last_reload: Option<Result<(), String>>,
    /// Shutdown has begun.
    pub stopping: bool,
}

impl Phase {
    /// A supervisor that has just started with `config`.
    pub fn new(config: Arc<Config>) -> Phase {
        Phase {
            config,
            autostarted: false,
            reloads_begun: 0,
            reloads_finished: 0,
            last_reload: None,
            stopping: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessEnd;

    #[test]
    fn a_cause_reads_as_the_reason_of_ctl_events() {
        let asked = |by, action| Cause::Requested { by, action }.to_string();
        assert_eq!(asked(Origin::Request, Action::Restart), "ctl restart");
        assert_eq!(asked(Origin::Request, Action::Stop), "ctl stop");
        assert_eq!(asked(Origin::Autostart, Action::Start), "autostart");
        assert_eq!(asked(Origin::Reload, Action::Remove), "reload");
        assert_eq!(asked(Origin::Shutdown, Action::Stop), "shutdown");
        let ended = Cause::Process(Why::Ended(ProcessEnd::Exited(3)));
        assert_eq!(ended.to_string(), "exited with code 3");
    }

    #[test]
    fn a_change_is_named_as_spec_names_states_and_health() {
        let change = Change::State {
            from: State::Stopped,
            to: State::Fatal,
        };
        assert_eq!(change.names(), ("stopped", "fatal"));
        let change = Change::Health {
            from: Health::Healthy,
            to: Health::Unhealthy,
        };
        assert_eq!(change.names(), ("healthy", "unhealthy"));
    }
}
