//! A client for `http://` and `https://` with keep-alive: health probes and
//! webhooks that keep a connection per target, so an HTTPS probe pays a TLS
//! handshake once rather than every interval.
//!
//! TLS is rustls with the `ring` provider, spoken directly on minder's own
//! HTTP/1.1 (not through an HTTP client crate: see docs/benchmarks.md,
//! "HTTPS: reqwest or rustls on minder's own HTTP/1.1"). Certificates are
//! verified against the system's roots (read once, when the first HTTPS
//! target needs them) plus a `ca_file`, for the URL's host or `server_name`;
//! `insecure` accepts any certificate (the handshake still happens, as in
//! Kubernetes' HTTPS probes); `client_cert` + `client_key` give mutual TLS.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::describe_io;

/// How an `https://` target is trusted and how minder shows itself to it.
/// The default: the system's roots, the URL's host as the name, no client
/// certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// PEM certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must be valid for (default: the
    /// URL's host).
    pub server_name: Option<String>,
    /// Accept any certificate (the handshake still happens).
    pub insecure: bool,
    /// PEM certificate chain sent to servers that ask for one (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// A response: its status code and the first `bound` bytes of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, cut at the bound the request gave.
    pub body: Vec<u8>,
}

/// Longest response head read.
const MAX_HEAD: usize = 16 * 1024;

/// Bytes of a body past the caller's bound read and dropped to keep the
/// connection (a probe wants the status, its server sends a page).
const MAX_DISCARD: usize = 64 * 1024;

/// Bytes asked of a connection per read.
const READ_SIZE: usize = 4 * 1024;

/// Idle connections kept by one client (one per scheme, host and port).
const MAX_IDLE: usize = 8;

/// Requests over `http://` and `https://` with one set of TLS settings.
/// A [`Client::new`] keeps the connection to each target open between
/// requests (HTTP/1.1 keep-alive; a connection found closed is replaced once
/// by a fresh one); a [`Client::fresh`] opens one per request and reads no
/// more of a response than the caller wants.
pub struct Client {
    tls: TlsSettings,
    reuse: bool,
    /// Built at the first `https://` request, from `tls`.
    config: OnceLock<Arc<rustls::ClientConfig>>,
    idle: Mutex<HashMap<Target, Conn>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("tls", &self.tls).finish()
    }
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    https: bool,
    /// The host, without brackets around an IPv6 address.
    host: String,
    port: u16,
}

/// The parts of a URL a request needs.
#[derive(Debug, PartialEq, Eq)]
struct Url<'u> {
    target: Target,
    /// `host[:port]` as it goes into `Host:`.
    authority: &'u str,
    /// Path and query, at least `/`.
    path: String,
}

fn parse_url(url: &str) -> Result<Url<'_>, String> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err("not an http:// or https:// URL".to_string());
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let path = path.split('#').next().unwrap_or_default();
    // Credentials (`user@host`) are not sent.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or("unclosed [ in the URL's host")?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("no host in the URL".to_string());
    }
    let port = match port {
        Some(port) => port
            .parse()
            .map_err(|_| format!("bad port {port:?} in the URL"))?,
        None if https => 443,
        None => 80,
    };
    Ok(Url {
        target: Target {
            https,
            host: host.to_string(),
            port,
        },
        authority,
        path: if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        },
    })
}

/// Checks that `url` is one a [`Client`] can send to (for config validation).
pub fn check_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// An open connection and what was read past the last response.
struct Conn {
    stream: Box<dyn Stream>,
    buffer: Vec<u8>,
}

