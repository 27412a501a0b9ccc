//! The daemon's side of the control socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};

use super::dispatch::{self, Shared};
use super::protocol::{
    parse_request, ErrorKind, EventsStart, Reply, Request, StateEvent, TailChunk, MAX_REQUEST,
};
use crate::config::SupervisorConfig;
use crate::logs::TailEvent;
use crate::register::StandingChange;
use crate::supervisor::{Subscription, TailStart};
use tokio::sync::broadcast;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another daemon answers on the path.
    #[error("another minder is already listening on {0}")]
    InUse(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// `socket_group` names no group.
    #[error("socket_group {0:?}: no such group")]
    NoSuchGroup(String),
    /// An OS error while creating the socket.
    #[error("control socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
}

/// Who may talk to the daemon: root, minder's own user, and members of `socket_group`.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    group: Option<Gid>,
}

/// The bound socket and who may use it.
pub struct ControlSocket {
    /// Listening socket.
    pub listener: UnixListener,
    /// Path, removed again on a clean exit.
    pub path: PathBuf,
    /// Peer policy.
    pub access: Access,
}

/// Creates the control socket with `socket_mode` (and `socket_group`), replacing a stale one.
pub fn bind(cfg: &SupervisorConfig) -> Result<ControlSocket, BindError> {
    let path = cfg.socket.clone();
    let io_err = |what: &'static str| {
        let path = path.clone();
        move |source| BindError::Io { path, what, source }
    };
    let access = Access::for_config(cfg)?;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err("creating its directory"))?;
        }
    }
    remove_stale(&path)?;
    // Bind with a umask that already yields the final mode: no window in which
    // the socket is more open than configured.
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        !cfg.socket_mode & 0o777,
    ));
    let bound = UnixListener::bind(&path);
    nix::sys::stat::umask(old_umask);
    let listener = bound.map_err(io_err("bind"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(cfg.socket_mode))
        .map_err(io_err("chmod"))?;
    if let Some(gid) = access.group {
        nix::unistd::chown(&path, None, Some(gid))
            .map_err(|e| io_err("chown to socket_group")(io::Error::from(e)))?;
    }
    Ok(ControlSocket {
        listener,
        path,
        access,
    })
}

use std::os::unix::fs::DirBuilderExt;

/// The control socket handed over by `reexec` (fd `fd`, already bound at
/// `cfg.socket`), with the same access policy.
pub fn adopt(cfg: &SupervisorConfig, fd: std::os::fd::RawFd) -> Result<ControlSocket, BindError> {
    let path = cfg.socket.clone();
    let io_err = |what: &'static str| {
        let path = path.clone();
        move |source| BindError::Io { path, what, source }
    };
    let access = Access::for_config(cfg)?;
    // SAFETY: the previous image passed this listening socket for us to own.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_listener
        .set_nonblocking(true)
        .map_err(io_err("handed-over socket"))?;
    let listener = UnixListener::from_std(std_listener).map_err(io_err("handed-over socket"))?;
    crate::process::set_cloexec(fd, true);
    Ok(ControlSocket {
        listener,
        path,
        access,
    })
}

fn resolve_group(name: &str) -> Result<Gid, BindError> {
    match crate::users::group(name) {
        Ok(Some(group)) => Ok(group.gid),
        _ => Err(BindError::NoSuchGroup(name.to_string())),
    }
}

/// How often, and how long each time, [`answers`] tries a socket that
/// takes connections but no requests.
const LIVENESS_TRIES: u32 = 10;
const LIVENESS_WAIT: Duration = Duration::from_millis(200);

/// Whether a daemon serves on `path`. A connection alone does not say so:
/// after a minder was killed, a child it had just cloned still holds a copy
/// of the listening socket until its exec closes it, and the kernel queues
/// connections to it that nobody accepts. A live minder answers a `pid`
/// request; a socket that takes connections but never answers is asked
/// again for about two seconds (an exec takes far less), and counts as in
/// use only if it still takes them then.
fn answers(path: &Path) -> bool {
    use std::io::{BufRead, Write};
    for _ in 0..LIVENESS_TRIES {
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(path) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(LIVENESS_WAIT));
        let _ = stream.set_write_timeout(Some(LIVENESS_WAIT));
        if stream.write_all(b"{\"cmd\":\"pid\"}\n").is_ok() {
            let mut line = String::new();
            if std::io::BufReader::new(&stream)
                .read_line(&mut line)
                .is_ok_and(|n| n > 0)
            {
                return true;
            }
        }
    }
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Removes a socket left by a daemon that is gone; refuses if one still answers.
fn remove_stale(path: &Path) -> Result<(), BindError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket(path.to_path_buf()));
    }
    if answers(path) {
        return Err(BindError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| BindError::Io {
        path: path.to_path_buf(),
        what: "removing stale socket",
        source,
    })
}

