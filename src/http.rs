//! The little HTTP/1.1 minder speaks: a request on a fresh connection
//! (health probes' GET, HEAD or POST with their configured headers,
//! webhooks' POST, etcd's gateway), the server side of `/metrics`, and
//! [`Client`] for `http://` and `https://` with a kept connection per
//! target (for HTTPS probes and webhooks; rustls, see `client.rs`; not yet
//! wired to the config, which still refuses `https://`).
//!
//! Written out rather than taken from an HTTP crate: minder's requests go to
//! local programs, need a status line and at most the start of a body (a
//! probe's `body` check, etcd's small JSON replies), and with 1000
//! programs probed every second a full client spent over 5 % of a core on
//! per-request machinery (see docs/benchmarks.md); an HTTP client crate also
//! made the binary and the RSS larger than rustls alone ("HTTPS: reqwest or
//! rustls on minder's own HTTP/1.1"). [`request`] and [`exchange`] are plain
//! `http://` on a fresh connection each (a dead server is noticed at once);
//! no redirects, no proxy.

use std::io;

mod client;
pub use client::{check_url as check_client_url, Client, Response, TlsSettings};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    // Credentials (`user@host`) are not sent.
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

/// Checks that `url` is one [`request`] can send to (for config validation).
pub fn check_url(url: &str) -> Result<(), String> {
    parse_http_url(url).map(|_| ())
}

/// Sends `method url` (with `body` as `(content type, bytes)`) and returns
/// the response's status code. The response body is not read. Callers bound
/// the time.
pub async fn request(method: &str, url: &str, body: Option<(&str, &[u8])>) -> Result<u16, String> {
    request_with(method, url, &[], body).await
}

/// Like [`request`], with `headers` added to the request (one named like a
/// default header, `Host`, `User-Agent` or `Accept`, replaces it).
pub async fn request_with(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<(&str, &[u8])>,
) -> Result<u16, String> {
    let mut stream = send(method, url, headers, body).await?;
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

/// Like [`request`], and reads the whole response: its status code and its
/// body (`Content-Length`, chunked, or up to the close), at most `bound`
/// bytes. For etcd's JSON gateway: a few small calls now and then, where an
/// HTTP client crate would cost minder more memory than everything else it
/// adds (docs/benchmarks.md, "Load balancers").
pub async fn exchange(
    method: &str,
    url: &str,
    body: Option<(&str, &[u8])>,
    bound: usize,
) -> Result<(u16, Vec<u8>), String> {
    let stream = send(method, url, &[], body).await?;
    read_reply(stream, bound, Overflow::Refuse).await
}

/// Like [`request_with`] without a body, and reads the status code and the
/// first `bound` bytes of the response body (for a health probe's `body`
/// check); the rest is left unread.
pub async fn read_start(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    bound: usize,
) -> Result<(u16, Vec<u8>), String> {
    let stream = send(method, url, headers, None).await?;
    read_reply(stream, bound, Overflow::Cut).await
}

/// What [`read_reply`] does with a body longer than its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// Fail: the caller needs all of it.
    Refuse,
    /// Keep the start: the caller looks at the first bytes only.
    Cut,
}

/// Room for chunk sizes when a chunked body is cut: with chunks of 1 KiB
/// or more (what servers send), the first `bound` bytes of content arrive
/// within `bound` plus this many raw bytes.
const CHUNK_SLACK: usize = 4 * 1024;

/// Reads a reply on `stream`: its status code and body (see [`exchange`]),
/// at most `bound` body bytes, the head at most [`MAX_HEAD`]. Reading stops
/// at the end of the reply by its own framing, so a server that keeps the
/// connection open despite `Connection: close` is not waited for.
async fn read_reply(
    mut stream: tokio::net::TcpStream,
    bound: usize,
    overflow: Overflow,
) -> Result<(u16, Vec<u8>), String> {
    let limit = match overflow {
        Overflow::Refuse => bound + MAX_HEAD,
        Overflow::Cut => bound + MAX_HEAD + CHUNK_SLACK,
    };
    let mut response = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&chunk[..n]);
                if response.len() > limit {
                    if overflow == Overflow::Refuse {
                        return Err(format!("reply longer than {bound} bytes"));
                    }
                    response.truncate(limit);
                    break;
                }
                if matches!(parse_reply(&response, false), Ok((_, _, true))) {
                    break;
                }
            }
            Err(e) => return Err(describe_io(&e)),
        }
    }
    let cut = overflow == Overflow::Cut;
    let (status, mut body, _) = parse_reply(&response, cut)?;
    if cut {
        body.truncate(bound);
    }
    Ok((status, body))
}