impl Client {
    /// A client with these TLS settings (used for `https://` URLs only)
    /// that keeps connections. Files are read at the first `https://` request.
    pub fn new(tls: TlsSettings) -> Client {
        Client {
            tls,
            reuse: true,
            config: OnceLock::new(),
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// A client that sends each request on a connection of its own
    /// (`Connection: close`) and stops reading once the status and the
    /// first `bound` bytes of the body are in: a health probe of a plain
    /// `http://` server, which also shows that the server still accepts
    /// connections (Kubernetes' HTTP probes do the same).
    pub fn fresh() -> Client {
        Client {
            reuse: false,
            ..Client::new(TlsSettings::default())
        }
    }

    /// The TLS settings this client was made with.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Checks the TLS settings now: the files exist and hold what they
    /// should. Builds what the first `https://` request would.
    pub fn prepare(&self) -> Result<(), String> {
        self.config().map(|_| ())
    }

    fn config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        if let Some(config) = self.config.get() {
            return Ok(config.clone());
        }
        let config = shared_config(&self.tls)?;
        Ok(self.config.get_or_init(|| config).clone())
    }

    /// Sends `method url` with `headers` and `body` (`(content type,
    /// bytes)`) and reads the response, keeping at most `bound` bytes of its
    /// body. The connection is kept for the next request to the same target
    /// when the response allows. Callers bound the time.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
        bound: usize,
    ) -> Result<Response, String> {
        let parsed = parse_url(url)?;
        let message = request_bytes(method, &parsed, headers, body, self.reuse);
        let reused = self.take_idle(&parsed.target);
        if let Some(mut conn) = reused {
            match exchange_on(&mut conn, &message, method, bound, true).await {
                Ok((response, keep)) => {
                    if keep {
                        self.put_idle(parsed.target, conn);
                    }
                    return Ok(response);
                }
                // The server closed the kept connection (idle timeout,
                // restart): once more on a fresh one.
                Err(Failure::Stale(_)) => {}
                Err(Failure::Other(why)) => return Err(why),
            }
        }
        let mut conn = self.connect(&parsed.target).await?;
        match exchange_on(&mut conn, &message, method, bound, self.reuse).await {
            Ok((response, keep)) => {
                if keep {
                    self.put_idle(parsed.target, conn);
                }
                Ok(response)
            }
            Err(Failure::Stale(why) | Failure::Other(why)) => Err(why),
        }
    }

