//! `listen` sockets: bound by minder once, kept open for as long as the
//! program exists, and handed to each of its processes as fds 3.. with
//! systemd's socket-activation variables (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`). Because minder holds them, connections arriving while a
//! program restarts wait in the backlog instead of being refused.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{
    self, setsockopt, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6,
    UnixAddr,
};

use crate::config::{ListenAddress, ProgramConfig};

/// The listening sockets of one program, bound on first use.
#[derive(Debug)]
pub struct ListenSet {
    addresses: Vec<ListenAddress>,
    names: Vec<String>,
    mode: u32,
    /// Bound sockets; `None` until a bind succeeded (a failed bind is retried
    /// at the next start attempt, so a port freed later is picked up).
    bound: Mutex<Option<Arc<Vec<OwnedFd>>>>,
}

impl ListenSet {
    /// The sockets `program` asks for; `None` without `listen`.
    pub fn for_program(program: &ProgramConfig) -> Option<Arc<ListenSet>> {
        if program.listen.is_empty() {
            return None;
        }
        Some(Arc::new(ListenSet {
            addresses: program.listen.clone(),
            names: program.listen_names.clone(),
            mode: program.listen_mode,
            bound: Mutex::new(None),
        }))
    }

    /// The sockets handed over by `reexec`, already bound.
    pub fn adopt(program: &ProgramConfig, fds: &[RawFd]) -> Option<Arc<ListenSet>> {
        use std::os::fd::FromRawFd;
        let set = ListenSet::for_program(program)?;
        if fds.len() != set.addresses.len() {
            return Some(set);
        }
        let owned: Vec<OwnedFd> = fds
            .iter()
            .map(|fd| {
                crate::process::set_cloexec(*fd, true);
                // SAFETY: the previous image passed these sockets for us to own.
                unsafe { OwnedFd::from_raw_fd(*fd) }
            })
            .collect();
        *set.bound.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(owned));
        Some(set)
    }

    /// The fds of the bound sockets (none if not bound yet), for `reexec`.
    pub fn bound_fds(&self) -> Vec<RawFd> {
        self.bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|fds| ListenSet::raw(fds))
            .unwrap_or_default()
    }

    /// Whether `program` asks for exactly these sockets (so a reload can keep them).
    pub fn serves(&self, program: &ProgramConfig) -> bool {
        self.addresses == program.listen
            && self.names == program.listen_names
            && self.mode == program.listen_mode
    }

    /// The bound sockets, binding them now if needed (all or none).
    pub fn sockets(&self) -> Result<Arc<Vec<OwnedFd>>, String> {
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fds) = bound.as_ref() {
            return Ok(Arc::clone(fds));
        }
        let fds = self
            .addresses
            .iter()
            .map(|addr| bind(addr, self.mode).map_err(|e| format!("listen {addr}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let fds = Arc::new(fds);
        *bound = Some(Arc::clone(&fds));
        Ok(fds)
    }

    /// `LISTEN_FDNAMES`: the names joined with `:`.
    pub fn fd_names(&self) -> String {
        self.names.join(":")
    }

    /// The raw fds, in `listen` order, for a spawn.
    pub fn raw(fds: &[OwnedFd]) -> Vec<RawFd> {
        fds.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

impl Drop for ListenSet {
    fn drop(&mut self) {
        // The program left the config: its unix socket files go with it.
        let bound = self.bound.get_mut().map(|b| b.is_some()).unwrap_or(false);
        if bound {
            for addr in &self.addresses {
                if let ListenAddress::Unix(path) = addr {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

/// One listening socket, close-on-exec (spawn passes it on explicitly).
fn bind(addr: &ListenAddress, mode: u32) -> Result<OwnedFd, String> {
    let errno = |what: &str, e: nix::errno::Errno| format!("{what}: {}", e.desc());
    match addr {
        ListenAddress::Tcp(sa) => {
            let family = if sa.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                .map_err(|e| errno("socket", e))?;
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| errno("SO_REUSEADDR", e))?;
            match sa {
                std::net::SocketAddr::V4(v4) => {
                    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*v4))
                        .map_err(|e| errno("bind", e))?;
                }
                std::net::SocketAddr::V6(v6) => {
                    // [::]:80 means IPv6 only, so it can sit beside 0.0.0.0:80.
                    setsockopt(&fd, sockopt::Ipv6V6Only, &true)
                        .map_err(|e| errno("IPV6_V6ONLY", e))?;
                    socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*v6))
                        .map_err(|e| errno("bind", e))?;
                }
            }
            socket::listen(&fd, Backlog::MAXCONN).map_err(|e| errno("listen", e))?;
            Ok(fd)
        }
        ListenAddress::Unix(path) => {
            remove_stale(path)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| errno("socket", e))?;
            let ua = UnixAddr::new(path.as_path()).map_err(|e| errno("address", e))?;
            socket::bind(fd.as_raw_fd(), &ua).map_err(|e| errno("bind", e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("chmod: {e}"))?;
            socket::listen(&fd, Backlog::MAXCONN).map_err(|e| errno("listen", e))?;
            Ok(fd)
        }
    }
}

/// A socket file left by an earlier run is replaced; anything else is not.
fn remove_stale(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| format!("removing the stale socket {}: {e}", path.display())),
        Ok(_) => Err(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        )),
    }
}