/// A reply's status code and body, and whether its framing says it is
/// whole (`Content-Length`, chunked, no body for 1xx, 204 and 304; `false`
/// for a body that ends with the connection). Without `cut`, a reply its
/// framing says is incomplete is an error; with `cut`, `response` may end
/// anywhere in the body and what it holds is returned.
fn parse_reply(response: &[u8], cut: bool) -> Result<(u16, Vec<u8>, bool), String> {
    let status = parse_status_line(response)?;
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err("reply cut before the end of its head".to_string());
    };
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let content = &response[end + 4..];
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    if status < 200 || status == 204 || status == 304 {
        return Ok((status, Vec::new(), true));
    }
    if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        // Whole when it parses without leniency.
        return match dechunk(content, false) {
            Ok(body) => Ok((status, body, true)),
            Err(_) if cut => Ok((status, dechunk(content, true)?, false)),
            Err(why) => Err(why),
        };
    }
    let Some(length) = header("content-length") else {
        return Ok((status, content.to_vec(), false));
    };
    let length: usize = length
        .parse()
        .map_err(|_| format!("bad Content-Length {length:?}"))?;
    match content.get(..length) {
        Some(whole) => Ok((status, whole.to_vec(), true)),
        None if cut => Ok((status, content.to_vec(), false)),
        None => Err("reply cut before the end of its body".to_string()),
    }
}

/// Connects and writes the request (`Connection: close`: one request per
/// connection, so the end of the reply is the end of the connection).
/// `headers` are written after the default ones, which they replace by name.
async fn send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Option<(&str, &[u8])>,
) -> Result<tokio::net::TcpStream, String> {
    let target = parse_http_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(target.address.as_str())
        .await
        .map_err(|e| describe_io(&e))?;
    let mut head = format!("{method} {} HTTP/1.1\r\n", target.path);
    let user_agent = concat!("minder/", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("Host", target.authority),
        ("User-Agent", user_agent),
        ("Accept", "*/*"),
    ] {
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n");
    match body {
        Some((content_type, bytes)) => head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        )),
        // A POST says its body is empty (servers may want 411 otherwise).
        None if method == "POST" => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body.map(|(_, b)| b).unwrap_or_default());
    stream
        .write_all(&message)
        .await
        .map_err(|e| describe_io(&e))?;
    Ok(stream)
}