    fn take_idle(&self, target: &Target) -> Option<Conn> {
        if !self.reuse {
            return None;
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(target)
    }

    fn put_idle(&self, target: Target, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE && !idle.contains_key(&target) {
            // A client talks to one or two targets; past a few, the one
            // dropped does not matter.
            if let Some(any) = idle.keys().next().cloned() {
                idle.remove(&any);
            }
        }
        idle.insert(target, conn);
    }

    async fn connect(&self, target: &Target) -> Result<Conn, String> {
        // Before connecting: a missing ca_file is the problem to report
        // whether the server is up or not.
        let config = if target.https {
            Some(self.config()?)
        } else {
            None
        };
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| describe_io(&e))?;
        let _ = tcp.set_nodelay(true);
        let Some(config) = config else {
            return Ok(Conn {
                stream: Box::new(tcp),
                buffer: Vec::new(),
            });
        };
        let name = self.tls.server_name.as_deref().unwrap_or(&target.host);
        let server_name = ServerName::try_from(name.to_string())
            .map_err(|_| format!("{name:?} is not a valid TLS server name"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| describe_tls(&e, name))?;
        Ok(Conn {
            stream: Box::new(tls),
            buffer: Vec::new(),
        })
    }
}

/// Why an exchange failed: `Stale` when nothing of a response came back
/// (a kept connection the server had closed), so a retry is safe.
enum Failure {
    Stale(String),
    Other(String),
}

fn request_bytes(
    method: &str,
    url: &Url<'_>,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    reuse: bool,
) -> Vec<u8> {
    let mut head = format!("{method} {} HTTP/1.1\r\n", url.path);
    let has = |name: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(name));
    if !has("host") {
        head.push_str(&format!("Host: {}\r\n", url.authority));
    }
    if !has("user-agent") {
        head.push_str(&format!(
            "User-Agent: minder/{}\r\n",
            env!("CARGO_PKG_VERSION")
        ));
    }
    if !has("accept") {
        head.push_str("Accept: */*\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !reuse {
        head.push_str("Connection: close\r\n");
    }
    if let Some((content_type, bytes)) = body {
        if !has("content-type") {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", bytes.len()));
    } else if matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body.map(|(_, b)| b).unwrap_or_default());
    message
}

/// Writes the request on `conn` and reads one response; `true` with it when
/// the connection can carry the next request. Reading stops at the end of
/// the response by its own framing, so a server that keeps the connection
/// open despite `Connection: close` is not waited for; without `reuse`, it
/// stops once `bound` bytes of the body are in.
async fn exchange_on(
    conn: &mut Conn,
    message: &[u8],
    method: &str,
    bound: usize,
    reuse: bool,
) -> Result<(Response, bool), Failure> {
    let written = match conn.stream.write_all(message).await {
        Ok(()) => conn.stream.flush().await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        // A TLS alert the server sent before closing (it wants a client
        // certificate) says more than the broken pipe: one read for it.
        let why = match read_more(conn).await {
            Err(alert) if alert.contains("certificate") => alert,
            _ => describe_tls(&e, ""),
        };
        return Err(Failure::Stale(why));
    }
    // The head.
    let head_end = loop {
        if let Some(end) = find(&conn.buffer, b"\r\n\r\n") {
            break end;
        }
        if conn.buffer.len() > MAX_HEAD {
            return Err(Failure::Other("response head too large".to_string()));
        }
        match read_more(conn).await {
            Ok(0) if conn.buffer.is_empty() => {
                return Err(Failure::Stale(
                    "connection closed without a response".to_string(),
                ))
            }
            Ok(0) => {
                return Err(Failure::Other(
                    "reply cut before the end of its head".to_string(),
                ))
            }
            Ok(_) => {}
            Err(e) if conn.buffer.is_empty() => return Err(Failure::Stale(e)),
            Err(e) => return Err(Failure::Other(e)),
        }
    };
    let status = super::parse_status_line(&conn.buffer).map_err(Failure::Other)?;
    let head = String::from_utf8_lossy(&conn.buffer[..head_end]).to_ascii_lowercase();
    conn.buffer.drain(..head_end + 4);
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    let mut keep = reuse
        && !header("connection").is_some_and(|c| c.contains("close"))
        && !head.starts_with("http/1.0");
    if status < 200 {
        // An interim response (100 Continue) before the real one: minder
        // sends no `Expect`, so a server that does this is odd; its status
        // is the answer, and the connection is not kept.
        keep = false;
    }
    // Bytes of a body past the bound read (and dropped) to keep the connection.
    let discard = if reuse { MAX_DISCARD } else { 0 };
    let no_body = method == "HEAD"
        || status == 204
        || status == 304
        || (100..200).contains(&status)
        || (bound == 0 && !reuse);
    let body = if no_body {
        Vec::new()
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        match read_chunked(conn, bound, discard)
            .await
            .map_err(Failure::Other)?
        {
            (body, true) => body,
            (body, false) => {
                keep = false;
                body
            }
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| Failure::Other(format!("bad Content-Length {length:?}")))?;
        // Past the bound, a little more is read and dropped so that the
        // connection can be kept; a longer body ends it.
        let wanted = if length <= bound.saturating_add(discard) {
            length
        } else {
            keep = false;
            bound
        };
        while conn.buffer.len() < wanted {
            if read_more(conn).await.map_err(Failure::Other)? == 0 {
                return Err(Failure::Other(
                    "reply cut before the end of its body".to_string(),
                ));
            }
        }
        let mut body: Vec<u8> = conn.buffer.drain(..wanted).collect();
        body.truncate(bound);
        body
    } else {
        // Up to the close.
        keep = false;
        while conn.buffer.len() < bound {
            match read_more(conn).await {
                Ok(0) => break,
                Ok(_) => {}
                // A server that closes without TLS's close_notify.
                Err(_) if !conn.buffer.is_empty() => break,
                Err(e) => return Err(Failure::Other(e)),
            }
        }
        conn.buffer.truncate(bound);
        std::mem::take(&mut conn.buffer)
    };
    if keep && !conn.buffer.is_empty() {
        // Bytes past the response: nothing a later request could trust.
        keep = false;
    }
    // A kept connection waits with an empty buffer, not a grown one.
    conn.buffer = Vec::new();
    Ok((Response { status, body }, keep))
}

/// Reads a chunked body, keeping at most `bound` bytes of it and reading
/// through at most `discard` more; `true` with it when the whole body was
/// read (the connection can be kept).
async fn read_chunked(
    conn: &mut Conn,
    bound: usize,
    discard: usize,
) -> Result<(Vec<u8>, bool), String> {
    let mut body = Vec::new();
    let mut seen = 0usize;
    // Each turn takes one chunk off the buffer; a body longer than
    // `bound + discard` ends the loop.
    loop {
        let line_end = loop {
            if let Some(end) = find(&conn.buffer, b"\r\n") {
                break end;
            }
            if conn.buffer.len() > MAX_HEAD {
                return Err("bad chunk size line".to_string());
            }
            if read_more(conn).await? == 0 {
                return Err("chunked reply cut before a chunk size".to_string());
            }
        };
        let size_text = String::from_utf8_lossy(&conn.buffer[..line_end]).to_string();
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        conn.buffer.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if conn.buffer.starts_with(b"\r\n") {
                    conn.buffer.drain(..2);
                    return Ok((body, true));
                }
                if let Some(end) = find(&conn.buffer, b"\r\n\r\n") {
                    conn.buffer.drain(..end + 4);
                    return Ok((body, true));
                }
                if conn.buffer.len() > MAX_HEAD || read_more(conn).await? == 0 {
                    return Ok((body, false));
                }
            }
        }
        if seen.saturating_add(size) > bound.saturating_add(discard) {
            // Too long to read through: keep what fits and end the connection.
            let room = bound - body.len();
            while conn.buffer.len() < room.min(size) {
                if read_more(conn).await? == 0 {
                    return Err("chunked reply cut inside a chunk".to_string());
                }
            }
            body.extend(conn.buffer.drain(..room.min(size)));
            return Ok((body, false));
        }
        while conn.buffer.len() < size + 2 {
            if read_more(conn).await? == 0 {
                return Err("chunked reply cut inside a chunk".to_string());
            }
        }
        let room = (bound - body.len()).min(size);
        body.extend_from_slice(&conn.buffer[..room]);
        conn.buffer.drain(..size + 2);
        seen += size;
    }
}

