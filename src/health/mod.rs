//! Health probes: HTTP, TCP and exec checks, each bounded by a timeout and
//! reported in words a user can act on (`GET http://127.0.0.1:8080/health: 503`).
//!
//! Probes only *observe*; what a result means (ready, unhealthy, restart) is
//! decided by the process's state machine.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::{HttpProbe, ProbeTarget, BODY_LIMIT};
use crate::http::{describe_io, Client, Response};
use crate::process::{self, Capture, ProcessEnd, Reaper, RunError, SpawnRequest};
use crate::text::short_duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

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
    reaper: Arc<Reaper>,
}

impl Prober {
    /// A prober whose exec probes are reaped by `reaper`.
    pub fn new(reaper: Arc<Reaper>) -> Prober {
        Prober { reaper }
    }

    /// Runs one probe within `timeout`. `exec_like` is the program's spawn
    /// request: an exec probe runs with its user, environment and directory.
    /// `https` is the client of an `https://` check, kept by its process
    /// between probes (and with it the connection and its TLS session).
    pub async fn probe(
        &self,
        target: &ProbeTarget,
        timeout: Duration,
        exec_like: &SpawnRequest,
        https: Option<&Client>,
    ) -> ProbeResult {
        let start = Instant::now();
        let (ok, message) = match target {
            ProbeTarget::Http(probe) => http(probe, timeout, https).await,
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

    async fn exec(
        &self,
        argv: &[String],
        timeout: Duration,
        exec_like: &SpawnRequest,
    ) -> (bool, String) {
        let request = SpawnRequest {
            argv: argv.to_vec(),
            ..exec_like.clone()
        };
        let (end, stderr) =
            match process::run_captured(request, Capture::Stderr, timeout, &self.reaper).await {
                Ok(done) => done,
                Err(RunError::TimedOut) => return (false, timed_out(timeout)),
                Err(e) => return (false, format!("exec probe: {e}")),
            };
        let first_line = stderr.lines().next().unwrap_or("").trim();
        match end {
            ProcessEnd::Exited(0) => (true, "exit 0".to_string()),
            ProcessEnd::Exited(code) if first_line.is_empty() => (false, format!("exit {code}")),
            ProcessEnd::Exited(code) => (false, format!("exit {code}: {first_line}")),
            signaled => (false, signaled.to_string()),
        }
    }
}

/// `method url` with the probe's headers: healthy iff, within `timeout`,
/// the status is in `status` and, with `body`, the first [`BODY_LIMIT`]
/// bytes of the body contain it. No redirects followed; no proxy (checks
/// are local); without `body` the body is never read.
///
/// `http://` is a request on a fresh connection (`Connection: close`), as
/// Kubernetes' HTTP probes do: a server that stopped accepting connections
/// is noticed, and minder holds no connection per process. `https://` goes
/// through `kept`, the process's own [`Client`], which keeps the connection
/// between probes so a TLS handshake is not paid every interval; a
/// certificate problem is the message (`GET https://…: certificate not
/// valid for "web.test"`).
async fn http(probe: &HttpProbe, timeout: Duration, kept: Option<&Client>) -> (bool, String) {
    let method = probe.method.as_str();
    let url = probe.url.as_str();
    let fresh;
    let client = match kept {
        Some(client) => client,
        None => {
            fresh = Client::fresh();
            &fresh
        }
    };
    let headers: Vec<(&str, &str)> = probe
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let bound = if probe.body.is_some() { BODY_LIMIT } else { 0 };
    let exchange = client.request(method, url, &headers, None, bound);
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => (false, timed_out(timeout)),
        Ok(Err(why)) => (false, format!("{method} {url}: {why}")),
        Ok(Ok(Response { status, .. })) if !probe.status.contains(status) => (
            false,
            format!("{method} {url}: {status} (expected {})", probe.status),
        ),
        Ok(Ok(Response { status, body })) => match &probe.body {
            Some(needle) if memchr::memmem::find(&body, needle.as_bytes()).is_none() => (
                false,
                format!(
                    "{method} {url}: {status} but the body does not contain {}",
                    quoted_start(needle)
                ),
            ),
            _ => (true, format!("{method} {url}: {status}")),
        },
    }
}

/// What an `https://` check keeps between probes: its client, and with it
/// the connection and its TLS session; made at the first probe, again when
/// the check's TLS keys change (a reload).
#[derive(Debug, Default)]
pub struct KeptClient(Option<Arc<Client>>);

impl KeptClient {
    /// The client for a probe of `target`; `None` unless it is `https://`.
    pub fn for_target(&mut self, target: &ProbeTarget) -> Option<Arc<Client>> {
        let ProbeTarget::Http(probe) = target else {
            return None;
        };
        if !probe.url.starts_with("https://") {
            return None;
        }
        let tls = probe.tls.settings();
        match &self.0 {
            Some(client) if *client.tls() == tls => Some(Arc::clone(client)),
            _ => {
                let client = Arc::new(Client::new(tls));
                self.0 = Some(Arc::clone(&client));
                Some(client)
            }
        }
    }
}

/// `text` quoted, cut to its first 60 characters: a description stays one
/// readable line even for a long `body`.
fn quoted_start(text: &str) -> String {
    const SHOWN: usize = 60;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
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
/// Probe timings and failures of one process, kept for `/metrics` (in the
/// storage its encoder reads, so a scrape copies nothing).
#[derive(Debug)]
pub struct ProbeStats {
    /// Seconds each probe took.
    pub duration: Histogram,
    /// Failed probes.
    pub failures: Counter,
}

impl Default for ProbeStats {
    fn default() -> ProbeStats {
        ProbeStats {
            // 1 ms .. ~8 s: local probes take milliseconds, timeouts seconds.
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            failures: Counter::default(),
        }
    }
}

impl ProbeStats {
    /// Counts one finished probe.
    pub fn record(&self, result: &ProbeResult) {
        self.duration.observe(result.duration.as_secs_f64());
        if !result.ok {
            self.failures.inc();
        }
    }
}
