//! One backend of one program: applies the latest [`Members`] it is handed,
//! retries what failed with backoff, and runs its timers (etcd keep-alive,
//! a debounced reload) until its program's members are dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{etcd::Etcd, file::UpstreamFile, haproxy::Haproxy, Applied, Board, Members};

/// Which kind of balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// HAProxy's runtime API.
    Haproxy,
    /// etcd v3.
    Etcd,
    /// A generated upstream file.
    File,
}

impl Backend {
    /// As `status --json` and `/metrics` name it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Haproxy => "haproxy",
            Backend::Etcd => "etcd",
            Backend::File => "file",
        }
    }
}

/// A backend with its connection state.
pub(super) enum Sink {
    Haproxy(Haproxy),
    // Boxed: its HTTP client (kept connection, TLS settings) is large.
    Etcd(Box<Etcd>),
    File(UpstreamFile),
}

impl Sink {
    fn kind(&self) -> Backend {
        match self {
            Sink::Haproxy(_) => Backend::Haproxy,
            Sink::Etcd(_) => Backend::Etcd,
            Sink::File(_) => Backend::File,
        }
    }

    async fn apply(&mut self, members: &Members) -> Applied {
        match self {
            Sink::Haproxy(b) => b.apply(members).await,
            Sink::Etcd(b) => b.apply(members).await,
            Sink::File(b) => b.apply(members).await,
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        match self {
            Sink::Haproxy(b) => b.next_timer(),
            Sink::Etcd(b) => b.next_timer(),
            Sink::File(b) => b.next_timer(),
        }
    }

    async fn on_timer(&mut self) -> Applied {
        match self {
            Sink::Haproxy(b) => b.on_timer().await,
            Sink::Etcd(b) => b.on_timer().await,
            Sink::File(b) => b.on_timer().await,
        }
    }

    async fn close(&mut self) {
        match self {
            Sink::Haproxy(b) => b.close().await,
            Sink::Etcd(b) => b.close().await,
            Sink::File(b) => b.close().await,
        }
    }
}

/// First retry after a failure; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between retries of a balancer that stays down.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Drives `sink` until `members` is closed (the program left the config or
/// minder stops): then one last apply of the last members, and `close`.
pub(super) async fn drive(
    mut sink: Sink,
    program: String,
    mut members: watch::Receiver<Members>,
    board: Arc<Board>,
) {
    let kind = sink.kind();
    let mut retry_in = RETRY_FIRST;
    let mut retry_at: Option<Instant> = None;
    let mut current = members.borrow_and_update().clone();
    let mut apply = true;
    loop {
        if apply {
            apply = false;
            let applied = sink.apply(&current).await;
            if board.record(&program, kind, &applied) {
                retry_at = Some(Instant::now() + retry_in);
                retry_in = (retry_in * 2).min(RETRY_MAX);
            } else {
                retry_at = None;
                retry_in = RETRY_FIRST;
            }
        }
        let timer = sink.next_timer();
        tokio::select! {
            changed = members.changed() => {
                if changed.is_err() {
                    break;
                }
                current = members.borrow_and_update().clone();
                apply = true;
            }
            () = sleep_until(retry_at), if retry_at.is_some() => apply = true,
            () = sleep_until(timer), if timer.is_some() => {
                let applied = sink.on_timer().await;
                if board.record(&program, kind, &applied) && retry_at.is_none() {
                    retry_at = Some(Instant::now() + retry_in);
                    retry_in = (retry_in * 2).min(RETRY_MAX);
                }
            }
        }
    }
    sink.close().await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
