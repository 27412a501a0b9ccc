//! From the wire to the supervisor and back: each [`Request`] becomes a
//! typed [`Input`], and what the supervisor answers becomes a [`Reply`].
//! The supervisor never sees a wire type, and words (`no such process`,
//! `ctl stop`) are made here or in the types' `Display`.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::protocol::{
    ActionReply, ActionResult, ErrorKind, EventsStart, PidReply, ReloadReply, Reply, Request,
};
use super::status;
use crate::logs::Stream;
use crate::process::Reaper;
use crate::register::{Board, StandingChange};
use crate::supervisor::state::Outcome;
use crate::supervisor::{
    Act, Answer, Input, Phase, ProcessStatus, Refusal, ReloadReport, StatusView, Subscription,
    TailStart,
};

/// What the control server needs from the daemon.
#[derive(Clone)]
pub struct Shared {
    /// The supervisor's loop.
    pub inputs: mpsc::Sender<Input>,
    /// The config in force (what `reexec` is checked against).
    pub phase: watch::Receiver<Phase>,
    /// Runs `reexec`'s check of the new binary.
    pub reaper: Arc<Reaper>,
    /// The binary this daemon was started from (what `reexec` runs by default).
    pub self_exe: PathBuf,
    /// What the load balancers show of each registered process.
    pub board: Arc<Board>,
    /// Changes of the processes' standing with the load balancers (`events`).
    pub standing: broadcast::Sender<Arc<StandingChange>>,
}

/// Answers a request that has a single reply (not `tail`, not `events`).
pub async fn answer(request: Request, shared: &Shared) -> Reply {
    answer_or_refuse(request, shared)
        .await
        .unwrap_or_else(|reply| reply)
}

async fn answer_or_refuse(request: Request, shared: &Shared) -> Result<Reply, Reply> {
    let act = |action, names, wait| {
        ask(&shared.inputs, move |reply| Input::Act {
            action,
            names,
            wait,
            reply,
        })
    };
    match request {
        Request::Status { names } => {
            // Rendered in the supervisor's step (see `StatusView`).
            let board = Arc::clone(&shared.board);
            let render =
                move |statuses: Vec<ProcessStatus>| Reply::ok(status::reply(&statuses, &board));
            Ok(ask(&shared.inputs, |reply| view(names, reply, render)).await??)
        }
        Request::Start { names, wait } => Ok(answers(act(Act::Start, names, wait).await??)),
        Request::Stop { names, wait } => Ok(answers(act(Act::Stop, names, wait).await??)),
        Request::Restart { names, wait } => Ok(answers(act(Act::Restart, names, wait).await??)),
        Request::Signal { signal, names } => {
            let signal = crate::config::parse_signal(&signal)
                .map_err(|e| Reply::error(ErrorKind::BadRequest, e))?;
            Ok(answers(act(Act::Signal(signal), names, true).await??))
        }
        Request::ReopenLogs => Ok(answers(act(Act::ReopenLogs, Vec::new(), true).await??)),
        Request::Pid { name: None } => Ok(Reply::ok(PidReply {
            pid: Some(std::process::id() as i32),
        })),
        Request::Pid { name: Some(name) } => {
            let names = vec![name.clone()];
            let pids = |statuses: Vec<ProcessStatus>| -> Vec<Option<i32>> {
                statuses
                    .iter()
                    .map(|s| s.state.pid().map(|p| p.as_raw()))
                    .collect()
            };
            let pids = ask(&shared.inputs, |reply| view(names, reply, pids)).await??;
            match pids.as_slice() {
                [pid] => Ok(Reply::ok(PidReply { pid: *pid })),
                _ => Err(refused(Refusal::NotOne {
                    name,
                    count: pids.len(),
                })),
            }
        }
        Request::Reload => {
            let report = ask(&shared.inputs, |reply| Input::Reload(Some(reply))).await??;
            Ok(Reply::ok(reload_reply(report)))
        }
        Request::Reexec { binary } => {
            let binary = binary
                .map(PathBuf::from)
                .unwrap_or_else(|| shared.self_exe.clone());
            // Checked here, off the supervisor's loop: running the binary and
            // reading the config file take time.
            let checked = Arc::clone(&shared.phase.borrow().config);
            if let Err(why) = crate::reexec::check(&binary, &shared.reaper, &checked).await {
                tracing::warn!("not re-executing: {why}");
                return Err(Reply::error(
                    ErrorKind::Failed,
                    format!("not re-executing: {why}"),
                ));
            }
            // On success no reply comes: the connection closes with the old image.
            let refusal = ask(&shared.inputs, |reply| Input::Reexec {
                binary,
                checked,
                reply,
            })
            .await?;
            Err(refused(refusal))
        }
        Request::Shutdown => {
            ask(&shared.inputs, Input::Shutdown).await?;
            Ok(Reply::ok(serde_json::json!({})))
        }
        Request::Tail { .. } | Request::Events { .. } => Err(Reply::error(
            ErrorKind::BadRequest,
            "tail and events are answered on their own path",
        )),
    }
}