/// Reads what is there into the connection's buffer (straight into it: a
/// buffer on the stack would make every future awaiting this one as large,
/// and a thousand probes in flight hold a thousand of them).
async fn read_more(conn: &mut Conn) -> Result<usize, String> {
    conn.buffer.reserve(READ_SIZE);
    conn.stream
        .read_buf(&mut conn.buffer)
        .await
        .map_err(|e| describe_tls(&e, ""))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An I/O error of a TLS connection in words: a certificate problem by its
/// name (`certificate not valid for "web.test"`), else as [`describe_io`].
fn describe_tls(e: &io::Error, name: &str) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => describe_rustls(tls, name),
        None => describe_io(e),
    }
}

fn describe_rustls(e: &rustls::Error, name: &str) -> String {
    use rustls::Error;
    match e {
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("certificate not valid for {name:?}")
            }
            CertificateError::UnknownIssuer => {
                "certificate signed by an unknown authority".to_string()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".to_string()
            }
            CertificateError::Revoked => "certificate revoked".to_string(),
            CertificateError::BadSignature => "certificate with a bad signature".to_string(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "certificate not meant for a server".to_string()
            }
            other => format!("bad certificate: {other:?}"),
        },
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server wants a client certificate".to_string()
        }
        Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied,
        ) => "the server refused the client certificate".to_string(),
        Error::AlertReceived(alert) => format!("the server ended TLS: {alert:?}"),
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            "not a TLS server".to_string()
        }
        other => format!("TLS: {other}"),
    }
}