impl Access {
    /// The policy `cfg` asks for (`socket_group` resolved to a group id).
    fn for_config(cfg: &SupervisorConfig) -> Result<Access, BindError> {
        let group = match &cfg.socket_group {
            None => None,
            Some(name) => Some(resolve_group(name)?),
        };
        Ok(Access { group })
    }

    fn allows(&self, stream: &UnixStream) -> bool {
        let Ok(cred) = stream.peer_cred() else {
            return false;
        };
        let uid = cred.uid();
        if uid == 0 || uid == Uid::effective().as_raw() {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        if cred.gid() == group.as_raw() {
            return true;
        }
        // Supplementary groups are not in SO_PEERCRED; the peer's /proc entry has them.
        cred.pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .is_some_and(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Groups:"))
                    .is_some_and(|groups| {
                        groups
                            .split_whitespace()
                            .any(|g| g.parse::<u32>() == Ok(group.as_raw()))
                    })
            })
    }
}

/// How long a connection may take to send each complete request line, and to
/// take each reply, before it is closed: a client that connects and says
/// nothing must not hold one of minder's fds for ever. A `tail --follow` or
/// `events` stream is exempt once it has started.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// [`REQUEST_TIMEOUT`]; debug builds (the integration tests) may shorten it
/// with `MINDER_TEST_REQUEST_TIMEOUT_MS`.
fn request_timeout() -> Duration {
    static TIMEOUT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TIMEOUT.get_or_init(|| {
        #[cfg(debug_assertions)]
        if let Some(ms) = std::env::var("MINDER_TEST_REQUEST_TIMEOUT_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
        {
            return Duration::from_millis(ms);
        }
        REQUEST_TIMEOUT
    })
}

/// Accepts connections until the runtime ends. Each connection holds a clone of
/// `open`, so the daemon can wait for replies in flight before it exits.
pub async fn serve(socket: ControlSocket, shared: Shared, open: mpsc::Sender<()>) {
    // Wakes a paused accept loop when a connection ends and frees its fd.
    let closed = Arc::new(Notify::new());
    let mut spare = Spare::open();
    let mut trouble = AcceptTrouble::default();
    loop {
        match socket.listener.accept().await {
            Ok((stream, _)) => {
                trouble.recovered();
                spare.reopen();
                let shared = shared.clone();
                let access = socket.access;
                let open = open.clone();
                let closed = Arc::clone(&closed);
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, access, shared).await {
                        tracing::debug!("control connection: {e}");
                    }
                    drop(open);
                    closed.notify_one();
                });
            }
            Err(e) => {
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                trouble.report(&e, out_of_fds);
                // The waiting client gets an answer, not a hang; the
                // connection is gone from the queue, so this is no busy loop.
                if out_of_fds && spare.refuse_one(&socket.listener) {
                    continue;
                }
                // Accepting again at once would fail again at once: wait for
                // a connection to end or, as fds may also be freed elsewhere
                // (a process exiting), for a pause that grows to a second.
                tokio::select! {
                    () = tokio::time::sleep(trouble.pause()) => {}
                    () = closed.notified() => {}
                }
            }
        }
    }
}

/// One fd held in reserve (on /dev/null) so that, when minder is out of fds,
/// a waiting client can still be accepted and told so instead of hanging.
struct Spare(Option<std::fs::File>);

impl Spare {
    fn open() -> Spare {
        let mut spare = Spare(None);
        spare.reopen();
        spare
    }

    /// Takes the reserve fd back if it was given up (and an fd is free now).
    fn reopen(&mut self) {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok();
        }
    }

    /// Frees the reserve fd, accepts one waiting connection with it, sends the
    /// client an error and closes it; true if a connection was refused so.
    fn refuse_one(&mut self, listener: &UnixListener) -> bool {
        if self.0.take().is_none() {
            self.reopen();
            return false;
        }
        // SAFETY: accept4 on our listening socket, with no address buffer;
        // the returned fd, if any, is owned by the OwnedFd below.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        let refused = fd >= 0;
        if refused {
            // SAFETY: accept4 just returned this fd and nothing else owns it.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            let reply = Reply::error(
                ErrorKind::Failed,
                "minder is out of file descriptors and cannot serve this connection; \
                 try again, or raise its limit (LimitNOFILE=, ulimit -n)",
            );
            if let Ok(mut line) = serde_json::to_vec(&reply) {
                line.push(b'\n');
                // A fresh socket's buffer holds one short line: no blocking,
                // and a client that went away already is no concern here.
                let _ = nix::sys::socket::send(
                    conn.as_raw_fd(),
                    &line,
                    nix::sys::socket::MsgFlags::MSG_NOSIGNAL
                        | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                );
            }
            drop(conn);
        }
        self.reopen();
        refused
    }
}