/// A chunked body (RFC 9112 §7.1) made whole; trailers are ignored. With
/// `cut`, `data` may end anywhere and what it holds of the body is returned.
fn dechunk(mut data: &[u8], cut: bool) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            if cut {
                return Ok(body);
            }
            return Err("chunked reply cut before a chunk size".to_string());
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let Some(chunk) = data.get(..size) else {
            if cut {
                body.extend_from_slice(data);
                return Ok(body);
            }
            return Err("chunked reply cut inside a chunk".to_string());
        };
        body.extend_from_slice(chunk);
        data = data.get(size + 2..).unwrap_or_default();
    }
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

    #[test]
    fn chunked_bodies_are_made_whole() {
        assert_eq!(
            dechunk(
                b"5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nTrailer: a\r\n\r\n",
                false
            )
            .unwrap(),
            b"hello, world"
        );
        assert!(dechunk(b"5\r\nhel", false).is_err());
        assert!(dechunk(b"zz\r\n", false).is_err());
        assert!(dechunk(b"", false).is_err());
        // Cut: what arrived of the body.
        assert_eq!(dechunk(b"5\r\nhel", true).unwrap(), b"hel");
        assert_eq!(dechunk(b"2\r\nhi\r\n", true).unwrap(), b"hi");
        assert!(dechunk(b"zz\r\n", true).is_err());
    }

    #[tokio::test]
    async fn a_whole_reply_is_read_by_its_length_or_its_chunks() {
        for (reply, body) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..],
                &b"hi"[..],
            ),
            (
                b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n",
                b"no",
            ),
            (b"HTTP/1.0 200 OK\r\n\r\nto the end", b"to the end"),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/v3/kv/range", listener.local_addr().unwrap());
            let server = tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.unwrap();
                let (method, path) = read_request_head(&mut conn).await.unwrap();
                conn.write_all(reply).await.unwrap();
                (method, path)
            });
            let (status, got) = exchange("POST", &url, Some(("application/json", b"{}")), 1024)
                .await
                .unwrap();
            assert_eq!(got, body);
            assert!(status == 200 || status == 404);
            assert_eq!(
                server.await.unwrap(),
                ("POST".to_string(), "/v3/kv/range".to_string())
            );
        }
    }

    /// A loopback server that writes `reply` to the first connection and
    /// keeps it open until the client hangs up; the request head it read.
    async fn serve_once(reply: Vec<u8>) -> (String, tokio::task::JoinHandle<(String, String)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let head = read_request_head(&mut conn).await.unwrap();
            // The client may hang up before all of it is written.
            let _ = conn.write_all(&reply).await;
            // Held open: the client must stop by the reply's framing.
            let mut rest = [0u8; 64];
            let _ = conn.read(&mut rest).await;
            head
        });
        (url, server)
    }

    #[tokio::test]
    async fn the_start_of_a_long_body_is_read_and_the_rest_left() {
        let bound = 64 * 1024;
        let mut text = vec![b'a'; 100 * 1024];
        text[bound - 2..bound].copy_from_slice(b"ok");
        text[bound..bound + 6].copy_from_slice(b"beyond");
        let mut reply =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len()).into_bytes();
        reply.extend_from_slice(&text);
        let (url, server) = serve_once(reply).await;
        let headers = [("X-A".to_string(), "1".to_string())];
        let (status, body) = read_start("GET", &url, &headers, bound).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.len(), bound);
        assert!(body.ends_with(b"ok"));
        let (method, path) = server.await.unwrap();
        assert_eq!((method.as_str(), path.as_str()), ("GET", "/health"));

        // Chunked, cut inside a chunk.
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..100 {
            reply.extend_from_slice(b"400\r\n");
            reply.extend_from_slice(&[b'b'; 1024]);
            reply.extend_from_slice(b"\r\n");
        }
        reply.extend_from_slice(b"0\r\n\r\n");
        let (url, _server) = serve_once(reply).await;
        let (status, body) = read_start("GET", &url, &[], bound).await.unwrap();
        assert_eq!((status, body.len()), (200, bound));
        assert!(body.iter().all(|b| *b == b'b'));
    }

    #[tokio::test]
    async fn a_reply_ends_by_its_framing_on_a_connection_left_open() {
        for (reply, body) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
                &b"ok"[..],
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                b"ok",
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        ] {
            let (url, _server) = serve_once(reply.to_vec()).await;
            let got = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                read_start("GET", &url, &[], 1024),
            )
            .await
            .expect("the reply's end is noticed without the close")
            .unwrap();
            assert_eq!(got.1, body);
        }
    }

    #[tokio::test]
    async fn configured_headers_replace_the_defaults_by_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < MAX_HEAD {
                let n = conn.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            String::from_utf8(got).unwrap()
        });
        let headers = [
            ("host".to_string(), "web.example".to_string()),
            ("X-Probe".to_string(), "web:0".to_string()),
        ];
        assert_eq!(request_with("POST", &url, &headers, None).await, Ok(200));
        let head = server.await.unwrap();
        let expected = format!(
            "POST / HTTP/1.1\r\nUser-Agent: minder/{}\r\nAccept: */*\r\nhost: web.example\r\nX-Probe: web:0\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(head, expected);
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