/// The crypto of every TLS connection: rustls' `ring` provider.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The system's trust anchors, read once (only when some `https://` target
/// verifies certificates).
fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system root certificates found ({} ignored, {} errors): https:// targets need ca_file",
                    ignored,
                    found.errors.len()
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// One rustls config per set of TLS settings, shared by the clients that
/// have them (1000 probes with the same settings build it once); rebuilt
/// when every client holding it is gone (a reload re-reads the files).
fn shared_config(tls: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIGS: OnceLock<Mutex<HashMap<TlsSettings, Weak<rustls::ClientConfig>>>> =
        OnceLock::new();
    let configs = CONFIGS.get_or_init(Default::default);
    if let Some(config) = configs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(tls)
        .and_then(Weak::upgrade)
    {
        return Ok(config);
    }
    let config = Arc::new(build_config(tls)?);
    let mut configs = configs.lock().unwrap_or_else(|e| e.into_inner());
    configs.retain(|_, config| config.strong_count() > 0);
    configs.insert(tls.clone(), Arc::downgrade(&config));
    Ok(config)
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("{what} {}: {}", path.display(), describe_io(&e)))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds the rustls config of `tls`, reading its files.
fn build_config(tls: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if tls.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    } else {
        let mut roots = (*system_roots()).clone();
        if let Some(path) = &tls.ca_file {
            for cert in read_certs(path, "ca_file")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert, "client_cert")?;
            let pem = std::fs::read(key)
                .map_err(|e| format!("client_key {}: {}", key.display(), describe_io(&e)))?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|e| format!("client_key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("client_cert {}: {e}", cert.display()))?
        }
        (Some(_), None) => return Err("client_cert needs client_key".to_string()),
        (None, Some(_)) => return Err("client_key needs client_cert".to_string()),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `insecure`: any certificate is accepted; the handshake's signatures are
/// still checked against the certificate presented.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn urls_of_both_schemes() {
        let u = parse_url("https://web.test:8443/health?x=1#frag").unwrap();
        assert_eq!(
            u.target,
            Target {
                https: true,
                host: "web.test".to_string(),
                port: 8443
            }
        );
        assert_eq!(
            (u.authority, u.path.as_str()),
            ("web.test:8443", "/health?x=1")
        );
        let u = parse_url("https://[::1]/x").unwrap();
        assert_eq!((u.target.host.as_str(), u.target.port), ("::1", 443));
        let u = parse_url("http://u:p@h").unwrap();
        assert_eq!(
            (u.authority, u.target.port, u.path.as_str()),
            ("h", 80, "/")
        );
        assert!(parse_url("ftp://a/").is_err());
        assert!(parse_url("https:///x").is_err());
        assert!(parse_url("https://a:x/").is_err());
    }

    #[test]
    fn requests_carry_the_callers_headers() {
        let u = parse_url("https://web.test/h").unwrap();
        let m = request_bytes(
            "POST",
            &u,
            &[("Host", "other"), ("X-A", "1")],
            Some(("application/json", b"{}")),
            true,
        );
        let text = String::from_utf8(m).unwrap();
        assert!(text.starts_with("POST /h HTTP/1.1\r\n"), "{text}");
        assert!(
            text.contains("Host: other\r\n") && !text.contains("Host: web.test"),
            "{text}"
        );
        assert!(
            text.contains(
                "X-A: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_client_certificate_without_its_key_is_refused() {
        let tls = TlsSettings {
            client_cert: Some("/nonexistent.pem".into()),
            ..TlsSettings::default()
        };
        assert_eq!(
            build_config(&tls).unwrap_err(),
            "client_cert needs client_key"
        );
        let tls = TlsSettings {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsSettings::default()
        };
        assert_eq!(
            Client::new(tls).prepare().unwrap_err(),
            "ca_file /nonexistent/ca.pem: no such file or directory"
        );
    }
    /// A loopback server that writes `reply` to the first connection and
    /// keeps it open until the client hangs up; the request head it read.
    async fn serve_once(reply: Vec<u8>) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while find(&head, b"\r\n\r\n").is_none() {
                let mut byte = [0u8; 1];
                if conn.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            // The client may hang up before all of it is written.
            let _ = conn.write_all(&reply).await;
            // Held open: the client must stop by the reply's framing.
            let mut rest = [0u8; 64];
            let _ = conn.read(&mut rest).await;
            String::from_utf8(head).unwrap()
        });
        (url, server)
    }

    /// `client.request(method, url)` with `bound`, failing after 10 s: a
    /// client that waits for the close instead of the framing would hang.
    async fn ask(client: &Client, method: &str, url: &str, bound: usize) -> Response {
        let body = (method == "POST").then_some(("application/json", &b"{}"[..]));
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.request(method, url, &[], body, bound),
        )
        .await
        .expect("the reply's end is noticed by its framing")
        .unwrap()
    }

    #[tokio::test]
    async fn a_whole_reply_is_read_by_its_length_or_its_chunks() {
        for (reply, body) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"[..],
                &b"hi"[..],
            ),
            (
                b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\nTrailer: a\r\n\r\n",
                b"hello, world",
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        ] {
            for client in [Client::new(TlsSettings::default()), Client::fresh()] {
                let (url, server) = serve_once(reply.to_vec()).await;
                let got = ask(&client, "POST", &url, 1024).await;
                assert_eq!(got.body, body);
                let head = server.await.unwrap();
                assert!(head.starts_with("POST /health HTTP/1.1\r\n"), "{head}");
                assert_eq!(head.contains("Connection: close\r\n"), !client.reuse);
            }
        }
        // Up to the close.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nto the end")
                .await
                .unwrap();
        });
        let got = ask(&Client::fresh(), "GET", &url, 1024).await;
        assert_eq!((got.status, got.body.as_slice()), (200, &b"to the end"[..]));
    }

    #[tokio::test]
    async fn a_fresh_client_reads_the_start_of_a_long_body_and_leaves_the_rest() {
        let bound = 64 * 1024;
        let mut text = vec![b'a'; 100 * 1024];
        text[bound - 2..bound].copy_from_slice(b"ok");
        text[bound..bound + 6].copy_from_slice(b"beyond");
        let mut reply =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", text.len()).into_bytes();
        reply.extend_from_slice(&text);
        let (url, _server) = serve_once(reply.clone()).await;
        let got = ask(&Client::fresh(), "GET", &url, bound).await;
        assert_eq!((got.status, got.body.len()), (200, bound));
        assert!(got.body.ends_with(b"ok"));

        // Without a bound the body is not read at all: a reply whose body
        // never comes is answered by its status.
        let (url, _server) =
            serve_once(b"HTTP/1.1 503 Busy\r\nContent-Length: 1000000\r\n\r\nab".to_vec()).await;
        let got = ask(&Client::fresh(), "GET", &url, 0).await;
        assert_eq!((got.status, got.body.len()), (503, 0));

        // Chunked, cut inside a chunk.
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..100 {
            reply.extend_from_slice(b"400\r\n");
            reply.extend_from_slice(&[b'b'; 1024]);
            reply.extend_from_slice(b"\r\n");
        }
        reply.extend_from_slice(b"0\r\n\r\n");
        let (url, _server) = serve_once(reply).await;
        let got = ask(&Client::fresh(), "GET", &url, bound).await;
        assert_eq!((got.status, got.body.len()), (200, bound));
        assert!(got.body.iter().all(|b| *b == b'b'));
    }
}
