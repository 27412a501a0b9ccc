//! The daemon's side of the control socket.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{
    parse_request, ErrorKind, Reply, Request, StateEvent, TailChunk, MAX_REQUEST,
};
use crate::config::SupervisorConfig;
use crate::logs::TailEvent;
use crate::supervisor::{EventsSubscription, Input, TailStart};
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
    use std::os::fd::FromRawFd;
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
    crate::reexec::set_cloexec(fd, true);
    Ok(ControlSocket {
        listener,
        path,
        access,
    })
}

fn resolve_group(name: &str) -> Result<Gid, BindError> {
    let found = match name.parse::<u32>() {
        Ok(id) => Group::from_gid(Gid::from_raw(id)),
        Err(_) => Group::from_name(name),
    };
    match found {
        Ok(Some(group)) => Ok(group.gid),
        _ => Err(BindError::NoSuchGroup(name.to_string())),
    }
}

/// Removes a socket left by a daemon that is gone; refuses if one still answers.
fn remove_stale(path: &Path) -> Result<(), BindError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket(path.to_path_buf()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
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

/// Accepts connections until the runtime ends. Each connection holds a clone of
/// `open`, so the daemon can wait for replies in flight before it exits.
pub async fn serve(socket: ControlSocket, inputs: mpsc::Sender<Input>, open: mpsc::Sender<()>) {
    loop {
        match socket.listener.accept().await {
            Ok((stream, _)) => {
                let inputs = inputs.clone();
                let access = socket.access;
                let open = open.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, access, inputs).await {
                        tracing::debug!("control connection: {e}");
                    }
                    drop(open);
                });
            }
            Err(e) => {
                // EMFILE and friends: report, and keep serving the connections we have.
                tracing::warn!("accepting a control connection: {e}");
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn connection(
    stream: UnixStream,
    access: Access,
    inputs: mpsc::Sender<Input>,
) -> io::Result<()> {
    let allowed = access.allows(&stream);
    let (read, mut write) = stream.into_split();
    if !allowed {
        let reply = Reply::error(
            ErrorKind::PermissionDenied,
            "permission denied: only root, minder's user and socket_group may use this socket",
        );
        return send(&mut write, &reply).await;
    }
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_REQUEST {
            let reply = Reply::error(
                ErrorKind::TooLarge,
                format!("request longer than {MAX_REQUEST} bytes"),
            );
            return send(&mut write, &reply).await;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let reply = match parse_request(&line) {
            Err(reply) => reply,
            Ok(request @ Request::Tail { .. }) => {
                let follow = matches!(request, Request::Tail { follow: true, .. });
                match ask(&inputs, |tx| Input::Tail(request, tx))
                    .await
                    .and_then(|r| r)
                {
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
                match ask(&inputs, |tx| Input::Events(names, tx))
                    .await
                    .and_then(|r| r)
                {
                    // The stream ends with the connection.
                    Ok(subscription) => return events(&mut write, &mut reader, subscription).await,
                    Err(reply) => reply,
                }
            }
            Ok(request) => ask(&inputs, |tx| Input::Control(request, tx))
                .await
                .unwrap_or_else(|e| e),
        };
        send(&mut write, &reply).await?;
    }
}

/// Hands a request to the supervisor loop and waits for its answer; a full
/// queue is "busy", a loop that is gone is "shutting down".
async fn ask<T>(
    inputs: &mpsc::Sender<Input>,
    make: impl FnOnce(oneshot::Sender<T>) -> Input,
) -> Result<T, Reply> {
    let shutting_down = || Reply::error(ErrorKind::ShuttingDown, "minder is shutting down");
    let (tx, rx) = oneshot::channel();
    match inputs.try_send(make(tx)) {
        Ok(()) => rx.await.map_err(|_| shutting_down()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            Err(Reply::error(ErrorKind::Failed, "minder is busy, try again"))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(shutting_down()),
    }
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
        // Building it left thousands of short-lived strings behind: an idle
        // daemon should not keep their pages.
        crate::supervisor::release_free_memory();
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
/// change until the daemon exits or the client hangs up.
async fn events(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    mut subscription: EventsSubscription,
) -> io::Result<()> {
    send(write, &Reply::ok(&subscription.start)).await?;
    let mut skipped = 0;
    let mut probe = [0u8; 512];
    loop {
        tokio::select! {
            event = subscription.events.recv() => match event {
                Ok(event) if subscription.wants(&event) => {
                    if skipped == 0 {
                        send(write, &Reply::ok(&*event)).await?;
                    } else {
                        let event = StateEvent { skipped_events: skipped, ..(*event).clone() };
                        send(write, &Reply::ok(&event)).await?;
                        skipped = 0;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => skipped += n,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
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