/// Accept errors in a row: the pause before the next try, and at most one
/// log line a second however often accept fails.
#[derive(Default)]
struct AcceptTrouble {
    /// Errors since the last success.
    in_a_row: u32,
    /// Errors not logged since the last line.
    unreported: u64,
    last_report: Option<Instant>,
}

impl AcceptTrouble {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);
    const REPORT_EVERY: Duration = Duration::from_secs(1);

    fn report(&mut self, e: &io::Error, out_of_fds: bool) {
        self.in_a_row = self.in_a_row.saturating_add(1);
        if self
            .last_report
            .is_some_and(|at| at.elapsed() < Self::REPORT_EVERY)
        {
            self.unreported += 1;
            return;
        }
        let hint = if out_of_fds {
            " (minder is out of file descriptors: raise LimitNOFILE= or ulimit -n)"
        } else {
            ""
        };
        if self.unreported > 0 {
            tracing::warn!(
                "accepting a control connection: {e}{hint}; {} more such errors not logged",
                self.unreported
            );
        } else {
            tracing::warn!("accepting a control connection: {e}{hint}");
        }
        self.unreported = 0;
        self.last_report = Some(Instant::now());
    }

    /// 10 ms, doubling with each error in a row, at most a second.
    fn pause(&self) -> Duration {
        let doublings = self.in_a_row.saturating_sub(1).min(7);
        (Self::FIRST_PAUSE * 2u32.pow(doublings)).min(Self::MAX_PAUSE)
    }

    fn recovered(&mut self) {
        if self.in_a_row == 0 {
            return;
        }
        if self.unreported > 0 {
            tracing::warn!(
                "accepting control connections again; {} more errors were not logged",
                self.unreported
            );
        } else {
            tracing::info!("accepting control connections again");
        }
        *self = AcceptTrouble::default();
    }
}

async fn connection(stream: UnixStream, access: Access, shared: Shared) -> io::Result<()> {
    let allowed = access.allows(&stream);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    if !allowed {
        return refuse(write, reader).await;
    }
    loop {
        let mut line = Vec::new();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        let Ok(n) = tokio::time::timeout(request_timeout(), read).await else {
            let reply = Reply::error(
                ErrorKind::BadRequest,
                format!(
                    "no complete request within {}; closing the connection",
                    humantime::format_duration(request_timeout())
                ),
            );
            return send_bounded(&mut write, &reply).await;
        };
        if n? == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_REQUEST {
            let reply = Reply::error(
                ErrorKind::TooLarge,
                format!("request longer than {MAX_REQUEST} bytes"),
            );
            return send_bounded(&mut write, &reply).await;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = match parse_request(&line) {
            Err(reply) => reply,
            Ok(request @ Request::Tail { .. }) => {
                let follow = matches!(request, Request::Tail { follow: true, .. });
                match dispatch::tail(request, &shared).await {
                    Ok(start) => {
                        tail(&mut write, &mut reader, start).await?;
                        // A followed tail ends with the connection.
                        if follow {
                            return Ok(());
                        }
                        continue;
                    }
                    Err(reply) => reply,
                }
            }
            Ok(Request::Events { names }) => {
                match dispatch::subscribe(names, &shared).await {
                    // The stream ends with the connection.
                    Ok((start, subscription, standing)) => {
                        return events(&mut write, &mut reader, start, subscription, standing).await
                    }
                    Err(reply) => reply,
                }
            }
            Ok(request) => dispatch::answer(request, &shared).await,
        };
        send_bounded(&mut write, &reply).await?;
    }
}

/// Tells a peer that is not allowed so, and closes. The request it may still
/// be writing is read and dropped for a moment first: closing with it unread
/// would fail the client's write (EPIPE) before the client has read why.
async fn refuse(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
) -> io::Result<()> {
    let reply = Reply::error(
        ErrorKind::PermissionDenied,
        "permission denied: only root, minder's user and socket_group may use this socket",
    );
    send_bounded(&mut write, &reply).await?;
    write.shutdown().await?;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = MAX_REQUEST;
        while left > 0 {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_DRAIN, drain).await;
    Ok(())
}

/// How long a refused peer's request is read and dropped before the close.
const REFUSAL_DRAIN: Duration = Duration::from_secs(1);

/// [`send`], giving up on a client that does not take its reply in time.
async fn send_bounded(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> io::Result<()> {
    tokio::time::timeout(request_timeout(), send(write, reply))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its reply",
            ))
        })
}