/// Starts a `tail`: the history and, with `follow`, the stream.
pub async fn tail(request: Request, shared: &Shared) -> Result<TailStart, Reply> {
    let Request::Tail {
        name,
        lines,
        stderr,
        follow,
    } = request
    else {
        return Err(Reply::error(ErrorKind::BadRequest, "not a tail request"));
    };
    let stream = if stderr {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    Ok(ask(&shared.inputs, |reply| Input::Tail {
        name,
        stream,
        lines,
        follow,
        reply,
    })
    .await??)
}

/// Starts an `events` stream: the acknowledgement, the subscription, and
/// the changes of standing with the load balancers from the same moment.
pub async fn subscribe(
    names: Vec<String>,
    shared: &Shared,
) -> Result<
    (
        EventsStart,
        Subscription,
        broadcast::Receiver<Arc<StandingChange>>,
    ),
    Reply,
> {
    let standing = shared.standing.subscribe();
    let subscription = ask(&shared.inputs, |reply| Input::Subscribe { names, reply }).await??;
    let start = EventsStart {
        following: subscription.following.clone(),
    };
    Ok((start, subscription, standing))
}

/// An [`Input::Status`] whose statuses `render` makes into a `T` in the
/// supervisor's step, sent to `reply`.
fn view<T: Send + 'static>(
    names: Vec<String>,
    reply: oneshot::Sender<Result<T, Refusal>>,
    render: impl FnOnce(Vec<ProcessStatus>) -> T + Send + 'static,
) -> Input {
    Input::Status {
        names,
        view: StatusView::new(move |statuses| {
            let _ = reply.send(statuses.map(render));
        }),
    }
}

/// Hands a request to the supervisor loop and waits for its answer; a full
/// queue is "busy", a loop that is gone is "shutting down".
async fn ask<T>(
    inputs: &mpsc::Sender<Input>,
    make: impl FnOnce(oneshot::Sender<T>) -> Input,
) -> Result<T, Reply> {
    let (tx, rx) = oneshot::channel();
    match inputs.try_send(make(tx)) {
        Ok(()) => rx.await.map_err(|_| refused(Refusal::ShuttingDown)),
        Err(mpsc::error::TrySendError::Full(_)) => {
            Err(Reply::error(ErrorKind::Failed, "minder is busy, try again"))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(refused(Refusal::ShuttingDown)),
    }
}

impl From<Refusal> for Reply {
    fn from(refusal: Refusal) -> Reply {
        refused(refusal)
    }
}

/// The error reply for a refusal.
fn refused(refusal: Refusal) -> Reply {
    let kind = match refusal {
        Refusal::NoName | Refusal::NotOne { .. } => ErrorKind::BadRequest,
        Refusal::Unknown(_) => ErrorKind::UnknownName,
        Refusal::ShuttingDown => ErrorKind::ShuttingDown,
        Refusal::Process(_) | Refusal::Failed(_) => ErrorKind::Failed,
    };
    Reply::error(kind, refusal.to_string())
}

/// The reply of `start`, `stop`, `restart`, `signal` and `reopen-logs`.
fn answers(answers: Vec<Answer>) -> Reply {
    let results = answers
        .into_iter()
        .map(|a| match a.outcome {
            Outcome::Done | Outcome::Pending => ActionResult {
                name: a.name,
                ok: true,
                message: String::new(),
            },
            Outcome::Failed(failure) => ActionResult {
                name: a.name,
                ok: false,
                message: failure.to_string(),
            },
        })
        .collect();
    Reply::ok(ActionReply { results })
}

fn reload_reply(report: ReloadReport) -> ReloadReply {
    ReloadReply {
        added: report.added,
        removed: report.removed,
        changed: report.changed,
        unchanged: report.unchanged,
        not_applied: report.not_applied,
    }
}
