//! The notify socket for children (systemd's `sd_notify` protocol): one
//! datagram socket owned by minder, whose path every `notify`/`watchdog`
//! child gets as `NOTIFY_SOCKET`. Senders are identified by their kernel
//! credentials (`SO_PASSCRED`), and only the main process of a supervised
//! process is listened to, as systemd's `NotifyAccess=main` does.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

mod message;
pub use message::NotifyMessage;

/// Longest datagram read; sd_notify messages are a few hundred bytes.
const MAX_DATAGRAM: usize = 4096;

/// Where an actor receives the messages of its main process.
pub type NotifySender = mpsc::Sender<(Pid, NotifyMessage)>;

/// Who listens to which PID: the actor of the process whose main PID it is.
#[derive(Clone, Default)]
pub struct NotifyRoutes {
    routes: Arc<Mutex<HashMap<i32, NotifySender>>>,
}

impl NotifyRoutes {
    /// Delivers messages from `pid` to `to` from now on.
    pub fn register(&self, pid: Pid, to: NotifySender) {
        self.lock().insert(pid.as_raw(), to);
    }

    /// Stops listening to `pid` (it exited, or is no longer the main process).
    pub fn unregister(&self, pid: Pid) {
        self.lock().remove(&pid.as_raw());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, NotifySender>> {
        // A poisoned map is still a valid map.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(&self, pid: Pid, message: NotifyMessage) {
        let target = self.lock().get(&pid.as_raw()).cloned();
        match target {
            Some(to) => {
                if to.try_send((pid, message)).is_err() {
                    tracing::warn!(
                        pid = pid.as_raw(),
                        "notify message dropped: its process is busy"
                    );
                }
            }
            None => tracing::debug!(
                pid = pid.as_raw(),
                "notify message from a process that is not a supervised main process; ignored"
            ),
        }
    }
}

/// The path of the notify socket that goes with a control socket.
pub fn socket_path(control_socket: &Path) -> PathBuf {
    let stem = control_socket
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "minder".to_string());
    control_socket.with_file_name(format!("{stem}-notify.sock"))
}

/// Binds the notify socket at `path` (replacing a stale file) and serves it
/// until the runtime ends.
pub fn start(path: &Path, routes: NotifyRoutes) -> io::Result<std::os::fd::RawFd> {
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path)?;
    }
    let socket = UnixDatagram::bind(path)?;
    crate::process::set_cloexec(socket.as_raw_fd(), true);
    socket::setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
    // Children may run as other users; the credential check decides who is heard.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let fd = socket.as_raw_fd();
    tokio::spawn(serve(socket, routes));
    Ok(fd)
}

/// Serves the notify socket handed over by `reexec` (fd `fd`).
pub fn adopt(fd: std::os::fd::RawFd, routes: NotifyRoutes) -> io::Result<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: the previous image passed this socket for us to own.
    let std_socket = unsafe { std::os::unix::net::UnixDatagram::from_raw_fd(fd) };
    std_socket.set_nonblocking(true)?;
    crate::process::set_cloexec(fd, true);
    tokio::spawn(serve(UnixDatagram::from_std(std_socket)?, routes));
    Ok(())
}

async fn serve(socket: UnixDatagram, routes: NotifyRoutes) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = socket
            .async_io(Interest::READABLE, || receive(&socket, &mut buf))
            .await;
        match received {
            Ok(Some((pid, len))) => {
                routes.deliver(pid, parse_datagram(&buf[..len]));
            }
            Ok(None) => tracing::debug!("notify datagram without credentials; ignored"),
            Err(e) => {
                tracing::warn!("notify socket: {e}");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The message in one datagram; bytes that are not UTF-8 cannot match a key
/// and are replaced (public for the fuzz target).
#[doc(hidden)]
pub fn parse_datagram(datagram: &[u8]) -> NotifyMessage {
    NotifyMessage::parse(&String::from_utf8_lossy(datagram))
}

/// One datagram and its sender's PID (from SCM_CREDENTIALS).
fn receive(socket: &UnixDatagram, buf: &mut [u8]) -> io::Result<Option<(Pid, usize)>> {
    let mut cmsg = nix::cmsg_space!(libc::ucred);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<UnixAddr>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let len = msg.bytes;
    let pid = msg.cmsgs().map_err(io::Error::from)?.find_map(|c| match c {
        ControlMessageOwned::ScmCredentials(cred) => Some(Pid::from_raw(cred.pid())),
        _ => None,
    });
    Ok(pid.map(|pid| (pid, len)))
}