/// A reply this big (a status of a few hundred processes) is followed by
/// handing the memory it used back to the OS.
const BIG_REPLY: usize = 64 * 1024;

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(io::Error::other)?;
    bytes.push(b'\n');
    let result = write.write_all(&bytes).await;
    if bytes.len() >= BIG_REPLY {
        drop(bytes);
        // Building it left thousands of short-lived strings behind, and ran
        // code an idle daemon does not: it should keep neither's pages.
        crate::memory::release();
    }
    result
}

/// Sends a `tail` reply: the history, then (when following) one object per
/// piece of new output until the process is removed or the client hangs up.
async fn tail(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    start: TailStart,
) -> io::Result<()> {
    let stream = start.reply.stream.name().to_string();
    let mut carry = Vec::new();
    let mut chunk = TailChunk {
        name: start.name,
        stream,
        text: utf8_text(&mut carry, &start.reply.text),
        skipped_bytes: 0,
    };
    send(write, &Reply::ok(&chunk)).await?;
    let Some(mut events) = start.reply.follow else {
        return Ok(());
    };
    let mut probe = [0u8; 512];
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(TailEvent::Data(data)) => {
                    chunk.text = utf8_text(&mut carry, &data);
                    send(write, &Reply::ok(&chunk)).await?;
                    chunk.skipped_bytes = 0;
                }
                Some(TailEvent::Skipped(n)) => chunk.skipped_bytes += n,
                None => return Ok(()),
            },
            // Anything the client sends now is ignored; EOF means it is gone.
            read = reader.read(&mut probe) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}

/// Sends an `events` stream: the acknowledgement, then each matching state
/// change (and change of standing with the load balancers) until the daemon
/// exits or the client hangs up.
async fn events(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    start: EventsStart,
    mut subscription: Subscription,
    standing: broadcast::Receiver<Arc<StandingChange>>,
) -> io::Result<()> {
    let mut standing = Some(standing);
    send(write, &Reply::ok(&start)).await?;
    let mut skipped = 0;
    let mut probe = [0u8; 512];
    loop {
        tokio::select! {
            transition = subscription.transitions.recv() => match transition {
                Ok(transition) if subscription.wants(&transition) => {
                    let event = StateEvent {
                        skipped_events: skipped,
                        ..StateEvent::of(&transition)
                    };
                    send(write, &Reply::ok(&event)).await?;
                    skipped = 0;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => skipped += n,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            change = async { standing.as_mut()?.recv().await.into() }, if standing.is_some() => match change {
                Some(Ok(change)) if subscription.follows(&change.process, &change.program) => {
                    let event = StateEvent {
                        skipped_events: skipped,
                        ..StateEvent::of_standing(&change)
                    };
                    send(write, &Reply::ok(&event)).await?;
                    skipped = 0;
                }
                Some(Ok(_)) => {}
                Some(Err(broadcast::error::RecvError::Lagged(n))) => skipped += n,
                // The registration layer is gone (shutdown): state changes go on.
                Some(Err(broadcast::error::RecvError::Closed)) | None => standing = None,
            },
            // Anything the client sends now is ignored; EOF means it is gone.
            read = reader.read(&mut probe) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
        }
    }
}

/// `data` as text, keeping a UTF-8 sequence cut at the end for the next piece.
fn utf8_text(carry: &mut Vec<u8>, data: &[u8]) -> String {
    let mut bytes = std::mem::take(carry);
    bytes.extend_from_slice(data);
    if let Err(e) = std::str::from_utf8(&bytes) {
        if e.error_len().is_none() {
            *carry = bytes.split_off(e.valid_up_to());
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_cut_between_pieces_is_kept_whole() {
        let mut carry = Vec::new();
        let e_acute = "é".as_bytes();
        let first = [b"caf".as_slice(), &e_acute[..1]].concat();
        assert_eq!(utf8_text(&mut carry, &first), "caf");
        assert_eq!(utf8_text(&mut carry, &e_acute[1..]), "é");
        assert_eq!(utf8_text(&mut carry, b"a\xffb"), "a\u{fffd}b");
        assert!(carry.is_empty());
    }
}
