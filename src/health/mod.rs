//! Health probes: HTTP, TCP and exec checks, each bounded by a timeout and
//! reported in words a user can act on (`GET http://127.0.0.1:8080/health: 503`).
//!
//! Probes only *observe*; what a result means (ready, unhealthy, restart) is
//! decided by the process's state machine.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::ProbeTarget;
use crate::process::{self, Output, ProcessEnd, Reaper, SpawnRequest};
use crate::supervisor::state::short_duration;

/// How much of an exec probe's stderr is kept for its message.
const STDERR_BOUND: usize = 4096;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// Healthy.
    pub ok: bool,
    /// What was seen, in words.
    pub message: String,
    /// When the probe finished.
    pub at: SystemTime,
    /// How long it took.
    pub duration: Duration,
}

/// Runs probes; one per daemon, shared by every process.
#[derive(Clone)]
pub struct Prober {
    http: reqwest::Client,
    reaper: Arc<Reaper>,
}

impl Prober {
    /// A prober with one shared HTTP client: no redirects followed, no proxy
    /// (checks are local), and no idle connections kept, so a server that died
    /// is noticed instead of a pooled connection answering for it.
    pub fn new(reaper: Arc<Reaper>) -> Prober {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Prober { http, reaper }
    }

    /// Runs one probe within `timeout`. `exec_like` is the program's spawn
    /// request: an exec probe runs with its user, environment and directory.
    pub async fn probe(
        &self,
        target: &ProbeTarget,
        timeout: Duration,
        exec_like: &SpawnRequest,
    ) -> ProbeResult {
        let start = Instant::now();
        let (ok, message) = match target {
            ProbeTarget::Http(url) => self.http(url, timeout).await,
            ProbeTarget::Tcp(addr) => tcp(addr, timeout).await,
            ProbeTarget::Exec(argv) => self.exec(argv, timeout, exec_like).await,
        };
        ProbeResult {
            ok,
            message,
            at: SystemTime::now(),
            duration: start.elapsed(),
        }
    }

    async fn http(&self, url: &str, timeout: Duration) -> (bool, String) {
        match tokio::time::timeout(timeout, self.http.get(url).send()).await {
            Err(_) => (false, timed_out(timeout)),
            Ok(Err(e)) => (false, format!("GET {url}: {}", describe_reqwest(&e))),
            // The body is never read: dropping the response closes the connection.
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                (
                    (200..=399).contains(&status),
                    format!("GET {url}: {status}"),
                )
            }
        }
    }

    async fn exec(
        &self,
        argv: &[String],
        timeout: Duration,
        exec_like: &SpawnRequest,
    ) -> (bool, String) {
        let (read, write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
            Ok(pair) => pair,
            Err(e) => return (false, format!("exec probe: pipe: {}", e.desc())),
        };
        let request = SpawnRequest {
            argv: argv.to_vec(),
            stdout: Output::Null,
            stderr: Output::Fd(write.as_raw_fd()),
            ..exec_like.clone()
        };
        let spawned = match process::spawn(&request, &self.reaper) {
            Ok(spawned) => spawned,
            Err(e) => return (false, format!("exec probe: {e}")),
        };
        drop(write);
        // Whatever happens below (timeout, or this probe being cancelled because
        // the process stopped), the probe's whole group must not outlive it.
        let guard = KillOnDrop(spawned.pid);
        let end = match tokio::time::timeout(timeout, spawned.exit).await {
            Err(_) => return (false, timed_out(timeout)),
            Ok(Err(_)) => return (false, "exec probe: lost track of the process".to_string()),
            Ok(Ok(end)) => end,
        };
        drop(guard);
        let stderr = read_available(read);
        let first_line = stderr.lines().next().unwrap_or("").trim();
        match end {
            ProcessEnd::Exited(0) => (true, "exit 0".to_string()),
            ProcessEnd::Exited(code) if first_line.is_empty() => (false, format!("exit {code}")),
            ProcessEnd::Exited(code) => (false, format!("exit {code}: {first_line}")),
            signaled => (false, signaled.to_string()),
        }
    }
}

/// SIGKILLs an exec probe's process group unless disarmed (dropped after exit).
struct KillOnDrop(Pid);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // After a normal exit the group is usually empty: ESRCH is fine.
        let _ = process::send_signal(self.0, Signal::SIGKILL, true);
    }
}

/// Reads what the (non-blocking) pipe holds, up to [`STDERR_BOUND`].
fn read_available(fd: std::os::fd::OwnedFd) -> String {
    let mut buf = vec![0u8; STDERR_BOUND];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(&fd, &mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    String::from_utf8_lossy(&buf[..got]).into_owned()
}

async fn tcp(addr: &str, timeout: Duration) -> (bool, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => (false, timed_out(timeout)),
        Ok(Err(e)) => (false, format!("connect {addr}: {}", describe_io(&e))),
        Ok(Ok(_)) => (true, format!("connect {addr}: ok")),
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}", short_duration(timeout))
}

/// `connection refused` rather than reqwest's "error sending request for url ...".
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return describe_io(io);
        }
        source = err.source();
    }
    e.to_string()
}

/// An OS error in lower case without the "(os error N)" suffix.
fn describe_io(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let text = nix::errno::Errno::from_raw(code).desc();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => e.to_string(),
            }
        }
        None => e.to_string(),
    }
}
