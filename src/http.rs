//! The little HTTP/1.1 minder speaks: [`Client`] for `http://` and
//! `https://` (health probes, webhooks, etcd's gateway; rustls, see
//! `client.rs`) and the server side of `/metrics`.
//!
//! Written out rather than taken from an HTTP crate: minder's requests go to
//! local programs and a few services, need a status line and at most the
//! start of a body (a probe's `body` check, etcd's small JSON replies); with
//! 1000 programs probed every second a full client spent over 5 % of a core
//! on per-request machinery, and made the binary and the RSS larger than
//! rustls alone (docs/benchmarks.md, "HTTPS: reqwest or rustls on minder's
//! own HTTP/1.1"). No redirects, no proxy.

use std::io;

mod client;
pub use client::{check_url, Client, Response, TlsSettings};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Longest request head the server side reads.
const MAX_HEAD: usize = 8 * 1024;

/// Reads a request's head and returns its method and path (query dropped).
/// A body, if any, is ignored: the server side only answers GET and HEAD.
pub async fn read_request_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<(String, String)> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the request's end",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version)) if version.starts_with("HTTP/1.") => {
            let path = target.split('?').next().unwrap_or(target);
            Ok((method.to_string(), path.to_string()))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP/1 request line",
        )),
    }
}

/// Writes a whole response and closes the write side (`Connection: close`).
/// With `head_only`, the body is left out (a HEAD request) but its length is given.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}

/// An OS error in lower case without the "(os error N)" suffix.
pub fn describe_io(e: &io::Error) -> String {
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

    #[tokio::test]
    async fn request_heads_are_read_up_to_their_end() {
        let mut input: &[u8] = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            read_request_head(&mut input).await.unwrap(),
            ("GET".to_string(), "/metrics".to_string())
        );
        let mut garbage: &[u8] = b"hello\r\n\r\n";
        assert!(read_request_head(&mut garbage).await.is_err());
        let mut cut: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(read_request_head(&mut cut).await.is_err());
        let big = vec![b'a'; MAX_HEAD + 10];
        assert!(read_request_head(&mut big.as_slice()).await.is_err());
    }
}
