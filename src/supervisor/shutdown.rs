//! Shutdown: every process stopped in reverse dependency order within
//! `shutdown_timeout`, then SIGKILL for what is left, then the logs written
//! out. Status, snapshots and pings are still answered meanwhile.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::actor::Command;
use super::{Input, Origin, ProcessHandle, ProcessStatus, Refusal, Supervisor};
use crate::logs::LogRequest;

impl Supervisor {
    /// Stops everything in reverse dependency order within `shutdown_timeout`,
    /// then SIGKILLs what is left. A second SIGTERM/SIGINT kills at once.
    pub(super) async fn shutdown(&mut self, inputs: &mut mpsc::Receiver<Input>) {
        tracing::info!("shutting down: stopping {} processes", self.processes.len());
        let everything: Vec<ProcessHandle> = self
            .processes
            .iter()
            .chain(&self.draining)
            .cloned()
            .collect();
        let stop = self.topology(Origin::Shutdown).stop(self.processes.clone());
        tokio::pin!(stop);
        let deadline = tokio::time::sleep(self.config.supervisor.shutdown_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = &mut deadline => {
                    tracing::warn!("shutdown_timeout reached: killing what is left");
                    break;
                }
                input = inputs.recv() => match input {
                    Some(Input::Terminate) => {
                        tracing::warn!("second termination signal: killing everything");
                        break;
                    }
                    Some(input) => refuse_while_stopping(input, &self.processes, |names| self.statuses(names)),
                    None => {}
                },
            }
        }
        for handle in &everything {
            let _ = handle.send(Command::Kill);
        }
        // SIGKILL cannot be ignored; this bound only covers processes stuck in the kernel.
        let gone = async {
            for handle in &everything {
                let mut watch = handle.watch();
                while watch.borrow().state.pid().is_some() {
                    if watch.changed().await.is_err() {
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), gone)
            .await
            .is_err()
        {
            tracing::error!("some processes did not die after SIGKILL");
        }
        // Every child is gone: write out what their pipes still hold.
        let flushed = async {
            for handle in &everything {
                let (tx, rx) = oneshot::channel();
                if handle
                    .send(Command::Logs(LogRequest::Flush { reply: tx }))
                    .is_ok()
                {
                    let _ = rx.await;
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), flushed)
            .await
            .is_err()
        {
            tracing::warn!("log files not fully written out within 5s");
        }
        tracing::info!("all processes stopped");
    }
}

/// What shutdown answers: status, snapshots and pings as usual (systemd and
/// `/metrics` keep working), everything else refused.
fn refuse_while_stopping(
    input: Input,
    processes: &[ProcessHandle],
    statuses: impl Fn(&[String]) -> Result<Vec<ProcessStatus>, Refusal>,
) {
    match input {
        Input::Status { names, view } => view.show(statuses(&names)),
        Input::Snapshot(reply) => {
            let _ = reply.send(processes.to_vec());
        }
        Input::Ping(reply) => {
            let _ = reply.send(());
        }
        Input::Act { reply, .. } => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        Input::Reload(Some(reply)) => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        Input::Reexec { reply, .. } => {
            let _ = reply.send(Refusal::ShuttingDown);
        }
        Input::Tail { reply, .. } => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        Input::Subscribe { reply, .. } => {
            let _ = reply.send(Err(Refusal::ShuttingDown));
        }
        // Dropped: the client hears that minder is shutting down.
        Input::Shutdown(_) | Input::Reload(None) | Input::ReopenLogs | Input::Terminate => {}
    }
}
