//! Health probes: HTTP, TCP and exec checks, each bounded by a timeout and
//! reported in words a user can act on (`GET http://127.0.0.1:8080/health: 503`).
//!
//! Probes only *observe*; what a result means (ready, unhealthy, restart) is
//! decided by the process's state machine.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::ProbeTarget;
use crate::process::{self, Capture, ProcessEnd, Reaper, RunError, SpawnRequest};
use crate::supervisor::state::short_duration;

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
    pub async fn probe(
        &self,
        target: &ProbeTarget,
        timeout: Duration,
        exec_like: &SpawnRequest,
    ) -> ProbeResult {
        let start = Instant::now();
        let (ok, message) = match target {
            ProbeTarget::Http(url) => http(url, timeout).await,
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

/// `GET url`: healthy iff the status is 200..=399 within `timeout`.
///
/// A probe needs a status line and nothing else, so this is a plain HTTP/1.1
/// request on a fresh connection (`Connection: close`): no pooling, so a dead
/// server is noticed; no redirects followed; no proxy (checks are local); the
/// body is never read. Written out rather than taken from an HTTP client
/// crate: with 1000 programs probed every second, a full client spent over
/// 5 % of a core on per-request machinery (see docs/benchmarks.md).
async fn http(url: &str, timeout: Duration) -> (bool, String) {
    match tokio::time::timeout(timeout, http_status(url)).await {
        Err(_) => (false, timed_out(timeout)),
        Ok(Err(why)) => (false, format!("GET {url}: {why}")),
        Ok(Ok(status)) => (
            (200..=399).contains(&status),
            format!("GET {url}: {status}"),
        ),
    }
}

/// The parts of an `http://` URL a request needs.
#[derive(Debug, PartialEq, Eq)]
struct HttpTarget<'u> {
    /// `host[:port]` or `[v6][:port]`, as it goes into `Host:`.
    authority: &'u str,
    /// What `connect` takes: `host:port` or `[v6]:port`.
    address: String,
    /// Path and query, at least `/`.
    path: String,
}

fn parse_http_url(url: &str) -> Result<HttpTarget<'_>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "not an http:// URL".to_string())?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // Credentials (`user@host`) have no meaning for a probe.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.is_empty() {
        return Err("no host in the URL".to_string());
    }
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    Ok(HttpTarget {
        authority,
        address: if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        },
        path: if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        },
    })
}

async fn http_status(url: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let target = parse_http_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(target.address.as_str())
        .await
        .map_err(|e| describe_io(&e))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: minder/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority,
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| describe_io(&e))?;
    // The status line fits in the first bytes; read until its end, bounded.
    let mut head = [0u8; 256];
    let mut got = 0;
    while !head[..got].contains(&b'\n') && got < head.len() {
        match stream.read(&mut head[got..]).await {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(describe_io(&e)),
        }
    }
    parse_status_line(&head[..got])
}

/// `HTTP/1.1 503 Service Unavailable` -> 503.
fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=999).contains(c))
            .ok_or_else(|| format!("bad status line {:?}", text.trim_end())),
        _ if head.is_empty() => Err("connection closed without a response".to_string()),
        _ => Err(format!("not an HTTP response: {:?}", text.trim_end())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_what_a_request_needs() {
        let t = parse_http_url("http://127.0.0.1:8080/health?x=1").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.address, "127.0.0.1:8080");
        assert_eq!(t.path, "/health?x=1");
        let t = parse_http_url("http://localhost").unwrap();
        assert_eq!((t.address.as_str(), t.path.as_str()), ("localhost:80", "/"));
        let t = parse_http_url("http://h:1?q").unwrap();
        assert_eq!((t.authority, t.path.as_str()), ("h:1", "/?q"));
        let t = parse_http_url("http://[::1]:9000/").unwrap();
        assert_eq!(t.address, "[::1]:9000");
        let t = parse_http_url("http://[::1]/x").unwrap();
        assert_eq!(t.address, "[::1]:80");
        assert!(parse_http_url("https://a/").is_err());
        assert!(parse_http_url("http:///x").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Ok(503)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 200 OK\r\nContent-Length: 2"),
            Ok(200)
        );
        assert!(parse_status_line(b"").is_err());
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc\r\n").is_err());
    }
}
