//! Loading the config off the event loop, for reloads.
//!
//! Reading a config touches the file system: a path on a hung NFS server,
//! or a file system with many directories for an include pattern, can take
//! any time. On the supervisor's (single-threaded) event loop that would
//! stop reaping, restarts and `ctl` for as long; on the blocking pool it
//! only delays the reload.

use std::path::{Path, PathBuf};

use tokio::task::JoinHandle;

use super::{load, Config, Defaults, Diagnostic};

/// What a load gives: the config, or every diagnostic.
pub type LoadResult = Result<Config, Vec<Diagnostic>>;

/// Reload requests and the one load that serves them.
///
/// One load at a time: requests that arrive while it runs are answered by
/// the next load, started as soon as this one ends, since the file may have
/// changed after this one read it. So however many requests come in, at
/// most one blocking thread reads config files (a read stuck on a dead
/// file server holds one thread, not one per request), and every request
/// is answered by a read that began after it was made.
///
/// `W` is whoever waits for the outcome (a reply channel, or nothing for
/// SIGHUP).
#[derive(Debug)]
pub struct Reloads<W> {
    /// The load in flight.
    loading: Option<JoinHandle<LoadResult>>,
    /// The main config file, as of the last request.
    path: PathBuf,
    /// Answered by the load in flight.
    waiting: Vec<W>,
    /// Requests made during the load in flight: answered by the next one.
    queued: Vec<W>,
}

impl<W> Default for Reloads<W> {
    fn default() -> Self {
        Reloads {
            loading: None,
            path: PathBuf::new(),
            waiting: Vec::new(),
            queued: Vec::new(),
        }
    }
}

impl<W> Reloads<W> {
    /// Asks for a load of `path`; `waiter` gets the outcome of a load that
    /// begins after this call (now, or when the one in flight ends).
    pub fn request(&mut self, path: &Path, waiter: W) {
        path.clone_into(&mut self.path);
        if self.loading.is_some() {
            self.queued.push(waiter);
        } else {
            self.waiting.push(waiter);
            self.start();
        }
    }

    /// Waits for the load in flight (forever when there is none) and returns
    /// its outcome with the requests it answers; starts the next load if
    /// requests came in meanwhile. Cancel-safe: dropped before the load
    /// ends, it changes nothing.
    pub async fn finished(&mut self) -> (LoadResult, Vec<W>) {
        let Some(handle) = self.loading.as_mut() else {
            return std::future::pending().await;
        };
        let joined = handle.await;
        self.loading = None;
        let result = joined.unwrap_or_else(|e| {
            Err(vec![Diagnostic {
                file: self.path.clone(),
                line: 1,
                col: 1,
                message: format!("loading failed: {e}"),
            }])
        });
        let waiters = std::mem::take(&mut self.waiting);
        if !self.queued.is_empty() {
            self.waiting = std::mem::take(&mut self.queued);
            self.start();
        }
        (result, waiters)
    }

    /// Gives up on everything (on shutdown): the requests still waiting, to
    /// be told why. A load in flight finishes on its own and is dropped.
    pub fn abandon(&mut self) -> Vec<W> {
        self.loading = None;
        let mut waiters = std::mem::take(&mut self.waiting);
        waiters.append(&mut self.queued);
        waiters
    }

    fn start(&mut self) {
        let path = self.path.clone();
        self.loading = Some(tokio::task::spawn_blocking(move || {
            load(&path, &Defaults::for_current_user())
        }));
    }
}
