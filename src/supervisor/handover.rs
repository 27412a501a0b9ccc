//! `ctl reexec` from the supervisor's side: what it hands to a new image,
//! and what it takes back from an old one. The state format and the exec
//! itself belong to `crate::reexec`, which `daemon.rs` plugs in as an
//! [`Exec`]: the supervisor only gathers its processes, sockets and pipes.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::state::Machine;
use super::{ProcessHandle, ProcessStatus, Refusal, Supervisor};
use crate::config::{self, Config};
use crate::logs::SavedPipes;

/// Replaces the running image with `binary`, handing it `Handover`; returns
/// only if that failed, with why. Nothing has changed then.
pub type Exec = Box<dyn FnMut(&Path, Handover<'_>) -> String + Send>;

/// Everything a new image needs from the supervisor to carry on.
#[derive(Debug)]
pub struct Handover<'a> {
    /// The config in force.
    pub config: &'a Config,
    /// Every process, in config order.
    pub processes: Vec<ProcessStatus>,
    /// Each program's bound `listen` sockets.
    pub listen: Vec<(String, Vec<RawFd>)>,
    /// Both ends of every log pipe, by process.
    pub logs: Vec<SavedPipes>,
}

/// What an old image handed over, as the supervisor takes it back.
#[derive(Debug, Default)]
pub struct Resume {
    /// Each process's machine as it was, by process name.
    pub machines: HashMap<String, Machine>,
    /// Each program's bound `listen` sockets.
    pub listen: Vec<(String, Vec<RawFd>)>,
}

impl Supervisor {
    /// Hands everything over to `binary` (SPEC `ctl reexec`), which was
    /// checked against `checked`. Returns only if that could not happen,
    /// after replying why; nothing has changed then.
    pub(super) fn reexec(
        &mut self,
        binary: PathBuf,
        checked: &Arc<Config>,
        reply: oneshot::Sender<Refusal>,
    ) {
        let refuse = |reply: oneshot::Sender<Refusal>, why: String| {
            tracing::warn!("not re-executing: {why}");
            let _ = reply.send(Refusal::Failed(format!("not re-executing: {why}")));
        };
        if !Arc::ptr_eq(checked, &self.config) {
            return refuse(
                reply,
                "the config was reloaded while the new image was checked: try again".into(),
            );
        }
        // The new image checks the files again as it starts; refuse now rather
        // than have it exit and leave every child without its supervisor.
        if !self.insecure_config {
            if let Err(e) = config::check_trusted(&self.config) {
                return refuse(reply, e.to_string());
            }
        }
        if self
            .draining
            .iter()
            .any(|h| h.watch().has_changed().is_ok())
        {
            return refuse(
                reply,
                "programs removed by a reload are still stopping: try again".into(),
            );
        }
        let Some(exec) = self.exec.as_mut() else {
            return refuse(reply, "this daemon cannot re-execute itself".into());
        };
        let listen: Vec<(String, Vec<RawFd>)> = self
            .listen
            .iter()
            .map(|(program, set)| (program.clone(), set.bound_fds()))
            .filter(|(_, fds)| !fds.is_empty())
            .collect();
        let logs: Vec<SavedPipes> = self
            .processes
            .iter()
            .filter_map(|h| h.status().logs.saved_pipes(&h.name))
            .collect();
        tracing::info!(
            "re-executing {} with {} processes",
            binary.display(),
            self.processes.len()
        );
        // No task runs while this one does, so no new burst starts: wait for
        // those on the blocking pool to have written what they read. What is
        // still in the pipes is read by the new image.
        if !crate::logs::quiesce(Duration::from_secs(2)) {
            return refuse(
                reply,
                "log files are not being written fast enough: try again".into(),
            );
        }
        let handover = Handover {
            config: &self.config,
            processes: self.processes.iter().map(ProcessHandle::status).collect(),
            listen,
            logs,
        };
        let why = exec(&binary, handover);
        refuse(reply, why);
    }
}
